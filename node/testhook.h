/*
 * testhook.h - numbers that tests set through the environment.
 *
 * A debug build reads some of its waits from STARLING_TEST_* variables, so
 * that a test can make a moment last as long as it needs, or end at once;
 * a release build ignores them.
 */
#ifndef STARLING_TESTHOOK_H
#define STARLING_TESTHOOK_H

#include <stdint.h>
#include <stdlib.h>

/* The number (decimal) that environment variable `env` names, when set and
 * not empty in a debug build; else `dflt`. */
static inline uint64_t test_hook_u64(const char *env, uint64_t dflt)
{
#ifndef NDEBUG
    const char *e = getenv(env);
    if (e && *e)
        return strtoull(e, NULL, 10);
#else
    (void)env;
#endif
    return dflt;
}

#endif
