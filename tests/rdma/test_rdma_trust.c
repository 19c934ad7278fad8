/* test_rdma_trust - failure semantics and the queue-pair exchange port of
   the rdma transport, in one process on softverbs (issue 10):
   - a sender that fails on its own (page index out of range, more pages
     than declared, aux slot out of range) fails its receiver at once with
     its reason; a receiver that aborts fails its sender at once;
   - a terminal room sends nothing: receivers that abort right after their
     Success, senders that abort right after theirs, never fail the other
     side; the first reason wins;
   - the exchange port (KVX_IB_CM_PORT): silent connections are closed after
     KVX_IB_CONNECT_TIMEOUT, too many are refused at once, a CONNECT from an
     engine without a control connection gets nothing; with a shared key
     every connection proves it (both ways) before anything is exchanged:
     the same key works, different keys fail with a sentence saying so, a
     stranger without the key gets a nonce and a refusal, and no room is
     affected by any of them. */
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

/* ---- items 14/15: the exchange port -------------------------------------------- */

static int cm_dial(int port) {
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

/* Reads until EOF or t seconds; returns the bytes read (at most cap), and
   in *closed whether the far end closed. */
static size_t cm_drain(int fd, uint8_t *buf, size_t cap, double t, int *closed) {
    double end = rt_now() + t;
    size_t len = 0;
    *closed = 0;
    while (rt_now() < end) {
        struct pollfd pf;
        ssize_t r;
        uint8_t tmp[4096];
        pf.fd = fd;
        pf.events = POLLIN;
        pf.revents = 0;
        if (poll(&pf, 1, 20) <= 0) continue;
        r = recv(fd, tmp, sizeof tmp, 0);
        if (r <= 0) { *closed = 1; break; }
        if (len < cap) {
            size_t k = (size_t)r < cap - len ? (size_t)r : cap - len;
            memcpy(buf + len, tmp, k);
            len += k;
        }
    }
    return len;
}

/* The types of the exchange messages in buf (up to 8). */
static int cm_types(const uint8_t *buf, size_t len, int *types, int max) {
    size_t off = 0;
    int n = 0;
    while (off + KVX_RDMA_CM_HEADER <= len && n < max) {
        uint32_t bl = kvx__le_r32(buf + off + 8);
        types[n++] = kvx__le_r16(buf + off + 6);
        off += KVX_RDMA_CM_HEADER + bl;
    }
    return n;
}

static int has_type(const int *t, int n, int type) {
    int i;
    for (i = 0; i < n; i++)
        if (t[i] == type) return 1;
    return 0;
}

static void cm_msg(kvx_buf *b, kvx_rdma_cm_type type, int ver) {
    kvx__rdma_cm_begin(b, type);
    kvx__le_w16((uint8_t *)b->data + 4, (uint16_t)ver);
}

static uint64_t stat_of(kvx_engine *e, int which) {
    kvx_rdma_stats s;
    memset(&s, 0, sizeof s);
    kvx_rdma_stats_get(e, &s);
    return which ? s.cm_refused : s.pairs;
}

static uint64_t decode_instance(kvx_engine *e) { return kvx__rdma_re(e)->instance; }

static void stranger_keyless(void) {
    side pf, dc;
    char err[1024];
    uint8_t buf[8192];
    int types[8], nt, closed, port, fd, fds[KVX_RDMA_CM_PENDING + 8], i, nopen = 0, nclosed = 0;
    uint64_t pairs0, refused0;
    size_t len;
    double t0, t;
    kvx_buf b;
    memset(&b, 0, sizeof b);
    setenv("KVX_IB_CONNECT_TIMEOUT", "2", 1);
    if (pair_up(&pf, &dc, NULL, NULL)) { CHECK(0, "keyless engines"); return; }
    unsetenv("KVX_IB_CONNECT_TIMEOUT");
    port = kvx__rdma_re(pf.e)->cm_port;
    CHECK(xfer_run(&pf, &dc, 5001, 12, err, sizeof err), "keyless: a room moves %s", err);
    pairs0 = stat_of(pf.e, 0);
    refused0 = stat_of(pf.e, 1);

    /* a silent connection is closed after KVX_IB_CONNECT_TIMEOUT (2 s) */
    fd = cm_dial(port);
    t0 = rt_now();
    len = cm_drain(fd, buf, sizeof buf, 30 * slow, &closed);
    t = rt_now() - t0;
    CHECK(fd >= 0 && closed && t < 2 + 3 * slow, "keyless: a silent connection is closed after "
          "%.1f s (KVX_IB_CONNECT_TIMEOUT=2)", t);
    if (fd >= 0) close(fd);

    /* a CONNECT (its head) from an engine with no control connection */
    fd = cm_dial(port);
    cm_msg(&b, KVX_RDMA_CM_CONNECT, 1);
    kvx__rdma_put64(&b, 0x1234567890abcdefull);
    kvx__rdma_put64(&b, kvx__rdma_re(pf.e)->instance);
    kvx__rdma_put64(&b, 0);
    for (i = 0; i < 16; i++) kvx__rdma_put(&b, "\0", 1);
    kvx__rdma_cm_end(&b);
    kvx__le_w32((uint8_t *)b.data + 8, 4000); /* claims a long body */
    if (fd >= 0 && send(fd, b.data, b.len, MSG_NOSIGNAL) < 0) {}
    len = cm_drain(fd, buf, sizeof buf, 30 * slow, &closed);
    nt = cm_types(buf, len, types, 8);
    CHECK(closed && !has_type(types, nt, KVX_RDMA_CM_ACCEPT),
          "keyless: a CONNECT from an instance without a control connection gets no ACCEPT "
          "(%d messages, closed %d)", nt, closed);
    if (fd >= 0) close(fd);

    /* a complete, valid CONNECT (real queue pairs and regions of the
       decode engine's pool) from an instance without a control connection */
    {
        kvx__rdma_engine *dre = kvx__rdma_re(dc.e);
        kvx__rdma_pair *sp = kvx__rdma_pair_new(dre, 1, kvx__rdma_re(pf.e)->instance, "stranger");
        char qwhy[KVX_ERROR_MAX];
        if (sp && kvx__rdma_qp_create(dre, &sp->qp[0], qwhy, sizeof qwhy) == KVX_OK) {
            kvx__rdma_cm_connect(dre, sp, &b);
            kvx__le_w64((uint8_t *)b.data + KVX_RDMA_CM_HEADER, 0x5eed5eed5eed5eedull); /* from */
            fd = cm_dial(port);
            if (fd >= 0 && send(fd, b.data, b.len, MSG_NOSIGNAL) < 0) {}
            len = cm_drain(fd, buf, sizeof buf, 30 * slow, &closed);
            nt = cm_types(buf, len, types, 8);
            CHECK(closed && !has_type(types, nt, KVX_RDMA_CM_ACCEPT) && stat_of(pf.e, 0) == pairs0,
                  "keyless: a complete CONNECT from an engine without a control connection gets no "
                  "ACCEPT and no connection (%d messages, %llu exchanges)", nt,
                  (unsigned long long)stat_of(pf.e, 0));
            if (fd >= 0) close(fd);
        } else {
            CHECK(0, "a stranger's queue pair: %s", qwhy);
        }
        kvx__rdma_pair_unref(dre, sp);
    }

    /* garbage */
    fd = cm_dial(port);
    if (fd >= 0 && send(fd, "GET / HTTP/1.0\r\n\r\n", 18, MSG_NOSIGNAL) < 0) {}
    len = cm_drain(fd, buf, sizeof buf, 30 * slow, &closed);
    CHECK(closed, "keyless: an HTTP request is answered with a close");
    if (fd >= 0) close(fd);

    /* more silent connections than KVX_RDMA_CM_PENDING: the rest are closed at once */
    for (i = 0; i < KVX_RDMA_CM_PENDING + 8; i++) fds[i] = cm_dial(port);
    rt_sleep(0.3);
    for (i = 0; i < KVX_RDMA_CM_PENDING + 8; i++) {
        struct pollfd pfd;
        if (fds[i] < 0) continue;
        nopen++;
        pfd.fd = fds[i];
        pfd.events = POLLIN;
        pfd.revents = 0;
        if (poll(&pfd, 1, 0) > 0) nclosed++;
    }
    CHECK(nopen == KVX_RDMA_CM_PENDING + 8 && nclosed >= 8,
          "keyless: of %d silent connections %d were closed at once (limit %d pending, a quarter "
          "from one address)", nopen, nclosed, KVX_RDMA_CM_PENDING);
    /* while they are held, rooms still move (the exchange is not needed
       again, and no worker is held by a silent connection) */
    CHECK(xfer_run(&pf, &dc, 5002, 20, err, sizeof err), "keyless: rooms move while strangers "
          "hold the exchange port %s", err);
    for (i = 0; i < KVX_RDMA_CM_PENDING + 8; i++)
        if (fds[i] >= 0) close(fds[i]);
    CHECK(stat_of(pf.e, 0) == pairs0, "keyless: no stranger made a connection (%llu exchanges)",
          (unsigned long long)stat_of(pf.e, 0));
    CHECK(stat_of(pf.e, 1) > refused0 + 8, "keyless: cm_refused counts them (%llu)",
          (unsigned long long)(stat_of(pf.e, 1) - refused0));

    /* a decode whose side broke redials through the same port: still works */
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
        CHECK(p && xfer_run(&pf, &dc, 5003, 9, err, sizeof err) && stat_of(pf.e, 0) == pairs0 + 1,
              "keyless: the decode engine itself still reconnects %s", err);
    }
    kvx_buf_free(&b);
    pair_down(&pf, &dc);
}

static void stranger_keyed(void) {
    side pf, dc;
    char err[1024];
    uint8_t buf[8192], nonce[KVX_NONCE_BYTES], mac[KVX_MAC_BYTES];
    int types[8], nt, closed, port, fd;
    uint64_t pairs0;
    size_t len;
    kvx_buf b;
    memset(&b, 0, sizeof b);
    if (pair_up(&pf, &dc, KEY1, KEY1)) { CHECK(0, "keyed engines"); return; }
    port = kvx__rdma_re(pf.e)->cm_port;
    CHECK(xfer_run(&pf, &dc, 6001, 17, err, sizeof err), "same key: a room moves %s", err);
    pairs0 = stat_of(pf.e, 0);

    /* a stranger gets a challenge (a nonce, nothing about the engine), and
       its unauthenticated CONNECT is refused */
    fd = cm_dial(port);
    len = cm_drain(fd, buf, 48, 1, &closed);
    CHECK(len == 48 && kvx__le_r16(buf + 6) == KVX_RDMA_CM_CHALLENGE && kvx__le_r16(buf + 4) == 2 &&
          !kvx__le_r64(buf + 16) && !kvx__le_r64(buf + 24),
          "keyed: a connection first gets a CHALLENGE of version 2 that names no instance (%zu "
          "bytes)", len);
    cm_msg(&b, KVX_RDMA_CM_CONNECT, 1);
    kvx__rdma_put64(&b, decode_instance(dc.e));
    kvx__rdma_put64(&b, kvx__rdma_re(pf.e)->instance);
    kvx__rdma_put64(&b, 0);
    kvx__rdma_put64(&b, 0);
    kvx__rdma_put64(&b, 0);
    kvx__rdma_cm_end(&b);
    if (fd >= 0 && send(fd, b.data, b.len, MSG_NOSIGNAL) < 0) {}
    len = cm_drain(fd, buf, sizeof buf, 30 * slow, &closed);
    nt = cm_types(buf, len, types, 8);
    CHECK(closed && nt == 1 && types[0] == KVX_RDMA_CM_REJECT &&
          memmem(buf, len, "requires the shared key", 23),
          "keyed: a CONNECT without authentication (even naming the real decode instance) is "
          "refused: %.*s", len > 40 ? (int)(len - 40) : 0, (const char *)buf + 40);
    if (fd >= 0) close(fd);

    /* a stranger that answers the challenge with a proof under another key */
    fd = cm_dial(port);
    len = cm_drain(fd, buf, 48, 1, &closed);
    memset(nonce, 7, sizeof nonce);
    kvx_auth_proof((const uint8_t *)KEY2, strlen(KEY2), KVX_RDMA_CM_AUTH_LABEL_DECODE, buf + 32,
                   nonce, mac);
    cm_msg(&b, KVX_RDMA_CM_AUTH, 2);
    kvx__rdma_put64(&b, decode_instance(dc.e));
    kvx__rdma_put64(&b, kvx__rdma_re(pf.e)->instance);
    kvx__rdma_put(&b, nonce, sizeof nonce);
    kvx__rdma_put(&b, mac, sizeof mac);
    kvx__rdma_cm_end(&b);
    if (fd >= 0 && send(fd, b.data, b.len, MSG_NOSIGNAL) < 0) {}
    len = cm_drain(fd, buf, sizeof buf, 30 * slow, &closed);
    nt = cm_types(buf, len, types, 8);
    CHECK(closed && nt == 1 && types[0] == KVX_RDMA_CM_REJECT && memmem(buf, len, "KVX_AUTH_KEY", 12),
          "keyed: a proof under another key is refused with a reason and nothing else (%d "
          "messages)", nt);
    if (fd >= 0) close(fd);

    /* a silent one holds nothing either */
    fd = cm_dial(port);
    CHECK(xfer_run(&pf, &dc, 6002, 33, err, sizeof err) && stat_of(pf.e, 0) == pairs0,
          "keyed: rooms are not affected by strangers (%llu exchanges) %s",
          (unsigned long long)stat_of(pf.e, 0), err);
    if (fd >= 0) close(fd);
    kvx_buf_free(&b);
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

/* The decode side's check of the prefill's proof, against a fake prefill
   on a socket pair that does not hold the key. */
typedef struct fake_arg {
    int fd;
    uint8_t np[KVX_NONCE_BYTES];
} fake_arg;

static void *fake_prefill_main(void *arg) {
    fake_arg *fa = (fake_arg *)arg;
    uint8_t a[256], mac[KVX_MAC_BYTES];
    ssize_t k = 0, r;
    kvx_buf out;
    memset(&out, 0, sizeof out);
    cm_msg(&out, KVX_RDMA_CM_CHALLENGE, 2);
    kvx__rdma_put64(&out, 0);
    kvx__rdma_put64(&out, 0);
    kvx__rdma_put(&out, fa->np, sizeof fa->np);
    kvx__rdma_cm_end(&out);
    if (send(fa->fd, out.data, out.len, 0) < 0) {}
    while (k < 80 && (r = recv(fa->fd, a + k, sizeof a - (size_t)k, 0)) > 0) k += r;
    /* an AUTH_OK under another key */
    kvx_auth_proof((const uint8_t *)KEY2, strlen(KEY2), KVX_RDMA_CM_AUTH_LABEL_PREFILL, a + 32,
                   fa->np, mac);
    cm_msg(&out, KVX_RDMA_CM_AUTH_OK, 2);
    kvx__rdma_put64(&out, 0x77);
    kvx__rdma_put64(&out, 0x42);
    kvx__rdma_put(&out, mac, sizeof mac);
    kvx__rdma_cm_end(&out);
    if (send(fa->fd, out.data, out.len, 0) < 0) {}
    kvx_buf_free(&out);
    return NULL;
}

static void fake_prefill(void) {
    kvx__rdma_engine *re = (kvx__rdma_engine *)calloc(1, sizeof *re);
    int sv[2], pp[2];
    kvx_buf b, in;
    uint8_t got[256];
    char why[KVX_ERROR_MAX] = "";
    kvx_result res;
    ssize_t n;
    pthread_t th;
    fake_arg fa;
    memset(&b, 0, sizeof b);
    memset(&in, 0, sizeof in);
    if (!re || socketpair(AF_UNIX, SOCK_STREAM, 0, sv) || pipe(pp)) { CHECK(0, "socketpair"); return; }
    re->stop_rd = pp[0];
    re->key = (const uint8_t *)KEY1;
    re->key_len = strlen(KEY1);
    re->instance = 0x42;
    fa.fd = sv[1];
    memset(fa.np, 9, sizeof fa.np);
    fcntl(sv[0], F_SETFL, O_NONBLOCK);
    pthread_create(&th, NULL, fake_prefill_main, &fa);
    res = kvx__rdma_auth_dial(re, sv[0], 0x77, &b, &in, kvx_now_ns() + 20000000000ull, why,
                              sizeof why, "prefill 127.0.0.1:1 (exchange port 2)");
    pthread_join(th, NULL);
    CHECK(res == KVX_ERR_PERMISSION && strstr(why, "could not prove") && strstr(why, "KVX_AUTH_KEY") &&
          strstr(why, "127.0.0.1:1"),
          "a prefill that does not hold the key is refused before anything is sent: %s", why);
    n = recv(sv[1], got, sizeof got, MSG_DONTWAIT);
    CHECK(n <= 0, "and the decode side sent nothing after its AUTH (%zd bytes)", n);
    close(sv[0]);
    close(sv[1]);
    close(pp[0]);
    close(pp[1]);
    kvx_buf_free(&b);
    kvx_buf_free(&in);
    free(re);
}

int main(void) {
    char svdir[128];
    side pf, dc;
    rt_name = "test_rdma_trust";
    setvbuf(stdout, NULL, _IOLBF, 0);
    signal(SIGPIPE, SIG_IGN);
    if (rt_quick()) slow = 3;
    if (!rt_find_softverbs(lib, sizeof lib))
        return printf("SKIP: libsoftverbs.so not found (make tests/softverbs/libsoftverbs.so)\n"), 77;
    snprintf(svdir, sizeof svdir, "/tmp/kvx_test_%d_sv", (int)getpid());
    setenv("SOFTVERBS_DIR", svdir, 1);
    setenv("KVX_IBVERBS_LIBRARY", lib, 1);
    setenv("KVX_IB_FENCE_TIMEOUT", "2", 1);
    unsetenv("KVX_AUTH_KEY");
    unsetenv("KVX_AUTH_KEY_FILE");

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
    stranger_keyless();
    stranger_keyed();
    key_mismatch(KEY1, KEY2, "different keys", "KVX_AUTH_KEY");
    key_mismatch(KEY1, NULL, "only the prefill has a key", "KVX_AUTH_KEY");
    key_mismatch(NULL, KEY1, "only the decode side has a key", "KVX_AUTH_KEY");
    fake_prefill();
    return rt_finish();
}
