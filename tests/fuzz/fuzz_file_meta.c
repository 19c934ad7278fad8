/* Fuzzes what the file transport reads from disk written by another
   process: the JSON reader, the chunk meta / transfer_done checks, and the
   split of a file into its JSON line and its MAC line (format version 4, with its state fields). */
#define KVX_IMPLEMENTATION
#include "../../kvx_file.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    kvx_file_chunk_info m;
    kvx_file_done_info d;
    kvx__json_doc doc;
    char why[256];
    const char *text = (const char *)data;
    if (kvx_file_parse_meta(text, size, "fuzz", &m, why, sizeof why) == KVX_OK) {
        uint32_t i;
        uint64_t off = 0;
        /* accepted metas are internally consistent */
        for (i = 0; i < m.num_buffers; i++) {
            if (m.offsets[i] != off) __builtin_trap();
            off += m.item_lens[i] * m.num_pages;
        }
        if (off != m.bytes) __builtin_trap();
        kvx_file_chunk_info_free(&m);
    }
    if (kvx_file_parse_done(text, size, "fuzz", &d, why, sizeof why) == KVX_OK) {
        uint64_t row = 0;
        uint32_t i;
        /* accepted state fields are consistent: rows only with buffers, and
           state_bytes is exactly the rows' bytes */
        if (d.num_state > KVX_MAX_STATE || (d.state_count && !d.num_state)) __builtin_trap();
        for (i = 0; i < d.num_state; i++) row += d.state_item_lens[i];
        if (d.state_bytes != (uint64_t)d.state_count * row) __builtin_trap();
    }
    {
        size_t json_len = 0;
        int has_mac = 0;
        uint8_t mac[KVX_MAC_BYTES], want[KVX_MAC_BYTES];
        if (kvx__file_split(text, size, &json_len, &has_mac, mac)) {
            if (json_len > size) __builtin_trap();
            if (has_mac && size - json_len != KVX__FILE_MAC_LINE) __builtin_trap();
            kvx__file_mac((const uint8_t *)"fuzz-key-0123456789", 19, "transfer_done", text,
                          json_len, want);
            if (has_mac) (void)kvx__equal_ct(mac, want, sizeof mac);
        }
    }
    kvx__json_parse(&doc, NULL, text, size, 64);
    kvx__json_free(&doc);
    return 0;
}
