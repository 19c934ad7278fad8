/* Strided spans through kvx_cuda_copy_spans on the fake driver: plans
   between ranks of different TP (kvx_plan_pages slicing heads) land head
   by head at the right pitch, as cuMemcpy2DAsync copies split at
   KVX_CUDA_MAX_2D_ROWS rows; row by row when a pitch exceeds the device's
   CU_DEVICE_ATTRIBUTE_MAX_PITCH or the driver refuses a 2-D copy; a span's
   destination is in its dst_buffer; every row of a span is checked against
   both buffers before anything is queued, with sentences. */
#define KVX_CUDA_MAX_2D_ROWS 24 /* small, so the 2-D copies split */
#define KVX_IMPLEMENTATION
#include "../../kvx_cuda.h"
#include "../../examples/kvx_example.h"
#include "cuda_test.h"

#if !defined(KVX_WITH_CUDA)
int main(void) {
    kt_name = "test_cuda_strided";
    return kt_skip("built without KVX_WITH_CUDA (no CUDA toolkit headers at build time)");
}
#else

static ct_fake F;
/* 2 layers, 8 KV heads of 16 x bfloat16 (32 bytes): a TP 1 token row is
   256 bytes, TP 2 128, TP 4 64 */
static const ex_model M = {"tiny", 2, 8, 16, 2, 0, "bfloat16"};
#define PAGES 40
#define N 20 /* pages per request: a run of 8, then scattered */

typedef struct rank_pool {
    ex_pool p;
    ex_gpu g;
} rank_pool;

static int rank_init(rank_pool *r, uint32_t tp, uint32_t tp_rank, uint64_t seed) {
    ex_rank rk;
    char why[KVX_ERROR_MAX];
    rk.tp = tp;
    rk.tp_rank = tp_rank;
    rk.pp = 1;
    rk.pp_rank = 0;
    if (ex_pool_init_rank(&r->p, &M, PAGES, 16, 4, seed, &rk) != 0) return -1;
    if (ex_gpu_init(&r->g, &r->p, why, sizeof why) != 0) {
        CHECK(0, "GPU pool: %s", why);
        return -1;
    }
    return 0;
}

static void rank_free(rank_pool *r) {
    ex_gpu_free(&r->g, &r->p);
    ex_pool_free(&r->p);
}

static void zero_pool(rank_pool *r) {
    uint32_t b;
    for (b = 0; b < r->p.layout.num_buffers; b++)
        memset(F.view(r->p.bufs[b].base, r->p.bufs[b].length), 0, r->p.bufs[b].length);
}

static void make_pages(int32_t *sp, int32_t *dp, uint64_t seed) {
    uint32_t i;
    for (i = 0; i < 8; i++) {
        sp[i] = (int32_t)(PAGES - 8 + i);
        dp[i] = (int32_t)(PAGES - 8 + i);
    }
    ct_pages(sp + 8, N - 8, PAGES - 8, seed);
    ct_pages(dp + 8, N - 8, PAGES - 8, seed + 1);
}

/* 2-D copies a plan needs at KVX_CUDA_MAX_2D_ROWS rows each; rows in total. */
static uint64_t copies_2d(const kvx_plan *pl, uint64_t *rows) {
    uint64_t c = 0;
    size_t i;
    *rows = 0;
    for (i = 0; i < pl->count; i++) {
        const kvx_span *x = &pl->spans[i];
        uint64_t r;
        if (!x->row_len) continue;
        r = x->length / x->row_len;
        *rows += r;
        c += (r + KVX_CUDA_MAX_2D_ROWS - 1) / KVX_CUDA_MAX_2D_ROWS;
    }
    return c;
}

/* Copies src's pages sp to dst's pages dp through a plan on a new stream of
   cu and waits. Returns the plan's result; fills *pl. */
static kvx_result run_plan(kvx_cuda *cu, rank_pool *src, const int32_t *sp, rank_pool *dst,
                           const int32_t *dp, kvx_plan *pl, char *why, size_t wl) {
    kvx_cuda_stream *s = NULL;
    uint64_t t = 0;
    kvx_result r;
    if (kvx_plan_pages(pl, &src->p.layout, sp, &dst->p.layout, dp, N) != KVX_OK) {
        snprintf(why, wl, "plan: %.200s", pl->error);
        return KVX_ERR_INVALID_ARGUMENT;
    }
    if ((r = kvx_cuda_stream_create(cu, 0, &s, why, wl)) != KVX_OK) return r;
    r = kvx_cuda_copy_spans(s, &src->p.layout, &dst->p.layout, pl->spans, pl->count, &t, why, wl);
    if (r == KVX_OK) r = kvx_cuda_stream_wait(s, t, why, wl);
    kvx_cuda_stream_destroy(s);
    return r;
}

/* TP 2 -> 4: each decode rank's head slice out of prefill rank 0's rows. */
static void check_tp2_to_4(void) {
    rank_pool pre, dec[2];
    kvx_plan pl;
    int32_t sp[N], dp[N];
    char why[KVX_ERROR_MAX];
    uint32_t d;
    memset(&pl, 0, sizeof pl);
    if (rank_init(&pre, 2, 0, 1) || rank_init(&dec[0], 4, 0, 2) || rank_init(&dec[1], 4, 1, 3))
        return;
    make_pages(sp, dp, 5);
    CHECK(ex_gpu_pages(&pre.g, &pre.p, 77, sp, N, 1) == 0, "fill the prefill pages");
    for (d = 0; d < 2; d++) {
        kvx_cuda *cu = kvx_cuda_from_mem_ops(&pre.g.ops);
        kvx_cuda_stats c0, c1;
        struct fakecuda_stats f0, f1;
        uint64_t rows, want;
        kvx_result r;
        zero_pool(&dec[d]);
        kvx_cuda_stats_get(cu, &c0);
        f0 = ct_stats(&F);
        r = run_plan(cu, &pre, sp, &dec[d], dp, &pl, why, sizeof why);
        f1 = ct_stats(&F);
        kvx_cuda_stats_get(cu, &c1);
        CHECK(r == KVX_OK, "TP 2 -> 4, decode rank %u: %s", d, why);
        CHECK(pl.strided == pl.count && pl.count > 0, "every span is strided (%zu of %zu)",
              pl.strided, pl.count);
        want = copies_2d(&pl, &rows);
        CHECK(f1.copies_2d - f0.copies_2d == want && c1.driver_2d - c0.driver_2d == want,
              "decode rank %u: %llu 2-D copies (fake %llu, kvx %llu): each span split at %d rows",
              d, (unsigned long long)want, (unsigned long long)(f1.copies_2d - f0.copies_2d),
              (unsigned long long)(c1.driver_2d - c0.driver_2d), KVX_CUDA_MAX_2D_ROWS);
        CHECK(f1.rows_2d - f0.rows_2d == rows && rows == 2ull * 2 * N * 16,
              "every token row of every buffer once: %llu", (unsigned long long)rows);
        CHECK(f1.bytes_d2d - f0.bytes_d2d == pl.total_bytes && c1.rows_1d == c0.rows_1d,
              "the driver moved the plan's bytes, none row by row");
        CHECK(ex_gpu_pages(&dec[d].g, &dec[d].p, 77, dp, N, 0) == 0,
              "decode rank %u: every head of every token verified", d);
    }
    kvx_plan_free(&pl);
    rank_free(&pre);
    rank_free(&dec[0]);
    rank_free(&dec[1]);
}

/* TP 4 -> 2: two prefill ranks each write their heads at their offset
   inside every row; then the pitch limit and a refused 2-D copy. */
static void check_tp4_to_2(void) {
    rank_pool pre[2], dec;
    kvx_plan pl;
    int32_t sp[N], dp[N];
    char why[KVX_ERROR_MAX];
    uint32_t p, round;
    memset(&pl, 0, sizeof pl);
    if (rank_init(&pre[0], 4, 0, 1) || rank_init(&pre[1], 4, 1, 2) || rank_init(&dec, 2, 0, 3))
        return;
    make_pages(sp, dp, 6);
    for (p = 0; p < 2; p++)
        CHECK(ex_gpu_pages(&pre[p].g, &pre[p].p, 91, sp, N, 1) == 0, "fill prefill rank %u", p);
    /* round 0: 2-D copies; 1: pitch above the device's limit; 2: refused */
    for (round = 0; round < 3; round++) {
        static const char *what[] = {"2-D copies", "pitch above the limit",
                                     "2-D copy refused by the driver"};
        kvx_cuda_stats c0, c1;
        struct fakecuda_stats f0, f1;
        uint64_t rows = 0, rows_all = 0;
        zero_pool(&dec);
        if (round == 1) setenv("FAKECUDA_MAX_PITCH", "100", 1); /* rows are 128 apart */
        for (p = 0; p < 2; p++) {
            kvx_cuda *cu = kvx_cuda_from_mem_ops(&pre[p].g.ops);
            kvx_result r;
            if (round == 2) F.inject("cuMemcpy2DAsync_v2", CUDA_ERROR_INVALID_VALUE, 0);
            kvx_cuda_stats_get(cu, &c0);
            f0 = ct_stats(&F);
            r = run_plan(cu, &pre[p], sp, &dec, dp, &pl, why, sizeof why);
            f1 = ct_stats(&F);
            kvx_cuda_stats_get(cu, &c1);
            copies_2d(&pl, &rows);
            rows_all += rows;
            CHECK(r == KVX_OK, "%s: prefill rank %u: %s", what[round], p, why);
            CHECK(f1.bytes_d2d - f0.bytes_d2d == pl.total_bytes, "%s: the plan's bytes",
                  what[round]);
            if (round == 0)
                CHECK(f1.copies_2d > f0.copies_2d && c1.rows_1d == c0.rows_1d,
                      "%s: as 2-D copies", what[round]);
            if (round == 1)
                CHECK(f1.copies_2d == f0.copies_2d && c1.driver_2d == c0.driver_2d &&
                          c1.rows_1d - c0.rows_1d == rows && f1.errors == f0.errors,
                      "%s: no 2-D copy tried, %llu rows one by one (%llu)", what[round],
                      (unsigned long long)rows, (unsigned long long)(c1.rows_1d - c0.rows_1d));
            if (round == 2)
                CHECK(f1.copies_2d == f0.copies_2d && c1.driver_2d - c0.driver_2d == 1 &&
                          c1.rows_1d - c0.rows_1d == rows,
                      "%s: one 2-D copy tried, then %llu rows one by one (%llu)", what[round],
                      (unsigned long long)rows, (unsigned long long)(c1.rows_1d - c0.rows_1d));
        }
        CHECK(rows_all == 2ull * 2 * 2 * N * 16, "%s: both ranks' rows", what[round]);
        CHECK(ex_gpu_pages(&dec.g, &dec.p, 91, dp, N, 0) == 0,
              "%s: every head of every token verified at the decode rank", what[round]);
        unsetenv("FAKECUDA_MAX_PITCH");
    }
    F.inject("", 0, 0);
    kvx_plan_free(&pl);
    rank_free(&pre[0]);
    rank_free(&pre[1]);
    rank_free(&dec);
}

/* Hand-built spans: dst_buffer is where the bytes go; rows outside either
   buffer, overlapping rows and partial rows are refused before anything is
   queued. */
static void check_refusals(void) {
    rank_pool a, b;
    kvx_cuda *cu;
    kvx_cuda_stream *s = NULL;
    kvx_span x;
    char why[KVX_ERROR_MAX];
    struct fakecuda_stats f0, f1;
    uint64_t t = 0, len, k;
    const unsigned char *sv, *dv;
    kvx_result r;
    int bad = 0;
    if (rank_init(&a, 2, 0, 1) || rank_init(&b, 4, 0, 2)) return;
    cu = kvx_cuda_from_mem_ops(&a.g.ops);
    len = b.p.bufs[1].length; /* 64-byte rows, 40 pages x 16 tokens */
    for (k = 0; k < 4; k++) zero_pool(&b);
    sv = (const unsigned char *)F.view(a.p.bufs[0].base, a.p.bufs[0].length);
    for (k = 0; k < a.p.bufs[0].length; k++)
        ((unsigned char *)F.view(a.p.bufs[0].base, a.p.bufs[0].length))[k] = (unsigned char)(k * 7 + 1);
    if (kvx_cuda_stream_create(cu, 0, &s, why, sizeof why) != KVX_OK) {
        CHECK(0, "stream: %s", why);
        return;
    }
    /* source buffer 0 (rows of 128 bytes) -> destination buffer 3: the
       second half of each source row */
    memset(&x, 0, sizeof x);
    x.kind = KVX_SPAN_PAGES;
    x.buffer = 0;
    x.dst_buffer = 3;
    x.row_len = 64;
    x.src_pitch = 128;
    x.dst_pitch = 64;
    x.src_offset = 64;
    x.dst_offset = 64 * 5;
    x.length = 64 * 30;
    r = kvx_cuda_copy_spans(s, &a.p.layout, &b.p.layout, &x, 1, &t, why, sizeof why);
    CHECK(r == KVX_OK && kvx_cuda_stream_wait(s, t, why, sizeof why) == KVX_OK, "copy: %s", why);
    dv = (const unsigned char *)F.view(b.p.bufs[3].base, len);
    for (k = 0; k < 30 * 64; k++)
        if (dv[64 * 5 + k] != sv[64 + (k / 64) * 128 + k % 64]) bad++;
    for (k = 0; k < 64 * 5; k++)
        if (dv[k] || dv[64 * 35 + k]) bad++;
    CHECK(bad == 0, "rows land at the destination pitch in dst_buffer, nothing around (%d bad)",
          bad);
    dv = (const unsigned char *)F.view(b.p.bufs[0].base, len);
    for (k = bad = 0; k < len; k++)
        if (dv[k]) bad++;
    CHECK(bad == 0, "destination buffer 0 (the span's source buffer index) untouched");

    f0 = ct_stats(&F);
    x.dst_offset = len - 64 * 29; /* the first row fits, the last does not */
    r = kvx_cuda_copy_spans(s, &a.p.layout, &b.p.layout, &x, 1, &t, why, sizeof why);
    CHECK(r == KVX_ERR_OUT_OF_RANGE && t == 0, "the last row past the destination buffer");
    CHECK_STR(why, "span 0 (destination buffer 3, offset 39104, 30 rows of 64 bytes at pitch 64) "
                   "leaves that buffer (40960 bytes)");
    x.dst_offset = 0;
    x.src_offset = a.p.bufs[0].length - 128 * 29;
    r = kvx_cuda_copy_spans(s, &a.p.layout, &b.p.layout, &x, 1, &t, why, sizeof why);
    CHECK(r == KVX_ERR_OUT_OF_RANGE, "the last row past the source buffer");
    CHECK_STR(why, "span 0 (source buffer 0, offset 78208, 30 rows of 64 bytes at pitch 128) "
                   "leaves that buffer (81920 bytes)");
    x.src_offset = 0;
    x.src_pitch = 0xFFFFFFFFu; /* rows * pitch wraps 64 bits */
    x.length = 64ull << 40;
    r = kvx_cuda_copy_spans(s, &a.p.layout, &b.p.layout, &x, 1, &t, why, sizeof why);
    CHECK(r == KVX_ERR_OUT_OF_RANGE, "a span whose rows wrap around");
    x.length = 64 * 30;
    x.src_pitch = 32;
    r = kvx_cuda_copy_spans(s, &a.p.layout, &b.p.layout, &x, 1, &t, why, sizeof why);
    CHECK(r == KVX_ERR_INVALID_ARGUMENT, "a pitch below the row length");
    CHECK_STR(why, "span 0: pitches 32 (source) and 64 (destination) must be at least the row "
                   "length 64 (rows would overlap)");
    x.src_pitch = 128;
    x.length = 64 * 30 + 1;
    r = kvx_cuda_copy_spans(s, &a.p.layout, &b.p.layout, &x, 1, &t, why, sizeof why);
    CHECK(r == KVX_ERR_INVALID_ARGUMENT, "a partial row");
    CHECK_STR(why, "span 0: length 1921 is not a whole number of 64-byte rows");
    x.length = 64 * 30;
    x.dst_buffer = 4;
    r = kvx_cuda_copy_spans(s, &a.p.layout, &b.p.layout, &x, 1, &t, why, sizeof why);
    CHECK(r == KVX_ERR_OUT_OF_RANGE, "a destination buffer the layout lacks");
    CHECK_STR(why, "span 0 names destination buffer 4; that layout has 4");
    f1 = ct_stats(&F);
    CHECK(f1.copies == f0.copies && f1.copies_2d == f0.copies_2d && f1.errors == f0.errors,
          "nothing was queued or tried by the refused calls");
    kvx_cuda_stream_destroy(s);
    rank_free(&a);
    rank_free(&b);
}

int main(int argc, char **argv) {
    char why[512];
    struct fakecuda_stats f;
    (void)argc;
    kt_name = "test_cuda_strided";
    setenv("FAKECUDA_DELAY_US", "20", 1); /* copies visibly take time */
    if (ct_fake_open(&F, argv[0], why, sizeof why) != 0) return kt_skip(why);
    check_tp2_to_4();
    check_tp4_to_2();
    check_refusals();
    f = ct_stats(&F);
    CHECK(f.live_dev_allocs == 0 && f.live_streams == 0 && f.ctx_refs == 0,
          "nothing left (%llu allocations, %llu streams, %llu context references)",
          (unsigned long long)f.live_dev_allocs, (unsigned long long)f.live_streams,
          (unsigned long long)f.ctx_refs);
    return kt_done();
}
#endif
