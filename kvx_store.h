/* kvx_store.h - v0.1.0 - block store: persistent KV offload and prefix cache on local or shared storage

   One file per KV page ("block"), named by a 32-byte key, under a directory
   on a local disk or a shared filesystem (NFS, Lustre, CephFS). An engine
   offloads pages it is about to drop (kvx_store_batch_put), asks how long a
   prefix of a new request is stored (kvx_store_batch_exists), and loads it
   back into free pool pages (kvx_store_batch_get, or layer by layer with
   kvx_store_load_begin so the engine can run layer 0 while later layers
   are still being read) instead of recomputing it.
   Keys are SGLang HiCache's chained SHA-256 page hashes (kvx_store_page_keys):
   the same prompt gives the same keys in every process and after restarts.

   CONTENTS (section markers: search for ">>name")
     >>layer-wise load  >>keys  >>block format  >>inspection  and ">>block
     store: " helpers, keys, header, object, index, worker pool, capacity,
     batches, layer-wise load, walking a namespace, open, scan and verify

   DO THIS
     In exactly one C or C++ file:
         #define KVX_IMPLEMENTATION
         #include "kvx_store.h"          (includes kvx.h only: no transport)
     Every other file just includes kvx_store.h. Link with -lpthread.

   DATA PATH
     kvx_store_batch_put -> kvx__store_put_item and kvx_store_batch_get ->
     kvx__store_get_item (one key each, on the I/O threads and the caller),
     both through kvx__store_data_io: pwritev / preadv between the pool
     pages and the block file, with the CRC32C (see HOT PATH COSTS).
     kvx_store_load_begin -> kvx__store_load_item (LAYER-WISE LOAD).

   EXAMPLE (error handling shortened)
       // given: kvx_layout my_layout; int rank, tp; const uint32_t *tokens;
       // given: size_t ntok; const int32_t *free_pages, *pages;
       kvx_store_desc d = {0};
       d.dir = "/mnt/nvme/kvcache";  d.model = "meta-llama/Llama-3.1-8B";
       d.layout = my_layout;         d.tp_rank = rank;  d.tp_size = tp;
       kvx_store *st;  char why[KVX_ERROR_MAX];
       if (kvx_store_open(&d, &st, why, sizeof why)) puts(why);
       kvx_store_key keys[256];
       size_t nk = kvx_store_page_keys(tokens, ntok, 16, NULL, keys, 256);
       size_t hit = kvx_store_batch_exists(st, keys, nk);     // prefix hits
       size_t got = 0;
       kvx_store_batch_get(st, keys, free_pages, hit, &got);  // got <= hit
       // ... compute the rest, then offload:
       kvx_store_batch_put(st, keys, pages, nk, NULL);
       kvx_store_close(st);

   COMPILE-TIME MACROS: none of its own (kvx.h's).

   ENVIRONMENT AND SETTINGS (kvx_store_desc; variables read once in
   kvx_store_open, kvx.h's settings rule: each overrides its desc field,
   0 / NULL = the default on the right, out of range fails the open)
     model           model id, part of the namespace            ("")
     layout          the KV pool (host memory); copied          (required)
     tp_rank, tp_size  this rank, tensor-parallel size          (0, 1)
     allocator       {alloc_fn, free_fn, user_data}             (malloc/free)
     KVX_STORE_DIR   (desc.dir) root directory       (/tmp/kvx_store-<uid>)
     KVX_STORE_CAPACITY  (desc.capacity_bytes) most bytes of block files
                     kept; optional suffix K, M, G, T (powers of 1024;
                     "KiB"/"GB"... accepted); "unlimited" or
                     KVX_STORE_UNLIMITED = no limit             (64 GiB)
     KVX_STORE_IO_THREADS  (desc.io_threads) threads doing a batch's I/O,
                     the calling thread included; 1..256         (4)
     KVX_STORE_FSYNC (desc.fsync) 0: rename only: a block is written under a
                     temporary name and renamed, so no reader sees a torn
                     block even when the writer is killed; a power failure
                     may lose recent blocks (then misses, never garbage:
                     the data CRC catches bytes that did not reach the
                     disk). 1: fsync the file, rename, fsync the directory:
                     a block a put reported is on stable storage.  (0)
     KVX_STORE_SHARED (desc.shared) 0: the directories are this user's
                     (made 0700; one another user owns, or the group or
                     others may write without the sticky bit, is refused
                     naming it, its owner and mode). 1: shared with the
                     group, which may own and write it (make it
                     group-owned, mode 2770).                    (0)
     KVX_STORE_SCAN_INTERVAL  (desc.scan_interval) seconds (fractions
                     allowed) between namespace scans (CAPACITY), 0.05 ..
                     86400; -1 = no periodic scan (only at open and in
                     kvx_store_rescan)                           (30)
     KVX_LOG_LEVEL   (desc.logger.level) error|warn|info|debug of the
                     store's logger {func, user_data, level}  (stderr, warn)

   THREAD SAFETY
     Every function may be called from any thread, concurrently, on one
     store, except kvx_store_close. Batch calls block until their I/O is
     done (call them from the engine's offload thread, not its scheduler).
     Several processes (and hosts) may share a directory (CAPACITY, SHARED
     FILESYSTEMS). The store starts io_threads - 1 workers at open, plus the
     namespace scanner when scan_interval >= 0, and joins them at close. A
     batch is a parallel loop over its keys that the caller joins: workers
     and caller claim keys with one atomic counter, each with preallocated
     scratch (header, iovecs, plan), so nothing is allocated per key and a
     one-key get runs on the caller with no hand-off. (Not an internal
     kvx_engine with the fake transport: that brings a progress thread
     waking every millisecond, rooms and a role the store has no use for,
     and kvx__workq allocates a node per job.) A layer-wise load
     (kvx_store_load_begin) starts one thread of its own that joins the
     workers as a batch's caller would; kvx_store_load_end joins it. Every
     load must be ended before kvx_store_close.

   NAMESPACE AND LAYOUT ON DISK
     <dir>/<config-hash>/config.json              what the namespace holds
     <dir>/<config-hash>/<k0k1>/<key>.kvb         one block per key
     <config-hash> is 16 hex digits: the first 8 bytes (little-endian) of
       SHA-256("kvx-store-v1" 0x00, u64 len(model), model,
               u64 kv_fingerprint, u64 page_size, u64 len(dtype), dtype,
               u64 dtype_size, u64 tp_rank, u64 tp_size)   (u64 = 8 bytes LE)
       where kv_fingerprint is kvx_layout_fingerprint() of the layout with
       its aux buffers left out (aux rows belong to requests, not pages, and
       are not stored). Another model, dtype, page size, head count, buffer
       list or TP rank/size is another directory: it never sees these blocks.
     <key> is the 64 lowercase hex digits of the key; <k0k1> the two hex
       digits of its first byte: 256 directories, made with the namespace,
       each holding about 1/256 of the blocks (4,000 at 2 TB of 2 MiB
       blocks), only ever looked up by name (hashed: ext4 htree, XFS B+tree,
       NFS LOOKUP), never scanned on the hot path. A second level (65,536
       directories) made nearly every put into a young store also create a
       directory (an inode, a server round trip on NFS) and left the scan
       at open 65,536 directories to read.
     Temporary files are "<key>.kvb.tmp.<pid>-<nonce>.<seq>" in the same
       directory (unique per process and thread, also across hosts), created
       with O_EXCL, renamed over <key>.kvb when complete (rename is atomic;
       two writers of one key write identical bytes, the last rename wins).
       Temporaries unchanged for 10 minutes are removed by kvx_store_open
       and by scans. A block taken for corrupt that was written less than
       10 minutes ago waits under such a name too (SHARED FILESYSTEMS).
     Directories another node may create at the same moment (the root,
       <config-hash>, the 256 fan-out directories) are made with
       kvx__mkdirat, which checks mkdir's answer (GlusterFS can answer
       EEXIST for a directory it then removes) and retries.

   BLOCK FILE, format versions 1 and 2 (all integers little-endian)
     offset size  field
       0     8    magic "KVXBLOCK"
       8     4    u32 format version: 1 or 2
      12     4    u32 header_size: bytes before the data; a multiple of 8,
                  >= 96 + 8 * num_buffers, <= 65536. Writers pad to 4096
                  when one page is >= 64 KiB (page-aligned data), else to 8.
      16     4    u32 header_crc: CRC32C (Castagnoli, as kvx_crc32c) of
                  bytes [0, header_size) with these 4 bytes taken as zero
      20     4    u32 flags = 0 (readers reject other values)
      24     8    u64 config hash (the namespace directory's name)
      32    32    key
      64     4    u32 page_count = 1 (one page per block in version 1)
      68     4    u32 num_buffers
      72     8    u64 data_len = page_count * sum(item_len)
      80     4    u32 data_crc: CRC32C of the data_len data bytes
      84     4    u32 page_size (tokens per page, informational)
      88     8    u64 kv_fingerprint (informational, see above)
      96   8*nb   u64 item_len[num_buffers]: bytes of one page of buffer b
     96+8nb 4*nb  version 2 only: u32 buf_crc[num_buffers]: CRC32C of
                  buffer b's data bytes (page_count * item_len[b] at its
                  offset below); data_crc is still the whole data's
      ...         zero padding up to header_size
      header_size data, buffer-major: buffer b's bytes start at
                  header_size + page_count * sum(item_len[0..b-1]); page j at
                  + j * item_len[b]
     Version 2 lets the layer-wise load verify a layer without the rest of
     the block; version 1 is what kvx_store.h wrote before it. A store
     writes version 2 where buf_crc[] fits the header size version 1 would
     have (header padded to 4096: one page of data >= 64 KiB, and 96 + 12 x
     num_buffers <= that size, so every real model's pages), else version
     1: so a namespace's blocks keep one size and the version 1 blocks stay
     hits (both versions are read, in the same namespace). A reader that
     only knows version 1 takes a version 2 block for corrupt (unknown
     version) and removes it: upgrade every process sharing a namespace
     together.
     The file is exactly header_size + data_len bytes. A file of another
     size, a bad magic/version/flag, a header, data or buffer CRC mismatch,
     or a header that names another configuration or buffer list is "corrupt":
     a miss, and (only on evidence re-read under a private name, see SHARED
     FILESYSTEMS) counted, logged at warn and removed. An intact block of
     another key under a key's name is a miss and is moved to its own name.
     tests/store/read_block.py reads and checks a block with Python's
     standard library only (struct and an 8-line CRC32C).

   CAPACITY AND EVICTION (LRU that survives restarts, across processes)
     The store keeps an in-memory index of the namespace's blocks (key,
     size, last use). Every put and get sets the block's atime and mtime
     (futimens) to a per-process strictly increasing wall-clock stamp, so
     the mtime is the last use, whoever used it. A namespace scan reads each
     of the 256 directories once: a known block is only marked seen; an
     unknown one (another process wrote it) is stat-ed and merged into the
     LRU order by its mtime; an indexed block no scan saw and nobody here
     used since the scan began (another process removed it) is forgotten;
     then least recently used blocks are evicted until the namespace as
     seen is under capacity. Scans run at kvx_store_open (building the
     index), every scan_interval in a background thread, early (at most
     every max(1 s, scan_interval / 4)) when a put finds this process's
     view full, and in kvx_store_rescan. Cost (bench/bench_store.c, 10,000
     blocks): local disk about 2 us per block at open and 1 us per known
     block in a rescan (0.57 s to open 100,000); GlusterFS (FUSE, loopback
     brick) 50 us at open and 43 us per known block in a rescan (a
     1M-block namespace costs ~45 s of one thread per scan: raise
     scan_interval, or -1 for a namespace one process owns).
     A put reserves its block's bytes first, evicting least recently used
     blocks of the index until it fits. Before a block is evicted (by a put
     or a scan) its mtime is read again from the server (statx
     AT_STATX_FORCE_SYNC): one used since by another process stays and
     another goes; one already gone is only forgotten. Once full, on a
     local filesystem the first block a put evicts is not unlinked but
     renamed to the put's temporary name, overwritten in place (every byte;
     a namespace's blocks all have one size) and renamed to the new key:
     that spares the filesystem an inode, extents and page cache freed and
     allocated per block (ext4 without a journal creates files slowly soon
     after deleting many). A reader that had the evicted block open sees
     its bytes change: the CRC fails, the name no longer leads there, and
     it is an ordinary miss. On a network or FUSE filesystem (statfs says
     NFS, SMB, FUSE, Ceph, Lustre, GPFS, OCFS2, GFS2, AFS, 9p) evicted
     blocks are always unlinked, never recycled: a name another client
     looked up a moment ago may still lead, in its cache, to the old file
     (GlusterFS even renames and unlinks through such a name), and a
     recycled file would be reached under a wrong key.
     Across processes (and hosts) sharing a namespace the limit holds for
     the namespace as a whole, with this bound: each process keeps its view
     (everything up to its last scan plus its own puts) under
     capacity_bytes, so between scans the namespace can exceed it by what
     the others put since this process's last scan (N processes putting R
     bytes/s each: about (N - 1) x R x the scan gap); every scan evicts it
     back down, and several processes evicting the same blocks at once do
     not over-evict (a victim already gone frees nothing and is not
     replaced). After all writers stop, the next scan of any one of them
     leaves the namespace at or under capacity (tests/store/
     test_store_shared.c, tests/dfs/test_dfs_store.c). Capacity is in file
     bytes (header + data), not filesystem blocks; temporaries (writes in
     flight) are not counted.

   SHARED FILESYSTEMS (NFS, GlusterFS, CephFS, Lustre)
     Relied on: rename of a file within a directory is atomic on the server
     (a reader opens the old or the new file, never a mix); a file renamed
     into place is visible to other clients once their name cache expires
     (GlusterFS entry-timeout, NFS actimeo: until then a block another node
     just wrote may be a miss, and one it just replaced or evicted a miss
     where it was a hit); size and bytes as read are checked (size, header
     CRC, key, configuration, data CRC), so a stale attribute or page cache
     only makes a miss, never a wrong page. Where the filesystem is weaker:
     ENOENT/ESTALE while opening or reading is a miss, not an error; a put
     whose "present" block vanished (a stale positive lookup) writes it. A
     block that looks unusable is removed only on evidence in that very
     file: the name must still lead to the file examined, with the same
     size and ctime from the server (statx AT_STATX_FORCE_SYNC), else it
     changed under the reader and is a miss; on a network filesystem a file
     written in the last 5 s is only a miss too (maybe another node's block
     in the making); then whatever file the name leads to is moved (rename)
     to a private temporary name and read again in full with fresh
     attributes: an intact block goes back (to its own key's name), another
     file than the one examined goes back untouched, a short read proves
     nothing and goes back; only a server-side size other than a block's, a
     bad header, or a data CRC mismatch on a complete read is corrupt. The
     corrupt file is removed at once when unchanged for 10 minutes, else
     left under its temporary name for the next open or scan (another
     writer may still complete it). So a reader never removes another
     writer's good block. KVX_STORE_FSYNC=1 is needed for a put to be on
     the server's stable storage when it returns (NFS, Lustre); GlusterFS
     caching translators (quick-read, io-cache, md-cache) and FUSE
     attribute/entry timeouts only cost misses. Open: the hosts' clocks
     should agree (mtimes order the LRU across hosts, and the 5 s rule
     compares them with this host's clock); a block used on another node
     within a second of its eviction here may be evicted anyway (stale
     attributes).

   LAYER-WISE LOAD (kvx_store_load_begin, _wait_layer, _layers_done, _end)
     LMCache's layer-wise retrieval: the engine starts the load, waits for
     layer 0, runs layer 0 while layers 1.. are read, and so on. A layer
     is the layout's: MHA layer i = K buffer i and V buffer L + i (L =
     num_buffers / 2), MLA layer i = buffer i (kvx.h PARALLEL LAYOUTS). The
     layers are read in groups: layer 0 alone, then 1, 2, 4... layers, each
     group at most 512 KiB of a key (at least one layer); Llama-3.1-8B's 2
     MiB pages: 1, 1, 2, 4, 8, 8, 8 layers. The load is one parallel loop
     over n x groups items, group-major (the io_threads, one of them the
     load's own thread): an item reads one key's group, its K region and
     its V region (contiguous in the block, buffer-major) with a preadv
     each straight into the pool pages, in chunks of 256 KiB, and checks
     each buffer against the header's buf_crc[] right after its chunk. A
     group's items start when every earlier group is complete (else
     threads running ahead take the CPU from a straggler of group 0 on a
     busy machine). Group 0 of a key also opens the block, checks its
     header (key, configuration, layout) and keeps buf_crc[] and the open
     descriptor for the key's later groups (up to 4096 keys and a quarter
     of RLIMIT_NOFILE; beyond, each group opens the block again and checks
     it is the same file). Layer l is available when every key's group of
     l and every earlier group is verified: "a corrupt block is a miss,
     never wrong bytes" holds per buffer, since a layer's every byte was
     checked against a CRC the header CRC protects. A version 1 block has
     no buf_crc[]: its group 0 item reads and verifies it whole, and its
     layers count then (correct, not early). Any miss, corrupt block (the
     same evidence rules as get: taken away only when proven) or I/O error
     fails the load: no later layer becomes available; the waits return
     the error with a sentence; end reports the prefix of keys that did
     load completely. kvx_store_load_end cancels the items not started and
     joins the load's thread: the pool is not written after it returns.
     Tried and dropped: no order between groups (threads ran ahead: with 4
     threads on 2 busy cores the first layer took 25 ms instead of 13);
     POSIX_FADV_WILLNEED of a block's next group after each group (cold
     page cache 5% faster, warm 10% slower, same run).
     Measured (bench_store, 4096-token Llama-3.1-8B prefix = 256 blocks of
     2 MiB, 4 io_threads, 2-core VM shared with other jobs, warm page
     cache): first layer 8-15 ms, whole prefix 75-150 ms layer-wise, 0.97-
     1.11x batch_get's time (first layer / whole 0.07-0.12: the opens and
     headers are a fixed cost of group 0); cold page cache (blocks dropped
     with POSIX_FADV_DONTNEED): first layer 60-85 ms, whole prefix 0.48-1.55x
     batch_get's, mostly above 1.2x (14 reads of 32-512 KiB per block against
     8 of 256 KiB; the VM's disk is noisy), first layer / batch_get
     0.1-0.37.

   HOT PATH COSTS
     exists: one fstatat per key (checks the size too); no directory scan,
             no open. 128 keys or more are spread over the I/O threads.
     get:    openat, fstat, pread of the header, preadv of the data straight
             into the pool pages in groups of ~256 KiB, CRC32C of each group
             while it is in the core's L2 cache, futimens, close.
     load:   (layer-wise) per key: openat, fstat, pread of the header,
             then per layer group two preadv (K and V regions; one for
             MLA) straight into the pool pages, CRC32C per buffer, on the
             descriptor kept open; futimens, close (LAYER-WISE LOAD).
     put:    fstatat (an existing block is only touched), renameat of an
             evicted block to the temporary name (local filesystems) or
             openat(O_EXCL) of a new one, pwritev straight from the pool
             pages in groups of ~256 KiB, each followed by its CRC32C while
             in the core's L2 cache, pwrite of the header, futimens, [fsync], close, renameat,
             [fsync dir]. No KV byte is copied in user space.
     The data CRC32C (the same value as kvx_crc32c) is folded 256 bytes at
     a time with carry-less multiplies where the CPU has VPCLMULQDQ
     (AVX-512: Intel Ice Lake / Sapphire Rapids and later, AMD Zen 4 and
     later; AVX2: AMD Zen 3, Intel Alder Lake), chosen at the first use by
     cpuid and checked against kvx_crc32c then; else kvx_crc32c (three
     crc32 streams on x86-64, tables elsewhere).
     Measured (bench/bench_store.c, 512 MiB of 2 MiB blocks in the page
     cache, 2-core Sapphire Rapids VM, shared): the kernel's copy is ~85%
     of a put's or get's CPU; with three crc32 streams (~25 GB/s) the CRC
     was another ~35% of the copy's cost (CPU per byte of a raw
     write()/read() of the same bytes: put 1.45-1.55x, get 1.48-1.74x);
     folded with AVX-512 (~80 GB/s), in 256 KiB groups (1 MiB groups
     outgrew L2) that end at 256 KiB-aligned file offsets (large page-cache
     folios): put 1.23-1.35x, get 1.25-1.55x (the get's remainder is the CRC
     and raw read()'s own spread). Wall time depends on free cores: the
     store's io_threads run in parallel, the raw baseline is one thread.
     Profile on a 2-core AMD EPYC (Zen 4) VM (perf record of bench_store
     --phase, one I/O thread, 2026-12-08): get = the kernel's copy 76% (the
     same CPU as a raw preadv of the same bytes into the same pool pages),
     CRC32C 13% (the fold runs ~56 GB/s from L2 here: 512-bit VPCLMULQDQ at
     half rate; 8 accumulators instead of 4 did not help), the preadv
     calls' own work (page-cache lookups, 9 calls a block) ~7%, open,
     futimens, close ~3%; put = the kernel's copy 58% and ext4
     write_begin 12.5% (both as a raw pwritev from the same pages), CRC32C
     11%, the two renames 5%, fstatat/open/fstat/futimens/close ~4%. The
     kernel's copy to or from 32 KiB pieces scattered over pool memory in
     4 KiB pages costs 1.3-1.4x the same copy to one contiguous buffer,
     which is most of the gap to bench_store's contiguous raw baseline.
     Tried and dropped (same runs, --phase put, interleaved with the code
     above): checksumming each block first and writing header + data in one
     pwritev (9 calls -> 1): reused files -15% to +12% CPU per byte over
     11 runs (no steady gain: the CRC then reads the pool from DRAM at ~12
     GB/s, what the kernel's copy saved), new files 17-74% more CPU in 7
     of 7 runs; the same with the header written last: within the noise;
     512 KiB groups instead of 256 KiB: within the noise (+-10% on this
     shared host); software prefetch in the fold: within the noise.

   LICENSE: MIT, see the end of this file.
*/
#ifndef KVX_STORE_H_INCLUDED
#define KVX_STORE_H_INCLUDED

#include "kvx.h"

#if KVX_VERSION_MAJOR != 0
#error "kvx_store.h needs kvx.h major version 0"
#endif

#ifdef __cplusplus
extern "C" {
#endif

#define KVX_STORE_FORMAT_VERSION 2   /* newest written; 1 and 2 are read (BLOCK FILE) */
#define KVX_STORE_HEADER_FIXED 96     /* bytes of the header before item_len[] */
#define KVX_STORE_HEADER_MAX 65536    /* most header_size a reader accepts */
#define KVX_STORE_UNLIMITED (~(uint64_t)0)

typedef struct kvx_store kvx_store;

/* A block's name: 32 bytes, e.g. a SHA-256 page hash. */
typedef struct kvx_store_key {
    uint8_t bytes[32];
} kvx_store_key;

typedef struct kvx_store_desc {
    const char *dir;         /* KVX_STORE_DIR, "/tmp/kvx_store-<uid>" */
    const char *model;       /* model id, part of the namespace; NULL = "" */
    kvx_layout layout;       /* the KV pool, host memory; copied (not the memory) */
    int tp_rank;             /* 0 */
    int tp_size;             /* 0 = 1 */
    uint64_t capacity_bytes; /* KVX_STORE_CAPACITY, 0 = 64 GiB */
    int io_threads;          /* KVX_STORE_IO_THREADS, 0 = 4 */
    int fsync;               /* KVX_STORE_FSYNC, 0 = rename only, 1 = fsync */
    kvx_allocator allocator;
    kvx_logger logger;
    int shared;              /* KVX_STORE_SHARED, 0 = private to this user (directories
                                0700, refused when another user owns them or may write
                                in them); 1 = shared with the directory's group */
    double scan_interval;    /* KVX_STORE_SCAN_INTERVAL, seconds between namespace scans
                                (see CAPACITY); 0 = 30; -1 = none (only at open and in
                                kvx_store_rescan); else 0.05 .. 86400 */
} kvx_store_desc;

/* Opens (creating directories as needed) the namespace of this
   configuration under desc->dir, removes stale temporary files, rebuilds
   the LRU index from the block files (see CAPACITY) and evicts down to the
   capacity, starts io_threads - 1 worker threads and (scan_interval >= 0)
   the namespace scanner. On failure *out is NULL and a sentence is written
   to why: KVX_ERR_INVALID_ARGUMENT (bad layout, GPU memory in the layout,
   tp_rank outside tp_size, path too long), KVX_ERR_BAD_CONFIG (a
   KVX_STORE_* variable that does not parse or is out of range),
   KVX_ERR_PERMISSION / KVX_ERR_IO (directory), KVX_ERR_CORRUPT (config.json
   of the namespace describes another configuration), KVX_ERR_NO_MEMORY.
   Blocks. Thread-safe. */
KVX_API kvx_result kvx_store_open(const kvx_store_desc *desc, kvx_store **out, char *why,
                                  size_t why_len);

/* Joins the worker threads and the namespace scanner (a scan in progress
   stops at its next directory entry) and frees the store. Files stay. No
   call may be running on the store. NULL ok. */
KVX_API void kvx_store_close(kvx_store *s);

/* Stores pool page pages[i] (that page of every KV buffer of the layout)
   under keys[i], for i < n. A key whose block is already present is not
   rewritten (blocks are content-addressed) but becomes most recently used.
   Evicts least recently used blocks to stay under capacity. When results is
   not NULL, results[i] is KVX_OK or the error of key i. Returns KVX_OK when
   every key is stored, else the error of the lowest failing key
   (KVX_ERR_NO_SPACE: a block larger than the capacity, or the disk full;
   KVX_ERR_PERMISSION, KVX_ERR_IO), logged once per call. Bad arguments
   (NULL, a page outside the pool): KVX_ERR_INVALID_ARGUMENT /
   KVX_ERR_OUT_OF_RANGE, nothing written. Pages may repeat. Blocks until
   done; thread-safe. The pool pages must not change during the call. */
KVX_API kvx_result kvx_store_batch_put(kvx_store *s, const kvx_store_key *keys,
                                       const int32_t *pages, size_t n, kvx_result *results);

/* Loads keys[i] into pool page dst_pages[i] for the longest prefix of keys
   that are all present and intact, in parallel; *loaded (required) is the
   length of that prefix. Only pages [0, *loaded) are valid: a page of a key
   at or after *loaded may have been partly overwritten, and no page is
   counted as loaded before its bytes were read completely and their
   CRC32C matched. A torn, truncated, corrupt or foreign block is a miss;
   when a re-read proves it corrupt (see SHARED FILESYSTEMS) it is logged,
   counted in stats.corrupt and removed. Returns KVX_OK when the
   prefix ended on a miss or covers all keys; the error when it ended on an
   I/O error (KVX_ERR_IO, KVX_ERR_PERMISSION...); KVX_ERR_INVALID_ARGUMENT,
   KVX_ERR_OUT_OF_RANGE or KVX_ERR_DUPLICATE (a destination page twice) with
   nothing read. Loaded blocks become most recently used. Blocks;
   thread-safe. */
KVX_API kvx_result kvx_store_batch_get(kvx_store *s, const kvx_store_key *keys,
                                       const int32_t *dst_pages, size_t n, size_t *loaded);

/* >>layer-wise load: a prefix loaded back layer by layer, so an engine can
   run layer 0 while later layers are still being read (LAYER-WISE LOAD). */
typedef struct kvx_store_load kvx_store_load;

/* Starts loading keys[i] into pool page dst_pages[i], i < n, in the
   background, layer by layer: layer 0 of every key first, then layer 1...
   (the layout's layers: MHA layer i is K buffer i and V buffer L + i of L =
   num_buffers / 2, MLA layer i buffer i; model layer layer_begin + i).
   keys and dst_pages are copied. The I/O runs on a thread of the load's
   own and the store's I/O threads (io_threads in all, as a batch). Unlike
   kvx_store_batch_get, every key must load: a miss, a corrupt block or an
   I/O error fails the load (kvx_store_load_wait_layer says which key and
   why); call kvx_store_batch_exists first for the prefix to load. On
   success *out is the load, to be ended with kvx_store_load_end (always,
   also after a failure). Refused with nothing read, *out NULL and the
   reason logged: KVX_ERR_INVALID_ARGUMENT (NULL s, out, keys or dst_pages
   with n > 0; an MHA layout with an odd buffer count), KVX_ERR_OUT_OF_RANGE
   / KVX_ERR_DUPLICATE (a destination page outside the pool or twice),
   KVX_ERR_NO_MEMORY (also: no thread could be started). The destination
   pages must not be used by anyone else until the load is ended. Does not
   block on I/O; thread-safe. Every load must be ended before
   kvx_store_close. */
KVX_API kvx_result kvx_store_load_begin(kvx_store *s, const kvx_store_key *keys,
                                        const int32_t *dst_pages, size_t n,
                                        kvx_store_load **out);

/* Layers of the load (of the store's layout): wait_layer takes 0 .. this - 1.
   0 for NULL. */
KVX_API uint32_t kvx_store_load_num_layers(const kvx_store_load *ld);

/* Waits until layer `layer` of every key is in the pool and verified
   (every byte of its buffers read and its CRC32C matched: see
   LAYER-WISE LOAD), which means every layer before it is too; layers
   become available in order 0, 1, 2... KVX_OK then (also when the load
   failed later on). Otherwise KVX_ERR_TIMEOUT once timeout_ms milliseconds
   passed (0: only looks; < 0: no limit), or the load's error when it failed
   first (KVX_ERR_NOT_FOUND: a key is not stored or went away while read;
   KVX_ERR_CORRUPT; KVX_ERR_IO...; the sentence in kvx_store_load_error):
   no later layer will come. Refused: KVX_ERR_INVALID_ARGUMENT (NULL),
   KVX_ERR_OUT_OF_RANGE (layer >= kvx_store_load_num_layers), the sentence
   in kvx_store_load_call_error and logged. Blocks up to timeout_ms;
   thread-safe, but not concurrently with kvx_store_load_end. */
KVX_API kvx_result kvx_store_load_wait_layer(kvx_store_load *ld, uint32_t layer, int timeout_ms);

/* How many layers from layer 0 on are available (as wait_layer's KVX_OK):
   0 .. kvx_store_load_num_layers. Never blocks; thread-safe. 0 for NULL. */
KVX_API uint32_t kvx_store_load_layers_done(kvx_store_load *ld);

/* Why the load failed: a sentence naming the key's index and block file
   and what happened; "" while it has not failed (and for NULL). Valid
   until kvx_store_load_end. */
KVX_API const char *kvx_store_load_error(kvx_store_load *ld);

/* The sentence of the last call on ld that was refused (wait_layer with a
   layer out of range); "" when none. Valid until kvx_store_load_end. */
KVX_API const char *kvx_store_load_call_error(kvx_store_load *ld);

/* Ends the load: I/O not started yet is cancelled, I/O in flight is
   waited for (no byte is written into the pool after this returns), the
   thread is joined and ld freed. *loaded (NULL ok) is the length of the
   longest prefix of keys whose every layer was read and verified (all n
   when the load completed); only those pages hold loaded bytes, the others
   may hold some layers or partly written ones. Returns KVX_OK when every
   key loaded, the load's error when it failed (as wait_layer), or
   KVX_ERR_ABORTED when it was ended before every layer was read. Loaded
   blocks become most recently used. NULL: KVX_ERR_INVALID_ARGUMENT. Blocks
   for the I/O in flight (at most one read per I/O thread). */
KVX_API kvx_result kvx_store_load_end(kvx_store_load *ld, size_t *loaded);

/* How many keys from keys[0] on are present, stopping at the first that is
   not: the prefix hit that decides a prefetch (cost: HOT PATH COSTS). A
   block of the wrong size is a miss (and removed when proven corrupt).
   Does not change the LRU order. 0 on bad arguments. Blocks (briefly);
   thread-safe. */
KVX_API size_t kvx_store_batch_exists(kvx_store *s, const kvx_store_key *keys, size_t n);

/* Scans the namespace now, as the background scanner does every
   scan_interval (see CAPACITY): learns the blocks other processes wrote,
   forgets those they removed, and evicts least recently used blocks until
   the namespace as seen is under the capacity. KVX_OK, an I/O error, or
   KVX_ERR_INVALID_ARGUMENT (NULL). Blocks: O(blocks) directory entries and
   one stat per block not known yet. Thread-safe (one scan runs at a
   time). */
KVX_API kvx_result kvx_store_rescan(kvx_store *s);

/* Removes one block. KVX_OK, KVX_ERR_NOT_FOUND, or an I/O error. */
KVX_API kvx_result kvx_store_remove(kvx_store *s, const kvx_store_key *key);

/* Monotonic counters of this store object, plus the index's current size. */
typedef struct kvx_store_stats {
    uint64_t hits;          /* keys kvx_store_batch_get reported loaded */
    uint64_t misses;        /* keys get looked for and did not load (corrupt included) */
    uint64_t corrupt;       /* block files proven torn/corrupt/foreign and taken away */
    uint64_t evictions;     /* blocks removed to stay under capacity (scans included) */
    uint64_t puts;          /* blocks written */
    uint64_t put_present;   /* puts skipped: the block was already there */
    uint64_t errors;        /* I/O errors (other than a missing file) */
    uint64_t bytes_written; /* block file bytes written (header + data) */
    uint64_t bytes_read;    /* block file bytes read by get (also keys read in parallel
                               past a miss, which are not reported loaded) */
    uint64_t blocks;        /* blocks in the index now (the namespace's as of the last scan,
                               plus this process's puts since) */
    uint64_t bytes_used;    /* their file bytes */
    uint64_t capacity;      /* the limit in effect */
    uint64_t scans;         /* namespace scans done (the one at open included) */
    uint64_t last_scan_ns;  /* how long the last one took */
    uint64_t scan_found;    /* blocks first learnt of by a scan (written by other processes) */
    uint64_t scan_gone;     /* indexed blocks a scan found removed by other processes */
} kvx_store_stats;
KVX_API void kvx_store_stats_get(kvx_store *s, kvx_store_stats *out);

/* Settings in effect and where things are. */
KVX_API const char *kvx_store_dir(const kvx_store *s);   /* <dir>/<config-hash> */
KVX_API uint64_t kvx_store_config_hash(const kvx_store *s);
KVX_API uint64_t kvx_store_block_bytes(const kvx_store *s); /* size of one block file */
KVX_API const kvx_store_desc *kvx_store_settings(const kvx_store *s); /* env applied */
/* Full path of key's block file (whether or not it exists). KVX_OK or
   KVX_ERR_INVALID_ARGUMENT when len is too small. */
KVX_API kvx_result kvx_store_block_path(const kvx_store *s, const kvx_store_key *key, char *out,
                                        size_t len);

/* >>keys ---------------------------------------------------------------- */

/* SGLang HiCache page keys: for each full page of page_size tokens,
   key = SHA-256(previous key (absent for the first page, unless prior is
   given) || each token id as 4-byte little-endian unsigned). Writes
   min(num_tokens / page_size, max_keys) keys and returns that count. A
   trailing partial page has no key. prior continues a sequence whose
   earlier pages were hashed before (NULL = start of the sequence). */
KVX_API size_t kvx_store_page_keys(const uint32_t *tokens, size_t num_tokens, uint32_t page_size,
                                   const kvx_store_key *prior, kvx_store_key *keys,
                                   size_t max_keys);
/* 64 lowercase hex digits and a NUL. */
KVX_API void kvx_store_key_hex(const kvx_store_key *k, char out[65]);
/* Parses 64 hex digits (either case). 0 on success, -1 otherwise. */
KVX_API int kvx_store_key_parse(const char *hex, kvx_store_key *out);

/* >>block format ---------------------------------------------------------- */

/* A parsed block header (see BLOCK FILE). */
typedef struct kvx_store_block_info {
    uint32_t version, header_size, header_crc, flags;
    uint64_t config_hash;
    kvx_store_key key;
    uint32_t page_count, num_buffers;
    uint64_t data_len;
    uint32_t data_crc, page_size;
    uint64_t kv_fingerprint;
    const uint8_t *item_lens; /* num_buffers u64 LE, inside the parsed buffer */
    const uint8_t *buf_crcs;  /* version 2: num_buffers u32 LE, CRC32C of each buffer's
                                 data bytes, inside the parsed buffer; NULL in version 1 */
} kvx_store_block_info;

/* Parses and checks a block header held in buf[0..len): magic, version
   (1 or 2), sizes within bounds (version 2: room for buf_crc[]), header CRC, flags, page_count >= 1, every item_len
   >= 1, data_len == page_count * sum(item_len) without overflow. Pure: no
   I/O, no allocation, never reads outside buf. KVX_OK, or KVX_ERR_CORRUPT
   with a sentence in why (when len < header_size, out->header_size is set
   when it could be read, so a reader can fetch the rest and call again);
   KVX_ERR_INVALID_ARGUMENT when out is NULL. Thread-safe. */
KVX_API kvx_result kvx_store_header_parse(const void *buf, size_t len, kvx_store_block_info *out,
                                          char *why, size_t why_len);
/* item_len of buffer i of a parsed header (0 when i is out of range). */
KVX_API uint64_t kvx_store_block_item_len(const kvx_store_block_info *b, uint32_t i);
/* CRC32C of buffer i's data bytes as a version 2 header holds it; 0 when
   i is out of range or the header is version 1 (no per-buffer CRCs). */
KVX_API uint32_t kvx_store_block_buf_crc(const kvx_store_block_info *b, uint32_t i);

/* >>inspection -------------------------------------------------------------- */

/* One block file found by kvx_store_scan. Pointers are valid during the
   callback only. */
typedef struct kvx_store_entry {
    const char *path;        /* the block file */
    const char *namespace_dir; /* <dir>/<config-hash> */
    kvx_result status;       /* KVX_OK, or KVX_ERR_CORRUPT / KVX_ERR_IO ... */
    const char *why;         /* "" when status is KVX_OK */
    const kvx_store_block_info *info; /* NULL when the header did not parse */
    uint64_t file_bytes;
    int64_t mtime_ns;        /* last use (see CAPACITY) */
} kvx_store_entry;
/* Return nonzero to stop the scan. */
typedef int (*kvx_store_scan_fn)(void *user, const kvx_store_entry *e);

/* Lists and checks every block under dir, without a layout: dir is a store
   root (every <16-hex> namespace under it is scanned) or one namespace
   directory (holding config.json). For each <key>.kvb: parses the header,
   checks the file size, that the config hash is the directory's and the key
   the file name's, and when check_data the data CRC32C (reads every byte).
   Read-only. Calls fn for each block. KVX_OK, or KVX_ERR_NOT_FOUND /
   KVX_ERR_IO with a sentence when dir cannot be read. This is what an
   inspection tool calls. Thread-safe. */
KVX_API kvx_result kvx_store_scan(const char *dir, int check_data, kvx_store_scan_fn fn,
                                  void *user, char *why, size_t why_len);

typedef struct kvx_store_verify_report {
    uint64_t blocks;   /* block files found */
    uint64_t ok;       /* of them intact and of this configuration */
    uint64_t bad;      /* torn, corrupt or foreign */
    uint64_t removed;  /* bad ones removed (remove_bad) */
    uint64_t bytes_ok; /* file bytes of the intact ones */
    uint64_t temporary; /* temporary files (writes in flight or abandoned) */
} kvx_store_verify_report;

/* Checks every block of this store's namespace as kvx_store_scan with
   check_data, and also against this store's layout; with remove_bad, bad
   blocks are removed and counted in stats.corrupt. Logs each bad block at
   warn. Blocks (reads everything). Thread-safe. */
KVX_API kvx_result kvx_store_verify(kvx_store *s, int remove_bad, kvx_store_verify_report *out);

#ifdef __cplusplus
}
#endif
#endif /* KVX_STORE_H_INCLUDED */

/* ======================================================================== */
/*                             IMPLEMENTATION                               */
/* ======================================================================== */
#if defined(KVX_IMPLEMENTATION) && !defined(KVX_STORE_IMPL_INCLUDED)
#define KVX_STORE_IMPL_INCLUDED

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <fcntl.h>
#include <unistd.h>
#include <dirent.h>
#include <time.h>
#include <pthread.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <sys/sysmacros.h>
#include <sys/vfs.h>
#include <sys/resource.h>

#ifdef __cplusplus
extern "C" {
#endif

/* >>block store: helpers ------------------------------------------------------ */

#define KVX__STORE_PATH 4096
#define KVX__STORE_REL 128            /* "ab/<64 hex>.kvb.tmp.<pid>-<nonce>.<seq>" */
#define KVX__STORE_RELLEN 71          /* strlen("ab/<64 hex>.kvb") */
#define KVX__STORE_GROUP (1u << 18)   /* bytes read or written, then checksummed, at once */
#define KVX__STORE_IOV 64             /* iovecs per preadv / pwritev */
#define KVX__STORE_TMP_TTL_NS (600ull * 1000000000ull)
#define KVX__STORE_SETTLE_NS (5ull * 1000000000ull) /* see kvx__store_bad */
#define KVX__STORE_DEFAULT_CAPACITY (64ull << 30)
#define KVX__STORE_VICTIMS 32
#define KVX__STORE_MAX_DATA (1ull << 48)


/* >>block store: CRC32C ------------------------------------------------------- */

/* CRC32C of the data path (see HOT PATH COSTS). kvx_crc32c runs three crc32
   streams: about 25 GB/s on a 2023 Xeon, a third of the kernel's copy cost
   of the same bytes, which made the checksum the biggest cost of a get
   after the copy itself. Where the CPU has VPCLMULQDQ with AVX-512 (Intel
   Ice Lake and later, AMD Zen 4 and later) the bytes are folded 256 at a
   time with carry-less multiplies instead (2-3x faster), and kvx_crc32c
   finishes the last 256 folded bytes and the tail.
   Why the fold is exact: a reflected CRC with register 0 of a message M is
   M(x) * x^32 mod P. Sixteen 128-bit lanes hold 256 consecutive bytes;
   a lane A = A_hi(x) x^64 + A_lo(x) that stands D = 2048 bits before the
   lane of the next 256 bytes is congruent (mod P) to
   A_hi * (x^(D+64) mod P) + A_lo * (x^D mod P) there, a polynomial of
   degree < 96, XORed into that lane. Reflected operands make a carry-less
   product come out multiplied by x, so the constants are x^(D+63) mod P
   and x^(D-1) mod P. The starting register is XORed into the first 4 bytes
   (for M of 32 bits or more, R x^|M| + M x^32 = (M + R x^(|M|-32)) x^32). */
#if defined(__x86_64__) && ((defined(__clang__) && __clang_major__ >= 6) || \
                             (!defined(__clang__) && defined(__GNUC__) && __GNUC__ >= 8))
#define KVX__STORE_VPCLMUL 1
#include <immintrin.h>

static pthread_once_t kvx__store_crc_once = PTHREAD_ONCE_INIT;
static int kvx__store_crc_fold; /* 2: AVX-512 fold, 1: AVX2 fold, 0: kvx_crc32c */
static uint64_t kvx__store_crc_k[2]; /* x^(D+63) mod P, x^(D-1) mod P, reflected */

/* x^n mod P (P = CRC32C's 0x1EDC6F41 plus x^32), as a 64-bit reflected
   operand: the coefficient of x^d in bit 63 - d. */
static uint64_t kvx__store_xpow_mod(unsigned n) {
    uint64_t r = 1, out = 0;
    unsigned i;
    for (i = 0; i < n; i++) {
        r <<= 1;
        if (r >> 32) r ^= 0x11EDC6F41ull;
    }
    for (i = 0; i < 32; i++)
        if (r >> i & 1) out |= 1ull << (63 - i);
    return out;
}

__attribute__((target("avx512f,avx512vl,vpclmulqdq,pclmul"))) static uint32_t
kvx__store_crc_fold256(uint32_t crc, const uint8_t *p, size_t len) {
    /* len >= 512; crc as kvx_crc32c takes it */
    __m512i k = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(const void *)kvx__store_crc_k));
    __m512i a0 = _mm512_loadu_si512((const void *)p), a1 = _mm512_loadu_si512((const void *)(p + 64));
    __m512i a2 = _mm512_loadu_si512((const void *)(p + 128)), a3 = _mm512_loadu_si512((const void *)(p + 192));
    uint8_t folded[256];
    uint32_t raw;
    a0 = _mm512_xor_si512(a0, _mm512_castsi128_si512(_mm_cvtsi32_si128((int)~crc)));
    p += 256;
    len -= 256;
#define KVX__STORE_FOLD(a, off)                                                            \
    a = _mm512_ternarylogic_epi64(_mm512_clmulepi64_epi128(a, k, 0x00),                    \
                                  _mm512_clmulepi64_epi128(a, k, 0x11),                    \
                                  _mm512_loadu_si512((const void *)(p + (off))), 0x96)
    while (len >= 256) {
        KVX__STORE_FOLD(a0, 0);
        KVX__STORE_FOLD(a1, 64);
        KVX__STORE_FOLD(a2, 128);
        KVX__STORE_FOLD(a3, 192);
        p += 256;
        len -= 256;
    }
#undef KVX__STORE_FOLD
    _mm512_storeu_si512((void *)folded, a0);
    _mm512_storeu_si512((void *)(folded + 64), a1);
    _mm512_storeu_si512((void *)(folded + 128), a2);
    _mm512_storeu_si512((void *)(folded + 192), a3);
    raw = ~kvx_crc32c(~0u, folded, sizeof folded); /* register 0 over the folded bytes */
    return kvx_crc32c(~raw, p, len);
}

/* The same fold with 256-bit registers (AVX2 + VPCLMULQDQ: AMD Zen 3,
   Intel Alder Lake and later cores without AVX-512): eight lanes of 32. */
__attribute__((target("avx2,vpclmulqdq,pclmul"))) static uint32_t
kvx__store_crc_fold256_avx2(uint32_t crc, const uint8_t *p, size_t len) {
    __m256i k = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(const void *)kvx__store_crc_k));
    __m256i a[8];
    uint8_t folded[256];
    uint32_t raw;
    int j;
    for (j = 0; j < 8; j++) a[j] = _mm256_loadu_si256((const __m256i *)(const void *)(p + 32 * j));
    a[0] = _mm256_xor_si256(a[0], _mm256_castsi128_si256(_mm_cvtsi32_si128((int)~crc)));
    p += 256;
    len -= 256;
    while (len >= 256) {
        for (j = 0; j < 8; j++)
            a[j] = _mm256_xor_si256(_mm256_xor_si256(_mm256_clmulepi64_epi128(a[j], k, 0x00),
                                                     _mm256_clmulepi64_epi128(a[j], k, 0x11)),
                                    _mm256_loadu_si256((const __m256i *)(const void *)(p + 32 * j)));
        p += 256;
        len -= 256;
    }
    for (j = 0; j < 8; j++) _mm256_storeu_si256((__m256i *)(void *)(folded + 32 * j), a[j]);
    raw = ~kvx_crc32c(~0u, folded, sizeof folded);
    return kvx_crc32c(~raw, p, len);
}

static void kvx__store_crc_init(void) {
    uint8_t probe[1031];
    uint32_t x = 2463534242u, c;
    size_t i;
    for (i = 0; i < sizeof probe; i++) {
        x ^= x << 13; x ^= x >> 17; x ^= x << 5;
        probe[i] = (uint8_t)x;
    }
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("vpclmulqdq") || !__builtin_cpu_supports("pclmul")) return;
    kvx__store_crc_k[0] = kvx__store_xpow_mod(2048 + 63);
    kvx__store_crc_k[1] = kvx__store_xpow_mod(2048 - 1);
    /* belt and braces: a fold must agree with kvx_crc32c before it is used */
    c = kvx_crc32c(0x12345678u, probe, sizeof probe);
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
        kvx__store_crc_fold256(0x12345678u, probe, sizeof probe) == c)
        kvx__store_crc_fold = 2;
    else if (__builtin_cpu_supports("avx2") &&
             kvx__store_crc_fold256_avx2(0x12345678u, probe, sizeof probe) == c)
        kvx__store_crc_fold = 1;
}
#endif

/* kvx_crc32c(crc, p, len), faster on large buffers where the CPU allows. */
static uint32_t kvx__store_crc32c(uint32_t crc, const void *p, size_t len) {
#ifdef KVX__STORE_VPCLMUL
    if (len >= 512) {
        pthread_once(&kvx__store_crc_once, kvx__store_crc_init);
        if (kvx__store_crc_fold == 2) return kvx__store_crc_fold256(crc, (const uint8_t *)p, len);
        if (kvx__store_crc_fold == 1) return kvx__store_crc_fold256_avx2(crc, (const uint8_t *)p, len);
    }
#endif
    return kvx_crc32c(crc, p, len);
}

/* CRC32C combination (as zlib's crc32_combine, polynomial 0x82F63B78):
   crc(A || B) = (crc(A) x^(8|B|) mod P) + crc(B). Format version 2 keeps a
   CRC per buffer and the whole data's CRC; the writer computes the buffers'
   and combines them. Reflected 32-bit operands (x^0 in bit 31). */
static uint32_t kvx__store_gf_mul(uint32_t a, uint32_t b) {
    uint32_t m = 1u << 31, p = 0;
    for (; m; m >>= 1) {
        if (a & m) p ^= b;
        b = b & 1 ? (b >> 1) ^ 0x82F63B78u : b >> 1;
    }
    return p;
}

/* x^(8 n) mod P, by squaring. */
static uint32_t kvx__store_x8n(uint64_t n) {
    uint32_t p = 1u << 31, sq = 1u << 23; /* 1; x^8 */
    for (; n; n >>= 1) {
        if (n & 1) p = kvx__store_gf_mul(sq, p);
        sq = kvx__store_gf_mul(sq, sq);
    }
    return p;
}

/* crc(A || B) from crc1 = crc(A), crc2 = crc(B), x8n = kvx__store_x8n(|B|). */
static uint32_t kvx__store_crc_combine(uint32_t crc1, uint32_t crc2, uint32_t x8n) {
    return kvx__store_gf_mul(x8n, crc1) ^ crc2;
}

static const char kvx__store_hexd[] = "0123456789abcdef";

static int kvx__store_hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* "ab/<64 hex>.kvb": the block's path relative to the namespace. */
static void kvx__store_relpath(char *out, const kvx_store_key *k) {
    int i;
    out[0] = kvx__store_hexd[k->bytes[0] >> 4];
    out[1] = kvx__store_hexd[k->bytes[0] & 15];
    out[2] = '/';
    for (i = 0; i < 32; i++) {
        out[3 + 2 * i] = kvx__store_hexd[k->bytes[i] >> 4];
        out[4 + 2 * i] = kvx__store_hexd[k->bytes[i] & 15];
    }
    memcpy(out + 67, ".kvb", 5);
}

static int kvx__store_is_hex(const char *s, size_t n) {
    size_t i;
    for (i = 0; i < n; i++)
        if (s[i] < '0' || (s[i] > '9' && s[i] < 'a') || s[i] > 'f') return 0; /* lowercase only */
    return 1;
}

static uint64_t kvx__store_ts_ns(const struct timespec *t) {
    return (uint64_t)t->tv_sec * 1000000000ull + (uint64_t)t->tv_nsec;
}

static uint64_t kvx__store_wall_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    return kvx__store_ts_ns(&t);
}

/* >>block store: keys ----------------------------------------------------------- */

KVX_API size_t kvx_store_page_keys(const uint32_t *tokens, size_t num_tokens, uint32_t page_size,
                                   const kvx_store_key *prior, kvx_store_key *keys,
                                   size_t max_keys) {
    size_t pages, p, t;
    const kvx_store_key *prev = prior;
    if (!page_size || !keys || (num_tokens && !tokens)) return 0;
    pages = num_tokens / page_size;
    if (pages > max_keys) pages = max_keys;
    for (p = 0; p < pages; p++) {
        kvx__sha256 h;
        uint8_t le[4 * 64];
        kvx__sha256_init(&h);
        if (prev) kvx__sha256_update(&h, prev->bytes, 32);
        for (t = 0; t < page_size;) {
            size_t k, m = page_size - t < 64 ? page_size - t : 64;
            for (k = 0; k < m; k++) kvx__le_w32(le + 4 * k, tokens[p * page_size + t + k]);
            kvx__sha256_update(&h, le, 4 * m);
            t += m;
        }
        kvx__sha256_final(&h, keys[p].bytes);
        prev = &keys[p];
    }
    return pages;
}

KVX_API void kvx_store_key_hex(const kvx_store_key *k, char out[65]) {
    int i;
    for (i = 0; i < 32; i++) {
        out[2 * i] = kvx__store_hexd[k->bytes[i] >> 4];
        out[2 * i + 1] = kvx__store_hexd[k->bytes[i] & 15];
    }
    out[64] = 0;
}

KVX_API int kvx_store_key_parse(const char *hex, kvx_store_key *out) {
    int i;
    if (!hex || !out) return -1;
    for (i = 0; i < 32; i++) {
        int hi = kvx__store_hexval(hex[2 * i]), lo;
        if (hi < 0) return -1;
        lo = kvx__store_hexval(hex[2 * i + 1]);
        if (lo < 0) return -1;
        out->bytes[i] = (uint8_t)(hi << 4 | lo);
    }
    return hex[64] ? -1 : 0;
}

/* >>block store: header --------------------------------------------------------- */

static uint32_t kvx__store_header_crc(const uint8_t *h, uint32_t size) {
    static const uint8_t zero[4] = {0, 0, 0, 0};
    uint32_t c = kvx_crc32c(0, h, 16);
    c = kvx_crc32c(c, zero, 4);
    return kvx_crc32c(c, h + 20, size - 20);
}

KVX_API uint64_t kvx_store_block_item_len(const kvx_store_block_info *b, uint32_t i) {
    if (!b || !b->item_lens || i >= b->num_buffers) return 0;
    return kvx__le_r64(b->item_lens + 8 * (size_t)i);
}

KVX_API uint32_t kvx_store_block_buf_crc(const kvx_store_block_info *b, uint32_t i) {
    if (!b || !b->buf_crcs || i >= b->num_buffers) return 0;
    return kvx__le_r32(b->buf_crcs + 4 * (size_t)i);
}

KVX_API kvx_result kvx_store_header_parse(const void *buf, size_t len, kvx_store_block_info *o,
                                          char *why, size_t wl) {
    const uint8_t *p = (const uint8_t *)buf;
    uint64_t sum = 0;
    uint32_t i, crc;
    if (why && wl) why[0] = 0;
    if (!o) return KVX_ERR_INVALID_ARGUMENT;
    memset(o, 0, sizeof *o);
    if (!p || len < KVX_STORE_HEADER_FIXED)
        return kvx__why(KVX_ERR_CORRUPT, why, wl, "header truncated: %zu bytes, the fixed "
                              "part is %d", p ? len : 0, KVX_STORE_HEADER_FIXED);
    if (memcmp(p, "KVXBLOCK", 8))
        return kvx__why(KVX_ERR_CORRUPT, why, wl, "bad magic (not a kvx block)");
    o->version = kvx__le_r32(p + 8);
    if (o->version != 1 && o->version != 2)
        return kvx__why(KVX_ERR_CORRUPT, why, wl, "format version %u; this reader knows 1 and 2",
                              o->version);
    o->header_size = kvx__le_r32(p + 12);
    o->header_crc = kvx__le_r32(p + 16);
    o->num_buffers = kvx__le_r32(p + 68);
    if (o->header_size < KVX_STORE_HEADER_FIXED + 8 || o->header_size > KVX_STORE_HEADER_MAX ||
        o->header_size % 8)
        return kvx__why(KVX_ERR_CORRUPT, why, wl, "header_size %u is not a multiple of 8 in "
                              "[%d, %d]", o->header_size, KVX_STORE_HEADER_FIXED + 8,
                              KVX_STORE_HEADER_MAX);
    if (o->num_buffers == 0 ||
        o->num_buffers > (o->header_size - KVX_STORE_HEADER_FIXED) / (o->version == 2 ? 12 : 8))
        return kvx__why(KVX_ERR_CORRUPT, why, wl, "num_buffers %u does not fit header_size "
                              "%u (version %u)", o->num_buffers, o->header_size, o->version);
    if (len < o->header_size)
        return kvx__why(KVX_ERR_CORRUPT, why, wl, "header truncated: %zu of %u bytes", len,
                              o->header_size);
    crc = kvx__store_header_crc(p, o->header_size);
    if (crc != o->header_crc)
        return kvx__why(KVX_ERR_CORRUPT, why, wl, "header CRC32C mismatch: stored %08x, "
                              "computed %08x", o->header_crc, crc);
    o->flags = kvx__le_r32(p + 20);
    o->config_hash = kvx__le_r64(p + 24);
    memcpy(o->key.bytes, p + 32, 32);
    o->page_count = kvx__le_r32(p + 64);
    o->data_len = kvx__le_r64(p + 72);
    o->data_crc = kvx__le_r32(p + 80);
    o->page_size = kvx__le_r32(p + 84);
    o->kv_fingerprint = kvx__le_r64(p + 88);
    o->item_lens = p + KVX_STORE_HEADER_FIXED;
    if (o->version == 2) o->buf_crcs = o->item_lens + 8 * (size_t)o->num_buffers;
    if (o->flags)
        return kvx__why(KVX_ERR_CORRUPT, why, wl, "unknown flags %08x", o->flags);
    if (o->page_count == 0)
        return kvx__why(KVX_ERR_CORRUPT, why, wl, "page_count is 0");
    for (i = 0; i < o->num_buffers; i++) {
        uint64_t it = kvx_store_block_item_len(o, i);
        if (it == 0 || it > KVX__STORE_MAX_DATA - sum)
            return kvx__why(KVX_ERR_CORRUPT, why, wl, "item_len[%u] = %llu is 0 or makes the "
                                  "page too large", i, (unsigned long long)it);
        sum += it;
    }
    if (sum > KVX__STORE_MAX_DATA / o->page_count || o->data_len != sum * o->page_count)
        return kvx__why(KVX_ERR_CORRUPT, why, wl, "data_len %llu is not page_count %u x page "
                              "bytes %llu", (unsigned long long)o->data_len, o->page_count,
                              (unsigned long long)sum);
    return KVX_OK;
}

/* >>block store: object ------------------------------------------------------- */

typedef struct kvx__store_ent {
    kvx_store_key key;
    uint64_t size, ts;
    uint32_t prev, next; /* LRU list (head = most recent); 0 = none; entries are 1-based */
    uint32_t gen;        /* the namespace scan that last saw (or noted) it */
} kvx__store_ent;

typedef struct kvx__store_task {
    void (*fn)(void *arg, size_t i, void *scratch);
    void *arg;
    size_t n;
    size_t next;  /* atomic: next item to claim */
    int users;    /* threads working on it, under pool_mu */
    int listed;   /* under pool_mu */
    struct kvx__store_task *link;
} kvx__store_task;

typedef struct kvx__store_worker {
    struct kvx_store *s;
    void *scratch;
    pthread_t th;
} kvx__store_worker;

typedef struct kvx__store_scratch {
    struct kvx__store_scratch *next;
} kvx__store_scratch;

struct kvx_store {
    kvx_store_desc desc;   /* env applied; strings and layout owned */
    kvx_buffer *bufs;
    char *model, *dtype, *root;
    char ns[KVX__STORE_PATH]; /* <root>/<config-hash> */
    char cfg_hex[17];
    uint64_t cfg_hash, kv_fp, capacity;
    uint32_t nb, hdr_size;
    uint32_t fmt;          /* format version this store writes: 2 when buf_crc[] fits */
    uint64_t data_len, block_bytes;
    uint64_t *boff;        /* nb + 1: data offset of buffer b (boff[nb] = data_len) */
    uint32_t *x8n;         /* nb: kvx__store_x8n(item_len of buffer b) */
    uint8_t *hdr_template; /* this store's header with key and CRCs zero */
    size_t scratch_bytes;  /* header + iovecs + a one-page plan with nb spans */
    size_t plan_at;        /* offset of that plan in a scratch */
    int ns_fd;
    int remote;            /* the namespace is on a network or FUSE filesystem */
    char tmp_tag[48];      /* ".tmp.<pid>-<nonce>." */
    uint64_t tmp_seq;      /* atomic */
    uint64_t last_ts;      /* atomic */
    /* index, under mu */
    pthread_mutex_t mu;
    kvx__store_ent *ents;
    uint32_t ents_cap, ents_used, free_ent;
    uint32_t *slots;
    uint32_t slots_cap, count;
    uint32_t lru_head, lru_tail;
    uint64_t bytes, reserved;
    uint32_t scan_gen;
    int index_oom_logged;
    /* namespace scans (see CAPACITY) */
    pthread_mutex_t scan_run;  /* one scan at a time */
    pthread_mutex_t scan_mu;   /* the scanner's sleep */
    pthread_cond_t scan_cv;
    int scan_stop, scan_wake, scanner_on;
    pthread_t scanner;
    uint64_t scan_end_ns;      /* atomic: monotonic end of the last scan */
    uint64_t scan_gap_ns;      /* least time between a put-requested scan and the last one */
    uint64_t scan_interval_ns; /* 0 = no periodic scan */
    /* counters, atomics */
    kvx_store_stats st;
    /* worker pool */
    pthread_mutex_t pool_mu;
    pthread_cond_t pool_cv, pool_done;
    kvx__store_task *tasks;
    int pool_stop, nworkers;
    kvx__store_worker *workers;
    kvx__store_scratch *spare; /* callers' scratch buffers, under pool_mu */
};

#define KVX__STORE_ADD(p, v) __atomic_add_fetch((p), (v), __ATOMIC_RELAXED)
#define KVX__STORE_LOAD(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)

static void *kvx__store_alloc(const kvx_store *s, size_t n) {
    return kvx__alloc(&s->desc.allocator, n);
}
static void kvx__store_free(const kvx_store *s, void *p) { kvx__free(&s->desc.allocator, p); }

static void kvx__store_log(const kvx_store *s, kvx_log_level lvl, const char *fmt, ...)
    KVX_PRINTF(3, 4);
static void kvx__store_log(const kvx_store *s, kvx_log_level lvl, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    kvx__logv(&s->desc.logger, lvl, "kvx.store", 0, fmt, ap);
    va_end(ap);
}

/* Strictly increasing wall-clock ns: the "last use" stamp of blocks. */
static uint64_t kvx__store_stamp(kvx_store *s) {
    uint64_t now = kvx__store_wall_ns();
    uint64_t last = __atomic_load_n(&s->last_ts, __ATOMIC_RELAXED), v;
    do {
        v = now > last ? now : last + 1;
    } while (!__atomic_compare_exchange_n(&s->last_ts, &last, v, 0, __ATOMIC_RELAXED,
                                          __ATOMIC_RELAXED));
    return v;
}

static void kvx__store_times(struct timespec t[2], uint64_t ns) {
    t[0].tv_sec = (time_t)(ns / 1000000000ull);
    t[0].tv_nsec = (long)(ns % 1000000000ull);
    t[1] = t[0];
}

/* >>block store: index (key -> size, last use; LRU list), under s->mu -------- */

static uint32_t kvx__store_hash(const kvx_store_key *k) {
    uint64_t x = kvx__le_r64(k->bytes) ^ (kvx__le_r64(k->bytes + 8) * 0x9E3779B97F4A7C15ull);
    x ^= x >> 31; x *= 0xBF58476D1CE4E5B9ull; x ^= x >> 29; x *= 0x94D049BB133111EBull; x ^= x >> 32;
    return (uint32_t)x;
}

/* Slot holding key, or the empty slot where it would go. */
static uint32_t kvx__store_slot(const kvx_store *s, const kvx_store_key *k) {
    uint32_t mask = s->slots_cap - 1, h = kvx__store_hash(k) & mask;
    while (s->slots[h] && memcmp(s->ents[s->slots[h]].key.bytes, k->bytes, 32))
        h = (h + 1) & mask;
    return h;
}

static uint32_t kvx__store_find(const kvx_store *s, const kvx_store_key *k) {
    return s->slots_cap ? s->slots[kvx__store_slot(s, k)] : 0;
}

static int kvx__store_grow_slots(kvx_store *s) {
    uint32_t ncap = s->slots_cap ? s->slots_cap * 2 : 1024, i, *old = s->slots, ocap = s->slots_cap;
    uint32_t *ns;
    if (ncap < s->slots_cap) return -1;
    ns = (uint32_t *)kvx__store_alloc(s, (size_t)ncap * sizeof *ns);
    if (!ns) return -1;
    memset(ns, 0, (size_t)ncap * sizeof *ns);
    s->slots = ns;
    s->slots_cap = ncap;
    for (i = 0; i < ocap; i++)
        if (old[i]) s->slots[kvx__store_slot(s, &s->ents[old[i]].key)] = old[i];
    kvx__store_free(s, old);
    return 0;
}

static uint32_t kvx__store_new_ent(kvx_store *s) {
    uint32_t e;
    if (s->free_ent) {
        e = s->free_ent;
        s->free_ent = s->ents[e].next;
        return e;
    }
    if (s->ents_used + 1 >= s->ents_cap) {
        uint32_t ncap = s->ents_cap ? s->ents_cap * 2 : 1024;
        kvx__store_ent *ne;
        if (ncap < s->ents_cap) return 0;
        ne = (kvx__store_ent *)kvx__grow(&s->desc.allocator, s->ents,
                                         (size_t)s->ents_cap * sizeof *ne,
                                         (size_t)ncap * sizeof *ne);
        if (!ne) return 0;
        s->ents = ne;
        s->ents_cap = ncap;
        if (!s->ents_used) s->ents_used = 1; /* entry 0 means "none" */
    }
    return s->ents_used++;
}

static void kvx__store_lru_unlink(kvx_store *s, uint32_t e) {
    kvx__store_ent *x = &s->ents[e];
    if (x->prev) s->ents[x->prev].next = x->next;
    else s->lru_head = x->next;
    if (x->next) s->ents[x->next].prev = x->prev;
    else s->lru_tail = x->prev;
    x->prev = x->next = 0;
}

static void kvx__store_lru_front(kvx_store *s, uint32_t e) {
    kvx__store_ent *x = &s->ents[e];
    x->prev = 0;
    x->next = s->lru_head;
    if (s->lru_head) s->ents[s->lru_head].prev = e;
    s->lru_head = e;
    if (!s->lru_tail) s->lru_tail = e;
}

/* Records that key has a block of size bytes used at ts. front: make it
   most recently used (a put or a get); otherwise only a key not yet known
   is added (seen by exists). */
static void kvx__store_idx_note(kvx_store *s, const kvx_store_key *k, uint64_t size, uint64_t ts,
                                int front) {
    uint32_t e = kvx__store_find(s, k);
    if (e) {
        s->bytes += size - s->ents[e].size;
        s->ents[e].size = size;
        s->ents[e].gen = s->scan_gen;
        if (!front) return;
        s->ents[e].ts = ts;
        kvx__store_lru_unlink(s, e);
        kvx__store_lru_front(s, e);
        return;
    }
    if ((s->count + 1) * 2 > s->slots_cap && kvx__store_grow_slots(s)) goto oom;
    if (!(e = kvx__store_new_ent(s))) goto oom;
    s->ents[e].key = *k;
    s->ents[e].size = size;
    s->ents[e].ts = ts;
    s->ents[e].gen = s->scan_gen;
    s->slots[kvx__store_slot(s, k)] = e;
    s->count++;
    s->bytes += size;
    kvx__store_lru_front(s, e);
    return;
oom:
    if (!s->index_oom_logged++)
        kvx__store_log(s, KVX_LOG_ERROR, "out of memory growing the index of %s: new blocks are not "
                       "counted against the capacity", s->ns);
}

/* Removes key from the index; returns 1 when it was there. */
static int kvx__store_idx_remove(kvx_store *s, const kvx_store_key *k) {
    uint32_t mask, i, j, e;
    if (!s->slots_cap) return 0;
    mask = s->slots_cap - 1;
    i = kvx__store_slot(s, k);
    e = s->slots[i];
    if (!e) return 0;
    s->slots[i] = 0;
    /* backward-shift deletion keeps linear probing chains unbroken */
    for (j = (i + 1) & mask; s->slots[j]; j = (j + 1) & mask) {
        uint32_t home = kvx__store_hash(&s->ents[s->slots[j]].key) & mask;
        int between = i <= j ? (home > i && home <= j) : (home > i || home <= j);
        if (!between) {
            s->slots[i] = s->slots[j];
            s->slots[j] = 0;
            i = j;
        }
    }
    kvx__store_lru_unlink(s, e);
    s->bytes -= s->ents[e].size;
    s->count--;
    s->ents[e].next = s->free_ent;
    s->free_ent = e;
    return 1;
}

/* >>block store: worker pool ---------------------------------------------------- */
/* A batch is a task of n items (THREAD SAFETY); several batches, from
   several caller threads, may be queued at once. */

static void kvx__store_task_run(kvx__store_task *t, void *scratch) {
    size_t i;
    while ((i = __atomic_fetch_add(&t->next, 1, __ATOMIC_RELAXED)) < t->n) t->fn(t->arg, i, scratch);
}

static void kvx__store_task_unlist(kvx_store *s, kvx__store_task *t) {
    kvx__store_task **pp;
    if (!t->listed) return;
    for (pp = &s->tasks; *pp; pp = &(*pp)->link)
        if (*pp == t) { *pp = t->link; break; }
    t->listed = 0;
}

static void *kvx__store_worker_main(void *arg) {
    kvx__store_worker *w = (kvx__store_worker *)arg;
    kvx_store *s = w->s;
    pthread_mutex_lock(&s->pool_mu);
    for (;;) {
        kvx__store_task *t;
        while (!s->pool_stop && !s->tasks) pthread_cond_wait(&s->pool_cv, &s->pool_mu);
        t = s->tasks;
        if (!t) break;
        t->users++;
        pthread_mutex_unlock(&s->pool_mu);
        kvx__store_task_run(t, w->scratch);
        pthread_mutex_lock(&s->pool_mu);
        kvx__store_task_unlist(s, t); /* every item is claimed */
        if (--t->users == 0) pthread_cond_broadcast(&s->pool_done);
    }
    pthread_mutex_unlock(&s->pool_mu);
    return NULL;
}

static void *kvx__store_scratch_take(kvx_store *s) {
    kvx__store_scratch *sc;
    pthread_mutex_lock(&s->pool_mu);
    sc = s->spare;
    if (sc) s->spare = sc->next;
    pthread_mutex_unlock(&s->pool_mu);
    return sc ? (void *)sc : kvx__store_alloc(s, s->scratch_bytes);
}

static void kvx__store_scratch_give(kvx_store *s, void *p) {
    kvx__store_scratch *sc = (kvx__store_scratch *)p;
    if (!p) return;
    pthread_mutex_lock(&s->pool_mu);
    sc->next = s->spare;
    s->spare = sc;
    pthread_mutex_unlock(&s->pool_mu);
}

/* Runs fn(arg, i, scratch) for i < n on the caller and the workers; returns
   when all are done. -1 when no thread could run them (out of memory). */
static int kvx__store_parallel(kvx_store *s, size_t n, void (*fn)(void *, size_t, void *),
                               void *arg) {
    kvx__store_task t;
    void *scratch;
    if (!n) return 0;
    memset(&t, 0, sizeof t);
    t.fn = fn;
    t.arg = arg;
    t.n = n;
    scratch = kvx__store_scratch_take(s);
    if (!scratch && !s->nworkers) return -1;
    if (s->nworkers && (n > 1 || !scratch)) {
        pthread_mutex_lock(&s->pool_mu);
        t.listed = 1;
        t.link = s->tasks;
        s->tasks = &t;
        if (n - 1 >= (size_t)s->nworkers || !scratch) pthread_cond_broadcast(&s->pool_cv);
        else {
            size_t k;
            for (k = 0; k + 1 < n; k++) pthread_cond_signal(&s->pool_cv);
        }
        pthread_mutex_unlock(&s->pool_mu);
    }
    if (scratch) kvx__store_task_run(&t, scratch);
    pthread_mutex_lock(&s->pool_mu);
    /* without scratch the caller only waits for the workers to take it all */
    while (!scratch && (t.users || __atomic_load_n(&t.next, __ATOMIC_RELAXED) < n))
        pthread_cond_wait(&s->pool_done, &s->pool_mu);
    kvx__store_task_unlist(s, &t);
    while (t.users) pthread_cond_wait(&s->pool_done, &s->pool_mu);
    pthread_mutex_unlock(&s->pool_mu);
    kvx__store_scratch_give(s, scratch);
    return 0;
}

/* >>block store: capacity --------------------------------------------------------- */

static void kvx__store_scan_request(kvx_store *s);

/* Bytes this process counts against the capacity. */
static uint64_t kvx__store_used(const kvx_store *s) { return s->bytes + s->reserved; }

/* fstatat (name NULL: fstat of dirfd) with attributes fetched from the
   server where the filesystem can: on NFS, FUSE (GlusterFS), CephFS and
   Lustre statx with AT_STATX_FORCE_SYNC asks the server instead of the
   client's attribute cache, which may still hold another version's size.
   Fills mode, ino, dev, size, mtime and ctime. 0 or -1 (errno). */
static int kvx__store_stat_sync(int dirfd, const char *name, struct stat *st) {
#if defined(STATX_CTIME) && defined(AT_STATX_FORCE_SYNC)
    struct statx x;
    int fl = name ? AT_SYMLINK_NOFOLLOW : AT_EMPTY_PATH;
    unsigned mask = STATX_TYPE | STATX_INO | STATX_SIZE | STATX_MTIME | STATX_CTIME;
    if (!statx(dirfd, name ? name : "", fl | AT_STATX_FORCE_SYNC, mask, &x)) {
        memset(st, 0, sizeof *st);
        st->st_mode = x.stx_mode;
        st->st_ino = (ino_t)x.stx_ino;
        st->st_dev = makedev(x.stx_dev_major, x.stx_dev_minor);
        st->st_size = (off_t)x.stx_size;
        st->st_mtim.tv_sec = (time_t)x.stx_mtime.tv_sec;
        st->st_mtim.tv_nsec = (long)x.stx_mtime.tv_nsec;
        st->st_ctim.tv_sec = (time_t)x.stx_ctime.tv_sec;
        st->st_ctim.tv_nsec = (long)x.stx_ctime.tv_nsec;
        return 0;
    }
    if (errno != ENOSYS && errno != EINVAL) return -1;
#endif
    return name ? fstatat(dirfd, name, st, AT_SYMLINK_NOFOLLOW) : fstat(dirfd, st);
}

/* The mtime of dirfd/name from the server (kvx__store_stat_sync). 0 or -1. */
static int kvx__store_mtime_fresh(int dirfd, const char *name, uint64_t *mt) {
    struct stat st;
    if (kvx__store_stat_sync(dirfd, name, &st)) return -1;
    *mt = kvx__store_ts_ns(&st.st_mtim);
    return 0;
}

/* Looks at an evicted block's file again before it goes (CAPACITY), with
   the server's attributes: on GlusterFS a cached name may lead to a file
   another client recycled since, whose mtime is then recent, so it stays.
   0: as the index knew it (evict it); 1: used since by another process
   (back into the index as recently used); 2: gone. */
static int kvx__store_victim_check(kvx_store *s, const kvx__store_ent *v) {
    char rel[KVX__STORE_REL];
    uint64_t mt;
    kvx__store_relpath(rel, &v->key);
    if (kvx__store_mtime_fresh(s->ns_fd, rel, &mt)) return errno == ENOENT || errno == ESTALE ? 2 : 0;
    if (mt <= v->ts) return 0;
    pthread_mutex_lock(&s->mu);
    kvx__store_idx_note(s, &v->key, v->size, mt, 1);
    pthread_mutex_unlock(&s->mu);
    return 1;
}

/* Reserves need bytes under the capacity, evicting least recently used
   blocks (each checked by kvx__store_victim_check) until they fit. With
   reuse, the first victim is not unlinked but handed back in *reuse
   (*have_reuse = 1), to be overwritten in place (CAPACITY says why).
   KVX_ERR_NO_SPACE when nothing is left to evict (the block is larger than
   the capacity, or the rest is reserved by writes in flight). */
static kvx_result kvx__store_reserve(kvx_store *s, uint64_t need, kvx_store_key *reuse,
                                     int *have_reuse) {
    kvx__store_ent victims[KVX__STORE_VICTIMS];
    int ok = 0;
    if (have_reuse) *have_reuse = 0;
    for (;;) {
        int nv = 0, kept = 0, i;
        uint64_t add;
        pthread_mutex_lock(&s->mu);
        add = ok ? 0 : need;
        while (kvx__store_used(s) + add > s->capacity && s->lru_tail && nv < KVX__STORE_VICTIMS) {
            victims[nv] = s->ents[s->lru_tail];
            kvx__store_idx_remove(s, &victims[nv++].key);
        }
        if (!ok && kvx__store_used(s) + need <= s->capacity) {
            s->reserved += need;
            ok = 1;
        }
        pthread_mutex_unlock(&s->mu);
        if (!nv) {
            if (ok) return KVX_OK;
            if (have_reuse && *have_reuse) { /* evicted, but nothing will reuse it */
                char rel[KVX__STORE_REL];
                kvx__store_relpath(rel, reuse);
                (void)unlinkat(s->ns_fd, rel, 0);
                *have_reuse = 0;
            }
            return KVX_ERR_NO_SPACE;
        }
        kvx__store_scan_request(s); /* this view is full: others' blocks may be missing from it */
        for (i = 0; i < nv; i++) {
            char rel[KVX__STORE_REL];
            int c = kvx__store_victim_check(s, &victims[i]);
            if (c == 1) { kept++; continue; }
            if (c == 2) continue;
            KVX__STORE_ADD(&s->st.evictions, 1);
            if (reuse && !*have_reuse) {
                *reuse = victims[i].key;
                *have_reuse = 1;
                continue;
            }
            kvx__store_relpath(rel, &victims[i].key);
            if (unlinkat(s->ns_fd, rel, 0) && errno != ENOENT)
                kvx__store_log(s, KVX_LOG_WARN, "cannot evict %s/%s: %s", s->ns, rel, strerror(errno));
        }
        if (ok && !kept) return KVX_OK;
    }
}

static void kvx__store_release(kvx_store *s, uint64_t need) {
    pthread_mutex_lock(&s->mu);
    s->reserved -= need;
    pthread_mutex_unlock(&s->mu);
}

/* >>block store: batches -------------------------------------------------------------- */

typedef struct kvx__store_batch {
    kvx_store *s;
    const kvx_store_key *keys;
    const int32_t *pages;
    kvx_result *results;
    pthread_mutex_t mu;
    size_t stop;   /* atomic: lowest failed index, n when none */
    size_t failed; /* under mu */
    kvx_result err; /* of the lowest failed index, under mu */
    char why[KVX_ERROR_MAX];
} kvx__store_batch;

static void kvx__store_fail(kvx__store_batch *b, size_t i, kvx_result r, const char *fmt, ...)
    KVX_PRINTF(4, 5);
static void kvx__store_fail(kvx__store_batch *b, size_t i, kvx_result r, const char *fmt, ...) {
    va_list ap;
    if (b->results) b->results[i] = r;
    pthread_mutex_lock(&b->mu);
    b->failed++;
    if (i < __atomic_load_n(&b->stop, __ATOMIC_RELAXED)) {
        __atomic_store_n(&b->stop, i, __ATOMIC_RELEASE);
        b->err = r;
        va_start(ap, fmt);
        vsnprintf(b->why, sizeof b->why, fmt, ap);
        va_end(ap);
    }
    pthread_mutex_unlock(&b->mu);
}

/* Runs fn over the n keys as batch b; -1 when no thread could. */
static int kvx__store_batch_run(kvx__store_batch *b, kvx_store *s, const kvx_store_key *keys,
                                const int32_t *pages, size_t n, kvx_result *results,
                                void (*fn)(void *, size_t, void *)) {
    int rc;
    memset(b, 0, sizeof *b);
    b->s = s;
    b->keys = keys;
    b->pages = pages;
    b->results = results;
    b->stop = n;
    pthread_mutex_init(&b->mu, NULL);
    rc = kvx__store_parallel(s, n, fn, b);
    pthread_mutex_destroy(&b->mu);
    return rc;
}

/* Fills iov (at most KVX__STORE_IOV) with the pool memory of the next
   bytes of plan p from the cursor (span *k, *in bytes into it), up to file
   offset end (data at header_size); advances the cursor. Returns the count
   and the bytes in *len. */
static int kvx__store_iov_fill(const kvx_store *s, const kvx_plan *p, size_t *k, uint64_t *in,
                               uint64_t end, struct iovec *iov, uint64_t *len) {
    const kvx_layout *l = &s->desc.layout;
    int n = 0;
    *len = 0;
    while (*k < p->count && n < KVX__STORE_IOV) {
        const kvx_span *sp = &p->spans[*k];
        uint64_t at = s->hdr_size + sp->dst_offset + *in, take = sp->length - *in;
        if (at >= end) break;
        if (take > end - at) take = end - at;
        iov[n].iov_base = (char *)kvx_span_addr(l, sp, 0) + *in;
        iov[n++].iov_len = (size_t)take;
        *len += take;
        *in += take;
        if (*in == sp->length) { (*k)++; *in = 0; }
    }
    return n;
}

/* Folds the pool bytes of plan p from the cursor (span k, in bytes into
   it) up to file offset end into the CRC of each span's buffer, tb[4 b]. */
static void kvx__store_crc_bufs(const kvx_store *s, const kvx_plan *p, size_t k, uint64_t in,
                                uint64_t end, uint8_t *tb) {
    for (; k < p->count; k++, in = 0) {
        const kvx_span *sp = &p->spans[k];
        uint64_t at = s->hdr_size + sp->dst_offset + in, take = sp->length - in;
        uint8_t *t = tb + 4 * (size_t)sp->buffer;
        if (at >= end) break;
        if (take > end - at) take = end - at;
        kvx__le_w32(t, kvx__store_crc32c(kvx__le_r32(t),
                                         (const char *)kvx_span_addr(&s->desc.layout, sp, 0) + in,
                                         (size_t)take));
    }
}

/* Moves one page between the pool and the file (data at header_size, laid
   out as the packed side of a one-page gather plan), in groups that end at
   file offsets that are multiples of KVX__STORE_GROUP (so the page cache
   can hold a group as one large folio: fewer folios to look up and mark
   dirty than groups starting at header_size, 4 KiB past an alignment),
   and returns the CRC32C of the bytes as they are in the pool, computed
   right after each group's I/O while the group is in cache (so the data
   crosses memory once, in the kernel's copy). With tb (a version 2
   header's buf_crc[], zero on entry) each buffer's CRC32C goes there too
   and *crc is their combination. 0, an errno, or -1 (short file). The plan lives in the scratch with room for every buffer's span,
   so building it never allocates. */
static int kvx__store_data_io(kvx_store *s, int fd, int32_t page, void *scratch, int write,
                              uint8_t *tb, uint32_t *crc) {
    struct iovec *iov = (struct iovec *)(void *)((char *)scratch + s->hdr_size);
    kvx_plan *p = (kvx_plan *)(void *)((char *)scratch + s->plan_at);
    size_t k = 0;
    uint64_t in = 0;
    uint32_t c = 0;
    memset(p, 0, sizeof *p);
    p->spans = (kvx_span *)(void *)(p + 1);
    p->capacity = s->nb;
    if (kvx_plan_gather(p, &s->desc.layout, &page, 1) != KVX_OK) return EINVAL; /* pages were checked */
    while (k < p->count) {
        size_t k0 = k, m;
        uint64_t in0 = in, at = s->hdr_size + p->spans[k].dst_offset + in, len;
        uint64_t end = (at / KVX__STORE_GROUP + 1) * KVX__STORE_GROUP;
        int n = kvx__store_iov_fill(s, p, &k, &in, end, iov, &len), err, i;
        err = kvx__piov_full(fd, iov, n, at, len, write);
        if (err) return err;
        /* kvx__piov_full may have advanced iov: walk the group again */
        if (tb) {
            kvx__store_crc_bufs(s, p, k0, in0, at + len, tb);
            continue;
        }
        m = (size_t)kvx__store_iov_fill(s, p, &k0, &in0, at + len, iov, &len);
        for (i = 0; i < (int)m; i++) c = kvx__store_crc32c(c, iov[i].iov_base, iov[i].iov_len);
    }
    if (tb)
        for (k = 0; k < s->nb; k++)
            c = kvx__store_crc_combine(c, kvx__le_r32(tb + 4 * k), s->x8n[k]);
    *crc = c;
    return 0;
}

/* The header h (hdr_size bytes) is a valid header of this store for key k. */
static int kvx__store_check_header(const kvx_store *s, const uint8_t *h, const kvx_store_key *k,
                                   char *why, size_t wl) {
    kvx_store_block_info in;
    char a[65], b[65];
    uint32_t tbl = KVX_STORE_HEADER_FIXED + 8 * s->nb, tend;
    if (kvx_store_header_parse(h, s->hdr_size, &in, why, wl) != KVX_OK) return -1;
    tend = in.version == 2 ? tbl + 4 * s->nb : tbl; /* past buf_crc[], then zero padding */
    if (in.config_hash != s->cfg_hash) {
        kvx__set_why(why, wl, "written for configuration %016llx, this store is %s",
                       (unsigned long long)in.config_hash, s->cfg_hex);
        return -1;
    }
    if (k && memcmp(in.key.bytes, k->bytes, 32)) {
        kvx_store_key_hex(&in.key, a);
        kvx_store_key_hex(k, b);
        kvx__set_why(why, wl, "holds key %.16s..., not %.16s...", a, b);
        return -1;
    }
    if (in.header_size != s->hdr_size || in.page_count != 1 || in.num_buffers != s->nb ||
        in.data_len != s->data_len || memcmp(h + 84, s->hdr_template + 84, tbl - 84) ||
        memcmp(h + tend, s->hdr_template + tend, s->hdr_size - tend)) {
        kvx__set_why(why, wl, "its page layout (%u buffers, %llu bytes, header %u) is not this "
                       "store's (%u buffers, %llu bytes, header %u)", in.num_buffers,
                       (unsigned long long)in.data_len, in.header_size, s->nb,
                       (unsigned long long)s->data_len, s->hdr_size);
        return -1;
    }
    return 0;
}

/* The name no longer refers to the file examined (seen), or that file has
   changed since (size, ctime: a rename or a write by another process),
   with attributes fetched from the server where the filesystem can. */
static int kvx__store_replaced(const kvx_store *s, const char *rel, const struct stat *seen) {
    struct stat now;
    if (kvx__store_stat_sync(s->ns_fd, rel, &now)) return errno == ENOENT || errno == ESTALE;
    return now.st_ino != seen->st_ino || now.st_dev != seen->st_dev ||
           now.st_size != seen->st_size || now.st_ctim.tv_sec != seen->st_ctim.tv_sec ||
           now.st_ctim.tv_nsec != seen->st_ctim.tv_nsec;
}

/* CRC32C of len bytes at off in fd, read through buf (cap bytes) into *crc:
   0, or kvx__pio's answer (-1 a short read, else the errno). */
static int kvx__store_crc_file(int fd, uint8_t *buf, size_t cap, uint64_t off, uint64_t len,
                               uint32_t *crc) {
    int err;
    *crc = 0;
    while (len) {
        size_t n = len < cap ? (size_t)len : cap;
        if ((err = kvx__pio(fd, buf, n, off, 0)) != 0) return err;
        *crc = kvx__store_crc32c(*crc, buf, n);
        off += n;
        len -= n;
    }
    return 0;
}

/* CRC32C of the data of the block open at fd, whose parsed header is in,
   read through buf (cap bytes, not holding the header): the whole data's
   into *crc and, in version 2, each buffer's checked against buf_crc[]
   (*bad_buf: the first that differs, else -1). 0, or kvx__store_crc_file's
   answer. */
static int kvx__store_crc_data(int fd, uint8_t *buf, size_t cap, const kvx_store_block_info *in,
                               uint32_t *crc, int64_t *bad_buf) {
    uint64_t off = in->header_size, last = 0;
    uint32_t i, c = 0, cb, f = 0;
    int err;
    *bad_buf = -1;
    if (!in->buf_crcs) return kvx__store_crc_file(fd, buf, cap, off, in->data_len, crc);
    for (i = 0; i < in->num_buffers; i++) {
        uint64_t len = kvx_store_block_item_len(in, i) * in->page_count;
        if ((err = kvx__store_crc_file(fd, buf, cap, off, len, &cb)) != 0) return err;
        if (cb != kvx_store_block_buf_crc(in, i) && *bad_buf < 0) *bad_buf = i;
        if (len != last) f = kvx__store_x8n(last = len);
        c = kvx__store_crc_combine(c, cb, f);
        off += len;
    }
    *crc = c;
    return 0;
}

/* Reads the whole block open at fd again (header, data, CRCs) into a
   private buffer. 0 an intact block of key k; 2 an intact block of another
   key (*other): a file reached through a stale name (see
   kvx__store_victim_check) or misplaced; 1 corrupt with the evidence in
   why (the server says the file has another size than a block, or a
   complete read has a bad header, another configuration or layout, or a
   data CRC mismatch); -1 not sure (a short read or an I/O error: possibly
   caching, not evidence). */
static int kvx__store_recheck(kvx_store *s, int fd, const kvx_store_key *k, kvx_store_key *other,
                              char *why, size_t wl) {
    struct stat st;
    kvx_store_key hk;
    kvx_store_block_info in;
    uint8_t *buf, *h;
    size_t cap = KVX__STORE_GROUP;
    uint32_t crc = 0;
    int64_t bad_buf = -1;
    int r = 0, err;
    if (kvx__store_stat_sync(fd, NULL, &st) || !S_ISREG(st.st_mode)) {
        kvx__set_why(why, wl, "cannot stat it: %s", strerror(errno));
        return -1;
    }
    if ((uint64_t)st.st_size != s->block_bytes) {
        kvx__set_why(why, wl, "the server says it is %llu bytes, a block is %llu (torn, truncated "
                     "or foreign)", (unsigned long long)st.st_size,
                     (unsigned long long)s->block_bytes);
        return 1;
    }
    if (!(buf = (uint8_t *)kvx__store_alloc(s, cap + s->hdr_size))) {
        kvx__set_why(why, wl, "out of memory to check it");
        return -1;
    }
    h = buf + cap;
    if ((err = kvx__pio(fd, h, s->hdr_size, 0, 0)) != 0) {
        kvx__set_why(why, wl, "header: %s", err < 0 ? "short read" : strerror(err));
        r = -1;
    } else if (kvx__store_check_header(s, h, NULL, why, wl) ||
               kvx_store_header_parse(h, s->hdr_size, &in, NULL, 0) != KVX_OK) {
        r = 1;
    } else {
        memcpy(hk.bytes, h + 32, 32);
        if ((err = kvx__store_crc_data(fd, buf, cap, &in, &crc, &bad_buf)) != 0) {
            kvx__set_why(why, wl, "data: %s", err < 0 ? "short read" : strerror(err));
            r = -1;
        } else if (crc != in.data_crc) {
            kvx__set_why(why, wl, "data CRC32C mismatch: stored %08x, read %08x", in.data_crc, crc);
            r = 1;
        } else if (bad_buf >= 0) {
            kvx__set_why(why, wl, "buffer %lld's CRC32C mismatch: stored %08x", (long long)bad_buf,
                         kvx_store_block_buf_crc(&in, (uint32_t)bad_buf));
            r = 1;
        } else if (k && memcmp(hk.bytes, k->bytes, 32)) {
            *other = hk;
            r = 2;
        }
    }
    kvx__store_free(s, buf);
    return r;
}

/* A block that looked unusable (reason) when this process read the file
   `seen` at dirfd/name: no evidence on a shared filesystem (why, and what
   is done: SHARED FILESYSTEMS). Whatever file the name leads to now is
   moved to a private temporary name and examined there; nothing there, or
   not `seen`, or not proven corrupt by kvx__store_recheck: a miss, put back
   (an intact block of another key to that key's name). Proven corrupt:
   counted in stats.corrupt, logged at warn, removed. While it is away its
   key is a miss for everyone (one block, briefly). 1 when taken away. */
static int kvx__store_bad(kvx_store *s, int dirfd, const char *name, const char *shown,
                          const kvx_store_key *k, const struct stat *seen, const char *reason) {
    char q[KVX__STORE_REL + 64], why[256], orel[KVX__STORE_REL];
    struct stat now;
    kvx_store_key other;
    int fd, v = -1, removed = 0, back;
    if (s->remote) {
        /* maybe another node's block in the making (SHARED FILESYSTEMS) */
        uint64_t mt;
        if (kvx__store_mtime_fresh(dirfd, name, &mt)) return 0;
        if (mt + KVX__STORE_SETTLE_NS > kvx__store_wall_ns()) {
            kvx__store_log(s, KVX_LOG_DEBUG, "%s/%s looked unusable (%s) and was written in the "
                           "last %d s; a miss", s->ns, shown, reason,
                           (int)(KVX__STORE_SETTLE_NS / 1000000000ull));
            return 0;
        }
    }
    snprintf(q, sizeof q, "%s%sq%llu", name, s->tmp_tag,
             (unsigned long long)__atomic_add_fetch(&s->tmp_seq, 1, __ATOMIC_RELAXED));
    why[0] = 0;
    if (renameat(dirfd, name, dirfd, q)) {
        kvx__store_log(s, KVX_LOG_DEBUG, "%s/%s looked unusable (%s) and is gone now; a miss",
                       s->ns, shown, reason);
        return 0;
    }
    fd = openat(dirfd, q, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd >= 0 && !kvx__store_stat_sync(fd, NULL, &now) && S_ISREG(now.st_mode) && seen &&
        (now.st_ino != seen->st_ino || now.st_dev != seen->st_dev)) {
        v = 3; /* another file: not ours to judge */
    } else if (fd >= 0) {
        v = kvx__store_recheck(s, fd, k, &other, why, sizeof why);
    } else if (errno == ELOOP) {
        snprintf(why, sizeof why, "a symbolic link, not a block file");
        v = 1;
    }
    if (fd >= 0) close(fd);
    if (v == 1) {
        /* removed once unchanged for KVX__STORE_TMP_TTL_NS: until then it may
           be another writer's block in the making (GlusterFS renames by file
           id), left under its temporary name for a later open or scan */
        uint64_t mt;
        removed = 1;
        if (!kvx__store_mtime_fresh(dirfd, q, &mt) &&
            mt + KVX__STORE_TMP_TTL_NS < kvx__store_wall_ns())
            (void)unlinkat(dirfd, q, 0);
        else
            removed = 2;
    } else {
        if (v == 2) {
            kvx__store_relpath(orel, &other);
            back = renameat(dirfd, q, s->ns_fd, orel);
        } else {
            back = renameat(dirfd, q, dirfd, name);
        }
        if (back) (void)unlinkat(dirfd, q, 0); /* cannot put it back: do not leak it */
    }
    if (!removed) {
        kvx__store_log(s, KVX_LOG_DEBUG, "%s/%s looked unusable (%s) but %s; a miss", s->ns, shown,
                       reason,
                       v == 3 ? "the name now holds another file; left in place" :
                       v == 2 ? "it is an intact block of another key; moved to that key's name" :
                       v == 0 ? "it is intact when read again; put back" :
                                "nothing proves it is corrupt; put back");
        return 0;
    }
    if (k) {
        pthread_mutex_lock(&s->mu);
        kvx__store_idx_remove(s, k);
        pthread_mutex_unlock(&s->mu);
    }
    KVX__STORE_ADD(&s->st.corrupt, 1);
    kvx__store_log(s, KVX_LOG_WARN, "block %s/%s is corrupt: %s (first seen: %s); %s, a miss",
                   s->ns, shown, why, reason,
                   removed == 1 ? "removed" : "moved out of the way (removed once unchanged for 10 "
                                              "minutes)");
    return 1;
}

/* A block read for key i of batch b (at rel, seen as st when opened)
   looked unusable (why): a miss, or corrupt when kvx__store_bad proves it. */
static void kvx__store_get_bad(kvx_store *s, kvx__store_batch *b, size_t i, const char *rel,
                               const struct stat *st, const char *why) {
    KVX__STORE_ADD(&s->st.misses, 1);
    if (kvx__store_replaced(s, rel, st)) {
        /* evicted (and its file reused) or replaced while we read it: a miss */
        kvx__store_log(s, KVX_LOG_DEBUG, "%s/%s changed while being read (%s); a miss", s->ns, rel, why);
        kvx__store_fail(b, i, KVX_ERR_NOT_FOUND, "%s changed while being read", rel);
        return;
    }
    if (kvx__store_bad(s, s->ns_fd, rel, rel, &b->keys[i], st, why))
        kvx__store_fail(b, i, KVX_ERR_CORRUPT, "%s: %s", rel, why);
    else
        kvx__store_fail(b, i, KVX_ERR_NOT_FOUND, "%s looked unusable (%s), not confirmed", rel, why);
}

/* Reading key i's block at rel failed with errno err (opening it: a
   missing file is a miss, as a block removed while being read). */
static void kvx__store_get_ioerr(kvx_store *s, kvx__store_batch *b, size_t i, const char *rel,
                                 int err, int opening) {
    KVX__STORE_ADD(&s->st.misses, 1);
    if (err == ESTALE || err == ENOENT || (opening && err == ENOTDIR)) { /* (NFS, FUSE) */
        kvx__store_fail(b, i, KVX_ERR_NOT_FOUND, opening ? "%s is not stored" :
                        "%s was removed while being read", rel);
        return;
    }
    KVX__STORE_ADD(&s->st.errors, 1);
    kvx__store_fail(b, i, kvx__errno_result(err), "cannot read %s/%s: %s", s->ns, rel, strerror(err));
}

/* Key k's block, open at fd, was read: it becomes most recently used. */
static void kvx__store_touch(kvx_store *s, const kvx_store_key *k, int fd) {
    struct timespec t[2];
    uint64_t ts = kvx__store_stamp(s);
    uint32_t e;
    kvx__store_times(t, ts);
    (void)futimens(fd, t); /* last use; a read-only store still serves */
    /* only a key still indexed becomes recent: one evicted while it was read
       must not come back as an entry without a file */
    pthread_mutex_lock(&s->mu);
    e = kvx__store_find(s, k);
    if (e) {
        s->ents[e].ts = ts;
        kvx__store_lru_unlink(s, e);
        kvx__store_lru_front(s, e);
    }
    pthread_mutex_unlock(&s->mu);
    KVX__STORE_ADD(&s->st.bytes_read, s->block_bytes);
}

static void kvx__store_get_item(void *arg, size_t i, void *scratch) {
    kvx__store_batch *b = (kvx__store_batch *)arg;
    kvx_store *s = b->s;
    const kvx_store_key *k = &b->keys[i];
    uint8_t *hdr = (uint8_t *)scratch;
    char rel[KVX__STORE_REL], why[256];
    struct stat st;
    uint32_t crc = 0;
    int fd, err;
    if (i > __atomic_load_n(&b->stop, __ATOMIC_ACQUIRE)) return; /* past a miss: not needed */
    kvx__store_relpath(rel, k);
    fd = openat(s->ns_fd, rel, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) {
        kvx__store_get_ioerr(s, b, i, rel, errno, 1);
        return;
    }
    if (fstat(fd, &st)) { err = errno; close(fd); goto io_error; }
    if (!S_ISREG(st.st_mode) || (uint64_t)st.st_size != s->block_bytes) {
        snprintf(why, sizeof why, "file is %lld bytes, a block is %llu (torn, truncated or foreign)",
                 (long long)st.st_size, (unsigned long long)s->block_bytes);
        goto bad;
    }
    err = kvx__pio(fd, hdr, s->hdr_size, 0, 0);
    if (err < 0) { snprintf(why, sizeof why, "header truncated"); goto bad; }
    if (err) { close(fd); goto io_error; }
    if (kvx__store_check_header(s, hdr, k, why, sizeof why)) goto bad;
    err = kvx__store_data_io(s, fd, b->pages[i], scratch, 0, NULL, &crc);
    if (err < 0) { snprintf(why, sizeof why, "data truncated"); goto bad; }
    if (err) { close(fd); goto io_error; }
    if (crc != kvx__le_r32(hdr + 80)) {
        snprintf(why, sizeof why, "data CRC32C mismatch: stored %08x, read %08x",
                 kvx__le_r32(hdr + 80), crc);
        goto bad;
    }
    kvx__store_touch(s, k, fd);
    close(fd);
    return;
bad:
    close(fd);
    kvx__store_get_bad(s, b, i, rel, &st, why);
    return;
io_error:
    kvx__store_get_ioerr(s, b, i, rel, err, 0);
}

static void kvx__store_fsync_dir(int dirfd, const char *rel) {
    int fd = openat(dirfd, rel, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) { (void)fsync(fd); close(fd); }
}

/* Creates the fan-out directory of rel ("ab/...") again if it went away. */
static void kvx__store_mkdirs(kvx_store *s, const char *rel) {
    char d[4];
    int made = 0;
    memcpy(d, rel, 2);
    d[2] = 0;
    if (!kvx__mkdirat(s->ns_fd, d, 0755, &made) && made && s->desc.fsync)
        kvx__store_fsync_dir(s->ns_fd, ".");
}

/* Takes the evicted block v for the block about to be written at rel:
   renames it to tmp (atomic: if another process evicted or took it first,
   the rename fails and a new file is made) and opens it for overwriting.
   Every byte of a block is rewritten and its size does not change, so
   nothing of the old block survives; until the final rename the file only
   has a temporary name. Returns the fd or -1. */
static int kvx__store_reuse(kvx_store *s, const kvx_store_key *v, const char *rel, const char *tmp) {
    char vrel[KVX__STORE_REL];
    int fd;
    kvx__store_relpath(vrel, v);
    if (renameat(s->ns_fd, vrel, s->ns_fd, tmp)) {
        if (errno != ENOENT) goto drop;
        kvx__store_mkdirs(s, rel); /* the target directory may not exist yet */
        if (renameat(s->ns_fd, vrel, s->ns_fd, tmp)) goto drop;
    }
    fd = openat(s->ns_fd, tmp, O_WRONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd >= 0) {
        struct stat st;
        if (!fstat(fd, &st) && S_ISREG(st.st_mode) && (uint64_t)st.st_size == s->block_bytes) return fd;
        close(fd);
    }
    (void)unlinkat(s->ns_fd, tmp, 0);
    return -1;
drop:
    (void)unlinkat(s->ns_fd, vrel, 0);
    return -1;
}

static void kvx__store_put_item(void *arg, size_t i, void *scratch) {
    kvx__store_batch *b = (kvx__store_batch *)arg;
    kvx_store *s = b->s;
    const kvx_store_key *k = &b->keys[i];
    uint8_t *hdr = (uint8_t *)scratch;
    char rel[KVX__STORE_REL], tmp[KVX__STORE_REL];
    struct stat st;
    struct timespec t[2];
    uint32_t crc = 0;
    uint64_t ts;
    kvx_result r;
    kvx_store_key victim;
    int fd, err = 0, have_victim = 0;
    kvx__store_relpath(rel, k);
    if (!fstatat(s->ns_fd, rel, &st, AT_SYMLINK_NOFOLLOW) && S_ISREG(st.st_mode) &&
        (uint64_t)st.st_size == s->block_bytes) {
        /* content-addressed: the block is there; only make it recent */
        ts = kvx__store_stamp(s);
        kvx__store_times(t, ts);
        /* a cached lookup may show a block another node has removed since */
        if (utimensat(s->ns_fd, rel, t, AT_SYMLINK_NOFOLLOW) && (errno == ENOENT || errno == ESTALE))
            goto write;
        pthread_mutex_lock(&s->mu);
        kvx__store_idx_note(s, k, s->block_bytes, ts, 1);
        pthread_mutex_unlock(&s->mu);
        KVX__STORE_ADD(&s->st.put_present, 1);
        if (b->results) b->results[i] = KVX_OK;
        return;
    }
write:
    if ((r = kvx__store_reserve(s, s->block_bytes, s->remote ? NULL : &victim, &have_victim)) != KVX_OK) {
        kvx__store_fail(b, i, r, "a block of %llu bytes does not fit the capacity of %llu bytes "
                        "(nothing left to evict)", (unsigned long long)s->block_bytes,
                        (unsigned long long)s->capacity);
        return;
    }
    memcpy(tmp, rel, KVX__STORE_RELLEN);
    snprintf(tmp + KVX__STORE_RELLEN, sizeof tmp - KVX__STORE_RELLEN, "%s%llu", s->tmp_tag,
             (unsigned long long)__atomic_add_fetch(&s->tmp_seq, 1, __ATOMIC_RELAXED));
    fd = have_victim ? kvx__store_reuse(s, &victim, rel, tmp) : -1;
    if (fd < 0) fd = openat(s->ns_fd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0 && errno == ENOENT) {
        kvx__store_mkdirs(s, rel);
        fd = openat(s->ns_fd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    }
    if (fd < 0) {
        err = errno;
        goto fail;
    }
    memcpy(hdr, s->hdr_template, s->hdr_size); /* buf_crc[] zero: data_io fills it */
    err = kvx__store_data_io(s, fd, b->pages[i], scratch, 1,
                             s->fmt == 2 ? hdr + KVX_STORE_HEADER_FIXED + 8 * s->nb : NULL, &crc);
    if (!err) {
        memcpy(hdr + 32, k->bytes, 32);
        kvx__le_w32(hdr + 80, crc);
        kvx__le_w32(hdr + 16, kvx__store_header_crc(hdr, s->hdr_size));
        err = kvx__pio(fd, hdr, s->hdr_size, 0, 1);
    }
    ts = kvx__store_stamp(s);
    kvx__store_times(t, ts);
    if (!err) (void)futimens(fd, t); /* after the last write: mtime = last use */
    if (!err && s->desc.fsync && fsync(fd)) err = errno;
    if (close(fd) && !err) err = errno;
    if (!err && renameat(s->ns_fd, tmp, s->ns_fd, rel)) err = errno;
    if (err) {
        unlinkat(s->ns_fd, tmp, 0);
        goto fail;
    }
    if (s->desc.fsync) {
        char d[4];
        memcpy(d, rel, 2);
        d[2] = 0;
        kvx__store_fsync_dir(s->ns_fd, d);
    }
    pthread_mutex_lock(&s->mu);
    s->reserved -= s->block_bytes;
    kvx__store_idx_note(s, k, s->block_bytes, ts, 1);
    pthread_mutex_unlock(&s->mu);
    KVX__STORE_ADD(&s->st.puts, 1);
    KVX__STORE_ADD(&s->st.bytes_written, s->block_bytes);
    if (b->results) b->results[i] = KVX_OK;
    return;
fail: /* fd < 0: the temporary file could not be made */
    if (err < 0) err = EIO;
    kvx__store_release(s, s->block_bytes);
    KVX__STORE_ADD(&s->st.errors, 1);
    kvx__store_fail(b, i, kvx__errno_result(err), "cannot %s %s/%s: %s", fd < 0 ? "create" : "write",
                    s->ns, fd < 0 ? tmp : rel, strerror(err));
}

static kvx_result kvx__store_check_pages(kvx_store *s, const int32_t *pages, size_t n,
                                         int no_dup, const char *what) {
    kvx_plan chk;
    kvx_result r;
    memset(&chk, 0, sizeof chk);
    r = kvx_pages_check(&chk, pages, n, kvx_layout_num_pages(&s->desc.layout), no_dup, what);
    if (r != KVX_OK) kvx__store_log(s, KVX_LOG_ERROR, "%s", chk.error);
    kvx_plan_free(&chk);
    return r;
}

KVX_API kvx_result kvx_store_batch_put(kvx_store *s, const kvx_store_key *keys,
                                       const int32_t *pages, size_t n, kvx_result *results) {
    kvx__store_batch b;
    kvx_result r;
    if (!s || (n && (!keys || !pages))) return KVX_ERR_INVALID_ARGUMENT;
    if (!n) return KVX_OK;
    if ((r = kvx__store_check_pages(s, pages, n, 0, "kvx_store_batch_put")) != KVX_OK) return r;
    if (kvx__store_batch_run(&b, s, keys, pages, n, results, kvx__store_put_item))
        return KVX_ERR_NO_MEMORY;
    if (!b.failed) return KVX_OK;
    kvx__store_log(s, KVX_LOG_ERROR, "put of %zu blocks: %zu failed; first (key %zu): %s", n,
                   b.failed, b.stop, b.why);
    return b.err;
}

KVX_API kvx_result kvx_store_batch_get(kvx_store *s, const kvx_store_key *keys,
                                       const int32_t *dst_pages, size_t n, size_t *loaded) {
    kvx__store_batch b;
    kvx_result r;
    if (loaded) *loaded = 0;
    if (!s || !loaded || (n && (!keys || !dst_pages))) return KVX_ERR_INVALID_ARGUMENT;
    if (!n) return KVX_OK;
    if ((r = kvx__store_check_pages(s, dst_pages, n, 1, "kvx_store_batch_get")) != KVX_OK)
        return r;
    if (kvx__store_batch_run(&b, s, keys, dst_pages, n, NULL, kvx__store_get_item))
        return KVX_ERR_NO_MEMORY;
    *loaded = b.stop;
    KVX__STORE_ADD(&s->st.hits, (uint64_t)b.stop);
    if (b.stop == n || b.err == KVX_ERR_NOT_FOUND || b.err == KVX_ERR_CORRUPT) return KVX_OK;
    kvx__store_log(s, KVX_LOG_ERROR, "get of %zu blocks stopped at key %zu: %s", n, b.stop, b.why);
    return b.err;
}

/* >>block store: layer-wise load --------------------------------------------------------- */
/* The load is one task of n x G items, group-major (item t: group t / n of
   key t % n), so the I/O threads read group 0 (layer 0) of every key
   before any of group 1, with no barrier between groups. Group 0 of a key
   opens its block, checks the header and keeps its buf_crc[] and identity;
   each later group opens the block again (a load of thousands of keys
   cannot keep a descriptor per key), checks it is the same file and reads
   and verifies its layers' K and V regions (two preadv each, of all the
   group's layers). A version 1 block (no buf_crc[]) is read and verified
   whole by its group 0 item: its layers count only then. */

#define KVX__STORE_LOAD_BYTES (1u << 19) /* most bytes of a key a group reads (after the first) */
#define KVX__STORE_LOAD_FDS 4096          /* most keys whose blocks a load keeps open */

typedef struct kvx__store_lkey {
    uint32_t state;  /* atomic: 0 not yet looked at, 1 header checked (v2), 2 read whole (v1),
                        3 failed or skipped */
    uint32_t groups; /* under the load's mu: groups of this key verified */
    dev_t dev;       /* the file group 0 read (set before state leaves 0) */
    ino_t ino;
    int fd;          /* that file kept open for the later groups (keep_fds), else -1;
                        closed by the item that completes the key, or by end */
} kvx__store_lkey;

struct kvx_store_load {
    kvx_store *s;
    kvx__store_batch b;      /* keys, pages, stop, err, why */
    kvx_store_key *keys;
    int32_t *pages;
    size_t n;
    uint32_t layers, ngroups;
    uint32_t *gl;            /* ngroups + 1: group g holds layers [gl[g], gl[g + 1]) */
    size_t *gdone;           /* ngroups, under mu: keys whose group g is verified */
    uint32_t *crcs;          /* n x nb: buf_crc[] of each key's block */
    kvx__store_lkey *lk;
    pthread_mutex_t mu;
    pthread_cond_t cv;       /* wait_layer's waits */
    pthread_cond_t icv;      /* items' waits (their group's turn, a key's state) */
    int swait;               /* under mu: items waiting for a key's state */
    uint32_t next_group;     /* under mu */
    uint32_t layers_done;    /* atomic (written under mu) */
    int failed, finished;    /* under mu */
    int cancel;              /* atomic */
    int keep_fds;            /* n is small enough to keep every key's block open */
    int thread_on;
    pthread_t th;
    char call_why[KVX_ERROR_MAX]; /* under mu */
    char err_copy[KVX_ERROR_MAX]; /* kvx_store_load_error's copy */
};

/* Buffers of layer range [a, b): one run for MLA, K and V runs for MHA. */
static int kvx__store_load_runs(const kvx_store_load *ld, uint32_t a, uint32_t b, uint32_t r[4]) {
    r[0] = a;
    r[1] = b;
    if (ld->s->desc.layout.mla) return 1;
    r[2] = ld->layers + a;
    r[3] = ld->layers + b;
    return 2;
}

/* Reads buffers [b0, b1) of key j's page from its block at fd and checks
   each against buf_crc[]: 0, an errno, -1 short file, -2 a CRC mismatch
   (why says which buffer). Chunks of at most KVX__STORE_GROUP bytes, each
   checksummed right after its read while in cache. */
static int kvx__store_load_run(kvx_store_load *ld, int fd, size_t j, uint32_t b0, uint32_t b1,
                               struct iovec *iov, char *why, size_t wl) {
    kvx_store *s = ld->s;
    const kvx_buffer *bf = s->desc.layout.buffers;
    const uint32_t *want = ld->crcs + j * s->nb;
    uint64_t page = (uint64_t)ld->pages[j], in = 0;
    uint32_t b = b0, c = 0;
    while (b < b1) {
        uint32_t cb = b;
        uint64_t cin = in, len = 0, at = s->hdr_size + s->boff[b] + in;
        int k = 0, err;
        while (cb < b1 && k < KVX__STORE_IOV && len < KVX__STORE_GROUP) {
            uint64_t take = bf[cb].item_len - cin;
            if (take > KVX__STORE_GROUP - len) take = KVX__STORE_GROUP - len;
            iov[k].iov_base = (char *)bf[cb].base + page * bf[cb].item_len + cin;
            iov[k++].iov_len = (size_t)take;
            len += take;
            cin += take;
            if (cin == bf[cb].item_len) { cb++; cin = 0; }
        }
        if ((err = kvx__piov_full(fd, iov, k, at, len, 0)) != 0) return err;
        while (len) { /* the same bytes again, buffer by buffer */
            uint64_t take = bf[b].item_len - in < len ? bf[b].item_len - in : len;
            c = kvx__store_crc32c(c, (const char *)bf[b].base + page * bf[b].item_len + in,
                                  (size_t)take);
            in += take;
            len -= take;
            if (in < bf[b].item_len) continue;
            if (c != want[b]) {
                kvx__set_why(why, wl, "buffer %u's CRC32C mismatch: stored %08x, read %08x", b,
                             want[b], c);
                return -2;
            }
            b++;
            in = 0;
            c = 0;
        }
    }
    return 0;
}

/* Key j's groups [g, g + count) are verified; the layers of every
   complete group from the first on become available. 1 when that made the
   key complete. */
static int kvx__store_load_done(kvx_store_load *ld, size_t j, uint32_t g, uint32_t count) {
    uint32_t before, e = g + count;
    int last;
    pthread_mutex_lock(&ld->mu);
    for (; g < e; g++) ld->gdone[g]++;
    ld->lk[j].groups += count;
    last = ld->lk[j].groups == ld->ngroups;
    before = ld->next_group;
    while (ld->next_group < ld->ngroups && ld->gdone[ld->next_group] == ld->n) ld->next_group++;
    if (ld->next_group != before) {
        __atomic_store_n(&ld->layers_done, ld->gl[ld->next_group], __ATOMIC_RELEASE);
        pthread_cond_broadcast(&ld->cv);
        pthread_cond_broadcast(&ld->icv);
    }
    pthread_mutex_unlock(&ld->mu);
    return last;
}

/* The sentence is in ld->b (kvx__store_fail): tell the waiters. */
static void kvx__store_load_failed(kvx_store_load *ld) {
    pthread_mutex_lock(&ld->mu);
    ld->failed = 1;
    pthread_cond_broadcast(&ld->cv);
    pthread_cond_broadcast(&ld->icv);
    pthread_mutex_unlock(&ld->mu);
}

static void kvx__store_load_set(kvx_store_load *ld, size_t j, uint32_t state) {
    pthread_mutex_lock(&ld->mu);
    __atomic_store_n(&ld->lk[j].state, state, __ATOMIC_RELEASE);
    if (ld->swait) pthread_cond_broadcast(&ld->icv); /* else no wake-up per key */
    pthread_mutex_unlock(&ld->mu);
}

/* An item of key j failed: 1 when it is the first (it reports; the key is
   marked failed before its block may be moved away as corrupt, so another
   group's item that then misses the file stays silent instead of calling
   the key missing). */
static int kvx__store_load_first_fail(kvx_store_load *ld, size_t j) {
    uint32_t old;
    pthread_mutex_lock(&ld->mu);
    old = __atomic_exchange_n(&ld->lk[j].state, 3, __ATOMIC_ACQ_REL);
    if (ld->swait) pthread_cond_broadcast(&ld->icv);
    pthread_mutex_unlock(&ld->mu);
    return old != 3;
}

/* Key j's state once its group 0 item has looked at the block. That item
   was claimed before any later group's of the key (items are claimed in
   order) and waits for nothing, so this wait ends. */
static uint32_t kvx__store_load_state(kvx_store_load *ld, size_t j) {
    uint32_t st = __atomic_load_n(&ld->lk[j].state, __ATOMIC_ACQUIRE);
    if (st) return st;
    pthread_mutex_lock(&ld->mu);
    ld->swait++;
    while (!(st = __atomic_load_n(&ld->lk[j].state, __ATOMIC_ACQUIRE)))
        pthread_cond_wait(&ld->icv, &ld->mu);
    ld->swait--;
    pthread_mutex_unlock(&ld->mu);
    return st;
}

/* Group 0 of key j, its block open at fd (st): checks the header (in the
   scratch) and keeps buf_crc[]; a version 1 block is read and verified
   whole here. 0: read the group's layers now; 1: done (version 1); -1: bad
   (why); -2: short header or data (why); an errno. */
static int kvx__store_load_head(kvx_store_load *ld, size_t j, int fd, const struct stat *st,
                                void *scratch, char *why, size_t wl) {
    kvx_store *s = ld->s;
    uint8_t *hdr = (uint8_t *)scratch;
    kvx_store_block_info in;
    uint32_t i, crc = 0;
    int err = kvx__pio(fd, hdr, s->hdr_size, 0, 0);
    if (err < 0) { kvx__set_why(why, wl, "header truncated"); return -2; }
    if (err) return err;
    if (kvx__store_check_header(s, hdr, &ld->keys[j], why, wl) ||
        kvx_store_header_parse(hdr, s->hdr_size, &in, why, wl) != KVX_OK)
        return -1;
    ld->lk[j].dev = st->st_dev;
    ld->lk[j].ino = st->st_ino;
    if (in.version == 2) {
        if (ld->keep_fds) ld->lk[j].fd = fd;
        for (i = 0; i < s->nb; i++) ld->crcs[j * s->nb + i] = kvx_store_block_buf_crc(&in, i);
        kvx__store_load_set(ld, j, 1);
        return 0;
    }
    err = kvx__store_data_io(s, fd, ld->pages[j], scratch, 0, NULL, &crc);
    if (err < 0) { kvx__set_why(why, wl, "data truncated"); return -2; }
    if (err) return err;
    if (crc != in.data_crc) {
        kvx__set_why(why, wl, "data CRC32C mismatch: stored %08x, read %08x", in.data_crc, crc);
        return -1;
    }
    if (kvx__store_load_done(ld, j, 0, ld->ngroups)) kvx__store_touch(s, &ld->keys[j], fd);
    kvx__store_load_set(ld, j, 2);
    return 1;
}

/* An item of group g starts once every earlier group is complete (or the
   load failed: then only the keys before the failed one still matter).
   Without this the threads that went on to later groups would take the
   CPU from a straggler of group 0 (more I/O threads than cores, a busy
   machine) and layer 0 would come late. The items of earlier groups were
   all claimed before (items are claimed in order) and wait only for
   groups before theirs, so this wait ends. 1 when cancelled. */
static int kvx__store_load_turn(kvx_store_load *ld, uint32_t g) {
    int cancel;
    pthread_mutex_lock(&ld->mu);
    while (ld->next_group < g && !ld->failed && !__atomic_load_n(&ld->cancel, __ATOMIC_RELAXED))
        pthread_cond_wait(&ld->icv, &ld->mu);
    cancel = __atomic_load_n(&ld->cancel, __ATOMIC_RELAXED);
    pthread_mutex_unlock(&ld->mu);
    return cancel;
}

/* After a failure of key j: closes fd unless it is the key's kept
   descriptor (another item of the key may still read through it once the
   failure lifted the group order; kvx_store_load_end closes it). The key
   cannot complete now, so its kept descriptor does not change. */
static void kvx__store_load_close(kvx_store_load *ld, size_t j, int fd) {
    if (fd != ld->lk[j].fd) close(fd);
}

static void kvx__store_load_item(void *arg, size_t t, void *scratch) {
    kvx_store_load *ld = (kvx_store_load *)arg;
    kvx_store *s = ld->s;
    size_t j = t % ld->n;
    uint32_t g = (uint32_t)(t / ld->n), r[4];
    struct iovec *iov = (struct iovec *)(void *)((char *)scratch + s->hdr_size);
    char rel[KVX__STORE_REL], why[256];
    struct stat st;
    int fd, err = 0, nr, i, kept;
    if (__atomic_load_n(&ld->cancel, __ATOMIC_RELAXED) ||
        j > __atomic_load_n(&ld->b.stop, __ATOMIC_ACQUIRE)) {
        if (g == 0) kvx__store_load_set(ld, j, 3);
        return;
    }
    if (g > 0 && kvx__store_load_turn(ld, g)) return;
    if (g > 0 && kvx__store_load_state(ld, j) != 1) return; /* failed, or read whole */
    kvx__store_relpath(rel, &ld->keys[j]);
    if (g > 0 && ld->lk[j].fd >= 0) {
        fd = ld->lk[j].fd; /* group 0 checked it; only this item uses it now */
        if (fstat(fd, &st)) { err = errno; goto io_error; }
        goto read;
    }
    fd = openat(s->ns_fd, rel, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) {
        err = errno;
        if (!kvx__store_load_first_fail(ld, j)) return;
        kvx__store_get_ioerr(s, &ld->b, j, rel, err, g == 0);
        kvx__store_load_failed(ld);
        return;
    }
    if (fstat(fd, &st)) { err = errno; goto io_error; }
    if (!S_ISREG(st.st_mode) || (uint64_t)st.st_size != s->block_bytes) {
        snprintf(why, sizeof why, "file is %lld bytes, a block is %llu (torn, truncated or foreign)",
                 (long long)st.st_size, (unsigned long long)s->block_bytes);
        goto bad;
    }
    if (g == 0) {
        err = kvx__store_load_head(ld, j, fd, &st, scratch, why, sizeof why);
        if (err == 1) { close(fd); return; }
        if (err < 0) goto bad;
        if (err) goto io_error;
    } else if (st.st_ino != ld->lk[j].ino || st.st_dev != ld->lk[j].dev) {
        /* evicted and written again (maybe by another process) since group 0 */
        close(fd);
        if (!kvx__store_load_first_fail(ld, j)) return;
        KVX__STORE_ADD(&s->st.misses, 1);
        kvx__store_fail(&ld->b, j, KVX_ERR_NOT_FOUND, "%s changed while being read", rel);
        kvx__store_load_failed(ld);
        return;
    }
read:
    nr = kvx__store_load_runs(ld, ld->gl[g], ld->gl[g + 1], r);
    for (i = 0; i < nr && !err; i++)
        err = kvx__store_load_run(ld, fd, j, r[2 * i], r[2 * i + 1], iov, why, sizeof why);
    if (err == -1) snprintf(why, sizeof why, "data truncated");
    if (err < 0) goto bad;
    if (err) goto io_error;
    kept = fd == ld->lk[j].fd; /* read before done: only the key's last item changes it */
    if (kvx__store_load_done(ld, j, g, 1)) {
        kvx__store_touch(s, &ld->keys[j], fd);
        if (kept) ld->lk[j].fd = -1; /* every other item of the key is done with it */
        close(fd);
    } else if (!kept) {
        close(fd);
    }
    return;
bad:
    kvx__store_load_close(ld, j, fd);
    if (!kvx__store_load_first_fail(ld, j)) return;
    kvx__store_get_bad(s, &ld->b, j, rel, &st, why);
    kvx__store_load_failed(ld);
    return;
io_error:
    kvx__store_load_close(ld, j, fd);
    if (!kvx__store_load_first_fail(ld, j)) return;
    kvx__store_get_ioerr(s, &ld->b, j, rel, err, 0);
    kvx__store_load_failed(ld);
}

static void *kvx__store_load_main(void *arg) {
    kvx_store_load *ld = (kvx_store_load *)arg;
    if (kvx__store_parallel(ld->s, ld->n * ld->ngroups, kvx__store_load_item, ld)) {
        kvx__store_fail(&ld->b, 0, KVX_ERR_NO_MEMORY, "out of memory for a layer-wise load's I/O");
        kvx__store_load_failed(ld);
    }
    pthread_mutex_lock(&ld->mu);
    ld->finished = 1;
    pthread_cond_broadcast(&ld->cv);
    pthread_mutex_unlock(&ld->mu);
    return NULL;
}

/* Layer groups: layer 0 alone (the first the engine needs), then 1, 2, 4...
   layers, each at most KVX__STORE_LOAD_BYTES of a key (at least a layer):
   few reads per block (about as many as a whole-block get's), yet the
   early layers come early. */
static void kvx__store_load_plan(kvx_store_load *ld) {
    const kvx_store *s = ld->s;
    uint32_t g = 0, at = 0, want = 1, r[4];
    while (at < ld->layers) {
        uint32_t e = at + 1;
        while (e < ld->layers && e - at < want) {
            uint64_t bytes = 0;
            int i, nr = kvx__store_load_runs(ld, at, e + 1, r);
            for (i = 0; i < nr; i++) bytes += s->boff[r[2 * i + 1]] - s->boff[r[2 * i]];
            if (bytes > KVX__STORE_LOAD_BYTES) break;
            e++;
        }
        ld->gl[g++] = at;
        at = e;
        if (g > 1) want *= 2;
    }
    ld->gl[g] = at;
    ld->ngroups = g;
}

static void kvx__store_load_free(kvx_store_load *ld) {
    kvx_store *s = ld->s;
    kvx__store_free(s, ld->keys);
    kvx__store_free(s, ld->pages);
    kvx__store_free(s, ld->gl);
    kvx__store_free(s, ld->gdone);
    kvx__store_free(s, ld->crcs);
    kvx__store_free(s, ld->lk);
    pthread_mutex_destroy(&ld->b.mu);
    pthread_mutex_destroy(&ld->mu);
    pthread_cond_destroy(&ld->cv);
    pthread_cond_destroy(&ld->icv);
    kvx__store_free(s, ld);
}

static kvx_store_load *kvx__store_load_new(kvx_store *s, size_t n) {
    kvx_store_load *ld = (kvx_store_load *)kvx__store_alloc(s, sizeof *ld);
    pthread_condattr_t ca;
    uint32_t layers = s->desc.layout.mla ? s->nb : s->nb / 2;
    if (!ld) return NULL;
    memset(ld, 0, sizeof *ld);
    ld->s = s;
    ld->n = n;
    ld->layers = layers;
    pthread_mutex_init(&ld->b.mu, NULL);
    pthread_mutex_init(&ld->mu, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&ld->cv, &ca);
    pthread_cond_init(&ld->icv, NULL);
    pthread_condattr_destroy(&ca);
    ld->keys = (kvx_store_key *)kvx__store_alloc(s, n * sizeof *ld->keys + 1);
    ld->pages = (int32_t *)kvx__store_alloc(s, n * sizeof *ld->pages + 1);
    ld->gl = (uint32_t *)kvx__store_alloc(s, (layers + 1) * sizeof *ld->gl);
    ld->gdone = (size_t *)kvx__store_alloc(s, layers * sizeof *ld->gdone);
    ld->crcs = (uint32_t *)kvx__store_alloc(s, n * s->nb * sizeof *ld->crcs + 1);
    ld->lk = (kvx__store_lkey *)kvx__store_alloc(s, n * sizeof *ld->lk + 1);
    if (!ld->keys || !ld->pages || !ld->gl || !ld->gdone || !ld->crcs || !ld->lk) {
        kvx__store_load_free(ld);
        return NULL;
    }
    memset(ld->gdone, 0, layers * sizeof *ld->gdone);
    memset(ld->lk, 0, n * sizeof *ld->lk);
    {
        size_t j;
        struct rlimit rl;
        for (j = 0; j < n; j++) ld->lk[j].fd = -1;
        /* a quarter of the descriptors this process may open, at most */
        ld->keep_fds = !getrlimit(RLIMIT_NOFILE, &rl) &&
                       (rl.rlim_cur == RLIM_INFINITY || n <= rl.rlim_cur / 4) &&
                       n <= KVX__STORE_LOAD_FDS;
    }
    return ld;
}

KVX_API kvx_result kvx_store_load_begin(kvx_store *s, const kvx_store_key *keys,
                                        const int32_t *dst_pages, size_t n,
                                        kvx_store_load **out) {
    kvx_store_load *ld;
    kvx_result r;
    if (out) *out = NULL;
    if (!s) return KVX_ERR_INVALID_ARGUMENT;
    if (!out || (n && (!keys || !dst_pages))) {
        kvx__store_log(s, KVX_LOG_ERROR, "kvx_store_load_begin: %s is NULL",
                       !out ? "out" : !keys ? "keys" : "dst_pages");
        return KVX_ERR_INVALID_ARGUMENT;
    }
    if (!s->desc.layout.mla && s->nb % 2) {
        kvx__store_log(s, KVX_LOG_ERROR, "kvx_store_load_begin: the layout is MHA (K and V per "
                       "layer) with %u buffers, an odd count: it has no layers to load by", s->nb);
        return KVX_ERR_INVALID_ARGUMENT;
    }
    if (n > SIZE_MAX / 64 / (s->nb + 64)) {
        kvx__store_log(s, KVX_LOG_ERROR, "kvx_store_load_begin: %zu keys is too many", n);
        return KVX_ERR_INVALID_ARGUMENT;
    }
    if (n && (r = kvx__store_check_pages(s, dst_pages, n, 1, "kvx_store_load_begin")) != KVX_OK)
        return r;
    if (!(ld = kvx__store_load_new(s, n))) {
        kvx__store_log(s, KVX_LOG_ERROR, "kvx_store_load_begin: out of memory for %zu keys", n);
        return KVX_ERR_NO_MEMORY;
    }
    if (n) {
        memcpy(ld->keys, keys, n * sizeof *keys);
        memcpy(ld->pages, dst_pages, n * sizeof *dst_pages);
    }
    ld->b.s = s;
    ld->b.keys = ld->keys;
    ld->b.pages = ld->pages;
    ld->b.stop = n;
    kvx__store_load_plan(ld);
    if (!n) { /* nothing to read: every layer is there */
        ld->layers_done = ld->layers;
        ld->finished = 1;
    } else if (pthread_create(&ld->th, NULL, kvx__store_load_main, ld) != 0) {
        kvx__store_log(s, KVX_LOG_ERROR, "kvx_store_load_begin: cannot start a thread: %s",
                       strerror(errno));
        kvx__store_load_free(ld);
        return KVX_ERR_NO_MEMORY;
    } else {
        ld->thread_on = 1;
    }
    *out = ld;
    return KVX_OK;
}

KVX_API uint32_t kvx_store_load_num_layers(const kvx_store_load *ld) { return ld ? ld->layers : 0; }

KVX_API uint32_t kvx_store_load_layers_done(kvx_store_load *ld) {
    return ld ? __atomic_load_n(&ld->layers_done, __ATOMIC_ACQUIRE) : 0;
}

/* The load's error, ld->mu held. */
static kvx_result kvx__store_load_err(kvx_store_load *ld) {
    kvx_result r;
    pthread_mutex_lock(&ld->b.mu);
    r = ld->b.err;
    pthread_mutex_unlock(&ld->b.mu);
    return r;
}

KVX_API kvx_result kvx_store_load_wait_layer(kvx_store_load *ld, uint32_t layer, int timeout_ms) {
    kvx_result r;
    struct timespec dl;
    if (!ld) return KVX_ERR_INVALID_ARGUMENT;
    if (layer >= ld->layers) {
        pthread_mutex_lock(&ld->mu);
        snprintf(ld->call_why, sizeof ld->call_why, "kvx_store_load_wait_layer: layer %u is out of "
                 "range: the layout has %u layers (0 .. %u)", layer, ld->layers, ld->layers - 1);
        pthread_mutex_unlock(&ld->mu);
        kvx__store_log(ld->s, KVX_LOG_ERROR, "kvx_store_load_wait_layer: layer %u is out of range: "
                       "the layout has %u layers (0 .. %u)", layer, ld->layers, ld->layers - 1);
        return KVX_ERR_OUT_OF_RANGE;
    }
    if (timeout_ms > 0) {
        uint64_t at = kvx_now_ns() + (uint64_t)timeout_ms * 1000000ull;
        dl.tv_sec = (time_t)(at / 1000000000ull);
        dl.tv_nsec = (long)(at % 1000000000ull);
    }
    pthread_mutex_lock(&ld->mu);
    for (;;) {
        if (layer < __atomic_load_n(&ld->layers_done, __ATOMIC_RELAXED)) { r = KVX_OK; break; }
        if (ld->failed) { r = kvx__store_load_err(ld); break; }
        if (ld->finished) { r = KVX_ERR_STATE; break; } /* cannot happen: all done or failed */
        if (timeout_ms == 0) { r = KVX_ERR_TIMEOUT; break; }
        if (timeout_ms < 0) {
            pthread_cond_wait(&ld->cv, &ld->mu);
        } else if (pthread_cond_timedwait(&ld->cv, &ld->mu, &dl) == ETIMEDOUT) {
            r = layer < __atomic_load_n(&ld->layers_done, __ATOMIC_RELAXED) ? KVX_OK : KVX_ERR_TIMEOUT;
            break;
        }
    }
    pthread_mutex_unlock(&ld->mu);
    return r;
}

KVX_API const char *kvx_store_load_error(kvx_store_load *ld) {
    if (!ld) return "";
    pthread_mutex_lock(&ld->mu);
    if (!ld->failed) {
        pthread_mutex_unlock(&ld->mu);
        return "";
    }
    pthread_mutex_lock(&ld->b.mu);
    /* the sentence of the lowest failed key: it may still move to a lower
       one while the load runs, so the caller gets a copy */
    memcpy(ld->err_copy, ld->b.why, sizeof ld->err_copy);
    pthread_mutex_unlock(&ld->b.mu);
    pthread_mutex_unlock(&ld->mu);
    return ld->err_copy;
}

KVX_API const char *kvx_store_load_call_error(kvx_store_load *ld) { return ld ? ld->call_why : ""; }

KVX_API kvx_result kvx_store_load_end(kvx_store_load *ld, size_t *loaded) {
    kvx_store *s;
    kvx_result r;
    size_t j;
    if (loaded) *loaded = 0;
    if (!ld) return KVX_ERR_INVALID_ARGUMENT;
    s = ld->s;
    pthread_mutex_lock(&ld->mu);
    __atomic_store_n(&ld->cancel, 1, __ATOMIC_RELAXED);
    pthread_cond_broadcast(&ld->icv); /* items waiting for their group's turn */
    pthread_mutex_unlock(&ld->mu);
    if (ld->thread_on) pthread_join(ld->th, NULL); /* every item ran or was skipped */
    for (j = 0; j < ld->n; j++)
        if (ld->lk[j].fd >= 0) close(ld->lk[j].fd);
    for (j = 0; j < ld->n && ld->lk[j].groups == ld->ngroups; j++) {}
    if (loaded) *loaded = j;
    KVX__STORE_ADD(&s->st.hits, (uint64_t)j);
    r = j == ld->n ? KVX_OK : ld->failed ? ld->b.err : KVX_ERR_ABORTED;
    if (r != KVX_OK && ld->failed)
        kvx__store_log(s, r == KVX_ERR_NOT_FOUND || r == KVX_ERR_CORRUPT ? KVX_LOG_INFO : KVX_LOG_ERROR,
                       "layer-wise load of %zu blocks failed (key %zu): %s; %zu loaded", ld->n,
                       ld->b.stop, ld->b.why, j);
    kvx__store_load_free(ld);
    return r;
}

/* 1 when keys[i]'s block is there (and learns it), 0 when not. */
static int kvx__store_exists1(kvx_store *s, const kvx_store_key *k) {
    char rel[KVX__STORE_REL], why[160];
    struct stat st;
    kvx__store_relpath(rel, k);
    if (fstatat(s->ns_fd, rel, &st, AT_SYMLINK_NOFOLLOW)) {
        if (errno != ENOENT && errno != ENOTDIR && errno != ESTALE) {
            KVX__STORE_ADD(&s->st.errors, 1);
            kvx__store_log(s, KVX_LOG_WARN, "cannot stat %s/%s: %s", s->ns, rel, strerror(errno));
        }
        return 0;
    }
    if (!S_ISREG(st.st_mode) || (uint64_t)st.st_size != s->block_bytes) {
        snprintf(why, sizeof why, "file is %lld bytes, a block is %llu", (long long)st.st_size,
                 (unsigned long long)s->block_bytes);
        kvx__store_bad(s, s->ns_fd, rel, rel, k, &st, why);
        return 0;
    }
    pthread_mutex_lock(&s->mu);
    kvx__store_idx_note(s, k, s->block_bytes, kvx__store_ts_ns(&st.st_mtim), 0);
    pthread_mutex_unlock(&s->mu);
    return 1;
}

#define KVX__STORE_EXISTS_CHUNK 32

typedef struct kvx__store_exists_job {
    kvx_store *s;
    const kvx_store_key *keys;
    size_t n;
    size_t stop; /* atomic: lowest index found missing */
} kvx__store_exists_job;

static void kvx__store_exists_item(void *arg, size_t c, void *scratch) {
    kvx__store_exists_job *j = (kvx__store_exists_job *)arg;
    size_t i = c * KVX__STORE_EXISTS_CHUNK, end = i + KVX__STORE_EXISTS_CHUNK;
    (void)scratch;
    if (end > j->n) end = j->n;
    for (; i < end; i++) {
        size_t cur = __atomic_load_n(&j->stop, __ATOMIC_ACQUIRE);
        if (i > cur) return; /* past a miss: not needed */
        if (kvx__store_exists1(j->s, &j->keys[i])) continue;
        while (i < cur && !__atomic_compare_exchange_n(&j->stop, &cur, i, 0, __ATOMIC_ACQ_REL,
                                                       __ATOMIC_ACQUIRE)) {}
        return;
    }
}

KVX_API size_t kvx_store_batch_exists(kvx_store *s, const kvx_store_key *keys, size_t n) {
    kvx__store_exists_job j;
    size_t i;
    if (!s || !keys) return 0;
    if (n >= 4 * KVX__STORE_EXISTS_CHUNK && s->nworkers) {
        /* long prefixes: the stats run on every I/O thread (it matters on
           shared filesystems, where each one is a round trip) */
        j.s = s;
        j.keys = keys;
        j.n = n;
        j.stop = n;
        if (!kvx__store_parallel(s, (n + KVX__STORE_EXISTS_CHUNK - 1) / KVX__STORE_EXISTS_CHUNK,
                                 kvx__store_exists_item, &j))
            return j.stop;
    }
    for (i = 0; i < n && kvx__store_exists1(s, &keys[i]); i++) {}
    return i;
}

KVX_API kvx_result kvx_store_remove(kvx_store *s, const kvx_store_key *key) {
    char rel[KVX__STORE_REL];
    int err;
    if (!s || !key) return KVX_ERR_INVALID_ARGUMENT;
    kvx__store_relpath(rel, key);
    pthread_mutex_lock(&s->mu);
    kvx__store_idx_remove(s, key);
    pthread_mutex_unlock(&s->mu);
    if (!unlinkat(s->ns_fd, rel, 0)) return KVX_OK;
    err = errno;
    return err == ENOENT || err == ENOTDIR ? KVX_ERR_NOT_FOUND : kvx__errno_result(err);
}

KVX_API void kvx_store_stats_get(kvx_store *s, kvx_store_stats *o) {
    uint64_t *to = (uint64_t *)(void *)o;
    size_t i;
    if (!o) return;
    memset(o, 0, sizeof *o);
    if (!s) return;
    for (i = 0; i < sizeof *o / sizeof *to; i++) /* every field a uint64_t counter */
        to[i] = KVX__STORE_LOAD((const uint64_t *)(const void *)&s->st + i);
    pthread_mutex_lock(&s->mu);
    o->blocks = s->count;
    o->bytes_used = s->bytes;
    pthread_mutex_unlock(&s->mu);
    o->capacity = s->capacity;
}

KVX_API const char *kvx_store_dir(const kvx_store *s) { return s ? s->ns : ""; }
KVX_API uint64_t kvx_store_config_hash(const kvx_store *s) { return s ? s->cfg_hash : 0; }
KVX_API uint64_t kvx_store_block_bytes(const kvx_store *s) { return s ? s->block_bytes : 0; }
KVX_API const kvx_store_desc *kvx_store_settings(const kvx_store *s) { return s ? &s->desc : NULL; }

KVX_API kvx_result kvx_store_block_path(const kvx_store *s, const kvx_store_key *key, char *out,
                                        size_t len) {
    char rel[KVX__STORE_REL];
    if (!s || !key || !out) return KVX_ERR_INVALID_ARGUMENT;
    kvx__store_relpath(rel, key);
    if ((size_t)snprintf(out, len, "%s/%s", s->ns, rel) >= len) return KVX_ERR_INVALID_ARGUMENT;
    return KVX_OK;
}

/* >>block store: walking a namespace ---------------------------------------------- */

/* Calls fn(user, dirfd, name, rel) for every entry of every <2 hex>/
   directory of a namespace (rel = "ab/name"). The only directory scans kvx
   does: at open, and for scan / verify. fn returns nonzero to stop. 0 or an
   errno (the namespace itself cannot be read). */
typedef int (*kvx__store_walk_fn)(void *user, int dirfd, const char *name, const char *rel);

static DIR *kvx__store_opendir_at(int dirfd, const char *name) {
    int fd = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
    DIR *d;
    if (fd < 0) return NULL;
    d = fdopendir(fd);
    if (!d) close(fd);
    return d;
}

static int kvx__store_walk(int nsfd, kvx__store_walk_fn fn, void *user) {
    DIR *d1 = kvx__store_opendir_at(nsfd, "."), *d2;
    struct dirent *e1, *e2;
    int stop = 0;
    char rel[KVX__STORE_REL + 256];
    if (!d1) return errno ? errno : EIO;
    while (!stop && (e1 = readdir(d1)) != NULL) {
        if (strlen(e1->d_name) != 2 || !kvx__store_is_hex(e1->d_name, 2)) continue;
        if (!(d2 = kvx__store_opendir_at(dirfd(d1), e1->d_name))) continue;
        while (!stop && (e2 = readdir(d2)) != NULL) {
            size_t nl = strlen(e2->d_name);
            if (e2->d_name[0] == '.' || nl + 4 > sizeof rel) continue;
            memcpy(rel, e1->d_name, 2);
            rel[2] = '/';
            memcpy(rel + 3, e2->d_name, nl + 1);
            stop = fn(user, dirfd(d2), e2->d_name, rel);
        }
        closedir(d2);
    }
    closedir(d1);
    return 0;
}

/* A block file name "<64 lowercase hex>.kvb" whose first byte matches its
   directory ("ab/ab..."). Fills key. */
static int kvx__store_block_name(const char *name, const char *rel, kvx_store_key *key) {
    if (strlen(name) != 68 || strcmp(name + 64, ".kvb") || !kvx__store_is_hex(name, 64)) return 0;
    if (memcmp(rel, name, 2)) return 0;
    if (key) {
        char hex[65];
        memcpy(hex, name, 64);
        hex[64] = 0;
        if (kvx_store_key_parse(hex, key)) return 0;
    }
    return 1;
}

static int kvx__store_tmp_name(const char *name) { return strstr(name, ".kvb.tmp.") != NULL; }

/* >>block store: open ----------------------------------------------------------------- */

typedef struct kvx__store_found {
    kvx_store_key key;
    uint64_t ts;
} kvx__store_found;

typedef struct kvx__store_load {
    kvx_store *s;
    kvx__store_found *v;
    size_t n, cap;
    uint64_t now, tmp_removed, tmp_kept, bad, known;
    int oom, aborted;
} kvx__store_load;

/* One directory entry of a namespace scan: a block this process indexes
   already is only marked seen (no stat: eviction looks at its file again
   anyway); a new one is stat-ed and collected; stale temporaries go. */
static int kvx__store_load_fn(void *user, int dirfd, const char *name, const char *rel) {
    kvx__store_load *L = (kvx__store_load *)user;
    kvx_store *s = L->s;
    struct stat st;
    kvx_store_key key;
    uint32_t e;
    if (__atomic_load_n(&s->scan_stop, __ATOMIC_RELAXED)) { /* kvx_store_close */
        L->aborted = 1;
        return 1;
    }
    if (kvx__store_tmp_name(name)) {
        if (fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW)) return 0;
        if (kvx__store_ts_ns(&st.st_mtim) + KVX__STORE_TMP_TTL_NS < L->now && !unlinkat(dirfd, name, 0))
            L->tmp_removed++;
        else
            L->tmp_kept++;
        return 0;
    }
    if (!kvx__store_block_name(name, rel, &key)) return 0;
    pthread_mutex_lock(&s->mu);
    if ((e = kvx__store_find(s, &key)) != 0) s->ents[e].gen = s->scan_gen;
    pthread_mutex_unlock(&s->mu);
    if (e) {
        L->known++;
        return 0;
    }
    if (fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW)) return 0;
    if (!S_ISREG(st.st_mode) || (uint64_t)st.st_size != s->block_bytes) {
        char why[160];
        snprintf(why, sizeof why, "file is %lld bytes, a block is %llu", (long long)st.st_size,
                 (unsigned long long)s->block_bytes);
        L->bad += (uint64_t)kvx__store_bad(s, dirfd, name, rel, &key, &st, why);
        return 0;
    }
    if (L->n == L->cap) {
        size_t nc = L->cap ? L->cap * 2 : 4096;
        kvx__store_found *nv = (kvx__store_found *)kvx__grow(&s->desc.allocator, L->v,
                                                             L->n * sizeof *nv, nc * sizeof *nv);
        if (!nv) { L->oom = 1; return 1; }
        L->v = nv;
        L->cap = nc;
    }
    L->v[L->n].key = key;
    L->v[L->n].ts = kvx__store_ts_ns(&st.st_mtim);
    L->n++;
    return 0;
}

static int kvx__store_cmp_found(const void *a, const void *b) {
    const kvx__store_found *x = (const kvx__store_found *)a, *y = (const kvx__store_found *)b;
    if (x->ts != y->ts) return x->ts < y->ts ? -1 : 1;
    return memcmp(x->key.bytes, y->key.bytes, 32);
}

/* Adds the blocks v[0..n) (sorted by last use, oldest first), not indexed
   yet, to the index at their place in the LRU order: one pass from the
   tail, O(blocks + n). Under s->mu. Returns how many were added. */
static size_t kvx__store_merge(kvx_store *s, const kvx__store_found *v, size_t n) {
    uint32_t c = s->lru_tail, e;
    size_t i, added = 0;
    for (i = 0; i < n; i++) {
        if (kvx__store_find(s, &v[i].key)) continue; /* a put or an exists got there first */
        if ((s->count + 1) * 2 > s->slots_cap && kvx__store_grow_slots(s)) break;
        if (!(e = kvx__store_new_ent(s))) break;
        s->ents[e].key = v[i].key;
        s->ents[e].size = s->block_bytes;
        s->ents[e].ts = v[i].ts;
        s->ents[e].gen = s->scan_gen;
        s->slots[kvx__store_slot(s, &v[i].key)] = e;
        s->count++;
        s->bytes += s->block_bytes;
        added++;
        while (c && s->ents[c].ts < v[i].ts) c = s->ents[c].prev; /* toward the most recent */
        if (!c) {
            kvx__store_lru_front(s, e);
        } else { /* just older than c */
            s->ents[e].prev = c;
            s->ents[e].next = s->ents[c].next;
            if (s->ents[c].next) s->ents[s->ents[c].next].prev = e;
            else s->lru_tail = e;
            s->ents[c].next = e;
        }
        c = e;
    }
    if (added < n && i < n && !s->index_oom_logged++)
        kvx__store_log(s, KVX_LOG_ERROR, "out of memory growing the index of %s: new blocks are not "
                       "counted against the capacity", s->ns);
    return added;
}

/* Forgets indexed blocks the scan (generation gen, started at wall time
   t0) did not see and nobody used since it started: other processes
   removed them. Under s->mu. */
static uint64_t kvx__store_forget_unseen(kvx_store *s, uint32_t gen, uint64_t t0) {
    uint32_t e = s->lru_tail, p;
    uint64_t gone = 0;
    while (e) {
        p = s->ents[e].prev;
        if (s->ents[e].gen != gen && s->ents[e].ts < t0) {
            kvx_store_key k = s->ents[e].key;
            kvx__store_idx_remove(s, &k);
            gone++;
        }
        e = p;
    }
    return gone;
}

/* Evicts least recently used blocks until this view is under capacity;
   each victim's file is looked at again first. Returns how many went. */
static uint64_t kvx__store_evict_to_capacity(kvx_store *s) {
    uint64_t evicted = 0;
    for (;;) {
        kvx__store_ent v;
        char rel[KVX__STORE_REL];
        if (__atomic_load_n(&s->scan_stop, __ATOMIC_RELAXED)) break; /* closing */
        pthread_mutex_lock(&s->mu);
        if (kvx__store_used(s) <= s->capacity || !s->lru_tail) {
            pthread_mutex_unlock(&s->mu);
            break;
        }
        v = s->ents[s->lru_tail];
        kvx__store_idx_remove(s, &v.key);
        pthread_mutex_unlock(&s->mu);
        if (kvx__store_victim_check(s, &v)) continue; /* used since, or gone already */
        kvx__store_relpath(rel, &v.key);
        if (!unlinkat(s->ns_fd, rel, 0)) {
            KVX__STORE_ADD(&s->st.evictions, 1);
            evicted++;
        }
    }
    return evicted;
}

/* A namespace scan: reads every directory of the namespace once, learns
   blocks other processes wrote (stat-ing only those), forgets blocks they
   removed, then evicts least recently used blocks until the namespace as
   seen is under the capacity. At open it builds the index. One at a time. */
static kvx_result kvx__store_rescan_run(kvx_store *s, int at_open, char *why, size_t wl) {
    kvx__store_load L;
    uint64_t t0 = kvx_now_ns(), evicted, gone = 0, dt;
    uint32_t gen;
    int err;
    pthread_mutex_lock(&s->scan_run);
    __atomic_store_n(&s->scan_end_ns, t0, __ATOMIC_RELEASE); /* no put-requested scan meanwhile */
    memset(&L, 0, sizeof L);
    L.s = s;
    L.now = kvx__store_wall_ns();
    pthread_mutex_lock(&s->mu);
    gen = ++s->scan_gen;
    pthread_mutex_unlock(&s->mu);
    err = kvx__store_walk(s->ns_fd, kvx__store_load_fn, &L);
    if (err || L.oom) {
        kvx__store_free(s, L.v);
        kvx__set_why(why, wl, "cannot read the blocks of %s: %s", s->ns,
                     err ? strerror(err) : "out of memory");
        if (!at_open)
            kvx__store_log(s, KVX_LOG_WARN, "scan of %s failed: %s", s->ns,
                           err ? strerror(err) : "out of memory");
        __atomic_store_n(&s->scan_end_ns, kvx_now_ns(), __ATOMIC_RELEASE);
        pthread_mutex_unlock(&s->scan_run);
        return err ? kvx__errno_result(err) : KVX_ERR_NO_MEMORY;
    }
    if (L.aborted) { /* closing: leave the index as it is */
        kvx__store_free(s, L.v);
        pthread_mutex_unlock(&s->scan_run);
        return KVX_OK;
    }
    if (L.n) qsort(L.v, L.n, sizeof *L.v, kvx__store_cmp_found);
    pthread_mutex_lock(&s->mu);
    L.n = kvx__store_merge(s, L.v, L.n);
    if (!at_open) gone = kvx__store_forget_unseen(s, gen, L.now);
    if (at_open && L.n && L.v[L.n - 1].ts > s->last_ts) s->last_ts = L.v[L.n - 1].ts;
    pthread_mutex_unlock(&s->mu);
    kvx__store_free(s, L.v);
    evicted = kvx__store_evict_to_capacity(s);
    dt = kvx_now_ns() - t0;
    KVX__STORE_ADD(&s->st.scans, 1);
    __atomic_store_n(&s->st.last_scan_ns, dt, __ATOMIC_RELAXED);
    if (!at_open) {
        KVX__STORE_ADD(&s->st.scan_found, (uint64_t)L.n);
        KVX__STORE_ADD(&s->st.scan_gone, gone);
    }
    pthread_mutex_lock(&s->mu);
    kvx__store_log(s, at_open || evicted || L.bad ? KVX_LOG_INFO : KVX_LOG_DEBUG,
                   "%s %s: %u blocks, %llu bytes (capacity %llu) in %.1f ms; %llu new, %llu gone, "
                   "%llu evicted to fit, %llu bad removed, %llu stale temporaries removed, %llu in "
                   "flight", at_open ? "opened" : "scanned", s->ns, s->count,
                   (unsigned long long)s->bytes, (unsigned long long)s->capacity, (double)dt / 1e6,
                   (unsigned long long)L.n, (unsigned long long)gone, (unsigned long long)evicted,
                   (unsigned long long)L.bad, (unsigned long long)L.tmp_removed,
                   (unsigned long long)L.tmp_kept);
    pthread_mutex_unlock(&s->mu);
    __atomic_store_n(&s->scan_end_ns, kvx_now_ns(), __ATOMIC_RELEASE);
    pthread_mutex_unlock(&s->scan_run);
    return KVX_OK;
}

KVX_API kvx_result kvx_store_rescan(kvx_store *s) {
    if (!s) return KVX_ERR_INVALID_ARGUMENT;
    return kvx__store_rescan_run(s, 0, NULL, 0);
}

/* A put found this process's view full: ask the scanner for a scan now,
   unless one ran (or started) less than scan_gap_ns ago. */
static void kvx__store_scan_request(kvx_store *s) {
    if (!s->scanner_on ||
        kvx_now_ns() - __atomic_load_n(&s->scan_end_ns, __ATOMIC_ACQUIRE) < s->scan_gap_ns)
        return;
    pthread_mutex_lock(&s->scan_mu);
    if (!s->scan_wake) {
        s->scan_wake = 1;
        pthread_cond_signal(&s->scan_cv);
    }
    pthread_mutex_unlock(&s->scan_mu);
}

static void *kvx__store_scanner_main(void *arg) {
    kvx_store *s = (kvx_store *)arg;
    pthread_mutex_lock(&s->scan_mu);
    while (!__atomic_load_n(&s->scan_stop, __ATOMIC_RELAXED)) {
        uint64_t due = __atomic_load_n(&s->scan_end_ns, __ATOMIC_ACQUIRE) + s->scan_interval_ns;
        struct timespec ts;
        if (s->scan_wake || kvx_now_ns() >= due) {
            pthread_mutex_unlock(&s->scan_mu);
            (void)kvx__store_rescan_run(s, 0, NULL, 0);
            pthread_mutex_lock(&s->scan_mu);
            s->scan_wake = 0;
            continue;
        }
        ts.tv_sec = (time_t)(due / 1000000000ull);
        ts.tv_nsec = (long)(due % 1000000000ull);
        pthread_cond_timedwait(&s->scan_cv, &s->scan_mu, &ts);
    }
    pthread_mutex_unlock(&s->scan_mu);
    return NULL;
}

/* The background scanner (see CAPACITY); without it, scans happen at open
   and in kvx_store_rescan only. */
static void kvx__store_start_scanner(kvx_store *s) {
    pthread_condattr_t ca;
    double iv = s->desc.scan_interval;
    if (iv < 0) return;
    s->scan_interval_ns = (uint64_t)(iv * 1e9);
    s->scan_gap_ns = s->scan_interval_ns / 4 > 1000000000ull ? s->scan_interval_ns / 4 : 1000000000ull;
    if (s->scan_gap_ns > s->scan_interval_ns) s->scan_gap_ns = s->scan_interval_ns;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC); /* kvx_now_ns's clock */
    pthread_cond_init(&s->scan_cv, &ca);
    pthread_condattr_destroy(&ca);
    if (pthread_create(&s->scanner, NULL, kvx__store_scanner_main, s) != 0) {
        pthread_cond_destroy(&s->scan_cv);
        kvx__store_log(s, KVX_LOG_WARN, "cannot start the namespace scanner of %s: the capacity is "
                       "enforced over this process's view only", s->ns);
        return;
    }
    s->scanner_on = 1;
}

static void kvx__store_config_json(const kvx_store *s, kvx__buf *b) {
    const kvx_layout *l = &s->desc.layout;
    uint32_t i;
    kvx__buf_printf(b, "{\"format\": \"kvx-store\", \"version\": %d, \"config_hash\": \"%s\", "
                   "\"model\": ", KVX_STORE_FORMAT_VERSION, s->cfg_hex);
    kvx__buf_json_str(b, s->model);
    kvx__buf_printf(b, ", \"kv_fingerprint\": \"%016llx\", \"page_size\": %u, \"dtype\": ",
                   (unsigned long long)s->kv_fp, l->page_size);
    kvx__buf_json_str(b, s->dtype);
    kvx__buf_printf(b, ", \"dtype_size\": %u, \"num_kv_heads\": %u, \"mla\": %d, \"tp_rank\": %d, "
                   "\"tp_size\": %d, \"num_buffers\": %u, \"header_size\": %u, \"page_bytes\": "
                   "%llu, \"block_bytes\": %llu, \"item_len\": [", l->dtype_size, l->num_kv_heads,
                   l->mla != 0, s->desc.tp_rank, s->desc.tp_size, s->nb, s->hdr_size,
                   (unsigned long long)s->data_len, (unsigned long long)s->block_bytes);
    for (i = 0; i < s->nb; i++)
        kvx__buf_printf(b, "%s%llu", i ? ", " : "", (unsigned long long)l->buffers[i].item_len);
    kvx__buf_printf(b, "]}\n");
}

/* Writes <ns>/config.json when absent; refuses a namespace whose
   config.json names another configuration. */
static kvx_result kvx__store_config_file(kvx_store *s, char *why, size_t wl) {
    kvx__buf b;
    char old[1 << 16], tmp[96];
    ssize_t got;
    int fd, err = 0;
    kvx__buf_init(&b, &s->desc.allocator);
    fd = openat(s->ns_fd, "config.json", O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
    if (fd >= 0) {
        got = read(fd, old, sizeof old - 1);
        close(fd);
        if (got > 0) {
            kvx__json_doc doc;
            const kvx__json *h = NULL;
            memset(&doc, 0, sizeof doc);
            old[got] = 0;
            if (kvx__json_parse(&doc, &s->desc.allocator, old, (size_t)got, 4096) == KVX_OK)
                h = kvx__json_get(&doc, kvx__json_root(&doc), "config_hash");
            if (h && h->type == KVX_JSON_STRING) {
                char theirs[33];
                int same = h->str_len == 16 && !memcmp(h->str, s->cfg_hex, 16);
                snprintf(theirs, sizeof theirs, "%.*s", (int)(h->str_len < 32 ? h->str_len : 32),
                         h->str);
                kvx__json_free(&doc);
                if (same) return KVX_OK;
                return kvx__why(KVX_ERR_CORRUPT, why, wl, "%s/config.json describes "
                                      "configuration '%s', not %s: the directory was renamed or "
                                      "copied; move it away", s->ns, theirs, s->cfg_hex);
            }
            kvx__json_free(&doc);
        }
        kvx__store_log(s, KVX_LOG_WARN, "%s/config.json is unreadable; rewriting it", s->ns);
    }
    kvx__store_config_json(s, &b);
    if (b.oom) { kvx__buf_free(&b); return KVX_ERR_NO_MEMORY; }
    snprintf(tmp, sizeof tmp, "config.json%s%llu", s->tmp_tag,
             (unsigned long long)__atomic_add_fetch(&s->tmp_seq, 1, __ATOMIC_RELAXED));
    fd = openat(s->ns_fd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) err = errno;
    else {
        err = kvx__pio(fd, b.data, b.len, 0, 1);
        if (!err && s->desc.fsync && fsync(fd)) err = errno;
        if (close(fd) && !err) err = errno;
        if (!err && renameat(s->ns_fd, tmp, s->ns_fd, "config.json")) err = errno;
        if (err) unlinkat(s->ns_fd, tmp, 0);
    }
    kvx__buf_free(&b);
    if (err) {
        if (err < 0) err = EIO;
        return kvx__why(kvx__errno_result(err), why, wl, "cannot write %s/config.json: %s",
                              s->ns, strerror(err));
    }
    if (s->desc.fsync) kvx__store_fsync_dir(s->ns_fd, ".");
    return KVX_OK;
}

/* The 256 fan-out directories, made once (the first open of a namespace). */
static kvx_result kvx__store_fanout(kvx_store *s, char *why, size_t wl) {
    int i, made = 0, m = 0;
    struct stat st;
    if (!fstatat(s->ns_fd, "ff", &st, 0) && S_ISDIR(st.st_mode)) return KVX_OK; /* made last */
    for (i = 0; i < 256; i++) {
        char d[4];
        d[0] = kvx__store_hexd[i >> 4];
        d[1] = kvx__store_hexd[i & 15];
        d[2] = 0;
        if (kvx__mkdirat(s->ns_fd, d, 0755, &m)) { /* another node may be making it too */
            int err = errno;
            return kvx__why(kvx__errno_result(err), why, wl, "cannot create %s/%s: %s", s->ns,
                                  d, strerror(err));
        }
        made += m;
    }
    if (made && s->desc.fsync) kvx__store_fsync_dir(s->ns_fd, ".");
    return KVX_OK;
}

/* Opens <root>/<config-hash> without trusting links: the root through
   kvx__dir_open (made if missing; refused when another user owns it or
   could write in it), the namespace relative to it with O_NOFOLLOW, and
   checked the same way. */
static kvx_result kvx__store_open_ns(kvx_store *s, char *why, size_t wl) {
    int flags = s->desc.shared ? KVX__DIR_SHARED : 0, root_fd, err;
    unsigned mode = s->desc.shared ? 0770 : 0700;
    kvx_result r = kvx__dir_open(s->root, mode, KVX__DIR_CREATE | flags, &root_fd, why, wl);
    if (r != KVX_OK) return r;
    if (kvx__mkdirat(root_fd, s->cfg_hex, mode, NULL)) {
        err = errno;
        close(root_fd);
        return kvx__why(kvx__errno_result(err), why, wl, "cannot create %s: %s", s->ns,
                              strerror(err));
    }
    s->ns_fd = openat(root_fd, s->cfg_hex, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    err = errno;
    close(root_fd);
    if (s->ns_fd < 0) {
        if (err == ELOOP || err == ENOTDIR)
            kvx__set_why(why, wl, "refusing %s: it is a symbolic link or not a directory", s->ns);
        else
            kvx__set_why(why, wl, "cannot open %s: %s", s->ns, strerror(err));
        return err == ELOOP || err == ENOTDIR ? KVX_ERR_PERMISSION : kvx__errno_result(err);
    }
    return kvx__dir_check(s->ns_fd, s->ns, flags, why, wl);
}

/* A filesystem shared between hosts (its caches may be stale): NFS, SMB,
   FUSE (GlusterFS, CephFS-fuse, BeeGFS...), CephFS, Lustre, GPFS, OCFS2,
   GFS2, AFS, 9p. */
static int kvx__store_is_remote(int fd) {
    struct statfs f;
    unsigned long t;
    if (fstatfs(fd, &f)) return 0;
    t = (unsigned long)f.f_type;
    return t == 0x6969ul /* NFS */ || t == 0xFE534D42ul /* SMB2 */ || t == 0xFF534D42ul /* CIFS */ ||
           t == 0x517Bul /* SMB */ || t == 0x65735546ul /* FUSE */ || t == 0x00C36400ul /* Ceph */ ||
           t == 0x0BD00BD0ul /* Lustre */ || t == 0x47504653ul /* GPFS */ ||
           t == 0x7461636Ful /* OCFS2 */ || t == 0x01161970ul /* GFS2 */ ||
           t == 0x5346414Ful /* AFS */ || t == 0x01021997ul /* 9p */;
}

static const kvx__setting kvx__store_table[] = {
    KVX__SET_STR("KVX_STORE_DIR", kvx_store_desc, dir),
    KVX__SET_BYTES("KVX_STORE_CAPACITY", kvx_store_desc, capacity_bytes,
                   KVX__STORE_DEFAULT_CAPACITY, 1, 18446744073709551615.0),
    KVX__SET_INT("KVX_STORE_IO_THREADS", kvx_store_desc, io_threads, 4, 1, 256),
    KVX__SET_INT("KVX_STORE_FSYNC", kvx_store_desc, fsync, 0, 0, 1),
    KVX__SET_INT("KVX_STORE_SHARED", kvx_store_desc, shared, 0, 0, 1),
    KVX__SET_DBL("KVX_STORE_SCAN_INTERVAL", kvx_store_desc, scan_interval, 30, -1, 86400),
    KVX__SET_ENUM("KVX_LOG_LEVEL", kvx_store_desc, logger.level, "error|warn|info|debug"),
};

static kvx_result kvx__store_apply_env(kvx_store_desc *d, char *why, size_t wl) {
    kvx_result r = kvx__settings_apply(kvx__store_table, KVX__COUNT(kvx__store_table), d, why, wl);
    if (r != KVX_OK) return r;
    if (d->scan_interval != -1 && d->scan_interval < 0.05)
        return kvx__why(KVX_ERR_BAD_CONFIG, why, wl, "KVX_STORE_SCAN_INTERVAL / "
                              "desc.scan_interval is %g; use seconds in [0.05, 86400], 0 for the "
                              "default 30, or -1 for no periodic scan", d->scan_interval);
    if (!d->dir || !*d->dir) {
        static char def[64]; /* one value per process: the effective uid */
        snprintf(def, sizeof def, "/tmp/kvx_store-%u", (unsigned)geteuid());
        d->dir = def;
    }
    if (!d->model) d->model = "";
    if (!d->capacity_bytes) d->capacity_bytes = KVX__STORE_DEFAULT_CAPACITY;
    if (!d->io_threads) d->io_threads = 4;
    if (!d->logger.level) d->logger.level = KVX_LOG_WARN;
    if (d->tp_size <= 0) d->tp_size = 1;
    return KVX_OK;
}

static kvx_result kvx__store_check_desc(const kvx_store_desc *d, char *why, size_t wl) {
    kvx_result r;
    uint32_t i;
    if ((r = kvx_layout_validate(&d->layout, why, wl)) != KVX_OK) return r;
    for (i = 0; i < d->layout.num_buffers; i++)
        if (d->layout.buffers[i].mem != KVX_MEM_HOST)
            return kvx__why(KVX_ERR_INVALID_ARGUMENT, why, wl, "KV buffer %u is GPU memory: "
                                  "the block store reads and writes host memory; stage pages "
                                  "through pinned host buffers", i);
    if (KVX_STORE_HEADER_FIXED + 8ull * d->layout.num_buffers > KVX_STORE_HEADER_MAX - 4096)
        return kvx__why(KVX_ERR_INVALID_ARGUMENT, why, wl, "%u KV buffers do not fit a block "
                              "header", d->layout.num_buffers);
    if (d->tp_rank < 0 || d->tp_rank >= d->tp_size)
        return kvx__why(KVX_ERR_INVALID_ARGUMENT, why, wl, "tp_rank %d is outside tp_size %d",
                              d->tp_rank, d->tp_size);
    if (strlen(d->dir) > KVX__STORE_PATH - 256)
        return kvx__why(KVX_ERR_INVALID_ARGUMENT, why, wl, "store directory path is too long "
                              "(%zu bytes)", strlen(d->dir));
    return KVX_OK;
}

static char *kvx__store_strdup(const kvx_store *s, const char *str) {
    size_t n = strlen(str) + 1;
    char *c = (char *)kvx__store_alloc(s, n);
    if (c) memcpy(c, str, n);
    return c;
}


static void kvx__store_sha_str(kvx__sha256 *h, const char *str) {
    kvx__sha_u64(h, strlen(str));
    kvx__sha256_update(h, str, strlen(str));
}

/* Hashes, header geometry and the header template. */
static kvx_result kvx__store_geometry(kvx_store *s) {
    const kvx_layout *l = &s->desc.layout;
    kvx_layout kv = *l;
    kvx__sha256 h;
    uint8_t d[32], *t;
    uint32_t i;
    kv.aux = NULL;
    kv.num_aux = 0;
    s->kv_fp = kvx_layout_fingerprint(&kv);
    kvx__sha256_init(&h);
    kvx__sha256_update(&h, "kvx-store-v1", 13); /* with its NUL */
    kvx__store_sha_str(&h, s->model);
    kvx__sha_u64(&h, s->kv_fp);
    kvx__sha_u64(&h, l->page_size);
    kvx__store_sha_str(&h, s->dtype);
    kvx__sha_u64(&h, l->dtype_size);
    kvx__sha_u64(&h, (uint64_t)s->desc.tp_rank);
    kvx__sha_u64(&h, (uint64_t)s->desc.tp_size);
    kvx__sha256_final(&h, d);
    s->cfg_hash = kvx__le_r64(d);
    snprintf(s->cfg_hex, sizeof s->cfg_hex, "%016llx", (unsigned long long)s->cfg_hash);
    s->nb = l->num_buffers;
    s->data_len = kvx_layout_page_bytes(l);
    s->hdr_size = KVX_STORE_HEADER_FIXED + 8 * s->nb;
    if (s->data_len >= (64u << 10)) s->hdr_size = (s->hdr_size + 4095) & ~4095u;
    s->block_bytes = s->hdr_size + s->data_len;
    /* version 2 only where buf_crc[] fits the header version 1 would have:
       every block of a namespace keeps one size, both versions stay readable */
    s->fmt = KVX_STORE_HEADER_FIXED + 12ull * s->nb <= s->hdr_size ? 2 : 1;
    s->boff = (uint64_t *)kvx__store_alloc(s, (s->nb + 1) * sizeof *s->boff);
    s->x8n = (uint32_t *)kvx__store_alloc(s, s->nb * sizeof *s->x8n);
    if (!s->boff || !s->x8n) return KVX_ERR_NO_MEMORY;
    for (i = 0, s->boff[0] = 0; i < s->nb; i++) {
        s->boff[i + 1] = s->boff[i] + l->buffers[i].item_len;
        s->x8n[i] = kvx__store_x8n(l->buffers[i].item_len);
    }
    s->plan_at = ((size_t)s->hdr_size + KVX__STORE_IOV * sizeof(struct iovec) + 63) & ~(size_t)63;
    s->scratch_bytes = s->plan_at + sizeof(kvx_plan) + s->nb * sizeof(kvx_span);
    t = s->hdr_template = (uint8_t *)kvx__store_alloc(s, s->hdr_size);
    if (!t) return KVX_ERR_NO_MEMORY;
    memset(t, 0, s->hdr_size);
    memcpy(t, "KVXBLOCK", 8);
    kvx__le_w32(t + 8, s->fmt);
    kvx__le_w32(t + 12, s->hdr_size);
    kvx__le_w64(t + 24, s->cfg_hash);
    kvx__le_w32(t + 64, 1);
    kvx__le_w32(t + 68, s->nb);
    kvx__le_w64(t + 72, s->data_len);
    kvx__le_w32(t + 84, l->page_size);
    kvx__le_w64(t + 88, s->kv_fp);
    for (i = 0; i < s->nb; i++) kvx__le_w64(t + 96 + 8 * i, l->buffers[i].item_len);
    return KVX_OK;
}

static void kvx__store_tmp_tag(kvx_store *s) {
    uint64_t nonce = kvx__store_wall_ns() ^ ((uint64_t)(uintptr_t)s << 16) ^ kvx_now_ns();
    uint64_t r = 0;
    if (kvx__random_bytes(&r, sizeof r) == KVX_OK) nonce ^= r;
    snprintf(s->tmp_tag, sizeof s->tmp_tag, ".tmp.%ld-%08x.", (long)getpid(),
             (unsigned)(nonce ^ (nonce >> 32)));
}

static void kvx__store_start_workers(kvx_store *s) {
    int want = s->desc.io_threads - 1, i;
    if (want <= 0) return;
    s->workers = (kvx__store_worker *)kvx__store_alloc(s, (size_t)want * sizeof *s->workers);
    if (!s->workers) return;
    for (i = 0; i < want; i++) {
        kvx__store_worker *w = &s->workers[s->nworkers];
        w->s = s;
        w->scratch = kvx__store_alloc(s, s->scratch_bytes);
        if (!w->scratch) break;
        if (pthread_create(&w->th, NULL, kvx__store_worker_main, w) != 0) {
            kvx__store_free(s, w->scratch);
            break;
        }
        s->nworkers++;
    }
    if (s->nworkers < want)
        kvx__store_log(s, KVX_LOG_WARN, "started %d of %d store I/O threads", s->nworkers, want);
}

KVX_API void kvx_store_close(kvx_store *s) {
    int i;
    if (!s) return;
    if (s->scanner_on) {
        pthread_mutex_lock(&s->scan_mu);
        __atomic_store_n(&s->scan_stop, 1, __ATOMIC_RELAXED); /* also cuts a scan short */
        pthread_cond_signal(&s->scan_cv);
        pthread_mutex_unlock(&s->scan_mu);
        pthread_join(s->scanner, NULL);
        pthread_cond_destroy(&s->scan_cv);
    }
    pthread_mutex_lock(&s->pool_mu);
    s->pool_stop = 1;
    pthread_cond_broadcast(&s->pool_cv);
    pthread_mutex_unlock(&s->pool_mu);
    for (i = 0; i < s->nworkers; i++) {
        pthread_join(s->workers[i].th, NULL);
        kvx__store_free(s, s->workers[i].scratch);
    }
    kvx__store_free(s, s->workers);
    while (s->spare) {
        kvx__store_scratch *n = s->spare->next;
        kvx__store_free(s, s->spare);
        s->spare = n;
    }
    if (s->ns_fd >= 0) close(s->ns_fd);
    kvx__store_free(s, s->ents);
    kvx__store_free(s, s->slots);
    kvx__store_free(s, s->hdr_template);
    kvx__store_free(s, s->boff);
    kvx__store_free(s, s->x8n);
    kvx__store_free(s, s->bufs);
    kvx__store_free(s, s->model);
    kvx__store_free(s, s->dtype);
    kvx__store_free(s, s->root);
    pthread_mutex_destroy(&s->mu);
    pthread_mutex_destroy(&s->scan_run);
    pthread_mutex_destroy(&s->scan_mu);
    pthread_mutex_destroy(&s->pool_mu);
    pthread_cond_destroy(&s->pool_cv);
    pthread_cond_destroy(&s->pool_done);
    kvx__store_free(s, s);
}

KVX_API kvx_result kvx_store_open(const kvx_store_desc *desc, kvx_store **out, char *why,
                                  size_t wl) {
    kvx_store_desc d;
    kvx_store *s;
    kvx_result r;
    if (why && wl) why[0] = 0;
    if (!out) return KVX_ERR_INVALID_ARGUMENT;
    *out = NULL;
    if (!desc) return kvx__why(KVX_ERR_INVALID_ARGUMENT, why, wl, "store desc is NULL");
    d = *desc;
    if ((r = kvx__store_apply_env(&d, why, wl)) != KVX_OK) return r;
    if ((r = kvx__store_check_desc(&d, why, wl)) != KVX_OK) return r;
    s = (kvx_store *)kvx__alloc(&d.allocator, sizeof *s);
    if (!s) return kvx__why(KVX_ERR_NO_MEMORY, why, wl, "out of memory");
    memset(s, 0, sizeof *s);
    s->desc = d;
    s->ns_fd = -1;
    s->capacity = d.capacity_bytes;
    pthread_mutex_init(&s->mu, NULL);
    pthread_mutex_init(&s->scan_run, NULL);
    pthread_mutex_init(&s->scan_mu, NULL);
    pthread_mutex_init(&s->pool_mu, NULL);
    pthread_cond_init(&s->pool_cv, NULL);
    pthread_cond_init(&s->pool_done, NULL);
    s->bufs = (kvx_buffer *)kvx__store_alloc(s, d.layout.num_buffers * sizeof *s->bufs);
    s->model = kvx__store_strdup(s, d.model);
    s->dtype = kvx__store_strdup(s, d.layout.dtype ? d.layout.dtype : "");
    s->root = kvx__store_strdup(s, d.dir);
    r = KVX_ERR_NO_MEMORY;
    if (!s->bufs || !s->model || !s->dtype || !s->root) goto oom;
    memcpy(s->bufs, d.layout.buffers, d.layout.num_buffers * sizeof *s->bufs);
    s->desc.layout.buffers = s->bufs;
    s->desc.layout.aux = NULL; /* aux rows are not stored */
    s->desc.layout.num_aux = 0;
    s->desc.layout.dtype = s->dtype;
    s->desc.model = s->model;
    s->desc.dir = s->root;
    if (kvx__store_geometry(s) != KVX_OK) goto oom;
    snprintf(s->ns, sizeof s->ns, "%s/%s", s->root, s->cfg_hex);
    if ((r = kvx__store_open_ns(s, why, wl)) != KVX_OK) goto fail;
    s->remote = kvx__store_is_remote(s->ns_fd);
    kvx__store_tmp_tag(s);
    if ((r = kvx__store_config_file(s, why, wl)) != KVX_OK) goto fail;
    if ((r = kvx__store_fanout(s, why, wl)) != KVX_OK) goto fail;
    if ((r = kvx__store_rescan_run(s, 1, why, wl)) != KVX_OK) goto fail;
    kvx__store_start_workers(s);
    kvx__store_start_scanner(s);
    *out = s;
    return KVX_OK;
oom:
    kvx__set_why(why, wl, "out of memory");
fail:
    kvx_store_close(s);
    return r;
}

/* >>block store: scan and verify -------------------------------------------------------- */

/* Opens name in dirfd and checks it as a block file (see kvx_store_scan).
   hdr holds KVX_STORE_HEADER_MAX bytes, data data_cap bytes. */
static kvx_result kvx__store_check_file(int dirfd, const char *name, uint8_t *hdr,
                                        uint8_t *data, size_t data_cap, int check_data,
                                        const char *cfg_hex, kvx_store_block_info *info,
                                        struct stat *st, char *why, size_t wl) {
    int fd = openat(dirfd, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW), err;
    size_t want;
    char hex[65];
    uint32_t crc;
    int64_t bad_buf = -1;
    kvx_result r;
    memset(info, 0, sizeof *info);
    if (fd < 0) {
        err = errno;
        return kvx__why(kvx__errno_result(err), why, wl, "cannot open: %s", strerror(err));
    }
    if (fstat(fd, st)) {
        err = errno;
        close(fd);
        return kvx__why(kvx__errno_result(err), why, wl, "cannot stat: %s", strerror(err));
    }
    want = (uint64_t)st->st_size < KVX_STORE_HEADER_MAX ? (size_t)st->st_size : KVX_STORE_HEADER_MAX;
    if ((err = kvx__pio(fd, hdr, want, 0, 0)) > 0) {
        close(fd);
        return kvx__why(kvx__errno_result(err), why, wl, "cannot read: %s", strerror(err));
    }
    if ((r = kvx_store_header_parse(hdr, want, info, why, wl)) != KVX_OK) {
        close(fd);
        return r;
    }
    kvx_store_key_hex(&info->key, hex);
    if ((uint64_t)st->st_size != info->header_size + info->data_len) {
        r = kvx__why(KVX_ERR_CORRUPT, why, wl, "file is %lld bytes, its header says %llu "
                           "(torn or truncated)", (long long)st->st_size,
                           (unsigned long long)(info->header_size + info->data_len));
    } else if (strncmp(name, hex, 64)) {
        r = kvx__why(KVX_ERR_CORRUPT, why, wl, "holds key %.16s..., not the one in its name",
                           hex);
    } else if (cfg_hex && cfg_hex[0] && strtoull(cfg_hex, NULL, 16) != info->config_hash) {
        r = kvx__why(KVX_ERR_CORRUPT, why, wl, "belongs to configuration %016llx, not this "
                           "directory's %s", (unsigned long long)info->config_hash, cfg_hex);
    } else if (check_data &&
               (err = kvx__store_crc_data(fd, data, data_cap, info, &crc, &bad_buf)) != 0) {
        r = kvx__why(err < 0 ? KVX_ERR_CORRUPT : kvx__errno_result(err), why, wl,
                           "cannot read data: %s", err < 0 ? "short file" : strerror(err));
    } else if (check_data && crc != info->data_crc) {
        r = kvx__why(KVX_ERR_CORRUPT, why, wl, "data CRC32C mismatch: stored %08x, "
                           "computed %08x", info->data_crc, crc);
    } else if (check_data && bad_buf >= 0) {
        r = kvx__why(KVX_ERR_CORRUPT, why, wl, "buffer %lld's CRC32C mismatch: stored %08x",
                     (long long)bad_buf, kvx_store_block_buf_crc(info, (uint32_t)bad_buf));
    }
    close(fd);
    return r;
}

typedef struct kvx__store_scan {
    const char *ns;
    char cfg_hex[17];
    int check_data, stopped;
    kvx_store_scan_fn fn;
    void *user;
    uint8_t *hdr, *data;
    size_t data_cap;
    const kvx_allocator *al; /* of hdr and data: the store's, or libc for kvx_store_scan */
    /* verify */
    kvx_store *s;
    int remove_bad;
    kvx_store_verify_report *rep;
} kvx__store_scan;

static int kvx__store_scan_fn(void *user, int dirfd, const char *name, const char *rel) {
    kvx__store_scan *c = (kvx__store_scan *)user;
    kvx_store_block_info info;
    kvx_store_entry e;
    struct stat st;
    char why[KVX_ERROR_MAX], path[KVX__STORE_PATH + 300];
    if (!kvx__store_block_name(name, rel, NULL)) return 0;
    memset(&st, 0, sizeof st);
    why[0] = 0;
    memset(&e, 0, sizeof e);
    e.status = kvx__store_check_file(dirfd, name, c->hdr, c->data, c->data_cap, c->check_data,
                                     c->cfg_hex, &info, &st, why, sizeof why);
    if (e.status == KVX_ERR_NOT_FOUND) return 0; /* removed meanwhile */
    snprintf(path, sizeof path, "%s/%s", c->ns, rel);
    e.path = path;
    e.namespace_dir = c->ns;
    e.why = why;
    e.info = info.item_lens ? &info : NULL;
    e.file_bytes = (uint64_t)st.st_size;
    e.mtime_ns = (int64_t)kvx__store_ts_ns(&st.st_mtim);
    return c->fn(c->user, &e) ? 1 : 0;
}

static kvx_result kvx__store_scan_ns(kvx__store_scan *c, const char *ns, char *why, size_t wl) {
    const char *base = strrchr(ns, '/');
    int fd, err;
    base = base ? base + 1 : ns;
    c->ns = ns;
    c->cfg_hex[0] = 0;
    if (strlen(base) == 16 && kvx__store_is_hex(base, 16)) memcpy(c->cfg_hex, base, 17);
    fd = open(ns, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) {
        err = errno;
        return kvx__why(kvx__errno_result(err), why, wl, "cannot open %s: %s", ns,
                              strerror(err));
    }
    err = kvx__store_walk(fd, kvx__store_scan_fn, c);
    close(fd);
    if (err)
        return kvx__why(kvx__errno_result(err), why, wl, "cannot read %s: %s", ns,
                              strerror(err));
    return KVX_OK;
}

static int kvx__store_scan_alloc(kvx__store_scan *c) {
    c->data_cap = 1u << 20;
    c->hdr = (uint8_t *)kvx__alloc(c->al, KVX_STORE_HEADER_MAX);
    c->data = (uint8_t *)kvx__alloc(c->al, c->data_cap);
    if (c->hdr && c->data) return 0;
    kvx__free(c->al, c->hdr);
    kvx__free(c->al, c->data);
    return -1;
}

KVX_API kvx_result kvx_store_scan(const char *dir, int check_data, kvx_store_scan_fn fn,
                                  void *user, char *why, size_t wl) {
    kvx__store_scan c;
    kvx_result r = KVX_OK;
    char cfg[KVX__STORE_PATH];
    struct stat st;
    if (why && wl) why[0] = 0;
    if (!dir || !fn || strlen(dir) > KVX__STORE_PATH - 64) return KVX_ERR_INVALID_ARGUMENT;
    memset(&c, 0, sizeof c); /* c.al NULL, libc: a tool's call, no store */
    c.check_data = check_data;
    c.fn = fn;
    c.user = user;
    if (kvx__store_scan_alloc(&c)) return KVX_ERR_NO_MEMORY;
    snprintf(cfg, sizeof cfg, "%s/config.json", dir);
    if (!stat(cfg, &st)) {
        r = kvx__store_scan_ns(&c, dir, why, wl);
    } else {
        DIR *d = opendir(dir);
        struct dirent *e;
        if (!d) {
            int err = errno;
            r = kvx__why(kvx__errno_result(err), why, wl, "cannot open %s: %s", dir,
                               strerror(err));
        }
        while (d && r == KVX_OK && (e = readdir(d)) != NULL) {
            char ns[KVX__STORE_PATH];
            if (strlen(e->d_name) != 16 || !kvx__store_is_hex(e->d_name, 16)) continue;
            snprintf(ns, sizeof ns, "%s/%s", dir, e->d_name);
            if (stat(ns, &st) || !S_ISDIR(st.st_mode)) continue;
            r = kvx__store_scan_ns(&c, ns, why, wl);
        }
        if (d) closedir(d);
    }
    kvx__free(c.al, c.hdr);
    kvx__free(c.al, c.data);
    return r;
}

static int kvx__store_verify_fn(void *user, int dirfd, const char *name, const char *rel) {
    kvx__store_scan *c = (kvx__store_scan *)user;
    kvx_store *s = c->s;
    kvx_store_block_info info;
    kvx_store_key key;
    struct stat st;
    char why[KVX_ERROR_MAX];
    kvx_result r;
    if (kvx__store_tmp_name(name)) {
        c->rep->temporary++;
        return 0;
    }
    if (!kvx__store_block_name(name, rel, &key)) return 0;
    memset(&st, 0, sizeof st);
    why[0] = 0;
    r = kvx__store_check_file(dirfd, name, c->hdr, c->data, c->data_cap, 1, s->cfg_hex, &info,
                              &st, why, sizeof why);
    if (r == KVX_ERR_NOT_FOUND) return 0;
    c->rep->blocks++;
    if (r == KVX_OK && kvx__store_check_header(s, c->hdr, &key, why, sizeof why)) r = KVX_ERR_CORRUPT;
    if (r == KVX_OK) {
        c->rep->ok++;
        c->rep->bytes_ok += (uint64_t)st.st_size;
        pthread_mutex_lock(&s->mu);
        kvx__store_idx_note(s, &key, s->block_bytes, kvx__store_ts_ns(&st.st_mtim), 0);
        pthread_mutex_unlock(&s->mu);
        return 0;
    }
    c->rep->bad++;
    if (r != KVX_ERR_CORRUPT) {
        kvx__store_log(s, KVX_LOG_WARN, "block %s/%s: %s", s->ns, rel, why);
        return 0;
    }
    if (c->remove_bad) {
        kvx__store_bad(s, dirfd, name, rel, &key, &st, why);
        c->rep->removed++;
    } else {
        kvx__store_log(s, KVX_LOG_WARN, "block %s/%s is unusable: %s", s->ns, rel, why);
    }
    return 0;
}

KVX_API kvx_result kvx_store_verify(kvx_store *s, int remove_bad, kvx_store_verify_report *out) {
    kvx__store_scan c;
    kvx_store_verify_report rep;
    int err;
    if (out) memset(out, 0, sizeof *out);
    if (!s) return KVX_ERR_INVALID_ARGUMENT;
    memset(&c, 0, sizeof c);
    memset(&rep, 0, sizeof rep);
    c.s = s;
    c.al = &s->desc.allocator;
    c.remove_bad = remove_bad;
    c.rep = &rep;
    if (kvx__store_scan_alloc(&c)) return KVX_ERR_NO_MEMORY;
    err = kvx__store_walk(s->ns_fd, kvx__store_verify_fn, &c);
    kvx__free(c.al, c.hdr);
    kvx__free(c.al, c.data);
    if (out) *out = rep;
    if (err) {
        kvx__store_log(s, KVX_LOG_ERROR, "cannot read %s: %s", s->ns, strerror(err));
        return kvx__errno_result(err);
    }
    return KVX_OK;
}

#ifdef __cplusplus
}
#endif
#endif /* KVX_STORE_IMPL_INCLUDED */

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
