/* bench_tcp - the tcp transport against a raw socket baseline, in one run.

   Two processes on loopback. One 4096-token Llama-3.1-8B request (64
   buffers, page size 16, item_len 32 KiB: 256 pages, 512 MiB) whose pages
   are scattered over both pools (a shuffled free list, as after hours of
   serving): time from the sender's first kvx_sender_send to its Success
   (the receiver's ACK: every byte is in its pages), as one chunk and as 8
   chunks of 512 tokens. Baseline: the same number of bytes from one
   contiguous buffer over one TCP socket into one contiguous buffer,
   timed from the first send to a one-byte acknowledgement (written and
   read in KVX_TCP_SEGMENT pieces, 4 MiB: faster than one giant write). A second
   baseline splits the same contiguous bytes over as many sockets as kvx
   uses streams (KVX_TCP_STREAMS), one thread per socket on each side: kvx
   against it measures the transport's own cost, kvx against the first
   what a user gains over one socket. The same room between a second pair
   of engines holding a shared key (KVX_AUTH_KEY: every data connection
   proves it both ways before KV moves) gives the cost of authentication,
   as a ratio to the keyless pair of the same run. Repetitions alternate
   between all of them; best and median are reported.

   Topologies (issue 13): the same request between instances of different
   tensor-parallel sizes, prefill TP 4 -> decode TP 2 and TP 2 -> 4 (head
   slices: strided DATA segments, every row read straight into the pages)
   against TP 2 -> 2, all ranks' engines in this one process (threads, no
   fork), each rank with its own pool (examples' ex_pool_init_rank,
   scattered pages); time from the first send to the last sender's
   Success, GB/s of the request's KV (512 MiB: each decode byte once), the
   ratios from the same run, reps alternating between the three.

   Environment: KVX_BENCH_REPS (5), KVX_BENCH_TOPO_ONLY (set: only the
   topologies), KVX_TCP_STREAMS (4) and the other
   KVX_TCP_* settings. */
#define KVX_IMPLEMENTATION
#include "../kvx_tcp.h"
#include "../examples/kvx_example.h"
#include <errno.h>
#include <signal.h>
#include <unistd.h>
#include <pthread.h>
#include <sys/wait.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>

#define TOKENS 4096
#define PAGE 16
#define NPAGES (TOKENS / PAGE)
#define POOL_PAGES (2 * NPAGES)
#define PATTERN_ROOM 1

static double now_s(void) { return (double)kvx_now_ns() / 1e9; }

static void die(const char *what) {
    fprintf(stderr, "bench_tcp: %s: %s\n", what, strerror(errno));
    exit(1);
}

/* Raw transfers write and read in pieces of this size (KVX_TCP_SEGMENT,
   4 MiB): one giant write is slower on Linux than pieces of a few MiB, and
   the baseline should be the best a plain socket does. */
static size_t piece = 4u << 20;

static void full_write(int fd, const void *p, size_t n) {
    const char *c = (const char *)p;
    while (n) {
        ssize_t k = write(fd, c, n < piece ? n : piece);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) die("write");
        c += k;
        n -= (size_t)k;
    }
}

static void full_read(int fd, void *p, size_t n) {
    char *c = (char *)p;
    while (n) {
        ssize_t k = read(fd, c, n);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) die("read");
        c += k;
        n -= (size_t)k;
    }
}

/* CPU seconds (user + system, every thread) this process used so far. */
static double cpu_s(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

static void quiet(void *u, kvx_log_level l, const char *s, uint64_t room, const char *m) {
    (void)u;
    if (l <= KVX_LOG_WARN) fprintf(stderr, "  [%s room=%llu] %s\n", s, (unsigned long long)room, m);
}

/* ---- raw baseline over several sockets ------------------------------------------ */

typedef struct rawjob {
    int fd;
    char *buf;
    size_t len;
    int send;
} rawjob;

static void *raw_thread(void *arg) {
    rawjob *j = (rawjob *)arg;
    size_t got = 0;
    char k = 'k';
    if (j->send) {
        full_write(j->fd, j->buf, j->len);
        full_read(j->fd, &k, 1);
        return NULL;
    }
    while (got < j->len) {
        size_t want = j->len - got < piece ? j->len - got : piece;
        ssize_t n = recv(j->fd, j->buf + got, want, 0);
        if (n <= 0) die("recv");
        got += (size_t)n;
    }
    full_write(j->fd, &k, 1);
    return NULL;
}

/* Moves buf[0..bytes) over fds[0..n) in n threads (send or receive). */
static void raw_multi(const int *fds, int n, char *buf, size_t bytes, int send) {
    pthread_t th[64];
    rawjob jobs[64];
    size_t per = bytes / (size_t)n;
    int i;
    for (i = 0; i < n; i++) {
        jobs[i].fd = fds[i];
        jobs[i].buf = buf + (size_t)i * per;
        jobs[i].len = i == n - 1 ? bytes - (size_t)i * per : per;
        jobs[i].send = send;
        pthread_create(&th[i], NULL, raw_thread, &jobs[i]);
    }
    for (i = 0; i < n; i++) pthread_join(th[i], NULL);
}

#define BENCH_KEY "bench-tcp-shared-key-0123456789"

/* An engine on loopback; tp > 0: rank `rank` of tp (port: the first
   prefill rank's bootstrap port for the others). */
static kvx_engine *engine_rank(kvx_role role, const kvx_layout *l, const char *addr,
                               const char *key, int tp, int rank, int port) {
    kvx_engine_desc d;
    kvx_engine *e;
    char why[512];
    memset(&d, 0, sizeof d);
    d.role = role;
    d.transport = "tcp";
    d.layout = *l;
    d.logger.func = quiet;
    d.boot.host = "127.0.0.1";
    d.boot.port = port ? port : -1;
    d.boot.tp_size = tp;
    d.boot.tp_rank = rank;
    d.tcp.host = "127.0.0.1";
    d.bootstrap_addr = addr;
    d.auth_key = key;
    if (kvx_engine_create(&d, &e, why, sizeof why) != KVX_OK) {
        fprintf(stderr, "bench_tcp: engine: %s\n", why);
        exit(1);
    }
    return e;
}

static kvx_engine *engine(kvx_role role, const kvx_layout *l, const char *addr, const char *key) {
    return engine_rank(role, l, addr, key, 0, 0, 0);
}

/* ---- decode process ------------------------------------------------------------ */

static int decode_main(int cmd, int reply, int raw_lfd, size_t bytes, int streams) {
    ex_pool p;
    int32_t pages[NPAGES];
    char *raw = (char *)malloc(bytes);
    kvx_engine *e = NULL, *ek = NULL;
    int rfd = -1, mfds[64], nm = 0;
    uint32_t b;
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (!raw || ex_pool_init(&p, ex_model_find("llama-3.1-8b"), POOL_PAGES, PAGE, 4, 2)) die("alloc");
    memset(raw, 0, bytes);
    for (b = 0; b < p.layout.num_buffers; b++) memset(p.bufs[b].base, 0, p.bufs[b].length);
    ex_alloc_pages(&p, pages, NPAGES);
    for (;;) {
        char c;
        uint64_t arg;
        double c0;
        full_read(cmd, &c, 1);
        full_read(cmd, &arg, 8);
        c0 = cpu_s();
        if (c == 'q') break;
        if (c == 'r') { /* raw: receive `bytes` into one buffer, acknowledge */
            size_t got = 0;
            if (rfd < 0) {
                int one = 1;
                rfd = accept(raw_lfd, NULL, NULL);
                if (rfd < 0) die("accept");
                setsockopt(rfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            }
            while (got < bytes) {
                size_t want = bytes - got < piece ? bytes - got : piece;
                ssize_t k = recv(rfd, raw + got, want, 0);
                if (k <= 0) die("recv");
                got += (size_t)k;
            }
            full_write(rfd, "k", 1);
            c0 = cpu_s() - c0;
            full_write(reply, &c0, sizeof c0);
        } else if (c == 'm') { /* raw over `streams` sockets */
            int one = 1;
            while (nm < streams) {
                mfds[nm] = accept(raw_lfd, NULL, NULL);
                if (mfds[nm] < 0) die("accept");
                setsockopt(mfds[nm], IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                nm++;
            }
            raw_multi(mfds, streams, raw, bytes, 0);
            c0 = cpu_s() - c0;
            full_write(reply, &c0, sizeof c0);
        } else if (c == 'b' || c == 'B') { /* the prefill's bootstrap port (B: keyed pair) */
            char addr[64];
            snprintf(addr, sizeof addr, "127.0.0.1:%llu", (unsigned long long)arg);
            if (c == 'b') e = engine(KVX_ROLE_DECODE, &p.layout, addr, NULL);
            else ek = engine(KVX_ROLE_DECODE, &p.layout, addr, BENCH_KEY);
        } else if (c == 'k' || c == 'K') { /* one kvx room (K: between the keyed engines) */
            kvx_room_desc rd;
            kvx_receiver *r;
            char st;
            memset(&rd, 0, sizeof rd);
            rd.room = arg;
            ex_aux_clear(&p, 0);
            kvx_receiver_create(c == 'k' ? e : ek, &rd, &r);
            while (kvx_receiver_poll(r) == KVX_POLL_BOOTSTRAPPING) {
                struct timespec ts = {0, 100000};
                nanosleep(&ts, NULL);
            }
            kvx_receiver_init(r, pages, NPAGES, 0);
            while (kvx_receiver_poll(r) == KVX_POLL_TRANSFERRING) {
                struct timespec ts = {0, 100000}; /* polling is cheap, but not free on 2 cores */
                nanosleep(&ts, NULL);
            }
            st = kvx_receiver_poll(r) == KVX_POLL_SUCCESS ? 'k' : 'f';
            if (st == 'f') fprintf(stderr, "bench_tcp: receiver: %s\n", kvx_receiver_error(r));
            else if (!ex_aux_check(&p, PATTERN_ROOM, 0)) st = 'a';
            c0 = cpu_s() - c0; /* the receive, not the destroy */
            kvx_receiver_destroy(r);
            full_write(reply, &st, 1);
            full_write(reply, &c0, sizeof c0);
        } else if (c == 'v') { /* verify the pages of the last room */
            char st = ex_pages_pattern(&p, PATTERN_ROOM, pages, NPAGES, 0) == 0 ? 'k' : 'f';
            full_write(reply, &st, 1);
        }
    }
    kvx_engine_destroy(e);
    kvx_engine_destroy(ek);
    ex_pool_free(&p);
    free(raw);
    return 0;
}

/* ---- prefill process (this one) ---------------------------------------------------- */

static void cmd_send(int fd, char c, uint64_t arg) {
    full_write(fd, &c, 1);
    full_write(fd, &arg, 8);
}

/* Each repetition returns its wall time and stores the CPU seconds both
   processes spent in *cpu. */
static double raw_rep(int cmd, int reply, int fd, const char *buf, size_t bytes, double *cpu) {
    double t0, c0, t, child;
    char k;
    cmd_send(cmd, 'r', 0);
    c0 = cpu_s();
    t0 = now_s();
    full_write(fd, buf, bytes);
    full_read(fd, &k, 1);
    t = now_s() - t0;
    full_read(reply, &child, sizeof child);
    *cpu = cpu_s() - c0 + child;
    return t;
}

static double kvx_rep(int cmd, int reply, kvx_engine *e, const int32_t *pages, uint64_t room,
                      uint32_t chunk_pages, double *cpu, int keyed) {
    kvx_room_desc rd;
    kvx_sender *s;
    double t0, t, c0, child;
    uint32_t sent = 0;
    char st;
    memset(&rd, 0, sizeof rd);
    rd.room = room;
    kvx_sender_create(e, &rd, &s);
    cmd_send(cmd, keyed ? 'K' : 'k', room);
    while (kvx_sender_poll(s) == KVX_POLL_BOOTSTRAPPING) {
        struct timespec ts = {0, 100000}; /* polling is cheap, but not free on 2 cores */
        nanosleep(&ts, NULL);
    }
    c0 = cpu_s();
    t0 = now_s();
    kvx_sender_init(s, NPAGES, 0);
    while (sent < NPAGES) {
        kvx_sender_send(s, pages + sent, chunk_pages);
        sent += chunk_pages;
    }
    while (kvx_sender_poll(s) == KVX_POLL_TRANSFERRING) {
        struct timespec ts = {0, 100000}; /* polling is cheap, but not free on 2 cores */
        nanosleep(&ts, NULL);
    }
    t = now_s() - t0;
    *cpu = cpu_s() - c0;
    if (kvx_sender_poll(s) != KVX_POLL_SUCCESS) {
        fprintf(stderr, "bench_tcp: sender: %s\n", kvx_sender_error(s));
        exit(1);
    }
    kvx_sender_destroy(s);
    full_read(reply, &st, 1);
    full_read(reply, &child, sizeof child);
    *cpu += child;
    if (st != 'k') {
        fprintf(stderr, "bench_tcp: the receiver failed or its aux rows are wrong (%c)\n", st);
        exit(1);
    }
    return t;
}

static double raw_multi_rep(int cmd, int reply, const int *fds, int n, char *buf, size_t bytes,
                            double *cpu) {
    double t0, c0, t, child;
    cmd_send(cmd, 'm', 0);
    c0 = cpu_s();
    t0 = now_s();
    raw_multi(fds, n, buf, bytes, 1);
    t = now_s() - t0;
    full_read(reply, &child, sizeof child);
    *cpu = cpu_s() - c0 + child;
    return t;
}

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Sorts t and cpu; prints best and median GB/s, median CPU seconds per GB
   (both processes), and the ratios against the baselines (sorted). */
static void line(const char *what, double *t, double *cpu, int n, double bytes,
                 const double *base1, const double *basen, int streams) {
    qsort(t, (size_t)n, sizeof *t, cmp_d);
    qsort(cpu, (size_t)n, sizeof *cpu, cmp_d);
    printf("  %-34s best %5.2f GB/s  median %5.2f GB/s  cpu %5.3f s/GB", what,
           bytes / t[0] / 1e9, bytes / t[n / 2] / 1e9, cpu[n / 2] / (bytes / 1e9));
    if (base1)
        printf("  = %.2fx raw-1 (median %.2fx), %.2fx raw-%d (median %.2fx)", base1[0] / t[0],
               base1[n / 2] / t[n / 2], basen[0] / t[0], streams, basen[n / 2] / t[n / 2]);
    printf("\n");
}

/* ---- topologies: all ranks in this process ------------------------------------- */

typedef struct tb_rank {
    ex_pool p;
    kvx_engine *e;
    int32_t pages[NPAGES];
} tb_rank;

typedef struct tb_case {
    int ptp, dtp;
    tb_rank *P, *D;
    double *t;
    uint64_t frames;
} tb_case;

static void tb_setup(tb_case *c, const ex_model *m, int reps) {
    char addr[64];
    int i, port = 0;
    c->P = (tb_rank *)calloc((size_t)c->ptp, sizeof *c->P);
    c->D = (tb_rank *)calloc((size_t)c->dtp, sizeof *c->D);
    c->t = (double *)calloc((size_t)reps, sizeof(double));
    if (!c->P || !c->D || !c->t) die("alloc");
    for (i = 0; i < c->ptp; i++) {
        ex_rank rk = {(uint32_t)c->ptp, (uint32_t)i, 1, 0};
        tb_rank *r = &c->P[i];
        if (ex_pool_init_rank(&r->p, m, POOL_PAGES, PAGE, 4, 7 + (uint64_t)i, &rk)) die("alloc");
        ex_alloc_pages(&r->p, r->pages, NPAGES);
        ex_pages_pattern(&r->p, PATTERN_ROOM, r->pages, NPAGES, 1);
        ex_aux_write(&r->p, PATTERN_ROOM, 0);
        r->e = engine_rank(KVX_ROLE_PREFILL, &r->p.layout, NULL, NULL, c->ptp, i, port);
        if (!i) port = kvx_boot_engine_port(r->e);
    }
    snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
    for (i = 0; i < c->dtp; i++) {
        ex_rank rk = {(uint32_t)c->dtp, (uint32_t)i, 1, 0};
        tb_rank *r = &c->D[i];
        if (ex_pool_init_rank(&r->p, m, POOL_PAGES, PAGE, 4, 101 + (uint64_t)i, &rk)) die("alloc");
        ex_alloc_pages(&r->p, r->pages, NPAGES);
        r->e = engine_rank(KVX_ROLE_DECODE, &r->p.layout, addr, NULL, c->dtp, i, 0);
    }
}

static void tb_free(tb_case *c) {
    int i;
    for (i = 0; i < c->ptp; i++) { kvx_engine_destroy(c->P[i].e); ex_pool_free(&c->P[i].p); }
    for (i = 0; i < c->dtp; i++) { kvx_engine_destroy(c->D[i].e); ex_pool_free(&c->D[i].p); }
    free(c->P);
    free(c->D);
}

/* One request through every rank: seconds from the first send to the last
   Success; verify: every decode rank checks every head of every token. */
static double tb_rep(tb_case *c, uint64_t room, int verify, int *ok) {
    kvx_sender *s[16];
    kvx_receiver *r[16];
    kvx_room_desc rd;
    double t0, end = now_s() + 120;
    int i, done;
    memset(&rd, 0, sizeof rd);
    rd.room = room;
    for (i = 0; i < c->dtp; i++) kvx_receiver_create(c->D[i].e, &rd, &r[i]);
    for (i = 0; i < c->ptp; i++) kvx_sender_create(c->P[i].e, &rd, &s[i]);
    for (i = 0; i < c->dtp; i++) {
        while (kvx_receiver_poll(r[i]) == KVX_POLL_BOOTSTRAPPING && now_s() < end) usleep(200);
        ex_aux_clear(&c->D[i].p, 0);
        kvx_receiver_init(r[i], c->D[i].pages, NPAGES, 0);
    }
    for (i = 0; i < c->ptp; i++)
        while (kvx_sender_poll(s[i]) == KVX_POLL_BOOTSTRAPPING && now_s() < end) usleep(200);
    t0 = now_s();
    for (i = 0; i < c->ptp; i++) {
        kvx_sender_init(s[i], NPAGES, 0);
        kvx_sender_send(s[i], c->P[i].pages, NPAGES);
    }
    do {
        done = 0;
        for (i = 0; i < c->ptp; i++) done += kvx_sender_poll(s[i]) == KVX_POLL_SUCCESS ||
                                             kvx_sender_poll(s[i]) == KVX_POLL_FAILED;
        if (done < c->ptp) usleep(100);
    } while (done < c->ptp && now_s() < end);
    t0 = now_s() - t0;
    for (i = 0; i < c->ptp; i++) {
        if (kvx_sender_poll(s[i]) != KVX_POLL_SUCCESS) {
            fprintf(stderr, "bench_tcp: tp %d -> %d: %s\n", c->ptp, c->dtp, kvx_sender_error(s[i]));
            *ok = 0;
        }
        kvx_sender_destroy(s[i]);
    }
    for (i = 0; i < c->dtp; i++) {
        while (kvx_receiver_poll(r[i]) == KVX_POLL_TRANSFERRING && now_s() < end) usleep(100);
        if (kvx_receiver_poll(r[i]) != KVX_POLL_SUCCESS ||
            (verify && (ex_pages_pattern(&c->D[i].p, PATTERN_ROOM, c->D[i].pages, NPAGES, 0) ||
                        !ex_aux_check(&c->D[i].p, PATTERN_ROOM, 0))))
            *ok = 0;
        kvx_receiver_destroy(r[i]);
    }
    return t0;
}

static int topo_bench(int reps) {
    const ex_model *m = ex_model_find("llama-3.1-8b");
    tb_case cs[3] = {{2, 2, NULL, NULL, NULL, 0}, {4, 2, NULL, NULL, NULL, 0},
                     {2, 4, NULL, NULL, NULL, 0}};
    double bytes = (double)NPAGES * PAGE * m->layers * 2 * m->kv_heads * m->head_dim * m->dtype_size;
    int i, k, ok = 1;
    for (k = 0; k < 3; k++) tb_setup(&cs[k], m, reps);
    for (k = 0; k < 3; k++) tb_rep(&cs[k], PATTERN_ROOM, 1, &ok); /* warm-up, verified */
    for (i = 0; i < reps; i++)
        for (k = 0; k < 3; k++) cs[k].t[i] = tb_rep(&cs[k], 5000 + (uint64_t)(i * 3 + k), 0, &ok);
    for (k = 0; k < 3; k++) {
        kvx_tcp_stats st;
        int d;
        for (d = 0; d < cs[k].dtp; d++) {
            kvx_tcp_stats_get(cs[k].D[d].e, &st);
            cs[k].frames += st.frames_received;
        }
        qsort(cs[k].t, (size_t)reps, sizeof(double), cmp_d);
    }
    printf("  topologies, all ranks in this process (threads), Llama-3.1-8B, %d tokens, %d "
           "scattered pages, %.0f MiB of KV per request (each decode byte once):\n",
           TOKENS, NPAGES, bytes / (1 << 20));
    for (k = 0; k < 3; k++)
        printf("    prefill TP %d -> decode TP %d: best %.3f s %.2f GB/s, median %.2f GB/s; "
               "ratio to TP 2 -> 2: best %.2f, median %.2f; %.0f DATA frames per request%s\n",
               cs[k].ptp, cs[k].dtp, cs[k].t[0], bytes / cs[k].t[0] / 1e9,
               bytes / cs[k].t[reps / 2] / 1e9, cs[0].t[0] / cs[k].t[0],
               cs[0].t[reps / 2] / cs[k].t[reps / 2], (double)cs[k].frames / (reps + 1),
               cs[k].ptp == cs[k].dtp ? " (whole pages)" : " (head slices)");
    printf("  every head of every token verified on each decode rank (first request): %s\n",
           ok ? "ok" : "MISMATCH");
    for (k = 0; k < 3; k++) { tb_free(&cs[k]); free(cs[k].t); }
    return ok;
}

int main(void) {
    int cmdp[2], repp[2], lfd, one = 1, reps = 5, i, streams = 4, mfds[64];
    struct sockaddr_in a;
    socklen_t sl = sizeof a;
    ex_pool p;
    int32_t pages[NPAGES];
    kvx_engine *e, *ek;
    size_t bytes;
    char *raw;
    double *traw, *trawn, *tk1, *tk8, *craw, *crawn, *ck1, *ck8, *tkk, *ckk, junk;
    int rfd;
    pid_t pid;
    const char *r = getenv("KVX_BENCH_REPS");
    char v;
    if (r && atoi(r) > 0) reps = atoi(r);
    if (getenv("KVX_BENCH_TOPO_ONLY")) { /* the topologies alone */
        signal(SIGPIPE, SIG_IGN);
        kvx_tcp_register();
        return topo_bench(reps) ? 0 : 1;
    }
    if (getenv("KVX_TCP_SEGMENT") && atoi(getenv("KVX_TCP_SEGMENT")) >= 65536)
        piece = (size_t)atoi(getenv("KVX_TCP_SEGMENT"));
    if (getenv("KVX_TCP_STREAMS") && atoi(getenv("KVX_TCP_STREAMS")) > 0)
        streams = atoi(getenv("KVX_TCP_STREAMS"));
    if (streams > 64) streams = 64;
    signal(SIGPIPE, SIG_IGN);
    kvx_tcp_register();
    if (ex_pool_init(&p, ex_model_find("llama-3.1-8b"), POOL_PAGES, PAGE, 4, 1)) die("alloc");
    bytes = (size_t)NPAGES * (size_t)kvx_layout_page_bytes(&p.layout);
    /* the raw baseline's listener, set up before fork so the child owns it */
    lfd = socket(AF_INET, SOCK_STREAM, 0);
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(lfd, (struct sockaddr *)&a, sizeof a) || listen(lfd, 128) ||
        getsockname(lfd, (struct sockaddr *)&a, &sl))
        die("listen");
    if (pipe(cmdp) || pipe(repp)) die("pipe");
    fflush(stdout);
    pid = fork(); /* before any thread exists */
    if (pid < 0) die("fork");
    if (pid == 0) {
        close(cmdp[1]);
        close(repp[0]);
        _exit(decode_main(cmdp[0], repp[1], lfd, bytes, streams));
    }
    close(cmdp[0]);
    close(repp[1]);
    ex_alloc_pages(&p, pages, NPAGES);
    ex_pages_pattern(&p, PATTERN_ROOM, pages, NPAGES, 1);
    ex_aux_write(&p, PATTERN_ROOM, 0);
    raw = (char *)malloc(bytes);
    if (!raw) die("alloc");
    memset(raw, 0x5a, bytes);
    rfd = socket(AF_INET, SOCK_STREAM, 0);
    setsockopt(rfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(rfd, (struct sockaddr *)&a, sizeof a)) die("connect");
    raw_rep(cmdp[1], repp[0], rfd, raw, bytes, &junk); /* the child accepts this socket first */
    for (i = 0; i < streams; i++) {
        mfds[i] = socket(AF_INET, SOCK_STREAM, 0);
        setsockopt(mfds[i], IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (connect(mfds[i], (struct sockaddr *)&a, sizeof a)) die("connect");
    }
    e = engine(KVX_ROLE_PREFILL, &p.layout, NULL, NULL);
    cmd_send(cmdp[1], 'b', (uint64_t)kvx_boot_engine_port(e));
    ek = engine(KVX_ROLE_PREFILL, &p.layout, NULL, BENCH_KEY);
    cmd_send(cmdp[1], 'B', (uint64_t)kvx_boot_engine_port(ek));
    traw = (double *)calloc((size_t)reps, sizeof(double));
    trawn = (double *)calloc((size_t)reps, sizeof(double));
    craw = (double *)calloc((size_t)reps, sizeof(double));
    crawn = (double *)calloc((size_t)reps, sizeof(double));
    ck1 = (double *)calloc((size_t)reps, sizeof(double));
    ck8 = (double *)calloc((size_t)reps, sizeof(double));
    tk1 = (double *)calloc((size_t)reps, sizeof(double));
    tk8 = (double *)calloc((size_t)reps, sizeof(double));
    tkk = (double *)calloc((size_t)reps, sizeof(double));
    ckk = (double *)calloc((size_t)reps, sizeof(double));
    /* warm-up: connections, page faults, socket buffer growth */
    raw_multi_rep(cmdp[1], repp[0], mfds, streams, raw, bytes, &junk);
    kvx_rep(cmdp[1], repp[0], e, pages, 100, NPAGES, &junk, 0);
    kvx_rep(cmdp[1], repp[0], ek, pages, 101, NPAGES, &junk, 1);
    for (i = 0; i < reps; i++) {
        traw[i] = raw_rep(cmdp[1], repp[0], rfd, raw, bytes, &craw[i]);
        trawn[i] = raw_multi_rep(cmdp[1], repp[0], mfds, streams, raw, bytes, &crawn[i]);
        tk1[i] = kvx_rep(cmdp[1], repp[0], e, pages, 200 + (uint64_t)i, NPAGES, &ck1[i], 0);
        tk8[i] = kvx_rep(cmdp[1], repp[0], e, pages, 300 + (uint64_t)i, NPAGES / 8, &ck8[i], 0);
        tkk[i] = kvx_rep(cmdp[1], repp[0], ek, pages, 400 + (uint64_t)i, NPAGES, &ckk[i], 1);
    }
    cmd_send(cmdp[1], 'v', 0);
    full_read(repp[0], &v, 1);
    printf("bench_tcp: Llama-3.1-8B, %d tokens: %u buffers x %d scattered pages of %llu KiB = %zu "
           "MiB, loopback, %d reps, %d streams\n",
           TOKENS, p.layout.num_buffers, NPAGES,
           (unsigned long long)(p.layout.buffers[0].item_len >> 10), bytes >> 20, reps, streams);
    {
        double la[3] = {0, 0, 0};
        if (getloadavg(la, 3) < 1) la[0] = -1;
        printf("  machine: %ld cores, load average %.2f (other work on the machine moves these "
               "numbers; cpu = user+system seconds of both processes per GB)\n",
               sysconf(_SC_NPROCESSORS_ONLN), la[0]);
    }
    {
        char what[64];
        snprintf(what, sizeof what, "raw-%d: %d sockets, contiguous", streams, streams);
        line("raw-1: 1 socket, contiguous", traw, craw, reps, (double)bytes, NULL, NULL, 0);
        line(what, trawn, crawn, reps, (double)bytes, NULL, NULL, 0);
        line("kvx tcp: 1 chunk", tk1, ck1, reps, (double)bytes, traw, trawn, streams);
        line("kvx tcp: 8 chunks of 512 tokens", tk8, ck8, reps, (double)bytes, traw, trawn,
             streams);
        line("kvx tcp, KVX_AUTH_KEY: 1 chunk", tkk, ckk, reps, (double)bytes, traw, trawn,
             streams);
        printf("  authentication: keyed / keyless throughput, same run: best %.3fx, median %.3fx "
               "(the key is proven once per data connection)\n", tk1[0] / tkk[0],
               tk1[reps / 2] / tkk[reps / 2]);
    }
    printf("  every KV byte of the last room verified at the receiver: %s; aux rows: ok\n",
           v == 'k' ? "ok" : "MISMATCH");
    cmd_send(cmdp[1], 'q', 0);
    waitpid(pid, NULL, 0);
    kvx_engine_destroy(e);
    kvx_engine_destroy(ek);
    close(rfd);
    ex_pool_free(&p);
    free(raw);
    free(traw);
    free(trawn);
    free(craw);
    free(crawn);
    free(ck1);
    free(ck8);
    free(tk1);
    free(tk8);
    if (!topo_bench(reps)) v = 'x';
    return v == 'k' ? 0 : 1;
}
