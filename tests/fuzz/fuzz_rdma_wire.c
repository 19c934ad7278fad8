/* Fuzzes what the rdma transport parses from a peer: the endpoint blob in
   the bootstrap hello and the queue-pair exchange messages (kvx_boot
   transport messages: CONNECT, ACCEPT, READY, REJECT). */
#if defined(__has_include)
#if __has_include(<infiniband/verbs.h>)
#define KVX_WITH_RDMA
#endif
#endif
#define KVX_IMPLEMENTATION
#include "../../kvx_rdma.h"

int LLVMFuzzerTestOneInput(const unsigned char *d, unsigned long n);
int LLVMFuzzerTestOneInput(const unsigned char *d, unsigned long n) {
    kvx_rdma_hello h;
    kvx_rdma_cm_msg m;
    char why[KVX_ERROR_MAX];
    uint32_t dv, i, nr;
    const uint8_t *k;
    volatile uint32_t s = 0;
    kvx_rdma_hello_parse(d, (size_t)n, &h, why, sizeof why);
    if (kvx_rdma_cm_parse(d, (size_t)n, &m, why, sizeof why) != KVX_OK) {
        /* a refused message leaves nothing half-read behind: all of it zero */
        static const kvx_rdma_cm_msg zero;
        if (memcmp(&m, &zero, sizeof m)) __builtin_trap();
        return 0;
    }
    if (m.mr)
        for (dv = 0; dv < m.ndev; dv++)
            for (i = 0; i < m.nbuf + m.naux + m.nstate; i++)
                if (kvx_rdma_cm_region(&m, dv, i, NULL, NULL, NULL, &nr, &k) && nr)
                    s += kvx_rdma_cm_rkey(k, nr - 1);
    for (i = 0; m.items && i < m.nbuf + m.naux + m.nstate; i++) s += (uint32_t)kvx_rdma_cm_item(&m, i);
    for (dv = 0; dv < m.ndev; dv++)
        if (kvx_rdma_cm_stage(&m, dv, NULL, &nr, &k) && nr) s += kvx_rdma_cm_rkey(k, nr - 1);
    if (m.reason_len) s += (uint8_t)m.reason[m.reason_len - 1];
    (void)s;
    return 0;
}
