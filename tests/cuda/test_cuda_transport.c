/* The `cuda` transport (kvx_cuda.h) against the fake driver: prefill and
   decode engines in two processes of one "node", pools in (fake) GPU
   memory, every byte moved GPU to GPU through CUDA IPC.
   - transfer: scattered pages, chunked sends, aux rows through the shared
     aux segment; every byte and aux row checked through staging copies, and
     pool pages no room used checked untouched through the fake's host view;
     the decode pool in one allocation (one import) and in one allocation
     per buffer (64 imports, Llama-3.1-8B);
   - many rooms at once;
   - a decode killed mid-transfer: its rooms fail on the prefill with the
     reason, its mapping is released; a prefill killed mid-transfer: the
     receivers fail with the reason and are destroyed at once;
   - a decode on another node (KVX_CUDA_NODE_ID) refused with a sentence
     that says so, on both sides;
   - receivers destroyed while the prefill's copies are in flight: destroy
     returns only after the prefill confirmed, and no byte lands after;
   - an import failure and a copy failure on the device: the rooms concerned
     fail with the driver's error name on both sides, later rooms succeed;
   - both engines in one process (no import: the same address space);
   - engine creation refused with a sentence: host pool, no kvx_cuda mem
     ops, an endpoint larger than a hello carries;
   - nothing left behind: imports, streams, contexts. */
#define KVX_IMPLEMENTATION
#include "../../kvx_cuda.h"
#include "cuda_test.h"
#include "cuda_xport.h"

#if !defined(KVX_WITH_CUDA)
int main(void) {
    kt_name = "test_cuda_transport";
    return kt_skip("built without KVX_WITH_CUDA (no CUDA toolkit headers at build time)");
}
#else

static ct_fake F;
static int quick;

/* Reads "RESULT ..." and the ERR lines after it (the first kept in
   first_err); the line after them is given back. 1 when RESULT came. */
static int read_result(cx_proc *p, char *result, size_t rl, char *first_err, size_t el,
                       double timeout) {
    char line[2048];
    if (first_err) first_err[0] = 0;
    if (!cx_expect(p, "RESULT", result, rl, timeout)) return 0;
    while (cx_readline(p, line, sizeof line, 2)) {
        if (strncmp(line, "ERR ", 4)) {
            cx_unread(p, line);
            break;
        }
        if (first_err && !first_err[0]) ct_fmt(first_err, el, "%s", line);
    }
    return 1;
}

/* A decode helper for the prefill engine at port. */
static int spawn_decode(cx_proc *p, int port, uint64_t seed, uint32_t nreq, uint32_t mn,
                        uint32_t mx, const char *model, int each, int batches,
                        const char *const *env) {
    char addr[64], s[32], n[16], a[16], b[16], e[8], k[8];
    const char *args[12];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
    snprintf(s, sizeof s, "%llu", (unsigned long long)seed);
    snprintf(n, sizeof n, "%u", nreq);
    snprintf(a, sizeof a, "%u", mn);
    snprintf(b, sizeof b, "%u", mx);
    snprintf(e, sizeof e, "%d", each);
    snprintf(k, sizeof k, "%d", batches);
    args[0] = "--decode"; args[1] = addr; args[2] = s; args[3] = n; args[4] = a; args[5] = b;
    args[6] = model; args[7] = e; args[8] = k; args[9] = NULL;
    return cx_spawn(p, args, env);
}

/* One transfer between this process (prefill) and a decode helper. */
static void check_transfer(const char *what, const char *model, uint32_t nreq, uint32_t mn,
                           uint32_t mx, uint32_t chunk, int each, uint64_t want_imports) {
    cx_side pre;
    cx_batch b;
    cx_proc dec;
    kvx_cuda_transport_stats st;
    char why[512], line[256], err[1024];
    unsigned ok = 0, ver = 0, failed = 0, untouched = 1;
    unsigned long long exported = 0, aux_rows = 0, fw = 0, ft = 0;
    uint64_t seed = 1000 + nreq;
    double t0 = cx_now();
    printf("-- %s: %u rooms of %u..%u tokens (%s), chunks of %u pages\n", what, nreq, mn, mx,
           model, chunk);
    if (cx_side_init(&pre, KVX_ROLE_PREFILL, model, seed, nreq, mn, mx, 0, NULL, why, sizeof why)) {
        CHECK(0, "%s: prefill side: %s", what, why);
        return;
    }
    CHECK(spawn_decode(&dec, kvx_boot_engine_port(pre.e), seed, nreq, mn, mx, model, each, 1, NULL) ==
              0, "%s: decode helper started", what);
    cx_prefill_batch(&pre, &b, chunk, 120, 0);
    CHECK(b.ok == nreq, "%s: %u of %u senders reached Success%s%s", what, b.ok, nreq,
          b.first_err[0] ? ": " : "", b.first_err);
    CHECK(read_result(&dec, line, sizeof line, err, sizeof err, 60) &&
              sscanf(line, "RESULT %u %u %u", &ok, &ver, &failed) == 3,
          "%s: decode result: %s", what, line);
    CHECK(ver == nreq && failed == 0, "%s: %u of %u rooms verified byte for byte, aux rows included "
          "(%u failed) %s", what, ver, nreq, failed, err);
    CHECK(cx_expect(&dec, "UNTOUCHED", line, sizeof line, 10) &&
              sscanf(line, "UNTOUCHED %u", &untouched) == 1 && untouched == 0,
          "%s: decode pool pages no room used are untouched (%s)", what, line);
    CHECK(cx_expect(&dec, "STATS", line, sizeof line, 10) &&
              sscanf(line, "STATS %llu %llu %llu %llu", &exported, &aux_rows, &fw, &ft) == 4 &&
              exported == want_imports && aux_rows == 2ull * nreq,
          "%s: decode exported %llu allocations, placed %llu aux rows", what, exported, aux_rows);
    kvx_cuda_transport_stats_get(pre.e, &st);
    CHECK(st.imports == want_imports && st.imports_live == want_imports && st.peers == 1,
          "%s: prefill imported %llu allocations (%llu live) from %llu peer", what,
          (unsigned long long)st.imports, (unsigned long long)st.imports_live,
          (unsigned long long)st.peers);
    CHECK(st.rooms_done == nreq && st.aux_rows == 2ull * nreq && st.chunks >= nreq,
          "%s: prefill: %llu rooms done, %llu chunks, %llu spans, %.1f MiB", what,
          (unsigned long long)st.rooms_done, (unsigned long long)st.chunks,
          (unsigned long long)st.spans, (double)st.bytes / (1 << 20));
    cx_batch_free(&pre, &b);
    cx_side_free(&pre); /* imports closed before the exporter frees its pool */
    CHECK(ct_stats(&F).live_ipc_maps == 0, "%s: engine destroy closed every import", what);
    CHECK(cx_reap(&dec, 30) == 0, "%s: decode helper exits 0", what);
    printf("   (%.2f s)\n", cx_now() - t0);
}

/* The decode helper is killed while its rooms are in flight. */
static void check_decode_killed(void) {
    cx_side pre;
    cx_batch b;
    cx_proc dec;
    kvx_cuda_transport_stats st;
    char why[512], line[256];
    uint32_t nreq = 6, i, lost = 0;
    uint64_t seed = 77;
    double end;
    printf("-- decode killed mid-transfer\n");
    if (cx_side_init(&pre, KVX_ROLE_PREFILL, "tiny", seed, nreq, 64, 256, 0, NULL, why, sizeof why)) {
        CHECK(0, "prefill side: %s", why);
        return;
    }
    spawn_decode(&dec, kvx_boot_engine_port(pre.e), seed, nreq, 64, 256, "tiny", 0, 1, NULL);
    cx_prefill_batch(&pre, &b, 2, 60, CX_PARTIAL);
    CHECK(cx_expect(&dec, "INITED", line, sizeof line, 30), "every receiver initialised");
    kvx_cuda_transport_stats_get(pre.e, &st);
    CHECK(st.peers == 1 && st.imports_live == 1, "the decode pool is mapped (%llu imports)",
          (unsigned long long)st.imports_live);
    kill(dec.pid, SIGKILL);
    cx_prefill_wait(&pre, &b, 30);
    for (i = 0; i < nreq; i++)
        if (strstr(kvx_sender_error(b.s[i]), "lost connection with decode instance")) lost++;
    CHECK(b.failed == nreq && lost == nreq, "all %u senders failed, %u saying so: %s", nreq, lost,
          b.first_err);
    CHECK(kvx_sender_send(b.s[0], b.pages[0], 1) == KVX_ERR_STATE, "a send on such a room is refused");
    end = cx_now() + 10;
    do {
        kvx_cuda_transport_stats_get(pre.e, &st);
        if (!st.peers && !st.imports_live) break;
        cx_sleep(0.01);
    } while (cx_now() < end);
    CHECK(st.peers == 0 && st.imports_live == 0 && ct_stats(&F).live_ipc_maps == 0,
          "the dead decode's mapping is closed (peers %llu, imports %llu)",
          (unsigned long long)st.peers, (unsigned long long)st.imports_live);
    cx_batch_free(&pre, &b);
    cx_reap(&dec, 5);
    cx_side_free(&pre);
}

/* A prefill helper, for the decode engine in this process. */
static int spawn_prefill(cx_proc *p, uint64_t seed, uint32_t nreq, uint32_t mn, uint32_t mx,
                         uint32_t chunk, int partial, const char *const *env, int *port) {
    char s[32], n[16], a[16], b[16], c[16], pa[8], line[256];
    const char *args[12];
    snprintf(s, sizeof s, "%llu", (unsigned long long)seed);
    snprintf(n, sizeof n, "%u", nreq);
    snprintf(a, sizeof a, "%u", mn);
    snprintf(b, sizeof b, "%u", mx);
    snprintf(c, sizeof c, "%u", chunk);
    snprintf(pa, sizeof pa, "%d", partial);
    args[0] = "--prefill"; args[1] = s; args[2] = n; args[3] = a; args[4] = b; args[5] = "tiny";
    args[6] = c; args[7] = pa; args[8] = NULL;
    if (cx_spawn(p, args, env)) return -1;
    if (!cx_expect(p, "READY", line, sizeof line, 30) || sscanf(line, "READY %d", port) != 1)
        return -1;
    return 0;
}

/* The prefill helper is killed while its rooms are in flight. */
static void check_prefill_killed(void) {
    cx_side dec;
    cx_batch b;
    cx_proc pre;
    kvx_cuda_transport_stats st;
    char why[512], addr[64], line[256];
    uint32_t nreq = 5, i, lost = 0;
    uint64_t seed = 78;
    int port = 0;
    double t0;
    printf("-- prefill killed mid-transfer\n");
    if (spawn_prefill(&pre, seed, nreq, 64, 256, 2, 1, NULL, &port)) {
        CHECK(0, "prefill helper did not start");
        return;
    }
    snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
    if (cx_side_init(&dec, KVX_ROLE_DECODE, "tiny", seed, nreq, 64, 256, 0, addr, why, sizeof why)) {
        CHECK(0, "decode side: %s", why);
        return;
    }
    cx_decode_batch(&dec, &b, 30, 0, 0);
    CHECK(cx_expect(&pre, "PARTIAL", line, sizeof line, 30), "the prefill sent all but the last chunks");
    kill(pre.pid, SIGKILL);
    cx_reap(&pre, 5);
    for (i = 0; i < nreq; i++) {
        double end = cx_now() + 30;
        while (!cx_terminal(kvx_receiver_poll(b.r[i])) && cx_now() < end) cx_sleep(0.002);
        if (strstr(kvx_receiver_error(b.r[i]), "lost connection with prefill instance")) lost++;
    }
    CHECK(lost == nreq, "all %u receivers failed saying the prefill is lost: %s", nreq,
          kvx_receiver_error(b.r[0]));
    t0 = cx_now();
    for (i = 0; i < nreq; i++) {
        kvx_receiver_destroy(b.r[i]);
        b.r[i] = NULL;
    }
    CHECK(cx_now() - t0 < 1.0, "destroying them does not wait: the prefill process is gone "
          "(%.3f s)", cx_now() - t0);
    kvx_cuda_transport_stats_get(dec.e, &st);
    CHECK(st.fence_timeouts == 0, "no fence timed out");
    cx_batch_free(&dec, &b);
    cx_side_free(&dec);
}

/* A decode engine on another "node". */
static void check_other_node(void) {
    static const char *env[] = {"KVX_CUDA_NODE_ID=node-b-not-this-one", NULL};
    cx_side pre;
    cx_batch b;
    cx_proc dec;
    char why[512], line[256], err[1024];
    unsigned ok = 9, ver = 9, failed = 0;
    uint32_t nreq = 2;
    uint64_t seed = 79;
    printf("-- decode on another node\n");
    if (cx_side_init(&pre, KVX_ROLE_PREFILL, "tiny", seed, nreq, 16, 64, 0, NULL, why, sizeof why)) {
        CHECK(0, "prefill side: %s", why);
        return;
    }
    spawn_decode(&dec, kvx_boot_engine_port(pre.e), seed, nreq, 16, 64, "tiny", 0, 1, env);
    cx_prefill_batch(&pre, &b, 4, 60, 0);
    CHECK(b.failed == nreq, "every sender failed");
    CHECK_STR(b.first_err, "is on another node (CUDA IPC works within one node)");
    CHECK_STR(b.first_err, "its node id 'node-b-not-this-one', here '");
    CHECK_STR(b.first_err, "use tcp or rdma between nodes");
    printf("   prefill: %s\n", b.first_err);
    CHECK(read_result(&dec, line, sizeof line, err, sizeof err, 60) &&
              sscanf(line, "RESULT %u %u %u", &ok, &ver, &failed) == 3 && ok == 0 && failed == nreq,
          "every receiver failed: %s", line);
    CHECK_STR(err, "is on another node");
    CHECK_STR(err, "use tcp or rdma between nodes");
    printf("   decode: %s\n", err);
    CHECK(ct_stats(&F).live_ipc_maps == 0, "nothing was imported");
    cx_batch_free(&pre, &b);
    cx_side_free(&pre);
    cx_reap(&dec, 10);
}

/* Receivers destroyed while the prefill's copies run (slow copies). */
static void check_fence(void) {
    static const char *env[] = {"FAKECUDA_DELAY_US=1500", NULL};
    cx_side dec;
    cx_batch b;
    cx_proc pre;
    kvx_cuda_transport_stats st;
    char why[512], addr[64], line[1024], result[256];
    uint32_t nreq = 2, i, changed = 0, aborted = 0;
    uint64_t seed = 80;
    uint8_t **snap;
    unsigned ok = 9, failed = 0;
    int port = 0;
    double t0, took;
    printf("-- receivers destroyed while copies are in flight\n");
    setenv("KVX_CUDA_FENCE_TIMEOUT", "30", 1);
    if (spawn_prefill(&pre, seed, nreq, 512, 512, 32, 0, env, &port)) {
        CHECK(0, "prefill helper did not start");
        return;
    }
    snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
    if (cx_side_init(&dec, KVX_ROLE_DECODE, "tiny", seed, nreq, 512, 512, 0, addr, why, sizeof why)) {
        CHECK(0, "decode side: %s", why);
        return;
    }
    unsetenv("KVX_CUDA_FENCE_TIMEOUT");
    cx_decode_batch(&dec, &b, 30, 0, 0);
    CHECK(cx_expect(&pre, "SENT", line, sizeof line, 30), "the prefill queued every chunk");
    cx_sleep(0.05);
    t0 = cx_now();
    for (i = 0; i < nreq; i++) {
        CHECK(!cx_terminal(kvx_receiver_poll(b.r[i])), "room %u is still in flight", i);
        kvx_receiver_destroy(b.r[i]);
        b.r[i] = NULL;
    }
    took = cx_now() - t0;
    /* the destination pages of those rooms, now: nothing may change them */
    snap = (uint8_t **)calloc(dec.pool.layout.num_buffers, sizeof *snap);
    for (i = 0; i < dec.pool.layout.num_buffers; i++) {
        const kvx_buffer *kb = &dec.pool.bufs[i];
        snap[i] = (uint8_t *)malloc((size_t)kb->length);
        memcpy(snap[i], F.view(kb->base, (size_t)kb->length), (size_t)kb->length);
    }
    cx_sleep(0.4);
    for (i = 0; i < dec.pool.layout.num_buffers; i++) {
        const kvx_buffer *kb = &dec.pool.bufs[i];
        if (memcmp(snap[i], F.view(kb->base, (size_t)kb->length), (size_t)kb->length)) changed++;
        free(snap[i]);
    }
    free(snap);
    kvx_cuda_transport_stats_get(dec.e, &st);
    CHECK(st.fence_waits == nreq && st.fence_timeouts == 0,
          "destroy waited for the prefill's word on %llu rooms (%.3f s), none timed out",
          (unsigned long long)st.fence_waits, took);
    CHECK(changed == 0, "no byte landed in the pool after the receivers were destroyed (%u buffers "
          "changed)", changed);
    CHECK(read_result(&pre, result, sizeof result, line, sizeof line, 60) &&
              sscanf(result, "RESULT %u %u", &ok, &failed) == 2 && failed == nreq,
          "the prefill's senders failed: %s", result);
    if (strstr(line, "aborted by the decode engine")) aborted = 1;
    CHECK(aborted, "with the decode side's reason: %s", line);
    cx_batch_free(&dec, &b);
    cx_reap(&pre, 10);
    cx_side_free(&dec);
}

/* The 4th copy queued from now on fails on the device (sticky, as
   CUDA_ERROR_ILLEGAL_ADDRESS is on a real GPU). */
static void poison_copies(void) { F.inject("async", CUDA_ERROR_ILLEGAL_ADDRESS, 3); }

/* An import failure, then a copy failure on the device, then a clean batch,
   with one decode helper (one control connection, one peer). */
static void check_driver_faults(void) {
    cx_side pre;
    cx_batch b;
    cx_proc dec;
    kvx_cuda_transport_stats st;
    char why[512], line[256], err[1024];
    unsigned ok, ver, failed;
    uint32_t nreq = 4, k;
    uint64_t seed = 81;
    printf("-- driver failures: an import, a copy on the device\n");
    if (cx_side_init(&pre, KVX_ROLE_PREFILL, "tiny", seed, nreq, 16, 128, 0, NULL, why, sizeof why)) {
        CHECK(0, "prefill side: %s", why);
        return;
    }
    spawn_decode(&dec, kvx_boot_engine_port(pre.e), seed, nreq, 16, 128, "tiny", 0, 3, NULL);
    for (k = 0; k < 3; k++) {
        free(pre.reqs);
        pre.reqs = (ex_request *)calloc(nreq, sizeof *pre.reqs);
        ex_requests(pre.reqs, nreq, seed + k, 16, 128, 16);
        if (k) cx_tell(&dec, "GO\n");
        if (k == 0) F.inject("cuIpcOpenMemHandle_v2", CUDA_ERROR_INVALID_HANDLE, 0);
        cx_after_fill = k == 1 ? poison_copies : NULL;
        cx_prefill_batch(&pre, &b, 2, 60, 0);
        cx_after_fill = NULL;
        F.inject("async", 0, 0);
        ok = ver = failed = 0;
        CHECK(read_result(&dec, line, sizeof line, err, sizeof err, 60) &&
                  sscanf(line, "RESULT %u %u %u", &ok, &ver, &failed) == 3,
              "batch %u: decode %s", k, line);
        if (k == 0) {
            CHECK(b.failed == 1 && b.ok == nreq - 1 && failed == 1 && ver == nreq - 1,
                  "import failure: the room that needed the import failed, the next rooms "
                  "imported again and succeeded (%u ok)", b.ok);
            CHECK_STR(b.first_err, "cannot be mapped: cuIpcOpenMemHandle_v2 failed");
            CHECK_STR(b.first_err, "CUDA_ERROR_INVALID_HANDLE");
            CHECK_STR(err, "CUDA_ERROR_INVALID_HANDLE");
            printf("   prefill: %s\n   decode: %s\n", b.first_err, err);
        } else if (k == 1) {
            CHECK(b.failed >= 1 && failed == b.failed && ver == b.ok,
                  "copy failure: %u rooms failed on both sides, %u verified", b.failed, ver);
            CHECK_STR(b.first_err, "CUDA_ERROR_ILLEGAL_ADDRESS");
            CHECK_STR(err, "CUDA_ERROR_ILLEGAL_ADDRESS");
            printf("   prefill: %s\n   decode: %s\n", b.first_err, err);
        } else {
            CHECK(b.ok == nreq && ver == nreq, "after both: all %u rooms verified (the stream was "
                  "replaced)", ver);
        }
        cx_expect(&dec, "UNTOUCHED", line, sizeof line, 10);
        cx_batch_free(&pre, &b);
    }
    kvx_cuda_transport_stats_get(pre.e, &st);
    CHECK(st.driver_errors >= 1 && st.imports == 1 && st.peers == 1,
          "prefill counted %llu driver errors, %llu imports", (unsigned long long)st.driver_errors,
          (unsigned long long)st.imports);
    cx_side_free(&pre);
    cx_reap(&dec, 30);
}

/* Both engines in this process: the decode pool is this process's memory,
   used without an import (a process cannot import its own handle). */
static void check_in_process(void) {
    cx_side pre, dec;
    cx_batch bp, bd;
    kvx_cuda_transport_stats st;
    char why[512], addr[64];
    uint32_t nreq = quick ? 4 : 10, i, done;
    uint64_t seed = 82;
    double end;
    printf("-- both engines in one process\n");
    if (cx_side_init(&pre, KVX_ROLE_PREFILL, "tiny", seed, nreq, 16, 300, 0, NULL, why, sizeof why)) {
        CHECK(0, "prefill side: %s", why);
        return;
    }
    snprintf(addr, sizeof addr, "127.0.0.1:%d", kvx_boot_engine_port(pre.e));
    if (cx_side_init(&dec, KVX_ROLE_DECODE, "tiny", seed, nreq, 16, 300, 1, addr, why, sizeof why)) {
        CHECK(0, "decode side: %s", why);
        return;
    }
    cx_decode_batch(&dec, &bd, 30, 0, 0); /* every destination sent */
    cx_prefill_batch(&pre, &bp, 3, 60, 0);
    end = cx_now() + 30;
    do {
        for (done = 0, i = 0; i < nreq; i++) done += cx_terminal(kvx_receiver_poll(bd.r[i]));
        if (done < nreq) cx_sleep(0.002);
    } while (done < nreq && cx_now() < end);
    for (done = 0, i = 0; i < nreq; i++)
        if (kvx_receiver_poll(bd.r[i]) == KVX_POLL_SUCCESS &&
            !ex_request_pages(&dec.gpu, &dec.pool, dec.reqs[i].room, bd.pages[i], dec.reqs[i].pages, 0) &&
            ex_aux_check(&dec.pool, dec.reqs[i].room, bd.slot[i]))
            done++;
    CHECK(bp.ok == nreq && done == nreq, "%u senders succeeded, %u rooms verified", bp.ok, done);
    kvx_cuda_transport_stats_get(pre.e, &st);
    CHECK(st.imports == 0 && st.peers == 1, "no import (%llu)", (unsigned long long)st.imports);
    cx_batch_free(&pre, &bp);
    cx_batch_free(&dec, &bd);
    cx_side_free(&pre);
    cx_side_free(&dec);
}

/* In one process: a receiver destroyed after the prefill acknowledged its
   destination but before any copy; then the prefill engine destroyed with
   its senders open. Neither leaves the decode side waiting for a fence. */
static void check_edges(void) {
    cx_side pre, dec;
    cx_batch bp, bd;
    kvx_cuda_transport_stats st;
    char why[512], addr[64];
    uint32_t nreq = 3, i;
    uint64_t seed = 83;
    double t0, end;
    printf("-- a destroy before any copy; the prefill engine destroyed with rooms open\n");
    if (cx_side_init(&pre, KVX_ROLE_PREFILL, "tiny", seed, nreq, 16, 64, 0, NULL, why, sizeof why)) {
        CHECK(0, "prefill side: %s", why);
        return;
    }
    snprintf(addr, sizeof addr, "127.0.0.1:%d", kvx_boot_engine_port(pre.e));
    if (cx_side_init(&dec, KVX_ROLE_DECODE, "tiny", seed, nreq, 16, 64, 0, addr, why, sizeof why)) {
        CHECK(0, "decode side: %s", why);
        return;
    }
    cx_decode_batch(&dec, &bd, 30, 0, 0);
    cx_batch_alloc(&bp, nreq);
    for (i = 0; i < nreq; i++) {
        kvx_room_desc rd;
        memset(&rd, 0, sizeof rd);
        rd.room = pre.reqs[i].room;
        kvx_sender_create(pre.e, &rd, &bp.s[i]);
        end = cx_now() + 30;
        while (kvx_sender_poll(bp.s[i]) == KVX_POLL_BOOTSTRAPPING && cx_now() < end) cx_sleep(0.001);
    }
    cx_sleep(0.05); /* the acknowledgements are at the decode side */
    t0 = cx_now();
    kvx_receiver_destroy(bd.r[0]);
    bd.r[0] = NULL;
    CHECK(cx_now() - t0 < 0.5, "a receiver whose prefill has not copied anything yet is destroyed "
          "at once (%.3f s): the prefill confirms the abort", cx_now() - t0);
    end = cx_now() + 10;
    while (kvx_sender_poll(bp.s[0]) != KVX_POLL_FAILED && cx_now() < end) cx_sleep(0.001);
    CHECK_STR(kvx_sender_error(bp.s[0]), "aborted by the decode engine");
    kvx_sender_destroy(bp.s[0]);
    bp.s[0] = NULL;
    kvx_engine_destroy(pre.e); /* senders 1 and 2 still open */
    pre.e = NULL;
    for (i = 1; i < nreq; i++) {
        bp.s[i] = NULL;
        end = cx_now() + 10;
        while (!cx_terminal(kvx_receiver_poll(bd.r[i])) && cx_now() < end) cx_sleep(0.001);
        CHECK(kvx_receiver_poll(bd.r[i]) == KVX_POLL_FAILED, "receiver %u failed: %s", i,
              kvx_receiver_error(bd.r[i]));
        CHECK_STR(kvx_receiver_error(bd.r[i]), "the engine was destroyed");
    }
    t0 = cx_now();
    for (i = 1; i < nreq; i++) {
        kvx_receiver_destroy(bd.r[i]);
        bd.r[i] = NULL;
    }
    CHECK(cx_now() - t0 < 0.5, "their receivers are destroyed at once (%.3f s)", cx_now() - t0);
    kvx_cuda_transport_stats_get(dec.e, &st);
    CHECK(st.fence_timeouts == 0, "no fence timed out (%llu waits)",
          (unsigned long long)st.fence_waits);
    cx_batch_free(&pre, &bp);
    cx_batch_free(&dec, &bd);
    cx_side_free(&dec);
    cx_side_free(&pre);
}

/* Engines the transport refuses to create, with the reason. */

/* KVX_CUDA_FENCE_TIMEOUT is also kvx_cuda_desc.fence_timeout_s: range-checked
   at engine creation, the environment overriding it; and kvx_cuda_create
   reads KVX_LOG_LEVEL as kvx_engine_create does (a bad value is refused). */
static void fence_desc(ex_pool *host) {
    kvx_cuda_desc cd;
    kvx_mem_ops ops;
    kvx_engine *e;
    char why[512];
    double bad[2] = {5000, -1};
    int i;
    memset(&cd, 0, sizeof cd);
    for (i = 0; i < 2; i++) {
        cd.fence_timeout_s = bad[i];
        if (kvx_cuda_mem_ops(&ops, &cd, why, sizeof why) != KVX_OK) {
            CHECK(0, "mem ops: %s", why);
            return;
        }
        e = cx_engine(KVX_ROLE_DECODE, &host->layout, &ops, "127.0.0.1:1", why, sizeof why);
        CHECK(!e && strstr(why, "KVX_CUDA_FENCE_TIMEOUT") && strstr(why, i ? "-1" : "5000"),
              "fence_timeout_s = %g refused: %s", bad[i], why);
        kvx_engine_destroy(e);
        if (!i) {
            setenv("KVX_CUDA_FENCE_TIMEOUT", "1.5", 1); /* the environment overrides the desc */
            e = cx_engine(KVX_ROLE_DECODE, &host->layout, &ops, "127.0.0.1:1", why, sizeof why);
            unsetenv("KVX_CUDA_FENCE_TIMEOUT");
            CHECK(e != NULL, "KVX_CUDA_FENCE_TIMEOUT=1.5 overrides the desc's 5000: %s", why);
            kvx_engine_destroy(e);
        }
        kvx_cuda_mem_ops_release(&ops);
    }
    setenv("KVX_LOG_LEVEL", "Loud", 1);
    CHECK(kvx_cuda_mem_ops(&ops, NULL, why, sizeof why) == KVX_ERR_BAD_CONFIG &&
              strstr(why, "KVX_LOG_LEVEL='Loud'"),
          "kvx_cuda_create refuses KVX_LOG_LEVEL=Loud as engines do: %s", why);
    unsetenv("KVX_LOG_LEVEL");
    kvx_cuda_mem_ops_release(&ops);
}
static void check_refusals(void) {
    ex_pool host;
    ex_gpu g;
    kvx_mem_ops ops;
    kvx_buffer *many;
    kvx_layout l;
    kvx_cuda *cu;
    kvx_engine *e;
    char why[512];
    uint32_t i, nb = 600;
    printf("-- engines refused\n");
    ex_pool_init(&host, &cx_tiny, 16, 16, 2, 5);
    e = cx_engine(KVX_ROLE_DECODE, &host.layout, NULL, "127.0.0.1:1", why, sizeof why);
    CHECK(!e, "no kvx_cuda mem ops");
    CHECK_STR(why, "desc.mem filled by kvx_cuda_mem_ops()");
    if (kvx_cuda_mem_ops(&ops, NULL, why, sizeof why) != KVX_OK) {
        CHECK(0, "mem ops: %s", why);
        return;
    }
    e = cx_engine(KVX_ROLE_PREFILL, &host.layout, &ops, NULL, why, sizeof why);
    CHECK(!e, "a host pool");
    CHECK_STR(why, "KV buffer 0 is host memory");
    ex_gpu_init(&g, &host, why, sizeof why);
    setenv("KVX_CUDA_FENCE_TIMEOUT", "soon", 1);
    e = cx_engine(KVX_ROLE_DECODE, &host.layout, &g.ops, "127.0.0.1:1", why, sizeof why);
    unsetenv("KVX_CUDA_FENCE_TIMEOUT");
    CHECK(!e, "a setting that does not parse");
    CHECK_STR(why, "KVX_CUDA_FENCE_TIMEOUT");
    fence_desc(&host);
    ex_gpu_free(&g, &host);
    ex_pool_free(&host);
    /* 600 buffers in 600 allocations: 600 * 112 bytes do not fit a hello */
    cu = kvx_cuda_from_mem_ops(&ops);
    many = (kvx_buffer *)calloc(nb, sizeof *many);
    for (i = 0; i < nb; i++) {
        kvx_cuda_alloc(cu, 0, 4096, &many[i].base, why, sizeof why);
        many[i].length = 4096;
        many[i].item_len = 4096;
        many[i].mem = KVX_MEM_CUDA;
    }
    memset(&l, 0, sizeof l);
    l.buffers = many;
    l.num_buffers = nb;
    l.page_size = 16;
    l.num_kv_heads = 1;
    l.dtype_size = 2;
    l.dtype = "bfloat16";
    e = cx_engine(KVX_ROLE_DECODE, &l, &ops, "127.0.0.1:1", why, sizeof why);
    CHECK(!e, "an endpoint beyond KVX_BOOT_MAX_ENDPOINT");
    CHECK_STR(why, "KVX_BOOT_MAX_ENDPOINT");
    printf("   %s\n", why);
    for (i = 0; i < nb; i++) kvx_cuda_free(cu, 0, many[i].base);
    free(many);
    kvx_cuda_mem_ops_release(&ops);
    e = NULL;
    kvx_engine_destroy(e);
}

int main(int argc, char **argv) {
    char why[512];
    kt_name = "test_cuda_transport";
    setenv("FAKECUDA_DEVICES", "1", 0);
    if (ct_fake_open(&F, argv[0], why, sizeof why) != 0) return kt_skip(why);
    cx_find_self(argv[0]);
    if (argc > 1 && !strcmp(argv[1], "--decode")) return cx_helper_decode(argv, &F);
    if (argc > 1 && !strcmp(argv[1], "--prefill")) return cx_helper_prefill(argv);
    signal(SIGPIPE, SIG_IGN);
    quick = kt_quick();
    check_transfer("transfer", "tiny", quick ? 6 : 12, 16, 700, 4, 0, 1);
    check_transfer("one allocation per buffer", "llama-3.1-8b", quick ? 2 : 3, 100,
                   quick ? 256 : 512, 8, 1, 64);
    check_transfer("many rooms at once", "tiny", quick ? 24 : 64, 16, 96, 1, 0, 1);
    check_decode_killed();
    check_prefill_killed();
    check_other_node();
    check_fence();
    check_driver_faults();
    check_in_process();
    check_edges();
    check_refusals();
    {
        struct fakecuda_stats f = ct_stats(&F);
        CHECK(f.live_ipc_maps == 0 && f.live_streams == 0 && f.live_dev_allocs == 0 &&
                  f.ctx_refs == 0 && f.live_host_allocs == 0,
              "nothing left: %llu imports, %llu streams, %llu allocations, %llu context refs",
              (unsigned long long)f.live_ipc_maps, (unsigned long long)f.live_streams,
              (unsigned long long)f.live_dev_allocs, (unsigned long long)f.ctx_refs);
    }
    return kt_done();
}
#endif
