/* Block store across restarts: blocks put by one process are prefix hits
   and load in another; the LRU order and the capacity limit survive
   restarts (each session below is its own process). */
#define KVX_IMPLEMENTATION
#include "kvx_store.h"
#include "store_test.h"

static st_pool pool;

static kvx_store *open_cap(const char *dir, uint64_t cap) {
    kvx_store_desc d;
    kvx_store *s = NULL;
    char why[KVX_ERROR_MAX];
    memset(&d, 0, sizeof d);
    d.dir = dir;
    d.model = "restart-model";
    d.layout = pool.l;
    d.capacity_bytes = cap;
    d.io_threads = 3;
    if (kvx_store_open(&d, &s, why, sizeof why) != KVX_OK) printf("  open failed: %s\n", why);
    return s;
}

/* ---- persistence: "put" and "get" run as two processes ---- */

static int child_put(const char *dir, int n) {
    kvx_store *s = open_cap(dir, 0);
    kvx_store_key *k = (kvx_store_key *)malloc((size_t)n * sizeof *k);
    int32_t *pg = (int32_t *)malloc((size_t)n * sizeof *pg);
    int i, rc;
    if (!s) return 2;
    for (i = 0; i < n; i++) {
        k[i] = st_key(20, (uint64_t)i);
        pg[i] = (i * 7) % (int)pool.pages;
    }
    /* pages repeat when n > pool: put in slices so each slice's pages are distinct */
    rc = 0;
    for (i = 0; i < n; i += 16) {
        int m = n - i < 16 ? n - i : 16, j;
        for (j = 0; j < m; j++) st_fill(&pool, pg[i + j], st_seed(&k[i + j]));
        if (kvx_store_batch_put(s, k + i, pg + i, (size_t)m, NULL) != KVX_OK) rc = 1;
    }
    printf("  child put: %d blocks into %s (%s)\n", n, kvx_store_dir(s), rc ? "FAILED" : "ok");
    kvx_store_close(s);
    free(k);
    free(pg);
    return rc;
}

static int child_get(const char *dir, int n) {
    kvx_store *s = open_cap(dir, 0);
    kvx_store_key *k = (kvx_store_key *)malloc((size_t)(n + 1) * sizeof *k);
    int32_t dst[16];
    kvx_store_stats st;
    size_t hits;
    int i, bad = 0;
    if (!s) return 2;
    kvx_store_stats_get(s, &st);
    CHECK(st.blocks == (uint64_t)n, "second process: the index rebuilt from the files has %llu blocks",
          (unsigned long long)st.blocks);
    for (i = 0; i <= n; i++) k[i] = st_key(20, (uint64_t)i);
    k[n] = st_key(21, 0);
    hits = kvx_store_batch_exists(s, k, (size_t)n + 1);
    CHECK(hits == (size_t)n, "second process: exists gives the %d-key prefix (%zu)", n, hits);
    for (i = 0; i < n; i += 16) {
        int m = n - i < 16 ? n - i : 16, j;
        size_t loaded = 0;
        for (j = 0; j < m; j++) dst[j] = (int32_t)(pool.pages - 1 - j);
        if (kvx_store_batch_get(s, k + i, dst, (size_t)m, &loaded) != KVX_OK || loaded != (size_t)m) bad++;
        for (j = 0; j < m; j++)
            if (!st_verify(&pool, dst[j], st_seed(&k[i + j]))) bad++;
    }
    CHECK(bad == 0, "second process: get of all %d blocks, every byte right", n);
    kvx_store_close(s);
    free(k);
    return st_failed ? 1 : 0;
}

/* ---- eviction: three sessions, three processes ---- */

static kvx_store_key ek(int i) { return st_key(30, (uint64_t)i); }

static void put1(kvx_store *s, int i) {
    kvx_store_key k = ek(i);
    int32_t pg = i % (int)pool.pages;
    st_fill(&pool, pg, st_seed(&k));
    kvx_store_batch_put(s, &k, &pg, 1, NULL);
}

static int get1(kvx_store *s, int i) {
    kvx_store_key k = ek(i);
    int32_t pg = (int32_t)pool.pages - 1;
    size_t loaded = 0;
    kvx_store_batch_get(s, &k, &pg, 1, &loaded);
    return loaded == 1 && st_verify(&pool, pg, st_seed(&k));
}

static int has(kvx_store *s, int i) {
    kvx_store_key k = ek(i);
    return kvx_store_batch_exists(s, &k, 1) == 1;
}

/* "+" list must be present, "-" list absent */
static void expect(kvx_store *s, const char *when, const int *yes, int ny, const int *no, int nn) {
    int i, ok = 1;
    char list[256] = "";
    for (i = 0; i < ny; i++)
        if (!has(s, yes[i])) { ok = 0; snprintf(list + strlen(list), sizeof list - strlen(list), " +%d", yes[i]); }
    for (i = 0; i < nn; i++)
        if (has(s, no[i])) { ok = 0; snprintf(list + strlen(list), sizeof list - strlen(list), " -%d", no[i]); }
    CHECK(ok, "%s: the least recently used blocks were evicted%s", when, list);
}

static void under_limit(kvx_store *s, const char *when, uint64_t cap) {
    st_du du = st_du_dir(kvx_store_dir(s));
    kvx_store_stats st;
    kvx_store_stats_get(s, &st);
    CHECK(du.bytes <= cap && st.bytes_used == du.bytes,
          "%s: %llu block files, %llu bytes on disk <= limit %llu; index agrees", when,
          (unsigned long long)du.blocks, (unsigned long long)du.bytes, (unsigned long long)cap);
}

static int session1(const char *dir, uint64_t block) {
    kvx_store *s = open_cap(dir, 10 * block);
    kvx_store_stats st;
    static const int yes[] = {0, 1, 5, 6, 7, 8, 9, 10, 11, 12}, no[] = {2, 3, 4};
    int i;
    if (!s) return 2;
    for (i = 0; i < 10; i++) put1(s, i);
    CHECK(get1(s, 0) && get1(s, 1), "session 1: use keys 0 and 1");
    for (i = 10; i < 13; i++) put1(s, i);
    kvx_store_stats_get(s, &st);
    CHECK(st.evictions == 3 && st.blocks == 10, "session 1: 3 evictions putting 13 into room for 10");
    CHECK(get1(s, 10) && get1(s, 11) && get1(s, 12),
          "session 1: the blocks written over evicted ones (files reused) load right");
    expect(s, "session 1", yes, 10, no, 3);
    under_limit(s, "session 1", 10 * block);
    kvx_store_close(s);
    return st_failed ? 1 : 0;
}

static int session2(const char *dir, uint64_t block) {
    kvx_store *s = open_cap(dir, 10 * block);
    kvx_store_stats st;
    static const int yes[] = {8, 9, 0, 1, 10, 11, 12, 5, 13, 14}, no[] = {2, 3, 4, 6, 7};
    if (!s) return 2;
    kvx_store_stats_get(s, &st);
    CHECK(st.blocks == 10 && st.evictions == 0, "session 2 (new process): 10 blocks found, none evicted");
    CHECK(get1(s, 5), "session 2: use key 5");
    put1(s, 13);
    put1(s, 14);
    expect(s, "session 2 (order rebuilt from mtimes)", yes, 10, no, 5);
    under_limit(s, "session 2", 10 * block);
    kvx_store_close(s);
    return st_failed ? 1 : 0;
}

static int session3(const char *dir, uint64_t block) {
    kvx_store *s = open_cap(dir, 5 * block);
    kvx_store_stats st;
    static const int yes[] = {11, 12, 5, 13, 14}, no[] = {8, 9, 0, 1, 10};
    if (!s) return 2;
    kvx_store_stats_get(s, &st);
    CHECK(st.evictions == 5 && st.blocks == 5, "session 3 (limit halved): open evicted 5 (%llu)",
          (unsigned long long)st.evictions);
    expect(s, "session 3", yes, 5, no, 5);
    under_limit(s, "session 3", 5 * block);
    kvx_store_close(s);
    return st_failed ? 1 : 0;
}

/* ---- readers racing eviction (evicted files are reused in place) ---- */

typedef struct race {
    kvx_store *s;
    int stop, loaded, wrong, rounds;
} race;

static void *race_reader(void *p) {
    race *r = (race *)p;
    int32_t dst[4] = {60, 61, 62, 63};
    while (!__atomic_load_n(&r->stop, __ATOMIC_ACQUIRE)) {
        kvx_store_key k[4];
        size_t loaded = 0, j;
        int top = __atomic_load_n(&r->rounds, __ATOMIC_ACQUIRE);
        for (j = 0; j < 4; j++) k[j] = st_key(31, (uint64_t)(top > 6 ? top - 6 + (int)j : (int)j));
        kvx_store_batch_get(r->s, k, dst, 4, &loaded);
        for (j = 0; j < loaded; j++) {
            r->loaded++;
            if (!st_verify(&pool, dst[j], st_seed(&k[j]))) r->wrong++;
        }
    }
    return NULL;
}

static void test_race(const char *dir, uint64_t block) {
    kvx_store *s = open_cap(dir, 8 * block);
    kvx_store_stats st;
    pthread_t th;
    race r;
    int i, n = st_quick() ? 300 : 2000;
    if (!s) return;
    memset(&r, 0, sizeof r);
    r.s = s;
    pthread_create(&th, NULL, race_reader, &r);
    for (i = 0; i < n; i++) { /* each put evicts the oldest, usually one the reader wants */
        kvx_store_key k = st_key(31, (uint64_t)i);
        int32_t pg = i % 48;
        st_fill(&pool, pg, st_seed(&k));
        kvx_store_batch_put(s, &k, &pg, 1, NULL);
        __atomic_store_n(&r.rounds, i, __ATOMIC_RELEASE);
    }
    __atomic_store_n(&r.stop, 1, __ATOMIC_RELEASE);
    pthread_join(th, NULL);
    kvx_store_stats_get(s, &st);
    CHECK(r.wrong == 0 && st.corrupt == 0,
          "a reader racing %d evicting puts: %d pages loaded, %d wrong, %llu counted corrupt "
          "(%llu misses)", n, r.loaded, r.wrong, (unsigned long long)st.corrupt,
          (unsigned long long)st.misses);
    under_limit(s, "after the race", 8 * block);
    kvx_store_close(s);
}

static int run_child(const char *mode, const char *dir, const char *arg) {
    char *argv[5];
    argv[0] = (char *)"test_store_restart";
    argv[1] = (char *)mode;
    argv[2] = (char *)dir;
    argv[3] = (char *)arg;
    argv[4] = NULL;
    return st_wait(st_spawn(argv));
}

int main(int argc, char **argv) {
    char dir[256], arg[32];
    kvx_store *s;
    uint64_t block;
    int n = st_quick() ? 48 : 200, rc;
    st_pool_init(&pool, 8, 2048, 0, 64);
    if (argc == 4) {
        uint64_t a;
        st_prefix = "  [child] ";
        a = strtoull(argv[3], NULL, 10);
        if (!strcmp(argv[1], "put")) return child_put(argv[2], (int)a);
        if (!strcmp(argv[1], "get")) return child_get(argv[2], (int)a);
        if (!strcmp(argv[1], "s1")) return session1(argv[2], a);
        if (!strcmp(argv[1], "s2")) return session2(argv[2], a);
        if (!strcmp(argv[1], "s3")) return session3(argv[2], a);
        return 2;
    }
    st_scratch(dir, sizeof dir, "store_restart");
    snprintf(arg, sizeof arg, "%d", n);
    rc = run_child("put", dir, arg);
    CHECK(rc == 0, "process 1 put %d blocks and exited (%d)", n, rc);
    rc = run_child("get", dir, arg);
    CHECK(rc == 0, "process 2 found and loaded them (%d)", rc);

    s = open_cap(dir, 0);
    block = kvx_store_block_bytes(s);
    kvx_store_close(s);
    st_rm_rf(dir);
    mkdir(dir, 0755);
    snprintf(arg, sizeof arg, "%llu", (unsigned long long)block);
    CHECK(run_child("s1", dir, arg) == 0, "eviction session 1 (process 3)");
    CHECK(run_child("s2", dir, arg) == 0, "eviction session 2 (process 4)");
    CHECK(run_child("s3", dir, arg) == 0, "eviction session 3 (process 5)");

    /* a block larger than the capacity; a batch larger than the capacity */
    s = open_cap(dir, block - 1);
    {
        kvx_store_key k = ek(100);
        int32_t pg = 0;
        CHECK(s && kvx_store_batch_put(s, &k, &pg, 1, NULL) == KVX_ERR_NO_SPACE,
              "a block larger than the capacity: KVX_ERR_NO_SPACE");
    }
    kvx_store_close(s);
    s = open_cap(dir, 8 * block);
    {
        kvx_store_key k[40];
        int32_t pg[40];
        int i;
        for (i = 0; i < 40; i++) { k[i] = ek(200 + i); pg[i] = i; }
        CHECK(s && kvx_store_batch_put(s, k, pg, 40, NULL) == KVX_OK, "a batch of 40 into room for 8");
        under_limit(s, "after the big batch", 8 * block);
    }
    kvx_store_close(s);
    st_rm_rf(dir);
    mkdir(dir, 0755);
    test_race(dir, block);
    st_rm_rf(dir);
    st_pool_free(&pool);
    return st_finish("test_store_restart");
}
