/* A prefill rank lost mid-room (issue 13, failure across ranks), on the
   bootfake transport, in one process (engines on ephemeral ports) and with
   a forked prefill rank killed with SIGKILL.
   Prefill: DP 2 x TP 2 (follow_bootstrap_room: room % 2 picks the dp rank),
   decode: one TP 1 rank, so every decode room has two contributors (the
   prefill tp ranks of its dp rank) and the decode engine holds control
   connections to all four prefill ranks. The prefill rank (dp 1, tp 1) is
   lost while rooms of both dp ranks are in flight:
   - every decode room of dp rank 1 fails at once with the sentence
     "lost connection with prefill instance H:P (rank IP:PORT), prefill tp
     rank 1 of 2, pp rank 0 of 1, dp rank 1 of 2: ...";
   - the other contributor of those rooms (dp 1, tp 0) hears it and fails
     (room 13; room 11 it had already sent);
   - the rooms of dp rank 0 are NOT failed and reach Success once their
     contributors send; a new room of dp rank 0 opened after the loss
     succeeds, and a new room of dp rank 1 fails at once naming the rank.
   A third run stops the forked rank (SIGSTOP: its socket stays open, it
   answers no heartbeat): the same rooms fail, by heartbeat, naming it.
   Before issue 13 round 2 a lost control connection failed every unfinished
   room of the prefill instance, naming the rank by address only. */
#define KVX_IMPLEMENTATION
#include "../../kvx_boot.h"
#include "../../examples/kvx_example.h"
#include "boot_test.h"

#include <sys/wait.h>

static const ex_model mha = {"gqa", 4, 8, 8, 2, 0, "bfloat16"}; /* 4 layers, 8 KV heads */
static int32_t g_pages[3] = {1, 5, 9};

/* Prefill rank k of DP 2 x TP 2 (dp k / 2, tp k % 2). */
static kvx_engine *prefill_rank(ex_pool *pool, int k, int port) {
    bt_engine_opts o;
    char why[KVX_ERROR_MAX];
    ex_rank rk;
    kvx_engine *e;
    rk.tp = 2; rk.tp_rank = (uint32_t)(k % 2);
    rk.pp = 1; rk.pp_rank = 0;
    if (ex_pool_init_rank(pool, &mha, 16, 16, 4, 1, &rk)) return NULL;
    memset(&o, 0, sizeof o);
    o.tp_size = 2; o.tp_rank = k % 2;
    o.dp_size = 2; o.dp_rank = k / 2;
    o.port = port;
    o.layout = &pool->layout;
    e = bt_engine(KVX_ROLE_PREFILL, NULL, &o, why, sizeof why);
    if (!e) printf("  prefill %d: %s\n", k, why);
    return e;
}

static kvx_engine *decode_rank(ex_pool *pool, const char *addr) {
    bt_engine_opts o;
    char why[KVX_ERROR_MAX];
    ex_rank rk;
    kvx_engine *e;
    rk.tp = 1; rk.tp_rank = 0; rk.pp = 1; rk.pp_rank = 0;
    if (ex_pool_init_rank(pool, &mha, 16, 16, 4, 2, &rk)) return NULL;
    memset(&o, 0, sizeof o);
    o.addr = addr;
    o.layout = &pool->layout;
    e = bt_engine(KVX_ROLE_DECODE, NULL, &o, why, sizeof why);
    if (!e) printf("  decode: %s\n", why);
    return e;
}

static int wait_poll(kvx_receiver *r, kvx_poll want, double timeout) {
    double end = bt_now() + timeout;
    while (kvx_receiver_poll(r) != want) {
        if (bt_now() > end || bt_is_terminal(kvx_receiver_poll(r))) return kvx_receiver_poll(r) == want;
        bt_sleep(0.001);
    }
    return 1;
}

#define NROOM 4 /* rooms 10, 11, 12, 13: even -> dp 0, odd -> dp 1 */
#define VICTIM 3 /* dp 1, tp 1 */

typedef struct world {
    ex_pool pp[4], dpool;
    kvx_engine *pe[4], *de;
    kvx_sender *s[4][NROOM];
    kvx_receiver *r[NROOM];
    int port, ctrl, forked; /* forked: 1 SIGKILL, 2 SIGSTOP */
    pid_t pid;
    char addr[64], what[64];
} world;

/* The victim in a child process, forked before this process starts a
   thread: reads the bootstrap port, answers its control port, serves its
   rank until killed. */
static void child_rank(int rfd, int wfd) {
    ex_pool pool;
    kvx_engine *e = NULL;
    int port = 0, ctrl = -1;
    if (read(rfd, &port, sizeof port) == (ssize_t)sizeof port && port > 0)
        e = prefill_rank(&pool, VICTIM, port);
    if (e) ctrl = kvx_boot_control_port(kvx_boot_get(e));
    if (write(wfd, &ctrl, sizeof ctrl) != (ssize_t)sizeof ctrl) _exit(1);
    for (;;) pause();
}

/* Opens the engines and rooms 10..13 on the decode and on every prefill
   rank but the victim (whose room frames wait for senders never made). */
static int world_open(world *w, int forked) {
    int k, i, ok, to[2] = {-1, -1}, from[2] = {-1, -1};
    memset(w, 0, sizeof *w);
    w->forked = forked;
    snprintf(w->what, sizeof w->what, "%s", forked == 2 ? "SIGSTOP of a forked rank (heartbeats)"
                                            : forked ? "SIGKILL of a forked rank" : "rank destroyed");
    if (forked) { /* before any engine (thread) exists: TSan-safe */
        if (pipe(to) || pipe(from)) return -1;
        fflush(stdout);
        w->pid = fork();
        if (w->pid == 0) { close(to[1]); close(from[0]); child_rank(to[0], from[1]); }
        close(to[0]);
        close(from[1]);
        if (w->pid < 0) { close(to[1]); close(from[0]); return -1; }
    }
    for (k = 0; k < 4; k++) {
        if (k == VICTIM && forked) {
            ok = write(to[1], &w->port, sizeof w->port) == (ssize_t)sizeof w->port &&
                 read(from[0], &w->ctrl, sizeof w->ctrl) == (ssize_t)sizeof w->ctrl;
            close(to[1]);
            close(from[0]);
            if (!ok || w->ctrl <= 0) return -1;
            continue;
        }
        if (!(w->pe[k] = prefill_rank(&w->pp[k], k, k ? w->port : 0))) return -1;
        if (!k) w->port = kvx_boot_engine_port(w->pe[0]);
    }
    if (!forked) w->ctrl = kvx_boot_control_port(kvx_boot_get(w->pe[VICTIM]));
    snprintf(w->addr, sizeof w->addr, "127.0.0.1:%d", w->port);
    /* heartbeats: a ping every 0.5 s, a rank that misses 4 in a row is lost */
    setenv("KVX_HEARTBEAT_INTERVAL", "0.5", 1);
    setenv("KVX_HEARTBEAT_MAX_FAILURE", "4", 1);
    w->de = decode_rank(&w->dpool, w->addr);
    unsetenv("KVX_HEARTBEAT_INTERVAL");
    unsetenv("KVX_HEARTBEAT_MAX_FAILURE");
    if (!w->de) return -1;
    for (i = 0; i < NROOM; i++) {
        uint64_t room = 10 + (uint64_t)i;
        for (k = 0; k < 4; k++)
            if (w->pe[k] && k != VICTIM && (int)(room % 2) == k / 2) w->s[k][i] = bt_send(w->pe[k], room);
        w->r[i] = bt_recv(w->de, room, NULL);
    }
    ok = bt_wait_receivers(w->r, NROOM, bt_is_ready, 60);
    for (i = 0; i < NROOM && ok; i++) ok = kvx_receiver_poll(w->r[i]) == KVX_POLL_WAITING_FOR_INPUT;
    CHECK(ok, "%s: the decode resolved all four prefill ranks (%s)", w->what, kvx_receiver_error(w->r[0]));
    if (!ok) return -1;
    for (i = 0; i < NROOM; i++) kvx_receiver_init(w->r[i], g_pages, 3, -1);
    for (k = 0; k < 4; k++) {
        ok = bt_wait_senders(w->s[k], NROOM, bt_is_ready, 60);
        for (i = 0; i < NROOM && ok; i++)
            ok = !w->s[k][i] || kvx_sender_poll(w->s[k][i]) == KVX_POLL_WAITING_FOR_INPUT;
        CHECK(ok, "%s: prefill rank %d got its room frames", w->what, k);
        if (!ok) return -1;
    }
    return 0;
}

static void world_close(world *w) {
    int k, i;
    for (i = 0; i < NROOM; i++) kvx_receiver_destroy(w->r[i]);
    for (k = 0; k < 4; k++)
        for (i = 0; i < NROOM; i++) kvx_sender_destroy(w->s[k][i]);
    kvx_engine_destroy(w->de);
    ex_pool_free(&w->dpool);
    for (k = 3; k >= 0; k--)
        if (w->pe[k]) { kvx_engine_destroy(w->pe[k]); ex_pool_free(&w->pp[k]); }
    if (w->pid > 0) { kill(w->pid, SIGKILL); kill(w->pid, SIGCONT); waitpid(w->pid, NULL, 0); }
}

static void send_room(kvx_sender *s) {
    kvx_sender_init(s, 3, -1);
    kvx_sender_send(s, g_pages, 3);
}

/* A room opened after the loss: 0 Success, else its poll result. */
static void late_room(world *w, uint64_t room, const char *needle) {
    kvx_receiver *r;
    kvx_sender *s[2] = {NULL, NULL};
    int k, dp = (int)(room % 2), ok;
    for (k = 0; k < 2; k++)
        if (dp == 0) s[k] = bt_send(w->pe[k], room);
    r = bt_recv(w->de, room, NULL);
    if (dp == 1) {
        ok = bt_wait_receivers(&r, 1, bt_is_terminal, 60) && kvx_receiver_poll(r) == KVX_POLL_FAILED &&
             strstr(kvx_receiver_error(r), needle);
        CHECK(ok, "%s: a new room of dp rank 1 fails at once naming the lost rank: %s", w->what,
              kvx_receiver_error(r));
    } else {
        ok = wait_poll(r, KVX_POLL_WAITING_FOR_INPUT, 60);
        if (ok) kvx_receiver_init(r, g_pages, 3, -1);
        ok = ok && bt_wait_senders(s, 2, bt_is_ready, 60);
        for (k = 0; k < 2 && ok; k++) send_room(s[k]);
        ok = ok && bt_wait_receivers(&r, 1, bt_is_terminal, 60) && kvx_receiver_poll(r) == KVX_POLL_SUCCESS;
        CHECK(ok, "%s: a new room of dp rank 0 opened after the loss reaches Success (%s)", w->what,
              kvx_receiver_error(r));
    }
    kvx_receiver_destroy(r);
    for (k = 0; k < 2; k++) kvx_sender_destroy(s[k]);
}

static void run(int forked) {
    world w;
    char needle[256];
    int i, k, ok, failed = 0, named = 0, alive = 0;
    double t0;
    if (world_open(&w, forked)) {
        CHECK(0, "%s: engines and rooms open", w.what);
        world_close(&w);
        return;
    }
    /* the victim's partner (dp 1, tp 0) has sent room 11 (it waits for the
       victim), not room 13 */
    send_room(w.s[2][1]);
    snprintf(needle, sizeof needle, "lost connection with prefill instance %s (rank 127.0.0.1:%d), "
             "prefill tp rank 1 of 2, pp rank 0 of 1, dp rank 1 of 2: ", w.addr, w.ctrl);
    t0 = bt_now();
    if (forked == 2) {
        kill(w.pid, SIGSTOP); /* killed in world_close */
    } else if (forked) {
        kill(w.pid, SIGKILL);
        waitpid(w.pid, NULL, 0);
        w.pid = 0;
    } else {
        kvx_engine_destroy(w.pe[VICTIM]);
        ex_pool_free(&w.pp[VICTIM]);
        w.pe[VICTIM] = NULL;
    }
    for (i = 1; i < NROOM; i += 2) {
        ok = bt_wait_receivers(&w.r[i], 1, bt_is_terminal, 60) && kvx_receiver_poll(w.r[i]) == KVX_POLL_FAILED;
        failed += ok;
        named += ok && strstr(kvx_receiver_error(w.r[i]), needle) != NULL;
        if (i == 1) printf("  room 11: %s\n", kvx_receiver_error(w.r[i]));
    }
    CHECK(failed == NROOM / 2 && named == failed,
          "%s: every room of dp rank 1 failed (%d of %d) naming the lost rank (%d): want \"%s\"",
          w.what, failed, NROOM / 2, named, needle);
    CHECK(bt_now() - t0 < 30, "%s: they failed at once (%.2f s)", w.what, bt_now() - t0);
    if (forked == 2)
        CHECK(strstr(kvx_receiver_error(w.r[1]), "heartbeats") != NULL, "%s: by heartbeat: %s", w.what,
              kvx_receiver_error(w.r[1]));
    /* the decode's failure reaches the other contributor of room 13 */
    ok = bt_wait_senders(&w.s[2][3], 1, bt_is_terminal, 60) && kvx_sender_poll(w.s[2][3]) == KVX_POLL_FAILED &&
         strstr(kvx_sender_error(w.s[2][3]), needle);
    CHECK(ok, "%s: the other contributor of room 13 (dp 1, tp 0) fails too: %s", w.what,
          kvx_sender_error(w.s[2][3]));
    /* rooms of dp rank 0 do not depend on the lost rank: still in flight */
    for (i = 0; i < NROOM; i += 2) alive += kvx_receiver_poll(w.r[i]) == KVX_POLL_TRANSFERRING;
    CHECK(alive == NROOM / 2, "%s: the rooms of dp rank 0 were not failed (%d of %d in flight; room "
          "10: %s)", w.what, alive, NROOM / 2, kvx_receiver_error(w.r[0]));
    late_room(&w, 21, needle);
    late_room(&w, 20, needle);
    for (k = 0; k < 2; k++)
        for (i = 0; i < NROOM; i += 2) send_room(w.s[k][i]);
    for (i = 0, ok = 0; i < NROOM; i += 2)
        ok += bt_wait_receivers(&w.r[i], 1, bt_is_terminal, 60) && kvx_receiver_poll(w.r[i]) == KVX_POLL_SUCCESS;
    CHECK(ok == NROOM / 2, "%s: the rooms of dp rank 0 reach Success (%d of %d; room 10: %s)", w.what, ok,
          NROOM / 2, kvx_receiver_error(w.r[0]));
    world_close(&w);
}

int main(void) {
    bt_name = "test_boot_rank_lost";
    signal(SIGPIPE, SIG_IGN);
    run(0);
    run(1);
    run(2);
    return bt_finish();
}
