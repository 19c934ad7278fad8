/* test_plan_slice.c - plans between ranks that hold different heads and
   layers (kvx.h PARALLEL LAYOUTS): heterogeneous TP both ways, TP beyond the
   KV heads, MLA, PP, through two-sided plans and through gather +
   kvx_plan_scatter_from; every head of every token verified against
   independently seeded content, every byte counted once. */
#define KVX_IMPLEMENTATION
#include "../../kvx.h"
#include "../../examples/kvx_example.h"
#include "../kvx_test.h"
#include "plan_same.h"

#define NPAGES 24 /* request pages */
#define POOL 64

static const ex_model mha = {"gqa", 4, 8, 8, 2, 0, "bfloat16"}; /* 8 KV heads of 16 bytes */
static const ex_model mla = {"mla", 4, 1, 36, 2, 1, "bfloat16"};

/* The prefill ranks whose bytes a decode rank needs (SGLang's mapping):
   [*first, *first + *count) of the prefill TP ranks. */
static void map_tp(uint32_t ptp, uint32_t dtp, uint32_t d, uint32_t *first, uint32_t *count) {
    if (ptp >= dtp) {
        *count = ptp / dtp;
        *first = d * *count;
    } else {
        *count = 1;
        *first = d / (dtp / ptp);
    }
}

/* n distinct pages of the pool: a run of n / 3 consecutive pages from 40
   (runs merge into one span), then the rest scattered. */
static void shuffle_pages(int32_t *pg, uint32_t n, uint64_t seed) {
    int32_t all[POOL];
    uint32_t i, k = 0, run = n / 3;
    for (i = 0; i < POOL; i++) all[i] = (int32_t)i;
    for (i = POOL; i > 1; i--) {
        uint32_t j = (uint32_t)(ex_mix(seed + i) % i);
        int32_t t = all[i - 1];
        all[i - 1] = all[j];
        all[j] = t;
    }
    for (i = 0; i < run; i++) pg[k++] = 40 + (int32_t)i;
    for (i = 0; k < n; i++)
        if (all[i] < 40 || all[i] >= 40 + (int32_t)run) pg[k++] = all[i];
}

/* Runs one topology through both plan forms. */
static void topo(const ex_model *m, uint32_t ptp, uint32_t dtp, uint32_t ppp, uint32_t dpp,
                 int one_sided) {
    static ex_pool P[16][2], D[16][2];
    int32_t sp[NPAGES], dp[NPAGES];
    uint32_t a, b, q, r;
    const uint64_t room = 0x5EED0000ull + ptp * 100 + dtp * 10 + ppp + dpp * 1000 + (uint64_t)m->mla;
    char label[96];
    snprintf(label, sizeof label, "%s tp %u->%u pp %u->%u %s", m->name, ptp, dtp, ppp, dpp,
             one_sided ? "gather+scatter_from" : "two-sided");
    shuffle_pages(sp, NPAGES, 1);
    shuffle_pages(dp, NPAGES, 2);
    for (a = 0; a < ptp; a++)
        for (q = 0; q < ppp; q++) {
            ex_rank rk = {ptp, a, ppp, q};
            CHECK(ex_pool_init_rank(&P[a][q], m, POOL, 4, 2, 1, &rk) == 0, "%s: prefill pool", label);
            ex_pages_pattern(&P[a][q], room, sp, NPAGES, 1);
        }
    for (b = 0; b < dtp; b++)
        for (r = 0; r < dpp; r++) {
            ex_rank rk = {dtp, b, dpp, r};
            ex_pool *d = &D[b][r];
            uint64_t got = 0, want, bpp;
            uint32_t first, count, i, aux_senders = 0;
            CHECK(ex_pool_init_rank(d, m, POOL, 4, 2, 2, &rk) == 0, "%s: decode pool", label);
            for (i = 0; i < d->layout.num_buffers; i++) memset(d->bufs[i].base, 0xEE, d->bufs[i].length);
            map_tp(ptp, dtp, b, &first, &count);
            for (a = first; a < first + count; a++)
                for (q = 0; q < ppp; q++) {
                    ex_pool *s = &P[a][q];
                    kvx_plan pl;
                    int aux = 0;
                    char why[KVX_ERROR_MAX];
                    if (dpp == ppp && q != r) continue; /* PP rank to rank */
                    if (kvx_mla_dummy(m->mla, (int)ptp, (int)a, (int)dtp)) continue;
                    CHECK(kvx_layout_overlap(&s->layout, &d->layout, &bpp, &aux, why, sizeof why) ==
                              KVX_OK && bpp > 0,
                          "%s: prefill %u/%u overlaps decode %u/%u: %s", label, a, q, b, r, why);
                    aux_senders += (uint32_t)aux;
                    kvx_plan cp; /* the compact form executes; the expanded one is compared */
                    memset(&pl, 0, sizeof pl);
                    memset(&cp, 0, sizeof cp);
                    cp.compact = 1;
                    if (!one_sided) {
                        CHECK(kvx_plan_pages(&pl, &s->layout, sp, &d->layout, dp, NPAGES) == KVX_OK,
                              "%s: plan: %s", label, pl.error);
                        CHECK(kvx_plan_pages(&cp, &s->layout, sp, &d->layout, dp, NPAGES) == KVX_OK,
                              "%s: compact plan: %s", label, cp.error);
                        plan_same(&pl, &cp, cp.count, label);
                        for (i = 0; i < cp.count; i++) {
                            kvx_span t;
                            const kvx_span *x = kvx_plan_span(&cp, i, &t);
                            kvx_span_copy(d->bufs[x->dst_buffer].base, s->bufs[x->buffer].base, x);
                        }
                    } else {
                        kvx_plan g, cg;
                        char *packed = (char *)malloc((size_t)(NPAGES * kvx_layout_page_bytes(&s->layout)));
                        memset(&g, 0, sizeof g);
                        memset(&cg, 0, sizeof cg);
                        cg.compact = 1;
                        CHECK(kvx_plan_gather(&g, &s->layout, sp, NPAGES) == KVX_OK, "%s: gather", label);
                        CHECK(kvx_plan_gather(&cg, &s->layout, sp, NPAGES) == KVX_OK, "%s: compact gather",
                              label);
                        plan_same(&g, &cg, cg.count, label);
                        for (i = 0; i < cg.count; i++) {
                            kvx_span t;
                            const kvx_span *x = kvx_plan_span(&cg, i, &t);
                            kvx_span_copy(packed, s->bufs[x->buffer].base, x);
                        }
                        CHECK(kvx_plan_scatter_from(&pl, &d->layout, dp, NPAGES, &s->layout) == KVX_OK,
                              "%s: scatter_from: %s", label, pl.error);
                        CHECK(kvx_plan_scatter_from(&cp, &d->layout, dp, NPAGES, &s->layout) == KVX_OK,
                              "%s: compact scatter_from: %s", label, cp.error);
                        plan_same(&pl, &cp, cp.count, label);
                        CHECK(pl.packed_bytes == g.packed_bytes, "%s: packed sizes agree", label);
                        for (i = 0; i < cp.count; i++) {
                            kvx_span t;
                            const kvx_span *x = kvx_plan_span(&cp, i, &t);
                            kvx_span_copy(d->bufs[x->dst_buffer].base, packed, x);
                        }
                        kvx_plan_free(&g);
                        kvx_plan_free(&cg);
                        free(packed);
                    }
                    CHECK(pl.total_bytes == bpp * NPAGES, "%s: plan moves %llu bytes, overlap says %llu",
                          label, (unsigned long long)pl.total_bytes,
                          (unsigned long long)(bpp * NPAGES));
                    /* never one span per token: at most one per (buffer, run of pages) */
                    CHECK(pl.count <= (uint64_t)s->layout.num_buffers * NPAGES,
                          "%s: %zu spans", label, pl.count);
                    CHECK((pl.strided != 0) == (!m->mla && ptp != dtp), "%s: strided spans %zu",
                          label, pl.strided);
                    got += pl.total_bytes;
                    kvx_plan_free(&pl);
                    kvx_plan_free(&cp);
                }
            want = (uint64_t)NPAGES * kvx_layout_page_bytes(&d->layout);
            CHECK(got == want, "%s: decode %u/%u received %llu bytes, holds %llu (each byte once)",
                  label, b, r, (unsigned long long)got, (unsigned long long)want);
            CHECK(ex_pages_pattern(d, room, dp, NPAGES, 0) == 0,
                  "%s: decode %u/%u: every head of every token in place", label, b, r);
            CHECK(aux_senders == 1, "%s: decode %u/%u: %u contributors send aux", label, b, r,
                  aux_senders);
            ex_pool_free(d);
        }
    for (a = 0; a < ptp; a++)
        for (q = 0; q < ppp; q++) ex_pool_free(&P[a][q]);
}

static void refusals(void) {
    ex_pool s, d;
    ex_rank r2 = {2, 0, 1, 0}, r4 = {4, 1, 1, 0};
    kvx_plan pl;
    int32_t pg[2] = {0, 1};
    char why[KVX_ERROR_MAX];
    kvx_layout x;
    kvx_buffer odd[3];
    uint64_t bpp = 7;
    memset(&pl, 0, sizeof pl);
    ex_pool_init_rank(&s, &mha, 8, 4, 2, 1, &r2);
    ex_pool_init_rank(&d, &mha, 8, 4, 2, 1, &r4);
    x = d.layout;
    x.page_size = 8;
    CHECK(kvx_plan_pages(&pl, &s.layout, pg, &x, pg, 2) == KVX_ERR_LAYOUT_MISMATCH, "page size");
    CHECK_STR(pl.error, "page_size differs: source 4, destination 8");
    x = d.layout;
    x.dtype = "float16";
    CHECK(kvx_layout_overlap(&s.layout, &x, &bpp, NULL, why, sizeof why) == KVX_ERR_LAYOUT_MISMATCH &&
              bpp == 0, "dtype");
    CHECK_STR(why, "dtype differs");
    x = d.layout;
    x.mla = 1;
    CHECK(kvx_plan_pages(&pl, &s.layout, pg, &x, pg, 2) == KVX_ERR_LAYOUT_MISMATCH, "mla");
    x = d.layout;
    x.num_kv_heads = 1; /* 2 heads' bytes claimed as one head: bytes per head differ */
    CHECK(kvx_plan_pages(&pl, &s.layout, pg, &x, pg, 2) == KVX_ERR_LAYOUT_MISMATCH, "head bytes");
    CHECK_STR(pl.error, "bytes per head per token differ: source 16, destination 32");
    x = d.layout;
    x.num_kv_heads = 3; /* 32-byte rows are not 3 heads */
    CHECK(kvx_plan_pages(&pl, &s.layout, pg, &x, pg, 2) == KVX_ERR_LAYOUT_MISMATCH, "heads");
    CHECK_STR(pl.error, "are not page_size x heads x bytes per head");
    x = d.layout;
    memcpy(odd, d.bufs, sizeof odd);
    x.buffers = odd;
    x.num_buffers = 3;
    x.layer_begin = 1;
    CHECK(kvx_plan_pages(&pl, &s.layout, pg, &x, pg, 2) == KVX_ERR_LAYOUT_MISMATCH, "odd buffers");
    CHECK_STR(pl.error, "K and V buffers in pairs");
    x = d.layout;
    x.head_begin = 6; /* heads 6-7 against 0-3: nothing in common */
    CHECK(kvx_layout_overlap(&s.layout, &x, &bpp, NULL, why, sizeof why) == KVX_OK && bpp == 0,
          "disjoint heads overlap in nothing");
    CHECK(kvx_plan_pages(&pl, &s.layout, pg, &x, pg, 2) == KVX_OK && pl.count == 0 &&
              pl.total_bytes == 0, "a plan between disjoint heads is empty");
    x = d.layout;
    x.head_begin = 1u << 30;
    CHECK(kvx_layout_validate(&x, why, sizeof why) == KVX_ERR_INVALID_ARGUMENT, "head_begin bound");
    CHECK(kvx_mla_dummy(1, 4, 1, 2) && !kvx_mla_dummy(1, 4, 2, 2) && !kvx_mla_dummy(0, 4, 1, 2) &&
              !kvx_mla_dummy(1, 2, 1, 4),
          "MLA dummies: the ranks after the first of each group, MLA only, prefill TP > decode TP");
    kvx_plan_free(&pl);
    ex_pool_free(&s);
    ex_pool_free(&d);
}

int main(void) {
    static const uint32_t tp[][2] = {{1, 1}, {4, 2}, {2, 4}, {1, 8}, {8, 1}, {2, 16}, {4, 4}};
    size_t i;
    int o;
    kt_name = "test_plan_slice";
    for (o = 0; o < 2; o++) {
        for (i = 0; i < sizeof tp / sizeof tp[0]; i++) topo(&mha, tp[i][0], tp[i][1], 1, 1, o);
        topo(&mla, 4, 2, 1, 1, o);
        topo(&mla, 2, 4, 1, 1, o);
        topo(&mha, 2, 2, 2, 1, o);
        topo(&mha, 2, 2, 2, 2, o);
        topo(&mha, 4, 2, 2, 1, o);
        topo(&mla, 4, 1, 2, 1, o);
    }
    refusals();
    return kt_done();
}
