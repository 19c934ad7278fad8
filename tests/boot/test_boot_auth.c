/* test_boot_auth - the shared key on the bootstrap (issue 10 item 15):
   - the same key on both sides: rooms succeed (prefill rank 1 registers
     with rank 0 through a MAC'd PUT /route)
   - a wrong key, no key against a keyed prefill, a key against a keyless
     prefill: refused, and the rooms fail at once with a sentence saying so
   - a stranger without the key: its connection is closed and nothing it
     sent (room claims, aborts) is applied; with a keyed hello and a forged
     proof likewise
   - /rooms and /metrics: loopback only with a key; PUT /route without a
     valid X-Kvx-Auth is refused */
#define KVX_IMPLEMENTATION
#include "boot_test.h"
#include <ifaddrs.h>
#include <net/if.h>

static bt_pool g_pp, g_dp;
static const char *KEY = "kvx-test-key-0123456789abcdef";
static const char *KEY2 = "kvx-test-key-9876543210fedcba";
static uint64_t g_room = 3000;
static char g_remote[64];

static void raw_send(int fd, const void *p, size_t n) {
    const char *s = (const char *)p;
    while (n) {
        ssize_t w = send(fd, s, n, MSG_NOSIGNAL);
        if (w <= 0) return;
        s += w;
        n -= (size_t)w;
    }
}

static int connect_to(const char *ip, int port) {
    struct sockaddr_in a;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    inet_pton(AF_INET, ip, &a.sin_addr);
    if (fd < 0) return -1;
    if (connect(fd, (struct sockaddr *)&a, sizeof a)) { close(fd); return -1; }
    return fd;
}

static int http(const char *ip, int port, const char *req, char *out, size_t n) {
    char resp[65536];
    int fd = connect_to(ip, port), st = -1;
    const char *body;
    out[0] = 0;
    if (fd < 0) return -1;
    raw_send(fd, req, strlen(req));
    bt_wait_closed(fd, 5.0, resp, sizeof resp);
    close(fd);
    if (!strncmp(resp, "HTTP/1.1 ", 9)) st = atoi(resp + 9);
    body = strstr(resp, "\r\n\r\n");
    snprintf(out, n, "%s", body ? body + 4 : "");
    return st;
}

static kvx_engine *mk(kvx_role role, const char *key, const char *addr, int port, int tp_size,
                      int tp_rank, char *why, size_t wl) {
    kvx_engine_desc d;
    kvx_engine *e = NULL;
    memset(&d, 0, sizeof d);
    d.role = role;
    d.transport = "bootfake";
    d.layout = role == KVX_ROLE_PREFILL ? g_pp.layout : g_dp.layout;
    d.logger.func = bt_log;
    d.logger.level = getenv("KVX_TEST_VERBOSE") ? KVX_LOG_DEBUG : KVX_LOG_WARN;
    d.boot.host = role == KVX_ROLE_PREFILL && g_remote[0] && !tp_rank ? "0.0.0.0" : "127.0.0.1";
    d.boot.port = port ? port : -1;
    d.boot.tp_size = tp_size;
    d.boot.tp_rank = tp_rank;
    d.bootstrap_addr = addr;
    d.auth_key = key;
    kvx_boot_register();
    if (kvx_engine_create(&d, &e, why, wl) != KVX_OK) return NULL;
    return e;
}

/* One room between pre (and pre2 when not NULL) and dec. Returns the receiver's
   state; err gets its sentence. */
static kvx_poll one_room(kvx_engine *pre, kvx_engine *pre2, kvx_engine *dec, char *err, size_t en,
                         double *secs) {
    kvx_room_desc rd;
    kvx_sender *s = NULL, *s2 = NULL;
    kvx_receiver *r = NULL;
    int32_t pages[2] = {3, 4};
    kvx_poll st;
    double t0 = bt_now();
    memset(&rd, 0, sizeof rd);
    rd.room = g_room++;
    kvx_sender_create(pre, &rd, &s);
    if (pre2) kvx_sender_create(pre2, &rd, &s2);
    kvx_receiver_create(dec, &rd, &r);
    bt_wait_receivers(&r, 1, bt_is_ready, 30);
    if (kvx_receiver_poll(r) != KVX_POLL_FAILED) {
        kvx_receiver_init(r, pages, 2, -1);
        bt_wait_senders(&s, 1, bt_is_ready, 30);
        if (s2) bt_wait_senders(&s2, 1, bt_is_ready, 30);
        if (kvx_sender_init(s, 2, -1) == KVX_OK) kvx_sender_send(s, pages, 2);
        if (s2 && kvx_sender_init(s2, 2, -1) == KVX_OK) kvx_sender_send(s2, pages, 2);
        bt_wait_receivers(&r, 1, bt_is_terminal, 30);
    }
    st = kvx_receiver_poll(r);
    if (secs) *secs = bt_now() - t0;
    snprintf(err, en, "%s", kvx_receiver_error(r));
    kvx_receiver_destroy(r);
    kvx_sender_destroy(s);
    kvx_sender_destroy(s2);
    return st;
}

static void test_keys(void) {
    char why[256], addr[96], err[1024];
    kvx_engine *pre, *pre1, *dec;
    kvx_poll st;
    double secs;
    int port;
    pre = mk(KVX_ROLE_PREFILL, KEY, NULL, 0, 2, 0, why, sizeof why);
    CHECK(pre != NULL, "keyed prefill rank 0 starts (%s)", pre ? "" : why);
    if (!pre) return;
    port = kvx_boot_engine_port(pre);
    pre1 = mk(KVX_ROLE_PREFILL, KEY, NULL, port, 2, 1, why, sizeof why);
    CHECK(pre1 != NULL, "keyed prefill rank 1 starts (%s)", pre1 ? "" : why);
    snprintf(addr, sizeof addr, "127.0.0.1:%d", port);

    dec = mk(KVX_ROLE_DECODE, KEY, addr, 0, 1, 0, why, sizeof why);
    st = one_room(pre, pre1, dec, err, sizeof err, NULL);
    CHECK(st == KVX_POLL_SUCCESS, "same key: rank 1 registered through a MAC'd PUT /route and the "
                                  "room succeeds across both ranks (%s)", err);
    st = one_room(pre, pre1, dec, err, sizeof err, NULL);
    CHECK(st == KVX_POLL_SUCCESS, "same key: a second room on the authenticated connections (%s)", err);
    kvx_engine_destroy(dec);

    dec = mk(KVX_ROLE_DECODE, KEY2, addr, 0, 1, 0, why, sizeof why);
    st = one_room(pre, pre1, dec, err, sizeof err, &secs);
    CHECK(st == KVX_POLL_FAILED && strstr(err, "authentication with prefill rank") &&
              strstr(err, "KVX_AUTH_KEY differs") && secs < 10,
          "wrong key: refused, the room fails in %.2f s: %s", secs, err);
    kvx_engine_destroy(dec);

    dec = mk(KVX_ROLE_DECODE, NULL, addr, 0, 1, 0, why, sizeof why);
    st = one_room(pre, pre1, dec, err, sizeof err, &secs);
    CHECK(st == KVX_POLL_FAILED && strstr(err, "requires authentication") && secs < 10,
          "no key against a keyed prefill: the room fails in %.2f s: %s", secs, err);
    kvx_engine_destroy(dec);
    kvx_engine_destroy(pre1);
    kvx_engine_destroy(pre);

    pre = mk(KVX_ROLE_PREFILL, NULL, NULL, 0, 1, 0, why, sizeof why);
    snprintf(addr, sizeof addr, "127.0.0.1:%d", kvx_boot_engine_port(pre));
    dec = mk(KVX_ROLE_DECODE, KEY, addr, 0, 1, 0, why, sizeof why);
    st = one_room(pre, NULL, dec, err, sizeof err, &secs);
    CHECK(st == KVX_POLL_FAILED && strstr(err, "does not authenticate") && secs < 10,
          "a key against a keyless prefill: the room fails in %.2f s: %s", secs, err);
    kvx_engine_destroy(dec);
    dec = mk(KVX_ROLE_DECODE, NULL, addr, 0, 1, 0, why, sizeof why);
    st = one_room(pre, NULL, dec, err, sizeof err, &secs);
    CHECK(st == KVX_POLL_SUCCESS, "keyless on both sides still works (%s)", err);
    kvx_engine_destroy(dec);
    kvx_engine_destroy(pre);
}

static void hello(kvx__buf *b, int keyed, const uint8_t *nonce) {
    kvx_boot_frame f;
    uint64_t items[3] = {128, 128, 64};
    memset(&f, 0, sizeof f);
    f.type = KVX_BOOT_FRAME_HELLO;
    f.hello.role = KVX_ROLE_DECODE;
    f.hello.fingerprint = kvx_layout_fingerprint(&g_dp.layout);
    f.hello.tp_size = f.hello.dp_size = f.hello.pp_size = f.hello.cp_size = 1;
    f.hello.page_size = 16;
    f.hello.num_buffers = 2;
    f.hello.num_aux = 1;
    f.hello.item_lens = items;
    f.hello.aux_item_lens = items + 2;
    f.hello.transport = "bootfake";
    f.hello.transport_len = 8;
    if (keyed) {
        f.hello.flags = KVX_BOOT_HELLO_AUTH;
        f.hello.nonce = nonce;
    }
    kvx__boot_frame_encode(&f, b);
}

static void frame_room(kvx__buf *b, uint64_t room) {
    kvx_boot_frame f;
    int32_t pages[2] = {0, 1};
    memset(&f, 0, sizeof f);
    f.type = KVX_BOOT_FRAME_ROOM;
    f.room = room;
    f.num_pages = 2;
    f.pages = pages;
    f.aux_index = -1;
    f.peer_count = 1;
    kvx__boot_frame_encode(&f, b);
}

static void frame_abort(kvx__buf *b, uint64_t room) {
    kvx_boot_frame f;
    memset(&f, 0, sizeof f);
    f.type = KVX_BOOT_FRAME_ABORT;
    f.room = room;
    f.reason = "stranger";
    f.reason_len = 8;
    kvx__boot_frame_encode(&f, b);
}

/* A stranger: hello (keyed with a forged proof, or not), then a claim for
   `claim` and an abort for `victim`. 1 when the prefill closed it. */
static int stranger(int ctrl, int keyed, uint64_t claim, uint64_t victim) {
    kvx__buf b;
    uint8_t nonce[16] = {1, 2, 3};
    char got[8192];
    int fd = connect_to("127.0.0.1", ctrl), closed;
    memset(&b, 0, sizeof b);
    hello(&b, keyed, nonce);
    if (keyed) {
        kvx_boot_frame f;
        uint8_t proof[32];
        memset(proof, 0x5a, sizeof proof);
        memset(&f, 0, sizeof f);
        f.type = KVX_BOOT_FRAME_AUTH;
        f.proof = proof;
        kvx__boot_frame_encode(&f, &b);
    }
    frame_room(&b, claim);
    frame_abort(&b, victim);
    raw_send(fd, b.data, b.len);
    kvx__buf_free(&b);
    closed = bt_wait_closed(fd, 10, got, sizeof got);
    close(fd);
    return closed;
}

static void test_strangers(void) {
    char why[256], addr[96], err[1024], body[65536], req[1024], hdr[160];
    kvx_engine *pre, *dec;
    kvx_sender *claimed, *victim;
    kvx_receiver *rv;
    kvx_room_desc rd;
    int32_t pages[2] = {3, 4};
    int port, ctrl, st, k;
    pre = mk(KVX_ROLE_PREFILL, KEY, NULL, 0, 1, 0, why, sizeof why);
    port = kvx_boot_engine_port(pre);
    ctrl = kvx_boot_control_port(kvx_boot_get(pre));
    snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
    dec = mk(KVX_ROLE_DECODE, KEY, addr, 0, 1, 0, why, sizeof why);
    /* a sender waiting for its destination, another that has it */
    memset(&rd, 0, sizeof rd);
    rd.room = g_room++;
    kvx_sender_create(pre, &rd, &claimed);
    rd.room = g_room++;
    kvx_sender_create(pre, &rd, &victim);
    kvx_receiver_create(dec, &rd, &rv);
    bt_wait_receivers(&rv, 1, bt_is_ready, 30);
    kvx_receiver_init(rv, pages, 2, -1);
    bt_wait_senders(&victim, 1, bt_is_ready, 30);
    for (k = 0; k < 2; k++) {
        int closed = stranger(ctrl, k, kvx_room_id((kvx_room *)claimed), kvx_room_id((kvx_room *)victim));
        CHECK(closed, "stranger (%s): its connection is closed",
              k ? "keyed hello, forged proof" : "no key");
    }
    CHECK(kvx_sender_poll(claimed) == KVX_POLL_BOOTSTRAPPING &&
              kvx_boot_room_dst_pages(kvx_boot_get(pre), (kvx_room *)claimed) == 0,
          "strangers: their room frames claimed nothing (sender still Bootstrapping, no destination)");
    CHECK(kvx_sender_poll(victim) == KVX_POLL_WAITING_FOR_INPUT,
          "strangers: their aborts were not applied (%s)", kvx_sender_error(victim));
    if (kvx_sender_init(victim, 2, -1) == KVX_OK) kvx_sender_send(victim, pages, 2);
    bt_wait_receivers(&rv, 1, bt_is_terminal, 30);
    CHECK(kvx_receiver_poll(rv) == KVX_POLL_SUCCESS, "strangers: the room completes for its owner (%s)",
          kvx_receiver_error(rv));
    kvx_receiver_destroy(rv);
    kvx_sender_destroy(victim);
    kvx_sender_destroy(claimed);

    /* HTTP with a key */
    st = http("127.0.0.1", port, "GET /rooms HTTP/1.1\r\n\r\n", body, sizeof body);
    CHECK(st == 200, "keyed: /rooms on loopback -> %d", st);
    if (g_remote[0]) {
        st = http(g_remote, port, "GET /rooms HTTP/1.1\r\n\r\n", body, sizeof body);
        CHECK(st == 403, "keyed: /rooms from %s -> %d %s", g_remote, st, body);
        st = http(g_remote, port, "GET /metrics HTTP/1.1\r\n\r\n", body, sizeof body);
        CHECK(st == 403, "keyed: /metrics from %s -> %d", g_remote, st);
        st = http(g_remote, port, "GET /health HTTP/1.1\r\n\r\n", body, sizeof body);
        CHECK(st == 200, "keyed: /health stays open (SGLang heartbeats) -> %d", st);
    } else {
        printf("SKIP-PART remote /rooms and /metrics: no non-loopback IPv4 address here\n");
    }
    {
        const char *reg = "{\"attn_tp_size\":1,\"attn_tp_rank\":0,\"rank_ip\":\"10.6.6.6\",\"rank_port\":6666,"
                          "\"page_size\":16}";
        snprintf(req, sizeof req, "PUT /route HTTP/1.1\r\nContent-Length: %zu\r\n\r\n%s", strlen(reg), reg);
        st = http("127.0.0.1", port, req, body, sizeof body);
        CHECK(st == 403, "keyed: PUT /route without X-Kvx-Auth -> %d %s", st, body);
        snprintf(req, sizeof req, "PUT /route HTTP/1.1\r\nX-Kvx-Auth: %llu:%064d\r\nContent-Length: %zu\r\n\r\n%s",
                 (unsigned long long)time(NULL), 0, strlen(reg), reg);
        st = http("127.0.0.1", port, req, body, sizeof body);
        CHECK(st == 403, "keyed: PUT /route with a forged X-Kvx-Auth -> %d", st);
        kvx__boot_route_mac(kvx_boot_get(pre), reg, strlen(reg), (uint64_t)time(NULL) - 1000, hdr, sizeof hdr);
        snprintf(req, sizeof req, "PUT /route HTTP/1.1\r\n%sContent-Length: %zu\r\n\r\n%s", hdr, strlen(reg), reg);
        st = http("127.0.0.1", port, req, body, sizeof body);
        CHECK(st == 403, "keyed: PUT /route with a stale (1000 s old) MAC -> %d", st);
        kvx__boot_route_mac(kvx_boot_get(pre), reg, strlen(reg), (uint64_t)time(NULL), hdr, sizeof hdr);
        snprintf(req, sizeof req, "PUT /route HTTP/1.1\r\n%sContent-Length: %zu\r\n\r\n%s", hdr, strlen(reg), reg);
        st = http("127.0.0.1", port, req, body, sizeof body);
        CHECK(st == 200, "keyed: PUT /route with a valid MAC -> %d %s", st, body);
    }
    (void)err;
    kvx_engine_destroy(dec);
    kvx_engine_destroy(pre);
}

static void find_remote(void) {
    struct ifaddrs *ifs = NULL, *i;
    if (getifaddrs(&ifs) != 0) return;
    for (i = ifs; i; i = i->ifa_next)
        if (i->ifa_addr && i->ifa_addr->sa_family == AF_INET && (i->ifa_flags & IFF_UP) &&
            !(i->ifa_flags & IFF_LOOPBACK)) {
            inet_ntop(AF_INET, &((struct sockaddr_in *)(void *)i->ifa_addr)->sin_addr, g_remote,
                      sizeof g_remote);
            break;
        }
    freeifaddrs(ifs);
}

int main(void) {
    bt_name = "test_boot_auth";
    signal(SIGPIPE, SIG_IGN);
    unsetenv("KVX_AUTH_KEY");
    unsetenv("KVX_AUTH_KEY_FILE");
    find_remote();
    bt_pool_init(&g_pp, 64, 16, 128, NULL);
    bt_pool_init(&g_dp, 64, 16, 128, NULL);
    test_keys();
    test_strangers();
    bt_pool_free(&g_pp);
    bt_pool_free(&g_dp);
    return bt_finish();
}
