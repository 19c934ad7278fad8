/* kvx_cuda_copy_spans against the fake driver: a two-sided plan between
   two pools in "GPU" memory (scattered pages and consecutive runs, the same
   GPU and across GPUs) lands byte for byte, and nothing else is touched;
   copies are queued without waiting and completion tickets tell which
   submissions finished; batched and one-by-one paths; spans outside either
   layout are refused before anything is queued; driver errors, at queue time
   and on the device, come back with the driver's name; dma-buf export asks
   the driver for a page-aligned range and reports a driver without dma-buf
   support clearly. */
#define KVX_IMPLEMENTATION
#include "../../kvx_cuda.h"
#include "cuda_test.h"

#if !defined(KVX_WITH_CUDA)
int main(void) {
    kt_name = "test_cuda_spans";
    return kt_skip("built without KVX_WITH_CUDA (no CUDA toolkit headers at build time)");
}
#else

static ct_fake F;

#define NB 8
#define ITEM 4096u

/* Source pages get stream (b, i); destination pool starts zeroed. */
static void fill_pools(ct_pool *src, ct_pool *dst) {
    uint32_t b;
    for (b = 0; b < src->nb; b++) {
        ct_fill(F.view(src->bufs[b].base, src->bufs[b].length), src->bufs[b].length, 500 + b, 0);
        memset(F.view(dst->bufs[b].base, dst->bufs[b].length), 0, dst->bufs[b].length);
    }
}

/* Destination page dp[i] holds source page sp[i] (i in [lo, hi)) in every
   buffer; with `rest`, every other destination page is still zero. */
static int verify(ct_pool *src, ct_pool *dst, const int32_t *sp, const int32_t *dp, uint32_t lo,
                  uint32_t hi, int rest) {
    uint32_t b, i, p;
    int bad = 0;
    char *mark = (char *)calloc(dst->pages, 1);
    for (i = lo; i < hi; i++) mark[dp[i]] = 1;
    for (b = 0; b < src->nb; b++) {
        const char *d = (const char *)F.view(dst->bufs[b].base, dst->bufs[b].length);
        for (i = lo; i < hi; i++)
            if (ct_diff(d + (uint64_t)dp[i] * ITEM, ITEM, 500 + b, (uint64_t)sp[i] * ITEM) >= 0) bad++;
        if (rest)
            for (p = 0; p < dst->pages; p++) {
                uint32_t k;
                if (mark[p]) continue;
                for (k = 0; k < ITEM; k++)
                    if (d[(uint64_t)p * ITEM + k]) { bad++; break; }
            }
    }
    free(mark);
    return bad;
}

/* sp/dp: a run of 8 pages consecutive on both sides (one span per buffer),
   then scattered pages (n >= 8). */
static void make_pages(int32_t *sp, int32_t *dp, uint32_t n, uint32_t spool, uint32_t dpool,
                       uint64_t seed) {
    uint32_t i;
    for (i = 0; i < 8; i++) {
        sp[i] = (int32_t)(spool - 8 + i);
        dp[i] = (int32_t)(dpool - 8 + i);
    }
    ct_pages(sp + 8, n - 8, spool - 8, seed);
    ct_pages(dp + 8, n - 8, dpool - 8, seed + 1);
}

static void check_plan_copy(kvx_cuda *cu, int dst_device, const char *what) {
    ct_pool src, dst;
    kvx_plan plan;
    kvx_cuda_stream *s;
    int32_t sp[96], dp[96];
    uint32_t n = 96;
    uint64_t t1 = 0, t2 = 0, t3 = 0;
    int done = 1;
    char why[KVX_ERROR_MAX];
    struct fakecuda_stats f0, f1;
    kvx_result r;
    memset(&plan, 0, sizeof plan);
    if (ct_pool_alloc(cu, &src, NB, ITEM, 128, 0, why, sizeof why) ||
        ct_pool_alloc(cu, &dst, NB, ITEM, 160, dst_device, why, sizeof why)) {
        CHECK(0, "pools: %s", why);
        return;
    }
    fill_pools(&src, &dst);
    make_pages(sp, dp, n, 128, 160, 9);
    CHECK(kvx_plan_pages(&plan, &src.layout, sp, &dst.layout, dp, n) == KVX_OK, "plan: %s",
          plan.error);
    CHECK(plan.count < (size_t)n * NB, "%s: %zu spans for %u pages x %d buffers (runs merged)",
          what, plan.count, n, NB);
    CHECK(kvx_cuda_stream_create(cu, 0, &s, why, sizeof why) == KVX_OK, "stream: %s", why);
    if (!s) return;
    f0 = ct_stats(&F);
    /* the whole plan in three submissions, as chunked prefill would */
    {
        size_t a = plan.count / 3, b = 2 * plan.count / 3;
        r = kvx_cuda_copy_spans(s, &src.layout, &dst.layout, plan.spans, a, &t1, why, sizeof why);
        CHECK(r == KVX_OK && t1 == 1, "first submission queued: %s", why);
        CHECK(kvx_cuda_stream_done(s, t1, &done, why, sizeof why) == KVX_OK && done == 0,
              "%s: queued, not finished (the call did not wait)", what);
        r = kvx_cuda_copy_spans(s, &src.layout, &dst.layout, plan.spans + a, b - a, &t2, why,
                                sizeof why);
        CHECK(r == KVX_OK && t2 == 2, "second submission: %s", why);
        r = kvx_cuda_copy_spans(s, &src.layout, &dst.layout, plan.spans + b, plan.count - b, &t3,
                                why, sizeof why);
        CHECK(r == KVX_OK && t3 == 3, "third submission: %s", why);
    }
    CHECK(kvx_cuda_stream_wait(s, t2, why, sizeof why) == KVX_OK, "wait for ticket 2: %s", why);
    CHECK(kvx_cuda_stream_done(s, t1, &done, why, sizeof why) == KVX_OK && done == 1,
          "ticket 1 is done once ticket 2 is");
    CHECK(kvx_cuda_stream_done(s, t2, &done, why, sizeof why) == KVX_OK && done == 1,
          "ticket 2 done");
    {
        uint64_t t0 = kvx_now_ns();
        int polls = 0;
        do {
            r = kvx_cuda_stream_done(s, 0, &done, why, sizeof why);
            polls++;
            if (!done) usleep(200);
        } while (r == KVX_OK && !done && kvx_now_ns() - t0 < 10000000000ull);
        CHECK(r == KVX_OK && done, "everything done, by polling (%d polls): %s", polls, why);
    }
    CHECK(verify(&src, &dst, sp, dp, 0, n, 1) == 0, "%s: every page landed, nothing else touched",
          what);
    f1 = ct_stats(&F);
    printf("%s: %zu spans, %llu driver batches, %llu single copies, %llu bytes\n", what,
           plan.count, (unsigned long long)(f1.batches - f0.batches),
           (unsigned long long)(f1.async_calls - f0.async_calls),
           (unsigned long long)(f1.bytes_d2d - f0.bytes_d2d));
    CHECK(f1.bytes_d2d - f0.bytes_d2d == plan.total_bytes, "the driver moved exactly the plan");
    CHECK(kvx_cuda_stream_done(s, 4, &done, why, sizeof why) == KVX_ERR_INVALID_ARGUMENT,
          "a ticket never issued");
    CHECK_STR(why, "ticket 4 was never issued");
    CHECK(kvx_cuda_stream_wait(s, 0, why, sizeof why) == KVX_OK, "wait all");
    /* the same request as a compact plan (one run list for every buffer),
       through kvx_cuda_copy_plan: spans computed as they are queued */
    {
        kvx_plan cp;
        uint64_t t4 = 9;
        memset(&cp, 0, sizeof cp);
        cp.compact = 1;
        fill_pools(&src, &dst);
        CHECK(kvx_plan_pages(&cp, &src.layout, sp, &dst.layout, dp, n) == KVX_OK &&
                  cp.paged == cp.count && cp.count == plan.count && !cp.spans,
              "%s: compact plan of %zu spans (%s)", what, cp.count, cp.error);
        f0 = ct_stats(&F);
        r = kvx_cuda_copy_plan(s, &src.layout, &dst.layout, &cp, &t4, why, sizeof why);
        CHECK(r == KVX_OK && t4 == 4, "%s: compact plan queued as ticket %llu: %s", what,
              (unsigned long long)t4, why);
        CHECK(kvx_cuda_stream_wait(s, t4, why, sizeof why) == KVX_OK, "compact plan done: %s", why);
        CHECK(verify(&src, &dst, sp, dp, 0, n, 1) == 0,
              "%s: compact plan: every page landed, nothing else touched", what);
        f1 = ct_stats(&F);
        CHECK(f1.bytes_d2d - f0.bytes_d2d == cp.total_bytes, "%s: the driver moved exactly the "
              "compact plan (%llu of %llu bytes)", what,
              (unsigned long long)(f1.bytes_d2d - f0.bytes_d2d), (unsigned long long)cp.total_bytes);
        t4 = 9;
        CHECK(kvx_cuda_copy_plan(s, &src.layout, &dst.layout, NULL, &t4, why, sizeof why) ==
                  KVX_ERR_INVALID_ARGUMENT && t4 == 0, "a NULL plan is refused");
        CHECK_STR(why, "NULL plan");
        {   /* counts that disagree are refused before a span is read */
            size_t keep = cp.paged, nruns = cp.nruns;
            cp.paged = keep + 1;
            CHECK(kvx_cuda_copy_plan(s, &src.layout, &dst.layout, &cp, &t4, why, sizeof why) ==
                      KVX_ERR_INVALID_ARGUMENT && t4 == 0, "paged beyond nbufs x nruns is refused");
            CHECK_STR(why, "the plan is inconsistent");
            cp.paged = keep;
            cp.nruns = cp.runs_cap + 1;
            CHECK(kvx_cuda_copy_plan(s, &src.layout, &dst.layout, &cp, &t4, why, sizeof why) ==
                      KVX_ERR_INVALID_ARGUMENT, "runs beyond their capacity are refused");
            cp.nruns = nruns;
            cp.count = cp.paged + 1; /* one more span, and no span storage */
            CHECK(kvx_cuda_copy_plan(s, &src.layout, &dst.layout, &cp, &t4, why, sizeof why) ==
                      KVX_ERR_INVALID_ARGUMENT, "a span beyond the computed ones with no storage");
            cp.count = cp.paged;
        }
        kvx_plan_free(&cp);
    }
    kvx_cuda_stream_destroy(s);
    kvx_plan_free(&plan);
    ct_pool_free(cu, &src);
    ct_pool_free(cu, &dst);
}

static void check_refusals(kvx_cuda *cu) {
    ct_pool src, dst;
    kvx_cuda_stream *s = NULL;
    kvx_span sp[3];
    char why[KVX_ERROR_MAX];
    uint64_t t = 9;
    int done = 0;
    struct fakecuda_stats f0, f1;
    kvx_result r;
    if (ct_pool_alloc(cu, &src, 2, ITEM, 8, 0, why, sizeof why) ||
        ct_pool_alloc(cu, &dst, 2, ITEM, 4, 0, why, sizeof why) ||
        kvx_cuda_stream_create(cu, 0, &s, why, sizeof why) != KVX_OK) {
        CHECK(0, "setup: %s", why);
        return;
    }
    memset(sp, 0, sizeof sp);
    sp[0].buffer = 0; sp[0].src_offset = 0; sp[0].dst_offset = 0; sp[0].length = ITEM;
    sp[1].buffer = 1; sp[1].src_offset = 7 * ITEM; sp[1].dst_offset = 3 * ITEM; sp[1].length = ITEM;
    sp[2].buffer = 1; sp[2].src_offset = 0; sp[2].dst_offset = 3 * ITEM + 1; sp[2].length = ITEM;
    sp[0].dst_buffer = 0; sp[1].dst_buffer = 1; sp[2].dst_buffer = 1;
    f0 = ct_stats(&F);
    r = kvx_cuda_copy_spans(s, &src.layout, &dst.layout, sp, 3, &t, why, sizeof why);
    CHECK(r == KVX_ERR_OUT_OF_RANGE && t == 0, "a span past the destination buffer");
    CHECK_STR(why, "span 2 (destination buffer 1, offset 12289, length 4096) leaves that "
                   "buffer (16384 bytes)");
    sp[2].dst_offset = 0;
    sp[2].src_offset = 8 * ITEM;
    r = kvx_cuda_copy_spans(s, &src.layout, &dst.layout, sp, 3, &t, why, sizeof why);
    CHECK(r == KVX_ERR_OUT_OF_RANGE, "a span past the source buffer");
    CHECK_STR(why, "span 2 (source buffer 1, offset 32768, length 4096) leaves that buffer");
    sp[2].src_offset = ~0ull - 10; /* offset + length would wrap */
    r = kvx_cuda_copy_spans(s, &src.layout, &dst.layout, sp, 3, &t, why, sizeof why);
    CHECK(r == KVX_ERR_OUT_OF_RANGE, "an offset that wraps around");
    sp[2].src_offset = 0;
    sp[2].buffer = 2;
    r = kvx_cuda_copy_spans(s, &src.layout, &dst.layout, sp, 3, &t, why, sizeof why);
    CHECK(r == KVX_ERR_OUT_OF_RANGE, "a buffer the layouts do not have");
    CHECK_STR(why, "span 2 names source buffer 2; that layout has 2");
    sp[2].buffer = 1;
    sp[2].dst_buffer = 2;
    r = kvx_cuda_copy_spans(s, &src.layout, &dst.layout, sp, 3, &t, why, sizeof why);
    CHECK(r == KVX_ERR_OUT_OF_RANGE, "a destination buffer the layout does not have");
    CHECK_STR(why, "span 2 names destination buffer 2; that layout has 2");
    sp[2].buffer = sp[2].dst_buffer = 0;
    sp[2].kind = KVX_SPAN_AUX; /* aux rows are host memory: never a device copy */
    r = kvx_cuda_copy_spans(s, &src.layout, &dst.layout, sp, 3, &t, why, sizeof why);
    CHECK(r == KVX_ERR_INVALID_ARGUMENT, "an aux span: %d", (int)r);
    CHECK_STR(why, "span 2 is of kind 1: only page and state spans are copied on the GPU");
    sp[2].kind = KVX_SPAN_STATE; /* checked against the state buffers: these layouts have none */
    r = kvx_cuda_copy_spans(s, &src.layout, &dst.layout, sp, 3, &t, why, sizeof why);
    CHECK(r == KVX_ERR_OUT_OF_RANGE, "a state span where the layouts have no state buffers");
    CHECK_STR(why, "span 2 names source state buffer 0; that layout has 0");
    {   /* the KV buffers as state buffers: a state span past the destination's */
        kvx_layout ss = src.layout, ds = dst.layout;
        ss.state = ss.buffers;
        ss.num_state = ss.num_buffers;
        ds.state = ds.buffers;
        ds.num_state = ds.num_buffers;
        sp[2].dst_offset = 4 * ITEM;
        r = kvx_cuda_copy_spans(s, &ss, &ds, sp, 3, &t, why, sizeof why);
        CHECK(r == KVX_ERR_OUT_OF_RANGE, "a state span past the destination state buffer");
        CHECK_STR(why, "span 2 (destination buffer 0, offset 16384, length 4096) leaves that "
                       "buffer (16384 bytes)");
        sp[2].dst_offset = 0;
    }
    sp[2].kind = KVX_SPAN_PAGES;
    f1 = ct_stats(&F);
    CHECK(f1.copies == f0.copies, "nothing was queued by refused calls");
    CHECK(kvx_cuda_copy_spans(s, NULL, &dst.layout, sp, 1, &t, why, sizeof why) ==
              KVX_ERR_INVALID_ARGUMENT, "NULL layout");

    /* an empty submission still gets a ticket */
    CHECK(kvx_cuda_copy_spans(s, &src.layout, &dst.layout, sp, 0, &t, why, sizeof why) == KVX_OK &&
              t == 1, "an empty submission: ticket %llu", (unsigned long long)t);
    CHECK(kvx_cuda_stream_wait(s, t, why, sizeof why) == KVX_OK, "and it completes");

    /* a driver error when queueing: nothing of the call keeps running */
    sp[2].buffer = sp[2].dst_buffer = 1;
    F.inject("cuMemcpyBatchAsync_v2", CUDA_ERROR_INVALID_VALUE, 0);
    r = kvx_cuda_copy_spans(s, &src.layout, &dst.layout, sp, 3, &t, why, sizeof why);
    CHECK(r == KVX_ERR_TRANSPORT && t == 0, "queueing failed");
    CHECK_STR(why, "cuMemcpyBatchAsync_v2 of 3 copies on GPU 0");
    CHECK_STR(why, "CUDA_ERROR_INVALID_VALUE");
    r = kvx_cuda_copy_spans(s, &src.layout, &dst.layout, sp, 3, &t, why, sizeof why);
    CHECK(r == KVX_OK && t == 2, "the stream is still usable: %s", why);
    CHECK(kvx_cuda_stream_wait(s, t, why, sizeof why) == KVX_OK, "wait: %s", why);

    /* a copy that fails on the device shows up when asking about it */
    F.inject("async", CUDA_ERROR_ILLEGAL_ADDRESS, 1);
    r = kvx_cuda_copy_spans(s, &src.layout, &dst.layout, sp, 3, &t, why, sizeof why);
    CHECK(r == KVX_OK, "queued");
    r = kvx_cuda_stream_wait(s, t, why, sizeof why);
    CHECK(r == KVX_ERR_TRANSPORT, "the device error comes back from the wait");
    CHECK_STR(why, "copies of submission 3 on GPU 0 failed: CUDA_ERROR_ILLEGAL_ADDRESS");
    r = kvx_cuda_stream_done(s, t, &done, why, sizeof why);
    CHECK(r == KVX_ERR_TRANSPORT && done == 0, "and from done");
    kvx_cuda_stream_destroy(s);
    F.inject("", 0, 0);

    /* streams of a device that does not exist */
    CHECK(kvx_cuda_stream_create(cu, 7, &s, why, sizeof why) == KVX_ERR_INVALID_ARGUMENT && !s,
          "stream on GPU 7");
    CHECK_STR(why, "GPU 7 does not exist");
    ct_pool_free(cu, &src);
    ct_pool_free(cu, &dst);
}

static void check_dmabuf(kvx_cuda *cu) {
    char why[KVX_ERROR_MAX], *d = NULL;
    int fd = 7;
    uint64_t off = 7;
    long page = sysconf(_SC_PAGESIZE);
    struct fakecuda_stats f;
    kvx_result r;
    if (kvx_cuda_alloc(cu, 0, 4 * (size_t)page, (void **)&d, why, sizeof why) != KVX_OK) {
        CHECK(0, "alloc: %s", why);
        return;
    }
    unsetenv("FAKECUDA_DMABUF");
    r = kvx_cuda_dmabuf_fd(cu, 0, d + 100, 5000, &fd, &off, why, sizeof why);
    CHECK(r == KVX_ERR_TRANSPORT && fd == -1, "a device without dma-buf support");
    CHECK_STR(why, "GPU 0 does not support dma-buf (CU_DEVICE_ATTRIBUTE_DMA_BUF_SUPPORTED is 0)");
    CHECK_STR(why, "nvidia-peermem");
    printf("dma-buf: %s\n", why);
    setenv("FAKECUDA_DMABUF", "1", 1);
    r = kvx_cuda_dmabuf_fd(cu, 0, d + 100, 5000, &fd, &off, why, sizeof why);
    f = ct_stats(&F);
    CHECK(r == KVX_ERR_TRANSPORT && fd == -1, "a driver that cannot export this range");
    CHECK_STR(why, "cuMemGetHandleForAddressRange(dma-buf, ");
    CHECK_STR(why, "CUDA_ERROR_NOT_SUPPORTED");
    CHECK(f.dmabuf_calls == 1 && f.dmabuf_last_ptr == (uint64_t)(uintptr_t)d &&
              f.dmabuf_last_size == (uint64_t)(((100 + 5000) + page - 1) / page * page),
          "the range asked for is rounded out to pages (0x%llx + %llu)",
          (unsigned long long)f.dmabuf_last_ptr, (unsigned long long)f.dmabuf_last_size);
    r = kvx_cuda_dmabuf_fd(cu, 0, d + page, 3 * (size_t)page + 1, &fd, &off, why, sizeof why);
    CHECK(r == KVX_ERR_OUT_OF_RANGE, "a range that leaves its allocation");
    CHECK_STR(why, "leaves its allocation");
    r = kvx_cuda_dmabuf_fd(cu, 0, d, 0, &fd, &off, why, sizeof why);
    CHECK(r == KVX_ERR_INVALID_ARGUMENT, "length 0");
    unsetenv("FAKECUDA_DMABUF");
    kvx_cuda_free(cu, 0, d);
}

int main(int argc, char **argv) {
    char why[512];
    kvx_cuda *cu = NULL, *cu1 = NULL;
    kvx_cuda_desc d;
    struct fakecuda_stats f0, f1;
    (void)argc;
    kt_name = "test_cuda_spans";
    setenv("FAKECUDA_DEVICES", "2", 1);
    setenv("FAKECUDA_DELAY_US", "100", 1); /* copies visibly take time */
    if (ct_fake_open(&F, argv[0], why, sizeof why) != 0) return kt_skip(why);
    memset(&d, 0, sizeof d);
    d.logger.level = KVX_LOG_ERROR;
    if (kvx_cuda_create(&d, &cu, why, sizeof why) != KVX_OK) {
        CHECK(0, "create: %s", why);
        return kt_done();
    }
    d.batch = KVX_ZERO;
    if (kvx_cuda_create(&d, &cu1, why, sizeof why) != KVX_OK) {
        CHECK(0, "create: %s", why);
        return kt_done();
    }
    f0 = ct_stats(&F);
    check_plan_copy(cu, 0, "same GPU, batched");
    f1 = ct_stats(&F);
    CHECK(f1.batches > f0.batches && f1.async_calls == f0.async_calls, "batched path used");
    f0 = f1;
    check_plan_copy(cu1, 0, "same GPU, one by one");
    f1 = ct_stats(&F);
    CHECK(f1.batches == f0.batches && f1.async_calls > f0.async_calls, "one-by-one path used");
    check_plan_copy(cu, 1, "GPU 0 -> GPU 1");
    check_refusals(cu);
    check_dmabuf(cu);
    kvx_cuda_destroy(cu);
    kvx_cuda_destroy(cu1);
    f1 = ct_stats(&F);
    CHECK(f1.live_dev_allocs == 0 && f1.live_streams == 0 && f1.live_events == 0 &&
              f1.ctx_refs == 0, "nothing left (%llu allocations, %llu streams, %llu events, %llu "
              "context references)", (unsigned long long)f1.live_dev_allocs,
              (unsigned long long)f1.live_streams, (unsigned long long)f1.live_events,
              (unsigned long long)f1.ctx_refs);
    return kt_done();
}
#endif
