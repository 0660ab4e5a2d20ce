/*
 * failalloc.c - an allocator that fails on demand, for LD_PRELOAD.
 *
 * malloc, calloc and realloc return NULL (errno ENOMEM) when the shim is
 * armed and the caller is code of the main executable (Starling's own code:
 * the broker links its modules statically), so that the failures land on
 * the broker's paths and not inside libc, libuv or LMDB, whose own handling
 * of an allocation failure is not what is tested. Everything else is passed
 * to the next allocator in the lookup order: glibc's, or AddressSanitizer's
 * when the broker is an ASan build (then ASAN_OPTIONS must contain
 * verify_asan_link_order=0, as this library comes before the ASan runtime).
 *
 * Controlled by environment variables, read once:
 *   FAILALLOC_ARMED=1    armed from the start (default: not armed)
 *   FAILALLOC_EVERY=N    when armed, every N-th eligible call fails (N >= 1)
 *   FAILALLOC_NTH=K      a sweep: the first time the shim is armed, only
 *                        the K-th eligible call fails (K >= 1); the next
 *                        time, only the (K+1)-th, and so on. A test that
 *                        arms, does one operation and disarms, over and
 *                        over, fails each allocation of that operation in
 *                        turn, one per round
 *   FAILALLOC_NTH_REPEAT=R  with FAILALLOC_NTH: each K for R armings in a
 *                        row before the next (default 1), for operations
 *                        whose count of allocations varies from one to the
 *                        next (other threads' allocations count too)
 *   FAILALLOC_PROB=P     when armed, each eligible call fails with
 *                        probability P (0..1); with FAILALLOC_EVERY and
 *                        FAILALLOC_NTH unset
 *   FAILALLOC_SEED=S     seed of the pseudo-random sequence (default 1)
 *   FAILALLOC_TRACE=1    with FAILALLOC_NTH, the failing call's stack too
 * SIGUSR2 toggles "armed", so that a test arms it only after the broker has
 * started and its clients are connected; arming restarts the count of
 * eligible calls. The signal is handled by whichever thread the kernel
 * picks, possibly after the broker's other threads ran on: the handler
 * writes "failalloc: armed" or "failalloc: disarmed" to stderr once the
 * new state is in effect, and a test waits for that line before it counts
 * on the new state. With FAILALLOC_NTH, the failing call writes
 * "failalloc: failed call K from +0xOFFSET", OFFSET being the caller's
 * address in the executable (addr2line -f -e <executable> OFFSET).
 * Failures so far are counted in the exported `failalloc_failures`, and
 * written to stderr on exit as "failalloc: N allocations failed".
 *
 * A test program into which the shim is preloaded (a unit test) can also
 * call it directly, found with dlsym(RTLD_DEFAULT, ...):
 *   void failalloc_fail_nth(unsigned long k)  only the k-th eligible call
 *                                             from now fails (armed)
 *   void failalloc_off(void)                  disarmed
 */
#include <dlfcn.h>
#include <errno.h>
#include <link.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void *(*next_malloc)(size_t);
static void *(*next_calloc)(size_t, size_t);
static void *(*next_realloc)(void *, size_t);
static void (*next_free)(void *);

/* dlsym may allocate before the next allocator is known: served from here,
 * never freed. */
static _Alignas(16) unsigned char boot[4096];
static atomic_size_t boot_used;

static atomic_bool armed;
static unsigned long every;
static atomic_ulong nth; /* moved on by the SIGUSR2 handler */
static atomic_ulong armings;
static unsigned long repeat = 1;
static double prob;
static atomic_uint_fast64_t rng = 1;
static atomic_ulong eligible;
atomic_ulong failalloc_failures;

/* The main executable's address range (its PT_LOAD segments), and where
 * it is loaded (what addr2line's addresses are relative to). */
static atomic_uintptr_t exe_lo, exe_hi, exe_base;

static int exe_range_cb(struct dl_phdr_info *info, size_t size, void *data)
{
    (void)size;
    (void)data;
    uintptr_t lo = UINTPTR_MAX, hi = 0;
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        if (ph->p_type != PT_LOAD)
            continue;
        uintptr_t a = info->dlpi_addr + ph->p_vaddr;
        if (a < lo)
            lo = a;
        if (a + ph->p_memsz > hi)
            hi = a + ph->p_memsz;
    }
    atomic_store(&exe_base, info->dlpi_addr);
    atomic_store(&exe_lo, lo);
    atomic_store(&exe_hi, hi);
    return 1; /* the first object is the main program */
}

static void *boot_alloc(size_t n)
{
    n = (n + 15) & ~(size_t)15;
    size_t off = atomic_fetch_add(&boot_used, n);
    if (off + n > sizeof(boot))
        return NULL;
    return boot + off;
}

static int in_boot(const void *p)
{
    return (const unsigned char *)p >= boot && (const unsigned char *)p < boot + sizeof(boot);
}

/* write(2) of a constant line; async-signal-safe. */
static void say(const char *line)
{
    if (write(2, line, strlen(line)) < 0)
        return;
}

static void on_usr2(int sig)
{
    (void)sig;
    int saved = errno;
    bool now = !atomic_load(&armed);
    if (now) {
        atomic_store(&eligible, 0);
        unsigned long k = atomic_fetch_add(&armings, 1);
        if (nth && k > 0 && k % repeat == 0)
            nth++; /* the next allocation of the sweep */
    }
    atomic_store(&armed, now);
    say(now ? "failalloc: armed\n" : "failalloc: disarmed\n");
    errno = saved;
}

static void report(void)
{
    char line[80];
    int n = snprintf(line, sizeof(line), "failalloc: %lu allocations failed\n",
                     atomic_load(&failalloc_failures));
    if (n > 0 && write(2, line, (size_t)n) < 0)
        return;
}

/* FAILALLOC_TRACE=1: a failing call also writes the executable's frames
 * of its stack, "failalloc:   frames +0xA +0xB ...", innermost first. */
static bool trace;

static void say_frames(void)
{
    /* the frame-pointer chain (builds with -fno-omit-frame-pointer, as the
     * ASan build: elsewhere the walk stops early): no unwinder, which
     * would load a library (and allocate) inside the failing call */
    char line[16 * 20 + 32];
    int at = snprintf(line, sizeof(line), "failalloc:   frames");
    uintptr_t base = atomic_load(&exe_base);
    void **fp = __builtin_frame_address(0);
    for (int i = 0; fp && i < 16 && at < (int)sizeof(line) - 24; i++) {
        uintptr_t a = (uintptr_t)fp[1];
        if (a >= atomic_load(&exe_lo) && a < atomic_load(&exe_hi))
            at += snprintf(line + at, sizeof(line) - at, " +0x%lx", (unsigned long)(a - base));
        void **next = fp[0];
        if (next <= fp || (uintptr_t)next - (uintptr_t)fp > (1u << 20) || ((uintptr_t)next & 7))
            break;
        fp = next;
    }
    line[at++] = '\n';
    if (write(2, line, (size_t)at) < 0)
        return;
}

static atomic_int resolving;

static void resolve(void)
{
    if (next_free || atomic_exchange(&resolving, 1))
        return;
    next_malloc = dlsym(RTLD_NEXT, "malloc");
    next_calloc = dlsym(RTLD_NEXT, "calloc");
    next_realloc = dlsym(RTLD_NEXT, "realloc");
    next_free = dlsym(RTLD_NEXT, "free");
}

__attribute__((constructor)) static void failalloc_init(void)
{
    resolve();
    const char *v = getenv("FAILALLOC_EVERY");
    every = v ? strtoul(v, NULL, 10) : 0;
    v = getenv("FAILALLOC_NTH");
    nth = v ? strtoul(v, NULL, 10) : 0;
    v = getenv("FAILALLOC_NTH_REPEAT");
    repeat = v && strtoul(v, NULL, 10) > 0 ? strtoul(v, NULL, 10) : 1;
    v = getenv("FAILALLOC_PROB");
    prob = v ? strtod(v, NULL) : 0.0;
    v = getenv("FAILALLOC_SEED");
    atomic_store(&rng, v ? strtoull(v, NULL, 10) | 1u : 1u);
    v = getenv("FAILALLOC_TRACE");
    trace = v && strcmp(v, "1") == 0;
    v = getenv("FAILALLOC_ARMED");
    atomic_store(&armed, v && strcmp(v, "1") == 0);
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_usr2;
    sa.sa_flags = SA_RESTART;
    sigaction(SIGUSR2, &sa, NULL);
    atexit(report);
}

/* Should this call, made from `caller`, fail? */
static int should_fail(const void *caller)
{
    if (!atomic_load_explicit(&armed, memory_order_relaxed))
        return 0;
    if (atomic_load(&exe_hi) == 0)
        dl_iterate_phdr(exe_range_cb, NULL);
    uintptr_t a = (uintptr_t)caller;
    if (a < atomic_load(&exe_lo) || a >= atomic_load(&exe_hi))
        return 0;
    unsigned long n = atomic_fetch_add(&eligible, 1) + 1;
    int fail;
    if (nth) {
        fail = n == nth;
        if (fail) {
            char line[96];
            int len = snprintf(line, sizeof(line), "failalloc: failed call %lu from +0x%lx\n", n,
                               (unsigned long)(a - atomic_load(&exe_base)));
            if (len > 0 && write(2, line, (size_t)len) < 0)
                fail = 1;
            if (trace)
                say_frames();
        }
    } else if (every) {
        fail = n % every == 0;
    } else {
        /* xorshift64: good enough to spread the failures */
        uint_fast64_t x = atomic_load(&rng), y;
        do {
            y = x;
            y ^= y << 13;
            y ^= y >> 7;
            y ^= y << 17;
        } while (!atomic_compare_exchange_weak(&rng, &x, y));
        fail = (double)(y >> 11) / 9007199254740992.0 < prob;
    }
    if (fail) {
        atomic_fetch_add(&failalloc_failures, 1);
        errno = ENOMEM;
    }
    return fail;
}

void failalloc_fail_nth(unsigned long k);
void failalloc_off(void);

void failalloc_fail_nth(unsigned long k)
{
    atomic_store(&armed, false);
    atomic_store(&nth, k);
    atomic_store(&armings, 1); /* not a sweep: k stays */
    atomic_store(&eligible, 0);
    atomic_store(&armed, true);
}

void failalloc_off(void)
{
    atomic_store(&armed, false);
}

void *malloc(size_t n)
{
    if (!next_malloc) {
        resolve();
        if (!next_malloc)
            return boot_alloc(n);
    }
    if (should_fail(__builtin_return_address(0)))
        return NULL;
    return next_malloc(n);
}

void *calloc(size_t n, size_t size)
{
    if (!next_calloc) {
        resolve();
        if (!next_calloc)
            return boot_alloc(n * size); /* boot is zeroed and never reused */
    }
    if (should_fail(__builtin_return_address(0)))
        return NULL;
    return next_calloc(n, size);
}

void *realloc(void *p, size_t n)
{
    if (!next_realloc)
        resolve();
    if (in_boot(p) || !next_realloc) {
        void *q = n ? malloc(n) : NULL;
        if (q && p)
            memcpy(q, p, n); /* boot blocks are never reallocated in practice */
        return q;
    }
    if (should_fail(__builtin_return_address(0)))
        return NULL;
    return next_realloc(p, n);
}

void free(void *p)
{
    if (!p || in_boot(p))
        return;
    if (!next_free)
        resolve();
    if (next_free)
        next_free(p);
}
