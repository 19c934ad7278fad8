/* The `cuda` transport on a real NVIDIA GPU: a prefill engine in this
   process and a decode engine in a helper process, both pools on GPU 0,
   every byte moved by the driver through CUDA IPC and checked through
   staging copies (host -> GPU -> GPU -> host), aux rows included:
   - a Llama-3.1-8B batch, scattered pages, chunked prefill (512 tokens);
   - many small rooms at once;
   - the decode process killed with rooms in flight: the rooms fail with the
     reason and the imports of the dead process close cleanly.
   Runs only where libcuda.so.1 loads and a device exists; otherwise prints
   "SKIP: ..." and exits 77. KVX_CUDA_LIBRARY is honoured, so the same
   program runs against tests/fakecuda/libfakecuda.so as a dry run. */
#define KVX_IMPLEMENTATION
#include "../../kvx_cuda.h"
#include "cuda_test.h"
#include "cuda_xport.h"

#if !defined(KVX_WITH_CUDA)
int main(void) {
    kt_name = "test_cuda_transport_gpu";
    return kt_skip("no NVIDIA GPU/driver on this machine (and built without KVX_WITH_CUDA)");
}
#else

static int run_decode(cx_proc *p, int port, uint64_t seed, uint32_t nreq, uint32_t mn,
                      uint32_t mx, const char *model) {
    char addr[64], s[32], n[16], a[16], b[16];
    const char *args[12];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
    snprintf(s, sizeof s, "%llu", (unsigned long long)seed);
    snprintf(n, sizeof n, "%u", nreq);
    snprintf(a, sizeof a, "%u", mn);
    snprintf(b, sizeof b, "%u", mx);
    args[0] = "--decode"; args[1] = addr; args[2] = s; args[3] = n; args[4] = a; args[5] = b;
    args[6] = model; args[7] = "0"; args[8] = "1"; args[9] = NULL;
    return cx_spawn(p, args, NULL);
}

static void transfer(const char *what, const char *model, uint32_t nreq, uint32_t mn, uint32_t mx,
                     uint32_t chunk) {
    cx_side pre;
    cx_batch b;
    cx_proc dec;
    kvx_cuda_transport_stats st;
    char why[512], line[1024];
    unsigned ok = 0, ver = 0, failed = 0;
    uint64_t seed = 5000 + nreq;
    double t0 = cx_now(), t;
    printf("-- %s: %u rooms of %u..%u tokens (%s), chunks of %u pages\n", what, nreq, mn, mx,
           model, chunk);
    if (cx_side_init(&pre, KVX_ROLE_PREFILL, model, seed, nreq, mn, mx, 0, NULL, why, sizeof why)) {
        CHECK(0, "%s: prefill side: %s", what, why);
        return;
    }
    run_decode(&dec, kvx_boot_engine_port(pre.e), seed, nreq, mn, mx, model);
    cx_prefill_batch(&pre, &b, chunk, 120, 0);
    t = cx_now() - t0;
    CHECK(b.ok == nreq, "%s: %u of %u senders succeeded %s", what, b.ok, nreq, b.first_err);
    CHECK(cx_expect(&dec, "RESULT", line, sizeof line, 120) &&
              sscanf(line, "RESULT %u %u %u", &ok, &ver, &failed) == 3 && ver == nreq,
          "%s: %u of %u rooms verified byte for byte on the GPU, aux rows included (%s)", what,
          ver, nreq, line);
    kvx_cuda_transport_stats_get(pre.e, &st);
    printf("   %.1f MiB in %llu spans, %llu chunks, %.2f s end to end (setup and checks included)\n",
           (double)st.bytes / (1 << 20), (unsigned long long)st.spans,
           (unsigned long long)st.chunks, t);
    cx_batch_free(&pre, &b);
    cx_side_free(&pre); /* imports closed before the exporter frees its pool */
    CHECK(cx_reap(&dec, 60) == 0, "%s: decode helper exits 0", what);
}

static void decode_killed(void) {
    cx_side pre;
    cx_batch b;
    cx_proc dec;
    kvx_cuda_transport_stats st;
    char why[512], line[256];
    uint32_t nreq = 4, i, lost = 0;
    double end;
    printf("-- decode killed with rooms in flight\n");
    if (cx_side_init(&pre, KVX_ROLE_PREFILL, "tiny", 91, nreq, 64, 512, 0, NULL, why, sizeof why)) {
        CHECK(0, "prefill side: %s", why);
        return;
    }
    run_decode(&dec, kvx_boot_engine_port(pre.e), 91, nreq, 64, 512, "tiny");
    cx_prefill_batch(&pre, &b, 2, 60, CX_PARTIAL);
    CHECK(cx_expect(&dec, "INITED", line, sizeof line, 60), "every receiver initialised");
    kill(dec.pid, SIGKILL);
    cx_prefill_wait(&pre, &b, 30);
    for (i = 0; i < nreq; i++)
        if (strstr(kvx_sender_error(b.s[i]), "lost connection with decode instance")) lost++;
    CHECK(lost == nreq, "every sender failed saying so: %s", b.first_err);
    end = cx_now() + 10;
    do {
        kvx_cuda_transport_stats_get(pre.e, &st);
        if (!st.imports_live) break;
        cx_sleep(0.01);
    } while (cx_now() < end);
    CHECK(st.imports_live == 0, "the dead process's imports are closed");
    cx_batch_free(&pre, &b);
    cx_reap(&dec, 5);
    cx_side_free(&pre);
}

int main(int argc, char **argv) {
    kvx_cuda *cu;
    char why[512];
    int quick;
    kt_name = "test_cuda_transport_gpu";
    cx_find_self(argv[0]);
    if (argc > 1 && !strcmp(argv[1], "--decode")) return cx_helper_decode(argv, NULL);
    if (kvx_cuda_create(NULL, &cu, why, sizeof why) != KVX_OK) {
        char msg[600];
        ct_fmt(msg, sizeof msg, "no NVIDIA GPU/driver on this machine: %s", why);
        return kt_skip(msg);
    }
    kvx_cuda_destroy(cu);
    signal(SIGPIPE, SIG_IGN);
    quick = kt_quick();
    transfer("llama-3.1-8b", "llama-3.1-8b", quick ? 3 : 8, 16, quick ? 1024 : 4096, 32);
    transfer("many rooms at once", "tiny", quick ? 16 : 64, 16, 256, 2);
    decode_killed();
    return kt_done();
}
#endif
