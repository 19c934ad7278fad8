/* test_boot_fail - every terminal failure reaches the peer at once, with
   the original reason, on the bootstrap handshake (bootfake transport;
   issue 10 items 1-3):
   - a sender that fails on its own (page index out of range, more pages
     than declared, aux slot outside the pool, init declaring another page
     count than the decode asked for): the receiver fails well under the
     timeouts (300 s here) with the sender's sentence and result code
   - a receiver abort: the sender fails at once with the receiver's reason
   - a sender aborted before its destination arrived: the receiver hears it
     when its room frame reaches the prefill
   - an abort after Success sends nothing (the peer's Success stands)
   - the first reason wins, for the room and for its peer */
#define KVX_IMPLEMENTATION
#include "boot_test.h"

static bt_pool g_pp, g_dp;
static kvx_engine *g_pre, *g_dec;
static uint64_t g_room = 7000;
static const double BOUND = 20.0; /* seconds; the timeouts are 300 s */

typedef struct pair {
    kvx_sender *s;
    kvx_receiver *r;
    uint64_t id;
} pair;

/* A room whose sender has its destination (2 pages) unless no_init. */
static void open_pair(pair *p, int init_receiver) {
    kvx_room_desc rd;
    int32_t pages[2] = {3, 4};
    memset(&rd, 0, sizeof rd);
    p->id = rd.room = g_room++;
    kvx_sender_create(g_pre, &rd, &p->s);
    kvx_receiver_create(g_dec, &rd, &p->r);
    bt_wait_receivers(&p->r, 1, bt_is_ready, 30);
    if (init_receiver) {
        kvx_receiver_init(p->r, pages, 2, -1);
        bt_wait_senders(&p->s, 1, bt_is_ready, 30);
    }
}

static void close_pair(pair *p) {
    kvx_sender_destroy(p->s);
    kvx_receiver_destroy(p->r);
}

/* The peer's sentence must carry this side's sentence (without its "room <id>: ")
   and result code, and arrive within BOUND seconds. */
static void expect_relayed(const char *what, const char *mine, kvx_result my_res, kvx_poll peer_state,
                           const char *peer_err, kvx_result peer_res, double secs) {
    const char *core = strstr(mine, ": ") ? strstr(mine, ": ") + 2 : mine;
    CHECK(peer_state == KVX_POLL_FAILED && secs < BOUND && strstr(peer_err, core) != NULL,
          "%s: the peer failed in %.2f s with this side's reason: [%s] (this side: [%s])", what, secs,
          peer_err, mine);
    CHECK(peer_res == my_res, "%s: with the same result code (%s, peer %s)", what, kvx_result_str(my_res),
          kvx_result_str(peer_res));
}

static void sender_fails(const char *what, int how) {
    pair p;
    double t0;
    int32_t bad[3] = {3, 4, 5};
    open_pair(&p, 1);
    t0 = bt_now();
    switch (how) {
    case 0: /* a page index outside the pool */
        kvx_sender_init(p.s, 2, -1);
        bad[1] = 1 << 30;
        kvx_sender_send(p.s, bad, 2);
        break;
    case 1: /* more pages than declared */
        kvx_sender_init(p.s, 2, -1);
        kvx_sender_send(p.s, bad, 3);
        break;
    case 2: /* an aux slot outside the pool */
        kvx_sender_init(p.s, 2, 100000);
        break;
    case 3: /* init declares another page count than the decode asked for */
        kvx_sender_init(p.s, 5, -1);
        break;
    }
    CHECK(kvx_sender_poll(p.s) == KVX_POLL_FAILED, "%s: the sender failed: %s", what, kvx_sender_error(p.s));
    bt_wait_receivers(&p.r, 1, bt_is_terminal, BOUND);
    expect_relayed(what, kvx_sender_error(p.s), kvx_sender_result(p.s), kvx_receiver_poll(p.r),
                   kvx_receiver_error(p.r), kvx_receiver_result(p.r), bt_now() - t0);
    close_pair(&p);
}

static void test_receiver_abort(void) {
    pair p;
    double t0;
    open_pair(&p, 1);
    t0 = bt_now();
    kvx_receiver_abort(p.r, "decode changed its mind");
    kvx_receiver_abort(p.r, "a second reason");
    bt_wait_senders(&p.s, 1, bt_is_terminal, BOUND);
    expect_relayed("receiver abort", kvx_receiver_error(p.r), kvx_receiver_result(p.r),
                   kvx_sender_poll(p.s), kvx_sender_error(p.s), kvx_sender_result(p.s), bt_now() - t0);
    CHECK(!strstr(kvx_sender_error(p.s), "a second reason") && !strstr(kvx_receiver_error(p.r), "a second reason"),
          "receiver abort: the first reason wins on both sides");
    close_pair(&p);
}

static void test_sender_abort_early(void) {
    pair p;
    int32_t pages[2] = {3, 4};
    double t0;
    open_pair(&p, 0);
    kvx_sender_abort(p.s, "prefill gave up early");
    kvx_sender_abort(p.s, "a second reason");
    t0 = bt_now();
    kvx_receiver_init(p.r, pages, 2, -1);
    bt_wait_receivers(&p.r, 1, bt_is_terminal, BOUND);
    expect_relayed("sender abort before the destination", kvx_sender_error(p.s), kvx_sender_result(p.s),
                   kvx_receiver_poll(p.r), kvx_receiver_error(p.r), kvx_receiver_result(p.r), bt_now() - t0);
    CHECK(!strstr(kvx_receiver_error(p.r), "a second reason"),
          "sender abort before the destination: the first reason wins on the receiver");
    close_pair(&p);
}

static void test_abort_after_success(void) {
    pair p, q;
    int32_t pages[2] = {3, 4};
    kvx_room_desc rd;
    open_pair(&p, 1);
    kvx_sender_init(p.s, 2, -1);
    kvx_sender_send(p.s, pages, 2);
    CHECK(kvx_sender_poll(p.s) == KVX_POLL_SUCCESS, "after success: the sender succeeded");
    kvx_sender_abort(p.s, "too late");
    bt_wait_receivers(&p.r, 1, bt_is_terminal, BOUND);
    CHECK(kvx_sender_poll(p.s) == KVX_POLL_SUCCESS && kvx_receiver_poll(p.r) == KVX_POLL_SUCCESS,
          "after success: a sender abort after Success changes nothing on either side (%s / %s)",
          kvx_poll_str(kvx_sender_poll(p.s)), kvx_receiver_error(p.r));
    kvx_receiver_abort(p.r, "too late too");
    /* a room after it on the same connection proves nothing else arrived */
    open_pair(&q, 1);
    kvx_sender_init(q.s, 2, -1);
    kvx_sender_send(q.s, pages, 2);
    bt_wait_receivers(&q.r, 1, bt_is_terminal, BOUND);
    CHECK(kvx_sender_poll(p.s) == KVX_POLL_SUCCESS && kvx_receiver_poll(q.r) == KVX_POLL_SUCCESS,
          "after success: a receiver abort after Success leaves the sender's Success");
    close_pair(&p);
    close_pair(&q);
    (void)rd;
}

static kvx_engine *mk(kvx_role role, const char *addr, char *why, size_t wl) {
    kvx_engine_desc d;
    kvx_engine *e = NULL;
    memset(&d, 0, sizeof d);
    d.role = role;
    d.transport = "bootfake";
    d.layout = role == KVX_ROLE_PREFILL ? g_pp.layout : g_dp.layout;
    d.logger.func = bt_log;
    d.logger.level = getenv("KVX_TEST_VERBOSE") ? KVX_LOG_DEBUG : KVX_LOG_WARN;
    d.boot.host = "127.0.0.1";
    d.boot.port = -1;
    d.bootstrap_addr = addr;
    d.waiting_timeout_s = 300;
    d.bootstrap_timeout_s = 300;
    kvx_boot_register();
    if (kvx_engine_create(&d, &e, why, wl) != KVX_OK) return NULL;
    return e;
}

int main(void) {
    char why[256], addr[64];
    bt_name = "test_boot_fail";
    signal(SIGPIPE, SIG_IGN);
    unsetenv("KVX_WAITING_TIMEOUT");
    unsetenv("KVX_BOOTSTRAP_TIMEOUT");
    bt_pool_init(&g_pp, 64, 16, 128, NULL);
    bt_pool_init(&g_dp, 64, 16, 128, NULL);
    g_pre = mk(KVX_ROLE_PREFILL, NULL, why, sizeof why);
    if (!g_pre) { printf("prefill: %s\n", why); return 1; }
    snprintf(addr, sizeof addr, "127.0.0.1:%d", kvx_boot_engine_port(g_pre));
    g_dec = mk(KVX_ROLE_DECODE, addr, why, sizeof why);
    if (!g_dec) { printf("decode: %s\n", why); return 1; }
    sender_fails("bad page index", 0);
    sender_fails("too many pages", 1);
    sender_fails("aux slot out of range", 2);
    sender_fails("init page count differs", 3);
    test_receiver_abort();
    test_sender_abort_early();
    test_abort_after_success();
    kvx_engine_destroy(g_dec);
    kvx_engine_destroy(g_pre);
    bt_pool_free(&g_pp);
    bt_pool_free(&g_dp);
    return bt_finish();
}
