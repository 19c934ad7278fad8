/* kvx.h - v0.1.0 - move paged KV cache between inference engine instances

   Moves the paged KV cache of an LLM inference engine from the instance that
   ran prefill to the one that decodes, and to and from storage. This file
   is the core: results, poll states (SGLang's KVPoll), KV layouts, transfer
   plans, engine / sender / receiver, the backend interface, the `fake`
   transport, and the private helpers the other headers share.

   CONTENTS (section markers: search for ">>name")
     >>results >>poll states >>layout >>plan >>desc >>engine >>sender
     >>receiver >>backend interface >>utilities >>posix io; ">>impl: " private
     helpers, results, run-time library loader, clock, HMAC, shared helpers of
     the file-based headers, settings table, text buffer, json reader, layout,
     plan, engine and rooms, transport rooms, safe directories, fake
     transport, worker queue

   DO THIS
     In exactly one C or C++ file:
         #define KVX_IMPLEMENTATION
         #include "kvx.h"        (and kvx_file.h, kvx_tcp.h ... as needed)
     Every other file just includes the headers. Link with -lpthread. Every
     header's EXAMPLE compiles (tests/compile/examples.sh; "// given:" lines
     declare what an example takes from its caller).

   DATA PATH
     The core moves no KV byte: kvx_sender_send builds the chunk and hands it
     to the transport's sender_send hook; kvx_receiver_init gives the
     destination pages to its receiver_init hook. The `fake` transport
     (kvx__fake_send, kvx__fake_recv_init) moves nothing and succeeds.
     kvx_sender_send_layers hands over the parts of a chunk (LAYER-WISE
     SEND, at the declaration) to a transport that sets
     kvx_backend.layerwise, else the whole chunk with its last layer; a
     transport that moves a chunk as one packed region builds its plan with
     kvx_chunk_gather.

   EXAMPLE (prefill side, error handling shortened)
       // given: kvx_layout my_layout; const int32_t *pages; uint32_t num_pages;
       // given: int32_t aux_slot; void idle(void);
       kvx_engine_desc d = {0};
       d.role = KVX_ROLE_PREFILL;
       d.transport = "fake";
       d.layout = my_layout;            // see kvx_layout
       kvx_engine *e;  char why[KVX_ERROR_MAX];
       if (kvx_engine_create(&d, &e, why, sizeof why)) { puts(why); return; }
       kvx_room_desc rd = {0};  rd.room = 42;
       kvx_sender *s;  kvx_sender_create(e, &rd, &s);
       while (kvx_sender_poll(s) == KVX_POLL_BOOTSTRAPPING) idle();
       kvx_sender_init(s, num_pages, aux_slot);   // aux_slot -1: no aux rows
       kvx_sender_send(s, pages, num_pages);      // maybe in several chunks
       while (kvx_sender_poll(s) == KVX_POLL_TRANSFERRING) idle();
       if (kvx_sender_poll(s) == KVX_POLL_FAILED) puts(kvx_sender_error(s));
       kvx_sender_destroy(s);
       kvx_engine_destroy(e);

   COMPILE-TIME MACROS
     KVX_IMPLEMENTATION      emit the implementation in this translation unit
     KVX_STATIC              make every function static (one private copy per TU)
     KVX_API                 before every public declaration (extern; static)
     KVX_ASSERT(c)           internal invariants only, never input (assert)
     KVX_MAX_BUFFERS         most KV buffers in a layout (default 1024)
     KVX_MAX_AUX             most aux buffers in a layout (default 16)
     KVX_MAX_STATE           most state buffers in a layout (default 1024)
     KVX_MAX_PAGES           most pages in one request (default 1<<24)
     KVX_MAX_TIMEOUT_S       largest value of a timeout setting, seconds (1e6)
     KVX_MIN_AUTH_KEY, KVX_MAX_AUTH_KEY  bytes of a shared secret (16, 4096)

   ENVIRONMENT (read once in kvx_engine_create; the settings rule below)
     KVX_TRANSPORT            transport name                    (desc.transport)
     KVX_LOG_LEVEL            error|warn|info|debug     (desc.logger.level, warn)
     KVX_WAITING_TIMEOUT      seconds a receiver waits for its KV after init
                              (desc.waiting_timeout_s, 300; 0.001 .. 1e6)
     KVX_BOOTSTRAP_TIMEOUT    seconds a sender waits for its destination
                              (desc.bootstrap_timeout_s, 300; 0.001 .. 1e6)
     KVX_POLL_INTERVAL_US     progress thread tick, microseconds
                              (desc.poll_interval_us, 1000; 1 .. 1000000)
     KVX_AUTH_KEY             shared secret, 16..4096 bytes   (desc.auth_key, none)
     KVX_AUTH_KEY_FILE        file holding the secret; it must be owned by this
                              user with no group/other access (desc.auth_key_file)
     The settings rule (every header; one table per header, applied by
     kvx__settings_apply): each variable, when set and not empty, overrides
     its desc field. A field or variable of 0 (NULL) means the default; where
     0 is a value (a port, a switch on by default, a retry count) the field
     asks for it with KVX_ZERO (-1), the variable with 0. A value out of range
     or unparsable fails creation with KVX_ERR_BAD_CONFIG naming the variable
     and the field. kvx_engine_settings() shows the values in force.

   THREAD SAFETY
     An engine may be shared by threads; calls on one sender or receiver come
     from one thread at a time. kvx_*_poll never blocks (one atomic load).
     Progress runs on the engine's threads; kvx_engine_destroy joins them.

   FAILURES
     A room fails once: the first result and sentence ("room <id>: ...") are
     kept, and a room in SUCCESS or FAILED never changes state again. Every
     local failure (a refused argument, local I/O error, abort, timeout,
     engine destroy) goes to the transport's room_failed hook, which tells
     the peer at once; an abort or timeout of a finished room sends nothing.
     kvx_*_error() is "" unless the room failed; a call refused without
     failing the room (KVX_ERR_STATE) leaves its sentence in kvx_*_call_error().

   PARALLEL LAYOUTS
     Each rank describes only what it holds. MHA/GQA pages are token-major,
     as SGLang's pools: token t of page p of a buffer is the row at p *
     item_len + t * (item_len / page_size), holding this rank's
     num_kv_heads heads (head_begin, head_begin + 1, ...) of item_len /
     (page_size * num_kv_heads) bytes each. Buffers are K of layers
     layer_begin .. layer_begin + L - 1, then V of the same layers (L =
     num_buffers / 2); MLA: one buffer per layer, the same bytes on every TP
     rank (head_begin is ignored). A plan between two layouts (kvx_plan_pages,
     kvx_plan_scatter_from) moves what both hold: the layers in both ranges
     and, for MHA, the heads in both head ranges, as strided spans when the
     head ranges differ (one span per run of pages, never one per token).
     kvx_layout_overlap says whether two layouts share anything and whether
     the source carries the room's aux rows; kvx_mla_dummy says which MLA
     prefill ranks move no bytes. A decode room is complete when the union
     of what its prefill ranks sent covers every page byte it holds.

   HYBRID STATE
     A hybrid model (Mamba layers, sliding-window attention, DSA indexer)
     keeps state beside the KV pages: layout.state, num_state buffers whose
     row i is the item_len bytes at base + i * item_len (host or GPU, like
     the KV buffers), indexed by the request's state indices rather than its
     pages: Mamba conv/SSM state has one row per request slot (one index),
     sliding-window pages one row per window page (as SGLang's
     send(kv_indices, state_indices) and KVArgs.state_*). The prefill gives
     its indices with the last chunk (kvx_sender_send_state), the decode
     with its pages (kvx_receiver_init_state); the i-th source index's rows
     of every state buffer go to the i-th destination index's rows, before
     Success, from the contributor that writes the aux rows. Both sides
     must give the same number of indices (else the room fails saying both
     counts). kvx_layout_overlap refuses, with a sentence, state between
     ranks holding different layers (decode PP must equal prefill PP), and
     non-MLA state between ranks holding different heads (SGLang refuses
     sliding-window state with heterogeneous TP on non-MLA models; Mamba
     state is split by heads across TP ranks). MLA state is the same on
     every TP rank and moves like the latent.

   AUTHENTICATION
     With a shared secret (desc.auth_key or auth_key_file) the handshake
     transports prove it on every connection by challenge and response
     (kvx__auth_proof: HMAC-SHA-256 over both sides' fresh nonces) and the
     file transport authenticates what it writes (README: security model).

   LICENSE: MIT, see the end of this file.
*/
#ifndef KVX_H_INCLUDED
#define KVX_H_INCLUDED

/* The implementation needs POSIX and Linux interfaces (clock_gettime,
   pwritev, pthreads). Include the implementing file's kvx headers before
   any system header, or build that file with -D_GNU_SOURCE. */
#if defined(KVX_IMPLEMENTATION) && !defined(_GNU_SOURCE)
#define _GNU_SOURCE 1
#endif

#include <stddef.h>
#include <stdint.h>
#include <stdarg.h>

#define KVX_VERSION_MAJOR 0
#define KVX_VERSION_MINOR 1
#define KVX_VERSION_PATCH 0

#ifndef KVX_API
#ifdef KVX_STATIC
#if defined(__GNUC__) || defined(__clang__)
#define KVX_API static __attribute__((unused))
#else
#define KVX_API static
#endif
#else
#define KVX_API extern
#endif
#endif

#ifndef KVX_MAX_STATE
#define KVX_MAX_STATE 1024
#endif
#ifndef KVX_MAX_BUFFERS
#define KVX_MAX_BUFFERS 1024
#endif
#ifndef KVX_MAX_AUX
#define KVX_MAX_AUX 16
#endif
#ifndef KVX_MAX_PAGES
#define KVX_MAX_PAGES (1u << 24)
#endif
#define KVX_ERROR_MAX 320 /* bytes of a failure sentence, NUL included */
/* In a desc field where 0 is a value: ask for 0 (0 itself means "default"). */
#define KVX_ZERO (-1)

#ifndef KVX_MAX_TIMEOUT_S
#define KVX_MAX_TIMEOUT_S 1e6 /* largest timeout setting, seconds (11.5 days) */
#endif
#ifndef KVX_MIN_AUTH_KEY
#define KVX_MIN_AUTH_KEY 16 /* bytes of a shared secret, at least */
#endif
#ifndef KVX_MAX_AUTH_KEY
#define KVX_MAX_AUTH_KEY 4096
#endif

#if defined(__GNUC__) || defined(__clang__)
#define KVX_PRINTF(f, a) __attribute__((format(printf, f, a)))
#else
#define KVX_PRINTF(f, a)
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* >>results ------------------------------------------------------------- */

/* Negative codes in bands: -1xx argument, -2xx state, -3xx I/O,
   -4xx peer, -5xx transport, -6xx not compiled. */
typedef enum kvx_result {
    KVX_OK = 0,
    KVX_ERR_INVALID_ARGUMENT = -100,
    KVX_ERR_OUT_OF_RANGE = -101,   /* a page index or slot outside the pool */
    KVX_ERR_DUPLICATE = -102,      /* the same destination page twice */
    KVX_ERR_TOO_MANY_PAGES = -103, /* more pages sent than declared */
    KVX_ERR_LAYOUT_MISMATCH = -104,
    KVX_ERR_UNKNOWN_TRANSPORT = -105,
    KVX_ERR_BAD_CONFIG = -106,     /* an environment value that does not parse */
    KVX_ERR_STATE = -200,          /* call not allowed in the current state */
    KVX_ERR_TIMEOUT = -201,
    KVX_ERR_ABORTED = -202,
    KVX_ERR_IO = -300,
    KVX_ERR_NO_MEMORY = -301,
    KVX_ERR_NO_SPACE = -302,
    KVX_ERR_CORRUPT = -303,        /* checksum or format check failed */
    KVX_ERR_NOT_FOUND = -304,
    KVX_ERR_PERMISSION = -305,
    KVX_ERR_PEER = -400,
    KVX_ERR_PEER_LOST = -401,
    KVX_ERR_PROTOCOL = -402,
    KVX_ERR_TRANSPORT = -500,
    KVX_ERR_NOT_COMPILED = -600
} kvx_result;

/* Short constant name of a result ("KVX_ERR_TIMEOUT"); never NULL. */
KVX_API const char *kvx_result_str(kvx_result r);

/* >>poll states --------------------------------------------------------- */

/* Same numbers as SGLang's KVPoll. States only move forward; FAILED is
   sticky and may be entered from any non-terminal state. */
typedef enum kvx_poll {
    KVX_POLL_FAILED = 0,
    KVX_POLL_BOOTSTRAPPING = 1,
    KVX_POLL_WAITING_FOR_INPUT = 2,
    KVX_POLL_TRANSFERRING = 3,
    KVX_POLL_SUCCESS = 4
} kvx_poll;

KVX_API const char *kvx_poll_str(kvx_poll p); /* "Failed", "Success", ... */

/* >>layout -------------------------------------------------------------- */

typedef enum kvx_role { KVX_ROLE_PREFILL = 1, KVX_ROLE_DECODE = 2 } kvx_role;
typedef enum kvx_mem_kind { KVX_MEM_HOST = 0, KVX_MEM_CUDA = 1 } kvx_mem_kind;

/* One KV buffer of the pool: page p of this buffer is the item_len bytes at
   base + p * item_len. For MHA there is one buffer per layer for K and one
   per layer for V (order: K layer 0..N-1, then V layer 0..N-1, as SGLang);
   for MLA one per layer. */
typedef struct kvx_buffer {
    void *base;
    uint64_t length;   /* bytes; pages = length / item_len */
    uint64_t item_len; /* bytes of one page of this buffer */
    kvx_mem_kind mem;
    int device;        /* GPU ordinal when mem == KVX_MEM_CUDA */
} kvx_buffer;

/* An aux buffer: one row of item_len bytes per request slot (first output
   token ids, logprobs, hidden states, the room id...). Host memory. */
typedef struct kvx_aux_buffer {
    void *base;
    uint64_t length;
    uint64_t item_len;
} kvx_aux_buffer;

typedef struct kvx_layout {
    const kvx_buffer *buffers;
    uint32_t num_buffers;
    const kvx_aux_buffer *aux;
    uint32_t num_aux;
    uint32_t page_size;    /* tokens per page */
    uint32_t num_kv_heads; /* KV heads held by this rank (1 for MLA) */
    uint32_t dtype_size;   /* bytes per element */
    const char *dtype;     /* name, e.g. "bfloat16"; NULL = "" */
    int mla;               /* 1 when the layout is MLA (one buffer per layer) */
    /* Where this rank's slice sits in the model (see PARALLEL LAYOUTS);
       0 for a rank that holds everything. */
    uint32_t head_begin;   /* first KV head of the model held here (heterogeneous TP) */
    uint32_t layer_begin;  /* first layer held here (pipeline parallelism) */
    /* Hybrid models (HYBRID STATE): state buffers indexed by state indices;
       NULL / 0 for a model without state. */
    const kvx_buffer *state;
    uint32_t num_state;
    uint32_t state_type;   /* KVX_STATE_*: decides which combinations are refused */
} kvx_layout;

/* What the state buffers hold (kvx_layout.state_type). */
#define KVX_STATE_NONE 0  /* no state buffers */
#define KVX_STATE_MAMBA 1 /* Mamba conv/SSM state: one row per request slot */
#define KVX_STATE_SWA 2   /* sliding-window attention pages */
#define KVX_STATE_OTHER 3 /* any other indexed state (DSA/NSA indexer pages...) */

/* Checks a layout for internal consistency: at least one buffer, nonzero
   item_len and page_size, lengths that are whole pages, no NULL base with a
   nonzero length. Writes a sentence to why on failure. Thread-safe. */
KVX_API kvx_result kvx_layout_validate(const kvx_layout *l, char *why, size_t why_len);

/* 64-bit fingerprint of what both sides of a transfer must agree on: page
   size, dtype, heads, MLA flag, buffer count and every item_len (state
   buffers too, when there are any; not the
   bases or pool lengths, which differ between instances). */
KVX_API uint64_t kvx_layout_fingerprint(const kvx_layout *l);

/* Compares what the fingerprint covers. KVX_OK when equal; otherwise
   KVX_ERR_LAYOUT_MISMATCH and a sentence naming the first field that
   differs with both values ("page_size differs: ours 16, theirs 32"). */
KVX_API kvx_result kvx_layout_compare(const kvx_layout *ours, const kvx_layout *theirs,
                                      char *why, size_t why_len);

/* Pages the pool holds: the smallest length / item_len over the buffers. */
KVX_API uint64_t kvx_layout_num_pages(const kvx_layout *l);
/* Bytes of one page summed over every buffer. */
KVX_API uint64_t kvx_layout_page_bytes(const kvx_layout *l);
/* Rows (request slots) the aux buffers hold: smallest length / item_len. */
KVX_API uint64_t kvx_layout_num_aux_slots(const kvx_layout *l);
/* Rows the state buffers hold: smallest length / item_len (0 without state). */
KVX_API uint64_t kvx_layout_num_state_rows(const kvx_layout *l);
/* Bytes of one state index: item_len summed over the state buffers. */
KVX_API uint64_t kvx_layout_state_row_bytes(const kvx_layout *l);
/* Bytes of one request's aux rows: item_len summed over the aux buffers. */
KVX_API uint64_t kvx_layout_aux_row_bytes(const kvx_layout *l);
/* Copies slot `slot`'s aux rows (host memory) to a packed aux row of
   kvx_layout_aux_row_bytes bytes (to_rows 0), laid out as
   kvx_plan_aux_gather places it; or from one back into the slot (to_rows
   1). The caller has checked the slot (the core's init checks do). */
KVX_API void kvx_layout_aux_copy(const kvx_layout *l, int64_t slot, void *packed, int to_rows);

/* >>plan ---------------------------------------------------------------- */

/* Kinds of span: pages of layout.buffers[buffer], a row of
   layout.aux[buffer], or rows of layout.state[buffer]. */
#define KVX_SPAN_PAGES 0
#define KVX_SPAN_AUX 1
#define KVX_SPAN_STATE 2

/* Where kvx gets memory: the desc's allocator, also given to plans. */
typedef struct kvx_allocator {
    void *(*alloc_fn)(size_t size, void *user_data); /* NULL = malloc */
    void (*free_fn)(void *ptr, void *user_data);     /* NULL = free */
    void *user_data;
} kvx_allocator;

/* One copy of `length` bytes of buffer `buffer` (of the kind's array) to
   buffer `dst_buffer` of the destination. Offsets are relative to the start of that buffer on each side, or of the
   packed region for the packed side of a one-sided plan. Resolve a pool
   side with kvx_span_addr.
   row_len 0: the bytes are contiguous on both sides. row_len > 0: a strided
   span (a head slice of token rows): length / row_len rows of row_len
   bytes; row k starts at src_offset + k * src_pitch and goes to dst_offset
   + k * dst_pitch (a pitch equal to row_len is a contiguous side). Only
   plans between layouts that hold different heads have strided spans
   (kvx_plan.strided counts them); kvx_span_copy executes one on the host. */
typedef struct kvx_span {
    uint32_t buffer;
    uint32_t kind; /* KVX_SPAN_PAGES, KVX_SPAN_AUX or KVX_SPAN_STATE */
    uint64_t src_offset;
    uint64_t dst_offset;
    uint64_t length;     /* bytes moved by the span (all rows) */
    uint32_t dst_buffer; /* the destination's buffer: equal to buffer unless the two
                            sides hold different layer ranges (pipeline parallelism) */
    uint32_t row_len;    /* 0, or bytes of one row of a strided span */
    uint32_t src_pitch;  /* strided: bytes between row starts at the source */
    uint32_t dst_pitch;  /* strided: bytes between row starts at the destination */
} kvx_span;

/* COMPACT PLANS. Every buffer of a page plan moves the same runs of
   consecutive pages (in units of its own item_len), so a compact plan keeps
   one run list for the request and one kvx_plan_buf per buffer moved,
   instead of a span per (buffer, run): 256 scattered pages of a 32-layer
   model are 256 runs and 64 buffer entries, not 16,384 spans. Span k of
   the page spans is buffer entry k / nruns over run k % nruns;
   kvx_plan_span computes it, or an executor walks bufs x runs itself. */
typedef struct kvx_plan_run {
    uint32_t src;   /* first source page, or position in the packed region */
    uint32_t dst;   /* first destination page, or position */
    uint32_t pages; /* consecutive on both sides */
} kvx_plan_run;

typedef struct kvx_plan_buf {
    uint32_t buffer, dst_buffer;            /* as the span's */
    uint32_t row_len, src_pitch, dst_pitch; /* as the span's: row_len 0, or a head slice */
    uint64_t src_base, dst_base; /* offset of page (position) 0 on each side */
    uint64_t src_step, dst_step; /* bytes from one page (position) to the next: item_len */
    uint64_t page_bytes;         /* bytes one page moves: item_len, or page_size x row_len */
} kvx_plan_buf;

/* A growable list of spans. Zero-initialise; reuse across calls (the
   storage is kept); release with kvx_plan_free. Spans are ordered buffer by
   buffer, then by position in the request; aux spans come last. A builder
   grows `spans` only beyond `capacity`: a caller may point spans at its own
   storage of `capacity` spans (and then never calls kvx_plan_free, and
   never sets compact). Read span k with kvx_plan_span, which serves both
   forms; `spans` alone holds only spans[paged..count) at spans[0..). */
typedef struct kvx_plan {
    kvx_span *spans;
    size_t count;          /* spans in the plan, the compact page spans included */
    size_t capacity;
    uint64_t total_bytes;
    uint64_t packed_bytes; /* bytes of the packed side of a one-sided plan */
    size_t strided;        /* spans with row_len > 0 */
    int32_t *scratch;      /* internal: duplicate detection */
    size_t scratch_cap;
    char error[KVX_ERROR_MAX];
    const kvx_allocator *allocator; /* set once: spans and scratch grow through it
                                       (NULL = libc); kvx_plan_free keeps it */
    /* in, kept by the builders (LAYER-WISE SEND): when layer_end > 0, the
       page plans (kvx_plan_pages, _gather, _scatter, _scatter_from) get
       spans only for the source buffers of model layers [layer_begin,
       layer_end); packed offsets stay those of the whole request, so
       packed_bytes is the whole region's. kvx_plan_free clears it. */
    uint32_t layer_begin, layer_end;
    /* in (COMPACT PLANS): 1 = the page builders fill runs and bufs instead
       of spans; aux and state spans appended after them still go to
       `spans`. Set once: kvx_plan_free keeps it. */
    int compact;
    size_t paged;         /* compact: spans [0, paged) are nbufs x nruns page spans */
    kvx_plan_run *runs;   /* compact: the request's runs */
    size_t nruns, runs_cap;
    kvx_plan_buf *bufs;   /* compact: one entry per buffer moved, in span order */
    size_t nbufs, bufs_cap;
} kvx_plan;

/* Span k (< p->count) of a plan: a compact page span is computed into
   *tmp and tmp returned; else &p->spans[k - p->paged]. Thread-safe on a
   plan no one is building. */
KVX_API const kvx_span *kvx_plan_span(const kvx_plan *p, size_t k, kvx_span *tmp);

/* Two-sided plan: page src_pages[i] of the source pool goes to page
   dst_pages[i] of the destination pool, for every buffer. Runs where both
   sides are consecutive become one span. Fails with KVX_ERR_OUT_OF_RANGE
   (negative index or beyond either pool), KVX_ERR_DUPLICATE (a destination
   page twice), KVX_ERR_LAYOUT_MISMATCH (item_len or buffer count differ);
   plan->error then says which index. n == 0 gives an empty plan. */
KVX_API kvx_result kvx_plan_pages(kvx_plan *p, const kvx_layout *src, const int32_t *src_pages,
                                  const kvx_layout *dst, const int32_t *dst_pages, size_t n);

/* One-sided gather: pool pages -> a packed region laid out buffer-major:
   buffer b's pages start at n * (sum of item_len of buffers before b), page
   i of the request at + i * item_len. Source pages may repeat. */
KVX_API kvx_result kvx_plan_gather(kvx_plan *p, const kvx_layout *l, const int32_t *pages,
                                   size_t n);

/* One-sided scatter: the packed region (as above) -> pool pages. A
   destination page may not repeat. */
KVX_API kvx_result kvx_plan_scatter(kvx_plan *p, const kvx_layout *l, const int32_t *pages,
                                    size_t n);

/* Appends the aux rows of slot src_slot of src to slot dst_slot of dst:
   one KVX_SPAN_AUX span per aux buffer, offsets slot * item_len. Fails with
   KVX_ERR_OUT_OF_RANGE (a slot outside either layout's aux slots),
   KVX_ERR_LAYOUT_MISMATCH (aux count or an item_len differ), with
   plan->error saying which; the plan then keeps its earlier spans. */
KVX_API kvx_result kvx_plan_aux(kvx_plan *p, const kvx_layout *src, int32_t src_slot,
                                const kvx_layout *dst, int32_t dst_slot);

/* One-sided forms, appended to a gather (scatter) plan: slot `slot`'s aux
   rows -> (<-) the packed region right after what it holds: the packed
   region of kvx_plan_gather(p, l, pages, n) then kvx_plan_aux_gather(p, l,
   slot) is n * kvx_layout_page_bytes(l) bytes of pages (as above), then aux
   buffer 0's row, aux buffer 1's row ... (kvx_layout_aux_row_bytes bytes);
   packed_bytes covers both. n may be 0 for an aux row alone. Errors as
   kvx_plan_aux. */
KVX_API kvx_result kvx_plan_aux_gather(kvx_plan *p, const kvx_layout *l, int32_t slot);
KVX_API kvx_result kvx_plan_aux_scatter(kvx_plan *p, const kvx_layout *l, int32_t slot);

/* Appends the state rows (HYBRID STATE): for every state buffer, row
   src_idx[i] of src -> row dst_idx[i] of dst, consecutive runs as one
   KVX_SPAN_STATE span. Fails with KVX_ERR_OUT_OF_RANGE (an index outside
   either side's state rows), KVX_ERR_DUPLICATE (a destination index
   twice), KVX_ERR_LAYOUT_MISMATCH (state count or an item_len differ),
   plan->error saying which; the plan then keeps its earlier spans. n == 0
   appends nothing. One-sided forms: the packed region right after what
   the plan holds (pages, aux) gets state buffer 0's n rows, then buffer
   1's ... (n * kvx_layout_state_row_bytes bytes); packed_bytes covers it. */
KVX_API kvx_result kvx_plan_state(kvx_plan *p, const kvx_layout *src, const int32_t *src_idx,
                                  const kvx_layout *dst, const int32_t *dst_idx, size_t n);
KVX_API kvx_result kvx_plan_state_gather(kvx_plan *p, const kvx_layout *l, const int32_t *idx,
                                         size_t n);
KVX_API kvx_result kvx_plan_state_scatter(kvx_plan *p, const kvx_layout *l, const int32_t *idx,
                                          size_t n);

/* Address of a span's source (dst 0) or destination (dst 1) in layout l:
   the base of buffers[buffer], aux[buffer] or state[buffer] (by kind) plus the offset. Only
   for a pool side; the packed side's offset is from the packed region's
   start. NULL when the span names no buffer of l. Thread-safe. */
KVX_API void *kvx_span_addr(const kvx_layout *l, const kvx_span *s, int dst);

/* One-sided scatter from a packed region that another layout gathered
   (kvx_plan_gather on `packer`, same n; only packer's shape is read, not its
   bases): packed -> l's pages, moving what both hold (PARALLEL LAYOUTS).
   Errors as kvx_plan_pages. */
KVX_API kvx_result kvx_plan_scatter_from(kvx_plan *p, const kvx_layout *l, const int32_t *pages,
                                         size_t n, const kvx_layout *packer);

/* What a plan from src to dst would move (PARALLEL LAYOUTS): KVX_OK with
   *bytes_per_page (page bytes of dst that src supplies; 0 = nothing shared)
   and *sends_aux (1 when src holds dst's last layer and dst's first head, or
   the MLA latent: the contributor that writes the room's aux rows), or
   KVX_ERR_LAYOUT_MISMATCH with a sentence when the two cannot be combined
   (page size, dtype, MLA, bytes per head, buffers that are not K/V pairs,
   state buffers that differ or cannot move between the two: HYBRID STATE).
   Either out pointer may be NULL. Thread-safe. */
KVX_API kvx_result kvx_layout_overlap(const kvx_layout *src, const kvx_layout *dst,
                                      uint64_t *bytes_per_page, int *sends_aux, char *why,
                                      size_t why_len);

/* MLA with prefill TP > decode TP: the latent is the same on every prefill
   rank, so of the prefill_tp / decode_tp ranks that map onto one decode
   rank only the first sends; the others are dummies that complete without
   bytes (SGLang's rule). 1 when prefill rank `tp_rank` is a dummy. */
KVX_API int kvx_mla_dummy(int mla, int prefill_tp, int prefill_tp_rank, int decode_tp);

/* Executes span s on the host: copies its bytes (every row of a strided
   span) from src_base + src_offset to dst_base + dst_offset, where the
   bases are those of the span's buffer on each side (or of the packed
   region). */
KVX_API void kvx_span_copy(void *dst_base, const void *src_base, const kvx_span *s);

/* Checks page indices against a pool of `pool_pages` pages (and that none
   repeats when no_duplicates). Used by the plan builders and by senders and
   receivers before anything is queued. */
KVX_API kvx_result kvx_pages_check(kvx_plan *scratch, const int32_t *pages, size_t n,
                                   uint64_t pool_pages, int no_duplicates, const char *what);

KVX_API void kvx_plan_free(kvx_plan *p);

/* >>desc ---------------------------------------------------------------- */

typedef enum kvx_log_level {
    KVX_LOG_ERROR = 1,
    KVX_LOG_WARN = 2,
    KVX_LOG_INFO = 3,
    KVX_LOG_DEBUG = 4
} kvx_log_level;

/* room is 0 when a line concerns no room. Called from any engine thread. */
typedef void (*kvx_log_fn)(void *user_data, kvx_log_level level, const char *subsystem,
                           uint64_t room, const char *message);

typedef struct kvx_logger {
    kvx_log_fn func;    /* NULL = one line on stderr */
    void *user_data;
    kvx_log_level level; /* 0 = KVX_LOG_WARN (or KVX_LOG_LEVEL) */
} kvx_logger;

/* Settings of the file transport (kvx_file.h). 0 / NULL = default. */
typedef struct kvx_file_desc {
    const char *dir;      /* KVX_FILE_DIR, "/tmp/kvx_file-<uid>" (private, 0700) */
    double timeout_s;     /* KVX_FILE_TIMEOUT, 300: receiver waits for transfer_done */
    int fsync;            /* KVX_FILE_FSYNC, 0: 1 = fsync files and directory */
    int keep;             /* KVX_FILE_KEEP, 0: 1 = keep room directories */
    int io_threads;       /* KVX_FILE_IO_THREADS, 4 */
    double ttl_s;         /* KVX_FILE_TTL, 3600: stale rooms removed at start */
    uint32_t stripe_bytes; /* KVX_FILE_STRIPE, 16 MiB: parallel I/O unit */
    int shared;           /* KVX_FILE_SHARED, 0: 1 = the directory's group may use
                             the rooms (0770/0660); 0 = this user only */
    double settle_s;      /* KVX_FILE_SETTLE, 2: how long a receiver keeps looking
                             for a file that transfer_done lists but this node
                             does not see yet (weakly consistent shared fs) */
    int prefill_tp;       /* KVX_FILE_PREFILL_TP, 0 = this engine's tp_size: decode: the
                             prefill instance's attention TP size (kvx_file.h) */
    int prefill_pp;       /* KVX_FILE_PREFILL_PP, 0 = this engine's pp_size: decode */
    int decode_tp;        /* KVX_FILE_DECODE_TP, 0 = this engine's tp_size: prefill (MLA
                             dummies) */
} kvx_file_desc;

/* Settings of the bootstrap handshake (kvx_boot.h). 0 / NULL = default. */
typedef struct kvx_boot_desc {
    const char *host;          /* KVX_BOOTSTRAP_HOST: prefill listens here */
    int port;                  /* KVX_BOOTSTRAP_PORT, 8998; -1 = ephemeral
                                  (in the environment 0 = ephemeral) */
    double heartbeat_interval_s; /* KVX_HEARTBEAT_INTERVAL, 5 (>= 0.1; SGLang's minimum is 2) */
    int heartbeat_max_failure; /* KVX_HEARTBEAT_MAX_FAILURE, 2 */
    const char *rank_ip;       /* KVX_BOOTSTRAP_RANK_IP: the address this rank
                                  registers (default: the one the peer sees) */
    int tp_size, tp_rank, dp_size, dp_rank, pp_size, pp_rank, cp_size, cp_rank;
    const char *load_balance_method; /* KVX_LOAD_BALANCE_METHOD, "follow_bootstrap_room":
                                  prefill: SGLang's --load-balance-method (kvx_boot.h) */
    const char *server;        /* KVX_BOOTSTRAP_SERVER: prefill: "host:port" of a bootstrap
                                  server run elsewhere (SGLang's own): every rank, rank 0
                                  included, registers with it and none serves (kvx_boot.h) */
} kvx_boot_desc;

/* Settings of the tcp transport (kvx_tcp.h). */
typedef struct kvx_tcp_desc {
    int streams;       /* KVX_TCP_STREAMS, 4 (1 .. KVX_TCP_MAX_STREAMS) */
    const char *host;  /* KVX_TCP_HOST: address the data listener binds */
    int segment;       /* KVX_TCP_SEGMENT, 4 MiB: bytes per data frame */
    int sockbuf;       /* KVX_TCP_SOCKBUF, the kernel's: SO_SNDBUF/SO_RCVBUF bytes */
    double timeout_s;  /* KVX_TCP_TIMEOUT, 60: a stream that moves nothing this long fails */
} kvx_tcp_desc;

/* Settings of the rdma transport (kvx_rdma.h). */
typedef struct kvx_rdma_desc {
    const char *devices; /* KVX_IB_DEVICE: comma-separated, NULL = every active port */
    int gid_index;       /* KVX_IB_GID_INDEX, auto; KVX_ZERO = index 0 */
    int qps;             /* KVX_IB_QPS, 2: queue pairs per peer and port */
    const char *library; /* KVX_IBVERBS_LIBRARY, "libibverbs.so.1" */
    int max_msg;         /* KVX_IB_MAX_MSG, 1 MiB: largest work request */
    int signal_every;    /* KVX_IB_SIGNAL_EVERY, 16: signalled completion period */
    int send_depth;      /* KVX_IB_SEND_DEPTH, 1024 */
    int recv_depth;      /* KVX_IB_RECV_DEPTH, 512 */
    int timeout;         /* KVX_IB_TIMEOUT, 14: ack timeout exponent; KVX_ZERO = none */
    int retry_cnt;       /* KVX_IB_RETRY_CNT, 7; KVX_ZERO = no retry */
    int rnr_retry;       /* KVX_IB_RNR_RETRY, 7; KVX_ZERO = no retry */
    int sl;              /* KVX_IB_SL, 0: service level */
    int traffic_class;   /* KVX_IB_TRAFFIC_CLASS, 0 */
    int relaxed_ordering; /* KVX_IB_RELAXED_ORDERING, on; KVX_ZERO = off */
    double connect_timeout_s; /* KVX_IB_CONNECT_TIMEOUT, 10 */
    double fence_timeout_s;   /* KVX_IB_FENCE_TIMEOUT, 2 */
} kvx_rdma_desc;

typedef struct kvx_backend kvx_backend;

/* Access to KV buffers that are not host memory (mem != KVX_MEM_HOST).
   kvx_cuda.h fills one for GPU memory (kvx_cuda_mem_ops); transports that
   read or write buffers with the CPU (file, tcp, the block store) move such
   pages through pinned host staging buffers with it, and the rdma transport
   registers them with the NIC through dmabuf_fd. */
typedef struct kvx_copy {
    void *buf_ptr;  /* address inside a KV buffer (base + offset) */
    void *host;     /* host memory, from host_alloc */
    uint64_t len;
    int device;     /* kvx_buffer.device */
} kvx_copy;
typedef struct kvx_mem_ops {
    /* Copies n pieces, buffer -> host when to_host, else host -> buffer, and
       returns when all are done. Thread-safe. */
    kvx_result (*copy)(void *ctx, int to_host, const kvx_copy *c, size_t n, char *why,
                       size_t why_len);
    void *(*host_alloc)(void *ctx, size_t size); /* pinned staging memory, NULL = failure */
    void (*host_free)(void *ctx, void *p);
    /* A dma-buf file descriptor for [ptr, ptr+len) of `device` and the
       offset of ptr inside it, for ibv_reg_dmabuf_mr; the caller closes
       *fd. NULL = none (such buffers cannot be registered with a NIC).
       Thread-safe. */
    kvx_result (*dmabuf_fd)(void *ctx, void *ptr, uint64_t len, int device, int *fd,
                            uint64_t *offset, char *why, size_t why_len);
    void *ctx;
} kvx_mem_ops;

typedef struct kvx_engine_desc {
    kvx_role role;
    const char *transport;      /* "fake", "file", ... (KVX_TRANSPORT) */
    const kvx_backend *backend; /* or give the backend table directly */
    kvx_layout layout;          /* copied; the memory it points to is not */
    kvx_allocator allocator;
    kvx_logger logger;
    double waiting_timeout_s;   /* KVX_WAITING_TIMEOUT, 300 */
    double bootstrap_timeout_s; /* KVX_BOOTSTRAP_TIMEOUT, 300 */
    uint32_t poll_interval_us;  /* KVX_POLL_INTERVAL_US, 1000 */
    int rank;                   /* this process's rank, for names and logs */
    const char *bootstrap_addr; /* prefill: where to serve; decode: default peer */
    kvx_mem_ops mem;            /* for non-host buffers; copy == NULL = none */
    const char *auth_key;       /* KVX_AUTH_KEY: shared secret (>= 16 bytes), NULL = none */
    const char *auth_key_file;  /* KVX_AUTH_KEY_FILE: file holding the secret (owned by
                                   this user, no group/other access) */
    kvx_file_desc file;
    kvx_boot_desc boot;
    kvx_tcp_desc tcp;
    kvx_rdma_desc rdma;
} kvx_engine_desc;

/* Per-room options. Zero = defaults. */
typedef struct kvx_room_desc {
    uint64_t room;              /* chosen by the router; any value */
    const char *bootstrap_addr; /* receiver: prefill's "host:port" (NULL = engine's) */
} kvx_room_desc;

/* >>engine -------------------------------------------------------------- */

typedef struct kvx_engine kvx_engine;
typedef struct kvx_room kvx_room; /* what a transport sees of a sender or receiver */
typedef struct kvx_sender kvx_sender;
typedef struct kvx_receiver kvx_receiver;

/* Creates an engine. On failure *out is NULL and, when why is not NULL, a
   sentence is written there (bad layout, unknown transport, a KVX_*
   variable that does not parse, a transport that cannot start). May block
   (transport start-up). Thread-safe. */
KVX_API kvx_result kvx_engine_create(const kvx_engine_desc *desc, kvx_engine **out,
                                     char *why, size_t why_len);

/* Joins every engine thread and frees everything. Senders and receivers
   should be destroyed first; any left are failed and freed here. NULL ok. */
KVX_API void kvx_engine_destroy(kvx_engine *e);

KVX_API const kvx_layout *kvx_engine_layout(const kvx_engine *e);
KVX_API const kvx_engine_desc *kvx_engine_settings(const kvx_engine *e); /* env applied */
KVX_API const char *kvx_engine_transport(const kvx_engine *e);
/* The shared secret from desc.auth_key / auth_key_file / KVX_AUTH_KEY /
   KVX_AUTH_KEY_FILE, or NULL (and *len 0) when the engine has none. */
KVX_API const uint8_t *kvx_engine_auth_key(const kvx_engine *e, size_t *len);

/* Process-wide registry of transports that can be named in desc.transport.
   "fake" is always known. Thread-safe; registering twice is harmless. */
KVX_API kvx_result kvx_transport_register(const kvx_backend *b);
KVX_API const kvx_backend *kvx_transport_find(const char *name);

/* Engine-wide counters (monotonic). */
typedef struct kvx_engine_stats {
    uint64_t rooms_created, rooms_succeeded, rooms_failed;
    uint64_t bytes; /* KV + aux bytes moved by finished rooms */
} kvx_engine_stats;
KVX_API void kvx_engine_stats_get(const kvx_engine *e, kvx_engine_stats *out);

/* >>sender (prefill side) ------------------------------------------------ */

/* Creates the sender of one room. Starts in BOOTSTRAPPING (transports
   without a handshake move to WAITING_FOR_INPUT at once). Errors:
   KVX_ERR_INVALID_ARGUMENT, KVX_ERR_STATE (engine is not prefill),
   KVX_ERR_NO_MEMORY. Does not block. */
KVX_API kvx_result kvx_sender_create(kvx_engine *e, const kvx_room_desc *d, kvx_sender **out);

/* Declares the request: num_pages KV pages in total and the aux slot the
   receiver's aux rows come from (-1 = no aux). Only in WAITING_FOR_INPUT,
   once. A failed call (other than KVX_ERR_STATE) fails the room too. */
KVX_API kvx_result kvx_sender_init(kvx_sender *s, uint32_t num_pages, int32_t aux_index);

/* Sends the next chunk of pages (indices into this side's pool). Call as
   chunked prefill produces pages; the chunk that reaches the declared total
   is the last and aux goes with it. Errors: KVX_ERR_STATE (before init,
   after the last chunk, or failed), KVX_ERR_TOO_MANY_PAGES,
   KVX_ERR_OUT_OF_RANGE. An argument error fails the room. Does not block on
   I/O: the transport works on its own threads. */
KVX_API kvx_result kvx_sender_send(kvx_sender *s, const int32_t *pages, uint32_t n);

/* LAYER-WISE SEND: sends the pages of one chunk for the layers
   [layer_begin, layer_end) only, so KV moves while prefill computes the next
   layers. Layer numbers are the model's, as in kvx_layout.layer_begin: this
   rank holds layers layer_begin .. layer_begin + L - 1 of its layout (L =
   num_buffers / 2 K/V pairs, or num_buffers for MLA). A chunk sent layer-
   wise opens with its first layer and closes when a call reaches its last;
   every call of the chunk passes the same pages (the same n and indices),
   and each call's range starts where the previous ended. The chunk that
   closes with the declared total of pages is the room's last: its last
   layer completes the room, with the aux rows. kvx_sender_send is the
   all-layer case and may be mixed with layer-wise chunks, but not while a
   layer-wise chunk is open. The receiver sees Success exactly as for
   kvx_sender_send: every layer of every chunk, then aux.
   Fails the room, with a sentence: a range that is empty or outside this
   rank's layers (KVX_ERR_OUT_OF_RANGE); a range that does not start where
   the chunk stands (a layer sent twice, or layers skipped:
   KVX_ERR_INVALID_ARGUMENT); other pages than the open chunk's
   (KVX_ERR_INVALID_ARGUMENT); a layout without K/V pairs or MLA; a layout
   with state buffers (HYBRID STATE rows go with kvx_sender_send_state, an
   all-layer last chunk). KVX_ERR_STATE as kvx_sender_send, and
   kvx_sender_send while a layer-wise chunk is open. */
KVX_API kvx_result kvx_sender_send_layers(kvx_sender *s, const int32_t *pages, uint32_t n,
                                          uint32_t layer_begin, uint32_t layer_end);

/* kvx_sender_send of the last chunk with the request's state indices
   (HYBRID STATE; SGLang's send(kv_indices, state_indices)): rows of this
   side's state buffers, moved with the aux rows. The chunk must reach the
   declared total (else KVX_ERR_STATE, the room untouched); an index
   outside the state rows, or any index on a layout without state buffers,
   fails the room (KVX_ERR_OUT_OF_RANGE). num_state 0 is kvx_sender_send. */
KVX_API kvx_result kvx_sender_send_state(kvx_sender *s, const int32_t *pages, uint32_t n,
                                         const int32_t *state_indices, uint32_t num_state);

KVX_API kvx_poll kvx_sender_poll(const kvx_sender *s);    /* atomic load */
/* Blocks until the room is in `state` or a later one, or FAILED, or until
   timeout_ms pass (< 0: no limit); returns the state then. For an engine
   or tool that would rather block than poll. Any thread; the room must not
   be destroyed while a thread waits on it. */
KVX_API kvx_poll kvx_sender_wait(const kvx_sender *s, kvx_poll state, int timeout_ms);
KVX_API kvx_result kvx_sender_result(const kvx_sender *s); /* KVX_OK unless failed */
KVX_API const char *kvx_sender_error(const kvx_sender *s); /* "" unless failed */
/* The sentence of the last call refused with an error that did not fail
   the room (KVX_ERR_STATE: init twice, send after the last chunk...); ""
   when none. It never becomes the room's failure reason. */
KVX_API const char *kvx_sender_call_error(const kvx_sender *s);
KVX_API uint64_t kvx_sender_room(const kvx_sender *s);
/* Fails the room with KVX_ERR_ABORTED and tells the peer where the
   transport can. Thread-safe. */
KVX_API void kvx_sender_abort(kvx_sender *s, const char *reason);
/* Cancels what is still queued and releases the sender. NULL ok. May wait
   briefly for an in-flight write to finish touching the pool pages. */
KVX_API void kvx_sender_destroy(kvx_sender *s);

/* >>receiver (decode side) ----------------------------------------------- */

KVX_API kvx_result kvx_receiver_create(kvx_engine *e, const kvx_room_desc *d,
                                       kvx_receiver **out);
/* Gives the destination pages (indices into this side's pool, no repeats)
   and the aux slot (-1 = none). Only in WAITING_FOR_INPUT, once. Moves to
   TRANSFERRING; SUCCESS means every KV byte and aux row is in place. */
KVX_API kvx_result kvx_receiver_init(kvx_receiver *r, const int32_t *pages, uint32_t n,
                                     int32_t aux_index);
/* kvx_receiver_init with the rows of this side's state buffers the
   request's state goes to (HYBRID STATE; no repeats, inside the state
   rows; the prefill gives as many). SUCCESS then also means every state
   row is in place. */
KVX_API kvx_result kvx_receiver_init_state(kvx_receiver *r, const int32_t *pages, uint32_t n,
                                           int32_t aux_index, const int32_t *state_indices,
                                           uint32_t num_state);
KVX_API kvx_poll kvx_receiver_poll(const kvx_receiver *r);
KVX_API kvx_poll kvx_receiver_wait(const kvx_receiver *r, kvx_poll state, int timeout_ms);
KVX_API kvx_result kvx_receiver_result(const kvx_receiver *r);
KVX_API const char *kvx_receiver_error(const kvx_receiver *r); /* "" unless failed */
KVX_API const char *kvx_receiver_call_error(const kvx_receiver *r);
KVX_API uint64_t kvx_receiver_room(const kvx_receiver *r);
KVX_API void kvx_receiver_abort(kvx_receiver *r, const char *reason);
/* Waits for in-flight writes into the pool pages to stop, then releases.
   After it returns no byte of this room is written into the pool. NULL ok. */
KVX_API void kvx_receiver_destroy(kvx_receiver *r);

/* >>backend interface (for transport authors) ---------------------------- */

/* One chunk handed to a transport by kvx_sender_send. The transport owns it
   and releases it with kvx_chunk_free. */
typedef struct kvx_chunk {
    uint32_t index;      /* 0, 1, 2 ... */
    uint32_t first_page; /* pages of the request before this chunk */
    uint32_t num_pages;
    uint32_t total_pages; /* declared by kvx_sender_init */
    int is_last;
    int32_t aux_index;    /* sender's aux slot (-1 = none), meaningful on the last */
    int32_t *pages;       /* copy of the caller's indices, already range-checked */
    kvx_plan gather;      /* pool pages -> packed chunk (see kvx_plan_gather): empty
                             until kvx_chunk_gather builds it */
    int gather_ready;     /* 1 once kvx_chunk_gather built `gather` */
    /* LAYER-WISE SEND: the layers of this part of the chunk, model layer
       numbers [layer_begin, layer_end) (kvx_sender_send: every layer of the
       layout). The parts of one chunk share index, first_page, num_pages and
       pages, and come in layer order; `gather` covers this part's layers
       only (at the whole chunk's packed offsets). is_last is set only on the
       part that completes the room. */
    uint32_t layer_begin, layer_end;
    int first_part;       /* layer_begin is the layout's first layer */
    int last_part;        /* layer_end is the layout's end: the chunk is complete */
} kvx_chunk;

KVX_API void kvx_chunk_free(kvx_engine *e, kvx_chunk *c);

/* Builds c->gather (the chunk's pages -> its packed region) the first time
   it is called and returns it; later calls return it at once. A transport
   that moves the chunk as one packed region calls it (the file transport);
   one that plans against the peer's pool (tcp, rdma, cuda) or moves nothing
   (fake) never pays for it. NULL with the reason in c->gather.error when
   memory runs out. Not thread-safe for one chunk: call it before handing
   the chunk to other threads. */
KVX_API const kvx_plan *kvx_chunk_gather(kvx_engine *e, kvx_chunk *c);

/* The table a transport fills. Every hook is optional except name. Hooks
   run on the caller's thread unless noted; they must not block on I/O. */
struct kvx_backend {
    const char *name;
    kvx_result (*engine_init)(kvx_engine *e, char *why, size_t why_len);
    void (*engine_fini)(kvx_engine *e);                 /* join transport threads */
    void (*progress)(kvx_engine *e);                    /* every tick, progress thread */
    kvx_result (*room_open)(kvx_room *r);               /* sender or receiver created */
    kvx_result (*sender_init)(kvx_room *r, uint32_t num_pages, int32_t aux_index);
    kvx_result (*sender_send)(kvx_room *r, kvx_chunk *c); /* takes c, even on error */
    kvx_result (*receiver_init)(kvx_room *r, const int32_t *pages, uint32_t n,
                                int32_t aux_index);
    void (*room_abort)(kvx_room *r, const char *reason); /* tell the peer, cancel */
    void (*room_close)(kvx_room *r); /* user destroyed it: stop touching its pages */
    void (*room_free)(kvx_room *r);  /* last reference gone: free transport state */
    /* The room entered FAILED by a local decision (a refused argument, a
       local error reported with kvx_room_fail, an abort, a core timeout,
       engine destroy), not by kvx_room_fail_remote: tell the peer, with
       kvx_room_result / kvx_room_error (the first reason). Called once per
       room, on the progress thread or on the thread that destroys the room
       (before room_close: a destroy waits for one running on the progress
       thread), with no core lock held. A backend that sets it is never
       called through room_abort. */
    void (*room_failed)(kvx_room *r);
    /* 1: sender_send takes the parts of a layer-wise chunk (kvx_chunk
       layer_begin .. last_part) as they come. 0: the core holds them and
       hands over the whole chunk with its last layer (no overlap with the
       engine's compute, but correct). */
    int layerwise;
};

KVX_API kvx_engine *kvx_room_engine(const kvx_room *r);
/* The room's state indices (HYBRID STATE) and their count in *n (0 and
   NULL when none): prefill, set before sender_send is called with the last
   chunk; decode, before receiver_init. Fixed afterwards. */
KVX_API const int32_t *kvx_room_state(const kvx_room *r, uint32_t *n);
KVX_API uint64_t kvx_room_id(const kvx_room *r);
KVX_API kvx_role kvx_room_role(const kvx_room *r);
KVX_API const char *kvx_room_bootstrap_addr(const kvx_room *r);
KVX_API void *kvx_room_data(const kvx_room *r);
KVX_API void kvx_room_set_data(kvx_room *r, void *data);
KVX_API kvx_poll kvx_room_poll(const kvx_room *r);
/* KVX_OK unless failed; the failure sentence ("" unless failed). */
KVX_API kvx_result kvx_room_result(const kvx_room *r);
KVX_API const char *kvx_room_error(const kvx_room *r);
KVX_API int kvx_room_closed(const kvx_room *r); /* user destroyed it */
KVX_API void kvx_room_ref(kvx_room *r);
KVX_API void kvx_room_unref(kvx_room *r);
/* Moves forward only (ignored when not forward or terminal). */
KVX_API void kvx_room_advance(kvx_room *r, kvx_poll state);
/* Success: records bytes moved for the stats, then advances. */
KVX_API void kvx_room_succeed(kvx_room *r, uint64_t bytes);
/* Fails the room unless it is terminal: keeps the first result and
   sentence, logs it at error level. Thread-safe. */
KVX_API void kvx_room_fail(kvx_room *r, kvx_result res, const char *fmt, ...) KVX_PRINTF(3, 4);
/* The same for a failure the peer reported or the loss of the peer: the
   peer is not told back (room_failed is not called). Both store the
   sentence prefixed with "room <id>: " unless it already starts so; the
   first failure wins and a terminal room never changes. */
KVX_API void kvx_room_fail_remote(kvx_room *r, kvx_result res, const char *fmt, ...)
    KVX_PRINTF(3, 4);
/* Deadline (CLOCK_MONOTONIC ns, 0 = none) after which the core fails the
   room with KVX_ERR_TIMEOUT and `what` in the sentence. */
KVX_API void kvx_room_set_deadline(kvx_room *r, uint64_t deadline_ns, const char *what);

/* The open sender or receiver of `room` on this engine, referenced (call
   kvx_room_unref), or NULL. Thread-safe. */
KVX_API kvx_room *kvx_engine_find_room(kvx_engine *e, uint64_t room);
/* Calls fn on every open room (each referenced for the call). fn may fail
   rooms but must not destroy them. Thread-safe; do not call from fn. */
KVX_API void kvx_engine_foreach_room(kvx_engine *e, void (*fn)(kvx_room *r, void *arg),
                                     void *arg);
/* Monotonic ns when the room was created. */
KVX_API uint64_t kvx_room_created_ns(const kvx_room *r);

KVX_API void *kvx_engine_backend_data(const kvx_engine *e);
KVX_API void kvx_engine_set_backend_data(kvx_engine *e, void *data);
KVX_API void *kvx_engine_alloc(const kvx_engine *e, size_t size); /* desc allocator */
KVX_API void kvx_engine_free(const kvx_engine *e, void *p);
KVX_API void kvx_engine_log(const kvx_engine *e, kvx_log_level lvl, const char *subsystem,
                            uint64_t room, const char *fmt, ...) KVX_PRINTF(5, 6);
KVX_API int kvx_engine_log_enabled(const kvx_engine *e, kvx_log_level lvl);

/* The built-in transport: moves nothing. A sender succeeds right after its
   last chunk; a receiver right after init. For warm-up and for measuring
   the engine's own overhead. */
KVX_API const kvx_backend *kvx_fake_backend(void);

/* >>utilities ------------------------------------------------------------ */

#define KVX_NONCE_BYTES 16 /* bytes of an authentication nonce */
#define KVX_MAC_BYTES 32   /* bytes of an HMAC-SHA-256 proof */

KVX_API uint64_t kvx_now_ns(void); /* CLOCK_MONOTONIC */
KVX_API uint32_t kvx_crc32c(uint32_t crc, const void *data, size_t len); /* start with 0 */
/* crc(A || B) from crc(A), crc(B) and len(B): CRCs of pieces computed in
   parallel joined in order. */
KVX_API uint32_t kvx_crc32c_combine(uint32_t crc_a, uint32_t crc_b, uint64_t len_b);


#ifdef __cplusplus
}
#endif
#endif /* KVX_H_INCLUDED */

/* ======================================================================== */
/*                             IMPLEMENTATION                               */
/* ======================================================================== */
#if defined(KVX_IMPLEMENTATION) && !defined(KVX_IMPL_INCLUDED)
#define KVX_IMPL_INCLUDED

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <errno.h>
#include <math.h>
#include <time.h>
#include <pthread.h>
#include <unistd.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <fcntl.h>
#include <pwd.h>
#include <poll.h>
#include <netdb.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#if !defined(KVX_NO_RUNTIME_LINKING)
#include <dlfcn.h>
#endif
#if defined(__linux__)
#include <sys/syscall.h>
#endif
#if !defined(CLOCK_MONOTONIC)
#error "kvx: the implementation needs POSIX: include the kvx headers before any system header in the KVX_IMPLEMENTATION file, or compile it with -D_GNU_SOURCE"
#endif

#ifndef KVX_ASSERT
#include <assert.h>
#define KVX_ASSERT(c) assert(c)
#endif

#if defined(__GNUC__) || defined(__clang__)
#define KVX__UNUSED __attribute__((unused))
#else
#define KVX__UNUSED
#endif

#define KVX__LOAD(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define KVX__STORE(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)
#define KVX__ADD(p, v) __atomic_add_fetch((p), (v), __ATOMIC_ACQ_REL)
#define KVX__SUB(p, v) __atomic_sub_fetch((p), (v), __ATOMIC_ACQ_REL)
#define KVX__COUNT(a) (sizeof(a) / sizeof((a)[0]))



#ifdef __cplusplus
extern "C" {
#endif

/* >>impl: private helpers shared by the headers ----------------------------
   General utilities kvx needs and engines do not: hashing and
   authentication, the JSON reader, a text buffer, a worker queue, safe
   directories. Private (static kvx__*), so they are not part of the API. */

/* Every allocation goes through a desc allocator (NULL or empty = libc). */
static KVX__UNUSED void *kvx__alloc(const kvx_allocator *a, size_t n) {
    return a && a->alloc_fn ? a->alloc_fn(n, a->user_data) : malloc(n);
}
static KVX__UNUSED void kvx__free(const kvx_allocator *a, void *p) {
    if (!p) return;
    if (a && a->free_fn) a->free_fn(p, a->user_data);
    else free(p);
}
/* calloc through an allocator: n zeroed objects of size bytes (at least
   one); NULL when n * size overflows or the allocation fails. */
static KVX__UNUSED void *kvx__zalloc(const kvx_allocator *a, size_t n, size_t size) {
    void *p;
    if (!n) n = 1;
    if (size && n > (size_t)-1 / size) return NULL;
    if ((p = kvx__alloc(a, n * size)) != NULL) memset(p, 0, n * size);
    return p;
}
/* realloc through an allocator (which has no realloc): a block of nbytes
   holding the first old_bytes of old, which is freed; NULL (old kept) when
   the allocation fails. */
static KVX__UNUSED void *kvx__grow(const kvx_allocator *a, void *old, size_t old_bytes,
                                   size_t nbytes) {
    void *p;
    if (!a || !a->alloc_fn) return realloc(old, nbytes);
    if (!(p = kvx__alloc(a, nbytes))) return NULL;
    if (old_bytes) memcpy(p, old, old_bytes < nbytes ? old_bytes : nbytes);
    kvx__free(a, old);
    return p;
}


typedef struct kvx__sha256 {
    uint32_t h[8];
    uint64_t len;
    uint8_t buf[64];
    uint32_t fill;
} kvx__sha256;

/* HMAC-SHA-256 (RFC 2104) and what authentication is built from. */
typedef struct kvx__hmac {
    kvx__sha256 inner, outer;
} kvx__hmac;

/* A small JSON reader for formats kvx reads from files and peers. Bounded:
   at most `max_nodes` values and depth 32. */
typedef enum kvx__json_type {
    KVX_JSON_NULL, KVX_JSON_BOOL, KVX_JSON_NUMBER, KVX_JSON_STRING, KVX_JSON_ARRAY,
    KVX_JSON_OBJECT
} kvx__json_type;
typedef struct kvx__json {
    kvx__json_type type;
    uint32_t count;   /* children of an array or object */
    uint32_t next;    /* index of the next sibling (0 = none) */
    uint32_t child;   /* index of the first child (0 = none) */
    const char *str;  /* key of an object member / string value, in the doc buffer */
    uint32_t str_len;
    uint32_t key_len;
    const char *key;
    double num;
    int is_int;       /* integral and exact in i64 (negative) or u64 */
    int negative;
    int64_t i64;
    uint64_t u64;
} kvx__json;
typedef struct kvx__json_doc {
    kvx__json *nodes;
    uint32_t count, cap;
    char *strbuf;     /* unescaped strings */
    char error[128];
    const kvx_allocator *allocator; /* kvx__json_parse's; NULL = libc */
} kvx__json_doc;

/* A growable text buffer (JSON writing, messages). Start one empty with
   KVX__BUF(allocator): `kvx__buf b = KVX__BUF(&desc->allocator);`. */
typedef struct kvx__buf {
    char *data;
    size_t len, cap;
    int oom;
    const kvx_allocator *allocator; /* NULL = libc (tools without an engine) */
} kvx__buf;
#define KVX__BUF(a) {NULL, 0, 0, 0, (a)}
static KVX__UNUSED void kvx__buf_init(kvx__buf *b, const kvx_allocator *a) {
    memset(b, 0, sizeof *b);
    b->allocator = a;
}
static KVX__UNUSED void kvx__buf_printf(kvx__buf *b, const char *fmt, ...) KVX_PRINTF(2, 3);

/* A fixed pool of worker threads running submitted jobs in FIFO order. */
typedef struct kvx__workq kvx__workq;
typedef void (*kvx__job_fn)(void *arg);


/* >>impl: results --------------------------------------------------------- */

KVX_API const char *kvx_result_str(kvx_result r) {
    switch (r) {
    case KVX_OK: return "KVX_OK";
    case KVX_ERR_INVALID_ARGUMENT: return "KVX_ERR_INVALID_ARGUMENT";
    case KVX_ERR_OUT_OF_RANGE: return "KVX_ERR_OUT_OF_RANGE";
    case KVX_ERR_DUPLICATE: return "KVX_ERR_DUPLICATE";
    case KVX_ERR_TOO_MANY_PAGES: return "KVX_ERR_TOO_MANY_PAGES";
    case KVX_ERR_LAYOUT_MISMATCH: return "KVX_ERR_LAYOUT_MISMATCH";
    case KVX_ERR_UNKNOWN_TRANSPORT: return "KVX_ERR_UNKNOWN_TRANSPORT";
    case KVX_ERR_BAD_CONFIG: return "KVX_ERR_BAD_CONFIG";
    case KVX_ERR_STATE: return "KVX_ERR_STATE";
    case KVX_ERR_TIMEOUT: return "KVX_ERR_TIMEOUT";
    case KVX_ERR_ABORTED: return "KVX_ERR_ABORTED";
    case KVX_ERR_IO: return "KVX_ERR_IO";
    case KVX_ERR_NO_MEMORY: return "KVX_ERR_NO_MEMORY";
    case KVX_ERR_NO_SPACE: return "KVX_ERR_NO_SPACE";
    case KVX_ERR_CORRUPT: return "KVX_ERR_CORRUPT";
    case KVX_ERR_NOT_FOUND: return "KVX_ERR_NOT_FOUND";
    case KVX_ERR_PERMISSION: return "KVX_ERR_PERMISSION";
    case KVX_ERR_PEER: return "KVX_ERR_PEER";
    case KVX_ERR_PEER_LOST: return "KVX_ERR_PEER_LOST";
    case KVX_ERR_PROTOCOL: return "KVX_ERR_PROTOCOL";
    case KVX_ERR_TRANSPORT: return "KVX_ERR_TRANSPORT";
    case KVX_ERR_NOT_COMPILED: return "KVX_ERR_NOT_COMPILED";
    }
    return "KVX_ERR_UNKNOWN";
}

KVX_API const char *kvx_poll_str(kvx_poll p) {
    switch (p) {
    case KVX_POLL_FAILED: return "Failed";
    case KVX_POLL_BOOTSTRAPPING: return "Bootstrapping";
    case KVX_POLL_WAITING_FOR_INPUT: return "WaitingForInput";
    case KVX_POLL_TRANSFERRING: return "Transferring";
    case KVX_POLL_SUCCESS: return "Success";
    }
    return "Unknown";
}

static KVX__UNUSED KVX_PRINTF(3, 4) void kvx__set_why(char *why, size_t n, const char *fmt, ...) {
    va_list ap;
    if (!why || n == 0) return;
    va_start(ap, fmt);
    vsnprintf(why, n, fmt, ap);
    va_end(ap);
}
/* kvx__set_why, then returns res: a refusal in one statement. */
static KVX__UNUSED KVX_PRINTF(4, 5) kvx_result kvx__why(kvx_result res, char *why, size_t n,
                                                       const char *fmt, ...) {
    va_list ap;
    if (!why || n == 0) return res;
    va_start(ap, fmt);
    vsnprintf(why, n, fmt, ap);
    va_end(ap);
    return res;
}

/* >>impl: run-time library loader ---------------------------------------- */

/* A header that calls a vendor library (libibverbs, libcuda) lists each entry
   point once, in a LIST(X) macro of rows X(ret, name, args, api, sym, alt, opt):
   the member `ret (*name) args` of its table struct, the real prototype it must
   match (0: nothing to check), the exported symbol and an older one tried after
   it (or NULL), and opt 1 when it may be missing (the pointer stays NULL).
   LIST(KVX__LIB_FIELD) declares the members; LIST(KVX__LIB_CHECK) in a function
   with `T *kvx__fns` makes the compiler compare every member with the vendor
   header's prototype (sizeof evaluates nothing: nothing is linked);
   LIST(KVX__LIB_LINK) fills kvx__fns under KVX_NO_RUNTIME_LINKING; a one-line
   row macro of the header's own builds the kvx__lib_sym table for kvx__lib_open. */
#define KVX__LIB_FIELD(ret, name, args, api, sym, alt, opt) ret (*name) args;
#define KVX__LIB_CHECK(ret, name, args, api, sym, alt, opt) (void)sizeof(kvx__fns->name == api);
#define KVX__LIB_LINK(ret, name, args, api, sym, alt, opt) kvx__fns->name = api;

typedef struct kvx__lib_sym {
    const char *name, *alt; /* exported symbol; an older name tried after it, or NULL */
    size_t off;             /* of its function pointer in the table struct */
    int optional;           /* may be absent: the pointer stays NULL */
} kvx__lib_sym;

#if !defined(KVX_NO_RUNTIME_LINKING)
/* dlopens path and fills the table fns from syms. Returns the handle, or NULL
   with *missing the first required symbol the library lacks (it is closed
   again: nothing of it ran), or *missing NULL and *err dlerror()'s text when it
   cannot be opened. Thread-safe (dlopen counts references). */
static KVX__UNUSED void *kvx__lib_open(const char *path, const kvx__lib_sym *syms, size_t n,
                                       void *fns, const char **missing, const char **err) {
    size_t i;
    void *lib = dlopen(path, RTLD_NOW | RTLD_LOCAL), *p;
    *missing = NULL;
    *err = lib ? NULL : dlerror();
    if (!*err && !lib) *err = "unknown error";
    for (i = 0; lib && i < n; i++) {
        p = dlsym(lib, syms[i].name);
        if (!p && syms[i].alt) p = dlsym(lib, syms[i].alt);
        if (!p && !syms[i].optional) {
            *missing = syms[i].name;
            dlclose(lib);
            return NULL;
        }
        memcpy((char *)fns + syms[i].off, &p, sizeof p); /* POSIX: code and data pointers agree */
    }
    return lib;
}
#endif

/* >>impl: clock, checksums ---------------------------------------------- */

KVX_API uint64_t kvx_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* The absolute CLOCK_REALTIME time `ns` from now, for pthread_cond_timedwait
   on a condition variable with the default clock. */
static KVX__UNUSED void kvx__abstime(struct timespec *ts, uint64_t ns) {
    clock_gettime(CLOCK_REALTIME, ts);
    ns += (uint64_t)ts->tv_nsec;
    ts->tv_sec += (time_t)(ns / 1000000000ull);
    ts->tv_nsec = (long)(ns % 1000000000ull);
}

/* >>posix io -------------------------------------------------------------- */

/* The socket, wake-up and file I/O plumbing every header shares (boot, tcp,
   rdma, file, store). Deadlines are kvx_now_ns() values (CLOCK_MONOTONIC);
   functions return 0 or an errno and keep errno's meaning, so each caller
   words its own sentence; kvx__errstr turns a code into text. */

/* Stops a wait early when it returns nonzero (polled every 100 ms). */
typedef int (*kvx__stop_fn)(void *arg);

/* Text of an errno, shorter for the usual network ones; a negative value
   is a getaddrinfo code (kvx__listen's unresolvable host). */
static KVX__UNUSED const char *kvx__errstr(int err) {
    switch (err) {
    case ECONNREFUSED: return "connection refused";
    case ETIMEDOUT: return "timed out";
    case ECONNRESET: return "connection reset by peer";
    case EHOSTUNREACH: return "host unreachable or unknown";
    case ENETUNREACH: return "network unreachable";
    default: return err < 0 ? gai_strerror(err) : strerror(err);
    }
}

/* "ip:port" or "[ip6]:port"; "?" for other families. */
static KVX__UNUSED void kvx__sa_str(const struct sockaddr *sa, char *out, size_t n) {
    char ip[INET6_ADDRSTRLEN] = "?";
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)(const void *)sa;
        inet_ntop(AF_INET, &a->sin_addr, ip, sizeof ip);
        snprintf(out, n, "%s:%d", ip, ntohs(a->sin_port));
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)(const void *)sa;
        inet_ntop(AF_INET6, &a->sin6_addr, ip, sizeof ip);
        snprintf(out, n, "[%s]:%d", ip, ntohs(a->sin6_port));
    } else {
        snprintf(out, n, "?");
    }
}

/* Splits "host:port", "[v6]:port", "http://host:port/..." or "host" (port
   defport). 0, or -1 when malformed or the host does not fit hl. */
static KVX__UNUSED int kvx__addr_split(const char *addr, char *host, size_t hl, int *port,
                                       int defport) {
    const char *s = addr, *h, *he, *pp = NULL;
    size_t n;
    if (!addr) return -1;
    if (!strncmp(s, "http://", 7)) s += 7;
    if (*s == '[') {
        h = s + 1;
        he = strchr(h, ']');
        if (!he) return -1;
        if (he[1] == ':') pp = he + 2;
        else if (he[1] && he[1] != '/') return -1;
    } else {
        const char *c = strchr(s, ':');
        h = s;
        he = c ? c : s + strcspn(s, "/");
        if (c) pp = c + 1;
    }
    n = (size_t)(he - h);
    if (n == 0 || n >= hl) return -1;
    memcpy(host, h, n);
    host[n] = 0;
    *port = defport;
    if (pp) {
        long v = 0;
        int digits = 0;
        while (*pp >= '0' && *pp <= '9' && digits < 6) { v = v * 10 + (*pp - '0'); pp++; digits++; }
        if (!digits || (*pp && *pp != '/') || v > 65535) return -1;
        *port = (int)v;
    }
    return 0;
}

static KVX__UNUSED void kvx__nonblock(int fd, int on) {
    int fl = fcntl(fd, F_GETFL, 0);
    if (fl >= 0) fcntl(fd, F_SETFL, on ? fl | O_NONBLOCK : fl & ~O_NONBLOCK);
}
static KVX__UNUSED void kvx__nodelay(int fd) {
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

/* Waits for the events ev on fd. 0 ready; -1 with errno ETIMEDOUT at the
   deadline, ECANCELED when stop (may be NULL) said so, or poll's errno. */
static KVX__UNUSED int kvx__wait_fd(int fd, short ev, uint64_t deadline_ns, kvx__stop_fn stop,
                                    void *arg) {
    for (;;) {
        struct pollfd p;
        uint64_t now = kvx_now_ns(), ms;
        int rc;
        if (stop && stop(arg)) { errno = ECANCELED; return -1; }
        if (now >= deadline_ns) { errno = ETIMEDOUT; return -1; }
        ms = (deadline_ns - now + 999999) / 1000000;
        if (ms > (stop ? 100u : 1000000u)) ms = stop ? 100u : 1000000u;
        p.fd = fd; p.events = ev; p.revents = 0;
        rc = poll(&p, 1, (int)ms);
        if (rc > 0) return 0;
        if (rc < 0 && errno != EINTR) return -1;
    }
}

/* getaddrinfo for a TCP host:port (flags: AI_PASSIVE or 0). */
static int kvx__resolve(const char *host, int port, int flags, struct addrinfo **res) {
    struct addrinfo hints;
    char ps[16];
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = flags | AI_NUMERICSERV;
    snprintf(ps, sizeof ps, "%d", port);
    return getaddrinfo(host, ps, &hints, res);
}

/* A TCP connection to host:port made before deadline_ns: non-blocking,
   close-on-exec, TCP_NODELAY. The fd, or -1 with *err the errno of the
   last address tried (EHOSTUNREACH when host does not resolve). */
static KVX__UNUSED int kvx__connect(const char *host, int port, uint64_t deadline_ns,
                                    kvx__stop_fn stop, void *arg, int *err) {
    struct addrinfo *res = NULL, *ai;
    int fd = -1;
    *err = ECONNREFUSED;
    if (kvx__resolve(host, port, 0, &res) != 0) { *err = EHOSTUNREACH; return -1; }
    for (ai = res; ai; ai = ai->ai_next) {
        int so = 0;
        socklen_t sl = sizeof so;
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0) { *err = errno; continue; }
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0) break;
        if (errno != EINPROGRESS) *err = errno;
        else if (kvx__wait_fd(fd, POLLOUT, deadline_ns, stop, arg)) *err = errno;
        else if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &so, &sl)) *err = errno;
        else if (so) *err = so;
        else break;
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd >= 0) kvx__nodelay(fd);
    return fd;
}

/* A non-blocking, close-on-exec listener on host:port ("" or NULL: every
   address; port 0: any free port, *bound says which). The fd, or -1 with
   *err an errno, or a negative getaddrinfo code when host does not resolve. */
static KVX__UNUSED int kvx__listen(const char *host, int port, int backlog, int *bound, int *err) {
    struct addrinfo *res = NULL, *ai;
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    int fd = -1, one = 1;
    if ((*err = kvx__resolve(host && host[0] ? host : NULL, port, AI_PASSIVE, &res)) != 0)
        return -1;
    *err = EADDRNOTAVAIL;
    for (ai = res; ai; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0) { *err = errno; continue; }
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, backlog) == 0 &&
            getsockname(fd, (struct sockaddr *)&ss, &sl) == 0)
            break;
        *err = errno;
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0) return -1;
    *bound = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)(void *)&ss)->sin6_port
                                            : ((struct sockaddr_in *)(void *)&ss)->sin_port);
    *err = 0;
    return fd;
}

/* Sends all n bytes before deadline_ns (MSG_NOSIGNAL: a closed peer is an
   error, not a signal). 0, or -1 with errno. */
static KVX__UNUSED int kvx__send_all(int fd, const void *p, size_t n, uint64_t deadline_ns) {
    const char *s = (const char *)p;
    while (n) {
        ssize_t w = send(fd, s, n, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w > 0) { s += w; n -= (size_t)w; continue; }
        if (w < 0 && errno == EINTR) continue;
        if (w == 0 || (errno != EAGAIN && errno != EWOULDBLOCK)) return -1;
        if (kvx__wait_fd(fd, POLLOUT, deadline_ns, NULL, NULL)) return -1;
    }
    return 0;
}

/* A wake-up object: a non-blocking, close-on-exec pipe. A thread polls rd,
   others kvx__wake(wr) it; the woken thread kvx__drain(rd)s it. */
static KVX__UNUSED int kvx__pipe(int *rd, int *wr) {
    int p[2];
    if (pipe2(p, O_NONBLOCK | O_CLOEXEC)) return -1;
    *rd = p[0];
    *wr = p[1];
    return 0;
}
static KVX__UNUSED void kvx__wake(int wr) {
    char c = 1;
    ssize_t k = write(wr, &c, 1);
    (void)k; /* a full pipe already wakes the reader */
}
static KVX__UNUSED void kvx__drain(int rd) {
    char buf[64];
    while (read(rd, buf, sizeof buf) > 0) {}
}

/* Moves an iovec array past `done` bytes of a partial writev/readv: whole
   entries are dropped, the first remaining one is trimmed. */
static KVX__UNUSED void kvx__iov_advance(struct iovec **v, int *n, size_t done) {
    while (*n && done >= (*v)->iov_len) {
        done -= (*v)->iov_len;
        (*v)++;
        (*n)--;
    }
    if (*n && done) {
        (*v)->iov_base = (char *)(*v)->iov_base + done;
        (*v)->iov_len -= done;
    }
}

/* Reads (write 0) or writes exactly len bytes at off through the iovec
   list, which is consumed. 0, an errno, or -1 for a short read (end of file). */
static KVX__UNUSED int kvx__piov_full(int fd, struct iovec *v, int vn, uint64_t off, uint64_t len,
                                      int write) {
    while (len) {
        ssize_t done = write ? pwritev(fd, v, vn, (off_t)off) : preadv(fd, v, vn, (off_t)off);
        if (done < 0 && errno == EINTR) continue;
        if (done < 0) return errno ? errno : EIO;
        if (done == 0) return write ? EIO : -1;
        len -= (uint64_t)done;
        off += (uint64_t)done;
        kvx__iov_advance(&v, &vn, (size_t)done);
    }
    return 0;
}
static KVX__UNUSED int kvx__pio(int fd, void *buf, size_t len, uint64_t off, int write) {
    struct iovec v;
    v.iov_base = buf;
    v.iov_len = len;
    return kvx__piov_full(fd, &v, 1, off, len, write);
}

/* Writes all of p to a file (or pipe) at its position. 0 or an errno. */
static KVX__UNUSED int kvx__write_all(int fd, const void *p, size_t n) {
    const char *s = (const char *)p;
    while (n) {
        ssize_t w = write(fd, s, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return w < 0 ? errno : EIO;
        s += w;
        n -= (size_t)w;
    }
    return 0;
}

/* <<posix io */

static uint32_t kvx__crc_table[8][256];
static pthread_once_t kvx__crc_once = PTHREAD_ONCE_INIT;
static int kvx__crc_hw;

/* Operators that move a raw CRC32C register over 8192, 2048 and 512 zero
   bytes, as four byte-indexed tables each: joining three interleaved
   streams costs eight lookups. */
static uint32_t kvx__crc_join[3][4][256];

/* GF(2) helpers to move a raw CRC register over n zero bytes (zlib's
   crc32_combine idea, reflected CRC32C polynomial). */
static uint32_t kvx__gf2_times(const uint32_t *mat, uint32_t vec) {
    uint32_t sum = 0;
    while (vec) { if (vec & 1) sum ^= *mat; vec >>= 1; mat++; }
    return sum;
}
static void kvx__gf2_square(uint32_t *sq, const uint32_t *mat) {
    int n;
    for (n = 0; n < 32; n++) sq[n] = kvx__gf2_times(mat, mat[n]);
}
static uint32_t kvx__crc32c_shift(uint32_t crc, size_t nbytes) {
    uint32_t even[32], odd[32];
    uint32_t row = 1;
    int n;
    if (nbytes == 0) return crc;
    odd[0] = 0x82F63B78u;
    for (n = 1; n < 32; n++) { odd[n] = row; row <<= 1; }
    kvx__gf2_square(even, odd); /* 2 zero bits */
    kvx__gf2_square(odd, even); /* 4 zero bits */
    do {
        kvx__gf2_square(even, odd);
        if (nbytes & 1) crc = kvx__gf2_times(even, crc);
        nbytes >>= 1;
        if (!nbytes) break;
        kvx__gf2_square(odd, even);
        if (nbytes & 1) crc = kvx__gf2_times(odd, crc);
        nbytes >>= 1;
    } while (nbytes);
    return crc;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
static uint32_t kvx__crc_join_by(int t, uint32_t c) {
    return kvx__crc_join[t][0][c & 255] ^ kvx__crc_join[t][1][(c >> 8) & 255] ^
           kvx__crc_join[t][2][(c >> 16) & 255] ^ kvx__crc_join[t][3][c >> 24];
}

/* Three independent crc32 streams hide the instruction's 3-cycle latency;
   blocks of 8 KiB, then 2 KiB, then 512 bytes, then one stream. */
__attribute__((target("sse4.2"))) static uint32_t kvx__crc32c_hw(uint32_t crc, const uint8_t *p,
                                                                 size_t len) {
    static const size_t blk[3] = {8192, 2048, 512};
    uint64_t c = crc;
    int t;
    for (t = 0; t < 3; t++) {
        while (len >= 3 * blk[t]) {
            uint64_t b = 0, d = 0;
            const uint8_t *q = p + blk[t], *r = p + 2 * blk[t];
            size_t i;
            for (i = 0; i < blk[t]; i += 8) {
                uint64_t x, y, z;
                memcpy(&x, p + i, 8); memcpy(&y, q + i, 8); memcpy(&z, r + i, 8);
                c = __builtin_ia32_crc32di(c, x);
                b = __builtin_ia32_crc32di(b, y);
                d = __builtin_ia32_crc32di(d, z);
            }
            c = kvx__crc_join_by(t, kvx__crc_join_by(t, (uint32_t)c) ^ (uint32_t)b) ^ (uint32_t)d;
            p += 3 * blk[t];
            len -= 3 * blk[t];
        }
    }
    while (len >= 8) { uint64_t v; memcpy(&v, p, 8); c = __builtin_ia32_crc32di(c, v); p += 8; len -= 8; }
    while (len) { c = __builtin_ia32_crc32qi((uint32_t)c, *p++); len--; }
    return (uint32_t)c;
}
#endif

static void kvx__crc_init(void) {
    uint32_t i, j;
    for (i = 0; i < 256; i++) {
        uint32_t c = i;
        for (j = 0; j < 8; j++) c = (c >> 1) ^ (0x82F63B78u & (0u - (c & 1u)));
        kvx__crc_table[0][i] = c;
    }
    for (i = 0; i < 256; i++)
        for (j = 1; j < 8; j++)
            kvx__crc_table[j][i] = (kvx__crc_table[j - 1][i] >> 8) ^
                                   kvx__crc_table[0][kvx__crc_table[j - 1][i] & 0xff];
    {
        /* the operator for one zero bit, squared up to 512, 2048, 8192 bytes */
        uint32_t op[32], sq[32];
        int t, k, n, bits = 0;
        static const int want[3] = {16, 14, 12}; /* log2 of the block sizes in bits */
        op[0] = 0x82F63B78u;
        for (n = 1; n < 32; n++) op[n] = 1u << (n - 1);
        for (t = 2; t >= 0; t--) {
            while (bits < want[t]) {
                kvx__gf2_square(sq, op);
                memcpy(op, sq, sizeof op);
                bits++;
            }
            for (k = 0; k < 4; k++)
                for (i = 0; i < 256; i++) kvx__crc_join[t][k][i] = kvx__gf2_times(op, i << (8 * k));
        }
    }
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    kvx__crc_hw = __builtin_cpu_supports("sse4.2") ? 1 : 0;
#endif
}

static uint32_t kvx__crc32c_sw(uint32_t c, const uint8_t *p, size_t len) {
    while (len && ((uintptr_t)p & 7)) { c = (c >> 8) ^ kvx__crc_table[0][(c ^ *p++) & 0xff]; len--; }
    while (len >= 8) {
        uint32_t lo, hi;
        memcpy(&lo, p, 4); memcpy(&hi, p + 4, 4);
        lo ^= c; /* little-endian hosts; kvx targets Linux on x86-64 and arm64 */
        c = kvx__crc_table[7][lo & 0xff] ^ kvx__crc_table[6][(lo >> 8) & 0xff] ^
            kvx__crc_table[5][(lo >> 16) & 0xff] ^ kvx__crc_table[4][lo >> 24] ^
            kvx__crc_table[3][hi & 0xff] ^ kvx__crc_table[2][(hi >> 8) & 0xff] ^
            kvx__crc_table[1][(hi >> 16) & 0xff] ^ kvx__crc_table[0][hi >> 24];
        p += 8; len -= 8;
    }
    while (len) { c = (c >> 8) ^ kvx__crc_table[0][(c ^ *p++) & 0xff]; len--; }
    return c;
}

KVX_API uint32_t kvx_crc32c_combine(uint32_t a, uint32_t b, uint64_t len_b) {
    return kvx__crc32c_shift(a, (size_t)len_b) ^ b;
}

KVX_API uint32_t kvx_crc32c(uint32_t crc, const void *data, size_t len) {
    uint32_t c = ~crc;
    pthread_once(&kvx__crc_once, kvx__crc_init);
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    if (kvx__crc_hw) return ~kvx__crc32c_hw(c, (const uint8_t *)data, len);
#endif
    return ~kvx__crc32c_sw(c, (const uint8_t *)data, len);
}

static const uint32_t kvx__sha_k[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
    0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
    0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
    0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
    0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
    0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
    0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
    0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
    0xc67178f2};

#define KVX__ROR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))
static void kvx__sha_block(kvx__sha256 *s, const uint8_t *b) {
    uint32_t w[64], a, bb, c, d, e, f, g, h, i;
    for (i = 0; i < 16; i++)
        w[i] = (uint32_t)b[4 * i] << 24 | (uint32_t)b[4 * i + 1] << 16 |
               (uint32_t)b[4 * i + 2] << 8 | b[4 * i + 3];
    for (i = 16; i < 64; i++) {
        uint32_t s0 = KVX__ROR(w[i - 15], 7) ^ KVX__ROR(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = KVX__ROR(w[i - 2], 17) ^ KVX__ROR(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    a = s->h[0]; bb = s->h[1]; c = s->h[2]; d = s->h[3];
    e = s->h[4]; f = s->h[5]; g = s->h[6]; h = s->h[7];
    for (i = 0; i < 64; i++) {
        uint32_t t1 = h + (KVX__ROR(e, 6) ^ KVX__ROR(e, 11) ^ KVX__ROR(e, 25)) +
                      ((e & f) ^ (~e & g)) + kvx__sha_k[i] + w[i];
        uint32_t t2 = (KVX__ROR(a, 2) ^ KVX__ROR(a, 13) ^ KVX__ROR(a, 22)) +
                      ((a & bb) ^ (a & c) ^ (bb & c));
        h = g; g = f; f = e; e = d + t1; d = c; c = bb; bb = a; a = t1 + t2;
    }
    s->h[0] += a; s->h[1] += bb; s->h[2] += c; s->h[3] += d;
    s->h[4] += e; s->h[5] += f; s->h[6] += g; s->h[7] += h;
}

static KVX__UNUSED void kvx__sha256_init(kvx__sha256 *s) {
    static const uint32_t iv[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                   0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    memcpy(s->h, iv, sizeof iv);
    s->len = 0;
    s->fill = 0;
}

static KVX__UNUSED void kvx__sha256_update(kvx__sha256 *s, const void *data, size_t len) {
    const uint8_t *p = (const uint8_t *)data;
    s->len += len;
    while (len) {
        size_t take = 64 - s->fill;
        if (take > len) take = len;
        memcpy(s->buf + s->fill, p, take);
        s->fill += (uint32_t)take; p += take; len -= take;
        if (s->fill == 64) { kvx__sha_block(s, s->buf); s->fill = 0; }
    }
}

static KVX__UNUSED void kvx__sha256_final(kvx__sha256 *s, uint8_t out[32]) {
    uint64_t bits = s->len * 8;
    uint8_t pad = 0x80, zero = 0, lenb[8];
    int i;
    kvx__sha256_update(s, &pad, 1);
    while (s->fill != 56) kvx__sha256_update(s, &zero, 1);
    for (i = 0; i < 8; i++) lenb[i] = (uint8_t)(bits >> (56 - 8 * i));
    kvx__sha256_update(s, lenb, 8);
    for (i = 0; i < 8; i++) {
        out[4 * i] = (uint8_t)(s->h[i] >> 24); out[4 * i + 1] = (uint8_t)(s->h[i] >> 16);
        out[4 * i + 2] = (uint8_t)(s->h[i] >> 8); out[4 * i + 3] = (uint8_t)s->h[i];
    }
}

/* >>impl: HMAC and authentication ------------------------------------------ */
/* Per-connection proofs: kvx__auth_proof below. */

static KVX__UNUSED void kvx__hmac_init(kvx__hmac *h, const void *key, size_t key_len) {
    uint8_t k[64], pad[64];
    int i;
    memset(k, 0, sizeof k);
    if (key_len > 64) {
        kvx__sha256 t;
        kvx__sha256_init(&t);
        kvx__sha256_update(&t, key, key_len);
        kvx__sha256_final(&t, k);
    } else if (key_len) {
        memcpy(k, key, key_len);
    }
    for (i = 0; i < 64; i++) pad[i] = (uint8_t)(k[i] ^ 0x36);
    kvx__sha256_init(&h->inner);
    kvx__sha256_update(&h->inner, pad, 64);
    for (i = 0; i < 64; i++) pad[i] = (uint8_t)(k[i] ^ 0x5c);
    kvx__sha256_init(&h->outer);
    kvx__sha256_update(&h->outer, pad, 64);
    memset(k, 0, sizeof k);
}

static KVX__UNUSED void kvx__hmac_update(kvx__hmac *h, const void *data, size_t len) {
    kvx__sha256_update(&h->inner, data, len);
}

static KVX__UNUSED void kvx__hmac_final(kvx__hmac *h, uint8_t out[32]) {
    uint8_t ih[32];
    kvx__sha256_final(&h->inner, ih);
    kvx__sha256_update(&h->outer, ih, 32);
    kvx__sha256_final(&h->outer, out);
}

static KVX__UNUSED void kvx__hmac_sha256(const void *key, size_t key_len, const void *data, size_t len,
                             uint8_t out[32]) {
    kvx__hmac h;
    kvx__hmac_init(&h, key, key_len);
    kvx__hmac_update(&h, data, len);
    kvx__hmac_final(&h, out);
}

/* 1 when the n bytes are equal; time does not depend on where they differ. */
static KVX__UNUSED int kvx__equal_ct(const void *a, const void *b, size_t n) {
    const volatile uint8_t *x = (const volatile uint8_t *)a, *y = (const volatile uint8_t *)b;
    uint8_t d = 0;
    size_t i;
    for (i = 0; i < n; i++) d = (uint8_t)(d | (x[i] ^ y[i]));
    return d == 0;
}

/* n bytes from the kernel's CSPRNG (getrandom, else /dev/urandom). */
static KVX__UNUSED kvx_result kvx__random_bytes(void *buf, size_t n) {
    uint8_t *p = (uint8_t *)buf;
    int fd;
#if defined(__linux__) && defined(SYS_getrandom)
    while (n) {
        long got = syscall(SYS_getrandom, p, n, 0);
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) break;
        p += got;
        n -= (size_t)got;
    }
    if (!n) return KVX_OK;
#endif
    fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    if (fd < 0) return KVX_ERR_IO;
    while (n) {
        ssize_t got = read(fd, p, n);
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) { close(fd); return KVX_ERR_IO; }
        p += got;
        n -= (size_t)got;
    }
    close(fd);
    return KVX_OK;
}

/* The proof every authenticated connection uses, so that all transports
   agree: HMAC-SHA-256(key, label || 0x00 || nonce_a || nonce_b). The prover
   uses its own label (so a proof cannot be reflected to the other
   direction), nonce_a = the verifier's fresh nonce (the challenge), nonce_b
   = the prover's own fresh nonce. */
static KVX__UNUSED void kvx__auth_proof(const uint8_t *key, size_t key_len, const char *label,
                            const uint8_t nonce_a[KVX_NONCE_BYTES],
                            const uint8_t nonce_b[KVX_NONCE_BYTES], uint8_t out[KVX_MAC_BYTES]) {
    kvx__hmac h;
    uint8_t zero = 0;
    kvx__hmac_init(&h, key, key_len);
    kvx__hmac_update(&h, label, strlen(label));
    kvx__hmac_update(&h, &zero, 1);
    kvx__hmac_update(&h, nonce_a, KVX_NONCE_BYTES);
    kvx__hmac_update(&h, nonce_b, KVX_NONCE_BYTES);
    kvx__hmac_final(&h, out);
}

/* >>impl: shared helpers of the file-based headers -------------------------- */

/* Little-endian integers of the wire and disk formats. */
static KVX__UNUSED void kvx__le_w16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); }
static KVX__UNUSED void kvx__le_w32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); p[2] = (uint8_t)(v >> 16); p[3] = (uint8_t)(v >> 24);
}
static KVX__UNUSED void kvx__le_w64(uint8_t *p, uint64_t v) {
    kvx__le_w32(p, (uint32_t)v);
    kvx__le_w32(p + 4, (uint32_t)(v >> 32));
}
static KVX__UNUSED uint16_t kvx__le_r16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static KVX__UNUSED uint32_t kvx__le_r32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static KVX__UNUSED uint64_t kvx__le_r64(const uint8_t *p) {
    return (uint64_t)kvx__le_r32(p) | (uint64_t)kvx__le_r32(p + 4) << 32;
}


static KVX__UNUSED kvx_result kvx__errno_result(int err) {
    switch (err) {
    case ENOSPC: case EDQUOT: case EFBIG: return KVX_ERR_NO_SPACE;
    case EACCES: case EPERM: case EROFS: return KVX_ERR_PERMISSION;
    case ENOENT: case ENOTDIR: return KVX_ERR_NOT_FOUND;
    case ENOMEM: return KVX_ERR_NO_MEMORY;
    default: return KVX_ERR_IO;
    }
}

/* >>impl: settings table ------------------------------------------------- */

/* One setting: a field of a desc struct (at byte offset off), its
   environment variable, its default and its range. Each header lists its
   settings once in a table of these; kvx__settings_apply resolves them. */
enum { KVX__S_INT, KVX__S_U32, KVX__S_DBL, KVX__S_STR, KVX__S_ENUM, KVX__S_BYTES };
typedef struct kvx__setting {
    const char *env;   /* "KVX_TCP_SEGMENT" */
    const char *field; /* "desc.tcp.segment", for sentences */
    size_t off;        /* offsetof the field in the struct given to apply */
    int kind;          /* KVX__S_*: int, uint32_t, double, const char *, int, uint64_t */
    int zero;          /* 1: 0 is a value (KVX_ZERO in the field asks for it) */
    double def, min, max; /* def is always accepted (it may mean "auto") */
    const char *names; /* KVX__S_ENUM: "error|warn|info|debug" -> 1, 2, 3, 4 */
} kvx__setting;

#define KVX__SET_NUM(env, T, f, kind, zero, def, min, max) \
    {env, "desc." #f, offsetof(T, f), kind, zero, def, min, max, NULL}
#define KVX__SET_INT(env, T, f, def, min, max) \
    KVX__SET_NUM(env, T, f, KVX__S_INT, 0, def, min, max)
#define KVX__SET_INT0(env, T, f, def, min, max) \
    KVX__SET_NUM(env, T, f, KVX__S_INT, 1, def, min, max)
#define KVX__SET_U32(env, T, f, def, min, max) \
    KVX__SET_NUM(env, T, f, KVX__S_U32, 0, def, min, max)
#define KVX__SET_DBL(env, T, f, def, min, max) \
    KVX__SET_NUM(env, T, f, KVX__S_DBL, 0, def, min, max)
/* A uint64_t byte count; the variable may say "500G", "64MiB", "unlimited". */
#define KVX__SET_BYTES(env, T, f, def, min, max) \
    KVX__SET_NUM(env, T, f, KVX__S_BYTES, 0, def, min, max)
#define KVX__SET_STR(env, T, f) {env, "desc." #f, offsetof(T, f), KVX__S_STR, 0, 0, 0, 0, NULL}
#define KVX__SET_ENUM(env, T, f, names) \
    {env, "desc." #f, offsetof(T, f), KVX__S_ENUM, 0, 0, 0, 0, names}

/* "warn" in "error|warn|info|debug" -> 2 (case-insensitive); 0 = none. */
static int kvx__enum_index(const char *names, const char *v) {
    size_t n = strlen(v);
    int i = 1;
    while (*names) {
        size_t len = strcspn(names, "|");
        if (len == n && !strncasecmp(names, v, n)) return i;
        names += len + (names[len] == '|');
        i++;
    }
    return 0;
}

/* A byte count: digits with an optional K/M/G/T suffix (powers of 1024,
   "Ki"/"B" accepted), or "unlimited" (UINT64_MAX). -1 when it is not one. */
static int kvx__parse_bytes(const char *s, uint64_t *out) {
    char *end = NULL;
    unsigned long long v;
    int shift = 0;
    if (!strcmp(s, "unlimited")) { *out = ~(uint64_t)0; return 0; }
    if (*s < '0' || *s > '9') return -1;
    errno = 0;
    v = strtoull(s, &end, 10);
    if (errno) return -1;
    switch (*end) {
    case 'k': case 'K': shift = 10; end++; break;
    case 'm': case 'M': shift = 20; end++; break;
    case 'g': case 'G': shift = 30; end++; break;
    case 't': case 'T': shift = 40; end++; break;
    default: break;
    }
    if (shift && *end == 'i') end++;
    if (*end == 'B' || *end == 'b') end++;
    if (*end || (shift && v > (~0ull >> shift))) return -1;
    *out = (uint64_t)v << shift;
    return 0;
}

/* The field's value as a double, and writing one back. */
static double kvx__setting_get(const kvx__setting *t, const void *desc) {
    const char *p = (const char *)desc + t->off;
    if (t->kind == KVX__S_U32) return (double)*(const uint32_t *)(const void *)p;
    if (t->kind == KVX__S_BYTES) return (double)*(const uint64_t *)(const void *)p;
    if (t->kind == KVX__S_DBL) return *(const double *)(const void *)p;
    return (double)*(const int *)(const void *)p;
}
static void kvx__setting_put(const kvx__setting *t, void *desc, double v) {
    char *p = (char *)desc + t->off;
    if (t->kind == KVX__S_U32) *(uint32_t *)(void *)p = (uint32_t)v;
    else if (t->kind == KVX__S_BYTES)
        *(uint64_t *)(void *)p = v >= 18446744073709551615.0 ? ~(uint64_t)0 : (uint64_t)v;
    else if (t->kind == KVX__S_DBL) *(double *)(void *)p = v;
    else *(int *)(void *)p = (int)v;
}

static kvx_result kvx__setting_text(const kvx__setting *t, void *desc, const char *s, char *why,
                                    size_t wl) {
    void *p = (char *)desc + t->off;
    int i;
    if (t->kind == KVX__S_STR) {
        if (s) *(const char **)p = s;
        return KVX_OK;
    }
    if (!s) return KVX_OK;
    if (!(i = kvx__enum_index(t->names, s))) {
        kvx__set_why(why, wl, "%s='%s' (%s) is not one of %s", t->env, s, t->field, t->names);
        return KVX_ERR_BAD_CONFIG;
    }
    *(int *)p = i;
    return KVX_OK;
}

/* Resolves one numeric setting: the field (0 = default, KVX_ZERO = 0 where
   0 is a value), then the variable (0 = default unless 0 is a value), then
   the range. The result is written back into the field. */
static kvx_result kvx__setting_num(const kvx__setting *t, void *desc, const char *s, char *why,
                                   size_t wl) {
    double v = kvx__setting_get(t, desc);
    const char *from = "the field";
    if (t->zero && v == KVX_ZERO) v = 0;
    else if (v == 0) v = t->def;
    if (s && t->kind == KVX__S_BYTES) {
        uint64_t b;
        if (kvx__parse_bytes(s, &b)) {
            kvx__set_why(why, wl, "%s='%.40s' (%s) is not a byte count (e.g. 512M, 64GiB, "
                         "1073741824, unlimited)", t->env, s, t->field);
            return KVX_ERR_BAD_CONFIG;
        }
        v = (double)b;
        if (v == 0) v = t->def;
        from = "the variable";
    } else if (s) {
        char *end = NULL;
        errno = 0;
        v = strtod(s, &end);
        if (errno || end == s || *end || v != v ||
            (t->kind != KVX__S_DBL && v != (double)(long long)v)) {
            kvx__set_why(why, wl, "%s='%.40s' (%s) is not a%s number", t->env, s, t->field,
                         t->kind == KVX__S_DBL ? "" : " whole");
            return KVX_ERR_BAD_CONFIG;
        }
        if (v == 0 && !t->zero) v = t->def;
        from = "the variable";
    }
    if (v != t->def && !(v >= t->min && v <= t->max)) {
        kvx__set_why(why, wl, "%s / %s is %g (from %s); it must lie in [%g, %g]%s", t->env,
                     t->field, v, from, t->min, t->max,
                     t->zero ? "" : " (0 = the default)");
        return KVX_ERR_BAD_CONFIG;
    }
    kvx__setting_put(t, desc, v);
    return KVX_OK;
}

/* Applies a settings table to desc (a struct the table's offsets refer to):
   for each row the field, then its variable when set and not empty, then
   the range. KVX_ERR_BAD_CONFIG with a sentence naming the variable and the
   field on the first bad value. */
static KVX__UNUSED kvx_result kvx__settings_apply(const kvx__setting *t, size_t n, void *desc,
                                                  char *why, size_t wl) {
    size_t i;
    for (i = 0; i < n; i++) {
        const char *s = getenv(t[i].env);
        kvx_result r;
        if (s && !*s) s = NULL;
        if (t[i].kind == KVX__S_STR || t[i].kind == KVX__S_ENUM)
            r = kvx__setting_text(&t[i], desc, s, why, wl);
        else r = kvx__setting_num(&t[i], desc, s, why, wl);
        if (r != KVX_OK) return r;
    }
    return KVX_OK;
}

/* >>impl: text buffer ---------------------------------------------------- */

/* Room for n more bytes and a NUL; -1 (and oom set) when it cannot grow. */
static int kvx__buf_reserve(kvx__buf *b, size_t n) {
    size_t nc = b->cap ? b->cap : 256;
    char *nd;
    if (b->len + n + 1 <= b->cap) return 0;
    while (nc < b->len + n + 1) nc *= 2;
    nd = (char *)kvx__grow(b->allocator, b->data, b->len, nc);
    if (!nd) {
        b->oom = 1;
        return -1;
    }
    b->data = nd;
    b->cap = nc;
    return 0;
}

static KVX__UNUSED void kvx__buf_printf(kvx__buf *b, const char *fmt, ...) {
    va_list ap;
    int n;
    if (b->oom) return;
    for (;;) {
        size_t room = b->cap - b->len;
        va_start(ap, fmt);
        n = vsnprintf(b->data ? b->data + b->len : NULL, room, fmt, ap);
        va_end(ap);
        if (n < 0) { b->oom = 1; return; }
        if ((size_t)n < room) { b->len += (size_t)n; return; }
        if (kvx__buf_reserve(b, (size_t)n)) return;
    }
}

/* s quoted and escaped. */
static KVX__UNUSED void kvx__buf_json_str(kvx__buf *b, const char *s) {
    kvx__buf_printf(b, "\"");
    for (; s && *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') kvx__buf_printf(b, "\\%c", c);
        else if (c < 0x20) kvx__buf_printf(b, "\\u%04x", c);
        else kvx__buf_printf(b, "%c", c);
    }
    kvx__buf_printf(b, "\"");
}

static KVX__UNUSED void kvx__buf_free(kvx__buf *b) {
    const kvx_allocator *a;
    if (!b) return;
    a = b->allocator;
    kvx__free(a, b->data);
    memset(b, 0, sizeof *b);
    b->allocator = a;
}

/* Appends n raw bytes (kept NUL-terminated past len), and little-endian
   integers of the wire formats. */
static KVX__UNUSED void kvx__buf_put(kvx__buf *b, const void *p, size_t n) {
    if (b->oom || kvx__buf_reserve(b, n)) return;
    if (n) memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = 0;
}
static KVX__UNUSED void kvx__buf_put16(kvx__buf *b, uint16_t v) {
    uint8_t t[2] = {(uint8_t)v, (uint8_t)(v >> 8)};
    kvx__buf_put(b, t, 2);
}
static KVX__UNUSED void kvx__buf_put32(kvx__buf *b, uint32_t v) {
    kvx__buf_put16(b, (uint16_t)v);
    kvx__buf_put16(b, (uint16_t)(v >> 16));
}
static KVX__UNUSED void kvx__buf_put64(kvx__buf *b, uint64_t v) {
    kvx__buf_put32(b, (uint32_t)v);
    kvx__buf_put32(b, (uint32_t)(v >> 32));
}

/* >>impl: json reader ---------------------------------------------------- */

typedef struct kvx__jp {
    kvx__json_doc *doc;
    const char *s, *end, *start;
    char *out;
    uint32_t max;
    int depth;
} kvx__jp;

static void kvx__jws(kvx__jp *p) {
    while (p->s < p->end && (*p->s == ' ' || *p->s == '\t' || *p->s == '\n' || *p->s == '\r'))
        p->s++;
}

static int kvx__jerr(kvx__jp *p, const char *msg) {
    if (!p->doc->error[0])
        snprintf(p->doc->error, sizeof p->doc->error, "%s at byte %ld", msg,
                 (long)(p->s - p->start));
    return -1;
}

static int kvx__jnode(kvx__jp *p, kvx__json_type t) {
    kvx__json_doc *d = p->doc;
    if (d->count >= p->max) return kvx__jerr(p, "too many JSON values");
    if (d->count == d->cap) {
        uint32_t nc = d->cap ? d->cap * 2 : 32;
        kvx__json *nn;
        if (nc > p->max) nc = p->max;
        nn = (kvx__json *)kvx__grow(d->allocator, d->nodes, d->count * sizeof *nn,
                                    nc * sizeof *nn);
        if (!nn) return kvx__jerr(p, "out of memory");
        d->nodes = nn; d->cap = nc;
    }
    memset(&d->nodes[d->count], 0, sizeof(kvx__json));
    d->nodes[d->count].type = t;
    return (int)d->count++;
}

static int kvx__jhex(const char *s, unsigned *v) {
    int i;
    *v = 0;
    for (i = 0; i < 4; i++) {
        char c = s[i];
        *v <<= 4;
        if (c >= '0' && c <= '9') *v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f') *v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') *v |= (unsigned)(c - 'A' + 10);
        else return -1;
    }
    return 0;
}

/* Reads a string literal; result is NUL-terminated in the doc's strbuf. */
static int kvx__jstr(kvx__jp *p, const char **str, uint32_t *len) {
    char *o = p->out;
    p->s++; /* opening quote */
    while (p->s < p->end && *p->s != '"') {
        unsigned char c = (unsigned char)*p->s++;
        if (c < 0x20) return kvx__jerr(p, "control character in string");
        if (c != '\\') { *o++ = (char)c; continue; }
        if (p->s >= p->end) return kvx__jerr(p, "unterminated escape");
        c = (unsigned char)*p->s++;
        switch (c) {
        case '"': case '\\': case '/': *o++ = (char)c; break;
        case 'b': *o++ = '\b'; break;
        case 'f': *o++ = '\f'; break;
        case 'n': *o++ = '\n'; break;
        case 'r': *o++ = '\r'; break;
        case 't': *o++ = '\t'; break;
        case 'u': {
            unsigned v;
            if (p->end - p->s < 4 || kvx__jhex(p->s, &v)) return kvx__jerr(p, "bad \\u escape");
            p->s += 4;
            /* surrogates are kept as-is (3 bytes each); kvx never needs them */
            if (v < 0x80) *o++ = (char)v;
            else if (v < 0x800) { *o++ = (char)(0xC0 | (v >> 6)); *o++ = (char)(0x80 | (v & 0x3F)); }
            else {
                *o++ = (char)(0xE0 | (v >> 12)); *o++ = (char)(0x80 | ((v >> 6) & 0x3F));
                *o++ = (char)(0x80 | (v & 0x3F));
            }
            break;
        }
        default: return kvx__jerr(p, "bad escape");
        }
    }
    if (p->s >= p->end) return kvx__jerr(p, "unterminated string");
    p->s++;
    *o++ = 0;
    *str = p->out;
    *len = (uint32_t)(o - p->out - 1);
    p->out = o;
    return 0;
}

static int kvx__jvalue(kvx__jp *p);

static int kvx__jcontainer(kvx__jp *p, int obj) {
    int self = kvx__jnode(p, obj ? KVX_JSON_OBJECT : KVX_JSON_ARRAY);
    int prev = -1;
    char close = obj ? '}' : ']';
    if (self < 0) return -1;
    if (++p->depth > 32) return kvx__jerr(p, "nesting deeper than 32");
    p->s++;
    kvx__jws(p);
    if (p->s < p->end && *p->s == close) { p->s++; p->depth--; return self; }
    for (;;) {
        const char *key = NULL;
        uint32_t klen = 0;
        int child;
        kvx__jws(p);
        if (obj) {
            if (p->s >= p->end || *p->s != '"') return kvx__jerr(p, "expected a key");
            if (kvx__jstr(p, &key, &klen)) return -1;
            kvx__jws(p);
            if (p->s >= p->end || *p->s != ':') return kvx__jerr(p, "expected ':'");
            p->s++;
        }
        child = kvx__jvalue(p);
        if (child < 0) return -1;
        p->doc->nodes[child].key = key;
        p->doc->nodes[child].key_len = klen;
        if (prev < 0) p->doc->nodes[self].child = (uint32_t)child;
        else p->doc->nodes[prev].next = (uint32_t)child;
        prev = child;
        p->doc->nodes[self].count++;
        kvx__jws(p);
        if (p->s < p->end && *p->s == ',') { p->s++; continue; }
        if (p->s < p->end && *p->s == close) { p->s++; break; }
        return kvx__jerr(p, obj ? "expected ',' or '}'" : "expected ',' or ']'");
    }
    p->depth--;
    return self;
}

static int kvx__jnumber(kvx__jp *p) {
    const char *st = p->s;
    char tmp[64];
    size_t n;
    int self, isint = 1;
    char *end;
    if (p->s < p->end && *p->s == '-') p->s++;
    if (p->s >= p->end || *p->s < '0' || *p->s > '9') return kvx__jerr(p, "bad number");
    while (p->s < p->end && ((*p->s >= '0' && *p->s <= '9') || *p->s == '.' || *p->s == 'e' ||
                             *p->s == 'E' || *p->s == '+' || *p->s == '-')) {
        if (*p->s == '.' || *p->s == 'e' || *p->s == 'E') isint = 0;
        p->s++;
    }
    n = (size_t)(p->s - st);
    if (n >= sizeof tmp) return kvx__jerr(p, "number too long");
    memcpy(tmp, st, n);
    tmp[n] = 0;
    self = kvx__jnode(p, KVX_JSON_NUMBER);
    if (self < 0) return -1;
    p->doc->nodes[self].num = strtod(tmp, &end);
    if (*end) return kvx__jerr(p, "bad number");
    if (isint) {
        kvx__json *nd = &p->doc->nodes[self];
        errno = 0;
        if (tmp[0] == '-') {
            nd->negative = 1;
            nd->i64 = strtoll(tmp, &end, 10);
        } else {
            nd->u64 = strtoull(tmp, &end, 10);
            nd->i64 = (int64_t)(nd->u64 & 0x7fffffffffffffffull);
        }
        nd->is_int = (errno == 0 && !*end);
    }
    return self;
}

static int kvx__jvalue(kvx__jp *p) {
    kvx__jws(p);
    if (p->s >= p->end) return kvx__jerr(p, "unexpected end");
    switch (*p->s) {
    case '{': return kvx__jcontainer(p, 1);
    case '[': return kvx__jcontainer(p, 0);
    case '"': {
        int self = kvx__jnode(p, KVX_JSON_STRING);
        if (self < 0) return -1;
        if (kvx__jstr(p, &p->doc->nodes[self].str, &p->doc->nodes[self].str_len)) return -1;
        return self;
    }
    case 't': case 'f': case 'n': {
        static const char *words[3] = {"true", "false", "null"};
        int w = *p->s == 't' ? 0 : *p->s == 'f' ? 1 : 2;
        size_t wl = strlen(words[w]);
        int self;
        if ((size_t)(p->end - p->s) < wl || memcmp(p->s, words[w], wl))
            return kvx__jerr(p, "bad literal");
        p->s += wl;
        self = kvx__jnode(p, w == 2 ? KVX_JSON_NULL : KVX_JSON_BOOL);
        if (self >= 0) p->doc->nodes[self].i64 = (w == 0);
        return self;
    }
    default: return kvx__jnumber(p);
    }
}

/* Parses text[0..len), the document's memory from allocator a (NULL: libc,
   for tools without an engine). KVX_ERR_PROTOCOL with doc->error set on bad
   input. Free with kvx__json_free even on failure. */
static KVX__UNUSED kvx_result kvx__json_parse(kvx__json_doc *doc, const kvx_allocator *a,
                                              const char *text, size_t len, uint32_t max_nodes) {
    kvx__jp p;
    memset(doc, 0, sizeof *doc);
    doc->allocator = a;
    doc->strbuf = (char *)kvx__alloc(a, len + 1);
    if (!doc->strbuf) {
        snprintf(doc->error, sizeof doc->error, "out of memory");
        return KVX_ERR_NO_MEMORY;
    }
    p.doc = doc; p.s = text; p.start = text; p.end = text + len; p.out = doc->strbuf;
    p.max = max_nodes ? max_nodes : 4096; p.depth = 0;
    if (kvx__jvalue(&p) < 0) return KVX_ERR_PROTOCOL;
    kvx__jws(&p);
    if (p.s != p.end) {
        kvx__jerr(&p, "trailing characters");
        return KVX_ERR_PROTOCOL;
    }
    return KVX_OK;
}

static KVX__UNUSED void kvx__json_free(kvx__json_doc *doc) {
    if (!doc) return;
    kvx__free(doc->allocator, doc->nodes);
    kvx__free(doc->allocator, doc->strbuf);
    doc->nodes = NULL; doc->strbuf = NULL; doc->count = doc->cap = 0;
}

static KVX__UNUSED const kvx__json *kvx__json_root(const kvx__json_doc *doc) {
    return doc->count ? &doc->nodes[0] : NULL;
}

static KVX__UNUSED const kvx__json *kvx__json_get(const kvx__json_doc *doc, const kvx__json *obj,
                                     const char *key) {
    uint32_t i;
    size_t kl = strlen(key);
    if (!obj || obj->type != KVX_JSON_OBJECT || !obj->count) return NULL;
    for (i = obj->child; ; i = doc->nodes[i].next) {
        const kvx__json *c = &doc->nodes[i];
        if (c->key_len == kl && memcmp(c->key, key, kl) == 0) return c;
        if (!c->next) break;
    }
    return NULL;
}

static KVX__UNUSED const kvx__json *kvx__json_at(const kvx__json_doc *doc, const kvx__json *arr, uint32_t idx) {
    uint32_t i, k = 0;
    if (!arr || arr->type != KVX_JSON_ARRAY || idx >= arr->count) return NULL;
    for (i = arr->child; k < idx; k++) i = doc->nodes[i].next;
    return &doc->nodes[i];
}

/* Integer member that is present, integral and within [lo, hi]. */
static KVX__UNUSED int kvx__json_u64(const kvx__json_doc *doc, const kvx__json *obj, const char *key,
                         uint64_t lo, uint64_t hi, uint64_t *out) {
    const kvx__json *v = key ? kvx__json_get(doc, obj, key) : obj;
    if (!v || v->type != KVX_JSON_NUMBER) return 0;
    if (!v->is_int || v->negative || v->u64 < lo || v->u64 > hi) return 0;
    *out = v->u64;
    return 1;
}

/* >>impl: layout ---------------------------------------------------------- */

/* Rows of the shortest of n buffers (length / item_len), and item_len summed. */
static uint64_t kvx__min_rows(const kvx_buffer *b, uint32_t n) {
    uint64_t m = UINT64_MAX;
    uint32_t i;
    if (!b || !n) return 0;
    for (i = 0; i < n; i++) {
        uint64_t p = b[i].item_len ? b[i].length / b[i].item_len : 0;
        if (p < m) m = p;
    }
    return m;
}

static uint64_t kvx__sum_items(const kvx_buffer *b, uint32_t n) {
    uint64_t s = 0;
    uint32_t i;
    for (i = 0; b && i < n; i++) s += b[i].item_len;
    return s;
}

KVX_API uint64_t kvx_layout_num_pages(const kvx_layout *l) {
    return l ? kvx__min_rows(l->buffers, l->num_buffers) : 0;
}

KVX_API uint64_t kvx_layout_page_bytes(const kvx_layout *l) {
    return l ? kvx__sum_items(l->buffers, l->num_buffers) : 0;
}

KVX_API uint64_t kvx_layout_aux_row_bytes(const kvx_layout *l) {
    uint64_t s = 0;
    uint32_t i;
    for (i = 0; l && i < l->num_aux; i++) s += l->aux[i].item_len;
    return s;
}

KVX_API uint64_t kvx_layout_num_aux_slots(const kvx_layout *l) {
    uint64_t m = UINT64_MAX;
    uint32_t i;
    if (!l || !l->num_aux) return 0;
    for (i = 0; i < l->num_aux; i++) {
        uint64_t p = l->aux[i].item_len ? l->aux[i].length / l->aux[i].item_len : 0;
        if (p < m) m = p;
    }
    return m;
}

KVX_API uint64_t kvx_layout_num_state_rows(const kvx_layout *l) {
    return l ? kvx__min_rows(l->state, l->num_state) : 0;
}

KVX_API uint64_t kvx_layout_state_row_bytes(const kvx_layout *l) {
    return l ? kvx__sum_items(l->state, l->num_state) : 0;
}

KVX_API kvx_result kvx_layout_validate(const kvx_layout *l, char *why, size_t why_len) {
    uint32_t i;
    if (!l) { kvx__set_why(why, why_len, "layout is NULL"); return KVX_ERR_INVALID_ARGUMENT; }
    if (!l->num_buffers || !l->buffers) {
        kvx__set_why(why, why_len, "layout has no KV buffers");
        return KVX_ERR_INVALID_ARGUMENT;
    }
    if (l->num_buffers > KVX_MAX_BUFFERS || l->num_aux > KVX_MAX_AUX) {
        kvx__set_why(why, why_len, "layout has %u buffers and %u aux buffers; limits are %d and %d",
                     l->num_buffers, l->num_aux, KVX_MAX_BUFFERS, KVX_MAX_AUX);
        return KVX_ERR_INVALID_ARGUMENT;
    }
    if (!l->page_size) {
        kvx__set_why(why, why_len, "layout page_size is 0");
        return KVX_ERR_INVALID_ARGUMENT;
    }
    if (l->head_begin > KVX_MAX_BUFFERS * 64u || l->layer_begin > KVX_MAX_BUFFERS * 64u) {
        kvx__set_why(why, why_len, "layout head_begin %u or layer_begin %u is beyond %u",
                     l->head_begin, l->layer_begin, KVX_MAX_BUFFERS * 64u);
        return KVX_ERR_INVALID_ARGUMENT;
    }
    if (l->num_aux && !l->aux) {
        kvx__set_why(why, why_len, "layout num_aux is %u but aux is NULL", l->num_aux);
        return KVX_ERR_INVALID_ARGUMENT;
    }
    for (i = 0; i < l->num_buffers; i++) {
        const kvx_buffer *b = &l->buffers[i];
        if (!b->item_len || b->length < b->item_len || (!b->base && b->length)) {
            kvx__set_why(why, why_len,
                         "KV buffer %u: base %p, length %llu, item_len %llu (need item_len > 0, "
                         "length >= item_len, non-NULL base)",
                         i, b->base, (unsigned long long)b->length,
                         (unsigned long long)b->item_len);
            return KVX_ERR_INVALID_ARGUMENT;
        }
        if (b->mem != KVX_MEM_HOST && b->mem != KVX_MEM_CUDA) {
            kvx__set_why(why, why_len, "KV buffer %u: unknown memory kind %d", i, (int)b->mem);
            return KVX_ERR_INVALID_ARGUMENT;
        }
    }
    if (l->num_state > KVX_MAX_STATE || (l->num_state && !l->state) || l->state_type > KVX_STATE_OTHER) {
        kvx__set_why(why, why_len, "layout has %u state buffers (limit %d, state %s) and state_type "
                     "%u (known: 0..3)", l->num_state, KVX_MAX_STATE, l->state ? "set" : "NULL",
                     l->state_type);
        return KVX_ERR_INVALID_ARGUMENT;
    }
    for (i = 0; i < l->num_state; i++) {
        const kvx_buffer *b = &l->state[i];
        if (!b->item_len || b->length < b->item_len || !b->base ||
            (b->mem != KVX_MEM_HOST && b->mem != KVX_MEM_CUDA)) {
            kvx__set_why(why, why_len,
                         "state buffer %u: base %p, length %llu, item_len %llu, memory kind %d "
                         "(need item_len > 0, length >= item_len, non-NULL base, host or cuda)",
                         i, b->base, (unsigned long long)b->length,
                         (unsigned long long)b->item_len, (int)b->mem);
            return KVX_ERR_INVALID_ARGUMENT;
        }
    }
    for (i = 0; i < l->num_aux; i++) {
        const kvx_aux_buffer *a = &l->aux[i];
        if (!a->item_len || a->length < a->item_len || !a->base) {
            kvx__set_why(why, why_len,
                         "aux buffer %u: base %p, length %llu, item_len %llu (need item_len > 0, "
                         "length >= item_len, non-NULL base)",
                         i, a->base, (unsigned long long)a->length,
                         (unsigned long long)a->item_len);
            return KVX_ERR_INVALID_ARGUMENT;
        }
    }
    return KVX_OK;
}

static void kvx__sha_u64(kvx__sha256 *h, uint64_t v) {
    uint8_t b[8];
    int i;
    for (i = 0; i < 8; i++) b[i] = (uint8_t)(v >> (8 * i));
    kvx__sha256_update(h, b, 8);
}

KVX_API uint64_t kvx_layout_fingerprint(const kvx_layout *l) {
    kvx__sha256 h;
    uint8_t d[32];
    uint64_t fp = 0;
    uint32_t i;
    const char *dt = l->dtype ? l->dtype : "";
    kvx__sha256_init(&h);
    kvx__sha256_update(&h, "kvx-layout-v1", 13);
    kvx__sha_u64(&h, l->page_size);
    kvx__sha_u64(&h, l->dtype_size);
    kvx__sha_u64(&h, strlen(dt));
    kvx__sha256_update(&h, dt, strlen(dt));
    kvx__sha_u64(&h, l->num_kv_heads);
    kvx__sha_u64(&h, (uint64_t)(l->mla != 0));
    kvx__sha_u64(&h, l->num_buffers);
    for (i = 0; i < l->num_buffers; i++) kvx__sha_u64(&h, l->buffers[i].item_len);
    kvx__sha_u64(&h, l->num_aux);
    for (i = 0; i < l->num_aux; i++) kvx__sha_u64(&h, l->aux[i].item_len);
    if (l->num_state) { /* layouts without state keep their fingerprint */
        kvx__sha256_update(&h, "state", 5);
        kvx__sha_u64(&h, l->num_state);
        for (i = 0; i < l->num_state; i++) kvx__sha_u64(&h, l->state[i].item_len);
    }
    kvx__sha256_final(&h, d);
    for (i = 0; i < 8; i++) fp |= (uint64_t)d[i] << (8 * i);
    return fp;
}

KVX_API kvx_result kvx_layout_compare(const kvx_layout *a, const kvx_layout *b, char *why,
                                      size_t why_len) {
    uint32_t i;
#define KVX__CMP(field, name)                                                                  \
    if ((uint64_t)(a->field) != (uint64_t)(b->field)) {                                        \
        kvx__set_why(why, why_len, "%s differs: ours %llu, theirs %llu", name,                \
                     (unsigned long long)(a->field), (unsigned long long)(b->field));         \
        return KVX_ERR_LAYOUT_MISMATCH;                                                        \
    }
    KVX__CMP(page_size, "page_size")
    KVX__CMP(dtype_size, "dtype_size")
    if (strcmp(a->dtype ? a->dtype : "", b->dtype ? b->dtype : "")) {
        kvx__set_why(why, why_len, "dtype differs: ours '%s', theirs '%s'",
                     a->dtype ? a->dtype : "", b->dtype ? b->dtype : "");
        return KVX_ERR_LAYOUT_MISMATCH;
    }
    KVX__CMP(num_kv_heads, "num_kv_heads")
    KVX__CMP(mla != 0, "mla")
    KVX__CMP(num_buffers, "buffer count")
    for (i = 0; i < a->num_buffers; i++)
        if (a->buffers[i].item_len != b->buffers[i].item_len) {
            kvx__set_why(why, why_len, "item_len of KV buffer %u differs: ours %llu, theirs %llu",
                         i, (unsigned long long)a->buffers[i].item_len,
                         (unsigned long long)b->buffers[i].item_len);
            return KVX_ERR_LAYOUT_MISMATCH;
        }
    KVX__CMP(num_aux, "aux buffer count")
    for (i = 0; i < a->num_aux; i++)
        if (a->aux[i].item_len != b->aux[i].item_len) {
            kvx__set_why(why, why_len, "item_len of aux buffer %u differs: ours %llu, theirs %llu",
                         i, (unsigned long long)a->aux[i].item_len,
                         (unsigned long long)b->aux[i].item_len);
            return KVX_ERR_LAYOUT_MISMATCH;
        }
    KVX__CMP(num_state, "state buffer count")
    for (i = 0; i < a->num_state; i++)
        if (a->state[i].item_len != b->state[i].item_len) {
            kvx__set_why(why, why_len, "item_len of state buffer %u differs: ours %llu, theirs %llu",
                         i, (unsigned long long)a->state[i].item_len,
                         (unsigned long long)b->state[i].item_len);
            return KVX_ERR_LAYOUT_MISMATCH;
        }
#undef KVX__CMP
    return KVX_OK;
}

/* >>impl: plan ------------------------------------------------------------- */
/* The one place that understands page indices. */

KVX_API void kvx_plan_free(kvx_plan *p) {
    const kvx_allocator *a;
    int compact;
    if (!p) return;
    a = p->allocator;
    compact = p->compact;
    kvx__free(a, p->spans);
    kvx__free(a, p->scratch);
    kvx__free(a, p->runs);
    kvx__free(a, p->bufs);
    memset(p, 0, sizeof *p);
    p->allocator = a;
    p->compact = compact;
}

/* Room for `need` spans in all (the compact page spans count but take no
   storage: spans[] holds the spans from `paged` on). */
static int kvx__plan_reserve(kvx_plan *p, size_t need) {
    size_t nc;
    kvx_span *ns;
    need -= p->paged;
    if (need <= p->capacity) return 0; /* the per-span call: first, and cheap */
    nc = p->capacity ? p->capacity : 16;
    while (nc < need) nc *= 2;
    ns = (kvx_span *)kvx__grow(p->allocator, p->spans, (p->count - p->paged) * sizeof *ns,
                               nc * sizeof *ns);
    if (!ns) return -1;
    p->spans = ns;
    p->capacity = nc;
    return 0;
}

/* The next span slot of a plan with room reserved (kvx__plan_reserve). */
static kvx_span *kvx__plan_push(kvx_plan *p) {
    KVX_ASSERT(p->count - p->paged < p->capacity);
    return &p->spans[p->count++ - p->paged];
}

/* Sorts the n non-negative indices in a[] (b[] is as long; below 2^(8 *
   bytes)): an LSD radix sort, a byte per pass, the result in a[]. Linear:
   a list chosen to collide costs no more than any other. */
static void kvx__radix_sort(int32_t *a, int32_t *b, size_t n, int bytes) {
    size_t cnt[256], i;
    int pass;
    for (pass = 0; pass < bytes; pass++) {
        unsigned sh = 8u * (unsigned)pass;
        size_t sum = 0;
        int32_t *t;
        memset(cnt, 0, sizeof cnt);
        for (i = 0; i < n; i++) cnt[((uint32_t)a[i] >> sh) & 255u]++;
        for (i = 0; i < 256; i++) {
            size_t c = cnt[i];
            cnt[i] = sum;
            sum += c;
        }
        for (i = 0; i < n; i++) b[cnt[((uint32_t)a[i] >> sh) & 255u]++] = a[i];
        t = a, a = b, b = t;
    }
    if (bytes & 1) memcpy(b, a, n * sizeof *a); /* the result is in the other array */
}

KVX_API kvx_result kvx_pages_check(kvx_plan *p, const int32_t *pages, size_t n,
                                   uint64_t pool_pages, int no_duplicates, const char *what) {
    size_t i;
    uint32_t hi = 0;
    int increasing = 1, bytes;
    if (n && !pages) {
        snprintf(p->error, sizeof p->error, "%s: page list is NULL with %zu pages", what, n);
        return KVX_ERR_INVALID_ARGUMENT;
    }
    if (n > KVX_MAX_PAGES) {
        snprintf(p->error, sizeof p->error, "%s: %zu pages exceed KVX_MAX_PAGES (%u)", what, n,
                 (unsigned)KVX_MAX_PAGES);
        return KVX_ERR_OUT_OF_RANGE;
    }
    for (i = 0; i < n; i++) {
        if (pages[i] < 0 || (uint64_t)pages[i] >= pool_pages) {
            snprintf(p->error, sizeof p->error,
                     "%s: page index %ld at position %zu is outside the pool of %llu pages", what,
                     (long)pages[i], i, (unsigned long long)pool_pages);
            return KVX_ERR_OUT_OF_RANGE;
        }
        hi |= (uint32_t)pages[i];
        if (i && pages[i] <= pages[i - 1]) increasing = 0;
    }
    /* strictly increasing (an engine's usual allocation) has no repeat */
    if (!no_duplicates || n < 2 || increasing) return KVX_OK;
    if (2 * n > p->scratch_cap) {
        int32_t *ns = (int32_t *)kvx__grow(p->allocator, p->scratch, 0, 2 * n * sizeof *ns);
        if (!ns) {
            snprintf(p->error, sizeof p->error, "%s: out of memory", what);
            return KVX_ERR_NO_MEMORY;
        }
        p->scratch = ns;
        p->scratch_cap = 2 * n;
    }
    memcpy(p->scratch, pages, n * sizeof *pages);
    for (bytes = 1; bytes < 4 && (hi >> (8 * bytes)); bytes++) {}
    kvx__radix_sort(p->scratch, p->scratch + n, n, bytes);
    for (i = 1; i < n; i++)
        if (p->scratch[i] == p->scratch[i - 1]) {
            snprintf(p->error, sizeof p->error, "%s: destination page %ld appears more than once",
                     what, (long)p->scratch[i]);
            return KVX_ERR_DUPLICATE;
        }
    return KVX_OK;
}

/* The end of the run that starts at position i: both sides consecutive
   (a side with pages == NULL is packed: position i, always consecutive). */
static size_t kvx__run_end(const int32_t *sp, const int32_t *dp, size_t n, size_t i) {
    size_t j = i + 1;
    while (j < n && (!sp || sp[j] == sp[j - 1] + 1) && (!dp || dp[j] == dp[j - 1] + 1)) j++;
    return j;
}

/* The span of `pages` pages from page (position) src to dst in buffer entry b. */
static void kvx__span_of(const kvx_plan_buf *b, uint64_t src, uint64_t dst, uint64_t pages,
                         kvx_span *s) {
    kvx_span v = {0, KVX_SPAN_PAGES, 0, 0, 0, 0, 0, 0, 0}; /* one struct store: wide stores */
    v.buffer = b->buffer;
    v.dst_buffer = b->dst_buffer;
    v.src_offset = b->src_base + src * b->src_step;
    v.dst_offset = b->dst_base + dst * b->dst_step;
    v.length = pages * b->page_bytes;
    v.row_len = b->row_len;
    v.src_pitch = b->src_pitch;
    v.dst_pitch = b->dst_pitch;
    *s = v;
}

KVX_API const kvx_span *kvx_plan_span(const kvx_plan *p, size_t k, kvx_span *tmp) {
    const kvx_plan_run *r;
    if (k >= p->paged) return &p->spans[k - p->paged];
    r = &p->runs[k % p->nruns];
    kvx__span_of(&p->bufs[k / p->nruns], r->src, r->dst, r->pages, tmp);
    return tmp;
}

/* Starts a page plan of positions [0, n) of sp -> dp for at most `maxb`
   buffers: counts the runs (*runs), keeps them when compact, and makes
   room for every span or buffer entry, so kvx__plan_add checks no
   capacity. */
static kvx_result kvx__plan_start(kvx_plan *p, const int32_t *sp, const int32_t *dp, size_t n,
                                  size_t maxb, size_t *runs) {
    size_t i, r = 0;
    p->count = p->paged = p->nruns = p->nbufs = 0;
    p->total_bytes = 0;
    p->strided = 0;
    for (i = 0; i < n; i = kvx__run_end(sp, dp, n, i)) r++;
    *runs = r;
    if (!p->compact) {
        if (!kvx__plan_reserve(p, r * maxb)) return KVX_OK;
        goto oom;
    }
    if (r > p->runs_cap) { /* grows keep the old array on failure (realloc's rule) */
        kvx_plan_run *q = (kvx_plan_run *)kvx__grow(p->allocator, p->runs, 0, r * sizeof *q);
        if (!q) goto oom;
        p->runs = q;
        p->runs_cap = r;
    }
    if (maxb > p->bufs_cap) {
        kvx_plan_buf *q = (kvx_plan_buf *)kvx__grow(p->allocator, p->bufs, 0, maxb * sizeof *q);
        if (!q) goto oom;
        p->bufs = q;
        p->bufs_cap = maxb;
    }
    for (i = 0; i < n;) {
        size_t j = kvx__run_end(sp, dp, n, i);
        kvx_plan_run *u = &p->runs[p->nruns++];
        u->src = sp ? (uint32_t)sp[i] : (uint32_t)i;
        u->dst = dp ? (uint32_t)dp[i] : (uint32_t)i;
        u->pages = (uint32_t)(j - i);
        i = j;
    }
    return KVX_OK;
oom:
    snprintf(p->error, sizeof p->error, "out of memory building a plan of %zu pages", n);
    return KVX_ERR_NO_MEMORY;
}

/* Adds buffer entry b's page spans: every run of sp -> dp (as started). */
static void kvx__plan_add(kvx_plan *p, const kvx_plan_buf *b, const int32_t *sp,
                          const int32_t *dp, size_t n, size_t runs) {
    size_t i = 0;
    p->total_bytes += (uint64_t)n * b->page_bytes;
    if (b->row_len) p->strided += runs;
    if (p->compact) {
        p->bufs[p->nbufs++] = *b;
        p->paged += runs;
        p->count += runs;
        return;
    }
    while (i < n) {
        size_t j = kvx__run_end(sp, dp, n, i);
        KVX_ASSERT(p->count < p->capacity);
        kvx__span_of(b, sp ? (uint64_t)sp[i] : i, dp ? (uint64_t)dp[i] : i, j - i,
                     &p->spans[p->count++]);
        i = j;
    }
}

/* The model layer of buffer b of l: MLA one buffer per layer, else K
   buffers of every layer, then V buffers (PARALLEL LAYOUTS). */
static uint32_t kvx__buf_layer(const kvx_layout *l, uint32_t b) {
    uint32_t ls = l->mla ? l->num_buffers : l->num_buffers / 2;
    return l->layer_begin + (ls ? b % ls : b);
}

/* Whether the plan's layer filter (LAYER-WISE SEND) keeps buffer b of l. */
static int kvx__plan_keeps(const kvx_plan *p, const kvx_layout *l, uint32_t b) {
    uint32_t layer;
    if (!p->layer_end) return 1;
    layer = kvx__buf_layer(l, b);
    return layer >= p->layer_begin && layer < p->layer_end;
}

static kvx_result kvx__plan_build(kvx_plan *p, const kvx_layout *l, const int32_t *sp,
                                  const int32_t *dp, size_t n) {
    uint64_t packed = 0;
    uint32_t b;
    size_t runs;
    p->error[0] = 0;
    if (kvx__plan_start(p, sp, dp, n, l->num_buffers, &runs) != KVX_OK) return KVX_ERR_NO_MEMORY;
    for (b = 0; b < l->num_buffers; b++) {
        uint64_t item = l->buffers[b].item_len;
        if (kvx__plan_keeps(p, l, b)) {
            kvx_plan_buf e;
            memset(&e, 0, sizeof e);
            e.buffer = e.dst_buffer = b;
            e.src_base = sp ? 0 : packed;
            e.dst_base = dp ? 0 : packed;
            e.src_step = e.dst_step = e.page_bytes = item;
            kvx__plan_add(p, &e, sp, dp, n, runs);
        }
        packed += item * n;
    }
    p->packed_bytes = (sp && dp) ? 0 : packed;
    return KVX_OK;
}

/* Where buffer b of src goes in dst (PARALLEL LAYOUTS). */
typedef struct kvx__geo {
    int64_t dst_buf;                      /* -1: dst does not hold this layer */
    uint64_t row, soff, doff, sp, dp;     /* row 0: whole pages; else the head slice */
} kvx__geo;

/* Same shape: every buffer, head and layer in the same place on both sides. */
static int kvx__same_shape(const kvx_layout *a, const kvx_layout *b) {
    uint32_t i;
    if (a->num_buffers != b->num_buffers || a->layer_begin != b->layer_begin) return 0;
    if (!a->mla && (a->head_begin != b->head_begin || a->num_kv_heads != b->num_kv_heads)) return 0;
    for (i = 0; i < a->num_buffers; i++)
        if (a->buffers[i].item_len != b->buffers[i].item_len) return 0;
    return 1;
}

/* Layers of a layout: MHA K/V pairs, MLA one buffer each. */
static uint32_t kvx__layers(const kvx_layout *l) { return l->mla ? l->num_buffers : l->num_buffers / 2; }

static kvx_result kvx__geo_of(const kvx_layout *s, const kvx_layout *d, uint32_t b, kvx__geo *g,
                              char *why, size_t wl) {
    uint32_t ls = kvx__layers(s), ld = kvx__layers(d), layer, kv = 0;
    uint64_t si = s->buffers[b].item_len, di, shb, dhb, o0, o1;
    memset(g, 0, sizeof *g);
    g->dst_buf = -1;
    if (kvx__same_shape(s, d)) {
        g->dst_buf = b;
        return KVX_OK;
    }
    if (!s->mla && ((s->num_buffers | d->num_buffers) & 1))
        return kvx__why(KVX_ERR_LAYOUT_MISMATCH, why, wl,
                        "an MHA layout split across ranks needs K and V buffers in pairs (%u and "
                        "%u buffers)", s->num_buffers, d->num_buffers);
    if (!s->mla) kv = b / ls;
    layer = s->layer_begin + (b - kv * ls);
    if (layer < d->layer_begin || layer - d->layer_begin >= ld) return KVX_OK;
    g->dst_buf = (int64_t)kv * ld + (layer - d->layer_begin);
    di = d->buffers[g->dst_buf].item_len;
    if (s->mla || (s->head_begin == d->head_begin && s->num_kv_heads == d->num_kv_heads)) {
        if (si != di)
            return kvx__why(KVX_ERR_LAYOUT_MISMATCH, why, wl,
                            "layer %u: item_len differs: source %llu, destination %llu", layer,
                            (unsigned long long)si, (unsigned long long)di);
        return KVX_OK;
    }
    if (!s->num_kv_heads || !d->num_kv_heads || si % ((uint64_t)s->page_size * s->num_kv_heads) ||
        di % ((uint64_t)d->page_size * d->num_kv_heads))
        return kvx__why(KVX_ERR_LAYOUT_MISMATCH, why, wl,
                        "layer %u: item_len %llu (source, %u heads) and %llu (destination, %u "
                        "heads) are not page_size x heads x bytes per head", layer,
                        (unsigned long long)si, s->num_kv_heads, (unsigned long long)di,
                        d->num_kv_heads);
    shb = si / ((uint64_t)s->page_size * s->num_kv_heads);
    dhb = di / ((uint64_t)d->page_size * d->num_kv_heads);
    if (shb != dhb)
        return kvx__why(KVX_ERR_LAYOUT_MISMATCH, why, wl,
                        "layer %u: bytes per head per token differ: source %llu, destination %llu",
                        layer, (unsigned long long)shb, (unsigned long long)dhb);
    if (si / s->page_size > UINT32_MAX || di / d->page_size > UINT32_MAX)
        return kvx__why(KVX_ERR_LAYOUT_MISMATCH, why, wl, "layer %u: a token row of %llu or %llu "
                        "bytes is beyond a strided span's 4 GiB pitch", layer,
                        (unsigned long long)(si / s->page_size),
                        (unsigned long long)(di / d->page_size));
    o0 = s->head_begin > d->head_begin ? s->head_begin : d->head_begin;
    o1 = (uint64_t)s->head_begin + s->num_kv_heads;
    if ((uint64_t)d->head_begin + d->num_kv_heads < o1) o1 = (uint64_t)d->head_begin + d->num_kv_heads;
    if (o0 >= o1) {
        g->dst_buf = -1; /* no head in common */
        return KVX_OK;
    }
    g->row = (o1 - o0) * shb;
    g->soff = (o0 - s->head_begin) * shb;
    g->doff = (o0 - d->head_begin) * shb;
    g->sp = (uint64_t)s->num_kv_heads * shb;
    g->dp = (uint64_t)d->num_kv_heads * shb;
    if (g->row == g->sp && g->row == g->dp) g->row = 0; /* the same heads after all */
    return KVX_OK;
}

static kvx_result kvx__overlap_check(const kvx_layout *s, const kvx_layout *d, char *why, size_t wl) {
    if (s->page_size != d->page_size)
        return kvx__why(KVX_ERR_LAYOUT_MISMATCH, why, wl, "page_size differs: source %u, "
                        "destination %u", s->page_size, d->page_size);
    if ((s->mla != 0) != (d->mla != 0))
        return kvx__why(KVX_ERR_LAYOUT_MISMATCH, why, wl, "mla differs: source %d, destination %d",
                        s->mla != 0, d->mla != 0);
    if (s->dtype_size != d->dtype_size || strcmp(s->dtype ? s->dtype : "", d->dtype ? d->dtype : ""))
        return kvx__why(KVX_ERR_LAYOUT_MISMATCH, why, wl, "dtype differs: source '%s' (%u bytes), "
                        "destination '%s' (%u bytes)", s->dtype ? s->dtype : "", s->dtype_size,
                        d->dtype ? d->dtype : "", d->dtype_size);
    return KVX_OK;
}

/* Whether two arrays of buffers (aux or state: elements of `stride` bytes
   with item_len at `off`) agree in count and every item_len; else
   KVX_ERR_LAYOUT_MISMATCH and a sentence naming the first difference. */
static kvx_result kvx__items_match(const char *what, const void *a, uint32_t na, const void *b,
                                   uint32_t nb, size_t stride, size_t off, char *why, size_t wl) {
    uint32_t i;
    if (na != nb)
        return kvx__why(KVX_ERR_LAYOUT_MISMATCH, why, wl, "%s buffer count differs: source %u, "
                        "destination %u", what, na, nb);
    for (i = 0; i < na; i++) {
        uint64_t x, y;
        memcpy(&x, (const char *)a + i * stride + off, sizeof x);
        memcpy(&y, (const char *)b + i * stride + off, sizeof y);
        if (x != y)
            return kvx__why(KVX_ERR_LAYOUT_MISMATCH, why, wl, "item_len of %s buffer %u differs: "
                            "source %llu, destination %llu", what, i, (unsigned long long)x,
                            (unsigned long long)y);
    }
    return KVX_OK;
}

static const char *kvx__state_name(uint32_t t) {
    return t == KVX_STATE_MAMBA ? "Mamba" : t == KVX_STATE_SWA ? "sliding-window" : "indexed";
}

/* HYBRID STATE: whether the state buffers of s can move to d. */
static kvx_result kvx__state_overlap(const kvx_layout *s, const kvx_layout *d, char *why, size_t wl) {
    uint32_t ls = kvx__layers(s), ld = kvx__layers(d);
    const char *nm = kvx__state_name(s->num_state ? s->state_type : d->state_type);
    kvx_result r = kvx__items_match("state", s->state, s->num_state, d->state, d->num_state,
                                    sizeof(kvx_buffer), offsetof(kvx_buffer, item_len), why, wl);
    if (r != KVX_OK) return r;
    if ((s->state_type ? s->state_type : KVX_STATE_OTHER) != (d->state_type ? d->state_type : KVX_STATE_OTHER))
        return kvx__why(KVX_ERR_LAYOUT_MISMATCH, why, wl, "state type differs: source %s, destination %s",
                        kvx__state_name(s->state_type), kvx__state_name(d->state_type));
    if (s->layer_begin != d->layer_begin || ls != ld)
        return kvx__why(KVX_ERR_LAYOUT_MISMATCH, why, wl, "%s state moves only between ranks holding "
                        "the same layers (source layers %u..%u, destination %u..%u): decode PP must "
                        "equal prefill PP for a hybrid model", nm, s->layer_begin, s->layer_begin + ls - 1,
                        d->layer_begin, d->layer_begin + ld - 1);
    if (!s->mla && (s->head_begin != d->head_begin || s->num_kv_heads != d->num_kv_heads))
        return kvx__why(KVX_ERR_LAYOUT_MISMATCH, why, wl, "%s state between ranks holding different "
                        "heads (source heads %u..%u, destination %u..%u) is refused: %s", nm,
                        s->head_begin, s->head_begin + s->num_kv_heads - 1, d->head_begin,
                        d->head_begin + d->num_kv_heads - 1,
                        s->state_type == KVX_STATE_SWA
                            ? "SGLang refuses sliding-window state with heterogeneous TP on non-MLA models too"
                            : "each TP rank holds its own slice of the state, so prefill and decode TP must be equal");
    return KVX_OK;
}

KVX_API kvx_result kvx_layout_overlap(const kvx_layout *s, const kvx_layout *d, uint64_t *bpp,
                                      int *sends_aux, char *why, size_t wl) {
    uint64_t total = 0;
    uint32_t b, ld;
    int aux = 0;
    kvx_result r;
    if (bpp) *bpp = 0;
    if (sends_aux) *sends_aux = 0;
    if (!s || !d || !s->num_buffers || !d->num_buffers || !s->buffers || !d->buffers)
        return kvx__why(KVX_ERR_INVALID_ARGUMENT, why, wl, "a layout is NULL or has no buffers");
    if ((r = kvx__overlap_check(s, d, why, wl)) != KVX_OK) return r;
    for (b = 0; b < s->num_buffers; b++) {
        kvx__geo g;
        if ((r = kvx__geo_of(s, d, b, &g, why, wl)) != KVX_OK) return r;
        if (g.dst_buf < 0) continue;
        total += g.row ? g.row * s->page_size : s->buffers[b].item_len;
    }
    ld = kvx__layers(d);
    if (total) {
        uint32_t last = d->layer_begin + ld - 1;
        aux = last >= s->layer_begin && last - s->layer_begin < kvx__layers(s);
        if (aux && !s->mla && !kvx__same_shape(s, d))
            aux = d->head_begin >= s->head_begin && d->head_begin - s->head_begin < s->num_kv_heads;
    }
    if ((s->num_state || d->num_state) && (r = kvx__state_overlap(s, d, why, wl)) != KVX_OK)
        return r;
    if (bpp) *bpp = total;
    if (sends_aux) *sends_aux = aux;
    return KVX_OK;
}

KVX_API int kvx_mla_dummy(int mla, int ptp, int prank, int dtp) {
    return mla && dtp > 0 && ptp > dtp && (prank % (ptp / dtp)) != 0;
}

KVX_API void kvx_span_copy(void *dst_base, const void *src_base, const kvx_span *s) {
    char *d = (char *)dst_base + s->dst_offset;
    const char *q = (const char *)src_base + s->src_offset;
    uint64_t k, rows;
    if (!s->row_len) {
        memcpy(d, q, (size_t)s->length);
        return;
    }
    rows = s->length / s->row_len;
    for (k = 0; k < rows; k++) memcpy(d + k * s->dst_pitch, q + k * s->src_pitch, (size_t)s->row_len);
}

/* The plan between two layouts of different shapes: per source buffer, the
   layer and head slice both hold; sp NULL is a packed source gathered by src. */
static kvx_result kvx__plan_sliced(kvx_plan *p, const kvx_layout *src, const int32_t *sp,
                                   const kvx_layout *dst, const int32_t *dp, size_t n) {
    uint64_t packed = 0;
    uint32_t b;
    size_t runs;
    kvx_result r;
    if (kvx__plan_start(p, sp, dp, n, src->num_buffers, &runs) != KVX_OK) return KVX_ERR_NO_MEMORY;
    p->packed_bytes = sp ? 0 : n * kvx_layout_page_bytes(src);
    for (b = 0; b < src->num_buffers; packed += n * src->buffers[b].item_len, b++) {
        uint64_t si = src->buffers[b].item_len;
        kvx_plan_buf e;
        kvx__geo g;
        if ((r = kvx__geo_of(src, dst, b, &g, p->error, sizeof p->error)) != KVX_OK) return r;
        if (g.dst_buf < 0 || !kvx__plan_keeps(p, src, b)) continue;
        memset(&e, 0, sizeof e);
        e.buffer = b;
        e.dst_buffer = (uint32_t)g.dst_buf;
        e.src_base = (sp ? 0 : packed) + g.soff;
        e.dst_base = g.doff;
        e.src_step = si;
        e.dst_step = dst->buffers[g.dst_buf].item_len;
        e.page_bytes = g.row ? (uint64_t)src->page_size * g.row : si;
        if (g.row) {
            e.row_len = (uint32_t)g.row;
            e.src_pitch = (uint32_t)g.sp;
            e.dst_pitch = (uint32_t)g.dp;
        }
        kvx__plan_add(p, &e, sp, dp, n, runs);
    }
    return KVX_OK;
}

/* A plan from src to dst's pages dp; sp NULL: a packed region src gathered. */
static kvx_result kvx__plan_pair(kvx_plan *p, const kvx_layout *src, const int32_t *sp,
                                 const kvx_layout *dst, const int32_t *dp, size_t n) {
    kvx_result r;
    int same;
    if (!p || !src || !dst) return KVX_ERR_INVALID_ARGUMENT;
    p->error[0] = 0;
    same = kvx__same_shape(src, dst);
    if (!same && (r = kvx__overlap_check(src, dst, p->error, sizeof p->error)) != KVX_OK)
        return r;
    if (sp && (r = kvx_pages_check(p, sp, n, kvx_layout_num_pages(src), 0, "source")) != KVX_OK)
        return r;
    if ((r = kvx_pages_check(p, dp, n, kvx_layout_num_pages(dst), 1, "destination")) != KVX_OK)
        return r;
    if (!same) return kvx__plan_sliced(p, src, sp, dst, dp, n);
    return sp ? kvx__plan_build(p, src, sp, dp, n) : kvx__plan_build(p, dst, NULL, dp, n);
}

KVX_API kvx_result kvx_plan_pages(kvx_plan *p, const kvx_layout *src, const int32_t *sp,
                                  const kvx_layout *dst, const int32_t *dp, size_t n) {
    if (!sp && n) { /* a packed source is kvx_plan_scatter_from's */
        if (p) snprintf(p->error, sizeof p->error, "source: page list is NULL with %zu pages", n);
        return KVX_ERR_INVALID_ARGUMENT;
    }
    return kvx__plan_pair(p, src, sp ? sp : dp, dst, dp, n);
}

KVX_API kvx_result kvx_plan_scatter_from(kvx_plan *p, const kvx_layout *l, const int32_t *pages,
                                         size_t n, const kvx_layout *packer) {
    return kvx__plan_pair(p, packer, NULL, l, pages, n);
}

/* Gather (dst 0: pages -> packed) or scatter (dst 1: packed -> pages). */
static kvx_result kvx__plan_packed(kvx_plan *p, const kvx_layout *l, const int32_t *pages,
                                   size_t n, int dst) {
    kvx_result r;
    if (!p || !l) return KVX_ERR_INVALID_ARGUMENT;
    p->error[0] = 0;
    r = kvx_pages_check(p, pages, n, kvx_layout_num_pages(l), dst, dst ? "destination" : "source");
    if (r != KVX_OK) return r;
    /* two calls with a constant NULL side: each inlines to a one-sided loop */
    return dst ? kvx__plan_build(p, l, NULL, pages, n) : kvx__plan_build(p, l, pages, NULL, n);
}

KVX_API kvx_result kvx_plan_gather(kvx_plan *p, const kvx_layout *l, const int32_t *pages,
                                   size_t n) {
    return kvx__plan_packed(p, l, pages, n, 0);
}

KVX_API kvx_result kvx_plan_scatter(kvx_plan *p, const kvx_layout *l, const int32_t *pages,
                                    size_t n) {
    return kvx__plan_packed(p, l, pages, n, 1);
}

/* Slot ss's row of aux buffer i -> slot ds's; a side with slot < 0 is the
   packed region at `packed`. */
static void kvx__aux_span(kvx_span *s, const kvx_layout *l, uint32_t i, int64_t ss, int64_t ds,
                          uint64_t packed) {
    uint64_t item = l->aux[i].item_len;
    memset(s, 0, sizeof *s);
    s->buffer = s->dst_buffer = i;
    s->kind = KVX_SPAN_AUX;
    s->src_offset = ss < 0 ? packed : (uint64_t)ss * item;
    s->dst_offset = ds < 0 ? packed : (uint64_t)ds * item;
    s->length = item;
}

KVX_API void *kvx_span_addr(const kvx_layout *l, const kvx_span *s, int dst) {
    uint64_t off;
    if (!l || !s) return NULL;
    off = dst ? s->dst_offset : s->src_offset;
    if (s->kind == KVX_SPAN_AUX)
        return s->buffer < l->num_aux ? (char *)l->aux[s->buffer].base + off : NULL;
    if (s->kind == KVX_SPAN_STATE)
        return s->buffer < l->num_state && l->state ? (char *)l->state[s->buffer].base + off : NULL;
    if (s->kind == KVX_SPAN_PAGES && (dst ? s->dst_buffer : s->buffer) < l->num_buffers)
        return (char *)l->buffers[dst ? s->dst_buffer : s->buffer].base + off;
    return NULL;
}

KVX_API void kvx_layout_aux_copy(const kvx_layout *l, int64_t slot, void *packed, int to_rows) {
    uint64_t off = 0;
    uint32_t i;
    for (i = 0; i < l->num_aux; i++) {
        kvx_span s;
        char *row, *q = (char *)packed + off;
        kvx__aux_span(&s, l, i, slot, -1, off);
        row = (char *)kvx_span_addr(l, &s, 0);
        memcpy(to_rows ? row : q, to_rows ? q : row, (size_t)s.length);
        off += s.length;
    }
}

static kvx_result kvx__plan_slot(kvx_plan *p, const kvx_layout *l, int32_t slot, const char *what) {
    uint64_t n = kvx_layout_num_aux_slots(l);
    if (slot >= 0 && (uint64_t)slot < n) return KVX_OK;
    snprintf(p->error, sizeof p->error, "%s aux slot %ld is outside the %llu slots of its aux "
             "buffers", what, (long)slot, (unsigned long long)n);
    return KVX_ERR_OUT_OF_RANGE;
}

/* Appends one aux span per buffer of l; ss or ds < 0: the packed side. */
static kvx_result kvx__plan_aux(kvx_plan *p, const kvx_layout *l, int32_t ss, int32_t ds) {
    uint64_t packed = p->packed_bytes;
    uint32_t i;
    if (kvx__plan_reserve(p, p->count + l->num_aux)) {
        snprintf(p->error, sizeof p->error, "out of memory adding %u aux rows", l->num_aux);
        return KVX_ERR_NO_MEMORY;
    }
    for (i = 0; i < l->num_aux; i++) {
        kvx_span *s = kvx__plan_push(p);
        kvx__aux_span(s, l, i, ss, ds, packed);
        p->total_bytes += s->length;
        packed += s->length;
    }
    if (ss < 0 || ds < 0) p->packed_bytes = packed;
    return KVX_OK;
}

KVX_API kvx_result kvx_plan_aux(kvx_plan *p, const kvx_layout *src, int32_t ss,
                                const kvx_layout *dst, int32_t ds) {
    kvx_result r;
    if (!p || !src || !dst) return KVX_ERR_INVALID_ARGUMENT;
    if ((r = kvx__items_match("aux", src->aux, src->num_aux, dst->aux, dst->num_aux,
                              sizeof(kvx_aux_buffer), offsetof(kvx_aux_buffer, item_len), p->error,
                              sizeof p->error)) != KVX_OK)
        return r;
    if ((r = kvx__plan_slot(p, src, ss, "source")) != KVX_OK ||
        (r = kvx__plan_slot(p, dst, ds, "destination")) != KVX_OK)
        return r;
    return kvx__plan_aux(p, src, ss, ds);
}

KVX_API kvx_result kvx_plan_aux_gather(kvx_plan *p, const kvx_layout *l, int32_t slot) {
    kvx_result r;
    if (!p || !l) return KVX_ERR_INVALID_ARGUMENT;
    if ((r = kvx__plan_slot(p, l, slot, "source")) != KVX_OK) return r;
    return kvx__plan_aux(p, l, slot, -1);
}

KVX_API kvx_result kvx_plan_aux_scatter(kvx_plan *p, const kvx_layout *l, int32_t slot) {
    kvx_result r;
    if (!p || !l) return KVX_ERR_INVALID_ARGUMENT;
    if ((r = kvx__plan_slot(p, l, slot, "destination")) != KVX_OK) return r;
    return kvx__plan_aux(p, l, -1, slot);
}

/* Checks state indices against l's state rows (and repeats when dst). */
static kvx_result kvx__state_check(kvx_plan *p, const kvx_layout *l, const int32_t *idx, size_t n,
                                   int dst) {
    kvx_result r;
    if (n && !l->num_state) {
        snprintf(p->error, sizeof p->error, "%u state indices given but the %s layout has no state "
                 "buffers", (unsigned)n, dst ? "destination" : "source");
        return KVX_ERR_OUT_OF_RANGE;
    }
    uint64_t rows = kvx_layout_num_state_rows(l);
    size_t i;
    if (n > KVX_MAX_PAGES || (n && !idx)) {
        snprintf(p->error, sizeof p->error, "%zu state indices (NULL list or beyond KVX_MAX_PAGES %u)",
                 n, (unsigned)KVX_MAX_PAGES);
        return KVX_ERR_OUT_OF_RANGE;
    }
    for (i = 0; i < n; i++)
        if (idx[i] < 0 || (uint64_t)idx[i] >= rows) {
            snprintf(p->error, sizeof p->error, "%s state index %ld at position %zu is outside the "
                     "%llu rows of its state buffers", dst ? "destination" : "source", (long)idx[i], i,
                     (unsigned long long)rows);
            return KVX_ERR_OUT_OF_RANGE;
        }
    r = kvx_pages_check(p, idx, n, rows, dst, "destination state");
    if (r == KVX_ERR_DUPLICATE)
        for (i = 1; i < n; i++)
            if (p->scratch[i] == p->scratch[i - 1]) {
                snprintf(p->error, sizeof p->error, "destination state index %ld appears more than once",
                         (long)p->scratch[i]);
                break;
            }
    return r;
}

/* Appends state spans: every state buffer of l, runs of si -> di (a NULL
   side is the packed region after p->packed_bytes). */
static kvx_result kvx__plan_state_runs(kvx_plan *p, const kvx_layout *l, const int32_t *si,
                                       const int32_t *di, size_t n) {
    uint64_t packed = p->packed_bytes;
    uint32_t b;
    size_t runs = 0, i;
    if (!n) return KVX_OK;
    for (i = 0; i < n; i = kvx__run_end(si, di, n, i)) runs++;
    if (kvx__plan_reserve(p, p->count + runs * l->num_state)) {
        snprintf(p->error, sizeof p->error, "out of memory adding %zu state rows", n);
        return KVX_ERR_NO_MEMORY;
    }
    for (b = 0; b < l->num_state; b++) {
        uint64_t item = l->state[b].item_len;
        i = 0;
        while (i < n) {
            size_t j = kvx__run_end(si, di, n, i);
            kvx_span *s = kvx__plan_push(p);
            memset(s, 0, sizeof *s);
            s->buffer = s->dst_buffer = b;
            s->kind = KVX_SPAN_STATE;
            s->src_offset = si ? (uint64_t)si[i] * item : packed + (uint64_t)i * item;
            s->dst_offset = di ? (uint64_t)di[i] * item : packed + (uint64_t)i * item;
            s->length = (uint64_t)(j - i) * item;
            p->total_bytes += s->length;
            i = j;
        }
        packed += (uint64_t)n * item;
    }
    if (!si || !di) p->packed_bytes = packed;
    return KVX_OK;
}

KVX_API kvx_result kvx_plan_state(kvx_plan *p, const kvx_layout *src, const int32_t *si,
                                  const kvx_layout *dst, const int32_t *di, size_t n) {
    kvx_result r;
    if (!p || !src || !dst || (n && (!si || !di))) return KVX_ERR_INVALID_ARGUMENT;
    p->error[0] = 0;
    if ((r = kvx__items_match("state", src->state, src->num_state, dst->state, dst->num_state,
                              sizeof(kvx_buffer), offsetof(kvx_buffer, item_len), p->error,
                              sizeof p->error)) != KVX_OK)
        return r;
    if ((r = kvx__state_check(p, src, si, n, 0)) != KVX_OK ||
        (r = kvx__state_check(p, dst, di, n, 1)) != KVX_OK)
        return r;
    return kvx__plan_state_runs(p, src, si, di, n);
}

/* One-sided state rows: rows idx of l -> the packed region (dst 0) or back (dst 1). */
static kvx_result kvx__plan_state_packed(kvx_plan *p, const kvx_layout *l, const int32_t *idx,
                                         size_t n, int dst) {
    kvx_result r;
    if (!p || !l || (n && !idx)) return KVX_ERR_INVALID_ARGUMENT;
    p->error[0] = 0;
    if ((r = kvx__state_check(p, l, idx, n, dst)) != KVX_OK) return r;
    return kvx__plan_state_runs(p, l, dst ? NULL : idx, dst ? idx : NULL, n);
}

KVX_API kvx_result kvx_plan_state_gather(kvx_plan *p, const kvx_layout *l, const int32_t *idx,
                                         size_t n) {
    return kvx__plan_state_packed(p, l, idx, n, 0);
}

KVX_API kvx_result kvx_plan_state_scatter(kvx_plan *p, const kvx_layout *l, const int32_t *idx,
                                          size_t n) {
    return kvx__plan_state_packed(p, l, idx, n, 1);
}

/* >>impl: engine and rooms ------------------------------------------------ */


/* A room table: an intrusive hash of 64-bit keys with chaining. The owner
   embeds a kvx__hnode in its object and holds its own lock around every
   call; the table grows (the bucket array doubles) through the allocator.
   The core's rooms, the tcp and the rdma transports' rooms use it. */
typedef struct kvx__hnode {
    struct kvx__hnode *hnext;
    uint64_t key;
} kvx__hnode;
typedef struct kvx__htab {
    kvx__hnode **b;
    size_t nb, n;
} kvx__htab;

static size_t kvx__htab_slot(size_t nb, uint64_t key) {
    key ^= key >> 33;
    key *= 0xff51afd7ed558ccdull;
    key ^= key >> 33;
    return (size_t)(key & (nb - 1));
}

static KVX__UNUSED kvx__hnode *kvx__htab_find(const kvx__htab *t, uint64_t key) {
    kvx__hnode *h;
    if (!t->nb) return NULL;
    for (h = t->b[kvx__htab_slot(t->nb, key)]; h; h = h->hnext)
        if (h->key == key) return h;
    return NULL;
}

/* KVX_ERR_NO_MEMORY when the table had to grow and could not. */
static KVX__UNUSED kvx_result kvx__htab_insert(kvx__htab *t, const kvx_allocator *a,
                                               kvx__hnode *h) {
    size_t s;
    if (t->n >= t->nb) {
        size_t nb = t->nb ? t->nb * 2 : 64, i;
        kvx__hnode **nbk = (kvx__hnode **)kvx__alloc(a, nb * sizeof *nbk);
        if (!nbk) return KVX_ERR_NO_MEMORY;
        memset(nbk, 0, nb * sizeof *nbk);
        for (i = 0; i < t->nb; i++)
            while (t->b[i]) {
                kvx__hnode *x = t->b[i];
                t->b[i] = x->hnext;
                s = kvx__htab_slot(nb, x->key);
                x->hnext = nbk[s];
                nbk[s] = x;
            }
        kvx__free(a, t->b);
        t->b = nbk;
        t->nb = nb;
    }
    s = kvx__htab_slot(t->nb, h->key);
    h->hnext = t->b[s];
    t->b[s] = h;
    t->n++;
    return KVX_OK;
}

/* Removes h when it is in the table; 1 when it was. */
static KVX__UNUSED int kvx__htab_remove(kvx__htab *t, kvx__hnode *h) {
    kvx__hnode **pp;
    if (!t->nb) return 0;
    for (pp = &t->b[kvx__htab_slot(t->nb, h->key)]; *pp; pp = &(*pp)->hnext)
        if (*pp == h) {
            *pp = h->hnext;
            h->hnext = NULL;
            t->n--;
            return 1;
        }
    return 0;
}

static KVX__UNUSED void kvx__htab_free(kvx__htab *t, const kvx_allocator *a) {
    kvx__free(a, t->b);
    memset(t, 0, sizeof *t);
}

struct kvx_room {
    kvx_engine *engine;
    uint64_t id;
    kvx_role role;
    int state;  /* atomic kvx_poll */
    int refs;   /* atomic */
    int closed; /* atomic */
    kvx_result result;
    char error[KVX_ERROR_MAX];      /* failure sentence, set once before FAILED */
    char call_error[KVX_ERROR_MAX]; /* last refused call (room not failed) */
    pthread_mutex_t mu;
    void *data;
    char *bootstrap_addr;
    uint64_t deadline_ns; /* atomic */
    const char *deadline_what;
    uint64_t created_ns;
    /* sender bookkeeping (caller's thread only) */
    int inited;
    uint32_t total_pages, sent_pages, chunks;
    int32_t aux_index;
    int32_t *state_idx;    /* HYBRID STATE: set before the last chunk / receiver_init */
    uint32_t num_state_idx;
    /* LAYER-WISE SEND: the open chunk (caller's thread only) */
    int lw_open, lw_last;      /* a chunk is open; it is the room's last */
    uint32_t lw_next, lw_index, lw_first, lw_n; /* next layer; its index, first page, pages */
    int32_t *lw_pages;         /* its page indices */
    kvx_room *prev, *next; /* engine list, under engine->mu */
    kvx__hnode hn;         /* engine->table, key = id, under engine->mu */
    int notify;              /* atomic: 1 = room_failed owed, 3 = running, 2 = done */
    kvx_room *notify_next;   /* engine->notify list, under engine->mu */
};

struct kvx_sender { kvx_room r; };
struct kvx_receiver { kvx_room r; };

#define KVX__MAX_OWNED_STRINGS 16

struct kvx_engine {
    kvx_engine_desc desc; /* env applied, strings and layout owned */
    kvx_buffer *bufs;
    kvx_aux_buffer *aux;
    kvx_buffer *state;
    char *owned[KVX__MAX_OWNED_STRINGS];
    int num_owned;
    const kvx_backend *be;
    void *be_data;
    pthread_mutex_t mu;
    kvx_room *rooms;
    kvx__htab table; /* the rooms by id, under mu */
    pthread_t progress;
    int progress_started;
    int stop; /* under mu */
    pthread_cond_t cv;
    kvx_engine_stats stats; /* atomics */
    kvx_room *notify;       /* rooms owing room_failed, under mu, each holds a ref */
    pthread_mutex_t wait_mu; /* kvx_room_wait: a state change wakes every waiter */
    pthread_cond_t wait_cv;
    int waiters; /* atomic (seq_cst, paired with the state's seq_cst change) */
    uint8_t *auth_key;      /* NULL = no authentication */
    size_t auth_key_len;
};


KVX_API void *kvx_engine_alloc(const kvx_engine *e, size_t size) {
    return kvx__alloc(&e->desc.allocator, size);
}
KVX_API void kvx_engine_free(const kvx_engine *e, void *p) { kvx__free(&e->desc.allocator, p); }

static void kvx__default_log(void *user, kvx_log_level lvl, const char *sub, uint64_t room,
                             const char *msg) {
    static const char *names[] = {"", "ERROR", "WARN", "INFO", "DEBUG"};
    (void)user;
    if (room)
        fprintf(stderr, "kvx %s %s room=%llu: %s\n", names[lvl & 7 ? lvl : 0], sub,
                (unsigned long long)room, msg);
    else
        fprintf(stderr, "kvx %s %s: %s\n", names[lvl & 7 ? lvl : 0], sub, msg);
}

KVX_API int kvx_engine_log_enabled(const kvx_engine *e, kvx_log_level lvl) {
    return lvl <= e->desc.logger.level;
}

/* One line through a logger desc (the default writes to stderr). Objects
   without an engine (the block store) log through this too. */
static void kvx__logv(const kvx_logger *lg, kvx_log_level lvl, const char *sub, uint64_t room,
                      const char *fmt, va_list ap) {
    char msg[1024];
    if (lvl > (lg->level ? lg->level : KVX_LOG_WARN)) return;
    vsnprintf(msg, sizeof msg, fmt, ap);
    if (lg->func) lg->func(lg->user_data, lvl, sub, room, msg);
    else kvx__default_log(NULL, lvl, sub, room, msg);
}

KVX_API void kvx_engine_log(const kvx_engine *e, kvx_log_level lvl, const char *sub,
                            uint64_t room, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    kvx__logv(&e->desc.logger, lvl, sub, room, fmt, ap);
    va_end(ap);
}

KVX_API const kvx_layout *kvx_engine_layout(const kvx_engine *e) { return &e->desc.layout; }
KVX_API const kvx_engine_desc *kvx_engine_settings(const kvx_engine *e) { return &e->desc; }
KVX_API const char *kvx_engine_transport(const kvx_engine *e) { return e->be->name; }
KVX_API void *kvx_engine_backend_data(const kvx_engine *e) { return e->be_data; }
KVX_API void kvx_engine_set_backend_data(kvx_engine *e, void *d) { e->be_data = d; }

KVX_API void kvx_engine_stats_get(const kvx_engine *e, kvx_engine_stats *out) {
    out->rooms_created = KVX__LOAD(&e->stats.rooms_created);
    out->rooms_succeeded = KVX__LOAD(&e->stats.rooms_succeeded);
    out->rooms_failed = KVX__LOAD(&e->stats.rooms_failed);
    out->bytes = KVX__LOAD(&e->stats.bytes);
}

/* registry ---------------------------------------------------------------- */

static pthread_mutex_t kvx__reg_mu = PTHREAD_MUTEX_INITIALIZER;
static const kvx_backend *kvx__reg[16];
static int kvx__reg_n;

KVX_API kvx_result kvx_transport_register(const kvx_backend *b) {
    int i;
    kvx_result r = KVX_OK;
    if (!b || !b->name) return KVX_ERR_INVALID_ARGUMENT;
    pthread_mutex_lock(&kvx__reg_mu);
    for (i = 0; i < kvx__reg_n; i++)
        if (strcmp(kvx__reg[i]->name, b->name) == 0) break;
    if (i < kvx__reg_n) kvx__reg[i] = b;
    else if (kvx__reg_n < (int)(sizeof kvx__reg / sizeof kvx__reg[0])) kvx__reg[kvx__reg_n++] = b;
    else r = KVX_ERR_NO_MEMORY;
    pthread_mutex_unlock(&kvx__reg_mu);
    return r;
}

KVX_API const kvx_backend *kvx_transport_find(const char *name) {
    const kvx_backend *found = NULL;
    int i;
    if (!name) return NULL;
    if (strcmp(name, "fake") == 0) return kvx_fake_backend();
    pthread_mutex_lock(&kvx__reg_mu);
    for (i = 0; i < kvx__reg_n; i++)
        if (strcmp(kvx__reg[i]->name, name) == 0) found = kvx__reg[i];
    pthread_mutex_unlock(&kvx__reg_mu);
    return found;
}

/* room state ---------------------------------------------------------------- */

KVX_API kvx_engine *kvx_room_engine(const kvx_room *r) { return r->engine; }
KVX_API uint64_t kvx_room_id(const kvx_room *r) { return r->id; }
KVX_API kvx_role kvx_room_role(const kvx_room *r) { return r->role; }
KVX_API const char *kvx_room_bootstrap_addr(const kvx_room *r) { return r->bootstrap_addr; }
KVX_API void *kvx_room_data(const kvx_room *r) { return r->data; }
KVX_API void kvx_room_set_data(kvx_room *r, void *d) { r->data = d; }
KVX_API kvx_poll kvx_room_poll(const kvx_room *r) { return (kvx_poll)KVX__LOAD(&r->state); }
KVX_API int kvx_room_closed(const kvx_room *r) { return KVX__LOAD(&r->closed); }
KVX_API kvx_result kvx_room_result(const kvx_room *r) {
    return KVX__LOAD(&r->state) == KVX_POLL_FAILED ? r->result : KVX_OK;
}
KVX_API const char *kvx_room_error(const kvx_room *r) {
    return KVX__LOAD(&r->state) == KVX_POLL_FAILED ? r->error : "";
}

static const char *kvx__subsys(const kvx_room *r) {
    return r->role == KVX_ROLE_PREFILL ? "kvx.sender" : "kvx.receiver";
}

/* Wakes kvx_room_wait callers after a state change. The change and the
   waiters count are both seq_cst: either this sees the waiter, or the
   waiter's look at the state (after it counted itself) sees the change. */
static void kvx__room_changed(kvx_room *r) {
    kvx_engine *e = r->engine;
    if (!__atomic_load_n(&e->waiters, __ATOMIC_SEQ_CST)) return;
    pthread_mutex_lock(&e->wait_mu);
    pthread_cond_broadcast(&e->wait_cv);
    pthread_mutex_unlock(&e->wait_mu);
}

static kvx_poll kvx__room_wait(const kvx_room *r, kvx_poll want, int timeout_ms) {
    kvx_engine *e = r->engine;
    uint64_t end = kvx_now_ns() + (uint64_t)(timeout_ms < 0 ? 0 : timeout_ms) * 1000000ull;
    int st;
    pthread_mutex_lock(&e->wait_mu);
    __atomic_add_fetch(&e->waiters, 1, __ATOMIC_SEQ_CST);
    for (;;) {
        uint64_t now = kvx_now_ns();
        struct timespec ts;
        st = __atomic_load_n(&r->state, __ATOMIC_SEQ_CST);
        if (st == KVX_POLL_FAILED || st >= (int)want) break;
        if (timeout_ms < 0) {
            pthread_cond_wait(&e->wait_cv, &e->wait_mu);
            continue;
        }
        if (now >= end) break;
        kvx__abstime(&ts, end - now);
        pthread_cond_timedwait(&e->wait_cv, &e->wait_mu, &ts);
    }
    __atomic_sub_fetch(&e->waiters, 1, __ATOMIC_SEQ_CST);
    pthread_mutex_unlock(&e->wait_mu);
    return (kvx_poll)st;
}

KVX_API void kvx_room_advance(kvx_room *r, kvx_poll to) {
    int cur = KVX__LOAD(&r->state);
    for (;;) {
        if (cur == KVX_POLL_FAILED || cur == KVX_POLL_SUCCESS || (int)to <= cur) return;
        if (__atomic_compare_exchange_n(&r->state, &cur, (int)to, 0, __ATOMIC_SEQ_CST,
                                        __ATOMIC_ACQUIRE))
            break;
    }
    kvx__room_changed(r);
    if (to == KVX_POLL_SUCCESS) KVX__ADD(&r->engine->stats.rooms_succeeded, 1);
    if (cur == KVX_POLL_BOOTSTRAPPING && r->role == KVX_ROLE_PREFILL)
        KVX__STORE(&r->deadline_ns, (uint64_t)0); /* bootstrap deadline met */
    kvx_engine_log(r->engine, KVX_LOG_DEBUG, kvx__subsys(r), r->id, "%s -> %s",
                   kvx_poll_str((kvx_poll)cur), kvx_poll_str(to));
}

KVX_API void kvx_room_succeed(kvx_room *r, uint64_t bytes) {
    int cur = KVX__LOAD(&r->state);
    if (cur == KVX_POLL_FAILED || cur == KVX_POLL_SUCCESS) return;
    KVX__ADD(&r->engine->stats.bytes, bytes);
    kvx_room_advance(r, KVX_POLL_SUCCESS);
}

/* Hands a failed room (with the reference failv took for it) to the
   progress thread, which calls room_failed. Once the engine is stopping
   the list is not drained again: the reference is dropped here, and
   room_failed runs when the room is closed (engine destroy closes every
   room still open). */
static void kvx__notify_queue(kvx_room *r) {
    kvx_engine *e = r->engine;
    pthread_mutex_lock(&e->mu);
    if (e->stop) {
        pthread_mutex_unlock(&e->mu);
        kvx_room_unref(r);
        return;
    }
    r->notify_next = e->notify;
    e->notify = r;
    pthread_cond_broadcast(&e->cv);
    pthread_mutex_unlock(&e->mu);
}

/* Runs room_failed once, whoever gets here first (progress thread or
   close), and only for a room that failed: notify is owed (1) before the
   state turns FAILED, so whoever sees FAILED sees the debt too. While it
   runs (3) a close waits for it (kvx__notify_wait): room_failed tells the
   peer through the transport's room state, which the close tears down. */
static void kvx__notify_run(kvx_room *r) {
    int owed = 1;
    kvx_engine *e = r->engine;
    if (KVX__LOAD(&r->state) != KVX_POLL_FAILED) return;
    if (!__atomic_compare_exchange_n(&r->notify, &owed, 3, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
        return;
    e->be->room_failed(r);
    pthread_mutex_lock(&e->mu);
    KVX__STORE(&r->notify, 2);
    pthread_cond_broadcast(&e->cv);
    pthread_mutex_unlock(&e->mu);
}

/* A close: pays an owed room_failed, or waits for the one running. */
static void kvx__notify_wait(kvx_room *r) {
    kvx_engine *e = r->engine;
    if (KVX__LOAD(&r->notify) == 1) kvx__notify_run(r);
    if (KVX__LOAD(&r->notify) != 3) return;
    kvx_engine_log(e, KVX_LOG_DEBUG, kvx__subsys(r), r->id,
                   "closing: waits for room_failed running on the progress thread");
    pthread_mutex_lock(&e->mu);
    while (KVX__LOAD(&r->notify) == 3) pthread_cond_wait(&e->cv, &e->mu);
    pthread_mutex_unlock(&e->mu);
}

static void kvx__notify_drain(kvx_engine *e) {
    kvx_room *list, *next;
    pthread_mutex_lock(&e->mu);
    list = e->notify;
    e->notify = NULL;
    pthread_mutex_unlock(&e->mu);
    for (; list; list = next) {
        next = list->notify_next;
        list->notify_next = NULL;
        kvx__notify_run(list);
        kvx_room_unref(list);
    }
}

/* Returns 1 when this call moved the room to FAILED. */
static int kvx__room_failv(kvx_room *r, kvx_result res, int remote, const char *fmt,
                           va_list ap) {
    char text[KVX_ERROR_MAX], prefix[40];
    size_t pl;
    int cur = KVX__LOAD(&r->state), owe = !remote && r->engine->be->room_failed != NULL;
    if (cur == KVX_POLL_FAILED || cur == KVX_POLL_SUCCESS) return 0;
    vsnprintf(text, sizeof text, fmt, ap);
    pl = (size_t)snprintf(prefix, sizeof prefix, "room %llu: ", (unsigned long long)r->id);
    pthread_mutex_lock(&r->mu);
    cur = KVX__LOAD(&r->state);
    if (cur == KVX_POLL_FAILED || cur == KVX_POLL_SUCCESS) {
        pthread_mutex_unlock(&r->mu);
        return 0;
    }
    if (strncmp(text, prefix, pl) == 0) pl = 0;
    memcpy(r->error, prefix, pl);
    memcpy(r->error + pl, text, sizeof r->error - pl - 1);
    r->error[sizeof r->error - 1] = 0;
    r->result = res ? res : KVX_ERR_TRANSPORT;
    if (owe) { /* owed before it is visible: a close that sees FAILED pays it */
        kvx_room_ref(r);
        KVX__STORE(&r->notify, 1);
    }
    while (!__atomic_compare_exchange_n(&r->state, &cur, KVX_POLL_FAILED, 0, __ATOMIC_SEQ_CST,
                                        __ATOMIC_ACQUIRE))
        if (cur == KVX_POLL_SUCCESS) break;
    if (owe && cur == KVX_POLL_SUCCESS) {
        KVX__STORE(&r->notify, 0);
        KVX__SUB(&r->refs, 1); /* the caller still holds one */
    }
    pthread_mutex_unlock(&r->mu);
    if (cur == KVX_POLL_SUCCESS) return 0;
    kvx__room_changed(r);
    KVX__ADD(&r->engine->stats.rooms_failed, 1);
    kvx_engine_log(r->engine, KVX_LOG_ERROR, kvx__subsys(r), r->id, "failed (%s): %s",
                   kvx_result_str(r->result), r->error);
    if (owe) kvx__notify_queue(r);
    return 1;
}

KVX_API void kvx_room_fail(kvx_room *r, kvx_result res, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    kvx__room_failv(r, res, 0, fmt, ap);
    va_end(ap);
}

KVX_API void kvx_room_fail_remote(kvx_room *r, kvx_result res, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    kvx__room_failv(r, res, 1, fmt, ap);
    va_end(ap);
}

/* A local failure that backends without room_failed hear about through
   room_abort, only when this call failed the room: a terminal room sends
   nothing. */
static KVX_PRINTF(4, 5) void kvx__room_fail_abort(kvx_room *r, kvx_result res, const char *reason,
                                 const char *fmt, ...) {
    va_list ap;
    int moved;
    va_start(ap, fmt);
    moved = kvx__room_failv(r, res, 0, fmt, ap);
    va_end(ap);
    if (moved && !r->engine->be->room_failed && r->engine->be->room_abort)
        r->engine->be->room_abort(r, reason);
}

KVX_API void kvx_room_set_deadline(kvx_room *r, uint64_t deadline_ns, const char *what) {
    pthread_mutex_lock(&r->mu);
    r->deadline_what = what;
    pthread_mutex_unlock(&r->mu);
    KVX__STORE(&r->deadline_ns, deadline_ns);
}

KVX_API uint64_t kvx_room_created_ns(const kvx_room *r) { return r->created_ns; }

KVX_API kvx_room *kvx_engine_find_room(kvx_engine *e, uint64_t id) {
    kvx__hnode *h;
    kvx_room *r = NULL;
    pthread_mutex_lock(&e->mu);
    if ((h = kvx__htab_find(&e->table, id)) != NULL) {
        r = (kvx_room *)(void *)((char *)h - offsetof(kvx_room, hn));
        KVX__ADD(&r->refs, 1);
    }
    pthread_mutex_unlock(&e->mu);
    return r;
}

KVX_API void kvx_engine_foreach_room(kvx_engine *e, void (*fn)(kvx_room *, void *), void *arg) {
    kvx_room **all, *r;
    size_t n = 0, cap, i;
    pthread_mutex_lock(&e->mu);
    cap = e->table.n;
    all = cap ? (kvx_room **)kvx_engine_alloc(e, cap * sizeof *all) : NULL;
    for (r = e->rooms; r && n < cap && all; r = r->next) {
        KVX__ADD(&r->refs, 1);
        all[n++] = r;
    }
    pthread_mutex_unlock(&e->mu);
    if (cap && !all)
        kvx_engine_log(e, KVX_LOG_ERROR, "kvx.engine", 0,
                       "out of memory: %zu rooms were not visited", cap);
    for (i = 0; i < n; i++) {
        fn(all[i], arg);
        kvx_room_unref(all[i]);
    }
    kvx_engine_free(e, all);
}

static void kvx__room_destroy_mem(kvx_room *r) {
    kvx_engine *e = r->engine;
    pthread_mutex_destroy(&r->mu);
    kvx_engine_free(e, r->bootstrap_addr);
    kvx_engine_free(e, r->state_idx);
    kvx_engine_free(e, r->lw_pages);
    kvx_engine_free(e, r);
}

KVX_API void kvx_room_ref(kvx_room *r) { KVX__ADD(&r->refs, 1); }

KVX_API void kvx_room_unref(kvx_room *r) {
    if (!r || KVX__SUB(&r->refs, 1) != 0) return;
    if (r->engine->be->room_free) r->engine->be->room_free(r);
    kvx__room_destroy_mem(r);
}

/* Fails rooms whose deadline passed. Runs on the progress thread. */
static void kvx__check_deadlines(kvx_engine *e) {
    uint64_t now = kvx_now_ns();
    kvx_room *expired[64];
    int n = 0, i;
    kvx_room *r;
    pthread_mutex_lock(&e->mu);
    for (r = e->rooms; r && n < 64; r = r->next) {
        uint64_t d = KVX__LOAD(&r->deadline_ns);
        int st = KVX__LOAD(&r->state);
        if (d && now > d && st != KVX_POLL_FAILED && st != KVX_POLL_SUCCESS) {
            kvx_room_ref(r);
            expired[n++] = r;
        }
    }
    pthread_mutex_unlock(&e->mu);
    for (i = 0; i < n; i++) {
        const char *what;
        r = expired[i];
        pthread_mutex_lock(&r->mu);
        what = r->deadline_what ? r->deadline_what : "deadline";
        pthread_mutex_unlock(&r->mu);
        kvx__room_fail_abort(r, KVX_ERR_TIMEOUT, "timed out",
                             "timed out after %.1f s in state %s: %s",
                             (double)(now - r->created_ns) / 1e9,
                             kvx_poll_str(kvx_room_poll(r)), what);
        kvx_room_unref(r);
    }
}

static void *kvx__progress_main(void *arg) {
    kvx_engine *e = (kvx_engine *)arg;
    uint64_t last_deadline_check = 0;
    pthread_mutex_lock(&e->mu);
    while (!e->stop) {
        struct timespec ts;
        uint64_t now;
        pthread_mutex_unlock(&e->mu);
        now = kvx_now_ns();
        if (now - last_deadline_check > 10000000ull) {
            kvx__check_deadlines(e);
            last_deadline_check = now;
        }
        kvx__notify_drain(e);
        if (e->be->progress) e->be->progress(e);
        pthread_mutex_lock(&e->mu);
        if (e->stop) break;
        if (e->notify) continue;
        kvx__abstime(&ts, (uint64_t)e->desc.poll_interval_us * 1000ull);
        pthread_cond_timedwait(&e->cv, &e->mu, &ts);
    }
    pthread_mutex_unlock(&e->mu);
    return NULL;
}

static const char *kvx__own(kvx_engine *e, const char *s) {
    size_t n;
    char *c;
    if (!s) return NULL;
    if (e->num_owned >= KVX__MAX_OWNED_STRINGS) return NULL;
    n = strlen(s) + 1;
    c = (char *)kvx_engine_alloc(e, n);
    if (!c) return NULL;
    memcpy(c, s, n);
    e->owned[e->num_owned++] = c;
    return c;
}

static const kvx__setting kvx__core_settings[] = {
    KVX__SET_STR("KVX_TRANSPORT", kvx_engine_desc, transport),
    KVX__SET_ENUM("KVX_LOG_LEVEL", kvx_engine_desc, logger.level, "error|warn|info|debug"),
    KVX__SET_DBL("KVX_WAITING_TIMEOUT", kvx_engine_desc, waiting_timeout_s, 300, 0.001,
                 KVX_MAX_TIMEOUT_S),
    KVX__SET_DBL("KVX_BOOTSTRAP_TIMEOUT", kvx_engine_desc, bootstrap_timeout_s, 300, 0.001,
                 KVX_MAX_TIMEOUT_S),
    KVX__SET_U32("KVX_POLL_INTERVAL_US", kvx_engine_desc, poll_interval_us, 1000, 1, 1000000),
    KVX__SET_STR("KVX_AUTH_KEY", kvx_engine_desc, auth_key),
    KVX__SET_STR("KVX_AUTH_KEY_FILE", kvx_engine_desc, auth_key_file),
};

static kvx_result kvx__apply_env(kvx_engine_desc *d, char *why, size_t wl) {
    kvx_result r = kvx__settings_apply(kvx__core_settings, KVX__COUNT(kvx__core_settings), d,
                                       why, wl);
    if (r == KVX_OK && !d->logger.level) d->logger.level = KVX_LOG_WARN;
    return r;
}

/* Reads the secret: from desc.auth_key, or from a key file that only this
   user can read (a key others can read authenticates nobody). */
static kvx_result kvx__load_auth_key(kvx_engine *e, char *why, size_t wl) {
    const kvx_engine_desc *d = &e->desc;
    uint8_t buf[KVX_MAX_AUTH_KEY + 2];
    size_t n = 0;
    if (d->auth_key && *d->auth_key && d->auth_key_file && *d->auth_key_file) {
        kvx__set_why(why, wl, "both an auth key (KVX_AUTH_KEY) and a key file (KVX_AUTH_KEY_FILE) "
                              "are set: set one");
        return KVX_ERR_BAD_CONFIG;
    }
    if (d->auth_key && *d->auth_key) {
        n = strlen(d->auth_key);
        if (n > KVX_MAX_AUTH_KEY) n = KVX_MAX_AUTH_KEY + 1;
        else memcpy(buf, d->auth_key, n);
    } else if (d->auth_key_file && *d->auth_key_file) {
        struct stat st;
        ssize_t got;
        int fd = open(d->auth_key_file, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY);
        if (fd < 0) {
            kvx__set_why(why, wl, "cannot open the key file %s (KVX_AUTH_KEY_FILE): %s",
                         d->auth_key_file, strerror(errno));
            return KVX_ERR_BAD_CONFIG;
        }
        if (fstat(fd, &st) || !S_ISREG(st.st_mode) || st.st_uid != geteuid() ||
            (st.st_mode & 077)) {
            kvx__set_why(why, wl, "the key file %s (KVX_AUTH_KEY_FILE) must be a regular file "
                                  "owned by uid %u with no group or other access (it has uid "
                                  "%u, mode %04o)",
                         d->auth_key_file, (unsigned)geteuid(), (unsigned)st.st_uid,
                         (unsigned)(st.st_mode & 07777));
            close(fd);
            return KVX_ERR_PERMISSION;
        }
        do got = read(fd, buf, sizeof buf);
        while (got < 0 && errno == EINTR);
        close(fd);
        if (got < 0) {
            kvx__set_why(why, wl, "cannot read the key file %s: %s", d->auth_key_file,
                         strerror(errno));
            return KVX_ERR_BAD_CONFIG;
        }
        n = (size_t)got;
        while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r')) n--;
    } else {
        return KVX_OK;
    }
    if (n < KVX_MIN_AUTH_KEY || n > KVX_MAX_AUTH_KEY) {
        kvx__set_why(why, wl, "the auth key has %s bytes; it needs %d to %d "
                              "(KVX_AUTH_KEY / KVX_AUTH_KEY_FILE)",
                     n > KVX_MAX_AUTH_KEY ? "too many" : n ? "too few" : "no",
                     KVX_MIN_AUTH_KEY, KVX_MAX_AUTH_KEY);
        memset(buf, 0, sizeof buf);
        return KVX_ERR_BAD_CONFIG;
    }
    e->auth_key = (uint8_t *)kvx_engine_alloc(e, n);
    if (!e->auth_key) return KVX_ERR_NO_MEMORY;
    memcpy(e->auth_key, buf, n);
    e->auth_key_len = n;
    memset(buf, 0, sizeof buf);
    return KVX_OK;
}

KVX_API const uint8_t *kvx_engine_auth_key(const kvx_engine *e, size_t *len) {
    if (len) *len = e->auth_key_len;
    return e->auth_key;
}

static kvx_result kvx__copy_layout(kvx_engine *e, const kvx_layout *src) {
    kvx_layout *l = &e->desc.layout;
    e->bufs = (kvx_buffer *)kvx_engine_alloc(e, src->num_buffers * sizeof *e->bufs);
    if (!e->bufs) return KVX_ERR_NO_MEMORY;
    memcpy(e->bufs, src->buffers, src->num_buffers * sizeof *e->bufs);
    l->buffers = e->bufs;
    if (src->num_aux) {
        e->aux = (kvx_aux_buffer *)kvx_engine_alloc(e, src->num_aux * sizeof *e->aux);
        if (!e->aux) return KVX_ERR_NO_MEMORY;
        memcpy(e->aux, src->aux, src->num_aux * sizeof *e->aux);
    }
    l->aux = e->aux;
    if (src->num_state) {
        e->state = (kvx_buffer *)kvx_engine_alloc(e, src->num_state * sizeof *e->state);
        if (!e->state) return KVX_ERR_NO_MEMORY;
        memcpy(e->state, src->state, src->num_state * sizeof *e->state);
    }
    l->state = e->state;
    l->dtype = kvx__own(e, src->dtype ? src->dtype : "");
    return l->dtype ? KVX_OK : KVX_ERR_NO_MEMORY;
}

static void kvx__engine_free(kvx_engine *e) {
    kvx_allocator a = e->desc.allocator;
    int i;
    for (i = 0; i < e->num_owned; i++) kvx__free(&a, e->owned[i]);
    if (e->auth_key) {
        memset(e->auth_key, 0, e->auth_key_len);
        kvx__free(&a, e->auth_key);
    }
    kvx__free(&a, e->bufs);
    kvx__free(&a, e->aux);
    kvx__free(&a, e->state);
    kvx__htab_free(&e->table, &a);
    pthread_mutex_destroy(&e->mu);
    pthread_cond_destroy(&e->cv);
    pthread_mutex_destroy(&e->wait_mu);
    pthread_cond_destroy(&e->wait_cv);
    kvx__free(&a, e);
}

KVX_API kvx_result kvx_engine_create(const kvx_engine_desc *desc, kvx_engine **out, char *why,
                                     size_t wl) {
    kvx_engine *e;
    kvx_engine_desc d;
    kvx_result r;
    const char *name;
    if (why && wl) why[0] = 0;
    if (!out) return KVX_ERR_INVALID_ARGUMENT;
    *out = NULL;
    if (!desc) {
        kvx__set_why(why, wl, "engine desc is NULL");
        return KVX_ERR_INVALID_ARGUMENT;
    }
    d = *desc;
    if (d.role != KVX_ROLE_PREFILL && d.role != KVX_ROLE_DECODE) {
        kvx__set_why(why, wl, "desc.role must be KVX_ROLE_PREFILL or KVX_ROLE_DECODE, not %d",
                     (int)d.role);
        return KVX_ERR_INVALID_ARGUMENT;
    }
    if ((r = kvx__apply_env(&d, why, wl)) != KVX_OK) return r;
    if ((r = kvx_layout_validate(&d.layout, why, wl)) != KVX_OK) return r;
    if (!d.backend) {
        name = d.transport ? d.transport : "fake";
        d.backend = kvx_transport_find(name);
        if (!d.backend) {
            kvx__set_why(why, wl,
                         "unknown transport '%s': compile its header (e.g. kvx_file.h) with "
                         "KVX_IMPLEMENTATION and call its register function, or set desc.backend",
                         name);
            return KVX_ERR_UNKNOWN_TRANSPORT;
        }
    }
    e = (kvx_engine *)kvx__alloc(&d.allocator, sizeof *e);
    if (!e) return KVX_ERR_NO_MEMORY;
    memset(e, 0, sizeof *e);
    e->desc = d;
    e->be = d.backend;
    pthread_mutex_init(&e->mu, NULL);
    pthread_cond_init(&e->cv, NULL);
    pthread_mutex_init(&e->wait_mu, NULL);
    pthread_cond_init(&e->wait_cv, NULL);
    r = kvx__copy_layout(e, &d.layout);
    e->desc.transport = e->be->name;
    e->desc.bootstrap_addr = kvx__own(e, d.bootstrap_addr);
    e->desc.file.dir = kvx__own(e, d.file.dir);
    e->desc.boot.host = kvx__own(e, d.boot.host);
    e->desc.tcp.host = kvx__own(e, d.tcp.host);
    e->desc.rdma.devices = kvx__own(e, d.rdma.devices);
    e->desc.rdma.library = kvx__own(e, d.rdma.library);
    if (r != KVX_OK) {
        kvx__set_why(why, wl, "out of memory copying the layout");
        goto fail;
    }
    if ((r = kvx__load_auth_key(e, why, wl)) != KVX_OK) goto fail;
    e->desc.auth_key = NULL; /* the secret lives only in e->auth_key */
    e->desc.auth_key_file = kvx__own(e, d.auth_key_file);
    if (e->be->engine_init && (r = e->be->engine_init(e, why, wl)) != KVX_OK) {
        if (why && wl && !why[0]) kvx__set_why(why, wl, "transport '%s' failed to start", e->be->name);
        goto fail;
    }
    if (pthread_create(&e->progress, NULL, kvx__progress_main, e) != 0) {
        kvx__set_why(why, wl, "cannot start the progress thread: %s", strerror(errno));
        if (e->be->engine_fini) e->be->engine_fini(e);
        r = KVX_ERR_NO_MEMORY;
        goto fail;
    }
    e->progress_started = 1;
    kvx_engine_log(e, KVX_LOG_INFO, "kvx.engine", 0,
                   "%s engine, transport %s, %u buffers, %llu pages, fingerprint %016llx",
                   d.role == KVX_ROLE_PREFILL ? "prefill" : "decode", e->be->name,
                   d.layout.num_buffers, (unsigned long long)kvx_layout_num_pages(&d.layout),
                   (unsigned long long)kvx_layout_fingerprint(&d.layout));
    *out = e;
    return KVX_OK;
fail:
    kvx__engine_free(e);
    return r;
}

/* Takes r out of the engine's list and table. */
static void kvx__room_unlink(kvx_room *r) {
    kvx_engine *e = r->engine;
    pthread_mutex_lock(&e->mu);
    if (r->prev) r->prev->next = r->next;
    else e->rooms = r->next;
    if (r->next) r->next->prev = r->prev;
    r->prev = r->next = NULL;
    kvx__htab_remove(&e->table, &r->hn);
    pthread_mutex_unlock(&e->mu);
}

static void kvx__room_close(kvx_room *r) {
    kvx_engine *e = r->engine;
    kvx__notify_wait(r);
    KVX__STORE(&r->closed, 1);
    if (e->be->room_close) e->be->room_close(r);
    kvx__room_unlink(r);
    kvx_room_unref(r);
}

KVX_API void kvx_engine_destroy(kvx_engine *e) {
    if (!e) return;
    pthread_mutex_lock(&e->mu);
    e->stop = 1;
    pthread_cond_broadcast(&e->cv);
    pthread_mutex_unlock(&e->mu);
    if (e->progress_started) pthread_join(e->progress, NULL);
    kvx__notify_drain(e);
    for (;;) {
        kvx_room *r;
        pthread_mutex_lock(&e->mu);
        r = e->rooms;
        pthread_mutex_unlock(&e->mu);
        if (!r) break;
        kvx_engine_log(e, KVX_LOG_WARN, "kvx.engine", r->id,
                       "still open at engine destroy; failed and freed");
        kvx__room_fail_abort(r, KVX_ERR_ABORTED, "the engine was destroyed",
                             "the engine was destroyed");
        kvx__room_close(r);
    }
    kvx__notify_drain(e);
    if (e->be->engine_fini) e->be->engine_fini(e);
    kvx__engine_free(e);
}

static kvx_result kvx__room_create(kvx_engine *e, const kvx_room_desc *d, kvx_role role,
                                   kvx_room **out) {
    kvx_room *r;
    kvx_result res;
    const char *addr;
    if (!out) return KVX_ERR_INVALID_ARGUMENT;
    *out = NULL;
    if (!e || !d) return KVX_ERR_INVALID_ARGUMENT;
    if (e->desc.role != role) {
        kvx_engine_log(e, KVX_LOG_ERROR, "kvx.engine", d->room,
                       "a %s needs a %s engine", role == KVX_ROLE_PREFILL ? "sender" : "receiver",
                       role == KVX_ROLE_PREFILL ? "prefill" : "decode");
        return KVX_ERR_STATE;
    }
    r = (kvx_room *)kvx_engine_alloc(e, sizeof(struct kvx_sender));
    if (!r) return KVX_ERR_NO_MEMORY;
    memset(r, 0, sizeof *r);
    r->engine = e;
    r->id = d->room;
    r->role = role;
    r->state = KVX_POLL_BOOTSTRAPPING;
    r->refs = 1;
    r->aux_index = -1;
    r->created_ns = kvx_now_ns();
    pthread_mutex_init(&r->mu, NULL);
    addr = d->bootstrap_addr ? d->bootstrap_addr : e->desc.bootstrap_addr;
    if (addr) {
        size_t n = strlen(addr) + 1;
        r->bootstrap_addr = (char *)kvx_engine_alloc(e, n);
        if (!r->bootstrap_addr) { kvx__room_destroy_mem(r); return KVX_ERR_NO_MEMORY; }
        memcpy(r->bootstrap_addr, addr, n);
    }
    if (role == KVX_ROLE_PREFILL) {
        r->deadline_ns = r->created_ns + (uint64_t)(e->desc.bootstrap_timeout_s * 1e9);
        r->deadline_what = "no destination arrived from decode (KVX_BOOTSTRAP_TIMEOUT)";
    }
    r->hn.key = r->id;
    pthread_mutex_lock(&e->mu);
    if (kvx__htab_insert(&e->table, &e->desc.allocator, &r->hn) != KVX_OK) {
        pthread_mutex_unlock(&e->mu);
        kvx__room_destroy_mem(r);
        return KVX_ERR_NO_MEMORY;
    }
    r->next = e->rooms;
    if (e->rooms) e->rooms->prev = r;
    e->rooms = r;
    pthread_mutex_unlock(&e->mu);
    KVX__ADD(&e->stats.rooms_created, 1);
    if (e->be->room_open && (res = e->be->room_open(r)) != KVX_OK) {
        kvx_room_fail(r, res, "transport %s could not open the room", e->be->name);
        KVX__STORE(&r->closed, 1);
        kvx__room_unlink(r);
        kvx_room_unref(r);
        return res;
    }
    *out = r;
    return KVX_OK;
}

static KVX_PRINTF(3, 4) kvx_result kvx__call_error(kvx_room *r, kvx_result res, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->call_error, sizeof r->call_error, fmt, ap);
    va_end(ap);
    kvx_engine_log(r->engine, KVX_LOG_WARN, kvx__subsys(r), r->id, "%s: %s",
                   kvx_result_str(res), r->call_error);
    return res;
}

static void kvx__room_abort(kvx_room *r, const char *reason) {
    kvx__room_fail_abort(r, KVX_ERR_ABORTED, reason, "aborted by the %s: %s",
                         r->role == KVX_ROLE_PREFILL ? "prefill engine" : "decode engine",
                         reason ? reason : "no reason given");
}

/* The state check of both inits: once, in WAITING_FOR_INPUT. */
static kvx_result kvx__room_init_state(kvx_room *r) {
    int st = KVX__LOAD(&r->state);
    if (r->inited || st != KVX_POLL_WAITING_FOR_INPUT)
        return kvx__call_error(r, KVX_ERR_STATE, "init called %s (state %s)",
                               r->inited ? "twice" : "before the room was ready",
                               kvx_poll_str((kvx_poll)st));
    return KVX_OK;
}

/* The aux check of both inits, then records the request. */
static kvx_result kvx__room_inited(kvx_room *r, uint32_t pages, int32_t aux_index) {
    uint64_t slots = kvx_layout_num_aux_slots(&r->engine->desc.layout);
    if (aux_index < -1 || (aux_index >= 0 && (uint64_t)aux_index >= slots)) {
        kvx_room_fail(r, KVX_ERR_OUT_OF_RANGE, "aux index %ld is outside the %llu aux slots",
                      (long)aux_index, (unsigned long long)slots);
        return KVX_ERR_OUT_OF_RANGE;
    }
    r->inited = 1;
    r->total_pages = pages;
    r->aux_index = aux_index;
    return KVX_OK;
}

/* sender -------------------------------------------------------------------- */

KVX_API kvx_result kvx_sender_create(kvx_engine *e, const kvx_room_desc *d, kvx_sender **out) {
    return kvx__room_create(e, d, KVX_ROLE_PREFILL, (kvx_room **)out);
}

KVX_API kvx_result kvx_sender_init(kvx_sender *s, uint32_t num_pages, int32_t aux_index) {
    kvx_room *r = (kvx_room *)s;
    const kvx_layout *l;
    kvx_result res;
    if (!r) return KVX_ERR_INVALID_ARGUMENT;
    l = &r->engine->desc.layout;
    if ((res = kvx__room_init_state(r)) != KVX_OK) return res;
    if (num_pages > KVX_MAX_PAGES || num_pages > kvx_layout_num_pages(l)) {
        kvx_room_fail(r, KVX_ERR_OUT_OF_RANGE,
                      "init declares %u pages but the pool holds %llu (KVX_MAX_PAGES %u)",
                      num_pages, (unsigned long long)kvx_layout_num_pages(l),
                      (unsigned)KVX_MAX_PAGES);
        return KVX_ERR_OUT_OF_RANGE;
    }
    if ((res = kvx__room_inited(r, num_pages, aux_index)) != KVX_OK) return res;
    if (r->engine->be->sender_init &&
        (res = r->engine->be->sender_init(r, num_pages, aux_index)) != KVX_OK) {
        kvx_room_fail(r, res, "transport %s refused init", r->engine->be->name);
        return res;
    }
    return KVX_OK;
}

/* Checks state indices for room r and keeps a copy (HYBRID STATE). On an
   error the room fails (what: "send" or "init"). */
static kvx_result kvx__room_keep_state(kvx_room *r, const int32_t *idx, uint32_t n, int dst) {
    kvx_engine *e = r->engine;
    kvx_plan chk;
    kvx_result res;
    if (!n) return KVX_OK;
    memset(&chk, 0, sizeof chk);
    chk.allocator = &e->desc.allocator;
    res = kvx__state_check(&chk, &e->desc.layout, idx, n, dst);
    if (res != KVX_OK) kvx_room_fail(r, res, "%s: %s", dst ? "init" : "send", chk.error);
    kvx_plan_free(&chk);
    if (res != KVX_OK) return res;
    r->state_idx = (int32_t *)kvx_engine_alloc(e, (size_t)n * sizeof *idx);
    if (!r->state_idx) {
        kvx_room_fail(r, KVX_ERR_NO_MEMORY, "out of memory for %u state indices", n);
        return KVX_ERR_NO_MEMORY;
    }
    memcpy(r->state_idx, idx, (size_t)n * sizeof *idx);
    r->num_state_idx = n;
    return KVX_OK;
}

KVX_API const int32_t *kvx_room_state(const kvx_room *r, uint32_t *n) {
    if (n) *n = r ? r->num_state_idx : 0;
    return r ? r->state_idx : NULL;
}

static kvx_result kvx__sender_send(kvx_room *r, const int32_t *pages, uint32_t n,
                                   const int32_t *state, uint32_t nstate, int lw, uint32_t lb,
                                   uint32_t le);

KVX_API kvx_result kvx_sender_send(kvx_sender *s, const int32_t *pages, uint32_t n) {
    if (!s) return KVX_ERR_INVALID_ARGUMENT;
    return kvx__sender_send((kvx_room *)s, pages, n, NULL, 0, 0, 0, 0);
}

KVX_API kvx_result kvx_sender_send_layers(kvx_sender *s, const int32_t *pages, uint32_t n,
                                          uint32_t layer_begin, uint32_t layer_end) {
    if (!s) return KVX_ERR_INVALID_ARGUMENT;
    return kvx__sender_send((kvx_room *)s, pages, n, NULL, 0, 1, layer_begin, layer_end);
}

KVX_API kvx_result kvx_sender_send_state(kvx_sender *s, const int32_t *pages, uint32_t n,
                                         const int32_t *state, uint32_t nstate) {
    kvx_room *r = (kvx_room *)s;
    if (!r) return KVX_ERR_INVALID_ARGUMENT;
    if (nstate && r->inited && KVX__LOAD(&r->state) != KVX_POLL_FAILED && !r->lw_open &&
        !(r->chunks && r->sent_pages == r->total_pages) && (uint64_t)r->sent_pages + n != r->total_pages)
        return kvx__call_error(r, KVX_ERR_STATE, "state indices go with the last chunk: this one "
                               "sends %u pages after %u of the %u declared", n, r->sent_pages,
                               r->total_pages);
    return kvx__sender_send(r, pages, n, state, nstate, 0, 0, 0);
}

/* LAYER-WISE SEND: checks a layer range against the room's open chunk (or
   opens one); KVX_OK, or the room failed with the sentence. */
static kvx_result kvx__sender_layers_check(kvx_room *r, const int32_t *pages, uint32_t n,
                                           uint32_t lb, uint32_t le) {
    const kvx_layout *l = &r->engine->desc.layout;
    uint32_t l0 = l->layer_begin, lend = l0 + (l->mla ? l->num_buffers : l->num_buffers / 2);
    uint32_t chunk = r->lw_open ? r->lw_index : r->chunks;
    if (!l->mla && (l->num_buffers & 1)) {
        kvx_room_fail(r, KVX_ERR_INVALID_ARGUMENT, "layer-wise send: the layout's %u buffers are "
                      "not K/V pairs (and it is not MLA), so they have no layers", l->num_buffers);
        return KVX_ERR_INVALID_ARGUMENT;
    }
    if (l->num_state) {
        kvx_room_fail(r, KVX_ERR_INVALID_ARGUMENT, "layer-wise send: a layout with state buffers "
                      "(HYBRID STATE) sends its chunks with kvx_sender_send / kvx_sender_send_state");
        return KVX_ERR_INVALID_ARGUMENT;
    }
    if (le <= lb || lb < l0 || le > lend) {
        kvx_room_fail(r, KVX_ERR_OUT_OF_RANGE, "chunk %u: layers [%u, %u) are %s this rank's "
                      "layers [%u, %u)", chunk, lb, le, le <= lb ? "an empty range of" : "outside",
                      l0, lend);
        return KVX_ERR_OUT_OF_RANGE;
    }
    if (!r->lw_open) {
        if (lb != l0) {
            kvx_room_fail(r, KVX_ERR_INVALID_ARGUMENT, "chunk %u: its first layer-wise send starts "
                          "at layer %u, not at this rank's first layer %u: layers go in order",
                          chunk, lb, l0);
            return KVX_ERR_INVALID_ARGUMENT;
        }
        return KVX_OK;
    }
    if (n != r->lw_n) {
        kvx_room_fail(r, KVX_ERR_INVALID_ARGUMENT, "chunk %u: layers [%u, %u) name %u pages, the "
                      "chunk's first layers %u: every layer of a chunk moves the same pages",
                      chunk, lb, le, n, r->lw_n);
        return KVX_ERR_INVALID_ARGUMENT;
    }
    if (n && memcmp(pages, r->lw_pages, (size_t)n * sizeof *pages)) {
        uint32_t k = 0;
        while (pages[k] == r->lw_pages[k]) k++;
        kvx_room_fail(r, KVX_ERR_INVALID_ARGUMENT, "chunk %u: layers [%u, %u) name other pages "
                      "than the chunk's first layers (position %u: page %ld, before %ld): every "
                      "layer of a chunk moves the same pages", chunk, lb, le, k, (long)pages[k],
                      (long)r->lw_pages[k]);
        return KVX_ERR_INVALID_ARGUMENT;
    }
    if (lb < r->lw_next) {
        kvx_room_fail(r, KVX_ERR_INVALID_ARGUMENT, "chunk %u: layer %u was already sent (layers "
                      "[%u, %u) are sent; this call sends [%u, %u))", chunk, lb, l0, r->lw_next,
                      lb, le);
        return KVX_ERR_INVALID_ARGUMENT;
    }
    if (lb > r->lw_next) {
        kvx_room_fail(r, KVX_ERR_INVALID_ARGUMENT, "chunk %u: layers [%u, %u) were skipped: this "
                      "call sends [%u, %u), and layers go in order", chunk, r->lw_next, lb, lb, le);
        return KVX_ERR_INVALID_ARGUMENT;
    }
    return KVX_OK;
}

static kvx_result kvx__sender_send(kvx_room *r, const int32_t *pages, uint32_t n,
                                   const int32_t *state, uint32_t nstate, int lw, uint32_t lb,
                                   uint32_t le) {
    kvx_engine *e;
    kvx_chunk *c;
    kvx_result res;
    const kvx_layout *l;
    uint32_t l0, lend;
    int st, opening;
    e = r->engine;
    l = &e->desc.layout;
    l0 = l->layer_begin;
    lend = l0 + (l->mla ? l->num_buffers : l->num_buffers / 2);
    st = KVX__LOAD(&r->state);
    if (st == KVX_POLL_FAILED)
        return kvx__call_error(r, KVX_ERR_STATE, "send on a failed room: %s", r->error);
    if (!r->inited)
        return kvx__call_error(r, KVX_ERR_STATE, "send before init (state %s)",
                               kvx_poll_str((kvx_poll)st));
    if (!lw && r->lw_open)
        return kvx__call_error(r, KVX_ERR_STATE, "chunk %u is open layer-wise at layer %u of "
                               "[%u, %u): send its other layers with kvx_sender_send_layers first",
                               r->lw_index, r->lw_next, l0, lend);
    opening = !r->lw_open;
    if (opening && r->chunks && r->sent_pages == r->total_pages)
        return kvx__call_error(r, KVX_ERR_STATE, "send after the last chunk (%u of %u pages sent)",
                               r->sent_pages, r->total_pages);
    if (opening && (uint64_t)r->sent_pages + n > r->total_pages) {
        kvx_room_fail(r, KVX_ERR_TOO_MANY_PAGES,
                      "chunk %u sends %u pages after %u, more than the %u declared by init",
                      r->chunks, n, r->sent_pages, r->total_pages);
        return KVX_ERR_TOO_MANY_PAGES;
    }
    if (lw && (res = kvx__sender_layers_check(r, pages, n, lb, le)) != KVX_OK) return res;
    if (!lw) lb = l0, le = lend;
    if (nstate && (res = kvx__room_keep_state(r, state, nstate, 0)) != KVX_OK) return res;
    c = (kvx_chunk *)kvx_engine_alloc(e, sizeof *c);
    if (!c) return kvx__call_error(r, KVX_ERR_NO_MEMORY, "out of memory for a chunk");
    memset(c, 0, sizeof *c);
    c->gather.allocator = &e->desc.allocator;
    /* only the page indices are checked here: the gather plan is built by
       the transports that need it (kvx_chunk_gather) */
    if (opening) {
        res = kvx_pages_check(&c->gather, pages, n, kvx_layout_num_pages(l), 0, "source");
        if (res != KVX_OK) {
            kvx_room_fail(r, res, "chunk %u: %s", r->chunks, c->gather.error);
            kvx_chunk_free(e, c);
            return res;
        }
    }
    if (n) {
        c->pages = (int32_t *)kvx_engine_alloc(e, n * sizeof *pages);
        if (!c->pages) {
            kvx_chunk_free(e, c);
            return kvx__call_error(r, KVX_ERR_NO_MEMORY, "out of memory for a chunk");
        }
        memcpy(c->pages, pages, n * sizeof *pages);
    }
    if (opening && le != lend) { /* a layer-wise chunk opens: keep its pages to compare */
        int32_t *keep = NULL;
        if (n && !(keep = (int32_t *)kvx_engine_alloc(e, n * sizeof *pages))) {
            kvx_chunk_free(e, c);
            return kvx__call_error(r, KVX_ERR_NO_MEMORY, "out of memory for a chunk");
        }
        if (n) memcpy(keep, pages, n * sizeof *pages);
        kvx_engine_free(e, r->lw_pages);
        r->lw_pages = keep;
        r->lw_n = n;
    }
    if (opening) {
        r->lw_index = r->chunks++;
        r->lw_first = r->sent_pages;
        r->sent_pages += n;
        r->lw_last = r->sent_pages == r->total_pages;
    }
    c->index = r->lw_index;
    c->first_page = r->lw_first;
    c->num_pages = n;
    c->total_pages = r->total_pages;
    c->layer_begin = lb;
    c->layer_end = le;
    c->first_part = lb == l0;
    c->last_part = le == lend;
    c->is_last = r->lw_last && c->last_part;
    c->aux_index = r->aux_index;
    r->lw_open = !c->last_part;
    r->lw_next = le;
    if (c->last_part) {
        kvx_engine_free(e, r->lw_pages);
        r->lw_pages = NULL;
        r->lw_n = 0;
    }
    kvx_room_advance(r, KVX_POLL_TRANSFERRING);
    if (!e->be->sender_send) {
        kvx_chunk_free(e, c);
        if (r->sent_pages == r->total_pages && !r->lw_open) kvx_room_succeed(r, 0);
        return KVX_OK;
    }
    if (!e->be->layerwise && !(c->first_part && c->last_part)) {
        /* a transport that takes whole chunks: the parts are held here (the
           pages are kept), and the chunk goes as one at its last layer */
        if (!c->last_part) {
            kvx_chunk_free(e, c);
            return KVX_OK;
        }
        c->layer_begin = l0;
        c->first_part = 1;
    }
    res = e->be->sender_send(r, c);
    if (res != KVX_OK) kvx_room_fail(r, res, "transport %s refused chunk", e->be->name);
    return res;
}

KVX_API const kvx_plan *kvx_chunk_gather(kvx_engine *e, kvx_chunk *c) {
    if (!e || !c) return NULL;
    if (!c->gather_ready) {
        c->gather.layer_begin = c->first_part && c->last_part ? 0 : c->layer_begin;
        c->gather.layer_end = c->first_part && c->last_part ? 0 : c->layer_end;
        if (kvx_plan_gather(&c->gather, &e->desc.layout, c->pages, c->num_pages) != KVX_OK)
            return NULL;
        c->gather_ready = 1;
    }
    return &c->gather;
}

KVX_API void kvx_chunk_free(kvx_engine *e, kvx_chunk *c) {
    if (!c) return;
    kvx_plan_free(&c->gather);
    kvx_engine_free(e, c->pages);
    kvx_engine_free(e, c);
}

KVX_API kvx_poll kvx_sender_poll(const kvx_sender *s) { return kvx_room_poll((const kvx_room *)s); }
KVX_API kvx_poll kvx_sender_wait(const kvx_sender *s, kvx_poll st, int ms) {
    return kvx__room_wait((const kvx_room *)s, st, ms);
}
KVX_API kvx_result kvx_sender_result(const kvx_sender *s) { return kvx_room_result((const kvx_room *)s); }
KVX_API const char *kvx_sender_error(const kvx_sender *s) { return kvx_room_error((const kvx_room *)s); }
KVX_API const char *kvx_sender_call_error(const kvx_sender *s) { return ((const kvx_room *)s)->call_error; }
KVX_API uint64_t kvx_sender_room(const kvx_sender *s) { return ((const kvx_room *)s)->id; }
KVX_API void kvx_sender_abort(kvx_sender *s, const char *why) { if (s) kvx__room_abort((kvx_room *)s, why); }
KVX_API void kvx_sender_destroy(kvx_sender *s) { if (s) kvx__room_close((kvx_room *)s); }

/* receiver ------------------------------------------------------------------ */

KVX_API kvx_result kvx_receiver_create(kvx_engine *e, const kvx_room_desc *d,
                                       kvx_receiver **out) {
    return kvx__room_create(e, d, KVX_ROLE_DECODE, (kvx_room **)out);
}

KVX_API kvx_result kvx_receiver_init(kvx_receiver *rc, const int32_t *pages, uint32_t n,
                                     int32_t aux_index) {
    return kvx_receiver_init_state(rc, pages, n, aux_index, NULL, 0);
}

KVX_API kvx_result kvx_receiver_init_state(kvx_receiver *rc, const int32_t *pages, uint32_t n,
                                           int32_t aux_index, const int32_t *state, uint32_t nstate) {
    kvx_room *r = (kvx_room *)rc;
    kvx_engine *e;
    const kvx_layout *l;
    kvx_plan chk;
    kvx_result res;
    if (!r) return KVX_ERR_INVALID_ARGUMENT;
    e = r->engine;
    l = &e->desc.layout;
    if ((res = kvx__room_init_state(r)) != KVX_OK) return res;
    memset(&chk, 0, sizeof chk);
    chk.allocator = &e->desc.allocator;
    res = kvx_pages_check(&chk, pages, n, kvx_layout_num_pages(l), 1, "destination");
    if (res != KVX_OK) {
        kvx_room_fail(r, res, "init: %s", chk.error);
        kvx_plan_free(&chk);
        return res;
    }
    kvx_plan_free(&chk);
    if ((res = kvx__room_inited(r, n, aux_index)) != KVX_OK) return res;
    if ((res = kvx__room_keep_state(r, state, nstate, 1)) != KVX_OK) return res;
    kvx_room_set_deadline(r, kvx_now_ns() + (uint64_t)(e->desc.waiting_timeout_s * 1e9),
                          "the KV cache did not arrive (KVX_WAITING_TIMEOUT)");
    kvx_room_advance(r, KVX_POLL_TRANSFERRING);
    if (e->be->receiver_init && (res = e->be->receiver_init(r, pages, n, aux_index)) != KVX_OK) {
        kvx_room_fail(r, res, "transport %s refused init", e->be->name);
        return res;
    }
    return KVX_OK;
}

KVX_API kvx_poll kvx_receiver_poll(const kvx_receiver *r) { return kvx_room_poll((const kvx_room *)r); }
KVX_API kvx_poll kvx_receiver_wait(const kvx_receiver *r, kvx_poll st, int ms) {
    return kvx__room_wait((const kvx_room *)r, st, ms);
}
KVX_API kvx_result kvx_receiver_result(const kvx_receiver *r) { return kvx_room_result((const kvx_room *)r); }
KVX_API const char *kvx_receiver_error(const kvx_receiver *r) { return kvx_room_error((const kvx_room *)r); }
KVX_API const char *kvx_receiver_call_error(const kvx_receiver *r) { return ((const kvx_room *)r)->call_error; }
KVX_API uint64_t kvx_receiver_room(const kvx_receiver *r) { return ((const kvx_room *)r)->id; }
KVX_API void kvx_receiver_abort(kvx_receiver *r, const char *why) { if (r) kvx__room_abort((kvx_room *)r, why); }
KVX_API void kvx_receiver_destroy(kvx_receiver *r) { if (r) kvx__room_close((kvx_room *)r); }

/* >>impl: transport rooms ------------------------------------------------- */

/* The head of every transport's room (tcp, cuda, rdma), its first member, so
   a room's kvx_room_data is also a kvx__xroom. mu is the transport's own. */
typedef struct kvx__xroom {
    kvx_room *room;
    uint64_t id;
    int32_t dst_aux, src_aux; /* -1 = none */
    pthread_mutex_t mu;
} kvx__xroom;

/* A zeroed transport room of `size` bytes (desc allocator) with its head
   filled; the caller sets its own fields, then kvx_room_set_data. */
static KVX__UNUSED void *kvx__xroom_new(kvx_room *r, size_t size) {
    kvx__xroom *x = (kvx__xroom *)kvx_engine_alloc(kvx_room_engine(r), size);
    if (!x) return NULL;
    memset(x, 0, size);
    x->room = r;
    x->id = kvx_room_id(r);
    x->dst_aux = x->src_aux = -1;
    pthread_mutex_init(&x->mu, NULL);
    return x;
}

/* The tail of every room_free hook: x and the room's data pointer. */
static KVX__UNUSED void kvx__xroom_free(void *p) {
    kvx__xroom *x = (kvx__xroom *)p;
    kvx_room_set_data(x->room, NULL);
    pthread_mutex_destroy(&x->mu);
    kvx_engine_free(kvx_room_engine(x->room), x);
}

/* Backend tables are filled by field name (C++11 has no designated
   initializers), once, on the first call, under a lock: name, engine_init,
   then fill (NULL: none) sets the other hooks. */
static KVX__UNUSED const kvx_backend *kvx__backend_table(kvx_backend *b, const char *name,
    kvx_result (*init)(kvx_engine *, char *, size_t), void (*fill)(kvx_backend *b)) {
    static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    pthread_mutex_lock(&mu);
    if (!b->name) {
        b->engine_init = init;
        if (fill) fill(b);
        b->name = name;
    }
    pthread_mutex_unlock(&mu);
    return b;
}

/* For a fill: the hooks every transport room needs, each named
   <p>_<field> (kvx__tcp_room_open ...). */
#define KVX__BACKEND_ROOM_HOOKS(b, p)                                                  \
    ((b)->engine_fini = p##_engine_fini, (b)->room_open = p##_room_open,               \
     (b)->sender_init = p##_sender_init, (b)->sender_send = p##_sender_send,           \
     (b)->receiver_init = p##_receiver_init, (b)->room_close = p##_room_close,         \
     (b)->room_free = p##_room_free, (b)->room_failed = p##_room_failed)

/* True when the room reached SUCCESS or FAILED. */
static KVX__UNUSED int kvx__room_terminal(const kvx_room *r) {
    kvx_poll p = kvx_room_poll(r);
    return p == KVX_POLL_FAILED || p == KVX_POLL_SUCCESS;
}

/* >>impl: safe directories ------------------------------------------------ */

/* Flags of kvx__dir_open / kvx__dir_check. */
#define KVX__DIR_CREATE 1 /* create the directory (and missing parents) with `mode` */
#define KVX__DIR_SHARED 2 /* shared with the group: another owner and group write are
                            accepted (others still may not write without the sticky bit) */

/* "owner uid 65534 (nobody), mode 0777" */
static KVX__UNUSED void kvx__dir_describe(const struct stat *st, char *out, size_t n) {
    struct passwd pw, *res = NULL;
    char buf[1024];
    const char *name = "?";
    if (!getpwuid_r(st->st_uid, &pw, buf, sizeof buf, &res) && res) name = res->pw_name;
    snprintf(out, n, "owner uid %u (%s), mode %04o", (unsigned)st->st_uid, name,
             (unsigned)(st->st_mode & 07777));
}

/* Checks an open directory: owned by this user or root (any owner with
   KVX__DIR_SHARED), and not writable by others (nor by the group, unless
   KVX__DIR_SHARED) unless it has the sticky bit. `path` names it in the
   sentence. KVX_ERR_PERMISSION when refused. */
static KVX__UNUSED kvx_result kvx__dir_check(int fd, const char *path, int flags, char *why, size_t wl) {
    struct stat st;
    char desc[300];
    uid_t me = geteuid();
    mode_t bad = (flags & KVX__DIR_SHARED) ? S_IWOTH : (S_IWGRP | S_IWOTH);
    if (fstat(fd, &st)) {
        int err = errno;
        kvx__set_why(why, wl, "cannot stat %s: %s", path, strerror(err));
        return kvx__errno_result(err);
    }
    if (!S_ISDIR(st.st_mode)) {
        kvx__set_why(why, wl, "%s is not a directory", path);
        return KVX_ERR_NOT_FOUND;
    }
    kvx__dir_describe(&st, desc, sizeof desc);
    if (!(flags & KVX__DIR_SHARED) && st.st_uid != me && st.st_uid != 0) {
        kvx__set_why(why, wl, "refusing directory %s (%s): it belongs to another user, who could "
                     "plant links in it (share a directory between users only with "
                     "KVX_FILE_SHARED=1 and a group-owned directory)", path, desc);
        return KVX_ERR_PERMISSION;
    }
    if ((st.st_mode & bad) && !(st.st_mode & S_ISVTX)) {
        kvx__set_why(why, wl, "refusing directory %s (%s): %s may write in it and it has no "
                     "sticky bit, so they could plant or swap files and links", path, desc,
                     (st.st_mode & S_IWOTH) ? "every user" : "the group");
        return KVX_ERR_PERMISSION;
    }
    return KVX_OK;
}

/* Sleeps us microseconds (a backoff between retries; never a wait for a state). */
static KVX__UNUSED void kvx__sleep_us(long us) {
    struct timespec ts;
    ts.tv_sec = us / 1000000L;
    ts.tv_nsec = (us % 1000000L) * 1000L;
    nanosleep(&ts, NULL);
}

/* mkdirat(dfd, name, mode) for shared filesystems whose mkdir can answer
   EEXIST for a directory that then does not exist: GlusterFS does when
   another client looks the new name up while the brick makes it (the
   lookup stamps its own id on the fresh directory, the brick's mkdir then
   fails to stamp its own, removes the directory and answers EEXIST). The
   answer is checked with a lookup, and mkdir retried, a bounded number of
   times (about 2 s in all), until the name is a directory or something
   else. Returns 0 when dfd/name exists (made by this call: *made = 1;
   already there: 0; it may be something other than a directory: open it
   with O_DIRECTORY | O_NOFOLLOW and see), -1 with errno otherwise.
   made may be NULL. */
static KVX__UNUSED int kvx__mkdirat(int dfd, const char *name, unsigned mode, int *made) {
    struct stat st;
    long wait_us = 1000;
    int i, m;
    if (made) *made = 0;
    for (i = 0;; i++) {
        m = mkdirat(dfd, name, (mode_t)mode) == 0;
        if (!m && errno != EEXIST) return -1;
        if (!fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW)) {
            if (made) *made = m;
            return 0;
        }
        if (errno != ENOENT) return -1;
        /* answered "made" or "exists", yet not there: the filesystem undid
           it (see above); look again after a while */
        if (i >= 24) { errno = EEXIST; return -1; }
        kvx__sleep_us(wait_us);
        if (wait_us < 100000) wait_us *= 2;
    }
}

/* Opens directory `path` for openat & co. without trusting links: every
   component is opened relative to its parent, the last one never through a
   symbolic link, an earlier one only through a link owned by root or this
   user. The directory and every parent must pass kvx__dir_check. On success
   *fd is an O_DIRECTORY descriptor (close it); else KVX_ERR_NOT_FOUND,
   KVX_ERR_PERMISSION... and a sentence naming the directory, its owner and
   mode. Thread-safe; blocks on the filesystem. */
static KVX__UNUSED kvx_result kvx__dir_open(const char *path, unsigned mode, int flags, int *fd_out,
                                char *why, size_t wl) {
    char tmp[4096];
    size_t n = path ? strlen(path) : 0, i = 0;
    int fd;
    kvx_result r;
    *fd_out = -1;
    if (n == 0 || n >= sizeof tmp) {
        kvx__set_why(why, wl, "directory path '%s' is empty or too long", path ? path : "");
        return KVX_ERR_INVALID_ARGUMENT;
    }
    memcpy(tmp, path, n + 1);
    fd = open(tmp[0] == '/' ? "/" : ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) {
        int err = errno;
        kvx__set_why(why, wl, "cannot open %s: %s", tmp[0] == '/' ? "/" : ".", strerror(err));
        return kvx__errno_result(err);
    }
    while (i < n) {
        size_t start, end;
        int last, next, err, tries;
        struct stat lst;
        while (i < n && tmp[i] == '/') i++;
        if (i >= n) break;
        start = i;
        while (i < n && tmp[i] != '/') i++;
        end = i;
        while (i < n && tmp[i] == '/') i++;
        last = i >= n;
        tmp[end] = 0;
        for (tries = 0;; tries++) {
            int gone = fstatat(fd, tmp + start, &lst, AT_SYMLINK_NOFOLLOW);
            if (gone && errno == ENOENT && (flags & KVX__DIR_CREATE)) {
                if (kvx__mkdirat(fd, tmp + start, mode, NULL)) {
                    err = errno;
                    kvx__set_why(why, wl, "cannot create directory %s: %s", tmp, strerror(err));
                    close(fd);
                    return kvx__errno_result(err);
                }
                gone = fstatat(fd, tmp + start, &lst, AT_SYMLINK_NOFOLLOW);
            }
            if (gone) memset(&lst, 0, sizeof lst); /* not a link, as far as we know: openat says */
            if (S_ISLNK(lst.st_mode)) {
                char desc[300];
                kvx__dir_describe(&lst, desc, sizeof desc);
                if (last || (lst.st_uid != geteuid() && lst.st_uid != 0)) {
                    kvx__set_why(why, wl, "refusing %s: it is a symbolic link (%s)%s", tmp, desc,
                                 last ? "; give the directory itself" : " of another user");
                    close(fd);
                    return KVX_ERR_PERMISSION;
                }
            }
            next = openat(fd, tmp + start,
                          O_RDONLY | O_DIRECTORY | O_CLOEXEC | (last ? O_NOFOLLOW : 0));
            /* made (or found) a moment ago, gone now: on GlusterFS, two
               clients making one directory at once can see it undone under
               them (kvx__mkdirat); make or find it again, a few times */
            if (next >= 0 || errno != ENOENT || !(flags & KVX__DIR_CREATE) || tries >= 8) break;
            kvx__sleep_us(1000L << tries); /* 1 ms, doubling: 0.26 s in all */
        }
        if (next < 0) {
            err = errno;
            if (err == ENOTDIR || err == ELOOP)
                kvx__set_why(why, wl, "%s is not a directory", tmp);
            else
                kvx__set_why(why, wl, "cannot open directory %s: %s", tmp, strerror(err));
            close(fd);
            return err == ELOOP ? KVX_ERR_PERMISSION : kvx__errno_result(err);
        }
        close(fd);
        fd = next;
        if ((r = kvx__dir_check(fd, tmp, flags, why, wl)) != KVX_OK) {
            close(fd);
            return r;
        }
        tmp[end] = path[end];
    }
    if (faccessat(fd, ".", W_OK | X_OK, AT_EACCESS)) {
        int err = errno;
        kvx__set_why(why, wl, "no write permission on %s: %s", path, strerror(err));
        close(fd);
        return KVX_ERR_PERMISSION;
    }
    *fd_out = fd;
    return KVX_OK;
}

/* >>impl: fake transport -------------------------------------------------- */

static kvx_result kvx__fake_open(kvx_room *r) {
    kvx_room_advance(r, KVX_POLL_WAITING_FOR_INPUT);
    return KVX_OK;
}
static kvx_result kvx__fake_send(kvx_room *r, kvx_chunk *c) {
    int last = c->is_last;
    kvx_chunk_free(kvx_room_engine(r), c);
    if (last) kvx_room_succeed(r, 0);
    return KVX_OK;
}
static kvx_result kvx__fake_recv_init(kvx_room *r, const int32_t *p, uint32_t n, int32_t aux) {
    (void)p; (void)n; (void)aux;
    kvx_room_succeed(r, 0);
    return KVX_OK;
}

static void kvx__fake_hooks(kvx_backend *b) {
    b->room_open = kvx__fake_open;
    b->sender_send = kvx__fake_send;
    b->receiver_init = kvx__fake_recv_init;
}

KVX_API const kvx_backend *kvx_fake_backend(void) {
    static kvx_backend b;
    return kvx__backend_table(&b, "fake", NULL, kvx__fake_hooks);
}

/* >>impl: worker queue ---------------------------------------------------- */

typedef struct kvx__job {
    kvx__job_fn fn;
    void *arg;
    struct kvx__job *next;
} kvx__job;

struct kvx__workq {
    kvx_engine *engine;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    kvx__job *head, *tail;
    int stop;
    int nthreads;
    pthread_t *threads;
};

static void *kvx__workq_main(void *arg) {
    kvx__workq *q = (kvx__workq *)arg;
    for (;;) {
        kvx__job *j;
        pthread_mutex_lock(&q->mu);
        while (!q->head && !q->stop) pthread_cond_wait(&q->cv, &q->mu);
        j = q->head;
        if (!j) { pthread_mutex_unlock(&q->mu); break; }
        q->head = j->next;
        if (!q->head) q->tail = NULL;
        pthread_mutex_unlock(&q->mu);
        j->fn(j->arg);
        kvx_engine_free(q->engine, j);
    }
    return NULL;
}

/* Runs every queued job, joins the threads, frees. NULL ok. */
static KVX__UNUSED void kvx__workq_destroy(kvx__workq *q) {
    int i;
    if (!q) return;
    pthread_mutex_lock(&q->mu);
    q->stop = 1;
    pthread_cond_broadcast(&q->cv);
    pthread_mutex_unlock(&q->mu);
    for (i = 0; i < q->nthreads; i++) pthread_join(q->threads[i], NULL);
    pthread_mutex_destroy(&q->mu);
    pthread_cond_destroy(&q->cv);
    kvx_engine_free(q->engine, q->threads);
    kvx_engine_free(q->engine, q);
}

static KVX__UNUSED kvx_result kvx__workq_create(kvx_engine *e, int threads, const char *name,
                                    kvx__workq **out) {
    kvx__workq *q;
    int i;
    (void)name;
    *out = NULL;
    if (threads < 1) threads = 1;
    if (threads > 256) threads = 256;
    q = (kvx__workq *)kvx_engine_alloc(e, sizeof *q);
    if (!q) return KVX_ERR_NO_MEMORY;
    memset(q, 0, sizeof *q);
    q->engine = e;
    q->threads = (pthread_t *)kvx_engine_alloc(e, (size_t)threads * sizeof(pthread_t));
    if (!q->threads) { kvx_engine_free(e, q); return KVX_ERR_NO_MEMORY; }
    pthread_mutex_init(&q->mu, NULL);
    pthread_cond_init(&q->cv, NULL);
    for (i = 0; i < threads; i++) {
        if (pthread_create(&q->threads[i], NULL, kvx__workq_main, q) != 0) break;
        q->nthreads++;
    }
    if (!q->nthreads) {
        kvx__workq_destroy(q);
        return KVX_ERR_NO_MEMORY;
    }
    *out = q;
    return KVX_OK;
}

static KVX__UNUSED kvx_result kvx__workq_submit(kvx__workq *q, kvx__job_fn fn, void *arg) {
    kvx__job *j = (kvx__job *)kvx_engine_alloc(q->engine, sizeof *j);
    if (!j) return KVX_ERR_NO_MEMORY;
    j->fn = fn;
    j->arg = arg;
    j->next = NULL;
    pthread_mutex_lock(&q->mu);
    if (q->tail) q->tail->next = j;
    else q->head = j;
    q->tail = j;
    pthread_cond_signal(&q->cv);
    pthread_mutex_unlock(&q->mu);
    return KVX_OK;
}

#ifdef __cplusplus
}
#endif
#endif /* KVX_IMPLEMENTATION */

/*
------------------------------------------------------------------------------
MIT License

Copyright (c) 2026 the kvx authors

Permission is hereby granted, free of charge, to any person obtaining a copy of
this software and associated documentation files (the "Software"), to deal in
the Software without restriction, including without limitation the rights to
use, copy, modify, merge, publish, distribute, sublicense, and/or sell copies
of the Software, and to permit persons to whom the Software is furnished to do
so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
------------------------------------------------------------------------------
*/
