/* fakecuda.h - test-only extras of libfakecuda.so, a fake CUDA driver.

   libfakecuda.so exports, under their exact versioned names and with the
   prototypes of <cuda.h>, the part of the CUDA driver API that kvx_cuda.h
   uses, implemented on host memory, so that GPU code paths run in CI. Point
   kvx at it with KVX_CUDA_LIBRARY=<path>/libfakecuda.so. It is never
   shipped.

   WHAT IS FAKED, AND HOW
   - Devices: FAKECUDA_DEVICES of them (default 1; 0 makes cuInit return
     CUDA_ERROR_NO_DEVICE). cuDriverGetVersion says FAKECUDA_DRIVER_VERSION
     (default 13000); below 12080 the cuMemcpyBatchAsync entry points answer
     CUDA_ERROR_NOT_SUPPORTED, below 13000 so does cuMemcpyBatchAsync_v2 (a
     real 12.x driver does not export it), so tests can check that the right
     ABI is picked.
   - Device memory (cuMemAlloc_v2) lives in a memfd. The "device pointer" is
     the address of a separate PROT_NONE reservation of the same size: it is
     a unique, real address range that nothing else in the process gets, but
     a CPU load or store through it faults (SIGSEGV), exactly like a CPU
     dereferencing a GPU pointer on a real system. Copies translate device
     addresses to the memfd mapping. fakecuda_host_view gives tests the
     mapping to check bytes independently of the copy path.
   - IPC: cuIpcGetMemHandle's 64 bytes carry a magic, the exporter's pid,
     the memfd's descriptor number, inode and size; cuIpcOpenMemHandle_v2
     opens /proc/<pid>/fd/<n>, checks inode and size, and maps it (another
     PROT_NONE range is the imported device pointer). Opening a handle of this
     same process fails with CUDA_ERROR_INVALID_CONTEXT; opening the same
     handle twice in one context returns the same pointer and counts a
     reference. cuPointerGetAttribute(DEVICE_ORDINAL) of imported memory is
     the exporter's device (where the memory is), whatever the importing
     context's device.
   - Contexts: one primary context per device, with a reference count; a
     per-thread stack of current contexts. Memory, stream, event and copy
     calls fail with CUDA_ERROR_INVALID_CONTEXT when the calling thread has no
     current context, and copies fail with CUDA_ERROR_INVALID_HANDLE when the
     stream belongs to another context: a library that forgets to make its
     context current on a worker thread fails in tests.
   - Streams: each has a worker thread that performs the queued copies in
     order (memcpy), after FAKECUDA_DELAY_US microseconds each (default 0),
     so forgetting to synchronise shows up as missing bytes. FAKECUDA_SYNC=1
     copies at enqueue time instead. The legacy NULL stream copies at once.
     Pointers and bounds are checked when a copy is queued
     (CUDA_ERROR_INVALID_VALUE): a copy that runs past an allocation, a
     device address given as host memory or the reverse.
   - 2-D copies (cuMemcpy2DAsync_v2, host or device on either side): the
     documented checks (each pitch >= WidthInBytes + XInBytes and <=
     CU_DEVICE_ATTRIBUTE_MAX_PITCH, which is FAKECUDA_MAX_PITCH, default
     2147483647, read at each use; every row inside one allocation), else
     CUDA_ERROR_INVALID_VALUE; queued as one operation that copies Height
     rows; counted in copies_2d and rows_2d (and once in copies). Arrays are
     not faked.
   - cuMemHostAlloc: anonymous mmap, tracked. cuMemGetHandleForAddressRange
     checks that the range is device memory aligned to the host page size
     (CUDA_ERROR_INVALID_VALUE otherwise), records it, and then answers
     CUDA_ERROR_NOT_SUPPORTED: there is no dma-buf exporter here; except
     with FAKECUDA_DMABUF=2, where a range that starts at an allocation of
     this process gets a duplicate of the allocation's memfd (offset 0 =
     the allocation's start), which softverbs' ibv_reg_dmabuf_mr maps.
     CU_DEVICE_ATTRIBUTE_DMA_BUF_SUPPORTED is FAKECUDA_DMABUF != 0 (default
     0, read at each query).
   - A process that forks after using the fake cannot use it in the child
     (its stream threads are gone), the same rule as the real driver.
*/
#ifndef FAKECUDA_H
#define FAKECUDA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct fakecuda_stats {
    /* counters (fakecuda_reset_stats zeroes them) */
    uint64_t copies;          /* copies performed, any API */
    uint64_t async_calls;     /* single-copy asynchronous calls */
    uint64_t batches;         /* cuMemcpyBatchAsync / _v2 calls accepted */
    uint64_t batches_v1;      /* of which the 12.8 ABI */
    uint64_t copies_2d;       /* cuMemcpy2DAsync_v2 calls accepted */
    uint64_t rows_2d;         /* rows those copied (their Height, summed) */
    uint64_t bytes_h2d, bytes_d2h, bytes_d2d, bytes_h2h;
    uint64_t stream_syncs, event_records, event_syncs;
    uint64_t dev_allocs, host_allocs;
    uint64_t ipc_exports, ipc_opens, ipc_closes;
    uint64_t ctx_retains, ctx_pushes;
    uint64_t errors;          /* calls that returned an error */
    uint64_t dmabuf_calls;    /* cuMemGetHandleForAddressRange calls with aligned ranges */
    uint64_t dmabuf_last_ptr, dmabuf_last_size; /* that call's range */
    uint64_t dmabuf_exports;  /* of those, answered with a file descriptor */
    /* gauges: what is alive now */
    uint64_t live_dev_allocs, live_dev_bytes;
    uint64_t live_host_allocs, live_host_bytes;
    uint64_t live_ipc_maps;   /* imported mappings (each counted once) */
    uint64_t live_streams, live_events;
    uint64_t ctx_refs;        /* primary context references, all devices */
};

/* Copies the counters and gauges. Returns 0. */
int fakecuda_get_stats(struct fakecuda_stats *out);
/* Zeroes the counters (not the gauges). */
void fakecuda_reset_stats(void);
/* Where the bytes of device memory [dev_ptr, dev_ptr + len) are, readable
   and writable by the CPU; NULL when that is not (entirely inside) one
   allocation or import. */
void *fakecuda_host_view(const void *dev_ptr, size_t len);
/* Arms one fault: the (skip+1)-th next call of the driver function named fn
   (exact exported name, e.g. "cuMemcpyDtoHAsync_v2") returns cuda_error
   instead of working. fn "async" instead poisons the (skip+1)-th next copy
   queued on a stream: it is not performed and its stream reports cuda_error
   from then on (sticky, as CUDA_ERROR_ILLEGAL_ADDRESS is). A new call
   replaces the armed fault; cuda_error 0 disarms. Returns 0. */
int fakecuda_inject(const char *fn, int cuda_error, int skip);
/* Depth of the calling thread's current-context stack. */
int fakecuda_ctx_depth(void);

typedef int (*fakecuda_get_stats_fn)(struct fakecuda_stats *out);
typedef void (*fakecuda_reset_stats_fn)(void);
typedef void *(*fakecuda_host_view_fn)(const void *dev_ptr, size_t len);
typedef int (*fakecuda_inject_fn)(const char *fn, int cuda_error, int skip);
typedef int (*fakecuda_ctx_depth_fn)(void);

#ifdef __cplusplus
}
#endif
#endif /* FAKECUDA_H */
