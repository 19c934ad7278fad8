/* The cuda transport between instances of different parallel layouts
   (kvx.h PARALLEL LAYOUTS, kvx_boot.h RANK MAPPING), on the fake driver:
   one helper process per prefill rank (this binary again), the decode
   ranks in this process (a thread each), every pool in (fake) GPU memory
   built per rank by ex_pool_init_rank, every head of every token of every
   decode rank verified through staging copies, aux rows too.
   - TP 4 -> 2 (each decode rank takes two prefill ranks' heads, written at
     their head offset as 2-D copies) and TP 2 -> 4 (each prefill room
     writes the head slices of two decode ranks);
   - MLA 4 -> 2 (two of the four prefill ranks are dummies that move
     nothing) and MLA 2 -> 4 (the same latent to two decode ranks): the
     bytes the prefill ranks queued are counted, each decode byte once;
   - TP 1 -> 8 (GQA, 8 KV heads): the one prefill rank's room writes one
     head into each of 8 decode ranks;
   - PP 2 -> 1: the decode rank takes its layers from both prefill PP ranks;
     PP 2 -> 2: rank to rank;
   - DP 2: two prefill dp ranks, each serving its rooms: room % 2
     (follow_bootstrap_room), or rooms pinned by POST /register_dp_rank
     (load_balance_method round_robin: request i to dp rank i % 2, which
     is not room % 2 for some); each prefill dp rank reports the rooms it
     completed, and each decode room came from the dp rank that owns it;
   - a killed contributor (TP 2 -> 1): the decode rooms fail naming the
     lost rank, and the other prefill rank's rooms stop with the decode's
     reason. */
#define KVX_IMPLEMENTATION
#include "../../kvx_cuda.h"
#include "cuda_test.h"
#include "cuda_xport.h"

#if !defined(KVX_WITH_CUDA)
int main(void) {
    kt_name = "test_cuda_ranks";
    return kt_skip("built without KVX_WITH_CUDA (no CUDA toolkit headers at build time)");
}
#else

static ct_fake F;

#define RK_NREQ 5
#define RK_MIN 16
#define RK_MAX 200

static const ex_model *rk_model(const char *name) { return strcmp(name, "mla") ? &cx_mha8 : &cx_mla; }

/* One rank: its pool (ex_pool_init_rank) in GPU memory, its engine. */
static int rk_side(cx_side *s, kvx_role role, const ex_model *m, const ex_rank *rk, uint64_t seed,
                   int port, uint32_t dp, uint32_t dp_rank, int pin, char *why, size_t wl) {
    char addr[64];
    kvx_engine_desc d;
    uint32_t pages = RK_NREQ * ((RK_MAX + 15) / 16) + 16;
    memset(s, 0, sizeof *s);
    s->nreq = RK_NREQ;
    s->reqs = (ex_request *)calloc(RK_NREQ, sizeof *s->reqs);
    ex_requests(s->reqs, RK_NREQ, seed, RK_MIN, RK_MAX, 16);
    if (dp > 1 && !pin) s->nreq = ex_requests_dp(s->reqs, RK_NREQ, dp, dp_rank);
    if (dp > 1 && pin) { /* request i to dp rank i % dp, whatever its room */
        uint32_t i, k = 0;
        for (i = 0; i < RK_NREQ; i++)
            if (i % dp == dp_rank) s->reqs[k++] = s->reqs[i];
        s->nreq = k;
    }
    if (ex_pool_init_rank(&s->pool, m, pages, 16, RK_NREQ + 2,
                          seed * 3 + (role == KVX_ROLE_PREFILL ? 1 : 2) + rk->tp_rank * 5, rk)) {
        snprintf(why, wl, "no pool for rank tp %u of %u, pp %u of %u", rk->tp_rank, rk->tp,
                 rk->pp_rank, rk->pp);
        return -1;
    }
    if (cx_gpu_pool(s, 0, why, wl)) return -1;
    memset(&d, 0, sizeof d);
    d.role = role;
    d.transport = "cuda";
    d.layout = s->pool.layout;
    d.logger.func = cx_log;
    d.logger.level = getenv("KVX_TEST_VERBOSE") ? KVX_LOG_DEBUG : KVX_LOG_WARN;
    d.boot.host = "127.0.0.1";
    d.boot.port = role == KVX_ROLE_PREFILL && port ? port : -1;
    d.boot.tp_size = (int)rk->tp;
    d.boot.tp_rank = (int)rk->tp_rank;
    d.boot.pp_size = (int)rk->pp;
    d.boot.pp_rank = (int)rk->pp_rank;
    d.boot.dp_size = (int)(dp ? dp : 1);
    d.boot.dp_rank = (int)dp_rank;
    if (pin) d.boot.load_balance_method = "round_robin";
    snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
    if (role == KVX_ROLE_DECODE) d.bootstrap_addr = addr;
    d.poll_interval_us = 2000;
    d.mem = s->gpu.ops;
    kvx_cuda_register();
    if (kvx_engine_create(&d, &s->e, why, wl) != KVX_OK) return -1;
    return 0;
}

/* ---- a prefill rank (helper process) --------------------------------------------- */

/* --prank <model> <seed> <tp> <tp_rank> <pp> <pp_rank> <port> <mode> <dp> <dp_rank> <pin>
   mode 0: send every room; 1: all but the last chunk, then report the
   rooms once they are terminal (the decode's failure must reach them); 2:
   all but the last chunk, then wait to be killed; 3: all but the last
   chunk, then abort every room ("the engine ran out of memory"). dp > 1:
   this prefill dp rank serves only its rooms (pin 0: room % dp == dp_rank;
   pin 1: request i with i % dp == dp_rank, pinned by load_balance_method
   round_robin). Prints "READY <bootstrap port> <control port>", then
   "RESULT <ok> <failed> <bytes queued> <rooms>", a "DONE <room>" line per
   room that succeeded and an "ERR <room> <sentence>" line per failed room;
   exits when stdin closes. */
static int rk_helper(char **argv) {
    cx_side sd;
    cx_batch b;
    kvx_cuda_transport_stats st;
    ex_rank rk;
    char why[512];
    uint32_t i;
    int port = atoi(argv[8]), mode = atoi(argv[9]), pin = atoi(argv[12]);
    uint32_t dp = (uint32_t)atoi(argv[10]), dp_rank = (uint32_t)atoi(argv[11]);
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    rk.tp = (uint32_t)atoi(argv[4]);
    rk.tp_rank = (uint32_t)atoi(argv[5]);
    rk.pp = (uint32_t)atoi(argv[6]);
    rk.pp_rank = (uint32_t)atoi(argv[7]);
    if (rk_side(&sd, KVX_ROLE_PREFILL, rk_model(argv[2]), &rk, strtoull(argv[3], NULL, 10), port,
                dp, dp_rank, pin, why, sizeof why)) {
        printf("ERROR %s\n", why);
        fflush(stdout);
        return 3;
    }
    printf("READY %d %d\n", kvx_boot_engine_port(sd.e), kvx_boot_control_port(kvx_boot_get(sd.e)));
    fflush(stdout);
    cx_prefill_batch(&sd, &b, 2, 120, mode ? CX_PARTIAL : 0);
    if (mode == 2) {
        printf("PARTIAL\n");
        fflush(stdout);
        cx_wait_stdin_eof();
        return 0;
    }
    if (mode == 3)
        for (i = 0; i < sd.nreq; i++) kvx_sender_abort(b.s[i], "the engine ran out of memory");
    if (mode == 1 || mode == 3) cx_prefill_wait(&sd, &b, 120);
    kvx_cuda_transport_stats_get(sd.e, &st);
    printf("RESULT %u %u %llu %u\n", b.ok, b.failed, (unsigned long long)st.bytes, sd.nreq);
    for (i = 0; i < sd.nreq; i++)
        if (kvx_sender_poll(b.s[i]) == KVX_POLL_SUCCESS)
            printf("DONE %llu\n", (unsigned long long)sd.reqs[i].room);
    for (i = 0; i < sd.nreq; i++)
        if (kvx_sender_poll(b.s[i]) != KVX_POLL_SUCCESS)
            printf("ERR %llu %s\n", (unsigned long long)sd.reqs[i].room, kvx_sender_error(b.s[i]));
    fflush(stdout);
    cx_wait_stdin_eof();
    cx_batch_free(&sd, &b);
    cx_side_free(&sd);
    return b.failed ? 1 : 0;
}

/* ---- the decode ranks (threads of this process) ---------------------------------- */

typedef struct rk_dec {
    cx_side sd;
    cx_batch b;
    pthread_t th;
    int ok;
    uint64_t page_bytes; /* of one page of this rank's pool */
    uint64_t pages;      /* of every room */
} rk_dec;

static void *rk_dec_main(void *arg) {
    rk_dec *d = (rk_dec *)arg;
    cx_decode_batch(&d->sd, &d->b, 120, 0, 1);
    return NULL;
}

typedef struct rk_run {
    const char *name, *model;
    uint32_t ptp, ppp, dtp;
    int kill_rank;   /* -1: none; else that prefill rank stops mid-room and is killed */
    int fail_rank;   /* -1: none; else that prefill rank aborts its rooms mid-room */
    uint32_t dpp;    /* decode PP size (0: 1) */
    uint32_t dp;     /* prefill dp ranks (0: 1) */
    int pin;         /* dp > 1: rooms pinned by load_balance_method round_robin */
} rk_run;

static int rk_spawn(cx_proc *p, const rk_run *t, uint64_t seed, uint32_t tp_rank, uint32_t pp_rank,
                    uint32_t dp_rank, int port, int mode) {
    char a[10][32];
    const char *args[14];
    int i;
    snprintf(a[0], 32, "%llu", (unsigned long long)seed);
    snprintf(a[1], 32, "%u", t->ptp);
    snprintf(a[2], 32, "%u", tp_rank);
    snprintf(a[3], 32, "%u", t->ppp);
    snprintf(a[4], 32, "%u", pp_rank);
    snprintf(a[5], 32, "%d", port);
    snprintf(a[6], 32, "%d", mode);
    snprintf(a[7], 32, "%u", t->dp ? t->dp : 1);
    snprintf(a[8], 32, "%u", dp_rank);
    snprintf(a[9], 32, "%d", t->pin);
    args[0] = "--prank";
    args[1] = t->model;
    for (i = 0; i < 10; i++) args[2 + i] = a[i];
    args[12] = NULL;
    return cx_spawn(p, args, NULL);
}

/* Runs one topology; returns the decode ranks' first error in err. */
static void rk_check(const rk_run *t, uint64_t seed) {
    cx_proc pr[8];
    uint32_t ndp = t->dp ? t->dp : 1, dpp = t->dpp ? t->dpp : 1, nd = t->dtp * dpp;
    uint32_t per = t->ptp * t->ppp, np = per * ndp; /* prefill ranks per dp rank, in all */
    rk_dec *dec = (rk_dec *)calloc(nd, sizeof *dec);
    uint32_t i, k, verified = 0, ok = 0, failed = 0, pok = 0, pfail = 0, served[RK_NREQ] = {0};
    int port = 0, ctl[8] = {0}, running = 0, misrouted = 0, idle_dp = 0;
    uint64_t bytes = 0, want = 0;
    char line[2048], why[512], first[KVX_ERROR_MAX] = "", perr[2048] = "";
    memset(pr, 0, sizeof pr);
    for (i = 0; i < np; i++) {
        uint32_t tpr = i % t->ptp, ppr = (i / t->ptp) % t->ppp, dpr = i / per;
        int mode = t->kill_rank < 0 && t->fail_rank < 0 ? 0
                   : (int)i == t->kill_rank ? 2 : (int)i == t->fail_rank ? 3 : 1;
        if (rk_spawn(&pr[i], t, seed, tpr, ppr, dpr, port, mode) ||
            !cx_expect(&pr[i], "READY", line, sizeof line, 60)) {
            CHECK(0, "%s: prefill rank %u started: %s", t->name, i, line);
            goto out;
        }
        {
            int bp = 0;
            sscanf(line, "READY %d %d", &bp, &ctl[i]);
            if (!i) port = bp;
        }
    }
    for (i = 0; i < nd; i++) {
        ex_rank rk;
        rk.tp = t->dtp;
        rk.tp_rank = i % t->dtp;
        rk.pp = dpp;
        rk.pp_rank = i / t->dtp;
        if (rk_side(&dec[i].sd, KVX_ROLE_DECODE, rk_model(t->model), &rk, seed, port, 0, 0, 0, why,
                    sizeof why)) {
            CHECK(0, "%s: decode rank %u: %s", t->name, i, why);
            goto out;
        }
        dec[i].page_bytes = kvx_layout_page_bytes(&dec[i].sd.pool.layout);
        for (k = 0; k < RK_NREQ; k++) dec[i].pages += dec[i].sd.reqs[k].pages;
        want += dec[i].page_bytes * dec[i].pages;
    }
    for (i = 0; i < nd; i++) pthread_create(&dec[i].th, NULL, rk_dec_main, &dec[i]);
    running = 1;
    if (t->kill_rank >= 0) { /* once it stopped mid-room: gone, as a crash */
        CHECK(cx_expect(&pr[t->kill_rank], "PARTIAL", line, sizeof line, 60),
              "%s: prefill rank %d stopped mid-room", t->name, t->kill_rank);
        kill(pr[t->kill_rank].pid, SIGKILL);
        cx_reap(&pr[t->kill_rank], 10);
    }
    for (i = 0; i < nd; i++) pthread_join(dec[i].th, NULL);
    running = 0;
    for (i = 0; i < nd; i++) {
        ok += dec[i].b.ok;
        verified += dec[i].b.verified;
        failed += dec[i].b.failed;
        if (!first[0] && dec[i].b.first_err[0])
            snprintf(first, sizeof first, "%s", dec[i].b.first_err);
    }
    for (i = 0; i < np; i++) {
        unsigned a = 0, f = 0, nr = 0, j;
        unsigned long long by = 0;
        if ((int)i == t->kill_rank) continue;
        if (!cx_expect(&pr[i], "RESULT", line, sizeof line, 60)) {
            CHECK(0, "%s: prefill rank %u reports", t->name, i);
            continue;
        }
        sscanf(line, "RESULT %u %u %llu %u", &a, &f, &by, &nr);
        pok += a;
        pfail += f;
        bytes += by;
        if (!nr) idle_dp++;
        for (j = 0; j < a; j++) { /* the rooms it completed: its dp rank's only */
            unsigned long long room = 0;
            if (!cx_expect(&pr[i], "DONE", line, sizeof line, 10)) break;
            sscanf(line, "DONE %llu", &room);
            for (k = 0; k < RK_NREQ && dec[0].sd.reqs[k].room != room; k++) {}
            if (k == RK_NREQ || (t->pin ? k % ndp : room % ndp) != i / per) misrouted++;
            else served[k]++;
        }
        if (f && !perr[0] && cx_readline(&pr[i], perr, sizeof perr, 5)) {}
    }
    if (t->fail_rank >= 0) {
        char who[64];
        snprintf(who, sizeof who, "prefill rank tp %d of %u", t->fail_rank, t->ptp);
        CHECK(ok == 0 && failed == RK_NREQ * nd,
              "%s: every decode room failed (%u of %u)", t->name, failed, RK_NREQ * nd);
        CHECK(strstr(first, who) && strstr(first, "ran out of memory"),
              "%s: the decode's sentence names the failed prefill rank and its reason: %s",
              t->name, first);
        CHECK(pfail == RK_NREQ * np && pok == 0 && strstr(perr, "ran out of memory"),
              "%s: the other prefill rank's rooms stopped with the decode's reason (%u failed): "
              "%s", t->name, pfail, perr);
    } else if (t->kill_rank < 0) {
        CHECK(ok == RK_NREQ * nd && verified == ok,
              "%s: every decode rank's rooms succeeded and every head of every token checks "
              "(%u of %u verified): %s", t->name, verified, RK_NREQ * nd, first);
        CHECK(pok == RK_NREQ * per, "%s: every prefill rank's rooms succeeded (%u of %u): %s",
              t->name, pok, RK_NREQ * per, perr);
        for (k = 0; k < RK_NREQ && served[k] == per; k++) {}
        CHECK(!misrouted && k == RK_NREQ,
              "%s: each room was served by the %u prefill ranks of its dp rank (%d misrouted)",
              t->name, per, misrouted);
        if (ndp > 1)
            CHECK(!idle_dp, "%s: both prefill dp ranks had rooms (%d had none)", t->name, idle_dp);
        if (t->pin) { /* pinning decided: some room's own dp rank (room % dp) was another */
            uint32_t moved = 0;
            for (k = 0; k < RK_NREQ; k++) moved += dec[0].sd.reqs[k].room % ndp != k % ndp;
            CHECK(moved > 0, "%s: %u rooms were pinned away from room %% %u", t->name, moved, ndp);
        }
        CHECK(bytes == want, "%s: the prefill ranks queued %llu bytes, the decode ranks hold "
                  "%llu: each decode byte once", t->name, (unsigned long long)bytes,
                  (unsigned long long)want);
    } else {
        char port_s[16];
        snprintf(port_s, sizeof port_s, ":%d", ctl[t->kill_rank]);
        CHECK(ok == 0 && failed == RK_NREQ * nd,
              "%s: every decode room failed (%u of %u)", t->name, failed, RK_NREQ * nd);
        CHECK(strstr(first, "lost connection with prefill") && strstr(first, port_s),
              "%s: the decode's sentence names the lost prefill rank (%s): %s", t->name, port_s,
              first);
        CHECK(pfail == RK_NREQ * (np - 1) && pok == 0,
              "%s: the other prefill ranks' rooms stopped (%u failed): %s", t->name, pfail, perr);
    }
    printf("%s: %u decode rooms verified, prefill queued %llu bytes (decode ranks hold %llu)\n",
           t->name, verified, (unsigned long long)bytes, (unsigned long long)want);
out:
    for (i = 0; running && i < nd; i++) pthread_join(dec[i].th, NULL);
    for (i = 0; i < nd; i++) {
        if (dec[i].b.r) cx_batch_free(&dec[i].sd, &dec[i].b);
        if (dec[i].sd.e || dec[i].sd.reqs) cx_side_free(&dec[i].sd);
    }
    for (i = 0; i < np; i++)
        if (pr[i].pid > 0) CHECK(cx_reap(&pr[i], 30) <= 1, "%s: prefill rank %u exits", t->name, i);
    free(dec);
}

int main(int argc, char **argv) {
    static const rk_run runs[] = {
        {"TP 4 -> 2", "mha8", 4, 1, 2, -1, -1, 1, 1, 0},
        {"TP 2 -> 4", "mha8", 2, 1, 4, -1, -1, 1, 1, 0},
        {"TP 1 -> 8 (GQA, 8 KV heads)", "mha8", 1, 1, 8, -1, -1, 1, 1, 0},
        {"MLA 4 -> 2", "mla", 4, 1, 2, -1, -1, 1, 1, 0},
        {"MLA 2 -> 4", "mla", 2, 1, 4, -1, -1, 1, 1, 0},
        {"PP 2 -> 1", "mha8", 1, 2, 1, -1, -1, 1, 1, 0},
        {"PP 2 -> 2", "mha8", 1, 2, 1, -1, -1, 2, 1, 0},
        {"TP 2 -> 2, PP 2 -> 2", "mha8", 2, 2, 2, -1, -1, 2, 1, 0},
        {"DP 2 (room % 2)", "mha8", 1, 1, 1, -1, -1, 1, 2, 0},
        {"DP 2 (rooms pinned by /register_dp_rank)", "mha8", 1, 1, 1, -1, -1, 1, 2, 1},
        {"DP 2 x TP 2 -> 1", "mha8", 2, 1, 1, -1, -1, 1, 2, 0},
        {"TP 2 -> 1, a contributor killed", "mha8", 2, 1, 1, 1, -1, 1, 1, 0},
        {"TP 2 -> 1, a contributor fails", "mha8", 2, 1, 1, -1, 1, 1, 1, 0},
    };
    char why[512];
    size_t i;
    kt_name = "test_cuda_ranks";
    setenv("FAKECUDA_DEVICES", "1", 0);
    if (ct_fake_open(&F, argv[0], why, sizeof why) != 0) return kt_skip(why);
    cx_find_self(argv[0]);
    if (argc > 12 && !strcmp(argv[1], "--prank")) return rk_helper(argv);
    signal(SIGPIPE, SIG_IGN);
    for (i = 0; i < sizeof runs / sizeof runs[0]; i++) /* RK_ONLY=text: the runs named so */
        if (!getenv("RK_ONLY") || strstr(runs[i].name, getenv("RK_ONLY")))
            rk_check(&runs[i], 1000 + i);
    return kt_done();
}
#endif
