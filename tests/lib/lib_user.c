/* lib_user.c - a program that LINKS against libkvx.so instead of vendoring
   the implementation (make test-lib, tests/lib/run.sh): the installed
   headers without KVX_IMPLEMENTATION, flags from the installed kvx.pc.
   A prefill and a decode engine on the file transport in this one process
   move scattered pages, an aux row and a state row; every byte is checked.
   Usage: lib_user <scratch dir> <version pkg-config reports> */
#include <kvx.h>
#include <kvx_boot.h>
#include <kvx_file.h>
#include <kvx_tcp.h>
#include <kvx_rdma.h>
#include <kvx_store.h>
#include <kvx_cuda.h>
#include "../kvx_test.h"

#ifdef KVX_IMPLEMENTATION
#error "lib_user.c must link against libkvx.so, not compile the implementation"
#endif

#define NBUF 2
#define NPAGES 16
#define ITEM 256      /* bytes of one page of one buffer */
#define NSLOTS 4
#define AUX_ITEM 64
#define NROWS 4
#define STATE_ITEM 128

typedef struct pool {
    unsigned char kv[NBUF][NPAGES * ITEM];
    unsigned char aux[NSLOTS * AUX_ITEM];
    unsigned char state[NROWS * STATE_ITEM];
    kvx_buffer buffers[NBUF];
    kvx_aux_buffer aux_buf;
    kvx_buffer state_buf;
    kvx_layout layout;
} pool;

static void pool_init(pool *p, unsigned char fill) {
    uint32_t b;
    memset(p, 0, sizeof *p);
    for (b = 0; b < NBUF; b++) {
        memset(p->kv[b], fill, sizeof p->kv[b]);
        p->buffers[b].base = p->kv[b];
        p->buffers[b].length = sizeof p->kv[b];
        p->buffers[b].item_len = ITEM;
        p->buffers[b].mem = KVX_MEM_HOST;
    }
    memset(p->aux, fill, sizeof p->aux);
    memset(p->state, fill, sizeof p->state);
    p->aux_buf.base = p->aux;
    p->aux_buf.length = sizeof p->aux;
    p->aux_buf.item_len = AUX_ITEM;
    p->state_buf.base = p->state;
    p->state_buf.length = sizeof p->state;
    p->state_buf.item_len = STATE_ITEM;
    p->state_buf.mem = KVX_MEM_HOST;
    {
        const kvx_layout l = {.buffers = p->buffers, .num_buffers = NBUF, .aux = &p->aux_buf,
                              .num_aux = 1, .page_size = 16, .num_kv_heads = 1, .dtype_size = 2,
                              .dtype = "bfloat16", .state = &p->state_buf, .num_state = 1,
                              .state_type = KVX_STATE_MAMBA};
        p->layout = l;
    }
}

/* The byte at position i of the k-th item a request carries in region r. */
static unsigned char pattern(uint32_t r, uint32_t k, uint32_t i) {
    return (unsigned char)(r * 131u + k * 29u + i * 7u + 1u);
}

static void fill(unsigned char *dst, size_t len, uint32_t r, uint32_t k) {
    size_t i;
    for (i = 0; i < len; i++) dst[i] = pattern(r, k, (uint32_t)i);
}

/* Bytes of dst that differ from the pattern. */
static size_t bad(const unsigned char *dst, size_t len, uint32_t r, uint32_t k) {
    size_t i, n = 0;
    for (i = 0; i < len; i++) n += dst[i] != pattern(r, k, (uint32_t)i);
    return n;
}

static kvx_engine *engine(kvx_role role, pool *p, const char *dir) {
    kvx_engine_desc d;
    kvx_engine *e = NULL;
    char why[512] = "";
    memset(&d, 0, sizeof d);
    d.role = role;
    d.transport = "file";
    d.layout = p->layout;
    d.file.dir = dir;
    if (kvx_engine_create(&d, &e, why, sizeof why) != KVX_OK) {
        CHECK(0, "%s engine: %s", role == KVX_ROLE_PREFILL ? "prefill" : "decode", why);
        return NULL;
    }
    return e;
}

static int terminal(kvx_poll s) { return s == KVX_POLL_SUCCESS || s == KVX_POLL_FAILED; }

static void transfer(const char *dir) {
    static pool src, dst; /* static: 2 x ~10 KiB, off the stack */
    static const int32_t src_pages[] = {1, 4, 5, 11}, dst_pages[] = {9, 2, 3, 14};
    static const int32_t src_state[] = {2}, dst_state[] = {3};
    const int32_t src_slot = 1, dst_slot = 2;
    const uint32_t n = 4;
    kvx_engine *pe, *de;
    kvx_sender *s = NULL;
    kvx_receiver *r = NULL;
    kvx_room_desc rd;
    uint64_t t0;
    uint32_t b, k;
    size_t wrong = 0, untouched = 0;
    pool_init(&src, 0x00);
    pool_init(&dst, 0xEE);
    for (b = 0; b < NBUF; b++)
        for (k = 0; k < n; k++) fill(src.kv[b] + (size_t)src_pages[k] * ITEM, ITEM, b, k);
    fill(src.aux + (size_t)src_slot * AUX_ITEM, AUX_ITEM, 10, 0);
    fill(src.state + (size_t)src_state[0] * STATE_ITEM, STATE_ITEM, 20, 0);

    CHECK(kvx_file_register() == KVX_OK, "kvx_file_register");
    pe = engine(KVX_ROLE_PREFILL, &src, dir);
    de = engine(KVX_ROLE_DECODE, &dst, dir);
    if (!pe || !de) goto out;
    memset(&rd, 0, sizeof rd);
    rd.room = 4242;
    CHECK(kvx_receiver_create(de, &rd, &r) == KVX_OK, "receiver_create");
    CHECK(kvx_sender_create(pe, &rd, &s) == KVX_OK, "sender_create");
    if (!r || !s) goto out;
    CHECK(kvx_receiver_init_state(r, dst_pages, n, dst_slot, dst_state, 1) == KVX_OK,
          "receiver_init_state: %s", kvx_receiver_call_error(r));
    CHECK(kvx_sender_init(s, n, src_slot) == KVX_OK, "sender_init: %s", kvx_sender_call_error(s));
    CHECK(kvx_sender_send(s, src_pages, 2) == KVX_OK, "sender_send: %s", kvx_sender_call_error(s));
    CHECK(kvx_sender_send_state(s, src_pages + 2, 2, src_state, 1) == KVX_OK,
          "sender_send_state: %s", kvx_sender_call_error(s));
    t0 = kvx_now_ns();
    while ((!terminal(kvx_sender_poll(s)) || !terminal(kvx_receiver_poll(r))) &&
           kvx_now_ns() - t0 < 60ull * 1000000000ull) {
        kvx_receiver_wait(r, KVX_POLL_SUCCESS, 10);
        kvx_sender_wait(s, KVX_POLL_SUCCESS, 10);
    }
    CHECK(kvx_sender_poll(s) == KVX_POLL_SUCCESS, "sender: %s (%s)",
          kvx_poll_str(kvx_sender_poll(s)), kvx_sender_error(s));
    CHECK(kvx_receiver_poll(r) == KVX_POLL_SUCCESS, "receiver: %s (%s)",
          kvx_poll_str(kvx_receiver_poll(r)), kvx_receiver_error(r));
    for (b = 0; b < NBUF; b++)
        for (k = 0; k < n; k++) wrong += bad(dst.kv[b] + (size_t)dst_pages[k] * ITEM, ITEM, b, k);
    CHECK(wrong == 0, "%zu KV bytes wrong", wrong);
    CHECK(bad(dst.aux + (size_t)dst_slot * AUX_ITEM, AUX_ITEM, 10, 0) == 0, "aux row wrong");
    CHECK(bad(dst.state + (size_t)dst_state[0] * STATE_ITEM, STATE_ITEM, 20, 0) == 0,
          "state row wrong");
    /* Nothing outside the destination was written: page 0, slot 0, row 0. */
    for (b = 0; b < NBUF; b++)
        for (k = 0; k < ITEM; k++) untouched += dst.kv[b][k] == 0xEE;
    CHECK(untouched == (size_t)NBUF * ITEM, "page 0 was written");
    CHECK(dst.aux[0] == 0xEE && dst.state[0] == 0xEE, "aux slot 0 or state row 0 was written");
out:
    kvx_sender_destroy(s);
    kvx_receiver_destroy(r);
    kvx_engine_destroy(pe);
    kvx_engine_destroy(de);
}

int main(int argc, char **argv) {
    char version[64];
    kt_name = "lib";
    if (argc < 3) {
        fprintf(stderr, "usage: %s <scratch dir> <pkg-config version>\n", argv[0]);
        return 2;
    }
    /* The installed headers and the pc file agree on the version. */
    snprintf(version, sizeof version, "%d.%d.%d", KVX_VERSION_MAJOR, KVX_VERSION_MINOR,
             KVX_VERSION_PATCH);
    CHECK(strcmp(version, argv[2]) == 0, "headers say %s, kvx.pc says %s", version, argv[2]);
    CHECK(strcmp(kvx_result_str(KVX_OK), "") != 0, "kvx_result_str");
    /* Every transport's entry point resolves from the library. */
    CHECK(kvx_tcp_register() == KVX_OK, "kvx_tcp_register");
    CHECK(kvx_rdma_register() == KVX_OK, "kvx_rdma_register");
    CHECK(kvx_cuda_register() == KVX_OK, "kvx_cuda_register");
    {
        void (*volatile open_fn)(void) = (void (*)(void))kvx_store_open;
        CHECK(open_fn != NULL, "kvx_store_open");
    }
    transfer(argv[1]);
    return kt_done();
}
