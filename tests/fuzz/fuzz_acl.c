/*
 * fuzz_acl.c - libFuzzer target for the aclfile parser and the checks.
 *
 * The input up to the first NUL byte is an aclfile; the bytes after it are
 * split at '\n' into a user name, a client id and topics, each checked for
 * read, write and subscribe. A parse error must come with "line N: ...".
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "acl.h"
#include "fuzz_check.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *copy = malloc(size ? size : 1);
    if (!copy)
        return 0;
    if (size)
        memcpy(copy, data, size);
    const char *nul = memchr(copy, '\0', size);
    size_t flen = nul ? (size_t)(nul - copy) : size;

    struct acl *acl = NULL;
    char err[256] = "";
    int r = acl_parse(copy, flen, &acl, err, sizeof(err));
    if (r < 0) {
        FUZZ_CHECK(acl == NULL && strncmp(err, "line ", 5) == 0);
        free(copy);
        return 0;
    }
    const char *p = nul ? nul + 1 : copy + size, *end = copy + size;
    const char *f[8];
    size_t fl[8], n = 0;
    while (p < end && n < 8) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *e = nl ? nl : end;
        f[n] = p;
        fl[n++] = (size_t)(e - p);
        p = nl ? nl + 1 : end;
    }
    if (n >= 3) {
        for (size_t i = 2; i < n; i++) {
            for (int a = ACL_READ; a <= ACL_SUBSCRIBE; a <<= 1) {
                (void)acl_check(acl, f[0], fl[0], f[1], fl[1], f[i], fl[i], (enum acl_access)a);
                (void)acl_check(acl, NULL, 0, f[1], fl[1], f[i], fl[i], (enum acl_access)a);
            }
            bool x = acl_filters_intersect(f[2], fl[2], f[i], fl[i]);
            FUZZ_CHECK(x == acl_filters_intersect(f[i], fl[i], f[2], fl[2]));
            (void)acl_filter_covers(f[2], fl[2], f[i], fl[i]);
        }
    }
    acl_unref(acl);
    free(copy);
    return 0;
}
