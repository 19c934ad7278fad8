/* Block store: put / get / exists / remove round trips with byte checks,
   the on-disk layout and header, settings and environment, bad arguments,
   concurrent callers, scan and verify. */
#define KVX_IMPLEMENTATION
#include "kvx_store.h"
#include "store_test.h"

static st_pool pool;

static kvx_store *open_store(const char *dir, int io_threads, int do_fsync, st_log *lg) {
    kvx_store_desc d;
    kvx_store *s = NULL;
    char why[KVX_ERROR_MAX];
    kvx_result r;
    memset(&d, 0, sizeof d);
    d.dir = dir;
    d.model = "test/model-A";
    d.layout = pool.l;
    d.io_threads = io_threads;
    d.fsync = do_fsync;
    if (lg) {
        d.logger.func = st_log_fn;
        d.logger.user_data = lg;
    }
    r = kvx_store_open(&d, &s, why, sizeof why);
    if (r != KVX_OK) printf("  open failed: %s: %s\n", kvx_result_str(r), why);
    return s;
}

static void test_round_trip(const char *dir) {
    kvx_store *s = open_store(dir, 4, 0, NULL);
    kvx_store_key keys[8], mixed[8];
    int32_t src[8], dst[8];
    kvx_result res[8];
    kvx_store_stats st;
    size_t i, loaded = 99;
    kvx_result r;
    int ok;
    CHECK(s != NULL, "open a store");
    if (!s) return;
    for (i = 0; i < 8; i++) {
        keys[i] = st_key(1, i);
        src[i] = (int32_t)(3 * i + 1); /* scattered source pages */
        dst[i] = (int32_t)(40 + 2 * i);
        st_fill(&pool, src[i], st_seed(&keys[i]));
        res[i] = KVX_ERR_IO;
    }
    CHECK(kvx_store_batch_exists(s, keys, 8) == 0, "exists is 0 before any put");
    CHECK(kvx_store_batch_put(s, keys, src, 8, res) == KVX_OK, "put 8 pages");
    for (ok = 1, i = 0; i < 8; i++) ok &= res[i] == KVX_OK;
    CHECK(ok, "every per-key result is KVX_OK");
    CHECK(kvx_store_batch_exists(s, keys, 8) == 8, "exists: 8 consecutive hits");
    memcpy(mixed, keys, sizeof keys);
    mixed[3] = st_key(99, 3);
    CHECK(kvx_store_batch_exists(s, mixed, 8) == 3, "exists stops at the first miss (3)");
    r = kvx_store_batch_get(s, keys, dst, 8, &loaded);
    CHECK(r == KVX_OK && loaded == 8, "get 8: loaded %zu", loaded);
    for (ok = 1, i = 0; i < 8; i++) ok &= st_verify(&pool, dst[i], st_seed(&keys[i]));
    CHECK(ok, "every byte of the 8 loaded pages is right");
    CHECK(st_page_is(&pool, 41, 0xEE) && st_page_is(&pool, 55, 0xEE),
          "pages between and after the destinations are untouched");

    /* a get whose 6th key is missing loads exactly the first 5 */
    for (i = 0; i < 8; i++) dst[i] = (int32_t)(60 + i);
    memcpy(mixed, keys, sizeof keys);
    mixed[5] = st_key(99, 5);
    r = kvx_store_batch_get(s, mixed, dst, 8, &loaded);
    CHECK(r == KVX_OK && loaded == 5, "get with a missing 6th key loads the prefix: %zu", loaded);
    for (ok = 1, i = 0; i < 5; i++) ok &= st_verify(&pool, dst[i], st_seed(&keys[i]));
    CHECK(ok, "the 5 prefix pages are right");

    /* putting present keys does not rewrite them */
    kvx_store_stats_get(s, &st);
    CHECK(st.puts == 8 && st.put_present == 0, "stats: 8 puts (%llu)", (unsigned long long)st.puts);
    CHECK(kvx_store_batch_put(s, keys, src, 8, NULL) == KVX_OK, "put the same keys again");
    kvx_store_stats_get(s, &st);
    CHECK(st.puts == 8 && st.put_present == 8, "present blocks are only touched (puts %llu, present %llu)",
          (unsigned long long)st.puts, (unsigned long long)st.put_present);
    CHECK(st.hits == 13 && st.misses == 1, "stats: 13 hits, 1 miss (%llu, %llu)",
          (unsigned long long)st.hits, (unsigned long long)st.misses);
    CHECK(st.blocks == 8 && st.bytes_used == 8 * kvx_store_block_bytes(s),
          "index: 8 blocks, %llu bytes", (unsigned long long)st.bytes_used);
    /* keys after a miss may already be in flight on other threads: read, not reported */
    CHECK(st.bytes_written == 8 * kvx_store_block_bytes(s) &&
          st.bytes_read >= 13 * kvx_store_block_bytes(s) &&
          st.bytes_read <= 15 * kvx_store_block_bytes(s), "bytes written / read counted (%llu read)",
          (unsigned long long)st.bytes_read);

    /* remove */
    CHECK(kvx_store_remove(s, &keys[2]) == KVX_OK, "remove key 2");
    CHECK(kvx_store_remove(s, &keys[2]) == KVX_ERR_NOT_FOUND, "remove it again: KVX_ERR_NOT_FOUND");
    CHECK(kvx_store_batch_exists(s, keys, 8) == 2, "exists after remove: 2");
    kvx_store_stats_get(s, &st);
    CHECK(st.blocks == 7, "index forgot it (%llu blocks)", (unsigned long long)st.blocks);

    /* bad arguments */
    src[0] = (int32_t)pool.pages;
    CHECK(kvx_store_batch_put(s, keys, src, 8, NULL) == KVX_ERR_OUT_OF_RANGE, "put: page outside the pool");
    src[0] = -1;
    CHECK(kvx_store_batch_put(s, keys, src, 8, NULL) == KVX_ERR_OUT_OF_RANGE, "put: negative page");
    dst[1] = dst[0];
    CHECK(kvx_store_batch_get(s, keys, dst, 8, &loaded) == KVX_ERR_DUPLICATE && loaded == 0,
          "get: a destination page twice is KVX_ERR_DUPLICATE, nothing loaded");
    CHECK(kvx_store_batch_get(s, keys, dst, 8, NULL) == KVX_ERR_INVALID_ARGUMENT, "get: loaded NULL");
    CHECK(kvx_store_batch_put(s, NULL, src, 8, NULL) == KVX_ERR_INVALID_ARGUMENT, "put: keys NULL");
    CHECK(kvx_store_batch_put(s, keys, src, 0, NULL) == KVX_OK, "put of 0 keys");
    CHECK(kvx_store_batch_exists(s, NULL, 3) == 0 && kvx_store_batch_exists(NULL, keys, 3) == 0,
          "exists with NULL is 0");
    CHECK(kvx_store_remove(NULL, &keys[0]) == KVX_ERR_INVALID_ARGUMENT, "remove on NULL store");
    kvx_store_close(s);
    kvx_store_close(NULL);
}

static void test_on_disk(const char *dir) {
    kvx_store *s = open_store(dir, 2, 0, NULL);
    kvx_store_key k = st_key(2, 0);
    int32_t page = 7;
    char path[4096], hex[65], expect[4400];
    uint8_t *buf;
    struct stat sb;
    kvx_store_block_info info;
    char why[KVX_ERROR_MAX];
    uint32_t b, crc = 0;
    int fd, ok;
    CHECK(s != NULL, "open for the on-disk checks");
    if (!s) return;
    st_fill(&pool, page, 4242);
    CHECK(kvx_store_batch_put(s, &k, &page, 1, NULL) == KVX_OK, "put one page");
    kvx_store_block_path(s, &k, path, sizeof path);
    kvx_store_key_hex(&k, hex);
    snprintf(expect, sizeof expect, "%s/%016llx/%.2s/%s.kvb", dir,
             (unsigned long long)kvx_store_config_hash(s), hex, hex);
    CHECK(!strcmp(path, expect), "block path is <dir>/<config-hash>/<k0k1>/<hex>.kvb");
    {
        int dirs = 0, i;
        for (i = 0; i < 256; i++) {
            char d[4500];
            struct stat ds;
            snprintf(d, sizeof d, "%s/%02x", kvx_store_dir(s), i);
            dirs += stat(d, &ds) == 0 && S_ISDIR(ds.st_mode);
        }
        CHECK(dirs == 256, "the namespace has its 256 fan-out directories (%d)", dirs);
    }
    CHECK(!strcmp(kvx_store_dir(s), (snprintf(expect, sizeof expect, "%s/%016llx", dir,
                                              (unsigned long long)kvx_store_config_hash(s)), expect)),
          "kvx_store_dir is the namespace");
    ok = stat(path, &sb) == 0;
    CHECK(ok && (uint64_t)sb.st_size == kvx_store_block_bytes(s),
          "file is exactly header + data (%lld bytes)", (long long)sb.st_size);
    buf = (uint8_t *)malloc((size_t)sb.st_size);
    fd = open(path, O_RDONLY);
    ok = fd >= 0 && read(fd, buf, (size_t)sb.st_size) == sb.st_size;
    if (fd >= 0) close(fd);
    CHECK(ok, "read the block file");
    CHECK(kvx_store_header_parse(buf, (size_t)sb.st_size, &info, why, sizeof why) == KVX_OK,
          "header parses");
    CHECK(!memcmp(buf, "KVXBLOCK", 8) && info.version == 1, "magic and version 1");
    CHECK(info.header_size % 8 == 0 && info.header_size >= 96 + 8 * pool.l.num_buffers,
          "header_size %u", info.header_size);
    CHECK(!memcmp(info.key.bytes, k.bytes, 32), "header holds the key");
    CHECK(info.config_hash == kvx_store_config_hash(s), "header holds the config hash");
    CHECK(info.page_count == 1 && info.num_buffers == pool.l.num_buffers && info.page_size == 16,
          "page_count 1, %u buffers, page_size 16", info.num_buffers);
    for (ok = 1, b = 0; b < pool.l.num_buffers; b++) {
        ok &= kvx_store_block_item_len(&info, b) == pool.bufs[b].item_len;
        crc = kvx_crc32c(crc, (uint8_t *)pool.bufs[b].base + page * pool.bufs[b].item_len,
                         (size_t)pool.bufs[b].item_len);
    }
    CHECK(ok && kvx_store_block_item_len(&info, info.num_buffers) == 0, "item_len[] match the layout");
    CHECK(info.data_len == kvx_layout_page_bytes(&pool.l), "data_len is one page");
    CHECK(info.data_crc == crc, "data_crc is the CRC32C of the page, buffer-major");
    for (ok = 1, b = 0; b < pool.l.num_buffers; b++) {
        uint64_t off = info.header_size, j;
        for (j = 0; j < b; j++) off += pool.bufs[j].item_len;
        ok &= !memcmp(buf + off, (uint8_t *)pool.bufs[b].base + page * pool.bufs[b].item_len,
                      (size_t)pool.bufs[b].item_len);
    }
    CHECK(ok, "data is buffer-major at header_size");
    CHECK(kvx_store_header_parse(buf, 50, &info, why, sizeof why) == KVX_ERR_CORRUPT,
          "a 50-byte header is refused: %s", why);
    ok = kvx_store_header_parse(buf, 100, &info, why, sizeof why) == KVX_ERR_CORRUPT;
    CHECK(ok && info.header_size > 100, "a short read reports the header size it needs (%u): %s",
          info.header_size, why);
    CHECK(kvx_store_header_parse(buf, 10, NULL, why, sizeof why) == KVX_ERR_INVALID_ARGUMENT,
          "parse with out NULL");
    free(buf);
    snprintf(expect, sizeof expect, "%s/config.json", kvx_store_dir(s));
    {
        char js[8192];
        ssize_t n;
        fd = open(expect, O_RDONLY);
        n = fd >= 0 ? read(fd, js, sizeof js - 1) : -1;
        if (fd >= 0) close(fd);
        if (n > 0) js[n] = 0;
        CHECK(n > 0 && strstr(js, "\"model\": \"test/model-A\"") && strstr(js, "\"tp_size\": 1"),
              "config.json describes the namespace");
    }
    kvx_store_close(s);
}

/* Big, odd item lengths: the data CRC (the store's 3-stream CRC32C) equals
   kvx_crc32c over the page, buffer-major; the scan's check agrees. */
static void test_crc_big(const char *dir) {
    st_pool big;
    kvx_store_desc d;
    kvx_store *s = NULL;
    kvx_store_key k = st_key(6, 6);
    kvx_store_verify_report rep;
    int32_t page = 1, dst = 2;
    char path[1024];
    uint8_t hdr[8192];
    kvx_store_block_info info;
    uint32_t b, crc = 0;
    size_t loaded = 0;
    int fd, ok;
    st_pool_init(&big, 5, 40003, 8191, 3); /* 40003 .. 72767 bytes, not multiples of 8 */
    memset(&d, 0, sizeof d);
    d.dir = dir;
    d.model = "crc";
    d.layout = big.l;
    if (kvx_store_open(&d, &s, NULL, 0) != KVX_OK) { CHECK(0, "open with big items"); return; }
    st_fill(&big, page, 31337);
    kvx_store_batch_put(s, &k, &page, 1, NULL);
    kvx_store_block_path(s, &k, path, sizeof path);
    fd = open(path, O_RDONLY);
    ok = fd >= 0 && read(fd, hdr, sizeof hdr) == (ssize_t)sizeof hdr;
    if (fd >= 0) close(fd);
    ok = ok && kvx_store_header_parse(hdr, sizeof hdr, &info, NULL, 0) == KVX_OK;
    for (b = 0; b < big.l.num_buffers; b++)
        crc = kvx_crc32c(crc, (uint8_t *)big.bufs[b].base + page * big.bufs[b].item_len,
                         (size_t)big.bufs[b].item_len);
    CHECK(ok && info.data_crc == crc && info.header_size == 4096,
          "big odd items: data_crc equals kvx_crc32c (%08x), header padded to 4096", crc);
    ok = kvx_store_batch_get(s, &k, &dst, 1, &loaded) == KVX_OK;
    CHECK(ok && loaded == 1 && st_verify(&big, dst, 31337), "big odd items: get verifies");
    ok = kvx_store_verify(s, 0, &rep) == KVX_OK;
    CHECK(ok && rep.ok == 1 && rep.bad == 0, "big odd items: verify (kvx_crc32c) agrees");
    kvx_store_close(s);
    st_pool_free(&big);
}

static void test_keys_hex(void) {
    kvx_store_key k = st_key(3, 3), k2;
    char hex[65];
    kvx_store_key_hex(&k, hex);
    CHECK(strlen(hex) == 64 && kvx_store_key_parse(hex, &k2) == 0 && !memcmp(k.bytes, k2.bytes, 32),
          "key hex round trip");
    hex[10] = 'g';
    CHECK(kvx_store_key_parse(hex, &k2) == -1, "a bad hex digit is refused");
    CHECK(kvx_store_key_parse("abcd", &k2) == -1, "a short key is refused");
}

static void test_settings(const char *dir) {
    kvx_store_desc d;
    kvx_store *s = NULL;
    char why[KVX_ERROR_MAX], other[512];
    kvx_buffer gpu[2];
    const kvx_store_desc *set;
    memset(&d, 0, sizeof d);
    d.dir = dir;
    d.layout = pool.l;
    CHECK(kvx_store_open(&d, &s, why, sizeof why) == KVX_OK, "open with defaults");
    set = kvx_store_settings(s);
    CHECK(set && set->capacity_bytes == (64ull << 30) && set->io_threads == 4 && set->fsync == 0 &&
          set->tp_size == 1 && !strcmp(set->model, ""), "defaults: 64 GiB, 4 threads, fsync 0, tp 1");
    kvx_store_close(s);

    snprintf(other, sizeof other, "%s/env", dir);
    setenv("KVX_STORE_DIR", other, 1);
    setenv("KVX_STORE_CAPACITY", "3M", 1);
    setenv("KVX_STORE_FSYNC", "1", 1);
    setenv("KVX_STORE_IO_THREADS", "2", 1);
    s = NULL;
    CHECK(kvx_store_open(&d, &s, why, sizeof why) == KVX_OK, "open with KVX_STORE_* set");
    set = kvx_store_settings(s);
    CHECK(set && !strcmp(set->dir, other) && set->capacity_bytes == (3u << 20) && set->fsync == 1 &&
          set->io_threads == 2, "environment overrides the desc");
    CHECK(s && !strncmp(kvx_store_dir(s), other, strlen(other)), "namespace under KVX_STORE_DIR");
    if (s) {
        kvx_store_key k[3];
        int32_t pg[3] = {1, 2, 3}, dst[3] = {20, 21, 22};
        size_t loaded = 0, i;
        int ok = 1;
        for (i = 0; i < 3; i++) { k[i] = st_key(4, i); st_fill(&pool, pg[i], i + 77); }
        CHECK(kvx_store_batch_put(s, k, pg, 3, NULL) == KVX_OK, "put with fsync=1");
        CHECK(kvx_store_batch_get(s, k, dst, 3, &loaded) == KVX_OK && loaded == 3, "get with fsync=1");
        for (i = 0; i < 3; i++) ok &= st_verify(&pool, dst[i], i + 77);
        CHECK(ok, "bytes right with fsync=1");
    }
    kvx_store_close(s);
    setenv("KVX_STORE_CAPACITY", "12 apples", 1);
    s = (kvx_store *)1;
    CHECK(kvx_store_open(&d, &s, why, sizeof why) == KVX_ERR_BAD_CONFIG && s == NULL &&
          strstr(why, "KVX_STORE_CAPACITY"), "a bad KVX_STORE_CAPACITY is refused: %s", why);
    setenv("KVX_STORE_CAPACITY", "unlimited", 1);
    setenv("KVX_STORE_FSYNC", "2", 1);
    CHECK(kvx_store_open(&d, &s, why, sizeof why) == KVX_ERR_BAD_CONFIG && strstr(why, "FSYNC"),
          "KVX_STORE_FSYNC=2 is refused: %s", why);
    setenv("KVX_STORE_FSYNC", "0", 1);
    CHECK(kvx_store_open(&d, &s, why, sizeof why) == KVX_OK &&
          kvx_store_settings(s)->capacity_bytes == KVX_STORE_UNLIMITED, "KVX_STORE_CAPACITY=unlimited");
    kvx_store_close(s);
    unsetenv("KVX_STORE_DIR");
    unsetenv("KVX_STORE_CAPACITY");
    unsetenv("KVX_STORE_FSYNC");
    unsetenv("KVX_STORE_IO_THREADS");

    memset(gpu, 0, sizeof gpu);
    gpu[0] = pool.bufs[0];
    gpu[1] = pool.bufs[1];
    gpu[1].mem = KVX_MEM_CUDA;
    d.layout.buffers = gpu;
    d.layout.num_buffers = 2;
    CHECK(kvx_store_open(&d, &s, why, sizeof why) == KVX_ERR_INVALID_ARGUMENT && strstr(why, "GPU"),
          "GPU memory is refused: %s", why);
    d.layout = pool.l;
    d.tp_size = 2;
    d.tp_rank = 2;
    CHECK(kvx_store_open(&d, &s, why, sizeof why) == KVX_ERR_INVALID_ARGUMENT, "tp_rank 2 of 2: %s", why);
    d.tp_rank = 0;
    d.layout.page_size = 0;
    CHECK(kvx_store_open(&d, &s, why, sizeof why) == KVX_ERR_INVALID_ARGUMENT, "bad layout: %s", why);
    CHECK(kvx_store_open(NULL, &s, why, sizeof why) == KVX_ERR_INVALID_ARGUMENT, "NULL desc");
}

/* ---- many keys, and several threads at once ---- */

typedef struct worker_arg {
    kvx_store *s;
    int id, rounds, ok;
} worker_arg;

static void *worker(void *p) {
    worker_arg *a = (worker_arg *)p;
    int r;
    a->ok = 1;
    for (r = 0; r < a->rounds; r++) {
        kvx_store_key k[4];
        int32_t src[4], dst[4];
        size_t i, loaded = 0;
        for (i = 0; i < 4; i++) {
            k[i] = st_key(100 + (uint64_t)a->id, (uint64_t)r * 4 + i);
            src[i] = (int32_t)(a->id * 8 + i);         /* pages 0..31: each thread its own */
            dst[i] = (int32_t)(a->id * 8 + 4 + i);
            st_fill(&pool, src[i], st_seed(&k[i]));
        }
        if (kvx_store_batch_put(a->s, k, src, 4, NULL) != KVX_OK) a->ok = 0;
        if (kvx_store_batch_exists(a->s, k, 4) != 4) a->ok = 0;
        if (kvx_store_batch_get(a->s, k, dst, 4, &loaded) != KVX_OK || loaded != 4) a->ok = 0;
        for (i = 0; i < 4; i++)
            if (!st_verify(&pool, dst[i], st_seed(&k[i]))) a->ok = 0;
        if (r % 3 == 2 && kvx_store_remove(a->s, &k[0]) != KVX_OK) a->ok = 0;
    }
    return NULL;
}

static void test_parallel(const char *dir) {
    kvx_store *s = open_store(dir, 3, 0, NULL);
    uint32_t n = st_quick() ? 48 : 160, i;
    kvx_store_key *keys = (kvx_store_key *)malloc(n * sizeof *keys);
    int32_t *src = (int32_t *)malloc(n * sizeof *src), *dst = (int32_t *)malloc(n * sizeof *dst);
    pthread_t th[4];
    worker_arg wa[4];
    kvx_store_verify_report rep;
    size_t loaded = 0;
    int ok = 1, t;
    CHECK(s != NULL, "open with 3 I/O threads");
    if (!s) return;
    for (i = 0; i < n; i++) {
        keys[i] = st_key(5, i);
        src[i] = (int32_t)(i % 32);
        dst[i] = (int32_t)(pool.pages - 1 - i);
    }
    /* a batch whose pages repeat: position i stores page i % 32 as it is now */
    for (i = 0; i < 32; i++) st_fill(&pool, (int32_t)i, 1000 + i);
    CHECK(kvx_store_batch_put(s, keys, src, n, NULL) == KVX_OK, "put a batch of %u keys", n);
    CHECK(kvx_store_batch_exists(s, keys, n) == n, "all %u exist", n);
    ok = kvx_store_batch_get(s, keys, dst, n, &loaded) == KVX_OK;
    CHECK(ok && loaded == n, "get %u: %zu", n, loaded);
    ok = 1;
    for (i = 0; i < n; i++) ok &= st_verify(&pool, dst[i], 1000 + i % 32);
    CHECK(ok, "all %u pages right", n);

    for (t = 0; t < 4; t++) {
        wa[t].s = s;
        wa[t].id = t;
        wa[t].rounds = st_quick() ? 6 : 20;
        pthread_create(&th[t], NULL, worker, &wa[t]);
    }
    for (ok = 1, t = 0; t < 4; t++) {
        pthread_join(th[t], NULL);
        ok &= wa[t].ok;
    }
    CHECK(ok, "4 threads put / exists / get / remove at once, bytes right");
    ok = kvx_store_verify(s, 0, &rep) == KVX_OK;
    CHECK(ok && rep.bad == 0 && rep.ok == rep.blocks &&
          rep.blocks > n && rep.temporary == 0,
          "verify: %llu blocks, %llu ok, %llu bad, %llu temporary", (unsigned long long)rep.blocks,
          (unsigned long long)rep.ok, (unsigned long long)rep.bad, (unsigned long long)rep.temporary);
    kvx_store_close(s);

    /* io_threads = 1: everything on the calling thread */
    s = open_store(dir, 1, 0, NULL);
    for (i = 0; i < 32; i++) dst[i] = (int32_t)(100 + i);
    CHECK(s && kvx_store_batch_get(s, keys, dst, 32, &loaded) == KVX_OK && loaded == 32,
          "io_threads 1: get 32 after reopening");
    for (ok = 1, i = 0; i < 32; i++) ok &= st_verify(&pool, dst[i], 1000 + i);
    CHECK(ok, "io_threads 1: bytes right");
    kvx_store_close(s);
    free(keys);
    free(src);
    free(dst);
}

typedef struct scan_count {
    int blocks, ok, with_info;
    uint64_t bytes;
} scan_count;

static int scan_cb(void *user, const kvx_store_entry *e) {
    scan_count *c = (scan_count *)user;
    c->blocks++;
    c->ok += e->status == KVX_OK;
    c->with_info += e->info != NULL && e->info->num_buffers >= 1;
    c->bytes += e->file_bytes;
    return 0;
}

static int scan_stop_cb(void *user, const kvx_store_entry *e) {
    (void)e;
    return ++*(int *)user >= 3;
}

static void test_scan(const char *dir) {
    scan_count c;
    char why[KVX_ERROR_MAX];
    kvx_store *s = open_store(dir, 2, 0, NULL);
    kvx_store_stats st;
    int stops = 0, ok;
    memset(&c, 0, sizeof c);
    kvx_store_stats_get(s, &st);
    ok = kvx_store_scan(dir, 1, scan_cb, &c, why, sizeof why) == KVX_OK;
    CHECK(ok, "scan the root");
    CHECK(c.blocks >= (int)st.blocks && c.ok == c.blocks && c.with_info == c.blocks,
          "scan of the root lists %d blocks, all intact", c.blocks);
    memset(&c, 0, sizeof c);
    ok = kvx_store_scan(kvx_store_dir(s), 0, scan_cb, &c, why, sizeof why) == KVX_OK;
    CHECK(ok && c.blocks == (int)st.blocks && c.bytes == st.bytes_used,
          "scan of one namespace lists its %d blocks (index says %llu)", c.blocks,
          (unsigned long long)st.blocks);
    CHECK(kvx_store_scan(dir, 0, scan_stop_cb, &stops, why, sizeof why) == KVX_OK && stops == 3,
          "a callback can stop the scan");
    CHECK(kvx_store_scan("/nonexistent/kvx", 0, scan_cb, &c, why, sizeof why) == KVX_ERR_NOT_FOUND,
          "scan of a missing directory: %s", why);
    kvx_store_close(s);
}

int main(void) {
    char dir[256];
    st_pool_init(&pool, 6, 512, 64, 256); /* 6 buffers of 512..832 bytes per page */
    st_scratch(dir, sizeof dir, "store_basic");
    test_round_trip(dir);
    test_on_disk(dir);
    test_keys_hex();
    test_crc_big(dir);
    test_settings(dir);
    test_parallel(dir);
    test_scan(dir);
    st_rm_rf(dir);
    st_pool_free(&pool);
    return st_finish("test_store_basic");
}
