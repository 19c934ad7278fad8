/* test_rdma_alloc_fail - tests/unit/test_alloc_fail.c's scenario for the
   rdma transport, in one process on softverbs: a counting desc allocator
   fails the Nth allocation of a whole transfer (two engines created, a
   connection made, one room of 12 pages and its aux row moved, both
   engines destroyed), for every N until a run needs no more calls. Each
   run must end with every call answered (an error code or a terminal room
   state: no crash, no hang) and with nothing of the allocator's left live;
   the run with no injected failure moves the bytes, verified. */
#define KVX_IMPLEMENTATION
#define KVX_WITH_RDMA
#include "rdma_test.h"
#include <pthread.h>

#include "../kvx_alloc_count.h"

static kvx_engine *engine(kvx_role role, ex_pool *p, const char *addr) {
    kvx_engine_desc d;
    kvx_engine *e = NULL;
    char why[KVX_ERROR_MAX];
    kvx_result res;
    memset(&d, 0, sizeof d);
    d.role = role;
    d.transport = "rdma";
    d.layout = p->layout;
    d.allocator.alloc_fn = ca_alloc;
    d.allocator.free_fn = ca_free;
    d.logger.func = rt_log;
    d.logger.level = KVX_LOG_ERROR;
    d.boot.host = "127.0.0.1";
    d.boot.port = -1;
    d.bootstrap_addr = addr;
    d.waiting_timeout_s = ca_quick ? 1 : 5;
    d.bootstrap_timeout_s = ca_quick ? 1 : 5;
    d.rdma.connect_timeout_s = ca_quick ? 1 : 2;
    d.rdma.fence_timeout_s = ca_quick ? 0.5 : 1;
    res = kvx_engine_create(&d, &e, why, sizeof why);
    CHECK((res == KVX_OK) == (e != NULL), "engine create answers with an engine or an error");
    if (res != KVX_OK && res != KVX_ERR_NO_MEMORY && !strstr(why, "memory"))
        printf("  note: engine create failed with %s: %s\n", kvx_result_str(res), why);
    return e;
}

/* One transfer; 1 when every call succeeded and the bytes were verified. */
static int transfer(const char *unused) {
    (void)unused;
    ex_pool ps, pr;
    kvx_engine *pe = NULL, *de = NULL;
    kvx_sender *s = NULL;
    kvx_receiver *r = NULL;
    kvx_room_desc rd;
    int32_t sp[12], dp[12];
    char addr[64];
    int whole = 0;
    ex_pool_init(&ps, &rt_tiny, 32, 16, 2, 1);
    ex_pool_init(&pr, &rt_tiny, 32, 16, 2, 2);
    ex_alloc_pages(&ps, sp, 12);
    ex_alloc_pages(&pr, dp, 12);
    ex_pages_pattern(&ps, 9, sp, 12, 1);
    ex_aux_write(&ps, 9, 0);
    memset(&rd, 0, sizeof rd);
    rd.room = 9;
    if (!(pe = engine(KVX_ROLE_PREFILL, &ps, NULL))) goto out;
    snprintf(addr, sizeof addr, "127.0.0.1:%d", kvx_boot_engine_port(pe));
    if (!(de = engine(KVX_ROLE_DECODE, &pr, addr))) goto out;
    if (kvx_sender_create(pe, &rd, &s) != KVX_OK) goto out;
    if (kvx_receiver_create(de, &rd, &r) != KVX_OK) goto out;
    ca_wait_receiver(r, 60000);
    if (kvx_receiver_init(r, dp, 12, 1) != KVX_OK) goto out;
    kvx_sender_wait(s, KVX_POLL_WAITING_FOR_INPUT, 60000);
    if (kvx_sender_init(s, 12, 0) != KVX_OK) goto out;
    if (kvx_sender_send(s, sp, 5) != KVX_OK) goto out;
    if (kvx_sender_send(s, sp + 5, 7) != KVX_OK) goto out;
    CHECK(ca_settle(s, r), "both sides reach a terminal state (fail at %ld): sender %s '%s', "
          "receiver %s '%s'", ca.fail_at, kvx_poll_str(kvx_sender_poll(s)), kvx_sender_error(s),
          kvx_poll_str(kvx_receiver_poll(r)), kvx_receiver_error(r));
    whole = kvx_sender_poll(s) == KVX_POLL_SUCCESS && kvx_receiver_poll(r) == KVX_POLL_SUCCESS;
    if (whole)
        CHECK(ex_pages_pattern(&pr, 9, dp, 12, 0) == 0 && ex_aux_check(&pr, 9, 1),
              "a room that succeeded has its bytes (fail at %ld)", ca.fail_at);
out:
    ca_pair_end("rdma", s, r, whole);
    kvx_engine_destroy(pe);
    kvx_engine_destroy(de);
    ex_pool_free(&ps);
    ex_pool_free(&pr);
    return whole;
}

int main(void) {
    char lib[4096], svdir[128];
    long failed_runs;
    rt_name = "test_rdma_alloc_fail";
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (!rt_find_softverbs(lib, sizeof lib))
        return printf("SKIP: libsoftverbs.so not found (make tests/softverbs/libsoftverbs.so)\n"), 77;
    snprintf(svdir, sizeof svdir, "/tmp/kvx_test_%d_sv", (int)getpid());
    setenv("SOFTVERBS_DIR", svdir, 1);
    setenv("KVX_IBVERBS_LIBRARY", lib, 1);
    kvx_rdma_register();
    failed_runs = ca_sweep("rdma", transfer, NULL, 21);
    CHECK(failed_runs > 0, "%ld runs with an injected failure did not succeed", failed_runs);
    return rt_finish();
}
