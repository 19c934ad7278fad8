/* rdma_test.h - what the rdma transport tests share: checks, a quiet
   logger, finding libsoftverbs.so, a small model pool, child processes
   (posix_spawn, safe in a threaded process and under TSan), and the two
   sides of a transfer run as child processes of the test ("peers") so a
   test can inject a fault into one side or kill it.

   Include after defining KVX_IMPLEMENTATION and KVX_WITH_RDMA. */
#ifndef KVX_RDMA_TEST_H
#define KVX_RDMA_TEST_H

#include "../../kvx_rdma.h"
#include "../kvx_proc.h"
#include "../../examples/kvx_example.h"
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
#include <sys/stat.h>
#include <sys/wait.h>

#if defined(__GNUC__) || defined(__clang__)
#define RT_UNUSED __attribute__((unused))
#else
#define RT_UNUSED
#endif


static const char *rt_name = "test";
static int rt_pass, rt_fail;

#define CHECK(cond, ...)                                                                      \
    do {                                                                                      \
        int rt_ok_ = (cond) ? 1 : 0;                                                          \
        if (rt_ok_) rt_pass++;                                                                \
        else rt_fail++;                                                                       \
        printf("%s ", rt_ok_ ? "ok  " : "FAIL");                                              \
        printf(__VA_ARGS__);                                                                  \
        printf("\n");                                                                         \
        fflush(stdout);                                                                       \
    } while (0)

static RT_UNUSED int rt_finish(void) {
    printf("%s: %d passed, %d failed\n", rt_name, rt_pass, rt_fail);
    fflush(stdout);
    return rt_fail ? 1 : 0;
}

static RT_UNUSED int rt_quick(void) {
    const char *q = getenv("KVX_TEST_QUICK");
    return q && *q && strcmp(q, "0");
}

static RT_UNUSED double rt_now(void) { return (double)kvx_now_ns() / 1e9; }

static RT_UNUSED void rt_sleep(double s) {
    struct timespec ts;
    ts.tv_sec = (time_t)s;
    ts.tv_nsec = (long)((s - (double)ts.tv_sec) * 1e9);
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {}
}

/* Errors are expected in these tests: quiet unless KVX_TEST_VERBOSE. */
static RT_UNUSED void rt_log(void *u, kvx_log_level lvl, const char *sub, uint64_t room,
                             const char *msg) {
    static const char *names[] = {"", "ERROR", "WARN", "INFO", "DEBUG"};
    (void)u;
    if (getenv("KVX_TEST_VERBOSE"))
        fprintf(stderr, "  [%d %s %s room=%llu] %s\n", (int)getpid(), names[lvl & 7 ? lvl : 0], sub,
                (unsigned long long)room, msg);
}

static RT_UNUSED void rt_self(char *out, size_t n) {
    ssize_t l = readlink("/proc/self/exe", out, n - 1);
    if (l > 0) out[l] = 0;
    else snprintf(out, n, "./test");
}

/* libsoftverbs.so next to the test binary (sanitizer builds have their own
   instrumented one), else the repository's tests/softverbs/libsoftverbs.so.
   Writes an absolute path; 0 when none is found. */
static RT_UNUSED int rt_find_softverbs(char *out, size_t n) {
    char self[2048], dir[2048], cand[3072];
    const char *env = getenv("SOFTVERBS_LIB");
    char *slash;
    struct stat st;
    const char *rel[4] = {"/libsoftverbs.so", "/../tests/softverbs/libsoftverbs.so",
                          "/../../tests/softverbs/libsoftverbs.so", NULL};
    int i;
    if (env && *env && stat(env, &st) == 0) { snprintf(out, n, "%s", env); return 1; }
    rt_self(self, sizeof self);
    snprintf(dir, sizeof dir, "%s", self);
    slash = strrchr(dir, '/');
    if (slash) *slash = 0;
    for (i = 0; rel[i]; i++) {
        snprintf(cand, sizeof cand, "%s%s", dir, rel[i]);
        if (stat(cand, &st) == 0) {
            char *rp = realpath(cand, NULL);
            snprintf(out, n, "%s", rp ? rp : cand);
            free(rp);
            return 1;
        }
    }
    if (stat("tests/softverbs/libsoftverbs.so", &st) == 0) {
        char *rp = realpath("tests/softverbs/libsoftverbs.so", NULL);
        snprintf(out, n, "%s", rp ? rp : "tests/softverbs/libsoftverbs.so");
        free(rp);
        return 1;
    }
    return 0;
}

/* In-process tests (both engines in this process): softverbs found into
   lib (n bytes), its directory and the verbs library in the environment,
   no key; 0, or 77 after the SKIP line when softverbs is missing. */
static RT_UNUSED int rt_inproc(const char *name, char *lib, size_t n) {
    static char svdir[128];
    rt_name = name;
    setvbuf(stdout, NULL, _IOLBF, 0);
    signal(SIGPIPE, SIG_IGN);
    if (!rt_find_softverbs(lib, n))
        return printf("SKIP: libsoftverbs.so not found (make tests/softverbs/libsoftverbs.so)\n"), 77;
    snprintf(svdir, sizeof svdir, "/tmp/kvx_test_%d_sv", (int)getpid());
    setenv("SOFTVERBS_DIR", svdir, 1);
    setenv("KVX_IBVERBS_LIBRARY", lib, 1);
    unsetenv("KVX_AUTH_KEY");
    unsetenv("KVX_AUTH_KEY_FILE");
    return 0;
}

/* A fake dma-buf exporter (desc.mem.dmabuf_fd) handing out a pipe, kept in
   rt_fd_given: softverbs cannot map it (EOPNOTSUPP), which must surface as
   a sentence; the transport closes it. */
static int rt_fd_given = -1;
static RT_UNUSED kvx_result rt_fake_dmabuf(void *ctx, void *ptr, uint64_t len, int dev, int *fd,
                                           uint64_t *off, char *why, size_t wl) {
    int pp[2];
    (void)ctx; (void)ptr; (void)len; (void)dev; (void)why; (void)wl;
    if (pipe(pp)) return KVX_ERR_TRANSPORT;
    close(pp[1]);
    *fd = rt_fd_given = pp[0];
    *off = 0;
    return KVX_OK;
}

/* The model the tests move: 4 layers (8 buffers), 2 KV heads of 64, bf16:
   4 KiB pages at page size 16. */
static const ex_model rt_tiny = {"tiny", 4, 2, 64, 2, 0, "bfloat16"};
/* For the parallel layouts (model=1, model=2): 8 KV heads of 32 bytes
   (GQA, so TP 1..8 split the heads), and an MLA latent of 64 bytes. */
static const ex_model rt_gqa8 = {"gqa8", 4, 8, 16, 2, 0, "bfloat16"};
static const ex_model rt_mla = {"mla", 4, 1, 32, 2, 1, "bfloat16"};

static RT_UNUSED kvx_engine *rt_engine_rank(kvx_role role, const kvx_layout *l, const char *addr,
                                            const void *opts, char *why, size_t wl);
static RT_UNUSED kvx_engine *rt_engine(kvx_role role, const kvx_layout *l, const char *addr,
                                       char *why, size_t wl) {
    return rt_engine_rank(role, l, addr, NULL, why, wl);
}

static RT_UNUSED kvx_engine *rt_engine_rank(kvx_role role, const kvx_layout *l, const char *addr,
                                            const void *opts, char *why, size_t wl) {
    kvx_engine_desc d;
    kvx_engine *e = NULL;
    memset(&d, 0, sizeof d);
    d.role = role;
    d.transport = "rdma";
    d.layout = *l;
    d.logger.func = rt_log;
    d.logger.level = getenv("KVX_TEST_VERBOSE") ? KVX_LOG_DEBUG : KVX_LOG_WARN;
    d.boot.host = "127.0.0.1";
    d.boot.port = -1;
    d.bootstrap_addr = addr;
    d.poll_interval_us = 1000;
    if (opts) { /* rt_opts: this peer's place in its instance */
        /* tp size, tp rank, pp size, pp rank, port, dp size, dp rank */
        const int *o = (const int *)opts;
        d.boot.tp_size = o[0];
        d.boot.tp_rank = o[1];
        d.boot.pp_size = o[2];
        d.boot.pp_rank = o[3];
        if (role == KVX_ROLE_PREFILL) {
            d.boot.dp_size = o[5];
            d.boot.dp_rank = o[6];
        }
        if (role == KVX_ROLE_PREFILL && (o[1] || o[3] || o[6])) d.boot.port = o[4];
    }
    kvx_rdma_register();
    if (kvx_engine_create(&d, &e, why, wl) != KVX_OK) return NULL;
    return e;
}

/* ---- child processes --------------------------------------------------------- */

/* the shared helpers of tests/kvx_proc.h */
typedef kt_proc rt_proc;
#define rt_spawn kt_spawn
#define rt_readline kt_readline

/* 1 when the child has exited (reaped; its output can still be read). */
static RT_UNUSED int rt_exited(rt_proc *p, int *status) {
    int st = 0;
    if (p->pid <= 0) return 1;
    if (waitpid(p->pid, &st, WNOHANG) != p->pid) return 0;
    p->pid = -1;
    if (status) *status = st;
    return 1;
}

/* Closes its stdin and waits (SIGKILL after timeout). Exit status. */
static RT_UNUSED int rt_reap(rt_proc *p, double timeout) {
    double end = rt_now() + timeout;
    int st = -1;
    if (p->pid <= 0) return -1;
    if (p->in_fd > 0) { close(p->in_fd); p->in_fd = -1; }
    for (;;) {
        pid_t w = waitpid(p->pid, &st, WNOHANG);
        if (w == p->pid) break;
        if (rt_now() > end) {
            kill(p->pid, SIGKILL);
            waitpid(p->pid, &st, 0);
            break;
        }
        rt_sleep(0.01);
    }
    if (p->out_fd > 0) { close(p->out_fd); p->out_fd = -1; }
    p->pid = -1;
    return st;
}

/* ---- peers: one side of a transfer of many rooms, in a child process ---------- */

/* Both sides derive the same requests from the seed; the decode side
   verifies every byte. Options are "key=value" words after the role. */
typedef struct rt_opts {
    uint64_t seed;
    int rooms, min_tok, max_tok, chunk_pages, pace_ms, aux, consecutive, pool_pages;
    /* parallel layouts: the model (0 tiny, 1 gqa8, 2 mla), each instance's
       TP and PP sizes, and this peer's ranks in its own instance */
    int model, ptp, ppp, dtp, dpp, tpr, ppr;
    int pdp, dpr; /* prefill DP size and this prefill peer's dp rank (rooms room % pdp == dpr) */
    double timeout, first_wait;
    int port; /* decode: the prefill's bootstrap port */
} rt_opts;

static RT_UNUSED void rt_opts_default(rt_opts *o) {
    memset(o, 0, sizeof *o);
    o->seed = 1;
    o->rooms = 16;
    o->min_tok = 16;
    o->max_tok = 1024;
    o->chunk_pages = 8;
    o->aux = 1;
    o->timeout = 40;
    o->pool_pages = 0;
    o->ptp = o->ppp = o->dtp = o->dpp = o->pdp = 1;
}

static RT_UNUSED void rt_opts_parse(rt_opts *o, int argc, char **argv) {
    int i;
    for (i = 0; i < argc; i++) {
        const char *eq = strchr(argv[i], '=');
        double v;
        if (!eq) continue;
        v = atof(eq + 1);
        if (!strncmp(argv[i], "seed=", 5)) o->seed = strtoull(eq + 1, NULL, 10);
        else if (!strncmp(argv[i], "rooms=", 6)) o->rooms = (int)v;
        else if (!strncmp(argv[i], "min_tok=", 8)) o->min_tok = (int)v;
        else if (!strncmp(argv[i], "max_tok=", 8)) o->max_tok = (int)v;
        else if (!strncmp(argv[i], "chunk=", 6)) o->chunk_pages = (int)v;
        else if (!strncmp(argv[i], "pace_ms=", 8)) o->pace_ms = (int)v;
        else if (!strncmp(argv[i], "aux=", 4)) o->aux = (int)v;
        else if (!strncmp(argv[i], "consecutive=", 12)) o->consecutive = (int)v;
        else if (!strncmp(argv[i], "pool=", 5)) o->pool_pages = (int)v;
        else if (!strncmp(argv[i], "timeout=", 8)) o->timeout = v;
        else if (!strncmp(argv[i], "port=", 5)) o->port = (int)v;
        else if (!strncmp(argv[i], "model=", 6)) o->model = (int)v;
        else if (!strncmp(argv[i], "ptp=", 4)) o->ptp = (int)v;
        else if (!strncmp(argv[i], "ppp=", 4)) o->ppp = (int)v;
        else if (!strncmp(argv[i], "dtp=", 4)) o->dtp = (int)v;
        else if (!strncmp(argv[i], "dpp=", 4)) o->dpp = (int)v;
        else if (!strncmp(argv[i], "tpr=", 4)) o->tpr = (int)v;
        else if (!strncmp(argv[i], "ppr=", 4)) o->ppr = (int)v;
        else if (!strncmp(argv[i], "pdp=", 4)) o->pdp = (int)v;
        else if (!strncmp(argv[i], "dpr=", 4)) o->dpr = (int)v;
    }
}

typedef struct rt_room {
    uint64_t id;
    uint32_t pages;
    int32_t *idx;
    int32_t slot;
    kvx_sender *s;
    kvx_receiver *r;
    uint32_t sent;
    int inited;
    double next_send;
    int reported;
} rt_room;

/* This peer's pool: its rank's heads and layers of the model (SGLang's split). */
static RT_UNUSED int rt_pool(ex_pool *p, const rt_opts *o, ex_request *req, uint64_t seed,
                             int decode) {
    uint32_t need = 0;
    ex_rank rk;
    int i;
    for (i = 0; i < o->rooms; i++) need += req[i].pages;
    if (o->pool_pages > (int)need) need = (uint32_t)o->pool_pages;
    rk.tp = (uint32_t)(decode ? o->dtp : o->ptp);
    rk.pp = (uint32_t)(decode ? o->dpp : o->ppp);
    rk.tp_rank = (uint32_t)o->tpr;
    rk.pp_rank = (uint32_t)o->ppr;
    return ex_pool_init_rank(p, o->model == 1 ? &rt_gqa8 : o->model == 2 ? &rt_mla : &rt_tiny,
                             need + 8, 16, (uint32_t)o->rooms + 4, seed, &rk);
}

static RT_UNUSED void rt_emit(const rt_room *x, kvx_poll st, kvx_result res, const char *err,
                              uint64_t bad, int aux_ok) {
    printf("ROOM %llu %d %d %llu %d %s\n", (unsigned long long)x->id, (int)st, (int)res,
           (unsigned long long)bad, aux_ok, err && *err ? err : "-");
    fflush(stdout);
}

static RT_UNUSED void rt_wait_stdin(void) {
    char c;
    while (read(0, &c, 1) > 0) {}
}

static RT_UNUSED void rt_print_stats(kvx_engine *e) {
    kvx_rdma_stats s;
    if (kvx_rdma_stats_get(e, &s) != KVX_OK) return;
    printf("STATS chunks=%llu spans=%llu wrs=%llu imm=%llu zero=%llu posts=%llu signaled=%llu "
           "bytes=%llu imm_rx=%llu pairs=%llu\n",
           (unsigned long long)s.chunks, (unsigned long long)s.spans, (unsigned long long)s.wrs,
           (unsigned long long)s.imm_wrs, (unsigned long long)s.zero_len_wrs,
           (unsigned long long)s.posts, (unsigned long long)s.signaled,
           (unsigned long long)s.bytes, (unsigned long long)s.imm_received,
           (unsigned long long)s.pairs);
    fflush(stdout);
}

/* The prefill peer: prints PORT, sends every room (in chunks, paced),
   prints ROOM lines as they end, DONE, then waits for stdin EOF. */
static RT_UNUSED int rt_peer_prefill(const rt_opts *o) {
    ex_pool pool;
    ex_request *req = (ex_request *)calloc((size_t)o->rooms, sizeof *req);
    rt_room *rm = (rt_room *)calloc((size_t)o->rooms, sizeof *rm);
    kvx_engine *e;
    char why[KVX_ERROR_MAX];
    int i, left = o->rooms;
    double end;
    ex_requests(req, (uint32_t)o->rooms, o->seed, (uint32_t)o->min_tok, (uint32_t)o->max_tok, 16);
    int rank[7] = {o->ptp, o->tpr, o->ppp, o->ppr, o->port, o->pdp, o->dpr};
    if (rt_pool(&pool, o, req, o->seed * 3 + 1, 0)) return 2;
    e = rt_engine_rank(KVX_ROLE_PREFILL, &pool.layout, NULL, rank, why, sizeof why);
    if (!e) { printf("ERROR %s\n", why); fflush(stdout); return 2; }
    printf("PORT %d\n", kvx_boot_engine_port(e));
    fflush(stdout);
    for (i = 0; i < o->rooms; i++) {
        kvx_room_desc rd;
        rm[i].id = req[i].room;
        rm[i].pages = req[i].pages;
        rm[i].idx = (int32_t *)malloc(req[i].pages * sizeof(int32_t));
        if (o->consecutive) {
            uint32_t k, base = 0;
            int j;
            for (j = 0; j < i; j++) base += req[j].pages;
            for (k = 0; k < req[i].pages; k++) rm[i].idx[k] = (int32_t)(base + k);
        } else {
            ex_alloc_pages(&pool, rm[i].idx, req[i].pages);
        }
        rm[i].slot = o->aux ? ex_alloc_slot(&pool) : -1;
        ex_pages_pattern(&pool, rm[i].id, rm[i].idx, rm[i].pages, 1);
        if (rm[i].slot >= 0) ex_aux_write(&pool, rm[i].id, rm[i].slot);
        memset(&rd, 0, sizeof rd);
        rd.room = rm[i].id;
        if (o->pdp > 1 && rm[i].id % (uint64_t)o->pdp != (uint64_t)o->dpr) {
            rm[i].reported = 1; /* another prefill dp rank's room (room % dp_size) */
            left--;
            continue;
        }
        if (kvx_sender_create(e, &rd, &rm[i].s) != KVX_OK) { printf("ERROR sender\n"); return 2; }
    }
    end = rt_now() + o->timeout;
    while (left && rt_now() < end) {
        for (i = 0; i < o->rooms; i++) {
            rt_room *x = &rm[i];
            kvx_poll st;
            if (x->reported) continue;
            st = kvx_sender_poll(x->s);
            if (st == KVX_POLL_SUCCESS || st == KVX_POLL_FAILED) {
                rt_emit(x, st, kvx_sender_result(x->s), kvx_sender_error(x->s), 0, 1);
                x->reported = 1;
                left--;
                continue;
            }
            if (st == KVX_POLL_WAITING_FOR_INPUT && !x->inited) {
                kvx_sender_init(x->s, x->pages, x->slot);
                x->inited = 1;
                x->next_send = rt_now();
            }
            if (x->inited && x->sent < x->pages && rt_now() >= x->next_send) {
                uint32_t k = x->pages - x->sent;
                if (k > (uint32_t)o->chunk_pages) k = (uint32_t)o->chunk_pages;
                kvx_sender_send(x->s, x->idx + x->sent, k);
                x->sent += k;
                x->next_send = rt_now() + o->pace_ms / 1000.0;
            }
        }
        rt_sleep(0.001);
    }
    rt_print_stats(e);
    printf("DONE %d\n", left);
    fflush(stdout);
    rt_wait_stdin();
    for (i = 0; i < o->rooms; i++) kvx_sender_destroy(rm[i].s);
    kvx_engine_destroy(e);
    for (i = 0; i < o->rooms; i++) free(rm[i].idx);
    free(rm);
    free(req);
    ex_pool_free(&pool);
    return 0;
}

/* The decode peer: receives every room into scattered pages, verifies each
   room that reports Success (every token of every buffer and the aux row),
   prints ROOM lines, DONE, then waits for stdin EOF. */
static RT_UNUSED int rt_peer_decode(const rt_opts *o) {
    ex_pool pool;
    ex_request *req = (ex_request *)calloc((size_t)o->rooms, sizeof *req);
    rt_room *rm = (rt_room *)calloc((size_t)o->rooms, sizeof *rm);
    kvx_engine *e;
    char why[KVX_ERROR_MAX], addr[64];
    int i, left = o->rooms;
    double end;
    ex_requests(req, (uint32_t)o->rooms, o->seed, (uint32_t)o->min_tok, (uint32_t)o->max_tok, 16);
    int rank[7] = {o->dtp, o->tpr, o->dpp, o->ppr, o->port, 1, 0};
    if (rt_pool(&pool, o, req, o->seed * 7 + 5, 1)) return 2;
    snprintf(addr, sizeof addr, "127.0.0.1:%d", o->port);
    e = rt_engine_rank(KVX_ROLE_DECODE, &pool.layout, addr, rank, why, sizeof why);
    if (!e) { printf("ERROR %s\n", why); fflush(stdout); return 2; }
    for (i = 0; i < o->rooms; i++) {
        kvx_room_desc rd;
        rm[i].id = req[i].room;
        rm[i].pages = req[i].pages;
        rm[i].idx = (int32_t *)malloc(req[i].pages * sizeof(int32_t));
        if (o->consecutive) {
            uint32_t k, base = 0;
            int j;
            for (j = 0; j < i; j++) base += req[j].pages;
            for (k = 0; k < req[i].pages; k++) rm[i].idx[k] = (int32_t)(base + k + 3);
        } else {
            ex_alloc_pages(&pool, rm[i].idx, req[i].pages);
        }
        rm[i].slot = o->aux ? ex_alloc_slot(&pool) : -1;
        if (rm[i].slot >= 0) ex_aux_clear(&pool, rm[i].slot);
        memset(&rd, 0, sizeof rd);
        rd.room = rm[i].id;
        if (kvx_receiver_create(e, &rd, &rm[i].r) != KVX_OK) { printf("ERROR receiver\n"); return 2; }
    }
    end = rt_now() + o->timeout;
    while (left && rt_now() < end) {
        for (i = 0; i < o->rooms; i++) {
            rt_room *x = &rm[i];
            kvx_poll st = kvx_receiver_poll(x->r);
            if (x->reported) continue;
            if (st == KVX_POLL_WAITING_FOR_INPUT && !x->inited) {
                kvx_receiver_init(x->r, x->idx, x->pages, x->slot);
                x->inited = 1;
            } else if (st == KVX_POLL_SUCCESS || st == KVX_POLL_FAILED) {
                uint64_t bad = 0;
                int aux_ok = 1;
                if (st == KVX_POLL_SUCCESS) {
                    bad = ex_pages_pattern(&pool, x->id, x->idx, x->pages, 0);
                    if (x->slot >= 0) aux_ok = ex_aux_check(&pool, x->id, x->slot);
                }
                rt_emit(x, st, kvx_receiver_result(x->r), kvx_receiver_error(x->r), bad, aux_ok);
                x->reported = 1;
                left--;
            }
        }
        rt_sleep(0.001);
    }
    rt_print_stats(e);
    printf("DONE %d\n", left);
    fflush(stdout);
    rt_wait_stdin();
    for (i = 0; i < o->rooms; i++) kvx_receiver_destroy(rm[i].r);
    kvx_engine_destroy(e);
    for (i = 0; i < o->rooms; i++) free(rm[i].idx);
    free(rm);
    free(req);
    ex_pool_free(&pool);
    return 0;
}

/* A test's main calls this first: "peer prefill|decode opts..." runs a peer. */
static RT_UNUSED int rt_peer_main(int argc, char **argv, int *handled) {
    rt_opts o;
    *handled = 0;
    if (argc < 3 || strcmp(argv[1], "peer")) return 0;
    *handled = 1;
    signal(SIGPIPE, SIG_IGN);
    rt_opts_default(&o);
    rt_opts_parse(&o, argc - 3, argv + 3);
    if (!strcmp(argv[2], "prefill")) return rt_peer_prefill(&o);
    return rt_peer_decode(&o);
}

/* ---- the parent's side of a two-process run ----------------------------------- */

typedef struct rt_result {
    int rooms, success, failed, corrupt, unreported;
    int prefill_success, prefill_failed;
    char first_error[KVX_ERROR_MAX];     /* decode */
    char prefill_error[KVX_ERROR_MAX];
    char errors[8192];                   /* every distinct decode error, for CHECK_STR */
    char stats[4096], prefill_stats[4096];
    double elapsed, teardown;
} rt_result;

/* Parses a ROOM line into the result of one side. */
static RT_UNUSED void rt_account(rt_result *r, const char *line, int decode) {
    unsigned long long id, bad;
    int st, res, aux_ok, off = 0;
    if (sscanf(line, "ROOM %llu %d %d %llu %d %n", &id, &st, &res, &bad, &aux_ok, &off) < 5) return;
    if (decode) {
        if (st == KVX_POLL_SUCCESS) {
            r->success++;
            if (bad || !aux_ok) r->corrupt++;
        } else {
            r->failed++;
            if (!r->first_error[0]) snprintf(r->first_error, sizeof r->first_error, "%s", line + off);
            if (!strstr(r->errors, line + off) && strlen(r->errors) + strlen(line + off) + 3 < sizeof r->errors) {
                strcat(r->errors, line + off);
                strcat(r->errors, " | ");
            }
        }
    } else {
        if (st == KVX_POLL_SUCCESS) r->prefill_success++;
        else {
            r->prefill_failed++;
            if (!r->prefill_error[0]) snprintf(r->prefill_error, sizeof r->prefill_error, "%s", line + off);
        }
    }
}

typedef struct rt_run {
    const char *softverbs;
    const char *svdir;
    const char *opts[16];         /* both sides */
    const char *prefill_env[8], *decode_env[8];
    double kill_prefill_after;    /* seconds after start, 0 = never */
    double kill_decode_after;
    double limit;                 /* seconds for everything */
} rt_run;

static RT_UNUSED void rt_run_init(rt_run *r, const char *softverbs, const char *svdir) {
    memset(r, 0, sizeof *r);
    r->softverbs = softverbs;
    r->svdir = svdir;
    r->limit = 60;
}

/* Runs a prefill peer and a decode peer; fills res. 0 when both ran. */
static RT_UNUSED int rt_two(const rt_run *run, rt_result *res) {
    char self[4096], lib[4200], dir[4200], portarg[32], line[4096];
    char *pargv[24], *dargv[24], *penv[12], *denv[12];
    rt_proc pp, dp;
    int np = 0, nd = 0, i, port = 0, pdone = 0, ddone = 0, pkilled = 0, dkilled = 0;
    double start, end;
    memset(res, 0, sizeof *res);
    rt_self(self, sizeof self);
    snprintf(lib, sizeof lib, "KVX_IBVERBS_LIBRARY=%s", run->softverbs);
    snprintf(dir, sizeof dir, "SOFTVERBS_DIR=%s", run->svdir);
    pargv[np++] = self; pargv[np++] = (char *)"peer"; pargv[np++] = (char *)"prefill";
    dargv[nd++] = self; dargv[nd++] = (char *)"peer"; dargv[nd++] = (char *)"decode";
    for (i = 0; run->opts[i]; i++) { pargv[np++] = (char *)run->opts[i]; dargv[nd++] = (char *)run->opts[i]; }
    pargv[np] = NULL;
    np = 0;
    penv[np++] = lib; penv[np++] = dir;
    for (i = 0; run->prefill_env[i]; i++) penv[np++] = (char *)run->prefill_env[i];
    penv[np] = NULL;
    nd = 0;
    denv[nd++] = lib; denv[nd++] = dir;
    for (i = 0; run->decode_env[i]; i++) denv[nd++] = (char *)run->decode_env[i];
    denv[nd] = NULL;
    start = rt_now();
    if (rt_spawn(&pp, pargv, penv)) { printf("cannot spawn the prefill peer\n"); return -1; }
    if (!rt_readline(&pp, line, sizeof line, 30) || sscanf(line, "PORT %d", &port) != 1) {
        printf("prefill peer did not start: %s\n", line);
        rt_reap(&pp, 5);
        return -1;
    }
    for (i = 0; dargv[i]; i++) {}
    snprintf(portarg, sizeof portarg, "port=%d", port);
    dargv[i++] = portarg;
    dargv[i] = NULL;
    if (rt_spawn(&dp, dargv, denv)) { printf("cannot spawn the decode peer\n"); rt_reap(&pp, 5); return -1; }
    end = start + run->limit;
    while ((!pdone || !ddone) && rt_now() < end) {
        double t = rt_now() - start;
        if (run->kill_prefill_after > 0 && !pkilled && t >= run->kill_prefill_after) {
            kill(pp.pid, SIGKILL);
            pkilled = 1;
            pdone = 1;
        }
        if (run->kill_decode_after > 0 && !dkilled && t >= run->kill_decode_after) {
            kill(dp.pid, SIGKILL);
            dkilled = 1;
            ddone = 1;
        }
        if (!ddone && rt_readline(&dp, line, sizeof line, 0.005)) {
            if (!strncmp(line, "ROOM ", 5)) { res->rooms++; rt_account(res, line, 1); }
            else if (!strncmp(line, "STATS ", 6)) snprintf(res->stats, sizeof res->stats, "%s", line + 6);
            else if (!strncmp(line, "DONE ", 5)) { res->unreported += atoi(line + 5); ddone = 1; }
            else if (!strncmp(line, "ERROR", 5)) { printf("decode peer: %s\n", line); ddone = 1; }
        }
        if (!pdone && rt_readline(&pp, line, sizeof line, 0.005)) {
            if (!strncmp(line, "ROOM ", 5)) rt_account(res, line, 0);
            else if (!strncmp(line, "STATS ", 6))
                snprintf(res->prefill_stats, sizeof res->prefill_stats, "%s", line + 6);
            else if (!strncmp(line, "DONE ", 5)) pdone = 1;
            else if (!strncmp(line, "ERROR", 5)) { printf("prefill peer: %s\n", line); pdone = 1; }
        }
        /* a peer that crashed: take what it printed, then stop waiting */
        for (i = 0; i < 2; i++) {
            rt_proc *x = i ? &pp : &dp;
            int *done = i ? &pdone : &ddone, st = 0;
            if (*done || x->pid <= 0 || (i ? pkilled : dkilled) || !rt_exited(x, &st)) continue;
            while (rt_readline(x, line, sizeof line, 0.2)) {
                if (!strncmp(line, "ROOM ", 5)) { if (!i) res->rooms++; rt_account(res, line, !i); }
                else if (!i && !strncmp(line, "DONE ", 5)) res->unreported += atoi(line + 5);
            }
            printf("   the %s peer exited early (status %d); stopping the other\n",
                   i ? "prefill" : "decode", st);
            *done = 1;
            if (!i) res->unreported = -1;
            if (i ? dp.pid > 0 : pp.pid > 0) kill(i ? dp.pid : pp.pid, SIGKILL);
            pdone = ddone = 1;
        }
    }
    res->elapsed = rt_now() - start;
    if (!ddone) res->unreported = -1;
    {
        double t0 = rt_now(), t1;
        rt_reap(&dp, 20);
        t1 = rt_now();
        rt_reap(&pp, 20);
        res->teardown = rt_now() - t0;
        if (getenv("KVX_TEST_VERBOSE") || rt_now() - t0 > 3)
            printf("   (teardown: decode %.1f s, prefill %.1f s)\n", t1 - t0, rt_now() - t1);
    }
    return 0;
}

/* A field of a STATS line ("wrs=123 ..."). */
static RT_UNUSED unsigned long long rt_stat(const char *stats, const char *key) {
    char k[64];
    const char *p;
    snprintf(k, sizeof k, "%s=", key);
    p = strstr(stats, k);
    return p ? strtoull(p + strlen(k), NULL, 10) : 0;
}

/* ---- the parent's side of a run of several ranks (parallel layouts) ---------- */

#define RT_MAX_RANKS 16

typedef struct rt_topo {
    const char *softverbs, *svdir;
    int model, ptp, ppp, dtp, dpp;
    int pdp;                       /* prefill DP size (0 = 1): ptp * ppp ranks per dp rank */
    const char *opts[12];          /* every peer */
    const char *prefill_env[4];
    int kill_prefill;              /* prefill process index to SIGKILL, -1 none */
    double kill_after;             /* seconds after its first ROOM-less start */
    double limit;
} rt_topo;

typedef struct rt_topo_result {
    int procs_ok;                  /* every peer started and reported DONE (killed ones aside) */
    int dec_rooms, dec_success, dec_failed, dec_corrupt;
    int pre_success, pre_failed;
    unsigned long long wrs, bytes, imm, zero, bytes_rx;
    char first_error[KVX_ERROR_MAX], prefill_error[KVX_ERROR_MAX];
    char errors[8192];
    double elapsed;
} rt_topo_result;

static RT_UNUSED void rt_topo_init(rt_topo *t, const char *softverbs, const char *svdir) {
    memset(t, 0, sizeof *t);
    t->softverbs = softverbs;
    t->svdir = svdir;
    t->ptp = t->ppp = t->dtp = t->dpp = 1;
    t->kill_prefill = -1;
    t->limit = 90;
}

static RT_UNUSED int rt_topo_spawn(const rt_topo *t, rt_proc *p, int decode, int tpr, int ppr,
                                   int dpr, int port) {
    char self[4096], lib[4200], dir[4200], a[10][48];
    char *argv[32], *env[8];
    int n = 0, i, ne = 0;
    rt_self(self, sizeof self);
    snprintf(lib, sizeof lib, "KVX_IBVERBS_LIBRARY=%s", t->softverbs);
    snprintf(dir, sizeof dir, "SOFTVERBS_DIR=%s", t->svdir);
    argv[n++] = self;
    argv[n++] = (char *)"peer";
    argv[n++] = (char *)(decode ? "decode" : "prefill");
    snprintf(a[0], sizeof a[0], "model=%d", t->model);
    snprintf(a[1], sizeof a[1], "ptp=%d", t->ptp);
    snprintf(a[2], sizeof a[2], "ppp=%d", t->ppp);
    snprintf(a[3], sizeof a[3], "dtp=%d", t->dtp);
    snprintf(a[4], sizeof a[4], "dpp=%d", t->dpp);
    snprintf(a[5], sizeof a[5], "tpr=%d", tpr);
    snprintf(a[6], sizeof a[6], "ppr=%d", ppr);
    snprintf(a[7], sizeof a[7], "port=%d", port);
    snprintf(a[8], sizeof a[8], "pdp=%d", t->pdp > 1 ? t->pdp : 1);
    snprintf(a[9], sizeof a[9], "dpr=%d", dpr);
    for (i = 0; i < 10; i++) argv[n++] = a[i];
    for (i = 0; t->opts[i]; i++) argv[n++] = (char *)t->opts[i];
    argv[n] = NULL;
    env[ne++] = lib;
    env[ne++] = dir;
    for (i = 0; !decode && t->prefill_env[i]; i++) env[ne++] = (char *)t->prefill_env[i];
    env[ne] = NULL;
    return rt_spawn(p, argv, env);
}

static RT_UNUSED void rt_topo_line(rt_topo_result *r, const char *line, int decode) {
    rt_result one;
    memset(&one, 0, sizeof one);
    if (!strncmp(line, "ROOM ", 5)) {
        rt_account(&one, line, decode);
        r->dec_rooms += decode;
        r->dec_success += one.success;
        r->dec_failed += one.failed;
        r->dec_corrupt += one.corrupt;
        r->pre_success += one.prefill_success;
        r->pre_failed += one.prefill_failed;
        if (one.first_error[0]) {
            if (!r->first_error[0]) snprintf(r->first_error, sizeof r->first_error, "%s", one.first_error);
            if (!strstr(r->errors, one.first_error) &&
                strlen(r->errors) + strlen(one.first_error) + 3 < sizeof r->errors) {
                strcat(r->errors, one.first_error);
                strcat(r->errors, " | ");
            }
        }
        if (one.prefill_error[0] && !r->prefill_error[0])
            snprintf(r->prefill_error, sizeof r->prefill_error, "%s", one.prefill_error);
    } else if (!strncmp(line, "STATS ", 6)) {
        r->wrs += rt_stat(line + 6, "wrs");
        r->bytes += rt_stat(line + 6, "bytes");
        r->imm += rt_stat(line + 6, "imm");
        r->zero += rt_stat(line + 6, "zero");
    } else if (!strncmp(line, "ERROR", 5)) {
        printf("   %s peer: %s\n", decode ? "decode" : "prefill", line);
    }
}

/* Runs ptp * ppp * pdp prefill ranks and dtp * dpp decode ranks, one process each. */
static RT_UNUSED int rt_topo_run(const rt_topo *t, rt_topo_result *r) {
    rt_proc pr[RT_MAX_RANKS], dr[RT_MAX_RANKS];
    int np = t->ptp * t->ppp * (t->pdp > 1 ? t->pdp : 1), nd = t->dtp * t->dpp, i, port = 0, left, killed = 0;
    int pdone[RT_MAX_RANKS] = {0}, ddone[RT_MAX_RANKS] = {0};
    char line[4096];
    double start = rt_now(), end = start + t->limit;
    memset(r, 0, sizeof *r);
    if (np > RT_MAX_RANKS || nd > RT_MAX_RANKS) return -1;
    for (i = 0; i < np; i++) {
        if (rt_topo_spawn(t, &pr[i], 0, i % t->ptp, (i / t->ptp) % t->ppp, i / (t->ptp * t->ppp),
                          port))
            return -1;
        int pport = 0;
        if (!rt_readline(&pr[i], line, sizeof line, 30) || sscanf(line, "PORT %d", &pport) != 1) {
            printf("   prefill rank %d did not start: %s\n", i, line);
            return -1;
        }
        if (!i) port = pport;
    }
    for (i = 0; i < nd; i++)
        if (rt_topo_spawn(t, &dr[i], 1, i % t->dtp, i / t->dtp, 0, port)) return -1;
    left = np + nd;
    while (left && rt_now() < end) {
        int got = 0;
        if (t->kill_prefill >= 0 && !killed && rt_now() - start >= t->kill_after) {
            kill(pr[t->kill_prefill].pid, SIGKILL);
            killed = 1;
            pdone[t->kill_prefill] = 1;
            left--;
        }
        for (i = 0; i < np + nd; i++) {
            int dec = i >= np, k = dec ? i - np : i, st = 0;
            rt_proc *p = dec ? &dr[k] : &pr[k];
            int *done = dec ? &ddone[k] : &pdone[k];
            if (*done) continue;
            while (rt_readline(p, line, sizeof line, 0.002)) {
                got = 1;
                rt_topo_line(r, line, dec);
                if (!strncmp(line, "DONE ", 5) || !strncmp(line, "ERROR", 5)) {
                    *done = 1;
                    left--;
                    break;
                }
            }
            if (!*done && rt_exited(p, &st)) {
                while (rt_readline(p, line, sizeof line, 0.2)) rt_topo_line(r, line, dec);
                printf("   %s rank %d exited early (status %d)\n", dec ? "decode" : "prefill", k, st);
                *done = 1;
                left--;
            }
        }
        (void)got;
    }
    r->procs_ok = !left;
    r->elapsed = rt_now() - start;
    for (i = 0; i < nd; i++) rt_reap(&dr[i], 20);
    for (i = 0; i < np; i++) rt_reap(&pr[i], 20);
    return 0;
}

#endif
