/* fakecuda.c - a fake CUDA driver on host memory, for tests only.
   What it does and how: see fakecuda.h. Build: tests/fakecuda/Makefile.inc. */
#define _GNU_SOURCE 1
#include <cuda.h>
#include "fakecuda.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* Entry points whose public names cuda.h maps to newer ABIs: the old
   exported symbols still exist in a real driver, with these prototypes. */
#undef cuMemcpyBatchAsync
#undef cuDevicePrimaryCtxRelease
CUresult CUDAAPI cuMemcpyBatchAsync(CUdeviceptr *dsts, CUdeviceptr *srcs, size_t *sizes,
                                    size_t count, CUmemcpyAttributes *attrs, size_t *attrsIdxs,
                                    size_t numAttrs, size_t *failIdx, CUstream hStream);
CUresult CUDAAPI cuDevicePrimaryCtxRelease(CUdevice dev);

#define FC_MAX_DEV 16
#define FC_MAX_DEPTH 32
#define FC_ADD(p, v) __atomic_add_fetch((p), (v), __ATOMIC_RELAXED)
#define FC_SUB(p, v) __atomic_sub_fetch((p), (v), __ATOMIC_RELAXED)

/* >>state ------------------------------------------------------------------ */

struct CUctx_st {
    int device;
    int refs; /* under g_mu */
};

enum { FC_ALLOC = 1, FC_IMPORT = 2 };

typedef struct fc_mem {
    uintptr_t base; /* the PROT_NONE reservation: the "device pointer" */
    size_t size;
    char *shadow;   /* memfd mapping: the bytes */
    int fd;         /* exporter: the memfd; importer: -1 */
    uint64_t ino, id;
    int device, kind, refs; /* device: where the memory is (an import: the exporter's GPU) */
    int ctx_device;   /* import: the importing context's device */
    int32_t src_pid;  /* import: exporter's pid */
    uint64_t src_id;  /* import: exporter's allocation id */
    struct fc_mem *next;
} fc_mem;

typedef struct fc_host {
    void *p;
    size_t size;
    struct fc_host *next;
} fc_host;

typedef struct fc_op {
    char *dst;
    const char *src;
    size_t len;
    size_t rows, spitch, dpitch; /* a 2-D copy: rows of len bytes; 1-D: rows 1 */
    CUresult fail;
} fc_op;

struct CUstream_st {
    struct CUctx_st *ctx;
    pthread_t th;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    fc_op *q;
    size_t cap, head, count;
    uint64_t enq, done;
    int stop, live;
    CUresult err; /* sticky */
    struct CUstream_st *next;
};

struct CUevent_st {
    struct CUstream_st *s;
    uint64_t target;
};

static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER; /* everything below */
static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static int g_inited;                                     /* atomic */
static int g_ndev = 1, g_version = 13000, g_delay_us, g_sync;
static struct CUctx_st g_ctx[FC_MAX_DEV];
static fc_mem *g_mems;
static fc_host *g_hosts;
static struct CUstream_st *g_streams; /* live and dead (dead ones are kept for events) */
static uint64_t g_next_id = 1;
static char g_inj_fn[64];
static CUresult g_inj_err;
static int g_inj_skip;
static struct fakecuda_stats g_st;

static _Thread_local struct CUctx_st *t_stack[FC_MAX_DEPTH];
static _Thread_local int t_depth;

static CUresult fc_err(CUresult r) {
    if (r != CUDA_SUCCESS) FC_ADD(&g_st.errors, 1);
    return r;
}

static int fc_env_int(const char *name, int dflt) {
    const char *s = getenv(name);
    return s && *s ? atoi(s) : dflt;
}

static void fc_read_env(void) {
    g_ndev = fc_env_int("FAKECUDA_DEVICES", 1);
    if (g_ndev < 0) g_ndev = 0;
    if (g_ndev > FC_MAX_DEV) g_ndev = FC_MAX_DEV;
    g_version = fc_env_int("FAKECUDA_DRIVER_VERSION", 13000);
    g_delay_us = fc_env_int("FAKECUDA_DELAY_US", 0);
    g_sync = fc_env_int("FAKECUDA_SYNC", 0);
}

/* CU_DEVICE_ATTRIBUTE_MAX_PITCH, read at each use: FAKECUDA_MAX_PITCH
   (default 2147483647, what current GPUs report). */
static int fc_max_pitch(void) {
    int v = fc_env_int("FAKECUDA_MAX_PITCH", 2147483647);
    return v > 0 ? v : 2147483647;
}

static int fc_inited(void) { return __atomic_load_n(&g_inited, __ATOMIC_ACQUIRE); }

/* The armed fault, when it is fn's turn. */
static CUresult fc_inject(const char *fn) {
    CUresult r = CUDA_SUCCESS;
    pthread_mutex_lock(&g_mu);
    if (g_inj_err != CUDA_SUCCESS && !strcmp(g_inj_fn, fn)) {
        if (g_inj_skip-- == 0) {
            r = g_inj_err;
            g_inj_err = CUDA_SUCCESS;
        }
    }
    pthread_mutex_unlock(&g_mu);
    return r;
}
#define FC_INJECT(name)                                                                       \
    do {                                                                                      \
        CUresult inj_ = fc_inject(name);                                                      \
        if (inj_ != CUDA_SUCCESS) return fc_err(inj_);                                        \
    } while (0)

/* The calling thread's current context, checked. */
static CUresult fc_need_ctx(struct CUctx_st **out) {
    struct CUctx_st *c;
    int refs;
    if (!fc_inited()) return CUDA_ERROR_NOT_INITIALIZED;
    c = t_depth ? t_stack[t_depth - 1] : NULL;
    if (!c) return CUDA_ERROR_INVALID_CONTEXT;
    pthread_mutex_lock(&g_mu);
    refs = c->refs;
    pthread_mutex_unlock(&g_mu);
    if (refs <= 0) return CUDA_ERROR_CONTEXT_IS_DESTROYED;
    if (out) *out = c;
    return CUDA_SUCCESS;
}
#define FC_CTX(c)                                                                             \
    do {                                                                                      \
        CUresult ctx_ = fc_need_ctx(c);                                                       \
        if (ctx_ != CUDA_SUCCESS) return fc_err(ctx_);                                        \
    } while (0)

/* Device memory containing [p, p+len) (g_mu held); *partial when p is inside
   one but the range runs past its end. */
static fc_mem *fc_find(uintptr_t p, size_t len, int *partial) {
    fc_mem *m;
    if (partial) *partial = 0;
    for (m = g_mems; m; m = m->next)
        if (p >= m->base && p < m->base + m->size) {
            if (len > m->size - (p - m->base)) {
                if (partial) *partial = 1;
                return NULL;
            }
            return m;
        }
    return NULL;
}

/* >>errors, versions, devices --------------------------------------------- */

static const struct {
    CUresult code;
    const char *name, *text;
} fc_errors[] = {
    {CUDA_SUCCESS, "CUDA_SUCCESS", "no error"},
    {CUDA_ERROR_INVALID_VALUE, "CUDA_ERROR_INVALID_VALUE", "invalid argument"},
    {CUDA_ERROR_OUT_OF_MEMORY, "CUDA_ERROR_OUT_OF_MEMORY", "out of memory"},
    {CUDA_ERROR_NOT_INITIALIZED, "CUDA_ERROR_NOT_INITIALIZED", "initialization error"},
    {CUDA_ERROR_DEINITIALIZED, "CUDA_ERROR_DEINITIALIZED", "driver shutting down"},
    {CUDA_ERROR_NO_DEVICE, "CUDA_ERROR_NO_DEVICE", "no CUDA-capable device is detected"},
    {CUDA_ERROR_INVALID_DEVICE, "CUDA_ERROR_INVALID_DEVICE", "invalid device ordinal"},
    {CUDA_ERROR_INVALID_CONTEXT, "CUDA_ERROR_INVALID_CONTEXT", "invalid device context"},
    {CUDA_ERROR_CONTEXT_IS_DESTROYED, "CUDA_ERROR_CONTEXT_IS_DESTROYED",
     "context is destroyed"},
    {CUDA_ERROR_MAP_FAILED, "CUDA_ERROR_MAP_FAILED", "mapping of buffer object failed"},
    {CUDA_ERROR_INVALID_HANDLE, "CUDA_ERROR_INVALID_HANDLE", "invalid resource handle"},
    {CUDA_ERROR_NOT_FOUND, "CUDA_ERROR_NOT_FOUND", "named symbol not found"},
    {CUDA_ERROR_NOT_READY, "CUDA_ERROR_NOT_READY", "device not ready"},
    {CUDA_ERROR_ILLEGAL_ADDRESS, "CUDA_ERROR_ILLEGAL_ADDRESS",
     "an illegal memory access was encountered"},
    {CUDA_ERROR_NOT_SUPPORTED, "CUDA_ERROR_NOT_SUPPORTED", "operation not supported"},
    {CUDA_ERROR_UNKNOWN, "CUDA_ERROR_UNKNOWN", "unknown error"},
};

CUresult CUDAAPI cuGetErrorName(CUresult error, const char **pStr) {
    size_t i;
    if (!pStr) return CUDA_ERROR_INVALID_VALUE;
    for (i = 0; i < sizeof fc_errors / sizeof fc_errors[0]; i++)
        if (fc_errors[i].code == error) {
            *pStr = fc_errors[i].name;
            return CUDA_SUCCESS;
        }
    *pStr = NULL;
    return CUDA_ERROR_INVALID_VALUE;
}

CUresult CUDAAPI cuGetErrorString(CUresult error, const char **pStr) {
    size_t i;
    if (!pStr) return CUDA_ERROR_INVALID_VALUE;
    for (i = 0; i < sizeof fc_errors / sizeof fc_errors[0]; i++)
        if (fc_errors[i].code == error) {
            *pStr = fc_errors[i].text;
            return CUDA_SUCCESS;
        }
    *pStr = NULL;
    return CUDA_ERROR_INVALID_VALUE;
}

CUresult CUDAAPI cuInit(unsigned int Flags) {
    int i;
    FC_INJECT("cuInit");
    if (Flags != 0) return fc_err(CUDA_ERROR_INVALID_VALUE);
    pthread_once(&g_once, fc_read_env);
    if (g_ndev == 0) return fc_err(CUDA_ERROR_NO_DEVICE);
    pthread_mutex_lock(&g_mu);
    for (i = 0; i < FC_MAX_DEV; i++) g_ctx[i].device = i;
    pthread_mutex_unlock(&g_mu);
    __atomic_store_n(&g_inited, 1, __ATOMIC_RELEASE);
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuDriverGetVersion(int *driverVersion) {
    if (!driverVersion) return fc_err(CUDA_ERROR_INVALID_VALUE);
    pthread_once(&g_once, fc_read_env);
    *driverVersion = g_version;
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuDeviceGetCount(int *count) {
    if (!fc_inited()) return fc_err(CUDA_ERROR_NOT_INITIALIZED);
    if (!count) return fc_err(CUDA_ERROR_INVALID_VALUE);
    *count = g_ndev;
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuDeviceGet(CUdevice *device, int ordinal) {
    if (!fc_inited()) return fc_err(CUDA_ERROR_NOT_INITIALIZED);
    if (!device) return fc_err(CUDA_ERROR_INVALID_VALUE);
    if (ordinal < 0 || ordinal >= g_ndev) return fc_err(CUDA_ERROR_INVALID_DEVICE);
    *device = ordinal;
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuDeviceGetAttribute(int *pi, CUdevice_attribute attrib, CUdevice dev) {
    if (!fc_inited()) return fc_err(CUDA_ERROR_NOT_INITIALIZED);
    if (!pi) return fc_err(CUDA_ERROR_INVALID_VALUE);
    if (dev < 0 || dev >= g_ndev) return fc_err(CUDA_ERROR_INVALID_DEVICE);
    switch (attrib) {
    case CU_DEVICE_ATTRIBUTE_UNIFIED_ADDRESSING: *pi = 1; break;
    case CU_DEVICE_ATTRIBUTE_CAN_MAP_HOST_MEMORY: *pi = 1; break;
    case CU_DEVICE_ATTRIBUTE_DMA_BUF_SUPPORTED: *pi = fc_env_int("FAKECUDA_DMABUF", 0) ? 1 : 0; break;
    case CU_DEVICE_ATTRIBUTE_PCI_BUS_ID: *pi = dev + 1; break;
    case CU_DEVICE_ATTRIBUTE_MAX_PITCH: *pi = fc_max_pitch(); break;
    case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR: *pi = 9; break;
    case CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT: *pi = 4; break;
    default: *pi = 0; break;
    }
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuDeviceGetName(char *name, int len, CUdevice dev) {
    if (!fc_inited()) return fc_err(CUDA_ERROR_NOT_INITIALIZED);
    if (!name || len <= 0) return fc_err(CUDA_ERROR_INVALID_VALUE);
    if (dev < 0 || dev >= g_ndev) return fc_err(CUDA_ERROR_INVALID_DEVICE);
    snprintf(name, (size_t)len, "FakeCUDA Device %d", dev);
    return CUDA_SUCCESS;
}

/* >>contexts ---------------------------------------------------------------- */

CUresult CUDAAPI cuDevicePrimaryCtxRetain(CUcontext *pctx, CUdevice dev) {
    FC_INJECT("cuDevicePrimaryCtxRetain");
    if (!fc_inited()) return fc_err(CUDA_ERROR_NOT_INITIALIZED);
    if (!pctx) return fc_err(CUDA_ERROR_INVALID_VALUE);
    if (dev < 0 || dev >= g_ndev) return fc_err(CUDA_ERROR_INVALID_DEVICE);
    pthread_mutex_lock(&g_mu);
    g_ctx[dev].refs++;
    pthread_mutex_unlock(&g_mu);
    FC_ADD(&g_st.ctx_retains, 1);
    FC_ADD(&g_st.ctx_refs, 1);
    *pctx = &g_ctx[dev];
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuDevicePrimaryCtxRelease_v2(CUdevice dev) {
    int ok = 0;
    if (!fc_inited()) return fc_err(CUDA_ERROR_NOT_INITIALIZED);
    if (dev < 0 || dev >= g_ndev) return fc_err(CUDA_ERROR_INVALID_DEVICE);
    pthread_mutex_lock(&g_mu);
    if (g_ctx[dev].refs > 0) {
        g_ctx[dev].refs--;
        ok = 1;
    }
    pthread_mutex_unlock(&g_mu);
    if (!ok) return fc_err(CUDA_ERROR_INVALID_CONTEXT);
    FC_SUB(&g_st.ctx_refs, 1);
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuDevicePrimaryCtxRelease(CUdevice dev) { return cuDevicePrimaryCtxRelease_v2(dev); }

CUresult CUDAAPI cuCtxGetCurrent(CUcontext *pctx) {
    if (!fc_inited()) return fc_err(CUDA_ERROR_NOT_INITIALIZED);
    if (!pctx) return fc_err(CUDA_ERROR_INVALID_VALUE);
    *pctx = t_depth ? t_stack[t_depth - 1] : NULL;
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuCtxSetCurrent(CUcontext ctx) {
    if (!fc_inited()) return fc_err(CUDA_ERROR_NOT_INITIALIZED);
    if (!ctx) {
        if (t_depth) t_depth--;
        return CUDA_SUCCESS;
    }
    if (t_depth) t_stack[t_depth - 1] = ctx;
    else t_stack[t_depth++] = ctx;
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuCtxPushCurrent_v2(CUcontext ctx) {
    FC_INJECT("cuCtxPushCurrent_v2");
    if (!fc_inited()) return fc_err(CUDA_ERROR_NOT_INITIALIZED);
    if (!ctx) return fc_err(CUDA_ERROR_INVALID_VALUE);
    if (t_depth == FC_MAX_DEPTH) return fc_err(CUDA_ERROR_UNKNOWN);
    t_stack[t_depth++] = ctx;
    FC_ADD(&g_st.ctx_pushes, 1);
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuCtxPopCurrent_v2(CUcontext *pctx) {
    if (!fc_inited()) return fc_err(CUDA_ERROR_NOT_INITIALIZED);
    if (!t_depth) return fc_err(CUDA_ERROR_INVALID_CONTEXT);
    t_depth--;
    if (pctx) *pctx = t_stack[t_depth];
    return CUDA_SUCCESS;
}

/* >>device and host memory ---------------------------------------------------- */

static CUresult fc_map(size_t size, int fd, fc_mem *m) {
    void *res = mmap(NULL, size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    void *sh;
    if (res == MAP_FAILED) return CUDA_ERROR_OUT_OF_MEMORY;
    sh = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (sh == MAP_FAILED) {
        munmap(res, size);
        return CUDA_ERROR_MAP_FAILED;
    }
    m->base = (uintptr_t)res;
    m->size = size;
    m->shadow = (char *)sh;
    return CUDA_SUCCESS;
}

static void fc_drain_all(void);

CUresult CUDAAPI cuMemAlloc_v2(CUdeviceptr *dptr, size_t bytesize) {
    struct CUctx_st *c;
    fc_mem *m;
    struct stat st;
    int fd;
    CUresult r;
    FC_INJECT("cuMemAlloc_v2");
    FC_CTX(&c);
    if (!dptr || !bytesize) return fc_err(CUDA_ERROR_INVALID_VALUE);
    m = (fc_mem *)calloc(1, sizeof *m);
    if (!m) return fc_err(CUDA_ERROR_OUT_OF_MEMORY);
    fd = memfd_create("fakecuda", MFD_CLOEXEC);
    if (fd < 0 || ftruncate(fd, (off_t)bytesize) != 0 || fstat(fd, &st) != 0) {
        if (fd >= 0) close(fd);
        free(m);
        return fc_err(CUDA_ERROR_OUT_OF_MEMORY);
    }
    if ((r = fc_map(bytesize, fd, m)) != CUDA_SUCCESS) {
        close(fd);
        free(m);
        return fc_err(r);
    }
    m->fd = fd;
    m->ino = (uint64_t)st.st_ino;
    m->device = c->device;
    m->kind = FC_ALLOC;
    m->refs = 1;
    pthread_mutex_lock(&g_mu);
    m->id = g_next_id++;
    m->next = g_mems;
    g_mems = m;
    pthread_mutex_unlock(&g_mu);
    FC_ADD(&g_st.dev_allocs, 1);
    FC_ADD(&g_st.live_dev_allocs, 1);
    FC_ADD(&g_st.live_dev_bytes, bytesize);
    *dptr = (CUdeviceptr)m->base;
    return CUDA_SUCCESS;
}

static void fc_unmap(fc_mem *m) {
    munmap((void *)m->base, m->size);
    munmap(m->shadow, m->size);
    if (m->fd >= 0) close(m->fd);
    free(m);
}

/* Removes the record based at p of the given kind (g_mu held). */
static fc_mem *fc_unlink(uintptr_t p, int kind) {
    fc_mem **pp;
    for (pp = &g_mems; *pp; pp = &(*pp)->next)
        if ((*pp)->base == p && (*pp)->kind == kind) {
            fc_mem *m = *pp;
            *pp = m->next;
            return m;
        }
    return NULL;
}

CUresult CUDAAPI cuMemFree_v2(CUdeviceptr dptr) {
    fc_mem *m;
    FC_INJECT("cuMemFree_v2");
    FC_CTX(NULL);
    fc_drain_all(); /* no queued copy may touch it afterwards */
    pthread_mutex_lock(&g_mu);
    m = fc_unlink((uintptr_t)dptr, FC_ALLOC);
    pthread_mutex_unlock(&g_mu);
    if (!m) return fc_err(CUDA_ERROR_INVALID_VALUE);
    FC_SUB(&g_st.live_dev_allocs, 1);
    FC_SUB(&g_st.live_dev_bytes, m->size);
    fc_unmap(m);
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuMemHostAlloc(void **pp, size_t bytesize, unsigned int Flags) {
    fc_host *h;
    void *p;
    FC_INJECT("cuMemHostAlloc");
    FC_CTX(NULL);
    if (!pp || !bytesize || (Flags & ~0x7u)) return fc_err(CUDA_ERROR_INVALID_VALUE);
    h = (fc_host *)calloc(1, sizeof *h);
    p = mmap(NULL, bytesize, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (!h || p == MAP_FAILED) {
        free(h);
        if (p != MAP_FAILED) munmap(p, bytesize);
        return fc_err(CUDA_ERROR_OUT_OF_MEMORY);
    }
    h->p = p;
    h->size = bytesize;
    pthread_mutex_lock(&g_mu);
    h->next = g_hosts;
    g_hosts = h;
    pthread_mutex_unlock(&g_mu);
    FC_ADD(&g_st.host_allocs, 1);
    FC_ADD(&g_st.live_host_allocs, 1);
    FC_ADD(&g_st.live_host_bytes, bytesize);
    *pp = p;
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuMemFreeHost(void *p) {
    fc_host **pp, *h = NULL;
    FC_CTX(NULL);
    fc_drain_all();
    pthread_mutex_lock(&g_mu);
    for (pp = &g_hosts; *pp; pp = &(*pp)->next)
        if ((*pp)->p == p) {
            h = *pp;
            *pp = h->next;
            break;
        }
    pthread_mutex_unlock(&g_mu);
    if (!h) return fc_err(CUDA_ERROR_INVALID_VALUE);
    FC_SUB(&g_st.live_host_allocs, 1);
    FC_SUB(&g_st.live_host_bytes, h->size);
    munmap(h->p, h->size);
    free(h);
    return CUDA_SUCCESS;
}

/* Pinned host block containing p (g_mu held). */
static fc_host *fc_find_host(uintptr_t p) {
    fc_host *h;
    for (h = g_hosts; h; h = h->next)
        if (p >= (uintptr_t)h->p && p < (uintptr_t)h->p + h->size) return h;
    return NULL;
}

CUresult CUDAAPI cuMemGetAddressRange_v2(CUdeviceptr *pbase, size_t *psize, CUdeviceptr dptr) {
    fc_mem *m;
    FC_INJECT("cuMemGetAddressRange_v2");
    FC_CTX(NULL);
    pthread_mutex_lock(&g_mu);
    m = fc_find((uintptr_t)dptr, 1, NULL);
    if (m) {
        if (pbase) *pbase = (CUdeviceptr)m->base;
        if (psize) *psize = m->size;
    }
    pthread_mutex_unlock(&g_mu);
    return m ? CUDA_SUCCESS : fc_err(CUDA_ERROR_NOT_FOUND);
}

CUresult CUDAAPI cuPointerGetAttribute(void *data, CUpointer_attribute attribute, CUdeviceptr ptr) {
    fc_mem *m;
    fc_host *h;
    int dev = -1, host = 0;
    FC_CTX(NULL);
    if (!data) return fc_err(CUDA_ERROR_INVALID_VALUE);
    pthread_mutex_lock(&g_mu);
    m = fc_find((uintptr_t)ptr, 1, NULL);
    h = m ? NULL : fc_find_host((uintptr_t)ptr);
    if (m) dev = m->device;
    if (h) host = 1;
    pthread_mutex_unlock(&g_mu);
    if (!m && !h) return fc_err(CUDA_ERROR_INVALID_VALUE); /* pageable: unknown to CUDA */
    switch (attribute) {
    case CU_POINTER_ATTRIBUTE_MEMORY_TYPE:
        *(unsigned int *)data = host ? CU_MEMORYTYPE_HOST : CU_MEMORYTYPE_DEVICE;
        return CUDA_SUCCESS;
    case CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL:
        *(int *)data = host ? 0 : dev;
        return CUDA_SUCCESS;
    default:
        return fc_err(CUDA_ERROR_NOT_SUPPORTED);
    }
}

/* >>streams ------------------------------------------------------------------ */

static void fc_perform(const fc_op *op) {
    size_t k;
    for (k = 0; k < op->rows && op->len; k++)
        memcpy(op->dst + k * op->dpitch, op->src + k * op->spitch, op->len);
}

static void *fc_worker(void *arg) {
    struct CUstream_st *s = (struct CUstream_st *)arg;
    pthread_mutex_lock(&s->mu);
    for (;;) {
        fc_op op;
        while (!s->count && !s->stop) pthread_cond_wait(&s->cv, &s->mu);
        if (!s->count) break; /* stop, drained */
        op = s->q[s->head];
        pthread_mutex_unlock(&s->mu);
        if (g_delay_us > 0) {
            struct timespec ts;
            ts.tv_sec = g_delay_us / 1000000;
            ts.tv_nsec = (long)(g_delay_us % 1000000) * 1000;
            nanosleep(&ts, NULL);
        }
        if (op.fail == CUDA_SUCCESS) fc_perform(&op);
        pthread_mutex_lock(&s->mu);
        if (op.fail != CUDA_SUCCESS && s->err == CUDA_SUCCESS) s->err = op.fail;
        s->head = (s->head + 1) % s->cap;
        s->count--;
        s->done++;
        pthread_cond_broadcast(&s->cv);
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

/* Is s a live stream? (g_mu held) */
static int fc_stream_live(struct CUstream_st *s) {
    struct CUstream_st *x;
    for (x = g_streams; x; x = x->next)
        if (x == s) return x->live;
    return 0;
}

CUresult CUDAAPI cuStreamCreate(CUstream *phStream, unsigned int Flags) {
    struct CUctx_st *c;
    struct CUstream_st *s;
    FC_INJECT("cuStreamCreate");
    FC_CTX(&c);
    if (!phStream || (Flags & ~1u)) return fc_err(CUDA_ERROR_INVALID_VALUE);
    s = (struct CUstream_st *)calloc(1, sizeof *s);
    if (!s) return fc_err(CUDA_ERROR_OUT_OF_MEMORY);
    s->ctx = c;
    s->live = 1;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    if (pthread_create(&s->th, NULL, fc_worker, s) != 0) {
        pthread_mutex_destroy(&s->mu);
        pthread_cond_destroy(&s->cv);
        free(s);
        return fc_err(CUDA_ERROR_OUT_OF_MEMORY);
    }
    pthread_mutex_lock(&g_mu);
    s->next = g_streams;
    g_streams = s;
    pthread_mutex_unlock(&g_mu);
    FC_ADD(&g_st.live_streams, 1);
    *phStream = s;
    return CUDA_SUCCESS;
}

static CUresult fc_stream_wait(struct CUstream_st *s, uint64_t target) {
    CUresult r;
    pthread_mutex_lock(&s->mu);
    while (s->done < target) pthread_cond_wait(&s->cv, &s->mu);
    r = s->err;
    pthread_mutex_unlock(&s->mu);
    return r;
}

static void fc_drain_all(void) {
    struct CUstream_st *s;
    pthread_mutex_lock(&g_mu);
    for (s = g_streams; s; s = s->next) {
        uint64_t t;
        if (!s->live) continue;
        pthread_mutex_lock(&s->mu);
        t = s->enq;
        pthread_mutex_unlock(&s->mu);
        fc_stream_wait(s, t);
    }
    pthread_mutex_unlock(&g_mu);
}

CUresult CUDAAPI cuStreamDestroy_v2(CUstream hStream) {
    int ok;
    FC_CTX(NULL);
    pthread_mutex_lock(&g_mu);
    ok = hStream && fc_stream_live(hStream);
    if (ok) hStream->live = 0; /* kept (not freed) so events recorded on it stay valid */
    pthread_mutex_unlock(&g_mu);
    if (!ok) return fc_err(CUDA_ERROR_INVALID_HANDLE);
    pthread_mutex_lock(&hStream->mu);
    hStream->stop = 1;
    pthread_cond_broadcast(&hStream->cv);
    pthread_mutex_unlock(&hStream->mu);
    pthread_join(hStream->th, NULL);
    pthread_mutex_lock(&hStream->mu);
    free(hStream->q);
    hStream->q = NULL;
    hStream->cap = 0;
    pthread_mutex_unlock(&hStream->mu);
    FC_SUB(&g_st.live_streams, 1);
    return CUDA_SUCCESS;
}

/* Checks a stream argument against the current context. NULL (the legacy
   stream) is accepted when allow_null. */
static CUresult fc_check_stream(CUstream s, int allow_null) {
    struct CUctx_st *c;
    CUresult r = fc_need_ctx(&c);
    int ok;
    if (r != CUDA_SUCCESS) return r;
    if (!s) return allow_null ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&g_mu);
    ok = fc_stream_live(s) && s->ctx == c;
    pthread_mutex_unlock(&g_mu);
    return ok ? CUDA_SUCCESS : CUDA_ERROR_INVALID_HANDLE;
}

CUresult CUDAAPI cuStreamSynchronize(CUstream hStream) {
    CUresult r;
    uint64_t t;
    FC_INJECT("cuStreamSynchronize");
    if ((r = fc_check_stream(hStream, 1)) != CUDA_SUCCESS) return fc_err(r);
    FC_ADD(&g_st.stream_syncs, 1);
    if (!hStream) {
        fc_drain_all();
        return CUDA_SUCCESS;
    }
    pthread_mutex_lock(&hStream->mu);
    t = hStream->enq;
    pthread_mutex_unlock(&hStream->mu);
    return fc_err(fc_stream_wait(hStream, t));
}

CUresult CUDAAPI cuStreamQuery(CUstream hStream) {
    CUresult r;
    if ((r = fc_check_stream(hStream, 1)) != CUDA_SUCCESS) return fc_err(r);
    if (!hStream) return CUDA_SUCCESS;
    pthread_mutex_lock(&hStream->mu);
    r = hStream->err != CUDA_SUCCESS ? hStream->err
        : hStream->done < hStream->enq ? CUDA_ERROR_NOT_READY
                                       : CUDA_SUCCESS;
    pthread_mutex_unlock(&hStream->mu);
    return r == CUDA_ERROR_NOT_READY ? r : fc_err(r);
}

/* Queues (or, on the NULL stream or with FAKECUDA_SYNC, performs) one copy
   whose pointers are already translated. */
static CUresult fc_enqueue_op(struct CUstream_st *s, fc_op op) {
    op.fail = fc_inject("async");
    FC_ADD(&g_st.copies, 1);
    if (!s || g_sync) {
        if (op.fail != CUDA_SUCCESS) {
            if (s) {
                pthread_mutex_lock(&s->mu);
                if (s->err == CUDA_SUCCESS) s->err = op.fail;
                pthread_mutex_unlock(&s->mu);
            }
            return op.fail;
        }
        fc_perform(&op);
        return CUDA_SUCCESS;
    }
    pthread_mutex_lock(&s->mu);
    if (s->count == s->cap) {
        size_t nc = s->cap ? 2 * s->cap : 256, i;
        fc_op *nq = (fc_op *)malloc(nc * sizeof *nq);
        if (!nq) {
            pthread_mutex_unlock(&s->mu);
            return CUDA_ERROR_OUT_OF_MEMORY;
        }
        for (i = 0; i < s->count; i++) nq[i] = s->q[(s->head + i) % s->cap];
        free(s->q);
        s->q = nq;
        s->cap = nc;
        s->head = 0;
    }
    s->q[(s->head + s->count) % s->cap] = op;
    s->count++;
    s->enq++;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    return CUDA_SUCCESS;
}

static CUresult fc_enqueue(struct CUstream_st *s, char *dst, const char *src, size_t len) {
    fc_op op;
    op.dst = dst;
    op.src = src;
    op.len = len;
    op.rows = 1;
    op.spitch = op.dpitch = 0;
    return fc_enqueue_op(s, op);
}

enum { FC_HOST = 1, FC_DEV = 2, FC_EITHER = 3 };

/* Translates [p, p+len): device memory to its mapping, host as is. `want`
   says which kinds are acceptable. */
static CUresult fc_resolve(uintptr_t p, size_t len, int want, char **out, int *is_dev) {
    fc_mem *m;
    int partial;
    if (!p) return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&g_mu);
    m = fc_find(p, len ? len : 1, &partial);
    if (m) *out = m->shadow + (p - m->base);
    pthread_mutex_unlock(&g_mu);
    if (partial) return CUDA_ERROR_INVALID_VALUE; /* runs past the allocation */
    *is_dev = m != NULL;
    if (m && !(want & FC_DEV)) return CUDA_ERROR_INVALID_VALUE;
    if (!m && !(want & FC_HOST)) return CUDA_ERROR_INVALID_VALUE;
    if (!m) *out = (char *)p;
    return CUDA_SUCCESS;
}

static void fc_count_bytes(int src_dev, int dst_dev, size_t n) {
    uint64_t *c = src_dev ? (dst_dev ? &g_st.bytes_d2d : &g_st.bytes_d2h)
                          : (dst_dev ? &g_st.bytes_h2d : &g_st.bytes_h2h);
    FC_ADD(c, n);
}

static CUresult fc_copy(uintptr_t dst, int dst_want, uintptr_t src, int src_want, size_t n,
                        CUstream s, int allow_null) {
    char *d, *sr;
    int dd, sd;
    CUresult r;
    if ((r = fc_check_stream(s, allow_null)) != CUDA_SUCCESS) return r;
    if ((r = fc_resolve(dst, n, dst_want, &d, &dd)) != CUDA_SUCCESS) return r;
    if ((r = fc_resolve(src, n, src_want, &sr, &sd)) != CUDA_SUCCESS) return r;
    if ((r = fc_enqueue(s, d, sr, n)) != CUDA_SUCCESS) return r;
    fc_count_bytes(sd, dd, n);
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuMemcpyAsync(CUdeviceptr dst, CUdeviceptr src, size_t ByteCount, CUstream hStream) {
    FC_INJECT("cuMemcpyAsync");
    FC_ADD(&g_st.async_calls, 1);
    return fc_err(fc_copy((uintptr_t)dst, FC_EITHER, (uintptr_t)src, FC_EITHER, ByteCount,
                          hStream, 1));
}

CUresult CUDAAPI cuMemcpyHtoDAsync_v2(CUdeviceptr dstDevice, const void *srcHost, size_t ByteCount,
                                      CUstream hStream) {
    FC_INJECT("cuMemcpyHtoDAsync_v2");
    FC_ADD(&g_st.async_calls, 1);
    return fc_err(fc_copy((uintptr_t)dstDevice, FC_DEV, (uintptr_t)srcHost, FC_HOST, ByteCount,
                          hStream, 1));
}

CUresult CUDAAPI cuMemcpyDtoHAsync_v2(void *dstHost, CUdeviceptr srcDevice, size_t ByteCount,
                                      CUstream hStream) {
    FC_INJECT("cuMemcpyDtoHAsync_v2");
    FC_ADD(&g_st.async_calls, 1);
    return fc_err(fc_copy((uintptr_t)dstHost, FC_HOST, (uintptr_t)srcDevice, FC_DEV, ByteCount,
                          hStream, 1));
}

CUresult CUDAAPI cuMemcpyDtoDAsync_v2(CUdeviceptr dstDevice, CUdeviceptr srcDevice,
                                      size_t ByteCount, CUstream hStream) {
    FC_INJECT("cuMemcpyDtoDAsync_v2");
    FC_ADD(&g_st.async_calls, 1);
    return fc_err(fc_copy((uintptr_t)dstDevice, FC_DEV, (uintptr_t)srcDevice, FC_DEV, ByteCount,
                          hStream, 1));
}

CUresult CUDAAPI cuMemcpyHtoD_v2(CUdeviceptr dstDevice, const void *srcHost, size_t ByteCount) {
    return fc_err(fc_copy((uintptr_t)dstDevice, FC_DEV, (uintptr_t)srcHost, FC_HOST, ByteCount,
                          NULL, 1));
}

CUresult CUDAAPI cuMemcpyDtoH_v2(void *dstHost, CUdeviceptr srcDevice, size_t ByteCount) {
    return fc_err(fc_copy((uintptr_t)dstHost, FC_HOST, (uintptr_t)srcDevice, FC_DEV, ByteCount,
                          NULL, 1));
}

/* One side of a 2-D copy: its start (base + Y * pitch + X) and the range
   its rows span, translated. */
static CUresult fc_side_2d(CUmemorytype t, const void *host, CUdeviceptr dev, size_t x, size_t y,
                           size_t pitch, size_t w, size_t h, char **out, int *is_dev) {
    uintptr_t base;
    size_t span;
    int want;
    if (t == CU_MEMORYTYPE_HOST) base = (uintptr_t)host, want = FC_HOST;
    else if (t == CU_MEMORYTYPE_DEVICE) base = (uintptr_t)dev, want = FC_DEV;
    else if (t == CU_MEMORYTYPE_UNIFIED) base = (uintptr_t)dev, want = FC_EITHER;
    else return CUDA_ERROR_INVALID_VALUE; /* arrays are not faked */
    if (pitch < w + x || pitch > (size_t)fc_max_pitch()) return CUDA_ERROR_INVALID_VALUE;
    if (h && (h - 1) > (SIZE_MAX - w) / pitch) return CUDA_ERROR_INVALID_VALUE;
    span = h ? (h - 1) * pitch + w : 0;
    return fc_resolve(base + y * pitch + x, span, want, out, is_dev);
}

/* cuMemcpy2DAsync (the _v2 symbol): as documented, pitches at least
   WidthInBytes + X and at most CU_DEVICE_ATTRIBUTE_MAX_PITCH; every row
   inside one allocation (or host memory). Queued as one operation. */
CUresult CUDAAPI cuMemcpy2DAsync_v2(const CUDA_MEMCPY2D *c, CUstream hStream) {
    fc_op op;
    char *d, *sr;
    int dd, sd;
    CUresult r;
    FC_INJECT("cuMemcpy2DAsync_v2");
    if (!c) return fc_err(CUDA_ERROR_INVALID_VALUE);
    if ((r = fc_check_stream(hStream, 1)) != CUDA_SUCCESS) return fc_err(r);
    if (!c->WidthInBytes || !c->Height) return CUDA_SUCCESS;
    if ((r = fc_side_2d(c->srcMemoryType, c->srcHost, c->srcDevice, c->srcXInBytes, c->srcY,
                        c->srcPitch, c->WidthInBytes, c->Height, &sr, &sd)) != CUDA_SUCCESS ||
        (r = fc_side_2d(c->dstMemoryType, c->dstHost, c->dstDevice, c->dstXInBytes, c->dstY,
                        c->dstPitch, c->WidthInBytes, c->Height, &d, &dd)) != CUDA_SUCCESS)
        return fc_err(r);
    op.dst = d;
    op.src = sr;
    op.len = c->WidthInBytes;
    op.rows = c->Height;
    op.spitch = c->srcPitch;
    op.dpitch = c->dstPitch;
    if ((r = fc_enqueue_op(hStream, op)) != CUDA_SUCCESS) return fc_err(r);
    FC_ADD(&g_st.copies_2d, 1);
    FC_ADD(&g_st.rows_2d, c->Height);
    fc_count_bytes(sd, dd, c->WidthInBytes * c->Height);
    return CUDA_SUCCESS;
}

/* Both batch ABIs: checks what the documentation requires, then queues. */
static CUresult fc_batch(CUdeviceptr *dsts, CUdeviceptr *srcs, size_t *sizes, size_t count,
                         CUmemcpyAttributes *attrs, size_t *attrsIdxs, size_t numAttrs,
                         size_t *failIdx, CUstream hStream) {
    size_t i;
    CUresult r;
    if (failIdx) *failIdx = (size_t)-1;
    if (!dsts || !srcs || !sizes || !count || !attrs || !attrsIdxs || !numAttrs ||
        numAttrs > count || attrsIdxs[0] != 0 || !hStream)
        return CUDA_ERROR_INVALID_VALUE;
    for (i = 0; i < numAttrs; i++) {
        if (i && attrsIdxs[i] <= attrsIdxs[i - 1]) return CUDA_ERROR_INVALID_VALUE;
        if (attrsIdxs[i] >= count) return CUDA_ERROR_INVALID_VALUE;
        if (attrs[i].srcAccessOrder < CU_MEMCPY_SRC_ACCESS_ORDER_STREAM ||
            attrs[i].srcAccessOrder > CU_MEMCPY_SRC_ACCESS_ORDER_ANY)
            return CUDA_ERROR_INVALID_VALUE;
    }
    if ((r = fc_check_stream(hStream, 0)) != CUDA_SUCCESS) return r;
    for (i = 0; i < count; i++) { /* all checked before any is queued */
        char *d, *s;
        int dd, sd;
        if ((r = fc_resolve((uintptr_t)dsts[i], sizes[i], FC_EITHER, &d, &dd)) != CUDA_SUCCESS ||
            (r = fc_resolve((uintptr_t)srcs[i], sizes[i], FC_EITHER, &s, &sd)) != CUDA_SUCCESS) {
            if (failIdx) *failIdx = i;
            return r;
        }
    }
    for (i = 0; i < count; i++) {
        char *d, *s;
        int dd, sd;
        fc_resolve((uintptr_t)dsts[i], sizes[i], FC_EITHER, &d, &dd);
        fc_resolve((uintptr_t)srcs[i], sizes[i], FC_EITHER, &s, &sd);
        if ((r = fc_enqueue(hStream, d, s, sizes[i])) != CUDA_SUCCESS) {
            if (failIdx) *failIdx = i;
            return r;
        }
        fc_count_bytes(sd, dd, sizes[i]);
    }
    FC_ADD(&g_st.batches, 1);
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuMemcpyBatchAsync(CUdeviceptr *dsts, CUdeviceptr *srcs, size_t *sizes,
                                    size_t count, CUmemcpyAttributes *attrs, size_t *attrsIdxs,
                                    size_t numAttrs, size_t *failIdx, CUstream hStream) {
    CUresult r;
    FC_INJECT("cuMemcpyBatchAsync");
    if (g_version < 12080) return fc_err(CUDA_ERROR_NOT_SUPPORTED);
    r = fc_batch(dsts, srcs, sizes, count, attrs, attrsIdxs, numAttrs, failIdx, hStream);
    if (r == CUDA_SUCCESS) FC_ADD(&g_st.batches_v1, 1);
    return fc_err(r);
}

CUresult CUDAAPI cuMemcpyBatchAsync_v2(CUdeviceptr *dsts, CUdeviceptr *srcs, size_t *sizes,
                                       size_t count, CUmemcpyAttributes *attrs, size_t *attrsIdxs,
                                       size_t numAttrs, CUstream hStream) {
    FC_INJECT("cuMemcpyBatchAsync_v2");
    if (g_version < 13000) return fc_err(CUDA_ERROR_NOT_SUPPORTED);
    return fc_err(fc_batch(dsts, srcs, sizes, count, attrs, attrsIdxs, numAttrs, NULL, hStream));
}

/* >>events ------------------------------------------------------------------- */

CUresult CUDAAPI cuEventCreate(CUevent *phEvent, unsigned int Flags) {
    struct CUevent_st *e;
    FC_INJECT("cuEventCreate");
    FC_CTX(NULL);
    if (!phEvent || (Flags & ~0xfu)) return fc_err(CUDA_ERROR_INVALID_VALUE);
    e = (struct CUevent_st *)calloc(1, sizeof *e);
    if (!e) return fc_err(CUDA_ERROR_OUT_OF_MEMORY);
    FC_ADD(&g_st.live_events, 1);
    *phEvent = e;
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuEventDestroy_v2(CUevent hEvent) {
    FC_CTX(NULL);
    if (!hEvent) return fc_err(CUDA_ERROR_INVALID_HANDLE);
    free(hEvent);
    FC_SUB(&g_st.live_events, 1);
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuEventRecord(CUevent hEvent, CUstream hStream) {
    CUresult r;
    FC_INJECT("cuEventRecord");
    if (!hEvent) return fc_err(CUDA_ERROR_INVALID_HANDLE);
    if ((r = fc_check_stream(hStream, 1)) != CUDA_SUCCESS) return fc_err(r);
    FC_ADD(&g_st.event_records, 1);
    hEvent->s = hStream;
    if (hStream) {
        pthread_mutex_lock(&hStream->mu);
        hEvent->target = hStream->enq;
        pthread_mutex_unlock(&hStream->mu);
    }
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuEventQuery(CUevent hEvent) {
    CUresult r;
    struct CUstream_st *s;
    FC_INJECT("cuEventQuery");
    FC_CTX(NULL);
    if (!hEvent) return fc_err(CUDA_ERROR_INVALID_HANDLE);
    if (!(s = hEvent->s)) return CUDA_SUCCESS;
    pthread_mutex_lock(&s->mu);
    r = s->done >= hEvent->target ? s->err : CUDA_ERROR_NOT_READY;
    if (s->err != CUDA_SUCCESS) r = s->err;
    pthread_mutex_unlock(&s->mu);
    return r == CUDA_ERROR_NOT_READY ? r : fc_err(r);
}

CUresult CUDAAPI cuEventSynchronize(CUevent hEvent) {
    FC_INJECT("cuEventSynchronize");
    FC_CTX(NULL);
    if (!hEvent) return fc_err(CUDA_ERROR_INVALID_HANDLE);
    FC_ADD(&g_st.event_syncs, 1);
    if (!hEvent->s) return CUDA_SUCCESS;
    return fc_err(fc_stream_wait(hEvent->s, hEvent->target));
}

/* >>ipc ------------------------------------------------------------------------ */

typedef struct fc_ipc {
    char magic[8];
    uint32_t version;
    int32_t pid, fd, device;
    uint64_t ino, size, id;
    uint64_t pad[2];
} fc_ipc;
_Static_assert(sizeof(fc_ipc) == CU_IPC_HANDLE_SIZE, "fake IPC handle is 64 bytes");
static const char fc_magic[8] = {'F', 'A', 'K', 'E', 'C', 'U', 'D', 'A'};

CUresult CUDAAPI cuIpcGetMemHandle(CUipcMemHandle *pHandle, CUdeviceptr dptr) {
    fc_mem *m;
    fc_ipc h;
    FC_INJECT("cuIpcGetMemHandle");
    FC_CTX(NULL);
    if (!pHandle) return fc_err(CUDA_ERROR_INVALID_VALUE);
    memset(&h, 0, sizeof h);
    pthread_mutex_lock(&g_mu);
    m = fc_find((uintptr_t)dptr, 1, NULL);
    if (m && m->kind == FC_ALLOC) {
        memcpy(h.magic, fc_magic, sizeof h.magic);
        h.version = 1;
        h.pid = (int32_t)getpid();
        h.fd = m->fd;
        h.device = m->device;
        h.ino = m->ino;
        h.size = m->size;
        h.id = m->id;
    }
    pthread_mutex_unlock(&g_mu);
    if (!m || m->kind != FC_ALLOC) return fc_err(CUDA_ERROR_INVALID_VALUE);
    memcpy(pHandle->reserved, &h, sizeof h);
    FC_ADD(&g_st.ipc_exports, 1);
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuIpcOpenMemHandle_v2(CUdeviceptr *pdptr, CUipcMemHandle handle, unsigned int Flags) {
    struct CUctx_st *c;
    fc_ipc h;
    fc_mem *m;
    char path[64];
    struct stat st;
    int fd;
    CUresult r;
    FC_INJECT("cuIpcOpenMemHandle_v2");
    FC_CTX(&c);
    if (!pdptr || Flags != CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS) return fc_err(CUDA_ERROR_INVALID_VALUE);
    memcpy(&h, handle.reserved, sizeof h);
    if (memcmp(h.magic, fc_magic, sizeof h.magic) || h.version != 1 || !h.size)
        return fc_err(CUDA_ERROR_INVALID_HANDLE);
    if (h.pid == (int32_t)getpid()) return fc_err(CUDA_ERROR_INVALID_CONTEXT);
    pthread_mutex_lock(&g_mu);
    for (m = g_mems; m; m = m->next)
        if (m->kind == FC_IMPORT && m->src_pid == h.pid && m->src_id == h.id &&
            m->ctx_device == c->device) {
            m->refs++;
            *pdptr = (CUdeviceptr)m->base;
            pthread_mutex_unlock(&g_mu);
            FC_ADD(&g_st.ipc_opens, 1);
            return CUDA_SUCCESS;
        }
    pthread_mutex_unlock(&g_mu);
    snprintf(path, sizeof path, "/proc/%d/fd/%d", (int)h.pid, (int)h.fd);
    fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd < 0) return fc_err(CUDA_ERROR_INVALID_HANDLE); /* exporter gone */
    if (fstat(fd, &st) != 0 || (uint64_t)st.st_ino != h.ino || (uint64_t)st.st_size != h.size) {
        close(fd); /* the descriptor number was reused: not our allocation any more */
        return fc_err(CUDA_ERROR_INVALID_HANDLE);
    }
    m = (fc_mem *)calloc(1, sizeof *m);
    if (!m) {
        close(fd);
        return fc_err(CUDA_ERROR_OUT_OF_MEMORY);
    }
    r = fc_map((size_t)h.size, fd, m);
    close(fd); /* the mapping keeps the memory */
    if (r != CUDA_SUCCESS) {
        free(m);
        return fc_err(r);
    }
    m->fd = -1;
    m->ino = h.ino;
    m->device = h.device >= 0 && h.device < g_ndev ? h.device : c->device;
    m->ctx_device = c->device;
    m->kind = FC_IMPORT;
    m->refs = 1;
    m->src_pid = h.pid;
    m->src_id = h.id;
    pthread_mutex_lock(&g_mu);
    m->id = g_next_id++;
    m->next = g_mems;
    g_mems = m;
    pthread_mutex_unlock(&g_mu);
    FC_ADD(&g_st.ipc_opens, 1);
    FC_ADD(&g_st.live_ipc_maps, 1);
    *pdptr = (CUdeviceptr)m->base;
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuIpcCloseMemHandle(CUdeviceptr dptr) {
    fc_mem *m, *gone = NULL;
    FC_INJECT("cuIpcCloseMemHandle");
    FC_CTX(NULL);
    fc_drain_all();
    pthread_mutex_lock(&g_mu);
    for (m = g_mems; m; m = m->next)
        if (m->kind == FC_IMPORT && m->base == (uintptr_t)dptr) break;
    if (m && --m->refs == 0) gone = fc_unlink(m->base, FC_IMPORT);
    pthread_mutex_unlock(&g_mu);
    if (!m) return fc_err(CUDA_ERROR_INVALID_VALUE);
    FC_ADD(&g_st.ipc_closes, 1);
    if (gone) {
        FC_SUB(&g_st.live_ipc_maps, 1);
        fc_unmap(gone);
    }
    return CUDA_SUCCESS;
}

/* >>dma-buf --------------------------------------------------------------------- */

CUresult CUDAAPI cuMemGetHandleForAddressRange(void *handle, CUdeviceptr dptr, size_t size,
                                               CUmemRangeHandleType handleType,
                                               unsigned long long flags) {
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    fc_mem *m;
    int fd = -1;
    FC_INJECT("cuMemGetHandleForAddressRange");
    FC_CTX(NULL);
    if (!handle || handleType != CU_MEM_RANGE_HANDLE_TYPE_DMA_BUF_FD || flags > 1 || !size ||
        ((uintptr_t)dptr & (page - 1)) || (size & (page - 1)))
        return fc_err(CUDA_ERROR_INVALID_VALUE);
    pthread_mutex_lock(&g_mu);
    m = fc_find((uintptr_t)dptr, 1, NULL);
    /* the range may end at the allocation's end rounded up to a page */
    if (m && (uintptr_t)dptr + size > ((m->base + m->size + page - 1) & ~(page - 1))) m = NULL;
    if (m && fc_env_int("FAKECUDA_DMABUF", 0) == 2 && m->fd >= 0 && (uintptr_t)dptr == m->base)
        fd = fcntl(m->fd, F_DUPFD_CLOEXEC, 0);
    pthread_mutex_unlock(&g_mu);
    if (!m) return fc_err(CUDA_ERROR_INVALID_VALUE);
    FC_ADD(&g_st.dmabuf_calls, 1);
    __atomic_store_n(&g_st.dmabuf_last_ptr, (uint64_t)dptr, __ATOMIC_RELAXED);
    __atomic_store_n(&g_st.dmabuf_last_size, (uint64_t)size, __ATOMIC_RELAXED);
    if (fd < 0) return fc_err(CUDA_ERROR_NOT_SUPPORTED); /* no dma-buf exporter on host memory */
    FC_ADD(&g_st.dmabuf_exports, 1);
    *(int *)handle = fd;
    return CUDA_SUCCESS;
}

/* >>test interface ------------------------------------------------------------- */

int fakecuda_get_stats(struct fakecuda_stats *out) {
    uint64_t *d = (uint64_t *)out, *s = (uint64_t *)&g_st;
    size_t i;
    if (!out) return -1;
    for (i = 0; i < sizeof *out / sizeof(uint64_t); i++) d[i] = __atomic_load_n(&s[i], __ATOMIC_RELAXED);
    return 0;
}

void fakecuda_reset_stats(void) {
    uint64_t *s = (uint64_t *)&g_st;
    size_t i, n = offsetof(struct fakecuda_stats, live_dev_allocs) / sizeof(uint64_t);
    for (i = 0; i < n; i++) __atomic_store_n(&s[i], 0, __ATOMIC_RELAXED);
}

void *fakecuda_host_view(const void *dev_ptr, size_t len) {
    fc_mem *m;
    void *p = NULL;
    pthread_mutex_lock(&g_mu);
    m = fc_find((uintptr_t)dev_ptr, len ? len : 1, NULL);
    if (m) p = m->shadow + ((uintptr_t)dev_ptr - m->base);
    pthread_mutex_unlock(&g_mu);
    return p;
}

int fakecuda_inject(const char *fn, int cuda_error, int skip) {
    pthread_mutex_lock(&g_mu);
    snprintf(g_inj_fn, sizeof g_inj_fn, "%s", fn ? fn : "");
    g_inj_err = (CUresult)cuda_error;
    g_inj_skip = skip < 0 ? 0 : skip;
    pthread_mutex_unlock(&g_mu);
    return 0;
}

int fakecuda_ctx_depth(void) { return t_depth; }
