/* kvx_alloc_count.h - a counting desc allocator for the allocation-failure
   tests: ca_arm(N) makes the Nth call fail (0 = none); ca.live counts the
   blocks given out and not yet freed. Read the counters with ca_get: I/O
   threads allocate too. */
#ifndef KVX_ALLOC_COUNT_H
#define KVX_ALLOC_COUNT_H
#include <pthread.h>
#include <stdlib.h>

typedef struct counting {
    pthread_mutex_t mu;
    long calls, live, fail_at, failed;
} counting;
static counting ca = {PTHREAD_MUTEX_INITIALIZER, 0, 0, 0, 0};

static void *ca_alloc(size_t n, void *u) {
    void *p = NULL;
    int fail;
    (void)u;
    pthread_mutex_lock(&ca.mu);
    fail = ++ca.calls == ca.fail_at;
    if (fail) ca.failed++;
    else if ((p = malloc(n)) != NULL) ca.live++;
    pthread_mutex_unlock(&ca.mu);
    return p;
}

static void ca_free(void *p, void *u) {
    (void)u;
    if (!p) return;
    pthread_mutex_lock(&ca.mu);
    ca.live--;
    pthread_mutex_unlock(&ca.mu);
    free(p);
}

static __attribute__((unused)) void ca_arm(long fail_at) {
    pthread_mutex_lock(&ca.mu);
    ca.calls = ca.failed = 0;
    ca.fail_at = fail_at;
    pthread_mutex_unlock(&ca.mu);
}

static __attribute__((unused)) long ca_get(const long *v) {
    long x;
    pthread_mutex_lock(&ca.mu);
    x = *v;
    pthread_mutex_unlock(&ca.mu);
    return x;
}
#endif
