/*
 * acl.c - Mosquitto-syntax ACL files: parse and decide (see acl.h).
 *
 * Users' blocks are kept in an array sorted by name (bsearch), the
 * anonymous block and the patterns on their own. A rule is a filter and a
 * mask of access bits; `deny` is the empty mask.
 */
#include "acl.h"
#include "fileio.h"

#include <errno.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "topic.h"

#define ACL_FILE_MAX (64u << 20)
#define ACL_DENY 0

struct acl_rule {
    char *filter;
    size_t len;
    uint8_t access; /* enum acl_access bits, ACL_DENY for deny */
    bool subst;     /* a pattern with %u or %c */
    bool user_subst;
};

struct acl_rules {
    struct acl_rule *v;
    size_t n, cap;
};

struct acl_user {
    char *name;
    size_t len;
    struct acl_rules rules;
};

struct acl {
    atomic_int refs;
    struct acl_user *users;
    size_t nusers, capusers;
    struct acl_rules anonymous;
    struct acl_rules patterns;
};

static void acl_errf(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || !errlen)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* ---- filters against filters ---- */

static size_t acl_level_end(const char *s, size_t len, size_t p)
{
    const char *e = memchr(s + p, '/', len - p);
    return e ? (size_t)(e - s) : len;
}

static bool acl_is(const char *s, size_t p, size_t e, char c)
{
    return e - p == 1 && s[p] == c;
}

static bool acl_first_is_wild(const char *s, size_t len)
{
    return len > 0 && (s[0] == '+' || s[0] == '#') && (len == 1 || s[1] == '/');
}

bool acl_filters_intersect(const char *a, size_t alen, const char *b, size_t blen)
{
    if (alen == 0 || blen == 0)
        return false;
    /* [MQTT-3.1.1 4.7.2-1, MQTT-5.0 4.7.2-1] first-level wildcards never match a "$" topic. */
    if ((acl_first_is_wild(a, alen) && b[0] == '$') || (acl_first_is_wild(b, blen) && a[0] == '$'))
        return false;
    size_t ap = 0, bp = 0;
    bool amore = true, bmore = true;
    for (;;) {
        if (!amore && !bmore)
            return true;
        size_t ae = amore ? acl_level_end(a, alen, ap) : ap;
        size_t be = bmore ? acl_level_end(b, blen, bp) : bp;
        /* '#' matches the rest, also the parent level ("a/#" and "a"). */
        if ((amore && acl_is(a, ap, ae, '#')) || (bmore && acl_is(b, bp, be, '#')))
            return true;
        if (!amore || !bmore)
            return false;
        if (!acl_is(a, ap, ae, '+') && !acl_is(b, bp, be, '+') &&
            (ae - ap != be - bp || memcmp(a + ap, b + bp, ae - ap) != 0))
            return false;
        amore = ae < alen;
        bmore = be < blen;
        ap = ae + 1;
        bp = be + 1;
    }
}

bool acl_filter_covers(const char *d, size_t dlen, const char *f, size_t flen)
{
    if (dlen == 0 || flen == 0)
        return false;
    if (acl_first_is_wild(d, dlen) && f[0] == '$')
        return false;
    size_t dp = 0, fp = 0;
    bool dmore = true, fmore = true;
    for (;;) {
        if (!dmore && !fmore)
            return true;
        size_t de = dmore ? acl_level_end(d, dlen, dp) : dp;
        size_t fe = fmore ? acl_level_end(f, flen, fp) : fp;
        if (dmore && acl_is(d, dp, de, '#'))
            return true;
        if (!dmore || !fmore)
            return false;
        if (acl_is(f, fp, fe, '#'))
            return false;
        if (acl_is(f, fp, fe, '+')) {
            if (!acl_is(d, dp, de, '+'))
                return false;
        } else if (!acl_is(d, dp, de, '+') &&
                   (de - dp != fe - fp || memcmp(d + dp, f + fp, de - dp) != 0)) {
            return false;
        }
        dmore = de < dlen;
        fmore = fe < flen;
        dp = de + 1;
        fp = fe + 1;
    }
}

/* ---- building ---- */

static int acl_rules_add(struct acl_rules *r, const char *filter, size_t len, uint8_t access,
                         bool pattern)
{
    if (r->n == r->cap) {
        size_t nc = r->cap ? r->cap * 2 : 8;
        void *nv = realloc(r->v, nc * sizeof(*r->v));
        if (!nv)
            return -ENOMEM;
        r->v = nv;
        r->cap = nc;
    }
    struct acl_rule *x = &r->v[r->n];
    x->filter = strndup(filter, len);
    if (!x->filter)
        return -ENOMEM;
    x->len = len;
    x->access = access;
    x->user_subst = pattern && memmem(filter, len, "%u", 2) != NULL;
    x->subst = x->user_subst || (pattern && memmem(filter, len, "%c", 2) != NULL);
    r->n++;
    return 0;
}

static void acl_rules_free(struct acl_rules *r)
{
    for (size_t i = 0; i < r->n; i++)
        free(r->v[i].filter);
    free(r->v);
}

static void acl_free(struct acl *acl)
{
    if (!acl)
        return;
    for (size_t i = 0; i < acl->nusers; i++) {
        free(acl->users[i].name);
        acl_rules_free(&acl->users[i].rules);
    }
    free(acl->users);
    acl_rules_free(&acl->anonymous);
    acl_rules_free(&acl->patterns);
    free(acl);
}

/* The block of user name (len bytes), created when missing. Linear while
 * parsing (users are sorted once at the end). */
static struct acl_rules *acl_user_block(struct acl *acl, const char *name, size_t len)
{
    for (size_t i = 0; i < acl->nusers; i++)
        if (acl->users[i].len == len && memcmp(acl->users[i].name, name, len) == 0)
            return &acl->users[i].rules;
    if (acl->nusers == acl->capusers) {
        size_t nc = acl->capusers ? acl->capusers * 2 : 8;
        void *nv = realloc(acl->users, nc * sizeof(*acl->users));
        if (!nv)
            return NULL;
        acl->users = nv;
        acl->capusers = nc;
    }
    struct acl_user *u = &acl->users[acl->nusers];
    memset(u, 0, sizeof(*u));
    u->name = strndup(name, len);
    if (!u->name)
        return NULL;
    u->len = len;
    acl->nusers++;
    return &u->rules;
}

static int acl_user_cmp(const void *a, const void *b)
{
    const struct acl_user *x = a, *y = b;
    size_t n = x->len < y->len ? x->len : y->len;
    int c = memcmp(x->name, y->name, n);
    if (c)
        return c;
    return x->len < y->len ? -1 : x->len > y->len;
}

static bool acl_space(char c)
{
    return c == ' ' || c == '\t';
}

/* The next space-separated word of [*p, end). */
static size_t acl_word(const char **p, const char *end, const char **w)
{
    while (*p < end && acl_space(**p))
        (*p)++;
    *w = *p;
    while (*p < end && !acl_space(**p))
        (*p)++;
    return (size_t)(*p - *w);
}

static bool acl_word_is(const char *w, size_t n, const char *s)
{
    return n == strlen(s) && memcmp(w, s, n) == 0;
}

int acl_parse(const char *text, size_t len, struct acl **out, char *err, size_t errlen)
{
    struct acl *acl = calloc(1, sizeof(*acl));
    if (!acl)
        return -ENOMEM;
    atomic_init(&acl->refs, 1);
    struct acl_rules *block = &acl->anonymous;
    unsigned line = 0;
    int r = 0;
    const char *p = text, *end = text + len;
    while (p < end && r == 0) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t n = nl ? (size_t)(nl - p) : (size_t)(end - p);
        const char *next = nl ? nl + 1 : end;
        line++;
        while (n > 0 && (p[n - 1] == '\r' || acl_space(p[n - 1])))
            n--;
        const char *le = p + n;
        if (memchr(p, '\0', n)) {
            acl_errf(err, errlen, "line %u: NUL byte", line);
            r = -EINVAL;
            break;
        }
        const char *w;
        size_t wn = acl_word(&p, le, &w);
        if (wn == 0 || w[0] == '#') {
            p = next;
            continue;
        }
        if (acl_word_is(w, wn, "user")) {
            const char *name;
            acl_word(&p, le, &name);
            if (name == le) {
                acl_errf(err, errlen, "line %u: missing user name", line);
                r = -EINVAL;
                break;
            }
            /* The name is the rest of the line, as in Mosquitto. */
            block = acl_user_block(acl, name, (size_t)(le - name));
            if (!block)
                r = -ENOMEM;
        } else if (acl_word_is(w, wn, "topic") || acl_word_is(w, wn, "pattern")) {
            bool pattern = w[0] == 'p';
            const char *a, *f;
            size_t an = acl_word(&p, le, &a);
            acl_word(&p, le, &f); /* skips the spaces before the filter */
            f = f < le ? f : le;
            uint8_t access = ACL_READ | ACL_WRITE;
            if (an == 0) {
                acl_errf(err, errlen, "line %u: missing topic", line);
                r = -EINVAL;
                break;
            }
            if (f == le) { /* one word: it is the filter, readwrite */
                f = a;
            } else if (acl_word_is(a, an, "read")) {
                access = ACL_READ;
            } else if (acl_word_is(a, an, "write")) {
                access = ACL_WRITE;
            } else if (acl_word_is(a, an, "readwrite")) {
                access = ACL_READ | ACL_WRITE;
            } else if (acl_word_is(a, an, "deny")) {
                access = ACL_DENY;
            } else {
                acl_errf(err, errlen, "line %u: invalid access type \"%.*s\"", line, (int)an, a);
                r = -EINVAL;
                break;
            }
            size_t fn = (size_t)(le - f);
            if (!topic_filter_valid(f, fn)) {
                acl_errf(err, errlen, "line %u: invalid topic filter \"%.*s\"", line, (int)fn, f);
                r = -EINVAL;
                break;
            }
            r = acl_rules_add(pattern ? &acl->patterns : block, f, fn, access, pattern);
        } else {
            acl_errf(err, errlen, "line %u: unknown keyword \"%.*s\"", line, (int)wn, w);
            r = -EINVAL;
        }
        p = next;
    }
    if (r == -ENOMEM)
        acl_errf(err, errlen, "out of memory");
    if (r < 0) {
        acl_free(acl);
        return r;
    }
    if (acl->nusers)
        qsort(acl->users, acl->nusers, sizeof(*acl->users), acl_user_cmp);
    *out = acl;
    return 0;
}

int acl_load(const char *path, struct acl **out, char *err, size_t errlen)
{
    char *text;
    size_t len;
    int r = file_read_all(path, ACL_FILE_MAX, &text, &len);
    if (r == -EFBIG || r == -ENOMEM)
        acl_errf(err, errlen, "%s: %s", path, r == -EFBIG ? "larger than 64 MiB" : "out of memory");
    else if (r == -EIO)
        acl_errf(err, errlen, "%s: read error", path);
    else if (r < 0) {
        acl_errf(err, errlen, "%s: %s", path, strerror(-r));
        return r;
    }
    if (r == 0) {
        char why[512] = "";
        r = acl_parse(text, len, out, why, sizeof(why));
        if (r < 0)
            acl_errf(err, errlen, "%s: %s", path, why);
    }
    free(text);
    return r;
}

struct acl *acl_ref(struct acl *acl)
{
    if (acl)
        atomic_fetch_add(&acl->refs, 1);
    return acl;
}

void acl_unref(struct acl *acl)
{
    if (acl && atomic_fetch_sub(&acl->refs, 1) == 1)
        acl_free(acl);
}

/* ---- deciding ---- */

struct acl_query {
    const char *user, *cid, *topic;
    size_t ulen, clen, tlen;
    enum acl_access access;
};

/* Does rule filter f (flen bytes, substituted) decide q? Returns the rule's
 * relation: matches (a topic name matches f; for SUBSCRIBE, the filters
 * intersect), covers (for deny rules: every topic of the query matches f). */
static bool acl_rule_hits(const char *f, size_t flen, const struct acl_query *q, bool deny)
{
    if (q->access == ACL_SUBSCRIBE)
        return deny ? acl_filter_covers(f, flen, q->topic, q->tlen)
                    : acl_filters_intersect(f, flen, q->topic, q->tlen);
    return topic_match(f, flen, q->topic, q->tlen);
}

static bool acl_rule_grants(const struct acl_rule *r, const struct acl_query *q)
{
    uint8_t need = q->access == ACL_SUBSCRIBE ? ACL_READ : (uint8_t)q->access;
    return (r->access & need) != 0;
}

/* Substitute %u and %c of rule into buf (or a malloc'd buffer). */
static char *acl_subst(const struct acl_rule *r, const struct acl_query *q, char *buf, size_t cap,
                       size_t *outlen)
{
    size_t n = 0;
    for (size_t i = 0; i < r->len; i++) {
        if (r->filter[i] == '%' && i + 1 < r->len && r->filter[i + 1] == 'c') {
            n += q->clen;
            i++;
        } else if (r->filter[i] == '%' && i + 1 < r->len && r->filter[i + 1] == 'u' && q->user) {
            n += q->ulen;
            i++;
        } else {
            n++;
        }
    }
    char *out = n <= cap ? buf : malloc(n ? n : 1);
    if (!out)
        return NULL;
    size_t o = 0;
    for (size_t i = 0; i < r->len; i++) {
        if (r->filter[i] == '%' && i + 1 < r->len && r->filter[i + 1] == 'c') {
            memcpy(out + o, q->cid, q->clen);
            o += q->clen;
            i++;
        } else if (r->filter[i] == '%' && i + 1 < r->len && r->filter[i + 1] == 'u' && q->user) {
            memcpy(out + o, q->user, q->ulen);
            o += q->ulen;
            i++;
        } else {
            out[o++] = r->filter[i];
        }
    }
    *outlen = n;
    return out;
}

/* 1 allow, -1 deny, 0 no decision. Denies are checked before grants. */
static int acl_rules_decide(const struct acl_rules *rs, const struct acl_query *q)
{
    char buf[256];
    for (int pass = 0; pass < 2; pass++) {
        bool deny_pass = pass == 0;
        for (size_t i = 0; i < rs->n; i++) {
            const struct acl_rule *r = &rs->v[i];
            if ((r->access == ACL_DENY) != deny_pass)
                continue;
            if (!deny_pass && !acl_rule_grants(r, q))
                continue;
            if (r->user_subst && !q->user)
                continue;
            const char *f = r->filter;
            size_t flen = r->len;
            if (r->subst) {
                f = acl_subst(r, q, buf, sizeof(buf), &flen);
                if (!f)
                    return -1; /* out of memory: refuse */
            }
            bool hit = acl_rule_hits(f, flen, q, deny_pass);
            if (f != r->filter && f != buf)
                free((char *)f);
            if (hit)
                return deny_pass ? -1 : 1;
        }
    }
    return 0;
}

bool acl_check(const struct acl *acl, const char *user, size_t ulen, const char *client_id,
               size_t clen, const char *topic, size_t tlen, enum acl_access access)
{
    if (!acl || !topic || tlen == 0)
        return false;
    struct acl_query q = {.user = user,
                          .ulen = ulen,
                          .cid = client_id ? client_id : "",
                          .clen = client_id ? clen : 0,
                          .topic = topic,
                          .tlen = tlen,
                          .access = access};
    const struct acl_rules *own = NULL;
    if (!user) {
        own = &acl->anonymous;
    } else if (acl->nusers) {
        struct acl_user key = {.name = (char *)user, .len = ulen};
        const struct acl_user *u =
            bsearch(&key, acl->users, acl->nusers, sizeof(*acl->users), acl_user_cmp);
        own = u ? &u->rules : NULL;
    }
    if (own) {
        int d = acl_rules_decide(own, &q);
        if (d != 0)
            return d > 0;
    }
    if (acl->patterns.n == 0)
        return false;
    /* A '+' or '#' in a substituted name would widen the pattern. */
    if ((user && (memchr(user, '+', ulen) || memchr(user, '#', ulen))) ||
        memchr(q.cid, '+', q.clen) || memchr(q.cid, '#', q.clen))
        return false;
    return acl_rules_decide(&acl->patterns, &q) > 0;
}
