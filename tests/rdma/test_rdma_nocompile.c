/* test_rdma_nocompile - kvx_rdma.h built without KVX_WITH_RDMA: everything
   compiles, the wire-format parsers work, and creating an "rdma" engine
   fails with KVX_ERR_NOT_COMPILED and a sentence naming the macro. */
#define KVX_IMPLEMENTATION
#include "../../kvx_rdma.h"
#include <stdio.h>
#include <string.h>

static int pass, fail;
#define CHECK(c, ...)                                                                          \
    do {                                                                                       \
        int ok_ = (c) ? 1 : 0;                                                                 \
        if (ok_) pass++; else fail++;                                                          \
        printf("%s ", ok_ ? "ok  " : "FAIL");                                                  \
        printf(__VA_ARGS__);                                                                   \
        printf("\n");                                                                          \
    } while (0)

int main(void) {
    kvx_buffer bufs[2];
    kvx_engine_desc d;
    kvx_engine *e = NULL;
    kvx_result r;
    char why[KVX_ERROR_MAX] = "", mem[2][4096];
    kvx_rdma_hello h, o;
    kvx_rdma_stats st;
    uint8_t blob[KVX_RDMA_HELLO_FIXED + KVX_RDMA_DEV_ENTRY];
    size_t n;
    int i;
    memset(bufs, 0, sizeof bufs);
    for (i = 0; i < 2; i++) {
        bufs[i].base = mem[i];
        bufs[i].length = sizeof mem[i];
        bufs[i].item_len = 1024;
    }
    memset(&d, 0, sizeof d);
    d.role = KVX_ROLE_PREFILL;
    d.transport = "rdma";
    d.layout.buffers = bufs;
    d.layout.num_buffers = 2;
    d.layout.page_size = 16;
    CHECK(kvx_rdma_compiled() == 0, "kvx_rdma_compiled() is 0 without KVX_WITH_RDMA");
    CHECK(kvx_rdma_register() == KVX_OK, "\"rdma\" registers");
    r = kvx_engine_create(&d, &e, why, sizeof why);
    CHECK(r == KVX_ERR_NOT_COMPILED && !e && strstr(why, "KVX_WITH_RDMA"),
          "an rdma engine fails with %s: %s", kvx_result_str(r), why);
    CHECK(kvx_rdma_stats_get(NULL, &st) == KVX_ERR_NOT_COMPILED, "stats say not compiled");
    memset(&h, 0, sizeof h);
    h.role = KVX_ROLE_DECODE;
    h.instance = 9;
    h.qps = 2;
    h.ndev = 1;
    h.dev[0].port = 1;
    h.dev[0].link_layer = 1;
    h.dev[0].mtu = 3;
    n = kvx_rdma_hello_encode(&h, blob, sizeof blob);
    CHECK(n == sizeof blob && kvx_rdma_hello_parse(blob, n, &o, why, sizeof why) == KVX_OK &&
          o.instance == 9, "the wire-format parsers are there for tools");
    printf("test_rdma_nocompile: %d passed, %d failed\n", pass, fail);
    return fail ? 1 : 0;
}
