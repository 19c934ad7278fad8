/* test_plan_compact.c - compact plans (kvx.h COMPACT PLANS): one run list
   per request and one entry per buffer give, through kvx_plan_span, every
   span the expanded plan gives, for every builder (two-sided, gather,
   scatter, scatter_from), with a layer filter, with aux and state spans
   appended, reused across requests of other sizes, and when memory runs
   out; executing one moves every byte to its place. The heterogeneous TP
   and PP forms are compared in test_plan_slice. */
#define KVX_IMPLEMENTATION
#include "../../kvx.h"
#include "../../examples/kvx_example.h"
#include "../kvx_test.h"
#include "plan_same.h"

#define POOL 512

static const ex_model llama = {"llama", 6, 2, 8, 2, 0, "bfloat16"};
static const ex_model mla = {"mla", 5, 1, 36, 2, 1, "bfloat16"};

/* n request pages: runs of random length (1..8) at random places, distinct
   unless `repeat` (a gather's source may repeat). */
static void pages(int32_t *pg, size_t n, uint64_t seed, int repeat) {
    static uint8_t used[POOL];
    size_t i = 0;
    memset(used, 0, sizeof used);
    while (i < n) {
        uint64_t r = ex_mix(seed + i);
        int32_t at = (int32_t)(r % POOL);
        size_t len = 1 + (size_t)((r >> 20) % 8), k;
        for (k = 0; k < len && i < n; k++, at = (at + 1) % POOL) {
            if (!repeat && used[at]) {
                while (used[at]) at = (at + 1) % POOL;
            }
            used[at] = 1;
            pg[i++] = at;
        }
    }
}

/* Every builder, expanded and compact, with and without a layer filter. */
static void builders(const ex_model *m, size_t n, uint64_t seed) {
    ex_pool a, b;
    int32_t *sp = (int32_t *)malloc((n + 1) * sizeof *sp), *dp = (int32_t *)malloc((n + 1) * sizeof *dp);
    int f;
    char what[128];
    CHECK(ex_pool_init(&a, m, POOL, 16, 2, 1) == 0 && ex_pool_init(&b, m, POOL, 16, 2, 2) == 0,
          "%s: pools", m->name);
    pages(sp, n, seed, 0);
    pages(dp, n, seed + 7777, 0);
    for (f = 0; f < 3; f++) {
        uint32_t lb = f == 0 ? 0 : f == 1 ? 1 : m->layers - 1, le = f == 0 ? 0 : f == 1 ? 3 : m->layers;
        int kind;
        for (kind = 0; kind < 4; kind++) {
            kvx_plan x, c;
            kvx_result rx, rc;
            uint32_t kept = 0, i;
            memset(&x, 0, sizeof x);
            memset(&c, 0, sizeof c);
            c.compact = 1;
            x.layer_begin = c.layer_begin = lb;
            x.layer_end = c.layer_end = le;
            snprintf(what, sizeof what, "%s %zu pages seed %llu layers [%u,%u) %s", m->name, n,
                     (unsigned long long)seed, lb, le,
                     kind == 0 ? "pages" : kind == 1 ? "gather" : kind == 2 ? "scatter" : "scatter_from");
            if (kind == 0) {
                rx = kvx_plan_pages(&x, &a.layout, sp, &b.layout, dp, n);
                rc = kvx_plan_pages(&c, &a.layout, sp, &b.layout, dp, n);
            } else if (kind == 1) {
                rx = kvx_plan_gather(&x, &a.layout, sp, n);
                rc = kvx_plan_gather(&c, &a.layout, sp, n);
            } else if (kind == 2) {
                rx = kvx_plan_scatter(&x, &b.layout, dp, n);
                rc = kvx_plan_scatter(&c, &b.layout, dp, n);
            } else {
                rx = kvx_plan_scatter_from(&x, &b.layout, dp, n, &a.layout);
                rc = kvx_plan_scatter_from(&c, &b.layout, dp, n, &a.layout);
            }
            CHECK(rx == KVX_OK && rc == KVX_OK, "%s: built (%s / %s)", what, x.error, c.error);
            for (i = 0; i < a.layout.num_buffers; i++) {
                uint32_t layer = m->mla ? i : i % m->layers;
                kept += !le || (layer >= lb && layer < le);
            }
            CHECK(c.nbufs == kept, "%s: %zu buffer entries, %u buffers kept", what, c.nbufs, kept);
            plan_same(&x, &c, c.nbufs * c.nruns, what);
            CHECK(!c.spans, "%s: the compact page spans took span storage", what);
            kvx_plan_free(&x);
            kvx_plan_free(&c);
            CHECK(c.compact == 1 && c.layer_end == 0 && !c.runs && !c.bufs,
                  "%s: kvx_plan_free keeps compact, clears the filter and the lists", what);
        }
    }
    ex_pool_free(&a);
    ex_pool_free(&b);
    free(sp);
    free(dp);
}

/* Aux and state spans after compact page spans, on both plan forms; the
   compact plan executed through kvx_plan_span moves every byte. */
static void appended(void) {
    ex_pool a, b;
    int32_t sp[40], dp[40], si[3] = {5, 6, 1}, di[3] = {0, 2, 3};
    kvx_plan x, c;
    size_t k;
    uint64_t room = 0xC0FFEE;
    CHECK(ex_pool_init(&a, &llama, POOL, 16, 4, 1) == 0 && ex_pool_init(&b, &llama, POOL, 16, 4, 2) == 0,
          "appended: pools");
    CHECK(ex_pool_add_state(&a, KVX_STATE_MAMBA, 2, 64, 8) == 0 &&
              ex_pool_add_state(&b, KVX_STATE_MAMBA, 2, 64, 8) == 0, "appended: state buffers");
    pages(sp, 40, 99, 0);
    pages(dp, 40, 98, 0);
    ex_pages_pattern(&a, room, sp, 40, 1);
    ex_state_pattern(&a, room, si, 3, 1);
    memset(&x, 0, sizeof x);
    memset(&c, 0, sizeof c);
    c.compact = 1;
    CHECK(kvx_plan_pages(&x, &a.layout, sp, &b.layout, dp, 40) == KVX_OK &&
              kvx_plan_aux(&x, &a.layout, 1, &b.layout, 3) == KVX_OK &&
              kvx_plan_state(&x, &a.layout, si, &b.layout, di, 3) == KVX_OK,
          "appended: expanded plan: %s", x.error);
    CHECK(kvx_plan_pages(&c, &a.layout, sp, &b.layout, dp, 40) == KVX_OK &&
              kvx_plan_aux(&c, &a.layout, 1, &b.layout, 3) == KVX_OK &&
              kvx_plan_state(&c, &a.layout, si, &b.layout, di, 3) == KVX_OK,
          "appended: compact plan: %s", c.error);
    plan_same(&x, &c, c.nbufs * c.nruns, "pages + aux + state");
    CHECK(c.count - c.paged == a.layout.num_aux + 3 * 2 && c.capacity >= c.count - c.paged &&
              c.spans && c.spans[0].kind == KVX_SPAN_AUX,
          "appended: spans[] holds the %zu aux and state spans only (%zu)",
          (size_t)(a.layout.num_aux + 6), c.count - c.paged);
    for (k = 0; k < c.count; k++) {
        kvx_span t;
        const kvx_span *s = kvx_plan_span(&c, k, &t);
        kvx_span_copy((char *)kvx_span_addr(&b.layout, s, 1) - s->dst_offset,
                      (char *)kvx_span_addr(&a.layout, s, 0) - s->src_offset, s);
    }
    CHECK(ex_pages_pattern(&b, room, dp, 40, 0) == 0, "appended: every page in place");
    CHECK(ex_state_pattern(&b, room, di, 3, 0) == 0, "appended: every state row in place");
    {
        uint32_t i;
        uint64_t bad = 0;
        for (i = 0; i < a.layout.num_aux; i++)
            bad += memcmp((char *)b.layout.aux[i].base + 3 * b.layout.aux[i].item_len,
                          (char *)a.layout.aux[i].base + a.layout.aux[i].item_len,
                          (size_t)a.layout.aux[i].item_len) != 0;
        CHECK(bad == 0, "appended: aux rows of slot 1 in slot 3 (%llu differ)", (unsigned long long)bad);
    }
    /* the same compact plan reused: a bigger request, then none, then a small one */
    {
        static int32_t p2[300], q2[300];
        size_t sizes[] = {300, 0, 3, 300}, i;
        pages(p2, 300, 5, 0);
        pages(q2, 300, 6, 0);
        for (i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
            char what[64];
            snprintf(what, sizeof what, "reused for %zu pages", sizes[i]);
            CHECK(kvx_plan_gather(&x, &a.layout, p2, sizes[i]) == KVX_OK &&
                      kvx_plan_gather(&c, &a.layout, p2, sizes[i]) == KVX_OK,
                  "%s: built", what);
            CHECK(kvx_plan_aux_gather(&x, &a.layout, 2) == KVX_OK &&
                      kvx_plan_aux_gather(&c, &a.layout, 2) == KVX_OK, "%s: aux", what);
            plan_same(&x, &c, sizes[i] ? c.nbufs * c.nruns : 0, what);
        }
    }
    kvx_plan_free(&x);
    kvx_plan_free(&c);
    ex_pool_free(&a);
    ex_pool_free(&b);
}

/* An allocator that fails from the n-th call on. */
static int fail_at, calls;
static void *fail_alloc(size_t sz, void *u) {
    (void)u;
    return ++calls >= fail_at ? NULL : malloc(sz);
}
static void fail_free(void *p, void *u) {
    (void)u;
    free(p);
}

/* Memory running out at each allocation of a compact build: a sentence,
   and the plan builds again once memory is back. */
static void out_of_memory(void) {
    kvx_allocator al = {fail_alloc, fail_free, NULL};
    ex_pool a;
    int32_t sp[64];
    int at, failed = 0;
    CHECK(ex_pool_init(&a, &llama, POOL, 16, 2, 1) == 0, "oom: pool");
    pages(sp, 64, 3, 1);
    for (at = 1; at <= 4; at++) {
        kvx_plan c, x;
        kvx_result r;
        memset(&c, 0, sizeof c);
        memset(&x, 0, sizeof x);
        c.allocator = &al;
        c.compact = 1;
        calls = 0;
        fail_at = at;
        r = kvx_plan_gather(&c, &a.layout, sp, 64);
        if (r != KVX_OK) {
            failed++;
            CHECK(r == KVX_ERR_NO_MEMORY && strstr(c.error, "out of memory"),
                  "oom at allocation %d: %d, '%s'", at, (int)r, c.error);
        }
        fail_at = 1000;
        CHECK(kvx_plan_gather(&c, &a.layout, sp, 64) == KVX_OK &&
                  kvx_plan_gather(&x, &a.layout, sp, 64) == KVX_OK,
              "oom at allocation %d: builds again with memory", at);
        plan_same(&x, &c, c.nbufs * c.nruns, "after running out of memory");
        kvx_plan_free(&c);
        kvx_plan_free(&x);
    }
    CHECK(failed == 2, "a compact build makes two allocations (runs, buffers): %d failed", failed);
    ex_pool_free(&a);
}

int main(void) {
    static const size_t sizes[] = {1, 2, 17, 256, 300};
    size_t i;
    uint64_t seed;
    kt_name = "test_plan_compact";
    for (i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
        for (seed = 1; seed <= 3; seed++) {
            builders(&llama, sizes[i], seed * 31 + i);
            builders(&mla, sizes[i], seed * 37 + i);
        }
    appended();
    out_of_memory();
    return kt_done();
}
