/*
 * fuzz_admin.c - libFuzzer target for the admin API's request parsing
 * (admin/router.c): routing a method and a raw path against the real route
 * table, percent-decoding query values, paging values, and the JSON body
 * checks (jansson's parser, then the known-fields check).
 *
 * Input: lines "METHOD\nPATH\nPAGE\nLIMIT\nBODY..." (missing lines are
 * empty). Every answer must be one the server can give: a route with its
 * parameters decoded (no NUL, not empty), or 400 / 404 / 405 with the
 * allowed methods.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "admin_int.h"
#include "fuzz_check.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The next line of *p (NUL-terminated copy), advancing *p. */
static char *next_line(const char **p, const char *end)
{
    const char *s = *p, *nl = memchr(s, '\n', (size_t)(end - s));
    const char *e = nl ? nl : end;
    char *line = strndup(s, (size_t)(e - s));
    *p = nl ? nl + 1 : end;
    return line;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *p = (const char *)data, *end = p + size;
    char *method = next_line(&p, end), *path = next_line(&p, end);
    char *page = next_line(&p, end), *limit = next_line(&p, end);
    if (!method || !path || !page || !limit)
        goto out;

    struct admin_params params;
    int status = 0;
    char allow[64];
    const struct admin_route *rt = admin_router_find(admin_routes, admin_n_routes, method, path,
                                                     &params, &status, allow, sizeof(allow));
    if (rt) {
        FUZZ_CHECK(params.n <= ADMIN_MAX_PARAMS);
        for (size_t i = 0; i < params.n; i++) {
            FUZZ_CHECK(params.value[i] && params.value[i][0]);
            FUZZ_CHECK(params.name[i][params.name_len[i]] == '}');
        }
        admin_params_clear(&params);
    } else {
        FUZZ_CHECK(status == 400 || status == 404 || status == 405);
        FUZZ_CHECK(status != 405 || allow[0]);
        FUZZ_CHECK(params.n == 0);
    }

    char *q = strdup(page);
    if (q && admin_query_decode(q) == 0)
        FUZZ_CHECK(strlen(q) <= strlen(page));
    free(q);

    unsigned pg = 0, lim = 0;
    char why[128];
    if (admin_paging_parse(page[0] ? page : NULL, limit[0] ? limit : NULL, &pg, &lim, why,
                           sizeof(why)) == 0) {
        FUZZ_CHECK(pg >= 1 && pg <= ADMIN_MAX_PAGE);
        FUZZ_CHECK(lim >= 1 && lim <= ADMIN_MAX_LIMIT);
    } else {
        FUZZ_CHECK(why[0]);
    }

    json_error_t je;
    json_t *body = json_loadb(p, (size_t)(end - p), JSON_REJECT_DUPLICATES, &je);
    if (json_is_object(body)) {
        static const char *const fields[] = {"topic", "payload", "encoding", "qos", "retain", NULL};
        if (admin_json_check_fields(body, fields, why, sizeof(why)) < 0)
            FUZZ_CHECK(strncmp(why, "unknown field", 13) == 0);
    }
    json_decref(body);
out:
    free(method);
    free(path);
    free(page);
    free(limit);
    return 0;
}
