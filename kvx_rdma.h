/* kvx_rdma.h - v0.1.0 - the rdma transport: paged KV cache over libibverbs (RC QPs, RDMA WRITE)

   The prefill writes every KV page of a request straight from its pool into
   the decode side's pool with one-sided RDMA WRITEs over reliable connected
   (RC) queue pairs, spread over several queue pairs and NICs. The
   handshake, room frames, status, abort and heartbeats are kvx_boot.h's.

   CONTENTS (section markers: search for ">>name")
     >>wire format  and ">>rdma: " wire format, verbs loader, settings and
     state, settings, memory registration, devices, queue pairs, failing rooms,
     the queue-pair exchange, prefill data path, decode completion accounting,
     the completion and event thread, kvx_boot hooks, backend hooks, engine

   DO THIS
       #define KVX_IMPLEMENTATION
       #define KVX_WITH_RDMA          (or -DKVX_WITH_RDMA for that one file)
       #include "kvx_rdma.h"          (includes kvx_boot.h and kvx.h)
       kvx_rdma_register();           (once; then desc.transport = "rdma")
     Link with -lpthread -ldl. libibverbs is loaded at run time (dlopen), so
     a binary built with KVX_WITH_RDMA starts without it and engine creation
     fails with a sentence saying what is missing; -DKVX_NO_RUNTIME_LINKING
     (and -libverbs) links it directly. Without KVX_WITH_RDMA everything
     compiles and an "rdma" engine fails with KVX_ERR_NOT_COMPILED naming
     the macro.

   DATA PATH (per room, on the prefill)
     kvx__rdma_sender_send -> kvx__rdma_submit: the chunk's two-sided plan
     (runs coalesced) is cut at KVX_IB_MAX_MSG and region boundaries into one
     WRITE each, dealt to the queue pairs in byte-balanced contiguous ranges
     (kvx__rdma_cuts); kvx__rdma_room_step / kvx__rdma_queue_aux ->
     kvx__rdma_pump chain them into one selectively signaled ibv_post_send per
     queue pair per batch, at most KVX_IB_SEND_DEPTH outstanding (more as
     completions free slots, kvx__rdma_cq_prefill). The room's last WRITE on
     every queue pair is a signaled WRITE WITH IMMEDIATE (imm = the room id
     folded to 32 bits; zero-length if the queue pair had nothing left). Aux
     rows go once the room's KV WRITEs on the other queue pairs completed, on
     queue pair 0 behind its own KV WRITEs, the last carrying the immediate;
     a hybrid model's state rows (HYBRID STATE below) go in the same job.
     When every WRITE completed the prefill sends status Success with the byte
     count; the decode side (kvx__rdma_cq_decode) succeeds with that status, an
     immediate for the room from every queue pair of that peer, and the bytes
     agreeing. Two open receivers whose folded ids collide are serialised (the
     later sends its room frame when the first is done). An aborted room gets a
     zero-length WRITE WITH IMMEDIATE on each queue pair that had not carried
     its last one, so kvx_receiver_destroy can wait (KVX_IB_FENCE_TIMEOUT)
     until no more bytes of it can land.

   EXAMPLE (prefill side; the rest as kvx_tcp.h's, with transport "rdma")
       // given: kvx_layout layout;
       kvx_rdma_register();                  // makes "rdma" a transport name
       kvx_engine_desc d = {0};
       d.role = KVX_ROLE_PREFILL;  d.transport = "rdma";  d.layout = layout;
       d.bootstrap_addr = "10.0.0.1:8998";
       d.rdma.devices = "mlx5_0,mlx5_1";     // NULL: every active port
       kvx_engine *e;  char why[KVX_ERROR_MAX];
       if (kvx_engine_create(&d, &e, why, sizeof why)) puts(why);

   COMPILE-TIME MACROS
     KVX_WITH_RDMA            compile the transport (needs <infiniband/verbs.h>,
                              libibverbs-dev / rdma-core >= 28 headers)
     KVX_NO_RUNTIME_LINKING   call libibverbs directly instead of dlopen
                              (needs rdma-core >= 34 at link time)
     KVX_RDMA_MAX_DEVS        NIC ports one engine uses (16)
     KVX_RDMA_MAX_QPS         queue pairs per peer (64)

   ENVIRONMENT (read at engine creation; kvx__rdma_table; kvx.h's settings
   rule: each overrides its desc.rdma field, 0 = default; "KVX_ZERO" marks
   where 0 is a value: the field asks for it with KVX_ZERO, the variable 0)
     KVX_IBVERBS_LIBRARY   desc.rdma.library: the verbs library to dlopen
                           ("libibverbs.so.1"; the tests point it at softverbs)
     KVX_IB_DEVICE         desc.rdma.devices: comma-separated device names,
                           each optionally "name:port" (every ACTIVE port of
                           every device)
     KVX_IB_GID_INDEX      desc.rdma.gid_index, 0..65535, KVX_ZERO: GID table
                           index (auto: on RoCE the first RoCE v2 GID neither
                           zero nor link-local, IPv4-mapped ones first; on
                           InfiniBand LID routing; the variable -1 = auto)
     KVX_IB_QPS            desc.rdma.qps: RC queue pairs per peer engine pair,
                           1..KVX_RDMA_MAX_QPS; the larger of both sides'
                           values is used (2, and at least one per port)
     KVX_IB_MAX_MSG        desc.rdma.max_msg, 4096..1 GiB: bytes of one RDMA
                           WRITE; runs are split at multiples of it (1048576)
     KVX_IB_SIGNAL_EVERY   desc.rdma.signal_every, 1..4096: every Nth WRITE on
                           a queue pair is signaled, and its last of a room (16)
     KVX_IB_SEND_DEPTH     desc.rdma.send_depth, 16..1048576: WRITEs outstanding
                           per queue pair (1024, raised to 2 x SIGNAL_EVERY, at
                           most max_qp_wr); more wait in a software queue
     KVX_IB_RECV_DEPTH     desc.rdma.recv_depth, 16..1048576: receives posted
                           per decode queue pair for the immediates (512)
     KVX_IB_TIMEOUT        desc.rdma.timeout, 0..31, KVX_ZERO: local ACK
                           timeout exponent, 4.096 us * 2^N (14; 0 = none)
     KVX_IB_RETRY_CNT      desc.rdma.retry_cnt, 0..7, KVX_ZERO: retries (7)
     KVX_IB_RNR_RETRY      desc.rdma.rnr_retry, 0..7, KVX_ZERO: receiver-not-
                           ready retries (7 = infinite)
     KVX_IB_SL             desc.rdma.sl, 0..15: service level (0)
     KVX_IB_TRAFFIC_CLASS  desc.rdma.traffic_class, 0..255: GRH traffic class,
                           e.g. 106 for DSCP 26 (0)
     KVX_IB_RELAXED_ORDERING  desc.rdma.relaxed_ordering, 0..1, KVX_ZERO: 1
                           registers with IBV_ACCESS_RELAXED_ORDERING through
                           ibv_reg_mr_iova2 when libibverbs has it (1)
     KVX_IB_CONNECT_TIMEOUT desc.rdma.connect_timeout_s, 0.001..1e6: seconds
                           a side of the queue-pair exchange waits for the
                           other's next message, and a prefill room for it (10)
     KVX_IB_FENCE_TIMEOUT  desc.rdma.fence_timeout_s, 0.001..1e6: seconds
                           kvx_receiver_destroy of an unfinished room waits
                           for the prefill to confirm it stopped writing (2)
     And kvx_boot.h's: KVX_BOOTSTRAP_HOST, KVX_BOOTSTRAP_PORT,
     KVX_HEARTBEAT_INTERVAL, KVX_HEARTBEAT_MAX_FAILURE ...

   THREAD SAFETY
     As kvx.h. Each engine owns one completion/event thread (completion
     channels, async events, exchange timeouts) and one exchange worker thread
     (the messages, in order), besides kvx_boot's; kvx_engine_destroy joins
     them all. Posting happens on the caller's thread in kvx_sender_send and on
     the completion thread. kvx_sender_destroy waits until the NIC finished
     reading the room's pages (kvx_receiver_destroy: DATA PATH, last sentence).

   LAYER-WISE SEND (kvx.h kvx_sender_send_layers; backend layerwise = 1)
     Each part of a chunk (its layers [layer_begin, layer_end)) is planned on
     its own as it is handed over: kvx_plan_pages with the plan's layer
     filter against the decode rank's announced layout (or its staging area),
     so only that part's source buffers get spans, cut over the queue pairs
     and posted at once, behind the earlier parts' WRITEs on the same queue
     pairs. Nothing else changes: the WRITE WITH IMMEDIATE on every queue
     pair, the aux (and state) rows and the status Success go only with the
     room's last part (the last chunk's last layer), and the decode side
     succeeds exactly as for whole chunks (every byte of every layer of
     every chunk, then aux). The wire is the same (no new message, no
     version change); a decode side cannot tell layer-wise from all-layer
     sends. A sender that fails the room between parts (a refused range, a
     process killed) fails the decode room through status Failed or the
     lost control connection, never Success. Stats: `parts` counts plans
     (one per kvx_sender_send, one per kvx_sender_send_layers call),
     `chunks` only a chunk's last part.

   PARALLEL LAYOUTS (kvx.h's section; the plans are kvx_plan_pages against
   the decode rank's shape from its CONNECT)
     A strided span with a contiguous destination (prefill TP < decode TP:
     the decode rank's heads out of the prefill's rows) goes as WRITEs whose
     scatter-gather lists gather its rows, at most the device's max_sge
     (KVX__RDMA_MAX_SGE, 32) entries each, chained beyond. A prefill room
     with several decode ranks (kvx_boot on_room once per rank, at most
     KVX_RDMA_MAX_LEGS 64) has one leg per destination, each with its own
     connection and accounting; the room succeeds when every leg's WRITEs
     completed (the status carries one byte count: legs that moved
     different counts fail the room). A strided destination (prefill TP >
     decode TP: our heads at a head offset inside the decode rank's rows)
     goes to the decode rank's staging area (below) as whole pages, and the
     decode rank scatters them (kvx_plan_pages, kvx_span_copy) on the thread
     that completes the room, before Success; without a staging area such a
     room fails with a sentence. MLA dummy ranks (kvx_mla_dummy) send only
     the immediates and Success with 0 bytes; aux rows go only where
     kvx_layout_overlap says sends_aux. A decode room succeeds when the
     prefill ranks that target it (kvx_boot RANK MAPPING) all reported
     Success with their immediates and their bytes add up to its pages
     times its page bytes plus its aux row.

   HYBRID STATE (kvx.h's section)
     Both sides register their state buffers like the KV buffers (host or
     GPU memory) and the decode side announces them in CONNECT. The decode
     rank's state indices arrive in its room frame (kvx_boot protocol v4,
     on_room); with the room's last chunk the prefill checks that its count
     (kvx_room_state) equals that destination's, else the room fails with
     "prefill sent 2 state indices, decode ADDR asked for 3", which the
     decode room receives in the status. The rows are planned with
     kvx_plan_state (own layout and indices -> the announced state buffers
     and that destination's indices; consecutive runs as one span) and go
     with the aux rows, on queue pair 0 after the room's KV WRITEs, only
     from the contributor that writes the aux rows (sends_aux of
     kvx_layout_overlap; never an MLA dummy), so they are in place before
     the immediates and status that let the decode room succeed; the decode
     side's byte count includes n * kvx_layout_state_row_bytes. State never
     goes through the staging area (it needs equal heads, or MLA). Shapes
     kvx_layout_overlap refuses (state count, type or item_len, different
     layers, non-MLA ranks with different heads) are refused by kvx_boot's
     hello check, and again at CONNECT.

   STAGING AREA (decode)
     Made for a prefill rank whose shape (kvx_boot_peer.layout) holds fewer
     heads than this rank, with heads in common, when every KV buffer here
     is host memory: the pool's page count times that rank's page bytes, in
     its shape (buffer after buffer), allocated with the desc allocator and
     registered LOCAL_WRITE | REMOTE_WRITE on every port at the first
     connection with that prefill engine, kept until engine destroy. Over
     the prefill TP / decode TP contributors it adds up to this rank's pool
     size. Page p of a room lands at page p of the area, so rooms never
     share staged bytes. The prefill checks the announced length (exactly
     the decode pool's pages times its own page bytes) and region counts
     before use, and plans against it like a pool.

   HOW IT CONNECTS
     Both sides register every KV, aux and state buffer on every port they use
     (decode: LOCAL_WRITE | REMOTE_WRITE, prefill: LOCAL_WRITE; relaxed
     ordering when available), split at the device's max_mr_size. Each kvx_boot
     hello carries an endpoint blob (below), the rest goes as kvx_boot
     transport messages (kvx_boot_peer_send / hooks.on_message) on the control
     connection: once the decode side's control connection to a prefill rank is
     up (hooks.on_connect) it creates its queue pairs, posts receives and sends
     CONNECT (its queue pairs, ports and regions: below); the prefill creates
     its queue pairs, brings them to RTS and answers ACCEPT; the decode side
     brings its own to RTS and answers READY, after which the prefill writes.
     Path MTU is the smaller port's. A decode receiver holds its room frame
     while a connection it needs is being made; a prefill room whose
     destination arrives without a connection waits (KVX_IB_CONNECT_TIMEOUT).
     Broken connections are repaired while the control connection lives: the
     decode side redials when its side broke (its next receiver, or a Failed
     status with KVX_ERR_TRANSPORT); when only the prefill's side broke while
     idle, the next room asks the decode side to reconnect with a status frame
     in state Transferring carrying KVX_ERR_TRANSPORT and, in its byte field,
     the decode side's first queue pair number (so a late request cannot retire
     a newer connection), and waits. A prefill retires its old connection with
     a decode engine once a new CONNECT from it checks out.

   WHAT A PEER MAY WRITE
     The decode side registers only its KV pool, aux buffers, state buffers
     and staging areas for remote write, so a peer's rkeys reach nothing else; the prefill hands out no
     rkeys (local access only). RDMA cannot restrict a WRITE to one room's
     pages at the NIC without a memory region or window per room (type-2 memory
     windows cost a bind per buffer region per room; out of scope), so the
     prefill plans every WRITE with kvx_plan_pages against the room frame's
     destination pages, checked against the pool size the decode side
     advertised, and the decode side checks on completion that the bytes placed
     equal pages * page bytes + aux row bytes + state indices * state row
     bytes of the room.

   FAILURES
     As kvx.h's FAILURES: the prefill sends status Failed, the decode side an
     abort; failures the peer reported and its loss send nothing. A prefill
     room whose WRITEs all completed is not failed by its connection dying
     afterwards; a decode room whose prefill sent Success counts its bytes as
     placed. A work completion error (ibv_wc_status_str), a refused post, an
     async event on a queue pair (IBV_EVENT_QP_FATAL, QP_REQ_ERR,
     QP_ACCESS_ERR), a CQ, a port (PORT_ERR) or the device (DEVICE_FATAL), and
     the loss of the control connection fail every room that depended on that
     connection, with the verbs text and the peer's address; the prefill passes
     its sentence on in the status frame. A completion that only says "flushed"
     or "retry counter exceeded" waits up to 100 ms for an async event or
     another queue pair's completion that names the cause, and says when the
     port is down. No room succeeds without its status, immediates and bytes;
     when in doubt a room fails.

   ENDPOINT BLOB (in the kvx_boot hello; version 4; little-endian)
     0 u8[8] magic "kvx-rdma"   8 u16 version (4; version 3's CONNECT had
     no state buffers, version 2's no layout shape)   10 u16 role (1/2)
     12 u32 flags (0)   16 u64 instance (random, nonzero)
     24 u16 reserved (0; version 1 had the exchange's TCP port here)
     26 u16 qps   28 u16 ndev (1..KVX_RDMA_MAX_DEVS)   30 u16 reserved (0)
     32 ndev port entries of 48 bytes:
        0 u8[16] gid   16 u16 lid   18 u8 port   19 u8 link_layer (1 IB,
        2 Ethernet)   20 u8 active_mtu (enum ibv_mtu 1..5)   21 u8 gid_index
        22 u16 reserved   24 char name[24] (NUL-terminated)

   QUEUE-PAIR EXCHANGE (kvx_boot transport messages on the control
   connection; little-endian; at most KVX_BOOT_MAX_MESSAGE, 8 MiB)
     Each message: u16 type, u16 reserved (0), u32 seq (the decode side's
     number for this attempt; every answer carries the seq it answers),
     then the body:
     1 CONNECT (decode -> prefill):
        0 u64 from (decode instance)   8 u64 to (prefill instance)
        16 u64 layout fingerprint   24 u16 nqp   26 u16 ndev   28 u32 nbuf
        (1..KVX_MAX_BUFFERS)   32 u32 naux (0..KVX_MAX_AUX)   36 u32 nstate
        (state buffers, 0..KVX_MAX_STATE; version 3: reserved 0)
        40 nqp entries of 12 bytes (u32 qpn,
        u32 psn, u16 port entry index, u16 reserved), ndev port entries (as
        above), then per port entry: u64 region_bytes, and for each of the
        nbuf KV buffers, then the naux aux buffers, then the nstate state
        buffers: u64 base, u64 length,
        u32 nregions (= ceil(length / region_bytes)), u32 rkey[nregions];
        then the decode rank's layout shape (kvx.h PARALLEL LAYOUTS), which
        the prefill plans against: u32 page_size, u32 num_kv_heads, u32
        dtype_size, u32 head_begin, u32 layer_begin, u32 mla (0/1), u32
        state_type (KVX_STATE_*, 0..3; 0 when nstate is 0), u32 reserved (0),
        u64 item_len of each KV buffer, then each aux buffer, then each
        state buffer (each >= 1; every buffer at least one item long); the
        prefill refuses it unless kvx_layout_overlap of its own layout and
        this shape is KVX_OK (a rank with nothing in common connects and
        moves nothing); then u64 stage_len (0: no staging area), and when
        nonzero per port entry: u64 base, u32 nregions (= ceil(stage_len /
        that port's region_bytes)), u32 rkey[nregions]
     2 ACCEPT (prefill -> decode): 0 u64 from, 8 u64 to, 16 u16 nqp,
        18 u16 ndev, 20 u32 reserved, nqp queue pair entries, ndev port entries
     3 READY (decode -> prefill): 0 u64 from, 8 u64 to
     4 REJECT (either way): 0 u64 from, 8 u64 to, 16 i32 result, 20 u32 rl
        (<= 1024), 24 reason
     Queue pair i of the decode side talks to queue pair i of the prefill.
     A CONNECT larger than KVX_BOOT_MAX_MESSAGE (very many regions: a device
     with a small max_mr_size) fails the connection with a sentence.

   WHO MAY TAKE PART IN THE EXCHANGE
     Only a peer whose kvx_boot control connection is up: its messages arrive
     on that connection after the hellos (with a key, KVX_AUTH_KEY /
     KVX_AUTH_KEY_FILE / desc.auth_key of kvx.h: after both sides proved it,
     kvx_boot.h SECURITY), and a message's `from` must be the rdma instance of
     that connection's endpoint and its `to` this engine, else it is refused (a
     REJECT with the reason, counted in cm_refused, nothing about this engine
     sent). So is a malformed message, one in the wrong direction, and an
     ACCEPT or READY that answers no exchange in progress (wrong seq, or none).
     The key does not protect the bytes after the handshake (no encryption, no
     per-message MAC: an attacker on the path can alter them), nor the RDMA
     traffic itself.

   GPU MEMORY
     KV buffers with mem == KVX_MEM_CUDA are registered through dma-buf
     (ibv_reg_dmabuf_mr) with the file descriptor desc.mem.dmabuf_fd exports
     (kvx_cuda_mem_ops fills it: cuMemGetHandleForAddressRange); without one
     engine creation fails with a sentence saying so. State buffers
     (HYBRID STATE) with mem == KVX_MEM_CUDA take the same path ("state
     buffer 0 is GPU memory ...": the same refusal).

   LICENSE: MIT, see the end of this file.
*/
#ifndef KVX_RDMA_H_INCLUDED
#define KVX_RDMA_H_INCLUDED

#include "kvx_boot.h"

#if !defined(KVX_VERSION_MAJOR) || KVX_VERSION_MAJOR != 0
#error "kvx_rdma.h needs kvx.h major version 0"
#endif

#ifndef KVX_RDMA_MAX_DEVS
#define KVX_RDMA_MAX_DEVS 16
#endif
#ifndef KVX_RDMA_MAX_QPS
#define KVX_RDMA_MAX_QPS 64
#endif
#define KVX_RDMA_CM_MAX KVX_BOOT_MAX_MESSAGE /* bytes of one exchange message */
#define KVX_RDMA_ENDPOINT_VERSION 4
#define KVX_RDMA_HELLO_FIXED 32u
#define KVX_RDMA_DEV_ENTRY 48u
#define KVX_RDMA_CM_HEADER 8u

#ifdef __cplusplus
extern "C" {
#endif

/* The rdma transport's backend table (without KVX_WITH_RDMA a stub whose
   engine_init fails with KVX_ERR_NOT_COMPILED). Never NULL; thread-safe. */
KVX_API const kvx_backend *kvx_rdma_backend(void);
/* Makes "rdma" known to desc.transport. Thread-safe, idempotent. */
KVX_API kvx_result kvx_rdma_register(void);
/* 1 when this build has the transport (KVX_WITH_RDMA), else 0. */
KVX_API int kvx_rdma_compiled(void);

/* Counters of one rdma engine (monotonic; the work requests and posts are
   the prefill's, the immediates received the decode's). */
typedef struct kvx_rdma_stats {
    uint64_t chunks;        /* chunks planned (a layer-wise chunk at its last part) */
    uint64_t spans;         /* plan spans (coalesced page runs x buffers, aux rows) */
    uint64_t wrs;           /* RDMA WRITE work requests posted (immediates included) */
    uint64_t imm_wrs;       /* of which WRITE WITH IMMEDIATE */
    uint64_t zero_len_wrs;  /* of which zero-length (a queue pair with nothing left, fences) */
    uint64_t posts;         /* ibv_post_send calls */
    uint64_t signaled;      /* signaled work requests */
    uint64_t bytes;         /* bytes posted */
    uint64_t completions;   /* work completions polled (send and receive) */
    uint64_t imm_received;  /* decode: immediates received */
    uint64_t pairs;         /* peer connections (queue-pair exchanges) completed */
    uint64_t errors;        /* connections failed */
    uint64_t cm_refused;    /* exchange messages refused (malformed, wrong direction or
                               instance, answering no exchange in progress) */
    uint64_t parts;         /* plans submitted: one per chunk sent with kvx_sender_send,
                               one per kvx_sender_send_layers call (LAYER-WISE SEND) */
} kvx_rdma_stats;
/* Copies the counters of an rdma engine. KVX_ERR_INVALID_ARGUMENT when e
   or out is NULL or e is not an rdma engine, KVX_ERR_NOT_COMPILED without
   KVX_WITH_RDMA. Thread-safe, does not block (atomic loads). */
KVX_API kvx_result kvx_rdma_stats_get(const kvx_engine *e, kvx_rdma_stats *out);

/* >>wire format (pure: no I/O, no verbs; for the transport, tools, fuzzers) */

/* One NIC port as the endpoint blob and the exchange describe it. */
typedef struct kvx_rdma_port_info {
    uint8_t gid[16];
    uint16_t lid;
    uint8_t port, link_layer, mtu, gid_index; /* link_layer 1 IB, 2 Ethernet; mtu enum ibv_mtu */
    char name[24];                            /* NUL-terminated */
} kvx_rdma_port_info;

typedef struct kvx_rdma_hello {
    uint16_t version, role;
    uint32_t flags;                           /* 0 */
    uint64_t instance;
    uint16_t qps, ndev;
    kvx_rdma_port_info dev[KVX_RDMA_MAX_DEVS];
} kvx_rdma_hello;

/* Encodes h into out (at least KVX_RDMA_HELLO_FIXED + 48 * ndev bytes);
   returns the length, 0 when h or out is NULL, h breaks a limit or out is
   too small. Pure and reentrant, like every function of this section. */
KVX_API size_t kvx_rdma_hello_encode(const kvx_rdma_hello *h, uint8_t *out, size_t cap);
/* Parses and checks an endpoint blob: KVX_OK, KVX_ERR_PROTOCOL with a
   sentence in why when malformed, KVX_ERR_INVALID_ARGUMENT for NULL h. */
KVX_API kvx_result kvx_rdma_hello_parse(const void *buf, size_t len, kvx_rdma_hello *out,
                                        char *why, size_t why_len);

typedef enum kvx_rdma_cm_type {
    KVX_RDMA_CM_CONNECT = 1,
    KVX_RDMA_CM_ACCEPT = 2,
    KVX_RDMA_CM_READY = 3,
    KVX_RDMA_CM_REJECT = 4
} kvx_rdma_cm_type;

typedef struct kvx_rdma_qp_info {
    uint32_t qpn, psn; /* 24-bit */
    uint16_t dev;      /* index into the message's port entries */
} kvx_rdma_qp_info;

/* A parsed exchange message. Pointers point into the parsed buffer. */
typedef struct kvx_rdma_cm_msg {
    kvx_rdma_cm_type type;
    uint32_t seq;               /* the exchange attempt it belongs to */
    uint64_t from, to;
    uint64_t fingerprint;       /* CONNECT */
    uint16_t nqp, ndev;         /* CONNECT, ACCEPT */
    kvx_rdma_qp_info qp[KVX_RDMA_MAX_QPS];
    kvx_rdma_port_info dev[KVX_RDMA_MAX_DEVS];
    uint32_t nbuf, naux, nstate; /* CONNECT (nstate: state buffers, HYBRID STATE) */
    const uint8_t *mr;          /* CONNECT: the region tables, validated */
    uint32_t mr_len;
    /* CONNECT: the decode rank's layout shape; item_len i (KV buffers,
       then aux, then state) with kvx_rdma_cm_item */
    uint32_t page_size, num_kv_heads, dtype_size, head_begin, layer_begin, mla, state_type;
    const uint8_t *items;
    uint64_t stage_len;         /* CONNECT: bytes of the staging area (0 = none) */
    const uint8_t *stage;       /* its table per port entry: kvx_rdma_cm_stage */
    int32_t result;             /* REJECT */
    const char *reason;         /* REJECT; not NUL-terminated */
    uint32_t reason_len;
} kvx_rdma_cm_msg;

/* Parses one whole message (one kvx_boot transport message) buf[0..len).
   KVX_OK: valid; KVX_ERR_PROTOCOL with a sentence: a bad type, reserved
   field, length, count beyond the limits, region counts that do not
   match; KVX_ERR_INVALID_ARGUMENT for NULL out. */
KVX_API kvx_result kvx_rdma_cm_parse(const void *buf, size_t len, kvx_rdma_cm_msg *out,
                                     char *why, size_t why_len);
/* Region table of port entry `dev`, buffer `buf` (KV buffers first, then
   aux, then state) of a parsed CONNECT: base, length, region size and region count;
   rkey i with kvx_rdma_cm_rkey. 0 when out of range. */
KVX_API int kvx_rdma_cm_region(const kvx_rdma_cm_msg *m, uint32_t dev, uint32_t buf,
                               uint64_t *base, uint64_t *length, uint64_t *region_bytes,
                               uint32_t *nregions, const uint8_t **rkeys_le);
KVX_API uint32_t kvx_rdma_cm_rkey(const uint8_t *rkeys_le, uint32_t i);
/* item_len of buffer i (KV buffers first, then aux, then state) of a parsed CONNECT's
   shape; 0 when out of range. */
KVX_API uint64_t kvx_rdma_cm_item(const kvx_rdma_cm_msg *m, uint32_t i);
/* The staging area of a parsed CONNECT on port entry `dev`: base, region
   count (regions of that port's region size) and rkeys (kvx_rdma_cm_rkey);
   0 when there is none or dev is out of range. */
KVX_API int kvx_rdma_cm_stage(const kvx_rdma_cm_msg *m, uint32_t dev, uint64_t *base,
                              uint32_t *nregions, const uint8_t **rkeys_le);

#ifdef __cplusplus
}
#endif
#endif /* KVX_RDMA_H_INCLUDED */

/* ======================================================================== */
/*                             IMPLEMENTATION                               */
/* ======================================================================== */
#if defined(KVX_IMPLEMENTATION) && !defined(KVX_RDMA_IMPL_INCLUDED)
#define KVX_RDMA_IMPL_INCLUDED

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>

#ifdef __cplusplus
extern "C" {
#endif

/* >>rdma: wire format ------------------------------------------------------ */

static const char kvx__rdma_magic[8] = {'k', 'v', 'x', '-', 'r', 'd', 'm', 'a'};

#define KVX__RDMA_QP_ENTRY 12u
#define KVX__RDMA_MAX_REASON 1024u

static void kvx__rdma_port_write(uint8_t *p, const kvx_rdma_port_info *d) {
    size_t nl = strnlen(d->name, sizeof d->name - 1);
    memset(p, 0, KVX_RDMA_DEV_ENTRY);
    memcpy(p, d->gid, 16);
    kvx__le_w16(p + 16, d->lid);
    p[18] = d->port;
    p[19] = d->link_layer;
    p[20] = d->mtu;
    p[21] = d->gid_index;
    memcpy(p + 24, d->name, nl);
}

static int kvx__rdma_port_read(const uint8_t *p, kvx_rdma_port_info *d, char *why, size_t wl,
                               const char *what, unsigned i) {
    memcpy(d->gid, p, 16);
    d->lid = kvx__le_r16(p + 16);
    d->port = p[18];
    d->link_layer = p[19];
    d->mtu = p[20];
    d->gid_index = p[21];
    if (!memchr(p + 24, 0, 24)) {
        kvx__set_why(why, wl, "%s port entry %u: name is not NUL-terminated", what, i);
        return -1;
    }
    memcpy(d->name, p + 24, 24);
    if (!d->port || (d->link_layer != 1 && d->link_layer != 2) || d->mtu < 1 || d->mtu > 5 ||
        kvx__le_r16(p + 22)) {
        kvx__set_why(why, wl, "%s port entry %u: port %u, link layer %u, mtu %u (need port >= 1, "
                     "link layer 1 or 2, mtu 1..5, reserved 0)", what, i, d->port, d->link_layer,
                     d->mtu);
        return -1;
    }
    return 0;
}

KVX_API size_t kvx_rdma_hello_encode(const kvx_rdma_hello *h, uint8_t *out, size_t cap) {
    size_t need;
    unsigned i;
    if (!h || !out || h->ndev < 1 || h->ndev > KVX_RDMA_MAX_DEVS) return 0;
    need = KVX_RDMA_HELLO_FIXED + (size_t)KVX_RDMA_DEV_ENTRY * h->ndev;
    if (cap < need) return 0;
    memset(out, 0, KVX_RDMA_HELLO_FIXED);
    memcpy(out, kvx__rdma_magic, 8);
    kvx__le_w16(out + 8, KVX_RDMA_ENDPOINT_VERSION);
    kvx__le_w16(out + 10, h->role);
    kvx__le_w32(out + 12, h->flags);
    kvx__le_w64(out + 16, h->instance);
    kvx__le_w16(out + 26, h->qps);
    kvx__le_w16(out + 28, h->ndev);
    for (i = 0; i < h->ndev; i++)
        kvx__rdma_port_write(out + KVX_RDMA_HELLO_FIXED + KVX_RDMA_DEV_ENTRY * i, &h->dev[i]);
    return need;
}

KVX_API kvx_result kvx_rdma_hello_parse(const void *buf, size_t len, kvx_rdma_hello *h,
                                        char *why, size_t wl) {
    const uint8_t *p = (const uint8_t *)buf;
    unsigned i;
    if (!h || (!p && len)) return KVX_ERR_INVALID_ARGUMENT;
    memset(h, 0, sizeof *h);
    if (len < KVX_RDMA_HELLO_FIXED || memcmp(p, kvx__rdma_magic, 8)) {
        kvx__set_why(why, wl, "the peer's endpoint (%zu bytes) is not an rdma endpoint: is the "
                     "peer using transport \"rdma\"?", len);
        return KVX_ERR_PROTOCOL;
    }
    h->version = kvx__le_r16(p + 8);
    h->role = kvx__le_r16(p + 10);
    h->flags = kvx__le_r32(p + 12);
    h->instance = kvx__le_r64(p + 16);
    h->qps = kvx__le_r16(p + 26);
    h->ndev = kvx__le_r16(p + 28);
    if (h->version != KVX_RDMA_ENDPOINT_VERSION) {
        kvx__set_why(why, wl, "rdma endpoint version %u, this build speaks %d", h->version,
                     KVX_RDMA_ENDPOINT_VERSION);
        return KVX_ERR_PROTOCOL;
    }
    if ((h->role != KVX_ROLE_PREFILL && h->role != KVX_ROLE_DECODE) ||
        h->flags || !h->instance || h->ndev < 1 || h->ndev > KVX_RDMA_MAX_DEVS || h->qps < 1 ||
        h->qps > KVX_RDMA_MAX_QPS || kvx__le_r16(p + 24) || kvx__le_r16(p + 30)) {
        kvx__set_why(why, wl, "rdma endpoint: role %u, instance %016llx, %u ports, %u queue pairs "
                     "(need role 1 or 2, nonzero instance, 1..%d ports, 1..%d queue pairs, flags "
                     "and reserved fields 0)", h->role, (unsigned long long)h->instance, h->ndev,
                     h->qps, KVX_RDMA_MAX_DEVS, KVX_RDMA_MAX_QPS);
        return KVX_ERR_PROTOCOL;
    }
    if (len != KVX_RDMA_HELLO_FIXED + (size_t)KVX_RDMA_DEV_ENTRY * h->ndev) {
        kvx__set_why(why, wl, "rdma endpoint is %zu bytes, %u ports need %u", len, h->ndev,
                     KVX_RDMA_HELLO_FIXED + KVX_RDMA_DEV_ENTRY * h->ndev);
        return KVX_ERR_PROTOCOL;
    }
    for (i = 0; i < h->ndev; i++)
        if (kvx__rdma_port_read(p + KVX_RDMA_HELLO_FIXED + KVX_RDMA_DEV_ENTRY * i, &h->dev[i], why,
                                wl, "rdma endpoint", i))
            return KVX_ERR_PROTOCOL;
    return KVX_OK;
}

/* Walks the region tables of a CONNECT body; returns the bytes they take,
   0 when malformed (why set). */
static size_t kvx__rdma_mr_walk(const uint8_t *p, size_t len, uint32_t ndev, uint32_t nbuf,
                                char *why, size_t wl) {
    size_t off = 0;
    uint32_t d, i;
    for (d = 0; d < ndev; d++) {
        uint64_t rb;
        if (len - off < 8) goto short_;
        rb = kvx__le_r64(p + off);
        off += 8;
        if (rb < 4096) {
            kvx__set_why(why, wl, "CONNECT port entry %u: region size %llu is below 4096", d,
                         (unsigned long long)rb);
            return 0;
        }
        for (i = 0; i < nbuf; i++) {
            uint64_t length, want;
            uint32_t nr;
            if (len - off < 20) goto short_;
            length = kvx__le_r64(p + off + 8);
            nr = kvx__le_r32(p + off + 16);
            want = length / rb + (length % rb ? 1 : 0);
            if (!length || want != nr || kvx__le_r64(p + off) + length < length) {
                kvx__set_why(why, wl, "CONNECT port entry %u buffer %u: length %llu in %u regions "
                             "of %llu bytes (need a nonzero length, ceil(length / region) "
                             "regions, no wrap-around)", d, i, (unsigned long long)length, nr,
                             (unsigned long long)rb);
                return 0;
            }
            off += 20;
            if ((len - off) / 4 < nr) goto short_;
            off += (size_t)nr * 4;
        }
    }
    return off ? off : 1;
short_:
    kvx__set_why(why, wl, "CONNECT region tables end early (%zu bytes)", len);
    return 0;
}

KVX_API kvx_result kvx_rdma_cm_parse(const void *buf, size_t len, kvx_rdma_cm_msg *m,
                                     char *why, size_t wl) {
    const uint8_t *p = (const uint8_t *)buf, *b;
    uint32_t bl, i, fixed;
    uint16_t type;
    if (!m || (!p && len)) return KVX_ERR_INVALID_ARGUMENT;
    memset(m, 0, sizeof *m);
    if (len < KVX_RDMA_CM_HEADER || len > KVX_RDMA_CM_MAX) {
        kvx__set_why(why, wl, "an exchange message of %zu bytes (%u..%u)", len, KVX_RDMA_CM_HEADER,
                     (unsigned)KVX_RDMA_CM_MAX);
        return KVX_ERR_PROTOCOL;
    }
    type = kvx__le_r16(p);
    if (type < KVX_RDMA_CM_CONNECT || type > KVX_RDMA_CM_REJECT || kvx__le_r16(p + 2)) {
        kvx__set_why(why, wl, "exchange message of type %u, reserved %u (types 1..4, reserved 0)",
                     type, kvx__le_r16(p + 2));
        return KVX_ERR_PROTOCOL;
    }
    bl = (uint32_t)(len - KVX_RDMA_CM_HEADER);
    b = p + KVX_RDMA_CM_HEADER;
    m->type = (kvx_rdma_cm_type)type;
    m->seq = kvx__le_r32(p + 4);
    if (bl < 16) goto bad_len;
    m->from = kvx__le_r64(b);
    m->to = kvx__le_r64(b + 8);
    if (type == KVX_RDMA_CM_READY) {
        if (bl != 16) goto bad_len;
    } else if (type == KVX_RDMA_CM_REJECT) {
        if (bl < 24) goto bad_len;
        m->result = (int32_t)kvx__le_r32(b + 16);
        m->reason_len = kvx__le_r32(b + 20);
        if (m->reason_len > KVX__RDMA_MAX_REASON || bl != 24 + m->reason_len) goto bad_len;
        m->reason = (const char *)b + 24;
    } else {
        size_t off;
        if (type == KVX_RDMA_CM_CONNECT) {
            if (bl < 40) goto bad_len;
            m->fingerprint = kvx__le_r64(b + 16);
            m->nqp = kvx__le_r16(b + 24);
            m->ndev = kvx__le_r16(b + 26);
            m->nbuf = kvx__le_r32(b + 28);
            m->naux = kvx__le_r32(b + 32);
            m->nstate = kvx__le_r32(b + 36);
            fixed = 40;
            if (m->nbuf < 1 || m->nbuf > KVX_MAX_BUFFERS || m->naux > KVX_MAX_AUX ||
                m->nstate > KVX_MAX_STATE) {
                kvx__set_why(why, wl, "CONNECT with %u KV buffers, %u aux buffers and %u state "
                             "buffers (1..%d, 0..%d, 0..%d)", m->nbuf, m->naux, m->nstate,
                             KVX_MAX_BUFFERS, KVX_MAX_AUX, KVX_MAX_STATE);
                goto refused;
            }
        } else {
            if (bl < 24) goto bad_len;
            m->nqp = kvx__le_r16(b + 16);
            m->ndev = kvx__le_r16(b + 18);
            if (kvx__le_r32(b + 20)) goto bad_fields;
            fixed = 24;
        }
        if (m->nqp < 1 || m->nqp > KVX_RDMA_MAX_QPS || m->ndev < 1 || m->ndev > KVX_RDMA_MAX_DEVS) {
            kvx__set_why(why, wl, "exchange message with %u queue pairs and %u ports (1..%d, 1..%d)",
                         m->nqp, m->ndev, KVX_RDMA_MAX_QPS, KVX_RDMA_MAX_DEVS);
            goto refused;
        }
        off = fixed + (size_t)m->nqp * KVX__RDMA_QP_ENTRY + (size_t)m->ndev * KVX_RDMA_DEV_ENTRY;
        if (bl < off) goto bad_len;
        for (i = 0; i < m->nqp; i++) {
            const uint8_t *q = b + fixed + KVX__RDMA_QP_ENTRY * i;
            m->qp[i].qpn = kvx__le_r32(q);
            m->qp[i].psn = kvx__le_r32(q + 4);
            m->qp[i].dev = kvx__le_r16(q + 8);
            if (m->qp[i].qpn > 0xFFFFFFu || !m->qp[i].qpn || m->qp[i].psn > 0xFFFFFFu ||
                m->qp[i].dev >= m->ndev || kvx__le_r16(q + 10)) {
                kvx__set_why(why, wl, "queue pair entry %u: qpn %u, psn %u, port entry %u (24-bit "
                             "nonzero qpn and psn, port entry < %u)", i, m->qp[i].qpn,
                             m->qp[i].psn, m->qp[i].dev, m->ndev);
                goto refused;
            }
        }
        for (i = 0; i < m->ndev; i++)
            if (kvx__rdma_port_read(b + fixed + KVX__RDMA_QP_ENTRY * m->nqp + KVX_RDMA_DEV_ENTRY * i,
                                    &m->dev[i], why, wl, "exchange message", i))
                goto refused;
        if (type == KVX_RDMA_CM_ACCEPT) {
            if (bl != off) goto bad_len;
        } else {
            uint32_t nall = m->nbuf + m->naux + m->nstate;
            size_t used = kvx__rdma_mr_walk(b + off, bl - off, m->ndev, nall, why, wl);
            const uint8_t *sh;
            if (!used) goto refused;
            m->mr = b + off;
            m->mr_len = (uint32_t)used;
            off += used;
            if (bl - off < 40 + 8 * (size_t)nall) goto bad_len;
            sh = b + off;
            m->page_size = kvx__le_r32(sh);
            m->num_kv_heads = kvx__le_r32(sh + 4);
            m->dtype_size = kvx__le_r32(sh + 8);
            m->head_begin = kvx__le_r32(sh + 12);
            m->layer_begin = kvx__le_r32(sh + 16);
            m->mla = kvx__le_r32(sh + 20);
            m->state_type = kvx__le_r32(sh + 24);
            m->items = sh + 32;
            if (!m->page_size || !m->num_kv_heads || !m->dtype_size || m->mla > 1 ||
                m->state_type > KVX_STATE_OTHER || (!m->nstate && m->state_type) ||
                kvx__le_r32(sh + 28)) {
                kvx__set_why(why, wl, "CONNECT layout shape: page_size %u, %u KV heads, dtype_size "
                             "%u, mla %u, state type %u for %u state buffers (need nonzero sizes, "
                             "mla 0 or 1, state type 0..3 and 0 without state, reserved 0)",
                             m->page_size, m->num_kv_heads, m->dtype_size, m->mla, m->state_type,
                             m->nstate);
                goto refused;
            }
            for (i = 0; i < nall; i++)
                if (!kvx__le_r64(m->items + 8u * i)) {
                    kvx__set_why(why, wl, "CONNECT layout shape: item_len of buffer %u is 0", i);
                    goto refused;
                }
            off += 32 + 8 * (size_t)nall;
            m->stage_len = kvx__le_r64(b + off);
            off += 8;
            m->stage = b + off;
            for (i = 0; m->stage_len && i < m->ndev; i++) {
                uint64_t rb = 0, nr;
                kvx_rdma_cm_region(m, i, 0, NULL, NULL, &rb, NULL, NULL);
                if (bl - off < 12) goto bad_len;
                nr = m->stage_len / rb + (m->stage_len % rb ? 1 : 0);
                if (kvx__le_r32(b + off + 8) != nr || kvx__le_r64(b + off) + m->stage_len < m->stage_len) {
                    kvx__set_why(why, wl, "CONNECT staging area on port entry %u: %u regions for %llu "
                                 "bytes (need ceil(bytes / region), no wrap-around)", i,
                                 kvx__le_r32(b + off + 8), (unsigned long long)m->stage_len);
                    goto refused;
                }
                off += 12;
                if ((bl - off) / 4 < nr) goto bad_len;
                off += 4 * (size_t)nr;
            }
            if (off != bl) goto bad_len;
            if (!m->stage_len) m->stage = NULL;
        }
    }
    return KVX_OK;
bad_len:
    kvx__set_why(why, wl, "exchange message type %u: body of %u bytes does not match its counts",
                 type, bl);
    goto refused;
bad_fields:
    kvx__set_why(why, wl, "exchange message type %u: reserved fields are not zero", type);
refused:
    memset(m, 0, sizeof *m); /* a refused message leaves nothing half-read */
    return KVX_ERR_PROTOCOL;
}

KVX_API int kvx_rdma_cm_region(const kvx_rdma_cm_msg *m, uint32_t dev, uint32_t buf,
                               uint64_t *base, uint64_t *length, uint64_t *region_bytes,
                               uint32_t *nregions, const uint8_t **rkeys_le) {
    const uint8_t *p;
    uint32_t d, i, n;
    if (!m || !m->mr || dev >= m->ndev || buf >= m->nbuf + m->naux + m->nstate) return 0;
    p = m->mr;
    n = m->nbuf + m->naux + m->nstate;
    for (d = 0; d <= dev; d++) {
        uint64_t rb = kvx__le_r64(p);
        p += 8;
        for (i = 0; i < n; i++) {
            uint32_t nr = kvx__le_r32(p + 16);
            if (d == dev && i == buf) {
                if (base) *base = kvx__le_r64(p);
                if (length) *length = kvx__le_r64(p + 8);
                if (region_bytes) *region_bytes = rb;
                if (nregions) *nregions = nr;
                if (rkeys_le) *rkeys_le = p + 20;
                return 1;
            }
            p += 20 + (size_t)nr * 4;
        }
    }
    return 0;
}

KVX_API uint32_t kvx_rdma_cm_rkey(const uint8_t *rkeys_le, uint32_t i) {
    return kvx__le_r32(rkeys_le + 4u * i);
}

KVX_API int kvx_rdma_cm_stage(const kvx_rdma_cm_msg *m, uint32_t dev, uint64_t *base,
                              uint32_t *nregions, const uint8_t **rkeys_le) {
    const uint8_t *p;
    uint32_t d;
    if (!m || !m->stage || !m->stage_len || dev >= m->ndev) return 0;
    for (p = m->stage, d = 0; d < dev; d++) p += 12 + 4 * (size_t)kvx__le_r32(p + 8);
    if (base) *base = kvx__le_r64(p);
    if (nregions) *nregions = kvx__le_r32(p + 8);
    if (rkeys_le) *rkeys_le = p + 12;
    return 1;
}

KVX_API uint64_t kvx_rdma_cm_item(const kvx_rdma_cm_msg *m, uint32_t i) {
    if (!m || !m->items || i >= m->nbuf + m->naux + m->nstate) return 0;
    return kvx__le_r64(m->items + 8u * i);
}

/* Starts a message in b: its header, then from and to. */
static KVX__UNUSED void kvx__rdma_cm_begin(kvx__buf *b, kvx_rdma_cm_type type, uint32_t seq,
                                           uint64_t from, uint64_t to) {
    b->len = 0;
    kvx__buf_put16(b, (uint16_t)type);
    kvx__buf_put16(b, 0);
    kvx__buf_put32(b, seq);
    kvx__buf_put64(b, from);
    kvx__buf_put64(b, to);
}
static KVX__UNUSED void kvx__rdma_put_port(kvx__buf *b, const kvx_rdma_port_info *d) {
    uint8_t t[KVX_RDMA_DEV_ENTRY];
    kvx__rdma_port_write(t, d);
    kvx__buf_put(b, t, sizeof t);
}
static KVX__UNUSED void kvx__rdma_put_qp(kvx__buf *b, const kvx_rdma_qp_info *q) {
    kvx__buf_put32(b, q->qpn);
    kvx__buf_put32(b, q->psn);
    kvx__buf_put16(b, q->dev);
    kvx__buf_put16(b, 0);
}
static KVX__UNUSED void kvx__rdma_cm_reject(kvx__buf *b, uint32_t seq, uint64_t from, uint64_t to,
                                            kvx_result res, const char *reason) {
    size_t rl = strlen(reason);
    if (rl > KVX__RDMA_MAX_REASON) rl = KVX__RDMA_MAX_REASON;
    kvx__rdma_cm_begin(b, KVX_RDMA_CM_REJECT, seq, from, to);
    kvx__buf_put32(b, (uint32_t)res);
    kvx__buf_put32(b, (uint32_t)rl);
    kvx__buf_put(b, reason, rl);
}

KVX_API kvx_result kvx_rdma_register(void) { return kvx_transport_register(kvx_rdma_backend()); }

#ifdef KVX_WITH_RDMA
/* ======================================================================== */
/*                         the transport (KVX_WITH_RDMA)                    */
/* ======================================================================== */
#ifdef __cplusplus
}
#endif
#include <infiniband/verbs.h>
#include <dlfcn.h>
#include <unistd.h>
#include <fcntl.h>
#include <poll.h>
#include <limits.h>
#include <sys/types.h>
#include <sys/resource.h>
#ifdef __cplusplus
extern "C" {
#endif

/* >>rdma: verbs loader ------------------------------------------------------ */

/* Every non-inline verb the transport calls, as KVX__LIB rows (kvx.h). The
   inline ibv_post_send, ibv_post_recv, ibv_poll_cq and ibv_req_notify_cq go
   through ctx->ops. KVX__IBV(X, ret, name, args, opt) is ibv_<name>. */
#define KVX__IBV(X, r, n, a, o) X(r, n, a, ibv_##n, "ibv_" #n, NULL, o)
#define KVX__RDMA_VERBS(X)                                                                     \
    KVX__IBV(X, struct ibv_device **, get_device_list, (int *), 0)                             \
    KVX__IBV(X, void, free_device_list, (struct ibv_device **), 0)                             \
    KVX__IBV(X, const char *, get_device_name, (struct ibv_device *), 0)                       \
    KVX__IBV(X, struct ibv_context *, open_device, (struct ibv_device *), 0)                   \
    KVX__IBV(X, int, close_device, (struct ibv_context *), 0)                                  \
    KVX__IBV(X, int, query_device, (struct ibv_context *, struct ibv_device_attr *), 0)        \
    KVX__IBV(X, int, query_port, (struct ibv_context *, uint8_t, struct _compat_ibv_port_attr *), \
             0)                                                                                \
    KVX__IBV(X, int, query_gid, (struct ibv_context *, uint8_t, int, union ibv_gid *), 0)      \
    X(int, query_gid_ex, (struct ibv_context *, uint32_t, uint32_t, struct ibv_gid_entry *,    \
                          uint32_t, size_t), _ibv_query_gid_ex, "_ibv_query_gid_ex", NULL, 1)  \
    KVX__IBV(X, struct ibv_pd *, alloc_pd, (struct ibv_context *), 0)                          \
    KVX__IBV(X, int, dealloc_pd, (struct ibv_pd *), 0)                                         \
    KVX__IBV(X, struct ibv_mr *, reg_mr, (struct ibv_pd *, void *, size_t, int), 0)            \
    KVX__IBV(X, struct ibv_mr *, reg_mr_iova2,                                                 \
             (struct ibv_pd *, void *, size_t, uint64_t, unsigned int), 1)                     \
    KVX__IBV(X, struct ibv_mr *, reg_dmabuf_mr,                                                \
             (struct ibv_pd *, uint64_t, size_t, uint64_t, int, int), 1)                       \
    KVX__IBV(X, int, dereg_mr, (struct ibv_mr *), 0)                                           \
    KVX__IBV(X, struct ibv_comp_channel *, create_comp_channel, (struct ibv_context *), 0)     \
    KVX__IBV(X, int, destroy_comp_channel, (struct ibv_comp_channel *), 0)                     \
    KVX__IBV(X, struct ibv_cq *, create_cq,                                                    \
             (struct ibv_context *, int, void *, struct ibv_comp_channel *, int), 0)           \
    KVX__IBV(X, int, destroy_cq, (struct ibv_cq *), 0)                                         \
    KVX__IBV(X, int, get_cq_event, (struct ibv_comp_channel *, struct ibv_cq **, void **), 0)  \
    KVX__IBV(X, void, ack_cq_events, (struct ibv_cq *, unsigned int), 0)                       \
    KVX__IBV(X, struct ibv_qp *, create_qp, (struct ibv_pd *, struct ibv_qp_init_attr *), 0)   \
    KVX__IBV(X, int, modify_qp, (struct ibv_qp *, struct ibv_qp_attr *, int), 0)               \
    KVX__IBV(X, int, destroy_qp, (struct ibv_qp *), 0)                                         \
    KVX__IBV(X, int, get_async_event, (struct ibv_context *, struct ibv_async_event *), 0)     \
    KVX__IBV(X, void, ack_async_event, (struct ibv_async_event *), 0)                          \
    KVX__IBV(X, const char *, wc_status_str, (enum ibv_wc_status), 1)                          \
    KVX__IBV(X, const char *, event_type_str, (enum ibv_event_type), 1)                        \
    KVX__IBV(X, const char *, port_state_str, (enum ibv_port_state), 1)

typedef struct kvx__rdma_verbs {
    void *lib;
    char path[256];
    KVX__RDMA_VERBS(KVX__LIB_FIELD)
} kvx__rdma_verbs;

#ifdef KVX_NO_RUNTIME_LINKING
static kvx_result kvx__rdma_load(kvx__rdma_verbs *kvx__fns, const char *path, char *why,
                                 size_t wl) {
    (void)why; (void)wl;
    memset(kvx__fns, 0, sizeof *kvx__fns);
    snprintf(kvx__fns->path, sizeof kvx__fns->path, "%s (linked)", path ? path : "libibverbs");
    KVX__RDMA_VERBS(KVX__LIB_LINK)
    return KVX_OK;
}
#else
static KVX__UNUSED void kvx__rdma_typecheck(void) {
    kvx__rdma_verbs *kvx__fns = NULL;
    KVX__RDMA_VERBS(KVX__LIB_CHECK)
}
#define KVX__RDMA_SYM(r, n, a, api, sym, alt, o) {sym, alt, offsetof(kvx__rdma_verbs, n), o},
static const kvx__lib_sym kvx__rdma_syms[] = {KVX__RDMA_VERBS(KVX__RDMA_SYM)};

static kvx_result kvx__rdma_load(kvx__rdma_verbs *v, const char *path, char *why, size_t wl) {
    const char *missing, *err;
    memset(v, 0, sizeof *v);
    snprintf(v->path, sizeof v->path, "%s", path);
    v->lib = kvx__lib_open(path, kvx__rdma_syms, sizeof kvx__rdma_syms / sizeof kvx__rdma_syms[0],
                           v, &missing, &err);
    if (v->lib) return KVX_OK;
    if (missing)
        kvx__set_why(why, wl, "%s has no symbol %s: is it libibverbs (rdma-core)? "
                     "(KVX_IBVERBS_LIBRARY / desc.rdma.library)", path, missing);
    else
        kvx__set_why(why, wl, "cannot load the verbs library %s: %s. Install libibverbs "
                     "(rdma-core: Debian/Ubuntu libibverbs1, RHEL libibverbs) or point "
                     "KVX_IBVERBS_LIBRARY at it", path, err);
    return KVX_ERR_NOT_FOUND;
}
#endif

/* ___ibv_query_port of verbs.h, with the exported symbol resolved by us. */
static int kvx__rdma_query_port(const kvx__rdma_verbs *v, struct ibv_context *c, uint8_t port,
                                struct ibv_port_attr *a) {
    memset(a, 0, sizeof *a);
    if (c->abi_compat == __VERBS_ABI_IS_EXTENDED) {
        struct verbs_context *vc =
            (struct verbs_context *)((uint8_t *)c - offsetof(struct verbs_context, context));
        if (vc->sz >= sizeof(*vc) - offsetof(struct verbs_context, query_port) && vc->query_port)
            return vc->query_port(c, port, a, sizeof *a);
    }
    return v->query_port(c, port, (struct _compat_ibv_port_attr *)a);
}

/* >>rdma: settings and state ----------------------------------------------- */

/* Scatter-gather entries one WRITE gathers at most (a strided span's rows;
   the device's max_sge bounds it further). */
#define KVX__RDMA_MAX_SGE 32

/* Buffers a layout registers: KV, aux, then state (the CONNECT order). */
#define KVX__RDMA_NBUF(l) ((l)->num_buffers + (l)->num_aux + ((l)->state ? (l)->num_state : 0u))

/* One registered buffer on one port: regions of region_bytes each. */
typedef struct kvx__rdma_mr {
    uint32_t n;
    struct ibv_mr **mr;
} kvx__rdma_mr;

/* One NIC port this engine uses (its own device context and PD). */
typedef struct kvx__rdma_dev {
    kvx_rdma_port_info info;
    struct ibv_context *ctx;
    struct ibv_pd *pd;
    struct ibv_comp_channel *ch;
    int is_global;
    uint64_t region_bytes;
    uint32_t max_qp_wr;
    uint32_t max_sge;   /* scatter-gather entries of one WRITE (prefill), <= KVX__RDMA_MAX_SGE */
    int max_cqe;
    kvx__rdma_mr *buf;  /* the KV buffers, then aux, then state (the CONNECT order) */
    int down;       /* atomic: PORT_ERR seen, no PORT_ACTIVE since */
    int fatal;      /* atomic: DEVICE_FATAL seen */
} kvx__rdma_dev;

/* A WRITE's bookkeeping until a signaled completion covers it. */
typedef struct kvx__rdma_slot {
    struct kvx__rdma_room *room;
    uint32_t len;
    uint32_t final; /* the room's last WRITE on this queue pair */
} kvx__rdma_slot;

typedef struct kvx__rdma_job kvx__rdma_job;

/* One queue pair's share of a plan (a contiguous range of its pieces),
   or with job == NULL a zero-length WRITE WITH IMMEDIATE (a fence). */
typedef struct kvx__rdma_work {
    struct kvx__rdma_work *next;
    struct kvx__rdma_room *room;
    kvx__rdma_job *job;
    size_t s, es;      /* cursor span / end span */
    uint64_t off, eoff; /* offset in span s / end offset in span es */
    int final;         /* the last WRITE is WITH IMMEDIATE and signaled */
    int owned;         /* allocated alone (fences, aux); else inside the job */
} kvx__rdma_work;

struct kvx__rdma_job {
    kvx_plan plan;
    int stage;         /* the plan's destination is the decode side's staging area */
    int refs;          /* works still posting, under pair->mu */
    kvx__rdma_work *w; /* one per queue pair (or 1 for aux), in the same allocation */
};

typedef struct kvx__rdma_qp {
    struct kvx__rdma_pair *pair;
    int idx;
    kvx__rdma_dev *dev;     /* local port */
    uint32_t rdev;          /* peer port entry */
    struct ibv_cq *cq;
    struct ibv_qp *qp;
    uint32_t psn;
    uint32_t depth;         /* outstanding WRITEs at most (prefill) */
    uint64_t posted, done;  /* sequence numbers, wr_id = sequence */
    uint32_t unsig;         /* WRITEs since the last signaled one */
    kvx__rdma_slot *ring;   /* depth slots */
    kvx__rdma_work *head, *tail;
} kvx__rdma_qp;

/* The peer's registered regions on one of its ports. */
typedef struct kvx__rdma_rbuf {
    uint64_t base, length;
    uint32_t n;
    uint32_t *rkeys;
} kvx__rdma_rbuf;
typedef struct kvx__rdma_rdev {
    kvx_rdma_port_info info;
    uint64_t region_bytes;
    kvx__rdma_rbuf *buf;      /* nbuf KV buffers, then naux aux buffers */
    kvx__rdma_rbuf stage;     /* the staging area (length 0: none) */
} kvx__rdma_rdev;

/* Decode: the staging area for one prefill rank whose heads land at a head
   offset inside this rank's token rows (prefill TP > decode TP): a pool in
   that prefill rank's shape with this pool's page count, which it writes
   as whole pages and this side scatters (kvx_plan_pages, kvx_span_copy)
   when the room completes. Kept until the engine goes. */
typedef struct kvx__rdma_stage {
    uint64_t instance;        /* the prefill engine */
    kvx_layout layout;        /* its shape, bases inside mem */
    kvx_buffer *bufs;
    char *mem;
    uint64_t len;
    kvx__rdma_mr mr[KVX_RDMA_MAX_DEVS];
    struct kvx__rdma_stage *next;
} kvx__rdma_stage;

enum { KVX__RP_CONNECTING = 0, KVX__RP_READY = 1, KVX__RP_DEAD = 2 };

/* The connection with one peer engine: nqp RC queue pairs. */
typedef struct kvx__rdma_pair {
    struct kvx__rdma_engine *re;
    int refs;                 /* atomic */
    int state;                /* atomic KVX__RP_* */
    uint64_t peer;            /* the peer's instance */
    char peer_addr[160];      /* for messages: "decode 10.0.0.2:41234 (tp rank 0 of 2, pp rank
                                 0 of 1)" (kvx__rdma_who) */
    int nqp;
    kvx__rdma_qp *qp;
    int nrdev;
    kvx__rdma_rdev *rdev;     /* prefill: the decode side's regions */
    kvx_layout peer_layout;   /* prefill: the decode pool, for planning; decode: the
                                 prefill's shape (kvx_boot), when known */
    kvx_buffer *peer_bufs;
    kvx_layout stage_layout;  /* prefill: the decode side's staging area, in our shape */
    kvx_buffer *stage_bufs;
    uint64_t *stage_off;      /* its buffers' offsets in the area */
    kvx__rdma_stage *stage;   /* decode: the staging area this connection announces */
    kvx_aux_buffer *peer_aux;
    kvx_buffer *peer_state;   /* prefill: the decode side's state buffers (HYBRID STATE) */
    pthread_mutex_t mu;       /* data path */
    pthread_cond_t cv;        /* rooms draining */
    struct kvx__rdma_room *rooms; /* prefill: attached rooms, under mu */
    char reason[KVX_ERROR_MAX];   /* why it died, under mu */
    uint32_t peer_qpn0;       /* prefill: the decode side's first queue pair number */
    uint32_t seq;             /* the exchange attempt (the decode side numbers them) */
    uint64_t deadline;        /* while connecting: KVX_IB_CONNECT_TIMEOUT for the next message */
    kvx_boot_peer ctl;        /* the control connection it is made on (conn_id, no strings) */
    /* decode: which rooms it serves (kvx_boot's dp rule) */
    char bootstrap[256];
    int dp_rank, dp_size;
    struct kvx__rdma_pair *next, *grave_next; /* under re->mu */
    /* the exchange tick's own chain: a pair it times out stays listed, so
       a disconnect may chain it through grave_next meanwhile */
    struct kvx__rdma_pair *late_next;
    int listed;
} kvx__rdma_pair;

/* Decode: a prefill rank whose control connection is up. */
typedef struct kvx__rdma_peer {
    uint64_t instance;
    char addr[96];
    char bootstrap[256];
    int dp_rank, dp_size;
    kvx_rdma_hello hello;
    kvx_boot_peer ctl;        /* its control connection (conn_id, no strings) */
    kvx_layout shape;         /* its layout shape (kvx_boot), num_buffers 0 when unknown */
    kvx_buffer *shape_bufs;
    kvx__rdma_pair *pair;     /* current, referenced; under re->mu */
    struct kvx__rdma_peer *next;
} kvx__rdma_peer;

/* Decode: what one room received from one prefill engine. */
typedef struct kvx__rdma_src {
    uint64_t instance;
    uint32_t marks;  /* immediates */
    uint32_t nqp;
    int status;      /* Success status seen */
    uint64_t bytes;
} kvx__rdma_src;

typedef struct kvx__rdma_room {
    kvx__xroom x; /* x.mu, prefill: orders chunk submission with attaching */
    struct kvx__rdma_engine *re;
    uint32_t tag;
    /* prefill */
    uint64_t decode;           /* the decode engine's instance */
    char decode_addr[96];
    int have_dst;
    int32_t *dst;
    uint32_t ndst;
    int32_t *dst_state;        /* this destination's state indices (HYBRID STATE) */
    uint32_t ndst_state;
    kvx_chunk **chunks;        /* parked until the connection is ready */
    uint32_t nchunks, cchunks;
    int parked;                /* under re->mu */
    uint64_t park_deadline;
    struct kvx__rdma_room *lnext; /* re->parked (prefill) or re->deferred (decode) */
    kvx__rdma_pair *pair;      /* attached (referenced) */
    struct kvx__rdma_room *pnext, *pprev; /* pair->rooms */
    /* under pair->mu */
    uint32_t works;
    uint64_t inflight;
    int last_queued, aux_needed, aux_queued, finished, cancelled;
    int aux_rows;              /* the tail job (aux_needed) holds aux rows */
    int state_rows;            /* ... and state rows (HYBRID STATE) */
    int others_pending;
    uint64_t final_mask;
    uint64_t bytes_done;
    int touched;
    struct kvx__rdma_room *tnext, *fnext, *knext; /* touched, finished, to fail (pair_down) */
    uint64_t fbytes;
    /* prefill: a room with several decode ranks (prefill TP < decode TP)
       has one leg per destination: the first is the room's data, the
       others hang off its leg list (under the first's x.mu) and share its
       kvx_room; each leg has its own connection, WRITEs and accounting */
    struct kvx__rdma_room *first, *leg_next;
    int nlegs, legs_done;         /* first: legs; legs whose WRITEs all completed (atomic) */
    uint64_t leg_bytes;           /* the bytes this leg moved, once finished (atomic) */
    int dummy;                    /* an MLA dummy sender: no bytes, Success (kvx_mla_dummy) */
    int aux_checked;
    /* decode (under re->rx_mu) */
    int in_table, deferred, succeeded_rx;
    uint64_t expected;
    int targets;
    kvx__rdma_src src[16];
    int nsrc;
    char bootstrap[256];
    int32_t *def_pages;
    uint32_t def_n;
    int32_t def_aux;
    int32_t *rx_pages;         /* decode: the room's pages (staged scatter) */
    uint32_t rx_n;
    kvx__hnode hn;             /* re->rx, key = tag */
} kvx__rdma_room;

typedef struct kvx__rdma_engine {
    kvx_engine *e;
    kvx_boot *boot;
    kvx_role role;
    kvx_rdma_desc cfg;         /* desc.rdma, resolved by kvx__rdma_table */
    kvx__rdma_verbs v;
    kvx__rdma_dev dev[KVX_RDMA_MAX_DEVS];
    int ndev;
    uint64_t instance;
    int wake_rd, wake_wr;      /* wakes the completion thread */
    int stop;                  /* atomic */
    pthread_t thread;
    int thread_started;
    kvx__workq *cmq;
    pthread_mutex_t mu;        /* pairs, peers, parked rooms */
    pthread_mutex_t gmu;       /* graveyard (taken alone: unref may run under mu) */
    kvx__rdma_pair *pairs, *grave;
    kvx__rdma_peer *peers;
    kvx__rdma_stage *stages;   /* decode: published with a release store, never unlinked */
    kvx__rdma_room *parked;
    int stopping;
    pthread_mutex_t rx_mu;     /* decode: the tag table rx */
    pthread_cond_t rx_cv;
    kvx__htab rx;
    kvx__rdma_room *deferred;
    kvx_rdma_stats st;         /* atomics */
    kvx__rdma_pair *acc;       /* prefill, under mu: ACCEPT sent, READY awaited */
    uint32_t seq;              /* decode, under mu: the last exchange attempt's number */
    int refused_logged;
} kvx__rdma_engine;

#define KVX__RDMA_STAT(re, f, n) KVX__ADD(&(re)->st.f, (uint64_t)(n))

static kvx__rdma_engine *kvx__rdma_re(const kvx_engine *e) {
    return (kvx__rdma_engine *)kvx_engine_backend_data(e);
}
static kvx__rdma_room *kvx__rdma_rr(const kvx_room *r) { return (kvx__rdma_room *)kvx_room_data(r); }

static kvx__rdma_stage *kvx__rdma_stage_find(kvx__rdma_engine *re, uint64_t inst) {
    kvx__rdma_stage *st = (kvx__rdma_stage *)__atomic_load_n(&re->stages, __ATOMIC_ACQUIRE);
    while (st && st->instance != inst) st = st->next;
    return st;
}

/* The room id folded to the 32-bit immediate. */
static uint32_t kvx__rdma_tag(uint64_t room) { return (uint32_t)(room ^ (room >> 32)); }

static uint64_t kvx__rdma_random64(void) {
    uint64_t x = 0;
    if (kvx__random_bytes(&x, sizeof x) != KVX_OK) x = 0;
    x ^= kvx_now_ns() * 0x9E3779B97F4A7C15ull ^ ((uint64_t)getpid() << 32);
    x ^= x >> 31;
    x *= 0xBF58476D1CE4E5B9ull;
    x ^= x >> 29;
    return x ? x : 1;
}

/* "; mlx5_0 port 1 is DOWN" when a completion error has that cause. */
static void kvx__rdma_port_note(kvx__rdma_engine *re, const kvx__rdma_dev *d, char *out, size_t n) {
    struct ibv_port_attr pa;
    out[0] = 0;
    if (KVX__LOAD(&d->fatal)) {
        snprintf(out, n, "; %s is in a fatal state (IBV_EVENT_DEVICE_FATAL)", d->info.name);
        return;
    }
    if (kvx__rdma_query_port(&re->v, d->ctx, d->info.port, &pa) == 0 && pa.state != IBV_PORT_ACTIVE)
        snprintf(out, n, "; %s port %u is %s (the link went down)", d->info.name,
                 (unsigned)d->info.port,
                 re->v.port_state_str ? re->v.port_state_str(pa.state) : "not active");
}

/* >>rdma: settings ------------------------------------------------------------ */

/* Rows over the whole engine desc, so a sentence names desc.rdma.<field>. */
static const kvx__setting kvx__rdma_table[] = {
    KVX__SET_STR("KVX_IBVERBS_LIBRARY", kvx_engine_desc, rdma.library),
    KVX__SET_STR("KVX_IB_DEVICE", kvx_engine_desc, rdma.devices),
    KVX__SET_INT0("KVX_IB_GID_INDEX", kvx_engine_desc, rdma.gid_index, -1, 0, 65535),
    KVX__SET_INT("KVX_IB_QPS", kvx_engine_desc, rdma.qps, 2, 1, KVX_RDMA_MAX_QPS),
    KVX__SET_INT("KVX_IB_MAX_MSG", kvx_engine_desc, rdma.max_msg, 1 << 20, 4096, 1 << 30),
    KVX__SET_INT("KVX_IB_SIGNAL_EVERY", kvx_engine_desc, rdma.signal_every, 16, 1, 4096),
    KVX__SET_INT("KVX_IB_SEND_DEPTH", kvx_engine_desc, rdma.send_depth, 1024, 16, 1 << 20),
    KVX__SET_INT("KVX_IB_RECV_DEPTH", kvx_engine_desc, rdma.recv_depth, 512, 16, 1 << 20),
    KVX__SET_INT0("KVX_IB_TIMEOUT", kvx_engine_desc, rdma.timeout, 14, 0, 31),
    KVX__SET_INT0("KVX_IB_RETRY_CNT", kvx_engine_desc, rdma.retry_cnt, 7, 0, 7),
    KVX__SET_INT0("KVX_IB_RNR_RETRY", kvx_engine_desc, rdma.rnr_retry, 7, 0, 7),
    KVX__SET_INT("KVX_IB_SL", kvx_engine_desc, rdma.sl, 0, 0, 15),
    KVX__SET_INT("KVX_IB_TRAFFIC_CLASS", kvx_engine_desc, rdma.traffic_class, 0, 0, 255),
    KVX__SET_INT0("KVX_IB_RELAXED_ORDERING", kvx_engine_desc, rdma.relaxed_ordering, 1, 0, 1),
    KVX__SET_DBL("KVX_IB_CONNECT_TIMEOUT", kvx_engine_desc, rdma.connect_timeout_s, 10,
                 0.001, KVX_MAX_TIMEOUT_S),
    KVX__SET_DBL("KVX_IB_FENCE_TIMEOUT", kvx_engine_desc, rdma.fence_timeout_s, 2,
                 0.001, KVX_MAX_TIMEOUT_S),
};

static void *kvx__rdma_zalloc(const kvx__rdma_engine *re, size_t n, size_t size) {
    return kvx__zalloc(&kvx_engine_settings(re->e)->allocator, n, size);
}

/* >>rdma: memory registration --------------------------------------------------- */

/* Registers [base, base+len) as regions of d->region_bytes. */
static kvx_result kvx__rdma_reg(kvx__rdma_engine *re, kvx__rdma_dev *d, kvx__rdma_mr *m,
                                char *base, uint64_t len, kvx_mem_kind mem, int gpu, int access,
                                const char *what, uint32_t idx, char *why, size_t wl) {
    uint64_t rb = d->region_bytes, off;
    uint32_t k;
    const kvx_mem_ops *mo = &kvx_engine_settings(re->e)->mem;
    uint32_t nr = (uint32_t)(len / rb + (len % rb ? 1 : 0));
    if (!(m->mr = (struct ibv_mr **)kvx__rdma_zalloc(re, nr, sizeof *m->mr)))
        return KVX_ERR_NO_MEMORY;
    m->n = nr; /* dev_close walks n regions */
    if (mem == KVX_MEM_CUDA) {
        if (!mo->dmabuf_fd) {
            kvx__set_why(why, wl, "%s %u is GPU memory (device %d): GPU memory registration needs "
                         "dma-buf export in desc.mem (fill it with kvx_cuda_mem_ops, kvx_cuda.h), "
                         "which this engine's desc.mem lacks", what, idx, gpu);
            return KVX_ERR_INVALID_ARGUMENT;
        }
        if (!re->v.reg_dmabuf_mr) {
            kvx__set_why(why, wl, "%s %u is GPU memory but %s has no ibv_reg_dmabuf_mr "
                         "(rdma-core >= 34 is needed for dma-buf registration)", what, idx,
                         re->v.path);
            return KVX_ERR_NOT_COMPILED;
        }
    }
    for (k = 0, off = 0; k < m->n; k++, off += rb) {
        uint64_t n = len - off < rb ? len - off : rb;
        if (mem == KVX_MEM_CUDA) {
            int fd = -1, err;
            uint64_t fo = 0;
            kvx_result r = mo->dmabuf_fd(mo->ctx, base + off, n, gpu, &fd, &fo, why, wl);
            if (r != KVX_OK) return r;
            m->mr[k] = re->v.reg_dmabuf_mr(d->pd, fo, (size_t)n, (uint64_t)(uintptr_t)(base + off),
                                           fd, access | (re->cfg.relaxed_ordering
                                                         ? IBV_ACCESS_RELAXED_ORDERING : 0));
            err = errno; /* reg_dmabuf_mr's, for the sentence below */
            close(fd);
            errno = err;
        } else if (re->cfg.relaxed_ordering && re->v.reg_mr_iova2) {
            m->mr[k] = re->v.reg_mr_iova2(d->pd, base + off, (size_t)n,
                                          (uint64_t)(uintptr_t)(base + off),
                                          (unsigned)(access | IBV_ACCESS_RELAXED_ORDERING));
        } else {
            m->mr[k] = re->v.reg_mr(d->pd, base + off, (size_t)n, access);
        }
        if (!m->mr[k]) {
            int err = errno;
            struct rlimit rl;
            char lim[96] = "";
            if ((err == ENOMEM || err == EPERM || err == EAGAIN) && getrlimit(RLIMIT_MEMLOCK, &rl) == 0 &&
                rl.rlim_cur != RLIM_INFINITY)
                snprintf(lim, sizeof lim, " (locked-memory limit %llu KiB: raise `ulimit -l`)",
                         (unsigned long long)(rl.rlim_cur / 1024));
            kvx__set_why(why, wl, "cannot register %s %u (%p, %llu bytes, region %u of %u) on %s: "
                         "%s%s", what, idx, (void *)(base + off), (unsigned long long)n, k + 1,
                         m->n, d->info.name, strerror(err), lim);
            return KVX_ERR_TRANSPORT;
        }
    }
    return KVX_OK;
}

static kvx_result kvx__rdma_register_pool(kvx__rdma_engine *re, kvx__rdma_dev *d, char *why,
                                          size_t wl) {
    const kvx_layout *l = kvx_engine_layout(re->e);
    int access = IBV_ACCESS_LOCAL_WRITE | (re->role == KVX_ROLE_DECODE ? IBV_ACCESS_REMOTE_WRITE : 0);
    uint32_t i;
    kvx_result r = KVX_OK;
    d->buf = (kvx__rdma_mr *)kvx__rdma_zalloc(re, KVX__RDMA_NBUF(l), sizeof *d->buf);
    if (!d->buf) return KVX_ERR_NO_MEMORY;
    for (i = 0; i < l->num_buffers && r == KVX_OK; i++) {
        const kvx_buffer *b = &l->buffers[i];
        r = kvx__rdma_reg(re, d, &d->buf[i], (char *)b->base, b->length, b->mem, b->device,
                          access, "KV buffer", i, why, wl);
    }
    for (i = 0; i < l->num_aux && r == KVX_OK; i++)
        r = kvx__rdma_reg(re, d, &d->buf[l->num_buffers + i], (char *)l->aux[i].base,
                          l->aux[i].length, KVX_MEM_HOST, 0, access, "aux buffer", i, why, wl);
    for (i = 0; i < l->num_state && r == KVX_OK; i++) { /* HYBRID STATE: host or GPU, as KV */
        const kvx_buffer *b = &l->state[i];
        r = kvx__rdma_reg(re, d, &d->buf[l->num_buffers + l->num_aux + i], (char *)b->base,
                          b->length, b->mem, b->device, access, "state buffer", i, why, wl);
    }
    return r;
}

/* >>rdma: devices ------------------------------------------------------------- */

static int kvx__rdma_gid_zero(const uint8_t *g) {
    static const uint8_t zero[16] = {0};
    return !memcmp(g, zero, 16);
}
static int kvx__rdma_gid_v4mapped(const uint8_t *g) {
    static const uint8_t pre[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    return !memcmp(g, pre, 12);
}

static void kvx__rdma_gid_str(const uint8_t *g, char *out, size_t n) {
    if (!inet_ntop(AF_INET6, g, out, (socklen_t)n)) snprintf(out, n, "?");
}

/* RoCE GID type: 2 RoCE v2, 1 RoCE v1 (or IB), 0 unknown. */
static int kvx__rdma_gid_type(const kvx__rdma_verbs *v, struct ibv_context *c, const char *name,
                              uint8_t port, int idx) {
    char path[256], buf[64];
    FILE *f;
    if (v->query_gid_ex) {
        struct ibv_gid_entry e;
        memset(&e, 0, sizeof e);
        if (v->query_gid_ex(c, port, (uint32_t)idx, &e, 0, sizeof e) == 0)
            return e.gid_type == IBV_GID_TYPE_ROCE_V2 ? 2 : 1;
    }
    snprintf(path, sizeof path, "/sys/class/infiniband/%s/ports/%u/gid_attrs/types/%d", name,
             (unsigned)port, idx);
    f = fopen(path, "r");
    if (!f) return 0;
    if (!fgets(buf, sizeof buf, f)) buf[0] = 0;
    fclose(f);
    return strstr(buf, "v2") ? 2 : buf[0] ? 1 : 0;
}

/* Picks the GID of a port: explicit index, or on RoCE the best candidate. */
static kvx_result kvx__rdma_pick_gid(kvx__rdma_engine *re, kvx__rdma_dev *d,
                                     const struct ibv_port_attr *pa, char *why, size_t wl) {
    const kvx__rdma_verbs *v = &re->v;
    union ibv_gid g;
    int idx, best = -1, best_score = 0, n = pa->gid_tbl_len > 1024 ? 1024 : pa->gid_tbl_len;
    char gs[64];
    if (re->cfg.gid_index >= 0) {
        idx = re->cfg.gid_index;
        if (idx >= pa->gid_tbl_len || v->query_gid(d->ctx, d->info.port, idx, &g) ||
            kvx__rdma_gid_zero(g.raw)) {
            kvx__set_why(why, wl, "KVX_IB_GID_INDEX=%d: %s port %u has no GID there (its table "
                         "holds %d entries; `show_gids` lists them)", idx, d->info.name,
                         (unsigned)d->info.port, pa->gid_tbl_len);
            return KVX_ERR_BAD_CONFIG;
        }
        memcpy(d->info.gid, g.raw, 16);
        d->info.gid_index = (uint8_t)idx;
        d->is_global = 1;
        return KVX_OK;
    }
    if (d->info.link_layer != 2) { /* InfiniBand: LID routing, GID 0 for the record */
        if (v->query_gid(d->ctx, d->info.port, 0, &g) == 0) memcpy(d->info.gid, g.raw, 16);
        if (!pa->lid) { /* gid_index and is_global stay 0 (port_open cleared d) */
            kvx__set_why(why, wl, "%s port %u is InfiniBand without a LID (is a subnet manager "
                         "running?)", d->info.name, (unsigned)d->info.port);
            return KVX_ERR_TRANSPORT;
        }
        return KVX_OK;
    }
    for (idx = 0; idx < n; idx++) {
        int score, type;
        if (v->query_gid(d->ctx, d->info.port, idx, &g) || kvx__rdma_gid_zero(g.raw) ||
            (g.raw[0] == 0xfe && (g.raw[1] & 0xc0) == 0x80)) /* link-local */
            continue;
        type = kvx__rdma_gid_type(v, d->ctx, d->info.name, d->info.port, idx);
        if (type == 0) type = kvx__rdma_gid_v4mapped(g.raw) ? 2 : 1;
        score = type == 2 ? (kvx__rdma_gid_v4mapped(g.raw) ? 3 : 2) : 1;
        if (score > best_score) { best = idx; best_score = score; memcpy(d->info.gid, g.raw, 16); }
    }
    if (best < 0) {
        kvx__set_why(why, wl, "%s port %u (RoCE) has no usable GID: every entry is empty or "
                     "link-local. Give the interface an IP address, or set KVX_IB_GID_INDEX",
                     d->info.name, (unsigned)d->info.port);
        return KVX_ERR_TRANSPORT;
    }
    d->info.gid_index = (uint8_t)best;
    d->is_global = 1;
    kvx__rdma_gid_str(d->info.gid, gs, sizeof gs);
    kvx_engine_log(re->e, KVX_LOG_INFO, "kvx.rdma", 0, "%s port %u: GID index %d (%s, %s)",
                   d->info.name, (unsigned)d->info.port, best, gs,
                   best_score >= 2 ? "RoCE v2" : "RoCE v1");
    return KVX_OK;
}

/* Is "name" (port p) selected by KVX_IB_DEVICE? *port_out = 0: any port. */
static int kvx__rdma_dev_selected(const char *list, const char *name, int *port_out) {
    const char *p = list;
    size_t nl = strlen(name);
    *port_out = 0;
    if (!list || !*list) return 1;
    while (*p) {
        const char *e = strchr(p, ','), *colon;
        size_t l = e ? (size_t)(e - p) : strlen(p);
        while (l && *p == ' ') { p++; l--; }
        while (l && p[l - 1] == ' ') l--;
        colon = (const char *)memchr(p, ':', l);
        if ((colon ? (size_t)(colon - p) : l) == nl && !memcmp(p, name, nl)) {
            *port_out = colon ? atoi(colon + 1) : 0;
            return 1;
        }
        if (!e) break;
        p = e + 1;
    }
    return 0;
}

static void kvx__rdma_dev_close(kvx__rdma_engine *re, kvx__rdma_dev *d) {
    const kvx_layout *l = kvx_engine_layout(re->e);
    uint32_t i, k;
    for (i = 0; d->buf && i < KVX__RDMA_NBUF(l); i++) {
        for (k = 0; k < d->buf[i].n; k++)
            if (d->buf[i].mr[k]) re->v.dereg_mr(d->buf[i].mr[k]);
        kvx_engine_free(re->e, d->buf[i].mr);
    }
    kvx_engine_free(re->e, d->buf);
    if (d->ch) re->v.destroy_comp_channel(d->ch);
    if (d->pd) re->v.dealloc_pd(d->pd);
    if (d->ctx) re->v.close_device(d->ctx);
    memset(d, 0, sizeof *d);
}

/* Opens one port: context, attributes, GID, protection domain, completion
   channel, the pool registered. KVX_OK: added, or skipped with note saying
   why. */
static kvx_result kvx__rdma_port_open(kvx__rdma_engine *re, struct ibv_device *dv,
                                      const char *name, uint8_t port, char *why, size_t wl,
                                      char *note, size_t nl) {
    kvx__rdma_dev *d = &re->dev[re->ndev];
    struct ibv_device_attr da;
    struct ibv_port_attr pa;
    kvx_result r = KVX_ERR_TRANSPORT;
    memset(d, 0, sizeof *d);
    snprintf(d->info.name, sizeof d->info.name, "%s", name);
    d->info.port = port;
    d->ctx = re->v.open_device(dv);
    if (!d->ctx) {
        kvx__set_why(why, wl, "cannot open RDMA device %s: %s", name, strerror(errno));
        return KVX_ERR_TRANSPORT;
    }
    if (re->v.query_device(d->ctx, &da) || kvx__rdma_query_port(&re->v, d->ctx, port, &pa)) {
        kvx__set_why(why, wl, "cannot query RDMA device %s port %u: %s", name, (unsigned)port,
                     strerror(errno));
        goto fail;
    }
    if (pa.state != IBV_PORT_ACTIVE) {
        snprintf(note, nl, "%s port %u is %s", name, (unsigned)port,
                 re->v.port_state_str ? re->v.port_state_str(pa.state) : "not active");
        r = KVX_OK;
        goto fail;
    }
    d->info.link_layer = pa.link_layer == IBV_LINK_LAYER_ETHERNET ? 2 : 1;
    d->info.mtu = (uint8_t)pa.active_mtu;
    d->info.lid = pa.lid;
    if (d->info.mtu < 1 || d->info.mtu > 5) d->info.mtu = IBV_MTU_1024;
    d->max_qp_wr = da.max_qp_wr > 0 ? (uint32_t)da.max_qp_wr : 1024;
    d->max_sge = da.max_sge > 0 ? (uint32_t)da.max_sge : 1;
    if (d->max_sge > KVX__RDMA_MAX_SGE) d->max_sge = KVX__RDMA_MAX_SGE;
    d->max_cqe = da.max_cqe > 0 ? da.max_cqe : 4096;
    d->region_bytes = da.max_mr_size ? da.max_mr_size & ~(uint64_t)4095 : 0;
    if (d->region_bytes < 4096 || d->region_bytes > (1ull << 62)) d->region_bytes = 1ull << 62;
    if ((r = kvx__rdma_pick_gid(re, d, &pa, why, wl)) != KVX_OK) goto fail;
    d->pd = re->v.alloc_pd(d->ctx);
    d->ch = d->pd ? re->v.create_comp_channel(d->ctx) : NULL;
    if (!d->pd || !d->ch) {
        kvx__set_why(why, wl, "cannot allocate a protection domain and completion channel on "
                     "%s: %s", name, strerror(errno));
        r = KVX_ERR_TRANSPORT;
        goto fail;
    }
    kvx__nonblock(d->ch->fd, 1);
    kvx__nonblock(d->ctx->async_fd, 1);
    re->ndev++; /* from here kvx__rdma_free closes it */
    return kvx__rdma_register_pool(re, d, why, wl);
fail:
    kvx__rdma_dev_close(re, d);
    return r;
}

static kvx_result kvx__rdma_open_devices(kvx__rdma_engine *re, char *why, size_t wl) {
    struct ibv_device **list;
    int n = 0, i, found_named = 0;
    char names[512] = "", notes[512] = "";
    kvx_result r = KVX_OK;
    list = re->v.get_device_list(&n);
    if (!list || n <= 0) {
        kvx__set_why(why, wl, "no RDMA device found (%s lists none%s%s). Load the NIC's driver, "
                     "or create a Soft-RoCE device: rdma link add rxe0 type rxe netdev eth0",
                     re->v.path, errno && !list ? ": " : "", errno && !list ? strerror(errno) : "");
        if (list) re->v.free_device_list(list);
        return KVX_ERR_NOT_FOUND;
    }
    for (i = 0; i < n && r == KVX_OK && re->ndev < KVX_RDMA_MAX_DEVS; i++) {
        const char *name = re->v.get_device_name(list[i]);
        int want_port = 0, p, nports = 0;
        struct ibv_context *probe;
        struct ibv_device_attr da;
        if (!name) continue;
        snprintf(names + strlen(names), sizeof names - strlen(names), "%s%s", i ? ", " : "", name);
        if (!kvx__rdma_dev_selected(re->cfg.devices, name, &want_port)) continue;
        found_named++;
        probe = re->v.open_device(list[i]);
        if (probe && !re->v.query_device(probe, &da)) {
            nports = da.phys_port_cnt;
        } else {
            kvx__set_why(why, wl, "cannot open RDMA device %s: %s", name, strerror(errno));
            r = KVX_ERR_TRANSPORT;
        }
        if (probe) re->v.close_device(probe);
        for (p = 1; p <= nports && r == KVX_OK && re->ndev < KVX_RDMA_MAX_DEVS; p++) {
            char note[128] = "";
            if (want_port && p != want_port) continue;
            r = kvx__rdma_port_open(re, list[i], name, (uint8_t)p, why, wl, note, sizeof note);
            if (note[0] && strlen(notes) + strlen(note) + 3 < sizeof notes)
                snprintf(notes + strlen(notes), sizeof notes - strlen(notes), "%s%s",
                         notes[0] ? "; " : "", note);
        }
    }
    re->v.free_device_list(list);
    if (r != KVX_OK) return r;
    if (!found_named) {
        kvx__set_why(why, wl, "KVX_IB_DEVICE='%s' names no RDMA device; present: %s",
                     re->cfg.devices ? re->cfg.devices : "", names);
        return KVX_ERR_BAD_CONFIG;
    }
    if (!re->ndev) {
        kvx__set_why(why, wl, "no ACTIVE RDMA port (%s). Check the link (ibv_devinfo, "
                     "rdma link show)", notes[0] ? notes : names);
        return KVX_ERR_TRANSPORT;
    }
    return KVX_OK;
}

/* >>rdma: queue pairs --------------------------------------------------------- */

static kvx__rdma_pair *kvx__rdma_pair_new(kvx__rdma_engine *re, int nqp, uint64_t peer,
                                          const char *addr) {
    kvx__rdma_pair *p = (kvx__rdma_pair *)kvx__rdma_zalloc(re, 1, sizeof *p);
    int i;
    if (!p) return NULL;
    p->qp = (kvx__rdma_qp *)kvx__rdma_zalloc(re, (size_t)nqp, sizeof *p->qp);
    if (!p->qp) { kvx_engine_free(re->e, p); return NULL; }
    p->re = re;
    p->refs = 1;
    p->state = KVX__RP_CONNECTING;
    p->peer = peer;
    p->nqp = nqp;
    snprintf(p->peer_addr, sizeof p->peer_addr, "%s", addr);
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    for (i = 0; i < nqp; i++) {
        p->qp[i].pair = p;
        p->qp[i].idx = i;
        p->qp[i].dev = &re->dev[i % re->ndev];
    }
    return p;
}

static void kvx__rdma_job_free(kvx__rdma_engine *re, kvx__rdma_job *j) {
    if (j) kvx_plan_free(&j->plan);
    kvx_engine_free(re->e, j);
}

static void kvx__rdma_work_free(kvx__rdma_engine *re, kvx__rdma_work *w) {
    kvx__rdma_job *j = w->job;
    int owned = w->owned; /* w may live inside j */
    if (j && --j->refs == 0) kvx__rdma_job_free(re, j);
    if (owned) kvx_engine_free(re->e, w);
}

/* Frees the works queued on q for room rr (for every room with rr NULL). */
static void kvx__rdma_drop(kvx__rdma_engine *re, kvx__rdma_qp *q, const kvx__rdma_room *rr) {
    kvx__rdma_work **pp = &q->head, *w;
    q->tail = NULL;
    while ((w = *pp) != NULL) {
        if (rr && w->room != rr) {
            q->tail = w;
            pp = &w->next;
            continue;
        }
        *pp = w->next;
        w->room->works--;
        kvx__rdma_work_free(re, w);
    }
}

/* Frees everything of a pair. Its completion queues must no longer be
   polled (the completion thread calls this, or fini after joining it). */
static void kvx__rdma_pair_destroy(kvx__rdma_engine *re, kvx__rdma_pair *p) {
    int i;
    for (i = 0; i < p->nqp; i++) {
        kvx__rdma_qp *q = &p->qp[i];
        while (q->head) {
            kvx__rdma_work *w = q->head;
            q->head = w->next;
            kvx__rdma_work_free(re, w);
        }
        if (q->qp) re->v.destroy_qp(q->qp);
        if (q->cq) re->v.destroy_cq(q->cq);
        kvx_engine_free(re->e, q->ring);
    }
    for (i = 0; i < p->nrdev; i++) {
        uint32_t k, nb = KVX__RDMA_NBUF(&p->peer_layout);
        for (k = 0; p->rdev[i].buf && k < nb; k++)
            kvx_engine_free(re->e, p->rdev[i].buf[k].rkeys);
        kvx_engine_free(re->e, p->rdev[i].buf);
    }
    for (i = 0; i < p->nrdev; i++) kvx_engine_free(re->e, p->rdev[i].stage.rkeys);
    kvx_engine_free(re->e, p->rdev);
    kvx_engine_free(re->e, p->peer_bufs);
    kvx_engine_free(re->e, p->peer_aux);
    kvx_engine_free(re->e, p->peer_state);
    kvx_engine_free(re->e, p->stage_bufs);
    kvx_engine_free(re->e, p->stage_off);
    kvx_engine_free(re->e, p->qp);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
    kvx_engine_free(re->e, p);
}

static void kvx__rdma_pair_ref(kvx__rdma_pair *p) { KVX__ADD(&p->refs, 1); }

/* A reference from a pointer nobody holds for us (qp_context in an async
   event): only while the pair is alive; at 0 it waits in the graveyard. */
static int kvx__rdma_pair_tryref(kvx__rdma_pair *p) {
    int cur = KVX__LOAD(&p->refs);
    while (cur > 0)
        if (__atomic_compare_exchange_n(&p->refs, &cur, cur + 1, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
            return 1;
    return 0;
}

/* The last reference sends the pair to the completion thread to be freed. */
static void kvx__rdma_pair_unref(kvx__rdma_engine *re, kvx__rdma_pair *p) {
    if (!p || KVX__SUB(&p->refs, 1) != 0) return;
    pthread_mutex_lock(&re->gmu);
    p->grave_next = re->grave;
    re->grave = p;
    pthread_mutex_unlock(&re->gmu);
    kvx__wake(re->wake_wr);
}

static kvx_result kvx__rdma_post_recvs(kvx__rdma_qp *q, uint32_t n) {
    struct ibv_recv_wr wr[64], *bad = NULL;
    while (n) {
        uint32_t k = n < 64 ? n : 64, i;
        memset(wr, 0, sizeof(wr[0]) * k);
        for (i = 0; i < k; i++) wr[i].next = i + 1 < k ? &wr[i + 1] : NULL;
        if (ibv_post_recv(q->qp, wr, &bad)) return KVX_ERR_TRANSPORT;
        n -= k;
    }
    return KVX_OK;
}

/* Creates the completion queue and queue pair of q and moves it to INIT. */
static kvx_result kvx__rdma_qp_create(kvx__rdma_engine *re, kvx__rdma_qp *q, char *why, size_t wl) {
    kvx__rdma_dev *d = q->dev;
    struct ibv_qp_init_attr ia;
    struct ibv_qp_attr a;
    int decode = re->role == KVX_ROLE_DECODE, cqe;
    uint32_t depth = (uint32_t)re->cfg.send_depth, rdepth = (uint32_t)re->cfg.recv_depth;
    if (depth > d->max_qp_wr) depth = d->max_qp_wr;
    if (rdepth > d->max_qp_wr) rdepth = d->max_qp_wr;
    if (KVX__LOAD(&d->fatal) || KVX__LOAD(&d->down)) {
        kvx__set_why(why, wl, "%s port %u is %s", d->info.name, (unsigned)d->info.port,
                     KVX__LOAD(&d->fatal) ? "in a fatal state (IBV_EVENT_DEVICE_FATAL)" : "down");
        return KVX_ERR_TRANSPORT;
    }
    q->depth = decode ? 1 : depth;
    cqe = (int)(decode ? rdepth : depth) + 16;
    if (cqe > d->max_cqe) cqe = d->max_cqe;
    if (!decode) {
        q->ring = (kvx__rdma_slot *)kvx__rdma_zalloc(re, depth, sizeof *q->ring);
        if (!q->ring) return KVX_ERR_NO_MEMORY;
    }
    q->psn = (uint32_t)(kvx__rdma_random64() & 0xFFFFFFu);
    q->cq = re->v.create_cq(d->ctx, cqe, q, d->ch, 0);
    if (!q->cq || ibv_req_notify_cq(q->cq, 0)) {
        kvx__set_why(why, wl, "cannot create a completion queue of %d entries on %s: %s", cqe,
                     d->info.name, strerror(errno));
        return KVX_ERR_TRANSPORT;
    }
    memset(&ia, 0, sizeof ia);
    ia.qp_context = q;
    ia.send_cq = q->cq;
    ia.recv_cq = q->cq;
    ia.qp_type = IBV_QPT_RC;
    ia.cap.max_send_wr = decode ? 1 : depth;
    ia.cap.max_recv_wr = decode ? rdepth : 1;
    ia.cap.max_send_sge = decode ? 1 : d->max_sge;
    ia.cap.max_recv_sge = 1;
    q->qp = re->v.create_qp(d->pd, &ia);
    if (!q->qp) {
        kvx__set_why(why, wl, "cannot create an RC queue pair (%u send, %u receive entries) on %s: %s",
                     ia.cap.max_send_wr, ia.cap.max_recv_wr, d->info.name, strerror(errno));
        return KVX_ERR_TRANSPORT;
    }
    memset(&a, 0, sizeof a);
    a.qp_state = IBV_QPS_INIT;
    a.port_num = d->info.port;
    a.qp_access_flags = decode ? IBV_ACCESS_REMOTE_WRITE : 0;
    if (re->v.modify_qp(q->qp, &a, IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS)) {
        kvx__set_why(why, wl, "cannot move a queue pair on %s to INIT: %s", d->info.name,
                     strerror(errno));
        return KVX_ERR_TRANSPORT;
    }
    if (decode && kvx__rdma_post_recvs(q, rdepth) != KVX_OK) {
        kvx__set_why(why, wl, "cannot post %u receives on %s: %s", rdepth, d->info.name,
                     strerror(errno));
        return KVX_ERR_TRANSPORT;
    }
    return KVX_OK;
}

/* INIT -> RTR -> RTS towards the peer's queue pair of the same index (in
   its CONNECT or ACCEPT m) on the peer's port. */
static kvx_result kvx__rdma_qp_connect(kvx__rdma_engine *re, kvx__rdma_qp *q,
                                       const kvx_rdma_cm_msg *m, char *why, size_t wl) {
    kvx__rdma_dev *d = q->dev;
    const kvx_rdma_qp_info *rq = &m->qp[q->idx];
    const kvx_rdma_port_info *rd = &m->dev[rq->dev];
    struct ibv_qp_attr a;
    char lg[64], rg[64];
    if (rd->link_layer != d->info.link_layer) {
        kvx__set_why(why, wl, "%s port %u is %s but the peer's %s port %u is %s: both ends of a "
                     "queue pair need the same link layer", d->info.name, (unsigned)d->info.port,
                     d->info.link_layer == 2 ? "Ethernet (RoCE)" : "InfiniBand", rd->name,
                     (unsigned)rd->port, rd->link_layer == 2 ? "Ethernet (RoCE)" : "InfiniBand");
        return KVX_ERR_TRANSPORT;
    }
    q->rdev = rq->dev;
    memset(&a, 0, sizeof a);
    a.qp_state = IBV_QPS_RTR;
    a.path_mtu = (enum ibv_mtu)(rd->mtu < d->info.mtu ? rd->mtu : d->info.mtu);
    a.dest_qp_num = rq->qpn;
    a.rq_psn = rq->psn;
    a.max_dest_rd_atomic = 1;
    a.min_rnr_timer = 12;
    a.ah_attr.is_global = (uint8_t)(d->is_global || d->info.link_layer == 2);
    a.ah_attr.dlid = rd->lid;
    a.ah_attr.sl = (uint8_t)re->cfg.sl;
    a.ah_attr.port_num = d->info.port;
    if (a.ah_attr.is_global) {
        memcpy(a.ah_attr.grh.dgid.raw, rd->gid, 16);
        a.ah_attr.grh.sgid_index = d->info.gid_index;
        a.ah_attr.grh.hop_limit = 64;
        a.ah_attr.grh.traffic_class = (uint8_t)re->cfg.traffic_class;
    }
    if (re->v.modify_qp(q->qp, &a, IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN |
                                       IBV_QP_RQ_PSN | IBV_QP_MAX_DEST_RD_ATOMIC |
                                       IBV_QP_MIN_RNR_TIMER)) {
        int err = errno;
        kvx__rdma_gid_str(d->info.gid, lg, sizeof lg);
        kvx__rdma_gid_str(rd->gid, rg, sizeof rg);
        kvx__set_why(why, wl, "cannot move queue pair %u on %s port %u to RTR towards qpn %u at "
                     "%s (lid %u, GID index %u local %s, MTU %d): %s", q->qp->qp_num, d->info.name,
                     (unsigned)d->info.port, rq->qpn, rg, (unsigned)rd->lid,
                     (unsigned)d->info.gid_index, lg, 128 << a.path_mtu, strerror(err));
        return KVX_ERR_TRANSPORT;
    }
    memset(&a, 0, sizeof a);
    a.qp_state = IBV_QPS_RTS;
    a.timeout = (uint8_t)re->cfg.timeout;
    a.retry_cnt = (uint8_t)re->cfg.retry_cnt;
    a.rnr_retry = (uint8_t)re->cfg.rnr_retry;
    a.sq_psn = q->psn;
    a.max_rd_atomic = 1;
    if (re->v.modify_qp(q->qp, &a, IBV_QP_STATE | IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT |
                                       IBV_QP_RNR_RETRY | IBV_QP_SQ_PSN | IBV_QP_MAX_QP_RD_ATOMIC)) {
        kvx__set_why(why, wl, "cannot move queue pair %u on %s to RTS: %s", q->qp->qp_num,
                     d->info.name, strerror(errno));
        return KVX_ERR_TRANSPORT;
    }
    return KVX_OK;
}

/* >>rdma: failing rooms ----------------------------------------------------------- */

typedef struct kvx__rdma_deadarg {
    kvx__rdma_pair *p;
    kvx_result res;
    int remote;
    const char *msg;
} kvx__rdma_deadarg;

/* Does the prefill rank of bootstrap address bs, dp rank/size, serve rr? */
static int kvx__rdma_serves(const char *bs, int dp_rank, int dp_size, const kvx__rdma_room *rr) {
    if (strcmp(bs, rr->bootstrap)) return 0;
    return dp_size <= 1 || (int)(rr->x.id % (uint64_t)dp_size) == dp_rank;
}
#define KVX__RDMA_SERVES(x, rr) kvx__rdma_serves((x)->bootstrap, (x)->dp_rank, (x)->dp_size, rr)

static kvx__rdma_room *kvx__rdma_rx_find(kvx__rdma_engine *re, uint32_t tag) {
    kvx__hnode *h = kvx__htab_find(&re->rx, tag);
    return h ? (kvx__rdma_room *)(void *)((char *)h - offsetof(kvx__rdma_room, hn)) : NULL;
}

/* KVX_ERR_NO_MEMORY when the table could not grow. */
static kvx_result kvx__rdma_rx_insert(kvx__rdma_engine *re, kvx__rdma_room *rr) {
    kvx_result r;
    rr->hn.key = rr->tag;
    r = kvx__htab_insert(&re->rx, &kvx_engine_settings(re->e)->allocator, &rr->hn);
    rr->in_table = r == KVX_OK;
    return r;
}

static void kvx__rdma_rx_remove(kvx__rdma_engine *re, kvx__rdma_room *rr) {
    kvx__htab_remove(&re->rx, &rr->hn);
    rr->in_table = 0;
}

static kvx__rdma_src *kvx__rdma_src_get(kvx__rdma_room *rr, uint64_t inst, int add) {
    int i;
    for (i = 0; i < rr->nsrc; i++)
        if (rr->src[i].instance == inst) return &rr->src[i];
    if (!add || rr->nsrc == (int)(sizeof rr->src / sizeof rr->src[0])) return NULL;
    memset(&rr->src[rr->nsrc], 0, sizeof rr->src[0]);
    rr->src[rr->nsrc].instance = inst;
    return &rr->src[rr->nsrc++];
}

/* 1: every target reported Success, every queue pair of each delivered
   the room's immediate and the bytes (*total) agree; -1 (msg set): they
   do not agree; 0: not yet (*total untouched). Under rx_mu. */
static int kvx__rdma_rx_check(kvx__rdma_room *rr, char *msg, size_t ml, const char *who,
                              uint64_t *total) {
    int i, nst = 0;
    uint64_t bytes = 0;
    if (rr->succeeded_rx || !rr->targets) return 0;
    for (i = 0; i < rr->nsrc; i++) {
        if (!rr->src[i].status) continue;
        if (rr->src[i].marks < rr->src[i].nqp) return 0;
        nst++;
        bytes += rr->src[i].bytes;
    }
    if (nst < rr->targets) return 0;
    rr->succeeded_rx = 1;
    *total = bytes;
    if (bytes != rr->expected) {
        snprintf(msg, ml, "%s%s report%s %llu bytes placed but this receiver expects %llu "
                 "(its pages times the page bytes of every buffer, plus the aux row and state rows)",
                 rr->targets > 1 ? "the prefill ranks, the last " : "", who,
                 rr->targets > 1 ? "," : "s", (unsigned long long)bytes,
                 (unsigned long long)rr->expected);
        return -1;
    }
    return 1;
}

/* Decode: a complete room's bytes that went through staging areas (every
   contributor is done writing) move to their rows: 0, or -1 (room failed). */
static int kvx__rdma_unstage(kvx__rdma_room *rr) {
    kvx__rdma_engine *re = rr->re;
    const kvx_layout *l = kvx_engine_layout(re->e);
    kvx_plan pl;
    int i, bad = 0;
    size_t k;
    memset(&pl, 0, sizeof pl);
    pl.allocator = &kvx_engine_settings(re->e)->allocator;
    for (i = 0; i < rr->nsrc && !bad; i++) {
        kvx__rdma_stage *st = kvx__rdma_stage_find(re, rr->src[i].instance);
        kvx_result res;
        if (!st) continue;
        res = kvx_plan_pages(&pl, &st->layout, rr->rx_pages, l, rr->rx_pages, rr->rx_n);
        if (res != KVX_OK) {
            kvx_room_fail(rr->x.room, res, "scattering the staging area: %s", pl.error);
            bad = 1;
            break;
        }
        for (k = 0; k < pl.count; k++)
            kvx_span_copy(l->buffers[pl.spans[k].dst_buffer].base,
                          st->layout.buffers[pl.spans[k].buffer].base, &pl.spans[k]);
    }
    kvx_plan_free(&pl);
    return bad ? -1 : 0;
}

static void kvx__rdma_rx_act(kvx_room *r, int verdict, uint64_t bytes, const char *msg) {
    if (verdict > 0 && kvx__rdma_unstage(kvx__rdma_rr(r)) == 0) kvx_room_succeed(r, bytes);
    else if (verdict < 0) kvx_room_fail(r, KVX_ERR_CORRUPT, "%s", msg);
}

static void kvx__rdma_decode_dead_one(kvx_room *r, void *arg) {
    kvx__rdma_deadarg *a = (kvx__rdma_deadarg *)arg;
    kvx__rdma_room *rr = kvx__rdma_rr(r);
    kvx__rdma_src *s;
    char msg[KVX_ERROR_MAX] = "";
    uint64_t total = 0;
    int v = 0, done = 0;
    if (!rr || kvx_room_poll(r) != KVX_POLL_TRANSFERRING || !KVX__RDMA_SERVES(a->p, rr)) return;
    /* a prefill that sent Success did so after every WRITE of the room,
       immediates included, completed: its bytes are placed, whatever
       happens to the connection now */
    pthread_mutex_lock(&rr->re->rx_mu);
    s = rr->in_table ? kvx__rdma_src_get(rr, a->p->peer, 0) : NULL;
    if (s && s->status) {
        done = 1;
        s->marks = s->nqp;
        v = kvx__rdma_rx_check(rr, msg, sizeof msg, a->p->peer_addr, &total);
        if (v) kvx__rdma_rx_remove(rr->re, rr);
    }
    pthread_mutex_unlock(&rr->re->rx_mu);
    if (done) kvx__rdma_rx_act(r, v, total, msg);
    else if (a->remote) kvx_room_fail_remote(r, a->res, "%s", a->msg);
    else kvx_room_fail(r, a->res, "%s", a->msg);
}

/* Takes p out of service: every queue pair to ERR, queued and in-flight
   WRITEs forgotten; the prefill's rooms on it fail, and with fail_decode
   the decode rooms it served. A local failure (kvx_room_fail) reaches the
   peer through the room_failed hook with the room's first reason; with
   remote (the peer is gone or reported the connection broken) they fail
   with kvx_room_fail_remote, which sends nothing back. */
static void kvx__rdma_pair_down(kvx__rdma_engine *re, kvx__rdma_pair *p, kvx_result res,
                                int fail_decode, int remote, const char *fmt, ...) KVX_PRINTF(6, 7);
static void kvx__rdma_pair_down(kvx__rdma_engine *re, kvx__rdma_pair *p, kvx_result res,
                                int fail_decode, int remote, const char *fmt, ...) {
    kvx__rdma_room *fail = NULL, *rr;
    int i;
    char msg[KVX_ERROR_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    pthread_mutex_lock(&p->mu);
    if (KVX__LOAD(&p->state) == KVX__RP_DEAD) {
        pthread_mutex_unlock(&p->mu);
        return;
    }
    KVX__STORE(&p->state, KVX__RP_DEAD);
    snprintf(p->reason, sizeof p->reason, "%s", msg);
    for (i = 0; i < p->nqp; i++) {
        kvx__rdma_qp *q = &p->qp[i];
        if (q->qp) {
            struct ibv_qp_attr a;
            memset(&a, 0, sizeof a);
            a.qp_state = IBV_QPS_ERR;
            re->v.modify_qp(q->qp, &a, IBV_QP_STATE);
        }
        kvx__rdma_drop(re, q, NULL);
        while (q->ring && q->done < q->posted) {
            kvx__rdma_slot *s = &q->ring[++q->done % q->depth];
            if (s->room) s->room->inflight--;
            s->room = NULL;
        }
    }
    for (rr = p->rooms; rr; rr = rr->pnext) {
        if (rr->finished) continue; /* every WRITE completed: it reports Success */
        rr->cancelled = 1;
        kvx_room_ref(rr->x.room);
        rr->knext = fail;
        fail = rr;
    }
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    /* the rooms it fails log their own errors */
    kvx_engine_log(re->e, res == KVX_ERR_ABORTED || (!fail && res == KVX_ERR_PEER_LOST)
                              ? KVX_LOG_INFO : KVX_LOG_WARN, "kvx.rdma", 0, "%s", msg);
    while ((rr = fail) != NULL) {
        fail = rr->knext;
        if (remote) kvx_room_fail_remote(rr->x.room, res, "%s", msg);
        else kvx_room_fail(rr->x.room, res, "%s", msg);
        kvx_room_unref(rr->x.room);
    }
    if (re->role == KVX_ROLE_DECODE && fail_decode) { /* the rooms receiving through p */
        kvx__rdma_deadarg a = {p, res, remote, msg};
        kvx_engine_foreach_room(re->e, kvx__rdma_decode_dead_one, &a);
        pthread_mutex_lock(&re->rx_mu);
        pthread_cond_broadcast(&re->rx_cv);
        pthread_mutex_unlock(&re->rx_mu);
    }
}

/* Tears down the data path of p: every queue pair to ERR, queued and
   in-flight WRITEs forgotten, and every room that used it failed (a
   local failure: the peer is told). */
#define kvx__rdma_pair_kill(re, p, res, ...) kvx__rdma_pair_down(re, p, res, 1, 0, __VA_ARGS__)

/* >>rdma: the queue-pair exchange ------------------------------------------------ */

/* A decode peer whose exchange is under way (under re->mu). */
#define KVX__RDMA_DIALING(pe) ((pe)->pair && KVX__LOAD(&(pe)->pair->state) == KVX__RP_CONNECTING)

/* The queue pair entries of p, then this engine's port entries. */
static void kvx__rdma_put_qps(kvx__rdma_pair *p, kvx__buf *b) {
    int i;
    for (i = 0; i < p->nqp; i++) {
        kvx_rdma_qp_info qi;
        qi.qpn = p->qp[i].qp->qp_num;
        qi.psn = p->qp[i].psn;
        qi.dev = (uint16_t)(p->qp[i].dev - p->re->dev);
        kvx__rdma_put_qp(b, &qi);
    }
    for (i = 0; i < p->re->ndev; i++) kvx__rdma_put_port(b, &p->re->dev[i].info);
}

/* CONNECT: our queue pairs, ports and registered regions. */
/* Buffer i of l in the CONNECT order (KV, aux, state): base, length, item_len. */
static void kvx__rdma_buf_of(const kvx_layout *l, uint32_t i, const void **base, uint64_t *len,
                             uint64_t *item) {
    const void *bs;
    uint64_t ln, it;
    if (i < l->num_buffers) {
        bs = l->buffers[i].base; ln = l->buffers[i].length; it = l->buffers[i].item_len;
    } else if ((i -= l->num_buffers) < l->num_aux) {
        bs = l->aux[i].base; ln = l->aux[i].length; it = l->aux[i].item_len;
    } else {
        i -= l->num_aux;
        bs = l->state[i].base; ln = l->state[i].length; it = l->state[i].item_len;
    }
    if (base) *base = bs;
    if (len) *len = ln;
    if (item) *item = it;
}

static void kvx__rdma_cm_connect(kvx__rdma_engine *re, kvx__rdma_pair *p, kvx__buf *b) {
    const kvx_layout *l = kvx_engine_layout(re->e);
    int d;
    uint32_t i, k, ns = l->state ? l->num_state : 0;
    kvx__rdma_cm_begin(b, KVX_RDMA_CM_CONNECT, p->seq, re->instance, p->peer);
    kvx__buf_put64(b, kvx_layout_fingerprint(l));
    kvx__buf_put16(b, (uint16_t)p->nqp);
    kvx__buf_put16(b, (uint16_t)re->ndev);
    kvx__buf_put32(b, l->num_buffers);
    kvx__buf_put32(b, l->num_aux);
    kvx__buf_put32(b, ns);
    kvx__rdma_put_qps(p, b);
    for (d = 0; d < re->ndev; d++) {
        kvx__rdma_dev *dv = &re->dev[d];
        kvx__buf_put64(b, dv->region_bytes);
        for (i = 0; i < KVX__RDMA_NBUF(l); i++) {
            const kvx__rdma_mr *m = &dv->buf[i];
            const void *base;
            uint64_t len;
            kvx__rdma_buf_of(l, i, &base, &len, NULL);
            kvx__buf_put64(b, (uint64_t)(uintptr_t)base);
            kvx__buf_put64(b, len);
            kvx__buf_put32(b, m->n);
            for (k = 0; k < m->n; k++) kvx__buf_put32(b, m->mr[k]->rkey);
        }
    }
    kvx__buf_put32(b, l->page_size);
    kvx__buf_put32(b, l->num_kv_heads);
    kvx__buf_put32(b, l->dtype_size);
    kvx__buf_put32(b, l->head_begin);
    kvx__buf_put32(b, l->layer_begin);
    kvx__buf_put32(b, l->mla ? 1u : 0u);
    kvx__buf_put32(b, ns ? l->state_type : 0u);
    kvx__buf_put32(b, 0);
    for (i = 0; i < KVX__RDMA_NBUF(l); i++) {
        uint64_t item;
        kvx__rdma_buf_of(l, i, NULL, NULL, &item);
        kvx__buf_put64(b, item);
    }
    kvx__buf_put64(b, p->stage ? p->stage->len : 0);
    for (d = 0; p->stage && d < re->ndev; d++) {
        const kvx__rdma_mr *m = &p->stage->mr[d];
        kvx__buf_put64(b, (uint64_t)(uintptr_t)p->stage->mem);
        kvx__buf_put32(b, m->n);
        for (k = 0; k < m->n; k++) kvx__buf_put32(b, m->mr[k]->rkey);
    }
}

/* Decode: does the prefill of shape `sh` write heads at an offset inside
   our rows (a strided destination), which needs a staging area? Host
   pools only (this side scatters with the CPU). */
static int kvx__rdma_needs_stage(const kvx_layout *own, const kvx_layout *sh) {
    uint64_t bpp = 0;
    uint32_t i;
    kvx_layout o = *own, s = *sh; /* KV pages only: state never goes through the area */
    if (own->mla || !sh->num_buffers || sh->mla || sh->num_kv_heads >= own->num_kv_heads) return 0;
    for (i = 0; i < own->num_buffers; i++)
        if (own->buffers[i].mem != KVX_MEM_HOST) return 0;
    o.state = s.state = NULL;
    o.num_state = s.num_state = o.state_type = s.state_type = 0;
    return kvx_layout_overlap(&s, &o, &bpp, NULL, NULL, 0) == KVX_OK && bpp;
}

static void kvx__rdma_stage_free(kvx__rdma_engine *re, kvx__rdma_stage *st) {
    int d;
    uint32_t k;
    for (d = 0; d < KVX_RDMA_MAX_DEVS; d++) {
        for (k = 0; k < st->mr[d].n; k++)
            if (st->mr[d].mr[k]) re->v.dereg_mr(st->mr[d].mr[k]);
        kvx_engine_free(re->e, st->mr[d].mr);
    }
    kvx_engine_free(re->e, st->mem);
    kvx_engine_free(re->e, st->bufs);
    kvx_engine_free(re->e, st);
}

/* Decode (the exchange worker): the staging area for prefill `inst` of
   shape sh, made and registered on every port the first time. */
static kvx__rdma_stage *kvx__rdma_stage_get(kvx__rdma_engine *re, uint64_t inst,
                                            const kvx_layout *sh, char *why, size_t wl) {
    const kvx_layout *own = kvx_engine_layout(re->e);
    uint64_t pages = kvx_layout_num_pages(own), off = 0;
    kvx__rdma_stage *st = kvx__rdma_stage_find(re, inst);
    uint32_t i;
    int d;
    if (st) return st;
    if (!(st = (kvx__rdma_stage *)kvx__rdma_zalloc(re, 1, sizeof *st))) return NULL;
    st->instance = inst;
    st->layout = *sh;
    st->len = pages * kvx_layout_page_bytes(sh);
    st->bufs = (kvx_buffer *)kvx__rdma_zalloc(re, sh->num_buffers, sizeof *st->bufs);
    st->mem = st->len ? (char *)kvx_engine_alloc(re->e, (size_t)st->len) : NULL;
    if (!st->bufs || !st->mem) {
        kvx__set_why(why, wl, "out of memory for a staging area of %llu bytes",
                     (unsigned long long)st->len);
        kvx__rdma_stage_free(re, st);
        return NULL;
    }
    st->layout.buffers = st->bufs;
    for (i = 0; i < sh->num_buffers; i++) {
        st->bufs[i].item_len = sh->buffers[i].item_len;
        st->bufs[i].length = pages * sh->buffers[i].item_len;
        st->bufs[i].base = st->mem + off;
        off += st->bufs[i].length;
    }
    for (d = 0; d < re->ndev; d++)
        if (kvx__rdma_reg(re, &re->dev[d], &st->mr[d], st->mem, st->len, KVX_MEM_HOST, 0,
                          IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE, "staging area", 0, why,
                          wl) != KVX_OK) {
            kvx__rdma_stage_free(re, st);
            return NULL;
        }
    pthread_mutex_lock(&re->mu);
    st->next = re->stages;
    __atomic_store_n(&re->stages, st, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&re->mu);
    return st;
}

/* Sends the message in b on the control connection `to`. */
static kvx_result kvx__rdma_send_buf(kvx__rdma_engine *re, const kvx_boot_peer *to, kvx__buf *b,
                                     char *why, size_t wl) {
    if (b->oom) { kvx__set_why(why, wl, "out of memory"); return KVX_ERR_NO_MEMORY; }
    if (b->len > KVX_RDMA_CM_MAX) {
        kvx__set_why(why, wl, "the exchange message is %zu bytes, more than KVX_BOOT_MAX_MESSAGE "
                     "(%u): too many registered regions (a device with a small max_mr_size?) or "
                     "ports", b->len, (unsigned)KVX_RDMA_CM_MAX);
        return KVX_ERR_INVALID_ARGUMENT;
    }
    return kvx_boot_peer_send(re->boot, to, b->data, b->len, why, wl);
}

/* Tells the peer of an exchange why this side gives it up. */
static void kvx__rdma_send_reject(kvx__rdma_engine *re, const kvx_boot_peer *to, uint32_t seq,
                                  uint64_t peer, kvx_result res, const char *reason) {
    kvx__buf b;
    char err[160];
    kvx__buf_init(&b, &kvx_engine_settings(re->e)->allocator);
    kvx__rdma_cm_reject(&b, seq, re->instance, peer, res, reason);
    kvx__rdma_send_buf(re, to, &b, err, sizeof err);
    kvx__buf_free(&b);
}

/* Prefill: the decode side's regions from a CONNECT, and its pool as a
   layout for kvx_plan_pages. */
/* Prefill: the staging area a decode side announced, checked: exactly its
   page count times our page bytes, in our shape (kvx__rdma_stage). */
static kvx_result kvx__rdma_stage_tables(kvx__rdma_pair *p, const kvx_rdma_cm_msg *m,
                                         const kvx_layout *ours, char *why, size_t wl) {
    kvx__rdma_engine *re = p->re;
    uint64_t pages = kvx_layout_num_pages(&p->peer_layout), off = 0;
    uint32_t d, i, k;
    if (pages > UINT64_MAX / kvx_layout_page_bytes(ours) ||
        m->stage_len != pages * kvx_layout_page_bytes(ours)) {
        kvx__set_why(why, wl, "the decode side's staging area is %llu bytes; its %llu pages of "
                     "this rank's %llu page bytes need %llu", (unsigned long long)m->stage_len,
                     (unsigned long long)pages, (unsigned long long)kvx_layout_page_bytes(ours),
                     (unsigned long long)(pages * kvx_layout_page_bytes(ours)));
        return KVX_ERR_PROTOCOL;
    }
    p->stage_bufs = (kvx_buffer *)kvx__rdma_zalloc(re, ours->num_buffers, sizeof *p->stage_bufs);
    p->stage_off = (uint64_t *)kvx__rdma_zalloc(re, ours->num_buffers, sizeof *p->stage_off);
    if (!p->stage_bufs || !p->stage_off) return KVX_ERR_NO_MEMORY;
    p->stage_layout = *ours;
    p->stage_layout.buffers = p->stage_bufs;
    p->stage_layout.aux = NULL;
    p->stage_layout.num_aux = 0;
    p->stage_layout.state = NULL;
    p->stage_layout.num_state = p->stage_layout.state_type = 0;
    for (i = 0; i < ours->num_buffers; i++) {
        p->stage_bufs[i].item_len = ours->buffers[i].item_len;
        p->stage_bufs[i].length = pages * ours->buffers[i].item_len;
        p->stage_off[i] = off;
        off += p->stage_bufs[i].length;
    }
    for (d = 0; d < m->ndev; d++) {
        kvx__rdma_rbuf *sb = &p->rdev[d].stage;
        const uint8_t *keys;
        kvx_rdma_cm_stage(m, d, &sb->base, &sb->n, &keys);
        sb->length = m->stage_len;
        sb->rkeys = (uint32_t *)kvx__rdma_zalloc(re, sb->n, sizeof *sb->rkeys);
        if (!sb->rkeys) return KVX_ERR_NO_MEMORY;
        for (k = 0; k < sb->n; k++) sb->rkeys[k] = kvx_rdma_cm_rkey(keys, k);
    }
    return KVX_OK;
}

static kvx_result kvx__rdma_pair_tables(kvx__rdma_pair *p, const kvx_rdma_cm_msg *m,
                                        const kvx_layout *ours, char *why, size_t wl) {
    kvx__rdma_engine *re = p->re;
    uint32_t d, i, k;
    p->rdev = (kvx__rdma_rdev *)kvx__rdma_zalloc(re, m->ndev, sizeof *p->rdev);
    p->peer_bufs = (kvx_buffer *)kvx__rdma_zalloc(re, m->nbuf, sizeof *p->peer_bufs);
    p->peer_aux = (kvx_aux_buffer *)kvx__rdma_zalloc(re, m->naux, sizeof *p->peer_aux);
    p->peer_state = (kvx_buffer *)kvx__rdma_zalloc(re, m->nstate, sizeof *p->peer_state);
    if (!p->rdev || !p->peer_bufs || !p->peer_aux || !p->peer_state) return KVX_ERR_NO_MEMORY;
    p->nrdev = m->ndev; /* pair_destroy walks nrdev entries */
    p->peer_layout = *ours; /* the dtype name: kvx_boot compared kv_cache_dtype */
    p->peer_layout.buffers = p->peer_bufs;
    p->peer_layout.aux = p->peer_aux;
    p->peer_layout.state = p->peer_state;
    p->peer_layout.num_buffers = m->nbuf;
    p->peer_layout.num_aux = m->naux;
    p->peer_layout.num_state = m->nstate;
    p->peer_layout.state_type = m->state_type;
    p->peer_layout.page_size = m->page_size;
    p->peer_layout.num_kv_heads = m->num_kv_heads;
    p->peer_layout.dtype_size = m->dtype_size;
    p->peer_layout.head_begin = m->head_begin;
    p->peer_layout.layer_begin = m->layer_begin;
    p->peer_layout.mla = (int)m->mla;
    for (d = 0; d < m->ndev; d++) {
        kvx__rdma_rdev *rd = &p->rdev[d];
        rd->info = m->dev[d];
        rd->buf = (kvx__rdma_rbuf *)kvx__rdma_zalloc(re, m->nbuf + m->naux + m->nstate, sizeof *rd->buf);
        if (!rd->buf) return KVX_ERR_NO_MEMORY;
        for (i = 0; i < m->nbuf + m->naux + m->nstate; i++) {
            int aux = i >= m->nbuf, st = i >= m->nbuf + m->naux;
            uint32_t j = st ? i - m->nbuf - m->naux : aux ? i - m->nbuf : i;
            kvx__rdma_rbuf *rb = &rd->buf[i];
            const uint8_t *keys;
            uint64_t item = kvx_rdma_cm_item(m, i);
            kvx_rdma_cm_region(m, d, i, &rb->base, &rb->length, &rd->region_bytes, &rb->n, &keys);
            if (rb->length < item) {
                kvx__set_why(why, wl, "the decode side's %s buffer %u is %llu bytes, less than one "
                             "item of %llu", st ? "state" : aux ? "aux" : "KV", j,
                             (unsigned long long)rb->length, (unsigned long long)item);
                return KVX_ERR_LAYOUT_MISMATCH;
            }
            rb->rkeys = (uint32_t *)kvx__rdma_zalloc(re, rb->n, sizeof *rb->rkeys);
            if (!rb->rkeys) return KVX_ERR_NO_MEMORY;
            for (k = 0; k < rb->n; k++) rb->rkeys[k] = kvx_rdma_cm_rkey(keys, k);
            if (d && rb->length != p->rdev[0].buf[i].length) {
                kvx__set_why(why, wl, "the decode side registered buffer %u with different "
                             "lengths on different ports", i);
                return KVX_ERR_PROTOCOL;
            }
            if (st) {
                p->peer_state[j].length = rb->length;
                p->peer_state[j].item_len = item;
            } else if (aux) {
                p->peer_aux[j].length = rb->length;
                p->peer_aux[j].item_len = item;
            } else {
                p->peer_bufs[i].length = rb->length;
                p->peer_bufs[i].item_len = item;
            }
        }
    }
    return m->stage_len ? kvx__rdma_stage_tables(p, m, ours, why, wl) : KVX_OK;
}

static void kvx__rdma_publish(kvx__rdma_engine *re, kvx__rdma_pair *p);

/* Decode: creates the queue pairs of p and sends CONNECT (a worker job;
   the ACCEPT arrives as a message). */
static void kvx__rdma_dial_job(void *arg) {
    kvx__rdma_pair *p = (kvx__rdma_pair *)arg;
    kvx__rdma_engine *re = p->re;
    kvx__buf b;
    char why[KVX_ERROR_MAX] = "";
    kvx_result res = KVX_OK;
    int i;
    kvx__buf_init(&b, &kvx_engine_settings(re->e)->allocator);
    for (i = 0; i < p->nqp && res == KVX_OK; i++) res = kvx__rdma_qp_create(re, &p->qp[i], why, sizeof why);
    if (res == KVX_OK && kvx__rdma_needs_stage(kvx_engine_layout(re->e), &p->peer_layout) &&
        !(p->stage = kvx__rdma_stage_get(re, p->peer, &p->peer_layout, why, sizeof why)))
        res = KVX_ERR_NO_MEMORY;
    if (res == KVX_OK) {
        kvx__rdma_cm_connect(re, p, &b);
        res = kvx__rdma_send_buf(re, &p->ctl, &b, why, sizeof why);
    }
    kvx__buf_free(&b);
    if (res != KVX_OK) {
        KVX__RDMA_STAT(re, errors, 1);
        kvx__rdma_pair_kill(re, p, res, "cannot set up RDMA queue pairs with %s: %s", p->peer_addr,
                           why);
    }
    kvx__rdma_pair_unref(re, p);
}

/* Names a peer rank for sentences: "prefill 10.0.0.2:41234 (tp rank 1 of
   4, pp rank 0 of 2)", so a decode room's failure says which contributor. */
static void kvx__rdma_who(char *out, size_t n, int prefill, const char *addr,
                          const kvx_boot_peer *pe) {
    snprintf(out, n, "%s %s (tp rank %d of %d, pp rank %d of %d)", prefill ? "prefill" : "decode",
             addr ? addr : "?", pe->tp_rank, pe->tp_size > 0 ? pe->tp_size : 1, pe->pp_rank,
             pe->pp_size > 0 ? pe->pp_size : 1);
}

/* Decode: starts an exchange with pe (under re->mu). */
static void kvx__rdma_dial_locked(kvx__rdma_engine *re, kvx__rdma_peer *pe) {
    kvx__rdma_pair *p;
    int nqp = re->cfg.qps;
    char addr[160];
    if (re->stopping || KVX__RDMA_DIALING(pe)) return;
    if (pe->hello.qps > nqp) nqp = pe->hello.qps;
    if (re->ndev > nqp) nqp = re->ndev;
    if (pe->hello.ndev > nqp) nqp = pe->hello.ndev;
    if (nqp > KVX_RDMA_MAX_QPS) nqp = KVX_RDMA_MAX_QPS;
    kvx__rdma_who(addr, sizeof addr, 1, pe->addr, &pe->ctl);
    p = kvx__rdma_pair_new(re, nqp, pe->instance, addr);
    if (!p) return;
    snprintf(p->bootstrap, sizeof p->bootstrap, "%s", pe->bootstrap);
    p->dp_rank = pe->dp_rank;
    p->dp_size = pe->dp_size;
    p->ctl = pe->ctl;
    if (pe->shape.num_buffers &&
        (p->peer_bufs = (kvx_buffer *)kvx__rdma_zalloc(re, pe->shape.num_buffers, sizeof *p->peer_bufs))) {
        p->peer_layout = pe->shape;
        p->peer_layout.buffers = p->peer_bufs;
        memcpy(p->peer_bufs, pe->shape_bufs, pe->shape.num_buffers * sizeof *p->peer_bufs);
    }
    p->seq = ++re->seq;
    p->deadline = kvx_now_ns() + (uint64_t)(re->cfg.connect_timeout_s * 1e9);
    kvx__rdma_pair_ref(p); /* the job's */
    /* the list's reference is p's first; the old pair leaves the list */
    if (pe->pair && pe->pair->listed) {
        kvx__rdma_pair **pp;
        for (pp = &re->pairs; *pp; pp = &(*pp)->next)
            if (*pp == pe->pair) { *pp = pe->pair->next; break; }
        pe->pair->listed = 0;
        kvx__rdma_pair_unref(re, pe->pair);
    }
    p->next = re->pairs;
    re->pairs = p;
    p->listed = 1;
    pe->pair = p;
    if (kvx__workq_submit(re->cmq, kvx__rdma_dial_job, p) != KVX_OK) {
        KVX__STORE(&p->state, KVX__RP_DEAD);
        snprintf(p->reason, sizeof p->reason, "out of memory queueing the exchange");
        kvx__rdma_pair_unref(re, p);
    }
}

/* Prefill: moves every pair with decode instance `decode` (or only the one
   answering seq when seq != 0) off `list` (under re->mu) onto *out. */
static void kvx__rdma_take(kvx__rdma_pair **list, uint64_t decode, uint32_t seq, kvx__rdma_pair **out) {
    kvx__rdma_pair **pp;
    for (pp = list; *pp;) {
        kvx__rdma_pair *o = *pp;
        if (o->peer == decode && (!seq || o->seq == seq)) {
            *pp = o->next;
            o->listed = 0;
            o->grave_next = *out;
            *out = o;
            continue;
        }
        pp = &o->next;
    }
}

/* Takes down the pairs of `old` (a grave_next list whose references it
   drops); fmt has one %s: who, or with who NULL each pair's address. */
static void kvx__rdma_kill_all(kvx__rdma_engine *re, kvx__rdma_pair *old, kvx_result res,
                               int remote, const char *fmt, const char *who) {
    while (old) {
        kvx__rdma_pair *o = old;
        old = o->grave_next;
        kvx__rdma_pair_down(re, o, res, 1, remote, fmt, who ? who : o->peer_addr);
        kvx__rdma_pair_unref(re, o);
    }
}

/* Prefill: a CONNECT from the decode engine of control connection `from`.
   Its older connections go first, so a room frame it sends once connected
   is never planned on one it is replacing. */
static kvx_result kvx__rdma_on_connect_msg(kvx__rdma_engine *re, const kvx_boot_peer *from,
                                           const kvx_rdma_cm_msg *m, const char *who, char *why,
                                           size_t wl) {
    const kvx_layout *l = kvx_engine_layout(re->e);
    kvx__rdma_pair *p, *old = NULL;
    kvx__buf b;
    kvx_result res;
    int i;
    if (m->naux != l->num_aux) {
        kvx__set_why(why, wl, "the decode side has %u aux buffers, this prefill %u", m->naux,
                     l->num_aux);
        return KVX_ERR_LAYOUT_MISMATCH;
    }
    pthread_mutex_lock(&re->mu);
    kvx__rdma_take(&re->pairs, m->from, 0, &old);
    kvx__rdma_take(&re->acc, m->from, 0, &old);
    pthread_mutex_unlock(&re->mu);
    kvx__rdma_kill_all(re, old, KVX_ERR_TRANSPORT, 0,
                       "%s reconnected: its previous RDMA connection is gone", who);
    p = kvx__rdma_pair_new(re, m->nqp, m->from, who);
    if (!p) { kvx__set_why(why, wl, "out of memory"); return KVX_ERR_NO_MEMORY; }
    p->peer_qpn0 = m->qp[0].qpn;
    p->seq = m->seq;
    p->ctl = *from;
    p->ctl.addr = NULL; /* the message's; on_message cleared the other strings */
    res = kvx__rdma_pair_tables(p, m, l, why, wl);
    if (res == KVX_OK) { /* the shapes combine (a rank with nothing in common still connects) */
        char ow[KVX_ERROR_MAX];
        res = kvx_layout_overlap(l, &p->peer_layout, NULL, NULL, ow, sizeof ow);
        if (res != KVX_OK) kvx__set_why(why, wl, "the decode side's KV layout: %s", ow);
    }
    for (i = 0; res == KVX_OK && i < p->nqp; i++) {
        res = kvx__rdma_qp_create(re, &p->qp[i], why, wl);
        if (res == KVX_OK) res = kvx__rdma_qp_connect(re, &p->qp[i], m, why, wl);
    }
    if (res != KVX_OK) {
        kvx__rdma_pair_unref(re, p);
        return res;
    }
    kvx__buf_init(&b, &kvx_engine_settings(re->e)->allocator);
    kvx__rdma_cm_begin(&b, KVX_RDMA_CM_ACCEPT, p->seq, re->instance, p->peer);
    kvx__buf_put16(&b, (uint16_t)p->nqp);
    kvx__buf_put16(&b, (uint16_t)re->ndev);
    kvx__buf_put32(&b, 0);
    kvx__rdma_put_qps(p, &b);
    pthread_mutex_lock(&re->mu);
    p->deadline = kvx_now_ns() + (uint64_t)(re->cfg.connect_timeout_s * 1e9);
    p->next = re->acc;
    re->acc = p;
    pthread_mutex_unlock(&re->mu);
    res = kvx__rdma_send_buf(re, from, &b, why, wl);
    kvx__buf_free(&b);
    return res; /* on failure the disconnect or the deadline retires p */
}

/* Decode: the prefill's ACCEPT of exchange p: our side to RTS, READY. */
static kvx_result kvx__rdma_on_accept_msg(kvx__rdma_engine *re, kvx__rdma_pair *p,
                                          const kvx_rdma_cm_msg *m, char *why, size_t wl) {
    kvx__buf b;
    kvx_result res = KVX_OK;
    int i, cur = KVX__RP_CONNECTING;
    if (m->nqp != p->nqp) {
        kvx__set_why(why, wl, "%s answered with %u queue pairs, %d asked", p->peer_addr, m->nqp,
                     p->nqp);
        return KVX_ERR_PROTOCOL;
    }
    for (i = 0; res == KVX_OK && i < p->nqp; i++)
        res = kvx__rdma_qp_connect(re, &p->qp[i], m, why, wl);
    if (res != KVX_OK) return res;
    kvx__buf_init(&b, &kvx_engine_settings(re->e)->allocator);
    kvx__rdma_cm_begin(&b, KVX_RDMA_CM_READY, p->seq, re->instance, p->peer);
    res = kvx__rdma_send_buf(re, &p->ctl, &b, why, wl);
    kvx__buf_free(&b);
    if (res == KVX_OK && __atomic_compare_exchange_n(&p->state, &cur, KVX__RP_READY, 0,
                                                     __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
        KVX__RDMA_STAT(re, pairs, 1); /* our side is at RTS and the prefill may write */
        kvx_engine_log(re->e, KVX_LOG_INFO, "kvx.rdma", 0, "%s connected: %d queue pairs",
                       p->peer_addr, p->nqp);
    }
    return res;
}

/* One message from a peer's control connection (a worker job, so they
   are handled in the order they came). */
typedef struct kvx__rdma_msg {
    kvx__rdma_engine *re;
    kvx_boot_peer from;   /* conn_id and instance; addr points to addr */
    uint64_t inst;        /* the rdma instance of its endpoint (0: none) */
    char addr[96];
    size_t len;
    uint8_t data[1];
} kvx__rdma_msg;

static void kvx__rdma_refused(kvx__rdma_engine *re, const kvx__rdma_msg *mj, const kvx_rdma_cm_msg *m,
                              const char *why) {
    KVX__RDMA_STAT(re, cm_refused, 1);
    kvx_engine_log(re->e, re->refused_logged < 16 ? KVX_LOG_WARN : KVX_LOG_DEBUG, "kvx.rdma", 0,
                   "refused an exchange message from %s: %s%s", mj->addr, why,
                   re->refused_logged == 15 ? " (further ones are logged at debug level)" : "");
    re->refused_logged++;
    if (!m || m->type != KVX_RDMA_CM_REJECT)
        kvx__rdma_send_reject(re, &mj->from, m ? m->seq : 0, m ? m->from : 0, KVX_ERR_PERMISSION, why);
}

static void kvx__rdma_msg_job(void *arg) {
    kvx__rdma_msg *mj = (kvx__rdma_msg *)arg;
    kvx__rdma_engine *re = mj->re;
    kvx__rdma_pair *p = NULL;
    kvx_rdma_cm_msg m;
    char why[KVX_ERROR_MAX] = "", who[160];
    kvx_result res = kvx_rdma_cm_parse(mj->data, mj->len, &m, why, sizeof why);
    int decode = re->role == KVX_ROLE_DECODE;
    kvx__rdma_who(who, sizeof who, decode, mj->addr, &mj->from);
    if (res == KVX_OK && (!mj->inst || m.from != mj->inst || m.to != re->instance))
        snprintf(why, sizeof why, "the message is from instance %016llx to %016llx, but its "
                 "connection is %016llx's and this engine is %016llx",
                 (unsigned long long)m.from, (unsigned long long)m.to,
                 (unsigned long long)mj->inst, (unsigned long long)re->instance);
    else if (res == KVX_OK && (decode ? m.type == KVX_RDMA_CM_CONNECT || m.type == KVX_RDMA_CM_READY
                                      : m.type == KVX_RDMA_CM_ACCEPT))
        snprintf(why, sizeof why, "message type %d does not go to a %s engine", (int)m.type,
                 decode ? "decode" : "prefill");
    if (res != KVX_OK || why[0]) { /* malformed, from the wrong instance or wrong direction */
        kvx__rdma_refused(re, mj, res == KVX_OK ? &m : NULL, why);
        goto done;
    }
    if (!decode && m.type == KVX_RDMA_CM_CONNECT) {
        res = kvx__rdma_on_connect_msg(re, &mj->from, &m, who, why, sizeof why);
        if (res != KVX_OK) {
            KVX__RDMA_STAT(re, errors, 1);
            kvx_engine_log(re->e, KVX_LOG_ERROR, "kvx.rdma", 0,
                           "queue-pair exchange with %s failed: %s", who, why);
            kvx__rdma_send_reject(re, &mj->from, m.seq, m.from, res, why);
        }
        goto done;
    }
    /* the exchange in progress it answers */
    pthread_mutex_lock(&re->mu);
    if (decode) {
        kvx__rdma_peer *pe;
        for (pe = re->peers; pe && pe->instance != m.from; pe = pe->next) {}
        if (pe && KVX__RDMA_DIALING(pe) && pe->pair->seq == m.seq) {
            p = pe->pair;
            kvx__rdma_pair_ref(p);
        }
    } else {
        kvx__rdma_take(&re->acc, m.from, m.seq, &p); /* at most one: CONNECT retires the rest */
    }
    pthread_mutex_unlock(&re->mu);
    if (!p) {
        if (m.type != KVX_RDMA_CM_REJECT) {
            snprintf(why, sizeof why, "message type %d answers no exchange in progress (seq %u)",
                     (int)m.type, m.seq);
            kvx__rdma_refused(re, mj, &m, why);
        }
        goto done;
    }
    if (m.type == KVX_RDMA_CM_REJECT) {
        KVX__RDMA_STAT(re, errors, 1);
        kvx__rdma_pair_kill(re, p, m.result < 0 ? (kvx_result)m.result : KVX_ERR_PEER,
                           "%s refused the RDMA connection: %.*s", who, (int)m.reason_len, m.reason);
    } else if (decode) {
        res = kvx__rdma_on_accept_msg(re, p, &m, why, sizeof why);
        if (res != KVX_OK) {
            KVX__RDMA_STAT(re, errors, 1);
            kvx__rdma_send_reject(re, &p->ctl, p->seq, p->peer, res, why);
            kvx__rdma_pair_kill(re, p, res, "cannot set up RDMA queue pairs with %s: %s", who, why);
        }
    } else {
        kvx__rdma_publish(re, p); /* READY: it takes our reference */
        p = NULL;
    }
    kvx__rdma_pair_unref(re, p);
done:
    kvx_engine_free(re->e, mj);
}

/* kvx_boot hook (I/O thread): queue the message for the worker. */
static void kvx__rdma_on_message(kvx_boot *b, const kvx_boot_peer *peer, const void *msg, size_t len) {
    kvx__rdma_engine *re = (kvx__rdma_engine *)kvx_boot_user(b);
    kvx__rdma_msg *mj = (kvx__rdma_msg *)kvx_engine_alloc(re->e, sizeof *mj + len);
    kvx_rdma_hello h;
    char why[200];
    if (!mj) return;
    mj->re = re;
    mj->from = *peer;
    mj->inst = kvx_rdma_hello_parse(peer->endpoint, peer->endpoint_len, &h, why, sizeof why) == KVX_OK &&
               (int)h.role == (re->role == KVX_ROLE_PREFILL ? KVX_ROLE_DECODE : KVX_ROLE_PREFILL)
                   ? h.instance : 0;
    snprintf(mj->addr, sizeof mj->addr, "%s", peer->addr);
    mj->from.addr = mj->addr;
    mj->from.bootstrap = mj->from.transport = NULL;
    mj->from.endpoint = NULL;
    mj->len = len;
    memcpy(mj->data, msg, len);
    pthread_mutex_lock(&re->mu);
    if (re->stopping || kvx__workq_submit(re->cmq, kvx__rdma_msg_job, mj) != KVX_OK)
        kvx_engine_free(re->e, mj);
    pthread_mutex_unlock(&re->mu);
}

/* Completion thread: exchanges whose peer did not answer within
   KVX_IB_CONNECT_TIMEOUT fail (and the peer is told). Returns the ms the
   thread may sleep. */
static int kvx__rdma_exchange_tick(kvx__rdma_engine *re) {
    uint64_t now = kvx_now_ns(), next = now + 200000000ull;
    kvx__rdma_pair *late = NULL, *p, **pp;
    int decode = re->role == KVX_ROLE_DECODE;
    pthread_mutex_lock(&re->mu);
    /* decode: the listed pairs still connecting (they stay listed, a
       reference taken); prefill: the ACCEPTs awaiting READY (the list's
       reference goes with them) */
    for (pp = decode ? &re->pairs : &re->acc; (p = *pp) != NULL;) {
        int live = !decode || KVX__LOAD(&p->state) == KVX__RP_CONNECTING;
        if (!live || p->deadline > now) {
            if (live && p->deadline < next) next = p->deadline;
            pp = &p->next;
            continue;
        }
        if (decode) {
            kvx__rdma_pair_ref(p);
            pp = &p->next;
        } else {
            *pp = p->next;
        }
        p->late_next = late;
        late = p;
    }
    pthread_mutex_unlock(&re->mu);
    while (late) {
        char why[KVX_ERROR_MAX];
        p = late;
        late = p->late_next;
        snprintf(why, sizeof why, "%s did not answer the queue-pair exchange within %.1f s "
                 "(KVX_IB_CONNECT_TIMEOUT)", p->peer_addr, re->cfg.connect_timeout_s);
        KVX__RDMA_STAT(re, errors, 1);
        kvx__rdma_send_reject(re, &p->ctl, p->seq, p->peer, KVX_ERR_TIMEOUT, why);
        kvx__rdma_pair_kill(re, p, KVX_ERR_TIMEOUT, "%s", why);
        kvx__rdma_pair_unref(re, p);
    }
    return (int)((next - now) / 1000000u) + 1;
}

/* >>rdma: prefill data path ---------------------------------------------------------- */

#define KVX__RDMA_BATCH 128

static int kvx__rdma_work_done(const kvx__rdma_work *w) {
    if (!w->job || w->s >= w->job->plan.count || w->s > w->es) return 1;
    return w->s == w->es && w->off >= w->eoff;
}

/* Gathers the local side of one WRITE of span s from byte pos up to e
   (the remote side is contiguous): one entry per (part of a) row for a
   strided span, at most q->dev->max_sge; each entry inside one local
   region. Returns the end reached (> pos). */
static uint64_t kvx__rdma_gather(const kvx_layout *l, const kvx__rdma_qp *q, const kvx_span *s,
                                 uint32_t bi, uint64_t pos, uint64_t e, struct ibv_sge *sg,
                                 int *nsge) {
    uint64_t lrb = q->dev->region_bytes;
    uintptr_t base = (uintptr_t)kvx_span_addr(l, s, 0) - (uintptr_t)s->src_offset;
    int n = 0;
    while (pos < e && n < (int)q->dev->max_sge) {
        uint64_t k = s->row_len ? pos / s->row_len : 0, in = s->row_len ? pos % s->row_len : pos;
        uint64_t lo = s->src_offset + (s->row_len ? k * s->src_pitch : 0) + in;
        uint64_t take = e - pos;
        if (s->row_len && s->row_len - in < take) take = s->row_len - in;
        if ((lo / lrb + 1) * lrb - lo < take) take = (lo / lrb + 1) * lrb - lo;
        sg[n].addr = (uint64_t)(base + (uintptr_t)lo);
        sg[n].length = (uint32_t)take;
        sg[n].lkey = q->dev->buf[bi].mr[lo / lrb]->lkey;
        n++;
        pos += take;
    }
    *nsge = n;
    return pos;
}

/* Index of a span's buffer b of layout l in the CONNECT order (KV, aux, state). */
static uint32_t kvx__rdma_span_buf(const kvx_layout *l, const kvx_span *s, uint32_t b) {
    return b + (s->kind == KVX_SPAN_AUX ? l->num_buffers
                : s->kind == KVX_SPAN_STATE ? l->num_buffers + l->num_aux : 0);
}

/* Fills one WRITE from the head of w; returns 1 when w is exhausted. A
   strided span's rows go as scatter-gather entries of WRITEs to its
   contiguous destination (kvx__rdma_submit refuses a strided destination). */
static int kvx__rdma_fill(kvx__rdma_engine *re, kvx__rdma_qp *q, kvx__rdma_work *w,
                          struct ibv_send_wr *wr, struct ibv_sge *sg) {
    kvx__rdma_pair *p = q->pair;
    kvx__rdma_room *rr = w->room;
    const kvx_layout *l = kvx_engine_layout(re->e);
    const kvx__rdma_rdev *rd = &p->rdev[q->rdev];
    uint64_t seq = ++q->posted, len = 0;
    kvx__rdma_slot *slot = &q->ring[seq % q->depth];
    int last, fin, sig;
    memset(wr, 0, sizeof *wr);
    if (kvx__rdma_work_done(w)) { /* zero-length WRITE WITH IMMEDIATE: no sge */
        wr->wr.rdma.remote_addr = rd->buf[0].base;
        wr->wr.rdma.rkey = rd->buf[0].rkeys[0];
        last = 1;
        KVX__RDMA_STAT(re, zero_len_wrs, 1);
    } else {
        kvx_span tmp;
        const kvx_span *s = kvx_plan_span(&w->job->plan, w->s, &tmp);
        uint64_t limit = w->s == w->es ? w->eoff : s->length, pos = w->off;
        uint64_t ro = s->dst_offset + pos, rrb = rd->region_bytes, e;
        uint32_t bi = kvx__rdma_span_buf(l, s, s->buffer);
        uint32_t rbi = kvx__rdma_span_buf(&p->peer_layout, s, s->dst_buffer);
        const kvx__rdma_rbuf *rb = &rd->buf[rbi];
        int nsge = 0;
        if (w->job->stage) { /* whole pages into the staging area, at its buffer's offset */
            rb = &rd->stage;
            ro += p->stage_off[s->dst_buffer];
        }
        e = (pos / (uint64_t)re->cfg.max_msg + 1) * (uint64_t)re->cfg.max_msg;
        if (e > limit) e = limit;
        if ((ro / rrb + 1) * rrb - ro < e - pos) e = pos + ((ro / rrb + 1) * rrb - ro);
        e = kvx__rdma_gather(l, q, s, bi, pos, e, sg, &nsge);
        len = e - pos;
        wr->sg_list = sg;
        wr->num_sge = nsge;
        wr->wr.rdma.remote_addr = rb->base + ro;
        wr->wr.rdma.rkey = rb->rkeys[ro / rrb];
        w->off = e;
        if (w->off >= s->length) { w->s++; w->off = 0; }
        last = kvx__rdma_work_done(w);
    }
    fin = last && w->final;
    sig = fin || q->unsig + 1 >= (uint32_t)re->cfg.signal_every;
    wr->wr_id = seq;
    wr->opcode = fin ? IBV_WR_RDMA_WRITE_WITH_IMM : IBV_WR_RDMA_WRITE;
    if (fin) wr->imm_data = htonl(rr->tag);
    wr->send_flags = sig ? IBV_SEND_SIGNALED : 0;
    q->unsig = sig ? 0 : q->unsig + 1;
    slot->room = rr;
    slot->len = (uint32_t)len;
    slot->final = (uint32_t)fin;
    rr->inflight++;
    if (fin) rr->final_mask |= 1ull << q->idx;
    KVX__RDMA_STAT(re, bytes, len);
    if (fin) KVX__RDMA_STAT(re, imm_wrs, 1);
    if (sig) KVX__RDMA_STAT(re, signaled, 1);
    return last;
}

static void kvx__rdma_enqueue(kvx__rdma_qp *q, kvx__rdma_work *w, int front) {
    w->next = front ? q->head : NULL;
    if (front) q->head = w;
    else if (q->tail) q->tail->next = w;
    else q->head = w;
    if (!front || !q->tail) q->tail = w;
}

/* Stops a room's data: its queued WRITEs go, and each queue pair that has
   not carried the room's last WRITE gets a zero-length WRITE WITH
   IMMEDIATE (a fence) so the decode side knows nothing more will land. */
static void kvx__rdma_cancel_locked(kvx__rdma_pair *p, kvx__rdma_room *rr) {
    kvx__rdma_engine *re = p->re;
    int i;
    if (rr->cancelled) return;
    rr->cancelled = 1;
    for (i = 0; i < p->nqp; i++) kvx__rdma_drop(re, &p->qp[i], rr);
    if (KVX__LOAD(&p->state) == KVX__RP_DEAD) return;
    for (i = 0; i < p->nqp; i++) {
        kvx__rdma_work *f;
        if (rr->final_mask & (1ull << i)) continue;
        f = (kvx__rdma_work *)kvx__rdma_zalloc(re, 1, sizeof *f);
        if (!f) continue; /* the receiver then waits KVX_IB_FENCE_TIMEOUT */
        f->room = rr;
        f->final = 1;
        f->owned = 1;
        rr->works++;
        kvx__rdma_enqueue(&p->qp[i], f, 1);
    }
}

/* Posts queued WRITEs of q while its send queue has room (under p->mu).
   0, or -1 with err set when ibv_post_send refused. */
static int kvx__rdma_pump(kvx__rdma_engine *re, kvx__rdma_qp *q, char *err, size_t el) {
    kvx__rdma_pair *p = q->pair;
    struct ibv_send_wr wr[KVX__RDMA_BATCH], *bad;
    struct ibv_sge sg[KVX__RDMA_BATCH][KVX__RDMA_MAX_SGE];
    while (q->head && KVX__LOAD(&p->state) != KVX__RP_DEAD) {
        uint64_t room = q->depth - (q->posted - q->done);
        int n = 0, i, rc, drop;
        while (n < KVX__RDMA_BATCH && (uint64_t)n < room && q->head) {
            kvx__rdma_work *w = q->head;
            if (!w->room->cancelled && kvx_room_poll(w->room->x.room) == KVX_POLL_FAILED) {
                kvx__rdma_cancel_locked(p, w->room);
                continue;
            }
            drop = w->room->cancelled && w->job; /* a cancelled room's data: dropped */
            if (drop || kvx__rdma_fill(re, q, w, &wr[n], sg[n])) {
                q->head = w->next;
                if (!q->head) q->tail = NULL;
                w->room->works--;
                kvx__rdma_work_free(re, w);
            }
            n += !drop;
        }
        if (!n) break;
        for (i = 0; i + 1 < n; i++) wr[i].next = &wr[i + 1];
        wr[n - 1].next = NULL;
        bad = NULL;
        rc = ibv_post_send(q->qp, wr, &bad);
        KVX__RDMA_STAT(re, posts, 1);
        KVX__RDMA_STAT(re, wrs, n);
        if (rc) {
            snprintf(err, el, "ibv_post_send of %d WRITEs on queue pair %u (%s port %u) to %s "
                     "failed: %s", n, q->qp->qp_num, q->dev->info.name, (unsigned)q->dev->info.port,
                     p->peer_addr, strerror(rc));
            return -1;
        }
    }
    return 0;
}

static int kvx__rdma_pump_all(kvx__rdma_engine *re, kvx__rdma_pair *p, char *err, size_t el) {
    int i;
    for (i = 0; i < p->nqp; i++)
        if (p->qp[i].head && kvx__rdma_pump(re, &p->qp[i], err, el)) return -1;
    return 0;
}

/* Cuts the plan's bytes into n contiguous ranges at piece boundaries
   (multiples of max_msg inside each span), as equal as possible. */
typedef struct kvx__rdma_pos {
    size_t s;
    uint64_t off;
} kvx__rdma_pos;

static void kvx__rdma_cuts(const kvx_plan *pl, uint64_t msg, int n, kvx__rdma_pos *cut) {
    uint64_t total = pl->total_bytes, acc = 0;
    size_t s;
    int j = 1;
    memset(cut, 0, sizeof *cut);
    for (s = 0; s < pl->count && j < n; s++) {
        kvx_span tmp;
        uint64_t off = 0, len = kvx_plan_span(pl, s, &tmp)->length;
        while (off < len && j < n) {
            uint64_t u = len - off < msg ? len - off : msg;
            acc += u;
            off += u;
            while (j < n && acc * (uint64_t)n >= total * (uint64_t)j) {
                cut[j].s = off < len ? s : s + 1;
                cut[j].off = off < len ? off : 0;
                j++;
            }
        }
    }
    for (; j <= n; j++) {
        cut[j].s = pl->count;
        cut[j].off = 0;
    }
}

static kvx__rdma_job *kvx__rdma_job_new(kvx__rdma_engine *re, int nworks) {
    size_t head = (sizeof(kvx__rdma_job) + 15) & ~(size_t)15;
    kvx__rdma_job *j =
        (kvx__rdma_job *)kvx__rdma_zalloc(re, 1, head + (size_t)nworks * sizeof(kvx__rdma_work));
    if (!j) return NULL;
    j->w = (kvx__rdma_work *)(void *)((char *)j + head);
    return j;
}

/* Aux rows after the room's KV WRITEs (under p->mu); on failure why
   (KVX_ERROR_MAX bytes) says why (a slot the decode side gave outside its
   aux pool, or memory). */
static kvx_result kvx__rdma_queue_aux(kvx__rdma_engine *re, kvx__rdma_pair *p,
                                      kvx__rdma_room *rr, char *why) {
    kvx__rdma_job *j = kvx__rdma_job_new(re, 1);
    const kvx_layout *l = kvx_engine_layout(re->e);
    uint32_t ns = 0;
    const int32_t *si = kvx_room_state(rr->x.room, &ns);
    const char *what = "aux rows";
    kvx_result r = j ? KVX_OK : KVX_ERR_NO_MEMORY;
    if (r == KVX_OK && rr->aux_rows)
        r = kvx_plan_aux(&j->plan, l, rr->x.src_aux, &p->peer_layout, rr->x.dst_aux);
    if (r == KVX_OK && rr->state_rows) { /* HYBRID STATE: with the aux rows, before Success */
        what = "state rows";
        r = kvx_plan_state(&j->plan, l, si, &p->peer_layout, rr->dst_state, ns);
    }
    if (r != KVX_OK) {
        kvx__set_why(why, KVX_ERROR_MAX, "%s to %s: %s", what, rr->decode_addr,
                     j ? j->plan.error : "out of memory");
        kvx__rdma_job_free(re, j);
        return r;
    }
    j->refs = 1;
    j->w[0].room = rr;
    j->w[0].job = j;
    j->w[0].es = j->plan.count;
    j->w[0].final = 1;
    rr->works++;
    KVX__RDMA_STAT(re, spans, j->plan.count);
    kvx__rdma_enqueue(&p->qp[0], &j->w[0], 0);
    return KVX_OK;
}

/* Moves a room on (under p->mu): aux once the other queue pairs carried
   their last KV WRITE; 1 when every WRITE of the room completed, a
   kvx_result < 0 with why filled when the aux rows could not be queued. */
static int kvx__rdma_room_step(kvx__rdma_engine *re, kvx__rdma_pair *p, kvx__rdma_room *rr,
                               char *why) {
    if (rr->finished || rr->cancelled || !rr->last_queued) return 0;
    if (rr->aux_needed && !rr->aux_queued && rr->others_pending <= 0) {
        kvx_result r = kvx__rdma_queue_aux(re, p, rr, why);
        if (r != KVX_OK) return (int)r;
        rr->aux_queued = 1;
    }
    rr->finished = !rr->works && !rr->inflight && (!rr->aux_needed || rr->aux_queued);
    return rr->finished;
}

/* Reports a finished room once every leg finished: status Success with the
   bytes (kvx_boot sends one count to every decode rank: each leg's; legs
   that moved different counts fail the room), then Success. */
static void kvx__rdma_finish(kvx__rdma_engine *re, kvx__rdma_room *leg, uint64_t bytes) {
    kvx__rdma_room *rr = leg->first ? leg->first : leg, *l;
    kvx_result res;
    int differ = 0;
    /* atomics, no lock: kvx__rdma_submit calls this holding its leg's x.mu;
       the leg list no longer changes once the room is sending */
    __atomic_store_n(&leg->leg_bytes, bytes, __ATOMIC_RELAXED);
    if (__atomic_add_fetch(&rr->legs_done, 1, __ATOMIC_ACQ_REL) < rr->nlegs) return;
    for (l = rr; l; l = l->leg_next)
        if (__atomic_load_n(&l->leg_bytes, __ATOMIC_RELAXED) != bytes) differ = 1;
    if (differ) {
        kvx_room_fail(rr->x.room, KVX_ERR_INVALID_ARGUMENT, "the decode ranks of room %llu received "
                      "different byte counts, and its status carries one",
                      (unsigned long long)rr->x.id);
        return;
    }
    res = kvx_boot_send_status(re->boot, rr->x.room, KVX_POLL_SUCCESS, KVX_OK, bytes, NULL);
    if (res != KVX_OK)
        kvx_room_fail_remote(rr->x.room, res, "every RDMA WRITE to %s completed but the status "
                             "cannot be sent: the control connection is gone", rr->decode_addr);
    else
        kvx_room_succeed(rr->x.room, bytes);
}

/* 1 when a span of the plan has a strided destination (the decode rank
   holds more heads than this prefill rank: prefill TP > decode TP). */
static int kvx__rdma_dst_strided(const kvx_plan *pl) {
    size_t i;
    for (i = 0; pl->strided && i < pl->count; i++) {
        kvx_span tmp;
        const kvx_span *s = kvx_plan_span(pl, i, &tmp);
        if (s->row_len && s->dst_pitch != s->row_len) return 1;
    }
    return 0;
}

/* HYBRID STATE, at the last chunk: both sides gave the same number of
   state indices (else the room fails saying both counts, and the decode
   side hears it in the status), and the state rows join the aux rows'
   tail job when this contributor writes aux (never an MLA dummy). */
static kvx_result kvx__rdma_state_last(kvx__rdma_room *rr) {
    uint32_t ns = 0;
    kvx_room_state(rr->x.room, &ns);
    if (ns != rr->ndst_state) {
        kvx_room_fail(rr->x.room, KVX_ERR_INVALID_ARGUMENT, "prefill sent %u state ind%s, %s "
                      "asked for %u", ns, ns == 1 ? "ex" : "ices", rr->decode_addr, rr->ndst_state);
        return KVX_ERR_INVALID_ARGUMENT;
    }
    rr->state_rows = rr->state_rows && ns > 0;
    if (rr->state_rows) rr->aux_needed = 1;
    return KVX_OK;
}

/* Plans one chunk, or one part of a layer-wise chunk (LAYER-WISE SEND: the
   part's layers only, at once, behind the earlier parts on the same queue
   pairs; the immediates and aux rows go with the room's last part), and
   queues it on the queue pairs (rr->mu held). */
static void kvx__rdma_submit(kvx__rdma_engine *re, kvx__rdma_room *rr, kvx_chunk *c) {
    kvx__rdma_pair *p = rr->pair;
    kvx_engine *e = re->e;
    kvx__rdma_job *j = kvx__rdma_job_new(re, p->nqp);
    kvx__rdma_pos cut[KVX_RDMA_MAX_QPS + 1];
    kvx_result res;
    char err[KVX_ERROR_MAX] = "", auxerr[KVX_ERROR_MAX];
    int i, fin = 0, bad = 0, step = 0;
    uint64_t bytes = 0;
    if (!j) {
        kvx_room_fail(rr->x.room, KVX_ERR_NO_MEMORY, "out of memory planning chunk %u", c->index);
        goto drop;
    }
    if ((uint64_t)c->first_page + c->num_pages > rr->ndst) {
        kvx_room_fail(rr->x.room, KVX_ERR_TOO_MANY_PAGES, "chunk %u reaches page %u but %s gave "
                      "%u destination pages", c->index, c->first_page + c->num_pages,
                      rr->decode_addr, rr->ndst);
        goto drop;
    }
    if (!rr->aux_checked) { /* aux rows come from one contributor (kvx_layout_overlap) */
        int sends_aux = 0;
        kvx_layout_overlap(kvx_engine_layout(e), &p->peer_layout, NULL, &sends_aux, NULL, 0);
        if (rr->dummy || !sends_aux) rr->aux_needed = rr->aux_rows = 0;
        rr->state_rows = !rr->dummy && sends_aux; /* until the last chunk: may send state */
        rr->aux_checked = 1;
    }
    if (c->is_last && kvx__rdma_state_last(rr) != KVX_OK) goto drop;
    j->plan.compact = 1; /* one run list for every buffer (COMPACT PLANS) */
    if (!(c->first_part && c->last_part)) { /* a part: only its layers' source buffers */
        j->plan.layer_begin = c->layer_begin;
        j->plan.layer_end = c->layer_end;
    }
    res = rr->dummy ? KVX_OK /* an MLA dummy: an empty plan, the immediates only */
                    : kvx_plan_pages(&j->plan, kvx_engine_layout(e), c->pages, &p->peer_layout,
                                     rr->dst + c->first_page, c->num_pages);
    if (res != KVX_OK) {
        kvx_room_fail(rr->x.room, res, "chunk %u against the destination of %s: %s", c->index,
                      rr->decode_addr, j->plan.error);
        goto drop;
    }
    if (kvx__rdma_dst_strided(&j->plan)) {
        /* our heads land at a head offset inside the decode rank's rows: whole
           pages go to its staging area instead, and it scatters them */
        if (!p->stage_bufs) {
            kvx_room_fail(rr->x.room, KVX_ERR_LAYOUT_MISMATCH, "%s holds more KV heads (%u from "
                          "head %u) than this prefill rank (%u from head %u) and announced no "
                          "staging area (its KV pool is not in host memory, or it is not a kvx "
                          "rdma engine of this version): one RDMA WRITE cannot scatter rows",
                          rr->decode_addr, p->peer_layout.num_kv_heads, p->peer_layout.head_begin,
                          kvx_engine_layout(e)->num_kv_heads, kvx_engine_layout(e)->head_begin);
            goto drop;
        }
        res = kvx_plan_pages(&j->plan, kvx_engine_layout(e), c->pages, &p->stage_layout,
                             rr->dst + c->first_page, c->num_pages);
        if (res != KVX_OK) {
            kvx_room_fail(rr->x.room, res, "chunk %u against the staging area of %s: %s", c->index,
                          rr->decode_addr, j->plan.error);
            goto drop;
        }
        j->stage = 1;
    }
    KVX__RDMA_STAT(re, parts, 1);
    if (c->last_part) KVX__RDMA_STAT(re, chunks, 1); /* a part is not a chunk */
    KVX__RDMA_STAT(re, spans, j->plan.count);
    kvx__rdma_cuts(&j->plan, (uint64_t)re->cfg.max_msg, p->nqp, cut);
    pthread_mutex_lock(&p->mu);
    if (KVX__LOAD(&p->state) == KVX__RP_DEAD || rr->cancelled) {
        pthread_mutex_unlock(&p->mu);
        goto drop;
    }
    for (i = 0; i < p->nqp; i++) {
        kvx__rdma_work *w = &j->w[i];
        w->room = rr;
        w->job = j;
        w->s = cut[i].s;
        w->off = cut[i].off;
        w->es = cut[i + 1].s;
        w->eoff = cut[i + 1].off;
        w->final = c->is_last && (i != 0 || !rr->aux_needed);
        if (kvx__rdma_work_done(w) && !w->final) continue;
        j->refs++;
        rr->works++;
        kvx__rdma_enqueue(&p->qp[i], w, 0);
    }
    if (c->is_last) {
        rr->last_queued = 1;
        rr->others_pending = rr->aux_needed ? p->nqp - 1 : 0;
    }
    if (!j->refs) kvx__rdma_job_free(re, j);
    step = kvx__rdma_room_step(re, p, rr, auxerr);
    if (step > 0) { fin = 1; bytes = rr->bytes_done; }
    if (kvx__rdma_pump_all(re, p, err, sizeof err)) bad = 1;
    pthread_mutex_unlock(&p->mu);
    kvx_chunk_free(e, c);
    if (step < 0) kvx_room_fail(rr->x.room, (kvx_result)step, "%s", auxerr);
    if (bad) kvx__rdma_pair_kill(re, p, KVX_ERR_TRANSPORT, "%s", err);
    if (fin) kvx__rdma_finish(re, rr, bytes);
    return;
drop:
    kvx__rdma_job_free(re, j);
    kvx_chunk_free(e, c);
}

/* Moves the parked rooms (under re->mu) that wait for decode engine
   `decode`, or with decode 0 those whose wait ended at `now` or that failed,
   onto *out. */
static void kvx__rdma_unpark(kvx__rdma_engine *re, uint64_t decode, uint64_t now,
                             kvx__rdma_room **out) {
    kvx__rdma_room **pp = &re->parked, *rr;
    while ((rr = *pp) != NULL) {
        if (decode ? rr->decode != decode
                   : now <= rr->park_deadline && kvx_room_poll(rr->x.room) != KVX_POLL_FAILED) {
            pp = &rr->lnext;
            continue;
        }
        *pp = rr->lnext;
        rr->parked = 0;
        rr->lnext = *out;
        *out = rr;
    }
}

/* Attaches a prefill room to a ready connection and sends what was parked. */
static void kvx__rdma_attach(kvx__rdma_engine *re, kvx__rdma_room *rr, kvx__rdma_pair *p) {
    uint32_t i;
    pthread_mutex_lock(&rr->x.mu);
    if (rr->pair || kvx_room_closed(rr->x.room)) {
        pthread_mutex_unlock(&rr->x.mu);
        return;
    }
    pthread_mutex_lock(&p->mu);
    if (KVX__LOAD(&p->state) == KVX__RP_DEAD) {
        char why[KVX_ERROR_MAX];
        snprintf(why, sizeof why, "%s", p->reason);
        pthread_mutex_unlock(&p->mu);
        pthread_mutex_unlock(&rr->x.mu);
        kvx_room_fail(rr->x.room, KVX_ERR_TRANSPORT, "%s", why);
        return;
    }
    kvx__rdma_pair_ref(p);
    rr->pair = p;
    rr->pnext = p->rooms;
    rr->pprev = NULL;
    if (p->rooms) p->rooms->pprev = rr;
    p->rooms = rr;
    pthread_mutex_unlock(&p->mu);
    for (i = 0; i < rr->nchunks; i++) kvx__rdma_submit(re, rr, rr->chunks[i]);
    rr->nchunks = 0;
    pthread_mutex_unlock(&rr->x.mu);
}

/* Prefill: a decode engine finished the exchange; p replaces any older
   connection with it and the rooms waiting for it start. */
static void kvx__rdma_publish(kvx__rdma_engine *re, kvx__rdma_pair *p) {
    kvx__rdma_pair *old = NULL;
    kvx__rdma_room *start = NULL, *rr;
    int cur = KVX__RP_CONNECTING;
    pthread_mutex_lock(&re->mu);
    /* a pair killed meanwhile (an async error) stays dead */
    if (re->stopping || !__atomic_compare_exchange_n(&p->state, &cur, KVX__RP_READY, 0,
                                                     __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
        pthread_mutex_unlock(&re->mu);
        kvx__rdma_pair_unref(re, p);
        return;
    }
    kvx__rdma_take(&re->pairs, p->peer, 0, &old);
    p->next = re->pairs;
    re->pairs = p;
    p->listed = 1;
    kvx__rdma_unpark(re, p->peer, 0, &start);
    kvx__rdma_pair_ref(p);
    pthread_mutex_unlock(&re->mu);
    KVX__RDMA_STAT(re, pairs, 1);
    kvx_engine_log(re->e, KVX_LOG_INFO, "kvx.rdma", 0, "%s connected: %d queue pairs", p->peer_addr,
                   p->nqp);
    kvx__rdma_kill_all(re, old, KVX_ERR_PEER, 0, "the connection with %s was replaced by a new one",
                       NULL);
    while (start) {
        rr = start;
        start = rr->lnext;
        kvx__rdma_attach(re, rr, p);
        kvx_room_unref(rr->x.room);
    }
    kvx__rdma_pair_unref(re, p);
}

/* Confirms WRITEs up to sequence `upto` on q (under p->mu). */
static void kvx__rdma_confirm(kvx__rdma_qp *q, uint64_t upto, kvx__rdma_room **touched) {
    if (upto > q->posted) return;
    while (q->done < upto) {
        kvx__rdma_slot *s = &q->ring[++q->done % q->depth];
        kvx__rdma_room *rr = s->room;
        if (!rr) continue;
        rr->inflight--;
        rr->bytes_done += s->len;
        if (s->final && q->idx != 0) rr->others_pending--;
        if (!rr->touched) {
            rr->touched = 1;
            rr->tnext = *touched;
            *touched = rr;
        }
        s->room = NULL;
    }
}

/* How much a completion status says about the cause: a flush only that
   the queue pair is in error, retry-exceeded only that the peer stopped
   answering; anything else names the fault. */
static int kvx__rdma_wc_rank(enum ibv_wc_status st) {
    return st == IBV_WC_WR_FLUSH_ERR ? 0 : st == IBV_WC_RETRY_EXC_ERR ? 1 : 2;
}

static void kvx__rdma_async(kvx__rdma_engine *re, kvx__rdma_dev *d);

/* A flush or retry-exceeded usually comes with an async event that names
   the cause (port down, QP fatal, access error): give it 100 ms to arrive
   and fail the connection with its sentence first. Completion thread. */
static void kvx__rdma_async_first(kvx__rdma_engine *re, kvx__rdma_dev *d) {
    if (kvx__wait_fd(d->ctx->async_fd, POLLIN, kvx_now_ns() + 100000000u, NULL, NULL) == 0)
        kvx__rdma_async(re, d);
}

/* Keeps in err the sentence of the failed completion wc on q (a WRITE on
   the prefill, a receive on the decode side) when it says more about the
   cause than the one kept (*rank); with mine (q's own completions, under
   p->mu on the prefill) it names the room and the port's state. */
static void kvx__rdma_wc_err(kvx__rdma_engine *re, kvx__rdma_qp *q, const struct ibv_wc *wc,
                             int mine, int *rank, char *err, size_t el) {
    const kvx__rdma_slot *s = NULL;
    int decode = re->role == KVX_ROLE_DECODE;
    char rm[48] = "", pn[128] = "";
    if (kvx__rdma_wc_rank(wc->status) <= *rank) return;
    *rank = kvx__rdma_wc_rank(wc->status);
    if (mine && q->ring && wc->wr_id && wc->wr_id <= q->posted) s = &q->ring[wc->wr_id % q->depth];
    if (s && s->room) snprintf(rm, sizeof rm, " of room %llu", (unsigned long long)s->room->x.id);
    if (mine) kvx__rdma_port_note(re, q->dev, pn, sizeof pn);
    snprintf(err, el, "%s%s %s %s failed on queue pair %u (%s port %u): %s (wc status %d, vendor "
             "error 0x%x)%s", decode ? "receive" : "RDMA WRITE", rm, decode ? "from" : "to",
             q->pair->peer_addr, q->qp->qp_num, q->dev->info.name, (unsigned)q->dev->info.port,
             re->v.wc_status_str ? re->v.wc_status_str(wc->status) : "work completion error",
             (int)wc->status, wc->vendor_err, pn);
}

/* The completions of q. async: NULL, or the sentence of a queue-pair async
   event being handled, which then names the failure unless a completion
   names a cause (rank 2: a flush or retry is only its symptom). */
static void kvx__rdma_cq_prefill(kvx__rdma_engine *re, kvx__rdma_qp *q, const char *async) {
    kvx__rdma_pair *p = q->pair;
    struct ibv_wc wc[64];
    kvx__rdma_room *touched = NULL, *fin = NULL, *rr;
    int bad = 0, n, i, auxres = 0, rank = -1;
    char err[1024] = "", auxerr[KVX_ERROR_MAX];
    pthread_mutex_lock(&p->mu);
    do {
        n = ibv_poll_cq(q->cq, 64, wc);
        if (n > 0) KVX__RDMA_STAT(re, completions, n);
        for (i = 0; i < n; i++) {
            if (KVX__LOAD(&p->state) == KVX__RP_DEAD) continue;
            if (wc[i].status != IBV_WC_SUCCESS) {
                kvx__rdma_wc_err(re, q, &wc[i], 1, &rank, err, sizeof err);
                bad = 1;
                continue;
            }
            kvx__rdma_confirm(q, wc[i].wr_id, &touched);
        }
    } while (n == 64);
    while (touched) {
        int st;
        rr = touched;
        touched = rr->tnext;
        rr->touched = 0;
        if (bad) continue;
        st = kvx__rdma_room_step(re, p, rr, auxerr);
        if (st > 0) {
            kvx_room_ref(rr->x.room);
            rr->fbytes = rr->bytes_done;
            rr->fnext = fin;
            fin = rr;
        } else if (st < 0) {
            auxres = st;
        }
    }
    pthread_cond_broadcast(&p->cv);
    if (!bad && kvx__rdma_pump_all(re, p, err, sizeof err)) bad = 1;
    pthread_mutex_unlock(&p->mu);
    if (bad && rank >= 0 && rank < 2) {
        /* the other queue pairs of the connection may hold the real cause
           (a remote access error behind a peer that went to ERR) */
        int j;
        if (!async) kvx__rdma_async_first(re, q->dev);
        for (j = 0; j < p->nqp && KVX__LOAD(&p->state) != KVX__RP_DEAD; j++) {
            kvx__rdma_qp *o = &p->qp[j];
            if (o == q || !o->cq) continue;
            n = ibv_poll_cq(o->cq, 64, wc);
            for (i = 0; i < n; i++)
                if (wc[i].status != IBV_WC_SUCCESS)
                    kvx__rdma_wc_err(re, o, &wc[i], 0, &rank, err, sizeof err);
        }
    }
    if (bad && async && rank >= 0 && rank < 2) kvx__rdma_pair_kill(re, p, KVX_ERR_TRANSPORT, "%s", async);
    else if (bad) kvx__rdma_pair_kill(re, p, KVX_ERR_TRANSPORT, "%s", err);
    else if (auxres) kvx__rdma_pair_kill(re, p, (kvx_result)auxres, "%s", auxerr);
    while (fin) {
        rr = fin;
        fin = rr->fnext;
        kvx__rdma_finish(re, rr, rr->fbytes);
        kvx_room_unref(rr->x.room);
    }
}

/* >>rdma: decode completion accounting ---------------------------------------------- */

/* The immediates that arrived on a queue pair of p. */
static void kvx__rdma_marks(kvx__rdma_engine *re, kvx__rdma_pair *p, const uint32_t *tags, int n) {
    kvx_room *act[64];
    int verdict[64], na = 0, i;
    uint64_t bytes[64];
    char msg[KVX_ERROR_MAX] = "";
    pthread_mutex_lock(&re->rx_mu);
    for (i = 0; i < n; i++) {
        kvx__rdma_room *rr = kvx__rdma_rx_find(re, tags[i]);
        kvx__rdma_src *s;
        uint64_t b;
        int v;
        if (!rr) continue; /* a fence for a room already forgotten */
        s = kvx__rdma_src_get(rr, p->peer, 1);
        if (!s) continue;
        s->marks++;
        s->nqp = (uint32_t)p->nqp;
        v = kvx__rdma_rx_check(rr, msg, sizeof msg, p->peer_addr, &b);
        if (v) kvx__rdma_rx_remove(re, rr); /* every immediate is in: the tag is free */
        if (v && na < 64) {
            kvx_room_ref(rr->x.room);
            act[na] = rr->x.room;
            verdict[na] = v;
            bytes[na++] = b;
        }
    }
    pthread_cond_broadcast(&re->rx_cv);
    pthread_mutex_unlock(&re->rx_mu);
    for (i = 0; i < na; i++) {
        kvx__rdma_rx_act(act[i], verdict[i], bytes[i], msg);
        kvx_room_unref(act[i]);
    }
}

static void kvx__rdma_cq_decode(kvx__rdma_engine *re, kvx__rdma_qp *q, const char *async) {
    kvx__rdma_pair *p = q->pair;
    struct ibv_wc wc[64];
    uint32_t tags[64];
    int n, i, bad = 0, rank = -1;
    char err[1024] = "";
    do {
        int nt = 0;
        n = ibv_poll_cq(q->cq, 64, wc);
        if (n <= 0) break;
        KVX__RDMA_STAT(re, completions, n);
        for (i = 0; i < n; i++) {
            if (wc[i].status != IBV_WC_SUCCESS) {
                if (KVX__LOAD(&p->state) != KVX__RP_DEAD)
                    kvx__rdma_wc_err(re, q, &wc[i], 1, &rank, err, sizeof err);
                bad = 1;
                continue;
            }
            if (wc[i].opcode == IBV_WC_RECV_RDMA_WITH_IMM && (wc[i].wc_flags & IBV_WC_WITH_IMM)) {
                tags[nt++] = ntohl(wc[i].imm_data);
            } else if (!bad) {
                snprintf(err, sizeof err, "%s sent a message other than an RDMA WRITE WITH "
                         "IMMEDIATE (opcode %d) on queue pair %u", p->peer_addr, (int)wc[i].opcode,
                         q->qp->qp_num);
                bad = 1;
            }
        }
        if (nt) {
            KVX__RDMA_STAT(re, imm_received, nt);
            kvx__rdma_marks(re, p, tags, nt);
            if (KVX__LOAD(&p->state) != KVX__RP_DEAD && kvx__rdma_post_recvs(q, (uint32_t)nt)) {
                snprintf(err, sizeof err, "cannot post receives on queue pair %u (%s): %s",
                         q->qp->qp_num, q->dev->info.name, strerror(errno));
                bad = 1;
            }
        }
    } while (n == 64);
    if (bad && async && rank >= 0 && rank < 2)
        kvx__rdma_pair_kill(re, p, KVX_ERR_TRANSPORT, "%s", async);
    else if (bad && rank >= 0 && rank < 2) kvx__rdma_async_first(re, q->dev);
    if (bad && err[0]) kvx__rdma_pair_kill(re, p, KVX_ERR_TRANSPORT, "%s", err);
    else if (bad) kvx__rdma_pair_kill(re, p, KVX_ERR_TRANSPORT, "queue pair %u with %s failed",
                                      q->qp->qp_num, p->peer_addr);
}

/* >>rdma: the completion and event thread --------------------------------------------- */

/* q's completions, on this engine's side (async: see kvx__rdma_cq_prefill). */
static void kvx__rdma_cq(kvx__rdma_engine *re, kvx__rdma_qp *q, const char *async) {
    if (re->role == KVX_ROLE_PREFILL) kvx__rdma_cq_prefill(re, q, async);
    else kvx__rdma_cq_decode(re, q, async);
}

static void kvx__rdma_cq_events(kvx__rdma_engine *re, kvx__rdma_dev *d) {
    for (;;) {
        struct ibv_cq *cq = NULL;
        void *q = NULL; /* the queue pair (cq_context) */
        if (re->v.get_cq_event(d->ch, &cq, &q)) break;
        re->v.ack_cq_events(cq, 1);
        ibv_req_notify_cq(cq, 0);
        kvx__rdma_cq(re, (kvx__rdma_qp *)q, NULL);
    }
}

/* Pairs (referenced, not dead) with a queue pair on port d; with d NULL
   those with the peer engine of instance inst, or with rr the ready ones
   that serve decode room rr. */
static int kvx__rdma_pairs_on(kvx__rdma_engine *re, const kvx__rdma_dev *d, uint64_t inst,
                              const kvx__rdma_room *rr, kvx__rdma_pair **out, int max) {
    kvx__rdma_pair *p;
    int n = 0, i;
    pthread_mutex_lock(&re->mu);
    for (p = re->pairs; p && n < max; p = p->next) {
        int st = KVX__LOAD(&p->state);
        for (i = 0; d && i < p->nqp && p->qp[i].dev != d; i++) {}
        if ((d ? i < p->nqp : rr ? st == KVX__RP_READY && KVX__RDMA_SERVES(p, rr) : p->peer == inst)
            && st != KVX__RP_DEAD) {
            kvx__rdma_pair_ref(p);
            out[n++] = p;
        }
    }
    pthread_mutex_unlock(&re->mu);
    return n;
}

static void kvx__rdma_async(kvx__rdma_engine *re, kvx__rdma_dev *d) {
    struct ibv_async_event ev;
    while (re->v.get_async_event(d->ctx, &ev) == 0) {
        enum ibv_event_type t = ev.event_type;
        const char *name = re->v.event_type_str ? re->v.event_type_str(t) : "async event";
        kvx__rdma_pair *hit[64];
        int nhit = 0, i;
        char msg[KVX_ERROR_MAX] = "";
        kvx__rdma_qp *q = NULL;
        switch (t) {
        case IBV_EVENT_QP_FATAL:
        case IBV_EVENT_QP_REQ_ERR:
        case IBV_EVENT_QP_ACCESS_ERR:
        case IBV_EVENT_PATH_MIG_ERR:
            q = (kvx__rdma_qp *)ev.element.qp->qp_context;
            /* fallthrough */
        case IBV_EVENT_CQ_ERR:
            if (!q) q = (kvx__rdma_qp *)ev.element.cq->cq_context;
            if (q && kvx__rdma_pair_tryref(q->pair)) {
                hit[nhit++] = q->pair;
                snprintf(msg, sizeof msg, "%s (%s) on queue pair %u (%s port %u) with %s%s", name,
                         t == IBV_EVENT_QP_ACCESS_ERR ? "IBV_EVENT_QP_ACCESS_ERR"
                         : t == IBV_EVENT_QP_FATAL   ? "IBV_EVENT_QP_FATAL"
                         : t == IBV_EVENT_CQ_ERR     ? "IBV_EVENT_CQ_ERR"
                         : t == IBV_EVENT_PATH_MIG_ERR ? "IBV_EVENT_PATH_MIG_ERR"
                                                     : "IBV_EVENT_QP_REQ_ERR",
                         q->qp ? q->qp->qp_num : 0u, d->info.name, (unsigned)d->info.port,
                         q->pair->peer_addr,
                         t == IBV_EVENT_QP_ACCESS_ERR
                             ? ": the peer wrote outside the registered pool or with a bad key"
                             : "");
            }
            break;
        case IBV_EVENT_PORT_ERR:
            KVX__STORE(&d->down, 1);
            nhit = kvx__rdma_pairs_on(re, d, 0, NULL, hit, 64);
            snprintf(msg, sizeof msg, "%s (IBV_EVENT_PORT_ERR): %s port %u went down; check the "
                     "link (ibv_devinfo, rdma link show)", name, d->info.name,
                     (unsigned)d->info.port);
            break;
        case IBV_EVENT_DEVICE_FATAL:
            KVX__STORE(&d->fatal, 1);
            nhit = kvx__rdma_pairs_on(re, d, 0, NULL, hit, 64);
            snprintf(msg, sizeof msg, "%s (IBV_EVENT_DEVICE_FATAL) on %s: the NIC needs a reset",
                     name, d->info.name);
            break;
        case IBV_EVENT_PORT_ACTIVE:
            KVX__STORE(&d->down, 0);
            kvx_engine_log(re->e, KVX_LOG_INFO, "kvx.rdma", 0, "%s port %u is active again",
                           d->info.name, (unsigned)d->info.port);
            break;
        default:
            kvx_engine_log(re->e, KVX_LOG_INFO, "kvx.rdma", 0, "%s: async event %s (%d)",
                           d->info.name, name, (int)t);
            break;
        }
        re->v.ack_async_event(&ev);
        /* a failed completion already on the queue pair that names a
           cause (a remote access error) names the failure better than the
           event that follows it: the connection fails with it first; a
           flush or retry there is a symptom, and the event's sentence wins */
        if (q && nhit && q->cq && KVX__LOAD(&q->pair->state) != KVX__RP_DEAD) kvx__rdma_cq(re, q, msg);
        for (i = 0; i < nhit; i++) {
            kvx__rdma_pair_kill(re, hit[i], KVX_ERR_TRANSPORT, "%s", msg);
            kvx__rdma_pair_unref(re, hit[i]);
        }
    }
}

static void kvx__rdma_bury(kvx__rdma_engine *re) {
    kvx__rdma_pair *g;
    pthread_mutex_lock(&re->gmu);
    g = re->grave;
    re->grave = NULL;
    pthread_mutex_unlock(&re->gmu);
    while (g) {
        kvx__rdma_pair *n = g->grave_next;
        kvx__rdma_pair_destroy(re, g);
        g = n;
    }
}

static void *kvx__rdma_thread_main(void *arg) {
    kvx__rdma_engine *re = (kvx__rdma_engine *)arg;
    struct pollfd pf[1 + 2 * KVX_RDMA_MAX_DEVS];
    int n = 1, d;
    pf[0].fd = re->wake_rd;
    pf[0].events = POLLIN;
    for (d = 0; d < re->ndev; d++) {
        pf[n].fd = re->dev[d].ctx->async_fd;
        pf[n++].events = POLLIN;
        pf[n].fd = re->dev[d].ch->fd;
        pf[n++].events = POLLIN;
    }
    while (!KVX__LOAD(&re->stop)) {
        int i, rc, ms = kvx__rdma_exchange_tick(re);
        for (i = 0; i < n; i++) pf[i].revents = 0;
        rc = poll(pf, (nfds_t)n, ms);
        if (rc < 0 && errno != EINTR) break;
        if (pf[0].revents) kvx__drain(re->wake_rd);
        for (d = 0; d < re->ndev; d++) {
            if (pf[1 + 2 * d].revents) kvx__rdma_async(re, &re->dev[d]);
            if (pf[2 + 2 * d].revents) kvx__rdma_cq_events(re, &re->dev[d]);
        }
        kvx__rdma_bury(re);
    }
    return NULL;
}

/* >>rdma: kvx_boot hooks --------------------------------------------------------------- */

static kvx__rdma_engine *kvx__rdma_bre(kvx_boot *b) { return (kvx__rdma_engine *)kvx_boot_user(b); }

/* Prefill: the leg of room rr0 for decode engine `inst` (the room itself
   for its first destination, else a new leg on its list); NULL when out
   of memory or refused (the room is then failed: a second destination
   from the same decode engine, or more than KVX_RDMA_MAX_LEGS). */
#define KVX_RDMA_MAX_LEGS 64
static kvx__rdma_room *kvx__rdma_leg(kvx__rdma_engine *re, kvx__rdma_room *rr0, uint64_t inst,
                                     const char *addr) {
    kvx__rdma_room *rr = NULL, *l;
    const char *dup = NULL;
    int full;
    pthread_mutex_lock(&rr0->x.mu);
    full = rr0->nlegs >= KVX_RDMA_MAX_LEGS;
    for (l = rr0->have_dst ? rr0 : NULL; l; l = l->leg_next)
        if (l->decode == inst) dup = l->decode_addr;
    if (!dup && !full) {
        rr = rr0->have_dst ? (kvx__rdma_room *)kvx__xroom_new(rr0->x.room, sizeof *rr) : rr0;
        if (rr && rr != rr0) {
            rr->re = re;
            rr->tag = rr0->tag;
            rr->x.src_aux = rr0->x.src_aux;
            rr->leg_next = rr0->leg_next;
            rr0->leg_next = rr;
        }
        if (rr) {
            rr->first = rr0;
            rr->decode = inst;
            snprintf(rr->decode_addr, sizeof rr->decode_addr, "decode %s", addr);
            rr->have_dst = 1;
            rr0->nlegs++;
        }
    }
    pthread_mutex_unlock(&rr0->x.mu);
    if (dup || full)
        kvx_room_fail(rr0->x.room, KVX_ERR_INVALID_ARGUMENT, "decode %s sent a destination for "
                      "room %llu %s", addr, (unsigned long long)rr0->x.id,
                      dup ? "twice" : "beyond the " "64 decode ranks one prefill room serves");
    return rr;
}

/* Prefill: the destination of a room arrived from a decode rank. */
static kvx_result kvx__rdma_on_room(kvx_boot *b, kvx_room *r, const kvx_boot_peer *peer,
                                    const int32_t *dst, uint32_t n, int32_t aux,
                                   const int32_t *dst_state, uint32_t nstate) {
    kvx__rdma_engine *re = kvx__rdma_bre(b);
    kvx__rdma_room *rr0 = kvx__rdma_rr(r), *rr;
    kvx__rdma_pair *p, *found = NULL;
    kvx_rdma_hello h;
    const kvx_engine_desc *ed = kvx_engine_settings(re->e);
    char why[KVX_ERROR_MAX], broken[KVX_ERROR_MAX] = "";
    uint32_t broken_qpn = 0;
    if (kvx_rdma_hello_parse(peer->endpoint, peer->endpoint_len, &h, why, sizeof why) != KVX_OK) {
        kvx_room_fail(r, KVX_ERR_PROTOCOL, "decode %s: %s", peer->addr, why);
        return KVX_ERR_PROTOCOL;
    }
    rr = kvx__rdma_leg(re, rr0, h.instance, peer->addr);
    if (!rr) return kvx_room_poll(r) == KVX_POLL_FAILED ? KVX_ERR_INVALID_ARGUMENT : KVX_ERR_NO_MEMORY;
    rr->dummy = kvx_mla_dummy(kvx_engine_layout(re->e)->mla, ed->boot.tp_size > 0 ? ed->boot.tp_size : 1,
                              ed->boot.tp_rank, peer->tp_size > 0 ? peer->tp_size : 1);
    rr->dst = (int32_t *)kvx__rdma_zalloc(re, n, sizeof *rr->dst);
    if (!rr->dst) return KVX_ERR_NO_MEMORY;
    if (n) memcpy(rr->dst, dst, n * sizeof *dst);
    rr->ndst = n;
    if (nstate > KVX_MAX_PAGES || (nstate && !dst_state)) {
        kvx_room_fail(r, KVX_ERR_PROTOCOL, "decode %s sent %u state indices", peer->addr, nstate);
        return KVX_ERR_PROTOCOL;
    }
    rr->dst_state = (int32_t *)kvx__rdma_zalloc(re, nstate, sizeof *rr->dst_state);
    if (!rr->dst_state) return KVX_ERR_NO_MEMORY;
    if (nstate) memcpy(rr->dst_state, dst_state, nstate * sizeof *dst_state);
    rr->ndst_state = nstate;
    rr->x.dst_aux = aux;
    pthread_mutex_lock(&re->mu);
    for (p = re->pairs; p; p = p->next) {
        if (p->peer != h.instance) continue;
        if (KVX__LOAD(&p->state) == KVX__RP_READY) { found = p; break; }
        if (KVX__LOAD(&p->state) == KVX__RP_DEAD && !broken[0]) {
            pthread_mutex_lock(&p->mu);
            snprintf(broken, sizeof broken, "%s", p->reason);
            pthread_mutex_unlock(&p->mu);
            broken_qpn = p->peer_qpn0;
        }
    }
    if (found) {
        kvx__rdma_pair_ref(found);
    } else {
        rr->parked = 1;
        rr->park_deadline = kvx_now_ns() + (uint64_t)(re->cfg.connect_timeout_s * 1e9);
        rr->lnext = re->parked;
        re->parked = rr;
        kvx_room_ref(r);
    }
    pthread_mutex_unlock(&re->mu);
    if (found) {
        kvx__rdma_attach(re, rr, found);
        kvx__rdma_pair_unref(re, found);
    } else if (broken[0]) {
        /* our connection with this decode engine broke while no room used
           it, so its side may not know: ask it to reconnect (a status in
           state Transferring with KVX_ERR_TRANSPORT); the room waits */
        kvx_engine_log(re->e, KVX_LOG_INFO, "kvx.rdma", rr->x.id, "asking %s to reconnect: %s",
                       rr->decode_addr, broken);
        kvx_boot_send_status(re->boot, r, KVX_POLL_TRANSFERRING, KVX_ERR_TRANSPORT, broken_qpn,
                             broken);
    }
    return KVX_OK;
}

static int kvx__rdma_targets(const kvx__rdma_engine *re, const kvx_boot_peer *pe) {
    int dtp = kvx_engine_settings(re->e)->boot.tp_size > 0 ? kvx_engine_settings(re->e)->boot.tp_size : 1;
    int ptp = pe->tp_size > 0 ? pe->tp_size : 1;
    int dpp = kvx_engine_settings(re->e)->boot.pp_size > 0 ? kvx_engine_settings(re->e)->boot.pp_size : 1;
    int cp = pe->cp_size > 0 ? pe->cp_size : 1, pp = pe->pp_size > 0 ? pe->pp_size : 1;
    /* kvx_boot's RANK MAPPING: decode PP == prefill PP pairs pp rank with
       pp rank (one contributor per tp rank); decode PP 1 takes every
       prefill pp rank's layers */
    if (dpp == pp) pp = 1;
    return cp * pp * (ptp > dtp && ptp % dtp == 0 ? ptp / dtp : 1);
}

/* Decode: the prefill's side of our connection broke while idle: retire
   ours without failing rooms (the one that asked waits on the prefill)
   and dial again. */
static void kvx__rdma_reconnect(kvx__rdma_engine *re, uint64_t inst, uint32_t qpn0,
                                const char *addr, const char *reason) {
    kvx__rdma_peer *pe;
    kvx__rdma_pair *old = NULL;
    pthread_mutex_lock(&re->mu);
    for (pe = re->peers; pe; pe = pe->next) {
        if (pe->instance != inst || KVX__RDMA_DIALING(pe)) continue;
        if (pe->pair && KVX__LOAD(&pe->pair->state) == KVX__RP_READY) {
            /* only the connection the request is about: a late request
               must not retire the one made in answer to an earlier one */
            if (!pe->pair->qp[0].qp || pe->pair->qp[0].qp->qp_num != qpn0) continue;
            old = pe->pair;
            kvx__rdma_pair_ref(old);
        }
        kvx__rdma_dial_locked(re, pe);
    }
    pthread_mutex_unlock(&re->mu);
    if (old) {
        kvx__rdma_pair_down(re, old, KVX_ERR_TRANSPORT, 0, 1, "prefill %s asks to reconnect: %s",
                            addr, reason && *reason ? reason : "its side of the connection broke");
        kvx__rdma_pair_unref(re, old);
    }
}

/* Decode: a status frame. Success only counts with the immediates. */
static int kvx__rdma_on_status(kvx_boot *b, kvx_room *r, const kvx_boot_peer *peer, kvx_poll state,
                               kvx_result result, uint64_t bytes, const char *reason) {
    kvx__rdma_engine *re = kvx__rdma_bre(b);
    kvx__rdma_room *rr = kvx__rdma_rr(r);
    kvx__rdma_pair *p;
    kvx_rdma_hello h;
    kvx__rdma_src *s;
    char why[KVX_ERROR_MAX] = "", who[160];
    int nqp = 0, v;
    uint64_t total = 0;
    kvx_result hr = kvx_rdma_hello_parse(peer->endpoint, peer->endpoint_len, &h, why, sizeof why);
    kvx__rdma_who(who, sizeof who, 1, peer->addr, peer);
    if (state == KVX_POLL_FAILED && result == KVX_ERR_TRANSPORT && hr == KVX_OK) {
        /* the prefill fails a room with KVX_ERR_TRANSPORT only when its
           connection with this engine broke: drop our side too (a receive-
           only queue pair may never notice), so the next receiver redials */
        kvx__rdma_pair *dead[8];
        int nd, i;
        kvx_room_fail_remote(r, result, "%s failed the room: %s", who,
                      reason && *reason ? reason : "no reason given");
        nd = kvx__rdma_pairs_on(re, NULL, h.instance, NULL, dead, 8);
        for (i = 0; i < nd; i++) {
            kvx__rdma_pair_down(re, dead[i], KVX_ERR_TRANSPORT, 1, 1, "%s reports its RDMA "
                                "connection with this engine broken: %s", who,
                                reason && *reason ? reason : "no reason given");
            kvx__rdma_pair_unref(re, dead[i]);
        }
        return 1;
    }
    if (state == KVX_POLL_TRANSFERRING && result == KVX_ERR_TRANSPORT && hr == KVX_OK) {
        kvx__rdma_reconnect(re, h.instance, (uint32_t)bytes, peer->addr, reason);
        return 1;
    }
    if (state != KVX_POLL_SUCCESS || !rr) return 0;
    if (hr != KVX_OK) {
        kvx_room_fail(r, KVX_ERR_PROTOCOL, "%s: %s", who, why);
        return 1;
    }
    pthread_mutex_lock(&re->mu);
    for (p = re->pairs; p; p = p->next)
        if (p->peer == h.instance && KVX__LOAD(&p->state) == KVX__RP_READY) nqp = p->nqp;
    pthread_mutex_unlock(&re->mu);
    if (!nqp) {
        kvx_room_fail(r, KVX_ERR_PEER_LOST, "%s reported Success but this engine has no "
                      "working RDMA connection with it", who);
        return 1;
    }
    pthread_mutex_lock(&re->rx_mu);
    if (!rr->in_table) {
        pthread_mutex_unlock(&re->rx_mu);
        return 0;
    }
    rr->targets = kvx__rdma_targets(re, peer);
    s = kvx__rdma_src_get(rr, h.instance, 1);
    if (s && !s->status) {
        s->status = 1;
        s->bytes = bytes;
        s->nqp = (uint32_t)nqp;
    }
    v = s ? kvx__rdma_rx_check(rr, why, sizeof why, who, &total) : -1;
    if (!s) snprintf(why, sizeof why, "more prefill engines wrote room %llu than this receiver "
                     "can track", (unsigned long long)rr->x.id);
    if (v > 0 || (v < 0 && s)) kvx__rdma_rx_remove(re, rr);
    pthread_mutex_unlock(&re->rx_mu);
    kvx__rdma_rx_act(r, v, total, why);
    /* 2: this rank is done. It sends Success only after every WRITE,
       immediates included, completed, so the bytes are placed even if it
       goes away before the completion thread counted the immediates. */
    return s ? 2 : 1;
}

/* The next leg of a prefill room (its list only grows, under the first's x.mu). */
static kvx__rdma_room *kvx__rdma_next_leg(kvx__rdma_room *rr) {
    kvx__rdma_room *n, *f = rr->first ? rr->first : rr;
    pthread_mutex_lock(&f->x.mu);
    n = rr->leg_next;
    pthread_mutex_unlock(&f->x.mu);
    return n;
}

static void kvx__rdma_cancel_room(kvx__rdma_engine *re, kvx__rdma_room *rr) {
    kvx__rdma_pair *p = rr->pair;
    char err[KVX_ERROR_MAX] = "";
    int bad;
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    if (!rr->finished) kvx__rdma_cancel_locked(p, rr);
    bad = kvx__rdma_pump_all(re, p, err, sizeof err);
    pthread_mutex_unlock(&p->mu);
    if (bad) kvx__rdma_pair_kill(re, p, KVX_ERR_TRANSPORT, "%s", err);
}

static void kvx__rdma_on_abort(kvx_boot *b, kvx_room *r, const kvx_boot_peer *peer,
                               const char *reason) {
    kvx__rdma_engine *re = kvx__rdma_bre(b);
    kvx__rdma_room *rr = kvx__rdma_rr(r);
    (void)peer; (void)reason;
    if (re->role == KVX_ROLE_PREFILL && rr && rr->pair) kvx__rdma_cancel_room(re, rr);
}

/* Decode: the control connection with a prefill rank is up: dial it. */
static void kvx__rdma_on_connect(kvx_boot *b, const kvx_boot_peer *peer) {
    kvx__rdma_engine *re = kvx__rdma_bre(b);
    kvx__rdma_peer *pe;
    kvx_rdma_hello h;
    char why[KVX_ERROR_MAX];
    if (re->role != KVX_ROLE_DECODE) return;
    if (kvx_rdma_hello_parse(peer->endpoint, peer->endpoint_len, &h, why, sizeof why) != KVX_OK ||
        h.role != KVX_ROLE_PREFILL) {
        kvx_engine_log(re->e, KVX_LOG_ERROR, "kvx.rdma", 0, "prefill %s: %s", peer->addr,
                       why[0] ? why : "its endpoint is not a prefill's");
        return;
    }
    pthread_mutex_lock(&re->mu);
    for (pe = re->peers; pe && pe->instance != h.instance; pe = pe->next) {}
    if (!pe) {
        pe = (kvx__rdma_peer *)kvx__rdma_zalloc(re, 1, sizeof *pe);
        if (!pe) { pthread_mutex_unlock(&re->mu); return; }
        pe->instance = h.instance;
        pe->next = re->peers;
        re->peers = pe;
    }
    snprintf(pe->addr, sizeof pe->addr, "%s", peer->addr);
    pe->ctl = *peer;
    pe->ctl.addr = pe->ctl.bootstrap = pe->ctl.transport = NULL;
    pe->ctl.endpoint = NULL;
    snprintf(pe->bootstrap, sizeof pe->bootstrap, "%s", peer->bootstrap ? peer->bootstrap : "");
    pe->dp_rank = peer->dp_rank;
    pe->dp_size = peer->dp_size;
    pe->hello = h;
    pe->ctl.layout = NULL;
    if (peer->layout && peer->layout->num_buffers && !pe->shape_bufs &&
        (pe->shape_bufs = (kvx_buffer *)kvx__rdma_zalloc(re, peer->layout->num_buffers,
                                                         sizeof *pe->shape_bufs))) {
        uint32_t i;
        pe->shape = *peer->layout; /* shape only: item_lens, heads, layers */
        pe->shape.buffers = pe->shape_bufs;
        pe->shape.aux = NULL;
        pe->shape.num_aux = 0;
        pe->shape.state = NULL; /* kvx_boot's memory; the prefill checks the state shapes */
        pe->shape.num_state = pe->shape.state_type = 0;
        for (i = 0; i < pe->shape.num_buffers; i++)
            pe->shape_bufs[i].item_len = peer->layout->buffers[i].item_len;
    }
    if (!pe->pair || KVX__LOAD(&pe->pair->state) == KVX__RP_DEAD) kvx__rdma_dial_locked(re, pe);
    pthread_mutex_unlock(&re->mu);
}

static void kvx__rdma_on_disconnect(kvx_boot *b, const kvx_boot_peer *peer, const char *reason) {
    kvx__rdma_engine *re = kvx__rdma_bre(b);
    kvx__rdma_pair *gone = NULL;
    kvx__rdma_peer **pe;
    kvx_rdma_hello h;
    char why[KVX_ERROR_MAX];
    if (kvx_rdma_hello_parse(peer->endpoint, peer->endpoint_len, &h, why, sizeof why) != KVX_OK) return;
    pthread_mutex_lock(&re->mu);
    kvx__rdma_take(&re->acc, h.instance, 0, &gone);
    kvx__rdma_take(&re->pairs, h.instance, 0, &gone);
    for (pe = &re->peers; *pe && (*pe)->instance != h.instance; pe = &(*pe)->next) {}
    if (*pe) { /* one per instance (on_connect) */
        kvx__rdma_peer *x = *pe;
        *pe = x->next;
        kvx_engine_free(re->e, x->shape_bufs);
        kvx_engine_free(re->e, x);
    }
    pthread_mutex_unlock(&re->mu);
    {
        char who[160];
        kvx__rdma_who(who, sizeof who, re->role != KVX_ROLE_PREFILL, peer->addr, peer);
        snprintf(why, sizeof why, "lost the control connection with %s: %s", who,
                 reason ? reason : "closed");
    }
    kvx__rdma_kill_all(re, gone, KVX_ERR_PEER_LOST, 1, "%s", why);
}

/* >>rdma: backend hooks --------------------------------------------------------------- */

static kvx_result kvx__rdma_room_open(kvx_room *r) {
    kvx__rdma_engine *re = kvx__rdma_re(kvx_room_engine(r));
    kvx__rdma_room *rr = (kvx__rdma_room *)kvx__xroom_new(r, sizeof *rr);
    const char *bs = kvx_room_bootstrap_addr(r);
    if (!rr) return KVX_ERR_NO_MEMORY;
    rr->re = re;
    rr->tag = kvx__rdma_tag(rr->x.id);
    snprintf(rr->bootstrap, sizeof rr->bootstrap, "%s", bs ? bs : "");
    kvx_room_set_data(r, rr);
    return kvx_boot_room_open(re->boot, r);
}

static void kvx__rdma_room_free(kvx_room *r) {
    kvx__rdma_room *rr = kvx__rdma_rr(r);
    kvx_engine *e = kvx_room_engine(r);
    uint32_t i;
    kvx__rdma_room *next;
    for (; rr; rr = next) {
        next = rr->leg_next;
        for (i = 0; i < rr->nchunks; i++) kvx_chunk_free(e, rr->chunks[i]);
        kvx_engine_free(e, rr->chunks);
        kvx_engine_free(e, rr->dst);
        kvx_engine_free(e, rr->dst_state);
        kvx_engine_free(e, rr->def_pages);
        kvx_engine_free(e, rr->rx_pages);
        kvx__xroom_free(rr);
    }
}

static kvx_result kvx__rdma_sender_init(kvx_room *r, uint32_t n, int32_t aux) {
    kvx__rdma_engine *re = kvx__rdma_re(kvx_room_engine(r));
    kvx__rdma_room *rr0 = kvx__rdma_rr(r), *rr;
    uint32_t want = kvx_boot_room_dst_pages(re->boot, r);
    kvx_result res = KVX_OK;
    if (n != want) {
        kvx_room_fail(r, KVX_ERR_INVALID_ARGUMENT, "init declares %u pages but %s asked for %u", n,
                      rr0->decode_addr[0] ? rr0->decode_addr : "the decode side", want);
        return KVX_ERR_INVALID_ARGUMENT;
    }
    pthread_mutex_lock(&rr0->x.mu);
    for (rr = rr0; rr && res == KVX_OK; rr = rr->leg_next) {
        if (rr->x.dst_aux >= 0 && kvx_engine_layout(re->e)->num_aux && aux < 0) {
            kvx_room_fail(r, KVX_ERR_INVALID_ARGUMENT, "%s asked for aux rows (slot %d) but init "
                          "gave no aux index", rr->decode_addr, (int)rr->x.dst_aux);
            res = KVX_ERR_INVALID_ARGUMENT;
        }
        rr->x.src_aux = aux;
        rr->aux_needed = aux >= 0 && rr->x.dst_aux >= 0 && kvx_engine_layout(re->e)->num_aux > 0;
        rr->aux_rows = rr->aux_needed;
    }
    pthread_mutex_unlock(&rr0->x.mu);
    return res;
}

/* A copy of c for another leg of the room (pages and counts; no gather plan). */
static kvx_chunk *kvx__rdma_chunk_dup(kvx_engine *e, const kvx_chunk *c) {
    kvx_chunk *d = (kvx_chunk *)kvx_engine_alloc(e, sizeof *d);
    if (!d) return NULL;
    memset(d, 0, sizeof *d);
    d->index = c->index;
    d->first_page = c->first_page;
    d->num_pages = c->num_pages;
    d->total_pages = c->total_pages;
    d->is_last = c->is_last;
    d->aux_index = c->aux_index;
    d->layer_begin = c->layer_begin; /* LAYER-WISE SEND: the same part for every leg */
    d->layer_end = c->layer_end;
    d->first_part = c->first_part;
    d->last_part = c->last_part;
    d->gather.allocator = c->gather.allocator;
    if (c->num_pages) {
        d->pages = (int32_t *)kvx_engine_alloc(e, c->num_pages * sizeof *d->pages);
        if (!d->pages) { kvx_engine_free(e, d); return NULL; }
        memcpy(d->pages, c->pages, c->num_pages * sizeof *d->pages);
    }
    return d;
}

static kvx_result kvx__rdma_leg_send(kvx__rdma_engine *re, kvx__rdma_room *rr, kvx_chunk *c);

/* Every leg of the room gets the chunk (the last one c itself). */
static kvx_result kvx__rdma_sender_send(kvx_room *r, kvx_chunk *c) {
    kvx__rdma_engine *re = kvx__rdma_re(kvx_room_engine(r));
    kvx__rdma_room *rr0 = kvx__rdma_rr(r), *legs[KVX_RDMA_MAX_LEGS], *rr;
    kvx_result res = KVX_OK;
    int n = 0, i;
    pthread_mutex_lock(&rr0->x.mu);
    for (rr = rr0; rr && n < KVX_RDMA_MAX_LEGS; rr = rr->leg_next) legs[n++] = rr;
    pthread_mutex_unlock(&rr0->x.mu);
    for (i = 0; i < n && res == KVX_OK; i++) {
        kvx_chunk *cc = i + 1 == n ? c : kvx__rdma_chunk_dup(re->e, c);
        if (i + 1 == n) c = NULL;
        res = cc ? kvx__rdma_leg_send(re, legs[i], cc) : KVX_ERR_NO_MEMORY;
    }
    kvx_chunk_free(re->e, c);
    return res;
}

static kvx_result kvx__rdma_leg_send(kvx__rdma_engine *re, kvx__rdma_room *rr, kvx_chunk *c) {
    kvx_room *r = rr->x.room;
    kvx_result res = KVX_OK;
    pthread_mutex_lock(&rr->x.mu);
    if (kvx_room_poll(r) != KVX_POLL_FAILED && rr->pair) {
        kvx__rdma_submit(re, rr, c); /* it frees c */
        c = NULL;
    } else if (kvx_room_poll(r) != KVX_POLL_FAILED) { /* the connection is not up yet: park c */
        if (rr->nchunks == rr->cchunks) {
            uint32_t nc = rr->cchunks ? rr->cchunks * 2 : 8;
            kvx_chunk **nv = (kvx_chunk **)kvx__grow(&kvx_engine_settings(re->e)->allocator,
                                                     rr->chunks, rr->cchunks * sizeof *nv,
                                                     nc * sizeof *nv);
            if (nv) {
                rr->chunks = nv;
                rr->cchunks = nc;
            }
        }
        if (rr->nchunks < rr->cchunks) rr->chunks[rr->nchunks++] = c;
        else res = KVX_ERR_NO_MEMORY;
        if (res == KVX_OK) c = NULL;
    }
    pthread_mutex_unlock(&rr->x.mu);
    kvx_chunk_free(re->e, c);
    return res;
}

/* Decode: the tags of other receivers whose folded ids collide are busy. */
static kvx_result kvx__rdma_receiver_init(kvx_room *r, const int32_t *pages, uint32_t n,
                                          int32_t aux) {
    kvx__rdma_engine *re = kvx__rdma_re(kvx_room_engine(r));
    kvx__rdma_room *rr = kvx__rdma_rr(r);
    const kvx_layout *l = kvx_engine_layout(re->e);
    kvx__rdma_peer *pe;
    kvx_result res;
    int dialing = 0;
    uint32_t ns = 0;
    kvx_room_state(r, &ns);
    rr->expected = (uint64_t)n * kvx_layout_page_bytes(l);
    if (aux >= 0) rr->expected += kvx_layout_aux_row_bytes(l);
    rr->expected += (uint64_t)ns * kvx_layout_state_row_bytes(l); /* HYBRID STATE */
    if (n && !(rr->rx_pages = (int32_t *)kvx__rdma_zalloc(re, n, sizeof *pages))) return KVX_ERR_NO_MEMORY;
    if (n) memcpy(rr->rx_pages, pages, n * sizeof *pages);
    rr->rx_n = n;
    /* a broken connection with one of this room's prefill ranks: redial,
       and hold the room frame until the connection is made, so the
       prefill never plans it on the connection it is replacing */
    pthread_mutex_lock(&re->mu);
    for (pe = re->peers; pe; pe = pe->next) {
        if (!KVX__RDMA_SERVES(pe, rr)) continue;
        if (!pe->pair || KVX__LOAD(&pe->pair->state) == KVX__RP_DEAD) kvx__rdma_dial_locked(re, pe);
        if (KVX__RDMA_DIALING(pe)) dialing = 1;
    }
    pthread_mutex_unlock(&re->mu);
    pthread_mutex_lock(&re->rx_mu);
    if (dialing || kvx__rdma_rx_find(re, rr->tag)) {
        rr->def_pages = (int32_t *)kvx__rdma_zalloc(re, n, sizeof *pages);
        if (!rr->def_pages) {
            pthread_mutex_unlock(&re->rx_mu);
            return KVX_ERR_NO_MEMORY;
        }
        if (n) memcpy(rr->def_pages, pages, n * sizeof *pages);
        rr->def_n = n;
        rr->def_aux = aux;
        rr->deferred = 1;
        rr->lnext = re->deferred;
        re->deferred = rr;
        kvx_room_ref(r);
        pthread_mutex_unlock(&re->rx_mu);
        kvx_engine_log(re->e, KVX_LOG_INFO, "kvx.rdma", rr->x.id, "%s",
                       dialing ? "waits for the RDMA connection with its prefill"
                               : "another receiver uses the same 32-bit completion tag; this one "
                                 "waits for it");
        return KVX_OK;
    }
    res = kvx__rdma_rx_insert(re, rr);
    pthread_mutex_unlock(&re->rx_mu);
    return res != KVX_OK ? res : kvx_boot_receiver_init(re->boot, r, pages, n, aux);
}

/* The room failed by this side's decision (a refused argument, a local
   error, an abort, a timeout, engine destroy): the prefill stops the
   room's WRITEs first (fences included, so a decode side that destroys
   its receiver on the news can wait for them), then the peer is told
   with the first reason. */
static void kvx__rdma_room_failed(kvx_room *r) {
    kvx__rdma_engine *re = kvx__rdma_re(kvx_room_engine(r));
    kvx__rdma_room *rr = kvx__rdma_rr(r);
    if (!re) return;
    for (; re->role == KVX_ROLE_PREFILL && rr; rr = kvx__rdma_next_leg(rr))
        kvx__rdma_cancel_room(re, rr);
    rr = kvx__rdma_rr(r);
    /* the prefill sends status Failed (kvx_boot answers a room frame that
       has not arrived yet with an abort), the decode side an abort */
    kvx_boot_room_failed(re->boot, r);
}

/* Takes rr off list *head (re->parked under re->mu, re->deferred under
   re->rx_mu) when *on says it is there, and drops the list's reference. */
static void kvx__rdma_unlist(pthread_mutex_t *mu, kvx__rdma_room **head, kvx__rdma_room *rr,
                             int *on) {
    kvx__rdma_room **pp;
    int was;
    pthread_mutex_lock(mu);
    if ((was = *on) != 0)
        for (pp = head; *pp; pp = &(*pp)->lnext)
            if (*pp == rr) { *pp = rr->lnext; break; }
    *on = 0;
    pthread_mutex_unlock(mu);
    if (was) kvx_room_unref(rr->x.room);
}

/* Prefill: stop the room's WRITEs and wait until the NIC no longer reads
   its pages. */
static void kvx__rdma_tx_close(kvx__rdma_engine *re, kvx__rdma_room *rr) {
    kvx__rdma_pair *p;
    uint32_t i;
    uint64_t limit;
    int killed = 0;
    kvx__rdma_unlist(&re->mu, &re->parked, rr, &rr->parked);
    pthread_mutex_lock(&rr->x.mu);
    for (i = 0; i < rr->nchunks; i++) kvx_chunk_free(re->e, rr->chunks[i]);
    rr->nchunks = 0;
    p = rr->pair;
    pthread_mutex_unlock(&rr->x.mu);
    if (!p) return;
    kvx__rdma_cancel_room(re, rr);
    limit = kvx_now_ns() + (uint64_t)((re->cfg.connect_timeout_s + 5) * 1e9);
    pthread_mutex_lock(&p->mu);
    while (rr->works || rr->inflight) {
        struct timespec ts;
        if (kvx_now_ns() > limit && !killed) {
            pthread_mutex_unlock(&p->mu);
            kvx__rdma_pair_kill(re, p, KVX_ERR_TIMEOUT, "RDMA WRITEs of room %llu to %s did not "
                               "complete within %.0f s", (unsigned long long)rr->x.id, p->peer_addr,
                               re->cfg.connect_timeout_s + 5);
            killed = 1;
            pthread_mutex_lock(&p->mu);
            continue;
        }
        kvx__abstime(&ts, 100000000);
        pthread_cond_timedwait(&p->cv, &p->mu, &ts);
    }
    if (rr->pprev) rr->pprev->pnext = rr->pnext;
    else if (p->rooms == rr) p->rooms = rr->pnext;
    if (rr->pnext) rr->pnext->pprev = rr->pprev;
    rr->pnext = rr->pprev = NULL;
    pthread_mutex_unlock(&p->mu);
    kvx__rdma_pair_unref(re, p);
}

/* Decode: an unfinished room waits (KVX_IB_FENCE_TIMEOUT) until every
   queue pair of its prefill connections delivered its last immediate. */
static void kvx__rdma_rx_close(kvx__rdma_engine *re, kvx__rdma_room *rr) {
    kvx__rdma_pair *ps[16];
    int np, i, timed_out = 0;
    uint64_t deadline = kvx_now_ns() + (uint64_t)(re->cfg.fence_timeout_s * 1e9);
    kvx__rdma_unlist(&re->rx_mu, &re->deferred, rr, &rr->deferred);
    if (!rr->in_table) return;
    if (kvx_room_poll(rr->x.room) != KVX_POLL_SUCCESS) {
        np = kvx__rdma_pairs_on(re, NULL, 0, rr, ps, 16);
        pthread_mutex_lock(&re->rx_mu);
        for (;;) {
            struct timespec ts;
            for (i = 0; i < np; i++) {
                kvx__rdma_src *s = kvx__rdma_src_get(rr, ps[i]->peer, 0);
                if (KVX__LOAD(&ps[i]->state) != KVX__RP_DEAD && (!s || s->marks < (uint32_t)ps[i]->nqp))
                    break;
            }
            if (i == np) break; /* every queue pair delivered its last immediate */
            if (kvx_now_ns() >= deadline) { timed_out = 1; break; }
            kvx__abstime(&ts, 50000000);
            pthread_cond_timedwait(&re->rx_cv, &re->rx_mu, &ts);
        }
        pthread_mutex_unlock(&re->rx_mu);
        for (i = 0; i < np; i++) kvx__rdma_pair_unref(re, ps[i]);
        if (timed_out)
            kvx_engine_log(re->e, KVX_LOG_WARN, "kvx.rdma", rr->x.id,
                           "the prefill did not confirm within %.1f s (KVX_IB_FENCE_TIMEOUT) that "
                           "it stopped writing this room's pages; they may still change",
                           re->cfg.fence_timeout_s);
    }
    pthread_mutex_lock(&re->rx_mu);
    kvx__rdma_rx_remove(re, rr);
    pthread_mutex_unlock(&re->rx_mu);
}

static void kvx__rdma_room_close(kvx_room *r) {
    kvx__rdma_engine *re = kvx__rdma_re(kvx_room_engine(r));
    kvx__rdma_room *rr = kvx__rdma_rr(r);
    kvx_boot_room_close(re->boot, r);
    if (!rr) return;
    if (re->role == KVX_ROLE_PREFILL)
        for (; rr; rr = kvx__rdma_next_leg(rr)) kvx__rdma_tx_close(re, rr);
    else kvx__rdma_rx_close(re, rr);
}

/* Every tick: prefill rooms that waited too long for their connection;
   decode rooms whose completion tag became free. */
static void kvx__rdma_progress(kvx_engine *e) {
    kvx__rdma_engine *re = kvx__rdma_re(e);
    kvx__rdma_room *expired = NULL, *rr, **pp, *go = NULL;
    if (re->role == KVX_ROLE_PREFILL) {
        pthread_mutex_lock(&re->mu);
        kvx__rdma_unpark(re, 0, kvx_now_ns(), &expired);
        pthread_mutex_unlock(&re->mu);
        while (expired) {
            rr = expired;
            expired = rr->lnext;
            /* KVX_ERR_TRANSPORT: a decode side that believes it is
               connected (its READY was lost) then retires its side and
               the next receiver redials */
            if (kvx_room_poll(rr->x.room) != KVX_POLL_FAILED)
                kvx_room_fail(rr->x.room, KVX_ERR_TRANSPORT, "no RDMA connection from %s within "
                              "%.0f s (KVX_IB_CONNECT_TIMEOUT): the queue-pair exchange did not "
                              "complete", rr->decode_addr, re->cfg.connect_timeout_s);
            kvx_room_unref(rr->x.room);
        }
    } else {
        kvx__rdma_peer dialing[16];
        int nd = 0, k;
        kvx__rdma_peer *pe;
        pthread_mutex_lock(&re->mu);
        for (pe = re->peers; pe && nd < 16; pe = pe->next)
            if (KVX__RDMA_DIALING(pe)) dialing[nd++] = *pe;
        pthread_mutex_unlock(&re->mu);
        pthread_mutex_lock(&re->rx_mu);
        for (pp = &re->deferred; *pp;) {
            int wait = 0, failed;
            rr = *pp;
            failed = kvx_room_poll(rr->x.room) == KVX_POLL_FAILED;
            for (k = 0; k < nd && !wait; k++) wait = KVX__RDMA_SERVES(&dialing[k], rr);
            if (failed || (!wait && !kvx__rdma_rx_find(re, rr->tag))) {
                *pp = rr->lnext;
                rr->deferred = 0;
                if (!failed) kvx__rdma_rx_insert(re, rr);
                rr->lnext = go;
                go = rr;
                continue;
            }
            pp = &rr->lnext;
        }
        pthread_mutex_unlock(&re->rx_mu);
        while (go) {
            kvx_result res;
            rr = go;
            go = rr->lnext;
            if (rr->in_table) {
                res = kvx_boot_receiver_init(re->boot, rr->x.room, rr->def_pages, rr->def_n,
                                             rr->def_aux);
                if (res != KVX_OK && res != KVX_ERR_STATE)
                    kvx_room_fail(rr->x.room, res, "cannot send the destination to the prefill "
                                  "at %s", rr->bootstrap);
            } else {
                kvx_room_fail(rr->x.room, KVX_ERR_NO_MEMORY, "out of memory for the completion "
                              "tag table"); /* no-op when it already failed */
            }
            kvx_room_unref(rr->x.room);
        }
    }
}

/* >>rdma: engine ------------------------------------------------------------------------ */

static void kvx__rdma_free(kvx__rdma_engine *re) {
    kvx__rdma_pair *p;
    kvx__rdma_pair **lists[2] = {&re->pairs, &re->acc};
    int d;
    kvx_boot_destroy(re->boot); /* first: no hook runs after it */
    for (d = 0; d < 2; d++)
        while ((p = *lists[d]) != NULL) {
            *lists[d] = p->next;
            kvx__rdma_pair_destroy(re, p);
        }
    kvx__rdma_bury(re);
    while (re->peers) {
        kvx__rdma_peer *x = re->peers;
        re->peers = x->next;
        kvx_engine_free(re->e, x->shape_bufs);
        kvx_engine_free(re->e, x);
    }
    while (re->stages) {
        kvx__rdma_stage *st = re->stages;
        re->stages = st->next;
        kvx__rdma_stage_free(re, st);
    }
    for (d = 0; d < re->ndev; d++) kvx__rdma_dev_close(re, &re->dev[d]);
    if (re->v.lib) dlclose(re->v.lib);
    if (re->wake_rd >= 0) close(re->wake_rd);
    if (re->wake_wr >= 0) close(re->wake_wr);
    pthread_mutex_destroy(&re->mu);
    pthread_mutex_destroy(&re->gmu);
    pthread_mutex_destroy(&re->rx_mu);
    pthread_cond_destroy(&re->rx_cv);
    kvx__htab_free(&re->rx, &kvx_engine_settings(re->e)->allocator);
    kvx_engine_free(re->e, re);
}

static void kvx__rdma_engine_fini(kvx_engine *e) {
    kvx__rdma_engine *re = kvx__rdma_re(e);
    if (!re) return;
    pthread_mutex_lock(&re->mu);
    re->stopping = 1;
    pthread_mutex_unlock(&re->mu);
    KVX__STORE(&re->stop, 1);
    kvx__workq_destroy(re->cmq);
    kvx__wake(re->wake_wr);
    if (re->thread_started) pthread_join(re->thread, NULL);
    kvx__rdma_free(re);
    kvx_engine_set_backend_data(e, NULL);
}

static kvx_result kvx__rdma_engine_init(kvx_engine *e, char *why, size_t wl) {
    kvx__rdma_engine *re = (kvx__rdma_engine *)kvx_engine_alloc(e, sizeof *re);
    kvx_boot_hooks hooks;
    kvx_rdma_hello h;
    uint8_t hello[KVX_RDMA_HELLO_FIXED + KVX_RDMA_DEV_ENTRY * KVX_RDMA_MAX_DEVS];
    kvx_engine_desc dc = *kvx_engine_settings(e);
    kvx_result r;
    char devs[1024] = "";
    int d;
    if (!re) return KVX_ERR_NO_MEMORY;
    memset(re, 0, sizeof *re);
    kvx_engine_set_backend_data(e, re); /* so every failure below ends in engine_fini */
    re->e = e;
    re->role = kvx_engine_settings(e)->role;
    re->wake_rd = re->wake_wr = -1;
    pthread_mutex_init(&re->mu, NULL);
    pthread_mutex_init(&re->gmu, NULL);
    pthread_mutex_init(&re->rx_mu, NULL);
    pthread_cond_init(&re->rx_cv, NULL);
    r = kvx__settings_apply(kvx__rdma_table, KVX__COUNT(kvx__rdma_table), &dc, why, wl);
    if (r != KVX_OK) goto fail;
    re->cfg = dc.rdma; /* desc.rdma resolved */
    if (!re->cfg.library) re->cfg.library = "libibverbs.so.1";
    if (re->cfg.send_depth < 2 * re->cfg.signal_every)
        re->cfg.send_depth = 2 * re->cfg.signal_every;
    if ((r = kvx__rdma_load(&re->v, re->cfg.library, why, wl)) != KVX_OK) goto fail;
    if ((r = kvx__rdma_open_devices(re, why, wl)) != KVX_OK) goto fail;
    re->instance = kvx__rdma_random64();
    memset(&h, 0, sizeof h);
    h.role = (uint16_t)re->role;
    h.instance = re->instance;
    h.qps = (uint16_t)re->cfg.qps;
    h.ndev = (uint16_t)re->ndev;
    for (d = 0; d < re->ndev; d++) h.dev[d] = re->dev[d].info;
    if (kvx__pipe(&re->wake_rd, &re->wake_wr)) {
        kvx__set_why(why, wl, "cannot create pipes: %s", strerror(errno));
        r = KVX_ERR_IO;
        goto fail;
    }
    if ((r = kvx__workq_create(e, 1, "kvx.rdma.cm", &re->cmq)) != KVX_OK) {
        kvx__set_why(why, wl, "cannot start the exchange thread");
        goto fail;
    }
    if (pthread_create(&re->thread, NULL, kvx__rdma_thread_main, re) != 0) {
        kvx__set_why(why, wl, "cannot start the completion thread: %s", strerror(errno));
        r = KVX_ERR_NO_MEMORY;
        goto fail;
    }
    re->thread_started = 1;
    memset(&hooks, 0, sizeof hooks);
    hooks.user = re;
    hooks.on_room = kvx__rdma_on_room;
    hooks.on_status = kvx__rdma_on_status;
    hooks.on_abort = kvx__rdma_on_abort;
    hooks.on_connect = kvx__rdma_on_connect;
    hooks.on_disconnect = kvx__rdma_on_disconnect;
    hooks.on_message = kvx__rdma_on_message;
    r = kvx_boot_create(e, &hooks, hello, kvx_rdma_hello_encode(&h, hello, sizeof hello),
                        &re->boot, why, wl); /* it keeps a copy of the endpoint blob */
    if (r != KVX_OK) goto fail;
    for (d = 0; d < re->ndev; d++)
        snprintf(devs + strlen(devs), sizeof devs - strlen(devs), "%s%s:%u (%s, MTU %d)",
                 d ? ", " : "", re->dev[d].info.name, (unsigned)re->dev[d].info.port,
                 re->dev[d].info.link_layer == 2 ? "RoCE" : "IB", 128 << re->dev[d].info.mtu);
    kvx_engine_log(e, KVX_LOG_INFO, "kvx.rdma", 0, "%s engine on %s via %s",
                   re->role == KVX_ROLE_PREFILL ? "prefill" : "decode", devs, re->v.path);
    return KVX_OK;
fail:
    kvx__rdma_engine_fini(e);
    return r;
}

KVX_API kvx_result kvx_rdma_stats_get(const kvx_engine *e, kvx_rdma_stats *out) {
    const kvx__rdma_engine *re;
    size_t i;
    if (!e || !out || strcmp(kvx_engine_transport(e), "rdma")) return KVX_ERR_INVALID_ARGUMENT;
    re = kvx__rdma_re(e);
    if (!re) return KVX_ERR_STATE;
    /* kvx_rdma_stats holds uint64_t counters only: an atomic load each */
    for (i = 0; i < sizeof *out / sizeof(uint64_t); i++)
        ((uint64_t *)(void *)out)[i] = KVX__LOAD((const uint64_t *)(const void *)&re->st + i);
    return KVX_OK;
}

KVX_API int kvx_rdma_compiled(void) { return 1; }

static void kvx__rdma_hooks(kvx_backend *b) { /* no room_abort: room_failed tells the peer */
    KVX__BACKEND_ROOM_HOOKS(b, kvx__rdma);
    b->progress = kvx__rdma_progress;
    b->layerwise = 1; /* LAYER-WISE SEND: each part's WRITEs are posted as it comes */
}

KVX_API const kvx_backend *kvx_rdma_backend(void) {
    static kvx_backend b;
    return kvx__backend_table(&b, "rdma", kvx__rdma_engine_init, kvx__rdma_hooks);
}

#else /* !KVX_WITH_RDMA */

static kvx_result kvx__rdma_stub_init(kvx_engine *e, char *why, size_t wl) {
    (void)e;
    kvx__set_why(why, wl, "the rdma transport is not compiled in: build the file that defines "
                 "KVX_IMPLEMENTATION with -DKVX_WITH_RDMA (needs <infiniband/verbs.h> from "
                 "libibverbs-dev / rdma-core)");
    return KVX_ERR_NOT_COMPILED;
}

KVX_API const kvx_backend *kvx_rdma_backend(void) {
    static kvx_backend b;
    return kvx__backend_table(&b, "rdma", kvx__rdma_stub_init, NULL);
}

KVX_API int kvx_rdma_compiled(void) { return 0; }

KVX_API kvx_result kvx_rdma_stats_get(const kvx_engine *e, kvx_rdma_stats *out) {
    (void)e;
    if (out) memset(out, 0, sizeof *out);
    return KVX_ERR_NOT_COMPILED;
}

#endif /* KVX_WITH_RDMA */

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
