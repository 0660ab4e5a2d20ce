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

/* The options a command may take after its words (--name VALUE, or a
 * flag): collected by getopt with the global ones, checked per command. */
enum ctl_copt {
    CO_PAGE,
    CO_LIMIT,
    CO_CURSOR,
    CO_NODE,
    CO_USERNAME,
    CO_PREFIX,
    CO_CONNECTED,
    CO_PROTO,
    CO_CLIENTID,
    CO_TOPIC,
    CO_QOS,
    CO_RETAIN,
    CO_ENCODING,
    CO_REASON,
    CO_DURATION,
    CO_UNTIL,
    CO_DESCRIPTION,
    CO_KEY,
    CO_N
};

/* Option names, and the query parameter each one is ("" for a body field). */
static const char *const copt_names[CO_N] = {
    "page",      "limit",     "cursor",   "node",  "username",    "clientid-prefix",
    "connected", "proto-ver", "clientid", "topic", "qos",         "retain",
    "encoding",  "reason",    "duration", "until", "description", "key",
};
static const char *const copt_query[CO_N] = {
    "page",      "limit",     "cursor",   "node",  "username", "clientid_prefix",
    "connected", "proto_ver", "clientid", "topic", "",         "",
    "",          "",          "",         "",      "",         "",
};

struct ctl_args {
    char *const *pos; /* the positional arguments after the words */
    int npos;
    const char *opt[CO_N];
};

typedef json_t *(*ctl_body_fn)(const struct ctl_args *a, char *err, size_t errlen);

struct ctl_command {
    const char *words; /* "cluster status" */
    const char *arg;   /* names of the positional arguments ("NODE", "AS WHO"), or NULL */
    const char *method;
    const char *path; /* each "{}" stands for the next argument */
    ctl_print_fn print;
    const char *help;
    unsigned opts;    /* bit (1 << CO_x) for each option it takes */
    ctl_body_fn body; /* the JSON body it sends, or NULL */
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

/* A JSON value as a table cell. */
static char *cell_text(json_t *v)
{
    char buf[64];
    if (!v || json_is_null(v))
        return strdup("-");
    if (json_is_string(v))
        return strdup(json_string_value(v));
    if (json_is_true(v))
        return strdup("yes");
    if (json_is_false(v))
        return strdup("no");
    if (json_is_integer(v)) {
        snprintf(buf, sizeof(buf), "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        return strdup(buf);
    }
    if (json_is_array(v)) {
        size_t len = 1, i;
        json_t *e;
        json_array_foreach(v, i, e)
        {
            char *t = cell_text(e);
            len += (t ? strlen(t) : 0) + 1;
            free(t);
        }
        char *out = calloc(1, len);
        json_array_foreach(v, i, e)
        {
            char *t = cell_text(e);
            if (out && t) {
                if (i)
                    strcat(out, ",");
                strcat(out, t);
            }
            free(t);
        }
        return out;
    }
    return json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
}

/* A list answer {"data": [...], "meta": {...}} as a table of the columns
 * cols ("HEADER=field" pairs), then a line on the paging. */
static void print_list(json_t *doc, const char *const *cols, size_t nc)
{
    json_t *data = json_object_get(doc, "data");
    struct table t;
    if (table_init(&t, json_array_size(data) + 1, nc) < 0)
        return;
    for (size_t c = 0; c < nc; c++) {
        const char *eq = strchr(cols[c], '=');
        t.cell[c] = strndup(cols[c], (size_t)(eq - cols[c]));
    }
    size_t i;
    json_t *row;
    json_array_foreach(data, i, row)
    {
        for (size_t c = 0; c < nc; c++)
            t.cell[(i + 1) * nc + c] = cell_text(json_object_get(row, strchr(cols[c], '=') + 1));
    }
    for (size_t k = 0; k < t.rows * t.cols; k++)
        if (!t.cell[k])
            t.cell[k] = strdup("?");
    table_print(&t);
    table_free(&t);
    json_t *meta = json_object_get(doc, "meta");
    if (meta) {
        json_int_t count = json_integer_value(json_object_get(meta, "count"));
        printf("(%zu shown of %" JSON_INTEGER_FORMAT ", page %" JSON_INTEGER_FORMAT ")\n",
               json_array_size(data), count, json_integer_value(json_object_get(meta, "page")));
        const char *cur = json_string_value(json_object_get(meta, "cursor"));
        if (cur)
            printf("next page: --cursor %s\n", cur);
        json_t *missing = json_object_get(meta, "missing");
        if (json_array_size(missing)) {
            char *m = cell_text(missing);
            printf("nodes that did not answer: %s\n", m ? m : "?");
            free(m);
        }
    }
}

#define PRINT_LIST(name, ...)                                                                      \
    static void name(json_t *doc)                                                                  \
    {                                                                                              \
        static const char *const cols[] = {__VA_ARGS__};                                           \
        print_list(doc, cols, sizeof(cols) / sizeof(cols[0]));                                     \
    }

PRINT_LIST(print_clients, "CLIENT ID=clientid", "NODE=node", "CONNECTED=connected",
           "PROTO=proto_ver", "USERNAME=username", "SUBS=subscriptions", "QUEUED=queued",
           "INFLIGHT=inflight")
PRINT_LIST(print_subs, "CLIENT ID=clientid", "TOPIC=topic", "QOS=qos", "NODE=node")
PRINT_LIST(print_routes, "TOPIC=topic", "NODE=node")
PRINT_LIST(print_topics, "TOPIC=topic", "NODES=nodes")
PRINT_LIST(print_retained, "TOPIC=topic", "QOS=qos", "SIZE=size", "PAYLOAD=payload")
PRINT_LIST(print_banned, "AS=as", "WHO=who", "UNTIL=until", "REASON=reason")
PRINT_LIST(print_users, "USERNAME=username", "CREATED=created_at")
PRINT_LIST(print_apikeys, "KEY=key", "CREATED=created_at", "DESCRIPTION=description")

/* One object: "field: value" lines. */
static void print_object(json_t *doc)
{
    const char *k;
    json_t *v;
    json_object_foreach(doc, k, v)
    {
        char *t = cell_text(v);
        printf("%s: %s\n", k, t ? t : "?");
        free(t);
    }
}

/* ---- request bodies ------------------------------------------------------ */

/* A decimal option in lo..hi, or -EINVAL with err. */
static int opt_int(const char *v, const char *name, long long lo, long long hi, long long *out,
                   char *err, size_t errlen)
{
    char *end;
    errno = 0;
    long long n = strtoll(v, &end, 10);
    if (errno || *end || end == v || n < lo || n > hi) {
        snprintf(err, errlen, "--%s must be an integer from %lld to %lld", name, lo, hi);
        return -EINVAL;
    }
    *out = n;
    return 0;
}

static json_t *body_publish(const struct ctl_args *a, char *err, size_t errlen)
{
    json_t *b = json_pack("{s:s, s:s}", "topic", a->pos[0], "payload", a->pos[1]);
    long long q;
    if (a->opt[CO_QOS]) {
        if (opt_int(a->opt[CO_QOS], "qos", 0, 2, &q, err, errlen) < 0) {
            json_decref(b);
            return NULL;
        }
        json_object_set_new(b, "qos", json_integer(q));
    }
    if (a->opt[CO_RETAIN])
        json_object_set_new(b, "retain", json_true());
    if (a->opt[CO_ENCODING])
        json_object_set_new(b, "encoding", json_string(a->opt[CO_ENCODING]));
    return b;
}

static json_t *body_ban(const struct ctl_args *a, char *err, size_t errlen)
{
    json_t *b = json_pack("{s:s, s:s}", "as", a->pos[0], "who", a->pos[1]);
    long long n;
    if (a->opt[CO_REASON])
        json_object_set_new(b, "reason", json_string(a->opt[CO_REASON]));
    if (a->opt[CO_DURATION]) {
        if (opt_int(a->opt[CO_DURATION], "duration", 1, 3153600000LL, &n, err, errlen) < 0) {
            json_decref(b);
            return NULL;
        }
        json_object_set_new(b, "duration", json_integer(n));
    }
    if (a->opt[CO_UNTIL]) {
        if (opt_int(a->opt[CO_UNTIL], "until", 1, 253402300799LL, &n, err, errlen) < 0) {
            json_decref(b);
            return NULL;
        }
        json_object_set_new(b, "until", json_integer(n));
    }
    return b;
}

static json_t *body_user_add(const struct ctl_args *a, char *err, size_t errlen)
{
    (void)err, (void)errlen;
    return json_pack("{s:s, s:s}", "username", a->pos[0], "password", a->pos[1]);
}

static json_t *body_user_passwd(const struct ctl_args *a, char *err, size_t errlen)
{
    (void)err, (void)errlen;
    return json_pack("{s:s}", "password", a->pos[1]);
}

static json_t *body_apikey(const struct ctl_args *a, char *err, size_t errlen)
{
    (void)err, (void)errlen;
    json_t *b = json_object();
    if (a->opt[CO_KEY])
        json_object_set_new(b, "key", json_string(a->opt[CO_KEY]));
    if (a->opt[CO_DESCRIPTION])
        json_object_set_new(b, "description", json_string(a->opt[CO_DESCRIPTION]));
    return b;
}

static void print_apikey_created(json_t *doc)
{
    printf("key: %s\nsecret: %s\n(the secret is shown only now: use KEY:SECRET as --api-key)\n",
           str(doc, "key"), str(doc, "secret"));
}

/* ---- the commands -------------------------------------------------------- */

#define O(x) (1u << CO_##x)
#define PAGING (O(PAGE) | O(LIMIT))

static const struct ctl_command commands[] = {
    {"clients list", NULL, "GET", "/api/v1/clients", print_clients,
     "the clients of the cluster (--node --username --clientid-prefix --connected true|false "
     "--proto-ver 3|4|5 --page --limit --cursor)",
     PAGING | O(CURSOR) | O(NODE) | O(USERNAME) | O(PREFIX) | O(CONNECTED) | O(PROTO), NULL},
    {"clients show", "CLIENTID", "GET", "/api/v1/clients/{}", print_object, "a client's details", 0,
     NULL},
    {"clients kick", "CLIENTID", "DELETE", "/api/v1/clients/{}", print_result,
     "disconnect a client (5.0: DISCONNECT 0x98)", 0, NULL},
    {"subscriptions", NULL, "GET", "/api/v1/subscriptions", print_subs,
     "the subscriptions (--clientid --topic --node --page --limit)",
     PAGING | O(CLIENTID) | O(TOPIC) | O(NODE), NULL},
    {"routes", NULL, "GET", "/api/v1/routes", print_routes,
     "topic filters and the nodes that have subscribers (--topic)", PAGING | O(TOPIC), NULL},
    {"topics", NULL, "GET", "/api/v1/topics", print_topics, "topic filters with subscribers",
     PAGING, NULL},
    {"retained list", NULL, "GET", "/api/v1/retained", print_retained, "the retained messages",
     PAGING, NULL},
    {"retained show", "TOPIC", "GET", "/api/v1/retained/{}", print_object,
     "the retained message of a topic", 0, NULL},
    {"retained delete", "TOPIC", "DELETE", "/api/v1/retained/{}", print_result,
     "remove the retained message of a topic", 0, NULL},
    {"publish", "TOPIC PAYLOAD", "POST", "/api/v1/publish", print_object,
     "publish a message (--qos 0|1|2 --retain --encoding plain|base64)",
     O(QOS) | O(RETAIN) | O(ENCODING), body_publish},
    {"banned list", NULL, "GET", "/api/v1/banned", print_banned, "the bans in force", PAGING, NULL},
    {"banned add", "AS WHO", "POST", "/api/v1/banned", print_object,
     "ban a clientid, username or address (--reason --duration S | --until EPOCH)",
     O(REASON) | O(DURATION) | O(UNTIL), body_ban},
    {"banned delete", "AS WHO", "DELETE", "/api/v1/banned/{}/{}", print_result, "lift a ban", 0,
     NULL},
    {"users list", NULL, "GET", "/api/v1/users", print_users, "the users of the user table", PAGING,
     NULL},
    {"users show", "USERNAME", "GET", "/api/v1/users/{}", print_object, "one user", 0, NULL},
    {"users add", "USERNAME PASSWORD", "POST", "/api/v1/users", print_object, "add a user", 0,
     body_user_add},
    {"users passwd", "USERNAME PASSWORD", "PUT", "/api/v1/users/{}", print_object,
     "change a user's password", 0, body_user_passwd},
    {"users delete", "USERNAME", "DELETE", "/api/v1/users/{}", print_result, "remove a user", 0,
     NULL},
    {"apikey list", NULL, "GET", "/api/v1/apikeys", print_apikeys, "the API keys (no secrets)",
     PAGING, NULL},
    {"apikey create", NULL, "POST", "/api/v1/apikeys", print_apikey_created,
     "a new API key and its secret, shown once (--key NAME --description TEXT)",
     O(KEY) | O(DESCRIPTION), body_apikey},
    {"apikey delete", "KEY", "DELETE", "/api/v1/apikeys/{}", print_result, "remove an API key", 0,
     NULL},
    {"cluster status", NULL, "GET", "/api/v1/cluster", print_cluster,
     "the nodes of the cluster, their roles and the leader", 0, NULL},
    {"cluster leave", NULL, "POST", "/api/v1/cluster/leave", print_result,
     "make the node answering leave its cluster", 0, NULL},
    {"cluster forget", "NODE", "DELETE", "/api/v1/cluster/nodes/{}", print_result,
     "remove a dead node from the cluster", 0, NULL},
    {"stats", NULL, "GET", "/api/v1/stats", print_stats, "the counters of every node", 0, NULL},
    {"health", NULL, "GET", "/api/v1/health", print_health, "ok (exit 0) or unavailable (exit 1)",
     0, NULL},
};

/* Number of positional arguments of cmd. */
static int ctl_nargs(const struct ctl_command *cmd)
{
    if (!cmd->arg)
        return 0;
    int n = 1;
    for (const char *p = cmd->arg; *p; p++)
        n += *p == ' ';
    return n;
}

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
        fprintf(out, "  %-34s%s\n", w, commands[i].help);
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
static int ctl_request(const struct ctl_opts *o, const struct ctl_command *cmd,
                       const struct ctl_args *a)
{
    char why[256] = "";
    json_t *jbody = NULL;
    if (cmd->body && !(jbody = cmd->body(a, why, sizeof(why)))) {
        fprintf(stderr, "starling ctl: %s\n", why[0] ? why : "out of memory");
        return CTL_EXIT_USAGE;
    }
    char *body_text = jbody ? json_dumps(jbody, JSON_COMPACT) : NULL;
    json_decref(jbody);
    CURL *c = curl_easy_init();
    if (!c) {
        free(body_text);
        fprintf(stderr, "starling ctl: cannot initialise libcurl\n");
        return CTL_EXIT_CONNECT;
    }
    /* the path, each "{}" an argument (percent-encoded), then the query */
    char path[4096];
    size_t used = 0;
    int k = 0;
    for (const char *p = cmd->path; *p && used < sizeof(path) - 1;) {
        if (p[0] == '{' && p[1] == '}' && k < a->npos) {
            char *esc = curl_easy_escape(c, a->pos[k++], 0);
            used += (size_t)snprintf(path + used, sizeof(path) - used, "%s", esc ? esc : "");
            curl_free(esc);
            p += 2;
        } else {
            path[used++] = *p++;
        }
        if (used >= sizeof(path))
            used = sizeof(path) - 1;
    }
    path[used] = '\0';
    char sep = '?';
    for (int i = 0; i < CO_N; i++) {
        if (!a->opt[i] || !copt_query[i][0])
            continue;
        char *esc = curl_easy_escape(c, a->opt[i], 0);
        size_t n = strlen(path);
        snprintf(path + n, sizeof(path) - n, "%c%s=%s", sep, copt_query[i], esc ? esc : "");
        curl_free(esc);
        sep = '&';
    }
    bool v6 = strchr(o->host, ':') != NULL;
    char url[4096 + 400];
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
    struct curl_slist *headers = NULL;
    if (body_text) {
        headers = curl_slist_append(headers, "Content-Type: application/json");
        curl_easy_setopt(c, CURLOPT_HTTPHEADER, headers);
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body_text);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)strlen(body_text));
        if (strcmp(cmd->method, "POST") != 0)
            curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, cmd->method);
    } else if (strcmp(cmd->method, "POST") == 0) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, "");
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, 0L);
    } else if (strcmp(cmd->method, "GET") != 0) {
        curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, cmd->method);
    }
    CURLcode rc = curl_easy_perform(c);
    curl_slist_free_all(headers);
    free(body_text);
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
        {"config", required_argument, NULL, 'c'},
        {"host", required_argument, NULL, 'H'},
        {"port", required_argument, NULL, 'P'},
        {"api-key", required_argument, NULL, 'k'},
        {"json", no_argument, NULL, 'j'},
        {"timeout", required_argument, NULL, 't'},
        {"help", no_argument, NULL, 'h'},
        {"tls", no_argument, NULL, 'T'},
        {"cacert", required_argument, NULL, 'C'},
        /* the commands' options: 256 + enum ctl_copt */
        {"page", required_argument, NULL, 256 + CO_PAGE},
        {"limit", required_argument, NULL, 256 + CO_LIMIT},
        {"cursor", required_argument, NULL, 256 + CO_CURSOR},
        {"node", required_argument, NULL, 256 + CO_NODE},
        {"username", required_argument, NULL, 256 + CO_USERNAME},
        {"clientid-prefix", required_argument, NULL, 256 + CO_PREFIX},
        {"connected", required_argument, NULL, 256 + CO_CONNECTED},
        {"proto-ver", required_argument, NULL, 256 + CO_PROTO},
        {"clientid", required_argument, NULL, 256 + CO_CLIENTID},
        {"topic", required_argument, NULL, 256 + CO_TOPIC},
        {"qos", required_argument, NULL, 256 + CO_QOS},
        {"retain", no_argument, NULL, 256 + CO_RETAIN},
        {"encoding", required_argument, NULL, 256 + CO_ENCODING},
        {"reason", required_argument, NULL, 256 + CO_REASON},
        {"duration", required_argument, NULL, 256 + CO_DURATION},
        {"until", required_argument, NULL, 256 + CO_UNTIL},
        {"description", required_argument, NULL, 256 + CO_DESCRIPTION},
        {"key", required_argument, NULL, 256 + CO_KEY},
        {NULL, 0, NULL, 0},
    };
    struct ctl_args ca = {0};
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
            if (ch >= 256 && ch < 256 + CO_N) {
                ca.opt[ch - 256] = optarg ? optarg : "true";
                break;
            }
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
    if (nargs != ctl_nargs(cmd)) {
        if (cmd->arg)
            fprintf(stderr, "starling ctl: usage: starling ctl %s %s\n", cmd->words, cmd->arg);
        else
            fprintf(stderr, "starling ctl: %s takes no argument\n", cmd->words);
        return CTL_EXIT_USAGE;
    }
    ca.pos = argv + optind + used;
    ca.npos = nargs;
    for (int i = 0; i < nargs; i++)
        if (!*ca.pos[i]) {
            fprintf(stderr, "starling ctl: %s: an argument must not be empty\n", cmd->words);
            return CTL_EXIT_USAGE;
        }
    for (int i = 0; i < CO_N; i++)
        if (ca.opt[i] && !(cmd->opts & (1u << i))) {
            fprintf(stderr, "starling ctl: %s takes no --%s\n", cmd->words, copt_names[i]);
            return CTL_EXIT_USAGE;
        }
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        fprintf(stderr, "starling ctl: cannot initialise libcurl\n");
        return CTL_EXIT_CONNECT;
    }
    rc = ctl_request(&o, cmd, &ca);
    curl_global_cleanup();
    return rc;
}
