/* Block store shared by several processes (local-disk variant of
   tests/dfs/test_dfs_store.c, so CI covers it where FUSE cannot run):
   - the capacity holds for the namespace as a whole: two store objects
     (two views) fill it twice over, and a scan brings it back under the
     capacity, evicting the least recently used blocks of either;
   - a block the other view used since stays when this view evicts;
   - a scan forgets blocks another process removed;
   - a block that looked corrupt to one process is removed only on evidence
     found in that very file: not when the name now holds another writer's
     block, not when a full re-read finds it intact;
   - two processes with the background scanner both put more than the
     capacity at once: once both are done and a scan ran, the namespace's
     block files on disk total at most the capacity, and every one loads
     with the right bytes. */
#define KVX_IMPLEMENTATION
#include "kvx_store.h"
#include "store_test.h"

#include <sys/select.h>

static st_pool pool;
static uint64_t g_bb; /* bytes of one block file of this pool */

#define CAP_BLOCKS 24

#define open_store(dir, cap_blocks, scan) \
    st_open_blocks(&pool, dir, "shared", 2, cap_blocks, g_bb, scan)
static int probe_block_bytes(const char *dir) {
    g_bb = st_block_bytes(&pool, dir, "shared");
    return g_bb ? 0 : -1;
}

static kvx_result put_keys(kvx_store *s, uint64_t fam, uint64_t from, uint64_t n) {
    kvx_result r = KVX_OK, x;
    uint64_t i;
    for (i = from; i < from + n; i += 8) {
        kvx_store_key k[8];
        int32_t pg[8];
        uint64_t j, m = from + n - i < 8 ? from + n - i : 8;
        for (j = 0; j < m; j++) {
            k[j] = st_key(fam, i + j);
            pg[j] = (int32_t)j;
            st_fill(&pool, (int32_t)j, st_seed(&k[j]));
        }
        if ((x = kvx_store_batch_put(s, k, pg, (size_t)m, NULL)) != KVX_OK) r = x;
    }
    return r;
}

static int present(kvx_store *s, uint64_t fam, uint64_t i) {
    kvx_store_key k = st_key(fam, i);
    return kvx_store_batch_exists(s, &k, 1) == 1;
}

/* Every block file of the namespace loads through s with the right bytes. */
typedef struct load_all {
    kvx_store *s;
    int n, loaded, wrong;
} load_all;
static int load_cb(void *user, const kvx_store_entry *e) {
    load_all *c = (load_all *)user;
    int32_t dst = 15;
    size_t loaded = 0;
    c->n++;
    if (e->status != KVX_OK || !e->info) return 0;
    kvx_store_batch_get(c->s, &e->info->key, &dst, 1, &loaded);
    if (loaded == 1) {
        c->loaded++;
        if (!st_verify(&pool, dst, st_seed(&e->info->key))) c->wrong++;
    }
    return 0;
}

static void test_two_views(const char *dir) {
    kvx_store *a = open_store(dir, CAP_BLOCKS, -1), *b = open_store(dir, CAP_BLOCKS, -1);
    uint64_t bb, i;
    kvx_store_stats st;
    st_du du;
    int ok;
    if (!a || !b) { CHECK(0, "open two views"); return; }
    bb = kvx_store_block_bytes(a);
    CHECK(put_keys(a, 1, 0, CAP_BLOCKS) == KVX_OK, "view A fills the capacity (%d blocks)", CAP_BLOCKS);
    CHECK(put_keys(b, 2, 0, CAP_BLOCKS) == KVX_OK, "view B, opened before, puts %d more", CAP_BLOCKS);
    du = st_du_dir(kvx_store_dir(a));
    printf("  on disk: %llu blocks, %llu bytes; capacity %llu\n", (unsigned long long)du.blocks,
           (unsigned long long)du.bytes, (unsigned long long)CAP_BLOCKS * bb);
    CHECK(du.blocks == 2 * CAP_BLOCKS, "without a scan each view only counts what it knows (%llu blocks)",
          (unsigned long long)du.blocks);
    CHECK(kvx_store_rescan(b) == KVX_OK, "view B scans the namespace");
    du = st_du_dir(kvx_store_dir(a));
    CHECK(du.bytes <= CAP_BLOCKS * bb, "after the scan the namespace is within the capacity: %llu <= %llu",
          (unsigned long long)du.bytes, (unsigned long long)CAP_BLOCKS * bb);
    for (ok = 1, i = 0; i < CAP_BLOCKS; i++) ok &= !present(b, 1, i) && present(b, 2, i);
    CHECK(ok, "the scan evicted A's blocks (least recently used), kept B's");
    kvx_store_stats_get(b, &st);
    CHECK(st.scans == 2 && st.scan_found == CAP_BLOCKS && st.evictions == CAP_BLOCKS,
          "B's stats: %llu scans, %llu blocks found, %llu evicted", (unsigned long long)st.scans,
          (unsigned long long)st.scan_found, (unsigned long long)st.evictions);

    /* A still indexes its (evicted) blocks; a scan forgets them */
    CHECK(kvx_store_rescan(a) == KVX_OK, "view A scans");
    kvx_store_stats_get(a, &st);
    CHECK(st.scan_gone == CAP_BLOCKS && st.blocks == CAP_BLOCKS && st.bytes_used == CAP_BLOCKS * bb,
          "A forgot the %llu blocks B evicted and counts B's: %llu blocks, %llu bytes",
          (unsigned long long)st.scan_gone, (unsigned long long)st.blocks,
          (unsigned long long)st.bytes_used);

    /* A's LRU tail is B's oldest blocks; B uses two of them: A's next puts
       evict other ones */
    {
        kvx_store_key k[2];
        int32_t dst[2] = {10, 11};
        size_t loaded = 0;
        k[0] = st_key(2, 0);
        k[1] = st_key(2, 1);
        kvx_store_batch_get(b, k, dst, 2, &loaded);
        CHECK(loaded == 2, "B uses its two oldest blocks");
    }
    { /* B's other blocks by last use (B's I/O threads put a batch in any order) */
        uint64_t order[CAP_BLOCKS], mt[CAP_BLOCKS];
        int n = 0, x, y;
        for (i = 2; i < CAP_BLOCKS; i++) {
            kvx_store_key k = st_key(2, i);
            char p[KVX__STORE_PATH + KVX__STORE_REL + 2];
            struct stat fs;
            kvx_store_block_path(a, &k, p, sizeof p);
            if (stat(p, &fs)) continue;
            order[n] = i;
            mt[n++] = (uint64_t)fs.st_mtim.tv_sec * 1000000000ull + (uint64_t)fs.st_mtim.tv_nsec;
        }
        for (x = 1; x < n; x++) /* insertion sort by mtime */
            for (y = x; y > 0 && mt[y - 1] > mt[y]; y--) {
                uint64_t t = mt[y]; mt[y] = mt[y - 1]; mt[y - 1] = t;
                t = order[y]; order[y] = order[y - 1]; order[y - 1] = t;
            }
        CHECK(n == CAP_BLOCKS - 2 && put_keys(a, 3, 0, 4) == KVX_OK,
              "A puts 4 new blocks into the full namespace");
        CHECK(present(a, 2, 0) && present(a, 2, 1), "the two blocks B used since stay");
        CHECK(!present(a, 2, order[0]) && !present(a, 2, order[1]) && !present(a, 2, order[2]) &&
              !present(a, 2, order[3]) && present(a, 2, order[4]),
              "the next four least recently used went instead");
    }
    du = st_du_dir(kvx_store_dir(a));
    CHECK(du.bytes <= CAP_BLOCKS * bb, "still within the capacity (%llu blocks)", (unsigned long long)du.blocks);
    kvx_store_close(a);
    kvx_store_close(b);
}


/* ---- a block that looked corrupt to one process ---- */

/* What a reader does when a block looked unusable: kvx__store_bad with the
   file it examined (seen). Only evidence on the very file removes it. */
static void test_suspect(const char *dir) {
    kvx_store *a = open_store(dir, KVX_STORE_UNLIMITED, -1), *b = open_store(dir, KVX_STORE_UNLIMITED, -1);
    kvx_store_key k = st_key(7, 1);
    char rel[KVX__STORE_REL], path[4096], keep[4096];
    struct stat seen, now;
    kvx_store_stats st;
    kvx_store_verify_report rep;
    int ok;
    if (!a || !b) { CHECK(0, "open two views"); return; }
    kvx__store_relpath(rel, &k);
    kvx_store_block_path(a, &k, path, sizeof path);
    CHECK(put_keys(a, 7, 1, 1) == KVX_OK && !stat(path, &seen), "A puts a block");
    /* B read it and saw garbage (e.g. it was being recycled), meanwhile A
       removed it and put it again: another file, good */
    snprintf(keep, sizeof keep, "%s/keep", dir); /* the old inode stays allocated: not reused */
    CHECK(link(path, keep) == 0, "keep the old file's inode busy");
    kvx_store_remove(a, &k);
    put_keys(a, 7, 1, 1);
    unlink(keep);
    CHECK(!stat(path, &now) && now.st_ino != seen.st_ino, "A replaced it with a new file");
    CHECK(kvx__store_bad(b, b->ns_fd, rel, rel, &k, &seen, "test: torn read") == 0,
          "B does not remove another writer's block at that name");
    CHECK(present(a, 7, 1), "the good block is still there");
    /* B saw garbage in the very file, but it is intact (stale cache, or a
       read racing a writer): re-read under a private name, put back */
    stat(path, &seen);
    CHECK(kvx__store_bad(b, b->ns_fd, rel, rel, &k, &seen, "test: stale bytes") == 0,
          "B does not remove an intact block it misread");
    CHECK(present(a, 7, 1) && !stat(path, &now) && now.st_ino == seen.st_ino,
          "the block is back under its name, the same file");
    /* real evidence: a data byte flipped */
    CHECK(st_flip_byte(path, (off_t)(g_bb - 10)) == 0, "flip a data byte");
    CHECK(kvx__store_bad(b, b->ns_fd, rel, rel, &k, &seen, "test: data CRC") == 1 && !present(a, 7, 1),
          "a block whose data CRC fails on a full re-read is taken away");
    kvx_store_stats_get(b, &st);
    CHECK(st.corrupt == 1, "counted once as corrupt (%llu)", (unsigned long long)st.corrupt);
    memset(&rep, 0, sizeof rep);
    ok = kvx_store_verify(b, 0, &rep) == KVX_OK;
    CHECK(ok && rep.temporary == 1 && rep.bad == 0,
          "written a moment ago (maybe another writer's block in the making), it waits under a "
          "temporary name for a scan 10 minutes on (%llu temporaries)", (unsigned long long)rep.temporary);
    kvx_store_close(a);
    kvx_store_close(b);
}

/* ---- two processes with the background scanner ---- */

#define PROC_KEYS 96

static int child_filler(const char *dir, int id, int go_fd, int done_fd) {
    kvx_store *s = open_store(dir, CAP_BLOCKS, 0.2);
    kvx_store_stats st;
    uint64_t s0, t0;
    char c = 'd';
    int rc = 0;
    if (!s) return 2;
    if (put_keys(s, 100 + (uint64_t)id, 0, PROC_KEYS) != KVX_OK) rc = 1;
    if (write(done_fd, &c, 1) != 1) rc = 1;
    while (read(go_fd, &c, 1) < 0 && errno == EINTR) {} /* EOF: both are done */
    /* a scan that starts after both finished: two completed from now */
    kvx_store_stats_get(s, &st);
    s0 = st.scans;
    t0 = kvx_now_ns();
    do {
        usleep(20 * 1000);
        kvx_store_stats_get(s, &st);
    } while (st.scans < s0 + 2 && kvx_now_ns() - t0 < 60ull * 1000000000ull);
    if (st.scans < s0 + 2) {
        printf("  [child %d] no background scan in 60 s\n", id);
        rc = 1;
    }
    printf("  [child %d] %llu puts, %llu evictions, %llu scans (last %.1f ms), %llu blocks of the "
           "other found by scans\n", id, (unsigned long long)st.puts, (unsigned long long)st.evictions,
           (unsigned long long)st.scans, (double)st.last_scan_ns / 1e6,
           (unsigned long long)st.scan_found);
    kvx_store_close(s);
    return rc;
}

static void test_two_procs(const char *dir) {
    int go[2], done[2], rc0, rc1, got = 0, ok;
    pid_t c0, c1;
    char gofd[16], donefd[16], c;
    kvx_store *s;
    uint64_t cap, maxb = 0;
    st_du du;
    load_all la;
    char why[KVX_ERROR_MAX], ns[4096];
    kvx_store_verify_report rep;
    if (pipe(go) || pipe(done)) { CHECK(0, "pipes"); return; }
    s = open_store(dir, CAP_BLOCKS, -1);
    if (!s) return;
    cap = CAP_BLOCKS * kvx_store_block_bytes(s);
    snprintf(ns, sizeof ns, "%s", kvx_store_dir(s));
    kvx_store_close(s);
    fcntl(go[1], F_SETFD, FD_CLOEXEC);
    fcntl(done[0], F_SETFD, FD_CLOEXEC);
    snprintf(gofd, sizeof gofd, "%d", go[0]);
    snprintf(donefd, sizeof donefd, "%d", done[1]);
    {
        char *av[7] = {(char *)"test_store_shared", (char *)"filler", (char *)dir, (char *)"0", gofd,
                       donefd, NULL};
        c0 = st_spawn(av);
        av[3] = (char *)"1";
        c1 = st_spawn(av);
    }
    close(go[0]);
    close(done[1]);
    while (got < 2) { /* sample the namespace while both put */
        fd_set rf;
        struct timeval tv = {0, 20000};
        FD_ZERO(&rf);
        FD_SET(done[0], &rf);
        if (select(done[0] + 1, &rf, NULL, NULL, &tv) > 0) {
            ssize_t n = read(done[0], &c, 1);
            if (n <= 0) break;
            got++;
        }
        du = st_du_dir(ns);
        if (du.bytes > maxb) maxb = du.bytes;
    }
    CHECK(got == 2, "both processes put %d blocks each (capacity %d)", PROC_KEYS, CAP_BLOCKS);
    du = st_du_dir(ns);
    printf("  when both were done: %llu blocks, %llu bytes on disk (capacity %llu); most seen while "
           "they put: %llu bytes (%.2fx the capacity)\n", (unsigned long long)du.blocks,
           (unsigned long long)du.bytes, (unsigned long long)cap, (unsigned long long)maxb,
           (double)maxb / (double)cap);
    close(go[1]); /* both scan once more, then exit */
    rc0 = st_wait(c0);
    rc1 = st_wait(c1);
    close(done[0]);
    CHECK(rc0 == 0 && rc1 == 0, "both exit cleanly after a scan (%d, %d)", rc0, rc1);
    du = st_du_dir(ns);
    CHECK(du.bytes <= cap && du.bytes > 0,
          "the namespace's block files total %llu bytes (%llu blocks), at most the capacity %llu",
          (unsigned long long)du.bytes, (unsigned long long)du.blocks, (unsigned long long)cap);
    CHECK(du.tmps == 0, "no temporaries left (%llu)", (unsigned long long)du.tmps);
    s = open_store(dir, CAP_BLOCKS, -1);
    if (!s) return;
    memset(&la, 0, sizeof la);
    la.s = s;
    ok = kvx_store_scan(ns, 1, load_cb, &la, why, sizeof why) == KVX_OK;
    CHECK(ok && la.n > 0 && la.loaded == la.n && la.wrong == 0,
          "every remaining block (%d) loads (%d) with the right bytes (%d wrong)", la.n, la.loaded,
          la.wrong);
    CHECK(kvx_store_verify(s, 0, &rep) == KVX_OK && rep.bad == 0, "verify: nothing bad");
    kvx_store_close(s);
}

int main(int argc, char **argv) {
    char dir[256];
    st_pool_init(&pool, 4, 16 << 10, 0, 16);
    if (argc == 6 && !strcmp(argv[1], "filler")) {
        st_prefix = "  [child] ";
        if (probe_block_bytes(argv[2])) return 2;
        return child_filler(argv[2], atoi(argv[3]), atoi(argv[4]), atoi(argv[5]));
    }
    st_scratch(dir, sizeof dir, "store_shared");
    if (probe_block_bytes(dir)) return 1;
    test_two_views(dir);
    st_rm_rf(dir);
    mkdir(dir, 0755);
    test_suspect(dir);
    st_rm_rf(dir);
    mkdir(dir, 0755);
    test_two_procs(dir);
    st_rm_rf(dir);
    st_pool_free(&pool);
    return st_finish("test_store_shared");
}
