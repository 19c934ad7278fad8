/* kvx_tcp.h - v0.1.0 - the tcp transport: scattered KV pages streamed over parallel sockets

   For hosts without RDMA or a shared filesystem. The prefill opens
   KVX_TCP_STREAMS TCP connections (a "link") to each decode engine's data
   listener; frames of all rooms spread over the streams (no copy on either
   side, see DATA PATH), chunk k+1 leaving while k is on the wire; a slow
   receiver pushes back through TCP flow control (the sender queues plans,
   not bytes, so its memory stays bounded).

   CONTENTS (section markers: search for ">>name")
     >>wire codec (declarations) and ">>tcp: " byte helpers and codec, state,
     sockets, prefill: links, prefill: rooms, decode: rooms, decode:
     connections, engine, room hooks, public

   DO THIS
       #define KVX_IMPLEMENTATION
       #include "kvx_tcp.h"          (includes kvx_boot.h and kvx.h)
       kvx_tcp_register();           (once; then desc.transport = "tcp")
     or set desc.backend = kvx_tcp_backend(). Everything kvx_boot.h
     documents applies: the prefill engine serves the bootstrap address
     (desc.bootstrap_addr / desc.boot / KVX_BOOTSTRAP_*), the decode engine
     names it in desc.bootstrap_addr or kvx_room_desc.bootstrap_addr.

   DATA PATH
     Prefill: a room has one destination per decode rank that serves it
     (kvx_boot calls on_room once per decode rank: several when decode TP >
     prefill TP). kvx__tcp_sender_send plans the chunk once per destination
     (kvx_plan_pages: its layout and pages, that decode rank's layout from
     its hello, peer->layout, and its destination pages; head slices become
     strided spans) and queues each plan on that destination's link; each
     stream thread (kvx__tcp_stream_main) cuts a frame from the queue
     (kvx__tcp_carve) and sends it with sendmsg, an iovec per span straight
     from the pool pages (kvx__tcp_send_frame, kvx__tcp_io; at most
     KVX__TCP_IOV = 1024 per call), the rows of a head slice gathered into a
     per-stream buffer first (kvx_span_copy) unless they lie back to back;
     GPU pools through a pinned stage and desc.mem.copy (head slices out of
     GPU pools are refused: see LIMITS). A destination that takes nothing
     from this rank (kvx_layout_overlap says 0 bytes, or an MLA dummy,
     kvx_mla_dummy) gets no link and no byte. Decode: the data listener is
     announced (host, port, 16-byte random token) in the endpoint of its
     kvx_boot hello; kvx__tcp_on_data checks a DATA frame's segments,
     kvx__tcp_read_payload reads the payload with recvmsg straight into the
     destination pages (kvx__tcp_io; the rows of a head slice that are not
     back to back here through a per-connection buffer grown to the frame's
     slices, then kvx_span_copy: bench_tcp measured it faster than an iovec
     per row), and kvx__tcp_recv_finish acknowledges a complete room to
     every prefill rank that sent it data.
     State rows (kvx.h HYBRID STATE): on_room keeps each destination's
     state indices (from its room frame) and its state shape (from its
     hello); with the last chunk kvx__tcp_sender_send checks that every
     destination asked for as many indices as kvx_room_state gives ("prefill
     sent 2 state indices, decode ... asked for 3" fails the room, and the
     decode hears it) and plans them (kvx_plan_state) into the aux job of
     the destination whose aux rows this rank writes (sends_aux of
     kvx_layout_overlap; never an MLA dummy): they leave after its last KV
     byte, as STATE segments. The decode writes them straight into its
     state rows (GPU state buffers through the pinned stage, like pages)
     and counts them toward completion.
     LAYER-WISE SENDS (kvx.h kvx_sender_send_layers; the backend says
     layerwise): kvx__tcp_sender_send takes each part of a chunk as it
     comes, plans it with the part's layer filter (kvx_plan layer_begin /
     layer_end: spans of its layers' buffers only, head slices and PP layer
     numbers as for a whole chunk) and queues it at once behind the earlier
     parts, so its bytes leave while the engine computes the next layers.
     Only the part that completes the room (is_last) brings the state rows
     and lets the aux rows and the ACK deadline follow its last byte (and
     succeeds an MLA dummy); a part is otherwise a job like any chunk's.
     Nothing changes on the wire or on the decode side: the receiver counts
     (buffer, page, head) claims against its own total, so it succeeds
     after every layer of every chunk and the aux rows, exactly as for
     whole chunks.

   EXAMPLE (two hosts; error handling shortened)
       // given: kvx_layout pool_layout; const int32_t *pages; uint32_t n, k;
       // given: int32_t aux_slot; uint64_t room; void idle(void);
       kvx_tcp_register();                    // on both hosts
       kvx_engine *e;  char why[KVX_ERROR_MAX];
       kvx_room_desc rd = {0};  rd.room = room;   // the router's bootstrap_room
       // prefill on 10.0.0.1:
       kvx_engine_desc d = {0};
       d.role = KVX_ROLE_PREFILL;  d.transport = "tcp";  d.layout = pool_layout;
       d.bootstrap_addr = "10.0.0.1:8998";
       if (kvx_engine_create(&d, &e, why, sizeof why)) { puts(why); return; }
       kvx_sender *s;  kvx_sender_create(e, &rd, &s);
       while (kvx_sender_poll(s) == KVX_POLL_BOOTSTRAPPING) idle(); // decode's pages
       kvx_sender_init(s, n, aux_slot);
       for (uint32_t i = 0; i < n; i += k)                          // per chunk
           kvx_sender_send(s, pages + i, n - i < k ? n - i : k);
       while (kvx_sender_poll(s) == KVX_POLL_TRANSFERRING) idle();  // the ACK
       if (kvx_sender_poll(s) == KVX_POLL_FAILED) puts(kvx_sender_error(s));
       // decode on 10.0.0.2:
       kvx_engine_desc dd = {0};
       dd.role = KVX_ROLE_DECODE;  dd.transport = "tcp";  dd.layout = pool_layout;
       dd.bootstrap_addr = "10.0.0.1:8998";  dd.tcp.host = "10.0.0.2";
       kvx_engine *de;  kvx_engine_create(&dd, &de, why, sizeof why);
       kvx_receiver *r;  kvx_receiver_create(de, &rd, &r);
       while (kvx_receiver_poll(r) == KVX_POLL_BOOTSTRAPPING) idle();
       kvx_receiver_init(r, pages, n, aux_slot);
       while (kvx_receiver_poll(r) == KVX_POLL_TRANSFERRING) idle();
       // SUCCESS: every KV byte, the aux rows (and state rows) are in place

   COMPILE-TIME MACROS (defaults in parentheses)
     KVX_TCP_MAX_STREAMS  most parallel connections per link (64)
     KVX_TCP_MAX_SEGS     most segments in one DATA frame (512; the frame
                          is one sendmsg / recvmsg, so <= IOV_MAX - 1). A
                          receiver refuses frames with more segments than
                          its own value: keep it equal on both sides
     KVX_TCP_MAX_FRAME    most payload bytes of one DATA frame a receiver
                          accepts (64 MiB)
     KVX_TCP_MAX_CONNS    data connections a decode engine serves at once;
                          more are closed at accept (1024)
     KVX_TCP_TOMBSTONES   rooms closed before they finished whose late
                          frames are drained instead of rejected (4096)
     KVX_TCP_HELLO_MS     a data connection must have sent its HELLO (and,
                          with a key, its proof) within this many ms of
                          being accepted, however it paces its bytes (5000)
     KVX_TCP_MAX_PENDING  accepted data connections that have not finished
                          their HELLO; one more closes the oldest of them
                          (64). A prefill says HELLO within a round trip,
                          so strangers that connect and idle cannot keep
                          it out, and cost at most this many threads

   ENVIRONMENT (desc.tcp; kvx.h's settings rule; kvx__tcp_table)
     KVX_TCP_STREAMS   (desc.tcp.streams) prefill: parallel connections per
                       decode engine, 1..KVX_TCP_MAX_STREAMS (4)
     KVX_TCP_HOST      (desc.tcp.host) decode: address the data listener binds
                       and announces. Unset: bind 0.0.0.0 and announce
                       nothing, so the prefill connects to the address the
                       decode's control connection came from (right across
                       hosts, and on one host)
     KVX_TCP_SEGMENT   (desc.tcp.segment) prefill: payload bytes per DATA
                       frame, 64 KiB..KVX_TCP_MAX_FRAME (4 MiB); a frame never
                       splits a page, so a page larger than this goes alone
     KVX_TCP_SOCKBUF   (desc.tcp.sockbuf) SO_SNDBUF / SO_RCVBUF of data
                       connections, bytes, 4096..1 GiB; 0 keeps Linux
                       autotuning, which grows buffers up to net.ipv4.tcp_wmem
                       / tcp_rmem (0). The kernel caps values above
                       net.core.wmem_max / rmem_max (a warning says so)
     KVX_TCP_TIMEOUT   (desc.tcp.timeout_s) seconds a data connection may make
                       no progress (a send blocked by a receiver that reads
                       nothing, a frame stuck half-read, a connect) before it
                       is declared dead, and seconds a sender waits for the
                       receiver's ACK after its last byte left; 0.001..1e6 (60)
     KVX_AUTH_KEY / KVX_AUTH_KEY_FILE (kvx.h, desc.auth_key / auth_key_file):
                       with a shared key every data connection proves it both
                       ways before a byte of KV moves (see WIRE FORMAT); both
                       engines need the same key or none.
     And kvx_boot.h's (desc.boot): KVX_BOOTSTRAP_HOST, KVX_BOOTSTRAP_PORT ...

   THREAD SAFETY
     As kvx.h. Prefill: per link, one thread per stream and a reader thread
     for ACK / ERROR. Decode: an accept thread and one thread per data
     connection. kvx_engine_destroy joins them all. kvx_sender_destroy and
     kvx_receiver_destroy wait until no thread touches the room's pages (a
     peer stalled in the middle of that room's frame gets its connection
     shut down after one second).

   WIRE FORMAT (version 4; every integer little-endian)
     Version 4 (issue 13, HYBRID STATE) over version 3: the STATE segment
     flag (state rows); the frames are otherwise those of version 3.
     Version 3 (issue 13) over version 2: DATA segment descriptors of 32
     bytes with the ROWS form (head slices), HELLO carries the prefill's tp
     and pp rank and a shape fingerprint (kvx_tcp_shape_fingerprint) instead
     of the layout fingerprint. Version 2 (issue 10) over version 1: a
     16-byte token, HELLO flags and nonce, the AUTH and PROOF frames. No two
     versions interoperate: each side names both versions in its refusal
     ("protocol version 3, this side speaks 4"; the endpoint's version the
     same way).
     Data connections go from prefill to decode. Each frame is a 32-byte
     header and a body:
        0 u32 magic 0x5458564B ("KVXT")   4 u8 version (4)   5 u8 type
        6 u16 count (DATA: segments, 1..KVX_TCP_MAX_SEGS; else 0)
        8 u64 room (0 when a frame concerns no room)
       16 u64 body_len (bytes after the header)
       24 u32 flags (0)   28 u32 reserved (0)
     HELLO (1, prefill -> decode, first frame of a connection; body 64)
        0 u8[16] token (from the decode endpoint)  16 u64 prefill instance
       24 u64 shape fingerprint (kvx_tcp_shape_fingerprint: what ranks of
              any head or layer range share; must equal the decode's)
       32 u16 stream index  34 u16 streams
       36 u32 flags (bit 0 AUTH: the prefill holds a key and will prove it;
              it must be set exactly when the decode engine has a key)
       40 u8[16] nonce_p (fresh random with AUTH, else 0)
       56 u16 tp rank  58 u16 tp size  60 u16 pp rank  62 u16 pp size (of
              the prefill engine, desc.boot; sizes 0: not given. Only for
              the decode's sentences: "prefill 10.0.0.1:41234 (tp rank 1 of
              4, pp rank 0 of 1)")
     AUTH (5, decode -> prefill, keyed engines, answers HELLO; body 48)
        0 u8[16] nonce_d (fresh random)
       16 u8[32] kvx__auth_proof(key, "kvx-tcp-decode", nonce_p, nonce_d)
     PROOF (6, prefill -> decode, after checking AUTH; body 32)
        0 u8[32] kvx__auth_proof(key, "kvx-tcp-prefill", nonce_d, nonce_p)
       The decode accepts no other frame before a PROOF that matches
       (constant-time compare); a prefill sends nothing after HELLO until
       the decode's AUTH matched. Each side proves with its own label over
       the other's fresh nonce, so nothing recorded or reflected passes.
     DATA (2, prefill -> decode; body 32 * count + payload)
       count segment descriptors of 32 bytes, then the payload: the bytes
       of every segment in descriptor order.
        0 u32 buffer (the receiver's KV buffer index; aux buffer index with
              the AUX flag; state buffer index with the STATE flag)
        4 u32 flags (bit 0 AUX: the bytes are the room's row of that aux
              buffer; bit 1 ROWS: a head slice, see below; bit 2 STATE:
              whole rows of that state buffer (HYBRID STATE), dst_offset
              and length multiples of its item_len, every row one of the
              state indices the receiver gave; at most one of the three
              bits; other bits 0)
        8 u64 dst_offset (bytes from the start of that buffer in the
              receiver's pool)   16 u64 length
       24 u64 row_len (ROWS: bytes of one row; else 0)
       A KV segment without ROWS covers whole pages (dst_offset and length
       multiples of item_len) of one buffer. A ROWS segment is length /
       row_len rows of row_len bytes, row k at dst_offset + k * pitch, pitch
       being the receiver's own token row (item_len / page_size): the heads
       the sender holds of each token, at their head offset in the
       receiver's rows (heterogeneous TP). The receiver takes it only as
       whole heads (row_len and dst_offset % pitch multiples of its bytes
       per head, the slice inside the row) in whole pages of rows (length /
       row_len a multiple of page_size, the first row a page's first), so
       a run of pages is one segment whatever the number of tokens. All
       segments of a frame belong to its room. The descriptors of a frame
       come together, so the receiver validates them all, then reads the
       whole payload with recvmsg straight into its pages (a header per
       segment would cost one system call per segment: 16384 for a
       scattered 4096-token Llama-3.1-8B request).
     ACK (3, decode -> prefill; body 16): 0 u64 bytes placed (KV + aux + state, of
       the whole room) 8 u64 reserved. Sent once per room and contributing
       prefill rank (on one of its connections), when the room's last byte
       is in place.
     ERROR (4, decode -> prefill; body 8 + rl): 0 i32 result (kvx_result)
       4 u32 rl (<= 1024)  8 reason. The decode closes the connection after
       it (room 0: the connection itself was refused).
     ENDPOINT (the decode engine's kvx_boot hello endpoint bytes; 32 + hl)
        0 u8[8] "kvx-tcp\0"  8 u16 version (4)  10 u16 data port
       12 u16 hl (host bytes, <= 63; 0 = "the address you see me from")
       14 u16 reserved  16 u8[16] token (kernel CSPRNG, per engine)
       32 host text
     tests/tcp/tcp_frames.py speaks it in a page of Python (a minimal sender
     whose rooms a real decode engine accepts, with or without the key).

   COMPLETION
     The receiver knows the total from its own pages: pages * sum(item_len)
     plus sum(aux item_len) when it gave an aux slot plus state indices *
     sum(state item_len) (HYBRID STATE), whatever the number of
     prefill ranks that contribute (prefill TP > decode TP: each sends its
     heads; PP -> 1: each its layers; MLA: one, the others are dummies that
     send nothing; only the contributor kvx_layout_overlap names sends_aux
     sends the aux rows). It takes DATA for the room from every prefill
     rank's connections and counts the bytes of every segment it accepted:
     a (buffer, page, head) may arrive once (a whole page claims all its
     heads), an aux row once, a (state buffer, state index) row once, so no
     byte counts twice. When the count is complete, every KV byte and state
     row is in place;
     the aux rows, staged per room, are copied into the aux slot last (after
     the last KV byte even when they overtook KV frames on another stream);
     then the receiver reports Success and sends ACK to every prefill rank
     that sent the room data (on the connection that brought the last byte,
     and on one live connection of each other contributor). A prefill room
     with several destinations (decode TP > prefill TP) succeeds when every
     destination acknowledged (or took nothing from it). A room in Success is final (kvx.h): an abort or
     timeout after it does nothing and sends nothing, so nothing overtakes the
     ACK, and destroying the receiver waits until the ACK was written. The
     sender reports Success on that ACK (and tells the decode side over the
     control channel, which it ignores for Success: only its own count makes a
     receiver succeed; a prefill rank that reported Success, e.g. an MLA
     dummy, is done with the room, so its leaving later fails nothing). A
     data-path ACK rather than a control message because it follows the
     bytes it confirms. When a stream closes or cannot connect
     while a room may still be waiting for its ACK, the link dies only after
     every connected stream was read to its end (the decode writes an ACK
     before it closes that connection), or 2 s (at most KVX_TCP_TIMEOUT) after
     the first break, so an ACK that raced the close on another socket still
     counts; with no ACK possibly under way it dies at once.

   SECURITY
     Every segment is checked against the destination pages of that room,
     computed from the receiver's own kvx_receiver_init and layout: buffer
     index, whole pages (a head slice: whole heads inside the row, whole
     pages of rows), each page one of the room's pages, no (buffer, page,
     head) twice, aux only
     into the room's own aux slot and only when it gave one, state rows
     only into the room's own state indices (state buffer index below
     num_state, whole rows inside that buffer, no row twice), lengths that
     add up to the body. A segment outside fails the room, is answered with
     ERROR, and closes the connection; a frame for an unknown room or for a
     room that already succeeded closes the connection as well (rooms closed
     or failed before the end drain their late frames). Every prefill rank
     that holds part of a room may send it (heterogeneous TP, PP): which
     engine sends is not checked, the byte claims are (a second copy of a
     head is refused as "arrived twice"). A connection must
     present the listener's token (16 random bytes, compared in constant
     time) and the same shape fingerprint in its HELLO (in time: see
     KVX_TCP_HELLO_MS, KVX_TCP_MAX_PENDING); a refused connection is closed
     before it can name a room. Without a key the token is the only gate: it
     travels in the clear in the decode's bootstrap hello, so whoever can
     read the control channel (or claim a room there, see kvx_boot.h) can
     present it. With a shared key (KVX_AUTH_KEY) both sides prove the key
     on every data connection before any DATA is read or sent, so a
     stranger cannot inject KV into a room, and a prefill never streams KV
     to a listener that cannot prove the key (a stranger that claimed a
     room over the control channel receives nothing). Not covered: the
     bytes are neither encrypted nor authenticated frame by frame, so an
     attacker on the path can read the KV and could tamper with an
     established connection (use a private network or an encrypted
     tunnel for that). Whatever a peer sends, it cannot write outside the
     pages, aux slot and state rows the receiver asked for.

   FAILURES
     Every failure decided on one side reaches the other at once, with the
     first reason, over the control channel (the core's room_failed hook:
     a sender's refused page index, page count or aux slot, a device copy
     error, a lost data link; a receiver's refused frame, a frame cut in
     the middle, an abort, a timeout): the peer fails with "... failed the
     room: <reason>". What the peer reported (its ERROR frame, its status
     or abort) fails the room without being sent back. The first outcome
     and the first reason win, on both sides (see COMPLETION).
     A prefill killed mid-stream: the receiver fails the room whose frame
     was cut ("data connection from prefill 10.0.0.1:41234 (tp rank 1 of 4,
     pp rank 0 of 1) broke in the middle of a frame ..."), and every other
     unfinished room that rank had sent data for as its data connection
     ends ("... a contributor of this room, ended before the room was
     complete"); kvx_boot fails the rest when the control connection drops
     (its sentence names the rank's control address), whichever comes first.
     A room fed by several prefill ranks fails when any of them fails or
     dies, and that failure reaches every other contributor over the
     control channel (room_failed): each stops queueing the room's frames
     and frees it; a prefill room with several destinations fails when any
     destination fails, and every destination hears it. A receiver gone or reset: every room of that link
     fails on the sender with "lost data connection to decode <addr>: ...",
     and the decode side is told over the control channel. A receiver that
     stops reading: the sender blocks (bounded memory), then after
     KVX_TCP_TIMEOUT without progress the link fails. Nothing waits without
     a bound.

   LIMITS
     Every topology of kvx.h's PARALLEL LAYOUTS that kvx_boot pairs
     (heterogeneous TP both ways, MLA with dummies, PP -> 1 and PP rank to
     rank) with host pools. Head slices (different head ranges on the two
     sides) with GPU pools are refused with a sentence on either side
     (strided device copies are not written yet); same-shape GPU pools work
     as before. A decode room remembers at most 64 contributing prefill
     ranks (more still deliver; the extra ones get no ACK). State buffers
     in GPU memory go through the pinned stage like GPU pages (and then,
     as with GPU pages, head slices are refused); a state row larger than
     KVX_TCP_MAX_FRAME is refused at engine creation.

   LICENSE: MIT, see the end of this file.
*/
#ifndef KVX_TCP_H_INCLUDED
#define KVX_TCP_H_INCLUDED

#include "kvx_boot.h"

#if !defined(KVX_VERSION_MAJOR) || KVX_VERSION_MAJOR != 0
#error "kvx_tcp.h needs kvx.h major version 0"
#endif

#ifndef KVX_TCP_MAX_STREAMS
#define KVX_TCP_MAX_STREAMS 64
#endif
#ifndef KVX_TCP_MAX_SEGS
#define KVX_TCP_MAX_SEGS 512
#endif
#ifndef KVX_TCP_MAX_FRAME
#define KVX_TCP_MAX_FRAME (64u << 20)
#endif
#ifndef KVX_TCP_MAX_CONNS
#define KVX_TCP_MAX_CONNS 1024
#endif
#ifndef KVX_TCP_TOMBSTONES
#define KVX_TCP_TOMBSTONES 4096
#endif
#ifndef KVX_TCP_HELLO_MS
#define KVX_TCP_HELLO_MS 5000
#endif
#ifndef KVX_TCP_MAX_PENDING
#define KVX_TCP_MAX_PENDING 64
#endif

#define KVX_TCP_PROTOCOL_VERSION 4
#define KVX_TCP_TOKEN_BYTES 16
#define KVX_TCP_MAGIC 0x5458564Bu /* "KVXT" as bytes on the wire */
#define KVX_TCP_HEADER_BYTES 32
#define KVX_TCP_SEGMENT_BYTES 32
#define KVX_TCP_MAX_REASON 1024

#ifdef __cplusplus
extern "C" {
#endif

/* The tcp transport's backend table. */
KVX_API const kvx_backend *kvx_tcp_backend(void);
/* Makes "tcp" known to desc.transport. Thread-safe, idempotent. */
KVX_API kvx_result kvx_tcp_register(void);

/* Decode: where engine e's data listener is (for tools and tests).
   KVX_ERR_STATE when e is not a decode engine of the tcp transport. */
typedef struct kvx_tcp_endpoint {
    char host[64]; /* "" when the listener announces no address */
    int port;
    uint8_t token[KVX_TCP_TOKEN_BYTES]; /* random per engine (kernel CSPRNG) */
} kvx_tcp_endpoint;
KVX_API kvx_result kvx_tcp_endpoint_get(const kvx_engine *e, kvx_tcp_endpoint *out);

/* Counters of engine e (monotonic; zeros for an engine of another transport). */
typedef struct kvx_tcp_stats {
    uint64_t frames_sent, bytes_sent;         /* prefill: DATA frames, payload bytes */
    uint64_t frames_received, bytes_received; /* decode: accepted DATA frames, payload */
    uint64_t frames_rejected;  /* decode: frames refused by the checks */
    uint64_t frames_drained;   /* decode: late frames of closed or failed rooms */
    uint64_t conns_accepted, conns_refused; /* decode: bad token, key, version, limit,
                                               silent past KVX_TCP_HELLO_MS or evicted */
    uint64_t links_opened, links_lost;      /* prefill */
} kvx_tcp_stats;
/* Copies the counters of a tcp engine (zeroes first). KVX_ERR_INVALID_ARGUMENT
   when e or out is NULL or e is not a tcp engine. Thread-safe, does not
   block (atomic loads). */
KVX_API kvx_result kvx_tcp_stats_get(const kvx_engine *e, kvx_tcp_stats *out);

/* What the HELLO's fingerprint covers (WIRE FORMAT): what every rank of
   either side shares whatever its heads and layers (page size, dtype, MLA,
   bytes per head per token of buffer 0, the aux buffers, the state buffers:
   kvx_layout_overlap moves state only between ranks that hold the same).
   Thread-safe. */
KVX_API uint64_t kvx_tcp_shape_fingerprint(const kvx_layout *l);

/* >>wire codec (pure: no I/O; for tools, tests and fuzzers) */

typedef enum kvx_tcp_frame_type {
    KVX_TCP_HELLO = 1,
    KVX_TCP_DATA = 2,
    KVX_TCP_ACK = 3,
    KVX_TCP_ERROR = 4,
    KVX_TCP_AUTH = 5, /* decode -> prefill: its nonce and proof (keyed engines) */
    KVX_TCP_PROOF = 6 /* prefill -> decode: its proof (keyed engines) */
} kvx_tcp_frame_type;

#define KVX_TCP_HELLO_AUTH 1u /* HELLO flags bit 0: the prefill holds a key and will prove it */

#define KVX_TCP_SEG_AUX 1u
#define KVX_TCP_SEG_ROWS 2u /* a head slice: length / row_len rows at the receiver's row pitch */
#define KVX_TCP_SEG_STATE 4u /* rows of the receiver's state buffer `buffer` (HYBRID STATE) */

typedef struct kvx_tcp_header {
    uint8_t version, type;
    uint16_t count;
    uint64_t room, body_len;
    uint32_t flags;
} kvx_tcp_header;

typedef struct kvx_tcp_segment {
    uint32_t buffer, flags;
    uint64_t dst_offset, length;
    uint64_t row_len; /* KVX_TCP_SEG_ROWS: bytes of one row; else 0 */
} kvx_tcp_segment;

/* Writes the 32 header bytes. */
KVX_API void kvx_tcp_header_encode(const kvx_tcp_header *h, void *out32);
/* Reads 32 header bytes. KVX_ERR_PROTOCOL and a sentence for a bad magic,
   version, type, flags, count or body length (each type's: WIRE FORMAT). */
KVX_API kvx_result kvx_tcp_header_decode(const void *in32, kvx_tcp_header *h, char *why,
                                         size_t why_len);
KVX_API void kvx_tcp_segment_encode(const kvx_tcp_segment *s, void *out32);
KVX_API void kvx_tcp_segment_decode(const void *in32, kvx_tcp_segment *s);

#ifdef __cplusplus
}
#endif
#endif /* KVX_TCP_H_INCLUDED */

/* ======================================================================== */
/*                             IMPLEMENTATION                               */
/* ======================================================================== */
#if defined(KVX_IMPLEMENTATION) && !defined(KVX_TCP_IMPL_INCLUDED)
#define KVX_TCP_IMPL_INCLUDED

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <fcntl.h>
#include <unistd.h>
#include <poll.h>
#include <netdb.h>
#include <sys/types.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>

#ifdef __cplusplus
extern "C" {
#endif

/* >>tcp: byte helpers and codec ------------------------------------------ */

#define KVX__TCP_HELLO_BODY 64
#define KVX__TCP_ACK_BODY 16
#define KVX__TCP_AUTH_BODY (KVX_NONCE_BYTES + KVX_MAC_BYTES)
#define KVX__TCP_PROOF_BODY KVX_MAC_BYTES
#define KVX__TCP_ENDPOINT_FIXED 32
#define KVX__TCP_DRAIN 65536
#define KVX__TCP_SRCS 64 /* contributing prefill ranks a decode room remembers */
#define KVX__TCP_IOV 1024 /* iovecs per sendmsg / recvmsg (Linux IOV_MAX) */

KVX_API void kvx_tcp_header_encode(const kvx_tcp_header *h, void *out32) {
    uint8_t *p = (uint8_t *)out32;
    kvx__le_w32(p, KVX_TCP_MAGIC);
    p[4] = h->version;
    p[5] = h->type;
    kvx__le_w16(p + 6, h->count);
    kvx__le_w64(p + 8, h->room);
    kvx__le_w64(p + 16, h->body_len);
    kvx__le_w32(p + 24, h->flags);
    kvx__le_w32(p + 28, 0);
}

KVX_API kvx_result kvx_tcp_header_decode(const void *in32, kvx_tcp_header *h, char *why,
                                         size_t wl) {
    static const uint64_t fixed[] = {0, KVX__TCP_HELLO_BODY, 0, KVX__TCP_ACK_BODY, 0,
                                     KVX__TCP_AUTH_BODY, KVX__TCP_PROOF_BODY}; /* by type */
    const uint8_t *p = (const uint8_t *)in32;
    uint64_t seg_bytes;
    memset(h, 0, sizeof *h);
    if (kvx__le_r32(p) != KVX_TCP_MAGIC)
        return kvx__why(KVX_ERR_PROTOCOL, why, wl, "bad magic %08x (not a kvx tcp frame)",
                            (unsigned)kvx__le_r32(p));
    h->version = p[4];
    h->type = p[5];
    h->count = kvx__le_r16(p + 6);
    h->room = kvx__le_r64(p + 8);
    h->body_len = kvx__le_r64(p + 16);
    h->flags = kvx__le_r32(p + 24);
    if (h->version != KVX_TCP_PROTOCOL_VERSION)
        return kvx__why(KVX_ERR_PROTOCOL, why, wl, "protocol version %u, this side speaks %d",
                            h->version, KVX_TCP_PROTOCOL_VERSION);
    if (h->flags || kvx__le_r32(p + 28))
        return kvx__why(KVX_ERR_PROTOCOL, why, wl,
                            "nonzero flags or reserved field in a frame header");
    switch (h->type) {
    case KVX_TCP_HELLO:
    case KVX_TCP_ACK:
    case KVX_TCP_AUTH:
    case KVX_TCP_PROOF:
        if (h->count || h->body_len != fixed[h->type]) break;
        return KVX_OK;
    case KVX_TCP_ERROR:
        if (h->count || h->body_len < 8 || h->body_len > 8 + KVX_TCP_MAX_REASON) break;
        return KVX_OK;
    case KVX_TCP_DATA:
        seg_bytes = (uint64_t)h->count * KVX_TCP_SEGMENT_BYTES;
        if (!h->count || h->count > KVX_TCP_MAX_SEGS || h->body_len < seg_bytes ||
            h->body_len - seg_bytes > KVX_TCP_MAX_FRAME)
            return kvx__why(KVX_ERR_PROTOCOL, why, wl, "DATA frame with %u segments and a body "
                                "of %llu bytes (limits: 1..%d segments, %u payload bytes)",
                                h->count, (unsigned long long)h->body_len, KVX_TCP_MAX_SEGS,
                                (unsigned)KVX_TCP_MAX_FRAME);
        return KVX_OK;
    default:
        return kvx__why(KVX_ERR_PROTOCOL, why, wl, "unknown frame type %u", h->type);
    }
    return kvx__why(KVX_ERR_PROTOCOL, why, wl, "frame type %u with count %u and a body of "
                        "%llu bytes", h->type, h->count, (unsigned long long)h->body_len);
}

KVX_API void kvx_tcp_segment_encode(const kvx_tcp_segment *s, void *out32) {
    uint8_t *p = (uint8_t *)out32;
    kvx__le_w32(p, s->buffer);
    kvx__le_w32(p + 4, s->flags);
    kvx__le_w64(p + 8, s->dst_offset);
    kvx__le_w64(p + 16, s->length);
    kvx__le_w64(p + 24, s->row_len);
}

KVX_API void kvx_tcp_segment_decode(const void *in32, kvx_tcp_segment *s) {
    const uint8_t *p = (const uint8_t *)in32;
    s->buffer = kvx__le_r32(p);
    s->flags = kvx__le_r32(p + 4);
    s->dst_offset = kvx__le_r64(p + 8);
    s->length = kvx__le_r64(p + 16);
    s->row_len = kvx__le_r64(p + 24);
}

KVX_API uint64_t kvx_tcp_shape_fingerprint(const kvx_layout *l) {
    /* the fingerprint of a layout of one buffer holding one head */
    kvx_layout one = *l;
    kvx_buffer b;
    memset(&b, 0, sizeof b);
    if (l->num_buffers && l->buffers)
        b.item_len = l->buffers[0].item_len / (l->mla || !l->num_kv_heads ? 1 : l->num_kv_heads);
    one.buffers = &b;
    one.num_buffers = 1;
    one.num_kv_heads = 1;
    one.head_begin = one.layer_begin = 0;
    return kvx_layout_fingerprint(&one);
}

static void kvx__tcp_hdr(uint8_t *out, int type, uint16_t count, uint64_t room, uint64_t body) {
    kvx_tcp_header h;
    memset(&h, 0, sizeof h);
    h.version = KVX_TCP_PROTOCOL_VERSION;
    h.type = (uint8_t)type;
    h.count = count;
    h.room = room;
    h.body_len = body;
    kvx_tcp_header_encode(&h, out);
}

/* >>tcp: state -------------------------------------------------------------- */

typedef struct kvx__tcp_engine kvx__tcp_engine;
typedef struct kvx__tcp_link kvx__tcp_link;
typedef struct kvx__tcp_conn kvx__tcp_conn;
typedef struct kvx__tcp_room kvx__tcp_room;
typedef struct kvx__tcp_job kvx__tcp_job;

/* One piece of a frame on the sending side: a descriptor and where its
   bytes are in this process. */
typedef struct kvx__tcp_piece {
    kvx_tcp_segment seg;
    char *src;
    uint64_t pitch; /* a head slice (seg.row_len): bytes between source rows */
    int device; /* -1: host memory */
} kvx__tcp_piece;

/* One chunk's two-sided plan (or the room's aux rows) waiting to be sent.
   Frames are carved off it by the stream threads in order. */
struct kvx__tcp_job {
    kvx__tcp_room *tr;
    kvx_plan plan;
    size_t span;     /* cursor: next span, bytes of it already carved */
    uint64_t off;
    int queued;      /* still in the link queue (has bytes to carve) */
    int dropped;     /* its room failed or closed: the rest is not sent */
    int inflight;    /* frames carved and not yet sent */
    kvx__tcp_job *next;
};

/* Prefill: one connection of a link. */
typedef struct kvx__tcp_stream {
    kvx__tcp_link *link;
    int index;
    int fd;           /* -1 until connected; closed when the link is freed */
    int connected;    /* under link->mu */
    pthread_t th;
    int started;
    kvx__tcp_room *cur; /* room whose frame is being sent, under link->mu */
    /* stream thread only */
    uint8_t *head;    /* header + descriptors of the frame being sent */
    struct iovec *iov;
    kvx__tcp_piece *pieces;
    kvx_copy *copies;
    char *stage;      /* staged layouts: pinned */
    char *gather;     /* host layouts: rows of head slices gathered (stage_bytes) */
    /* reader thread only */
    uint8_t in[KVX_TCP_HEADER_BYTES + 8 + KVX_TCP_MAX_REASON];
    size_t in_len;
    int ended;        /* under link->mu: read up to its end (EOF or error) */
} kvx__tcp_stream;

/* Prefill: the connections to one decode engine's data listener. */
struct kvx__tcp_link {
    kvx__tcp_engine *te;
    char host[64];
    int port;
    uint8_t token[KVX_TCP_TOKEN_BYTES];
    char name[96]; /* "10.0.0.2:40123" for messages */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    kvx__tcp_stream *streams;
    int nstreams;
    pthread_t reader;
    int reader_started;
    int wake[2];
    int exited;  /* atomic: threads that returned */
    int threads; /* threads started */
    int refs;    /* under te->mu: the engine's live list + attached rooms */
    /* under mu */
    kvx__tcp_job *qhead, *qtail;
    kvx__tcp_room *rooms;
    int dead;
    int lost;              /* atomic: a stream broke; the reader kills the link soon */
    uint64_t lost_until;   /* under mu: the reader kills it by then at the latest */
    char lost_why[KVX_ERROR_MAX]; /* under mu: the first stream's break */
    char why[KVX_ERROR_MAX];  /* why it died */
    char last[KVX_ERROR_MAX]; /* the decode's last ERROR, for the death sentence */
    kvx__tcp_link *next; /* te->links or te->graveyard */
};

/* Decode: one accepted data connection. */
struct kvx__tcp_conn {
    kvx__tcp_engine *te;
    int fd;
    pthread_t th;
    int done;          /* under te->mu: the thread returned */
    int pending;       /* under te->mu: accepted, its HELLO (and proof) not through yet */
    uint64_t since_ns; /* accepted at */
    char addr[64];
    char who[128];     /* "prefill 10.0.0.1:41234 (tp rank 1 of 4, pp rank 0 of 1)" */
    uint64_t instance; /* prefill instance from the HELLO */
    kvx__tcp_room *cur; /* room whose payload is being read, under te->mu */
    pthread_mutex_t wmu; /* writes (ACK, ERROR): another connection's thread may ACK here */
    int acking;          /* under te->mu: threads writing an ACK here (not reaped meanwhile) */
    uint8_t *descs;
    struct iovec *iov;
    kvx_tcp_segment *segs;
    kvx_copy *copies;
    char *stage;
    size_t stage_len;
    char *gather;      /* head slices' rows before they are copied into place */
    size_t gather_len;
    char *drain;
    kvx__tcp_conn *next;
};

struct kvx__tcp_room {
    kvx__xroom x; /* x.mu, prefill: link and gone (on_room races kvx_sender_destroy) */
    kvx__tcp_engine *te;
    int gone;
    int busy;    /* frames using its pages: link->mu (prefill) / te->mu (decode) */
    int closing; /* same lock */
    /* prefill: the room (kvx_room_data) holds one destination per decode
       rank that serves it (dsts); each destination is a kvx__tcp_room of its
       own (parent set, x.room and x.id the room's) on its link, planned
       against that decode rank's layout */
    kvx__tcp_room *parent;
    kvx__tcp_room **dsts; /* parent: under x.mu */
    uint32_t ndsts, dsts_cap;
    kvx_layout dlayout;   /* destination: the decode rank's shape (huge lengths) */
    kvx_buffer *dbufs;
    kvx_aux_buffer daux[KVX_MAX_AUX];
    uint64_t dbytes;      /* destination: page bytes it takes from us (0: nothing) */
    int dsends_aux;       /* destination: we are the contributor of its aux rows */
    int acked;            /* destination: done (ACK, or nothing to send); atomic, set under
                             the parent's x.mu */
    uint64_t ack_bytes;
    kvx__tcp_link *link;
    int32_t *dst_pages;
    uint32_t ndst;
    int32_t *dst_state;   /* destination: its state indices (HYBRID STATE) */
    uint32_t nstate;
    kvx_buffer *dstate;   /* destination: its state buffers' shape (huge lengths) */
    uint32_t jobs_open;  /* under link->mu */
    int last_queued, aux_queued, all_sent;
    kvx__tcp_job *aux_job;
    char ack_what[200]; /* the ACK deadline's sentence (the core keeps the pointer) */
    kvx__tcp_room *lnext, *lprev;
    /* decode */
    uint64_t *sorted;    /* (page << 32) | position, sorted */
    uint32_t npages;
    uint32_t heads;      /* KV heads of a page row here (1 for MLA) */
    uint64_t *bitmap;    /* atomic words: bit ((buffer * npages + position) * heads + head)
                            received */
    uint32_t aux_mask;   /* atomic: aux rows received */
    int32_t aux_index;
    kvx_plan aux_plan;   /* packed staging row -> the aux slot (span i: aux buffer i) */
    uint8_t *aux_stage;
    uint64_t *ssorted;   /* state indices: (row << 32) | position, sorted */
    uint32_t nsidx;
    uint64_t *sbitmap;   /* atomic words: bit (state buffer * nsidx + position) received */
    uint64_t expected;
    uint64_t remaining;  /* atomic */
    uint64_t srcs[KVX__TCP_SRCS]; /* under te->mu: prefill instances that sent it data */
    uint32_t nsrcs;
    kvx__hnode hn;       /* te->rooms, key = id, under te->mu */
};

typedef struct kvx__tcp_tomb {
    uint64_t id, until_ns;
} kvx__tcp_tomb;

struct kvx__tcp_engine {
    kvx_engine *engine;
    const kvx_allocator *al; /* the desc allocator */
    kvx_boot *boot;
    kvx_role role;
    kvx_tcp_desc set;    /* the resolved settings (kvx__tcp_table); set.host: see host */
    char host[64];
    int staged;
    kvx_mem_ops mem;
    uint64_t stage_bytes; /* prefill: largest frame payload (segment, a page, the aux rows) */
    kvx_buffer *peer_bufs; /* our buffers with a huge length: the decode pool's shape */
    kvx_aux_buffer peer_aux[KVX_MAX_AUX]; /* the same for the aux buffers */
    kvx_layout peer_layout;
    uint64_t instance;
    uint16_t rank[4];    /* tp rank, tp size, pp rank, pp size (desc.boot; HELLO) */
    const uint8_t *key;  /* kvx_engine_auth_key: NULL = keyless */
    size_t key_len;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int stopping;        /* under mu */
    /* prefill, under mu */
    kvx__tcp_link *links, *graveyard;
    int reap;            /* atomic: graveyard may hold a link to free */
    /* decode */
    int lfd, port;
    uint8_t token[KVX_TCP_TOKEN_BYTES];
    int npending;         /* under mu: connections whose HELLO is not through */
    pthread_t acceptor;
    int acceptor_started;
    int wake[2];
    kvx__tcp_conn *conns; /* under mu */
    int nconns;
    int conns_done;       /* atomic: finished threads to join */
    kvx__htab rooms; /* decode rooms by id, under mu */
    kvx__tcp_tomb tombs[KVX_TCP_TOMBSTONES]; /* under mu, a ring */
    size_t ntombs, tomb_next;
    kvx_tcp_stats stats;  /* atomics */
};

static kvx__tcp_engine *kvx__tcp_te(const kvx_engine *e) {
    return (kvx__tcp_engine *)kvx_engine_backend_data(e);
}
static kvx__tcp_room *kvx__tcp_tr(const kvx_room *r) { return (kvx__tcp_room *)kvx_room_data(r); }
static int kvx__tcp_on_peer_lost(kvx_boot *b, kvx_room *r, const char *reason);
#define KVX__TCP_STAT(te, field, v) KVX__ADD(&(te)->stats.field, (uint64_t)(v))

#define KVX__TCP_LABEL_DECODE "kvx-tcp-decode"   /* the decode's proof */
#define KVX__TCP_LABEL_PREFILL "kvx-tcp-prefill" /* the prefill's proof */

/* >>tcp: sockets ------------------------------------------------------------ */

#define KVX__TCP_EOF (-1)  /* the peer closed before the first byte */
#define KVX__TCP_CUT (-2)  /* the peer closed in the middle */

static const char *kvx__tcp_errstr(int err) {
    if (err == KVX__TCP_EOF || err == KVX__TCP_CUT) return "connection closed by the peer";
    if (err == EAGAIN || err == EWOULDBLOCK || err == ETIMEDOUT) return "no progress within KVX_TCP_TIMEOUT";
    return strerror(err);
}

static void kvx__tcp_timeo(int fd, int opt, double s) {
    struct timeval tv;
    tv.tv_sec = (time_t)s;
    tv.tv_usec = (suseconds_t)((s - (double)tv.tv_sec) * 1e6);
    setsockopt(fd, SOL_SOCKET, opt, &tv, sizeof tv);
}

/* Options of every data connection; warns when the kernel caps KVX_TCP_SOCKBUF. */
static void kvx__tcp_sockopts(kvx__tcp_engine *te, int fd) {
    kvx__nonblock(fd, 0); /* blocking I/O, bounded by the timeouts below */
    kvx__nodelay(fd); /* ACKs and aux go at once */
    kvx__tcp_timeo(fd, SO_SNDTIMEO, te->set.timeout_s);
    kvx__tcp_timeo(fd, SO_RCVTIMEO, te->set.timeout_s);
    if (te->set.sockbuf > 0) {
        int want = te->set.sockbuf, got = 0;
        socklen_t sl = sizeof got;
        setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &want, sizeof want);
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &want, sizeof want);
        if (getsockopt(fd, SOL_SOCKET, SO_SNDBUF, &got, &sl) == 0 && got / 2 < want)
            kvx_engine_log(te->engine, KVX_LOG_WARN, "kvx.tcp", 0,
                           "KVX_TCP_SOCKBUF=%d capped by the kernel to %d bytes: raise "
                           "net.core.wmem_max / rmem_max, or unset it to keep autotuning",
                           want, got / 2);
    }
}

/* Sends (send 1) or receives exactly the iovec (modified). 0 or an errno;
   receiving, KVX__TCP_EOF when the peer closed before the first byte and
   KVX__TCP_CUT when it closed after some. idle_ok: a receive timeout before
   the first byte is not an error (a connection may sit idle between
   frames). *got: bytes moved. */
static int kvx__tcp_io(int fd, struct iovec *v, int n, int send, int idle_ok, uint64_t *got) {
    uint64_t total = 0;
    ssize_t k = 0;
    while (n) {
        struct msghdr m;
        memset(&m, 0, sizeof m);
        m.msg_iov = v;
        m.msg_iovlen = (size_t)n;
        k = send ? sendmsg(fd, &m, MSG_NOSIGNAL) : recvmsg(fd, &m, MSG_WAITALL);
        if (k < 0 && errno == EINTR) continue;
        if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) && idle_ok && total == 0) continue;
        if (k < 0 || (k == 0 && !send)) break;
        total += (uint64_t)k;
        kvx__iov_advance(&v, &n, (size_t)k);
    }
    if (got) *got = total;
    if (!n) return 0;
    if (k == 0) return total ? KVX__TCP_CUT : KVX__TCP_EOF;
    return errno == EAGAIN || errno == EWOULDBLOCK ? ETIMEDOUT : errno;
}

/* kvx__tcp_io of one buffer. */
static int kvx__tcp_io1(int fd, const void *p, size_t len, int send, int idle_ok) {
    struct iovec v;
    v.iov_base = (void *)p;
    v.iov_len = len;
    return kvx__tcp_io(fd, &v, 1, send, idle_ok, NULL);
}

/* Receives exactly len bytes before deadline_ns (CLOCK_MONOTONIC), however
   the peer paces them. 0, KVX__TCP_EOF / KVX__TCP_CUT, ETIMEDOUT or an errno. */
static int kvx__tcp_recv_until(int fd, void *p, size_t len, uint64_t deadline_ns) {
    size_t got = 0;
    while (got < len) {
        ssize_t k;
        if (kvx__wait_fd(fd, POLLIN, deadline_ns, NULL, NULL)) return errno;
        k = recv(fd, (char *)p + got, len - got, MSG_DONTWAIT);
        if (k < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)) continue;
        if (k < 0) return errno;
        if (k == 0) return got ? KVX__TCP_CUT : KVX__TCP_EOF;
        got += (size_t)k;
    }
    return 0;
}

/* kvx__connect's stop: a dead link gives up at once (engine destroy does
   not wait for a connect). */
static int kvx__tcp_link_dead(void *arg) {
    kvx__tcp_link *lk = (kvx__tcp_link *)arg;
    int dead;
    pthread_mutex_lock(&lk->mu);
    dead = lk->dead;
    pthread_mutex_unlock(&lk->mu);
    return dead;
}

/* >>tcp: prefill: links ----------------------------------------------------- */

typedef struct kvx__tcp_frame {
    kvx__tcp_job *job;
    kvx__tcp_room *tr;
    uint32_t n;
    uint64_t payload;
} kvx__tcp_frame;

static void kvx__tcp_job_free(kvx_engine *e, kvx__tcp_job *j) {
    kvx_plan_free(&j->plan);
    kvx_engine_free(e, j);
}

/* Under lk->mu: removes j from the queue. */
static void kvx__tcp_queue_remove(kvx__tcp_link *lk, kvx__tcp_job *j) {
    kvx__tcp_job **pp, *prev = NULL;
    for (pp = &lk->qhead; *pp; prev = *pp, pp = &(*pp)->next)
        if (*pp == j) {
            *pp = j->next;
            if (lk->qtail == j) lk->qtail = prev;
            j->next = NULL;
            j->queued = 0;
            return;
        }
}

/* Under lk->mu: a job left the queue and has no frame in flight. Queues the
   aux rows after the room's last KV byte left, or arms the ACK deadline. */
static void kvx__tcp_job_done(kvx__tcp_link *lk, kvx__tcp_job *j) {
    kvx__tcp_room *tr = j->tr;
    kvx_engine *e = lk->te->engine;
    int dropped = j->dropped;
    tr->jobs_open--;
    if (j == tr->aux_job) tr->aux_job = NULL;
    kvx__tcp_job_free(e, j);
    if (dropped || !tr->last_queued || tr->jobs_open || tr->closing || kvx__room_terminal(tr->x.room))
        return;
    if (tr->aux_job && !tr->aux_queued) {
        kvx__tcp_job *a = tr->aux_job;
        tr->aux_queued = 1;
        tr->jobs_open++;
        a->queued = 1;
        a->next = lk->qhead; /* small: ahead of other rooms' bulk */
        lk->qhead = a;
        if (!lk->qtail) lk->qtail = a;
        pthread_cond_broadcast(&lk->cv);
        return;
    }
    if (!tr->all_sent) {
        tr->all_sent = 1;
        snprintf(tr->ack_what, sizeof tr->ack_what,
                 "no ACK from decode %s after the last byte left (KVX_TCP_TIMEOUT %g s)", lk->name,
                 lk->te->set.timeout_s);
        kvx_room_set_deadline(tr->x.room, kvx_now_ns() + (uint64_t)(lk->te->set.timeout_s * 1e9),
                              tr->ack_what);
    }
}

/* Under lk->mu: the next frame for stream st, or 0 when nothing is queued. */
static int kvx__tcp_carve(kvx__tcp_link *lk, kvx__tcp_stream *st, kvx__tcp_frame *f) {
    kvx__tcp_engine *te = lk->te;
    const kvx_layout *l = kvx_engine_layout(te->engine);
    for (;;) {
        kvx__tcp_job *j = lk->qhead;
        kvx__tcp_room *tr;
        uint64_t budget = te->set.segment, sum = 0;
        uint32_t n = 0;
        if (!j) return 0;
        tr = j->tr;
        if (tr->closing || kvx__room_terminal(tr->x.room)) {
            kvx__tcp_queue_remove(lk, j);
            j->dropped = 1;
            if (!j->inflight) kvx__tcp_job_done(lk, j);
            continue;
        }
        while (j->span < j->plan.count && n < KVX_TCP_MAX_SEGS) {
            kvx_span tmp;
            const kvx_span *sp = kvx_plan_span(&j->plan, j->span, &tmp);
            int aux = sp->kind == KVX_SPAN_AUX, state = sp->kind == KVX_SPAN_STATE;
            const kvx_buffer *b = aux ? NULL : state ? &l->state[sp->buffer]
                                                     : &l->buffers[sp->buffer];
            /* a frame carries whole pages (of a head slice: page_size rows),
               whole state rows */
            uint64_t item = aux ? l->aux[sp->buffer].item_len
                                : sp->row_len ? sp->row_len * l->page_size : b->item_len;
            uint64_t rows = sp->row_len ? j->off / sp->row_len : 0;
            kvx__tcp_piece *p = &st->pieces[n];
            uint64_t take = sp->length - j->off;
            if (take > budget) {
                take = budget / item * item;
                if (!take) {
                    if (n) break;
                    take = item; /* a page (an aux row) larger than a segment goes alone */
                }
            }
            p->seg.buffer = aux ? sp->buffer : sp->dst_buffer;
            p->seg.flags = aux ? KVX_TCP_SEG_AUX : state ? KVX_TCP_SEG_STATE
                                                 : sp->row_len ? KVX_TCP_SEG_ROWS : 0;
            p->seg.row_len = sp->row_len;
            p->seg.length = take;
            p->pitch = sp->src_pitch;
            if (sp->row_len) {
                p->seg.dst_offset = sp->dst_offset + rows * sp->dst_pitch;
                p->src = (char *)kvx_span_addr(l, sp, 0) + rows * sp->src_pitch;
            } else {
                p->seg.dst_offset = sp->dst_offset + j->off;
                p->src = (char *)kvx_span_addr(l, sp, 0) + j->off;
            }
            p->device = aux || b->mem == KVX_MEM_HOST ? -1 : b->device;
            n++;
            sum += take;
            budget = take >= budget ? 0 : budget - take;
            j->off += take;
            if (j->off == sp->length) {
                j->span++;
                j->off = 0;
            }
            if (!budget) break;
        }
        if (j->span == j->plan.count) kvx__tcp_queue_remove(lk, j);
        if (!n) { /* an empty chunk */
            if (!j->inflight) kvx__tcp_job_done(lk, j);
            continue;
        }
        j->inflight++;
        tr->busy++;
        st->cur = tr;
        f->job = j;
        f->tr = tr;
        f->n = n;
        f->payload = sum;
        return 1;
    }
}

/* Writes one DATA frame: straight from the pool, or through the stream's
   pinned staging buffer when the layout has GPU buffers. 0, an errno, or
   -3 with why when a device copy failed (nothing was sent then). */
#define KVX__TCP_DEVICE_ERR (-3)
static int kvx__tcp_send_frame(kvx__tcp_stream *st, const kvx__tcp_frame *f, char *why,
                               size_t wl) {
    kvx__tcp_engine *te = st->link->te;
    uint32_t i, nb = 0;
    uint64_t pos = 0;
    kvx__tcp_hdr(st->head, KVX_TCP_DATA, (uint16_t)f->n, f->tr->x.id,
                 (uint64_t)f->n * KVX_TCP_SEGMENT_BYTES + f->payload);
    for (i = 0; i < f->n; i++)
        kvx_tcp_segment_encode(&st->pieces[i].seg,
                               st->head + KVX_TCP_HEADER_BYTES + (size_t)i * KVX_TCP_SEGMENT_BYTES);
    st->iov[0].iov_base = st->head;
    st->iov[0].iov_len = KVX_TCP_HEADER_BYTES + (size_t)f->n * KVX_TCP_SEGMENT_BYTES;
    if (!te->staged) {
        /* an iovec per piece, per row of a head slice; KVX__TCP_IOV per sendmsg */
        int k = 1, err;
        uint64_t gpos = 0;
        for (i = 0; !st->gather && i < f->n; i++) /* gathered rows: faster than an iovec */
            if (st->pieces[i].seg.row_len && st->pieces[i].seg.row_len != st->pieces[i].pitch)
                st->gather = (char *)kvx_engine_alloc(te->engine, (size_t)te->stage_bytes);
        for (i = 0; i < f->n; i++) {
            const kvx__tcp_piece *p = &st->pieces[i];
            uint64_t row = p->seg.row_len ? p->seg.row_len : p->seg.length, r;
            uint64_t rows = p->seg.length / row;
            char *src = p->src;
            uint64_t pitch = p->pitch;
            if (p->seg.row_len && p->seg.row_len == p->pitch) { /* rows back to back */
                row = p->seg.length;
                rows = 1;
            } else if (p->seg.row_len && st->gather) { /* rows gathered: one iovec */
                kvx_span sp;
                memset(&sp, 0, sizeof sp);
                sp.length = p->seg.length;
                sp.row_len = (uint32_t)p->seg.row_len;
                sp.src_pitch = (uint32_t)p->pitch;
                sp.dst_pitch = (uint32_t)p->seg.row_len;
                kvx_span_copy(st->gather + gpos, p->src, &sp);
                src = st->gather + gpos;
                gpos += p->seg.length;
                row = p->seg.length;
                rows = 1;
            }
            for (r = 0; r < rows; r++) {
                st->iov[k].iov_base = src + r * pitch;
                st->iov[k].iov_len = (size_t)row;
                if (++k < KVX__TCP_IOV) continue;
                if ((err = kvx__tcp_io(st->fd, st->iov, k, 1, 0, NULL)) != 0) return err;
                k = 0;
            }
        }
        return k ? kvx__tcp_io(st->fd, st->iov, k, 1, 0, NULL) : 0;
    }
    for (i = 0; i < f->n; i++) {
        kvx__tcp_piece *p = &st->pieces[i];
        if (p->device < 0) {
            memcpy(st->stage + pos, p->src, (size_t)p->seg.length);
        } else {
            st->copies[nb].buf_ptr = p->src;
            st->copies[nb].host = st->stage + pos;
            st->copies[nb].len = p->seg.length;
            st->copies[nb].device = p->device;
            nb++;
        }
        pos += p->seg.length;
    }
    if (nb && te->mem.copy(te->mem.ctx, 1, st->copies, nb, why, wl) != KVX_OK)
        return KVX__TCP_DEVICE_ERR;
    st->iov[1].iov_base = st->stage;
    st->iov[1].iov_len = (size_t)f->payload;
    return kvx__tcp_io(st->fd, st->iov, 2, 1, 0, NULL);
}

/* After a frame: its pages are no longer read. */
static void kvx__tcp_frame_done(kvx__tcp_link *lk, kvx__tcp_stream *st, kvx__tcp_frame *f) {
    pthread_mutex_lock(&lk->mu);
    f->job->inflight--;
    f->tr->busy--;
    st->cur = NULL;
    if (!f->job->queued && !f->job->inflight) kvx__tcp_job_done(lk, f->job);
    if (f->tr->closing && !f->tr->busy) pthread_cond_broadcast(&lk->cv);
    pthread_mutex_unlock(&lk->mu);
}

static void kvx__tcp_link_unref(kvx__tcp_link *lk);

/* Fails the link: every unfinished room attached to it fails with the
   reason and the decode side hears it over the control channel. Shuts the
   sockets down so every thread of the link returns. Thread-safe. */
static void kvx__tcp_link_kill(kvx__tcp_link *lk, const char *fmt, ...) KVX_PRINTF(2, 3);
static void kvx__tcp_link_kill(kvx__tcp_link *lk, const char *fmt, ...) {
    kvx__tcp_engine *te = lk->te;
    kvx_engine *e = te->engine;
    kvx_room **rs = NULL;
    kvx__tcp_room *tr;
    kvx__tcp_link **pp;
    size_t n = 0, cap = 0, i;
    int k, listed = 0;
    va_list ap;
    pthread_mutex_lock(&lk->mu);
    if (lk->dead) {
        pthread_mutex_unlock(&lk->mu);
        return;
    }
    lk->dead = 1;
    va_start(ap, fmt);
    vsnprintf(lk->why, sizeof lk->why, fmt, ap);
    va_end(ap);
    for (k = 0; k < lk->nstreams; k++)
        if (lk->streams[k].fd >= 0) shutdown(lk->streams[k].fd, SHUT_RDWR);
    pthread_cond_broadcast(&lk->cv);
    kvx__wake(lk->wake[1]);
    for (tr = lk->rooms; tr; tr = tr->lnext) cap++;
    rs = cap ? (kvx_room **)kvx_engine_alloc(e, cap * sizeof *rs) : NULL; /* NULL: they time out */
    for (tr = lk->rooms; rs && tr; tr = tr->lnext) { /* a destination that acknowledged is done */
        if (kvx__room_terminal(tr->x.room) || KVX__LOAD(&tr->acked)) continue;
        kvx_room_ref(tr->x.room);
        rs[n++] = tr->x.room;
    }
    pthread_mutex_unlock(&lk->mu);
    KVX__TCP_STAT(te, links_lost, 1);
    kvx_engine_log(te->engine, n ? KVX_LOG_WARN : KVX_LOG_INFO, "kvx.tcp", 0,
                   "lost data connection to decode %s: %s (%zu rooms failed)", lk->name, lk->why, n);
    for (i = 0; i < n; i++) {
        /* local: the decode may not have seen it (its control connection
           may well be alive), so room_failed tells it */
        kvx_room_fail(rs[i], KVX_ERR_PEER_LOST, "lost data connection to decode %s: %s", lk->name,
                      lk->why);
        kvx_room_unref(rs[i]);
    }
    kvx_engine_free(e, rs);
    pthread_mutex_lock(&te->mu);
    for (pp = &te->links; *pp; pp = &(*pp)->next)
        if (*pp == lk) {
            *pp = lk->next;
            lk->next = NULL;
            listed = 1;
            break;
        }
    pthread_mutex_unlock(&te->mu);
    if (listed) kvx__tcp_link_unref(lk); /* the live list's reference */
}

/* A stream of the link broke (or could not connect). The reader kills the
   link once the other streams were read to their end, KVX__TCP_LOSS_GRACE_S
   after the first break, or at once when no ACK may be under way (the doc
   block's COMPLETION says why). Thread-safe. */
#define KVX__TCP_LOSS_GRACE_S 2.0
static void kvx__tcp_link_lost(kvx__tcp_link *lk, const char *fmt, ...) KVX_PRINTF(2, 3);
static void kvx__tcp_link_lost(kvx__tcp_link *lk, const char *fmt, ...) {
    va_list ap;
    double grace = lk->te->set.timeout_s < KVX__TCP_LOSS_GRACE_S ? lk->te->set.timeout_s
                                                             : KVX__TCP_LOSS_GRACE_S;
    pthread_mutex_lock(&lk->mu);
    if (!lk->dead && !lk->lost_why[0]) {
        va_start(ap, fmt);
        vsnprintf(lk->lost_why, sizeof lk->lost_why, fmt, ap);
        va_end(ap);
        if (!lk->lost_why[0]) snprintf(lk->lost_why, sizeof lk->lost_why, "a stream broke");
        lk->lost_until = kvx_now_ns() + (uint64_t)(grace * 1e9);
        KVX__STORE(&lk->lost, 1);
    }
    pthread_mutex_unlock(&lk->mu);
    kvx__wake(lk->wake[1]);
}

/* Under lk->mu: a room of the link may have been delivered whole and its
   ACK still be on the way (its last chunk was queued, it did not end). */
static int kvx__tcp_awaiting_ack(kvx__tcp_link *lk) {
    kvx__tcp_room *tr;
    for (tr = lk->rooms; tr; tr = tr->lnext)
        if (tr->last_queued && !kvx__room_terminal(tr->x.room) && !KVX__LOAD(&tr->acked)) return 1;
    return 0;
}

static void kvx__tcp_thread_exit(kvx__tcp_link *lk) {
    KVX__ADD(&lk->exited, 1);
    KVX__STORE(&lk->te->reap, 1);
}

/* The reason in an ERROR body of body_len (>= 8, checked by the header
   decoder) bytes, printable; rl bounded by the body. */
static void kvx__tcp_reason(const uint8_t *body, uint64_t body_len, char *out, size_t n) {
    const uint8_t *p = body + 8;
    uint32_t i, rl = kvx__le_r32(body + 4);
    if (rl > body_len - 8) rl = (uint32_t)(body_len - 8);
    if (rl >= n) rl = (uint32_t)n - 1;
    for (i = 0; i < rl; i++) out[i] = (p[i] < 0x20 || p[i] == 0x7f) ? '?' : (char)p[i];
    out[rl] = 0;
}

/* Prefill: HELLO on a fresh stream; with a key, the decode proves it holds
   the key (AUTH over our nonce) before we prove it (PROOF over its nonce)
   and before any DATA leaves. KVX_OK, or an error with why. */
static kvx_result kvx__tcp_stream_hello(kvx__tcp_stream *st, int fd, char *why, size_t wl) {
    kvx__tcp_link *lk = st->link;
    kvx__tcp_engine *te = lk->te;
    uint8_t hello[KVX_TCP_HEADER_BYTES + KVX__TCP_HELLO_BODY], nonce[KVX_NONCE_BYTES];
    uint8_t in[KVX_TCP_HEADER_BYTES + 8 + KVX_TCP_MAX_REASON], mac[KVX_MAC_BYTES];
    uint8_t proof[KVX_TCP_HEADER_BYTES + KVX__TCP_PROOF_BODY];
    char reason[KVX_TCP_MAX_REASON + 1];
    kvx_tcp_header h;
    int err;
    memset(nonce, 0, sizeof nonce);
    if (te->key && kvx__random_bytes(nonce, sizeof nonce) != KVX_OK)
        return kvx__why(KVX_ERR_IO, why, wl,
                            "stream %d: cannot draw a nonce from the kernel", st->index);
    kvx__tcp_hdr(hello, KVX_TCP_HELLO, 0, 0, KVX__TCP_HELLO_BODY);
    memcpy(hello + 32, lk->token, KVX_TCP_TOKEN_BYTES);
    kvx__le_w64(hello + 48, te->instance);
    kvx__le_w64(hello + 56, kvx_tcp_shape_fingerprint(kvx_engine_layout(te->engine)));
    kvx__le_w16(hello + 64, (uint16_t)st->index);
    kvx__le_w16(hello + 66, (uint16_t)lk->nstreams);
    kvx__le_w32(hello + 68, te->key ? KVX_TCP_HELLO_AUTH : 0);
    memcpy(hello + 72, nonce, KVX_NONCE_BYTES);
    kvx__le_w16(hello + 88, te->rank[0]);
    kvx__le_w16(hello + 90, te->rank[1]);
    kvx__le_w16(hello + 92, te->rank[2]);
    kvx__le_w16(hello + 94, te->rank[3]);
    if ((err = kvx__tcp_io1(fd, hello, sizeof hello, 1, 0)) != 0)
        return kvx__why(KVX_ERR_PEER_LOST, why, wl, "cannot send the HELLO on stream %d: %s",
                            st->index, kvx__tcp_errstr(err));
    if (!te->key) return KVX_OK;
    err = kvx__tcp_recv_until(fd, in, KVX_TCP_HEADER_BYTES,
                              kvx_now_ns() + (uint64_t)(te->set.timeout_s * 1e9));
    if (!err && kvx_tcp_header_decode(in, &h, why, wl) != KVX_OK) return KVX_ERR_PROTOCOL;
    if (!err && (h.type == KVX_TCP_AUTH || h.type == KVX_TCP_ERROR))
        err = kvx__tcp_recv_until(fd, in + KVX_TCP_HEADER_BYTES, (size_t)h.body_len,
                                  kvx_now_ns() + (uint64_t)(te->set.timeout_s * 1e9));
    if (err)
        return kvx__why(KVX_ERR_PEER_LOST, why, wl,
                            "stream %d: no key proof from the decode: %s", st->index,
                            kvx__tcp_errstr(err));
    if (h.type == KVX_TCP_ERROR) {
        kvx__tcp_reason(in + 32, h.body_len, reason, sizeof reason);
        return kvx__why(KVX_ERR_PEER, why, wl, "it refused the connection: %s", reason);
    }
    if (h.type != KVX_TCP_AUTH)
        return kvx__why(KVX_ERR_PROTOCOL, why, wl,
                            "stream %d: frame type %u instead of the decode's key proof",
                            st->index, h.type);
    kvx__auth_proof(te->key, te->key_len, KVX__TCP_LABEL_DECODE, nonce, in + 32, mac);
    if (!kvx__equal_ct(mac, in + 32 + KVX_NONCE_BYTES, KVX_MAC_BYTES))
        return kvx__why(KVX_ERR_PERMISSION, why, wl, "the decode engine could not prove that "
                            "it holds the shared auth key: KVX_AUTH_KEY / KVX_AUTH_KEY_FILE "
                            "differ between the two engines");
    kvx__tcp_hdr(proof, KVX_TCP_PROOF, 0, 0, KVX__TCP_PROOF_BODY);
    kvx__auth_proof(te->key, te->key_len, KVX__TCP_LABEL_PREFILL, in + 32, nonce, proof + 32);
    if ((err = kvx__tcp_io1(fd, proof, sizeof proof, 1, 0)) != 0)
        return kvx__why(KVX_ERR_PEER_LOST, why, wl,
                            "cannot send the key proof on stream %d: %s", st->index,
                            kvx__tcp_errstr(err));
    return KVX_OK;
}

static void *kvx__tcp_stream_main(void *arg) {
    kvx__tcp_stream *st = (kvx__tcp_stream *)arg;
    kvx__tcp_link *lk = st->link;
    kvx__tcp_engine *te = lk->te;
    char why[KVX_ERROR_MAX];
    int fd, err;
    why[0] = 0;
    fd = kvx__connect(lk->host, lk->port, kvx_now_ns() + (uint64_t)(te->set.timeout_s * 1e9),
                      kvx__tcp_link_dead, lk, &err);
    if (fd < 0) {
        kvx__tcp_link_lost(lk, "cannot connect to %s: %s", lk->name, kvx__errstr(err));
        kvx__tcp_thread_exit(lk);
        return NULL;
    }
    kvx__tcp_sockopts(te, fd);
    pthread_mutex_lock(&lk->mu);
    st->fd = fd; /* from here link_kill shuts it down, ending a blocked handshake */
    if (lk->dead) shutdown(fd, SHUT_RDWR);
    pthread_mutex_unlock(&lk->mu);
    err = kvx__tcp_stream_hello(st, fd, why, sizeof why);
    pthread_mutex_lock(&lk->mu);
    if (lk->dead) shutdown(fd, SHUT_RDWR);
    else if (!err) st->connected = 1;
    pthread_mutex_unlock(&lk->mu);
    kvx__wake(lk->wake[1]);
    if (err) kvx__tcp_link_lost(lk, "%s", why);
    while (!err) {
        kvx__tcp_frame f;
        pthread_mutex_lock(&lk->mu);
        while (!lk->dead && !kvx__tcp_carve(lk, st, &f)) pthread_cond_wait(&lk->cv, &lk->mu);
        if (lk->dead) {
            pthread_mutex_unlock(&lk->mu);
            break;
        }
        pthread_mutex_unlock(&lk->mu);
        why[0] = 0;
        err = kvx__tcp_send_frame(st, &f, why, sizeof why);
        if (err == KVX__TCP_DEVICE_ERR) {
            /* nothing of the frame went out: the stream is still in step */
            kvx_room_fail(f.tr->x.room, KVX_ERR_TRANSPORT, "cannot stage KV pages for sending: %s",
                          why);
            err = 0;
        } else if (!err) {
            KVX__TCP_STAT(te, frames_sent, 1);
            KVX__TCP_STAT(te, bytes_sent, f.payload);
        }
        kvx__tcp_frame_done(lk, st, &f);
        if (err) kvx__tcp_link_lost(lk, "stream %d: %s", st->index, kvx__tcp_errstr(err));
    }
    kvx__tcp_thread_exit(lk);
    return NULL;
}

static void kvx__tcp_dest_done(kvx__tcp_room *d, uint64_t bytes);

/* Reader: one ACK or ERROR frame from the decode side. */
static void kvx__tcp_on_reply(kvx__tcp_link *lk, const kvx_tcp_header *h, const uint8_t *body) {
    kvx__tcp_engine *te = lk->te;
    kvx__tcp_room *tr, *d = NULL;
    kvx_room *r = NULL;
    pthread_mutex_lock(&lk->mu);
    for (tr = lk->rooms; tr; tr = tr->lnext)
        if (tr->x.id == h->room) {
            d = tr;
            r = tr->x.room;
            kvx_room_ref(r);
            break;
        }
    pthread_mutex_unlock(&lk->mu);
    if (h->type == KVX_TCP_ACK) {
        uint64_t bytes = kvx__le_r64(body);
        if (!r) return; /* destroyed meanwhile */
        kvx_engine_log(te->engine, KVX_LOG_DEBUG, "kvx.tcp", h->room,
                       "decode %s placed all %llu bytes", lk->name, (unsigned long long)bytes);
        kvx__tcp_dest_done(d, bytes); /* the room succeeds when every destination did */
    } else {
        int32_t res = (int32_t)kvx__le_r32(body);
        char reason[KVX_TCP_MAX_REASON + 1];
        kvx__tcp_reason(body, h->body_len, reason, sizeof reason);
        pthread_mutex_lock(&lk->mu);
        if (h->room)
            snprintf(lk->last, sizeof lk->last, "it refused room %llu: %.240s",
                     (unsigned long long)h->room, reason);
        else
            snprintf(lk->last, sizeof lk->last, "it refused the connection: %.240s", reason);
        pthread_mutex_unlock(&lk->mu);
        if (r) /* the decode failed its side and tells it: not sent back */
            kvx_room_fail_remote(r, res < 0 && res > -1000 ? (kvx_result)res : KVX_ERR_PEER,
                                 "decode %s refused the data of this room: %s", lk->name, reason);
        else
            kvx_engine_log(te->engine, KVX_LOG_WARN, "kvx.tcp", h->room,
                           "decode %s refused data: %s", lk->name, reason);
    }
    if (r) kvx_room_unref(r);
}

/* Reader: bytes on stream st. 0: read what there was; 1: the stream
   closed or broke (gone says how; the caller kills the link after reading
   what the other streams hold); -1: protocol error, the link is dead. */
static int kvx__tcp_reader_input(kvx__tcp_link *lk, kvx__tcp_stream *st, char *gone, size_t gl) {
    char why[KVX_ERROR_MAX];
    for (;;) {
        ssize_t k = recv(st->fd, st->in + st->in_len, sizeof st->in - st->in_len, MSG_DONTWAIT);
        if (k < 0 && errno == EINTR) continue;
        if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return 0;
        if (k <= 0) {
            snprintf(gone, gl, "stream %d: %s", st->index,
                     k == 0 ? "connection closed by the peer" : strerror(errno));
            return 1;
        }
        st->in_len += (size_t)k;
        while (st->in_len >= KVX_TCP_HEADER_BYTES) {
            kvx_tcp_header h;
            size_t need;
            if (kvx_tcp_header_decode(st->in, &h, why, sizeof why) != KVX_OK ||
                (h.type != KVX_TCP_ACK && h.type != KVX_TCP_ERROR)) {
                if (!why[0] || h.type == KVX_TCP_HELLO || h.type == KVX_TCP_DATA)
                    snprintf(why, sizeof why, "unexpected frame type %u", h.type);
                kvx__tcp_link_kill(lk, "stream %d: protocol error from decode: %s", st->index, why);
                return -1;
            }
            need = KVX_TCP_HEADER_BYTES + (size_t)h.body_len;
            if (st->in_len < need) break;
            kvx__tcp_on_reply(lk, &h, st->in + KVX_TCP_HEADER_BYTES);
            memmove(st->in, st->in + need, st->in_len - need);
            st->in_len -= need;
        }
    }
}

static void *kvx__tcp_reader_main(void *arg) {
    kvx__tcp_link *lk = (kvx__tcp_link *)arg;
    struct pollfd pf[1 + KVX_TCP_MAX_STREAMS];
    int idx[1 + KVX_TCP_MAX_STREAMS];
    char gone[KVX_ERROR_MAX], last[KVX_ERROR_MAX];
    for (;;) {
        int n = 0, k, dead, rc = 0, timeout_ms = -1, kill = 0;
        /* a fresh set each round: a stream that connected meanwhile may hold
           the ACK of a room whose bytes it carried */
        pthread_mutex_lock(&lk->mu);
        dead = lk->dead;
        pf[n].fd = lk->wake[0];
        pf[n].events = POLLIN;
        idx[n++] = -1;
        for (k = 0; k < lk->nstreams; k++)
            if (lk->streams[k].connected && !lk->streams[k].ended) {
                pf[n].fd = lk->streams[k].fd;
                pf[n].events = POLLIN;
                idx[n++] = k;
            }
        if (!dead && lk->lost_why[0]) {
            uint64_t now = kvx_now_ns();
            /* every connected stream read to its end (the decode closes a
               stream after the ACK it wrote on it), the grace spent, or no
               ACK that could be under way: the link dies now */
            if (n == 1 || now >= lk->lost_until || !kvx__tcp_awaiting_ack(lk)) {
                kill = 1;
                snprintf(gone, sizeof gone, "%s", lk->lost_why);
                snprintf(last, sizeof last, "%s", lk->last);
            } else {
                timeout_ms = (int)((lk->lost_until - now) / 1000000u) + 1;
            }
        }
        pthread_mutex_unlock(&lk->mu);
        if (dead) break;
        if (kill) {
            kvx__tcp_link_kill(lk, "%s%s%.400s", gone, last[0] ? " after " : "", last);
            break;
        }
        if (poll(pf, (nfds_t)n, timeout_ms) < 0) continue;
        if (pf[0].revents) kvx__drain(lk->wake[0]);
        for (k = 1; k < n && rc >= 0; k++)
            if (pf[k].revents) {
                kvx__tcp_stream *st = &lk->streams[idx[k]];
                rc = kvx__tcp_reader_input(lk, st, gone, sizeof gone);
                if (rc > 0) {
                    pthread_mutex_lock(&lk->mu);
                    st->ended = 1;
                    pthread_mutex_unlock(&lk->mu);
                    kvx__tcp_link_lost(lk, "%s", gone);
                }
            }
        if (rc < 0) break;
    }
    kvx__tcp_thread_exit(lk);
    return NULL;
}

static void kvx__tcp_link_free(kvx__tcp_link *lk) {
    kvx__tcp_engine *te = lk->te;
    kvx_engine *e = te->engine;
    int k;
    for (k = 0; k < lk->nstreams; k++) {
        kvx__tcp_stream *st = &lk->streams[k];
        if (st->started) pthread_join(st->th, NULL);
    }
    if (lk->reader_started) pthread_join(lk->reader, NULL);
    for (k = 0; k < lk->nstreams; k++) {
        kvx__tcp_stream *st = &lk->streams[k];
        if (st->fd >= 0) close(st->fd);
        kvx_engine_free(e, st->head);
        kvx_engine_free(e, st->iov);
        kvx_engine_free(e, st->pieces);
        kvx_engine_free(e, st->copies);
        kvx_engine_free(e, st->gather);
        if (st->stage) te->mem.host_free(te->mem.ctx, st->stage);
    }
    while (lk->qhead) { /* only when rooms were never closed; they no longer exist */
        kvx__tcp_job *j = lk->qhead;
        lk->qhead = j->next;
        kvx__tcp_job_free(e, j);
    }
    kvx_engine_free(e, lk->streams);
    close(lk->wake[0]);
    close(lk->wake[1]);
    pthread_mutex_destroy(&lk->mu);
    pthread_cond_destroy(&lk->cv);
    kvx_engine_free(e, lk);
}

/* Drops a reference; the last one moves the (dead) link to the graveyard,
   where the progress thread joins its threads and frees it. */
static void kvx__tcp_link_unref(kvx__tcp_link *lk) {
    kvx__tcp_engine *te = lk->te;
    pthread_mutex_lock(&te->mu);
    if (--lk->refs == 0) {
        lk->next = te->graveyard;
        te->graveyard = lk;
        KVX__STORE(&te->reap, 1);
    }
    pthread_mutex_unlock(&te->mu);
}

/* Joins and frees graveyard links whose threads returned (all: every one,
   waiting for them). */
static void kvx__tcp_reap_links(kvx__tcp_engine *te, int all) {
    kvx__tcp_link *ready = NULL, **pp;
    if (!all && !KVX__LOAD(&te->reap)) return;
    KVX__STORE(&te->reap, 0);
    pthread_mutex_lock(&te->mu);
    for (pp = &te->graveyard; *pp;) {
        kvx__tcp_link *lk = *pp;
        if (all || KVX__LOAD(&lk->exited) == lk->threads) {
            *pp = lk->next;
            lk->next = ready;
            ready = lk;
        } else {
            pp = &lk->next;
            KVX__STORE(&te->reap, 1); /* look again next tick */
        }
    }
    pthread_mutex_unlock(&te->mu);
    while (ready) {
        kvx__tcp_link *lk = ready;
        ready = lk->next;
        kvx__tcp_link_free(lk);
    }
}

static kvx_result kvx__tcp_stream_alloc(kvx__tcp_engine *te, kvx__tcp_stream *st) {
    kvx_engine *e = te->engine;
    st->fd = -1;
    st->head = (uint8_t *)kvx_engine_alloc(
        e, KVX_TCP_HEADER_BYTES + (size_t)KVX_TCP_MAX_SEGS * KVX_TCP_SEGMENT_BYTES);
    st->iov = (struct iovec *)kvx_engine_alloc(e, KVX__TCP_IOV * sizeof(struct iovec));
    st->pieces = (kvx__tcp_piece *)kvx_engine_alloc(e, KVX_TCP_MAX_SEGS * sizeof(kvx__tcp_piece));
    st->copies = (kvx_copy *)kvx_engine_alloc(e, KVX_TCP_MAX_SEGS * sizeof(kvx_copy));
    if (te->staged) st->stage = (char *)te->mem.host_alloc(te->mem.ctx, (size_t)te->stage_bytes);
    if (!st->head || !st->iov || !st->pieces || !st->copies || (te->staged && !st->stage))
        return KVX_ERR_NO_MEMORY;
    return KVX_OK;
}

/* The live link to a decode data endpoint, referenced for the caller;
   created (threads started, connecting in the background) when there is
   none. Does not block on the network. */
static kvx__tcp_link *kvx__tcp_link_get(kvx__tcp_engine *te, const char *host, int port,
                                        const uint8_t *token, char *why, size_t wl) {
    kvx_engine *e = te->engine;
    kvx__tcp_link *lk;
    int k, ok = 1;
    pthread_mutex_lock(&te->mu);
    if (te->stopping) {
        pthread_mutex_unlock(&te->mu);
        kvx__set_why(why, wl, "the engine is shutting down");
        return NULL;
    }
    for (lk = te->links; lk; lk = lk->next)
        if (lk->port == port && !memcmp(lk->token, token, KVX_TCP_TOKEN_BYTES) &&
            !strcmp(lk->host, host) && !KVX__LOAD(&lk->lost)) { /* a lost link dies soon */
            lk->refs++;
            pthread_mutex_unlock(&te->mu);
            return lk;
        }
    lk = (kvx__tcp_link *)kvx__zalloc(te->al, 1, sizeof *lk);
    if (!lk) {
        pthread_mutex_unlock(&te->mu);
        kvx__set_why(why, wl, "out of memory for a link");
        return NULL;
    }
    lk->te = te;
    snprintf(lk->host, sizeof lk->host, "%s", host);
    lk->port = port;
    memcpy(lk->token, token, KVX_TCP_TOKEN_BYTES);
    snprintf(lk->name, sizeof lk->name, "%s%s%s:%d", strchr(host, ':') ? "[" : "", host,
             strchr(host, ':') ? "]" : "", port);
    lk->nstreams = te->set.streams;
    lk->wake[0] = lk->wake[1] = -1;
    pthread_mutex_init(&lk->mu, NULL);
    pthread_cond_init(&lk->cv, NULL);
    lk->streams = (kvx__tcp_stream *)kvx__zalloc(te->al, lk->nstreams, sizeof *lk->streams);
    if (!lk->streams) lk->nstreams = 0; /* ok = 0 below */
    ok = lk->streams && !kvx__pipe(&lk->wake[0], &lk->wake[1]);
    for (k = 0; k < lk->nstreams; k++) { /* every fd -1 before link_free can see it */
        lk->streams[k].link = lk;
        lk->streams[k].index = k;
        if (kvx__tcp_stream_alloc(te, &lk->streams[k]) != KVX_OK) ok = 0;
    }
    for (k = 0; ok && k < lk->nstreams; k++) {
        if (pthread_create(&lk->streams[k].th, NULL, kvx__tcp_stream_main, &lk->streams[k])) ok = 0;
        else { lk->streams[k].started = 1; lk->threads++; }
    }
    if (ok) {
        if (pthread_create(&lk->reader, NULL, kvx__tcp_reader_main, lk)) ok = 0;
        else { lk->reader_started = 1; lk->threads++; }
    }
    if (!ok) { /* the threads that started see a dead link and return */
        pthread_mutex_lock(&lk->mu);
        lk->dead = 1;
        snprintf(lk->why, sizeof lk->why, "cannot start its threads");
        pthread_cond_broadcast(&lk->cv);
        pthread_mutex_unlock(&lk->mu);
        kvx__wake(lk->wake[1]);
        lk->next = te->graveyard;
        te->graveyard = lk;
        KVX__STORE(&te->reap, 1);
        pthread_mutex_unlock(&te->mu);
        kvx__set_why(why, wl, "out of memory, file descriptors or threads for %d streams to %s",
                     te->set.streams, lk->name);
        return NULL;
    }
    lk->refs = 2; /* the live list and the caller */
    lk->next = te->links;
    te->links = lk;
    pthread_mutex_unlock(&te->mu);
    KVX__TCP_STAT(te, links_opened, 1);
    kvx_engine_log(e, KVX_LOG_INFO, "kvx.tcp", 0, "opening %d streams to decode %s",
                   lk->nstreams, lk->name);
    return lk;
}

/* >>tcp: prefill: rooms ----------------------------------------------------- */

/* Reads a decode engine's endpoint from its hello: host (or the address its
   control connection comes from), data port, token. */
static kvx_result kvx__tcp_parse_endpoint(const kvx_boot_peer *peer, char *host, size_t hn,
                                          int *port, uint8_t *token, char *why, size_t wl) {
    const uint8_t *p = (const uint8_t *)peer->endpoint;
    uint32_t len = peer->endpoint_len, hl, i;
    int ap;
    if (!p || len < KVX__TCP_ENDPOINT_FIXED || memcmp(p, "kvx-tcp\0", 8))
        return kvx__why(KVX_ERR_PROTOCOL, why, wl, "decode %s announced no tcp data endpoint "
                            "in its hello (transport '%s'; both sides must run the tcp transport)",
                            peer->addr, peer->transport ? peer->transport : "?");
    hl = kvx__le_r16(p + 12);
    *port = kvx__le_r16(p + 10);
    if (kvx__le_r16(p + 8) != KVX_TCP_PROTOCOL_VERSION)
        return kvx__why(KVX_ERR_PROTOCOL, why, wl, "decode %s speaks tcp data protocol "
                            "version %u, this engine %d: run the same kvx version on both sides",
                            peer->addr, kvx__le_r16(p + 8), KVX_TCP_PROTOCOL_VERSION);
    memcpy(token, p + 16, KVX_TCP_TOKEN_BYTES);
    if (hl >= hn || len != KVX__TCP_ENDPOINT_FIXED + hl || !*port)
        return kvx__why(KVX_ERR_PROTOCOL, why, wl, "decode %s announced a tcp endpoint this "
                            "side cannot use (version %u, port %d, %u host bytes in %u)",
                            peer->addr, kvx__le_r16(p + 8), *port, hl, len);
    for (i = 0; i < hl; i++) {
        char c = (char)p[KVX__TCP_ENDPOINT_FIXED + i];
        if (c <= ' ' || c > '~')
            return kvx__why(KVX_ERR_PROTOCOL, why, wl,
                                "decode %s announced a tcp data host with a bad character",
                                peer->addr);
        host[i] = c;
    }
    host[hl] = 0;
    if (!hl && kvx__addr_split(peer->addr, host, hn, &ap, 0)) host[0] = 0; /* ap: the control port */
    return KVX_OK;
}

static uint64_t kvx__tcp_huge(uint64_t item);

/* A destination's layout: the decode rank's shape from its hello
   (peer->layout: item_len only), with lengths that hold any page index
   (the decode side checks its pages itself). */
static kvx_result kvx__tcp_dest_shape(kvx__tcp_engine *te, const kvx_boot_peer *peer,
                                      kvx__tcp_room *d, char *why, size_t wl) {
    const kvx_layout *pl = peer->layout;
    uint32_t i;
    if (!pl || !pl->num_buffers || !pl->buffers || pl->num_aux > KVX_MAX_AUX ||
        pl->num_state > KVX_MAX_STATE || (pl->num_state && !pl->state))
        return kvx__why(KVX_ERR_PROTOCOL, why, wl, "decode %s sent no usable layout in its hello",
                        peer->addr);
    d->dbufs = (kvx_buffer *)kvx__zalloc(te->al, pl->num_buffers, sizeof *d->dbufs);
    if (!d->dbufs) return kvx__why(KVX_ERR_NO_MEMORY, why, wl, "out of memory");
    for (i = 0; i < pl->num_buffers; i++) {
        d->dbufs[i].item_len = pl->buffers[i].item_len;
        d->dbufs[i].length = kvx__tcp_huge(pl->buffers[i].item_len);
    }
    for (i = 0; i < pl->num_aux; i++) {
        d->daux[i].item_len = pl->aux[i].item_len;
        d->daux[i].length = kvx__tcp_huge(pl->aux[i].item_len);
    }
    if (pl->num_state) { /* HYBRID STATE: rows of any index (the decode checks its own) */
        d->dstate = (kvx_buffer *)kvx__zalloc(te->al, pl->num_state, sizeof *d->dstate);
        if (!d->dstate) return kvx__why(KVX_ERR_NO_MEMORY, why, wl, "out of memory");
        for (i = 0; i < pl->num_state; i++) {
            d->dstate[i].item_len = pl->state[i].item_len;
            d->dstate[i].length = pl->state[i].item_len ? kvx__tcp_huge(pl->state[i].item_len) : 0;
        }
    }
    d->dlayout = *pl;
    d->dlayout.state = d->dstate;
    d->dlayout.dtype = kvx_engine_layout(te->engine)->dtype; /* checked equal by boot; ours lives */
    d->dlayout.buffers = d->dbufs;
    d->dlayout.aux = d->daux;
    return KVX_OK;
}

static void kvx__tcp_dest_free(kvx_engine *e, kvx__tcp_room *d) {
    if (d->aux_job) kvx__tcp_job_free(e, d->aux_job);
    kvx_engine_free(e, d->dst_pages);
    kvx_engine_free(e, d->dst_state);
    kvx_engine_free(e, d->dstate);
    kvx_engine_free(e, d->dbufs);
    pthread_mutex_destroy(&d->x.mu); /* not kvx__xroom_free: the room's data is the parent */
    kvx_engine_free(e, d);
}

/* A copy of n indices (engine allocator), NULL without memory. */
static int32_t *kvx__tcp_idx_copy(kvx_engine *e, const int32_t *idx, uint32_t n) {
    int32_t *v = (int32_t *)kvx_engine_alloc(e, (size_t)n * sizeof *v);
    if (v) memcpy(v, idx, (size_t)n * sizeof *v);
    return v;
}

/* kvx_boot hook (prefill): the destination of one decode rank that serves
   the room (called once per decode rank, before the room advances). */
static kvx_result kvx__tcp_on_room(kvx_boot *b, kvx_room *r, const kvx_boot_peer *peer,
                                   const int32_t *dst, uint32_t n, int32_t aux,
                                   const int32_t *dst_state, uint32_t nstate) {
    kvx__tcp_engine *te = (kvx__tcp_engine *)kvx_boot_user(b);
    kvx__tcp_room *tr = kvx__tcp_tr(r), *d;
    kvx_engine *e = te->engine;
    const kvx_layout *l = kvx_engine_layout(e);
    char why[KVX_ERROR_MAX], host[64];
    int port = 0, gone, dead = 0;
    uint8_t token[KVX_TCP_TOKEN_BYTES];
    kvx__tcp_link *lk = NULL;
    kvx_result res;
    if ((res = kvx__tcp_parse_endpoint(peer, host, sizeof host, &port, token, why, sizeof why))) {
        kvx_room_fail(r, res, "%s", why);
        return res;
    }
    d = (kvx__tcp_room *)kvx__xroom_new(r, sizeof *d);
    if (!d) return KVX_ERR_NO_MEMORY;
    d->te = te;
    d->parent = tr;
    d->x.dst_aux = aux;
    d->aux_index = -1;
    if ((res = kvx__tcp_dest_shape(te, peer, d, why, sizeof why)) != KVX_OK ||
        (res = kvx_layout_overlap(l, peer->layout, &d->dbytes, &d->dsends_aux, why, sizeof why))) {
        kvx__tcp_dest_free(e, d);
        kvx_room_fail(r, res, "decode %s: %s", peer->addr, why);
        return res;
    }
    if (kvx_mla_dummy(l->mla, te->rank[1], te->rank[0], peer->tp_size)) {
        d->dbytes = 0; /* another prefill rank sends the same latent */
        d->dsends_aux = 0;
    }
    /* the state indices are planned with the last chunk, when ours are known */
    if ((n && !(d->dst_pages = kvx__tcp_idx_copy(e, dst, n))) ||
        (nstate && !(d->dst_state = kvx__tcp_idx_copy(e, dst_state, nstate)))) {
        kvx__tcp_dest_free(e, d);
        return KVX_ERR_NO_MEMORY;
    }
    d->ndst = n;
    d->nstate = nstate;
    if (d->dbytes && !(lk = kvx__tcp_link_get(te, host, port, token, why, sizeof why))) {
        kvx__tcp_dest_free(e, d);
        kvx_room_fail(r, KVX_ERR_TRANSPORT, "cannot open data streams to decode %s:%d: %s", host,
                      port, why);
        return KVX_ERR_TRANSPORT;
    }
    pthread_mutex_lock(&tr->x.mu);
    gone = tr->gone;
    if (!gone && tr->ndsts == tr->dsts_cap) {
        uint32_t cap = tr->dsts_cap ? 2 * tr->dsts_cap : 4;
        kvx__tcp_room **v = (kvx__tcp_room **)kvx_engine_alloc(e, cap * sizeof *v);
        if (!v) {
            gone = 2;
        } else {
            if (tr->ndsts) memcpy(v, tr->dsts, tr->ndsts * sizeof *v);
            kvx_engine_free(e, tr->dsts);
            tr->dsts = v;
            tr->dsts_cap = cap;
        }
    }
    if (!gone) {
        tr->dsts[tr->ndsts++] = d;
        d->link = lk;
        if (lk) {
            pthread_mutex_lock(&lk->mu);
            d->lnext = lk->rooms;
            d->lprev = NULL;
            if (lk->rooms) lk->rooms->lprev = d;
            lk->rooms = d;
            dead = lk->dead;
            pthread_mutex_unlock(&lk->mu);
        }
    }
    pthread_mutex_unlock(&tr->x.mu);
    if (gone) { /* the sender was destroyed meanwhile, or no memory */
        kvx__tcp_dest_free(e, d);
        if (lk) kvx__tcp_link_unref(lk);
        return gone == 2 ? KVX_ERR_NO_MEMORY : KVX_ERR_ABORTED;
    }
    if (dead) {
        kvx_room_fail(r, KVX_ERR_PEER_LOST, "lost data connection to decode %s: %s", lk->name,
                      lk->why);
        return KVX_ERR_PEER_LOST;
    }
    kvx_engine_log(e, KVX_LOG_DEBUG, "kvx.tcp", tr->x.id, "destination %u: %u pages, aux slot %d, "
                   "decode %s (tp rank %d/%d pp rank %d/%d): %llu bytes per page%s", tr->ndsts - 1,
                   n, (int)aux, peer->addr, peer->tp_rank, peer->tp_size, peer->pp_rank,
                   peer->pp_size, (unsigned long long)d->dbytes, d->dsends_aux ? " + aux" : "");
    return KVX_OK;
}

static kvx_result kvx__tcp_sender_init(kvx_room *r, uint32_t n, int32_t aux) {
    kvx__tcp_room *tr = kvx__tcp_tr(r);
    kvx__tcp_engine *te = tr->te;
    const kvx_layout *l = kvx_engine_layout(te->engine);
    kvx_result res;
    uint32_t k;
    if (!tr->ndsts) {
        kvx_room_fail(r, KVX_ERR_STATE, "init before the decode side's destination arrived");
        return KVX_ERR_STATE;
    }
    for (k = 0; k < tr->ndsts; k++) { /* the room advanced: dsts no longer grows */
        kvx__tcp_room *d = tr->dsts[k];
        if (n != d->ndst) {
            kvx_room_fail(r, KVX_ERR_INVALID_ARGUMENT, "init declares %u pages but decode %s "
                          "asked for %u", n, d->link ? d->link->name : "(dummy)", d->ndst);
            return KVX_ERR_INVALID_ARGUMENT;
        }
        if (d->x.dst_aux >= 0 && aux < 0) {
            kvx_room_fail(r, KVX_ERR_INVALID_ARGUMENT, "decode %s expects aux rows in its slot %d "
                          "but init gave no aux slot (-1)", d->link ? d->link->name : "(dummy)",
                          (int)d->x.dst_aux);
            return KVX_ERR_INVALID_ARGUMENT;
        }
        d->x.src_aux = aux;
        if (d->link && d->dsends_aux && d->x.dst_aux >= 0 && l->num_aux) {
            d->aux_job = (kvx__tcp_job *)kvx__zalloc(te->al, 1, sizeof *d->aux_job);
            if (!d->aux_job) return KVX_ERR_NO_MEMORY;
            d->aux_job->tr = d;
            d->aux_job->plan.allocator = te->al;
            /* to the decode's slot in its pool shape: the decode side checks
               the slot against its own aux buffers */
            res = kvx_plan_aux(&d->aux_job->plan, l, aux, &d->dlayout, d->x.dst_aux);
            if (res != KVX_OK) {
                kvx_room_fail(r, res, "aux rows: %s", d->aux_job->plan.error);
                return res;
            }
        }
        /* a destination with nothing to move from us is done now */
        KVX__STORE(&d->acked, !d->link || (!d->ndst && !d->aux_job &&
                                           !(d->dsends_aux && d->nstate && l->num_state)));
    }
    tr->x.src_aux = aux;
    return KVX_OK;
}

/* A destination is done: when every one is, the sender succeeds with the
   bytes all of them acknowledged and tells the decode side. */
static void kvx__tcp_dest_done(kvx__tcp_room *d, uint64_t bytes) {
    kvx__tcp_room *tr = d->parent;
    kvx__tcp_engine *te = tr->te;
    uint64_t sum = 0;
    uint32_t k;
    int all = 1;
    pthread_mutex_lock(&tr->x.mu);
    if (!d->acked) {
        d->ack_bytes = bytes;
        KVX__STORE(&d->acked, 1);
    }
    for (k = 0; k < tr->ndsts; k++) {
        all &= tr->dsts[k]->acked;
        sum += tr->dsts[k]->ack_bytes;
    }
    pthread_mutex_unlock(&tr->x.mu);
    if (!all) return;
    kvx_room_succeed(tr->x.room, sum);
    if (kvx_room_poll(tr->x.room) == KVX_POLL_SUCCESS)
        kvx_boot_send_status(te->boot, tr->x.room, KVX_POLL_SUCCESS, KVX_OK, sum, NULL);
}

/* HYBRID STATE, with the last chunk: the state rows for destination d
   travel with its aux rows (d->aux_job, queued after its last KV byte),
   only to a destination whose aux rows we write (never from an MLA dummy).
   *fresh: a new job the caller installs under the link's lock (NULL when
   appended to the aux job or nothing to send). */
static kvx_result kvx__tcp_plan_state(kvx__tcp_room *d, const int32_t *si, uint32_t ns,
                                      kvx__tcp_job **fresh) {
    kvx__tcp_engine *te = d->te;
    kvx__tcp_job *a = d->aux_job;
    kvx_result res;
    *fresh = NULL;
    if (!d->link || !d->dsends_aux || !ns) return KVX_OK;
    if (!a) {
        a = (kvx__tcp_job *)kvx__zalloc(te->al, 1, sizeof *a);
        if (!a) {
            kvx_room_fail(d->x.room, KVX_ERR_NO_MEMORY, "out of memory planning state rows");
            return KVX_ERR_NO_MEMORY;
        }
        a->tr = d;
        a->plan.allocator = te->al;
    }
    res = kvx_plan_state(&a->plan, kvx_engine_layout(te->engine), si, &d->dlayout, d->dst_state,
                         ns);
    if (res != KVX_OK) {
        kvx_room_fail(d->x.room, res, "state rows to decode %s: %s", d->link->name, a->plan.error);
        if (a != d->aux_job) kvx__tcp_job_free(te->engine, a);
        return res;
    }
    if (a != d->aux_job) *fresh = a;
    return KVX_OK;
}

/* With the last chunk: every destination asked for as many state indices
   as this side gives (HYBRID STATE), else the room fails saying both. */
static kvx_result kvx__tcp_state_counts(kvx__tcp_room *tr, uint32_t ns) {
    uint32_t k;
    for (k = 0; k < tr->ndsts; k++) {
        kvx__tcp_room *d = tr->dsts[k];
        if (d->nstate == ns) continue;
        kvx_room_fail(tr->x.room, KVX_ERR_INVALID_ARGUMENT, "prefill sent %u state indices, "
                      "decode %s asked for %u", ns, d->link ? d->link->name : "(dummy)",
                      d->nstate);
        return KVX_ERR_INVALID_ARGUMENT;
    }
    return KVX_OK;
}

static kvx_result kvx__tcp_sender_send(kvx_room *r, kvx_chunk *c) {
    kvx__tcp_room *tr = kvx__tcp_tr(r);
    kvx__tcp_engine *te = tr->te;
    kvx_engine *e = te->engine;
    kvx__tcp_job *j, *sj = NULL;
    kvx_result res;
    int last = c->is_last, dead, idle = 1;
    uint32_t k, ns = 0;
    const int32_t *si = last ? kvx_room_state(r, &ns) : NULL;
    if (last && (res = kvx__tcp_state_counts(tr, ns)) != KVX_OK) {
        kvx_chunk_free(e, c);
        return res;
    }
    for (k = 0; k < tr->ndsts; k++) {
        kvx__tcp_room *d = tr->dsts[k];
        kvx__tcp_link *lk = d->link;
        if (d->acked) continue; /* nothing to move to it */
        idle = 0;
        j = (kvx__tcp_job *)kvx__zalloc(te->al, 1, sizeof *j);
        if (!j) {
            kvx_chunk_free(e, c);
            kvx_room_fail(r, KVX_ERR_NO_MEMORY, "out of memory queueing chunk");
            return KVX_ERR_NO_MEMORY;
        }
        j->tr = d;
        j->plan.allocator = te->al;
        j->plan.compact = 1; /* one run list for every buffer (COMPACT PLANS) */
        if (!c->first_part || !c->last_part) { /* a layer-wise part: its layers' spans */
            j->plan.layer_begin = c->layer_begin;
            j->plan.layer_end = c->layer_end;
        }
        res = kvx_plan_pages(&j->plan, kvx_engine_layout(e), c->pages, &d->dlayout,
                             d->dst_pages + c->first_page, c->num_pages);
        if (res == KVX_OK && te->staged && j->plan.strided) {
            res = KVX_ERR_LAYOUT_MISMATCH;
            snprintf(j->plan.error, sizeof j->plan.error, "decode %s holds other KV heads than "
                     "this rank: head slices out of GPU pools are not supported by the tcp "
                     "transport yet", lk->name);
        }
        if (res != KVX_OK) {
            if (c->first_part && c->last_part)
                kvx_room_fail(r, res, "chunk %u: %s", c->index, j->plan.error);
            else
                kvx_room_fail(r, res, "chunk %u layers [%u, %u): %s", c->index, c->layer_begin,
                              c->layer_end, j->plan.error);
            kvx__tcp_job_free(e, j);
            kvx_chunk_free(e, c);
            return res;
        }
        if (last && (res = kvx__tcp_plan_state(d, si, ns, &sj)) != KVX_OK) {
            kvx__tcp_job_free(e, j);
            kvx_chunk_free(e, c);
            return res;
        }
        pthread_mutex_lock(&lk->mu);
        dead = lk->dead;
        if (!dead) {
            if (sj) d->aux_job = sj; /* read by the stream threads under lk->mu */
            sj = NULL;
            j->queued = 1;
            if (lk->qtail) lk->qtail->next = j;
            else lk->qhead = j;
            lk->qtail = j;
            d->jobs_open++;
            if (last) d->last_queued = 1;
            pthread_cond_broadcast(&lk->cv);
        }
        pthread_mutex_unlock(&lk->mu);
        if (dead) {
            kvx__tcp_job_free(e, j);
            if (sj) kvx__tcp_job_free(e, sj);
            kvx_chunk_free(e, c);
            kvx_room_fail(r, KVX_ERR_PEER_LOST, "lost data connection to decode %s: %s",
                          lk->name, lk->why);
            return KVX_ERR_PEER_LOST;
        }
    }
    kvx_chunk_free(e, c);
    if (last && idle && tr->ndsts) /* nothing to move (an MLA dummy): done at once */
        kvx__tcp_dest_done(tr->dsts[0], 0);
    return KVX_OK;
}

/* Under lk->mu: waits until no frame of tr is being sent. A peer that has
   not taken a byte for a second gets the streams carrying tr shut down
   (the link then dies) so that destroy does not wait on it. */
static void kvx__tcp_wait_idle_send(kvx__tcp_link *lk, kvx__tcp_room *tr) {
    struct timespec ts;
    int shut = 0, k;
    kvx__abstime(&ts, 1000000000ull);
    while (tr->busy) {
        if (shut) {
            pthread_cond_wait(&lk->cv, &lk->mu);
        } else if (pthread_cond_timedwait(&lk->cv, &lk->mu, &ts) == ETIMEDOUT) {
            for (k = 0; k < lk->nstreams; k++)
                if (lk->streams[k].cur == tr && lk->streams[k].fd >= 0)
                    shutdown(lk->streams[k].fd, SHUT_RDWR);
            shut = 1;
        }
    }
}

/* Under lk->mu: tr's queued jobs leave the queue unsent. */
static void kvx__tcp_drop_jobs(kvx__tcp_link *lk, kvx__tcp_room *tr) {
    kvx__tcp_job *j, *next;
    for (j = lk->qhead; j; j = next) {
        next = j->next;
        if (j->tr != tr) continue;
        kvx__tcp_queue_remove(lk, j);
        j->dropped = 1;
        if (!j->inflight) kvx__tcp_job_done(lk, j);
    }
}

static void kvx__tcp_sender_close(kvx__tcp_room *tr) {
    uint32_t k, n;
    pthread_mutex_lock(&tr->x.mu);
    tr->gone = 1; /* dsts no longer grows */
    n = tr->ndsts;
    pthread_mutex_unlock(&tr->x.mu);
    for (k = 0; k < n; k++) {
        kvx__tcp_room *d = tr->dsts[k];
        kvx__tcp_link *lk = d->link;
        if (!lk) continue;
        pthread_mutex_lock(&lk->mu);
        d->closing = 1;
        kvx__tcp_drop_jobs(lk, d);
        kvx__tcp_wait_idle_send(lk, d);
        if (d->lprev) d->lprev->lnext = d->lnext;
        else if (lk->rooms == d) lk->rooms = d->lnext;
        if (d->lnext) d->lnext->lprev = d->lprev;
        d->lnext = d->lprev = NULL;
        pthread_mutex_unlock(&lk->mu);
        d->link = NULL;
        kvx__tcp_link_unref(lk);
    }
}

/* >>tcp: decode: rooms ------------------------------------------------------ */

/* Under te->mu. */
static kvx__tcp_room *kvx__tcp_find(kvx__tcp_engine *te, uint64_t id) {
    kvx__hnode *h = kvx__htab_find(&te->rooms, id);
    return h ? (kvx__tcp_room *)(void *)((char *)h - offsetof(kvx__tcp_room, hn)) : NULL;
}

/* Under te->mu: rooms closed before they finished drain their late frames
   for a while instead of breaking the connection they arrive on. */
static void kvx__tcp_tomb_set(kvx__tcp_engine *te, uint64_t id, uint64_t until_ns) {
    size_t i;
    for (i = 0; i < te->ntombs; i++)
        if (te->tombs[i].id == id) {
            te->tombs[i].until_ns = until_ns;
            return;
        }
    te->tombs[te->tomb_next].id = id;
    te->tombs[te->tomb_next].until_ns = until_ns;
    te->tomb_next = (te->tomb_next + 1) % KVX_TCP_TOMBSTONES;
    if (te->ntombs < KVX_TCP_TOMBSTONES) te->ntombs++;
}

static void kvx__tcp_tomb_clear(kvx__tcp_engine *te, uint64_t id) {
    size_t i;
    for (i = 0; i < te->ntombs; i++)
        if (te->tombs[i].id == id) te->tombs[i].until_ns = 0;
}

static int kvx__tcp_tomb_find(const kvx__tcp_engine *te, uint64_t id) {
    uint64_t now = kvx_now_ns();
    size_t i;
    for (i = 0; i < te->ntombs; i++)
        if (te->tombs[i].id == id) return te->tombs[i].until_ns > now;
    return 0;
}

static int kvx__tcp_cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* HYBRID STATE: the state indices this room asked for (the core checked
   them: in range, no repeats), sorted for kvx__tcp_check, and a bit per
   (state buffer, index) received. */
static kvx_result kvx__tcp_recv_state(kvx__tcp_room *tr, const kvx_layout *l) {
    kvx_engine *e = tr->te->engine;
    uint32_t ns = 0, i;
    const int32_t *si = kvx_room_state(tr->x.room, &ns);
    uint64_t bits = (uint64_t)l->num_state * ns;
    if (!ns || !l->num_state) return KVX_OK;
    tr->ssorted = (uint64_t *)kvx_engine_alloc(e, (size_t)ns * sizeof *tr->ssorted);
    tr->sbitmap = (uint64_t *)kvx__zalloc(tr->te->al, (size_t)((bits + 63) / 64), 8);
    if (!tr->ssorted || !tr->sbitmap) return KVX_ERR_NO_MEMORY;
    for (i = 0; i < ns; i++) tr->ssorted[i] = (uint64_t)(uint32_t)si[i] << 32 | i;
    qsort(tr->ssorted, ns, sizeof *tr->ssorted, kvx__tcp_cmp_u64);
    tr->nsidx = ns;
    return KVX_OK;
}

static kvx_result kvx__tcp_receiver_init(kvx_room *r, const int32_t *pages, uint32_t n,
                                         int32_t aux) {
    kvx__tcp_room *tr = kvx__tcp_tr(r);
    kvx__tcp_engine *te = tr->te;
    kvx_engine *e = te->engine;
    const kvx_layout *l = kvx_engine_layout(e);
    uint64_t bits, aux_bytes = 0;
    uint32_t i;
    kvx_result res;
    tr->heads = l->mla || !l->num_kv_heads ? 1 : l->num_kv_heads;
    bits = (uint64_t)l->num_buffers * n * tr->heads;
    tr->npages = n;
    tr->aux_index = aux;
    if (n) {
        tr->sorted = (uint64_t *)kvx_engine_alloc(e, (size_t)n * sizeof *tr->sorted);
        tr->bitmap = (uint64_t *)kvx__zalloc(te->al, (size_t)((bits + 63) / 64), 8);
        if (!tr->sorted || !tr->bitmap) return KVX_ERR_NO_MEMORY;
        for (i = 0; i < n; i++) tr->sorted[i] = (uint64_t)(uint32_t)pages[i] << 32 | i;
        qsort(tr->sorted, n, sizeof *tr->sorted, kvx__tcp_cmp_u64);
    }
    if (aux >= 0 && l->num_aux) {
        tr->aux_plan.allocator = te->al;
        if ((res = kvx_plan_aux_scatter(&tr->aux_plan, l, aux)) != KVX_OK) return res;
        aux_bytes = tr->aux_plan.packed_bytes;
        tr->aux_stage = (uint8_t *)kvx_engine_alloc(e, (size_t)aux_bytes);
        if (!tr->aux_stage) return KVX_ERR_NO_MEMORY;
    }
    if ((res = kvx__tcp_recv_state(tr, l)) != KVX_OK) return res;
    tr->expected = (uint64_t)n * kvx_layout_page_bytes(l) + aux_bytes +
                   (uint64_t)tr->nsidx * kvx_layout_state_row_bytes(l);
    tr->remaining = tr->expected;
    pthread_mutex_lock(&te->mu);
    kvx__tcp_tomb_clear(te, tr->x.id); /* a reused id is live again */
    tr->hn.key = tr->x.id;
    if (kvx__tcp_find(te, tr->x.id) ||
        kvx__htab_insert(&te->rooms, te->al, &tr->hn)) {
        pthread_mutex_unlock(&te->mu);
        kvx_room_fail(r, KVX_ERR_INVALID_ARGUMENT,
                      "room %llu is already receiving on this engine, or out of memory",
                      (unsigned long long)tr->x.id);
        return KVX_ERR_INVALID_ARGUMENT;
    }
    pthread_mutex_unlock(&te->mu);
    res = kvx_boot_receiver_init(te->boot, r, pages, n, aux);
    if (res != KVX_OK) return res;
    if (!tr->expected) kvx_room_succeed(r, 0); /* nothing to wait for */
    return KVX_OK;
}

/* Under te->mu: waits until no connection reads into tr's pages. A peer
   stalled in the middle of tr's frame for a second gets its connection
   shut down, so destroy does not wait on it. A room that already
   succeeded is only sending its ACK (48 bytes to a prefill that always
   reads): it gets KVX_TCP_TIMEOUT, so a descheduled thread on a loaded
   machine does not lose the ACK of a delivered room. */
static void kvx__tcp_wait_idle_recv(kvx__tcp_engine *te, kvx__tcp_room *tr) {
    struct timespec ts;
    int shut = 0;
    kvx__abstime(&ts, kvx_room_poll(tr->x.room) == KVX_POLL_SUCCESS
                          ? (uint64_t)((te->set.timeout_s + 1) * 1e9) : 1000000000ull);
    while (tr->busy) {
        kvx__tcp_conn *c;
        if (shut) {
            pthread_cond_wait(&te->cv, &te->mu);
        } else if (pthread_cond_timedwait(&te->cv, &te->mu, &ts) == ETIMEDOUT) {
            for (c = te->conns; c; c = c->next)
                if (c->cur == tr) shutdown(c->fd, SHUT_RDWR);
            shut = 1;
        }
    }
}

static void kvx__tcp_receiver_close(kvx__tcp_room *tr) {
    kvx__tcp_engine *te = tr->te;
    kvx_poll st = kvx_room_poll(tr->x.room);
    pthread_mutex_lock(&te->mu);
    if (kvx__htab_remove(&te->rooms, &tr->hn)) {
        if (st != KVX_POLL_SUCCESS)
            kvx__tcp_tomb_set(te, tr->x.id,
                              kvx_now_ns() + (uint64_t)((te->set.timeout_s + 5) * 1e9));
    }
    tr->closing = 1;
    kvx__tcp_wait_idle_recv(te, tr);
    pthread_mutex_unlock(&te->mu);
}

/* A STATE segment (HYBRID STATE): whole rows of a state buffer of this
   side, inside it, each row one of the state indices this room asked for
   and not received before. Claims the rows. */
static kvx_result kvx__tcp_check_state(const kvx_layout *l, kvx__tcp_room *tr,
                                       const kvx_tcp_segment *s, uint32_t i, char *why,
                                       size_t wl) {
    uint64_t item, first, cnt, k, lo = 0, hi = tr->nsidx;
    if (s->buffer >= l->num_state)
        return kvx__why(KVX_ERR_PROTOCOL, why, wl, "segment %u names state buffer %u of %u", i,
                        s->buffer, l->num_state);
    item = l->state[s->buffer].item_len;
    if (s->row_len || !s->length || !item || s->length % item || s->dst_offset % item ||
        s->dst_offset > l->state[s->buffer].length ||
        s->length > l->state[s->buffer].length - s->dst_offset)
        return kvx__why(KVX_ERR_OUT_OF_RANGE, why, wl, "segment %u: [%llu, +%llu) of state "
                        "buffer %u is not whole rows of %llu bytes inside its %llu bytes", i,
                        (unsigned long long)s->dst_offset, (unsigned long long)s->length,
                        s->buffer, (unsigned long long)item,
                        (unsigned long long)l->state[s->buffer].length);
    first = s->dst_offset / item;
    cnt = s->length / item;
    while (lo < hi) { /* first position whose row >= first */
        uint64_t m = (lo + hi) / 2;
        if ((tr->ssorted[m] >> 32) < first) lo = m + 1;
        else hi = m;
    }
    for (k = 0; k < cnt; k++) /* indices do not repeat: a run is consecutive positions */
        if (cnt > tr->nsidx || lo + k >= tr->nsidx || (tr->ssorted[lo + k] >> 32) != first + k)
            return kvx__why(KVX_ERR_OUT_OF_RANGE, why, wl, "segment %u: row %llu of state "
                            "buffer %u is not one of the %u state indices this room asked for",
                            i, (unsigned long long)(first + k), s->buffer, tr->nsidx);
    for (k = 0; k < cnt; k++) {
        uint64_t bitno = (uint64_t)s->buffer * tr->nsidx + (uint32_t)tr->ssorted[lo + k];
        uint64_t m = 1ull << (bitno & 63);
        if (__atomic_fetch_or(&tr->sbitmap[bitno >> 6], m, __ATOMIC_ACQ_REL) & m)
            return kvx__why(KVX_ERR_PROTOCOL, why, wl, "segment %u: row %llu of state buffer %u "
                            "arrived twice", i, (unsigned long long)(first + k), s->buffer);
    }
    return KVX_OK;
}

/* The checks every DATA frame passes before a byte of it is read: each
   segment lies inside the pages (or the aux slot) this room asked for and
   was not received before; the lengths add up. Claims the pages. */
static kvx_result kvx__tcp_check(kvx__tcp_engine *te, kvx__tcp_room *tr,
                                 const kvx_tcp_segment *s, uint32_t n, uint64_t payload, char *why,
                                 size_t wl) {
    const kvx_layout *l = kvx_engine_layout(te->engine);
    uint64_t sum = 0;
    uint32_t i;
    for (i = 0; i < n; i++, s++) {
        uint64_t item;
        kvx_result sr;
        if (s->flags & ~(KVX_TCP_SEG_AUX | KVX_TCP_SEG_ROWS | KVX_TCP_SEG_STATE) ||
            (s->flags & KVX_TCP_SEG_AUX && (s->flags & ~KVX_TCP_SEG_AUX || s->row_len)) ||
            (s->flags & KVX_TCP_SEG_STATE && s->flags & ~KVX_TCP_SEG_STATE))
            return kvx__why(KVX_ERR_PROTOCOL, why, wl, "segment %u has unknown flags %08x", i,
                                (unsigned)s->flags);
        if (s->flags & KVX_TCP_SEG_STATE) {
            if ((sr = kvx__tcp_check_state(l, tr, s, i, why, wl)) != KVX_OK) return sr;
        } else if (s->flags & KVX_TCP_SEG_AUX) {
            const kvx_span *row;
            uint32_t bit;
            if (!tr->aux_stage)
                return kvx__why(KVX_ERR_PROTOCOL, why, wl,
                                    "segment %u carries aux rows but this room gave no aux slot",
                                    i);
            if (s->buffer >= l->num_aux)
                return kvx__why(KVX_ERR_PROTOCOL, why, wl,
                                    "segment %u names aux buffer %u of %u", i, s->buffer,
                                    l->num_aux);
            row = &tr->aux_plan.spans[s->buffer];
            if (s->dst_offset != row->dst_offset || s->length != row->length)
                return kvx__why(KVX_ERR_PROTOCOL, why, wl, "segment %u writes bytes [%llu, "
                                    "+%llu) of aux buffer %u; this room's aux slot %d is [%llu, "
                                    "+%llu)", i, (unsigned long long)s->dst_offset,
                                    (unsigned long long)s->length, s->buffer, (int)tr->aux_index,
                                    (unsigned long long)row->dst_offset,
                                    (unsigned long long)row->length);
            bit = 1u << s->buffer;
            if (__atomic_fetch_or(&tr->aux_mask, bit, __ATOMIC_ACQ_REL) & bit)
                return kvx__why(KVX_ERR_PROTOCOL, why, wl,
                                    "segment %u: the row of aux buffer %u arrived twice", i,
                                    s->buffer);
        } else {
            uint64_t first, cnt, k, lo = 0, hi = tr->npages, h0 = 0, nh = tr->heads, off;
            uint64_t hb, pitch;
            if (s->buffer >= l->num_buffers)
                return kvx__why(KVX_ERR_PROTOCOL, why, wl,
                                    "segment %u names KV buffer %u of %u", i, s->buffer,
                                    l->num_buffers);
            item = l->buffers[s->buffer].item_len;
            pitch = item / l->page_size;
            hb = pitch / tr->heads;
            off = s->dst_offset;
            if (s->flags & KVX_TCP_SEG_ROWS) {
                /* a head slice: rows of row_len bytes at this side's pitch,
                   whole pages of rows, whole heads inside the row */
                uint64_t rows, ho = s->dst_offset % pitch;
                if (!s->row_len || !hb || pitch > UINT32_MAX || s->row_len % hb || ho % hb ||
                    s->row_len > pitch - ho ||
                    !s->length || s->length % s->row_len ||
                    (rows = s->length / s->row_len) % l->page_size || te->staged)
                    return kvx__why(te->staged ? KVX_ERR_INVALID_ARGUMENT : KVX_ERR_PROTOCOL,
                                    why, wl, "segment %u: rows of %llu bytes at byte %llu of "
                                    "%llu-byte rows, %llu bytes in all, in KV buffer %u: not "
                                    "whole heads of %llu bytes in whole pages of %u rows%s", i,
                                    (unsigned long long)s->row_len, (unsigned long long)ho,
                                    (unsigned long long)pitch, (unsigned long long)s->length,
                                    s->buffer, (unsigned long long)hb, l->page_size,
                                    te->staged ? " (head slices into GPU pools are not "
                                    "supported by the tcp transport yet)" : "");
                h0 = ho / hb;
                nh = s->row_len / hb;
                off = s->dst_offset - ho;
                cnt = rows / l->page_size;
            } else {
                if (s->row_len || !s->length || s->length % item || s->dst_offset % item)
                    return kvx__why(KVX_ERR_PROTOCOL, why, wl, "segment %u: [%llu, +%llu) of "
                                    "KV buffer %u is not whole pages of %llu bytes", i,
                                    (unsigned long long)s->dst_offset,
                                    (unsigned long long)s->length, s->buffer,
                                    (unsigned long long)item);
                cnt = s->length / item;
            }
            if (off % item)
                return kvx__why(KVX_ERR_PROTOCOL, why, wl, "segment %u: byte %llu of KV buffer "
                                "%u does not start a page of %llu bytes", i,
                                (unsigned long long)off, s->buffer, (unsigned long long)item);
            first = off / item;
            while (lo < hi) { /* first position whose page >= first */
                uint64_t m = (lo + hi) / 2;
                if ((tr->sorted[m] >> 32) < first) lo = m + 1;
                else hi = m;
            }
            for (k = 0; k < cnt; k++)
                if (cnt > tr->npages || lo + k >= tr->npages || (tr->sorted[lo + k] >> 32) != first + k)
                    return kvx__why(KVX_ERR_OUT_OF_RANGE, why, wl, "segment %u: page %llu of "
                                        "KV buffer %u (bytes [%llu, +%llu)) is not one of the %u "
                                        "pages this room asked for", i,
                                        (unsigned long long)(first + k), s->buffer,
                                        (unsigned long long)s->dst_offset,
                                        (unsigned long long)s->length, tr->npages);
            for (k = 0; k < cnt; k++) {
                uint64_t base = ((uint64_t)s->buffer * tr->npages + (uint32_t)tr->sorted[lo + k]) *
                                tr->heads + h0, q;
                for (q = 0; q < nh; q++) {
                    uint64_t bitno = base + q, m = 1ull << (bitno & 63);
                    if (__atomic_fetch_or(&tr->bitmap[bitno >> 6], m, __ATOMIC_ACQ_REL) & m)
                        return kvx__why(KVX_ERR_PROTOCOL, why, wl, "segment %u: head %llu of "
                                        "page %llu of KV buffer %u arrived twice", i,
                                        (unsigned long long)(h0 + q),
                                        (unsigned long long)(first + k), s->buffer);
                }
            }
        }
        sum += s->length; /* bounded: each length lies within this side's pool */
    }
    if (sum != payload)
        return kvx__why(KVX_ERR_PROTOCOL, why, wl,
                            "the segments add up to %llu bytes but the frame carries %llu",
                            (unsigned long long)sum, (unsigned long long)payload);
    return KVX_OK;
}

/* >>tcp: decode: connections ------------------------------------------------ */

/* Sends ERROR (the decode closes the connection after it). */
static void kvx__tcp_send_error(kvx__tcp_conn *c, uint64_t room, kvx_result res, const char *reason) {
    uint8_t h[KVX_TCP_HEADER_BYTES + 8];
    struct iovec v[2];
    size_t rl = strlen(reason);
    if (rl > KVX_TCP_MAX_REASON) rl = KVX_TCP_MAX_REASON;
    kvx__tcp_hdr(h, KVX_TCP_ERROR, 0, room, 8 + rl);
    kvx__le_w32(h + 32, (uint32_t)res);
    kvx__le_w32(h + 36, (uint32_t)rl);
    v[0].iov_base = h;
    v[0].iov_len = sizeof h;
    v[1].iov_base = (void *)reason;
    v[1].iov_len = rl;
    pthread_mutex_lock(&c->wmu);
    kvx__tcp_io(c->fd, v, rl ? 2 : 1, 1, 0, NULL);
    pthread_mutex_unlock(&c->wmu);
}

/* Refuses a frame: the room (when there is one) fails and hears why, the
   sender gets ERROR, the connection closes. Returns -1. */
static int kvx__tcp_refuse(kvx__tcp_conn *c, kvx_room *r, uint64_t room, kvx_result res,
                           const char *why) {
    kvx__tcp_engine *te = c->te;
    KVX__TCP_STAT(te, frames_rejected, 1);
    if (r) {
        kvx_room_fail(r, res, "%s sent data this room did not ask for; connection closed: %s",
                      c->who, why);
    } else {
        kvx_engine_log(te->engine, KVX_LOG_WARN, "kvx.tcp", room,
                       "closing data connection from %s: %s", c->who, why);
    }
    kvx__tcp_send_error(c, room, res, why);
    return -1;
}

static int kvx__tcp_drain(kvx__tcp_conn *c, uint64_t len) {
    KVX__TCP_STAT(c->te, frames_drained, 1);
    while (len) {
        size_t k = len < KVX__TCP_DRAIN ? (size_t)len : KVX__TCP_DRAIN;
        int err = kvx__tcp_io1(c->fd, c->drain, k, 0, 0);
        if (err) {
            kvx_engine_log(c->te->engine, KVX_LOG_INFO, "kvx.tcp", 0,
                           "data connection from %s: %s", c->who, kvx__tcp_errstr(err));
            return -1;
        }
        len -= k;
    }
    return 0;
}

/* Where a checked aux segment is staged: its row in the room's packed row. */
static uint8_t *kvx__tcp_aux_row(kvx__tcp_room *tr, const kvx_tcp_segment *s) {
    return tr->aux_stage + tr->aux_plan.spans[s->buffer].src_offset;
}

/* The buffer of this side a checked KV or state segment writes (aux: NULL). */
static const kvx_buffer *kvx__tcp_seg_buf(const kvx_layout *l, const kvx_tcp_segment *s) {
    if (s->flags & KVX_TCP_SEG_AUX) return NULL;
    return s->flags & KVX_TCP_SEG_STATE ? &l->state[s->buffer] : &l->buffers[s->buffer];
}

/* Reads the payload of a checked frame into the room's pages. 0, or an
   errno / KVX__TCP_CUT / KVX__TCP_DEVICE_ERR (why set). */
static int kvx__tcp_read_payload(kvx__tcp_conn *c, kvx__tcp_room *tr, uint32_t n, uint64_t payload,
                                 uint64_t *got, char *why, size_t wl) {
    kvx__tcp_engine *te = c->te;
    const kvx_layout *l = kvx_engine_layout(te->engine);
    uint32_t i, nb = 0;
    uint64_t pos = 0;
    int err;
    *got = 0;
    if (!te->staged) {
        /* an iovec per segment, per row of a head slice: straight into the
           pages, KVX__TCP_IOV of them per recvmsg */
        /* an iovec per segment; the rows of head slices that are not back to
           back here are read into c->gather (grown to the frame's slices,
           at most its payload) and copied into place after (bench_tcp:
           faster than an iovec per row); without that memory, an iovec
           per row. KVX__TCP_IOV iovecs per recvmsg */
        int k = 0;
        uint64_t gpos = 0, sbytes = 0;
        for (i = 0; i < n; i++)
            if (c->segs[i].flags & KVX_TCP_SEG_ROWS &&
                c->segs[i].row_len != l->buffers[c->segs[i].buffer].item_len / l->page_size)
                sbytes += c->segs[i].length;
        if (sbytes > c->gather_len) {
            kvx_engine_free(te->engine, c->gather);
            c->gather = (char *)kvx_engine_alloc(te->engine, (size_t)sbytes);
            c->gather_len = c->gather ? (size_t)sbytes : 0;
        }
        for (i = 0; i < n; i++) {
            const kvx_tcp_segment *s = &c->segs[i];
            char *dst = s->flags & KVX_TCP_SEG_AUX
                            ? (char *)kvx__tcp_aux_row(tr, s)
                            : (char *)kvx__tcp_seg_buf(l, s)->base + s->dst_offset;
            uint64_t row = s->flags & KVX_TCP_SEG_ROWS ? s->row_len : s->length, r, rows;
            uint64_t pitch = s->flags & KVX_TCP_SEG_ROWS
                                 ? l->buffers[s->buffer].item_len / l->page_size : 0;
            if (row == pitch) row = s->length; /* whole rows: back to back */
            else if (pitch && sbytes && c->gather) {
                dst = c->gather + gpos;
                gpos += s->length;
                row = s->length;
            }
            rows = s->length / row;
            for (r = 0; r < rows; r++) {
                uint64_t part = 0;
                c->iov[k].iov_base = dst + r * pitch;
                c->iov[k].iov_len = (size_t)row;
                if (++k < KVX__TCP_IOV && (i + 1 < n || r + 1 < rows)) continue;
                err = kvx__tcp_io(c->fd, c->iov, k, 0, 0, &part);
                *got += part;
                if (err) return err;
                k = 0;
            }
        }
        for (i = 0, gpos = 0; sbytes && c->gather && i < n; i++) {
            const kvx_tcp_segment *s = &c->segs[i];
            uint64_t pitch = s->flags & KVX_TCP_SEG_ROWS
                                 ? l->buffers[s->buffer].item_len / l->page_size : 0;
            if (pitch && s->row_len != pitch) {
                kvx_span sp;
                memset(&sp, 0, sizeof sp);
                sp.length = s->length;
                sp.row_len = (uint32_t)s->row_len;
                sp.src_pitch = (uint32_t)s->row_len;
                sp.dst_pitch = (uint32_t)pitch;
                sp.dst_offset = s->dst_offset;
                kvx_span_copy(l->buffers[s->buffer].base, c->gather + gpos, &sp);
                gpos += s->length;
            }
        }
        return 0;
    }
    if (payload > c->stage_len) {
        if (c->stage) te->mem.host_free(te->mem.ctx, c->stage);
        c->stage_len = 0;
        c->stage = (char *)te->mem.host_alloc(te->mem.ctx, (size_t)payload);
        if (!c->stage) {
            kvx__set_why(why, wl, "cannot allocate %llu bytes of pinned staging memory",
                         (unsigned long long)payload);
            return KVX__TCP_DEVICE_ERR; /* the stream is out of step: the caller closes it */
        }
        c->stage_len = (size_t)payload;
    }
    if ((err = kvx__tcp_io1(c->fd, c->stage, (size_t)payload, 0, 0)) != 0) return err;
    *got = payload;
    for (i = 0; i < n; i++) {
        const kvx_tcp_segment *s = &c->segs[i];
        const kvx_buffer *b = kvx__tcp_seg_buf(l, s);
        if (!b) {
            memcpy(kvx__tcp_aux_row(tr, s), c->stage + pos, (size_t)s->length);
        } else if (b->mem == KVX_MEM_HOST) {
            memcpy((char *)b->base + s->dst_offset, c->stage + pos, (size_t)s->length);
        } else {
            c->copies[nb].buf_ptr = (char *)b->base + s->dst_offset;
            c->copies[nb].host = c->stage + pos;
            c->copies[nb].len = s->length;
            c->copies[nb].device = b->device;
            nb++;
        }
        pos += s->length;
    }
    if (nb && te->mem.copy(te->mem.ctx, 0, c->copies, nb, why, wl) != KVX_OK) {
        kvx_room_fail(tr->x.room, KVX_ERR_TRANSPORT, "cannot place KV pages or state rows on the "
                      "device: %s", why);
        return 0; /* the payload was read: the connection stays in step */
    }
    return 0;
}

/* Writes the ACK of tr on connection c. 0 or an errno. */
static int kvx__tcp_send_ack(kvx__tcp_conn *c, kvx__tcp_room *tr) {
    uint8_t ack[KVX_TCP_HEADER_BYTES + KVX__TCP_ACK_BODY];
    int err;
    kvx__tcp_hdr(ack, KVX_TCP_ACK, 0, tr->x.id, KVX__TCP_ACK_BODY);
    kvx__le_w64(ack + 32, tr->expected);
    kvx__le_w64(ack + 40, 0);
    pthread_mutex_lock(&c->wmu);
    err = kvx__tcp_io1(c->fd, ack, sizeof ack, 1, 0);
    pthread_mutex_unlock(&c->wmu);
    return err;
}

/* The room's last byte is in place: aux rows into the slot, Success, then
   an ACK to every prefill rank that contributed (on c for its own, on a
   live connection of each other one). */
static int kvx__tcp_recv_finish(kvx__tcp_conn *c, kvx__tcp_room *tr) {
    kvx__tcp_engine *te = c->te;
    const kvx_layout *l = kvx_engine_layout(te->engine);
    kvx__tcp_conn *to[KVX__TCP_SRCS], *x;
    uint32_t i, n = 0;
    int err, rc = 0;
    for (i = 0; tr->aux_stage && i < tr->aux_plan.count; i++) {
        const kvx_span *row = &tr->aux_plan.spans[i];
        memcpy(kvx_span_addr(l, row, 1), tr->aux_stage + row->src_offset, (size_t)row->length);
    }
    /* Success first, then the ACK (why: COMPLETION in the doc block; the
       other order would leave a window in which the sender already
       succeeded on the ACK and the receiver still fails, as the prefill
       process exits). A room that failed first sends no ACK. */
    kvx_room_succeed(tr->x.room, tr->expected);
    if (kvx_room_poll(tr->x.room) != KVX_POLL_SUCCESS) return 0;
    pthread_mutex_lock(&te->mu);
    for (i = 0; i < tr->nsrcs; i++) {
        if (tr->srcs[i] == c->instance) {
            to[n++] = c;
            continue;
        }
        for (x = te->conns; x; x = x->next)
            if (!x->pending && !x->done && x->instance == tr->srcs[i]) break; /* HELLO read */
        if (x) {
            x->acking++;
            to[n++] = x;
        }
    }
    pthread_mutex_unlock(&te->mu);
    for (i = 0; i < n; i++) {
        if ((err = kvx__tcp_send_ack(to[i], tr)) == 0) continue;
        kvx_engine_log(te->engine, KVX_LOG_WARN, "kvx.tcp", tr->x.id,
                       "cannot send ACK to %s: %s (its sender fails, this room has every byte)",
                       to[i]->who, kvx__tcp_errstr(err));
        if (to[i] == c) rc = -1;
    }
    pthread_mutex_lock(&te->mu);
    for (i = 0; i < n; i++)
        if (to[i] != c) to[i]->acking--;
    pthread_mutex_unlock(&te->mu);
    KVX__STORE(&te->conns_done, 1); /* a connection kept for its ACK may be reaped now */
    return rc;
}

/* One DATA frame whose header was read. 0: go on; -1: close the connection. */
static int kvx__tcp_on_data(kvx__tcp_conn *c, const kvx_tcp_header *h) {
    kvx__tcp_engine *te = c->te;
    kvx__tcp_room *tr;
    kvx_room *r;
    char why[KVX_ERROR_MAX];
    uint32_t n = h->count, i;
    uint64_t dbytes = (uint64_t)n * KVX_TCP_SEGMENT_BYTES, payload = h->body_len - dbytes, got = 0;
    kvx_poll st;
    kvx_result res;
    int err, rc = 0;
    why[0] = 0;
    if ((err = kvx__tcp_io1(c->fd, c->descs, (size_t)dbytes, 0, 0)) != 0) {
        kvx_engine_log(te->engine, KVX_LOG_WARN, "kvx.tcp", h->room,
                       "data connection from %s broke inside a frame header: %s", c->who,
                       kvx__tcp_errstr(err));
        return -1;
    }
    for (i = 0; i < n; i++)
        kvx_tcp_segment_decode(c->descs + (size_t)i * KVX_TCP_SEGMENT_BYTES, &c->segs[i]);
    pthread_mutex_lock(&te->mu);
    tr = kvx__tcp_find(te, h->room);
    if (!tr) {
        int tomb = kvx__tcp_tomb_find(te, h->room);
        pthread_mutex_unlock(&te->mu);
        if (tomb) return kvx__tcp_drain(c, payload);
        snprintf(why, sizeof why, "room %llu is not receiving on this engine (unknown or "
                 "long closed)", (unsigned long long)h->room);
        return kvx__tcp_refuse(c, NULL, h->room, KVX_ERR_PROTOCOL, why);
    }
    st = kvx_room_poll(tr->x.room);
    if (tr->closing || st == KVX_POLL_FAILED) {
        pthread_mutex_unlock(&te->mu);
        return kvx__tcp_drain(c, payload);
    }
    if (st == KVX_POLL_SUCCESS) {
        pthread_mutex_unlock(&te->mu);
        snprintf(why, sizeof why, "room %llu already received every byte", (unsigned long long)h->room);
        return kvx__tcp_refuse(c, NULL, h->room, KVX_ERR_PROTOCOL, why);
    }
    r = tr->x.room;
    kvx_room_ref(r);
    tr->busy++;
    c->cur = tr;
    for (i = 0; i < tr->nsrcs && tr->srcs[i] != c->instance; i++) {}
    if (i == tr->nsrcs && i < KVX__TCP_SRCS) tr->srcs[tr->nsrcs++] = c->instance;
    pthread_mutex_unlock(&te->mu);
    /* every prefill rank that holds part of the room sends it: the byte
       claims of kvx__tcp_check keep each (buffer, page, head) to one */
    if ((res = kvx__tcp_check(te, tr, c->segs, n, payload, why, sizeof why)) != KVX_OK) {
        rc = kvx__tcp_refuse(c, r, h->room, res, why);
    } else if ((err = kvx__tcp_read_payload(c, tr, n, payload, &got, why, sizeof why)) != 0) {
        if (err == KVX__TCP_DEVICE_ERR)
            kvx_room_fail(r, KVX_ERR_NO_MEMORY, "%s", why);
        else
            kvx_room_fail(r, KVX_ERR_PEER_LOST,
                          "data connection from %s broke in the middle of a frame of this "
                          "room (%llu of %llu bytes read): %s", c->who, (unsigned long long)got,
                          (unsigned long long)payload, kvx__tcp_errstr(err));
        rc = -1;
    } else {
        KVX__TCP_STAT(te, frames_received, 1);
        KVX__TCP_STAT(te, bytes_received, payload);
        if (KVX__SUB(&tr->remaining, payload) == 0) rc = kvx__tcp_recv_finish(c, tr);
    }
    pthread_mutex_lock(&te->mu);
    tr->busy--;
    c->cur = NULL;
    if (tr->closing && !tr->busy) pthread_cond_broadcast(&te->cv);
    pthread_mutex_unlock(&te->mu);
    kvx_room_unref(r);
    return rc;
}

/* Decode, keyed engines: our nonce and proof over the prefill's nonce
   (AUTH), then the prefill's proof over ours (PROOF), all before
   deadline_ns. KVX_OK, or an error with why. */
static kvx_result kvx__tcp_conn_auth(kvx__tcp_conn *c, const uint8_t *nonce_p,
                                     uint64_t deadline_ns, char *why, size_t wl) {
    kvx__tcp_engine *te = c->te;
    uint8_t out[KVX_TCP_HEADER_BYTES + KVX__TCP_AUTH_BODY], nonce[KVX_NONCE_BYTES];
    uint8_t in[KVX_TCP_HEADER_BYTES + KVX__TCP_PROOF_BODY], want[KVX_MAC_BYTES];
    kvx_tcp_header h;
    int err;
    if (kvx__random_bytes(nonce, sizeof nonce) != KVX_OK)
        return kvx__why(KVX_ERR_IO, why, wl, "cannot draw a nonce from the kernel");
    kvx__tcp_hdr(out, KVX_TCP_AUTH, 0, 0, KVX__TCP_AUTH_BODY);
    memcpy(out + 32, nonce, KVX_NONCE_BYTES);
    kvx__auth_proof(te->key, te->key_len, KVX__TCP_LABEL_DECODE, nonce_p, nonce,
                   out + 32 + KVX_NONCE_BYTES);
    if ((err = kvx__tcp_io1(c->fd, out, sizeof out, 1, 0)) != 0)
        return kvx__why(KVX_ERR_PEER_LOST, why, wl, "cannot send the key challenge: %s",
                            kvx__tcp_errstr(err));
    err = kvx__tcp_recv_until(c->fd, in, KVX_TCP_HEADER_BYTES, deadline_ns);
    if (!err && kvx_tcp_header_decode(in, &h, why, wl) != KVX_OK) return KVX_ERR_PROTOCOL;
    if (!err && h.type != KVX_TCP_PROOF)
        return kvx__why(KVX_ERR_PROTOCOL, why, wl, "frame type %u instead of the key proof "
                            "(nothing is accepted before it)", h.type);
    if (!err) err = kvx__tcp_recv_until(c->fd, in + 32, KVX__TCP_PROOF_BODY, deadline_ns);
    if (err)
        return kvx__why(KVX_ERR_PEER_LOST, why, wl,
                            "no key proof within %d ms of connecting: %s", KVX_TCP_HELLO_MS,
                            kvx__tcp_errstr(err));
    kvx__auth_proof(te->key, te->key_len, KVX__TCP_LABEL_PREFILL, nonce, nonce_p, want);
    if (!kvx__equal_ct(want, in + 32, KVX_MAC_BYTES))
        return kvx__why(KVX_ERR_PERMISSION, why, wl, "wrong key proof: the prefill does not "
                            "hold this engine's auth key (KVX_AUTH_KEY / KVX_AUTH_KEY_FILE differ "
                            "between the engines)");
    return KVX_OK;
}

/* Reads and checks the HELLO (and, keyed, the proof), all within
   KVX_TCP_HELLO_MS of the accept however the peer paces its bytes. 0, or
   -1: the connection is refused (ERROR, closed) and no room is touched. */
static int kvx__tcp_conn_hello(kvx__tcp_conn *c) {
    kvx__tcp_engine *te = c->te;
    uint8_t buf[KVX_TCP_HEADER_BYTES + KVX__TCP_HELLO_BODY];
    char why[KVX_ERROR_MAX];
    kvx_tcp_header h;
    uint64_t fp = kvx_tcp_shape_fingerprint(kvx_engine_layout(te->engine));
    uint64_t deadline = c->since_ns + (uint64_t)KVX_TCP_HELLO_MS * 1000000u;
    uint32_t flags = 0;
    int err, answer = 1;
    why[0] = 0;
    err = kvx__tcp_recv_until(c->fd, buf, KVX_TCP_HEADER_BYTES, deadline);
    if (!err && kvx_tcp_header_decode(buf, &h, why, sizeof why) == KVX_OK) {
        if (h.type != KVX_TCP_HELLO)
            snprintf(why, sizeof why, "first frame is of type %u, not HELLO", h.type);
        else
            err = kvx__tcp_recv_until(c->fd, buf + 32, KVX__TCP_HELLO_BODY, deadline);
    }
    if (err) {
        snprintf(why, sizeof why, "no HELLO within %d ms of connecting: %s", KVX_TCP_HELLO_MS,
                 kvx__tcp_errstr(err));
        answer = 0;
    } else if (!why[0]) {
        flags = kvx__le_r32(buf + 68);
        if (!kvx__equal_ct(buf + 32, te->token, KVX_TCP_TOKEN_BYTES))
            snprintf(why, sizeof why, "wrong token (it did not learn this endpoint from this "
                     "decode engine's bootstrap hello)");
        else if (kvx__le_r64(buf + 56) != fp)
            snprintf(why, sizeof why, "layout fingerprint %016llx, ours %016llx (page size, "
                     "dtype, MLA, head size, aux or state rows differ)",
                     (unsigned long long)kvx__le_r64(buf + 56), (unsigned long long)fp);
        else if (flags & ~KVX_TCP_HELLO_AUTH)
            snprintf(why, sizeof why, "unknown HELLO flags %08x", (unsigned)flags);
        else if (te->key && !(flags & KVX_TCP_HELLO_AUTH))
            snprintf(why, sizeof why, "this decode engine requires the shared auth key "
                     "(KVX_AUTH_KEY / KVX_AUTH_KEY_FILE) and the prefill presented none");
        else if (!te->key && (flags & KVX_TCP_HELLO_AUTH))
            snprintf(why, sizeof why, "the prefill holds an auth key and this decode engine "
                     "has none: set the same KVX_AUTH_KEY / KVX_AUTH_KEY_FILE on both");
        else if (te->key && kvx__tcp_conn_auth(c, buf + 72, deadline, why, sizeof why) != 0 &&
                 !why[0])
            snprintf(why, sizeof why, "key exchange failed");
    }
    if (why[0]) {
        KVX__TCP_STAT(te, conns_refused, 1);
        kvx_engine_log(te->engine, KVX_LOG_WARN, "kvx.tcp", 0,
                       "refusing data connection from %s: %s", c->addr, why);
        if (answer) kvx__tcp_send_error(c, 0, KVX_ERR_PROTOCOL, why);
        return -1;
    }
    c->instance = kvx__le_r64(buf + 48);
    if (kvx__le_r16(buf + 90) && kvx__le_r16(buf + 94))
        snprintf(c->who, sizeof c->who, "prefill %s (tp rank %u of %u, pp rank %u of %u)",
                 c->addr, kvx__le_r16(buf + 88), kvx__le_r16(buf + 90), kvx__le_r16(buf + 92),
                 kvx__le_r16(buf + 94));
    kvx__tcp_sockopts(te, c->fd);
    KVX__TCP_STAT(te, conns_accepted, 1);
    kvx_engine_log(te->engine, KVX_LOG_INFO, "kvx.tcp", 0,
                   "%s connected (stream %u of %u%s)", c->who, kvx__le_r16(buf + 64),
                   kvx__le_r16(buf + 66), te->key ? ", key proven" : "");
    return 0;
}

/* Under te->mu: the connection's HELLO is through (or it failed). */
static void kvx__tcp_conn_settled(kvx__tcp_engine *te, kvx__tcp_conn *c) {
    if (!c->pending) return;
    c->pending = 0;
    te->npending--;
}

/* Under te->mu, for a new connection: past KVX_TCP_MAX_PENDING connections
   that have not said HELLO, the oldest of them is closed (why: its doc). */
static void kvx__tcp_evict_pending(kvx__tcp_engine *te) {
    kvx__tcp_conn *c, *old = NULL;
    if (te->npending <= KVX_TCP_MAX_PENDING) return;
    for (c = te->conns; c; c = c->next)
        if (c->pending && (!old || c->since_ns < old->since_ns)) old = c;
    if (!old) return;
    kvx__tcp_conn_settled(te, old);
    shutdown(old->fd, SHUT_RDWR); /* its thread sees EOF and returns */
    KVX__TCP_STAT(te, conns_refused, 1);
    kvx_engine_log(te->engine, KVX_LOG_INFO, "kvx.tcp", 0,
                   "closing data connection from %s: no HELLO after %.1f s and %d newer "
                   "connections wait (KVX_TCP_MAX_PENDING)", old->addr,
                   (double)(kvx_now_ns() - old->since_ns) / 1e9, KVX_TCP_MAX_PENDING);
}

/* A data connection from a prefill rank ended: every unfinished room it
   had sent data for cannot complete (that rank's bytes stop here, and its
   streams end only with its link), so each fails now with a sentence
   naming the rank, before its control connection's loss says less. */
static void kvx__tcp_conn_gone(kvx__tcp_conn *c, const char *how) {
    kvx__tcp_engine *te = c->te;
    kvx_room *rs[64];
    size_t n = 0, b, i;
    kvx__hnode *h;
    pthread_mutex_lock(&te->mu);
    for (b = 0; !te->stopping && b < te->rooms.nb && n < 64; b++)
        for (h = te->rooms.b[b]; h && n < 64; h = h->hnext) {
            kvx__tcp_room *tr = (kvx__tcp_room *)(void *)((char *)h - offsetof(kvx__tcp_room, hn));
            uint32_t k;
            if (tr->closing || kvx__room_terminal(tr->x.room)) continue;
            for (k = 0; k < tr->nsrcs && tr->srcs[k] != c->instance; k++) {}
            if (k == tr->nsrcs) continue;
            kvx_room_ref(tr->x.room);
            rs[n++] = tr->x.room;
        }
    pthread_mutex_unlock(&te->mu);
    for (i = 0; i < n; i++) {
        kvx_room_fail(rs[i], KVX_ERR_PEER_LOST, "data connection from %s, a contributor of this "
                      "room, ended before the room was complete: %s", c->who, how);
        kvx_room_unref(rs[i]);
    }
}

static void *kvx__tcp_conn_main(void *arg) {
    kvx__tcp_conn *c = (kvx__tcp_conn *)arg;
    kvx__tcp_engine *te = c->te;
    char why[KVX_ERROR_MAX];
    int ok = kvx__tcp_conn_hello(c) == 0;
    pthread_mutex_lock(&te->mu);
    kvx__tcp_conn_settled(te, c);
    pthread_mutex_unlock(&te->mu);
    while (ok) {
        uint8_t hb[KVX_TCP_HEADER_BYTES];
        kvx_tcp_header h;
        int err = kvx__tcp_io1(c->fd, hb, sizeof hb, 0, 1);
        if (err) {
            kvx_engine_log(te->engine, err == KVX__TCP_EOF ? KVX_LOG_INFO : KVX_LOG_WARN,
                           "kvx.tcp", 0, "data connection from %s ended: %s", c->who,
                           kvx__tcp_errstr(err));
            kvx__tcp_conn_gone(c, kvx__tcp_errstr(err));
            break;
        }
        why[0] = 0;
        if (kvx_tcp_header_decode(hb, &h, why, sizeof why) != KVX_OK || h.type != KVX_TCP_DATA) {
            if (!why[0]) snprintf(why, sizeof why, "unexpected frame type %u", h.type);
            kvx__tcp_refuse(c, NULL, h.room, KVX_ERR_PROTOCOL, why);
            break;
        }
        if (kvx__tcp_on_data(c, &h)) break;
    }
    shutdown(c->fd, SHUT_RDWR); /* the fd is closed when the thread is joined */
    pthread_mutex_lock(&te->mu);
    c->done = 1;
    pthread_mutex_unlock(&te->mu);
    KVX__STORE(&te->conns_done, 1);
    return NULL;
}

static void kvx__tcp_conn_free(kvx__tcp_engine *te, kvx__tcp_conn *c) {
    kvx_engine *e = te->engine;
    if (c->fd >= 0) close(c->fd);
    pthread_mutex_destroy(&c->wmu);
    kvx_engine_free(e, c->descs);
    kvx_engine_free(e, c->iov);
    kvx_engine_free(e, c->segs);
    kvx_engine_free(e, c->copies);
    kvx_engine_free(e, c->drain);
    kvx_engine_free(e, c->gather);
    if (c->stage) te->mem.host_free(te->mem.ctx, c->stage);
    kvx_engine_free(e, c);
}

/* Joins finished connection threads (all: every one, shutting them down). */
static void kvx__tcp_reap_conns(kvx__tcp_engine *te, int all) {
    kvx__tcp_conn *ready = NULL, **pp, *c;
    if (!all && !KVX__LOAD(&te->conns_done)) return;
    KVX__STORE(&te->conns_done, 0);
    pthread_mutex_lock(&te->mu);
    for (pp = &te->conns; *pp;) {
        c = *pp;
        if (all && !c->done) shutdown(c->fd, SHUT_RDWR);
        if (all || (c->done && !c->acking)) {
            *pp = c->next;
            c->next = ready;
            ready = c;
            te->nconns--;
        } else {
            pp = &c->next;
        }
    }
    pthread_mutex_unlock(&te->mu);
    for (c = ready; c; c = c->next) pthread_join(c->th, NULL); /* then free: a thread may */
    while (ready) {                                            /* ACK on another's conn */
        c = ready;
        ready = c->next;
        kvx__tcp_conn_free(te, c);
    }
}

static kvx__tcp_conn *kvx__tcp_conn_new(kvx__tcp_engine *te, int fd, const struct sockaddr *sa) {
    kvx_engine *e = te->engine;
    kvx__tcp_conn *c = (kvx__tcp_conn *)kvx__zalloc(te->al, 1, sizeof *c);
    if (!c) return NULL;
    c->te = te;
    c->fd = fd;
    c->pending = 1;
    pthread_mutex_init(&c->wmu, NULL);
    c->since_ns = kvx_now_ns();
    kvx__sa_str(sa, c->addr, sizeof c->addr);
    snprintf(c->who, sizeof c->who, "prefill %s", c->addr);
    c->descs = (uint8_t *)kvx_engine_alloc(e, (size_t)KVX_TCP_MAX_SEGS * KVX_TCP_SEGMENT_BYTES);
    c->iov = (struct iovec *)kvx_engine_alloc(e, KVX__TCP_IOV * sizeof(struct iovec));
    c->segs = (kvx_tcp_segment *)kvx_engine_alloc(e, KVX_TCP_MAX_SEGS * sizeof(kvx_tcp_segment));
    c->copies = (kvx_copy *)kvx_engine_alloc(e, KVX_TCP_MAX_SEGS * sizeof(kvx_copy));
    c->drain = (char *)kvx_engine_alloc(e, KVX__TCP_DRAIN);
    if (!c->descs || !c->iov || !c->segs || !c->copies || !c->drain) {
        c->fd = -1;
        kvx__tcp_conn_free(te, c);
        return NULL;
    }
    return c;
}

static void *kvx__tcp_accept_main(void *arg) {
    kvx__tcp_engine *te = (kvx__tcp_engine *)arg;
    for (;;) {
        struct pollfd pf[2];
        struct sockaddr_storage sa;
        socklen_t sl = sizeof sa;
        kvx__tcp_conn *c;
        int fd, stop, full;
        pf[0].fd = te->lfd;
        pf[0].events = POLLIN;
        pf[1].fd = te->wake[0];
        pf[1].events = POLLIN;
        if (poll(pf, 2, -1) < 0 && errno != EINTR) break;
        pthread_mutex_lock(&te->mu);
        stop = te->stopping;
        pthread_mutex_unlock(&te->mu);
        if (stop) break;
        if (pf[1].revents) kvx__drain(te->wake[0]);
        if (!(pf[0].revents & POLLIN)) continue;
        fd = accept4(te->lfd, (struct sockaddr *)&sa, &sl, SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                kvx_engine_log(te->engine, KVX_LOG_WARN, "kvx.tcp", 0,
                               "cannot accept a data connection: %s", strerror(errno));
                kvx__sleep_us(10000); /* out of descriptors: do not spin */
            }
            continue;
        }
        kvx__tcp_reap_conns(te, 0);
        pthread_mutex_lock(&te->mu);
        full = te->nconns >= KVX_TCP_MAX_CONNS;
        pthread_mutex_unlock(&te->mu);
        c = full ? NULL : kvx__tcp_conn_new(te, fd, (struct sockaddr *)&sa);
        if (!c) {
            char addr[64];
            kvx__sa_str((struct sockaddr *)&sa, addr, sizeof addr);
            KVX__TCP_STAT(te, conns_refused, 1);
            kvx_engine_log(te->engine, KVX_LOG_WARN, "kvx.tcp", 0,
                           "refusing data connection from %s: %s", addr,
                           full ? "KVX_TCP_MAX_CONNS connections are open" : "out of memory");
            close(fd);
            continue;
        }
        pthread_mutex_lock(&te->mu);
        if (pthread_create(&c->th, NULL, kvx__tcp_conn_main, c)) {
            pthread_mutex_unlock(&te->mu);
            kvx_engine_log(te->engine, KVX_LOG_WARN, "kvx.tcp", 0,
                           "refusing data connection from %s: cannot start a thread", c->addr);
            kvx__tcp_conn_free(te, c);
            continue;
        }
        c->next = te->conns;
        te->conns = c;
        te->nconns++;
        te->npending++;
        kvx__tcp_evict_pending(te);
        pthread_mutex_unlock(&te->mu);
    }
    return NULL;
}

/* >>tcp: engine --------------------------------------------------------------- */

static kvx_result kvx__tcp_listen(kvx__tcp_engine *te, char *why, size_t wl) {
    const char *bind_host = te->host[0] ? te->host : "0.0.0.0";
    int err;
    if ((te->lfd = kvx__listen(bind_host, 0, 512, &te->port, &err)) >= 0) return KVX_OK;
    return kvx__why(err < 0 ? KVX_ERR_BAD_CONFIG : KVX_ERR_IO, why, wl,
                        err < 0 ? "KVX_TCP_HOST '%s' does not resolve: %s"
                                : "cannot listen for tcp data on %s: %s (check KVX_TCP_HOST)",
                        bind_host, kvx__errstr(err));
}

static const kvx__setting kvx__tcp_table[] = {
    KVX__SET_INT("KVX_TCP_STREAMS", kvx_tcp_desc, streams, 4, 1, KVX_TCP_MAX_STREAMS),
    KVX__SET_STR("KVX_TCP_HOST", kvx_tcp_desc, host),
    KVX__SET_INT("KVX_TCP_SEGMENT", kvx_tcp_desc, segment, 4 << 20, 64 << 10, KVX_TCP_MAX_FRAME),
    KVX__SET_INT("KVX_TCP_SOCKBUF", kvx_tcp_desc, sockbuf, 0, 4096, 1 << 30),
    KVX__SET_DBL("KVX_TCP_TIMEOUT", kvx_tcp_desc, timeout_s, 60, 0.001, KVX_MAX_TIMEOUT_S),
};

static kvx_result kvx__tcp_settings(kvx__tcp_engine *te, const kvx_engine_desc *d, char *why,
                                    size_t wl) {
    kvx_tcp_desc t = d->tcp;
    kvx_result r = kvx__settings_apply(kvx__tcp_table, KVX__COUNT(kvx__tcp_table), &t, why, wl);
    if (r != KVX_OK) return r;
    te->set = t;
    if (t.host && (strlen(t.host) >= sizeof te->host || strchr(t.host, ' ')))
        return kvx__why(KVX_ERR_BAD_CONFIG, why, wl,
                            "KVX_TCP_HOST / desc.tcp.host '%s' is not an address", t.host);
    snprintf(te->host, sizeof te->host, "%s", t.host ? t.host : "");
    if (!strcmp(te->host, "0.0.0.0") || !strcmp(te->host, "::") || !strcmp(te->host, "*"))
        te->host[0] = 0;
    return KVX_OK;
}

/* A length that holds any page (row) index a decode side may name. */
static uint64_t kvx__tcp_huge(uint64_t item) {
    return item < (1ull << 32) ? item << 31 : item * (UINT64_MAX / item);
}

/* KV or state buffers (HYBRID STATE: rows move like pages): GPU memory
   means staging; a page (row) must fit a frame and the stage. `what`
   names buffer i ("KV buffer %u has pages"). */
static kvx_result kvx__tcp_bufs(kvx__tcp_engine *te, const kvx_buffer *b, uint32_t n,
                                const char *what, char *why, size_t wl) {
    char name[64];
    uint32_t i;
    for (i = 0; i < n; i++) {
        if (b[i].mem != KVX_MEM_HOST) te->staged = 1;
        if (b[i].item_len > KVX_TCP_MAX_FRAME) {
            snprintf(name, sizeof name, what, i);
            return kvx__why(KVX_ERR_INVALID_ARGUMENT, why, wl, "%s of %llu bytes; the tcp "
                            "transport carries at most KVX_TCP_MAX_FRAME (%u) in a frame", name,
                            (unsigned long long)b[i].item_len, (unsigned)KVX_TCP_MAX_FRAME);
        }
        if (b[i].item_len > te->stage_bytes) te->stage_bytes = b[i].item_len;
    }
    return KVX_OK;
}

/* Layout facts: staging, the largest frame payload, the decode pool's shape
   for kvx_plan_pages and kvx_plan_aux (same item_len; its size is checked by
   the decode side). */
static kvx_result kvx__tcp_layout(kvx__tcp_engine *te, const kvx_engine_desc *d, char *why,
                                  size_t wl) {
    const kvx_layout *l = kvx_engine_layout(te->engine);
    uint64_t aux_total = kvx_layout_aux_row_bytes(l);
    uint32_t i;
    kvx_result r;
    te->stage_bytes = te->set.segment;
    if ((r = kvx__tcp_bufs(te, l->buffers, l->num_buffers, "KV buffer %u has pages", why, wl)) ||
        (r = kvx__tcp_bufs(te, l->state, l->num_state, "state buffer %u has rows", why, wl)))
        return r;
    if (aux_total > KVX_TCP_MAX_FRAME)
        return kvx__why(KVX_ERR_INVALID_ARGUMENT, why, wl,
                            "the aux rows of a request are %llu bytes; at most %u fit a frame",
                            (unsigned long long)aux_total, (unsigned)KVX_TCP_MAX_FRAME);
    if (aux_total > te->stage_bytes) te->stage_bytes = aux_total;
    te->mem = d->mem;
    if (te->staged && (!te->mem.copy || !te->mem.host_alloc || !te->mem.host_free))
        return kvx__why(KVX_ERR_INVALID_ARGUMENT, why, wl, "the layout has KV or state buffers "
                            "in GPU memory but desc.mem has no copy functions: fill it with "
                            "kvx_cuda_mem_ops() from kvx_cuda.h (built with -DKVX_WITH_CUDA)");
    te->peer_bufs = (kvx_buffer *)kvx_engine_alloc(te->engine, l->num_buffers * sizeof(kvx_buffer));
    if (!te->peer_bufs) return KVX_ERR_NO_MEMORY;
    for (i = 0; i < l->num_buffers; i++) {
        uint64_t item = l->buffers[i].item_len;
        memset(&te->peer_bufs[i], 0, sizeof te->peer_bufs[i]);
        te->peer_bufs[i].item_len = item;
        te->peer_bufs[i].length = kvx__tcp_huge(item);
    }
    for (i = 0; i < l->num_aux; i++) {
        te->peer_aux[i].item_len = l->aux[i].item_len;
        te->peer_aux[i].length = kvx__tcp_huge(l->aux[i].item_len);
    }
    te->peer_layout = *l;
    te->peer_layout.buffers = te->peer_bufs;
    te->peer_layout.aux = te->peer_aux;
    return KVX_OK;
}

static void kvx__tcp_engine_free(kvx__tcp_engine *te) {
    kvx_engine *e = te->engine;
    if (te->lfd >= 0) close(te->lfd);
    if (te->wake[0] >= 0) close(te->wake[0]);
    if (te->wake[1] >= 0) close(te->wake[1]);
    kvx__htab_free(&te->rooms, te->al);
    kvx_engine_free(e, te->peer_bufs);
    pthread_mutex_destroy(&te->mu);
    pthread_cond_destroy(&te->cv);
    kvx_engine_free(e, te);
}

static int kvx__tcp_on_status(kvx_boot *b, kvx_room *r, const kvx_boot_peer *peer, kvx_poll state,
                              kvx_result result, uint64_t bytes, const char *reason) {
    (void)b; (void)r; (void)peer; (void)result; (void)bytes; (void)reason;
    /* a receiver succeeds on its own byte count, never on the sender's word;
       a prefill rank that reported Success (an MLA dummy, a rank holding
       nothing of this room) is done with it: its going away later fails
       nothing */
    return state == KVX_POLL_SUCCESS ? 2 : 0;
}

static kvx_result kvx__tcp_engine_init(kvx_engine *e, char *why, size_t wl) {
    const kvx_engine_desc *d = kvx_engine_settings(e);
    kvx__tcp_engine *te;
    kvx_boot_hooks hooks;
    uint8_t ep[KVX__TCP_ENDPOINT_FIXED + 64];
    size_t eplen = 0;
    kvx_result r;
    te = (kvx__tcp_engine *)kvx__zalloc(&d->allocator, 1, sizeof *te);
    if (!te) return KVX_ERR_NO_MEMORY;
    te->engine = e;
    te->al = &d->allocator;
    te->role = d->role;
    te->lfd = -1;
    te->wake[0] = te->wake[1] = -1;
    pthread_mutex_init(&te->mu, NULL);
    pthread_cond_init(&te->cv, NULL);
    te->key = kvx_engine_auth_key(e, &te->key_len);
    te->rank[0] = (uint16_t)(d->boot.tp_rank > 0 ? d->boot.tp_rank : 0);
    te->rank[1] = (uint16_t)(d->boot.tp_size > 0 ? d->boot.tp_size : 1);
    te->rank[2] = (uint16_t)(d->boot.pp_rank > 0 ? d->boot.pp_rank : 0);
    te->rank[3] = (uint16_t)(d->boot.pp_size > 0 ? d->boot.pp_size : 1);
    if (kvx__random_bytes(&te->instance, sizeof te->instance) != KVX_OK) {
        r = kvx__why(KVX_ERR_IO, why, wl, "cannot draw random bytes from the kernel");
        goto fail;
    }
    if ((r = kvx__tcp_settings(te, d, why, wl)) != KVX_OK ||
        (r = kvx__tcp_layout(te, d, why, wl)) != KVX_OK)
        goto fail;
    if (te->role == KVX_ROLE_DECODE) {
        size_t hl = strlen(te->host);
        if ((r = kvx__tcp_listen(te, why, wl)) != KVX_OK) goto fail;
        if (kvx__pipe(&te->wake[0], &te->wake[1])) {
            r = kvx__why(KVX_ERR_IO, why, wl, "cannot create a pipe: %s", strerror(errno));
            goto fail;
        }
        if (kvx__random_bytes(te->token, sizeof te->token) != KVX_OK) {
            r = kvx__why(KVX_ERR_IO, why, wl, "cannot draw the data token from the kernel");
            goto fail;
        }
        memcpy(ep, "kvx-tcp\0", 8);
        kvx__le_w16(ep + 8, KVX_TCP_PROTOCOL_VERSION);
        kvx__le_w16(ep + 10, (uint16_t)te->port);
        kvx__le_w16(ep + 12, (uint16_t)hl);
        kvx__le_w16(ep + 14, 0);
        memcpy(ep + 16, te->token, KVX_TCP_TOKEN_BYTES);
        memcpy(ep + KVX__TCP_ENDPOINT_FIXED, te->host, hl);
        eplen = KVX__TCP_ENDPOINT_FIXED + hl;
    }
    memset(&hooks, 0, sizeof hooks);
    hooks.user = te;
    hooks.on_room = kvx__tcp_on_room;
    hooks.on_status = kvx__tcp_on_status;
    hooks.on_peer_lost = kvx__tcp_on_peer_lost;
    if ((r = kvx_boot_create(e, &hooks, eplen ? ep : NULL, eplen, &te->boot, why, wl)) != KVX_OK)
        goto fail;
    if (te->role == KVX_ROLE_DECODE) {
        if (pthread_create(&te->acceptor, NULL, kvx__tcp_accept_main, te)) {
            r = kvx__why(KVX_ERR_NO_MEMORY, why, wl, "cannot start the tcp accept thread");
            kvx_boot_destroy(te->boot);
            goto fail;
        }
        te->acceptor_started = 1;
        kvx_engine_log(e, KVX_LOG_INFO, "kvx.tcp", 0, "data listener on %s:%d",
                       te->host[0] ? te->host : "0.0.0.0", te->port);
    }
    kvx_engine_set_backend_data(e, te);
    return KVX_OK;
fail:
    kvx__tcp_engine_free(te);
    return r;
}

static void kvx__tcp_engine_fini(kvx_engine *e) {
    kvx__tcp_engine *te = kvx__tcp_te(e);
    if (!te) return;
    pthread_mutex_lock(&te->mu);
    te->stopping = 1;
    pthread_mutex_unlock(&te->mu);
    if (te->role == KVX_ROLE_PREFILL) {
        for (;;) {
            kvx__tcp_link *lk;
            pthread_mutex_lock(&te->mu);
            lk = te->links;
            pthread_mutex_unlock(&te->mu);
            if (!lk) break;
            kvx__tcp_link_kill(lk, "the engine is shutting down");
        }
        kvx__tcp_reap_links(te, 1);
    } else {
        if (te->acceptor_started) {
            kvx__wake(te->wake[1]);
            pthread_join(te->acceptor, NULL);
        }
        kvx__tcp_reap_conns(te, 1);
    }
    kvx_boot_destroy(te->boot); /* after our threads: they may still talk to it */
    kvx_engine_set_backend_data(e, NULL);
    kvx__tcp_engine_free(te);
}

static void kvx__tcp_progress(kvx_engine *e) {
    kvx__tcp_engine *te = kvx__tcp_te(e);
    if (!te) return;
    if (te->role == KVX_ROLE_PREFILL) kvx__tcp_reap_links(te, 0);
    else kvx__tcp_reap_conns(te, 0);
}

/* >>tcp: room hooks ------------------------------------------------------------ */

static kvx_result kvx__tcp_room_open(kvx_room *r) {
    kvx__tcp_engine *te = kvx__tcp_te(kvx_room_engine(r));
    kvx__tcp_room *tr = (kvx__tcp_room *)kvx__xroom_new(r, sizeof *tr);
    if (!tr) return KVX_ERR_NO_MEMORY;
    tr->te = te;
    tr->aux_index = -1;
    kvx_room_set_data(r, tr);
    return kvx_boot_room_open(te->boot, r);
}

/* kvx_boot: a decode's control connection dropped. A sender whose last
   chunk was queued keeps waiting on its data links, which bring the ACK
   (Success), report their own loss, or hit the ACK deadline: a decode
   destroyed right after its Success closes the control connection, and
   that may be seen before the ACK waiting in a data socket, even before
   the stream thread that sent the last frame has marked it sent. With
   several destinations (the hook does not say which decode left), a room
   one of whose decode ranks already acknowledged keeps going too: a decode
   rank that is done leaves normally; one that died takes its data link
   with it (link_kill fails the room), one whose control connection alone
   dropped sends no ACK (the ACK deadline ends it). */
static int kvx__tcp_on_peer_lost(kvx_boot *b, kvx_room *r, const char *reason) {
    kvx__tcp_room *tr = kvx__tcp_tr(r);
    int keep = 1, any_acked = 0;
    uint32_t k;
    (void)b; (void)reason;
    if (!tr) return 0;
    pthread_mutex_lock(&tr->x.mu);
    if (tr->gone || !tr->ndsts) keep = 0;
    for (k = 0; k < tr->ndsts; k++) any_acked |= KVX__LOAD(&tr->dsts[k]->acked);
    for (k = 0; keep && k < tr->ndsts; k++) {
        kvx__tcp_room *d = tr->dsts[k];
        if (KVX__LOAD(&d->acked) || !d->link) continue;
        pthread_mutex_lock(&d->link->mu);
        keep = !d->link->dead && (d->last_queued || any_acked);
        pthread_mutex_unlock(&d->link->mu);
    }
    pthread_mutex_unlock(&tr->x.mu);
    return keep;
}

/* The core's room_failed hook: room r failed here by a local decision
   (never for what the peer reported: kvx_room_fail_remote). The peer hears
   the first reason at once over the control channel; a sender stops
   queueing the room's frames. Once per room, a terminal room never gets
   here again, so nothing is sent after Success. */
static void kvx__tcp_room_failed(kvx_room *r) {
    kvx__tcp_room *tr = kvx__tcp_tr(r);
    kvx__tcp_engine *te;
    if (!tr) return;
    te = tr->te;
    kvx_boot_room_failed(te->boot, r); /* no frame yet: answered when it comes */
    if (kvx_room_role(r) == KVX_ROLE_PREFILL) {
        uint32_t k;
        pthread_mutex_lock(&tr->x.mu); /* held: sender_close cannot drop a link meanwhile */
        for (k = 0; !tr->gone && k < tr->ndsts; k++) {
            kvx__tcp_room *d = tr->dsts[k];
            if (!d->link) continue;
            pthread_mutex_lock(&d->link->mu);
            kvx__tcp_drop_jobs(d->link, d);
            pthread_mutex_unlock(&d->link->mu);
        }
        pthread_mutex_unlock(&tr->x.mu);
    }
}

static void kvx__tcp_room_close(kvx_room *r) {
    kvx__tcp_room *tr = kvx__tcp_tr(r);
    if (!tr) return;
    kvx_boot_room_close(tr->te->boot, r); /* an unfinished room tells its peer first */
    if (kvx_room_role(r) == KVX_ROLE_PREFILL) kvx__tcp_sender_close(tr);
    else kvx__tcp_receiver_close(tr);
}

static void kvx__tcp_room_free(kvx_room *r) {
    kvx__tcp_room *tr = kvx__tcp_tr(r);
    kvx_engine *e = kvx_room_engine(r);
    uint32_t k;
    if (!tr) return;
    for (k = 0; k < tr->ndsts; k++) kvx__tcp_dest_free(e, tr->dsts[k]);
    kvx_engine_free(e, tr->dsts);
    kvx_engine_free(e, tr->sorted);
    kvx_engine_free(e, tr->bitmap);
    kvx_engine_free(e, tr->ssorted);
    kvx_engine_free(e, tr->sbitmap);
    kvx_engine_free(e, tr->aux_stage);
    kvx_plan_free(&tr->aux_plan);
    kvx__xroom_free(tr);
}

/* >>tcp: public ------------------------------------------------------------------ */

static void kvx__tcp_hooks(kvx_backend *b) { /* no room_abort: room_failed does it */
    KVX__BACKEND_ROOM_HOOKS(b, kvx__tcp);
    b->progress = kvx__tcp_progress;
    b->layerwise = 1; /* LAYER-WISE SENDS: each part is queued as it comes */
}

KVX_API const kvx_backend *kvx_tcp_backend(void) {
    static kvx_backend b;
    return kvx__backend_table(&b, "tcp", kvx__tcp_engine_init, kvx__tcp_hooks);
}

KVX_API kvx_result kvx_tcp_register(void) { return kvx_transport_register(kvx_tcp_backend()); }

static const kvx__tcp_engine *kvx__tcp_of(const kvx_engine *e) {
    if (!e || strcmp(kvx_engine_transport(e), "tcp")) return NULL;
    return kvx__tcp_te(e);
}

KVX_API kvx_result kvx_tcp_endpoint_get(const kvx_engine *e, kvx_tcp_endpoint *out) {
    const kvx__tcp_engine *te = kvx__tcp_of(e);
    if (!out) return KVX_ERR_INVALID_ARGUMENT;
    memset(out, 0, sizeof *out);
    if (!te || te->role != KVX_ROLE_DECODE) return KVX_ERR_STATE;
    snprintf(out->host, sizeof out->host, "%s", te->host);
    out->port = te->port;
    memcpy(out->token, te->token, KVX_TCP_TOKEN_BYTES);
    return KVX_OK;
}

KVX_API kvx_result kvx_tcp_stats_get(const kvx_engine *e, kvx_tcp_stats *out) {
    const kvx__tcp_engine *te = kvx__tcp_of(e);
    const uint64_t *from = te ? &te->stats.frames_sent : NULL;
    size_t i;
    if (!out) return KVX_ERR_INVALID_ARGUMENT;
    memset(out, 0, sizeof *out);
    if (!te) return KVX_ERR_INVALID_ARGUMENT;
    for (i = 0; i < sizeof *out / sizeof *from; i++) /* every field is a uint64_t */
        ((uint64_t *)out)[i] = KVX__LOAD(&from[i]);
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
