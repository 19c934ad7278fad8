/* test_boot_codec - the pure parsers of kvx_boot.h: the HTTP request
   parser (complete, partial, every refusal and its status code), query
   integers, and the control frame codec (round trips, partial input, every
   limit, and random corruption that must never read out of bounds). */
#define KVX_IMPLEMENTATION
#include "boot_test.h"

static kvx_result parse(const char *s, kvx_boot_http_request *rq) {
    return kvx_boot_parse_http_request(s, strlen(s), rq);
}

static void test_http(void) {
    kvx_boot_http_request rq;
    char *big;
    size_t i;
    const char *get = "GET /route?prefill_dp_rank=-1&target_tp_rank=3 HTTP/1.1\r\nHost: x\r\n\r\n";
    const char *put = "PUT /route HTTP/1.1\r\ncontent-LENGTH: 7\r\n\r\n{\"a\":1}";
    CHECK(parse(get, &rq) == KVX_OK && rq.complete && rq.method_len == 3 &&
              !memcmp(rq.method, "GET", 3) && rq.path_len == 6 && !memcmp(rq.path, "/route", 6) &&
              rq.query_len == strlen("prefill_dp_rank=-1&target_tp_rank=3") &&
              rq.consumed == strlen(get),
          "http: GET with a query parses (path, query, consumed)");
    CHECK(parse(put, &rq) == KVX_OK && rq.complete && rq.body_len == 7 &&
              !memcmp(rq.body, "{\"a\":1}", 7),
          "http: PUT body read by a case-insensitive Content-Length");
    for (i = 0; i < strlen(put); i++) {
        if (kvx_boot_parse_http_request(put, i, &rq) != KVX_OK || rq.complete) break;
    }
    CHECK(i == strlen(put), "http: every proper prefix of a request is incomplete, not an error");
    CHECK(kvx_boot_parse_http_request(put, strlen(put) - 3, &rq) == KVX_OK && rq.headers_done &&
              !rq.complete,
          "http: headers done, body still coming");
    CHECK(parse("GET /health HTTP/1.0\r\n\r\n", &rq) == KVX_OK && rq.complete && rq.http10,
          "http: HTTP/1.0 accepted");
    CHECK(parse("PUT /route HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n", &rq) ==
                  KVX_OK && rq.expect_continue && !rq.complete,
          "http: Expect: 100-continue noticed");

    big = (char *)malloc(KVX_BOOT_MAX_HEADER + 100);
    memcpy(big, "GET / HTTP/1.1\r\nX-Pad: ", 23);
    memset(big + 23, 'a', KVX_BOOT_MAX_HEADER + 100 - 23);
    CHECK(kvx_boot_parse_http_request(big, KVX_BOOT_MAX_HEADER + 100, &rq) == KVX_ERR_PROTOCOL &&
              rq.status == 431,
          "http: header block over %d bytes -> 431 (%s)", KVX_BOOT_MAX_HEADER, rq.error);
    {
        kvx__buf b;
        memset(&b, 0, sizeof b);
        kvx__buf_printf(&b, "GET / HTTP/1.1\r\n");
        for (i = 0; i < 120; i++) kvx__buf_printf(&b, "X-%zu: y\r\n", i);
        kvx__buf_printf(&b, "\r\n");
        CHECK(kvx_boot_parse_http_request(b.data, b.len, &rq) == KVX_ERR_PROTOCOL && rq.status == 431,
              "http: 120 header lines -> 431");
        kvx__buf_free(&b);
    }
    free(big);
    CHECK(parse("PUT /route HTTP/1.1\r\nContent-Length: 1000000\r\n\r\n", &rq) == KVX_ERR_PROTOCOL &&
              rq.status == 413,
          "http: body over %d bytes -> 413 before it arrives", KVX_BOOT_MAX_BODY);
    CHECK(parse("PUT /route HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", &rq) ==
                  KVX_ERR_PROTOCOL && rq.status == 501,
          "http: chunked body -> 501");
    CHECK(parse("GET / HTTP/2.0\r\n\r\n", &rq) == KVX_ERR_PROTOCOL && rq.status == 505,
          "http: HTTP/2.0 -> 505");
    {
        static const char *bad[] = {
            "\x01\x02garbage\r\n\r\n",
            "GET\r\n\r\n",
            "GET  / HTTP/1.1\r\n\r\n",
            "GET route HTTP/1.1\r\n\r\n",
            "GET /a\x01 HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\n folded: x\r\n\r\n",
            "GET / HTTP/1.1\r\nNoColon\r\n\r\n",
            "GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
            "GET / HTTP/1.1\r\nX: a\x01b\r\n\r\n",
            "GET / HTTP/1.1\r\nContent-Length: 12a\r\n\r\n",
            "GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            "GET / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
            "GET / HTTP/1.1\r\nX: a\rb\r\n\r\n",
            "GET / HTTPS/1.1\r\n\r\n",
            "AVERYVERYLONGMETHODNAME / HTTP/1.1\r\n\r\n",
        };
        int n400 = 0, k;
        for (k = 0; k < (int)(sizeof bad / sizeof bad[0]); k++) {
            kvx_result r = parse(bad[k], &rq);
            if (r == KVX_ERR_PROTOCOL && rq.status >= 400 && rq.status < 600) n400++;
            else printf("  not refused: %d: %s\n", k, bad[k]);
        }
        CHECK(n400 == (int)(sizeof bad / sizeof bad[0]), "http: %d malformed requests refused with 4xx/5xx",
              n400);
    }
    CHECK(parse("\x16\x03\x01garbage-without-end", &rq) == KVX_ERR_PROTOCOL && rq.status == 400,
          "http: a TLS hello is refused at once, without waiting for a header end");
    CHECK(parse("PUT /r HTTP/1.1\r\nExpect: something\r\n\r\n", &rq) == KVX_ERR_PROTOCOL &&
              rq.status == 417,
          "http: unknown Expect -> 417");
}

static void test_query(void) {
    const char *q = "a=1&ab=-22&c=x&d=&e=2147483648&f=-2147483648&g";
    int32_t v = 0;
    size_t n = strlen(q);
    CHECK(kvx_boot_query_int(q, n, "a", &v) == 1 && v == 1, "query: a=1");
    CHECK(kvx_boot_query_int(q, n, "ab", &v) == 1 && v == -22, "query: ab=-22 (not confused with a)");
    CHECK(kvx_boot_query_int(q, n, "c", &v) == -1, "query: c=x is not an integer");
    CHECK(kvx_boot_query_int(q, n, "d", &v) == -1, "query: empty value refused");
    CHECK(kvx_boot_query_int(q, n, "e", &v) == -1, "query: 2^31 overflows");
    CHECK(kvx_boot_query_int(q, n, "f", &v) == 1 && v == INT32_MIN, "query: INT32_MIN ok");
    CHECK(kvx_boot_query_int(q, n, "g", &v) == -1, "query: key without value refused");
    CHECK(kvx_boot_query_int(q, n, "zz", &v) == 0, "query: absent key");
    CHECK(kvx_boot_query_int(NULL, 0, "a", &v) == 0, "query: no query string");
}

static kvx_result dec(const kvx__buf *b, kvx_boot_frame *f, size_t *used, char *why) {
    return kvx_boot_frame_decode(b->data, b->len, f, used, why, 256);
}

/* Encodes frame f; checks it decodes back to the same bytes. */
static void roundtrip(const kvx_boot_frame *f, const char *what, kvx__buf *out) {
    kvx_boot_frame g;
    size_t used = 0, i;
    char why[256];
    int partial_ok = 1;
    memset(out, 0, sizeof *out);
    CHECK(kvx__boot_frame_encode(f, out) == KVX_OK, "frame: %s encodes (%zu bytes)", what, out->len);
    CHECK(dec(out, &g, &used, why) == KVX_OK && used == out->len && g.type == f->type,
          "frame: %s decodes whole (%s)", what, why);
    for (i = 0; i < out->len; i++) {
        size_t u = 1;
        if (kvx_boot_frame_decode(out->data, i, &g, &u, why, sizeof why) != KVX_OK || u != 0)
            partial_ok = 0;
    }
    CHECK(partial_ok, "frame: %s: every prefix is 'need more'", what);
}

static void test_frames(void) {
    kvx_boot_frame f, g;
    kvx__buf b, b2;
    size_t used;
    char why[256];
    int32_t pages[5] = {0, 7, 3, 100000, 2};
    uint64_t items[3] = {4096, 4096, 64}, sitems[2] = {8192, 512};
    int32_t sidx[3] = {4, 0, 77};
    static const char ep[] = "endpoint-bytes";
    uint32_t i;

    memset(&f, 0, sizeof f);
    f.type = KVX_BOOT_FRAME_HELLO;
    f.hello.role = KVX_ROLE_DECODE;
    f.hello.instance = 0x1122334455667788ull;
    f.hello.fingerprint = 0xdeadbeefcafef00dull;
    f.hello.tp_size = 4; f.hello.tp_rank = 3; f.hello.dp_size = 1; f.hello.pp_size = 1; f.hello.cp_size = 1;
    f.hello.page_size = 16; f.hello.dtype_size = 2; f.hello.num_kv_heads = 8;
    f.hello.num_buffers = 2; f.hello.num_aux = 1;
    f.hello.head_begin = 24; f.hello.layer_begin = 31; /* version 3 */
    f.hello.num_state = 2; f.hello.state_type = KVX_STATE_MAMBA; f.hello.state_item_lens = sitems; /* 4 */
    f.hello.item_lens = items; f.hello.aux_item_lens = items + 2;
    f.hello.dtype = "bfloat16"; f.hello.dtype_len = 8;
    f.hello.transport = "tcp"; f.hello.transport_len = 3;
    f.hello.endpoint = ep; f.hello.endpoint_len = sizeof ep - 1;
    roundtrip(&f, "hello", &b);
    dec(&b, &g, &used, why);
    CHECK(g.hello.version == KVX_BOOT_PROTOCOL_VERSION && g.hello.role == KVX_ROLE_DECODE &&
              g.hello.instance == f.hello.instance && g.hello.fingerprint == f.hello.fingerprint &&
              g.hello.tp_rank == 3 && g.hello.num_buffers == 2 && g.hello.num_aux == 1 &&
              g.hello.dtype_len == 8 && !memcmp(g.hello.dtype, "bfloat16", 8) &&
              g.hello.transport_len == 3 && g.hello.endpoint_len == sizeof ep - 1 &&
              !memcmp(g.hello.endpoint, ep, sizeof ep - 1) &&
              kvx__le_r64(g.hello.item_lens_le + 8) == 4096 && kvx__le_r64(g.hello.aux_item_lens_le) == 64 &&
              g.hello.head_begin == 24 && g.hello.layer_begin == 31 &&
              kvx__le_r32((uint8_t *)b.data + 8 + 96) == 24 && kvx__le_r32((uint8_t *)b.data + 8 + 100) == 31 &&
              g.hello.num_state == 2 && g.hello.state_type == KVX_STATE_MAMBA &&
              kvx__le_r64(g.hello.state_item_lens_le) == 8192 && kvx__le_r64(g.hello.state_item_lens_le + 8) == 512,
          "frame: hello fields survive (head_begin at 96, layer_begin at 100, state shape at 104)");
    CHECK(b.len == 8 + 112 + 8 * 5 + 8 + 3 + sizeof ep - 1, "frame: hello size is 8 + 112 + 8*(nb+na+ns) + strings");
    /* hello refusals */
    memcpy(&b2, &b, sizeof b2);
    b.data[8] = 'X';
    CHECK(dec(&b, &g, &used, why) == KVX_ERR_PROTOCOL && strstr(why, "kvx-boot"), "frame: bad magic: %s", why);
    b.data[8] = 'k';
    b.data[16] = 1;
    CHECK(dec(&b, &g, &used, why) == KVX_ERR_PROTOCOL && strstr(why, "version 1, this side 4"),
          "frame: a version-1 peer (no transport messages) is refused: %s", why);
    b.data[16] = 2;
    CHECK(dec(&b, &g, &used, why) == KVX_ERR_PROTOCOL && strstr(why, "version 2, this side 4"),
          "frame: a version-2 peer (no head/layer range) is refused: %s", why);
    b.data[16] = 3;
    CHECK(dec(&b, &g, &used, why) == KVX_ERR_PROTOCOL && strstr(why, "version 3, this side 4"),
          "frame: a version-3 peer (no state buffers) is refused: %s", why);
    {   /* a version-3 hello is 8 bytes shorter: still the version sentence */
        uint8_t v3[8 + 104];
        memcpy(v3, b.data, sizeof v3);
        kvx__le_w32(v3, 104);
        CHECK(kvx_boot_frame_decode(v3, sizeof v3, &g, &used, why, sizeof why) == KVX_ERR_PROTOCOL &&
                  strstr(why, "version 3, this side 4"),
              "frame: a short version-3 hello names both versions: %s", why);
    }
    b.data[16] = 4;
    kvx__le_w32((uint8_t *)b.data + 8 + 104, KVX_MAX_STATE + 1);
    CHECK(dec(&b, &g, &used, why) == KVX_ERR_PROTOCOL && strstr(why, "state buffers"),
          "frame: too many state buffers: %s", why);
    kvx__le_w32((uint8_t *)b.data + 8 + 104, 2);
    kvx__le_w32((uint8_t *)b.data + 8 + 108, 4);
    CHECK(dec(&b, &g, &used, why) == KVX_ERR_PROTOCOL && strstr(why, "of type 4"),
          "frame: unknown state type: %s", why);
    kvx__le_w32((uint8_t *)b.data + 8 + 108, KVX_STATE_MAMBA);
    b.data[18] = 3;
    CHECK(dec(&b, &g, &used, why) == KVX_ERR_PROTOCOL && strstr(why, "role 3"), "frame: role 3: %s", why);
    b.data[18] = 2;
    kvx__le_w32((uint8_t *)b.data + 8 + 100, KVX_MAX_BUFFERS * 64u + 1);
    CHECK(dec(&b, &g, &used, why) == KVX_ERR_PROTOCOL && strstr(why, "layer_begin"),
          "frame: layer_begin over its limit: %s", why);
    kvx__le_w32((uint8_t *)b.data + 8 + 100, 31);
    kvx__le_w32((uint8_t *)b.data + 8 + 80, KVX_MAX_BUFFERS + 1);
    CHECK(dec(&b, &g, &used, why) == KVX_ERR_PROTOCOL && strstr(why, "buffers"), "frame: too many buffers: %s", why);
    kvx__le_w32((uint8_t *)b.data + 8 + 80, 2);
    kvx__le_w32((uint8_t *)b.data + 8 + 92, KVX_BOOT_MAX_ENDPOINT + 1);
    CHECK(dec(&b, &g, &used, why) == KVX_ERR_PROTOCOL, "frame: endpoint over its limit: %s", why);
    kvx__le_w32((uint8_t *)b.data + 8 + 92, sizeof ep);
    CHECK(dec(&b, &g, &used, why) == KVX_ERR_PROTOCOL && strstr(why, "add up"), "frame: sizes that do not add up: %s", why);
    kvx__buf_free(&b);

    memset(&f, 0, sizeof f);
    f.type = KVX_BOOT_FRAME_ROOM;
    f.room = 0x7fffffffffffffffull;
    f.aux_index = 12;
    f.num_pages = 5;
    f.pages = pages;
    f.peer_index = 1;
    f.peer_count = 2;
    f.num_state = 3;
    f.state_idx = sidx;
    roundtrip(&f, "room", &b);
    dec(&b, &g, &used, why);
    for (i = 0; i < 5 && kvx_boot_frame_page(&g, i) == pages[i]; i++) {}
    CHECK(g.room == f.room && g.aux_index == 12 && g.num_pages == 5 && i == 5 && g.peer_index == 1 &&
              g.peer_count == 2 && g.num_state == 3 && kvx_boot_frame_state(&g, 0) == 4 &&
              kvx_boot_frame_state(&g, 2) == 77 && b.len == 8 + 24 + 20 + 12,
          "frame: room fields, pages and state indices survive");
    {
        uint8_t *p = (uint8_t *)b.data;
        kvx__le_w32(p + 8 + 24 + 4, (uint32_t)-5);
        CHECK(dec(&b, &g, &used, why) == KVX_ERR_PROTOCOL && strstr(why, "negative"), "frame: negative page: %s", why);
        kvx__le_w32(p + 8 + 24 + 4, 7);
        kvx__le_w16(p + 8 + 16, 2);
        CHECK(dec(&b, &g, &used, why) == KVX_ERR_PROTOCOL && strstr(why, "peer index"), "frame: peer index 2 of 2: %s", why);
        kvx__le_w16(p + 8 + 16, 1);
        kvx__le_w32(p + 8 + 20, 2);
        CHECK(dec(&b, &g, &used, why) == KVX_ERR_PROTOCOL && strstr(why, "does not hold 5 pages and 2 state"),
              "frame: state count vs length: %s", why);
        kvx__le_w32(p + 8 + 20, KVX_BOOT_MAX_STATE_INDICES + 1);
        CHECK(dec(&b, &g, &used, why) == KVX_ERR_PROTOCOL && strstr(why, "KVX_BOOT_MAX_STATE_INDICES"),
              "frame: state indices over their limit: %s", why);
        kvx__le_w32(p + 8 + 20, 3);
        kvx__le_w32(p + 8 + 24 + 20 + 8, (uint32_t)-1);
        CHECK(dec(&b, &g, &used, why) == KVX_ERR_PROTOCOL && strstr(why, "state index -1 at position 2"),
              "frame: negative state index: %s", why);
        kvx__le_w32(p + 8 + 24 + 20 + 8, 77);
        kvx__le_w32(p + 8 + 8, (uint32_t)-2);
        CHECK(dec(&b, &g, &used, why) == KVX_ERR_PROTOCOL, "frame: aux index -2: %s", why);
        kvx__le_w32(p + 8 + 8, 12);
        kvx__le_w32(p + 8 + 12, 6);
        CHECK(dec(&b, &g, &used, why) == KVX_ERR_PROTOCOL && strstr(why, "does not hold"), "frame: page count vs length: %s", why);
        kvx__le_w32(p + 8 + 12, KVX_MAX_PAGES + 1);
        CHECK(dec(&b, &g, &used, why) == KVX_ERR_PROTOCOL && strstr(why, "KVX_MAX_PAGES"), "frame: pages over KVX_MAX_PAGES: %s", why);
        kvx__le_w32(p + 8 + 12, 5);
    }
    kvx__buf_free(&b);

    memset(&f, 0, sizeof f);
    f.type = KVX_BOOT_FRAME_STATUS;
    f.room = 99;
    f.state = KVX_POLL_FAILED;
    f.result = KVX_ERR_TIMEOUT;
    f.bytes = 123456789012ull;
    f.reason = "it took too long";
    f.reason_len = 16;
    roundtrip(&f, "status", &b);
    dec(&b, &g, &used, why);
    CHECK(g.room == 99 && g.state == 0 && g.result == KVX_ERR_TIMEOUT && g.bytes == f.bytes &&
              g.reason_len == 16 && !memcmp(g.reason, "it took too long", 16),
          "frame: status fields survive");
    kvx__le_w32((uint8_t *)b.data + 8 + 16, 7);
    CHECK(dec(&b, &g, &used, why) == KVX_ERR_PROTOCOL && strstr(why, "state 7"), "frame: status state 7: %s", why);
    kvx__buf_free(&b);

    memset(&f, 0, sizeof f);
    f.type = KVX_BOOT_FRAME_ABORT;
    f.room = 5;
    f.reason = "bye";
    f.reason_len = 3;
    roundtrip(&f, "abort", &b);
    kvx__buf_free(&b);

    /* ping, pong, auth (protocol version 1 extensions) */
    memset(&f, 0, sizeof f);
    f.type = KVX_BOOT_FRAME_PING;
    f.seq = 0x1122334455667788ull;
    roundtrip(&f, "ping", &b);
    dec(&b, &g, &used, why);
    CHECK(g.type == KVX_BOOT_FRAME_PING && g.seq == f.seq && b.len == 16, "frame: ping seq survives");
    kvx__buf_free(&b);
    f.type = KVX_BOOT_FRAME_PONG;
    roundtrip(&f, "pong", &b);
    kvx__le_w32((uint8_t *)b.data, 4);
    b.len = 12;
    CHECK(dec(&b, &g, &used, why) == KVX_ERR_PROTOCOL && strstr(why, "8 expected"), "frame: short pong: %s", why);
    kvx__buf_free(&b);
    {
        uint8_t proof[KVX_BOOT_PROOF], nonce[KVX_BOOT_NONCE];
        for (i = 0; i < KVX_BOOT_PROOF; i++) proof[i] = (uint8_t)(i * 7 + 1);
        for (i = 0; i < KVX_BOOT_NONCE; i++) nonce[i] = (uint8_t)(i * 3 + 2);
        memset(&f, 0, sizeof f);
        f.type = KVX_BOOT_FRAME_AUTH;
        f.proof = proof;
        roundtrip(&f, "auth", &b);
        dec(&b, &g, &used, why);
        CHECK(g.type == KVX_BOOT_FRAME_AUTH && !memcmp(g.proof, proof, KVX_BOOT_PROOF) && b.len == 40,
              "frame: auth proof survives");
        kvx__buf_free(&b);
        f.proof = NULL;
        CHECK(kvx__boot_frame_encode(&f, &b) == KVX_ERR_INVALID_ARGUMENT, "frame: auth without a proof is refused");
        kvx__buf_free(&b);
        /* keyed hellos: decode carries its nonce, prefill its nonce and proof */
        memset(&f, 0, sizeof f);
        f.type = KVX_BOOT_FRAME_HELLO;
        f.hello.role = KVX_ROLE_PREFILL;
        f.hello.flags = KVX_BOOT_HELLO_AUTH;
        f.hello.nonce = nonce;
        f.hello.proof = proof;
        f.hello.transport = "tcp"; f.hello.transport_len = 3;
        roundtrip(&f, "keyed prefill hello", &b);
        dec(&b, &g, &used, why);
        CHECK(g.hello.flags == KVX_BOOT_HELLO_AUTH && g.hello.nonce && g.hello.proof &&
                  !memcmp(g.hello.nonce, nonce, KVX_BOOT_NONCE) &&
                  !memcmp(g.hello.proof, proof, KVX_BOOT_PROOF) && b.len == 8 + 112 + 3 + 16 + 32,
              "frame: keyed prefill hello carries nonce and proof");
        kvx__le_w32((uint8_t *)b.data + 8 + 12, 2);
        CHECK(dec(&b, &g, &used, why) == KVX_ERR_PROTOCOL && strstr(why, "flags"), "frame: hello flag 2: %s", why);
        kvx__le_w32((uint8_t *)b.data + 8 + 12, 0);
        CHECK(dec(&b, &g, &used, why) == KVX_ERR_PROTOCOL && strstr(why, "add up"),
              "frame: a keyed hello without its flag does not add up: %s", why);
        kvx__buf_free(&b);
        f.hello.role = KVX_ROLE_DECODE;
        f.hello.proof = NULL;
        roundtrip(&f, "keyed decode hello", &b);
        dec(&b, &g, &used, why);
        CHECK(g.hello.nonce && !g.hello.proof && b.len == 8 + 112 + 3 + 16, "frame: keyed decode hello carries its nonce");
        kvx__buf_free(&b);
    }

    /* transport message (version 2): opaque bytes, 1..KVX_BOOT_MAX_MESSAGE */
    {
        static const uint8_t msg[5] = {1, 2, 0, 4, 5};
        memset(&f, 0, sizeof f);
        f.type = KVX_BOOT_FRAME_TRANSPORT;
        f.message = msg;
        f.message_len = sizeof msg;
        roundtrip(&f, "transport message", &b);
        dec(&b, &g, &used, why);
        CHECK(g.message_len == 5 && !memcmp(g.message, msg, 5) && b.len == 13,
              "frame: transport message bytes survive (8 + 5 bytes)");
        kvx__le_w32((uint8_t *)b.data, 0);
        b.len = 8;
        CHECK(dec(&b, &g, &used, why) == KVX_ERR_PROTOCOL && strstr(why, "empty"),
              "frame: an empty transport message is refused: %s", why);
        kvx__buf_free(&b);
        f.message_len = 0;
        CHECK(kvx__boot_frame_encode(&f, &b) == KVX_ERR_INVALID_ARGUMENT, "frame: encoding an empty message is refused");
        kvx__buf_free(&b);
        f.message_len = KVX_BOOT_MAX_MESSAGE + 1;
        CHECK(kvx__boot_frame_encode(&f, &b) == KVX_ERR_INVALID_ARGUMENT,
              "frame: encoding a message over KVX_BOOT_MAX_MESSAGE is refused");
        kvx__buf_free(&b);
        CHECK(kvx_boot_peer_send(NULL, NULL, msg, 0, why, sizeof why) == KVX_ERR_INVALID_ARGUMENT &&
                  strstr(why, "KVX_BOOT_MAX_MESSAGE"), "peer_send: a bad length is refused: %s", why);
    }

    /* header-level refusals, decided from the 8-byte header alone */
    {
        uint8_t h[8];
        struct { uint32_t len; uint16_t type, flags; const char *needle; } cases[] = {
            {0, 0, 0, "unknown frame type 0"},
            {12, 9, 0, "unknown frame type 9"},
            {KVX_BOOT_MAX_MESSAGE + 1, KVX_BOOT_FRAME_TRANSPORT, 0, "exceeds"},
            {12, KVX_BOOT_FRAME_PING, 0, "exceeds"},
            {40, KVX_BOOT_FRAME_AUTH, 0, "exceeds"},
            {12, 0xffff, 0, "unknown frame type 65535"},
            {12, KVX_BOOT_FRAME_ABORT, 1, "flags"},
            {0xfffffff0u, KVX_BOOT_FRAME_ROOM, 0, "exceeds"},
            {1u << 20, KVX_BOOT_FRAME_STATUS, 0, "exceeds"},
            {1u << 20, KVX_BOOT_FRAME_ABORT, 0, "exceeds"},
            {(1u << 20) + 200000, KVX_BOOT_FRAME_HELLO, 0, "exceeds"},
        };
        size_t k;
        int good = 0;
        for (k = 0; k < sizeof cases / sizeof cases[0]; k++) {
            kvx__boot_hdr(h, cases[k].len, cases[k].type);
            kvx__le_w16(h + 6, cases[k].flags);
            if (kvx_boot_frame_decode(h, 8, &g, &used, why, sizeof why) == KVX_ERR_PROTOCOL &&
                strstr(why, cases[k].needle))
                good++;
            else
                printf("  case %zu: %s\n", k, why);
        }
        CHECK(good == (int)(sizeof cases / sizeof cases[0]),
              "frame: %d bad headers refused from 8 bytes (unknown types, flags, lengths)", good);
        kvx__boot_hdr(h, 3, KVX_BOOT_FRAME_ABORT);
        {
            uint8_t s[11];
            memcpy(s, h, 8);
            memset(s + 8, 0, 3);
            CHECK(kvx_boot_frame_decode(s, 11, &g, &used, why, sizeof why) == KVX_ERR_PROTOCOL,
                  "frame: abort shorter than its fixed part: %s", why);
        }
    }
    CHECK(kvx__boot_frame_encode(&f, NULL) == KVX_ERR_INVALID_ARGUMENT, "frame: encode refuses NULL output");
    f.type = KVX_BOOT_FRAME_ROOM;
    f.num_pages = 3;
    f.pages = NULL;
    memset(&b, 0, sizeof b);
    CHECK(kvx__boot_frame_encode(&f, &b) == KVX_ERR_INVALID_ARGUMENT, "frame: encode refuses pages == NULL");
    kvx__buf_free(&b);
}

/* Random corruption of valid frames: decoding must never read past the
   buffer (ASan) and whatever it accepts must re-encode byte for byte. */
static void test_mutations(void) {
    uint64_t seed = 12345;
    int iters = bt_quick() ? 20000 : 100000, k, accepted = 0, same = 0;
    int32_t pages[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    kvx__buf base[3];
    kvx_boot_frame f;
    memset(base, 0, sizeof base);
    memset(&f, 0, sizeof f);
    f.type = KVX_BOOT_FRAME_ROOM; f.room = 1; f.num_pages = 8; f.pages = pages; f.peer_count = 1; f.aux_index = -1;
    kvx__boot_frame_encode(&f, &base[0]);
    memset(&f, 0, sizeof f);
    f.type = KVX_BOOT_FRAME_STATUS; f.room = 2; f.state = 4; f.reason = "fine"; f.reason_len = 4;
    kvx__boot_frame_encode(&f, &base[1]);
    memset(&f, 0, sizeof f);
    f.type = KVX_BOOT_FRAME_ABORT; f.room = 3; f.reason = "stop"; f.reason_len = 4;
    kvx__boot_frame_encode(&f, &base[2]);
    for (k = 0; k < iters; k++) {
        const kvx__buf *src = &base[k % 3];
        size_t len = src->len, used;
        uint8_t *m = (uint8_t *)malloc(len); /* exact size: ASan sees any overread */
        kvx_boot_frame g;
        char why[256];
        int flips = 1 + (int)(bt_rand(&seed) % 4), j;
        memcpy(m, src->data, len);
        for (j = 0; j < flips; j++) m[bt_rand(&seed) % len] ^= (uint8_t)(1u << (bt_rand(&seed) % 8));
        if (bt_rand(&seed) % 4 == 0) len = (size_t)(bt_rand(&seed) % (len + 1));
        if (kvx_boot_frame_decode(m, len, &g, &used, why, sizeof why) == KVX_OK && used) {
            kvx__buf re;
            kvx_boot_frame h = g;
            int32_t *pg = NULL;
            uint32_t i;
            accepted++;
            memset(&re, 0, sizeof re);
            if (g.type == KVX_BOOT_FRAME_ROOM) {
                pg = (int32_t *)malloc((g.num_pages + 1) * sizeof *pg);
                for (i = 0; i < g.num_pages; i++) pg[i] = kvx_boot_frame_page(&g, i);
                h.pages = pg;
                h.pages_le = NULL;
            }
            if (g.type != KVX_BOOT_FRAME_HELLO && kvx__boot_frame_encode(&h, &re) == KVX_OK &&
                re.len == used && !memcmp(re.data, m, used))
                same++;
            free(pg);
            kvx__buf_free(&re);
        }
        free(m);
    }
    CHECK(accepted == same, "mutations: %d random corruptions, %d accepted, all re-encode identically",
          iters, accepted);
    for (k = 0; k < 3; k++) kvx__buf_free(&base[k]);
}

int main(void) {
    bt_name = "test_boot_codec";
    test_http();
    test_query();
    test_frames();
    test_mutations();
    return bt_finish();
}
