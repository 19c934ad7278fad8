/* GPU KV buffers for the rdma transport: kvx_cuda_rdma_install feeds
   kvx_rdma.h's dma-buf hook from kvx_cuda_dmabuf_fd. Runs against the fake
   CUDA driver and softverbs, neither of which has dma-buf: what is checked
   is the seam and the sentences an engine author reads, not a registration
   (that needs a GPU and an RDMA NIC). */
#if defined(__has_include)
#if __has_include(<infiniband/verbs.h>)
#define KVX_WITH_RDMA
#endif
#endif
#define KVX_IMPLEMENTATION
#include "../../kvx_cuda.h"
#include "cuda_test.h"

#if !defined(KVX_WITH_CUDA) || !defined(KVX_WITH_RDMA)
int main(void) {
    kt_name = "test_cuda_rdma";
    return kt_skip("needs both the CUDA toolkit headers and the rdma-core headers at build time");
}
#else
static int find_softverbs(const char *argv0, char *out, size_t n) {
    const char *slash = strrchr(argv0, '/');
    ct_fmt(out, n, "%.*s/libsoftverbs.so", slash ? (int)(slash - argv0) : 1, slash ? argv0 : ".");
    if (ct_exists(out)) return 0;
    ct_fmt(out, n, "tests/softverbs/libsoftverbs.so");
    return ct_exists(out) ? 0 : -1;
}

static kvx_result rdma_engine(ct_pool *p, kvx_mem_ops *ops, char *why, size_t wl) {
    kvx_engine_desc d;
    kvx_engine *e = NULL;
    kvx_result r;
    memset(&d, 0, sizeof d);
    d.role = KVX_ROLE_DECODE;
    d.transport = "rdma";
    d.layout = p->layout;
    d.mem = *ops;
    d.logger.level = KVX_LOG_ERROR;
    r = kvx_engine_create(&d, &e, why, wl);
    kvx_engine_destroy(e);
    return r;
}

int main(int argc, char **argv) {
    ct_fake fake;
    char why[512], sv[4096];
    kvx_mem_ops ops;
    kvx_cuda_desc cd;
    kvx_cuda *cu;
    ct_pool pool;
    kvx_result r;
    (void)argc;
    kt_name = "test_cuda_rdma";
    if (ct_fake_open(&fake, argv[0], why, sizeof why)) return kt_skip(why);
    if (find_softverbs(argv[0], sv, sizeof sv)) return kt_skip("libsoftverbs.so not built");
    setenv("KVX_IBVERBS_LIBRARY", sv, 1);
    kvx_rdma_register();
    memset(&cd, 0, sizeof cd);
    CHECK(kvx_cuda_mem_ops(&ops, &cd, why, sizeof why) == KVX_OK, "mem ops: %s", why);
    cu = kvx_cuda_from_mem_ops(&ops);
    CHECK(cu && ct_pool_alloc(cu, &pool, 2, 4096, 8, 0, why, sizeof why) == 0, "pool: %s", why);
    if (!cu) return kt_done();

    r = rdma_engine(&pool, &ops, why, sizeof why);
    CHECK(r != KVX_OK, "GPU pool without the hook refused");
    CHECK_STR(why, "dma-buf");

    CHECK(kvx_cuda_rdma_install(cu) == KVX_OK, "hook installed");
    r = rdma_engine(&pool, &ops, why, sizeof why);
    CHECK(r != KVX_OK, "no dma-buf in this driver: refused, not registered wrongly");
    CHECK(strstr(why, "dma-buf") || strstr(why, "peermem"), "says why: %s", why);

    setenv("FAKECUDA_DMABUF", "1", 1); /* the driver claims support; softverbs still has none */
    r = rdma_engine(&pool, &ops, why, sizeof why);
    CHECK(r != KVX_OK, "a NIC without dma-buf: refused");
    CHECK(why[0] != 0, "with a sentence: %s", why);
    unsetenv("FAKECUDA_DMABUF");

    CHECK(kvx_cuda_rdma_install(NULL) == KVX_OK, "hook removed");
    r = rdma_engine(&pool, &ops, why, sizeof why);
    CHECK_STR(why, "kvx_cuda.h dma-buf support");
    ct_pool_free(cu, &pool);
    kvx_cuda_mem_ops_release(&ops);
    return kt_done();
}
#endif
