/* test_rdma_state - hybrid-model state buffers over the rdma transport
   (kvx.h HYBRID STATE), one process, two engines on softverbs:
   1. Mamba-like: 2 state buffers (4096 and 1024 bytes a row), one state
      index per request, several rooms in flight, chunked: every KV byte,
      aux row and state row verified on the decode side, and no state row
      but the room's written;
   2. SWA-like: paged state, several scattered indices with consecutive
      runs (the runs go as one WRITE each);
   3. count mismatch: the prefill gives 2 state indices, the decode asked
      for 3 (and 1 against 0): the room fails on both sides with a
      sentence giving both counts;
   4. refusals of kvx_layout_overlap reach the room with their sentence:
      a state item_len that differs, and sliding-window state on a non-MLA
      model with prefill TP 1 -> decode TP 2 (decode ranks holding half the
      heads);
   MLA with prefill TP 2 -> decode TP 1: the dummy rank sends no state,
   the other sends KV, aux and state;
   GPU state buffers take the GPU KV pages' path (dma-buf registration,
   or a refusal with a sentence without desc.mem's exporter);
   5. rooms without state indices between equal shapes still pass (and the
      other rdma tests run without state). */
#define KVX_IMPLEMENTATION
#define KVX_WITH_RDMA
#include "rdma_test.h"

static char lib[4096];
static double slow = 1;

#define MAXN 48

typedef struct side {
    ex_pool pool;
    kvx_engine *e;
} side;


static int pool_model(side *s, const ex_model *m, uint32_t type, uint32_t nst, const uint64_t *items,
                      uint32_t rows, uint64_t seed, const ex_rank *rk) {
    uint32_t i;
    memset(s, 0, sizeof s->pool);
    if (ex_pool_init_rank(&s->pool, m, 512, 16, 64, seed, rk)) return -1;
    if (nst && ex_pool_add_state(&s->pool, type, nst, items[0], rows)) return -1;
    for (i = 1; i < nst; i++) { /* ex_pool_add_state gives every buffer items[0]: resize */
        free(s->pool.state[i].base);
        s->pool.state[i].base = calloc(rows, (size_t)items[i]);
        s->pool.state[i].item_len = items[i];
        s->pool.state[i].length = items[i] * rows;
    }
    return 0;
}

static int pool_make(side *s, uint32_t type, uint32_t nst, const uint64_t *items, uint32_t rows,
                     uint64_t seed, const ex_rank *rk) {
    return pool_model(s, &rt_tiny, type, nst, items, rows, seed, rk);
}

static kvx_engine *engine(kvx_role role, side *s, const char *addr, const int *rank, char *why,
                          size_t wl) {
    return rt_engine_rank(role, &s->pool.layout, addr, rank, why, wl);
}

static int pair_up(side *pf, side *dc, uint32_t type, uint32_t nst, const uint64_t *pitems,
                   const uint64_t *ditems, uint32_t rows) {
    char why[KVX_ERROR_MAX], addr[64];
    memset(pf, 0, sizeof *pf);
    memset(dc, 0, sizeof *dc);
    if (pool_make(pf, type, nst, pitems, rows, 3, &ex_rank_all) ||
        pool_make(dc, type, nst, ditems, rows, 4, &ex_rank_all))
        return printf("pools: out of memory\n"), -1;
    pf->e = engine(KVX_ROLE_PREFILL, pf, NULL, NULL, why, sizeof why);
    if (!pf->e) return printf("prefill engine: %s\n", why), -1;
    snprintf(addr, sizeof addr, "127.0.0.1:%d", kvx_boot_engine_port(pf->e));
    dc->e = engine(KVX_ROLE_DECODE, dc, addr, NULL, why, sizeof why);
    if (!dc->e) return printf("decode engine: %s\n", why), -1;
    return 0;
}

static void side_down(side *s) {
    kvx_engine_destroy(s->e);
    ex_pool_free(&s->pool);
}


/* One request: pages, aux slots and state indices on both sides. */
typedef struct req {
    uint64_t room;
    uint32_t n, ns, nd;        /* pages; state indices prefill / decode */
    int32_t sp[MAXN], dp[MAXN], si[MAXN], di[MAXN];
    int32_t sslot, dslot;
    kvx_sender *s;
    kvx_receiver *r;
} req;

/* Opens a room: patterns written on the prefill, state rows of the decode
   cleared. si / di: the state indices (ns of the prefill, nd of the decode). */
static void req_open(side *pf, side *dc, req *x, uint64_t room, uint32_t n, const int32_t *si,
                     uint32_t ns, const int32_t *di, uint32_t nd) {
    kvx_room_desc rd;
    uint32_t b, k;
    memset(x, 0, sizeof *x);
    x->room = room;
    x->n = n;
    x->ns = ns;
    x->nd = nd;
    if (ns) memcpy(x->si, si, ns * sizeof *si);
    if (nd) memcpy(x->di, di, nd * sizeof *di);
    x->sslot = ex_alloc_pages(&pf->pool, x->sp, n) ? -1 : ex_alloc_slot(&pf->pool);
    x->dslot = ex_alloc_pages(&dc->pool, x->dp, n) ? -1 : ex_alloc_slot(&dc->pool);
    ex_pages_pattern(&pf->pool, room, x->sp, n, 1);
    ex_aux_write(&pf->pool, room, x->sslot);
    ex_aux_clear(&dc->pool, x->dslot);
    ex_state_pattern(&pf->pool, room, x->si, ns, 1);
    for (b = 0; b < dc->pool.num_state; b++) /* the decode rows start zeroed */
        for (k = 0; k < nd; k++)
            memset((char *)dc->pool.state[b].base + (uint64_t)x->di[k] * dc->pool.state[b].item_len, 0,
                   dc->pool.state[b].item_len);
    memset(&rd, 0, sizeof rd);
    rd.room = room;
    kvx_receiver_create(dc->e, &rd, &x->r);
    kvx_sender_create(pf->e, &rd, &x->s);
}

static void req_close(side *pf, side *dc, req *x) {
    side *sd[2];
    int32_t *pg[2], sl[2];
    int k;
    sd[0] = pf; sd[1] = dc;
    pg[0] = x->sp; pg[1] = x->dp;
    sl[0] = x->sslot; sl[1] = x->dslot;
    kvx_sender_destroy(x->s);
    kvx_receiver_destroy(x->r);
    for (k = 0; k < 2; k++) {
        ex_free_pages(&sd[k]->pool, pg[k], x->n);
        ex_free_slot(&sd[k]->pool, sl[k]);
    }
}

/* Decode init with its state indices, prefill init and two chunks, the
   last carrying the prefill's state indices. */
static void req_start(req *x) {
    uint32_t h = x->n / 2;
    kvx_receiver_wait(x->r, KVX_POLL_WAITING_FOR_INPUT, (int)(20000 * slow));
    kvx_receiver_init_state(x->r, x->dp, x->n, x->dslot, x->di, x->nd);
    if (kvx_receiver_poll(x->r) == KVX_POLL_FAILED) return; /* refused: the sender never hears */
    kvx_sender_wait(x->s, KVX_POLL_WAITING_FOR_INPUT, (int)(20000 * slow));
    kvx_sender_init(x->s, x->n, x->sslot);
    kvx_sender_send(x->s, x->sp, h);
    kvx_sender_send_state(x->s, x->sp + h, x->n - h, x->si, x->ns);
}

/* Both rooms terminal (a wait for Success returns on Failed too). */
static void req_wait(req *x) {
    kvx_receiver_wait(x->r, KVX_POLL_SUCCESS, (int)(60000 * slow));
    kvx_sender_wait(x->s, KVX_POLL_SUCCESS, (int)(60000 * slow));
}

/* ---- MLA with prefill TP 2 -> decode TP 1: the dummy sends no state ---------- */

static void mla_dummy(void) {
    static const uint64_t items[2] = {2048, 512};
    static const ex_rank r0 = {2, 0, 1, 0}, r1 = {2, 1, 1, 0};
    side p0, p1, dc;
    kvx_room_desc rd;
    kvx_sender *s0 = NULL, *s1 = NULL;
    kvx_receiver *rc = NULL;
    int32_t sp0[10], sp1[10], dp[10], si = 4, di = 9, sl0, sl1, dsl;
    int o0[7] = {2, 0, 1, 0, 0, 1, 0}, o1[7] = {2, 1, 1, 0, 0, 1, 0};
    char why[KVX_ERROR_MAX], addr[64];
    uint64_t bk, bs, room = 7700, before;
    kvx_rdma_stats st0, st1;
    memset(&p0, 0, sizeof p0);
    memset(&p1, 0, sizeof p1);
    memset(&dc, 0, sizeof dc);
    if (pool_model(&p0, &rt_mla, KVX_STATE_MAMBA, 2, items, 16, 3, &r0) ||
        pool_model(&p1, &rt_mla, KVX_STATE_MAMBA, 2, items, 16, 5, &r1) ||
        pool_model(&dc, &rt_mla, KVX_STATE_MAMBA, 2, items, 16, 4, &ex_rank_all) ||
        !(p0.e = engine(KVX_ROLE_PREFILL, &p0, NULL, o0, why, sizeof why))) {
        CHECK(0, "MLA: prefill rank 0 up: %s", why);
        return;
    }
    o1[4] = kvx_boot_engine_port(p0.e);
    snprintf(addr, sizeof addr, "127.0.0.1:%d", o1[4]);
    if (!(p1.e = engine(KVX_ROLE_PREFILL, &p1, NULL, o1, why, sizeof why)) ||
        !(dc.e = engine(KVX_ROLE_DECODE, &dc, addr, NULL, why, sizeof why))) {
        CHECK(0, "MLA: prefill rank 1 and decode up: %s", why);
        return;
    }
    ex_alloc_pages(&p0.pool, sp0, 10);
    ex_alloc_pages(&p1.pool, sp1, 10);
    ex_alloc_pages(&dc.pool, dp, 10);
    sl0 = ex_alloc_slot(&p0.pool);
    sl1 = ex_alloc_slot(&p1.pool);
    dsl = ex_alloc_slot(&dc.pool);
    ex_pages_pattern(&p0.pool, room, sp0, 10, 1);
    ex_pages_pattern(&p1.pool, room, sp1, 10, 1);
    ex_aux_write(&p0.pool, room, sl0);
    ex_aux_write(&p1.pool, room, sl1);
    ex_state_pattern(&p0.pool, room, &si, 1, 1);
    ex_state_pattern(&p1.pool, room, &si, 1, 1);
    kvx_rdma_stats_get(p1.e, &st1);
    before = st1.bytes;
    memset(&rd, 0, sizeof rd);
    rd.room = room;
    kvx_receiver_create(dc.e, &rd, &rc);
    kvx_sender_create(p0.e, &rd, &s0);
    kvx_sender_create(p1.e, &rd, &s1);
    kvx_receiver_wait(rc, KVX_POLL_WAITING_FOR_INPUT, (int)(20000 * slow));
    kvx_receiver_init_state(rc, dp, 10, dsl, &di, 1);
    kvx_sender_wait(s0, KVX_POLL_WAITING_FOR_INPUT, (int)(20000 * slow));
    kvx_sender_wait(s1, KVX_POLL_WAITING_FOR_INPUT, (int)(20000 * slow));
    kvx_sender_init(s0, 10, sl0);
    kvx_sender_init(s1, 10, sl1);
    kvx_sender_send_state(s0, sp0, 10, &si, 1);
    kvx_sender_send_state(s1, sp1, 10, &si, 1);
    kvx_receiver_wait(rc, KVX_POLL_SUCCESS, (int)(60000 * slow));
    kvx_sender_wait(s0, KVX_POLL_SUCCESS, (int)(60000 * slow));
    kvx_sender_wait(s1, KVX_POLL_SUCCESS, (int)(60000 * slow));
    bk = ex_pages_pattern(&dc.pool, room, dp, 10, 0);
    bs = ex_state_pattern(&dc.pool, room, &di, 1, 0);
    CHECK(kvx_receiver_poll(rc) == KVX_POLL_SUCCESS && kvx_sender_poll(s0) == KVX_POLL_SUCCESS &&
          kvx_sender_poll(s1) == KVX_POLL_SUCCESS && !bk && !bs && ex_aux_check(&dc.pool, room, dsl),
          "MLA + Mamba state, prefill TP 2 -> decode TP 1: KV, aux and state rows in place "
          "(receiver %s: %s; %llu bad KV rows, %llu bad state rows)",
          kvx_poll_str(kvx_receiver_poll(rc)), kvx_receiver_error(rc), (unsigned long long)bk,
          (unsigned long long)bs);
    kvx_rdma_stats_get(p0.e, &st0);
    kvx_rdma_stats_get(p1.e, &st1);
    CHECK(st1.bytes == before && st0.bytes >= 10 * kvx_layout_page_bytes(&dc.pool.layout) +
                                             kvx_layout_state_row_bytes(&dc.pool.layout),
          "the MLA dummy (rank 1) wrote no byte, rank 0 wrote KV and state (%llu bytes)",
          (unsigned long long)st0.bytes);
    kvx_sender_destroy(s0);
    kvx_sender_destroy(s1);
    kvx_receiver_destroy(rc);
    side_down(&dc);
    side_down(&p1);
    side_down(&p0);
}

/* The decode room only (a refused connection: the prefill room waits for
   a room frame that never comes, and is destroyed). */
static void req_wait_r(req *x) { kvx_receiver_wait(x->r, KVX_POLL_SUCCESS, (int)(60000 * slow)); }

/* Every byte of a finished room: KV pages, aux row, state rows. */
static int req_verified(side *dc, req *x, char *err, size_t el) {
    uint64_t bk = ex_pages_pattern(&dc->pool, x->room, x->dp, x->n, 0);
    int aux = ex_aux_check(&dc->pool, x->room, x->dslot);
    uint64_t bs = ex_state_pattern(&dc->pool, x->room, x->di, x->nd, 0);
    int ok = kvx_receiver_poll(x->r) == KVX_POLL_SUCCESS && kvx_sender_poll(x->s) == KVX_POLL_SUCCESS &&
             !bk && aux && !bs;
    snprintf(err, el, "receiver %s (%s), sender %s (%s), %llu bad KV rows, aux %s, %llu bad state rows",
             kvx_poll_str(kvx_receiver_poll(x->r)), kvx_receiver_error(x->r),
             kvx_poll_str(kvx_sender_poll(x->s)), kvx_sender_error(x->s), (unsigned long long)bk,
             aux ? "ok" : "bad", (unsigned long long)bs);
    return ok;
}

/* Starts rooms x[0..n) together, waits for them; the rooms verified (err:
   the first failure). */
static int run_all(side *dc, req *x, int n, char *err, size_t el) {
    int i, good = 0;
    for (i = 0; i < n; i++) req_start(&x[i]);
    for (i = 0; i < n; i++) req_wait(&x[i]);
    for (i = 0; i < n; i++) {
        char e1[KVX_ERROR_MAX * 3];
        if (req_verified(dc, &x[i], e1, sizeof e1)) good++;
        else if (!err[0]) snprintf(err, el, "%s", e1);
    }
    return good;
}

/* Rows of every decode state buffer that are not zero, outside `keep`. */
static uint64_t stray_rows(side *dc, const int32_t *keep, uint32_t nk) {
    uint64_t bad = 0, rows = kvx_layout_num_state_rows(&dc->pool.layout), r, w;
    uint32_t b, k;
    for (b = 0; b < dc->pool.num_state; b++)
        for (r = 0; r < rows; r++) {
            const uint64_t *row = (const uint64_t *)((const char *)dc->pool.state[b].base +
                                                     r * dc->pool.state[b].item_len);
            int kept = 0;
            for (k = 0; k < nk; k++) kept |= keep[k] == (int32_t)r;
            if (kept) continue;
            for (w = 0; w < dc->pool.state[b].item_len / 8; w++)
                if (row[w]) { bad++; break; }
        }
    return bad;
}

/* ---- 1 and 5: Mamba-like state, and rooms without state -------------------- */

static void mamba(void) {
    static const uint64_t items[2] = {4096, 1024};
    side pf, dc;
    req x[6];
    int32_t keep[6];
    int i, good = 0;
    char err[KVX_ERROR_MAX * 3] = "";
    if (pair_up(&pf, &dc, KVX_STATE_MAMBA, 2, items, items, 32)) {
        CHECK(0, "mamba: engines up");
        return;
    }
    for (i = 0; i < 6; i++) { /* one slot each, prefill and decode slots differ */
        int32_t si = 3 + i, di = 30 - 4 * i;
        keep[i] = di;
        req_open(&pf, &dc, &x[i], 7100 + (uint64_t)i, 8 + 5 * (uint32_t)i, &si, 1, &di, 1);
    }
    good = run_all(&dc, x, 6, err, sizeof err);
    CHECK(good == 6, "Mamba-like, 2 state buffers (4096 + 1024 bytes), 1 index per room: %d of 6 "
          "rooms succeeded with every KV byte, aux row and state row in place %s", good, err);
    CHECK(stray_rows(&dc, keep, 6) == 0, "no decode state row but the rooms' was written");
    for (i = 0; i < 6; i++) req_close(&pf, &dc, &x[i]);
    good = 0;
    for (i = 0; i < 3; i++) { /* 5: the same pools, rooms without state */
        req_open(&pf, &dc, &x[i], 7200 + (uint64_t)i, 12, NULL, 0, NULL, 0);
        req_start(&x[i]);
        req_wait(&x[i]);
        if (req_verified(&dc, &x[i], err, sizeof err)) good++;
        req_close(&pf, &dc, &x[i]);
    }
    CHECK(good == 3, "rooms without state indices in a hybrid pool: %d of 3 succeeded %s", good,
          good == 3 ? "" : err);
    CHECK(stray_rows(&dc, keep, 6) == 0, "and wrote no state row");
    side_down(&dc);
    side_down(&pf);
}

/* ---- 2: sliding-window state, scattered indices with runs --------------------- */

static void swa(void) {
    static const uint64_t items[1] = {2048};
    static const int32_t si[2][9] = {{40, 41, 42, 7, 90, 91, 3, 60, 61},
                                     {10, 11, 12, 13, 14, 15, 16, 17, 18}};
    static const int32_t di[2][9] = {{5, 6, 7, 80, 81, 82, 30, 11, 12},
                                     {100, 20, 101, 21, 102, 22, 103, 23, 104}};
    side pf, dc;
    req x[2];
    int32_t keep[18];
    int i, good = 0;
    uint64_t spans0, spans1, want;
    kvx_rdma_stats st;
    char err[KVX_ERROR_MAX * 3] = "";
    if (pair_up(&pf, &dc, KVX_STATE_SWA, 1, items, items, 128)) {
        CHECK(0, "swa: engines up");
        return;
    }
    for (i = 0; i < 18; i++) keep[i] = di[i / 9][i % 9];
    kvx_rdma_stats_get(pf.e, &st);
    spans0 = st.spans;
    for (i = 0; i < 2; i++) req_open(&pf, &dc, &x[i], 7300 + (uint64_t)i, 24, si[i], 9, di[i], 9);
    good = run_all(&dc, x, 2, err, sizeof err);
    CHECK(good == 2, "SWA-like paged state, 9 scattered indices with runs: %d of 2 rooms verified %s",
          good, err);
    CHECK(stray_rows(&dc, keep, 18) == 0, "no decode window row but the rooms' was written");
    kvx_rdma_stats_get(pf.e, &st);
    spans1 = st.spans - spans0;
    want = 0;
    for (i = 0; i < 2; i++) { /* the same plans as the transport's: 2 chunks, aux, state */
        kvx_plan pl;
        memset(&pl, 0, sizeof pl);
        kvx_plan_pages(&pl, &pf.pool.layout, x[i].sp, &dc.pool.layout, x[i].dp, 12);
        want += pl.count;
        kvx_plan_free(&pl);
        memset(&pl, 0, sizeof pl);
        kvx_plan_pages(&pl, &pf.pool.layout, x[i].sp + 12, &dc.pool.layout, x[i].dp + 12, 12);
        kvx_plan_aux(&pl, &pf.pool.layout, x[i].sslot, &dc.pool.layout, x[i].dslot);
        want += pl.count;
        kvx_plan_free(&pl);
    }
    /* state runs: room 0 (40..42 -> 5..7) 7 (90,91 -> 81,82) 3 (60,61 -> 11,12) = 5; room 1: 9 */
    CHECK(spans1 == want + 14, "the state rows went as 14 runs (%llu spans, %llu of them KV and aux)",
          (unsigned long long)spans1, (unsigned long long)want);
    for (i = 0; i < 2; i++) req_close(&pf, &dc, &x[i]);
    side_down(&dc);
    side_down(&pf);
}

/* ---- 3: count mismatch ------------------------------------------------------------ */

static void mismatch(side *pf, side *dc, uint64_t room, uint32_t ns, uint32_t nd) {
    static const int32_t si[3] = {1, 2, 3}, di[3] = {10, 11, 12};
    req x;
    char want[64];
    req_open(pf, dc, &x, room, 6, si, ns, di, nd);
    req_start(&x);
    req_wait(&x);
    snprintf(want, sizeof want, "prefill sent %u state ind%s", ns, ns == 1 ? "ex" : "ices");
    CHECK(kvx_sender_poll(x.s) == KVX_POLL_FAILED && strstr(kvx_sender_error(x.s), want) &&
          strstr(kvx_sender_error(x.s), nd == 3 ? "asked for 3" : "asked for 0"),
          "count mismatch %u vs %u: the prefill room fails saying both counts: %s", ns, nd,
          kvx_sender_error(x.s));
    CHECK(kvx_receiver_poll(x.r) == KVX_POLL_FAILED && strstr(kvx_receiver_error(x.r), want),
          "and the decode room fails with the sentence: %s", kvx_receiver_error(x.r));
    req_close(pf, dc, &x);
}

static void counts(void) {
    static const uint64_t items[2] = {512, 256};
    side pf, dc;
    if (pair_up(&pf, &dc, KVX_STATE_MAMBA, 2, items, items, 32)) {
        CHECK(0, "counts: engines up");
        return;
    }
    mismatch(&pf, &dc, 7400, 2, 3);
    mismatch(&pf, &dc, 7401, 1, 0);
    {
        req x;
        char err[KVX_ERROR_MAX * 3];
        int32_t s = 5, d = 6;
        req_open(&pf, &dc, &x, 7402, 6, &s, 1, &d, 1);
        req_start(&x);
        req_wait(&x);
        CHECK(req_verified(&dc, &x, err, sizeof err), "the pair still moves state afterwards: %s", err);
        req_close(&pf, &dc, &x);
    }
    side_down(&dc);
    side_down(&pf);
}

/* The prefill's init is refused (it declares more pages than the decode
   asked for) and the sender is destroyed at once, as SGLang's scheduler
   clears a failed request: the decode still hears the first reason. The
   close waits for the room_failed the progress thread may be running (it
   cancels the room's WRITEs before it tells the peer); before, a close in
   that window removed the room first and the decode waited for its
   timeout. */
static void refused_then_closed(void) {
    side pf, dc;
    int i, heard = 0;
    char last[KVX_ERROR_MAX + 64] = "";
    if (pair_up(&pf, &dc, KVX_STATE_NONE, 0, NULL, NULL, 0)) {
        CHECK(0, "refused then closed: engines up");
        return;
    }
    for (i = 0; i < 16; i++) {
        req x;
        req_open(&pf, &dc, &x, 7500 + (uint64_t)i, 6, NULL, 0, NULL, 0);
        kvx_receiver_wait(x.r, KVX_POLL_WAITING_FOR_INPUT, (int)(20000 * slow));
        kvx_receiver_init(x.r, x.dp, 5, x.dslot);
        kvx_sender_wait(x.s, KVX_POLL_WAITING_FOR_INPUT, (int)(20000 * slow));
        kvx_sender_init(x.s, 6, x.sslot);
        kvx_sender_destroy(x.s);
        x.s = NULL;
        kvx_receiver_wait(x.r, KVX_POLL_SUCCESS, (int)(20000 * slow));
        if (kvx_receiver_poll(x.r) == KVX_POLL_FAILED &&
            strstr(kvx_receiver_error(x.r), "init declares 6 pages"))
            heard++;
        else
            snprintf(last, sizeof last, "room %d: %s '%s'", i, kvx_poll_str(kvx_receiver_poll(x.r)),
                     kvx_receiver_error(x.r));
        req_close(&pf, &dc, &x);
    }
    CHECK(heard == 16, "refused then closed at once: the decode hears the prefill's reason in %d of "
          "16 rooms %s", heard, last);
    side_down(&dc);
    side_down(&pf);
}

/* ---- 4: refusals of kvx_layout_overlap reach the room ------------------------------- */

static void refused_item(void) {
    static const uint64_t pi[1] = {1024}, di[1] = {2048};
    side pf, dc;
    req x;
    int32_t s = 1, d = 2;
    if (pair_up(&pf, &dc, KVX_STATE_MAMBA, 1, pi, di, 16)) {
        CHECK(0, "refused item_len: engines up");
        return;
    }
    req_open(&pf, &dc, &x, 7500, 6, &s, 1, &d, 1);
    req_start(&x);
    req_wait_r(&x);
    CHECK(kvx_receiver_poll(x.r) == KVX_POLL_FAILED &&
          strstr(kvx_receiver_error(x.r), "item_len of state buffer 0 differs"),
          "state item_len 1024 vs 2048: the decode room fails with the sentence: %s",
          kvx_receiver_error(x.r));
    req_close(&pf, &dc, &x);
    side_down(&dc);
    side_down(&pf);
}

static void refused_tp(void) {
    static const uint64_t items[1] = {1024};
    static const ex_rank r0 = {2, 0, 1, 0}, r1 = {2, 1, 1, 0};
    side pf, d0, d1;
    kvx_room_desc rd;
    kvx_sender *s = NULL;
    kvx_receiver *rc0 = NULL, *rc1 = NULL;
    int32_t dp[4], idx = 3, k;
    int o0[7] = {2, 0, 1, 0, 0, 1, 0}, o1[7] = {2, 1, 1, 0, 0, 1, 0};
    char why[KVX_ERROR_MAX], addr[64];
    memset(&pf, 0, sizeof pf);
    memset(&d0, 0, sizeof d0);
    memset(&d1, 0, sizeof d1);
    if (pool_make(&pf, KVX_STATE_SWA, 1, items, 16, 3, &ex_rank_all) ||
        pool_make(&d0, KVX_STATE_SWA, 1, items, 16, 4, &r0) ||
        pool_make(&d1, KVX_STATE_SWA, 1, items, 16, 5, &r1) ||
        !(pf.e = engine(KVX_ROLE_PREFILL, &pf, NULL, NULL, why, sizeof why))) {
        CHECK(0, "refused TP: prefill up: %s", why);
        return;
    }
    snprintf(addr, sizeof addr, "127.0.0.1:%d", kvx_boot_engine_port(pf.e));
    if (!(d0.e = engine(KVX_ROLE_DECODE, &d0, addr, o0, why, sizeof why)) ||
        !(d1.e = engine(KVX_ROLE_DECODE, &d1, addr, o1, why, sizeof why))) {
        CHECK(0, "refused TP: decode ranks up: %s", why);
        return;
    }
    for (k = 0; k < 4; k++) dp[k] = k + 1;
    memset(&rd, 0, sizeof rd);
    rd.room = 7600;
    kvx_receiver_create(d0.e, &rd, &rc0);
    kvx_receiver_create(d1.e, &rd, &rc1);
    kvx_sender_create(pf.e, &rd, &s);
    kvx_receiver_wait(rc0, KVX_POLL_WAITING_FOR_INPUT, (int)(20000 * slow));
    kvx_receiver_wait(rc1, KVX_POLL_WAITING_FOR_INPUT, (int)(20000 * slow));
    kvx_receiver_init_state(rc0, dp, 4, -1, &idx, 1);
    kvx_receiver_init_state(rc1, dp, 4, -1, &idx, 1);
    kvx_receiver_wait(rc0, KVX_POLL_SUCCESS, (int)(60000 * slow));
    kvx_receiver_wait(rc1, KVX_POLL_SUCCESS, (int)(60000 * slow));
    CHECK(kvx_receiver_poll(rc0) == KVX_POLL_FAILED && kvx_receiver_poll(rc1) == KVX_POLL_FAILED &&
          strstr(kvx_receiver_error(rc0), "sliding-window state between ranks holding different heads"),
          "SWA, non-MLA, prefill TP 1 -> decode TP 2: both decode rooms fail with the sentence: %s",
          kvx_receiver_error(rc0));
    kvx_sender_destroy(s);
    kvx_receiver_destroy(rc0);
    kvx_receiver_destroy(rc1);
    side_down(&d1);
    side_down(&d0);
    side_down(&pf);
}

/* ---- GPU state buffers: the KV buffers' registration path ------------------- */

static void gpu_state(void) {
    static const uint64_t items[2] = {1024, 512};
    side s;
    kvx_engine_desc d;
    kvx_engine *e = NULL;
    kvx_result res;
    char why[KVX_ERROR_MAX] = "";
    memset(&s, 0, sizeof s);
    if (pool_make(&s, KVX_STATE_MAMBA, 2, items, 8, 3, &ex_rank_all)) {
        CHECK(0, "gpu: pool");
        return;
    }
    s.pool.state[1].mem = KVX_MEM_CUDA; /* host memory posing as GPU memory */
    memset(&d, 0, sizeof d);
    d.role = KVX_ROLE_DECODE;
    d.transport = "rdma";
    d.layout = s.pool.layout;
    d.logger.func = rt_log;
    d.logger.level = KVX_LOG_ERROR;
    d.boot.host = "127.0.0.1";
    d.boot.port = -1;
    d.bootstrap_addr = "127.0.0.1:1";
    kvx_rdma_register();
    res = kvx_engine_create(&d, &e, why, sizeof why);
    CHECK(res == KVX_ERR_INVALID_ARGUMENT && !e && strstr(why, "state buffer 1 is GPU memory") &&
          strstr(why, "dma-buf"), "a GPU state buffer without a dma-buf op in desc.mem is refused: %s",
          why);
    d.mem.dmabuf_fd = rt_fake_dmabuf;
    res = kvx_engine_create(&d, &e, why, sizeof why);
    CHECK(!e && res != KVX_OK && strstr(why, "cannot register state buffer 1") && rt_fd_given >= 0 &&
          fcntl(rt_fd_given, F_GETFD) == -1,
          "with one it goes through ibv_reg_dmabuf_mr like GPU KV pages (softverbs refuses it): %s",
          why);
    kvx_engine_destroy(e);
    ex_pool_free(&s.pool);
}

int main(void) {
    int rc = rt_inproc("test_rdma_state", lib, sizeof lib);
    if (rc) return rc;
    if (rt_quick()) slow = 3;
    setenv("KVX_IB_CONNECT_TIMEOUT", "5", 1);
    mamba();
    swa();
    counts();
    refused_then_closed();
    refused_item();
    refused_tp();
    mla_dummy();
    gpu_state();
    return rt_finish();
}
