/* DP attention on the bootstrap server and the decode side, as SGLang does
   it. Compared field for field against SGLang's CommonKVBootstrapServer
   (python/sglang/srt/disaggregation/common/conn.py at sgl-project/sglang
   commit 0094505da74125a31ceb354f37ae7a1b6a97d3f5, 2026):
   - GET /route server info = dataclasses.asdict(PrefillServerInfo): every
     field in its order, follow_bootstrap_room from the first registration's
     load_balance_method, enable_dsa_cache_layer_split, prefill_http_port
     (null until one is registered), the decode-side mapping fields null;
   - POST /register_dp_rank {bootstrap_room, dp_rank} -> 200 "OK";
   - POST /query_dp_ranks {bootstrap_rooms: [...]} -> 200 {"<room>": dp} for
     the rooms it knows; unknown rooms are left out ({} when none).
   kvx answers 400 to malformed bodies (SGLang's aiohttp handlers raise: 500),
   checks dp_rank against the registered dp size, bounds the table
   (KVX_BOOT_MAX_DP_ROOMS, oldest evicted) and the query (KVX_BOOT_MAX_QUERY_ROOMS),
   and with a key wants X-Kvx-Auth on /register_dp_rank. End to end: DP 2
   with follow_bootstrap_room (room % 2) and with another method (the
   prefill sender registers its room, the decode asks /query_dp_ranks). */
#define KVX_BOOT_MAX_DP_ROOMS 8 /* small, to see the eviction */
#define KVX_BOOT_MAX_QUERY_ROOMS 64
#define KVX_IMPLEMENTATION
#include "../../kvx_boot.h"
#include "boot_test.h"

static int http(int port, const char *method, const char *target, const char *extra,
                const char *body, char *out, size_t n) {
    kvx__buf resp;
    char err[200];
    int status = 0, refused = 0;
    kvx__buf_init(&resp, NULL);
    if (kvx__boot_http_call("127.0.0.1", port, method, target, extra, body, body ? strlen(body) : 0,
                            10.0, &status, &resp, err, sizeof err, &refused, NULL) != KVX_OK) {
        snprintf(out, n, "(no answer: %s)", err);
        kvx__buf_free(&resp);
        return 0;
    }
    snprintf(out, n, "%.*s", (int)resp.len, resp.data ? resp.data : "");
    kvx__buf_free(&resp);
    return status;
}

static kvx_engine *prefill(bt_pool *p, int dp, int dp_rank, int port, const char *lbm) {
    bt_engine_opts o;
    char why[KVX_ERROR_MAX];
    kvx_engine *e;
    memset(&o, 0, sizeof o);
    o.dp_size = dp;
    o.dp_rank = dp_rank;
    o.port = port;
    if (lbm) setenv("KVX_LOAD_BALANCE_METHOD", lbm, 1);
    e = bt_engine(KVX_ROLE_PREFILL, p, &o, why, sizeof why);
    unsetenv("KVX_LOAD_BALANCE_METHOD");
    if (!e) printf("  prefill dp %d: %s\n", dp_rank, why);
    return e;
}

/* Waits until the server answers 200 to GET /route (every rank registered). */
static int wait_ready(int port) {
    char out[2048];
    double end = bt_now() + 30;
    while (bt_now() < end) {
        if (http(port, "GET", "/route?prefill_dp_rank=-1&prefill_cp_rank=-1&target_tp_rank=-1&"
                              "target_pp_rank=-1", NULL, NULL, out, sizeof out) == 200)
            return 1;
        bt_sleep(0.01);
    }
    return 0;
}

static void test_routes(void) {
    bt_pool pool;
    kvx_engine *p0;
    int port, st, i;
    char out[4096], body[4096], want[2048];
    bt_pool_init(&pool, 64, 16, 128, "bfloat16");
    p0 = prefill(&pool, 2, 0, -1, NULL);
    if (!p0) { CHECK(0, "routes: engine starts"); bt_pool_free(&pool); return; }
    port = kvx_boot_engine_port(p0);
    /* rank dp 1 registers as SGLang's register_to_bootstrap does */
    st = http(port, "PUT", "/route", NULL,
              "{\"attn_tp_size\":1,\"attn_tp_rank\":0,\"attn_cp_size\":1,\"attn_cp_rank\":0,"
              "\"attn_dp_size\":2,\"attn_dp_rank\":1,\"pp_size\":1,\"pp_rank\":0,"
              "\"system_dp_size\":1,\"system_dp_rank\":0,\"rank_ip\":\"127.0.0.1\",\"rank_port\":1,"
              "\"page_size\":16,\"kv_cache_dtype\":\"bfloat16\",\"load_balance_method\":\"round_robin\","
              "\"enable_dsa_cache_layer_split\":true,\"prefill_http_port\":30000}",
              out, sizeof out);
    CHECK(st == 200 && !strcmp(out, "OK"), "routes: PUT /route with SGLang's fields: %d %s", st, out);
    st = http(port, "GET", "/route?prefill_dp_rank=-1&prefill_cp_rank=-1&target_tp_rank=-1&target_pp_rank=-1",
              NULL, NULL, out, sizeof out);
    /* the first registration (the engine's own: follow_bootstrap_room, no
       dsa, no http port) decides follow and dsa; the http port is the first
       one registered */
    snprintf(want, sizeof want,
             "{\"attn_tp_size\":1,\"attn_cp_size\":1,\"dp_size\":2,\"pp_size\":1,\"page_size\":16,"
             "\"kv_cache_dtype\":\"bfloat16\",\"follow_bootstrap_room\":true,"
             "\"enable_dsa_cache_layer_split\":false,\"prefill_http_port\":30000,"
             "\"target_tp_rank\":null,\"target_tp_ranks\":null,\"target_cp_ranks\":null,"
             "\"target_pp_ranks\":null,\"required_dst_info_num\":null,"
             "\"required_prefill_response_num\":null}");
    CHECK(st == 200 && !strcmp(out, want), "routes: GET /route server info is PrefillServerInfo "
          "field for field: %d %s", st, out);
    st = http(port, "GET", "/route?prefill_dp_rank=1&prefill_cp_rank=0&target_tp_rank=0&target_pp_rank=0",
              NULL, NULL, out, sizeof out);
    CHECK(st == 200 && !strcmp(out, "{\"rank_ip\":\"127.0.0.1\",\"rank_port\":1}"),
          "routes: a rank is PrefillRankInfo: %d %s", st, out);

    /* /register_dp_rank and /query_dp_ranks */
    st = http(port, "POST", "/register_dp_rank", NULL, "{\"bootstrap_room\":1001,\"dp_rank\":1}", out, sizeof out);
    CHECK(st == 200 && !strcmp(out, "OK"), "register_dp_rank: 200 OK: %d %s", st, out);
    st = http(port, "POST", "/register_dp_rank", NULL, "{\"bootstrap_room\":\"1002\",\"dp_rank\":\"0\"}", out, sizeof out);
    CHECK(st == 200, "register_dp_rank: decimal strings as SGLang's int(): %d %s", st, out);
    st = http(port, "POST", "/query_dp_ranks", NULL, "{\"bootstrap_rooms\":[1002,\"1001\",5,1001]}", out, sizeof out);
    CHECK(st == 200 && !strcmp(out, "{\"1001\":1,\"1002\":0}"),
          "query_dp_ranks: known rooms only, once each, string keys: %d %s", st, out);
    st = http(port, "POST", "/query_dp_ranks", NULL, "{\"bootstrap_rooms\":[7]}", out, sizeof out);
    CHECK(st == 200 && !strcmp(out, "{}"), "query_dp_ranks: no known room -> {}: %d %s", st, out);
    st = http(port, "POST", "/query_dp_ranks", NULL, "{\"bootstrap_rooms\":[]}", out, sizeof out);
    CHECK(st == 200 && !strcmp(out, "{}"), "query_dp_ranks: empty list -> {}: %d %s", st, out);
    {
        static const char *bad_reg[] = {
            "", "not json", "[]", "{}", "{\"bootstrap_room\":1}", "{\"dp_rank\":0}",
            "{\"bootstrap_room\":-1,\"dp_rank\":0}", "{\"bootstrap_room\":1.5,\"dp_rank\":0}",
            "{\"bootstrap_room\":9223372036854775808,\"dp_rank\":0}",
            "{\"bootstrap_room\":\"12x\",\"dp_rank\":0}", "{\"bootstrap_room\":true,\"dp_rank\":0}",
            "{\"bootstrap_room\":1,\"dp_rank\":2}", "{\"bootstrap_room\":1,\"dp_rank\":-1}",
            "{\"bootstrap_room\":1,\"dp_rank\":null}", "{\"bootstrap_room\":[1],\"dp_rank\":0}"};
        static const char *bad_q[] = {
            "", "nope", "{}", "{\"bootstrap_rooms\":5}", "{\"bootstrap_rooms\":[\"a\"]}",
            "{\"bootstrap_rooms\":[-3]}", "{\"bootstrap_rooms\":[1.25]}", "{\"bootstrap_rooms\":[{}]}",
            "{\"bootstrap_rooms\":[null]}", "{\"bootstrap_rooms\":[18446744073709551615]}"};
        int ok = 1;
        for (i = 0; i < (int)KVX__COUNT(bad_reg); i++)
            if ((st = http(port, "POST", "/register_dp_rank", NULL, bad_reg[i], out, sizeof out)) != 400) {
                printf("  register_dp_rank '%s' -> %d %s\n", bad_reg[i], st, out);
                ok = 0;
            }
        CHECK(ok, "register_dp_rank: %d malformed bodies get 400", (int)KVX__COUNT(bad_reg));
        ok = 1;
        for (i = 0; i < (int)KVX__COUNT(bad_q); i++)
            if ((st = http(port, "POST", "/query_dp_ranks", NULL, bad_q[i], out, sizeof out)) != 400) {
                printf("  query_dp_ranks '%s' -> %d %s\n", bad_q[i], st, out);
                ok = 0;
            }
        CHECK(ok, "query_dp_ranks: %d malformed bodies get 400", (int)KVX__COUNT(bad_q));
    }
    st = http(port, "GET", "/query_dp_ranks", NULL, NULL, out, sizeof out);
    CHECK(st == 405, "query_dp_ranks: GET -> 405 (%d)", st);
    /* hostile: more rooms than KVX_BOOT_MAX_QUERY_ROOMS in one query */
    {
        size_t len = 0;
        len += (size_t)snprintf(body + len, sizeof body - len, "{\"bootstrap_rooms\":[");
        for (i = 0; i <= KVX_BOOT_MAX_QUERY_ROOMS; i++)
            len += (size_t)snprintf(body + len, sizeof body - len, "%s%d", i ? "," : "", i);
        snprintf(body + len, sizeof body - len, "]}");
        st = http(port, "POST", "/query_dp_ranks", NULL, body, out, sizeof out);
        CHECK(st == 400, "query_dp_ranks: %d rooms (over the limit) -> 400 (%d %s)",
              KVX_BOOT_MAX_QUERY_ROOMS + 1, st, out);
    }
    /* bounded table: KVX_BOOT_MAX_DP_ROOMS (8 here); the oldest go first */
    for (i = 0; i < 10; i++) {
        char b2[96];
        snprintf(b2, sizeof b2, "{\"bootstrap_room\":%d,\"dp_rank\":%d}", 500 + i, i & 1);
        http(port, "POST", "/register_dp_rank", NULL, b2, out, sizeof out);
    }
    st = http(port, "POST", "/query_dp_ranks", NULL,
              "{\"bootstrap_rooms\":[1001,1002,500,501,502,503,504,505,506,507,508,509]}", out, sizeof out);
    CHECK(st == 200 && !strcmp(out, "{\"502\":0,\"503\":1,\"504\":0,\"505\":1,\"506\":0,\"507\":1,"
                                    "\"508\":0,\"509\":1}"),
          "register_dp_rank: the table keeps the newest %d rooms: %s", KVX_BOOT_MAX_DP_ROOMS, out);
    kvx_engine_destroy(p0);
    bt_pool_free(&pool);
}

static void test_reg_parse(void) {
    kvx__boot_regn g;
    char why[256];
    const char *base = "{\"rank_ip\":\"1.2.3.4\",\"rank_port\":5,\"attn_dp_size\":2,\"attn_dp_rank\":1";
    char b[512];
    snprintf(b, sizeof b, "%s,\"enable_dsa_cache_layer_split\":true}", base);
    CHECK(!kvx__boot_reg_parse(NULL, b, strlen(b), &g, why, sizeof why) && g.dsa == 1 && g.follow == 1 &&
              g.http_port == -1, "PUT /route: dsa true, no load_balance_method = follow, no http port");
    snprintf(b, sizeof b, "%s,\"load_balance_method\":null,\"prefill_http_port\":8000}", base);
    CHECK(!kvx__boot_reg_parse(NULL, b, strlen(b), &g, why, sizeof why) && g.follow == 0 &&
              g.http_port == 8000, "PUT /route: load_balance_method null is not follow (SGLang's get())");
    snprintf(b, sizeof b, "%s,\"enable_dsa_cache_layer_split\":{}}", base);
    CHECK(kvx__boot_reg_parse(NULL, b, strlen(b), &g, why, sizeof why) && strstr(why, "enable_dsa"),
          "PUT /route: a dsa flag that is an object is refused: %s", why);
    snprintf(b, sizeof b, "{\"rank_ip\":\"1.2.3.4\",\"rank_port\":5,\"attn_dp_size\":1,"
                          "\"system_dp_size\":4,\"system_dp_rank\":3}");
    CHECK(!kvx__boot_reg_parse(NULL, b, strlen(b), &g, why, sizeof why) && g.dp == 4 && g.dp_rank == 3,
          "PUT /route: the system dp rank is the dp group when system_dp_size > 1 (%s)", why);
}

/* With a key, /register_dp_rank wants the same X-Kvx-Auth as PUT /route. */
static void test_auth(void) {
    bt_pool pool;
    kvx_engine *p0;
    char out[512], hdr[128];
    const char *body = "{\"bootstrap_room\":77,\"dp_rank\":0}";
    int port, st;
    bt_pool_init(&pool, 64, 16, 128, "bfloat16");
    setenv("KVX_AUTH_KEY", "0123456789abcdef0123456789abcdef", 1);
    p0 = prefill(&pool, 1, 0, -1, NULL);
    unsetenv("KVX_AUTH_KEY");
    if (!p0) { CHECK(0, "auth: engine starts"); bt_pool_free(&pool); return; }
    port = kvx_boot_engine_port(p0);
    st = http(port, "POST", "/register_dp_rank", NULL, body, out, sizeof out);
    CHECK(st == 403, "auth: /register_dp_rank without X-Kvx-Auth -> 403 (%d %s)", st, out);
    kvx__boot_route_mac(kvx_boot_get(p0), body, strlen(body), (uint64_t)time(NULL), hdr, sizeof hdr);
    st = http(port, "POST", "/register_dp_rank", hdr, body, out, sizeof out);
    CHECK(st == 200, "auth: with the route MAC -> 200 (%d %s)", st, out);
    st = http(port, "POST", "/query_dp_ranks", NULL, "{\"bootstrap_rooms\":[77]}", out, sizeof out);
    CHECK(st == 200 && !strcmp(out, "{\"77\":0}"), "auth: /query_dp_ranks stays open (%d %s)", st, out);
    kvx_engine_destroy(p0);
    bt_pool_free(&pool);
}

#define mk_recv(e, room) bt_recv(e, room, NULL)

#define mk_send bt_send

/* One room served by prefill engine pe[on]: it must be the one that gets
   the room frame, and the decode room succeeds. */
static void one_room(kvx_engine *pe, kvx_engine *de, uint64_t room, const char *what, int recv_first) {
    int32_t pages[2] = {3, 4};
    kvx_sender *s = NULL;
    kvx_receiver *r;
    if (!recv_first) s = mk_send(pe, room);
    r = mk_recv(de, room);
    if (recv_first) s = mk_send(pe, room);
    CHECK(bt_wait_receivers(&r, 1, bt_is_ready, 30) && kvx_receiver_poll(r) == KVX_POLL_WAITING_FOR_INPUT,
          "%s: room %llu: decode found its prefill dp rank (%s)", what, (unsigned long long)room,
          kvx_receiver_error(r));
    kvx_receiver_init(r, pages, 2, -1);
    CHECK(bt_wait_senders(&s, 1, bt_is_ready, 30) && kvx_sender_poll(s) == KVX_POLL_WAITING_FOR_INPUT,
          "%s: room %llu: the expected prefill dp engine saw the room (%s)", what,
          (unsigned long long)room, kvx_sender_error(s));
    kvx_sender_init(s, 2, -1);
    kvx_sender_send(s, pages, 2);
    CHECK(bt_wait_receivers(&r, 1, bt_is_terminal, 30) && kvx_receiver_poll(r) == KVX_POLL_SUCCESS,
          "%s: room %llu: Success (%s)", what, (unsigned long long)room, kvx_receiver_error(r));
    kvx_receiver_destroy(r);
    kvx_sender_destroy(s);
}

static void test_e2e(const char *lbm) {
    bt_pool pp, dp;
    kvx_engine *pe[2], *de;
    bt_engine_opts o;
    char why[KVX_ERROR_MAX], addr[64], what[64];
    int port;
    int follow = !lbm;
    snprintf(what, sizeof what, "dp 2, %s", follow ? "follow_bootstrap_room" : lbm);
    bt_pool_init(&pp, 64, 16, 128, "bfloat16");
    bt_pool_init(&dp, 64, 16, 128, "bfloat16");
    pe[0] = prefill(&pp, 2, 0, -1, lbm);
    if (!pe[0]) { CHECK(0, "%s: engines start", what); return; }
    port = kvx_boot_engine_port(pe[0]);
    pe[1] = prefill(&pp, 2, 1, port, lbm);
    CHECK(pe[1] && wait_ready(port), "%s: both dp ranks registered", what);
    snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
    memset(&o, 0, sizeof o);
    o.addr = addr;
    o.bootstrap_timeout_s = 3;
    de = bt_engine(KVX_ROLE_DECODE, &dp, &o, why, sizeof why);
    if (follow) {
        kvx_sender *bad;
        one_room(pe[1], de, 7, what, 0);  /* 7 % 2 = 1 */
        one_room(pe[0], de, 10, what, 1); /* 10 % 2 = 0 */
        bad = mk_send(pe[0], 9);          /* 9 % 2 = 1: not this engine's */
        CHECK(kvx_sender_poll(bad) == KVX_POLL_FAILED &&
                  strstr(kvx_sender_error(bad), "follow_bootstrap_room conflict"),
              "%s: a sender on the wrong dp rank fails: %s", what, kvx_sender_error(bad));
        kvx_sender_destroy(bad);
    } else {
        kvx_receiver *lost;
        one_room(pe[0], de, 7, what, 0);  /* router chose dp 0 for room 7 */
        one_room(pe[1], de, 10, what, 1); /* dp 1 for room 10, decode asks first */
        one_room(pe[1], de, 11, what, 0);
        lost = mk_recv(de, 12345); /* no prefill registers it */
        CHECK(bt_wait_receivers(&lost, 1, bt_is_terminal, 60) && kvx_receiver_poll(lost) == KVX_POLL_FAILED &&
                  strstr(kvx_receiver_error(lost), "query_dp_ranks") &&
                  strstr(kvx_receiver_error(lost), "register_dp_rank"),
              "%s: a room no prefill registered fails with a sentence: %s", what,
              kvx_receiver_error(lost));
        kvx_receiver_destroy(lost);
    }
    kvx_engine_destroy(de);
    kvx_engine_destroy(pe[1]);
    kvx_engine_destroy(pe[0]);
    bt_pool_free(&pp);
    bt_pool_free(&dp);
}

/* KVX_BOOTSTRAP_SERVER: a rank registers with a server run elsewhere (here
   rank 0 of another engine; SGLang's own in tests/sglang/test_pd.py), and a
   value that is not host:port is refused. The server info is SGLang's
   PrefillServerInfo and nothing more; X-Kvx-Heartbeat announces control
   heartbeats. */
static void test_external_server(void) {
    bt_pool pool;
    kvx_engine *p0, *p1, *bad;
    bt_engine_opts o;
    kvx__buf resp;
    char addr[64], why[KVX_ERROR_MAX], err[200];
    int port, status = 0, refused = 0, hb = 0;
    bt_pool_init(&pool, 64, 16, 128, "bfloat16");
    p0 = prefill(&pool, 2, 0, -1, NULL);
    if (!p0) { CHECK(0, "server: engine starts"); bt_pool_free(&pool); return; }
    port = kvx_boot_engine_port(p0);
    snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
    setenv("KVX_BOOTSTRAP_SERVER", addr, 1);
    memset(&o, 0, sizeof o);
    o.dp_size = 2;
    o.dp_rank = 1;
    p1 = bt_engine(KVX_ROLE_PREFILL, &pool, &o, why, sizeof why);
    unsetenv("KVX_BOOTSTRAP_SERVER");
    CHECK(p1 != NULL, "server: a rank with KVX_BOOTSTRAP_SERVER and no port starts (%s)",
          p1 ? "" : why);
    CHECK(p1 && wait_ready(port), "server: it registered with the server it was given "
          "(GET /route answers 200 once both ranks are there)");
    kvx__buf_init(&resp, NULL);
    if (kvx__boot_http_call("127.0.0.1", port, "GET", "/route?prefill_dp_rank=-1&prefill_cp_rank=-1&"
                            "target_tp_rank=-1&target_pp_rank=-1", NULL, NULL, 0, 10.0, &status, &resp,
                            err, sizeof err, &refused, &hb) != KVX_OK)
        status = 0;
    CHECK(status == 200 && hb == 1 && resp.data && !strstr(resp.data, "kvx_heartbeat"),
          "server: the server info comes with X-Kvx-Heartbeat: control and holds no member "
          "SGLang's PrefillServerInfo lacks (%d, header %d)", status, hb);
    kvx__buf_free(&resp);
    setenv("KVX_BOOTSTRAP_SERVER", "no-port-here", 1);
    bad = bt_engine(KVX_ROLE_PREFILL, &pool, &o, why, sizeof why);
    unsetenv("KVX_BOOTSTRAP_SERVER");
    CHECK(!bad && strstr(why, "KVX_BOOTSTRAP_SERVER") && strstr(why, "host:port"),
          "server: a value that is not host:port is refused: %s", bad ? "(accepted)" : why);
    if (bad) kvx_engine_destroy(bad);
    if (p1) kvx_engine_destroy(p1);
    kvx_engine_destroy(p0);
    bt_pool_free(&pool);
}

int main(void) {
    bt_name = "test_boot_dp";
    signal(SIGPIPE, SIG_IGN);
    test_reg_parse();
    test_routes();
    test_external_server();
    test_auth();
    test_e2e(NULL);
    test_e2e("round_robin");
    return bt_finish();
}
