/* The file transport with a bootstrap address: the handshake gates the
   sender, status and abort travel over the control channel, a dead prefill
   is noticed by heartbeat instead of KVX_FILE_TIMEOUT, and the bytes still
   go through the files, verified. */
#define KVX_IMPLEMENTATION
#include "../../kvx_file.h"
#include "../../examples/kvx_example.h"
#include "../kvx_test.h"
#include "file_test.h"
#include <signal.h>
#include <sys/wait.h>

static char root[256];
static const ex_model tiny = {"tiny", 4, 2, 64, 2, 0, "bfloat16"};

static void sleep_ms(int ms) {
    struct timespec ts;
    ts.tv_sec = ms / 1000;
    ts.tv_nsec = (long)(ms % 1000) * 1000000L;
    nanosleep(&ts, NULL);
}

static kvx_engine *engine(kvx_role role, ex_pool *p, const char *boot, char *why) {
    kvx_engine_desc d = ft_desc(role, &p->layout, root);
    if (role == KVX_ROLE_PREFILL) {
        d.boot.host = "127.0.0.1";
        d.boot.port = -1; /* ephemeral */
    } else {
        d.bootstrap_addr = boot;
    }
    return ft_create(&d, why);
}

static kvx_poll wait_s(kvx_sender *s, kvx_poll while_in, int ms) {
    uint64_t t0 = kvx_now_ns();
    while (kvx_sender_poll(s) == while_in && kvx_now_ns() - t0 < (uint64_t)ms * 1000000ull)
        sleep_ms(1);
    return kvx_sender_poll(s);
}
static kvx_poll wait_r(kvx_receiver *r, kvx_poll while_in, int ms) {
    uint64_t t0 = kvx_now_ns();
    while (kvx_receiver_poll(r) == while_in && kvx_now_ns() - t0 < (uint64_t)ms * 1000000ull)
        sleep_ms(1);
    return kvx_receiver_poll(r);
}

static void test_handshake(void) {
    char why[512], addr[64];
    ex_pool ps, pr;
    kvx_engine *pe, *de;
    kvx_sender *s;
    kvx_receiver *r;
    kvx_room_desc rd;
    int32_t sp[24], dp[24];
    ex_pool_init(&ps, &tiny, 64, 16, 4, 1);
    ex_pool_init(&pr, &tiny, 64, 16, 4, 2);
    pe = engine(KVX_ROLE_PREFILL, &ps, NULL, why);
    CHECK(pe != NULL, "prefill engine with a bootstrap server: %s", why);
    if (!pe) return;
    snprintf(addr, sizeof addr, "127.0.0.1:%d", kvx_boot_engine_port(pe));
    de = engine(KVX_ROLE_DECODE, &pr, addr, why);
    CHECK(de != NULL, "decode engine: %s", why);
    ex_alloc_pages(&ps, sp, 24);
    ex_alloc_pages(&pr, dp, 24);
    ex_pages_pattern(&ps, 5, sp, 24, 1);
    ex_aux_write(&ps, 5, 1);
    memset(&rd, 0, sizeof rd);
    rd.room = 5;
    kvx_sender_create(pe, &rd, &s);
    CHECK(kvx_sender_poll(s) == KVX_POLL_BOOTSTRAPPING, "sender waits for the decode side");
    kvx_receiver_create(de, &rd, &r);
    CHECK(wait_r(r, KVX_POLL_BOOTSTRAPPING, 5000) == KVX_POLL_WAITING_FOR_INPUT,
          "receiver connected: %s", kvx_receiver_error(r));
    kvx_receiver_init(r, dp, 24, 2);
    CHECK(wait_s(s, KVX_POLL_BOOTSTRAPPING, 5000) == KVX_POLL_WAITING_FOR_INPUT,
          "room frame moved the sender on");
    kvx_sender_init(s, 24, 1);
    kvx_sender_send(s, sp, 10);
    kvx_sender_send(s, sp + 10, 14);
    CHECK(wait_s(s, KVX_POLL_TRANSFERRING, 10000) == KVX_POLL_SUCCESS, "sender: %s",
          kvx_sender_error(s));
    CHECK(wait_r(r, KVX_POLL_TRANSFERRING, 10000) == KVX_POLL_SUCCESS, "receiver: %s",
          kvx_receiver_error(r));
    CHECK(ex_pages_pattern(&pr, 5, dp, 24, 0) == 0 && ex_aux_check(&pr, 5, 2),
          "bytes verified after the handshake");
    kvx_sender_destroy(s);
    kvx_receiver_destroy(r);

    /* page-count disagreement: both sides fail, with the reason */
    rd.room = 6;
    kvx_sender_create(pe, &rd, &s);
    kvx_receiver_create(de, &rd, &r);
    wait_r(r, KVX_POLL_BOOTSTRAPPING, 5000);
    kvx_receiver_init(r, dp, 8, -1);
    wait_s(s, KVX_POLL_BOOTSTRAPPING, 5000);
    CHECK(kvx_sender_init(s, 9, -1) != KVX_OK, "init with another page count refused");
    CHECK_STR(kvx_sender_error(s), "decode side asked for 8");
    CHECK(wait_r(r, KVX_POLL_TRANSFERRING, 5000) == KVX_POLL_FAILED, "receiver failed too");
    CHECK_STR(kvx_receiver_error(r), "decode side asked for 8");
    kvx_sender_destroy(s);
    kvx_receiver_destroy(r);

    /* abort reaches the receiver over the channel, long before KVX_FILE_TIMEOUT */
    rd.room = 7;
    kvx_sender_create(pe, &rd, &s);
    kvx_receiver_create(de, &rd, &r);
    wait_r(r, KVX_POLL_BOOTSTRAPPING, 5000);
    kvx_receiver_init(r, dp, 8, -1);
    wait_s(s, KVX_POLL_BOOTSTRAPPING, 5000);
    kvx_sender_abort(s, "client went away");
    CHECK(wait_r(r, KVX_POLL_TRANSFERRING, 3000) == KVX_POLL_FAILED, "abort arrived");
    CHECK_STR(kvx_receiver_error(r), "client went away");
    kvx_sender_destroy(s);
    kvx_receiver_destroy(r);

    /* a receiver without the handshake still works on the same engines */
    kvx_engine_destroy(pe);
    kvx_engine_destroy(de);
    ex_pool_free(&ps);
    ex_pool_free(&pr);
}

/* Issue 10 items 1-3 with the handshake: a sender failing on its own and a
   receiver aborting reach the other side at once with the first reason; an
   abort after Success sends nothing. */
static void test_fail_paths(void) {
    char why[512], addr[64];
    ex_pool ps, pr;
    kvx_engine *pe, *de;
    kvx_sender *s;
    kvx_receiver *r;
    kvx_room_desc rd;
    int32_t sp[8] = {0, 1, 2, 3, 4, 5, 6, 7}, dp[8] = {8, 9, 10, 11, 12, 13, 14, 15};
    uint64_t t0;
    ex_pool_init(&ps, &tiny, 64, 16, 4, 1);
    ex_pool_init(&pr, &tiny, 64, 16, 4, 2);
    pe = engine(KVX_ROLE_PREFILL, &ps, NULL, why);
    CHECK(pe != NULL, "prefill engine: %s", why);
    if (!pe) return;
    snprintf(addr, sizeof addr, "127.0.0.1:%d", kvx_boot_engine_port(pe));
    de = engine(KVX_ROLE_DECODE, &pr, addr, why);
    CHECK(de != NULL, "decode engine: %s", why);
    memset(&rd, 0, sizeof rd);

    /* the sender refuses a page index: the receiver fails at once, with the reason */
    rd.room = 71;
    kvx_sender_create(pe, &rd, &s);
    kvx_receiver_create(de, &rd, &r);
    wait_r(r, KVX_POLL_BOOTSTRAPPING, 30000);
    kvx_receiver_init(r, dp, 8, -1);
    wait_s(s, KVX_POLL_BOOTSTRAPPING, 30000);
    kvx_sender_init(s, 8, -1);
    sp[3] = 100000;
    t0 = kvx_now_ns();
    kvx_sender_send(s, sp, 8);
    sp[3] = 3;
    CHECK(kvx_sender_poll(s) == KVX_POLL_FAILED, "sender Failed");
    CHECK(wait_r(r, KVX_POLL_TRANSFERRING, 30000) == KVX_POLL_FAILED, "receiver Failed");
    CHECK(kvx_now_ns() - t0 < 20000000000ull, "... within %.1f s",
          (double)(kvx_now_ns() - t0) / 1e9);
    CHECK_STR(kvx_receiver_error(r), "page index 100000");
    kvx_sender_destroy(s);
    kvx_receiver_destroy(r);

    /* the receiver aborts: the sender learns it at once */
    rd.room = 72;
    kvx_sender_create(pe, &rd, &s);
    kvx_receiver_create(de, &rd, &r);
    wait_r(r, KVX_POLL_BOOTSTRAPPING, 30000);
    kvx_receiver_init(r, dp, 8, -1);
    wait_s(s, KVX_POLL_BOOTSTRAPPING, 30000);
    kvx_sender_init(s, 8, -1);
    kvx_receiver_abort(r, "decode gave up");
    kvx_receiver_abort(r, "second thoughts");
    CHECK(wait_s(s, KVX_POLL_WAITING_FOR_INPUT, 30000) == KVX_POLL_FAILED,
          "receiver's abort reached the sender");
    CHECK_STR(kvx_sender_error(s), "decode gave up");
    CHECK(!strstr(kvx_sender_error(s), "second"), "first reason only: %s", kvx_sender_error(s));
    kvx_sender_destroy(s);
    kvx_receiver_destroy(r);

    /* Success, then an abort: the receiver still completes */
    rd.room = 73;
    ex_pages_pattern(&ps, 73, sp, 8, 1);
    kvx_sender_create(pe, &rd, &s);
    kvx_receiver_create(de, &rd, &r);
    wait_r(r, KVX_POLL_BOOTSTRAPPING, 30000);
    kvx_receiver_init(r, dp, 8, -1);
    wait_s(s, KVX_POLL_BOOTSTRAPPING, 30000);
    kvx_sender_init(s, 8, -1);
    kvx_sender_send(s, sp, 8);
    CHECK(wait_s(s, KVX_POLL_TRANSFERRING, 30000) == KVX_POLL_SUCCESS, "sender Success: %s",
          kvx_sender_error(s));
    kvx_sender_abort(s, "too late");
    CHECK(kvx_sender_poll(s) == KVX_POLL_SUCCESS, "sender stays Success");
    CHECK(wait_r(r, KVX_POLL_TRANSFERRING, 30000) == KVX_POLL_SUCCESS,
          "receiver of a completed room succeeds: %s", kvx_receiver_error(r));
    CHECK(ex_pages_pattern(&pr, 73, dp, 8, 0) == 0, "bytes verified");
    kvx_sender_destroy(s);
    kvx_receiver_destroy(r);

    kvx_engine_destroy(pe);
    kvx_engine_destroy(de);
    ex_pool_free(&ps);
    ex_pool_free(&pr);
}

/* kill -9 of the prefill: the receiver fails by heartbeat / lost connection. */
static void test_prefill_killed(void) {
    char why[512], addr[64];
    int fds[2], port = 0, status;
    ex_pool pr;
    kvx_engine *de;
    kvx_receiver *r;
    kvx_room_desc rd;
    int32_t dp[8] = {0, 1, 2, 3, 4, 5, 6, 7};
    pid_t pid;
    uint64_t t0;
    if (pipe(fds)) return;
    fflush(stdout);
    pid = fork();
    if (pid == 0) {
        ex_pool ps;
        kvx_engine *pe;
        char w[512];
        close(fds[0]);
        ex_pool_init(&ps, &tiny, 64, 16, 4, 1);
        pe = engine(KVX_ROLE_PREFILL, &ps, NULL, w);
        port = pe ? kvx_boot_engine_port(pe) : 0;
        if (write(fds[1], &port, sizeof port) != sizeof port) _exit(1);
        for (;;) sleep_ms(100); /* a prefill that never sends */
    }
    close(fds[1]);
    if (read(fds[0], &port, sizeof port) != sizeof port) port = 0;
    close(fds[0]);
    CHECK(port > 0, "child prefill serves bootstrap");
    snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
    setenv("KVX_HEARTBEAT_INTERVAL", "0.3", 1);
    ex_pool_init(&pr, &tiny, 64, 16, 4, 2);
    de = engine(KVX_ROLE_DECODE, &pr, addr, why);
    unsetenv("KVX_HEARTBEAT_INTERVAL");
    memset(&rd, 0, sizeof rd);
    rd.room = 9;
    kvx_receiver_create(de, &rd, &r);
    wait_r(r, KVX_POLL_BOOTSTRAPPING, 5000);
    kvx_receiver_init(r, dp, 8, -1);
    sleep_ms(50);
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
    t0 = kvx_now_ns();
    CHECK(wait_r(r, KVX_POLL_TRANSFERRING, 5000) == KVX_POLL_FAILED, "receiver failed");
    CHECK(kvx_now_ns() - t0 < 1600000000ull, "within interval x max_failure + 1 s (%.2f s)",
          (double)(kvx_now_ns() - t0) / 1e9);
    CHECK_STR(kvx_receiver_error(r), "prefill");
    kvx_receiver_destroy(r);
    kvx_engine_destroy(de);
    ex_pool_free(&pr);
}

int main(void) {
    kt_name = "test_file_boot";
    snprintf(root, sizeof root, "/tmp/kvx_test_%d_fboot", (int)getpid());
    mkdir(root, 0755);
    kvx_file_register();
    test_handshake();
    test_fail_paths();
    test_prefill_killed();
    {
        char cmd[400];
        snprintf(cmd, sizeof cmd, "rm -rf %s", root);
        if (system(cmd)) printf("cannot remove %s\n", root);
    }
    return kt_done();
}
