/* bench_file - the file transport against a raw baseline, in one run.

   For a 4096-token Llama-3.1-8B request (64 buffers, page size 16, 512 MiB)
   with scattered pages on both sides: end-to-end time from the first send
   to the receiver's Success (sender gather + write, receiver read + scatter
   + checksums), against writing the same number of bytes from one
   contiguous buffer to one file and reading them back into another. Both
   go to the same directory (KVX_BENCH_DIR, default /tmp/kvx_bench).
   Then heterogeneous TP (kvx_file.h PARALLEL LAYOUTS): the same request
   from P prefill ranks to D decode ranks, engines of every rank in this
   process, GB/s of the whole request (every rank's bytes) from the first
   send to the last decode rank's Success, for TP 4 -> 2 and 2 -> 4
   against 2 -> 2 in the same run. Then the fake transport's per-request
   overhead. */
#define KVX_IMPLEMENTATION
#include "../kvx_file.h"
#include "../examples/kvx_example.h"

static double now_s(void) { return (double)kvx_now_ns() / 1e9; }

static double raw_write_read(const char *dir, char *src, char *dst, size_t n) {
    char path[512];
    double t0, t;
    size_t off;
    int fd;
    snprintf(path, sizeof path, "%s/raw.bin", dir);
    t0 = now_s();
    fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    for (off = 0; off < n;) {
        ssize_t w = write(fd, src + off, n - off);
        if (w <= 0) { perror("write"); exit(1); }
        off += (size_t)w;
    }
    close(fd);
    fd = open(path, O_RDONLY);
    for (off = 0; off < n;) {
        ssize_t r = read(fd, dst + off, n - off);
        if (r <= 0) { perror("read"); exit(1); }
        off += (size_t)r;
    }
    close(fd);
    t = now_s() - t0;
    unlink(path);
    return t;
}

static double transfer(kvx_engine *pe, kvx_engine *de, uint64_t room, const int32_t *sp,
                       const int32_t *dp, uint32_t n, uint32_t chunk) {
    kvx_room_desc rd;
    kvx_sender *s;
    kvx_receiver *r;
    double t0, t;
    uint32_t sent = 0;
    memset(&rd, 0, sizeof rd);
    rd.room = room;
    kvx_receiver_create(de, &rd, &r);
    kvx_receiver_init(r, dp, n, 0);
    kvx_sender_create(pe, &rd, &s);
    kvx_sender_init(s, n, 0);
    t0 = now_s();
    while (sent < n) {
        uint32_t k = n - sent < chunk ? n - sent : chunk;
        kvx_sender_send(s, sp + sent, k);
        sent += k;
    }
    while (kvx_receiver_poll(r) == KVX_POLL_TRANSFERRING) {
        struct timespec ts = {0, 20000};
        nanosleep(&ts, NULL);
    }
    t = now_s() - t0;
    if (kvx_receiver_poll(r) != KVX_POLL_SUCCESS || kvx_sender_poll(s) != KVX_POLL_SUCCESS) {
        fprintf(stderr, "transfer failed: %s / %s\n", kvx_receiver_error(r), kvx_sender_error(s));
        exit(1);
    }
    kvx_sender_destroy(s);
    kvx_receiver_destroy(r);
    return t;
}

static void wait_gone(const char *dir, uint64_t room) {
    char p[512];
    struct stat st;
    snprintf(p, sizeof p, "%s/room_%llu", dir, (unsigned long long)room);
    while (stat(p, &st) == 0) {
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
}

/* P prefill ranks -> D decode ranks of model m, one request of n
   scattered pages: the best time of reps, every decode rank verified. */
static double hetero(const ex_model *m, const char *dir, uint32_t P, uint32_t D, uint32_t n,
                     uint32_t page, int reps, uint64_t *bytes) {
    ex_pool ps[8], pd[8];
    int32_t *sp[8], *dp[8];
    kvx_engine *pe[8], *de[8];
    kvx_sender *s[8];
    kvx_receiver *r[8];
    kvx_engine_desc d;
    char why[512], v[16];
    double best = 1e9;
    uint32_t a, b, i;
    int rep;
    *bytes = 0;
    snprintf(v, sizeof v, "%u", P);
    setenv("KVX_FILE_PREFILL_TP", v, 1);
    snprintf(v, sizeof v, "%u", D);
    setenv("KVX_FILE_DECODE_TP", v, 1);
    memset(&d, 0, sizeof d);
    d.transport = "file";
    d.file.dir = dir;
    for (a = 0; a < P + D; a++) {
        int pre = a < P;
        uint32_t k = pre ? a : a - P;
        ex_rank rk = {pre ? P : D, k, 1, 0};
        ex_pool *p = pre ? &ps[k] : &pd[k];
        int32_t **pg = pre ? &sp[k] : &dp[k];
        if (ex_pool_init_rank(p, m, n + 64, page, 4, 1 + a, &rk)) { fprintf(stderr, "pool\n"); exit(1); }
        *pg = (int32_t *)malloc(n * sizeof **pg);
        ex_alloc_pages(p, *pg, n);
        for (i = 0; i < p->layout.num_buffers; i++) memset(p->bufs[i].base, 0, p->bufs[i].length);
        if (pre) ex_pages_pattern(p, 1, *pg, n, 1);
        if (pre) ex_aux_write(p, 1, 0);
        d.role = pre ? KVX_ROLE_PREFILL : KVX_ROLE_DECODE;
        d.layout = p->layout;
        d.boot.tp_size = (int)rk.tp;
        d.boot.tp_rank = (int)k;
        if (kvx_engine_create(&d, pre ? &pe[k] : &de[k], why, sizeof why)) {
            fprintf(stderr, "%s\n", why);
            exit(1);
        }
        if (!pre) *bytes += (uint64_t)n * kvx_layout_page_bytes(&p->layout);
    }
    unsetenv("KVX_FILE_PREFILL_TP");
    unsetenv("KVX_FILE_DECODE_TP");
    for (rep = 0; rep < reps; rep++) {
        kvx_room_desc rd;
        double t0, t;
        int busy = 1;
        memset(&rd, 0, sizeof rd);
        rd.room = 1000 + (uint64_t)rep;
        for (b = 0; b < D; b++) {
            kvx_receiver_create(de[b], &rd, &r[b]);
            kvx_receiver_init(r[b], dp[b], n, 0);
        }
        t0 = now_s();
        for (a = 0; a < P; a++) {
            kvx_sender_create(pe[a], &rd, &s[a]);
            kvx_sender_init(s[a], n, 0);
            kvx_sender_send(s[a], sp[a], n);
        }
        while (busy) {
            struct timespec ts = {0, 20000};
            busy = 0;
            for (b = 0; b < D; b++) busy |= kvx_receiver_poll(r[b]) == KVX_POLL_TRANSFERRING;
            if (busy) nanosleep(&ts, NULL);
        }
        t = now_s() - t0;
        for (b = 0; b < D; b++) {
            if (kvx_receiver_poll(r[b]) != KVX_POLL_SUCCESS ||
                ex_pages_pattern(&pd[b], 1, dp[b], n, 0)) {
                fprintf(stderr, "TP %u -> %u: decode rank %u: %s\n", P, D, b, kvx_receiver_error(r[b]));
                exit(1);
            }
            kvx_receiver_destroy(r[b]);
            for (i = 0; i < pd[b].layout.num_buffers; i++) memset(pd[b].bufs[i].base, 0, pd[b].bufs[i].length);
        }
        for (a = 0; a < P; a++) {
            kvx_sender_wait(s[a], KVX_POLL_SUCCESS, 60000);
            kvx_sender_destroy(s[a]);
        }
        if (t < best) best = t;
    }
    for (a = 0; a < P; a++) { kvx_engine_destroy(pe[a]); ex_pool_free(&ps[a]); free(sp[a]); }
    for (b = 0; b < D; b++) { kvx_engine_destroy(de[b]); ex_pool_free(&pd[b]); free(dp[b]); }
    return best;
}

int main(void) {
    const ex_model *m = ex_model_find("llama-3.1-8b");
    const char *dir = getenv("KVX_BENCH_DIR") ? getenv("KVX_BENCH_DIR") : "/tmp/kvx_bench";
    uint32_t tokens = 4096, page = 16, n = tokens / page, pool_pages = n + 64, i, rep;
    int reps = getenv("KVX_BENCH_REPS") ? atoi(getenv("KVX_BENCH_REPS")) : 5;
    ex_pool ps, pr;
    int32_t *sp, *dp;
    kvx_engine_desc d;
    kvx_engine *pe, *de, *fp, *fd;
    char why[512], *src, *dst;
    double best_raw = 1e9, best_kvx = 1e9, best_chunked = 1e9;
    uint64_t bytes;
    kvx_file_register();
    mkdir(dir, 0755);
    ex_pool_init(&ps, m, pool_pages, page, 4, 1);
    ex_pool_init(&pr, m, pool_pages, page, 4, 2);
    sp = (int32_t *)malloc(n * sizeof *sp);
    dp = (int32_t *)malloc(n * sizeof *dp);
    ex_alloc_pages(&ps, sp, n); /* scattered, as after hours of serving */
    ex_alloc_pages(&pr, dp, n);
    for (i = 0; i < ps.layout.num_buffers; i++) {
        memset(ps.bufs[i].base, 1, ps.bufs[i].length);
        memset(pr.bufs[i].base, 0, pr.bufs[i].length);
    }
    ex_pages_pattern(&ps, 1, sp, n, 1);
    ex_aux_write(&ps, 1, 0);
    bytes = (uint64_t)n * kvx_layout_page_bytes(&ps.layout);
    src = (char *)malloc(bytes);
    dst = (char *)malloc(bytes);
    memset(src, 1, bytes);
    memset(dst, 0, bytes);
    memset(&d, 0, sizeof d);
    d.transport = "file";
    d.file.dir = dir;
    d.role = KVX_ROLE_PREFILL;
    d.layout = ps.layout;
    if (kvx_engine_create(&d, &pe, why, sizeof why)) { fprintf(stderr, "%s\n", why); return 1; }
    d.role = KVX_ROLE_DECODE;
    d.layout = pr.layout;
    if (kvx_engine_create(&d, &de, why, sizeof why)) { fprintf(stderr, "%s\n", why); return 1; }
    printf("file transport: %u-token %s request, %u scattered pages, %.0f MiB, dir %s, best of %d\n",
           tokens, m->name, n, (double)bytes / (1 << 20), dir, reps);
    for (rep = 0; rep < (uint32_t)reps; rep++) {
        double t = raw_write_read(dir, src, dst, bytes);
        if (t < best_raw) best_raw = t;
        t = transfer(pe, de, 100 + rep, sp, dp, n, n);
        wait_gone(dir, 100 + rep);
        if (t < best_kvx) best_kvx = t;
        t = transfer(pe, de, 200 + rep, sp, dp, n, 32); /* chunked prefill: 512-token chunks */
        wait_gone(dir, 200 + rep);
        if (t < best_chunked) best_chunked = t;
    }
    if (ex_pages_pattern(&pr, 1, dp, n, 0)) { fprintf(stderr, "verify failed\n"); return 1; }
    printf("  raw write+read, one buffer     %7.2f GB/s  (%.1f ms)\n", bytes / best_raw / 1e9,
           best_raw * 1e3);
    printf("  kvx file, one chunk            %7.2f GB/s  (%.1f ms)  ratio %.2fx raw\n",
           bytes / best_kvx / 1e9, best_kvx * 1e3, best_raw / best_kvx);
    printf("  kvx file, 8 chunks of 512 tok  %7.2f GB/s  (%.1f ms)  ratio %.2fx raw\n",
           bytes / best_chunked / 1e9, best_chunked * 1e3, best_raw / best_chunked);
    kvx_engine_destroy(pe);
    kvx_engine_destroy(de);

    {
        static const uint32_t tp[3][2] = {{2, 2}, {4, 2}, {2, 4}};
        double t[3];
        uint64_t b[3];
        int k;
        for (k = 0; k < 3; k++) t[k] = hetero(m, dir, tp[k][0], tp[k][1], n, page, reps, &b[k]);
        printf("file transport, heterogeneous TP: the same request, every rank an engine in this "
               "process, best of %d\n", reps);
        for (k = 0; k < 3; k++)
            printf("  TP %u -> %u  %7.2f GB/s  (%.1f ms)  ratio %.2fx TP 2 -> 2\n", tp[k][0], tp[k][1],
                   b[k] / t[k] / 1e9, t[k] * 1e3, t[0] / t[k]);
    }

    /* what a transport that plans against its peer's pool pays per request
       (tcp, rdma and cuda build this plan; the fake transport builds none):
       the expanded form, a span per (buffer, run), against the compact form
       the transports use (one run list for every buffer), and what walking
       every span of the compact form with kvx_plan_span adds (an executor
       pays it span by span while it sends) */
    {
        kvx_plan pl, cp;
        uint32_t iters = 2000, k;
        double t0, tx, tc, tw;
        uint64_t sum = 0;
        memset(&pl, 0, sizeof pl);
        memset(&cp, 0, sizeof cp);
        cp.compact = 1;
        t0 = now_s();
        for (k = 0; k < iters; k++)
            if (kvx_plan_pages(&pl, &ps.layout, sp, &pr.layout, dp, n) != KVX_OK) return 1;
        tx = (now_s() - t0) / iters;
        t0 = now_s();
        for (k = 0; k < iters; k++)
            if (kvx_plan_pages(&cp, &ps.layout, sp, &pr.layout, dp, n) != KVX_OK) return 1;
        tc = (now_s() - t0) / iters;
        t0 = now_s();
        for (k = 0; k < iters / 10; k++) {
            size_t i;
            for (i = 0; i < cp.count; i++) {
                kvx_span tmp;
                sum += kvx_plan_span(&cp, i, &tmp)->dst_offset;
            }
        }
        tw = (now_s() - t0) / (iters / 10);
        if (cp.count != pl.count || cp.total_bytes != pl.total_bytes || !sum) return 1;
        printf("plan: %.2f us per request for kvx_plan_pages (%u pages, %u buffers, %zu spans); "
               "compact %.2f us (%zu runs x %zu buffers), %.0fx less; walking its spans %.2f us\n",
               tx * 1e6, n, ps.layout.num_buffers, pl.count, tc * 1e6, cp.nruns, cp.nbufs, tx / tc,
               tw * 1e6);
        kvx_plan_free(&pl);
        kvx_plan_free(&cp);
    }

    /* fake transport: the engine's own per-request cost */
    d.transport = "fake";
    d.role = KVX_ROLE_PREFILL;
    d.layout = ps.layout;
    kvx_engine_create(&d, &fp, why, sizeof why);
    d.role = KVX_ROLE_DECODE;
    d.layout = pr.layout;
    kvx_engine_create(&d, &fd, why, sizeof why);
    {
        uint32_t iters = 20000, k;
        double t0 = now_s(), t;
        for (k = 0; k < iters; k++) {
            kvx_room_desc rd;
            kvx_sender *s;
            kvx_receiver *r;
            memset(&rd, 0, sizeof rd);
            rd.room = k;
            kvx_receiver_create(fd, &rd, &r);
            kvx_receiver_init(r, dp, n, 0);
            kvx_sender_create(fp, &rd, &s);
            kvx_sender_init(s, n, 0);
            kvx_sender_send(s, sp, n);
            if (kvx_sender_poll(s) != KVX_POLL_SUCCESS || kvx_receiver_poll(r) != KVX_POLL_SUCCESS)
                return 1;
            kvx_sender_destroy(s);
            kvx_receiver_destroy(r);
        }
        t = now_s() - t0;
        printf("fake transport: %.2f us per request (sender + receiver, %u pages, %u requests)\n",
               t / iters * 1e6, n, iters);
    }
    kvx_engine_destroy(fp);
    kvx_engine_destroy(fd);
    ex_pool_free(&ps);
    ex_pool_free(&pr);
    free(src); free(dst); free(sp); free(dp);
    return 0;
}
