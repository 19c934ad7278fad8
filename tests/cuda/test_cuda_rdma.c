/* GPU KV buffers for the rdma transport through desc.mem (issue 12): the
   dma-buf export op that kvx_cuda_mem_ops fills is the engine's own, not a
   process-wide hook. Runs against the fake CUDA driver (FAKECUDA_DMABUF=2:
   an allocation's memfd is exported as its dma-buf) and softverbs (whose
   ibv_reg_dmabuf_mr maps such an fd). In one process: a prefill and a
   decode engine whose desc.mem has the op register their GPU pools through
   ibv_reg_dmabuf_mr and move a room byte for byte, while an engine whose
   desc.mem lacks the op is refused, before and after them. Also the
   sentences for a driver or GPU without dma-buf. */
#if defined(__has_include)
#if __has_include(<infiniband/verbs.h>)
#define KVX_WITH_RDMA
#endif
#endif
#define KVX_IMPLEMENTATION
#include "../../kvx_rdma.h"
#include "../../kvx_cuda.h"
#include "../softverbs/softverbs.h"
#include "cuda_test.h"

#if !defined(KVX_WITH_CUDA) || !defined(KVX_WITH_RDMA)
int main(void) {
    kt_name = "test_cuda_rdma";
    return kt_skip("needs both the CUDA toolkit headers and the rdma-core headers at build time");
}
#else
#define NB 2        /* KV buffers per pool, one cuMemAlloc each */
#define ITEM 4096   /* bytes of one page in one buffer */
#define PAGES 8
#define N 3         /* pages in the room */

static int find_softverbs(const char *argv0, char *out, size_t n) {
    const char *slash = strrchr(argv0, '/');
    ct_fmt(out, n, "%.*s/libsoftverbs.so", slash ? (int)(slash - argv0) : 1, slash ? argv0 : ".");
    if (ct_exists(out)) return 0;
    ct_fmt(out, n, "tests/softverbs/libsoftverbs.so");
    return ct_exists(out) ? 0 : -1;
}

static kvx_engine *rdma_engine(kvx_role role, ct_pool *p, const kvx_mem_ops *ops, const char *addr,
                               kvx_result *r, char *why, size_t wl) {
    kvx_engine_desc d;
    kvx_engine *e = NULL;
    memset(&d, 0, sizeof d);
    d.role = role;
    d.transport = "rdma";
    d.layout = p->layout;
    d.mem = *ops;
    d.logger.level = getenv("KVX_TEST_VERBOSE") ? KVX_LOG_DEBUG : KVX_LOG_ERROR;
    d.boot.host = "127.0.0.1";
    d.boot.port = -1;
    d.bootstrap_addr = addr;
    why[0] = 0;
    *r = kvx_engine_create(&d, &e, why, wl);
    return e;
}

/* The engine without the op: refused with the sentence, nothing exported. */
static void bare_refused(const ct_fake *f, ct_pool *p, const kvx_mem_ops *bare, const char *when) {
    char why[KVX_ERROR_MAX];
    kvx_result r;
    uint64_t before = ct_stats(f).dmabuf_calls;
    kvx_engine *e = rdma_engine(KVX_ROLE_DECODE, p, bare, NULL, &r, why, sizeof why);
    CHECK(!e && r == KVX_ERR_INVALID_ARGUMENT, "%s: desc.mem without dmabuf_fd refused (%s)", when,
          why);
    CHECK_STR(why, "desc.mem");
    CHECK_STR(why, "kvx_cuda_mem_ops");
    CHECK(ct_stats(f).dmabuf_calls == before, "%s: nothing exported for it", when);
    kvx_engine_destroy(e);
}

/* Waits (bounded; the deadline is reached only on failure) for each side
   given to reach its state; 0 when one failed or did not get there. */
static int wait_done(kvx_sender *s, kvx_receiver *rc, kvx_poll want_s, kvx_poll want_r) {
    kvx_poll ps = s ? kvx_sender_wait(s, want_s, 60000) : want_s;
    kvx_poll pr = rc ? kvx_receiver_wait(rc, want_r, 60000) : want_r;
    return ps != KVX_POLL_FAILED && pr != KVX_POLL_FAILED && ps >= want_s && pr >= want_r;
}

/* One room of N pages (both KV buffers) and an aux row, prefill -> decode. */
static void transfer(const ct_fake *f, kvx_engine *pe, ct_pool *pp, kvx_engine *de, ct_pool *dp) {
    const int32_t sp[N] = {1, 6, 3}, dpg[N] = {7, 0, 4};
    kvx_room_desc rd;
    kvx_sender *s = NULL;
    kvx_receiver *rc = NULL;
    uint32_t b, i;
    int ok;
    for (b = 0; b < NB; b++) {
        ct_fill(f->view(pp->bufs[b].base, ITEM * PAGES), ITEM * PAGES, 11 + b, 0);
        memset(f->view(dp->bufs[b].base, ITEM * PAGES), 0, ITEM * PAGES);
    }
    ct_fill((char *)pp->aux[0].base + 64, 64, 99, 0);
    memset(&rd, 0, sizeof rd);
    rd.room = 77;
    CHECK(kvx_receiver_create(de, &rd, &rc) == KVX_OK && kvx_sender_create(pe, &rd, &s) == KVX_OK,
          "room opened");
    if (!s || !rc) goto out;
    ok = wait_done(NULL, rc, KVX_POLL_WAITING_FOR_INPUT, KVX_POLL_WAITING_FOR_INPUT) &&
         kvx_receiver_init(rc, dpg, N, 2) == KVX_OK &&
         wait_done(s, NULL, KVX_POLL_WAITING_FOR_INPUT, KVX_POLL_WAITING_FOR_INPUT) &&
         kvx_sender_init(s, N, 1) == KVX_OK && kvx_sender_send(s, sp, N) == KVX_OK &&
         wait_done(s, rc, KVX_POLL_SUCCESS, KVX_POLL_SUCCESS);
    CHECK(ok, "room done: receiver %s (%s), sender %s (%s)", kvx_poll_str(kvx_receiver_poll(rc)),
          kvx_receiver_error(rc), kvx_poll_str(kvx_sender_poll(s)), kvx_sender_error(s));
    for (b = 0; b < NB; b++) {
        const char *dst = (const char *)f->view(dp->bufs[b].base, ITEM * PAGES);
        long bad = 0;
        for (i = 0; i < PAGES; i++) {
            uint32_t k;
            for (k = 0; k < N && dpg[k] != (int32_t)i; k++) {}
            if (k < N) bad += ct_diff(dst + (size_t)i * ITEM, ITEM, 11 + b, (uint64_t)sp[k] * ITEM) != -1;
            else for (k = 0; k < ITEM; k++) bad += dst[(size_t)i * ITEM + k] != 0;
        }
        CHECK(bad == 0, "buffer %u: the room's pages arrived byte for byte, the others untouched", b);
    }
    CHECK(ct_diff((char *)dp->aux[0].base + 128, 64, 99, 0) == -1, "the aux row arrived");
out:
    kvx_sender_destroy(s);
    kvx_receiver_destroy(rc);
}

int main(int argc, char **argv) {
    ct_fake fake;
    char why[512], sv[4096], addr[64];
    kvx_mem_ops ops, bare;
    kvx_cuda_desc cd;
    kvx_cuda *cu;
    ct_pool pp, dp, xp;
    kvx_engine *pe = NULL, *de = NULL;
    kvx_result r;
    softverbs_stats_fn svstats;
    struct softverbs_stats st;
    void *svh, *sym;
    (void)argc;
    kt_name = "test_cuda_rdma";
    if (ct_fake_open(&fake, argv[0], why, sizeof why)) return kt_skip(why);
    if (find_softverbs(argv[0], sv, sizeof sv)) return kt_skip("libsoftverbs.so not built");
    setenv("KVX_IBVERBS_LIBRARY", sv, 1);
    { /* its own softverbs namespace: other tests may run beside it */
        char svdir[64];
        snprintf(svdir, sizeof svdir, "/tmp/kvx_test_%d_sv", (int)getpid());
        setenv("SOFTVERBS_DIR", svdir, 1);
    }
    svh = dlopen(sv, RTLD_NOW | RTLD_LOCAL);
    sym = svh ? dlsym(svh, "softverbs_stats") : NULL;
    memcpy(&svstats, &sym, sizeof sym);
    if (!svstats) return kt_skip("libsoftverbs.so has no softverbs_stats");
    kvx_rdma_register();
    memset(&cd, 0, sizeof cd);
    CHECK(kvx_cuda_mem_ops(&ops, &cd, why, sizeof why) == KVX_OK, "mem ops: %s", why);
    cu = kvx_cuda_from_mem_ops(&ops);
    CHECK(cu && ops.dmabuf_fd, "kvx_cuda_mem_ops fills dmabuf_fd");
    if (!cu) return kt_done();
    bare = ops;
    bare.dmabuf_fd = NULL; /* the same staging functions, no dma-buf export */
    CHECK(ct_pool_alloc(cu, &pp, NB, ITEM, PAGES, 0, why, sizeof why) == 0 &&
              ct_pool_alloc(cu, &dp, NB, ITEM, PAGES, 0, why, sizeof why) == 0 &&
              ct_pool_alloc(cu, &xp, NB, ITEM, PAGES, 0, why, sizeof why) == 0,
          "pools: %s", why);

    /* a driver or GPU without dma-buf: the engine with the op is refused in words */
    unsetenv("FAKECUDA_DMABUF");
    pe = rdma_engine(KVX_ROLE_PREFILL, &pp, &ops, NULL, &r, why, sizeof why);
    CHECK(!pe && r != KVX_OK, "a GPU without dma-buf: refused, not registered wrongly");
    CHECK(strstr(why, "dma-buf") && strstr(why, "peermem"), "says why: %s", why);
    setenv("FAKECUDA_DMABUF", "1", 1); /* the GPU claims support, the export fails */
    pe = rdma_engine(KVX_ROLE_PREFILL, &pp, &ops, NULL, &r, why, sizeof why);
    CHECK(!pe && strstr(why, "cuMemGetHandleForAddressRange"), "an export that fails: %s", why);

    /* dma-buf that works: two engines with the op, one without, side by side */
    setenv("FAKECUDA_DMABUF", "2", 1);
    bare_refused(&fake, &xp, &bare, "before the others");
    fake.reset();
    svstats(&st);
    uint64_t mrs0 = st.dmabuf_mrs;
    pe = rdma_engine(KVX_ROLE_PREFILL, &pp, &ops, NULL, &r, why, sizeof why);
    CHECK(pe != NULL, "prefill engine with the op: %s", why);
    if (!pe) goto done;
    ct_fmt(addr, sizeof addr, "127.0.0.1:%d", kvx_boot_engine_port(pe));
    bare_refused(&fake, &xp, &bare, "beside a prefill engine with the op");
    de = rdma_engine(KVX_ROLE_DECODE, &dp, &ops, addr, &r, why, sizeof why);
    CHECK(de != NULL, "decode engine with the op: %s", why);
    if (!de) goto done;
    bare_refused(&fake, &xp, &bare, "beside both");
    svstats(&st);
    CHECK(ct_stats(&fake).dmabuf_exports == 2 * NB && st.dmabuf_mrs - mrs0 >= 2 * NB,
          "every GPU buffer of both engines went through ibv_reg_dmabuf_mr (%llu exports, %llu "
          "dma-buf MRs)", (unsigned long long)ct_stats(&fake).dmabuf_exports,
          (unsigned long long)(st.dmabuf_mrs - mrs0));
    transfer(&fake, pe, &pp, de, &dp);
done:
    kvx_engine_destroy(de);
    kvx_engine_destroy(pe);
    unsetenv("FAKECUDA_DMABUF");
    ct_pool_free(cu, &pp);
    ct_pool_free(cu, &dp);
    ct_pool_free(cu, &xp);
    kvx_cuda_mem_ops_release(&ops);
    if (svh) dlclose(svh);
    return kt_done();
}
#endif
