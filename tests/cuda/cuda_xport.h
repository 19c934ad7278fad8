/* cuda_xport.h - what the cuda transport tests share: engines on 127.0.0.1
   whose KV pools are in (fake or real) GPU memory, the prefill and decode
   sides of a transfer, and helper processes. A helper is this same test
   binary run again in a helper mode (posix_spawn of /proc/self/exe), so the
   plain, ASan and TSan builds run the same code on both sides, and no
   process forks after it started using the driver.

   Include after kvx_cuda.h (with KVX_IMPLEMENTATION) and cuda_test.h. */
#ifndef KVX_CUDA_XPORT_H
#define KVX_CUDA_XPORT_H

#include "../../examples/kvx_example.h"
#include <fcntl.h>
#include <poll.h>
#include <spawn.h>
#include <sys/prctl.h>

extern char **environ;

/* Every check prints a line (the sentences in them are the point). */
#undef CHECK
#define CHECK(cond, ...)                                                                       \
    do {                                                                                       \
        int cx_ok_ = (cond) ? 1 : 0;                                                           \
        if (cx_ok_) kt_pass++;                                                                 \
        else kt_fail++;                                                                        \
        printf(cx_ok_ ? "ok   " : "FAIL %s:%d: ", __FILE__, __LINE__);                         \
        printf(__VA_ARGS__);                                                                   \
        printf("\n");                                                                          \
        fflush(stdout);                                                                        \
    } while (0)

/* tiny: 8 buffers of 4 KiB pages; llama-3.1-8b: 64 buffers of 32 KiB pages */
static const ex_model cx_tiny = {"tiny", 4, 2, 64, 2, 0, "bfloat16"};
/* for parallel layouts: 4 layers, 8 KV heads of 32 bytes; the MLA shape:
   one 128-byte latent */
static KT_UNUSED const ex_model cx_mha8 = {"mha8", 4, 8, 16, 2, 0, "bfloat16"};
static KT_UNUSED const ex_model cx_mla = {"mla", 4, 1, 64, 2, 1, "bfloat16"};
static char cx_self[4096];

static KT_UNUSED const ex_model *cx_model(const char *name) {
    return strcmp(name, "tiny") ? ex_model_find(name) : &cx_tiny;
}

static KT_UNUSED double cx_now(void) { return (double)kvx_now_ns() / 1e9; }

static KT_UNUSED void cx_sleep(double s) {
    struct timespec ts;
    ts.tv_sec = (time_t)s;
    ts.tv_nsec = (long)((s - (double)ts.tv_sec) * 1e9);
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {}
}

static KT_UNUSED int cx_terminal(kvx_poll p) { return p == KVX_POLL_FAILED || p == KVX_POLL_SUCCESS; }

/* Failures are expected in these tests: quiet unless KVX_TEST_VERBOSE. */
static void cx_log(void *u, kvx_log_level lvl, const char *sub, uint64_t room, const char *msg) {
    static const char *names[] = {"", "ERROR", "WARN", "INFO", "DEBUG"};
    (void)u;
    if (getenv("KVX_TEST_VERBOSE"))
        fprintf(stderr, "  [%d %s %s room=%llu] %s\n", (int)getpid(), names[lvl & 7 ? lvl : 0], sub,
                (unsigned long long)room, msg);
}

/* ---- one side: a pool in GPU memory and an engine ------------------------------ */

typedef struct cx_side {
    ex_pool pool;
    ex_gpu gpu;
    void *each[KVX_MAX_BUFFERS]; /* one allocation per buffer (each = 1) */
    int each_mode;
    kvx_engine *e;
    ex_request *reqs;
    uint32_t nreq;
} cx_side;

/* The pool of ex_gpu_init, or with each = 1 one cuMemAlloc per buffer (as
   engines that allocate one tensor per layer). Zeroed on the fake driver. */
static KT_UNUSED int cx_gpu_pool(cx_side *s, int each, char *why, size_t wl) {
    kvx_cuda *cu;
    uint32_t b;
    if (ex_gpu_init(&s->gpu, &s->pool, why, wl)) return -1;
    s->each_mode = each;
    if (!each) return 0;
    cu = kvx_cuda_from_mem_ops(&s->gpu.ops);
    kvx_cuda_free(cu, 0, s->gpu.mem);
    s->gpu.mem = NULL;
    for (b = 0; b < s->pool.layout.num_buffers; b++) {
        if (kvx_cuda_alloc(cu, 0, (size_t)s->pool.bufs[b].length, &s->each[b], why, wl)) return -1;
        s->pool.bufs[b].base = s->each[b];
    }
    return 0;
}

static KT_UNUSED kvx_engine *cx_engine(kvx_role role, const kvx_layout *l, const kvx_mem_ops *mem,
                                       const char *boot_addr, char *why, size_t wl) {
    kvx_engine_desc d;
    kvx_engine *e = NULL;
    memset(&d, 0, sizeof d);
    d.role = role;
    d.transport = "cuda";
    d.layout = *l;
    d.logger.func = cx_log;
    d.logger.level = getenv("KVX_TEST_VERBOSE") ? KVX_LOG_DEBUG : KVX_LOG_WARN;
    d.boot.host = "127.0.0.1";
    d.boot.port = -1;
    d.bootstrap_addr = boot_addr;
    d.poll_interval_us = 2000;
    if (mem) d.mem = *mem;
    kvx_cuda_register();
    why[0] = 0;
    if (kvx_engine_create(&d, &e, why, wl) != KVX_OK) return NULL;
    return e;
}

/* Requests from a seed (both sides derive the same), a GPU pool that holds
   them all with slack, an engine. */
static KT_UNUSED int cx_side_init(cx_side *s, kvx_role role, const char *model, uint64_t seed,
                                  uint32_t nreq, uint32_t mn, uint32_t mx, int each,
                                  const char *boot_addr, char *why, size_t wl) {
    uint32_t pages = nreq * ((mx + 15) / 16) + 16; /* any batch of nreq requests fits */
    memset(s, 0, sizeof *s);
    s->nreq = nreq;
    s->reqs = (ex_request *)calloc(nreq ? nreq : 1, sizeof *s->reqs);
    ex_requests(s->reqs, nreq, seed, mn, mx, 16);
    if (ex_pool_init(&s->pool, cx_model(model), pages, 16, nreq + 2,
                     seed * 3 + (role == KVX_ROLE_PREFILL ? 1 : 2))) {
        snprintf(why, wl, "out of memory for the pool");
        return -1;
    }
    if (cx_gpu_pool(s, each, why, wl)) return -1;
    s->e = cx_engine(role, &s->pool.layout, &s->gpu.ops, boot_addr, why, wl);
    return s->e ? 0 : -1;
}

static KT_UNUSED void cx_side_free(cx_side *s) {
    uint32_t b;
    kvx_engine_destroy(s->e);
    if (s->each_mode) {
        kvx_cuda *cu = kvx_cuda_from_mem_ops(&s->gpu.ops);
        for (b = 0; b < s->pool.layout.num_buffers; b++) kvx_cuda_free(cu, 0, s->each[b]);
    }
    ex_gpu_free(&s->gpu, &s->pool);
    ex_pool_free(&s->pool);
    free(s->reqs);
    memset(s, 0, sizeof *s);
}

/* ---- the prefill side of a batch of rooms ------------------------------------- */

typedef struct cx_batch {
    kvx_sender **s;
    kvx_receiver **r;
    int32_t **pages;
    int32_t *slot;
    int *started;
    uint32_t ok, failed, verified;
    char first_err[KVX_ERROR_MAX];
} cx_batch;

static KT_UNUSED void cx_batch_alloc(cx_batch *b, uint32_t n) {
    memset(b, 0, sizeof *b);
    b->s = (kvx_sender **)calloc(n + 1, sizeof *b->s);
    b->r = (kvx_receiver **)calloc(n + 1, sizeof *b->r);
    b->pages = (int32_t **)calloc(n + 1, sizeof *b->pages);
    b->slot = (int32_t *)calloc(n + 1, sizeof *b->slot);
    b->started = (int *)calloc(n + 1, sizeof *b->started);
}

/* Called once the prefill batch has filled its pages (fault injection). */
static void (*cx_after_fill)(void);

#define CX_PARTIAL 1  /* every chunk but the last: the rooms stay in flight */
#define CX_ANNOUNCE 2 /* print "SENT n" once every room has queued its chunks */

/* Senders for every request: pages filled as prefill leaves them, aux rows
   written; each sends its pages in chunks of `chunk` once its destination
   arrived. Returns when every room is terminal (CX_PARTIAL: once every
   room has sent what it will). */
static KT_UNUSED void cx_prefill_batch(cx_side *sd, cx_batch *b, uint32_t chunk, double timeout,
                                       int flags) {
    uint32_t i, done, nstarted = 0;
    int stop_before_last = flags & CX_PARTIAL;
    double end = cx_now() + timeout;
    cx_batch_alloc(b, sd->nreq);
    for (i = 0; i < sd->nreq; i++) {
        kvx_room_desc rd;
        memset(&rd, 0, sizeof rd);
        rd.room = sd->reqs[i].room;
        b->pages[i] = (int32_t *)malloc((sd->reqs[i].pages + 1) * sizeof(int32_t));
        ex_alloc_pages(&sd->pool, b->pages[i], sd->reqs[i].pages);
        ex_request_pages(&sd->gpu, &sd->pool, rd.room, b->pages[i], sd->reqs[i].pages, 1);
        b->slot[i] = ex_alloc_slot(&sd->pool);
        ex_aux_write(&sd->pool, rd.room, b->slot[i]);
        kvx_sender_create(sd->e, &rd, &b->s[i]);
    }
    if (cx_after_fill) cx_after_fill();
    do {
        done = 0;
        for (i = 0; i < sd->nreq; i++) {
            kvx_poll st = kvx_sender_poll(b->s[i]);
            if (!b->started[i] && st == KVX_POLL_WAITING_FOR_INPUT) {
                uint32_t sent = 0, n = sd->reqs[i].pages, lim = n;
                b->started[i] = 1;
                if (stop_before_last) lim = n > chunk ? n - (n % chunk ? n % chunk : chunk) : 0;
                if (kvx_sender_init(b->s[i], n, b->slot[i]) == KVX_OK) {
                    while (sent < lim) {
                        uint32_t k = lim - sent < chunk ? lim - sent : chunk;
                        if (kvx_sender_send(b->s[i], b->pages[i] + sent, k) != KVX_OK) break;
                        sent += k;
                    }
                }
                if (++nstarted == sd->nreq && (flags & CX_ANNOUNCE)) {
                    printf("SENT %u\n", nstarted);
                    fflush(stdout);
                }
            }
            st = kvx_sender_poll(b->s[i]);
            if (cx_terminal(st) || (stop_before_last && b->started[i])) done++;
        }
        if (done < sd->nreq) cx_sleep(0.001);
    } while (done < sd->nreq && cx_now() < end);
    for (i = 0; i < sd->nreq; i++) {
        kvx_poll st = kvx_sender_poll(b->s[i]);
        if (st == KVX_POLL_SUCCESS) b->ok++;
        else if (st == KVX_POLL_FAILED) {
            b->failed++;
            if (!b->first_err[0])
                snprintf(b->first_err, sizeof b->first_err, "%s", kvx_sender_error(b->s[i]));
        }
    }
}

/* Waits for the senders of a partial batch to become terminal. */
static KT_UNUSED void cx_prefill_wait(cx_side *sd, cx_batch *b, double timeout) {
    double end = cx_now() + timeout;
    uint32_t i, done;
    do {
        for (done = 0, i = 0; i < sd->nreq; i++) done += cx_terminal(kvx_sender_poll(b->s[i]));
        if (done < sd->nreq) cx_sleep(0.001);
    } while (done < sd->nreq && cx_now() < end);
    b->ok = b->failed = 0;
    for (i = 0; i < sd->nreq; i++) {
        kvx_poll st = kvx_sender_poll(b->s[i]);
        if (st == KVX_POLL_SUCCESS) b->ok++;
        if (st == KVX_POLL_FAILED) {
            b->failed++;
            if (!b->first_err[0])
                snprintf(b->first_err, sizeof b->first_err, "%s", kvx_sender_error(b->s[i]));
        }
    }
}

static KT_UNUSED void cx_batch_free(cx_side *sd, cx_batch *b) {
    uint32_t i;
    for (i = 0; i < sd->nreq; i++) {
        if (b->s) kvx_sender_destroy(b->s[i]);
        if (b->r) kvx_receiver_destroy(b->r[i]);
        if (b->pages && b->pages[i]) {
            ex_free_pages(&sd->pool, b->pages[i], sd->reqs[i].pages);
            ex_free_slot(&sd->pool, b->slot[i]);
        }
        if (b->pages) free(b->pages[i]);
    }
    free(b->s); free(b->r); free(b->pages); free(b->slot); free(b->started);
    memset(b, 0, sizeof *b);
}

/* ---- the decode side ----------------------------------------------------------- */

/* Receivers for every request, each initialised once ready (announce: print
   "INITED n" when every destination is on its way); with wait, until every
   room is terminal, then every KV byte and aux row of the rooms that
   succeeded is checked through staging copies. */
static KT_UNUSED void cx_decode_batch(cx_side *sd, cx_batch *b, double timeout, int announce,
                                      int wait) {
    uint32_t i, done, ninit = 0;
    double end = cx_now() + timeout;
    cx_batch_alloc(b, sd->nreq);
    for (i = 0; i < sd->nreq; i++) {
        kvx_room_desc rd;
        memset(&rd, 0, sizeof rd);
        rd.room = sd->reqs[i].room;
        b->pages[i] = (int32_t *)malloc((sd->reqs[i].pages + 1) * sizeof(int32_t));
        ex_alloc_pages(&sd->pool, b->pages[i], sd->reqs[i].pages);
        b->slot[i] = ex_alloc_slot(&sd->pool);
        ex_aux_clear(&sd->pool, b->slot[i]);
        kvx_receiver_create(sd->e, &rd, &b->r[i]);
    }
    do {
        done = 0;
        for (i = 0; i < sd->nreq; i++) {
            kvx_poll st = kvx_receiver_poll(b->r[i]);
            if (!b->started[i] && (st == KVX_POLL_WAITING_FOR_INPUT || cx_terminal(st))) {
                b->started[i] = 1;
                ninit++;
                if (st == KVX_POLL_WAITING_FOR_INPUT)
                    kvx_receiver_init(b->r[i], b->pages[i], sd->reqs[i].pages, b->slot[i]);
                if (announce && ninit == sd->nreq) {
                    printf("INITED %u\n", sd->nreq);
                    fflush(stdout);
                }
            }
            st = kvx_receiver_poll(b->r[i]);
            if (wait ? cx_terminal(st) : b->started[i]) done++;
        }
        if (done < sd->nreq) cx_sleep(0.001);
    } while (done < sd->nreq && cx_now() < end);
    if (!wait) return;
    for (i = 0; i < sd->nreq; i++) {
        kvx_poll st = kvx_receiver_poll(b->r[i]);
        if (st == KVX_POLL_SUCCESS) {
            b->ok++;
            if (!ex_request_pages(&sd->gpu, &sd->pool, sd->reqs[i].room, b->pages[i],
                                  sd->reqs[i].pages, 0) &&
                ex_aux_check(&sd->pool, sd->reqs[i].room, b->slot[i]))
                b->verified++;
        } else {
            b->failed++;
            if (!b->first_err[0])
                snprintf(b->first_err, sizeof b->first_err, "%s",
                         st == KVX_POLL_FAILED ? kvx_receiver_error(b->r[i]) : "not finished");
        }
    }
}

/* ---- helper processes ---------------------------------------------------------- */

typedef struct cx_proc {
    pid_t pid;
    int in_fd, out_fd;
    char buf[16384];
    size_t len;
    char back[2048]; /* a line given back with cx_unread */
    int has_back;
} cx_proc;

static KT_UNUSED void cx_find_self(const char *argv0) {
    ssize_t l = readlink("/proc/self/exe", cx_self, sizeof cx_self - 1);
    if (l > 0) cx_self[l] = 0;
    else snprintf(cx_self, sizeof cx_self, "%s", argv0);
}

/* Runs this binary with args (NULL-terminated) and extra "K=V" environment. */
static KT_UNUSED int cx_spawn(cx_proc *p, const char *const *args, const char *const *extra_env) {
    char *argv[32], **env;
    int in[2], out[2], rc, k = 0;
    size_t ne = 0, nx = 0, i;
    posix_spawn_file_actions_t fa;
    memset(p, 0, sizeof *p);
    p->pid = -1;
    argv[k++] = cx_self;
    while (args[k - 1] && k < 31) { argv[k] = (char *)args[k - 1]; k++; }
    argv[k] = NULL;
    while (environ[ne]) ne++;
    while (extra_env && extra_env[nx]) nx++;
    env = (char **)calloc(ne + nx + 1, sizeof *env);
    for (i = 0; i < nx; i++) env[i] = (char *)extra_env[i];
    for (i = 0; i < ne; i++) env[nx + i] = environ[i];
    if (pipe(in) || pipe(out)) { free(env); return -1; }
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, in[0], 0);
    posix_spawn_file_actions_adddup2(&fa, out[1], 1);
    posix_spawn_file_actions_addclose(&fa, in[1]);
    posix_spawn_file_actions_addclose(&fa, out[0]);
    fflush(stdout);
    rc = posix_spawn(&p->pid, cx_self, &fa, NULL, argv, env);
    posix_spawn_file_actions_destroy(&fa);
    free(env);
    close(in[0]);
    close(out[1]);
    fcntl(in[1], F_SETFD, FD_CLOEXEC);
    fcntl(out[0], F_SETFD, FD_CLOEXEC);
    if (rc) {
        close(in[1]);
        close(out[0]);
        p->pid = -1;
        return -1;
    }
    p->in_fd = in[1];
    p->out_fd = out[0];
    return 0;
}

/* One line of the helper's stdout; 0 on timeout or EOF. */
static KT_UNUSED int cx_readline(cx_proc *p, char *line, size_t n, double timeout) {
    double end = cx_now() + timeout;
    line[0] = 0;
    if (p->has_back) {
        p->has_back = 0;
        ct_fmt(line, n, "%s", p->back);
        return 1;
    }
    for (;;) {
        char *nl = (char *)memchr(p->buf, '\n', p->len);
        struct pollfd pf;
        ssize_t r;
        int ms;
        if (nl) {
            size_t l = (size_t)(nl - p->buf);
            snprintf(line, n, "%.*s", (int)l, p->buf);
            memmove(p->buf, nl + 1, p->len - l - 1);
            p->len -= l + 1;
            return 1;
        }
        if (p->len == sizeof p->buf) p->len = 0;
        ms = (int)((end - cx_now()) * 1000);
        if (ms <= 0) return 0;
        pf.fd = p->out_fd;
        pf.events = POLLIN;
        if (poll(&pf, 1, ms) <= 0) continue;
        r = read(p->out_fd, p->buf + p->len, sizeof p->buf - p->len);
        if (r <= 0) return 0;
        p->len += (size_t)r;
    }
}

static KT_UNUSED void cx_unread(cx_proc *p, const char *line) {
    ct_fmt(p->back, sizeof p->back, "%s", line);
    p->has_back = 1;
}

/* Waits for a line starting with prefix; other lines are echoed. 1 found. */
static KT_UNUSED int cx_expect(cx_proc *p, const char *prefix, char *line, size_t n, double timeout) {
    double end = cx_now() + timeout;
    while (cx_now() < end) {
        if (!cx_readline(p, line, n, end - cx_now())) return 0;
        if (!strncmp(line, prefix, strlen(prefix))) return 1;
        printf("  helper: %s\n", line);
    }
    return 0;
}

static KT_UNUSED void cx_tell(cx_proc *p, const char *line) {
    if (write(p->in_fd, line, strlen(line)) < 0) {}
}

/* Closes its stdin (the helper then exits) and waits (SIGKILL after
   timeout). Exit status as cx_wait_child reports it. */
static KT_UNUSED int cx_reap(cx_proc *p, double timeout) {
    double end = cx_now() + timeout;
    int st = 0, rc;
    if (p->pid <= 0) return -1;
    if (p->in_fd > 0) { close(p->in_fd); p->in_fd = -1; }
    for (;;) {
        pid_t w = waitpid(p->pid, &st, WNOHANG);
        if (w == p->pid) break;
        if (cx_now() > end) {
            kill(p->pid, SIGKILL);
            waitpid(p->pid, &st, 0);
            break;
        }
        cx_sleep(0.005);
    }
    if (p->out_fd > 0) { close(p->out_fd); p->out_fd = -1; }
    p->pid = -1;
    rc = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + (WIFSIGNALED(st) ? WTERMSIG(st) : 0);
    return rc;
}

/* Blocks until the parent closes our stdin (or goes away). */
static KT_UNUSED void cx_wait_stdin_eof(void) {
    char c;
    while (read(0, &c, 1) > 0) {}
}

/* Reads one line from stdin (the parent's word between batches). */
static KT_UNUSED int cx_stdin_line(char *line, size_t n) {
    size_t k = 0;
    char c;
    while (k + 1 < n && read(0, &c, 1) == 1) {
        if (c == '\n') { line[k] = 0; return 1; }
        line[k++] = c;
    }
    line[k] = 0;
    return k > 0;
}

/* ---- helper mains ------------------------------------------------------------------ */

/* --decode <bootstrap> <seed> <nreq> <min_tok> <max_tok> <model> <each> <batches>
   A decode engine in GPU memory. Batch k (seed + k; from the second on it
   waits for a line on stdin) creates and initialises every receiver, prints
   "INITED n", waits, checks every byte and aux row of the rooms that
   succeeded, and prints "RESULT <ok> <verified> <failed>", an "ERR <room>
   <sentence>" line per failure and, on the fake driver (f not NULL),
   "UNTOUCHED <bad>": pool pages no room ever used that are not zero any
   more. Then "STATS <exported allocations> <aux rows> <fence waits>
   <fence timeouts>"; exits when stdin closes (0 when every room verified). */
static KT_UNUSED int cx_helper_decode(char **argv, const ct_fake *f) {
    cx_side sd;
    cx_batch b;
    kvx_cuda_transport_stats st;
    char why[512], line[64];
    uint64_t seed = strtoull(argv[3], NULL, 10);
    uint32_t nreq = (uint32_t)atoi(argv[4]), mn = (uint32_t)atoi(argv[5]), mx = (uint32_t)atoi(argv[6]);
    int each = atoi(argv[8]), batches = atoi(argv[9]), k, bad_all = 0;
    uint8_t *used;
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (cx_side_init(&sd, KVX_ROLE_DECODE, argv[7], seed, nreq, mn, mx, each, argv[2], why,
                     sizeof why)) {
        printf("ERROR %s\n", why);
        fflush(stdout);
        return 3;
    }
    used = (uint8_t *)calloc(sd.pool.num_pages, 1);
    for (k = 0; k < batches; k++) {
        uint32_t i, j, untouched = 0;
        if (k) {
            if (!cx_stdin_line(line, sizeof line)) break;
            free(sd.reqs);
            sd.reqs = (ex_request *)calloc(nreq, sizeof *sd.reqs);
            ex_requests(sd.reqs, nreq, seed + (uint64_t)k, mn, mx, 16);
        }
        cx_decode_batch(&sd, &b, 120, 1, 1);
        printf("RESULT %u %u %u\n", b.ok, b.verified, b.failed);
        for (i = 0; i < nreq; i++) {
            if (kvx_receiver_poll(b.r[i]) != KVX_POLL_SUCCESS)
                printf("ERR %llu %s\n", (unsigned long long)sd.reqs[i].room,
                       kvx_receiver_error(b.r[i]));
            for (j = 0; j < sd.reqs[i].pages; j++) used[b.pages[i][j]] = 1;
        }
        for (i = 0; f && i < sd.pool.layout.num_buffers; i++) {
            const kvx_buffer *kb = &sd.pool.bufs[i];
            const uint8_t *v = (const uint8_t *)f->view(kb->base, (size_t)kb->length);
            for (j = 0; v && j < sd.pool.num_pages; j++) {
                uint64_t x, w;
                if (used[j]) continue;
                for (x = 0; x + 8 <= kb->item_len; x += 8) {
                    memcpy(&w, v + (uint64_t)j * kb->item_len + x, 8);
                    if (w) { untouched++; break; }
                }
            }
        }
        if (f) printf("UNTOUCHED %u\n", untouched);
        if (b.verified != nreq || untouched) bad_all = 1;
        fflush(stdout);
        cx_batch_free(&sd, &b);
    }
    kvx_cuda_transport_stats_get(sd.e, &st);
    printf("STATS %llu %llu %llu %llu\n", (unsigned long long)st.exported_allocs,
           (unsigned long long)st.aux_rows, (unsigned long long)st.fence_waits,
           (unsigned long long)st.fence_timeouts);
    fflush(stdout);
    cx_wait_stdin_eof();
    cx_side_free(&sd);
    free(used);
    return bad_all;
}

/* --prefill <seed> <nreq> <min_tok> <max_tok> <model> <chunk_pages> <partial>
   A prefill engine in GPU memory serving a bootstrap port: prints "READY
   <port>", sends every room (partial: all but the last chunk, then prints
   "PARTIAL" and waits to be killed), prints "SENT n" once every room has
   queued its chunks, then "RESULT <ok> <failed>" and "ERR <room> <sentence>"
   lines; exits when stdin closes. */
static KT_UNUSED int cx_helper_prefill(char **argv) {
    cx_side sd;
    cx_batch b;
    char why[512];
    uint64_t seed = strtoull(argv[2], NULL, 10);
    uint32_t nreq = (uint32_t)atoi(argv[3]), mn = (uint32_t)atoi(argv[4]), mx = (uint32_t)atoi(argv[5]);
    uint32_t chunk = (uint32_t)atoi(argv[7]), i;
    int partial = atoi(argv[8]), rc;
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (cx_side_init(&sd, KVX_ROLE_PREFILL, argv[6], seed, nreq, mn, mx, 0, NULL, why, sizeof why)) {
        printf("ERROR %s\n", why);
        fflush(stdout);
        return 3;
    }
    printf("READY %d\n", kvx_boot_engine_port(sd.e));
    fflush(stdout);
    cx_prefill_batch(&sd, &b, chunk, 120, CX_ANNOUNCE | (partial ? CX_PARTIAL : 0));
    if (partial) {
        printf("PARTIAL\n");
        fflush(stdout);
        cx_wait_stdin_eof();
        return 0;
    }
    printf("RESULT %u %u\n", b.ok, b.failed);
    for (i = 0; i < nreq; i++)
        if (kvx_sender_poll(b.s[i]) != KVX_POLL_SUCCESS)
            printf("ERR %llu %s\n", (unsigned long long)sd.reqs[i].room, kvx_sender_error(b.s[i]));
    fflush(stdout);
    rc = b.failed ? 1 : 0;
    cx_wait_stdin_eof();
    cx_batch_free(&sd, &b);
    cx_side_free(&sd);
    return rc;
}

#endif
