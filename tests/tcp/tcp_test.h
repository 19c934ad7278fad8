/* tcp_test.h - what the tcp transport tests share: engines on 127.0.0.1,
   waiting, child processes (posix_spawn of the test binary itself in a
   helper mode, so every build - plain, ASan, TSan - runs the same code on
   both sides), and the prefill / decode helper programs.

   Include after defining KVX_IMPLEMENTATION. */
#ifndef KVX_TCP_TEST_H
#define KVX_TCP_TEST_H

#include "../../kvx_tcp.h"
#include "../kvx_proc.h"
#include "../../examples/kvx_example.h"
#include "../kvx_test.h"
#include <errno.h>
#include <signal.h>
#include <spawn.h>
#include <poll.h>
#include <fcntl.h>
#include <unistd.h>
#include <sys/wait.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <arpa/inet.h>

/* Every check prints a line (the measurements in them are the point). */
#undef CHECK
#define CHECK(cond, ...)                                                                       \
    do {                                                                                       \
        int tt_ok_ = (cond) ? 1 : 0;                                                           \
        if (tt_ok_) kt_pass++;                                                                 \
        else kt_fail++;                                                                        \
        printf(tt_ok_ ? "ok   " : "FAIL %s:%d: ", __FILE__, __LINE__);                         \
        printf(__VA_ARGS__);                                                                   \
        printf("\n");                                                                          \
        fflush(stdout);                                                                        \
    } while (0)

#if defined(__GNUC__) || defined(__clang__)
#define TT_UNUSED __attribute__((unused))
#else
#define TT_UNUSED
#endif


static const ex_model tt_tiny = {"tiny", 4, 2, 64, 2, 0, "bfloat16"}; /* 8 buffers, 4 KiB pages */
static char tt_self[4096];
/* A command the helpers run under, e.g. {"ip", "netns", "exec", "ns1", NULL}. */
static char *tt_wrap[8];

static TT_UNUSED const ex_model *tt_model(const char *name) {
    return strcmp(name, "tiny") ? ex_model_find(name) : &tt_tiny;
}

static TT_UNUSED double tt_now(void) { return (double)kvx_now_ns() / 1e9; }

static TT_UNUSED void tt_sleep(double s) {
    struct timespec ts;
    ts.tv_sec = (time_t)s;
    ts.tv_nsec = (long)((s - (double)ts.tv_sec) * 1e9);
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {}
}

/* Failures are expected in these tests: quiet unless KVX_TEST_VERBOSE. */
static void tt_log(void *u, kvx_log_level lvl, const char *sub, uint64_t room, const char *msg) {
    static const char *names[] = {"", "ERROR", "WARN", "INFO", "DEBUG"};
    (void)u;
    if (getenv("KVX_TEST_VERBOSE"))
        fprintf(stderr, "  [%d %s %s room=%llu] %s\n", (int)getpid(), names[lvl & 7 ? lvl : 0], sub,
                (unsigned long long)room, msg);
}

typedef struct tt_opts {
    const char *boot_addr; /* decode: the prefill's bootstrap host:port */
    const char *tcp_host;  /* decode: data listener; NULL = 127.0.0.1, "" = unset */
    const char *boot_host; /* prefill: NULL = 127.0.0.1 */
    int streams;
    const kvx_mem_ops *mem;
    const kvx_buffer *bufs; /* replaces the layout's buffers (GPU tests) */
    int tp_size, tp_rank, pp_size, pp_rank; /* desc.boot (0: one rank) */
    int boot_port;          /* prefill ranks but the first: its bootstrap port */
} tt_opts;

static TT_UNUSED kvx_engine *tt_engine(kvx_role role, const kvx_layout *l, const tt_opts *o,
                                       char *why, size_t wl) {
    kvx_engine_desc d;
    kvx_engine *e = NULL;
    memset(&d, 0, sizeof d);
    d.role = role;
    d.transport = "tcp";
    d.layout = *l;
    if (o && o->bufs) d.layout.buffers = o->bufs;
    d.logger.func = tt_log;
    d.logger.level = getenv("KVX_TEST_VERBOSE") ? KVX_LOG_DEBUG : KVX_LOG_WARN;
    d.boot.host = o && o->boot_host ? o->boot_host : "127.0.0.1";
    d.boot.port = o && o->boot_port ? o->boot_port : -1;
    if (o) {
        d.boot.tp_size = o->tp_size;
        d.boot.tp_rank = o->tp_rank;
        d.boot.pp_size = o->pp_size;
        d.boot.pp_rank = o->pp_rank;
    }
    d.tcp.host = o && o->tcp_host ? (o->tcp_host[0] ? o->tcp_host : NULL) : "127.0.0.1";
    d.tcp.streams = o ? o->streams : 0;
    d.bootstrap_addr = o ? o->boot_addr : NULL;
    d.poll_interval_us = 2000;
    if (o && o->mem) d.mem = *o->mem;
    kvx_tcp_register();
    why[0] = 0;
    if (kvx_engine_create(&d, &e, why, wl) != KVX_OK) return NULL;
    return e;
}

static TT_UNUSED int tt_terminal(kvx_poll p) { return p == KVX_POLL_FAILED || p == KVX_POLL_SUCCESS; }

static TT_UNUSED kvx_poll tt_wait_s(kvx_sender *s, double timeout) {
    double end = tt_now() + timeout;
    while (!tt_terminal(kvx_sender_poll(s)) && tt_now() < end) tt_sleep(0.001);
    return kvx_sender_poll(s);
}

static TT_UNUSED kvx_poll tt_wait_r(kvx_receiver *r, double timeout) {
    double end = tt_now() + timeout;
    while (!tt_terminal(kvx_receiver_poll(r)) && tt_now() < end) tt_sleep(0.001);
    return kvx_receiver_poll(r);
}

static TT_UNUSED int tt_wait_ready_r(kvx_receiver *r, double timeout) {
    double end = tt_now() + timeout;
    while (kvx_receiver_poll(r) == KVX_POLL_BOOTSTRAPPING && tt_now() < end) tt_sleep(0.001);
    return kvx_receiver_poll(r) == KVX_POLL_WAITING_FOR_INPUT;
}

static TT_UNUSED int tt_wait_ready_s(kvx_sender *s, double timeout) {
    double end = tt_now() + timeout;
    while (kvx_sender_poll(s) == KVX_POLL_BOOTSTRAPPING && tt_now() < end) tt_sleep(0.001);
    return kvx_sender_poll(s) == KVX_POLL_WAITING_FOR_INPUT;
}

/* Pages one side needs for every request at once, plus slack. */
static TT_UNUSED uint32_t tt_pool_pages(const ex_request *r, uint32_t n) {
    uint32_t i, sum = 16;
    for (i = 0; i < n; i++) sum += r[i].pages;
    return sum;
}

/* ---- GPU-memory layouts: a mock device through kvx_mem_ops --------------------
   Its pointers are host pointers xor DEV_TAG: they crash if dereferenced. */

#define DEV_TAG 0x5A00000000000000ull
static TT_UNUSED int tt_mock_copies, tt_mock_fail;
static TT_UNUSED void *tt_to_dev(void *p) { return (void *)((uintptr_t)p ^ DEV_TAG); }
static TT_UNUSED kvx_result tt_mock_copy(void *ctx, int to_host, const kvx_copy *c, size_t n,
                                         char *why, size_t wl) {
    size_t i;
    (void)ctx;
    if (__atomic_load_n(&tt_mock_fail, __ATOMIC_ACQUIRE)) {
        snprintf(why, wl, "mock device: CUDA_ERROR_ILLEGAL_ADDRESS");
        return KVX_ERR_TRANSPORT;
    }
    for (i = 0; i < n; i++) {
        char *real = (char *)((uintptr_t)c[i].buf_ptr ^ DEV_TAG);
        if (c[i].device != 3) return KVX_ERR_INVALID_ARGUMENT;
        if (to_host) memcpy(c[i].host, real, (size_t)c[i].len);
        else memcpy(real, c[i].host, (size_t)c[i].len);
    }
    __atomic_add_fetch(&tt_mock_copies, 1, __ATOMIC_RELAXED);
    return KVX_OK;
}
static TT_UNUSED void *tt_mock_alloc(void *ctx, size_t n) { (void)ctx; return malloc(n); }
static TT_UNUSED void tt_mock_free(void *ctx, void *p) { (void)ctx; free(p); }

/* Device copies of n buffers (KV pages or state rows) of a host pool. */
static TT_UNUSED void tt_devmem(const kvx_buffer *in, uint32_t n, kvx_buffer *out) {
    uint32_t i;
    for (i = 0; i < n; i++) {
        out[i] = in[i];
        out[i].base = tt_to_dev(in[i].base);
        out[i].mem = KVX_MEM_CUDA;
        out[i].device = 3;
    }
}

/* ---- child processes ------------------------------------------------------- */

/* the shared helpers of tests/kvx_proc.h */
typedef kt_proc tt_proc;
#define tt_spawn kt_spawn
#define tt_readline kt_readline

/* Waits for a line starting with prefix (skipping others); 1 found. */
static TT_UNUSED int tt_expect(tt_proc *p, const char *prefix, char *line, size_t n, double timeout) {
    double end = tt_now() + timeout;
    while (tt_now() < end) {
        if (!tt_readline(p, line, n, end - tt_now())) return 0;
        if (!strncmp(line, prefix, strlen(prefix))) return 1;
        printf("  child: %s\n", line);
    }
    return 0;
}

/* Closes its stdin and waits for it (SIGKILL after timeout). Exit status. */
static TT_UNUSED int tt_reap(tt_proc *p, double timeout) {
    double end = tt_now() + timeout;
    int st = -1;
    if (p->pid <= 0) return -1;
    if (p->in_fd > 0) { close(p->in_fd); p->in_fd = -1; }
    for (;;) {
        pid_t w = waitpid(p->pid, &st, WNOHANG);
        if (w == p->pid) break;
        if (tt_now() > end) {
            kill(p->pid, SIGKILL);
            waitpid(p->pid, &st, 0);
            break;
        }
        tt_sleep(0.005);
    }
    if (p->out_fd > 0) { close(p->out_fd); p->out_fd = -1; }
    p->pid = -1;
    return st;
}

static TT_UNUSED long tt_rss_kb(pid_t pid) {
    char path[64], line[256];
    long kb = -1;
    FILE *f;
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    f = fopen(path, "r");
    if (!f) return -1;
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, "VmRSS:", 6)) kb = atol(line + 6);
    fclose(f);
    return kb;
}

static TT_UNUSED void tt_find_self(const char *argv0) {
    ssize_t l = readlink("/proc/self/exe", tt_self, sizeof tt_self - 1);
    if (l > 0) tt_self[l] = 0;
    else snprintf(tt_self, sizeof tt_self, "%s", argv0);
}

/* ---- helper programs ---------------------------------------------------------

   --prefill <seed> <nreq> <min_tok> <max_tok> <chunk_pages> <model> <streams>
       Prints "READY <bootstrap port>", sends every request (all rooms at
       once, chunk_pages per send), prints "RESULT <ok> <failed>" and one
       "ERR <room> <sentence>" line per failure, exits 0 when all succeeded.
       Exits when its parent dies.
   --decode <bootstrap addr> <seed> <nreq> <min_tok> <max_tok> <model>
       Creates every receiver, prints "INITED <n>" once all are initialised
       (their destinations sent), "FLOWING <bytes>" once KV bytes arrived
       (then stops itself with SIGSTOP when TT_STOP_ON_BYTES is set, so a
       test can act before the transfer ends), waits, verifies every
       byte and aux row, prints "RESULT <ok> <verified> <failed>" and
       "ERR" lines, exits 0 when all verified. */

static TT_UNUSED int tt_helper_prefill(char **argv) {
    uint64_t seed = strtoull(argv[2], NULL, 10);
    uint32_t nreq = (uint32_t)atoi(argv[3]), mn = (uint32_t)atoi(argv[4]),
             mx = (uint32_t)atoi(argv[5]), chunk = (uint32_t)atoi(argv[6]), i, ok = 0, failed = 0;
    const ex_model *m = tt_model(argv[7]);
    tt_opts o;
    ex_request *reqs = (ex_request *)calloc(nreq, sizeof *reqs);
    kvx_sender **s = (kvx_sender **)calloc(nreq, sizeof *s);
    int32_t **pages = (int32_t **)calloc(nreq, sizeof *pages);
    int *started = (int *)calloc(nreq, sizeof *started);
    ex_pool p;
    kvx_engine *e;
    char why[512];
    double end;
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    ex_requests(reqs, nreq, seed, mn, mx, 16);
    if (ex_pool_init(&p, m, tt_pool_pages(reqs, nreq), 16, nreq + 1, seed * 3 + 1)) {
        printf("ERROR out of memory\n");
        return 3;
    }
    memset(&o, 0, sizeof o);
    o.streams = atoi(argv[8]);
    o.boot_host = getenv("TT_BOOT_HOST");
    if (!(e = tt_engine(KVX_ROLE_PREFILL, &p.layout, &o, why, sizeof why))) {
        printf("ERROR %s\n", why);
        return 3;
    }
    for (i = 0; i < nreq; i++) {
        pages[i] = (int32_t *)malloc((reqs[i].pages + 1) * sizeof(int32_t));
        ex_alloc_pages(&p, pages[i], reqs[i].pages);
        ex_pages_pattern(&p, reqs[i].room, pages[i], reqs[i].pages, 1);
        ex_aux_write(&p, reqs[i].room, (int32_t)i);
    }
    /* every sender after every pattern: filling 128 MiB takes seconds under
       TSan on a loaded machine, and KVX_BOOTSTRAP_TIMEOUT runs from creation */
    for (i = 0; i < nreq; i++) {
        kvx_room_desc rd;
        memset(&rd, 0, sizeof rd);
        rd.room = reqs[i].room;
        kvx_sender_create(e, &rd, &s[i]);
    }
    printf("READY %d\n", kvx_boot_engine_port(e));
    fflush(stdout);
    end = tt_now() + 120;
    for (;;) {
        uint32_t done = 0;
        for (i = 0; i < nreq; i++) {
            kvx_poll st = kvx_sender_poll(s[i]);
            if (!started[i] && st == KVX_POLL_WAITING_FOR_INPUT) {
                uint32_t sent = 0;
                started[i] = 1;
                if (kvx_sender_init(s[i], reqs[i].pages, (int32_t)i) != KVX_OK) continue;
                do {
                    uint32_t k = reqs[i].pages - sent < chunk ? reqs[i].pages - sent : chunk;
                    if (kvx_sender_send(s[i], pages[i] + sent, k) != KVX_OK) break;
                    sent += k;
                } while (sent < reqs[i].pages);
            }
            if (tt_terminal(kvx_sender_poll(s[i]))) done++;
        }
        if (done == nreq || tt_now() > end) break;
        tt_sleep(0.001);
    }
    for (i = 0; i < nreq; i++) {
        if (kvx_sender_poll(s[i]) == KVX_POLL_SUCCESS) ok++;
        else failed++;
    }
    printf("RESULT %u %u\n", ok, failed);
    for (i = 0; i < nreq; i++)
        if (kvx_sender_poll(s[i]) != KVX_POLL_SUCCESS)
            printf("ERR %llu %s\n", (unsigned long long)reqs[i].room, kvx_sender_error(s[i]));
    fflush(stdout);
    for (i = 0; i < nreq; i++) {
        kvx_sender_destroy(s[i]);
        free(pages[i]);
    }
    kvx_engine_destroy(e);
    ex_pool_free(&p);
    free(reqs); free(s); free(pages); free(started);
    return failed ? 1 : 0;
}

/* The decode side of a transfer, in this process: every request at once.
   Returns rooms verified byte for byte (aux included); *ok counts Success. */
static TT_UNUSED uint32_t tt_decode_all(kvx_engine *e, ex_pool *p, const ex_request *reqs, uint32_t nreq,
                                        double timeout, uint32_t *ok, char *first_err, size_t fl,
                                        int announce) {
    kvx_receiver **r = (kvx_receiver **)calloc(nreq, sizeof *r);
    int32_t **pages = (int32_t **)calloc(nreq, sizeof *pages);
    int *inited = (int *)calloc(nreq, sizeof *inited);
    uint32_t i, verified = 0, done, ninit = 0;
    int flowing = 0;
    double end = tt_now() + timeout;
    *ok = 0;
    if (first_err) first_err[0] = 0;
    for (i = 0; i < nreq; i++) {
        kvx_room_desc rd;
        memset(&rd, 0, sizeof rd);
        rd.room = reqs[i].room;
        pages[i] = (int32_t *)malloc((reqs[i].pages + 1) * sizeof(int32_t));
        ex_alloc_pages(p, pages[i], reqs[i].pages);
        ex_aux_clear(p, (int32_t)i);
        kvx_receiver_create(e, &rd, &r[i]);
    }
    do {
        done = 0;
        for (i = 0; i < nreq; i++) {
            kvx_poll st = kvx_receiver_poll(r[i]);
            if (!inited[i] && (st == KVX_POLL_WAITING_FOR_INPUT || tt_terminal(st))) {
                inited[i] = 1;
                ninit++;
                if (st == KVX_POLL_WAITING_FOR_INPUT)
                    kvx_receiver_init(r[i], pages[i], reqs[i].pages, (int32_t)i);
                if (announce && ninit == nreq) { /* every destination is on its way */
                    printf("INITED %u\n", nreq);
                    fflush(stdout);
                }
            }
            if (tt_terminal(kvx_receiver_poll(r[i]))) done++;
        }
        if (announce && !flowing) {
            kvx_tcp_stats st;
            kvx_tcp_stats_get(e, &st);
            if (st.bytes_received) { /* the prefill got destinations and streams */
                flowing = 1;
                printf("FLOWING %llu\n", (unsigned long long)st.bytes_received);
                fflush(stdout);
                if (getenv("TT_STOP_ON_BYTES")) raise(SIGSTOP); /* the test cuts, then SIGCONT */
            }
        }
        if (done < nreq) tt_sleep(0.001);
    } while (done < nreq && tt_now() < end);
    for (i = 0; i < nreq; i++) {
        if (kvx_receiver_poll(r[i]) == KVX_POLL_SUCCESS) {
            (*ok)++;
            if (!ex_pages_pattern(p, reqs[i].room, pages[i], reqs[i].pages, 0) &&
                ex_aux_check(p, reqs[i].room, (int32_t)i))
                verified++;
        } else if (first_err && !first_err[0]) {
            snprintf(first_err, fl, "room %llu: %s (%s)", (unsigned long long)reqs[i].room,
                     kvx_receiver_error(r[i]), kvx_poll_str(kvx_receiver_poll(r[i])));
        }
        kvx_receiver_destroy(r[i]);
        ex_free_pages(p, pages[i], reqs[i].pages);
        free(pages[i]);
    }
    free(r); free(pages); free(inited);
    return verified;
}

static TT_UNUSED int tt_helper_decode(char **argv) {
    const char *addr = argv[2];
    uint64_t seed = strtoull(argv[3], NULL, 10);
    uint32_t nreq = (uint32_t)atoi(argv[4]), mn = (uint32_t)atoi(argv[5]),
             mx = (uint32_t)atoi(argv[6]), ok = 0, verified;
    const ex_model *m = tt_model(argv[7]);
    ex_request *reqs = (ex_request *)calloc(nreq, sizeof *reqs);
    tt_opts o;
    ex_pool p;
    kvx_engine *e;
    char why[512], err[512];
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    ex_requests(reqs, nreq, seed, mn, mx, 16);
    if (ex_pool_init(&p, m, tt_pool_pages(reqs, nreq), 16, nreq + 1, seed * 3 + 2)) {
        printf("ERROR out of memory\n");
        return 3;
    }
    memset(&o, 0, sizeof o);
    o.boot_addr = addr;
    o.tcp_host = getenv("TT_TCP_HOST");
    if (!(e = tt_engine(KVX_ROLE_DECODE, &p.layout, &o, why, sizeof why))) {
        printf("ERROR %s\n", why);
        return 3;
    }
    verified = tt_decode_all(e, &p, reqs, nreq, 120, &ok, err, sizeof err, 1);
    printf("RESULT %u %u %u\n", ok, verified, nreq - ok);
    if (err[0]) printf("ERR %s\n", err);
    fflush(stdout);
    kvx_engine_destroy(e);
    ex_pool_free(&p);
    free(reqs);
    return verified == nreq ? 0 : 1;
}

/* tt_spawn of tt_wrap + argv. */
static TT_UNUSED int tt_spawn_wrapped(tt_proc *p, char *const argv[], char *const extra_env[]) {
    char *all[32];
    int n = 0, i;
    for (i = 0; tt_wrap[i] && n < 16; i++) all[n++] = tt_wrap[i];
    for (i = 0; argv[i] && n < 31; i++) all[n++] = argv[i];
    all[n] = NULL;
    return tt_spawn(p, all, extra_env);
}

/* Spawns this binary as a prefill helper; returns its bootstrap port or -1. */
static TT_UNUSED int tt_spawn_prefill(tt_proc *pr, uint64_t seed, uint32_t nreq, uint32_t mn,
                                      uint32_t mx, uint32_t chunk, const char *model, int streams,
                                      char *const extra_env[]) {
    char a[8][32], line[512];
    char *argv[10];
    int i;
    snprintf(a[0], 32, "%llu", (unsigned long long)seed);
    snprintf(a[1], 32, "%u", nreq);
    snprintf(a[2], 32, "%u", mn);
    snprintf(a[3], 32, "%u", mx);
    snprintf(a[4], 32, "%u", chunk);
    snprintf(a[5], 32, "%s", model);
    snprintf(a[6], 32, "%d", streams);
    argv[0] = tt_self;
    argv[1] = (char *)"--prefill";
    for (i = 0; i < 7; i++) argv[2 + i] = a[i];
    argv[9] = NULL;
    if (tt_spawn_wrapped(pr, argv, extra_env)) return -1;
    if (!tt_expect(pr, "READY ", line, sizeof line, 60)) {
        printf("  prefill helper did not start: %s\n", line);
        return -1;
    }
    return atoi(line + 6);
}

static TT_UNUSED int tt_spawn_decode(tt_proc *pr, const char *addr, uint64_t seed, uint32_t nreq,
                                     uint32_t mn, uint32_t mx, const char *model,
                                     char *const extra_env[]) {
    char a[6][64], line[512];
    char *argv[9];
    int i;
    snprintf(a[0], 64, "%s", addr);
    snprintf(a[1], 64, "%llu", (unsigned long long)seed);
    snprintf(a[2], 64, "%u", nreq);
    snprintf(a[3], 64, "%u", mn);
    snprintf(a[4], 64, "%u", mx);
    snprintf(a[5], 64, "%s", model);
    argv[0] = tt_self;
    argv[1] = (char *)"--decode";
    for (i = 0; i < 6; i++) argv[2 + i] = a[i];
    argv[8] = NULL;
    if (tt_spawn_wrapped(pr, argv, extra_env)) return -1;
    if (!tt_expect(pr, "INITED ", line, sizeof line, 60)) {
        printf("  decode helper did not start: %s\n", line);
        return -1;
    }
    return 0;
}

/* Dispatches helper modes; returns -1 when argv names none. */
static TT_UNUSED int tt_helper_main(int argc, char **argv) {
    if (argc >= 9 && !strcmp(argv[1], "--prefill")) return tt_helper_prefill(argv);
    if (argc >= 8 && !strcmp(argv[1], "--decode")) return tt_helper_decode(argv);
    return -1;
}

#endif
