/* test_boot_trust - third parties against a live prefill engine while a
   legitimate decode engine moves rooms through it (issue 10):
   - a stranger connection aborts rooms: with no sender yet, with a sender
     and no destination yet, and with a claimed destination. Every abort is
     ignored; the rooms succeed (item 12).
   - a stranger reads /rooms from a non-loopback address (no room ids) and
     tries to claim or replace a room's destination (refused with a status
     frame; the room succeeds for its owner) (item 14).
   - a client floods ABORT frames for rooms that do not exist, another
     floods ROOM frames and never reads: the prefill's peak RSS stays
     bounded (printed), the flooder is closed, the decode's rooms succeed
     (item 11).
   - a slowloris holds every HTTP slot (reopening dropped ones) longer than
     heartbeat_interval * max_failure while rooms are in flight: they do not
     fail, and a new room completes (item 13). */
#define KVX_IMPLEMENTATION
#include "boot_test.h"
#include <ifaddrs.h>
#include <net/if.h>

static bt_pool g_pp, g_dp;
static kvx_engine *g_pre, *g_dec;
static int g_port, g_ctrl;
static char g_ip[64] = "127.0.0.1"; /* the address the prefill is reached at */
static char g_remote[64];           /* a non-loopback address of this host, or "" */
static uint64_t g_room = 1000;

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

/* An HTTP GET from ip; the status, the body in out. */
static int http_get(const char *ip, const char *path, char *out, size_t n) {
    char req[256], resp[65536];
    int fd = connect_to(ip, g_port), st = -1;
    const char *body;
    out[0] = 0;
    if (fd < 0) return -1;
    snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", path);
    raw_send(fd, req, strlen(req));
    bt_wait_closed(fd, 5.0, resp, sizeof resp);
    close(fd);
    if (!strncmp(resp, "HTTP/1.1 ", 9)) st = atoi(resp + 9);
    body = strstr(resp, "\r\n\r\n");
    snprintf(out, n, "%s", body ? body + 4 : "");
    return st;
}

static void hello(kvx__buf *b) {
    kvx_boot_frame f;
    uint64_t items[3] = {128, 128, 64};
    memset(&f, 0, sizeof f);
    f.type = KVX_BOOT_FRAME_HELLO;
    f.hello.role = KVX_ROLE_DECODE;
    f.hello.instance = 77;
    f.hello.fingerprint = kvx_layout_fingerprint(&g_dp.layout);
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

static void room_frame(kvx__buf *b, uint64_t room, uint32_t n, uint16_t idx, uint16_t count) {
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
    f.peer_index = idx;
    f.peer_count = count;
    kvx__boot_frame_encode(&f, b);
    free(pages);
}

static void abort_frame(kvx__buf *b, uint64_t room, const char *reason) {
    kvx_boot_frame f;
    memset(&f, 0, sizeof f);
    f.type = KVX_BOOT_FRAME_ABORT;
    f.room = room;
    f.reason = reason;
    f.reason_len = (uint32_t)strlen(reason);
    kvx__boot_frame_encode(&f, b);
}

/* A stranger's control connection: hello sent, the prefill's hello read. */
static int stranger(const char *ip) {
    int fd = connect_to(ip, g_ctrl);
    kvx__buf h;
    char got[8192];
    size_t len = 0;
    double end = bt_now() + 10;
    if (fd < 0) return -1;
    memset(&h, 0, sizeof h);
    hello(&h);
    raw_send(fd, h.data, h.len);
    kvx__buf_free(&h);
    while (bt_now() < end) {
        kvx_boot_frame f;
        size_t used = 0;
        char why[256];
        struct pollfd pf;
        ssize_t r;
        if (kvx_boot_frame_decode(got, len, &f, &used, why, sizeof why) != KVX_OK) break;
        if (used) return f.type == KVX_BOOT_FRAME_HELLO ? fd : (close(fd), -1);
        pf.fd = fd; pf.events = POLLIN; pf.revents = 0;
        if (poll(&pf, 1, 100) <= 0) continue;
        r = recv(fd, got + len, sizeof got - len, 0);
        if (r <= 0) break;
        len += (size_t)r;
    }
    close(fd);
    return -1;
}

static void stranger_send(int fd, kvx__buf *b) {
    raw_send(fd, b->data, b->len);
    kvx__buf_free(b);
    memset(b, 0, sizeof *b);
}

/* Reads frames from fd until a status for room arrives, or with room ==
   UINT64_MAX a pong (returns 1), or the timeout. */
static int read_status(int fd, uint64_t room, double timeout, char *reason, size_t rn) {
    static char buf[1 << 16];
    size_t len = 0;
    double end = bt_now() + timeout;
    reason[0] = 0;
    while (bt_now() < end) {
        struct pollfd pf;
        ssize_t r;
        size_t off = 0;
        for (;;) {
            kvx_boot_frame f;
            size_t used = 0;
            char why[256];
            if (kvx_boot_frame_decode(buf + off, len - off, &f, &used, why, sizeof why) != KVX_OK) return -2;
            if (!used) break;
            off += used;
            if (f.type == KVX_BOOT_FRAME_PONG && room == UINT64_MAX) return 1;
            if (f.type == KVX_BOOT_FRAME_STATUS && f.room == room) {
                snprintf(reason, rn, "%.*s", (int)f.reason_len, f.reason);
                return f.state;
            }
        }
        memmove(buf, buf + off, len - off);
        len -= off;
        pf.fd = fd; pf.events = POLLIN; pf.revents = 0;
        if (poll(&pf, 1, 100) <= 0) continue;
        r = recv(fd, buf + len, sizeof buf - len, 0);
        if (r <= 0) return -3;
        len += (size_t)r;
    }
    return -1;
}

typedef struct flow {
    kvx_sender *s[64];
    kvx_receiver *r[64];
    uint64_t first;
    int n;
} flow;

/* n rooms: senders and receivers created, receivers inited, every sender
   has its destination (WAITING_FOR_INPUT) unless hold_senders. */
static void flow_start(flow *f, int n, int make_senders) {
    int32_t pages[2] = {3, 4};
    int i;
    memset(f, 0, sizeof *f);
    f->n = n;
    f->first = g_room;
    g_room += (uint64_t)n;
    for (i = 0; i < n; i++) {
        kvx_room_desc rd;
        memset(&rd, 0, sizeof rd);
        rd.room = f->first + (uint64_t)i;
        if (make_senders) kvx_sender_create(g_pre, &rd, &f->s[i]);
        kvx_receiver_create(g_dec, &rd, &f->r[i]);
    }
    bt_wait_receivers(f->r, n, bt_is_ready, 30);
    for (i = 0; i < n; i++) kvx_receiver_init(f->r[i], pages, 2, -1);
    if (make_senders) bt_wait_senders(f->s, n, bt_is_ready, 30);
}

static void flow_senders(flow *f) {
    int i;
    for (i = 0; i < f->n; i++)
        if (!f->s[i]) {
            kvx_room_desc rd;
            memset(&rd, 0, sizeof rd);
            rd.room = f->first + (uint64_t)i;
            kvx_sender_create(g_pre, &rd, &f->s[i]);
        }
    bt_wait_senders(f->s, f->n, bt_is_ready, 30);
}

/* Finishes the rooms; returns how many succeeded on both sides. */
static int flow_finish(flow *f, char *err, size_t en) {
    int32_t pages[2] = {3, 4};
    int i, ok = 0;
    err[0] = 0;
    for (i = 0; i < f->n; i++)
        if (kvx_sender_init(f->s[i], 2, -1) == KVX_OK) kvx_sender_send(f->s[i], pages, 2);
    bt_wait_receivers(f->r, f->n, bt_is_terminal, 30);
    bt_wait_senders(f->s, f->n, bt_is_terminal, 30);
    for (i = 0; i < f->n; i++) {
        if (kvx_receiver_poll(f->r[i]) == KVX_POLL_SUCCESS && kvx_sender_poll(f->s[i]) == KVX_POLL_SUCCESS)
            ok++;
        else if (!err[0])
            snprintf(err, en, "room %llu: sender %s [%s], receiver %s [%s]",
                     (unsigned long long)(f->first + (uint64_t)i), kvx_poll_str(kvx_sender_poll(f->s[i])),
                     kvx_sender_error(f->s[i]), kvx_poll_str(kvx_receiver_poll(f->r[i])),
                     kvx_receiver_error(f->r[i]));
        kvx_receiver_destroy(f->r[i]);
        kvx_sender_destroy(f->s[i]);
    }
    return ok;
}

static int rooms(int n) {
    flow f;
    char err[1024];
    int ok;
    flow_start(&f, n, 1);
    ok = flow_finish(&f, err, sizeof err);
    if (ok != n) printf("  %s\n", err);
    return ok;
}

/* ---- item 12: a stranger aborts ---- */
static void test_stranger_abort(void) {
    flow f;
    kvx__buf b;
    char err[1024];
    int fd = stranger(g_ip), ok;
    CHECK(fd >= 0, "abort: a stranger connects and says hello");
    memset(&b, 0, sizeof b);
    /* rooms 0..3: no sender yet; the stranger aborts 0 and 1 before anything */
    flow_start(&f, 4, 0);
    abort_frame(&b, f.first + 0, "stranger: no sender yet");
    abort_frame(&b, f.first + 1, "stranger: no sender yet");
    stranger_send(fd, &b);
    {   /* a ping the prefill answers proves the aborts before it were read */
        kvx_boot_frame p;
        char reason[64];
        memset(&p, 0, sizeof p);
        p.type = KVX_BOOT_FRAME_PING;
        kvx__boot_frame_encode(&p, &b);
        stranger_send(fd, &b);
        CHECK(read_status(fd, UINT64_MAX, 30, reason, sizeof reason) == 1,
              "abort: the stranger's aborts for rooms with no sender were read (pong)");
    }
    flow_senders(&f);
    /* room 2: a sender that already has its destination; room 3 too */
    abort_frame(&b, f.first + 2, "stranger: claimed room");
    abort_frame(&b, f.first + 3, "stranger: claimed room");
    stranger_send(fd, &b);
    {
        kvx_sender *s;
        kvx_room_desc rd;
        char reason[256];
        /* a sender with no destination yet, aborted by the stranger */
        memset(&rd, 0, sizeof rd);
        rd.room = f.first + 50;
        kvx_sender_create(g_pre, &rd, &s);
        abort_frame(&b, rd.room, "stranger: no destination yet");
        stranger_send(fd, &b);
        room_frame(&b, f.first + 2, 2, 0, 1); /* refused (claimed): proves the abort was read */
        stranger_send(fd, &b);
        CHECK(read_status(fd, f.first + 2, 30, reason, sizeof reason) == KVX_POLL_FAILED,
              "abort: the stranger's frames were all read (%s)", reason);
        CHECK(kvx_sender_poll(s) == KVX_POLL_BOOTSTRAPPING,
              "abort: a sender with no destination ignores the stranger's abort (%s %s)",
              kvx_poll_str(kvx_sender_poll(s)), kvx_sender_error(s));
        kvx_sender_destroy(s);
    }
    ok = flow_finish(&f, err, sizeof err);
    CHECK(ok == 4, "abort: rooms the stranger aborted (before the sender, with a claimed "
                   "destination) all succeed: %d/4 %s", ok, err);
    close(fd);
}

/* ---- item 14: /rooms and claims ---- */
static void test_claim(void) {
    flow f;
    kvx__buf b;
    char body[65536], err[512], id[32], reason[512];
    int st, fd, ok;
    flow_start(&f, 2, 1);
    snprintf(id, sizeof id, "%llu", (unsigned long long)f.first);
    st = http_get("127.0.0.1", "/rooms", body, sizeof body);
    CHECK(st == 200 && strstr(body, id), "rooms: a loopback client sees the room ids (%.80s)", body);
    if (g_remote[0]) {
        st = http_get(g_remote, "/rooms", body, sizeof body);
        CHECK(st == 200 && !strstr(body, id) && strstr(body, "\"count\":2"),
              "rooms: a client at %s gets the count, no ids: %s", g_remote, body);
    } else {
        printf("SKIP-PART rooms from a remote address: this host has no non-loopback IPv4 address\n");
    }
    fd = stranger(g_remote[0] ? g_remote : "127.0.0.1");
    memset(&b, 0, sizeof b);
    room_frame(&b, f.first, 7, 0, 1); /* replace the destination */
    stranger_send(fd, &b);
    st = read_status(fd, f.first, 30, reason, sizeof reason);
    CHECK(st == KVX_POLL_FAILED && strstr(reason, "refused"),
          "claim: a second destination from a stranger is refused with a status frame: %s", reason);
    room_frame(&b, f.first + 1, 2, 1, 2); /* join as a second decode rank */
    stranger_send(fd, &b);
    st = read_status(fd, f.first + 1, 30, reason, sizeof reason);
    CHECK(st == KVX_POLL_FAILED && strstr(reason, "refused"),
          "claim: posing as a second decode rank is refused: %s", reason);
    CHECK(kvx_boot_room_dst_pages(kvx_boot_get(g_pre), (kvx_room *)f.s[0]) == 2 &&
              kvx_sender_poll(f.s[0]) == KVX_POLL_WAITING_FOR_INPUT,
          "claim: the room keeps its owner's destination (2 pages)");
    ok = flow_finish(&f, err, sizeof err);
    CHECK(ok == 2, "claim: both rooms succeed for their owner: %d/2 %s", ok, err);
    close(fd);
}

/* ---- item 11: floods ---- */
static long vm_kib(const char *key) {
    char line[256];
    long v = -1;
    FILE *fp = fopen("/proc/self/status", "r");
    if (!fp) return -1;
    while (fgets(line, sizeof line, fp))
        if (!strncmp(line, key, strlen(key))) v = atol(line + strlen(key));
    fclose(fp);
    return v;
}

static int g_flood_fd;
static volatile int g_flood_sent;
static int g_flood_kind;
static uint64_t g_flood_room;

/* Sends `total` bytes of one repeated frame pattern without reading; stops
   when the prefill closes the connection. */
static void *flood_main(void *arg) {
    kvx__buf b;
    int i, fd = g_flood_fd;
    size_t total = (size_t)(uintptr_t)arg, sent = 0;
    char reason[1025];
    memset(reason, 'x', 1024);
    reason[1024] = 0;
    memset(&b, 0, sizeof b);
    for (i = 0; i < 64; i++) {
        if (g_flood_kind == 0) abort_frame(&b, 5000000 + (uint64_t)i, reason);
        else room_frame(&b, g_flood_room, 1, 0, 1);
    }
    while (sent < total) {
        size_t off = 0;
        if (g_flood_kind == 0) /* fresh room ids each round */
            for (i = 0; i < 64; i++) kvx__le_w64((uint8_t *)b.data + (size_t)i * (b.len / 64) + 8, 5000000 + sent + (size_t)i);
        while (off < b.len) {
            ssize_t w = send(fd, b.data + off, b.len - off, MSG_NOSIGNAL);
            if (w <= 0) goto out;
            off += (size_t)w;
        }
        sent += b.len;
    }
out:
    g_flood_sent = (int)(sent >> 20);
    kvx__buf_free(&b);
    return NULL;
}

static void test_floods(void) {
    pthread_t th;
    flow f;
    char err[1024], got[256];
    long hwm0, hwm1, bound_mib = 64;
    int fd, closed, ok;
    size_t abort_bytes = bt_quick() ? (48u << 20) : (96u << 20);
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
    bound_mib = 320; /* shadow memory and quarantine count in RSS */
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
    bound_mib = 320;
#endif
#endif
    flow_start(&f, 8, 1); /* legitimate rooms in flight throughout */
    hwm0 = vm_kib("VmHWM:");
    /* 1: ABORT frames with 1 KiB reasons for rooms that do not exist */
    fd = stranger(g_ip);
    g_flood_fd = fd;
    g_flood_kind = 0;
    pthread_create(&th, NULL, flood_main, (void *)(uintptr_t)abort_bytes);
    pthread_join(th, NULL);
    {
        kvx__buf b;
        char reason[256];
        memset(&b, 0, sizeof b);
        room_frame(&b, 4999999, 1, 0, 1);
        stranger_send(fd, &b);
        /* the prefill answers nothing for a pending room: ask with a claimed one */
        room_frame(&b, f.first, 1, 0, 1);
        stranger_send(fd, &b);
        CHECK(read_status(fd, f.first, 60, reason, sizeof reason) == KVX_POLL_FAILED,
              "flood: the prefill read all %d MiB of abort frames", g_flood_sent);
    }
    close(fd);
    /* 2: ROOM frames for a claimed room, answered with Failed, never read */
    fd = stranger(g_ip);
    g_flood_fd = fd;
    g_flood_kind = 1;
    g_flood_room = f.first;
    pthread_create(&th, NULL, flood_main, (void *)(uintptr_t)(24u << 20));
    pthread_join(th, NULL);
    closed = bt_wait_closed(fd, 30, got, sizeof got);
    close(fd);
    hwm1 = vm_kib("VmHWM:");
    printf("  prefill peak RSS (VmHWM): %ld MiB before the floods, %ld MiB after "
           "(growth %ld MiB; %zu MiB of aborts, %d MiB of room frames sent)\n",
           hwm0 >> 10, hwm1 >> 10, (hwm1 - hwm0) >> 10, abort_bytes >> 20, g_flood_sent);
    CHECK(closed, "flood: the client that never reads is closed once its answers pass the budget "
                  "(%d MiB of room frames sent)", g_flood_sent);
    CHECK(hwm0 > 0 && hwm1 - hwm0 < bound_mib * 1024,
          "flood: peak RSS grew %ld MiB (bound %ld MiB)", (hwm1 - hwm0) >> 10, bound_mib);
    ok = flow_finish(&f, err, sizeof err);
    CHECK(ok == 8, "flood: the decode's rooms in flight meanwhile succeed: %d/8 %s", ok, err);
    CHECK(rooms(20) == 20, "flood: new rooms succeed afterwards");
}

/* ---- item 13: slowloris ---- */
static void test_slowloris(void) {
    enum { N = KVX_BOOT_MAX_HTTP_CONNS + 8 };
    static int fds[N];
    flow f, g;
    char err[1024], body[512];
    double t0, hold = 4.5; /* longer than heartbeat 1.0 s x 3 */
    int i, busy = 0, ok, reopened = 0;
    flow_start(&f, 8, 1);
    for (i = 0; i < N; i++) {
        fds[i] = connect_to(g_ip, g_port);
        if (fds[i] >= 0) raw_send(fds[i], "GET /heal", 9);
    }
    t0 = bt_now();
    while (bt_now() - t0 < hold) {
        static struct pollfd pf[N];
        for (i = 0; i < N; i++) {
            pf[i].fd = fds[i]; /* negative: ignored by poll */
            pf[i].events = POLLIN;
            pf[i].revents = 0;
        }
        /* wakes as soon as the server answers or drops a held slot */
        if (poll(pf, N, 50) > 0)
            for (i = 0; i < N; i++) /* reopen what the server dropped */
                if (fds[i] >= 0 && pf[i].revents) {
                    close(fds[i]);
                    fds[i] = connect_to(g_ip, g_port);
                    if (fds[i] >= 0) raw_send(fds[i], "GET /heal", 9);
                    reopened++;
                }
        if (!busy && http_get(g_ip, "/health", body, sizeof body) == 503) busy = 1;
    }
    CHECK(busy, "slowloris: every HTTP slot is held (GET /health answers 503) for %.1f s "
                "(heartbeat %.1f s x %d)", hold, 1.0, 3);
    for (i = 0; i < f.n; i++)
        if (kvx_receiver_poll(f.r[i]) == KVX_POLL_FAILED) break;
    CHECK(i == f.n, "slowloris: no room in flight failed meanwhile%s%s", i < f.n ? ": " : "",
          i < f.n ? kvx_receiver_error(f.r[i]) : "");
    flow_start(&g, 2, 1);
    ok = flow_finish(&f, err, sizeof err);
    CHECK(ok == 8, "slowloris: the rooms in flight succeed: %d/8 %s", ok, err);
    ok = flow_finish(&g, err, sizeof err);
    CHECK(ok == 2, "slowloris: new rooms complete while the slots are held: %d/2 %s", ok, err);
    for (i = 0; i < N; i++) if (fds[i] >= 0) close(fds[i]);
    (void)reopened;
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

static kvx_engine *mk(kvx_role role, const char *addr, char *why, size_t wl) {
    kvx_engine_desc d;
    kvx_engine *e = NULL;
    memset(&d, 0, sizeof d);
    d.role = role;
    d.transport = "bootfake";
    d.layout = role == KVX_ROLE_PREFILL ? g_pp.layout : g_dp.layout;
    d.logger.func = bt_log;
    d.logger.level = getenv("KVX_TEST_VERBOSE") ? KVX_LOG_DEBUG : KVX_LOG_WARN;
    d.boot.host = g_remote[0] ? "0.0.0.0" : "127.0.0.1";
    d.boot.port = -1;
    d.boot.heartbeat_interval_s = 1.0; /* x 3: a TSan build under a flood answers late */
    d.boot.heartbeat_max_failure = 3;
    d.bootstrap_addr = addr;
    d.poll_interval_us = 2000;
    kvx_boot_register();
    if (kvx_engine_create(&d, &e, why, wl) != KVX_OK) return NULL;
    return e;
}

int main(void) {
    char why[256], addr[96];
    bt_name = "test_boot_trust";
    signal(SIGPIPE, SIG_IGN);
    unsetenv("KVX_HEARTBEAT_INTERVAL");
    unsetenv("KVX_HEARTBEAT_MAX_FAILURE");
    find_remote();
    bt_pool_init(&g_pp, 1024, 16, 128, NULL);
    bt_pool_init(&g_dp, 1024, 16, 128, NULL);
    g_pre = mk(KVX_ROLE_PREFILL, NULL, why, sizeof why);
    if (!g_pre) { printf("prefill: %s\n", why); return 1; }
    g_port = kvx_boot_engine_port(g_pre);
    g_ctrl = kvx_boot_control_port(kvx_boot_get(g_pre));
    if (g_remote[0]) snprintf(g_ip, sizeof g_ip, "%s", g_remote);
    snprintf(addr, sizeof addr, "%s:%d", g_ip, g_port);
    g_dec = mk(KVX_ROLE_DECODE, addr, why, sizeof why);
    if (!g_dec) { printf("decode: %s\n", why); return 1; }
    CHECK(rooms(20) == 20, "baseline: 20 rooms (prefill at %s)", addr);
    test_stranger_abort();
    test_claim();
    test_floods();
    test_slowloris();
    CHECK(rooms(20) == 20, "end: 20 rooms still succeed");
    kvx_engine_destroy(g_dec);
    kvx_engine_destroy(g_pre);
    bt_pool_free(&g_pp);
    bt_pool_free(&g_dp);
    return bt_finish();
}
