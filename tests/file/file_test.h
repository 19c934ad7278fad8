/* file_test.h - what the file transport's tests share: the engine they
   start from (one role, one pool's layout, one directory). */
#ifndef KVX_FILE_TEST_H
#define KVX_FILE_TEST_H
#include <sys/wait.h>

/* A file engine's desc: callers add what their test needs. */
static KT_UNUSED kvx_engine_desc ft_desc(kvx_role role, const kvx_layout *l, const char *dir) {
    kvx_engine_desc d;
    memset(&d, 0, sizeof d);
    d.role = role;
    d.transport = "file";
    d.layout = *l;
    d.file.dir = dir;
    d.logger.level = KVX_LOG_ERROR;
    return d;
}

/* ft_desc for one rank (desc.boot: TP size and rank, PP size and rank),
   logging nothing below KVX_LOG_ERROR + 1 (tests whose failures are
   expected). */
static KT_UNUSED kvx_engine_desc ft_rank_desc(kvx_role role, const kvx_layout *l, const char *dir,
                                              uint32_t tp, uint32_t tp_rank, uint32_t pp,
                                              uint32_t pp_rank) {
    kvx_engine_desc d = ft_desc(role, l, dir);
    d.boot.tp_size = (int)tp;
    d.boot.tp_rank = (int)tp_rank;
    d.boot.pp_size = (int)pp;
    d.boot.pp_rank = (int)pp_rank;
    d.logger.level = KVX_LOG_ERROR + 1;
    return d;
}

/* waitpid(pid) through EINTR: the child's status. */
static KT_UNUSED int ft_reap(pid_t pid) {
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
    return status;
}

/* The engine of d, or NULL with the sentence in why (512 bytes). */
static KT_UNUSED kvx_engine *ft_create(const kvx_engine_desc *d, char *why) {
    kvx_engine *e = NULL;
    why[0] = 0;
    if (kvx_engine_create(d, &e, why, 512) != KVX_OK) e = NULL;
    return e;
}
/* A mock device for GPU-memory layouts through kvx_mem_ops: "device"
   pointers are host pointers with a tag in the top bits: not canonical on
   x86-64, so a transport that dereferenced one would crash. Device 3. */
#define DEV_TAG 0x5A00000000000000ull
static int mock_copies KT_UNUSED, mock_fail KT_UNUSED;
static KT_UNUSED void *to_dev(void *p) { return (void *)((uintptr_t)p ^ DEV_TAG); }
static KT_UNUSED kvx_result mock_copy(void *ctx, int to_host, const kvx_copy *c, size_t n,
                                      char *why, size_t wl) {
    size_t i;
    (void)ctx;
    if (__atomic_load_n(&mock_fail, __ATOMIC_ACQUIRE))
        return kvx__why(KVX_ERR_TRANSPORT, why, wl, "mock device: CUDA_ERROR_ILLEGAL_ADDRESS");
    for (i = 0; i < n && c[i].device == 3; i++) { /* to_dev turns a tagged pointer back too */
        void *dev = to_dev(c[i].buf_ptr);
        memcpy(to_host ? c[i].host : dev, to_host ? dev : c[i].host, (size_t)c[i].len);
    }
    if (i < n) return KVX_ERR_INVALID_ARGUMENT; /* not the mock's device */
    __atomic_add_fetch(&mock_copies, 1, __ATOMIC_RELAXED);
    return KVX_OK;
}
static KT_UNUSED void *mock_alloc(void *ctx, size_t n) { (void)ctx; return malloc(n); }
static KT_UNUSED void mock_free(void *ctx, void *p) { (void)ctx; free(p); }
#endif
