/* kvx_cuda.h on a real NVIDIA GPU. Runs only where libcuda.so.1 loads and a
   device exists; otherwise prints "SKIP: no NVIDIA GPU/driver on this
   machine" and exits 77. Everything is checked through the GPU itself
   (host -> GPU -> host round trips), nothing through a fake:
   - staging: 8 MiB to a GPU buffer and back in ~1000 shuffled pieces;
   - spans: a two-sided plan between two GPU pools lands, nothing else is
     touched (also GPU 0 -> GPU 1 when there are two);
   - layout checks against the driver;
   - CUDA IPC: a second process imports the pool, reads it, writes into it;
   - dma-buf: reports whether this machine can export GPU memory for RDMA.
   KVX_CUDA_LIBRARY is honoured, so the same program runs against the fake
   driver for a dry run (the fake's FAKECUDA_DELAY_US etc. apply). */
#define KVX_IMPLEMENTATION
#include "../../kvx_cuda.h"
#include "cuda_test.h"

#if !defined(KVX_WITH_CUDA)
int main(void) {
    kt_name = "test_cuda_gpu";
    return kt_skip("no NVIDIA GPU/driver on this machine (and built without KVX_WITH_CUDA)");
}
#else

#define NB 8
#define ITEM (32u * 1024u)
#define PAGES 96u
#define N 64u

static kvx_mem_ops ops;
static kvx_cuda *cu;

static int h2d(void *dev, int device, const void *host, size_t len) {
    kvx_copy c;
    char why[KVX_ERROR_MAX];
    c.buf_ptr = dev;
    c.host = (void *)host;
    c.len = len;
    c.device = device;
    if (ops.copy(ops.ctx, 0, &c, 1, why, sizeof why) == KVX_OK) return 0;
    printf("FAIL h2d: %s\n", why);
    return -1;
}

static int d2h(void *host, const void *dev, int device, size_t len) {
    kvx_copy c;
    char why[KVX_ERROR_MAX];
    c.buf_ptr = (void *)dev;
    c.host = host;
    c.len = len;
    c.device = device;
    if (ops.copy(ops.ctx, 1, &c, 1, why, sizeof why) == KVX_OK) return 0;
    printf("FAIL d2h: %s\n", why);
    return -1;
}

static void check_staging(void) {
    size_t len = 8u << 20, n = 1000, i, pos = 0;
    char *dev = NULL, *h1 = (char *)ops.host_alloc(ops.ctx, len), *h2 = (char *)ops.host_alloc(ops.ctx, len);
    char why[KVX_ERROR_MAX];
    kvx_copy *c = (kvx_copy *)malloc(n * sizeof *c);
    size_t *order = (size_t *)malloc(n * sizeof *order);
    uint64_t rng = 5;
    CHECK(h1 && h2, "pinned staging");
    CHECK(kvx_cuda_alloc(cu, 0, len, (void **)&dev, why, sizeof why) == KVX_OK, "alloc: %s", why);
    if (!h1 || !h2 || !dev) return;
    ct_fill(h1, len, 1, 0);
    CHECK(h2d(dev, 0, h1, len) == 0, "8 MiB to the GPU");
    memset(h2, 0, len);
    for (i = 0; i < n; i++) order[i] = i;
    for (i = n; i > 1; i--) {
        size_t j = (size_t)(ct_rand(&rng) % i), t = order[i - 1];
        order[i - 1] = order[j];
        order[j] = t;
    }
    for (i = 0; i < n; i++) { /* piece k covers [k * len / n, (k+1) * len / n) */
        size_t k = order[i], lo = k * len / n, hi = (k + 1) * len / n;
        c[i].buf_ptr = dev + lo;
        c[i].host = h2 + pos;
        c[i].len = hi - lo;
        c[i].device = 0;
        pos += hi - lo;
    }
    CHECK(ops.copy(ops.ctx, 1, c, n, why, sizeof why) == KVX_OK, "1000 pieces back: %s", why);
    pos = 0;
    for (i = 0; i < n; i++) {
        size_t k = order[i], lo = k * len / n, hi = (k + 1) * len / n;
        if (ct_diff(h2 + pos, hi - lo, 1, lo) >= 0) break;
        pos += hi - lo;
    }
    CHECK(i == n, "every piece came back byte for byte (first bad piece %zu)", i);
    kvx_cuda_free(cu, 0, dev);
    ops.host_free(ops.ctx, h1);
    ops.host_free(ops.ctx, h2);
    free(c);
    free(order);
}

/* pools: src buffer b page p = stream (600+b, p*ITEM); dst zero. */
static int fill_pool(ct_pool *p, int zero, uint64_t seed0) {
    char *h = (char *)ops.host_alloc(ops.ctx, (size_t)PAGES * ITEM);
    uint32_t b;
    int rc = 0;
    if (!h) return -1;
    for (b = 0; b < p->nb && !rc; b++) {
        if (zero) memset(h, 0, (size_t)PAGES * ITEM);
        else ct_fill(h, (size_t)PAGES * ITEM, seed0 + b, 0);
        rc = h2d(p->bufs[b].base, p->bufs[b].device, h, (size_t)PAGES * ITEM);
    }
    ops.host_free(ops.ctx, h);
    return rc;
}

static int verify_pool(ct_pool *dst, const int32_t *sp, const int32_t *dp, uint32_t n,
                       uint64_t seed0) {
    char *h = (char *)ops.host_alloc(ops.ctx, (size_t)PAGES * ITEM), *mark = (char *)calloc(PAGES, 1);
    uint32_t b, i, p;
    int bad = 0;
    if (!h || !mark) return 1;
    for (i = 0; i < n; i++) mark[dp[i]] = 1;
    for (b = 0; b < dst->nb; b++) {
        if (d2h(h, dst->bufs[b].base, dst->bufs[b].device, (size_t)PAGES * ITEM)) return 1;
        for (i = 0; i < n; i++)
            if (ct_diff(h + (uint64_t)dp[i] * ITEM, ITEM, seed0 + b, (uint64_t)sp[i] * ITEM) >= 0)
                bad++;
        for (p = 0; p < PAGES; p++)
            if (!mark[p]) {
                uint32_t k;
                for (k = 0; k < ITEM; k++)
                    if (h[(uint64_t)p * ITEM + k]) { bad++; break; }
            }
    }
    ops.host_free(ops.ctx, h);
    free(mark);
    return bad;
}

static void check_spans(int dst_device) {
    ct_pool src, dst;
    kvx_plan plan;
    kvx_cuda_stream *s = NULL;
    int32_t sp[N], dp[N];
    uint64_t t = 0;
    char why[KVX_ERROR_MAX];
    memset(&plan, 0, sizeof plan);
    if (ct_pool_alloc(cu, &src, NB, ITEM, PAGES, 0, why, sizeof why) ||
        ct_pool_alloc(cu, &dst, NB, ITEM, PAGES, dst_device, why, sizeof why)) {
        CHECK(0, "pools: %s", why);
        return;
    }
    CHECK(kvx_cuda_layout_check(cu, &src.layout, why, sizeof why) == KVX_OK, "layout: %s", why);
    CHECK(kvx_cuda_layout_check(cu, &dst.layout, why, sizeof why) == KVX_OK, "layout: %s", why);
    CHECK(fill_pool(&src, 0, 600) == 0 && fill_pool(&dst, 1, 0) == 0, "pools filled");
    ct_pages(sp, N, PAGES, 8);
    ct_pages(dp, N, PAGES, 9);
    CHECK(kvx_plan_pages(&plan, &src.layout, sp, &dst.layout, dp, N) == KVX_OK, "plan: %s",
          plan.error);
    CHECK(kvx_cuda_stream_create(cu, 0, &s, why, sizeof why) == KVX_OK, "stream: %s", why);
    if (s) {
        CHECK(kvx_cuda_copy_spans(s, &src.layout, &dst.layout, plan.spans, plan.count, &t, why,
                                  sizeof why) == KVX_OK, "queued: %s", why);
        CHECK(kvx_cuda_stream_wait(s, t, why, sizeof why) == KVX_OK, "done: %s", why);
        kvx_cuda_stream_destroy(s);
    }
    CHECK(verify_pool(&dst, sp, dp, N, 600) == 0, "GPU %d -> GPU %d: every page landed, nothing "
          "else touched", 0, dst_device);
    kvx_plan_free(&plan);
    ct_pool_free(cu, &src);
    ct_pool_free(cu, &dst);
}

static void check_dmabuf(void) {
    char why[KVX_ERROR_MAX];
    void *d = NULL;
    int fd = -1;
    uint64_t off = 0;
    kvx_result r;
    if (kvx_cuda_alloc(cu, 0, 4u << 20, &d, why, sizeof why) != KVX_OK) return;
    r = kvx_cuda_dmabuf_fd(cu, 0, (char *)d + 4096, 1u << 20, &fd, &off, why, sizeof why);
    if (r == KVX_OK) {
        CHECK(fd >= 0 && off == 4096, "dma-buf fd %d at offset %llu", fd,
              (unsigned long long)off);
        printf("dma-buf export works here (fd %d)\n", fd);
        close(fd);
    } else {
        CHECK(r == KVX_ERR_TRANSPORT, "dma-buf unsupported is KVX_ERR_TRANSPORT");
        printf("dma-buf export not available here: %s\n", why);
    }
    kvx_cuda_free(cu, 0, d);
}

/* A second process (forked before this one touched CUDA) imports the
   buffer, checks the bytes, writes its own into the second half. */
static int ipc_child(int in, int out) {
    uint8_t h[KVX_CUDA_IPC_HANDLE_BYTES], ok;
    uint64_t off = 0;
    void *base = NULL;
    char *buf, why[KVX_ERROR_MAX];
    size_t len = 1u << 20;
    kt_name = "ipc child";
    if (ct_read_full(in, h, sizeof h) || ct_read_full(in, &off, 8)) return 1;
    if (kvx_cuda_mem_ops(&ops, NULL, why, sizeof why) != KVX_OK) { CHECK(0, "%s", why); return 1; }
    cu = kvx_cuda_from_mem_ops(&ops);
    CHECK(kvx_cuda_ipc_import(cu, h, 0, &base, why, sizeof why) == KVX_OK, "import: %s", why);
    buf = (char *)ops.host_alloc(ops.ctx, len);
    if (base && buf) {
        CHECK(d2h(buf, (char *)base + off, 0, len / 2) == 0 && ct_diff(buf, len / 2, 77, 0) < 0,
              "the exporter's bytes through the import");
        ct_fill(buf, len / 2, 78, 0);
        CHECK(h2d((char *)base + off + len / 2, 0, buf, len / 2) == 0, "write through the import");
        CHECK(kvx_cuda_ipc_close(cu, 0, base, why, sizeof why) == KVX_OK, "close: %s", why);
    }
    ops.host_free(ops.ctx, buf);
    kvx_cuda_mem_ops_release(&ops);
    ok = kt_fail ? 0 : 1;
    ct_write_full(out, &ok, 1);
    return kt_done();
}

static void check_ipc(int to, int from, pid_t child) {
    uint8_t h[KVX_CUDA_IPC_HANDLE_BYTES], ok = 0;
    uint64_t off = 0, alen = 0;
    size_t len = 1u << 20;
    char *dev = NULL, *buf = (char *)ops.host_alloc(ops.ctx, len), why[KVX_ERROR_MAX];
    CHECK(kvx_cuda_alloc(cu, 0, 2 * len, (void **)&dev, why, sizeof why) == KVX_OK, "%s", why);
    if (!dev || !buf) return;
    ct_fill(buf, len / 2, 77, 0);
    memset(buf + len / 2, 0, len / 2);
    CHECK(h2d(dev + len, 0, buf, len) == 0, "fill");
    CHECK(kvx_cuda_ipc_export(cu, 0, dev + len, h, &off, &alen, why, sizeof why) == KVX_OK,
          "export: %s", why);
    CHECK(off == len && alen >= 2 * len, "offset %llu in an allocation of %llu",
          (unsigned long long)off, (unsigned long long)alen);
    ct_write_full(to, h, sizeof h);
    ct_write_full(to, &off, 8);
    CHECK(ct_read_full(from, &ok, 1) == 0 && ok == 1, "the other process checked and wrote");
    CHECK(ct_wait_child(child) == 0, "child exit 0");
    CHECK(d2h(buf, dev + len + len / 2, 0, len / 2) == 0 && ct_diff(buf, len / 2, 78, 0) < 0,
          "its bytes are in this process's GPU memory");
    kvx_cuda_free(cu, 0, dev);
    ops.host_free(ops.ctx, buf);
}

int main(int argc, char **argv) {
    char why[KVX_ERROR_MAX];
    kvx_cuda_info info;
    int a[2], b[2], to, from;
    pid_t child;
    (void)argc; (void)argv;
    kt_name = "test_cuda_gpu";
    if (pipe(a) || pipe(b)) return 1;
    fflush(stdout);
    child = fork(); /* before CUDA is touched: a forked child cannot use it otherwise */
    if (child == 0) {
        int rc;
        close(a[1]);
        close(b[0]);
        rc = ipc_child(a[0], b[1]);
        fflush(stdout);
        _exit(rc);
    }
    close(a[0]);
    close(b[1]);
    to = a[1];
    from = b[0];
    if (kvx_cuda_mem_ops(&ops, NULL, why, sizeof why) != KVX_OK) {
        printf("%s\n", why);
        close(to); /* the child sees EOF and leaves */
        ct_wait_child(child);
        return kt_skip("no NVIDIA GPU/driver on this machine");
    }
    cu = kvx_cuda_from_mem_ops(&ops);
    kvx_cuda_get_info(cu, &info);
    printf("driver %d.%d (%s), %d GPU%s, %s copies\n", info.driver_version / 1000,
           info.driver_version % 1000 / 10, info.library, info.device_count,
           info.device_count == 1 ? "" : "s", info.batch ? "batched" : "one-by-one");
    check_staging();
    check_spans(0);
    if (info.device_count > 1) check_spans(1);
    check_ipc(to, from, child);
    check_dmabuf();
    kvx_cuda_mem_ops_release(&ops);
    return kt_done();
}
#endif
