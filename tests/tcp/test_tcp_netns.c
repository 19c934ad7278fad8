/* test_tcp_netns - the tcp transport across two hosts: two network
   namespaces this test creates, joined by a veth pair (10.99.0.1/24 and
   10.99.0.2/24, addresses that exist only inside them), the prefill helper
   in one and the decode helper in the other (`ip netns exec` of this
   binary). Deleted at exit. Skipped (exit 77) without root or iproute2.

   - the decode side announces no address: the prefill connects to the
     address the decode's control connection came from (10.99.0.2)
   - KVX_TCP_HOST set explicitly on the decode side, a Llama-3.1-8B shaped
     request over 8 streams
   - the link cut in the middle of a transfer (veth down, once KV bytes
     arrived: an observed state, not a sleep): both sides fail every
     unfinished room within a bounded time, naming the other host. The
     prefill helper creates its senders only after filling every pattern
     (seconds under TSan), so KVX_BOOTSTRAP_TIMEOUT, which runs from
     kvx_sender_create, measures the handshake and nothing else. */
#define KVX_IMPLEMENTATION
#include "tcp_test.h"

static char ns_a[32], ns_b[32], veth_a[16], veth_b[16];
static int created;

static int sh(const char *fmt, ...) KVX_PRINTF(1, 2);
static int sh(const char *fmt, ...) {
    char cmd[512];
    va_list ap;
    int rc;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    rc = system(cmd);
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

static void cleanup(void) {
    if (!created) return;
    created = 0;
    sh("ip netns del %s >/dev/null 2>&1", ns_a); /* takes its end of the veth pair along */
    sh("ip netns del %s >/dev/null 2>&1", ns_b);
    sh("ip link del %s >/dev/null 2>&1", veth_a);
}

static void on_signal(int sig) {
    cleanup();
    signal(sig, SIG_DFL);
    raise(sig);
}

static int setup(char *why, size_t n) {
    int pid = (int)getpid() % 1000000;
    snprintf(ns_a, sizeof ns_a, "kvxt%da", pid);
    snprintf(ns_b, sizeof ns_b, "kvxt%db", pid);
    snprintf(veth_a, sizeof veth_a, "kvxv%da", pid);
    snprintf(veth_b, sizeof veth_b, "kvxv%db", pid);
    if (geteuid() != 0) {
        snprintf(why, n, "network namespaces need root");
        return -1;
    }
    if (sh("command -v ip >/dev/null 2>&1")) {
        snprintf(why, n, "iproute2 (ip) is not installed");
        return -1;
    }
    if (sh("ip netns add %s 2>/dev/null", ns_a)) {
        snprintf(why, n, "cannot create a network namespace (ip netns add: no CAP_SYS_ADMIN?)");
        return -1;
    }
    created = 1;
    atexit(cleanup);
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    if (sh("ip netns add %s", ns_b) ||
        sh("ip link add %s type veth peer name %s", veth_a, veth_b) ||
        sh("ip link set %s netns %s", veth_a, ns_a) || sh("ip link set %s netns %s", veth_b, ns_b) ||
        sh("ip -n %s addr add 10.99.0.1/24 dev %s", ns_a, veth_a) ||
        sh("ip -n %s addr add 10.99.0.2/24 dev %s", ns_b, veth_b) ||
        sh("ip -n %s link set lo up", ns_a) || sh("ip -n %s link set lo up", ns_b) ||
        sh("ip -n %s link set %s up", ns_a, veth_a) || sh("ip -n %s link set %s up", ns_b, veth_b)) {
        snprintf(why, n, "cannot set up a veth pair between two namespaces");
        cleanup();
        return -1;
    }
    if (sh("ip netns exec %s ping -c 1 -W 2 10.99.0.2 >/dev/null 2>&1", ns_a) &&
        sh("command -v ping >/dev/null 2>&1") == 0) {
        snprintf(why, n, "10.99.0.2 does not answer from the other namespace");
        cleanup();
        return -1;
    }
    return 0;
}

/* One transfer: prefill helper in ns A, decode helper in ns B. cut: take
   the veth down once KV bytes arrived at the decode helper (it stops itself
   there and is continued after the cut). */
static void run(const char *label, uint64_t seed, uint32_t nreq, uint32_t mn, uint32_t mx,
                uint32_t chunk, const char *model, int streams, char **denv, char **penv, int cut) {
    tt_proc pp, dp;
    char addr[64], line[1024];
    char *wrap_a[] = {(char *)"ip", (char *)"netns", (char *)"exec", ns_a, NULL};
    char *wrap_b[] = {(char *)"ip", (char *)"netns", (char *)"exec", ns_b, NULL};
    unsigned pok = 0, pfail = 0, dok = 0, dver = 0, dfail = 0;
    int port, st, i;
    double t0;
    for (i = 0; wrap_a[i]; i++) tt_wrap[i] = wrap_a[i];
    tt_wrap[i] = NULL;
    t0 = tt_now();
    port = tt_spawn_prefill(&pp, seed, nreq, mn, mx, chunk, model, streams, penv);
    CHECK(port > 0, "%s: prefill helper up in %s in %.2f s", label, ns_a, tt_now() - t0);
    if (port <= 0) { tt_reap(&pp, 5); return; }
    snprintf(addr, sizeof addr, "10.99.0.1:%d", port);
    for (i = 0; wrap_b[i]; i++) tt_wrap[i] = wrap_b[i];
    tt_wrap[i] = NULL;
    t0 = tt_now();
    CHECK(tt_spawn_decode(&dp, addr, seed, nreq, mn, mx, model, denv) == 0,
          "%s: decode helper up in %s, bootstrap %s, every destination sent %.2f s after start",
          label, ns_b, addr, tt_now() - t0);
    tt_wrap[0] = NULL;
    if (cut) {
        /* cut only once KV bytes arrived (the helper then stops itself, so the
           transfer cannot end first): both sides are past the handshake */
        int flowing = tt_expect(&dp, "FLOWING ", line, sizeof line, 60);
        CHECK(flowing, "%s: KV bytes arrived at the decode %.2f s after start (%s)", label,
              tt_now() - t0, flowing ? line + 8 : "never");
        sh("ip -n %s link set %s down", ns_b, veth_b);
        kill(dp.pid, SIGCONT);
        t0 = tt_now();
    }
    if (tt_expect(&dp, "RESULT ", line, sizeof line, cut ? 30 : 90))
        sscanf(line, "RESULT %u %u %u", &dok, &dver, &dfail);
    if (dfail && tt_readline(&dp, line, sizeof line, 1)) printf("  decode: %s\n", line);
    if (cut) {
        CHECK(dfail > 0 && dok + dfail == nreq,
              "%s: decode: %u rooms failed, %u arrived before the cut, all within %.1f s", label,
              dfail, dok, tt_now() - t0);
        CHECK(strstr(line, "10.99.0.1") != NULL, "%s: decode failures name the prefill host", label);
    } else {
        CHECK(dok == nreq && dver == nreq, "%s: decode: %u/%u rooms Success, %u verified byte for "
              "byte with aux", label, dok, nreq, dver);
    }
    if (tt_expect(&pp, "RESULT ", line, sizeof line, cut ? 30 : 30))
        sscanf(line, "RESULT %u %u", &pok, &pfail);
    if (pfail && tt_readline(&pp, line, sizeof line, 1)) printf("  prefill: %s\n", line);
    if (cut) {
        CHECK(pfail > 0 && pok + pfail == nreq, "%s: prefill: %u rooms failed within %.1f s",
              label, pfail, tt_now() - t0);
        CHECK(strstr(line, "10.99.0.2") != NULL, "%s: prefill failures name the decode host", label);
        sh("ip -n %s link set %s up", ns_b, veth_b);
    } else {
        CHECK(pok == nreq, "%s: prefill: %u/%u senders Success", label, pok, nreq);
    }
    st = tt_reap(&dp, 10);
    if (!cut) CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "%s: decode helper exit %d", label, st);
    st = tt_reap(&pp, 10);
    if (!cut) CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "%s: prefill helper exit %d", label, st);
}

int main(int argc, char **argv) {
    char why[256];
    int q = kt_quick(), h = tt_helper_main(argc, argv);
    char *denv_default[] = {(char *)"TT_TCP_HOST=", NULL};
    char *denv_explicit[] = {(char *)"TT_TCP_HOST=10.99.0.2", NULL};
    char *penv[] = {(char *)"TT_BOOT_HOST=10.99.0.1", NULL};
    char *penv_cut[] = {(char *)"TT_BOOT_HOST=10.99.0.1", (char *)"KVX_TCP_TIMEOUT=2",
                        (char *)"KVX_BOOTSTRAP_TIMEOUT=120", NULL};
    char *denv_cut[] = {(char *)"TT_TCP_HOST=", (char *)"KVX_HEARTBEAT_INTERVAL=0.5",
                        (char *)"KVX_HEARTBEAT_MAX_FAILURE=2", (char *)"KVX_TCP_TIMEOUT=2",
                        (char *)"TT_STOP_ON_BYTES=1", NULL};
    if (h >= 0) return h;
    kt_name = "test_tcp_netns";
    tt_find_self(argv[0]);
    signal(SIGPIPE, SIG_IGN);
    if (setup(why, sizeof why)) return kt_skip(why);
    printf("namespaces %s (10.99.0.1) and %s (10.99.0.2), veth %s - %s\n", ns_a, ns_b, veth_a, veth_b);
    run("announced by address seen", 21, 16, 16, 600, 3, "tiny", 4, denv_default, penv, 0);
    run("KVX_TCP_HOST, llama-3.1-8b, 8 streams", 22, 2, q ? 256 : 1024, q ? 256 : 1024, 16,
        "llama-3.1-8b", 8, denv_explicit, penv, 0);
    run("link cut mid-transfer", 23, 4, 1024, 1024, 8, "llama-3.1-8b", 4, denv_cut, penv_cut, 1);
    cleanup();
    return kt_done();
}
