/* kvx_demo - runs kvx_prefill and kvx_decode processes (one per rank) moving a
   realistic KV cache through the file transport, then prints a summary of
   requests and bytes, and two kinds of time, labelled as such:
   - the transport's own: per request from the prefill's first send (after
     its pages were filled) to the moment the decode receiver reached
     Success (before its pages are checked; a watcher thread notes it, see
     ex_watch), both CLOCK_MONOTONIC. The transport time is the union of
     these intervals over all requests (time at least one request was in
     flight); its throughput is bytes / that time; p50/p99 are per request.
   - wall time: from the first send to the last Success, which also holds
     the simulated engine filling and checking pages between requests, and
     the whole demo from spawning the ranks to their exit (pools, their page
     faults, filling, checking). Its throughput is not kvx's speed.

   usage: kvx_demo [--handshake] [options of kvx_prefill / kvx_decode]
     --transport T tcp, cuda (or rdma, bootfake): the bytes go over that
                   transport; the prefill serves the bootstrap on --bootstrap
                   HOST:PORT, by default 127.0.0.1 and a free port. cuda
                   copies GPU to GPU through CUDA IPC and implies --gpu
     --gpu         both KV pools on GPU 0 (built with -DKVX_WITH_CUDA);
                   pages are filled and checked through staging copies
     --handshake   also run kvx_boot's bootstrap handshake: the prefill serves
                   SGLang's bootstrap API on a free loopback port, the decode
                   side connects to it; status and aborts go over its control
                   channel while the bytes still go through the files
     --prefill-tp N --decode-tp N --prefill-pp N --decode-pp N --dp N
                   the topology (default all 1): one process per rank, each
                   holding its rank's heads and layers (SGLang's split); a
                   DP rank serves the rooms with room % dp == its rank; each
                   decode rank verifies every head of every token it holds,
                   and a room counts once every decode rank of its DP group
                   verified it. --model deepseek-v3 is the MLA shape   */
#define _GNU_SOURCE
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
#include <time.h>
#include <unistd.h>
#include <sys/wait.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <arpa/inet.h>

/* A free loopback port for the bootstrap server (bound and released). */
static int free_port(void) {
    struct sockaddr_in a;
    socklen_t len = sizeof a;
    int fd = socket(AF_INET, SOCK_STREAM, 0), port = 0;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &len) == 0)
        port = ntohs(a.sin_port);
    if (fd >= 0) close(fd);
    return port;
}

static char *sibling(const char *argv0, const char *name) {
    const char *slash = strrchr(argv0, '/');
    size_t n = slash ? (size_t)(slash - argv0 + 1) : 0;
    char *p = (char *)malloc(n + strlen(name) + 3);
    if (!p) exit(1);
    memcpy(p, argv0, n);
    strcpy(p + n, name);
    return p;
}

static char boot_addr[64];

/* Demo-only options (the topology), not passed on to the rank processes. */
static int demo_only(const char *k) {
    return !strcmp(k, "--prefill-tp") || !strcmp(k, "--decode-tp") || !strcmp(k, "--prefill-pp") ||
           !strcmp(k, "--decode-pp") || !strcmp(k, "--dp");
}

/* Starts one rank: the user's options, minus the demo's own, plus this
   rank's placement (extra: NULL-terminated list of option, value pairs). */
/* Every rank runs with --linger (stdin: linger_fd's read end) and
   --done-fd 3 (done_fd's write end). The demo reads done_fd until every
   rank has closed its end (done, or exited), then closes linger_fd: no
   rank leaves while another rank's rooms still need its engine (a decode
   rank's room frame to an MLA dummy prefill rank, a prefill rank's
   control listener). */
static int linger_fd[2] = {-1, -1}, done_fd[2] = {-1, -1};
#define DONE_FD 3

static pid_t spawn(char *prog, int argc, char **argv, const char *times, const char *dir,
                   char **extra) {
    char **av = (char **)calloc((size_t)argc + 40, sizeof *av);
    int i, k = 0;
    pid_t pid;
    av[k++] = prog;
    for (i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--handshake")) continue;
        if (demo_only(argv[i])) { i++; continue; }
        av[k++] = argv[i];
    }
    if (boot_addr[0]) { av[k++] = (char *)"--bootstrap"; av[k++] = boot_addr; }
    av[k++] = (char *)"--times";
    av[k++] = (char *)times;
    if (dir) { av[k++] = (char *)"--dir"; av[k++] = (char *)dir; }
    for (i = 0; extra && extra[i]; i++) av[k++] = extra[i];
    av[k] = NULL;
    pid = fork();
    if (pid == 0) {
        if (linger_fd[0] >= 0) {
            int lingering = 0, fds[4], j;
            for (i = 0; av[i]; i++) lingering |= !strcmp(av[i], "--linger");
            if (lingering && (dup2(linger_fd[0], 0) < 0 || dup2(done_fd[1], DONE_FD) < 0)) _exit(126);
            fds[0] = linger_fd[0]; fds[1] = linger_fd[1]; fds[2] = done_fd[0]; fds[3] = done_fd[1];
            for (j = 0; j < 4; j++)
                if (fds[j] != DONE_FD || !lingering) close(fds[j]);
        }
        execv(prog, av);
        perror(prog);
        _exit(127);
    }
    free(av);
    return pid;
}

/* A times file line. Prefill: room, first send, CPU filling its pages.
   Decode: room, Success, bytes, tokens, pages posted, CPU checking them. */
typedef struct rec { unsigned long long room, t, bytes, posted, cpu; unsigned tokens; } rec;

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* A request's transport interval: [first send, Success]. */
typedef struct span { uint64_t b, e; } span;

static int cmp_span(const void *a, const void *b) { return cmp_u64(a, b); /* by b, the first member */ }

/* Length of the union of n intervals (sorts them): the time at least one
   request was in flight, so overlapping requests count once. */
static uint64_t union_ns(span *v, size_t n) {
    uint64_t total = 0, b = 0, e = 0;
    size_t i;
    qsort(v, n, sizeof *v, cmp_span);
    for (i = 0; i < n; i++) {
        if (i && v[i].b <= e) {
            if (v[i].e > e) e = v[i].e;
            continue;
        }
        total += e - b;
        b = v[i].b;
        e = v[i].e;
    }
    return total + (e - b);
}

/* One summary line: a label, then its value right-aligned. */
static void line(const char *label, const char *fmt, ...) {
    char v[64];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(v, sizeof v, fmt, ap);
    va_end(ap);
    printf("  %-75s %14s\n", label, v);
}

static uint64_t mono_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static double pct(const uint64_t *sorted, size_t n, unsigned p) {
    size_t k = n * p / 100;
    return n ? (double)sorted[k < n ? k : n - 1] / 1e6 : 0.0;
}

/* The topology: sizes of each instance. */
typedef struct topo { unsigned ptp, dtp, ppp, dpp, dp; } topo;

/* Spawns every rank of one side; times files are "<base>.<index>". */
static int spawn_side(pid_t *pids, char *prog, int argc, char **argv, const char *base,
                      const char *dir, const topo *t, int prefill) {
    unsigned tp = prefill ? t->ptp : t->dtp, pp = prefill ? t->ppp : t->dpp, x, r, q, n = 0;
    for (x = 0; x < t->dp; x++)
        for (q = 0; q < pp; q++)
            for (r = 0; r < tp; r++) {
                char v[9][16], times[300];
                char *extra[32];
                int k = 0;
                snprintf(v[0], 16, "%u", tp); snprintf(v[1], 16, "%u", r);
                snprintf(v[2], 16, "%u", pp); snprintf(v[3], 16, "%u", q);
                snprintf(v[4], 16, "%u", t->dp); snprintf(v[5], 16, "%u", x);
                snprintf(v[6], 16, "%u", t->ptp); snprintf(v[7], 16, "%u", t->ppp);
                snprintf(v[8], 16, "%u", t->dtp);
                extra[k++] = (char *)"--tp"; extra[k++] = v[0];
                extra[k++] = (char *)"--tp-rank"; extra[k++] = v[1];
                extra[k++] = (char *)"--pp"; extra[k++] = v[2];
                extra[k++] = (char *)"--pp-rank"; extra[k++] = v[3];
                extra[k++] = (char *)"--dp"; extra[k++] = v[4];
                extra[k++] = (char *)"--dp-rank"; extra[k++] = v[5];
                if (!prefill) {
                    extra[k++] = (char *)"--prefill-tp"; extra[k++] = v[6];
                    extra[k++] = (char *)"--prefill-pp"; extra[k++] = v[7];
                } else {
                    extra[k++] = (char *)"--decode-tp"; extra[k++] = v[8];
                }
                extra[k++] = (char *)"--linger";
                extra[k++] = (char *)"--done-fd"; extra[k++] = (char *)"3";
                if (n) { extra[k++] = (char *)"--quiet"; }
                extra[k] = NULL;
                snprintf(times, sizeof times, "%s.%u", base, n);
                pids[n] = spawn(prog, argc, argv, times, dir, extra);
                n++;
            }
    return (int)n;
}

/* Reads every rank's times file of one side and removes it. */
static rec *read_side(const char *base, int n, int decode, size_t *count) {
    rec *v = NULL;
    int i;
    *count = 0;
    for (i = 0; i < n; i++) {
        char path[300];
        FILE *f;
        rec r;
        memset(&r, 0, sizeof r);
        snprintf(path, sizeof path, "%s.%d", base, i);
        if (!(f = fopen(path, "r"))) continue;
        while (decode ? fscanf(f, "%llu %llu %llu %u %llu %llu", &r.room, &r.t, &r.bytes, &r.tokens,
                               &r.posted, &r.cpu) == 6
                      : fscanf(f, "%llu %llu %llu", &r.room, &r.t, &r.cpu) == 3) {
            v = (rec *)realloc(v, (*count + 1) * sizeof *v);
            v[(*count)++] = r;
        }
        fclose(f);
        unlink(path);
    }
    return v;
}

int main(int argc, char **argv) {
    char ptimes[256], dtimes[256], dir[256], *dprog, *pprog;
    const char *user_dir = NULL, *transport = "file";
    int want_boot = 0, user_boot = 0, gpu = 0, np_ranks, nd_ranks, ok = 1, per_room;
    rec *p = NULL, *d = NULL;
    size_t np = 0, nd = 0, i, j, rooms = 0;
    uint64_t *lat, first = UINT64_MAX, last = 0, bytes = 0, t_spawn, t_exit, busy;
    span *spans;
    uint64_t *rlat, fill_cpu = 0, check_cpu = 0;
    pid_t pids[2][512];
    topo t = {1, 1, 1, 1, 1};
    int k;
    for (k = 1; k < argc; k++) {
        unsigned v = k + 1 < argc ? (unsigned)strtoul(argv[k + 1], NULL, 10) : 0;
        if (k + 1 < argc && !strcmp(argv[k], "--dir")) user_dir = argv[k + 1];
        if (k + 1 < argc && !strcmp(argv[k], "--transport")) transport = argv[k + 1];
        if (!strcmp(argv[k], "--bootstrap")) user_boot = 1;
        if (!strcmp(argv[k], "--handshake")) want_boot = 1;
        if (!strcmp(argv[k], "--gpu")) gpu = 1;
        if (!strcmp(argv[k], "--prefill-tp")) t.ptp = v;
        if (!strcmp(argv[k], "--decode-tp")) t.dtp = v;
        if (!strcmp(argv[k], "--prefill-pp")) t.ppp = v;
        if (!strcmp(argv[k], "--decode-pp")) t.dpp = v;
        if (!strcmp(argv[k], "--dp")) t.dp = v;
    }
    if (!t.ptp || !t.dtp || !t.ppp || !t.dpp || !t.dp ||
        (unsigned long)t.dp * (t.ptp * t.ppp > t.dtp * t.dpp ? t.ptp * t.ppp : t.dtp * t.dpp) > 512) {
        fprintf(stderr, "kvx demo: topology sizes must be >= 1 and at most 512 ranks a side\n");
        return 2;
    }
    if (!strcmp(transport, "cuda")) gpu = 1;
    /* every transport but file and fake needs the handshake */
    if (strcmp(transport, "file") && strcmp(transport, "fake")) want_boot = 1;
    if (want_boot && !user_boot)
        snprintf(boot_addr, sizeof boot_addr, "127.0.0.1:%d", free_port());
    snprintf(ptimes, sizeof ptimes, "/tmp/kvx_demo_%d.prefill", (int)getpid());
    snprintf(dtimes, sizeof dtimes, "/tmp/kvx_demo_%d.decode", (int)getpid());
    snprintf(dir, sizeof dir, "/tmp/kvx_demo_%d", (int)getpid());
    printf("kvx demo: prefill and decode processes, KV cache through the %s transport%s%s%s%s%s\n",
           transport, !strcmp(transport, "file") ? " in " : "",
           !strcmp(transport, "file") ? (user_dir ? user_dir : dir) : "",
           boot_addr[0] ? ", bootstrap at " : "", boot_addr, gpu ? ", pools on GPU 0" : "");
    if (t.ptp * t.dtp * t.ppp * t.dpp * t.dp > 1)
        printf("kvx demo: prefill TP %u PP %u, decode TP %u PP %u, DP %u: %u + %u rank processes\n",
               t.ptp, t.ppp, t.dtp, t.dpp, t.dp, t.dp * t.ptp * t.ppp, t.dp * t.dtp * t.dpp);
    fflush(stdout);
    dprog = sibling(argv[0], "kvx_decode");
    pprog = sibling(argv[0], "kvx_prefill");
    if (pipe(linger_fd) || pipe(done_fd)) {
        perror("pipe");
        return 1;
    }
    t_spawn = mono_ns();
    nd_ranks = spawn_side(pids[1], dprog, argc, argv, dtimes, user_dir ? NULL : dir, &t, 0);
    np_ranks = spawn_side(pids[0], pprog, argc, argv, ptimes, user_dir ? NULL : dir, &t, 1);
    close(linger_fd[0]);
    close(done_fd[1]);
    { /* end of file once every rank closed --done-fd or exited */
        char c;
        for (;;) {
            ssize_t got = read(done_fd[0], &c, 1);
            if (got > 0 || (got < 0 && errno == EINTR)) continue;
            break;
        }
    }
    close(done_fd[0]);
    close(linger_fd[1]); /* every rank is done: they may leave */
    for (k = np_ranks; k < np_ranks + nd_ranks + np_ranks; k++) { /* decode first */
        int st;
        pid_t pid = k < np_ranks + nd_ranks ? pids[1][k - np_ranks] : pids[0][k - np_ranks - nd_ranks];
        int dec = k < np_ranks + nd_ranks, idx = dec ? k - np_ranks : k - np_ranks - nd_ranks;
        waitpid(pid, &st, 0);
        if (!WIFEXITED(st) || WEXITSTATUS(st)) {
            fprintf(stderr, "kvx demo: %s rank process %d: status %d\n", dec ? "decode" : "prefill",
                    idx, st);
            ok = 0;
        }
    }
    t_exit = mono_ns();
    free(dprog);
    free(pprog);
    if (!user_dir) rmdir(dir);
    p = read_side(ptimes, np_ranks, 0, &np);
    d = read_side(dtimes, nd_ranks, 1, &nd);
    if (!ok) {
        fprintf(stderr, "kvx demo: FAILED\n");
        return 1;
    }
    /* a room is done when every decode rank of its DP group verified its part */
    per_room = (int)(t.dtp * t.dpp);
    lat = (uint64_t *)calloc(nd + 1, sizeof *lat);
    spans = (span *)calloc(nd + 1, sizeof *spans);
    rlat = (uint64_t *)calloc(nd + 1, sizeof *rlat);
    if (!lat || !spans || !rlat) {
        fprintf(stderr, "kvx demo: out of memory\n");
        return 1;
    }
    for (i = 0; i < nd; i++) {
        uint64_t pt = UINT64_MAX, dt = 0, posted = 0;
        int seen = 0;
        for (j = 0; j < i && d[j].room != d[i].room; j++) {}
        if (j < i) continue; /* counted with its first record */
        for (j = i; j < nd; j++)
            if (d[j].room == d[i].room) {
                seen++;
                if (d[j].t > dt) dt = d[j].t;
                if (d[j].posted > posted) posted = d[j].posted;
                check_cpu += d[j].cpu;
                bytes += d[j].bytes;
            }
        for (j = 0; j < np; j++)
            if (p[j].room == d[i].room && p[j].t < pt) pt = p[j].t;
        if (pt == UINT64_MAX || seen != per_room || dt < pt) {
            fprintf(stderr, "kvx demo: room %llu: %d of %d decode ranks verified it, %s prefill "
                            "record\n", d[i].room, seen, per_room, pt == UINT64_MAX ? "no" : "a");
            return 1;
        }
        spans[rooms].b = pt;
        spans[rooms].e = dt;
        rlat[rooms] = dt - (posted > pt && posted < dt ? posted : pt);
        lat[rooms++] = dt - pt;
        if (pt < first) first = pt;
        if (dt > last) last = dt;
    }
    qsort(lat, rooms, sizeof *lat, cmp_u64);
    busy = union_ns(spans, rooms);
    qsort(rlat, rooms, sizeof *rlat, cmp_u64);
    for (j = 0; j < np; j++) fill_cpu += p[j].cpu;
    if (!rooms) first = last = 0;
    /* kvx's figures first: what the transport did, from the first send to
       Success; then the simulated engine's work around it and the wall
       time, which that work fills too */
    {
        char v[64];
        long cpus = sysconf(_SC_NPROCESSORS_ONLN);
        printf("\n");
        line("requests (all verified byte for byte)", "%zu", rooms);
        line("KV bytes moved", "%.2f GiB", (double)bytes / (1u << 30));
        printf("\n  kvx transport, per request from the prefill's first send to the decode's Success:\n");
        line("transport time (first send -> Success, union over requests)", "%.3f s", (double)busy / 1e9);
        line("transport throughput (KV bytes / transport time)", "%.2f GB/s",
             busy ? (double)bytes / (double)busy : 0.0);
        snprintf(v, sizeof v, "%.1f / %.1f ms", pct(lat, rooms, 50), pct(lat, rooms, 99));
        line("request latency p50 / p99 (first send -> Success)", "%s", v);
        snprintf(v, sizeof v, "%.1f / %.1f ms", pct(rlat, rooms, 50), pct(rlat, rooms, 99));
        line("  the same from the decode posting its pages -> Success, p50 / p99", "%s", v);
        printf("\n  the simulated engine around it (CPU work a real engine does on its GPU; it shares\n"
               "  this machine's %ld CPUs with the transport, which slows the transport too):\n", cpus);
        line("CPU filling pages before the first send (prefill ranks)", "%.2f s", (double)fill_cpu / 1e9);
        line("CPU checking pages after Success (decode ranks)", "%.2f s", (double)check_cpu / 1e9);
        line("wall time (first send -> last Success; includes filling and checking pages)", "%.3f s",
             (double)(last - first) / 1e9);
        line("KV bytes / wall time (not kvx's speed)", "%.2f GB/s",
             last > first ? (double)bytes / (double)(last - first) : 0.0);
        line("whole demo (ranks spawned -> exited: pools and their page faults too)", "%.3f s",
             (double)(t_exit - t_spawn) / 1e9);
    }
    printf("\nkvx demo: OK\n");
    free(p); free(d); free(lat); free(spans); free(rlat);
    return 0;
}
