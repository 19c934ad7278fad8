/* bench_store - block store throughput against raw file I/O of the same bytes.

   Put and get of one 4096-token Llama-3.1-8B batch: 32 layers x K,V = 64
   KV buffers, 8 KV heads x head dim 128 x bf16 x page size 16 = 32 KiB per
   buffer per page, 256 pages scattered over a 512-page pool: 512 MiB of KV
   per batch, one 2 MiB block file per page. Files live under /tmp (page
   cache: this measures the store's CPU and syscall path, not a disk).

   Two situations, each against its raw counterpart, interleaved in every
   iteration (medians reported):
     full store  the store's capacity is one batch, so every put evicts the
                 previous batch and rewrites its files in place (the steady
                 state of an offload cache) | raw: write() the same 512 MiB
                 over an existing file in place, read() it back
     empty store puts go to new files (the previous batch removed, untimed)
                 | raw: write() the 512 MiB to a new file (the old one
                 unlinked, untimed)
   Raw is one thread, one contiguous buffer, one file. Two more raw
   baselines, each with its time and CPU: as many threads as the store
   (pwrite/pread of disjoint stripes of the contiguous buffer), and one
   thread moving the same bytes between the same scattered pool pages and
   one file (pwritev/preadv of a page's 64 spans per call: what any store
   of these pages must at least do), once with one thread and once with as
   many as the store (like for like: same pages, same parallelism). CPU is getrusage(RUSAGE_SELF): every
   thread of the process (the store's I/O threads included), user + system. Then exists lookups per second over 100,000 stored keys with a warm
   cache, and how long opening a store of 100,000 blocks takes.

   Then the layer-wise load (kvx_store_load_*) of the same 4096-token
   prefix: time to the first layer available and to the whole prefix,
   against kvx_store_batch_get of the same keys, same run, with a warm and
   a cold page cache (see bench_layers).

   Usage: bench_store [--dir DIR] [--iters N] [--threads N] [--keys N]
                      [--only put-get|layers|exists] [--dfs-pages N] [--scan-keys N]
                      [--phase put|get|raw-write|raw-read|pool-write|pool-read|put-new]
                      [--hugepages 1]
   --phase runs only that operation of the put/get bench, --iters times,
   and prints its GB/s and GB per CPU-second (to profile it alone:
   perf record -g ./build/bench_store --phase get --iters 40).
   --hugepages 1 puts the put/get bench's pool and raw buffer in transparent
   huge pages (madvise MADV_HUGEPAGE): the kernel's copy to or from 32 KiB
   pieces scattered over 4 KiB pages costs more than to a contiguous buffer.
   Env: KVX_STORE_* apply to the store as usual.

   Shared filesystem (KVX_DFS_A and KVX_DFS_B: one directory seen through
   two mounts of one volume, as two nodes see it; tests/dfs/gluster.sh run
   sets them): instead of the above, a batch of --dfs-pages pages (64 = 128
   MiB, 2 MiB blocks) is put through mount A and got through mount B,
   against a raw write() of the same bytes to one new file through A and a
   raw read() of it through B (same run, interleaved, medians); then the
   cost of a namespace scan of --scan-keys blocks (10,000): the open that
   indexes them through B (a stat per block), and a rescan of a store that
   knows them (no stat), through A, B and a local directory. */
#define KVX_IMPLEMENTATION
#include "kvx_store.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <fcntl.h>
#include <unistd.h>
#include <ftw.h>
#include <pthread.h>
#include <sys/stat.h>
#include <sys/resource.h>
#include <sys/uio.h>
#include <sys/mman.h>

#define NBUF 64
#define ITEM (32u << 10)
#define POOL_PAGES 512
#define BATCH 256 /* 4096 tokens / 16 */

static double now_s(void) { return (double)kvx_now_ns() / 1e9; }

/* CPU seconds of the whole process (every thread), user + system. */
static double cpu_s(void) {
    struct rusage r;
    getrusage(RUSAGE_SELF, &r);
    return (double)(r.ru_utime.tv_sec + r.ru_stime.tv_sec) +
           (double)(r.ru_utime.tv_usec + r.ru_stime.tv_usec) / 1e6;
}

static int rm_cb(const char *p, const struct stat *sb, int flag, struct FTW *f) {
    (void)sb; (void)flag; (void)f;
    remove(p);
    return 0;
}
static void rm_rf(const char *d) { nftw(d, rm_cb, 32, FTW_DEPTH | FTW_PHYS); }

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}
static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp_d);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static void die(const char *what) {
    fprintf(stderr, "bench_store: %s: %s\n", what, strerror(errno));
    exit(1);
}

/* ---- raw baselines ---- */

/* write() of buf to path: a new file (fresh) or over the existing one in place. */
static double raw_write1(const char *path, const char *buf, size_t len, int fresh) {
    double t0 = now_s();
    size_t off = 0;
    int fd = open(path, fresh ? O_WRONLY | O_CREAT | O_TRUNC : O_WRONLY | O_CREAT, 0644);
    if (fd < 0) die("open raw file");
    while (off < len) {
        ssize_t n = write(fd, buf + off, len - off);
        if (n <= 0) die("write raw file");
        off += (size_t)n;
    }
    close(fd);
    return now_s() - t0;
}

static double raw_read1(const char *path, char *buf, size_t len) {
    double t0 = now_s();
    size_t off = 0;
    int fd = open(path, O_RDONLY);
    if (fd < 0) die("open raw file");
    while (off < len) {
        ssize_t n = read(fd, buf + off, len - off);
        if (n <= 0) die("read raw file");
        off += (size_t)n;
    }
    close(fd);
    return now_s() - t0;
}

typedef struct stripe {
    int fd, write;
    char *buf;
    size_t off, len;
} stripe;

static void *stripe_main(void *a) {
    stripe *s = (stripe *)a;
    size_t done = 0;
    while (done < s->len) {
        ssize_t n = s->write ? pwrite(s->fd, s->buf + s->off + done, s->len - done, (off_t)(s->off + done))
                             : pread(s->fd, s->buf + s->off + done, s->len - done, (off_t)(s->off + done));
        if (n <= 0) die("raw stripe I/O");
        done += (size_t)n;
    }
    return NULL;
}

/* The same bytes with nt threads, each a contiguous stripe, over the existing file. */
static double raw_parallel(const char *path, char *buf, size_t len, int nt, int write) {
    pthread_t th[64];
    stripe st[64];
    double t0 = now_s();
    int fd = open(path, write ? O_WRONLY | O_CREAT : O_RDONLY, 0644), i;
    size_t per = (len / (size_t)nt + 4095) & ~(size_t)4095;
    if (fd < 0) die("open raw file");
    for (i = 0; i < nt; i++) {
        st[i].fd = fd;
        st[i].write = write;
        st[i].buf = buf;
        st[i].off = (size_t)i * per < len ? (size_t)i * per : len;
        st[i].len = st[i].off + per <= len ? per : len - st[i].off;
        pthread_create(&th[i], NULL, stripe_main, &st[i]);
    }
    for (i = 0; i < nt; i++) pthread_join(th[i], NULL);
    close(fd);
    return now_s() - t0;
}

/* The same bytes between the same scattered pool pages and one file: a
   pwritev / preadv of each page's NBUF spans (2 MiB, one call) at the
   page's offset, one thread, no checksum, no per-block file: the least any
   store of these pages must do (the pages are where the engine keeps them). */
static void pool_io(int fd, const kvx_buffer *bufs, const int32_t *pages, int j0, int j1, int write) {
    const int base = j0; /* the file holds pages j0.. from offset 0 */
    struct iovec v[NBUF];
    int j, b;
    for (j = j0; j < j1; j++) {
        size_t done = 0, len = (size_t)NBUF * ITEM;
        for (b = 0; b < NBUF; b++) {
            v[b].iov_base = (char *)bufs[b].base + (size_t)pages[j] * ITEM;
            v[b].iov_len = ITEM;
        }
        while (done < len) { /* short transfers: rebuild the tail */
            struct iovec t[NBUF];
            int n = 0;
            size_t skip = done;
            ssize_t r;
            for (b = 0; b < NBUF; b++) {
                if (skip >= ITEM) { skip -= ITEM; continue; }
                t[n].iov_base = (char *)v[b].iov_base + skip;
                t[n++].iov_len = ITEM - skip;
                skip = 0;
            }
            r = write ? pwritev(fd, t, n, (off_t)((size_t)(j - base) * len + done))
                      : preadv(fd, t, n, (off_t)((size_t)(j - base) * len + done));
            if (r <= 0) die("raw pool-page I/O");
            done += (size_t)r;
        }
    }
}

typedef struct pool_stripe {
    int fd, write, j0, j1;
    const kvx_buffer *bufs;
    const int32_t *pages;
} pool_stripe;

static void *pool_main(void *a) {
    pool_stripe *s = (pool_stripe *)a;
    pool_io(s->fd, s->bufs, s->pages, s->j0, s->j1, s->write);
    return NULL;
}

/* raw_pool with nt threads, each a contiguous run of the pages in a file of
   its own (path.pool<i>; nt 1: the caller alone, path): one file per
   thread as the store has one per block, so no thread waits on another's
   inode lock. */
static double raw_pool(const char *path, const kvx_buffer *bufs, const int32_t *pages, int write,
                       int nt) {
    pthread_t th[64];
    pool_stripe st[64];
    char p[700];
    double t0 = now_s();
    int i;
    for (i = 0; i < nt; i++) {
        if (nt > 1) snprintf(p, sizeof p, "%s.pool%d", path, i);
        else snprintf(p, sizeof p, "%s", path);
        st[i].fd = open(p, write ? O_WRONLY | O_CREAT : O_RDONLY, 0644);
        if (st[i].fd < 0) die("open raw file");
        st[i].write = write;
        st[i].bufs = bufs;
        st[i].pages = pages;
        st[i].j0 = BATCH * i / nt;
        st[i].j1 = BATCH * (i + 1) / nt;
        if (i && pthread_create(&th[i], NULL, pool_main, &st[i])) die("pthread_create");
    }
    pool_main(&st[0]);
    for (i = 1; i < nt; i++) pthread_join(th[i], NULL);
    for (i = 0; i < nt; i++) close(st[i].fd);
    return now_s() - t0;
}

/* Overwrites the first and last 64 bytes of each dst page (untimed): a load
   that skips a page, or any part of one, then shows in pages_differ. */
static void scribble(const kvx_buffer *bufs, const int32_t *dst) {
    int b, i;
    for (b = 0; b < NBUF; b++)
        for (i = 0; i < BATCH; i++) {
            char *p = (char *)bufs[b].base + (size_t)dst[i] * ITEM;
            memset(p, 0xA5, 64);
            memset(p + ITEM - 64, 0x5A, 64);
        }
}

/* How many of the BATCH pages differ between src and dst (untimed checks). */
static int pages_differ(const kvx_buffer *bufs, const int32_t *src, const int32_t *dst) {
    int b, i, n = 0;
    for (b = 0; b < NBUF; b++)
        for (i = 0; i < BATCH; i++)
            if (memcmp((const char *)bufs[b].base + (size_t)src[i] * ITEM,
                       (const char *)bufs[b].base + (size_t)dst[i] * ITEM, ITEM)) n++;
    return n;
}

/* ---- the store ---- */

static kvx_store *open_store(const char *dir, const kvx_layout *l, int threads, const char *model,
                             uint64_t capacity) {
    kvx_store_desc d;
    kvx_store *s = NULL;
    char why[KVX_ERROR_MAX];
    memset(&d, 0, sizeof d);
    d.dir = dir;
    d.model = model;
    d.layout = *l;
    d.io_threads = threads;
    d.capacity_bytes = capacity;
    d.scan_interval = -1; /* one process per store here: no periodic scan in the timings */
    if (kvx_store_open(&d, &s, why, sizeof why) != KVX_OK) {
        fprintf(stderr, "bench_store: cannot open the store: %s\n", why);
        exit(1);
    }
    return s;
}

static void make_keys(kvx_store_key *k, size_t n, uint64_t family) {
    size_t i;
    for (i = 0; i < n; i++) {
        uint64_t v[2];
        kvx__sha256 h;
        v[0] = family;
        v[1] = i;
        kvx__sha256_init(&h);
        kvx__sha256_update(&h, v, sizeof v);
        kvx__sha256_final(&h, k[i].bytes);
    }
}

static double gbps(size_t bytes, double *t, int n) { return (double)bytes / median(t, n) / 1e9; }
static double best(size_t bytes, const double *t, int n) {
    double m = t[0];
    int i;
    for (i = 1; i < n; i++)
        if (t[i] < m) m = t[i];
    return (double)bytes / m / 1e9;
}

/* CPU pressure (share of time some task waited for a CPU, last 10 s): this
   machine may be shared, and the figures mean little when it is high. */
static double cpu_pressure(void) {
    FILE *f = fopen("/proc/pressure/cpu", "r");
    double v = -1;
    if (f) {
        if (fscanf(f, "some avg10=%lf", &v) != 1) v = -1;
        fclose(f);
    }
    return v;
}

enum { T_PUT_FULL, T_RAW_OVER, T_GET, T_RAW_READ, T_PUT_EMPTY, T_RAW_NEW, T_RAW_NW, T_RAW_NR,
       T_RAW_PW, T_RAW_PR, T_RAW_PNW, T_RAW_PNR, T_N };

/* --phase: only one operation of the throughput bench, iters times (for
   perf record / perf stat of that operation alone); 0 = the whole bench. */
enum { PH_ALL, PH_PUT, PH_GET, PH_RAW_WRITE, PH_RAW_READ, PH_POOL_WRITE, PH_POOL_READ, PH_PUT_NEW };
static int g_phase;
static int g_huge; /* --hugepages 1: the pool and the raw buffer in transparent huge pages */

/* posix_memalign, 2 MiB-aligned and MADV_HUGEPAGE with --hugepages 1. */
static void *bench_alloc(size_t n) {
    void *p = NULL;
    if (posix_memalign(&p, g_huge ? (size_t)2 << 20 : 4096, n)) return NULL;
#ifdef MADV_HUGEPAGE
    if (g_huge && madvise(p, n, MADV_HUGEPAGE)) die("madvise(MADV_HUGEPAGE)");
#endif
    return p;
}

/* perf record --control: with BENCH_PERF_CTL (and BENCH_PERF_ACK) naming
   perf's control (ack) FIFO, the phase alone is recorded:
     mkfifo ctl ack; BENCH_PERF_CTL=ctl BENCH_PERF_ACK=ack perf record -D -1 \
       --control fifo:ctl,ack -g ./build/bench_store --phase get --iters 40 */
static void perf_ctl(const char *cmd) {
    const char *c = getenv("BENCH_PERF_CTL"), *a = getenv("BENCH_PERF_ACK");
    char ack[16];
    int fd;
    if (!c || !*c) return;
    if ((fd = open(c, O_WRONLY)) < 0) die("open BENCH_PERF_CTL");
    if (write(fd, cmd, strlen(cmd)) != (ssize_t)strlen(cmd)) die("write BENCH_PERF_CTL");
    close(fd);
    if (a && *a) {
        if ((fd = open(a, O_RDONLY)) < 0) die("open BENCH_PERF_ACK");
        if (read(fd, ack, sizeof ack) <= 0) die("read BENCH_PERF_ACK");
        close(fd);
    }
}

/* Runs only phase g_phase iters times; prints its GB/s and GB per CPU-second. */
static void bench_phase(kvx_store *full, kvx_store *empty, kvx_store_key *keys, const int32_t *src, const int32_t *dst,
                        const char *over, char *raw, size_t bytes, int iters, kvx_buffer *bufs) {
    static const char *names[] = {"", "put (full store)", "get", "raw overwrite", "raw read",
                                  "raw pool-page write", "raw pool-page read", "put (new files)"};
    double t0, c0, wall, cpu;
    int it, bad = 0;
    perf_ctl("enable\n");
    t0 = now_s();
    c0 = cpu_s();
    for (it = 0; it < iters; it++) {
        size_t loaded = 0;
        if (g_phase == PH_PUT) {
            make_keys(keys, BATCH, 5000000 + (uint64_t)it); /* new keys: every put evicts and writes */
            if (kvx_store_batch_put(full, keys, src, BATCH, NULL) != KVX_OK) bad++;
        } else if (g_phase == PH_GET) {
            if (kvx_store_batch_get(full, keys, dst, BATCH, &loaded) != KVX_OK || loaded != BATCH) bad++;
        } else if (g_phase == PH_RAW_WRITE) {
            raw_write1(over, raw, bytes, 0);
        } else if (g_phase == PH_PUT_NEW) { /* the removal of the previous batch is counted too */
            size_t i;
            make_keys(keys, BATCH, 6000000 + (uint64_t)it);
            if (kvx_store_batch_put(empty, keys, src, BATCH, NULL) != KVX_OK) bad++;
            for (i = 0; i < BATCH; i++) kvx_store_remove(empty, &keys[i]);
        } else if (g_phase == PH_POOL_WRITE) {
            raw_pool(over, bufs, src, 1, 1);
        } else if (g_phase == PH_POOL_READ) {
            raw_pool(over, bufs, dst, 0, 1);
        } else {
            raw_read1(over, raw, bytes);
        }
    }
    wall = now_s() - t0;
    cpu = cpu_s() - c0;
    perf_ctl("disable\n");
    printf("phase %s: %d x %zu MiB: %.2f GB/s, %.2f GB per CPU-second (%.3f CPU s)%s\n", names[g_phase],
           iters, bytes >> 20, (double)bytes * iters / wall / 1e9, (double)bytes * iters / cpu / 1e9,
           cpu, bad ? "; FAILED" : "");
    if (bad) exit(1);
}

static void bench_throughput(const char *dir, int iters, int threads) {
    kvx_buffer bufs[NBUF];
    kvx_layout l;
    int32_t perm[POOL_PAGES], src[BATCH], dst[BATCH];
    kvx_store_key keys[BATCH];
    size_t bytes = (size_t)BATCH * NBUF * ITEM, b, i;
    char *raw, over[600], fresh[600], sub[600];
    double *t[T_N], g[T_N], bb[T_N], p0, cpu[T_N], c0;
    kvx_store *full, *empty;
    uint64_t x = 88172645463325252ull, block;
    int it, bad = 0, k;

    for (k = 0; k < T_N; k++) t[k] = (double *)calloc((size_t)iters, sizeof(double));
    memset(&l, 0, sizeof l);
    memset(bufs, 0, sizeof bufs);
    for (b = 0; b < NBUF; b++) {
        uint64_t *m;
        bufs[b].item_len = ITEM;
        bufs[b].length = (uint64_t)ITEM * POOL_PAGES;
        if (!(bufs[b].base = bench_alloc((size_t)bufs[b].length))) die("pool");
        m = (uint64_t *)bufs[b].base;
        for (i = 0; i < bufs[b].length / 8; i++) {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            m[i] = x;
        }
    }
    l.buffers = bufs;
    l.num_buffers = NBUF;
    l.page_size = 16;
    l.num_kv_heads = 8;
    l.dtype_size = 2;
    l.dtype = "bfloat16";
    /* scattered pages: a shuffled pool, the first half put, the second half the get targets */
    for (i = 0; i < POOL_PAGES; i++) perm[i] = (int32_t)i;
    for (i = POOL_PAGES - 1; i > 0; i--) {
        size_t j;
        int32_t tmp;
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        j = (size_t)(x % (i + 1));
        tmp = perm[i]; perm[i] = perm[j]; perm[j] = tmp;
    }
    for (i = 0; i < BATCH; i++) { src[i] = perm[i]; dst[i] = perm[BATCH + i]; }

    if (!(raw = (char *)bench_alloc(bytes))) die("raw buffer");
    for (b = 0, i = 0; b < NBUF; b++) { /* the same bytes, contiguous */
        size_t j;
        for (j = 0; j < BATCH; j++, i++)
            memcpy(raw + i * ITEM, (char *)bufs[b].base + (size_t)src[j] * ITEM, ITEM);
    }
    snprintf(over, sizeof over, "%s/raw_inplace.bin", dir);
    snprintf(fresh, sizeof fresh, "%s/raw_new.bin", dir);
    snprintf(sub, sizeof sub, "%s/empty", dir);
    empty = open_store(sub, &l, threads, "meta-llama/Llama-3.1-8B", KVX_STORE_UNLIMITED);
    block = kvx_store_block_bytes(empty);
    snprintf(sub, sizeof sub, "%s/full", dir);
    full = open_store(sub, &l, threads, "meta-llama/Llama-3.1-8B", BATCH * block);
    printf("bench_store: Llama-3.1-8B, 4096-token batch = %d pages x %d buffers x %u KiB = %zu MiB "
           "(%d block files of %llu bytes), pages scattered over a %d-page pool\n",
           BATCH, NBUF, ITEM >> 10, bytes >> 20, BATCH, (unsigned long long)block, POOL_PAGES);
    printf("bench_store: %s, store io_threads %d (caller included), fsync %d, %d iterations, "
           "medians; GB = 1e9 bytes of KV; pool and raw buffer in %s pages\n", dir, threads,
           kvx_store_settings(full)->fsync, iters, g_huge ? "transparent huge (2 MiB)" : "4 KiB");

    /* fill the full store and the in-place raw file once */
    make_keys(keys, BATCH, 999999);
    kvx_store_batch_put(full, keys, src, BATCH, NULL);
    raw_write1(over, raw, bytes, 1);
    if (threads > 1) raw_pool(over, bufs, src, 1, threads); /* its files exist before the timed runs */
    if (g_phase) {
        bench_phase(full, empty, keys, src, dst, over, raw, bytes, iters, bufs);
        kvx_store_close(full);
        kvx_store_close(empty);
        for (b = 0; b < NBUF; b++) free(bufs[b].base);
        free(raw);
        for (k = 0; k < T_N; k++) free(t[k]);
        return;
    }

    p0 = cpu_pressure();
    memset(cpu, 0, sizeof cpu);
    for (it = 0; it < iters; it++) {
        size_t loaded = 0;
        double t0;
        make_keys(keys, BATCH, (uint64_t)it);
        c0 = cpu_s();
        t0 = now_s();
        if (kvx_store_batch_put(full, keys, src, BATCH, NULL) != KVX_OK) bad++;
        t[T_PUT_FULL][it] = now_s() - t0;
        cpu[T_PUT_FULL] += cpu_s() - c0;
        c0 = cpu_s();
        t[T_RAW_OVER][it] = raw_write1(over, raw, bytes, 0);
        cpu[T_RAW_OVER] += cpu_s() - c0;
        scribble(bufs, dst);
        c0 = cpu_s();
        t0 = now_s();
        if (kvx_store_batch_get(full, keys, dst, BATCH, &loaded) != KVX_OK || loaded != BATCH) bad++;
        t[T_GET][it] = now_s() - t0;
        cpu[T_GET] += cpu_s() - c0;
        bad += pages_differ(bufs, src, dst); /* the store's get (raw_pool below reads into dst too) */
        c0 = cpu_s();
        t[T_RAW_READ][it] = raw_read1(over, raw, bytes);
        cpu[T_RAW_READ] += cpu_s() - c0;

        make_keys(keys, BATCH, 1000000 + (uint64_t)it);
        c0 = cpu_s();
        t0 = now_s();
        if (kvx_store_batch_put(empty, keys, src, BATCH, NULL) != KVX_OK) bad++;
        t[T_PUT_EMPTY][it] = now_s() - t0;
        cpu[T_PUT_EMPTY] += cpu_s() - c0;
        for (i = 0; i < BATCH; i++) kvx_store_remove(empty, &keys[i]);
        unlink(fresh);
        c0 = cpu_s();
        t[T_RAW_NEW][it] = raw_write1(fresh, raw, bytes, 1);
        cpu[T_RAW_NEW] += cpu_s() - c0;

        c0 = cpu_s();
        t[T_RAW_NW][it] = raw_parallel(over, raw, bytes, threads, 1);
        cpu[T_RAW_NW] += cpu_s() - c0;
        c0 = cpu_s();
        t[T_RAW_NR][it] = raw_parallel(over, raw, bytes, threads, 0);
        cpu[T_RAW_NR] += cpu_s() - c0;
        c0 = cpu_s();
        t[T_RAW_PNW][it] = raw_pool(over, bufs, src, 1, threads);
        cpu[T_RAW_PNW] += cpu_s() - c0;
        scribble(bufs, dst);
        c0 = cpu_s();
        t[T_RAW_PNR][it] = raw_pool(over, bufs, dst, 0, threads);
        cpu[T_RAW_PNR] += cpu_s() - c0;
        bad += pages_differ(bufs, src, dst);
        c0 = cpu_s();
        t[T_RAW_PW][it] = raw_pool(over, bufs, src, 1, 1);
        cpu[T_RAW_PW] += cpu_s() - c0;
        scribble(bufs, dst);
        c0 = cpu_s();
        t[T_RAW_PR][it] = raw_pool(over, bufs, dst, 0, 1);
        cpu[T_RAW_PR] += cpu_s() - c0;
    }
    unlink(fresh);
    bad += pages_differ(bufs, src, dst); /* raw_pool's read, last into dst */
    for (k = 0; k < T_N; k++) {
        bb[k] = best(bytes, t[k], iters);
        g[k] = gbps(bytes, t[k], iters);
    }
    printf("conditions: CPU pressure %.0f%% before, %.0f%% after (share of time runnable tasks "
           "waited for a CPU; the machine is shared)\n", p0, cpu_pressure());
    printf("                                    median GB/s (best)  | raw 1 thread, median (best)   ratio of medians (of bests)\n");
    printf("put, full store: evicts, reuses files %6.2f (%6.2f)  | overwrite in place %6.2f (%6.2f)   %.2fx (%.2fx)   goal >= 0.9x\n",
           g[T_PUT_FULL], bb[T_PUT_FULL], g[T_RAW_OVER], bb[T_RAW_OVER], g[T_PUT_FULL] / g[T_RAW_OVER],
           bb[T_PUT_FULL] / bb[T_RAW_OVER]);
    printf("put, empty store: new files           %6.2f (%6.2f)  | new file           %6.2f (%6.2f)   %.2fx (%.2fx)\n",
           g[T_PUT_EMPTY], bb[T_PUT_EMPTY], g[T_RAW_NEW], bb[T_RAW_NEW], g[T_PUT_EMPTY] / g[T_RAW_NEW],
           bb[T_PUT_EMPTY] / bb[T_RAW_NEW]);
    printf("get into scattered free pages         %6.2f (%6.2f)  | read               %6.2f (%6.2f)   %.2fx (%.2fx)   goal >= 0.9x\n",
           g[T_GET], bb[T_GET], g[T_RAW_READ], bb[T_RAW_READ], g[T_GET] / g[T_RAW_READ],
           bb[T_GET] / bb[T_RAW_READ]);
    printf("per CPU-second (GB moved / CPU time of all threads; independent of the load): put %.2f "
           "(raw overwrite %.2f), empty-store put %.2f (raw new file %.2f), get %.2f (raw read %.2f)\n",
           (double)bytes * iters / cpu[T_PUT_FULL] / 1e9, (double)bytes * iters / cpu[T_RAW_OVER] / 1e9,
           (double)bytes * iters / cpu[T_PUT_EMPTY] / 1e9, (double)bytes * iters / cpu[T_RAW_NEW] / 1e9,
           (double)bytes * iters / cpu[T_GET] / 1e9, (double)bytes * iters / cpu[T_RAW_READ] / 1e9);
    printf("summary, store / raw 1 thread of this run: put %.2fx, get %.2fx (goal >= 0.9x); CPU per "
           "byte: put %.2fx, get %.2fx (goal <= 1.5x), empty-store put %.2fx\n",
           g[T_PUT_FULL] / g[T_RAW_OVER], g[T_GET] / g[T_RAW_READ], cpu[T_PUT_FULL] / cpu[T_RAW_OVER],
           cpu[T_GET] / cpu[T_RAW_READ], cpu[T_PUT_EMPTY] / cpu[T_RAW_NEW]);
    printf("raw with %d threads (pwrite/pread stripes): overwrite %.2f (%.2f), read %.2f (%.2f); "
           "store/raw medians: put %.2fx, get %.2fx\n", threads, g[T_RAW_NW], bb[T_RAW_NW], g[T_RAW_NR],
           bb[T_RAW_NR], g[T_PUT_FULL] / g[T_RAW_NW], g[T_GET] / g[T_RAW_NR]);
    printf("raw between the same scattered pool pages and one file (pwritev/preadv of a page's %d "
           "spans, 2 MiB per call, 1 thread): write %.2f (%.2f), read %.2f (%.2f); store/raw medians: "
           "put %.2fx, get %.2fx\n", NBUF, g[T_RAW_PW], bb[T_RAW_PW], g[T_RAW_PR], bb[T_RAW_PR],
           g[T_PUT_FULL] / g[T_RAW_PW], g[T_GET] / g[T_RAW_PR]);
    printf("the same with %d threads (each a run of the pages, a file each): write %.2f (%.2f), read %.2f (%.2f); "
           "store/raw medians: put %.2fx, get %.2fx\n", threads, g[T_RAW_PNW], bb[T_RAW_PNW],
           g[T_RAW_PNR], bb[T_RAW_PNR], g[T_PUT_FULL] / g[T_RAW_PNW], g[T_GET] / g[T_RAW_PNR]);
    printf("CPU per byte, store / other raw baselines of this run: / raw of the same pool pages: "
           "1 thread put %.2fx, get %.2fx; %d threads, a file each, put %.2fx, get %.2fx (like "
           "for like: same pages, same threads) | / raw with %d threads (contiguous stripes): put %.2fx, get %.2fx\n",
           cpu[T_PUT_FULL] / cpu[T_RAW_PW], cpu[T_GET] / cpu[T_RAW_PR], threads,
           cpu[T_PUT_FULL] / cpu[T_RAW_PNW], cpu[T_GET] / cpu[T_RAW_PNR], threads,
           cpu[T_PUT_FULL] / cpu[T_RAW_NW], cpu[T_GET] / cpu[T_RAW_NR]);
    printf("check : %s\n", bad ? "FAILED: a put or get failed or a page differs" :
                                 "every page the store's get (each iteration) and the raw "
                                 "pool-page read loaded equals the stored one");
    kvx_store_close(full);
    kvx_store_close(empty);
    for (b = 0; b < NBUF; b++) free(bufs[b].base);
    free(raw);
    for (k = 0; k < T_N; k++) free(t[k]);
    if (bad) exit(1);
}

static void bench_exists(const char *dir, int threads, size_t nkeys) {
    kvx_buffer buf;
    kvx_layout l;
    kvx_store_key *keys = (kvx_store_key *)malloc(nkeys * sizeof *keys);
    int32_t *pages = (int32_t *)malloc(nkeys * sizeof *pages);
    kvx_store *s;
    kvx_store_stats st;
    double t0, tput, topen, best = 1e30;
    size_t i, pass, hits = 0;
    char sub[600];
    memset(&buf, 0, sizeof buf);
    memset(&l, 0, sizeof l);
    buf.item_len = 64; /* exists cost does not depend on the block size */
    buf.length = 64 * 1024;
    buf.base = calloc(1, (size_t)buf.length);
    l.buffers = &buf;
    l.num_buffers = 1;
    l.page_size = 16;
    l.num_kv_heads = 1;
    l.dtype_size = 2;
    l.dtype = "bfloat16";
    snprintf(sub, sizeof sub, "%s/exists", dir);
    make_keys(keys, nkeys, 7777);
    for (i = 0; i < nkeys; i++) pages[i] = (int32_t)(i % 1024);
    s = open_store(sub, &l, threads, "exists-bench", KVX_STORE_UNLIMITED);
    t0 = now_s();
    for (i = 0; i < nkeys; i += 1000)
        kvx_store_batch_put(s, keys + i, pages + i, nkeys - i < 1000 ? nkeys - i : 1000, NULL);
    tput = now_s() - t0;
    kvx_store_close(s);
    t0 = now_s();
    s = open_store(sub, &l, threads, "exists-bench", KVX_STORE_UNLIMITED);
    topen = now_s() - t0;
    kvx_store_stats_get(s, &st);
    for (pass = 0; pass < 4; pass++) { /* pass 0 warms the dentry cache; best of the rest */
        double t;
        hits = 0;
        t0 = now_s();
        for (i = 0; i < nkeys; i += 1000) /* a 16,000-token request's prefix check */
            hits += kvx_store_batch_exists(s, keys + i, nkeys - i < 1000 ? nkeys - i : 1000);
        t = now_s() - t0;
        if (pass && t < best) best = t;
    }
    printf("exists: %zu keys in batches of 1000: %.0f lookups/s (%.2f us each), %zu hits   (goal >= 200000/s)\n",
           nkeys, (double)nkeys / best, best * 1e6 / (double)nkeys, hits);
    printf("open  : a store of %llu blocks indexed (scan + LRU rebuild) in %.3f s (%.1f us per block); "
           "putting them took %.2f s (%.0f blocks/s)\n", (unsigned long long)st.blocks, topen,
           topen * 1e6 / (double)(st.blocks ? st.blocks : 1), tput, (double)nkeys / tput);
    kvx_store_close(s);
    free(buf.base);
    free(keys);
    free(pages);
    if (hits != nkeys) {
        printf("check : FAILED: %zu of %zu keys found\n", hits, nkeys);
        exit(1);
    }
}

/* ---- shared filesystem: put through A, get through B ---- */

/* Drops the blocks of keys from the page cache (written back first). */
static void drop_cache(kvx_store *s, const kvx_store_key *keys, size_t n) {
    char p[4400];
    size_t i;
    for (i = 0; i < n; i++) {
        int fd;
        kvx_store_block_path(s, &keys[i], p, sizeof p);
        fd = open(p, O_RDONLY);
        if (fd < 0) die("open a block to drop its cache");
        (void)fdatasync(fd);
        (void)posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
        close(fd);
    }
}

static void fill_layout(kvx_buffer *bufs, kvx_layout *l, int nbuf, uint64_t item, int pages) {
    uint64_t x = 88172645463325252ull;
    int b;
    size_t i;
    memset(l, 0, sizeof *l);
    for (b = 0; b < nbuf; b++) {
        uint64_t *m;
        memset(&bufs[b], 0, sizeof bufs[b]);
        bufs[b].item_len = item;
        bufs[b].length = item * (uint64_t)pages;
        if (posix_memalign(&bufs[b].base, 4096, (size_t)bufs[b].length)) die("pool");
        m = (uint64_t *)bufs[b].base;
        for (i = 0; i < bufs[b].length / 8; i++) {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            m[i] = x;
        }
    }
    l->buffers = bufs;
    l->num_buffers = (uint32_t)nbuf;
    l->page_size = 16;
    l->num_kv_heads = 8;
    l->dtype_size = 2;
    l->dtype = "bfloat16";
}

/* The layer-wise load (kvx_store_load_*) of the 4096-token prefix against
   kvx_store_batch_get of the same keys into the same pages, interleaved in
   every iteration: time until layer 0 of every page is available (what an
   engine waits for before it can run layer 0), time until all 32 layers
   are, and the whole batch_get. Warm page cache (the blocks were just
   written); with cold, each block file is also dropped from the page cache
   (fdatasync + POSIX_FADV_DONTNEED) before every timed load, so the reads
   go to the disk. */
static void bench_layers(const char *dir, int iters, int threads, int cold) {
    kvx_buffer bufs[NBUF];
    kvx_layout l;
    kvx_store_key keys[BATCH];
    int32_t src[BATCH], dst[BATCH];
    double *tf = (double *)calloc((size_t)iters, sizeof(double));
    double *tw = (double *)calloc((size_t)iters, sizeof(double));
    double *tg = (double *)calloc((size_t)iters, sizeof(double));
    double *th = (double *)calloc((size_t)iters, sizeof(double));
    char sub[600];
    kvx_store *s;
    size_t i, bytes = (size_t)BATCH * NBUF * ITEM;
    uint32_t nl = NBUF / 2;
    int it, b, bad = 0, way;
    fill_layout(bufs, &l, NBUF, ITEM, POOL_PAGES);
    for (i = 0; i < BATCH; i++) {
        src[i] = (int32_t)(2 * i);
        dst[i] = (int32_t)(2 * ((BATCH - 1 - i) * 7 % BATCH) + 1); /* scattered */
    }
    snprintf(sub, sizeof sub, "%s/layers", dir);
    s = open_store(sub, &l, threads, "meta-llama/Llama-3.1-8B", KVX_STORE_UNLIMITED);
    make_keys(keys, BATCH, 4242);
    if (kvx_store_batch_put(s, keys, src, BATCH, NULL) != KVX_OK) die("put the prefix");
    for (it = 0; it < iters; it++) {
        for (way = 0; way < 2; way++) { /* alternate which goes first */
            double t0;
            size_t loaded = 0;
            if (cold) drop_cache(s, keys, BATCH);
            for (b = 0; b < NBUF; b++) /* the destination pages differ from the source again */
                for (i = 0; i < BATCH; i++)
                    memset((char *)bufs[b].base + (size_t)dst[i] * ITEM, 0, 64);
            t0 = now_s();
            if ((way ^ it) & 1) {
                kvx_store_load *ld = NULL;
                if (kvx_store_load_begin(s, keys, dst, BATCH, &ld) != KVX_OK) die("load_begin");
                if (kvx_store_load_wait_layer(ld, 0, -1) != KVX_OK) bad++;
                tf[it] = now_s() - t0;
                if (kvx_store_load_wait_layer(ld, nl / 2 - 1, -1) != KVX_OK) bad++;
                th[it] = now_s() - t0;
                if (kvx_store_load_wait_layer(ld, nl - 1, -1) != KVX_OK) bad++;
                tw[it] = now_s() - t0;
                if (kvx_store_load_end(ld, &loaded) != KVX_OK || loaded != BATCH) bad++;
            } else {
                if (kvx_store_batch_get(s, keys, dst, BATCH, &loaded) != KVX_OK || loaded != BATCH) bad++;
                tg[it] = now_s() - t0;
            }
            for (b = 0; b < NBUF; b++)
                for (i = 0; i < BATCH; i++)
                    if (memcmp((char *)bufs[b].base + (size_t)src[i] * ITEM,
                               (char *)bufs[b].base + (size_t)dst[i] * ITEM, ITEM)) bad++;
        }
    }
    {
        double f = median(tf, iters), h = median(th, iters), w = median(tw, iters);
        double g = median(tg, iters);
        printf("layer-wise load, %s page cache (%d iterations, medians; %d layers, %zu MiB):\n",
               cold ? "cold" : "warm", iters, (int)nl, bytes >> 20);
        printf("  first layer available %8.2f ms | layers 0..%u %8.2f ms | whole prefix "
               "layer-wise %8.2f ms (%.2f GB/s) | batch_get %8.2f ms (%.2f GB/s)\n", f * 1e3,
               nl / 2 - 1, h * 1e3, w * 1e3, (double)bytes / w / 1e9, g * 1e3,
               (double)bytes / g / 1e9);
        printf("  ratios: first layer / whole prefix %.3f (1/%u layers = %.3f); first layer / "
               "batch_get %.3f; whole layer-wise / batch_get %.2fx\n", f / w, nl, 1.0 / nl, f / g,
               w / g);
    }
    printf("  check : %s\n", bad ? "FAILED: a load failed or a page differs" :
                                   "every loaded page equals the stored one");
    kvx_store_close(s);
    for (b = 0; b < NBUF; b++) free(bufs[b].base);
    free(tf);
    free(tw);
    free(tg);
    free(th);
    if (bad) exit(1);
}

/* Scan cost of nkeys blocks: put through wdir's store, open through rdir
   (every block new: a stat each), rescan there (all known: directory
   entries only). */
static void bench_scan(const char *wdir, const char *rdir, const char *where, int threads,
                       size_t nkeys) {
    kvx_buffer buf;
    kvx_layout l;
    kvx_store_key *keys = (kvx_store_key *)malloc(nkeys * sizeof *keys);
    int32_t *pages = (int32_t *)malloc(nkeys * sizeof *pages);
    kvx_store *w, *r;
    kvx_store_stats st;
    double t0, tput, topen, tre, trew;
    size_t i;
    fill_layout(&buf, &l, 1, 64, 1024);
    make_keys(keys, nkeys, 4242);
    for (i = 0; i < nkeys; i++) pages[i] = (int32_t)(i % 1024);
    w = open_store(wdir, &l, threads, "scan-bench", KVX_STORE_UNLIMITED);
    t0 = now_s();
    for (i = 0; i < nkeys; i += 1000)
        kvx_store_batch_put(w, keys + i, pages + i, nkeys - i < 1000 ? nkeys - i : 1000, NULL);
    tput = now_s() - t0;
    t0 = now_s();
    r = open_store(rdir, &l, threads, "scan-bench", KVX_STORE_UNLIMITED);
    topen = now_s() - t0;
    t0 = now_s();
    kvx_store_rescan(r);
    tre = now_s() - t0;
    t0 = now_s();
    kvx_store_rescan(w);
    trew = now_s() - t0;
    kvx_store_stats_get(r, &st);
    printf("scan  %s: %llu blocks; open through the other mount (stat of each) %.3f s (%.0f us per "
           "block); rescan of known blocks %.3f s (%.0f us), on the writer's mount %.3f s; putting "
           "them took %.2f s (%.0f blocks/s)\n", where, (unsigned long long)st.blocks, topen,
           topen * 1e6 / (double)nkeys, tre, tre * 1e6 / (double)nkeys, trew, tput,
           (double)nkeys / tput);
    kvx_store_close(r);
    kvx_store_close(w);
    free(buf.base);
    free(keys);
    free(pages);
}

static void bench_dfs(const char *a, const char *b, int iters, int threads, int npages,
                      size_t scan_keys) {
    kvx_buffer bufs[NBUF];
    kvx_layout l;
    int32_t *src = (int32_t *)malloc((size_t)npages * sizeof *src), *dst = (int32_t *)malloc((size_t)npages * sizeof *dst);
    kvx_store_key *keys = (kvx_store_key *)malloc((size_t)npages * sizeof *keys);
    size_t bytes = (size_t)npages * NBUF * ITEM, i, bi;
    char *raw, da[600], db[600], fa[700], fb[700], local[600];
    double *t[4], g[4];
    kvx_store *sa, *sb;
    int it, bad = 0, k;
    pid_t me = getpid();
    for (k = 0; k < 4; k++) t[k] = (double *)calloc((size_t)iters, sizeof(double));
    fill_layout(bufs, &l, NBUF, ITEM, 2 * npages);
    for (i = 0; i < (size_t)npages; i++) { src[i] = (int32_t)(2 * i); dst[i] = (int32_t)(2 * i + 1); }
    if (posix_memalign((void **)&raw, 4096, bytes)) die("raw buffer");
    for (bi = 0, i = 0; bi < NBUF; bi++) {
        size_t j;
        for (j = 0; j < (size_t)npages; j++, i++)
            memcpy(raw + i * ITEM, (char *)bufs[bi].base + (size_t)src[j] * ITEM, ITEM);
    }
    snprintf(da, sizeof da, "%s/bench_store_%ld", a, (long)me);
    snprintf(db, sizeof db, "%s/bench_store_%ld", b, (long)me);
    rm_rf(da);
    if (mkdir(da, 0700)) die("mkdir on mount A");
    for (k = 0; k < 2000 && access(db, F_OK); k++) usleep(10000); /* seen through B */
    snprintf(fa, sizeof fa, "%s/raw.bin", da);
    snprintf(fb, sizeof fb, "%s/raw.bin", db);
    sa = open_store(da, &l, threads, "meta-llama/Llama-3.1-8B", KVX_STORE_UNLIMITED);
    sb = open_store(db, &l, threads, "meta-llama/Llama-3.1-8B", KVX_STORE_UNLIMITED);
    printf("bench_store: shared filesystem, put through %s, get through %s\n", a, b);
    printf("bench_store: Llama-3.1-8B pages, %d pages x %d buffers x %u KiB = %zu MiB per batch "
           "(%d block files of %llu bytes), io_threads %d, %d iterations, medians\n", npages, NBUF,
           ITEM >> 10, bytes >> 20, npages, (unsigned long long)kvx_store_block_bytes(sa), threads,
           iters);
    for (it = 0; it < iters; it++) {
        size_t loaded = 0;
        double t0;
        make_keys(keys, (size_t)npages, 7000 + (uint64_t)it);
        t0 = now_s();
        if (kvx_store_batch_put(sa, keys, src, (size_t)npages, NULL) != KVX_OK) bad++;
        t[0][it] = now_s() - t0;
        unlink(fa);
        t[1][it] = raw_write1(fa, raw, bytes, 1);
        t0 = now_s();
        if (kvx_store_batch_get(sb, keys, dst, (size_t)npages, &loaded) != KVX_OK ||
            loaded != (size_t)npages) bad++;
        t[2][it] = now_s() - t0;
        t[3][it] = raw_read1(fb, raw, bytes);
        for (i = 0; i < (size_t)npages; i++) kvx_store_remove(sa, &keys[i]);
    }
    for (bi = 0; bi < NBUF; bi++)
        for (i = 0; i < (size_t)npages; i++)
            if (memcmp((char *)bufs[bi].base + (size_t)src[i] * ITEM,
                       (char *)bufs[bi].base + (size_t)dst[i] * ITEM, ITEM)) bad++;
    for (k = 0; k < 4; k++) g[k] = gbps(bytes, t[k], iters);
    printf("put through A (new files)   %6.3f GB/s | raw write through A %6.3f GB/s   %.2fx\n", g[0],
           g[1], g[0] / g[1]);
    printf("get through B               %6.3f GB/s | raw read through B  %6.3f GB/s   %.2fx\n", g[2],
           g[3], g[2] / g[3]);
    printf("check : %s\n", bad ? "FAILED: a put or get failed or a page differs" :
                                 "every page loaded through B equals the one put through A");
    kvx_store_close(sa);
    kvx_store_close(sb);
    unlink(fa);
    for (bi = 0; bi < NBUF; bi++) free(bufs[bi].base);
    free(raw);
    free(src);
    free(dst);
    free(keys);
    for (k = 0; k < 4; k++) free(t[k]);
    if (scan_keys) {
        char sa2[700], sb2[700];
        snprintf(sa2, sizeof sa2, "%s/scan", da);
        snprintf(sb2, sizeof sb2, "%s/scan", db);
        bench_scan(sa2, sb2, "shared (A -> B)", threads, scan_keys);
        snprintf(local, sizeof local, "/tmp/kvx_bench_scan_%ld", (long)me);
        rm_rf(local);
        mkdir(local, 0700);
        bench_scan(local, local, "local /tmp", threads, scan_keys);
        rm_rf(local);
    }
    rm_rf(da);
    if (bad) exit(1);
}

int main(int argc, char **argv) {
    char dir[512];
    int iters = 7, threads = 4, only = 0, i, dfs_pages = 64;
    size_t nkeys = 100000, scan_keys = 10000;
    const char *dfs_a = getenv("KVX_DFS_A"), *dfs_b = getenv("KVX_DFS_B");
    snprintf(dir, sizeof dir, "/tmp/kvx_bench_store_%ld", (long)getpid());
    for (i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--dir")) snprintf(dir, sizeof dir, "%s", argv[i + 1]);
        else if (!strcmp(argv[i], "--iters")) iters = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--threads")) threads = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--keys")) nkeys = (size_t)atol(argv[i + 1]);
        else if (!strcmp(argv[i], "--only"))
            only = !strcmp(argv[i + 1], "put-get") ? 1 : !strcmp(argv[i + 1], "layers") ? 3 : 2;
        else if (!strcmp(argv[i], "--phase")) {
            const char *v = argv[i + 1];
            g_phase = !strcmp(v, "put") ? PH_PUT : !strcmp(v, "get") ? PH_GET :
                      !strcmp(v, "raw-write") ? PH_RAW_WRITE : !strcmp(v, "raw-read") ? PH_RAW_READ :
                      !strcmp(v, "pool-write") ? PH_POOL_WRITE : !strcmp(v, "pool-read") ? PH_POOL_READ :
                      !strcmp(v, "put-new") ? PH_PUT_NEW : -1;
            if (g_phase < 0) {
                fprintf(stderr, "bench_store: --phase is put, get, raw-write, raw-read, pool-write, "
                        "pool-read or put-new, not %s\n", v);
                return 2;
            }
            only = 1;
        } else if (!strcmp(argv[i], "--hugepages")) g_huge = atoi(argv[i + 1]) != 0;
        else if (!strcmp(argv[i], "--dfs-pages")) dfs_pages = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--scan-keys")) scan_keys = (size_t)atol(argv[i + 1]);
    }
    if (dfs_a && *dfs_a && dfs_b && *dfs_b) {
        if (dfs_pages < 1) dfs_pages = 64;
        bench_dfs(dfs_a, dfs_b, iters < 3 ? iters : 3, threads < 1 || threads > 64 ? 4 : threads,
                  dfs_pages, scan_keys);
        return 0;
    }
    if (iters < 1) iters = 1;
    if (threads < 1 || threads > 64) threads = 4;
    rm_rf(dir);
    mkdir(dir, 0755);
    if (!only || only == 1) bench_throughput(dir, iters, threads);
    if (!only || only == 3) {
        bench_layers(dir, iters, threads, 0);
        bench_layers(dir, iters < 3 ? iters : 3, threads, 1);
    }
    if (!only || only == 2) bench_exists(dir, threads, nkeys);
    rm_rf(dir);
    return 0;
}
