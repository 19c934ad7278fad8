/* test_boot_alloc_fail.c - the bootstrap handshake (kvx_boot.h) and the tcp
   transport allocate only through the desc allocator, and a failed
   allocation gives a clean error: a counting allocator fails the Nth call,
   for every N until a whole transfer needs no more calls. Each run must end
   with every call answered (an error code or a terminal room state, never a
   crash or a hang past the short timeouts) and with nothing of the
   allocator's left live after the engines are destroyed. A run with no
   injected failure must move the bytes, verified. Scenarios: the file
   transport with the handshake (prefill desc.boot.port = KVX_ZERO, decode
   bootstrap_addr) and the tcp transport (the same handshake), two engines in
   this process. Failures on I/O threads end in a failed room or a refused
   call. The same pattern as tests/unit/test_alloc_fail.c. */
#define KVX_IMPLEMENTATION
#include "../../kvx_file.h"
#include "../../kvx_tcp.h"
#include "../../examples/kvx_example.h"
#include "../kvx_test.h"
#include <pthread.h>
#include <signal.h>

static const ex_model tiny = {"tiny", 2, 2, 32, 2, 0, "bfloat16"};

#include "../kvx_alloc_count.h"

static char root[256];
static uint64_t next_room = 100;

/* Engines log each injected failure; the test's own lines say what matters. */
static void quiet(void *u, kvx_log_level lvl, const char *sub, uint64_t room, const char *msg) {
    (void)lvl; (void)sub; (void)room; (void)u;
    if (getenv("KVX_TEST_VERBOSE")) fprintf(stderr, "%s\n", msg);
}

/* The prefill listens on an ephemeral port (KVX_ZERO); the decode engine
   is given that port as its bootstrap address. handshake 0: a file engine
   without one. */
static kvx_engine *engine_boot(const char *transport, kvx_role role, ex_pool *p, const char *boot,
                               int handshake) {
    kvx_engine_desc d;
    kvx_engine *e = NULL;
    kvx_result res;
    char why[512];
    memset(&d, 0, sizeof d);
    d.role = role;
    d.transport = transport;
    d.layout = p->layout;
    d.file.dir = root;
    d.allocator.alloc_fn = ca_alloc;
    d.allocator.free_fn = ca_free;
    d.logger.func = quiet;
    d.logger.level = getenv("KVX_TEST_VERBOSE") ? KVX_LOG_DEBUG : KVX_LOG_ERROR;
    d.waiting_timeout_s = ca_quick ? 1 : 3;
    d.bootstrap_timeout_s = ca_quick ? 1 : 3;
    d.file.timeout_s = ca_quick ? 1 : 3;
    d.file.settle_s = 0.05;
    d.tcp.timeout_s = ca_quick ? 1 : 3;
    d.tcp.host = "127.0.0.1";
    d.tcp.streams = 2;
    d.poll_interval_us = 2000;
    if (handshake && role == KVX_ROLE_PREFILL) {
        d.boot.host = "127.0.0.1";
        d.boot.port = KVX_ZERO;
    } else if (handshake) {
        d.bootstrap_addr = boot;
    }
    res = kvx_engine_create(&d, &e, why, sizeof why);
    CHECK((res == KVX_OK) == (e != NULL), "engine create answers with an engine or an error");
    if (res != KVX_OK && res != KVX_ERR_NO_MEMORY && !strstr(why, "memory"))
        printf("  note: engine create failed with %s: %s\n", kvx_result_str(res), why);
    return e;
}

static kvx_engine *engine(const char *transport, kvx_role role, ex_pool *p, const char *boot) {
    return engine_boot(transport, role, p, boot, 1);
}

/* The handshake's own memory is counted: a prefill engine with the
   handshake makes at least 8 more allocator calls than one without (the
   kvx_boot, its endpoint, its hello's item table, the two listeners'
   connections and the I/O thread's tables; the core and the file transport
   account for 3 more). kvx_boot.h used malloc before issue 12: 3 more. */
static void handshake_counted(void) {
    ex_pool ps;
    kvx_engine *e;
    long plain, boot, live;
    ex_pool_init(&ps, &tiny, 32, 16, 2, 1);
    ca_arm(0);
    e = engine_boot("file", KVX_ROLE_PREFILL, &ps, NULL, 0);
    kvx_engine_destroy(e);
    plain = ca_get(&ca.calls);
    ca_arm(0);
    e = engine_boot("file", KVX_ROLE_PREFILL, &ps, NULL, 1);
    kvx_engine_destroy(e);
    boot = ca_get(&ca.calls);
    pthread_mutex_lock(&ca.mu);
    live = ca.live;
    pthread_mutex_unlock(&ca.mu);
    printf("  prefill engine create+destroy: %ld allocator calls with the handshake, %ld without\n", boot, plain);
    CHECK(boot >= plain + 8 && live == 0,
          "the handshake allocates through the desc: %ld calls with it, %ld without, %ld live",
          boot, plain, live);
    ex_pool_free(&ps);
}

/* One handshake and transfer of 12 pages; 1 when every call succeeded and
   the bytes were verified, 0 when something refused or failed. */
static int transfer(const char *transport) {
    ex_pool ps, pr;
    kvx_engine *pe = NULL, *de = NULL;
    kvx_sender *s = NULL;
    kvx_receiver *r = NULL;
    kvx_room_desc rd;
    int32_t sp[12], dp[12];
    char addr[64];
    const char *step = NULL;
    kvx_result res = KVX_OK;
    int whole = 0;
    ex_pool_init(&ps, &tiny, 32, 16, 2, 1);
    ex_pool_init(&pr, &tiny, 32, 16, 2, 2);
    ex_alloc_pages(&ps, sp, 12);
    ex_alloc_pages(&pr, dp, 12);
    memset(&rd, 0, sizeof rd);
    /* a fresh id per run: a failed room's notice in the file transport's
       directory outlives its engines and would fail a reused id */
    rd.room = ++next_room;
    ex_pages_pattern(&ps, rd.room, sp, 12, 1);
    ex_aux_write(&ps, rd.room, 0);
    if (!(pe = engine(transport, KVX_ROLE_PREFILL, &ps, NULL))) goto out;
    CHECK(kvx_boot_engine_port(pe) > 0, "%s: the prefill has an ephemeral bootstrap port (%d)",
          transport, kvx_boot_engine_port(pe));
    snprintf(addr, sizeof addr, "127.0.0.1:%d", kvx_boot_engine_port(pe));
    if (!(de = engine(transport, KVX_ROLE_DECODE, &pr, addr))) goto out;
    if (kvx_sender_create(pe, &rd, &s) != KVX_OK) goto out;
    if (kvx_receiver_create(de, &rd, &r) != KVX_OK) goto out;
    ca_wait_receiver(r, 30000);
    if ((res = kvx_receiver_init(r, dp, 12, 1)) != KVX_OK) { step = "receiver_init"; goto out; }
    kvx_sender_wait(s, KVX_POLL_WAITING_FOR_INPUT, 30000);
    if ((res = kvx_sender_init(s, 12, 0)) != KVX_OK) { step = "sender_init"; goto out; }
    if ((res = kvx_sender_send(s, sp, 5)) != KVX_OK) { step = "send"; goto out; }
    if ((res = kvx_sender_send(s, sp + 5, 7)) != KVX_OK) { step = "send"; goto out; }
    CHECK(ca_settle(s, r),
          "%s: both sides reach a terminal state (fail at %ld): sender %s '%s', receiver %s '%s'",
          transport, ca.fail_at, kvx_poll_str(kvx_sender_poll(s)), kvx_sender_error(s),
          kvx_poll_str(kvx_receiver_poll(r)), kvx_receiver_error(r));
    whole = kvx_sender_poll(s) == KVX_POLL_SUCCESS && kvx_receiver_poll(r) == KVX_POLL_SUCCESS;
    if (whole)
        CHECK(ex_pages_pattern(&pr, rd.room, dp, 12, 0) == 0 && ex_aux_check(&pr, rd.room, 1),
              "%s: a room that succeeded has its bytes", transport);
out:
    if (step && !ca_get(&ca.failed))
        printf("  note: %s refused with no failure injected: %s (receiver '%s', sender '%s')\n",
               step, kvx_result_str(res), r ? kvx_receiver_error(r) : "", s ? kvx_sender_error(s) : "");
    ca_pair_end(transport, s, r, whole);
    kvx_engine_destroy(pe);
    kvx_engine_destroy(de);
    ex_pool_free(&ps);
    ex_pool_free(&pr);
    return whole;
}

int main(int argc, char **argv) {
    kt_name = "test_boot_alloc_fail";
    signal(SIGPIPE, SIG_IGN);
    snprintf(root, sizeof root, "/tmp/kvx_bootallocfail_%d", (int)getpid());
    kvx_file_register();
    kvx_tcp_register();
    if (argc > 2) { /* repeat a clean transfer: tests the test */
        int i, ok = 0;
        for (i = 0; i < atoi(argv[2]); i++) { ca_arm(0); ok += transfer(argv[1]); }
        printf("  %d of %d clean transfers whole\n", ok, atoi(argv[2]));
        return kt_done();
    }
    handshake_counted();
    if (argc < 2 || !strcmp(argv[1], "file")) ca_sweep("file", transfer, "file", 4);
    if (argc < 2 || !strcmp(argv[1], "tcp")) ca_sweep("tcp", transfer, "tcp", 4);
    {
        char cmd[300];
        snprintf(cmd, sizeof cmd, "rm -rf %s", root);
        if (system(cmd)) printf("  could not remove %s\n", root);
    }
    return kt_done();
}
