/*
 * ctl.c - `starling ctl`: the admin API from the command line (libcurl).
 *
 *   starling ctl [-c FILE] [--host H] [--port P] [--api-key KEY:SECRET]
 *                [--tls] [--cacert FILE] [--json] [--timeout S] COMMAND...
 *
 * Where to connect and with which key come, like the node's own settings,
 * from the node's configuration (-c FILE, then STARLING_* variables: inside
 * a node's container `starling ctl cluster status` just works), and the
 * options override them. HTTPS when the node's configuration says
 * admin_tls, or with --tls / --cacert; the server's certificate is verified
 * against the system's CAs or --cacert FILE, and its name against --host.
 *
 * Every command is one line of the table `commands`: its words, the name of
 * its argument (if any), the HTTP method and path ("{}" is replaced by the
 * argument, percent-encoded), and a function that prints the answer for a
 * human. --json prints the API's JSON as it came. Exit codes (for scripts):
 * 0 ok, 1 the API answered with an error (its message on stderr), 2 usage,
 * 3 the admin API could not be reached.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>
#include <jansson.h>

#include "admin.h"
#include "config.h"

extern char **environ;

#define CTL_EXIT_OK 0
#define CTL_EXIT_API 1
#define CTL_EXIT_USAGE 2
#define CTL_EXIT_CONNECT 3
#define CTL_MAX_RESPONSE (16u << 20)

typedef void (*ctl_print_fn)(json_t *doc);

struct ctl_command {
    const char *words; /* "cluster status" */
    const char *arg;   /* name of the one argument ("NODE"), or NULL */
    const char *method;
    const char *path; /* "{}" stands for the argument */
    ctl_print_fn print;
    const char *help;
};

/* ---- printing ------------------------------------------------------------ */

static const char *str(json_t *o, const char *key)
{
    const char *s = json_string_value(json_object_get(o, key));
    return s ? s : "-";
}

/* A table: rows x cols cells of text, printed with aligned columns. */
struct table {
    size_t cols, rows;
    char **cell;
};

static void table_print(struct table *t)
{
    size_t width[16] = {0};
    for (size_t r = 0; r < t->rows; r++)
        for (size_t c = 0; c < t->cols && c < 16; c++) {
            size_t l = strlen(t->cell[r * t->cols + c]);
            if (l > width[c])
                width[c] = l;
        }
    for (size_t r = 0; r < t->rows; r++) {
        for (size_t c = 0; c < t->cols && c < 16; c++) {
            const char *s = t->cell[r * t->cols + c];
            if (c + 1 == t->cols)
                printf("%s\n", s);
            else
                printf("%-*s  ", (int)width[c], s);
        }
    }
}

static void table_free(struct table *t)
{
    for (size_t i = 0; i < t->rows * t->cols; i++)
        free(t->cell[i]);
    free(t->cell);
}

static int table_init(struct table *t, size_t rows, size_t cols)
{
    t->rows = rows;
    t->cols = cols;
    t->cell = calloc(rows * cols, sizeof(char *));
    return t->cell ? 0 : -ENOMEM;
}

static void table_set(struct table *t, size_t r, size_t c, const char *s)
{
    free(t->cell[r * t->cols + c]);
    t->cell[r * t->cols + c] = strdup(s ? s : "-");
}

static void print_cluster(json_t *doc)
{
    json_t *nodes = json_object_get(doc, "nodes");
    struct table t;
    if (table_init(&t, json_array_size(nodes) + 1, 5) < 0)
        return;
    const char *head[] = {"NAME", "ADDRESS", "ROLE", "REACHABLE", "LEADER"};
    for (size_t c = 0; c < 5; c++)
        table_set(&t, 0, c, head[c]);
    size_t i;
    json_t *n;
    json_array_foreach(nodes, i, n)
    {
        table_set(&t, i + 1, 0, str(n, "name"));
        table_set(&t, i + 1, 1, str(n, "address"));
        table_set(&t, i + 1, 2, str(n, "role"));
        table_set(&t, i + 1, 3, json_is_true(json_object_get(n, "reachable")) ? "yes" : "no");
        table_set(&t, i + 1, 4, json_is_true(json_object_get(n, "leader")) ? "yes" : "no");
    }
    printf("cluster: %s, %zu node%s, leader %s\n",
           json_is_true(json_object_get(doc, "clustered")) ? "clustered" : "standalone",
           json_array_size(nodes), json_array_size(nodes) == 1 ? "" : "s", str(doc, "leader"));
    table_print(&t);
    table_free(&t);
}

static void print_stats(json_t *doc)
{
    static const char *const counters[] = {
        "connections",      "clients_connected", "clients_maximum",   "sessions",
        "subscriptions",    "retained",          "messages_received", "messages_sent",
        "messages_dropped", "bytes_received",    "bytes_sent",        "uptime_seconds",
    };
    const size_t nc = sizeof(counters) / sizeof(counters[0]);
    json_t *nodes = json_object_get(doc, "nodes");
    size_t nn = json_array_size(nodes);
    bool total = nn > 1;
    struct table t;
    if (table_init(&t, nc + 1, nn + 1 + total) < 0)
        return;
    table_set(&t, 0, 0, "COUNTER");
    for (size_t r = 0; r < nc; r++)
        table_set(&t, r + 1, 0, counters[r]);
    for (size_t c = 0; c <= nn; c++) {
        json_t *o = c < nn ? json_array_get(nodes, c) : json_object_get(doc, "total");
        if (c == nn && !total)
            break;
        table_set(&t, 0, c + 1, c < nn ? str(o, "node") : "TOTAL");
        for (size_t r = 0; r < nc; r++) {
            char v[32];
            snprintf(v, sizeof(v), "%" JSON_INTEGER_FORMAT,
                     json_integer_value(json_object_get(o, counters[r])));
            table_set(&t, r + 1, c + 1, v);
        }
    }
    table_print(&t);
    table_free(&t);
}

static void print_health(json_t *doc)
{
    printf("%s\n", str(doc, "status"));
}

static void print_result(json_t *doc)
{
    printf("%s\n", str(doc, "result"));
}

/* ---- the commands -------------------------------------------------------- */

static const struct ctl_command commands[] = {
    {"cluster status", NULL, "GET", "/api/v1/cluster", print_cluster,
     "the nodes of the cluster, their roles and the leader"},
    {"cluster leave", NULL, "POST", "/api/v1/cluster/leave", print_result,
     "make the node answering leave its cluster"},
    {"cluster forget", "NODE", "DELETE", "/api/v1/cluster/nodes/{}", print_result,
     "remove a dead node from the cluster"},
    {"stats", NULL, "GET", "/api/v1/stats", print_stats, "the counters of every node"},
    {"health", NULL, "GET", "/api/v1/health", print_health, "ok (exit 0) or unavailable (exit 1)"},
};

#define N_COMMANDS (sizeof(commands) / sizeof(commands[0]))

static void ctl_usage(FILE *out)
{
    fprintf(out, "usage: starling ctl [OPTIONS] COMMAND\n\n"
                 "Options:\n"
                 "  -c, --config FILE   read admin_bind, admin_port and api_key from the\n"
                 "                      node's configuration file (STARLING_* variables\n"
                 "                      are read too, as the node reads them)\n"
                 "  --host H            the node's admin address (default: admin_bind or\n"
                 "                      bind_address, a wildcard meaning 127.0.0.1 / ::1)\n"
                 "  --port P            its admin port (default: admin_port, 18083)\n"
                 "  --api-key KEY:SECRET  the API key (default: api_key, STARLING_API_KEY)\n"
                 "  --tls               HTTPS (default: when the configuration has admin_tls)\n"
                 "  --cacert FILE       verify the node's certificate with the CAs of FILE\n"
                 "                      (PEM; implies --tls; default: the system's CAs)\n"
                 "  --json              print the API's JSON answer as it is\n"
                 "  --timeout S         give up after S seconds (default 30)\n"
                 "  -h, --help          print this help\n\n"
                 "Commands:\n");
    for (size_t i = 0; i < N_COMMANDS; i++) {
        char w[64];
        snprintf(w, sizeof(w), "%s%s%s", commands[i].words, commands[i].arg ? " " : "",
                 commands[i].arg ? commands[i].arg : "");
        fprintf(out, "  %-22s%s\n", w, commands[i].help);
    }
    fprintf(out, "\nExit codes: 0 ok, 1 the API answered with an error, 2 usage,\n"
                 "3 the admin API could not be reached.\n");
}

/* The command whose words are argv[0..k) and the number k, or NULL. */
static const struct ctl_command *ctl_find(int argc, char **argv, int *used)
{
    for (size_t i = 0; i < N_COMMANDS; i++) {
        char words[64];
        snprintf(words, sizeof(words), "%s", commands[i].words);
        int k = 0;
        bool match = true;
        for (char *save = NULL, *w = strtok_r(words, " ", &save); w;
             w = strtok_r(NULL, " ", &save), k++) {
            if (k >= argc || strcmp(argv[k], w) != 0) {
                match = false;
                break;
            }
        }
        if (match) {
            *used = k;
            return &commands[i];
        }
    }
    return NULL;
}

/* ---- HTTP ---------------------------------------------------------------- */

struct ctl_buf {
    char *p;
    size_t n;
    bool overflow;
};

static size_t ctl_on_data(char *data, size_t size, size_t nmemb, void *ud)
{
    struct ctl_buf *b = ud;
    size_t len = size * nmemb;
    if (b->n + len > CTL_MAX_RESPONSE) {
        b->overflow = true;
        return 0;
    }
    char *np = realloc(b->p, b->n + len + 1);
    if (!np)
        return 0;
    b->p = np;
    memcpy(b->p + b->n, data, len);
    b->n += len;
    b->p[b->n] = '\0';
    return len;
}

struct ctl_opts {
    const char *host;
    long port;
    const char *api_key;
    bool json;
    bool tls;
    const char *cacert;
    long timeout_s;
};

/* Run one request; returns the exit code. */
static int ctl_request(const struct ctl_opts *o, const struct ctl_command *cmd, const char *arg)
{
    CURL *c = curl_easy_init();
    if (!c) {
        fprintf(stderr, "starling ctl: cannot initialise libcurl\n");
        return CTL_EXIT_CONNECT;
    }
    char path[1024];
    const char *hole = strstr(cmd->path, "{}");
    if (hole) {
        char *esc = curl_easy_escape(c, arg, 0);
        snprintf(path, sizeof(path), "%.*s%s%s", (int)(hole - cmd->path), cmd->path, esc ? esc : "",
                 hole + 2);
        curl_free(esc);
    } else {
        snprintf(path, sizeof(path), "%s", cmd->path);
    }
    bool v6 = strchr(o->host, ':') != NULL;
    char url[1400];
    snprintf(url, sizeof(url), "%s://%s%s%s:%ld%s", o->tls ? "https" : "http", v6 ? "[" : "",
             o->host, v6 ? "]" : "", o->port, path);
    struct ctl_buf body = {0};
    char errbuf[CURL_ERROR_SIZE] = "";
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, o->tls ? "https" : "http");
    if (o->cacert)
        curl_easy_setopt(c, CURLOPT_CAINFO, o->cacert);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, o->timeout_s);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, ctl_on_data);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &body);
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(c, CURLOPT_USERAGENT, "starling-ctl/" STARLING_VERSION);
    if (o->api_key) {
        curl_easy_setopt(c, CURLOPT_HTTPAUTH, (long)CURLAUTH_BASIC);
        curl_easy_setopt(c, CURLOPT_USERPWD, o->api_key);
    }
    if (strcmp(cmd->method, "POST") == 0) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, "");
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, 0L);
    } else if (strcmp(cmd->method, "GET") != 0) {
        curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, cmd->method);
    }
    CURLcode rc = curl_easy_perform(c);
    long status = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_cleanup(c);
    int exit_code;
    if (rc != CURLE_OK) {
        fprintf(stderr, "starling ctl: cannot reach the admin API at %s: %s\n", url,
                body.overflow ? "the answer is too large"
                : errbuf[0]   ? errbuf
                              : curl_easy_strerror(rc));
        exit_code = CTL_EXIT_CONNECT;
        goto out;
    }
    json_error_t je;
    json_t *doc = body.p ? json_loadb(body.p, body.n, 0, &je) : NULL;
    if (o->json && body.p)
        printf("%s%s", body.p, body.n && body.p[body.n - 1] == '\n' ? "" : "\n");
    if (status >= 200 && status < 300) {
        if (!doc) {
            fprintf(stderr, "starling ctl: the answer is not JSON (HTTP %ld)\n", status);
            exit_code = CTL_EXIT_API;
        } else {
            if (!o->json)
                cmd->print(doc);
            exit_code = CTL_EXIT_OK;
        }
    } else {
        const char *msg = json_string_value(json_object_get(doc, "message"));
        const char *code = json_string_value(json_object_get(doc, "code"));
        if (!msg)
            msg = json_string_value(json_object_get(doc, "reason")); /* health */
        if (!code)
            code = json_string_value(json_object_get(doc, "status"));
        fprintf(stderr, "starling ctl: %s (HTTP %ld%s%s)\n", msg ? msg : "the request failed",
                status, code ? " " : "", code ? code : "");
        exit_code = CTL_EXIT_API;
    }
    json_decref(doc);
out:
    free(body.p);
    return exit_code;
}

/* The node's configuration: -c FILE (if any), then STARLING_* variables.
 * Returns 0 or CTL_EXIT_USAGE with the reason printed. */
static int ctl_load_config(struct config *cfg, const char *file)
{
    char err[512];
    config_defaults(cfg);
    if (file && config_load_file(cfg, file, err, sizeof(err)) < 0) {
        fprintf(stderr, "starling ctl: %s\n", err);
        return CTL_EXIT_USAGE;
    }
    if (config_load_env(cfg, environ, err, sizeof(err)) < 0) {
        fprintf(stderr, "starling ctl: %s\n", err);
        return CTL_EXIT_USAGE;
    }
    return 0;
}

int ctl_main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'}, {"host", required_argument, NULL, 'H'},
        {"port", required_argument, NULL, 'P'},   {"api-key", required_argument, NULL, 'k'},
        {"json", no_argument, NULL, 'j'},         {"timeout", required_argument, NULL, 't'},
        {"help", no_argument, NULL, 'h'},         {"tls", no_argument, NULL, 'T'},
        {"cacert", required_argument, NULL, 'C'}, {NULL, 0, NULL, 0},
    };
    struct ctl_opts o = {.port = -1, .timeout_s = 30};
    const char *file = NULL;
    bool tls_opt = false;
    optind = 1;
    int ch;
    char *end;
    while ((ch = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
        switch (ch) {
        case 'c':
            file = optarg;
            break;
        case 'H':
            o.host = optarg;
            break;
        case 'P':
            o.port = strtol(optarg, &end, 10);
            if (*end || end == optarg || o.port < 1 || o.port > 65535) {
                fprintf(stderr, "starling ctl: --port: not a port number: '%s'\n", optarg);
                return CTL_EXIT_USAGE;
            }
            break;
        case 'k':
            o.api_key = optarg;
            break;
        case 'j':
            o.json = true;
            break;
        case 'T':
            tls_opt = true;
            break;
        case 'C':
            o.cacert = optarg;
            tls_opt = true;
            break;
        case 't':
            o.timeout_s = strtol(optarg, &end, 10);
            if (*end || end == optarg || o.timeout_s < 1 || o.timeout_s > 3600) {
                fprintf(stderr, "starling ctl: --timeout: not 1..3600 seconds: '%s'\n", optarg);
                return CTL_EXIT_USAGE;
            }
            break;
        case 'h':
            ctl_usage(stdout);
            return CTL_EXIT_OK;
        default:
            ctl_usage(stderr);
            return CTL_EXIT_USAGE;
        }
    }
    struct config cfg;
    int rc = ctl_load_config(&cfg, file);
    if (rc)
        return rc;
    if (!o.host) {
        const char *a = cfg.admin_bind[0] ? cfg.admin_bind : cfg.bind_address;
        o.host = strcmp(a, "0.0.0.0") == 0 ? "127.0.0.1" : strcmp(a, "::") == 0 ? "::1" : a;
    }
    if (o.port < 0) {
        if (cfg.admin_port == 0) {
            fprintf(stderr, "starling ctl: the admin API is off (admin_port 0): give --port\n");
            return CTL_EXIT_USAGE;
        }
        o.port = cfg.admin_port;
    }
    o.tls = tls_opt || cfg.admin_tls;
    if (!o.api_key && cfg.api_key[0])
        o.api_key = cfg.api_key;
    if (o.api_key && !strchr(o.api_key, ':')) {
        fprintf(stderr, "starling ctl: the API key must be KEY:SECRET\n");
        return CTL_EXIT_USAGE;
    }
    int rest = argc - optind;
    if (rest == 0) {
        ctl_usage(stderr);
        return CTL_EXIT_USAGE;
    }
    int used = 0;
    const struct ctl_command *cmd = ctl_find(rest, argv + optind, &used);
    if (!cmd) {
        fprintf(stderr, "starling ctl: unknown command '%s'\n", argv[optind]);
        ctl_usage(stderr);
        return CTL_EXIT_USAGE;
    }
    int nargs = rest - used;
    if (nargs != (cmd->arg ? 1 : 0)) {
        if (cmd->arg)
            fprintf(stderr, "starling ctl: usage: starling ctl %s %s\n", cmd->words, cmd->arg);
        else
            fprintf(stderr, "starling ctl: %s takes no argument\n", cmd->words);
        return CTL_EXIT_USAGE;
    }
    const char *arg = cmd->arg ? argv[optind + used] : NULL;
    if (arg && !*arg) {
        fprintf(stderr, "starling ctl: %s must not be empty\n", cmd->arg);
        return CTL_EXIT_USAGE;
    }
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        fprintf(stderr, "starling ctl: cannot initialise libcurl\n");
        return CTL_EXIT_CONNECT;
    }
    rc = ctl_request(&o, cmd, arg);
    curl_global_cleanup();
    return rc;
}
