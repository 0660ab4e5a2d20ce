/*
 * fuzz_check.h - the fuzz targets' one assertion: a failed check prints
 * where and what, then aborts, which libFuzzer reports as a crash and keeps
 * the input.
 */
#ifndef STARLING_FUZZ_CHECK_H
#define STARLING_FUZZ_CHECK_H

#include <stdio.h>
#include <stdlib.h>

#define FUZZ_CHECK(c)                                                                              \
    do {                                                                                           \
        if (!(c)) {                                                                                \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #c);                  \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

#endif
