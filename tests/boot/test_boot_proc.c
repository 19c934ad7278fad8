/* test_boot_proc - kvx_boot across real processes. The test program runs
   itself as a helper (--prefill / --decode) so every build (plain, ASan,
   TSan) tests the same code on both sides.

   - 1000 concurrent rooms between a decode engine here and a prefill process
   - kill -9 of the prefill mid-transfer: every decode room fails, naming the
     prefill, within KVX_HEARTBEAT_INTERVAL * KVX_HEARTBEAT_MAX_FAILURE + 1 s
   - a hung prefill (SIGSTOP, connections stay open): the heartbeats find it
   - the prefill restarted on the same port: new rooms succeed with the same
     decode engine
   - kill -9 of a decode process: its prefill rooms fail and are freed, and
     senders created after it died for rooms it had sent fail at once */
#define KVX_IMPLEMENTATION
#include "boot_test.h"

#define HB_INTERVAL 0.5
#define HB_MAX 2

static char g_self[4096];

/* ---- helpers (child processes) -------------------------------------------- */

static int stdin_closed(void) {
    struct pollfd pf;
    char tmp[64];
    pf.fd = 0;
    pf.events = POLLIN;
    if (poll(&pf, 1, 0) <= 0) return 0;
    return read(0, tmp, sizeof tmp) <= 0;
}

/* --prefill <port|0> <first room> <count> serve|hold */
static int helper_prefill(char **argv) {
    bt_pool pool;
    bt_engine_opts o;
    kvx_engine *e;
    kvx_sender **s;
    char why[256];
    int port = atoi(argv[2]), count = atoi(argv[4]), serve = !strcmp(argv[5], "serve"), i, done = 0;
    uint64_t base = strtoull(argv[3], NULL, 10);
    int *inited;
    bt_pool_init(&pool, 8192, 16, 128, "bfloat16");
    memset(&o, 0, sizeof o);
    o.port = port;
    e = bt_engine(KVX_ROLE_PREFILL, &pool, &o, why, sizeof why);
    if (!e) { printf("ERROR %s\n", why); fflush(stdout); return 1; }
    s = (kvx_sender **)calloc((size_t)count, sizeof *s);
    inited = (int *)calloc((size_t)count, sizeof *inited);
    for (i = 0; i < count; i++) {
        kvx_room_desc rd;
        memset(&rd, 0, sizeof rd);
        rd.room = base + (uint64_t)i;
        kvx_sender_create(e, &rd, &s[i]);
    }
    printf("READY %d\n", kvx_boot_engine_port(e));
    fflush(stdout);
    while (!stdin_closed()) {
        for (i = 0; serve && i < count; i++) {
            uint32_t n;
            int32_t pages[8] = {0, 1, 2, 3, 4, 5, 6, 7};
            if (!s[i] || inited[i] || kvx_sender_poll(s[i]) != KVX_POLL_WAITING_FOR_INPUT) continue;
            n = kvx_boot_room_dst_pages(kvx_boot_get(e), (kvx_room *)s[i]);
            inited[i] = 1;
            if (n > 8 || kvx_sender_init(s[i], n, -1) != KVX_OK) continue;
            kvx_sender_send(s[i], pages, n);
        }
        for (i = 0; serve && i < count; i++)
            if (s[i] && bt_is_terminal(kvx_sender_poll(s[i]))) {
                kvx_sender_destroy(s[i]);
                s[i] = NULL;
                done++;
            }
        bt_sleep(0.002);
    }
    for (i = 0; i < count; i++) kvx_sender_destroy(s[i]);
    free(s);
    free(inited);
    kvx_engine_destroy(e);
    bt_pool_free(&pool);
    return 0;
}

/* --decode <bootstrap addr> <first room> <count> */
static int helper_decode(char **argv) {
    bt_pool pool;
    bt_engine_opts o;
    kvx_engine *e;
    kvx_receiver **r;
    char why[256];
    int count = atoi(argv[4]), i, ok = 0;
    uint64_t base = strtoull(argv[3], NULL, 10);
    bt_pool_init(&pool, 8192, 16, 128, "bfloat16");
    memset(&o, 0, sizeof o);
    o.addr = argv[2];
    e = bt_engine(KVX_ROLE_DECODE, &pool, &o, why, sizeof why);
    if (!e) { printf("ERROR %s\n", why); fflush(stdout); return 1; }
    r = (kvx_receiver **)calloc((size_t)count, sizeof *r);
    for (i = 0; i < count; i++) {
        kvx_room_desc rd;
        memset(&rd, 0, sizeof rd);
        rd.room = base + (uint64_t)i;
        kvx_receiver_create(e, &rd, &r[i]);
    }
    bt_wait_receivers(r, count, bt_is_ready, 20);
    for (i = 0; i < count; i++) {
        int32_t pages[4];
        int k;
        for (k = 0; k < 4; k++) pages[k] = (int32_t)(i * 4 + k);
        ok += kvx_receiver_init(r[i], pages, 4, -1) == KVX_OK;
    }
    printf("INITED %d\n", ok);
    fflush(stdout);
    while (!stdin_closed()) bt_sleep(0.01);
    for (i = 0; i < count; i++) kvx_receiver_destroy(r[i]);
    free(r);
    kvx_engine_destroy(e);
    bt_pool_free(&pool);
    return 0;
}

/* ---- the tests ------------------------------------------------------------------ */

static int spawn_prefill(bt_proc *p, int port, uint64_t base, int count, const char *mode) {
    char ports[16], bases[32], counts[16], line[256];
    char *argv[8];
    snprintf(ports, sizeof ports, "%d", port);
    snprintf(bases, sizeof bases, "%llu", (unsigned long long)base);
    snprintf(counts, sizeof counts, "%d", count);
    argv[0] = g_self;
    argv[1] = (char *)"--prefill";
    argv[2] = ports;
    argv[3] = bases;
    argv[4] = counts;
    argv[5] = (char *)mode;
    argv[6] = NULL;
    if (bt_spawn(p, argv, NULL)) return -1;
    if (!bt_readline(p, line, sizeof line, 30) || strncmp(line, "READY ", 6)) {
        printf("  prefill helper said: %s\n", line);
        return -1;
    }
    return atoi(line + 6);
}

static kvx_receiver **open_rooms(kvx_engine *d, uint64_t base, int n, const char *addr) {
    kvx_receiver **r = (kvx_receiver **)calloc((size_t)n, sizeof *r);
    int i;
    for (i = 0; i < n; i++) {
        kvx_room_desc rd;
        memset(&rd, 0, sizeof rd);
        rd.room = base + (uint64_t)i;
        rd.bootstrap_addr = addr;
        kvx_receiver_create(d, &rd, &r[i]);
    }
    bt_wait_receivers(r, n, bt_is_ready, 30);
    for (i = 0; i < n; i++) {
        int32_t pages[4];
        int k;
        for (k = 0; k < 4; k++) pages[k] = (int32_t)((i * 4 + k) % 8192);
        kvx_receiver_init(r[i], pages, 4, -1);
    }
    return r;
}

static void close_rooms(kvx_receiver **r, int n) {
    int i;
    for (i = 0; i < n; i++) kvx_receiver_destroy(r[i]);
    free(r);
}

static int count_state(kvx_receiver **r, int n, kvx_poll st) {
    int i, c = 0;
    for (i = 0; i < n; i++) c += kvx_receiver_poll(r[i]) == st;
    return c;
}

static int count_error(kvx_receiver **r, int n, const char *needle) {
    int i, c = 0;
    for (i = 0; i < n; i++) c += strstr(kvx_receiver_error(r[i]), needle) != NULL;
    return c;
}

static void test_many(kvx_engine *d) {
    bt_proc p;
    int n = bt_quick() ? 300 : 1000, port, st;
    char addr[64];
    kvx_receiver **r;
    double t0;
    port = spawn_prefill(&p, 0, 1000000, n, "serve");
    CHECK(port > 0, "many: prefill process up, bootstrap port %d", port);
    if (port <= 0) { bt_reap(&p, 5); return; }
    snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
    t0 = bt_now();
    r = open_rooms(d, 1000000, n, addr);
    bt_wait_receivers(r, n, bt_is_terminal, 30);
    CHECK(count_state(r, n, KVX_POLL_SUCCESS) == n,
          "many: %d/%d concurrent rooms succeeded across processes in %.2f s (first error: %s)",
          count_state(r, n, KVX_POLL_SUCCESS), n, bt_now() - t0, kvx_receiver_error(r[0]));
    close_rooms(r, n);
    st = bt_reap(&p, 10);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "many: prefill process exits cleanly (status %d)", st);
}

static int g_port_b;

static void test_kill_prefill(kvx_engine *d) {
    bt_proc p;
    int n = 200, port, failed, named;
    char addr[64], needle[128];
    kvx_receiver **r;
    double t0, took, bound = HB_INTERVAL * HB_MAX + 1.0;
    port = spawn_prefill(&p, 0, 2000000, n, "hold");
    g_port_b = port;
    CHECK(port > 0, "kill -9 prefill: prefill process up on port %d", port);
    if (port <= 0) { bt_reap(&p, 5); return; }
    snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
    r = open_rooms(d, 2000000, n, addr);
    bt_sleep(0.3);
    CHECK(count_state(r, n, KVX_POLL_TRANSFERRING) == n, "kill -9 prefill: %d rooms mid-transfer",
          count_state(r, n, KVX_POLL_TRANSFERRING));
    kill(p.pid, SIGKILL);
    t0 = bt_now();
    bt_wait_receivers(r, n, bt_is_terminal, bound + 5);
    took = bt_now() - t0;
    snprintf(needle, sizeof needle, "lost connection with prefill instance %s", addr);
    failed = count_state(r, n, KVX_POLL_FAILED);
    named = count_error(r, n, needle);
    CHECK(failed == n && named == n && took <= bound,
          "kill -9 prefill: %d/%d rooms failed in %.2f s (bound %.1f s), %d name it: %s", failed, n,
          took, bound, named, kvx_receiver_error(r[0]));
    CHECK(kvx_receiver_result(r[0]) == KVX_ERR_PEER_LOST, "kill -9 prefill: result is KVX_ERR_PEER_LOST");
    close_rooms(r, n);
    bt_reap(&p, 5);
}

static void test_hung_prefill(kvx_engine *d) {
    bt_proc p;
    int n = 50, port, failed, named;
    char addr[64];
    kvx_receiver **r;
    double t0, took, tmo = HB_INTERVAL < 2 ? HB_INTERVAL : 2, bound = (HB_INTERVAL + tmo) * HB_MAX + 1.0;
    port = spawn_prefill(&p, 0, 3000000, n, "hold");
    if (port <= 0) { CHECK(0, "hung prefill: prefill process up"); bt_reap(&p, 5); return; }
    snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
    r = open_rooms(d, 3000000, n, addr);
    bt_sleep(0.2);
    kill(p.pid, SIGSTOP);
    t0 = bt_now();
    bt_wait_receivers(r, n, bt_is_terminal, bound + 5);
    took = bt_now() - t0;
    failed = count_state(r, n, KVX_POLL_FAILED);
    named = count_error(r, n, "consecutive heartbeats failed");
    CHECK(failed == n && named == n && took <= bound,
          "hung prefill (SIGSTOP, connections open): %d/%d rooms failed by heartbeat in %.2f s "
          "(bound %.1f s): %s", failed, n, took, bound, kvx_receiver_error(r[0]));
    close_rooms(r, n);
    kill(p.pid, SIGKILL);
    kill(p.pid, SIGCONT);
    bt_reap(&p, 5);
}

static void test_restart_prefill(kvx_engine *d) {
    bt_proc p;
    int n = 200, port;
    char addr[64];
    kvx_receiver **r;
    if (g_port_b <= 0) { CHECK(0, "restart: no earlier prefill port"); return; }
    port = spawn_prefill(&p, g_port_b, 4000000, n, "serve");
    CHECK(port == g_port_b, "restart: a new prefill process serves the same port %d (%d)", g_port_b, port);
    if (port <= 0) { bt_reap(&p, 5); return; }
    snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
    r = open_rooms(d, 4000000, n, addr);
    bt_wait_receivers(r, n, bt_is_terminal, 20);
    CHECK(count_state(r, n, KVX_POLL_SUCCESS) == n,
          "restart: %d/%d new rooms succeed without restarting the decode engine (%s)",
          count_state(r, n, KVX_POLL_SUCCESS), n, kvx_receiver_error(r[0]));
    close_rooms(r, n);
    bt_reap(&p, 10);
}

static void test_kill_decode(void) {
    bt_pool pool;
    bt_engine_opts o;
    kvx_engine *e;
    kvx_sender **s;
    bt_proc p;
    char why[256], addr[64], line[128], counts[16];
    char *argv[8];
    int n = 200, i, failed = 0, named = 0;
    size_t rooms_left, pending_left;
    double t0, took;
    kvx_boot *b;
    kvx_sender *sentinel = NULL;
    bt_pool_init(&pool, 8192, 16, 128, "bfloat16");
    memset(&o, 0, sizeof o);
    e = bt_engine(KVX_ROLE_PREFILL, &pool, &o, why, sizeof why);
    if (!e) { CHECK(0, "kill -9 decode: prefill engine: %s", why); return; }
    b = kvx_boot_get(e);
    s = (kvx_sender **)calloc((size_t)n, sizeof *s);
    for (i = 0; i < n; i++) {
        kvx_room_desc rd;
        memset(&rd, 0, sizeof rd);
        rd.room = 5000000 + (uint64_t)i;
        kvx_sender_create(e, &rd, &s[i]);
    }
    snprintf(addr, sizeof addr, "127.0.0.1:%d", kvx_boot_engine_port(e));
    snprintf(counts, sizeof counts, "%d", n);
    argv[0] = g_self;
    argv[1] = (char *)"--decode";
    argv[2] = addr;
    argv[3] = (char *)"5000000";
    argv[4] = counts;
    argv[5] = NULL;
    bt_spawn(&p, argv, NULL);
    CHECK(bt_readline(&p, line, sizeof line, 30) && !strncmp(line, "INITED ", 7) && atoi(line + 7) == n,
          "kill -9 decode: decode process inited %s rooms", line + 7);
    CHECK(bt_wait_senders(s, n, bt_is_ready, 10), "kill -9 decode: every sender got its destination");
    kill(p.pid, SIGKILL);
    t0 = bt_now();
    bt_wait_senders(s, n, bt_is_terminal, 10);
    took = bt_now() - t0;
    for (i = 0; i < n; i++) {
        failed += kvx_sender_poll(s[i]) == KVX_POLL_FAILED;
        named += strstr(kvx_sender_error(s[i]), "lost connection with decode instance 127.0.0.1:") != NULL;
    }
    CHECK(failed == n && named == n && took < 1.0,
          "kill -9 decode: %d/%d prefill rooms failed in %.2f s naming the decode: %s", failed, n,
          took, kvx_sender_error(s[0]));
    for (i = 0; i < n; i++) kvx_sender_destroy(s[i]);
    pthread_mutex_lock(&b->mu);
    rooms_left = b->rooms.n;
    pending_left = b->npending;
    pthread_mutex_unlock(&b->mu);
    CHECK(rooms_left == 0 && pending_left == 0 && KVX__LOAD(&b->nctrl) == 0,
          "kill -9 decode: rooms freed (%zu left, %zu pending, %d control connections)", rooms_left,
          pending_left, KVX__LOAD(&b->nctrl));
    bt_reap(&p, 5);

    /* the room frames arrive before their senders exist, then the decode
       dies: each sender created afterwards fails at once saying so (not
       after KVX_BOOTSTRAP_TIMEOUT, waiting for a destination that is gone) */
    /* a sentinel: the decode inits rooms 6000000 .. +n in order on one
       control connection, and only the last has a sender here; once it has
       its destination, every earlier frame has arrived (kept, no sender) */
    argv[3] = (char *)"6000000";
    snprintf(counts, sizeof counts, "%d", n + 1);
    {
        kvx_room_desc rd;
        memset(&rd, 0, sizeof rd);
        rd.room = 6000000 + (uint64_t)n;
        kvx_sender_create(e, &rd, &sentinel);
    }
    bt_spawn(&p, argv, NULL);
    CHECK(bt_readline(&p, line, sizeof line, 30) && !strncmp(line, "INITED ", 7) && atoi(line + 7) == n + 1,
          "decode gone before the senders: decode process inited %s rooms", line + 7);
    CHECK(kvx_sender_wait(sentinel, KVX_POLL_WAITING_FOR_INPUT, 30000) == KVX_POLL_WAITING_FOR_INPUT,
          "decode gone before the senders: the sentinel room got its destination");
    pthread_mutex_lock(&b->mu);
    pending_left = b->npending;
    pthread_mutex_unlock(&b->mu);
    CHECK(pending_left == (size_t)n, "decode gone before the senders: %zu of %d room frames kept",
          pending_left, n);
    kill(p.pid, SIGKILL);
    /* the connection's loss fails the sentinel after it recorded the kept frames */
    CHECK(kvx_sender_wait(sentinel, KVX_POLL_SUCCESS, 30000) == KVX_POLL_FAILED,
          "decode gone before the senders: the sentinel fails with the connection: %s",
          kvx_sender_error(sentinel));
    kvx_sender_destroy(sentinel);
    failed = named = 0;
    for (i = 0; i < n; i++) {
        kvx_room_desc rd;
        memset(&rd, 0, sizeof rd);
        rd.room = 6000000 + (uint64_t)i;
        s[i] = NULL;
        kvx_sender_create(e, &rd, &s[i]);
    }
    t0 = bt_now();
    bt_wait_senders(s, n, bt_is_terminal, 10);
    took = bt_now() - t0;
    for (i = 0; i < n; i++) {
        failed += s[i] && kvx_sender_poll(s[i]) == KVX_POLL_FAILED &&
                  kvx_sender_result(s[i]) == KVX_ERR_PEER_LOST;
        named += s[i] && strstr(kvx_sender_error(s[i]), "closed its control connection") &&
                 strstr(kvx_sender_error(s[i]), "before this sender was created");
    }
    CHECK(failed == n && named == n, /* not waiting out the 300 s KVX_BOOTSTRAP_TIMEOUT */
          "decode gone before the senders: %d/%d senders failed at once (%.2f s), %d saying why: %s",
          failed, n, took, named, s[0] ? kvx_sender_error(s[0]) : "no sender");
    for (i = 0; i < n; i++) kvx_sender_destroy(s[i]);
    pthread_mutex_lock(&b->mu);
    rooms_left = b->rooms.n;
    pending_left = b->npending;
    pthread_mutex_unlock(&b->mu);
    CHECK(rooms_left == 0 && pending_left == 0,
          "decode gone before the senders: rooms freed (%zu left, %zu pending)", rooms_left, pending_left);
    free(s);
    bt_reap(&p, 5);
    kvx_engine_destroy(e);
    bt_pool_free(&pool);
}

int main(int argc, char **argv) {
    bt_pool pool;
    bt_engine_opts o;
    kvx_engine *d;
    char why[256], v[32];
    signal(SIGPIPE, SIG_IGN);
    bt_self_path(argv[0], g_self, sizeof g_self);
    snprintf(v, sizeof v, "%g", HB_INTERVAL);
    setenv("KVX_HEARTBEAT_INTERVAL", v, 1);
    snprintf(v, sizeof v, "%d", HB_MAX);
    setenv("KVX_HEARTBEAT_MAX_FAILURE", v, 1);
    if (argc >= 6 && !strcmp(argv[1], "--prefill")) return helper_prefill(argv);
    if (argc >= 5 && !strcmp(argv[1], "--decode")) return helper_decode(argv);
    bt_name = "test_boot_proc";
    bt_pool_init(&pool, 8192, 16, 128, "bfloat16");
    memset(&o, 0, sizeof o);
    d = bt_engine(KVX_ROLE_DECODE, &pool, &o, why, sizeof why);
    if (!d) { printf("decode engine: %s\n", why); return 1; }
    test_many(d);
    test_kill_prefill(d);
    test_hung_prefill(d);
    test_restart_prefill(d);
    test_kill_decode();
    kvx_engine_destroy(d);
    bt_pool_free(&pool);
    return bt_finish();
}
