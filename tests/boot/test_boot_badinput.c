/* test_boot_badinput - hostile input against a live prefill engine while a
   decode engine keeps moving rooms through it: slow and trickling HTTP
   requests (closed at the read deadline, others served meanwhile), oversize
   headers and bodies, garbage, the connection cap, Expect: 100-continue, and
   on the control port unknown frame types, lengths beyond limits, frames
   before hello or in the wrong direction. Each bad connection is closed
   alone; the rooms that depended on it fail with the reason. */
#define KVX_IMPLEMENTATION
#include "boot_test.h"

static bt_pool g_pp, g_dp;
static kvx_engine *g_pre, *g_dec;
static int g_port, g_ctrl;
static uint64_t g_room = 10000;

static void raw_send(int fd, const void *p, size_t n) {
    const char *s = (const char *)p;
    while (n) {
        ssize_t w = send(fd, s, n, MSG_NOSIGNAL);
        if (w <= 0) return;
        s += w;
        n -= (size_t)w;
    }
}

/* One raw request; returns the status code or -1; resp gets the answer. */
static int raw_http(const char *req, size_t len, char *resp, size_t n, double timeout) {
    int fd = bt_connect(g_port), st = -1;
    if (fd < 0) return -1;
    raw_send(fd, req, len);
    bt_wait_closed(fd, timeout, resp, n);
    if (!strncmp(resp, "HTTP/1.1 ", 9)) st = atoi(resp + 9);
    close(fd);
    return st;
}

static int health_ms(void) {
    static const char req[] = "GET /health HTTP/1.1\r\nHost: x\r\n\r\n";
    char resp[512];
    double t0 = bt_now();
    int st = raw_http(req, sizeof req - 1, resp, sizeof resp, 3.0);
    return st == 200 && strstr(resp, "\r\n\r\nOK") ? (int)((bt_now() - t0) * 1000) : -1;
}

/* n rooms between the engines; returns how many succeeded. */
static int rooms(int n) {
    kvx_receiver **r = (kvx_receiver **)calloc((size_t)n, sizeof *r);
    kvx_sender **s = (kvx_sender **)calloc((size_t)n, sizeof *s);
    int i, ok = 0;
    int32_t pages[2] = {3, 4};
    for (i = 0; i < n; i++) {
        kvx_room_desc rd;
        memset(&rd, 0, sizeof rd);
        rd.room = g_room + (uint64_t)i;
        kvx_sender_create(g_pre, &rd, &s[i]);
        kvx_receiver_create(g_dec, &rd, &r[i]);
    }
    bt_wait_receivers(r, n, bt_is_ready, 10);
    for (i = 0; i < n; i++) kvx_receiver_init(r[i], pages, 2, -1);
    bt_wait_senders(s, n, bt_is_ready, 10);
    for (i = 0; i < n; i++)
        if (kvx_sender_init(s[i], 2, -1) == KVX_OK) kvx_sender_send(s[i], pages, 2);
    bt_wait_receivers(r, n, bt_is_terminal, 10);
    for (i = 0; i < n; i++) {
        ok += kvx_receiver_poll(r[i]) == KVX_POLL_SUCCESS;
        kvx_receiver_destroy(r[i]);
        kvx_sender_destroy(s[i]);
    }
    g_room += (uint64_t)n;
    free(r);
    free(s);
    return ok;
}

static void test_slow_clients(void) {
    enum { NSLOW = 30 };
    int slow[NSLOW], idle_ctrl, trickle, i, closed = 0, got408 = 0, worst = 0, healthy = 0, okrooms;
    int trickle_closed = 0, ctrl_closed = 0;
    double t0 = bt_now(), deadline = KVX_BOOT_READ_TIMEOUT_MS / 1000.0, t_closed = 0;
    for (i = 0; i < NSLOW; i++) {
        slow[i] = bt_connect(g_port);
        raw_send(slow[i], "GET /heal", 9);
    }
    trickle = bt_connect(g_port);
    raw_send(trickle, "GET /health HTTP/1.1\r\nX-Slow: ", 30);
    idle_ctrl = bt_connect(g_ctrl);
    /* while they hang, everyone else is served */
    for (i = 0; i < 20; i++) {
        int ms = health_ms();
        if (ms >= 0) healthy++;
        if (ms > worst) worst = ms;
    }
    CHECK(healthy == 20 && worst < 500, "slow clients: 20 health checks answered meanwhile (worst %d ms)", worst);
    okrooms = rooms(100);
    CHECK(okrooms == 100, "slow clients: 100 rooms succeed meanwhile (%d)", okrooms);
    /* the trickler keeps sending a byte every 100 ms: the deadline still holds */
    while (bt_now() - t0 < deadline + 2.0 && !(trickle_closed && ctrl_closed)) {
        char c = 'a';
        struct pollfd pf;
        if (!trickle_closed) {
            if (send(trickle, &c, 1, MSG_NOSIGNAL) != 1) trickle_closed = 1;
            pf.fd = trickle; pf.events = POLLIN; pf.revents = 0;
            if (poll(&pf, 1, 0) > 0) {
                char tmp[256];
                ssize_t r = recv(trickle, tmp, sizeof tmp, MSG_DONTWAIT);
                if (r <= 0 || (r > 0 && !strncmp(tmp, "HTTP/1.1 4", 10))) trickle_closed = 1;
            }
            if (trickle_closed) t_closed = bt_now() - t0;
        }
        if (!ctrl_closed) {
            pf.fd = idle_ctrl; pf.events = POLLIN; pf.revents = 0;
            if (poll(&pf, 1, 0) > 0) ctrl_closed = 1;
        }
        bt_sleep(0.1);
    }
    CHECK(trickle_closed && t_closed > deadline - 0.5 && t_closed < deadline + 1.0,
          "slow clients: a client trickling a byte every 100 ms is cut off at the deadline (%.1f s)",
          t_closed);
    CHECK(ctrl_closed, "slow clients: a control connection that never says hello is closed");
    for (i = 0; i < NSLOW; i++) {
        char got[256];
        if (bt_wait_closed(slow[i], 0.5, got, sizeof got)) closed++;
        if (!strncmp(got, "HTTP/1.1 408", 12)) got408++;
        close(slow[i]);
    }
    CHECK(closed == NSLOW && got408 == NSLOW,
          "slow clients: all %d partial requests closed by the server after %.1f s (%d answered 408)",
          closed, bt_now() - t0, got408);
    close(trickle);
    close(idle_ctrl);
    CHECK(health_ms() >= 0, "slow clients: the server still answers afterwards");
}

static void test_oversize(void) {
    char resp[4096], *big;
    size_t n = (size_t)KVX_BOOT_MAX_HEADER + 4000, fl = 16u << 20;
    int st, fd;
    double t0;
    big = (char *)malloc(fl);
    memcpy(big, "GET /health HTTP/1.1\r\nX-Pad: ", 29);
    memset(big + 29, 'a', fl - 29);
    st = raw_http(big, n, resp, sizeof resp, 3.0);
    CHECK(st == 431, "oversize: %zu header bytes -> %d", n, st);
    /* a 16 MiB header flood: the server reads at most its limit, answers, closes */
    fd = bt_connect(g_port);
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL, 0) | O_NONBLOCK);
    t0 = bt_now();
    {
        size_t off = 0;
        while (off < fl && bt_now() - t0 < 3) {
            ssize_t w = send(fd, big + off, fl - off, MSG_NOSIGNAL);
            if (w > 0) off += (size_t)w;
            else if (w < 0 && errno != EAGAIN) break;
            else bt_sleep(0.001);
        }
        CHECK(off < fl, "oversize: the server stopped reading a 16 MiB header flood (took %zu bytes, kernel buffers included)", off);
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL, 0) & ~O_NONBLOCK);
    CHECK(bt_wait_closed(fd, 3, resp, sizeof resp) && !strncmp(resp, "HTTP/1.1 431", 12),
          "oversize: ... answered 431 and closed (%.12s)", resp);
    close(fd);
    free(big);
    st = raw_http("PUT /route HTTP/1.1\r\nContent-Length: 1000000\r\n\r\n", 48, resp, sizeof resp, 3.0);
    CHECK(st == 413, "oversize: a 1 MB body is refused before it is sent -> %d", st);
    st = raw_http("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 11, resp, sizeof resp, 3.0);
    CHECK(st == 400, "garbage (a TLS hello) -> %d", st);
    st = raw_http("GET /health HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 57, resp, sizeof resp, 3.0);
    CHECK(st == 501, "chunked request -> %d", st);
    CHECK(health_ms() >= 0 && rooms(20) == 20, "oversize: server and rooms unaffected");
}

static void test_continue(void) {
    char body[512], req[1024], resp[1024];
    int fd, n;
    snprintf(body, sizeof body,
             "{\"attn_tp_size\":1,\"attn_tp_rank\":0,\"rank_ip\":\"127.0.0.1\",\"rank_port\":%d,"
             "\"page_size\":16}", g_ctrl);
    n = snprintf(req, sizeof req, "PUT /route HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: %zu\r\n\r\n",
                 strlen(body));
    fd = bt_connect(g_port);
    raw_send(fd, req, (size_t)n);
    {
        struct pollfd pf;
        ssize_t r;
        pf.fd = fd; pf.events = POLLIN;
        r = poll(&pf, 1, 2000) > 0 ? recv(fd, resp, sizeof resp - 1, 0) : -1;
        resp[r > 0 ? r : 0] = 0;
    }
    CHECK(!strncmp(resp, "HTTP/1.1 100 Continue\r\n\r\n", 25), "Expect: 100-continue gets 100 first");
    raw_send(fd, body, strlen(body));
    bt_wait_closed(fd, 3, resp, sizeof resp);
    CHECK(!strncmp(resp, "HTTP/1.1 200", 12), "... then the body is read and answered: %.12s", resp);
    close(fd);
}

static void test_conn_cap(void) {
    int fds[KVX_BOOT_MAX_HTTP_CONNS], extra, i, n = 0;
    char resp[512];
    for (i = 0; i < KVX_BOOT_MAX_HTTP_CONNS; i++) {
        fds[i] = bt_connect(g_port);
        if (fds[i] >= 0) n++;
    }
    bt_sleep(0.2);
    extra = bt_connect(g_port);
    CHECK(n == KVX_BOOT_MAX_HTTP_CONNS && bt_wait_closed(extra, 2, resp, sizeof resp) &&
              !strncmp(resp, "HTTP/1.1 503", 12),
          "connection cap: connection %d beyond %d idle ones is answered 503 at once",
          KVX_BOOT_MAX_HTTP_CONNS + 1, n);
    close(extra);
    for (i = 0; i < KVX_BOOT_MAX_HTTP_CONNS; i++) if (fds[i] >= 0) close(fds[i]);
    bt_sleep(0.2);
    CHECK(health_ms() >= 0, "connection cap: served again once they close");
}

/* ---- control channel ---- */

static void hello(kvx__buf *b, int role) {
    kvx_boot_frame f;
    uint64_t items[3] = {128, 128, 64};
    memset(&f, 0, sizeof f);
    f.type = KVX_BOOT_FRAME_HELLO;
    f.hello.role = (uint16_t)role;
    f.hello.tp_size = f.hello.dp_size = f.hello.pp_size = f.hello.cp_size = 1;
    f.hello.page_size = 16;
    f.hello.num_buffers = 2;
    f.hello.num_aux = 1;
    f.hello.item_lens = items;
    f.hello.aux_item_lens = items + 2;
    f.hello.transport = "bootfake";
    f.hello.transport_len = 8;
    kvx__boot_frame_encode(&f, b);
}

static void room_frame(kvx__buf *b, uint64_t room, uint32_t n) {
    kvx_boot_frame f;
    int32_t *pages = (int32_t *)calloc(n + 1, sizeof *pages);
    uint32_t i;
    for (i = 0; i < n; i++) pages[i] = (int32_t)i;
    memset(&f, 0, sizeof f);
    f.type = KVX_BOOT_FRAME_ROOM;
    f.room = room;
    f.num_pages = n;
    f.pages = pages;
    f.aux_index = -1;
    f.peer_count = 1;
    kvx__boot_frame_encode(&f, b);
    free(pages);
}

/* Connects, optionally says hello (and reads the prefill's), sends bytes,
   and reports whether the prefill closed the connection within 2 s. */
static int ctrl_try(int say_hello, const void *bytes, size_t n, int *hello_ok) {
    int fd = bt_connect(g_ctrl), closed;
    char got[8192];
    if (hello_ok) *hello_ok = 0;
    if (say_hello) {
        kvx__buf h;
        memset(&h, 0, sizeof h);
        hello(&h, KVX_ROLE_DECODE);
        raw_send(fd, h.data, h.len);
        kvx__buf_free(&h);
        {
            struct pollfd pf;
            ssize_t r = 0;
            kvx_boot_frame f;
            size_t used = 0;
            char why[256];
            pf.fd = fd; pf.events = POLLIN;
            if (poll(&pf, 1, 2000) > 0) r = recv(fd, got, sizeof got, 0);
            if (hello_ok && r > 0 &&
                kvx_boot_frame_decode(got, (size_t)r, &f, &used, why, sizeof why) == KVX_OK && used &&
                f.type == KVX_BOOT_FRAME_HELLO && f.hello.role == KVX_ROLE_PREFILL)
                *hello_ok = 1;
        }
    }
    raw_send(fd, bytes, n);
    closed = bt_wait_closed(fd, 2.0, got, sizeof got);
    close(fd);
    return closed;
}

static void test_control(void) {
    uint8_t h[8];
    kvx__buf b, h2;
    int closed, hok;
    kvx_sender *s;
    kvx_room_desc rd;
    char metrics[8192];
    memset(&b, 0, sizeof b);
    kvx__boot_hdr(h, 0, 9);
    CHECK(ctrl_try(0, h, 8, NULL), "control: unknown frame type 9 before hello -> closed");
    hello(&b, KVX_ROLE_DECODE);
    b.data[8] = 'X';
    CHECK(ctrl_try(0, b.data, b.len, NULL), "control: hello with a bad magic -> closed");
    kvx__buf_free(&b);
    memset(&b, 0, sizeof b);
    {
        kvx_boot_frame f;
        memset(&f, 0, sizeof f);
        f.type = KVX_BOOT_FRAME_ABORT;
        f.room = 1;
        kvx__boot_frame_encode(&f, &b);
    }
    CHECK(ctrl_try(0, b.data, b.len, NULL), "control: abort before hello -> closed");
    kvx__buf_free(&b);
    kvx__boot_hdr(h, 0xfffffff0u, KVX_BOOT_FRAME_ROOM);
    closed = ctrl_try(1, h, 8, &hok);
    CHECK(hok && closed, "control: after a good hello (answered by the prefill's), a room frame "
                         "claiming 4 GiB -> closed");
    kvx__boot_hdr(h, 1u << 20, KVX_BOOT_FRAME_STATUS);
    CHECK(ctrl_try(1, h, 8, NULL), "control: a 1 MiB status frame -> closed before the body comes");
    {
        kvx_boot_frame f;
        memset(&b, 0, sizeof b);
        memset(&f, 0, sizeof f);
        f.type = KVX_BOOT_FRAME_STATUS;
        f.room = 1;
        f.state = KVX_POLL_SUCCESS;
        kvx__boot_frame_encode(&f, &b);
        CHECK(ctrl_try(1, b.data, b.len, NULL), "control: a status frame sent to a prefill -> closed");
        kvx__buf_free(&b);
    }
    memset(&b, 0, sizeof b);
    hello(&b, KVX_ROLE_DECODE);
    memset(&h2, 0, sizeof h2);
    hello(&h2, KVX_ROLE_DECODE);
    kvx__buf_put(&b, h2.data, h2.len);
    CHECK(ctrl_try(0, b.data, b.len, NULL), "control: a second hello -> closed");
    kvx__buf_free(&b);
    kvx__buf_free(&h2);

    /* a room that depends on a connection which then misbehaves fails with the reason */
    memset(&rd, 0, sizeof rd);
    rd.room = 900;
    kvx_sender_create(g_pre, &rd, &s);
    {
        int fd = bt_connect(g_ctrl);
        char got[4096];
        memset(&b, 0, sizeof b);
        hello(&b, KVX_ROLE_DECODE);
        room_frame(&b, 900, 4);
        raw_send(fd, b.data, b.len);
        kvx__buf_free(&b);
        bt_wait_senders(&s, 1, bt_is_ready, 5);
        CHECK(kvx_sender_poll(s) == KVX_POLL_WAITING_FOR_INPUT && kvx_boot_room_dst_pages(kvx_boot_get(g_pre),
                                                                                       (kvx_room *)s) == 4,
              "control: a raw decode's room frame readies sender 900");
        kvx__boot_hdr(h, 4, 77);
        raw_send(fd, h, 8);
        CHECK(bt_wait_closed(fd, 2, got, sizeof got), "control: then frame type 77 -> closed");
        close(fd);
        bt_wait_senders(&s, 1, bt_is_terminal, 3);
        CHECK(kvx_sender_poll(s) == KVX_POLL_FAILED &&
                  strstr(kvx_sender_error(s), "lost connection with decode instance 127.0.0.1:") &&
                  strstr(kvx_sender_error(s), "unknown frame type 77"),
              "control: sender 900 fails naming the peer and the reason: %s", kvx_sender_error(s));
        kvx_sender_destroy(s);
    }
    /* a large valid room frame with no sender is kept, then dropped with its connection */
    {
        int fd = bt_connect(g_ctrl);
        char got[256];
        const char *m;
        memset(&b, 0, sizeof b);
        hello(&b, KVX_ROLE_DECODE);
        room_frame(&b, 901, 200000);
        raw_send(fd, b.data, b.len);
        kvx__buf_free(&b);
        bt_sleep(0.3);
        {
            static const char req[] = "GET /metrics HTTP/1.1\r\n\r\n";
            raw_http(req, sizeof req - 1, metrics, sizeof metrics, 3);
        }
        m = strstr(metrics, "\nkvx_boot_pending_rooms ");
        CHECK(m && atoi(m + 24) == 1, "control: a 200000-page room frame waits for its sender (pending %d)",
              m ? atoi(m + 24) : -1);
        close(fd);
        bt_sleep(0.3);
        {
            static const char req[] = "GET /metrics HTTP/1.1\r\n\r\n";
            raw_http(req, sizeof req - 1, metrics, sizeof metrics, 3);
        }
        m = strstr(metrics, "\nkvx_boot_pending_rooms ");
        CHECK(m && atoi(m + 24) == 0, "control: ... and is dropped when its connection closes");
        (void)got;
    }
    CHECK(rooms(100) == 100 && health_ms() >= 0, "control: the real decode engine was never disturbed");
}

int main(void) {
    bt_engine_opts o;
    char why[256];
    bt_name = "test_boot_badinput";
    signal(SIGPIPE, SIG_IGN);
    bt_pool_init(&g_pp, 1024, 16, 128, NULL);
    bt_pool_init(&g_dp, 1024, 16, 128, NULL);
    memset(&o, 0, sizeof o);
    g_pre = bt_engine(KVX_ROLE_PREFILL, &g_pp, &o, why, sizeof why);
    if (!g_pre) { printf("prefill: %s\n", why); return 1; }
    g_port = kvx_boot_engine_port(g_pre);
    g_ctrl = kvx_boot_control_port(kvx_boot_get(g_pre));
    {
        char addr[64];
        snprintf(addr, sizeof addr, "127.0.0.1:%d", g_port);
        o.addr = addr;
        g_dec = bt_engine(KVX_ROLE_DECODE, &g_dp, &o, why, sizeof why);
    }
    if (!g_dec) { printf("decode: %s\n", why); return 1; }
    CHECK(rooms(50) == 50, "baseline: 50 rooms");
    {
        /* a second prefill on the taken bootstrap port: refused with a
           sentence, after its control listener was already made (that
           failure path frees everything: the ASan build checks leaks) */
        bt_engine_opts t;
        kvx_engine *again;
        char want[64];
        memset(&t, 0, sizeof t);
        t.port = g_port;
        again = bt_engine(KVX_ROLE_PREFILL, &g_pp, &t, why, sizeof why);
        snprintf(want, sizeof want, "cannot listen on 127.0.0.1:%d for the bootstrap server", g_port);
        CHECK(!again && strstr(why, want), "a prefill on a taken bootstrap port is refused: %s", why);
        kvx_engine_destroy(again);
    }
    test_oversize();
    test_continue();
    test_control();
    test_conn_cap();
    test_slow_clients();
    CHECK(rooms(100) == 100, "end: 100 rooms still succeed");
    kvx_engine_destroy(g_dec);
    kvx_engine_destroy(g_pre);
    bt_pool_free(&g_pp);
    bt_pool_free(&g_dp);
    return bt_finish();
}
