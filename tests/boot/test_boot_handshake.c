/* test_boot_handshake - decode and prefill engines in one process, talking
   through kvx_boot over loopback with the bootfake transport: the room
   handshake in both orders, 1000 concurrent rooms, refusals that name both
   values, unreachable servers, aborts both ways, destroyed peers, pending
   room frames that time out, and multi-rank instances on either side. */
#define KVX_IMPLEMENTATION
#include "boot_test.h"

typedef struct pair {
    bt_pool pp, dp;
    kvx_engine *pre, *dec;
    int port;
    char addr[64];
} pair;

static int pair_open(pair *x, uint32_t dec_page_size, const char *dec_dtype, uint64_t dec_item) {
    char why[512];
    bt_engine_opts o;
    memset(x, 0, sizeof *x);
    bt_pool_init(&x->pp, 4096, 16, 128, "bfloat16");
    bt_pool_init(&x->dp, 4096, dec_page_size, dec_item, dec_dtype);
    memset(&o, 0, sizeof o);
    x->pre = bt_engine(KVX_ROLE_PREFILL, &x->pp, &o, why, sizeof why);
    if (!x->pre) { printf("prefill engine: %s\n", why); return -1; }
    x->port = kvx_boot_engine_port(x->pre);
    snprintf(x->addr, sizeof x->addr, "127.0.0.1:%d", x->port);
    o.addr = x->addr;
    x->dec = bt_engine(KVX_ROLE_DECODE, &x->dp, &o, why, sizeof why);
    if (!x->dec) { printf("decode engine: %s\n", why); return -1; }
    return 0;
}

static void pair_close(pair *x) {
    kvx_engine_destroy(x->dec);
    kvx_engine_destroy(x->pre);
    bt_pool_free(&x->pp);
    bt_pool_free(&x->dp);
}

static kvx_receiver *mk_recv(kvx_engine *e, uint64_t room, const char *addr) {
    kvx_room_desc rd;
    kvx_receiver *r = NULL;
    memset(&rd, 0, sizeof rd);
    rd.room = room;
    rd.bootstrap_addr = addr;
    kvx_receiver_create(e, &rd, &r);
    return r;
}

static kvx_sender *mk_send(kvx_engine *e, uint64_t room) {
    kvx_room_desc rd;
    kvx_sender *s = NULL;
    memset(&rd, 0, sizeof rd);
    rd.room = room;
    kvx_sender_create(e, &rd, &s);
    return s;
}

/* n rooms: 4 pages each, sent in two chunks. */
static void run_rooms(pair *x, int n, uint64_t base, int senders_first, const char *what) {
    kvx_receiver **r = (kvx_receiver **)calloc((size_t)n, sizeof *r);
    kvx_sender **s = (kvx_sender **)calloc((size_t)n, sizeof *s);
    int i, ok_r = 0, ok_s = 0, inited = 0;
    double t0 = bt_now(), t1;
    if (senders_first)
        for (i = 0; i < n; i++) s[i] = mk_send(x->pre, base + (uint64_t)i);
    for (i = 0; i < n; i++) r[i] = mk_recv(x->dec, base + (uint64_t)i, NULL);
    CHECK(bt_wait_receivers(r, n, bt_is_ready, 20), "%s: %d receivers leave Bootstrapping", what, n);
    for (i = 0; i < n; i++) {
        int32_t pages[4];
        int k;
        for (k = 0; k < 4; k++) pages[k] = (int32_t)((i * 4 + k) % 4096);
        if (kvx_receiver_init(r[i], pages, 4, i % 64) == KVX_OK) inited++;
    }
    CHECK(inited == n, "%s: %d of %d receivers inited", what, inited, n);
    if (!senders_first)
        for (i = 0; i < n; i++) s[i] = mk_send(x->pre, base + (uint64_t)i);
    CHECK(bt_wait_senders(s, n, bt_is_ready, 20), "%s: senders reach WaitingForInput", what);
    for (i = 0; i < n; i++) {
        int32_t pages[4] = {10, 11, 12, 13};
        if (kvx_sender_poll(s[i]) != KVX_POLL_WAITING_FOR_INPUT) continue;
        if (kvx_sender_init(s[i], 4, i % 64) != KVX_OK) continue;
        kvx_sender_send(s[i], pages, 2);
        kvx_sender_send(s[i], pages + 2, 2);
    }
    bt_wait_receivers(r, n, bt_is_terminal, 20);
    t1 = bt_now();
    for (i = 0; i < n; i++) {
        ok_r += kvx_receiver_poll(r[i]) == KVX_POLL_SUCCESS;
        ok_s += kvx_sender_poll(s[i]) == KVX_POLL_SUCCESS;
        if (kvx_receiver_poll(r[i]) != KVX_POLL_SUCCESS && i < 3)
            printf("  receiver %d: %s %s\n", i, kvx_poll_str(kvx_receiver_poll(r[i])),
                   kvx_receiver_error(r[i]));
    }
    CHECK(ok_r == n && ok_s == n, "%s: %d/%d receivers and %d/%d senders succeeded in %.3f s",
          what, ok_r, n, ok_s, n, t1 - t0);
    for (i = 0; i < n; i++) {
        kvx_receiver_destroy(r[i]);
        kvx_sender_destroy(s[i]);
    }
    free(r);
    free(s);
}

static void test_basic(void) {
    pair x;
    kvx_receiver *r;
    kvx_sender *s;
    int32_t dst[4] = {7, 3, 9, 100}, src[4] = {1, 2, 3, 4};
    kvx_boot *pb;
    if (pair_open(&x, 16, "bfloat16", 128)) { CHECK(0, "basic: engines start"); return; }
    pb = kvx_boot_get(x.pre);
    CHECK(pb && kvx_boot_port(pb) == x.port && kvx_boot_control_port(pb) > 0 &&
              kvx_boot_port(kvx_boot_get(x.dec)) == 0,
          "basic: bootstrap port %d read back, control port %d, decode serves nothing", x.port,
          kvx_boot_control_port(pb));
    s = mk_send(x.pre, 42);
    r = mk_recv(x.dec, 42, NULL);
    CHECK(kvx_sender_poll(s) == KVX_POLL_BOOTSTRAPPING, "basic: sender starts Bootstrapping");
    CHECK(bt_wait_receivers(&r, 1, bt_is_ready, 10) &&
              kvx_receiver_poll(r) == KVX_POLL_WAITING_FOR_INPUT,
          "basic: receiver reaches WaitingForInput once the channel is up (%s)",
          kvx_poll_str(kvx_receiver_poll(r)));
    bt_sleep(0.05);
    CHECK(kvx_sender_poll(s) == KVX_POLL_BOOTSTRAPPING,
          "basic: sender still Bootstrapping before the receiver's init");
    CHECK(kvx_sender_init(s, 4, -1) == KVX_ERR_STATE, "basic: sender init refused while Bootstrapping");
    CHECK(kvx_receiver_init(r, dst, 4, 5) == KVX_OK &&
              kvx_receiver_poll(r) == KVX_POLL_TRANSFERRING,
          "basic: receiver init sends the room frame, Transferring");
    CHECK(bt_wait_senders(&s, 1, bt_is_ready, 10) &&
              kvx_sender_poll(s) == KVX_POLL_WAITING_FOR_INPUT,
          "basic: sender reaches WaitingForInput when the room frame arrives");
    CHECK(kvx_boot_room_dst_pages(pb, (kvx_room *)s) == 4, "basic: the prefill learned 4 destination pages");
    CHECK(kvx_sender_init(s, 4, 0) == KVX_OK && kvx_sender_send(s, src, 3) == KVX_OK,
          "basic: init and first chunk");
    bt_sleep(0.05);
    CHECK(kvx_receiver_poll(r) == KVX_POLL_TRANSFERRING, "basic: receiver Transferring until the last chunk");
    CHECK(kvx_sender_send(s, src + 3, 1) == KVX_OK, "basic: last chunk");
    CHECK(bt_wait_receivers(&r, 1, bt_is_terminal, 10) &&
              kvx_receiver_poll(r) == KVX_POLL_SUCCESS && kvx_sender_poll(s) == KVX_POLL_SUCCESS,
          "basic: both Success (receiver %s)", kvx_receiver_error(r));
    kvx_receiver_destroy(r);
    kvx_sender_destroy(s);
    /* a second engine object can reuse the room id once the first is gone */
    s = mk_send(x.pre, 42);
    r = mk_recv(x.dec, 42, NULL);
    bt_wait_receivers(&r, 1, bt_is_ready, 10);
    kvx_receiver_init(r, dst, 4, -1);
    bt_wait_senders(&s, 1, bt_is_ready, 10);
    kvx_sender_init(s, 4, -1);
    kvx_sender_send(s, src, 4);
    CHECK(bt_wait_receivers(&r, 1, bt_is_terminal, 10) && kvx_receiver_poll(r) == KVX_POLL_SUCCESS,
          "basic: room id 42 reused after destroy");
    {
        kvx_receiver *dup = mk_recv(x.dec, 42, NULL);
        CHECK(dup && kvx_receiver_poll(dup) == KVX_POLL_FAILED &&
                  strstr(kvx_receiver_error(dup), "already open"),
              "basic: a second open receiver of room 42 fails: %s", dup ? kvx_receiver_error(dup) : "");
        kvx_receiver_destroy(dup);
    }
    kvx_receiver_destroy(r);
    kvx_sender_destroy(s);
    pair_close(&x);
}

static void test_many(void) {
    pair x;
    int n = bt_quick() ? 300 : 1000;
    if (pair_open(&x, 16, "bfloat16", 128)) { CHECK(0, "many: engines start"); return; }
    run_rooms(&x, n, 1000000, 0, "receivers first");
    run_rooms(&x, n, 2000000, 1, "senders first");
    pair_close(&x);
}

static void expect_refusal(uint32_t ps, const char *dtype, uint64_t item, const char *what,
                           const char *n1, const char *n2, const char *n3) {
    pair x;
    kvx_receiver *r;
    const char *e;
    if (pair_open(&x, ps, dtype, item)) { CHECK(0, "%s: engines start", what); return; }
    r = mk_recv(x.dec, 7, NULL);
    bt_wait_receivers(&r, 1, bt_is_terminal, 15);
    e = kvx_receiver_error(r);
    CHECK(kvx_receiver_poll(r) == KVX_POLL_FAILED &&
              kvx_receiver_result(r) == KVX_ERR_LAYOUT_MISMATCH && strstr(e, n1) &&
              strstr(e, n2) && (!n3 || strstr(e, n3)) && strstr(e, x.addr),
          "%s refused: %s", what, e);
    kvx_receiver_destroy(r);
    pair_close(&x);
}

static void test_refusals(void) {
    expect_refusal(32, "bfloat16", 128, "page size mismatch", "page_size 16", "engine 32", NULL);
    expect_refusal(16, "float16", 128, "dtype mismatch", "'bfloat16'", "'float16'", NULL);
    expect_refusal(16, "bfloat16", 256, "layout mismatch", "does not combine",
                   "item_len differs", "source 128, destination 256");
}

static void test_unreachable(void) {
    bt_pool p;
    kvx_engine *e;
    kvx_receiver *r, *r2;
    char why[256], addr[64], needle[128];
    bt_engine_opts o;
    int port = bt_free_port();
    double t0;
    bt_pool_init(&p, 64, 16, 128, "bfloat16");
    memset(&o, 0, sizeof o);
    e = bt_engine(KVX_ROLE_DECODE, &p, &o, why, sizeof why);
    snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
    t0 = bt_now();
    r = mk_recv(e, 1, addr);
    r2 = mk_recv(e, 2, NULL);
    CHECK(r2 && kvx_receiver_poll(r2) == KVX_POLL_FAILED &&
              strstr(kvx_receiver_error(r2), "no bootstrap address"),
          "no address: %s", r2 ? kvx_receiver_error(r2) : "(not created)");
    bt_wait_receivers(&r, 1, bt_is_terminal, 20);
    snprintf(needle, sizeof needle, "cannot reach bootstrap server 127.0.0.1:%d: connection refused", port);
    CHECK(kvx_receiver_poll(r) == KVX_POLL_FAILED && strstr(kvx_receiver_error(r), needle) &&
              strstr(kvx_receiver_error(r), "KVX_BOOTSTRAP_PORT"),
          "unreachable after %.1f s of retries: %s", bt_now() - t0, kvx_receiver_error(r));
    kvx_receiver_destroy(r);
    kvx_receiver_destroy(r2);
    kvx_engine_destroy(e);
    bt_pool_free(&p);
}

/* A room in flight: receiver inited, sender WaitingForInput. */
static int in_flight(pair *x, uint64_t room, kvx_receiver **r, kvx_sender **s) {
    int32_t dst[4] = {0, 1, 2, 3};
    *s = mk_send(x->pre, room);
    *r = mk_recv(x->dec, room, NULL);
    if (!bt_wait_receivers(r, 1, bt_is_ready, 10)) return -1;
    if (kvx_receiver_init(*r, dst, 4, -1) != KVX_OK) return -1;
    return bt_wait_senders(s, 1, bt_is_ready, 10) ? 0 : -1;
}

static void test_aborts(void) {
    pair x;
    kvx_receiver *r;
    kvx_sender *s;
    int32_t src[4] = {0, 1, 2, 3};
    if (pair_open(&x, 16, "bfloat16", 128)) { CHECK(0, "aborts: engines start"); return; }
    CHECK(in_flight(&x, 100, &r, &s) == 0, "abort from prefill: room in flight");
    kvx_sender_abort(s, "prefill ran out of KV slots");
    bt_wait_receivers(&r, 1, bt_is_terminal, 10);
    CHECK(kvx_receiver_poll(r) == KVX_POLL_FAILED && kvx_receiver_result(r) == KVX_ERR_ABORTED &&
              strstr(kvx_receiver_error(r), "prefill ran out of KV slots"),
          "abort from prefill reaches the receiver: %s", kvx_receiver_error(r));
    kvx_receiver_destroy(r);
    kvx_sender_destroy(s);

    CHECK(in_flight(&x, 101, &r, &s) == 0, "abort from decode: room in flight");
    kvx_receiver_abort(r, "the client went away");
    bt_wait_senders(&s, 1, bt_is_terminal, 10);
    CHECK(kvx_sender_poll(s) == KVX_POLL_FAILED && kvx_sender_result(s) == KVX_ERR_ABORTED &&
              strstr(kvx_sender_error(s), "the client went away"),
          "abort from decode reaches the sender: %s", kvx_sender_error(s));
    kvx_receiver_destroy(r);
    kvx_sender_destroy(s);

    CHECK(in_flight(&x, 102, &r, &s) == 0, "receiver destroyed: room in flight");
    kvx_receiver_destroy(r);
    bt_wait_senders(&s, 1, bt_is_terminal, 10);
    CHECK(kvx_sender_poll(s) == KVX_POLL_FAILED &&
              strstr(kvx_sender_error(s), "receiver was destroyed"),
          "receiver destroyed mid-transfer fails the sender: %s", kvx_sender_error(s));
    kvx_sender_destroy(s);

    /* abort before the room frame arrives: the late frame gets the abort back */
    s = mk_send(x.pre, 103);
    kvx_sender_abort(s, "cancelled early");
    r = mk_recv(x.dec, 103, NULL);
    bt_wait_receivers(&r, 1, bt_is_ready, 10);
    kvx_receiver_init(r, src, 4, -1);
    bt_wait_receivers(&r, 1, bt_is_terminal, 10);
    CHECK(kvx_receiver_poll(r) == KVX_POLL_FAILED && strstr(kvx_receiver_error(r), "cancelled early"),
          "sender aborted before the room frame: the receiver learns why: %s",
          kvx_receiver_error(r));
    kvx_receiver_destroy(r);
    kvx_sender_destroy(s);

    /* abort from decode before the sender exists: the sender fails on creation */
    r = mk_recv(x.dec, 104, NULL);
    bt_wait_receivers(&r, 1, bt_is_ready, 10);
    kvx_receiver_init(r, src, 4, -1);
    kvx_receiver_abort(r, "gave up waiting");
    bt_sleep(0.1);
    s = mk_send(x.pre, 104);
    CHECK(kvx_sender_poll(s) == KVX_POLL_FAILED && strstr(kvx_sender_error(s), "gave up waiting"),
          "decode aborted before the sender existed: the sender fails at once: %s",
          kvx_sender_error(s));
    kvx_receiver_destroy(r);
    kvx_sender_destroy(s);

    /* init declaring another page count than decode asked for */
    CHECK(in_flight(&x, 105, &r, &s) == 0, "page count mismatch: room in flight");
    CHECK(kvx_sender_init(s, 3, -1) != KVX_OK, "sender init with 3 pages for 4 is refused");
    bt_wait_receivers(&r, 1, bt_is_terminal, 10);
    CHECK(kvx_receiver_poll(r) == KVX_POLL_FAILED &&
              strstr(kvx_receiver_error(r), "init declares 3 pages but the decode side asked for 4"),
          "the receiver learns the page count mismatch: %s", kvx_receiver_error(r));
    kvx_receiver_destroy(r);
    kvx_sender_destroy(s);
    pair_close(&x);
}

static void test_peer_gone(void) {
    pair x;
    kvx_receiver *r[8];
    kvx_sender *s[8];
    int i, failed = 0, named = 0;
    char why[256], needle[160];
    bt_engine_opts o;
    if (pair_open(&x, 16, "bfloat16", 128)) { CHECK(0, "peer gone: engines start"); return; }
    for (i = 0; i < 8; i++) in_flight(&x, 200 + (uint64_t)i, &r[i], &s[i]);
    for (i = 0; i < 8; i++) kvx_sender_destroy(s[i]);
    /* every sender destroyed before finishing tells its receiver */
    bt_wait_receivers(r, 8, bt_is_terminal, 10);
    for (i = 0; i < 8; i++) failed += kvx_receiver_poll(r[i]) == KVX_POLL_FAILED;
    CHECK(failed == 8, "senders destroyed mid-transfer: %d of 8 receivers failed (%s)", failed,
          kvx_receiver_error(r[0]));
    for (i = 0; i < 8; i++) kvx_receiver_destroy(r[i]);

    /* the prefill engine goes away: every unfinished decode room fails at once */
    for (i = 0; i < 8; i++) in_flight(&x, 300 + (uint64_t)i, &r[i], &s[i]);
    for (i = 0; i < 8; i++) kvx_sender_destroy(s[i]);
    for (i = 0; i < 8; i++) kvx_receiver_destroy(r[i]);
    for (i = 0; i < 8; i++) {
        int32_t dst[2] = {0, 1};
        r[i] = mk_recv(x.dec, 400 + (uint64_t)i, NULL);
        bt_wait_receivers(&r[i], 1, bt_is_ready, 10);
        kvx_receiver_init(r[i], dst, 2, -1);
    }
    kvx_engine_destroy(x.pre);
    x.pre = NULL;
    bt_wait_receivers(r, 8, bt_is_terminal, 5);
    snprintf(needle, sizeof needle, "lost connection with prefill instance %s", x.addr);
    failed = 0;
    for (i = 0; i < 8; i++) {
        failed += kvx_receiver_poll(r[i]) == KVX_POLL_FAILED;
        named += strstr(kvx_receiver_error(r[i]), needle) != NULL;
    }
    CHECK(failed == 8 && named == 8, "prefill engine destroyed: %d/8 receivers failed naming it: %s",
          failed, kvx_receiver_error(r[0]));
    for (i = 0; i < 8; i++) kvx_receiver_destroy(r[i]);

    /* a new prefill on the same port: new rooms succeed with the same decode engine */
    memset(&o, 0, sizeof o);
    o.port = x.port;
    x.pre = bt_engine(KVX_ROLE_PREFILL, &x.pp, &o, why, sizeof why);
    CHECK(x.pre != NULL, "prefill restarted on port %d (%s)", x.port, x.pre ? "" : why);
    if (x.pre) run_rooms(&x, 50, 500, 0, "after prefill restart");

    /* the decode engine goes away: the prefill's unfinished rooms fail */
    for (i = 0; i < 8; i++) in_flight(&x, 600 + (uint64_t)i, &r[i], &s[i]);
    kvx_engine_destroy(x.dec);
    x.dec = NULL;
    bt_wait_senders(s, 8, bt_is_terminal, 5);
    failed = named = 0;
    for (i = 0; i < 8; i++) {
        failed += kvx_sender_poll(s[i]) == KVX_POLL_FAILED;
        /* the decode tells its reason (room_failed) before the connection goes */
        named += strstr(kvx_sender_error(s[i]), "the engine was destroyed (aborted by the decode "
                                                "engine at 127.0.0.1:") != NULL;
    }
    CHECK(failed == 8 && named == 8, "decode engine destroyed: %d/8 senders failed with its reason and naming it: %s",
          failed, kvx_sender_error(s[0]));
    for (i = 0; i < 8; i++) kvx_sender_destroy(s[i]);
    pair_close(&x);
}

static void test_pending_timeout(void) {
    pair x;
    kvx_receiver *r;
    int32_t dst[2] = {0, 1};
    double t0;
    setenv("KVX_BOOTSTRAP_TIMEOUT", "1", 1);
    if (pair_open(&x, 16, "bfloat16", 128)) {
        unsetenv("KVX_BOOTSTRAP_TIMEOUT");
        CHECK(0, "pending timeout: engines start");
        return;
    }
    unsetenv("KVX_BOOTSTRAP_TIMEOUT");
    r = mk_recv(x.dec, 77, NULL);
    bt_wait_receivers(&r, 1, bt_is_ready, 10);
    kvx_receiver_init(r, dst, 2, -1);
    t0 = bt_now();
    bt_wait_receivers(&r, 1, bt_is_terminal, 10);
    CHECK(kvx_receiver_poll(r) == KVX_POLL_FAILED && kvx_receiver_result(r) == KVX_ERR_TIMEOUT &&
              strstr(kvx_receiver_error(r), "no sender was created for room 77"),
          "a room frame with no sender fails after KVX_BOOTSTRAP_TIMEOUT (%.1f s): %s",
          bt_now() - t0, kvx_receiver_error(r));
    kvx_receiver_destroy(r);
    pair_close(&x);
}

/* Prefill tp 2 (rank 1 registers with rank 0 over HTTP), decode tp 1. */
static void test_prefill_tp2(void) {
    bt_pool pp, dp;
    kvx_engine *p0, *p1, *d;
    bt_engine_opts o;
    char why[256], addr[64];
    kvx_sender *s0, *s1;
    kvx_receiver *r;
    int32_t pages[3] = {5, 6, 7};
    bt_pool_init(&pp, 256, 16, 128, "bfloat16");
    bt_pool_init(&dp, 256, 16, 128, "bfloat16");
    memset(&o, 0, sizeof o);
    o.tp_size = 2;
    p0 = bt_engine(KVX_ROLE_PREFILL, &pp, &o, why, sizeof why);
    if (!p0) { CHECK(0, "tp2: prefill rank 0: %s", why); return; }
    o.port = kvx_boot_engine_port(p0);
    o.tp_rank = 1;
    p1 = bt_engine(KVX_ROLE_PREFILL, &pp, &o, why, sizeof why);
    CHECK(p1 && kvx_boot_engine_port(p1) == 0, "tp2: prefill rank 1 runs no server (%s)", p1 ? "" : why);
    snprintf(addr, sizeof addr, "127.0.0.1:%d", o.port);
    memset(&o, 0, sizeof o);
    o.addr = addr;
    d = bt_engine(KVX_ROLE_DECODE, &dp, &o, why, sizeof why);
    s0 = mk_send(p0, 9);
    s1 = mk_send(p1, 9);
    r = mk_recv(d, 9, NULL);
    bt_wait_receivers(&r, 1, bt_is_ready, 15);
    CHECK(kvx_receiver_poll(r) == KVX_POLL_WAITING_FOR_INPUT, "tp2: receiver ready (%s)",
          kvx_receiver_error(r));
    kvx_receiver_init(r, pages, 3, -1);
    CHECK(bt_wait_senders(&s0, 1, bt_is_ready, 10) && bt_wait_senders(&s1, 1, bt_is_ready, 10),
          "tp2: both prefill ranks got the room frame");
    kvx_sender_init(s0, 3, -1);
    kvx_sender_send(s0, pages, 3);
    bt_sleep(0.1);
    CHECK(kvx_receiver_poll(r) == KVX_POLL_TRANSFERRING, "tp2: one rank done is not enough");
    kvx_sender_init(s1, 3, -1);
    kvx_sender_send(s1, pages, 3);
    CHECK(bt_wait_receivers(&r, 1, bt_is_terminal, 10) && kvx_receiver_poll(r) == KVX_POLL_SUCCESS,
          "tp2: Success once both prefill ranks reported (%s)", kvx_receiver_error(r));
    kvx_receiver_destroy(r);
    kvx_sender_destroy(s0);
    kvx_sender_destroy(s1);
    kvx_engine_destroy(d);
    kvx_engine_destroy(p1);
    kvx_engine_destroy(p0);
    bt_pool_free(&pp);
    bt_pool_free(&dp);
}

/* Prefill tp 1, decode tp 2: the sender waits for both decode ranks. */
static void test_decode_tp2(void) {
    pair x;
    kvx_engine *d1;
    kvx_receiver *r0, *r1;
    kvx_sender *s;
    bt_engine_opts o;
    char why[256];
    int32_t pages[2] = {1, 2};
    if (pair_open(&x, 16, "bfloat16", 128)) { CHECK(0, "decode tp2: engines start"); return; }
    kvx_engine_destroy(x.dec);
    memset(&o, 0, sizeof o);
    o.addr = x.addr;
    o.tp_size = 2;
    x.dec = bt_engine(KVX_ROLE_DECODE, &x.dp, &o, why, sizeof why);
    o.tp_rank = 1;
    d1 = bt_engine(KVX_ROLE_DECODE, &x.dp, &o, why, sizeof why);
    s = mk_send(x.pre, 11);
    r0 = mk_recv(x.dec, 11, NULL);
    r1 = mk_recv(d1, 11, NULL);
    bt_wait_receivers(&r0, 1, bt_is_ready, 10);
    bt_wait_receivers(&r1, 1, bt_is_ready, 10);
    kvx_receiver_init(r0, pages, 2, -1);
    bt_sleep(0.1);
    CHECK(kvx_sender_poll(s) == KVX_POLL_BOOTSTRAPPING, "decode tp2: one decode rank is not enough");
    kvx_receiver_init(r1, pages, 2, -1);
    CHECK(bt_wait_senders(&s, 1, bt_is_ready, 10) && kvx_sender_poll(s) == KVX_POLL_WAITING_FOR_INPUT,
          "decode tp2: sender ready once both decode ranks sent the room");
    kvx_sender_init(s, 2, -1);
    kvx_sender_send(s, pages, 2);
    CHECK(bt_wait_receivers(&r0, 1, bt_is_terminal, 10) && bt_wait_receivers(&r1, 1, bt_is_terminal, 10) &&
              kvx_receiver_poll(r0) == KVX_POLL_SUCCESS && kvx_receiver_poll(r1) == KVX_POLL_SUCCESS,
          "decode tp2: both receivers Success");
    kvx_receiver_destroy(r0);
    kvx_receiver_destroy(r1);
    kvx_sender_destroy(s);
    kvx_engine_destroy(d1);
    pair_close(&x);
}

int main(void) {
    bt_name = "test_boot_handshake";
    signal(SIGPIPE, SIG_IGN);
    test_basic();
    test_many();
    test_refusals();
    test_unreachable();
    test_aborts();
    test_peer_gone();
    test_pending_timeout();
    test_prefill_tp2();
    test_decode_tp2();
    return bt_finish();
}
