/* bench_cuda - KV in GPU memory: the cuda transport's device-to-device span
   copy and the staging path, each against a raw baseline, in one run.

   For a 4096-token Llama-3.1-8B request (64 buffers, page size 16, 32 KiB
   pages, 512 MiB) with scattered pages on both sides (pools of twice the
   request, shuffled as after hours of serving):
   - D2D: kvx_cuda_copy_spans of the plan between two GPU pools, as the
     intra-node cuda transport does it, against one contiguous
     device-to-device copy of the same number of bytes (goal: >= 0.85x);
   - D2H staging: the scattered pages into pinned host memory through
     kvx_mem_ops.copy, 16 MiB stripes of 512 pieces (the file transport's
     unit), against contiguous 16 MiB device-to-host copies; and H2D back.
   GB/s are bytes moved per second (not read + write). Best of
   KVX_BENCH_REPS (5). KVX_BENCH_TOKENS changes the request (4096).

   Without a GPU or driver it says why and exits 0. With KVX_CUDA_LIBRARY
   pointing at tests/fakecuda/libfakecuda.so it runs on the fake driver (a
   dry run of the code; the numbers are memcpy's, not a GPU's). */
#define KVX_IMPLEMENTATION
#include "../kvx_cuda.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

static void pool_alloc(pool *p, uint32_t pages) {
    char why[KVX_ERROR_MAX];
    uint32_t b;
    memset(p, 0, sizeof *p);
    for (b = 0; b < NB; b++) {
        if (kvx_cuda_alloc(cu, 0, (size_t)pages * ITEM, &p->bufs[b].base, why, sizeof why))
            die("GPU pool", why);
        p->bufs[b].length = (uint64_t)pages * ITEM;
        p->bufs[b].item_len = ITEM;
        p->bufs[b].mem = KVX_MEM_CUDA;
    }
    p->l.buffers = p->bufs;
    p->l.num_buffers = NB;
    p->l.page_size = PAGE_TOKENS;
    p->l.num_kv_heads = 8;
    p->l.dtype_size = 2;
    p->l.dtype = "bfloat16";
}

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

int main(void) {
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
