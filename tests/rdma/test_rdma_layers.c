/* test_rdma_layers - layer-wise sends (kvx.h kvx_sender_send_layers) over
   the rdma transport on softverbs, engines in this process unless noted:
   1. one room, three chunks: chunk 0 all-layer, chunk 1 layer by layer,
      chunk 2 in 3 ranges; between parts the sender is held until the
      part's WRITEs completed (every WRITE signaled, the prefill's
      completion counter): the part's layers are in the decode pool, the
      next layers not yet, and the receiver is still Transferring; at the
      end every layer of every page and the aux row are verified against
      independently generated content, and the stats count 8 parts and 3
      chunks;
   2. heterogeneous TP layer-wise: prefill TP 2 -> decode TP 1 (the decode
      rank's staging area) and TP 1 -> 2 (one leg per decode rank), and PP
      2 -> 1 (each prefill pp rank sends its own layers), every byte
      verified on every decode rank;
   3. an out-of-order range and a layer sent twice: the sender's room fails
      with the core's sentence and the decode room fails too, never
      Success;
   4. a prefill process killed between layers (after its first layer
      landed): the decode room fails, never Success. */
#define KVX_IMPLEMENTATION
#define KVX_WITH_RDMA
#include "rdma_test.h"
#include <sched.h>

static char lib[4096];
static double slow = 1;

#define NPAGES 12  /* pages of a request: chunks of 4 */
#define MAXR 4     /* ranks on a side */

typedef struct side {
    ex_pool pool;
    kvx_engine *e;
} side;

static int side_up(side *s, const ex_model *m, uint64_t seed, const ex_rank *rk) {
    memset(s, 0, sizeof *s);
    return ex_pool_init_rank(&s->pool, m, 256, 16, 16, seed, rk);
}

static void side_down(side *s) {
    kvx_engine_destroy(s->e);
    ex_pool_free(&s->pool);
}

static uint32_t side_layers(const side *s) {
    return s->pool.mla ? s->pool.layout.num_buffers : s->pool.layout.num_buffers / 2;
}

/* Bad (token, head) rows of model layer `layer` (its K and V buffers, or
   its one MLA buffer) on request pages [first, first + n) of a pool that
   holds that layer; dp: the pool's pages of the request. */
static uint64_t layer_bad(side *s, uint64_t room, const int32_t *dp, uint32_t first, uint32_t n,
                          uint32_t layer) {
    uint32_t L = side_layers(s), k, i, b;
    uint64_t bad = 0;
    if (layer < s->pool.layer_begin || layer - s->pool.layer_begin >= L) return 0;
    for (k = 0; k < (s->pool.mla ? 1u : 2u); k++) {
        b = k * L + (layer - s->pool.layer_begin);
        for (i = first; i < first + n; i++)
            bad += ex_page_pattern(&s->pool, room, b, i,
                                   (uint64_t *)((char *)s->pool.bufs[b].base +
                                                (uint64_t)dp[i] * s->pool.bufs[b].item_len),
                                   0);
    }
    return bad;
}

/* 1 when every byte of model layer `layer` on pages [first, first + n) is zero. */
static int layer_zero(side *s, const int32_t *dp, uint32_t first, uint32_t n, uint32_t layer) {
    uint32_t L = side_layers(s), k, i, b;
    uint64_t w;
    for (k = 0; k < (s->pool.mla ? 1u : 2u); k++) {
        b = k * L + (layer - s->pool.layer_begin);
        for (i = first; i < first + n; i++) {
            const uint64_t *p = (const uint64_t *)((const char *)s->pool.bufs[b].base +
                                                   (uint64_t)dp[i] * s->pool.bufs[b].item_len);
            for (w = 0; w < s->pool.bufs[b].item_len / 8; w++)
                if (p[w]) return 0;
        }
    }
    return 1;
}

static void pages_zero(side *s, const int32_t *dp, uint32_t n) {
    uint32_t b, i;
    for (b = 0; b < s->pool.layout.num_buffers; b++)
        for (i = 0; i < n; i++)
            memset((char *)s->pool.bufs[b].base + (uint64_t)dp[i] * s->pool.bufs[b].item_len, 0,
                   s->pool.bufs[b].item_len);
}

/* Waits until every WRITE the prefill engine posted completed (each is
   signaled: KVX_IB_SIGNAL_EVERY=1), after it posted more than `wrs0`: the
   bytes of what was handed over are in the decode pool. 1 when seen. */
static int landed(kvx_engine *pf, uint64_t wrs0, double timeout) {
    double end = rt_now() + timeout * slow;
    kvx_rdma_stats st;
    for (;;) {
        kvx_rdma_stats_get(pf, &st);
        if (st.wrs > wrs0 && st.completions >= st.wrs) return 1;
        if (rt_now() > end) return 0;
        sched_yield(); /* the counters have no waiter to wake: read again at once */
    }
}

/* ---- 1: mixed all-layer and layer-wise chunks, held between parts ----------- */

static void mixed(void) {
    side pf, dc;
    kvx_room_desc rd;
    kvx_sender *s = NULL;
    kvx_receiver *r = NULL;
    int32_t sp[NPAGES], dp[NPAGES], ssl, dsl;
    char why[KVX_ERROR_MAX] = "", addr[64];
    uint64_t room = 8100, bad;
    kvx_rdma_stats st0, st1, st, sh;
    int held = 1, early = 0, next_clean = 1, part_ok = 1;
    uint32_t l;
    setenv("KVX_IB_SIGNAL_EVERY", "1", 1);
    if (side_up(&pf, &rt_tiny, 3, &ex_rank_all) || side_up(&dc, &rt_tiny, 4, &ex_rank_all) ||
        !(pf.e = rt_engine(KVX_ROLE_PREFILL, &pf.pool.layout, NULL, why, sizeof why))) {
        CHECK(0, "mixed: prefill up: %s", why);
        return;
    }
    snprintf(addr, sizeof addr, "127.0.0.1:%d", kvx_boot_engine_port(pf.e));
    if (!(dc.e = rt_engine(KVX_ROLE_DECODE, &dc.pool.layout, addr, why, sizeof why))) {
        CHECK(0, "mixed: decode up: %s", why);
        return;
    }
    unsetenv("KVX_IB_SIGNAL_EVERY");
    ex_alloc_pages(&pf.pool, sp, NPAGES);
    ex_alloc_pages(&dc.pool, dp, NPAGES);
    ssl = ex_alloc_slot(&pf.pool);
    dsl = ex_alloc_slot(&dc.pool);
    ex_pages_pattern(&pf.pool, room, sp, NPAGES, 1);
    ex_aux_write(&pf.pool, room, ssl);
    pages_zero(&dc, dp, NPAGES);
    ex_aux_clear(&dc.pool, dsl);
    memset(&rd, 0, sizeof rd);
    rd.room = room;
    kvx_receiver_create(dc.e, &rd, &r);
    kvx_sender_create(pf.e, &rd, &s);
    kvx_receiver_wait(r, KVX_POLL_WAITING_FOR_INPUT, (int)(20000 * slow));
    kvx_receiver_init(r, dp, NPAGES, dsl);
    kvx_sender_wait(s, KVX_POLL_WAITING_FOR_INPUT, (int)(20000 * slow));
    kvx_sender_init(s, NPAGES, ssl);
    kvx_rdma_stats_get(pf.e, &st0);
    /* chunk 0: every layer */
    kvx_sender_send(s, sp, 4);
    /* chunk 1: one layer at a time; after each (but the last) the layer is
       in place, the next is not, and the room is not complete */
    for (l = 0; l < 4; l++) {
        kvx_rdma_stats_get(pf.e, &st);
        CHECK(kvx_sender_send_layers(s, sp + 4, 4, l, l + 1) == KVX_OK, "chunk 1 layer %u sent", l);
        if (l == 3 || !held) continue;
        if (!landed(pf.e, st.wrs, 20)) { held = 0; continue; }
        bad = layer_bad(&dc, room, dp, 4, 4, l);
        if (bad) part_ok = 0;
        if (!layer_zero(&dc, dp, 4, 4, l + 1)) next_clean = 0;
        if (kvx_receiver_poll(r) != KVX_POLL_TRANSFERRING) early = 1;
    }
    CHECK(held, "chunk 1: each layer's WRITEs completed before the next layer was handed over "
          "(the part's bytes move at once, not with the chunk's last layer)");
    CHECK(part_ok && next_clean, "chunk 1: after layer l landed, its K and V rows are in the decode "
          "pool and layer l + 1's are still zero");
    /* chunk 2: three ranges; held before the last */
    kvx_sender_send_layers(s, sp + 8, 4, 0, 1);
    kvx_rdma_stats_get(pf.e, &st);
    kvx_sender_send_layers(s, sp + 8, 4, 1, 3);
    if (held && !landed(pf.e, st.wrs, 20)) held = 0;
    CHECK(held && !layer_bad(&dc, room, dp, 8, 4, 0) && !layer_bad(&dc, room, dp, 8, 4, 2) &&
              layer_zero(&dc, dp, 8, 4, 3),
          "chunk 2: layers [0, 3) landed, layer 3 not yet");
    if (kvx_receiver_poll(r) != KVX_POLL_TRANSFERRING) early = 1;
    CHECK(!early && !ex_aux_check(&dc.pool, room, dsl),
          "the receiver stays Transferring (no aux row) until the last layer is sent (%s)",
          kvx_poll_str(kvx_receiver_poll(r)));
    kvx_rdma_stats_get(pf.e, &sh);
    kvx_sender_send_layers(s, sp + 8, 4, 3, 4);
    kvx_receiver_wait(r, KVX_POLL_SUCCESS, (int)(60000 * slow));
    kvx_sender_wait(s, KVX_POLL_SUCCESS, (int)(60000 * slow));
    bad = ex_pages_pattern(&dc.pool, room, dp, NPAGES, 0);
    CHECK(kvx_receiver_poll(r) == KVX_POLL_SUCCESS && kvx_sender_poll(s) == KVX_POLL_SUCCESS && !bad &&
              ex_aux_check(&dc.pool, room, dsl),
          "all-layer, layer-by-layer and 3-range chunks: Success, every layer of every page and the "
          "aux row verified (receiver %s: %s; %llu bad rows)",
          kvx_poll_str(kvx_receiver_poll(r)), kvx_receiver_error(r), (unsigned long long)bad);
    kvx_rdma_stats_get(pf.e, &st1);
    CHECK(st1.parts - st0.parts == 8 && st1.chunks - st0.chunks == 3 && sh.imm_wrs == st0.imm_wrs &&
              st1.imm_wrs > sh.imm_wrs && st1.bytes - st0.bytes == NPAGES * kvx_layout_page_bytes(&pf.pool.layout) +
                                           kvx_layout_aux_row_bytes(&pf.pool.layout),
          "stats: 8 parts, 3 chunks, immediates only with the last part, the request's bytes "
          "once (parts %llu, chunks %llu, bytes %llu)",
          (unsigned long long)(st1.parts - st0.parts), (unsigned long long)(st1.chunks - st0.chunks),
          (unsigned long long)(st1.bytes - st0.bytes));
    kvx_sender_destroy(s);
    kvx_receiver_destroy(r);
    side_down(&dc);
    side_down(&pf);
}

/* ---- 2: heterogeneous TP and PP, layer-wise ------------------------------------ */

/* Sends rank k's chunks: chunk 0 all-layer, chunk 1 per layer, chunk 2 in
   up to 3 ranges of this rank's layers; the ranks' calls interleave. */
static void send_schedule(kvx_sender **s, side *pf, int np, int32_t (*sp)[NPAGES]) {
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
    side pf[MAXR], dc[MAXR];
    kvx_sender *s[MAXR];
    kvx_receiver *r[MAXR];
    int32_t sp[MAXR][NPAGES], dp[MAXR][NPAGES], ssl[MAXR], dsl[MAXR];
    int np = ptp * ppp, nd = dtp, k, good = 0;
    char why[KVX_ERROR_MAX] = "", addr[64], err[KVX_ERROR_MAX * 2] = "";
    static uint64_t next_room = 8200;
    uint64_t room = next_room++;
    kvx_room_desc rd;
    memset(pf, 0, sizeof pf);
    memset(dc, 0, sizeof dc);
    for (k = 0; k < np; k++) {
        ex_rank rk;
        int o[7];
        rk.tp = (uint32_t)ptp; rk.tp_rank = (uint32_t)(k % ptp);
        rk.pp = (uint32_t)ppp; rk.pp_rank = (uint32_t)(k / ptp);
        o[0] = ptp; o[1] = k % ptp; o[2] = ppp; o[3] = k / ptp;
        o[4] = k ? kvx_boot_engine_port(pf[0].e) : 0; o[5] = 1; o[6] = 0;
        if (side_up(&pf[k], m, 3 + (uint64_t)k, &rk) ||
            !(pf[k].e = rt_engine_rank(KVX_ROLE_PREFILL, &pf[k].pool.layout, NULL, o, why, sizeof why))) {
            CHECK(0, "%s: prefill rank %d up: %s", name, k, why);
            return;
        }
    }
    snprintf(addr, sizeof addr, "127.0.0.1:%d", kvx_boot_engine_port(pf[0].e));
    for (k = 0; k < nd; k++) {
        ex_rank rk;
        int o[7];
        rk.tp = (uint32_t)dtp; rk.tp_rank = (uint32_t)k; rk.pp = 1; rk.pp_rank = 0;
        o[0] = dtp; o[1] = k; o[2] = 1; o[3] = 0; o[4] = 0; o[5] = 1; o[6] = 0;
        if (side_up(&dc[k], m, 40 + (uint64_t)k, &rk) ||
            !(dc[k].e = rt_engine_rank(KVX_ROLE_DECODE, &dc[k].pool.layout, addr, o, why, sizeof why))) {
            CHECK(0, "%s: decode rank %d up: %s", name, k, why);
            return;
        }
    }
    memset(&rd, 0, sizeof rd);
    rd.room = room;
    for (k = 0; k < nd; k++) {
        ex_alloc_pages(&dc[k].pool, dp[k], NPAGES);
        dsl[k] = ex_alloc_slot(&dc[k].pool);
        pages_zero(&dc[k], dp[k], NPAGES);
        ex_aux_clear(&dc[k].pool, dsl[k]);
        kvx_receiver_create(dc[k].e, &rd, &r[k]);
    }
    for (k = 0; k < np; k++) {
        ex_alloc_pages(&pf[k].pool, sp[k], NPAGES);
        ssl[k] = ex_alloc_slot(&pf[k].pool);
        ex_pages_pattern(&pf[k].pool, room, sp[k], NPAGES, 1);
        ex_aux_write(&pf[k].pool, room, ssl[k]);
        kvx_sender_create(pf[k].e, &rd, &s[k]);
    }
    for (k = 0; k < nd; k++) {
        kvx_receiver_wait(r[k], KVX_POLL_WAITING_FOR_INPUT, (int)(20000 * slow));
        kvx_receiver_init(r[k], dp[k], NPAGES, dsl[k]);
    }
    for (k = 0; k < np; k++) {
        kvx_sender_wait(s[k], KVX_POLL_WAITING_FOR_INPUT, (int)(20000 * slow));
        kvx_sender_init(s[k], NPAGES, ssl[k]);
    }
    send_schedule(s, pf, np, sp);
    for (k = 0; k < nd; k++) kvx_receiver_wait(r[k], KVX_POLL_SUCCESS, (int)(60000 * slow));
    for (k = 0; k < np; k++) kvx_sender_wait(s[k], KVX_POLL_SUCCESS, (int)(60000 * slow));
    for (k = 0; k < nd; k++) {
        uint64_t bad = ex_pages_pattern(&dc[k].pool, room, dp[k], NPAGES, 0);
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

/* ---- 3: refused ranges: both rooms fail ------------------------------------------ */

static void refused(const char *what, uint32_t b0, uint32_t e0, uint32_t b1, uint32_t e1,
                    const char *sentence) {
    side pf, dc;
    kvx_room_desc rd;
    kvx_sender *s = NULL;
    kvx_receiver *r = NULL;
    int32_t sp[8], dp[8], ssl, dsl;
    char why[KVX_ERROR_MAX] = "", addr[64];
    kvx_result res;
    uint64_t room = 8300 + b1;
    if (side_up(&pf, &rt_tiny, 3, &ex_rank_all) || side_up(&dc, &rt_tiny, 4, &ex_rank_all) ||
        !(pf.e = rt_engine(KVX_ROLE_PREFILL, &pf.pool.layout, NULL, why, sizeof why))) {
        CHECK(0, "%s: prefill up: %s", what, why);
        return;
    }
    snprintf(addr, sizeof addr, "127.0.0.1:%d", kvx_boot_engine_port(pf.e));
    if (!(dc.e = rt_engine(KVX_ROLE_DECODE, &dc.pool.layout, addr, why, sizeof why))) {
        CHECK(0, "%s: decode up: %s", what, why);
        return;
    }
    ex_alloc_pages(&pf.pool, sp, 8);
    ex_alloc_pages(&dc.pool, dp, 8);
    ssl = ex_alloc_slot(&pf.pool);
    dsl = ex_alloc_slot(&dc.pool);
    ex_pages_pattern(&pf.pool, room, sp, 8, 1);
    memset(&rd, 0, sizeof rd);
    rd.room = room;
    kvx_receiver_create(dc.e, &rd, &r);
    kvx_sender_create(pf.e, &rd, &s);
    kvx_receiver_wait(r, KVX_POLL_WAITING_FOR_INPUT, (int)(20000 * slow));
    kvx_receiver_init(r, dp, 8, dsl);
    kvx_sender_wait(s, KVX_POLL_WAITING_FOR_INPUT, (int)(20000 * slow));
    kvx_sender_init(s, 8, ssl);
    kvx_sender_send(s, sp, 4); /* an all-layer chunk first */
    kvx_sender_send_layers(s, sp + 4, 4, b0, e0);
    res = kvx_sender_send_layers(s, sp + 4, 4, b1, e1);
    CHECK(res == KVX_ERR_INVALID_ARGUMENT && kvx_sender_poll(s) == KVX_POLL_FAILED &&
              strstr(kvx_sender_error(s), sentence),
          "%s: [%u, %u) after [%u, %u) fails the sender's room (%s): %s", what, b1, e1, b0, e0,
          kvx_result_str(res), kvx_sender_error(s));
    kvx_receiver_wait(r, KVX_POLL_SUCCESS, (int)(60000 * slow));
    CHECK(kvx_receiver_poll(r) == KVX_POLL_FAILED && strstr(kvx_receiver_error(r), sentence),
          "%s: the decode room fails with the sentence, never Success: %s", what,
          kvx_receiver_error(r));
    kvx_sender_destroy(s);
    kvx_receiver_destroy(r);
    side_down(&dc);
    side_down(&pf);
}

/* ---- 4: a prefill process killed between layers ------------------------------------ */

#define KILL_ROOM 8400

/* The child: a prefill engine that sends chunk 0's layer 0 of room
   KILL_ROOM, prints LANDED once its WRITEs completed, and waits to be
   killed. */
static int child_prefill(void) {
    side pf;
    kvx_sender *s = NULL;
    kvx_room_desc rd;
    int32_t sp[8], ssl;
    char why[KVX_ERROR_MAX] = "";
    kvx_rdma_stats st;
    setvbuf(stdout, NULL, _IOLBF, 0);
    setenv("KVX_IB_SIGNAL_EVERY", "1", 1);
    if (side_up(&pf, &rt_tiny, 3, &ex_rank_all) ||
        !(pf.e = rt_engine(KVX_ROLE_PREFILL, &pf.pool.layout, NULL, why, sizeof why))) {
        printf("ERROR %s\n", why);
        return 2;
    }
    printf("PORT %d\n", kvx_boot_engine_port(pf.e));
    ex_alloc_pages(&pf.pool, sp, 8);
    ssl = ex_alloc_slot(&pf.pool);
    ex_pages_pattern(&pf.pool, KILL_ROOM, sp, 8, 1);
    memset(&rd, 0, sizeof rd);
    rd.room = KILL_ROOM;
    kvx_sender_create(pf.e, &rd, &s);
    kvx_sender_wait(s, KVX_POLL_WAITING_FOR_INPUT, 60000);
    kvx_sender_init(s, 8, ssl);
    kvx_rdma_stats_get(pf.e, &st);
    kvx_sender_send_layers(s, sp, 8, 0, 1);
    if (!landed(pf.e, st.wrs, 30)) printf("ERROR layer 0 did not land: %s\n", kvx_sender_error(s));
    else printf("LANDED %s\n", kvx_poll_str(kvx_sender_poll(s)));
    rt_wait_stdin();
    return 0;
}

static void killed(void) {
    char self[4096], libenv[4200], line[4096] = "", addr[64], why[KVX_ERROR_MAX] = "";
    char *argv[3], *env[2];
    rt_proc cp;
    side dc;
    kvx_room_desc rd;
    kvx_receiver *r = NULL;
    int32_t dp[8], dsl, port = 0;
    kvx_poll before;
    rt_self(self, sizeof self);
    snprintf(libenv, sizeof libenv, "KVX_IBVERBS_LIBRARY=%s", lib);
    argv[0] = self; argv[1] = (char *)"child"; argv[2] = NULL;
    env[0] = libenv; env[1] = NULL;
    if (rt_spawn(&cp, argv, env) || !rt_readline(&cp, line, sizeof line, 30 * slow) ||
        sscanf(line, "PORT %d", &port) != 1) {
        CHECK(0, "killed: the prefill child started: %s", line);
        return;
    }
    snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
    if (side_up(&dc, &rt_tiny, 4, &ex_rank_all) ||
        !(dc.e = rt_engine(KVX_ROLE_DECODE, &dc.pool.layout, addr, why, sizeof why))) {
        CHECK(0, "killed: decode up: %s", why);
        rt_reap(&cp, 5);
        return;
    }
    ex_alloc_pages(&dc.pool, dp, 8);
    dsl = ex_alloc_slot(&dc.pool);
    memset(&rd, 0, sizeof rd);
    rd.room = KILL_ROOM;
    kvx_receiver_create(dc.e, &rd, &r);
    kvx_receiver_wait(r, KVX_POLL_WAITING_FOR_INPUT, (int)(20000 * slow));
    kvx_receiver_init(r, dp, 8, dsl);
    line[0] = 0;
    rt_readline(&cp, line, sizeof line, 60 * slow);
    before = kvx_receiver_poll(r);
    CHECK(!strncmp(line, "LANDED", 6) && before == KVX_POLL_TRANSFERRING,
          "killed: the prefill's layer 0 landed (%s) and the decode room is %s", line,
          kvx_poll_str(before));
    kill(cp.pid, SIGKILL);
    kvx_receiver_wait(r, KVX_POLL_SUCCESS, (int)(60000 * slow));
    CHECK(kvx_receiver_poll(r) == KVX_POLL_FAILED,
          "killed between layers: the decode room fails, never Success (%s: %s)",
          kvx_poll_str(kvx_receiver_poll(r)), kvx_receiver_error(r));
    rt_reap(&cp, 10);
    kvx_receiver_destroy(r);
    side_down(&dc);
}

int main(int argc, char **argv) {
    int rc;
    if (argc > 1 && !strcmp(argv[1], "child")) {
        signal(SIGPIPE, SIG_IGN);
        return child_prefill();
    }
    rc = rt_inproc("test_rdma_layers", lib, sizeof lib);
    if (rc) return rc;
    if (rt_quick()) slow = 3;
    setenv("KVX_IB_CONNECT_TIMEOUT", "5", 1);
    mixed();
    topo("prefill TP 2 -> decode TP 1", &rt_gqa8, 2, 1, 1);
    topo("prefill TP 1 -> decode TP 2", &rt_gqa8, 1, 1, 2);
    topo("prefill PP 2 -> decode PP 1", &rt_tiny, 1, 2, 1);
    topo("MLA prefill TP 2 -> decode TP 1", &rt_mla, 2, 1, 1);
    refused("out of order", 0, 1, 2, 3, "were skipped");
    refused("a layer twice", 0, 2, 1, 3, "was already sent");
    killed();
    return rt_finish();
}
