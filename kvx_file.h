/* kvx_file.h - v0.1.0 - the file transport: KV pages through a local or shared filesystem

   The prefill side gathers the KV page bytes of each chunk straight from its
   pool and writes them under <KVX_FILE_DIR>/room_<room>/; the decode side
   waits for the room's `transfer_done` marker, checks every chunk's meta
   against its own layout, reads the bytes straight into its destination
   pages, verifies the CRC32C of every chunk and of the aux rows, and only
   then reports Success. Nothing needs to run between the two: the
   directory can be on NFS, Lustre or CephFS.

   DO THIS
       #define KVX_IMPLEMENTATION
       #include "kvx_file.h"         (includes kvx.h)
       kvx_file_register();          (once; then desc.transport = "file")
     or set desc.backend = kvx_file_backend().

   ENVIRONMENT (read once at engine creation; override desc.file)
     KVX_FILE_DIR         directory of room directories         (/tmp/kvx_file)
     KVX_FILE_TIMEOUT     seconds a receiver waits for transfer_done after
                          init; the room then fails with KVX_ERR_TIMEOUT (300)
     KVX_FILE_FSYNC       0: no fsync. Every file is written under a
                          temporary name and renamed, so a reader never sees
                          a torn file even if the writer is killed; data may
                          be lost on power failure. 1: fsync each file before
                          its rename and the room directory after it, so
                          transfer_done is durable and, on filesystems whose
                          clients cache metadata, everything before it is on
                          the server first (use on shared filesystems).  (0)
     KVX_FILE_KEEP        1: leave room directories after a receiver is done (0)
     KVX_FILE_IO_THREADS  I/O worker threads per engine                 (4)
     KVX_FILE_TTL         seconds; room directories older than this are
                          removed when an engine starts                (3600)
     KVX_FILE_STRIPE      bytes one worker reads or writes at a time (16 MiB)

   ON DISK (format version 1; all integers little-endian; see README.md)
     room_<room>/kv_chunk_<i>.bin       chunk i's pages, buffer-major: buffer
                                        b's pages start at offset[b] =
                                        num_pages * sum(item_len[0..b-1]),
                                        page j of the chunk at offset[b] +
                                        j * item_len[b]
     room_<room>/kv_chunk_<i>.bin.meta  JSON, see kvx_file_read_meta
     room_<room>/metadata.bin           the aux rows of the sender's slot,
                                        aux buffer 0's row, then 1's ...
     room_<room>/transfer_done          JSON, written last
     room_<room>/transfer_failed        JSON {"reason": ...} when the sender
                                        failed or aborted
     Temporary files end in ".tmp.<pid>.<n>" and are never read.

   WITH A BOOTSTRAP ADDRESS (kvx_boot.h)
     The file transport needs no handshake, but it can use one: a prefill
     engine given desc.bootstrap_addr, desc.boot.port or KVX_BOOTSTRAP_PORT
     runs kvx_boot's bootstrap server and control listener; a receiver whose
     room (or engine) has a bootstrap address connects to it. Then the
     sender waits in BOOTSTRAPPING for the decode side's room frame (and
     checks that both sides agree on the page count), reports Success or
     its failure reason over the control channel, and aborts travel both
     ways at once; the decode side also learns within
     KVX_HEARTBEAT_INTERVAL x KVX_HEARTBEAT_MAX_FAILURE that a prefill died,
     instead of waiting for KVX_FILE_TIMEOUT. The bytes still go through
     the files, and a receiver still reports Success only after reading and
     verifying them.

   THREAD SAFETY: as kvx.h. I/O runs on the engine's worker threads;
   kvx_receiver_destroy waits until no worker touches the room's pages.
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

#define KVX_FILE_FORMAT_VERSION 1

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
    char dtype[32];
    uint32_t num_buffers;
    uint64_t *item_lens;  /* num_buffers entries */
    uint64_t *offsets;    /* num_buffers entries */
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


static kvx_result kvx__read_small(const char *path, char **out, size_t *len, size_t max,
                                  char *why, size_t wl) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    char *buf;
    size_t got = 0;
    *out = NULL;
    if (fd < 0) {
        kvx__set_why(why, wl, "cannot open %s: %s", path, strerror(errno));
        return errno == ENOENT ? KVX_ERR_NOT_FOUND : kvx__errno_result(errno);
    }
    if (fstat(fd, &st) || (uint64_t)st.st_size > max) {
        kvx__set_why(why, wl, "%s is %lld bytes, more than the %zu allowed", path,
                     (long long)st.st_size, max);
        close(fd);
        return KVX_ERR_CORRUPT;
    }
    buf = (char *)malloc((size_t)st.st_size + 1);
    if (!buf) { close(fd); return KVX_ERR_NO_MEMORY; }
    while (got < (size_t)st.st_size) {
        ssize_t n = read(fd, buf + got, (size_t)st.st_size - got);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            kvx__set_why(why, wl, "cannot read %s: %s", path, n ? strerror(errno) : "short read");
            free(buf);
            close(fd);
            return KVX_ERR_IO;
        }
        got += (size_t)n;
    }
    close(fd);
    buf[got] = 0;
    *out = buf;
    *len = got;
    return KVX_OK;
}

/* Writes data to dir/name through a temporary name and a rename. */
static kvx_result kvx__write_atomic(const char *dir, const char *name, const void *data,
                                    size_t len, int do_fsync, char *why, size_t wl) {
    static unsigned seq;
    char tmp[KVX__FILE_PATH], dst[KVX__FILE_PATH];
    const char *p = (const char *)data;
    int fd, err = 0;
    kvx__pathf(dst, "%s/%s", dir, name);
    kvx__pathf(tmp, "%s.tmp.%ld.%u", dst, (long)getpid(), __atomic_add_fetch(&seq, 1, __ATOMIC_RELAXED));
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        kvx__set_why(why, wl, "cannot create %s: %s", tmp, strerror(errno));
        return kvx__errno_result(errno);
    }
    while (len) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) { err = errno; break; }
        p += n; len -= (size_t)n;
    }
    if (!err && do_fsync && fsync(fd)) err = errno;
    if (close(fd) && !err) err = errno;
    if (!err && rename(tmp, dst)) err = errno;
    if (err) {
        kvx__set_why(why, wl, "cannot write %s: %s", dst, strerror(err));
        unlink(tmp);
        return kvx__errno_result(err);
    }
    return KVX_OK;
}

static void kvx__fsync_dir(const char *dir) {
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) { fsync(fd); close(fd); }
}

/* Removes the regular files of a room directory, then the directory. */
static void kvx__rm_room(const char *dir) {
    DIR *d = opendir(dir);
    struct dirent *de;
    char p[KVX__FILE_PATH];
    if (!d) return;
    while ((de = readdir(d)) != NULL) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
        kvx__pathf(p, "%s/%s", dir, de->d_name);
        unlink(p);
    }
    closedir(d);
    rmdir(dir);
}

/* Reads or writes the packed byte range [lo, hi) of a one-sided plan
   between pool memory and a file, and returns the CRC32C of those bytes
   (computed over pool memory: before writing, after reading). */
/* Index of the first span that reaches past packed offset lo (spans of a
   one-sided plan are sorted on the packed side). */
static size_t kvx__plan_find(const kvx_plan *p, int to_file, uint64_t lo) {
    size_t a = 0, b = p->count;
    while (a < b) {
        size_t m = (a + b) / 2;
        const kvx_span *sp = &p->spans[m];
        uint64_t po = to_file ? sp->dst_offset : sp->src_offset;
        if (po + sp->length <= lo) a = m + 1;
        else b = m;
    }
    return a;
}

static kvx_result kvx__full_io(int to_file, int fd, char *buf, uint64_t len, uint64_t off,
                               int *err_out) {
    while (len) {
        ssize_t n = to_file ? pwrite(fd, buf, (size_t)len, (off_t)off)
                            : pread(fd, buf, (size_t)len, (off_t)off);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) { *err_out = errno; return kvx__errno_result(errno); }
        if (n == 0) return KVX_ERR_CORRUPT; /* short file */
        buf += n; len -= (uint64_t)n; off += (uint64_t)n;
    }
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
    if (!to_file && (r = kvx__full_io(0, fd, stage, hi - lo, lo, err_out)) != KVX_OK) return r;
    if (!to_file) *crc = kvx_crc32c(0, stage, hi - lo);
    while (pos < hi && s < p->count) {
        const kvx_span *sp = &p->spans[s];
        const kvx_buffer *bf = &l->buffers[sp->buffer];
        uint64_t po = to_file ? sp->dst_offset : sp->src_offset;
        uint64_t mo = to_file ? sp->src_offset : sp->dst_offset;
        uint64_t skip = pos - po, take = sp->length - skip;
        char *h = stage + (pos - lo), *bp = (char *)bf->base + mo + skip;
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

static kvx_result kvx__plan_io(const kvx_layout *l, const kvx_plan *p, int to_file, int fd,
                               uint64_t lo, uint64_t hi, uint32_t *crc, int *err_out) {
    struct iovec iov[KVX__FILE_IOV];
    size_t s;
    uint64_t pos = lo;
    uint32_t c = 0;
    *err_out = 0;
    s = kvx__plan_find(p, to_file, lo);
    while (pos < hi) {
        int n = 0;
        uint64_t start = pos;
        ssize_t done;
        uint64_t want = 0;
        int k;
        while (pos < hi && n < KVX__FILE_IOV && s < p->count) {
            const kvx_span *sp = &p->spans[s];
            uint64_t po = to_file ? sp->dst_offset : sp->src_offset;
            uint64_t mo = to_file ? sp->src_offset : sp->dst_offset;
            uint64_t skip = pos - po, take = sp->length - skip;
            if (take > hi - pos) take = hi - pos;
            iov[n].iov_base = (char *)l->buffers[sp->buffer].base + mo + skip;
            iov[n].iov_len = (size_t)take;
            n++;
            pos += take;
            want += take;
            if (skip + take == sp->length) s++;
        }
        if (!n) return KVX_ERR_CORRUPT; /* plan does not cover the range */
        if (to_file && crc)
            for (k = 0; k < n; k++) c = kvx_crc32c(c, iov[k].iov_base, iov[k].iov_len);
        {
            struct iovec *v = iov;
            int vn = n;
            uint64_t off = start;
            while (want) {
                done = to_file ? pwritev(fd, v, vn, (off_t)off) : preadv(fd, v, vn, (off_t)off);
                if (done < 0 && errno == EINTR) continue;
                if (done < 0) { *err_out = errno; return kvx__errno_result(errno); }
                if (done == 0) { *err_out = 0; return KVX_ERR_CORRUPT; } /* short file */
                want -= (uint64_t)done;
                off += (uint64_t)done;
                while (vn && (size_t)done >= v->iov_len) { done -= (ssize_t)v->iov_len; v++; vn--; }
                if (vn && done) { v->iov_base = (char *)v->iov_base + done; v->iov_len -= (size_t)done; }
            }
        }
        if (!to_file && crc)
            for (k = 0; k < n; k++) c = kvx_crc32c(c, iov[k].iov_base, iov[k].iov_len);
    }
    if (crc) *crc = c;
    return KVX_OK;
}

/* CRC32C of the packed range [lo, hi) of a one-sided plan, read from pool
   memory (no I/O). */
static kvx_result kvx__plan_crc(const kvx_layout *l, const kvx_plan *p, int to_file, uint64_t lo,
                                uint64_t hi, uint32_t *crc) {
    size_t s = kvx__plan_find(p, to_file, lo);
    uint64_t pos = lo;
    uint32_t c = 0;
    while (pos < hi && s < p->count) {
        const kvx_span *sp = &p->spans[s];
        uint64_t po = to_file ? sp->dst_offset : sp->src_offset;
        uint64_t mo = to_file ? sp->src_offset : sp->dst_offset;
        uint64_t skip = pos - po, take = sp->length - skip;
        if (take > hi - pos) take = hi - pos;
        c = kvx_crc32c(c, (const char *)l->buffers[sp->buffer].base + mo + skip, (size_t)take);
        pos += take;
        if (skip + take == sp->length) s++;
    }
    if (pos < hi) return KVX_ERR_CORRUPT;
    *crc = c;
    return KVX_OK;
}

/* >>file: formats ------------------------------------------------------------ */

static void kvx__meta_json(kvx_buf *b, const kvx_layout *l, uint64_t room, const kvx_chunk *c,
                           uint64_t bytes, uint32_t crc) {
    uint32_t i;
    uint64_t off = 0;
    kvx_buf_printf(b, "{\"format\":\"kvx-file-chunk\",\"version\":%d,\"room\":%llu,\"chunk\":%u,"
                      "\"first_page\":%u,\"num_pages\":%u,\"bytes\":%llu,\"crc32c\":%u,",
                   KVX_FILE_FORMAT_VERSION, (unsigned long long)room, c->index, c->first_page,
                   c->num_pages, (unsigned long long)bytes, crc);
    kvx_buf_printf(b, "\"layout_fingerprint\":\"%016llx\",\"page_size\":%u,\"dtype\":",
                   (unsigned long long)kvx_layout_fingerprint(l), l->page_size);
    kvx_buf_json_str(b, l->dtype);
    kvx_buf_printf(b, ",\"dtype_size\":%u,\"num_kv_heads\":%u,\"mla\":%d,\"buffers\":[",
                   l->dtype_size, l->num_kv_heads, l->mla ? 1 : 0);
    for (i = 0; i < l->num_buffers; i++) {
        kvx_buf_printf(b, "%s{\"item_len\":%llu,\"offset\":%llu}", i ? "," : "",
                       (unsigned long long)l->buffers[i].item_len, (unsigned long long)off);
        off += l->buffers[i].item_len * c->num_pages;
    }
    kvx_buf_printf(b, "]}\n");
}

static int kvx__json_hex64(const kvx_json_doc *d, const kvx_json *o, const char *key,
                           uint64_t *out) {
    const kvx_json *v = kvx_json_get(d, o, key);
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

KVX_API kvx_result kvx_file_read_meta(const char *path, kvx_file_chunk_info *m, char *why,
                                      size_t wl) {
    char *text = NULL;
    size_t len = 0;
    kvx_result r;
    memset(m, 0, sizeof *m);
    if ((r = kvx__read_small(path, &text, &len, KVX__FILE_META_MAX, why, wl)) != KVX_OK) return r;
    r = kvx_file_parse_meta(text, len, path, m, why, wl);
    free(text);
    return r;
}

KVX_API kvx_result kvx_file_parse_meta(const char *text, size_t len, const char *path,
                                       kvx_file_chunk_info *m, char *why, size_t wl) {
    kvx_json_doc d;
    const kvx_json *root, *bufs, *fmt, *dt;
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
    if (kvx_json_parse(&d, text, len, 4 * KVX_MAX_BUFFERS + 64) != KVX_OK) {
        kvx__set_why(why, wl, "%s is not valid JSON: %s", path, d.error);
        r = KVX_ERR_CORRUPT;
        goto done;
    }
    r = KVX_OK;
    root = kvx_json_root(&d);
    fmt = kvx_json_get(&d, root, "format");
    KVX__REQ(fmt && fmt->type == KVX_JSON_STRING && !strcmp(fmt->str, "kvx-file-chunk"),
             "%s: \"format\" is not \"kvx-file-chunk\"", path);
    KVX__REQ(kvx_json_u64(&d, root, "version", 1, 1000, &v[0]), "%s: bad \"version\"", path);
    KVX__REQ(v[0] == KVX_FILE_FORMAT_VERSION, "%s: format version %llu, this reader knows %d",
             path, (unsigned long long)v[0], KVX_FILE_FORMAT_VERSION);
    m->version = (uint32_t)v[0];
    KVX__REQ(kvx_json_u64(&d, root, "room", 0, UINT64_MAX, &m->room), "%s: bad \"room\"", path);
    KVX__REQ(kvx_json_u64(&d, root, "chunk", 0, KVX__FILE_MAX_CHUNKS, &v[1]) &&
                 kvx_json_u64(&d, root, "first_page", 0, KVX_MAX_PAGES, &v[2]) &&
                 kvx_json_u64(&d, root, "num_pages", 0, KVX_MAX_PAGES, &v[3]) &&
                 kvx_json_u64(&d, root, "bytes", 0, UINT64_MAX / 2, &m->bytes) &&
                 kvx_json_u64(&d, root, "crc32c", 0, UINT32_MAX, &v[4]) &&
                 kvx_json_u64(&d, root, "page_size", 1, UINT32_MAX, &v[5]) &&
                 kvx_json_u64(&d, root, "dtype_size", 0, 64, &v[6]) &&
                 kvx_json_u64(&d, root, "num_kv_heads", 0, UINT32_MAX, &v[7]) &&
                 kvx_json_u64(&d, root, "mla", 0, 1, &v[8]),
             "%s: a numeric field is missing or out of range", path);
    m->chunk = (uint32_t)v[1]; m->first_page = (uint32_t)v[2]; m->num_pages = (uint32_t)v[3];
    m->crc32c = (uint32_t)v[4]; m->page_size = (uint32_t)v[5]; m->dtype_size = (uint32_t)v[6];
    m->num_kv_heads = (uint32_t)v[7]; m->mla = (uint32_t)v[8];
    KVX__REQ(kvx__json_hex64(&d, root, "layout_fingerprint", &m->fingerprint),
             "%s: bad \"layout_fingerprint\"", path);
    dt = kvx_json_get(&d, root, "dtype");
    KVX__REQ(dt && dt->type == KVX_JSON_STRING && dt->str_len < sizeof m->dtype,
             "%s: bad \"dtype\"", path);
    memcpy(m->dtype, dt->str, dt->str_len + 1);
    bufs = kvx_json_get(&d, root, "buffers");
    KVX__REQ(bufs && bufs->type == KVX_JSON_ARRAY && bufs->count >= 1 &&
                 bufs->count <= KVX_MAX_BUFFERS,
             "%s: \"buffers\" must be an array of 1..%d entries", path, KVX_MAX_BUFFERS);
    m->num_buffers = bufs->count;
    m->item_lens = (uint64_t *)calloc(bufs->count, sizeof(uint64_t));
    m->offsets = (uint64_t *)calloc(bufs->count, sizeof(uint64_t));
    if (!m->item_lens || !m->offsets) { r = KVX_ERR_NO_MEMORY; goto done; }
    for (i = 0; i < bufs->count; i++) {
        const kvx_json *e = kvx_json_at(&d, bufs, i);
        KVX__REQ(kvx_json_u64(&d, e, "item_len", 1, 1ull << 40, &m->item_lens[i]) &&
                     kvx_json_u64(&d, e, "offset", 0, UINT64_MAX / 2, &m->offsets[i]),
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
    kvx_json_free(&d);
    return r;
}

KVX_API void kvx_file_chunk_info_free(kvx_file_chunk_info *m) {
    free(m->item_lens);
    free(m->offsets);
    m->item_lens = m->offsets = NULL;
}

KVX_API kvx_result kvx_file_read_done(const char *path, kvx_file_done_info *o, char *why,
                                      size_t wl) {
    char *text = NULL;
    size_t len = 0;
    kvx_result r;
    memset(o, 0, sizeof *o);
    if ((r = kvx__read_small(path, &text, &len, KVX__FILE_META_MAX, why, wl)) != KVX_OK) return r;
    r = kvx_file_parse_done(text, len, path, o, why, wl);
    free(text);
    return r;
}

KVX_API kvx_result kvx_file_parse_done(const char *text, size_t len, const char *path,
                                       kvx_file_done_info *o, char *why, size_t wl) {
    kvx_json_doc d;
    const kvx_json *root, *fmt, *aux;
    uint64_t v[8];
    uint32_t i;
    kvx_result r;
    memset(o, 0, sizeof *o);
    memset(&d, 0, sizeof d);
    if (kvx_json_parse(&d, text, len, 256) != KVX_OK) {
        kvx__set_why(why, wl, "%s is not valid JSON: %s", path, d.error);
        r = KVX_ERR_CORRUPT;
        goto done;
    }
    r = KVX_OK;
    root = kvx_json_root(&d);
    fmt = kvx_json_get(&d, root, "format");
    KVX__REQ(fmt && fmt->type == KVX_JSON_STRING && !strcmp(fmt->str, "kvx-file-done"),
             "%s: \"format\" is not \"kvx-file-done\"", path);
    KVX__REQ(kvx_json_u64(&d, root, "version", 1, 1000, &v[0]) &&
                 v[0] == KVX_FILE_FORMAT_VERSION,
             "%s: missing or unknown format version (this reader knows %d)", path,
             KVX_FILE_FORMAT_VERSION);
    o->version = (uint32_t)v[0];
    KVX__REQ(kvx_json_u64(&d, root, "room", 0, UINT64_MAX, &o->room) &&
                 kvx_json_u64(&d, root, "chunks", 0, KVX__FILE_MAX_CHUNKS, &v[1]) &&
                 kvx_json_u64(&d, root, "total_pages", 0, KVX_MAX_PAGES, &v[2]) &&
                 kvx_json_u64(&d, root, "aux_bytes", 0, 1u << 30, &o->aux_bytes) &&
                 kvx_json_u64(&d, root, "aux_crc32c", 0, UINT32_MAX, &v[3]),
             "%s: a numeric field is missing or out of range", path);
    o->chunks = (uint32_t)v[1]; o->total_pages = (uint32_t)v[2]; o->aux_crc32c = (uint32_t)v[3];
    KVX__REQ(kvx__json_hex64(&d, root, "layout_fingerprint", &o->fingerprint),
             "%s: bad \"layout_fingerprint\"", path);
    {
        const kvx_json *ai = kvx_json_get(&d, root, "aux_index");
        KVX__REQ(ai && ai->type == KVX_JSON_NUMBER && ai->is_int &&
                     (ai->negative ? ai->i64 == -1 : ai->u64 <= INT32_MAX),
                 "%s: bad \"aux_index\"", path);
        o->aux_index = ai->negative ? -1 : (int32_t)ai->u64;
    }
    aux = kvx_json_get(&d, root, "aux_item_lens");
    KVX__REQ(aux && aux->type == KVX_JSON_ARRAY && aux->count <= KVX_MAX_AUX,
             "%s: \"aux_item_lens\" must be an array of at most %d entries", path, KVX_MAX_AUX);
    o->num_aux = aux->count;
    v[4] = 0;
    for (i = 0; i < aux->count; i++) {
        KVX__REQ(kvx_json_u64(&d, kvx_json_at(&d, aux, i), NULL, 1, 1u << 28, &o->aux_item_lens[i]),
                 "%s: aux_item_lens[%u] is bad", path, i);
        v[4] += o->aux_item_lens[i];
    }
    KVX__REQ(o->aux_bytes == (o->aux_index >= 0 ? v[4] : 0),
             "%s: aux_bytes is %llu, expected %llu", path, (unsigned long long)o->aux_bytes,
             (unsigned long long)(o->aux_index >= 0 ? v[4] : 0));
done:
    kvx_json_free(&d);
    return r;
}
#undef KVX__REQ

KVX_API kvx_result kvx_file_crc32c(int fd, uint64_t off, uint64_t len, uint32_t *crc) {
    char *buf = (char *)malloc(1 << 20);
    uint32_t c = 0;
    if (!buf) return KVX_ERR_NO_MEMORY;
    while (len) {
        size_t want = len > (1u << 20) ? (1u << 20) : (size_t)len;
        ssize_t n = pread(fd, buf, want, (off_t)off);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) { free(buf); return n ? kvx__errno_result(errno) : KVX_ERR_CORRUPT; }
        c = kvx_crc32c(c, buf, (size_t)n);
        off += (uint64_t)n;
        len -= (uint64_t)n;
    }
    free(buf);
    *crc = c;
    return KVX_OK;
}

/* >>file transport: engine ---------------------------------------------------- */

typedef struct kvx__fengine {
    char dir[KVX__FILE_PATH];
    double timeout_s, ttl_s;
    int do_fsync, keep, io_threads;
    uint64_t stripe;
    kvx_workq *q;
    pthread_mutex_t mu;
    struct kvx__froom *pending; /* receivers waiting for transfer_done */
    /* layouts with GPU buffers: pinned staging buffers, at most one per I/O thread */
    int staged;
    kvx_mem_ops mem;
    kvx_boot *boot;             /* NULL: no bootstrap */
    char *stage_free[64];
    int num_stage_free;
} kvx__fengine;

static char *kvx__stage_get(kvx__fengine *fe) {
    char *s = NULL;
    pthread_mutex_lock(&fe->mu);
    if (fe->num_stage_free) s = fe->stage_free[--fe->num_stage_free];
    pthread_mutex_unlock(&fe->mu);
    return s ? s : (char *)fe->mem.host_alloc(fe->mem.ctx, (size_t)fe->stripe);
}

static void kvx__stage_put(kvx__fengine *fe, char *s) {
    pthread_mutex_lock(&fe->mu);
    if (fe->num_stage_free < (int)(sizeof fe->stage_free / sizeof fe->stage_free[0])) {
        fe->stage_free[fe->num_stage_free++] = s;
        s = NULL;
    }
    pthread_mutex_unlock(&fe->mu);
    if (s) fe->mem.host_free(fe->mem.ctx, s);
}

/* One stripe of a chunk between pool pages and the file, staged when the
   layout has GPU buffers. */
static kvx_result kvx__stripe_io(kvx__fengine *fe, const kvx_layout *l, const kvx_plan *p,
                                 int to_file, int fd, uint64_t lo, uint64_t hi, uint32_t *crc,
                                 int *err, char *why, size_t wl) {
    char *stage;
    kvx_result r;
    if (!fe->staged) return kvx__plan_io(l, p, to_file, fd, lo, hi, crc, err);
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
    kvx_chunk *chunk;       /* sender: owned */
    kvx_plan plan;          /* receiver: scatter plan */
    kvx_file_chunk_info meta; /* receiver */
    char path[KVX__FILE_PATH];
    char tmp[KVX__FILE_PATH];
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

typedef struct kvx__froom {
    kvx_room *room;
    kvx__fengine *fe;
    char dir[KVX__FILE_PATH];
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int busy;               /* stripes running or queued, under mu */
    /* sender */
    uint32_t chunks_sent, chunks_done, total_pages;
    int last_sent, finished;
    uint64_t bytes_done;
    int32_t aux_index;
    int boot;               /* the room goes through kvx_boot */
    /* receiver */
    int32_t *pages;
    uint32_t num_pages;
    kvx_file_done_info done;
    uint32_t chunks_read;
    char deadline_what[KVX__FILE_PATH + 96];
    struct kvx__froom *next_pending;
    int is_pending;
} kvx__froom;

static kvx__fengine *kvx__fe(kvx_engine *e) { return (kvx__fengine *)kvx_engine_backend_data(e); }

static void kvx__file_sweep(kvx_engine *e, kvx__fengine *fe) {
    DIR *d = opendir(fe->dir);
    struct dirent *de;
    time_t now = time(NULL);
    int removed = 0;
    if (!d) return;
    while ((de = readdir(d)) != NULL) {
        char p[KVX__FILE_PATH];
        struct stat st;
        if (strncmp(de->d_name, "room_", 5)) continue;
        kvx__pathf(p, "%s/%s", fe->dir, de->d_name);
        if (lstat(p, &st) || !S_ISDIR(st.st_mode)) continue;
        if (difftime(now, st.st_mtime) > fe->ttl_s) { kvx__rm_room(p); removed++; }
    }
    closedir(d);
    if (removed)
        kvx_engine_log(e, KVX_LOG_INFO, "kvx.file", 0,
                       "removed %d room directories older than %.0f s from %s", removed,
                       fe->ttl_s, fe->dir);
}

/* Prefill: a bootstrap server when one is configured. Decode: always
   ready, used by the rooms that carry a bootstrap address. */
static int kvx__file_wants_boot(const kvx_engine_desc *d) {
    const char *port = getenv("KVX_BOOTSTRAP_PORT");
    if (d->role == KVX_ROLE_DECODE) return 1;
    return d->bootstrap_addr || d->boot.port || (port && *port);
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

static kvx_result kvx__file_engine_init(kvx_engine *e, char *why, size_t wl) {
    const kvx_engine_desc *d = kvx_engine_settings(e);
    kvx__fengine *fe;
    const char *dir = d->file.dir ? d->file.dir : "/tmp/kvx_file";
    int stripe_mb = 0;
    kvx_result r;
    fe = (kvx__fengine *)kvx_engine_alloc(e, sizeof *fe);
    if (!fe) return KVX_ERR_NO_MEMORY;
    memset(fe, 0, sizeof *fe);
    fe->timeout_s = d->file.timeout_s > 0 ? d->file.timeout_s : 300;
    fe->do_fsync = d->file.fsync;
    fe->keep = d->file.keep;
    fe->io_threads = d->file.io_threads > 0 ? d->file.io_threads : 4;
    fe->ttl_s = d->file.ttl_s > 0 ? d->file.ttl_s : 3600;
    fe->stripe = d->file.stripe_bytes ? d->file.stripe_bytes : (16u << 20);
    stripe_mb = (int)fe->stripe;
    kvx_env_str("KVX_FILE_DIR", &dir);
    if ((r = kvx_env_double("KVX_FILE_TIMEOUT", &fe->timeout_s, why, wl)) ||
        (r = kvx_env_int("KVX_FILE_FSYNC", &fe->do_fsync, why, wl)) ||
        (r = kvx_env_int("KVX_FILE_KEEP", &fe->keep, why, wl)) ||
        (r = kvx_env_int("KVX_FILE_IO_THREADS", &fe->io_threads, why, wl)) ||
        (r = kvx_env_double("KVX_FILE_TTL", &fe->ttl_s, why, wl)) ||
        (r = kvx_env_int("KVX_FILE_STRIPE", &stripe_mb, why, wl))) {
        kvx_engine_free(e, fe);
        return r;
    }
    if (fe->io_threads < 1) fe->io_threads = 1;
    {
        const kvx_layout *l = kvx_engine_layout(e);
        uint32_t i;
        for (i = 0; i < l->num_buffers; i++)
            if (l->buffers[i].mem != KVX_MEM_HOST) fe->staged = 1;
        fe->mem = d->mem;
        if (fe->staged && (!fe->mem.copy || !fe->mem.host_alloc || !fe->mem.host_free)) {
            kvx__set_why(why, wl, "the layout has KV buffers in GPU memory but desc.mem has no "
                         "copy functions: fill it with kvx_cuda_mem_ops() from kvx_cuda.h "
                         "(built with -DKVX_WITH_CUDA)");
            kvx_engine_free(e, fe);
            return KVX_ERR_INVALID_ARGUMENT;
        }
    }
    fe->stripe = stripe_mb >= 4096 ? (uint64_t)stripe_mb : (16u << 20);
    if (strlen(dir) >= sizeof fe->dir - 64) {
        kvx__set_why(why, wl, "KVX_FILE_DIR is too long (%zu bytes)", strlen(dir));
        kvx_engine_free(e, fe);
        return KVX_ERR_INVALID_ARGUMENT;
    }
    snprintf(fe->dir, sizeof fe->dir, "%s", dir);
    if ((r = kvx__mkdir_p(fe->dir, why, wl)) != KVX_OK) {
        kvx_engine_free(e, fe);
        return r;
    }
    if ((r = kvx_workq_create(e, fe->io_threads, "kvx.file", &fe->q)) != KVX_OK) {
        kvx__set_why(why, wl, "cannot start %d file I/O threads", fe->io_threads);
        kvx_engine_free(e, fe);
        return r;
    }
    pthread_mutex_init(&fe->mu, NULL);
    kvx_engine_set_backend_data(e, fe);
    if (kvx__file_wants_boot(d)) {
        static const kvx_boot_hooks hooks = {NULL, NULL, kvx__file_on_status, NULL, NULL, NULL};
        r = kvx_boot_create(e, &hooks, "file", 4, &fe->boot, why, wl);
        if (r != KVX_OK) {
            kvx_engine_set_backend_data(e, NULL);
            kvx_workq_destroy(fe->q);
            pthread_mutex_destroy(&fe->mu);
            kvx_engine_free(e, fe);
            return r;
        }
    }
    kvx__file_sweep(e, fe);
    return KVX_OK;
}

static void kvx__file_engine_fini(kvx_engine *e) {
    kvx__fengine *fe = kvx__fe(e);
    if (!fe) return;
    kvx_boot_destroy(fe->boot);
    kvx_workq_destroy(fe->q);
    while (fe->num_stage_free) fe->mem.host_free(fe->mem.ctx, fe->stage_free[--fe->num_stage_free]);
    pthread_mutex_destroy(&fe->mu);
    kvx_engine_free(e, fe);
}

static kvx_result kvx__file_room_open(kvx_room *r) {
    kvx_engine *e = kvx_room_engine(r);
    kvx__fengine *fe = kvx__fe(e);
    kvx__froom *fr = (kvx__froom *)kvx_engine_alloc(e, sizeof *fr);
    if (!fr) return KVX_ERR_NO_MEMORY;
    memset(fr, 0, sizeof *fr);
    fr->room = r;
    fr->fe = fe;
    fr->aux_index = -1;
    pthread_mutex_init(&fr->mu, NULL);
    pthread_cond_init(&fr->cv, NULL);
    kvx__pathf(fr->dir, "%s/room_%llu", fe->dir, (unsigned long long)kvx_room_id(r));
    kvx_room_set_data(r, fr);
    fr->boot = fe->boot && (kvx_room_role(r) == KVX_ROLE_PREFILL || kvx_room_bootstrap_addr(r));
    if (fr->boot) return kvx_boot_room_open(fe->boot, r); /* BOOTSTRAPPING until connected */
    kvx_room_advance(r, KVX_POLL_WAITING_FOR_INPUT); /* no handshake */
    return KVX_OK;
}

static void kvx__file_room_free(kvx_room *r) {
    kvx_engine *e = kvx_room_engine(r);
    kvx__froom *fr = (kvx__froom *)kvx_room_data(r);
    if (!fr) return;
    pthread_mutex_destroy(&fr->mu);
    pthread_cond_destroy(&fr->cv);
    kvx_engine_free(e, fr->pages);
    kvx_engine_free(e, fr);
}

static void kvx__file_unpend(kvx__fengine *fe, kvx__froom *fr) {
    kvx__froom **pp;
    pthread_mutex_lock(&fe->mu);
    if (fr->is_pending) {
        for (pp = &fe->pending; *pp; pp = &(*pp)->next_pending)
            if (*pp == fr) { *pp = fr->next_pending; break; }
        fr->is_pending = 0;
        kvx_room_unref(fr->room); /* held by the pending list */
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

static void kvx__file_write_failed(kvx__froom *fr, const char *reason) {
    kvx_buf b = {NULL, 0, 0, 0};
    kvx_buf_printf(&b, "{\"format\":\"kvx-file-failed\",\"version\":%d,\"room\":%llu,\"reason\":",
                   KVX_FILE_FORMAT_VERSION, (unsigned long long)kvx_room_id(fr->room));
    kvx_buf_json_str(&b, reason);
    kvx_buf_printf(&b, "}\n");
    if (!b.oom) kvx__write_atomic(fr->dir, "transfer_failed", b.data, b.len, 0, NULL, 0);
    kvx_buf_free(&b);
}

static void kvx__file_room_abort(kvx_room *r, const char *reason) {
    kvx__froom *fr = (kvx__froom *)kvx_room_data(r);
    if (fr->boot) kvx_boot_abort(fr->fe->boot, r, reason ? reason : "aborted");
    if (kvx_room_role(r) == KVX_ROLE_PREFILL) {
        struct stat st;
        if (stat(fr->dir, &st) == 0) kvx__file_write_failed(fr, reason ? reason : "aborted");
    }
}

/* >>file transport: sender ---------------------------------------------------- */

static void kvx__fjob_free(kvx_engine *e, kvx__fjob *j) {
    if (!j) return;
    if (j->chunk) kvx_chunk_free(e, j->chunk);
    kvx_plan_free(&j->plan);
    kvx_file_chunk_info_free(&j->meta);
    free(j->crcs);
    free(j->stripes);
    kvx_engine_free(e, j);
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

/* Writes metadata.bin and transfer_done after the last chunk landed. */
static kvx_result kvx__file_finish_send(kvx__froom *fr, char *why, size_t wl) {
    kvx_engine *e = kvx_room_engine(fr->room);
    const kvx_layout *l = kvx_engine_layout(e);
    kvx_buf b = {NULL, 0, 0, 0};
    char *aux = NULL;
    uint64_t aux_bytes = 0;
    uint32_t aux_crc = 0, i;
    kvx_result r;
    if (fr->aux_index >= 0) {
        for (i = 0; i < l->num_aux; i++) aux_bytes += l->aux[i].item_len;
        aux = (char *)malloc(aux_bytes ? aux_bytes : 1);
        if (!aux) return KVX_ERR_NO_MEMORY;
        aux_bytes = 0;
        for (i = 0; i < l->num_aux; i++) {
            const kvx_aux_buffer *a = &l->aux[i];
            memcpy(aux + aux_bytes, (const char *)a->base + (uint64_t)fr->aux_index * a->item_len,
                   a->item_len);
            aux_bytes += a->item_len;
        }
        aux_crc = kvx_crc32c(0, aux, aux_bytes);
        r = kvx__write_atomic(fr->dir, "metadata.bin", aux, aux_bytes, fr->fe->do_fsync, why, wl);
        free(aux);
        if (r != KVX_OK) return r;
    }
    kvx_buf_printf(&b, "{\"format\":\"kvx-file-done\",\"version\":%d,\"room\":%llu,\"chunks\":%u,"
                       "\"total_pages\":%u,\"layout_fingerprint\":\"%016llx\",\"aux_index\":%d,"
                       "\"aux_bytes\":%llu,\"aux_crc32c\":%u,\"aux_item_lens\":[",
                   KVX_FILE_FORMAT_VERSION, (unsigned long long)kvx_room_id(fr->room),
                   fr->chunks_sent, fr->total_pages,
                   (unsigned long long)kvx_layout_fingerprint(l), (int)fr->aux_index,
                   (unsigned long long)aux_bytes, aux_crc);
    for (i = 0; i < l->num_aux; i++)
        kvx_buf_printf(&b, "%s%llu", i ? "," : "", (unsigned long long)l->aux[i].item_len);
    kvx_buf_printf(&b, "]}\n");
    if (b.oom) { kvx_buf_free(&b); return KVX_ERR_NO_MEMORY; }
    r = kvx__write_atomic(fr->dir, "transfer_done", b.data, b.len, fr->fe->do_fsync, why, wl);
    kvx_buf_free(&b);
    if (r == KVX_OK && fr->fe->do_fsync) kvx__fsync_dir(fr->dir);
    return r;
}

/* A sender failure reaches the receiver as transfer_failed and, with a
   bootstrap channel, as a status frame at once. */
static void kvx__fsend_failed(kvx__froom *fr, kvx_result res, const char *why) {
    kvx_room_fail(fr->room, res, "%s", why);
    kvx__file_write_failed(fr, why);
    if (fr->boot) kvx_boot_send_status(fr->fe->boot, fr->room, KVX_POLL_FAILED, res, 0, why);
}

static void kvx__fsend_chunk_done(kvx__fjob *j) {
    kvx__froom *fr = j->fr;
    kvx_room *r = fr->room;
    char why[KVX_ERROR_MAX];
    int finish = 0, failed;
    uint32_t i, crc;
    kvx_result res = __atomic_load_n(&j->res, __ATOMIC_ACQUIRE);
    why[0] = 0;
    if (res == KVX_OK && fr->fe->do_fsync && fsync(j->fd))
        kvx__fjob_error(j, res = kvx__errno_result(errno), errno, "cannot fsync %s: %s", j->tmp,
                        strerror(errno));
    if (close(j->fd) && res == KVX_OK)
        kvx__fjob_error(j, res = kvx__errno_result(errno), errno, "cannot close %s: %s", j->tmp,
                        strerror(errno));
    if (res == KVX_OK && rename(j->tmp, j->path))
        kvx__fjob_error(j, res = kvx__errno_result(errno), errno, "cannot rename %s: %s", j->tmp,
                        strerror(errno));
    if (res == KVX_OK) {
        kvx_buf b = {NULL, 0, 0, 0};
        char name[64];
        crc = j->crcs[0];
        for (i = 1; i < j->nstripes; i++) {
            uint64_t lo = (uint64_t)i * fr->fe->stripe;
            uint64_t len = j->bytes - lo < fr->fe->stripe ? j->bytes - lo : fr->fe->stripe;
            crc = kvx_crc32c_combine(crc, j->crcs[i], len);
        }
        kvx__meta_json(&b, kvx_engine_layout(kvx_room_engine(r)), kvx_room_id(r), j->chunk,
                       j->bytes, crc);
        snprintf(name, sizeof name, "kv_chunk_%u.bin.meta", j->chunk->index);
        res = b.oom ? KVX_ERR_NO_MEMORY
                    : kvx__write_atomic(fr->dir, name, b.data, b.len, fr->fe->do_fsync, why,
                                        sizeof why);
        kvx_buf_free(&b);
        if (res != KVX_OK) kvx__fjob_error(j, res, 0, "%s", why);
    } else {
        unlink(j->tmp);
    }
    pthread_mutex_lock(&fr->mu);
    fr->chunks_done++;
    fr->bytes_done += j->bytes;
    failed = res != KVX_OK;
    if (!failed && fr->last_sent && fr->chunks_done == fr->chunks_sent && !fr->finished)
        finish = fr->finished = 1;
    pthread_mutex_unlock(&fr->mu);
    if (failed) {
        if (res != KVX_ERR_ABORTED) kvx__fsend_failed(fr, res, j->why);
        return;
    }
    if (finish) {
        res = kvx__file_finish_send(fr, why, sizeof why);
        if (res != KVX_OK) {
            kvx__fsend_failed(fr, res, why);
        } else {
            if (fr->boot)
                kvx_boot_send_status(fr->fe->boot, r, KVX_POLL_SUCCESS, KVX_OK, fr->bytes_done,
                                     NULL);
            kvx_room_succeed(r, fr->bytes_done);
        }
    }
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
    kvx_result res = KVX_OK;
    if (kvx_room_closed(r) || kvx_room_poll(r) == KVX_POLL_FAILED) {
        kvx__fjob_error(j, KVX_ERR_ABORTED, 0, "cancelled");
        return;
    }
    if (__atomic_load_n(&j->res, __ATOMIC_ACQUIRE) != KVX_OK) return;
    why[0] = 0;
    if (st->kind == KVX__ST_CRC)
        res = kvx__plan_crc(l, plan, to_file, lo, hi, &j->crcs[st->index]);
    else
        res = kvx__stripe_io(fr->fe, l, plan, to_file, j->fd, lo, hi, &j->crcs[st->index], &err,
                             why, sizeof why);
    if (res == KVX_OK) return;
    if (why[0])
        kvx__fjob_error(j, res, err, "%s: %s", to_file ? j->tmp : j->path, why);
    else if (to_file)
        kvx__fjob_error(j, res, err, "cannot write %s: %s", j->tmp, err ? strerror(err) : "short write");
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
    if (st->kind == KVX__ST_SEQ_IO) { /* the writer: the whole file, in order */
        int err = 0;
        kvx_result res = KVX_OK;
        if (kvx_room_closed(r) || kvx_room_poll(r) == KVX_POLL_FAILED)
            kvx__fjob_error(j, KVX_ERR_ABORTED, 0, "cancelled");
        else if (__atomic_load_n(&j->res, __ATOMIC_ACQUIRE) == KVX_OK)
            res = kvx__plan_io(kvx_engine_layout(e), &j->chunk->gather, 1, j->fd, 0, j->bytes,
                               NULL, &err);
        if (res != KVX_OK)
            kvx__fjob_error(j, res, err, "cannot write %s: %s", j->tmp,
                            err ? strerror(err) : "short write");
    } else {
        kvx__fstripe_work(st, &j->chunk->gather, 1);
    }
    if (__atomic_sub_fetch(&j->left, 1, __ATOMIC_ACQ_REL) == 0) {
        kvx__fsend_chunk_done(j);
        kvx__fjob_free(e, j);
        kvx__froom_leave(fr, 1);
        kvx_room_unref(r);
        return;
    }
    kvx__froom_leave(fr, 1);
}

/* Queues a job's stripes. The room stays referenced until the job ends. */
static kvx_result kvx__fjob_submit(kvx__fjob *j, kvx_job_fn fn, int to_file) {
    kvx__froom *fr = j->fr;
    kvx_room *r = fr->room;
    kvx_engine *e = kvx_room_engine(r);
    kvx__fstripe *stripes;
    int seq = !fr->fe->staged; /* host pool: one in-order I/O piece + checksum pieces */
    uint32_t i, n, total, queue_now;
    n = j->bytes ? (uint32_t)((j->bytes + fr->fe->stripe - 1) / fr->fe->stripe) : 1;
    total = n + (seq ? 1u : 0u);
    j->nstripes = n;
    j->left = total;
    j->crcs = (uint32_t *)calloc(n, sizeof(uint32_t));
    j->stripes = stripes = (kvx__fstripe *)calloc(total, sizeof *stripes);
    if (!j->crcs || !stripes) {
        if (j->fd >= 0) close(j->fd);
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
        if (kvx_workq_submit(fr->fe->q, fn, st) != KVX_OK) {
            kvx__fjob_error(j, KVX_ERR_NO_MEMORY, 0, "out of memory queueing file I/O");
            fn(st); /* runs as a failed piece so the counts stay right */
        }
    }
    return KVX_OK;
}

static kvx_result kvx__file_sender_init(kvx_room *r, uint32_t n, int32_t aux) {
    kvx__froom *fr = (kvx__froom *)kvx_room_data(r);
    struct stat st;
    char why[KVX_ERROR_MAX];
    kvx_result res;
    fr->total_pages = n;
    fr->aux_index = aux;
    if (fr->boot && kvx_boot_room_dst_pages(fr->fe->boot, r) != n) {
        kvx_room_fail(r, KVX_ERR_INVALID_ARGUMENT,
                      "init declares %u pages but the decode side asked for %u", n,
                      kvx_boot_room_dst_pages(fr->fe->boot, r));
        kvx_boot_send_status(fr->fe->boot, r, KVX_POLL_FAILED, KVX_ERR_INVALID_ARGUMENT, 0,
                             "the prefill and decode sides disagree on the page count");
        return KVX_ERR_INVALID_ARGUMENT;
    }
    if (stat(fr->dir, &st) == 0) {
        kvx_engine_log(kvx_room_engine(r), KVX_LOG_WARN, "kvx.file", kvx_room_id(r),
                       "%s already exists (a reused room id?); replacing it", fr->dir);
        kvx__rm_room(fr->dir);
    }
    if (mkdir(fr->dir, 0755) && errno != EEXIST) {
        int err = errno;
        kvx_room_fail(r, kvx__errno_result(err), "cannot create %s: %s", fr->dir, strerror(err));
        return kvx__errno_result(err);
    }
    (void)why;
    (void)res;
    return KVX_OK;
}

static kvx_result kvx__file_sender_send(kvx_room *r, kvx_chunk *c) {
    kvx_engine *e = kvx_room_engine(r);
    kvx__froom *fr = (kvx__froom *)kvx_room_data(r);
    kvx__fjob *j = (kvx__fjob *)kvx_engine_alloc(e, sizeof *j);
    static unsigned seq;
    if (!j) { kvx_chunk_free(e, c); return KVX_ERR_NO_MEMORY; }
    memset(j, 0, sizeof *j);
    j->fr = fr;
    j->chunk = c;
    j->bytes = c->gather.packed_bytes;
    kvx__pathf(j->path, "%s/kv_chunk_%u.bin", fr->dir, c->index);
    kvx__pathf(j->tmp, "%s.tmp.%ld.%u", j->path, (long)getpid(),
             __atomic_add_fetch(&seq, 1, __ATOMIC_RELAXED));
    j->fd = open(j->tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (j->fd < 0) {
        int err = errno;
        kvx_room_fail(r, kvx__errno_result(err), "cannot create %s: %s", j->tmp, strerror(err));
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
    if (fe->timeout_s < kvx_engine_settings(e)->waiting_timeout_s) {
        snprintf(fr->deadline_what, sizeof fr->deadline_what,
                 "no %s/transfer_done appeared (KVX_FILE_TIMEOUT %g s)", fr->dir, fe->timeout_s);
        kvx_room_set_deadline(r, kvx_now_ns() + (uint64_t)(fe->timeout_s * 1e9),
                              fr->deadline_what);
    }
    if (fr->boot) {
        kvx_result res = kvx_boot_receiver_init(fe->boot, r, pages, n, aux);
        if (res != KVX_OK) return res;
    }
    kvx_room_ref(r);
    pthread_mutex_lock(&fe->mu);
    fr->next_pending = fe->pending;
    fe->pending = fr;
    fr->is_pending = 1;
    pthread_mutex_unlock(&fe->mu);
    return KVX_OK;
}

static void kvx__frecv_fail(kvx__froom *fr, kvx_result res, const char *msg) {
    kvx_room_fail(fr->room, res, "%s", msg);
    if (!fr->fe->keep) kvx__rm_room(fr->dir);
}

/* After every chunk is in place and verified: aux rows, then Success. */
static void kvx__frecv_finish(kvx__froom *fr) {
    kvx_room *r = fr->room;
    const kvx_layout *l = kvx_engine_layout(kvx_room_engine(r));
    char why[KVX_ERROR_MAX], path[KVX__FILE_PATH];
    uint64_t aux_bytes = 0;
    uint32_t i;
    if (fr->aux_index >= 0 && fr->done.aux_index >= 0) {
        char *aux = NULL;
        size_t len = 0;
        kvx_result res;
        kvx__pathf(path, "%s/metadata.bin", fr->dir);
        res = kvx__read_small(path, &aux, &len, 1u << 30, why, sizeof why);
        if (res != KVX_OK) { kvx__frecv_fail(fr, res == KVX_ERR_NOT_FOUND ? KVX_ERR_CORRUPT : res, why); return; }
        if (len != fr->done.aux_bytes || kvx_crc32c(0, aux, len) != fr->done.aux_crc32c) {
            kvx__set_why(why, sizeof why, "%s is %zu bytes with CRC32C %08x; transfer_done says %llu "
                     "bytes with %08x: corrupted or truncated", path, len, kvx_crc32c(0, aux, len),
                     (unsigned long long)fr->done.aux_bytes, fr->done.aux_crc32c);
            free(aux);
            kvx__frecv_fail(fr, KVX_ERR_CORRUPT, why);
            return;
        }
        for (i = 0; i < l->num_aux; i++) {
            const kvx_aux_buffer *a = &l->aux[i];
            memcpy((char *)a->base + (uint64_t)fr->aux_index * a->item_len, aux + aux_bytes,
                   a->item_len);
            aux_bytes += a->item_len;
        }
        free(aux);
    } else if (fr->aux_index >= 0) {
        kvx__frecv_fail(fr, KVX_ERR_PROTOCOL, "the receiver expects aux rows but the sender "
                                              "sent none (aux_index -1 in transfer_done)");
        return;
    }
    /* every byte is in place: report it, then clean up (the room's files are
       no longer needed by anyone, and unlinking large files takes time) */
    kvx_room_succeed(r, fr->bytes_done + aux_bytes);
    if (!fr->fe->keep) kvx__rm_room(fr->dir);
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
        if (kvx_workq_submit(fr->fe->q, kvx__frecv_stripe, &j->stripes[k]) != KVX_OK)
            kvx__frecv_stripe(&j->stripes[k]); /* our own piece keeps the job alive */
    }
    if (queued < n) __atomic_sub_fetch(&j->left, n - queued, __ATOMIC_ACQ_REL);
}

static void kvx__frecv_stripe(void *arg) {
    kvx__fstripe *st = (kvx__fstripe *)arg;
    kvx__fjob *j = st->job;
    kvx__froom *fr = j->fr;
    kvx_room *r = fr->room;
    kvx_engine *e = kvx_room_engine(r);
    int last_chunk = 0;
    if (st->kind == KVX__ST_SEQ_IO) kvx__frecv_read_all(st);
    else kvx__fstripe_work(st, &j->plan, 0);
    if (__atomic_sub_fetch(&j->left, 1, __ATOMIC_ACQ_REL) != 0) {
        kvx__froom_leave(fr, 1);
        return;
    }
    close(j->fd);
    if (__atomic_load_n(&j->res, __ATOMIC_ACQUIRE) == KVX_OK) {
        uint32_t i, crc = j->crcs[0];
        for (i = 1; i < j->nstripes; i++) {
            uint64_t off = (uint64_t)i * fr->fe->stripe;
            uint64_t len = j->bytes - off < fr->fe->stripe ? j->bytes - off : fr->fe->stripe;
            crc = kvx_crc32c_combine(crc, j->crcs[i], len);
        }
        if (crc != j->meta.crc32c)
            kvx__fjob_error(j, KVX_ERR_CORRUPT, 0,
                            "checksum mismatch in %s: its meta says CRC32C %08x, the bytes give "
                            "%08x (corrupted file)", j->path, j->meta.crc32c, crc);
    }
    pthread_mutex_lock(&fr->mu);
    fr->chunks_read++;
    fr->bytes_done += j->bytes;
    last_chunk = fr->chunks_read == fr->done.chunks;
    pthread_mutex_unlock(&fr->mu);
    if (__atomic_load_n(&j->res, __ATOMIC_ACQUIRE) != KVX_OK && j->res != KVX_ERR_ABORTED) kvx__frecv_fail(fr, j->res, j->why);
    else if (last_chunk && __atomic_load_n(&j->res, __ATOMIC_ACQUIRE) == KVX_OK && kvx_room_poll(r) != KVX_POLL_FAILED &&
             !kvx_room_closed(r))
        kvx__frecv_finish(fr);
    kvx__fjob_free(e, j);
    kvx__froom_leave(fr, 1);
    kvx_room_unref(r);
}

/* Builds "their" layout from a meta and transfer_done, for a field-by-field
   comparison with ours. */
static kvx_result kvx__frecv_check_layout(kvx__froom *fr, const kvx_file_chunk_info *m,
                                          char *why, size_t wl) {
    const kvx_layout *ours = kvx_engine_layout(kvx_room_engine(fr->room));
    kvx_layout th;
    kvx_buffer *bufs;
    kvx_aux_buffer aux[KVX_MAX_AUX];
    uint32_t i;
    kvx_result res;
    char diff[KVX_ERROR_MAX];
    if (m->fingerprint == kvx_layout_fingerprint(ours) && fr->done.fingerprint == m->fingerprint)
        return KVX_OK;
    bufs = (kvx_buffer *)calloc(m->num_buffers, sizeof *bufs);
    if (!bufs) return KVX_ERR_NO_MEMORY;
    memset(&th, 0, sizeof th);
    memset(aux, 0, sizeof aux);
    for (i = 0; i < m->num_buffers; i++) bufs[i].item_len = m->item_lens[i];
    for (i = 0; i < fr->done.num_aux; i++) aux[i].item_len = fr->done.aux_item_lens[i];
    th.buffers = bufs; th.num_buffers = m->num_buffers;
    th.aux = aux; th.num_aux = fr->done.num_aux;
    th.page_size = m->page_size; th.dtype_size = m->dtype_size; th.dtype = m->dtype;
    th.num_kv_heads = m->num_kv_heads; th.mla = (int)m->mla;
    res = kvx_layout_compare(ours, &th, diff, sizeof diff);
    free(bufs);
    if (res == KVX_OK) {
        kvx__set_why(why, wl, "layout fingerprint of the sender (%016llx) differs from ours "
                     "(%016llx)", (unsigned long long)m->fingerprint,
                     (unsigned long long)kvx_layout_fingerprint(ours));
        return KVX_ERR_LAYOUT_MISMATCH;
    }
    kvx__set_why(why, wl, "the sender's KV layout in %s does not match the receiver's: %s",
                 fr->dir, diff);
    return res;
}

/* Parses transfer_done and every meta, then queues the reads. Runs on a
   worker; the room is referenced by the caller. */
static void kvx__frecv_start(void *arg) {
    kvx__froom *fr = (kvx__froom *)arg;
    kvx_room *r = fr->room;
    kvx_engine *e = kvx_room_engine(r);
    const kvx_layout *l = kvx_engine_layout(e);
    char why[KVX_ERROR_MAX], path[KVX__FILE_PATH];
    kvx__fjob **jobs = NULL;
    uint32_t i, next_page = 0, njobs = 0;
    kvx_result res;
    why[0] = 0;
    if (kvx_room_closed(r) || kvx_room_poll(r) == KVX_POLL_FAILED) goto out;
    kvx__pathf(path, "%s/transfer_done", fr->dir);
    if ((res = kvx_file_read_done(path, &fr->done, why, sizeof why)) != KVX_OK) {
        kvx__frecv_fail(fr, res == KVX_ERR_NOT_FOUND ? KVX_ERR_CORRUPT : res, why);
        goto out;
    }
    if (fr->done.room != kvx_room_id(r)) {
        kvx__set_why(why, sizeof why, "%s names room %llu, not %llu", path,
                 (unsigned long long)fr->done.room, (unsigned long long)kvx_room_id(r));
        kvx__frecv_fail(fr, KVX_ERR_CORRUPT, why);
        goto out;
    }
    if (fr->done.total_pages != fr->num_pages) {
        kvx__set_why(why, sizeof why, "the sender sent %u pages, the receiver expects %u",
                 fr->done.total_pages, fr->num_pages);
        kvx__frecv_fail(fr, KVX_ERR_LAYOUT_MISMATCH, why);
        goto out;
    }
    if (fr->done.chunks == 0) {
        kvx__frecv_fail(fr, KVX_ERR_CORRUPT, "transfer_done lists no chunks");
        goto out;
    }
    jobs = (kvx__fjob **)calloc(fr->done.chunks, sizeof *jobs);
    if (!jobs) { kvx__frecv_fail(fr, KVX_ERR_NO_MEMORY, "out of memory"); goto out; }
    for (i = 0; i < fr->done.chunks; i++) {
        kvx__fjob *j = (kvx__fjob *)kvx_engine_alloc(e, sizeof *j);
        struct stat st;
        if (!j) { res = KVX_ERR_NO_MEMORY; kvx__set_why(why, sizeof why, "out of memory"); break; }
        memset(j, 0, sizeof *j);
        j->fd = -1;
        j->fr = fr;
        jobs[njobs++] = j;
        kvx__pathf(j->path, "%s/kv_chunk_%u.bin", fr->dir, i);
        kvx__pathf(path, "%s.meta", j->path);
        if ((res = kvx_file_read_meta(path, &j->meta, why, sizeof why)) != KVX_OK) {
            if (res == KVX_ERR_NOT_FOUND) res = KVX_ERR_CORRUPT;
            break;
        }
        if ((res = kvx__frecv_check_layout(fr, &j->meta, why, sizeof why)) != KVX_OK) break;
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
        res = kvx_plan_scatter(&j->plan, l, fr->pages + next_page, j->meta.num_pages);
        if (res != KVX_OK) { kvx__set_why(why, sizeof why, "%s", j->plan.error); break; }
        next_page += j->meta.num_pages;
        j->bytes = j->meta.bytes;
        j->fd = open(j->path, O_RDONLY | O_CLOEXEC);
        if (j->fd < 0) {
            int err = errno;
            kvx__set_why(why, sizeof why, "cannot open %s: %s", j->path, strerror(err));
            res = err == ENOENT ? KVX_ERR_CORRUPT : kvx__errno_result(err);
            break;
        }
        if (fstat(j->fd, &st) || (uint64_t)st.st_size != j->bytes ||
            j->plan.packed_bytes != j->bytes) {
            kvx__set_why(why, sizeof why, "%s is %lld bytes; its meta says %llu (truncated or "
                     "corrupted)", j->path, (long long)st.st_size, (unsigned long long)j->bytes);
            res = KVX_ERR_CORRUPT;
            break;
        }
    }
    if (i == fr->done.chunks && next_page != fr->num_pages) {
        kvx__set_why(why, sizeof why, "the chunks hold %u pages, transfer_done says %u", next_page,
                 fr->num_pages);
        res = KVX_ERR_CORRUPT;
    }
    if (res != KVX_OK) {
        for (i = 0; i < njobs; i++) {
            if (jobs[i]->fd >= 0) close(jobs[i]->fd);
            kvx__fjob_free(e, jobs[i]);
        }
        kvx__frecv_fail(fr, res, why);
        goto out;
    }
    for (i = 0; i < njobs; i++) kvx__fjob_submit(jobs[i], kvx__frecv_stripe, 0);
out:
    free(jobs);
    kvx__froom_leave(fr, 1);
    kvx_room_unref(r);
}

static void kvx__frecv_sender_failed(kvx__froom *fr) {
    char path[KVX__FILE_PATH], why[KVX_ERROR_MAX];
    char *text = NULL;
    size_t len = 0;
    kvx_json_doc d;
    const kvx_json *reason;
    kvx__pathf(path, "%s/transfer_failed", fr->dir);
    memset(&d, 0, sizeof d);
    if (kvx__read_small(path, &text, &len, 65536, why, sizeof why) == KVX_OK &&
        kvx_json_parse(&d, text, len, 64) == KVX_OK &&
        (reason = kvx_json_get(&d, kvx_json_root(&d), "reason")) != NULL &&
        reason->type == KVX_JSON_STRING)
        kvx__set_why(why, sizeof why, "the sender failed: %.*s", (int)reason->str_len, reason->str);
    else
        kvx__set_why(why, sizeof why, "the sender failed (%s is unreadable)", path);
    kvx_json_free(&d);
    free(text);
    kvx__frecv_fail(fr, KVX_ERR_PEER, why);
}

/* Progress thread: look for finished (or failed) rooms. */
static void kvx__file_progress(kvx_engine *e) {
    kvx__fengine *fe = kvx__fe(e);
    kvx__froom *ready[64], **pp;
    int failed[64];
    int n = 0, i;
    char path[KVX__FILE_PATH];
    struct stat st;
    pthread_mutex_lock(&fe->mu);
    for (pp = &fe->pending; *pp && n < 64;) {
        kvx__froom *fr = *pp;
        int f = -1;
        kvx__pathf(path, "%s/transfer_done", fr->dir);
        if (stat(path, &st) == 0) f = 0;
        else {
            kvx__pathf(path, "%s/transfer_failed", fr->dir);
            if (stat(path, &st) == 0) f = 1;
        }
        if (f < 0 && kvx_room_poll(fr->room) != KVX_POLL_FAILED) { pp = &fr->next_pending; continue; }
        *pp = fr->next_pending;
        fr->is_pending = 0;
        failed[n] = f;
        ready[n++] = fr; /* the pending list's reference moves to us */
    }
    pthread_mutex_unlock(&fe->mu);
    for (i = 0; i < n; i++) {
        kvx__froom *fr = ready[i];
        if (failed[i] == 1) kvx__frecv_sender_failed(fr);
        if (failed[i] != 0 || kvx_room_poll(fr->room) == KVX_POLL_FAILED) {
            kvx_room_unref(fr->room);
            continue;
        }
        pthread_mutex_lock(&fr->mu);
        fr->busy++;
        pthread_mutex_unlock(&fr->mu);
        if (kvx_workq_submit(fe->q, kvx__frecv_start, fr) != KVX_OK) kvx__frecv_start(fr);
    }
}

KVX_API const kvx_backend *kvx_file_backend(void) {
    static const kvx_backend b = {"file",
                                  kvx__file_engine_init,
                                  kvx__file_engine_fini,
                                  kvx__file_progress,
                                  kvx__file_room_open,
                                  kvx__file_sender_init,
                                  kvx__file_sender_send,
                                  kvx__file_receiver_init,
                                  kvx__file_room_abort,
                                  kvx__file_room_close,
                                  kvx__file_room_free,
                                  NULL};
    return &b;
}

KVX_API kvx_result kvx_file_register(void) { return kvx_transport_register(kvx_file_backend()); }

#ifdef __cplusplus
}
#endif
#endif /* KVX_IMPLEMENTATION */
