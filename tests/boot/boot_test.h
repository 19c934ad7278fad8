/* boot_test.h - what the kvx_boot tests share: checks, a quiet logger, a
   small KV layout, engines on 127.0.0.1, waiting, and child processes
   (posix_spawn, so it stays safe in a threaded process and under TSan).

   Include after defining KVX_IMPLEMENTATION (it includes kvx_boot.h first,
   so _GNU_SOURCE is in effect before any system header). */
#ifndef KVX_BOOT_TEST_H
#define KVX_BOOT_TEST_H

#include "../../kvx_boot.h"
#include "../kvx_proc.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <signal.h>
#include <spawn.h>
#include <unistd.h>
#include <fcntl.h>
#include <poll.h>
#include <time.h>
#include <sys/wait.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <arpa/inet.h>

#if defined(__GNUC__) || defined(__clang__)
#define BT_UNUSED __attribute__((unused))
#else
#define BT_UNUSED
#endif


static const char *bt_name = "test";
static int bt_pass, bt_fail;

#define CHECK(cond, ...)                                                                      \
    do {                                                                                      \
        int bt_ok_ = (cond) ? 1 : 0;                                                          \
        if (bt_ok_) bt_pass++;                                                                \
        else bt_fail++;                                                                       \
        printf("%s ", bt_ok_ ? "ok  " : "FAIL");                                              \
        printf(__VA_ARGS__);                                                                  \
        printf("\n");                                                                         \
        fflush(stdout);                                                                       \
    } while (0)

static BT_UNUSED int bt_finish(void) {
    printf("%s: %d passed, %d failed\n", bt_name, bt_pass, bt_fail);
    fflush(stdout);
    return bt_fail ? 1 : 0;
}

static BT_UNUSED int bt_quick(void) {
    const char *q = getenv("KVX_TEST_QUICK");
    return q && *q && strcmp(q, "0");
}

static BT_UNUSED uint64_t bt_rand(uint64_t *s) { /* splitmix64 */
    uint64_t x = (*s += 0x9E3779B97F4A7C15ull);
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

static BT_UNUSED double bt_now(void) { return (double)kvx_now_ns() / 1e9; }

static BT_UNUSED void bt_sleep(double s) {
    struct timespec ts;
    ts.tv_sec = (time_t)s;
    ts.tv_nsec = (long)((s - (double)ts.tv_sec) * 1e9);
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {}
}

/* Errors are expected in these tests: keep them quiet unless asked. */
static void bt_log(void *u, kvx_log_level lvl, const char *sub, uint64_t room, const char *msg) {
    static const char *names[] = {"", "ERROR", "WARN", "INFO", "DEBUG"};
    (void)u;
    if (getenv("KVX_TEST_VERBOSE"))
        fprintf(stderr, "  [%s %s room=%llu] %s\n", names[lvl & 7 ? lvl : 0], sub,
                (unsigned long long)room, msg);
}

/* A small pool: 2 KV buffers (K, V) of `pages` pages, 1 aux buffer. */
typedef struct bt_pool {
    kvx_buffer bufs[2];
    kvx_aux_buffer aux[1];
    uint8_t *mem;
    kvx_layout layout;
} bt_pool;

static BT_UNUSED void bt_pool_init(bt_pool *p, uint32_t pages, uint32_t page_size, uint64_t item_len,
                                const char *dtype) {
    int i;
    memset(p, 0, sizeof *p);
    p->mem = (uint8_t *)calloc(1, 2 * pages * item_len + 64 * 64);
    for (i = 0; i < 2; i++) {
        p->bufs[i].base = p->mem + (size_t)i * pages * item_len;
        p->bufs[i].length = pages * item_len;
        p->bufs[i].item_len = item_len;
    }
    p->aux[0].base = p->mem + 2 * pages * item_len;
    p->aux[0].length = 64 * 64;
    p->aux[0].item_len = 64;
    p->layout.buffers = p->bufs;
    p->layout.num_buffers = 2;
    p->layout.aux = p->aux;
    p->layout.num_aux = 1;
    p->layout.page_size = page_size;
    p->layout.num_kv_heads = 8;
    p->layout.dtype_size = 2;
    p->layout.dtype = dtype;
}

static BT_UNUSED void bt_pool_free(bt_pool *p) { free(p->mem); }

typedef struct bt_engine_opts {
    int port;          /* prefill: 0 = ephemeral */
    const char *addr;  /* decode: default bootstrap address */
    int tp_size, tp_rank;
    int pp_size, pp_rank, dp_size, dp_rank, cp_size, cp_rank; /* 0 = kvx's default */
    const char *transport;     /* NULL = "bootfake" */
    const kvx_layout *layout;  /* NULL = the pool's */
    double bootstrap_timeout_s; /* 0 = kvx's default */
} bt_engine_opts;

static BT_UNUSED kvx_engine *bt_engine(kvx_role role, const bt_pool *p, const bt_engine_opts *o,
                                    char *why, size_t wl) {
    kvx_engine_desc d;
    kvx_engine *e = NULL;
    memset(&d, 0, sizeof d);
    d.role = role;
    d.transport = o && o->transport ? o->transport : "bootfake";
    d.layout = o && o->layout ? *o->layout : p->layout;
    d.logger.func = bt_log;
    d.logger.level = getenv("KVX_TEST_VERBOSE") ? KVX_LOG_DEBUG : KVX_LOG_WARN;
    d.boot.host = "127.0.0.1";
    d.boot.port = o && o->port ? o->port : -1;
    d.boot.tp_size = o ? o->tp_size : 0;
    d.boot.tp_rank = o ? o->tp_rank : 0;
    if (o) {
        d.boot.pp_size = o->pp_size; d.boot.pp_rank = o->pp_rank;
        d.boot.dp_size = o->dp_size; d.boot.dp_rank = o->dp_rank;
        d.boot.cp_size = o->cp_size; d.boot.cp_rank = o->cp_rank;
        d.bootstrap_timeout_s = o->bootstrap_timeout_s;
    }
    d.bootstrap_addr = o ? o->addr : NULL;
    d.poll_interval_us = 2000;
    kvx_boot_register();
    if (kvx_engine_create(&d, &e, why, wl) != KVX_OK) return NULL;
    return e;
}

/* Waits until every poll result satisfies `done` or the time is up. */
static BT_UNUSED int bt_wait_receivers(kvx_receiver **r, int n, int (*done)(kvx_poll), double timeout) {
    double end = bt_now() + timeout;
    for (;;) {
        int i, all = 1;
        for (i = 0; i < n && all; i++)
            if (r[i] && !done(kvx_receiver_poll(r[i]))) all = 0;
        if (all) return 1;
        if (bt_now() > end) return 0;
        bt_sleep(0.001);
    }
}
static BT_UNUSED int bt_wait_senders(kvx_sender **s, int n, int (*done)(kvx_poll), double timeout) {
    double end = bt_now() + timeout;
    for (;;) {
        int i, all = 1;
        for (i = 0; i < n && all; i++)
            if (s[i] && !done(kvx_sender_poll(s[i]))) all = 0;
        if (all) return 1;
        if (bt_now() > end) return 0;
        bt_sleep(0.001);
    }
}
static BT_UNUSED int bt_is_terminal(kvx_poll p) { return p == KVX_POLL_FAILED || p == KVX_POLL_SUCCESS; }
static BT_UNUSED int bt_is_ready(kvx_poll p) { return p != KVX_POLL_BOOTSTRAPPING; }
static BT_UNUSED int bt_is_failed(kvx_poll p) { return p == KVX_POLL_FAILED; }

/* ---- child processes --------------------------------------------------------- */

/* the shared helpers of tests/kvx_proc.h */
typedef kt_proc bt_proc;
#define bt_spawn kt_spawn
#define bt_readline kt_readline

/* Reads everything until EOF into out (NUL-terminated), then reaps. */
static BT_UNUSED int bt_read_all(bt_proc *p, char *out, size_t n, double timeout) {
    double end = bt_now() + timeout;
    size_t len = 0;
    if (p->len) {
        len = p->len < n - 1 ? p->len : n - 1;
        memcpy(out, p->buf, len);
        p->len = 0;
    }
    for (;;) {
        struct pollfd pf;
        ssize_t r;
        int ms = (int)((end - bt_now()) * 1000);
        if (ms <= 0) break;
        pf.fd = p->out_fd;
        pf.events = POLLIN;
        if (poll(&pf, 1, ms) <= 0) continue;
        r = read(p->out_fd, out + len, n - 1 - len);
        if (r <= 0) break;
        len += (size_t)r;
        if (len == n - 1) break;
    }
    out[len] = 0;
    return (int)len;
}

static BT_UNUSED int bt_reap(bt_proc *p, double timeout) {
    double end = bt_now() + timeout;
    int st = -1;
    if (p->pid <= 0) return -1;
    if (p->in_fd > 0) { close(p->in_fd); p->in_fd = -1; }
    for (;;) {
        pid_t w = waitpid(p->pid, &st, WNOHANG);
        if (w == p->pid) break;
        if (bt_now() > end) {
            kill(p->pid, SIGKILL);
            waitpid(p->pid, &st, 0);
            break;
        }
        bt_sleep(0.01);
    }
    if (p->out_fd > 0) { close(p->out_fd); p->out_fd = -1; }
    p->pid = -1;
    return st;
}

/* Runs a command to completion; its stdout in out. Returns the exit code. */
static BT_UNUSED int bt_run(char *const argv[], char *out, size_t n, double timeout) {
    bt_proc p;
    int st;
    if (bt_spawn(&p, argv, NULL)) { snprintf(out, n, "cannot run %s", argv[0]); return -1; }
    close(p.in_fd);
    p.in_fd = -1;
    bt_read_all(&p, out, n, timeout);
    st = bt_reap(&p, 2.0);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static BT_UNUSED int bt_have(const char *prog) {
    char out[64];
    char *argv[4];
    argv[0] = (char *)"sh";
    argv[1] = (char *)"-c";
    argv[2] = NULL;
    {
        char cmd[128];
        snprintf(cmd, sizeof cmd, "command -v %s >/dev/null 2>&1", prog);
        argv[2] = cmd;
        argv[3] = NULL;
        return bt_run(argv, out, sizeof out, 5.0) == 0;
    }
}

/* A TCP connection to 127.0.0.1:port (blocking), or -1. */
static BT_UNUSED int bt_connect(int port) {
    struct sockaddr_in a;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0) return -1;
    if (connect(fd, (struct sockaddr *)&a, sizeof a)) { close(fd); return -1; }
    return fd;
}

/* Waits up to timeout for the peer to close fd (EOF or reset), reading and
   discarding; copies up to n-1 bytes of what arrived into got. 1 closed. */
static BT_UNUSED int bt_wait_closed(int fd, double timeout, char *got, size_t n) {
    double end = bt_now() + timeout;
    size_t len = 0;
    if (got && n) got[0] = 0;
    for (;;) {
        struct pollfd pf;
        char tmp[4096];
        ssize_t r;
        int ms = (int)((end - bt_now()) * 1000);
        if (ms <= 0) return 0;
        pf.fd = fd;
        pf.events = POLLIN;
        if (poll(&pf, 1, ms) <= 0) continue;
        r = recv(fd, tmp, sizeof tmp, 0);
        if (r <= 0) return 1;
        if (got && len + 1 < n) {
            size_t k = (size_t)r < n - 1 - len ? (size_t)r : n - 1 - len;
            memcpy(got + len, tmp, k);
            len += k;
            got[len] = 0;
        }
    }
}

/* A port nobody listens on (bound then released). */
static BT_UNUSED int bt_free_port(void) {
    struct sockaddr_in a;
    socklen_t sl = sizeof a;
    int fd = socket(AF_INET, SOCK_STREAM, 0), port;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bind(fd, (struct sockaddr *)&a, sizeof a);
    getsockname(fd, (struct sockaddr *)&a, &sl);
    port = ntohs(a.sin_port);
    close(fd);
    return port;
}

/* The directory of argv[0] + name, for helpers that live next to the test. */
static BT_UNUSED void bt_self_path(const char *argv0, char *out, size_t n) {
    char tmp[4096];
    ssize_t l = readlink("/proc/self/exe", tmp, sizeof tmp - 1);
    if (l > 0) { tmp[l] = 0; snprintf(out, n, "%s", tmp); }
    else snprintf(out, n, "%s", argv0);
}

#endif
