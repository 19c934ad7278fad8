/* test_rdma_wire - the rdma transport's wire formats, without a device:
   the endpoint blob in the kvx_boot hello and the queue-pair exchange
   messages (kvx_boot transport messages) round-trip; every truncation is
   refused; malformed counts, lengths, region tables and reserved fields
   are refused with a sentence; and a mutation loop over valid messages
   never reads out of bounds (run it under ASan). */
#define KVX_IMPLEMENTATION
#define KVX_WITH_RDMA
#include "rdma_test.h"

static kvx_rdma_hello sample_hello(void) {
    kvx_rdma_hello h;
    int i;
    memset(&h, 0, sizeof h);
    h.role = KVX_ROLE_PREFILL;
    h.instance = 0x0123456789abcdefull;
    h.qps = 4;
    h.ndev = 2;
    for (i = 0; i < 2; i++) {
        h.dev[i].gid[10] = 0xff; h.dev[i].gid[11] = 0xff; h.dev[i].gid[15] = (uint8_t)(i + 1);
        h.dev[i].lid = (uint16_t)(7 + i);
        h.dev[i].port = 1;
        h.dev[i].link_layer = 2;
        h.dev[i].mtu = 5;
        h.dev[i].gid_index = 3;
        snprintf(h.dev[i].name, sizeof h.dev[i].name, "mlx5_%d", i);
    }
    return h;
}

/* A CONNECT with 2 queue pairs, 2 ports, 3 KV buffers, 1 aux buffer and
   ns state buffers (Mamba, 100 rows of 512 bytes; HYBRID STATE). */
static void sample_connect_state(kvx__buf *b, uint64_t region, uint32_t ns) {
    kvx_rdma_hello h = sample_hello();
    kvx_rdma_qp_info q;
    uint32_t d, i, k;
    kvx__rdma_cm_begin(b, KVX_RDMA_CM_CONNECT, 7, 11, 22);
    kvx__buf_put64(b, 0xfeedull);
    kvx__buf_put16(b, 2);
    kvx__buf_put16(b, 2);
    kvx__buf_put32(b, 3);
    kvx__buf_put32(b, 1);
    kvx__buf_put32(b, ns);
    for (i = 0; i < 2; i++) {
        q.qpn = 0x100 + i;
        q.psn = 0x200 + i;
        q.dev = (uint16_t)i;
        kvx__rdma_put_qp(b, &q);
    }
    for (d = 0; d < 2; d++) kvx__rdma_put_port(b, &h.dev[d]);
    for (d = 0; d < 2; d++) {
        kvx__buf_put64(b, region);
        for (i = 0; i < 4 + ns; i++) {
            uint64_t len = i < 4 ? (i + 1) * 10000 : 51200;
            uint32_t n = (uint32_t)(len / region + (len % region ? 1 : 0));
            kvx__buf_put64(b, 0x10000000ull * (i + 1));
            kvx__buf_put64(b, len);
            kvx__buf_put32(b, n);
            for (k = 0; k < n; k++) kvx__buf_put32(b, 1000 * d + 100 * i + k);
        }
    }
    /* the layout shape: page size 16, 2 heads from head 4, bf16, layers from 0 */
    kvx__buf_put32(b, 16);
    kvx__buf_put32(b, 2);
    kvx__buf_put32(b, 2);
    kvx__buf_put32(b, 4);
    kvx__buf_put32(b, 0);
    kvx__buf_put32(b, 0);
    kvx__buf_put32(b, ns ? KVX_STATE_MAMBA : 0); /* state type, then reserved */
    kvx__buf_put32(b, 0);
    for (i = 0; i < 4 + ns; i++) kvx__buf_put64(b, i < 3 ? 4096 : i == 3 ? 64 : 512);
    kvx__buf_put64(b, 0); /* no staging area */
}
static void sample_connect(kvx__buf *b, uint64_t region) { sample_connect_state(b, region, 0); }
#define SHAPE_BYTES (32 + 8 * 4 + 8)

static void hello_tests(void) {
    kvx_rdma_hello h = sample_hello(), o;
    uint8_t buf[KVX_RDMA_HELLO_FIXED + KVX_RDMA_DEV_ENTRY * KVX_RDMA_MAX_DEVS + 8];
    size_t n = kvx_rdma_hello_encode(&h, buf, sizeof buf), i;
    char why[KVX_ERROR_MAX];
    int ok = 1;
    CHECK(n == KVX_RDMA_HELLO_FIXED + 2 * KVX_RDMA_DEV_ENTRY, "hello encodes to %zu bytes", n);
    CHECK(kvx_rdma_hello_parse(buf, n, &o, why, sizeof why) == KVX_OK && o.instance == h.instance &&
          o.qps == 4 && o.ndev == 2 && o.dev[1].lid == 8 &&
          !strcmp(o.dev[1].name, "mlx5_1") && !memcmp(o.dev[0].gid, h.dev[0].gid, 16) &&
          o.dev[0].mtu == 5 && o.dev[0].gid_index == 3 && o.role == KVX_ROLE_PREFILL,
          "hello round-trips every field");
    CHECK(!memcmp(buf, "kvx-rdma", 8) && buf[8] == 4 && buf[9] == 0 && buf[16] == 0xef,
          "hello is little-endian with its magic and version");
    for (i = 0; i < n; i++)
        if (kvx_rdma_hello_parse(buf, i, &o, why, sizeof why) != KVX_ERR_PROTOCOL) ok = 0;
    CHECK(ok, "every truncated hello is refused");
    CHECK(kvx_rdma_hello_parse(buf, n + 1, &o, why, sizeof why) == KVX_ERR_PROTOCOL &&
          strstr(why, "bytes"), "a hello with a trailing byte is refused: %s", why);
    buf[8] = 1;
    CHECK(kvx_rdma_hello_parse(buf, n, &o, why, sizeof why) == KVX_ERR_PROTOCOL && strstr(why, "version 1"),
          "version 1 (an exchange port of its own) is refused: %s", why);
    buf[8] = 2;
    CHECK(kvx_rdma_hello_parse(buf, n, &o, why, sizeof why) == KVX_ERR_PROTOCOL && strstr(why, "version 2"),
          "version 2 (a CONNECT without the layout shape) is refused: %s", why);
    buf[8] = 3;
    CHECK(kvx_rdma_hello_parse(buf, n, &o, why, sizeof why) == KVX_ERR_PROTOCOL && strstr(why, "version 3"),
          "version 3 (a CONNECT without state buffers) is refused: %s", why);
    buf[8] = 4;
    kvx__le_w16(buf + 24, 4791);
    CHECK(kvx_rdma_hello_parse(buf, n, &o, why, sizeof why) == KVX_ERR_PROTOCOL && strstr(why, "reserved"),
          "a nonzero reserved field (version 1's exchange port) is refused: %s", why);
    kvx__le_w16(buf + 24, 0);
    kvx__le_w32(buf + 12, 1);
    CHECK(kvx_rdma_hello_parse(buf, n, &o, why, sizeof why) == KVX_ERR_PROTOCOL,
          "an endpoint flag (version 1's auth flag) is refused: %s", why);
    h = sample_hello();
    h.dev[1].link_layer = 3;
    kvx_rdma_hello_encode(&h, buf, sizeof buf);
    CHECK(kvx_rdma_hello_parse(buf, n, &o, why, sizeof why) == KVX_ERR_PROTOCOL && strstr(why, "link layer"),
          "a port entry with link layer 3 is refused: %s", why);
    h = sample_hello();
    kvx_rdma_hello_encode(&h, buf, sizeof buf);
    memset(buf + KVX_RDMA_HELLO_FIXED + 24, 'x', 24);
    CHECK(kvx_rdma_hello_parse(buf, n, &o, why, sizeof why) == KVX_ERR_PROTOCOL && strstr(why, "NUL"),
          "a port name without its NUL is refused: %s", why);
    CHECK(kvx_rdma_hello_parse("bootfake", 8, &o, why, sizeof why) == KVX_ERR_PROTOCOL &&
          strstr(why, "transport \"rdma\""), "another transport's endpoint is named as such: %s", why);
    h.ndev = KVX_RDMA_MAX_DEVS + 1;
    CHECK(kvx_rdma_hello_encode(&h, buf, sizeof buf) == 0, "encode refuses too many ports");
}

static void cm_tests(void) {
    kvx__buf b;
    kvx_rdma_cm_msg m;
    size_t i;
    char why[KVX_ERROR_MAX];
    uint64_t base, len, rb;
    uint32_t nr;
    const uint8_t *keys;
    int ok = 1;
    memset(&b, 0, sizeof b);
    sample_connect(&b, 4096);
    CHECK(kvx_rdma_cm_parse(b.data, b.len, &m, why, sizeof why) == KVX_OK && m.seq == 7 &&
          m.type == KVX_RDMA_CM_CONNECT && m.from == 11 && m.to == 22 && m.fingerprint == 0xfeed &&
          m.nqp == 2 && m.ndev == 2 && m.nbuf == 3 && m.naux == 1 && m.qp[1].qpn == 0x101 &&
          m.qp[1].psn == 0x201 && m.qp[1].dev == 1 && !strcmp(m.dev[0].name, "mlx5_0"),
          "CONNECT round-trips (%zu bytes): %s", b.len, why);
    CHECK(kvx_rdma_cm_region(&m, 1, 3, &base, &len, &rb, &nr, &keys) && base == 0x40000000ull &&
          len == 40000 && rb == 4096 && nr == 10 && kvx_rdma_cm_rkey(keys, 9) == 1309,
          "region table of port 1, aux buffer 0: %u regions, last rkey %u", nr,
          nr ? kvx_rdma_cm_rkey(keys, nr - 1) : 0);
    CHECK(m.page_size == 16 && m.num_kv_heads == 2 && m.dtype_size == 2 && m.head_begin == 4 &&
          m.layer_begin == 0 && m.mla == 0 && kvx_rdma_cm_item(&m, 0) == 4096 &&
          kvx_rdma_cm_item(&m, 3) == 64 && kvx_rdma_cm_item(&m, 4) == 0,
          "CONNECT carries the decode rank's layout shape (heads %u from %u, aux item %llu)",
          m.num_kv_heads, m.head_begin, (unsigned long long)kvx_rdma_cm_item(&m, 3));
    ((uint8_t *)b.data)[b.len - 16] = 0;
    CHECK(kvx_rdma_cm_parse(b.data, b.len, &m, why, sizeof why) == KVX_ERR_PROTOCOL &&
          strstr(why, "item_len"), "a shape with an item_len of 0 is refused: %s", why);
    ((uint8_t *)b.data)[b.len - 16] = 64;
    CHECK(!kvx_rdma_cm_stage(&m, 0, NULL, NULL, NULL), "no staging area announced");
    {   /* a staging area of 10000 bytes in 4096-byte regions on both ports */
        kvx__buf c;
        uint32_t d, k, n3 = 0;
        uint64_t sb = 0;
        const uint8_t *sk = NULL;
        memset(&c, 0, sizeof c);
        kvx__buf_put(&c, b.data, b.len - 8);
        kvx__buf_put64(&c, 10000);
        for (d = 0; d < 2; d++) {
            kvx__buf_put64(&c, 0x7000000ull + d);
            kvx__buf_put32(&c, 3);
            for (k = 0; k < 3; k++) kvx__buf_put32(&c, 500 + 10 * d + k);
        }
        CHECK(kvx_rdma_cm_parse(c.data, c.len, &m, why, sizeof why) == KVX_OK &&
              m.stage_len == 10000 && kvx_rdma_cm_stage(&m, 1, &sb, &n3, &sk) && sb == 0x7000001ull &&
              n3 == 3 && kvx_rdma_cm_rkey(sk, 2) == 512, "CONNECT carries a staging area: %s", why);
        ((uint8_t *)c.data)[c.len - 12 - 4] = 2; /* port 1: 2 regions for 10000 bytes */
        CHECK(kvx_rdma_cm_parse(c.data, c.len, &m, why, sizeof why) == KVX_ERR_PROTOCOL &&
              strstr(why, "staging"), "a staging table whose region count does not match is "
              "refused: %s", why);
        kvx__buf_free(&c);
        kvx_rdma_cm_parse(b.data, b.len, &m, why, sizeof why);
    }
    kvx__le_w32((uint8_t *)b.data + b.len - SHAPE_BYTES + 20, 2);
    CHECK(kvx_rdma_cm_parse(b.data, b.len, &m, why, sizeof why) == KVX_ERR_PROTOCOL &&
          strstr(why, "mla"), "a shape with mla 2 is refused: %s", why);
    kvx__le_w32((uint8_t *)b.data + b.len - SHAPE_BYTES + 20, 0);
    CHECK(kvx_rdma_cm_parse(b.data, b.len, &m, why, sizeof why) == KVX_OK, "restored: %s", why);
    CHECK(!kvx_rdma_cm_region(&m, 2, 0, NULL, NULL, NULL, NULL, NULL) &&
          !kvx_rdma_cm_region(&m, 0, 4, NULL, NULL, NULL, NULL, NULL), "region lookups out of range fail");
    for (i = 0; i < b.len; i++) {
        why[0] = 0;
        if (kvx_rdma_cm_parse(b.data, i, &m, why, sizeof why) != KVX_ERR_PROTOCOL || !why[0]) ok = 0;
    }
    CHECK(ok, "every prefix of a CONNECT is refused with a sentence");
    /* a wrong region count */
    ((uint8_t *)b.data)[b.len - SHAPE_BYTES - 4 * 10 - 4] ^= 1;
    CHECK(kvx_rdma_cm_parse(b.data, b.len, &m, why, sizeof why) == KVX_ERR_PROTOCOL &&
          strstr(why, "regions"), "a region count that does not match the length is refused: %s", why);
    kvx__buf_free(&b);
    memset(&b, 0, sizeof b);
    sample_connect(&b, 1024);
    CHECK(kvx_rdma_cm_parse(b.data, b.len, &m, why, sizeof why) == KVX_ERR_PROTOCOL &&
          strstr(why, "below 4096"), "regions under 4096 bytes are refused: %s", why);
    kvx__buf_free(&b);
    memset(&b, 0, sizeof b);
    sample_connect(&b, 4096);
    ((uint8_t *)b.data)[KVX_RDMA_CM_HEADER + 40 + 12 + 8] = 5; /* qp 1 port entry 5 of 2 */
    CHECK(kvx_rdma_cm_parse(b.data, b.len, &m, why, sizeof why) == KVX_ERR_PROTOCOL &&
          strstr(why, "port entry"), "a queue pair on a port entry that does not exist: %s", why);
    {
        static const kvx_rdma_cm_msg zero;
        CHECK(!memcmp(&m, &zero, sizeof m), "a refused message leaves nothing half-read "
              "(from %llx, %u queue pairs)", (unsigned long long)m.from, m.nqp);
    }
    ((uint8_t *)b.data)[KVX_RDMA_CM_HEADER + 40 + 12 + 8] = 1;
    ((uint8_t *)b.data)[b.len - SHAPE_BYTES + 28] = 1;
    CHECK(kvx_rdma_cm_parse(b.data, b.len, &m, why, sizeof why) == KVX_ERR_PROTOCOL &&
          strstr(why, "reserved"), "a nonzero reserved field: %s", why);
    ((uint8_t *)b.data)[b.len - SHAPE_BYTES + 28] = 0;
    ((uint8_t *)b.data)[KVX_RDMA_CM_HEADER + 36] = 1; /* 1 state buffer without its table */
    CHECK(kvx_rdma_cm_parse(b.data, b.len, &m, why, sizeof why) == KVX_ERR_PROTOCOL,
          "a state count without its region table is refused: %s", why);
    ((uint8_t *)b.data)[KVX_RDMA_CM_HEADER + 36] = 0;
    CHECK(kvx_rdma_cm_parse(b.data, KVX_RDMA_CM_MAX + 1, &m, why, sizeof why) == KVX_ERR_PROTOCOL,
          "a message over KVX_RDMA_CM_MAX (KVX_BOOT_MAX_MESSAGE) is refused unread");
    {
        char *big = (char *)calloc(1, b.len + 1);
        memcpy(big, b.data, b.len);
        CHECK(kvx_rdma_cm_parse(big, b.len + 1, &m, why, sizeof why) == KVX_ERR_PROTOCOL,
              "a CONNECT with a stray byte after its tables is refused: %s", why);
        free(big);
    }
    ((uint8_t *)b.data)[2] = 1;
    CHECK(kvx_rdma_cm_parse(b.data, b.len, &m, why, sizeof why) == KVX_ERR_PROTOCOL &&
          strstr(why, "reserved"), "a nonzero reserved header field: %s", why);
    kvx__buf_free(&b);

    /* HYBRID STATE: 2 state buffers after the aux buffer */
    memset(&b, 0, sizeof b);
    sample_connect_state(&b, 4096, 2);
    CHECK(kvx_rdma_cm_parse(b.data, b.len, &m, why, sizeof why) == KVX_OK && m.nstate == 2 &&
          m.state_type == KVX_STATE_MAMBA && kvx_rdma_cm_item(&m, 5) == 512 &&
          kvx_rdma_cm_item(&m, 6) == 0 && kvx_rdma_cm_region(&m, 1, 5, &base, &len, &rb, &nr, &keys) &&
          base == 0x60000000ull && len == 51200 && nr == 13 && kvx_rdma_cm_rkey(keys, 12) == 1512 &&
          !kvx_rdma_cm_region(&m, 0, 6, NULL, NULL, NULL, NULL, NULL),
          "CONNECT carries state buffers (regions, rkeys, item_len, type): %s", why);
    for (i = 0, ok = 1; i < b.len; i++)
        if (kvx_rdma_cm_parse(b.data, i, &m, why, sizeof why) != KVX_ERR_PROTOCOL) ok = 0;
    CHECK(ok, "every prefix of a CONNECT with state is refused");
    kvx__le_w32((uint8_t *)b.data + KVX_RDMA_CM_HEADER + 36, KVX_MAX_STATE + 1);
    CHECK(kvx_rdma_cm_parse(b.data, b.len, &m, why, sizeof why) == KVX_ERR_PROTOCOL &&
          strstr(why, "state buffers"), "more than KVX_MAX_STATE state buffers are refused: %s", why);
    kvx__le_w32((uint8_t *)b.data + KVX_RDMA_CM_HEADER + 36, 2);
    kvx__le_w32((uint8_t *)b.data + b.len - (32 + 8 * 6 + 8) + 24, 4);
    CHECK(kvx_rdma_cm_parse(b.data, b.len, &m, why, sizeof why) == KVX_ERR_PROTOCOL &&
          strstr(why, "state type"), "an unknown state type is refused: %s", why);
    kvx__le_w32((uint8_t *)b.data + b.len - (32 + 8 * 6 + 8) + 24, KVX_STATE_MAMBA);
    kvx__le_w64((uint8_t *)b.data + b.len - 16, 0);
    CHECK(kvx_rdma_cm_parse(b.data, b.len, &m, why, sizeof why) == KVX_ERR_PROTOCOL &&
          strstr(why, "item_len of buffer 5"), "a state item_len of 0 is refused: %s", why);
    kvx__buf_free(&b);
    memset(&b, 0, sizeof b);
    sample_connect(&b, 4096);
    kvx__le_w32((uint8_t *)b.data + b.len - SHAPE_BYTES + 24, KVX_STATE_SWA);
    CHECK(kvx_rdma_cm_parse(b.data, b.len, &m, why, sizeof why) == KVX_ERR_PROTOCOL &&
          strstr(why, "state type"), "a state type without state buffers is refused: %s", why);
    kvx__buf_free(&b);

    memset(&b, 0, sizeof b);
    kvx__rdma_cm_reject(&b, 9, 1, 2, KVX_ERR_LAYOUT_MISMATCH, "layouts differ");
    CHECK(kvx_rdma_cm_parse(b.data, b.len, &m, why, sizeof why) == KVX_OK &&
          m.type == KVX_RDMA_CM_REJECT && m.seq == 9 && m.result == KVX_ERR_LAYOUT_MISMATCH && m.reason_len == 14 &&
          !memcmp(m.reason, "layouts differ", 14), "REJECT carries the result and the reason");
    kvx__rdma_cm_begin(&b, KVX_RDMA_CM_READY, 1, 5, 6);
    CHECK(kvx_rdma_cm_parse(b.data, b.len, &m, why, sizeof why) == KVX_OK && m.type == KVX_RDMA_CM_READY,
          "READY parses: %s", why);
    kvx__buf_put32(&b, 0);
    CHECK(kvx_rdma_cm_parse(b.data, b.len, &m, why, sizeof why) == KVX_ERR_PROTOCOL,
          "a READY with extra bytes is refused");
    kvx__rdma_cm_begin(&b, (kvx_rdma_cm_type)9, 1, 5, 6);
    CHECK(kvx_rdma_cm_parse(b.data, b.len, &m, why, sizeof why) == KVX_ERR_PROTOCOL &&
          strstr(why, "type 9"), "an unknown type is refused: %s", why);
    kvx__buf_free(&b);
}

/* Byte flips, truncations and splices of valid messages: the parser
   either refuses them or returns tables the accessor walks in bounds. */
static void mutations(void) {
    kvx__buf a, b;
    uint64_t seed = 7;
    int iters = rt_quick() ? 20000 : 200000, i, accepted = 0, refused = 0;
    memset(&a, 0, sizeof a);
    memset(&b, 0, sizeof b);
    sample_connect_state(&a, 4096, 2);
    for (i = 0; i < iters; i++) {
        kvx_rdma_cm_msg m;
        size_t len = a.len, k;
        char why[KVX_ERROR_MAX];
        uint8_t *p;
        int flips = 1 + (int)(ex_mix(seed++) % 4);
        b.len = 0;
        kvx__buf_put(&b, a.data, a.len);
        p = (uint8_t *)b.data;
        for (k = 0; k < (size_t)flips; k++) {
            size_t at = (size_t)(ex_mix(seed++) % len);
            p[at] ^= (uint8_t)(1u << (ex_mix(seed++) % 8));
        }
        if (ex_mix(seed++) % 4 == 0) len = ex_mix(seed++) % (len + 1);
        if (kvx_rdma_cm_parse(b.data, len, &m, why, sizeof why) == KVX_OK) {
            uint32_t d, j, nr;
            const uint8_t *keys;
            uint64_t sum = 0;
            accepted++;
            for (d = 0; m.mr && d < m.ndev; d++)
                for (j = 0; j < m.nbuf + m.naux + m.nstate; j++)
                    if (kvx_rdma_cm_region(&m, d, j, NULL, NULL, NULL, &nr, &keys) && nr)
                        sum += kvx_rdma_cm_rkey(keys, nr - 1);
            for (j = 0; m.items && j < m.nbuf + m.naux + m.nstate; j++) sum += kvx_rdma_cm_item(&m, j);
            (void)sum;
        } else {
            refused++;
        }
        if (i % 4 == 0) { /* hellos too */
            kvx_rdma_hello h = sample_hello(), o;
            uint8_t hb[KVX_RDMA_HELLO_FIXED + 2 * KVX_RDMA_DEV_ENTRY];
            size_t hn = kvx_rdma_hello_encode(&h, hb, sizeof hb);
            size_t at = (size_t)(ex_mix(seed++) % hn);
            hb[at] ^= (uint8_t)(1u << (ex_mix(seed++) % 8));
            kvx_rdma_hello_parse(hb, hn, &o, why, sizeof why);
        }
    }
    CHECK(accepted + refused == iters, "%d mutated messages: %d accepted and walked, %d refused",
          iters, accepted, refused);
    kvx__buf_free(&a);
    kvx__buf_free(&b);
}

int main(void) {
    rt_name = "test_rdma_wire";
    setvbuf(stdout, NULL, _IOLBF, 0);
    hello_tests();
    cm_tests();
    mutations();
    return rt_finish();
}
