/* Block store: the data path's CRC32C (kvx__store_crc32c, VPCLMULQDQ folding
   where the CPU has it) equals kvx_crc32c for every length, alignment and
   starting value; the fold is in use on a CPU that has the instructions
   (so a broken fold that the self-check turned off fails here, not only
   slows down); and a block written and read through the store carries
   kvx_crc32c of its data (format version 1 unchanged), with one flipped
   data byte a miss. */
#define KVX_IMPLEMENTATION
#include "kvx_store.h"
#include "store_test.h"

static uint8_t buf[(1u << 20) + 128];

static void check_equal(void) {
    size_t i, bad = 0, n = 0;
    uint64_t x = 1;
    static const size_t lens[] = {0, 1, 7, 255, 256, 511, 512, 513, 767, 768, 1023, 1024, 4095,
                                  4096, 32768, 32769, 65536 + 200, 1u << 20};
    for (i = 0; i < sizeof buf; i++) buf[i] = (uint8_t)(x = st_mix(x));
    for (i = 0; i < sizeof lens / sizeof lens[0]; i++) {
        size_t off;
        for (off = 0; off < 65; off += 13) {
            uint32_t c0 = (uint32_t)st_mix(i * 100 + off);
            n++;
            if (kvx__store_crc32c(c0, buf + off, lens[i]) != kvx_crc32c(c0, buf + off, lens[i])) {
                bad++;
                printf("  mismatch: len %zu offset %zu\n", lens[i], off);
            }
        }
    }
    for (i = 0; i < 2000; i++) { /* random lengths and offsets */
        size_t off = (size_t)(st_mix(i) % 128), len = (size_t)(st_mix(i + 77777) % (sizeof buf - 128));
        uint32_t c0 = (uint32_t)st_mix(i * 3);
        n++;
        if (kvx__store_crc32c(c0, buf + off, len) != kvx_crc32c(c0, buf + off, len)) bad++;
    }
    CHECK(bad == 0, "kvx__store_crc32c equals kvx_crc32c on %zu (length, offset, start) cases", n);
    /* known answer: CRC32C("123456789") = 0xE3069283, and 512 bytes of 0xFF */
    memset(buf, 0xFF, 512);
    CHECK(kvx__store_crc32c(0, "123456789", 9) == 0xE3069283u &&
              kvx__store_crc32c(0, buf, 512) == kvx_crc32c(0, buf, 512),
          "known answers");
}

/* Each fold the CPU can run, called directly (the store picks one). */
static void check_folds(void) {
#ifdef KVX__STORE_VPCLMUL
    int has512, has256, i, bad512 = 0, bad256 = 0;
    kvx__store_crc32c(0, buf, 4096); /* runs the one-time init (constants, choice) */
    __builtin_cpu_init();
    has256 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("vpclmulqdq") &&
             __builtin_cpu_supports("pclmul");
    has512 = has256 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl");
    for (i = 0; i < 500; i++) {
        size_t off = (size_t)(st_mix(i + 5) % 64), len = 512 + (size_t)(st_mix(i + 9) % 300000);
        uint32_t c0 = (uint32_t)st_mix(i + 11), want = kvx_crc32c(c0, buf + off, len);
        if (has512 && kvx__store_crc_fold256(c0, buf + off, len) != want) bad512++;
        if (has256 && kvx__store_crc_fold256_avx2(c0, buf + off, len) != want) bad256++;
    }
    if (has512) CHECK(bad512 == 0, "AVX-512 fold equals kvx_crc32c on 500 cases");
    if (has256) CHECK(bad256 == 0, "AVX2 fold equals kvx_crc32c on 500 cases");
    if (has512 || has256)
        CHECK(kvx__store_crc_fold == (has512 ? 2 : 1), "the CPU has VPCLMULQDQ + %s: that fold "
              "passed its self-check and is in use (%d)", has512 ? "AVX-512" : "AVX2",
              kvx__store_crc_fold);
    else
        printf("note: this CPU has no VPCLMULQDQ: kvx_crc32c is used\n");
#else
    printf("note: not x86-64 gcc/clang: kvx_crc32c is used\n");
#endif
}

static void check_block(void) {
    st_pool pool;
    char dir[256], path[600];
    kvx_store_desc d;
    kvx_store *s = NULL;
    char why[KVX_ERROR_MAX];
    kvx_store_key key;
    int32_t src = 1, dst = 2;
    size_t got = 0;
    uint8_t *file = NULL;
    uint32_t hsz = 0, dcrc = 0;
    long sz = 0;
    FILE *f;
    st_scratch(dir, sizeof dir, "crc");
    st_pool_init(&pool, 3, 8192, 1000, 4); /* uneven buffers: spans of 8192, 9192, 10192 */
    st_fill(&pool, src, 42);
    memset(&d, 0, sizeof d);
    d.dir = dir;
    d.model = "crc";
    d.layout = pool.l;
    d.scan_interval = -1;
    why[0] = 0;
    kvx_store_open(&d, &s, why, sizeof why);
    CHECK(s != NULL, "open %s", why);
    if (!s) return;
    memset(&key, 0x5A, sizeof key);
    CHECK(kvx_store_batch_put(s, &key, &src, 1, NULL) == KVX_OK, "put one block");
    kvx_store_block_path(s, &key, path, sizeof path);
    f = fopen(path, "r+b");
    CHECK(f != NULL, "block file %s exists", path);
    if (f) {
        fseek(f, 0, SEEK_END);
        sz = ftell(f);
        rewind(f);
        file = (uint8_t *)malloc((size_t)sz);
        if (fread(file, 1, (size_t)sz, f) != (size_t)sz) sz = 0;
        memcpy(&hsz, file + 12, 4);
        memcpy(&dcrc, file + 80, 4);
        CHECK(sz > 0 && hsz < (uint32_t)sz &&
                  dcrc == kvx_crc32c(0, file + hsz, (size_t)sz - hsz),
              "the header's data_crc is kvx_crc32c of the data bytes (format unchanged)");
    }
    CHECK(kvx_store_batch_get(s, &key, &dst, 1, &got) == KVX_OK && got == 1 &&
              st_verify(&pool, dst, 42), "get loads the page intact");
    if (f && sz > 0) { /* flip one data byte in the middle: a miss */
        uint8_t c = file[hsz + 9000] ^ 0x01;
        fseek(f, (long)hsz + 9000, SEEK_SET);
        fwrite(&c, 1, 1, f);
        fflush(f);
        got = 7;
        kvx_store_batch_get(s, &key, &dst, 1, &got);
        CHECK(got == 0, "one flipped data byte: a miss (got %zu)", got);
    }
    if (f) fclose(f);
    free(file);
    kvx_store_close(s);
    st_pool_free(&pool);
    st_rm_rf(dir);
}

int main(void) {
    check_equal();
    check_folds();
    check_block();
    return st_finish("test_store_crc");
}
