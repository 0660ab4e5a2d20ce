/*
 * metrics.c - a node's counters in the Prometheus text exposition format,
 * version 0.0.4 (GET /metrics).
 *
 * Names follow the Prometheus conventions: the `starling_` namespace, base
 * units (seconds, bytes), `_total` on counters, one # HELP and one # TYPE
 * line before each family's samples. The list is in docs/api.md.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "admin_int.h"

/* One family with a single unlabelled sample. */
static void metric(FILE *f, const char *name, const char *type, const char *help, uint64_t v)
{
    fprintf(f, "# HELP %s %s\n# TYPE %s %s\n%s %" PRIu64 "\n", name, help, name, type, name, v);
}

/* A label value: backslash, double quote and line feed escaped. */
static void label_value(FILE *f, const char *s)
{
    for (; *s; s++) {
        if (*s == '\\' || *s == '"')
            fprintf(f, "\\%c", *s);
        else if (*s == '\n')
            fputs("\\n", f);
        else
            fputc(*s, f);
    }
}

char *admin_metrics_render(const struct admin_stats *s, const struct admin_health *h,
                           const uint64_t *requests, size_t *len)
{
    char *text = NULL;
    size_t n = 0;
    FILE *f = open_memstream(&text, &n);
    if (!f)
        return NULL;
    fputs("# HELP starling_info Build and node information; the value is always 1.\n"
          "# TYPE starling_info gauge\nstarling_info{version=\"",
          f);
    label_value(f, s->version);
    fputs("\",node=\"", f);
    label_value(f, s->node);
    fputs("\"} 1\n", f);
    metric(f, "starling_up", "gauge",
           "1 when the node serves clients (and, clustered, the cluster has a leader), else 0.",
           h && h->serving && (!h->clustered || h->has_leader));
    metric(f, "starling_uptime_seconds", "gauge", "Seconds since the node started.", s->uptime_s);
    metric(f, "starling_connections", "gauge", "Open MQTT network connections.", s->connections);
    metric(f, "starling_clients_connected", "gauge", "Connected MQTT clients.",
           s->clients_connected);
    metric(f, "starling_clients_maximum", "gauge",
           "The most MQTT clients connected at once since the node started.", s->clients_maximum);
    metric(f, "starling_sessions", "gauge", "Sessions on the node, connected or not.", s->sessions);
    metric(f, "starling_subscriptions", "gauge", "Subscriptions (each client and filter once).",
           s->subscriptions);
    metric(f, "starling_retained_messages", "gauge", "Retained messages.", s->retained);
    metric(f, "starling_messages_received_total", "counter",
           "PUBLISH packets received from clients.", s->msgs_received);
    metric(f, "starling_messages_sent_total", "counter", "PUBLISH packets sent to clients.",
           s->msgs_sent);
    metric(f, "starling_messages_dropped_total", "counter",
           "Messages not delivered to a session: its queue was full, they expired, or no memory.",
           s->msgs_dropped);
    metric(f, "starling_bytes_received_total", "counter", "Bytes received on MQTT connections.",
           s->bytes_received);
    metric(f, "starling_bytes_sent_total", "counter", "Bytes sent on MQTT connections.",
           s->bytes_sent);
    if (requests) {
        fputs("# HELP starling_admin_requests_total Admin API requests answered, by status "
              "class.\n# TYPE starling_admin_requests_total counter\n",
              f);
        for (int c = 2; c <= 5; c++)
            fprintf(f, "starling_admin_requests_total{status=\"%dxx\"} %" PRIu64 "\n", c,
                    requests[c]);
    }
    if (fclose(f) != 0) {
        free(text);
        return NULL;
    }
    *len = n;
    return text;
}
