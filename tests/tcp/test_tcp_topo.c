/* test_tcp_topo.c - the tcp transport between instances of different
   parallel layouts (issue 13), one forked process per rank:

   - prefill TP 4 -> decode TP 2, TP 2 -> 4, TP 1 -> 8 (GQA, 8 KV heads):
     head slices travel as strided DATA segments; each decode rank verifies
     every head of every token (ex_pages_pattern) and the aux rows;
   - MLA TP 4 -> 2 and 2 -> 4: each decode rank receives each byte once
     (bytes received == pages * page bytes + aux), the dummies send 0;
   - PP 2 -> 1 and PP 2 -> 2;
   - one of several contributing prefill ranks SIGKILLed mid-transfer: the
     decode rooms fail with a sentence naming that rank, never Success;
   - hybrid state (kvx.h HYBRID STATE): MLA TP 4 -> 2
     with Mamba-like state (replicated: only the rank that writes the aux
     rows sends it, each decode rank gets every state row once, verified),
     and sliding-window state on GQA TP 2 -> 1, which kvx_layout_overlap
     refuses: every room fails on the decode with its sentence.

   The parent only forks and reads the shared page; every engine lives in a
   child (one per rank). */
#define KVX_IMPLEMENTATION
#include "tcp_test.h"
#include <sys/mman.h>

#define NREQ 3
#define POOL 160
#define PAGE 16
#define MAXR 8

static const ex_model gqa = {"gqa8", 4, 8, 8, 2, 0, "bfloat16"}; /* 8 KV heads of 16 bytes */
static const ex_model mla = {"mla", 4, 1, 36, 2, 1, "bfloat16"};

typedef struct shared {
    int boot_port;                   /* prefill (tp 0, pp 0)'s bootstrap server */
    int ctrl_port[MAXR][2];          /* each prefill rank's control listener */
    int prefill_up;                  /* prefill engines created */
    int decode_done;                 /* decode ranks finished (prefills stay up until all) */
    int victim_sent;                 /* the victim's first chunk left */
    struct {
        int ok, verified, failed;
        uint64_t bytes, expected;
        char err[KVX_ERROR_MAX + 64];
    } dec[MAXR][2];
    struct {
        int ok, failed;
        uint64_t bytes;
        char err[KVX_ERROR_MAX + 64];
    } pre[MAXR][2];
} shared;

static shared *sh;

typedef struct topo {
    const char *name;
    const ex_model *m;
    int ptp, ppp, dtp, dpp;
    int victim; /* -1, or the prefill tp rank (pp 0) that is killed mid-transfer */
    uint32_t state; /* 0, or the KVX_STATE_* of two state buffers on every rank */
} topo;

#define SITEM 256u /* state rows */
#define SROWS 32u
/* Room i's state index on the prefill, on the decode. */
static int32_t state_src(int i) { return 2 * i + 1; }
static int32_t state_dst(int i) { return SROWS - 1 - 3 * i; }

static uint32_t room_pages(int i) { return (uint32_t)(5 + 4 * i); }
static uint64_t room_id(const topo *t, int i) {
    return 0x70000ull + (uint64_t)t->ptp * 4096 + (uint64_t)t->dtp * 256 + (uint64_t)t->ppp * 32 +
           (uint64_t)t->dpp * 8 + (uint64_t)t->m->mla * 4 + (uint64_t)(t->victim >= 0) * 2 +
           (uint64_t)i * 100000;
}

static double wait_int(int *p, int want, double timeout) {
    double end = tt_now() + timeout;
    while (__atomic_load_n(p, __ATOMIC_ACQUIRE) < want && tt_now() < end) tt_sleep(0.002);
    return __atomic_load_n(p, __ATOMIC_ACQUIRE) >= want;
}

/* Waits for a sender to leave BOOTSTRAPPING (ready 1) or to end; once every
   decode rank finished, a sender still bootstrapping gives up at once and
   one waiting for its ACK gets 20 s more (a failed topology ends fast). */
static kvx_poll wait_sender(kvx_sender *s, const topo *t, int ready, double timeout) {
    double end = tt_now() + timeout;
    for (;;) {
        kvx_poll ps = kvx_sender_poll(s);
        if (ready ? ps != KVX_POLL_BOOTSTRAPPING : tt_terminal(ps)) return ps;
        if (tt_now() > end) return ps;
        if (__atomic_load_n(&sh->decode_done, __ATOMIC_ACQUIRE) >= t->dtp * t->dpp) {
            if (ready || ps == KVX_POLL_BOOTSTRAPPING) return ps; /* no destination came */
            if (end > tt_now() + 20) end = tt_now() + 20; /* its ACK or failure is on the way */
        }
        tt_sleep(0.001);
    }
}

static kvx_engine *rank_engine(kvx_role role, ex_pool *p, const topo *t, int tp_rank, int pp_rank,
                               const char *addr, int port, char *why, size_t wl) {
    tt_opts o;
    memset(&o, 0, sizeof o);
    o.streams = 2;
    o.boot_addr = addr;
    o.boot_port = port;
    o.tp_size = role == KVX_ROLE_PREFILL ? t->ptp : t->dtp;
    o.pp_size = role == KVX_ROLE_PREFILL ? t->ppp : t->dpp;
    o.tp_rank = tp_rank;
    o.pp_rank = pp_rank;
    return tt_engine(role, &p->layout, &o, why, wl);
}

/* A rank's pool (its heads and layers of the model); 0 or -1. */
static int rank_pool(ex_pool *p, const topo *t, int prefill, int tp_rank, int pp_rank) {
    ex_rank rk;
    rk.tp = (uint32_t)(prefill ? t->ptp : t->dtp);
    rk.pp = (uint32_t)(prefill ? t->ppp : t->dpp);
    rk.tp_rank = (uint32_t)tp_rank;
    rk.pp_rank = (uint32_t)pp_rank;
    if (ex_pool_init_rank(p, t->m, POOL, PAGE, NREQ + 1,
                          (prefill ? 11 : 101) + (uint64_t)tp_rank * 7 + (uint64_t)pp_rank, &rk))
        return -1;
    return t->state ? ex_pool_add_state(p, t->state, 2, SITEM, SROWS) : 0;
}

static int prefill_main(const topo *t, int tp_rank, int pp_rank) {
    ex_pool p;
    kvx_engine *e;
    kvx_sender *s[NREQ];
    int32_t pages[NREQ][64], si[NREQ];
    char why[KVX_ERROR_MAX];
    int i, victim = t->victim == tp_rank && pp_rank == 0;
    double end;
    kvx_tcp_stats st;
    if (rank_pool(&p, t, 1, tp_rank, pp_rank)) return 3;
    if (tp_rank || pp_rank) wait_int(&sh->boot_port, 1, 30);
    e = rank_engine(KVX_ROLE_PREFILL, &p, t, tp_rank, pp_rank, NULL,
                    tp_rank || pp_rank ? sh->boot_port : 0, why, sizeof why);
    if (!e) {
        snprintf(sh->pre[tp_rank][pp_rank].err, sizeof sh->pre[0][0].err, "engine: %s", why);
        return 3;
    }
    sh->ctrl_port[tp_rank][pp_rank] = kvx_boot_control_port(kvx_boot_get(e));
    if (!tp_rank && !pp_rank) __atomic_store_n(&sh->boot_port, kvx_boot_engine_port(e), __ATOMIC_RELEASE);
    for (i = 0; i < NREQ; i++) {
        kvx_room_desc rd;
        memset(&rd, 0, sizeof rd);
        rd.room = room_id(t, i);
        ex_alloc_pages(&p, pages[i], room_pages(i));
        ex_pages_pattern(&p, rd.room, pages[i], room_pages(i), 1);
        ex_aux_write(&p, rd.room, i);
        si[i] = state_src(i);
        if (t->state) ex_state_pattern(&p, rd.room, &si[i], 1, 1);
        kvx_sender_create(e, &rd, &s[i]);
    }
    __atomic_add_fetch(&sh->prefill_up, 1, __ATOMIC_ACQ_REL);
    for (i = 0; i < NREQ; i++) {
        uint32_t n = room_pages(i), k;
        if (wait_sender(s[i], t, 1, 30) != KVX_POLL_WAITING_FOR_INPUT) continue;
        kvx_sender_init(s[i], n, i);
        for (k = 0; k < n; k += 2) {
            if (k + 2 >= n) /* the last chunk: the state index with it (none: 0) */
                kvx_sender_send_state(s[i], pages[i] + k, n - k, &si[i], t->state ? 1 : 0);
            else
                kvx_sender_send(s[i], pages[i] + k, 2);
            if (victim && i == NREQ - 1 && k == 0) { /* half a room, then wait to be killed */
                kvx_tcp_stats_get(e, &st);
                while (st.bytes_sent == 0) { tt_sleep(0.001); kvx_tcp_stats_get(e, &st); }
                __atomic_store_n(&sh->victim_sent, 1, __ATOMIC_RELEASE);
                for (;;) pause();
            }
        }
    }
    end = tt_now() + 60;
    for (i = 0; i < NREQ; i++) {
        wait_sender(s[i], t, 0, end - tt_now());
        if (kvx_sender_poll(s[i]) == KVX_POLL_SUCCESS) {
            sh->pre[tp_rank][pp_rank].ok++;
        } else {
            sh->pre[tp_rank][pp_rank].failed++;
            snprintf(sh->pre[tp_rank][pp_rank].err, sizeof sh->pre[0][0].err, "room %d: %s", i,
                     kvx_sender_error(s[i]));
        }
    }
    kvx_tcp_stats_get(e, &st);
    sh->pre[tp_rank][pp_rank].bytes = st.bytes_sent;
    wait_int(&sh->decode_done, t->dtp * t->dpp, 60); /* control connections stay up till then */
    for (i = 0; i < NREQ; i++) kvx_sender_destroy(s[i]);
    kvx_engine_destroy(e);
    ex_pool_free(&p);
    return 0;
}

static int decode_main(const topo *t, int tp_rank, int pp_rank) {
    ex_pool p;
    kvx_engine *e;
    kvx_receiver *r[NREQ];
    int32_t pages[NREQ][64], di[NREQ];
    char why[KVX_ERROR_MAX], addr[64];
    int i;
    double end;
    kvx_tcp_stats st;
    if (rank_pool(&p, t, 0, tp_rank, pp_rank)) return 3;
    wait_int(&sh->boot_port, 1, 30);
    wait_int(&sh->prefill_up, t->ptp * t->ppp, 30);
    snprintf(addr, sizeof addr, "127.0.0.1:%d", sh->boot_port);
    e = rank_engine(KVX_ROLE_DECODE, &p, t, tp_rank, pp_rank, addr, 0, why, sizeof why);
    if (!e) {
        snprintf(sh->dec[tp_rank][pp_rank].err, sizeof sh->dec[0][0].err, "engine: %s", why);
        __atomic_add_fetch(&sh->decode_done, 1, __ATOMIC_ACQ_REL);
        return 3;
    }
    for (i = 0; i < NREQ; i++) {
        kvx_room_desc rd;
        memset(&rd, 0, sizeof rd);
        rd.room = room_id(t, i);
        ex_alloc_pages(&p, pages[i], room_pages(i));
        ex_aux_clear(&p, i);
        di[i] = state_dst(i);
        kvx_receiver_create(e, &rd, &r[i]);
        sh->dec[tp_rank][pp_rank].expected +=
            room_pages(i) * kvx_layout_page_bytes(&p.layout) + kvx_layout_aux_row_bytes(&p.layout) +
            (t->state ? kvx_layout_state_row_bytes(&p.layout) : 0);
    }
    for (i = 0; i < NREQ; i++)
        if (tt_wait_ready_r(r[i], 30))
            kvx_receiver_init_state(r[i], pages[i], room_pages(i), i, &di[i], t->state ? 1 : 0);
    end = tt_now() + 60;
    for (i = 0; i < NREQ; i++) {
        kvx_poll ps = tt_wait_r(r[i], end - tt_now());
        if (ps == KVX_POLL_SUCCESS) {
            sh->dec[tp_rank][pp_rank].ok++;
            if (!ex_pages_pattern(&p, room_id(t, i), pages[i], room_pages(i), 0) &&
                ex_aux_check(&p, room_id(t, i), i) &&
                (!t->state || !ex_state_pattern(&p, room_id(t, i), &di[i], 1, 0)))
                sh->dec[tp_rank][pp_rank].verified++;
        } else {
            sh->dec[tp_rank][pp_rank].failed++;
            if (!sh->dec[tp_rank][pp_rank].err[0])
                snprintf(sh->dec[tp_rank][pp_rank].err, sizeof sh->dec[0][0].err, "room %d (%s): %s",
                         i, kvx_poll_str(ps), kvx_receiver_error(r[i]));
        }
    }
    kvx_tcp_stats_get(e, &st);
    sh->dec[tp_rank][pp_rank].bytes = st.bytes_received;
    __atomic_add_fetch(&sh->decode_done, 1, __ATOMIC_ACQ_REL);
    for (i = 0; i < NREQ; i++) kvx_receiver_destroy(r[i]);
    kvx_engine_destroy(e);
    ex_pool_free(&p);
    return 0;
}

static pid_t spawn(const topo *t, int prefill, int tp_rank, int pp_rank) {
    pid_t pid;
    fflush(stdout);
    pid = fork();
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        _exit(prefill ? prefill_main(t, tp_rank, pp_rank) : decode_main(t, tp_rank, pp_rank));
    }
    return pid;
}

static void run(const topo *t) {
    pid_t pre[MAXR][2], dec[MAXR][2];
    int a, q, st;
    double t0 = tt_now();
    uint64_t sent = 0, dummies_sent = 0;
    int skipped = 0;
    memset(sh, 0, sizeof *sh);
    for (a = 0; a < t->ptp; a++)
        for (q = 0; q < t->ppp; q++) pre[a][q] = spawn(t, 1, a, q);
    for (a = 0; a < t->dtp; a++)
        for (q = 0; q < t->dpp; q++) dec[a][q] = spawn(t, 0, a, q);
    if (t->victim >= 0) {
        CHECK(wait_int(&sh->victim_sent, 1, 60), "%s: prefill tp rank %d sent half a room",
              t->name, t->victim);
        kill(pre[t->victim][0], SIGKILL);
    }
    for (a = 0; a < t->dtp; a++)
        for (q = 0; q < t->dpp; q++) waitpid(dec[a][q], &st, 0);
    for (a = 0; a < t->ptp; a++)
        for (q = 0; q < t->ppp; q++) waitpid(pre[a][q], &st, 0);
    t0 = tt_now() - t0;
    if (t->state == KVX_STATE_SWA) { /* non-MLA, different heads: kvx_layout_overlap refuses */
        for (a = 0; a < t->dtp; a++)
            CHECK(sh->dec[a][0].failed == NREQ && strstr(sh->dec[a][0].err, "sliding-window state "
                  "between ranks holding different heads"), "%s: decode tp %d: %d of %d rooms "
                  "failed with the refusal: %s", t->name, a, sh->dec[a][0].failed, NREQ,
                  sh->dec[a][0].err);
        return;
    }
    for (a = 0; a < t->ptp; a++)
        for (q = 0; q < t->ppp; q++) {
            sent += sh->pre[a][q].bytes;
            if (kvx_mla_dummy(t->m->mla, t->ptp, a, t->dtp)) dummies_sent += sh->pre[a][q].bytes;
            if (t->victim < 0 && (t->dpp == 1 || t->dpp != t->ppp))
                CHECK(sh->pre[a][q].ok == NREQ, "%s: prefill tp %d pp %d: %d of %d senders "
                      "Success, %llu bytes sent %s", t->name, a, q, sh->pre[a][q].ok, NREQ,
                      (unsigned long long)sh->pre[a][q].bytes, sh->pre[a][q].err);
        }
    for (a = 0; a < t->dtp; a++)
        for (q = 0; q < t->dpp; q++) {
            if (t->victim < 0 && strstr(sh->dec[a][q].err, "does not combine")) {
                /* kvx_boot pairs a decode pp rank with every prefill pp rank and refuses
                   those that share no layers: not the tcp transport's to decide */
                printf("SKIP %s: decode pp rank %d: kvx_boot refused the pairing: %s\n", t->name, q,
                       sh->dec[a][q].err);
                skipped = 1;
            } else if (t->victim < 0) {
                CHECK(sh->dec[a][q].verified == NREQ, "%s: decode tp %d pp %d: %d of %d rooms "
                      "verified head by head (%d Success) %s", t->name, a, q,
                      sh->dec[a][q].verified, NREQ, sh->dec[a][q].ok, sh->dec[a][q].err);
                CHECK(sh->dec[a][q].bytes == sh->dec[a][q].expected, "%s: decode tp %d pp %d "
                      "received %llu bytes, its pages and aux rows are %llu: each byte once",
                      t->name, a, q, (unsigned long long)sh->dec[a][q].bytes,
                      (unsigned long long)sh->dec[a][q].expected);
            }
        }
    if (t->m->mla && t->ptp > t->dtp)
        CHECK(dummies_sent == 0, "%s: the MLA dummies sent %llu bytes", t->name,
              (unsigned long long)dummies_sent);
    if (t->victim >= 0) {
        /* the victim contributes to decode rank victim / ratio */
        int d = t->victim / (t->ptp / t->dtp), ok = 0;
        char want_tcp[64], want_ctrl[64];
        const char *err = sh->dec[d][0].err;
        snprintf(want_tcp, sizeof want_tcp, "(tp rank %d of %d, pp rank 0 of 1)", t->victim, t->ptp);
        snprintf(want_ctrl, sizeof want_ctrl, "(rank 127.0.0.1:%d)", sh->ctrl_port[t->victim][0]);
        ok = strstr(err, want_tcp) || strstr(err, want_ctrl);
        CHECK(sh->dec[d][0].failed >= 1 && sh->dec[d][0].ok < NREQ,
              "%s: decode rank %d: the room the killed rank was sending failed (%d Success, "
              "%d failed)", t->name, d, sh->dec[d][0].ok, sh->dec[d][0].failed);
        /* the tcp transport's sentence names the rank's tp/pp rank and address; the
           control connection's loss (kvx_boot, racing it) names its address */
        CHECK(ok, "%s: the sentence names the killed prefill rank (\"%s\" or \"%s\"): %s", t->name,
              want_tcp, want_ctrl, err);
        for (a = d * (t->ptp / t->dtp); a < (d + 1) * (t->ptp / t->dtp); a++) {
            if (a == t->victim) continue;
            CHECK(sh->pre[a][0].failed >= 1 && sh->pre[a][0].err[0], "%s: the other contributor, "
                  "prefill tp rank %d, failed that room too: %s", t->name, a, sh->pre[a][0].err);
        }
    }
    if (t->dpp > 1 && t->dpp == t->ppp && !skipped)
        for (a = 0; a < t->ptp; a++)
            for (q = 0; q < t->ppp; q++)
                CHECK(sh->pre[a][q].ok == NREQ, "%s: prefill tp %d pp %d: %d of %d senders "
                      "Success %s", t->name, a, q, sh->pre[a][q].ok, NREQ, sh->pre[a][q].err);
    printf("  %s: %llu bytes sent in all, %.2f s\n", t->name, (unsigned long long)sent,
           t0);
}

int main(int argc, char **argv) {
    static const topo all[] = {
        {"gqa tp 2 -> 2", &gqa, 2, 1, 2, 1, -1, 0},
        {"gqa tp 4 -> 2", &gqa, 4, 1, 2, 1, -1, 0},
        {"gqa tp 2 -> 4", &gqa, 2, 1, 4, 1, -1, 0},
        {"gqa tp 1 -> 8", &gqa, 1, 1, 8, 1, -1, 0},
        {"mla tp 4 -> 2", &mla, 4, 1, 2, 1, -1, 0},
        {"mla tp 2 -> 4", &mla, 2, 1, 4, 1, -1, 0},
        {"gqa pp 2 -> 1", &gqa, 1, 2, 1, 1, -1, 0},
        {"gqa pp 2 -> 2", &gqa, 1, 2, 1, 2, -1, 0},
        {"gqa tp 4 -> 2, prefill tp rank 1 killed", &gqa, 4, 1, 2, 1, 1, 0},
        {"mla tp 4 -> 2 + mamba state", &mla, 4, 1, 2, 1, -1, KVX_STATE_MAMBA},
        {"gqa tp 2 -> 1 + sliding-window state: refused", &gqa, 2, 1, 1, 1, -1, KVX_STATE_SWA},
    };
    size_t i;
    const char *only = argc > 1 ? argv[1] : getenv("TT_TOPO");
    sh = (shared *)mmap(NULL, sizeof *sh, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (sh == MAP_FAILED) return 1;
    for (i = 0; i < sizeof all / sizeof all[0]; i++)
        if (!only || strstr(all[i].name, only)) run(&all[i]);
    printf("test_tcp_topo: %d passed, %d failed\n", kt_pass, kt_fail);
    return kt_fail ? 1 : 0;
}
