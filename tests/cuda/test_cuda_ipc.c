/* CUDA IPC between processes, against the fake driver, as the intra-node
   `cuda` transport will use it: the decode process exports its KV pool (one
   allocation holding every buffer, so each export is the same handle at a
   different offset), the prefill process imports it, reads bytes the
   decode side left there, and writes a plan's spans into it with
   kvx_cuda_copy_spans; the decode side then finds every page in place and
   nothing else touched. In the other direction the decode side imports an
   allocation of a third process and reads its bytes. Importing one's own
   handle, a garbage handle, or the handle of a process that has exited fails
   with the driver's reason. */
#define KVX_IMPLEMENTATION
#include "../../kvx_cuda.h"
#include "cuda_test.h"

#if !defined(KVX_WITH_CUDA)
int main(void) {
    kt_name = "test_cuda_ipc";
    return kt_skip("built without KVX_WITH_CUDA (no CUDA toolkit headers at build time)");
}
#else

#define NB 8
#define PAGES 64u
#define ITEM 4096u
#define N 40u

static ct_fake F;

typedef struct wire_buf { /* what the decode side tells the prefill side per buffer */
    uint8_t handle[KVX_CUDA_IPC_HANDLE_BYTES];
    uint64_t offset, alloc_len, length, item_len;
    int64_t device; /* the exporter's GPU (same numbering on both sides here) */
} wire_buf;

/* ---- prefill side (child) ----------------------------------------------------- */

static int prefill_main(int in, int out) {
    kvx_mem_ops ops;
    kvx_cuda *cu;
    ct_pool src;
    kvx_buffer dbufs[NB];
    kvx_layout dst;
    wire_buf w[NB];
    int32_t sp[N], dp[N];
    void *imp[NB];
    kvx_plan plan;
    kvx_cuda_stream *s = NULL;
    char why[KVX_ERROR_MAX], *stage;
    uint8_t report;
    uint32_t b;
    uint64_t ticket = 0;
    int bad = 0;
    kt_name = "prefill child";
    memset(&plan, 0, sizeof plan);
    if (ct_read_full(in, w, sizeof w) || ct_read_full(in, sp, sizeof sp) ||
        ct_read_full(in, dp, sizeof dp)) {
        CHECK(0, "read the decode side's buffers");
        return 1;
    }
    if (kvx_cuda_mem_ops(&ops, NULL, why, sizeof why) != KVX_OK) {
        CHECK(0, "mem ops: %s", why);
        return 1;
    }
    cu = kvx_cuda_from_mem_ops(&ops);
    /* this side's pool on GPU 1; the peer's memory is imported there too */
    if (ct_pool_alloc(cu, &src, NB, ITEM, PAGES, 1, why, sizeof why)) {
        CHECK(0, "pool: %s", why);
        return 1;
    }
    for (b = 0; b < NB; b++)
        ct_fill(F.view(src.bufs[b].base, src.bufs[b].length), src.bufs[b].length, 700 + b, 0);
    memset(dbufs, 0, sizeof dbufs);
    for (b = 0; b < NB; b++) {
        kvx_result r = kvx_cuda_ipc_import(cu, w[b].handle, 1, &imp[b], why, sizeof why);
        CHECK(r == KVX_OK, "import buffer %u: %s", b, why);
        if (r != KVX_OK) return 1;
        CHECK(imp[b] == imp[0], "the same handle maps to the same base (reference counted)");
        CHECK(w[b].offset <= w[b].alloc_len && w[b].length <= w[b].alloc_len - w[b].offset,
              "the peer's buffer lies inside the allocation it exported");
        dbufs[b].base = (char *)imp[b] + w[b].offset;
        dbufs[b].length = w[b].length;
        dbufs[b].item_len = w[b].item_len;
        dbufs[b].mem = KVX_MEM_CUDA;
        dbufs[b].device = 1; /* the device it was imported into: the context kvx reaches it by */
    }
    CHECK(ct_stats(&F).live_ipc_maps == 1, "one mapping for the one allocation");
    CHECK(w[0].device == 0, "the peer says its pool is on its GPU 0");
    dst = src.layout;
    dst.buffers = dbufs;

    /* bytes the decode side left in pages 60..63 are visible here */
    stage = (char *)ops.host_alloc(ops.ctx, 4 * ITEM);
    for (b = 0; b < NB && stage; b++) {
        kvx_copy c;
        c.buf_ptr = (char *)dbufs[b].base + 60 * ITEM;
        c.host = stage;
        c.len = 4 * ITEM;
        c.device = 1;
        CHECK(ops.copy(ops.ctx, 1, &c, 1, why, sizeof why) == KVX_OK, "read peer: %s", why);
        if (ct_diff(stage, 4 * ITEM, 900 + b, 60 * ITEM) >= 0) bad++;
    }
    CHECK(stage && bad == 0, "the decode side's bytes read back through the import (%d bad)", bad);
    ops.host_free(ops.ctx, stage);

    /* the transfer: plan, queue, wait */
    CHECK(kvx_plan_pages(&plan, &src.layout, sp, &dst, dp, N) == KVX_OK, "plan: %s", plan.error);
    CHECK(kvx_cuda_stream_create(cu, 1, &s, why, sizeof why) == KVX_OK, "stream: %s", why);
    if (s) {
        CHECK(kvx_cuda_copy_spans(s, &src.layout, &dst, plan.spans, plan.count, &ticket, why,
                                  sizeof why) == KVX_OK, "copy spans: %s", why);
        CHECK(kvx_cuda_stream_wait(s, ticket, why, sizeof why) == KVX_OK, "wait: %s", why);
        kvx_cuda_stream_destroy(s);
    }
    for (b = 0; b < NB; b++)
        CHECK(kvx_cuda_ipc_close(cu, 1, imp[b], why, sizeof why) == KVX_OK, "close: %s", why);
    CHECK(ct_stats(&F).live_ipc_maps == 0, "the last close unmaps");
    CHECK(kvx_cuda_ipc_close(cu, 1, imp[0], why, sizeof why) == KVX_ERR_TRANSPORT,
          "closing once more fails");
    {
        uint8_t junk[KVX_CUDA_IPC_HANDLE_BYTES];
        void *p;
        memset(junk, 0xab, sizeof junk);
        CHECK(kvx_cuda_ipc_import(cu, junk, 1, &p, why, sizeof why) == KVX_ERR_TRANSPORT && !p,
              "a garbage handle");
        CHECK_STR(why, "cuIpcOpenMemHandle_v2 on GPU 1");
        CHECK_STR(why, "CUDA_ERROR_INVALID_HANDLE");
    }
    kvx_plan_free(&plan);
    ct_pool_free(cu, &src);
    kvx_cuda_mem_ops_release(&ops);
    report = kt_fail ? 0 : 1;
    ct_write_full(out, &report, 1);
    return kt_done();
}

/* ---- a third process: exports one allocation, lives until told ------------------ */

static int exporter_main(int in, int out) {
    kvx_cuda *cu;
    void *d = NULL;
    uint8_t h[KVX_CUDA_IPC_HANDLE_BYTES], go;
    uint64_t off = 0, len = 0;
    char why[KVX_ERROR_MAX];
    kt_name = "exporter child";
    if (kvx_cuda_create(NULL, &cu, why, sizeof why) != KVX_OK ||
        kvx_cuda_alloc(cu, 0, 3 * ITEM, &d, why, sizeof why) != KVX_OK) {
        CHECK(0, "%s", why);
        return 1;
    }
    ct_fill(F.view(d, 3 * ITEM), 3 * ITEM, 333, 0);
    CHECK(kvx_cuda_ipc_export(cu, 0, (char *)d + ITEM, h, &off, &len, why, sizeof why) == KVX_OK,
          "export: %s", why);
    CHECK(off == ITEM && len == 3 * ITEM, "offset %llu of %llu", (unsigned long long)off,
          (unsigned long long)len);
    ct_write_full(out, h, sizeof h);
    ct_write_full(out, &off, sizeof off);
    ct_read_full(in, &go, 1); /* until the decode side has read */
    kvx_cuda_free(cu, 0, d);
    kvx_cuda_destroy(cu);
    return kt_done();
}

/* ---- decode side (this process) -------------------------------------------------- */

static pid_t spawn(int (*fn)(int, int), int *to, int *from) {
    int a[2], b[2];
    pid_t pid;
    if (pipe(a) || pipe(b)) return -1;
    fflush(stdout);
    pid = fork();
    if (pid == 0) {
        int rc;
        close(a[1]);
        close(b[0]);
        rc = fn(a[0], b[1]);
        fflush(stdout);
        _exit(rc);
    }
    close(a[0]);
    close(b[1]);
    *to = a[1];
    *from = b[0];
    return pid;
}

int main(int argc, char **argv) {
    kvx_mem_ops ops;
    kvx_cuda *cu;
    char why[KVX_ERROR_MAX], *big = NULL, *stage;
    kvx_buffer bufs[NB];
    wire_buf w[NB];
    int32_t sp[N], dp[N];
    uint32_t b, i, p;
    int to_pre, from_pre, to_exp, from_exp, bad = 0;
    pid_t pre, exp;
    uint8_t report = 0, go = 1, h3[KVX_CUDA_IPC_HANDLE_BYTES];
    uint64_t off3 = 0;
    void *imp3 = NULL;
    (void)argc;
    kt_name = "test_cuda_ipc";
    setenv("FAKECUDA_DEVICES", "2", 1);
    if (ct_fake_open(&F, argv[0], why, sizeof why) != 0) return kt_skip(why);
    /* processes first: none may start after this one has threads */
    pre = spawn(prefill_main, &to_pre, &from_pre);
    exp = spawn(exporter_main, &to_exp, &from_exp);
    CHECK(pre > 0 && exp > 0, "fork");
    if (kvx_cuda_mem_ops(&ops, NULL, why, sizeof why) != KVX_OK) {
        CHECK(0, "mem ops: %s", why);
        return kt_done();
    }
    cu = kvx_cuda_from_mem_ops(&ops);

    /* the pool: one allocation, buffer b at b * PAGES * ITEM */
    CHECK(kvx_cuda_alloc(cu, 0, (size_t)NB * PAGES * ITEM, (void **)&big, why, sizeof why) ==
              KVX_OK, "pool: %s", why);
    if (!big) return kt_done();
    memset(F.view(big, (size_t)NB * PAGES * ITEM), 0, (size_t)NB * PAGES * ITEM);
    memset(bufs, 0, sizeof bufs);
    for (b = 0; b < NB; b++) {
        bufs[b].base = big + (uint64_t)b * PAGES * ITEM;
        bufs[b].length = PAGES * ITEM;
        bufs[b].item_len = ITEM;
        bufs[b].mem = KVX_MEM_CUDA;
        bufs[b].device = 0;
        ct_fill(F.view((char *)bufs[b].base + 60 * ITEM, 4 * ITEM), 4 * ITEM, 900 + b, 60 * ITEM);
        CHECK(kvx_cuda_ipc_export(cu, 0, bufs[b].base, w[b].handle, &w[b].offset, &w[b].alloc_len,
                                  why, sizeof why) == KVX_OK, "export %u: %s", b, why);
        w[b].length = bufs[b].length;
        w[b].item_len = ITEM;
        w[b].device = 0;
        CHECK(w[b].offset == (uint64_t)b * PAGES * ITEM && w[b].alloc_len == NB * PAGES * ITEM,
              "buffer %u at offset %llu of %llu", b, (unsigned long long)w[b].offset,
              (unsigned long long)w[b].alloc_len);
        CHECK(!memcmp(w[b].handle, w[0].handle, sizeof w[b].handle), "one allocation, one handle");
    }
    {
        void *self = NULL;
        CHECK(kvx_cuda_ipc_import(cu, w[0].handle, 0, &self, why, sizeof why) == KVX_ERR_TRANSPORT,
              "a process cannot import its own handle");
        CHECK_STR(why, "CUDA_ERROR_INVALID_CONTEXT");
        printf("own handle: %s\n", why);
    }
    ct_pages(sp, N, PAGES, 41);
    ct_pages(dp, N, 60, 42); /* pages 60..63 hold bytes the prefill side reads */
    ct_write_full(to_pre, w, sizeof w);
    ct_write_full(to_pre, sp, sizeof sp);
    ct_write_full(to_pre, dp, sizeof dp);
    CHECK(ct_read_full(from_pre, &report, 1) == 0 && report == 1, "prefill side reports success");
    CHECK(ct_wait_child(pre) == 0, "prefill child exits 0");

    /* every page the prefill side wrote, nothing else */
    for (b = 0; b < NB; b++) {
        const char *v = (const char *)F.view(bufs[b].base, bufs[b].length);
        char *mark = (char *)calloc(PAGES, 1);
        for (i = 0; i < N; i++) {
            mark[dp[i]] = 1;
            if (ct_diff(v + (uint64_t)dp[i] * ITEM, ITEM, 700 + b, (uint64_t)sp[i] * ITEM) >= 0)
                bad++;
        }
        for (p = 0; p < 60; p++)
            if (!mark[p]) {
                uint32_t k;
                for (k = 0; k < ITEM; k++)
                    if (v[(uint64_t)p * ITEM + k]) { bad++; break; }
            }
        if (ct_diff(v + 60 * ITEM, 4 * ITEM, 900 + b, 60 * ITEM) >= 0) bad++;
        free(mark);
    }
    CHECK(bad == 0, "the prefill side's pages are in the decode pool, nothing else changed (%d bad)",
          bad);

    /* the other direction: import a third process's allocation, read it */
    CHECK(ct_read_full(from_exp, h3, sizeof h3) == 0 && ct_read_full(from_exp, &off3, 8) == 0,
          "exporter's handle");
    CHECK(kvx_cuda_ipc_import(cu, h3, 0, &imp3, why, sizeof why) == KVX_OK, "import: %s", why);
    stage = (char *)ops.host_alloc(ops.ctx, 3 * ITEM);
    if (imp3 && stage) {
        kvx_copy c;
        c.buf_ptr = (char *)imp3 + off3;
        c.host = stage;
        c.len = 2 * ITEM;
        c.device = 0;
        CHECK(ops.copy(ops.ctx, 1, &c, 1, why, sizeof why) == KVX_OK, "read: %s", why);
        CHECK(ct_diff(stage, 2 * ITEM, 333, ITEM) < 0, "the exporter's bytes, at its offset");
        CHECK(kvx_cuda_ipc_close(cu, 0, imp3, why, sizeof why) == KVX_OK, "close: %s", why);
    }
    ops.host_free(ops.ctx, stage);
    ct_write_full(to_exp, &go, 1);
    CHECK(ct_wait_child(exp) == 0, "exporter child exits 0");
    CHECK(kvx_cuda_ipc_import(cu, h3, 0, &imp3, why, sizeof why) == KVX_ERR_TRANSPORT && !imp3,
          "the handle of a process that has exited");
    CHECK_STR(why, "the exporting process must be alive");
    printf("exporter gone: %s\n", why);

    kvx_cuda_free(cu, 0, big);
    kvx_cuda_mem_ops_release(&ops);
    {
        struct fakecuda_stats f = ct_stats(&F);
        CHECK(f.live_dev_allocs == 0 && f.live_ipc_maps == 0 && f.live_streams == 0 &&
                  f.ctx_refs == 0 && f.live_host_allocs == 0, "nothing left");
    }
    return kt_done();
}
#endif
