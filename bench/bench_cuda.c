/* bench_cuda - KV in GPU memory: the cuda transport, its device-to-device
   span copy and the staging path, each against a raw baseline, in one run.

   For a 4096-token Llama-3.1-8B request (64 buffers, one allocation each,
   page size 16, 32 KiB pages, 512 MiB) with scattered pages on both sides
   (pools of twice the request, shuffled as after hours of serving):
   - D2D: kvx_cuda_copy_spans of the plan between two GPU pools, as the
     cuda transport does it, against one contiguous device-to-device copy of
     the same number of bytes (goal: >= 0.85x);
   - D2D strided: the plan of a TP 2 prefill rank (8 heads) to a TP 4
     decode rank (heads 0..3): half of every token row, as 2-D copies
     (cuMemcpy2DAsync), against one contiguous copy of as many bytes;
   - the cuda transport: a prefill engine in this process and a decode
     engine in a second process (this program run again), CUDA IPC between
     them; time from kvx_sender_send to the sender's Success (every byte
     and the completion placed at the decode side), one chunk and 8 chunks
     of 512 tokens, against the same contiguous copy (goal: >= 0.85x);
   - D2H staging: the scattered pages into pinned host memory through
     kvx_mem_ops.copy, 16 MiB stripes of 512 pieces (the file transport's
     unit), against contiguous 16 MiB device-to-host copies; and H2D back;
   - the file transport (KVX_BENCH_DIR, /tmp/kvx_bench_cuda) end to end,
     send to the receiver's Success, with both pools in GPU memory (staged)
     against both pools in host memory.
   GB/s are bytes moved per second (not read + write). Best of
   KVX_BENCH_REPS (5). KVX_BENCH_TOKENS changes the request (4096).

   Without a GPU or driver it says why and exits 0. With KVX_CUDA_LIBRARY
   pointing at tests/fakecuda/libfakecuda.so it runs on the fake driver (a
   dry run of the code; the numbers are memcpy's, not a GPU's). */
#define KVX_IMPLEMENTATION
#include "../kvx_file.h"
#include "../kvx_cuda.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>

extern char **environ;

#define NB 64u
#define PAGE_TOKENS 16u
#define ITEM (32u * 1024u) /* 16 tokens x 8 KV heads x 128 dims x 2 bytes */
#define STRIPE (16u << 20)

static kvx_mem_ops ops;
static kvx_cuda *cu;

static double now_s(void) { return (double)kvx_now_ns() / 1e9; }

static void die(const char *what, const char *why) {
    fprintf(stderr, "bench_cuda: %s: %s\n", what, why);
    exit(1);
}

static uint64_t mix(uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

static void shuffle(int32_t *p, uint32_t n, uint64_t seed) {
    uint32_t i;
    for (i = 0; i < n; i++) p[i] = (int32_t)i;
    for (i = n; i > 1; i--) {
        uint32_t j = (uint32_t)(mix(seed++) % i);
        int32_t t = p[i - 1];
        p[i - 1] = p[j];
        p[j] = t;
    }
}

typedef struct pool {
    kvx_buffer bufs[NB];
    kvx_layout l;
} pool;

/* A pool of `heads` of the 8 KV heads (a TP rank's share), from head_begin. */
static void pool_alloc_heads(pool *p, uint32_t pages, uint32_t heads, uint32_t head_begin) {
    char why[KVX_ERROR_MAX];
    uint64_t item = (uint64_t)ITEM / 8 * heads;
    uint32_t b;
    memset(p, 0, sizeof *p);
    for (b = 0; b < NB; b++) {
        if (kvx_cuda_alloc(cu, 0, (size_t)(pages * item), &p->bufs[b].base, why, sizeof why))
            die("GPU pool", why);
        p->bufs[b].length = (uint64_t)pages * item;
        p->bufs[b].item_len = item;
        p->bufs[b].mem = KVX_MEM_CUDA;
    }
    p->l.buffers = p->bufs;
    p->l.num_buffers = NB;
    p->l.page_size = PAGE_TOKENS;
    p->l.num_kv_heads = heads;
    p->l.head_begin = head_begin;
    p->l.dtype_size = 2;
    p->l.dtype = "bfloat16";
}

static void pool_alloc(pool *p, uint32_t pages) { pool_alloc_heads(p, pages, 8, 0); }

static void pool_free(pool *p) {
    uint32_t b;
    for (b = 0; b < NB; b++) kvx_cuda_free(cu, 0, p->bufs[b].base);
}

/* Fills every page of a pool with a recognisable pattern (page p of buffer
   b: 8-byte words mix(b << 32 | p) + i), through staging. */
static void pool_fill(pool *p, uint32_t pages, char *stage) {
    char why[KVX_ERROR_MAX];
    uint32_t b, pg;
    for (b = 0; b < NB; b++) {
        kvx_copy c;
        uint32_t per = STRIPE / ITEM;
        for (pg = 0; pg < pages; pg += per) {
            uint32_t k = pages - pg < per ? pages - pg : per, q;
            for (q = 0; q < k; q++) {
                uint64_t *w = (uint64_t *)(stage + (size_t)q * ITEM), v = mix(((uint64_t)b << 32) | (pg + q));
                uint32_t i;
                for (i = 0; i < ITEM / 8; i++) w[i] = v + i;
            }
            c.buf_ptr = (char *)p->bufs[b].base + (uint64_t)pg * ITEM;
            c.host = stage;
            c.len = (uint64_t)k * ITEM;
            c.device = 0;
            if (ops.copy(ops.ctx, 0, &c, 1, why, sizeof why)) die("fill", why);
        }
    }
}

static int page_ok(const char *h, uint32_t b, uint32_t page) {
    const uint64_t *w = (const uint64_t *)h;
    uint64_t v = mix(((uint64_t)b << 32) | page);
    uint32_t i;
    for (i = 0; i < ITEM / 8; i++)
        if (w[i] != v + i) return 0;
    return 1;
}

static double time_spans(kvx_cuda_stream *s, const kvx_layout *src, const kvx_layout *dst,
                         const kvx_span *sp, size_t n) {
    char why[KVX_ERROR_MAX];
    uint64_t t;
    double t0 = now_s();
    if (kvx_cuda_copy_spans(s, src, dst, sp, n, &t, why, sizeof why)) die("copy spans", why);
    if (kvx_cuda_stream_wait(s, t, why, sizeof why)) die("wait", why);
    return now_s() - t0;
}

/* TP 2 -> 4: a decode rank's 4 of the prefill rank's 8 heads (the first
   half of every token row) as strided spans (2-D copies), against one
   contiguous copy of as many bytes (la/lb hold at least that many). */
static void strided_case(kvx_cuda_stream *s, const pool *src, const int32_t *sp,
                         const int32_t *dp, uint32_t n, uint32_t pool_pages, const kvx_layout *la,
                         const kvx_layout *lb, char *stage, int reps, int fake) {
    char why[KVX_ERROR_MAX];
    kvx_cuda_stats st0, st1;
    kvx_plan plan;
    kvx_span one;
    kvx_copy c;
    pool half;
    double best = 1e9, best_flat = 1e9;
    uint64_t bytes;
    uint32_t i, t, w, bad = 0;
    int rep;
    /* as a TP 2 prefill rank: 8 heads 0..7; the TP 4 decode rank 0 holds heads 0..3 */
    pool_alloc_heads(&half, pool_pages, 4, 0);
    memset(&plan, 0, sizeof plan);
    if (kvx_plan_pages(&plan, &src->l, sp, &half.l, dp, n)) die("strided plan", plan.error);
    bytes = plan.total_bytes;
    memset(&one, 0, sizeof one);
    one.length = bytes;
    time_spans(s, &src->l, &half.l, plan.spans, plan.count); /* warm-up */
    for (rep = 0; rep < reps; rep++) {
        double x = time_spans(s, la, lb, &one, 1);
        if (x < best_flat) best_flat = x;
    }
    kvx_cuda_stats_get(cu, &st0);
    for (rep = 0; rep < reps; rep++) {
        double x = time_spans(s, &src->l, &half.l, plan.spans, plan.count);
        if (x < best) best = x;
    }
    kvx_cuda_stats_get(cu, &st1);
    for (i = 0; i < 16; i++) { /* the first half of each token row, word for word */
        uint32_t k = (uint32_t)(mix(300 + i) % n), b = (uint32_t)(mix(400 + i) % NB);
        const uint64_t *h = (const uint64_t *)stage;
        uint64_t v = mix(((uint64_t)b << 32) | (uint32_t)sp[k]);
        c.buf_ptr = (char *)half.bufs[b].base + (uint64_t)dp[k] * (ITEM / 2);
        c.host = stage;
        c.len = ITEM / 2;
        c.device = 0;
        if (ops.copy(ops.ctx, 1, &c, 1, why, sizeof why)) die("verify strided", why);
        for (t = 0; t < PAGE_TOKENS; t++)
            for (w = 0; w < ITEM / PAGE_TOKENS / 16; w++)
                if (h[t * (ITEM / PAGE_TOKENS / 16) + w] != v + t * (ITEM / PAGE_TOKENS / 8) + w)
                    bad++;
    }
    if (bad) die("verify strided", "head slices did not land where the plan says");
    printf("  D2D contiguous, one copy of %3.0f MiB %6.1f GB/s  (%.3f ms)\n",
           (double)bytes / (1 << 20), bytes / best_flat / 1e9, best_flat * 1e3);
    printf("  D2D TP 2 -> 4 head slices, %5zu strided spans %6.1f GB/s  (%.3f ms)  ratio %.2fx "
           "contiguous%s\n", plan.strided, bytes / best / 1e9, best * 1e3, best_flat / best,
           fake ? "" : (best_flat / best < 0.5 ? "  (below 0.5x)" : ""));
    printf("      (%llu cuMemcpy2DAsync calls, %llu rows copied one by one per transfer)\n",
           (unsigned long long)((st1.driver_2d - st0.driver_2d) / (uint64_t)reps),
           (unsigned long long)((st1.rows_1d - st0.rows_1d) / (uint64_t)reps));
    kvx_plan_free(&plan);
    pool_free(&half);
}

/* ---- the cuda transport between two processes ---------------------------------- */

static kvx_engine *engine(kvx_role role, const char *transport, const kvx_layout *l,
                          const kvx_mem_ops *mem, const char *boot_addr, const char *dir) {
    kvx_engine_desc d;
    kvx_engine *e;
    char why[KVX_ERROR_MAX];
    memset(&d, 0, sizeof d);
    d.role = role;
    d.transport = transport;
    d.layout = *l;
    if (mem) d.mem = *mem;
    if (!strcmp(transport, "cuda")) { /* the file transport runs without a handshake here */
        d.boot.host = "127.0.0.1";
        d.boot.port = -1;
        d.bootstrap_addr = boot_addr;
    }
    d.file.dir = dir;
    d.logger.level = KVX_LOG_ERROR;
    d.poll_interval_us = 200;
    if (kvx_engine_create(&d, &e, why, sizeof why)) die("engine", why);
    return e;
}

static int spin_until(kvx_poll (*poll)(const void *), const void *x, kvx_poll from, double secs) {
    double end = now_s() + secs;
    while (poll(x) == from)
        if (now_s() > end) return 0;
        else sched_yield();
    return 1;
}
static kvx_poll poll_s(const void *x) { return kvx_sender_poll((const kvx_sender *)x); }
static kvx_poll poll_r(const void *x) { return kvx_receiver_poll((const kvx_receiver *)x); }

/* The decode process: bench_cuda --decode <port> <tokens> <rooms>. Its pool
   is as the prefill's, its pages shuffled with another seed; it receives
   `rooms` rooms, then checks a sample of pages of the last one. */
static int decode_helper(char **argv) {
    int port = atoi(argv[2]);
    uint32_t tokens = (uint32_t)atoi(argv[3]), rooms = (uint32_t)atoi(argv[4]);
    uint32_t n = tokens / PAGE_TOKENS, pool_pages = 2 * n, r, i;
    int32_t *sp = (int32_t *)malloc(pool_pages * sizeof *sp), *dp = (int32_t *)malloc(pool_pages * sizeof *dp);
    char why[KVX_ERROR_MAX], addr[64], *stage;
    kvx_engine *e;
    pool dst;
    int bad = 0;
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (kvx_cuda_mem_ops(&ops, NULL, why, sizeof why) != KVX_OK) die("decode: mem ops", why);
    cu = kvx_cuda_from_mem_ops(&ops);
    pool_alloc(&dst, pool_pages);
    shuffle(sp, pool_pages, 1);
    shuffle(dp, pool_pages, 2);
    snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
    e = engine(KVX_ROLE_DECODE, "cuda", &dst.l, &ops, addr, NULL);
    printf("READY\n");
    fflush(stdout);
    for (r = 0; r < rooms; r++) {
        kvx_room_desc rd;
        kvx_receiver *rc;
        memset(&rd, 0, sizeof rd);
        rd.room = 1000 + r;
        if (kvx_receiver_create(e, &rd, &rc) != KVX_OK) die("decode", "receiver_create");
        spin_until(poll_r, rc, KVX_POLL_BOOTSTRAPPING, 60);
        kvx_receiver_init(rc, dp, n, -1);
        spin_until(poll_r, rc, KVX_POLL_TRANSFERRING, 60);
        if (kvx_receiver_poll(rc) != KVX_POLL_SUCCESS) {
            printf("FAIL %s\n", kvx_receiver_error(rc));
            return 1;
        }
        kvx_receiver_destroy(rc);
    }
    stage = (char *)ops.host_alloc(ops.ctx, ITEM);
    for (i = 0; stage && i < 32; i++) {
        uint32_t k = (uint32_t)(mix(300 + i) % n), b = (uint32_t)(mix(400 + i) % NB);
        kvx_copy c;
        c.buf_ptr = (char *)dst.bufs[b].base + (uint64_t)dp[k] * ITEM;
        c.host = stage;
        c.len = ITEM;
        c.device = 0;
        if (ops.copy(ops.ctx, 1, &c, 1, why, sizeof why)) die("decode: verify", why);
        if (!page_ok(stage, b, (uint32_t)sp[k])) bad++;
    }
    printf("VERIFY %d\n", stage ? bad : -1);
    fflush(stdout);
    while (read(0, why, sizeof why) > 0) {} /* the prefill closes its imports first */
    ops.host_free(ops.ctx, stage);
    kvx_engine_destroy(e);
    pool_free(&dst);
    kvx_cuda_mem_ops_release(&ops);
    free(sp);
    free(dp);
    return 0;
}

/* The prefill side: send the request 1 + 2 * reps times (a warm-up, reps in
   one chunk, reps in 8 chunks), each timed from the first send to the
   sender's Success. */
static void bench_transport(pool *src, const int32_t *sp, uint32_t n, uint32_t tokens, int reps,
                            double best_flat, uint64_t bytes, int fake) {
    char self[4096], port_s[16], tok_s[16], rooms_s[16], line[512];
    char *argv_c[7];
    int out[2], in[2], r;
    ssize_t l;
    pid_t pid;
    FILE *from;
    kvx_engine *e = engine(KVX_ROLE_PREFILL, "cuda", &src->l, &ops, NULL, NULL);
    posix_spawn_file_actions_t fa;
    double best1 = 1e9, best8 = 1e9, send1 = 1e9;
    kvx_cuda_transport_stats st;
    l = readlink("/proc/self/exe", self, sizeof self - 1);
    if (l <= 0) die("transport", "cannot find /proc/self/exe");
    self[l] = 0;
    snprintf(port_s, sizeof port_s, "%d", kvx_boot_engine_port(e));
    snprintf(tok_s, sizeof tok_s, "%u", tokens);
    snprintf(rooms_s, sizeof rooms_s, "%d", 1 + 2 * reps);
    argv_c[0] = self; argv_c[1] = (char *)"--decode"; argv_c[2] = port_s; argv_c[3] = tok_s;
    argv_c[4] = rooms_s; argv_c[5] = NULL;
    if (pipe(out) || pipe(in)) die("transport", "pipe");
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, out[1], 1);
    posix_spawn_file_actions_adddup2(&fa, in[0], 0);
    posix_spawn_file_actions_addclose(&fa, out[0]);
    posix_spawn_file_actions_addclose(&fa, in[1]);
    fflush(stdout);
    if (posix_spawn(&pid, self, &fa, NULL, argv_c, environ)) die("transport", "posix_spawn");
    posix_spawn_file_actions_destroy(&fa);
    close(out[1]);
    close(in[0]);
    from = fdopen(out[0], "r");
    if (!fgets(line, sizeof line, from) || strncmp(line, "READY", 5))
        die("transport: decode process", line);
    for (r = 0; r <= 2 * reps; r++) {
        kvx_room_desc rd;
        kvx_sender *s;
        uint32_t chunks = r > reps ? 8 : 1, k, per = (n + chunks - 1) / chunks;
        double t0, t1, t;
        memset(&rd, 0, sizeof rd);
        rd.room = 1000 + (uint64_t)r;
        if (kvx_sender_create(e, &rd, &s) != KVX_OK) die("transport", "sender_create");
        if (!spin_until(poll_s, s, KVX_POLL_BOOTSTRAPPING, 60) ||
            kvx_sender_init(s, n, -1) != KVX_OK)
            die("transport: the decode side's destination", kvx_sender_error(s));
        t0 = now_s();
        for (k = 0; k < n; k += per)
            kvx_sender_send(s, sp + k, n - k < per ? n - k : per);
        t1 = now_s();
        spin_until(poll_s, s, KVX_POLL_TRANSFERRING, 60);
        t = now_s() - t0;
        if (kvx_sender_poll(s) != KVX_POLL_SUCCESS) die("transport", kvx_sender_error(s));
        kvx_sender_destroy(s);
        if (!r) continue; /* warm-up: imports, stream */
        if (chunks == 1 && t < best1) { best1 = t; send1 = t1 - t0; }
        if (chunks == 8 && t < best8) best8 = t;
    }
    if (!fgets(line, sizeof line, from) || strncmp(line, "VERIFY 0", 8))
        die("transport: decode process", line);
    kvx_cuda_transport_stats_get(e, &st);
    kvx_engine_destroy(e); /* imports closed before the decode process frees its pool */
    close(in[1]);
    fclose(from);
    waitpid(pid, &r, 0);
    printf("  cuda transport, 2 processes, 1 chunk  %6.1f GB/s  (%.3f ms, %.3f ms in the send "
           "call)  ratio %.2fx contiguous (goal >= 0.85x)%s\n", bytes / best1 / 1e9, best1 * 1e3,
           send1 * 1e3, best_flat / best1, !fake && best_flat / best1 < 0.85 ? "  BELOW GOAL" : "");
    printf("  cuda transport, 8 chunks of %4u tok  %6.1f GB/s  (%.3f ms)  ratio %.2fx contiguous\n",
           tokens / 8, bytes / best8 / 1e9, best8 * 1e3, best_flat / best8);
    printf("      (%llu GPU allocations imported once, %llu spans per request)\n",
           (unsigned long long)st.imports, (unsigned long long)(st.spans / (1 + 2 * (uint64_t)reps)));
}

/* ---- the file transport: GPU pools (staged) against host pools ------------------- */

static double file_once(kvx_engine *pe, kvx_engine *de, uint64_t room, const int32_t *sp,
                        const int32_t *dp, uint32_t n) {
    kvx_room_desc rd;
    kvx_sender *s;
    kvx_receiver *r;
    double t0, t;
    memset(&rd, 0, sizeof rd);
    rd.room = room;
    kvx_receiver_create(de, &rd, &r);
    kvx_receiver_init(r, dp, n, -1);
    kvx_sender_create(pe, &rd, &s);
    if (kvx_sender_init(s, n, -1) != KVX_OK) die("file transfer: init", kvx_sender_error(s));
    t0 = now_s();
    if (kvx_sender_send(s, sp, n) != KVX_OK) die("file transfer: send", kvx_sender_error(s));
    while (kvx_receiver_poll(r) == KVX_POLL_TRANSFERRING) {
        struct timespec ts = {0, 20000};
        nanosleep(&ts, NULL);
    }
    t = now_s() - t0;
    if (kvx_receiver_poll(r) != KVX_POLL_SUCCESS || kvx_sender_poll(s) != KVX_POLL_SUCCESS)
        die("file transfer", kvx_receiver_error(r));
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

static void bench_file(pool *gsrc, pool *gdst, const int32_t *sp, const int32_t *dp, uint32_t n,
                       uint32_t pool_pages, int reps, uint64_t bytes, char *stage) {
    const char *dir = getenv("KVX_BENCH_DIR") ? getenv("KVX_BENCH_DIR") : "/tmp/kvx_bench_cuda";
    kvx_buffer hs[NB], hd[NB];
    kvx_layout ls = gsrc->l, ld = gdst->l;
    kvx_engine *hp, *hr, *gp, *gr;
    double best_h = 1e9, best_g = 1e9;
    uint32_t b, pg, i;
    int rep, bad = 0;
    mkdir(dir, 0755);
    for (b = 0; b < NB; b++) { /* host pools with the same pages */
        hs[b] = gsrc->bufs[b];
        hd[b] = gdst->bufs[b];
        hs[b].mem = hd[b].mem = KVX_MEM_HOST;
        hs[b].base = malloc((size_t)pool_pages * ITEM);
        hd[b].base = calloc(pool_pages, ITEM);
        if (!hs[b].base || !hd[b].base) die("file", "out of memory for the host pools");
        for (pg = 0; pg < pool_pages; pg++) {
            uint64_t *w = (uint64_t *)((char *)hs[b].base + (uint64_t)pg * ITEM);
            uint64_t v = mix(((uint64_t)b << 32) | pg);
            for (i = 0; i < ITEM / 8; i++) w[i] = v + i;
        }
    }
    ls.buffers = hs;
    ld.buffers = hd;
    hp = engine(KVX_ROLE_PREFILL, "file", &ls, NULL, NULL, dir);
    hr = engine(KVX_ROLE_DECODE, "file", &ld, NULL, NULL, dir);
    gp = engine(KVX_ROLE_PREFILL, "file", &gsrc->l, &ops, NULL, dir);
    gr = engine(KVX_ROLE_DECODE, "file", &gdst->l, &ops, NULL, dir);
    for (rep = 0; rep <= reps; rep++) { /* the first of each is a warm-up */
        double t = file_once(hp, hr, 2000 + (uint64_t)rep, sp, dp, n);
        wait_gone(dir, 2000 + (uint64_t)rep);
        if (rep && t < best_h) best_h = t;
        t = file_once(gp, gr, 3000 + (uint64_t)rep, sp, dp, n);
        wait_gone(dir, 3000 + (uint64_t)rep);
        if (rep && t < best_g) best_g = t;
    }
    for (i = 0; i < 16; i++) {
        uint32_t k = (uint32_t)(mix(500 + i) % n);
        kvx_copy c;
        char why[KVX_ERROR_MAX];
        b = (uint32_t)(mix(600 + i) % NB);
        c.buf_ptr = (char *)gdst->bufs[b].base + (uint64_t)dp[k] * ITEM;
        c.host = stage;
        c.len = ITEM;
        c.device = 0;
        if (ops.copy(ops.ctx, 1, &c, 1, why, sizeof why)) die("file: verify", why);
        if (!page_ok(stage, b, (uint32_t)sp[k])) bad++;
        if (!page_ok((char *)hd[b].base + (uint64_t)dp[k] * ITEM, b, (uint32_t)sp[k])) bad++;
    }
    if (bad) die("file: verify", "pages did not land where the plan says");
    kvx_engine_destroy(hp);
    kvx_engine_destroy(hr);
    kvx_engine_destroy(gp);
    kvx_engine_destroy(gr);
    for (b = 0; b < NB; b++) {
        free(hs[b].base);
        free(hd[b].base);
    }
    printf("  file transport, pools in host memory  %6.2f GB/s  (%.1f ms, send to the receiver's "
           "Success, %s)\n", bytes / best_h / 1e9, best_h * 1e3, dir);
    printf("  file transport, pools in GPU memory   %6.2f GB/s  (%.1f ms, staged)  ratio %.2fx "
           "host\n", bytes / best_g / 1e9, best_g * 1e3, best_h / best_g);
}

int main(int argc, char **argv) {
    char why[KVX_ERROR_MAX], *stage;
    kvx_cuda_info info;
    kvx_cuda_stats st0, st1;
    const char *e;
    int fake, reps = (e = getenv("KVX_BENCH_REPS")) ? atoi(e) : 5, rep;
    uint32_t tokens, n, pool_pages, i, b;
    int32_t *sp, *dp;
    pool src, dst;
    kvx_plan plan;
    kvx_cuda_stream *s;
    void *flat_a = NULL, *flat_b = NULL;
    kvx_buffer fa, fb;
    kvx_layout la, lb;
    kvx_span one;
    uint64_t bytes;
    double best_spans = 1e9, best_flat = 1e9, best_d2h = 1e9, best_d2h_flat = 1e9, best_h2d = 1e9;
    kvx_copy *pieces;

    kvx_cuda_register();
    kvx_file_register();
    if (argc > 4 && !strcmp(argv[1], "--decode")) return decode_helper(argv);
    if (kvx_cuda_mem_ops(&ops, NULL, why, sizeof why) != KVX_OK) {
        printf("bench_cuda: skipped: %s\n", why);
        return 0;
    }
    cu = kvx_cuda_from_mem_ops(&ops);
    kvx_cuda_get_info(cu, &info);
    fake = strstr(info.library, "fakecuda") != NULL;
    tokens = (e = getenv("KVX_BENCH_TOKENS")) ? (uint32_t)atoi(e) : (fake ? 1024u : 4096u);
    if (tokens < PAGE_TOKENS) tokens = PAGE_TOKENS;
    if (reps < 1) reps = 1;
    n = tokens / PAGE_TOKENS;
    pool_pages = 2 * n;
    bytes = (uint64_t)n * NB * ITEM;
    printf("cuda: driver %d.%d (%s), %s copies, %u-token llama-3.1-8b request, %u scattered pages "
           "x %u buffers, %.0f MiB, best of %d%s\n",
           info.driver_version / 1000, info.driver_version % 1000 / 10, info.library,
           info.batch ? "batched (cuMemcpyBatchAsync)" : "one-by-one", tokens, n, NB,
           (double)bytes / (1 << 20), reps, fake ? "\n  FAKE DRIVER: memcpy numbers, not a GPU's" : "");

    stage = (char *)ops.host_alloc(ops.ctx, STRIPE);
    if (!stage) die("staging", "host_alloc returned NULL");
    pool_alloc(&src, pool_pages);
    pool_alloc(&dst, pool_pages);
    pool_fill(&src, pool_pages, stage);
    sp = (int32_t *)malloc(pool_pages * sizeof *sp);
    dp = (int32_t *)malloc(pool_pages * sizeof *dp);
    shuffle(sp, pool_pages, 1);
    shuffle(dp, pool_pages, 2);
    memset(&plan, 0, sizeof plan);
    if (kvx_plan_pages(&plan, &src.l, sp, &dst.l, dp, n)) die("plan", plan.error);

    /* the contiguous baseline: the same bytes, one copy */
    if (kvx_cuda_alloc(cu, 0, (size_t)bytes, &flat_a, why, sizeof why) ||
        kvx_cuda_alloc(cu, 0, (size_t)bytes, &flat_b, why, sizeof why))
        die("flat buffers", why);
    memset(&fa, 0, sizeof fa);
    fa.base = flat_a; fa.length = bytes; fa.item_len = bytes; fa.mem = KVX_MEM_CUDA;
    fb = fa;
    fb.base = flat_b;
    memset(&la, 0, sizeof la);
    la.buffers = &fa; la.num_buffers = 1;
    lb = la;
    lb.buffers = &fb;
    memset(&one, 0, sizeof one);
    one.length = bytes;

    if (kvx_cuda_stream_create(cu, 0, &s, why, sizeof why)) die("stream", why);
    time_spans(s, &src.l, &dst.l, plan.spans, plan.count); /* warm-up */
    time_spans(s, &la, &lb, &one, 1);
    for (rep = 0; rep < reps; rep++) {
        double t = time_spans(s, &la, &lb, &one, 1);
        if (t < best_flat) best_flat = t;
    }
    kvx_cuda_stats_get(cu, &st0);
    for (rep = 0; rep < reps; rep++) {
        double t = time_spans(s, &src.l, &dst.l, plan.spans, plan.count);
        if (t < best_spans) best_spans = t;
    }
    kvx_cuda_stats_get(cu, &st1);

    /* check a sample of the destination pages */
    {
        kvx_copy c;
        int bad = 0;
        for (i = 0; i < 16; i++) {
            uint32_t k = (uint32_t)(mix(100 + i) % n);
            b = (uint32_t)(mix(200 + i) % NB);
            c.buf_ptr = (char *)dst.bufs[b].base + (uint64_t)dp[k] * ITEM;
            c.host = stage;
            c.len = ITEM;
            c.device = 0;
            if (ops.copy(ops.ctx, 1, &c, 1, why, sizeof why)) die("verify", why);
            if (!page_ok(stage, b, (uint32_t)sp[k])) bad++;
        }
        if (bad) die("verify", "pages did not land where the plan says");
    }
    printf("  D2D contiguous, one copy          %8.1f GB/s  (%.3f ms)\n", bytes / best_flat / 1e9,
           best_flat * 1e3);
    printf("  D2D kvx spans, %6zu spans        %8.1f GB/s  (%.3f ms)  ratio %.2fx contiguous "
           "(goal >= 0.85x)%s\n", plan.count, bytes / best_spans / 1e9, best_spans * 1e3,
           best_flat / best_spans, (!fake && best_flat / best_spans < 0.85) ? "  BELOW GOAL" : "");
    printf("      (%llu driver batch calls, %llu single copies per transfer)\n",
           (unsigned long long)((st1.driver_batches - st0.driver_batches) / (uint64_t)reps),
           (unsigned long long)((st1.driver_copies - st0.driver_copies) / (uint64_t)reps));

    strided_case(s, &src, sp, dp, n, pool_pages, &la, &lb, stage, reps, fake);

    /* staging: scattered pages -> 16 MiB pinned stripes, 512 pieces each */
    pieces = (kvx_copy *)malloc((STRIPE / ITEM) * sizeof *pieces);
    for (rep = 0; rep < reps; rep++) {
        uint32_t per = STRIPE / ITEM, total = n * NB, at;
        double t0 = now_s(), t;
        for (at = 0; at < total; at += per) { /* buffer-major, like a gather plan */
            uint32_t k = total - at < per ? total - at : per, q;
            for (q = 0; q < k; q++) {
                uint32_t idx = at + q, bb = idx / n, pg = idx % n;
                pieces[q].buf_ptr = (char *)src.bufs[bb].base + (uint64_t)sp[pg] * ITEM;
                pieces[q].host = stage + (size_t)q * ITEM;
                pieces[q].len = ITEM;
                pieces[q].device = 0;
            }
            if (ops.copy(ops.ctx, 1, pieces, k, why, sizeof why)) die("d2h", why);
        }
        t = now_s() - t0;
        if (t < best_d2h) best_d2h = t;
        t0 = now_s();
        for (at = 0; at < total; at += per) {
            uint32_t k = total - at < per ? total - at : per, q;
            for (q = 0; q < k; q++) {
                uint32_t idx = at + q, bb = idx / n, pg = idx % n;
                pieces[q].buf_ptr = (char *)dst.bufs[bb].base + (uint64_t)dp[pg] * ITEM;
                pieces[q].host = stage + (size_t)q * ITEM;
                pieces[q].len = ITEM;
                pieces[q].device = 0;
            }
            if (ops.copy(ops.ctx, 0, pieces, k, why, sizeof why)) die("h2d", why);
        }
        t = now_s() - t0;
        if (t < best_h2d) best_h2d = t;
        t0 = now_s();
        for (at = 0; at < (uint32_t)(bytes / STRIPE); at++) {
            kvx_copy c;
            c.buf_ptr = (char *)flat_a + (uint64_t)at * STRIPE;
            c.host = stage;
            c.len = STRIPE;
            c.device = 0;
            if (ops.copy(ops.ctx, 1, &c, 1, why, sizeof why)) die("d2h flat", why);
        }
        t = now_s() - t0;
        if (bytes / STRIPE && t < best_d2h_flat) best_d2h_flat = t;
    }
    if (bytes / STRIPE) {
        double flat_bytes = (double)(bytes / STRIPE * STRIPE);
        printf("  D2H contiguous, 16 MiB copies     %8.1f GB/s\n", flat_bytes / best_d2h_flat / 1e9);
        printf("  D2H kvx staging, 512 pieces/call  %8.1f GB/s  ratio %.2fx contiguous\n",
               bytes / best_d2h / 1e9, (bytes / best_d2h) / (flat_bytes / best_d2h_flat));
    } else {
        printf("  D2H kvx staging, 512 pieces/call  %8.1f GB/s\n", bytes / best_d2h / 1e9);
    }
    printf("  H2D kvx staging, 512 pieces/call  %8.1f GB/s\n", bytes / best_h2d / 1e9);

    bench_transport(&src, sp, n, tokens, reps, best_flat, bytes, fake);
    bench_file(&src, &dst, sp, dp, n, pool_pages, reps, bytes, stage);

    free(pieces);
    kvx_cuda_stream_destroy(s);
    kvx_cuda_free(cu, 0, flat_a);
    kvx_cuda_free(cu, 0, flat_b);
    pool_free(&src);
    pool_free(&dst);
    kvx_plan_free(&plan);
    free(sp);
    free(dp);
    ops.host_free(ops.ctx, stage);
    kvx_cuda_mem_ops_release(&ops);
    return 0;
}
