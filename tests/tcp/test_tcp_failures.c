/* test_tcp_failures - failure semantics of the tcp transport (issue 10,
   items 1, 2 and 3), a prefill and a decode engine in one process:

   - a sender that fails on its own (a page index outside the pool, more
     pages than init declared, an aux slot outside the pool) tells its
     receiver at once: the receiver fails within seconds, not after
     KVX_WAITING_TIMEOUT, and its sentence carries the sender's reason
   - a receiver that aborts: its sender fails at once with the reason
   - two aborts with different reasons, on either side: the room and its
     peer keep the first
   - the receiver aborts right after it observes Success, 200 times: every
     sender still ends Success (a finished room sends nothing, so no abort
     can overtake the ACK; destroying the receiver waits for the ACK) */
#define KVX_IMPLEMENTATION
#include "tcp_test.h"

#define POOL 256u

static ex_pool ps, pr;
static kvx_engine *pe, *de;
static uint64_t next_room = 5000;
static const double deadline = 30; /* only reached on failure (TSan, loaded machine) */

typedef struct pair {
    kvx_sender *s;
    kvx_receiver *r;
    int32_t sp[16], dp[16];
    uint32_t n;
} pair;

/* The receiver's aux slot: rooms in flight at the same time get their own
   (two rooms writing one slot would race, as they would in an engine). */
static int32_t g_slot = 1;

/* A sender and a receiver of a fresh room, the receiver initialised with n
   pages and aux slot g_slot, the sender ready for init. 0 when ready. */
static int pair_open(pair *p, uint32_t n) {
    kvx_room_desc rd;
    memset(p, 0, sizeof *p);
    memset(&rd, 0, sizeof rd);
    rd.room = next_room++;
    p->n = n;
    ex_alloc_pages(&ps, p->sp, n);
    ex_alloc_pages(&pr, p->dp, n);
    ex_pages_pattern(&ps, rd.room, p->sp, n, 1);
    if (kvx_receiver_create(de, &rd, &p->r) || kvx_sender_create(pe, &rd, &p->s)) return -1;
    if (!tt_wait_ready_r(p->r, deadline)) return -1;
    if (kvx_receiver_init(p->r, p->dp, n, g_slot) != KVX_OK) return -1;
    return tt_wait_ready_s(p->s, deadline) ? 0 : -1;
}

static void pair_close(pair *p) {
    kvx_sender_destroy(p->s);
    kvx_receiver_destroy(p->r);
    ex_free_pages(&ps, p->sp, p->n);
    ex_free_pages(&pr, p->dp, p->n);
}

/* The sentence after its "room <id>: " prefix. */
static const char *reason_of(const char *err) {
    const char *c = strstr(err, ": ");
    return c ? c + 2 : err;
}

/* The receiver hears a sender's local failure within seconds, with its reason. */
static void sender_fails(const char *label, int how) {
    pair p;
    double t0, dt;
    char sreason[512];
    kvx_poll st;
    int32_t bad[4];
    if (pair_open(&p, 4)) {
        CHECK(0, "%s: room ready (%s / %s)", label, kvx_sender_error(p.s), kvx_receiver_error(p.r));
        pair_close(&p);
        return;
    }
    t0 = tt_now();
    if (how == 0) { /* a page index outside the pool */
        memcpy(bad, p.sp, sizeof bad);
        bad[2] = (int32_t)POOL + 7;
        kvx_sender_init(p.s, 4, 1);
        kvx_sender_send(p.s, bad, 4);
    } else if (how == 1) { /* more pages than declared */
        kvx_sender_init(p.s, 4, 1);
        kvx_sender_send(p.s, p.sp, 3);
        kvx_sender_send(p.s, p.sp, 3);
    } else { /* an aux slot outside the pool */
        kvx_sender_init(p.s, 4, 99);
    }
    CHECK(kvx_sender_poll(p.s) == KVX_POLL_FAILED, "%s: the sender failed: %s", label,
          kvx_sender_error(p.s));
    snprintf(sreason, sizeof sreason, "%s", reason_of(kvx_sender_error(p.s)));
    st = tt_wait_r(p.r, deadline);
    dt = tt_now() - t0;
    CHECK(st == KVX_POLL_FAILED && dt < 10, "%s: the receiver failed %.2f s later (%s)", label, dt,
          kvx_poll_str(st));
    CHECK(sreason[0] && strstr(kvx_receiver_error(p.r), sreason) != NULL,
          "%s: the receiver carries the sender's reason \"%s\": %s", label, sreason,
          kvx_receiver_error(p.r));
    pair_close(&p);
}

/* A receiver that aborts: its sender fails at once with the reason. */
static void receiver_aborts(void) {
    pair p;
    double t0, dt;
    kvx_poll st;
    if (pair_open(&p, 8)) {
        CHECK(0, "receiver abort: room ready");
        pair_close(&p);
        return;
    }
    kvx_sender_init(p.s, 8, 1);
    kvx_sender_send(p.s, p.sp, 2); /* Transferring, not finished */
    t0 = tt_now();
    kvx_receiver_abort(p.r, "decode went away (reason-R1)");
    st = tt_wait_s(p.s, deadline);
    dt = tt_now() - t0;
    CHECK(st == KVX_POLL_FAILED && dt < 10, "receiver abort: the sender failed %.2f s later (%s)",
          dt, kvx_poll_str(st));
    CHECK_STR(kvx_sender_error(p.s), "reason-R1");
    pair_close(&p);
}

/* Two aborts with different reasons: the first wins, here and at the peer. */
static void first_reason(int sender_side) {
    const char *label = sender_side ? "two sender aborts" : "two receiver aborts";
    pair p;
    kvx_poll st;
    const char *mine, *peer;
    if (pair_open(&p, 8)) {
        CHECK(0, "%s: room ready", label);
        pair_close(&p);
        return;
    }
    kvx_sender_init(p.s, 8, 1);
    kvx_sender_send(p.s, p.sp, 2);
    if (sender_side) {
        kvx_sender_abort(p.s, "first-reason");
        kvx_sender_abort(p.s, "second-reason");
        st = tt_wait_r(p.r, deadline);
    } else {
        kvx_receiver_abort(p.r, "first-reason");
        kvx_receiver_abort(p.r, "second-reason");
        st = tt_wait_s(p.s, deadline);
    }
    mine = sender_side ? kvx_sender_error(p.s) : kvx_receiver_error(p.r);
    peer = sender_side ? kvx_receiver_error(p.r) : kvx_sender_error(p.s);
    CHECK(st == KVX_POLL_FAILED, "%s: the peer failed (%s)", label, kvx_poll_str(st));
    CHECK(strstr(mine, "first-reason") && !strstr(mine, "second-reason"),
          "%s: the room keeps the first reason: %s", label, mine);
    CHECK(strstr(peer, "first-reason") && !strstr(peer, "second-reason"),
          "%s: the peer got the first reason: %s", label, peer);
    pair_close(&p);
}

/* Item 2: the receiver aborts the moment it sees Success; every sender
   must still end Success. `destroy`: it destroys the receiver instead. */
static void abort_after_success(int destroy) {
    enum { N = 200, PAR = 8 };
    const char *label = destroy ? "destroy after Success" : "abort after Success";
    pair p[PAR];
    int live[PAR], i, done = 0, started = 0, senders_ok = 0, receivers_ok = 0, bad_recv = 0;
    int changed = 0;
    char first_bad[512] = "";
    double end = tt_now() + 120;
    memset(live, 0, sizeof live);
    ex_aux_write(&ps, 0, 2); /* once: frames of earlier rooms may still read it */
    while (done < N && tt_now() < end) {
        for (i = 0; i < PAR; i++) {
            if (!live[i] && started < N) {
                g_slot = i; /* PAR <= the pool's 8 aux slots */
                if (pair_open(&p[i], 4)) {
                    CHECK(0, "%s: room ready", label);
                    pair_close(&p[i]);
                    started++;
                    done++;
                    continue;
                }
                kvx_sender_init(p[i].s, 4, 2);
                kvx_sender_send(p[i].s, p[i].sp, 4);
                live[i] = 1 | 2; /* 1: receiver open, 2: sender open */
                started++;
            }
            if (!live[i]) continue;
            if ((live[i] & 1) && tt_terminal(kvx_receiver_poll(p[i].r))) {
                if (kvx_receiver_poll(p[i].r) == KVX_POLL_SUCCESS) {
                    receivers_ok++;
                    if (destroy) {
                        kvx_receiver_destroy(p[i].r);
                        p[i].r = NULL;
                    } else {
                        kvx_receiver_abort(p[i].r, "late abort");
                    }
                } else if (!bad_recv++) {
                    snprintf(first_bad, sizeof first_bad, "%s", kvx_receiver_error(p[i].r));
                }
                live[i] &= ~1;
            }
            if ((live[i] & 2) && tt_terminal(kvx_sender_poll(p[i].s))) {
                if (kvx_sender_poll(p[i].s) == KVX_POLL_SUCCESS) senders_ok++;
                else if (!first_bad[0])
                    snprintf(first_bad, sizeof first_bad, "%s", kvx_sender_error(p[i].s));
                live[i] &= ~2;
            }
            if (!live[i]) {
                if (p[i].r && kvx_receiver_poll(p[i].r) != KVX_POLL_SUCCESS) changed++;
                pair_close(&p[i]);
                done++;
            }
        }
    }
    for (i = 0; i < PAR; i++)
        if (live[i]) pair_close(&p[i]);
    g_slot = 1;
    CHECK(changed == 0, "%s: %d receivers left Success after their abort", label, changed);
    CHECK(receivers_ok == N && senders_ok == N,
          "%s: %d/%d receivers and %d/%d senders Success%s%s", label, receivers_ok, N, senders_ok,
          N, first_bad[0] ? "; first failure: " : "", first_bad);
}

/* The decode engine is destroyed the moment its receiver reports Success:
   its control connection drops, and the prefill may see that before the
   ACK waiting in a data socket. The sender's room was delivered whole, so
   it must still end Success (kvx_boot's on_peer_lost leaves it to the data
   link). */
static void decode_gone_after_success(const tt_opts *o) {
    enum { N = 30 };
    kvx_engine *keep = de;
    int i, ok = 0, tried = 0;
    char why[512], first_bad[512] = "";
    for (i = 0; i < N; i++) {
        pair p;
        de = tt_engine(KVX_ROLE_DECODE, &pr.layout, o, why, sizeof why);
        if (!de) { CHECK(0, "decode engine %d: %s", i, why); break; }
        if (pair_open(&p, 4) == 0) {
            double end = tt_now() + deadline;
            tried++;
            kvx_sender_init(p.s, 4, 2);
            kvx_sender_send(p.s, p.sp, 4);
            while (!tt_terminal(kvx_receiver_poll(p.r)) && tt_now() < end) tt_sleep(0.0001);
            kvx_receiver_destroy(p.r);
            p.r = NULL;
            kvx_engine_destroy(de);
            de = NULL;
            while (!tt_terminal(kvx_sender_poll(p.s)) && tt_now() < end) tt_sleep(0.001);
            if (kvx_sender_poll(p.s) == KVX_POLL_SUCCESS) ok++;
            else if (!first_bad[0])
                snprintf(first_bad, sizeof first_bad, "%s", kvx_sender_error(p.s));
            kvx_sender_destroy(p.s);
            ex_free_pages(&ps, p.sp, p.n);
            ex_free_pages(&pr, p.dp, p.n);
        } else {
            CHECK(0, "decode gone: room %d ready", i);
            pair_close(&p);
            kvx_engine_destroy(de);
        }
    }
    de = keep;
    CHECK(tried == N && ok == tried, "decode destroyed right after Success: %d/%d senders Success%s%s",
          ok, tried, first_bad[0] ? "; first failure: " : "", first_bad);
}

int main(int argc, char **argv) {
    tt_opts o;
    char why[512], addr[64];
    (void)argc;
    kt_name = "test_tcp_failures";
    tt_find_self(argv[0]);
    signal(SIGPIPE, SIG_IGN);
    ex_pool_init(&ps, &tt_tiny, POOL, 16, 8, 1);
    ex_pool_init(&pr, &tt_tiny, POOL, 16, 8, 2);
    memset(&o, 0, sizeof o);
    setenv("KVX_WAITING_TIMEOUT", "120", 1); /* a silent sender must not be rescued by it */
    pe = tt_engine(KVX_ROLE_PREFILL, &ps.layout, &o, why, sizeof why);
    CHECK(pe != NULL, "prefill engine: %s", why);
    if (!pe) return kt_done();
    snprintf(addr, sizeof addr, "127.0.0.1:%d", kvx_boot_engine_port(pe));
    o.boot_addr = addr;
    de = tt_engine(KVX_ROLE_DECODE, &pr.layout, &o, why, sizeof why);
    CHECK(de != NULL, "decode engine: %s", why);
    if (!de) return kt_done();
    sender_fails("page index outside the pool", 0);
    sender_fails("more pages than declared", 1);
    sender_fails("aux slot outside the pool", 2);
    receiver_aborts();
    first_reason(1);
    first_reason(0);
    abort_after_success(0);
    abort_after_success(1);
    decode_gone_after_success(&o);
    kvx_engine_destroy(de);
    kvx_engine_destroy(pe);
    ex_pool_free(&ps);
    ex_pool_free(&pr);
    return kt_done();
}
