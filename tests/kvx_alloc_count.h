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
#define CA_STRIDE 32
#elif defined(__SANITIZE_ADDRESS__)
#define CA_STRIDE 8
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define CA_STRIDE 32
#elif __has_feature(address_sanitizer)
#define CA_STRIDE 8
#endif
#endif
#ifndef CA_STRIDE
#define CA_STRIDE 1
#endif

/* 1 while ca_sweep runs with a failure injected: the tests give their
   engines short timeouts then (a run whose peer is never told ends by
   timeout: the short ones keep the sweep within make test's time). The
   run with no failure injected is repeated with ca_quick 0. */
static int ca_quick;

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

static __attribute__((unused)) int ca_terminal(kvx_poll p) {
    return p == KVX_POLL_SUCCESS || p == KVX_POLL_FAILED;
}

/* Waits for the receiver to leave Bootstrapping (to WaitingForInput or
   Failed); the limit is reached only when a failure was swallowed and
   the room would wait forever (no timeout applies to it there). */
static __attribute__((unused)) void ca_wait_receiver(kvx_receiver *r, int limit_ms) {
    kvx_poll p = kvx_receiver_wait(r, KVX_POLL_WAITING_FOR_INPUT, limit_ms);
    CHECK(p != KVX_POLL_BOOTSTRAPPING, "the receiver leaves Bootstrapping (fail at %ld): '%s'",
          ca.fail_at, kvx_receiver_error(r));
}
/* Waits until both sides given are terminal; 0 when one is not by the
   test's own deadline (reached only on a hang). */
static __attribute__((unused)) int ca_settle(kvx_sender *s, kvx_receiver *r) {
    return (!s || ca_terminal(kvx_sender_wait(s, KVX_POLL_SUCCESS, 60000))) &&
           (!r || ca_terminal(kvx_receiver_wait(r, KVX_POLL_SUCCESS, 60000)));
}

/* The end of every run: an engine gives up on a room whose call was
   refused (it aborts both sides), both sides reach a terminal state before
   they are destroyed, then both are released. */
static __attribute__((unused)) void ca_pair_end(const char *label, kvx_sender *s,
                                                kvx_receiver *r, int whole) {
    if (!whole && s) kvx_sender_abort(s, "a call was refused");
    if (!whole && r) kvx_receiver_abort(r, "a call was refused");
    if (s && r)
        CHECK(ca_settle(s, r),
              "%s: terminal before destroy (fail at %ld): sender %s '%s', receiver %s '%s'",
              label, ca.fail_at, kvx_poll_str(kvx_sender_poll(s)), kvx_sender_error(s),
              kvx_poll_str(kvx_receiver_poll(r)), kvx_receiver_error(r));
    kvx_sender_destroy(s);
    kvx_receiver_destroy(r);
}

/* Fails the Nth allocation of run(arg) for N = 1, 2, ... until a run needs
   no more calls than N - 1: every run must leave nothing live, the run
   with no failure injected must succeed (run returns 1 when whole) and
   make at least min_calls allocator calls. Returns how many runs with an
   injected failure did not succeed. Needs kvx_test.h's CHECK and kvx.h. */
static __attribute__((unused)) long ca_sweep(const char *label, int (*run)(const char *),
                                             const char *arg, long min_calls) {
    long n, calls = 0, runs = 0, clean = 0, failed_runs = 0;
    uint64_t t0 = kvx_now_ns();
    ca_quick = 1;
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
        if (!failed) { /* past the last call: again with the usual timeouts */
            ca_quick = 0;
            ca_arm(0);
            whole = run(arg);
            calls = ca_get(&ca.calls);
            runs++;
            CHECK(ca_get(&ca.live) == 0, "%s: no failure: allocations left live", label);
            CHECK(whole, "%s: with no failure injected the transfer succeeds", label);
            clean = 1;
            break;
        }
        failed_runs += !whole;
    }
    ca_quick = 0;
    CHECK(clean && calls >= min_calls, "%s: a run needed %ld allocator calls (all through the desc)",
          label, calls);
    printf("  %s: %ld runs in %.1f s, a whole transfer makes %ld allocator calls\n", label, runs,
           (double)(kvx_now_ns() - t0) / 1e9, calls);
    return failed_runs;
}
#endif
