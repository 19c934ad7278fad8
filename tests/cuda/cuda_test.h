/* cuda_test.h - what the tests/cuda programs share: finding and driving the
   fake CUDA driver (tests/fakecuda), KV pools in (fake) GPU memory, byte
   patterns, child processes. Include after the kvx headers. */
#ifndef KVX_CUDA_TEST_H
#define KVX_CUDA_TEST_H

#include "../kvx_test.h"
#include "../fakecuda/fakecuda.h"
#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <unistd.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>

#include <stdarg.h>

#if defined(__GNUC__) || defined(__clang__)
#define KT_PRINTF(f, a) __attribute__((format(printf, f, a)))
#else
#define KT_PRINTF(f, a)
#endif

/* ---- the fake driver ------------------------------------------------------- */

typedef struct ct_fake {
    void *h;
    char path[PATH_MAX];
    fakecuda_get_stats_fn stats;
    fakecuda_reset_stats_fn reset;
    fakecuda_host_view_fn view;
    fakecuda_inject_fn inject;
    fakecuda_ctx_depth_fn depth;
} ct_fake;

/* snprintf through va_list: paths and messages may be cut, on purpose. */
static KT_UNUSED void ct_fmt(char *out, size_t n, const char *fmt, ...) KT_PRINTF(3, 4);
static KT_UNUSED void ct_fmt(char *out, size_t n, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(out, n, fmt, ap);
    va_end(ap);
}

static KT_UNUSED int ct_exists(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

/* libfakecuda.so: $FAKECUDA_LIB, else next to the test binary (sanitizer
   builds put an instrumented copy there), else tests/fakecuda/ under the
   current directory or up to three levels above the binary. */
static KT_UNUSED int ct_find_fake(const char *argv0, char *out, size_t n) {
    char dir[PATH_MAX], *slash;
    const char *env = getenv("FAKECUDA_LIB");
    int up;
    if (env && *env) {
        ct_fmt(out, n, "%s", env);
        return ct_exists(out) ? 0 : -1;
    }
    ct_fmt(dir, sizeof dir, "%s", argv0 ? argv0 : ".");
    slash = strrchr(dir, '/');
    if (slash) *slash = 0;
    else ct_fmt(dir, sizeof dir, ".");
    ct_fmt(out, n, "%s/libfakecuda.so", dir);
    if (ct_exists(out)) return 0;
    ct_fmt(out, n, "tests/fakecuda/libfakecuda.so");
    if (ct_exists(out)) return 0;
    for (up = 1; up <= 3; up++) {
        char rel[64] = "";
        int k;
        for (k = 0; k < up; k++) strcat(rel, "/..");
        ct_fmt(out, n, "%s%s/tests/fakecuda/libfakecuda.so", dir, rel);
        if (ct_exists(out)) return 0;
    }
    return -1;
}

static KT_UNUSED void *ct_sym(void *h, const char *name) {
    return dlsym(h, name);
}

/* Opens the fake and points kvx at it (KVX_CUDA_LIBRARY). With
   KVX_NO_RUNTIME_LINKING the program is linked against it instead. */
static KT_UNUSED int ct_fake_open(ct_fake *f, const char *argv0, char *why, size_t wl) {
    void *p;
    memset(f, 0, sizeof *f);
#if defined(KVX_NO_RUNTIME_LINKING)
    (void)argv0;
    f->h = RTLD_DEFAULT;
    ct_fmt(f->path, sizeof f->path, "(linked)");
#else
    if (ct_find_fake(argv0, f->path, sizeof f->path) != 0) {
        ct_fmt(why, wl, "libfakecuda.so not found (build it: make tests/fakecuda/libfakecuda.so, "
                 "or set FAKECUDA_LIB)");
        return -1;
    }
    f->h = dlopen(f->path, RTLD_NOW | RTLD_LOCAL);
    if (!f->h) {
        ct_fmt(why, wl, "cannot load %s: %s", f->path, dlerror());
        return -1;
    }
    setenv("KVX_CUDA_LIBRARY", f->path, 1);
#endif
    p = ct_sym(f->h, "fakecuda_get_stats"); memcpy(&f->stats, &p, sizeof p);
    p = ct_sym(f->h, "fakecuda_reset_stats"); memcpy(&f->reset, &p, sizeof p);
    p = ct_sym(f->h, "fakecuda_host_view"); memcpy(&f->view, &p, sizeof p);
    p = ct_sym(f->h, "fakecuda_inject"); memcpy(&f->inject, &p, sizeof p);
    p = ct_sym(f->h, "fakecuda_ctx_depth"); memcpy(&f->depth, &p, sizeof p);
    if (!f->stats || !f->reset || !f->view || !f->inject || !f->depth) {
        ct_fmt(why, wl, "%s lacks the fakecuda_* test interface", f->path);
        return -1;
    }
    return 0;
}

static KT_UNUSED struct fakecuda_stats ct_stats(const ct_fake *f) {
    struct fakecuda_stats s;
    f->stats(&s);
    return s;
}

/* ---- bytes ------------------------------------------------------------------- */

static KT_UNUSED uint64_t ct_mix(uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

/* Byte i of the stream named seed. */
static KT_UNUSED uint8_t ct_byte(uint64_t seed, uint64_t i) {
    return (uint8_t)(ct_mix(seed * 0x100000001B3ull + (i >> 3)) >> (8 * (i & 7)));
}

static KT_UNUSED void ct_fill(void *p, size_t n, uint64_t seed, uint64_t at) {
    uint8_t *b = (uint8_t *)p;
    size_t i;
    for (i = 0; i < n; i++) b[i] = ct_byte(seed, at + i);
}

/* Index of the first byte that differs from the stream, or -1. */
static KT_UNUSED long ct_diff(const void *p, size_t n, uint64_t seed, uint64_t at) {
    const uint8_t *b = (const uint8_t *)p;
    size_t i;
    for (i = 0; i < n; i++)
        if (b[i] != ct_byte(seed, at + i)) return (long)i;
    return -1;
}

static KT_UNUSED uint64_t ct_rand(uint64_t *s) { return ct_mix((*s)++); }

/* ---- pools in GPU memory ----------------------------------------------------- */

#define CT_MAX_BUF 64

typedef struct ct_pool {
    kvx_buffer bufs[CT_MAX_BUF];
    kvx_aux_buffer aux[1];
    kvx_layout layout;
    uint32_t nb, pages;
    uint64_t item;
} ct_pool;

/* nb buffers of `pages` pages of `item` bytes on `device`, one cuMemAlloc
   each (as engines allocate one tensor per layer), plus one host aux buffer
   of 4 slots of 64 bytes. */
static KT_UNUSED int ct_pool_alloc(kvx_cuda *cu, ct_pool *p, uint32_t nb, uint64_t item,
                                   uint32_t pages, int device, char *why, size_t wl) {
    uint32_t i;
    memset(p, 0, sizeof *p);
    if (nb > CT_MAX_BUF) return -1;
    for (i = 0; i < nb; i++) {
        void *d;
        if (kvx_cuda_alloc(cu, device, (size_t)(item * pages), &d, why, wl) != KVX_OK) return -1;
        p->bufs[i].base = d;
        p->bufs[i].length = item * pages;
        p->bufs[i].item_len = item;
        p->bufs[i].mem = KVX_MEM_CUDA;
        p->bufs[i].device = device;
    }
    p->aux[0].item_len = 64;
    p->aux[0].length = 4 * 64;
    p->aux[0].base = calloc(4, 64);
    p->layout.buffers = p->bufs;
    p->layout.num_buffers = nb;
    p->layout.aux = p->aux;
    p->layout.num_aux = 1;
    p->layout.page_size = 16;
    p->layout.num_kv_heads = 8;
    p->layout.dtype_size = 2;
    p->layout.dtype = "bfloat16";
    p->nb = nb;
    p->pages = pages;
    p->item = item;
    return p->aux[0].base ? 0 : -1;
}

static KT_UNUSED void ct_pool_free(kvx_cuda *cu, ct_pool *p) {
    uint32_t i;
    for (i = 0; i < p->nb; i++) kvx_cuda_free(cu, p->bufs[i].device, p->bufs[i].base);
    free(p->aux[0].base);
    memset(p, 0, sizeof *p);
}

/* A random permutation of [0, n) in out[0..k) (k <= n): scattered pages. */
static KT_UNUSED void ct_pages(int32_t *out, uint32_t k, uint32_t n, uint64_t seed) {
    int32_t *all = (int32_t *)malloc(n * sizeof *all);
    uint32_t i;
    for (i = 0; i < n; i++) all[i] = (int32_t)i;
    for (i = n; i > 1; i--) {
        uint32_t j = (uint32_t)(ct_rand(&seed) % i);
        int32_t t = all[i - 1];
        all[i - 1] = all[j];
        all[j] = t;
    }
    memcpy(out, all, k * sizeof *out);
    free(all);
}

/* ---- processes ------------------------------------------------------------------ */

static KT_UNUSED int ct_wait_child(pid_t pid) {
    int st = 0;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {}
    if (WIFEXITED(st)) return WEXITSTATUS(st);
    return 128 + (WIFSIGNALED(st) ? WTERMSIG(st) : 0);
}

static KT_UNUSED int ct_read_full(int fd, void *buf, size_t n) {
    char *p = (char *)buf;
    while (n) {
        ssize_t r = read(fd, p, n);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return -1;
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

static KT_UNUSED int ct_write_full(int fd, const void *buf, size_t n) {
    const char *p = (const char *)buf;
    while (n) {
        ssize_t r = write(fd, p, n);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return -1;
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

#endif
