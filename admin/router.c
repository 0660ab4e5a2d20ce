/*
 * router.c - matching a request to a route, and the values a request
 * carries in its path and query (see admin_int.h).
 *
 * The server hands the router the path exactly as the client sent it (the
 * server's own unescaping is turned off), so that a parameter may hold an
 * encoded '/' (a client id "a/b" is "/clients/a%2Fb"): the path is split at
 * '/' first, then each parameter is decoded on its own.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <microhttpd.h>

#include "admin_int.h"

void admin_params_clear(struct admin_params *p)
{
    for (size_t i = 0; i < p->n; i++)
        free(p->value[i]);
    memset(p, 0, sizeof(*p));
}

const char *admin_params_get(const struct admin_params *p, const char *name)
{
    size_t len = strlen(name);
    for (size_t i = 0; i < p->n; i++)
        if (p->name_len[i] == len && memcmp(p->name[i], name, len) == 0)
            return p->value[i];
    return NULL;
}

/* Decode %XX escapes of s in place with libmicrohttpd's decoder; a decoded
 * NUL (or an escape it leaves as is) is an error. */
static int admin_unescape(char *s)
{
    for (const char *p = s; (p = strchr(p, '%')) != NULL; p++) {
        static const char hex[] = "0123456789abcdefABCDEF";
        if (!p[1] || !p[2] || !strchr(hex, p[1]) || !strchr(hex, p[2]))
            return -EINVAL;
    }
    size_t n = MHD_http_unescape(s);
    if (n != strlen(s))
        return -EINVAL; /* %00 */
    return 0;
}

int admin_query_decode(char *s)
{
    for (char *p = s; *p; p++)
        if (*p == '+')
            *p = ' ';
    return admin_unescape(s);
}

int admin_route_match(const char *pattern, const char *path, struct admin_params *p)
{
    memset(p, 0, sizeof(*p));
    const char *pp = pattern, *sp = path;
    while (*pp && *sp) {
        if (*pp != '/' || *sp != '/')
            break;
        pp++, sp++;
        const char *pe = strchr(pp, '/');
        const char *se = strchr(sp, '/');
        size_t plen = pe ? (size_t)(pe - pp) : strlen(pp);
        size_t slen = se ? (size_t)(se - sp) : strlen(sp);
        if (plen >= 2 && pp[0] == '{' && pp[plen - 1] == '}') {
            if (slen == 0 || p->n == ADMIN_MAX_PARAMS)
                goto nomatch;
            char *v = strndup(sp, slen);
            if (!v)
                goto nomatch;
            p->name[p->n] = pp + 1;
            p->name_len[p->n] = plen - 2;
            p->value[p->n++] = v;
            if (admin_unescape(v) < 0 || !*v) {
                admin_params_clear(p);
                return -EINVAL;
            }
        } else if (plen != slen || memcmp(pp, sp, plen) != 0) {
            goto nomatch;
        }
        pp += plen, sp += slen;
    }
    if (*pp || *sp)
        goto nomatch;
    return 1;
nomatch:
    admin_params_clear(p);
    return 0;
}

const struct admin_route *admin_router_find(const struct admin_route *routes, size_t n,
                                            const char *method, const char *path,
                                            struct admin_params *params, int *status, char *allow,
                                            size_t allowlen)
{
    const char *m = strcmp(method, "HEAD") == 0 ? "GET" : method;
    size_t used = 0;
    bool bad = false;
    if (allowlen)
        allow[0] = '\0';
    for (size_t i = 0; i < n; i++) {
        struct admin_params tmp;
        int rc = admin_route_match(routes[i].pattern, path, &tmp);
        if (rc < 0) {
            bad = true;
            continue;
        }
        if (rc == 0)
            continue;
        if (strcmp(routes[i].method, m) == 0) {
            *params = tmp;
            return &routes[i];
        }
        admin_params_clear(&tmp);
        if (allowlen && !strstr(allow, routes[i].method)) {
            int w =
                snprintf(allow + used, allowlen - used, "%s%s", used ? ", " : "", routes[i].method);
            if (w > 0 && (size_t)w < allowlen - used)
                used += (size_t)w;
        }
    }
    memset(params, 0, sizeof(*params));
    *status = used ? 405 : bad ? 400 : 404;
    return NULL;
}

/* Strict decimal in 1..max. */
static int admin_parse_count(const char *s, unsigned max, unsigned *out)
{
    if (!*s || strlen(s) > 9)
        return -EINVAL;
    unsigned v = 0;
    for (const char *p = s; *p; p++) {
        if (*p < '0' || *p > '9')
            return -EINVAL;
        v = v * 10 + (unsigned)(*p - '0');
    }
    if (v < 1 || v > max)
        return -EINVAL;
    *out = v;
    return 0;
}

int admin_paging_parse(const char *page, const char *limit, unsigned *page_out, unsigned *limit_out,
                       char *err, size_t errlen)
{
    *page_out = 1;
    *limit_out = ADMIN_DEFAULT_LIMIT;
    if (page && admin_parse_count(page, ADMIN_MAX_PAGE, page_out) < 0) {
        snprintf(err, errlen, "page must be an integer from 1 to %d, not '%.40s'", ADMIN_MAX_PAGE,
                 page);
        return -EINVAL;
    }
    if (limit && admin_parse_count(limit, ADMIN_MAX_LIMIT, limit_out) < 0) {
        snprintf(err, errlen, "limit must be an integer from 1 to %d, not '%.40s'", ADMIN_MAX_LIMIT,
                 limit);
        return -EINVAL;
    }
    return 0;
}

int admin_json_check_fields(json_t *o, const char *const *allowed, char *err, size_t errlen)
{
    const char *key;
    json_t *v;
    json_object_foreach(o, key, v)
    {
        bool known = false;
        for (const char *const *a = allowed; a && *a && !known; a++)
            known = strcmp(*a, key) == 0;
        if (!known) {
            snprintf(err, errlen, "unknown field '%.64s'", key);
            return -EINVAL;
        }
    }
    return 0;
}
