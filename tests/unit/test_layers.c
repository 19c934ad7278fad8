/* test_layers.c - LAYER-WISE SEND in the core (kvx.h): what
   kvx_sender_send_layers hands a transport (the parts of a chunk, their
   layers, first/last part, is_last only on the room's final part), the
   gather plan of every part (only its layers' buffers, at the whole chunk's
   packed offsets: the parts together pack exactly what one all-layer chunk
   packs), the core holding parts for a transport that takes whole chunks,
   every refusal with its sentence, and the plan layer filter on plans
   between ranks of different heads and layers. */
#define KVX_IMPLEMENTATION
#include "../../kvx.h"
#include "../../examples/kvx_example.h"
#include "../kvx_test.h"

#define NL 8    /* layers of the rank: model layers 4 .. 11 (a PP rank) */
#define L0 4
#define NB (2 * NL)
#define POOL 16
#define ITEM 32

static char mem[NB][POOL * ITEM];
static kvx_buffer bufs[NB];

static kvx_layout layers_layout(void) {
    kvx_layout l;
    int b, i;
    memset(&l, 0, sizeof l);
    for (b = 0; b < NB; b++) {
        for (i = 0; i < POOL * ITEM; i++) mem[b][i] = (char)(ex_mix((uint64_t)b * 131071u + (uint64_t)i) & 0xff);
        bufs[b].base = mem[b];
        bufs[b].length = sizeof mem[b];
        bufs[b].item_len = ITEM;
    }
    l.buffers = bufs;
    l.num_buffers = NB;
    l.layer_begin = L0;
    l.page_size = 4;
    l.num_kv_heads = 2;
    l.dtype_size = 2;
    l.dtype = "bfloat16";
    return l;
}

/* What the recording transport saw: one entry per sender_send call. */
typedef struct part {
    uint32_t index, first_page, num_pages, lb, le;
    int first, last, is_last, bad_buffer;
    uint64_t bytes;
} part;
static part parts[64];
static int nparts;
static char packed[8][NB * 4 * ITEM]; /* each chunk's packed region, assembled from its parts */

static kvx_result rec_send(kvx_room *r, kvx_chunk *c) {
    kvx_engine *e = kvx_room_engine(r);
    const kvx_plan *p = kvx_chunk_gather(e, c);
    part *x = &parts[nparts < 64 ? nparts++ : 63];
    size_t k;
    memset(x, 0, sizeof *x);
    x->index = c->index;
    x->first_page = c->first_page;
    x->num_pages = c->num_pages;
    x->lb = c->layer_begin;
    x->le = c->layer_end;
    x->first = c->first_part;
    x->last = c->last_part;
    x->is_last = c->is_last;
    if (p && c->index < 8 && p->packed_bytes <= sizeof packed[0]) {
        for (k = 0; k < p->count; k++) {
            const kvx_span *s = &p->spans[k];
            uint32_t layer = L0 + s->buffer % NL;
            if (layer < c->layer_begin || layer >= c->layer_end) x->bad_buffer = 1;
            kvx_span_copy(packed[c->index], bufs[s->buffer].base, s); /* offsets from the base */
            x->bytes += s->length;
        }
    }
    if (c->is_last) kvx_room_succeed(r, 0);
    kvx_chunk_free(e, c);
    return KVX_OK;
}

static kvx_result rec_open(kvx_room *r) {
    kvx_room_advance(r, KVX_POLL_WAITING_FOR_INPUT);
    return KVX_OK;
}

static kvx_backend rec_lw, rec_whole;

static kvx_engine *engine(const kvx_backend *be, kvx_layout l) {
    kvx_engine_desc d;
    kvx_engine *e = NULL;
    char why[256];
    memset(&d, 0, sizeof d);
    d.role = KVX_ROLE_PREFILL;
    d.layout = l;
    d.backend = be;
    if (kvx_engine_create(&d, &e, why, sizeof why) != KVX_OK) printf("engine: %s\n", why);
    return e;
}

static kvx_sender *sender(kvx_engine *e, uint64_t room, uint32_t pages) {
    kvx_room_desc rd;
    kvx_sender *s = NULL;
    memset(&rd, 0, sizeof rd);
    rd.room = room;
    if (kvx_sender_create(e, &rd, &s) != KVX_OK) return NULL;
    if (kvx_sender_init(s, pages, -1) != KVX_OK) {
        printf("init: %s\n", kvx_sender_error(s));
        kvx_sender_destroy(s);
        return NULL;
    }
    return s;
}

/* The packed region of an all-layer gather of `pages`. */
static int packed_equal(const char *got, const kvx_layout *l, const int32_t *pages, uint32_t n) {
    static char want[NB * 4 * ITEM];
    kvx_plan p;
    size_t k;
    int eq;
    memset(&p, 0, sizeof p);
    memset(want, 0, sizeof want);
    if (kvx_plan_gather(&p, l, pages, n) != KVX_OK) return 0;
    for (k = 0; k < p.count; k++) kvx_span_copy(want, l->buffers[p.spans[k].buffer].base, &p.spans[k]);
    eq = p.packed_bytes == (uint64_t)n * NB * ITEM && memcmp(got, want, (size_t)p.packed_bytes) == 0;
    kvx_plan_free(&p);
    return eq;
}

static void test_parts(void) {
    kvx_layout l = layers_layout();
    kvx_engine *e = engine(&rec_lw, l);
    kvx_sender *s;
    int32_t c0[2] = {3, 1}, c1[2] = {7, 8}, c2[2] = {0, 15};
    int i, bad = 0;
    if (!e) return;
    nparts = 0;
    memset(packed, 0, sizeof packed);
    s = sender(e, 1, 6);
    CHECK(s && kvx_sender_send(s, c0, 2) == KVX_OK, "chunk 0, every layer");
    CHECK(kvx_sender_send_layers(s, c1, 2, 4, 5) == KVX_OK, "chunk 1, layer 4");
    CHECK(kvx_sender_send(s, c2, 2) == KVX_ERR_STATE && kvx_sender_poll(s) == KVX_POLL_TRANSFERRING,
          "kvx_sender_send while chunk 1 is open is refused, the room goes on");
    CHECK_STR(kvx_sender_call_error(s), "chunk 1 is open layer-wise at layer 5 of [4, 12)");
    CHECK(kvx_sender_send_layers(s, c1, 2, 5, 8) == KVX_OK, "chunk 1, layers 5..7");
    CHECK(kvx_sender_send_layers(s, c1, 2, 8, 12) == KVX_OK, "chunk 1, layers 8..11: closed");
    CHECK(kvx_sender_send_layers(s, c2, 2, 4, 10) == KVX_OK, "chunk 2, layers 4..9");
    CHECK(kvx_sender_poll(s) == KVX_POLL_TRANSFERRING, "not done before the last layer of the last chunk");
    CHECK(kvx_sender_send_layers(s, c2, 2, 10, 12) == KVX_OK && kvx_sender_poll(s) == KVX_POLL_SUCCESS,
          "the last layer of the last chunk completes the room");
    CHECK(kvx_sender_send_layers(s, c2, 2, 4, 12) == KVX_ERR_STATE, "nothing after the last chunk");
    CHECK(nparts == 6, "6 parts reached the transport (got %d)", nparts);
    {
        static const uint32_t want[6][8] = {
            /* index first_page n lb le first last is_last */
            {0, 0, 2, 4, 12, 1, 1, 0}, {1, 2, 2, 4, 5, 1, 0, 0}, {1, 2, 2, 5, 8, 0, 0, 0},
            {1, 2, 2, 8, 12, 0, 1, 0}, {2, 4, 2, 4, 10, 1, 0, 0}, {2, 4, 2, 10, 12, 0, 1, 1}};
        for (i = 0; i < nparts && i < 6; i++) {
            const part *x = &parts[i];
            uint32_t got[8] = {x->index, x->first_page, x->num_pages, x->lb, x->le,
                               (uint32_t)x->first, (uint32_t)x->last, (uint32_t)x->is_last};
            if (memcmp(got, want[i], sizeof got)) {
                bad++;
                printf("part %d: %u %u %u [%u,%u) %u %u %u\n", i, got[0], got[1], got[2], got[3],
                       got[4], got[5], got[6], got[7]);
            }
            bad += x->bad_buffer;
            bad += x->bytes != (uint64_t)2 * 2 * (x->le - x->lb) * ITEM;
        }
    }
    CHECK(bad == 0, "every part: its chunk, pages, layers, flags, and spans of its layers only");
    CHECK(packed_equal(packed[0], &l, c0, 2) && packed_equal(packed[1], &l, c1, 2) &&
              packed_equal(packed[2], &l, c2, 2),
          "the parts of each chunk pack exactly what one all-layer gather packs, byte for byte");
    kvx_sender_destroy(s);
    kvx_engine_destroy(e);
}

static void test_whole(void) {
    kvx_layout l = layers_layout();
    kvx_engine *e = engine(&rec_whole, l);
    kvx_sender *s;
    int32_t c1[3] = {9, 2, 5};
    if (!e) return;
    nparts = 0;
    memset(packed, 0, sizeof packed);
    s = sender(e, 2, 3);
    CHECK(s && kvx_sender_send_layers(s, c1, 3, 4, 6) == KVX_OK && nparts == 0,
          "a transport of whole chunks sees nothing of an open chunk");
    CHECK(kvx_sender_send_layers(s, c1, 3, 6, 12) == KVX_OK && nparts == 1,
          "and the whole chunk with its last layer");
    CHECK(nparts == 1 && parts[0].lb == L0 && parts[0].le == L0 + NL && parts[0].first &&
              parts[0].last && parts[0].is_last && parts[0].index == 0,
          "as one part of every layer, the room's last");
    CHECK(packed_equal(packed[0], &l, c1, 3), "its gather is the whole chunk's");
    CHECK(kvx_sender_poll(s) == KVX_POLL_SUCCESS, "success");
    kvx_sender_destroy(s);
    kvx_engine_destroy(e);
}

/* One refusal: a fresh room, the calls before, then the bad call. */
static void refused(kvx_engine *e, int calls, const uint32_t (*r)[2], const int32_t *const *pg,
                    kvx_result want, const char *sentence) {
    static uint64_t room = 100;
    kvx_sender *s = sender(e, room++, 4);
    int32_t keep[2];
    int i;
    kvx_result got = KVX_OK;
    if (!s) { CHECK(0, "sender"); return; }
    for (i = 0; i < calls; i++) {
        memcpy(keep, pg[i], sizeof keep); /* the caller's list may change after the call */
        got = kvx_sender_send_layers(s, keep, 2, r[i][0], r[i][1]);
        keep[0] = -1;
    }
    CHECK(got == want && kvx_sender_poll(s) == KVX_POLL_FAILED && kvx_sender_result(s) == want,
          "%s: refused with %s and the room failed (got %s, %s)", sentence, kvx_result_str(want),
          kvx_result_str(got), kvx_poll_str(kvx_sender_poll(s)));
    CHECK_STR(kvx_sender_error(s), sentence);
    kvx_sender_destroy(s);
}

static void test_refusals(void) {
    kvx_layout l = layers_layout(), odd, st;
    kvx_engine *e = engine(&rec_lw, l), *e2;
    static const int32_t a[2] = {1, 2}, b[2] = {1, 3};
    const int32_t *aa[3] = {a, a, a}, *ab[2] = {a, b};
    static const uint32_t skip[2][2] = {{4, 5}, {6, 8}}, twice[2][2] = {{4, 6}, {5, 8}},
                          ok2[2][2] = {{4, 5}, {5, 6}}, below[1][2] = {{3, 5}},
                          above[1][2] = {{10, 13}}, empty[1][2] = {{4, 4}}, late[1][2] = {{5, 8}};
    kvx_buffer sb[1];
    if (!e) return;
    refused(e, 2, skip, aa, KVX_ERR_INVALID_ARGUMENT, "chunk 0: layers [5, 6) were skipped");
    refused(e, 2, twice, aa, KVX_ERR_INVALID_ARGUMENT, "chunk 0: layer 5 was already sent");
    refused(e, 2, ok2, ab, KVX_ERR_INVALID_ARGUMENT,
            "name other pages than the chunk's first layers (position 1: page 3, before 2)");
    refused(e, 1, below, aa, KVX_ERR_OUT_OF_RANGE, "layers [3, 5) are outside this rank's layers [4, 12)");
    refused(e, 1, above, aa, KVX_ERR_OUT_OF_RANGE, "layers [10, 13) are outside this rank's layers [4, 12)");
    refused(e, 1, empty, aa, KVX_ERR_OUT_OF_RANGE, "layers [4, 4) are an empty range of");
    refused(e, 1, late, aa, KVX_ERR_INVALID_ARGUMENT, "starts at layer 5, not at this rank's first layer 4");
    kvx_engine_destroy(e);

    odd = l;
    odd.num_buffers = 3;
    e2 = engine(&rec_lw, odd);
    refused(e2, 1, skip, aa, KVX_ERR_INVALID_ARGUMENT, "are not K/V pairs");
    kvx_engine_destroy(e2);
    st = l;
    memset(sb, 0, sizeof sb);
    sb[0].base = mem[0];
    sb[0].length = sizeof mem[0];
    sb[0].item_len = 16;
    st.state = sb;
    st.num_state = 1;
    e2 = engine(&rec_lw, st);
    refused(e2, 1, skip, aa, KVX_ERR_INVALID_ARGUMENT, "a layout with state buffers");
    kvx_engine_destroy(e2);
}

/* The layer filter on plans between ranks of other heads and layers: the
   parts of a partition of the layers give exactly the spans of the whole. */
static int span_cmp(const void *x, const void *y) {
    const kvx_span *a = (const kvx_span *)x, *b = (const kvx_span *)y;
    if (a->buffer != b->buffer) return a->buffer < b->buffer ? -1 : 1;
    if (a->src_offset != b->src_offset) return a->src_offset < b->src_offset ? -1 : 1;
    return 0;
}

static void test_filter(void) {
    static const ex_model m = {"gqa", 6, 4, 8, 2, 0, "bfloat16"};
    static const ex_model mla = {"mla", 6, 1, 36, 2, 1, "bfloat16"};
    const ex_model *models[2] = {&m, &mla};
    int32_t pg[10] = {3, 4, 5, 9, 1, 12, 13, 0, 7, 6};
    int k, bad = 0, cases = 0;
    for (k = 0; k < 2; k++) {
        static const uint32_t topo[3][4] = {{2, 1, 1, 1}, {1, 2, 2, 1}, {1, 1, 2, 3}};
        int t;
        for (t = 0; t < 3; t++) {
            ex_rank sr = {topo[t][0], 0, topo[t][2], topo[t][2] - 1};
            ex_rank dr = {topo[t][1], 0, topo[t][3], topo[t][3] - 1};
            ex_pool sp, dp;
            kvx_plan whole, part, all;
            uint32_t cut[4], ncut = 0, i, l0, lend;
            int side;
            memset(&whole, 0, sizeof whole);
            memset(&part, 0, sizeof part);
            memset(&all, 0, sizeof all);
            if (ex_pool_init_rank(&sp, models[k], 16, 4, 1, 1, &sr) ||
                ex_pool_init_rank(&dp, models[k], 16, 4, 1, 2, &dr)) {
                CHECK(0, "pools");
                return;
            }
            l0 = sp.layout.layer_begin;
            lend = l0 + (sp.layout.mla ? sp.layout.num_buffers : sp.layout.num_buffers / 2);
            cut[ncut++] = l0;
            if (lend - l0 > 2) cut[ncut++] = l0 + 1;
            if (lend - l0 > 3) cut[ncut++] = l0 + 3;
            cut[ncut++] = lend;
            for (side = 0; side < 2; side++) { /* two-sided; gather + scatter_from */
                kvx_result r = side ? kvx_plan_scatter_from(&whole, &dp.layout, pg, 10, &sp.layout)
                                    : kvx_plan_pages(&whole, &sp.layout, pg, &dp.layout, pg, 10);
                all.count = 0;
                all.total_bytes = 0;
                if (r != KVX_OK) { bad++; printf("whole: %s\n", whole.error); continue; }
                for (i = 0; i + 1 < ncut; i++) {
                    size_t q;
                    part.layer_begin = cut[i];
                    part.layer_end = cut[i + 1];
                    r = side ? kvx_plan_scatter_from(&part, &dp.layout, pg, 10, &sp.layout)
                             : kvx_plan_pages(&part, &sp.layout, pg, &dp.layout, pg, 10);
                    if (r != KVX_OK || part.packed_bytes != whole.packed_bytes) { bad++; continue; }
                    for (q = 0; q < part.count; q++) {
                        uint32_t layer = kvx__buf_layer(&sp.layout, part.spans[q].buffer);
                        if (layer < cut[i] || layer >= cut[i + 1]) bad++;
                        if (kvx__plan_reserve(&all, all.count + 1)) { bad++; break; }
                        all.spans[all.count++] = part.spans[q];
                    }
                    all.total_bytes += part.total_bytes;
                }
                qsort(all.spans, all.count, sizeof *all.spans, span_cmp);
                qsort(whole.spans, whole.count, sizeof *whole.spans, span_cmp);
                if (all.count != whole.count || all.total_bytes != whole.total_bytes ||
                    (all.count && memcmp(all.spans, whole.spans, all.count * sizeof *all.spans)))
                    bad++;
                cases++;
            }
            kvx_plan_free(&whole);
            kvx_plan_free(&part);
            kvx_plan_free(&all);
            ex_pool_free(&sp);
            ex_pool_free(&dp);
        }
    }
    CHECK(bad == 0 && cases == 12, "filtered plans over a partition of the layers are the whole "
          "plan, span for span (%d cases, %d bad)", cases, bad);
}

int main(void) {
    kt_name = "test_layers";
    rec_lw.name = "rec-layers";
    rec_lw.sender_send = rec_send;
    rec_lw.room_open = rec_open;
    rec_lw.layerwise = 1;
    rec_whole.name = "rec-whole";
    rec_whole.sender_send = rec_send;
    rec_whole.room_open = rec_open;
    test_parts();
    test_whole();
    test_refusals();
    test_filter();
    return kt_done();
}
