/* kvx_demo - runs kvx_prefill and kvx_decode as two processes moving a
   realistic KV cache through the file transport, then prints a summary:
   requests, bytes, GB/s, p50/p99 request latency (prefill's first send to
   decode's verified Success, both on CLOCK_MONOTONIC).

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
                   channel while the bytes still go through the files   */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
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

static pid_t spawn(char *prog, int argc, char **argv, const char *times, const char *dir) {
    char **av = (char **)calloc((size_t)argc + 10, sizeof *av);
    int i, k = 0;
    pid_t pid;
    av[k++] = prog;
    for (i = 1; i < argc; i++)
        if (strcmp(argv[i], "--handshake")) av[k++] = argv[i];
    if (boot_addr[0]) { av[k++] = (char *)"--bootstrap"; av[k++] = boot_addr; }
    av[k++] = (char *)"--times";
    av[k++] = (char *)times;
    if (dir) { av[k++] = (char *)"--dir"; av[k++] = (char *)dir; }
    av[k] = NULL;
    pid = fork();
    if (pid == 0) {
        execv(prog, av);
        perror(prog);
        _exit(127);
    }
    free(av);
    return pid;
}

typedef struct rec { unsigned long long room, t, bytes; unsigned tokens; } rec;

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    char ptimes[256], dtimes[256], dir[256], *dprog, *pprog;
    const char *user_dir = NULL, *transport = "file";
    int want_boot = 0, user_boot = 0, gpu = 0;
    rec *p = NULL, *d = NULL;
    size_t np = 0, nd = 0, i, j;
    uint64_t *lat, first = UINT64_MAX, last = 0, bytes = 0;
    int st_p, st_d, k;
    pid_t dp, pp;
    FILE *f;
    for (k = 1; k < argc; k++) {
        if (k + 1 < argc && !strcmp(argv[k], "--dir")) user_dir = argv[k + 1];
        if (k + 1 < argc && !strcmp(argv[k], "--transport")) transport = argv[k + 1];
        if (!strcmp(argv[k], "--bootstrap")) user_boot = 1;
        if (!strcmp(argv[k], "--handshake")) want_boot = 1;
        if (!strcmp(argv[k], "--gpu")) gpu = 1;
    }
    if (!strcmp(transport, "cuda")) gpu = 1;
    /* every transport but file and fake needs the handshake */
    if (strcmp(transport, "file") && strcmp(transport, "fake")) want_boot = 1;
    if (want_boot && !user_boot)
        snprintf(boot_addr, sizeof boot_addr, "127.0.0.1:%d", free_port());
    snprintf(ptimes, sizeof ptimes, "/tmp/kvx_demo_%d.prefill", (int)getpid());
    snprintf(dtimes, sizeof dtimes, "/tmp/kvx_demo_%d.decode", (int)getpid());
    snprintf(dir, sizeof dir, "/tmp/kvx_demo_%d", (int)getpid());
    if (!strcmp(transport, "file"))
        printf("kvx demo: prefill and decode processes, KV cache through the file transport in "
               "%s%s%s%s\n", user_dir ? user_dir : dir, boot_addr[0] ? ", bootstrap handshake at " : "",
               boot_addr, gpu ? ", pools on GPU 0" : "");
    else
        printf("kvx demo: prefill and decode processes, KV cache through the %s transport%s%s%s\n",
               transport, boot_addr[0] ? ", bootstrap at " : "", boot_addr,
               gpu ? ", pools on GPU 0" : "");
    fflush(stdout);
    dprog = sibling(argv[0], "kvx_decode");
    pprog = sibling(argv[0], "kvx_prefill");
    dp = spawn(dprog, argc, argv, dtimes, user_dir ? NULL : dir);
    pp = spawn(pprog, argc, argv, ptimes, user_dir ? NULL : dir);
    waitpid(pp, &st_p, 0);
    waitpid(dp, &st_d, 0);
    free(dprog);
    free(pprog);
    if (!user_dir) rmdir(dir);
    if (!WIFEXITED(st_p) || WEXITSTATUS(st_p) || !WIFEXITED(st_d) || WEXITSTATUS(st_d)) {
        fprintf(stderr, "kvx demo: FAILED (prefill status %d, decode status %d)\n", st_p, st_d);
        return 1;
    }
    if ((f = fopen(ptimes, "r"))) {
        rec r;
        while (fscanf(f, "%llu %llu", &r.room, &r.t) == 2) {
            p = (rec *)realloc(p, (np + 1) * sizeof *p);
            p[np++] = r;
        }
        fclose(f);
    }
    if ((f = fopen(dtimes, "r"))) {
        rec r;
        while (fscanf(f, "%llu %llu %llu %u", &r.room, &r.t, &r.bytes, &r.tokens) == 4) {
            d = (rec *)realloc(d, (nd + 1) * sizeof *d);
            d[nd++] = r;
        }
        fclose(f);
    }
    unlink(ptimes);
    unlink(dtimes);
    lat = (uint64_t *)calloc(nd + 1, sizeof *lat);
    for (i = 0; i < nd; i++) {
        for (j = 0; j < np && p[j].room != d[i].room; j++) {}
        if (j == np) { fprintf(stderr, "kvx demo: room %llu has no prefill record\n", d[i].room); return 1; }
        lat[i] = d[i].t - p[j].t;
        if (p[j].t < first) first = p[j].t;
        if (d[i].t > last) last = d[i].t;
        bytes += d[i].bytes;
    }
    qsort(lat, nd, sizeof *lat, cmp_u64);
    printf("\n  %-28s %12zu\n", "requests (all verified)", nd);
    printf("  %-28s %12.2f GiB\n", "KV bytes moved", (double)bytes / (1u << 30));
    printf("  %-28s %12.2f s\n", "wall time", (double)(last - first) / 1e9);
    printf("  %-28s %12.2f GB/s\n", "throughput", (double)bytes / (double)(last - first));
    printf("  %-28s %12.1f ms\n", "request latency p50", nd ? (double)lat[nd / 2] / 1e6 : 0.0);
    printf("  %-28s %12.1f ms\n", "request latency p99",
           nd ? (double)lat[(nd * 99) / 100 < nd ? (nd * 99) / 100 : nd - 1] / 1e6 : 0.0);
    printf("\nkvx demo: OK\n");
    free(p); free(d); free(lat);
    return 0;
}
