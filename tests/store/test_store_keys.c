/* Block store keys equal SGLang HiCache's chained SHA-256 page keys, as
   computed independently by tests/store/hicache_keys.py (Python hashlib);
   and a block file is readable by the short Python reader
   tests/store/read_block.py. Skips (77) without python3. */
#define KVX_IMPLEMENTATION
#include "kvx_store.h"
#include "store_test.h"
#include <limits.h>

#define NTOK 87 /* 5 full pages of 16 and 7 tokens more */

static char script_dir[PATH_MAX];

/* tests/store relative to the working directory or to this binary */
static int find_scripts(void) {
    char exe[PATH_MAX], cand[PATH_MAX + 64];
    const char *ups[] = {"", "/..", "/../..", "/../../.."};
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    size_t i;
    if (!access("tests/store/hicache_keys.py", R_OK) && realpath("tests/store", script_dir)) return 0;
    if (n <= 0) return -1;
    exe[n] = 0;
    if (strrchr(exe, '/')) *strrchr(exe, '/') = 0;
    for (i = 0; i < sizeof ups / sizeof ups[0]; i++) {
        snprintf(cand, sizeof cand, "%s%s/tests/store/hicache_keys.py", exe, ups[i]);
        if (!access(cand, R_OK)) {
            *strrchr(cand, '/') = 0;
            return realpath(cand, script_dir) ? 0 : -1;
        }
    }
    return -1;
}

/* Runs hicache_keys.py and reads up to max keys (hex lines). */
static int py_keys(uint32_t page_size, const char *prior_hex, const uint32_t *tok, size_t n,
                   char (*out)[65], int max) {
    char *cmd = (char *)malloc(64 + PATH_MAX + n * 12 + 100);
    size_t len, i;
    FILE *f;
    int got = 0;
    char line[256];
    len = (size_t)sprintf(cmd, "python3 '%s/hicache_keys.py' --page-size %u", script_dir, page_size);
    if (prior_hex) len += (size_t)sprintf(cmd + len, " --prior %s", prior_hex);
    for (i = 0; i < n; i++) len += (size_t)sprintf(cmd + len, " %u", tok[i]);
    f = popen(cmd, "r");
    free(cmd);
    if (!f) return -1;
    while (got < max && fgets(line, sizeof line, f)) {
        if (strlen(line) < 64) continue;
        memcpy(out[got], line, 64);
        out[got][64] = 0;
        got++;
    }
    return pclose(f) == 0 ? got : -1;
}

static int same_keys(const kvx_store_key *k, char (*hex)[65], int n) {
    int i;
    for (i = 0; i < n; i++) {
        char h[65];
        kvx_store_key_hex(&k[i], h);
        if (strcmp(h, hex[i])) {
            printf("  page %d: kvx %s, python %s\n", i, h, hex[i]);
            return 0;
        }
    }
    return 1;
}

static void test_keys(void) {
    uint32_t tok[NTOK];
    kvx_store_key k[8], part[8];
    char py[8][65], hex[65];
    size_t n, i;
    int got;
    for (i = 0; i < NTOK; i++) tok[i] = (uint32_t)((i * 7919u + 13u) % 128256u);
    tok[3] = 4294967295u; /* unsigned: above INT32_MAX too */
    tok[20] = 2147483648u;
    tok[40] = 0;

    n = kvx_store_page_keys(tok, NTOK, 16, NULL, k, 8);
    CHECK(n == 5, "87 tokens, page 16: 5 keys (full pages only), got %zu", n);
    got = py_keys(16, NULL, tok, NTOK, py, 8);
    CHECK(got == 5 && same_keys(k, py, 5), "the 5 keys equal hashlib's (hicache_keys.py)");
    kvx_store_key_hex(&k[0], hex);
    printf("  first key: %s\n", hex);

    /* continuing a sequence with prior */
    n = kvx_store_page_keys(tok, 32, 16, NULL, part, 8);
    n += kvx_store_page_keys(tok + 32, NTOK - 32, 16, &part[1], part + 2, 6);
    CHECK(n == 5 && !memcmp(part, k, 5 * sizeof *k), "hashing in two parts with prior gives the same keys");
    kvx_store_key_hex(&k[1], hex);
    got = py_keys(16, hex, tok + 32, NTOK - 32, py, 8);
    CHECK(got == 3 && same_keys(k + 2, py, 3), "hicache_keys.py --prior agrees on pages 2..4");

    n = kvx_store_page_keys(tok, 5, 1, NULL, k, 8);
    got = py_keys(1, NULL, tok, 5, py, 8);
    CHECK(n == 5 && got == 5 && same_keys(k, py, 5), "page size 1: 5 keys equal");
    n = kvx_store_page_keys(tok, NTOK, 64, NULL, k, 8);
    got = py_keys(64, NULL, tok, NTOK, py, 8);
    CHECK(n == 1 && got == 1 && same_keys(k, py, 1), "page size 64: 1 key, equal");
    CHECK(kvx_store_page_keys(tok, 15, 16, NULL, k, 8) == 0, "15 tokens, page 16: no key");
    CHECK(kvx_store_page_keys(tok, NTOK, 16, NULL, k, 2) == 2, "max_keys bounds the count");
    CHECK(kvx_store_page_keys(tok, NTOK, 0, NULL, k, 8) == 0, "page size 0: no key");

    /* known answer without Python: one page of one token 0 = SHA-256 of 4 zero bytes */
    tok[0] = 0;
    kvx_store_page_keys(tok, 1, 1, NULL, k, 1);
    kvx_store_key_hex(&k[0], hex);
    CHECK(!strcmp(hex, "df3f619804a92fdb4057192dc43dd748ea778adc52bc498ce80524c014b81119"),
          "known answer: [0] -> SHA-256(00000000)");
}

static void test_python_reader(void) {
    char dir[256], path[1024], cmd[PATH_MAX + 1200], out[16384], hex[65], cfg[17];
    st_pool pool;
    kvx_store_desc d;
    kvx_store *s = NULL;
    kvx_store_key key;
    int32_t page = 2;
    FILE *f;
    size_t n;
    uint32_t tok[16];
    int i, rc;
    st_pool_init(&pool, 3, 256, 128, 4);
    st_scratch(dir, sizeof dir, "store_keys");
    memset(&d, 0, sizeof d);
    d.dir = dir;
    d.model = "python-reader";
    d.layout = pool.l;
    CHECK(kvx_store_open(&d, &s, NULL, 0) == KVX_OK, "open a store");
    if (!s) return;
    for (i = 0; i < 16; i++) tok[i] = (uint32_t)(1000 + i);
    kvx_store_page_keys(tok, 16, 16, NULL, &key, 1);
    st_fill(&pool, page, 99);
    kvx_store_batch_put(s, &key, &page, 1, NULL);
    kvx_store_block_path(s, &key, path, sizeof path);
    snprintf(cmd, sizeof cmd, "python3 '%s/read_block.py' '%s' --buffer 1", script_dir, path);
    f = popen(cmd, "r");
    n = f ? fread(out, 1, sizeof out - 1, f) : 0;
    rc = f ? pclose(f) : -1;
    out[n] = 0;
    kvx_store_key_hex(&key, hex);
    snprintf(cfg, sizeof cfg, "%016llx", (unsigned long long)kvx_store_config_hash(s));
    CHECK(rc == 0, "read_block.py reads the block and both CRC32C check (exit %d)", rc);
    CHECK(strstr(out, hex) && strstr(out, cfg) && strstr(out, "\"header_crc_ok\": true") &&
          strstr(out, "\"data_crc_ok\": true") && strstr(out, "\"item_len\": [256, 384, 512]"),
          "it reports the key, config hash, item lengths");
    {
        /* buffer 1's bytes as Python sees them equal the pool's */
        char *bh = strstr(out, "\"buffer_hex\": \"");
        int ok = bh != NULL;
        const uint8_t *src = (const uint8_t *)pool.bufs[1].base + page * pool.bufs[1].item_len;
        for (i = 0; ok && i < 384; i++) {
            unsigned v;
            if (sscanf(bh + 15 + 2 * i, "%2x", &v) != 1 || v != src[i]) ok = 0;
        }
        CHECK(ok, "buffer 1's bytes, read by Python at the documented offset, are the page's");
    }
    st_flip_byte(path, 200);
    f = popen(cmd, "r");
    n = f ? fread(out, 1, sizeof out - 1, f) : 0;
    rc = f ? pclose(f) : -1;
    CHECK(rc != 0, "after a flipped data byte read_block.py reports the block bad");
    kvx_store_close(s);
    st_rm_rf(dir);
    st_pool_free(&pool);
}

int main(void) {
    if (system("python3 -c 'import hashlib, json, struct' >/dev/null 2>&1") != 0) {
        printf("SKIP: python3 is not available to compute the reference keys\n");
        return 77;
    }
    if (find_scripts()) {
        CHECK(0, "find tests/store/hicache_keys.py (run from the repository root)");
        return st_finish("test_store_keys");
    }
    test_keys();
    test_python_reader();
    return st_finish("test_store_keys");
}
