/* The block store shared by two engines on two nodes: two processes on two
   FUSE mounts of one GlusterFS volume (KVX_DFS_A, KVX_DFS_B: the same
   directory seen through each mount; tests/dfs/run.sh sets them up), one
   namespace. Without them the test says SKIP and exits 77.
     1. puts through mount A, prefix hits through mount B: exists and get,
        every byte checked against content generated from the key;
     2. the same keys put from both mounts at once: intact blocks, no
        temporaries, every block loads through both;
     3. eviction on A (a small capacity: blocks recycled in place and
        removed) while B reads the same keys: a block evicted or removed
        under the reader is a miss, never a torn or wrong read, never an
        error, and nothing is counted corrupt or removed by the reader;
     4. a restart of either side (close + open) sees the other's blocks;
     5. the capacity across nodes: both put more than the capacity at once;
        once both are done and a scan ran, the namespace's block files total
        at most the capacity (while they put it may exceed it by what the
        other side put since the last scan; the largest excess seen is
        printed). */
#define KVX_IMPLEMENTATION
#include "kvx_store.h"
#include "../store/store_test.h"
#include <sys/select.h>

static st_pool pool;

/* The pause between two looks of a polling loop: every loop that calls it
   re-checks a state it observes (a block loads, a scan counter moved, a
   directory shows up) and gives up at a deadline. */
static void poll_pause(void) { usleep(10 * 1000); }
static uint64_t g_bb;

#define open_store(dir, cap_blocks, scan) \
    st_open_blocks(&pool, dir, "dfs-store", 4, cap_blocks, g_bb, scan)
static int probe_block_bytes(const char *dir) {
    g_bb = st_block_bytes(&pool, dir, "dfs-store");
    return g_bb ? 0 : -1;
}

static kvx_result put_keys(kvx_store *s, const kvx_store_key *keys, size_t n) {
    kvx_result r = KVX_OK, x;
    size_t i, j;
    for (i = 0; i < n; i += 8) {
        int32_t pg[8];
        size_t m = n - i < 8 ? n - i : 8;
        for (j = 0; j < m; j++) {
            pg[j] = (int32_t)j;
            st_fill(&pool, (int32_t)j, st_seed(&keys[i + j]));
        }
        if ((x = kvx_store_batch_put(s, keys + i, pg, m, NULL)) != KVX_OK) r = x;
    }
    return r;
}

/* Loads keys[0..n) in batches into pages 16.. and checks every byte.
   Returns the number loaded and verified; *wrong counts bad bytes. */
static size_t get_check(kvx_store *s, const kvx_store_key *keys, size_t n, int *wrong, int *errs) {
    size_t i, total = 0;
    for (i = 0; i < n; i += 8) {
        int32_t dst[8];
        size_t m = n - i < 8 ? n - i : 8, loaded = 0, j;
        for (j = 0; j < m; j++) {
            dst[j] = (int32_t)(16 + j);
            memset((char *)pool.bufs[0].base + (size_t)dst[j] * pool.bufs[0].item_len, 0xEE, 64);
        }
        if (kvx_store_batch_get(s, keys + i, dst, m, &loaded) != KVX_OK) (*errs)++;
        for (j = 0; j < loaded; j++)
            if (!st_verify(&pool, dst[j], st_seed(&keys[i + j]))) (*wrong)++;
        total += loaded;
        if (loaded < m) break;
    }
    return total;
}

/* get_check, tried again while a name cached by this client may still lead
   to a file another client replaced (a miss for about a second; 20 s at
   most). */
static size_t get_settled(kvx_store *s, const kvx_store_key *keys, size_t n, int *wrong, int *errs) {
    uint64_t t0 = kvx_now_ns();
    size_t got;
    while ((got = get_check(s, keys, n, wrong, errs)) < n && kvx_now_ns() - t0 < 20000000000ull)
        poll_pause();
    return got;
}

static void fam_keys(kvx_store_key *k, size_t n, uint64_t fam) {
    size_t i;
    for (i = 0; i < n; i++) k[i] = st_key(fam, i);
}

static uint64_t now_ms(void) { return kvx_now_ns() / 1000000ull; }

/* ---- child processes ---- */

#define PREFIX_PAGES 64
#define SAME_KEYS 32
#define EVICT_KEYS 48
#define EVICT_CAP 16
#define CAP 32
#define FILL_KEYS 96

/* 1: a request's prefix through A */
static void prefix_keys(kvx_store_key *k) {
    uint32_t tok[PREFIX_PAGES * 16];
    size_t i;
    for (i = 0; i < PREFIX_PAGES * 16; i++) tok[i] = (uint32_t)(st_mix(i + 4242) % 128000);
    kvx_store_page_keys(tok, PREFIX_PAGES * 16, 16, NULL, k, PREFIX_PAGES);
}

static int child_prefix(const char *dir) {
    kvx_store_key k[PREFIX_PAGES];
    kvx_store *s = open_store(dir, KVX_STORE_UNLIMITED, -1);
    int rc;
    if (!s) return 2;
    prefix_keys(k);
    rc = put_keys(s, k, PREFIX_PAGES) == KVX_OK ? 0 : 1;
    kvx_store_close(s);
    return rc;
}

/* 2: the same keys from both mounts; go_fd's EOF starts them together */
static int child_same(const char *dir, int go_fd) {
    kvx_store_key k[SAME_KEYS];
    kvx_store *s;
    char c;
    int rc, r;
    while (read(go_fd, &c, 1) < 0 && errno == EINTR) {}
    if (!(s = open_store(dir, KVX_STORE_UNLIMITED, -1))) return 2;
    for (rc = 0, r = 0; r < 3; r++) {
        fam_keys(k, SAME_KEYS, 300 + (uint64_t)r);
        if (put_keys(s, k, SAME_KEYS) != KVX_OK) rc = 1;
    }
    kvx_store_close(s);
    return rc;
}

/* 3: keeps putting EVICT_KEYS keys in turn with room for EVICT_CAP */
static int child_evict(const char *dir, int passes) {
    kvx_store_key k[EVICT_KEYS];
    kvx_store *s = open_store(dir, EVICT_CAP, -1);
    kvx_store_stats st;
    int p, rc = 0;
    if (!s) return 2;
    fam_keys(k, EVICT_KEYS, 400);
    for (p = 0; p < passes; p++)
        if (put_keys(s, k, EVICT_KEYS) != KVX_OK) rc = 1;
    kvx_store_stats_get(s, &st);
    printf("  [evictor on A] %llu puts, %llu evictions, %llu corrupt, %llu errors\n",
           (unsigned long long)st.puts, (unsigned long long)st.evictions,
           (unsigned long long)st.corrupt, (unsigned long long)st.errors);
    if (st.corrupt || st.errors) rc = 1;
    kvx_store_close(s);
    return rc;
}

/* 5: fills past the capacity, says so on done_fd, waits for go_fd's EOF,
   then for a scan that started after both were done */
static int child_fill(const char *dir, int id, int go_fd, int done_fd) {
    kvx_store_key k[FILL_KEYS];
    kvx_store *s = open_store(dir, CAP, 0.5);
    kvx_store_stats st;
    uint64_t s0, t0;
    char c = 'd';
    int rc = 0;
    if (!s) return 2;
    fam_keys(k, FILL_KEYS, 500 + (uint64_t)id);
    if (put_keys(s, k, FILL_KEYS) != KVX_OK) rc = 1;
    if (write(done_fd, &c, 1) != 1) rc = 1;
    while (read(go_fd, &c, 1) < 0 && errno == EINTR) {}
    kvx_store_stats_get(s, &st);
    s0 = st.scans;
    t0 = now_ms();
    do {
        poll_pause();
        kvx_store_stats_get(s, &st);
    } while (st.scans < s0 + 2 && now_ms() - t0 < 60000);
    if (st.scans < s0 + 2) rc = 1;
    printf("  [filler %d] %llu puts, %llu evictions, %llu scans (last %.1f ms), %llu blocks of the "
           "other side found, %llu gone\n", id, (unsigned long long)st.puts,
           (unsigned long long)st.evictions, (unsigned long long)st.scans,
           (double)st.last_scan_ns / 1e6, (unsigned long long)st.scan_found,
           (unsigned long long)st.scan_gone);
    kvx_store_close(s);
    return rc;
}

/* ---- the parent: the B side and the checks ---- */

/* Every block listed through one mount loads through the other with the
   right bytes. A name this client looked up before another client
   recycled or removed it may still be cached for about a second (GlusterFS
   entry-timeout): such a get is a miss, and is tried again until it loads
   (bounded: 20 s). */
typedef struct load_all {
    kvx_store *s;
    int n, loaded, wrong, late;
} load_all;
static int load_cb(void *user, const kvx_store_entry *e) {
    load_all *c = (load_all *)user;
    int32_t dst = 15;
    size_t loaded = 0;
    uint64_t t0 = now_ms();
    c->n++;
    if (e->status != KVX_OK || !e->info) {
        printf("  listed through the other mount as unusable: %s: %s\n", e->path, e->why);
        return 0;
    }
    for (;;) {
        kvx_store_batch_get(c->s, &e->info->key, &dst, 1, &loaded);
        if (loaded == 1 || now_ms() - t0 > 20000) break;
        poll_pause();
    }
    if (now_ms() - t0 > 40) c->late++;
    if (loaded == 1) {
        c->loaded++;
        if (!st_verify(&pool, dst, st_seed(&e->info->key))) c->wrong++;
    }
    return 0;
}

/* Block files that are not intact: misplaced (an intact block of another
   key under a name: what a stale name can leave for a moment, put right by
   the next read or verify) or corrupt (never acceptable). */
typedef struct bad_count {
    int n, misplaced, corrupt;
} bad_count;
static int bad_cb(void *user, const kvx_store_entry *e) {
    bad_count *c = (bad_count *)user;
    c->n++;
    if (e->status == KVX_OK) return 0;
    if (strstr(e->why, "not the one in its name")) c->misplaced++;
    else {
        c->corrupt++;
        printf("  corrupt: %s: %s\n", e->path, e->why);
    }
    return 0;
}

static pid_t spawn(const char *a1, const char *a2, const char *a3, const char *a4, const char *a5) {
    char *av[7];
    av[0] = (char *)"test_dfs_store";
    av[1] = (char *)a1;
    av[2] = (char *)a2;
    av[3] = (char *)a3;
    av[4] = (char *)a4;
    av[5] = (char *)a5;
    av[6] = NULL;
    return st_spawn(av);
}

static void test_prefix_and_restart(const char *da, const char *db) {
    kvx_store_key k[PREFIX_PAGES + 1], r[16];
    kvx_store *s;
    kvx_store_stats st;
    int wrong = 0, errs = 0, rc;
    size_t hit, got;
    rc = st_wait(spawn("prefix", da, "", "", ""));
    CHECK(rc == 0, "engine on mount A puts a %d-page prefix (%d)", PREFIX_PAGES, rc);
    prefix_keys(k);
    k[PREFIX_PAGES] = st_key(1, 1); /* never stored */
    if (!(s = open_store(db, KVX_STORE_UNLIMITED, -1))) { CHECK(0, "open on B"); return; }
    kvx_store_stats_get(s, &st);
    CHECK(st.blocks == PREFIX_PAGES, "engine on mount B opens and indexes A's %llu blocks",
          (unsigned long long)st.blocks);
    hit = kvx_store_batch_exists(s, k, PREFIX_PAGES + 1);
    CHECK(hit == PREFIX_PAGES, "prefix hit through B: %zu of %d pages", hit, PREFIX_PAGES);
    got = get_check(s, k, PREFIX_PAGES, &wrong, &errs);
    CHECK(got == PREFIX_PAGES && !wrong && !errs, "B loads all %zu pages, every byte right (%d wrong, "
          "%d errors)", got, wrong, errs);
    /* restart of B: close, open again */
    kvx_store_close(s);
    if (!(s = open_store(db, KVX_STORE_UNLIMITED, -1))) { CHECK(0, "reopen on B"); return; }
    wrong = errs = 0;
    CHECK(kvx_store_batch_exists(s, k, PREFIX_PAGES) == PREFIX_PAGES &&
          get_check(s, k, PREFIX_PAGES, &wrong, &errs) == PREFIX_PAGES && !wrong && !errs,
          "after B restarts it still hits and loads A's prefix");
    /* B writes; a new engine on A (A restarted) sees B's blocks */
    fam_keys(r, 16, 600);
    CHECK(put_keys(s, r, 16) == KVX_OK, "B puts 16 blocks");
    kvx_store_close(s);
    rc = st_wait(spawn("check", da, "600", "16", ""));
    CHECK(rc == 0, "an engine restarted on A hits and loads B's 16 blocks, every byte right (%d)", rc);
}

/* "check": opens dir, exists + get of fam's n keys, all must load right */
static int child_check(const char *dir, uint64_t fam, size_t n) {
    kvx_store_key k[64];
    kvx_store *s = open_store(dir, KVX_STORE_UNLIMITED, -1);
    int wrong = 0, errs = 0, rc;
    size_t hit, got;
    if (!s || n > 64) return 2;
    fam_keys(k, n, fam);
    hit = kvx_store_batch_exists(s, k, n);
    got = get_check(s, k, n, &wrong, &errs);
    rc = hit == n && got == n && !wrong && !errs ? 0 : 1;
    if (rc) printf("  [check] %zu of %zu found, %zu loaded, %d wrong, %d errors\n", hit, n, got, wrong, errs);
    kvx_store_close(s);
    return rc;
}

static void test_same_keys(const char *da, const char *db) {
    int go[2], rc0, rc1, r, wrong = 0, errs = 0, ok = 1;
    char gofd[16];
    pid_t p0, p1;
    kvx_store *s;
    kvx_store_verify_report rep;
    if (pipe(go)) { CHECK(0, "pipe"); return; }
    fcntl(go[1], F_SETFD, FD_CLOEXEC);
    snprintf(gofd, sizeof gofd, "%d", go[0]);
    p0 = spawn("same", da, gofd, "", "");
    p1 = spawn("same", db, gofd, "", "");
    close(go[0]);
    close(go[1]);
    rc0 = st_wait(p0);
    rc1 = st_wait(p1);
    CHECK(rc0 == 0 && rc1 == 0, "engines on A and B put the same %d keys x 3 at once (%d, %d)",
          SAME_KEYS, rc0, rc1);
    if (!(s = open_store(da, KVX_STORE_UNLIMITED, -1))) return;
    {   /* a name mount A looked up before B's rename replaced its file may
           lead to the replaced (deleted) file for about a second (GlusterFS
           entry-timeout): verify skips such a name; look again */
        uint64_t t0 = now_ms();
        do {
            memset(&rep, 0, sizeof rep);
            ok = kvx_store_verify(s, 0, &rep) == KVX_OK;
            if (rep.blocks != 3 * SAME_KEYS) poll_pause();
        } while (ok && rep.blocks != 3 * SAME_KEYS && now_ms() - t0 < 20000);
    }
    CHECK(ok && rep.blocks == 3 * SAME_KEYS && rep.bad == 0 && rep.temporary == 0,
          "verify through A: %llu blocks, %llu bad, %llu temporaries", (unsigned long long)rep.blocks,
          (unsigned long long)rep.bad, (unsigned long long)rep.temporary);
    kvx_store_close(s);
    if (!(s = open_store(db, KVX_STORE_UNLIMITED, -1))) return;
    for (r = 0; r < 3; r++) {
        kvx_store_key k[SAME_KEYS];
        fam_keys(k, SAME_KEYS, 300 + (uint64_t)r);
        if (get_settled(s, k, SAME_KEYS, &wrong, &errs) != SAME_KEYS) ok = 0;
    }
    CHECK(ok && !wrong && !errs, "every one loads through B with the right bytes (%d wrong)", wrong);
    kvx_store_close(s);
}

static void test_evict_under_reader(const char *da, const char *db) {
    kvx_store_key k[EVICT_KEYS];
    kvx_store *s;
    kvx_store_stats st;
    pid_t ev;
    int status = 0, rc = -1, wrong = 0, errs = 0, done = 0, ok;
    uint64_t x = 12345, tries = 0, hits = 0, t0 = now_ms();
    fam_keys(k, EVICT_KEYS, 400);
    if (!(s = open_store(db, KVX_STORE_UNLIMITED, -1))) return;
    ev = spawn("evict", da, st_quick() ? "4" : "8", "", "");
    while (!done) {
        size_t i, n, got;
        pid_t w = waitpid(ev, &status, WNOHANG);
        if (w == ev) {
            done = 1;
            rc = WIFEXITED(status) ? WEXITSTATUS(status) : 128;
        }
        x = st_mix(x);
        i = (size_t)(x % EVICT_KEYS);
        n = EVICT_KEYS - i < 4 ? EVICT_KEYS - i : 4;
        tries++;
        if (kvx_store_batch_exists(s, k + i, n) == 0) continue;
        got = get_check(s, k + i, n, &wrong, &errs);
        hits += got;
        if (now_ms() - t0 > 120000) break;
    }
    kvx_store_stats_get(s, &st);
    printf("  [reader on B] %llu reads, %llu pages loaded and checked, %llu misses, %llu corrupt, "
           "%llu errors\n", (unsigned long long)tries, (unsigned long long)hits,
           (unsigned long long)st.misses, (unsigned long long)st.corrupt, (unsigned long long)st.errors);
    CHECK(rc == 0, "the engine on A evicted and recycled blocks without an error or a corrupt "
          "block (%d)", rc);
    CHECK(hits > 0, "the reader on B loaded pages while A evicted (%llu)", (unsigned long long)hits);
    CHECK(wrong == 0, "no page B loaded was torn or wrong (%d)", wrong);
    CHECK(errs == 0 && st.errors == 0, "every block that went away was a miss, not an error (%d, %llu)",
          errs, (unsigned long long)st.errors);
    CHECK(st.corrupt == 0, "the reader took nothing away as corrupt (%llu): a block evicted or "
          "changing under it is a miss", (unsigned long long)st.corrupt);
    kvx_store_close(s);
    /* every block file left, read through A, is intact */
    {
        bad_count bc;
        char why[KVX_ERROR_MAX];
        memset(&bc, 0, sizeof bc);
        ok = kvx_store_scan(da, 1, bad_cb, &bc, why, sizeof why) == KVX_OK;
        CHECK(ok && bc.n > 0 && bc.corrupt == 0, "every block file left is intact, read through A: "
              "%d files, %d corrupt, %d misplaced for a moment (an intact block of another key)",
              bc.n, bc.corrupt, bc.misplaced);
    }
}

static void test_capacity(const char *da, const char *db) {
    int go[2], done[2], rc0, rc1, got = 0, ok;
    pid_t c0, c1;
    char gofd[16], donefd[16], c, ns[4096], why[KVX_ERROR_MAX];
    kvx_store *s;
    uint64_t cap, maxb = 0;
    st_du du;
    load_all la;
    if (pipe(go) || pipe(done)) { CHECK(0, "pipes"); return; }
    if (!(s = open_store(da, KVX_STORE_UNLIMITED, -1))) return;
    snprintf(ns, sizeof ns, "%s", kvx_store_dir(s));
    kvx_store_close(s);
    cap = CAP * g_bb;
    fcntl(go[1], F_SETFD, FD_CLOEXEC);
    fcntl(done[0], F_SETFD, FD_CLOEXEC);
    snprintf(gofd, sizeof gofd, "%d", go[0]);
    snprintf(donefd, sizeof donefd, "%d", done[1]);
    c0 = spawn("fill", da, "0", gofd, donefd);
    c1 = spawn("fill", db, "1", gofd, donefd);
    close(go[0]);
    close(done[1]);
    while (got < 2) {
        fd_set rf;
        struct timeval tv = {0, 50000};
        FD_ZERO(&rf);
        FD_SET(done[0], &rf);
        if (select(done[0] + 1, &rf, NULL, NULL, &tv) > 0) {
            if (read(done[0], &c, 1) <= 0) break;
            got++;
        }
        du = st_du_dir(ns);
        if (du.bytes > maxb) maxb = du.bytes;
    }
    CHECK(got == 2, "engines on A and B each put %d blocks, capacity %d", FILL_KEYS, CAP);
    du = st_du_dir(ns);
    printf("  when both were done: %llu bytes on disk (%.2fx the capacity); most seen while they "
           "put: %.2fx\n", (unsigned long long)du.bytes, (double)du.bytes / (double)cap,
           (double)maxb / (double)cap);
    close(go[1]);
    rc0 = st_wait(c0);
    rc1 = st_wait(c1);
    close(done[0]);
    CHECK(rc0 == 0 && rc1 == 0, "both scanned once more and exited cleanly (%d, %d)", rc0, rc1);
    du = st_du_dir(ns);
    CHECK(du.bytes > 0 && du.bytes <= cap, "the namespace's block files total %llu bytes (%llu blocks), "
          "at most the capacity %llu", (unsigned long long)du.bytes, (unsigned long long)du.blocks,
          (unsigned long long)cap);
    CHECK(du.tmps == 0, "no temporaries left (%llu)", (unsigned long long)du.tmps);
    if (!(s = open_store(db, KVX_STORE_UNLIMITED, -1))) return;
    {   /* names cached by mount A's client may lead to recycled files for a
           moment: listed through A, a block may look like another key's */
        uint64_t t1 = now_ms();
        int tries = 0;
        do {
            if (tries++) poll_pause();
            memset(&la, 0, sizeof la);
            la.s = s;
            ok = kvx_store_scan(ns, 1, load_cb, &la, why, sizeof why) == KVX_OK;
        } while (ok && la.loaded != la.n && now_ms() - t1 < 20000);
        printf("  listed through A and loaded through B after %d tries, %.1f s\n", tries,
               (double)(now_ms() - t1) / 1000.0);
    }
    CHECK(ok && la.n > 0 && la.loaded == la.n && la.wrong == 0,
          "every remaining block (%d) loads through B (%d) with the right bytes (%d wrong; %d were "
          "misses at first: stale names)", la.n, la.loaded, la.wrong, la.late);
    kvx_store_close(s);
}

/* The same directory through both mounts: made on A, seen on B. */
static int make_dirs(const char *a, const char *b, const char *tag, char *da, char *db, size_t len) {
    struct stat st;
    uint64_t t0 = now_ms();
    snprintf(da, len, "%s/%s", a, tag);
    snprintf(db, len, "%s/%s", b, tag);
    st_rm_rf(da);
    if (mkdir(da, 0700) && errno != EEXIST) return -1;
    while (stat(db, &st) || !S_ISDIR(st.st_mode)) {
        if (now_ms() - t0 > 20000) return -1;
        poll_pause();
    }
    return 0;
}

int main(int argc, char **argv) {
    const char *a = getenv("KVX_DFS_A"), *b = getenv("KVX_DFS_B");
    char da[1024], db[1024], tag[64];
    int round;
    st_pool_init(&pool, 4, 32 << 10, 0, 32);
    if (argc >= 3) { /* a child: role, dir, ... */
        st_prefix = "  [child] ";
        if (probe_block_bytes(argv[2])) return 2;
        if (!strcmp(argv[1], "prefix")) return child_prefix(argv[2]);
        if (!strcmp(argv[1], "same") && argc >= 4) return child_same(argv[2], atoi(argv[3]));
        if (!strcmp(argv[1], "evict") && argc >= 4) return child_evict(argv[2], atoi(argv[3]));
        if (!strcmp(argv[1], "check") && argc >= 5)
            return child_check(argv[2], strtoull(argv[3], NULL, 10), (size_t)atoi(argv[4]));
        if (!strcmp(argv[1], "fill") && argc >= 6)
            return child_fill(argv[2], atoi(argv[3]), atoi(argv[4]), atoi(argv[5]));
        return 2;
    }
    if (!a || !*a || !b || !*b) {
        printf("SKIP: test_dfs_store needs KVX_DFS_A and KVX_DFS_B (two mounts of one distributed "
               "filesystem volume, e.g. GlusterFS; tests/dfs/run.sh sets them)\n");
        return 77;
    }
    signal(SIGPIPE, SIG_IGN);
    for (round = 0; round < 4; round++) {
        uint64_t t0 = now_ms();
        snprintf(tag, sizeof tag, "dfs_store_%ld_%d", (long)getpid(), round);
        if (make_dirs(a, b, tag, da, db, sizeof da)) {
            CHECK(0, "make %s on %s and see it on %s", tag, a, b);
            break;
        }
        if (probe_block_bytes(da)) { CHECK(0, "open a store on %s", da); break; }
        if (round == 0) {
            printf("== 1 + 4. prefix hits across the mounts, restarts (block %llu bytes)\n",
                   (unsigned long long)g_bb);
            test_prefix_and_restart(da, db);
        } else if (round == 1) {
            printf("== 2. the same keys from both mounts at once\n");
            test_same_keys(da, db);
        } else if (round == 2) {
            printf("== 3. eviction on A while B reads\n");
            test_evict_under_reader(da, db);
        } else {
            printf("== 5. the capacity across nodes\n");
            test_capacity(da, db);
        }
        printf("   (%.1f s)\n", (double)(now_ms() - t0) / 1000.0);
        st_rm_rf(da);
    }
    st_pool_free(&pool);
    return st_finish("test_dfs_store");
}
