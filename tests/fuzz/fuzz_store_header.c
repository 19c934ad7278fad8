/* libFuzzer target: the block store's header parser
   (kvx_store_header_parse), which reads untrusted bytes from block files
   on local or shared storage.

   Input byte 0 selects a mode: odd = the rest is taken as a header as is;
   even = before parsing, the header CRC field is recomputed so the fuzzer
   gets past the CRC check into the field checks (sizes, counts, item_len
   sums and overflow). Invariants checked on success: the parsed sizes are
   within the documented bounds and every item_len read stays inside the
   buffer. Build:
     clang -g -O1 -fsanitize=fuzzer,address,undefined -I. \
         tests/fuzz/fuzz_store_header.c -o build/fuzz_store_header */
#define KVX_IMPLEMENTATION
#include "kvx_store.h"
#include <stdlib.h>
#include <string.h>

static void put32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); p[2] = (uint8_t)(v >> 16); p[3] = (uint8_t)(v >> 24);
}

static volatile uint32_t fuzz_sink; /* keeps the buf_crc[] reads (ASan checks them) */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    kvx_store_block_info info;
    char why[KVX_ERROR_MAX];
    uint8_t *buf;
    size_t n;
    if (size < 1) return 0;
    n = size - 1;
    buf = (uint8_t *)malloc(n ? n : 1); /* exact size: ASan sees any overread */
    if (!buf) return 0;
    memcpy(buf, data + 1, n);
    if (!(data[0] & 1) && n >= 20) {
        uint32_t hs = (uint32_t)buf[12] | (uint32_t)buf[13] << 8 | (uint32_t)buf[14] << 16 |
                      (uint32_t)buf[15] << 24;
        if (hs >= 20 && hs <= n) {
            uint32_t c;
            put32(buf + 16, 0);
            c = kvx_crc32c(0, buf, hs);
            put32(buf + 16, c);
        }
    }
    if (kvx_store_header_parse(buf, n, &info, why, sizeof why) == KVX_OK) {
        uint64_t sum = 0;
        uint32_t i;
        if (info.header_size > n || info.header_size > KVX_STORE_HEADER_MAX ||
            96 + 8ull * info.num_buffers > info.header_size || info.page_count == 0)
            abort();
        for (i = 0; i < info.num_buffers; i++) sum += kvx_store_block_item_len(&info, i);
        if (sum * info.page_count != info.data_len) abort();
        if (kvx_store_block_item_len(&info, info.num_buffers) != 0) abort();
        /* version 2: buf_crc[] inside the header, read in full */
        if ((info.version == 2) != (info.buf_crcs != NULL)) abort();
        if (info.version == 2 && 96 + 12ull * info.num_buffers > info.header_size) abort();
        for (i = 0; i < info.num_buffers; i++) fuzz_sink ^= kvx_store_block_buf_crc(&info, i);
        if (kvx_store_block_buf_crc(&info, info.num_buffers) != 0) abort();
    } else if (!why[0]) {
        abort(); /* every refusal says why */
    }
    free(buf);
    return 0;
}
