/* test_tcp_state - the tcp transport carrying hybrid-model state rows
   (kvx.h HYBRID STATE), prefill and decode engines in one process:

   - Mamba-like: two state buffers (4096- and 1024-byte rows), one state
     index per request, several rooms sent in chunks: KV pages, aux rows
     and state rows verified byte for byte, the byte counts include state
   - SWA-like: paged state, several scattered indices with consecutive runs
   - the same with the state buffers in (mock) GPU memory on both sides:
     the rows go through the pinned stage and kvx_mem_ops
   - count mismatch: prefill gives 2 state indices, decode asked for 3: the
     room fails on both sides with a sentence giving both counts
   - a refusal of kvx_layout_overlap (state item_len differs) reaches the
     decode's room with its sentence (its kvx_boot refuses the pairing)
   - a room without state beside them still passes (and
     test_tcp_transfer / test_tcp_topo run the equal-shape rooms)

   kvx_boot protocol 4 carries the state shape in hellos and the decode's
   state indices in room frames. */
#define KVX_IMPLEMENTATION
#include "tcp_test.h"

#define POOL 128u
#define ROWS 64u

typedef struct pair {
    ex_pool ps, pr;
    kvx_buffer sdev[2], rdev[2]; /* GPU state: the device view of ps / pr's state */
    kvx_engine *pe, *de;
} pair;

static kvx_mem_ops mock_mem(void) {
    kvx_mem_ops m;
    memset(&m, 0, sizeof m);
    m.copy = tt_mock_copy;
    m.host_alloc = tt_mock_alloc;
    m.host_free = tt_mock_free;
    return m;
}

/* Two pools of the tiny model with state buffers of item[0..count) bytes
   (decode: ditem) and an engine on each; gpu: state buffers in mock device
   memory on both sides. 0, or -1 (checked, said). */
static int pair_open(pair *p, uint32_t type, uint32_t count, const uint64_t *item,
                     const uint64_t *ditem, int gpu) {
    static kvx_mem_ops mem;
    kvx_layout ls, lr;
    tt_opts o;
    char why[512], addr[64];
    uint32_t i;
    memset(p, 0, sizeof *p);
    ex_pool_init(&p->ps, &tt_tiny, POOL, 16, 8, 1);
    ex_pool_init(&p->pr, &tt_tiny, POOL, 16, 8, 2);
    if (ex_pool_add_state(&p->ps, type, count, 8, ROWS) || ex_pool_add_state(&p->pr, type, count, 8, ROWS))
        return -1;
    for (i = 0; i < count; i++) { /* rows of other sizes (the layouts point at state[]) */
        free(p->ps.state[i].base);
        free(p->pr.state[i].base);
        p->ps.state[i].base = calloc(ROWS, (size_t)item[i]);
        p->pr.state[i].base = calloc(ROWS, (size_t)ditem[i]);
        p->ps.state[i].item_len = item[i];
        p->pr.state[i].item_len = ditem[i];
        p->ps.state[i].length = item[i] * ROWS;
        p->pr.state[i].length = ditem[i] * ROWS;
    }
    ls = p->ps.layout;
    lr = p->pr.layout;
    memset(&o, 0, sizeof o);
    mem = mock_mem();
    if (gpu) {
        tt_devmem(p->ps.state, count, p->sdev);
        tt_devmem(p->pr.state, count, p->rdev);
        ls.state = p->sdev;
        lr.state = p->rdev;
        o.mem = &mem;
    }
    p->pe = tt_engine(KVX_ROLE_PREFILL, &ls, &o, why, sizeof why);
    CHECK(p->pe != NULL, "prefill engine: %s", why);
    if (!p->pe) return -1;
    snprintf(addr, sizeof addr, "127.0.0.1:%d", kvx_boot_engine_port(p->pe));
    o.boot_addr = addr;
    p->de = tt_engine(KVX_ROLE_DECODE, &lr, &o, why, sizeof why);
    CHECK(p->de != NULL, "decode engine: %s", why);
    return p->de ? 0 : -1;
}

static void pair_close(pair *p) {
    kvx_engine_destroy(p->de);
    kvx_engine_destroy(p->pe);
    ex_pool_free(&p->ps);
    ex_pool_free(&p->pr);
}

/* One room of the pair: n pages in chunks of `chunk`, aux slot s -> 7 - s
   (-1: no aux rows),
   prefill state indices si[0..ns), decode di[0..nd). The sender and
   receiver are left for the caller to check and destroy. */
typedef struct room_run {
    kvx_sender *s;
    kvx_receiver *r;
    int32_t sp[64], dp[64];
    uint32_t n;
    int32_t slot;
} room_run;

static void room_start(pair *p, room_run *rr, uint64_t room, int32_t slot, uint32_t n,
                       uint32_t chunk, const int32_t *si, uint32_t ns, const int32_t *di,
                       uint32_t nd) {
    kvx_room_desc rd;
    uint32_t sent = 0;
    memset(&rd, 0, sizeof rd);
    rd.room = room;
    rr->n = n;
    ex_alloc_pages(&p->ps, rr->sp, n);
    ex_alloc_pages(&p->pr, rr->dp, n);
    ex_pages_pattern(&p->ps, room, rr->sp, n, 1);
    if (slot >= 0) {
        ex_aux_write(&p->ps, room, slot);
        ex_aux_clear(&p->pr, 7 - slot);
    }
    rr->slot = slot;
    ex_state_pattern(&p->ps, room, si, ns, 1);
    kvx_receiver_create(p->de, &rd, &rr->r);
    kvx_sender_create(p->pe, &rd, &rr->s);
    if (!tt_wait_ready_r(rr->r, 30)) return; /* refused at bootstrap: the checks say why */
    kvx_receiver_init_state(rr->r, rr->dp, n, slot < 0 ? -1 : 7 - slot, di, nd);
    if (!tt_wait_ready_s(rr->s, 30)) return;
    kvx_sender_init(rr->s, n, slot);
    do {
        uint32_t k = n - sent < chunk ? n - sent : chunk;
        if (sent + k == n) kvx_sender_send_state(rr->s, rr->sp + sent, k, si, ns);
        else kvx_sender_send(rr->s, rr->sp + sent, k);
        sent += k;
    } while (sent < n);
}

static void room_end(pair *p, room_run *rr) {
    kvx_sender_destroy(rr->s);
    kvx_receiver_destroy(rr->r);
    ex_free_pages(&p->ps, rr->sp, rr->n);
    ex_free_pages(&p->pr, rr->dp, rr->n);
}

/* Rooms that must succeed: every page, aux row and state row in place;
   rooms from `noaux` on have no aux rows (the state rows travel alone). */
static void rooms_ok(const char *label, pair *p, uint64_t room0, int nrooms, int noaux,
                     uint32_t ns, const int32_t (*si)[8], const int32_t (*di)[8]) {
    room_run rr[6];
    kvx_tcp_stats st0, st;
    uint64_t want = 0;
    int i;
    kvx_tcp_stats_get(p->de, &st0);
    for (i = 0; i < nrooms; i++)
        room_start(p, &rr[i], room0 + (uint64_t)i, i < noaux ? i : -1, 5 + 3 * (uint32_t)i, 2,
                   si[i], ns, di[i], ns);
    for (i = 0; i < nrooms; i++) {
        uint64_t room = room0 + (uint64_t)i;
        CHECK(tt_wait_r(rr[i].r, 60) == KVX_POLL_SUCCESS, "%s room %d: receiver Success: %s",
              label, i, kvx_receiver_error(rr[i].r));
        CHECK(tt_wait_s(rr[i].s, 60) == KVX_POLL_SUCCESS, "%s room %d: sender Success: %s",
              label, i, kvx_sender_error(rr[i].s));
        CHECK(ex_pages_pattern(&p->pr, room, rr[i].dp, rr[i].n, 0) == 0 &&
              (rr[i].slot < 0 || ex_aux_check(&p->pr, room, 7 - rr[i].slot)),
              "%s room %d: %u pages and the aux rows (%s) verified", label, i, rr[i].n,
              rr[i].slot < 0 ? "none" : "slot");
        CHECK(ex_state_pattern(&p->pr, room, di[i], ns, 0) == 0,
              "%s room %d: %u state rows of %u buffers verified", label, i, ns, p->pr.num_state);
        want += rr[i].n * kvx_layout_page_bytes(&p->pr.layout) +
                (rr[i].slot < 0 ? 0 : kvx_layout_aux_row_bytes(&p->pr.layout)) +
                ns * kvx_layout_state_row_bytes(&p->pr.layout);
        room_end(p, &rr[i]);
    }
    kvx_tcp_stats_get(p->de, &st);
    CHECK(st.bytes_received - st0.bytes_received == want && st.frames_rejected == 0,
          "%s: decode received %llu bytes, pages + aux + state are %llu", label,
          (unsigned long long)(st.bytes_received - st0.bytes_received), (unsigned long long)want);
}

static void test_mamba(int gpu) {
    static const uint64_t item[2] = {4096, 1024};
    static const int32_t si[4][8] = {{7}, {0}, {12}, {63}}, di[4][8] = {{3}, {9}, {0}, {63}};
    pair p;
    const char *label = gpu ? "mamba (GPU state)" : "mamba";
    int before = tt_mock_copies;
    if (pair_open(&p, KVX_STATE_MAMBA, 2, item, item, gpu) == 0) {
        rooms_ok(label, &p, gpu ? 2100 : 2000, 4, 3, 1, si, di);
        if (gpu)
            CHECK(tt_mock_copies > before, "mamba (GPU state): the rows went through kvx_mem_ops "
                  "(%d copies)", tt_mock_copies - before);
    }
    pair_close(&p);
}

static void test_swa(void) {
    static const uint64_t item[2] = {2048, 2048};
    static const int32_t si[3][8] = {{3, 4, 5, 9, 1, 2, 20, 30}, {40, 41, 42, 43, 44, 45, 46, 47},
                                     {0, 10, 11, 50, 51, 52, 8, 60}};
    static const int32_t di[3][8] = {{10, 11, 12, 2, 7, 8, 30, 13}, {20, 21, 22, 23, 24, 25, 26, 27},
                                     {61, 60, 59, 4, 5, 6, 40, 41}};
    pair p;
    if (pair_open(&p, KVX_STATE_SWA, 2, item, item, 0) == 0) rooms_ok("swa", &p, 3000, 3, 2, 8, si, di);
    pair_close(&p);
}

/* Both sides of the room fail, each error holding want and want2. */
static void both_fail(const char *label, room_run *rr, const char *want, const char *want2) {
    CHECK(tt_wait_s(rr->s, 30) == KVX_POLL_FAILED, "%s: sender failed (%s)", label,
          kvx_poll_str(kvx_sender_poll(rr->s)));
    CHECK(tt_wait_r(rr->r, 30) == KVX_POLL_FAILED, "%s: receiver failed (%s)", label,
          kvx_poll_str(kvx_receiver_poll(rr->r)));
    CHECK_STR(kvx_sender_error(rr->s), want);
    CHECK_STR(kvx_sender_error(rr->s), want2);
    CHECK_STR(kvx_receiver_error(rr->r), want);
    CHECK_STR(kvx_receiver_error(rr->r), want2);
}

/* Prefill 2 indices, decode 3: both sides fail with both counts; a room
   without state on the same engines succeeds after. */
static void test_mismatch(void) {
    static const uint64_t item[1] = {1024};
    static const int32_t si[2] = {1, 2}, di[3] = {4, 5, 6};
    static const int32_t none[1][8] = {{0}};
    pair p;
    room_run rr;
    if (pair_open(&p, KVX_STATE_SWA, 1, item, item, 0) == 0) {
        room_start(&p, &rr, 4000, 0, 6, 4, si, 2, di, 3);
        both_fail("count mismatch", &rr, "prefill sent 2 state indices", "asked for 3");
        room_end(&p, &rr);
        rooms_ok("no state beside", &p, 4100, 1, 1, 0, none, none);
    }
    pair_close(&p);
}

/* kvx_layout_overlap refuses state rows of different sizes: the sentence
   reaches the decode's room. */
static void test_refused(void) {
    static const uint64_t item[1] = {4096}, ditem[1] = {2048};
    static const int32_t si[1] = {1}, di[1] = {2};
    pair p;
    room_run rr;
    if (pair_open(&p, KVX_STATE_MAMBA, 1, item, ditem, 0) == 0) {
        room_start(&p, &rr, 5000, 0, 4, 4, si, 1, di, 1);
        /* the decode's kvx_boot refuses the pairing: its room fails with
           the sentence; the prefill's room never got a destination */
        CHECK(tt_wait_r(rr.r, 30) == KVX_POLL_FAILED, "state item_len differs: receiver failed "
              "(%s)", kvx_poll_str(kvx_receiver_poll(rr.r)));
        CHECK_STR(kvx_receiver_error(rr.r), "item_len of state buffer 0 differs");
        CHECK_STR(kvx_receiver_error(rr.r), "4096");
        room_end(&p, &rr);
    }
    pair_close(&p);
}

int main(void) {
    kt_name = "test_tcp_state";
    signal(SIGPIPE, SIG_IGN);
    test_mamba(0);
    test_swa();
    test_mamba(1);
    test_mismatch();
    test_refused();
    return kt_done();
}
