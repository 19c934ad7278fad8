/* The cuda transport's endpoint (the bytes an engine puts in its kvx_boot
   hello), read with kvx_cuda_endpoint_check: blobs written here by hand from
   the format in kvx_cuda.h's doc block are accepted; each rule broken is
   refused with a sentence naming it; truncations and 200000 random
   mutations never crash it (run under ASan/UBSan) and whatever it accepts
   keeps every buffer inside its allocation. Pure: no driver, and the same
   with or without KVX_WITH_CUDA. */
#define KVX_IMPLEMENTATION
#include "../../kvx_cuda.h"
#include "../kvx_test.h"

static void w16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); }
static void w32(uint8_t *p, uint32_t v) { w16(p, (uint16_t)v); w16(p + 2, (uint16_t)(v >> 16)); }
static void w64(uint8_t *p, uint64_t v) { w32(p, (uint32_t)v); w32(p + 4, (uint32_t)(v >> 32)); }
static uint32_t r32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t r64(const uint8_t *p) { return (uint64_t)r32(p) | (uint64_t)r32(p + 4) << 32; }

/* A decode endpoint: nalloc allocations, nb buffers of 256 KiB (buffer i
   in allocation i % nalloc at (i / nalloc) * 256 KiB, allocations just
   large enough; 1 MiB for 2 allocations of 8 buffers), na aux
   buffers of 64-byte rows, ns state buffers (version 3, HYBRID STATE) of
   16 rows of 4096 bytes each in allocation 0 after its KV buffers (its
   length grows by 64 KiB each). A prefill endpoint when nb == 0. Returns
   its length. */
static size_t build_s(uint8_t *p, uint32_t nalloc, uint32_t nb, uint32_t na, uint32_t ns) {
    uint32_t i, per = nalloc ? (nb + nalloc - 1) / nalloc : 0;
    uint8_t *t;
    memset(p, 0, 160);
    memcpy(p, "kvx-cuda", 8);
    w16(p + 8, 3);
    w16(p + 10, nb ? 2 : 1);
    w32(p + 12, 4242);
    memcpy(p + 16, "0b6f3d1c-8a44-4c1e-9c1d-2f8f6c2b9e10", 36);
    memcpy(p + 80, "gpu-node-17", 11);
    w32(p + 144, nalloc);
    w32(p + 148, nb);
    w32(p + 152, na);
    w32(p + 156, ns);
    t = p + 160;
    for (i = 0; i < nalloc; i++, t += 88) {
        memset(t, 0xa0 + (int)i, 64); /* the IPC handle: opaque here */
        w64(t + 64, 0x7f0000000000ull + (uint64_t)i * (1u << 30));
        w32(t + 72, 0);
        w32(t + 76, 0);
        w64(t + 80, (uint64_t)per * (256u << 10) + (i ? 0 : (uint64_t)ns * (64u << 10)));
    }
    for (i = 0; i < nb; i++, t += 24) {
        w32(t, i % nalloc);
        w32(t + 4, 0);
        w64(t + 8, (uint64_t)(i / nalloc) * (256u << 10));
        w64(t + 16, 256u << 10);
    }
    for (i = 0; i < na; i++, t += 8) w64(t, 64);
    for (i = 0; i < ns; i++, t += 32) {
        w32(t, 0);
        w32(t + 4, 0);
        w64(t + 8, (uint64_t)per * (256u << 10) + (uint64_t)i * (64u << 10));
        w64(t + 16, 64u << 10);
        w64(t + 24, 4096);
    }
    return (size_t)(t - p);
}

static size_t build(uint8_t *p, uint32_t nalloc, uint32_t nb, uint32_t na) {
    return build_s(p, nalloc, nb, na, 0);
}

static kvx_result check(const uint8_t *p, size_t n, char *why) {
    why[0] = 0;
    return kvx_cuda_endpoint_check(p, n, why, KVX_ERROR_MAX);
}

/* What an accepted blob promises: every buffer inside its allocation,
   state buffers too, with nonzero rows that fit. */
static int sound(const uint8_t *p, size_t n) {
    uint32_t nalloc = r32(p + 144), nb = r32(p + 148), na = r32(p + 152), ns = r32(p + 156), i;
    const uint8_t *a = p + 160, *b = a + (size_t)nalloc * 88, *s;
    if (160 + (uint64_t)nalloc * 88 + (uint64_t)nb * 24 + (uint64_t)na * 8 + (uint64_t)ns * 32 != n)
        return 0;
    s = b + (size_t)nb * 24 + (size_t)na * 8;
    for (i = 0; i < ns; i++) {
        uint32_t k = r32(s + 32 * i);
        uint64_t off = r64(s + 32 * i + 8), len = r64(s + 32 * i + 16), it = r64(s + 32 * i + 24);
        uint64_t alen;
        if (k >= nalloc || !it || it > len) return 0;
        alen = r64(a + 88 * k + 80);
        if (off > alen || len > alen - off) return 0;
    }
    for (i = 0; i < nb; i++) {
        uint32_t k = r32(b + 24 * i);
        uint64_t off = r64(b + 24 * i + 8), len = r64(b + 24 * i + 16), alen;
        if (k >= nalloc) return 0;
        alen = r64(a + 88 * k + 80);
        if (off > alen || len > alen - off) return 0;
    }
    return 1;
}

#define REFUSED(mut, needle)                                                                   \
    do {                                                                                       \
        n = build(buf, 2, 8, 2);                                                               \
        mut;                                                                                   \
        CHECK(check(buf, n, why) == KVX_ERR_PROTOCOL, "refused: %s", #mut);                    \
        CHECK_STR(why, needle);                                                                \
    } while (0)

int main(void) {
    static uint8_t buf[1 << 16], m[1 << 16];
    char why[KVX_ERROR_MAX];
    size_t n, len, i;
    uint64_t seed = 12345;
    unsigned accepted = 0, unsound = 0, iters = kt_quick() ? 50000 : 200000, k;
    kt_name = "test_cuda_endpoint";

    n = build(buf, 2, 8, 2);
    CHECK(n == 160 + 2 * 88 + 8 * 24 + 2 * 8, "a decode endpoint is %zu bytes", n);
    CHECK(check(buf, n, why) == KVX_OK, "a decode endpoint is accepted: %s", why);
    n = build(buf, 1, 64, 0);
    CHECK(check(buf, n, why) == KVX_OK, "64 buffers sharing one allocation, no aux: %s", why);
    n = build(buf, 0, 0, 0);
    CHECK(n == 160 && check(buf, n, why) == KVX_OK, "a prefill endpoint (160 bytes): %s", why);
    n = build(buf, 581, 581, 16);
    CHECK(n <= 65536 && check(buf, n, why) == KVX_OK,
          "581 buffers in 581 allocations and 16 aux buffers fit a hello (%zu bytes)", n);

    REFUSED(buf[3] = 'X', "magic");
    REFUSED(n = 100, "magic");
    REFUSED(w16(buf + 8, 1), "version 1"); /* version 1 had the aux segment */
    REFUSED(w16(buf + 8, 2), "version 2"); /* version 2 had no state buffers */
    REFUSED(w16(buf + 10, 3), "role 3");
    REFUSED(w32(buf + 12, 0), "process id");
    REFUSED(buf[20] = 7, "printable");
    REFUSED(buf[16 + 60] = 'x', "printable"); /* text after the terminating NUL */
    REFUSED(memset(buf + 16, 0, 64), "printable");
    REFUSED(w32(buf + 148, 2000), "at most");
    REFUSED(n -= 1, "take");
    REFUSED(buf[n++] = 0, "take");
    REFUSED(w16(buf + 10, 1), "prefill endpoint announces GPU memory");
    REFUSED(w64(buf + 160 + 80, 0), "allocation 0");
    REFUSED(w64(buf + 160 + 64, 0xffffffffffff0000ull), "allocation 0");
    REFUSED(w32(buf + 160 + 72, 0x80000000u), "allocation 0");
    REFUSED(w32(buf + 160 + 2 * 88 + 24 * 3, 2), "buffer 3 names allocation 2 of 2");
    REFUSED(w64(buf + 160 + 2 * 88 + 24 * 7 + 8, (1u << 20) - 4096), "buffer 7");
    REFUSED(w64(buf + 160 + 2 * 88 + 24 * 7 + 16, 0), "buffer 7");
    REFUSED(w64(buf + 160 + 2 * 88 + 24 * 5 + 8, ~0ull), "leaves allocation");
    REFUSED(w32(buf + 156, 7), "state buffers take");
    REFUSED(w32(buf + 156, 5000), "at most");

    /* state buffers (version 3): accepted when sound, each rule refused */
    n = build_s(buf, 2, 8, 2, 3);
    CHECK(n == 160 + 2 * 88 + 8 * 24 + 2 * 8 + 3 * 32 && check(buf, n, why) == KVX_OK,
          "a decode endpoint with 3 state buffers (%zu bytes) is accepted: %s", n, why);
#define ST(k) (buf + 160 + 2 * 88 + 8 * 24 + 2 * 8 + 32 * (k))
#define REFUSED_S(mut, needle)                                                                 \
    do {                                                                                       \
        n = build_s(buf, 2, 8, 2, 3);                                                          \
        mut;                                                                                   \
        CHECK(check(buf, n, why) == KVX_ERR_PROTOCOL, "refused: %s", #mut);                    \
        CHECK_STR(why, needle);                                                                \
    } while (0)
    REFUSED_S(w32(ST(1), 2), "state buffer 1");
    REFUSED_S(w32(ST(1) + 4, 1), "reserved");
    REFUSED_S(w64(ST(2) + 8, ~0ull - 10), "leaves its allocation");
    REFUSED_S(w64(ST(2) + 16, 0), "leaves its allocation");
    REFUSED_S(w64(ST(2) + 16, (2u << 20)), "leaves its allocation");
    REFUSED_S(w64(ST(0) + 24, 0), "0-byte rows");
    REFUSED_S(w64(ST(0) + 24, (64u << 10) + 1), "rows in");
    REFUSED_S(n -= 32, "take");
    printf("  e.g.: %s\n", why);
    REFUSED(w64(buf + 160 + 2 * 88 + 8 * 24 + 8, 8u << 20), "aux buffer 1");
    REFUSED(w64(buf + 160 + 2 * 88 + 8 * 24, 0), "aux buffer 0");
    printf("  e.g.: %s\n", why);
    CHECK(kvx_cuda_endpoint_check(NULL, 0, why, sizeof why) == KVX_ERR_PROTOCOL, "NULL");

    /* every truncation of a valid blob, and random mutations of it */
    n = build_s(buf, 3, 12, 3, 2);
    for (len = 0; len < n; len++)
        if (check(buf, len, why) == KVX_OK) unsound++;
    CHECK(unsound == 0, "no truncation is accepted");
    for (k = 0; k < iters; k++) {
        uint64_t x = seed++ * 0x9E3779B97F4A7C15ull;
        int flips = 1 + (int)(x % 4);
        memcpy(m, buf, n);
        len = n;
        while (flips--) {
            x ^= x >> 29;
            x *= 0xBF58476D1CE4E5B9ull;
            i = (size_t)(x % n);
            switch ((x >> 40) % 4) {
            case 0: m[i] ^= (uint8_t)(1u << ((x >> 20) & 7)); break;
            case 1: m[i] = (uint8_t)(x >> 48); break;
            case 2: len = (size_t)((x >> 32) % (n + 8)); break;
            default: w32(m + (i & ~(size_t)3), (uint32_t)(x >> 24)); break;
            }
        }
        if (len > n) memset(m + n, 0, len - n);
        if (check(m, len, why) == KVX_OK) {
            accepted++;
            if (!sound(m, len)) unsound++;
        } else if (!why[0] || !strstr(why, "cuda endpoint:")) {
            unsound++;
        }
    }
    CHECK(unsound == 0, "%u random mutations: %u accepted, all sound; every refusal has a "
          "sentence", iters, accepted);
    printf("  %u random mutations: %u accepted (all sound), %u refused with a sentence\n", iters,
           accepted, iters - accepted);
    return kt_done();
}
