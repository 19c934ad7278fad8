/* Unit tests of hybrid-model state buffers (kvx.h HYBRID STATE): the layout
   checks and fingerprint, KVX_SPAN_STATE spans from kvx_plan_state and its
   one-sided forms (runs, packed layout after pages and aux, round trip
   byte for byte), their refusals, kvx_layout_overlap's refusals of state
   that cannot move, and the room calls (kvx_sender_send_state,
   kvx_receiver_init_state, kvx_room_state) over the fake transport. */
#define KVX_IMPLEMENTATION
#include "../../kvx.h"
#include "../kvx_test.h"

#define ROWS 12

/* 2 KV buffers (K, V of one layer) of 8 pages, 1 aux buffer of 4 slots, and
   2 state buffers of ROWS rows (item_len 24 and 8); `seed` fills them. */
typedef struct pool {
    uint8_t kv[2][8 * 32], aux[4 * 4], st0[ROWS * 24], st1[ROWS * 8];
    kvx_buffer bufs[2], state[2];
    kvx_aux_buffer a;
    kvx_layout l;
} pool;

static void pool_init(pool *p, int seed, uint32_t type) {
    size_t i;
    memset(p, 0, sizeof *p);
    for (i = 0; i < sizeof p->kv; i++) ((uint8_t *)p->kv)[i] = (uint8_t)(seed + i);
    for (i = 0; i < sizeof p->aux; i++) p->aux[i] = (uint8_t)(seed * 3 + i);
    for (i = 0; i < sizeof p->st0; i++) p->st0[i] = (uint8_t)(seed * 5 + i);
    for (i = 0; i < sizeof p->st1; i++) p->st1[i] = (uint8_t)(seed * 7 + 3 * i);
    for (i = 0; i < 2; i++) {
        p->bufs[i].base = p->kv[i];
        p->bufs[i].length = 8 * 32;
        p->bufs[i].item_len = 32;
    }
    p->a.base = p->aux; p->a.length = sizeof p->aux; p->a.item_len = 4;
    p->state[0].base = p->st0; p->state[0].length = sizeof p->st0; p->state[0].item_len = 24;
    p->state[1].base = p->st1; p->state[1].length = sizeof p->st1; p->state[1].item_len = 8;
    p->l.buffers = p->bufs;
    p->l.num_buffers = 2;
    p->l.aux = &p->a;
    p->l.num_aux = 1;
    p->l.page_size = 4;
    p->l.num_kv_heads = 2;
    p->l.dtype_size = 2;
    p->l.dtype = "bfloat16";
    p->l.state = p->state;
    p->l.num_state = 2;
    p->l.state_type = type;
}

static void test_layout(void) {
    pool p;
    char why[256];
    uint64_t fp_state, fp_none;
    pool_init(&p, 1, KVX_STATE_MAMBA);
    CHECK(kvx_layout_validate(&p.l, why, sizeof why) == KVX_OK, "a layout with state validates: %s", why);
    CHECK(kvx_layout_num_state_rows(&p.l) == ROWS && kvx_layout_state_row_bytes(&p.l) == 32,
          "state rows %llu, row bytes %llu", (unsigned long long)kvx_layout_num_state_rows(&p.l),
          (unsigned long long)kvx_layout_state_row_bytes(&p.l));
    fp_state = kvx_layout_fingerprint(&p.l);
    p.state[1].base = NULL;
    CHECK(kvx_layout_validate(&p.l, why, sizeof why) == KVX_ERR_INVALID_ARGUMENT && strstr(why, "state buffer 1"),
          "a state buffer with no base is refused: %s", why);
    p.state[1].base = p.st1;
    p.l.state_type = 9;
    CHECK(kvx_layout_validate(&p.l, why, sizeof why) == KVX_ERR_INVALID_ARGUMENT && strstr(why, "state_type 9"),
          "an unknown state type is refused: %s", why);
    p.l.state_type = KVX_STATE_MAMBA;
    p.l.num_state = 0;
    fp_none = kvx_layout_fingerprint(&p.l);
    p.l.state = NULL;
    CHECK(fp_none == kvx_layout_fingerprint(&p.l) && fp_none != fp_state,
          "the fingerprint covers state buffers, and is unchanged without them");
}

static void test_plan(void) {
    pool s, d;
    kvx_plan p;
    int32_t si[5] = {5, 6, 7, 2, 9}, di[5] = {0, 1, 2, 11, 4}, pg[2] = {1, 6}, dpg[2] = {3, 0};
    int32_t dup[2] = {3, 3}, far[1] = {ROWS};
    size_t i;
    int ok;
    pool_init(&s, 1, KVX_STATE_SWA);
    pool_init(&d, 100, KVX_STATE_SWA);
    memset(&p, 0, sizeof p);
    CHECK(kvx_plan_state(&p, &s.l, si, &d.l, di, 5) == KVX_OK, "two-sided state plan: %s", p.error);
    /* runs: 5,6,7 -> 0,1,2; 2 -> 11; 9 -> 4: three spans per state buffer */
    CHECK(p.count == 6 && p.spans[0].kind == KVX_SPAN_STATE && p.spans[0].length == 3 * 24 &&
              p.spans[0].src_offset == 5 * 24 && p.spans[3].buffer == 1 && p.spans[3].dst_buffer == 1 &&
              p.total_bytes == 5 * 32,
          "state spans: %zu spans, %llu bytes (runs merged per buffer)", p.count,
          (unsigned long long)p.total_bytes);
    for (i = 0; i < p.count; i++)
        memcpy(kvx_span_addr(&d.l, &p.spans[i], 1), kvx_span_addr(&s.l, &p.spans[i], 0),
               (size_t)p.spans[i].length);
    for (ok = 1, i = 0; i < 5; i++)
        ok &= !memcmp(d.st0 + di[i] * 24, s.st0 + si[i] * 24, 24) &&
              !memcmp(d.st1 + di[i] * 8, s.st1 + si[i] * 8, 8);
    CHECK(ok, "every state row lands at its destination index, in both state buffers");
    p.count = 0;
    CHECK(kvx_plan_state(&p, &s.l, si, &d.l, far, 1) == KVX_ERR_OUT_OF_RANGE && strstr(p.error, "destination state"),
          "a destination index beyond the state rows: %s", p.error);
    CHECK(kvx_plan_state(&p, &s.l, far, &d.l, di, 1) == KVX_ERR_OUT_OF_RANGE && strstr(p.error, "source state"),
          "a source index beyond the state rows: %s", p.error);
    CHECK(kvx_plan_state(&p, &s.l, si, &d.l, dup, 2) == KVX_ERR_DUPLICATE, "a destination row twice: %s", p.error);
    d.state[1].item_len = 4;
    CHECK(kvx_plan_state(&p, &s.l, si, &d.l, di, 1) == KVX_ERR_LAYOUT_MISMATCH && strstr(p.error, "state buffer 1"),
          "a state item_len that differs: %s", p.error);
    d.state[1].item_len = 8;
    d.l.num_state = 1;
    CHECK(kvx_plan_state(&p, &s.l, si, &d.l, di, 1) == KVX_ERR_LAYOUT_MISMATCH && strstr(p.error, "count"),
          "a state buffer count that differs: %s", p.error);
    d.l.num_state = 2;
    CHECK(p.count == 0, "refused plans add no span (%zu)", p.count);

    /* one-sided: pages, aux, then state in the packed region, and back */
    pool_init(&d, 100, KVX_STATE_SWA);
    p.count = 0;
    p.total_bytes = p.packed_bytes = 0;
    {
        uint8_t packed[2 * 2 * 32 + 4 + 5 * 32];
        kvx_plan q;
        memset(&q, 0, sizeof q);
        CHECK(kvx_plan_gather(&p, &s.l, pg, 2) == KVX_OK && kvx_plan_aux_gather(&p, &s.l, 2) == KVX_OK &&
                  kvx_plan_state_gather(&p, &s.l, si, 5) == KVX_OK && p.packed_bytes == sizeof packed,
              "gather: pages, aux and state pack into %llu bytes", (unsigned long long)p.packed_bytes);
        for (i = 0; i < p.count; i++)
            memcpy(packed + p.spans[i].dst_offset, kvx_span_addr(&s.l, &p.spans[i], 0), (size_t)p.spans[i].length);
        CHECK(!memcmp(packed + 2 * 2 * 32 + 4, s.st0 + 5 * 24, 3 * 24) &&
                  !memcmp(packed + 2 * 2 * 32 + 4 + 5 * 24, s.st1 + 5 * 8, 8),
              "the packed state: buffer 0's rows, then buffer 1's");
        CHECK(kvx_plan_scatter(&q, &d.l, dpg, 2) == KVX_OK && kvx_plan_aux_scatter(&q, &d.l, 1) == KVX_OK &&
                  kvx_plan_state_scatter(&q, &d.l, di, 5) == KVX_OK && q.packed_bytes == sizeof packed,
              "scatter plan of the same region: %s", q.error);
        for (i = 0; i < q.count; i++)
            memcpy(kvx_span_addr(&d.l, &q.spans[i], 1), packed + q.spans[i].src_offset, (size_t)q.spans[i].length);
        for (ok = 1, i = 0; i < 5; i++)
            ok &= !memcmp(d.st0 + di[i] * 24, s.st0 + si[i] * 24, 24) &&
                  !memcmp(d.st1 + di[i] * 8, s.st1 + si[i] * 8, 8);
        ok &= !memcmp(d.kv[1] + 3 * 32, s.kv[1] + 1 * 32, 32) && !memcmp(d.aux + 4, s.aux + 8, 4);
        CHECK(ok, "gather then scatter: pages, aux and every state row byte for byte");
        CHECK(kvx_plan_state_scatter(&q, &d.l, dup, 2) == KVX_ERR_DUPLICATE, "scatter: a row twice: %s", q.error);
        kvx_plan_free(&q);
    }
    kvx_plan_free(&p);
}

static void test_overlap(void) {
    pool s, d;
    char why[300];
    uint64_t bpp;
    int aux;
    pool_init(&s, 1, KVX_STATE_SWA);
    pool_init(&d, 2, KVX_STATE_SWA);
    CHECK(kvx_layout_overlap(&s.l, &d.l, &bpp, &aux, why, sizeof why) == KVX_OK && aux == 1,
          "same shape with state: combines, the source sends aux and state: %s", why);
    d.l.num_kv_heads = 1; /* decode TP 2: heads 0..0 of 0..1 */
    d.bufs[0].item_len = d.bufs[1].item_len = 16;
    CHECK(kvx_layout_overlap(&s.l, &d.l, &bpp, &aux, why, sizeof why) == KVX_ERR_LAYOUT_MISMATCH &&
              strstr(why, "sliding-window state") && strstr(why, "SGLang refuses"),
          "SWA state, non-MLA, different heads: refused: %s", why);
    s.l.state_type = d.l.state_type = KVX_STATE_MAMBA;
    CHECK(kvx_layout_overlap(&s.l, &d.l, &bpp, &aux, why, sizeof why) == KVX_ERR_LAYOUT_MISMATCH &&
              strstr(why, "Mamba state") && strstr(why, "TP must be equal"),
          "Mamba state, different heads: refused: %s", why);
    s.l.mla = d.l.mla = 1;
    s.l.num_kv_heads = d.l.num_kv_heads = 1;
    s.bufs[0].item_len = s.bufs[1].item_len = 16;
    d.l.head_begin = 1;
    CHECK(kvx_layout_overlap(&s.l, &d.l, &bpp, &aux, why, sizeof why) == KVX_OK,
          "MLA with state between TP ranks: combines (state replicated): %s", why);
    d.l.layer_begin = 1;
    d.l.num_buffers = 1;
    s.l.num_buffers = 2;
    CHECK(kvx_layout_overlap(&s.l, &d.l, &bpp, &aux, why, sizeof why) == KVX_ERR_LAYOUT_MISMATCH &&
              strstr(why, "same layers") && strstr(why, "decode PP must equal prefill PP"),
          "state between different layer ranges: refused: %s", why);
    pool_init(&s, 1, KVX_STATE_SWA);
    pool_init(&d, 2, KVX_STATE_MAMBA);
    CHECK(kvx_layout_overlap(&s.l, &d.l, &bpp, &aux, why, sizeof why) == KVX_ERR_LAYOUT_MISMATCH &&
              strstr(why, "state type differs"), "state types differ: %s", why);
    d.l.state_type = KVX_STATE_SWA;
    d.l.num_state = 1;
    CHECK(kvx_layout_overlap(&s.l, &d.l, &bpp, &aux, why, sizeof why) == KVX_ERR_LAYOUT_MISMATCH &&
              strstr(why, "state buffer count differs: source 2, destination 1"), "state counts differ: %s", why);
    d.l.num_state = 0;
    CHECK(kvx_layout_overlap(&s.l, &d.l, &bpp, &aux, why, sizeof why) == KVX_ERR_LAYOUT_MISMATCH,
          "state on one side only: %s", why);
}

static kvx_engine *fake_engine(pool *p, kvx_role role) {
    kvx_engine_desc d;
    kvx_engine *e = NULL;
    char why[256];
    memset(&d, 0, sizeof d);
    d.role = role;
    d.transport = "fake";
    d.layout = p->l;
    if (kvx_engine_create(&d, &e, why, sizeof why) != KVX_OK) printf("engine: %s\n", why);
    return e;
}

static void test_rooms(void) {
    pool p, q;
    kvx_engine *pe, *de, *bare;
    kvx_sender *s;
    kvx_receiver *r;
    kvx_room_desc rd;
    int32_t pages[3] = {0, 1, 2}, st[2] = {4, 7}, dup[2] = {4, 4}, far[1] = {ROWS};
    const int32_t *got;
    uint32_t n = 0;
    pool_init(&p, 1, KVX_STATE_MAMBA);
    pool_init(&q, 1, KVX_STATE_MAMBA);
    q.l.state = NULL;
    q.l.num_state = 0;
    pe = fake_engine(&p, KVX_ROLE_PREFILL);
    de = fake_engine(&p, KVX_ROLE_DECODE);
    bare = fake_engine(&q, KVX_ROLE_PREFILL);
    if (!pe || !de || !bare) { CHECK(0, "fake engines"); return; }
    memset(&rd, 0, sizeof rd);
    rd.room = 1;
    kvx_sender_create(pe, &rd, &s);
    kvx_sender_init(s, 3, 0);
    CHECK(kvx_sender_send_state(s, pages, 2, st, 2) == KVX_ERR_STATE && kvx_sender_poll(s) != KVX_POLL_FAILED &&
              strstr(kvx_sender_call_error(s), "last chunk"),
          "state indices with a chunk that is not the last: refused, room untouched: %s", kvx_sender_call_error(s));
    CHECK(kvx_sender_send(s, pages, 2) == KVX_OK, "first chunk without state");
    got = kvx_room_state((kvx_room *)s, &n);
    CHECK(!got && n == 0, "no state indices before the last chunk");
    CHECK(kvx_sender_send_state(s, pages + 2, 1, st, 2) == KVX_OK && kvx_sender_poll(s) == KVX_POLL_SUCCESS,
          "the last chunk with 2 state indices: %s", kvx_sender_error(s));
    got = kvx_room_state((kvx_room *)s, &n);
    CHECK(got && n == 2 && got[0] == 4 && got[1] == 7, "kvx_room_state gives the sender's indices (%u)", n);
    kvx_sender_destroy(s);
    rd.room = 2;
    kvx_sender_create(pe, &rd, &s);
    kvx_sender_init(s, 1, 0);
    CHECK(kvx_sender_send_state(s, pages, 1, far, 1) == KVX_ERR_OUT_OF_RANGE && kvx_sender_poll(s) == KVX_POLL_FAILED &&
              strstr(kvx_sender_error(s), "source state index 12 at position 0 is outside the 12 rows"),
          "a state index beyond the rows fails the room: %s", kvx_sender_error(s));
    kvx_sender_destroy(s);
    rd.room = 3;
    kvx_sender_create(bare, &rd, &s);
    kvx_sender_init(s, 1, 0);
    CHECK(kvx_sender_send_state(s, pages, 1, st, 1) == KVX_ERR_OUT_OF_RANGE && strstr(kvx_sender_error(s), "no state buffers"),
          "state indices on a layout without state buffers: %s", kvx_sender_error(s));
    kvx_sender_destroy(s);
    rd.room = 4;
    kvx_receiver_create(de, &rd, &r);
    CHECK(kvx_receiver_init_state(r, pages, 3, 0, dup, 2) == KVX_ERR_DUPLICATE && kvx_receiver_poll(r) == KVX_POLL_FAILED,
          "a destination state row twice fails the receiver: %s", kvx_receiver_error(r));
    CHECK(strstr(kvx_receiver_error(r), "destination state index 4 appears more than once") != NULL, "... saying which");
    kvx_receiver_destroy(r);
    rd.room = 5;
    kvx_receiver_create(de, &rd, &r);
    CHECK(kvx_receiver_init_state(r, pages, 3, 0, st, 2) == KVX_OK, "receiver init with state: %s", kvx_receiver_error(r));
    got = kvx_room_state((kvx_room *)r, &n);
    CHECK(got && n == 2 && got[1] == 7, "kvx_room_state gives the receiver's indices");
    kvx_receiver_destroy(r);
    kvx_engine_destroy(pe);
    kvx_engine_destroy(de);
    kvx_engine_destroy(bare);
}

int main(void) {
    kt_name = "test_state";
    test_layout();
    test_plan();
    test_overlap();
    test_rooms();
    return kt_done();
}
