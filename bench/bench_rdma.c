/* bench_rdma - what the rdma transport posts for one request, counted.

   For a 4096-token Llama-3.1-8B request (64 KV buffers, page size 16,
   item_len 32 KiB: 512 MiB of KV, plus two aux rows) moved between two
   engines on softverbs (the test-only verbs device), with scattered pages
   on both sides and with consecutive pages, in one chunk and in chunks of
   512 tokens: the RDMA WRITE work requests, ibv_post_send calls and
   signaled completions, counted by softverbs and by the transport, against
   the minimum (one WRITE per coalesced run of pages per buffer after
   splitting at KVX_IB_MAX_MSG, plus one per aux row). Counts, not timing:
   softverbs is an emulator. Goals: work requests == the minimum; signaled
   <= work requests / 16 + queue pairs. Every byte is verified.

   Then heterogeneous TP (issue 13): the same request between prefill TP
   4 and decode TP 2, TP 2 and TP 4, and TP 2 and TP 2, every rank an
   engine of this process (its own heads, ex_pool_init_rank), scattered
   pages (no two adjacent), one chunk: work requests per request summed
   over the prefill ranks, and the ratios to TP 2 -> 2 from the same run
   (goal <= 2x; every head of every token verified on every decode rank).

   Needs libsoftverbs.so (make tests/softverbs/libsoftverbs.so); found
   next to this binary or in tests/softverbs/, or at $SOFTVERBS_LIB. */
#define KVX_IMPLEMENTATION
#define KVX_WITH_RDMA
#include "../kvx_rdma.h"
#include "../examples/kvx_example.h"
#include "../tests/softverbs/softverbs.h"
#include <dlfcn.h>
#include <sys/stat.h>

static softverbs_stats_fn sv_stats;
static void (*sv_reset)(void);
static int failures;

static void quiet(void *u, kvx_log_level l, const char *s, uint64_t room, const char *m) {
    (void)u; (void)room;
    if (l <= KVX_LOG_WARN) fprintf(stderr, "kvx %s: %s\n", s, m);
}

static int find_lib(const char *argv0, char *out, size_t n) {
    const char *env = getenv("SOFTVERBS_LIB");
    char self[2048], cand[2300], *slash;
    struct stat st;
    ssize_t l;
    if (env && *env && stat(env, &st) == 0) { snprintf(out, n, "%s", env); return 1; }
    l = readlink("/proc/self/exe", self, sizeof self - 1);
    if (l > 0) self[l] = 0;
    else snprintf(self, sizeof self, "%s", argv0);
    slash = strrchr(self, '/');
    if (slash) *slash = 0;
    snprintf(cand, sizeof cand, "%s/libsoftverbs.so", self);
    if (stat(cand, &st) == 0) { snprintf(out, n, "%s", cand); return 1; }
    snprintf(cand, sizeof cand, "%s/../tests/softverbs/libsoftverbs.so", self);
    if (stat(cand, &st) == 0) { snprintf(out, n, "%s", cand); return 1; }
    if (stat("tests/softverbs/libsoftverbs.so", &st) == 0) {
        char *rp = realpath("tests/softverbs/libsoftverbs.so", NULL);
        snprintf(out, n, "%s", rp ? rp : "tests/softverbs/libsoftverbs.so");
        free(rp);
        return 1;
    }
    return 0;
}

/* The minimum: one WRITE per plan span piece of at most max_msg bytes. */
static uint64_t minimum(const kvx_layout *src, const int32_t *sp, const kvx_layout *dst,
                        const int32_t *dp, uint32_t n, uint32_t chunk, uint64_t max_msg,
                        uint64_t *spans) {
    kvx_plan p;
    uint64_t w = 0;
    uint32_t off;
    size_t i;
    memset(&p, 0, sizeof p);
    *spans = 0;
    for (off = 0; off < n; off += chunk) {
        uint32_t k = n - off < chunk ? n - off : chunk;
        kvx_plan_pages(&p, src, sp + off, dst, dp + off, k);
        *spans += p.count;
        for (i = 0; i < p.count; i++) w += (p.spans[i].length + max_msg - 1) / max_msg;
    }
    kvx_plan_free(&p);
    *spans += src->num_aux;
    return w + src->num_aux; /* one WRITE per aux row (64 and 8 bytes) */
}

typedef struct pair_t {
    ex_pool sp, dp;
    kvx_engine *pe, *de;
} pair_t;

static void run(pair_t *x, const char *what, int consecutive, uint32_t chunk_pages, uint64_t room) {
    const uint32_t n = 4096 / 16;
    int32_t *sp = (int32_t *)malloc(n * sizeof *sp), *dpg = (int32_t *)malloc(n * sizeof *dpg);
    struct softverbs_stats a, b;
    kvx_rdma_stats s0, s1, d1;
    kvx_room_desc rd;
    kvx_sender *s;
    kvx_receiver *r;
    uint64_t spans, min, bad, wrs, sig, posts;
    uint32_t i, off;
    double t0, t;
    int qps = kvx__rdma_re(x->pe)->cfg.qps, aux_ok;
    if (consecutive) {
        for (i = 0; i < n; i++) { sp[i] = (int32_t)i; dpg[i] = (int32_t)(i + 5); }
    } else {
        ex_alloc_pages(&x->sp, sp, n);
        ex_alloc_pages(&x->dp, dpg, n);
    }
    ex_pages_pattern(&x->sp, room, sp, n, 1);
    ex_aux_write(&x->sp, room, 1);
    ex_aux_clear(&x->dp, 2);
    min = minimum(&x->sp.layout, sp, &x->dp.layout, dpg, n, chunk_pages, 1u << 20, &spans);
    memset(&rd, 0, sizeof rd);
    rd.room = room;
    kvx_receiver_create(x->de, &rd, &r);
    kvx_sender_create(x->pe, &rd, &s);
    while (kvx_receiver_poll(r) == KVX_POLL_BOOTSTRAPPING) { struct timespec ts = {0, 200000}; nanosleep(&ts, NULL); }
    kvx_receiver_init(r, dpg, n, 2);
    while (kvx_sender_poll(s) == KVX_POLL_BOOTSTRAPPING) { struct timespec ts = {0, 200000}; nanosleep(&ts, NULL); }
    kvx_sender_init(s, n, 1);
    kvx_rdma_stats_get(x->pe, &s0);
    sv_reset();
    sv_stats(&a);
    t0 = (double)kvx_now_ns() / 1e9;
    for (off = 0; off < n; off += chunk_pages)
        kvx_sender_send(s, sp + off, n - off < chunk_pages ? n - off : chunk_pages);
    while (kvx_receiver_poll(r) == KVX_POLL_TRANSFERRING || kvx_sender_poll(s) == KVX_POLL_TRANSFERRING) {
        struct timespec ts = {0, 100000};
        nanosleep(&ts, NULL);
    }
    t = (double)kvx_now_ns() / 1e9 - t0;
    sv_stats(&b);
    kvx_rdma_stats_get(x->pe, &s1);
    kvx_rdma_stats_get(x->de, &d1);
    bad = ex_pages_pattern(&x->dp, room, dpg, n, 0);
    aux_ok = ex_aux_check(&x->dp, room, 2);
    wrs = b.wr_posted - a.wr_posted;
    sig = b.signaled_completions - a.signaled_completions;
    posts = b.post_send_calls - a.post_send_calls;
    printf("%-34s %6llu %8llu %8llu %6llu %8llu %8llu   %s%s\n", what, (unsigned long long)spans,
           (unsigned long long)min, (unsigned long long)wrs, (unsigned long long)posts,
           (unsigned long long)sig, (unsigned long long)(wrs / 16 + (uint64_t)qps),
           kvx_receiver_poll(r) == KVX_POLL_SUCCESS && !bad && aux_ok ? "ok" : "FAILED ",
           kvx_receiver_poll(r) == KVX_POLL_SUCCESS ? "" : kvx_receiver_error(r));
    printf("%-34s transport: %llu WRs (%llu with immediate, %llu zero-length), %llu posts, %llu "
           "signaled, %.0f MiB; softverbs moved %.0f MiB in %.2f s (emulated, not a NIC)\n", "",
           (unsigned long long)(s1.wrs - s0.wrs), (unsigned long long)(s1.imm_wrs - s0.imm_wrs),
           (unsigned long long)(s1.zero_len_wrs - s0.zero_len_wrs),
           (unsigned long long)(s1.posts - s0.posts), (unsigned long long)(s1.signaled - s0.signaled),
           (double)(s1.bytes - s0.bytes) / 1048576.0, (double)(b.bytes_written - a.bytes_written) / 1048576.0, t);
    if (kvx_receiver_poll(r) != KVX_POLL_SUCCESS || bad || !aux_ok) failures++;
    if (wrs != min || s1.wrs - s0.wrs != wrs) {
        printf("  !! %llu work requests, the minimum is %llu\n", (unsigned long long)wrs,
               (unsigned long long)min);
        failures++;
    }
    if (sig > wrs / 16 + (uint64_t)qps || s1.signaled - s0.signaled != sig) {
        printf("  !! %llu signaled completions, more than %llu\n", (unsigned long long)sig,
               (unsigned long long)(wrs / 16 + (uint64_t)qps));
        failures++;
    }
    kvx_sender_destroy(s);
    kvx_receiver_destroy(r);
    if (!consecutive) {
        ex_free_pages(&x->sp, sp, n);
        ex_free_pages(&x->dp, dpg, n);
    }
    free(sp);
    free(dpg);
}

/* One request between prefill TP ptp and decode TP dtp, every rank an
   engine here; returns the work requests all prefill ranks posted, 0 when
   the request failed (why printed). */
static uint64_t topo(const ex_model *m, int ptp, int dtp, uint64_t room, int strict) {
    enum { N = 4096 / 16, MAXR = 8 };
    ex_pool sp[MAXR], dp[MAXR];
    kvx_engine *pe[MAXR], *de[MAXR];
    kvx_sender *s[MAXR];
    kvx_receiver *r[MAXR];
    int32_t *spg = (int32_t *)malloc(N * sizeof *spg), *dpg = (int32_t *)malloc(N * sizeof *dpg);
    char why[KVX_ERROR_MAX], addr[64];
    kvx_room_desc rd;
    uint64_t wrs = 0, bad = 0;
    int i, ok = 1, port = 0;
    memset(pe, 0, sizeof pe);
    memset(de, 0, sizeof de);
    for (i = 0; i < ptp + dtp; i++) {
        int dec = i >= ptp, k = dec ? i - ptp : i;
        ex_rank rk;
        kvx_engine_desc d;
        rk.tp = (uint32_t)(dec ? dtp : ptp);
        rk.tp_rank = (uint32_t)k;
        rk.pp = 1;
        rk.pp_rank = 0;
        if (ex_pool_init_rank(dec ? &dp[k] : &sp[k], m, N + 16, 16, 4, dec ? 2 : 1, &rk)) {
            printf("bench_rdma: out of memory for the pools\n");
            exit(1);
        }
        memset(&d, 0, sizeof d);
        d.role = dec ? KVX_ROLE_DECODE : KVX_ROLE_PREFILL;
        d.transport = "rdma";
        d.layout = dec ? dp[k].layout : sp[k].layout;
        d.logger.func = quiet;
        d.boot.host = "127.0.0.1";
        d.boot.port = k || dec ? port : -1;
        d.boot.tp_size = (int)rk.tp;
        d.boot.tp_rank = k;
        snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
        if (dec) d.bootstrap_addr = addr;
        if (kvx_engine_create(&d, dec ? &de[k] : &pe[k], why, sizeof why)) {
            printf("bench_rdma: %s\n", why);
            exit(1);
        }
        if (!i) port = kvx_boot_engine_port(pe[0]);
    }
    if (strict) { /* no two request pages adjacent on either side: no runs at all */
        for (i = 0; i < N; i++) {
            spg[i] = (int32_t)((i * 37) % (N + 16));
            dpg[i] = (int32_t)((i * 41) % (N + 16));
        }
    } else { /* the same scattered pages on every rank, as SGLang's */
        ex_alloc_pages(&sp[0], spg, N);
        ex_alloc_pages(&dp[0], dpg, N);
    }
    for (i = 0; i < ptp; i++) {
        ex_pages_pattern(&sp[i], room, spg, N, 1);
        ex_aux_write(&sp[i], room, 1);
    }
    for (i = 0; i < dtp; i++) ex_aux_clear(&dp[i], 2);
    memset(&rd, 0, sizeof rd);
    rd.room = room;
    for (i = 0; i < dtp; i++) kvx_receiver_create(de[i], &rd, &r[i]);
    for (i = 0; i < ptp; i++) kvx_sender_create(pe[i], &rd, &s[i]);
    for (i = 0; i < dtp; i++) {
        while (kvx_receiver_poll(r[i]) == KVX_POLL_BOOTSTRAPPING) { struct timespec ts = {0, 200000}; nanosleep(&ts, NULL); }
        kvx_receiver_init(r[i], dpg, N, 2);
    }
    for (i = 0; i < ptp; i++) {
        kvx_rdma_stats st;
        while (kvx_sender_poll(s[i]) == KVX_POLL_BOOTSTRAPPING) { struct timespec ts = {0, 200000}; nanosleep(&ts, NULL); }
        kvx_rdma_stats_get(pe[i], &st);
        wrs -= st.wrs; /* stats are per engine: count this request's */
        kvx_sender_init(s[i], N, 1);
        kvx_sender_send(s[i], spg, N);
    }
    for (i = 0; i < dtp; i++) {
        kvx_poll st = kvx_receiver_wait(r[i], KVX_POLL_SUCCESS, 120000);
        if (st != KVX_POLL_SUCCESS) {
            if (ok) printf("  TP %d -> %d: %s\n", ptp, dtp, kvx_receiver_error(r[i]));
            ok = 0;
        } else {
            bad += ex_pages_pattern(&dp[i], room, dpg, N, 0);
            if (!ex_aux_check(&dp[i], room, 2)) bad++;
        }
    }
    for (i = 0; i < ptp; i++) {
        kvx_rdma_stats st;
        kvx_sender_wait(s[i], KVX_POLL_SUCCESS, ok ? 120000 : 1);
        kvx_rdma_stats_get(pe[i], &st);
        wrs += st.wrs;
    }
    if (bad) { printf("  TP %d -> %d: %llu tokens corrupt\n", ptp, dtp, (unsigned long long)bad); ok = 0; }
    for (i = 0; i < ptp; i++) kvx_sender_destroy(s[i]);
    for (i = 0; i < dtp; i++) kvx_receiver_destroy(r[i]);
    for (i = 0; i < dtp; i++) kvx_engine_destroy(de[i]);
    for (i = 0; i < ptp; i++) kvx_engine_destroy(pe[i]);
    for (i = 0; i < ptp; i++) ex_pool_free(&sp[i]);
    for (i = 0; i < dtp; i++) ex_pool_free(&dp[i]);
    free(spg);
    free(dpg);
    return ok ? wrs : 0;
}

static void topos(const ex_model *m, int strict) {
    uint64_t eq = topo(m, 2, 2, 201, strict), a = topo(m, 4, 2, 202, strict), b = topo(m, 2, 4, 203, strict);
    printf("heterogeneous TP, 4096-token Llama-3.1-8B request, %s, one chunk; work requests per "
           "request (all prefill ranks), ratio to TP 2 -> 2 (goal <= 2x):\n",
           strict ? "scattered pages with no two adjacent on either side"
                  : "scattered pages from a shuffled free list (some runs of adjacent pages)");
    printf("  TP 2 -> 2  %8llu\n", (unsigned long long)eq);
    if (a) printf("  TP 4 -> 2  %8llu  %.2fx  %s\n", (unsigned long long)a, eq ? (double)a / (double)eq : 0.0,
                  eq && a <= 2 * eq ? "goal met" : "goal NOT met");
    else printf("  TP 4 -> 2  failed (above): goal NOT met\n");
    if (b) printf("  TP 2 -> 4  %8llu  %.2fx  %s\n", (unsigned long long)b, eq ? (double)b / (double)eq : 0.0,
                  eq && b <= 2 * eq ? "goal met" : "goal NOT met");
    else printf("  TP 2 -> 4  failed (above): goal NOT met\n");
    if (strict && (!eq || !a || !b || a > 2 * eq || b > 2 * eq)) failures++;
}

int main(int argc, char **argv) {
    const ex_model *m = ex_model_find("llama-3.1-8b");
    char lib[2400], why[KVX_ERROR_MAX], addr[64];
    kvx_engine_desc d;
    pair_t x;
    void *h;
    (void)argc;
    if (!find_lib(argv[0], lib, sizeof lib)) {
        printf("bench_rdma: SKIP: libsoftverbs.so not found; build it with "
               "`make tests/softverbs/libsoftverbs.so`\n");
        return 0;
    }
    setenv("KVX_IBVERBS_LIBRARY", lib, 1);
    h = dlopen(lib, RTLD_NOW | RTLD_LOCAL);
    if (!h) { printf("bench_rdma: cannot load %s: %s\n", lib, dlerror()); return 1; }
    {
        void *p1 = dlsym(h, "softverbs_stats"), *p2 = dlsym(h, "softverbs_stats_reset");
        memcpy(&sv_stats, &p1, sizeof p1);
        memcpy(&sv_reset, &p2, sizeof p2);
    }
    if (!sv_stats || !sv_reset) { printf("bench_rdma: %s has no softverbs_stats\n", lib); return 1; }
    memset(&x, 0, sizeof x);
    if (ex_pool_init(&x.sp, m, 256 + 16, 16, 4, 1) || ex_pool_init(&x.dp, m, 256 + 16, 16, 4, 2)) {
        printf("bench_rdma: out of memory for two pools of %u pages\n", 256 + 16);
        return 1;
    }
    kvx_rdma_register();
    memset(&d, 0, sizeof d);
    d.role = KVX_ROLE_PREFILL;
    d.transport = "rdma";
    d.layout = x.sp.layout;
    d.logger.func = quiet;
    d.boot.host = "127.0.0.1";
    d.boot.port = -1;
    if (kvx_engine_create(&d, &x.pe, why, sizeof why)) { printf("bench_rdma: %s\n", why); return 1; }
    snprintf(addr, sizeof addr, "127.0.0.1:%d", kvx_boot_engine_port(x.pe));
    d.role = KVX_ROLE_DECODE;
    d.layout = x.dp.layout;
    d.bootstrap_addr = addr;
    if (kvx_engine_create(&d, &x.de, why, sizeof why)) { printf("bench_rdma: %s\n", why); return 1; }
    printf("bench_rdma: 4096-token Llama-3.1-8B request: 64 buffers x 256 pages x 32 KiB = 512 MiB "
           "+ aux rows of 64 and 8 bytes; %d queue pairs, max message 1 MiB, every 16th WRITE "
           "signaled; counted by softverbs (%s)\n", kvx__rdma_re(x.pe)->cfg.qps, lib);
    printf("%-34s %6s %8s %8s %6s %8s %8s\n", "", "spans", "minimum", "WRs", "posts", "signaled",
           "bound");
    run(&x, "scattered pages, one chunk", 0, 256, 101);
    run(&x, "scattered pages, 512-token chunks", 0, 32, 102);
    run(&x, "consecutive pages, one chunk", 1, 256, 103);
    run(&x, "consecutive pages, 512-token chunks", 1, 32, 104);
    printf("(minimum: one WRITE per coalesced run of pages per buffer, split at 1 MiB, plus one per "
           "aux row; bound: WRs/16 + queue pairs)\n");
    kvx_engine_destroy(x.de);
    kvx_engine_destroy(x.pe);
    ex_pool_free(&x.sp);
    ex_pool_free(&x.dp);
    topos(m, 1);

    printf("(TP 2 -> 4: a strided span's rows go as scatter-gather entries, at most max_sge "
           "(softverbs: 30) per WRITE, so a run of R adjacent pages takes ceil(16 R / 30) WRITEs "
           "per destination where equal TP takes one: the goal holds for scattered pages, not for "
           "long runs. TP 4 -> 2: whole pages into the decode rank's staging area, one WRITE per "
           "run as with equal TP; the decode rank scatters them with the CPU)\n");
    dlclose(h);
    printf("bench_rdma: %s\n", failures ? "FAILED" : "ok");
    return failures ? 1 : 0;
}
