/*
 * lock.h - a 4-byte mutex for objects there are many of (sessions).
 *
 * pthread_mutex_t takes 40 bytes; a session holds one, and an idle client is
 * mostly its session and its connection, so the lock is a futex word instead:
 * 0 unlocked, 1 locked, 2 locked with waiters. Uncontended lock and unlock
 * are one atomic instruction each; a contended lock sleeps in the kernel.
 * Not recursive; any thread may use it.
 */
#ifndef STARLING_LOCK_H
#define STARLING_LOCK_H

#include <linux/futex.h>
#include <stdatomic.h>
#include <sys/syscall.h>
#include <unistd.h>

struct lock {
    atomic_int v;
};

#define LOCK_INIT                                                                                  \
    {                                                                                              \
        0                                                                                          \
    }

static inline void lock_futex(atomic_int *v, int op, int val)
{
    syscall(SYS_futex, (int *)v, op | FUTEX_PRIVATE_FLAG, val, NULL, NULL, 0);
}

static inline void lock_acquire(struct lock *l)
{
    int c = 0;
    if (atomic_compare_exchange_strong_explicit(&l->v, &c, 1, memory_order_acquire,
                                                memory_order_relaxed))
        return;
    /* contended: announce a waiter (2) and sleep until the holder lets go */
    if (c != 2)
        c = atomic_exchange_explicit(&l->v, 2, memory_order_acquire);
    while (c != 0) {
        lock_futex(&l->v, FUTEX_WAIT, 2);
        c = atomic_exchange_explicit(&l->v, 2, memory_order_acquire);
    }
}

static inline void lock_release(struct lock *l)
{
    if (atomic_fetch_sub_explicit(&l->v, 1, memory_order_release) != 1) {
        /* there were waiters: wake one */
        atomic_store_explicit(&l->v, 0, memory_order_release);
        lock_futex(&l->v, FUTEX_WAKE, 1);
    }
}

/* Whether anyone holds l: for assert(lock_held(&s->lock)) in debug builds
 * (it cannot tell which thread holds it). */
static inline int lock_held(struct lock *l)
{
    return atomic_load_explicit(&l->v, memory_order_relaxed) != 0;
}

#endif
