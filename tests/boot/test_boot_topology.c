/* Topologies end to end on the bootfake transport, in one process (several
   engines, ephemeral ports), with the per-rank layouts of
   examples/kvx_example.h (ex_pool_init_rank: SGLang's split of heads and
   layers): prefill TP 4 -> decode TP 2, TP 2 -> TP 4, PP 2 -> 1, PP 2 -> 2.
   Each decode room reaches Success only after every prefill rank that
   contributes to it reported Success. PP mapping (decode PP == prefill PP:
   rank to rank; decode PP 1: every prefill PP rank; anything else refused)
   and decode cp_size 1. The fault case: one of two contributing prefill
   ranks aborts its sender mid-room -> the decode room fails naming that
   rank (tp/pp rank and address), and the other contributor's sender fails
   too. */
#define KVX_IMPLEMENTATION
#include "../../kvx_boot.h"
#include "../../examples/kvx_example.h"
#include "boot_test.h"

#define MAXR 8
static const ex_model mha = {"gqa", 4, 8, 8, 2, 0, "bfloat16"}; /* 4 layers, 8 KV heads */

typedef struct topo {
    int ptp, ppp, dtp, dpp, np, nd;
    ex_pool pp[MAXR], dp[MAXR];
    kvx_engine *pe[MAXR], *de[MAXR];
    kvx_sender *s[MAXR];
    kvx_receiver *r[MAXR];
    char addr[64], what[64];
} topo;

/* Does prefill engine i (tp i % ptp, pp i / ptp) send to decode engine j? */
static int contrib(const topo *t, int i, int j) {
    int pt = i % t->ptp, pp = i / t->ptp, dt = j % t->dtp, dp = j / t->dtp, tp_ok;
    if (t->ptp == t->dtp) tp_ok = pt == dt;
    else if (t->ptp > t->dtp) tp_ok = pt / (t->ptp / t->dtp) == dt;
    else tp_ok = dt / (t->dtp / t->ptp) == pt;
    return tp_ok && (t->dpp == t->ppp ? pp == dp : 1);
}

#define mk_recv(e, room) bt_recv(e, room, NULL)

#define mk_send bt_send

/* Engine k (tp k % tp, pp k / tp) of an instance with its ex_pool_init_rank
   pool: a prefill on port (0: ephemeral), or a decode of addr with cp_size dcp. */
static kvx_engine *rank_engine(kvx_role role, ex_pool *pool, int tp, int pp, int k, int port,
                               const char *addr, int dcp) {
    bt_engine_opts o;
    char why[KVX_ERROR_MAX];
    ex_rank rk;
    kvx_engine *e;
    rk.tp = (uint32_t)tp; rk.tp_rank = (uint32_t)(k % tp);
    rk.pp = (uint32_t)pp; rk.pp_rank = (uint32_t)(k / tp);
    if (ex_pool_init_rank(pool, &mha, 16, 16, 4, role == KVX_ROLE_PREFILL ? 1 : 2, &rk)) return NULL;
    memset(&o, 0, sizeof o);
    o.layout = &pool->layout;
    o.tp_size = tp; o.tp_rank = k % tp;
    o.pp_size = pp; o.pp_rank = k / tp;
    o.cp_size = dcp;
    o.port = port;
    o.addr = addr;
    e = bt_engine(role, NULL, &o, why, sizeof why);
    if (!e) printf("  %s %d: %s\n", role == KVX_ROLE_PREFILL ? "prefill" : "decode", k, why);
    return e;
}

/* Starts the engines: prefill ptp x ppp, decode ranks listed in dranks
   (NULL: all of dtp x dpp). 0 ok. */
static int topo_open(topo *t, int ptp, int ppp, int dtp, int dpp, const int *dranks, int nd, int dcp) {
    int i, port = 0;
    memset(t, 0, sizeof *t);
    t->ptp = ptp; t->ppp = ppp; t->dtp = dtp; t->dpp = dpp;
    t->np = ptp * ppp;
    t->nd = dranks ? nd : dtp * dpp;
    snprintf(t->what, sizeof t->what, "tp %d pp %d -> tp %d pp %d", ptp, ppp, dtp, dpp);
    for (i = 0; i < t->np; i++) {
        if (!(t->pe[i] = rank_engine(KVX_ROLE_PREFILL, &t->pp[i], ptp, ppp, i, port, NULL, 0)))
            return -1;
        if (!i) port = kvx_boot_engine_port(t->pe[0]);
    }
    snprintf(t->addr, sizeof t->addr, "127.0.0.1:%d", port);
    for (i = 0; i < t->nd; i++)
        if (!(t->de[i] = rank_engine(KVX_ROLE_DECODE, &t->dp[i], dtp, dpp, dranks ? dranks[i] : i, 0,
                                     t->addr, dcp)))
            return -1;
    return 0;
}

static void topo_close(topo *t) {
    int i;
    for (i = 0; i < t->nd; i++) kvx_receiver_destroy(t->r[i]);
    for (i = 0; i < t->np; i++) kvx_sender_destroy(t->s[i]);
    for (i = 0; i < t->nd; i++) { kvx_engine_destroy(t->de[i]); ex_pool_free(&t->dp[i]); }
    for (i = t->np - 1; i >= 0; i--) { kvx_engine_destroy(t->pe[i]); ex_pool_free(&t->pp[i]); }
}

static int32_t g_pages[3] = {1, 5, 9};

/* Opens the room everywhere; 0 when every decode rank sent its destination
   and every contributing prefill rank has it. */
static int topo_room(topo *t, uint64_t room) {
    int i, ok;
    for (i = 0; i < t->np; i++) t->s[i] = mk_send(t->pe[i], room);
    for (i = 0; i < t->nd; i++) t->r[i] = mk_recv(t->de[i], room);
    ok = bt_wait_receivers(t->r, t->nd, bt_is_ready, 60);
    for (i = 0; i < t->nd && ok; i++)
        if (kvx_receiver_poll(t->r[i]) != KVX_POLL_WAITING_FOR_INPUT) ok = 0;
    CHECK(ok, "%s: every decode rank resolved and connected (%s)", t->what,
          t->nd ? kvx_receiver_error(t->r[0]) : "");
    if (!ok) return -1;
    for (i = 0; i < t->nd; i++) kvx_receiver_init(t->r[i], g_pages, 3, -1);
    ok = bt_wait_senders(t->s, t->np, bt_is_ready, 60);
    for (i = 0; i < t->np && ok; i++)
        if (kvx_sender_poll(t->s[i]) != KVX_POLL_WAITING_FOR_INPUT) ok = 0;
    CHECK(ok, "%s: every prefill rank got its room frames", t->what);
    return ok ? 0 : -1;
}

static void topo_send(topo *t, int i) {
    kvx_sender_init(t->s[i], 3, -1);
    kvx_sender_send(t->s[i], g_pages, 3);
}

/* A room every rank sends in full, after room 4242's statuses: each control
   connection delivers in order, so once a decode rank's barrier room is
   Success, every status its contributors sent for 4242 has been handled
   (a wrong early Success of 4242 would show by then). */
static void barrier(topo *t, uint64_t room) {
    kvx_sender *s[MAXR];
    kvx_receiver *r[MAXR];
    int i, ok;
    for (i = 0; i < t->np; i++) s[i] = mk_send(t->pe[i], room);
    for (i = 0; i < t->nd; i++) r[i] = mk_recv(t->de[i], room);
    ok = bt_wait_receivers(r, t->nd, bt_is_ready, 60);
    for (i = 0; i < t->nd; i++) kvx_receiver_init(r[i], g_pages, 3, -1);
    ok = ok && bt_wait_senders(s, t->np, bt_is_ready, 60);
    for (i = 0; i < t->np; i++) {
        kvx_sender_init(s[i], 3, -1);
        kvx_sender_send(s[i], g_pages, 3);
    }
    ok = ok && bt_wait_receivers(r, t->nd, bt_is_terminal, 60);
    for (i = 0; i < t->nd && ok; i++) ok = kvx_receiver_poll(r[i]) == KVX_POLL_SUCCESS;
    CHECK(ok, "%s: barrier room %llu Success on every decode rank", t->what,
          (unsigned long long)room);
    for (i = 0; i < t->nd; i++) kvx_receiver_destroy(r[i]);
    for (i = 0; i < t->np; i++) kvx_sender_destroy(s[i]);
}

/* Success only after every contributor: every prefill rank but the last
   contributor X of decode rank 0 sends; the decode ranks that do not need X
   succeed (observed), the others are still transferring; then X sends. */
static void run_topo(int ptp, int ppp, int dtp, int dpp) {
    topo t;
    int i, j, x = -1, ok, waiting = 0, n0 = 0;
    if (topo_open(&t, ptp, ppp, dtp, dpp, NULL, 0, 0)) {
        CHECK(0, "tp %d pp %d -> tp %d pp %d: engines start", ptp, ppp, dtp, dpp);
        topo_close(&t);
        return;
    }
    for (i = 0; i < t.np; i++)
        if (contrib(&t, i, 0)) { x = i; n0++; }
    CHECK(n0 == (ptp > dtp ? ptp / dtp : 1) * (dpp == 1 ? ppp : 1),
          "%s: decode rank 0 has %d contributors", t.what, n0);
    if (topo_room(&t, 4242) == 0) {
        for (i = 0; i < t.np; i++)
            if (i != x) topo_send(&t, i);
        for (j = 0; j < t.nd; j++)
            if (!contrib(&t, x, j)) {
                CHECK(bt_wait_receivers(&t.r[j], 1, bt_is_terminal, 60) &&
                          kvx_receiver_poll(t.r[j]) == KVX_POLL_SUCCESS,
                      "%s: decode rank %d (not fed by prefill %d) Success (%s)", t.what, j, x,
                      kvx_receiver_error(t.r[j]));
            }
        barrier(&t, 4243); /* the other contributors' statuses of 4242 were processed */
        for (j = 0; j < t.nd; j++)
            if (contrib(&t, x, j) && kvx_receiver_poll(t.r[j]) == KVX_POLL_TRANSFERRING) waiting++;
        for (j = 0, ok = 0; j < t.nd; j++) ok += contrib(&t, x, j);
        CHECK(waiting == ok, "%s: the %d decode rank(s) fed by prefill %d wait for it (%d do)",
              t.what, ok, x, waiting);
        topo_send(&t, x);
        ok = bt_wait_receivers(t.r, t.nd, bt_is_terminal, 60);
        for (j = 0; j < t.nd && ok; j++)
            if (kvx_receiver_poll(t.r[j]) != KVX_POLL_SUCCESS) ok = 0;
        CHECK(ok, "%s: every decode room Success once every contributor reported (%s)", t.what,
              kvx_receiver_error(t.r[0]));
    }
    topo_close(&t);
}

/* Decode PP 2 == prefill PP 2: decode pp rank 1 alone targets prefill pp
   rank 1 only (prefill pp rank 0 never hears of the room). */
static void pp_rank_to_rank(void) {
    topo t;
    static const int only[1] = {1}; /* decode tp 0, pp 1 */
    int ok;
    if (topo_open(&t, 1, 2, 1, 2, only, 1, 0)) {
        CHECK(0, "pp rank to rank: engines start");
        topo_close(&t);
        return;
    }
    t.s[0] = mk_send(t.pe[0], 77);
    t.s[1] = mk_send(t.pe[1], 77);
    t.r[0] = mk_recv(t.de[0], 77);
    ok = bt_wait_receivers(t.r, 1, bt_is_ready, 60) &&
         kvx_receiver_poll(t.r[0]) == KVX_POLL_WAITING_FOR_INPUT;
    CHECK(ok, "pp rank to rank: decode pp rank 1 connected (%s)", kvx_receiver_error(t.r[0]));
    kvx_receiver_init(t.r[0], g_pages, 3, -1);
    CHECK(bt_wait_senders(&t.s[1], 1, bt_is_ready, 60), "pp rank to rank: prefill pp rank 1 got the room");
    topo_send(&t, 1);
    CHECK(bt_wait_receivers(t.r, 1, bt_is_terminal, 60) && kvx_receiver_poll(t.r[0]) == KVX_POLL_SUCCESS,
          "pp rank to rank: decode pp rank 1 Success from prefill pp rank 1 alone (%s)",
          kvx_receiver_error(t.r[0]));
    CHECK(kvx_sender_poll(t.s[0]) == KVX_POLL_BOOTSTRAPPING,
          "pp rank to rank: prefill pp rank 0 never got the room (%d)", (int)kvx_sender_poll(t.s[0]));
    topo_close(&t);
}

/* The room fails with a sentence: decode PP neither prefill PP nor 1, decode cp 2. */
static void refused(int ppp, int dpp, int dcp, const char *n1, const char *n2) {
    topo t;
    static const int first[1] = {0};
    char what[64];
    snprintf(what, sizeof what, "prefill pp %d, decode pp %d cp %d", ppp, dpp, dcp);
    if (topo_open(&t, 1, ppp, 1, dpp, first, 1, dcp)) {
        CHECK(0, "%s: engines start", what);
        topo_close(&t);
        return;
    }
    t.r[0] = mk_recv(t.de[0], 5);
    bt_wait_receivers(t.r, 1, bt_is_terminal, 60);
    CHECK(kvx_receiver_poll(t.r[0]) == KVX_POLL_FAILED && strstr(kvx_receiver_error(t.r[0]), n1) &&
              strstr(kvx_receiver_error(t.r[0]), n2),
          "%s refused: %s", what, kvx_receiver_error(t.r[0]));
    topo_close(&t);
}

/* A prefill with two CP ranks: the decode refuses it with a sentence
   (prefill context parallelism is not supported yet). */
static void prefill_cp_refused(void) {
    ex_pool pool[3];
    kvx_engine *e[3] = {NULL, NULL, NULL};
    kvx_receiver *r = NULL;
    char why[KVX_ERROR_MAX], addr[64];
    int i, port = 0;
    for (i = 0; i < 3; i++) {
        bt_engine_opts o;
        memset(&o, 0, sizeof o);
        if (ex_pool_init_rank(&pool[i], &mha, 16, 16, 4, 1, &ex_rank_all)) return;
        o.layout = &pool[i].layout;
        if (i < 2) { o.cp_size = 2; o.cp_rank = i; o.port = port; }
        else o.addr = addr;
        e[i] = bt_engine(i < 2 ? KVX_ROLE_PREFILL : KVX_ROLE_DECODE, NULL, &o, why, sizeof why);
        CHECK(e[i] != NULL, "prefill cp 2: engine %d starts: %s", i, e[i] ? "" : why);
        if (!e[i]) break;
        if (!i) {
            port = kvx_boot_engine_port(e[0]);
            snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
        }
    }
    if (e[2]) {
        r = mk_recv(e[2], 6);
        bt_wait_receivers(&r, 1, bt_is_terminal, 60);
        CHECK(kvx_receiver_poll(r) == KVX_POLL_FAILED &&
                  strstr(kvx_receiver_error(r), "has attn_cp_size 2: prefill context parallelism is "
                                                "not supported yet"),
              "prefill cp 2 refused: %s", kvx_receiver_error(r));
        kvx_receiver_destroy(r);
    }
    for (i = 2; i >= 0; i--) {
        kvx_engine_destroy(e[i]);
        ex_pool_free(&pool[i]);
    }
}

/* Prefill TP 2 -> decode TP 1 (or PP 2 -> 1): contributor `bad` aborts its
   sender after the room frames arrived. */
static void fault(int ptp, int ppp, int bad) {
    topo t;
    char needle[96];
    const char *e;
    int other = 1 - bad;
    if (topo_open(&t, ptp, ppp, 1, 1, NULL, 0, 0)) {
        CHECK(0, "fault: engines start");
        topo_close(&t);
        return;
    }
    snprintf(t.what, sizeof t.what, "fault tp %d pp %d -> 1, rank %d aborts", ptp, ppp, bad);
    if (topo_room(&t, 999) == 0) {
        kvx_sender_abort(t.s[bad], "injected fault");
        bt_wait_receivers(t.r, 1, bt_is_terminal, 60);
        e = kvx_receiver_error(t.r[0]);
        snprintf(needle, sizeof needle, "prefill engine at 127.0.0.1:%d (tp rank %d of %d, pp rank %d of %d)",
                 kvx_boot_control_port(kvx_boot_get(t.pe[bad])), bad % ptp, ptp, bad / ptp, ppp);
        CHECK(kvx_receiver_poll(t.r[0]) == KVX_POLL_FAILED && strstr(e, needle) &&
                  strstr(e, "injected fault"),
              "%s: the decode room fails naming the prefill rank: %s", t.what, e);
        CHECK(bt_wait_senders(&t.s[other], 1, bt_is_terminal, 60) &&
                  kvx_sender_poll(t.s[other]) == KVX_POLL_FAILED,
              "%s: the other contributor's sender fails too (%s)", t.what,
              kvx_sender_error(t.s[other]));
    }
    topo_close(&t);
}

int main(void) {
    bt_name = "test_boot_topology";
    signal(SIGPIPE, SIG_IGN);
    run_topo(4, 1, 2, 1);
    run_topo(2, 1, 4, 1);
    run_topo(1, 2, 1, 1);
    run_topo(1, 2, 1, 2);
    pp_rank_to_rank();
    refused(2, 3, 1, "pp_size 2", "decode PP must equal prefill PP or be 1");
    refused(1, 1, 2, "cp_size 2", "context parallelism must be 1");
    prefill_cp_refused();
    fault(2, 1, 1);
    fault(1, 2, 0);
    return bt_finish();
}
