/* kvx_cuda_mem_ops against the fake driver (tests/fakecuda): pieces between
   "GPU" memory and pinned staging memory round-trip byte for byte, in many
   pieces, on several devices and threads, through each copy path
   (cuMemcpyBatchAsync_v2 on a 13.x driver, the 12.8 cuMemcpyBatchAsync ABI,
   one copy per piece on older drivers or with KVX_CUDA_BATCH=0); the
   caller's current context is left alone; the pinned pool stays within its
   bound and reuses blocks; driver errors come back with the driver's name
   for them; a CPU dereference of a device pointer faults; the file transport
   moves KV between two GPU pools; nothing leaks (contexts, streams, events,
   pinned memory).

   Built as test_cuda_staging, and as test_cuda_linked with
   -DKVX_NO_RUNTIME_LINKING (linked against the fake instead of dlopen). */
#define KVX_IMPLEMENTATION
#include "../../kvx_cuda.h"
#include "../../kvx_file.h"
#include "cuda_test.h"
#include <pthread.h>

#ifndef KT_NAME
#define KT_NAME "test_cuda_staging"
#endif

#if !defined(KVX_WITH_CUDA)
int main(void) {
    kt_name = KT_NAME;
    return kt_skip("built without KVX_WITH_CUDA (no CUDA toolkit headers at build time)");
}
#else

static ct_fake F;
static char root[256];

typedef CUresult (*pfn_retain)(CUcontext *, CUdevice);
typedef CUresult (*pfn_release)(CUdevice);
typedef CUresult (*pfn_push)(CUcontext);
typedef CUresult (*pfn_pop)(CUcontext *);
typedef CUresult (*pfn_cur)(CUcontext *);

/* Splits [0, len) into n consecutive segments (random sizes, some empty)
   and lays them out in the host buffer in a shuffled order. */
typedef struct seg {
    uint64_t dev_off, host_off, len;
} seg;

static void make_segments(seg *s, size_t n, uint64_t len, uint64_t *rng) {
    size_t i;
    uint64_t pos = 0, *cuts = (uint64_t *)malloc((n + 1) * sizeof *cuts);
    size_t *order = (size_t *)malloc(n * sizeof *order);
    cuts[0] = 0;
    cuts[n] = len;
    for (i = 1; i < n; i++) cuts[i] = ct_rand(rng) % (len + 1);
    for (i = 1; i < n; i++) { /* insertion sort: n is small */
        size_t j = i;
        while (j > 1 && cuts[j - 1] > cuts[j]) {
            uint64_t t = cuts[j - 1];
            cuts[j - 1] = cuts[j];
            cuts[j] = t;
            j--;
        }
    }
    for (i = 0; i < n; i++) order[i] = i;
    for (i = n; i > 1; i--) {
        size_t j = (size_t)(ct_rand(rng) % i), t = order[i - 1];
        order[i - 1] = order[j];
        order[j] = t;
    }
    for (i = 0; i < n; i++) {
        seg *x = &s[order[i]];
        x->dev_off = cuts[order[i]];
        x->len = cuts[order[i] + 1] - cuts[order[i]];
        x->host_off = pos;
        pos += x->len;
    }
    free(cuts);
    free(order);
}

/* Device bytes [0, len) -> host through n pieces, then checks every piece;
   host (refilled) -> a second device buffer, checked through the fake's
   view. Returns the number of failed checks. */
static int round_trip(const kvx_mem_ops *ops, int device, char *dev_a, char *dev_b, char *host,
                      uint64_t len, size_t n, uint64_t seed, uint64_t *rng) {
    seg *s = (seg *)malloc(n * sizeof *s);
    kvx_copy *c = (kvx_copy *)malloc(n * sizeof *c);
    char why[KVX_ERROR_MAX];
    size_t i;
    int bad = 0;
    kvx_result r;
    make_segments(s, n, len, rng);
    ct_fill(F.view(dev_a, len), len, seed, 0);
    memset(host, 0, len);
    for (i = 0; i < n; i++) {
        c[i].buf_ptr = dev_a + s[i].dev_off;
        c[i].host = host + s[i].host_off;
        c[i].len = s[i].len;
        c[i].device = device;
    }
    if ((r = ops->copy(ops->ctx, 1, c, n, why, sizeof why)) != KVX_OK) {
        printf("FAIL to host: %s\n", why);
        bad++;
    }
    for (i = 0; i < n && !bad; i++)
        if (ct_diff(host + s[i].host_off, s[i].len, seed, s[i].dev_off) >= 0) {
            printf("FAIL piece %zu (%llu bytes at %llu) differs after the copy to host\n", i,
                   (unsigned long long)s[i].len, (unsigned long long)s[i].dev_off);
            bad++;
        }
    for (i = 0; i < n; i++) {
        ct_fill(host + s[i].host_off, s[i].len, seed + 1, s[i].dev_off);
        c[i].buf_ptr = dev_b + s[i].dev_off;
    }
    if ((r = ops->copy(ops->ctx, 0, c, n, why, sizeof why)) != KVX_OK) {
        printf("FAIL to device: %s\n", why);
        bad++;
    } else if (ct_diff(F.view(dev_b, len), len, seed + 1, 0) >= 0) {
        printf("FAIL device bytes differ after the copy to device\n");
        bad++;
    }
    free(s);
    free(c);
    return bad;
}

static void check_basic(void) {
    kvx_mem_ops ops;
    kvx_cuda *cu;
    kvx_cuda_info info;
    kvx_cuda_stats st;
    struct fakecuda_stats f0, f1;
    char why[KVX_ERROR_MAX], *a, *b, *host;
    uint64_t rng = 1;
    uint64_t len = 1u << 20;
    CHECK(kvx_cuda_mem_ops(&ops, NULL, why, sizeof why) == KVX_OK, "mem ops: %s", why);
    cu = kvx_cuda_from_mem_ops(&ops);
    CHECK(cu && ops.copy && ops.host_alloc && ops.host_free, "filled");
    if (!cu) return;
    CHECK(kvx_cuda_get_info(cu, &info) == KVX_OK, "info");
    CHECK(info.driver_version == 13000 && info.device_count == 2 && info.batch == 1 &&
              info.dmabuf_entry == 1 && info.staging_bytes == (256u << 20),
          "info: driver %d, %d devices, batch %d", info.driver_version, info.device_count,
          info.batch);
    printf("driver %d, %d devices, library %s\n", info.driver_version, info.device_count,
           info.library);
    CHECK(kvx_cuda_alloc(cu, 0, len, (void **)&a, why, sizeof why) == KVX_OK, "alloc: %s", why);
    CHECK(kvx_cuda_alloc(cu, 0, len, (void **)&b, why, sizeof why) == KVX_OK, "alloc: %s", why);
    host = (char *)ops.host_alloc(ops.ctx, len);
    CHECK(host != NULL, "host_alloc");
    if (!a || !b || !host) return;
    f0 = ct_stats(&F);
    CHECK(F.depth() == 0, "no context current before");
    CHECK(round_trip(&ops, 0, a, b, host, len, 300, 11, &rng) == 0, "300 pieces round trip");
    CHECK(round_trip(&ops, 0, a, b, host, len, 1, 12, &rng) == 0, "1 piece round trip");
    CHECK(round_trip(&ops, 0, a, b, host, 4096, 4096, 13, &rng) == 0,
          "4096 pieces of about a byte");
    CHECK(round_trip(&ops, 0, a, b, host, len, 9000, 14, &rng) == 0,
          "9000 pieces (more than one driver batch)");
    CHECK(F.depth() == 0, "no context left current after");
    f1 = ct_stats(&F);
    CHECK(f1.batches > f0.batches && f1.batches_v1 == f0.batches_v1,
          "13.x driver: cuMemcpyBatchAsync_v2 used (%llu batches, %llu of the 12.8 ABI)",
          (unsigned long long)(f1.batches - f0.batches),
          (unsigned long long)(f1.batches_v1 - f0.batches_v1));
    CHECK(f1.async_calls - f0.async_calls <= 8, "single copies only for 1-piece batches");
    kvx_cuda_stats_get(cu, &st);
    CHECK(st.copy_calls == 8 && st.bytes_to_host == 2 * len + 4096 + len &&
              st.bytes_to_device == st.bytes_to_host,
          "kvx stats: %llu calls, %llu bytes to host", (unsigned long long)st.copy_calls,
          (unsigned long long)st.bytes_to_host);
    CHECK(f1.bytes_d2h - f0.bytes_d2h == st.bytes_to_host, "the driver moved the same bytes");

    /* the caller's own context stays current, also another device's */
    {
        void *p;
        pfn_retain retain; pfn_release release; pfn_push push; pfn_pop pop; pfn_cur cur;
        CUcontext c1 = NULL, now = NULL, popped = NULL;
        p = dlsym(F.h, "cuDevicePrimaryCtxRetain"); memcpy(&retain, &p, sizeof p);
        p = dlsym(F.h, "cuDevicePrimaryCtxRelease_v2"); memcpy(&release, &p, sizeof p);
        p = dlsym(F.h, "cuCtxPushCurrent_v2"); memcpy(&push, &p, sizeof p);
        p = dlsym(F.h, "cuCtxPopCurrent_v2"); memcpy(&pop, &p, sizeof p);
        p = dlsym(F.h, "cuCtxGetCurrent"); memcpy(&cur, &p, sizeof p);
        CHECK(retain(&c1, 1) == CUDA_SUCCESS && push(c1) == CUDA_SUCCESS, "caller's context");
        CHECK(round_trip(&ops, 0, a, b, host, 65536, 17, 15, &rng) == 0,
              "copies on GPU 0 while GPU 1's context is current");
        CHECK(cur(&now) == CUDA_SUCCESS && now == c1 && F.depth() == 1,
              "the caller's context is current again");
        pop(&popped);
        release(1);
    }

    /* pieces of two devices in one call: one wait per device run */
    {
        char *c1 = NULL, *h2 = (char *)ops.host_alloc(ops.ctx, 8192);
        kvx_copy c[4];
        int i;
        CHECK(kvx_cuda_alloc(cu, 1, 8192, (void **)&c1, why, sizeof why) == KVX_OK, "GPU 1: %s",
              why);
        if (c1 && h2) {
            ct_fill(F.view(a, 8192), 8192, 21, 0);
            ct_fill(F.view(c1, 8192), 8192, 22, 0);
            for (i = 0; i < 4; i++) {
                c[i].buf_ptr = (i & 1 ? c1 : a) + (i / 2) * 4096;
                c[i].host = h2 + i * 2048;
                c[i].len = 2048;
                c[i].device = i & 1;
            }
            CHECK(ops.copy(ops.ctx, 1, c, 4, why, sizeof why) == KVX_OK, "mixed: %s", why);
            CHECK(ct_diff(h2, 2048, 21, 0) < 0 && ct_diff(h2 + 2048, 2048, 22, 0) < 0 &&
                      ct_diff(h2 + 4096, 2048, 21, 4096) < 0 &&
                      ct_diff(h2 + 6144, 2048, 22, 4096) < 0,
                  "pieces of GPU 0 and GPU 1 landed");
        }
        kvx_cuda_free(cu, 1, c1);
        ops.host_free(ops.ctx, h2);
    }

    /* a copy on another thread, which has no context of its own */
    {
        struct fakecuda_stats s0 = ct_stats(&F), s1;
        CHECK(round_trip(&ops, 0, a, b, host, 65536, 5, 16, &rng) == 0, "again");
        s1 = ct_stats(&F);
        CHECK(s1.ctx_retains == s0.ctx_retains, "primary context retained once, not per call");
    }
    ops.host_free(ops.ctx, host);
    kvx_cuda_free(cu, 0, a);
    kvx_cuda_free(cu, 0, b);
    kvx_cuda_mem_ops_release(&ops);
    CHECK(ops.copy == NULL && ops.ctx == NULL, "released ops are zeroed");
}

/* ---- threads ------------------------------------------------------------------ */

typedef struct worker {
    const kvx_mem_ops *ops;
    kvx_cuda *cu;
    int id, iters, bad, device;
} worker;

static void *worker_main(void *arg) {
    worker *w = (worker *)arg;
    char why[KVX_ERROR_MAX], *a = NULL, *b = NULL, *host;
    uint64_t rng = 1000 + (uint64_t)w->id, len = 256 * 1024;
    int i;
    if (kvx_cuda_alloc(w->cu, w->device, len, (void **)&a, why, sizeof why) != KVX_OK ||
        kvx_cuda_alloc(w->cu, w->device, len, (void **)&b, why, sizeof why) != KVX_OK) {
        printf("FAIL worker %d: %s\n", w->id, why);
        w->bad++;
        return NULL;
    }
    host = (char *)w->ops->host_alloc(w->ops->ctx, len);
    if (!host) { w->bad++; return NULL; }
    for (i = 0; i < w->iters; i++)
        w->bad += round_trip(w->ops, w->device, a, b, host, len - (uint64_t)(i % 7) * 1000,
                             (size_t)(1 + ct_rand(&rng) % 200), (uint64_t)w->id * 1000 + (uint64_t)i,
                             &rng);
    w->ops->host_free(w->ops->ctx, host);
    kvx_cuda_free(w->cu, w->device, a);
    kvx_cuda_free(w->cu, w->device, b);
    return NULL;
}

static void check_threads(int no_batch) {
    kvx_mem_ops ops;
    kvx_cuda_desc d;
    pthread_t th[4];
    worker w[4];
    int i, n = kt_quick() ? 3 : 4, bad = 0;
    char why[KVX_ERROR_MAX];
    struct fakecuda_stats f0 = ct_stats(&F), f1;
    memset(&d, 0, sizeof d);
    d.batch = no_batch ? KVX_ZERO : 1;
    if (kvx_cuda_mem_ops(&ops, &d, why, sizeof why) != KVX_OK) {
        CHECK(0, "mem ops: %s", why);
        return;
    }
    for (i = 0; i < n; i++) {
        w[i].ops = &ops;
        w[i].cu = kvx_cuda_from_mem_ops(&ops);
        w[i].id = i;
        w[i].iters = kt_quick() ? 10 : 30;
        w[i].bad = 0;
        w[i].device = i & 1;
        pthread_create(&th[i], NULL, worker_main, &w[i]);
    }
    for (i = 0; i < n; i++) {
        pthread_join(th[i], NULL);
        bad += w[i].bad;
    }
    f1 = ct_stats(&F);
    CHECK(bad == 0, "%d threads x %d round trips (%s): %d failed", n, w[0].iters,
          no_batch ? "one copy per piece" : "batched", bad);
    if (no_batch)
        CHECK(f1.batches == f0.batches && f1.async_calls > f0.async_calls,
              "KVX_CUDA_BATCH=0 (desc.batch = KVX_ZERO): no batch call");
    kvx_cuda_mem_ops_release(&ops);
}

/* ---- the pinned pool ----------------------------------------------------------- */

static int log_lines;
static char log_last[512];
static void logger(void *u, kvx_log_level lvl, const char *sub, uint64_t room, const char *msg) {
    (void)u; (void)lvl; (void)room;
    log_lines++;
    snprintf(log_last, sizeof log_last, "%s: %s", sub, msg);
}

static void check_pool(void) {
    kvx_mem_ops ops;
    kvx_cuda_desc d;
    kvx_cuda_stats st;
    char why[KVX_ERROR_MAX];
    void *a, *b, *c, *c2, *e;
    struct fakecuda_stats f;
    uint64_t live0 = ct_stats(&F).live_host_bytes;
    memset(&d, 0, sizeof d);
    d.staging_bytes = 1u << 20;
    d.logger.func = logger;
    d.logger.level = KVX_LOG_WARN;
    if (kvx_cuda_mem_ops(&ops, &d, why, sizeof why) != KVX_OK) {
        CHECK(0, "mem ops: %s", why);
        return;
    }
    a = ops.host_alloc(ops.ctx, 600 * 1024);
    b = ops.host_alloc(ops.ctx, 600 * 1024);
    CHECK(a && !b, "second 600 KiB block passes the 1 MiB bound: NULL");
    CHECK(log_lines == 1, "one warning when the pool is full");
    CHECK_STR(log_last, "kvx.cuda: pinned staging pool full");
    ops.host_free(ops.ctx, a);
    b = ops.host_alloc(ops.ctx, 600 * 1024);
    CHECK(b == a, "a freed block is reused");
    ops.host_free(ops.ctx, b);
    c = ops.host_alloc(ops.ctx, 300 * 1024);
    CHECK(c == a, "a block up to twice the size is reused");
    c2 = ops.host_alloc(ops.ctx, 300 * 1024);
    CHECK(c2 && c2 != c, "a second block fits beside it");
    ops.host_free(ops.ctx, c);
    ops.host_free(ops.ctx, c2);
    e = ops.host_alloc(ops.ctx, 1u << 20);
    f = ct_stats(&F);
    CHECK(e != NULL && f.live_host_bytes - live0 == (1u << 20),
          "free blocks are given back to make room (%llu bytes pinned)",
          (unsigned long long)(f.live_host_bytes - live0));
    kvx_cuda_stats_get(kvx_cuda_from_mem_ops(&ops), &st);
    CHECK(st.staging_held == (1u << 20) && st.staging_peak <= (1u << 20) && st.staging_refused == 1,
          "held %llu, peak %llu, refused %llu", (unsigned long long)st.staging_held,
          (unsigned long long)st.staging_peak, (unsigned long long)st.staging_refused);
    log_lines = 0;
    ops.host_free(ops.ctx, (char *)e + 1);
    CHECK(log_lines == 1, "host_free of a pointer that is no block is logged, not fatal");
    CHECK_STR(log_last, "not a staging block in use");
    ops.host_free(ops.ctx, e);
    a = ops.host_alloc(ops.ctx, 2u << 20);
    CHECK(a == NULL, "bigger than the bound: NULL");
    F.inject("cuMemHostAlloc", CUDA_ERROR_OUT_OF_MEMORY, 0);
    a = ops.host_alloc(ops.ctx, 4096);
    CHECK(a == NULL && ct_stats(&F).errors > f.errors, "cuMemHostAlloc failing: NULL");
    CHECK_STR(log_last, "cuMemHostAlloc of 4096 bytes failed: CUDA_ERROR_OUT_OF_MEMORY");
    a = ops.host_alloc(ops.ctx, 4096);
    CHECK(a != NULL, "and the next one works");
    ops.host_free(ops.ctx, a);
    kvx_cuda_mem_ops_release(&ops);
    CHECK(ct_stats(&F).live_host_bytes == live0, "release gives every pinned byte back");
}

/* ---- errors ------------------------------------------------------------------- */

static void check_errors(void) {
    kvx_mem_ops ops, ops1;
    kvx_cuda_desc d;
    kvx_cuda *cu;
    char why[KVX_ERROR_MAX], *a = NULL, *host;
    kvx_copy c[8];
    int i;
    kvx_result r;
    struct fakecuda_stats f0, f1;
    memset(&d, 0, sizeof d);
    d.logger.level = KVX_LOG_ERROR;
    if (kvx_cuda_mem_ops(&ops, &d, why, sizeof why) != KVX_OK) {
        CHECK(0, "mem ops: %s", why);
        return;
    }
    d.batch = KVX_ZERO;
    if (kvx_cuda_mem_ops(&ops1, &d, why, sizeof why) != KVX_OK) {
        CHECK(0, "mem ops: %s", why);
        kvx_cuda_mem_ops_release(&ops);
        return;
    }
    cu = kvx_cuda_from_mem_ops(&ops);
    kvx_cuda_alloc(cu, 0, 65536, (void **)&a, why, sizeof why);
    host = (char *)ops.host_alloc(ops.ctx, 65536);
    if (!a || !host) { CHECK(0, "setup"); return; }
    for (i = 0; i < 8; i++) {
        c[i].buf_ptr = a + i * 8192;
        c[i].host = host + i * 8192;
        c[i].len = 8192;
        c[i].device = 0;
    }
    F.inject("cuMemcpyBatchAsync_v2", CUDA_ERROR_INVALID_VALUE, 0);
    r = ops.copy(ops.ctx, 1, c, 8, why, sizeof why);
    CHECK(r == KVX_ERR_TRANSPORT, "batch failure: %s", kvx_result_str(r));
    CHECK_STR(why, "cuMemcpyBatchAsync_v2 of 8 copies on GPU 0");
    CHECK_STR(why, "CUDA_ERROR_INVALID_VALUE (invalid argument)");
    printf("batch error: %s\n", why);

    F.inject("cuMemcpyDtoHAsync_v2", CUDA_ERROR_INVALID_VALUE, 3);
    r = ops1.copy(ops1.ctx, 1, c, 8, why, sizeof why);
    CHECK(r == KVX_ERR_TRANSPORT, "single copy failure");
    CHECK_STR(why, "cuMemcpyDtoHAsync_v2 on GPU 0 (copy 3 of 8, 8192 bytes");

    f0 = ct_stats(&F);
    F.inject("async", CUDA_ERROR_ILLEGAL_ADDRESS, 2);
    r = ops.copy(ops.ctx, 0, c, 8, why, sizeof why);
    CHECK(r == KVX_ERR_TRANSPORT, "a copy that fails on the device");
    CHECK_STR(why, "CUDA_ERROR_ILLEGAL_ADDRESS (an illegal memory access was encountered)");
    CHECK_STR(why, "cuStreamSynchronize");
    printf("device error: %s\n", why);
    r = ops.copy(ops.ctx, 0, c, 8, why, sizeof why);
    f1 = ct_stats(&F);
    CHECK(r == KVX_OK, "the next copy works (the failed stream was dropped): %s", why);
    CHECK(f1.live_streams <= f0.live_streams + 1, "failed stream destroyed");

    c[2].device = 5;
    r = ops.copy(ops.ctx, 1, c, 8, why, sizeof why);
    CHECK(r == KVX_ERR_INVALID_ARGUMENT, "device out of range");
    CHECK_STR(why, "GPU 5 does not exist: the driver sees 2 devices");
    c[2].device = 0;
    c[3].host = NULL;
    r = ops.copy(ops.ctx, 1, c, 8, why, sizeof why);
    CHECK(r == KVX_ERR_INVALID_ARGUMENT, "NULL host pointer");
    CHECK_STR(why, "piece 3 of 8 has a NULL host pointer");
    c[3].host = host + 3 * 8192;
    c[7].len = 8193; /* one byte past the allocation */
    r = ops1.copy(ops1.ctx, 1, c, 8, why, sizeof why);
    CHECK(r == KVX_ERR_TRANSPORT, "a piece past the allocation");
    CHECK_STR(why, "CUDA_ERROR_INVALID_VALUE");
    c[7].len = 8192;
    r = ops.copy(ops.ctx, 1, c, 0, why, sizeof why);
    CHECK(r == KVX_OK, "an empty batch");
    F.inject("cuDevicePrimaryCtxRetain", CUDA_ERROR_OUT_OF_MEMORY, 0);
    {
        kvx_cuda *fresh;
        void *p = NULL;
        CHECK(kvx_cuda_create(&d, &fresh, why, sizeof why) == KVX_OK, "create");
        r = kvx_cuda_alloc(fresh, 1, 4096, &p, why, sizeof why);
        CHECK(r == KVX_ERR_NO_MEMORY, "context retain failure maps to KVX_ERR_NO_MEMORY");
        CHECK_STR(why, "retaining the primary context of GPU 1 failed: CUDA_ERROR_OUT_OF_MEMORY");
        kvx_cuda_destroy(fresh);
    }
    F.inject("", 0, 0);

    /* a driver that refuses batches as not supported: one by one from then on */
    {
        kvx_mem_ops o2;
        kvx_cuda_info info;
        struct fakecuda_stats g0, g1;
        d.batch = 1;
        d.logger.func = logger;
        d.logger.level = KVX_LOG_WARN;
        log_lines = 0;
        if (kvx_cuda_mem_ops(&o2, &d, why, sizeof why) == KVX_OK) {
            for (i = 0; i < 8; i++) ct_fill(host + i * 8192, 8192, 31, (uint64_t)i * 8192);
            F.inject("cuMemcpyBatchAsync_v2", CUDA_ERROR_NOT_SUPPORTED, 0);
            g0 = ct_stats(&F);
            r = o2.copy(o2.ctx, 0, c, 8, why, sizeof why);
            g1 = ct_stats(&F);
            CHECK(r == KVX_OK, "batches not supported: the copy still works: %s", why);
            CHECK(ct_diff(F.view(a, 65536), 65536, 31, 0) < 0, "and its bytes landed");
            CHECK(g1.async_calls - g0.async_calls == 8, "as 8 single copies");
            kvx_cuda_get_info(kvx_cuda_from_mem_ops(&o2), &info);
            CHECK(info.batch == 0, "batches are off from then on");
            CHECK(log_lines == 1, "said once");
            CHECK_STR(log_last, "CUDA_ERROR_NOT_SUPPORTED");
            kvx_cuda_mem_ops_release(&o2);
        } else {
            CHECK(0, "mem ops: %s", why);
        }
        F.inject("", 0, 0);
    }
    ops.host_free(ops.ctx, host);
    kvx_cuda_free(cu, 0, a);
    kvx_cuda_mem_ops_release(&ops);
    kvx_cuda_mem_ops_release(&ops1);
}

/* ---- a CPU dereference of a device pointer faults ----------------------------- */

static void check_deref(void) {
    kvx_cuda *cu;
    char why[KVX_ERROR_MAX];
    void *d = NULL;
    pid_t pid;
    int rc;
    if (kvx_cuda_create(NULL, &cu, why, sizeof why) != KVX_OK) { CHECK(0, "%s", why); return; }
    kvx_cuda_alloc(cu, 0, 4096, &d, why, sizeof why);
    fflush(stdout);
    pid = fork();
    if (pid == 0) {
        volatile char *p = (volatile char *)d;
        int fd = open("/dev/null", O_WRONLY);
        if (fd >= 0) dup2(fd, 2); /* a sanitizer's report of the fault is expected */
        p[0] = 1;
        printf("survived\n");
        _exit(0);
    }
    rc = ct_wait_child(pid);
    CHECK(rc != 0, "a CPU store through a device pointer must fault (child exit %d)", rc);
    kvx_cuda_free(cu, 0, d);
    kvx_cuda_destroy(cu);
}

/* ---- the file transport between two GPU pools ---------------------------------- */

static kvx_poll wait_r(kvx_receiver *r) {
    uint64_t t0 = kvx_now_ns();
    while (kvx_receiver_poll(r) == KVX_POLL_TRANSFERRING && kvx_now_ns() - t0 < 30000000000ull)
        usleep(1000);
    return kvx_receiver_poll(r);
}

static void check_file_transport(void) {
    kvx_mem_ops ops;
    kvx_cuda *cu;
    kvx_cuda_stats st;
    ct_pool ps, pr;
    kvx_engine_desc d;
    kvx_engine *pe = NULL, *de = NULL;
    kvx_sender *s = NULL;
    kvx_receiver *r = NULL;
    kvx_room_desc rd;
    int32_t sp[40], dp[40];
    uint32_t i, b, n = 40;
    char dir[300], why[KVX_ERROR_MAX];
    int bad = 0;
    uint64_t bytes;
    if (kvx_cuda_mem_ops(&ops, NULL, why, sizeof why) != KVX_OK) { CHECK(0, "%s", why); return; }
    cu = kvx_cuda_from_mem_ops(&ops);
    if (ct_pool_alloc(cu, &ps, 8, 4096, 64, 0, why, sizeof why) ||
        ct_pool_alloc(cu, &pr, 8, 4096, 96, 1, why, sizeof why)) {
        CHECK(0, "pools: %s", why);
        return;
    }
    CHECK(kvx_cuda_layout_check(cu, &ps.layout, why, sizeof why) == KVX_OK, "layout: %s", why);
    CHECK(kvx_cuda_layout_check(cu, &pr.layout, why, sizeof why) == KVX_OK, "layout: %s", why);
    ct_pages(sp, n, 64, 5);
    ct_pages(dp, n, 96, 6);
    for (b = 0; b < 8; b++) {
        memset(F.view(pr.bufs[b].base, pr.bufs[b].length), 0, pr.bufs[b].length);
        for (i = 0; i < n; i++)
            ct_fill(F.view((char *)ps.bufs[b].base + (uint64_t)sp[i] * 4096, 4096), 4096,
                    100 + b, (uint64_t)i * 4096);
    }
    memset(ps.aux[0].base, 0x77, 64);
    snprintf(dir, sizeof dir, "%s/file", root);
    memset(&d, 0, sizeof d);
    d.transport = "file";
    d.file.dir = dir;
    d.mem = ops;
    d.logger.level = KVX_LOG_ERROR;
    d.role = KVX_ROLE_PREFILL;
    d.layout = ps.layout;
    CHECK(kvx_engine_create(&d, &pe, why, sizeof why) == KVX_OK, "prefill: %s", why);
    d.role = KVX_ROLE_DECODE;
    d.layout = pr.layout;
    CHECK(kvx_engine_create(&d, &de, why, sizeof why) == KVX_OK, "decode: %s", why);
    if (pe && de) {
        memset(&rd, 0, sizeof rd);
        rd.room = 99;
        kvx_receiver_create(de, &rd, &r);
        kvx_receiver_init(r, dp, n, 2);
        kvx_sender_create(pe, &rd, &s);
        kvx_sender_init(s, n, 0);
        kvx_sender_send(s, sp, 16); /* chunked prefill */
        kvx_sender_send(s, sp + 16, n - 16);
        CHECK(wait_r(r) == KVX_POLL_SUCCESS, "GPU pool -> file -> GPU pool: %s",
              kvx_receiver_error(r));
        for (b = 0; b < 8; b++)
            for (i = 0; i < n; i++)
                if (ct_diff(F.view((char *)pr.bufs[b].base + (uint64_t)dp[i] * 4096, 4096), 4096,
                            100 + b, (uint64_t)i * 4096) >= 0)
                    bad++;
        CHECK(bad == 0, "every page landed on the decode GPU byte for byte (%d bad)", bad);
        CHECK(((unsigned char *)pr.aux[0].base)[2 * 64] == 0x77, "aux row landed");
        kvx_sender_destroy(s);
        kvx_receiver_destroy(r);
    }
    kvx_engine_destroy(pe);
    kvx_engine_destroy(de);
    kvx_cuda_stats_get(cu, &st);
    bytes = (uint64_t)n * 8 * 4096;
    CHECK(st.bytes_to_host == bytes && st.bytes_to_device == bytes,
          "staged %llu bytes out and %llu in (want %llu)", (unsigned long long)st.bytes_to_host,
          (unsigned long long)st.bytes_to_device, (unsigned long long)bytes);

    /* layouts that lie about their memory */
    {
        kvx_buffer save = ps.bufs[3];
        static char hostmem[4096];
        ps.bufs[3].device = 1;
        CHECK(kvx_cuda_layout_check(cu, &ps.layout, why, sizeof why) == KVX_ERR_INVALID_ARGUMENT,
              "wrong device");
        CHECK_STR(why, "buffer 3");
        CHECK_STR(why, "is memory of GPU 0 but the layout says device 1");
        ps.bufs[3] = save;
        ps.bufs[3].length += 4096;
        CHECK(kvx_cuda_layout_check(cu, &ps.layout, why, sizeof why) == KVX_ERR_INVALID_ARGUMENT,
              "past the allocation");
        CHECK_STR(why, "runs 4096 bytes past the end of its allocation");
        ps.bufs[3] = save;
        ps.bufs[3].mem = KVX_MEM_HOST;
        CHECK(kvx_cuda_layout_check(cu, &ps.layout, why, sizeof why) == KVX_ERR_INVALID_ARGUMENT,
              "GPU memory declared host");
        CHECK_STR(why, "but the layout says KVX_MEM_HOST");
        ps.bufs[3] = save;
        ps.bufs[3].base = hostmem;
        ps.bufs[3].length = sizeof hostmem;
        CHECK(kvx_cuda_layout_check(cu, &ps.layout, why, sizeof why) == KVX_ERR_INVALID_ARGUMENT,
              "host memory declared GPU");
        CHECK_STR(why, "does not know it as device memory");
        ps.bufs[3] = save;
    }
    ct_pool_free(cu, &ps);
    ct_pool_free(cu, &pr);
    kvx_cuda_mem_ops_release(&ops);
}

/* ---- other driver versions, in a fresh process each ------------------------------ */

static int child_version(void) {
    kvx_mem_ops ops;
    kvx_cuda_info info;
    char why[KVX_ERROR_MAX], *a = NULL, *b = NULL, *host;
    uint64_t rng = 77;
    int v = atoi(getenv("FAKECUDA_DRIVER_VERSION"));
    struct fakecuda_stats f;
    if (kvx_cuda_mem_ops(&ops, NULL, why, sizeof why) != KVX_OK) {
        CHECK(0, "mem ops: %s", why);
        return kt_done();
    }
    kvx_cuda_get_info(kvx_cuda_from_mem_ops(&ops), &info);
    kvx_cuda_alloc(kvx_cuda_from_mem_ops(&ops), 0, 1u << 18, (void **)&a, why, sizeof why);
    kvx_cuda_alloc(kvx_cuda_from_mem_ops(&ops), 0, 1u << 18, (void **)&b, why, sizeof why);
    host = (char *)ops.host_alloc(ops.ctx, 1u << 18);
    CHECK(a && b && host, "setup");
    if (a && b && host)
        CHECK(round_trip(&ops, 0, a, b, host, 1u << 18, 100, 3, &rng) == 0, "round trip");
    f = ct_stats(&F);
#if defined(KVX_NO_RUNTIME_LINKING) && CUDA_VERSION >= 13000
    /* linked against 13.x headers: only the 13.0 entry point is linked */
    if (v >= 12080 && v < 13000) v = 12000;
#endif
    if (v >= 12080) {
        CHECK(info.batch == 1 && f.batches_v1 > 0 && f.batches_v1 == f.batches,
              "driver %d: the 12.8 cuMemcpyBatchAsync ABI (%llu of %llu batches)", v,
              (unsigned long long)f.batches_v1, (unsigned long long)f.batches);
        if (a && host) { /* that ABI says which copy failed */
            kvx_copy c[4];
            int i;
            for (i = 0; i < 4; i++) {
                c[i].buf_ptr = a + (size_t)i * 65536;
                c[i].host = host;
                c[i].len = i == 3 ? 65537 : 65536;
                c[i].device = 0;
            }
            CHECK(ops.copy(ops.ctx, 1, c, 4, why, sizeof why) == KVX_ERR_TRANSPORT, "past the end");
            CHECK_STR(why, "cuMemcpyBatchAsync of 4 copies on GPU 0 at copy 3 (65537 bytes");
        }
    } else {
        CHECK(info.batch == 0 && f.batches == 0 && f.async_calls >= 200,
              "driver %d: one cuMemcpy*Async per piece (%llu calls)", v,
              (unsigned long long)f.async_calls);
    }
    ops.host_free(ops.ctx, host);
    kvx_cuda_free(kvx_cuda_from_mem_ops(&ops), 0, a);
    kvx_cuda_free(kvx_cuda_from_mem_ops(&ops), 0, b);
    kvx_cuda_mem_ops_release(&ops);
    return kt_done();
}

static void check_versions(const char *argv0) {
    static const char *versions[] = {"12080", "12090", "12060", "11080"};
    size_t i;
    for (i = 0; i < sizeof versions / sizeof versions[0]; i++) {
        pid_t pid;
        int rc;
        fflush(stdout);
        pid = fork();
        if (pid == 0) {
            setenv("FAKECUDA_DRIVER_VERSION", versions[i], 1);
            execl(argv0, argv0, "--child-version", (char *)NULL);
            _exit(126);
        }
        rc = ct_wait_child(pid);
        CHECK(rc == 0, "driver version %s (child exit %d)", versions[i], rc);
    }
}

int main(int argc, char **argv) {
    char why[512], cmd[400];
    struct fakecuda_stats f;
    kt_name = KT_NAME;
    setenv("FAKECUDA_DEVICES", "2", 1);
    if (!getenv("FAKECUDA_DELAY_US")) setenv("FAKECUDA_DELAY_US", "2", 1); /* lazy copies */
    if (ct_fake_open(&F, argv[0], why, sizeof why) != 0) return kt_skip(why);
    if (argc > 1 && !strcmp(argv[1], "--child-version")) {
        kt_name = "child";
        return child_version();
    }
    printf("fake driver: %s\n", F.path);
    snprintf(root, sizeof root, "/tmp/kvx_test_%d_cudastage", (int)getpid());
    mkdir(root, 0755);
    kvx_file_register();
    check_versions(argv[0]);
    check_basic();
    check_threads(0);
    check_threads(1);
    check_pool();
    check_errors();
    check_deref();
    check_file_transport();
    f = ct_stats(&F);
    CHECK(f.live_dev_allocs == 0 && f.live_host_allocs == 0 && f.live_streams == 0 &&
              f.live_events == 0 && f.ctx_refs == 0,
          "nothing left: %llu device allocations, %llu pinned, %llu streams, %llu events, %llu "
          "context references", (unsigned long long)f.live_dev_allocs,
          (unsigned long long)f.live_host_allocs, (unsigned long long)f.live_streams,
          (unsigned long long)f.live_events, (unsigned long long)f.ctx_refs);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", root);
    if (system(cmd) != 0) printf("could not remove %s\n", root);
    return kt_done();
}
#endif
