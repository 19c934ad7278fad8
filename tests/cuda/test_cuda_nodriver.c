/* kvx_cuda.h where there is no CUDA: built without KVX_WITH_CUDA, every
   entry point says KVX_ERR_NOT_COMPILED and names the macro; built with it
   but with no driver to load (KVX_CUDA_LIBRARY=/nonexistent), or a library
   that is not a driver, kvx_cuda_mem_ops fails with a sentence that says so
   and leaves the ops zeroed. Either way an engine whose layout has GPU
   buffers but no mem ops is refused with a clear message, and host-only
   transfers through the file transport keep working in the same process. */
#define KVX_IMPLEMENTATION
#include "../../kvx_cuda.h"
#include "../../kvx_file.h"
#include "../../examples/kvx_example.h"
#include "cuda_test.h"

static char root[256];

static void check_not_compiled(void) {
#if !defined(KVX_WITH_CUDA)
    char why[512];
    kvx_mem_ops ops;
    kvx_cuda *cu = (kvx_cuda *)1;
    kvx_cuda_stream *s = (kvx_cuda_stream *)1;
    void *p = (void *)1;
    uint8_t h[KVX_CUDA_IPC_HANDLE_BYTES];
    uint64_t off = 1, ticket = 1;
    int fd = 3, done = 1;
    kvx_cuda_info info;
    memset(&ops, 0x5a, sizeof ops);
    why[0] = 0;
    CHECK(kvx_cuda_mem_ops(&ops, NULL, why, sizeof why) == KVX_ERR_NOT_COMPILED, "mem_ops");
    CHECK_STR(why, "KVX_WITH_CUDA");
    CHECK(!ops.copy && !ops.host_alloc && !ops.host_free && !ops.ctx, "ops zeroed");
    kvx_cuda_mem_ops_release(&ops);
    CHECK(kvx_cuda_create(NULL, &cu, why, sizeof why) == KVX_ERR_NOT_COMPILED && !cu, "create");
    CHECK(kvx_cuda_alloc(NULL, 0, 64, &p, why, sizeof why) == KVX_ERR_NOT_COMPILED && !p, "alloc");
    CHECK(kvx_cuda_ipc_export(NULL, 0, h, h, &off, NULL, why, sizeof why) == KVX_ERR_NOT_COMPILED,
          "export");
    CHECK(kvx_cuda_ipc_import(NULL, h, 0, &p, why, sizeof why) == KVX_ERR_NOT_COMPILED, "import");
    CHECK(kvx_cuda_ipc_close(NULL, 0, h, why, sizeof why) == KVX_ERR_NOT_COMPILED, "close");
    CHECK(kvx_cuda_stream_create(NULL, 0, &s, why, sizeof why) == KVX_ERR_NOT_COMPILED && !s,
          "stream");
    CHECK(kvx_cuda_copy_spans(NULL, NULL, NULL, NULL, 0, &ticket, why, sizeof why) ==
              KVX_ERR_NOT_COMPILED, "spans");
    CHECK(kvx_cuda_stream_done(NULL, 0, &done, why, sizeof why) == KVX_ERR_NOT_COMPILED && !done,
          "done");
    CHECK(kvx_cuda_stream_wait(NULL, 0, why, sizeof why) == KVX_ERR_NOT_COMPILED, "wait");
    CHECK(kvx_cuda_dmabuf_fd(NULL, 0, h, 4096, &fd, &off, why, sizeof why) ==
              KVX_ERR_NOT_COMPILED && fd == -1, "dmabuf");
    CHECK(kvx_cuda_layout_check(NULL, NULL, why, sizeof why) == KVX_ERR_NOT_COMPILED, "check");
    CHECK(kvx_cuda_get_info(NULL, &info) == KVX_ERR_NOT_COMPILED, "info");
    CHECK(kvx_cuda_from_mem_ops(&ops) == NULL, "from ops");
    kvx_cuda_stream_destroy(NULL);
    kvx_cuda_destroy(NULL);
    kvx_cuda_free(NULL, 0, NULL);
    printf("not compiled: %s\n", why);
#endif
}

static void check_no_driver(const char *argv0) {
#if defined(KVX_WITH_CUDA) && !defined(KVX_NO_RUNTIME_LINKING)
    char why[512];
    kvx_mem_ops ops;
    kvx_cuda_desc d;
    kvx_cuda *cu = (kvx_cuda *)1;
    ct_fake f;
    void *real;

    setenv("KVX_CUDA_LIBRARY", "/nonexistent/libcuda.so.1", 1);
    memset(&ops, 0x5a, sizeof ops);
    why[0] = 0;
    CHECK(kvx_cuda_mem_ops(&ops, NULL, why, sizeof why) == KVX_ERR_NOT_FOUND, "no driver: %s", why);
    CHECK_STR(why, "no CUDA driver: cannot load /nonexistent/libcuda.so.1 (");
    CHECK_STR(why, "KV buffers in GPU memory need an NVIDIA driver");
    CHECK(!ops.copy && !ops.host_alloc && !ops.host_free && !ops.ctx, "ops zeroed on failure");
    CHECK(kvx_cuda_from_mem_ops(&ops) == NULL, "no context behind zeroed ops");
    kvx_cuda_mem_ops_release(&ops); /* harmless */
    kvx_cuda_mem_ops_release(NULL);
    printf("no driver: %s\n", why);

    /* the default name, when this machine has no driver either */
    unsetenv("KVX_CUDA_LIBRARY");
    real = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!real) {
        CHECK(kvx_cuda_create(NULL, &cu, why, sizeof why) == KVX_ERR_NOT_FOUND && !cu,
              "default library");
        CHECK_STR(why, "no CUDA driver: cannot load libcuda.so.1 (");
    } else {
        dlclose(real);
        printf("libcuda.so.1 loads here: default-name check skipped\n");
    }

    /* a library that is not a driver */
    memset(&d, 0, sizeof d);
    d.library = "libm.so.6";
    CHECK(kvx_cuda_create(&d, &cu, why, sizeof why) == KVX_ERR_NOT_FOUND && !cu, "not a driver");
    CHECK_STR(why, "libm.so.6 is not a usable CUDA driver: it lacks cuInit");

    /* settings that do not parse come first */
    setenv("KVX_CUDA_LIBRARY", "/nonexistent/libcuda.so.1", 1);
    setenv("KVX_CUDA_STAGING_BYTES", "12Q", 1);
    CHECK(kvx_cuda_create(NULL, &cu, why, sizeof why) == KVX_ERR_BAD_CONFIG, "bad bytes");
    CHECK_STR(why, "KVX_CUDA_STAGING_BYTES='12Q'");
    setenv("KVX_CUDA_STAGING_BYTES", "64MiB", 1); /* one byte-count parser: the store's too */
    CHECK(kvx_cuda_create(NULL, &cu, why, sizeof why) == KVX_ERR_NOT_FOUND, "64MiB parses");
    setenv("KVX_CUDA_STAGING_BYTES", "64Q", 1);
    CHECK(kvx_cuda_create(NULL, &cu, why, sizeof why) == KVX_ERR_BAD_CONFIG, "Q is not a suffix");
    setenv("KVX_CUDA_STAGING_BYTES", "64MB", 1);
    CHECK(kvx_cuda_create(NULL, &cu, why, sizeof why) == KVX_ERR_NOT_FOUND, "64MB parses");
    unsetenv("KVX_CUDA_STAGING_BYTES");
    setenv("KVX_CUDA_BATCH", "maybe", 1);
    CHECK(kvx_cuda_create(NULL, &cu, why, sizeof why) == KVX_ERR_BAD_CONFIG, "bad batch");
    CHECK_STR(why, "KVX_CUDA_BATCH");
    unsetenv("KVX_CUDA_BATCH");

    /* a driver without devices (the fake, told to have none) */
    if (ct_fake_open(&f, argv0, why, sizeof why) == 0) {
        setenv("FAKECUDA_DEVICES", "0", 1);
        CHECK(kvx_cuda_create(NULL, &cu, why, sizeof why) == KVX_ERR_NOT_FOUND && !cu, "no device");
        CHECK_STR(why, "no CUDA device: cuInit in ");
        CHECK_STR(why, "CUDA_ERROR_NO_DEVICE");
        printf("no device: %s\n", why);
        unsetenv("FAKECUDA_DEVICES");
    } else {
        printf("(fake driver not available: %s)\n", why);
    }
    setenv("KVX_CUDA_LIBRARY", "/nonexistent/libcuda.so.1", 1);
#else
    (void)argv0;
#endif
}

/* A layout with a GPU buffer and no mem ops: refused, and the message says
   what to do. */
static void check_refused(void) {
    char dir[300], why[512];
    kvx_buffer b[2];
    kvx_engine_desc d;
    kvx_engine *e = (kvx_engine *)1;
    static char mem[2][4096];
    memset(b, 0, sizeof b);
    b[0].base = mem[0]; b[0].length = 4096; b[0].item_len = 1024; b[0].mem = KVX_MEM_HOST;
    b[1].base = mem[1]; b[1].length = 4096; b[1].item_len = 1024; b[1].mem = KVX_MEM_CUDA;
    memset(&d, 0, sizeof d);
    d.role = KVX_ROLE_PREFILL;
    d.transport = "file";
    d.layout.buffers = b;
    d.layout.num_buffers = 2;
    d.layout.page_size = 16;
    d.layout.num_kv_heads = 1;
    d.layout.dtype_size = 2;
    snprintf(dir, sizeof dir, "%s/refused", root);
    d.file.dir = dir;
    d.logger.level = KVX_LOG_ERROR;
    CHECK(kvx_engine_create(&d, &e, why, sizeof why) == KVX_ERR_INVALID_ARGUMENT && !e,
          "GPU layout without mem ops refused");
    CHECK_STR(why, "kvx_cuda_mem_ops");
}

/* Host-only KV through the file transport, in this same process. */
static void check_host_transfer(void) {
    static const ex_model tiny = {"tiny", 2, 2, 64, 2, 0, "bfloat16"};
    ex_pool ps, pr;
    kvx_engine_desc d;
    kvx_engine *pe = NULL, *de = NULL;
    kvx_sender *s = NULL;
    kvx_receiver *r = NULL;
    kvx_room_desc rd;
    int32_t sp[12], dp[12];
    char dir[300], why[512];
    uint64_t t0;
    CHECK(ex_pool_init(&ps, &tiny, 64, 16, 4, 1) == 0, "pool");
    CHECK(ex_pool_init(&pr, &tiny, 64, 16, 4, 2) == 0, "pool");
    ex_alloc_pages(&ps, sp, 12);
    ex_alloc_pages(&pr, dp, 12);
    ex_pages_pattern(&ps, 7, sp, 12, 1);
    ex_aux_write(&ps, 7, 0);
    snprintf(dir, sizeof dir, "%s/host", root);
    memset(&d, 0, sizeof d);
    d.transport = "file";
    d.file.dir = dir;
    d.logger.level = KVX_LOG_ERROR;
    d.role = KVX_ROLE_PREFILL;
    d.layout = ps.layout;
    CHECK(kvx_engine_create(&d, &pe, why, sizeof why) == KVX_OK, "prefill engine: %s", why);
    d.role = KVX_ROLE_DECODE;
    d.layout = pr.layout;
    CHECK(kvx_engine_create(&d, &de, why, sizeof why) == KVX_OK, "decode engine: %s", why);
    if (pe && de) {
        memset(&rd, 0, sizeof rd);
        rd.room = 7;
        kvx_receiver_create(de, &rd, &r);
        kvx_receiver_init(r, dp, 12, 1);
        kvx_sender_create(pe, &rd, &s);
        kvx_sender_init(s, 12, 0);
        kvx_sender_send(s, sp, 12);
        t0 = kvx_now_ns();
        while (kvx_receiver_poll(r) == KVX_POLL_TRANSFERRING && kvx_now_ns() - t0 < 20000000000ull)
            usleep(1000);
        CHECK(kvx_receiver_poll(r) == KVX_POLL_SUCCESS, "host transfer: %s", kvx_receiver_error(r));
        CHECK(ex_pages_pattern(&pr, 7, dp, 12, 0) == 0, "host pages landed byte for byte");
        CHECK(ex_aux_check(&pr, 7, 1), "aux row landed");
        kvx_sender_destroy(s);
        kvx_receiver_destroy(r);
    }
    kvx_engine_destroy(pe);
    kvx_engine_destroy(de);
    ex_pool_free(&ps);
    ex_pool_free(&pr);
}

int main(int argc, char **argv) {
    char cmd[400];
    (void)argc;
    kt_name = "test_cuda_nodriver";
    snprintf(root, sizeof root, "/tmp/kvx_test_%d_cuda", (int)getpid());
    mkdir(root, 0755);
    kvx_file_register();
    check_not_compiled();
    check_no_driver(argv[0]);
    check_refused();
    check_host_transfer();
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", root);
    if (system(cmd) != 0) printf("could not remove %s\n", root);
    return kt_done();
}
