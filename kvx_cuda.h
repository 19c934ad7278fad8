/* kvx_cuda.h - v0.1.0 - KV pools in GPU memory: pinned staging, CUDA IPC, dma-buf

   What transports need when KV buffers live in GPU memory
   (kvx_buffer.mem == KVX_MEM_CUDA):
   - staging: a kvx_mem_ops (kvx_cuda_mem_ops) that CPU-side transports
     (file, tcp, the block store) use to move pages between GPU memory and
     pinned host buffers, in batches of asynchronous copies with one
     synchronisation per batch;
   - CUDA IPC: export a KV buffer's memory as a 64-byte handle, import a
     peer's handle (same node, another process), and copy plan spans device
     to device on a stream, queued without blocking, with completion tickets
     (what the intra-node `cuda` transport is made of);
   - dma-buf: a file descriptor for a range of GPU memory, for
     ibv_reg_dmabuf_mr (GPU memory registered with an RDMA NIC).

   DO THIS
       #define KVX_IMPLEMENTATION
       #include "kvx_cuda.h"            (includes kvx.h)
     and compile that one file with -DKVX_WITH_CUDA -I<CUDA toolkit>/include.
     The CUDA headers are needed for types only: libcuda is loaded at run
     time, so the program starts (and everything host-only works) on a
     machine without an NVIDIA driver; kvx_cuda_create then fails with a
     sentence that says so. Without -DKVX_WITH_CUDA everything compiles and
     every entry point returns KVX_ERR_NOT_COMPILED with a sentence naming
     the macro. No other file needs the CUDA headers.

       kvx_cuda_desc cd = {0};
       kvx_engine_desc d = {0};
       if (kvx_cuda_mem_ops(&d.mem, &cd, why, sizeof why)) fail(why);
       ...                                   d.layout has KVX_MEM_CUDA buffers
       kvx_engine_create(&d, &e, why, sizeof why);
       ...
       kvx_engine_destroy(e);
       kvx_cuda_mem_ops_release(&d.mem);

   COMPILE-TIME MACROS
     KVX_WITH_CUDA            compile the CUDA support in (needs <cuda.h>,
                              CUDA 11.0 or newer headers)
     KVX_NO_RUNTIME_LINKING   call the driver API directly instead of
                              loading libcuda with dlopen: link with -lcuda.
                              Optional entry points that the headers declare
                              (cuMemcpyBatchAsync with CUDA >= 12.8 headers,
                              cuMemGetHandleForAddressRange with >= 11.7) are
                              then linked too: the driver must be at least
                              as new as the headers.
     KVX_CUDA_MAX_DEVICES     most GPU ordinals a process uses (default 64)
     KVX_CUDA_BATCH_MAX       most copies in one cuMemcpyBatchAsync (4096)

   ENVIRONMENT (read once in kvx_cuda_create; override the desc)
     KVX_CUDA_LIBRARY         the driver library to load      (libcuda.so.1)
     KVX_CUDA_STAGING_BYTES   most bytes of pinned host memory that
                              host_alloc holds at once, all blocks
                              together; a suffix K, M or G is allowed
                                                             (256M)
     KVX_CUDA_BATCH           0: never use cuMemcpyBatchAsync, one
                              asynchronous copy per piece instead; 1: use it
                              where the driver has it (driver >= 12.8)  (1)
     KVX_LOG_LEVEL            error|warn|info|debug (desc.logger.level) (warn)

   HOW IT USES THE DRIVER
     Exact exported symbols are resolved with dlsym, never the unversioned
     names the headers rename (cuMemAlloc is cuMemAlloc_v2, cuIpcOpenMemHandle
     is cuIpcOpenMemHandle_v2, cuMemcpyBatchAsync has two ABIs: the 12.8 one
     exported as cuMemcpyBatchAsync, with a failIdx argument, and the 13.0 one
     exported as cuMemcpyBatchAsync_v2; which one is used follows the driver
     version; a driver that answers CUDA_ERROR_NOT_SUPPORTED to it gets one
     copy per piece from then on, with one warning). cuGetProcAddress is not
     needed for any of that and is not used.
     Contexts: the primary context of each device, retained on first use and
     released by kvx_cuda_destroy; every call that talks to the driver makes
     it current on the calling thread for the duration of the call (push/pop
     when another context was current, so a caller's context is left as it
     was). Copies run on non-blocking streams owned by kvx: they do not wait
     for the engine's own streams, so the engine must have finished writing
     (or stopped reading) the pages before it hands them to kvx, as with
     every transport. Pinned staging memory is cuMemHostAlloc'd with
     CU_MEMHOSTALLOC_PORTABLE, pooled, and kept until kvx_cuda_destroy.

   THREAD SAFETY
     A kvx_cuda and the kvx_mem_ops filled from it may be used from any
     number of threads at once. A kvx_cuda_stream is used by one thread at a
     time. kvx_mem_ops.copy blocks until its batch is done; kvx_cuda_copy_spans
     and kvx_cuda_stream_done never wait for copies.

   ERRORS
     Driver failures return KVX_ERR_TRANSPORT (KVX_ERR_NO_MEMORY for
     CUDA_ERROR_OUT_OF_MEMORY) with a sentence holding what was attempted and
     the driver's error name and text ("copies on GPU 0 (cuStreamSynchronize)
     failed: CUDA_ERROR_ILLEGAL_ADDRESS (an illegal memory access was
     encountered) [error 700]"). No driver, or a driver without a device:
     KVX_ERR_NOT_FOUND. Bad arguments: KVX_ERR_INVALID_ARGUMENT or
     KVX_ERR_OUT_OF_RANGE.

   LICENSE: MIT, as kvx.h.
*/
#ifndef KVX_CUDA_H_INCLUDED
#define KVX_CUDA_H_INCLUDED

#include "kvx.h"

#if KVX_VERSION_MAJOR != 0
#error "kvx_cuda.h needs kvx.h major version 0"
#endif

#ifdef __cplusplus
extern "C" {
#endif

#define KVX_CUDA_IPC_HANDLE_BYTES 64 /* = CU_IPC_HANDLE_SIZE */

typedef struct kvx_cuda kvx_cuda;               /* a loaded driver and its pools */
typedef struct kvx_cuda_stream kvx_cuda_stream; /* a stream for kvx_cuda_copy_spans */

/* Settings. Zero fields mean the documented default; the environment
   variables above override them. */
typedef struct kvx_cuda_desc {
    const char *library;    /* KVX_CUDA_LIBRARY, "libcuda.so.1" */
    uint64_t staging_bytes; /* KVX_CUDA_STAGING_BYTES, 256 MiB */
    int no_batch;           /* KVX_CUDA_BATCH=0: 1 = never cuMemcpyBatchAsync */
    kvx_allocator allocator;
    kvx_logger logger;      /* subsystem "kvx.cuda" */
} kvx_cuda_desc;

/* >>setup ------------------------------------------------------------------- */

/* Loads the driver, calls cuInit and counts the devices. Fails with
   KVX_ERR_NOT_FOUND and a sentence when there is no driver ("no CUDA driver:
   cannot load libcuda.so.1 (...); KV buffers in GPU memory need an NVIDIA
   driver"), when the library lacks an entry point kvx needs, or when there
   is no device; KVX_ERR_BAD_CONFIG when a KVX_CUDA_* variable does not
   parse. *out is NULL on failure. May block (driver start-up). Thread-safe. */
KVX_API kvx_result kvx_cuda_create(const kvx_cuda_desc *desc, kvx_cuda **out, char *why,
                                   size_t why_len);

/* Releases pinned staging memory, streams, and the primary contexts it
   retained. Streams from kvx_cuda_stream_create must be destroyed first;
   memory from kvx_cuda_alloc and IPC imports should be released first.
   NULL ok. */
KVX_API void kvx_cuda_destroy(kvx_cuda *cu);

/* Creates a kvx_cuda (as kvx_cuda_create) and fills *out with its staging
   functions for kvx_engine_desc.mem: copy moves pieces between GPU memory and
   host memory (host_alloc'd, pinned) with asynchronous copies on a pooled
   stream of the piece's device, cuMemcpyBatchAsync where the driver has it,
   and waits once per device per call; host_alloc hands out pinned memory
   from a pool bounded by staging_bytes (NULL when the bound is reached).
   *out is zeroed on failure. Release with kvx_cuda_mem_ops_release after the
   engines that use it are destroyed. */
KVX_API kvx_result kvx_cuda_mem_ops(kvx_mem_ops *out, const kvx_cuda_desc *desc, char *why,
                                    size_t why_len);
/* Destroys the kvx_cuda behind ops (when kvx_cuda_mem_ops filled it) and
   zeroes *ops. NULL or zeroed ops ok. */
KVX_API void kvx_cuda_mem_ops_release(kvx_mem_ops *ops);
/* The kvx_cuda behind mem ops that kvx_cuda_mem_ops filled, or NULL (other
   ops, zeroed ops). This is how a transport reaches the engine's CUDA
   context: kvx_cuda_from_mem_ops(&kvx_engine_settings(e)->mem). */
KVX_API kvx_cuda *kvx_cuda_from_mem_ops(const kvx_mem_ops *ops);

typedef struct kvx_cuda_info {
    int driver_version;  /* cuDriverGetVersion: 12080 = 12.8 */
    int device_count;
    int batch;           /* 1 = cuMemcpyBatchAsync is used, 0 = one copy per piece */
    int dmabuf_entry;    /* 1 = the driver has cuMemGetHandleForAddressRange */
    uint64_t staging_bytes; /* the bound in effect */
    char library[256];   /* the library loaded ("(linked)" with KVX_NO_RUNTIME_LINKING) */
} kvx_cuda_info;
KVX_API kvx_result kvx_cuda_get_info(const kvx_cuda *cu, kvx_cuda_info *out);

/* Counters since creation (monotonic except the staging_held gauge). */
typedef struct kvx_cuda_stats {
    uint64_t copy_calls;        /* kvx_mem_ops.copy calls */
    uint64_t pieces_to_host, bytes_to_host;
    uint64_t pieces_to_device, bytes_to_device;
    uint64_t span_calls, spans, span_bytes; /* kvx_cuda_copy_spans */
    uint64_t driver_batches;    /* cuMemcpyBatchAsync calls */
    uint64_t driver_copies;     /* single asynchronous copy calls */
    uint64_t syncs;             /* stream or event waits */
    uint64_t staging_held;      /* pinned bytes the pool holds now */
    uint64_t staging_peak;
    uint64_t staging_refused;   /* host_alloc calls answered NULL */
} kvx_cuda_stats;
KVX_API void kvx_cuda_stats_get(const kvx_cuda *cu, kvx_cuda_stats *out);

/* >>device memory ------------------------------------------------------------ */

/* cuMemAlloc on `device` (for examples, tests and benchmarks: engines bring
   their own pools). Thread-safe. */
KVX_API kvx_result kvx_cuda_alloc(kvx_cuda *cu, int device, size_t size, void **dev_ptr,
                                  char *why, size_t why_len);
KVX_API void kvx_cuda_free(kvx_cuda *cu, int device, void *dev_ptr); /* NULL ok */

/* Checks this process's own pool against the driver: every KVX_MEM_CUDA
   buffer is device memory of the device it names and [base, base + length)
   lies inside one allocation; no KVX_MEM_HOST buffer is device memory (a
   CPU transport would fault on it). KVX_ERR_INVALID_ARGUMENT with a sentence
   naming the buffer otherwise. Thread-safe.
   kvx_buffer.device is the GPU whose context kvx uses to reach the memory:
   for a layout built on IPC imports that is the device it was imported into,
   which need not be where the memory is, so such layouts are not checked
   with this. */
KVX_API kvx_result kvx_cuda_layout_check(kvx_cuda *cu, const kvx_layout *l, char *why,
                                         size_t why_len);

/* >>ipc ---------------------------------------------------------------------- */

/* Exports the allocation that contains dev_ptr (on `device`) as a CUDA IPC
   handle (cuIpcGetMemHandle). A handle names a whole allocation: *offset is
   dev_ptr minus the allocation's base and *alloc_len the allocation's size
   (cuMemGetAddressRange), so the importer finds dev_ptr at base + offset and
   can bound what the peer may touch. offset / alloc_len may be NULL. The
   handle stays valid while the allocation lives. Thread-safe. */
KVX_API kvx_result kvx_cuda_ipc_export(kvx_cuda *cu, int device, void *dev_ptr,
                                       uint8_t handle[KVX_CUDA_IPC_HANDLE_BYTES],
                                       uint64_t *offset, uint64_t *alloc_len, char *why,
                                       size_t why_len);

/* Maps a handle exported by another process on this node into this process,
   in the primary context of `device` (peer access is enabled lazily when the
   memory is on another GPU). *dev_base is the base of the exporter's
   allocation. A layout built on it names `device` in kvx_buffer.device (the
   context kvx reaches it through). Importing the same handle again returns
   the same base and counts a reference (the driver does). A handle from
   this same process is refused by the driver. Thread-safe. */
KVX_API kvx_result kvx_cuda_ipc_import(kvx_cuda *cu, const uint8_t handle[KVX_CUDA_IPC_HANDLE_BYTES],
                                       int device, void **dev_base, char *why, size_t why_len);
/* Drops one reference of an import (cuIpcCloseMemHandle). */
KVX_API kvx_result kvx_cuda_ipc_close(kvx_cuda *cu, int device, void *dev_base, char *why,
                                      size_t why_len);

/* >>spans -------------------------------------------------------------------- */

/* A non-blocking stream of `device`, with the scratch space its copies need
   and a ring of events for completion tickets. Thread-safe to create. */
KVX_API kvx_result kvx_cuda_stream_create(kvx_cuda *cu, int device, kvx_cuda_stream **out,
                                          char *why, size_t why_len);
/* Waits for the stream's copies, then releases it. NULL ok. */
KVX_API void kvx_cuda_stream_destroy(kvx_cuda_stream *s);

/* Queues the copy of every span: spans[i].length bytes from
   src->buffers[b].base + src_offset to dst->buffers[b].base + dst_offset,
   b = spans[i].buffer (a kvx_plan from kvx_plan_pages: src is this side's
   layout, dst the peer's with imported bases). Any memory the driver can
   address works (device, imported, pinned host). Every span is checked
   against both layouts' buffer lengths first (KVX_ERR_OUT_OF_RANGE, nothing
   queued). Uses cuMemcpyBatchAsync where the driver has it, else one
   cuMemcpyAsync per span. Returns once queued, without waiting; *ticket
   (may be NULL) receives this submission's number, 1, 2, 3... per stream,
   for kvx_cuda_stream_done / _wait. On a driver error the stream is waited
   for before returning, so no copy of this call is still running. */
KVX_API kvx_result kvx_cuda_copy_spans(kvx_cuda_stream *s, const kvx_layout *src,
                                       const kvx_layout *dst, const kvx_span *spans, size_t n,
                                       uint64_t *ticket, char *why, size_t why_len);

/* Non-blocking: *done = 1 when every copy of submissions up to `ticket`
   (0 = everything queued so far) has finished, 0 while some still run. A
   copy that failed on the device returns KVX_ERR_TRANSPORT with the driver's
   error. */
KVX_API kvx_result kvx_cuda_stream_done(kvx_cuda_stream *s, uint64_t ticket, int *done,
                                        char *why, size_t why_len);
/* Blocks until submissions up to `ticket` (0 = all) finished. */
KVX_API kvx_result kvx_cuda_stream_wait(kvx_cuda_stream *s, uint64_t ticket, char *why,
                                        size_t why_len);

/* >>dma-buf ------------------------------------------------------------------ */

/* A dma-buf file descriptor covering [dev_ptr, dev_ptr + len) rounded out to
   host pages (cuMemGetHandleForAddressRange with
   CU_MEM_RANGE_HANDLE_TYPE_DMA_BUF_FD), for
   ibv_reg_dmabuf_mr(pd, *offset, len, (uint64_t)dev_ptr, *fd, access).
   *offset is dev_ptr minus the start of the rounded range; the rounded
   range must stay inside the allocation (pools are whole pages in
   practice). The caller closes *fd. KVX_ERR_TRANSPORT with a sentence when the driver or the device has
   no dma-buf support (use nvidia-peermem then); KVX_ERR_OUT_OF_RANGE when
   the range leaves its allocation. Thread-safe. */
KVX_API kvx_result kvx_cuda_dmabuf_fd(kvx_cuda *cu, int device, void *dev_ptr, size_t len,
                                      int *fd, uint64_t *offset, char *why, size_t why_len);

#ifdef __cplusplus
}
#endif
#endif /* KVX_CUDA_H_INCLUDED */

/* ======================================================================== */
/*                             IMPLEMENTATION                               */
/* ======================================================================== */
#if defined(KVX_IMPLEMENTATION) && !defined(KVX_CUDA_IMPL_INCLUDED)
#define KVX_CUDA_IMPL_INCLUDED

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef __cplusplus
extern "C" {
#endif

#if !defined(KVX_WITH_CUDA)

/* >>cuda: not compiled --------------------------------------------------------- */

static kvx_result kvx__cu_not_compiled(char *why, size_t wl) {
    kvx__set_why(why, wl, "kvx_cuda.h was compiled without KVX_WITH_CUDA: build the file that "
                          "defines KVX_IMPLEMENTATION with -DKVX_WITH_CUDA -I<CUDA toolkit>/include "
                          "for KV buffers in GPU memory");
    return KVX_ERR_NOT_COMPILED;
}

KVX_API kvx_result kvx_cuda_create(const kvx_cuda_desc *desc, kvx_cuda **out, char *why,
                                   size_t why_len) {
    (void)desc;
    if (out) *out = NULL;
    return kvx__cu_not_compiled(why, why_len);
}
KVX_API void kvx_cuda_destroy(kvx_cuda *cu) { (void)cu; }
KVX_API kvx_result kvx_cuda_mem_ops(kvx_mem_ops *out, const kvx_cuda_desc *desc, char *why,
                                    size_t why_len) {
    (void)desc;
    if (out) memset(out, 0, sizeof *out);
    return kvx__cu_not_compiled(why, why_len);
}
KVX_API void kvx_cuda_mem_ops_release(kvx_mem_ops *ops) { (void)ops; }
KVX_API kvx_cuda *kvx_cuda_from_mem_ops(const kvx_mem_ops *ops) {
    (void)ops;
    return NULL;
}
KVX_API kvx_result kvx_cuda_get_info(const kvx_cuda *cu, kvx_cuda_info *out) {
    (void)cu;
    if (out) memset(out, 0, sizeof *out);
    return KVX_ERR_NOT_COMPILED;
}
KVX_API void kvx_cuda_stats_get(const kvx_cuda *cu, kvx_cuda_stats *out) {
    (void)cu;
    if (out) memset(out, 0, sizeof *out);
}
KVX_API kvx_result kvx_cuda_alloc(kvx_cuda *cu, int device, size_t size, void **dev_ptr,
                                  char *why, size_t why_len) {
    (void)cu; (void)device; (void)size;
    if (dev_ptr) *dev_ptr = NULL;
    return kvx__cu_not_compiled(why, why_len);
}
KVX_API void kvx_cuda_free(kvx_cuda *cu, int device, void *dev_ptr) {
    (void)cu; (void)device; (void)dev_ptr;
}
KVX_API kvx_result kvx_cuda_layout_check(kvx_cuda *cu, const kvx_layout *l, char *why,
                                         size_t why_len) {
    (void)cu; (void)l;
    return kvx__cu_not_compiled(why, why_len);
}
KVX_API kvx_result kvx_cuda_ipc_export(kvx_cuda *cu, int device, void *dev_ptr,
                                       uint8_t handle[KVX_CUDA_IPC_HANDLE_BYTES],
                                       uint64_t *offset, uint64_t *alloc_len, char *why,
                                       size_t why_len) {
    (void)cu; (void)device; (void)dev_ptr; (void)handle; (void)offset; (void)alloc_len;
    return kvx__cu_not_compiled(why, why_len);
}
KVX_API kvx_result kvx_cuda_ipc_import(kvx_cuda *cu, const uint8_t handle[KVX_CUDA_IPC_HANDLE_BYTES],
                                       int device, void **dev_base, char *why, size_t why_len) {
    (void)cu; (void)handle; (void)device;
    if (dev_base) *dev_base = NULL;
    return kvx__cu_not_compiled(why, why_len);
}
KVX_API kvx_result kvx_cuda_ipc_close(kvx_cuda *cu, int device, void *dev_base, char *why,
                                      size_t why_len) {
    (void)cu; (void)device; (void)dev_base;
    return kvx__cu_not_compiled(why, why_len);
}
KVX_API kvx_result kvx_cuda_stream_create(kvx_cuda *cu, int device, kvx_cuda_stream **out,
                                          char *why, size_t why_len) {
    (void)cu; (void)device;
    if (out) *out = NULL;
    return kvx__cu_not_compiled(why, why_len);
}
KVX_API void kvx_cuda_stream_destroy(kvx_cuda_stream *s) { (void)s; }
KVX_API kvx_result kvx_cuda_copy_spans(kvx_cuda_stream *s, const kvx_layout *src,
                                       const kvx_layout *dst, const kvx_span *spans, size_t n,
                                       uint64_t *ticket, char *why, size_t why_len) {
    (void)s; (void)src; (void)dst; (void)spans; (void)n; (void)ticket;
    return kvx__cu_not_compiled(why, why_len);
}
KVX_API kvx_result kvx_cuda_stream_done(kvx_cuda_stream *s, uint64_t ticket, int *done,
                                        char *why, size_t why_len) {
    (void)s; (void)ticket;
    if (done) *done = 0;
    return kvx__cu_not_compiled(why, why_len);
}
KVX_API kvx_result kvx_cuda_stream_wait(kvx_cuda_stream *s, uint64_t ticket, char *why,
                                        size_t why_len) {
    (void)s; (void)ticket;
    return kvx__cu_not_compiled(why, why_len);
}
KVX_API kvx_result kvx_cuda_dmabuf_fd(kvx_cuda *cu, int device, void *dev_ptr, size_t len,
                                      int *fd, uint64_t *offset, char *why, size_t why_len) {
    (void)cu; (void)device; (void)dev_ptr; (void)len;
    if (fd) *fd = -1;
    if (offset) *offset = 0;
    return kvx__cu_not_compiled(why, why_len);
}

#else /* KVX_WITH_CUDA */

#include <cuda.h>
#include <unistd.h>
#include <stdarg.h>
#include <strings.h>
#if !defined(KVX_NO_RUNTIME_LINKING)
#include <dlfcn.h>
#endif

#if CUDA_VERSION < 11000
#error "kvx_cuda.h needs CUDA 11.0 or newer headers (cuda.h)"
#endif

#ifndef KVX_CUDA_MAX_DEVICES
#define KVX_CUDA_MAX_DEVICES 64
#endif
#ifndef KVX_CUDA_BATCH_MAX
#define KVX_CUDA_BATCH_MAX 4096
#endif
#define KVX__CU_MAGIC 0x6b76786375646131ull /* "kvxcuda1" */
#define KVX__CU_SUB "kvx.cuda"

/* >>cuda: driver entry points ------------------------------------------------- */

/* Every entry point kvx calls, typed from the prototypes in cuda.h. The
   column "exported" is the exact symbol resolved with dlsym (cuda.h renames
   most of them with macros: cuMemAlloc is really cuMemAlloc_v2). */
#if CUDA_VERSION >= 12080
typedef CUresult(CUDAAPI *kvx__pfn_batch_v1)(CUdeviceptr *, CUdeviceptr *, size_t *, size_t,
                                             CUmemcpyAttributes *, size_t *, size_t, size_t *,
                                             CUstream);
typedef CUresult(CUDAAPI *kvx__pfn_batch_v2)(CUdeviceptr *, CUdeviceptr *, size_t *, size_t,
                                             CUmemcpyAttributes *, size_t *, size_t, CUstream);
#define KVX__CU_HAVE_BATCH 1
#else
typedef void (*kvx__pfn_batch_v1)(void);
typedef void (*kvx__pfn_batch_v2)(void);
#define KVX__CU_HAVE_BATCH 0
#endif
#if CUDA_VERSION >= 11070
typedef CUresult(CUDAAPI *kvx__pfn_range_handle)(void *, CUdeviceptr, size_t,
                                                 CUmemRangeHandleType, unsigned long long);
#define KVX__CU_HAVE_DMABUF 1
#else
typedef void (*kvx__pfn_range_handle)(void);
#define KVX__CU_HAVE_DMABUF 0
#endif

typedef struct kvx__cu_fns {
    CUresult(CUDAAPI *Init)(unsigned int);
    CUresult(CUDAAPI *DriverGetVersion)(int *);
    CUresult(CUDAAPI *GetErrorName)(CUresult, const char **);
    CUresult(CUDAAPI *GetErrorString)(CUresult, const char **);
    CUresult(CUDAAPI *DeviceGetCount)(int *);
    CUresult(CUDAAPI *DeviceGet)(CUdevice *, int);
    CUresult(CUDAAPI *DeviceGetAttribute)(int *, CUdevice_attribute, CUdevice);
    CUresult(CUDAAPI *DeviceGetName)(char *, int, CUdevice);
    CUresult(CUDAAPI *DevicePrimaryCtxRetain)(CUcontext *, CUdevice);
    CUresult(CUDAAPI *DevicePrimaryCtxRelease)(CUdevice);
    CUresult(CUDAAPI *CtxGetCurrent)(CUcontext *);
    CUresult(CUDAAPI *CtxPushCurrent)(CUcontext);
    CUresult(CUDAAPI *CtxPopCurrent)(CUcontext *);
    CUresult(CUDAAPI *MemAlloc)(CUdeviceptr *, size_t);
    CUresult(CUDAAPI *MemFree)(CUdeviceptr);
    CUresult(CUDAAPI *MemHostAlloc)(void **, size_t, unsigned int);
    CUresult(CUDAAPI *MemFreeHost)(void *);
    CUresult(CUDAAPI *MemGetAddressRange)(CUdeviceptr *, size_t *, CUdeviceptr);
    CUresult(CUDAAPI *PointerGetAttribute)(void *, CUpointer_attribute, CUdeviceptr);
    CUresult(CUDAAPI *StreamCreate)(CUstream *, unsigned int);
    CUresult(CUDAAPI *StreamDestroy)(CUstream);
    CUresult(CUDAAPI *StreamSynchronize)(CUstream);
    CUresult(CUDAAPI *StreamQuery)(CUstream);
    CUresult(CUDAAPI *EventCreate)(CUevent *, unsigned int);
    CUresult(CUDAAPI *EventDestroy)(CUevent);
    CUresult(CUDAAPI *EventRecord)(CUevent, CUstream);
    CUresult(CUDAAPI *EventQuery)(CUevent);
    CUresult(CUDAAPI *EventSynchronize)(CUevent);
    CUresult(CUDAAPI *MemcpyAsync)(CUdeviceptr, CUdeviceptr, size_t, CUstream);
    CUresult(CUDAAPI *MemcpyHtoDAsync)(CUdeviceptr, const void *, size_t, CUstream);
    CUresult(CUDAAPI *MemcpyDtoHAsync)(void *, CUdeviceptr, size_t, CUstream);
    CUresult(CUDAAPI *IpcGetMemHandle)(CUipcMemHandle *, CUdeviceptr);
    CUresult(CUDAAPI *IpcOpenMemHandle)(CUdeviceptr *, CUipcMemHandle, unsigned int);
    CUresult(CUDAAPI *IpcCloseMemHandle)(CUdeviceptr);
    /* optional */
    kvx__pfn_batch_v1 MemcpyBatchAsync_v1; /* 12.8 ABI, exported as cuMemcpyBatchAsync */
    kvx__pfn_batch_v2 MemcpyBatchAsync_v2; /* 13.0 ABI, exported as cuMemcpyBatchAsync_v2 */
    kvx__pfn_range_handle MemGetHandleForAddressRange;
} kvx__cu_fns;

/* X(field, name in cuda.h, exported symbol, older exported symbol or NULL) */
#define KVX__CU_REQUIRED(X)                                                                  \
    X(Init, cuInit, "cuInit", NULL)                                                          \
    X(DriverGetVersion, cuDriverGetVersion, "cuDriverGetVersion", NULL)                      \
    X(GetErrorName, cuGetErrorName, "cuGetErrorName", NULL)                                  \
    X(GetErrorString, cuGetErrorString, "cuGetErrorString", NULL)                            \
    X(DeviceGetCount, cuDeviceGetCount, "cuDeviceGetCount", NULL)                            \
    X(DeviceGet, cuDeviceGet, "cuDeviceGet", NULL)                                           \
    X(DeviceGetAttribute, cuDeviceGetAttribute, "cuDeviceGetAttribute", NULL)                \
    X(DeviceGetName, cuDeviceGetName, "cuDeviceGetName", NULL)                               \
    X(DevicePrimaryCtxRetain, cuDevicePrimaryCtxRetain, "cuDevicePrimaryCtxRetain", NULL)    \
    X(DevicePrimaryCtxRelease, cuDevicePrimaryCtxRelease, "cuDevicePrimaryCtxRelease_v2",    \
      "cuDevicePrimaryCtxRelease")                                                           \
    X(CtxGetCurrent, cuCtxGetCurrent, "cuCtxGetCurrent", NULL)                               \
    X(CtxPushCurrent, cuCtxPushCurrent, "cuCtxPushCurrent_v2", NULL)                         \
    X(CtxPopCurrent, cuCtxPopCurrent, "cuCtxPopCurrent_v2", NULL)                            \
    X(MemAlloc, cuMemAlloc, "cuMemAlloc_v2", NULL)                                           \
    X(MemFree, cuMemFree, "cuMemFree_v2", NULL)                                              \
    X(MemHostAlloc, cuMemHostAlloc, "cuMemHostAlloc", NULL)                                  \
    X(MemFreeHost, cuMemFreeHost, "cuMemFreeHost", NULL)                                     \
    X(MemGetAddressRange, cuMemGetAddressRange, "cuMemGetAddressRange_v2", NULL)             \
    X(PointerGetAttribute, cuPointerGetAttribute, "cuPointerGetAttribute", NULL)             \
    X(StreamCreate, cuStreamCreate, "cuStreamCreate", NULL)                                  \
    X(StreamDestroy, cuStreamDestroy, "cuStreamDestroy_v2", NULL)                            \
    X(StreamSynchronize, cuStreamSynchronize, "cuStreamSynchronize", NULL)                   \
    X(StreamQuery, cuStreamQuery, "cuStreamQuery", NULL)                                     \
    X(EventCreate, cuEventCreate, "cuEventCreate", NULL)                                     \
    X(EventDestroy, cuEventDestroy, "cuEventDestroy_v2", NULL)                               \
    X(EventRecord, cuEventRecord, "cuEventRecord", NULL)                                     \
    X(EventQuery, cuEventQuery, "cuEventQuery", NULL)                                        \
    X(EventSynchronize, cuEventSynchronize, "cuEventSynchronize", NULL)                      \
    X(MemcpyAsync, cuMemcpyAsync, "cuMemcpyAsync", NULL)                                     \
    X(MemcpyHtoDAsync, cuMemcpyHtoDAsync, "cuMemcpyHtoDAsync_v2", NULL)                      \
    X(MemcpyDtoHAsync, cuMemcpyDtoHAsync, "cuMemcpyDtoHAsync_v2", NULL)                      \
    X(IpcGetMemHandle, cuIpcGetMemHandle, "cuIpcGetMemHandle", NULL)                         \
    X(IpcOpenMemHandle, cuIpcOpenMemHandle, "cuIpcOpenMemHandle_v2", "cuIpcOpenMemHandle")   \
    X(IpcCloseMemHandle, cuIpcCloseMemHandle, "cuIpcCloseMemHandle", NULL)

/* >>cuda: objects ---------------------------------------------------------------- */

typedef struct kvx__cu_block { /* one pinned staging block */
    void *p;
    size_t size;
    int used;
} kvx__cu_block;

struct kvx_cuda_stream {
    kvx_cuda *cu;
    int device;
    int pooled;             /* internal staging stream */
    CUstream stream;
    /* batch scratch: the driver reads these during the call */
    CUdeviceptr *dsts, *srcs;
    size_t *sizes;
    size_t cap;
    /* completion tickets: ring of (event, submission number) */
    CUevent *ev;
    uint64_t *ev_seq;
    size_t ev_cap, ev_head, ev_count;
    CUevent *ev_free;
    size_t ev_nfree;
    uint64_t submitted, completed;
    kvx_cuda_stream *next; /* pool free list */
};

struct kvx_cuda {
    uint64_t magic;
    kvx__cu_fns f;
    void *lib;
    char library[256];
    kvx_allocator alloc;
    kvx_logger logger;
    int driver_version, device_count, batch, owned_by_ops;
    uint64_t staging_limit;
    pthread_mutex_t mu; /* contexts, pool, streams */
    CUcontext ctx[KVX_CUDA_MAX_DEVICES];
    kvx__cu_block *blocks;
    size_t num_blocks, cap_blocks, blocks_pending; /* pending: reserved, being allocated */
    uint64_t staging_held, staging_peak, staging_refused;
    int warned_staging;
    kvx_cuda_stream *free_streams;
    int user_streams;
    /* counters (atomics) */
    uint64_t n_copy_calls, n_pieces_h, n_bytes_h, n_pieces_d, n_bytes_d;
    uint64_t n_span_calls, n_spans, n_span_bytes, n_batches, n_copies, n_syncs;
};

/* >>cuda: helpers ---------------------------------------------------------------- */

static void kvx__cu_log(const kvx_cuda *cu, kvx_log_level lvl, const char *fmt, ...)
    KVX_PRINTF(3, 4);
static void kvx__cu_log(const kvx_cuda *cu, kvx_log_level lvl, const char *fmt, ...) {
    static const char *names[] = {"", "ERROR", "WARN", "INFO", "DEBUG"};
    char msg[512];
    va_list ap;
    if (lvl > cu->logger.level) return;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (cu->logger.func) cu->logger.func(cu->logger.user_data, lvl, KVX__CU_SUB, 0, msg);
    else fprintf(stderr, "kvx %s %s: %s\n", names[lvl >= 1 && lvl <= 4 ? (int)lvl : 0],
                 KVX__CU_SUB, msg);
}

static kvx_log_level kvx__cu_level_env(kvx_log_level dflt) {
    const char *s = getenv("KVX_LOG_LEVEL");
    if (!s || !*s) return dflt;
    if (!strcasecmp(s, "error")) return KVX_LOG_ERROR;
    if (!strcasecmp(s, "warn")) return KVX_LOG_WARN;
    if (!strcasecmp(s, "info")) return KVX_LOG_INFO;
    if (!strcasecmp(s, "debug")) return KVX_LOG_DEBUG;
    return dflt;
}

/* "256M", "1G", "65536": bytes, with an optional K/M/G suffix (powers of 2). */
static kvx_result kvx__cu_env_bytes(const char *name, uint64_t *v, char *why, size_t wl) {
    const char *s = getenv(name);
    char *end = NULL;
    unsigned long long x;
    uint64_t mul = 1;
    if (!s || !*s) return KVX_OK;
    x = strtoull(s, &end, 10);
    if (end == s) goto bad;
    if (*end == 'k' || *end == 'K') mul = 1ull << 10;
    else if (*end == 'm' || *end == 'M') mul = 1ull << 20;
    else if (*end == 'g' || *end == 'G') mul = 1ull << 30;
    else if (*end) goto bad;
    if (*end && end[1] && !((end[1] == 'B' || end[1] == 'b') && !end[2])) goto bad;
    if (x > (~0ull) / mul) goto bad;
    *v = (uint64_t)x * mul;
    return KVX_OK;
bad:
    kvx__set_why(why, wl, "%s='%s' is not a byte count (digits, optionally followed by K, M or G)",
                 name, s);
    return KVX_ERR_BAD_CONFIG;
}

static const char *kvx__cu_err_name(const kvx_cuda *cu, CUresult rc) {
    const char *s = NULL;
    if (cu->f.GetErrorName && cu->f.GetErrorName(rc, &s) == CUDA_SUCCESS && s) return s;
    return "CUDA_ERROR_?";
}
static const char *kvx__cu_err_text(const kvx_cuda *cu, CUresult rc) {
    const char *s = NULL;
    if (cu->f.GetErrorString && cu->f.GetErrorString(rc, &s) == CUDA_SUCCESS && s) return s;
    return "no description";
}

/* Writes "<what>: CUDA_ERROR_X (text)" and maps the driver's code. */
static kvx_result kvx__cu_fail(const kvx_cuda *cu, CUresult rc, char *why, size_t wl,
                               const char *fmt, ...) KVX_PRINTF(5, 6);
static kvx_result kvx__cu_fail(const kvx_cuda *cu, CUresult rc, char *why, size_t wl,
                               const char *fmt, ...) {
    char what[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    kvx__set_why(why, wl, "%s failed: %s (%s) [error %d]", what, kvx__cu_err_name(cu, rc),
                 kvx__cu_err_text(cu, rc), (int)rc);
    return rc == CUDA_ERROR_OUT_OF_MEMORY ? KVX_ERR_NO_MEMORY : KVX_ERR_TRANSPORT;
}

static CUdeviceptr kvx__cu_dptr(const void *p) { return (CUdeviceptr)(uintptr_t)p; }
static void *kvx__cu_vptr(CUdeviceptr d) { return (void *)(uintptr_t)d; }

/* >>cuda: loading the driver ------------------------------------------------------ */

#if defined(KVX_NO_RUNTIME_LINKING)
#define KVX__CU_LINK(field, api, sym, alt) cu->f.field = api;
static kvx_result kvx__cu_load(kvx_cuda *cu, const char *path, char *why, size_t wl) {
    (void)path; (void)why; (void)wl;
    KVX__CU_REQUIRED(KVX__CU_LINK)
#if CUDA_VERSION >= 13000
    cu->f.MemcpyBatchAsync_v2 = cuMemcpyBatchAsync; /* = cuMemcpyBatchAsync_v2 */
#elif CUDA_VERSION >= 12080
    cu->f.MemcpyBatchAsync_v1 = cuMemcpyBatchAsync;
#endif
#if KVX__CU_HAVE_DMABUF
    cu->f.MemGetHandleForAddressRange = cuMemGetHandleForAddressRange;
#endif
    snprintf(cu->library, sizeof cu->library, "(linked)");
    return KVX_OK;
}
#else
typedef struct kvx__cu_sym {
    const char *name, *alt;
    size_t off;
} kvx__cu_sym;

/* The table's types against cuda.h's prototypes, checked by the compiler
   (sizeof does not evaluate: nothing is referenced at link time). */
#define KVX__CU_TYPECHECK(field, api, sym, alt) (void)sizeof(chk.field == api);
static KVX__UNUSED void kvx__cu_typecheck(void) {
    kvx__cu_fns chk;
    KVX__CU_REQUIRED(KVX__CU_TYPECHECK)
#if CUDA_VERSION >= 13000
    (void)sizeof(chk.MemcpyBatchAsync_v2 == cuMemcpyBatchAsync);
#elif CUDA_VERSION >= 12080
    (void)sizeof(chk.MemcpyBatchAsync_v1 == cuMemcpyBatchAsync);
#endif
#if KVX__CU_HAVE_DMABUF
    (void)sizeof(chk.MemGetHandleForAddressRange == cuMemGetHandleForAddressRange);
#endif
}

#define KVX__CU_SYM(field, api, sym, alt) {sym, alt, offsetof(kvx__cu_fns, field)},
static const kvx__cu_sym kvx__cu_required[] = {KVX__CU_REQUIRED(KVX__CU_SYM)};

static void *kvx__cu_dlsym2(void *lib, const char *name, const char *alt) {
    void *p = dlsym(lib, name);
    if (!p && alt) p = dlsym(lib, alt);
    return p;
}

static void kvx__cu_set(kvx_cuda *cu, size_t off, void *p) {
    memcpy((char *)&cu->f + off, &p, sizeof p); /* function pointers are data pointers on POSIX */
}

static kvx_result kvx__cu_load(kvx_cuda *cu, const char *path, char *why, size_t wl) {
    size_t i;
    const char *err;
    cu->lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!cu->lib) {
        err = dlerror();
        kvx__set_why(why, wl, "no CUDA driver: cannot load %s (%s); KV buffers in GPU memory "
                              "need an NVIDIA driver (or set KVX_CUDA_LIBRARY to its libcuda)",
                     path, err ? err : "unknown error");
        return KVX_ERR_NOT_FOUND;
    }
    snprintf(cu->library, sizeof cu->library, "%s", path);
    for (i = 0; i < sizeof kvx__cu_required / sizeof kvx__cu_required[0]; i++) {
        const kvx__cu_sym *s = &kvx__cu_required[i];
        void *p = kvx__cu_dlsym2(cu->lib, s->name, s->alt);
        if (!p) {
            kvx__set_why(why, wl, "%s is not a usable CUDA driver: it lacks %s (a driver for "
                                  "CUDA 11.0 or newer is needed)", path, s->name);
            dlclose(cu->lib); /* nothing of it ran */
            cu->lib = NULL;
            return KVX_ERR_NOT_FOUND;
        }
        kvx__cu_set(cu, s->off, p);
    }
    kvx__cu_set(cu, offsetof(kvx__cu_fns, MemcpyBatchAsync_v1),
                dlsym(cu->lib, "cuMemcpyBatchAsync"));
    kvx__cu_set(cu, offsetof(kvx__cu_fns, MemcpyBatchAsync_v2),
                dlsym(cu->lib, "cuMemcpyBatchAsync_v2"));
    kvx__cu_set(cu, offsetof(kvx__cu_fns, MemGetHandleForAddressRange),
                dlsym(cu->lib, "cuMemGetHandleForAddressRange"));
    return KVX_OK;
}
#endif

/* Which cuMemcpyBatchAsync ABI to call: the one that matches the driver's
   version (a 13.x driver exports both; the unversioned name keeps the 12.8
   ABI for old binaries). */
static void kvx__cu_pick_batch(kvx_cuda *cu, int no_batch) {
    cu->batch = 0;
    if (no_batch || !KVX__CU_HAVE_BATCH) return;
    if (cu->driver_version >= 13000 && cu->f.MemcpyBatchAsync_v2) cu->batch = 2;
    else if (cu->driver_version >= 12080 && cu->f.MemcpyBatchAsync_v1) cu->batch = 1;
}

static kvx_result kvx__cu_start(kvx_cuda *cu, char *why, size_t wl) {
    CUresult rc = cu->f.Init(0);
    if (rc == CUDA_ERROR_NO_DEVICE) {
        kvx__set_why(why, wl, "no CUDA device: cuInit in %s says %s (%s); KV buffers in GPU "
                              "memory need an NVIDIA GPU (check nvidia-smi and CUDA_VISIBLE_DEVICES)",
                     cu->library, kvx__cu_err_name(cu, rc), kvx__cu_err_text(cu, rc));
        return KVX_ERR_NOT_FOUND;
    }
    if (rc != CUDA_SUCCESS)
        return kvx__cu_fail(cu, rc, why, wl, "cuInit in %s (is the NVIDIA kernel module loaded?)",
                            cu->library);
    if ((rc = cu->f.DriverGetVersion(&cu->driver_version)) != CUDA_SUCCESS)
        return kvx__cu_fail(cu, rc, why, wl, "cuDriverGetVersion");
    if ((rc = cu->f.DeviceGetCount(&cu->device_count)) != CUDA_SUCCESS)
        return kvx__cu_fail(cu, rc, why, wl, "cuDeviceGetCount");
    if (cu->device_count <= 0) {
        kvx__set_why(why, wl, "no CUDA device: the driver in %s sees none; KV buffers in GPU "
                              "memory need an NVIDIA GPU (check CUDA_VISIBLE_DEVICES)",
                     cu->library);
        return KVX_ERR_NOT_FOUND;
    }
    if (cu->device_count > KVX_CUDA_MAX_DEVICES) cu->device_count = KVX_CUDA_MAX_DEVICES;
    return KVX_OK;
}

/* >>cuda: contexts ------------------------------------------------------------------ */

typedef struct kvx__cu_scope {
    int pushed;
} kvx__cu_scope;

static kvx_result kvx__cu_check_device(const kvx_cuda *cu, int device, char *why, size_t wl) {
    if (device >= 0 && device < cu->device_count) return KVX_OK;
    kvx__set_why(why, wl, "GPU %d does not exist: the driver sees %d device%s (ordinals 0..%d)",
                 device, cu->device_count, cu->device_count == 1 ? "" : "s",
                 cu->device_count - 1);
    return KVX_ERR_INVALID_ARGUMENT;
}

/* The primary context of `device`, retained once. */
static kvx_result kvx__cu_ctx(kvx_cuda *cu, int device, CUcontext *out, char *why, size_t wl) {
    CUcontext c = (CUcontext)KVX__LOAD(&cu->ctx[device]);
    CUresult rc = CUDA_SUCCESS;
    CUdevice dev;
    if (c) { *out = c; return KVX_OK; }
    pthread_mutex_lock(&cu->mu);
    c = cu->ctx[device];
    if (!c) {
        rc = cu->f.DeviceGet(&dev, device);
        if (rc == CUDA_SUCCESS) rc = cu->f.DevicePrimaryCtxRetain(&c, dev);
        if (rc == CUDA_SUCCESS) KVX__STORE(&cu->ctx[device], c);
    }
    pthread_mutex_unlock(&cu->mu);
    if (rc != CUDA_SUCCESS)
        return kvx__cu_fail(cu, rc, why, wl, "retaining the primary context of GPU %d", device);
    *out = c;
    return KVX_OK;
}

/* Makes device's primary context current on this thread until _leave. */
static kvx_result kvx__cu_enter(kvx_cuda *cu, int device, kvx__cu_scope *sc, char *why,
                                size_t wl) {
    CUcontext want = NULL, cur = NULL;
    CUresult rc;
    kvx_result r;
    sc->pushed = 0;
    if ((r = kvx__cu_check_device(cu, device, why, wl)) != KVX_OK) return r;
    if ((r = kvx__cu_ctx(cu, device, &want, why, wl)) != KVX_OK) return r;
    if ((rc = cu->f.CtxGetCurrent(&cur)) != CUDA_SUCCESS) cur = NULL;
    if (cur == want) return KVX_OK;
    if ((rc = cu->f.CtxPushCurrent(want)) != CUDA_SUCCESS)
        return kvx__cu_fail(cu, rc, why, wl, "making GPU %d's context current", device);
    sc->pushed = 1;
    return KVX_OK;
}

static void kvx__cu_leave(kvx_cuda *cu, kvx__cu_scope *sc) {
    CUcontext dummy;
    if (sc->pushed) cu->f.CtxPopCurrent(&dummy);
    sc->pushed = 0;
}

/* >>cuda: create / destroy ------------------------------------------------------------ */

static void *kvx__cu_alloc(const kvx_cuda *cu, size_t n) {
    return cu->alloc.alloc_fn ? cu->alloc.alloc_fn(n, cu->alloc.user_data) : malloc(n);
}
static void kvx__cu_free(const kvx_cuda *cu, void *p) {
    if (!p) return;
    if (cu->alloc.free_fn) cu->alloc.free_fn(p, cu->alloc.user_data);
    else free(p);
}
/* realloc through the desc allocator (which has no realloc). */
static void *kvx__cu_grow(const kvx_cuda *cu, void *old, size_t old_bytes, size_t new_bytes) {
    void *p = kvx__cu_alloc(cu, new_bytes);
    if (!p) return NULL;
    if (old) memcpy(p, old, old_bytes);
    kvx__cu_free(cu, old);
    return p;
}

static void kvx__cu_stream_free(kvx_cuda_stream *s);

KVX_API kvx_result kvx_cuda_create(const kvx_cuda_desc *desc, kvx_cuda **out, char *why,
                                   size_t why_len) {
    kvx_cuda_desc d;
    kvx_cuda *cu;
    const char *lib;
    int batch_env = 1;
    kvx_result r;
    if (!out) {
        kvx__set_why(why, why_len, "kvx_cuda_create: out is NULL");
        return KVX_ERR_INVALID_ARGUMENT;
    }
    *out = NULL;
    if (desc) d = *desc;
    else memset(&d, 0, sizeof d);
    lib = d.library && *d.library ? d.library : "libcuda.so.1";
    kvx_env_str("KVX_CUDA_LIBRARY", &lib);
    if (!d.staging_bytes) d.staging_bytes = 256ull << 20;
    if ((r = kvx__cu_env_bytes("KVX_CUDA_STAGING_BYTES", &d.staging_bytes, why, why_len)) ||
        (r = kvx_env_int("KVX_CUDA_BATCH", &batch_env, why, why_len)))
        return r;
    if (batch_env == 0) d.no_batch = 1;
    cu = (kvx_cuda *)(d.allocator.alloc_fn ? d.allocator.alloc_fn(sizeof *cu, d.allocator.user_data)
                                           : malloc(sizeof *cu));
    if (!cu) {
        kvx__set_why(why, why_len, "kvx_cuda_create: out of memory");
        return KVX_ERR_NO_MEMORY;
    }
    memset(cu, 0, sizeof *cu);
    cu->magic = KVX__CU_MAGIC;
    cu->alloc = d.allocator;
    cu->logger = d.logger;
    if (!cu->logger.level) cu->logger.level = kvx__cu_level_env(KVX_LOG_WARN);
    cu->staging_limit = d.staging_bytes;
    pthread_mutex_init(&cu->mu, NULL);
    if ((r = kvx__cu_load(cu, lib, why, why_len)) != KVX_OK ||
        (r = kvx__cu_start(cu, why, why_len)) != KVX_OK) {
        kvx_cuda_destroy(cu);
        return r;
    }
    kvx__cu_pick_batch(cu, d.no_batch);
    kvx__cu_log(cu, KVX_LOG_INFO,
                "driver %d.%d from %s, %d GPU%s, %s copies, %llu bytes of pinned staging at most",
                cu->driver_version / 1000, cu->driver_version % 1000 / 10, cu->library,
                cu->device_count, cu->device_count == 1 ? "" : "s",
                cu->batch ? "batched (cuMemcpyBatchAsync)" : "one-by-one",
                (unsigned long long)cu->staging_limit);
    *out = cu;
    return KVX_OK;
}

KVX_API void kvx_cuda_destroy(kvx_cuda *cu) {
    size_t i;
    int dev;
    kvx__cu_scope sc;
    if (!cu) return;
    if (cu->user_streams)
        kvx__cu_log(cu, KVX_LOG_ERROR, "kvx_cuda_destroy: %d stream%s from kvx_cuda_stream_create "
                    "still open", cu->user_streams, cu->user_streams == 1 ? "" : "s");
    while (cu->free_streams) {
        kvx_cuda_stream *s = cu->free_streams;
        cu->free_streams = s->next;
        kvx__cu_stream_free(s);
    }
    if (cu->num_blocks && kvx__cu_enter(cu, 0, &sc, NULL, 0) == KVX_OK) {
        for (i = 0; i < cu->num_blocks; i++) {
            if (cu->blocks[i].used)
                kvx__cu_log(cu, KVX_LOG_WARN, "staging block %p (%zu bytes) freed while in use",
                            cu->blocks[i].p, cu->blocks[i].size);
            cu->f.MemFreeHost(cu->blocks[i].p);
        }
        kvx__cu_leave(cu, &sc);
    }
    kvx__cu_free(cu, cu->blocks);
    for (dev = 0; dev < KVX_CUDA_MAX_DEVICES; dev++) {
        CUdevice d;
        if (cu->ctx[dev] && cu->f.DeviceGet(&d, dev) == CUDA_SUCCESS)
            cu->f.DevicePrimaryCtxRelease(d);
    }
    /* libcuda stays loaded (as the CUDA runtime does): unloading a driver
       library that started threads is not safe. The dlopen reference is the
       only thing kept. */
    pthread_mutex_destroy(&cu->mu);
    cu->magic = 0;
    {
        kvx_allocator a = cu->alloc;
        if (a.free_fn) a.free_fn(cu, a.user_data);
        else free(cu);
    }
}

KVX_API kvx_result kvx_cuda_get_info(const kvx_cuda *cu, kvx_cuda_info *out) {
    if (!cu || !out) return KVX_ERR_INVALID_ARGUMENT;
    memset(out, 0, sizeof *out);
    out->driver_version = cu->driver_version;
    out->device_count = cu->device_count;
    out->batch = KVX__LOAD(&((kvx_cuda *)cu)->batch) ? 1 : 0;
    out->dmabuf_entry = cu->f.MemGetHandleForAddressRange ? 1 : 0;
    out->staging_bytes = cu->staging_limit;
    snprintf(out->library, sizeof out->library, "%s", cu->library);
    return KVX_OK;
}

KVX_API void kvx_cuda_stats_get(const kvx_cuda *cu, kvx_cuda_stats *out) {
    kvx_cuda *c = (kvx_cuda *)cu;
    if (!out) return;
    memset(out, 0, sizeof *out);
    if (!cu) return;
    out->copy_calls = KVX__LOAD(&c->n_copy_calls);
    out->pieces_to_host = KVX__LOAD(&c->n_pieces_h);
    out->bytes_to_host = KVX__LOAD(&c->n_bytes_h);
    out->pieces_to_device = KVX__LOAD(&c->n_pieces_d);
    out->bytes_to_device = KVX__LOAD(&c->n_bytes_d);
    out->span_calls = KVX__LOAD(&c->n_span_calls);
    out->spans = KVX__LOAD(&c->n_spans);
    out->span_bytes = KVX__LOAD(&c->n_span_bytes);
    out->driver_batches = KVX__LOAD(&c->n_batches);
    out->driver_copies = KVX__LOAD(&c->n_copies);
    out->syncs = KVX__LOAD(&c->n_syncs);
    pthread_mutex_lock(&c->mu);
    out->staging_held = c->staging_held;
    out->staging_peak = c->staging_peak;
    out->staging_refused = c->staging_refused;
    pthread_mutex_unlock(&c->mu);
}

/* >>cuda: streams ---------------------------------------------------------------------- */

static kvx_result kvx__cu_stream_new(kvx_cuda *cu, int device, int pooled,
                                     kvx_cuda_stream **out, char *why, size_t wl) {
    kvx_cuda_stream *s;
    kvx__cu_scope sc;
    CUresult rc;
    kvx_result r;
    *out = NULL;
    if ((r = kvx__cu_enter(cu, device, &sc, why, wl)) != KVX_OK) return r;
    s = (kvx_cuda_stream *)kvx__cu_alloc(cu, sizeof *s);
    if (!s) {
        kvx__cu_leave(cu, &sc);
        kvx__set_why(why, wl, "out of memory for a CUDA stream");
        return KVX_ERR_NO_MEMORY;
    }
    memset(s, 0, sizeof *s);
    s->cu = cu;
    s->device = device;
    s->pooled = pooled;
    rc = cu->f.StreamCreate(&s->stream, CU_STREAM_NON_BLOCKING);
    kvx__cu_leave(cu, &sc);
    if (rc != CUDA_SUCCESS) {
        kvx__cu_free(cu, s);
        return kvx__cu_fail(cu, rc, why, wl, "cuStreamCreate on GPU %d", device);
    }
    *out = s;
    return KVX_OK;
}

/* Synchronises, destroys events and the stream, frees. */
static void kvx__cu_stream_free(kvx_cuda_stream *s) {
    kvx_cuda *cu = s->cu;
    kvx__cu_scope sc;
    size_t i;
    if (kvx__cu_enter(cu, s->device, &sc, NULL, 0) == KVX_OK) {
        cu->f.StreamSynchronize(s->stream);
        for (i = 0; i < s->ev_count; i++) cu->f.EventDestroy(s->ev[(s->ev_head + i) % s->ev_cap]);
        for (i = 0; i < s->ev_nfree; i++) cu->f.EventDestroy(s->ev_free[i]);
        cu->f.StreamDestroy(s->stream);
        kvx__cu_leave(cu, &sc);
    }
    kvx__cu_free(cu, s->dsts);
    kvx__cu_free(cu, s->srcs);
    kvx__cu_free(cu, s->sizes);
    kvx__cu_free(cu, s->ev);
    kvx__cu_free(cu, s->ev_seq);
    kvx__cu_free(cu, s->ev_free);
    kvx__cu_free(cu, s);
}

static int kvx__cu_scratch(kvx_cuda_stream *s, size_t n) {
    kvx_cuda *cu = s->cu;
    size_t cap = s->cap ? s->cap : 64;
    CUdeviceptr *d, *sr;
    size_t *sz;
    if (n <= s->cap) return 0;
    while (cap < n) cap *= 2;
    d = (CUdeviceptr *)kvx__cu_alloc(cu, cap * sizeof *d);
    sr = (CUdeviceptr *)kvx__cu_alloc(cu, cap * sizeof *sr);
    sz = (size_t *)kvx__cu_alloc(cu, cap * sizeof *sz);
    if (!d || !sr || !sz) {
        kvx__cu_free(cu, d); kvx__cu_free(cu, sr); kvx__cu_free(cu, sz);
        return -1;
    }
    kvx__cu_free(cu, s->dsts); kvx__cu_free(cu, s->srcs); kvx__cu_free(cu, s->sizes);
    s->dsts = d; s->srcs = sr; s->sizes = sz; s->cap = cap;
    return 0;
}

/* A pooled staging stream of `device` (created on demand). */
static kvx_result kvx__cu_stream_get(kvx_cuda *cu, int device, kvx_cuda_stream **out,
                                     char *why, size_t wl) {
    kvx_cuda_stream **pp, *s = NULL;
    pthread_mutex_lock(&cu->mu);
    for (pp = &cu->free_streams; *pp; pp = &(*pp)->next)
        if ((*pp)->device == device) {
            s = *pp;
            *pp = s->next;
            break;
        }
    pthread_mutex_unlock(&cu->mu);
    if (s) { s->next = NULL; *out = s; return KVX_OK; }
    return kvx__cu_stream_new(cu, device, 1, out, why, wl);
}

static void kvx__cu_stream_put(kvx_cuda *cu, kvx_cuda_stream *s, int broken) {
    if (broken) { kvx__cu_stream_free(s); return; } /* a failed stream may stay failed */
    pthread_mutex_lock(&cu->mu);
    s->next = cu->free_streams;
    cu->free_streams = s;
    pthread_mutex_unlock(&cu->mu);
}

enum { KVX__CU_TO_HOST = 1, KVX__CU_TO_DEVICE = 2, KVX__CU_ANY = 3 };

#if KVX__CU_HAVE_BATCH
/* Queues copies [at, at + k) as one cuMemcpyBatchAsync call. */
static CUresult kvx__cu_batch(kvx_cuda_stream *s, int mode, int dir, size_t at, size_t k,
                              size_t *fail) {
    kvx_cuda *cu = s->cu;
    CUmemcpyAttributes attr;
    size_t idx = 0;
    memset(&attr, 0, sizeof attr);
    attr.srcAccessOrder = CU_MEMCPY_SRC_ACCESS_ORDER_STREAM;
    /* location hints only matter for managed or pageable memory */
    attr.srcLocHint.type = dir == KVX__CU_TO_DEVICE ? CU_MEM_LOCATION_TYPE_HOST
                                                     : CU_MEM_LOCATION_TYPE_DEVICE;
    attr.srcLocHint.id = s->device;
    attr.dstLocHint.type = dir == KVX__CU_TO_HOST ? CU_MEM_LOCATION_TYPE_HOST
                                                   : CU_MEM_LOCATION_TYPE_DEVICE;
    attr.dstLocHint.id = s->device;
    attr.flags = 0;
    *fail = (size_t)-1;
    KVX__ADD(&cu->n_batches, 1);
    if (mode == 2)
        return cu->f.MemcpyBatchAsync_v2(s->dsts + at, s->srcs + at, s->sizes + at, k, &attr,
                                         &idx, 1, s->stream);
    return cu->f.MemcpyBatchAsync_v1(s->dsts + at, s->srcs + at, s->sizes + at, k, &attr, &idx,
                                     1, fail, s->stream);
}
#endif

/* Queues s->dsts/srcs/sizes[0..n) on s (its context is current): batches
   where the driver has them, else (or from where a driver refused batches
   as not supported) one asynchronous copy each. */
static kvx_result kvx__cu_submit(kvx_cuda_stream *s, int dir, size_t n, char *why, size_t wl) {
    kvx_cuda *cu = s->cu;
    CUresult rc = CUDA_SUCCESS;
    size_t i = 0;
#if KVX__CU_HAVE_BATCH
    int mode = KVX__LOAD(&cu->batch);
    while (mode && n > 1 && i < n) {
        size_t k = n - i < KVX_CUDA_BATCH_MAX ? n - i : KVX_CUDA_BATCH_MAX, fail;
        const char *name = mode == 2 ? "cuMemcpyBatchAsync_v2" : "cuMemcpyBatchAsync";
        rc = kvx__cu_batch(s, mode, dir, i, k, &fail);
        if (rc == CUDA_ERROR_NOT_SUPPORTED) { /* nothing was queued: go on one by one */
            if (KVX__LOAD(&cu->batch))
                kvx__cu_log(cu, KVX_LOG_WARN, "%s on GPU %d: %s (%s); copying one by one from "
                            "now on", name, s->device, kvx__cu_err_name(cu, rc),
                            kvx__cu_err_text(cu, rc));
            KVX__STORE(&cu->batch, 0);
            break;
        }
        if (rc != CUDA_SUCCESS) {
            if (fail < k)
                return kvx__cu_fail(cu, rc, why, wl, "%s of %zu copies on GPU %d at copy %zu "
                                    "(%llu bytes, 0x%llx -> 0x%llx)", name, k, s->device, fail,
                                    (unsigned long long)s->sizes[i + fail],
                                    (unsigned long long)s->srcs[i + fail],
                                    (unsigned long long)s->dsts[i + fail]);
            return kvx__cu_fail(cu, rc, why, wl, "%s of %zu copies on GPU %d (the first: %llu "
                                "bytes, 0x%llx -> 0x%llx)", name, k, s->device,
                                (unsigned long long)s->sizes[i], (unsigned long long)s->srcs[i],
                                (unsigned long long)s->dsts[i]);
        }
        i += k;
    }
#endif
    for (; i < n; i++) {
        const char *what;
        if (dir == KVX__CU_TO_HOST) {
            what = "cuMemcpyDtoHAsync_v2";
            rc = cu->f.MemcpyDtoHAsync(kvx__cu_vptr(s->dsts[i]), s->srcs[i], s->sizes[i], s->stream);
        } else if (dir == KVX__CU_TO_DEVICE) {
            what = "cuMemcpyHtoDAsync_v2";
            rc = cu->f.MemcpyHtoDAsync(s->dsts[i], kvx__cu_vptr(s->srcs[i]), s->sizes[i], s->stream);
        } else {
            what = "cuMemcpyAsync";
            rc = cu->f.MemcpyAsync(s->dsts[i], s->srcs[i], s->sizes[i], s->stream);
        }
        KVX__ADD(&cu->n_copies, 1);
        if (rc != CUDA_SUCCESS)
            return kvx__cu_fail(cu, rc, why, wl, "%s on GPU %d (copy %zu of %zu, %llu bytes, "
                                "0x%llx -> 0x%llx)", what, s->device, i, n,
                                (unsigned long long)s->sizes[i], (unsigned long long)s->srcs[i],
                                (unsigned long long)s->dsts[i]);
    }
    return KVX_OK;
}

static kvx_result kvx__cu_sync(kvx_cuda_stream *s, char *why, size_t wl) {
    kvx_cuda *cu = s->cu;
    CUresult rc = cu->f.StreamSynchronize(s->stream);
    KVX__ADD(&cu->n_syncs, 1);
    if (rc != CUDA_SUCCESS)
        return kvx__cu_fail(cu, rc, why, wl, "copies on GPU %d (cuStreamSynchronize)", s->device);
    return KVX_OK;
}

/* >>cuda: staging (kvx_mem_ops) ------------------------------------------------------- */

/* Pieces c[0..n) all of one device: queue, wait once. */
static kvx_result kvx__cu_copy_device(kvx_cuda *cu, int to_host, const kvx_copy *c, size_t n,
                                      char *why, size_t wl) {
    kvx_cuda_stream *s;
    kvx__cu_scope sc;
    kvx_result r, r2;
    size_t i, k = 0;
    uint64_t bytes = 0;
    int device = c[0].device;
    if ((r = kvx__cu_enter(cu, device, &sc, why, wl)) != KVX_OK) return r;
    if ((r = kvx__cu_stream_get(cu, device, &s, why, wl)) != KVX_OK) {
        kvx__cu_leave(cu, &sc);
        return r;
    }
    if (kvx__cu_scratch(s, n)) {
        kvx__cu_stream_put(cu, s, 0);
        kvx__cu_leave(cu, &sc);
        kvx__set_why(why, wl, "out of memory for %zu copy descriptors", n);
        return KVX_ERR_NO_MEMORY;
    }
    for (i = 0; i < n; i++) {
        if (!c[i].len) continue;
        s->dsts[k] = to_host ? kvx__cu_dptr(c[i].host) : kvx__cu_dptr(c[i].buf_ptr);
        s->srcs[k] = to_host ? kvx__cu_dptr(c[i].buf_ptr) : kvx__cu_dptr(c[i].host);
        s->sizes[k] = (size_t)c[i].len;
        bytes += c[i].len;
        k++;
    }
    r = kvx__cu_submit(s, to_host ? KVX__CU_TO_HOST : KVX__CU_TO_DEVICE, k, why, wl);
    /* wait even after a failed submit: earlier pieces may still be running */
    r2 = kvx__cu_sync(s, r == KVX_OK ? why : NULL, r == KVX_OK ? wl : 0);
    if (r == KVX_OK) r = r2;
    kvx__cu_stream_put(cu, s, r != KVX_OK);
    kvx__cu_leave(cu, &sc);
    if (r == KVX_OK) {
        KVX__ADD(to_host ? &cu->n_pieces_h : &cu->n_pieces_d, (uint64_t)k);
        KVX__ADD(to_host ? &cu->n_bytes_h : &cu->n_bytes_d, bytes);
    }
    return r;
}

static kvx_result kvx__cu_copy(void *ctx, int to_host, const kvx_copy *c, size_t n, char *why,
                               size_t wl) {
    kvx_cuda *cu = (kvx_cuda *)ctx;
    size_t i = 0, j;
    kvx_result r;
    if (!cu || cu->magic != KVX__CU_MAGIC || (n && !c)) {
        kvx__set_why(why, wl, "kvx_mem_ops.copy: bad context or NULL pieces");
        return KVX_ERR_INVALID_ARGUMENT;
    }
    KVX__ADD(&cu->n_copy_calls, 1);
    for (j = 0; j < n; j++) {
        if (c[j].len && (!c[j].buf_ptr || !c[j].host)) {
            kvx__set_why(why, wl, "kvx_mem_ops.copy: piece %zu of %zu has a NULL %s pointer", j,
                         n, c[j].buf_ptr ? "host" : "buffer");
            return KVX_ERR_INVALID_ARGUMENT;
        }
        if ((r = kvx__cu_check_device(cu, c[j].device, why, wl)) != KVX_OK) return r;
    }
    while (i < n) { /* one wait per device run */
        j = i + 1;
        while (j < n && c[j].device == c[i].device) j++;
        if ((r = kvx__cu_copy_device(cu, to_host, c + i, j - i, why, wl)) != KVX_OK) return r;
        i = j;
    }
    return KVX_OK;
}

/* Frees unused blocks until `need` more bytes fit (mu held, device 0's
   context current). */
static void kvx__cu_pool_trim(kvx_cuda *cu, uint64_t need) {
    size_t i = 0;
    while (i < cu->num_blocks && cu->staging_held + need > cu->staging_limit) {
        if (cu->blocks[i].used) { i++; continue; }
        cu->f.MemFreeHost(cu->blocks[i].p);
        cu->staging_held -= cu->blocks[i].size;
        cu->blocks[i] = cu->blocks[--cu->num_blocks];
    }
}

/* A free block with size <= it <= 2 * size, the smallest (mu held). */
static void *kvx__cu_pool_reuse(kvx_cuda *cu, size_t size) {
    size_t i, best = (size_t)-1;
    for (i = 0; i < cu->num_blocks; i++)
        if (!cu->blocks[i].used && cu->blocks[i].size >= size &&
            cu->blocks[i].size / 2 <= size &&
            (best == (size_t)-1 || cu->blocks[i].size < cu->blocks[best].size))
            best = i;
    if (best == (size_t)-1) return NULL;
    cu->blocks[best].used = 1;
    return cu->blocks[best].p;
}

/* Room for `size` more pinned bytes and one more block (mu held). */
static int kvx__cu_pool_reserve(kvx_cuda *cu, size_t size) {
    if (cu->staging_held + size > cu->staging_limit) kvx__cu_pool_trim(cu, size);
    if (cu->staging_held + size > cu->staging_limit) return -1;
    if (cu->num_blocks + cu->blocks_pending == cu->cap_blocks) {
        size_t nc = cu->cap_blocks ? 2 * cu->cap_blocks : 16;
        kvx__cu_block *nb = (kvx__cu_block *)kvx__cu_grow(
            cu, cu->blocks, cu->num_blocks * sizeof *nb, nc * sizeof *nb);
        if (!nb) return -1;
        cu->blocks = nb;
        cu->cap_blocks = nc;
    }
    cu->staging_held += size; /* reserved while the driver allocates */
    cu->blocks_pending++;
    if (cu->staging_held > cu->staging_peak) cu->staging_peak = cu->staging_held;
    return 0;
}

static void *kvx__cu_host_alloc(void *ctx, size_t size) {
    kvx_cuda *cu = (kvx_cuda *)ctx;
    void *p = NULL;
    kvx__cu_scope sc;
    CUresult rc;
    int warn;
    char why[KVX_ERROR_MAX];
    if (!cu || cu->magic != KVX__CU_MAGIC || !size) return NULL;
    /* pinned memory is allocated in (and portable from) GPU 0's primary context */
    if (kvx__cu_enter(cu, 0, &sc, why, sizeof why) != KVX_OK) {
        kvx__cu_log(cu, KVX_LOG_ERROR, "pinned staging: %s", why);
        return NULL;
    }
    pthread_mutex_lock(&cu->mu);
    if ((p = kvx__cu_pool_reuse(cu, size)) != NULL || kvx__cu_pool_reserve(cu, size) != 0) {
        warn = !p && !cu->warned_staging;
        if (!p) { cu->staging_refused++; cu->warned_staging = 1; }
        pthread_mutex_unlock(&cu->mu);
        kvx__cu_leave(cu, &sc);
        if (warn)
            kvx__cu_log(cu, KVX_LOG_WARN, "pinned staging pool full: %zu more bytes would pass "
                        "KVX_CUDA_STAGING_BYTES=%llu (the blocks held are in use); host_alloc "
                        "returns NULL", size, (unsigned long long)cu->staging_limit);
        return p;
    }
    pthread_mutex_unlock(&cu->mu);
    rc = cu->f.MemHostAlloc(&p, size, CU_MEMHOSTALLOC_PORTABLE);
    kvx__cu_leave(cu, &sc);
    pthread_mutex_lock(&cu->mu);
    cu->blocks_pending--;
    if (rc != CUDA_SUCCESS) {
        cu->staging_held -= size;
        cu->staging_refused++;
        pthread_mutex_unlock(&cu->mu);
        kvx__cu_fail(cu, rc, why, sizeof why, "cuMemHostAlloc of %zu bytes", size);
        kvx__cu_log(cu, KVX_LOG_ERROR, "pinned staging: %s", why);
        return NULL;
    }
    cu->blocks[cu->num_blocks].p = p; /* reserve made room for it */
    cu->blocks[cu->num_blocks].size = size;
    cu->blocks[cu->num_blocks].used = 1;
    cu->num_blocks++;
    pthread_mutex_unlock(&cu->mu);
    return p;
}

static void kvx__cu_host_free(void *ctx, void *p) {
    kvx_cuda *cu = (kvx_cuda *)ctx;
    size_t i;
    if (!cu || cu->magic != KVX__CU_MAGIC || !p) return;
    pthread_mutex_lock(&cu->mu);
    for (i = 0; i < cu->num_blocks; i++)
        if (cu->blocks[i].p == p && cu->blocks[i].used) {
            cu->blocks[i].used = 0; /* stays pinned for the next host_alloc */
            pthread_mutex_unlock(&cu->mu);
            return;
        }
    pthread_mutex_unlock(&cu->mu);
    kvx__cu_log(cu, KVX_LOG_ERROR, "host_free(%p): not a staging block in use (double free, or "
                "memory from elsewhere); ignored", p);
}

KVX_API kvx_result kvx_cuda_mem_ops(kvx_mem_ops *out, const kvx_cuda_desc *desc, char *why,
                                    size_t why_len) {
    kvx_cuda *cu;
    kvx_result r;
    if (!out) {
        kvx__set_why(why, why_len, "kvx_cuda_mem_ops: out is NULL");
        return KVX_ERR_INVALID_ARGUMENT;
    }
    memset(out, 0, sizeof *out);
    if ((r = kvx_cuda_create(desc, &cu, why, why_len)) != KVX_OK) return r;
    cu->owned_by_ops = 1;
    out->copy = kvx__cu_copy;
    out->host_alloc = kvx__cu_host_alloc;
    out->host_free = kvx__cu_host_free;
    out->ctx = cu;
    return KVX_OK;
}

KVX_API kvx_cuda *kvx_cuda_from_mem_ops(const kvx_mem_ops *ops) {
    kvx_cuda *cu;
    if (!ops || ops->copy != kvx__cu_copy || !ops->ctx) return NULL;
    cu = (kvx_cuda *)ops->ctx;
    return cu->magic == KVX__CU_MAGIC ? cu : NULL;
}

KVX_API void kvx_cuda_mem_ops_release(kvx_mem_ops *ops) {
    kvx_cuda *cu = kvx_cuda_from_mem_ops(ops);
    if (cu && cu->owned_by_ops) kvx_cuda_destroy(cu);
    if (ops) memset(ops, 0, sizeof *ops);
}

/* >>cuda: device memory ------------------------------------------------------------------ */

KVX_API kvx_result kvx_cuda_alloc(kvx_cuda *cu, int device, size_t size, void **dev_ptr,
                                  char *why, size_t why_len) {
    kvx__cu_scope sc;
    CUdeviceptr d = 0;
    CUresult rc;
    kvx_result r;
    if (dev_ptr) *dev_ptr = NULL;
    if (!cu || !dev_ptr || !size) {
        kvx__set_why(why, why_len, "kvx_cuda_alloc: NULL argument or size 0");
        return KVX_ERR_INVALID_ARGUMENT;
    }
    if ((r = kvx__cu_enter(cu, device, &sc, why, why_len)) != KVX_OK) return r;
    rc = cu->f.MemAlloc(&d, size);
    kvx__cu_leave(cu, &sc);
    if (rc != CUDA_SUCCESS)
        return kvx__cu_fail(cu, rc, why, why_len, "cuMemAlloc_v2 of %zu bytes on GPU %d", size,
                            device);
    *dev_ptr = kvx__cu_vptr(d);
    return KVX_OK;
}

KVX_API void kvx_cuda_free(kvx_cuda *cu, int device, void *dev_ptr) {
    kvx__cu_scope sc;
    CUresult rc;
    char why[KVX_ERROR_MAX];
    if (!cu || !dev_ptr) return;
    if (kvx__cu_enter(cu, device, &sc, why, sizeof why) != KVX_OK) {
        kvx__cu_log(cu, KVX_LOG_ERROR, "kvx_cuda_free: %s", why);
        return;
    }
    rc = cu->f.MemFree(kvx__cu_dptr(dev_ptr));
    kvx__cu_leave(cu, &sc);
    if (rc != CUDA_SUCCESS) {
        kvx__cu_fail(cu, rc, why, sizeof why, "cuMemFree_v2(%p) on GPU %d", dev_ptr, device);
        kvx__cu_log(cu, KVX_LOG_ERROR, "%s", why);
    }
}

/* Memory type, device ordinal and allocation range of p (context current). */
static CUresult kvx__cu_where(kvx_cuda *cu, const void *p, unsigned *type, int *ordinal,
                              CUdeviceptr *base, size_t *size) {
    CUresult rc = cu->f.PointerGetAttribute(type, CU_POINTER_ATTRIBUTE_MEMORY_TYPE, kvx__cu_dptr(p));
    if (rc != CUDA_SUCCESS) return rc;
    if (*type != CU_MEMORYTYPE_DEVICE) return CUDA_SUCCESS;
    rc = cu->f.PointerGetAttribute(ordinal, CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL, kvx__cu_dptr(p));
    if (rc != CUDA_SUCCESS) return rc;
    return cu->f.MemGetAddressRange(base, size, kvx__cu_dptr(p));
}

KVX_API kvx_result kvx_cuda_layout_check(kvx_cuda *cu, const kvx_layout *l, char *why,
                                         size_t why_len) {
    uint32_t i;
    kvx__cu_scope sc;
    kvx_result r;
    if (!cu || !l || (l->num_buffers && !l->buffers)) {
        kvx__set_why(why, why_len, "kvx_cuda_layout_check: NULL argument");
        return KVX_ERR_INVALID_ARGUMENT;
    }
    if ((r = kvx__cu_enter(cu, 0, &sc, why, why_len)) != KVX_OK) return r;
    for (i = 0; i < l->num_buffers && r == KVX_OK; i++) {
        const kvx_buffer *b = &l->buffers[i];
        unsigned type = 0;
        int ord = -1;
        CUdeviceptr base = 0;
        size_t size = 0;
        CUresult rc;
        if (!b->base || !b->length) continue;
        rc = kvx__cu_where(cu, b->base, &type, &ord, &base, &size);
        if (b->mem == KVX_MEM_HOST) {
            if (rc == CUDA_SUCCESS && type == CU_MEMORYTYPE_DEVICE) {
                kvx__set_why(why, why_len, "buffer %u (%p) is memory of GPU %d but the layout "
                             "says KVX_MEM_HOST: set mem = KVX_MEM_CUDA and device = %d", i,
                             b->base, ord, ord);
                r = KVX_ERR_INVALID_ARGUMENT;
            }
            continue;
        }
        if (b->mem != KVX_MEM_CUDA) continue;
        if ((r = kvx__cu_check_device(cu, b->device, why, why_len)) != KVX_OK) break;
        if (rc != CUDA_SUCCESS || type != CU_MEMORYTYPE_DEVICE) {
            kvx__set_why(why, why_len, "buffer %u (%p) says KVX_MEM_CUDA on GPU %d but the driver "
                         "does not know it as device memory (%s)", i, b->base, b->device,
                         rc != CUDA_SUCCESS ? kvx__cu_err_name(cu, rc) : "host memory");
            r = KVX_ERR_INVALID_ARGUMENT;
        } else if (ord != b->device) {
            kvx__set_why(why, why_len, "buffer %u (%p) is memory of GPU %d but the layout says "
                         "device %d", i, b->base, ord, b->device);
            r = KVX_ERR_INVALID_ARGUMENT;
        } else if (kvx__cu_dptr(b->base) + b->length > base + size) {
            kvx__set_why(why, why_len, "buffer %u (%p, %llu bytes) runs %llu bytes past the end "
                         "of its allocation (%llu bytes at 0x%llx)", i, b->base,
                         (unsigned long long)b->length,
                         (unsigned long long)(kvx__cu_dptr(b->base) + b->length - base - size),
                         (unsigned long long)size, (unsigned long long)base);
            r = KVX_ERR_INVALID_ARGUMENT;
        }
    }
    kvx__cu_leave(cu, &sc);
    return r;
}

/* >>cuda: ipc --------------------------------------------------------------------------- */

KVX_API kvx_result kvx_cuda_ipc_export(kvx_cuda *cu, int device, void *dev_ptr,
                                       uint8_t handle[KVX_CUDA_IPC_HANDLE_BYTES],
                                       uint64_t *offset, uint64_t *alloc_len, char *why,
                                       size_t why_len) {
    kvx__cu_scope sc;
    CUdeviceptr base = 0;
    size_t size = 0;
    CUipcMemHandle h;
    CUresult rc;
    kvx_result r;
    if (!cu || !dev_ptr || !handle) {
        kvx__set_why(why, why_len, "kvx_cuda_ipc_export: NULL argument");
        return KVX_ERR_INVALID_ARGUMENT;
    }
    if ((r = kvx__cu_enter(cu, device, &sc, why, why_len)) != KVX_OK) return r;
    rc = cu->f.MemGetAddressRange(&base, &size, kvx__cu_dptr(dev_ptr));
    if (rc != CUDA_SUCCESS) {
        kvx__cu_leave(cu, &sc);
        return kvx__cu_fail(cu, rc, why, why_len, "cuMemGetAddressRange_v2(%p) on GPU %d (is it "
                            "memory from cuMemAlloc?)", dev_ptr, device);
    }
    memset(&h, 0, sizeof h);
    rc = cu->f.IpcGetMemHandle(&h, base);
    kvx__cu_leave(cu, &sc);
    if (rc != CUDA_SUCCESS)
        return kvx__cu_fail(cu, rc, why, why_len, "cuIpcGetMemHandle(0x%llx) on GPU %d (memory "
                            "from cuMemAlloc can be exported; pools from cudaMallocAsync or "
                            "cuMemCreate need other handles)", (unsigned long long)base, device);
    memcpy(handle, &h, KVX_CUDA_IPC_HANDLE_BYTES);
    if (offset) *offset = (uint64_t)(kvx__cu_dptr(dev_ptr) - base);
    if (alloc_len) *alloc_len = (uint64_t)size;
    return KVX_OK;
}

KVX_API kvx_result kvx_cuda_ipc_import(kvx_cuda *cu, const uint8_t handle[KVX_CUDA_IPC_HANDLE_BYTES],
                                       int device, void **dev_base, char *why, size_t why_len) {
    kvx__cu_scope sc;
    CUipcMemHandle h;
    CUdeviceptr d = 0;
    CUresult rc;
    kvx_result r;
    if (dev_base) *dev_base = NULL;
    if (!cu || !handle || !dev_base) {
        kvx__set_why(why, why_len, "kvx_cuda_ipc_import: NULL argument");
        return KVX_ERR_INVALID_ARGUMENT;
    }
    if ((r = kvx__cu_enter(cu, device, &sc, why, why_len)) != KVX_OK) return r;
    memcpy(&h, handle, sizeof h);
    rc = cu->f.IpcOpenMemHandle(&d, h, CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS);
    kvx__cu_leave(cu, &sc);
    if (rc != CUDA_SUCCESS)
        return kvx__cu_fail(cu, rc, why, why_len, "cuIpcOpenMemHandle_v2 on GPU %d (the exporting "
                            "process must be alive, on this node, and not this process)", device);
    *dev_base = kvx__cu_vptr(d);
    return KVX_OK;
}

KVX_API kvx_result kvx_cuda_ipc_close(kvx_cuda *cu, int device, void *dev_base, char *why,
                                      size_t why_len) {
    kvx__cu_scope sc;
    CUresult rc;
    kvx_result r;
    if (!cu || !dev_base) {
        kvx__set_why(why, why_len, "kvx_cuda_ipc_close: NULL argument");
        return KVX_ERR_INVALID_ARGUMENT;
    }
    if ((r = kvx__cu_enter(cu, device, &sc, why, why_len)) != KVX_OK) return r;
    rc = cu->f.IpcCloseMemHandle(kvx__cu_dptr(dev_base));
    kvx__cu_leave(cu, &sc);
    if (rc != CUDA_SUCCESS)
        return kvx__cu_fail(cu, rc, why, why_len, "cuIpcCloseMemHandle(%p) on GPU %d", dev_base,
                            device);
    return KVX_OK;
}

/* >>cuda: spans --------------------------------------------------------------------------- */

KVX_API kvx_result kvx_cuda_stream_create(kvx_cuda *cu, int device, kvx_cuda_stream **out,
                                          char *why, size_t why_len) {
    kvx_result r;
    if (out) *out = NULL;
    if (!cu || !out) {
        kvx__set_why(why, why_len, "kvx_cuda_stream_create: NULL argument");
        return KVX_ERR_INVALID_ARGUMENT;
    }
    if ((r = kvx__cu_stream_new(cu, device, 0, out, why, why_len)) != KVX_OK) return r;
    pthread_mutex_lock(&cu->mu);
    cu->user_streams++;
    pthread_mutex_unlock(&cu->mu);
    return KVX_OK;
}

KVX_API void kvx_cuda_stream_destroy(kvx_cuda_stream *s) {
    kvx_cuda *cu;
    if (!s) return;
    cu = s->cu;
    kvx__cu_stream_free(s);
    pthread_mutex_lock(&cu->mu);
    cu->user_streams--;
    pthread_mutex_unlock(&cu->mu);
}

static kvx_result kvx__cu_check_spans(const kvx_layout *src, const kvx_layout *dst,
                                      const kvx_span *sp, size_t n, char *why, size_t wl) {
    size_t i;
    for (i = 0; i < n; i++) {
        const kvx_span *x = &sp[i];
        const char *side = NULL;
        if (x->buffer >= src->num_buffers || x->buffer >= dst->num_buffers) {
            kvx__set_why(why, wl, "span %zu names buffer %u; the layouts have %u (source) and %u "
                         "(destination)", i, x->buffer, src->num_buffers, dst->num_buffers);
            return KVX_ERR_OUT_OF_RANGE;
        }
        if (x->src_offset > src->buffers[x->buffer].length ||
            x->length > src->buffers[x->buffer].length - x->src_offset)
            side = "source";
        else if (x->dst_offset > dst->buffers[x->buffer].length ||
                 x->length > dst->buffers[x->buffer].length - x->dst_offset)
            side = "destination";
        if (side) {
            kvx__set_why(why, wl, "span %zu (buffer %u, src_offset %llu, dst_offset %llu, length "
                         "%llu) leaves the %s buffer (%llu bytes)", i, x->buffer,
                         (unsigned long long)x->src_offset, (unsigned long long)x->dst_offset,
                         (unsigned long long)x->length, side,
                         (unsigned long long)(side[0] == 's' ? src : dst)->buffers[x->buffer].length);
            return KVX_ERR_OUT_OF_RANGE;
        }
        if (x->length && (!src->buffers[x->buffer].base || !dst->buffers[x->buffer].base)) {
            kvx__set_why(why, wl, "span %zu: buffer %u has a NULL base", i, x->buffer);
            return KVX_ERR_INVALID_ARGUMENT;
        }
    }
    return KVX_OK;
}

/* Records the event that closes submission `seq` (context current). */
static kvx_result kvx__cu_mark(kvx_cuda_stream *s, uint64_t seq, char *why, size_t wl) {
    kvx_cuda *cu = s->cu;
    CUevent ev;
    CUresult rc;
    if (s->ev_count == s->ev_cap) { /* grow the ring, unrolled to start at 0 */
        size_t nc = s->ev_cap ? 2 * s->ev_cap : 16, i;
        CUevent *ne = (CUevent *)kvx__cu_alloc(cu, nc * sizeof *ne);
        uint64_t *ns = (uint64_t *)kvx__cu_alloc(cu, nc * sizeof *ns);
        CUevent *nf = (CUevent *)kvx__cu_alloc(cu, nc * sizeof *nf);
        if (!ne || !ns || !nf) {
            kvx__cu_free(cu, ne); kvx__cu_free(cu, ns); kvx__cu_free(cu, nf);
            kvx__set_why(why, wl, "out of memory for completion events");
            return KVX_ERR_NO_MEMORY;
        }
        for (i = 0; i < s->ev_count; i++) {
            ne[i] = s->ev[(s->ev_head + i) % s->ev_cap];
            ns[i] = s->ev_seq[(s->ev_head + i) % s->ev_cap];
        }
        if (s->ev_nfree) memcpy(nf, s->ev_free, s->ev_nfree * sizeof *nf);
        kvx__cu_free(cu, s->ev); kvx__cu_free(cu, s->ev_seq); kvx__cu_free(cu, s->ev_free);
        s->ev = ne; s->ev_seq = ns; s->ev_free = nf; s->ev_cap = nc; s->ev_head = 0;
    }
    if (s->ev_nfree) ev = s->ev_free[--s->ev_nfree];
    else if ((rc = cu->f.EventCreate(&ev, CU_EVENT_DISABLE_TIMING)) != CUDA_SUCCESS)
        return kvx__cu_fail(cu, rc, why, wl, "cuEventCreate on GPU %d", s->device);
    if ((rc = cu->f.EventRecord(ev, s->stream)) != CUDA_SUCCESS) {
        s->ev_free[s->ev_nfree++] = ev;
        return kvx__cu_fail(cu, rc, why, wl, "cuEventRecord on GPU %d", s->device);
    }
    s->ev[(s->ev_head + s->ev_count) % s->ev_cap] = ev;
    s->ev_seq[(s->ev_head + s->ev_count) % s->ev_cap] = seq;
    s->ev_count++;
    return KVX_OK;
}

KVX_API kvx_result kvx_cuda_copy_spans(kvx_cuda_stream *s, const kvx_layout *src,
                                       const kvx_layout *dst, const kvx_span *spans, size_t n,
                                       uint64_t *ticket, char *why, size_t why_len) {
    kvx_cuda *cu;
    kvx__cu_scope sc;
    size_t i, k = 0;
    uint64_t bytes = 0;
    kvx_result r;
    if (ticket) *ticket = 0;
    if (!s || !src || !dst || (n && !spans) || (src->num_buffers && !src->buffers) ||
        (dst->num_buffers && !dst->buffers)) {
        kvx__set_why(why, why_len, "kvx_cuda_copy_spans: NULL argument");
        return KVX_ERR_INVALID_ARGUMENT;
    }
    cu = s->cu;
    if ((r = kvx__cu_check_spans(src, dst, spans, n, why, why_len)) != KVX_OK) return r;
    if (kvx__cu_scratch(s, n < KVX_CUDA_BATCH_MAX ? n : KVX_CUDA_BATCH_MAX)) {
        kvx__set_why(why, why_len, "out of memory for %zu copy descriptors", n);
        return KVX_ERR_NO_MEMORY;
    }
    if ((r = kvx__cu_enter(cu, s->device, &sc, why, why_len)) != KVX_OK) return r;
    for (i = 0; i < n && r == KVX_OK; i++) {
        const kvx_span *x = &spans[i];
        if (!x->length) continue;
        s->srcs[k] = kvx__cu_dptr(src->buffers[x->buffer].base) + x->src_offset;
        s->dsts[k] = kvx__cu_dptr(dst->buffers[x->buffer].base) + x->dst_offset;
        s->sizes[k] = (size_t)x->length;
        bytes += x->length;
        if (++k == s->cap || i + 1 == n) {
            r = kvx__cu_submit(s, KVX__CU_ANY, k, why, why_len);
            k = 0;
        }
    }
    if (r == KVX_OK && k) r = kvx__cu_submit(s, KVX__CU_ANY, k, why, why_len);
    if (r == KVX_OK) r = kvx__cu_mark(s, s->submitted + 1, why, why_len);
    if (r != KVX_OK) {
        cu->f.StreamSynchronize(s->stream); /* nothing of this call may still run */
        kvx__cu_leave(cu, &sc);
        return r;
    }
    kvx__cu_leave(cu, &sc);
    s->submitted++;
    if (ticket) *ticket = s->submitted;
    KVX__ADD(&cu->n_span_calls, 1);
    KVX__ADD(&cu->n_spans, (uint64_t)n);
    KVX__ADD(&cu->n_span_bytes, bytes);
    return KVX_OK;
}

/* Retires finished events from the ring's head; wait_for > 0 blocks on the
   event of that submission first (context current). */
static kvx_result kvx__cu_retire(kvx_cuda_stream *s, uint64_t wait_for, char *why, size_t wl) {
    kvx_cuda *cu = s->cu;
    CUresult rc;
    while (s->ev_count) {
        CUevent ev = s->ev[s->ev_head];
        uint64_t seq = s->ev_seq[s->ev_head];
        if (seq <= wait_for) {
            rc = cu->f.EventSynchronize(ev);
            KVX__ADD(&cu->n_syncs, 1);
        } else {
            rc = cu->f.EventQuery(ev);
        }
        if (rc == CUDA_ERROR_NOT_READY) break;
        if (rc != CUDA_SUCCESS)
            return kvx__cu_fail(cu, rc, why, wl, "copies of submission %llu on GPU %d",
                                (unsigned long long)seq, s->device);
        s->completed = seq;
        s->ev_free[s->ev_nfree++] = ev;
        s->ev_head = (s->ev_head + 1) % s->ev_cap;
        s->ev_count--;
    }
    return KVX_OK;
}

KVX_API kvx_result kvx_cuda_stream_done(kvx_cuda_stream *s, uint64_t ticket, int *done,
                                        char *why, size_t why_len) {
    kvx__cu_scope sc;
    kvx_result r;
    if (done) *done = 0;
    if (!s || !done) {
        kvx__set_why(why, why_len, "kvx_cuda_stream_done: NULL argument");
        return KVX_ERR_INVALID_ARGUMENT;
    }
    if (!ticket) ticket = s->submitted;
    if (ticket > s->submitted) {
        kvx__set_why(why, why_len, "ticket %llu was never issued on this stream (last %llu)",
                     (unsigned long long)ticket, (unsigned long long)s->submitted);
        return KVX_ERR_INVALID_ARGUMENT;
    }
    if (ticket <= s->completed) { *done = 1; return KVX_OK; }
    if ((r = kvx__cu_enter(s->cu, s->device, &sc, why, why_len)) != KVX_OK) return r;
    r = kvx__cu_retire(s, 0, why, why_len);
    kvx__cu_leave(s->cu, &sc);
    *done = r == KVX_OK && ticket <= s->completed;
    return r;
}

KVX_API kvx_result kvx_cuda_stream_wait(kvx_cuda_stream *s, uint64_t ticket, char *why,
                                        size_t why_len) {
    kvx__cu_scope sc;
    kvx_result r;
    if (!s) {
        kvx__set_why(why, why_len, "kvx_cuda_stream_wait: NULL stream");
        return KVX_ERR_INVALID_ARGUMENT;
    }
    if (!ticket) ticket = s->submitted;
    if (ticket > s->submitted) {
        kvx__set_why(why, why_len, "ticket %llu was never issued on this stream (last %llu)",
                     (unsigned long long)ticket, (unsigned long long)s->submitted);
        return KVX_ERR_INVALID_ARGUMENT;
    }
    if (ticket <= s->completed) return KVX_OK;
    if ((r = kvx__cu_enter(s->cu, s->device, &sc, why, why_len)) != KVX_OK) return r;
    r = kvx__cu_retire(s, ticket, why, why_len);
    kvx__cu_leave(s->cu, &sc);
    if (r == KVX_OK && ticket > s->completed) { /* cannot happen: events are in order */
        kvx__set_why(why, why_len, "submission %llu did not complete", (unsigned long long)ticket);
        return KVX_ERR_STATE;
    }
    return r;
}

/* >>cuda: dma-buf ---------------------------------------------------------------------- */

KVX_API kvx_result kvx_cuda_dmabuf_fd(kvx_cuda *cu, int device, void *dev_ptr, size_t len,
                                      int *fd, uint64_t *offset, char *why, size_t why_len) {
    kvx__cu_scope sc;
    CUdeviceptr base = 0, start, end, p;
    size_t size = 0;
    uint64_t page;
    int supported = 0, out = -1;
    long ps = sysconf(_SC_PAGESIZE);
    CUdevice dev;
    CUresult rc;
    kvx_result r;
    if (fd) *fd = -1;
    if (offset) *offset = 0;
    if (!cu || !dev_ptr || !len || !fd || !offset) {
        kvx__set_why(why, why_len, "kvx_cuda_dmabuf_fd: NULL argument or length 0");
        return KVX_ERR_INVALID_ARGUMENT;
    }
    if (!KVX__CU_HAVE_DMABUF || !cu->f.MemGetHandleForAddressRange) {
        kvx__set_why(why, why_len, "the CUDA driver in %s (version %d) has no "
                     "cuMemGetHandleForAddressRange: dma-buf export needs CUDA 11.7 or newer; GPU "
                     "memory cannot be registered with the NIC this way (nvidia-peermem is the "
                     "alternative)", cu->library, cu->driver_version);
        return KVX_ERR_TRANSPORT;
    }
    if ((r = kvx__cu_enter(cu, device, &sc, why, why_len)) != KVX_OK) return r;
    rc = cu->f.DeviceGet(&dev, device);
    if (rc == CUDA_SUCCESS)
        rc = cu->f.DeviceGetAttribute(&supported, CU_DEVICE_ATTRIBUTE_DMA_BUF_SUPPORTED, dev);
    if (rc != CUDA_SUCCESS || !supported) {
        kvx__cu_leave(cu, &sc);
        kvx__set_why(why, why_len, "GPU %d does not support dma-buf (CU_DEVICE_ATTRIBUTE_DMA_BUF_"
                     "SUPPORTED is 0%s): the driver, its kernel module or the Linux kernel lacks "
                     "it; register GPU memory through nvidia-peermem instead", device,
                     rc != CUDA_SUCCESS ? ", query failed" : "");
        return KVX_ERR_TRANSPORT;
    }
    rc = cu->f.MemGetAddressRange(&base, &size, kvx__cu_dptr(dev_ptr));
    if (rc != CUDA_SUCCESS) {
        kvx__cu_leave(cu, &sc);
        return kvx__cu_fail(cu, rc, why, why_len, "cuMemGetAddressRange_v2(%p) on GPU %d",
                            dev_ptr, device);
    }
    p = kvx__cu_dptr(dev_ptr);
    if (len > size - (size_t)(p - base)) {
        kvx__cu_leave(cu, &sc);
        kvx__set_why(why, why_len, "dma-buf range %p + %zu leaves its allocation (%zu bytes at "
                     "0x%llx)", dev_ptr, len, size, (unsigned long long)base);
        return KVX_ERR_OUT_OF_RANGE;
    }
    page = ps > 0 ? (uint64_t)ps : 4096;
    start = p & ~(CUdeviceptr)(page - 1);
    end = (p + len + page - 1) & ~(CUdeviceptr)(page - 1);
#if KVX__CU_HAVE_DMABUF
    rc = cu->f.MemGetHandleForAddressRange(&out, start, (size_t)(end - start),
                                           CU_MEM_RANGE_HANDLE_TYPE_DMA_BUF_FD, 0);
#endif
    kvx__cu_leave(cu, &sc);
    if (rc != CUDA_SUCCESS)
        return kvx__cu_fail(cu, rc, why, why_len, "cuMemGetHandleForAddressRange(dma-buf, 0x%llx, "
                            "%llu bytes) on GPU %d", (unsigned long long)start,
                            (unsigned long long)(end - start), device);
    *fd = out;
    *offset = (uint64_t)(p - start);
    return KVX_OK;
}

#endif /* KVX_WITH_CUDA */

#ifdef __cplusplus
}
#endif
#endif /* KVX_IMPLEMENTATION */

/*
------------------------------------------------------------------------------
MIT License

Copyright (c) 2026 the kvx authors

Permission is hereby granted, free of charge, to any person obtaining a copy of
this software and associated documentation files (the "Software"), to deal in
the Software without restriction, including without limitation the rights to
use, copy, modify, merge, publish, distribute, sublicense, and/or sell copies
of the Software, and to permit persons to whom the Software is furnished to do
so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
------------------------------------------------------------------------------
*/
