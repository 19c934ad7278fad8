/* test_rdma_trust - failure semantics and the queue-pair exchange port of
   the rdma transport, in one process on softverbs (issue 10):
   - a sender that fails on its own (page index out of range, more pages
     than declared, aux slot out of range) fails its receiver at once with
     its reason; a receiver that aborts fails its sender at once;
   - a terminal room sends nothing: receivers that abort right after their
     Success, senders that abort right after theirs, never fail the other
     side; the first reason wins;
   - the queue-pair exchange on kvx_boot's control channel, keyless and
     keyed: a third engine with a control connection of its own sends
     malformed messages, messages in the wrong direction, answers to no
     exchange, a CONNECT in another engine's name, a CONNECT it never
     completes (retired after KVX_IB_CONNECT_TIMEOUT) and a frame over
     KVX_BOOT_MAX_MESSAGE: each is refused, and the real pair and its rooms
     are not affected; a stranger's transport frame before its hello (and
     proof) never reaches the transport; engines whose keys differ fail
     with a sentence saying so. */
#define KVX_IMPLEMENTATION
#define KVX_WITH_RDMA
#include "rdma_test.h"
#include <netinet/in.h>
#include <arpa/inet.h>
#include <sys/socket.h>

static char lib[4096];
static double slow = 1; /* sanitizer builds run several times slower */

#define KEY1 "kvx-test-key-one-0123456789abcdef"
#define KEY2 "kvx-test-key-two-0123456789abcdef"

typedef struct side {
    ex_pool pool;
    kvx_engine *e;
} side;

static kvx_engine *mk_engine(kvx_role role, const kvx_layout *l, const char *addr, const char *key,
                             char *why, size_t wl) {
    kvx_engine_desc d;
    kvx_engine *e = NULL;
    memset(&d, 0, sizeof d);
    d.role = role;
    d.transport = "rdma";
    d.layout = *l;
    d.logger.func = rt_log;
    d.logger.level = getenv("KVX_TEST_VERBOSE") ? KVX_LOG_DEBUG : KVX_LOG_WARN;
    d.boot.host = "127.0.0.1";
    d.boot.port = -1;
    d.bootstrap_addr = addr;
    d.auth_key = key;
    kvx_rdma_register();
    if (kvx_engine_create(&d, &e, why, wl) != KVX_OK) return NULL;
    return e;
}

static int pair_up(side *pf, side *dc, const char *pkey, const char *dkey) {
    char why[KVX_ERROR_MAX], addr[64];
    memset(pf, 0, sizeof *pf);
    memset(dc, 0, sizeof *dc);
    ex_pool_init(&pf->pool, &rt_tiny, 1024, 16, 64, 3);
    ex_pool_init(&dc->pool, &rt_tiny, 1024, 16, 64, 4);
    pf->e = mk_engine(KVX_ROLE_PREFILL, &pf->pool.layout, NULL, pkey, why, sizeof why);
    if (!pf->e) { printf("prefill engine: %s\n", why); return -1; }
    snprintf(addr, sizeof addr, "127.0.0.1:%d", kvx_boot_engine_port(pf->e));
    dc->e = mk_engine(KVX_ROLE_DECODE, &dc->pool.layout, addr, dkey, why, sizeof why);
    if (!dc->e) { printf("decode engine: %s\n", why); return -1; }
    return 0;
}

static void pair_down(side *pf, side *dc) {
    kvx_engine_destroy(dc->e);
    kvx_engine_destroy(pf->e);
    ex_pool_free(&dc->pool);
    ex_pool_free(&pf->pool);
}

typedef struct xfer {
    uint64_t room;
    uint32_t n;
    int32_t sp[64], dp[64];
    int32_t sslot, dslot;
    kvx_sender *s;
    kvx_receiver *r;
} xfer;

static int term(kvx_poll p) { return p == KVX_POLL_SUCCESS || p == KVX_POLL_FAILED; }

/* Waits until the sender (or receiver) reached at least `want` (or failed). */
static int wait_s(kvx_sender *s, kvx_poll want, double t) {
    double end = rt_now() + t * slow;
    while (rt_now() < end) {
        kvx_poll p = kvx_sender_poll(s);
        if (p >= want || p == KVX_POLL_FAILED) return p >= want;
        rt_sleep(0.001);
    }
    return 0;
}
static int wait_r(kvx_receiver *r, kvx_poll want, double t) {
    double end = rt_now() + t * slow;
    while (rt_now() < end) {
        kvx_poll p = kvx_receiver_poll(r);
        if (p >= want || p == KVX_POLL_FAILED) return p >= want;
        rt_sleep(0.001);
    }
    return 0;
}
/* Seconds until terminal, or -1. */
static double until_term_r(kvx_receiver *r, double t) {
    double start = rt_now(), end = start + t * slow;
    while (rt_now() < end) {
        if (term(kvx_receiver_poll(r))) return rt_now() - start;
        rt_sleep(0.001);
    }
    return -1;
}
static double until_term_s(kvx_sender *s, double t) {
    double start = rt_now(), end = start + t * slow;
    while (rt_now() < end) {
        if (term(kvx_sender_poll(s))) return rt_now() - start;
        rt_sleep(0.001);
    }
    return -1;
}

static void xfer_open(side *pf, side *dc, xfer *x, uint64_t room, uint32_t n) {
    kvx_room_desc rd;
    memset(x, 0, sizeof *x);
    x->room = room;
    x->n = n;
    ex_alloc_pages(&pf->pool, x->sp, n);
    ex_alloc_pages(&dc->pool, x->dp, n);
    x->sslot = ex_alloc_slot(&pf->pool);
    x->dslot = ex_alloc_slot(&dc->pool);
    ex_pages_pattern(&pf->pool, room, x->sp, n, 1);
    ex_aux_write(&pf->pool, room, x->sslot);
    ex_aux_clear(&dc->pool, x->dslot);
    memset(&rd, 0, sizeof rd);
    rd.room = room;
    kvx_receiver_create(dc->e, &rd, &x->r);
    kvx_sender_create(pf->e, &rd, &x->s);
}

static void xfer_close(side *pf, side *dc, xfer *x) {
    kvx_sender_destroy(x->s);
    kvx_receiver_destroy(x->r);
    ex_free_pages(&pf->pool, x->sp, x->n);
    ex_free_pages(&dc->pool, x->dp, x->n);
    ex_free_slot(&pf->pool, x->sslot);
    ex_free_slot(&dc->pool, x->dslot);
}

/* Both sides ready: the receiver's destination sent, the sender waiting for input. */
static int xfer_ready(xfer *x) {
    return wait_r(x->r, KVX_POLL_WAITING_FOR_INPUT, 20) &&
           kvx_receiver_init(x->r, x->dp, x->n, x->dslot) == KVX_OK &&
           wait_s(x->s, KVX_POLL_WAITING_FOR_INPUT, 20);
}

/* A whole room; 1 when both sides succeed and every byte checks. */
static int xfer_run(side *pf, side *dc, uint64_t room, uint32_t n, char *err, size_t el) {
    xfer x;
    int ok;
    xfer_open(pf, dc, &x, room, n);
    err[0] = 0;
    ok = xfer_ready(&x) && kvx_sender_init(x.s, n, x.sslot) == KVX_OK &&
         kvx_sender_send(x.s, x.sp, n) == KVX_OK && until_term_r(x.r, 20) >= 0 &&
         until_term_s(x.s, 20) >= 0 && kvx_receiver_poll(x.r) == KVX_POLL_SUCCESS &&
         kvx_sender_poll(x.s) == KVX_POLL_SUCCESS &&
         ex_pages_pattern(&dc->pool, room, x.dp, n, 0) == 0 && ex_aux_check(&dc->pool, room, x.dslot);
    if (!ok) snprintf(err, el, "receiver %s (%s), sender %s (%s)", kvx_poll_str(kvx_receiver_poll(x.r)),
                      kvx_receiver_error(x.r), kvx_poll_str(kvx_sender_poll(x.s)),
                      kvx_sender_error(x.s));
    xfer_close(pf, dc, &x);
    return ok;
}

/* ---- item 1: a local failure reaches the peer at once ------------------------- */

enum { BAD_PAGE, TOO_MANY, BAD_AUX };

static void sender_fails(side *pf, side *dc, int how, uint64_t room, const char *what) {
    xfer x;
    int32_t pages[8];
    double t;
    int i;
    xfer_open(pf, dc, &x, room, 4);
    if (!xfer_ready(&x)) {
        CHECK(0, "%s: both sides ready (%s / %s)", what, kvx_receiver_error(x.r), kvx_sender_error(x.s));
        xfer_close(pf, dc, &x);
        return;
    }
    if (how == BAD_AUX) {
        kvx_sender_init(x.s, x.n, 100000); /* the pool has 64 slots */
    } else {
        kvx_sender_init(x.s, x.n, x.sslot);
        for (i = 0; i < 8; i++) pages[i] = x.sp[i % 4];
        if (how == BAD_PAGE) {
            pages[1] = 1 << 20; /* the pool has 1024 pages */
            kvx_sender_send(x.s, pages, 4);
        } else {
            kvx_sender_send(x.s, pages, 6); /* declared 4 */
        }
    }
    CHECK(kvx_sender_poll(x.s) == KVX_POLL_FAILED, "%s: the sender failed: %s", what,
          kvx_sender_error(x.s));
    t = until_term_r(x.r, 30);
    CHECK(t >= 0 && kvx_receiver_poll(x.r) == KVX_POLL_FAILED && t < 5 * slow,
          "%s: the receiver failed %.2f s later (KVX_WAITING_TIMEOUT is 300 s)", what, t);
    CHECK(kvx_sender_error(x.s)[0] && strstr(kvx_receiver_error(x.r), kvx_sender_error(x.s) + 0) != NULL,
          "%s: with the sender's reason: %s", what, kvx_receiver_error(x.r));
    xfer_close(pf, dc, &x);
}

static void receiver_aborts(side *pf, side *dc, int mid) {
    xfer x;
    double t;
    const char *what = mid ? "receiver aborts mid-transfer" : "receiver aborts before the data";
    xfer_open(pf, dc, &x, mid ? 2102 : 2101, 40);
    if (!xfer_ready(&x)) {
        CHECK(0, "%s: both sides ready", what);
        xfer_close(pf, dc, &x);
        return;
    }
    if (mid) {
        kvx_sender_init(x.s, x.n, x.sslot);
        kvx_sender_send(x.s, x.sp, 8);
    }
    kvx_receiver_abort(x.r, "the scheduler dropped request 42");
    kvx_receiver_abort(x.r, "a second reason that must not win");
    t = until_term_s(x.s, 30);
    CHECK(t >= 0 && kvx_sender_poll(x.s) == KVX_POLL_FAILED && t < 5 * slow,
          "%s: the sender failed %.2f s later", what, t);
    CHECK(strstr(kvx_sender_error(x.s), "the scheduler dropped request 42") &&
          !strstr(kvx_sender_error(x.s), "second reason") &&
          !strstr(kvx_receiver_error(x.r), "second reason"),
          "%s: with the first reason, on both sides: %s", what, kvx_sender_error(x.s));
    xfer_close(pf, dc, &x);
}

static void sender_aborts_twice(side *pf, side *dc) {
    xfer x;
    double t;
    xfer_open(pf, dc, &x, 2103, 4);
    if (!xfer_ready(&x)) {
        CHECK(0, "sender aborts: both sides ready");
        xfer_close(pf, dc, &x);
        return;
    }
    kvx_sender_abort(x.s, "prefill preempted the request");
    kvx_sender_abort(x.s, "a later reason");
    t = until_term_r(x.r, 30);
    CHECK(t >= 0 && t < 5 * slow && strstr(kvx_receiver_error(x.r), "prefill preempted the request") &&
          !strstr(kvx_receiver_error(x.r), "later reason"),
          "sender aborts twice: the receiver failed %.2f s later with the first reason: %s", t,
          kvx_receiver_error(x.r));
    xfer_close(pf, dc, &x);
}

/* ---- items 2/3: a terminal room sends nothing --------------------------------- */

#define RACE_ROOMS 32

/* The receivers abort the moment they see Success; every sender must end
   Success. Then the senders abort the moment they see Success; every
   receiver must end Success. */
static void abort_after_success(side *pf, side *dc, int sender_side) {
    static xfer x[RACE_ROOMS];
    int i, left, ssucc = 0, rsucc = 0, ready = 0, abort_called = 0, errs = 0;
    double end;
    const char *what = sender_side ? "senders abort right after their Success"
                                   : "receivers abort right after their Success";
    for (i = 0; i < RACE_ROOMS; i++)
        xfer_open(pf, dc, &x[i], (sender_side ? 3000 : 4000) + (uint64_t)i, 1 + (uint32_t)(i % 8));
    for (i = 0; i < RACE_ROOMS; i++) ready += xfer_ready(&x[i]);
    for (i = 0; i < RACE_ROOMS; i++) {
        kvx_sender_init(x[i].s, x[i].n, x[i].sslot);
        kvx_sender_send(x[i].s, x[i].sp, x[i].n);
    }
    left = RACE_ROOMS;
    end = rt_now() + 30 * slow;
    {
        int done[RACE_ROOMS];
        memset(done, 0, sizeof done);
        while (left && rt_now() < end) {
            for (i = 0; i < RACE_ROOMS; i++) {
                kvx_poll p;
                if (done[i]) continue;
                p = sender_side ? kvx_sender_poll(x[i].s) : kvx_receiver_poll(x[i].r);
                if (!term(p)) continue;
                if (p == KVX_POLL_SUCCESS) {
                    if (sender_side) kvx_sender_abort(x[i].s, "aborted after Success");
                    else kvx_receiver_abort(x[i].r, "aborted after Success");
                    abort_called++;
                }
                done[i] = 1;
                left--;
            }
        }
    }
    for (i = 0; i < RACE_ROOMS; i++) {
        until_term_s(x[i].s, 10);
        until_term_r(x[i].r, 10);
        ssucc += kvx_sender_poll(x[i].s) == KVX_POLL_SUCCESS;
        rsucc += kvx_receiver_poll(x[i].r) == KVX_POLL_SUCCESS;
        errs += (kvx_sender_poll(x[i].s) == KVX_POLL_SUCCESS && kvx_sender_error(x[i].s)[0]) ||
                (kvx_receiver_poll(x[i].r) == KVX_POLL_SUCCESS && kvx_receiver_error(x[i].r)[0]);
    }
    CHECK(ready == RACE_ROOMS && abort_called == RACE_ROOMS, "%s: %d rooms ready, %d aborted after "
          "Success", what, ready, abort_called);
    CHECK(ssucc == RACE_ROOMS && rsucc == RACE_ROOMS && errs == 0,
          "%s: every sender (%d) and receiver (%d) of %d stays Success, no error text (%d)", what,
          ssucc, rsucc, RACE_ROOMS, errs);
    for (i = 0; i < RACE_ROOMS; i++) xfer_close(pf, dc, &x[i]);
}

/* ---- the exchange on the control channel: hostile peers --------------------------- */

static uint64_t stat_of(kvx_engine *e, int which) {
    kvx_rdma_stats s;
    memset(&s, 0, sizeof s);
    kvx_rdma_stats_get(e, &s);
    return which == 2 ? s.errors : which ? s.cm_refused : s.pairs;
}

/* Waits (observed state, bounded) until e's cm_refused passes `than`. */
static int refused_past(kvx_engine *e, uint64_t than) {
    double end = rt_now() + 30 * slow;
    while (rt_now() < end) {
        if (stat_of(e, 1) > than) return 1;
        rt_sleep(0.005);
    }
    return 0;
}

/* The control connection a decode engine has with its (only) prefill. */
static int ctl_of(kvx_engine *e, kvx_boot_peer *out) {
    kvx__rdma_engine *re = kvx__rdma_re(e);
    int ok;
    pthread_mutex_lock(&re->mu);
    ok = re->peers != NULL;
    if (ok) *out = re->peers->ctl;
    pthread_mutex_unlock(&re->mu);
    return ok;
}

static int raw_dial(int port) {
    struct sockaddr_in a;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a)) {
        if (fd >= 0) close(fd);
        return -1;
    }
    return fd;
}

/* 1 when the far end closed fd within t seconds. */
static int raw_closed(int fd, double t) {
    double end = rt_now() + t;
    while (rt_now() < end) {
        struct pollfd p;
        uint8_t tmp[4096];
        p.fd = fd;
        p.events = POLLIN;
        p.revents = 0;
        if (poll(&p, 1, 20) <= 0) continue;
        if (recv(fd, tmp, sizeof tmp, 0) <= 0) return 1;
    }
    return 0;
}

/* A third engine, a decode engine with a control connection of its own
   (so with a key it proved the key), sends exchange messages it should
   not: garbage, messages in the prefill's direction, answers to no
   exchange, a CONNECT in the name of the real decode engine, and a frame
   over KVX_BOOT_MAX_MESSAGE. Each is refused; the real pair is untouched
   and rooms keep moving. A stranger without a hello (or without the key)
   cannot send one at all. */
static void hostile_peer(const char *key, const char *what) {
    side pf, dc, rg;
    char err[1024], why[KVX_ERROR_MAX], addr[64];
    kvx_boot_peer ctl;
    kvx__buf b;
    kvx_rdma_cm_msg m;
    kvx_room_desc rd;
    kvx_receiver *rr = NULL;
    uint64_t pairs0, refused0, dinst, pinst;
    int fd;
    memset(&b, 0, sizeof b);
    memset(&rg, 0, sizeof rg);
    setenv("KVX_IB_CONNECT_TIMEOUT", "2", 1);
    if (pair_up(&pf, &dc, key, key)) {
        unsetenv("KVX_IB_CONNECT_TIMEOUT");
        CHECK(0, "%s: engines", what);
        return;
    }
    unsetenv("KVX_IB_CONNECT_TIMEOUT");
    CHECK(xfer_run(&pf, &dc, 5001, 12, err, sizeof err), "%s: a room moves %s", what, err);
    pairs0 = stat_of(pf.e, 0);
    ex_pool_init(&rg.pool, &rt_tiny, 1024, 16, 64, 5);
    snprintf(addr, sizeof addr, "127.0.0.1:%d", kvx_boot_engine_port(pf.e));
    rg.e = mk_engine(KVX_ROLE_DECODE, &rg.pool.layout, addr, key, why, sizeof why);
    memset(&rd, 0, sizeof rd);
    rd.room = 5999;
    if (!rg.e || kvx_receiver_create(rg.e, &rd, &rr) != KVX_OK ||
        !wait_r(rr, KVX_POLL_WAITING_FOR_INPUT, 30 * slow) || !ctl_of(rg.e, &ctl)) {
        CHECK(0, "%s: the third engine connects: %s", what, rg.e ? "" : why);
        goto out;
    }
    /* its own exchange completes on both sides (it is a peer like any other) */
    {
        double end = rt_now() + 30 * slow;
        while (rt_now() < end && (stat_of(rg.e, 0) < 1 || stat_of(pf.e, 0) < pairs0 + 1))
            rt_sleep(0.005);
        CHECK(stat_of(pf.e, 0) == pairs0 + 1, "%s: the third engine made its own connection", what);
    }
    pairs0 = stat_of(pf.e, 0);
    refused0 = stat_of(pf.e, 1);
    dinst = kvx__rdma_re(dc.e)->instance;
    pinst = kvx__rdma_re(pf.e)->instance;

    CHECK(kvx_boot_peer_send(kvx__rdma_re(rg.e)->boot, &ctl, "GET / HTTP/1.0\r\n\r\n", 18, why,
                             sizeof why) == KVX_OK && refused_past(pf.e, refused0),
          "%s: a malformed message is refused (cm_refused %llu)", what,
          (unsigned long long)(stat_of(pf.e, 1) - refused0));
    refused0 = stat_of(pf.e, 1);
    kvx__rdma_cm_begin(&b, KVX_RDMA_CM_ACCEPT, 1, kvx__rdma_re(rg.e)->instance, pinst);
    kvx__buf_put64(&b, 0);
    CHECK(kvx__rdma_send_buf(kvx__rdma_re(rg.e), &ctl, &b, why, sizeof why) == KVX_OK &&
              refused_past(pf.e, refused0),
          "%s: a message in the wrong direction (ACCEPT to a prefill) is refused", what);
    refused0 = stat_of(pf.e, 1);
    kvx__rdma_cm_begin(&b, KVX_RDMA_CM_READY, 424242, kvx__rdma_re(rg.e)->instance, pinst);
    CHECK(kvx__rdma_send_buf(kvx__rdma_re(rg.e), &ctl, &b, why, sizeof why) == KVX_OK &&
              refused_past(pf.e, refused0),
          "%s: an unsolicited READY (no exchange with that seq) is refused", what);
    refused0 = stat_of(pf.e, 1);
    /* a complete, valid CONNECT (real queue pairs and regions of the real
       decode engine) in the name of the real decode engine, on the third
       engine's connection: a message for an instance it is not */
    {
        kvx__rdma_engine *dre = kvx__rdma_re(dc.e);
        kvx__rdma_pair *sp = kvx__rdma_pair_new(dre, 1, pinst, "stranger");
        char qwhy[KVX_ERROR_MAX] = "";
        if (sp && kvx__rdma_qp_create(dre, &sp->qp[0], qwhy, sizeof qwhy) == KVX_OK) {
            sp->seq = 77;
            kvx__rdma_cm_connect(dre, sp, &b);
            CHECK(kvx_rdma_cm_parse(b.data, b.len, &m, why, sizeof why) == KVX_OK && m.from == dinst,
                  "%s: the forged CONNECT is well formed and names the real decode engine", what);
            CHECK(kvx__rdma_send_buf(kvx__rdma_re(rg.e), &ctl, &b, why, sizeof why) == KVX_OK &&
                      refused_past(pf.e, refused0) && stat_of(pf.e, 0) == pairs0,
                  "%s: a CONNECT naming another engine's instance is refused and replaces nothing "
                  "(%llu exchanges)", what, (unsigned long long)stat_of(pf.e, 0));
        } else {
            CHECK(0, "a stranger's queue pair: %s", qwhy);
        }
        kvx__rdma_pair_unref(dre, sp);
    }
    /* the third engine's own CONNECT, which its rdma layer did not send:
       it answers the ACCEPT with a REJECT and the prefill gives up at
       once; then, with the third engine deaf, one never followed by READY
       is retired after KVX_IB_CONNECT_TIMEOUT (2 s here) */
    {
        kvx__rdma_engine *gre = kvx__rdma_re(rg.e);
        kvx__rdma_pair *sp = kvx__rdma_pair_new(gre, 1, pinst, "half-open");
        int k;
        char qwhy[KVX_ERROR_MAX] = "";
        if (sp && kvx__rdma_qp_create(gre, &sp->qp[0], qwhy, sizeof qwhy) == KVX_OK) {
            for (k = 0; k < 2; k++) {
                uint64_t errs0 = stat_of(pf.e, 2);
                double t0 = rt_now(), end = t0 + 30 * slow;
                if (k == 1) {
                    pthread_mutex_lock(&gre->mu);
                    gre->stopping = 1; /* drops every message from now on */
                    pthread_mutex_unlock(&gre->mu);
                }
                sp->seq = 78 + (uint32_t)k;
                kvx__rdma_cm_connect(gre, sp, &b);
                kvx__rdma_send_buf(gre, &ctl, &b, why, sizeof why);
                while (rt_now() < end && stat_of(pf.e, 2) == errs0) rt_sleep(0.01);
                if (k == 0)
                    CHECK(stat_of(pf.e, 2) > errs0 && rt_now() - t0 < 1.9,
                          "%s: an ACCEPT nobody asked for is answered with REJECT and the prefill "
                          "gives the exchange up at once (%.2f s)", what, rt_now() - t0);
                else
                    CHECK(stat_of(pf.e, 2) > errs0 && rt_now() - t0 > 1.5,
                          "%s: a CONNECT never followed by READY is retired after %.1f s "
                          "(KVX_IB_CONNECT_TIMEOUT=2)", what, rt_now() - t0);
            }
        } else {
            CHECK(0, "a half-open queue pair: %s", qwhy);
        }
        kvx__rdma_pair_unref(gre, sp);
    }
    CHECK(xfer_run(&pf, &dc, 5002, 20, err, sizeof err) && stat_of(pf.e, 0) == pairs0,
          "%s: the real decode engine's rooms still move on its connection %s", what, err);
    /* a frame over KVX_BOOT_MAX_MESSAGE: the sender refuses it, and a
       peer that writes one anyway loses its connection (its rooms only) */
    CHECK(kvx_boot_peer_send(kvx__rdma_re(rg.e)->boot, &ctl, "x", KVX_BOOT_MAX_MESSAGE + 1, why,
                             sizeof why) == KVX_ERR_INVALID_ARGUMENT,
          "%s: kvx_boot_peer_send refuses more than KVX_BOOT_MAX_MESSAGE: %s", what, why);
    {
        kvx_boot *rb = kvx__rdma_re(rg.e)->boot;
        kvx__boot_conn *c = NULL;
        uint8_t h[8];
        size_t i;
        kvx__boot_hdr(h, KVX_BOOT_MAX_MESSAGE + 1, KVX_BOOT_FRAME_TRANSPORT);
        pthread_mutex_lock(&rb->mu);
        for (i = 0; i < rb->nlive; i++)
            if (rb->live[i]->info.conn_id == ctl.conn_id) { c = rb->live[i]; KVX__ADD(&c->refs, 1); }
        pthread_mutex_unlock(&rb->mu);
        if (c) {
            kvx__boot_conn_send(c, h, sizeof h);
            kvx__boot_conn_unref(c);
        }
        CHECK(c && until_term_r(rr, 30 * slow) >= 0 && kvx_receiver_poll(rr) == KVX_POLL_FAILED,
              "%s: an oversized transport frame closes that connection (its room fails: %s)", what,
              kvx_receiver_error(rr));
    }
    CHECK(xfer_run(&pf, &dc, 5003, 9, err, sizeof err) && stat_of(pf.e, 0) == pairs0,
          "%s: the real decode engine is not affected %s", what, err);
    /* a stranger's transport frame before its hello (or its proof) */
    fd = raw_dial(kvx_boot_control_port(kvx__rdma_re(pf.e)->boot));
    refused0 = stat_of(pf.e, 1);
    kvx__rdma_cm_begin(&b, KVX_RDMA_CM_READY, 1, dinst, pinst);
    {
        uint8_t h[8];
        kvx__boot_hdr(h, (uint32_t)b.len, KVX_BOOT_FRAME_TRANSPORT);
        if (fd >= 0 && (send(fd, h, 8, MSG_NOSIGNAL) < 0 || send(fd, b.data, b.len, MSG_NOSIGNAL) < 0)) {}
    }
    CHECK(fd >= 0 && raw_closed(fd, 30 * slow) && stat_of(pf.e, 1) == refused0,
          "%s: a transport frame before the hello%s is closed by kvx_boot, never handed to rdma",
          what, key ? " and the proof" : "");
    if (fd >= 0) close(fd);
    /* a decode whose side broke redials on its control connection: still works */
    {
        kvx__rdma_engine *dre = kvx__rdma_re(dc.e);
        kvx__rdma_pair *p;
        pthread_mutex_lock(&dre->mu);
        p = dre->pairs;
        if (p) kvx__rdma_pair_ref(p);
        pthread_mutex_unlock(&dre->mu);
        if (p) {
            kvx__rdma_pair_kill(dre, p, KVX_ERR_TRANSPORT, "test: the decode side broke");
            kvx__rdma_pair_unref(dre, p);
        }
        CHECK(p && xfer_run(&pf, &dc, 5004, 9, err, sizeof err) && stat_of(pf.e, 0) == pairs0 + 1,
              "%s: the decode engine itself still reconnects %s", what, err);
    }
out:
    kvx_receiver_destroy(rr);
    kvx_engine_destroy(rg.e);
    ex_pool_free(&rg.pool);
    kvx__buf_free(&b);
    pair_down(&pf, &dc);
}


/* Engines whose keys differ, or where only one has a key: the receiver
   fails with a sentence naming the key. */
static void key_mismatch(const char *pkey, const char *dkey, const char *what, const char *want) {
    side pf, dc;
    xfer x;
    double t;
    if (pair_up(&pf, &dc, pkey, dkey)) { CHECK(0, "%s: engines", what); return; }
    xfer_open(&pf, &dc, &x, 7001, 5);
    if (kvx_receiver_poll(x.r) == KVX_POLL_WAITING_FOR_INPUT ||
        wait_r(x.r, KVX_POLL_WAITING_FOR_INPUT, 10))
        kvx_receiver_init(x.r, x.dp, x.n, x.dslot);
    t = until_term_r(x.r, 40);
    CHECK(t >= 0 && kvx_receiver_poll(x.r) == KVX_POLL_FAILED && strstr(kvx_receiver_error(x.r), want),
          "%s: the receiver fails (%.1f s): %s", what, t, kvx_receiver_error(x.r));
    CHECK(kvx_sender_poll(x.s) != KVX_POLL_SUCCESS && stat_of(pf.e, 0) == 0,
          "%s: no queue-pair exchange completed", what);
    xfer_close(&pf, &dc, &x);
    pair_down(&pf, &dc);
}

int main(void) {
    side pf, dc;
    int rc = rt_inproc("test_rdma_trust", lib, sizeof lib);
    if (rc) return rc;
    if (rt_quick()) slow = 3;
    setenv("KVX_IB_FENCE_TIMEOUT", "2", 1);

    if (pair_up(&pf, &dc, NULL, NULL) == 0) {
        sender_fails(&pf, &dc, BAD_PAGE, 2001, "page index out of range");
        sender_fails(&pf, &dc, TOO_MANY, 2002, "more pages than declared");
        sender_fails(&pf, &dc, BAD_AUX, 2003, "aux slot out of range");
        receiver_aborts(&pf, &dc, 0);
        receiver_aborts(&pf, &dc, 1);
        sender_aborts_twice(&pf, &dc);
        abort_after_success(&pf, &dc, 0);
        abort_after_success(&pf, &dc, 1);
        pair_down(&pf, &dc);
    } else {
        CHECK(0, "engines");
    }
    hostile_peer(NULL, "keyless");
    hostile_peer(KEY1, "keyed");
    key_mismatch(KEY1, KEY2, "different keys", "KVX_AUTH_KEY");
    key_mismatch(KEY1, NULL, "only the prefill has a key", "KVX_AUTH_KEY");
    key_mismatch(NULL, KEY1, "only the decode side has a key", "KVX_AUTH_KEY");
    return rt_finish();
}
