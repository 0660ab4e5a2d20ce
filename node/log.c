/*
 * log.c - leveled logging to stderr (see log.h).
 *
 * Each call formats the whole line, "2026-11-27T09:30:00.123Z LEVEL message\n",
 * into a stack buffer and hands it to the kernel with a single write(2), so
 * lines from different threads never interleave. The buffer is PIPE_BUF bytes,
 * which also keeps the write atomic when stderr is a pipe; longer messages are
 * truncated and end with "...".
 *
 * The JSON format builds each line as a jansson object (jansson escapes) and
 * dumps it into the same kind of buffer; a line that would not fit has its
 * message shortened. Text that is not valid UTF-8 (a client id is bytes)
 * has each byte outside printable ASCII replaced by '?' first.
 */
#include "log.h"

#include <errno.h>
#include <stdbool.h>
#include <limits.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#define LOG_LINE_MAX PIPE_BUF

static _Atomic int current_level = LOG_LEVEL_INFO;

struct log_event_fields {
    const char *event;
    const char *client_id;
    size_t id_len;
    const char *address;
    const char *reason;
    const char *detail; /* "" when none */
};

static _Atomic int current_format = LOG_FORMAT_TEXT;

static const char *const level_names[] = {"ERROR", "WARN", "INFO", "DEBUG"};
static const char *const level_json[] = {"error", "warn", "info", "debug"};

void log_set_level(enum log_level level)
{
    atomic_store_explicit(&current_level, (int)level, memory_order_relaxed);
}

enum log_level log_get_level(void)
{
    return (enum log_level)atomic_load_explicit(&current_level, memory_order_relaxed);
}

int log_level_parse(const char *s, enum log_level *out)
{
    static const char *const names[] = {"error", "warn", "info", "debug"};
    for (int i = 0; i < 4; i++) {
        if (strcasecmp(s, names[i]) == 0) {
            *out = (enum log_level)i;
            return 0;
        }
    }
    return -EINVAL;
}

void log_set_format(enum log_format format)
{
    atomic_store_explicit(&current_format, (int)format, memory_order_relaxed);
}

enum log_format log_get_format(void)
{
    return (enum log_format)atomic_load_explicit(&current_format, memory_order_relaxed);
}

int log_format_parse(const char *s, enum log_format *out)
{
    if (strcasecmp(s, "text") == 0)
        *out = LOG_FORMAT_TEXT;
    else if (strcasecmp(s, "json") == 0)
        *out = LOG_FORMAT_JSON;
    else
        return -EINVAL;
    return 0;
}

/* "2026-11-27T09:30:00.123Z" into buf (at least 32 bytes); its length. */
static size_t log_timestamp(char *buf, size_t cap)
{
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    size_t n = strftime(buf, cap, "%Y-%m-%dT%H:%M:%S", &tm);
    n += (size_t)snprintf(buf + n, cap - n, ".%03ldZ", ts.tv_nsec / 1000000L);
    return n;
}

static void log_write(const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(STDERR_FILENO, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        p += w;
        n -= (size_t)w;
    }
}

/* A JSON string of s[0..len): as is when it is UTF-8, else with every byte
 * outside printable ASCII as '?'. */
static json_t *log_json_string(const char *s, size_t len)
{
    json_t *j = json_stringn(s, len);
    if (j)
        return j;
    char tmp[LOG_LINE_MAX];
    if (len > sizeof(tmp))
        len = sizeof(tmp);
    for (size_t i = 0; i < len; i++)
        tmp[i] = (s[i] >= ' ' && s[i] <= '~') ? s[i] : '?';
    return json_stringn(tmp, len);
}

/* Dump o (taking it) as one line, shortening "msg" until it fits. */
static void log_write_json(json_t *o, const char *msg, size_t msg_len)
{
    char line[LOG_LINE_MAX];
    for (int attempt = 0; o && attempt < 4; attempt++) {
        json_object_set_new(o, "msg", log_json_string(msg, msg_len));
        size_t n = json_dumpb(o, line, sizeof(line) - 1, JSON_COMPACT | JSON_ENSURE_ASCII);
        if (n > 0 && n <= sizeof(line) - 1) {
            line[n++] = '\n';
            log_write(line, n);
            break;
        }
        /* too long: cut the message (by more than the escapes can add) */
        msg_len = attempt < 2 ? msg_len / 4 : 0;
    }
    json_decref(o);
}

static void log_vline(enum log_level level, const struct log_event_fields *ev, const char *fmt,
                      va_list ap)
{
    int saved_errno = errno; /* for "%m" and for the caller */
    if ((int)level < 0 || level > LOG_LEVEL_DEBUG)
        level = LOG_LEVEL_ERROR;

    char line[LOG_LINE_MAX];
    bool json = atomic_load_explicit(&current_format, memory_order_relaxed) == LOG_FORMAT_JSON;
    size_t n = 0;
    char ts[40];
    size_t ts_len = log_timestamp(ts, sizeof(ts));
    if (!json) {
        memcpy(line, ts, ts_len);
        n = ts_len;
        n += (size_t)snprintf(line + n, sizeof(line) - n, " %s ", level_names[level]);
    }
    size_t msg_start = n; /* JSON's "msg": the line without time and level */
    if (ev) {
        int m = snprintf(line + n, sizeof(line) - n, "%s: %s client '%.*s'%s%s%s%s", ev->address,
                         ev->event, (int)ev->id_len, ev->client_id, ev->reason ? " (" : "",
                         ev->reason ? ev->reason : "", ev->reason ? ")" : "",
                         ev->detail[0] ? ": " : "");
        n += m > 0 ? (size_t)m : 0;
        if (n > sizeof(line) - 8)
            n = sizeof(line) - 8;
    }

    /* Leave room for "...\n" (4 bytes) after the message. */
    size_t room = sizeof(line) - n - 4;
    errno = saved_errno;
    int m = vsnprintf(line + n, room + 1, fmt, ap);
    if (m < 0)
        m = 0;
    size_t fmt_start = n;
    if ((size_t)m > room) {
        n += room;
        memcpy(line + n, "...", 3);
        n += 3;
    } else {
        n += (size_t)m;
        while (n > fmt_start && line[n - 1] == '\n') /* callers need not end with '\n' */
            n--;
    }
    if (json) {
        json_t *o = json_object();
        json_object_set_new(o, "time", json_stringn(ts, ts_len));
        json_object_set_new(o, "level", json_string(level_json[level]));
        if (ev) {
            json_object_set_new(o, "event", json_string(ev->event));
            json_object_set_new(o, "client_id", log_json_string(ev->client_id, ev->id_len));
            json_object_set_new(o, "address", log_json_string(ev->address, strlen(ev->address)));
            if (ev->reason)
                json_object_set_new(o, "reason", log_json_string(ev->reason, strlen(ev->reason)));
        }
        log_write_json(o, line + msg_start, n - msg_start);
    } else {
        line[n++] = '\n';
        log_write(line, n);
    }
    errno = saved_errno;
}

static void log_line(enum log_level level, const struct log_event_fields *ev, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void log_line(enum log_level level, const struct log_event_fields *ev, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    log_vline(level, ev, fmt, ap);
    va_end(ap);
}

void log_msg(enum log_level level, const char *fmt, ...)
{
    if ((int)level > atomic_load_explicit(&current_level, memory_order_relaxed))
        return;
    va_list ap;
    va_start(ap, fmt);
    log_vline(level, NULL, fmt, ap);
    va_end(ap);
}

void log_event(enum log_level level, const char *event, const char *client_id, size_t id_len,
               const char *address, const char *reason, const char *fmt, ...)
{
    if ((int)level > atomic_load_explicit(&current_level, memory_order_relaxed))
        return;
    char detail[LOG_LINE_MAX];
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(detail, sizeof(detail), fmt, ap);
    va_end(ap);
    if (m < 0)
        detail[0] = '\0';
    struct log_event_fields ev = {
        .detail = detail,
        .event = event,
        .client_id = client_id ? client_id : "",
        .id_len = client_id ? id_len : 0,
        .address = address ? address : "-",
        .reason = reason,
    };
    log_line(level, &ev, "%s", detail);
}
