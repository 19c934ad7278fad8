/* test_alloc_fail.c - every allocation goes through the desc allocator, and
   an allocation that fails gives a clean error: a counting allocator fails
   the Nth call, for every N until a whole transfer needs no more calls. Each
   run must end with every call answered (an error code or a terminal room
   state, never a crash or a hang) and with nothing of the allocator's left
   live after the engines are destroyed. A run with no injected failure must
   move the bytes, verified (KV pages, aux and hybrid state rows). Scenarios:
   the core over the fake transport,
   and the file transport (two engines in this process sharing a directory). */
#define KVX_IMPLEMENTATION
#include "../../kvx_file.h"
#include "../../examples/kvx_example.h"
#include "../kvx_test.h"
#include <pthread.h>

static const ex_model tiny = {"tiny", 2, 2, 32, 2, 0, "bfloat16"};

#include "../kvx_alloc_count.h"

static char root[256];
static uint64_t next_room = 100;

static kvx_engine *engine(const char *transport, kvx_role role, ex_pool *p, kvx_result *res) {
    kvx_engine_desc d;
    kvx_engine *e = NULL;
    char why[512];
    memset(&d, 0, sizeof d);
    d.role = role;
    d.transport = transport;
    d.layout = p->layout;
    d.file.dir = root;
    d.allocator.alloc_fn = ca_alloc;
    d.allocator.free_fn = ca_free;
    d.logger.level = KVX_LOG_ERROR;
    d.waiting_timeout_s = ca_quick ? 1 : 5;
    d.bootstrap_timeout_s = ca_quick ? 1 : 5;
    d.file.timeout_s = ca_quick ? 1 : 5;
    d.file.settle_s = 0.05;
    *res = kvx_engine_create(&d, &e, why, sizeof why);
    CHECK((*res == KVX_OK) == (e != NULL), "engine create answers with an engine or an error");
    if (*res != KVX_OK && *res != KVX_ERR_NO_MEMORY && !strstr(why, "memory"))
        printf("  note: engine create failed with %s: %s\n", kvx_result_str(*res), why);
    return e;
}

/* One transfer of n pages; returns 1 when every call succeeded and the
   bytes were verified, 0 when some call refused (an injected failure). */
static int transfer(const char *transport) {
    ex_pool ps, pr;
    kvx_engine *pe = NULL, *de = NULL;
    kvx_sender *s = NULL;
    kvx_receiver *r = NULL;
    kvx_room_desc rd;
    kvx_result res;
    int32_t sp[12], dp[12], ss[2] = {3, 4}, ds[2] = {0, 5}; /* hybrid state rows */
    int whole = 0;
    uint64_t room = next_room++; /* a failed room's marker outlives its engines */
    ex_pool_init(&ps, &tiny, 32, 16, 2, 1);
    ex_pool_init(&pr, &tiny, 32, 16, 2, 2);
    ex_pool_add_state(&ps, KVX_STATE_SWA, 2, 64, 8);
    ex_pool_add_state(&pr, KVX_STATE_SWA, 2, 64, 8);
    ex_alloc_pages(&ps, sp, 12);
    ex_alloc_pages(&pr, dp, 12);
    ex_pages_pattern(&ps, room, sp, 12, 1);
    ex_aux_write(&ps, room, 0);
    ex_state_pattern(&ps, room, ss, 2, 1);
    memset(&rd, 0, sizeof rd);
    rd.room = room;
    if (!(pe = engine(transport, KVX_ROLE_PREFILL, &ps, &res))) goto out;
    if (!(de = engine(transport, KVX_ROLE_DECODE, &pr, &res))) goto out;
    if (kvx_sender_create(pe, &rd, &s) != KVX_OK) goto out;
    if (kvx_receiver_create(de, &rd, &r) != KVX_OK) goto out;
    if (kvx_receiver_init_state(r, dp, 12, 1, ds, 2) != KVX_OK) goto out;
    if (kvx_sender_init(s, 12, 0) != KVX_OK) goto out;
    if (kvx_sender_send(s, sp, 5) != KVX_OK) goto out;
    if (kvx_sender_send_state(s, sp + 5, 7, ss, 2) != KVX_OK) goto out;
    CHECK(ca_settle(s, r),
          "%s: both sides reach a terminal state (fail at %ld): sender %s '%s', receiver %s '%s'",
          transport, ca.fail_at, kvx_poll_str(kvx_sender_poll(s)), kvx_sender_error(s),
          kvx_poll_str(kvx_receiver_poll(r)), kvx_receiver_error(r));
    whole = kvx_sender_poll(s) == KVX_POLL_SUCCESS && kvx_receiver_poll(r) == KVX_POLL_SUCCESS;
    if (whole && strcmp(transport, "fake")) /* fake moves no bytes */
        CHECK(ex_pages_pattern(&pr, room, dp, 12, 0) == 0 && ex_aux_check(&pr, room, 1) &&
                  ex_state_pattern(&pr, room, ds, 2, 0) == 0,
              "%s: a room that succeeded has its bytes", transport);
out:
    ca_pair_end(transport, s, r, whole);
    kvx_engine_destroy(pe);
    kvx_engine_destroy(de);
    ex_pool_free(&ps);
    ex_pool_free(&pr);
    return whole;
}

int main(void) {
    kt_name = "test_alloc_fail";
    snprintf(root, sizeof root, "/tmp/kvx_allocfail_%d", (int)getpid());
    kvx_file_register();
    ca_sweep("fake", transfer, "fake", 4);
    ca_sweep("file", transfer, "file", 4);
    {
        char cmd[300];
        snprintf(cmd, sizeof cmd, "rm -rf %s", root);
        if (system(cmd)) printf("  could not remove %s\n", root);
    }
    return kt_done();
}
