/* kvx_file.h - v0.1.0 - the file transport: KV pages through a local or shared filesystem

   The prefill writes each chunk's KV pages straight from its pool into a
   private directory, renamed to <KVX_FILE_DIR>/room_<room> (the commit);
   the decode side reads them straight into its destination pages and
   verifies every CRC32C before Success (DATA PATH). Nothing runs between
   the two: the directory may be on NFS, Lustre, CephFS or GlusterFS.

   CONTENTS (section markers: search for ">>name")
     >>file: helpers, authentication, formats
     >>file transport: engine, sender, receiver

   DO THIS
       #define KVX_IMPLEMENTATION
       #include "kvx_file.h"         (includes kvx_boot.h and kvx.h)
       kvx_file_register();          (once; then desc.transport = "file")
     or set desc.backend = kvx_file_backend().

   DATA PATH
     Prefill: kvx__file_sender_send plans the chunk and queues its stripes;
     each (kvx__fsend_stripe -> kvx__fstripe_work -> kvx__stripe_io) writes
     pool pages into kv_chunk_<i>.bin with pwritev along the plan
     (kvx__plan_io; GPU pools through a pinned stage: kvx__plan_io_staged);
     kvx__file_finish_send writes state.bin (the request's state rows,
     kvx__state_io), metadata.bin (aux rows) and transfer_done,
     kvx__file_commit renames the room in. Decode: kvx__frecv_start checks
     transfer_done (the state count first) and each meta against the layout,
     kvx__frecv_read_all / kvx__frecv_stripe
     preadv straight into the destination pages (same plan helpers) and
     check the CRC32C, kvx__frecv_finish copies metadata.bin to the aux rows
     and state.bin to the state rows (checking its size and CRC32C).

   EXAMPLE (one request, prefill and decode; error handling shortened)
       // given: kvx_layout layout; const int32_t *src_pages, *dst_pages;
       // given: uint32_t n; int32_t aux_slot; void idle(void);
       kvx_file_register();                  // makes "file" a transport name
       kvx_engine *e;  char why[KVX_ERROR_MAX];
       kvx_room_desc rd = {0};  rd.room = 42;   // the router's bootstrap_room
       kvx_engine_desc d = {0};              // the prefill process
       d.role = KVX_ROLE_PREFILL;  d.transport = "file";  d.layout = layout;
       d.file.dir = "/mnt/shared/kvx";       // the same directory on both sides
       if (kvx_engine_create(&d, &e, why, sizeof why)) { puts(why); return; }
       kvx_sender *s;  kvx_sender_create(e, &rd, &s);  // WAITING_FOR_INPUT at once
       kvx_sender_init(s, n, aux_slot);
       kvx_sender_send(s, src_pages, n);     // or once per prefill chunk
       while (kvx_sender_poll(s) == KVX_POLL_TRANSFERRING) idle();  // room renamed in
       if (kvx_sender_poll(s) == KVX_POLL_FAILED) puts(kvx_sender_error(s));
       kvx_sender_destroy(s);  kvx_engine_destroy(e);
       kvx_engine_desc dd = {0};  // the decode process (starts before or after)
       dd.role = KVX_ROLE_DECODE;  dd.transport = "file";  dd.layout = layout;
       dd.file.dir = "/mnt/shared/kvx";
       kvx_engine *de;  kvx_engine_create(&dd, &de, why, sizeof why);
       kvx_receiver *r;  kvx_receiver_create(de, &rd, &r);
       kvx_receiver_init(r, dst_pages, n, aux_slot);
       while (kvx_receiver_poll(r) == KVX_POLL_TRANSFERRING) idle();  // read, verified
       if (kvx_receiver_poll(r) == KVX_POLL_FAILED) puts(kvx_receiver_error(r));
       kvx_receiver_destroy(r);  kvx_engine_destroy(de);

   COMPILE-TIME MACROS: none of its own (kvx.h's).

   ENVIRONMENT (read at engine creation; kvx__file_table; kvx.h's settings
   rule: each overrides its desc.file field, 0 = default, out of range fails)
     KVX_FILE_DIR         (desc.file.dir) holds the rooms (/tmp/kvx_file-<uid>)
     KVX_FILE_SHARED      (desc.file.shared) 0: the directory is this user's:
                          made 0700 if missing; refused, naming it, its owner
                          and mode, when another user (not root) owns it or
                          group or others may write in it without the sticky
                          bit. 1: shared with the group: another owner and
                          group write are accepted, rooms are made 0770,
                          files 0660 (give the directory mode 2770).     (0)
     KVX_FILE_TIMEOUT     (desc.file.timeout_s) seconds a receiver waits for
                          transfer_done after init, then fails with
                          KVX_ERR_TIMEOUT; range [0.001, 1e6]          (300)
     KVX_FILE_FSYNC       (desc.file.fsync) 0: no fsync; files are written
                          under a temporary name and renamed, so no reader
                          sees a torn file, but a power failure may lose
                          data. 1: fsync each file before its rename and the
                          room directory after it: transfer_done is durable
                          and everything before it is on the server first
                          (use on shared filesystems).                   (0)
     KVX_FILE_KEEP        (desc.file.keep) 1: leave room directories after a
                          receiver is done. FSYNC, KEEP, SHARED take 0 or 1 (0)
     KVX_FILE_SETTLE      (desc.file.settle_s) seconds a receiver keeps
                          looking for a file transfer_done lists that this
                          node does not see yet or sees shorter than its
                          meta; then the room fails as corrupt. [0.001, 3600] (2)
     KVX_FILE_IO_THREADS  (desc.file.io_threads) engine's I/O threads [1, 256] (4)
     KVX_FILE_TTL         (desc.file.ttl_s) seconds; this user's room
                          directories and failure markers older than this
                          are removed when an engine starts (never another
                          user's, never through a link). [60, 1e9]     (3600)
     KVX_FILE_STRIPE      (desc.file.stripe_bytes) bytes one worker reads or
                          writes at a time; [4096, 1 GiB]            (16 MiB)
     KVX_FILE_PREFILL_TP  (desc.file.prefill_tp) decode: the prefill instance's attention TP size, to
                          find this rank's contributors (PARALLEL LAYOUTS);
                          0 = this engine's own desc.boot.tp_size. [1, 1024] (0)
     KVX_FILE_PREFILL_PP  (desc.file.prefill_pp) decode: the prefill's PP size; equal to this
                          engine's desc.boot.pp_size, or this one's PP size
                          is 1; 0 = this engine's own. [1, 1024]           (0)
     KVX_FILE_DECODE_TP   (desc.file.decode_tp) prefill: the decode instance's attention TP size, so
                          an MLA prefill rank knows whether it is a dummy
                          (kvx_mla_dummy); 0 = this engine's own. [1, 1024] (0)
     KVX_AUTH_KEY / desc.auth_key (kvx.h): with a key, every meta,
                          transfer_done and transfer_failed carries an HMAC
                          line; a receiver with a key refuses a room whose
                          files lack it or fail it.

   THREAD SAFETY
     As kvx.h. I/O runs on the engine's worker threads; kvx_receiver_destroy
     waits until no worker touches the room's pages.

   LAYER-WISE SEND (kvx_sender_send_layers; kvx_backend.layerwise = 1)
     A chunk sent a layer range at a time reaches kvx__file_sender_send as
     parts; kvx__fsend_part writes each part as soon as it is handed over,
     into the same kv_chunk_<i>.bin at the whole chunk's packed offsets
     (kvx_chunk_gather gives the part's spans there), in pieces of at most
     KVX_FILE_STRIPE bytes queued behind the earlier parts on the I/O
     threads, each with its CRC32C (kvx__fpart_segs; host pools: one
     in-order writer per part plus checksum pieces, GPU pools: staged
     pieces). The file is opened at the first part (O_CREAT | O_EXCL |
     O_NOFOLLOW in the private room being built, as a whole chunk's) and
     shared by the parts (kvx__fchunk). When the last part is handed over
     and every part's pieces are written, the pieces must tile the file
     exactly once (else the room fails with a sentence) and their CRC32Cs
     combine into the file's (kvx__fchunk_end); only then is the chunk
     counted, its meta written, and after the room's last chunk the room
     finished and committed as ever. A part is never counted as a chunk.
     The files are the same as a whole chunk's: the ON DISK format does not
     change, a reader of version 4 reads rooms sent layer-wise, and the
     all-layer path is untouched. A room is still put in place whole at
     its commit (CONSISTENCY 1): the decode side reads it after the last
     layer's bytes and meta are written, so what layer-wise saves is the
     prefill's writing of every layer but the last after its compute; the
     decode's reading still follows the commit. A failure between layers
     (a refused range: the core's sentence; a write error; a killed
     process) leaves the room uncommitted or committed with
     transfer_failed, as for a whole chunk: the receiver fails, never
     Success.

   SAFETY ON A SHARED HOST
     Rooms and files are created, opened and removed relative to directory
     descriptors, never through a link (openat / mkdirat / unlinkat /
     renameat, O_NOFOLLOW, O_DIRECTORY, O_EXCL for every new file; temporary
     names carry a random part). A room directory that is a link, not a
     directory, or another user's is refused by both sides with a sentence.
     transfer_failed is created once (link(2)): the first reason stays.

   PARALLEL LAYOUTS (kvx.h's; the rank is desc.boot.tp_size/tp_rank/
   pp_size/pp_rank, 0 = 1 rank)
     Each prefill rank writes its own room directory, <R> below: room_<room>
     when its instance has one rank (TP 1, PP 1), else
     room_<room>.tp<tp_rank>.pp<pp_rank>; each holds full pages of what that
     rank holds, and its metas record the rank's shape (num_kv_heads,
     head_begin, layer_begin, item_lens, mla, TP/PP size and rank). A decode
     rank reads the directories of its contributors (SGLang's mapping):
     prefill TP >= decode TP (ratio k): prefill TP ranks d*k .. d*k+k-1;
     prefill TP < decode TP (ratio k): prefill rank d/k, which k decode
     ranks read; decode PP = prefill PP: its own PP rank; decode PP = 1:
     every prefill PP rank. Each contributor's shape is checked with
     kvx_layout_overlap (the room fails with its sentence, naming the
     prefill rank) and its chunks are scattered with kvx_plan_scatter_from:
     a contiguous, whole plan is read with preadv straight into the pages;
     a plan that takes part of the file or strided rows reads each stripe
     into a staging buffer (checksummed there) and copies the rows out
     (measured against preadv with one iovec per pool row, IOV_MAX-bounded,
     for TP 4 -> 2 in bench_file: 2.3-2.5 against 1.8-2.0 GB/s). The
     aux and state rows come only from the contributor kvx_layout_overlap
     names. The
     room succeeds when every contributor's every chunk is placed and the
     bytes placed equal the pages' bytes (each byte once). MLA: a dummy
     prefill rank (kvx_mla_dummy with KVX_FILE_DECODE_TP) writes nothing and
     succeeds at once; decode ranks never look for it. A contributor's
     transfer_failed or .failed marker fails the room naming that rank; a
     contributor that never commits fails it at KVX_FILE_TIMEOUT, naming
     the first rank still missing. A room several decode ranks read is
     removed by the last of them (each leaves reader_<tp>.<pp> in it).
     Without a bootstrap channel a decode failure reaches no prefill (it
     finishes and its room is swept by KVX_FILE_TTL); with kvx_boot it
     does through the control channel.

   HYBRID STATE (kvx.h's)
     Prefill: with its last chunk (kvx_sender_send_state) every prefill
     rank that writes a room also writes state.bin: for each state buffer
     the rows of the request's state indices, in index order (host rows
     with pwrite; GPU rows through a pinned stage with desc.mem, whose copy
     functions engine creation then requires). Decode: the state count in
     transfer_done must equal the indices this decode rank gave
     (kvx_receiver_init_state), else the room fails with "prefill sent K
     state indices, this decode asked for M"; the rows come only from the
     contributor that writes the aux rows (kvx_layout_overlap's sends_aux;
     an MLA dummy writes nothing), before Success. kvx_layout_overlap's
     refusals (PP, heterogeneous TP on non-MLA) fail the room with its
     sentence. With kvx_boot the decode's room frame carries its state
     indices (on_room): a prefill whose count differs fails the room with
     the same sentence at its last chunk (or at the frame, whichever comes
     second) and tells the decode. Without it the prefill does not learn of
     a count mismatch: it succeeds when its room is committed (the file
     transport has no back channel after that; a decode refusal while a
     contributor still writes stops it through <R>.aborted).

   ON DISK (format version 4; all integers little-endian; see README.md)
     <R>/kv_chunk_<i>.bin              chunk i's pages, buffer-major: buffer
                                       b starts at offset[b] = num_pages *
                                       sum(item_len[0..b-1]), its page j at
                                       offset[b] + j * item_len[b]
     <R>/kv_chunk_<i>.bin.meta         JSON, see kvx_file_read_meta
     <R>/metadata.bin                  the sender's aux rows: aux buffer 0's
                                       row, then 1's ...
     <R>/state.bin                     the request's state rows, when it gave
                                       state indices: state buffer 0's rows
                                       (in the order of the indices), then
                                       1's ...; state_count * sum of
                                       state_item_lens bytes
     <R>/transfer_done                 JSON, written last
     <R>/transfer_failed               JSON {"reason": ..., "result": ...}
                                       when the sender failed or aborted;
                                       never rewritten
     <R>.failed                        (beside the room) the same, when the
                                       room could not be put in place
     <R>.tmp.<pid>.<16 hex>/           (beside) the room being built, renamed
                                       to <R> when complete or failed
     <R>.old.<pid>.<16 hex>/           (beside) an earlier room of that id,
                                       moved aside by a new commit, removed
     <R>/reader_<tp>.<pp>              left by decode rank (tp, pp) when
                                       several decode ranks read <R>
     A chunk sent layer-wise (LAYER-WISE SEND) is the same kv_chunk_<i>.bin
     and meta: nothing on disk tells the two apart.
     Other temporary files end in ".tmp.<pid>.<16 hex digits>". Temporaries
     are never read; every name starts with "room_", so KVX_FILE_TTL sweeps
     what a killed process left.
     Since version 2: each meta, transfer_done and transfer_failed is one line of
     JSON, followed, when the writer has an auth key, by one line
       mac hmac-sha256 <64 lowercase hex digits>
     = HMAC-SHA-256(key, "kvx-file-v2" 0x00 <file name> 0x00 <the JSON line
     with its newline>), <file name> being "transfer_done", "transfer_failed"
     or "kv_chunk_<i>.bin.meta". The CRC32C of every chunk (in its meta) and
     of metadata.bin and state.bin (in transfer_done) lie inside the
     authenticated bytes.
     (Version 1 had no MAC line. Version 3 adds to each meta
     "head_begin", "layer_begin", "tp_size", "tp_rank", "pp_size",
     "pp_rank" and names each rank's room <R> as PARALLEL LAYOUTS says.
     Version 4 (this one) adds to transfer_done "state_type" (KVX_STATE_*),
     "state_item_lens" (one per state buffer, at most KVX_MAX_STATE, each
     1..2^28), "state_count" (state indices the prefill gave, at most
     KVX_MAX_PAGES), "state_bytes" (= state_count * sum(state_item_lens))
     and "state_crc32c" (of state.bin), and the file state.bin; all are
     checked before use and lie inside the MAC. The MAC's domain string
     stays "kvx-file-v2". Other versions are refused with a sentence.)

   CONSISTENCY (what the file transport needs from a shared filesystem)
     1. rename(2) of a directory within KVX_FILE_DIR is atomic: another node
        finds no room_<room> or the whole directory with every file written
        before the rename (local filesystems, NFS, Lustre, CephFS, GlusterFS;
        with KVX_FILE_FSYNC=1 all of it is on stable storage first).
     2. A new name is eventually seen by a fresh lookup on another node; a
        cached negative lookup (NFS lookupcache=all, attribute caches) only
        delays the receiver, never fails it.
     3. mkdir may answer wrongly under a concurrent lookup of the same name
        from another node (GlusterFS: EEXIST for a directory its brick then
        removed): the sender only makes directories under fresh random
        names, and kvx__mkdirat (kvx.h) checks each answer with a lookup
        and retries, bounded.
     4. A listed file missing or shorter than its meta is looked for again
        for KVX_FILE_SETTLE before failing; a room is never taken for whole
        on a size: every chunk's size and CRC32C, and the aux and state rows' CRC32C,
        are checked against the authenticated metas and transfer_done.
     5. A failing sender writes transfer_failed into its room and puts the
        room in place (else room_<room>.failed beside it), so the receiver
        learns it at its next look.
     The receiver never caches the room directory: each look opens it afresh
     (one LOOKUP and one GETATTR per pending room per progress turn on a
     network filesystem).

   WITH A BOOTSTRAP ADDRESS (kvx_boot.h)
     Optional: a prefill engine given desc.bootstrap_addr, desc.boot.port or
     KVX_BOOTSTRAP_PORT runs kvx_boot's bootstrap server and control listener;
     a receiver whose room (or engine) has a bootstrap address connects. The
     sender then waits in BOOTSTRAPPING for the room frame (both sides must
     agree on the page count), reports Success or failure over the control
     channel, and aborts travel both ways at once; the decode side learns
     within KVX_HEARTBEAT_INTERVAL x KVX_HEARTBEAT_MAX_FAILURE that a prefill
     died instead of waiting for KVX_FILE_TIMEOUT. The bytes still go
     through the files and are verified before Success.

   LICENSE: MIT, as kvx.h.
*/
#ifndef KVX_FILE_H_INCLUDED
#define KVX_FILE_H_INCLUDED

#include "kvx.h"
#include "kvx_boot.h"

#if KVX_VERSION_MAJOR != 0
#error "kvx_file.h needs kvx.h major version 0"
#endif

#ifdef __cplusplus
extern "C" {
#endif

#define KVX_FILE_FORMAT_VERSION 4

/* The file transport's backend table. */
KVX_API const kvx_backend *kvx_file_backend(void);
/* Makes "file" known to desc.transport. Thread-safe, idempotent. */
KVX_API kvx_result kvx_file_register(void);

/* A parsed kv_chunk_<i>.bin.meta. */
typedef struct kvx_file_chunk_info {
    uint32_t version;
    uint64_t room;
    uint32_t chunk, first_page, num_pages;
    uint64_t bytes;       /* size of the .bin */
    uint32_t crc32c;      /* of the whole .bin */
    uint64_t fingerprint; /* kvx_layout_fingerprint of the sender */
    uint32_t page_size, dtype_size, num_kv_heads, mla;
    uint32_t head_begin, layer_begin; /* the writer's slice of the model */
    uint32_t tp_size, tp_rank, pp_size, pp_rank; /* the writer's rank */
    char dtype[32];
    uint32_t num_buffers;
    uint64_t *item_lens;  /* num_buffers entries */
    uint64_t *offsets;    /* num_buffers entries */
    const kvx_allocator *allocator; /* the arrays' (NULL = libc) */
} kvx_file_chunk_info;

/* A parsed transfer_done. */
typedef struct kvx_file_done_info {
    uint32_t version;
    uint64_t room;
    uint32_t chunks, total_pages;
    uint64_t fingerprint;
    int32_t aux_index;    /* the sender's slot, -1 = no aux */
    uint32_t num_aux;
    uint64_t aux_item_lens[KVX_MAX_AUX];
    uint64_t aux_bytes;   /* size of metadata.bin */
    uint32_t aux_crc32c;
    /* hybrid state (HYBRID STATE in kvx.h; version 4): the writer's state
       buffers and the request's state rows in state.bin */
    uint32_t num_state, state_type;
    uint64_t state_item_lens[KVX_MAX_STATE];
    uint32_t state_count; /* state indices the prefill gave (rows per buffer) */
    uint64_t state_bytes; /* size of state.bin: state_count * sum(state_item_lens) */
    uint32_t state_crc32c;
} kvx_file_done_info;

/* Parse and check one meta / transfer_done file (size limits, types, that
   offsets and byte counts agree with each other). KVX_ERR_NOT_FOUND when
   absent, KVX_ERR_CORRUPT with a sentence when malformed. */
KVX_API kvx_result kvx_file_read_meta(const char *path, kvx_file_chunk_info *out, char *why,
                                      size_t why_len);
KVX_API void kvx_file_chunk_info_free(kvx_file_chunk_info *c);
/* The same checks on text already in memory (name is used in messages).
   Pure: no I/O. These are what the fuzzers exercise. */
KVX_API kvx_result kvx_file_parse_meta(const char *text, size_t len, const char *name,
                                       kvx_file_chunk_info *out, char *why, size_t why_len);
KVX_API kvx_result kvx_file_parse_done(const char *text, size_t len, const char *name,
                                       kvx_file_done_info *out, char *why, size_t why_len);
KVX_API kvx_result kvx_file_read_done(const char *path, kvx_file_done_info *out, char *why,
                                      size_t why_len);

/* CRC32C of bytes [off, off+len) of an open file (for tools). */
KVX_API kvx_result kvx_file_crc32c(int fd, uint64_t off, uint64_t len, uint32_t *crc);


#ifdef __cplusplus
}
#endif
#endif /* KVX_FILE_H_INCLUDED */

#if defined(KVX_IMPLEMENTATION) && !defined(KVX_FILE_IMPL_INCLUDED)
#define KVX_FILE_IMPL_INCLUDED

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <fcntl.h>
#include <unistd.h>
#include <dirent.h>
#include <limits.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>

#ifdef __cplusplus
extern "C" {
#endif

/* >>file: helpers ----------------------------------------------------------- */

#define KVX__FILE_PATH 4096
#define KVX__FILE_META_MAX (1u << 20)
#define KVX__FILE_MAX_CHUNKS (1u << 20)
#define KVX__FILE_IOV 512

/* snprintf into a KVX__FILE_PATH buffer (paths are bounded: the directory
   is checked to be short at engine start). */
static void kvx__pathf(char *out, const char *fmt, ...) KVX_PRINTF(2, 3);
static void kvx__pathf(char *out, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(out, KVX__FILE_PATH, fmt, ap);
    va_end(ap);
}

/* A fresh 64-bit value for temporary names: a name another user cannot
   guess (O_EXCL | O_NOFOLLOW refuse a planted one anyway). */
static uint64_t kvx__file_nonce(void) {
    static uint64_t seed;
    static uint64_t ctr;
    uint64_t s = __atomic_load_n(&seed, __ATOMIC_RELAXED), z;
    if (!s) {
        if (kvx__random_bytes(&s, sizeof s) != KVX_OK) s = 0;
        s ^= kvx_now_ns() ^ ((uint64_t)getpid() << 40);
        s |= 1;
        __atomic_store_n(&seed, s, __ATOMIC_RELAXED);
    }
    z = s + __atomic_add_fetch(&ctr, 1, __ATOMIC_RELAXED) * 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Opens `name` in directory dfd for reading: never through a link, only a
   regular file (a FIFO would block, a device is nobody's chunk). `shown`
   names it in the sentence. */
static int kvx__open_reg_at(int dfd, const char *name, const char *shown, kvx_result *res,
                            char *why, size_t wl) {
    int fd = openat(dfd, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
    struct stat st;
    if (fd < 0) {
        int err = errno;
        if (err == ELOOP) {
            kvx__set_why(why, wl, "refusing %s: it is a symbolic link", shown);
            *res = KVX_ERR_PERMISSION;
        } else {
            kvx__set_why(why, wl, "cannot open %s: %s", shown, strerror(err));
            *res = err == ENOENT ? KVX_ERR_NOT_FOUND : kvx__errno_result(err);
        }
        return -1;
    }
    if (fstat(fd, &st) || !S_ISREG(st.st_mode)) {
        kvx__set_why(why, wl, "refusing %s: it is not a regular file", shown);
        close(fd);
        *res = KVX_ERR_PERMISSION;
        return -1;
    }
    *res = KVX_OK;
    return fd;
}

static kvx_result kvx__read_small_at(const kvx_allocator *a, int dfd, const char *name,
                                     const char *shown, char **out, size_t *len, size_t max,
                                     char *why, size_t wl) {
    kvx_result r;
    int fd = kvx__open_reg_at(dfd, name, shown, &r, why, wl);
    struct stat st;
    char *buf = NULL;
    int e;
    *out = NULL;
    if (fd < 0) return r;
    if (fstat(fd, &st) || (uint64_t)st.st_size > max) {
        kvx__set_why(why, wl, "%s is %lld bytes, more than the %zu allowed", shown,
                     (long long)st.st_size, max);
        r = KVX_ERR_CORRUPT;
    } else if (!(buf = (char *)kvx__alloc(a, (size_t)st.st_size + 1))) {
        r = KVX_ERR_NO_MEMORY;
    } else if ((e = kvx__pio(fd, buf, (size_t)st.st_size, 0, 0)) != 0) {
        kvx__set_why(why, wl, "cannot read %s: %s", shown, e < 0 ? "short read" : strerror(e));
        kvx__free(a, buf);
        r = KVX_ERR_IO;
    } else {
        buf[st.st_size] = 0;
        *out = buf;
        *len = (size_t)st.st_size;
    }
    close(fd);
    return r;
}

static kvx_result kvx__read_small(const char *path, char **out, size_t *len, size_t max,
                                  char *why, size_t wl) {
    return kvx__read_small_at(NULL, AT_FDCWD, path, path, out, len, max, why, wl);
}

/* Creates a new temporary file next to `name` in dfd, exclusively and
   never through a link: "<name>.tmp.<pid>.<nonce>" (retried on a clash). */
static int kvx__create_tmp_at(int dfd, const char *name, char *tmp, size_t tmp_len,
                              unsigned mode) {
    int i, fd = -1;
    for (i = 0; i < 16; i++) {
        snprintf(tmp, tmp_len, "%s.tmp.%ld.%016llx", name, (long)getpid(),
                 (unsigned long long)kvx__file_nonce());
        fd = openat(dfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, (mode_t)mode);
        if (fd >= 0 || errno != EEXIST) break;
    }
    return fd;
}

/* Writes data to a new file dfd/name, never through a link. fresh: in the
   sender's private directory nobody reads a file before the commit, so it
   is created under its name (O_EXCL), with no temporary name and rename.
   Otherwise through a new temporary file, put in place only if no file of
   that name exists (link(2), then unlink of the temporary): the first
   writer wins, and KVX_OK is returned either way. `shown` is the directory
   for sentences. */
static kvx_result kvx__write_at(int dfd, const char *shown, const char *name, const void *data,
                                size_t len, int do_fsync, int fresh, unsigned mode, char *why,
                                size_t wl) {
    char tmp[256];
    const char *made = fresh ? name : tmp;
    int fd, err = 0;
    fd = fresh ? openat(dfd, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
                        (mode_t)mode)
               : kvx__create_tmp_at(dfd, name, tmp, sizeof tmp, mode);
    if (fd < 0) {
        err = errno;
        kvx__set_why(why, wl, "cannot create %s/%s: %s", shown, made, strerror(err));
        return kvx__errno_result(err);
    }
    err = kvx__write_all(fd, data, len);
    if (!err && do_fsync && fsync(fd)) err = errno;
    if (close(fd) && !err) err = errno;
    if (!err && !fresh) {
        if (linkat(dfd, tmp, dfd, name, 0)) {
            err = errno;
            if (err == EPERM || err == ENOTSUP || err == EXDEV || err == EMLINK) {
                /* no hard links on this filesystem: check, then rename */
                struct stat st;
                err = 0;
                if (fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0) err = EEXIST;
                else if (renameat(dfd, tmp, dfd, name)) err = errno;
            }
        }
        (void)unlinkat(dfd, tmp, 0);
        if (err == EEXIST) return KVX_OK; /* the first one stays */
    }
    if (err) {
        kvx__set_why(why, wl, "cannot write %s/%s: %s", shown, name, strerror(err));
        (void)unlinkat(dfd, made, 0);
        return kvx__errno_result(err);
    }
    return KVX_OK;
}

/* Removes every entry but subdirectories of an open directory (links are
   removed, never followed). */
static void kvx__empty_dir(int dfd) {
    int fd = openat(dfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    DIR *d;
    struct dirent *de;
    if (fd < 0) return;
    if (!(d = fdopendir(fd))) { close(fd); return; }
    while ((de = readdir(d)) != NULL) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
        (void)unlinkat(dfd, de->d_name, 0);
    }
    closedir(d);
}

/* Removes room directory base/name and its files without following a
   link; owner_only: only when this user owns it. */
static void kvx__rm_room_at(int base, const char *name, int owner_only) {
    int fd = openat(base, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    struct stat st;
    if (fd < 0) return;
    if (fstat(fd, &st) || (owner_only && st.st_uid != geteuid())) {
        close(fd);
        return;
    }
    kvx__empty_dir(fd);
    close(fd);
    (void)unlinkat(base, name, AT_REMOVEDIR);
}

/* >>file: authentication ------------------------------------------------------ */

/* A small file (meta, transfer_done, transfer_failed): one line of JSON,
   then, with an auth key, the MAC line (the doc block's ON DISK). */
#define KVX__FILE_MAC_TAG "mac hmac-sha256 "
#define KVX__FILE_MAC_LINE (sizeof KVX__FILE_MAC_TAG - 1 + 64 + 1)

static void kvx__file_mac(const uint8_t *key, size_t key_len, const char *name,
                          const char *json, size_t len, uint8_t out[KVX_MAC_BYTES]) {
    kvx__hmac h;
    kvx__hmac_init(&h, key, key_len);
    kvx__hmac_update(&h, "kvx-file-v2", 12); /* with its 0 byte */
    kvx__hmac_update(&h, name, strlen(name) + 1);
    kvx__hmac_update(&h, json, len);
    kvx__hmac_final(&h, out);
}

/* Appends the MAC line to a finished JSON line (no-op without a key). */
static void kvx__file_seal(kvx__buf *b, const uint8_t *key, size_t key_len, const char *name) {
    uint8_t mac[KVX_MAC_BYTES];
    int i;
    if (!key || b->oom) return;
    kvx__file_mac(key, key_len, name, b->data, b->len, mac);
    kvx__buf_printf(b, KVX__FILE_MAC_TAG);
    for (i = 0; i < KVX_MAC_BYTES; i++) kvx__buf_printf(b, "%02x", mac[i]);
    kvx__buf_printf(b, "\n");
}

/* Splits text into its JSON line (*json_len bytes) and its optional MAC
   line. 0 when what follows the JSON line is not exactly one MAC line. */
static int kvx__file_split(const char *text, size_t len, size_t *json_len, int *has_mac,
                           uint8_t mac[KVX_MAC_BYTES]) {
    const char *nl = (const char *)memchr(text, '\n', len);
    size_t rest, i;
    *has_mac = 0;
    *json_len = nl ? (size_t)(nl - text) + 1 : len;
    rest = len - *json_len;
    if (rest == 0) return 1;
    if (rest != KVX__FILE_MAC_LINE) return 0;
    text += *json_len;
    if (memcmp(text, KVX__FILE_MAC_TAG, sizeof KVX__FILE_MAC_TAG - 1) ||
        text[KVX__FILE_MAC_LINE - 1] != '\n')
        return 0;
    text += sizeof KVX__FILE_MAC_TAG - 1;
    for (i = 0; i < 64; i++) {
        char c = text[i];
        int v = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (v < 0) return 0;
        if (i % 2 == 0) mac[i / 2] = (uint8_t)(v << 4);
        else mac[i / 2] |= (uint8_t)v;
    }
    *has_mac = 1;
    return 1;
}

/* Parses a meta or marker file: its JSON line (a parser checks the MAC line
   separately), "format" == format and "version" == KVX_FILE_FORMAT_VERSION.
   KVX_ERR_CORRUPT with why otherwise; d is freed by the caller. */
static kvx_result kvx__file_json_open(kvx__json_doc *d, const kvx_allocator *a, const char *text,
                                      size_t len, const char *path, size_t nodes, const char *format,
                                      uint32_t *version, char *why, size_t wl) {
    int has_mac;
    uint8_t mac[KVX_MAC_BYTES];
    const kvx__json *root, *fmt;
    uint64_t v = 0;
    if (!kvx__file_split(text, len, &len, &has_mac, mac)) {
        kvx__set_why(why, wl, "%s: after its JSON line comes something other than a MAC line", path);
        return KVX_ERR_CORRUPT;
    }
    if (kvx__json_parse(d, a, text, len, nodes) != KVX_OK) {
        kvx__set_why(why, wl, "%s is not valid JSON: %s", path, d->error);
        return KVX_ERR_CORRUPT;
    }
    root = kvx__json_root(d);
    fmt = kvx__json_get(d, root, "format");
    if (!fmt || fmt->type != KVX_JSON_STRING || strcmp(fmt->str, format)) {
        kvx__set_why(why, wl, "%s: \"format\" is not \"%s\"", path, format);
        return KVX_ERR_CORRUPT;
    }
    if (!kvx__json_u64(d, root, "version", 1, 1000, &v) || v != KVX_FILE_FORMAT_VERSION) {
        kvx__set_why(why, wl, "%s: format version %llu, this reader knows %d", path,
                     (unsigned long long)v, KVX_FILE_FORMAT_VERSION);
        return KVX_ERR_CORRUPT;
    }
    *version = (uint32_t)v;
    return KVX_OK;
}


/* Index of the first span that reaches past packed offset lo (spans of a
   one-sided plan are sorted on the packed side). */
static uint64_t kvx__span_pend(const kvx_span *sp, int to_file) {
    uint64_t po = to_file ? sp->dst_offset : sp->src_offset;
    uint64_t pitch = to_file ? sp->dst_pitch : sp->src_pitch;
    if (!sp->row_len) return po + sp->length;
    return po + (sp->length / sp->row_len - 1) * pitch + sp->row_len; /* a strided span's reach */
}

static size_t kvx__plan_find(const kvx_plan *p, int to_file, uint64_t lo) {
    size_t a = 0, b = p->count;
    while (a < b) {
        size_t m = (a + b) / 2;
        if (kvx__span_pend(&p->spans[m], to_file) <= lo) a = m + 1;
        else b = m;
    }
    return a;
}

static kvx_result kvx__full_io(int to_file, int fd, char *buf, uint64_t len, uint64_t off,
                               int *err_out) {
    int e = kvx__pio(fd, buf, (size_t)len, off, to_file);
    if (e < 0) return KVX_ERR_CORRUPT; /* short file */
    *err_out = e;
    return e ? kvx__errno_result(e) : KVX_OK;
}

/* Reads the packed byte range [lo, hi) of a file into stage (its CRC32C
   to *crc) and copies what the scatter plan p takes of it (any part of a
   span: rows of a strided one, a plan that skips bytes) to the pages:
   memcpy into host buffers, the engine's kvx_mem_ops in batches into
   device buffers. */
static kvx_result kvx__plan_read_staged(const kvx_layout *l, const kvx_mem_ops *mem,
                                        const kvx_plan *p, int fd, uint64_t lo, uint64_t hi,
                                        char *stage, uint32_t *crc, int *err_out, char *why,
                                        size_t wl) {
    kvx_copy batch[512];
    size_t s = kvx__plan_find(p, 0, lo), nb = 0;
    kvx_result r;
    if ((r = kvx__full_io(0, fd, stage, hi - lo, lo, err_out)) != KVX_OK) return r;
    *crc = kvx_crc32c(0, stage, hi - lo);
    for (; s < p->count && p->spans[s].src_offset < hi; s++) {
        const kvx_span *sp = &p->spans[s];
        const kvx_buffer *bf = &l->buffers[sp->dst_buffer];
        uint64_t rl = sp->row_len ? sp->row_len : sp->length, rows = rl ? sp->length / rl : 0;
        uint64_t sp_pitch = sp->row_len ? sp->src_pitch : 0, dp_pitch = sp->row_len ? sp->dst_pitch : 0;
        uint64_t k = sp->src_offset < lo && sp_pitch ? (lo - sp->src_offset) / sp_pitch : 0;
        char *base = (char *)kvx_span_addr(l, sp, 1);
        for (; k < rows; k++) {
            uint64_t a = sp->src_offset + k * sp_pitch, b = a + rl;
            uint64_t x = a > lo ? a : lo, y = b < hi ? b : hi;
            char *dst, *src;
            if (a >= hi) break;
            if (x >= y) continue;
            dst = base + k * dp_pitch + (x - a);
            src = stage + (x - lo);
            if (bf->mem == KVX_MEM_HOST) {
                memcpy(dst, src, (size_t)(y - x));
                continue;
            }
            batch[nb].buf_ptr = dst;
            batch[nb].host = src;
            batch[nb].len = y - x;
            batch[nb].device = bf->device;
            if (++nb == sizeof batch / sizeof batch[0]) {
                if ((r = mem->copy(mem->ctx, 0, batch, nb, why, wl)) != KVX_OK) return r;
                nb = 0;
            }
        }
    }
    if (nb && (r = mem->copy(mem->ctx, 0, batch, nb, why, wl)) != KVX_OK) return r;
    return KVX_OK;
}

/* The same as kvx__plan_io for layouts with buffers outside host memory:
   the range goes through a pinned staging buffer, device pieces are moved
   with the engine's kvx_mem_ops in batches. */
static kvx_result kvx__plan_io_staged(const kvx_layout *l, const kvx_mem_ops *mem,
                                      const kvx_plan *p, int to_file, int fd, uint64_t lo,
                                      uint64_t hi, char *stage, uint32_t *crc, int *err_out,
                                      char *why, size_t wl) {
    kvx_copy batch[512];
    size_t s = kvx__plan_find(p, to_file, lo), nb = 0;
    uint64_t pos = lo;
    kvx_result r;
    *err_out = 0;
    if (!to_file) return kvx__plan_read_staged(l, mem, p, fd, lo, hi, stage, crc, err_out, why, wl);
    while (pos < hi && s < p->count) {
        const kvx_span *sp = &p->spans[s];
        const kvx_buffer *bf = &l->buffers[sp->buffer];
        uint64_t po = to_file ? sp->dst_offset : sp->src_offset;
        uint64_t skip = pos - po, take = sp->length - skip;
        char *h = stage + (pos - lo), *bp = (char *)kvx_span_addr(l, sp, !to_file) + skip;
        if (take > hi - pos) take = hi - pos;
        if (bf->mem == KVX_MEM_HOST) {
            if (to_file) memcpy(h, bp, (size_t)take);
            else memcpy(bp, h, (size_t)take);
        } else {
            batch[nb].buf_ptr = bp;
            batch[nb].host = h;
            batch[nb].len = take;
            batch[nb].device = bf->device;
            if (++nb == sizeof batch / sizeof batch[0]) {
                if ((r = mem->copy(mem->ctx, to_file, batch, nb, why, wl)) != KVX_OK) return r;
                nb = 0;
            }
        }
        pos += take;
        if (skip + take == sp->length) s++;
    }
    if (nb && (r = mem->copy(mem->ctx, to_file, batch, nb, why, wl)) != KVX_OK) return r;
    if (pos < hi) return KVX_ERR_CORRUPT; /* plan does not cover the range */
    if (to_file) {
        *crc = kvx_crc32c(0, stage, hi - lo);
        return kvx__full_io(1, fd, stage, hi - lo, lo, err_out);
    }
    return KVX_OK;
}

/* Reads or writes the packed byte range [lo, hi) of a one-sided plan
   between pool memory and a file, and returns the CRC32C of those bytes
   (computed over pool memory: before writing, after reading). With fd -1
   there is no I/O: only the CRC32C of those bytes in pool memory. */
static kvx_result kvx__plan_io(const kvx_layout *l, const kvx_plan *p, int to_file, int fd,
                               uint64_t lo, uint64_t hi, uint32_t *crc, int *err_out) {
    struct iovec iov[KVX__FILE_IOV], work[KVX__FILE_IOV];
    size_t s;
    uint64_t pos = lo;
    uint32_t c = 0;
    *err_out = 0;
    s = kvx__plan_find(p, to_file, lo);
    while (pos < hi) {
        int n = 0;
        uint64_t start = pos;
        uint64_t want = 0;
        int k, e;
        while (pos < hi && n < KVX__FILE_IOV && s < p->count) {
            const kvx_span *sp = &p->spans[s];
            uint64_t po = to_file ? sp->dst_offset : sp->src_offset;
            uint64_t skip = pos - po, take = sp->length - skip;
            if (take > hi - pos) take = hi - pos;
            iov[n].iov_base = (char *)kvx_span_addr(l, sp, !to_file) + skip;
            iov[n].iov_len = (size_t)take;
            n++;
            pos += take;
            want += take;
            if (skip + take == sp->length) s++;
        }
        if (!n) return KVX_ERR_CORRUPT; /* plan does not cover the range */
        if (to_file && crc)
            for (k = 0; k < n; k++) c = kvx_crc32c(c, iov[k].iov_base, iov[k].iov_len);
        for (k = 0; k < n; k++) work[k] = iov[k]; /* consumed; iov stays whole for the CRC */
        if (fd >= 0 && (e = kvx__piov_full(fd, work, n, start, want, to_file)) != 0) {
            *err_out = e > 0 ? e : 0;
            return e > 0 ? kvx__errno_result(e) : KVX_ERR_CORRUPT; /* short file */
        }
        if (!to_file && crc)
            for (k = 0; k < n; k++) c = kvx_crc32c(c, iov[k].iov_base, iov[k].iov_len);
    }
    if (crc) *crc = c;
    return KVX_OK;
}

/* Writes (to_file 1) the state rows idx[0..n) of every state buffer of l
   to fd from offset 0, laid out as kvx_plan_state_gather packs them (state
   buffer 0's n rows, then 1's ...), or reads them back into the rows
   (to_file 0); *crc: the CRC32C of the file's bytes. Host rows move with
   pread/pwrite; rows in GPU memory through a pinned staging buffer with
   mem (desc.mem), stripe bytes at a time. */
static kvx_result kvx__state_io(const kvx_layout *l, const kvx_mem_ops *mem,
                                const kvx_allocator *al, uint64_t stripe, const int32_t *idx,
                                uint32_t n, int to_file, int fd, uint32_t *crc, int *err_out,
                                char *why, size_t wl) {
    kvx_plan p;
    char *stage = NULL;
    uint32_t c = 0;
    size_t s;
    kvx_result r;
    *err_out = 0;
    memset(&p, 0, sizeof p);
    p.allocator = al;
    r = to_file ? kvx_plan_state_gather(&p, l, idx, n) : kvx_plan_state_scatter(&p, l, idx, n);
    if (r != KVX_OK) {
        kvx__set_why(why, wl, "state rows: %s", p.error);
        kvx_plan_free(&p);
        return r;
    }
    for (s = 0; s < p.count && r == KVX_OK; s++) {
        const kvx_span *sp = &p.spans[s];
        const kvx_buffer *bf = &l->state[sp->buffer];
        uint64_t off = to_file ? sp->dst_offset : sp->src_offset, done = 0;
        char *addr = (char *)kvx_span_addr(l, sp, !to_file);
        int e;
        if (bf->mem == KVX_MEM_HOST) {
            if (to_file) c = kvx_crc32c(c, addr, (size_t)sp->length);
            e = kvx__pio(fd, addr, (size_t)sp->length, off, to_file);
            if (e) {
                *err_out = e > 0 ? e : 0;
                r = e > 0 ? kvx__errno_result(e) : KVX_ERR_CORRUPT;
                kvx__set_why(why, wl, "state rows: %s", e > 0 ? strerror(e) : "short file");
                break;
            }
            if (!to_file) c = kvx_crc32c(c, addr, (size_t)sp->length);
            continue;
        }
        if (!stage && !(stage = (char *)mem->host_alloc(mem->ctx, (size_t)stripe))) {
            r = KVX_ERR_NO_MEMORY;
            kvx__set_why(why, wl, "cannot allocate %llu bytes of pinned staging memory for the "
                         "state rows", (unsigned long long)stripe);
            break;
        }
        while (done < sp->length && r == KVX_OK) {
            uint64_t take = sp->length - done < stripe ? sp->length - done : stripe;
            kvx_copy cp;
            memset(&cp, 0, sizeof cp);
            cp.buf_ptr = addr + done;
            cp.host = stage;
            cp.len = take;
            cp.device = bf->device;
            if (to_file && (r = mem->copy(mem->ctx, 1, &cp, 1, why, wl)) != KVX_OK) break;
            if (to_file) c = kvx_crc32c(c, stage, (size_t)take);
            if ((e = kvx__pio(fd, stage, (size_t)take, off + done, to_file)) != 0) {
                *err_out = e > 0 ? e : 0;
                r = e > 0 ? kvx__errno_result(e) : KVX_ERR_CORRUPT;
                kvx__set_why(why, wl, "state rows: %s", e > 0 ? strerror(e) : "short file");
                break;
            }
            if (!to_file) {
                c = kvx_crc32c(c, stage, (size_t)take);
                if ((r = mem->copy(mem->ctx, 0, &cp, 1, why, wl)) != KVX_OK) break;
            }
            done += take;
        }
    }
    if (stage) mem->host_free(mem->ctx, stage);
    kvx_plan_free(&p);
    *crc = c;
    return r;
}

/* >>file: formats ------------------------------------------------------------ */

/* rank: the writer's TP size, TP rank, PP size, PP rank. */
static void kvx__meta_json(kvx__buf *b, const kvx_layout *l, const uint32_t rank[4], uint64_t room,
                           const kvx_chunk *c, uint64_t bytes, uint32_t crc) {
    uint32_t i;
    uint64_t off = 0;
    kvx__buf_printf(b, "{\"format\":\"kvx-file-chunk\",\"version\":%d,\"room\":%llu,\"chunk\":%u,"
                      "\"first_page\":%u,\"num_pages\":%u,\"bytes\":%llu,\"crc32c\":%u,",
                   KVX_FILE_FORMAT_VERSION, (unsigned long long)room, c->index, c->first_page,
                   c->num_pages, (unsigned long long)bytes, crc);
    kvx__buf_printf(b, "\"layout_fingerprint\":\"%016llx\",\"page_size\":%u,\"dtype\":",
                   (unsigned long long)kvx_layout_fingerprint(l), l->page_size);
    kvx__buf_json_str(b, l->dtype);
    kvx__buf_printf(b, ",\"dtype_size\":%u,\"num_kv_heads\":%u,\"mla\":%d,\"head_begin\":%u,"
                      "\"layer_begin\":%u,\"tp_size\":%u,\"tp_rank\":%u,\"pp_size\":%u,"
                      "\"pp_rank\":%u,\"buffers\":[",
                   l->dtype_size, l->num_kv_heads, l->mla ? 1 : 0, l->head_begin, l->layer_begin,
                   rank[0], rank[1], rank[2], rank[3]);
    for (i = 0; i < l->num_buffers; i++) {
        kvx__buf_printf(b, "%s{\"item_len\":%llu,\"offset\":%llu}", i ? "," : "",
                       (unsigned long long)l->buffers[i].item_len, (unsigned long long)off);
        off += l->buffers[i].item_len * c->num_pages;
    }
    kvx__buf_printf(b, "]}\n");
}

static int kvx__json_hex64(const kvx__json_doc *d, const kvx__json *o, const char *key,
                           uint64_t *out) {
    const kvx__json *v = kvx__json_get(d, o, key);
    char *end;
    if (!v || v->type != KVX_JSON_STRING || v->str_len != 16) return 0;
    errno = 0;
    *out = strtoull(v->str, &end, 16);
    return !errno && *end == 0;
}

#define KVX__REQ(cond, ...)                                                                    \
    do {                                                                                       \
        if (!(cond)) {                                                                         \
            kvx__set_why(why, wl, __VA_ARGS__);                                                \
            r = KVX_ERR_CORRUPT;                                                               \
            goto done;                                                                         \
        }                                                                                      \
    } while (0)

static kvx_result kvx__file_parse_meta(const kvx_allocator *a, const char *text, size_t len,
                                       const char *path, kvx_file_chunk_info *m, char *why,
                                       size_t wl);
static kvx_result kvx__file_parse_done(const kvx_allocator *a, const char *text, size_t len,
                                       const char *path, kvx_file_done_info *o, char *why,
                                       size_t wl);

/* Parses text that load (a kvx_result) brought in (from allocator a) as a
   chunk's meta (m) or the room's marker (o), and frees it. */
static kvx_result kvx__file_parse(const kvx_allocator *a, kvx_result load, char *text,
                                  size_t len, const char *shown, kvx_file_chunk_info *m,
                                  kvx_file_done_info *o, char *why, size_t wl) {
    if (load == KVX_OK)
        load = m ? kvx__file_parse_meta(a, text, len, shown, m, why, wl)
                 : kvx__file_parse_done(a, text, len, shown, o, why, wl);
    kvx__free(a, text);
    return load;
}

/* kvx_file_read_meta (m) and kvx_file_read_done (o). */
static kvx_result kvx__file_read(const char *path, kvx_file_chunk_info *m, kvx_file_done_info *o,
                                 char *why, size_t wl) {
    char *text = NULL;
    size_t len = 0;
    kvx_result r;
    memset(m ? (void *)m : (void *)o, 0, m ? sizeof *m : sizeof *o);
    r = kvx__read_small(path, &text, &len, KVX__FILE_META_MAX, why, wl);
    return kvx__file_parse(NULL, r, text, len, path, m, o, why, wl);
}

KVX_API kvx_result kvx_file_read_meta(const char *path, kvx_file_chunk_info *m, char *why,
                                      size_t wl) {
    return kvx__file_read(path, m, NULL, why, wl);
}

KVX_API kvx_result kvx_file_parse_meta(const char *text, size_t len, const char *path,
                                       kvx_file_chunk_info *m, char *why, size_t wl) {
    return kvx__file_parse_meta(NULL, text, len, path, m, why, wl);
}

static kvx_result kvx__file_parse_meta(const kvx_allocator *a, const char *text, size_t len,
                                       const char *path, kvx_file_chunk_info *m, char *why,
                                       size_t wl) {
    kvx__json_doc d;
    const kvx__json *root, *bufs, *dt;
    uint64_t v[10], expect_off = 0;
    uint32_t i;
    kvx_result r;
    memset(m, 0, sizeof *m);
    memset(&d, 0, sizeof d);
    if (len > KVX__FILE_META_MAX) {
        kvx__set_why(why, wl, "%s is %zu bytes, more than the %u allowed", path, len,
                     KVX__FILE_META_MAX);
        return KVX_ERR_CORRUPT;
    }
    if ((r = kvx__file_json_open(&d, a, text, len, path, 4 * KVX_MAX_BUFFERS + 64, "kvx-file-chunk",
                                 &m->version, why, wl)) != KVX_OK)
        goto done;
    root = kvx__json_root(&d);
    KVX__REQ(kvx__json_u64(&d, root, "room", 0, UINT64_MAX, &m->room), "%s: bad \"room\"", path);
    KVX__REQ(kvx__json_u64(&d, root, "chunk", 0, KVX__FILE_MAX_CHUNKS, &v[1]) &&
                 kvx__json_u64(&d, root, "first_page", 0, KVX_MAX_PAGES, &v[2]) &&
                 kvx__json_u64(&d, root, "num_pages", 0, KVX_MAX_PAGES, &v[3]) &&
                 kvx__json_u64(&d, root, "bytes", 0, UINT64_MAX / 2, &m->bytes) &&
                 kvx__json_u64(&d, root, "crc32c", 0, UINT32_MAX, &v[4]) &&
                 kvx__json_u64(&d, root, "page_size", 1, UINT32_MAX, &v[5]) &&
                 kvx__json_u64(&d, root, "dtype_size", 0, 64, &v[6]) &&
                 kvx__json_u64(&d, root, "num_kv_heads", 0, UINT32_MAX, &v[7]) &&
                 kvx__json_u64(&d, root, "mla", 0, 1, &v[8]),
             "%s: a numeric field is missing or out of range", path);
    m->chunk = (uint32_t)v[1]; m->first_page = (uint32_t)v[2]; m->num_pages = (uint32_t)v[3];
    m->crc32c = (uint32_t)v[4]; m->page_size = (uint32_t)v[5]; m->dtype_size = (uint32_t)v[6];
    m->num_kv_heads = (uint32_t)v[7]; m->mla = (uint32_t)v[8];
    KVX__REQ(kvx__json_u64(&d, root, "head_begin", 0, 1u << 20, &v[0]) &&
                 kvx__json_u64(&d, root, "layer_begin", 0, 1u << 20, &v[9]) &&
                 kvx__json_u64(&d, root, "tp_size", 1, 1024, &v[1]) &&
                 kvx__json_u64(&d, root, "pp_size", 1, 1024, &v[2]),
             "%s: a parallel-layout field (head_begin, layer_begin, tp_size, pp_size) is "
             "missing or out of range", path);
    m->head_begin = (uint32_t)v[0]; m->layer_begin = (uint32_t)v[9];
    m->tp_size = (uint32_t)v[1]; m->pp_size = (uint32_t)v[2];
    KVX__REQ(kvx__json_u64(&d, root, "tp_rank", 0, m->tp_size - 1, &v[1]) &&
                 kvx__json_u64(&d, root, "pp_rank", 0, m->pp_size - 1, &v[2]),
             "%s: \"tp_rank\" or \"pp_rank\" is missing or not below its size", path);
    m->tp_rank = (uint32_t)v[1]; m->pp_rank = (uint32_t)v[2];
    KVX__REQ(kvx__json_hex64(&d, root, "layout_fingerprint", &m->fingerprint),
             "%s: bad \"layout_fingerprint\"", path);
    dt = kvx__json_get(&d, root, "dtype");
    KVX__REQ(dt && dt->type == KVX_JSON_STRING && dt->str_len < sizeof m->dtype,
             "%s: bad \"dtype\"", path);
    memcpy(m->dtype, dt->str, dt->str_len + 1);
    bufs = kvx__json_get(&d, root, "buffers");
    KVX__REQ(bufs && bufs->type == KVX_JSON_ARRAY && bufs->count >= 1 &&
                 bufs->count <= KVX_MAX_BUFFERS,
             "%s: \"buffers\" must be an array of 1..%d entries", path, KVX_MAX_BUFFERS);
    m->num_buffers = bufs->count;
    m->allocator = a;
    m->item_lens = (uint64_t *)kvx__zalloc(a, bufs->count, sizeof(uint64_t));
    m->offsets = (uint64_t *)kvx__zalloc(a, bufs->count, sizeof(uint64_t));
    if (!m->item_lens || !m->offsets) { r = KVX_ERR_NO_MEMORY; goto done; }
    for (i = 0; i < bufs->count; i++) {
        const kvx__json *e = kvx__json_at(&d, bufs, i);
        KVX__REQ(kvx__json_u64(&d, e, "item_len", 1, 1ull << 40, &m->item_lens[i]) &&
                     kvx__json_u64(&d, e, "offset", 0, UINT64_MAX / 2, &m->offsets[i]),
                 "%s: buffer %u has a bad item_len or offset", path, i);
        KVX__REQ(m->offsets[i] == expect_off,
                 "%s: buffer %u offset is %llu, expected %llu", path, i,
                 (unsigned long long)m->offsets[i], (unsigned long long)expect_off);
        expect_off += m->item_lens[i] * m->num_pages;
    }
    KVX__REQ(expect_off == m->bytes, "%s: \"bytes\" is %llu but the buffers add up to %llu", path,
             (unsigned long long)m->bytes, (unsigned long long)expect_off);
done:
    if (r != KVX_OK) kvx_file_chunk_info_free(m);
    kvx__json_free(&d);
    return r;
}

KVX_API void kvx_file_chunk_info_free(kvx_file_chunk_info *m) {
    if (!m) return;
    kvx__free(m->allocator, m->item_lens);
    kvx__free(m->allocator, m->offsets);
    m->item_lens = m->offsets = NULL;
}

KVX_API kvx_result kvx_file_read_done(const char *path, kvx_file_done_info *o, char *why,
                                      size_t wl) {
    return kvx__file_read(path, NULL, o, why, wl);
}

KVX_API kvx_result kvx_file_parse_done(const char *text, size_t len, const char *path,
                                       kvx_file_done_info *o, char *why, size_t wl) {
    return kvx__file_parse_done(NULL, text, len, path, o, why, wl);
}

/* An array of at most max item lengths, each in [1, 2^28], at key: to
   out[0..*n), their sum to *sum. 0 when absent or malformed. */
static int kvx__json_lens(const kvx__json_doc *d, const kvx__json *o, const char *key,
                          uint32_t max, uint64_t *out, uint32_t *n, uint64_t *sum) {
    const kvx__json *arr = kvx__json_get(d, o, key);
    uint32_t i;
    *sum = 0;
    if (!arr || arr->type != KVX_JSON_ARRAY || arr->count > max) return 0;
    for (i = 0; i < arr->count; i++) {
        if (!kvx__json_u64(d, kvx__json_at(d, arr, i), NULL, 1, 1u << 28, &out[i])) return 0;
        *sum += out[i];
    }
    *n = arr->count;
    return 1;
}

static kvx_result kvx__file_parse_done(const kvx_allocator *a, const char *text, size_t len,
                                       const char *path, kvx_file_done_info *o, char *why,
                                       size_t wl) {
    kvx__json_doc d;
    const kvx__json *root;
    uint64_t v[8];
    kvx_result r;
    memset(o, 0, sizeof *o);
    memset(&d, 0, sizeof d);
    if ((r = kvx__file_json_open(&d, a, text, len, path, 256 + KVX_MAX_STATE, "kvx-file-done",
                                 &o->version, why,
                                 wl)) != KVX_OK)
        goto done;
    root = kvx__json_root(&d);
    KVX__REQ(kvx__json_u64(&d, root, "room", 0, UINT64_MAX, &o->room) &&
                 kvx__json_u64(&d, root, "chunks", 0, KVX__FILE_MAX_CHUNKS, &v[1]) &&
                 kvx__json_u64(&d, root, "total_pages", 0, KVX_MAX_PAGES, &v[2]) &&
                 kvx__json_u64(&d, root, "aux_bytes", 0, 1u << 30, &o->aux_bytes) &&
                 kvx__json_u64(&d, root, "aux_crc32c", 0, UINT32_MAX, &v[3]),
             "%s: a numeric field is missing or out of range", path);
    o->chunks = (uint32_t)v[1]; o->total_pages = (uint32_t)v[2]; o->aux_crc32c = (uint32_t)v[3];
    KVX__REQ(kvx__json_hex64(&d, root, "layout_fingerprint", &o->fingerprint),
             "%s: bad \"layout_fingerprint\"", path);
    {
        const kvx__json *ai = kvx__json_get(&d, root, "aux_index");
        KVX__REQ(ai && ai->type == KVX_JSON_NUMBER && ai->is_int &&
                     (ai->negative ? ai->i64 == -1 : ai->u64 <= INT32_MAX),
                 "%s: bad \"aux_index\"", path);
        o->aux_index = ai->negative ? -1 : (int32_t)ai->u64;
    }
    KVX__REQ(kvx__json_lens(&d, root, "aux_item_lens", KVX_MAX_AUX, o->aux_item_lens, &o->num_aux,
                            &v[4]),
             "%s: \"aux_item_lens\" must be an array of at most %d entries in [1, 2^28]", path,
             KVX_MAX_AUX);
    KVX__REQ(o->aux_bytes == (o->aux_index >= 0 ? v[4] : 0),
             "%s: aux_bytes is %llu, expected %llu", path, (unsigned long long)o->aux_bytes,
             (unsigned long long)(o->aux_index >= 0 ? v[4] : 0));
    KVX__REQ(kvx__json_u64(&d, root, "state_type", 0, KVX_STATE_OTHER, &v[5]) &&
                 kvx__json_u64(&d, root, "state_count", 0, KVX_MAX_PAGES, &v[6]) &&
                 kvx__json_u64(&d, root, "state_bytes", 0, UINT64_MAX, &o->state_bytes) &&
                 kvx__json_u64(&d, root, "state_crc32c", 0, UINT32_MAX, &v[7]),
             "%s: a state field is missing or out of range", path);
    o->state_type = (uint32_t)v[5]; o->state_count = (uint32_t)v[6]; o->state_crc32c = (uint32_t)v[7];
    KVX__REQ(kvx__json_lens(&d, root, "state_item_lens", KVX_MAX_STATE, o->state_item_lens,
                            &o->num_state, &v[4]), /* v[4] at most 2^38 */
             "%s: \"state_item_lens\" must be an array of at most %d entries in [1, 2^28]", path,
             KVX_MAX_STATE);
    KVX__REQ(o->state_count == 0 || o->num_state != 0,
             "%s: %u state rows but no state buffers", path, o->state_count);
    KVX__REQ(o->state_bytes == (uint64_t)o->state_count * v[4], /* < 2^58: no overflow */
             "%s: state_bytes is %llu, expected %llu", path, (unsigned long long)o->state_bytes,
             (unsigned long long)((uint64_t)o->state_count * v[4]));
done:
    kvx__json_free(&d);
    return r;
}
#undef KVX__REQ

KVX_API kvx_result kvx_file_crc32c(int fd, uint64_t off, uint64_t len, uint32_t *crc) {
    char *buf = (char *)kvx__alloc(NULL, 1 << 20); /* libc: a tool's call, no engine */
    uint32_t c = 0;
    if (!buf) return KVX_ERR_NO_MEMORY;
    while (len) {
        size_t want = len > (1u << 20) ? (1u << 20) : (size_t)len;
        ssize_t n = pread(fd, buf, want, (off_t)off);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) { kvx__free(NULL, buf); return n ? kvx__errno_result(errno) : KVX_ERR_CORRUPT; }
        c = kvx_crc32c(c, buf, (size_t)n);
        off += (uint64_t)n;
        len -= (uint64_t)n;
    }
    kvx__free(NULL, buf);
    *crc = c;
    return KVX_OK;
}

/* >>file transport: engine ---------------------------------------------------- */

typedef struct kvx__fengine {
    char dir[KVX__FILE_PATH];
    int dfd;                    /* the directory, opened without following links */
    unsigned dir_mode, file_mode;
    kvx_file_desc set;          /* the resolved settings (kvx__file_table) */
    uint64_t stripe;            /* set.stripe_bytes */
    kvx__workq *q;
    pthread_mutex_t mu;
    struct kvx__froom *pending; /* receivers waiting for transfer_done */
    /* layouts with GPU buffers: pinned staging buffers, at most one per I/O thread */
    int staged;
    int state_staged;           /* some state buffer is outside host memory */
    kvx_mem_ops mem;
    kvx_boot *boot;             /* NULL: no bootstrap */
    const uint8_t *key;         /* kvx_engine_auth_key: NULL = files are not authenticated */
    size_t key_len;
    const kvx_allocator *al;    /* the engine's desc allocator */
    char *stage_free[64];
    int num_stage_free;
    /* parallel layouts (the doc block's PARALLEL LAYOUTS) */
    uint32_t rank[4];           /* this rank: TP size, TP rank, PP size, PP rank */
    uint32_t ptp, ppp;          /* decode: the prefill's TP and PP sizes */
    uint32_t dtp;               /* prefill: the decode's TP size */
    int dummy;                  /* prefill: an MLA dummy, writes nothing */
} kvx__fengine;

/* The staging buffers are pinned (desc.mem) for GPU pools, plain memory
   for a host pool that reads a sliced plan. */
static char *kvx__stage_new(kvx__fengine *fe) {
    return fe->staged ? (char *)fe->mem.host_alloc(fe->mem.ctx, (size_t)fe->stripe)
                      : (char *)kvx__alloc(fe->al, (size_t)fe->stripe);
}

static void kvx__stage_del(kvx__fengine *fe, char *s) {
    if (fe->staged) fe->mem.host_free(fe->mem.ctx, s);
    else kvx__free(fe->al, s);
}

static char *kvx__stage_get(kvx__fengine *fe) {
    char *s = NULL;
    pthread_mutex_lock(&fe->mu);
    if (fe->num_stage_free) s = fe->stage_free[--fe->num_stage_free];
    pthread_mutex_unlock(&fe->mu);
    return s ? s : kvx__stage_new(fe);
}

static void kvx__stage_put(kvx__fengine *fe, char *s) {
    pthread_mutex_lock(&fe->mu);
    if (fe->num_stage_free < (int)(sizeof fe->stage_free / sizeof fe->stage_free[0])) {
        fe->stage_free[fe->num_stage_free++] = s;
        s = NULL;
    }
    pthread_mutex_unlock(&fe->mu);
    if (s) kvx__stage_del(fe, s);
}

/* One stripe of a chunk between pool pages and the file, staged when the
   layout has GPU buffers. */
static kvx_result kvx__stripe_io(kvx__fengine *fe, const kvx_layout *l, const kvx_plan *p,
                                 int sliced, int to_file, int fd, uint64_t lo, uint64_t hi,
                                 uint32_t *crc, int *err, char *why, size_t wl) {
    char *stage;
    kvx_result r;
    if (!fe->staged && !sliced) return kvx__plan_io(l, p, to_file, fd, lo, hi, crc, err);
    if (!(stage = kvx__stage_get(fe))) {
        kvx__set_why(why, wl, "cannot allocate %llu bytes of pinned staging memory",
                     (unsigned long long)fe->stripe);
        return KVX_ERR_NO_MEMORY;
    }
    r = kvx__plan_io_staged(l, &fe->mem, p, to_file, fd, lo, hi, stage, crc, err, why, wl);
    kvx__stage_put(fe, stage);
    return r;
}

/* One transfer unit: a chunk file being written or read in stripes. */
typedef struct kvx__fjob {
    struct kvx__froom *fr;
    struct kvx__fsrc *src;  /* receiver: the contributor whose file this is */
    int sliced;             /* receiver: the plan takes part of the file, or strided rows:
                               each stripe is read into a staging buffer */
    kvx_chunk *chunk;       /* sender: owned */
    struct kvx__fchunk *fc; /* sender, a layer-wise part: the chunk it belongs to */
    struct kvx__fseg *segs; /* sender, a layer-wise part: its pieces' packed ranges
                               (nstripes), NULL = stripes of [0, bytes) */
    kvx_plan plan;          /* receiver: scatter plan */
    kvx_file_chunk_info meta; /* receiver */
    char path[KVX__FILE_PATH]; /* for sentences */
    char name[64];          /* kv_chunk_<i>.bin in the room directory */
    int fd;
    uint64_t bytes;
    uint32_t nstripes;
    uint32_t left;          /* atomic: stripes not finished */
    uint32_t *crcs;
    struct kvx__fstripe *stripes;
    int err;                /* first errno (atomic-ish, under fr->mu) */
    kvx_result res;
    char why[KVX_ERROR_MAX];
} kvx__fjob;

/* What one queued piece of a chunk does. On host pools one thread writes
   (or reads) the whole file in order, because parallel writes to one file
   contend on its inode lock, while the checksums of its stripes run on the
   other workers: ahead of the writer, or right behind the reader. Pools in
   GPU memory stage each stripe instead (I/O and checksum together). */
enum { KVX__ST_IO_CRC = 0, KVX__ST_CRC = 1, KVX__ST_SEQ_IO = 2 };
typedef struct kvx__fstripe {
    kvx__fjob *job;
    uint32_t index;
    int kind;
} kvx__fstripe;

/* Sender, LAYER-WISE SEND: a chunk whose layers come in parts. Each part
   writes its layers' bytes into kv_chunk_<i>.bin at the whole chunk's
   packed offsets as soon as it is handed over (pieces of at most a stripe,
   each with its CRC32C); when the last part is handed over and every
   part's pieces are written, the pieces' CRC32Cs, sorted by offset, must
   tile the file and combine into its CRC32C, and the chunk ends as a whole
   chunk does (its meta, then the room's count). */
typedef struct kvx__fseg {
    uint64_t lo, hi;
    uint32_t crc;
} kvx__fseg;

typedef struct kvx__fchunk {
    uint32_t index, first_page, num_pages;
    int fd;                 /* kv_chunk_<index>.bin, shared by the parts' pieces */
    uint64_t bytes;         /* the whole chunk's packed bytes */
    uint32_t refs;          /* under fr->mu: parts being written, + 1 until the last part */
    kvx__fseg *segs;        /* under fr->mu: the written parts' pieces */
    uint32_t nsegs, cap;    /* under fr->mu: pieces in segs, room for them */
    uint32_t reserved;      /* under fr->mu: pieces of the parts handed over (<= cap) */
    kvx_result res;         /* under fr->mu: the first part that failed */
    char name[64];
} kvx__fchunk;

typedef struct kvx__froom {
    kvx_room *room;
    kvx__fengine *fe;
    char dir[KVX__FILE_PATH]; /* for sentences */
    char name[48];          /* room_<id> in fe->dir */
    char stage[96];         /* sender: room_<id>.tmp.<pid>.<nonce>, where the room
                               is built before it is renamed to name */
    char stage_dir[KVX__FILE_PATH]; /* sender: fe->dir/stage, for sentences */
    int committed;          /* sender: stage renamed to name (under mu) */
    int dfd;                /* the room directory; -1 until made (sender) or seen
                               (receiver); set once, then read by workers */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int busy;               /* stripes running or queued, under mu */
    /* sender */
    uint32_t chunks_sent, chunks_done, total_pages;
    kvx__fchunk *open_chunk; /* layer-wise: the chunk whose parts are coming (under mu) */
    int last_sent, finished;
    uint64_t bytes_done;
    int32_t aux_index;
    int32_t *state_idx;     /* the request's state indices (HYBRID STATE): prefill's at
                               its last chunk, decode's at init; engine allocator */
    uint32_t num_state_idx;
    uint32_t dst_state;     /* sender with kvx_boot: state indices the decode asked for
                               (under mu; valid when dst_state_seen) */
    int dst_state_seen;
    int state_known;        /* sender: the last chunk gave num_state_idx (under mu) */
    int boot;               /* the room goes through kvx_boot */
    int peer_aborted;       /* sender: a decode rank's <R>.aborted stopped it (atomic) */
    /* receiver */
    int32_t *pages;
    uint32_t num_pages;
    struct kvx__fsrc *src;  /* the prefill ranks that contribute (PARALLEL LAYOUTS) */
    uint32_t nsrc, srcs_done; /* srcs_done under mu */
    uint32_t missing;       /* progress thread: the source deadline_what names */
    char deadline_what[KVX__FILE_PATH + 160];
    int in_pending;         /* on fe->pending (under fe->mu) */
    struct kvx__froom *next_pending;
} kvx__froom;

/* Receiver: one contributing prefill rank's room directory. */
typedef struct kvx__fsrc {
    kvx__froom *fr;
    char name[64];          /* room_<id>[.tp<a>.pp<b>] in fe->dir */
    char dir[KVX__FILE_PATH]; /* for sentences */
    char who[48];           /* "the sender" or "prefill rank tp <a> pp <b>" */
    uint32_t tp_rank, pp_rank;
    uint32_t readers;       /* decode ranks that read this directory */
    int dfd;                /* set by the progress thread while state is 0 */
    int state;              /* under fe->mu: 0 waiting for its room, 1 its room seen */
    int aux;                /* writes the room's aux rows (kvx_layout_overlap) */
    uint32_t heads[2], layers[2]; /* the model's heads and layers it holds: [begin, end) */
    int shaped;             /* heads and layers are known (under fr->mu) */
    kvx_file_done_info done;
    uint64_t settle_until;  /* files transfer_done lists may still appear until then
                               (ns; 0 = transfer_done not seen yet) */
    uint64_t retry_at;      /* look again no sooner (ns) */
    uint32_t retries;       /* reads started again while settling */
    uint32_t chunks_read;   /* under fr->mu */
    char refused_why[KVX_ERROR_MAX];
} kvx__fsrc;

static kvx__fengine *kvx__fe(kvx_engine *e) { return (kvx__fengine *)kvx_engine_backend_data(e); }

/* Removes this user's room directories (and failure markers) older than
   the TTL. Never follows a link, never touches another user's entries: a
   fresh room of another engine is left alone, however short the TTL. */
static void kvx__file_sweep(kvx_engine *e, kvx__fengine *fe) {
    int fd = openat(fe->dfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    DIR *d;
    struct dirent *de;
    time_t now = time(NULL);
    int removed = 0;
    if (fd < 0) return;
    if (!(d = fdopendir(fd))) { close(fd); return; }
    while ((de = readdir(d)) != NULL) {
        struct stat st;
        if (strncmp(de->d_name, "room_", 5)) continue;
        if (fstatat(fe->dfd, de->d_name, &st, AT_SYMLINK_NOFOLLOW)) continue;
        if (st.st_uid != geteuid() || !(difftime(now, st.st_mtime) > fe->set.ttl_s)) continue;
        if (S_ISDIR(st.st_mode)) kvx__rm_room_at(fe->dfd, de->d_name, 1);
        else (void)unlinkat(fe->dfd, de->d_name, 0); /* a marker, a temporary, a link */
        removed++;
    }
    closedir(d);
    if (removed)
        kvx_engine_log(e, KVX_LOG_INFO, "kvx.file", 0,
                       "removed %d room entries older than %.0f s from %s", removed,
                       fe->set.ttl_s, fe->dir);
}

/* Prefill: a bootstrap server when one is configured. Decode: always
   ready, used by the rooms that carry a bootstrap address. */
static int kvx__file_wants_boot(const kvx_engine_desc *d) {
    const char *port = getenv("KVX_BOOTSTRAP_PORT"), *srv = getenv("KVX_BOOTSTRAP_SERVER");
    if (d->role == KVX_ROLE_DECODE) return 1;
    return d->bootstrap_addr || d->boot.port || (port && *port) || (d->boot.server && *d->boot.server) ||
           (srv && *srv);
}

/* Decode: the sender's Success only says the files are complete; this
   side succeeds after reading and verifying them, and no longer needs the
   prefill (2: losing its connection now fails nothing). A failure or abort
   is taken at once (default handling). */
static int kvx__file_on_status(kvx_boot *b, kvx_room *r, const kvx_boot_peer *peer,
                               kvx_poll state, kvx_result result, uint64_t bytes,
                               const char *reason) {
    (void)b; (void)r; (void)peer; (void)result; (void)bytes; (void)reason;
    return state == KVX_POLL_SUCCESS ? 2 : 0;
}

/* Prefill with kvx_boot: the decode's state count against this prefill's
   (known from its last chunk: last 1); 1 with the room failed, saying
   both, on a mismatch. Called from on_room and from the last chunk: under
   fr->mu, whichever comes second sees the other. */
static int kvx__fsend_state_mismatch(kvx_room *r, int last);

/* Prefill: a decode rank's room frame; its state count is kept (and
   checked when the last chunk came first). */
static kvx_result kvx__file_on_room(kvx_boot *b, kvx_room *r, const kvx_boot_peer *peer,
                                    const int32_t *dst_pages, uint32_t n, int32_t aux,
                                    const int32_t *dst_state, uint32_t num_state) {
    kvx__froom *fr = (kvx__froom *)kvx_room_data(r);
    (void)b; (void)peer; (void)dst_pages; (void)n; (void)aux; (void)dst_state;
    if (!fr) return KVX_OK;
    pthread_mutex_lock(&fr->mu);
    fr->dst_state = num_state;
    fr->dst_state_seen = 1;
    pthread_mutex_unlock(&fr->mu);
    return kvx__fsend_state_mismatch(r, 0) ? KVX_ERR_LAYOUT_MISMATCH : KVX_OK;
}

static const kvx__setting kvx__file_table[] = {
    KVX__SET_STR("KVX_FILE_DIR", kvx_file_desc, dir),
    KVX__SET_DBL("KVX_FILE_TIMEOUT", kvx_file_desc, timeout_s, 300, 0.001, KVX_MAX_TIMEOUT_S),
    KVX__SET_DBL("KVX_FILE_TTL", kvx_file_desc, ttl_s, 3600, 60, 1e9),
    KVX__SET_DBL("KVX_FILE_SETTLE", kvx_file_desc, settle_s, 2, 0.001, 3600),
    KVX__SET_INT("KVX_FILE_IO_THREADS", kvx_file_desc, io_threads, 4, 1, 256),
    KVX__SET_U32("KVX_FILE_STRIPE", kvx_file_desc, stripe_bytes, 16 << 20, 4096, 1 << 30),
    KVX__SET_INT("KVX_FILE_FSYNC", kvx_file_desc, fsync, 0, 0, 1),
    KVX__SET_INT("KVX_FILE_KEEP", kvx_file_desc, keep, 0, 0, 1),
    KVX__SET_INT("KVX_FILE_SHARED", kvx_file_desc, shared, 0, 0, 1),
    KVX__SET_INT("KVX_FILE_PREFILL_TP", kvx_file_desc, prefill_tp, 0, 1, 1024),
    KVX__SET_INT("KVX_FILE_PREFILL_PP", kvx_file_desc, prefill_pp, 0, 1, 1024),
    KVX__SET_INT("KVX_FILE_DECODE_TP", kvx_file_desc, decode_tp, 0, 1, 1024),
};

/* This engine's rank (desc.boot) and its peers' sizes, checked: the sizes
   must divide one another (SGLang's mapping), PP equal or decode PP 1. */
static kvx_result kvx__file_ranks(const kvx_engine_desc *d, const kvx_layout *l, kvx__fengine *fe,
                                  char *why, size_t wl) {
    const kvx_file_desc *t = &fe->set; /* settings applied */
    int tp = d->boot.tp_size > 0 ? d->boot.tp_size : 1, pp = d->boot.pp_size > 0 ? d->boot.pp_size : 1;
    uint32_t a, b;
    if (tp > 1024 || pp > 1024 || d->boot.tp_rank < 0 || d->boot.tp_rank >= tp ||
        d->boot.pp_rank < 0 || d->boot.pp_rank >= pp) {
        kvx__set_why(why, wl, "desc.boot: tp_rank %d of tp_size %d, pp_rank %d of pp_size %d are "
                     "not a rank", d->boot.tp_rank, tp, d->boot.pp_rank, pp);
        return KVX_ERR_BAD_CONFIG;
    }
    fe->rank[0] = (uint32_t)tp; fe->rank[1] = (uint32_t)d->boot.tp_rank;
    fe->rank[2] = (uint32_t)pp; fe->rank[3] = (uint32_t)d->boot.pp_rank;
    fe->ptp = t->prefill_tp ? (uint32_t)t->prefill_tp : (uint32_t)tp;
    fe->ppp = t->prefill_pp ? (uint32_t)t->prefill_pp : (uint32_t)pp;
    fe->dtp = t->decode_tp ? (uint32_t)t->decode_tp : (uint32_t)tp;
    a = d->role == KVX_ROLE_DECODE ? fe->ptp : (uint32_t)tp; /* prefill TP */
    b = d->role == KVX_ROLE_DECODE ? (uint32_t)tp : fe->dtp; /* decode TP */
    if ((a > b ? a % b : b % a) != 0) {
        kvx__set_why(why, wl, "prefill TP %u and decode TP %u (KVX_FILE_PREFILL_TP / "
                     "KVX_FILE_DECODE_TP, desc.boot.tp_size): one must divide the other", a, b);
        return KVX_ERR_LAYOUT_MISMATCH;
    }
    if (d->role == KVX_ROLE_DECODE && fe->ppp != (uint32_t)pp && pp != 1) {
        kvx__set_why(why, wl, "prefill PP %u (KVX_FILE_PREFILL_PP) and decode PP %d: the file "
                     "transport needs equal PP sizes or decode PP 1", fe->ppp, pp);
        return KVX_ERR_LAYOUT_MISMATCH;
    }
    fe->dummy = d->role == KVX_ROLE_PREFILL && kvx_mla_dummy(l->mla, tp, d->boot.tp_rank, (int)fe->dtp);
    return KVX_OK;
}

/* Resolves every setting (kvx__file_table; the doc block gives meanings
   and ranges). */
static kvx_result kvx__file_settings(const kvx_engine_desc *d, kvx__fengine *fe,
                                     const char **dir, char *why, size_t wl) {
    kvx_file_desc f = d->file;
    kvx_result r = kvx__settings_apply(kvx__file_table, KVX__COUNT(kvx__file_table), &f, why, wl);
    if (r != KVX_OK) return r;
    if (f.dir) *dir = f.dir;
    fe->set = f;
    fe->stripe = f.stripe_bytes;
    fe->dir_mode = f.shared ? 0770 : 0700;
    fe->file_mode = f.shared ? 0660 : 0600;
    return KVX_OK;
}

static kvx_result kvx__file_engine_init(kvx_engine *e, char *why, size_t wl) {
    const kvx_engine_desc *d = kvx_engine_settings(e);
    const kvx_layout *l = kvx_engine_layout(e);
    kvx__fengine *fe;
    char defdir[64];
    const char *dir;
    uint32_t i;
    kvx_result r;
    snprintf(defdir, sizeof defdir, "/tmp/kvx_file-%u", (unsigned)geteuid());
    dir = d->file.dir ? d->file.dir : defdir;
    fe = (kvx__fengine *)kvx__zalloc(&d->allocator, 1, sizeof *fe);
    if (!fe) return KVX_ERR_NO_MEMORY;
    fe->dfd = -1;
    pthread_mutex_init(&fe->mu, NULL);
    if ((r = kvx__file_settings(d, fe, &dir, why, wl)) != KVX_OK ||
        (r = kvx__file_ranks(d, l, fe, why, wl)) != KVX_OK)
        goto fail;
    for (i = 0; i < l->num_buffers; i++)
        if (l->buffers[i].mem != KVX_MEM_HOST) fe->staged = 1;
    for (i = 0; i < l->num_state; i++)
        if (l->state[i].mem != KVX_MEM_HOST) fe->state_staged = 1;
    fe->mem = d->mem;
    r = KVX_ERR_INVALID_ARGUMENT;
    if (fe->state_staged && (!fe->mem.copy || !fe->mem.host_alloc || !fe->mem.host_free)) {
        kvx__set_why(why, wl, "the layout has state buffers in GPU memory but desc.mem has no "
                     "copy functions: fill it with kvx_cuda_mem_ops() from kvx_cuda.h "
                     "(built with -DKVX_WITH_CUDA)");
        goto fail;
    }
    if (fe->staged && (!fe->mem.copy || !fe->mem.host_alloc || !fe->mem.host_free)) {
        kvx__set_why(why, wl, "the layout has KV buffers in GPU memory but desc.mem has no "
                     "copy functions: fill it with kvx_cuda_mem_ops() from kvx_cuda.h "
                     "(built with -DKVX_WITH_CUDA)");
        goto fail;
    }
    if (strlen(dir) >= sizeof fe->dir - 64) {
        kvx__set_why(why, wl, "KVX_FILE_DIR is too long (%zu bytes)", strlen(dir));
        goto fail;
    }
    snprintf(fe->dir, sizeof fe->dir, "%s", dir);
    fe->key = kvx_engine_auth_key(e, &fe->key_len);
    fe->al = &kvx_engine_settings(e)->allocator;
    r = kvx__dir_open(fe->dir, fe->dir_mode,
                      KVX__DIR_CREATE | (fe->set.shared ? KVX__DIR_SHARED : 0), &fe->dfd, why, wl);
    if (r != KVX_OK) goto fail;
    if ((r = kvx__workq_create(e, fe->set.io_threads, "kvx.file", &fe->q)) != KVX_OK) {
        kvx__set_why(why, wl, "cannot start %d file I/O threads", fe->set.io_threads);
        goto fail;
    }
    kvx_engine_set_backend_data(e, fe);
    if (kvx__file_wants_boot(d)) {
        kvx_boot_hooks hooks;
        memset(&hooks, 0, sizeof hooks);
        hooks.on_status = kvx__file_on_status;
        hooks.on_room = kvx__file_on_room;
        if ((r = kvx_boot_create(e, &hooks, "file", 4, &fe->boot, why, wl)) != KVX_OK) goto fail;
    }
    kvx__file_sweep(e, fe);
    return KVX_OK;
fail:
    kvx_engine_set_backend_data(e, NULL);
    if (fe->q) kvx__workq_destroy(fe->q);
    pthread_mutex_destroy(&fe->mu);
    if (fe->dfd >= 0) close(fe->dfd);
    kvx_engine_free(e, fe);
    return r;
}

static void kvx__file_engine_fini(kvx_engine *e) {
    kvx__fengine *fe = kvx__fe(e);
    if (!fe) return;
    kvx_boot_destroy(fe->boot);
    kvx__workq_destroy(fe->q);
    while (fe->num_stage_free) kvx__stage_del(fe, fe->stage_free[--fe->num_stage_free]);
    pthread_mutex_destroy(&fe->mu);
    close(fe->dfd);
    kvx_engine_free(e, fe);
}

/* A prefill rank's room directory name (PARALLEL LAYOUTS). */
static void kvx__file_room_name(char *out, size_t n, uint64_t room, uint32_t ranks, uint32_t tp_rank,
                                uint32_t pp_rank) {
    if (ranks > 1)
        snprintf(out, n, "room_%llu.tp%u.pp%u", (unsigned long long)room, tp_rank, pp_rank);
    else
        snprintf(out, n, "room_%llu", (unsigned long long)room);
}

/* Decode: the prefill ranks whose rooms this rank reads (SGLang's
   mapping; MLA dummies left out). */
static kvx_result kvx__frecv_sources(kvx__froom *fr) {
    kvx__fengine *fe = fr->fe;
    const kvx_layout *l = kvx_engine_layout(kvx_room_engine(fr->room));
    uint32_t dtp = fe->rank[0], d = fe->rank[1], dpp = fe->rank[2], q = fe->rank[3];
    uint32_t first, count, readers = 1, pfirst = q, pcount = 1, a, b, n = 0;
    if (fe->ptp >= dtp) {
        count = fe->ptp / dtp;
        first = d * count;
    } else {
        count = 1;
        readers = dtp / fe->ptp;
        first = d / readers;
    }
    if (fe->ppp != dpp) pfirst = 0, pcount = fe->ppp; /* decode PP 1: every PP rank */
    fr->src = (kvx__fsrc *)kvx__zalloc(fe->al, (size_t)count * pcount, sizeof *fr->src);
    if (!fr->src) return KVX_ERR_NO_MEMORY;
    for (a = first; a < first + count; a++) {
        if (kvx_mla_dummy(l->mla, (int)fe->ptp, (int)a, (int)dtp)) continue;
        for (b = pfirst; b < pfirst + pcount; b++) {
            kvx__fsrc *s = &fr->src[n++];
            s->fr = fr;
            s->dfd = -1;
            s->tp_rank = a;
            s->pp_rank = b;
            s->readers = readers;
            kvx__file_room_name(s->name, sizeof s->name, kvx_room_id(fr->room), fe->ptp * fe->ppp,
                                a, b);
            kvx__pathf(s->dir, "%s/%s", fe->dir, s->name);
            if (fe->ptp * fe->ppp > 1) snprintf(s->who, sizeof s->who, "prefill rank tp %u pp %u", a, b);
            else snprintf(s->who, sizeof s->who, "the sender");
        }
    }
    fr->nsrc = n;
    return KVX_OK;
}

static kvx_result kvx__file_room_open(kvx_room *r) {
    kvx_engine *e = kvx_room_engine(r);
    kvx__fengine *fe = kvx__fe(e);
    kvx__froom *fr = (kvx__froom *)kvx__zalloc(fe->al, 1, sizeof *fr);
    if (!fr) return KVX_ERR_NO_MEMORY;
    fr->room = r;
    fr->fe = fe;
    fr->aux_index = -1;
    pthread_mutex_init(&fr->mu, NULL);
    pthread_cond_init(&fr->cv, NULL);
    fr->dfd = -1;
    kvx__file_room_name(fr->name, sizeof fr->name, kvx_room_id(r), fe->rank[0] * fe->rank[2],
                        fe->rank[1], fe->rank[3]);
    kvx__pathf(fr->dir, "%s/%s", fe->dir, fr->name);
    kvx_room_set_data(r, fr);
    if (kvx_room_role(r) == KVX_ROLE_DECODE && kvx__frecv_sources(fr) != KVX_OK)
        return KVX_ERR_NO_MEMORY;
    fr->boot = fe->boot && (kvx_room_role(r) == KVX_ROLE_PREFILL || kvx_room_bootstrap_addr(r));
    if (fr->boot) return kvx_boot_room_open(fe->boot, r); /* BOOTSTRAPPING until connected */
    kvx_room_advance(r, KVX_POLL_WAITING_FOR_INPUT); /* no handshake */
    return KVX_OK;
}

static void kvx__file_room_free(kvx_room *r) {
    kvx_engine *e = kvx_room_engine(r);
    kvx__froom *fr = (kvx__froom *)kvx_room_data(r);
    uint32_t i;
    if (!fr) return;
    pthread_mutex_destroy(&fr->mu);
    pthread_cond_destroy(&fr->cv);
    if (fr->open_chunk) { /* the room failed before the chunk's last layers came */
        if (fr->open_chunk->fd >= 0) close(fr->open_chunk->fd);
        kvx_engine_free(e, fr->open_chunk->segs);
        kvx_engine_free(e, fr->open_chunk);
    }
    if (fr->dfd >= 0) close(fr->dfd);
    for (i = 0; fr->src && i < fr->nsrc; i++)
        if (fr->src[i].dfd >= 0) close(fr->src[i].dfd);
    kvx_engine_free(e, fr->src);
    kvx_engine_free(e, fr->pages);
    kvx_engine_free(e, fr->state_idx);
    kvx_engine_free(e, fr);
}

static void kvx__file_unpend(kvx__fengine *fe, kvx__froom *fr) {
    kvx__froom **pp;
    pthread_mutex_lock(&fe->mu);
    for (pp = &fe->pending; *pp; pp = &(*pp)->next_pending)
        if (*pp == fr) { /* the pending list held a reference */
            *pp = fr->next_pending;
            fr->in_pending = 0;
            kvx_room_unref(fr->room);
            break;
        }
    pthread_mutex_unlock(&fe->mu);
}

static void kvx__file_room_close(kvx_room *r) {
    kvx__froom *fr = (kvx__froom *)kvx_room_data(r);
    kvx__file_unpend(fr->fe, fr);
    pthread_mutex_lock(&fr->mu);
    while (fr->busy) pthread_cond_wait(&fr->cv, &fr->mu); /* workers leave the pages */
    pthread_mutex_unlock(&fr->mu);
    if (fr->boot) kvx_boot_room_close(fr->fe->boot, r);
}

static int kvx__froom_dfd(kvx__froom *fr) { return __atomic_load_n(&fr->dfd, __ATOMIC_ACQUIRE); }

/* Makes the directory where the sender builds its room: a fresh name
   next to the room, "room_<id>.tmp.<pid>.<nonce>", that no receiver looks
   up (so no other node's lookup races its creation: see kvx__mkdirat), made
   by this call and opened without following a link. */
static kvx_result kvx__file_make_stage(kvx__froom *fr, int *dfd, char *why, size_t wl) {
    kvx__fengine *fe = fr->fe;
    int i, fd, made = 0, err;
    *dfd = -1;
    for (i = 0; i < 16 && !made; i++) {
        snprintf(fr->stage, sizeof fr->stage, "%s.tmp.%ld.%016llx", fr->name, (long)getpid(),
                 (unsigned long long)kvx__file_nonce());
        kvx__pathf(fr->stage_dir, "%s/%s", fe->dir, fr->stage);
        if (kvx__mkdirat(fe->dfd, fr->stage, fe->dir_mode, &made)) {
            err = errno;
            kvx__set_why(why, wl, "cannot create %s: %s", fr->stage_dir, strerror(err));
            return kvx__errno_result(err);
        }
    }
    if (!made) {
        kvx__set_why(why, wl, "cannot create a fresh directory next to %s: 16 random names "
                     "were taken (someone plants them?)", fr->dir);
        return KVX_ERR_PERMISSION;
    }
    fd = openat(fe->dfd, fr->stage, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
        err = errno;
        kvx__set_why(why, wl, "cannot open %s: %s", fr->stage_dir, strerror(err));
        return err == ELOOP || err == ENOTDIR ? KVX_ERR_PERMISSION : kvx__errno_result(err);
    }
    if (fe->set.shared) (void)fchmod(fd, (mode_t)fe->dir_mode); /* past the umask */
    *dfd = fd;
    return KVX_OK;
}

/* What sits at the room's name now, if anything, must be a directory this
   engine may replace (an earlier room of the same id): a link, a file or
   another user's directory is refused with a sentence. */
static kvx_result kvx__file_check_name(kvx__froom *fr, char *why, size_t wl) {
    kvx__fengine *fe = fr->fe;
    struct stat st;
    int fd, err;
    kvx_result r;
    if (fstatat(fe->dfd, fr->name, &st, AT_SYMLINK_NOFOLLOW)) return KVX_OK; /* nothing */
    fd = openat(fe->dfd, fr->name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
        char desc[300] = "?";
        err = errno;
        if (err == ENOENT) return KVX_OK; /* gone meanwhile */
        kvx__dir_describe(&st, desc, sizeof desc);
        if (err == ELOOP || err == ENOTDIR) {
            kvx__set_why(why, wl, "refusing %s: it is %s (%s), not a directory this engine made",
                         fr->dir, S_ISLNK(st.st_mode) ? "a symbolic link" : "not a directory",
                         desc);
            return KVX_ERR_PERMISSION;
        }
        kvx__set_why(why, wl, "cannot open %s: %s", fr->dir, strerror(err));
        return kvx__errno_result(err);
    }
    r = kvx__dir_check(fd, fr->dir, fe->set.shared ? KVX__DIR_SHARED : 0, why, wl);
    close(fd);
    return r;
}

/* The commit: the built room takes its name, all at once (CONSISTENCY 1).
   A directory an earlier room of the same id left there is moved aside and
   removed first: only when it is a directory this user owns (or the
   directory is shared); a link or a file there is refused. fr->mu held. */
static kvx_result kvx__file_commit(kvx__froom *fr, char *why, size_t wl) {
    kvx__fengine *fe = fr->fe;
    int i, err = 0;
    if (fr->committed) return KVX_OK;
    if (fe->set.fsync && fsync(fr->dfd)) {
        err = errno;
        kvx__set_why(why, wl, "cannot fsync %s: %s", fr->stage_dir, strerror(err));
        return kvx__errno_result(err);
    }
    for (i = 0; i < 4; i++) {
        char old[128];
        kvx_result r;
        if (!renameat(fe->dfd, fr->stage, fe->dfd, fr->name)) {
            fr->committed = 1;
            if (fe->set.fsync) (void)fsync(fe->dfd);
            return KVX_OK;
        }
        err = errno;
        if (err != EEXIST && err != ENOTEMPTY) break;
        /* an earlier room of this id: move it aside, then remove it */
        if ((r = kvx__file_check_name(fr, why, wl)) != KVX_OK) return r;
        snprintf(old, sizeof old, "%s.old.%ld.%016llx", fr->name, (long)getpid(),
                 (unsigned long long)kvx__file_nonce());
        if (renameat(fe->dfd, fr->name, fe->dfd, old)) {
            if (errno == ENOENT) continue;
            err = errno;
            break;
        }
        kvx_engine_log(kvx_room_engine(fr->room), KVX_LOG_WARN, "kvx.file", kvx_room_id(fr->room),
                       "%s already existed (a reused room id?); replaced it", fr->dir);
        kvx__rm_room_at(fe->dfd, old, !fe->set.shared);
    }
    if ((err == ENOTDIR || err == EISDIR) && kvx__file_check_name(fr, why, wl) != KVX_OK)
        return KVX_ERR_PERMISSION;
    kvx__set_why(why, wl, "cannot rename %s to %s: %s", fr->stage_dir, fr->dir,
                 strerror(err ? err : EEXIST));
    return kvx__errno_result(err ? err : EEXIST);
}

/* Tells the receiver that this sender failed: transfer_failed in the
   room, created only if absent (the first reason stays), and the room put
   in place if it was not yet (the receiver sees it at once). When there is
   no room (it was never made, or its name is taken by something else), the
   marker goes next to it as room_<id>.failed, where a receiver looks
   before opening the room. */
static void kvx__file_write_failed(kvx__froom *fr, kvx_result res, const char *reason) {
    kvx__fengine *fe = fr->fe;
    kvx__buf b = KVX__BUF(fr->fe->al);
    char why[KVX_ERROR_MAX], marker[64];
    int dfd;
    kvx_result r = KVX_ERR_NOT_FOUND;
    why[0] = 0;
    kvx__buf_printf(&b, "{\"format\":\"kvx-file-failed\",\"version\":%d,\"room\":%llu,"
                       "\"result\":%d,\"reason\":",
                   KVX_FILE_FORMAT_VERSION, (unsigned long long)kvx_room_id(fr->room), (int)res);
    kvx__buf_json_str(&b, reason);
    kvx__buf_printf(&b, "}\n");
    kvx__file_seal(&b, fe->key, fe->key_len, "transfer_failed");
    if (b.oom) { kvx__buf_free(&b); return; }
    pthread_mutex_lock(&fr->mu);
    dfd = kvx__froom_dfd(fr);
    if (dfd >= 0) {
        r = kvx__write_at(dfd, fr->committed ? fr->dir : fr->stage_dir, "transfer_failed", b.data,
                          b.len, fe->set.fsync, 0, fe->file_mode, why, sizeof why);
        if (r == KVX_OK) r = kvx__file_commit(fr, why, sizeof why);
    }
    pthread_mutex_unlock(&fr->mu);
    if (r != KVX_OK) {
        snprintf(marker, sizeof marker, "%s.failed", fr->name);
        r = kvx__write_at(fe->dfd, fe->dir, marker, b.data, b.len, fe->set.fsync, 0, fe->file_mode,
                          why, sizeof why);
    }
    if (r != KVX_OK)
        kvx_engine_log(kvx_room_engine(fr->room), KVX_LOG_ERROR, "kvx.file", kvx_room_id(fr->room),
                       "cannot tell the receiver that the room failed: %s", why);
    kvx__buf_free(&b);
}

/* The room failed by a local decision (core contract): tell the peer, with
   the first reason. The core calls this once, never on a room that
   succeeded. */
static void kvx__frecv_abort_others(kvx__froom *fr, const kvx__fsrc *except, const char *reason);
static kvx_result kvx__file_load_text(kvx__froom *fr, int dfd, const char *name,
                                      const char *shown, char **text, size_t *len, char *why,
                                      size_t wl);
static void kvx__file_room_failed(kvx_room *r) {
    kvx__froom *fr = (kvx__froom *)kvx_room_data(r);
    if (!fr) return;
    if (fr->boot) kvx_boot_room_failed(fr->fe->boot, r);
    if (kvx_room_role(r) == KVX_ROLE_DECODE && !fr->boot)
        kvx__frecv_abort_others(fr, NULL, kvx_room_error(r));
    if (kvx_room_role(r) != KVX_ROLE_PREFILL) return;
    if (__atomic_load_n(&fr->peer_aborted, __ATOMIC_ACQUIRE)) {
        /* the decode side gave up: nobody will read this room, free it */
        char marker[80];
        snprintf(marker, sizeof marker, "%s.aborted", fr->name);
        pthread_mutex_lock(&fr->mu);
        if (!fr->committed) kvx__rm_room_at(fr->fe->dfd, fr->stage, 1);
        pthread_mutex_unlock(&fr->mu);
        (void)unlinkat(fr->fe->dfd, marker, 0);
        return;
    }
    kvx__file_write_failed(fr, kvx_room_result(r), kvx_room_error(r));
}

/* Sender: whether a decode rank left <R>.aborted (kvx__frecv_abort_others);
   1 with its reason in why. A marker whose MAC fails (with an auth key) is
   not the decode's word and is ignored. */
static int kvx__fsend_aborted(kvx__froom *fr, char *why, size_t wl) {
    char name[80], path[KVX__FILE_PATH], *text = NULL;
    size_t len = 0, json_len = 0;
    struct stat st;
    kvx__json_doc d;
    const kvx__json *reason;
    uint8_t mac[KVX_MAC_BYTES];
    int has_mac;
    snprintf(name, sizeof name, "%s.aborted", fr->name);
    if (fstatat(fr->fe->dfd, name, &st, AT_SYMLINK_NOFOLLOW)) return 0;
    kvx__pathf(path, "%s/%s", fr->fe->dir, name);
    if (kvx__file_load_text(fr, fr->fe->dfd, name, path, &text, &len, why, wl) != KVX_OK) {
        kvx_engine_log(kvx_room_engine(fr->room), KVX_LOG_WARN, "kvx.file", kvx_room_id(fr->room),
                       "ignoring %s: %s", path, why);
        return 0;
    }
    memset(&d, 0, sizeof d);
    if (kvx__file_split(text, len, &json_len, &has_mac, mac) &&
        kvx__json_parse(&d, fr->fe->al, text, json_len, 64) == KVX_OK &&
        (reason = kvx__json_get(&d, kvx__json_root(&d), "reason")) != NULL &&
        reason->type == KVX_JSON_STRING)
        kvx__set_why(why, wl, "the decode side gave up the room (%s): %s", path, reason->str);
    else
        kvx__set_why(why, wl, "the decode side gave up the room (%s)", path);
    kvx__json_free(&d);
    kvx__free(fr->fe->al, text);
    __atomic_store_n(&fr->peer_aborted, 1, __ATOMIC_RELEASE);
    return 1;
}

/* >>file transport: sender ---------------------------------------------------- */

static void kvx__fjob_free(kvx_engine *e, kvx__fjob *j) {
    if (!j) return;
    if (j->chunk) kvx_chunk_free(e, j->chunk);
    kvx_plan_free(&j->plan);
    kvx_file_chunk_info_free(&j->meta);
    kvx_engine_free(e, j->crcs);
    kvx_engine_free(e, j->stripes);
    kvx_engine_free(e, j->segs);
    kvx_engine_free(e, j);
}

/* The CRC32C of a job's whole file, from its stripes' CRC32Cs. */
static uint32_t kvx__fjob_crc(const kvx__fjob *j) {
    uint64_t stripe = j->fr->fe->stripe;
    uint32_t i, crc = j->crcs[0];
    for (i = 1; i < j->nstripes; i++) {
        uint64_t off = (uint64_t)i * stripe;
        crc = kvx_crc32c_combine(crc, j->crcs[i], j->bytes - off < stripe ? j->bytes - off : stripe);
    }
    return crc;
}

static void kvx__froom_leave(kvx__froom *fr, uint32_t n) {
    pthread_mutex_lock(&fr->mu);
    fr->busy -= (int)n;
    if (!fr->busy) pthread_cond_broadcast(&fr->cv);
    pthread_mutex_unlock(&fr->mu);
}

static void kvx__fjob_error(kvx__fjob *j, kvx_result res, int err, const char *fmt, ...)
    KVX_PRINTF(4, 5);
static void kvx__fjob_error(kvx__fjob *j, kvx_result res, int err, const char *fmt, ...) {
    va_list ap;
    pthread_mutex_lock(&j->fr->mu);
    if (__atomic_load_n(&j->res, __ATOMIC_ACQUIRE) == KVX_OK) {
        __atomic_store_n(&j->res, res, __ATOMIC_RELEASE);
        j->err = err;
        va_start(ap, fmt);
        vsnprintf(j->why, sizeof j->why, fmt, ap);
        va_end(ap);
    }
    pthread_mutex_unlock(&j->fr->mu);
}

/* Writes metadata.bin and transfer_done after the last chunk landed, then
   puts the room in place. */
static kvx_result kvx__file_finish_send(kvx__froom *fr, char *why, size_t wl) {
    kvx_engine *e = kvx_room_engine(fr->room);
    const kvx_layout *l = kvx_engine_layout(e);
    kvx__buf b = KVX__BUF(fr->fe->al);
    char *aux = NULL;
    uint64_t aux_bytes = 0, state_bytes = 0;
    uint32_t aux_crc = 0, state_crc = 0, i;
    kvx_result r;
    if (fr->num_state_idx) { /* state.bin: the request's state rows (HYBRID STATE) */
        int fd = openat(fr->dfd, "state.bin", O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
                        (mode_t)fr->fe->file_mode), err = 0;
        char msg[KVX_ERROR_MAX];
        if (fd < 0) {
            err = errno;
            kvx__set_why(why, wl, "cannot create %s/state.bin: %s", fr->stage_dir, strerror(err));
            return kvx__errno_result(err);
        }
        msg[0] = 0;
        r = kvx__state_io(l, &fr->fe->mem, fr->fe->al, fr->fe->stripe, fr->state_idx,
                          fr->num_state_idx, 1, fd, &state_crc, &err, msg, sizeof msg);
        if (r == KVX_OK && fr->fe->set.fsync && fsync(fd)) {
            err = errno;
            r = kvx__errno_result(err);
            snprintf(msg, sizeof msg, "fsync: %s", strerror(err));
        }
        if (close(fd) && r == KVX_OK) {
            err = errno;
            r = kvx__errno_result(err);
            snprintf(msg, sizeof msg, "close: %s", strerror(err));
        }
        if (r != KVX_OK) {
            kvx__set_why(why, wl, "cannot write %s/state.bin: %s", fr->stage_dir, msg);
            return r;
        }
        state_bytes = (uint64_t)fr->num_state_idx * kvx_layout_state_row_bytes(l);
    }
    if (fr->aux_index >= 0) {
        aux_bytes = kvx_layout_aux_row_bytes(l);
        aux = (char *)kvx__alloc(fr->fe->al, aux_bytes ? aux_bytes : 1);
        if (!aux) return KVX_ERR_NO_MEMORY;
        kvx_layout_aux_copy(l, fr->aux_index, aux, 0);
        aux_crc = kvx_crc32c(0, aux, aux_bytes);
        r = kvx__write_at(fr->dfd, fr->stage_dir, "metadata.bin", aux, aux_bytes,
                          fr->fe->set.fsync, 1, fr->fe->file_mode, why, wl);
        kvx__free(fr->fe->al, aux);
        if (r != KVX_OK) return r;
    }
    if (kvx__fsend_aborted(fr, why, wl)) return KVX_ERR_PEER;
    kvx__buf_printf(&b, "{\"format\":\"kvx-file-done\",\"version\":%d,\"room\":%llu,\"chunks\":%u,"
                       "\"total_pages\":%u,\"layout_fingerprint\":\"%016llx\",\"aux_index\":%d,"
                       "\"aux_bytes\":%llu,\"aux_crc32c\":%u,\"aux_item_lens\":[",
                   KVX_FILE_FORMAT_VERSION, (unsigned long long)kvx_room_id(fr->room),
                   fr->chunks_sent, fr->total_pages,
                   (unsigned long long)kvx_layout_fingerprint(l), (int)fr->aux_index,
                   (unsigned long long)aux_bytes, aux_crc);
    for (i = 0; i < l->num_aux; i++)
        kvx__buf_printf(&b, "%s%llu", i ? "," : "", (unsigned long long)l->aux[i].item_len);
    kvx__buf_printf(&b, "],\"state_type\":%u,\"state_count\":%u,\"state_bytes\":%llu,"
                       "\"state_crc32c\":%u,\"state_item_lens\":[", l->state_type,
                   fr->num_state_idx, (unsigned long long)state_bytes, state_crc);
    for (i = 0; i < l->num_state; i++)
        kvx__buf_printf(&b, "%s%llu", i ? "," : "", (unsigned long long)l->state[i].item_len);
    kvx__buf_printf(&b, "]}\n");
    kvx__file_seal(&b, fr->fe->key, fr->fe->key_len, "transfer_done");
    if (b.oom) { kvx__buf_free(&b); return KVX_ERR_NO_MEMORY; }
    r = kvx__write_at(fr->dfd, fr->stage_dir, "transfer_done", b.data, b.len,
                      fr->fe->set.fsync, 1, fr->fe->file_mode, why, wl);
    kvx__buf_free(&b);
    if (r != KVX_OK) return r;
    pthread_mutex_lock(&fr->mu);
    r = kvx__file_commit(fr, why, wl);
    pthread_mutex_unlock(&fr->mu);
    return r;
}

/* A local failure: the core then calls room_failed, which tells the
   receiver (transfer_failed, and a status frame with a bootstrap channel). */
static void kvx__fsend_failed(kvx__froom *fr, kvx_result res, const char *why) {
    kvx_room_fail(fr->room, res, "%s", why);
}

/* A chunk's file is written (res KVX_OK) or failed (why says how): close
   it, write its meta, count it, and finish the room after its last chunk.
   c gives the meta its index and pages. */
static void kvx__fsend_chunk_end(kvx__froom *fr, int fd, const char *file, const kvx_chunk *c,
                                 uint64_t bytes, uint32_t crc, kvx_result res, const char *jwhy) {
    kvx_room *r = fr->room;
    char why[KVX_ERROR_MAX];
    int finish = 0, failed;
    snprintf(why, sizeof why, "%s", jwhy);
    if (res == KVX_OK && fr->fe->set.fsync && fsync(fd)) {
        res = kvx__errno_result(errno);
        kvx__set_why(why, sizeof why, "cannot fsync %s/%s: %s", fr->stage_dir, file, strerror(errno));
    }
    if (close(fd) && res == KVX_OK) {
        res = kvx__errno_result(errno);
        kvx__set_why(why, sizeof why, "cannot close %s/%s: %s", fr->stage_dir, file, strerror(errno));
    }
    if (res == KVX_OK) {
        kvx__buf b = KVX__BUF(fr->fe->al);
        char name[64];
        kvx__meta_json(&b, kvx_engine_layout(kvx_room_engine(r)), fr->fe->rank, kvx_room_id(r), c,
                       bytes, crc);
        snprintf(name, sizeof name, "kv_chunk_%u.bin.meta", c->index);
        kvx__file_seal(&b, fr->fe->key, fr->fe->key_len, name);
        res = b.oom ? KVX_ERR_NO_MEMORY
                    : kvx__write_at(fr->dfd, fr->stage_dir, name, b.data, b.len,
                                    fr->fe->set.fsync, 1, fr->fe->file_mode, why, sizeof why);
        kvx__buf_free(&b);
    } else {
        (void)unlinkat(fr->dfd, file, 0);
    }
    pthread_mutex_lock(&fr->mu);
    fr->chunks_done++;
    fr->bytes_done += bytes;
    failed = res != KVX_OK;
    if (!failed && fr->last_sent && fr->chunks_done == fr->chunks_sent && !fr->finished)
        finish = fr->finished = 1;
    pthread_mutex_unlock(&fr->mu);
    if (failed) {
        if (res != KVX_ERR_ABORTED) kvx__fsend_failed(fr, res, why);
        return;
    }
    if (!finish) return;
    if ((res = kvx__file_finish_send(fr, why, sizeof why)) != KVX_OK) {
        kvx__fsend_failed(fr, res, why);
        return;
    }
    if (fr->boot)
        kvx_boot_send_status(fr->fe->boot, r, KVX_POLL_SUCCESS, KVX_OK, fr->bytes_done, NULL);
    kvx_room_succeed(r, fr->bytes_done);
}

static void kvx__fsend_chunk_done(kvx__fjob *j) {
    kvx_result res = __atomic_load_n(&j->res, __ATOMIC_ACQUIRE);
    kvx__fsend_chunk_end(j->fr, j->fd, j->name, j->chunk, j->bytes,
                         res == KVX_OK ? kvx__fjob_crc(j) : 0, res, j->why);
}

static int kvx__fseg_cmp(const void *a, const void *b) {
    const kvx__fseg *x = (const kvx__fseg *)a, *y = (const kvx__fseg *)b;
    return x->lo < y->lo ? -1 : x->lo > y->lo;
}

/* LAYER-WISE SEND: every part of fc is written (refs reached 0 after its
   last part): its pieces must tile [0, bytes) exactly once; their
   CRC32Cs combine into the file's. Then the chunk ends as a whole one. */
static void kvx__fchunk_end(kvx__froom *fr, kvx__fchunk *fc) {
    kvx_engine *e = kvx_room_engine(fr->room);
    kvx_chunk c;
    char why[KVX_ERROR_MAX];
    uint64_t pos = 0;
    uint32_t i, crc = 0;
    kvx_result res = fc->res;
    why[0] = 0;
    if (res == KVX_OK) {
        qsort(fc->segs, fc->nsegs, sizeof *fc->segs, kvx__fseg_cmp);
        for (i = 0; i < fc->nsegs && pos == fc->segs[i].lo; i++) {
            if (fc->segs[i].hi == fc->segs[i].lo) continue;
            crc = pos ? kvx_crc32c_combine(crc, fc->segs[i].crc, fc->segs[i].hi - fc->segs[i].lo)
                      : fc->segs[i].crc;
            pos = fc->segs[i].hi;
        }
        if (i < fc->nsegs || pos != fc->bytes) {
            res = KVX_ERR_TRANSPORT;
            kvx__set_why(why, sizeof why, "chunk %u: its layer-wise parts wrote %s/%s up to byte "
                         "%llu of %llu, not each byte once", fc->index, fr->stage_dir, fc->name,
                         (unsigned long long)pos, (unsigned long long)fc->bytes);
        }
    } else {
        snprintf(why, sizeof why, "chunk %u failed", fc->index); /* its part told the room */
        res = KVX_ERR_ABORTED;
    }
    memset(&c, 0, sizeof c);
    c.index = fc->index;
    c.first_page = fc->first_page;
    c.num_pages = fc->num_pages;
    kvx__fsend_chunk_end(fr, fc->fd, fc->name, &c, fc->bytes, crc, res, why);
    kvx_engine_free(e, fc->segs);
    kvx_engine_free(e, fc);
}

/* LAYER-WISE SEND: a part's pieces are all written (or failed): its
   pieces join the chunk's; the chunk ends with its last part's last. */
static void kvx__fsend_part_done(kvx__fjob *j) {
    kvx__froom *fr = j->fr;
    kvx__fchunk *fc = j->fc;
    kvx_result res = __atomic_load_n(&j->res, __ATOMIC_ACQUIRE);
    uint32_t i;
    int end;
    pthread_mutex_lock(&fr->mu);
    for (i = 0; res == KVX_OK && i < j->nstripes && fc->nsegs < fc->cap; i++) {
        fc->segs[fc->nsegs] = j->segs[i];
        fc->segs[fc->nsegs++].crc = j->crcs[i];
    }
    if (res != KVX_OK && fc->res == KVX_OK) fc->res = res;
    end = --fc->refs == 0;
    pthread_mutex_unlock(&fr->mu);
    if (res != KVX_OK && res != KVX_ERR_ABORTED) kvx__fsend_failed(fr, res, j->why);
    if (end) kvx__fchunk_end(fr, fc);
}

/* The work of one piece (see KVX__ST_*); errors go to the job. */
static void kvx__fstripe_work(kvx__fstripe *st, const kvx_plan *plan, int to_file) {
    kvx__fjob *j = st->job;
    kvx__froom *fr = j->fr;
    kvx_room *r = fr->room;
    const kvx_layout *l = kvx_engine_layout(kvx_room_engine(r));
    uint64_t lo = (uint64_t)st->index * fr->fe->stripe;
    uint64_t hi = lo + fr->fe->stripe < j->bytes ? lo + fr->fe->stripe : j->bytes;
    char why[KVX_ERROR_MAX];
    int err = 0;
    uint32_t k;
    kvx_result res = KVX_OK;
    if (j->segs && st->kind != KVX__ST_SEQ_IO) lo = j->segs[st->index].lo, hi = j->segs[st->index].hi;
    if (kvx_room_closed(r) || kvx_room_poll(r) == KVX_POLL_FAILED) {
        kvx__fjob_error(j, KVX_ERR_ABORTED, 0, "cancelled");
        return;
    }
    if (__atomic_load_n(&j->res, __ATOMIC_ACQUIRE) != KVX_OK) return;
    why[0] = 0;
    if (to_file && st->kind != KVX__ST_CRC && kvx__fsend_aborted(fr, why, sizeof why)) {
        kvx__fjob_error(j, KVX_ERR_PEER, 0, "%s", why);
        return;
    }
    if (st->kind == KVX__ST_CRC)
        res = kvx__plan_io(l, plan, to_file, -1, lo, hi, &j->crcs[st->index], &err);
    else if (st->kind == KVX__ST_SEQ_IO && j->segs) /* the writer of a part: its pieces */
        for (k = 0; k < j->nstripes && res == KVX_OK; k++)
            res = kvx__plan_io(l, plan, to_file, j->fd, j->segs[k].lo, j->segs[k].hi, NULL, &err);
    else if (st->kind == KVX__ST_SEQ_IO) /* the writer: the whole file, in order */
        res = kvx__plan_io(l, plan, to_file, j->fd, 0, j->bytes, NULL, &err);
    else
        res = kvx__stripe_io(fr->fe, l, plan, j->sliced, to_file, j->fd, lo, hi,
                             &j->crcs[st->index], &err, why, sizeof why);
    if (res == KVX_OK) return;
    if (why[0])
        kvx__fjob_error(j, res, err, "%s: %s", j->path, why);
    else if (to_file)
        kvx__fjob_error(j, res, err, "cannot write %s/%s: %s", fr->stage_dir, j->name,
                        err ? strerror(err) : "short write");
    else
        kvx__fjob_error(j, res, err, "cannot read %s: %s", j->path,
                        err ? strerror(err) : "the file is shorter than its meta says");
}

static void kvx__fsend_stripe(void *arg) {
    kvx__fstripe *st = (kvx__fstripe *)arg;
    kvx__fjob *j = st->job;
    kvx__froom *fr = j->fr;
    kvx_room *r = fr->room;
    kvx_engine *e = kvx_room_engine(r);
    kvx__fstripe_work(st, &j->chunk->gather, 1);
    if (__atomic_sub_fetch(&j->left, 1, __ATOMIC_ACQ_REL) == 0) {
        if (j->fc) kvx__fsend_part_done(j);
        else kvx__fsend_chunk_done(j);
        kvx__fjob_free(e, j);
        kvx__froom_leave(fr, 1);
        kvx_room_unref(r);
        return;
    }
    kvx__froom_leave(fr, 1);
}

/* Queues a job's stripes. The room stays referenced until the job ends. */
static kvx_result kvx__fjob_submit(kvx__fjob *j, kvx__job_fn fn, int to_file) {
    kvx__froom *fr = j->fr;
    kvx_room *r = fr->room;
    kvx_engine *e = kvx_room_engine(r);
    kvx__fstripe *stripes;
    int seq = !fr->fe->staged && !j->sliced; /* host pool, whole plan: one in-order I/O
                                                  piece + checksum pieces */
    uint32_t i, n, total, queue_now;
    if (j->segs) n = j->nstripes; /* a layer-wise part: its pieces (at least one) */
    else n = j->bytes ? (uint32_t)((j->bytes + fr->fe->stripe - 1) / fr->fe->stripe) : 1;
    total = n + (seq ? 1u : 0u);
    j->nstripes = n;
    j->left = total;
    j->crcs = (uint32_t *)kvx__zalloc(fr->fe->al, n, sizeof(uint32_t));
    j->stripes = stripes = (kvx__fstripe *)kvx__zalloc(fr->fe->al, total, sizeof *stripes);
    if (!j->crcs || !stripes) {
        if (j->fd >= 0 && !j->fc) close(j->fd); /* a part's file is its chunk's */
        kvx__fjob_free(e, j);
        return KVX_ERR_NO_MEMORY;
    }
    for (i = 0; i < total; i++) {
        stripes[i].job = j;
        stripes[i].index = i;
        stripes[i].kind = i == n ? KVX__ST_SEQ_IO : seq ? KVX__ST_CRC : KVX__ST_IO_CRC;
    }
    /* a reader queues each checksum piece itself, once its bytes are in */
    queue_now = seq && !to_file ? 1u : total;
    kvx_room_ref(r);
    pthread_mutex_lock(&fr->mu);
    fr->busy += (int)queue_now;
    pthread_mutex_unlock(&fr->mu);
    /* j may be freed by a worker as soon as its last piece is queued:
       only locals from here on */
    for (i = 0; i < queue_now; i++) {
        kvx__fstripe *st = &stripes[seq ? (i + n) % total : i]; /* the I/O piece first */
        if (kvx__workq_submit(fr->fe->q, fn, st) != KVX_OK) {
            kvx__fjob_error(j, KVX_ERR_NO_MEMORY, 0, "out of memory queueing file I/O");
            fn(st); /* runs as a failed piece so the counts stay right */
        }
    }
    return KVX_OK;
}

static int kvx__fsend_state_mismatch(kvx_room *r, int last) {
    kvx__froom *fr = (kvx__froom *)kvx_room_data(r);
    uint32_t ours, theirs;
    int bad;
    pthread_mutex_lock(&fr->mu);
    if (last) fr->state_known = 1;
    bad = fr->dst_state_seen && fr->state_known && fr->dst_state != fr->num_state_idx;
    ours = fr->num_state_idx;
    theirs = fr->dst_state;
    pthread_mutex_unlock(&fr->mu);
    if (bad)
        kvx_room_fail(r, KVX_ERR_LAYOUT_MISMATCH, "prefill sent %u state indices, this decode "
                      "asked for %u", ours, theirs);
    return bad;
}

/* Keeps a copy of the room's state indices (kvx_room_state), for the
   sender's last chunk and the receiver's init. */
static kvx_result kvx__file_keep_state(kvx__froom *fr) {
    uint32_t n = 0;
    const int32_t *idx = kvx_room_state(fr->room, &n);
    if (!n || !idx || fr->state_idx) return KVX_OK;
    fr->state_idx = (int32_t *)kvx_engine_alloc(kvx_room_engine(fr->room), n * sizeof *idx);
    if (!fr->state_idx) return KVX_ERR_NO_MEMORY;
    memcpy(fr->state_idx, idx, n * sizeof *idx);
    fr->num_state_idx = n;
    return KVX_OK;
}

static kvx_result kvx__file_sender_init(kvx_room *r, uint32_t n, int32_t aux) {
    kvx__froom *fr = (kvx__froom *)kvx_room_data(r);
    char why[KVX_ERROR_MAX];
    int dfd;
    kvx_result res;
    fr->total_pages = n;
    fr->aux_index = aux;
    if (fr->fe->dummy) return KVX_OK; /* an MLA dummy: no room directory */
    if (fr->boot && kvx_boot_room_dst_pages(fr->fe->boot, r) != n) {
        kvx_room_fail(r, KVX_ERR_INVALID_ARGUMENT,
                      "init declares %u pages but the decode side asked for %u", n,
                      kvx_boot_room_dst_pages(fr->fe->boot, r));
        return KVX_ERR_INVALID_ARGUMENT;
    }
    if ((res = kvx__file_check_name(fr, why, sizeof why)) != KVX_OK ||
        (res = kvx__file_make_stage(fr, &dfd, why, sizeof why)) != KVX_OK) {
        kvx_room_fail(r, res, "%s", why);
        return res;
    }
    __atomic_store_n(&fr->dfd, dfd, __ATOMIC_RELEASE);
    return KVX_OK;
}

/* LAYER-WISE SEND: a part's pieces: the packed ranges its gather plan
   covers (spans sorted on the packed side, merged where they meet), cut
   at stripe bytes; at least one (an empty one for a part without bytes).
   Checked: the ranges increase, stay inside the chunk's packed region and
   hold the plan's bytes. */
static kvx_result kvx__fpart_segs(kvx__fjob *j, const kvx_plan *p, uint64_t stripe, char *why,
                                  size_t wl) {
    size_t s, a;
    uint64_t n = 0, sum = 0, prev = 0;
    int pass;
    for (pass = 0; pass < 2; pass++) {
        n = sum = prev = 0;
        for (s = 0; s < p->count; s = a) {
            uint64_t lo = p->spans[s].dst_offset, hi = lo + p->spans[s].length;
            for (a = s + 1; a < p->count && p->spans[a].dst_offset == hi; a++)
                hi += p->spans[a].length;
            if (lo < prev || hi < lo || hi > p->packed_bytes) {
                kvx__set_why(why, wl, "chunk %u: layers [%u, %u) plan bytes [%llu, %llu) outside "
                             "or before the chunk's packed region [%llu, %llu)", j->chunk->index,
                             j->chunk->layer_begin, j->chunk->layer_end, (unsigned long long)lo,
                             (unsigned long long)hi, (unsigned long long)prev,
                             (unsigned long long)p->packed_bytes);
                return KVX_ERR_TRANSPORT;
            }
            sum += hi - lo;
            prev = hi;
            while (lo < hi) {
                uint64_t end = hi - lo > stripe ? lo + stripe : hi;
                if (pass) j->segs[n].lo = lo, j->segs[n].hi = end, j->segs[n].crc = 0;
                n++;
                lo = end;
            }
        }
        if (!n) { /* no bytes: one empty piece keeps the job's counts */
            if (pass) memset(j->segs, 0, sizeof *j->segs);
            n = 1;
        }
        if (pass) break;
        if (sum != p->total_bytes || n > UINT32_MAX / 2) {
            kvx__set_why(why, wl, "chunk %u: layers [%u, %u) plan %llu bytes in %llu pieces; "
                         "their spans hold %llu", j->chunk->index, j->chunk->layer_begin,
                         j->chunk->layer_end, (unsigned long long)p->total_bytes,
                         (unsigned long long)n, (unsigned long long)sum);
            return KVX_ERR_TRANSPORT;
        }
        j->segs = (kvx__fseg *)kvx__zalloc(j->fr->fe->al, (size_t)n, sizeof *j->segs);
        if (!j->segs) {
            kvx__set_why(why, wl, "out of memory for chunk %u's pieces", j->chunk->index);
            return KVX_ERR_NO_MEMORY;
        }
    }
    j->nstripes = (uint32_t)n;
    return KVX_OK;
}

/* LAYER-WISE SEND: opens chunk c's file at its first part. */
static kvx__fchunk *kvx__fchunk_open(kvx__froom *fr, const kvx_chunk *c) {
    kvx__fchunk *fc = (kvx__fchunk *)kvx__zalloc(fr->fe->al, 1, sizeof *fc);
    int dfd = kvx__froom_dfd(fr), err;
    if (!fc) {
        kvx_room_fail(fr->room, KVX_ERR_NO_MEMORY, "out of memory for chunk %u", c->index);
        return NULL;
    }
    fc->index = c->index;
    fc->first_page = c->first_page;
    fc->num_pages = c->num_pages;
    fc->bytes = c->gather.packed_bytes;
    fc->refs = 1; /* until its last part is handed over */
    snprintf(fc->name, sizeof fc->name, "kv_chunk_%u.bin", c->index);
    fc->fd = dfd < 0 ? -1
                     : openat(dfd, fc->name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
                              (mode_t)fr->fe->file_mode);
    if (fc->fd < 0) {
        err = dfd < 0 ? ENOENT : errno;
        kvx_room_fail(fr->room, kvx__errno_result(err), "cannot create %s/%s: %s", fr->stage_dir,
                      fc->name, strerror(err));
        kvx__free(fr->fe->al, fc);
        return NULL;
    }
    return fc;
}

/* LAYER-WISE SEND: one part of a chunk (not both its first and last):
   its layers' bytes are written now, pipelined behind the earlier parts on
   the I/O threads; the chunk is counted with its last part. Takes c. */
static kvx_result kvx__fsend_part(kvx_room *r, kvx_chunk *c) {
    kvx_engine *e = kvx_room_engine(r);
    kvx__froom *fr = (kvx__froom *)kvx_room_data(r);
    kvx__fchunk *fc;
    kvx__fjob *j;
    kvx__fseg *grown;
    char why[KVX_ERROR_MAX];
    int last = c->last_part, room_last = c->is_last, end;
    kvx_result res;
    pthread_mutex_lock(&fr->mu);
    fc = fr->open_chunk;
    pthread_mutex_unlock(&fr->mu);
    if (c->first_part != !fc || (fc && fc->index != c->index)) { /* the core orders parts */
        kvx_room_fail(r, KVX_ERR_STATE, "chunk %u: layers [%u, %u) came while chunk %d was open",
                      c->index, c->layer_begin, c->layer_end, fc ? (int)fc->index : -1);
        kvx_chunk_free(e, c);
        return KVX_ERR_STATE;
    }
    if (!fc && !(fc = kvx__fchunk_open(fr, c))) {
        kvx_chunk_free(e, c);
        return KVX_ERR_IO;
    }
    pthread_mutex_lock(&fr->mu);
    fr->open_chunk = fc;
    pthread_mutex_unlock(&fr->mu);
    j = (kvx__fjob *)kvx__zalloc(fr->fe->al, 1, sizeof *j);
    if (!j) { kvx_chunk_free(e, c); return KVX_ERR_NO_MEMORY; }
    j->fr = fr;
    j->chunk = c;
    j->fc = fc;
    j->fd = fc->fd;
    j->bytes = fc->bytes;
    snprintf(j->name, sizeof j->name, "%s", fc->name);
    kvx__pathf(j->path, "%s/%s", fr->stage_dir, j->name);
    why[0] = 0;
    if ((res = kvx__fpart_segs(j, &c->gather, fr->fe->stripe, why, sizeof why)) != KVX_OK) {
        kvx_room_fail(r, res, "%s", why);
        kvx__fjob_free(e, j);
        return res;
    }
    pthread_mutex_lock(&fr->mu);
    if (fc->reserved + (uint64_t)j->nstripes > fc->cap) { /* room for this part's pieces */
        uint32_t want = fc->reserved + j->nstripes, cap = fc->cap * 2 > want ? fc->cap * 2 : want;
        grown = (kvx__fseg *)kvx__zalloc(fr->fe->al, cap, sizeof *grown);
        if (grown) {
            if (fc->nsegs) memcpy(grown, fc->segs, fc->nsegs * sizeof *grown);
            kvx__free(fr->fe->al, fc->segs);
            fc->segs = grown;
            fc->cap = cap;
        }
    }
    res = fc->reserved + (uint64_t)j->nstripes > fc->cap ? KVX_ERR_NO_MEMORY : KVX_OK;
    if (res == KVX_OK) fc->refs++, fc->reserved += j->nstripes; /* this part's */
    if (last) { /* the chunk is handed over whole: count it, drop the open reference */
        fr->open_chunk = NULL;
        fc->refs--;
        if (res == KVX_OK) {
            fr->chunks_sent++;
            if (room_last) fr->last_sent = 1;
        } else if (fc->res == KVX_OK) {
            fc->res = res;
        }
    }
    end = fc->refs == 0;
    pthread_mutex_unlock(&fr->mu);
    if (res != KVX_OK) {
        kvx_room_fail(r, res, "out of memory for chunk %u's pieces", c->index);
        kvx__fjob_free(e, j);
        if (end) kvx__fchunk_end(fr, fc);
        return res;
    }
    res = kvx__fjob_submit(j, kvx__fsend_stripe, 1); /* j belongs to the workers now */
    if (res != KVX_OK) {
        kvx_room_fail(r, res, "out of memory queueing chunk %u", fc->index);
        pthread_mutex_lock(&fr->mu);
        if (fc->res == KVX_OK) fc->res = res;
        end = --fc->refs == 0;
        pthread_mutex_unlock(&fr->mu);
        if (end) kvx__fchunk_end(fr, fc);
    }
    return res;
}

static kvx_result kvx__file_sender_send(kvx_room *r, kvx_chunk *c) {
    kvx_engine *e = kvx_room_engine(r);
    kvx__froom *fr = (kvx__froom *)kvx_room_data(r);
    kvx__fjob *j;
    int dfd = kvx__froom_dfd(fr);
    if (fr->fe->dummy) { /* an MLA dummy completes without bytes (PARALLEL LAYOUTS) */
        int last = c->is_last;
        kvx_chunk_free(e, c);
        if (!last) return KVX_OK;
        if (fr->boot) kvx_boot_send_status(fr->fe->boot, r, KVX_POLL_SUCCESS, KVX_OK, 0, NULL);
        kvx_room_succeed(r, 0);
        return KVX_OK;
    }
    if (c->is_last && kvx__file_keep_state(fr) != KVX_OK) {
        kvx_chunk_free(e, c);
        return KVX_ERR_NO_MEMORY;
    }
    if (c->is_last && fr->boot && kvx__fsend_state_mismatch(r, 1)) {
        kvx_chunk_free(e, c);
        return KVX_ERR_LAYOUT_MISMATCH;
    }
    if (!kvx_chunk_gather(e, c)) {
        kvx_room_fail(r, KVX_ERR_NO_MEMORY, "chunk %u: %s", c->index, c->gather.error);
        kvx_chunk_free(e, c);
        return KVX_ERR_NO_MEMORY;
    }
    if (!(c->first_part && c->last_part)) return kvx__fsend_part(r, c);
    j = (kvx__fjob *)kvx__zalloc(fr->fe->al, 1, sizeof *j);
    if (!j) { kvx_chunk_free(e, c); return KVX_ERR_NO_MEMORY; }
    j->fr = fr;
    j->chunk = c;
    j->bytes = c->gather.packed_bytes;
    snprintf(j->name, sizeof j->name, "kv_chunk_%u.bin", c->index);
    kvx__pathf(j->path, "%s/%s", fr->stage_dir, j->name);
    j->fd = dfd < 0 ? -1
                    : openat(dfd, j->name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
                             (mode_t)fr->fe->file_mode);
    if (j->fd < 0) {
        int err = dfd < 0 ? ENOENT : errno;
        kvx_room_fail(r, kvx__errno_result(err), "cannot create %s: %s", j->path, strerror(err));
        kvx__fjob_free(e, j);
        return kvx__errno_result(err);
    }
    pthread_mutex_lock(&fr->mu);
    fr->chunks_sent++;
    if (c->is_last) fr->last_sent = 1;
    pthread_mutex_unlock(&fr->mu);
    return kvx__fjob_submit(j, kvx__fsend_stripe, 1);
}

/* >>file transport: receiver -------------------------------------------------- */

/* Reads one of the room's small files (a meta, transfer_done,
   transfer_failed) from directory dfd, never through a link. */
static kvx_result kvx__file_load_text(kvx__froom *fr, int dfd, const char *name,
                                      const char *shown, char **text, size_t *len, char *why,
                                      size_t wl) {
    const kvx__fengine *fe = fr->fe;
    uint8_t mac[KVX_MAC_BYTES], want[KVX_MAC_BYTES];
    size_t json_len;
    int has_mac;
    const char *mac_name = strstr(name, ".failed")    ? "transfer_failed"
                           : strstr(name, ".aborted") ? "transfer_aborted"
                                                      : name;
    kvx_result r = kvx__read_small_at(fe->al, dfd, name, shown, text, len, KVX__FILE_META_MAX,
                                      why, wl);
    if (r != KVX_OK || !fe->key) return r;
    /* with a key: a file without a valid MAC is refused */
    if (!kvx__file_split(*text, *len, &json_len, &has_mac, mac) || !has_mac) {
        kvx__set_why(why, wl, "refusing %s: it carries no MAC, and this engine has an auth key "
                     "(KVX_AUTH_KEY): written without the key, or forged", shown);
        r = KVX_ERR_PERMISSION;
    } else {
        kvx__file_mac(fe->key, fe->key_len, mac_name, *text, json_len, want);
        if (!kvx__equal_ct(mac, want, sizeof mac)) {
            kvx__set_why(why, wl, "refusing %s: its MAC does not match (forged, altered, or "
                         "written with another KVX_AUTH_KEY)", shown);
            r = KVX_ERR_PERMISSION;
        }
    }
    if (r != KVX_OK) {
        kvx__free(fe->al, *text);
        *text = NULL;
    }
    return r;
}

static kvx_result kvx__file_load_done(kvx__fsrc *s, const char *shown, char *why, size_t wl) {
    char *text = NULL;
    size_t len = 0;
    kvx_result r = kvx__file_load_text(s->fr, s->dfd, "transfer_done", shown, &text, &len, why, wl);
    return kvx__file_parse(s->fr->fe->al, r, text, len, shown, NULL, &s->done, why, wl);
}

static kvx_result kvx__file_load_meta(kvx__fsrc *s, const char *bin_name, const char *shown,
                                      kvx_file_chunk_info *m, char *why, size_t wl) {
    char *text = NULL, name[80];
    size_t len = 0;
    kvx_result r;
    memset(m, 0, sizeof *m);
    snprintf(name, sizeof name, "%s.meta", bin_name);
    r = kvx__file_load_text(s->fr, s->dfd, name, shown, &text, &len, why, wl);
    return kvx__file_parse(s->fr->fe->al, r, text, len, shown, m, NULL, why, wl);
}

static kvx_result kvx__file_receiver_init(kvx_room *r, const int32_t *pages, uint32_t n,
                                          int32_t aux) {
    kvx_engine *e = kvx_room_engine(r);
    kvx__froom *fr = (kvx__froom *)kvx_room_data(r);
    kvx__fengine *fe = fr->fe;
    if (n) {
        fr->pages = (int32_t *)kvx_engine_alloc(e, n * sizeof *pages);
        if (!fr->pages) return KVX_ERR_NO_MEMORY;
        memcpy(fr->pages, pages, n * sizeof *pages);
    }
    fr->num_pages = n;
    fr->aux_index = aux;
    if (kvx__file_keep_state(fr) != KVX_OK) return KVX_ERR_NO_MEMORY;
    if (fe->set.timeout_s < kvx_engine_settings(e)->waiting_timeout_s) {
        if (fr->nsrc > 1)
            snprintf(fr->deadline_what, sizeof fr->deadline_what,
                     "no transfer_done from %s (%s) appeared (KVX_FILE_TIMEOUT %g s)",
                     fr->src[0].who, fr->src[0].dir, fe->set.timeout_s);
        else
            snprintf(fr->deadline_what, sizeof fr->deadline_what,
                     "no %s/transfer_done appeared (KVX_FILE_TIMEOUT %g s)",
                     fr->nsrc ? fr->src[0].dir : fr->dir, fe->set.timeout_s);
        kvx_room_set_deadline(r, kvx_now_ns() + (uint64_t)(fe->set.timeout_s * 1e9),
                              fr->deadline_what);
    }
    if (fr->boot) {
        kvx_result res = kvx_boot_receiver_init(fe->boot, r, pages, n, aux);
        if (res != KVX_OK) return res;
    }
    kvx_room_ref(r);
    pthread_mutex_lock(&fe->mu);
    fr->in_pending = 1;
    fr->next_pending = fe->pending;
    fe->pending = fr;
    pthread_mutex_unlock(&fe->mu);
    return KVX_OK;
}

/* Removes a contributor's room files (not when KVX_FILE_KEEP), through
   directory descriptors: a link is never followed, another user's
   directory is left alone unless the directory is shared. A directory
   several decode ranks read is removed by the last one: each leaves
   reader_<tp>.<pp> in it, and the one that counts them all removes it. */
static void kvx__frecv_cleanup_src(kvx__froom *fr, kvx__fsrc *s) {
    kvx__fengine *fe = fr->fe;
    char marker[80];
    if (fe->set.keep) return;
    if (s->readers > 1) {
        int fd = openat(fe->dfd, s->name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC), mfd;
        uint32_t seen = 0;
        DIR *d;
        struct dirent *de;
        if (fd < 0) return; /* not there (yet): KVX_FILE_TTL sweeps it */
        snprintf(marker, sizeof marker, "reader_%u.%u", fe->rank[1], fe->rank[3]);
        mfd = openat(fd, marker, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
                     (mode_t)fe->file_mode);
        if (mfd >= 0) close(mfd);
        if (!(d = fdopendir(fd))) { close(fd); return; }
        while ((de = readdir(d)) != NULL)
            if (!strncmp(de->d_name, "reader_", 7)) seen++;
        closedir(d);
        if (seen < s->readers) return;
    }
    kvx__rm_room_at(fe->dfd, s->name, !fe->set.shared);
    snprintf(marker, sizeof marker, "%s.failed", s->name);
    (void)unlinkat(fe->dfd, marker, 0);
}

static void kvx__frecv_cleanup(kvx__froom *fr) {
    uint32_t i;
    for (i = 0; i < fr->nsrc; i++) kvx__frecv_cleanup_src(fr, &fr->src[i]);
}

static void kvx__frecv_fail(kvx__froom *fr, kvx_result res, const char *msg) {
    kvx_room_fail(fr->room, res, "%s", msg);
    kvx__frecv_cleanup(fr);
}

static void kvx__frecv_sender_failed(kvx__froom *fr, kvx__fsrc *s, int marker);

/* After every contributor's every chunk is in place and verified: the
   byte count, the aux rows, then Success. */
static void kvx__frecv_finish(kvx__froom *fr) {
    kvx_room *r = fr->room;
    const kvx_layout *l = kvx_engine_layout(kvx_room_engine(r));
    char why[KVX_ERROR_MAX], path[KVX__FILE_PATH];
    uint64_t aux_bytes = 0, want = (uint64_t)fr->num_pages * kvx_layout_page_bytes(l);
    kvx__fsrc *as = NULL;
    struct stat st;
    uint32_t i, senders = 0;
    for (i = 0; i < fr->nsrc; i++) {
        kvx__fsrc *s = &fr->src[i];
        if (!fstatat(s->dfd, "transfer_failed", &st, AT_SYMLINK_NOFOLLOW)) {
            /* the sender failed after writing transfer_done (an abort raced it):
               its failure wins */
            kvx__frecv_sender_failed(fr, s, 0);
            return;
        }
        if (s->aux) as = s, senders++;
    }
    if (fr->bytes_done != want) {
        kvx__set_why(why, sizeof why, "the %u prefill ranks this decode rank reads placed %llu "
                     "bytes; its pages hold %llu (each byte must come exactly once: check "
                     "KVX_FILE_PREFILL_TP / KVX_FILE_PREFILL_PP)", fr->nsrc,
                     (unsigned long long)fr->bytes_done, (unsigned long long)want);
        kvx__frecv_fail(fr, KVX_ERR_LAYOUT_MISMATCH, why);
        return;
    }
    if ((fr->aux_index >= 0 || fr->num_state_idx) && senders != 1) {
        kvx__set_why(why, sizeof why, "%u of the prefill ranks this decode rank reads hold its "
                     "aux and state rows (its last layer and first head); exactly 1 must", senders);
        kvx__frecv_fail(fr, KVX_ERR_LAYOUT_MISMATCH, why);
        return;
    }
    if (fr->aux_index >= 0 && as->done.aux_index >= 0) {
        char *aux = NULL;
        size_t len = 0;
        kvx_result res;
        aux_bytes = kvx_layout_aux_row_bytes(l);
        kvx__pathf(path, "%s/metadata.bin", as->dir);
        res = kvx__read_small_at(fr->fe->al, as->dfd, "metadata.bin", path, &aux, &len, 1u << 30,
                                 why, sizeof why);
        if (res != KVX_OK) { kvx__frecv_fail(fr, res == KVX_ERR_NOT_FOUND ? KVX_ERR_CORRUPT : res, why); return; }
        why[0] = 0;
        if (len != aux_bytes || len != as->done.aux_bytes)
            kvx__set_why(why, sizeof why, "%s is %zu bytes; this receiver's aux rows are %llu "
                         "bytes (transfer_done says %llu)", path, len,
                         (unsigned long long)aux_bytes, (unsigned long long)as->done.aux_bytes);
        else if (kvx_crc32c(0, aux, len) != as->done.aux_crc32c)
            kvx__set_why(why, sizeof why, "%s is %zu bytes with CRC32C %08x; transfer_done says %llu "
                     "bytes with %08x: corrupted or truncated", path, len, kvx_crc32c(0, aux, len),
                     (unsigned long long)as->done.aux_bytes, as->done.aux_crc32c);
        else
            kvx_layout_aux_copy(l, fr->aux_index, aux, 1);
        kvx__free(fr->fe->al, aux);
        if (why[0]) {
            kvx__frecv_fail(fr, KVX_ERR_CORRUPT, why);
            return;
        }
    } else if (fr->aux_index >= 0) {
        kvx__set_why(why, sizeof why, "the receiver expects aux rows but %s sent none (aux_index "
                     "-1 in transfer_done)", as->who);
        kvx__frecv_fail(fr, KVX_ERR_PROTOCOL, why);
        return;
    }
    if (fr->num_state_idx) { /* the state rows, from the contributor that sends aux */
        uint64_t sb = (uint64_t)fr->num_state_idx * kvx_layout_state_row_bytes(l);
        uint32_t crc = 0;
        int err = 0, fd;
        kvx_result res = KVX_ERR_CORRUPT;
        kvx__pathf(path, "%s/state.bin", as->dir);
        why[0] = 0;
        fd = kvx__open_reg_at(as->dfd, "state.bin", path, &res, why, sizeof why);
        if (fd >= 0) {
            if (as->done.state_bytes != sb) {
                kvx__set_why(why, sizeof why, "%s/transfer_done says its state rows are %llu "
                             "bytes; this receiver's %u state indices hold %llu", as->dir,
                             (unsigned long long)as->done.state_bytes, fr->num_state_idx,
                             (unsigned long long)sb);
                res = KVX_ERR_CORRUPT;
            } else if (fstat(fd, &st) || (uint64_t)st.st_size != sb) {
                kvx__set_why(why, sizeof why, "%s is %lld bytes; transfer_done says %llu "
                             "(truncated or corrupted)", path, (long long)st.st_size,
                             (unsigned long long)sb);
                res = KVX_ERR_CORRUPT;
            } else {
                char msg[KVX_ERROR_MAX];
                res = kvx__state_io(l, &fr->fe->mem, fr->fe->al, fr->fe->stripe, fr->state_idx,
                                    fr->num_state_idx, 0, fd, &crc, &err, msg, sizeof msg);
                if (res != KVX_OK)
                    kvx__set_why(why, sizeof why, "cannot read %s: %s", path, msg);
                else if (crc != as->done.state_crc32c) {
                    kvx__set_why(why, sizeof why, "%s has CRC32C %08x; transfer_done says %08x: "
                                 "corrupted", path, crc, as->done.state_crc32c);
                    res = KVX_ERR_CORRUPT;
                }
            }
            close(fd);
        }
        if (res != KVX_OK) {
            kvx__frecv_fail(fr, res == KVX_ERR_NOT_FOUND ? KVX_ERR_CORRUPT : res, why);
            return;
        }
        aux_bytes += sb;
    }
    /* every byte is in place: report it, then clean up (the room's files are
       no longer needed by anyone, and unlinking large files takes time) */
    kvx_room_succeed(r, fr->bytes_done + aux_bytes);
    kvx__frecv_cleanup(fr);
}

/* The reader of a host pool: the file in order, straight into the
   destination pages, queueing each stripe's checksum as soon as its bytes
   are in. */
static void kvx__frecv_stripe(void *arg);
static void kvx__frecv_read_all(kvx__fstripe *st) {
    kvx__fjob *j = st->job;
    kvx__froom *fr = j->fr;
    kvx_room *r = fr->room;
    const kvx_layout *l = kvx_engine_layout(kvx_room_engine(r));
    uint32_t k, n = j->nstripes, queued = 0;
    for (k = 0; k < n; k++) {
        uint64_t lo = (uint64_t)k * fr->fe->stripe;
        uint64_t hi = lo + fr->fe->stripe < j->bytes ? lo + fr->fe->stripe : j->bytes;
        int err = 0;
        kvx_result res;
        if (kvx_room_closed(r) || kvx_room_poll(r) == KVX_POLL_FAILED) {
            kvx__fjob_error(j, KVX_ERR_ABORTED, 0, "cancelled");
            break;
        }
        res = kvx__plan_io(l, &j->plan, 0, j->fd, lo, hi, NULL, &err);
        if (res != KVX_OK) {
            kvx__fjob_error(j, res, err, "cannot read %s: %s", j->path,
                            err ? strerror(err) : "the file is shorter than its meta says");
            break;
        }
        pthread_mutex_lock(&fr->mu);
        fr->busy++;
        pthread_mutex_unlock(&fr->mu);
        queued++;
        if (kvx__workq_submit(fr->fe->q, kvx__frecv_stripe, &j->stripes[k]) != KVX_OK)
            kvx__frecv_stripe(&j->stripes[k]); /* our own piece keeps the job alive */
    }
    if (queued < n) __atomic_sub_fetch(&j->left, n - queued, __ATOMIC_ACQ_REL);
}

static void kvx__frecv_stripe(void *arg) {
    kvx__fstripe *st = (kvx__fstripe *)arg;
    kvx__fjob *j = st->job;
    kvx__froom *fr = j->fr;
    kvx__fsrc *s = j->src;
    kvx_room *r = fr->room;
    kvx_engine *e = kvx_room_engine(r);
    int last = 0;
    kvx_result res;
    if (st->kind == KVX__ST_SEQ_IO) kvx__frecv_read_all(st);
    else kvx__fstripe_work(st, &j->plan, 0);
    if (__atomic_sub_fetch(&j->left, 1, __ATOMIC_ACQ_REL) != 0) {
        kvx__froom_leave(fr, 1);
        return;
    }
    close(j->fd);
    if (__atomic_load_n(&j->res, __ATOMIC_ACQUIRE) == KVX_OK) {
        uint32_t crc = kvx__fjob_crc(j);
        if (crc != j->meta.crc32c)
            kvx__fjob_error(j, KVX_ERR_CORRUPT, 0,
                            "checksum mismatch in %s: its meta says CRC32C %08x, the bytes give "
                            "%08x (corrupted file)", j->path, j->meta.crc32c, crc);
    }
    res = __atomic_load_n(&j->res, __ATOMIC_ACQUIRE);
    pthread_mutex_lock(&fr->mu);
    fr->bytes_done += j->plan.total_bytes;
    if (++s->chunks_read == s->done.chunks) last = ++fr->srcs_done == fr->nsrc;
    pthread_mutex_unlock(&fr->mu);
    if (res != KVX_OK && res != KVX_ERR_ABORTED) kvx__frecv_fail(fr, res, j->why);
    else if (last && res == KVX_OK && kvx_room_poll(r) != KVX_POLL_FAILED && !kvx_room_closed(r))
        kvx__frecv_finish(fr);
    kvx__fjob_free(e, j);
    kvx__froom_leave(fr, 1);
    kvx_room_unref(r);
}

/* Whether the counts a file gives (buffers and their item lengths, aux
   buffers and theirs) are this receiver's own: checked whatever
   fingerprint the file claims, since every byte count used to read and
   copy follows from them. */
static int kvx__frecv_counts_ok(const kvx_layout *ours, const kvx_file_chunk_info *m,
                                const kvx_file_done_info *dn) {
    uint32_t i;
    if (m && m->num_buffers != ours->num_buffers) return 0;
    for (i = 0; m && i < m->num_buffers; i++)
        if (m->item_lens[i] != ours->buffers[i].item_len) return 0;
    if (dn && dn->num_aux != ours->num_aux) return 0;
    for (i = 0; dn && i < dn->num_aux; i++)
        if (dn->aux_item_lens[i] != ours->aux[i].item_len) return 0;
    if (dn && dn->num_state != ours->num_state) return 0;
    for (i = 0; dn && i < dn->num_state; i++)
        if (dn->state_item_lens[i] != ours->state[i].item_len) return 0;
    return 1;
}

/* A sentence naming the first aux or state buffer whose count or item_len
   in transfer_done (file: its path) is not this receiver's. */
static void kvx__frecv_counts_why(const kvx_layout *ours, const kvx_file_done_info *dn,
                                  const char *file, char *why, size_t wl) {
    uint32_t i;
    if (dn->num_aux != ours->num_aux || dn->num_state != ours->num_state) {
        kvx__set_why(why, wl, "%s lists %u aux and %u state buffers; this receiver has %u and %u",
                     file, dn->num_aux, dn->num_state, ours->num_aux, ours->num_state);
        return;
    }
    for (i = 0; i < dn->num_aux + dn->num_state; i++) { /* aux buffers, then state buffers */
        int st = i >= dn->num_aux;
        uint32_t k = st ? i - dn->num_aux : i;
        uint64_t theirs = st ? dn->state_item_lens[k] : dn->aux_item_lens[k];
        uint64_t mine = st ? ours->state[k].item_len : ours->aux[k].item_len;
        if (theirs != mine) {
            kvx__set_why(why, wl, "item_len of %s buffer %u differs: %s says %llu, this "
                         "receiver has %llu (whatever layout fingerprint it claims)",
                         st ? "state" : "aux", k, file, (unsigned long long)theirs,
                         (unsigned long long)mine);
            return;
        }
    }
    kvx__set_why(why, wl, "%s does not match this receiver's aux and state buffers", file);
}

/* The writer's layout shape from a meta and its transfer_done (bufs: the
   meta's num_buffers entries, then transfer_done's num_state for the state
   buffers). */
static void kvx__frecv_shape(const kvx_file_chunk_info *m, const kvx_file_done_info *dn,
                             kvx_buffer *bufs, kvx_aux_buffer *aux, kvx_layout *th) {
    uint32_t i;
    memset(th, 0, sizeof *th);
    memset(aux, 0, KVX_MAX_AUX * sizeof *aux);
    for (i = 0; i < m->num_buffers; i++) {
        memset(&bufs[i], 0, sizeof bufs[i]);
        bufs[i].item_len = m->item_lens[i];
    }
    for (i = 0; i < dn->num_aux; i++) aux[i].item_len = dn->aux_item_lens[i];
    for (i = 0; i < dn->num_state; i++) {
        memset(&bufs[m->num_buffers + i], 0, sizeof bufs[0]);
        bufs[m->num_buffers + i].item_len = dn->state_item_lens[i];
    }
    th->state = dn->num_state ? bufs + m->num_buffers : NULL;
    th->num_state = dn->num_state;
    th->state_type = dn->state_type;
    th->buffers = bufs; th->num_buffers = m->num_buffers;
    th->aux = aux; th->num_aux = dn->num_aux;
    th->page_size = m->page_size; th->dtype_size = m->dtype_size; th->dtype = m->dtype;
    th->num_kv_heads = m->num_kv_heads; th->mla = (int)m->mla;
    th->head_begin = m->head_begin; th->layer_begin = m->layer_begin;
}

/* Checks a contributor's chunk meta against this receiver: its rank is the
   one expected, and its shape combines with ours (equal topologies: the
   same shape, by fingerprint and every count, as ever; others:
   kvx_layout_overlap, which must find bytes to move). th: the writer's shape for the plan,
   over bufs. */
static kvx_result kvx__frecv_check_layout(kvx__fsrc *s, const kvx_file_chunk_info *m,
                                          kvx_buffer *bufs, kvx_aux_buffer *aux, kvx_layout *th,
                                          char *why, size_t wl) {
    kvx__froom *fr = s->fr;
    kvx__fengine *fe = fr->fe;
    const kvx_layout *ours = kvx_engine_layout(kvx_room_engine(fr->room));
    kvx_result res;
    char diff[KVX_ERROR_MAX];
    uint64_t bpp = 0;
    int counts = kvx__frecv_counts_ok(ours, m, &s->done), same;
    if (m->tp_size != fe->ptp || m->pp_size != fe->ppp || m->tp_rank != s->tp_rank ||
        m->pp_rank != s->pp_rank) {
        kvx__set_why(why, wl, "%s was written by prefill rank tp %u of %u, pp %u of %u; this decode "
                     "rank expects %s of TP %u, PP %u (KVX_FILE_PREFILL_TP / KVX_FILE_PREFILL_PP)",
                     s->dir, m->tp_rank, m->tp_size, m->pp_rank, m->pp_size, s->who, fe->ptp,
                     fe->ppp);
        return KVX_ERR_LAYOUT_MISMATCH;
    }
    kvx__frecv_shape(m, &s->done, bufs, aux, th);
    same = fe->ptp == fe->rank[0] && fe->ppp == fe->rank[2]; /* equal topologies */
    if (same && !(counts && m->fingerprint == kvx_layout_fingerprint(ours) &&
                  s->done.fingerprint == m->fingerprint)) {
        res = kvx_layout_compare(ours, th, diff, sizeof diff);
        if (res == KVX_OK && !counts) {
            kvx__set_why(why, wl, "the buffer, aux or state item lengths in %s do not match the "
                         "receiver's layout (although its fingerprint is %016llx)", s->dir,
                         (unsigned long long)m->fingerprint);
            return KVX_ERR_LAYOUT_MISMATCH;
        }
        if (res == KVX_OK) {
            kvx__set_why(why, wl, "layout fingerprint of the sender (%016llx) differs from ours "
                         "(%016llx)", (unsigned long long)m->fingerprint,
                         (unsigned long long)kvx_layout_fingerprint(ours));
            return KVX_ERR_LAYOUT_MISMATCH;
        }
        kvx__set_why(why, wl, "the sender's KV layout in %s does not match the receiver's: %s",
                     s->dir, diff);
        return res;
    }
    res = kvx_layout_overlap(th, ours, &bpp, &s->aux, diff, sizeof diff);
    if (res != KVX_OK) {
        kvx__set_why(why, wl, "%s (%s) cannot be combined with this decode rank: %s", s->who,
                     s->dir, diff);
        return res;
    }
    s->heads[0] = th->mla ? 0 : th->head_begin;
    s->heads[1] = th->mla ? 1 : th->head_begin + th->num_kv_heads;
    s->layers[0] = th->layer_begin;
    s->layers[1] = th->layer_begin + (th->mla ? th->num_buffers : th->num_buffers / 2);
    if (!bpp) {
        kvx__set_why(why, wl, "%s (%s) holds nothing this decode rank holds (its heads from %u, "
                     "layers from %u; ours from %u and %u)", s->who, s->dir, th->head_begin,
                     th->layer_begin, ours->head_begin, ours->layer_begin);
        return KVX_ERR_LAYOUT_MISMATCH;
    }
    if (s->aux && !kvx__frecv_counts_ok(ours, NULL, &s->done)) {
        char file[KVX__FILE_PATH + 16];
        snprintf(file, sizeof file, "%s/transfer_done", s->dir);
        kvx__frecv_counts_why(ours, &s->done, file, why, wl);
        return KVX_ERR_LAYOUT_MISMATCH;
    }
    return KVX_OK;
}

/* No decode byte twice: a contributor's slice (heads x layers) must not
   meet another's; checked under fr->mu before its reads are queued, so
   of two that meet, the second never writes a page. */
static int kvx__frecv_disjoint(kvx__fsrc *s, char *why, size_t wl) {
    kvx__froom *fr = s->fr;
    uint32_t k;
    int ok = 1;
    pthread_mutex_lock(&fr->mu);
    for (k = 0; k < fr->nsrc && ok; k++) {
        const kvx__fsrc *y = &fr->src[k];
        if (y == s || !y->shaped) continue;
        if (s->heads[0] < y->heads[1] && y->heads[0] < s->heads[1] &&
            s->layers[0] < y->layers[1] && y->layers[0] < s->layers[1]) {
            kvx__set_why(why, wl, "%s and %s both hold layers %u-%u, heads %u-%u: the prefill "
                         "ranks' slices must not overlap", y->who, s->who,
                         s->layers[0] > y->layers[0] ? s->layers[0] : y->layers[0],
                         (s->layers[1] < y->layers[1] ? s->layers[1] : y->layers[1]) - 1,
                         s->heads[0] > y->heads[0] ? s->heads[0] : y->heads[0],
                         (s->heads[1] < y->heads[1] ? s->heads[1] : y->heads[1]) - 1);
            ok = 0;
        }
    }
    if (ok) s->shaped = 1;
    pthread_mutex_unlock(&fr->mu);
    return ok;
}

/* Parses a contributor's transfer_done and every meta, then queues the
   reads. Runs on a worker; the room is referenced by the caller. */
static int kvx__frecv_again(kvx__fsrc *s, const char *why);
static void kvx__frecv_start(void *arg) {
    kvx__fsrc *s = (kvx__fsrc *)arg;
    kvx__froom *fr = s->fr;
    kvx_room *r = fr->room;
    kvx_engine *e = kvx_room_engine(r);
    const kvx_layout *l = kvx_engine_layout(e);
    char why[KVX_ERROR_MAX], path[KVX__FILE_PATH];
    kvx__fjob **jobs = NULL;
    kvx_buffer *bufs = NULL;
    kvx_aux_buffer aux[KVX_MAX_AUX];
    kvx_layout th;
    uint32_t i, next_page = 0, njobs = 0;
    int unseen = 0; /* a listed file is missing or short: maybe not visible here yet */
    kvx_result res;
    why[0] = 0;
    if (kvx_room_closed(r) || kvx_room_poll(r) == KVX_POLL_FAILED) goto out;
    kvx__pathf(path, "%s/transfer_done", s->dir);
    if ((res = kvx__file_load_done(s, path, why, sizeof why)) != KVX_OK) {
        if (res != KVX_ERR_NOT_FOUND || !kvx__frecv_again(s, why))
            kvx__frecv_fail(fr, res == KVX_ERR_NOT_FOUND ? KVX_ERR_CORRUPT : res, why);
        goto out;
    }
    if (s->done.room != kvx_room_id(r)) {
        kvx__set_why(why, sizeof why, "%s names room %llu, not %llu", path,
                 (unsigned long long)s->done.room, (unsigned long long)kvx_room_id(r));
        kvx__frecv_fail(fr, KVX_ERR_CORRUPT, why);
        goto out;
    }
    if (s->done.total_pages != fr->num_pages) {
        kvx__set_why(why, sizeof why, "%s sent %u pages, the receiver expects %u", s->who,
                 s->done.total_pages, fr->num_pages);
        kvx__frecv_fail(fr, KVX_ERR_LAYOUT_MISMATCH, why);
        goto out;
    }
    if (s->done.chunks == 0) {
        kvx__set_why(why, sizeof why, "%s lists no chunks", path);
        kvx__frecv_fail(fr, KVX_ERR_CORRUPT, why);
        goto out;
    }
    if (s->done.state_count != fr->num_state_idx) { /* HYBRID STATE: both counts */
        kvx__set_why(why, sizeof why, "prefill sent %u state indices, this decode asked for %u "
                     "(%s, %s)", s->done.state_count, fr->num_state_idx, s->who, path);
        kvx__frecv_fail(fr, KVX_ERR_LAYOUT_MISMATCH, why);
        goto out;
    }
    if (fr->nsrc == 1 && !kvx__frecv_counts_ok(l, NULL, &s->done)) {
        kvx__frecv_counts_why(l, &s->done, path, why, sizeof why);
        kvx__frecv_fail(fr, KVX_ERR_LAYOUT_MISMATCH, why);
        goto out;
    }
    jobs = (kvx__fjob **)kvx__zalloc(fr->fe->al, s->done.chunks, sizeof *jobs);
    if (!jobs) { kvx__frecv_fail(fr, KVX_ERR_NO_MEMORY, "out of memory"); goto out; }
    for (i = 0; i < s->done.chunks; i++) {
        kvx__fjob *j = (kvx__fjob *)kvx__zalloc(fr->fe->al, 1, sizeof *j);
        struct stat st;
        if (!j) { res = KVX_ERR_NO_MEMORY; kvx__set_why(why, sizeof why, "out of memory"); break; }
        j->fd = -1;
        j->fr = fr;
        j->src = s;
        jobs[njobs++] = j;
        snprintf(j->name, sizeof j->name, "kv_chunk_%u.bin", i);
        kvx__pathf(j->path, "%s/%s", s->dir, j->name);
        kvx__pathf(path, "%s.meta", j->path);
        if ((res = kvx__file_load_meta(s, j->name, path, &j->meta, why, sizeof why)) != KVX_OK) {
            if (res == KVX_ERR_NOT_FOUND) res = KVX_ERR_CORRUPT, unseen = 1;
            break;
        }
        kvx__free(fr->fe->al, bufs);
        bufs = (kvx_buffer *)kvx__zalloc(fr->fe->al, (size_t)j->meta.num_buffers + s->done.num_state,
                                         sizeof *bufs);
        if (!bufs) { res = KVX_ERR_NO_MEMORY; kvx__set_why(why, sizeof why, "out of memory"); break; }
        if ((res = kvx__frecv_check_layout(s, &j->meta, bufs, aux, &th, why, sizeof why)) != KVX_OK)
            break;
        if (j->meta.room != kvx_room_id(r) || j->meta.chunk != i ||
            j->meta.first_page != next_page ||
            (uint64_t)j->meta.num_pages > (uint64_t)fr->num_pages - next_page) {
            kvx__set_why(why, sizeof why, "%s: room %llu chunk %u pages [%u, +%u) do not continue "
                     "room %llu chunk %u at page %u of %u", path,
                     (unsigned long long)j->meta.room, j->meta.chunk, j->meta.first_page,
                     j->meta.num_pages, (unsigned long long)kvx_room_id(r), i, next_page,
                     fr->num_pages);
            res = KVX_ERR_CORRUPT;
            break;
        }
        j->plan.allocator = fr->fe->al;
        res = kvx_plan_scatter_from(&j->plan, l, fr->pages + next_page, j->meta.num_pages, &th);
        if (res != KVX_OK) { kvx__set_why(why, sizeof why, "%s", j->plan.error); break; }
        j->sliced = j->plan.strided || j->plan.total_bytes != j->plan.packed_bytes;
        next_page += j->meta.num_pages;
        j->bytes = j->meta.bytes;
        j->fd = kvx__open_reg_at(s->dfd, j->name, j->path, &res, why, sizeof why);
        if (j->fd < 0) {
            if (res == KVX_ERR_NOT_FOUND) res = KVX_ERR_CORRUPT, unseen = 1;
            break;
        }
        if (j->plan.packed_bytes != j->bytes) {
            kvx__set_why(why, sizeof why, "%s is %llu bytes by its meta, but its pages in the "
                         "writer's layout are %llu", j->path, (unsigned long long)j->bytes,
                         (unsigned long long)j->plan.packed_bytes);
            res = KVX_ERR_CORRUPT;
            break;
        }
        if (fstat(j->fd, &st) || (uint64_t)st.st_size != j->bytes) {
            kvx__set_why(why, sizeof why, "%s is %lld bytes; its meta says %llu (truncated or "
                     "corrupted)", j->path, (long long)st.st_size, (unsigned long long)j->bytes);
            res = KVX_ERR_CORRUPT;
            unseen = (uint64_t)st.st_size < j->bytes;
            break;
        }
    }
    kvx__free(fr->fe->al, bufs);
    if (i == s->done.chunks && next_page != fr->num_pages) {
        kvx__set_why(why, sizeof why, "the chunks hold %u pages, transfer_done says %u", next_page,
                 fr->num_pages);
        res = KVX_ERR_CORRUPT;
    }
    if (res == KVX_OK && !kvx__frecv_disjoint(s, why, sizeof why)) res = KVX_ERR_LAYOUT_MISMATCH;
    if (res != KVX_OK) {
        for (i = 0; i < njobs; i++) {
            if (jobs[i]->fd >= 0) close(jobs[i]->fd);
            kvx__fjob_free(e, jobs[i]);
        }
        if (!unseen || !kvx__frecv_again(s, why)) kvx__frecv_fail(fr, res, why);
        goto out;
    }
    for (i = 0; i < njobs; i++) kvx__fjob_submit(jobs[i], kvx__frecv_stripe, 0);
out:
    kvx__free(fr->fe->al, jobs);
    kvx__froom_leave(fr, 1);
    kvx_room_unref(r);
}

/* A contributor's transfer_failed (marker 0) or <R>.failed next to its
   room (marker 1): the room fails with its reason, naming that prefill
   rank, and nothing is sent back. */
static void kvx__frecv_sender_failed(kvx__froom *fr, kvx__fsrc *s, int marker) {
    char path[KVX__FILE_PATH], why[KVX_ERROR_MAX], name[80];
    char *text = NULL;
    size_t len = 0, json_len = 0;
    kvx__json_doc d;
    const kvx__json *reason;
    int dfd = marker ? fr->fe->dfd : s->dfd, has_mac;
    uint8_t mac[KVX_MAC_BYTES];
    kvx_result res;
    why[0] = 0;
    if (marker) snprintf(name, sizeof name, "%s.failed", s->name);
    else snprintf(name, sizeof name, "transfer_failed");
    kvx__pathf(path, "%s/%s", marker ? fr->fe->dir : s->dir, name);
    memset(&d, 0, sizeof d);
    res = kvx__file_load_text(fr, dfd, name, path, &text, &len, why, sizeof why);
    if (res == KVX_ERR_PERMISSION) { /* not the sender's word: this side refuses the room */
        kvx__frecv_fail(fr, res, why);
        return;
    }
    if (res == KVX_OK && kvx__file_split(text, len, &json_len, &has_mac, mac) &&
        kvx__json_parse(&d, fr->fe->al, text, json_len, 64) == KVX_OK &&
        (reason = kvx__json_get(&d, kvx__json_root(&d), "reason")) != NULL &&
        reason->type == KVX_JSON_STRING) {
        char prefix[48];
        const char *t = reason->str;
        size_t n = reason->str_len, k;
        /* the sender's sentence already names the room: not twice */
        k = (size_t)snprintf(prefix, sizeof prefix, "room %llu: ",
                             (unsigned long long)kvx_room_id(fr->room));
        if (n >= k && !memcmp(t, prefix, k)) { t += k; n -= k; }
        kvx__set_why(why, sizeof why, "%s failed: %.*s", s->who, (int)n, t);
    } else {
        kvx__set_why(why, sizeof why, "%s failed (%s is unreadable)", s->who, path);
    }
    kvx__json_free(&d);
    kvx__free(fr->fe->al, text);
    kvx_room_fail_remote(fr->room, KVX_ERR_PEER, "%s", why);
    kvx__frecv_abort_others(fr, s, kvx_room_error(fr->room));
    kvx__frecv_cleanup(fr);
}

/* Decode, without a bootstrap channel: tells every contributor still
   writing (not `except`, not one whose transfer_done was seen) that this
   room is given up: <R>.aborted beside its room, created once (the first
   reason stays), sealed like transfer_failed. The sender sees it at its
   next stripe or before transfer_done, fails and removes its room. */
static void kvx__frecv_abort_others(kvx__froom *fr, const kvx__fsrc *except, const char *reason) {
    kvx__fengine *fe = fr->fe;
    kvx__buf b = KVX__BUF(fe->al);
    char why[KVX_ERROR_MAX], name[80], text[KVX_ERROR_MAX + 64];
    uint32_t i;
    if (!fr->src) return;
    snprintf(text, sizeof text, "decode rank tp %u pp %u: %s", fe->rank[1], fe->rank[3], reason);
    kvx__buf_printf(&b, "{\"format\":\"kvx-file-aborted\",\"version\":%d,\"room\":%llu,"
                       "\"reason\":", KVX_FILE_FORMAT_VERSION,
                   (unsigned long long)kvx_room_id(fr->room));
    kvx__buf_json_str(&b, text);
    kvx__buf_printf(&b, "}\n");
    kvx__file_seal(&b, fe->key, fe->key_len, "transfer_aborted");
    for (i = 0; i < fr->nsrc && !b.oom; i++) {
        kvx__fsrc *s = &fr->src[i];
        int done;
        if (s == except) continue;
        pthread_mutex_lock(&fe->mu);
        done = s->state != 0; /* its transfer_done is seen: it writes no more */
        pthread_mutex_unlock(&fe->mu);
        if (done) continue;
        snprintf(name, sizeof name, "%s.aborted", s->name);
        if (kvx__write_at(fe->dfd, fe->dir, name, b.data, b.len, fe->set.fsync, 0, fe->file_mode,
                          why, sizeof why) != KVX_OK)
            kvx_engine_log(kvx_room_engine(fr->room), KVX_LOG_WARN, "kvx.file",
                           kvx_room_id(fr->room), "cannot tell %s that the room is given up: %s",
                           s->who, why);
    }
    kvx__buf_free(&b);
}

/* Receiver, progress thread, fe->mu held: what a contributor's room says
   now. -1: nothing yet; 0: transfer_done; 1: transfer_failed; 2: the
   sender's marker next to the room; 3: the room directory is refused
   (refused_why). A sender puts its room in place whole (see
   kvx__file_commit), so the room is looked up afresh each time, never
   through a cached descriptor: a directory without either file (a room
   still being made in place, by an older kvx) is closed again and looked
   at later. */
static int kvx__frecv_look(kvx__froom *fr, kvx__fsrc *s) {
    kvx__fengine *fe = fr->fe;
    struct stat st;
    char marker[80];
    int fd, err;
    if (s->dfd >= 0) {
        close(s->dfd);
        __atomic_store_n(&s->dfd, -1, __ATOMIC_RELEASE);
    }
    if (s->retry_at && kvx_now_ns() < s->retry_at) return -1;
    snprintf(marker, sizeof marker, "%s.failed", s->name);
    if (!fstatat(fe->dfd, marker, &st, AT_SYMLINK_NOFOLLOW)) return 2;
    fd = openat(fe->dfd, s->name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
        char desc[300] = "?";
        int link = 0;
        err = errno;
        if (err == ENOENT) return -1;
        if (!fstatat(fe->dfd, s->name, &st, AT_SYMLINK_NOFOLLOW)) {
            kvx__dir_describe(&st, desc, sizeof desc);
            link = S_ISLNK(st.st_mode);
        }
        if (err == ELOOP || err == ENOTDIR)
            kvx__set_why(s->refused_why, sizeof s->refused_why,
                         "refusing %s: it is %s (%s), not a room directory", s->dir,
                         link ? "a symbolic link" : "not a directory", desc);
        else
            kvx__set_why(s->refused_why, sizeof s->refused_why, "cannot open %s: %s", s->dir,
                         strerror(err));
        return 3;
    }
    if (kvx__dir_check(fd, s->dir, fe->set.shared ? KVX__DIR_SHARED : 0, s->refused_why,
                      sizeof s->refused_why) != KVX_OK) {
        close(fd);
        return 3;
    }
    if (!fstatat(fd, "transfer_failed", &st, AT_SYMLINK_NOFOLLOW)) err = 1;
    else if (!fstatat(fd, "transfer_done", &st, AT_SYMLINK_NOFOLLOW)) err = 0;
    else err = -1;
    if (err < 0) close(fd);
    else __atomic_store_n(&s->dfd, fd, __ATOMIC_RELEASE);
    return err;
}

/* Receiver: files transfer_done lists are not all visible on this node
   (yet): a weakly consistent shared filesystem can show a room before
   everything in it. Until KVX_FILE_SETTLE after transfer_done was first
   seen, the contributor goes back to waiting (its room to the pending
   list) and is read again later; 1 when it did, 0 when the settle time is
   over (the room then fails). */
static int kvx__frecv_again(kvx__fsrc *s, const char *why) {
    kvx__froom *fr = s->fr;
    kvx__fengine *fe = fr->fe;
    uint64_t now = kvx_now_ns();
    int again = 0;
    if (now >= s->settle_until) return 0;
    pthread_mutex_lock(&fe->mu);
    if (!kvx_room_closed(fr->room) && kvx_room_poll(fr->room) != KVX_POLL_FAILED) {
        s->retry_at = now + 20000000ull < s->settle_until ? now + 20000000ull : s->settle_until;
        s->retries++;
        s->state = 0;
        if (!fr->in_pending) {
            kvx_room_ref(fr->room);
            fr->in_pending = 1;
            fr->next_pending = fe->pending;
            fe->pending = fr;
        }
        again = 1;
    }
    pthread_mutex_unlock(&fe->mu);
    if (again && s->retries == 1)
        kvx_engine_log(kvx_room_engine(fr->room), KVX_LOG_INFO, "kvx.file", kvx_room_id(fr->room),
                       "%s; looking again for up to %g s (KVX_FILE_SETTLE)", why, fe->set.settle_s);
    return again;
}

/* Progress thread: look for finished (or failed) contributor rooms. Each
   item holds a room reference: an item without a source drops the pending
   list's. The deadline's sentence names the first contributor still
   missing (the core reads it on this thread). */
static void kvx__file_progress(kvx_engine *e) {
    kvx__fengine *fe = kvx__fe(e);
    kvx__froom *ready[64], **pp;
    kvx__fsrc *src[64];
    int what[64];
    int n = 0, i;
    pthread_mutex_lock(&fe->mu);
    for (pp = &fe->pending; *pp && n < 63;) {
        kvx__froom *fr = *pp;
        uint32_t k, waiting = 0, first = fr->nsrc;
        int stop = kvx_room_poll(fr->room) == KVX_POLL_FAILED;
        for (k = 0; !stop && k < fr->nsrc && n < 63; k++) {
            kvx__fsrc *s = &fr->src[k];
            int f;
            if (s->state != 0) continue;
            if ((f = kvx__frecv_look(fr, s)) == -1) {
                if (first == fr->nsrc) first = k;
                continue;
            }
            s->state = 1;
            kvx_room_ref(fr->room);
            what[n] = f;
            src[n] = s;
            ready[n++] = fr;
            stop = f != 0; /* that contributor fails the room */
        }
        for (k = 0; k < fr->nsrc; k++) waiting += fr->src[k].state == 0;
        if (!stop && first < fr->nsrc && first != fr->missing && fr->deadline_what[0]) {
            fr->missing = first;
            snprintf(fr->deadline_what, sizeof fr->deadline_what,
                     "no transfer_done from %s (%s) appeared (KVX_FILE_TIMEOUT %g s)",
                     fr->src[first].who, fr->src[first].dir, fe->set.timeout_s);
        }
        if (!stop && waiting) {
            pp = &fr->next_pending;
            continue;
        }
        *pp = fr->next_pending; /* off the list: its reference goes with an item */
        fr->in_pending = 0;
        what[n] = -2;
        src[n] = NULL;
        ready[n++] = fr;
    }
    pthread_mutex_unlock(&fe->mu);
    for (i = 0; i < n; i++) {
        kvx__froom *fr = ready[i];
        kvx__fsrc *s = src[i];
        if (what[i] == 1 || what[i] == 2) kvx__frecv_sender_failed(fr, s, what[i] == 2);
        if (what[i] == 3) kvx_room_fail(fr->room, KVX_ERR_PERMISSION, "%s", s->refused_why);
        if (what[i] != 0 || kvx_room_poll(fr->room) == KVX_POLL_FAILED) {
            kvx_room_unref(fr->room);
            continue;
        }
        if (!s->settle_until)
            s->settle_until = kvx_now_ns() + (uint64_t)(fe->set.settle_s * 1e9);
        pthread_mutex_lock(&fr->mu);
        fr->busy++;
        pthread_mutex_unlock(&fr->mu);
        if (kvx__workq_submit(fe->q, kvx__frecv_start, s) != KVX_OK) kvx__frecv_start(s);
    }
}

static void kvx__file_hooks(kvx_backend *b) { /* no room_abort: room_failed does it */
    KVX__BACKEND_ROOM_HOOKS(b, kvx__file);
    b->progress = kvx__file_progress;
    b->layerwise = 1; /* LAYER-WISE SEND: kvx__fsend_part */
}

KVX_API const kvx_backend *kvx_file_backend(void) {
    static kvx_backend b;
    return kvx__backend_table(&b, "file", kvx__file_engine_init, kvx__file_hooks);
}

KVX_API kvx_result kvx_file_register(void) { return kvx_transport_register(kvx_file_backend()); }

#ifdef __cplusplus
}
#endif
#endif /* KVX_IMPLEMENTATION */
