/* Unit tests of kvx.h's posix io section: address text both ways (IPv4,
   IPv6), listen on port 0, connect refused / bounded by a deadline against a
   listener that never accepts / stopped by its callback, sends bounded by a
   deadline, iovec advance over partial counts (exact boundaries and empty
   entries included), full-I/O loops with a short read, and the wake-up pipe
   waking a poll in another thread. */
#define KVX_IMPLEMENTATION
#include "../../kvx.h"
#include "../kvx_test.h"

/* ip:port -> sockaddr -> text (want) -> host and port -> the same address. */
static void round_trip(int family, const char *ip, int port, const char *want) {
    struct sockaddr_storage ss, back;
    struct sockaddr_in *a4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&ss;
    void *addr = family == AF_INET ? (void *)&a4->sin_addr : (void *)&a6->sin6_addr;
    char text[128], host[64];
    int got = -1;
    memset(&ss, 0, sizeof ss);
    ss.ss_family = (sa_family_t)family;
    if (family == AF_INET) a4->sin_port = htons((uint16_t)port);
    else a6->sin6_port = htons((uint16_t)port);
    inet_pton(family, ip, addr);
    kvx__sa_str((struct sockaddr *)&ss, text, sizeof text);
    CHECK(!strcmp(text, want), "text '%s', expected '%s'", text, want);
    CHECK(kvx__addr_split(text, host, sizeof host, &got, 1) == 0 && got == port &&
              inet_pton(family, host, &back) == 1 && !memcmp(&back, addr, family == AF_INET ? 4 : 16),
          "'%s' splits back to host '%s' port %d", text, host, got);
}

static void test_addr_text(void) {
    struct sockaddr_storage other;
    char text[128], host[64];
    int port = -1;
    round_trip(AF_INET, "127.0.0.1", 8080, "127.0.0.1:8080");
    round_trip(AF_INET, "10.1.2.3", 0, "10.1.2.3:0");
    round_trip(AF_INET6, "fe80::1:2", 443, "[fe80::1:2]:443");
    round_trip(AF_INET6, "::1", 65535, "[::1]:65535");
    round_trip(AF_INET6, "::ffff:127.0.0.1", 1, "[::ffff:127.0.0.1]:1");
    memset(&other, 0, sizeof other);
    other.ss_family = AF_UNIX;
    kvx__sa_str((struct sockaddr *)&other, text, sizeof text);
    CHECK(!strcmp(text, "?"), "other family '%s'", text);

    CHECK(kvx__addr_split("http://node7:9000/route", host, sizeof host, &port, 1) == 0 &&
              !strcmp(host, "node7") && port == 9000, "url form: '%s' %d", host, port);
    CHECK(kvx__addr_split("node7", host, sizeof host, &port, 8998) == 0 && port == 8998,
          "host alone takes the default port");
    CHECK(kvx__addr_split("[::1]", host, sizeof host, &port, 7) == 0 && !strcmp(host, "::1") && port == 7,
          "bracketed v6 alone: '%s' %d", host, port);
    CHECK(kvx__addr_split("h:65535", host, sizeof host, &port, 0) == 0 && port == 65535, "port 65535");
    CHECK(kvx__addr_split("[::1", host, sizeof host, &port, 0) < 0, "unclosed bracket refused");
    CHECK(kvx__addr_split("[::1]x", host, sizeof host, &port, 0) < 0, "junk after bracket refused");
    CHECK(kvx__addr_split("h:", host, sizeof host, &port, 0) < 0, "empty port refused");
    CHECK(kvx__addr_split("h:65536", host, sizeof host, &port, 0) < 0, "port 65536 refused");
    CHECK(kvx__addr_split("h:12a", host, sizeof host, &port, 0) < 0, "port with a letter refused");
    CHECK(kvx__addr_split(":80", host, sizeof host, &port, 0) < 0, "empty host refused");
    CHECK(kvx__addr_split(NULL, host, sizeof host, &port, 0) < 0, "NULL refused");
    CHECK(kvx__addr_split("abcdefgh:1", host, 8, &port, 0) < 0, "host longer than its buffer refused");
    CHECK(kvx__addr_split("abcdefg:1", host, 8, &port, 0) == 0 && !strcmp(host, "abcdefg"),
          "host that just fits");
}

/* A listener on 127.0.0.1 (port 0) and a connection to it. */
static void test_listen_connect(void) {
    int bound = 0, err = -5, lfd, fd, afd = -1, fl;
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    char text[64], want[64];
    uint64_t t0;
    lfd = kvx__listen("127.0.0.1", 0, 16, &bound, &err);
    CHECK(lfd >= 0 && bound > 0 && bound < 65536 && err == 0, "listen: fd %d port %d err %d", lfd, bound, err);
    if (lfd < 0) return;
    fl = fcntl(lfd, F_GETFL, 0);
    CHECK((fl & O_NONBLOCK) && (fcntl(lfd, F_GETFD) & FD_CLOEXEC), "listener non-blocking, close-on-exec");
    fd = kvx__connect("127.0.0.1", bound, kvx_now_ns() + 30000000000ull, NULL, NULL, &err);
    CHECK(fd >= 0, "connect to the listener: %s", kvx__errstr(err));
    if (fd >= 0) {
        int nd = 0;
        socklen_t nl = sizeof nd;
        getsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &nd, &nl);
        CHECK((fcntl(fd, F_GETFL, 0) & O_NONBLOCK) && nd, "connection non-blocking with TCP_NODELAY");
        CHECK(kvx__wait_fd(lfd, POLLIN, kvx_now_ns() + 30000000000ull, NULL, NULL) == 0, "listener readable");
        afd = accept(lfd, (struct sockaddr *)&ss, &sl);
        CHECK(afd >= 0, "accepted");
        getsockname(fd, (struct sockaddr *)&ss, &sl);
        kvx__sa_str((struct sockaddr *)&ss, text, sizeof text);
        snprintf(want, sizeof want, "127.0.0.1:%d", ntohs(((struct sockaddr_in *)&ss)->sin_port));
        CHECK(!strcmp(text, want), "local address '%s'", text);
        close(fd);
    }
    if (afd >= 0) close(afd);
    close(lfd);
    /* the port is free now: nobody listens there */
    t0 = kvx_now_ns();
    fd = kvx__connect("127.0.0.1", bound, kvx_now_ns() + 30000000000ull, NULL, NULL, &err);
    CHECK(fd < 0 && err == ECONNREFUSED, "closed port: fd %d, %s", fd, kvx__errstr(err));
    CHECK(kvx_now_ns() - t0 < 10000000000ull, "refused at once, not at the deadline");
    if (fd >= 0) close(fd);
    CHECK(!strcmp(kvx__errstr(ECONNREFUSED), "connection refused"), "errstr '%s'", kvx__errstr(ECONNREFUSED));
    CHECK(kvx__errstr(EAI_NONAME)[0] != 0, "a getaddrinfo code has text");
    lfd = kvx__listen("127.0.0.1", 0, 16, &bound, &err);
    if (lfd >= 0) { /* a taken port: the errno comes back */
        int again = 0;
        fd = kvx__listen("127.0.0.1", bound, 16, &again, &err);
        CHECK(fd < 0 && err == EADDRINUSE, "taken port: fd %d, %s", fd, kvx__errstr(err));
        if (fd >= 0) close(fd);
        close(lfd);
    }
}

/* A listener with backlog 0 that never accepts: once its queue is full, a
   new connection's SYNs are dropped and connect can only end by its
   deadline or its stop callback. Fills the queue until a connection does
   not complete within 300 ms (observed, not assumed). */
static int g_stop_calls;
static int stop_after_three(void *arg) {
    (void)arg;
    return ++g_stop_calls > 3;
}
static void test_connect_deadline(void) {
    int bound, err, lfd, fd, i, n = 0, held[64];
    uint64_t t0, el;
    lfd = kvx__listen("127.0.0.1", 0, 0, &bound, &err);
    CHECK(lfd >= 0, "listen with backlog 0: %s", kvx__errstr(err));
    if (lfd < 0) return;
    for (i = 0; i < 64; i++) {
        fd = kvx__connect("127.0.0.1", bound, kvx_now_ns() + 300000000ull, NULL, NULL, &err);
        if (fd < 0) break;
        held[n++] = fd;
    }
    CHECK(i < 64 && err == ETIMEDOUT, "the queue filled after %d connections (%s)", n, kvx__errstr(err));
    t0 = kvx_now_ns();
    fd = kvx__connect("127.0.0.1", bound, t0 + 500000000ull, NULL, NULL, &err);
    el = kvx_now_ns() - t0;
    CHECK(fd < 0 && err == ETIMEDOUT, "full listener: fd %d, %s", fd, kvx__errstr(err));
    CHECK(el >= 500000000ull && el < 30000000000ull, "ended by its deadline after %llu ms",
          (unsigned long long)(el / 1000000));
    if (fd >= 0) close(fd);
    /* the stop callback ends it long before a 60 s deadline */
    g_stop_calls = 0;
    t0 = kvx_now_ns();
    fd = kvx__connect("127.0.0.1", bound, t0 + 60000000000ull, stop_after_three, NULL, &err);
    el = kvx_now_ns() - t0;
    CHECK(fd < 0 && err == ECANCELED && g_stop_calls == 4, "stopped: fd %d, %s, %d calls", fd,
          kvx__errstr(err), g_stop_calls);
    CHECK(el < 30000000000ull, "stop ended it after %llu ms", (unsigned long long)(el / 1000000));
    if (fd >= 0) close(fd);
    for (i = 0; i < n; i++) close(held[i]);
    close(lfd);
}

/* A send to a peer that never reads ends at its deadline. */
static void test_send_deadline(void) {
    int sv[2], rc, i;
    static char big[1 << 20];
    uint64_t t0, el;
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv)) { CHECK(0, "socketpair"); return; }
    kvx__nonblock(sv[0], 1);
    CHECK(fcntl(sv[0], F_GETFL, 0) & O_NONBLOCK, "nonblock on");
    t0 = kvx_now_ns();
    for (i = 0, rc = 0; rc == 0 && i < 256; i++) /* until the socket buffers are full */
        rc = kvx__send_all(sv[0], big, sizeof big, t0 + 300000000ull);
    el = kvx_now_ns() - t0;
    CHECK(rc < 0 && errno == ETIMEDOUT, "send to a peer that does not read: rc %d %s", rc, strerror(errno));
    CHECK(el >= 300000000ull && el < 30000000000ull, "ended by its deadline after %llu ms",
          (unsigned long long)(el / 1000000));
    kvx__nonblock(sv[0], 0);
    CHECK(!(fcntl(sv[0], F_GETFL, 0) & O_NONBLOCK), "nonblock off");
    close(sv[0]);
    close(sv[1]);
}

static void set_iov(struct iovec *v, char *base, const size_t *lens, int n) {
    int i;
    for (i = 0; i < n; i++) {
        v[i].iov_base = base;
        v[i].iov_len = lens[i];
        base += lens[i];
    }
}

/* Where the first remaining entry starts, relative to buf, and how long. */
static void test_iov_advance(void) {
    static const size_t lens[5] = {4, 0, 5, 0, 3};
    static const struct { size_t done; int left; long at; size_t len; } c[] = {
        {0, 5, 0, 4},  /* nothing done: unchanged */
        {1, 5, 1, 3},  /* inside the first */
        {3, 5, 3, 1},  /* one byte before a boundary */
        {4, 3, 4, 5},  /* exact boundary: the empty entry after it goes too */
        {5, 3, 5, 4},  /* one past a boundary */
        {9, 1, 9, 3},  /* exact boundary before an empty entry and the last */
        {11, 1, 11, 1},
        {12, 0, 0, 0}, /* all of it */
        {13, 0, 0, 0}, /* more than all of it (cannot happen, must not overrun) */
    };
    char buf[12];
    size_t k;
    for (k = 0; k < sizeof c / sizeof c[0]; k++) {
        struct iovec iov[5], *v = iov;
        int n = 5;
        set_iov(iov, buf, lens, 5);
        kvx__iov_advance(&v, &n, c[k].done);
        CHECK(n == c[k].left, "done %zu: %d entries left, expected %d", c[k].done, n, c[k].left);
        if (n && c[k].left)
            CHECK((char *)v->iov_base - buf == c[k].at && v->iov_len == c[k].len,
                  "done %zu: at %ld len %zu, expected at %ld len %zu", c[k].done,
                  (long)((char *)v->iov_base - buf), v->iov_len, c[k].at, c[k].len);
    }
    { /* advancing in two steps equals advancing once */
        struct iovec iov[5], *v = iov;
        int n = 5;
        set_iov(iov, buf, lens, 5);
        kvx__iov_advance(&v, &n, 2);
        kvx__iov_advance(&v, &n, 2);
        CHECK(n == 3 && (char *)v->iov_base - buf == 4 && v->iov_len == 5, "2 + 2 lands on the boundary");
    }
}

/* Full-I/O loops on a file: write, read back through a split iovec, short read. */
static void test_full_io(void) {
    char path[] = "/tmp/kvx_posixio_XXXXXX", in[300], out[300], a[100], b[200];
    struct iovec v[2];
    int fd = mkstemp(path), i, rc;
    if (fd < 0) { CHECK(0, "mkstemp"); return; }
    unlink(path);
    for (i = 0; i < 300; i++) out[i] = (char)(i * 7 + 1);
    CHECK(kvx__write_all(fd, out, 100) == 0, "write_all");
    CHECK(kvx__pio(fd, out + 100, 200, 100, 1) == 0, "pio write at 100");
    v[0].iov_base = a; v[0].iov_len = sizeof a;
    v[1].iov_base = b; v[1].iov_len = sizeof b;
    CHECK(kvx__piov_full(fd, v, 2, 0, 300, 0) == 0, "piov_full read");
    memcpy(in, a, 100);
    memcpy(in + 100, b, 200);
    CHECK(!memcmp(in, out, 300), "bytes read back equal");
    rc = kvx__pio(fd, in, 50, 280, 0);
    CHECK(rc == -1, "short read past the end: %d", rc);
    rc = kvx__pio(-1, in, 1, 0, 0);
    CHECK(rc == EBADF, "bad fd gives its errno: %d", rc);
    close(fd);
}

static int g_wake_rd;
static void *poller(void *arg) {
    struct pollfd p;
    (void)arg;
    p.fd = g_wake_rd;
    p.events = POLLIN;
    p.revents = 0;
    return (void *)(intptr_t)poll(&p, 1, 60000);
}

static void test_wake(void) {
    int rd = -1, wr = -1, i;
    struct pollfd p;
    pthread_t th;
    void *ret = NULL;
    uint64_t t0;
    CHECK(kvx__pipe(&rd, &wr) == 0 && rd >= 0 && wr >= 0, "pipe");
    if (rd < 0) return;
    CHECK((fcntl(rd, F_GETFL, 0) & O_NONBLOCK) && (fcntl(wr, F_GETFL, 0) & O_NONBLOCK) &&
              (fcntl(rd, F_GETFD) & FD_CLOEXEC) && (fcntl(wr, F_GETFD) & FD_CLOEXEC),
          "both ends non-blocking and close-on-exec");
    t0 = kvx_now_ns();
    CHECK(kvx__wait_fd(rd, POLLIN, t0 + 200000000ull, NULL, NULL) < 0 && errno == ETIMEDOUT,
          "nothing signalled: the wait ends at its deadline");
    CHECK(kvx_now_ns() - t0 >= 200000000ull, "not before it");
    g_wake_rd = rd;
    pthread_create(&th, NULL, poller, NULL);
    kvx__wake(wr);
    pthread_join(th, &ret);
    CHECK((intptr_t)ret == 1, "the wake-up woke a poll in another thread (%ld)", (long)(intptr_t)ret);
    for (i = 0; i < 200000; i++) kvx__wake(wr); /* more than a pipe holds: never blocks */
    kvx__drain(rd);
    p.fd = rd;
    p.events = POLLIN;
    p.revents = 0;
    CHECK(poll(&p, 1, 0) == 0, "drained: no longer readable");
    kvx__wake(wr);
    CHECK(poll(&p, 1, 0) == 1, "readable again after one more wake-up");
    close(rd);
    close(wr);
}

int main(void) {
    kt_name = "test_posixio";
    test_addr_text();
    test_listen_connect();
    test_connect_deadline();
    test_send_deadline();
    test_iov_advance();
    test_full_io();
    test_wake();
    return kt_done();
}
