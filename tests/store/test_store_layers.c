/* Block store: the layer-wise load (kvx_store_load_*). Every layer's bytes
   are checked against content generated again from the key, the moment
   wait_layer says the layer is there; layers waited for in order and out
   of order; MHA and MLA; blocks of format version 1 (written before
   per-buffer CRCs) in the same namespace; a corrupt layer region fails the
   load and its layer never becomes available; a missing key; a load ended
   before its layers were waited for (its pool is freed right after the
   end: a late write is a use-after-free under ASan); bad arguments. */
#define KVX_IMPLEMENTATION
#include "kvx_store.h"
#include "store_test.h"
#include <sys/resource.h>

#define NL 16            /* layers: 32 MHA buffers (K 0..15, V 16..31) */
#define NK 40            /* keys of a load */
#define POOL 100         /* sources 0..39, destinations 50..89 */

static st_pool pool;
static st_log lg;
static kvx_store_key K[NK];

static kvx_store *open_pool(const st_pool *p, const char *dir) {
    kvx_store_desc d;
    kvx_store *s = NULL;
    char why[KVX_ERROR_MAX];
    memset(&d, 0, sizeof d);
    d.dir = dir;
    d.model = "layers";
    d.layout = p->l;
    d.io_threads = 3;
    d.scan_interval = -1;
    d.logger.func = st_log_fn;
    d.logger.user_data = &lg;
    if (kvx_store_open(&d, &s, why, sizeof why) != KVX_OK) printf("  open failed: %s\n", why);
    return s;
}

/* Buffer b of page is st_fill's content for seed (as st_verify, one buffer). */
static int buf_ok(const st_pool *p, int32_t page, uint64_t seed, uint32_t b) {
    const uint8_t *d = (const uint8_t *)p->bufs[b].base + (uint64_t)page * p->bufs[b].item_len;
    uint64_t i, x = st_mix(seed * 1000003u + b);
    for (i = 0; i + 8 <= p->bufs[b].item_len; i += 8) {
        x = st_mix(x);
        if (memcmp(d + i, &x, 8)) return 0;
    }
    for (; i < p->bufs[b].item_len; i++)
        if (d[i] != (uint8_t)(seed + i)) return 0;
    return 1;
}

/* Layer l of every destination page holds its key's bytes (K and V, or the MLA buffer). */
static int layer_ok(const st_pool *p, const int32_t *dst, size_t n, uint32_t l) {
    size_t j;
    for (j = 0; j < n; j++) {
        uint64_t seed = st_seed(&K[j]);
        if (!buf_ok(p, dst[j], seed, l)) return 0;
        if (!p->l.mla && !buf_ok(p, dst[j], seed, p->l.num_buffers / 2 + l)) return 0;
    }
    return 1;
}

static void clear_pages(st_pool *p, const int32_t *dst, size_t n) {
    uint32_t b;
    size_t j;
    for (j = 0; j < n; j++)
        for (b = 0; b < p->l.num_buffers; b++)
            memset((uint8_t *)p->bufs[b].base + (uint64_t)dst[j] * p->bufs[b].item_len, 0xEE,
                   (size_t)p->bufs[b].item_len);
}

static void put_keys(kvx_store *s, st_pool *p, uint64_t family) {
    int32_t src[NK];
    int i;
    for (i = 0; i < NK; i++) {
        K[i] = st_key(family, (uint64_t)i);
        src[i] = i;
        st_fill(p, i, st_seed(&K[i]));
    }
    CHECK(kvx_store_batch_put(s, K, src, NK, NULL) == KVX_OK, "put %d blocks (family %llu)", NK,
          (unsigned long long)family);
}

/* Destinations 50.. in a scrambled order (not consecutive in the pool). */
static void dst_pages(int32_t *dst, size_t n) {
    size_t j;
    for (j = 0; j < n; j++) dst[j] = 50 + (int32_t)((j * 7) % n);
}

/* Waits for each layer in `order` and checks its bytes at once. */
static void load_and_check(kvx_store *s, st_pool *p, const uint32_t *order, uint32_t norder,
                           const char *what) {
    kvx_store_load *ld = NULL;
    int32_t dst[NK];
    uint32_t i, nl;
    size_t loaded = 0, j;
    int ok = 1, mono = 1, all = 1;
    kvx_result r;
    uint32_t seen = 0;
    dst_pages(dst, NK);
    clear_pages(p, dst, NK);
    r = kvx_store_load_begin(s, K, dst, NK, &ld);
    CHECK(r == KVX_OK && ld, "%s: begin (%s)", what, kvx_result_str(r));
    if (!ld) return;
    nl = kvx_store_load_num_layers(ld);
    CHECK(nl == (p->l.mla ? p->l.num_buffers : p->l.num_buffers / 2), "%s: %u layers", what, nl);
    for (i = 0; i < norder; i++) {
        uint32_t l = order[i], done;
        r = kvx_store_load_wait_layer(ld, l, -1);
        done = kvx_store_load_layers_done(ld);
        if (r != KVX_OK || done <= l) {
            printf("  wait_layer(%u): %s, layers_done %u\n", l, kvx_result_str(r), done);
            ok = 0;
        }
        if (done < seen) mono = 0;
        seen = done;
        /* the promise: once waited for, every byte of that layer (and of
           every layer before it) is in place */
        if (!layer_ok(p, dst, NK, l) || (l && !layer_ok(p, dst, NK, 0))) {
            printf("  layer %u (or 0) of some page differs from its key's content\n", l);
            ok = 0;
        }
    }
    CHECK(ok, "%s: every layer waited for is complete and byte-exact when wait_layer returns", what);
    CHECK(mono, "%s: layers_done never goes back", what);
    r = kvx_store_load_end(ld, &loaded);
    CHECK(r == KVX_OK && loaded == NK, "%s: end: %s, %zu of %d loaded", what, kvx_result_str(r),
          loaded, NK);
    for (j = 0; j < NK; j++) all &= st_verify(p, dst[j], st_seed(&K[j]));
    CHECK(all, "%s: every page byte-exact after end", what);
}

/* Rewrites key i's block as format version 1 (no buf_crc[]), as a kvx
   without the layer-wise load wrote it. */
static int to_version1(kvx_store *s, const kvx_store_key *k, uint32_t nb) {
    char path[4400];
    uint8_t h[8192];
    uint32_t hsz, c;
    static const uint8_t zero[4] = {0, 0, 0, 0};
    int fd;
    kvx_store_block_path(s, k, path, sizeof path);
    fd = open(path, O_RDWR);
    if (fd < 0 || pread(fd, h, 96, 0) != 96) return -1;
    hsz = kvx__le_r32(h + 12);
    if (hsz > sizeof h || pread(fd, h, hsz, 0) != (ssize_t)hsz || kvx__le_r32(h + 8) != 2) {
        close(fd);
        return -1;
    }
    kvx__le_w32(h + 8, 1);
    memset(h + 96 + 8 * nb, 0, 4 * nb);
    c = kvx_crc32c(0, h, 16);
    c = kvx_crc32c(c, zero, 4);
    c = kvx_crc32c(c, h + 20, hsz - 20);
    kvx__le_w32(h + 16, c);
    c = pwrite(fd, h, hsz, 0) == (ssize_t)hsz;
    close(fd);
    return c ? 0 : -1;
}

/* Changes buf_crc[b] in key k's block header (header CRC recomputed): the
   data and its whole CRC stay right, only the per-buffer CRC is wrong. */
static int bad_buf_crc(kvx_store *s, const kvx_store_key *k, uint32_t nb, uint32_t b) {
    char path[4400];
    uint8_t h[8192];
    uint32_t hsz, c;
    static const uint8_t zero[4] = {0, 0, 0, 0};
    int fd;
    kvx_store_block_path(s, k, path, sizeof path);
    fd = open(path, O_RDWR);
    if (fd < 0 || pread(fd, h, 96, 0) != 96) return -1;
    hsz = kvx__le_r32(h + 12);
    if (hsz > sizeof h || pread(fd, h, hsz, 0) != (ssize_t)hsz) {
        close(fd);
        return -1;
    }
    kvx__le_w32(h + 96 + 8 * nb + 4 * b, kvx__le_r32(h + 96 + 8 * nb + 4 * b) ^ 1);
    c = kvx_crc32c(0, h, 16);
    c = kvx_crc32c(c, zero, 4);
    c = kvx_crc32c(c, h + 20, hsz - 20);
    kvx__le_w32(h + 16, c);
    c = pwrite(fd, h, hsz, 0) == (ssize_t)hsz;
    close(fd);
    return c ? 0 : -1;
}

static void test_bad_buf_crc(kvx_store *s, st_pool *p) {
    kvx_store_load *ld = NULL;
    kvx_store_verify_report rep;
    kvx_store_stats a, b;
    int32_t dst[NK];
    size_t loaded = 0;
    kvx_result r, rv;
    put_keys(s, p, 500);
    CHECK(bad_buf_crc(s, &K[9], 2 * NL, 3) == 0, "key 9's buf_crc[3] made wrong (data intact)");
    rv = kvx_store_verify(s, 0, &rep);
    CHECK(rv == KVX_OK && rep.bad == 1 && strstr(lg.last, "buffer 3's CRC32C mismatch"),
          "verify finds the wrong buffer CRC (%llu bad): %s", (unsigned long long)rep.bad, lg.last);
    kvx_store_stats_get(s, &a);
    dst_pages(dst, NK);
    if (kvx_store_load_begin(s, K, dst, NK, &ld) != KVX_OK) { CHECK(0, "bad buf_crc: begin"); return; }
    r = kvx_store_load_wait_layer(ld, NL - 1, -1);
    CHECK(r == KVX_ERR_CORRUPT && kvx_store_load_layers_done(ld) <= 3,
          "bad buf_crc: the load fails (%s) before layer 3: %s", kvx_result_str(r),
          kvx_store_load_error(ld));
    kvx_store_load_end(ld, &loaded);
    kvx_store_stats_get(s, &b);
    CHECK(b.corrupt == a.corrupt + 1 && kvx_store_batch_exists(s, K + 9, 1) == 0,
          "bad buf_crc: the re-read proves it (counted as corrupt, taken away)");
}

/* Byte offset in key i's block file of buffer b's first data byte. */
static off_t buf_offset(kvx_store *s, const st_pool *p, uint32_t b) {
    off_t o = (off_t)(kvx_store_block_bytes(s) - kvx_layout_page_bytes(&p->l));
    uint32_t i;
    for (i = 0; i < b; i++) o += (off_t)p->bufs[i].item_len;
    return o;
}

static void test_format(kvx_store *s, const char *script_dir) {
    char path[4400], cmd[8192];
    uint8_t h[96];
    int fd, rc;
    kvx_store_verify_report rep;
    kvx_store_block_path(s, &K[3], path, sizeof path);
    fd = open(path, O_RDONLY);
    CHECK(fd >= 0 && pread(fd, h, 96, 0) == 96 && kvx__le_r32(h + 8) == 2,
          "a block of pages >= 64 KiB is written in format version 2");
    if (fd >= 0) close(fd);
    rc = kvx_store_verify(s, 0, &rep);
    CHECK(rc == KVX_OK && rep.ok == NK && rep.bad == 0,
          "verify: %llu of %d blocks ok (whole and per-buffer CRC32C)",
          (unsigned long long)rep.ok, NK);
    if (system("python3 -c 1 >/dev/null 2>&1") != 0) {
        printf("  (python3 missing: read_block.py cross-check not run)\n");
        return;
    }
    snprintf(cmd, sizeof cmd, "python3 '%s/read_block.py' '%s' > /dev/null", script_dir, path);
    rc = system(cmd);
    CHECK(rc == 0, "read_block.py (standard library CRC32C) agrees with every buffer's CRC and "
          "the whole data's (exit %d)", rc);
}

static void test_corrupt(kvx_store *s, st_pool *p, uint32_t layer, int v_buffer) {
    char path[4400];
    kvx_store_load *ld = NULL;
    kvx_store_stats a, b;
    int32_t dst[NK];
    size_t loaded = 99, j;
    uint32_t buf = v_buffer ? NL + layer : layer, done;
    int i = 17, all = 1;
    kvx_result r, r2;
    const char *e;
    put_keys(s, p, 100 + layer);
    kvx_store_block_path(s, &K[i], path, sizeof path);
    CHECK(st_flip_byte(path, buf_offset(s, p, buf) + 100) == 0,
          "flip a byte of layer %u's %s buffer (%u) in key %d's block", layer,
          v_buffer ? "V" : "K", buf, i);
    kvx_store_stats_get(s, &a);
    dst_pages(dst, NK);
    clear_pages(p, dst, NK);
    r = kvx_store_load_begin(s, K, dst, NK, &ld);
    CHECK(r == KVX_OK, "corrupt layer %u: begin", layer);
    if (!ld) return;
    r = kvx_store_load_wait_layer(ld, NL - 1, -1);
    done = kvx_store_load_layers_done(ld);
    e = kvx_store_load_error(ld);
    CHECK(r == KVX_ERR_CORRUPT, "corrupt layer %u: waiting for the last layer fails with "
          "KVX_ERR_CORRUPT (%s): %s", layer, kvx_result_str(r), e);
    CHECK(done <= layer, "corrupt layer %u: never available (layers_done %u)", layer, done);
    r2 = kvx_store_load_wait_layer(ld, layer, 0);
    CHECK(r2 == KVX_ERR_CORRUPT, "corrupt layer %u: wait_layer(%u) says KVX_ERR_CORRUPT too (%s)",
          layer, layer, kvx_result_str(r2));
    CHECK(strstr(e, "CRC32C") != NULL && strstr(e, ".kvb") != NULL,
          "corrupt layer %u: the sentence names the block and the CRC", layer);
    r = kvx_store_load_end(ld, &loaded);
    CHECK(r == KVX_ERR_CORRUPT && loaded <= (size_t)i, "corrupt layer %u: end says %s, %zu loaded "
          "(<= %d)", layer, kvx_result_str(r), loaded, i);
    for (j = 0; j < loaded; j++) all &= st_verify(p, dst[j], st_seed(&K[j]));
    CHECK(all, "corrupt layer %u: the %zu pages reported loaded are byte-exact", layer, loaded);
    kvx_store_stats_get(s, &b);
    CHECK(b.corrupt == a.corrupt + 1, "corrupt layer %u: counted as corrupt", layer);
    CHECK(kvx_store_batch_exists(s, K + i, 1) == 0, "corrupt layer %u: the block was taken away",
          layer);
}

static void test_missing(kvx_store *s, st_pool *p) {
    kvx_store_load *ld = NULL;
    int32_t dst[NK];
    size_t loaded = 99;
    kvx_result r;
    put_keys(s, p, 300);
    CHECK(kvx_store_remove(s, &K[7]) == KVX_OK, "remove key 7's block");
    dst_pages(dst, NK);
    r = kvx_store_load_begin(s, K, dst, NK, &ld);
    CHECK(r == KVX_OK, "missing key: begin");
    if (!ld) return;
    r = kvx_store_load_wait_layer(ld, 0, -1);
    CHECK(r == KVX_ERR_NOT_FOUND && strstr(kvx_store_load_error(ld), "is not stored"),
          "missing key: wait_layer(0) fails with KVX_ERR_NOT_FOUND (%s): %s", kvx_result_str(r),
          kvx_store_load_error(ld));
    CHECK(kvx_store_load_layers_done(ld) == 0, "missing key: no layer available");
    r = kvx_store_load_end(ld, &loaded);
    CHECK(r == KVX_ERR_NOT_FOUND && loaded <= 7, "missing key: end says %s, %zu loaded (<= 7)",
          kvx_result_str(r), loaded);
}

/* Ends loads early, after waiting for layer `upto` (-1: none). The pool is
   freed right after each end: a write by the load after end returned is a
   heap-use-after-free under ASan (and a race under TSan). */
static void test_early_end(const char *dir) {
    int it, bad = 0, aborted = 0;
    for (it = 0; it < 24; it++) {
        st_pool q;
        kvx_store *s;
        kvx_store_load *ld = NULL;
        int32_t dst[NK];
        size_t loaded = 0, j;
        int upto = it % 6 - 1;
        kvx_result r;
        st_pool_init(&q, 2 * NL, 4096, 32, POOL);
        s = open_pool(&q, dir);
        if (!s) { bad++; st_pool_free(&q); continue; }
        if (it == 0) put_keys(s, &q, 1); /* family 1 is stored in dir (the first test) */
        else for (j = 0; j < NK; j++) K[j] = st_key(1, (uint64_t)j);
        dst_pages(dst, NK);
        r = kvx_store_load_begin(s, K, dst, NK, &ld);
        if (r != KVX_OK) bad++;
        if (ld && upto >= 0 && kvx_store_load_wait_layer(ld, (uint32_t)upto, -1) != KVX_OK) bad++;
        r = kvx_store_load_end(ld, &loaded);
        if (r == KVX_ERR_ABORTED) aborted++;
        else if (r != KVX_OK || loaded != NK) bad++;
        for (j = 0; j < loaded; j++)
            if (!st_verify(&q, dst[j], st_seed(&K[j]))) bad++;
        st_pool_free(&q); /* nothing may write here any more */
        kvx_store_close(s);
    }
    CHECK(!bad, "24 loads ended early (after none or some layers): end returns KVX_OK or "
          "KVX_ERR_ABORTED and the pages it reports loaded are byte-exact (%d aborted)", aborted);
}

/* A load that cannot progress (the test holds the store's pool mutex, which
   the load's thread needs to start its I/O): wait_layer times out, then
   succeeds once the mutex is released. */
static void test_timeout(kvx_store *s, st_pool *p) {
    kvx_store_load *ld = NULL;
    int32_t dst[NK];
    size_t loaded = 0;
    kvx_result r0, r1, r2;
    uint64_t t0;
    uint32_t done;
    put_keys(s, p, 400);
    dst_pages(dst, NK);
    pthread_mutex_lock(&s->pool_mu);
    if (kvx_store_load_begin(s, K, dst, NK, &ld) != KVX_OK) {
        pthread_mutex_unlock(&s->pool_mu);
        CHECK(0, "timeout: begin");
        return;
    }
    r0 = kvx_store_load_wait_layer(ld, 0, 0);
    t0 = kvx_now_ns();
    r1 = kvx_store_load_wait_layer(ld, 0, 50);
    t0 = kvx_now_ns() - t0;
    done = kvx_store_load_layers_done(ld);
    pthread_mutex_unlock(&s->pool_mu);
    CHECK(r0 == KVX_ERR_TIMEOUT && r1 == KVX_ERR_TIMEOUT && done == 0,
          "timeout: a stalled load: wait_layer(0, 0) and (0, 50 ms) say KVX_ERR_TIMEOUT (%s, %s), "
          "no layer done", kvx_result_str(r0), kvx_result_str(r1));
    CHECK(t0 >= 50000000ull, "timeout: the 50 ms wait lasted %.1f ms", (double)t0 / 1e6);
    CHECK(!kvx_store_load_error(ld)[0], "timeout: a timeout does not fail the load");
    r2 = kvx_store_load_wait_layer(ld, NL - 1, -1);
    r0 = kvx_store_load_end(ld, &loaded);
    CHECK(r2 == KVX_OK && r0 == KVX_OK && loaded == NK,
          "timeout: once released the load completes (%s, end %s, %zu loaded)",
          kvx_result_str(r2), kvx_result_str(r0), loaded);
}

static void test_args(kvx_store *s) {
    kvx_store_load *ld = (kvx_store_load *)&lg;
    int32_t dst[2] = {50, 51}, out[2] = {50, 100000}, dup[2] = {50, 50};
    size_t loaded = 5;
    kvx_result r;
    CHECK(kvx_store_load_begin(NULL, K, dst, 2, &ld) == KVX_ERR_INVALID_ARGUMENT && !ld,
          "begin: NULL store refused, *out NULL");
    CHECK(kvx_store_load_begin(s, K, dst, 2, NULL) == KVX_ERR_INVALID_ARGUMENT &&
          strstr(lg.last, "out is NULL"), "begin: NULL out refused: %s", lg.last);
    CHECK(kvx_store_load_begin(s, NULL, dst, 2, &ld) == KVX_ERR_INVALID_ARGUMENT &&
          strstr(lg.last, "keys is NULL"), "begin: NULL keys refused: %s", lg.last);
    CHECK(kvx_store_load_begin(s, K, NULL, 2, &ld) == KVX_ERR_INVALID_ARGUMENT &&
          strstr(lg.last, "dst_pages is NULL"), "begin: NULL pages refused: %s", lg.last);
    CHECK(kvx_store_load_begin(s, K, out, 2, &ld) == KVX_ERR_OUT_OF_RANGE && !ld &&
          strstr(lg.last, "100000"), "begin: a page outside the pool refused: %s", lg.last);
    CHECK(kvx_store_load_begin(s, K, dup, 2, &ld) == KVX_ERR_DUPLICATE && !ld,
          "begin: a destination page twice refused: %s", lg.last);
    r = kvx_store_load_begin(s, K, dst, 0, &ld);
    CHECK(r == KVX_OK && ld && kvx_store_load_layers_done(ld) == NL &&
          kvx_store_load_wait_layer(ld, NL - 1, 0) == KVX_OK,
          "begin of 0 keys: every layer available at once");
    if (ld) {
        r = kvx_store_load_wait_layer(ld, NL, -1);
        CHECK(r == KVX_ERR_OUT_OF_RANGE && strstr(kvx_store_load_call_error(ld), "layer 16 is out of range"),
              "wait_layer(%d) refused: %s", NL, kvx_store_load_call_error(ld));
        CHECK(!kvx_store_load_error(ld)[0], "a refused call does not fail the load");
        CHECK(kvx_store_load_end(ld, &loaded) == KVX_OK && loaded == 0, "end of 0 keys");
    }
    CHECK(kvx_store_load_wait_layer(NULL, 0, 0) == KVX_ERR_INVALID_ARGUMENT &&
          kvx_store_load_end(NULL, &loaded) == KVX_ERR_INVALID_ARGUMENT && loaded == 0 &&
          kvx_store_load_layers_done(NULL) == 0 && kvx_store_load_num_layers(NULL) == 0 &&
          !kvx_store_load_error(NULL)[0], "NULL load refused by every call");
}

static void test_odd_mha(const char *dir) {
    st_pool q;
    kvx_store *s;
    kvx_store_load *ld = NULL;
    int32_t dst[1] = {0};
    st_pool_init(&q, 3, 4096, 0, 4);
    s = open_pool(&q, dir);
    if (!s) { CHECK(0, "open an odd-buffer store"); st_pool_free(&q); return; }
    CHECK(kvx_store_load_begin(s, K, dst, 1, &ld) == KVX_ERR_INVALID_ARGUMENT && !ld &&
          strstr(lg.last, "odd count"), "an MHA layout of 3 buffers has no layers: %s", lg.last);
    kvx_store_close(s);
    st_pool_free(&q);
}

int main(int argc, char **argv) {
    char dir[256], dir2[256], dir3[256], script_dir[1024];
    kvx_store *s;
    uint32_t order[NL], i, out_of_order[5] = {NL - 1, 0, NL / 2, 3, NL - 1};
    const char *slash = strrchr(__FILE__, '/');
    (void)argc;
    (void)argv;
    snprintf(script_dir, sizeof script_dir, "%.*s", slash ? (int)(slash - __FILE__) : 1,
             slash ? __FILE__ : ".");
    st_log_init(&lg);
    st_scratch(dir, sizeof dir, "layers");
    st_scratch(dir2, sizeof dir2, "layers_mla");
    st_scratch(dir3, sizeof dir3, "layers_v1");
    /* 16 layers x K, V of 4 KiB + a little (lengths differ per buffer) */
    st_pool_init(&pool, 2 * NL, 4096, 32, POOL);
    s = open_pool(&pool, dir);
    if (!s) return st_finish("test_store_layers");
    put_keys(s, &pool, 1);
    test_format(s, script_dir);
    for (i = 0; i < NL; i++) order[i] = i;
    load_and_check(s, &pool, order, NL, "MHA, layers in order");
    load_and_check(s, &pool, out_of_order, 5, "MHA, layers out of order");
    {
        /* a quarter of RLIMIT_NOFILE below the key count: each group opens
           the block again (and checks it is the file group 0 read) */
        struct rlimit rl, low;
        if (!getrlimit(RLIMIT_NOFILE, &rl)) {
            low = rl;
            low.rlim_cur = 4 * NK - 4;
            if (setrlimit(RLIMIT_NOFILE, &low) == 0) {
                load_and_check(s, &pool, order, NL, "MHA, blocks opened again per group");
                setrlimit(RLIMIT_NOFILE, &rl);
            } else {
                CHECK(0, "lower RLIMIT_NOFILE to %d: %s", 4 * NK - 4, strerror(errno));
            }
        }
    }
    {
        /* blocks written as format version 1 in the same namespace: read
           and verified whole, then their layers count */
        int ok = 1;
        for (i = 0; i < NK; i += 3) ok &= to_version1(s, &K[i], 2 * NL) == 0;
        CHECK(ok, "every third block rewritten as format version 1");
        load_and_check(s, &pool, order, NL, "MHA, version 1 and 2 blocks mixed");
    }
    test_corrupt(s, &pool, 0, 0);
    test_corrupt(s, &pool, 5, 1);
    test_corrupt(s, &pool, NL - 1, 1);
    test_missing(s, &pool);
    test_bad_buf_crc(s, &pool);
    test_timeout(s, &pool);
    test_args(s);
    kvx_store_close(s);
    test_early_end(dir);
    test_odd_mha(dir3);
    {
        st_pool m;
        kvx_store *sm;
        st_pool_init(&m, 8, 16384, 64, POOL);
        m.l.mla = 1;
        m.l.num_kv_heads = 1;
        sm = open_pool(&m, dir2);
        if (sm) {
            put_keys(sm, &m, 2);
            load_and_check(sm, &m, order, 8, "MLA (8 layers), in order");
            kvx_store_close(sm);
        }
        st_pool_free(&m);
    }
    {
        /* pages under 64 KiB: format version 1 only (no room for buf_crc[]) */
        st_pool v;
        kvx_store *sv;
        st_pool_init(&v, 8, 1024, 8, POOL);
        sv = open_pool(&v, dir3);
        if (sv) {
            put_keys(sv, &v, 3);
            load_and_check(sv, &v, order, 4, "small pages (version 1 blocks)");
            kvx_store_close(sv);
        }
        st_pool_free(&v);
    }
    st_pool_free(&pool);
    st_rm_rf(dir);
    st_rm_rf(dir2);
    st_rm_rf(dir3);
    return st_finish("test_store_layers");
}
