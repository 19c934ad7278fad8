/* test_rdma_e2e - the rdma transport between two processes on softverbs:
   many concurrent rooms of scattered pages sent in chunks, every byte and
   aux row verified by the decode side; several queue pairs over two
   devices with registrations split at a small max_mr_size, a small
   message size and mixed MTUs; consecutive pages coalesced into large
   spans, without aux. Work-request counts are checked against the plan. */
#define KVX_IMPLEMENTATION
#define KVX_WITH_RDMA
#include "rdma_test.h"

static void run_case(const char *what, rt_run *run, int rooms, unsigned qps) {
    rt_result r;
    int rc = rt_two(run, &r);
    unsigned long long wrs = rt_stat(r.prefill_stats, "wrs"), spans = rt_stat(r.prefill_stats, "spans");
    unsigned long long sig = rt_stat(r.prefill_stats, "signaled"), zero = rt_stat(r.prefill_stats, "zero");
    unsigned long long imm = rt_stat(r.prefill_stats, "imm"), imm_rx = rt_stat(r.stats, "imm_rx");
    CHECK(rc == 0, "%s: both peers ran", what);
    CHECK(r.rooms == rooms && r.success == rooms && r.unreported == 0,
          "%s: %d of %d rooms succeeded on decode (%.1f s) %s", what, r.success, rooms, r.elapsed,
          r.first_error);
    CHECK(r.corrupt == 0, "%s: every token and aux row verified (%d rooms corrupt)", what, r.corrupt);
    CHECK(r.prefill_success == rooms, "%s: %d of %d senders succeeded %s", what, r.prefill_success,
          rooms, r.prefill_error);
    CHECK(wrs >= spans && wrs <= spans + zero + (unsigned long long)rooms * qps,
          "%s: work requests %llu for %llu spans (+%llu zero-length)", what, wrs, spans, zero);
    CHECK(imm == (unsigned long long)rooms * qps && imm_rx == imm,
          "%s: one immediate per room per queue pair (%llu sent, %llu received, %d x %u)", what,
          imm, imm_rx, rooms, qps);
    CHECK(sig <= wrs / 16 + (unsigned long long)rooms * qps,
          "%s: %llu signaled of %llu work requests (bound %llu)", what, sig, wrs,
          wrs / 16 + (unsigned long long)rooms * qps);
    printf("   prefill: %s\n   decode:  %s\n", r.prefill_stats, r.stats);
}

int main(int argc, char **argv) {
    char lib[4096], svdir[128];
    int handled, rc = rt_peer_main(argc, argv, &handled), quick = rt_quick();
    rt_run run;
    char rooms_a[32], rooms_b[32], rooms_c[32];
    int na = quick ? 8 : 24, nb = quick ? 6 : 12, nc = quick ? 4 : 8;
    if (handled) return rc;
    rt_name = "test_rdma_e2e";
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (!rt_find_softverbs(lib, sizeof lib))
        return printf("SKIP: libsoftverbs.so not found (make tests/softverbs/libsoftverbs.so)\n"), 77;
    snprintf(svdir, sizeof svdir, "/tmp/kvx_test_%d_sv", (int)getpid());
    printf("softverbs: %s\n", lib);

    /* scattered pages, chunks of 8 pages, every room in flight at once */
    rt_run_init(&run, lib, svdir);
    snprintf(rooms_a, sizeof rooms_a, "rooms=%d", na);
    run.opts[0] = rooms_a; run.opts[1] = "chunk=8"; run.opts[2] = "max_tok=1024"; run.opts[3] = "seed=11";
    run_case("scattered, chunked, 2 QPs", &run, na, 2);

    /* 3 queue pairs over 2 devices, regions split at 256 KiB, 16 KiB
       messages, decode MTU 1024 against prefill 4096 */
    rt_run_init(&run, lib, svdir);
    snprintf(rooms_b, sizeof rooms_b, "rooms=%d", nb);
    run.opts[0] = rooms_b; run.opts[1] = "chunk=5"; run.opts[2] = "max_tok=2048"; run.opts[3] = "seed=12";
    run.prefill_env[0] = "KVX_IB_QPS=3"; run.prefill_env[1] = "SOFTVERBS_DEVICES=2";
    run.prefill_env[2] = "SOFTVERBS_MAX_MR_SIZE=262144"; run.prefill_env[3] = "KVX_IB_MAX_MSG=16384";
    run.decode_env[0] = "SOFTVERBS_DEVICES=2"; run.decode_env[1] = "SOFTVERBS_MTU=1024";
    run.decode_env[2] = "SOFTVERBS_MAX_MR_SIZE=262144";
    run_case("3 QPs, 2 devices, split regions, MTU 1024", &run, nb, 3);

    /* consecutive pages: runs coalesce into spans split at 1 MiB; no aux */
    rt_run_init(&run, lib, svdir);
    snprintf(rooms_c, sizeof rooms_c, "rooms=%d", nc);
    run.opts[0] = rooms_c; run.opts[1] = "chunk=64"; run.opts[2] = "min_tok=2048";
    run.opts[3] = "max_tok=4096"; run.opts[4] = "consecutive=1"; run.opts[5] = "aux=0"; run.opts[6] = "seed=13";
    run_case("consecutive pages, no aux", &run, nc, 2);
    return rt_finish();
}
