/* bench_boot - the kvx_boot handshake between two processes over loopback
   (this process: a decode engine; a child process: a prefill engine), on
   the bootfake transport, so what is measured is the bootstrap and control
   channel, not data movement.

   latency:    one room at a time, from kvx_receiver_create to the receiver
               polling Success: WaitingForInput, the room frame to the
               prefill, the sender's WaitingForInput, init + send there, the
               status frame back. p50 / p99 / max.
   throughput: rooms per second with a window of rooms in flight.
   handshake:  a fresh decode engine's first room, from kvx_receiver_create
               to WaitingForInput: GET /route twice, connect, hellos (and
               with a key the challenge and response). p50 / p99.
   Everything runs twice in the same invocation, without and with a shared
   key (KVX_AUTH_KEY), and the keyed/keyless ratios are printed.

   Usage: bench_boot [--rooms N] [--latency-rooms N] [--window N] [--handshakes N]
   Goals: p99 < 1 ms, >= 20000 rooms/s. Tail latency depends on how busy
   the machine's cores are (4 busy threads share them), so the load average
   is printed with the results. */
#define KVX_IMPLEMENTATION
#include "../kvx_boot.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <unistd.h>
#include <poll.h>
#include <sys/wait.h>
#include <sys/prctl.h>
#include <time.h>

extern char **environ;

#define PAGES 8
#define POOL 65536
#define BASE 1000000ull

static kvx_engine *make_engine(kvx_role role, const char *addr, kvx_buffer *bufs,
                               kvx_aux_buffer *aux, void **mem) {
    kvx_engine_desc d;
    kvx_engine *e = NULL;
    char why[512];
    int i;
    *mem = calloc(1, 2 * POOL * 64 + 64 * 64);
    memset(bufs, 0, 2 * sizeof *bufs);
    memset(aux, 0, sizeof *aux);
    for (i = 0; i < 2; i++) {
        bufs[i].base = (char *)*mem + (size_t)i * POOL * 64;
        bufs[i].length = (uint64_t)POOL * 64;
        bufs[i].item_len = 64;
    }
    aux->base = (char *)*mem + 2 * POOL * 64;
    aux->length = 64 * 64;
    aux->item_len = 64;
    memset(&d, 0, sizeof d);
    d.role = role;
    d.transport = "bootfake";
    d.layout.buffers = bufs;
    d.layout.num_buffers = 2;
    d.layout.aux = aux;
    d.layout.num_aux = 1;
    d.layout.page_size = 16;
    d.layout.num_kv_heads = 8;
    d.layout.dtype_size = 2;
    d.layout.dtype = "bfloat16";
    d.boot.host = "127.0.0.1";
    d.boot.port = -1; /* ephemeral */
    d.bootstrap_addr = addr;
    kvx_boot_register();
    if (kvx_engine_create(&d, &e, why, sizeof why) != KVX_OK) {
        fprintf(stderr, "bench_boot: cannot create the %s engine: %s\n",
                role == KVX_ROLE_PREFILL ? "prefill" : "decode", why);
        return NULL;
    }
    return e;
}

/* How the polling application threads wait between polls (an engine's
   scheduler loop stands in here): 0 sched_yield (default), 1 spin,
   2 nanosleep(BENCH_BOOT_WAIT_NS) with 1 ns timer slack. Set with
   BENCH_BOOT_WAIT. */
static int g_wait = 0;
static long g_wait_ns = 2000;

static void idle(void) {
    if (g_wait == 0) sched_yield();
    else if (g_wait == 2) {
        struct timespec ts;
        ts.tv_sec = 0;
        ts.tv_nsec = g_wait_ns;
        nanosleep(&ts, NULL);
    }
}

/* The child: senders for rooms BASE.. in order, a window ahead of decode. */
static int prefill_main(uint64_t total, int window) {
    kvx_buffer bufs[2];
    kvx_aux_buffer aux;
    void *mem;
    kvx_engine *e = make_engine(KVX_ROLE_PREFILL, NULL, bufs, &aux, &mem);
    kvx_sender **slot;
    uint64_t created = 0, done = 0, j;
    int32_t pages[PAGES] = {0, 1, 2, 3, 4, 5, 6, 7};
    char tmp[16];
    if (!e) return 1;
    slot = (kvx_sender **)calloc((size_t)window, sizeof *slot);
    printf("%d\n", kvx_boot_engine_port(e));
    fflush(stdout);
    while (done < total) {
        int progressed = 0;
        while (created < total && created - done < (uint64_t)window) {
            kvx_room_desc rd;
            memset(&rd, 0, sizeof rd);
            rd.room = BASE + created;
            kvx_sender_create(e, &rd, &slot[created % (uint64_t)window]);
            created++;
        }
        for (j = done; j < created; j++) {
            kvx_sender **s = &slot[j % (uint64_t)window];
            kvx_poll st;
            if (!*s) continue;
            st = kvx_sender_poll(*s);
            if (st == KVX_POLL_WAITING_FOR_INPUT) {
                if (kvx_sender_init(*s, PAGES, -1) == KVX_OK) kvx_sender_send(*s, pages, PAGES);
                st = kvx_sender_poll(*s);
                progressed = 1;
            }
            if (st == KVX_POLL_SUCCESS || st == KVX_POLL_FAILED) {
                kvx_sender_destroy(*s);
                *s = NULL;
                progressed = 1;
            }
        }
        while (done < created && !slot[done % (uint64_t)window]) done++;
        if (!progressed) idle();
    }
    while (read(0, tmp, sizeof tmp) > 0) {} /* until the parent is finished */
    free(slot);
    kvx_engine_destroy(e);
    free(mem);
    return 0;
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

static kvx_receiver *open_recv(kvx_engine *e, uint64_t room) {
    kvx_room_desc rd;
    kvx_receiver *r = NULL;
    memset(&rd, 0, sizeof rd);
    rd.room = room;
    kvx_receiver_create(e, &rd, &r);
    return r;
}

static void fill_pages(int32_t *p, uint64_t i) {
    int k;
    for (k = 0; k < PAGES; k++) p[k] = (int32_t)((i * PAGES + (uint64_t)k) % POOL);
}

typedef struct phase_out {
    double hs_p50, hs_p99, lat_p50, lat_p99, rps;
    uint64_t failed;
} phase_out;

static const char *g_self;

/* One full run against a fresh prefill process; key NULL = keyless. */
static int phase(const char *key, uint64_t lat_rooms, uint64_t tput_rooms, int window,
                 uint64_t handshakes, phase_out *res) {
    uint64_t i, next, done, failed = 0;
    int in_fd[2], out_fd[2], port = 0, status;
    kvx_buffer bufs[2];
    kvx_aux_buffer aux;
    void *mem;
    kvx_engine *e;
    kvx_receiver **fl;
    uint64_t *lat;
    char addr[64], self[4096], line[64], nbuf[32], wbuf[16];
    pid_t pid;
    posix_spawn_file_actions_t fa;
    double t0, t1, rps;
    ssize_t sl;
    if (key) setenv("KVX_AUTH_KEY", key, 1); /* the prefill child and our engines */
    else unsetenv("KVX_AUTH_KEY");
    snprintf(self, sizeof self, "%s", g_self);
    (void)sl;
    snprintf(nbuf, sizeof nbuf, "%llu", (unsigned long long)(1 + lat_rooms + tput_rooms));
    snprintf(wbuf, sizeof wbuf, "%d", window * 2);
    if (pipe(in_fd) || pipe(out_fd)) return 1;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, in_fd[0], 0);
    posix_spawn_file_actions_adddup2(&fa, out_fd[1], 1);
    posix_spawn_file_actions_addclose(&fa, in_fd[1]);
    posix_spawn_file_actions_addclose(&fa, out_fd[0]);
    {
        char *cargv[5];
        cargv[0] = self;
        cargv[1] = (char *)"--prefill";
        cargv[2] = nbuf;
        cargv[3] = wbuf;
        cargv[4] = NULL;
        if (posix_spawn(&pid, self, &fa, NULL, cargv, environ)) { perror("posix_spawn"); return 1; }
    }
    posix_spawn_file_actions_destroy(&fa);
    close(in_fd[0]);
    close(out_fd[1]);
    {
        size_t len = 0;
        while (len < sizeof line - 1) {
            ssize_t r = read(out_fd[0], line + len, 1);
            if (r <= 0 || line[len] == '\n') break;
            len++;
        }
        line[len] = 0;
        port = atoi(line);
    }
    if (port <= 0) { fprintf(stderr, "bench_boot: the prefill process did not start\n"); return 1; }
    snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
    e = make_engine(KVX_ROLE_DECODE, addr, bufs, &aux, &mem);
    if (!e) return 1;
    {
        char la[64] = "?";
        FILE *f = fopen("/proc/loadavg", "r");
        if (f) { if (!fgets(la, sizeof la, f)) la[0] = 0; fclose(f); }
        la[strcspn(la, "\n")] = 0;
        printf("bench_boot: decode engine here, prefill engine in process %d, loopback, transport "
               "bootfake, %d pages per room, %ld CPUs, load average %s\n", (int)pid, PAGES,
               sysconf(_SC_NPROCESSORS_ONLN), la);
    }

    /* warm-up: resolve the prefill and open the control channel */
    {
        kvx_receiver *r = open_recv(e, BASE);
        int32_t p[PAGES];
        uint64_t end = kvx_now_ns() + 10000000000ull;
        while (kvx_receiver_poll(r) == KVX_POLL_BOOTSTRAPPING && kvx_now_ns() < end) sched_yield();
        fill_pages(p, 0);
        kvx_receiver_init(r, p, PAGES, -1);
        while (kvx_receiver_poll(r) == KVX_POLL_TRANSFERRING && kvx_now_ns() < end) sched_yield();
        if (kvx_receiver_poll(r) != KVX_POLL_SUCCESS) {
            fprintf(stderr, "bench_boot: warm-up room failed: %s\n", kvx_receiver_error(r));
            return 1;
        }
        kvx_receiver_destroy(r);
    }

    /* handshake: a fresh decode engine's first room up to WaitingForInput */
    {
        uint64_t *hs = (uint64_t *)malloc(handshakes * sizeof *hs), h;
        for (h = 0; h < handshakes; h++) {
            kvx_buffer hb[2];
            kvx_aux_buffer ha;
            void *hm;
            kvx_engine *he = make_engine(KVX_ROLE_DECODE, addr, hb, &ha, &hm);
            kvx_receiver *r;
            uint64_t s;
            if (!he) return 1;
            s = kvx_now_ns();
            r = open_recv(he, BASE - 1 - h);
            while (kvx_receiver_poll(r) == KVX_POLL_BOOTSTRAPPING) idle();
            hs[h] = kvx_now_ns() - s;
            if (kvx_receiver_poll(r) != KVX_POLL_WAITING_FOR_INPUT) {
                fprintf(stderr, "bench_boot: handshake failed: %s\n", kvx_receiver_error(r));
                failed++;
            }
            kvx_receiver_destroy(r);
            kvx_engine_destroy(he);
            free(hm);
        }
        qsort(hs, handshakes, sizeof *hs, cmp_u64);
        res->hs_p50 = hs[handshakes / 2] / 1e3;
        res->hs_p99 = hs[handshakes * 99 / 100] / 1e3;
        printf("handshake  %llu fresh decode engines%s: p50 %.1f us, p99 %.1f us\n",
               (unsigned long long)handshakes, key ? " (keyed)" : "", res->hs_p50, res->hs_p99);
        free(hs);
    }

    /* latency: one room at a time */
    lat = (uint64_t *)malloc(lat_rooms * sizeof *lat);
    for (i = 0; i < lat_rooms; i++) {
        uint64_t s = kvx_now_ns();
        int32_t p[PAGES];
        kvx_receiver *r = open_recv(e, BASE + 1 + i);
        while (kvx_receiver_poll(r) == KVX_POLL_BOOTSTRAPPING) idle();
        fill_pages(p, i);
        kvx_receiver_init(r, p, PAGES, -1);
        while (kvx_receiver_poll(r) == KVX_POLL_TRANSFERRING) idle();
        lat[i] = kvx_now_ns() - s;
        if (kvx_receiver_poll(r) != KVX_POLL_SUCCESS) failed++;
        kvx_receiver_destroy(r);
    }
    qsort(lat, lat_rooms, sizeof *lat, cmp_u64);
    res->lat_p50 = lat[lat_rooms / 2] / 1e3;
    res->lat_p99 = lat[lat_rooms * 99 / 100] / 1e3;
    printf("latency    %llu rooms one at a time%s: p50 %.1f us, p99 %.1f us, p99.9 %.1f us, max %.1f us\n",
           (unsigned long long)lat_rooms, key ? " (keyed)" : "", lat[lat_rooms / 2] / 1e3, lat[lat_rooms * 99 / 100] / 1e3,
           lat[lat_rooms * 999 / 1000] / 1e3, lat[lat_rooms - 1] / 1e3);

    /* throughput: a window of rooms in flight */
    fl = (kvx_receiver **)calloc((size_t)window, sizeof *fl);
    next = done = 0;
    t0 = (double)kvx_now_ns();
    while (done < tput_rooms) {
        int w, progressed = 0;
        for (w = 0; w < window; w++) {
            kvx_receiver **r = &fl[w];
            kvx_poll st;
            if (!*r) {
                if (next >= tput_rooms) continue;
                *r = open_recv(e, BASE + 1 + lat_rooms + next++);
                progressed = 1;
            }
            st = kvx_receiver_poll(*r);
            if (st == KVX_POLL_WAITING_FOR_INPUT) {
                int32_t p[PAGES];
                fill_pages(p, next);
                kvx_receiver_init(*r, p, PAGES, -1);
                progressed = 1;
            } else if (st == KVX_POLL_SUCCESS || st == KVX_POLL_FAILED) {
                if (st == KVX_POLL_FAILED) failed++;
                kvx_receiver_destroy(*r);
                *r = NULL;
                done++;
                progressed = 1;
            }
        }
        if (!progressed) idle();
    }
    t1 = (double)kvx_now_ns();
    rps = (double)tput_rooms / ((t1 - t0) / 1e9);
    res->rps = rps;
    res->failed = failed;
    printf("throughput %llu rooms, %d in flight%s: %.0f rooms/s (%.2f s)\n",
           (unsigned long long)tput_rooms, window, key ? " (keyed)" : "", rps, (t1 - t0) / 1e9);
    printf("goals      p99 < 1 ms: %s; >= 20000 rooms/s: %s; failed rooms: %llu\n",
           lat[lat_rooms * 99 / 100] < 1000000 ? "met" : "MISSED", rps >= 20000 ? "met" : "MISSED",
           (unsigned long long)failed);
    close(in_fd[1]);
    waitpid(pid, &status, 0);
    close(out_fd[0]);
    free(fl);
    free(lat);
    kvx_engine_destroy(e);
    free(mem);
    unsetenv("KVX_AUTH_KEY");
    return failed ? 1 : 0;
}

int main(int argc, char **argv) {
    uint64_t lat_rooms = 20000, tput_rooms = 200000, handshakes = 500;
    int window = 1024, a, rc;
    static char self[4096];
    ssize_t sl;
    phase_out plain, keyed;
    const char *q = getenv("KVX_TEST_QUICK");
    signal(SIGPIPE, SIG_IGN);
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (getenv("BENCH_BOOT_WAIT")) g_wait = atoi(getenv("BENCH_BOOT_WAIT"));
    if (getenv("BENCH_BOOT_WAIT_NS")) g_wait_ns = atol(getenv("BENCH_BOOT_WAIT_NS"));
    prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
    if (argc >= 4 && !strcmp(argv[1], "--prefill"))
        return prefill_main(strtoull(argv[2], NULL, 10), atoi(argv[3]));
    if (q && *q && strcmp(q, "0")) { lat_rooms = 2000; tput_rooms = 20000; handshakes = 100; }
    for (a = 1; a + 1 < argc; a += 2) {
        if (!strcmp(argv[a], "--rooms")) tput_rooms = strtoull(argv[a + 1], NULL, 10);
        else if (!strcmp(argv[a], "--latency-rooms")) lat_rooms = strtoull(argv[a + 1], NULL, 10);
        else if (!strcmp(argv[a], "--window")) window = atoi(argv[a + 1]);
        else if (!strcmp(argv[a], "--handshakes")) handshakes = strtoull(argv[a + 1], NULL, 10);
        else {
            fprintf(stderr, "usage: %s [--rooms N] [--latency-rooms N] [--window N] [--handshakes N]\n", argv[0]);
            return 2;
        }
    }
    if (!lat_rooms || !tput_rooms || window < 1 || !handshakes) {
        fprintf(stderr, "bench_boot: sizes must be positive\n");
        return 2;
    }
    sl = readlink("/proc/self/exe", self, sizeof self - 1);
    if (sl <= 0) { fprintf(stderr, "bench_boot: cannot find myself\n"); return 1; }
    self[sl] = 0;
    g_self = self;
    memset(&plain, 0, sizeof plain);
    memset(&keyed, 0, sizeof keyed);
    rc = phase(NULL, lat_rooms, tput_rooms, window, handshakes, &plain);
    printf("-- the same with a shared key (KVX_AUTH_KEY) --\n");
    rc |= phase("bench-boot-shared-key-0123456789", lat_rooms, tput_rooms, window, handshakes, &keyed);
    if (plain.hs_p50 > 0 && plain.lat_p50 > 0 && plain.rps > 0)
        printf("auth cost  keyed/keyless: handshake p50 %.2fx (p99 %.2fx), room latency p50 %.2fx, "
               "throughput %.2fx\n", keyed.hs_p50 / plain.hs_p50, keyed.hs_p99 / plain.hs_p99,
               keyed.lat_p50 / plain.lat_p50, keyed.rps / plain.rps);
    return rc;
}
