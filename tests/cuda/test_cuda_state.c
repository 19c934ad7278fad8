/* The cuda transport carrying hybrid-model state (kvx.h HYBRID STATE), on
   the fake driver: KV pools and state buffers in (fake) GPU memory, the
   state rows copied GPU to GPU with the last chunk by the prefill rank
   that writes the aux rows; every KV byte, aux row and state row of every
   decode room checked (state rows through the fake's host view), and the
   decode state rows no room named checked untouched.
   1. Mamba-like: 2 state buffers (4096- and 1024-byte rows), 1 index per
      request, several rooms; once with the decode engine in another
      process (its state buffers imported through CUDA IPC, in allocations
      of their own), once in this process;
   2. sliding-window-like: 5 indices per request, scattered with runs;
   3. the decode asks for 3 state indices, the prefill sends 2: the room
      fails on both sides with a sentence giving both counts;
   4. refusals by kvx_layout_overlap reach the decode rooms with their
      sentence (kvx_boot's decode refuses the prefill rank's hello; the
      prefill's rooms get no destination and none succeeds):
      sliding-window state, non-MLA, prefill TP 1 -> decode TP 2, and a
      state row size that differs;
   5. MLA with indexer state (DeepSeek NSA-like): TP 2 -> 1 (the dummy rank
      sends no state; the decode's byte count would catch it) and TP 1 -> 2
      (the same rows to both decode ranks); rooms without state still pass
      (the other tests/cuda programs cover equal shapes without state);
   6. engines with state buffers in host memory are refused with a sentence
      (the cuda transport has no host path for them). */
#define KVX_IMPLEMENTATION
#include "../../kvx_cuda.h"
#include "cuda_test.h"
#include "cuda_xport.h"

#if !defined(KVX_WITH_CUDA)
int main(void) {
    kt_name = "test_cuda_state";
    return kt_skip("built without KVX_WITH_CUDA (no CUDA toolkit headers at build time)");
}
#else

static ct_fake F;

#define SS_NREQ 4
#define SS_ROWS 64   /* state rows per buffer */
#define SS_MAXR 4    /* ranks per side */
#define SS_MAXB 2    /* state buffers */
#define SS_CHUNK 2   /* pages per chunk */

typedef struct ss_case {
    const char *name;
    int mla;
    uint32_t type, nbuf;  /* KVX_STATE_*, state buffers (0: none) */
    uint64_t item[SS_MAXB];
    uint64_t ditem0;      /* the decode's row bytes of state buffer 0 (0: the same) */
    uint32_t nidx, dnidx; /* state indices per request: prefill's, decode's (0: the same) */
    uint32_t ptp, dtp;
    const char *needle;   /* NULL: every room succeeds; else every room fails saying it */
    const char *needle2;
    int remote;           /* the decode side in a helper process */
    int decode_refuses;   /* kvx_boot's decode refuses the prefill rank's hello (kvx_boot.h
                             LAYOUTS BETWEEN RANKS): no room frame reaches the prefill, whose
                             rooms wait for one (and never succeed) */
} ss_case;

static const ss_case ss_cases[] = {
    {"Mamba, 2 state buffers, 1 index, decode in another process", 0, KVX_STATE_MAMBA, 2,
     {4096, 1024}, 0, 1, 0, 1, 1, NULL, NULL, 1, 0},
    {"Mamba, 2 state buffers, 1 index, one process", 0, KVX_STATE_MAMBA, 2, {4096, 1024}, 0, 1, 0,
     1, 1, NULL, NULL, 0, 0},
    {"sliding window, 5 indices with runs", 0, KVX_STATE_SWA, 1, {2048, 0}, 0, 5, 0, 1, 1, NULL,
     NULL, 1, 0},
    {"count mismatch (prefill 2, decode 3)", 0, KVX_STATE_SWA, 2, {512, 256}, 0, 2, 3, 1, 1,
     "prefill sent 2 state indices", "asked for 3", 0, 0},
    {"sliding window, non-MLA, TP 1 -> 2: refused", 0, KVX_STATE_SWA, 1, {1024, 0}, 0, 3, 0, 1, 2,
     "different heads", "SGLang refuses sliding-window state", 0, 1},
    {"state row size differs: refused", 0, KVX_STATE_MAMBA, 2, {4096, 1024}, 2048, 1, 0, 1, 1,
     "item_len of state buffer 0 differs", "source 4096, destination 2048", 0, 1},
    {"MLA + indexer state, TP 2 -> 1 (a dummy rank)", 1, KVX_STATE_OTHER, 1, {1024, 0}, 0, 3, 0, 2,
     1, NULL, NULL, 0, 0},
    {"MLA + indexer state, TP 1 -> 2", 1, KVX_STATE_OTHER, 1, {1024, 0}, 0, 3, 0, 1, 2, NULL, NULL,
     0, 0},
    {"no state (equal shapes)", 0, 0, 0, {0, 0}, 0, 0, 0, 1, 1, NULL, NULL, 0, 0},
};
#define SS_NCASES (sizeof ss_cases / sizeof ss_cases[0])

/* State index k of request i: the prefill's rows are scattered with runs
   (2,3 then 7,8 then 11...), the decode's in another order and place. */
static int32_t ss_pidx(uint32_t i, uint32_t k) {
    return (int32_t)(2 + i * 14 + k + (k >= 2 ? 3 : 0) + (k >= 4 ? 2 : 0));
}
static int32_t ss_didx(uint32_t i, uint32_t k) {
    static const int32_t perm[5] = {9, 0, 1, 2, 5};
    return (int32_t)(1 + i * 15) + perm[k % 5] + (int32_t)(k / 5) * 10;
}

typedef struct ss_room {
    kvx_sender *s;
    kvx_receiver *r;
    int32_t *pages, slot, idx[8];
    uint32_t nidx;
    int started;
} ss_room;

typedef struct ss_side {
    ex_pool pool; /* KV in GPU memory (ex_gpu), state rows mirrored in host memory */
    ex_gpu gpu;
    kvx_buffer gst[SS_MAXB];
    void *gmem[SS_MAXB];
    kvx_layout l; /* the engine's: pool.layout with the GPU state buffers */
    kvx_engine *e;
    ex_request reqs[SS_NREQ];
    ss_room rooms[SS_NREQ];
    int prefill;
} ss_side;

/* One rank: its pool, GPU state buffers (one allocation each; host = 1:
   left in host memory), its engine (port: the prefill's bootstrap port;
   0 for prefill rank 0). */
static int ss_side_init(ss_side *s, const ss_case *c, kvx_role role, uint32_t tp, uint32_t rank,
                        int port, int host, char *why, size_t wl) {
    const ex_model *m = c->mla ? &cx_mla : &cx_mha8;
    ex_rank rk;
    kvx_engine_desc d;
    kvx_cuda *cu;
    char addr[64];
    uint64_t maxi = 8;
    uint32_t b;
    memset(s, 0, sizeof *s);
    s->prefill = role == KVX_ROLE_PREFILL;
    rk.tp = tp;
    rk.tp_rank = rank;
    rk.pp = 1;
    rk.pp_rank = 0;
    ex_requests(s->reqs, SS_NREQ, 4242, 16, 200, 16);
    if (ex_pool_init_rank(&s->pool, m, SS_NREQ * 13 + 16, 16, SS_NREQ + 2,
                          7 + (s->prefill ? 1 : 2) + rank * 5, &rk)) {
        snprintf(why, wl, "no pool");
        return -1;
    }
    for (b = 0; b < c->nbuf; b++) maxi = c->item[b] > maxi ? c->item[b] : maxi;
    if (c->ditem0 > maxi) maxi = c->ditem0;
    if (c->nbuf && ex_pool_add_state(&s->pool, c->type, c->nbuf, maxi, SS_ROWS)) {
        snprintf(why, wl, "no state buffers");
        return -1;
    }
    for (b = 0; b < c->nbuf; b++) {
        uint64_t it = !s->prefill && !b && c->ditem0 ? c->ditem0 : c->item[b];
        s->pool.state[b].item_len = it;
        s->pool.state[b].length = it * SS_ROWS;
    }
    if (ex_gpu_init(&s->gpu, &s->pool, why, wl)) return -1;
    cu = kvx_cuda_from_mem_ops(&s->gpu.ops);
    s->l = s->pool.layout;
    for (b = 0; !host && b < c->nbuf; b++) {
        if (kvx_cuda_alloc(cu, 0, (size_t)s->pool.state[b].length, &s->gmem[b], why, wl)) return -1;
        s->gst[b] = s->pool.state[b];
        s->gst[b].base = s->gmem[b];
        s->gst[b].mem = KVX_MEM_CUDA;
        s->gst[b].device = 0;
    }
    if (c->nbuf && !host) s->l.state = s->gst;
    memset(&d, 0, sizeof d);
    d.role = role;
    d.transport = "cuda";
    d.layout = s->l;
    d.logger.func = cx_log;
    d.logger.level = getenv("KVX_TEST_VERBOSE") ? KVX_LOG_DEBUG : KVX_LOG_WARN;
    d.boot.host = "127.0.0.1";
    d.boot.port = s->prefill && port ? port : -1;
    d.boot.tp_size = (int)tp;
    d.boot.tp_rank = (int)rank;
    snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
    if (!s->prefill) d.bootstrap_addr = addr;
    d.poll_interval_us = 2000;
    d.mem = s->gpu.ops;
    kvx_cuda_register();
    why[0] = 0;
    return kvx_engine_create(&d, &s->e, why, wl) == KVX_OK ? 0 : -1;
}

static void ss_side_free(ss_side *s) {
    kvx_cuda *cu = kvx_cuda_from_mem_ops(&s->gpu.ops);
    uint32_t i;
    for (i = 0; i < SS_NREQ; i++) {
        kvx_sender_destroy(s->rooms[i].s);
        kvx_receiver_destroy(s->rooms[i].r);
        free(s->rooms[i].pages);
    }
    kvx_engine_destroy(s->e);
    for (i = 0; i < SS_MAXB; i++)
        if (s->gmem[i]) kvx_cuda_free(cu, 0, s->gmem[i]);
    ex_gpu_free(&s->gpu, &s->pool);
    ex_pool_free(&s->pool);
    memset(s, 0, sizeof *s);
}

/* The host mirror of the state rows to the GPU (to_gpu) or back. */
static int ss_state_sync(ss_side *s, int to_gpu) {
    uint32_t b;
    for (b = 0; b < s->pool.num_state && s->gmem[b]; b++) {
        size_t len = (size_t)s->gst[b].length;
        void *v = F.view(s->gmem[b], len);
        if (!v) return -1;
        if (to_gpu) memcpy(v, s->pool.state[b].base, len);
        else memcpy(s->pool.state[b].base, v, len);
    }
    return 0;
}

/* Rooms of one side: the prefill fills pages, aux rows and state rows
   first; each room starts once ready. */
static void ss_rooms(ss_side *s, const ss_case *c) {
    uint32_t i, k;
    for (i = 0; i < SS_NREQ; i++) {
        ss_room *rm = &s->rooms[i];
        kvx_room_desc rd;
        memset(&rd, 0, sizeof rd);
        rd.room = s->reqs[i].room;
        rm->pages = (int32_t *)malloc((s->reqs[i].pages + 1) * sizeof(int32_t));
        ex_alloc_pages(&s->pool, rm->pages, s->reqs[i].pages);
        rm->slot = ex_alloc_slot(&s->pool);
        rm->nidx = s->prefill || !c->dnidx ? c->nidx : c->dnidx;
        for (k = 0; k < rm->nidx; k++) rm->idx[k] = s->prefill ? ss_pidx(i, k) : ss_didx(i, k);
        if (s->prefill) {
            ex_request_pages(&s->gpu, &s->pool, rd.room, rm->pages, s->reqs[i].pages, 1);
            ex_aux_write(&s->pool, rd.room, rm->slot);
            if (c->nbuf) ex_state_pattern(&s->pool, rd.room, rm->idx, rm->nidx, 1);
            kvx_sender_create(s->e, &rd, &rm->s);
        } else {
            ex_aux_clear(&s->pool, rm->slot);
            kvx_receiver_create(s->e, &rd, &rm->r);
        }
    }
    if (s->prefill) ss_state_sync(s, 1);
}

/* Starts the rooms that are ready; 1 when every room is terminal. */
static int ss_step(ss_side *s) {
    uint32_t i, done = 0;
    for (i = 0; i < SS_NREQ; i++) {
        ss_room *rm = &s->rooms[i];
        uint32_t n = s->reqs[i].pages, sent = 0;
        kvx_poll st = s->prefill ? kvx_sender_poll(rm->s) : kvx_receiver_poll(rm->r);
        if (!rm->started && st == KVX_POLL_WAITING_FOR_INPUT) {
            rm->started = 1;
            if (!s->prefill) {
                kvx_receiver_init_state(rm->r, rm->pages, n, rm->slot, rm->idx, rm->nidx);
            } else if (kvx_sender_init(rm->s, n, rm->slot) == KVX_OK) {
                while (sent < n) {
                    uint32_t k = n - sent < SS_CHUNK ? n - sent : SS_CHUNK;
                    kvx_result r = sent + k == n
                                       ? kvx_sender_send_state(rm->s, rm->pages + sent, k, rm->idx,
                                                               rm->nidx)
                                       : kvx_sender_send(rm->s, rm->pages + sent, k);
                    if (r != KVX_OK) break;
                    sent += k;
                }
            }
        }
        st = s->prefill ? kvx_sender_poll(rm->s) : kvx_receiver_poll(rm->r);
        done += cx_terminal(st);
    }
    return done == SS_NREQ;
}

/* Blocks until the first unfinished room of the sides moves to its next
   state (or 100 ms pass): decode rooms first, since with a refused pairing
   the prefill rooms never move. */
static void ss_wait(ss_side *P, uint32_t np, ss_side *D, uint32_t nd) {
    uint32_t i, k, side;
    for (side = 0; side < 2; side++)
        for (i = 0; i < (side ? np : nd); i++)
            for (k = 0; k < SS_NREQ; k++) {
                ss_room *rm = side ? &P[i].rooms[k] : &D[i].rooms[k];
                kvx_poll st = side ? kvx_sender_poll(rm->s) : kvx_receiver_poll(rm->r);
                kvx_poll next = (kvx_poll)(st + 1);
                if (cx_terminal(st)) continue;
                if (side) kvx_sender_wait(rm->s, next, 100);
                else kvx_receiver_wait(rm->r, next, 100);
                return;
            }
}

typedef struct ss_result {
    uint32_t ok, failed, verified, untouched_bad, unfinished;
    char err[KVX_ERROR_MAX];
} ss_result;

/* After every room of a side is terminal: successes and failures, and
   (decode) every KV byte, aux row and state row of the rooms that
   succeeded, and the state rows no room named still zero. */
static void ss_collect(ss_side *s, const ss_case *c, ss_result *res) {
    uint32_t i, b, k;
    uint8_t named[SS_ROWS] = {0};
    if (!s->prefill) ss_state_sync(s, 0);
    for (i = 0; i < SS_NREQ; i++) {
        ss_room *rm = &s->rooms[i];
        kvx_poll st = s->prefill ? kvx_sender_poll(rm->s) : kvx_receiver_poll(rm->r);
        if (st == KVX_POLL_SUCCESS) {
            res->ok++;
            if (!s->prefill &&
                !ex_request_pages(&s->gpu, &s->pool, s->reqs[i].room, rm->pages, s->reqs[i].pages,
                                  0) &&
                ex_aux_check(&s->pool, s->reqs[i].room, rm->slot) &&
                (!c->nbuf || !ex_state_pattern(&s->pool, s->reqs[i].room, rm->idx, rm->nidx, 0)))
                res->verified++;
            for (k = 0; k < rm->nidx; k++) named[rm->idx[k]] = 1;
        } else {
            if (st == KVX_POLL_FAILED) res->failed++;
            else res->unfinished++;
            if (!res->err[0])
                snprintf(res->err, sizeof res->err, "%s",
                         st != KVX_POLL_FAILED ? "not finished"
                         : s->prefill          ? kvx_sender_error(rm->s)
                                               : kvx_receiver_error(rm->r));
        }
    }
    for (b = 0; !s->prefill && b < s->pool.num_state; b++)
        for (k = 0; k < SS_ROWS; k++) {
            const uint8_t *row = (const uint8_t *)s->pool.state[b].base + k * s->pool.state[b].item_len;
            uint64_t j;
            if (named[k]) continue;
            for (j = 0; j < s->pool.state[b].item_len && !row[j]; j++) {}
            if (j < s->pool.state[b].item_len) res->untouched_bad++;
        }
}

/* Runs the sides of case c this process holds (mask 1: prefill, 2:
   decode); port: the prefill's bootstrap port when only the decode runs
   here. helper: a decode helper process to start once the prefill serves. */
static int ss_run(const ss_case *c, int mask, int port, ss_result *pres, ss_result *dres,
                  cx_proc *helper, char *why, size_t wl) {
    ss_side *P = (ss_side *)calloc(SS_MAXR, sizeof *P), *D = (ss_side *)calloc(SS_MAXR, sizeof *D);
    uint32_t i, np = mask & 1 ? c->ptp : 0, nd = mask & 2 ? c->dtp : 0;
    double end = cx_now() + 90;
    int rc = -1, all;
    for (i = 0; i < np; i++) {
        if (ss_side_init(&P[i], c, KVX_ROLE_PREFILL, c->ptp, i, port, 0, why, wl)) goto out;
        if (!i) port = kvx_boot_engine_port(P[0].e);
    }
    if (helper) {
        char cs[16], ps[16];
        const char *args[5] = {"--dec", cs, ps, NULL, NULL};
        snprintf(cs, sizeof cs, "%d", (int)(c - ss_cases));
        snprintf(ps, sizeof ps, "%d", port);
        if (cx_spawn(helper, args, NULL)) {
            snprintf(why, wl, "cannot start the decode helper");
            goto out;
        }
    }
    for (i = 0; i < nd; i++)
        if (ss_side_init(&D[i], c, KVX_ROLE_DECODE, c->dtp, i, port, 0, why, wl)) goto out;
    for (i = 0; i < np; i++) ss_rooms(&P[i], c);
    for (i = 0; i < nd; i++) ss_rooms(&D[i], c);
    do {
        int pdone = 1, ddone = 1;
        for (i = 0; i < np; i++) pdone &= ss_step(&P[i]);
        for (i = 0; i < nd; i++) ddone &= ss_step(&D[i]);
        all = ddone && (pdone || (c->decode_refuses && nd));
        if (!all) ss_wait(P, np, D, nd);
    } while (!all && cx_now() < end);
    for (i = 0; i < np; i++) ss_collect(&P[i], c, pres);
    for (i = 0; i < nd; i++) ss_collect(&D[i], c, dres);
    rc = 0;
out:
    for (i = 0; i < SS_MAXR; i++) {
        if (D[i].e || D[i].pool.bufs) ss_side_free(&D[i]);
    }
    if (helper && helper->pid > 0 && rc) cx_reap(helper, 5);
    if (helper && helper->pid > 0 && !rc) { /* its result, before the prefill goes */
        char line[2048];
        if (cx_expect(helper, "RESULT", line, sizeof line, 120)) {
            sscanf(line, "RESULT %u %u %u %u %u", &dres->ok, &dres->verified, &dres->failed,
                   &dres->untouched_bad, &dres->unfinished);
            if (cx_readline(helper, line, sizeof line, 5) && !strncmp(line, "ERR ", 4))
                ct_fmt(dres->err, sizeof dres->err, "%s", line + 4);
        } else {
            snprintf(dres->err, sizeof dres->err, "the decode helper gave no result");
            dres->failed = SS_NREQ;
        }
        if (cx_reap(helper, 30) > 1) dres->failed++;
    }
    for (i = 0; i < SS_MAXR; i++) {
        if (P[i].e || P[i].pool.bufs) ss_side_free(&P[i]);
    }
    free(P);
    free(D);
    return rc;
}

/* --dec <case> <port>: the decode side of a case; prints
   "RESULT <ok> <verified> <failed> <untouched bad> <unfinished>" and "ERR <sentence>". */
static int ss_helper(char **argv) {
    const ss_case *c = &ss_cases[atoi(argv[2])];
    ss_result p, d;
    char why[KVX_ERROR_MAX];
    memset(&p, 0, sizeof p);
    memset(&d, 0, sizeof d);
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (ss_run(c, 2, atoi(argv[3]), &p, &d, NULL, why, sizeof why)) {
        printf("RESULT 0 0 %u 0\nERR %s\n", SS_NREQ, why);
        fflush(stdout);
        return 3;
    }
    printf("RESULT %u %u %u %u %u\nERR %s\n", d.ok, d.verified, d.failed, d.untouched_bad,
           d.unfinished, d.err[0] ? d.err : "-");
    fflush(stdout);
    cx_wait_stdin_eof();
    return 0;
}

static void ss_check(const ss_case *c) {
    ss_result p, d;
    cx_proc helper;
    char why[KVX_ERROR_MAX];
    uint32_t np = SS_NREQ * c->ptp, nd = SS_NREQ * c->dtp;
    memset(&p, 0, sizeof p);
    memset(&d, 0, sizeof d);
    memset(&helper, 0, sizeof helper);
    if (ss_run(c, c->remote ? 1 : 3, 0, &p, &d, c->remote ? &helper : NULL, why, sizeof why)) {
        CHECK(0, "%s: sides start: %s", c->name, why);
        return;
    }
    if (!c->needle) {
        CHECK(d.ok == nd && d.verified == nd && !d.failed,
              "%s: every decode room succeeded with every KV byte, aux row and state row in "
              "place (%u of %u verified): %s", c->name, d.verified, nd, d.err);
        CHECK(d.untouched_bad == 0, "%s: decode state rows no room named are untouched (%u not)",
              c->name, d.untouched_bad);
        CHECK(p.ok == np && !p.failed, "%s: every prefill room succeeded (%u of %u): %s", c->name,
              p.ok, np, p.err);
    } else if (c->decode_refuses) {
        CHECK(d.failed == nd && !d.ok, "%s: every decode room failed (%u of %u)", c->name,
              d.failed, nd);
        CHECK(strstr(d.err, c->needle) && strstr(d.err, c->needle2),
              "%s: the decode's sentence says why: %s", c->name, d.err);
        CHECK(!p.ok, "%s: no prefill room succeeded (%u failed, %u wait for a destination)",
              c->name, p.failed, p.unfinished);
        CHECK(d.untouched_bad == 0, "%s: no decode state row was written (%u were)", c->name,
              d.untouched_bad);
    } else {
        CHECK(d.failed == nd && !d.ok, "%s: every decode room failed (%u of %u)", c->name,
              d.failed, nd);
        CHECK(strstr(d.err, c->needle) && strstr(d.err, c->needle2),
              "%s: the decode's sentence says why: %s", c->name, d.err);
        CHECK(p.failed == np && !p.ok, "%s: every prefill room failed (%u of %u)", c->name,
              p.failed, np);
        CHECK(strstr(p.err, c->needle) && strstr(p.err, c->needle2),
              "%s: the prefill's sentence says why: %s", c->name, p.err);
        CHECK(d.untouched_bad == 0, "%s: no decode state row was written (%u were)", c->name,
              d.untouched_bad);
    }
}

/* Host state buffers: both roles refuse to create the engine, saying so. */
static void ss_host_refused(void) {
    static const ss_case c = {"host state", 0, KVX_STATE_MAMBA, 1, {1024, 0}, 0, 1, 0, 1, 1,
                              NULL, NULL, 0, 0};
    ss_side s;
    char why[KVX_ERROR_MAX];
    int role;
    for (role = 0; role < 2; role++) {
        int r = ss_side_init(&s, &c, role ? KVX_ROLE_DECODE : KVX_ROLE_PREFILL, 1, 0, 1, 1, why,
                             sizeof why);
        CHECK(r != 0 && strstr(why, "state buffer 0 is host memory"),
              "%s engine with state buffers in host memory refused: %s",
              role ? "a decode" : "a prefill", why);
        ss_side_free(&s);
    }
}

int main(int argc, char **argv) {
    char why[512];
    size_t i;
    kt_name = "test_cuda_state";
    setenv("FAKECUDA_DEVICES", "1", 0);
    if (ct_fake_open(&F, argv[0], why, sizeof why) != 0) return kt_skip(why);
    cx_find_self(argv[0]);
    if (argc > 3 && !strcmp(argv[1], "--dec")) return ss_helper(argv);
    signal(SIGPIPE, SIG_IGN);
    for (i = 0; i < SS_NCASES; i++) /* SS_ONLY=text: the cases named so */
        if (!getenv("SS_ONLY") || strstr(ss_cases[i].name, getenv("SS_ONLY")))
            ss_check(&ss_cases[i]);
    ss_host_refused();
    return kt_done();
}
#endif
