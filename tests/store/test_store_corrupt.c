/* Block store: damaged block files are detected (size, header CRC, data
   CRC, wrong key, wrong configuration), counted, logged, removed and never
   loaded; stale temporary files are swept; verify and scan report them. */
#define KVX_IMPLEMENTATION
#include "kvx_store.h"
#include "store_test.h"

static st_pool pool;
static st_log lg;

static kvx_store *open_model(const char *dir, const char *model) {
    kvx_store_desc d;
    kvx_store *s = NULL;
    char why[KVX_ERROR_MAX];
    memset(&d, 0, sizeof d);
    d.dir = dir;
    d.model = model;
    d.layout = pool.l;
    d.io_threads = 2;
    d.logger.func = st_log_fn;
    d.logger.user_data = &lg;
    if (kvx_store_open(&d, &s, why, sizeof why) != KVX_OK) printf("  open failed: %s\n", why);
    return s;
}

static kvx_store_key K[10];

static void put_all(kvx_store *s) {
    int32_t src[10];
    int i;
    for (i = 0; i < 10; i++) {
        K[i] = st_key(7, (uint64_t)i);
        src[i] = i;
        st_fill(&pool, i, st_seed(&K[i]));
    }
    kvx_store_batch_put(s, K, src, 10, NULL);
}

static int exists_file(kvx_store *s, int i) {
    char p[1024];
    struct stat sb;
    kvx_store_block_path(s, &K[i], p, sizeof p);
    return stat(p, &sb) == 0;
}

/* Damages key i's block with f, then gets keys 0..9: the load must stop at
   i, the file must be gone, the reason logged and counted. */
static void damaged_get(kvx_store *s, int i, const char *what, const char *reason,
                        int (*f)(const char *path)) {
    char p[1024];
    int32_t dst[10];
    size_t loaded = 99;
    kvx_store_stats a, b;
    int j, ok = 1, warns;
    kvx_result r;
    kvx_store_block_path(s, &K[i], p, sizeof p);
    CHECK(f(p) == 0, "%s: damage the block of key %d", what, i);
    for (j = 0; j < 10; j++) dst[j] = 20 + j;
    kvx_store_stats_get(s, &a);
    warns = lg.warns;
    r = kvx_store_batch_get(s, K, dst, 10, &loaded);
    kvx_store_stats_get(s, &b);
    CHECK(r == KVX_OK && loaded == (size_t)i, "%s: get loads the %d keys before it (%zu)", what, i, loaded);
    for (j = 0; j < i; j++) ok &= st_verify(&pool, dst[j], st_seed(&K[j]));
    CHECK(ok, "%s: those pages are right", what);
    CHECK(b.corrupt == a.corrupt + 1 && b.misses >= a.misses + 1, "%s: counted corrupt and miss", what);
    CHECK(lg.warns == warns + 1 && strstr(lg.last, reason) != NULL, "%s: logged '%s'", what, reason);
    CHECK(!exists_file(s, i), "%s: the file is removed", what);
    CHECK(kvx_store_batch_exists(s, K, 10) == (size_t)i, "%s: exists now stops at %d", what, i);
    /* put it back for the next case */
    {
        int32_t src = i;
        st_fill(&pool, i, st_seed(&K[i]));
        kvx_store_batch_put(s, &K[i], &src, 1, NULL);
    }
}

static int flip_data(const char *p) {
    struct stat sb;
    if (stat(p, &sb)) return -1;
    return st_flip_byte(p, sb.st_size - 100);
}
static int flip_header(const char *p) { return st_flip_byte(p, 40); /* inside the key */ }
static int flip_item_len(const char *p) { return st_flip_byte(p, 96); }
static int truncate_it(const char *p) {
    struct stat sb;
    if (stat(p, &sb)) return -1;
    return truncate(p, sb.st_size - 1);
}
static int zero_it(const char *p) {
    struct stat sb;
    char z[4096];
    int fd = open(p, O_WRONLY);
    off_t off = 0;
    memset(z, 0, sizeof z);
    if (fd < 0 || fstat(fd, &sb)) return -1;
    while (off < sb.st_size) {
        size_t n = (size_t)(sb.st_size - off) < sizeof z ? (size_t)(sb.st_size - off) : sizeof z;
        if (pwrite(fd, z, n, off) != (ssize_t)n) break;
        off += (off_t)n;
    }
    close(fd);
    return 0;
}
static char other_path[1100];

static void test_damage(const char *dir) {
    kvx_store *s = open_model(dir, "m");
    CHECK(s != NULL, "open");
    if (!s) return;
    put_all(s);
    CHECK(kvx_store_batch_exists(s, K, 10) == 10, "10 blocks stored");
    damaged_get(s, 4, "a flipped data byte", "data CRC32C mismatch", flip_data);
    damaged_get(s, 0, "a flipped header byte", "header CRC32C mismatch", flip_header);
    damaged_get(s, 9, "a flipped item_len byte", "header CRC32C mismatch", flip_item_len);
    damaged_get(s, 6, "a zeroed file", "bad magic", zero_it);
    /* a valid block of another key under this key's name */
    {
        char p[1024];
        kvx_store_block_path(s, &K[3], p, sizeof p);
        snprintf(other_path, sizeof other_path, "%s.copy", p);
        {
            char cmd[4096];
            kvx_store_block_path(s, &K[2], p, sizeof p);
            snprintf(cmd, sizeof cmd, "cp '%s' '%s'", p, other_path);
            CHECK(system(cmd) == 0, "copy key 2's block");
        }
        /* a valid block of another key is no evidence of damage: on a shared
           filesystem a stale name can lead to a recycled file. It is a miss
           and goes back to its own key's name. */
        {
            kvx_store_stats a, b;
            int32_t dst[10], j;
            size_t loaded = 0;
            for (j = 0; j < 10; j++) dst[j] = 10 + j;
            kvx_store_block_path(s, &K[3], p, sizeof p);
            CHECK(rename(other_path, p) == 0, "another key's block: key 2's block under key 3's name");
            kvx_store_stats_get(s, &a);
            j = kvx_store_batch_get(s, K, dst, 10, &loaded) == KVX_OK;
            CHECK(j && loaded == 3, "another key's block: get loads the 3 keys before it (%zu)", loaded);
            kvx_store_stats_get(s, &b);
            CHECK(b.corrupt == a.corrupt && b.misses >= a.misses + 1,
                  "another key's block: a miss, not counted corrupt");
            CHECK(!exists_file(s, 3), "another key's block: gone from key 3's name");
            for (j = 0; j < 3; j++) dst[j] = 10 + j;
            CHECK(kvx_store_batch_get(s, &K[2], dst, 1, &loaded) == KVX_OK && loaded == 1 &&
                  st_verify(&pool, dst[0], st_seed(&K[2])),
                  "another key's block: back under key 2's name, loads right");
            {
                int32_t src = 3;
                st_fill(&pool, 3, st_seed(&K[3]));
                kvx_store_batch_put(s, &K[3], &src, 1, NULL);
            }
        }
    }
    /* a truncated block: exists notices by its size and removes it */
    {
        char p[1024];
        kvx_store_stats a, b;
        int warns = lg.warns;
        kvx_store_block_path(s, &K[5], p, sizeof p);
        kvx_store_stats_get(s, &a);
        CHECK(truncate_it(p) == 0, "truncate key 5's block by one byte");
        CHECK(kvx_store_batch_exists(s, K, 10) == 5, "exists stops at the truncated block");
        kvx_store_stats_get(s, &b);
        CHECK(b.corrupt == a.corrupt + 1 && lg.warns == warns + 1 && strstr(lg.last, "bytes"),
              "counted and logged: %s", lg.last);
        CHECK(!exists_file(s, 5), "and removed");
        {
            int32_t src = 5;
            st_fill(&pool, 5, st_seed(&K[5]));
            kvx_store_batch_put(s, &K[5], &src, 1, NULL);
        }
        damaged_get(s, 5, "a truncated block", "torn, truncated", truncate_it);
    }
    kvx_store_close(s);
}

/* A block of another configuration (same layout, other model) copied into
   this namespace under a key's name is not loaded. */
static void test_foreign(const char *dir) {
    kvx_store *a = open_model(dir, "model-A"), *b = open_model(dir, "model-B");
    kvx_store_key k = st_key(8, 1);
    int32_t page = 11, dst = 50;
    char pa[1024], pb[1024], cmd[4096];
    size_t loaded = 9;
    kvx_result r;
    CHECK(a && b && kvx_store_config_hash(a) != kvx_store_config_hash(b),
          "two models, two namespaces");
    if (!a || !b) return;
    st_fill(&pool, page, 5);
    kvx_store_batch_put(b, &k, &page, 1, NULL);
    kvx_store_block_path(a, &k, pa, sizeof pa);
    kvx_store_block_path(b, &k, pb, sizeof pb);
    snprintf(cmd, sizeof cmd, "mkdir -p \"$(dirname '%s')\" && cp '%s' '%s'", pa, pb, pa);
    CHECK(system(cmd) == 0, "copy model-B's block into model-A's namespace");
    CHECK(kvx_store_batch_exists(a, &k, 1) == 1, "exists sees a file of the right size");
    r = kvx_store_batch_get(a, &k, &dst, 1, &loaded);
    CHECK(r == KVX_OK && loaded == 0, "get refuses it (loaded %zu)", loaded);
    CHECK(strstr(lg.last, "written for configuration") != NULL, "logged: %s", lg.last);
    CHECK(access(pa, F_OK) != 0 && access(pb, F_OK) == 0, "removed from A, still in B");
    kvx_store_close(a);
    kvx_store_close(b);
}

typedef struct scan_res {
    int blocks, corrupt;
    char why[256];
} scan_res;

static int scan_cb(void *user, const kvx_store_entry *e) {
    scan_res *r = (scan_res *)user;
    r->blocks++;
    if (e->status != KVX_OK) {
        r->corrupt++;
        snprintf(r->why, sizeof r->why, "%s", e->why);
    }
    return 0;
}

/* verify finds damage without a get; scan reports it read-only. */
static void test_verify(const char *dir) {
    kvx_store *s = open_model(dir, "verify");
    char p[1024], why[KVX_ERROR_MAX];
    kvx_store_verify_report rep;
    kvx_store_stats st;
    scan_res sr;
    int ok;
    if (!s) return;
    put_all(s);
    kvx_store_block_path(s, &K[1], p, sizeof p);
    flip_data(p);
    kvx_store_block_path(s, &K[8], p, sizeof p);
    flip_header(p);
    memset(&sr, 0, sizeof sr);
    ok = kvx_store_scan(kvx_store_dir(s), 1, scan_cb, &sr, why, sizeof why) == KVX_OK;
    CHECK(ok && sr.blocks == 10 && sr.corrupt == 2, "scan with data check: %d blocks, %d corrupt (%s)",
          sr.blocks, sr.corrupt, sr.why);
    memset(&sr, 0, sizeof sr);
    ok = kvx_store_scan(kvx_store_dir(s), 0, scan_cb, &sr, why, sizeof why) == KVX_OK;
    CHECK(ok && sr.corrupt == 1, "scan without data check sees only the header damage (%d)", sr.corrupt);
    ok = kvx_store_verify(s, 0, &rep) == KVX_OK;
    CHECK(ok && rep.blocks == 10 && rep.ok == 8 && rep.bad == 2 && rep.removed == 0,
          "verify: %llu blocks, %llu ok, %llu bad", (unsigned long long)rep.blocks,
          (unsigned long long)rep.ok, (unsigned long long)rep.bad);
    ok = kvx_store_verify(s, 1, &rep) == KVX_OK;
    kvx_store_stats_get(s, &st);
    CHECK(ok && rep.bad == 2 && rep.removed == 2 && st.corrupt == 2 && st.blocks == 8,
          "verify with remove_bad removes 2, counts them, index keeps 8 (%llu)",
          (unsigned long long)st.blocks);
    ok = kvx_store_verify(s, 0, &rep) == KVX_OK;
    CHECK(ok && rep.blocks == 8 && rep.bad == 0, "then the store is clean");
    kvx_store_close(s);
}

/* Temporary files: never read as blocks; stale ones removed at open. */
static void test_temporaries(const char *dir) {
    kvx_store *s = open_model(dir, "tmp");
    char p[1024], stale[1100], fresh[1100], cmd[4600];
    struct timespec old[2];
    kvx_store_verify_report rep;
    int32_t dst = 30;
    size_t loaded = 9;
    int fd;
    if (!s) return;
    put_all(s);
    kvx_store_block_path(s, &K[2], p, sizeof p);
    snprintf(stale, sizeof stale, "%s.tmp.1-deadbeef.1", p);
    snprintf(fresh, sizeof fresh, "%s.tmp.1-deadbeef.2", p);
    snprintf(cmd, sizeof cmd, "cp '%s' '%s' && cp '%s' '%s'", p, stale, p, fresh);
    CHECK(system(cmd) == 0, "two temporary files beside a block");
    old[0].tv_sec = time(NULL) - 3600;
    old[0].tv_nsec = 0;
    old[1] = old[0];
    CHECK(utimensat(AT_FDCWD, stale, old, 0) == 0, "one an hour old");
    kvx_store_remove(s, &K[2]);
    CHECK(kvx_store_batch_exists(s, &K[2], 1) == 0 &&
          kvx_store_batch_get(s, &K[2], &dst, 1, &loaded) == KVX_OK && loaded == 0,
          "a key whose only file is a temporary is a miss");
    kvx_store_verify(s, 0, &rep);
    CHECK(rep.temporary == 2 && rep.blocks == 9, "verify counts 2 temporaries, 9 blocks");
    kvx_store_close(s);
    s = open_model(dir, "tmp");
    CHECK(access(stale, F_OK) != 0, "reopening removed the stale temporary");
    CHECK(access(fresh, F_OK) == 0, "and kept the fresh one (a write may be in flight)");
    fd = open(fresh, O_RDONLY);
    if (fd >= 0) close(fd);
    kvx_store_close(s);
}

/* A config.json naming another configuration makes open refuse. */
static void test_config_json(const char *dir) {
    kvx_store *s = open_model(dir, "cfg");
    char p[4400], why[KVX_ERROR_MAX];
    kvx_store_desc d;
    kvx_store *s2 = NULL;
    FILE *f;
    kvx_result r;
    if (!s) return;
    snprintf(p, sizeof p, "%s/config.json", kvx_store_dir(s));
    kvx_store_close(s);
    f = fopen(p, "w");
    if (f) {
        fputs("{\"format\": \"kvx-store\", \"config_hash\": \"0123456789abcdef\"}\n", f);
        fclose(f);
    }
    memset(&d, 0, sizeof d);
    d.dir = dir;
    d.model = "cfg";
    d.layout = pool.l;
    r = kvx_store_open(&d, &s2, why, sizeof why);
    CHECK(r == KVX_ERR_CORRUPT && s2 == NULL && strstr(why, "0123456789abcdef"),
          "open refuses a namespace whose config.json names another configuration: %s", why);
    f = fopen(p, "w");
    if (f) {
        fputs("{ not json", f);
        fclose(f);
    }
    r = kvx_store_open(&d, &s2, why, sizeof why);
    CHECK(r == KVX_OK, "an unreadable config.json is rewritten (%s)", kvx_result_str(r));
    kvx_store_close(s2);
}

int main(void) {
    char dir[256];
    st_log_init(&lg);
    st_pool_init(&pool, 4, 1024, 256, 64);
    st_scratch(dir, sizeof dir, "store_corrupt");
    test_damage(dir);
    test_foreign(dir);
    test_verify(dir);
    test_temporaries(dir);
    test_config_json(dir);
    st_rm_rf(dir);
    st_pool_free(&pool);
    return st_finish("test_store_corrupt");
}
