/* Unit tests of the plan's aux rows (issue 12, "the plan owns aux rows"):
   KVX_SPAN_AUX spans from kvx_plan_aux / kvx_plan_aux_gather /
   kvx_plan_aux_scatter, their checks, the packed layout after the pages, and
   kvx_span_addr resolving every span, so no transport or store computes a
   page or row address itself. */
#define KVX_IMPLEMENTATION
#include "../../kvx.h"
#include "../kvx_test.h"

/* A pool of 3 buffers of 4 pages (item_len 16) and 2 aux buffers of 4 slots
   (item_len 3 and 5); `seed` fills it with distinct bytes. */
typedef struct pool {
    uint8_t kv[3][64], a0[4 * 3], a1[4 * 5];
    kvx_buffer bufs[3];
    kvx_aux_buffer aux[2];
    kvx_layout l;
} pool;

static void pool_init(pool *p, int seed) {
    int i, b;
    memset(p, 0, sizeof *p);
    for (b = 0; b < 3; b++) {
        for (i = 0; i < 64; i++) p->kv[b][i] = (uint8_t)(seed + b * 64 + i);
        p->bufs[b].base = p->kv[b];
        p->bufs[b].length = 64;
        p->bufs[b].item_len = 16;
    }
    for (i = 0; i < (int)sizeof p->a0; i++) p->a0[i] = (uint8_t)(seed + 200 + i);
    for (i = 0; i < (int)sizeof p->a1; i++) p->a1[i] = (uint8_t)(seed + 220 + i);
    p->aux[0].base = p->a0; p->aux[0].length = sizeof p->a0; p->aux[0].item_len = 3;
    p->aux[1].base = p->a1; p->aux[1].length = sizeof p->a1; p->aux[1].item_len = 5;
    p->l.buffers = p->bufs;
    p->l.num_buffers = 3;
    p->l.aux = p->aux;
    p->l.num_aux = 2;
    p->l.page_size = 4;
    p->l.num_kv_heads = 1;
    p->l.dtype_size = 2;
}

/* Runs a two-sided plan with nothing but the spans and kvx_span_addr. */
static void run_plan(const kvx_plan *p, const kvx_layout *src, const kvx_layout *dst) {
    size_t i;
    for (i = 0; i < p->count; i++)
        memcpy(kvx_span_addr(dst, &p->spans[i], 1), kvx_span_addr(src, &p->spans[i], 0),
               (size_t)p->spans[i].length);
}

static void test_two_sided(void) {
    static pool s, d, want;
    kvx_plan p;
    int32_t sp[2] = {1, 2}, dp[2] = {3, 0};
    memset(&p, 0, sizeof p);
    pool_init(&s, 0);
    pool_init(&d, 100);
    pool_init(&want, 100);
    CHECK(kvx_plan_pages(&p, &s.l, sp, &d.l, dp, 2) == KVX_OK, "pages: %s", p.error);
    CHECK(p.count == 6, "6 page spans, got %zu", p.count);
    CHECK(kvx_plan_aux(&p, &s.l, 2, &d.l, 1) == KVX_OK, "aux: %s", p.error);
    CHECK(p.count == 8, "one aux span per aux buffer after the pages, got %zu", p.count);
    CHECK(p.spans[0].kind == KVX_SPAN_PAGES && p.spans[5].kind == KVX_SPAN_PAGES,
          "page spans are KVX_SPAN_PAGES");
    CHECK(p.spans[6].kind == KVX_SPAN_AUX && p.spans[6].buffer == 0 &&
              p.spans[6].src_offset == 6 && p.spans[6].dst_offset == 3 && p.spans[6].length == 3,
          "aux buffer 0: slot 2 -> slot 1 of 3 bytes (%llu -> %llu, %llu)",
          (unsigned long long)p.spans[6].src_offset, (unsigned long long)p.spans[6].dst_offset,
          (unsigned long long)p.spans[6].length);
    CHECK(p.spans[7].kind == KVX_SPAN_AUX && p.spans[7].buffer == 1 &&
              p.spans[7].src_offset == 10 && p.spans[7].dst_offset == 5 && p.spans[7].length == 5,
          "aux buffer 1: slot 2 -> slot 1 of 5 bytes");
    CHECK(p.total_bytes == 2 * 48 + 8, "total bytes count the aux row: %llu",
          (unsigned long long)p.total_bytes);
    CHECK(p.packed_bytes == 0, "a two-sided plan has no packed side");
    run_plan(&p, &s.l, &d.l);
    memcpy(want.kv[0] + 48, s.kv[0] + 16, 16);
    memcpy(want.kv[0] + 0, s.kv[0] + 32, 16);
    memcpy(want.kv[1] + 48, s.kv[1] + 16, 16);
    memcpy(want.kv[1] + 0, s.kv[1] + 32, 16);
    memcpy(want.kv[2] + 48, s.kv[2] + 16, 16);
    memcpy(want.kv[2] + 0, s.kv[2] + 32, 16);
    memcpy(want.a0 + 3, s.a0 + 6, 3);
    memcpy(want.a1 + 5, s.a1 + 10, 5);
    CHECK(!memcmp(d.kv, want.kv, sizeof d.kv), "pages landed, nothing else touched");
    CHECK(!memcmp(d.a0, want.a0, sizeof d.a0) && !memcmp(d.a1, want.a1, sizeof d.a1),
          "aux rows landed in slot 1, the other slots untouched");
    kvx_plan_free(&p);
}

static void test_checks(void) {
    static pool s, d;
    kvx_plan p;
    kvx_aux_buffer other[2];
    int32_t pg[1] = {0};
    memset(&p, 0, sizeof p);
    pool_init(&s, 0);
    pool_init(&d, 100);
    CHECK(kvx_plan_pages(&p, &s.l, pg, &d.l, pg, 1) == KVX_OK && p.count == 3, "pages");
    CHECK(kvx_plan_aux(&p, &s.l, 3, &d.l, 0) == KVX_OK && p.count == 5, "last slot is in range");
    CHECK(kvx_plan_aux(&p, &s.l, 4, &d.l, 0) == KVX_ERR_OUT_OF_RANGE, "source slot 4 of 4");
    CHECK_STR(p.error, "source aux slot 4 is outside the 4 slots");
    CHECK(kvx_plan_aux(&p, &s.l, -1, &d.l, 0) == KVX_ERR_OUT_OF_RANGE, "source slot -1");
    CHECK(kvx_plan_aux(&p, &s.l, 0, &d.l, 4) == KVX_ERR_OUT_OF_RANGE, "destination slot 4");
    CHECK_STR(p.error, "destination aux slot 4");
    CHECK(kvx_plan_aux(&p, &s.l, 0, &d.l, -1) == KVX_ERR_OUT_OF_RANGE, "destination slot -1");
    d.aux[1].length = 5 * 2; /* the destination holds only 2 slots */
    CHECK(kvx_plan_aux(&p, &s.l, 3, &d.l, 2) == KVX_ERR_OUT_OF_RANGE,
          "a slot beyond the destination's shortest aux buffer");
    d.aux[1].length = 5 * 4;
    CHECK(kvx_plan_aux_gather(&p, &s.l, 4) == KVX_ERR_OUT_OF_RANGE, "gather slot 4");
    CHECK(kvx_plan_aux_scatter(&p, &s.l, -2) == KVX_ERR_OUT_OF_RANGE, "scatter slot -2");
    memcpy(other, d.aux, sizeof other);
    other[1].item_len = 4;
    other[1].length = 16;
    d.l.aux = other;
    CHECK(kvx_plan_aux(&p, &s.l, 0, &d.l, 0) == KVX_ERR_LAYOUT_MISMATCH, "item_len differs");
    CHECK_STR(p.error, "item_len of aux buffer 1 differs: source 5, destination 4");
    d.l.aux = d.aux;
    d.l.num_aux = 1;
    CHECK(kvx_plan_aux(&p, &s.l, 0, &d.l, 0) == KVX_ERR_LAYOUT_MISMATCH, "aux count differs");
    CHECK_STR(p.error, "aux buffer count differs: source 2, destination 1");
    CHECK(p.count == 5 && p.total_bytes == 48 + 8, "a refused call leaves the plan as it was");
    d.l.num_aux = 0;
    s.l.num_aux = 0;
    CHECK(kvx_plan_aux(&p, &s.l, 0, &d.l, 0) == KVX_ERR_OUT_OF_RANGE,
          "no aux buffers: no slot is in range");
    CHECK(kvx_plan_aux(NULL, &s.l, 0, &d.l, 0) == KVX_ERR_INVALID_ARGUMENT &&
              kvx_plan_aux(&p, NULL, 0, &d.l, 0) == KVX_ERR_INVALID_ARGUMENT &&
              kvx_plan_aux_gather(&p, NULL, 0) == KVX_ERR_INVALID_ARGUMENT &&
              kvx_plan_aux_scatter(NULL, &s.l, 0) == KVX_ERR_INVALID_ARGUMENT,
          "NULL arguments");
    kvx_plan_free(&p);
}

/* Gather pages and aux row into one packed region, scatter it into another
   pool: the aux row sits right after n * page_bytes, as kvx_layout_aux_copy
   packs it. */
static void test_one_sided(void) {
    static pool s, d;
    kvx_plan p;
    uint8_t packed[3 * 48 + 8], row[8];
    int32_t sp[3] = {2, 0, 3}, dp[3] = {1, 2, 3};
    size_t i;
    memset(&p, 0, sizeof p);
    pool_init(&s, 0);
    pool_init(&d, 100);
    CHECK(kvx_plan_gather(&p, &s.l, sp, 3) == KVX_OK, "gather: %s", p.error);
    CHECK(kvx_plan_aux_gather(&p, &s.l, 1) == KVX_OK, "aux gather: %s", p.error);
    CHECK(p.packed_bytes == 3 * 48 + 8, "packed bytes = pages + aux row, got %llu",
          (unsigned long long)p.packed_bytes);
    CHECK(p.count >= 2 && p.spans[p.count - 2].kind == KVX_SPAN_AUX &&
              p.spans[p.count - 2].dst_offset == 3 * 48 &&
              p.spans[p.count - 2].src_offset == 3 &&
              p.spans[p.count - 1].dst_offset == 3 * 48 + 3 &&
              p.spans[p.count - 1].src_offset == 5,
          "aux rows packed right after the pages, buffer 0 then 1");
    for (i = 0; i < p.count; i++)
        memcpy(packed + p.spans[i].dst_offset, kvx_span_addr(&s.l, &p.spans[i], 0),
               (size_t)p.spans[i].length);
    kvx_layout_aux_copy(&s.l, 1, row, 0);
    CHECK(!memcmp(packed + 3 * 48, row, 8), "the packed aux row is kvx_layout_aux_copy's");
    CHECK(!memcmp(packed, s.kv[0] + 32, 16) && !memcmp(packed + 48 + 16, s.kv[1] + 0, 16),
          "pages packed buffer-major");
    CHECK(kvx_plan_scatter(&p, &d.l, dp, 3) == KVX_OK, "scatter: %s", p.error);
    CHECK(kvx_plan_aux_scatter(&p, &d.l, 3) == KVX_OK, "aux scatter: %s", p.error);
    CHECK(p.packed_bytes == 3 * 48 + 8 && p.spans[p.count - 1].src_offset == 3 * 48 + 3 &&
              p.spans[p.count - 1].dst_offset == 15,
          "scatter: packed aux row -> slot 3");
    for (i = 0; i < p.count; i++)
        memcpy(kvx_span_addr(&d.l, &p.spans[i], 1), packed + p.spans[i].src_offset,
               (size_t)p.spans[i].length);
    CHECK(!memcmp(d.a0 + 9, s.a0 + 3, 3) && !memcmp(d.a1 + 15, s.a1 + 5, 5),
          "slot 1's rows arrived in slot 3");
    CHECK(!memcmp(d.kv[2] + 16, s.kv[2] + 32, 16) && !memcmp(d.kv[2] + 48, s.kv[2] + 48, 16),
          "pages arrived");
    /* an aux row alone: a plan of 0 pages, then the row at offset 0 */
    CHECK(kvx_plan_gather(&p, &s.l, NULL, 0) == KVX_OK && p.packed_bytes == 0, "0 pages");
    CHECK(kvx_plan_aux_gather(&p, &s.l, 0) == KVX_OK && p.count == 2 && p.packed_bytes == 8 &&
              p.total_bytes == 8 && p.spans[0].dst_offset == 0 && p.spans[1].dst_offset == 3,
          "aux row alone: packed at 0 and 3, 8 bytes");
    kvx_plan_free(&p);
}

static void test_span_addr(void) {
    static pool s;
    kvx_span sp;
    kvx_plan p;
    kvx_span mine[3];
    int32_t pg[1] = {3};
    pool_init(&s, 0);
    memset(&sp, 0, sizeof sp);
    sp.buffer = sp.dst_buffer = 2;
    sp.src_offset = 16;
    sp.dst_offset = 32;
    sp.kind = KVX_SPAN_PAGES;
    CHECK(kvx_span_addr(&s.l, &sp, 0) == s.kv[2] + 16 && kvx_span_addr(&s.l, &sp, 1) == s.kv[2] + 32,
          "pages span: buffers[2] + offset on each side");
    sp.kind = KVX_SPAN_AUX;
    sp.buffer = 1;
    CHECK(kvx_span_addr(&s.l, &sp, 0) == s.a1 + 16, "aux span: aux[1] + offset");
    sp.buffer = 2;
    CHECK(kvx_span_addr(&s.l, &sp, 0) == NULL, "aux span of a buffer the layout lacks: NULL");
    sp.kind = KVX_SPAN_PAGES;
    sp.buffer = 3;
    CHECK(kvx_span_addr(&s.l, &sp, 0) == NULL, "pages span of a buffer the layout lacks: NULL");
    sp.buffer = 0;
    sp.kind = 7;
    CHECK(kvx_span_addr(&s.l, &sp, 0) == NULL, "unknown kind: NULL");
    CHECK(kvx_span_addr(NULL, &sp, 0) == NULL && kvx_span_addr(&s.l, NULL, 0) == NULL, "NULL");
    /* caller storage: a one-page plan of 3 buffers fits 3 spans, no allocation */
    memset(&p, 0, sizeof p);
    p.spans = mine;
    p.capacity = 3;
    CHECK(kvx_plan_gather(&p, &s.l, pg, 1) == KVX_OK && p.spans == mine && p.count == 3,
          "a plan that fits the caller's spans keeps them");
    CHECK(kvx_span_addr(&s.l, &mine[1], 0) == s.kv[1] + 48 && mine[1].dst_offset == 16,
          "page 3 of buffer 1, packed after buffer 0's page");
}

int main(void) {
    kt_name = "test_plan_aux";
    test_two_sided();
    test_checks();
    test_one_sided();
    test_span_addr();
    return kt_done();
}
