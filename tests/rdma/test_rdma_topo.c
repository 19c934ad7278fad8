/* test_rdma_topo - the rdma transport across parallel layouts (issue 13),
   one process per rank on softverbs: prefill TP 2 -> decode TP 4 and TP 1
   -> TP 8 (each decode rank's head slice out of the prefill's rows:
   multi-SGE WRITEs, chained where the rows exceed max_sge), TP 4 -> 2
   (the decode rank's staging area, scattered there), MLA 4 -> 2 and 2 -> 4
   (dummies move nothing; each decode rank receives each byte once), PP
   2 -> 1, PP 2 -> 2 and TP 4 -> 2 with PP 2 -> 2 (pp rank to pp rank:
   each decode room waits for its own pp rank's contributors only), DP 2
   (two prefill dp ranks, a room on rank room % 2), and one of two contributing prefill ranks killed mid-transfer (the decode
   rooms fail naming it). Every decode rank verifies every head of every
   token it holds (ex_pages_pattern) and its aux rows. */
#define KVX_IMPLEMENTATION
#define KVX_WITH_RDMA
#include "rdma_test.h"

static char lib[4096], svdir[128];

/* Page bytes of one rank's pool for the model (16-token pages). */
static unsigned long long page_bytes(int model, int tp, int pp) {
    const ex_model *m = model == 1 ? &rt_gqa8 : model == 2 ? &rt_mla : &rt_tiny;
    uint32_t heads = m->mla ? m->kv_heads : (uint32_t)(m->kv_heads / (uint32_t)tp);
    uint32_t layers = m->layers / (uint32_t)pp;
    return (unsigned long long)(m->mla ? 1 : 2) * layers * 16u * heads * m->head_dim * m->dtype_size;
}

/* Runs one topology; every room must succeed on every rank. */
static void ok_case_dp(const char *what, int model, int ptp, int ppp, int pdp, int dtp, int dpp,
                       int rooms, const char *sge, unsigned long long *wrs_out) {
    rt_topo t;
    rt_topo_result r;
    char ra[32];
    int np = ptp * ppp * pdp, nd = dtp * dpp, rc;
    unsigned long long want_bytes;
    rt_topo_init(&t, lib, svdir);
    t.model = model;
    t.ptp = ptp; t.ppp = ppp; t.dtp = dtp; t.dpp = dpp; t.pdp = pdp;
    snprintf(ra, sizeof ra, "rooms=%d", rooms);
    t.opts[0] = ra; t.opts[1] = "chunk=7"; t.opts[2] = "max_tok=700"; t.opts[3] = "seed=21";
    t.opts[4] = "timeout=60";
    if (sge) t.prefill_env[0] = sge;
    rc = rt_topo_run(&t, &r);
    CHECK(rc == 0 && r.procs_ok, "%s: %d prefill and %d decode ranks ran (%.1f s)", what, np, nd,
          r.elapsed);
    CHECK(r.dec_rooms == rooms * nd && r.dec_success == rooms * nd,
          "%s: %d of %d decode rooms succeeded %s", what, r.dec_success, rooms * nd, r.first_error);
    CHECK(r.dec_corrupt == 0, "%s: every head of every token and the aux rows verified (%d rooms "
          "corrupt)", what, r.dec_corrupt);
    /* each room on each rank of its dp rank (room % dp_size) */
    CHECK(r.pre_success == rooms * ptp * ppp, "%s: %d of %d prefill rooms succeeded %s", what,
          r.pre_success, rooms * ptp * ppp, r.prefill_error);
    /* each decode rank receives each of its page bytes once: the bytes all
       prefill ranks posted, less aux rows, are the decode pools' share */
    {
        ex_request *req = (ex_request *)calloc((size_t)rooms, sizeof *req);
        unsigned long long pages = 0, aux = 0;
        int i;
        ex_requests(req, (uint32_t)rooms, 21, 16, 700, 16);
        for (i = 0; i < rooms; i++) pages += req[i].pages;
        aux = (unsigned long long)rooms * nd * (64 + 8);
        want_bytes = pages * page_bytes(model, dtp, dpp) * nd + aux;
        free(req);
    }
    CHECK(r.bytes == want_bytes, "%s: %llu bytes posted, %llu = each decode rank's pages once "
          "plus one aux row per decode room", what, r.bytes, want_bytes);
    printf("   %s: %llu work requests, %llu immediates (%llu zero-length)\n", what, r.wrs, r.imm,
           r.zero);
    if (wrs_out) *wrs_out = r.wrs;
}

static void ok_case(const char *what, int model, int ptp, int ppp, int dtp, int dpp, int rooms,
                    const char *sge, unsigned long long *wrs_out) {
    ok_case_dp(what, model, ptp, ppp, 1, dtp, dpp, rooms, sge, wrs_out);
}

/* PP 2 -> 1: prefill pp rank 1 is killed while its rooms are in flight;
   every decode room fails naming it, and pp rank 0 (the other
   contributor) fails and frees its rooms. */
static void kill_case(int rooms) {
    rt_topo t;
    rt_topo_result r;
    char ra[32], want[64];
    rt_topo_init(&t, lib, svdir);
    t.model = 1;
    t.ppp = 2;
    snprintf(ra, sizeof ra, "rooms=%d", rooms);
    t.opts[0] = ra; t.opts[1] = "chunk=1"; t.opts[2] = "pace_ms=100"; t.opts[3] = "min_tok=400";
    t.opts[4] = "max_tok=700"; t.opts[5] = "seed=23"; t.opts[6] = "timeout=30";
    t.kill_prefill = 1;
    t.kill_after = 0.8;
    rt_topo_run(&t, &r);
    CHECK(r.dec_rooms == rooms && r.dec_failed == rooms, "PP 2 -> 1, pp rank 1 killed: %d of %d "
          "decode rooms failed (%d succeeded)", r.dec_failed, rooms, r.dec_success);
    snprintf(want, sizeof want, "pp rank 1 of 2");
    CHECK(strstr(r.first_error, "prefill") && strstr(r.first_error, "127.0.0.1:") &&
          strstr(r.first_error, want), "the decode's sentence names the prefill rank that died "
          "(address, tp and pp rank): %s", r.first_error);
    /* the decode's abort, or kvx_boot closing every control connection
       of that prefill instance, whichever comes first: well before the
       peers' own 30 s deadline */
    CHECK(r.pre_failed == rooms && r.pre_success == 0 && r.elapsed < 20,
          "the other contributor (pp rank 0) failed and freed its %d rooms (%d failed, %d "
          "succeeded, %.1f s): %s", rooms, r.pre_failed, r.pre_success, r.elapsed, r.prefill_error);
}

int main(int argc, char **argv) {
    int handled, rc = rt_peer_main(argc, argv, &handled), quick = rt_quick();
    int rooms = quick ? 3 : 6;
    unsigned long long w_eq = 0, w_24 = 0, w_24s = 0, w_42 = 0;
    if (handled) return rc;
    rt_name = "test_rdma_topo";
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (!rt_find_softverbs(lib, sizeof lib))
        return printf("SKIP: libsoftverbs.so not found (make tests/softverbs/libsoftverbs.so)\n"), 77;
    snprintf(svdir, sizeof svdir, "/tmp/kvx_test_%d_sv", (int)getpid());

    ok_case("MLA TP 4 -> 2", 2, 4, 1, 2, 1, rooms, NULL, NULL);
    ok_case("MLA TP 2 -> 4", 2, 2, 1, 4, 1, rooms, NULL, NULL);
    ok_case("TP 2 -> 2", 1, 2, 1, 2, 1, rooms, NULL, &w_eq);
    ok_case("TP 2 -> 4", 1, 2, 1, 4, 1, rooms, NULL, &w_24);
    ok_case("TP 2 -> 4, max_sge 4", 1, 2, 1, 4, 1, rooms, "SOFTVERBS_MAX_SGE=4", &w_24s);
    CHECK(w_eq && w_24 <= 2 * w_eq, "TP 2 -> 4 posts %llu work requests, %.2fx TP 2 -> 2's %llu "
          "(goal <= 2x)", w_24, w_eq ? (double)w_24 / (double)w_eq : 0.0, w_eq);
    CHECK(w_24s > w_24, "with max_sge 4 the rows of a page take chained WRITEs (%llu > %llu work "
          "requests)", w_24s, w_24);
    ok_case("TP 1 -> 8", 1, 1, 1, 8, 1, rooms, NULL, NULL);
    ok_case("TP 4 -> 2", 1, 4, 1, 2, 1, rooms, NULL, &w_42);
    CHECK(w_eq && w_42 <= 2 * w_eq, "TP 4 -> 2 posts %llu work requests, %.2fx TP 2 -> 2's %llu "
          "(goal <= 2x)", w_42, w_eq ? (double)w_42 / (double)w_eq : 0.0, w_eq);
    ok_case("TP 4 -> 1 (GQA 8 heads)", 1, 4, 1, 1, 1, rooms, NULL, NULL);
    ok_case("PP 2 -> 1", 1, 1, 2, 1, 1, rooms, NULL, NULL);
    /* rank to rank: decode pp rank r waits for prefill pp rank r only */
    ok_case("PP 2 -> 2", 1, 1, 2, 1, 2, rooms, NULL, NULL);
    ok_case("TP 4 -> 2, PP 2 -> 2", 1, 4, 2, 2, 2, rooms, NULL, NULL);
    /* two prefill DP ranks, each with its own pool and registration; a
       room goes to dp rank room % 2 (follow_bootstrap_room) */
    ok_case_dp("DP 2, TP 2 -> 2", 1, 2, 1, 2, 2, 1, rooms, NULL, NULL);
    ok_case_dp("DP 2, TP 2 -> 4", 1, 2, 1, 2, 4, 1, rooms, NULL, NULL);
    kill_case(rooms);
    return rt_finish();
}
