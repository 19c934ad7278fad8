/* Unit tests of the core: results, state machine, layouts, plans, JSON,
   checksums, settings, engine objects over the fake transport and over a
   transport that never finishes (for the core's waiting timeout). */
#define KVX_IMPLEMENTATION
#include "../../kvx.h"
#include "../kvx_test.h"
#include <unistd.h>
#include <time.h>
#include <pthread.h>
#include <sched.h>
#include <sys/stat.h>

static void sleep_ms(int ms) {
    struct timespec ts;
    ts.tv_sec = ms / 1000;
    ts.tv_nsec = (long)(ms % 1000) * 1000000L;
    nanosleep(&ts, NULL);
}

/* A small pool: 3 buffers of 4 pages (item_len 16), one aux buffer of 4 slots. */
static char mem[3][64];
static char auxmem[4 * 8];
static kvx_buffer bufs[3];
static kvx_aux_buffer auxb;

static kvx_layout small_layout(void) {
    kvx_layout l;
    int i;
    memset(&l, 0, sizeof l);
    for (i = 0; i < 3; i++) {
        bufs[i].base = mem[i];
        bufs[i].length = 64;
        bufs[i].item_len = 16;
    }
    auxb.base = auxmem;
    auxb.length = sizeof auxmem;
    auxb.item_len = 8;
    l.buffers = bufs;
    l.num_buffers = 3;
    l.aux = &auxb;
    l.num_aux = 1;
    l.page_size = 4;
    l.num_kv_heads = 2;
    l.dtype_size = 2;
    l.dtype = "bfloat16";
    return l;
}

static void test_checksums(void) {
    kvx__sha256 h;
    uint8_t d[32];
    static const uint8_t abc[32] = {0xba, 0x78, 0x16, 0xbf, 0x8f, 0x01, 0xcf, 0xea, 0x41, 0x41, 0x40,
                                    0xde, 0x5d, 0xae, 0x22, 0x23, 0xb0, 0x03, 0x61, 0xa3, 0x96, 0x17,
                                    0x7a, 0x9c, 0xb4, 0x10, 0xff, 0x61, 0xf2, 0x00, 0x15, 0xad};
    char big[50000];
    size_t i;
    uint32_t whole, bytewise = 0;
    CHECK(kvx_crc32c(0, "123456789", 9) == 0xE3069283u, "crc32c check value");
    kvx__sha256_init(&h);
    kvx__sha256_update(&h, "abc", 3);
    kvx__sha256_final(&h, d);
    CHECK(memcmp(d, abc, 32) == 0, "sha256(abc)");
    /* the 3-stream hardware path and the bytewise path agree at every alignment */
    for (i = 0; i < sizeof big; i++) big[i] = (char)(i * 131 + (i >> 7));
    whole = kvx_crc32c(0, big + 3, sizeof big - 3);
    for (i = 3; i < sizeof big; i++) bytewise = kvx_crc32c(bytewise, big + i, 1);
    CHECK(whole == bytewise, "crc32c streaming: %08x vs %08x", whole, bytewise);
    {
        size_t cut;
        int bad = 0;
        for (cut = 0; cut < sizeof big; cut += 4999)
            bad += kvx_crc32c_combine(kvx_crc32c(0, big, cut), kvx_crc32c(0, big + cut, sizeof big - cut),
                                      sizeof big - cut) != kvx_crc32c(0, big, sizeof big);
        CHECK(bad == 0, "crc32c_combine joins pieces (%d wrong)", bad);
    }
}

static void test_json(void) {
    kvx__json_doc d;
    const char *t = "{\"a\": [1, 2, {\"b\": \"x\\ny\"}], \"n\": 18446744073709551615, \"neg\": -5,"
                    " \"f\": 1.5, \"t\": true, \"z\": null}";
    uint64_t v = 0;
    const kvx__json *a;
    CHECK(kvx__json_parse(&d, NULL, t, strlen(t), 0) == KVX_OK, "parse: %s", d.error);
    a = kvx__json_get(&d, kvx__json_root(&d), "a");
    CHECK(a && a->count == 3, "array count");
    CHECK(kvx__json_u64(&d, kvx__json_at(&d, a, 1), NULL, 0, 10, &v) && v == 2, "a[1] == 2");
    CHECK(kvx__json_get(&d, kvx__json_at(&d, a, 2), "b") &&
              !strcmp(kvx__json_get(&d, kvx__json_at(&d, a, 2), "b")->str, "x\ny"),
          "escaped string");
    CHECK(kvx__json_u64(&d, kvx__json_root(&d), "n", 0, UINT64_MAX, &v) && v == UINT64_MAX,
          "u64 max");
    CHECK(!kvx__json_u64(&d, kvx__json_root(&d), "neg", 0, 100, &v), "negative refused");
    CHECK(!kvx__json_u64(&d, kvx__json_root(&d), "f", 0, 100, &v), "fraction refused");
    CHECK(!kvx__json_u64(&d, kvx__json_root(&d), "missing", 0, 100, &v), "missing key");
    kvx__json_free(&d);
    {
        static const char *bad[] = {"{", "[1,]", "{\"a\" 1}", "\"\\x\"", "01x", "[1] 2", "",
                                    "{\"a\":tru}", "\"\x01\""};
        size_t i;
        for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
            CHECK(kvx__json_parse(&d, NULL, bad[i], strlen(bad[i]), 0) == KVX_ERR_PROTOCOL,
                  "bad JSON '%s' refused", bad[i]);
            kvx__json_free(&d);
        }
    }
    {
        char deep[200];
        memset(deep, '[', 100);
        memset(deep + 100, ']', 100);
        CHECK(kvx__json_parse(&d, NULL, deep, 200, 0) == KVX_ERR_PROTOCOL, "depth limit");
        CHECK_STR(d.error, "deeper");
        kvx__json_free(&d);
        CHECK(kvx__json_parse(&d, NULL, "[1,2,3,4,5]", 11, 3) == KVX_ERR_PROTOCOL, "node limit");
        kvx__json_free(&d);
    }
}

static void test_layout(void) {
    kvx_layout a = small_layout(), b;
    kvx_buffer other[3];
    char why[256];
    CHECK(kvx_layout_validate(&a, why, sizeof why) == KVX_OK, "valid layout: %s", why);
    CHECK(kvx_layout_num_pages(&a) == 4, "4 pages");
    CHECK(kvx_layout_page_bytes(&a) == 48, "48 bytes per page");
    CHECK(kvx_layout_num_aux_slots(&a) == 4, "4 aux slots");
    b = a;
    CHECK(kvx_layout_compare(&a, &b, why, sizeof why) == KVX_OK, "equal layouts");
    CHECK(kvx_layout_fingerprint(&a) == kvx_layout_fingerprint(&b), "equal fingerprints");
    b.page_size = 8;
    CHECK(kvx_layout_compare(&a, &b, why, sizeof why) == KVX_ERR_LAYOUT_MISMATCH, "page size");
    CHECK_STR(why, "page_size differs: ours 4, theirs 8");
    CHECK(kvx_layout_fingerprint(&a) != kvx_layout_fingerprint(&b), "fingerprint covers page size");
    b = a;
    b.dtype = "float16";
    kvx_layout_compare(&a, &b, why, sizeof why);
    CHECK_STR(why, "dtype differs: ours 'bfloat16', theirs 'float16'");
    b = a;
    b.num_buffers = 2;
    kvx_layout_compare(&a, &b, why, sizeof why);
    CHECK_STR(why, "buffer count differs: ours 3, theirs 2");
    b = a;
    memcpy(other, bufs, sizeof other);
    other[2].item_len = 32;
    other[2].base = mem[2];
    b.buffers = other;
    kvx_layout_compare(&a, &b, why, sizeof why);
    CHECK_STR(why, "item_len of KV buffer 2 differs: ours 16, theirs 32");
    /* pool lengths and bases are not part of the fingerprint */
    other[2].item_len = 16;
    other[2].length = 32;
    CHECK(kvx_layout_fingerprint(&a) == kvx_layout_fingerprint(&b), "pool size not covered");
    b = a;
    b.page_size = 0;
    CHECK(kvx_layout_validate(&b, why, sizeof why) == KVX_ERR_INVALID_ARGUMENT, "page_size 0");
    memcpy(other, bufs, sizeof other);
    other[1].length = 8;
    b = a;
    b.buffers = other;
    CHECK(kvx_layout_validate(&b, why, sizeof why) == KVX_ERR_INVALID_ARGUMENT, "short buffer");
    CHECK_STR(why, "KV buffer 1");
}

/* A request's aux rows: their size and the packing the transports put on the
   wire and on disk (aux buffer 0's row, then 1's), both ways. */
static void test_aux_rows(void) {
    kvx_layout l = small_layout();
    kvx_aux_buffer two[2];
    uint8_t m0[4 * 3], m1[4 * 5], packed[8], want[8];
    int i;
    for (i = 0; i < (int)sizeof m0; i++) m0[i] = (uint8_t)(10 + i);
    for (i = 0; i < (int)sizeof m1; i++) m1[i] = (uint8_t)(100 + i);
    two[0].base = m0; two[0].length = sizeof m0; two[0].item_len = 3;
    two[1].base = m1; two[1].length = sizeof m1; two[1].item_len = 5;
    l.aux = two;
    l.num_aux = 2;
    CHECK(kvx_layout_aux_row_bytes(&l) == 8, "aux row bytes: 3 + 5 = %llu",
          (unsigned long long)kvx_layout_aux_row_bytes(&l));
    kvx_layout_aux_copy(&l, 2, packed, 0);
    memcpy(want, m0 + 6, 3);
    memcpy(want + 3, m1 + 10, 5);
    CHECK(!memcmp(packed, want, 8), "slot 2 packed: buffer 0's row, then buffer 1's");
    kvx_layout_aux_copy(&l, 1, packed, 1);
    CHECK(!memcmp(m0 + 3, want, 3) && !memcmp(m1 + 5, want + 3, 5), "packed rows into slot 1");
    CHECK(m0[2] == 12 && m0[6] == 16 && m1[4] == 104 && m1[10] == 110,
          "the neighbouring slots are untouched");
    l.num_aux = 0;
    CHECK(kvx_layout_aux_row_bytes(&l) == 0 && kvx_layout_aux_row_bytes(NULL) == 0,
          "no aux buffers: 0 bytes");
}

static void test_plan(void) {
    kvx_layout l = small_layout();
    kvx_plan p;
    int32_t src[4] = {0, 1, 2, 3}, dst[4] = {3, 0, 1, 2}, dup[3] = {1, 2, 1};
    int32_t oob[2] = {1, 4}, neg[1] = {-1};
    memset(&p, 0, sizeof p);
    /* two-sided: 0->3 alone, then 1,2,3 -> 0,1,2 as one run, for each of 3 buffers */
    CHECK(kvx_plan_pages(&p, &l, src, &l, dst, 4) == KVX_OK, "plan: %s", p.error);
    CHECK(p.count == 6, "6 spans, got %zu", p.count);
    CHECK(p.spans[0].buffer == 0 && p.spans[0].src_offset == 0 && p.spans[0].dst_offset == 48 &&
              p.spans[0].length == 16, "span 0");
    CHECK(p.spans[1].src_offset == 16 && p.spans[1].dst_offset == 0 && p.spans[1].length == 48,
          "span 1 merged run of 3 pages");
    CHECK(p.spans[5].buffer == 2, "buffer order");
    CHECK(p.total_bytes == 4 * 48, "total bytes");
    /* fully consecutive: one span per buffer */
    CHECK(kvx_plan_pages(&p, &l, src, &l, src, 4) == KVX_OK && p.count == 3, "coalesced");
    /* empty and single page */
    CHECK(kvx_plan_pages(&p, &l, src, &l, dst, 0) == KVX_OK && p.count == 0 && !p.total_bytes,
          "empty plan");
    CHECK(kvx_plan_pages(&p, &l, src + 2, &l, dst + 2, 1) == KVX_OK && p.count == 3 &&
              p.spans[0].src_offset == 32 && p.spans[0].dst_offset == 16,
          "single page");
    /* out of range and duplicates */
    CHECK(kvx_plan_pages(&p, &l, oob, &l, src, 2) == KVX_ERR_OUT_OF_RANGE, "source beyond pool");
    CHECK_STR(p.error, "page index 4 at position 1 is outside the pool of 4 pages");
    CHECK(kvx_plan_pages(&p, &l, src, &l, neg, 1) == KVX_ERR_OUT_OF_RANGE, "negative");
    CHECK(kvx_plan_pages(&p, &l, src, &l, dup, 3) == KVX_ERR_DUPLICATE, "duplicate dst");
    CHECK_STR(p.error, "destination page 1 appears more than once");
    CHECK(kvx_plan_pages(&p, &l, dup, &l, src, 3) == KVX_OK, "duplicate src allowed");
    /* one-sided: gather is packed buffer-major */
    CHECK(kvx_plan_gather(&p, &l, dst, 4) == KVX_OK, "gather");
    CHECK(p.packed_bytes == 4 * 48, "packed bytes");
    CHECK(p.count == 6 && p.spans[0].dst_offset == 0 && p.spans[1].dst_offset == 16 &&
              p.spans[2].dst_offset == 64 && p.spans[2].buffer == 1,
          "gather packed offsets");
    CHECK(kvx_plan_scatter(&p, &l, dup, 3) == KVX_ERR_DUPLICATE, "scatter refuses duplicates");
    CHECK(kvx_plan_scatter(&p, &l, dst, 4) == KVX_OK && p.spans[1].src_offset == 16 &&
              p.spans[1].dst_offset == 0 && p.spans[1].length == 48,
          "scatter");
    kvx_plan_free(&p);
}

/* Property check: executing a plan equals copying page by page, for random
   page lists (runs, repeats in the source, every length). */
static void test_plan_random(void) {
    enum { PAGES = 64, NB = 3 };
    static char srcm[NB][PAGES * 8], dstm[NB][PAGES * 8], refm[NB][PAGES * 8];
    kvx_buffer sb[NB], db[NB];
    kvx_layout sl, dl;
    kvx_plan p;
    uint64_t rng = 42;
    int iter, bad = 0, b;
    memset(&p, 0, sizeof p);
    memset(&sl, 0, sizeof sl);
    for (b = 0; b < NB; b++) {
        int i;
        for (i = 0; i < PAGES * 8; i++) srcm[b][i] = (char)(b * 101 + i * 7 + (i >> 3));
        sb[b].base = srcm[b]; sb[b].length = sizeof srcm[b]; sb[b].item_len = 8;
        db[b] = sb[b]; db[b].base = dstm[b];
    }
    sl.buffers = sb; sl.num_buffers = NB; sl.page_size = 1;
    dl = sl; dl.buffers = db;
    for (iter = 0; iter < 2000; iter++) {
        int32_t s[PAGES], d[PAGES], starts[PAGES], lens[PAGES];
        size_t n, i, k, nblk = 0, pos = 0;
#define KT_RND() (rng = rng * 6364136223846793005ull + 1442695040888963407ull, (size_t)(rng >> 33))
        /* destination: 0..PAGES-1 cut into consecutive blocks, blocks shuffled */
        while (pos < PAGES) {
            size_t len = 1 + KT_RND() % 6;
            if (len > PAGES - pos) len = PAGES - pos;
            starts[nblk] = (int32_t)pos; lens[nblk++] = (int32_t)len; pos += len;
        }
        for (i = nblk; i > 1; i--) {
            size_t j = KT_RND() % i;
            int32_t t = starts[i - 1]; starts[i - 1] = starts[j]; starts[j] = t;
            t = lens[i - 1]; lens[i - 1] = lens[j]; lens[j] = t;
        }
        for (i = 0, k = 0; i < nblk; i++) {
            int32_t q;
            for (q = 0; q < lens[i]; q++) d[k++] = starts[i] + q;
        }
        /* source: random runs, repeats allowed */
        n = KT_RND() % (PAGES + 1);
        for (i = 0; i < n; i++)
            s[i] = (i && KT_RND() % 2 && s[i - 1] + 1 < PAGES) ? s[i - 1] + 1
                                                                : (int32_t)(KT_RND() % PAGES);
        if (iter % 50 == 0 && n > 1) d[n - 1] = d[0]; /* now and then a repeated destination */
#undef KT_RND
        memset(dstm, 0, sizeof dstm);
        memset(refm, 0, sizeof refm);
        if (kvx_plan_pages(&p, &sl, s, &dl, d, n) != KVX_OK) {
            /* only a repeated destination may be refused */
            bad += !(iter % 50 == 0 && n > 1) || !strstr(p.error, "more than once");
            continue;
        }
        bad += iter % 50 == 0 && n > 1; /* a repeated destination must be refused */
        for (k = 0; k < p.count; k++)
            memcpy(dstm[p.spans[k].buffer] + p.spans[k].dst_offset,
                   srcm[p.spans[k].buffer] + p.spans[k].src_offset, (size_t)p.spans[k].length);
        for (b = 0; b < NB; b++)
            for (i = 0; i < n; i++) memcpy(refm[b] + d[i] * 8, srcm[b] + s[i] * 8, 8);
        if (memcmp(dstm, refm, sizeof dstm) != 0 || p.total_bytes != (uint64_t)n * 8 * NB) {
            if (getenv("KVX_TEST_VERBOSE")) {
                printf("n=%zu:", n);
                for (i = 0; i < n; i++) printf(" %d->%d", s[i], d[i]);
                printf("\n");
            }
            bad++;
        }
    }
    CHECK(bad == 0, "random plans equal page-by-page copies (%d mismatches)", bad);
    kvx_plan_free(&p);
}

/* kvx_pages_check's repeat detection (a sort by bytes, or nothing for a
   strictly increasing list) against a quadratic search, on lists of every
   size class and value width, repeats placed anywhere. */
static void test_pages_dups(void) {
    enum { MAXN = 700 };
    static int32_t pg[MAXN];
    static const uint64_t pools[] = {200, 1000, 70000, 20000000, 0x7fffffff};
    kvx_plan p;
    uint64_t rng = 7;
    int iter, bad = 0, refused = 0, kinds[3] = {0, 0, 0};
    memset(&p, 0, sizeof p);
#define KT_RND() (rng = rng * 6364136223846793005ull + 1442695040888963407ull, (uint64_t)(rng >> 33))
    for (iter = 0; iter < 3000; iter++) {
        uint64_t pool = pools[iter % 5];
        size_t n = (size_t)(KT_RND() % MAXN), i, j;
        int kind = (int)(KT_RND() % 3), dup = 0;
        kvx_result r;
        if ((uint64_t)n > pool) n = (size_t)pool;
        for (i = 0; i < n; i++) /* kind 0: increasing, 1: random, 2: random + a forced repeat */
            pg[i] = kind != 0 ? (int32_t)(KT_RND() % pool)
                    : pool / (n + 1) ? (int32_t)(i * (pool / (n + 1)) + KT_RND() % (pool / (n + 1)))
                                     : (int32_t)i;
        if (kind == 2 && n > 1) {
            size_t from = (size_t)(KT_RND() % n), to = (size_t)(KT_RND() % n);
            pg[to] = pg[from];
        }
        for (i = 0; i < n && !dup; i++)
            for (j = i + 1; j < n; j++)
                if (pg[i] == pg[j]) { dup = 1; break; }
        r = kvx_pages_check(&p, pg, n, pool, 1, "destination");
        kinds[kind] += dup;
        if (dup != (r == KVX_ERR_DUPLICATE) || (!dup && r != KVX_OK)) bad++;
        if (dup && !strstr(p.error, "appears more than once")) bad++;
        refused += r == KVX_ERR_DUPLICATE;
        /* without no_duplicates a repeat is fine */
        if (kvx_pages_check(&p, pg, n, pool, 0, "source") != KVX_OK) bad++;
    }
#undef KT_RND
    CHECK(bad == 0, "repeat detection agrees with a quadratic search (%d disagree)", bad);
    CHECK(kinds[2] > 500 && kinds[0] == 0 && refused == kinds[1] + kinds[2],
          "the lists had repeats to find (%d forced, %d random) and none among the increasing ones",
          kinds[2], kinds[1]);
    pg[0] = 5; pg[1] = 9; pg[2] = 5;
    CHECK(kvx_pages_check(&p, pg, 3, 10, 1, "destination") == KVX_ERR_DUPLICATE,
          "5, 9, 5 is refused");
    CHECK_STR(p.error, "destination page 5 appears more than once");
    kvx_plan_free(&p);
}

static kvx_engine *make_engine(kvx_role role, const kvx_backend *be) {
    kvx_engine_desc d;
    kvx_engine *e = NULL;
    char why[256];
    memset(&d, 0, sizeof d);
    d.role = role;
    d.layout = small_layout();
    d.backend = be;
    if (kvx_engine_create(&d, &e, why, sizeof why) != KVX_OK) printf("engine: %s\n", why);
    return e;
}

static void test_engine_errors(void) {
    kvx_engine_desc d;
    kvx_engine *e = (kvx_engine *)1;
    char why[256];
    memset(&d, 0, sizeof d);
    d.role = KVX_ROLE_PREFILL;
    d.layout = small_layout();
    d.transport = "carrier-pigeon";
    CHECK(kvx_engine_create(&d, &e, why, sizeof why) == KVX_ERR_UNKNOWN_TRANSPORT && !e,
          "unknown transport");
    CHECK_STR(why, "carrier-pigeon");
    d.transport = NULL;
    d.role = (kvx_role)0;
    CHECK(kvx_engine_create(&d, &e, why, sizeof why) == KVX_ERR_INVALID_ARGUMENT, "no role");
    d.role = KVX_ROLE_DECODE;
    d.layout.num_buffers = 0;
    CHECK(kvx_engine_create(&d, &e, why, sizeof why) == KVX_ERR_INVALID_ARGUMENT, "no buffers");
    d.layout = small_layout();
    setenv("KVX_WAITING_TIMEOUT", "soon", 1);
    CHECK(kvx_engine_create(&d, &e, why, sizeof why) == KVX_ERR_BAD_CONFIG, "bad env");
    CHECK_STR(why, "KVX_WAITING_TIMEOUT='soon'");
    unsetenv("KVX_WAITING_TIMEOUT");
    setenv("KVX_LOG_LEVEL", "loud", 1);
    CHECK(kvx_engine_create(&d, &e, why, sizeof why) == KVX_ERR_BAD_CONFIG, "bad log level");
    unsetenv("KVX_LOG_LEVEL");
    CHECK(kvx_engine_create(&d, &e, why, sizeof why) == KVX_OK, "fake engine: %s", why);
    CHECK(!strcmp(kvx_engine_transport(e), "fake"), "fake by default");
    {
        kvx_room_desc rd;
        kvx_sender *s = (kvx_sender *)1;
        memset(&rd, 0, sizeof rd);
        CHECK(kvx_sender_create(e, &rd, &s) == KVX_ERR_STATE && !s, "sender on a decode engine");
    }
    kvx_engine_destroy(e);
    kvx_engine_destroy(NULL);
}

/* The engine's room table: every open room is found by its id, a closed one
   is not, across the table's growth (3000 rooms, ids spread and clustered). */
static void test_room_table(void) {
    kvx_engine *de = make_engine(KVX_ROLE_DECODE, NULL);
    static kvx_receiver *rs[3000];
    kvx_room_desc rd;
    int i, found = 0, gone = 0, right = 0;
    memset(&rd, 0, sizeof rd);
    for (i = 0; i < 3000; i++) {
        rd.room = i % 2 ? (uint64_t)i : (uint64_t)i << 40;
        rs[i] = NULL;
        kvx_receiver_create(de, &rd, &rs[i]);
    }
    for (i = 0; i < 3000; i += 3) {
        kvx_receiver_destroy(rs[i]);
        rs[i] = NULL;
    }
    for (i = 0; i < 3000; i++) {
        kvx_room *r = kvx_engine_find_room(de, i % 2 ? (uint64_t)i : (uint64_t)i << 40);
        if (!rs[i]) gone += r == NULL;
        else {
            found += r != NULL;
            right += r == (kvx_room *)rs[i];
        }
        if (r) kvx_room_unref(r);
    }
    CHECK(found == 2000 && right == 2000 && gone == 1000,
          "room table: %d of 2000 open rooms found (%d the right one), %d of 1000 closed gone",
          found, right, gone);
    CHECK(kvx_engine_find_room(de, 1ull << 63) == NULL, "an id never used is not found");
    for (i = 0; i < 3000; i++) kvx_receiver_destroy(rs[i]);
    kvx_engine_destroy(de);
}

static void test_fake_flow(void) {
    kvx_engine *pe = make_engine(KVX_ROLE_PREFILL, NULL), *de = make_engine(KVX_ROLE_DECODE, NULL);
    kvx_room_desc rd;
    kvx_sender *s;
    kvx_receiver *r;
    int32_t pages[3] = {2, 0, 1}, bad[1] = {7}, dup[2] = {1, 1};
    kvx_engine_stats st;
    memset(&rd, 0, sizeof rd);
    rd.room = 77;
    CHECK(kvx_sender_create(pe, &rd, &s) == KVX_OK, "sender");
    CHECK(kvx_sender_poll(s) == KVX_POLL_WAITING_FOR_INPUT, "fake: no handshake");
    CHECK(kvx_sender_send(s, pages, 3) == KVX_ERR_STATE, "send before init");
    CHECK_STR(kvx_sender_call_error(s), "send before init");
    CHECK(kvx_sender_error(s)[0] == 0, "a refused call leaves no failure text (got '%s')",
          kvx_sender_error(s));
    CHECK(kvx_sender_poll(s) == KVX_POLL_WAITING_FOR_INPUT, "still usable after refused send");
    CHECK(kvx_sender_init(s, 3, 9) == KVX_ERR_OUT_OF_RANGE, "aux slot beyond aux buffers");
    CHECK(kvx_sender_poll(s) == KVX_POLL_FAILED && kvx_sender_result(s) == KVX_ERR_OUT_OF_RANGE,
          "failed with the code");
    CHECK_STR(kvx_sender_error(s), "aux index 9 is outside the 4 aux slots");
    kvx_sender_destroy(s);

    CHECK(kvx_sender_create(pe, &rd, &s) == KVX_OK, "sender 2");
    CHECK(kvx_sender_init(s, 3, 1) == KVX_OK, "init");
    CHECK(kvx_sender_init(s, 3, 1) == KVX_ERR_STATE, "init twice");
    CHECK(kvx_sender_send(s, pages, 2) == KVX_OK, "chunk 1");
    CHECK(kvx_sender_poll(s) == KVX_POLL_TRANSFERRING, "transferring after a chunk");
    CHECK(kvx_sender_send(s, pages + 2, 1) == KVX_OK, "last chunk");
    CHECK(kvx_sender_poll(s) == KVX_POLL_SUCCESS, "fake sender: success after last chunk");
    CHECK(kvx_sender_send(s, pages, 1) == KVX_ERR_STATE, "send after the last chunk");
    kvx_sender_abort(s, "late");
    CHECK(kvx_sender_poll(s) == KVX_POLL_SUCCESS, "success is terminal: abort ignored");
    kvx_sender_destroy(s);

    CHECK(kvx_sender_create(pe, &rd, &s) == KVX_OK, "sender 3");
    kvx_sender_init(s, 2, -1);
    CHECK(kvx_sender_send(s, pages, 3) == KVX_ERR_TOO_MANY_PAGES, "more pages than declared");
    CHECK(kvx_sender_poll(s) == KVX_POLL_FAILED, "room failed");
    CHECK_STR(kvx_sender_error(s), "more than the 2 declared");
    kvx_sender_abort(s, "later");
    CHECK(kvx_sender_result(s) == KVX_ERR_TOO_MANY_PAGES, "failed is sticky, first reason kept");
    kvx_sender_destroy(s);

    CHECK(kvx_sender_create(pe, &rd, &s) == KVX_OK, "sender 4");
    kvx_sender_init(s, 1, -1);
    CHECK(kvx_sender_send(s, bad, 1) == KVX_ERR_OUT_OF_RANGE, "page out of range");
    CHECK_STR(kvx_sender_error(s), "page index 7 at position 0 is outside the pool of 4 pages");
    kvx_sender_destroy(s);

    CHECK(kvx_sender_create(pe, &rd, &s) == KVX_OK, "sender 5");
    kvx_sender_init(s, 0, -1);
    CHECK(kvx_sender_send(s, NULL, 0) == KVX_OK && kvx_sender_poll(s) == KVX_POLL_SUCCESS,
          "empty request");
    kvx_sender_destroy(s);

    CHECK(kvx_receiver_create(de, &rd, &r) == KVX_OK, "receiver");
    CHECK(kvx_receiver_init(r, dup, 2, 0) == KVX_ERR_DUPLICATE, "duplicate destination");
    CHECK(kvx_receiver_poll(r) == KVX_POLL_FAILED, "failed");
    kvx_receiver_destroy(r);
    CHECK(kvx_receiver_create(de, &rd, &r) == KVX_OK, "receiver 2");
    CHECK(kvx_receiver_init(r, pages, 3, 0) == KVX_OK && kvx_receiver_poll(r) == KVX_POLL_SUCCESS,
          "fake receiver: success at init");
    kvx_receiver_destroy(r);
    kvx_engine_stats_get(pe, &st);
    CHECK(st.rooms_created == 5 && st.rooms_succeeded == 2 && st.rooms_failed == 3,
          "stats %llu/%llu/%llu", (unsigned long long)st.rooms_created,
          (unsigned long long)st.rooms_succeeded, (unsigned long long)st.rooms_failed);
    kvx_engine_destroy(pe);
    kvx_engine_destroy(de);
}

/* A transport that opens rooms and then never moves a byte. */
static kvx_result stuck_open(kvx_room *r) {
    kvx_room_advance(r, KVX_POLL_WAITING_FOR_INPUT);
    return KVX_OK;
}
static kvx_result stuck_open_bootstrapping(kvx_room *r) { (void)r; return KVX_OK; }
static int logged_errors;
static void count_log(void *u, kvx_log_level lvl, const char *sub, uint64_t room, const char *m) {
    (void)u; (void)sub; (void)room; (void)m;
    if (lvl == KVX_LOG_ERROR) __atomic_add_fetch(&logged_errors, 1, __ATOMIC_RELAXED);
}

static void test_timeouts(void) {
    static kvx_backend stuck;
    static kvx_backend stuck_boot;
    kvx_engine_desc d;
    kvx_engine *de, *pe;
    kvx_receiver *r;
    kvx_sender *s;
    kvx_room_desc rd;
    int32_t pages[1] = {0};
    char why[256];
    uint64_t t0;
    memset(&stuck, 0, sizeof stuck);
    stuck.name = "stuck";
    stuck.room_open = stuck_open;
    memset(&stuck_boot, 0, sizeof stuck_boot);
    stuck_boot.name = "stuck-bootstrap";
    stuck_boot.room_open = stuck_open_bootstrapping;
    CHECK(kvx_transport_register(&stuck) == KVX_OK && kvx_transport_find("stuck") == &stuck,
          "register a transport");
    memset(&d, 0, sizeof d);
    d.role = KVX_ROLE_DECODE;
    d.layout = small_layout();
    d.transport = "stuck";
    d.logger.func = count_log;
    setenv("KVX_WAITING_TIMEOUT", "0.2", 1);
    setenv("KVX_BOOTSTRAP_TIMEOUT", "0.2", 1);
    CHECK(kvx_engine_create(&d, &de, why, sizeof why) == KVX_OK, "stuck engine: %s", why);
    memset(&rd, 0, sizeof rd);
    rd.room = 5;
    kvx_receiver_create(de, &rd, &r);
    t0 = kvx_now_ns();
    kvx_receiver_init(r, pages, 1, -1);
    kvx_receiver_wait(r, KVX_POLL_SUCCESS, 3000);
    CHECK(kvx_receiver_poll(r) == KVX_POLL_FAILED && kvx_receiver_result(r) == KVX_ERR_TIMEOUT,
          "waiting timeout enforced by the core");
    CHECK_STR(kvx_receiver_error(r), "KVX_WAITING_TIMEOUT");
    CHECK(kvx_now_ns() - t0 >= 200000000ull, "not before the timeout");
    t0 = kvx_now_ns(); /* the line is logged right after the state is published */
    while (__atomic_load_n(&logged_errors, __ATOMIC_ACQUIRE) < 1 && kvx_now_ns() - t0 < 2000000000ull)
        sleep_ms(1);
    CHECK(__atomic_load_n(&logged_errors, __ATOMIC_ACQUIRE) >= 1, "the failure was logged");
    kvx_receiver_destroy(r);
    kvx_engine_destroy(de);

    d.role = KVX_ROLE_PREFILL;
    d.backend = &stuck_boot;
    CHECK(kvx_engine_create(&d, &pe, why, sizeof why) == KVX_OK, "stuck prefill: %s", why);
    kvx_sender_create(pe, &rd, &s);
    CHECK(kvx_sender_poll(s) == KVX_POLL_BOOTSTRAPPING, "bootstrapping");
    CHECK(kvx_sender_init(s, 1, -1) == KVX_ERR_STATE, "init while bootstrapping refused");
    kvx_sender_wait(s, KVX_POLL_WAITING_FOR_INPUT, 3000);
    CHECK(kvx_sender_result(s) == KVX_ERR_TIMEOUT, "bootstrap timeout");
    CHECK_STR(kvx_sender_error(s), "KVX_BOOTSTRAP_TIMEOUT");
    /* a room left open is failed and freed by engine destroy (ASan checks the free) */
    kvx_engine_destroy(pe);
    unsetenv("KVX_WAITING_TIMEOUT");
    unsetenv("KVX_BOOTSTRAP_TIMEOUT");
}

/* kvx_*_wait: returns at once when the state is there, after the timeout
   when it is not, and when another thread moves the room (to the state
   asked for, or to FAILED). */
static kvx_room *wait_room;
static int wait_fail;
static void *wait_mover(void *arg) {
    kvx_engine *e = (kvx_engine *)arg;
    uint64_t t0 = kvx_now_ns();
    /* moves the room only once the main thread is blocked in the wait */
    while (!__atomic_load_n(&e->waiters, __ATOMIC_SEQ_CST) && kvx_now_ns() - t0 < 30000000000ull)
        sched_yield();
    /* the waiter counts itself under wait_mu and holds it until it sleeps */
    pthread_mutex_lock(&e->wait_mu);
    pthread_mutex_unlock(&e->wait_mu);
    if (wait_fail)
        kvx_room_fail(wait_room, KVX_ERR_TRANSPORT, "moved to failed by the test");
    else
        kvx_room_succeed(wait_room, 0);
    return NULL;
}

static void test_wait(void) {
    static kvx_backend stuck;
    kvx_engine *de;
    kvx_receiver *r;
    kvx_room_desc rd;
    int32_t pages[1] = {0};
    uint64_t t0;
    pthread_t th;
    memset(&stuck, 0, sizeof stuck);
    stuck.name = "stuck-wait";
    stuck.room_open = stuck_open;
    de = make_engine(KVX_ROLE_DECODE, &stuck);
    CHECK(de != NULL, "engine for the wait test");
    if (!de) return;
    memset(&rd, 0, sizeof rd);
    for (wait_fail = 0; wait_fail < 2; wait_fail++) {
        rd.room = 40 + (uint64_t)wait_fail;
        CHECK(kvx_receiver_create(de, &rd, &r) == KVX_OK, "receiver for the wait test");
        CHECK(kvx_receiver_wait(r, KVX_POLL_WAITING_FOR_INPUT, -1) == KVX_POLL_WAITING_FOR_INPUT,
              "a state already reached returns at once, even with no limit");
        kvx_receiver_init(r, pages, 1, -1);
        CHECK(kvx_receiver_wait(r, KVX_POLL_SUCCESS, 0) == KVX_POLL_TRANSFERRING,
              "timeout 0 returns the state now");
        t0 = kvx_now_ns();
        CHECK(kvx_receiver_wait(r, KVX_POLL_SUCCESS, 50) == KVX_POLL_TRANSFERRING &&
                  kvx_now_ns() - t0 >= 50000000ull,
              "a state not reached returns after the timeout, not before");
        wait_room = (kvx_room *)r;
        pthread_create(&th, NULL, wait_mover, de);
        t0 = kvx_now_ns();
        CHECK(kvx_receiver_wait(r, KVX_POLL_SUCCESS, 60000) ==
                  (wait_fail ? KVX_POLL_FAILED : KVX_POLL_SUCCESS) &&
                  kvx_now_ns() - t0 < 30000000000ull,
              "a waiter wakes when another thread moves the room to %s (not at its timeout)",
              wait_fail ? "FAILED" : "SUCCESS");
        pthread_join(th, NULL);
        CHECK(__atomic_load_n(&de->waiters, __ATOMIC_SEQ_CST) == 0, "no waiter left counted");
        kvx_receiver_destroy(r);
    }
    kvx_engine_destroy(de);
}

/* A transport that records what the core tells it about failures. */
static int rec_failed_calls, rec_abort_calls, rec_close_after_failed;
static char rec_reason[KVX_ERROR_MAX];
static kvx_result rec_open(kvx_room *r) {
    kvx_room_advance(r, KVX_POLL_WAITING_FOR_INPUT);
    return KVX_OK;
}
static kvx_result rec_send(kvx_room *r, kvx_chunk *c) {
    int last = c->is_last;
    kvx_chunk_free(kvx_room_engine(r), c);
    if (last) kvx_room_succeed(r, 0);
    return KVX_OK;
}
static void rec_failed(kvx_room *r) {
    snprintf(rec_reason, sizeof rec_reason, "%s", kvx_room_error(r));
    __atomic_add_fetch(&rec_failed_calls, 1, __ATOMIC_ACQ_REL);
}
static void rec_abort(kvx_room *r, const char *why) {
    (void)r; (void)why;
    __atomic_add_fetch(&rec_abort_calls, 1, __ATOMIC_ACQ_REL);
}
static void rec_close(kvx_room *r) {
    (void)r;
    if (__atomic_load_n(&rec_failed_calls, __ATOMIC_ACQUIRE)) rec_close_after_failed++;
}
static int wait_count(int *c, int want) {
    uint64_t t0 = kvx_now_ns();
    while (__atomic_load_n(c, __ATOMIC_ACQUIRE) < want && kvx_now_ns() - t0 < 10000000000ull)
        sleep_ms(1);
    return __atomic_load_n(c, __ATOMIC_ACQUIRE);
}
/* The progress thread can be held inside the backend's progress hook, so
   that only the destroying thread can run an owed notification. */
static int rec_hold, rec_held;
static void rec_progress(kvx_engine *e) {
    (void)e;
    while (__atomic_load_n(&rec_hold, __ATOMIC_ACQUIRE)) {
        __atomic_store_n(&rec_held, 1, __ATOMIC_RELEASE);
        sleep_ms(1);
    }
    __atomic_store_n(&rec_held, 0, __ATOMIC_RELEASE);
}
static void rec_reset(void) {
    __atomic_store_n(&rec_failed_calls, 0, __ATOMIC_RELEASE);
    __atomic_store_n(&rec_abort_calls, 0, __ATOMIC_RELEASE);
    rec_close_after_failed = 0;
    rec_reason[0] = 0;
}

/* A failure is owed to the peer before it is visible: a backend thread
   fails a room and is held (in the engine's logger) between publishing
   FAILED and queueing the notification; the user sees FAILED and destroys
   the room at once, and the destroy must run room_failed itself. */
static int gate_hold, gate_held;
static void gate_log(void *u, kvx_log_level lvl, const char *sub, uint64_t room, const char *m) {
    (void)u; (void)sub; (void)room;
    if (lvl != KVX_LOG_ERROR || !strstr(m, "failed (")) return;
    while (__atomic_load_n(&gate_hold, __ATOMIC_ACQUIRE)) {
        __atomic_store_n(&gate_held, 1, __ATOMIC_RELEASE);
        sched_yield();
    }
}
static void *gate_failer(void *arg) {
    kvx_room *r = (kvx_room *)arg; /* the caller took a reference for this thread */
    kvx_room_fail(r, KVX_ERR_TRANSPORT, "a backend thread failed it");
    kvx_room_unref(r);
    return NULL;
}
static void test_failure_owed(const kvx_backend *rec) {
    kvx_engine_desc d;
    kvx_engine *e = NULL;
    kvx_sender *s;
    kvx_room_desc rd;
    pthread_t th;
    char why[256];
    memset(&d, 0, sizeof d);
    d.role = KVX_ROLE_PREFILL;
    d.layout = small_layout();
    d.backend = rec;
    d.logger.func = gate_log;
    d.logger.level = KVX_LOG_ERROR;
    CHECK(kvx_engine_create(&d, &e, why, sizeof why) == KVX_OK, "engine: %s", why);
    if (!e) return;
    rec_reset();
    memset(&rd, 0, sizeof rd);
    rd.room = 4343;
    kvx_sender_create(e, &rd, &s);
    __atomic_store_n(&gate_hold, 1, __ATOMIC_RELEASE);
    kvx_room_ref((kvx_room *)s);
    pthread_create(&th, NULL, gate_failer, s);
    CHECK(kvx_sender_wait(s, KVX_POLL_SUCCESS, 60000) == KVX_POLL_FAILED, "the room failed");
    kvx_sender_destroy(s); /* the failing thread is still held in the logger */
    CHECK(__atomic_load_n(&rec_failed_calls, __ATOMIC_ACQUIRE) == 1,
          "destroying a room seen FAILED runs the notification still owed (%d calls)",
          rec_failed_calls);
    __atomic_store_n(&gate_hold, 0, __ATOMIC_RELEASE);
    pthread_join(th, NULL);
    kvx_engine_destroy(e);
    CHECK(__atomic_load_n(&rec_failed_calls, __ATOMIC_ACQUIRE) == 1,
          "and only once (%d calls)", rec_failed_calls);
}

/* A room_failed running on the progress thread (a transport that cancels
   the room's writes before it tells the peer, as rdma does) holds a
   destroy of the same room until it returns: room_close must not tear the
   room down under it (the peer would not be told, and the hook would read
   freed transport state). The hook is held until the destroy either says
   (DEBUG log) that it waits for it, or calls room_close: both observed. */
static pthread_mutex_t slow_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t slow_cv = PTHREAD_COND_INITIALIZER;
static int slow_started, slow_waiting, slow_closed, slow_closed_early, slow_done;
static void slow_set(int *flag) {
    pthread_mutex_lock(&slow_mu);
    *flag = 1;
    pthread_cond_broadcast(&slow_cv);
    pthread_mutex_unlock(&slow_mu);
}
/* Waits (60 s at most, reached only when broken) until *a or *b. */
static int slow_until(const int *a, const int *b) {
    struct timespec ts;
    int got;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += 60;
    pthread_mutex_lock(&slow_mu);
    while (!*a && !(b && *b))
        if (pthread_cond_timedwait(&slow_cv, &slow_mu, &ts) == ETIMEDOUT) break;
    got = *a || (b && *b);
    pthread_mutex_unlock(&slow_mu);
    return got;
}
static void slow_log(void *u, kvx_log_level lvl, const char *sub, uint64_t room, const char *m) {
    (void)u; (void)lvl; (void)sub; (void)room;
    if (strstr(m, "waits for room_failed")) slow_set(&slow_waiting);
}
static void slow_failed(kvx_room *r) {
    (void)r;
    slow_set(&slow_started);
    slow_until(&slow_waiting, &slow_closed); /* the destroy waits, or (broken) closed */
    slow_set(&slow_done);
}
static void slow_close(kvx_room *r) {
    (void)r;
    pthread_mutex_lock(&slow_mu);
    slow_closed_early = slow_started && !slow_done;
    slow_closed = 1;
    pthread_cond_broadcast(&slow_cv);
    pthread_mutex_unlock(&slow_mu);
}
static void test_failed_hook_vs_close(void) {
    static kvx_backend slow;
    kvx_engine_desc d;
    kvx_engine *e = NULL;
    kvx_sender *s;
    kvx_room_desc rd;
    char why[256];
    memset(&slow, 0, sizeof slow);
    slow.name = "slowfail";
    slow.room_open = rec_open;
    slow.room_failed = slow_failed;
    slow.room_close = slow_close;
    memset(&d, 0, sizeof d);
    d.role = KVX_ROLE_PREFILL;
    d.layout = small_layout();
    d.backend = &slow;
    d.logger.func = slow_log;
    d.logger.level = KVX_LOG_DEBUG;
    if (kvx_engine_create(&d, &e, why, sizeof why) != KVX_OK) {
        CHECK(0, "slowfail engine: %s", why);
        return;
    }
    memset(&rd, 0, sizeof rd);
    rd.room = 4545;
    kvx_sender_create(e, &rd, &s);
    kvx_sender_abort(s, "the test fails it");
    CHECK(slow_until(&slow_started, NULL), "the progress thread runs room_failed");
    kvx_sender_destroy(s);
    CHECK(!slow_closed_early && slow_done && slow_waiting,
          "a destroy waits for the room_failed in progress before room_close (closed early %d, "
          "said it waits %d)", slow_closed_early, slow_waiting);
    kvx_engine_destroy(e);
}

/* Issue 10 items 1-5 at the core: one notification per local failure, none
   for remote ones or for terminal rooms, first reason wins, refused calls
   leave no failure text, every sentence names the room. */
static void test_failure_semantics(void) {
    static kvx_backend rec, legacy;
    kvx_engine *pe, *le;
    kvx_sender *s;
    kvx_room_desc rd;
    int32_t pages[3] = {2, 0, 1}, bad[1] = {9};
    memset(&rec, 0, sizeof rec);
    rec.name = "recorder";
    rec.room_open = rec_open;
    rec.sender_send = rec_send;
    rec.room_failed = rec_failed;
    rec.room_abort = rec_abort;
    rec.room_close = rec_close;
    rec.progress = rec_progress;
    legacy = rec;
    legacy.name = "recorder-legacy";
    legacy.room_failed = NULL;
    test_failure_owed(&rec);
    test_failed_hook_vs_close();
    pe = make_engine(KVX_ROLE_PREFILL, &rec);
    le = make_engine(KVX_ROLE_PREFILL, &legacy);
    memset(&rd, 0, sizeof rd);
    rd.room = 4242;

    /* item 4: refused calls, then success: no failure text */
    rec_reset();
    kvx_sender_create(pe, &rd, &s);
    CHECK(kvx_sender_send(s, pages, 3) == KVX_ERR_STATE, "send before init refused");
    CHECK(kvx_sender_init(s, 3, -1) == KVX_OK, "init");
    CHECK(kvx_sender_init(s, 3, -1) == KVX_ERR_STATE, "init twice refused");
    CHECK(kvx_sender_send(s, pages, 3) == KVX_OK, "send");
    CHECK(kvx_sender_send(s, pages, 1) == KVX_ERR_STATE, "send after the last chunk refused");
    CHECK(kvx_sender_poll(s) == KVX_POLL_SUCCESS && kvx_sender_error(s)[0] == 0 &&
              kvx_sender_result(s) == KVX_OK,
          "success after refused calls: error '%s'", kvx_sender_error(s));
    CHECK_STR(kvx_sender_call_error(s), "send after the last chunk");
    /* item 2: abort after Success changes nothing and tells nobody */
    kvx_sender_abort(s, "too late");
    CHECK(kvx_sender_poll(s) == KVX_POLL_SUCCESS && kvx_sender_error(s)[0] == 0,
          "abort after success ignored");
    kvx_sender_destroy(s);
    /* destroy runs any notification still owed (before room_close), so the
       counts below are final */
    CHECK(__atomic_load_n(&rec_failed_calls, __ATOMIC_ACQUIRE) == 0 &&
              __atomic_load_n(&rec_abort_calls, __ATOMIC_ACQUIRE) == 0,
          "no hook for a room that succeeded (failed %d, abort %d)", rec_failed_calls,
          rec_abort_calls);

    /* item 1 + 5: a local refusal is handed to room_failed once, naming the room */
    rec_reset();
    kvx_sender_create(pe, &rd, &s);
    kvx_sender_init(s, 1, -1);
    CHECK(kvx_sender_send(s, bad, 1) == KVX_ERR_OUT_OF_RANGE, "bad page refused");
    CHECK(wait_count(&rec_failed_calls, 1) == 1, "room_failed called for a local failure");
    CHECK(!strncmp(rec_reason, "room 4242: ", 11) && strstr(rec_reason, "page index 9"),
          "the hook sees the first reason naming the room: '%s'", rec_reason);
    CHECK(!strncmp(kvx_sender_error(s), "room 4242: ", 11), "error names the room: '%s'",
          kvx_sender_error(s));
    /* item 3: later aborts change nothing */
    kvx_sender_abort(s, "second reason");
    kvx_sender_abort(s, "third reason");
    CHECK(kvx_sender_result(s) == KVX_ERR_OUT_OF_RANGE && strstr(kvx_sender_error(s), "page index 9"),
          "first reason wins: '%s'", kvx_sender_error(s));
    kvx_sender_destroy(s);
    CHECK(__atomic_load_n(&rec_failed_calls, __ATOMIC_ACQUIRE) == 1 &&
              __atomic_load_n(&rec_abort_calls, __ATOMIC_ACQUIRE) == 0,
          "exactly one notification, no room_abort for a backend with room_failed (%d, %d)",
          rec_failed_calls, rec_abort_calls);

    /* an abort: notified once with the abort's reason, even when the room is
       destroyed at once (the hook runs before room_close) */
    rec_reset();
    __atomic_store_n(&rec_hold, 1, __ATOMIC_RELEASE);
    wait_count(&rec_held, 1); /* the progress thread is parked in rec_progress */
    kvx_sender_create(pe, &rd, &s);
    kvx_sender_abort(s, "first");
    kvx_sender_abort(s, "second");
    kvx_sender_destroy(s);
    CHECK(__atomic_load_n(&rec_failed_calls, __ATOMIC_ACQUIRE) == 1,
          "destroy ran the owed notification itself (progress thread held): %d", rec_failed_calls);
    __atomic_store_n(&rec_hold, 0, __ATOMIC_RELEASE);
    CHECK(wait_count(&rec_failed_calls, 1) == 1 && strstr(rec_reason, "first") &&
              !strstr(rec_reason, "second"),
          "abort then destroy: one notification with the first reason: '%s'", rec_reason);
    CHECK(rec_close_after_failed == 1, "room_failed ran before room_close");

    /* a failure reported by the peer is not echoed back; its prefix is not doubled */
    rec_reset();
    kvx_sender_create(pe, &rd, &s);
    kvx_room_fail_remote((kvx_room *)s, KVX_ERR_PEER, "room 4242: the decode said no");
    kvx_room_fail((kvx_room *)s, KVX_ERR_IO, "a later local error");
    CHECK(!strcmp(kvx_sender_error(s), "room 4242: the decode said no"),
          "relayed reason kept as is: '%s'", kvx_sender_error(s));
    kvx_sender_destroy(s); /* runs any owed notification */
    CHECK(__atomic_load_n(&rec_failed_calls, __ATOMIC_ACQUIRE) == 0,
          "no notification for a remote failure (%d)", rec_failed_calls);

    /* engine destroy fails open rooms and notifies them */
    rec_reset();
    kvx_sender_create(pe, &rd, &s);
    kvx_engine_destroy(pe);
    CHECK(rec_failed_calls == 1 && strstr(rec_reason, "engine was destroyed"),
          "engine destroy notifies open rooms: %d '%s'", rec_failed_calls, rec_reason);

    /* legacy backends (no room_failed): room_abort only when the abort failed the room */
    rec_reset();
    kvx_sender_create(le, &rd, &s);
    kvx_sender_init(s, 1, -1);
    kvx_sender_send(s, pages, 1);
    kvx_sender_abort(s, "after success");
    CHECK(rec_abort_calls == 0, "legacy: no room_abort after success");
    kvx_sender_destroy(s);
    kvx_sender_create(le, &rd, &s);
    kvx_sender_abort(s, "one");
    kvx_sender_abort(s, "two");
    CHECK(rec_abort_calls == 1, "legacy: room_abort once for two aborts (%d)", rec_abort_calls);
    kvx_sender_destroy(s);
    kvx_engine_destroy(le);
}

/* Issue 10 item 10: every core setting has a range; values outside it are
   refused naming the variable instead of overflowing. */
static void test_settings(void) {
    static const struct { const char *var, *val; int ok; } cases[] = {
        {"KVX_BOOTSTRAP_TIMEOUT", "1e11", 0}, {"KVX_BOOTSTRAP_TIMEOUT", "-1", 0},
        {"KVX_BOOTSTRAP_TIMEOUT", "nan", 0},  {"KVX_BOOTSTRAP_TIMEOUT", "3x", 0},
        {"KVX_WAITING_TIMEOUT", "1e300", 0},  {"KVX_WAITING_TIMEOUT", "inf", 0},
        {"KVX_WAITING_TIMEOUT", "0", 1},      {"KVX_WAITING_TIMEOUT", "1e6", 1},
        {"KVX_POLL_INTERVAL_US", "0", 1},     {"KVX_POLL_INTERVAL_US", "2000000", 0},
        {"KVX_POLL_INTERVAL_US", "1.5", 0},   {"KVX_POLL_INTERVAL_US", "-3", 0},
    };
    kvx_engine_desc d;
    kvx_engine *e;
    char why[320];
    size_t i;
    for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        kvx_result r;
        memset(&d, 0, sizeof d);
        d.role = KVX_ROLE_DECODE;
        d.layout = small_layout();
        setenv(cases[i].var, cases[i].val, 1);
        e = NULL;
        why[0] = 0;
        r = kvx_engine_create(&d, &e, why, sizeof why);
        if (cases[i].ok) {
            CHECK(r == KVX_OK, "%s=%s accepted: %s", cases[i].var, cases[i].val, why);
        } else {
            CHECK(r == KVX_ERR_BAD_CONFIG && !e && strstr(why, cases[i].var),
                  "%s=%s refused naming it: %s", cases[i].var, cases[i].val, why);
        }
        if (e && !strcmp(cases[i].val, "0"))
            CHECK(kvx_engine_settings(e)->waiting_timeout_s == 300 &&
                      kvx_engine_settings(e)->poll_interval_us == 1000,
                  "0 means the default");
        kvx_engine_destroy(e);
        unsetenv(cases[i].var);
    }
    memset(&d, 0, sizeof d);
    d.role = KVX_ROLE_DECODE;
    d.layout = small_layout();
    d.bootstrap_timeout_s = -5;
    CHECK(kvx_engine_create(&d, &e, why, sizeof why) == KVX_ERR_BAD_CONFIG &&
              strstr(why, "KVX_BOOTSTRAP_TIMEOUT") && strstr(why, "desc"),
          "a negative desc timeout is refused: %s", why);
}

static void hex32(const uint8_t *m, char *out) {
    int i;
    for (i = 0; i < 32; i++) sprintf(out + 2 * i, "%02x", m[i]);
}

/* HMAC-SHA-256 against RFC 4231, the proof's shape, and the key settings. */
static void test_auth(void) {
    uint8_t key[131], mac[32], mac2[32], na[16], nb[16];
    char hex[65], path[64], why[320];
    const uint8_t *k;
    size_t klen;
    kvx_engine_desc d;
    kvx_engine *e;
    FILE *f;
    memset(key, 0x0b, 20);
    kvx__hmac_sha256(key, 20, "Hi There", 8, mac);
    hex32(mac, hex);
    CHECK(!strcmp(hex, "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"),
          "RFC 4231 case 1: %s", hex);
    kvx__hmac_sha256("Jefe", 4, "what do ya want for nothing?", 28, mac);
    hex32(mac, hex);
    CHECK(!strcmp(hex, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"),
          "RFC 4231 case 2: %s", hex);
    memset(key, 0xaa, 131);
    kvx__hmac_sha256(key, 131, "Test Using Larger Than Block-Size Key - Hash Key First", 54, mac);
    hex32(mac, hex);
    CHECK(!strcmp(hex, "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"),
          "RFC 4231 case 6 (long key): %s", hex);
    CHECK(kvx__equal_ct("abcd", "abcd", 4) && !kvx__equal_ct("abcd", "abce", 4), "equal_ct");
    CHECK(kvx__random_bytes(na, 16) == KVX_OK && kvx__random_bytes(nb, 16) == KVX_OK &&
              memcmp(na, nb, 16) != 0,
          "random nonces differ");
    kvx__auth_proof((const uint8_t *)"0123456789abcdef", 16, "kvx-test", na, nb, mac);
    kvx__auth_proof((const uint8_t *)"0123456789abcdef", 16, "kvx-test", nb, na, mac2);
    CHECK(memcmp(mac, mac2, 32) != 0, "the proof depends on the nonces' order");
    kvx__auth_proof((const uint8_t *)"0123456789abcdef", 16, "kvx-tesu", na, nb, mac2);
    CHECK(memcmp(mac, mac2, 32) != 0, "the proof depends on the label");

    memset(&d, 0, sizeof d);
    d.role = KVX_ROLE_DECODE;
    d.layout = small_layout();
    CHECK(kvx_engine_create(&d, &e, why, sizeof why) == KVX_OK &&
              kvx_engine_auth_key(e, &klen) == NULL && klen == 0,
          "no key by default");
    kvx_engine_destroy(e);
    d.auth_key = "short";
    CHECK(kvx_engine_create(&d, &e, why, sizeof why) == KVX_ERR_BAD_CONFIG && strstr(why, "16"),
          "a short key is refused: %s", why);
    d.auth_key = "a-long-enough-secret";
    CHECK(kvx_engine_create(&d, &e, why, sizeof why) == KVX_OK, "key from the desc: %s", why);
    k = kvx_engine_auth_key(e, &klen);
    CHECK(k && klen == 20 && !memcmp(k, "a-long-enough-secret", 20), "the key is kept");
    CHECK(kvx_engine_settings(e)->auth_key == NULL, "the settings do not expose the secret");
    kvx_engine_destroy(e);
    snprintf(path, sizeof path, "/tmp/kvx_test_key_%d", (int)getpid());
    f = fopen(path, "w");
    fputs("file-secret-0123456789\n", f);
    fclose(f);
    chmod(path, 0644);
    d.auth_key = NULL;
    d.auth_key_file = path;
    CHECK(kvx_engine_create(&d, &e, why, sizeof why) == KVX_ERR_PERMISSION && strstr(why, path) &&
              strstr(why, "0644"),
          "a key file others can read is refused: %s", why);
    chmod(path, 0600);
    CHECK(kvx_engine_create(&d, &e, why, sizeof why) == KVX_OK, "private key file: %s", why);
    k = kvx_engine_auth_key(e, &klen);
    CHECK(k && klen == 22 && !memcmp(k, "file-secret-0123456789", 22), "newline stripped");
    kvx_engine_destroy(e);
    setenv("KVX_AUTH_KEY", "env-secret-0123456789", 1);
    CHECK(kvx_engine_create(&d, &e, why, sizeof why) == KVX_ERR_BAD_CONFIG && strstr(why, "one"),
          "key and key file together are refused: %s", why);
    d.auth_key_file = NULL;
    CHECK(kvx_engine_create(&d, &e, why, sizeof why) == KVX_OK &&
              (k = kvx_engine_auth_key(e, &klen)) && klen == 21,
          "KVX_AUTH_KEY: %s", why);
    kvx_engine_destroy(e);
    unsetenv("KVX_AUTH_KEY");
    unlink(path);
}

static void test_results(void) {
    CHECK(!strcmp(kvx_result_str(KVX_ERR_TIMEOUT), "KVX_ERR_TIMEOUT"), "result names");
    CHECK(!strcmp(kvx_result_str((kvx_result)-999), "KVX_ERR_UNKNOWN"), "unknown result");
    CHECK(KVX_POLL_FAILED == 0 && KVX_POLL_BOOTSTRAPPING == 1 && KVX_POLL_WAITING_FOR_INPUT == 2 &&
              KVX_POLL_TRANSFERRING == 3 && KVX_POLL_SUCCESS == 4,
          "SGLang KVPoll codes");
    CHECK(!strcmp(kvx_poll_str(KVX_POLL_WAITING_FOR_INPUT), "WaitingForInput"), "poll names");
}

/* Every free, destroy and unref accepts NULL (and a zeroed object) and does
   nothing: cleanup paths need not test first. A crash here fails the test. */
static void test_null_frees(void) {
    kvx__json_doc d;
    kvx__buf b;
    kvx_plan p;
    memset(&d, 0, sizeof d);
    memset(&b, 0, sizeof b);
    memset(&p, 0, sizeof p);
    kvx__json_free(NULL);
    kvx__json_free(&d);
    kvx__buf_free(NULL);
    kvx__buf_free(&b);
    kvx_plan_free(NULL);
    kvx_plan_free(&p);
    kvx_engine_destroy(NULL);
    kvx_sender_destroy(NULL);
    kvx_receiver_destroy(NULL);
    kvx_chunk_free(NULL, NULL);
    kvx__workq_destroy(NULL);
    kvx_room_unref(NULL);
}

int main(void) {
    kt_name = "test_core";
    test_results();
    test_checksums();
    test_json();
    test_layout();
    test_aux_rows();
    test_plan();
    test_plan_random();
    test_pages_dups();
    test_engine_errors();
    test_fake_flow();
    test_room_table();
    test_timeouts();
    test_wait();
    test_failure_semantics();
    test_settings();
    test_null_frees();
    test_auth();
    return kt_done();
}
