/* bench_dfs - the file transport between two mounts of one distributed
   filesystem against raw I/O of the same bytes through the same mounts, in
   one run (make bench runs it under tests/dfs/gluster.sh: two FUSE mounts
   of one GlusterFS volume).

   The sender's engine writes through mount A ($KVX_DFS_A), the receiver's
   reads the same directory through mount B ($KVX_DFS_B), in this process.
   1. One 4096-token Llama-3.1-8B request (64 buffers, page size 16, 512 MiB)
      with scattered pages on both sides, as one chunk and as 8 chunks of
      512 tokens: time from the first send to the receiver's Success
      (gather + write on A, transfer_done seen on B, read + scatter +
      checksums on B), against writing the same bytes from one buffer to
      one file through A and reading them back through B.
   2. Many small requests (64 rooms of 64 tokens, 8 MiB each, all in
      flight): rooms per second and GB/s, against 64 files of the same
      size written through A, renamed into place, and read through B.
   Best of KVX_BENCH_REPS (default 3). Without KVX_DFS_A/B: SKIP, exit 77. */
#define KVX_IMPLEMENTATION
#include "../kvx_file.h"
#include "../examples/kvx_example.h"

static double now_s(void) { return (double)kvx_now_ns() / 1e9; }

static void write_all(int fd, const char *p, size_t n, const char *what) {
    size_t off = 0;
    while (off < n) {
        ssize_t w = write(fd, p + off, n - off);
        if (w <= 0) { perror(what); exit(1); }
        off += (size_t)w;
    }
}
static void read_all(int fd, char *p, size_t n, const char *what) {
    size_t off = 0;
    while (off < n) {
        ssize_t r = read(fd, p + off, n - off);
        if (r <= 0) { perror(what); exit(1); }
        off += (size_t)r;
    }
}

/* k files of n bytes each: written through A (under a temporary name, then
   renamed, as the file transport does), then read through B. */
static double raw(const char *dir_a, const char *dir_b, char *src, char *dst, size_t n, int k,
                  double *tw) {
    char pa[600], pt[600], pb[600];
    double t0 = now_s(), t1;
    int i, fd;
    for (i = 0; i < k; i++) {
        snprintf(pt, sizeof pt, "%s/raw_%d.bin.tmp", dir_a, i);
        snprintf(pa, sizeof pa, "%s/raw_%d.bin", dir_a, i);
        if ((fd = open(pt, O_WRONLY | O_CREAT | O_TRUNC, 0600)) < 0) { perror(pt); exit(1); }
        write_all(fd, src, n, pt);
        close(fd);
        if (rename(pt, pa)) { perror(pa); exit(1); }
    }
    t1 = now_s();
    for (i = 0; i < k; i++) {
        snprintf(pb, sizeof pb, "%s/raw_%d.bin", dir_b, i);
        if ((fd = open(pb, O_RDONLY)) < 0) { perror(pb); exit(1); }
        read_all(fd, dst, n, pb);
        close(fd);
    }
    *tw = t1 - t0;
    t1 = now_s() - t0;
    for (i = 0; i < k; i++) {
        snprintf(pa, sizeof pa, "%s/raw_%d.bin", dir_a, i);
        unlink(pa);
    }
    return t1;
}

/* k rooms of n pages each (pages sp/dp + i*n), all in flight; returns the
   time from the first send to the last receiver's Success. */
static double transfer(kvx_engine *pe, kvx_engine *de, uint64_t room0, const int32_t *sp,
                       const int32_t *dp, uint32_t n, uint32_t chunk, int k) {
    kvx_sender *s[64];
    kvx_receiver *r[64];
    double t0, t;
    int i, left;
    for (i = 0; i < k; i++) {
        kvx_room_desc rd;
        memset(&rd, 0, sizeof rd);
        rd.room = room0 + (uint64_t)i;
        kvx_receiver_create(de, &rd, &r[i]);
        kvx_receiver_init(r[i], dp + (size_t)i * n, n, k == 1 ? 0 : -1);
        kvx_sender_create(pe, &rd, &s[i]);
        kvx_sender_init(s[i], n, k == 1 ? 0 : -1);
    }
    t0 = now_s();
    for (i = 0; i < k; i++) {
        uint32_t sent = 0;
        while (sent < n) {
            uint32_t c = n - sent < chunk ? n - sent : chunk;
            kvx_sender_send(s[i], sp + (size_t)i * n + sent, c);
            sent += c;
        }
    }
    do {
        struct timespec ts = {0, 20000};
        for (left = 0, i = 0; i < k; i++) left += kvx_receiver_poll(r[i]) == KVX_POLL_TRANSFERRING;
        if (left) nanosleep(&ts, NULL);
    } while (left);
    t = now_s() - t0;
    for (i = 0; i < k; i++) {
        if (kvx_receiver_poll(r[i]) != KVX_POLL_SUCCESS || kvx_sender_poll(s[i]) != KVX_POLL_SUCCESS) {
            fprintf(stderr, "transfer failed: %s / %s\n", kvx_receiver_error(r[i]),
                    kvx_sender_error(s[i]));
            exit(1);
        }
        kvx_sender_destroy(s[i]);
        kvx_receiver_destroy(r[i]);
    }
    return t;
}

static int check(ex_pool *p, uint64_t room0, const int32_t *dp, uint32_t n, int k) {
    int i;
    for (i = 0; i < k; i++)
        if (ex_pages_pattern(p, room0 + (uint64_t)i, dp + (size_t)i * n, n, 0)) return -1;
    return 0;
}

int main(void) {
    const ex_model *m = ex_model_find("llama-3.1-8b");
    const char *ma = getenv("KVX_DFS_A"), *mb = getenv("KVX_DFS_B");
    enum { SMALL = 64 };
    uint32_t page = 16, n = 4096 / page, ns = 64 / page, i, rep;
    uint32_t pool_pages = (n > ns * SMALL ? n : ns * SMALL) + 64;
    int reps = getenv("KVX_BENCH_REPS") ? atoi(getenv("KVX_BENCH_REPS")) : 3;
    ex_pool ps, pr;
    int32_t *sp, *dp;
    kvx_engine_desc d;
    kvx_engine *pe, *de;
    char why[512], dir_a[512], dir_b[512], *src, *dst;
    double best_raw = 1e9, best_raw_w = 1e9, best_kvx = 1e9, best_chunked = 1e9, best_sraw = 1e9,
           best_skvx = 1e9, tw;
    uint64_t bytes, sbytes;
    if (!ma || !*ma || !mb || !*mb) {
        printf("SKIP: KVX_DFS_A and KVX_DFS_B unset: run under tests/dfs/gluster.sh (make bench)\n");
        return 77;
    }
    if (reps < 1) reps = 1;
    snprintf(dir_a, sizeof dir_a, "%s/kvx_bench_dfs_%d", ma, (int)getpid());
    snprintf(dir_b, sizeof dir_b, "%s/kvx_bench_dfs_%d", mb, (int)getpid());
    if (mkdir(dir_a, 0700)) { perror(dir_a); return 1; }
    kvx_file_register();
    ex_pool_init(&ps, m, pool_pages, page, 4, 1);
    ex_pool_init(&pr, m, pool_pages, page, 4, 2);
    sp = (int32_t *)malloc(pool_pages * sizeof *sp);
    dp = (int32_t *)malloc(pool_pages * sizeof *dp);
    ex_alloc_pages(&ps, sp, pool_pages - 64); /* scattered, as after hours of serving */
    ex_alloc_pages(&pr, dp, pool_pages - 64);
    for (i = 0; i < ps.layout.num_buffers; i++) {
        memset(ps.bufs[i].base, 1, ps.bufs[i].length);
        memset(pr.bufs[i].base, 0, pr.bufs[i].length);
    }
    bytes = (uint64_t)n * kvx_layout_page_bytes(&ps.layout);
    sbytes = (uint64_t)ns * kvx_layout_page_bytes(&ps.layout);
    src = (char *)malloc(bytes);
    dst = (char *)malloc(bytes);
    memset(src, 1, bytes);
    memset(dst, 0, bytes);
    memset(&d, 0, sizeof d);
    d.transport = "file";
    d.role = KVX_ROLE_PREFILL;
    d.layout = ps.layout;
    d.file.dir = dir_a;
    if (kvx_engine_create(&d, &pe, why, sizeof why)) { fprintf(stderr, "%s\n", why); return 1; }
    d.role = KVX_ROLE_DECODE;
    d.layout = pr.layout;
    d.file.dir = dir_b;
    if (kvx_engine_create(&d, &de, why, sizeof why)) { fprintf(stderr, "%s\n", why); return 1; }
    printf("file transport across two mounts: sender on %s, receiver on %s, best of %d\n", ma, mb, reps);

    for (rep = 0; rep < (uint32_t)reps; rep++) {
        uint64_t room = 1000 + 2 * rep;
        double t = raw(dir_a, dir_b, src, dst, bytes, 1, &tw);
        if (t < best_raw) best_raw = t, best_raw_w = tw;
        ex_pages_pattern(&ps, room, sp, n, 1);
        if ((t = transfer(pe, de, room, sp, dp, n, n, 1)) < best_kvx) best_kvx = t;
        if (check(&pr, room, dp, n, 1)) { fprintf(stderr, "verify failed\n"); return 1; }
        ex_pages_pattern(&ps, room + 1, sp, n, 1);
        if ((t = transfer(pe, de, room + 1, sp, dp, n, 32, 1)) < best_chunked) best_chunked = t;
        if (check(&pr, room + 1, dp, n, 1)) { fprintf(stderr, "verify failed\n"); return 1; }
    }
    printf("one 4096-token %s request, %u scattered pages, %.0f MiB:\n", m->name, n,
           (double)bytes / (1 << 20));
    printf("  raw write on A + read on B       %7.2f GB/s  (%.1f ms; write %.1f ms)\n",
           bytes / best_raw / 1e9, best_raw * 1e3, best_raw_w * 1e3);
    printf("  kvx file A -> B, one chunk       %7.2f GB/s  (%.1f ms)  ratio %.2fx raw\n",
           bytes / best_kvx / 1e9, best_kvx * 1e3, best_raw / best_kvx);
    printf("  kvx file A -> B, 8 x 512 tokens  %7.2f GB/s  (%.1f ms)  ratio %.2fx raw\n",
           bytes / best_chunked / 1e9, best_chunked * 1e3, best_raw / best_chunked);

    for (rep = 0; rep < (uint32_t)reps; rep++) {
        uint64_t room = 2000 + 100 * rep;
        double t = raw(dir_a, dir_b, src, dst, sbytes, SMALL, &tw);
        if (t < best_sraw) best_sraw = t;
        for (i = 0; i < SMALL; i++) ex_pages_pattern(&ps, room + i, sp + (size_t)i * ns, ns, 1);
        if ((t = transfer(pe, de, room, sp, dp, ns, ns, SMALL)) < best_skvx) best_skvx = t;
        if (check(&pr, room, dp, ns, SMALL)) { fprintf(stderr, "verify failed\n"); return 1; }
    }
    printf("%d requests of 64 tokens (%.0f MiB each), all in flight:\n", SMALL,
           (double)sbytes / (1 << 20));
    printf("  raw %d files A -> B              %7.2f GB/s  (%.1f ms, %.0f files/s)\n", SMALL,
           SMALL * sbytes / best_sraw / 1e9, best_sraw * 1e3, SMALL / best_sraw);
    printf("  kvx file A -> B                  %7.2f GB/s  (%.1f ms, %.0f rooms/s)  ratio %.2fx raw\n",
           SMALL * sbytes / best_skvx / 1e9, best_skvx * 1e3, SMALL / best_skvx, best_sraw / best_skvx);

    kvx_engine_destroy(pe);
    kvx_engine_destroy(de);
    ex_pool_free(&ps);
    ex_pool_free(&pr);
    free(src); free(dst); free(sp); free(dp);
    rmdir(dir_a);
    return 0;
}
