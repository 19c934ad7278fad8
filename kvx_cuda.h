/* kvx_cuda.h - v0.1.0 - KV pools in GPU memory: pinned staging, the cuda transport, dma-buf

   For KV buffers in GPU memory (kvx_buffer.mem == KVX_MEM_CUDA):
   - staging: kvx_cuda_mem_ops, through pinned host buffers, for CPU-side
     transports (file, tcp, the block store), and dma-buf export with
     which kvx_rdma.h registers GPU pools with a NIC;
   - CUDA IPC: export a KV buffer's memory as a 64-byte handle, import a
     peer's (same node), copy plan spans device to device on a stream,
     queued without blocking, with completion tickets;
   - the `cuda` transport: engines on one node, GPU to GPU through CUDA IPC.

   CONTENTS (section markers: search for ">>name")
     >>setup >>device memory >>ipc >>spans >>dma-buf >>cuda transport (API);
     >>cuda: not compiled, driver entry points, objects, helpers, loading the
     driver, contexts, create / destroy, streams, staging, device memory,
     ipc, spans, dma-buf; >>cuda transport: endpoint codec, state, node
     identity, endpoints, prefill: peers / rooms / completion thread,
     decode, engine, room hooks, public

   DO THIS
       #define KVX_IMPLEMENTATION
       #include "kvx_cuda.h"            (includes kvx_boot.h and kvx.h)
     and compile that one file with -DKVX_WITH_CUDA -I<CUDA toolkit>/include
     (no other file needs the CUDA headers; they give types only). libcuda is
     loaded at run time: without a driver the program starts, host-only
     work runs, and kvx_cuda_create fails saying so. Without KVX_WITH_CUDA
     every entry point returns KVX_ERR_NOT_COMPILED naming the macro.

   DATA PATH
     Staging (file, tcp, store): desc.mem.copy = kvx__cu_copy ->
     kvx__cu_copy_device / kvx__cu_submit (cuMemcpy*Async batches, one
     synchronisation). The cuda transport: kvx__cux_sender_send plans the
     chunk for each decode rank of the room (with the last chunk, the
     state rows where it sends them) and queues kvx_cuda_copy_spans
     (device to device into that peer's imported pool; strided spans as
     cuMemcpy2DAsync) on the peer's stream; kvx__cux_send_aux sends the
     aux rows as a kvx_boot message, which kvx__cux_on_message copies into
     the receiver's aux slot.

   EXAMPLE (a GPU pool behind any transport; error handling shortened)
       // given: kvx_layout gpu_layout;   // its buffers have mem == KVX_MEM_CUDA
       kvx_cuda_desc cd = {0};
       kvx_engine_desc d = {0};
       char why[KVX_ERROR_MAX];
       if (kvx_cuda_mem_ops(&d.mem, &cd, why, sizeof why)) { puts(why); return; }
       d.role = KVX_ROLE_DECODE;  d.transport = "cuda";  d.layout = gpu_layout;
       kvx_cuda_register();                  // "cuda"; or "file", "tcp" ...
       kvx_engine *e;
       if (kvx_engine_create(&d, &e, why, sizeof why)) puts(why);
       // ... receivers as in kvx.h's example ...
       kvx_engine_destroy(e);
       kvx_cuda_mem_ops_release(&d.mem);

   COMPILE-TIME MACROS
     KVX_WITH_CUDA            compile the CUDA support in (needs <cuda.h>,
                              CUDA 11.0 or newer headers)
     KVX_NO_RUNTIME_LINKING   call the driver API directly instead of
                              loading libcuda with dlopen: link with -lcuda.
                              Optional entry points the headers declare
                              (cuMemcpyBatchAsync with CUDA >= 12.8 headers,
                              cuMemGetHandleForAddressRange with >= 11.7) are
                              then linked too: the driver must be at least
                              as new as the headers.
     KVX_CUDA_MAX_DEVICES     most GPU ordinals a process uses (default 64)
     KVX_CUDA_BATCH_MAX       most copies in one cuMemcpyBatchAsync (4096)
     KVX_CUDA_MAX_2D_ROWS     most rows (Height) in one cuMemcpy2DAsync; a
                              strided span with more is split (65535)
     KVX_CUDA_MAX_CONTRIB     most prefill ranks a decode room of the cuda
                              transport takes bytes from (64)

   ENVIRONMENT (read once in kvx_cuda_create; kvx.h's settings rule: each
   overrides its kvx_cuda_desc field, 0 = default, out of range fails)
     KVX_CUDA_LIBRARY         (desc.library) the driver library (libcuda.so.1)
     KVX_CUDA_STAGING_BYTES   (desc.staging_bytes) most bytes of pinned host
                              memory host_alloc holds at once, all blocks
                              together; suffix K, M or G allowed; 1M .. 1T
                                                                      (256M)
     KVX_CUDA_BATCH           (desc.batch) 0 (the field: KVX_ZERO): never use
                              cuMemcpyBatchAsync, one asynchronous copy per
                              piece instead; 1: use it where the driver has
                              it (driver >= 12.8)                       (1)
     KVX_LOG_LEVEL            (desc.logger.level) error|warn|info|debug, read
                              as kvx_engine_create reads it      (warn)
     KVX_CUDA_FENCE_TIMEOUT   (desc.fence_timeout_s of the kvx_cuda behind
                              desc.mem; read at engine creation) seconds
                              kvx_receiver_destroy of an unfinished room waits
                              for the prefill's word that it stopped writing
                              into the room's pages; 0.001..3600          (2)
     KVX_CUDA_NODE_ID         (desc.node_id) this node's identity; two
                              engines run the cuda transport together only
                              with equal ids (default: the kernel's boot id,
                              /proc/sys/kernel/random/boot_id, the same in
                              every container of a host)
     and kvx_boot.h's (KVX_BOOTSTRAP_HOST, KVX_BOOTSTRAP_PORT, heartbeats...).

   THREAD SAFETY
     A kvx_cuda and the kvx_mem_ops filled from it may be used from any
     number of threads at once; a kvx_cuda_stream by one thread at a time
     (which calls wait: their comments). The cuda transport: as kvx.h; kvx_sender_send queues and returns; the prefill engine owns a
     completion thread, kvx_boot's threads run the hooks (a peer's first
     room frame maps its memory there), kvx_engine_destroy joins them and
     releases every stream, import and mapping.

   HOW IT USES THE DRIVER
     Exact exported symbols are resolved with dlsym, never the unversioned
     names the headers rename (cuMemAlloc is cuMemAlloc_v2,
     cuIpcOpenMemHandle is cuIpcOpenMemHandle_v2; cuMemcpyBatchAsync has two
     ABIs: 12.8's, exported as cuMemcpyBatchAsync, with a failIdx argument,
     and 13.0's, exported as cuMemcpyBatchAsync_v2; the driver version picks
     one; a driver that answers CUDA_ERROR_NOT_SUPPORTED to it gets one copy
     per piece from then on, with one warning). cuGetProcAddress is not used.
     Contexts: each device's primary context, retained on first use and
     released by kvx_cuda_destroy; every call that talks to the driver makes
     it current on the calling thread for the call (push/pop when another
     context was current, so a caller's context is left as it was). Copies
     run on non-blocking streams owned by kvx: they do not wait for the
     engine's streams, so the engine must have finished writing (or stopped
     reading) the pages before it hands them to kvx, as with every
     transport. Pinned staging memory is cuMemHostAlloc'd with
     CU_MEMHOSTALLOC_PORTABLE, pooled, and kept until kvx_cuda_destroy.

   THE CUDA TRANSPORT ("cuda"; kvx_cuda_register() or desc.backend =
   kvx_cuda_backend())
     Prefill and decode engines of one node (in one process or two) on
     kvx_boot.h: the prefill serves the bootstrap address, the decode side
     names it, as with tcp; desc.mem of both comes from kvx_cuda_mem_ops
     (how the transport reaches the driver) and every KV buffer and every
     state buffer must be KVX_MEM_CUDA (a prefill pool on one GPU; state
     buffers in host memory are refused at engine creation with a
     sentence: this transport has no host path for them).
       decode engine: exports the allocation under every KV and state
         buffer with cuIpcGetMemHandle, once per allocation (buffers sharing
         one share its handle), and puts the handles and its aux row sizes in the
         endpoint of its kvx_boot hello.
       prefill engine, first room frame of a decode engine: maps every
         allocation (cuIpcOpenMemHandle into the GPU of its own pool; the
         decode's memory may be on another GPU of the node) and creates one
         stream for that peer, serving every later room until the control
         connection goes (once no copy is in flight) or the engine is
         destroyed. A failed import fails that room; the next tries again.
         Each room frame is answered with status TRANSFERRING: from then on
         this side may write into the room's pages.
       each chunk: the two-sided plan kvx_plan_pages(this pool, the chunk's
         pages, the decode pool as mapped with that decode rank's layout
         shape from its hello (kvx_boot_peer.layout), the matching
         destination pages), queued on the peer's stream (DATA PATH); send
         does not wait. A completion thread watches the stream's tickets;
         when the last chunk's copies are done it sends the aux rows (AUX
         MESSAGE), then status Success with the byte count, both on the
         room frame's control connection, and the sender succeeds.
       layer-wise sends (kvx.h kvx_sender_send_layers; backend
         layerwise = 1): each part of a chunk is planned as it is handed
         over, with the plan's layer filter (only that part's layers'
         source buffers), and its copies are queued at once on the peer's
         stream, behind the earlier parts'; the aux message and the Success
         status wait for the room's last part (the last chunk's last
         layer), so the decode side succeeds exactly as for whole chunks.
         Nothing on the wire changes. Stats: parts counts plans, chunks
         only complete chunks.
       hybrid state (kvx.h HYBRID STATE): the room frame carries the
         decode's state indices (kvx_boot protocol v4), kept per decode
         rank; with the last chunk, the prefill rank that writes that decode
         rank's aux rows (kvx_layout_overlap's sends_aux; never an MLA
         dummy) adds kvx_plan_state(this pool, its state indices, the
         decode's state buffers as mapped, the decode's indices) to the
         chunk's copies, so the state rows are in place before the aux
         message and the Success status. A prefill whose state index count
         differs from that decode rank's fails the room ("prefill sent 2
         state indices, decode ... asked for 3"), which reaches the decode
         as its reason.
       decode, on the status: the byte count must be the room's
         (pages times page bytes, plus aux row bytes, plus state indices
         times state row bytes from the rank that writes the aux rows) and
         the aux rows must have arrived (the connection keeps their order);
         only then is the room Success.
     Ranks of different layouts (kvx.h PARALLEL LAYOUTS, kvx_boot.h RANK
     MAPPING):
       a prefill room served by several decode ranks (decode TP > prefill
         TP: one room frame each) writes to each its own plan (a head slice
         of every token row, as 2-D copies; MLA: the whole latent to each)
         and succeeds once every one of them has every byte; each gets the
         aux rows where kvx_layout_overlap says this rank writes them, and
         the Success status (kvx_boot sends one byte count to all of them:
         decode ranks that would receive different counts are refused with
         a sentence).
       a decode room fed by several prefill ranks (prefill TP > decode TP;
         prefill PP > decode PP = 1) succeeds when each has reported
         Success with exactly what it owes (pages times the page bytes of
         this pool it holds, kvx_layout_overlap; 0 from an MLA dummy,
         kvx_mla_dummy, which moves nothing) and the aux rows came from the
         one rank that holds them (an aux message from another is
         refused). One contributor's Failed status fails the room, naming
         that rank (tp and pp rank, address) and its reason, and this
         side's failure goes to every other contributor (abort); a lost
         contributor fails the room through kvx_boot (which closes the
         connections to that prefill instance, so its other ranks fail
         their rooms too). The fence (FAILURES AND THE FENCE) waits for
         every contributor.
     Aux rows (host memory: CUDA IPC does not share them) travel in the AUX
     MESSAGE, the IPC handles only in the decode's kvx_boot hello to the
     prefill it dials (authenticated with KVX_AUTH_KEY when set). No file,
     socket or shared name is created.
     Both processes must run under one user, in one PID namespace, and see
     the same GPUs (as CUDA IPC needs); a peer with another KVX_CUDA_NODE_ID
     is refused on both sides, with a sentence, before anything is mapped.

   ENDPOINT (the kvx_boot hello's endpoint bytes; version 3, little-endian;
   kvx_cuda_endpoint_check reads it; version 1 had an aux segment, version
   2 no state buffers and a reserved 0 at 156)
       0 u8[8] "kvx-cuda"   8 u16 version (3)   10 u16 role (1 prefill, 2 decode)
      12 u32 pid   16 char node_id[64]   80 char host[64]   (printable text,
         NUL-padded; the host name is for messages)
     144 u32 nalloc   148 u32 nb   152 u32 na   156 u32 ns  (decode; 0 on a
         prefill; ns <= KVX_MAX_STATE)
     160 nalloc allocations of 88 bytes: u8[64] CUDA IPC handle, u64 base
         address in the exporter, i32 GPU ordinal there, u32 0, u64 length
         then nb KV buffers of 24 bytes: u32 allocation index, u32 0, u64
         offset in that allocation, u64 length
         then na aux buffers of 8 bytes: u64 row bytes (> 0; all rows
         together fit one aux message)
         then ns state buffers (HYBRID STATE) of 32 bytes: u32 allocation
         index, u32 0, u64 offset in that allocation, u64 length, u64 row
         bytes (> 0, at most the length; the prefill requires it equal to
         the row bytes of the decode's hello layout)
     A prefill engine sends the 160-byte head (node, pid) only. A hello
     carries at most KVX_BOOT_MAX_ENDPOINT (64 KiB) of endpoint, so a decode
     pool of separately allocated buffers has at most about 580 of them
     (160 + 112 per buffer); buffers sharing allocations cost 24 bytes each
     (1024 in one allocation: 24.8 KiB), state buffers 32 bytes each (plus
     88 for an allocation of their own). A decode engine whose endpoint
     does not fit refuses to start, saying so.

   AUX MESSAGE (prefill -> decode, a kvx_boot transport message on the room
   frame's control connection, before the room's status Success; version 1,
   little-endian)
       0 u8[8] "kvx-caux"   8 u16 version (1)   10 u16 0
      12 u32 length (= the pool's aux row bytes)   16 u64 room
      24 the room's aux rows, packed (kvx_layout_aux_copy: aux buffer 0's
         row, then 1's ...)
     24 + row bytes <= KVX_BOOT_MAX_MESSAGE (8 MiB), else both engines
     refuse to start. The decode engine takes it only for an open receiver
     whose destination that same connection acknowledged, with an aux slot,
     in TRANSFERRING, without its rows yet, and with length == its aux row
     bytes == the bytes that follow; then it copies the rows into the aux
     slot. Anything else is refused (stats aux_refused, a warning): one
     naming a room that connection does not serve changes nothing; one that
     breaks a rule for its own room fails that room with the reason.

   FAILURES AND THE FENCE
     Every failure this side decides (a driver error too) reaches the peer
     at once, as kvx.h's FAILURES says: the prefill sends status Failed (once
     its copies of the room stopped), the decode side an abort. A finished
     room sends nothing more, except the prefill's answer to an abort (the
     fence).
     A driver error on a copy (named: CUDA_ERROR_ILLEGAL_ADDRESS...) fails
     every room with copies on that stream, on both sides; the stream is
     replaced. A lost control connection fails the rooms of that peer
     (kvx_boot) and releases its mapping. A failure of a room whose
     destination was acknowledged is reported to the decode side only once
     no copy of that room is in flight (status Failed or abort), so
     kvx_receiver_destroy of an unfinished room can keep kvx.h's promise:
     it tells the prefill (abort) and waits for that word, at most
     KVX_CUDA_FENCE_TIMEOUT (20 ms when the prefill had not acknowledged
     the destination yet), or until the prefill process is gone (its
     control connection closed). kvx_sender_destroy waits for the room's
     copies in flight.
     Driver failures return KVX_ERR_TRANSPORT (KVX_ERR_NO_MEMORY for
     CUDA_ERROR_OUT_OF_MEMORY) with what was attempted and the driver's
     error name and text ("copies on GPU 0 (cuStreamSynchronize) failed:
     CUDA_ERROR_ILLEGAL_ADDRESS (an illegal memory access was encountered)
     [error 700]"). No driver, or one without a device: KVX_ERR_NOT_FOUND.
     Bad arguments: KVX_ERR_INVALID_ARGUMENT or KVX_ERR_OUT_OF_RANGE.

   LIMITS
     A decode room takes bytes from at most KVX_CUDA_MAX_CONTRIB prefill
     ranks; the decode ranks of one prefill room must receive equal byte
     counts (true of SGLang's even head splits). Pools from cudaMallocAsync / cuMemCreate need other handles than
     cuIpcGetMemHandle and are refused at engine creation with the driver's
     reason. The completion thread polls: it yields, then looks every 10 us
     while copies run (every 100 us after 5 ms), and sleeps when nothing is
     in flight.

   LICENSE: MIT, see the end of this file.
*/
#ifndef KVX_CUDA_H_INCLUDED
#define KVX_CUDA_H_INCLUDED

#include "kvx_boot.h"

#if !defined(KVX_VERSION_MAJOR) || KVX_VERSION_MAJOR != 0
#error "kvx_cuda.h needs kvx.h major version 0"
#endif

#ifdef __cplusplus
extern "C" {
#endif

#define KVX_CUDA_IPC_HANDLE_BYTES 64 /* = CU_IPC_HANDLE_SIZE */

typedef struct kvx_cuda kvx_cuda;               /* a loaded driver and its pools */
typedef struct kvx_cuda_stream kvx_cuda_stream; /* a stream for kvx_cuda_copy_spans */

/* Settings: ENVIRONMENT above (a zero field means the default). */
typedef struct kvx_cuda_desc {
    const char *library;    /* KVX_CUDA_LIBRARY, "libcuda.so.1" */
    uint64_t staging_bytes; /* KVX_CUDA_STAGING_BYTES, 256 MiB */
    int batch;              /* KVX_CUDA_BATCH, on: cuMemcpyBatchAsync where the driver
                               has it; KVX_ZERO = never (one copy per piece) */
    kvx_allocator allocator;
    kvx_logger logger;      /* subsystem "kvx.cuda" */
    double fence_timeout_s; /* KVX_CUDA_FENCE_TIMEOUT, 2: the cuda transport's
                               destroy fence (see ENVIRONMENT) */
    const char *node_id;    /* KVX_CUDA_NODE_ID: this node's identity (default:
                               the kernel's boot id) */
} kvx_cuda_desc;

/* >>setup ------------------------------------------------------------------- */

/* Loads the driver, calls cuInit and counts the devices. Fails with
   KVX_ERR_NOT_FOUND and a sentence when there is no driver ("no CUDA driver:
   cannot load libcuda.so.1 (...); KV buffers in GPU memory need an NVIDIA
   driver"), when the library lacks an entry point kvx needs, or when there
   is no device; KVX_ERR_BAD_CONFIG when a KVX_CUDA_* variable or
   KVX_LOG_LEVEL does not parse. *out is NULL on failure. May block (driver
   start-up). Thread-safe. */
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
   from a pool bounded by staging_bytes (NULL when the bound is reached);
   dmabuf_fd is kvx_cuda_dmabuf_fd, with which the rdma transport registers
   GPU pools (where the driver, the GPU or the NIC lacks dma-buf, engine
   creation fails with the driver's or the verbs' words; nvidia-peermem is
   the alternative). *out is zeroed on failure. Release with
   kvx_cuda_mem_ops_release after the engines that use it are destroyed. */
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
    uint64_t driver_2d;         /* cuMemcpy2DAsync calls (strided spans) */
    uint64_t rows_1d;           /* rows of strided spans copied one by one (a pitch
                                   above the device's limit, or a refused 2-D copy) */
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
   buffer (KV and state buffers) is device memory of the device it names and [base, base + length)
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
   src->buffers[spans[i].buffer].base + src_offset to
   dst->buffers[spans[i].dst_buffer].base + dst_offset (a kvx_plan from
   kvx_plan_pages: src is this side's layout, dst the peer's with imported
   bases). A strided span (row_len > 0) copies length / row_len rows, row k
   from src_offset + k * src_pitch to dst_offset + k * dst_pitch. Any
   memory the driver can address works (device, imported, pinned host).
   KVX_SPAN_STATE spans (kvx_plan_state) copy between src->state[buffer]
   and dst->state[dst_buffer] the same way.
   Every row of every span is checked against both layouts' buffer lengths
   first (KVX_ERR_OUT_OF_RANGE naming the span, side and buffer; a length
   that is not whole rows, or a pitch below the row length:
   KVX_ERR_INVALID_ARGUMENT; nothing queued). Contiguous spans: one
   cuMemcpyBatchAsync for many where the driver has it, else one
   cuMemcpyAsync each. Strided spans: one cuMemcpy2DAsync per
   KVX_CUDA_MAX_2D_ROWS rows (srcPitch, dstPitch, WidthInBytes = row_len,
   Height = rows); where a pitch exceeds the device's
   CU_DEVICE_ATTRIBUTE_MAX_PITCH, or once the driver refused a 2-D copy in
   this call (CUDA_ERROR_INVALID_VALUE or _NOT_SUPPORTED: it may refuse
   device-to-device pitches cuMemAllocPitch did not choose), row by row as
   contiguous copies (stats rows_1d). Returns once queued, without waiting;
   *ticket (may be NULL) receives this submission's number, 1, 2, 3... per
   stream, for kvx_cuda_stream_done / _wait. On a driver error the stream
   is waited for before returning, so no copy of this call is still
   running. */
KVX_API kvx_result kvx_cuda_copy_spans(kvx_cuda_stream *s, const kvx_layout *src,
                                       const kvx_layout *dst, const kvx_span *spans, size_t n,
                                       uint64_t *ticket, char *why, size_t why_len);
/* The same for every span of a plan, read with kvx_plan_span: a compact
   plan (kvx.h COMPACT PLANS) is expanded span by span as it is queued,
   never into an array. NULL plan, or one whose counts disagree (paged
   beyond count or not nbufs x nruns, a list missing or beyond its
   capacity): KVX_ERR_INVALID_ARGUMENT, nothing queued. */
KVX_API kvx_result kvx_cuda_copy_plan(kvx_cuda_stream *s, const kvx_layout *src,
                                      const kvx_layout *dst, const kvx_plan *plan,
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
   practice). The caller closes *fd. KVX_ERR_TRANSPORT with a sentence when
   the driver or the device has no dma-buf support (use nvidia-peermem
   then); KVX_ERR_OUT_OF_RANGE when the range leaves its allocation.
   Thread-safe. */
KVX_API kvx_result kvx_cuda_dmabuf_fd(kvx_cuda *cu, int device, void *dev_ptr, size_t len,
                                      int *fd, uint64_t *offset, char *why, size_t why_len);

/* >>cuda transport ------------------------------------------------------------- */

#define KVX_CUDA_ENDPOINT_VERSION 3
#define KVX_CUDA_AUX_VERSION 1 /* of the aux message (see AUX MESSAGE) */

/* The `cuda` transport's backend table ("THE CUDA TRANSPORT" above). Without KVX_WITH_CUDA a table whose engine_init fails
   with KVX_ERR_NOT_COMPILED. Never NULL; thread-safe. */
KVX_API const kvx_backend *kvx_cuda_backend(void);
/* Makes "cuda" known to desc.transport. Thread-safe, idempotent. */
KVX_API kvx_result kvx_cuda_register(void);

/* Counters of one cuda-transport engine (monotonic, except the gauges). */
typedef struct kvx_cuda_transport_stats {
    uint64_t exported_allocs; /* decode: GPU allocations its endpoint announces */
    uint64_t peers;           /* prefill gauge: decode engines mapped now */
    uint64_t imports;         /* prefill: allocations imported (cuIpcOpenMemHandle) */
    uint64_t imports_live;    /* prefill gauge: imports not closed yet */
    uint64_t chunks;          /* prefill: chunks queued (a layer-wise chunk at its last part) */
    uint64_t spans;           /* prefill: plan spans queued (every decode rank's) */
    uint64_t bytes;           /* prefill: KV bytes queued (every decode rank's) */
    uint64_t aux_rows;        /* prefill: aux rows sent; decode: aux rows placed */
    uint64_t aux_refused;     /* decode: aux messages refused (see AUX MESSAGE) */
    uint64_t rooms_done;      /* rooms that reached Success through this transport */
    uint64_t driver_errors;   /* prefill: copies the driver failed */
    uint64_t fence_waits;     /* decode: receivers destroyed while the prefill could write */
    uint64_t fence_timeouts;  /* decode: of which the prefill did not confirm in time */
    uint64_t parts;           /* prefill: plans queued, one per kvx_sender_send and one per
                                 kvx_sender_send_layers call (LAYER-WISE SEND) */
} kvx_cuda_transport_stats;
/* Copies the counters of an engine running the cuda transport.
   KVX_ERR_INVALID_ARGUMENT when e or out is NULL or e runs another transport,
   KVX_ERR_NOT_COMPILED without KVX_WITH_CUDA. Thread-safe, does not block. */
KVX_API kvx_result kvx_cuda_transport_stats_get(const kvx_engine *e, kvx_cuda_transport_stats *out);

/* Checks a cuda transport endpoint (the bytes an engine puts in its
   kvx_boot hello, format in "ENDPOINT" above) without using it: magic,
   version, role, text fields, counts against the length, every buffer
   inside its allocation, the aux rows. KVX_OK, or
   KVX_ERR_PROTOCOL with a sentence naming the first rule broken. Pure
   (no I/O, no driver): for tools, tests and fuzzers. Compiled with and
   without KVX_WITH_CUDA. */
KVX_API kvx_result kvx_cuda_endpoint_check(const void *endpoint, size_t len, char *why,
                                           size_t why_len);

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

/* >>cuda transport: endpoint codec (pure; with and without KVX_WITH_CUDA) ------------ */

#define KVX__CUX_FIXED 160u /* fixed part of an endpoint */
#define KVX__CUX_ALLOC 88u  /* one allocation entry */
#define KVX__CUX_BUF 24u    /* one KV buffer entry */
#define KVX__CUX_AUXE 8u    /* one aux buffer entry */
#define KVX__CUX_STE 32u    /* one state buffer entry */
#define KVX__CUX_TEXT 64u   /* node id, host name */
#define KVX__CUX_AUXM 24u   /* head of an aux message (see AUX MESSAGE) */


/* An endpoint as read from a peer; the tables point into its bytes. */
typedef struct kvx__cux_ep {
    uint16_t version, role;
    uint32_t pid;
    char node[KVX__CUX_TEXT + 1], host[KVX__CUX_TEXT + 1];
    uint32_t nalloc, nb, na, ns;
    const uint8_t *allocs, *bufs, *aux, *st;
} kvx__cux_ep;

/* A NUL-padded text field of 64 bytes: printable ASCII, then only NULs. */
static int kvx__cux_text(const uint8_t *p, char *out) {
    uint32_t i, n = 0;
    while (n < KVX__CUX_TEXT && p[n]) n++;
    for (i = 0; i < KVX__CUX_TEXT; i++) {
        if (i < n && (p[i] < 0x20 || p[i] > 0x7e)) return -1;
        if (i >= n && p[i]) return -1;
    }
    memcpy(out, p, n);
    out[n] = 0;
    return 0;
}

static KVX__UNUSED const uint8_t *kvx__cux_ep_alloc(const kvx__cux_ep *ep, uint32_t i,
                                                    uint64_t *base, int32_t *device,
                                                    uint64_t *len) {
    const uint8_t *a = ep->allocs + (size_t)i * KVX__CUX_ALLOC;
    *base = kvx__le_r64(a + 64);
    *device = (int32_t)kvx__le_r32(a + 72);
    *len = kvx__le_r64(a + 80);
    return a; /* the 64-byte IPC handle */
}

static void kvx__cux_ep_buf(const kvx__cux_ep *ep, uint32_t i, uint32_t *alloc, uint64_t *off,
                            uint64_t *len) {
    const uint8_t *b = ep->bufs + (size_t)i * KVX__CUX_BUF;
    *alloc = kvx__le_r32(b);
    *off = kvx__le_r64(b + 8);
    *len = kvx__le_r64(b + 16);
}

static uint64_t kvx__cux_ep_aux(const kvx__cux_ep *ep, uint32_t i) {
    return kvx__le_r64(ep->aux + (size_t)i * KVX__CUX_AUXE);
}

/* State buffer i: like a KV buffer entry, then its row bytes. */
static void kvx__cux_ep_state(const kvx__cux_ep *ep, uint32_t i, uint32_t *alloc, uint64_t *off,
                              uint64_t *len, uint64_t *item) {
    const uint8_t *b = ep->st + (size_t)i * KVX__CUX_STE;
    *alloc = kvx__le_r32(b);
    *off = kvx__le_r64(b + 8);
    *len = kvx__le_r64(b + 16);
    *item = kvx__le_r64(b + 24);
}

static kvx_result kvx__cux_bad(char *why, size_t wl, const char *fmt, ...) KVX_PRINTF(3, 4);
static kvx_result kvx__cux_bad(char *why, size_t wl, const char *fmt, ...) {
    char msg[KVX_ERROR_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return kvx__why(KVX_ERR_PROTOCOL, why, wl, "cuda endpoint: %s", msg);
}

/* Entry `len` bytes at `off` of allocation a: inside it. */
static int kvx__cux_inside(const kvx__cux_ep *ep, uint32_t a, uint64_t off, uint64_t len) {
    uint64_t base, alen;
    int32_t dev;
    if (a >= ep->nalloc) return 0;
    kvx__cux_ep_alloc(ep, a, &base, &dev, &alen);
    return len && off <= alen && len <= alen - off;
}

/* The state buffers: each inside its allocation, with rows of nonzero
   size that fit its length (HYBRID STATE). */
static kvx_result kvx__cux_parse_state(const kvx__cux_ep *ep, char *why, size_t wl) {
    uint32_t i, a;
    uint64_t off, len, item;
    for (i = 0; i < ep->ns; i++) {
        kvx__cux_ep_state(ep, i, &a, &off, &len, &item);
        if (kvx__le_r32(ep->st + (size_t)i * KVX__CUX_STE + 4))
            return kvx__cux_bad(why, wl, "state buffer %u: the reserved word is not 0", i);
        if (!kvx__cux_inside(ep, a, off, len))
            return kvx__cux_bad(why, wl, "state buffer %u (%llu bytes at offset %llu of "
                                "allocation %u of %u) leaves its allocation", i,
                                (unsigned long long)len, (unsigned long long)off, a, ep->nalloc);
        if (!item || item > len)
            return kvx__cux_bad(why, wl, "state buffer %u: %llu-byte rows in %llu bytes", i,
                                (unsigned long long)item, (unsigned long long)len);
    }
    return KVX_OK;
}

/* The aux rows: none empty, and all of them fit one aux message. */
static kvx_result kvx__cux_parse_aux(const kvx__cux_ep *ep, char *why, size_t wl) {
    uint64_t sum = 0, item;
    uint32_t i;
    for (i = 0; i < ep->na; i++) {
        item = kvx__cux_ep_aux(ep, i);
        if (!item || item > KVX_BOOT_MAX_MESSAGE - KVX__CUX_AUXM - sum)
            return kvx__cux_bad(why, wl, "aux buffer %u: a %llu-byte row (0, or the rows do not "
                                "fit one aux message of KVX_BOOT_MAX_MESSAGE)", i,
                                (unsigned long long)item);
        sum += item;
    }
    return KVX_OK;
}

static kvx_result kvx__cux_parse(const void *buf, size_t len, kvx__cux_ep *ep, char *why,
                                 size_t wl) {
    const uint8_t *p = (const uint8_t *)buf;
    uint64_t need;
    uint32_t i;
    kvx_result r;
    memset(ep, 0, sizeof *ep);
    if (!p || len < KVX__CUX_FIXED || memcmp(p, "kvx-cuda", 8))
        return kvx__cux_bad(why, wl, "%zu bytes without the \"kvx-cuda\" magic (the peer does "
                            "not run the cuda transport)", p ? len : (size_t)0);
    ep->version = kvx__le_r16(p + 8);
    ep->role = kvx__le_r16(p + 10);
    ep->pid = kvx__le_r32(p + 12);
    if (ep->version != KVX_CUDA_ENDPOINT_VERSION)
        return kvx__cux_bad(why, wl, "version %u, this side speaks %d", ep->version,
                            KVX_CUDA_ENDPOINT_VERSION);
    if (ep->role != KVX_ROLE_PREFILL && ep->role != KVX_ROLE_DECODE)
        return kvx__cux_bad(why, wl, "role %u is neither prefill (1) nor decode (2)", ep->role);
    if (!ep->pid || ep->pid > 0x7fffffffu)
        return kvx__cux_bad(why, wl, "process id %u", ep->pid);
    if (kvx__cux_text(p + 16, ep->node) || kvx__cux_text(p + 80, ep->host) || !ep->node[0])
        return kvx__cux_bad(why, wl, "node id or host name is not printable NUL-padded text");
    ep->nalloc = kvx__le_r32(p + 144);
    ep->nb = kvx__le_r32(p + 148);
    ep->na = kvx__le_r32(p + 152);
    ep->ns = kvx__le_r32(p + 156);
    if (ep->nalloc > KVX_MAX_BUFFERS + KVX_MAX_STATE || ep->nb > KVX_MAX_BUFFERS ||
        ep->na > KVX_MAX_AUX || ep->ns > KVX_MAX_STATE)
        return kvx__cux_bad(why, wl, "%u allocations, %u buffers, %u aux buffers, %u state "
                            "buffers (at most %u, %u, %u, %u)", ep->nalloc, ep->nb, ep->na, ep->ns,
                            (unsigned)(KVX_MAX_BUFFERS + KVX_MAX_STATE), (unsigned)KVX_MAX_BUFFERS,
                            (unsigned)KVX_MAX_AUX, (unsigned)KVX_MAX_STATE);
    need = KVX__CUX_FIXED + (uint64_t)ep->nalloc * KVX__CUX_ALLOC +
           (uint64_t)ep->nb * KVX__CUX_BUF + (uint64_t)ep->na * KVX__CUX_AUXE +
           (uint64_t)ep->ns * KVX__CUX_STE;
    if (need != len)
        return kvx__cux_bad(why, wl, "%zu bytes, but %u allocations, %u buffers, %u aux "
                            "buffers and %u state buffers take %llu", len, ep->nalloc, ep->nb,
                            ep->na, ep->ns, (unsigned long long)need);
    if (ep->role == KVX_ROLE_PREFILL && (ep->nalloc || ep->nb || ep->na || ep->ns))
        return kvx__cux_bad(why, wl, "a prefill endpoint announces GPU memory");
    if (ep->role == KVX_ROLE_DECODE && (!ep->nb || !ep->nalloc))
        return kvx__cux_bad(why, wl, "a decode endpoint without KV buffers");
    ep->allocs = p + KVX__CUX_FIXED;
    ep->bufs = ep->allocs + (size_t)ep->nalloc * KVX__CUX_ALLOC;
    ep->aux = ep->bufs + (size_t)ep->nb * KVX__CUX_BUF;
    ep->st = ep->aux + (size_t)ep->na * KVX__CUX_AUXE;
    for (i = 0; i < ep->nalloc; i++) {
        uint64_t base, alen;
        int32_t dev;
        kvx__cux_ep_alloc(ep, i, &base, &dev, &alen);
        if (!base || !alen || dev < 0 || base + alen < base)
            return kvx__cux_bad(why, wl, "allocation %u: %llu bytes at 0x%llx on GPU %d", i,
                                (unsigned long long)alen, (unsigned long long)base, (int)dev);
    }
    for (i = 0; i < ep->nb; i++) {
        uint32_t a;
        uint64_t off, blen, base, alen;
        int32_t dev;
        kvx__cux_ep_buf(ep, i, &a, &off, &blen);
        if (a >= ep->nalloc)
            return kvx__cux_bad(why, wl, "buffer %u names allocation %u of %u", i, a, ep->nalloc);
        kvx__cux_ep_alloc(ep, a, &base, &dev, &alen);
        if (!blen || off > alen || blen > alen - off)
            return kvx__cux_bad(why, wl, "buffer %u (%llu bytes at offset %llu) leaves allocation "
                                "%u (%llu bytes)", i, (unsigned long long)blen,
                                (unsigned long long)off, a, (unsigned long long)alen);
    }
    r = kvx__cux_parse_aux(ep, why, wl);
    return r != KVX_OK ? r : kvx__cux_parse_state(ep, why, wl);
}

KVX_API kvx_result kvx_cuda_endpoint_check(const void *endpoint, size_t len, char *why,
                                           size_t why_len) {
    kvx__cux_ep ep;
    return kvx__cux_parse(endpoint, len, &ep, why, why_len);
}

#if !defined(KVX_WITH_CUDA)

/* >>cuda: not compiled --------------------------------------------------------- */

/* Every entry point clears its outputs and fails naming the macro; the
   parameters are unused on purpose. */
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-parameter"
#endif

static kvx_result kvx__cu_not_compiled(char *why, size_t wl) {
    return kvx__why(KVX_ERR_NOT_COMPILED, why, wl, "kvx_cuda.h was compiled without "
                       "KVX_WITH_CUDA: build the file that defines KVX_IMPLEMENTATION with "
                       "-DKVX_WITH_CUDA -I<CUDA toolkit>/include for KV buffers in GPU memory");
}
#define KVX__CU_NC                                 \
    {                                              \
        return kvx__cu_not_compiled(why, why_len); \
    }
#define KVX__CU_NC_SET(p, v)                       \
    {                                              \
        if (p) *(p) = (v);                         \
        return kvx__cu_not_compiled(why, why_len); \
    }
#define KVX__CU_NC_ZERO(p)                         \
    {                                              \
        if (p) memset((p), 0, sizeof *(p));        \
        return KVX_ERR_NOT_COMPILED;               \
    }

KVX_API kvx_result kvx_cuda_create(const kvx_cuda_desc *desc, kvx_cuda **out, char *why,
                                   size_t why_len) KVX__CU_NC_SET(out, NULL)
KVX_API void kvx_cuda_destroy(kvx_cuda *cu) {}
KVX_API kvx_result kvx_cuda_mem_ops(kvx_mem_ops *out, const kvx_cuda_desc *desc, char *why,
                                    size_t why_len) {
    if (out) memset(out, 0, sizeof *out);
    return kvx__cu_not_compiled(why, why_len);
}
KVX_API void kvx_cuda_mem_ops_release(kvx_mem_ops *ops) {}
KVX_API kvx_cuda *kvx_cuda_from_mem_ops(const kvx_mem_ops *ops) { return NULL; }
KVX_API kvx_result kvx_cuda_get_info(const kvx_cuda *cu, kvx_cuda_info *out) KVX__CU_NC_ZERO(out)
KVX_API void kvx_cuda_stats_get(const kvx_cuda *cu, kvx_cuda_stats *out) {
    if (out) memset(out, 0, sizeof *out);
}
KVX_API kvx_result kvx_cuda_alloc(kvx_cuda *cu, int device, size_t size, void **dev_ptr,
                                  char *why, size_t why_len) KVX__CU_NC_SET(dev_ptr, NULL)
KVX_API void kvx_cuda_free(kvx_cuda *cu, int device, void *dev_ptr) {}
KVX_API kvx_result kvx_cuda_layout_check(kvx_cuda *cu, const kvx_layout *l, char *why,
                                         size_t why_len) KVX__CU_NC
KVX_API kvx_result kvx_cuda_ipc_export(kvx_cuda *cu, int device, void *dev_ptr,
                                       uint8_t handle[KVX_CUDA_IPC_HANDLE_BYTES],
                                       uint64_t *offset, uint64_t *alloc_len, char *why,
                                       size_t why_len) KVX__CU_NC
KVX_API kvx_result kvx_cuda_ipc_import(kvx_cuda *cu, const uint8_t handle[KVX_CUDA_IPC_HANDLE_BYTES],
                                       int device, void **dev_base, char *why,
                                       size_t why_len) KVX__CU_NC_SET(dev_base, NULL)
KVX_API kvx_result kvx_cuda_ipc_close(kvx_cuda *cu, int device, void *dev_base, char *why,
                                      size_t why_len) KVX__CU_NC
KVX_API kvx_result kvx_cuda_stream_create(kvx_cuda *cu, int device, kvx_cuda_stream **out,
                                          char *why, size_t why_len) KVX__CU_NC_SET(out, NULL)
KVX_API void kvx_cuda_stream_destroy(kvx_cuda_stream *s) {}
KVX_API kvx_result kvx_cuda_copy_spans(kvx_cuda_stream *s, const kvx_layout *src,
                                       const kvx_layout *dst, const kvx_span *spans, size_t n,
                                       uint64_t *ticket, char *why, size_t why_len) KVX__CU_NC
KVX_API kvx_result kvx_cuda_copy_plan(kvx_cuda_stream *s, const kvx_layout *src,
                                      const kvx_layout *dst, const kvx_plan *plan,
                                      uint64_t *ticket, char *why, size_t why_len) KVX__CU_NC
KVX_API kvx_result kvx_cuda_stream_done(kvx_cuda_stream *s, uint64_t ticket, int *done,
                                        char *why, size_t why_len) KVX__CU_NC_SET(done, 0)
KVX_API kvx_result kvx_cuda_stream_wait(kvx_cuda_stream *s, uint64_t ticket, char *why,
                                        size_t why_len) KVX__CU_NC
KVX_API kvx_result kvx_cuda_dmabuf_fd(kvx_cuda *cu, int device, void *dev_ptr, size_t len,
                                      int *fd, uint64_t *offset, char *why, size_t why_len) {
    if (fd) *fd = -1;
    if (offset) *offset = 0;
    return kvx__cu_not_compiled(why, why_len);
}

static kvx_result kvx__cux_nc_init(kvx_engine *e, char *why, size_t why_len) KVX__CU_NC
KVX_API const kvx_backend *kvx_cuda_backend(void) {
    static kvx_backend b;
    return kvx__backend_table(&b, "cuda", kvx__cux_nc_init, NULL);
}
KVX_API kvx_result kvx_cuda_register(void) { return kvx_transport_register(kvx_cuda_backend()); }
KVX_API kvx_result kvx_cuda_transport_stats_get(const kvx_engine *e,
                                                kvx_cuda_transport_stats *out) KVX__CU_NC_ZERO(out)

#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif

#else /* KVX_WITH_CUDA */

#include <cuda.h>
#include <unistd.h>
#include <stdarg.h>
#include <strings.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <time.h>
#include <sched.h>
#include <sys/prctl.h>

#if CUDA_VERSION < 11000
#error "kvx_cuda.h needs CUDA 11.0 or newer headers (cuda.h)"
#endif

#ifndef KVX_CUDA_MAX_DEVICES
#define KVX_CUDA_MAX_DEVICES 64
#endif
#ifndef KVX_CUDA_MAX_2D_ROWS
#define KVX_CUDA_MAX_2D_ROWS 65535
#endif
#ifndef KVX_CUDA_BATCH_MAX
#define KVX_CUDA_BATCH_MAX 4096
#endif
#define KVX__CU_MAGIC 0x6b76786375646131ull /* "kvxcuda1" */
#define KVX__CU_SUB "kvx.cuda"

/* >>cuda: driver entry points ------------------------------------------------- */

/* Every entry point kvx calls, as KVX__LIB rows (kvx.h) checked against the
   prototypes in cuda.h. KVX__CU(X, name, args, exported, older) is cu<name>;
   "exported" is the exact symbol dlsym resolves (HOW IT USES THE DRIVER). */
#if CUDA_VERSION >= 12080 /* the batch ABIs: 12.8's has a failIdx, 13.0's does not */
#define KVX__CU_BATCH_ARGS(...)                                                              \
    (CUdeviceptr *, CUdeviceptr *, size_t *, size_t, CUmemcpyAttributes *, size_t *, size_t, \
     __VA_ARGS__)
#define KVX__CU_HAVE_BATCH 1
#else
#define KVX__CU_BATCH_ARGS(...) (void)
#define KVX__CU_HAVE_BATCH 0
#endif
#if CUDA_VERSION >= 13000 /* cuMemcpyBatchAsync is cuMemcpyBatchAsync_v2 */
#define KVX__CU_BATCH_V1 0
#define KVX__CU_BATCH_V2 cuMemcpyBatchAsync
#elif CUDA_VERSION >= 12080
#define KVX__CU_BATCH_V1 cuMemcpyBatchAsync
#define KVX__CU_BATCH_V2 0
#else
#define KVX__CU_BATCH_V1 0
#define KVX__CU_BATCH_V2 0
#endif
#if CUDA_VERSION >= 11070
#define KVX__CU_RANGE_ARGS (void *, CUdeviceptr, size_t, CUmemRangeHandleType, unsigned long long)
#define KVX__CU_HAVE_DMABUF 1
#define KVX__CU_RANGE_HANDLE cuMemGetHandleForAddressRange
#else
#define KVX__CU_RANGE_ARGS (void)
#define KVX__CU_HAVE_DMABUF 0
#define KVX__CU_RANGE_HANDLE 0
#endif

#define KVX__CU(X, n, a, sym, alt) X(CUresult, n, a, cu##n, sym, alt, 0)
#define KVX__CU_FNS(X)                                                                        \
    KVX__CU(X, Init, (unsigned int), "cuInit", NULL)                                          \
    KVX__CU(X, DriverGetVersion, (int *), "cuDriverGetVersion", NULL)                         \
    KVX__CU(X, GetErrorName, (CUresult, const char **), "cuGetErrorName", NULL)               \
    KVX__CU(X, GetErrorString, (CUresult, const char **), "cuGetErrorString", NULL)           \
    KVX__CU(X, DeviceGetCount, (int *), "cuDeviceGetCount", NULL)                             \
    KVX__CU(X, DeviceGet, (CUdevice *, int), "cuDeviceGet", NULL)                             \
    KVX__CU(X, DeviceGetAttribute, (int *, CUdevice_attribute, CUdevice),                     \
            "cuDeviceGetAttribute", NULL)                                                     \
    KVX__CU(X, DeviceGetName, (char *, int, CUdevice), "cuDeviceGetName", NULL)               \
    KVX__CU(X, DevicePrimaryCtxRetain, (CUcontext *, CUdevice), "cuDevicePrimaryCtxRetain",   \
            NULL)                                                                             \
    KVX__CU(X, DevicePrimaryCtxRelease, (CUdevice), "cuDevicePrimaryCtxRelease_v2",           \
            "cuDevicePrimaryCtxRelease")                                                      \
    KVX__CU(X, CtxGetCurrent, (CUcontext *), "cuCtxGetCurrent", NULL)                         \
    KVX__CU(X, CtxPushCurrent, (CUcontext), "cuCtxPushCurrent_v2", NULL)                      \
    KVX__CU(X, CtxPopCurrent, (CUcontext *), "cuCtxPopCurrent_v2", NULL)                      \
    KVX__CU(X, MemAlloc, (CUdeviceptr *, size_t), "cuMemAlloc_v2", NULL)                      \
    KVX__CU(X, MemFree, (CUdeviceptr), "cuMemFree_v2", NULL)                                  \
    KVX__CU(X, MemHostAlloc, (void **, size_t, unsigned int), "cuMemHostAlloc", NULL)         \
    KVX__CU(X, MemFreeHost, (void *), "cuMemFreeHost", NULL)                                  \
    KVX__CU(X, MemGetAddressRange, (CUdeviceptr *, size_t *, CUdeviceptr),                    \
            "cuMemGetAddressRange_v2", NULL)                                                  \
    KVX__CU(X, PointerGetAttribute, (void *, CUpointer_attribute, CUdeviceptr),               \
            "cuPointerGetAttribute", NULL)                                                    \
    KVX__CU(X, StreamCreate, (CUstream *, unsigned int), "cuStreamCreate", NULL)              \
    KVX__CU(X, StreamDestroy, (CUstream), "cuStreamDestroy_v2", NULL)                         \
    KVX__CU(X, StreamSynchronize, (CUstream), "cuStreamSynchronize", NULL)                    \
    KVX__CU(X, StreamQuery, (CUstream), "cuStreamQuery", NULL)                                \
    KVX__CU(X, EventCreate, (CUevent *, unsigned int), "cuEventCreate", NULL)                 \
    KVX__CU(X, EventDestroy, (CUevent), "cuEventDestroy_v2", NULL)                            \
    KVX__CU(X, EventRecord, (CUevent, CUstream), "cuEventRecord", NULL)                       \
    KVX__CU(X, EventQuery, (CUevent), "cuEventQuery", NULL)                                   \
    KVX__CU(X, EventSynchronize, (CUevent), "cuEventSynchronize", NULL)                       \
    KVX__CU(X, MemcpyAsync, (CUdeviceptr, CUdeviceptr, size_t, CUstream), "cuMemcpyAsync",    \
            NULL)                                                                             \
    KVX__CU(X, Memcpy2DAsync, (const CUDA_MEMCPY2D *, CUstream), "cuMemcpy2DAsync_v2", NULL)  \
    KVX__CU(X, MemcpyHtoDAsync, (CUdeviceptr, const void *, size_t, CUstream),                \
            "cuMemcpyHtoDAsync_v2", NULL)                                                     \
    KVX__CU(X, MemcpyDtoHAsync, (void *, CUdeviceptr, size_t, CUstream),                      \
            "cuMemcpyDtoHAsync_v2", NULL)                                                     \
    KVX__CU(X, IpcGetMemHandle, (CUipcMemHandle *, CUdeviceptr), "cuIpcGetMemHandle", NULL)   \
    KVX__CU(X, IpcOpenMemHandle, (CUdeviceptr *, CUipcMemHandle, unsigned int),               \
            "cuIpcOpenMemHandle_v2", "cuIpcOpenMemHandle")                                    \
    KVX__CU(X, IpcCloseMemHandle, (CUdeviceptr), "cuIpcCloseMemHandle", NULL)                 \
    /* optional: the 12.8 ABI is exported as cuMemcpyBatchAsync, 13.0's as _v2 */            \
    X(CUresult, MemcpyBatchAsync_v1, KVX__CU_BATCH_ARGS(size_t *, CUstream), KVX__CU_BATCH_V1, \
      "cuMemcpyBatchAsync", NULL, 1)                                                          \
    X(CUresult, MemcpyBatchAsync_v2, KVX__CU_BATCH_ARGS(CUstream), KVX__CU_BATCH_V2,          \
      "cuMemcpyBatchAsync_v2", NULL, 1)                                                       \
    X(CUresult, MemGetHandleForAddressRange, KVX__CU_RANGE_ARGS, KVX__CU_RANGE_HANDLE,        \
      "cuMemGetHandleForAddressRange", NULL, 1)

typedef struct kvx__cu_fns {
    KVX__CU_FNS(KVX__LIB_FIELD)
} kvx__cu_fns;

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
    size_t max_pitch;       /* CU_DEVICE_ATTRIBUTE_MAX_PITCH; 0 = no 2-D copies */
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
    char node_id[128];      /* desc.node_id, "" = the kernel's boot id */
    uint64_t staging_limit;
    double fence_timeout_s; /* kvx_cuda_desc's, for the cuda transport */
    pthread_mutex_t mu; /* contexts, pool, streams */
    CUcontext ctx[KVX_CUDA_MAX_DEVICES];
    kvx__cu_block *blocks;
    size_t num_blocks, cap_blocks, blocks_pending; /* pending: reserved, being allocated */
    int warned_staging;
    kvx_cuda_stream *free_streams;
    int user_streams;
    kvx_cuda_stats st; /* atomics; the staging_* fields under mu */
};

/* >>cuda: helpers ---------------------------------------------------------------- */

static void kvx__cu_log(const kvx_cuda *cu, kvx_log_level lvl, const char *fmt, ...)
    KVX_PRINTF(3, 4);
static void kvx__cu_log(const kvx_cuda *cu, kvx_log_level lvl, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    kvx__logv(&cu->logger, lvl, KVX__CU_SUB, 0, fmt, ap);
    va_end(ap);
}

/* kvx_cuda_desc's settings, read by kvx_cuda_create (the fence timeout by
   the cuda transport at engine creation, kvx__cux_settings). */
static const kvx__setting kvx__cu_settings[] = {
    KVX__SET_STR("KVX_CUDA_LIBRARY", kvx_cuda_desc, library),
    KVX__SET_STR("KVX_CUDA_NODE_ID", kvx_cuda_desc, node_id),
    KVX__SET_BYTES("KVX_CUDA_STAGING_BYTES", kvx_cuda_desc, staging_bytes, 256 << 20, 1 << 20,
                   1ull << 40),
    KVX__SET_INT0("KVX_CUDA_BATCH", kvx_cuda_desc, batch, 1, 0, 1),
    KVX__SET_ENUM("KVX_LOG_LEVEL", kvx_cuda_desc, logger.level, "error|warn|info|debug"),
};
static const kvx__setting kvx__cux_fence_setting =
    KVX__SET_DBL("KVX_CUDA_FENCE_TIMEOUT", kvx_cuda_desc, fence_timeout_s, 2, 0.001, 3600);

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

/* Copies a struct of uint64_t counters, each field an atomic load. */
static void kvx__cu_counters(void *out, const void *from, size_t bytes) {
    const uint64_t *f = (const uint64_t *)from;
    uint64_t *o = (uint64_t *)out;
    size_t i;
    for (i = 0; i < bytes / sizeof *o; i++) o[i] = KVX__LOAD(&f[i]);
}

/* >>cuda: loading the driver ------------------------------------------------------ */

#if defined(KVX_NO_RUNTIME_LINKING)
static kvx_result kvx__cu_load(kvx_cuda *cu, const char *path, char *why, size_t wl) {
    kvx__cu_fns *kvx__fns = &cu->f;
    (void)path; (void)why; (void)wl;
    KVX__CU_FNS(KVX__LIB_LINK)
    snprintf(cu->library, sizeof cu->library, "(linked)");
    return KVX_OK;
}
#else
static KVX__UNUSED void kvx__cu_typecheck(void) {
    kvx__cu_fns *kvx__fns = NULL;
    KVX__CU_FNS(KVX__LIB_CHECK)
}
#define KVX__CU_SYM(r, n, a, api, sym, alt, o) {sym, alt, offsetof(kvx__cu_fns, n), o},
static const kvx__lib_sym kvx__cu_syms[] = {KVX__CU_FNS(KVX__CU_SYM)};

static kvx_result kvx__cu_load(kvx_cuda *cu, const char *path, char *why, size_t wl) {
    const char *missing, *err;
    cu->lib = kvx__lib_open(path, kvx__cu_syms, sizeof kvx__cu_syms / sizeof kvx__cu_syms[0],
                            &cu->f, &missing, &err);
    if (missing)
        kvx__set_why(why, wl, "%s is not a usable CUDA driver: it lacks %s (a driver for "
                              "CUDA 11.0 or newer is needed)", path, missing);
    else if (!cu->lib)
        kvx__set_why(why, wl, "no CUDA driver: cannot load %s (%s); KV buffers in GPU memory "
                              "need an NVIDIA driver (or set KVX_CUDA_LIBRARY to its libcuda)",
                     path, err);
    if (!cu->lib) return KVX_ERR_NOT_FOUND;
    snprintf(cu->library, sizeof cu->library, "%s", path);
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
    if (rc == CUDA_ERROR_NO_DEVICE)
        return kvx__why(KVX_ERR_NOT_FOUND, why, wl, "no CUDA device: cuInit in %s says %s (%s); "
                           "KV buffers in GPU memory need an NVIDIA GPU (check nvidia-smi and "
                           "CUDA_VISIBLE_DEVICES)", cu->library, kvx__cu_err_name(cu, rc),
                           kvx__cu_err_text(cu, rc));
    if (rc != CUDA_SUCCESS)
        return kvx__cu_fail(cu, rc, why, wl, "cuInit in %s (is the NVIDIA kernel module loaded?)",
                            cu->library);
    if ((rc = cu->f.DriverGetVersion(&cu->driver_version)) != CUDA_SUCCESS)
        return kvx__cu_fail(cu, rc, why, wl, "cuDriverGetVersion");
    if ((rc = cu->f.DeviceGetCount(&cu->device_count)) != CUDA_SUCCESS)
        return kvx__cu_fail(cu, rc, why, wl, "cuDeviceGetCount");
    if (cu->device_count <= 0)
        return kvx__why(KVX_ERR_NOT_FOUND, why, wl, "no CUDA device: the driver in %s sees "
                           "none; KV buffers in GPU memory need an NVIDIA GPU (check "
                           "CUDA_VISIBLE_DEVICES)", cu->library);
    if (cu->device_count > KVX_CUDA_MAX_DEVICES) cu->device_count = KVX_CUDA_MAX_DEVICES;
    return KVX_OK;
}

/* >>cuda: contexts ------------------------------------------------------------------ */

typedef struct kvx__cu_scope {
    int pushed;
} kvx__cu_scope;

static kvx_result kvx__cu_check_device(const kvx_cuda *cu, int device, char *why, size_t wl) {
    if (device >= 0 && device < cu->device_count) return KVX_OK;
    return kvx__why(KVX_ERR_INVALID_ARGUMENT, why, wl, "GPU %d does not exist: the driver sees "
                       "%d device%s (ordinals 0..%d)", device, cu->device_count,
                       cu->device_count == 1 ? "" : "s", cu->device_count - 1);
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

static void kvx__cu_stream_free(kvx_cuda_stream *s);

KVX_API kvx_result kvx_cuda_create(const kvx_cuda_desc *desc, kvx_cuda **out, char *why,
                                   size_t why_len) {
    kvx_cuda_desc d;
    kvx_cuda *cu;
    kvx_result r;
    if (!out)
        return kvx__why(KVX_ERR_INVALID_ARGUMENT, why, why_len, "kvx_cuda_create: out is NULL");
    *out = NULL;
    if (desc) d = *desc;
    else memset(&d, 0, sizeof d);
    if ((r = kvx__settings_apply(kvx__cu_settings, KVX__COUNT(kvx__cu_settings), &d, why,
                                 why_len)))
        return r;
    cu = (kvx_cuda *)kvx__alloc(&d.allocator, sizeof *cu);
    if (!cu)
        return kvx__why(KVX_ERR_NO_MEMORY, why, why_len, "kvx_cuda_create: out of memory");
    memset(cu, 0, sizeof *cu);
    cu->magic = KVX__CU_MAGIC;
    cu->alloc = d.allocator;
    cu->logger = d.logger;
    cu->fence_timeout_s = d.fence_timeout_s;
    snprintf(cu->node_id, sizeof cu->node_id, "%s", d.node_id ? d.node_id : "");
    cu->staging_limit = d.staging_bytes;
    pthread_mutex_init(&cu->mu, NULL);
    if ((r = kvx__cu_load(cu, d.library && *d.library ? d.library : "libcuda.so.1", why,
                          why_len)) != KVX_OK ||
        (r = kvx__cu_start(cu, why, why_len)) != KVX_OK) {
        kvx_cuda_destroy(cu);
        return r;
    }
    kvx__cu_pick_batch(cu, !d.batch);
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
    kvx__free(&cu->alloc, cu->blocks);
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
    kvx__free(&cu->alloc, cu); /* reads the allocator before the block goes */
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
    kvx__cu_counters(out, &c->st, offsetof(kvx_cuda_stats, staging_held));
    pthread_mutex_lock(&c->mu);
    out->staging_held = c->st.staging_held;
    out->staging_peak = c->st.staging_peak;
    out->staging_refused = c->st.staging_refused;
    pthread_mutex_unlock(&c->mu);
}

/* >>cuda: streams ---------------------------------------------------------------------- */

/* The largest pitch a 2-D copy on `device` may use; 0 when the driver
   does not say (strided spans then go row by row). */
static size_t kvx__cu_max_pitch(kvx_cuda *cu, int device) {
    CUdevice dev;
    int v = 0;
    if (cu->f.DeviceGet(&dev, device) != CUDA_SUCCESS ||
        cu->f.DeviceGetAttribute(&v, CU_DEVICE_ATTRIBUTE_MAX_PITCH, dev) != CUDA_SUCCESS || v < 0)
        return 0;
    return (size_t)v;
}

static kvx_result kvx__cu_stream_new(kvx_cuda *cu, int device, int pooled,
                                     kvx_cuda_stream **out, char *why, size_t wl) {
    kvx_cuda_stream *s;
    kvx__cu_scope sc;
    CUresult rc;
    kvx_result r;
    *out = NULL;
    if ((r = kvx__cu_enter(cu, device, &sc, why, wl)) != KVX_OK) return r;
    s = (kvx_cuda_stream *)kvx__alloc(&cu->alloc, sizeof *s);
    if (!s) {
        kvx__cu_leave(cu, &sc);
        return kvx__why(KVX_ERR_NO_MEMORY, why, wl, "out of memory for a CUDA stream");
    }
    memset(s, 0, sizeof *s);
    s->cu = cu;
    s->device = device;
    s->pooled = pooled;
    rc = cu->f.StreamCreate(&s->stream, CU_STREAM_NON_BLOCKING);
    if (rc == CUDA_SUCCESS) s->max_pitch = kvx__cu_max_pitch(cu, device);
    kvx__cu_leave(cu, &sc);
    if (rc != CUDA_SUCCESS) {
        kvx__free(&cu->alloc, s);
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
    kvx__free(&cu->alloc, s->dsts);
    kvx__free(&cu->alloc, s->srcs);
    kvx__free(&cu->alloc, s->sizes);
    kvx__free(&cu->alloc, s->ev);
    kvx__free(&cu->alloc, s->ev_seq);
    kvx__free(&cu->alloc, s->ev_free);
    kvx__free(&cu->alloc, s);
}

static int kvx__cu_scratch(kvx_cuda_stream *s, size_t n) {
    kvx_cuda *cu = s->cu;
    size_t cap = s->cap ? s->cap : 64;
    CUdeviceptr *d, *sr;
    size_t *sz;
    if (n <= s->cap) return 0;
    while (cap < n) cap *= 2;
    d = (CUdeviceptr *)kvx__alloc(&cu->alloc, cap * sizeof *d);
    sr = (CUdeviceptr *)kvx__alloc(&cu->alloc, cap * sizeof *sr);
    sz = (size_t *)kvx__alloc(&cu->alloc, cap * sizeof *sz);
    if (!d || !sr || !sz) {
        kvx__free(&cu->alloc, d); kvx__free(&cu->alloc, sr); kvx__free(&cu->alloc, sz);
        return -1;
    }
    kvx__free(&cu->alloc, s->dsts); kvx__free(&cu->alloc, s->srcs); kvx__free(&cu->alloc, s->sizes);
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
    KVX__ADD(&cu->st.driver_batches, 1);
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
        KVX__ADD(&cu->st.driver_copies, 1);
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
    KVX__ADD(&cu->st.syncs, 1);
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
        return kvx__why(KVX_ERR_NO_MEMORY, why, wl, "out of memory for %zu copy descriptors", n);
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
        KVX__ADD(to_host ? &cu->st.pieces_to_host : &cu->st.pieces_to_device, (uint64_t)k);
        KVX__ADD(to_host ? &cu->st.bytes_to_host : &cu->st.bytes_to_device, bytes);
    }
    return r;
}

static kvx_result kvx__cu_copy(void *ctx, int to_host, const kvx_copy *c, size_t n, char *why,
                               size_t wl) {
    kvx_cuda *cu = (kvx_cuda *)ctx;
    size_t i = 0, j;
    kvx_result r;
    if (!cu || cu->magic != KVX__CU_MAGIC || (n && !c))
        return kvx__why(KVX_ERR_INVALID_ARGUMENT, why, wl, "kvx_mem_ops.copy: bad context or "
                           "NULL pieces");
    KVX__ADD(&cu->st.copy_calls, 1);
    for (j = 0; j < n; j++) {
        if (c[j].len && (!c[j].buf_ptr || !c[j].host))
            return kvx__why(KVX_ERR_INVALID_ARGUMENT, why, wl, "kvx_mem_ops.copy: piece %zu of "
                               "%zu has a NULL %s pointer", j, n, c[j].buf_ptr ? "host" : "buffer");
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
    while (i < cu->num_blocks && cu->st.staging_held + need > cu->staging_limit) {
        if (cu->blocks[i].used) { i++; continue; }
        cu->f.MemFreeHost(cu->blocks[i].p);
        cu->st.staging_held -= cu->blocks[i].size;
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
    if (cu->st.staging_held + size > cu->staging_limit) kvx__cu_pool_trim(cu, size);
    if (cu->st.staging_held + size > cu->staging_limit) return -1;
    if (cu->num_blocks + cu->blocks_pending == cu->cap_blocks) {
        size_t nc = cu->cap_blocks ? 2 * cu->cap_blocks : 16;
        kvx__cu_block *nb = (kvx__cu_block *)kvx__grow(
            &cu->alloc, cu->blocks, cu->num_blocks * sizeof *nb, nc * sizeof *nb);
        if (!nb) return -1;
        cu->blocks = nb;
        cu->cap_blocks = nc;
    }
    cu->st.staging_held += size; /* reserved while the driver allocates */
    cu->blocks_pending++;
    if (cu->st.staging_held > cu->st.staging_peak) cu->st.staging_peak = cu->st.staging_held;
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
        if (!p) { cu->st.staging_refused++; cu->warned_staging = 1; }
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
        cu->st.staging_held -= size;
        cu->st.staging_refused++;
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

static kvx_result kvx__cu_dmabuf_op(void *ctx, void *ptr, uint64_t len, int device, int *fd,
                                    uint64_t *offset, char *why, size_t why_len) {
    return kvx_cuda_dmabuf_fd((kvx_cuda *)ctx, device, ptr, (size_t)len, fd, offset, why,
                              why_len);
}

KVX_API kvx_result kvx_cuda_mem_ops(kvx_mem_ops *out, const kvx_cuda_desc *desc, char *why,
                                    size_t why_len) {
    kvx_cuda *cu;
    kvx_result r;
    if (!out)
        return kvx__why(KVX_ERR_INVALID_ARGUMENT, why, why_len, "kvx_cuda_mem_ops: out is NULL");
    memset(out, 0, sizeof *out);
    if ((r = kvx_cuda_create(desc, &cu, why, why_len)) != KVX_OK) return r;
    cu->owned_by_ops = 1;
    out->copy = kvx__cu_copy;
    out->host_alloc = kvx__cu_host_alloc;
    out->host_free = kvx__cu_host_free;
    out->dmabuf_fd = kvx__cu_dmabuf_op;
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
    if (!cu || !dev_ptr || !size)
        return kvx__why(KVX_ERR_INVALID_ARGUMENT, why, why_len, "kvx_cuda_alloc: NULL argument "
                           "or size 0");
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
    if (!cu || !l || (l->num_buffers && !l->buffers))
        return kvx__why(KVX_ERR_INVALID_ARGUMENT, why, why_len, "kvx_cuda_layout_check: NULL "
                           "argument");
    if (l->num_state && !l->state)
        return kvx__why(KVX_ERR_INVALID_ARGUMENT, why, why_len, "kvx_cuda_layout_check: %u "
                        "state buffers and a NULL state", l->num_state);
    if ((r = kvx__cu_enter(cu, 0, &sc, why, why_len)) != KVX_OK) return r;
    for (i = 0; i < l->num_buffers + l->num_state && r == KVX_OK; i++) {
        const kvx_buffer *b = i < l->num_buffers ? &l->buffers[i] : &l->state[i - l->num_buffers];
        const char *kind = i < l->num_buffers ? "" : "state ";
        uint32_t k = i < l->num_buffers ? i : i - l->num_buffers;
        unsigned type = 0;
        int ord = -1;
        CUdeviceptr base = 0;
        size_t size = 0;
        CUresult rc;
        if (!b->base || !b->length) continue;
        rc = kvx__cu_where(cu, b->base, &type, &ord, &base, &size);
        if (b->mem == KVX_MEM_HOST) {
            if (rc == CUDA_SUCCESS && type == CU_MEMORYTYPE_DEVICE)
                r = kvx__why(KVX_ERR_INVALID_ARGUMENT, why, why_len, "%sbuffer %u (%p) is memory "
                                "of GPU %d but the layout says KVX_MEM_HOST: set mem = "
                                "KVX_MEM_CUDA and device = %d", kind, k, b->base, ord, ord);
            continue;
        }
        if (b->mem != KVX_MEM_CUDA) continue;
        if ((r = kvx__cu_check_device(cu, b->device, why, why_len)) != KVX_OK) break;
        if (rc != CUDA_SUCCESS || type != CU_MEMORYTYPE_DEVICE) {
            r = kvx__why(KVX_ERR_INVALID_ARGUMENT, why, why_len, "%sbuffer %u (%p) says "
                            "KVX_MEM_CUDA on GPU %d but the driver does not know it as device "
                            "memory (%s)", kind, k, b->base, b->device,
                            rc != CUDA_SUCCESS ? kvx__cu_err_name(cu, rc) : "host memory");
        } else if (ord != b->device) {
            r = kvx__why(KVX_ERR_INVALID_ARGUMENT, why, why_len, "%sbuffer %u (%p) is memory of "
                            "GPU %d but the layout says device %d", kind, k, b->base, ord, b->device);
        } else if (kvx__cu_dptr(b->base) + b->length > base + size) {
            r = kvx__why(KVX_ERR_INVALID_ARGUMENT, why, why_len, "%sbuffer %u (%p, %llu bytes) "
                            "runs %llu bytes past the end of its allocation (%llu bytes at 0x%llx)",
                            kind, k, b->base, (unsigned long long)b->length,
                            (unsigned long long)(kvx__cu_dptr(b->base) + b->length - base - size),
                            (unsigned long long)size, (unsigned long long)base);
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
    if (!cu || !dev_ptr || !handle)
        return kvx__why(KVX_ERR_INVALID_ARGUMENT, why, why_len, "kvx_cuda_ipc_export: NULL "
                           "argument");
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
    if (!cu || !handle || !dev_base)
        return kvx__why(KVX_ERR_INVALID_ARGUMENT, why, why_len, "kvx_cuda_ipc_import: NULL "
                           "argument");
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
    if (!cu || !dev_base)
        return kvx__why(KVX_ERR_INVALID_ARGUMENT, why, why_len, "kvx_cuda_ipc_close: NULL "
                           "argument");
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
    if (!cu || !out)
        return kvx__why(KVX_ERR_INVALID_ARGUMENT, why, why_len, "kvx_cuda_stream_create: NULL "
                           "argument");
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

/* Bytes a span's rows reach on one side, from its offset: length for a
   contiguous span, (rows - 1) * pitch + row_len for a strided one; 0 when
   that does not fit 64 bits. */
static uint64_t kvx__cu_extent(const kvx_span *x, uint64_t pitch) {
    uint64_t rows;
    if (!x->row_len) return x->length;
    rows = x->length / x->row_len;
    if (rows - 1 > (UINT64_MAX - x->row_len) / (pitch ? pitch : 1)) return 0;
    return (rows - 1) * pitch + x->row_len;
}

/* A strided span's shape: whole rows, pitches that keep rows apart. */
static kvx_result kvx__cu_check_rows(const kvx_span *x, size_t i, char *why, size_t wl) {
    if (!x->row_len || !x->length) return KVX_OK;
    if (x->length % x->row_len)
        return kvx__why(KVX_ERR_INVALID_ARGUMENT, why, wl, "span %zu: length %llu is not a "
                        "whole number of %llu-byte rows", i, (unsigned long long)x->length,
                        (unsigned long long)x->row_len);
    if (x->length > x->row_len && (x->src_pitch < x->row_len || x->dst_pitch < x->row_len))
        return kvx__why(KVX_ERR_INVALID_ARGUMENT, why, wl, "span %zu: pitches %llu (source) "
                        "and %llu (destination) must be at least the row length %llu (rows "
                        "would overlap)", i, (unsigned long long)x->src_pitch,
                        (unsigned long long)x->dst_pitch, (unsigned long long)x->row_len);
    return KVX_OK;
}

/* Every row of span i inside buffer `b` of l (one side): a KV buffer, or
   a state buffer for a KVX_SPAN_STATE span. */
static kvx_result kvx__cu_check_side(const kvx_layout *l, uint32_t b, uint64_t off,
                                     uint64_t pitch, const kvx_span *x, size_t i,
                                     const char *side, char *why, size_t wl) {
    uint64_t ext = kvx__cu_extent(x, pitch), len;
    int st = x->kind == KVX_SPAN_STATE;
    const kvx_buffer *bufs = st ? l->state : l->buffers;
    uint32_t nb = st ? (l->state ? l->num_state : 0) : l->num_buffers;
    if (b >= nb)
        return kvx__why(KVX_ERR_OUT_OF_RANGE, why, wl, "span %zu names %s %sbuffer %u; that "
                        "layout has %u", i, side, st ? "state " : "", b, nb);
    len = bufs[b].length;
    if ((x->length && !ext) || off > len || ext > len - off) {
        char shape[96];
        if (x->row_len)
            snprintf(shape, sizeof shape, "%llu rows of %llu bytes at pitch %llu",
                     (unsigned long long)(x->length / x->row_len),
                     (unsigned long long)x->row_len, (unsigned long long)pitch);
        else
            snprintf(shape, sizeof shape, "length %llu", (unsigned long long)x->length);
        return kvx__why(KVX_ERR_OUT_OF_RANGE, why, wl, "span %zu (%s buffer %u, offset %llu, "
                        "%s) leaves that buffer (%llu bytes)", i, side, b,
                        (unsigned long long)off, shape, (unsigned long long)len);
    }
    if (x->length && !bufs[b].base)
        return kvx__why(KVX_ERR_INVALID_ARGUMENT, why, wl, "span %zu: %s buffer %u has a NULL "
                        "base", i, side, b);
    return KVX_OK;
}

/* Span i of a copy: of the plan pl (kvx_plan_span), or sp[i] without one. */
static const kvx_span *kvx__cu_span(const kvx_plan *pl, const kvx_span *sp, size_t i,
                                    kvx_span *tmp) {
    return pl ? kvx_plan_span(pl, i, tmp) : &sp[i];
}

/* Every row of every span against both layouts, before any copy: the
   source in src->buffers[buffer], the destination in
   dst->buffers[dst_buffer]; *bytes: what the spans move. */
static kvx_result kvx__cu_check_spans(const kvx_layout *src, const kvx_layout *dst,
                                      const kvx_plan *pl, const kvx_span *sp, size_t n,
                                      uint64_t *bytes, char *why, size_t wl) {
    size_t i;
    kvx_result r;
    *bytes = 0;
    for (i = 0; i < n; i++) {
        kvx_span tmp;
        const kvx_span *x = kvx__cu_span(pl, sp, i, &tmp);
        *bytes += x->length;
        if (x->kind != KVX_SPAN_PAGES && x->kind != KVX_SPAN_STATE)
            return kvx__why(KVX_ERR_INVALID_ARGUMENT, why, wl, "span %zu is of kind %u: only "
                               "page and state spans are copied on the GPU (aux rows are host "
                               "memory)", i, x->kind);
        if ((r = kvx__cu_check_rows(x, i, why, wl)) != KVX_OK ||
            (r = kvx__cu_check_side(src, x->buffer, x->src_offset, x->src_pitch, x, i,
                                    "source", why, wl)) != KVX_OK ||
            (r = kvx__cu_check_side(dst, x->dst_buffer, x->dst_offset, x->dst_pitch, x, i,
                                    "destination", why, wl)) != KVX_OK)
            return r;
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
        CUevent *ne = (CUevent *)kvx__alloc(&cu->alloc, nc * sizeof *ne);
        uint64_t *ns = (uint64_t *)kvx__alloc(&cu->alloc, nc * sizeof *ns);
        CUevent *nf = (CUevent *)kvx__alloc(&cu->alloc, nc * sizeof *nf);
        if (!ne || !ns || !nf) {
            kvx__free(&cu->alloc, ne); kvx__free(&cu->alloc, ns); kvx__free(&cu->alloc, nf);
            return kvx__why(KVX_ERR_NO_MEMORY, why, wl, "out of memory for completion events");
        }
        for (i = 0; i < s->ev_count; i++) {
            ne[i] = s->ev[(s->ev_head + i) % s->ev_cap];
            ns[i] = s->ev_seq[(s->ev_head + i) % s->ev_cap];
        }
        if (s->ev_nfree) memcpy(nf, s->ev_free, s->ev_nfree * sizeof *nf);
        kvx__free(&cu->alloc, s->ev); kvx__free(&cu->alloc, s->ev_seq); kvx__free(&cu->alloc, s->ev_free);
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

/* Adds one 1-D copy to the stream's scratch, queueing the scratch when it
   is full (context current). */
static kvx_result kvx__cu_push(kvx_cuda_stream *s, CUdeviceptr src, CUdeviceptr dst, size_t len,
                               size_t *k, char *why, size_t wl) {
    s->srcs[*k] = src;
    s->dsts[*k] = dst;
    s->sizes[*k] = len;
    if (++*k < s->cap) return KVX_OK;
    *k = 0;
    return kvx__cu_submit(s, KVX__CU_ANY, s->cap, why, wl);
}

/* A strided span: cuMemcpy2DAsync in pieces of at most KVX_CUDA_MAX_2D_ROWS
   rows; row by row (1-D copies through the scratch) when a pitch exceeds
   the device's limit or once the driver refused a 2-D copy in this call
   (*no2d; CUDA_ERROR_INVALID_VALUE or _NOT_SUPPORTED: it may refuse
   device-to-device pitches cuMemAllocPitch did not choose). */
static kvx_result kvx__cu_strided(kvx_cuda_stream *s, CUdeviceptr src, CUdeviceptr dst,
                                  const kvx_span *x, size_t *k, int *no2d, char *why,
                                  size_t wl) {
    kvx_cuda *cu = s->cu;
    uint64_t rows = x->length / x->row_len, at = 0;
    kvx_result r;
    if (x->src_pitch > s->max_pitch || x->dst_pitch > s->max_pitch) *no2d |= 2;
    while (!*no2d && at < rows) {
        CUDA_MEMCPY2D c;
        uint64_t h = rows - at < KVX_CUDA_MAX_2D_ROWS ? rows - at : KVX_CUDA_MAX_2D_ROWS;
        CUresult rc;
        memset(&c, 0, sizeof c);
        c.srcMemoryType = c.dstMemoryType = CU_MEMORYTYPE_UNIFIED; /* device, imported, pinned */
        c.srcDevice = src + (CUdeviceptr)(at * x->src_pitch);
        c.dstDevice = dst + (CUdeviceptr)(at * x->dst_pitch);
        c.srcPitch = (size_t)x->src_pitch;
        c.dstPitch = (size_t)x->dst_pitch;
        c.WidthInBytes = (size_t)x->row_len;
        c.Height = (size_t)h;
        rc = cu->f.Memcpy2DAsync(&c, s->stream);
        KVX__ADD(&cu->st.driver_2d, 1);
        if (rc == CUDA_ERROR_INVALID_VALUE || rc == CUDA_ERROR_NOT_SUPPORTED) {
            kvx__cu_log(cu, KVX_LOG_DEBUG, "cuMemcpy2DAsync on GPU %d (%llu rows of %llu bytes, "
                        "pitches %llu/%llu): %s; row by row instead", s->device,
                        (unsigned long long)h, (unsigned long long)x->row_len,
                        (unsigned long long)x->src_pitch, (unsigned long long)x->dst_pitch,
                        kvx__cu_err_name(cu, rc));
            *no2d |= 1;
            break;
        }
        if (rc != CUDA_SUCCESS)
            return kvx__cu_fail(cu, rc, why, wl, "cuMemcpy2DAsync on GPU %d (%llu rows of %llu "
                                "bytes, 0x%llx -> 0x%llx)", s->device, (unsigned long long)h,
                                (unsigned long long)x->row_len,
                                (unsigned long long)c.srcDevice, (unsigned long long)c.dstDevice);
        at += h;
    }
    if (at < rows) KVX__ADD(&cu->st.rows_1d, rows - at);
    for (; at < rows; at++)
        if ((r = kvx__cu_push(s, src + (CUdeviceptr)(at * x->src_pitch),
                              dst + (CUdeviceptr)(at * x->dst_pitch), (size_t)x->row_len, k,
                              why, wl)) != KVX_OK)
            return r;
    *no2d &= 1; /* a pitch limit holds for that span only */
    return KVX_OK;
}

/* Queues every span (context current): contiguous ones (and strided ones
   whose pitches equal the row) through the scratch, strided ones as 2-D
   copies. */
static kvx_result kvx__cu_queue_spans(kvx_cuda_stream *s, const kvx_layout *src,
                                      const kvx_layout *dst, const kvx_plan *pl,
                                      const kvx_span *spans, size_t n, char *why, size_t wl) {
    size_t i, k = 0;
    int no2d = 0;
    kvx_result r = KVX_OK;
    for (i = 0; i < n && r == KVX_OK; i++) {
        kvx_span tmp;
        const kvx_span *x = kvx__cu_span(pl, spans, i, &tmp);
        CUdeviceptr a = kvx__cu_dptr(kvx_span_addr(src, x, 0));
        CUdeviceptr b = kvx__cu_dptr(kvx_span_addr(dst, x, 1));
        if (!x->length) continue;
        if (!x->row_len || x->length == x->row_len ||
            (x->src_pitch == x->row_len && x->dst_pitch == x->row_len))
            r = kvx__cu_push(s, a, b, (size_t)x->length, &k, why, wl);
        else
            r = kvx__cu_strided(s, a, b, x, &k, &no2d, why, wl);
    }
    if (r == KVX_OK && k) r = kvx__cu_submit(s, KVX__CU_ANY, k, why, wl);
    return r;
}

/* kvx_cuda_copy_spans and kvx_cuda_copy_plan: spans[0..n), or the plan's. */
static kvx_result kvx__cu_copy_spans(kvx_cuda_stream *s, const kvx_layout *src,
                                     const kvx_layout *dst, const kvx_plan *pl,
                                     const kvx_span *spans, size_t n, uint64_t *ticket,
                                     char *why, size_t why_len) {
    kvx_cuda *cu;
    kvx__cu_scope sc;
    uint64_t bytes = 0;
    kvx_result r;
    if (ticket) *ticket = 0;
    if (!s || !src || !dst || (n && !spans && !pl) || (src->num_buffers && !src->buffers) ||
        (dst->num_buffers && !dst->buffers))
        return kvx__why(KVX_ERR_INVALID_ARGUMENT, why, why_len, "kvx_cuda_copy_%s: NULL "
                           "argument", pl ? "plan" : "spans");
    cu = s->cu;
    if ((r = kvx__cu_check_spans(src, dst, pl, spans, n, &bytes, why, why_len)) != KVX_OK)
        return r;
    if (kvx__cu_scratch(s, n < KVX_CUDA_BATCH_MAX ? (n ? n : 1) : KVX_CUDA_BATCH_MAX))
        return kvx__why(KVX_ERR_NO_MEMORY, why, why_len, "out of memory for %zu copy "
                           "descriptors", n);
    if ((r = kvx__cu_enter(cu, s->device, &sc, why, why_len)) != KVX_OK) return r;
    r = kvx__cu_queue_spans(s, src, dst, pl, spans, n, why, why_len);
    if (r == KVX_OK) r = kvx__cu_mark(s, s->submitted + 1, why, why_len);
    if (r != KVX_OK) {
        cu->f.StreamSynchronize(s->stream); /* nothing of this call may still run */
        kvx__cu_leave(cu, &sc);
        return r;
    }
    kvx__cu_leave(cu, &sc);
    s->submitted++;
    if (ticket) *ticket = s->submitted;
    KVX__ADD(&cu->st.span_calls, 1);
    KVX__ADD(&cu->st.spans, (uint64_t)n);
    KVX__ADD(&cu->st.span_bytes, bytes);
    return KVX_OK;
}

KVX_API kvx_result kvx_cuda_copy_spans(kvx_cuda_stream *s, const kvx_layout *src,
                                       const kvx_layout *dst, const kvx_span *spans, size_t n,
                                       uint64_t *ticket, char *why, size_t why_len) {
    return kvx__cu_copy_spans(s, src, dst, NULL, spans, n, ticket, why, why_len);
}

KVX_API kvx_result kvx_cuda_copy_plan(kvx_cuda_stream *s, const kvx_layout *src,
                                      const kvx_layout *dst, const kvx_plan *plan,
                                      uint64_t *ticket, char *why, size_t why_len) {
    if (!plan) {
        if (ticket) *ticket = 0;
        return kvx__why(KVX_ERR_INVALID_ARGUMENT, why, why_len, "kvx_cuda_copy_plan: NULL plan");
    }
    /* the plan's own counts, before kvx_plan_span reads by them */
    if (plan->paged > plan->count ||
        (plan->paged && (!plan->runs || !plan->bufs || plan->nruns > plan->runs_cap ||
                         plan->nbufs > plan->bufs_cap || plan->paged != plan->nbufs * plan->nruns)) ||
        (plan->count > plan->paged && !plan->spans)) {
        if (ticket) *ticket = 0;
        return kvx__why(KVX_ERR_INVALID_ARGUMENT, why, why_len, "kvx_cuda_copy_plan: the plan "
                        "is inconsistent: %zu spans, %zu of them computed from %zu buffer entries "
                        "x %zu runs", plan->count, plan->paged, plan->nbufs, plan->nruns);
    }
    return kvx__cu_copy_spans(s, src, dst, plan, NULL, plan->count, ticket, why, why_len);
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
            KVX__ADD(&cu->st.syncs, 1);
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

/* Ticket 0 is the last submission; one never issued is refused. */
static kvx_result kvx__cu_ticket(const kvx_cuda_stream *s, uint64_t *ticket, char *why,
                                 size_t wl) {
    if (!*ticket) *ticket = s->submitted;
    if (*ticket <= s->submitted) return KVX_OK;
    return kvx__why(KVX_ERR_INVALID_ARGUMENT, why, wl, "ticket %llu was never issued on this "
                       "stream (last %llu)", (unsigned long long)*ticket,
                       (unsigned long long)s->submitted);
}

KVX_API kvx_result kvx_cuda_stream_done(kvx_cuda_stream *s, uint64_t ticket, int *done,
                                        char *why, size_t why_len) {
    kvx__cu_scope sc;
    kvx_result r;
    if (done) *done = 0;
    if (!s || !done)
        return kvx__why(KVX_ERR_INVALID_ARGUMENT, why, why_len, "kvx_cuda_stream_done: NULL "
                           "argument");
    if ((r = kvx__cu_ticket(s, &ticket, why, why_len)) != KVX_OK) return r;
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
    if (!s)
        return kvx__why(KVX_ERR_INVALID_ARGUMENT, why, why_len, "kvx_cuda_stream_wait: NULL "
                           "stream");
    if ((r = kvx__cu_ticket(s, &ticket, why, why_len)) != KVX_OK) return r;
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
    if (!cu || !dev_ptr || !len || !fd || !offset)
        return kvx__why(KVX_ERR_INVALID_ARGUMENT, why, why_len, "kvx_cuda_dmabuf_fd: NULL "
                           "argument or length 0");
    if (!KVX__CU_HAVE_DMABUF || !cu->f.MemGetHandleForAddressRange)
        return kvx__why(KVX_ERR_TRANSPORT, why, why_len, "the CUDA driver in %s (version %d) "
                           "has no cuMemGetHandleForAddressRange: dma-buf export needs CUDA 11.7 "
                           "or newer; GPU memory cannot be registered with the NIC this way "
                           "(nvidia-peermem is the alternative)", cu->library, cu->driver_version);
    if ((r = kvx__cu_enter(cu, device, &sc, why, why_len)) != KVX_OK) return r;
    rc = cu->f.DeviceGet(&dev, device);
    if (rc == CUDA_SUCCESS)
        rc = cu->f.DeviceGetAttribute(&supported, CU_DEVICE_ATTRIBUTE_DMA_BUF_SUPPORTED, dev);
    if (rc != CUDA_SUCCESS || !supported) {
        kvx__cu_leave(cu, &sc);
        return kvx__why(KVX_ERR_TRANSPORT, why, why_len, "GPU %d does not support dma-buf "
                           "(CU_DEVICE_ATTRIBUTE_DMA_BUF_SUPPORTED is 0%s): the driver, its kernel "
                           "module or the Linux kernel lacks it; register GPU memory through "
                           "nvidia-peermem instead", device,
                           rc != CUDA_SUCCESS ? ", query failed" : "");
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
        return kvx__why(KVX_ERR_OUT_OF_RANGE, why, why_len, "dma-buf range %p + %zu leaves its "
                           "allocation (%zu bytes at 0x%llx)", dev_ptr, len, size,
                           (unsigned long long)base);
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

/* >>cuda transport: state ----------------------------------------------------------------- */

#define KVX__CUX_GRACE_S 0.02 /* an unacknowledged destination: how long a destroy waits */

typedef struct kvx__cux_engine kvx__cux_engine;
typedef struct kvx__cux_peer kvx__cux_peer;
typedef struct kvx__cux_room kvx__cux_room;
typedef struct kvx__cux_dst kvx__cux_dst;

#ifndef KVX_CUDA_MAX_CONTRIB
#define KVX_CUDA_MAX_CONTRIB 64 /* prefill ranks one decode room takes bytes from */
#endif

enum { KVX__CUX_MSG_NONE = 0, KVX__CUX_MSG_ABORT = 1, KVX__CUX_MSG_CONFIRM = 2 };

/* Prefill: one decode engine (one control connection) whose pool is mapped
   here. Rooms reference it; the engine's list holds one reference until the
   connection is gone and no room has copies left on its stream. */
struct kvx__cux_peer {
    kvx__cux_engine *ce;
    int refs; /* atomic */
    uint64_t instance;
    char addr[64], name[128];
    uint8_t *raw; /* copy of its endpoint; info points into it */
    kvx__cux_ep info;
    pthread_mutex_t mu; /* everything below, and the rooms' fields marked so */
    pthread_cond_t cv;  /* a room's copies or its completion finished */
    int ready, dead, same_process;
    void **imports;     /* per allocation: the base mapped here */
    kvx_buffer *dbufs;
    kvx_layout dst;     /* the decode pool: its shape (kvx__cux_shape), the bases mapped here */
    char dtype[32];     /* dst.dtype points here */
    uint64_t *item;     /* the decode's item_len per KV buffer */
    kvx_buffer *dstate; /* its state buffers as mapped here (HYBRID STATE) */
    uint64_t *sitem;    /* the decode's item_len per state buffer (its shape) */
    kvx_cuda_stream *stream;
    kvx__cux_dst *active; /* destinations with copies in flight or a completion due */
    kvx__cux_peer *next;   /* engine list, under ce->mu */
};

/* Decode: a prefill instance, by the bootstrap address rooms name. */
typedef struct kvx__cux_pf {
    char addr[128];
    uint32_t pid;
    struct kvx__cux_pf *next;
} kvx__cux_pf;

/* Prefill: one decode rank a room writes to (one room frame; a room has
   several when the decode instance has the larger TP). */
struct kvx__cux_dst {
    kvx__cux_room *cr;
    kvx__cux_peer *peer;
    int32_t *pages;
    uint32_t n;
    int32_t aux;        /* the decode's aux slot, -1 = none */
    int32_t *state;     /* the decode's state indices (HYBRID STATE), nstate of them */
    uint32_t nstate;
    int sends_aux;      /* this rank writes that decode room's aux rows */
    int dummy;          /* MLA dummy (kvx_mla_dummy): completes without bytes */
    uint64_t bpp;       /* page bytes of the destination this rank supplies */
    kvx_boot_peer conn; /* its room frame's connection (conn_id, addr) */
    kvx_plan plan;
    uint64_t bytes;     /* queued */
    /* under peer->mu */
    uint64_t ticket;    /* the last submission on the peer's stream */
    int busy, listed;
    kvx__cux_dst *anext, *aprev;
};

struct kvx__cux_room {
    kvx__xroom x; /* x.mu: the prefill fields below (taken after a peer's mu, never before) */
    kvx__cux_engine *ce;
    /* prefill */
    pthread_cond_t cv;  /* inflight went to 0 */
    kvx__cux_dst *dsts; /* one per room frame */
    uint32_t ndsts, cap_dsts;
    int gone;           /* atomic: the sender is being destroyed */
    int inflight;       /* destinations busy + reports under way + chunks being queued */
    int last_queued, finished, msg;
    int told;           /* atomic: the decode side has its final word (status or abort) */
    int aborted;        /* decode, atomic: this side's abort went to the prefill */
    char msg_reason[KVX_ERROR_MAX];
    /* decode, under ce->mu */
    int32_t aux_slot;
    uint32_t npages, nstate; /* nstate: its state indices (HYBRID STATE) */
    uint64_t from[KVX_CUDA_MAX_CONTRIB]; /* connections that acknowledged the destination */
    uint8_t fin[KVX_CUDA_MAX_CONTRIB];   /* ... and said they stopped writing */
    uint32_t nfrom, ncontrib;            /* ncontrib: prefill ranks it takes bytes from */
    uint64_t aux_from;       /* the connection whose aux message was placed (0 = none yet) */
    int sent, closing, placing, fenced;
    uint32_t fence_pid;      /* the prefill process, once its connection is gone */
    uint64_t fence_deadline; /* ... and when to stop waiting for it */
};

struct kvx__cux_engine {
    kvx_engine *engine;
    kvx_cuda *cu;
    kvx_boot *boot;
    kvx_role role;
    int device; /* prefill: the GPU of every KV buffer */
    double fence_s;
    uint32_t pid;
    char node[KVX__CUX_TEXT + 1], host[KVX__CUX_TEXT + 1];
    pthread_mutex_t mu;
    pthread_cond_t cv;
    /* prefill */
    kvx__cux_peer *peers;
    pthread_t worker;
    int worker_started, stop;
    int work; /* atomic: rooms on the peers' active lists */
    kvx__cux_peer **scan;
    size_t scan_cap;
    uint64_t aux_row_bytes;
    uint8_t *amsg; /* an aux message being built (completion thread only) */
    /* decode */
    uint8_t *ep;
    size_t ep_len;
    kvx__cux_pf *pfs;
    /* counters (atomics) */
    kvx_cuda_transport_stats st;
};

static kvx__cux_engine *kvx__cux_ce(const kvx_engine *e) {
    return (kvx__cux_engine *)kvx_engine_backend_data(e);
}
static kvx__cux_room *kvx__cux_cr(const kvx_room *r) { return (kvx__cux_room *)kvx_room_data(r); }

/* >>cuda transport: node identity ------------------------------------------------------------ */

/* Copies s into a 64-byte text field's string, printable characters only. */
static void kvx__cux_clean(char *out, const char *s) {
    size_t i, n = 0;
    for (i = 0; s[i] && n < KVX__CUX_TEXT; i++)
        if (s[i] >= 0x20 && s[i] <= 0x7e) out[n++] = s[i];
    out[n] = 0;
}

/* This node: the kvx_cuda's node_id (KVX_CUDA_NODE_ID), else the kernel's boot id (the same in every
   container of a host, different on every other host and after a reboot),
   else the host name. */
static void kvx__cux_identity(kvx__cux_engine *ce) {
    const char *env = NULL;
    char buf[128] = "";
    FILE *f;
    gethostname(buf, sizeof buf - 1);
    buf[sizeof buf - 1] = 0;
    kvx__cux_clean(ce->host, buf);
    if (!ce->host[0]) snprintf(ce->host, sizeof ce->host, "?");
    env = ce->cu && ce->cu->node_id[0] ? ce->cu->node_id : NULL;
    buf[0] = 0;
    if (env) {
        snprintf(buf, sizeof buf, "%s", env);
    } else if ((f = fopen("/proc/sys/kernel/random/boot_id", "r")) != NULL) {
        if (!fgets(buf, sizeof buf, f)) buf[0] = 0;
        fclose(f);
    }
    kvx__cux_clean(ce->node, buf);
    if (!ce->node[0]) {
        snprintf(buf, sizeof buf, "host:%s", ce->host);
        kvx__cux_clean(ce->node, buf);
    }
    ce->pid = (uint32_t)getpid();
}

/* >>cuda transport: endpoints ------------------------------------------------------------------ */

static void kvx__cux_ep_head(const kvx__cux_engine *ce, uint8_t *p) {
    memset(p, 0, KVX__CUX_FIXED);
    memcpy(p, "kvx-cuda", 8);
    kvx__le_w16(p + 8, KVX_CUDA_ENDPOINT_VERSION);
    kvx__le_w16(p + 10, (uint16_t)ce->role);
    kvx__le_w32(p + 12, ce->pid);
    memcpy(p + 16, ce->node, strlen(ce->node));
    memcpy(p + 80, ce->host, strlen(ce->host));
}

/* Decode: exports the allocation under every KV and state buffer (once per
   allocation: buffers that share one share its handle) and lists its aux
   rows. */
static kvx_result kvx__cux_ep_decode(kvx__cux_engine *ce, char *why, size_t wl) {
    const kvx_layout *l = kvx_engine_layout(ce->engine);
    uint32_t nb = l->num_buffers, na = l->num_aux, ns = l->num_state, nalloc = 0, i, j;
    uint64_t *bases = (uint64_t *)kvx_engine_alloc(ce->engine, (nb + ns) * sizeof(uint64_t));
    uint8_t head[KVX__CUX_FIXED];
    kvx__buf allocs, bufs, sts, ep; /* the tables, then the whole endpoint */
    kvx_result r = KVX_OK;
    kvx__buf_init(&allocs, &kvx_engine_settings(ce->engine)->allocator);
    bufs = sts = ep = allocs;
    for (i = 0; bases && i < nb + ns; i++) {
        uint8_t h[KVX_CUDA_IPC_HANDLE_BYTES];
        uint64_t off = 0, alen = 0, base;
        const kvx_buffer *b = i < nb ? &l->buffers[i] : &l->state[i - nb];
        kvx__buf *t = i < nb ? &bufs : &sts;
        r = kvx_cuda_ipc_export(ce->cu, b->device, b->base, h, &off, &alen, why, wl);
        if (r != KVX_OK) goto out;
        base = (uint64_t)(uintptr_t)b->base - off;
        for (j = 0; j < nalloc && bases[j] != base; j++) {}
        if (j == nalloc) {
            bases[nalloc++] = base;
            kvx__buf_put(&allocs, h, KVX_CUDA_IPC_HANDLE_BYTES);
            kvx__buf_put64(&allocs, base);
            kvx__buf_put32(&allocs, (uint32_t)b->device);
            kvx__buf_put32(&allocs, 0);
            kvx__buf_put64(&allocs, alen);
        }
        kvx__buf_put32(t, j);
        kvx__buf_put32(t, 0);
        kvx__buf_put64(t, off);
        kvx__buf_put64(t, b->length);
        if (i >= nb) kvx__buf_put64(t, b->item_len);
    }
    ce->ep_len = KVX__CUX_FIXED + allocs.len + bufs.len + (size_t)na * KVX__CUX_AUXE + sts.len;
    if (ce->ep_len > KVX_BOOT_MAX_ENDPOINT) {
        r = kvx__why(KVX_ERR_INVALID_ARGUMENT, why, wl, "the cuda endpoint needs %zu bytes for "
                        "%u KV and %u state buffers in %u GPU allocations, more than a kvx_boot "
                        "hello carries (KVX_BOOT_MAX_ENDPOINT, %u): put the buffers in fewer "
                        "allocations (buffers sharing one cost 24 bytes each, state buffers 32, "
                        "an allocation 88) or build both sides with a larger "
                        "KVX_BOOT_MAX_ENDPOINT", ce->ep_len, nb, ns, nalloc,
                        (unsigned)KVX_BOOT_MAX_ENDPOINT);
        goto out;
    }
    kvx__cux_ep_head(ce, head);
    kvx__le_w32(head + 144, nalloc);
    kvx__le_w32(head + 148, nb);
    kvx__le_w32(head + 152, na);
    kvx__le_w32(head + 156, ns);
    kvx__buf_put(&ep, head, sizeof head);
    kvx__buf_put(&ep, allocs.data, allocs.len);
    kvx__buf_put(&ep, bufs.data, bufs.len);
    for (i = 0; i < na; i++) kvx__buf_put64(&ep, l->aux[i].item_len);
    kvx__buf_put(&ep, sts.data, sts.len);
    if (!bases || allocs.oom || bufs.oom || sts.oom || ep.oom) {
        r = kvx__why(KVX_ERR_NO_MEMORY, why, wl, "out of memory building the cuda endpoint");
        goto out;
    }
    ce->ep = (uint8_t *)ep.data; /* the engine's allocator: kvx_engine_free releases it */
    ep.data = NULL;
    KVX__STORE(&ce->st.exported_allocs, (uint64_t)nalloc);
out:
    kvx_engine_free(ce->engine, bases);
    kvx__buf_free(&allocs);
    kvx__buf_free(&bufs);
    kvx__buf_free(&sts);
    kvx__buf_free(&ep);
    return r;
}

/* >>cuda transport: prefill: peers ------------------------------------------------------------ */

/* Closes what maps the decode pool: the stream (after its copies), the
   imports. Rooms may still point at the peer (all failed,
   none with copies in flight); its layout stays readable until it is freed. */
static void kvx__cux_unmap(kvx__cux_peer *p, void **imports) {
    kvx__cux_engine *ce = p->ce;
    char why[KVX_ERROR_MAX];
    uint32_t i;
    for (i = 0; imports && i < p->info.nalloc; i++) {
        if (!imports[i] || p->same_process) continue;
        if (kvx_cuda_ipc_close(ce->cu, ce->device, imports[i], why, sizeof why) != KVX_OK)
            kvx_engine_log(ce->engine, KVX_LOG_WARN, "kvx.cuda", 0, "decode %s: %s", p->name, why);
        KVX__SUB(&ce->st.imports_live, 1);
    }
    kvx_engine_free(ce->engine, imports);
}

static void kvx__cux_peer_release(kvx__cux_peer *p) {
    kvx_cuda_stream *stream;
    void **imports;
    int ready;
    pthread_mutex_lock(&p->mu);
    stream = p->stream;
    imports = p->imports;
    ready = p->ready;
    p->stream = NULL;
    p->imports = NULL;
    p->ready = 0;
    pthread_mutex_unlock(&p->mu);
    if (stream) kvx_cuda_stream_destroy(stream); /* waits for its copies */
    kvx__cux_unmap(p, imports);
    if (ready) KVX__SUB(&p->ce->st.peers, 1);
}

static void kvx__cux_peer_free(kvx__cux_peer *p) {
    kvx_engine *e = p->ce->engine;
    kvx__cux_peer_release(p);
    kvx_engine_free(e, p->dbufs);
    kvx_engine_free(e, p->item);
    kvx_engine_free(e, p->dstate);
    kvx_engine_free(e, p->sitem);
    kvx_engine_free(e, p->raw);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
    kvx_engine_free(e, p);
}

static void kvx__cux_peer_unref(kvx__cux_peer *p) {
    if (p && KVX__SUB(&p->refs, 1) == 0) kvx__cux_peer_free(p);
}

/* The KV layout shape of a peer: its own (kvx_boot's hello) where kvx_boot
   gives it, else this engine's (peers of equal shape). Only the shape is
   read: buffer count and item_len, page size, dtype, heads, head_begin,
   layer_begin, mla, state buffer count, item_len and type. */
static const kvx_layout *kvx__cux_shape(const kvx__cux_engine *ce, const kvx_boot_peer *bp) {
    return bp && bp->layout && bp->layout->num_buffers ? bp->layout : kvx_engine_layout(ce->engine);
}

/* Keeps the decode's shape in p->dst (the bases come with the mapping). */
static int kvx__cux_shape_copy(kvx__cux_engine *ce, kvx__cux_peer *p, const kvx_layout *sh) {
    uint32_t i;
    p->item = (uint64_t *)kvx_engine_alloc(ce->engine, (sh->num_buffers ? sh->num_buffers : 1) *
                                                           sizeof *p->item);
    if (!p->item) return -1;
    for (i = 0; i < sh->num_buffers; i++) p->item[i] = sh->buffers[i].item_len;
    if (sh->num_state && sh->state) {
        p->sitem = (uint64_t *)kvx_engine_alloc(ce->engine, sh->num_state * sizeof *p->sitem);
        if (!p->sitem) return -1;
        for (i = 0; i < sh->num_state; i++) p->sitem[i] = sh->state[i].item_len;
    }
    p->dst = *sh;
    p->dst.buffers = NULL;
    p->dst.aux = NULL;
    p->dst.num_aux = 0;
    p->dst.state = NULL;
    if (!p->sitem) p->dst.num_state = 0;
    snprintf(p->dtype, sizeof p->dtype, "%s", sh->dtype ? sh->dtype : "");
    p->dst.dtype = p->dtype;
    return 0;
}

/* The live peer of a control connection, referenced; created from its hello
   the first time. NULL with a sentence when its endpoint is unusable. */
static kvx__cux_peer *kvx__cux_peer_get(kvx__cux_engine *ce, const kvx_boot_peer *bp, char *why,
                                        size_t wl) {
    kvx__cux_peer *p;
    char msg[KVX_ERROR_MAX];
    pthread_mutex_lock(&ce->mu);
    for (p = ce->peers; p; p = p->next)
        if (!p->dead && p->instance == bp->instance && !strcmp(p->addr, bp->addr)) break;
    if (p) KVX__ADD(&p->refs, 1);
    pthread_mutex_unlock(&ce->mu);
    if (p) return p;
    p = (kvx__cux_peer *)kvx_engine_alloc(ce->engine, sizeof *p);
    if (!p) {
        kvx__set_why(why, wl, "out of memory for decode %s", bp->addr);
        return NULL;
    }
    memset(p, 0, sizeof *p);
    p->ce = ce;
    p->refs = 2; /* the engine list's and the caller's */
    p->instance = bp->instance;
    snprintf(p->addr, sizeof p->addr, "%s", bp->addr);
    snprintf(p->name, sizeof p->name, "%s", bp->addr);
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    p->raw = (uint8_t *)kvx_engine_alloc(ce->engine, bp->endpoint_len ? bp->endpoint_len : 1);
    if (!p->raw) {
        kvx__set_why(why, wl, "out of memory for decode %s", bp->addr);
        goto drop;
    }
    if (bp->endpoint_len) memcpy(p->raw, bp->endpoint, bp->endpoint_len);
    if (kvx__cux_parse(p->raw, bp->endpoint_len, &p->info, msg, sizeof msg) != KVX_OK ||
        p->info.role != KVX_ROLE_DECODE) {
        kvx__set_why(why, wl, "decode %s sent no usable cuda endpoint in its hello (%s)", bp->addr,
                     p->info.role == KVX_ROLE_PREFILL ? "it is a prefill endpoint" : msg);
        goto drop;
    }
    snprintf(p->name, sizeof p->name, "%s (pid %u, host %s)", bp->addr, p->info.pid, p->info.host);
    if (kvx__cux_shape_copy(ce, p, kvx__cux_shape(ce, bp)) != 0) {
        kvx__set_why(why, wl, "out of memory for decode %s", bp->addr);
        goto drop;
    }
    pthread_mutex_lock(&ce->mu);
    p->next = ce->peers;
    ce->peers = p;
    pthread_mutex_unlock(&ce->mu);
    return p;
drop:
    p->refs = 1;
    kvx__cux_peer_unref(p);
    return NULL;
}

static kvx_result kvx__cux_other_node(const char *who, const char *node, const char *here,
                                      char *why, size_t wl) {
    return kvx__why(KVX_ERR_PEER, why, wl, "%s is on another node (CUDA IPC works within one "
                       "node): use tcp or rdma between nodes; its node id '%s', here '%s'", who,
                       node, here);
}

/* cuIpcOpenMemHandle into this engine's GPU, with a short sentence: the
   decode side puts its own words before it, within KVX_ERROR_MAX. */
static kvx_result kvx__cux_import(kvx__cux_engine *ce, const uint8_t *h, void **base, char *why,
                                  size_t wl) {
    kvx_cuda *cu = ce->cu;
    kvx__cu_scope sc;
    CUipcMemHandle ih;
    CUdeviceptr d = 0;
    CUresult rc;
    kvx_result r;
    if ((r = kvx__cu_enter(cu, ce->device, &sc, why, wl)) != KVX_OK) return r;
    memcpy(&ih, h, sizeof ih);
    rc = cu->f.IpcOpenMemHandle(&d, ih, CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS);
    kvx__cu_leave(cu, &sc);
    if (rc != CUDA_SUCCESS) {
        kvx__set_why(why, wl, "cuIpcOpenMemHandle_v2 failed: %s (%s)", kvx__cu_err_name(cu, rc),
                     kvx__cu_err_text(cu, rc));
        return rc == CUDA_ERROR_OUT_OF_MEMORY ? KVX_ERR_NO_MEMORY : KVX_ERR_TRANSPORT;
    }
    *base = kvx__cu_vptr(d);
    return KVX_OK;
}

/* Under p->mu, imports mapped: the decode's state buffers (HYBRID STATE)
   from its endpoint, which must announce what its hello's shape says. */
static kvx_result kvx__cux_peer_state(kvx__cux_peer *p, char *why, size_t wl) {
    kvx__cux_engine *ce = p->ce;
    uint32_t i, a;
    uint64_t off, len, item;
    if (p->info.ns != p->dst.num_state)
        return kvx__why(KVX_ERR_LAYOUT_MISMATCH, why, wl, "decode %s announces %u state buffers "
                        "in its endpoint and %u in its layout", p->name, p->info.ns,
                        p->dst.num_state);
    if (!p->info.ns) return KVX_OK;
    p->dstate = (kvx_buffer *)kvx_engine_alloc(ce->engine, p->info.ns * sizeof(kvx_buffer));
    if (!p->dstate)
        return kvx__why(KVX_ERR_NO_MEMORY, why, wl, "out of memory mapping decode %s", p->name);
    for (i = 0; i < p->info.ns; i++) {
        kvx__cux_ep_state(&p->info, i, &a, &off, &len, &item);
        if (item != p->sitem[i])
            return kvx__why(KVX_ERR_LAYOUT_MISMATCH, why, wl, "decode %s announces %llu-byte rows "
                            "for state buffer %u in its endpoint and %llu in its layout", p->name,
                            (unsigned long long)item, i, (unsigned long long)p->sitem[i]);
        memset(&p->dstate[i], 0, sizeof p->dstate[i]);
        p->dstate[i].base = (char *)p->imports[a] + off; /* a < nalloc: kvx__cux_parse */
        p->dstate[i].length = len;
        p->dstate[i].item_len = item;
        p->dstate[i].mem = KVX_MEM_CUDA;
        p->dstate[i].device = ce->device;
    }
    p->dst.state = p->dstate;
    return KVX_OK;
}

/* Under p->mu: maps the decode pool (once per peer). */
static kvx_result kvx__cux_peer_setup(kvx__cux_peer *p, char *why, size_t wl) {
    kvx__cux_engine *ce = p->ce;
    char who[160], msg[KVX_ERROR_MAX];
    uint32_t i;
    kvx_result r = KVX_OK;
    if (p->ready) return KVX_OK;
    snprintf(who, sizeof who, "decode %s (host %s)", p->addr, p->info.host);
    if (strcmp(p->info.node, ce->node))
        return kvx__cux_other_node(who, p->info.node, ce->node, why, wl);
    if (p->info.nb != p->dst.num_buffers)
        return kvx__why(KVX_ERR_LAYOUT_MISMATCH, why, wl, "decode %s announces %u KV buffers "
                           "in its endpoint and %u in its layout", p->name, p->info.nb,
                           p->dst.num_buffers);
    p->same_process = p->info.pid == ce->pid;
    p->imports = (void **)kvx_engine_alloc(ce->engine, p->info.nalloc * sizeof(void *));
    p->dbufs = (kvx_buffer *)kvx_engine_alloc(ce->engine, p->info.nb * sizeof(kvx_buffer));
    if (!p->imports || !p->dbufs) {
        r = kvx__why(KVX_ERR_NO_MEMORY, why, wl, "out of memory mapping decode %s", p->name);
        goto fail;
    }
    memset(p->imports, 0, p->info.nalloc * sizeof(void *));
    for (i = 0; i < p->info.nalloc; i++) {
        uint64_t base, alen;
        int32_t dev;
        const uint8_t *h = kvx__cux_ep_alloc(&p->info, i, &base, &dev, &alen);
        if (p->same_process) { /* this process's own memory: no import needed (or possible) */
            p->imports[i] = (void *)(uintptr_t)base;
            continue;
        }
        r = kvx__cux_import(ce, h, &p->imports[i], msg, sizeof msg);
        if (r != KVX_OK) {
            kvx__set_why(why, wl, "GPU memory of decode %s (allocation %u of %u, %llu bytes on its "
                         "GPU %d) cannot be mapped: %s", p->addr, i + 1, p->info.nalloc,
                         (unsigned long long)alen, (int)dev, msg);
            goto fail;
        }
        KVX__ADD(&ce->st.imports, 1);
        KVX__ADD(&ce->st.imports_live, 1);
    }
    for (i = 0; i < p->info.nb; i++) {
        uint32_t a;
        uint64_t off, len;
        kvx__cux_ep_buf(&p->info, i, &a, &off, &len);
        memset(&p->dbufs[i], 0, sizeof p->dbufs[i]);
        p->dbufs[i].base = (char *)p->imports[a] + off;
        p->dbufs[i].length = len;
        p->dbufs[i].item_len = p->item[i];
        p->dbufs[i].mem = KVX_MEM_CUDA;
        p->dbufs[i].device = ce->device; /* the context the import is reached through */
    }
    p->dst.buffers = p->dbufs;
    if ((r = kvx__cux_peer_state(p, why, wl)) != KVX_OK) goto fail;
    if ((r = kvx_cuda_stream_create(ce->cu, ce->device, &p->stream, msg, sizeof msg)) != KVX_OK) {
        kvx__set_why(why, wl, "cannot create a stream for decode %s: %s", p->name, msg);
        goto fail;
    }
    p->ready = 1;
    KVX__ADD(&ce->st.peers, 1);
    kvx_engine_log(ce->engine, KVX_LOG_INFO, "kvx.cuda", 0, "decode %s: %u KV buffers in %u GPU "
                   "allocation%s %s", p->name, p->info.nb, p->info.nalloc,
                   p->info.nalloc == 1 ? "" : "s",
                   p->same_process ? "of this same process" : "imported through CUDA IPC");
    return KVX_OK;
fail:
    kvx__cux_unmap(p, p->imports);
    kvx_engine_free(ce->engine, p->dbufs);
    kvx_engine_free(ce->engine, p->dstate);
    p->imports = NULL;
    p->dbufs = NULL;
    p->dstate = NULL;
    p->dst.state = NULL;
    return r;
}

/* Under ce->mu, then each p->mu: unlinks dead peers whose rooms are done. */
static void kvx__cux_prune(kvx__cux_engine *ce) {
    kvx__cux_peer **pp, *gone = NULL, *p;
    pthread_mutex_lock(&ce->mu);
    pp = &ce->peers;
    while ((p = *pp) != NULL) {
        int drop;
        pthread_mutex_lock(&p->mu);
        drop = p->dead && !p->active;
        pthread_mutex_unlock(&p->mu);
        if (!drop) { pp = &p->next; continue; }
        *pp = p->next;
        p->next = gone;
        gone = p;
    }
    pthread_mutex_unlock(&ce->mu);
    while (gone) {
        p = gone;
        gone = p->next;
        kvx__cux_peer_release(p); /* closed on disconnect, even while failed rooms point at it */
        kvx__cux_peer_unref(p);
    }
}

/* >>cuda transport: prefill: rooms ------------------------------------------------------------ */

/* Under p->mu: the destination joins / leaves its peer's active list. */
static void kvx__cux_list(kvx__cux_peer *p, kvx__cux_dst *d) {
    if (d->listed) return;
    d->listed = 1;
    d->aprev = NULL;
    d->anext = p->active;
    if (p->active) p->active->aprev = d;
    p->active = d;
    KVX__ADD(&p->ce->work, 1);
}
static void kvx__cux_unlist(kvx__cux_peer *p, kvx__cux_dst *d) {
    if (!d->listed) return;
    d->listed = 0;
    if (d->aprev) d->aprev->anext = d->anext;
    else p->active = d->anext;
    if (d->anext) d->anext->aprev = d->aprev;
    d->anext = d->aprev = NULL;
    KVX__SUB(&p->ce->work, 1);
}

static void kvx__cux_kick(kvx__cux_engine *ce) {
    pthread_mutex_lock(&ce->mu);
    pthread_cond_broadcast(&ce->cv);
    pthread_mutex_unlock(&ce->mu);
}

/* Sends what a room owes its decode side(s) once its copies have stopped
   (kvx_boot tells every decode rank of the room). */
static void kvx__cux_send_msg(kvx__cux_engine *ce, kvx__cux_room *cr, int msg, const char *reason) {
    kvx_room *r = cr->x.room;
    KVX__STORE(&cr->told, 1);
    if (msg == KVX__CUX_MSG_ABORT)
        kvx_boot_abort(ce->boot, r, reason);
    else if (msg == KVX__CUX_MSG_CONFIRM &&
             kvx_boot_send_status(ce->boot, r, KVX_POLL_FAILED, kvx_room_result(r), 0,
                                  kvx_room_error(r)) != KVX_OK)
        kvx_boot_abort(ce->boot, r, kvx_room_error(r)); /* no room frame yet: it answers it */
}

/* Under cr->x.mu: one thing in flight less; at 0, the message owed (if
   any) is taken into *msg/reason for the caller to send after unlocking. */
static void kvx__cux_settle(kvx__cux_room *cr, int *msg, char *reason) {
    *msg = 0;
    if (--cr->inflight > 0) return;
    pthread_cond_broadcast(&cr->cv);
    if (cr->msg && !KVX__LOAD(&cr->gone)) {
        *msg = cr->msg;
        cr->msg = 0;
        memcpy(reason, cr->msg_reason, KVX_ERROR_MAX);
    }
}

/* Owes the decode side msg: now when nothing of the room is in flight,
   else when the last of it settles. The decode side takes a Failed status
   or an abort as the promise that no more bytes land. */
static void kvx__cux_owe(kvx__cux_room *cr, int msg, const char *reason) {
    pthread_mutex_lock(&cr->x.mu);
    if (cr->inflight) {
        if (!cr->msg) {
            cr->msg = msg;
            snprintf(cr->msg_reason, sizeof cr->msg_reason, "%s", reason ? reason : "aborted");
        }
        pthread_mutex_unlock(&cr->x.mu);
        return;
    }
    pthread_mutex_unlock(&cr->x.mu);
    kvx__cux_send_msg(cr->ce, cr, msg, reason);
}

static kvx_result kvx__cux_fail_tell(kvx_room *r, kvx_result res, const char *fmt, ...)
    KVX_PRINTF(3, 4);
/* Fails a sender by this side's decision and returns res: room_failed
   tells the decode side, once its copies have stopped. */
static kvx_result kvx__cux_fail_tell(kvx_room *r, kvx_result res, const char *fmt, ...) {
    char msg[KVX_ERROR_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    kvx_room_fail(r, res, "%s", msg);
    return res;
}

/* The TP size and rank of this engine (kvx_boot's desc; 0 = 1). */
static void kvx__cux_tp(const kvx__cux_engine *ce, int *tp, int *rank) {
    const kvx_engine_desc *d = kvx_engine_settings(ce->engine);
    *tp = d->boot.tp_size > 0 ? d->boot.tp_size : 1;
    *rank = d->boot.tp_rank > 0 ? d->boot.tp_rank : 0;
}

/* What this prefill rank owes the decode rank behind bp (PARALLEL LAYOUTS
   in kvx.h): the page bytes of its pool it supplies, whether it writes the
   aux rows, whether it is an MLA dummy. KVX_ERR_LAYOUT_MISMATCH with a
   sentence when the two layouts do not combine. */
static kvx_result kvx__cux_share(kvx__cux_engine *ce, const kvx_boot_peer *bp, kvx__cux_dst *d,
                                 char *why, size_t wl) {
    const kvx_layout *l = kvx_engine_layout(ce->engine);
    char msg[KVX_ERROR_MAX];
    int tp, rank;
    kvx_result r;
    kvx__cux_tp(ce, &tp, &rank);
    r = kvx_layout_overlap(l, kvx__cux_shape(ce, bp), &d->bpp, &d->sends_aux, msg, sizeof msg);
    if (r != KVX_OK)
        return kvx__why(r, why, wl, "decode %s (tp rank %d of %d, pp rank %d of %d) cannot take "
                        "this prefill rank's pages: %s", bp->addr, bp->tp_rank, bp->tp_size,
                        bp->pp_rank, bp->pp_size, msg);
    d->dummy = kvx_mla_dummy(l->mla, tp, rank, bp->tp_size);
    if (d->dummy) d->bpp = 0, d->sends_aux = 0;
    return KVX_OK;
}

/* Under cr->x.mu: why destination d cannot join the room's others, or
   NULL. kvx_boot reports one byte count to every decode rank of a room, so
   they must all receive as much. */
static const char *kvx__cux_dst_bad(const kvx__cux_room *cr, const kvx__cux_dst *d) {
    const kvx__cux_dst *o = cr->ndsts ? &cr->dsts[0] : NULL;
    if (KVX__LOAD(&cr->gone)) return "";
    if (o && (o->bpp != d->bpp || (o->sends_aux && o->aux >= 0) != (d->sends_aux && d->aux >= 0) ||
              (o->sends_aux ? o->nstate : 0) != (d->sends_aux ? d->nstate : 0)))
        return "its decode ranks would receive different byte counts from this prefill rank";
    return NULL;
}

/* kvx_boot hook (prefill): a decode rank's destination for a sender (once
   per decode rank that serves the room). */
static kvx_result kvx__cux_on_room(kvx_boot *b, kvx_room *r, const kvx_boot_peer *bp,
                                   const int32_t *dst, uint32_t n, int32_t aux,
                                   const int32_t *dst_state, uint32_t nstate) {
    kvx__cux_engine *ce = (kvx__cux_engine *)kvx_boot_user(b);
    kvx__cux_room *cr = kvx__cux_cr(r);
    const kvx_layout *l = kvx_engine_layout(ce->engine);
    char why[KVX_ERROR_MAX];
    const char *bad;
    kvx__cux_dst d;
    kvx_result res;
    uint32_t i;
    memset(&d, 0, sizeof d);
    d.aux = aux;
    d.plan.allocator = &kvx_engine_settings(ce->engine)->allocator;
    if (!(d.peer = kvx__cux_peer_get(ce, bp, why, sizeof why)))
        return kvx__cux_fail_tell(r, KVX_ERR_PROTOCOL, "%s", why);
    pthread_mutex_lock(&d.peer->mu);
    res = d.peer->dead ? KVX_ERR_PEER_LOST : kvx__cux_peer_setup(d.peer, why, sizeof why);
    if (res == KVX_ERR_PEER_LOST)
        snprintf(why, sizeof why, "lost connection with decode %s", d.peer->name);
    pthread_mutex_unlock(&d.peer->mu);
    if (res == KVX_OK) res = kvx__cux_share(ce, bp, &d, why, sizeof why);
    if (res == KVX_OK && aux >= 0 && d.sends_aux) {
        int ok = d.peer->info.na == l->num_aux && l->num_aux;
        for (i = 0; ok && i < l->num_aux; i++)
            ok = kvx__cux_ep_aux(&d.peer->info, i) == l->aux[i].item_len;
        if (!ok)
            res = kvx__why(KVX_ERR_LAYOUT_MISMATCH, why, sizeof why, "decode %s asks for aux "
                              "rows in its slot %d but its aux buffers (%u) do not match this "
                              "prefill's (%u): aux buffers and their row sizes must be equal on "
                              "both sides", d.peer->name, (int)aux, d.peer->info.na, l->num_aux);
    }
    if (res == KVX_OK && n) {
        d.pages = (int32_t *)kvx_engine_alloc(ce->engine, (size_t)n * sizeof *d.pages);
        if (d.pages)
            memcpy(d.pages, dst, (size_t)n * sizeof *d.pages);
        else
            res = kvx__why(KVX_ERR_NO_MEMORY, why, sizeof why, "out of memory for %u "
                              "destination pages", n);
    }
    if (res == KVX_OK && nstate) { /* checked against its rows when planned */
        d.state = (int32_t *)kvx_engine_alloc(ce->engine, (size_t)nstate * sizeof *d.state);
        if (d.state && dst_state)
            memcpy(d.state, dst_state, (size_t)nstate * sizeof *d.state);
        else
            res = kvx__why(KVX_ERR_NO_MEMORY, why, sizeof why, "out of memory for %u "
                              "destination state indices", nstate);
    }
    d.nstate = res == KVX_OK ? nstate : 0;
    if (res != KVX_OK) {
        kvx_engine_free(ce->engine, d.pages);
        kvx_engine_free(ce->engine, d.state);
        kvx__cux_peer_unref(d.peer);
        return kvx__cux_fail_tell(r, res, "%s", why);
    }
    d.n = n;
    d.conn.conn_id = bp->conn_id;
    d.conn.addr = d.peer->addr;
    pthread_mutex_lock(&cr->x.mu);
    if (!(bad = kvx__cux_dst_bad(cr, &d)) && cr->ndsts == cr->cap_dsts) {
        uint32_t nc = cr->cap_dsts ? 2 * cr->cap_dsts : 2;
        kvx__cux_dst *nd = (kvx__cux_dst *)kvx_engine_alloc(ce->engine, nc * sizeof *nd);
        if (!nd) {
            bad = "out of memory";
        } else {
            if (cr->ndsts) memcpy(nd, cr->dsts, cr->ndsts * sizeof *nd);
            kvx_engine_free(ce->engine, cr->dsts);
            cr->dsts = nd;
            cr->cap_dsts = nc;
        }
    }
    if (!bad) {
        d.cr = cr;
        cr->dsts[cr->ndsts++] = d;
    }
    pthread_mutex_unlock(&cr->x.mu);
    if (bad) {
        kvx_engine_free(ce->engine, d.pages);
        kvx_engine_free(ce->engine, d.state);
        kvx__cux_peer_unref(d.peer);
        if (!bad[0]) return KVX_ERR_ABORTED; /* the sender was destroyed meanwhile */
        return kvx__cux_fail_tell(r, KVX_ERR_LAYOUT_MISMATCH, "room %llu: decode %s cannot be served "
                                  "with the room's other decode ranks: %s",
                                  (unsigned long long)cr->x.id, bp->addr, bad);
    }
    /* the acknowledgement that arms the receiver's fence: from now on this
       side may write into its pages (sent to every decode rank of the room) */
    kvx_boot_send_status(b, r, KVX_POLL_TRANSFERRING, KVX_OK, 0, NULL);
    kvx_engine_log(ce->engine, KVX_LOG_DEBUG, "kvx.cuda", cr->x.id,
                   "destination: %u pages, aux slot %d, %u state indices, decode %s (tp rank %d "
                   "of %d): %llu bytes a page%s%s", n, (int)aux, nstate, d.peer->name,
                   bp->tp_rank, bp->tp_size,
                   (unsigned long long)d.bpp, d.sends_aux ? ", aux rows" : "",
                   d.dummy ? ", MLA dummy" : "");
    return KVX_OK;
}

static kvx_result kvx__cux_sender_init(kvx_room *r, uint32_t n, int32_t aux) {
    kvx__cux_room *cr = kvx__cux_cr(r);
    uint32_t i, nd;
    pthread_mutex_lock(&cr->x.mu);
    nd = cr->ndsts;
    pthread_mutex_unlock(&cr->x.mu);
    if (!nd)
        return kvx__cux_fail_tell(r, KVX_ERR_STATE, "init before the decode side's destination "
                                  "arrived");
    for (i = 0; i < nd; i++) {
        kvx__cux_dst *d = &cr->dsts[i];
        if (n != d->n)
            return kvx__cux_fail_tell(r, KVX_ERR_INVALID_ARGUMENT, "init declares %u pages but "
                                      "decode %s asked for %u", n, d->peer->name, d->n);
        if (d->aux >= 0 && d->sends_aux && aux < 0)
            return kvx__cux_fail_tell(r, KVX_ERR_INVALID_ARGUMENT, "decode %s expects aux rows "
                                      "in its slot %d but init gave no aux slot (-1)",
                                      d->peer->name, (int)d->aux);
    }
    cr->x.src_aux = aux;
    return KVX_OK;
}

/* Queues a chunk's copies to destination d on its peer's stream (the
   room holds an inflight token); with the last chunk, the state rows
   sidx[0..ns) -> d->state where d takes them from this rank (HYBRID STATE;
   counts equal: kvx__cux_state_counts). */
static kvx_result kvx__cux_queue(kvx__cux_room *cr, kvx__cux_dst *d, const kvx_chunk *c,
                                 const int32_t *sidx, uint32_t ns, char *why, size_t wl) {
    kvx__cux_engine *ce = cr->ce;
    kvx__cux_peer *p = d->peer;
    const kvx_layout *l = kvx_engine_layout(ce->engine);
    uint64_t ticket = 0;
    kvx_result res = KVX_OK;
    d->plan.count = d->plan.paged = 0;
    d->plan.total_bytes = 0;
    d->plan.compact = 1; /* one run list for every buffer (COMPACT PLANS) */
    /* LAYER-WISE SEND: a part plans its layers' source buffers only (the
       filter is kept by the builders: set for every chunk) */
    d->plan.layer_begin = c->first_part && c->last_part ? 0 : c->layer_begin;
    d->plan.layer_end = c->first_part && c->last_part ? 0 : c->layer_end;
    if (c->num_pages && d->bpp &&
        (res = kvx_plan_pages(&d->plan, l, c->pages, &p->dst, d->pages + c->first_page,
                              c->num_pages)) != KVX_OK)
        return kvx__why(res, why, wl, "%s", d->plan.error);
    if (c->is_last && ns && d->sends_aux && !d->dummy &&
        (res = kvx_plan_state(&d->plan, l, sidx, &p->dst, d->state, ns)) != KVX_OK)
        return kvx__why(res, why, wl, "state rows: %s", d->plan.error);
    pthread_mutex_lock(&p->mu);
    if (p->dead) {
        res = kvx__why(KVX_ERR_PEER_LOST, why, wl, "lost connection with decode %s", p->name);
    } else if (d->plan.count) {
        if (!p->stream)
            res = kvx_cuda_stream_create(ce->cu, ce->device, &p->stream, why, wl);
        if (res == KVX_OK)
            res = kvx_cuda_copy_plan(p->stream, l, &p->dst, &d->plan, &ticket, why, wl);
        if (res == KVX_OK) {
            d->ticket = ticket;
            d->bytes += d->plan.total_bytes;
            if (!d->busy) {
                d->busy = 1;
                pthread_mutex_lock(&cr->x.mu);
                cr->inflight++;
                pthread_mutex_unlock(&cr->x.mu);
            }
        } else {
            KVX__ADD(&ce->st.driver_errors, 1);
        }
    }
    if (res == KVX_OK && d->busy) kvx__cux_list(p, d);
    pthread_mutex_unlock(&p->mu);
    if (res == KVX_OK) {
        KVX__ADD(&ce->st.spans, (uint64_t)d->plan.count);
        KVX__ADD(&ce->st.bytes, d->plan.total_bytes);
    }
    return res;
}

/* With the last chunk: the prefill's state index count must be what each
   decode rank that takes state from this rank asked for. */
static kvx_result kvx__cux_state_counts(kvx__cux_room *cr, uint32_t ns, char *why, size_t wl) {
    uint32_t i;
    for (i = 0; i < cr->ndsts; i++) {
        const kvx__cux_dst *d = &cr->dsts[i];
        if (d->sends_aux && !d->dummy && d->nstate != ns)
            return kvx__why(KVX_ERR_INVALID_ARGUMENT, why, wl, "prefill sent %u state indices, "
                            "decode %s asked for %u (both sides must give the same number)",
                            ns, d->peer->name, d->nstate);
    }
    return KVX_OK;
}

/* Queues a chunk's copies to every destination (or a layer-wise part's:
   its layers only, at once, behind the earlier parts on the peer's
   stream); the completion thread reports the room once the last chunk's
   (last part's) copies are done everywhere. */
static kvx_result kvx__cux_sender_send(kvx_room *r, kvx_chunk *c) {
    kvx__cux_room *cr = kvx__cux_cr(r);
    kvx__cux_engine *ce = cr->ce;
    char why[KVX_ERROR_MAX], reason[KVX_ERROR_MAX];
    const char *to = "";
    kvx_result res = KVX_OK;
    uint32_t index = c->index, i, ns = 0;
    int last = c->is_last, closes = c->last_part, msg;
    const int32_t *sidx = last ? kvx_room_state(r, &ns) : NULL;
    pthread_mutex_lock(&cr->x.mu);
    if (kvx_room_poll(r) == KVX_POLL_FAILED) { /* failed meanwhile; told already */
        pthread_mutex_unlock(&cr->x.mu);
        kvx_chunk_free(ce->engine, c);
        return kvx_room_result(r);
    }
    cr->inflight++; /* no fence word goes out while this chunk is being queued */
    pthread_mutex_unlock(&cr->x.mu);
    if (last && (res = kvx__cux_state_counts(cr, ns, why, sizeof why)) != KVX_OK)
        to = cr->dsts[0].peer->addr;
    for (i = 0; i < cr->ndsts && res == KVX_OK; i++) {
        res = kvx__cux_queue(cr, &cr->dsts[i], c, sidx, ns, why, sizeof why);
        if (res != KVX_OK) to = cr->dsts[i].peer->addr;
    }
    kvx_chunk_free(ce->engine, c);
    pthread_mutex_lock(&cr->x.mu);
    if (res == KVX_OK && last) cr->last_queued = 1;
    kvx__cux_settle(cr, &msg, reason);
    pthread_mutex_unlock(&cr->x.mu);
    if (msg) kvx__cux_send_msg(ce, cr, msg, reason);
    for (i = 0; res == KVX_OK && last && i < cr->ndsts; i++) { /* the completion thread's turn */
        kvx__cux_peer *p = cr->dsts[i].peer;
        pthread_mutex_lock(&p->mu);
        kvx__cux_list(p, &cr->dsts[i]);
        pthread_mutex_unlock(&p->mu);
    }
    if (res != KVX_OK)
        return kvx__cux_fail_tell(r, res, "chunk %u of room %llu for decode %s: %s", index,
                                  (unsigned long long)cr->x.id, to, why);
    KVX__ADD(&ce->st.parts, 1);
    if (closes) KVX__ADD(&ce->st.chunks, 1); /* a part is not a chunk */
    kvx__cux_kick(ce);
    return KVX_OK;
}

/* kvx_boot hook (prefill): the decode side aborted the room (already
   failed here, unless it had succeeded). Confirm once nothing of it is in
   flight: the decode side's kvx_receiver_destroy waits for that word. */
static void kvx__cux_on_abort_prefill(kvx__cux_room *cr) {
    int armed;
    pthread_mutex_lock(&cr->x.mu);
    armed = cr->ndsts != 0;
    pthread_mutex_unlock(&cr->x.mu);
    if (armed && kvx_room_poll(cr->x.room) == KVX_POLL_FAILED)
        kvx__cux_owe(cr, KVX__CUX_MSG_CONFIRM, NULL);
}

/* >>cuda transport: prefill: completion thread -------------------------------------------------- */

enum { KVX__CUX_ACT_FINISH = 1, KVX__CUX_ACT_MSG = 2, KVX__CUX_ACT_FAIL = 3 };

typedef struct kvx__cux_act {
    kvx__cux_room *cr;
    int what, msg;
    char reason[KVX_ERROR_MAX]; /* of msg */
} kvx__cux_act;

/* Prefill, completion thread: the room's aux rows as an aux message on the
   connection of destination d's room frame, ahead of the status that
   completes it. */
static kvx_result kvx__cux_send_aux(kvx__cux_engine *ce, kvx__cux_room *cr, kvx__cux_dst *d) {
    const kvx_layout *l = kvx_engine_layout(ce->engine);
    uint8_t *m = ce->amsg;
    memcpy(m, "kvx-caux", 8);
    kvx__le_w16(m + 8, KVX_CUDA_AUX_VERSION);
    kvx__le_w16(m + 10, 0);
    kvx__le_w32(m + 12, (uint32_t)ce->aux_row_bytes);
    kvx__le_w64(m + 16, cr->x.id);
    kvx_layout_aux_copy(l, cr->x.src_aux, m + KVX__CUX_AUXM, 0);
    KVX__ADD(&ce->st.aux_rows, (uint64_t)l->num_aux);
    return kvx_boot_peer_send(ce->boot, &d->conn, m, KVX__CUX_AUXM + ce->aux_row_bytes, NULL, 0);
}

/* After the last chunk's copies (every KV byte in place at every decode
   rank): the aux rows to those that take them from this rank, then status
   Success (the same byte count to each: kvx__cux_dst_bad). */
static void kvx__cux_finish(kvx__cux_engine *ce, kvx__cux_room *cr) {
    kvx_room *r = cr->x.room;
    uint64_t bytes = cr->dsts[0].bytes;
    uint32_t i;
    const char *to = NULL;
    KVX__STORE(&cr->told, 1);
    for (i = 0; i < cr->ndsts && !to; i++) {
        kvx__cux_dst *d = &cr->dsts[i];
        if (d->aux >= 0 && d->sends_aux && cr->x.src_aux >= 0 &&
            kvx__cux_send_aux(ce, cr, d) != KVX_OK)
            to = d->peer->name;
    }
    if (cr->dsts[0].aux >= 0 && cr->dsts[0].sends_aux && cr->x.src_aux >= 0)
        bytes += ce->aux_row_bytes;
    if (to || kvx_boot_send_status(ce->boot, r, KVX_POLL_SUCCESS, KVX_OK, bytes, NULL) != KVX_OK) {
        kvx_room_fail_remote(r, KVX_ERR_PEER_LOST, "every byte of room %llu is in place at "
                             "decode %s but the control connection to it is gone, so it cannot "
                             "be told", (unsigned long long)cr->x.id,
                             to ? to : cr->dsts[0].peer->name);
        return;
    }
    KVX__ADD(&ce->st.rooms_done, 1);
    kvx_room_succeed(r, bytes);
}

/* Under cr->x.mu: what the room needs now (its destination d's copies are
   done). The act holds an inflight token until kvx__cux_act_done. */
static int kvx__cux_next(kvx__cux_room *cr, int *msg, char *reason) {
    *msg = 0;
    if (KVX__LOAD(&cr->gone) || cr->inflight) return 0;
    if (cr->msg) {
        *msg = cr->msg;
        cr->msg = 0;
        memcpy(reason, cr->msg_reason, KVX_ERROR_MAX);
        cr->inflight++;
        return KVX__CUX_ACT_MSG;
    }
    if (kvx_room_poll(cr->x.room) == KVX_POLL_FAILED || !cr->last_queued || cr->finished)
        return 0;
    cr->finished = 1;
    cr->inflight++;
    return KVX__CUX_ACT_FINISH;
}

/* Destination d's copies are done (or stopped): not busy, off its list,
   and what its room needs now into *a. Under p->mu. */
static int kvx__cux_dst_done(kvx__cux_peer *p, kvx__cux_dst *d, int fail, kvx__cux_act *a) {
    kvx__cux_room *cr = d->cr;
    int what = 0, msg = 0;
    char reason[KVX_ERROR_MAX];
    kvx__cux_unlist(p, d);
    pthread_mutex_lock(&cr->x.mu);
    if (d->busy) {
        d->busy = 0;
        cr->inflight--;
        if (!cr->inflight) pthread_cond_broadcast(&cr->cv);
    }
    if (fail && !KVX__LOAD(&cr->gone)) {
        what = KVX__CUX_ACT_FAIL;
        cr->inflight++;
    } else {
        what = kvx__cux_next(cr, &msg, reason);
    }
    pthread_mutex_unlock(&cr->x.mu);
    if (!what) return 0;
    kvx_room_ref(cr->x.room);
    a->cr = cr;
    a->what = what;
    a->msg = msg;
    if (msg) memcpy(a->reason, reason, sizeof a->reason);
    return 1;
}

/* Runs an act (no lock held), then gives its token back. */
static void kvx__cux_act_run(kvx__cux_engine *ce, kvx__cux_peer *p, kvx__cux_act *a,
                             const char *why) {
    kvx__cux_room *cr = a->cr;
    char reason[KVX_ERROR_MAX];
    int msg;
    if (a->what == KVX__CUX_ACT_FINISH)
        kvx__cux_finish(ce, cr);
    else if (a->what == KVX__CUX_ACT_MSG)
        kvx__cux_send_msg(ce, cr, a->msg, a->reason);
    else /* room_failed tells the decode side (now or when the room settles) */
        kvx_room_fail(cr->x.room, KVX_ERR_TRANSPORT, "copying room %llu to decode %s failed: %s",
                      (unsigned long long)cr->x.id, p->addr, why);
    pthread_mutex_lock(&cr->x.mu);
    kvx__cux_settle(cr, &msg, reason);
    pthread_mutex_unlock(&cr->x.mu);
    if (msg) kvx__cux_send_msg(ce, cr, msg, reason); /* owed while we were at it */
    kvx_room_unref(cr->x.room);
}

/* One pass over a peer's active destinations. Returns how many moved. */
static int kvx__cux_poll_peer(kvx__cux_engine *ce, kvx__cux_peer *p, kvx__cux_act *acts,
                              int max) {
    kvx__cux_dst *d, *nx;
    char why[KVX_ERROR_MAX] = "";
    kvx_result err = KVX_OK;
    int nact = 0, moved = 0, i;
    pthread_mutex_lock(&p->mu);
    for (d = p->active; d && nact < max; d = nx) {
        int done = 1;
        nx = d->anext;
        if (d->busy && p->stream &&
            (err = kvx_cuda_stream_done(p->stream, d->ticket, &done, why, sizeof why)) != KVX_OK)
            break;
        if (!done) continue;
        moved++;
        nact += kvx__cux_dst_done(p, d, 0, &acts[nact]);
    }
    if (err != KVX_OK) { /* the stream failed: its rooms in flight fail, the stream is replaced */
        KVX__ADD(&ce->st.driver_errors, 1);
        kvx_cuda_stream_destroy(p->stream); /* waits: nothing of it runs after this */
        p->stream = NULL;
        for (d = p->active; d && nact < max; d = nx) {
            nx = d->anext;
            if (!d->busy) continue;
            moved++;
            nact += kvx__cux_dst_done(p, d, 1, &acts[nact]);
        }
    }
    pthread_mutex_unlock(&p->mu);
    for (i = 0; i < nact; i++) kvx__cux_act_run(ce, p, &acts[i], why);
    return moved;
}

/* While copies run: yield for the first 64 looks (a small request is done
   in microseconds), then look every 10 us (the timer slack is 1 us on this
   thread) for 5 ms, then every 100 us. Detection latency counts against the
   transfer time, so it stays a few microseconds for the requests that
   matter; the cost is one core polling while copies are in flight. */
static void kvx__cux_worker_pause(unsigned looks, uint64_t since_ns) {
    if (looks < 64) {
        sched_yield();
        return;
    }
    kvx__sleep_us(kvx_now_ns() - since_ns < 5000000ull ? 10 : 100);
}

static void *kvx__cux_worker_main(void *arg) {
    kvx__cux_engine *ce = (kvx__cux_engine *)arg;
    kvx__cux_act acts[64];
    unsigned looks = 0;
    uint64_t since = 0;
#ifdef PR_SET_TIMERSLACK
    prctl(PR_SET_TIMERSLACK, 1000UL, 0UL, 0UL, 0UL);
#endif
    for (;;) {
        size_t np = 0, i;
        int moved = 0;
        kvx__cux_peer *p;
        pthread_mutex_lock(&ce->mu);
        while (!ce->stop && !KVX__LOAD(&ce->work)) {
            looks = 0;
            pthread_cond_wait(&ce->cv, &ce->mu);
        }
        if (ce->stop) {
            pthread_mutex_unlock(&ce->mu);
            break;
        }
        for (p = ce->peers; p; p = p->next) np++;
        if (np > ce->scan_cap) {
            kvx__cux_peer **ns = (kvx__cux_peer **)kvx_engine_alloc(ce->engine, np * sizeof *ns);
            if (ns) { /* rebuilt every pass: nothing to copy */
                kvx_engine_free(ce->engine, ce->scan);
                ce->scan = ns;
                ce->scan_cap = np;
            } else {
                np = ce->scan_cap;
            }
        }
        for (i = 0, p = ce->peers; p && i < np; p = p->next, i++) {
            KVX__ADD(&p->refs, 1);
            ce->scan[i] = p;
        }
        np = i;
        pthread_mutex_unlock(&ce->mu);
        for (i = 0; i < np; i++) {
            moved += kvx__cux_poll_peer(ce, ce->scan[i], acts, (int)(sizeof acts / sizeof acts[0]));
            kvx__cux_peer_unref(ce->scan[i]);
        }
        kvx__cux_prune(ce);
        if (moved || !looks) {
            looks = 0;
            since = kvx_now_ns();
        }
        if (!moved) kvx__cux_worker_pause(looks++, since);
    }
    return NULL;
}

/* Prefill: the sender is being destroyed: wait until nothing of it is in
   flight, then owe nothing more (an unfinished room's abort goes out after
   its last copy). */
static void kvx__cux_sender_close(kvx__cux_room *cr) {
    kvx__cux_engine *ce = cr->ce;
    int msg, waited = 0, armed;
    uint32_t i;
    char reason[KVX_ERROR_MAX];
    pthread_mutex_lock(&cr->x.mu);
    KVX__STORE(&cr->gone, 1);
    while (cr->inflight) {
        struct timespec ts;
        kvx__abstime(&ts, 5000000000ull);
        if (pthread_cond_timedwait(&cr->cv, &cr->x.mu, &ts) == ETIMEDOUT)
            kvx_engine_log(ce->engine, KVX_LOG_WARN, "kvx.cuda", cr->x.id, "destroying the "
                           "sender waits for its GPU copies to %u decode rank%s (%d s so far)",
                           cr->ndsts, cr->ndsts == 1 ? "" : "s", waited += 5);
    }
    msg = cr->msg;
    cr->msg = 0;
    memcpy(reason, cr->msg_reason, sizeof reason);
    armed = cr->ndsts != 0;
    pthread_mutex_unlock(&cr->x.mu);
    for (i = 0; i < cr->ndsts; i++) {
        kvx__cux_peer *p = cr->dsts[i].peer;
        pthread_mutex_lock(&p->mu);
        kvx__cux_unlist(p, &cr->dsts[i]);
        pthread_mutex_unlock(&p->mu);
    }
    if (msg) kvx__cux_send_msg(ce, cr, msg, reason);
    else if (armed && !KVX__LOAD(&cr->told) && kvx_room_poll(cr->x.room) == KVX_POLL_FAILED)
        kvx__cux_send_msg(ce, cr, KVX__CUX_MSG_CONFIRM, NULL); /* failed without a word yet */
    kvx_boot_room_close(ce->boot, cr->x.room); /* an unfinished room tells its decode side */
}

/* kvx_boot hook (prefill): a decode engine's control connection is gone
   (its rooms are failed already). The mapping goes when its last copy has. */
static void kvx__cux_disconnect_prefill(kvx__cux_engine *ce, const kvx_boot_peer *bp) {
    kvx__cux_peer *p;
    pthread_mutex_lock(&ce->mu);
    for (p = ce->peers; p; p = p->next)
        if (!p->dead && p->instance == bp->instance && !strcmp(p->addr, bp->addr)) {
            pthread_mutex_lock(&p->mu);
            p->dead = 1;
            pthread_mutex_unlock(&p->mu);
        }
    pthread_mutex_unlock(&ce->mu);
    kvx__cux_prune(ce);
}

/* >>cuda transport: decode ---------------------------------------------------------------------- */

/* Under ce->mu: the prefill instance behind a bootstrap address. */
static kvx__cux_pf *kvx__cux_pf_find(kvx__cux_engine *ce, const char *addr) {
    kvx__cux_pf *f;
    for (f = ce->pfs; f; f = f->next)
        if (!strcmp(f->addr, addr)) return f;
    return NULL;
}

/* kvx_boot hook (decode): a prefill rank's hello. Remembers its process
   (for the fence) and says at once when it is on another node (the prefill
   refuses such rooms; its sentence comes back in their status). */
static void kvx__cux_connect_decode(kvx__cux_engine *ce, const kvx_boot_peer *bp) {
    kvx__cux_ep ep;
    kvx__cux_pf *f;
    char why[KVX_ERROR_MAX], who[200];
    if (kvx__cux_parse(bp->endpoint, bp->endpoint_len, &ep, why, sizeof why) != KVX_OK) {
        kvx_engine_log(ce->engine, KVX_LOG_WARN, "kvx.cuda", 0, "prefill %s: %s", bp->addr, why);
        return;
    }
    if (strcmp(ep.node, ce->node)) {
        snprintf(who, sizeof who, "prefill %s (bootstrap %s, host %s)", bp->addr, bp->bootstrap,
                 ep.host);
        kvx__cux_other_node(who, ep.node, ce->node, why, sizeof why);
        kvx_engine_log(ce->engine, KVX_LOG_ERROR, "kvx.cuda", 0, "%s", why);
    }
    pthread_mutex_lock(&ce->mu);
    f = kvx__cux_pf_find(ce, bp->bootstrap);
    if (!f && (f = (kvx__cux_pf *)kvx_engine_alloc(ce->engine, sizeof *f)) != NULL) {
        memset(f, 0, sizeof *f);
        snprintf(f->addr, sizeof f->addr, "%s", bp->bootstrap);
        f->next = ce->pfs;
        ce->pfs = f;
    }
    if (f) f->pid = ep.pid;
    pthread_mutex_unlock(&ce->mu);
}

/* Whether process pid still runs: gone, or a zombie, it has closed its
   driver handles, and its GPU work is torn down with its context. */
static int kvx__cux_pid_alive(uint32_t pid) {
    char path[64], buf[512], *rp;
    ssize_t n;
    int fd;
    snprintf(path, sizeof path, "/proc/%u/stat", pid);
    if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0) return errno != ENOENT && errno != ESRCH;
    n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return 0;
    buf[n] = 0;
    rp = strrchr(buf, ')'); /* the state follows the command name, which may hold anything */
    return !(rp && rp[1] == ' ' && (rp[2] == 'Z' || rp[2] == 'X' || rp[2] == 'x'));
}

/* Under ce->mu: the index of connection conn among the room's
   contributors (added when add); -1 when absent or the table is full. */
static int kvx__cux_from(kvx__cux_room *cr, uint64_t conn, int add) {
    uint32_t i;
    for (i = 0; i < cr->nfrom; i++)
        if (cr->from[i] == conn) return (int)i;
    if (!add || !conn || cr->nfrom == KVX_CUDA_MAX_CONTRIB) return -1;
    cr->from[cr->nfrom] = conn;
    cr->fin[cr->nfrom] = 0;
    KVX__STORE(&cr->nfrom, cr->nfrom + 1); /* tests read it without the lock */
    return (int)cr->nfrom - 1;
}

/* Under ce->mu: a contributor said it stopped writing; fenced once every
   one the room takes bytes from has. */
static void kvx__cux_stopped(kvx__cux_room *cr, int k, uint32_t ncontrib) {
    uint32_t i, nfin = 0;
    if (k >= 0) cr->fin[k] = 1;
    for (i = 0; i < cr->nfrom; i++) nfin += cr->fin[i];
    if (nfin == cr->nfrom && nfin >= ncontrib) cr->fenced = 1;
}

static void kvx__cux_abort_once(kvx__cux_room *cr);

typedef struct kvx__cux_lost {
    const char *bootstrap;
    uint64_t conn;
    uint32_t pid;
    int alive;
    uint64_t deadline;
    kvx_room **others; /* rooms whose other prefill ranks must hear of it */
    size_t n, cap;
    kvx__cux_engine *ce;
} kvx__cux_lost;

static void kvx__cux_lost_room(kvx_room *r, void *arg) {
    kvx__cux_lost *x = (kvx__cux_lost *)arg;
    kvx__cux_room *cr = kvx__cux_cr(r);
    kvx__cux_engine *ce;
    const char *a = kvx_room_bootstrap_addr(r);
    int several, k;
    if (!cr || !a || strcmp(a, x->bootstrap)) return;
    ce = cr->ce;
    pthread_mutex_lock(&ce->mu);
    several = cr->ncontrib > 1;
    k = kvx__cux_from(cr, x->conn, 0);
    if (several && k < 0) { /* not one of this room's prefill ranks */
        pthread_mutex_unlock(&ce->mu);
        return;
    }
    if (!x->alive && several) kvx__cux_stopped(cr, k, cr->ncontrib);
    else if (!x->alive) cr->fenced = 1;
    else if (!cr->fence_deadline || cr->fence_deadline > x->deadline) cr->fence_deadline = x->deadline;
    if (!several) cr->fence_pid = x->pid;
    pthread_cond_broadcast(&ce->cv);
    pthread_mutex_unlock(&ce->mu);
    if (several && x->n < x->cap) { /* told after the walk: the others stop and free it */
        kvx_room_ref(r);
        x->others[x->n++] = r;
    }
}

/* kvx_boot hook (decode): the control connection to a prefill rank is gone
   (its unfinished rooms are failed already); the fence as FAILURES AND THE
   FENCE says: at most KVX_CUDA_FENCE_TIMEOUT from now. */
static void kvx__cux_disconnect_decode(kvx__cux_engine *ce, const kvx_boot_peer *bp) {
    kvx__cux_lost x;
    kvx__cux_pf *f;
    kvx__cux_ep ep;
    char why[KVX_ERROR_MAX];
    uint32_t pid = 0;
    size_t i;
    pthread_mutex_lock(&ce->mu);
    f = kvx__cux_pf_find(ce, bp->bootstrap);
    if (f) pid = f->pid;
    pthread_mutex_unlock(&ce->mu);
    if (kvx__cux_parse(bp->endpoint, bp->endpoint_len, &ep, why, sizeof why) == KVX_OK)
        pid = ep.pid; /* this rank's process (ranks of one instance may be several) */
    memset(&x, 0, sizeof x);
    x.bootstrap = bp->bootstrap;
    x.conn = bp->conn_id;
    x.pid = pid;
    x.alive = !pid || kvx__cux_pid_alive(pid);
    x.deadline = kvx_now_ns() + (uint64_t)(ce->fence_s * 1e9);
    x.cap = 256;
    x.others = (kvx_room **)kvx_engine_alloc(ce->engine, x.cap * sizeof *x.others);
    if (!x.others) x.cap = 0;
    kvx_engine_foreach_room(ce->engine, kvx__cux_lost_room, &x);
    for (i = 0; i < x.n; i++) {
        kvx__cux_abort_once(kvx__cux_cr(x.others[i]));
        kvx_room_unref(x.others[i]);
    }
    kvx_engine_free(ce->engine, x.others);
}

static kvx_result kvx__cux_receiver_init(kvx_room *r, const int32_t *pages, uint32_t n,
                                         int32_t aux) {
    kvx__cux_room *cr = kvx__cux_cr(r);
    kvx__cux_engine *ce = cr->ce;
    kvx_result res;
    pthread_mutex_lock(&ce->mu);
    cr->aux_slot = ce->aux_row_bytes ? aux : -1;
    cr->npages = n;
    kvx_room_state(r, &cr->nstate);
    cr->aux_from = 0;
    pthread_mutex_unlock(&ce->mu);
    res = kvx_boot_receiver_init(ce->boot, r, pages, n, aux);
    if (res == KVX_OK) {
        pthread_mutex_lock(&ce->mu);
        cr->sent = 1;
        pthread_mutex_unlock(&ce->mu);
    }
    return res;
}

/* Decode: what the prefill rank behind bp owes this engine's rooms
   (PARALLEL LAYOUTS in kvx.h): page bytes, whether it writes the aux rows
   (none from an MLA dummy). */
static kvx_result kvx__cux_owed(kvx__cux_engine *ce, const kvx_boot_peer *bp, uint64_t *bpp,
                                int *aux, char *why, size_t wl) {
    const kvx_layout *l = kvx_engine_layout(ce->engine);
    int tp, rank;
    kvx_result r;
    kvx__cux_tp(ce, &tp, &rank);
    r = kvx_layout_overlap(kvx__cux_shape(ce, bp), l, bpp, aux, why, wl);
    if (r == KVX_OK && kvx_mla_dummy(l->mla, bp->tp_size, bp->tp_rank, tp)) *bpp = 0, *aux = 0;
    return r;
}

/* "prefill rank tp T of N, pp P of M at ADDR" */
static void kvx__cux_who(char *out, size_t n, const kvx_boot_peer *bp) {
    snprintf(out, n, "prefill rank tp %d of %d, pp %d of %d at %s", bp->tp_rank, bp->tp_size,
             bp->pp_rank, bp->pp_size, bp->addr);
}

/* Prefill ranks a decode room of this engine takes bytes from (kvx_boot's
   RANK MAPPING), seen from one of them. */
static uint32_t kvx__cux_ncontrib(kvx__cux_engine *ce, const kvx_boot_peer *bp) {
    int tp, rank, ptp = bp->tp_size > 0 ? bp->tp_size : 1;
    uint64_t n;
    kvx__cux_tp(ce, &tp, &rank);
    n = (uint64_t)(ptp > tp ? ptp / tp : 1) * (uint64_t)(bp->pp_size > 0 ? bp->pp_size : 1) *
        (uint64_t)(bp->cp_size > 0 ? bp->cp_size : 1);
    return n > KVX_CUDA_MAX_CONTRIB ? KVX_CUDA_MAX_CONTRIB : (uint32_t)n;
}

/* Decode, on a prefill rank's Success: its byte count must be what it owes
   this room, and the aux rows (from the one rank that writes them) must
   have arrived (their message travels on the same connection, ahead of the
   status). kvx_boot succeeds the room once every prefill rank it targets
   has. */
static int kvx__cux_place(kvx__cux_engine *ce, kvx__cux_room *cr, const kvx_boot_peer *bp,
                          uint64_t bytes) {
    kvx_room *r = cr->x.room;
    uint64_t bpp = 0, want, aux_bytes = 0, state_bytes = 0, from;
    int aux = 0;
    char who[200], why[KVX_ERROR_MAX];
    kvx__cux_who(who, sizeof who, bp);
    if (kvx__cux_owed(ce, bp, &bpp, &aux, why, sizeof why) != KVX_OK) {
        kvx_room_fail(r, KVX_ERR_LAYOUT_MISMATCH, "%s: %s", who, why);
        return 1;
    }
    if (cr->aux_slot >= 0 && aux) aux_bytes = ce->aux_row_bytes;
    if (aux) /* the state rows come with the aux rows (HYBRID STATE) */
        state_bytes = (uint64_t)cr->nstate * kvx_layout_state_row_bytes(kvx_engine_layout(ce->engine));
    want = (uint64_t)cr->npages * bpp + state_bytes;
    if (bytes != want + aux_bytes) {
        kvx_room_fail(r, KVX_ERR_PROTOCOL, "%s reports %llu bytes placed; room %llu expects "
                      "%llu from it (%u pages of %llu bytes, %llu aux bytes, %llu state bytes)",
                      who, (unsigned long long)bytes, (unsigned long long)cr->x.id,
                      (unsigned long long)(want + aux_bytes), cr->npages,
                      (unsigned long long)bpp, (unsigned long long)aux_bytes,
                      (unsigned long long)state_bytes);
        return 1;
    }
    pthread_mutex_lock(&ce->mu);
    from = cr->aux_from;
    pthread_mutex_unlock(&ce->mu);
    if (aux_bytes && from != bp->conn_id) {
        kvx_room_fail(r, KVX_ERR_PROTOCOL, "%s reports Success but the aux rows of room %llu "
                      "did not arrive before it", who, (unsigned long long)cr->x.id);
        return 1;
    }
    return 0;
}

/* Refuses an aux message: counted and logged; r (when the message is that
   room's, from its prefill) fails with the reason. */
static void kvx__cux_aux_refuse(kvx__cux_engine *ce, kvx_room *r, const kvx_boot_peer *bp,
                                const char *what) {
    KVX__ADD(&ce->st.aux_refused, 1);
    if (r)
        kvx_room_fail(r, KVX_ERR_PROTOCOL, "an aux message from prefill %s is refused: %s",
                      bp->addr, what);
    else
        kvx_engine_log(ce->engine, KVX_LOG_WARN, "kvx.cuda", 0, "an aux message from %s is "
                       "refused: %s", bp->addr, what);
}

/* Decode, under ce->mu: why room cr cannot take an aux message of len
   bytes (its length field says rl) from a prefill rank that writes aux
   rows (aux) or not, or NULL. */
static const char *kvx__cux_aux_bad(kvx__cux_engine *ce, kvx__cux_room *cr, size_t len,
                                    uint32_t rl, int aux) {
    if (cr->aux_slot < 0) return "the receiver has no aux slot";
    if (!aux) return "that prefill rank does not hold the room's aux rows (another one writes them)";
    if (cr->aux_from) return "a second aux message for the room";
    if (rl != ce->aux_row_bytes || len - KVX__CUX_AUXM != rl)
        return "its length is not this pool's aux row bytes";
    if (cr->closing || kvx_room_poll(cr->x.room) != KVX_POLL_TRANSFERRING)
        return "the room is not transferring";
    return NULL;
}

/* kvx_boot hook: a transport message. The cuda transport has one, the aux
   message, taken only as AUX MESSAGE says. */
static void kvx__cux_on_message(kvx_boot *b, const kvx_boot_peer *bp, const void *msg,
                                size_t len) {
    kvx__cux_engine *ce = (kvx__cux_engine *)kvx_boot_user(b);
    const uint8_t *m = (const uint8_t *)msg;
    const kvx_layout *l = kvx_engine_layout(ce->engine);
    const char *bad = NULL;
    char why[KVX_ERROR_MAX];
    kvx__cux_room *cr;
    kvx_room *r;
    uint64_t bpp = 0;
    int aux = 0, served;
    if (ce->role != KVX_ROLE_DECODE || len < KVX__CUX_AUXM || memcmp(m, "kvx-caux", 8) ||
        kvx__le_r16(m + 8) != KVX_CUDA_AUX_VERSION || kvx__le_r16(m + 10)) {
        kvx__cux_aux_refuse(ce, NULL, bp, "not an aux message of version "
                            "this version to a decode engine");
        return;
    }
    r = kvx_engine_find_room(ce->engine, kvx__le_r64(m + 16));
    cr = r ? kvx__cux_cr(r) : NULL;
    if (cr) {
        pthread_mutex_lock(&ce->mu);
        served = bp->conn_id && kvx__cux_from(cr, bp->conn_id, 0) >= 0;
        pthread_mutex_unlock(&ce->mu);
    }
    if (!cr || !served) {
        kvx__cux_aux_refuse(ce, NULL, bp, "it names a room that connection does not serve");
        kvx_room_unref(r);
        return;
    }
    if (kvx__cux_owed(ce, bp, &bpp, &aux, why, sizeof why) != KVX_OK) aux = 0;
    pthread_mutex_lock(&ce->mu);
    bad = kvx__cux_aux_bad(ce, cr, len, kvx__le_r32(m + 12), aux);
    cr->placing = !bad;
    pthread_mutex_unlock(&ce->mu);
    if (bad) {
        kvx__cux_aux_refuse(ce, r, bp, bad);
    } else {
        kvx_layout_aux_copy(l, cr->aux_slot, (void *)(m + KVX__CUX_AUXM), 1);
        KVX__ADD(&ce->st.aux_rows, (uint64_t)l->num_aux);
        pthread_mutex_lock(&ce->mu);
        cr->aux_from = bp->conn_id;
        cr->placing = 0;
        pthread_cond_broadcast(&ce->cv);
        pthread_mutex_unlock(&ce->mu);
    }
    kvx_room_unref(r);
}

/* kvx_boot hook (decode): a status frame from a prefill rank. TRANSFERRING
   is its acknowledgement of the destination (it may write from now on); a
   final status also says it has stopped writing. A room with several
   prefill ranks fails, naming the rank, when one fails: this side's
   failure then reaches the others (room_failed). */
static int kvx__cux_on_status(kvx_boot *b, kvx_room *r, const kvx_boot_peer *bp, kvx_poll state,
                              kvx_result result, uint64_t bytes, const char *reason) {
    kvx__cux_engine *ce = (kvx__cux_engine *)kvx_boot_user(b);
    kvx__cux_room *cr = kvx__cux_cr(r);
    uint32_t nc = kvx__cux_ncontrib(ce, bp);
    int handled = 0, sent, k;
    char who[200];
    pthread_mutex_lock(&ce->mu);
    sent = cr->sent;
    k = kvx__cux_from(cr, bp->conn_id, 1);
    cr->ncontrib = nc;
    if (state == KVX_POLL_SUCCESS || state == KVX_POLL_FAILED) kvx__cux_stopped(cr, k, nc);
    pthread_cond_broadcast(&ce->cv);
    pthread_mutex_unlock(&ce->mu);
    if (state == KVX_POLL_TRANSFERRING) return 1;
    if (state == KVX_POLL_SUCCESS && sent) {
        handled = kvx__cux_place(ce, cr, bp, bytes);
        if (!handled) KVX__ADD(&ce->st.rooms_done, 1);
    }
    if (state == KVX_POLL_FAILED && nc > 1) {
        kvx__cux_who(who, sizeof who, bp);
        kvx_room_fail(r, result < 0 ? result : KVX_ERR_PEER, "%s failed (one of the %u prefill "
                      "ranks this room takes bytes from): %s", who, nc,
                      reason && reason[0] ? reason : "no reason given");
        handled = 1;
    }
    return handled;
}

/* Decode: this side's abort, with the room's first reason, once. */
static void kvx__cux_abort_once(kvx__cux_room *cr) {
    if (__atomic_exchange_n(&cr->aborted, 1, __ATOMIC_ACQ_REL)) return;
    kvx_boot_abort(cr->ce->boot, cr->x.room, kvx_room_error(cr->x.room));
}

/* Decode: the receiver is being destroyed. While the prefill may still
   write into its pages (it acknowledged the destination and has not said it
   stopped), tell it and wait for its word, at most KVX_CUDA_FENCE_TIMEOUT. */
static void kvx__cux_receiver_close(kvx__cux_room *cr) {
    kvx__cux_engine *ce = cr->ce;
    kvx_room *r = cr->x.room;
    uint64_t deadline;
    int wait, armed, grace;
    pthread_mutex_lock(&ce->mu);
    cr->closing = 1;
    while (cr->placing) pthread_cond_wait(&ce->cv, &ce->mu);
    wait = cr->sent && !cr->fenced && kvx_room_poll(r) != KVX_POLL_SUCCESS;
    pthread_mutex_unlock(&ce->mu);
    if (wait) {
        /* the abort doubles as the request for the prefill's word that it
           stopped writing; a room failed earlier by this side sent it
           already (room_failed), one failed by the prefill has its word */
        if (!kvx__room_terminal(r)) {
            kvx_room_fail(r, KVX_ERR_ABORTED, "the receiver was destroyed before the transfer "
                          "finished");
            kvx__cux_abort_once(cr);
        }
        KVX__ADD(&ce->st.fence_waits, 1);
        pthread_mutex_lock(&ce->mu);
        armed = cr->nfrom > 0;
        grace = !armed;
        deadline = kvx_now_ns() + (uint64_t)((armed ? ce->fence_s : KVX__CUX_GRACE_S) * 1e9);
        for (;;) {
            struct timespec ts;
            uint64_t now = kvx_now_ns(), until;
            if (cr->fenced) break;
            if (grace && cr->nfrom) { /* the acknowledgement was on its way: the full wait */
                grace = 0;
                deadline = now + (uint64_t)(ce->fence_s * 1e9);
            }
            until = deadline;
            if (cr->fence_deadline && cr->fence_deadline < until) until = cr->fence_deadline;
            if (now >= until) break;
            if (cr->fence_pid) { /* connection gone: done as soon as its process is */
                uint32_t pid = cr->fence_pid;
                int alive;
                pthread_mutex_unlock(&ce->mu);
                alive = kvx__cux_pid_alive(pid);
                pthread_mutex_lock(&ce->mu);
                if (!alive) cr->fenced = 1;
                if (cr->fenced) break;
                if (until > now + 10000000ull) until = now + 10000000ull;
            }
            kvx__abstime(&ts, until - now);
            pthread_cond_timedwait(&ce->cv, &ce->mu, &ts);
        }
        wait = !cr->fenced && cr->nfrom;
        pthread_mutex_unlock(&ce->mu);
        if (wait) {
            KVX__ADD(&ce->st.fence_timeouts, 1);
            kvx_engine_log(ce->engine, KVX_LOG_WARN, "kvx.cuda", cr->x.id, "the prefill did not "
                           "confirm within %.1f s (KVX_CUDA_FENCE_TIMEOUT) that it stopped writing "
                           "into this room's pages; they may still change", ce->fence_s);
        }
    }
    kvx_boot_room_close(ce->boot, r);
}

/* >>cuda transport: engine ---------------------------------------------------------------------- */

static void kvx__cux_on_abort(kvx_boot *b, kvx_room *r, const kvx_boot_peer *bp, const char *reason) {
    kvx__cux_engine *ce = (kvx__cux_engine *)kvx_boot_user(b);
    kvx__cux_room *cr = kvx__cux_cr(r);
    (void)reason;
    if (ce->role == KVX_ROLE_PREFILL) {
        kvx__cux_on_abort_prefill(cr);
        return;
    }
    pthread_mutex_lock(&ce->mu); /* the prefill aborts only once its copies have stopped */
    if (cr->ncontrib > 1) kvx__cux_stopped(cr, kvx__cux_from(cr, bp->conn_id, 1), cr->ncontrib);
    else cr->fenced = 1;
    pthread_cond_broadcast(&ce->cv);
    pthread_mutex_unlock(&ce->mu);
}

static void kvx__cux_on_connect(kvx_boot *b, const kvx_boot_peer *bp) {
    kvx__cux_engine *ce = (kvx__cux_engine *)kvx_boot_user(b);
    kvx__cux_ep ep;
    char why[KVX_ERROR_MAX], who[160];
    if (ce->role == KVX_ROLE_DECODE) {
        kvx__cux_connect_decode(ce, bp);
        return;
    }
    if (kvx__cux_parse(bp->endpoint, bp->endpoint_len, &ep, why, sizeof why) != KVX_OK) {
        kvx_engine_log(ce->engine, KVX_LOG_WARN, "kvx.cuda", 0, "decode %s: %s", bp->addr, why);
    } else if (strcmp(ep.node, ce->node)) {
        snprintf(who, sizeof who, "decode %s (host %s)", bp->addr, ep.host);
        kvx__cux_other_node(who, ep.node, ce->node, why, sizeof why);
        kvx_engine_log(ce->engine, KVX_LOG_WARN, "kvx.cuda", 0, "%s; its rooms will be refused",
                       why);
    }
}

static void kvx__cux_on_disconnect(kvx_boot *b, const kvx_boot_peer *bp, const char *reason) {
    kvx__cux_engine *ce = (kvx__cux_engine *)kvx_boot_user(b);
    (void)reason;
    if (ce->role == KVX_ROLE_PREFILL) kvx__cux_disconnect_prefill(ce, bp);
    else kvx__cux_disconnect_decode(ce, bp);
}

static kvx_result kvx__cux_settings(kvx__cux_engine *ce, char *why, size_t wl) {
    const kvx_engine_desc *d = kvx_engine_settings(ce->engine);
    const kvx_layout *l = kvx_engine_layout(ce->engine);
    kvx_cuda_desc cd;
    uint32_t i;
    kvx_result r;
    ce->cu = kvx_cuda_from_mem_ops(&d->mem);
    if (!ce->cu)
        return kvx__why(KVX_ERR_INVALID_ARGUMENT, why, wl, "the cuda transport needs desc.mem "
                           "filled by kvx_cuda_mem_ops() (kvx_cuda.h): that is how it reaches the "
                           "CUDA driver");
    memset(&cd, 0, sizeof cd);
    cd.fence_timeout_s = ce->cu->fence_timeout_s;
    if ((r = kvx__settings_apply(&kvx__cux_fence_setting, 1, &cd, why, wl)) != KVX_OK) return r;
    ce->fence_s = cd.fence_timeout_s;
    for (i = 0; i < l->num_buffers; i++) {
        if (l->buffers[i].mem != KVX_MEM_CUDA)
            return kvx__why(KVX_ERR_INVALID_ARGUMENT, why, wl, "KV buffer %u is host memory: "
                               "the cuda transport moves KV pools in GPU memory (KVX_MEM_CUDA); "
                               "use the tcp or file transport for pools in host memory", i);
        if (ce->role == KVX_ROLE_PREFILL && l->buffers[i].device != l->buffers[0].device)
            return kvx__why(KVX_ERR_INVALID_ARGUMENT, why, wl, "KV buffer %u is on GPU %d, "
                               "buffer 0 on GPU %d: a prefill engine of the cuda transport keeps "
                               "its pool on one GPU (one engine per rank)", i, l->buffers[i].device,
                               l->buffers[0].device);
    }
    ce->device = l->buffers[0].device;
    for (i = 0; i < l->num_state; i++) {
        if (l->state[i].mem != KVX_MEM_CUDA)
            return kvx__why(KVX_ERR_INVALID_ARGUMENT, why, wl, "state buffer %u is host memory: "
                               "the cuda transport copies state rows GPU to GPU with the KV "
                               "pages and has no host path for them (aux rows only); put the "
                               "state buffers in GPU memory (KVX_MEM_CUDA) or use the tcp or "
                               "file transport", i);
        if (ce->role == KVX_ROLE_PREFILL && l->state[i].device != ce->device)
            return kvx__why(KVX_ERR_INVALID_ARGUMENT, why, wl, "state buffer %u is on GPU %d, "
                               "KV buffer 0 on GPU %d: a prefill engine of the cuda transport "
                               "keeps its pool and state on one GPU", i, l->state[i].device,
                               ce->device);
    }
    ce->aux_row_bytes = kvx_layout_aux_row_bytes(l);
    if (ce->aux_row_bytes > KVX_BOOT_MAX_MESSAGE - KVX__CUX_AUXM)
        return kvx__why(KVX_ERR_INVALID_ARGUMENT, why, wl, "the aux rows of one request are "
                           "%llu bytes; the cuda transport sends them in one kvx_boot message of "
                           "at most KVX_BOOT_MAX_MESSAGE (%u) bytes with a %u-byte head",
                           (unsigned long long)ce->aux_row_bytes, (unsigned)KVX_BOOT_MAX_MESSAGE,
                           KVX__CUX_AUXM);
    return kvx_cuda_layout_check(ce->cu, l, why, wl);
}

static void kvx__cux_engine_free(kvx__cux_engine *ce) {
    kvx_engine *e = ce->engine;
    while (ce->peers) {
        kvx__cux_peer *p = ce->peers;
        ce->peers = p->next;
        kvx__cux_peer_unref(p);
    }
    while (ce->pfs) {
        kvx__cux_pf *f = ce->pfs;
        ce->pfs = f->next;
        kvx_engine_free(e, f);
    }
    kvx_engine_free(e, ce->scan);
    kvx_engine_free(e, ce->amsg);
    kvx_engine_free(e, ce->ep);
    pthread_mutex_destroy(&ce->mu);
    pthread_cond_destroy(&ce->cv);
    kvx_engine_free(e, ce);
}

static kvx_result kvx__cux_engine_init(kvx_engine *e, char *why, size_t wl) {
    const kvx_engine_desc *d = kvx_engine_settings(e);
    kvx__cux_engine *ce = (kvx__cux_engine *)kvx_engine_alloc(e, sizeof *ce);
    uint8_t head[KVX__CUX_FIXED];
    kvx_boot_hooks hooks;
    kvx_result r;
    if (!ce) return KVX_ERR_NO_MEMORY;
    memset(ce, 0, sizeof *ce);
    ce->engine = e;
    ce->role = d->role;
    pthread_mutex_init(&ce->mu, NULL);
    pthread_cond_init(&ce->cv, NULL);
    if ((r = kvx__cux_settings(ce, why, wl)) != KVX_OK) goto fail;
    kvx__cux_identity(ce);
    if (ce->role == KVX_ROLE_DECODE) {
        if ((r = kvx__cux_ep_decode(ce, why, wl)) != KVX_OK) goto fail;
    } else {
        kvx__cux_ep_head(ce, head);
        if (ce->aux_row_bytes &&
            !(ce->amsg = (uint8_t *)kvx_engine_alloc(e, KVX__CUX_AUXM + ce->aux_row_bytes))) {
            r = KVX_ERR_NO_MEMORY;
            goto fail;
        }
    }
    memset(&hooks, 0, sizeof hooks);
    hooks.user = ce;
    hooks.on_room = kvx__cux_on_room;
    hooks.on_status = kvx__cux_on_status;
    hooks.on_abort = kvx__cux_on_abort;
    hooks.on_connect = kvx__cux_on_connect;
    hooks.on_disconnect = kvx__cux_on_disconnect;
    hooks.on_message = kvx__cux_on_message;
    r = kvx_boot_create(e, &hooks, ce->ep ? (const void *)ce->ep : (const void *)head,
                        ce->ep ? ce->ep_len : sizeof head, &ce->boot, why, wl);
    if (r != KVX_OK) goto fail;
    if (ce->role == KVX_ROLE_PREFILL) {
        if (pthread_create(&ce->worker, NULL, kvx__cux_worker_main, ce) != 0) {
            kvx__set_why(why, wl, "cannot start the cuda transport's completion thread");
            kvx_boot_destroy(ce->boot);
            r = KVX_ERR_NO_MEMORY;
            goto fail;
        }
        ce->worker_started = 1;
    }
    kvx_engine_log(e, KVX_LOG_INFO, "kvx.cuda", 0, "cuda transport: %s on node %s (host %s, pid "
                   "%u)%s", ce->role == KVX_ROLE_PREFILL ? "prefill" : "decode", ce->node,
                   ce->host, ce->pid, ce->ep ? ", pool exported through CUDA IPC" : "");
    kvx_engine_set_backend_data(e, ce);
    return KVX_OK;
fail:
    kvx__cux_engine_free(ce);
    return r;
}

static void kvx__cux_engine_fini(kvx_engine *e) {
    kvx__cux_engine *ce = kvx__cux_ce(e);
    if (!ce) return;
    if (ce->worker_started) { /* every room is closed: nothing is in flight */
        pthread_mutex_lock(&ce->mu);
        ce->stop = 1;
        pthread_cond_broadcast(&ce->cv);
        pthread_mutex_unlock(&ce->mu);
        pthread_join(ce->worker, NULL);
    }
    kvx_boot_destroy(ce->boot); /* no hook runs after this */
    kvx_engine_set_backend_data(e, NULL);
    kvx__cux_engine_free(ce); /* streams, imports, mappings */
}

/* >>cuda transport: room hooks ------------------------------------------------------------------ */

static kvx_result kvx__cux_room_open(kvx_room *r) {
    kvx__cux_engine *ce = kvx__cux_ce(kvx_room_engine(r));
    kvx__cux_room *cr = (kvx__cux_room *)kvx__xroom_new(r, sizeof *cr);
    if (!cr) return KVX_ERR_NO_MEMORY;
    cr->ce = ce;
    cr->aux_slot = -1;
    pthread_cond_init(&cr->cv, NULL);
    kvx_room_set_data(r, cr);
    return kvx_boot_room_open(ce->boot, r);
}

/* The room failed by this side's decision (a refused argument, a local
   error, an abort, a timeout, engine destroy): the peer hears it as
   FAILURES AND THE FENCE says, with the room's first reason. */
static void kvx__cux_room_failed(kvx_room *r) {
    kvx__cux_room *cr = kvx__cux_cr(r);
    if (!cr) return;
    if (kvx_room_role(r) == KVX_ROLE_PREFILL) kvx__cux_owe(cr, KVX__CUX_MSG_CONFIRM, NULL);
    else kvx__cux_abort_once(cr);
}

static void kvx__cux_room_close(kvx_room *r) {
    kvx__cux_room *cr = kvx__cux_cr(r);
    if (!cr) return;
    if (kvx_room_role(r) == KVX_ROLE_PREFILL) kvx__cux_sender_close(cr);
    else kvx__cux_receiver_close(cr);
}

static void kvx__cux_room_free(kvx_room *r) {
    kvx__cux_room *cr = kvx__cux_cr(r);
    uint32_t i;
    if (!cr) return;
    for (i = 0; i < cr->ndsts; i++) {
        kvx__cux_peer_unref(cr->dsts[i].peer);
        kvx_plan_free(&cr->dsts[i].plan);
        kvx_engine_free(kvx_room_engine(r), cr->dsts[i].pages);
        kvx_engine_free(kvx_room_engine(r), cr->dsts[i].state);
    }
    kvx_engine_free(kvx_room_engine(r), cr->dsts);
    pthread_cond_destroy(&cr->cv);
    kvx__xroom_free(cr);
}

/* >>cuda transport: public --------------------------------------------------------------------- */

static void kvx__cux_hooks(kvx_backend *b) { /* no room_abort: room_failed tells the peer */
    KVX__BACKEND_ROOM_HOOKS(b, kvx__cux);
    b->layerwise = 1; /* LAYER-WISE SEND: each part's copies are queued as it comes */
}

KVX_API const kvx_backend *kvx_cuda_backend(void) {
    static kvx_backend b;
    return kvx__backend_table(&b, "cuda", kvx__cux_engine_init, kvx__cux_hooks);
}

KVX_API kvx_result kvx_cuda_register(void) { return kvx_transport_register(kvx_cuda_backend()); }

KVX_API kvx_result kvx_cuda_transport_stats_get(const kvx_engine *e, kvx_cuda_transport_stats *out) {
    kvx__cux_engine *ce;
    if (out) memset(out, 0, sizeof *out);
    if (!e || !out || strcmp(kvx_engine_transport(e), "cuda") || !(ce = kvx__cux_ce(e)))
        return KVX_ERR_INVALID_ARGUMENT;
    kvx__cu_counters(out, &ce->st, sizeof *out); /* every field a uint64_t counter */
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
