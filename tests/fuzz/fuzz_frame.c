/* Fuzzes the control-channel frame decoder the way a connection uses it: a
   byte stream cut into frames until one is refused or incomplete. Every
   accepted frame must lie inside the input, respect its limits, and
   re-encode to exactly the bytes it was decoded from. The first input byte
   also seeds a structured mode that builds valid frames (every type: hello
   keyed or not, with state buffers or not, room with pages and state
   indices, status, abort, ping, pong, auth, transport message) from the fuzz
   bytes and corrupts one field, so deep checks are reached without a
   corpus. */
#define KVX_IMPLEMENTATION
#include "../../kvx_boot.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void reencode(const kvx_boot_frame *f, const uint8_t *bytes, size_t used) {
    kvx_boot_frame g = *f;
    kvx__buf out;
    int32_t *pages = NULL;
    uint64_t *items = NULL;
    uint32_t i;
    memset(&out, 0, sizeof out);
    if (f->type == KVX_BOOT_FRAME_ROOM) {
        if (f->num_state > KVX_BOOT_MAX_STATE_INDICES) __builtin_trap();
        pages = (int32_t *)malloc((f->num_pages + f->num_state + 1) * sizeof *pages);
        if (!pages) return;
        for (i = 0; i < f->num_pages; i++) {
            pages[i] = kvx_boot_frame_page(f, i);
            if (pages[i] < 0) __builtin_trap();
        }
        for (i = 0; i < f->num_state; i++) { /* version 4: the decode's state indices */
            pages[f->num_pages + i] = kvx_boot_frame_state(f, i);
            if (pages[f->num_pages + i] < 0) __builtin_trap();
        }
        g.pages = pages;
        g.pages_le = NULL;
        g.state_idx = pages + f->num_pages;
        g.state_le = NULL;
    }
    if (f->type == KVX_BOOT_FRAME_HELLO) {
        const kvx_boot_hello *h = &f->hello;
        if (h->num_buffers > KVX_MAX_BUFFERS || h->num_aux > KVX_MAX_AUX || h->dtype_len > 63 ||
            h->transport_len > 31 || h->endpoint_len > KVX_BOOT_MAX_ENDPOINT ||
            h->version != KVX_BOOT_PROTOCOL_VERSION || h->head_begin > KVX_MAX_BUFFERS * 64u ||
            h->layer_begin > KVX_MAX_BUFFERS * 64u || h->num_state > KVX_MAX_STATE ||
            h->state_type > KVX_STATE_OTHER)
            __builtin_trap();
        items = (uint64_t *)malloc((h->num_buffers + h->num_aux + h->num_state + 1) * sizeof *items);
        if (!items) { free(pages); return; }
        for (i = 0; i < h->num_buffers; i++) items[i] = kvx__le_r64(h->item_lens_le + 8u * i);
        for (i = 0; i < h->num_aux; i++) items[h->num_buffers + i] = kvx__le_r64(h->aux_item_lens_le + 8u * i);
        for (i = 0; i < h->num_state; i++) /* version 4: the state buffers */
            items[h->num_buffers + h->num_aux + i] = kvx__le_r64(h->state_item_lens_le + 8u * i);
        g.hello.item_lens = items;
        g.hello.aux_item_lens = items + h->num_buffers;
        g.hello.state_item_lens = items + h->num_buffers + h->num_aux;
    }
    if (kvx__boot_frame_encode(&g, &out) != KVX_OK || out.len != used || memcmp(out.data, bytes, used))
        __builtin_trap();
    kvx__buf_free(&out);
    free(pages);
    free(items);
}

static void stream(const uint8_t *data, size_t size) {
    size_t off = 0;
    int frames = 0;
    while (off < size && frames < 64) {
        kvx_boot_frame f;
        size_t used = 0;
        char why[256];
        kvx_result r = kvx_boot_frame_decode(data + off, size - off, &f, &used, why, sizeof why);
        if (r != KVX_OK) {
            if (r != KVX_ERR_PROTOCOL || !why[0]) __builtin_trap();
            return;
        }
        if (r == KVX_OK && used && f.type == KVX_BOOT_FRAME_TRANSPORT &&
            (!f.message_len || f.message_len > KVX_BOOT_MAX_MESSAGE ||
             (const uint8_t *)f.message != data + off + 8 || f.message_len != used - 8))
            __builtin_trap();
        if (!used) {
            if (size - off >= 8 && f.body_len > KVX_BOOT_MAX_FRAME) __builtin_trap();
            return;
        }
        if (used > size - off || used < 8) __builtin_trap();
        reencode(&f, data + off, used);
        off += used;
        frames++;
    }
}

/* Builds one valid frame of the type the fuzz bytes pick, then flips one
   byte at a fuzz-chosen position. */
static void structured(const uint8_t *data, size_t size) {
    kvx_boot_frame f;
    kvx__buf b;
    uint8_t sel = size > 1 ? data[1] : 0;
    int32_t pages[16];
    uint64_t items[6] = {128, 256, 64, 8, 4096, 512};
    size_t i, n = size > 4 ? (size - 4) / 4 : 0;
    if (n > 16) n = 16;
    for (i = 0; i < n; i++) pages[i] = (int32_t)(kvx__le_r32(data + 4 + 4 * i) & 0x7fffffff);
    memset(&f, 0, sizeof f);
    memset(&b, 0, sizeof b);
    f.room = size > 3 ? kvx__le_r16(data + 2) : 1;
    switch (sel % 8) {
    case 0:
        f.type = KVX_BOOT_FRAME_ROOM;
        f.num_pages = (uint32_t)n / 2;
        f.pages = pages;
        f.num_state = (uint32_t)(n - n / 2); /* the rest as state indices */
        f.state_idx = pages + n / 2;
        f.aux_index = -1;
        f.peer_count = 1;
        break;
    case 1:
        f.type = KVX_BOOT_FRAME_STATUS;
        f.state = sel % 5;
        f.reason = (const char *)data;
        f.reason_len = (uint32_t)(size > 100 ? 100 : size);
        break;
    case 2:
        f.type = KVX_BOOT_FRAME_ABORT;
        f.reason = (const char *)data;
        f.reason_len = (uint32_t)(size > 100 ? 100 : size);
        break;
    case 3:
    case 4:
        f.type = sel % 8 == 3 ? KVX_BOOT_FRAME_PING : KVX_BOOT_FRAME_PONG;
        f.seq = size > 9 ? kvx__le_r64(data + 2) : sel;
        break;
    case 7:
        f.type = KVX_BOOT_FRAME_TRANSPORT;
        f.message = data;
        f.message_len = (uint32_t)size;
        break;
    case 5:
        if (size < KVX_BOOT_PROOF) return;
        f.type = KVX_BOOT_FRAME_AUTH;
        f.proof = data;
        break;
    default:
        f.type = KVX_BOOT_FRAME_HELLO;
        f.hello.role = 1 + (sel & 1);
        if ((sel & 2) && size >= KVX_BOOT_NONCE + KVX_BOOT_PROOF) { /* keyed hello */
            f.hello.flags = KVX_BOOT_HELLO_AUTH;
            f.hello.nonce = data;
            f.hello.proof = data + KVX_BOOT_NONCE;
        }
        f.hello.num_buffers = 3;
        f.hello.num_aux = 1;
        f.hello.head_begin = size > 5 ? data[5] : 0; /* version 3: the rank's slice */
        f.hello.layer_begin = size > 6 ? data[6] : 0;
        f.hello.item_lens = items;
        f.hello.aux_item_lens = items + 3;
        f.hello.num_state = sel & 4 ? 2 : 0; /* version 4: hybrid state buffers */
        f.hello.state_type = sel & 4 ? KVX_STATE_MAMBA : 0;
        f.hello.state_item_lens = items + 4;
        f.hello.dtype = "bfloat16";
        f.hello.dtype_len = 8;
        f.hello.transport = "tcp";
        f.hello.transport_len = 3;
        f.hello.endpoint = data;
        f.hello.endpoint_len = (uint32_t)(size > 200 ? 200 : size);
        break;
    }
    if (kvx__boot_frame_encode(&f, &b) != KVX_OK) __builtin_trap();
    stream((const uint8_t *)b.data, b.len); /* the valid frame itself */
    if (size > 2 && b.len) {
        size_t pos = (size_t)kvx__le_r16(data) % b.len;
        uint8_t *m = (uint8_t *)malloc(b.len);
        if (m) {
            memcpy(m, b.data, b.len);
            m[pos] ^= data[size - 1] ? data[size - 1] : 0x80;
            stream(m, b.len);
            free(m);
        }
    }
    kvx__buf_free(&b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    stream(data, size);
    if (size && (data[0] & 1)) structured(data, size);
    return 0;
}
