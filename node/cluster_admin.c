/*
 * cluster_admin.c - the admin API on a cluster: any node answers for all
 * (docs/api.md, docs/cluster.md).
 *
 * Gather. A query (admin_query.c) goes to every live peer as a
 * chan.AdminQuery frame; each peer's admin query thread answers it from its
 * own broker (chan.AdminAnswer, a JSON text) while this node answers its own
 * part; the asker waits at most CN_GATHER_WAIT_MS for the others. A peer
 * that is not live, or does not answer in time, is listed with an error.
 * Queries are answered on a thread of their own, never on the cluster
 * thread that receives the frames: a query waits for the workers.
 *
 * Tables. The operator's tables (tables.h) are the RTABLE_ADMIN records of
 * the replicated state machine: read from this node's copy (fsm_admin_*),
 * changed by proposing AdminPut / AdminDelete and waiting until the entry
 * is applied here too, so that the node that answered a change shows it.
 */
#include "cluster_node_int.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "admin_local.h"
#include "broker.h"
#include "channel.pb-c.h"
#include "cmd.h"
#include "fsm.h"
#include "log.h"
#include "raft_node.h"
#include "tables.h"

#define CN_GATHER_WAIT_MS 3000
#define CN_APPLY_WAIT_MS 5000
#define CN_QUERY_QUEUE_MAX 64

/* A query of another node waiting for the query thread. */
struct cn_query {
    struct cn_query *next;
    uint64_t from, id;
    char *text;
};

/* A gather in progress: answers[i] for peer nodes[i]. */
struct cn_call {
    struct cn_call *next;
    uint64_t id;
    unsigned n;
    unsigned asked, received; /* queries sent, answers received */
    uint64_t nodes[MAX_PEERS];
    char *answers[MAX_PEERS]; /* JSON text, or NULL */
    char *errors[MAX_PEERS];
};

struct cn_admin {
    pthread_mutex_t mu;
    pthread_cond_t cv; /* a query queued, an answer arrived, quit */
    pthread_t thread;
    bool started, quit;
    struct cn_query *head, *tail;
    unsigned queued;
    struct cn_call *calls;
    uint64_t next_id;
};

static uint64_t mono_ms(void)
{
    return cn_mono_ms();
}

static void deadline_ts(struct timespec *ts, uint64_t ms)
{
    clock_gettime(CLOCK_REALTIME, ts);
    ts->tv_sec += (time_t)(ms / 1000);
    ts->tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

/* ---- frames -------------------------------------------------------------- */

static void send_answer(struct cluster_node *cn, uint64_t to, uint64_t id, const char *answer,
                        const char *error)
{
    Starling__Chan__AdminAnswer a = STARLING__CHAN__ADMIN_ANSWER__INIT;
    a.id = id;
    a.answer = (char *)answer;
    a.error = (char *)error;
    Starling__Chan__Frame fr = STARLING__CHAN__FRAME__INIT;
    fr.frame_case = STARLING__CHAN__FRAME__FRAME_ADMIN_ANSWER;
    fr.admin_answer = &a;
    if (cn_send_frame(cn, to, &fr) < 0)
        log_warn("cluster: cannot send an admin answer to %016llx", (unsigned long long)to);
}

static void answer_one(struct cluster_node *cn, struct cn_query *q)
{
    json_error_t je;
    json_t *query = json_loads(q->text, 0, &je);
    char why[256] = "";
    json_t *res = NULL;
    if (!json_is_object(query))
        snprintf(why, sizeof(why), "the query is not a JSON object");
    else if (!cn->local.query_local)
        snprintf(why, sizeof(why), "no admin API on this node");
    else
        res = cn->local.query_local(cn->local.ud, query, why, sizeof(why));
    json_decref(query);
    char *text = res ? json_dumps(res, JSON_COMPACT) : NULL;
    json_decref(res);
    send_answer(cn, q->from, q->id, text, text ? NULL : (why[0] ? why : "out of memory"));
    free(text);
}

static void *cn_admin_thread(void *arg)
{
    struct cluster_node *cn = arg;
    struct cn_admin *a = cn->adm;
    pthread_mutex_lock(&a->mu);
    while (!a->quit) {
        struct cn_query *q = a->head;
        if (!q) {
            pthread_cond_wait(&a->cv, &a->mu);
            continue;
        }
        a->head = q->next;
        if (!a->head)
            a->tail = NULL;
        a->queued--;
        pthread_mutex_unlock(&a->mu);
        answer_one(cn, q);
        free(q->text);
        free(q);
        pthread_mutex_lock(&a->mu);
    }
    pthread_mutex_unlock(&a->mu);
    return NULL;
}

void cn_admin_on_query(struct cluster_node *cn, uint64_t from, const Starling__Chan__AdminQuery *f)
{
    struct cn_admin *a = cn->adm;
    if (!a || !f->query)
        return;
    struct cn_query *q = calloc(1, sizeof(*q));
    if (q)
        q->text = strdup(f->query);
    if (!q || !q->text) {
        free(q);
        send_answer(cn, from, f->id, NULL, "out of memory");
        return;
    }
    q->from = from;
    q->id = f->id;
    pthread_mutex_lock(&a->mu);
    bool full = a->queued >= CN_QUERY_QUEUE_MAX || a->quit;
    if (!full) {
        if (a->tail)
            a->tail->next = q;
        else
            a->head = q;
        a->tail = q;
        a->queued++;
        pthread_cond_broadcast(&a->cv);
    }
    pthread_mutex_unlock(&a->mu);
    if (full) {
        send_answer(cn, from, f->id, NULL, "too many admin queries at once");
        free(q->text);
        free(q);
    }
}

void cn_admin_on_answer(struct cluster_node *cn, uint64_t from,
                        const Starling__Chan__AdminAnswer *f)
{
    struct cn_admin *a = cn->adm;
    if (!a)
        return;
    pthread_mutex_lock(&a->mu);
    for (struct cn_call *c = a->calls; c; c = c->next) {
        if (c->id != f->id)
            continue;
        for (unsigned i = 0; i < c->n; i++) {
            if (c->nodes[i] != from || c->answers[i] || c->errors[i])
                continue;
            if (f->answer)
                c->answers[i] = strdup(f->answer);
            else
                c->errors[i] = strdup(f->error ? f->error : "failed");
            c->received++;
            pthread_cond_broadcast(&a->cv);
        }
    }
    pthread_mutex_unlock(&a->mu);
}

/* ---- gather -------------------------------------------------------------- */

static int entry_cmp(const void *x, const void *y)
{
    json_t *a = *(json_t *const *)x, *b = *(json_t *const *)y;
    return strcmp(json_string_value(json_object_get(a, "node")),
                  json_string_value(json_object_get(b, "node")));
}

json_t *cn_gather(struct cluster_node *cn, json_t *q, char *err, size_t errlen)
{
    struct cn_admin *a = cn->adm;
    char *text = json_dumps(q, JSON_COMPACT);
    struct cn_call *call = calloc(1, sizeof(*call));
    char names[MAX_PEERS][ADMIN_NAME_MAX];
    bool live[MAX_PEERS];
    if (!text || !call || !a) {
        free(text);
        free(call);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    /* the members to ask */
    pthread_mutex_lock(&cn->mu);
    uint64_t now = mono_ms();
    for (unsigned i = 0; i < cn->n_peers && call->n < MAX_PEERS; i++) {
        struct peer *p = &cn->peers[i];
        if (p->left)
            continue;
        call->nodes[call->n] = p->node;
        snprintf(names[call->n], sizeof(names[0]), "%s", p->name);
        live[call->n] = p->seen_ms && now - p->seen_ms <= cn->b->cfg.cluster_down_after;
        call->n++;
    }
    pthread_mutex_unlock(&cn->mu);

    Starling__Chan__AdminQuery aq = STARLING__CHAN__ADMIN_QUERY__INIT;
    aq.query = text;
    Starling__Chan__Frame fr = STARLING__CHAN__FRAME__INIT;
    fr.frame_case = STARLING__CHAN__FRAME__FRAME_ADMIN_QUERY;
    fr.admin_query = &aq;
    pthread_mutex_lock(&a->mu);
    call->id = ++a->next_id;
    aq.id = call->id;
    call->next = a->calls;
    a->calls = call;
    pthread_mutex_unlock(&a->mu);
    size_t flen = starling__chan__frame__get_packed_size(&fr);
    uint8_t *frame = malloc(flen);
    if (frame)
        starling__chan__frame__pack(&fr, frame);
    unsigned asked = 0;
    for (unsigned i = 0; i < call->n; i++) {
        const char *why = NULL;
        if (!live[i])
            why = "the node is not reachable";
        else if (!frame || cluster_send(cn->c, call->nodes[i], frame, flen) < 0)
            why = "cannot send the query to the node";
        pthread_mutex_lock(&a->mu);
        if (why)
            call->errors[i] = strdup(why);
        else
            asked++;
        pthread_mutex_unlock(&a->mu);
    }
    free(frame);
    pthread_mutex_lock(&a->mu);
    call->asked = asked;
    pthread_mutex_unlock(&a->mu);

    /* this node's part, meanwhile */
    char why[256] = "";
    json_t *mine = cn->local.query_local(cn->local.ud, q, why, sizeof(why));

    struct timespec ts;
    deadline_ts(&ts, CN_GATHER_WAIT_MS);
    pthread_mutex_lock(&a->mu);
    while (call->received < call->asked && !a->quit)
        if (pthread_cond_timedwait(&a->cv, &a->mu, &ts) != 0)
            break;
    for (struct cn_call **pp = &a->calls; *pp; pp = &(*pp)->next)
        if (*pp == call) {
            *pp = call->next;
            break;
        }
    pthread_mutex_unlock(&a->mu);

    json_t *out = json_array();
    json_array_append_new(out, mine ? json_pack("{s:s, s:o}", "node", cn->node_name, "result", mine)
                                    : json_pack("{s:s, s:s}", "node", cn->node_name, "error", why));
    for (unsigned i = 0; i < call->n; i++) {
        json_t *res = call->answers[i] ? json_loads(call->answers[i], 0, NULL) : NULL;
        if (res)
            json_array_append_new(out, json_pack("{s:s, s:o}", "node", names[i], "result", res));
        else
            json_array_append_new(
                out,
                json_pack("{s:s, s:s}", "node", names[i], "error",
                          call->errors[i] ? call->errors[i] : "the node did not answer in time"));
        free(call->answers[i]);
        free(call->errors[i]);
    }
    free(call);
    free(text);
    /* node name order */
    size_t n = json_array_size(out);
    json_t **v = malloc((n ? n : 1) * sizeof(*v));
    if (v) {
        for (size_t i = 0; i < n; i++)
            v[i] = json_incref(json_array_get(out, i));
        qsort(v, n, sizeof(*v), entry_cmp);
        json_array_clear(out);
        for (size_t i = 0; i < n; i++)
            json_array_append_new(out, v[i]);
        free(v);
    }
    return out;
}

int cn_admin_start(struct cluster_node *cn)
{
    struct cn_admin *a = calloc(1, sizeof(*a));
    if (!a)
        return -ENOMEM;
    pthread_mutex_init(&a->mu, NULL);
    pthread_cond_init(&a->cv, NULL);
    cn->adm = a;
    if (pthread_create(&a->thread, NULL, cn_admin_thread, cn) != 0) {
        cn->adm = NULL;
        pthread_cond_destroy(&a->cv);
        pthread_mutex_destroy(&a->mu);
        free(a);
        return -EAGAIN;
    }
    a->started = true;
    return 0;
}

void cn_admin_stop(struct cluster_node *cn)
{
    struct cn_admin *a = cn->adm;
    if (!a || !a->started)
        return;
    pthread_mutex_lock(&a->mu);
    a->quit = true;
    pthread_cond_broadcast(&a->cv);
    pthread_mutex_unlock(&a->mu);
    pthread_join(a->thread, NULL);
    a->started = false;
}

void cn_admin_free(struct cluster_node *cn)
{
    struct cn_admin *a = cn->adm;
    if (!a)
        return;
    cn_admin_stop(cn);
    while (a->head) {
        struct cn_query *q = a->head;
        a->head = q->next;
        free(q->text);
        free(q);
    }
    pthread_cond_destroy(&a->cv);
    pthread_mutex_destroy(&a->mu);
    free(a);
    cn->adm = NULL;
}

/* ---- the replicated tables ----------------------------------------------- */

static int ct_get(void *ud, int table, const char *key, char **val)
{
    struct cluster_node *cn = ud;
    return fsm_admin_get(cn->fsm, (unsigned)table, key, strlen(key), val);
}

struct ct_scan {
    tables_visit_fn fn;
    void *ud;
};

static int ct_scan_one(void *ud, const char *key, const char *val)
{
    struct ct_scan *s = ud;
    return s->fn(s->ud, key, val);
}

static int ct_scan(void *ud, int table, tables_visit_fn fn, void *fud)
{
    struct cluster_node *cn = ud;
    struct ct_scan s = {fn, fud};
    return fsm_admin_scan(cn->fsm, (unsigned)table, ct_scan_one, &s);
}

static bool ct_empty(void *ud, int table)
{
    struct cluster_node *cn = ud;
    return fsm_admin_empty(cn->fsm, (unsigned)table);
}

/* Propose batch b, then wait until this node applied it. */
static int ct_propose(struct cluster_node *cn, struct cmd_batch *b, char *err, size_t errlen)
{
    size_t len;
    const void *e = cmd_batch_data(b, &len);
    uint64_t index = 0;
    int r = e ? cn_propose_wait_index(cn, e, len, &index) : -ENOMEM;
    if (r == -EINPROGRESS) {
        snprintf(err, errlen, "committed, but not applied on the leader yet (out of memory)");
        return -EAGAIN;
    }
    if (r < 0) {
        snprintf(err, errlen, "%s", strerror(-r));
        return r == -ENOTCONN || r == -ECONNABORTED || r == -ETIMEDOUT ? -EAGAIN : r;
    }
    uint64_t deadline = mono_ms() + CN_APPLY_WAIT_MS;
    /* the tables' own index: libraft's counts entries deferred (the
     * section 5.4.2 guard, out of memory) that are not in the tables yet */
    while (fsm_visible(cn->fsm) < index) {
        if (mono_ms() >= deadline) {
            snprintf(err, errlen, "committed, but not applied on this node yet");
            return -EAGAIN;
        }
        struct timespec nap = {0, 2 * 1000 * 1000};
        nanosleep(&nap, NULL);
    }
    return 0;
}

static int ct_put(void *ud, int table, const char *key, const char *val, char *err, size_t errlen)
{
    struct cluster_node *cn = ud;
    if (!*key || strlen(key) > TABLES_KEY_MAX || strlen(val) > TABLES_VALUE_MAX) {
        snprintf(err, errlen, "bad record");
        return -EINVAL;
    }
    struct cmd_batch *b = cmd_batch_new();
    int r = b ? cmd_admin_put(b, (unsigned)table, key, strlen(key), val, strlen(val)) : -ENOMEM;
    if (r == 0)
        r = ct_propose(cn, b, err, errlen);
    cmd_batch_free(b);
    return r;
}

static int ct_del(void *ud, int table, const char *key, char *err, size_t errlen)
{
    struct cluster_node *cn = ud;
    char *old = NULL;
    if (fsm_admin_get(cn->fsm, (unsigned)table, key, strlen(key), &old) < 0)
        return -ENOENT;
    free(old);
    struct cmd_batch *b = cmd_batch_new();
    int r = b ? cmd_admin_delete(b, (unsigned)table, key, strlen(key)) : -ENOMEM;
    if (r == 0)
        r = ct_propose(cn, b, err, errlen);
    cmd_batch_free(b);
    return r;
}

const struct tables_ops cluster_tables_ops = {
    .get = ct_get,
    .scan = ct_scan,
    .empty = ct_empty,
    .put = ct_put,
    .del = ct_del,
};
