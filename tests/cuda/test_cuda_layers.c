/* test_cuda_layers - layer-wise sends (kvx.h kvx_sender_send_layers) over
   the cuda transport on the fake driver, pools in (fake) GPU memory:
   1. one room, three chunks: chunk 0 all-layer, chunk 1 layer by layer,
      chunk 2 in 3 ranges; every layer of every page and the aux row
      verified (through staging copies) against independently generated
      content, and the stats count 8 parts and 3 chunks;
   2. the same with the sender held between parts, in a helper process on
      a synchronous fake driver (FAKECUDA_SYNC=1: a copy is done when the
      call that queued it returns): after each part its layers are in the
      decode pool, the next layers are not, and the receiver is still
      Transferring; Success only after the last layer;
   3. heterogeneous TP layer-wise: prefill TP 2 -> decode TP 1 and
      TP 1 -> 2, PP 2 -> 1 and MLA TP 2 -> 1, every byte verified on every
      decode rank (engines in this process);
   4. an out-of-order range and a layer sent twice: the sender's room fails
      with the core's sentence and the decode room fails too, never
      Success;
   5. a prefill process killed between layers (after its first layer was
      copied): the decode room fails, never Success. */
#define KVX_IMPLEMENTATION
#include "../../kvx_cuda.h"
#include "cuda_test.h"
#include "cuda_xport.h"

#if !defined(KVX_WITH_CUDA)
int main(void) {
    kt_name = "test_cuda_layers";
    return kt_skip("built without KVX_WITH_CUDA (no CUDA toolkit headers at build time)");
}
#else

static ct_fake F;

#define NPAGES 12 /* pages of a request: chunks of 4 */
#define MAXR 4    /* ranks on a side */

/* One rank: its pool in (fake) GPU memory, zeroed, and its engine. */
static int side_up(cx_side *s, kvx_role role, const ex_model *m, uint64_t seed, const ex_rank *rk,
                   int port, char *why, size_t wl) {
    char addr[64];
    kvx_engine_desc d;
    memset(s, 0, sizeof *s);
    if (ex_pool_init_rank(&s->pool, m, 128, 16, 8, seed, rk)) {
        snprintf(why, wl, "no pool");
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
    snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
    if (role == KVX_ROLE_DECODE) d.bootstrap_addr = addr;
    d.poll_interval_us = 2000;
    d.mem = s->gpu.ops;
    kvx_cuda_register();
    return kvx_engine_create(&d, &s->e, why, wl) == KVX_OK ? 0 : -1;
}

static void side_down(cx_side *s) {
    kvx_engine_destroy(s->e);
    s->e = NULL;
    ex_gpu_free(&s->gpu, &s->pool);
    ex_pool_free(&s->pool);
}

static uint32_t side_layers(const cx_side *s) {
    return s->pool.mla ? s->pool.layout.num_buffers : s->pool.layout.num_buffers / 2;
}

/* Bad rows of model layer `layer` (K and V, or the MLA buffer) on request
   pages [first, first + n), read through the fake's host view; with zero,
   1 for every byte that is not zero instead. */
static uint64_t layer_check(cx_side *s, uint64_t room, const int32_t *dp, uint32_t first,
                            uint32_t n, uint32_t layer, int zero) {
    uint32_t L = side_layers(s), k, i, b;
    uint64_t bad = 0, w;
    for (k = 0; k < (s->pool.mla ? 1u : 2u); k++) {
        b = k * L + (layer - s->pool.layer_begin);
        for (i = first; i < first + n; i++) {
            uint64_t item = s->pool.bufs[b].item_len;
            uint64_t *pg = (uint64_t *)F.view((char *)s->pool.bufs[b].base + (uint64_t)dp[i] * item,
                                              (size_t)item);
            if (!pg) return 1;
            if (!zero) bad += ex_page_pattern(&s->pool, room, b, i, pg, 0);
            else
                for (w = 0; w < item / 8; w++)
                    if (pg[w]) { bad++; break; }
        }
    }
    return bad;
}

/* ---- 1 and 2: mixed all-layer and layer-wise chunks ---------------------------- */

static void mixed(int held) {
    cx_side pf, dc;
    kvx_room_desc rd;
    kvx_sender *s = NULL;
    kvx_receiver *r = NULL;
    int32_t sp[NPAGES], dp[NPAGES], ssl, dsl;
    char why[KVX_ERROR_MAX] = "";
    uint64_t room = 9100 + (uint64_t)held, bad;
    kvx_cuda_transport_stats st0, st1;
    int early = 0, part_ok = 1, next_clean = 1;
    uint32_t l;
    const char *tag = held ? "held" : "mixed";
    if (side_up(&pf, KVX_ROLE_PREFILL, &cx_tiny, 3, &ex_rank_all, 0, why, sizeof why) ||
        side_up(&dc, KVX_ROLE_DECODE, &cx_tiny, 4, &ex_rank_all, kvx_boot_engine_port(pf.e), why,
                sizeof why)) {
        CHECK(0, "%s: engines up: %s", tag, why);
        return;
    }
    ex_alloc_pages(&pf.pool, sp, NPAGES);
    ex_alloc_pages(&dc.pool, dp, NPAGES);
    ssl = ex_alloc_slot(&pf.pool);
    dsl = ex_alloc_slot(&dc.pool);
    ex_request_pages(&pf.gpu, &pf.pool, room, sp, NPAGES, 1);
    ex_aux_write(&pf.pool, room, ssl);
    ex_aux_clear(&dc.pool, dsl);
    memset(&rd, 0, sizeof rd);
    rd.room = room;
    kvx_receiver_create(dc.e, &rd, &r);
    kvx_sender_create(pf.e, &rd, &s);
    kvx_receiver_wait(r, KVX_POLL_WAITING_FOR_INPUT, 20000);
    kvx_receiver_init(r, dp, NPAGES, dsl);
    kvx_sender_wait(s, KVX_POLL_WAITING_FOR_INPUT, 20000);
    kvx_sender_init(s, NPAGES, ssl);
    kvx_cuda_transport_stats_get(pf.e, &st0);
    kvx_sender_send(s, sp, 4); /* chunk 0: every layer */
    for (l = 0; l < 4; l++) { /* chunk 1: a layer at a time */
        CHECK(kvx_sender_send_layers(s, sp + 4, 4, l, l + 1) == KVX_OK, "%s: chunk 1 layer %u sent",
              tag, l);
        if (!held || l == 3) continue;
        /* the synchronous fake copied the part before the call returned */
        if (layer_check(&dc, room, dp, 4, 4, l, 0)) part_ok = 0;
        if (layer_check(&dc, room, dp, 4, 4, l + 1, 1)) next_clean = 0;
        if (kvx_receiver_poll(r) != KVX_POLL_TRANSFERRING) early = 1;
    }
    if (held)
        CHECK(part_ok && next_clean, "held: chunk 1: once layer l was handed over its K and V rows "
              "are in the decode pool, and layer l + 1's are still zero (each part is copied at "
              "once, not with the chunk's last layer)");
    kvx_sender_send_layers(s, sp + 8, 4, 0, 1); /* chunk 2: three ranges */
    kvx_sender_send_layers(s, sp + 8, 4, 1, 3);
    if (held) {
        CHECK(!layer_check(&dc, room, dp, 8, 4, 0, 0) && !layer_check(&dc, room, dp, 8, 4, 2, 0) &&
                  !layer_check(&dc, room, dp, 8, 4, 3, 1),
              "held: chunk 2: layers [0, 3) in place, layer 3 not yet");
        if (kvx_receiver_poll(r) != KVX_POLL_TRANSFERRING) early = 1;
        CHECK(!early && !ex_aux_check(&dc.pool, room, dsl),
              "held: the receiver stays Transferring (no aux row) until the last layer is sent (%s)",
              kvx_poll_str(kvx_receiver_poll(r)));
    }
    kvx_sender_send_layers(s, sp + 8, 4, 3, 4);
    kvx_receiver_wait(r, KVX_POLL_SUCCESS, 60000);
    kvx_sender_wait(s, KVX_POLL_SUCCESS, 60000);
    bad = ex_request_pages(&dc.gpu, &dc.pool, room, dp, NPAGES, 0);
    CHECK(kvx_receiver_poll(r) == KVX_POLL_SUCCESS && kvx_sender_poll(s) == KVX_POLL_SUCCESS && !bad &&
              ex_aux_check(&dc.pool, room, dsl),
          "%s: all-layer, layer-by-layer and 3-range chunks: Success, every layer of every page "
          "and the aux row verified (receiver %s: %s; sender %s; %llu bad rows)", tag,
          kvx_poll_str(kvx_receiver_poll(r)), kvx_receiver_error(r), kvx_sender_error(s),
          (unsigned long long)bad);
    kvx_cuda_transport_stats_get(pf.e, &st1);
    CHECK(st1.parts - st0.parts == 8 && st1.chunks - st0.chunks == 3 &&
              st1.bytes - st0.bytes == NPAGES * kvx_layout_page_bytes(&pf.pool.layout),
          "%s: stats: 8 parts, 3 chunks, the request's KV bytes once (parts %llu, chunks %llu, "
          "bytes %llu)", tag, (unsigned long long)(st1.parts - st0.parts),
          (unsigned long long)(st1.chunks - st0.chunks), (unsigned long long)(st1.bytes - st0.bytes));
    kvx_sender_destroy(s);
    kvx_receiver_destroy(r);
    side_down(&dc);
    side_down(&pf);
}

/* Runs this binary with args on the synchronous fake and takes its
   checks as ours (its "ok" and "FAIL" lines). */
static void in_helper(const char *what, const char *const *args) {
    const char *env[] = {"FAKECUDA_SYNC=1", NULL};
    cx_proc p;
    char line[4096];
    int seen = 0, rc;
    if (cx_spawn(&p, args, env)) {
        CHECK(0, "%s: helper started", what);
        return;
    }
    while (cx_readline(&p, line, sizeof line, 120)) {
        printf("  [%s] %s\n", what, line);
        if (!strncmp(line, "ok", 2)) kt_pass++, seen++;
        else if (!strncmp(line, "FAIL", 4)) kt_fail++, seen++;
    }
    rc = cx_reap(&p, 30);
    CHECK(rc == 0 && seen > 0, "%s: the helper ran %d checks and exited %d", what, seen, rc);
}

/* ---- 3: heterogeneous TP and PP, layer-wise ------------------------------------- */

/* Rank k's chunks: chunk 0 all-layer, chunk 1 per layer, chunk 2 in up
   to 3 ranges of its layers; the ranks' calls interleave. */
static void send_schedule(kvx_sender **s, cx_side *pf, int np, int32_t (*sp)[NPAGES]) {
    int step, k;
    for (step = 0;; step++) {
        int any = 0;
        for (k = 0; k < np; k++) {
            uint32_t L = side_layers(&pf[k]), l0 = pf[k].pool.layer_begin, kk = L < 3 ? L : 3;
            int t = step;
            if (t == 0) { kvx_sender_send(s[k], sp[k], 4); any = 1; continue; }
            t--;
            if (t < (int)L) {
                kvx_sender_send_layers(s[k], sp[k] + 4, 4, l0 + (uint32_t)t, l0 + (uint32_t)t + 1);
                any = 1;
                continue;
            }
            t -= (int)L;
            if (t < (int)kk) {
                kvx_sender_send_layers(s[k], sp[k] + 8, 4, l0 + (uint32_t)t * L / kk,
                                       l0 + ((uint32_t)t + 1) * L / kk);
                any = 1;
            }
        }
        if (!any) break;
    }
}

static void topo(const char *name, const ex_model *m, int ptp, int ppp, int dtp) {
    static uint64_t next_room = 9200;
    cx_side pf[MAXR], dc[MAXR];
    kvx_sender *s[MAXR];
    kvx_receiver *r[MAXR];
    int32_t sp[MAXR][NPAGES], dp[MAXR][NPAGES], ssl[MAXR], dsl[MAXR];
    int np = ptp * ppp, nd = dtp, k, good = 0, port = 0;
    char why[KVX_ERROR_MAX] = "", err[KVX_ERROR_MAX * 2] = "";
    uint64_t room = next_room++;
    kvx_room_desc rd;
    memset(pf, 0, sizeof pf);
    memset(dc, 0, sizeof dc);
    for (k = 0; k < np; k++) {
        ex_rank rk;
        rk.tp = (uint32_t)ptp; rk.tp_rank = (uint32_t)(k % ptp);
        rk.pp = (uint32_t)ppp; rk.pp_rank = (uint32_t)(k / ptp);
        if (side_up(&pf[k], KVX_ROLE_PREFILL, m, 3 + (uint64_t)k, &rk, port, why, sizeof why)) {
            CHECK(0, "%s: prefill rank %d up: %s", name, k, why);
            return;
        }
        if (!k) port = kvx_boot_engine_port(pf[0].e);
    }
    for (k = 0; k < nd; k++) {
        ex_rank rk;
        rk.tp = (uint32_t)dtp; rk.tp_rank = (uint32_t)k; rk.pp = 1; rk.pp_rank = 0;
        if (side_up(&dc[k], KVX_ROLE_DECODE, m, 40 + (uint64_t)k, &rk, port, why, sizeof why)) {
            CHECK(0, "%s: decode rank %d up: %s", name, k, why);
            return;
        }
    }
    memset(&rd, 0, sizeof rd);
    rd.room = room;
    for (k = 0; k < nd; k++) {
        ex_alloc_pages(&dc[k].pool, dp[k], NPAGES);
        dsl[k] = ex_alloc_slot(&dc[k].pool);
        ex_aux_clear(&dc[k].pool, dsl[k]);
        kvx_receiver_create(dc[k].e, &rd, &r[k]);
    }
    for (k = 0; k < np; k++) {
        ex_alloc_pages(&pf[k].pool, sp[k], NPAGES);
        ssl[k] = ex_alloc_slot(&pf[k].pool);
        ex_request_pages(&pf[k].gpu, &pf[k].pool, room, sp[k], NPAGES, 1);
        ex_aux_write(&pf[k].pool, room, ssl[k]);
        kvx_sender_create(pf[k].e, &rd, &s[k]);
    }
    for (k = 0; k < nd; k++) {
        kvx_receiver_wait(r[k], KVX_POLL_WAITING_FOR_INPUT, 20000);
        kvx_receiver_init(r[k], dp[k], NPAGES, dsl[k]);
    }
    for (k = 0; k < np; k++) {
        kvx_sender_wait(s[k], KVX_POLL_WAITING_FOR_INPUT, 20000);
        kvx_sender_init(s[k], NPAGES, ssl[k]);
    }
    send_schedule(s, pf, np, sp);
    for (k = 0; k < nd; k++) kvx_receiver_wait(r[k], KVX_POLL_SUCCESS, 60000);
    for (k = 0; k < np; k++) kvx_sender_wait(s[k], KVX_POLL_SUCCESS, 60000);
    for (k = 0; k < nd; k++) {
        uint64_t bad = ex_request_pages(&dc[k].gpu, &dc[k].pool, room, dp[k], NPAGES, 0);
        int aux = ex_aux_check(&dc[k].pool, room, dsl[k]);
        if (kvx_receiver_poll(r[k]) == KVX_POLL_SUCCESS && !bad && aux) good++;
        else if (!err[0])
            snprintf(err, sizeof err, "decode rank %d: %s (%s), %llu bad rows, aux %s", k,
                     kvx_poll_str(kvx_receiver_poll(r[k])), kvx_receiver_error(r[k]),
                     (unsigned long long)bad, aux ? "ok" : "bad");
    }
    for (k = 0; k < np; k++)
        if (kvx_sender_poll(s[k]) != KVX_POLL_SUCCESS && !err[0])
            snprintf(err, sizeof err, "prefill rank %d: %s (%s)", k, kvx_poll_str(kvx_sender_poll(s[k])),
                     kvx_sender_error(s[k]));
    CHECK(good == nd && !err[0], "%s layer-wise (chunk 0 whole, chunk 1 per layer, chunk 2 in "
          "ranges): every decode rank Success with every layer of every page and the aux row: %s",
          name, err[0] ? err : "ok");
    for (k = 0; k < np; k++) kvx_sender_destroy(s[k]);
    for (k = 0; k < nd; k++) kvx_receiver_destroy(r[k]);
    for (k = 0; k < nd; k++) side_down(&dc[k]);
    for (k = np - 1; k >= 0; k--) side_down(&pf[k]);
}

/* ---- 4: refused ranges: both rooms fail --------------------------------------------- */

static void refused(const char *what, uint32_t b0, uint32_t e0, uint32_t b1, uint32_t e1,
                    const char *sentence) {
    cx_side pf, dc;
    kvx_room_desc rd;
    kvx_sender *s = NULL;
    kvx_receiver *r = NULL;
    int32_t sp[8], dp[8], ssl, dsl;
    char why[KVX_ERROR_MAX] = "";
    kvx_result res;
    uint64_t room = 9300 + b1;
    if (side_up(&pf, KVX_ROLE_PREFILL, &cx_tiny, 3, &ex_rank_all, 0, why, sizeof why) ||
        side_up(&dc, KVX_ROLE_DECODE, &cx_tiny, 4, &ex_rank_all, kvx_boot_engine_port(pf.e), why,
                sizeof why)) {
        CHECK(0, "%s: engines up: %s", what, why);
        return;
    }
    ex_alloc_pages(&pf.pool, sp, 8);
    ex_alloc_pages(&dc.pool, dp, 8);
    ssl = ex_alloc_slot(&pf.pool);
    dsl = ex_alloc_slot(&dc.pool);
    ex_request_pages(&pf.gpu, &pf.pool, room, sp, 8, 1);
    memset(&rd, 0, sizeof rd);
    rd.room = room;
    kvx_receiver_create(dc.e, &rd, &r);
    kvx_sender_create(pf.e, &rd, &s);
    kvx_receiver_wait(r, KVX_POLL_WAITING_FOR_INPUT, 20000);
    kvx_receiver_init(r, dp, 8, dsl);
    kvx_sender_wait(s, KVX_POLL_WAITING_FOR_INPUT, 20000);
    kvx_sender_init(s, 8, ssl);
    kvx_sender_send(s, sp, 4);
    kvx_sender_send_layers(s, sp + 4, 4, b0, e0);
    res = kvx_sender_send_layers(s, sp + 4, 4, b1, e1);
    CHECK(res == KVX_ERR_INVALID_ARGUMENT && kvx_sender_poll(s) == KVX_POLL_FAILED &&
              strstr(kvx_sender_error(s), sentence),
          "%s: [%u, %u) after [%u, %u) fails the sender's room (%s): %s", what, b1, e1, b0, e0,
          kvx_result_str(res), kvx_sender_error(s));
    kvx_receiver_wait(r, KVX_POLL_SUCCESS, 60000);
    CHECK(kvx_receiver_poll(r) == KVX_POLL_FAILED && strstr(kvx_receiver_error(r), sentence),
          "%s: the decode room fails with the sentence, never Success: %s", what,
          kvx_receiver_error(r));
    kvx_sender_destroy(s);
    kvx_receiver_destroy(r);
    side_down(&dc);
    side_down(&pf);
}

/* ---- 5: a prefill process killed between layers ----------------------------------- */

#define KILL_ROOM 9400

/* --kill-prefill: a prefill engine that sends layer 0 of room KILL_ROOM's
   one chunk (copied before the call returns: FAKECUDA_SYNC=1), prints
   "SENT", and waits to be killed. */
static int kill_helper(void) {
    cx_side pf;
    kvx_sender *s = NULL;
    kvx_room_desc rd;
    int32_t sp[8], ssl;
    char why[KVX_ERROR_MAX] = "";
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (side_up(&pf, KVX_ROLE_PREFILL, &cx_tiny, 3, &ex_rank_all, 0, why, sizeof why)) {
        printf("ERROR %s\n", why);
        fflush(stdout);
        return 2;
    }
    printf("READY %d\n", kvx_boot_engine_port(pf.e));
    fflush(stdout);
    ex_alloc_pages(&pf.pool, sp, 8);
    ssl = ex_alloc_slot(&pf.pool);
    ex_request_pages(&pf.gpu, &pf.pool, KILL_ROOM, sp, 8, 1);
    memset(&rd, 0, sizeof rd);
    rd.room = KILL_ROOM;
    kvx_sender_create(pf.e, &rd, &s);
    kvx_sender_wait(s, KVX_POLL_WAITING_FOR_INPUT, 60000);
    kvx_sender_init(s, 8, ssl);
    kvx_sender_send_layers(s, sp, 8, 0, 1);
    printf("SENT %s\n", kvx_poll_str(kvx_sender_poll(s)));
    fflush(stdout);
    cx_wait_stdin_eof();
    return 0;
}

static void killed(void) {
    const char *args[] = {"--kill-prefill", NULL};
    const char *env[] = {"FAKECUDA_SYNC=1", NULL};
    cx_proc p;
    cx_side dc;
    kvx_room_desc rd;
    kvx_receiver *r = NULL;
    int32_t dp[8], dsl;
    int port = 0;
    char line[1024] = "", why[KVX_ERROR_MAX] = "";
    kvx_poll before;
    uint64_t bad;
    if (cx_spawn(&p, args, env) || !cx_expect(&p, "READY", line, sizeof line, 60) ||
        sscanf(line, "READY %d", &port) != 1) {
        CHECK(0, "killed: the prefill helper started: %s", line);
        return;
    }
    if (side_up(&dc, KVX_ROLE_DECODE, &cx_tiny, 4, &ex_rank_all, port, why, sizeof why)) {
        CHECK(0, "killed: decode up: %s", why);
        cx_reap(&p, 5);
        return;
    }
    ex_alloc_pages(&dc.pool, dp, 8);
    dsl = ex_alloc_slot(&dc.pool);
    memset(&rd, 0, sizeof rd);
    rd.room = KILL_ROOM;
    kvx_receiver_create(dc.e, &rd, &r);
    kvx_receiver_wait(r, KVX_POLL_WAITING_FOR_INPUT, 20000);
    kvx_receiver_init(r, dp, 8, dsl);
    cx_expect(&p, "SENT", line, sizeof line, 60);
    before = kvx_receiver_poll(r);
    bad = layer_check(&dc, KILL_ROOM, dp, 0, 8, 0, 0);
    CHECK(!strncmp(line, "SENT", 4) && !bad && before == KVX_POLL_TRANSFERRING,
          "killed: the prefill's layer 0 is in the decode pool (%llu bad rows) and the decode room "
          "is %s", (unsigned long long)bad, kvx_poll_str(before));
    kill(p.pid, SIGKILL);
    kvx_receiver_wait(r, KVX_POLL_SUCCESS, 60000);
    CHECK(kvx_receiver_poll(r) == KVX_POLL_FAILED,
          "killed between layers: the decode room fails, never Success (%s: %s)",
          kvx_poll_str(kvx_receiver_poll(r)), kvx_receiver_error(r));
    cx_reap(&p, 10);
    kvx_receiver_destroy(r);
    side_down(&dc);
}

int main(int argc, char **argv) {
    char why[512];
    const char *held_args[] = {"--held", NULL};
    kt_name = "test_cuda_layers";
    setenv("FAKECUDA_DEVICES", "1", 0);
    if (ct_fake_open(&F, argv[0], why, sizeof why) != 0) return kt_skip(why);
    cx_find_self(argv[0]);
    signal(SIGPIPE, SIG_IGN);
    if (argc > 1 && !strcmp(argv[1], "--kill-prefill")) return kill_helper();
    if (argc > 1 && !strcmp(argv[1], "--held")) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        mixed(1);
        return kt_fail ? 1 : 0;
    }
    mixed(0);
    in_helper("held between parts", held_args);
    topo("prefill TP 2 -> decode TP 1", &cx_mha8, 2, 1, 1);
    topo("prefill TP 1 -> decode TP 2", &cx_mha8, 1, 1, 2);
    topo("prefill PP 2 -> decode PP 1", &cx_tiny, 1, 2, 1);
    topo("MLA prefill TP 2 -> decode TP 1", &cx_mla, 2, 1, 1);
    refused("out of order", 0, 1, 2, 3, "were skipped");
    refused("a layer twice", 0, 2, 1, 3, "was already sent");
    killed();
    return kt_done();
}
#endif
