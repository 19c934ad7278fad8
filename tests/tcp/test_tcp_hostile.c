/* test_tcp_hostile - a peer that speaks the tcp wire format by hand (its
   own little-endian encoder, not the library's) against a real decode
   engine. Whatever it sends, no byte lands outside the pages and aux slot a
   room asked for:

   - a wrong token, a wrong layout fingerprint, garbage instead of a HELLO:
     connection refused with ERROR
   - a frame for an unknown room, or for a room that already finished:
     ERROR and the connection closes; other rooms are untouched
   - a segment outside the room's pages, straddling out of them, not whole
     pages, naming a buffer that does not exist, the same page twice, aux
     rows into another slot or into a room without a slot, lengths that do
     not add up, a length meant to overflow: the room fails with a sentence
     saying which, ERROR, the connection closes
   - head slices (ROWS segments): rows that are not whole heads, past the
     row, not whole pages of rows, the same head twice (also under a whole
     page), with the AUX flag, outside the room: refused with a sentence; a
     room delivered as head slices by hand: Success, every head in place
   - a frame cut in the middle and the connection reset: that room fails
   - a correct transfer by hand: Success, every byte, and an ACK with the
     byte count; the same from tests/tcp/tcp_frames.py (Python)
   - state rows (STATE segments, HYBRID STATE): a room delivered by hand
     succeeds only once its state rows arrived, every row in place; a
     state segment naming a buffer >= num_state, outside the state buffer,
     a row the room did not ask for, a row twice, into a room without
     state indices, with the AUX flag: refused with a sentence
   - random frames: nothing crashes, no canary page changes */
#define KVX_IMPLEMENTATION
#include "tcp_test.h"

#define ITEM 4096u /* tiny model: 2 heads x 64 x 2 bytes x 16 tokens */
#define NB 8u
#define POOL 64u
#define CANARY_FIRST 48u /* pages 48..63 are in no room */
#define SITEM0 512u     /* state buffer 0's rows (Mamba-like: conv) */
#define SITEM1 128u     /* state buffer 1's rows */
#define SROWS 16u       /* state rows 12..15 are in no room */

static ex_pool dpool, spool;
static kvx_engine *de, *pe;
static kvx_tcp_endpoint ep;
static uint64_t fingerprint;
static char bootaddr[64];

static void w32(uint8_t *p, uint32_t v) { int i; for (i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i)); }
static void w64(uint8_t *p, uint64_t v) { int i; for (i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i)); }
static uint32_t r32(const uint8_t *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24; }
static uint64_t r64(const uint8_t *p) { return (uint64_t)r32(p) | (uint64_t)r32(p + 4) << 32; }

static void hdr(uint8_t *b, int type, int count, uint64_t room, uint64_t body) {
    memcpy(b, "KVXT", 4);
    b[4] = KVX_TCP_PROTOCOL_VERSION;
    b[5] = (uint8_t)type;
    b[6] = (uint8_t)count;
    b[7] = (uint8_t)(count >> 8);
    w64(b + 8, room);
    w64(b + 16, body);
    w32(b + 24, 0);
    w32(b + 28, 0);
}

static void seg(uint8_t *b, uint32_t buffer, uint32_t flags, uint64_t off, uint64_t len) {
    w32(b, buffer);
    w32(b + 4, flags);
    w64(b + 8, off);
    w64(b + 16, len);
    w64(b + 24, 0); /* row_len: whole pages */
}

/* A head slice: length / row_len rows of row_len bytes from dst_offset at
   the receiver's row pitch (WIRE FORMAT, ROWS). */
static void segr(uint8_t *b, uint32_t buffer, uint32_t flags, uint64_t off, uint64_t len,
                 uint64_t row_len) {
    seg(b, buffer, flags | KVX_TCP_SEG_ROWS, off, len);
    w64(b + 24, row_len);
}

static int send_all(int fd, const void *p, size_t n) {
    const char *c = (const char *)p;
    while (n) {
        ssize_t k = send(fd, c, n, MSG_NOSIGNAL);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return -1;
        c += k;
        n -= (size_t)k;
    }
    return 0;
}

static int raw_connect(void) {
    struct sockaddr_in a;
    struct timeval tv = {5, 0};
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)ep.port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof a)) { close(fd); return -1; }
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    return fd;
}

/* HELLO (wire version 4, no key): token with its first byte xor tweak. */
static int hello(int fd, uint8_t tweak, uint64_t fp) {
    uint8_t b[96];
    memset(b, 0, sizeof b);
    hdr(b, 1, 0, 0, 64);
    memcpy(b + 32, ep.token, 16);
    b[32] ^= tweak;
    w64(b + 48, 0x1234);
    w64(b + 56, fp);
    w32(b + 64, 1u << 16);
    return send_all(fd, b, sizeof b);
}

static int good_conn(void) {
    int fd = raw_connect();
    if (fd >= 0 && hello(fd, 0, fingerprint)) { close(fd); return -1; }
    return fd;
}

/* Reads what the decode side sends until it closes: 1 closed, 0 not within
   timeout. The first ERROR reason goes to err; an ACK's byte count to *ack. */
static int wait_closed(int fd, double timeout, char *err, size_t n, uint64_t *ack) {
    uint8_t buf[8192];
    size_t len = 0;
    double end = tt_now() + timeout;
    if (err) err[0] = 0;
    for (;;) {
        struct pollfd pf;
        ssize_t k;
        int ms = (int)((end - tt_now()) * 1000);
        if (ms <= 0) return 0;
        pf.fd = fd;
        pf.events = POLLIN;
        if (poll(&pf, 1, ms) <= 0) continue;
        k = recv(fd, buf + len, sizeof buf - len, 0);
        if (k <= 0) return 1;
        len += (size_t)k;
        while (len >= 32) {
            uint64_t body = r64(buf + 16);
            if (len < 32 + body) break;
            if (buf[5] == 4 && err && !err[0]) {
                uint32_t rl = r32(buf + 36);
                snprintf(err, n, "%.*s", (int)rl, (const char *)buf + 40);
            }
            if (buf[5] == 3 && ack) *ack = r64(buf + 32);
            memmove(buf, buf + 32 + body, len - 32 - (size_t)body);
            len -= 32 + (size_t)body;
        }
    }
}

/* A receiver of room `room` on pages first..first+3 (reversed: scattered
   order) and state rows sidx[0..ns), in TRANSFERRING. */
static kvx_receiver *room_ready_state(uint64_t room, uint32_t first, int32_t aux, int32_t *pages,
                                      const int32_t *sidx, uint32_t ns) {
    kvx_room_desc rd;
    kvx_receiver *r;
    int i;
    memset(&rd, 0, sizeof rd);
    rd.room = room;
    for (i = 0; i < 4; i++) pages[i] = (int32_t)(first + 3 - (uint32_t)i);
    if (kvx_receiver_create(de, &rd, &r) != KVX_OK) return NULL;
    if (!tt_wait_ready_r(r, 10) || kvx_receiver_init_state(r, pages, 4, aux, sidx, ns) != KVX_OK) {
        printf("  room %llu not ready: %s\n", (unsigned long long)room, kvx_receiver_error(r));
    }
    return r;
}

static kvx_receiver *room_ready(uint64_t room, uint32_t first, int32_t aux, int32_t *pages) {
    return room_ready_state(room, first, aux, pages, NULL, 0);
}

static uint8_t *canary_copy(void) {
    uint8_t *c = (uint8_t *)malloc((size_t)NB * (POOL - CANARY_FIRST) * ITEM + 2 * 64 * 8 +
                                   (size_t)(SITEM0 + SITEM1) * 4);
    uint32_t b;
    size_t off = 0;
    for (b = 0; b < NB; b++) {
        memcpy(c + off, (char *)dpool.bufs[b].base + (size_t)CANARY_FIRST * ITEM,
               (size_t)(POOL - CANARY_FIRST) * ITEM);
        off += (size_t)(POOL - CANARY_FIRST) * ITEM;
    }
    memcpy(c + off, (char *)dpool.aux[0].base + 6 * 64, 64); /* slots 6, 7: never given */
    memcpy(c + off + 64, (char *)dpool.aux[1].base + 6 * 8, 16);
    memcpy(c + off + 80, (char *)dpool.state[0].base + 12 * SITEM0, 4 * SITEM0);
    memcpy(c + off + 80 + 4 * SITEM0, (char *)dpool.state[1].base + 12 * SITEM1, 4 * SITEM1);
    return c;
}

static int canary_same(const uint8_t *c) {
    uint8_t *now = canary_copy();
    size_t n = (size_t)NB * (POOL - CANARY_FIRST) * ITEM + 80 + (size_t)(SITEM0 + SITEM1) * 4;
    int same = memcmp(c, now, n) == 0;
    free(now);
    return same;
}

/* Sends one DATA frame (descriptors + payload of `payload` bytes of 0xEE)
   and checks that the room failed with `expect` and the connection closed. */
static void bad_frame(const char *label, uint64_t room, const uint8_t *descs, int count,
                      uint64_t payload, kvx_receiver *r, const char *expect) {
    uint8_t h[32];
    uint8_t *body;
    char err[512];
    int fd = good_conn(), closed;
    hdr(h, 2, count, room, (uint64_t)count * KVX_TCP_SEGMENT_BYTES + payload);
    body = (uint8_t *)malloc((size_t)payload + 1);
    memset(body, 0xEE, (size_t)payload);
    send_all(fd, h, 32);
    send_all(fd, descs, (size_t)count * KVX_TCP_SEGMENT_BYTES);
    send_all(fd, body, (size_t)payload); /* may fail: the decode side closes first */
    closed = wait_closed(fd, 5, err, sizeof err, NULL);
    CHECK(closed, "%s: the connection was closed", label);
    CHECK(err[0] != 0, "%s: ERROR frame: %s", label, err);
    if (r) {
        CHECK(tt_wait_r(r, 5) == KVX_POLL_FAILED, "%s: the room failed", label);
        CHECK(kvx_receiver_result(r) == KVX_ERR_PROTOCOL || kvx_receiver_result(r) == KVX_ERR_OUT_OF_RANGE,
              "%s: result %s", label, kvx_result_str(kvx_receiver_result(r)));
        CHECK_STR(kvx_receiver_error(r), expect);
        CHECK_STR(kvx_receiver_error(r), "127.0.0.1");
    } else {
        CHECK_STR(err, expect);
    }
    close(fd);
    free(body);
}

static void test_refused(void) {
    char err[512];
    kvx_tcp_stats st;
    uint8_t junk[64];
    int fd = raw_connect();
    CHECK(fd >= 0 && hello(fd, 1, fingerprint) == 0, "connected with a wrong token");
    CHECK(wait_closed(fd, 5, err, sizeof err, NULL), "wrong token: closed");
    CHECK_STR(err, "wrong token");
    close(fd);
    fd = raw_connect();
    hello(fd, 0, fingerprint ^ 0x10);
    CHECK(wait_closed(fd, 5, err, sizeof err, NULL), "wrong fingerprint: closed");
    CHECK_STR(err, "layout fingerprint");
    close(fd);
    fd = raw_connect(); /* a wire version 2 peer (32-byte segments need 3) */
    {
        uint8_t b[96];
        memset(b, 0, sizeof b);
        hdr(b, 1, 0, 0, 64);
        b[4] = 2;
        memcpy(b + 32, ep.token, 16);
        w64(b + 56, fingerprint);
        send_all(fd, b, sizeof b);
    }
    CHECK(wait_closed(fd, 5, err, sizeof err, NULL), "wire version 2: closed");
    CHECK_STR(err, "protocol version 2, this side speaks 4");
    close(fd);
    fd = raw_connect();
    memset(junk, 'G', sizeof junk);
    send_all(fd, junk, sizeof junk);
    CHECK(wait_closed(fd, 5, err, sizeof err, NULL), "garbage instead of HELLO: closed");
    CHECK_STR(err, "bad magic");
    close(fd);
    kvx_tcp_stats_get(de, &st);
    CHECK(st.conns_refused >= 3, "%llu connections refused", (unsigned long long)st.conns_refused);
}

static void test_bad_segments(void) {
    uint8_t d[4 * KVX_TCP_SEGMENT_BYTES];
    int32_t pages[4];
    kvx_receiver *r;
    kvx_receiver *bystander = room_ready(900, 40, 5, pages);
    uint64_t room = 500;
    /* unknown room: the connection closes, nothing else changes */
    seg(d, 0, 0, 0, ITEM);
    bad_frame("unknown room", 424242, d, 1, ITEM, NULL, "not receiving");
    /* outside: a canary page */
    r = room_ready(++room, 0, 1, pages);
    seg(d, 0, 0, (uint64_t)50 * ITEM, ITEM);
    bad_frame("outside page", room, d, 1, ITEM, r, "not one of the 4 pages");
    kvx_receiver_destroy(r);
    /* straddling out of the room's pages */
    r = room_ready(++room, 4, -1, pages);
    seg(d, 3, 0, (uint64_t)7 * ITEM, 2 * ITEM);
    bad_frame("straddle", room, d, 1, 2 * ITEM, r, "page 8 of KV buffer 3");
    kvx_receiver_destroy(r);
    r = room_ready(++room, 8, -1, pages);
    seg(d, 0, 0, (uint64_t)8 * ITEM + 16, ITEM);
    bad_frame("not whole pages", room, d, 1, ITEM, r, "not whole pages");
    kvx_receiver_destroy(r);
    r = room_ready(++room, 12, -1, pages);
    seg(d, NB, 0, (uint64_t)12 * ITEM, ITEM);
    bad_frame("no such buffer", room, d, 1, ITEM, r, "names KV buffer 8 of 8");
    kvx_receiver_destroy(r);
    r = room_ready(++room, 16, -1, pages);
    seg(d, 2, 0, (uint64_t)17 * ITEM, ITEM);
    seg(d + KVX_TCP_SEGMENT_BYTES, 2, 0, (uint64_t)16 * ITEM, 2 * ITEM);
    bad_frame("same page twice", room, d, 2, 3 * ITEM, r, "arrived twice");
    kvx_receiver_destroy(r);
    r = room_ready(++room, 20, 2, pages);
    seg(d, 0, KVX_TCP_SEG_AUX, 3 * 64, 64);
    bad_frame("aux into another slot", room, d, 1, 64, r, "aux slot 2");
    kvx_receiver_destroy(r);
    r = room_ready(++room, 24, -1, pages);
    seg(d, 1, KVX_TCP_SEG_AUX, 0, 8);
    bad_frame("aux without a slot", room, d, 1, 8, r, "gave no aux slot");
    kvx_receiver_destroy(r);
    r = room_ready(++room, 28, -1, pages);
    seg(d, 0, 0, (uint64_t)28 * ITEM, ITEM);
    bad_frame("lengths do not add up", room, d, 1, 2 * ITEM, r, "add up");
    kvx_receiver_destroy(r);
    r = room_ready(++room, 32, -1, pages);
    seg(d, 0, 0, (uint64_t)32 * ITEM, 1ull << 62);
    bad_frame("overflowing length", room, d, 1, ITEM, r, "not one of the 4 pages");
    kvx_receiver_destroy(r);
    r = room_ready(++room, 36, -1, pages);
    seg(d, 0, 8, (uint64_t)36 * ITEM, ITEM);
    bad_frame("unknown flags", room, d, 1, ITEM, r, "unknown flags");
    kvx_receiver_destroy(r);
    CHECK(kvx_receiver_poll(bystander) == KVX_POLL_TRANSFERRING,
          "a room nobody attacked is still waiting (%s)", kvx_poll_str(kvx_receiver_poll(bystander)));
    kvx_receiver_destroy(bystander);
}

/* A frame cut in the middle, then a reset: the room fails, naming the peer. */
#define HB 128u   /* bytes of one head in one token row (tiny: 64 x 2 bytes) */
#define PITCH 256u /* bytes of a token row: 2 heads */

static uint8_t rows_byte(uint32_t b, uint32_t h, uint32_t row, uint32_t j) {
    return (uint8_t)(b * 7 + h * 31 + row * 3 + j);
}

/* A room delivered as head slices (each buffer's head 1, then head 0, of
   pages 0..3 as one ROWS segment of 64 rows), then the refusals. */
static void test_rows(void) {
    int32_t pages[4];
    uint8_t d[2 * KVX_TCP_SEGMENT_BYTES], h[32];
    uint8_t *payload = (uint8_t *)malloc((size_t)64 * HB);
    kvx_receiver *r = room_ready(800, 0, -1, pages);
    uint32_t b, hd, k, j, t, bad = 0;
    int fd = good_conn();
    for (hd = 2; hd-- > 0;)
        for (b = 0; b < NB; b++) {
            for (k = 0; k < 64; k++)
                for (j = 0; j < HB; j++) payload[k * HB + j] = rows_byte(b, hd, k, j);
            segr(d, b, 0, hd * HB, (uint64_t)64 * HB, HB);
            hdr(h, 2, 1, 800, KVX_TCP_SEGMENT_BYTES + (uint64_t)64 * HB);
            send_all(fd, h, 32);
            send_all(fd, d, KVX_TCP_SEGMENT_BYTES);
            send_all(fd, payload, (size_t)64 * HB);
        }
    CHECK(tt_wait_r(r, 10) == KVX_POLL_SUCCESS, "a room sent as head slices: Success (%s)",
          kvx_receiver_error(r));
    for (b = 0; b < NB; b++)
        for (t = 0; t < 64; t++)
            for (hd = 0; hd < 2; hd++)
                for (j = 0; j < HB; j++)
                    bad += ((uint8_t *)dpool.bufs[b].base)[(size_t)t * PITCH + hd * HB + j] !=
                           rows_byte(b, hd, t, j);
    CHECK(bad == 0, "every head of every token row where the slices said (%u bytes wrong)", bad);
    kvx_receiver_destroy(r);
    close(fd);
    free(payload);
    r = room_ready(801, 4, -1, pages);
    segr(d, 0, 0, (uint64_t)4 * ITEM, 100 * 16, 100);
    bad_frame("rows not whole heads", 801, d, 1, 100 * 16, r, "not whole heads");
    kvx_receiver_destroy(r);
    r = room_ready(802, 8, -1, pages);
    segr(d, 0, 0, (uint64_t)8 * ITEM + HB, PITCH * 16, PITCH);
    bad_frame("head slice past the row", 802, d, 1, PITCH * 16, r, "not whole heads");
    kvx_receiver_destroy(r);
    r = room_ready(803, 12, -1, pages);
    segr(d, 0, 0, (uint64_t)12 * ITEM, HB * 8, HB);
    bad_frame("rows not whole pages", 803, d, 1, HB * 8, r, "whole pages of 16 rows");
    kvx_receiver_destroy(r);
    r = room_ready(804, 16, -1, pages);
    segr(d, 3, 0, (uint64_t)16 * ITEM + HB, HB * 16, HB);
    segr(d + KVX_TCP_SEGMENT_BYTES, 3, 0, (uint64_t)16 * ITEM + HB, HB * 16, HB);
    bad_frame("the same head twice", 804, d, 2, 2 * HB * 16, r, "head 1 of page 16 of KV buffer 3 arrived twice");
    kvx_receiver_destroy(r);
    r = room_ready(805, 20, -1, pages);
    segr(d, 1, 0, (uint64_t)20 * ITEM, HB * 16, HB);
    seg(d + KVX_TCP_SEGMENT_BYTES, 1, 0, (uint64_t)20 * ITEM, ITEM);
    bad_frame("a head, then its whole page", 805, d, 2, HB * 16 + ITEM, r, "head 0 of page 20 of KV buffer 1 arrived twice");
    kvx_receiver_destroy(r);
    r = room_ready(806, 24, 2, pages);
    segr(d, 0, KVX_TCP_SEG_AUX, 2 * 64, 64, 64);
    bad_frame("aux rows as a head slice", 806, d, 1, 64, r, "unknown flags");
    kvx_receiver_destroy(r);
    r = room_ready(807, 28, -1, pages);
    segr(d, 0, 0, (uint64_t)50 * ITEM, HB * 16, HB);
    bad_frame("head slice outside the room", 807, d, 1, HB * 16, r, "not one of the 4 pages");
    kvx_receiver_destroy(r);
}

static void test_cut(void) {
    uint8_t h[32], d[KVX_TCP_SEGMENT_BYTES], body[ITEM];
    int32_t pages[4];
    struct linger lg = {1, 0};
    kvx_receiver *r = room_ready(600, 0, -1, pages);
    int fd = good_conn();
    double t0;
    hdr(h, 2, 1, 600, KVX_TCP_SEGMENT_BYTES + 2 * ITEM);
    seg(d, 5, 0, 2 * ITEM, 2 * ITEM);
    memset(body, 1, sizeof body);
    send_all(fd, h, 32);
    send_all(fd, d, KVX_TCP_SEGMENT_BYTES);
    send_all(fd, body, ITEM / 2);
    tt_sleep(0.05);
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    t0 = tt_now();
    close(fd); /* RST */
    CHECK(tt_wait_r(r, 5) == KVX_POLL_FAILED, "cut frame: the room failed in %.2f s", tt_now() - t0);
    CHECK_STR(kvx_receiver_error(r), "in the middle of a frame");
    CHECK_STR(kvx_receiver_error(r), "prefill 127.0.0.1:");
    kvx_receiver_destroy(r);
}

/* A correct transfer, encoded by hand; then one frame too many. */
static void test_by_hand(void) {
    int32_t sp[4] = {7, 3, 30, 31}, dp[4];
    kvx_receiver *r = room_ready(700, 44, 4, dp);
    uint8_t h[32], d[(NB * 4 + 2) * KVX_TCP_SEGMENT_BYTES];
    struct iovec v[2 + NB * 4 + 2];
    struct msghdr m;
    char err[512];
    uint64_t payload = 0, ack = 0;
    uint32_t b, i, n = 0;
    int fd = good_conn();
    ex_pages_pattern(&spool, 700, sp, 4, 1);
    ex_aux_write(&spool, 700, 1);
    ex_aux_clear(&dpool, 4);
    for (b = 0; b < NB; b++)
        for (i = 0; i < 4; i++, n++) {
            seg(d + n * KVX_TCP_SEGMENT_BYTES, b, 0, (uint64_t)dp[i] * ITEM, ITEM);
            v[2 + n].iov_base = (char *)spool.bufs[b].base + (size_t)sp[i] * ITEM;
            v[2 + n].iov_len = ITEM;
            payload += ITEM;
        }
    seg(d + n * KVX_TCP_SEGMENT_BYTES, 0, KVX_TCP_SEG_AUX, 4 * 64, 64);
    v[2 + n].iov_base = (char *)spool.aux[0].base + 64;
    v[2 + n++].iov_len = 64;
    seg(d + n * KVX_TCP_SEGMENT_BYTES, 1, KVX_TCP_SEG_AUX, 4 * 8, 8);
    v[2 + n].iov_base = (char *)spool.aux[1].base + 8;
    v[2 + n++].iov_len = 8;
    payload += 72;
    hdr(h, 2, (int)n, 700, n * KVX_TCP_SEGMENT_BYTES + payload);
    v[0].iov_base = h;
    v[0].iov_len = 32;
    v[1].iov_base = d;
    v[1].iov_len = n * KVX_TCP_SEGMENT_BYTES;
    memset(&m, 0, sizeof m);
    m.msg_iov = v;
    m.msg_iovlen = 2 + n;
    CHECK(sendmsg(fd, &m, MSG_NOSIGNAL) == (ssize_t)(32 + n * KVX_TCP_SEGMENT_BYTES + payload), "sent by hand");
    CHECK(tt_wait_r(r, 5) == KVX_POLL_SUCCESS, "hand-encoded room Success: %s", kvx_receiver_error(r));
    CHECK(ex_pages_pattern(&dpool, 700, dp, 4, 0) == 0 && ex_aux_check(&dpool, 700, 4),
          "every byte and aux row in place");
    /* the ACK, then a frame for the finished room closes the connection */
    seg(d, 0, 0, (uint64_t)dp[0] * ITEM, ITEM);
    hdr(h, 2, 1, 700, KVX_TCP_SEGMENT_BYTES + ITEM);
    tt_sleep(0.05);
    send_all(fd, h, 32);
    send_all(fd, d, KVX_TCP_SEGMENT_BYTES);
    send_all(fd, spool.bufs[0].base, ITEM);
    CHECK(wait_closed(fd, 5, err, sizeof err, &ack), "a frame for a finished room closes the connection");
    CHECK(ack == payload, "ACK carried %llu bytes (sent %llu)", (unsigned long long)ack,
          (unsigned long long)payload);
    CHECK_STR(err, "already received every byte");
    CHECK(ex_pages_pattern(&dpool, 700, dp, 4, 0) == 0, "the finished room's pages are unchanged");
    close(fd);
    kvx_receiver_destroy(r);
}

/* Two state buffers of SROWS rows: SITEM0 and SITEM1 bytes. */
static int add_state(ex_pool *p) {
    if (ex_pool_add_state(p, KVX_STATE_MAMBA, 2, SITEM0, SROWS)) return -1;
    p->state[1].item_len = SITEM1; /* the layout points at p->state */
    p->state[1].length = (uint64_t)SITEM1 * SROWS;
    return 0;
}

/* STATE segments: rows of state buffer b from row `row` (a run of `rows`). */
static void sseg(uint8_t *d, uint32_t b, uint32_t flags, uint64_t row, uint64_t rows) {
    uint64_t item = b ? SITEM1 : SITEM0;
    seg(d, b, KVX_TCP_SEG_STATE | flags, row * item, rows * item);
}

/* A room whose KV pages and aux rows came by hand waits for its state
   rows (rows 5, 2, 3: the run 2..3 as one segment, 5 alone, per buffer),
   then succeeds with every row in place; then the refusals. */
static void test_state(void) {
    int32_t sp[4] = {9, 10, 11, 12}, dp[4], si[3] = {0, 1, 6}, di[3] = {5, 2, 3};
    uint8_t h[32], d[NB * KVX_TCP_SEGMENT_BYTES];
    kvx_receiver *r = room_ready_state(710, 32, 4, dp, di, 3);
    uint64_t payload = 0, ack = 0;
    uint32_t b, i;
    char err[512];
    kvx_tcp_stats st0, st;
    double t_end;
    int fd = good_conn();
    ex_pages_pattern(&spool, 710, sp, 4, 1);
    ex_aux_write(&spool, 710, 1);
    ex_state_pattern(&spool, 710, si, 3, 1);
    kvx_tcp_stats_get(de, &st0);
    for (b = 0; b < NB; b++) /* KV: one frame per buffer */
        for (i = 0; i < 4; i++) {
            seg(d, b, 0, (uint64_t)dp[i] * ITEM, ITEM);
            hdr(h, 2, 1, 710, KVX_TCP_SEGMENT_BYTES + ITEM);
            send_all(fd, h, 32);
            send_all(fd, d, KVX_TCP_SEGMENT_BYTES);
            send_all(fd, (char *)spool.bufs[b].base + (size_t)sp[i] * ITEM, ITEM);
            payload += ITEM;
        }
    for (b = 0; b < 2; b++) {
        uint64_t len = b ? 8 : 64;
        seg(d, b, KVX_TCP_SEG_AUX, 4 * len, len);
        hdr(h, 2, 1, 710, KVX_TCP_SEGMENT_BYTES + len);
        send_all(fd, h, 32);
        send_all(fd, d, KVX_TCP_SEGMENT_BYTES);
        send_all(fd, (char *)spool.aux[b].base + len, (size_t)len);
        payload += len;
    }
    t_end = tt_now() + 30;
    do { /* KV and aux placed (observed), state missing: not done */
        tt_sleep(0.001);
        kvx_tcp_stats_get(de, &st);
    } while (st.bytes_received - st0.bytes_received < payload && tt_now() < t_end &&
             kvx_receiver_poll(r) == KVX_POLL_TRANSFERRING);
    CHECK(kvx_receiver_poll(r) == KVX_POLL_TRANSFERRING, "every KV byte and aux row, no state "
          "row: the room still waits (%s)", kvx_poll_str(kvx_receiver_poll(r)));
    for (b = 0; b < 2; b++) {
        uint64_t item = b ? SITEM1 : SITEM0;
        const char *src = (const char *)spool.state[b].base;
        sseg(d, b, 0, 2, 2);
        sseg(d + KVX_TCP_SEGMENT_BYTES, b, 0, 5, 1);
        hdr(h, 2, 2, 710, 2 * KVX_TCP_SEGMENT_BYTES + 3 * item);
        send_all(fd, h, 32);
        send_all(fd, d, 2 * KVX_TCP_SEGMENT_BYTES);
        send_all(fd, src + 1 * item, (size_t)item); /* source row 1 -> row 2 */
        send_all(fd, src + 6 * item, (size_t)item); /* 6 -> 3 */
        send_all(fd, src + 0 * item, (size_t)item); /* 0 -> 5 */
        payload += 3 * item;
    }
    CHECK(tt_wait_r(r, 10) == KVX_POLL_SUCCESS, "state rows by hand: Success (%s)",
          kvx_receiver_error(r));
    CHECK(ex_pages_pattern(&dpool, 710, dp, 4, 0) == 0 && ex_aux_check(&dpool, 710, 4) &&
          ex_state_pattern(&dpool, 710, di, 3, 0) == 0,
          "every page, aux row and state row in place");
    shutdown(fd, SHUT_WR);
    wait_closed(fd, 5, err, sizeof err, &ack);
    CHECK(ack == payload, "ACK carried %llu bytes with the state rows (sent %llu)",
          (unsigned long long)ack, (unsigned long long)payload);
    close(fd);
    kvx_receiver_destroy(r);
    r = room_ready_state(711, 0, -1, dp, di, 3);
    sseg(d, 2, 0, 2, 1);
    bad_frame("state buffer index >= num_state", 711, d, 1, SITEM0, r, "names state buffer 2 of 2");
    kvx_receiver_destroy(r);
    r = room_ready_state(712, 0, -1, dp, di, 3);
    sseg(d, 0, 0, SROWS, 1);
    bad_frame("state row outside the state buffer", 712, d, 1, SITEM0, r, "inside its 8192 bytes");
    kvx_receiver_destroy(r);
    r = room_ready_state(713, 0, -1, dp, di, 3);
    seg(d, 1, KVX_TCP_SEG_STATE, 3 * SITEM1, 1ull << 62);
    bad_frame("state length meant to overflow", 713, d, 1, SITEM1, r, "inside its 2048 bytes");
    kvx_receiver_destroy(r);
    r = room_ready_state(714, 0, -1, dp, di, 3);
    sseg(d, 0, 0, 3, 2);
    bad_frame("a state row not asked for", 714, d, 1, 2 * SITEM0, r,
              "row 4 of state buffer 0 is not one of the 3 state indices");
    kvx_receiver_destroy(r);
    r = room_ready_state(715, 0, -1, dp, di, 3);
    sseg(d, 1, 0, 2, 2);
    sseg(d + KVX_TCP_SEGMENT_BYTES, 1, 0, 3, 1);
    bad_frame("a state row twice", 715, d, 2, 3 * SITEM1, r, "row 3 of state buffer 1 arrived twice");
    kvx_receiver_destroy(r);
    r = room_ready(716, 0, -1, dp);
    sseg(d, 0, 0, 5, 1);
    bad_frame("state into a room without state indices", 716, d, 1, SITEM0, r,
              "not one of the 0 state indices");
    kvx_receiver_destroy(r);
    r = room_ready_state(717, 0, 2, dp, di, 3);
    sseg(d, 0, KVX_TCP_SEG_AUX, 5, 1);
    bad_frame("state rows with the AUX flag", 717, d, 1, SITEM0, r, "unknown flags");
    kvx_receiver_destroy(r);
    r = room_ready_state(718, 0, -1, dp, di, 3);
    seg(d, 0, KVX_TCP_SEG_STATE, 5 * SITEM0 + 8, SITEM0);
    bad_frame("state bytes that are not whole rows", 718, d, 1, SITEM0, r, "not whole rows");
    kvx_receiver_destroy(r);
}

/* The wire format from another language: tests/tcp/tcp_frames.py places a
   room by itself, and the ACK comes back. */
static void test_python_peer(void) {
    int32_t dp[4] = {12, 13, 14, 2}; /* a run of three and a single page */
    kvx_receiver *r;
    kvx_room_desc rd;
    char cmd[1024], out[256], tok[33];
    uint32_t b, i, j, bad = 0;
    FILE *f;
    if (system("command -v python3 >/dev/null 2>&1") != 0 ||
        access("tests/tcp/tcp_frames.py", R_OK) != 0) {
        printf("  python3 or tests/tcp/tcp_frames.py (run from the repository root) not found: "
               "skipping the cross-language peer\n");
        return;
    }
    memset(&rd, 0, sizeof rd);
    rd.room = 7000;
    kvx_receiver_create(de, &rd, &r);
    tt_wait_ready_r(r, 10);
    kvx_receiver_init(r, dp, 4, 3);
    for (i = 0; i < 16; i++) snprintf(tok + 2 * i, 3, "%02x", ep.token[i]);
    snprintf(cmd, sizeof cmd,
             "python3 tests/tcp/tcp_frames.py 127.0.0.1 %d %s %llx 7000 %u %u 12,13,14,2 3 64,8",
             ep.port, tok, (unsigned long long)fingerprint, ITEM, NB);
    f = popen(cmd, "r");
    out[0] = 0;
    if (f) {
        if (!fgets(out, sizeof out, f)) out[0] = 0;
        pclose(f);
    }
    CHECK(tt_wait_r(r, 10) == KVX_POLL_SUCCESS, "python peer: room Success (%s)", kvx_receiver_error(r));
    CHECK(!strncmp(out, "ACK ", 4) && strtoull(out + 4, NULL, 10) == 4ull * NB * ITEM + 72,
          "python peer: %s", out);
    for (b = 0; b < NB; b++)
        for (i = 0; i < 4; i++) {
            const uint8_t *pg = (const uint8_t *)dpool.bufs[b].base + (size_t)dp[i] * ITEM;
            for (j = 0; j < ITEM; j++)
                if (pg[j] != (uint8_t)((b * 131 + i * 7 + j) % 251)) { bad++; break; }
        }
    for (j = 0; j < 64; j++)
        if (((uint8_t *)dpool.aux[0].base)[3 * 64 + j] != (uint8_t)(j % 253)) bad++;
    for (j = 0; j < 8; j++)
        if (((uint8_t *)dpool.aux[1].base)[3 * 8 + j] != (uint8_t)((17 + j) % 253)) bad++;
    CHECK(bad == 0, "python peer: every page and aux byte as the script wrote it (%u bad)", bad);
    kvx_receiver_destroy(r);
}

/* Random frames at live rooms. */
static void test_random(void) {
    uint64_t seed = 99, ids[5] = {800, 801, 802, 803, 999999}, next = 810;
    int32_t pages[4][4];
    kvx_receiver *r[4];
    int i, k, n = kt_quick() ? 150 : 600, fresh = 0;
    for (k = 0; k < 4; k++) r[k] = room_ready(ids[k], 4 * (uint32_t)k, k, pages[k]);
    for (i = 0; i < n; i++) {
        uint8_t buf[32 + 8 * KVX_TCP_SEGMENT_BYTES + 3 * ITEM];
        uint64_t x = ex_mix(seed++);
        int fd = good_conn(), count = (int)(x % 8) + 1, j;
        size_t len;
        uint64_t payload = 0;
        for (k = 0; k < 4; k++) /* a failed room makes way for a fresh one */
            if (tt_terminal(kvx_receiver_poll(r[k]))) {
                kvx_receiver_destroy(r[k]);
                ids[k] = next++;
                r[k] = room_ready(ids[k], 4 * (uint32_t)k, k, pages[k]);
                fresh++;
            }
        for (j = 0; j < count; j++) {
            uint64_t y = ex_mix(seed++);
            uint32_t b = (uint32_t)(y % (NB + 2));
            uint32_t fl = (y >> 8) % 5 == 0 ? KVX_TCP_SEG_AUX : (y >> 8) % 31 == 0 ? 2 : 0;
            uint64_t pg = (y >> 16) % (POOL + 4), len1 = ((y >> 24) % 3 == 0 ? 2 : 1) * (uint64_t)ITEM;
            if ((y >> 32) % 7 == 0) len1 = (y >> 36) % (3 * ITEM);
            if (fl & KVX_TCP_SEG_AUX) { pg = (y >> 16) % 8; len1 = b % 2 ? 8 : 64; }
            seg(buf + 32 + j * KVX_TCP_SEGMENT_BYTES, b, fl, fl & KVX_TCP_SEG_AUX ? pg * len1 : pg * ITEM + ((y >> 40) % 9 == 0 ? 8 : 0), len1);
            payload += len1;
        }
        if (payload > 3 * ITEM) payload = 3 * ITEM;
        if ((x >> 20) % 5 == 0) payload = (x >> 24) % (3 * ITEM);
        hdr(buf, (x >> 8) % 11 == 0 ? (int)((x >> 12) % 6) : 2, count, ids[(x >> 32) % 5],
            (uint64_t)count * KVX_TCP_SEGMENT_BYTES + payload);
        if ((x >> 40) % 13 == 0) buf[(x >> 44) % 32] ^= (uint8_t)(1 + (x >> 50) % 255);
        len = 32 + (size_t)count * KVX_TCP_SEGMENT_BYTES + (size_t)payload;
        memset(buf + 32 + count * KVX_TCP_SEGMENT_BYTES, 0xAB, (size_t)payload);
        send_all(fd, buf, len);
        shutdown(fd, SHUT_WR);
        wait_closed(fd, 5, NULL, 0, NULL);
        close(fd);
    }
    CHECK(fresh > 10, "%d random frames survived, %d rooms failed by them", n, fresh);
    for (k = 0; k < 4; k++) kvx_receiver_destroy(r[k]);
}

int main(int argc, char **argv) {
    tt_opts o;
    char why[512];
    uint8_t *canary;
    kvx_tcp_stats st;
    (void)argc;
    kt_name = "test_tcp_hostile";
    tt_find_self(argv[0]);
    signal(SIGPIPE, SIG_IGN);
    ex_pool_init(&dpool, &tt_tiny, POOL, 16, 8, 2);
    ex_pool_init(&spool, &tt_tiny, POOL, 16, 8, 1);
    if (add_state(&dpool) || add_state(&spool)) return 1;
    {
        int32_t all[POOL];
        uint32_t i;
        for (i = 0; i < POOL; i++) all[i] = (int32_t)i;
        ex_pages_pattern(&dpool, 31337, all, POOL, 1); /* every destination byte is known */
    }
    memset(&o, 0, sizeof o);
    pe = tt_engine(KVX_ROLE_PREFILL, &spool.layout, &o, why, sizeof why);
    CHECK(pe != NULL, "prefill engine (bootstrap only): %s", why);
    if (!pe) return kt_done();
    snprintf(bootaddr, sizeof bootaddr, "127.0.0.1:%d", kvx_boot_engine_port(pe));
    o.boot_addr = bootaddr;
    de = tt_engine(KVX_ROLE_DECODE, &dpool.layout, &o, why, sizeof why);
    CHECK(de != NULL, "decode engine: %s", why);
    if (!de) return kt_done();
    kvx_tcp_endpoint_get(de, &ep);
    fingerprint = kvx_tcp_shape_fingerprint(&dpool.layout);
    canary = canary_copy();
    test_refused();
    test_bad_segments();
    test_rows();
    test_cut();
    test_by_hand();
    test_state();
    test_python_peer();
    test_random();
    CHECK(canary_same(canary), "no byte changed outside the rooms' pages and aux slots");
    kvx_tcp_stats_get(de, &st);
    CHECK(st.frames_rejected >= 10, "%llu frames rejected, %llu connections refused",
          (unsigned long long)st.frames_rejected, (unsigned long long)st.conns_refused);
    free(canary);
    kvx_engine_destroy(de);
    kvx_engine_destroy(pe);
    ex_pool_free(&dpool);
    ex_pool_free(&spool);
    return kt_done();
}
