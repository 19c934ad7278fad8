/* kvx_alloc_count.h - a counting desc allocator for the allocation-failure
   tests: ca_arm(N) makes the Nth call fail (0 = none); ca.live counts the
   blocks given out and not yet freed. Read the counters with ca_get: I/O
   threads allocate too. */
#ifndef KVX_ALLOC_COUNT_H
#define KVX_ALLOC_COUNT_H
#include <pthread.h>
#include <stdlib.h>

/* The plain build fails every N; the sanitizer builds (many times slower)
   fail every CA_STRIDE-th N, a sample, to keep make test within its time. */
#if defined(__SANITIZE_THREAD__)
#define CA_STRIDE 16
#elif defined(__SANITIZE_ADDRESS__)
#define CA_STRIDE 4
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define CA_STRIDE 16
#elif __has_feature(address_sanitizer)
#define CA_STRIDE 4
#endif
#endif
#ifndef CA_STRIDE
#define CA_STRIDE 1
#endif

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

/* Fails the Nth allocation of run(arg) for N = 1, 2, ... until a run needs
   no more calls than N - 1: every run must leave nothing live, and the run
   with no failure injected must succeed (run returns 1 when whole). Needs
   kvx_test.h's CHECK and kvx.h's kvx_now_ns. */
static __attribute__((unused)) void ca_sweep(const char *label, int (*run)(const char *),
                                             const char *arg) {
    long n, calls = 0, runs = 0, clean = 0;
    uint64_t t0 = kvx_now_ns();
    for (n = 1; n < 100000; n += CA_STRIDE) {
        int whole;
        long live, failed;
        ca_arm(n);
        whole = run(arg);
        live = ca_get(&ca.live);
        failed = ca_get(&ca.failed);
        calls = ca_get(&ca.calls);
        runs++;
        CHECK(live == 0, "%s: fail at call %ld: %ld allocations left live", label, n, live);
        if (!failed) {
            CHECK(whole, "%s: with no failure injected the transfer succeeds", label);
            clean = 1;
            break;
        }
    }
    CHECK(clean && calls > 3, "%s: a run needed %ld allocator calls (all through the desc)",
          label, calls);
    printf("  %s: %ld runs in %.1f s, a whole transfer makes %ld allocator calls\n", label, runs,
           (double)(kvx_now_ns() - t0) / 1e9, calls);
}
#endif
