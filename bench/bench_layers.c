/* bench_layers - layer-wise against chunk-wise sends (LAYER-WISE SEND), in
   one run.

   One 4096-token Llama-3.1-8B request (32 layers, 64 buffers, page size 16,
   item_len 32 KiB: 256 pages, 512 MiB, scattered over both pools) computed
   as one chunk by a simulated prefill: X ms of busy work per layer on this
   thread (it takes a core, as an engine's launch thread does). Chunk-wise
   sends the chunk after its last layer (kvx_sender_send); layer-wise sends
   each layer's pages right after that layer (kvx_sender_send_layers). What
   is measured: the tail, from the end of the last layer's compute to the
   receiver's Success (every byte in the decode pool). The goal: the
   layer-wise tail is at most about one layer's transfer time (the
   all-layer transfer time with no compute, divided by the layers).

   Prefill and decode are engines of this process: tcp over loopback, file
   in a directory under build/ (KVX_BENCH_DIR to choose), and rdma on
   softverbs (the test-only verbs device: an emulator, so its times are
   not a NIC's; its work requests and posts per request are the figure).
   Every rep's bytes are verified on the decode side (every page, every
   buffer, the aux row) before the next. Median of KVX_BENCH_REPS (3)
   reps alternating chunk-wise and layer-wise; compute times 0.5, 2 and 10
   ms per layer (KVX_BENCH_LAYER_MS="0.5 2 10" to change).

   The chunk-wise tail is the all-layer transfer time under the same load,
   and 1/32 of it one layer's. The floor printed beside each figure is what
   no sender can beat: one layer's transfer after the last layer, or, where
   a layer takes longer to move than to compute (loopback tcp at 2-4 GB/s
   moves a 16 MiB layer in 4-8 ms, more than 0.5 or 2 ms of compute), the
   all-layer transfer minus the compute it can overlap. The goal is a
   layer-wise tail within one layer's transfer of that floor. */
#if defined(__has_include)
#if __has_include(<infiniband/verbs.h>)
#define KVX_WITH_RDMA 1
#endif
#endif
#define KVX_IMPLEMENTATION
#include "../kvx_file.h"
#include "../kvx_tcp.h"
#include "../kvx_rdma.h"
#include "../examples/kvx_example.h"
#include <dlfcn.h>
#include <sys/stat.h>
#include <unistd.h>

#define TOKENS 4096
#define PAGE 16
#define NPAGES (TOKENS / PAGE)
#define POOL_PAGES (NPAGES + 64)

static double now_s(void) { return (double)kvx_now_ns() / 1e9; }

static void quiet(void *u, kvx_log_level l, const char *s, uint64_t room, const char *m) {
    (void)u; (void)room;
    if (l <= KVX_LOG_WARN) fprintf(stderr, "kvx %s: %s\n", s, m);
}

typedef struct pair {
    const char *transport;
    ex_pool sp, dp;
    int32_t spg[NPAGES], dpg[NPAGES];
    kvx_engine *pe, *de;
    uint32_t layers;
} pair;

static int pair_open(pair *x, const ex_model *m, const char *transport, const char *dir) {
    kvx_engine_desc d;
    char why[KVX_ERROR_MAX], addr[64];
    memset(x, 0, sizeof *x);
    x->transport = transport;
    if (ex_pool_init(&x->sp, m, POOL_PAGES, PAGE, 4, 1) || ex_pool_init(&x->dp, m, POOL_PAGES, PAGE, 4, 2)) {
        fprintf(stderr, "bench_layers: out of memory for two pools of %u pages\n", POOL_PAGES);
        return -1;
    }
    x->layers = x->sp.layers;
    ex_alloc_pages(&x->sp, x->spg, NPAGES);
    ex_alloc_pages(&x->dp, x->dpg, NPAGES);
    memset(&d, 0, sizeof d);
    d.role = KVX_ROLE_PREFILL;
    d.transport = transport;
    d.layout = x->sp.layout;
    d.logger.func = quiet;
    d.file.dir = dir;
    d.boot.host = "127.0.0.1";
    d.boot.port = -1;
    d.tcp.host = "127.0.0.1";
    if (!strcmp(transport, "file")) d.boot.port = 0;
    if (kvx_engine_create(&d, &x->pe, why, sizeof why)) {
        fprintf(stderr, "bench_layers: %s prefill engine: %s\n", transport, why);
        return -1;
    }
    if (strcmp(transport, "file")) {
        snprintf(addr, sizeof addr, "127.0.0.1:%d", kvx_boot_engine_port(x->pe));
        d.bootstrap_addr = addr;
    }
    d.role = KVX_ROLE_DECODE;
    d.layout = x->dp.layout;
    if (kvx_engine_create(&d, &x->de, why, sizeof why)) {
        fprintf(stderr, "bench_layers: %s decode engine: %s\n", transport, why);
        return -1;
    }
    return 0;
}

static void pair_close(pair *x) {
    kvx_engine_destroy(x->pe);
    kvx_engine_destroy(x->de);
    ex_pool_free(&x->sp);
    ex_pool_free(&x->dp);
}

/* One request: the per-layer compute, then (chunk-wise) the send; returns
   the tail (end of the last layer's compute -> the receiver's Success) and
   in *all the time from the first send to Success. -1 on a failure. */
static double rep(pair *x, uint64_t room, int layerwise, double layer_ms, double *all) {
    kvx_room_desc rd;
    kvx_sender *s = NULL;
    kvx_receiver *r = NULL;
    double t_first = 0, t_end, t_ok, end = now_s() + 120;
    uint32_t l, b;
    int ok = 1;
    memset(&rd, 0, sizeof rd);
    rd.room = room;
    ex_pages_pattern(&x->sp, room, x->spg, NPAGES, 1);
    ex_aux_write(&x->sp, room, 0);
    for (b = 0; b < x->dp.layout.num_buffers; b++) /* nothing left from the previous rep */
        memset(x->dp.layout.buffers[b].base, 0, (size_t)x->dp.layout.buffers[b].length);
    ex_aux_clear(&x->dp, 0);
    if (kvx_receiver_create(x->de, &rd, &r) || kvx_sender_create(x->pe, &rd, &s)) return -1;
    kvx_receiver_wait(r, KVX_POLL_WAITING_FOR_INPUT, 60000);
    if (kvx_receiver_init(r, x->dpg, NPAGES, 0) != KVX_OK) ok = 0;
    kvx_sender_wait(s, KVX_POLL_WAITING_FOR_INPUT, 60000);
    if (kvx_sender_init(s, NPAGES, 0) != KVX_OK) ok = 0;
    for (l = 0; ok && l < x->layers; l++) {
        ex_busy_ms(layer_ms);
        if (layerwise) {
            if (!l) t_first = now_s();
            if (kvx_sender_send_layers(s, x->spg, NPAGES, x->sp.layer_begin + l,
                                       x->sp.layer_begin + l + 1) != KVX_OK)
                ok = 0;
        }
    }
    t_end = now_s();
    if (ok && !layerwise) {
        t_first = t_end;
        if (kvx_sender_send(s, x->spg, NPAGES) != KVX_OK) ok = 0;
    }
    while (ok && kvx_receiver_wait(r, KVX_POLL_SUCCESS, 1000) == KVX_POLL_TRANSFERRING && now_s() < end) {}
    t_ok = now_s();
    if (kvx_receiver_poll(r) != KVX_POLL_SUCCESS) {
        fprintf(stderr, "bench_layers: %s room %llu: %s / %s\n", x->transport, (unsigned long long)room,
                kvx_sender_error(s), kvx_receiver_error(r));
        ok = 0;
    }
    kvx_sender_wait(s, KVX_POLL_SUCCESS, 60000);
    if (ok && (ex_pages_pattern(&x->dp, room, x->dpg, NPAGES, 0) || !ex_aux_check(&x->dp, room, 0))) {
        fprintf(stderr, "bench_layers: %s room %llu: the decode pool's bytes are wrong\n",
                x->transport, (unsigned long long)room);
        ok = 0;
    }
    kvx_sender_destroy(s);
    kvx_receiver_destroy(r);
    if (all) *all = t_ok - t_first;
    return ok ? t_ok - t_end : -1;
}

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp_d);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static int run(pair *x, int reps, const double *ms, int nms, uint64_t *room) {
    int i, k;
    for (k = 0; k < nms; k++) {
        double tc[16], tl[16], one, lt, ct, floor_s;
        for (i = 0; i < reps; i++) { /* alternate, so load drifts hit both */
            if ((tc[i] = rep(x, (*room)++, 0, ms[k], NULL)) < 0) return -1;
            if ((tl[i] = rep(x, (*room)++, 1, ms[k], NULL)) < 0) return -1;
        }
        ct = median(tc, reps);
        lt = median(tl, reps);
        /* the chunk-wise tail is the all-layer transfer under the same load;
           one layer's transfer is its share. What no sender can beat: the
           last layer's transfer, or, when a layer moves slower than it
           computes, the transfer the compute could not cover */
        one = ct / x->layers;
        floor_s = ct - ms[k] * 1e-3 * (x->layers - 1);
        if (floor_s < one) floor_s = one;
        printf("  %-5s %4.1f ms/layer (%4.0f ms compute): tail chunk-wise %7.1f ms (one layer %5.2f ms), "
               "layer-wise %7.1f ms (%.2fx); floor %6.1f ms%s\n",
               x->transport, ms[k], ms[k] * x->layers, ct * 1e3, one * 1e3, lt * 1e3, lt / ct,
               floor_s * 1e3, lt <= floor_s + one ? "  goal met" : "  ABOVE GOAL (floor + one layer)");
    }
    return 0;
}

#ifdef KVX_WITH_RDMA
static int find_softverbs(char *out, size_t n) {
    const char *env = getenv("SOFTVERBS_LIB");
    char self[2048], cand[2300], *slash;
    struct stat st;
    ssize_t l;
    if (env && *env && stat(env, &st) == 0) { snprintf(out, n, "%s", env); return 1; }
    l = readlink("/proc/self/exe", self, sizeof self - 1);
    if (l <= 0) return 0;
    self[l] = 0;
    slash = strrchr(self, '/');
    if (slash) *slash = 0;
    snprintf(cand, sizeof cand, "%s/../tests/softverbs/libsoftverbs.so", self);
    if (stat(cand, &st) == 0) { snprintf(out, n, "%s", cand); return 1; }
    return 0;
}

/* rdma on softverbs: work requests and posts per request, both ways. */
static int rdma_counts(const ex_model *m, int reps, uint64_t *room) {
    pair x;
    char lib[2400];
    kvx_rdma_stats a, b;
    int mode;
    if (!find_softverbs(lib, sizeof lib)) {
        printf("  rdma  skipped: libsoftverbs.so not found (make softverbs)\n");
        return 0;
    }
    setenv("KVX_IBVERBS_LIBRARY", lib, 1);
    if (pair_open(&x, m, "rdma", NULL)) return -1;
    for (mode = 0; mode < 2; mode++) {
        double t[16];
        int i;
        kvx_rdma_stats_get(x.pe, &a);
        for (i = 0; i < reps; i++)
            if ((t[i] = rep(&x, (*room)++, mode, 0.5, NULL)) < 0) { pair_close(&x); return -1; }
        kvx_rdma_stats_get(x.pe, &b);
        printf("  rdma  %s, 0.5 ms/layer (softverbs, times are an emulator's): per request %6.0f "
               "WRITEs, %5.0f posts, %5.0f signaled, %4.0f planned chunks; tail %.1f ms\n",
               mode ? "layer-wise" : "chunk-wise", (double)(b.wrs - a.wrs) / reps,
               (double)(b.posts - a.posts) / reps, (double)(b.signaled - a.signaled) / reps,
               (double)(b.chunks - a.chunks) / reps, median(t, reps) * 1e3);
    }
    pair_close(&x);
    return 0;
}
#endif

int main(void) {
    const ex_model *m = ex_model_find("llama-3.1-8b");
    const char *e = getenv("KVX_BENCH_REPS"), *lm = getenv("KVX_BENCH_LAYER_MS");
    const char *bd = getenv("KVX_BENCH_DIR");
    int reps = e ? atoi(e) : 3, nms = 0;
    double ms[8];
    char dir[512];
    uint64_t room = 1000;
    pair x;
    if (reps < 1 || reps > 16) reps = 3;
    if (!lm) lm = "0.5 2 10";
    while (nms < 8 && *lm) {
        char *end;
        double v = strtod(lm, &end);
        if (end == lm) break;
        if (v >= 0 && v <= 100) ms[nms++] = v;
        lm = end;
    }
    snprintf(dir, sizeof dir, "%s/bench_layers.%d", bd ? bd : "build", (int)getpid());
    if (mkdir(dir, 0700) && errno != EEXIST) {
        fprintf(stderr, "bench_layers: cannot make %s: %s\n", dir, strerror(errno));
        return 1;
    }
    kvx_file_register();
    kvx_tcp_register();
    kvx_rdma_register();
    printf("bench_layers: 4096-token Llama-3.1-8B request (32 layers, 512 MiB, one chunk, scattered "
           "pages), prefill and decode engines in this process, %ld CPUs; tail = end of the last "
           "layer's compute -> the receiver's Success; median of %d reps; goal: layer-wise tail within "
           "one layer's transfer of the floor\n", sysconf(_SC_NPROCESSORS_ONLN), reps);
    if (pair_open(&x, m, "tcp", NULL) || run(&x, reps, ms, nms, &room)) return 1;
    pair_close(&x);
    if (pair_open(&x, m, "file", dir) || run(&x, reps, ms, nms, &room)) return 1;
    pair_close(&x);
    rmdir(dir);
#ifdef KVX_WITH_RDMA
    if (rdma_counts(m, reps, &room)) return 1;
#else
    printf("  rdma  skipped: built without the rdma-core headers (Debian: libibverbs-dev)\n");
#endif
    return 0;
}
