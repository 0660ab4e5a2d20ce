/*
 * fileio.c - see fileio.h.
 */
#include "fileio.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

int file_read_all(const char *path, size_t max, char **text, size_t *len)
{
    *text = NULL;
    *len = 0;
    FILE *f = fopen(path, "rb");
    if (!f)
        return -errno;
    size_t cap = 0;
    int r = 0;
    for (;;) {
        if (*len == cap) {
            if (cap >= max) {
                r = -EFBIG;
                break;
            }
            size_t ncap = cap ? cap * 2 : 4096;
            char *nt = realloc(*text, ncap);
            if (!nt) {
                r = -ENOMEM;
                break;
            }
            *text = nt;
            cap = ncap;
        }
        size_t n = fread(*text + *len, 1, cap - *len, f);
        *len += n;
        if (n == 0) {
            if (ferror(f))
                r = -EIO;
            break;
        }
    }
    fclose(f);
    return r;
}
