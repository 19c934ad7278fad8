/* test_cuda_trust - failure semantics and the aux messages of the cuda
   transport, both engines in one process on the fake driver (issue 10):
   - a sender that fails on its own (page index out of range, more pages
     than declared, aux slot out of range) fails its receiver at once with
     its reason; a receiver that aborts fails its sender at once; the first
     reason wins;
   - a terminal room sends nothing: receivers (senders) that abort right
     after their Success never fail the other side;
   - aux messages (kvx_boot transport messages, prefill -> decode): one
     from a third engine naming another connection's room, or without the
     magic, is refused and counted and changes nothing (the room then
     succeeds with its own aux rows, byte for byte); one for the sender's
     own room with the wrong length fails that room with the reason. */
#define KVX_IMPLEMENTATION
#include "../../kvx_cuda.h"
#include "cuda_test.h"
#include "cuda_xport.h"

#if !defined(KVX_WITH_CUDA)
int main(void) {
    kt_name = "test_cuda_trust";
    return kt_skip("built without KVX_WITH_CUDA (no CUDA toolkit headers at build time)");
}
#else

static ct_fake F;
static double slow = 1;

typedef struct xr {
    uint64_t room;
    uint32_t n;
    int32_t sp[16], dp[16];
    int32_t sslot, dslot;
    kvx_sender *s;
    kvx_receiver *r;
} xr;

/* These wait for a state the room reaches; the deadline is reached only
   on failure. */
static int wait_s(kvx_sender *s, kvx_poll want, double t) {
    kvx_poll p = kvx_sender_wait(s, want, (int)(t * slow * 1000));
    return p >= want && p != KVX_POLL_FAILED;
}
static int wait_r(kvx_receiver *r, kvx_poll want, double t) {
    kvx_poll p = kvx_receiver_wait(r, want, (int)(t * slow * 1000));
    return p >= want && p != KVX_POLL_FAILED;
}
static double until_r(kvx_receiver *r, double t) {
    double start = cx_now();
    return cx_terminal(kvx_receiver_wait(r, KVX_POLL_SUCCESS, (int)(t * slow * 1000)))
               ? cx_now() - start : -1;
}
static double until_s(kvx_sender *s, double t) {
    double start = cx_now();
    return cx_terminal(kvx_sender_wait(s, KVX_POLL_SUCCESS, (int)(t * slow * 1000)))
               ? cx_now() - start : -1;
}

static void xr_open_at(cx_side *pf, cx_side *dc, xr *x, uint64_t room, uint32_t n,
                       const char *boot) {
    kvx_room_desc rd;
    memset(x, 0, sizeof *x);
    x->room = room;
    x->n = n;
    ex_alloc_pages(&pf->pool, x->sp, n);
    ex_alloc_pages(&dc->pool, x->dp, n);
    x->sslot = ex_alloc_slot(&pf->pool);
    x->dslot = ex_alloc_slot(&dc->pool);
    ex_aux_write(&pf->pool, room, x->sslot);
    ex_aux_clear(&dc->pool, x->dslot);
    memset(&rd, 0, sizeof rd);
    rd.room = room;
    rd.bootstrap_addr = boot;
    kvx_receiver_create(dc->e, &rd, &x->r);
    kvx_sender_create(pf->e, &rd, &x->s);
}

static void xr_open(cx_side *pf, cx_side *dc, xr *x, uint64_t room, uint32_t n) {
    xr_open_at(pf, dc, x, room, n, NULL);
}

static void xr_close(cx_side *pf, cx_side *dc, xr *x) {
    kvx_sender_destroy(x->s);
    kvx_receiver_destroy(x->r);
    ex_free_pages(&pf->pool, x->sp, x->n);
    ex_free_pages(&dc->pool, x->dp, x->n);
    ex_free_slot(&pf->pool, x->sslot);
    ex_free_slot(&dc->pool, x->dslot);
}

static int xr_ready(xr *x) {
    return wait_r(x->r, KVX_POLL_WAITING_FOR_INPUT, 20) &&
           kvx_receiver_init(x->r, x->dp, x->n, x->dslot) == KVX_OK &&
           wait_s(x->s, KVX_POLL_WAITING_FOR_INPUT, 20);
}

enum { BAD_PAGE, TOO_MANY, BAD_AUX };

static void sender_fails(cx_side *pf, cx_side *dc, int how, uint64_t room, const char *what) {
    xr x;
    int32_t pages[8];
    double t;
    int i;
    xr_open(pf, dc, &x, room, 4);
    if (!xr_ready(&x)) {
        CHECK(0, "%s: both sides ready (%s / %s)", what, kvx_receiver_error(x.r), kvx_sender_error(x.s));
        xr_close(pf, dc, &x);
        return;
    }
    if (how == BAD_AUX) {
        kvx_sender_init(x.s, x.n, 100000);
    } else {
        kvx_sender_init(x.s, x.n, x.sslot);
        for (i = 0; i < 8; i++) pages[i] = x.sp[i % 4];
        if (how == BAD_PAGE) {
            pages[2] = 1 << 20;
            kvx_sender_send(x.s, pages, 4);
        } else {
            kvx_sender_send(x.s, pages, 6);
        }
    }
    CHECK(kvx_sender_poll(x.s) == KVX_POLL_FAILED, "%s: the sender failed: %s", what,
          kvx_sender_error(x.s));
    t = until_r(x.r, 30);
    CHECK(t >= 0 && kvx_receiver_poll(x.r) == KVX_POLL_FAILED && t < 5 * slow,
          "%s: the receiver failed %.2f s later (KVX_WAITING_TIMEOUT is 300 s)", what, t);
    CHECK(kvx_sender_error(x.s)[0] && strstr(kvx_receiver_error(x.r), kvx_sender_error(x.s)),
          "%s: with the sender's reason: %s", what, kvx_receiver_error(x.r));
    xr_close(pf, dc, &x);
}

static void aborts(cx_side *pf, cx_side *dc) {
    xr x;
    double t;
    xr_open(pf, dc, &x, 2101, 6);
    if (xr_ready(&x)) {
        kvx_sender_init(x.s, x.n, x.sslot);
        kvx_sender_send(x.s, x.sp, 2);
        kvx_receiver_abort(x.r, "the scheduler dropped request 42");
        kvx_receiver_abort(x.r, "a second reason that must not win");
        t = until_s(x.s, 30);
        CHECK(t >= 0 && t < 5 * slow && kvx_sender_poll(x.s) == KVX_POLL_FAILED &&
              strstr(kvx_sender_error(x.s), "the scheduler dropped request 42") &&
              !strstr(kvx_sender_error(x.s), "second reason") &&
              !strstr(kvx_receiver_error(x.r), "second reason"),
              "receiver aborts mid-transfer: the sender failed %.2f s later with the first "
              "reason: %s", t, kvx_sender_error(x.s));
    } else {
        CHECK(0, "receiver aborts: both sides ready");
    }
    xr_close(pf, dc, &x);
    xr_open(pf, dc, &x, 2102, 6);
    if (xr_ready(&x)) {
        kvx_sender_abort(x.s, "prefill preempted the request");
        kvx_sender_abort(x.s, "a later reason");
        t = until_r(x.r, 30);
        CHECK(t >= 0 && t < 5 * slow && strstr(kvx_receiver_error(x.r), "prefill preempted the request") &&
              !strstr(kvx_receiver_error(x.r), "later reason"),
              "sender aborts twice: the receiver failed %.2f s later with the first reason: %s", t,
              kvx_receiver_error(x.r));
    } else {
        CHECK(0, "sender aborts: both sides ready");
    }
    xr_close(pf, dc, &x);
}

#define RACE 24

static void abort_after_success(cx_side *pf, cx_side *dc, int sender_side) {
    static xr x[RACE];
    int i, left = RACE, ready = 0, called = 0, ss = 0, rs = 0, errs = 0, done[RACE];
    double end;
    const char *what = sender_side ? "senders abort right after their Success"
                                   : "receivers abort right after their Success";
    memset(done, 0, sizeof done);
    for (i = 0; i < RACE; i++) xr_open(pf, dc, &x[i], (sender_side ? 3000u : 4000u) + (uint64_t)i, 1 + (uint32_t)(i % 6));
    for (i = 0; i < RACE; i++) ready += xr_ready(&x[i]);
    for (i = 0; i < RACE; i++) {
        kvx_sender_init(x[i].s, x[i].n, x[i].sslot);
        kvx_sender_send(x[i].s, x[i].sp, x[i].n);
    }
    end = cx_now() + 30 * slow;
    while (left && cx_now() < end) {
        for (i = 0; i < RACE; i++) {
            kvx_poll p;
            if (done[i]) continue;
            p = sender_side ? kvx_sender_poll(x[i].s) : kvx_receiver_poll(x[i].r);
            if (!cx_terminal(p)) continue;
            if (p == KVX_POLL_SUCCESS) {
                if (sender_side) kvx_sender_abort(x[i].s, "aborted after Success");
                else kvx_receiver_abort(x[i].r, "aborted after Success");
                called++;
            }
            done[i] = 1;
            left--;
        }
    }
    for (i = 0; i < RACE; i++) {
        until_s(x[i].s, 10);
        until_r(x[i].r, 10);
        ss += kvx_sender_poll(x[i].s) == KVX_POLL_SUCCESS;
        rs += kvx_receiver_poll(x[i].r) == KVX_POLL_SUCCESS;
        errs += kvx_sender_error(x[i].s)[0] != 0 || kvx_receiver_error(x[i].r)[0] != 0;
    }
    CHECK(ready == RACE && called == RACE, "%s: %d rooms ready, %d aborted after Success", what,
          ready, called);
    CHECK(ss == RACE && rs == RACE && errs == 0, "%s: every sender (%d) and receiver (%d) of %d "
          "stays Success with no error text (%d)", what, ss, rs, RACE, errs);
    for (i = 0; i < RACE; i++) xr_close(pf, dc, &x[i]);
}

/* ---- aux messages --------------------------------------------------------------- */

/* The (one) control connection of a prefill engine, as kvx_boot_peer_send
   reads it. */
static kvx_boot_peer conn_of(kvx_engine *e) {
    kvx_boot *b = kvx_boot_get(e);
    kvx_boot_peer p;
    memset(&p, 0, sizeof p);
    pthread_mutex_lock(&b->mu);
    if (b->nlive == 1) p = b->live[0]->info;
    pthread_mutex_unlock(&b->mu);
    return p;
}

static uint64_t refused(cx_side *dc) {
    kvx_cuda_transport_stats st;
    kvx_cuda_transport_stats_get(dc->e, &st);
    return st.aux_refused;
}

static int wait_refused(cx_side *dc, uint64_t want) {
    double end = cx_now() + 30 * slow;
    while (refused(dc) < want && cx_now() < end) cx_sleep(0.001);
    return refused(dc) == want;
}

/* An aux message (AUX MESSAGE in kvx_cuda.h) of rl row bytes, all 0xEE. */
static kvx_result send_aux(cx_side *from, uint64_t room, uint32_t rl, const char *magic) {
    static uint8_t m[24 + 256];
    kvx_boot_peer p = conn_of(from->e);
    char why[KVX_ERROR_MAX];
    memset(m, 0xee, sizeof m);
    memcpy(m, magic, 8);
    kvx__le_w16(m + 8, 1);
    kvx__le_w16(m + 10, 0);
    kvx__le_w32(m + 12, rl);
    kvx__le_w64(m + 16, room);
    return kvx_boot_peer_send(kvx_boot_get(from->e), &p, m, 24 + rl, why, sizeof why);
}

/* Decode: whether room's destination was acknowledged here (its aux
   messages are taken from then on). */
static int acked(cx_side *dc, uint64_t room) {
    double end = cx_now() + 30 * slow;
    int ok = 0;
    while (!ok && cx_now() < end) {
        kvx_room *r = kvx_engine_find_room(dc->e, room);
        ok = r && KVX__LOAD(&kvx__cux_cr(r)->nfrom) != 0;
        kvx_room_unref(r);
        if (!ok) cx_sleep(0.001);
    }
    return ok;
}

static void aux_messages(cx_side *pf, cx_side *pf2, cx_side *dc) {
    char addr2[64];
    uint64_t base = refused(dc);
    xr a, c, b;
    uint32_t rl = (uint32_t)kvx_layout_aux_row_bytes(&dc->pool.layout);
    snprintf(addr2, sizeof addr2, "127.0.0.1:%d", kvx_boot_engine_port(pf2->e));
    xr_open(pf, dc, &a, 5001, 3);
    xr_open_at(pf2, dc, &c, 5002, 2, addr2);
    if (!xr_ready(&a) || !xr_ready(&c) || !acked(dc, 5001) || !acked(dc, 5002)) {
        CHECK(0, "aux messages: rooms ready (%s / %s)", kvx_receiver_error(a.r),
              kvx_receiver_error(c.r));
        goto out;
    }
    /* a third engine (another prefill of this decode) names room 5001 */
    CHECK(send_aux(pf2, 5001, rl, "kvx-caux") == KVX_OK, "the forged aux message is sent");
    CHECK(wait_refused(dc, base + 1) && kvx_receiver_poll(a.r) == KVX_POLL_TRANSFERRING,
          "an aux message for room 5001 from another prefill's connection is refused (%llu) and "
          "the room goes on", (unsigned long long)(refused(dc) - base));
    CHECK(send_aux(pf2, 5002, rl, "kvx-cuda") == KVX_OK && wait_refused(dc, base + 2) &&
              kvx_receiver_poll(c.r) == KVX_POLL_TRANSFERRING,
          "one without the aux magic is refused and changes nothing");
    /* the genuine rows still arrive, byte for byte */
    kvx_sender_init(a.s, a.n, a.sslot);
    kvx_sender_send(a.s, a.sp, a.n);
    CHECK(wait_r(a.r, KVX_POLL_SUCCESS, 30) && wait_s(a.s, KVX_POLL_SUCCESS, 30) &&
              ex_aux_check(&dc->pool, 5001, a.dslot),
          "room 5001 succeeds with its own aux rows, byte for byte: %s", kvx_receiver_error(a.r));
    /* its own prefill, with the wrong length: the room fails with the reason */
    xr_open(pf, dc, &b, 5003, 2);
    if (xr_ready(&b) && acked(dc, 5003)) {
        CHECK(send_aux(pf, 5003, rl - 1, "kvx-caux") == KVX_OK && until_r(b.r, 30) >= 0 &&
                  kvx_receiver_poll(b.r) == KVX_POLL_FAILED &&
                  strstr(kvx_receiver_error(b.r), "aux message") &&
                  strstr(kvx_receiver_error(b.r), "length"),
              "a short aux message for its own room fails that room: %s", kvx_receiver_error(b.r));
        CHECK(until_s(b.s, 30) >= 0 && kvx_sender_poll(b.s) == KVX_POLL_FAILED,
              "and its sender: %s", kvx_sender_error(b.s));
    } else {
        CHECK(0, "room 5003 ready");
    }
    xr_close(pf, dc, &b);
out:
    xr_close(pf, dc, &a);
    xr_close(pf2, dc, &c);
}

int main(int argc, char **argv) {
    char why[512], addr[64];
    cx_side pf, dc, pf2;
    kt_name = "test_cuda_trust";
    (void)argc;
    setenv("FAKECUDA_DEVICES", "1", 0);
    cx_find_self(argv[0]);
    if (ct_fake_open(&F, argv[0], why, sizeof why) != 0) return kt_skip(why);
    signal(SIGPIPE, SIG_IGN);
    if (kt_quick()) slow = 3;
    if (cx_side_init(&pf, KVX_ROLE_PREFILL, "tiny", 5, 40, 16, 128, 0, NULL, why, sizeof why)) {
        CHECK(0, "prefill engine: %s", why);
        return kt_done();
    }
    snprintf(addr, sizeof addr, "127.0.0.1:%d", kvx_boot_engine_port(pf.e));
    if (cx_side_init(&dc, KVX_ROLE_DECODE, "tiny", 5, 40, 16, 128, 0, addr, why, sizeof why)) {
        CHECK(0, "decode engine: %s", why);
        cx_side_free(&pf);
        return kt_done();
    }
    sender_fails(&pf, &dc, BAD_PAGE, 2001, "page index out of range");
    sender_fails(&pf, &dc, TOO_MANY, 2002, "more pages than declared");
    sender_fails(&pf, &dc, BAD_AUX, 2003, "aux slot out of range");
    aborts(&pf, &dc);
    abort_after_success(&pf, &dc, 0);
    abort_after_success(&pf, &dc, 1);
    if (cx_side_init(&pf2, KVX_ROLE_PREFILL, "tiny", 5, 40, 16, 128, 0, NULL, why, sizeof why)) {
        CHECK(0, "a second prefill engine: %s", why);
    } else {
        aux_messages(&pf, &pf2, &dc);
        cx_side_free(&pf2);
    }
    cx_side_free(&dc);
    cx_side_free(&pf);
    return kt_done();
}
#endif
