/* test_rdma_faults - every fault ends in Failed with a clear reason within
   a bounded time, on both sides, and no room reports Success with a byte
   out of place: the connection cut after N bytes, corrupted rkeys (remote
   access errors), delayed completions (waiting timeout; and mild delays
   that still succeed), the port going down on either side, and either
   peer killed mid-transfer. Two processes on softverbs per case. */
#define KVX_IMPLEMENTATION
#define KVX_WITH_RDMA
#include "rdma_test.h"

static int contains_any(const char *hay, const char *a, const char *b, const char *c) {
    return (a && strstr(hay, a)) || (b && strstr(hay, b)) || (c && strstr(hay, c));
}

/* Common checks of a faulted run: everything terminal in time, nothing
   corrupt reported as Success. */
static void common(const char *what, const rt_result *r, int rooms, double bound) {
    CHECK(r->unreported == 0 && r->rooms == rooms, "%s: all %d decode rooms ended (%d reported, "
          "%d unreported)", what, rooms, r->rooms, r->unreported);
    CHECK(r->elapsed < bound, "%s: everything ended in %.1f s (bound %.0f s)", what, r->elapsed, bound);
    CHECK(r->corrupt == 0, "%s: no room reported Success with wrong bytes (%d did)", what, r->corrupt);
}

int main(int argc, char **argv) {
    char lib[4096], svdir[128];
    int handled, rc = rt_peer_main(argc, argv, &handled), quick = rt_quick();
    rt_run run;
    rt_result r;
    double slow = quick ? 3 : 1; /* sanitizer builds run several times slower */
    if (handled) return rc;
    rt_name = "test_rdma_faults";
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (!rt_find_softverbs(lib, sizeof lib))
        return printf("SKIP: libsoftverbs.so not found (make tests/softverbs/libsoftverbs.so)\n"), 77;
    snprintf(svdir, sizeof svdir, "/tmp/kvx_test_%d_sv", (int)getpid());

    /* the connection is cut after 3 MB of payload */
    rt_run_init(&run, lib, svdir);
    run.opts[0] = "rooms=12"; run.opts[1] = "chunk=4"; run.opts[2] = "seed=21"; run.opts[3] = "timeout=30";
    run.prefill_env[0] = "SOFTVERBS_FAULT_DROP_AFTER_BYTES=3000000";
    rt_two(&run, &r);
    common("drop after 3 MB", &r, 12, 20 * slow);
    CHECK(r.failed > 0 && r.prefill_failed > 0, "drop after 3 MB: rooms failed on both sides "
          "(decode %d, prefill %d; %d succeeded before the cut)", r.failed, r.prefill_failed, r.success);
    CHECK(contains_any(r.errors, "retry", "QP_FATAL", "flush"),
          "drop after 3 MB: the decode side says why: %s", r.first_error);
    CHECK(contains_any(r.prefill_error, "RDMA WRITE", "QP_FATAL", "queue pair"),
          "drop after 3 MB: the prefill side says why: %s", r.prefill_error);

    /* every RDMA WRITE carries a corrupted rkey */
    rt_run_init(&run, lib, svdir);
    run.opts[0] = "rooms=6"; run.opts[1] = "chunk=8"; run.opts[2] = "seed=22"; run.opts[3] = "timeout=30";
    run.prefill_env[0] = "SOFTVERBS_FAULT_CORRUPT_RKEY=1";
    rt_two(&run, &r);
    common("corrupted rkey", &r, 6, 20 * slow);
    CHECK(r.failed == 6 && r.prefill_failed == 6, "corrupted rkey: every room failed (decode %d, "
          "prefill %d)", r.failed, r.prefill_failed);
    CHECK(contains_any(r.errors, "remote access", "ACCESS_ERR", NULL),
          "corrupted rkey: the decode side names the access error: %s", r.first_error);
    CHECK(contains_any(r.prefill_error, "remote access", "ACCESS_ERR", NULL),
          "corrupted rkey: the prefill side names it: %s", r.prefill_error);

    /* completions delayed 20 ms each: the decode side's waiting timeout
       (1 s) fails the rooms and tells the prefill */
    rt_run_init(&run, lib, svdir);
    run.opts[0] = "rooms=4"; run.opts[1] = "chunk=8"; run.opts[2] = "seed=23"; run.opts[3] = "timeout=30";
    run.decode_env[0] = "SOFTVERBS_FAULT_DELAY_US=20000"; run.decode_env[1] = "KVX_WAITING_TIMEOUT=1";
    run.decode_env[2] = "KVX_IB_FENCE_TIMEOUT=1";
    run.prefill_env[0] = "KVX_IB_SEND_DEPTH=32";
    rt_two(&run, &r);
    common("delayed completions", &r, 4, 25 * slow);
    CHECK(r.failed == 4 && strstr(r.errors, "timed out") && strstr(r.errors, "KVX_WAITING_TIMEOUT"),
          "delayed completions: the decode rooms time out with the reason: %s", r.first_error);
    CHECK(r.prefill_failed == 4 && contains_any(r.prefill_error, "abort", "timed out", NULL),
          "delayed completions: the prefill rooms fail with the decode side's reason: %s",
          r.prefill_error);

    /* mild delays (1 ms per completion) only slow things down */
    rt_run_init(&run, lib, svdir);
    run.opts[0] = "rooms=4"; run.opts[1] = "chunk=16"; run.opts[2] = "seed=24";
    run.opts[3] = "max_tok=256"; run.opts[4] = "timeout=40";
    run.decode_env[0] = "SOFTVERBS_FAULT_DELAY_US=1000";
    rt_two(&run, &r);
    CHECK(r.success == 4 && r.corrupt == 0 && r.prefill_success == 4,
          "mild delays: every room succeeded and verified (%d, corrupt %d) %s", r.success, r.corrupt,
          r.first_error);

    /* the prefill's port goes down 1.2 s after it opened the device, while
       rooms trickle out (a chunk of 2 pages every 150 ms) */
    rt_run_init(&run, lib, svdir);
    run.opts[0] = "rooms=4"; run.opts[1] = "chunk=2"; run.opts[2] = "pace_ms=150";
    run.opts[3] = "min_tok=512"; run.opts[4] = "max_tok=1024"; run.opts[5] = "seed=25";
    run.opts[6] = "timeout=30";
    run.prefill_env[0] = "SOFTVERBS_FAULT_PORT_DOWN_AFTER_MS=1200";
    rt_two(&run, &r);
    common("prefill port down", &r, 4, 20 * slow);
    CHECK(r.failed == 4 && r.prefill_failed == 4, "prefill port down: every room failed "
          "(decode %d, prefill %d)", r.failed, r.prefill_failed);
    CHECK(contains_any(r.prefill_error, "DOWN", "PORT_ERR", "went down"),
          "prefill port down: the prefill side says the port went down: %s", r.prefill_error);
    CHECK(contains_any(r.errors, "DOWN", "PORT_ERR", "went down") || strstr(r.errors, "prefill"),
          "prefill port down: the decode side passes the reason on: %s", r.first_error);

    /* the decode side's port goes down */
    rt_run_init(&run, lib, svdir);
    run.opts[0] = "rooms=4"; run.opts[1] = "chunk=2"; run.opts[2] = "pace_ms=150";
    run.opts[3] = "min_tok=512"; run.opts[4] = "max_tok=1024"; run.opts[5] = "seed=26";
    run.opts[6] = "timeout=30";
    run.decode_env[0] = "SOFTVERBS_FAULT_PORT_DOWN_AFTER_MS=1200";
    rt_two(&run, &r);
    common("decode port down", &r, 4, 20 * slow);
    CHECK(r.failed == 4 && contains_any(r.errors, "DOWN", "PORT_ERR", "went down"),
          "decode port down: every decode room failed naming the port: %s", r.first_error);
    CHECK(r.prefill_failed == 4, "decode port down: every prefill room failed: %s", r.prefill_error);

    /* the prefill process is killed mid-transfer */
    rt_run_init(&run, lib, svdir);
    run.opts[0] = "rooms=4"; run.opts[1] = "chunk=2"; run.opts[2] = "pace_ms=150";
    run.opts[3] = "min_tok=1024"; run.opts[4] = "max_tok=1024"; run.opts[5] = "seed=27";
    run.opts[6] = "timeout=30";
    run.kill_prefill_after = 1.5; /* rooms take 4.8 s */
    rt_two(&run, &r);
    common("prefill killed", &r, 4, 1.5 + 10 * slow);
    CHECK(r.failed == 4 && contains_any(r.errors, "lost connection", "QP_FATAL", "prefill"),
          "prefill killed: every decode room failed with a reason naming the peer: %s", r.first_error);

    /* the decode process is killed mid-transfer */
    rt_run_init(&run, lib, svdir);
    run.opts[0] = "rooms=4"; run.opts[1] = "chunk=2"; run.opts[2] = "pace_ms=150";
    run.opts[3] = "min_tok=1024"; run.opts[4] = "max_tok=1024"; run.opts[5] = "seed=28";
    run.opts[6] = "timeout=30";
    run.kill_decode_after = 1.5;
    rt_two(&run, &r);
    CHECK(r.prefill_failed == 4, "decode killed: every prefill room failed (%d) in %.1f s: %s",
          r.prefill_failed, r.elapsed, r.prefill_error);
    CHECK(r.elapsed < 1.5 + 10 * slow, "decode killed: the prefill side finished in %.1f s",
          r.elapsed);
    CHECK(contains_any(r.prefill_error, "lost connection", "decode", "QP_FATAL"),
          "decode killed: the reason names the decode peer: %s", r.prefill_error);
    return rt_finish();
}
