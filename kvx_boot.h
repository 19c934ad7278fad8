/* kvx_boot.h - v0.1.0 - bootstrap discovery, room handshake and heartbeats (SGLang-compatible)

   The part of a network transport that is not about moving bytes. Prefill:
   an HTTP/1.1 bootstrap server with SGLang's routes (SGLang routers and tools
   work unchanged) and a control listener. Decode: asks the server where each
   prefill rank listens, keeps one control connection per rank, sends each
   room's destination pages, receives status and abort, heartbeats.
   kvx_tcp.h and kvx_rdma.h compose it through a few calls and hooks.

   CONTENTS (section markers: search for ">>name")
     >>parsers (declarations) and ">>boot: " byte helpers, frame codec, HTTP
     request parser, state, registry of engines, sockets, connections, room
     table, bootstrap server, control channel (prefill side, decode side), I/O
     thread, decode client (resolving, heartbeats), prefill ranks other than
     0, room API, create and destroy, the bootfake transport

   DO THIS
       #define KVX_IMPLEMENTATION
       #include "kvx_boot.h"          (includes kvx.h)
       kvx_boot_register();           (once; then desc.transport = "bootfake")
     `bootfake` is the complete example transport: a real handshake and no
     data movement, for tests and benchmarks. A transport author calls
     kvx_boot_create in its engine_init and the kvx_boot_room_* calls in its
     room hooks; see HOW A TRANSPORT USES IT.

   DATA PATH
     None: kvx_boot carries only control frames (room frames with the
     destination pages, status, abort, pings, transport messages) and HTTP;
     KV bytes move in the transport that composes it (kvx_tcp.h, kvx_rdma.h,
     kvx_file.h, kvx_cuda.h). The `bootfake` transport moves none.

   EXAMPLE (two engines, here in one process; error handling shortened)
       // given: kvx_layout layout; const int32_t *pages; uint32_t n; void idle(void);
       kvx_boot_register();                  // makes "bootfake" a transport name
       kvx_engine_desc pd = {0};             // prefill: serves the bootstrap address
       pd.role = KVX_ROLE_PREFILL;  pd.transport = "bootfake";  pd.layout = layout;
       pd.boot.host = "127.0.0.1";  pd.boot.port = 8998;
       kvx_engine_desc dd = {0};             // decode: names it
       dd.role = KVX_ROLE_DECODE;   dd.transport = "bootfake";  dd.layout = layout;
       dd.bootstrap_addr = "127.0.0.1:8998";
       kvx_engine *pe, *de;  char why[KVX_ERROR_MAX];
       if (kvx_engine_create(&pd, &pe, why, sizeof why) ||
           kvx_engine_create(&dd, &de, why, sizeof why)) { puts(why); return; }
       kvx_room_desc rd = {0};  rd.room = 7;
       kvx_sender *s;    kvx_sender_create(pe, &rd, &s);
       kvx_receiver *r;  kvx_receiver_create(de, &rd, &r);
       while (kvx_receiver_poll(r) == KVX_POLL_BOOTSTRAPPING) idle();
       kvx_receiver_init(r, pages, n, -1);   // the room frame goes to the prefill
       while (kvx_sender_poll(s) == KVX_POLL_BOOTSTRAPPING) idle();
       kvx_sender_init(s, n, -1);
       kvx_sender_send(s, pages, n);         // bootfake moves no bytes
       while (kvx_receiver_poll(r) == KVX_POLL_TRANSFERRING) idle();
       kvx_sender_destroy(s);   kvx_receiver_destroy(r);
       kvx_engine_destroy(de);  kvx_engine_destroy(pe);

   COMPILE-TIME MACROS (defaults in parentheses)
     KVX_BOOT_MAX_HEADER      bytes of an HTTP request line + headers (16384);
                              more is answered 431 and the connection closed
     KVX_BOOT_MAX_BODY        bytes of an HTTP request body (65536); more: 413
     KVX_BOOT_READ_TIMEOUT_MS a bootstrap HTTP connection (and a control
                              connection that has not said hello) must finish
                              within this many ms of being accepted (5000)
     KVX_BOOT_MAX_HTTP_CONNS  HTTP connections served at once (256); more are
                              answered 503 at once
     KVX_BOOT_MAX_FRAME       bytes of one control frame after its 8-byte
                              header (4 * KVX_MAX_PAGES + 4 *
                              KVX_BOOT_MAX_STATE_INDICES + 64)
     KVX_BOOT_MAX_STATE_INDICES  state indices one room frame carries (65536);
                              a receiver with more fails with a sentence
     KVX_BOOT_MAX_ENDPOINT    transport endpoint bytes in a hello (65536)
     KVX_BOOT_MAX_REASON      bytes of a reason text in status/abort (1024)
     KVX_BOOT_MAX_MESSAGE     bytes of one transport message (8 MiB: the rdma
                              CONNECT with KVX_RDMA_MAX_DEVS ports, KVX_MAX_BUFFERS
                              + KVX_MAX_AUX buffers and ~300 regions each; at
                              most KVX_BOOT_MAX_CONN_BYTES / 2)
     KVX_BOOT_MAX_PENDING     rooms whose frames arrived before their sender
                              was created, kept per prefill engine (65536)
     KVX_BOOT_MAX_CONN_BYTES  bytes one connection may make this side hold:
                              its unread answers plus the frames kept for
                              rooms with no sender yet (16 MiB); past it the
                              connection is closed and only its rooms fail
     KVX_BOOT_MAX_TOTAL_BYTES the same summed over every connection, with
                              their input buffers (256 MiB); the connection
                              whose growth passes it is closed
     KVX_BOOT_MAX_CTRL_CONNS  control connections at once (1024); more are
                              closed at accept
     KVX_BOOT_MAX_RANKS       dp*cp*tp*pp ranks the bootstrap server accepts (4096)
     KVX_BOOT_TRIES           attempts to reach the bootstrap server or a rank
                              before a room fails (5); backoff 200 ms, doubling
     KVX_BOOT_MAX_DP_ROOMS    rooms pinned to a dp rank (POST /register_dp_rank)
                              the server keeps (65536); past it the oldest pin
                              is evicted (its decode then waits and times out)
     KVX_BOOT_DP_ROOM_TTL_S   seconds a pin is kept (120, SGLang's
                              SGLANG_DISAGGREGATION_BOOTSTRAP_ENTRY_CLEANUP_INTERVAL)
     KVX_BOOT_MAX_QUERY_ROOMS rooms in one POST /query_dp_ranks (4096); more: 400

   ENVIRONMENT (desc.boot; kvx.h's settings rule; kvx__boot_table. Out of
   range is refused; before issue 12 heartbeat values were clamped)
     KVX_BOOTSTRAP_HOST        (desc.boot.host) prefill: address the bootstrap
                               server and the control listener bind; also what
                               other prefill ranks use to reach rank 0's
                               server (else the host of desc.bootstrap_addr,
                               else 0.0.0.0)
     KVX_BOOTSTRAP_PORT        (desc.boot.port) prefill: bootstrap server port,
                               0..65535 (else the port of desc.bootstrap_addr,
                               else 8998). 0 is a value (ephemeral): the field
                               asks for it with KVX_ZERO, the variable with 0;
                               kvx_boot_port() reads the bound port back
     KVX_BOOTSTRAP_RANK_IP     (desc.boot.rank_ip) prefill: the address this
                               rank registers as rank_ip (the bind address
                               when it is a specific one, else the host's
                               first non-loopback IPv4 address, else 127.0.0.1)
     KVX_HEARTBEAT_INTERVAL    (desc.boot.heartbeat_interval_s) decode: seconds
                               between heartbeats of every prefill in use,
                               [0.1, 3600] (SGLang's minimum is 2; 0.1 is for
                               tests) (5): a PING on each control connection
                               when the server info comes with the header
                               "X-Kvx-Heartbeat: control" (a kvx server), so
                               liveness needs no HTTP slot; else (SGLang's
                               server) GET /health
     KVX_HEARTBEAT_MAX_FAILURE (desc.boot.heartbeat_max_failure) decode:
                               failed heartbeats in a row after which the
                               rank (control pings: each rank alone, its
                               connection closed) or the prefill (GET
                               /health) is lost and the unfinished rooms
                               that depend on it fail, 1..1000 (2)
     KVX_BOOTSTRAP_TIMEOUT     (kvx.h, desc.bootstrap_timeout_s) seconds a
                               sender waits for its room frame
     KVX_AUTH_KEY, KVX_AUTH_KEY_FILE (kvx.h, desc.auth_key, auth_key_file)
                               a shared secret: see SECURITY
     KVX_LOAD_BALANCE_METHOD   (desc.boot.load_balance_method) prefill: SGLang's
                               --load-balance-method, registered as
                               load_balance_method (follow_bootstrap_room;
                               lower-case letters and '_'): see DP ATTENTION
     KVX_BOOTSTRAP_SERVER      (desc.boot.server) prefill: "host:port" of a
                               bootstrap server run by someone else (SGLang's
                               own, which SGLang starts beside its prefill
                               ranks): every rank, rank 0 included, registers
                               with it (PUT /route, and POST /register_dp_rank
                               for DP rooms) and none serves. Unset: rank 0
                               serves at KVX_BOOTSTRAP_HOST:PORT and the other
                               ranks register there
     Not read from the environment: desc.boot.tp_size/tp_rank, dp_size/dp_rank,
     pp_size/pp_rank, cp_size/cp_rank (see RANK MAPPING).

   THREAD SAFETY
     As kvx.h. Each kvx_boot owns an I/O thread (poll loop: HTTP server,
     control connections), on decode a heartbeat thread, and a small worker
     queue (decode: resolving and connecting; prefill ranks other than 0:
     registration). kvx_boot_destroy joins them all. Every kvx_boot_* call
     is thread-safe. Hooks run on those threads (on_message and on_peer_lost
     on the I/O thread; on_room also on the thread that creates a sender
     whose room frame had already arrived) and must not block; they may
     call kvx_boot_send_status, kvx_boot_abort, kvx_boot_peer_send and the
     kvx_room_* helpers. The >>parsers are pure and reentrant.

   BOOTSTRAP HTTP SERVER (prefill; HTTP/1.1, Connection: close)
     PUT /route     a rank registers: JSON object with attn_tp_size,
                    attn_tp_rank, attn_cp_size, attn_cp_rank, attn_dp_size,
                    attn_dp_rank, pp_size, pp_rank, system_dp_size,
                    system_dp_rank, rank_ip, rank_port, page_size,
                    kv_cache_dtype, load_balance_method, prefill_http_port,
                    enable_dsa_cache_layer_split (numbers may be JSON numbers
                    or decimal strings; rank_ip and rank_port are required,
                    sizes default to 1, ranks to 0; with system_dp_size > 1
                    the dp group is system_dp_size/rank, as SGLang's). The
                    first registration sets follow_bootstrap_room (its
                    load_balance_method is absent or "follow_bootstrap_room")
                    and enable_dsa_cache_layer_split (Python's bool() of it);
                    prefill_http_port is the first one given. 200 "OK"; 400
                    with a sentence when malformed or when it disagrees with
                    the sizes already registered.
     GET /route?prefill_dp_rank=D&prefill_cp_rank=C&target_tp_rank=T&target_pp_rank=P
                    all four -1: server info, SGLang's PrefillServerInfo field
                    for field and in its order: {"attn_tp_size",
                    "attn_cp_size","dp_size","pp_size","page_size" (null
                    when none registered),"kv_cache_dtype","follow_bootstrap_room",
                    "enable_dsa_cache_layer_split","prefill_http_port" (null
                    when none registered),"target_tp_rank","target_tp_ranks",
                    "target_cp_ranks","target_pp_ranks","required_dst_info_num",
                    "required_prefill_response_num" (these six null: the
                    decode fills them in SGLang)}, nothing more: SGLang's
                    decode builds PrefillServerInfo(**data), which refuses
                    unknown members (until this version a "kvx_heartbeat"
                    member broke SGLang 0.5.23's decode). The answer carries
                    the header "X-Kvx-Heartbeat: control", which tells a kvx
                    decode to heartbeat over the control connections (a
                    "kvx_heartbeat":"control" member is still read);
                    concrete ranks: {"rank_ip":"...","rank_port":N}. 400 when a parameter is missing or not
                    an integer, 503 until every dp*cp*tp*pp rank registered,
                    404 for a rank outside the registered sizes.
     POST /register_dp_rank {"bootstrap_room": R, "dp_rank": D}: pins room R
                    (an integer or decimal string in [0, 2^63)) to prefill dp
                    rank D (< the registered dp size). 200 "OK"; 400 when
                    malformed or D is out of range (SGLang's handler raises:
                    500); 503 before any rank registered. The table holds
                    KVX_BOOT_MAX_DP_ROOMS pins for KVX_BOOT_DP_ROOM_TTL_S
                    each; a room pinned again moves to the newest.
     POST /query_dp_ranks {"bootstrap_rooms": [R, ...]}: 200 {"R": D, ...}
                    for the pinned rooms; rooms not pinned are left out ({}
                    when none), as SGLang answers. 400 when malformed or
                    more than KVX_BOOT_MAX_QUERY_ROOMS rooms.
     GET /health    200 "OK"
     GET /metrics   Prometheus text: kvx_rooms{state=...} (open rooms by
                    state), kvx_rooms_created_total, kvx_rooms_succeeded_total,
                    kvx_rooms_failed_total, kvx_bytes_total,
                    kvx_room_failures_total{reason="KVX_ERR_..."} (closed and
                    open failed rooms by result code), kvx_boot_ranks_registered,
                    kvx_boot_ranks_expected, kvx_boot_control_connections,
                    kvx_boot_pending_rooms, kvx_boot_http_connections
     GET /rooms     JSON {"count":N,"rooms":[{"room","role","state","age_s",
                    "peer"}...]}: the unfinished rooms (at most 10000). Room
                    ids are listed to loopback clients only (an id lets a
                    stranger claim a room); others get {"count":N,"rooms":[],
                    "note":...}.
     With a key (KVX_AUTH_KEY): /metrics and /rooms answer 403 to
     non-loopback clients; PUT /route and POST /register_dp_rank need
     "X-Kvx-Auth: SECS:HEX" where HEX = HMAC-SHA-256(key, "kvx-boot-route\0"
     SECS "\0" body) and SECS (unix time) is within 300 s of the server's
     clock, else 403 (a kvx prefill sends it). /health, GET /route and POST
     /query_dp_ranks stay open (SGLang clients).
     Other paths 404, other methods 405. Requests are parsed strictly and
     bounded (KVX_BOOT_MAX_HEADER, KVX_BOOT_MAX_BODY, KVX_BOOT_READ_TIMEOUT_MS);
     one poll() loop serves every connection, so a slow or bad client holds
     only its own connection.

   CONTROL CHANNEL WIRE FORMAT (version 4; every integer little-endian.
   Version 2 added type 8; version 3 adds head_begin and layer_begin to the
   fixed hello (8 bytes more); version 4 adds the state buffers to the hello
   (num_state, state_type and their item_lens) and the decode's state
   indices to the room frame (kvx.h HYBRID STATE). An older peer's hello is refused with a
   sentence naming both versions (the version is read before the length),
   and it refuses ours the same way)
     One TCP connection per (decode engine, prefill rank); the decode side
     connects to the rank_ip:rank_port it resolved. Each frame:
       u32 body_len   bytes after this 8-byte header (<= KVX_BOOT_MAX_FRAME,
                      and per type as below)
       u16 type       1 hello, 2 room, 3 status, 4 abort, 5 ping, 6 pong,
                      7 auth, 8 transport message; others: protocol error
       u16 flags      0 (anything else: protocol error)
     HELLO (both ways, first frame of each side; body 112 + 8*(nb+na+ns) + dl + tl + el
            [+ 16 nonce, + 32 proof on the prefill's, when flags has bit 0])
       0  u8[8] magic "kvx-boot"        8  u16 protocol version (4)
       10 u16 role (1 prefill, 2 decode) 12 u32 flags (0; 1 = keyed, others refused)
       16 u64 instance (random per engine)
       24 u64 layout fingerprint (kvx_layout_fingerprint)
       32 i32 tp_size, tp_rank, dp_size, dp_rank, pp_size, pp_rank, cp_size, cp_rank
       64 u32 page_size   68 u32 dtype_size   72 u32 num_kv_heads   76 u32 mla
       80 u32 nb (KV buffers, <= KVX_MAX_BUFFERS)  84 u32 na (aux, <= KVX_MAX_AUX)
       88 u16 dl (dtype bytes, <= 63)   90 u16 tl (transport name bytes, <= 31)
       92 u32 el (endpoint bytes, <= KVX_BOOT_MAX_ENDPOINT)
       96 u32 head_begin  100 u32 layer_begin (kvx_layout's; each <= 64 *
          KVX_MAX_BUFFERS)
       104 u32 ns (state buffers, <= KVX_MAX_STATE)  108 u32 state_type (0..3)
       112 u64 item_len[nb], u64 aux_item_len[na], u64 state_item_len[ns],
          dtype, transport, endpoint,
          keyed: u8 nonce[16] (fresh per connection), prefill: u8 proof[32]
       Each side rebuilds the other's layout shape from it
       (kvx_boot_peer.layout). The decode refuses a prefill rank whose
       layout does not combine with its own (LAYOUTS BETWEEN RANKS); the
       prefill logs it.
     ROOM (decode -> prefill; body 24 + 4*n + 4*s)
       0 u64 room   8 i32 aux_index (-1 none)   12 u32 n (<= KVX_MAX_PAGES)
       16 u16 peer_index   18 u16 peer_count (decode ranks that send this
       room to this prefill rank; 0 <= index < count)
       20 u32 s (state indices, <= KVX_BOOT_MAX_STATE_INDICES)
       24 i32 dst_pages[n] (each >= 0), i32 dst_state[s] (each >= 0)
     STATUS (prefill -> decode; body 28 + rl)
       0 u64 room   8 u64 bytes moved   16 i32 state (kvx_poll)
       20 i32 result (kvx_result)   24 u32 rl (<= KVX_BOOT_MAX_REASON)   28 reason
     ABORT (both ways; body 12 + rl)
       0 u64 room   8 u32 rl (<= KVX_BOOT_MAX_REASON)   12 reason
       Accepted only from the connection that owns the room (prefill: sent
       its room frame; decode: a target rank); others are ignored, and a
       prefill keeps an abort for a room with no sender yet only when the
       same connection sent that room's frame.
     PING / PONG (both ways; body 8): u64 seq. A ping is answered with a pong
       carrying its seq at once; any bytes received count as liveness.
     AUTH (decode -> prefill, keyed; body 32): u8 proof[32].
     TRANSPORT MESSAGE (both ways, after the hellos (and AUTH); body 1 ..
       KVX_BOOT_MAX_MESSAGE): the transport's own bytes, opaque to kvx_boot,
       sent with kvx_boot_peer_send and handed to hooks.on_message of the
       far end with the peer it came from (a frame on an engine whose
       transport has no on_message, or an empty one, closes the connection).
       Used by kvx_rdma.h for its queue-pair exchange. With a key, only a
       peer that proved it can send one.
     AUTHENTICATION (both sides keyed): decode hello carries nonce_d;
       prefill hello carries nonce_p and kvx__auth_proof(key,
       "kvx-boot-server", nonce_d, nonce_p); the decode checks it and sends
       AUTH = kvx__auth_proof(key, "kvx-boot-client", nonce_p, nonce_d). The
       prefill reads nothing else before a valid AUTH (read deadline
       KVX_BOOT_READ_TIMEOUT_MS); a bad or missing one closes the connection
       and nothing it sent is applied. One side keyed, the other not:
       refused, and the decode's rooms fail with a sentence saying which.
     A room's destination is claimed by the first room frame for it; a
     frame from another connection that does not fit it (a slot already
     taken, another decode-rank count or page count) is refused with a
     status Failed to its sender and does not touch the room.
     A frame that breaks any rule closes that connection; the rooms that
     depended on it fail with the reason; every other connection goes on.

   LAYOUTS BETWEEN RANKS
     Ranks of different shapes (heterogeneous TP, PP: kvx.h PARALLEL
     LAYOUTS) are paired when kvx_layout_overlap(prefill layout, decode
     layout) is KVX_OK with bytes_per_page > 0, or the prefill rank is an
     MLA dummy (kvx_mla_dummy), and their aux buffers agree (count and
     item_lens); otherwise the decode's rooms for that prefill fail with
     KVX_ERR_LAYOUT_MISMATCH and a sentence naming the prefill rank (address,
     tp and pp rank) and kvx_layout_overlap's reason (or "shares no
     heads/layers"). The layout fingerprint is no longer compared on its own.

   RANK MAPPING
     desc.boot.tp_size/tp_rank, dp_size/dp_rank, pp_size/pp_rank,
     cp_size/cp_rank place an engine in its instance (sizes 1, ranks 0). The
     prefill engine whose ranks are all 0 runs the bootstrap server; the
     others register with it by PUT /route. A decode engine picks its
     prefill ranks as SGLang's _resolve_rank_mapping does:
     dp: see DP ATTENTION.
     tp: prefill tp == decode tp: the same rank; prefill tp > decode tp
     (ratio r): prefill ranks decode_tp_rank * r .. + r - 1 (MHA: each sends
     its heads; MLA: the first sends, the others are dummies); prefill tp <
     decode tp (ratio r): prefill rank decode_tp_rank / r, which then waits
     for r room frames (peer_index decode_tp_rank % r). Neither divides the
     other: the room fails with a sentence.
     pp: decode pp_size == prefill pp_size: the prefill ranks with the
     decode's own pp_rank; decode pp_size 1: every prefill pp rank; anything
     else: the room fails ("decode PP must equal prefill PP or be 1").
     cp: the decode's cp_size must be 1, and so, for now, the prefill's
     attn_cp_size (else the room fails with a sentence). SGLang's default
     (conn.py) targets only prefill CP rank 0 and makes the other CP ranks
     dummy senders (Success without bytes) unless
     SGLANG_DISAGGREGATION_ALL_CP_RANKS_TRANSFER or
     enable_dsa_cache_layer_split split the pages among CP ranks; kvx's
     transports have no CP dummy yet, so a prefill with CP ranks would send
     each byte attn_cp_size times.
     A receiver succeeds when every prefill rank it targets (its
     contributors) has reported status Success. A contributor that reports
     Failed or aborts fails the receiver with a sentence naming it ("failed
     by prefill engine at IP:PORT (tp rank T of N, pp rank P of M)"), and
     the decode tells the room's other contributors at once (abort), so they
     stop and free their rooms; likewise a prefill room that serves several
     decode ranks tells the others when one of them aborts.

   DP ATTENTION (SGLang's bootstrap server and decode, compared with
   sgl-project/sglang python/sglang/srt/disaggregation/common/conn.py and
   decode.py at commit 0094505da74125a31ceb354f37ae7a1b6a97d3f5)
     Each prefill dp rank is its own engine (desc.boot.dp_size/dp_rank, its
     own pool); dp rank 0's tp/pp rank 0 runs the server. The decode picks a
     room's prefill dp rank: dp_size 1: 0; the server info says
     follow_bootstrap_room: room % dp_size; otherwise it asks POST
     /query_dp_ranks (rooms of one prefill batched, 256 a call) again after
     200, 400, then every 800 ms while the room is not pinned yet, and the
     room fails with a sentence when KVX_BOOTSTRAP_TIMEOUT passes (or the
     answer is not a dp rank below dp_size). Prefill senders with dp_size >
     1: KVX_LOAD_BALANCE_METHOD follow_bootstrap_room (the default) refuses
     a room whose room % dp_size is another dp rank ("follow_bootstrap_room
     conflict", as SGLang); any other method pins each sender's room to its
     dp rank (POST /register_dp_rank, from a worker; rank 0 pins directly),
     as SGLang's _register_prefill_dp_rank.

   HOW A TRANSPORT USES IT (the declarations below say the rest)
     engine_init / engine_fini: kvx_boot_create / kvx_boot_destroy; room_open,
     room_close, room_failed: kvx_boot_room_open / _close / _failed (backends
     without room_failed: kvx_boot_abort); decode receiver_init:
     kvx_boot_receiver_init; per peer: kvx_boot_peer_send and hooks.on_message.
     Prefill: hooks.on_room learns each destination; when the last byte is
     placed call kvx_boot_send_status(boot, r, KVX_POLL_SUCCESS, KVX_OK,
     bytes, NULL) after kvx_room_succeed (only when it stuck). Failures a peer
     reports or causes reach rooms through kvx_room_fail_remote (nothing is
     echoed back); a peer's reason that already starts "room <id>: " is kept
     as is, followed by who reported it.

   TIMEOUTS AND FAILURES (decode side unless noted)
     Reaching the bootstrap server or a rank: KVX_BOOT_TRIES attempts, 2 s
     each, backoff 200/400/800/1600 ms, while it refuses connections, times
     out or answers 503; then the waiting rooms fail with a sentence that
     names the address. A dropped control connection (one prefill rank
     killed or unreachable) fails at once every unfinished room that
     depends on that rank (the rank is one of its targets and has not
     reported Success) and only those: rooms of other dp ranks, and rooms
     whose contributors are all other ranks, go on. The sentence names the
     rank: "lost connection with prefill instance HOST:PORT (rank IP:PORT),
     prefill tp rank 1 of 4, pp rank 0 of 1, dp rank 0 of 1: <reason>", and
     the room's other contributors are told (abort) so they stop. While any
     room of the instance is unfinished, a new room that needs the lost rank
     fails at once with that sentence; rooms on its live ranks are served.
     A rank that leaves KVX_HEARTBEAT_MAX_FAILURE pings in a row unanswered
     (each unanswered for an interval) is lost the same way (its connection
     is closed; reason "consecutive heartbeats failed (it answered none of
     KVX_HEARTBEAT_MAX_FAILURE pings in a row ...)"). The whole instance is dropped (every
     unfinished room fails) when its last rank is lost, or after
     KVX_HEARTBEAT_MAX_FAILURE failed GET /health in a row (non-kvx
     prefills; each bounded by min(interval, 2 s)). The next
     room for a dropped instance, or for one with a lost rank and no
     unfinished room, resolves it again, so a restarted prefill is picked
     up without restarting decode. Prefill: a dropped decode connection fails that
     decode's unfinished senders, and a sender created after its decode's
     connection dropped (the room frame came first and went with it) fails
     at once with a sentence saying so; room frames kept for senders never
     created answer Failed after KVX_BOOTSTRAP_TIMEOUT. Every local failure
     (kvx_*_abort, a refused argument, the core's timeouts, destroying an
     unfinished room) reaches the peer at once, once, with the first reason
     (room_failed); a room that reached Success sends nothing more.

   SECURITY (each rule's trust note stands where the rule is described)
     Everything read is bounded and checked before use; every queue a peer
     can fill has a byte budget (KVX_BOOT_MAX_CONN_BYTES, _TOTAL_BYTES). A
     client holding every HTTP slot cannot fail rooms in flight (liveness
     uses control pings) but can keep new decode engines from resolving the
     prefill. Without a key (SGLang-compatible): anyone who reaches the
     ports can register ranks (PUT /route), and, knowing or guessing a room
     id, claim a room whose destination has not arrived yet, or take an
     unfilled slot of a room served by several decode ranks: bind them to a
     private network (KVX_BOOTSTRAP_HOST). With a key (the same on every
     engine): AUTHENTICATION and the HTTP server above. Not covered: frames
     are not encrypted or MAC'd after the handshake (someone who can rewrite
     packets on the path can still inject).

   LIMITS OF THIS VERSION
     The decode side's HTTP client and connects are blocking calls on its
     worker threads (bounded by the timeouts above), not on the poll loop.
     kvx_boot pairs ranks and carries each side's layout shape; moving a
     slice (heterogeneous TP, PP) is the transport's work (kvx_plan_pages).
     cp ranks are all targeted (SGLang targets cp rank 0 only unless every
     cp rank transfers). A request's own prefill dp rank (SGLang's
     disagg_prefill_dp_rank) cannot be given; the dp query is not routed
     around a dead prefill. No TLS, no keep-alive.

   LICENSE: MIT, see the end of this file.
*/
#ifndef KVX_BOOT_H_INCLUDED
#define KVX_BOOT_H_INCLUDED

#include "kvx.h"

#if !defined(KVX_VERSION_MAJOR) || KVX_VERSION_MAJOR != 0
#error "kvx_boot.h needs kvx.h major version 0"
#endif

#ifndef KVX_BOOT_MAX_HEADER
#define KVX_BOOT_MAX_HEADER 16384
#endif
#ifndef KVX_BOOT_MAX_BODY
#define KVX_BOOT_MAX_BODY 65536
#endif
#ifndef KVX_BOOT_READ_TIMEOUT_MS
#define KVX_BOOT_READ_TIMEOUT_MS 5000
#endif
#ifndef KVX_BOOT_MAX_HTTP_CONNS
#define KVX_BOOT_MAX_HTTP_CONNS 256
#endif
#ifndef KVX_BOOT_MAX_STATE_INDICES
#define KVX_BOOT_MAX_STATE_INDICES 65536
#endif
#ifndef KVX_BOOT_MAX_FRAME
#define KVX_BOOT_MAX_FRAME (4u * (uint32_t)KVX_MAX_PAGES + 4u * (KVX_BOOT_MAX_STATE_INDICES) + 64u)
#endif
#ifndef KVX_BOOT_MAX_ENDPOINT
#define KVX_BOOT_MAX_ENDPOINT 65536
#endif
#ifndef KVX_BOOT_MAX_REASON
#define KVX_BOOT_MAX_REASON 1024
#endif
#ifndef KVX_BOOT_MAX_PENDING
#define KVX_BOOT_MAX_PENDING 65536
#endif
#ifndef KVX_BOOT_MAX_MESSAGE
#define KVX_BOOT_MAX_MESSAGE (8u << 20)
#endif
#ifndef KVX_BOOT_MAX_RANKS
#define KVX_BOOT_MAX_RANKS 4096
#endif
#ifndef KVX_BOOT_MAX_CONN_BYTES
#define KVX_BOOT_MAX_CONN_BYTES (16u << 20)
#endif
#ifndef KVX_BOOT_MAX_TOTAL_BYTES
#define KVX_BOOT_MAX_TOTAL_BYTES (256u << 20)
#endif
#ifndef KVX_BOOT_MAX_CTRL_CONNS
#define KVX_BOOT_MAX_CTRL_CONNS 1024
#endif
#ifndef KVX_BOOT_TRIES
#define KVX_BOOT_TRIES 5
#endif
#ifndef KVX_BOOT_MAX_DP_ROOMS
#define KVX_BOOT_MAX_DP_ROOMS 65536
#endif
#ifndef KVX_BOOT_DP_ROOM_TTL_S
#define KVX_BOOT_DP_ROOM_TTL_S 120
#endif
#ifndef KVX_BOOT_MAX_QUERY_ROOMS
#define KVX_BOOT_MAX_QUERY_ROOMS 4096
#endif

#if (KVX_MAX_PAGES) > 0x3ffffff0u - (KVX_BOOT_MAX_STATE_INDICES)
#error "kvx_boot.h: KVX_MAX_PAGES is too large for a room frame (4 bytes per page, u32 length)"
#endif

#if (KVX_BOOT_MAX_MESSAGE) < 1 || (KVX_BOOT_MAX_MESSAGE) > (KVX_BOOT_MAX_CONN_BYTES) / 2
#error "kvx_boot.h: KVX_BOOT_MAX_MESSAGE must be 1..KVX_BOOT_MAX_CONN_BYTES / 2"
#endif

#define KVX_BOOT_PROTOCOL_VERSION 4
#define KVX_BOOT_DEFAULT_PORT 8998

#ifdef __cplusplus
extern "C" {
#endif

typedef struct kvx_boot kvx_boot;

/* What one side learned of the other from its hello. Valid during the
   hook call that receives it; copy what you keep. */
typedef struct kvx_boot_peer {
    const char *addr;      /* "ip:port" of the connection's far end */
    const char *bootstrap; /* decode side: the prefill's bootstrap "host:port"; else "" */
    kvx_role role;
    uint64_t instance;     /* random per engine: tells a restarted peer apart */
    uint64_t fingerprint;
    int tp_size, tp_rank, dp_size, dp_rank, pp_size, pp_rank, cp_size, cp_rank;
    const char *transport;
    const void *endpoint;  /* the peer's transport-specific bytes */
    uint32_t endpoint_len;
    uint64_t conn_id;      /* this control connection, unique per kvx_boot (never 0):
                              what kvx_boot_peer_send reads, so a copy may be kept */
    /* The peer's layout shape from its hello: buffers with item_len only
       (bases NULL, lengths 0), aux item_lens, page_size, dtype, dtype_size,
       num_kv_heads, head_begin, layer_begin, mla. Valid for the connection's
       lifetime (a copy of the peer does not copy it: copy what you keep). */
    const kvx_layout *layout;
} kvx_boot_peer;

/* Hooks a transport gives kvx_boot_create. All optional. */
typedef struct kvx_boot_hooks {
    void *user; /* kvx_boot_user() */
    /* Prefill: a room frame arrived for `sender` (once per decode rank
       that serves the room). dst_pages and dst_state (that decode rank's
       state indices, HYBRID STATE in kvx.h; num_state 0 when none) are
       valid during the call. A result
       other than KVX_OK fails the room and tells the decode side. */
    kvx_result (*on_room)(kvx_boot *b, kvx_room *sender, const kvx_boot_peer *peer,
                          const int32_t *dst_pages, uint32_t n, int32_t aux_index,
                          const int32_t *dst_state, uint32_t num_state);
    /* Decode: a status frame for `receiver`. Return 1 when handled; 2 when
       handled and that prefill rank is done with the room (its Success
       counts, and losing it afterwards no longer fails the room: the file
       transport, whose bytes are already in files, uses this); 0 runs the
       default (Success from every target -> kvx_room_succeed with the
       bytes summed; Failed -> kvx_room_fail with the peer's reason). */
    int (*on_status)(kvx_boot *b, kvx_room *receiver, const kvx_boot_peer *peer,
                     kvx_poll state, kvx_result result, uint64_t bytes, const char *reason);
    /* Both sides: the peer aborted `room`; the room is already failed. */
    void (*on_abort)(kvx_boot *b, kvx_room *room, const kvx_boot_peer *peer, const char *reason);
    /* Both sides: hellos exchanged / the connection is gone. */
    void (*on_connect)(kvx_boot *b, const kvx_boot_peer *peer);
    void (*on_disconnect)(kvx_boot *b, const kvx_boot_peer *peer, const char *reason);
    /* Prefill: the control connection of the decode that `sender` sends to
       is gone. Return 1 when the transport settles the room itself (its
       last byte left on a data path that will still deliver the decode's
       acknowledgement or report its loss), so that a room the decode
       already holds whole is not failed by a disconnect that overtook the
       acknowledgement; 0 (or no hook) fails the room now. */
    int (*on_peer_lost)(kvx_boot *b, kvx_room *sender, const char *reason);
    /* Both sides: a transport message from peer (kvx_boot_peer_send on the
       far end), in the order sent; msg is valid during the call. */
    void (*on_message)(kvx_boot *b, const kvx_boot_peer *peer, const void *msg, size_t len);
} kvx_boot_hooks;

/* Starts the bootstrap machinery of engine e (call from the transport's
   engine_init): prefill: control listener, and on the rank-0 engine the
   HTTP server, which registers this rank itself; other prefill ranks
   register with it in the background. Decode: I/O, heartbeat and resolver
   threads. endpoint (<= KVX_BOOT_MAX_ENDPOINT bytes, may be NULL) goes to
   every peer in the hello. Errors: KVX_ERR_BAD_CONFIG (a KVX_* variable
   that does not parse), KVX_ERR_IO (cannot listen: port in use...),
   KVX_ERR_INVALID_ARGUMENT, KVX_ERR_NO_MEMORY; why says which. Blocks
   briefly (binds, starts threads). */
KVX_API kvx_result kvx_boot_create(kvx_engine *e, const kvx_boot_hooks *hooks,
                                   const void *endpoint, size_t endpoint_len, kvx_boot **out,
                                   char *why, size_t why_len);
/* Stops and joins every thread, closes every connection. NULL ok. Call
   from engine_fini (after the core closed the rooms). */
KVX_API void kvx_boot_destroy(kvx_boot *b);

/* The kvx_boot of an engine whose transport uses one, or NULL. */
KVX_API kvx_boot *kvx_boot_get(const kvx_engine *e);
KVX_API kvx_engine *kvx_boot_engine(const kvx_boot *b);
KVX_API void *kvx_boot_user(const kvx_boot *b);
/* Bound port of the bootstrap HTTP server (0 when this engine runs none). */
KVX_API int kvx_boot_port(const kvx_boot *b);
/* Bound port of the prefill's control listener (0 on decode). */
KVX_API int kvx_boot_control_port(const kvx_boot *b);
/* kvx_boot_port(kvx_boot_get(e)); 0 when e has no kvx_boot. */
KVX_API int kvx_boot_engine_port(const kvx_engine *e);

/* Room hooks. room_open: prefill registers the sender (applying room
   frames that arrived first); decode resolves the prefill named by the
   room's bootstrap address (in the background the first time) and moves
   the room to WAITING_FOR_INPUT once every control connection it needs is
   up. A room that cannot proceed is failed with a sentence (the call still
   returns KVX_OK so the caller can read it). Does not block. */
KVX_API kvx_result kvx_boot_room_open(kvx_boot *b, kvx_room *r);
/* Sends a transport message (1..KVX_BOOT_MAX_MESSAGE bytes, copied) on
   the control connection of peer (as given to a hook, or a copy: only
   peer->conn_id is read), after everything sent on it before. KVX_OK:
   sent or queued; KVX_ERR_INVALID_ARGUMENT (a length out of range),
   KVX_ERR_PEER_LOST (the connection is gone, or the peer stopped reading:
   then it is closed), with a sentence in why. Thread-safe, non-blocking. */
KVX_API kvx_result kvx_boot_peer_send(kvx_boot *b, const kvx_boot_peer *peer, const void *msg,
                                      size_t len, char *why, size_t why_len);
/* Forgets the room; an unfinished room tells its peer (abort). */
KVX_API void kvx_boot_room_close(kvx_boot *b, kvx_room *r);
/* Decode: sends the room frame to every target prefill rank.
   KVX_ERR_STATE before the room is ready, KVX_ERR_PEER_LOST when a
   connection is gone (the room is failed with the reason). Non-blocking. */
KVX_API kvx_result kvx_boot_receiver_init(kvx_boot *b, kvx_room *r, const int32_t *pages,
                                          uint32_t n, int32_t aux_index);
/* Prefill: reports state (KVX_POLL_SUCCESS or KVX_POLL_FAILED) to every
   decode rank that sent this room's frame. reason may be NULL. Returns
   KVX_ERR_STATE when no room frame arrived yet, KVX_ERR_PEER_LOST when the
   connection is gone. Non-blocking. */
KVX_API kvx_result kvx_boot_send_status(kvx_boot *b, kvx_room *r, kvx_poll state,
                                        kvx_result result, uint64_t bytes, const char *reason);
/* Tells the peer(s) of the room that this side aborted it (the peer fails
   its side with the reason). A prefill room whose frame has not arrived
   answers it with the abort when it does. Non-blocking. */
KVX_API void kvx_boot_abort(kvx_boot *b, kvx_room *r, const char *reason);
/* Tells the peer(s) of room r that it failed, with r's first reason and
   result code (kvx_room_error / kvx_room_result): prefill -> a status
   Failed frame to every decode rank that sent the room's destination (a
   rank whose destination arrives later gets it then); decode -> an abort
   frame to every target prefill rank once the room frame went out. Once
   per room (kvx_boot_abort, kvx_boot_send_status(FAILED) and destroying an
   unfinished room count as that once); a no-op when r is not Failed.
   Transports call it from their room_failed hook. Non-blocking. */
KVX_API void kvx_boot_room_failed(kvx_boot *b, kvx_room *r);
/* Prefill: the number of destination pages the decode side asked for
   (every decode rank that serves the room asks for the same count), or 0
   before the room frame arrived. */
KVX_API uint32_t kvx_boot_room_dst_pages(kvx_boot *b, const kvx_room *r);

/* The test and benchmark transport "bootfake": the full handshake, no
   data. A sender becomes WAITING_FOR_INPUT when its room frame arrives,
   checks that init declares as many pages as the decode side asked for,
   and after its last chunk sends status Success and succeeds; the receiver
   succeeds on that status. */
KVX_API const kvx_backend *kvx_bootfake_backend(void);
/* Makes "bootfake" known to desc.transport. Thread-safe, idempotent. */
KVX_API kvx_result kvx_boot_register(void);

/* >>parsers (pure: no I/O, no globals; for the server, tools and fuzzers) */

typedef struct kvx_boot_http_request {
    int complete;         /* 1: request line, headers and body all present */
    int headers_done;     /* 1: the blank line after the headers was seen */
    int status;           /* on error: the HTTP status to answer (400, 413, 431, 501, 505) */
    const char *method;   /* pointers into the buffer, not NUL-terminated */
    size_t method_len;
    const char *path;     /* target up to '?' */
    size_t path_len;
    const char *query;    /* after '?', or NULL */
    size_t query_len;
    const char *body;
    size_t body_len;
    size_t header_len;    /* bytes up to and including the blank line */
    size_t consumed;      /* header_len + body_len once complete */
    uint64_t content_length;
    int expect_continue;  /* "Expect: 100-continue" */
    const char *auth;     /* value of "X-Kvx-Auth" (PUT /route with a key), or NULL */
    size_t auth_len;
    int http10;           /* HTTP/1.0 */
    char error[128];
} kvx_boot_http_request;

/* Parses one HTTP/1.x request at the start of buf[0..len). KVX_OK with
   complete 0: need more bytes (headers_done tells whether the headers are
   in). KVX_ERR_PROTOCOL with out->status and out->error set: the request
   is bad (malformed 400, header block over KVX_BOOT_MAX_HEADER 431, body
   over KVX_BOOT_MAX_BODY 413, Transfer-Encoding 501, not HTTP/1.x 505). */
KVX_API kvx_result kvx_boot_parse_http_request(const void *buf, size_t len,
                                               kvx_boot_http_request *out);
/* The decimal integer value of `key` in a query string; 1 found and valid,
   0 absent, -1 present but not an integer in [INT32_MIN, INT32_MAX]. */
KVX_API int kvx_boot_query_int(const char *query, size_t len, const char *key, int32_t *out);

typedef enum kvx_boot_frame_type {
    KVX_BOOT_FRAME_HELLO = 1,
    KVX_BOOT_FRAME_ROOM = 2,
    KVX_BOOT_FRAME_STATUS = 3,
    KVX_BOOT_FRAME_ABORT = 4,
    KVX_BOOT_FRAME_PING = 5,
    KVX_BOOT_FRAME_PONG = 6,
    KVX_BOOT_FRAME_AUTH = 7,
    KVX_BOOT_FRAME_TRANSPORT = 8
} kvx_boot_frame_type;

#define KVX_BOOT_HELLO_AUTH 1u /* hello flag: this side has a key; nonce (and proof) follow */
#define KVX_BOOT_NONCE 16
#define KVX_BOOT_PROOF 32

typedef struct kvx_boot_hello {
    uint16_t version, role;
    uint32_t flags;                /* 0, or KVX_BOOT_HELLO_AUTH */
    const uint8_t *nonce;          /* flags & AUTH: KVX_BOOT_NONCE bytes */
    const uint8_t *proof;          /* flags & AUTH, prefill's hello: KVX_BOOT_PROOF bytes */
    uint64_t instance, fingerprint;
    int32_t tp_size, tp_rank, dp_size, dp_rank, pp_size, pp_rank, cp_size, cp_rank;
    uint32_t page_size, dtype_size, num_kv_heads, mla, num_buffers, num_aux;
    uint32_t head_begin, layer_begin; /* version 3: where the rank's slice sits */
    uint32_t num_state, state_type;   /* version 4: hybrid state buffers */
    const uint64_t *item_lens;     /* encode: native values */
    const uint64_t *aux_item_lens; /* encode: native values */
    const uint64_t *state_item_lens; /* encode: native values */
    const uint8_t *item_lens_le;   /* decode: num_buffers u64 LE, unaligned */
    const uint8_t *aux_item_lens_le;
    const uint8_t *state_item_lens_le;
    const char *dtype;
    uint32_t dtype_len;
    const char *transport;
    uint32_t transport_len;
    const void *endpoint;
    uint32_t endpoint_len;
} kvx_boot_hello;

typedef struct kvx_boot_frame {
    kvx_boot_frame_type type;
    uint32_t body_len;     /* set as soon as the 8-byte header is there */
    uint64_t room;         /* room, status, abort */
    int32_t aux_index;     /* room */
    uint32_t num_pages;    /* room */
    uint16_t peer_index, peer_count; /* room */
    const int32_t *pages;  /* room, encode: native values */
    const uint8_t *pages_le; /* room, decode: n i32 LE, unaligned */
    uint32_t num_state;    /* room: the decode's state indices (HYBRID STATE) */
    const int32_t *state_idx; /* room, encode: native values */
    const uint8_t *state_le; /* room, decode: num_state i32 LE, unaligned */
    int32_t state, result; /* status */
    uint64_t bytes;        /* status */
    const char *reason;    /* status, abort; not NUL-terminated */
    uint32_t reason_len;
    uint64_t seq;          /* ping, pong */
    const uint8_t *proof;  /* auth: KVX_BOOT_PROOF bytes */
    const void *message;   /* transport: message_len opaque bytes */
    uint32_t message_len;
    kvx_boot_hello hello;  /* hello */
} kvx_boot_frame;

/* Decodes one frame at the start of buf[0..len). KVX_OK and *consumed > 0:
   a whole valid frame (pointers point into buf). KVX_OK and *consumed == 0:
   need more bytes (out->body_len tells how many once the header is in).
   KVX_ERR_PROTOCOL and a sentence in why: unknown type, nonzero flags, a
   length or count beyond its limit, sizes that do not add up. */
KVX_API kvx_result kvx_boot_frame_decode(const void *buf, size_t len, kvx_boot_frame *out,
                                         size_t *consumed, char *why, size_t why_len);
/* Page i of a decoded room frame. */
KVX_API int32_t kvx_boot_frame_page(const kvx_boot_frame *f, uint32_t i);
/* State index i of a decoded room frame. */
KVX_API int32_t kvx_boot_frame_state(const kvx_boot_frame *f, uint32_t i);

#ifdef __cplusplus
}
#endif
#endif /* KVX_BOOT_H_INCLUDED */

/* ======================================================================== */
/*                             IMPLEMENTATION                               */
/* ======================================================================== */
#if defined(KVX_IMPLEMENTATION) && !defined(KVX_BOOT_IMPL_INCLUDED)
#define KVX_BOOT_IMPL_INCLUDED

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <errno.h>
#include <limits.h>
#include <unistd.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/types.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <netdb.h>
#include <ifaddrs.h>
#include <net/if.h>

#ifdef __cplusplus
extern "C" {
#endif

/* >>boot: frame codec ----------------------------------------------------- */

#define KVX__BOOT_HDR 8
#define KVX__BOOT_HELLO_FIXED 112
#define KVX__BOOT_ROOM_FIXED 24
#define KVX__BOOT_STATUS_FIXED 28
#define KVX__BOOT_ABORT_FIXED 12
#define KVX__BOOT_MAGIC "kvx-boot"

static const char *kvx__boot_type_name(uint32_t t) { /* by kvx_boot_frame_type */
    static const char *const names[] = {"unknown", "hello", "room", "status", "abort",
                                        "ping",    "pong",  "auth", "transport"};
    return t < KVX__COUNT(names) ? names[t] : "unknown";
}

/* The largest body a frame of this type may have, so a peer cannot make
   us buffer 64 MiB for a status frame. */
static uint64_t kvx__boot_type_max(uint32_t t) {
    switch (t) {
    case KVX_BOOT_FRAME_HELLO:
        return KVX__BOOT_HELLO_FIXED + 8ull * (KVX_MAX_BUFFERS + KVX_MAX_AUX + KVX_MAX_STATE) + 63 + 31 +
               KVX_BOOT_MAX_ENDPOINT + KVX_BOOT_NONCE + KVX_BOOT_PROOF;
    case KVX_BOOT_FRAME_ROOM:
        return KVX__BOOT_ROOM_FIXED + 4ull * KVX_MAX_PAGES + 4ull * KVX_BOOT_MAX_STATE_INDICES;
    case KVX_BOOT_FRAME_STATUS: return KVX__BOOT_STATUS_FIXED + KVX_BOOT_MAX_REASON;
    case KVX_BOOT_FRAME_ABORT: return KVX__BOOT_ABORT_FIXED + KVX_BOOT_MAX_REASON;
    case KVX_BOOT_FRAME_PING:
    case KVX_BOOT_FRAME_PONG: return 8;
    case KVX_BOOT_FRAME_AUTH: return KVX_BOOT_PROOF;
    case KVX_BOOT_FRAME_TRANSPORT: return KVX_BOOT_MAX_MESSAGE;
    }
    return 0;
}

/* A protocol refusal: kvx__why with KVX_ERR_PROTOCOL. */
#define kvx__boot_bad(why, wl, ...) kvx__why(KVX_ERR_PROTOCOL, why, wl, __VA_ARGS__)

/* Bytes after the endpoint: a keyed hello carries the sender's nonce, and
   the prefill's (the answer) also its proof over the decode's nonce. */
static uint32_t kvx__boot_hello_auth_len(uint32_t flags, uint32_t role) {
    if (!(flags & KVX_BOOT_HELLO_AUTH)) return 0;
    return KVX_BOOT_NONCE + (role == KVX_ROLE_PREFILL ? KVX_BOOT_PROOF : 0);
}

static kvx_result kvx__boot_decode_hello(const uint8_t *p, uint32_t n, kvx_boot_hello *h,
                                         char *why, size_t wl) {
    uint64_t need;
    uint32_t el;
    uint16_t dl, tl;
    const uint8_t *q;
    if (n < 10 || memcmp(p, KVX__BOOT_MAGIC, 8) != 0)
        return kvx__boot_bad(why, wl, "hello does not start with \"kvx-boot\" (not a kvx peer?)");
    h->version = kvx__le_r16(p + 8); /* before the length: older hellos are shorter */
    if (h->version != KVX_BOOT_PROTOCOL_VERSION)
        return kvx__boot_bad(why, wl, "peer speaks kvx boot protocol version %u, this side %d",
                             h->version, KVX_BOOT_PROTOCOL_VERSION);
    if (n < KVX__BOOT_HELLO_FIXED)
        return kvx__boot_bad(why, wl, "hello of %u bytes is shorter than its %d fixed bytes", n,
                             KVX__BOOT_HELLO_FIXED);
    h->role = kvx__le_r16(p + 10);
    if (h->role != KVX_ROLE_PREFILL && h->role != KVX_ROLE_DECODE)
        return kvx__boot_bad(why, wl, "hello has role %u (1 prefill or 2 decode expected)", h->role);
    h->flags = kvx__le_r32(p + 12);
    if (h->flags & ~KVX_BOOT_HELLO_AUTH)
        return kvx__boot_bad(why, wl, "hello flags %#x (0 or 1 expected)", (unsigned)h->flags);
    h->instance = kvx__le_r64(p + 16);
    h->fingerprint = kvx__le_r64(p + 24);
    h->tp_size = (int32_t)kvx__le_r32(p + 32); h->tp_rank = (int32_t)kvx__le_r32(p + 36);
    h->dp_size = (int32_t)kvx__le_r32(p + 40); h->dp_rank = (int32_t)kvx__le_r32(p + 44);
    h->pp_size = (int32_t)kvx__le_r32(p + 48); h->pp_rank = (int32_t)kvx__le_r32(p + 52);
    h->cp_size = (int32_t)kvx__le_r32(p + 56); h->cp_rank = (int32_t)kvx__le_r32(p + 60);
    h->page_size = kvx__le_r32(p + 64);
    h->dtype_size = kvx__le_r32(p + 68);
    h->num_kv_heads = kvx__le_r32(p + 72);
    h->mla = kvx__le_r32(p + 76);
    h->num_buffers = kvx__le_r32(p + 80);
    h->num_aux = kvx__le_r32(p + 84);
    dl = kvx__le_r16(p + 88);
    tl = kvx__le_r16(p + 90);
    el = kvx__le_r32(p + 92);
    h->head_begin = kvx__le_r32(p + 96);
    h->layer_begin = kvx__le_r32(p + 100);
    h->num_state = kvx__le_r32(p + 104);
    h->state_type = kvx__le_r32(p + 108);
    if (h->num_state > KVX_MAX_STATE || h->state_type > KVX_STATE_OTHER)
        return kvx__boot_bad(why, wl, "hello declares %u state buffers of type %u (limits %d, 0..3)",
                             h->num_state, h->state_type, KVX_MAX_STATE);
    if (h->head_begin > KVX_MAX_BUFFERS * 64u || h->layer_begin > KVX_MAX_BUFFERS * 64u)
        return kvx__boot_bad(why, wl, "hello has head_begin %u, layer_begin %u (limit %u)",
                             h->head_begin, h->layer_begin, KVX_MAX_BUFFERS * 64u);
    if (h->num_buffers > KVX_MAX_BUFFERS || h->num_aux > KVX_MAX_AUX)
        return kvx__boot_bad(why, wl, "hello declares %u KV and %u aux buffers (limits %d, %d)",
                             h->num_buffers, h->num_aux, KVX_MAX_BUFFERS, KVX_MAX_AUX);
    if (dl > 63 || tl > 31 || el > KVX_BOOT_MAX_ENDPOINT)
        return kvx__boot_bad(why, wl,
                             "hello string lengths dtype %u, transport %u, endpoint %u exceed "
                             "63, 31, %d", dl, tl, el, KVX_BOOT_MAX_ENDPOINT);
    need = KVX__BOOT_HELLO_FIXED + 8ull * (h->num_buffers + h->num_aux + h->num_state) + dl + tl +
           el + kvx__boot_hello_auth_len(h->flags, h->role);
    if (need != n)
        return kvx__boot_bad(why, wl, "hello is %u bytes but its fields add up to %llu", n,
                             (unsigned long long)need);
    q = p + KVX__BOOT_HELLO_FIXED;
    h->item_lens_le = q; q += 8u * h->num_buffers;
    h->aux_item_lens_le = q; q += 8u * h->num_aux;
    h->state_item_lens_le = q; q += 8u * h->num_state;
    h->dtype = (const char *)q; h->dtype_len = dl; q += dl;
    h->transport = (const char *)q; h->transport_len = tl; q += tl;
    h->endpoint = q; h->endpoint_len = el; q += el;
    if (h->flags & KVX_BOOT_HELLO_AUTH) {
        h->nonce = q;
        if (h->role == KVX_ROLE_PREFILL) h->proof = q + KVX_BOOT_NONCE;
    }
    return KVX_OK;
}

KVX_API kvx_result kvx_boot_frame_decode(const void *buf, size_t len, kvx_boot_frame *f,
                                         size_t *consumed, char *why, size_t wl) {
    const uint8_t *p = (const uint8_t *)buf;
    uint32_t blen, type, flags;
    const uint8_t *b;
    if (why && wl) why[0] = 0;
    if (!f || !consumed || (!buf && len)) return KVX_ERR_INVALID_ARGUMENT;
    *consumed = 0;
    memset(f, 0, sizeof *f);
    if (len < KVX__BOOT_HDR) return KVX_OK;
    blen = kvx__le_r32(p);
    type = kvx__le_r16(p + 4);
    flags = kvx__le_r16(p + 6);
    f->body_len = blen;
    if (type < KVX_BOOT_FRAME_HELLO || type > KVX_BOOT_FRAME_TRANSPORT)
        return kvx__boot_bad(why, wl, "unknown frame type %u", type);
    f->type = (kvx_boot_frame_type)type;
    if (flags) return kvx__boot_bad(why, wl, "%s frame has flags %#x (0 expected)",
                                    kvx__boot_type_name(type), flags);
    if (blen > KVX_BOOT_MAX_FRAME || (uint64_t)blen > kvx__boot_type_max(type))
        return kvx__boot_bad(why, wl, "%s frame of %u bytes exceeds its limit of %llu",
                             kvx__boot_type_name(type), blen,
                             (unsigned long long)kvx__boot_type_max(type));
    if (len - KVX__BOOT_HDR < blen) return KVX_OK;
    b = p + KVX__BOOT_HDR;
    switch (type) {
    case KVX_BOOT_FRAME_HELLO: {
        kvx_result r = kvx__boot_decode_hello(b, blen, &f->hello, why, wl);
        if (r != KVX_OK) return r;
        break;
    }
    case KVX_BOOT_FRAME_ROOM: {
        uint32_t i;
        if (blen < KVX__BOOT_ROOM_FIXED)
            return kvx__boot_bad(why, wl, "room frame of %u bytes is too short", blen);
        f->room = kvx__le_r64(b);
        f->aux_index = (int32_t)kvx__le_r32(b + 8);
        f->num_pages = kvx__le_r32(b + 12);
        f->peer_index = kvx__le_r16(b + 16);
        f->peer_count = kvx__le_r16(b + 18);
        if (f->num_pages > KVX_MAX_PAGES)
            return kvx__boot_bad(why, wl, "room %llu: %u pages exceed KVX_MAX_PAGES (%u)",
                                 (unsigned long long)f->room, f->num_pages,
                                 (unsigned)KVX_MAX_PAGES);
        f->num_state = kvx__le_r32(b + 20);
        if (f->num_state > KVX_BOOT_MAX_STATE_INDICES)
            return kvx__boot_bad(why, wl, "room %llu: %u state indices exceed "
                                 "KVX_BOOT_MAX_STATE_INDICES (%u)", (unsigned long long)f->room,
                                 f->num_state, (unsigned)KVX_BOOT_MAX_STATE_INDICES);
        if ((uint64_t)blen != KVX__BOOT_ROOM_FIXED + 4ull * f->num_pages + 4ull * f->num_state)
            return kvx__boot_bad(why, wl, "room %llu: frame of %u bytes does not hold %u pages and "
                                 "%u state indices", (unsigned long long)f->room, blen, f->num_pages,
                                 f->num_state);
        if (f->aux_index < -1)
            return kvx__boot_bad(why, wl, "room %llu: aux index %ld", (unsigned long long)f->room,
                                 (long)f->aux_index);
        if (!f->peer_count || f->peer_index >= f->peer_count)
            return kvx__boot_bad(why, wl, "room %llu: peer index %u of %u",
                                 (unsigned long long)f->room, f->peer_index, f->peer_count);
        f->pages_le = b + KVX__BOOT_ROOM_FIXED;
        f->state_le = f->pages_le + 4u * f->num_pages;
        for (i = 0; i < f->num_pages + f->num_state; i++)
            if ((int32_t)kvx__le_r32(f->pages_le + 4u * i) < 0)
                return kvx__boot_bad(why, wl, "room %llu: %s index %ld at position %u is negative",
                                     (unsigned long long)f->room, i < f->num_pages ? "page" : "state",
                                     (long)(int32_t)kvx__le_r32(f->pages_le + 4u * i),
                                     i < f->num_pages ? i : i - f->num_pages);
        break;
    }
    case KVX_BOOT_FRAME_STATUS:
    case KVX_BOOT_FRAME_ABORT: { /* the reason length is the last fixed field */
        uint32_t fixed = type == KVX_BOOT_FRAME_ABORT ? KVX__BOOT_ABORT_FIXED : KVX__BOOT_STATUS_FIXED;
        if (blen < fixed)
            return kvx__boot_bad(why, wl, "%s frame of %u bytes is too short",
                                 kvx__boot_type_name(type), blen);
        f->room = kvx__le_r64(b);
        f->reason_len = kvx__le_r32(b + fixed - 4);
        if (type == KVX_BOOT_FRAME_STATUS) {
            f->bytes = kvx__le_r64(b + 8);
            f->state = (int32_t)kvx__le_r32(b + 16);
            f->result = (int32_t)kvx__le_r32(b + 20);
            if (f->state < KVX_POLL_FAILED || f->state > KVX_POLL_SUCCESS)
                return kvx__boot_bad(why, wl, "room %llu: status with state %ld",
                                     (unsigned long long)f->room, (long)f->state);
        }
        if (f->reason_len > KVX_BOOT_MAX_REASON || (uint64_t)blen != fixed + (uint64_t)f->reason_len)
            return kvx__boot_bad(why, wl, "room %llu: %s reason of %u bytes in a %u-byte frame",
                                 (unsigned long long)f->room, kvx__boot_type_name(type),
                                 f->reason_len, blen);
        f->reason = (const char *)b + fixed;
        break;
    }
    case KVX_BOOT_FRAME_PING:
    case KVX_BOOT_FRAME_PONG:
        if (blen != 8)
            return kvx__boot_bad(why, wl, "%s frame of %u bytes (8 expected)",
                                 kvx__boot_type_name(type), blen);
        f->seq = kvx__le_r64(b);
        break;
    case KVX_BOOT_FRAME_AUTH:
        if (blen != KVX_BOOT_PROOF)
            return kvx__boot_bad(why, wl, "auth frame of %u bytes (%d expected)", blen, KVX_BOOT_PROOF);
        f->proof = b;
        break;
    case KVX_BOOT_FRAME_TRANSPORT:
        if (!blen) return kvx__boot_bad(why, wl, "empty transport frame");
        f->message = b;
        f->message_len = blen;
        break;
    }
    *consumed = KVX__BOOT_HDR + (size_t)blen;
    return KVX_OK;
}

KVX_API int32_t kvx_boot_frame_page(const kvx_boot_frame *f, uint32_t i) {
    if (f->pages_le) return (int32_t)kvx__le_r32(f->pages_le + 4u * i);
    return f->pages ? f->pages[i] : -1;
}

KVX_API int32_t kvx_boot_frame_state(const kvx_boot_frame *f, uint32_t i) {
    if (f->state_le) return (int32_t)kvx__le_r32(f->state_le + 4u * i);
    return f->state_idx ? f->state_idx[i] : -1;
}

static void kvx__boot_hdr(uint8_t *p, uint32_t blen, uint32_t type) {
    kvx__le_w32(p, blen);
    kvx__le_w16(p + 4, (uint16_t)type);
    kvx__le_w16(p + 6, 0);
}

/* Header and fixed part of a room frame (the pages, then ns state indices follow). */
static void kvx__boot_room_head(uint8_t *p, uint64_t room, int32_t aux, uint32_t n,
                                uint16_t idx, uint16_t count, uint32_t ns) {
    kvx__boot_hdr(p, KVX__BOOT_ROOM_FIXED + 4u * n + 4u * ns, KVX_BOOT_FRAME_ROOM);
    p += KVX__BOOT_HDR;
    kvx__le_w64(p, room);
    kvx__le_w32(p + 8, (uint32_t)aux);
    kvx__le_w32(p + 12, n);
    kvx__le_w16(p + 16, idx);
    kvx__le_w16(p + 18, count);
    kvx__le_w32(p + 20, ns);
}

static size_t kvx__boot_reason_len(size_t len) {
    return len > KVX_BOOT_MAX_REASON ? KVX_BOOT_MAX_REASON : len;
}

/* Header and fixed part of a status frame, or of an abort frame (room and
   reason length only), whose reason of rl bytes follows. Returns its bytes. */
static size_t kvx__boot_reason_head(uint8_t *p, uint32_t type, uint64_t room, int32_t state,
                                    int32_t res, uint64_t bytes, size_t rl) {
    uint32_t fixed = type == KVX_BOOT_FRAME_ABORT ? KVX__BOOT_ABORT_FIXED : KVX__BOOT_STATUS_FIXED;
    kvx__boot_hdr(p, (uint32_t)(fixed + rl), type);
    kvx__le_w64(p + 8, room);
    if (type == KVX_BOOT_FRAME_ABORT) {
        kvx__le_w32(p + 16, (uint32_t)rl);
    } else {
        kvx__le_w64(p + 16, bytes);
        kvx__le_w32(p + 24, (uint32_t)state);
        kvx__le_w32(p + 28, (uint32_t)res);
        kvx__le_w32(p + 32, (uint32_t)rl);
    }
    return KVX__BOOT_HDR + fixed;
}

/* Appends the encoding of f to out (f uses the native pointers: pages,
   item_lens, aux_item_lens). KVX_ERR_INVALID_ARGUMENT beyond a limit. */
static KVX__UNUSED kvx_result kvx__boot_frame_encode(const kvx_boot_frame *f, kvx__buf *out) {
    uint8_t fixed[KVX__BOOT_HDR + KVX__BOOT_HELLO_FIXED];
    uint8_t *b = fixed + KVX__BOOT_HDR;
    uint32_t i;
    if (!f || !out) return KVX_ERR_INVALID_ARGUMENT;
    memset(fixed, 0, sizeof fixed);
    switch (f->type) {
    case KVX_BOOT_FRAME_HELLO: {
        const kvx_boot_hello *h = &f->hello;
        uint64_t blen;
        if (h->num_buffers > KVX_MAX_BUFFERS || h->num_aux > KVX_MAX_AUX || h->dtype_len > 63 ||
            h->num_state > KVX_MAX_STATE || (h->num_state && !h->state_item_lens) ||
            h->transport_len > 31 || h->endpoint_len > KVX_BOOT_MAX_ENDPOINT ||
            (h->num_buffers && !h->item_lens) || (h->num_aux && !h->aux_item_lens) ||
            (h->dtype_len && !h->dtype) || (h->transport_len && !h->transport) ||
            (h->endpoint_len && !h->endpoint) || (h->flags & ~KVX_BOOT_HELLO_AUTH) ||
            ((h->flags & KVX_BOOT_HELLO_AUTH) &&
             (!h->nonce || (h->role == KVX_ROLE_PREFILL && !h->proof))))
            return KVX_ERR_INVALID_ARGUMENT;
        blen = KVX__BOOT_HELLO_FIXED + 8ull * (h->num_buffers + h->num_aux + h->num_state) + h->dtype_len +
               h->transport_len + h->endpoint_len + kvx__boot_hello_auth_len(h->flags, h->role);
        kvx__boot_hdr(fixed, (uint32_t)blen, KVX_BOOT_FRAME_HELLO);
        memcpy(b, KVX__BOOT_MAGIC, 8);
        kvx__le_w16(b + 8, h->version ? h->version : KVX_BOOT_PROTOCOL_VERSION);
        kvx__le_w16(b + 10, h->role);
        kvx__le_w32(b + 12, h->flags);
        kvx__le_w64(b + 16, h->instance);
        kvx__le_w64(b + 24, h->fingerprint);
        kvx__le_w32(b + 32, (uint32_t)h->tp_size); kvx__le_w32(b + 36, (uint32_t)h->tp_rank);
        kvx__le_w32(b + 40, (uint32_t)h->dp_size); kvx__le_w32(b + 44, (uint32_t)h->dp_rank);
        kvx__le_w32(b + 48, (uint32_t)h->pp_size); kvx__le_w32(b + 52, (uint32_t)h->pp_rank);
        kvx__le_w32(b + 56, (uint32_t)h->cp_size); kvx__le_w32(b + 60, (uint32_t)h->cp_rank);
        kvx__le_w32(b + 64, h->page_size);
        kvx__le_w32(b + 68, h->dtype_size);
        kvx__le_w32(b + 72, h->num_kv_heads);
        kvx__le_w32(b + 76, h->mla);
        kvx__le_w32(b + 80, h->num_buffers);
        kvx__le_w32(b + 84, h->num_aux);
        kvx__le_w16(b + 88, (uint16_t)h->dtype_len);
        kvx__le_w16(b + 90, (uint16_t)h->transport_len);
        kvx__le_w32(b + 92, h->endpoint_len);
        kvx__le_w32(b + 96, h->head_begin);
        kvx__le_w32(b + 100, h->layer_begin);
        kvx__le_w32(b + 104, h->num_state);
        kvx__le_w32(b + 108, h->state_type);
        kvx__buf_put(out, fixed, sizeof fixed);
        for (i = 0; i < h->num_buffers + h->num_aux + h->num_state; i++) {
            uint8_t v[8];
            kvx__le_w64(v, i < h->num_buffers ? h->item_lens[i]
                           : i < h->num_buffers + h->num_aux ? h->aux_item_lens[i - h->num_buffers]
                                                             : h->state_item_lens[i - h->num_buffers - h->num_aux]);
            kvx__buf_put(out, v, 8);
        }
        kvx__buf_put(out, h->dtype, h->dtype_len);
        kvx__buf_put(out, h->transport, h->transport_len);
        kvx__buf_put(out, h->endpoint, h->endpoint_len);
        if (h->flags & KVX_BOOT_HELLO_AUTH) {
            kvx__buf_put(out, h->nonce, KVX_BOOT_NONCE);
            if (h->role == KVX_ROLE_PREFILL) kvx__buf_put(out, h->proof, KVX_BOOT_PROOF);
        }
        break;
    }
    case KVX_BOOT_FRAME_ROOM:
        if (f->num_pages > KVX_MAX_PAGES || (f->num_pages && !f->pages) || !f->peer_count ||
            f->peer_index >= f->peer_count || f->num_state > KVX_BOOT_MAX_STATE_INDICES ||
            (f->num_state && !f->state_idx))
            return KVX_ERR_INVALID_ARGUMENT;
        kvx__boot_room_head(fixed, f->room, f->aux_index, f->num_pages, f->peer_index,
                            f->peer_count, f->num_state);
        kvx__buf_put(out, fixed, KVX__BOOT_HDR + KVX__BOOT_ROOM_FIXED);
        for (i = 0; i < f->num_pages + f->num_state; i++) {
            uint8_t v[4];
            kvx__le_w32(v, (uint32_t)(i < f->num_pages ? f->pages[i] : f->state_idx[i - f->num_pages]));
            kvx__buf_put(out, v, 4);
        }
        break;
    case KVX_BOOT_FRAME_STATUS:
    case KVX_BOOT_FRAME_ABORT: {
        size_t rl = f->reason ? kvx__boot_reason_len(f->reason_len) : 0;
        kvx__buf_put(out, fixed, kvx__boot_reason_head(fixed, f->type, f->room, f->state, f->result,
                                                       f->bytes, rl));
        kvx__buf_put(out, f->reason, rl);
        break;
    }
    case KVX_BOOT_FRAME_PING:
    case KVX_BOOT_FRAME_PONG:
        kvx__boot_hdr(fixed, 8, f->type);
        kvx__le_w64(b, f->seq);
        kvx__buf_put(out, fixed, KVX__BOOT_HDR + 8);
        break;
    case KVX_BOOT_FRAME_AUTH:
        if (!f->proof) return KVX_ERR_INVALID_ARGUMENT;
        kvx__boot_hdr(fixed, KVX_BOOT_PROOF, f->type);
        kvx__buf_put(out, fixed, KVX__BOOT_HDR);
        kvx__buf_put(out, f->proof, KVX_BOOT_PROOF);
        break;
    case KVX_BOOT_FRAME_TRANSPORT:
        if (!f->message || !f->message_len || f->message_len > KVX_BOOT_MAX_MESSAGE)
            return KVX_ERR_INVALID_ARGUMENT;
        kvx__boot_hdr(fixed, f->message_len, f->type);
        kvx__buf_put(out, fixed, KVX__BOOT_HDR);
        kvx__buf_put(out, f->message, f->message_len);
        break;
    default: return KVX_ERR_INVALID_ARGUMENT;
    }
    return out->oom ? KVX_ERR_NO_MEMORY : KVX_OK;
}

/* >>boot: HTTP request parser ---------------------------------------------- */

static int kvx__boot_tchar(unsigned char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

static int kvx__boot_ieq(const char *a, size_t alen, const char *b) {
    size_t i, bl = strlen(b);
    if (alen != bl) return 0;
    for (i = 0; i < alen; i++) {
        char x = a[i], y = b[i];
        if (x >= 'A' && x <= 'Z') x = (char)(x - 'A' + 'a');
        if (y >= 'A' && y <= 'Z') y = (char)(y - 'A' + 'a');
        if (x != y) return 0;
    }
    return 1;
}

static kvx_result kvx__boot_http_err(kvx_boot_http_request *o, int status, const char *fmt, ...)
    KVX_PRINTF(3, 4);
static kvx_result kvx__boot_http_err(kvx_boot_http_request *o, int status, const char *fmt, ...) {
    va_list ap;
    o->status = status;
    o->complete = 0;
    va_start(ap, fmt);
    vsnprintf(o->error, sizeof o->error, fmt, ap);
    va_end(ap);
    return KVX_ERR_PROTOCOL;
}

/* Finds the end of the header block (CRLFCRLF) within the first `lim` bytes. */
static size_t kvx__boot_find_hdr_end(const char *s, size_t len, size_t lim) {
    size_t i, n = len < lim ? len : lim;
    for (i = 0; i + 3 < n; i++)
        if (s[i] == '\r' && s[i + 1] == '\n' && s[i + 2] == '\r' && s[i + 3] == '\n') return i + 4;
    return 0;
}

static kvx_result kvx__boot_parse_reqline(const char *s, size_t n, kvx_boot_http_request *o) {
    size_t i = 0, t0, t1;
    while (i < n && kvx__boot_tchar((unsigned char)s[i])) i++;
    if (i == 0 || i > 16 || i >= n || s[i] != ' ')
        return kvx__boot_http_err(o, 400, "malformed request line (method)");
    o->method = s;
    o->method_len = i;
    t0 = ++i;
    while (i < n && s[i] != ' ') {
        unsigned char c = (unsigned char)s[i];
        if (c <= 0x20 || c == 0x7f) return kvx__boot_http_err(o, 400, "control character in target");
        i++;
    }
    t1 = i;
    if (t1 == t0 || i >= n || s[t0] != '/')
        return kvx__boot_http_err(o, 400, "malformed request line (target)");
    i++;
    if (n - i != 8 || memcmp(s + i, "HTTP/1.", 7) != 0)
        return kvx__boot_http_err(o, 505, "not an HTTP/1.x request");
    if (s[i + 7] != '0' && s[i + 7] != '1')
        return kvx__boot_http_err(o, 505, "HTTP version 1.%c is not supported", s[i + 7]);
    o->http10 = s[i + 7] == '0';
    o->path = s + t0;
    o->path_len = t1 - t0;
    for (i = t0; i < t1; i++)
        if (s[i] == '?') {
            o->path_len = i - t0;
            o->query = s + i + 1;
            o->query_len = t1 - i - 1;
            break;
        }
    return KVX_OK;
}

static kvx_result kvx__boot_parse_header(const char *s, size_t n, kvx_boot_http_request *o,
                                         int *have_cl) {
    size_t i = 0, nl, v0, v1;
    if (n && (s[0] == ' ' || s[0] == '\t'))
        return kvx__boot_http_err(o, 400, "obsolete header line folding");
    while (i < n && kvx__boot_tchar((unsigned char)s[i])) i++;
    if (i == 0 || i >= n || s[i] != ':') return kvx__boot_http_err(o, 400, "malformed header line");
    nl = i;
    v0 = i + 1;
    while (v0 < n && (s[v0] == ' ' || s[v0] == '\t')) v0++;
    v1 = n;
    while (v1 > v0 && (s[v1 - 1] == ' ' || s[v1 - 1] == '\t')) v1--;
    for (i = v0; i < v1; i++) {
        unsigned char c = (unsigned char)s[i];
        if ((c < 0x20 && c != '\t') || c == 0x7f)
            return kvx__boot_http_err(o, 400, "control character in a header value");
    }
    if (kvx__boot_ieq(s, nl, "content-length")) {
        uint64_t v = 0;
        if (v1 == v0 || v1 - v0 > 18) return kvx__boot_http_err(o, 400, "bad Content-Length");
        for (i = v0; i < v1; i++) {
            if (s[i] < '0' || s[i] > '9') return kvx__boot_http_err(o, 400, "bad Content-Length");
            v = v * 10 + (uint64_t)(s[i] - '0');
        }
        if (*have_cl && v != o->content_length)
            return kvx__boot_http_err(o, 400, "conflicting Content-Length headers");
        *have_cl = 1;
        o->content_length = v;
    } else if (kvx__boot_ieq(s, nl, "transfer-encoding")) {
        return kvx__boot_http_err(o, 501, "Transfer-Encoding is not supported; send Content-Length");
    } else if (kvx__boot_ieq(s, nl, "x-kvx-auth")) {
        o->auth = s + v0;
        o->auth_len = v1 - v0;
    } else if (kvx__boot_ieq(s, nl, "expect")) {
        if (kvx__boot_ieq(s + v0, v1 - v0, "100-continue")) o->expect_continue = 1;
        else return kvx__boot_http_err(o, 417, "unsupported Expect header");
    }
    return KVX_OK;
}

KVX_API kvx_result kvx_boot_parse_http_request(const void *buf, size_t len,
                                               kvx_boot_http_request *o) {
    const char *s = (const char *)buf;
    size_t hend, pos, line_end;
    int have_cl = 0, nheaders = 0;
    kvx_result r;
    if (!o) return KVX_ERR_INVALID_ARGUMENT;
    memset(o, 0, sizeof *o);
    if (!buf && len) return KVX_ERR_INVALID_ARGUMENT;
    hend = kvx__boot_find_hdr_end(s, len, KVX_BOOT_MAX_HEADER);
    if (!hend) {
        if (len >= KVX_BOOT_MAX_HEADER)
            return kvx__boot_http_err(o, 431, "request header block exceeds %d bytes",
                                      KVX_BOOT_MAX_HEADER);
        /* reject garbage early: a request line starts with a method token */
        for (pos = 0; pos < len && pos < 17; pos++) {
            unsigned char c = (unsigned char)s[pos];
            if (c == ' ' && pos > 0) break;
            if (!kvx__boot_tchar(c)) return kvx__boot_http_err(o, 400, "malformed request line");
        }
        if (pos == 17) return kvx__boot_http_err(o, 400, "malformed request line (method)");
        return KVX_OK;
    }
    o->headers_done = 1;
    o->header_len = hend;
    for (line_end = 0; line_end + 1 < hend && !(s[line_end] == '\r' && s[line_end + 1] == '\n');)
        line_end++;
    if ((r = kvx__boot_parse_reqline(s, line_end, o)) != KVX_OK) return r;
    pos = line_end + 2;
    while (pos + 2 < hend) { /* each header line up to the final blank line */
        size_t e = pos;
        while (e + 1 < hend && !(s[e] == '\r' && s[e + 1] == '\n')) {
            if (s[e] == '\r' || s[e] == '\n' || s[e] == 0)
                return kvx__boot_http_err(o, 400, "stray CR, LF or NUL in a header line");
            e++;
        }
        if (++nheaders > 100) return kvx__boot_http_err(o, 431, "more than 100 header lines");
        if ((r = kvx__boot_parse_header(s + pos, e - pos, o, &have_cl)) != KVX_OK) return r;
        pos = e + 2;
    }
    if (o->content_length > KVX_BOOT_MAX_BODY)
        return kvx__boot_http_err(o, 413, "request body of %llu bytes exceeds %d",
                                  (unsigned long long)o->content_length, KVX_BOOT_MAX_BODY);
    if (len - hend < o->content_length) return KVX_OK;
    o->body = s + hend;
    o->body_len = (size_t)o->content_length;
    o->consumed = hend + o->body_len;
    o->complete = 1;
    return KVX_OK;
}

KVX_API int kvx_boot_query_int(const char *q, size_t len, const char *key, int32_t *out) {
    size_t i = 0, kl = strlen(key);
    while (q && i < len) {
        size_t e = i, eq;
        while (e < len && q[e] != '&') e++;
        for (eq = i; eq < e && q[eq] != '='; eq++) {}
        if (eq - i == kl && memcmp(q + i, key, kl) == 0) {
            size_t j = eq < e ? eq + 1 : e;
            int neg = 0;
            int64_t v = 0;
            if (j < e && q[j] == '-') { neg = 1; j++; }
            if (j >= e || e - j > 10) return -1;
            for (; j < e; j++) {
                if (q[j] < '0' || q[j] > '9') return -1;
                v = v * 10 + (q[j] - '0');
            }
            if (neg) v = -v;
            if (v < INT32_MIN || v > INT32_MAX) return -1;
            *out = (int32_t)v;
            return 1;
        }
        i = e + 1;
    }
    return 0;
}

/* >>boot: state ------------------------------------------------------------ */

/* A peer's layout shape, rebuilt from its hello (kvx_boot_peer.layout). */
typedef struct kvx__boot_shape {
    kvx_layout l;
    kvx_buffer *bufs; /* num_buffers + num_state (the state after the KV buffers),
                         item_len only; from the allocator */
    kvx_aux_buffer aux[KVX_MAX_AUX + 1];
    char dtype[64];
} kvx__boot_shape;

enum { KVX__BOOT_K_HTTP_LISTEN = 1, KVX__BOOT_K_CTRL_LISTEN, KVX__BOOT_K_HTTP, KVX__BOOT_K_CTRL };
enum { KVX__BOOT_PF_IDLE = 0, KVX__BOOT_PF_RESOLVING, KVX__BOOT_PF_READY, KVX__BOOT_PF_DEAD };
enum { KVX__BOOT_H_READING = 0, KVX__BOOT_H_WRITING, KVX__BOOT_H_DRAINING };

#define KVX__BOOT_MAX_PEERS 1024
#define KVX__BOOT_RETRY_MS 200
#define KVX__BOOT_HTTP_TIMEOUT_S 2.0
#define KVX__BOOT_MAX_RESULTS 32

typedef struct kvx__boot_pf kvx__boot_pf;

/* A socket the I/O thread polls. Control connections are shared with the
   threads that send frames (under mu); only the I/O thread closes fds. */
typedef struct kvx__boot_conn {
    kvx_boot *boot;
    int kind;
    int fd;
    int refs;       /* atomic */
    pthread_mutex_t mu;
    int closed;     /* under mu */
    int want_write; /* atomic: out holds bytes */
    int want_close; /* atomic: asked to close by another thread */
    uint8_t *out;   /* under mu */
    size_t out_off, out_len, out_cap;
    /* I/O thread only */
    uint8_t *in;
    size_t in_len, in_cap, need;
    uint64_t deadline_ns;
    int http_state, sent_continue, dropped, hello_done;
    int loopback;       /* the far end is 127.0.0.0/8 or ::1 */
    const char *close_why; /* under mu: why another thread asked to close (static text) */
    int64_t pend_bytes; /* atomic: bytes of frames kept for this connection (pending rooms) */
    int64_t charged;    /* atomic: in_cap + out_cap counted in boot->mem_total */
    uint64_t last_rx_ns; /* atomic: when bytes last arrived (decode: heartbeats) */
    int auth_wait;      /* prefill, keyed: hello answered, the decode's proof not yet in */
    uint8_t nonce_self[KVX_BOOT_NONCE], nonce_peer[KVX_BOOT_NONCE];
    /* control: set before the connection is shared, then read-only */
    kvx__boot_pf *peer; /* decode: the prefill instance */
    uint64_t gen;     /* decode: peer generation, under boot->mu */
    int live, gone;   /* under boot->mu: in boot->live (kvx_boot_peer_send finds it) / dropped */
    char lost[KVX_ERROR_MAX]; /* decode, under boot->mu: the sentence its loss failed rooms with */
    int hb_miss;      /* decode, under boot->mu: pings in a row it left unanswered */
    char addr[96]; /* "[ip]:port" */
    char transport[32];
    uint8_t *endpoint;
    kvx__boot_shape shape; /* info.layout */
    kvx_boot_peer info;
} kvx__boot_conn;

/* What resolving a prefill instance found. */
typedef struct kvx__boot_res {
    int tp, cp, dp, pp;
    int ctrl_ping;          /* the server info came with X-Kvx-Heartbeat: control */
    int follow;             /* follow_bootstrap_room: dp rank = room % dp, else asked */
    uint32_t per_dp;        /* target ranks per dp rank */
    uint16_t peer_index, peer_count;
    kvx__boot_conn **conns; /* dp * per_dp */
    uint32_t nconns;
} kvx__boot_res;

/* A decode engine's view of one prefill instance (one bootstrap address). */
struct kvx__boot_pf {
    kvx_boot *boot;
    char addr[256];
    char host[256];
    int port;
    /* under boot->mu */
    int state;
    uint64_t gen;
    kvx__boot_res r; /* the last resolve's */
    int hb_failures;
    uint64_t next_hb_ns;
    uint64_t ping_sent_ns, ping_seq;
    int dpq_busy;    /* a kvx__boot_dpq_job runs for it */
    kvx__boot_pf *next;
};

/* A room whose frame went with its decode's connection before its sender
   existed (prefill; kvx__boot_gone_add). */
#define KVX__BOOT_GONE 256
#define KVX__BOOT_GONE_WHY 200
typedef struct kvx__boot_gone {
    uint64_t id, t_ns; /* t_ns 0: free */
    char why[KVX__BOOT_GONE_WHY];
} kvx__boot_gone;

/* A room or abort frame kept until its sender is created (prefill). */
typedef struct kvx__boot_pframe {
    struct kvx__boot_pframe *next;
    kvx__boot_conn *conn;
    int type;
    int32_t aux;
    uint16_t idx, count;
    uint32_t n, ns;
    int32_t *pages; /* n pages, then ns state indices */
    char *reason;
    int64_t cost; /* bytes charged to conn->pend_bytes and boot->mem_total */
} kvx__boot_pframe;

/* What kvx_boot keeps per room id. room == NULL: a prefill entry holding
   frames that arrived before the sender. Fields under boot->mu. */
typedef struct kvx__boot_br {
    uint64_t id;
    int refs; /* atomic */
    kvx_room *room;
    kvx__hnode hn;              /* boot->rooms, key = id, under boot->mu */
    struct kvx__boot_br *dnext; /* a caller's list of entries taken out */
    kvx_boot *boot;
    uint64_t created_ns;
    /* connections: decode: the targets; prefill: the decode ranks that sent
       the room. tag: decode: status Success seen; prefill: peer index. */
    kvx__boot_conn **conns;
    uint32_t *tag;
    uint32_t nconns, cap;
    kvx__boot_conn *inl[2];
    uint32_t inl_tag[2];
    uint32_t ndone;
    /* decode */
    kvx__boot_pf *peer;
    uint64_t gen;
    int waiting, inited;
    int dpq;       /* waits for its prefill dp rank (POST /query_dp_ranks) */
    kvx__boot_conn *lost; /* a target found lost when assigning (a reference) */
    int missed;    /* a notice for it could not be queued (out of memory): it fails */
    uint64_t bytes;
    uint16_t peer_index, peer_count;
    /* prefill */
    uint32_t expected, dst_pages;
    int told;      /* the peers were told this room failed (once): 1 all, 2 all but told_skip */
    const void *told_skip; /* told 2: the peer that reported the failure (compared, never used) */
    kvx__boot_pframe *frames, *frames_tail;
} kvx__boot_br;

typedef struct kvx__boot_rank {
    char ip[64];
    int port, set;
} kvx__boot_rank;

/* The bootstrap server's registration table (under boot->mu). */
/* A room pinned to a prefill dp rank (POST /register_dp_rank). */
typedef struct kvx__boot_dproom {
    kvx__hnode hn; /* key: the room */
    struct kvx__boot_dproom *prev, *next; /* oldest first */
    int dp;
    uint64_t t_ns;
} kvx__boot_dproom;

typedef struct kvx__boot_server {
    int tp, cp, dp, pp, system_dp; /* 0 until the first registration */
    int page_size, http_port;      /* http_port -1: none registered (null) */
    int follow, dsa;               /* from the first registration (SGLang's rule) */
    char dtype[64];
    char lbm[64];
    kvx__boot_rank *ranks;
    int registered;
    kvx__htab dprooms;             /* kvx__boot_dproom by room, at most KVX_BOOT_MAX_DP_ROOMS */
    kvx__boot_dproom *dp_old, *dp_new;
} kvx__boot_server;

/* Failed rooms counted by result code (at most KVX__BOOT_MAX_RESULTS codes). */
typedef struct kvx__boot_tally {
    int code;
    uint64_t count;
} kvx__boot_tally;

static void kvx__boot_tally_add(kvx__boot_tally *t, int *n, int code, uint64_t count) {
    int i;
    for (i = 0; i < *n && t[i].code != code; i++) {}
    if (i < *n) t[i].count += count;
    else if (*n < KVX__BOOT_MAX_RESULTS) {
        t[*n].code = code;
        t[(*n)++].count = count;
    }
}

typedef struct kvx__boot_vec {
    kvx__boot_br **v;
    size_t n, cap;
    kvx_boot *b; /* set by a push: v is held even when n drops back to 0 */
    int missed;  /* a push found no memory: that room is marked (br->missed) */
} kvx__boot_vec;

struct kvx_boot {
    kvx_engine *engine;
    kvx_boot_hooks hooks;
    kvx_role role;
    uint8_t *endpoint;
    uint32_t endpoint_len;
    uint64_t instance;
    kvx__buf hello; /* our encoded hello frame (keyless; keyed hellos are per connection) */
    const uint8_t *key; /* kvx_engine_auth_key, NULL = none */
    size_t key_len;
    /* settings (read-only after create) */
    char host[256];
    char rank_ip[64];
    int port_cfg;
    char srv_host[256]; /* prefill ranks that do not serve: the server they register with */
    int srv_port;
    double hb_interval;
    int hb_max_failure;
    int tp_size, tp_rank, dp_size, dp_rank, pp_size, pp_rank, cp_size, cp_rank;
    char lbm[64];   /* prefill: KVX_LOAD_BALANCE_METHOD (registered as load_balance_method) */
    int follow;     /* prefill: lbm is follow_bootstrap_room */
    int serves;
    int http_port, ctrl_port;
    /* threads */
    pthread_t io, hb;
    int io_started, hb_started;
    kvx__workq *wq;
    int wake_rd, wake_wr;
    int wake_pending; /* atomic */
    int stop;         /* atomic */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    /* I/O thread only */
    kvx__boot_conn **conns;
    size_t nconns, cconns;
    int nhttp;
    int32_t *scratch;
    size_t scratch_cap;
    uint64_t next_sweep_ns;
    /* under mu */
    kvx__boot_conn **incoming;
    size_t nincoming, cincoming;
    kvx__htab rooms; /* kvx__boot_br by room id */
    size_t npending;
    kvx__boot_gone *gone; /* KVX__BOOT_GONE, allocated on first use */
    uint32_t gone_next;
    uint64_t pending_pages;
    kvx__boot_pf *peers;
    int npeers;
    kvx__boot_server srv;
    kvx__boot_tally failures[KVX__BOOT_MAX_RESULTS]; /* closed rooms */
    int nfailures;
    int nctrl; /* atomic: open control connections */
    uint64_t next_conn_id; /* atomic */
    kvx__boot_conn **live; /* under mu: control connections past their hellos, by info.conn_id */
    size_t nlive, clive;
    int64_t mem_total; /* atomic: bytes every connection holds (KVX_BOOT_MAX_TOTAL_BYTES) */
    kvx_boot *reg_next;
};

/* The engine's allocator, zeroed and growing (kvx__zalloc, kvx__grow). */
static const kvx_allocator *kvx__boot_al(const kvx_boot *b) {
    return &kvx_engine_settings(b->engine)->allocator;
}
static void *kvx__boot_zalloc(const kvx_boot *b, size_t n) { return kvx__zalloc(kvx__boot_al(b), 1, n); }

/* Rebuilds a peer's layout shape from its decoded hello (counts and string
   lengths were checked by the decoder). 0, or -1 out of memory; s->bufs is
   the caller's to free (kvx_engine_free) either way. */
static int kvx__boot_shape_set(const kvx_boot *b, kvx__boot_shape *s, const kvx_boot_hello *h) {
    uint32_t i;
    kvx_engine_free(b->engine, s->bufs);
    memset(s, 0, sizeof *s);
    s->bufs = (kvx_buffer *)kvx__boot_zalloc(b, (h->num_buffers + h->num_state + 1) * sizeof *s->bufs);
    if (!s->bufs) return -1;
    memcpy(s->dtype, h->dtype, h->dtype_len);
    for (i = 0; i < h->num_buffers; i++) s->bufs[i].item_len = kvx__le_r64(h->item_lens_le + 8u * i);
    for (i = 0; i < h->num_state; i++)
        s->bufs[h->num_buffers + i].item_len = kvx__le_r64(h->state_item_lens_le + 8u * i);
    s->l.state = h->num_state ? s->bufs + h->num_buffers : NULL;
    s->l.num_state = h->num_state;
    s->l.state_type = h->state_type;
    for (i = 0; i < h->num_aux; i++) s->aux[i].item_len = kvx__le_r64(h->aux_item_lens_le + 8u * i);
    s->l.buffers = s->bufs; s->l.num_buffers = h->num_buffers;
    s->l.aux = s->aux; s->l.num_aux = h->num_aux;
    s->l.page_size = h->page_size; s->l.dtype_size = h->dtype_size;
    s->l.num_kv_heads = h->num_kv_heads; s->l.mla = h->mla != 0; s->l.dtype = s->dtype;
    s->l.head_begin = h->head_begin; s->l.layer_begin = h->layer_begin;
    return 0;
}

/* Whether prefill layout pl (rank ptp_rank of ptp) and decode layout dl
   (decode TP dtp) combine: kvx_layout_overlap is KVX_OK and pl supplies
   some of dl's page bytes, or pl is an MLA dummy (kvx_mla_dummy); aux
   buffers must agree. Else KVX_ERR_LAYOUT_MISMATCH and a sentence. */
static kvx_result kvx__boot_combine(const kvx_layout *pl, int ptp, int ptp_rank, const kvx_layout *dl,
                                    int dtp, char *why, size_t wl) {
    uint64_t bpp = 0;
    uint32_t i;
    kvx_result r;
    if (pl->num_aux != dl->num_aux)
        return kvx__why(KVX_ERR_LAYOUT_MISMATCH, why, wl, "aux buffer count differs: prefill %u, "
                        "decode %u", pl->num_aux, dl->num_aux);
    for (i = 0; i < pl->num_aux; i++)
        if (pl->aux[i].item_len != dl->aux[i].item_len)
            return kvx__why(KVX_ERR_LAYOUT_MISMATCH, why, wl, "item_len of aux buffer %u differs: "
                            "prefill %llu, decode %llu", i, (unsigned long long)pl->aux[i].item_len,
                            (unsigned long long)dl->aux[i].item_len);
    if ((r = kvx_layout_overlap(pl, dl, &bpp, NULL, why, wl)) != KVX_OK)
        return r == KVX_ERR_INVALID_ARGUMENT ? KVX_ERR_LAYOUT_MISMATCH : r;
    if (!bpp && !kvx_mla_dummy(pl->mla && dl->mla, ptp, ptp_rank, dtp))
        return kvx__why(KVX_ERR_LAYOUT_MISMATCH, why, wl, "the prefill rank (heads [%u, %u), layers "
                        "from %u) shares no heads/layers with this decode rank (heads [%u, %u), "
                        "layers from %u)", pl->head_begin, pl->head_begin + pl->num_kv_heads,
                        pl->layer_begin, dl->head_begin, dl->head_begin + dl->num_kv_heads,
                        dl->layer_begin);
    return KVX_OK;
}
static void *kvx__boot_grow(const kvx_boot *b, void *p, size_t used, size_t n) {
    return kvx__grow(kvx__boot_al(b), p, used, n);
}

/* Fails r with the reason its peer sent: "<reason> (<who>)" when the
   reason already names the room (so the core does not prefix it again),
   else "<who>: <reason>". */
static void kvx__boot_relay(kvx_room *r, kvx_result res, const char *reason, const char *who) {
    char pre[40];
    int pl = snprintf(pre, sizeof pre, "room %llu: ", (unsigned long long)kvx_room_id(r));
    if (!reason || !reason[0]) kvx_room_fail_remote(r, res, "%s (no reason given)", who);
    else if (pl > 0 && !strncmp(reason, pre, (size_t)pl))
        kvx_room_fail_remote(r, res, "%s (%s)", reason, who);
    else kvx_room_fail_remote(r, res, "%s: %s", who, reason);
}

/* Makes room for one more element of the array *pv (a pointer to the
   array's pointer) holding n of capacity *cap, doubling from 16. 0 ok, -1
   out of memory. */
static int kvx__boot_reserve(const kvx_boot *b, void *pv, size_t n, size_t *cap, size_t elem) {
    void *v, *nv;
    size_t nc = *cap ? *cap * 2 : 16;
    if (n < *cap) return 0;
    memcpy(&v, pv, sizeof v);
    if (!(nv = kvx__boot_grow(b, v, n * elem, nc * elem))) return -1;
    memcpy(pv, &nv, sizeof nv);
    *cap = nc;
    return 0;
}

/* Under boot->mu. Out of memory, the room is marked instead: releasing v
   fails it (kvx__boot_fail_missed). */
static void kvx__boot_vec_push(kvx__boot_vec *v, kvx__boot_br *br) {
    v->b = br->boot;
    if (kvx__boot_reserve(br->boot, &v->v, v->n, &v->cap, sizeof *v->v)) {
        br->missed = 1;
        v->missed = 1;
        return;
    }
    KVX__ADD(&br->refs, 1);
    v->v[v->n++] = br;
}

/* >>boot: registry of engines ------------------------------------------------ */

static pthread_mutex_t kvx__boot_registry_mu = PTHREAD_MUTEX_INITIALIZER;
static kvx_boot *kvx__boot_registry;

KVX_API kvx_boot *kvx_boot_get(const kvx_engine *e) {
    kvx_boot *b;
    pthread_mutex_lock(&kvx__boot_registry_mu);
    for (b = kvx__boot_registry; b && b->engine != e; b = b->reg_next) {}
    pthread_mutex_unlock(&kvx__boot_registry_mu);
    return b;
}
KVX_API kvx_engine *kvx_boot_engine(const kvx_boot *b) { return b ? b->engine : NULL; }
KVX_API void *kvx_boot_user(const kvx_boot *b) { return b ? b->hooks.user : NULL; }
KVX_API int kvx_boot_port(const kvx_boot *b) { return b ? b->http_port : 0; }
KVX_API int kvx_boot_control_port(const kvx_boot *b) { return b ? b->ctrl_port : 0; }
KVX_API int kvx_boot_engine_port(const kvx_engine *e) { return kvx_boot_port(kvx_boot_get(e)); }

/* >>boot: sockets ------------------------------------------------------------ */

/* 127.0.0.0/8, ::1 or ::ffff:127.0.0.0/104. */
static int kvx__boot_is_loopback(const struct sockaddr *sa) {
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)(const void *)sa;
        return (ntohl(a->sin_addr.s_addr) >> 24) == 127;
    }
    if (sa->sa_family == AF_INET6) {
        const uint8_t *x = ((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr.s6_addr;
        static const uint8_t one[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
        static const uint8_t v4[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
        return !memcmp(x, one, 16) || (!memcmp(x, v4, 12) && x[12] == 127);
    }
    return 0;
}

/* Reads until n bytes, EOF or the deadline. Returns bytes read, -1 on error. */
static ssize_t kvx__boot_recv_some(int fd, void *p, size_t n, uint64_t deadline_ns) {
    for (;;) {
        ssize_t r = recv(fd, p, n, 0);
        if (r >= 0) return r;
        if (errno == EINTR) continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK) return -1;
        if (kvx__wait_fd(fd, POLLIN, deadline_ns, NULL, NULL)) return -1;
    }
}

/* One HTTP/1.1 exchange (Connection: close) on a fresh connection. On
   KVX_OK *status and resp (body) are set; on failure err gets the reason
   and *refused tells whether nobody listened. */
static kvx_result kvx__boot_http_call(const char *host, int port, const char *method,
                                      const char *target, const char *extra, const char *body,
                                      size_t blen,
                                      double timeout_s, int *status, kvx__buf *resp, char *err,
                                      size_t el, int *refused, int *kvx_hb) {
    uint64_t deadline = kvx_now_ns() + (uint64_t)(timeout_s * 1e9);
    kvx__buf req, in;
    int fd, e = 0;
    size_t hend = 0;
    uint64_t clen = UINT64_MAX;
    *refused = 0;
    *status = 0;
    if (kvx_hb) *kvx_hb = 0;
    fd = kvx__connect(host, port, deadline, NULL, NULL, &e);
    if (fd < 0) {
        *refused = e == ECONNREFUSED;
        snprintf(err, el, "%s", kvx__errstr(e));
        return KVX_ERR_PEER;
    }
    kvx__buf_init(&req, resp->allocator); /* the caller's: its engine's, or libc for tools */
    kvx__buf_init(&in, resp->allocator);
    kvx__buf_printf(&req, "%s %s HTTP/1.1\r\nHost: %s%s%s:%d\r\nUser-Agent: kvx-boot/%d.%d\r\n"
                   "Connection: close\r\nContent-Length: %zu\r\n%s%s\r\n",
                   method, target, strchr(host, ':') ? "[" : "", host,
                   strchr(host, ':') ? "]" : "", port, KVX_VERSION_MAJOR, KVX_VERSION_MINOR, blen,
                   blen ? "Content-Type: application/json\r\n" : "", extra ? extra : "");
    if (blen) kvx__buf_put(&req, body, blen);
    if (req.oom || kvx__send_all(fd, req.data, req.len, deadline)) {
        snprintf(err, el, "cannot send the request: %s", req.oom ? "out of memory" : kvx__errstr(errno));
        goto fail;
    }
    for (;;) {
        char tmp[4096];
        ssize_t r;
        if (hend && in.len - hend >= clen) break;
        r = kvx__boot_recv_some(fd, tmp, sizeof tmp, deadline);
        if (r < 0) { snprintf(err, el, "no answer: %s", kvx__errstr(errno)); goto fail; }
        if (r == 0) break;
        kvx__buf_put(&in, tmp, (size_t)r);
        if (in.oom || in.len > (1u << 20)) { snprintf(err, el, "answer too large"); goto fail; }
        if (!hend && (hend = kvx__boot_find_hdr_end(in.data, in.len, in.len)) != 0) {
            const char *p = in.data;
            const char *end = in.data + hend;
            if (in.len < 12 || memcmp(p, "HTTP/1.", 7) || p[8] != ' ') {
                snprintf(err, el, "not an HTTP answer");
                goto fail;
            }
            *status = atoi(p + 9);
            while ((p = strstr(p, "\r\n")) != NULL && p + 2 < end) {
                p += 2;
                if (!strncasecmp(p, "content-length:", 15)) clen = strtoull(p + 15, NULL, 10);
                if (kvx_hb && !strncasecmp(p, "x-kvx-heartbeat: control\r\n", 26)) *kvx_hb = 1;
            }
        }
    }
    if (!hend) { snprintf(err, el, "the connection closed before an answer"); goto fail; }
    close(fd);
    kvx__buf_free(&req);
    kvx__buf_put(resp, in.data + hend, in.len - hend);
    kvx__buf_free(&in);
    return KVX_OK;
fail:
    close(fd);
    kvx__buf_free(&req);
    kvx__buf_free(&in);
    return KVX_ERR_PEER;
}

/* Sleeps before retry `attempt` (200 ms, 400 ms...). Nonzero when the boot stops. */
static int kvx__boot_backoff(kvx_boot *b, int attempt) {
    struct timespec ts;
    uint64_t ms = (uint64_t)KVX__BOOT_RETRY_MS << (attempt < 8 ? attempt : 8);
    int stop;
    kvx__abstime(&ts, ms * 1000000ull);
    pthread_mutex_lock(&b->mu);
    while (!(stop = KVX__LOAD(&b->stop)))
        if (pthread_cond_timedwait(&b->cv, &b->mu, &ts) == ETIMEDOUT) break;
    pthread_mutex_unlock(&b->mu);
    return stop;
}

/* >>boot: connections ---------------------------------------------------------- */

static kvx__boot_conn *kvx__boot_conn_new(kvx_boot *b, int kind, int fd) {
    kvx__boot_conn *c = (kvx__boot_conn *)kvx__boot_zalloc(b, sizeof *c);
    if (!c) return NULL;
    c->boot = b;
    c->kind = kind;
    c->fd = fd;
    c->refs = 1;
    pthread_mutex_init(&c->mu, NULL);
    c->info.addr = c->addr;
    c->info.bootstrap = "";
    c->info.transport = c->transport;
    c->info.conn_id = KVX__ADD(&b->next_conn_id, 1);
    return c;
}

/* Counts a change of a connection's buffer capacity in the engine's total.
   0 ok; -1 when growing would pass KVX_BOOT_MAX_TOTAL_BYTES (nothing counted). */
static int kvx__boot_charge(kvx__boot_conn *c, int64_t delta) {
    kvx_boot *b = c->boot;
    if (delta > 0 && KVX__ADD(&b->mem_total, delta) > (int64_t)KVX_BOOT_MAX_TOTAL_BYTES) {
        KVX__SUB(&b->mem_total, delta);
        return -1;
    }
    if (delta < 0) KVX__SUB(&b->mem_total, -delta);
    KVX__ADD(&c->charged, delta);
    return 0;
}

static const char kvx__boot_over_conn[] =
    "it holds more than KVX_BOOT_MAX_CONN_BYTES on this side (unread answers or frames "
    "waiting for their sender)";
static const char kvx__boot_over_total[] =
    "the engine's connections together hold KVX_BOOT_MAX_TOTAL_BYTES";

/* Grows c's buffer *p (used bytes of *cap) to at least want bytes, within
   the total budget: c->in (I/O thread) or c->out (under c->mu). 0 ok, -1
   out of memory, -2 over the budget. */
static int kvx__boot_buf_grow(kvx__boot_conn *c, uint8_t **p, size_t used, size_t *cap,
                              size_t want) {
    uint8_t *np;
    if (want <= *cap) return 0;
    if (kvx__boot_charge(c, (int64_t)(want - *cap))) return -2;
    np = (uint8_t *)kvx__boot_grow(c->boot, *p, used, want);
    if (!np) { kvx__boot_charge(c, -(int64_t)(want - *cap)); return -1; }
    *p = np;
    *cap = want;
    return 0;
}

static void kvx__boot_conn_unref(kvx__boot_conn *c) {
    if (!c || KVX__SUB(&c->refs, 1) != 0) return;
    if (c->charged) KVX__SUB(&c->boot->mem_total, c->charged);
    if (c->fd >= 0) close(c->fd);
    pthread_mutex_destroy(&c->mu);
    kvx_engine_free(c->boot->engine, c->out);
    kvx_engine_free(c->boot->engine, c->in);
    kvx_engine_free(c->boot->engine, c->endpoint);
    kvx_engine_free(c->boot->engine, c->shape.bufs);
    kvx_engine_free(c->boot->engine, c);
}

static void kvx__boot_wake(kvx_boot *b) {
    if (__atomic_exchange_n(&b->wake_pending, 1, __ATOMIC_ACQ_REL) == 0) kvx__wake(b->wake_wr);
}

/* Closes the fd (I/O thread, or the owner before the connection is shared). */
static void kvx__boot_conn_shut(kvx__boot_conn *c) {
    pthread_mutex_lock(&c->mu);
    if (!c->closed) {
        c->closed = 1;
        if (c->fd >= 0) close(c->fd);
        c->fd = -1;
        kvx_engine_free(c->boot->engine, c->out);
        kvx__boot_charge(c, -(int64_t)c->out_cap);
        c->out = NULL;
        c->out_off = c->out_len = c->out_cap = 0;
        KVX__STORE(&c->want_write, 0);
    }
    pthread_mutex_unlock(&c->mu);
}

/* Under c->mu. Queues bytes within the connection's and the engine's
   budgets; -1 (and close_why set) when they would be passed. */
static int kvx__boot_conn_append(kvx__boot_conn *c, const uint8_t *p, size_t n) {
    if (c->out_off && c->out_off == c->out_len) c->out_off = c->out_len = 0;
    if ((uint64_t)(c->out_len - c->out_off) + n + (uint64_t)KVX__LOAD(&c->pend_bytes) >
        (uint64_t)KVX_BOOT_MAX_CONN_BYTES) {
        c->close_why = kvx__boot_over_conn;
        return -1;
    }
    if (c->out_len + n > c->out_cap) {
        size_t nc = c->out_cap ? c->out_cap : 4096;
        int g;
        if (c->out_off) { /* compact first */
            memmove(c->out, c->out + c->out_off, c->out_len - c->out_off);
            c->out_len -= c->out_off;
            c->out_off = 0;
        }
        while (nc < c->out_len + n) nc *= 2;
        if ((g = kvx__boot_buf_grow(c, &c->out, c->out_len, &c->out_cap, nc)) != 0) {
            c->close_why = g == -2 ? kvx__boot_over_total : "out of memory";
            return -1;
        }
    }
    memcpy(c->out + c->out_len, p, n);
    c->out_len += n;
    return 0;
}

/* Sends what fits now and queues the rest for the I/O thread. Never blocks. */
static kvx_result kvx__boot_conn_sendv(kvx__boot_conn *c, const struct iovec *iov, int iovcnt) {
    size_t total = 0, done = 0;
    int i, wake = 0;
    kvx_result res = KVX_OK;
    for (i = 0; i < iovcnt; i++) total += iov[i].iov_len;
    pthread_mutex_lock(&c->mu);
    if (c->closed || KVX__LOAD(&c->want_close)) {
        pthread_mutex_unlock(&c->mu);
        return KVX_ERR_PEER_LOST;
    }
    if (c->out_len == c->out_off) {
        struct msghdr m;
        ssize_t w;
        memset(&m, 0, sizeof m);
        m.msg_iov = (struct iovec *)iov;
        m.msg_iovlen = (size_t)iovcnt;
        w = sendmsg(c->fd, &m, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w >= 0) done = (size_t)w;
        else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
            KVX__STORE(&c->want_close, 1);
            res = KVX_ERR_PEER_LOST;
            wake = 1;
        }
    }
    if (res == KVX_OK && done < total) {
        size_t skip = done;
        for (i = 0; i < iovcnt && res == KVX_OK; i++) {
            size_t l = iov[i].iov_len;
            if (skip >= l) { skip -= l; continue; }
            if (kvx__boot_conn_append(c, (const uint8_t *)iov[i].iov_base + skip, l - skip)) {
                KVX__STORE(&c->want_close, 1); /* the peer stopped reading */
                res = KVX_ERR_PEER_LOST;
            }
            skip = 0;
        }
        KVX__STORE(&c->want_write, 1);
        wake = 1;
    }
    pthread_mutex_unlock(&c->mu);
    if (wake) kvx__boot_wake(c->boot);
    return res;
}

static kvx_result kvx__boot_conn_send(kvx__boot_conn *c, const void *p, size_t n) {
    struct iovec v;
    v.iov_base = (void *)p;
    v.iov_len = n;
    return kvx__boot_conn_sendv(c, &v, 1);
}

/* I/O thread: writes queued bytes. 0 ok (maybe more left), else the errno. */
static int kvx__boot_conn_flush(kvx__boot_conn *c) {
    int rc = 0;
    pthread_mutex_lock(&c->mu);
    while (!c->closed && c->out_off < c->out_len) {
        ssize_t w = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w > 0) { c->out_off += (size_t)w; continue; }
        if (w < 0 && errno == EINTR) continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
        rc = w < 0 ? errno : EPIPE;
        break;
    }
    if (c->out_off == c->out_len) {
        c->out_off = c->out_len = 0;
        if (c->out_cap > (1u << 20)) {
            kvx_engine_free(c->boot->engine, c->out);
            kvx__boot_charge(c, -(int64_t)c->out_cap);
            c->out = NULL;
            c->out_cap = 0;
        }
        KVX__STORE(&c->want_write, 0);
    }
    pthread_mutex_unlock(&c->mu);
    return rc;
}

/* Sends a status frame, or with type KVX_BOOT_FRAME_ABORT an abort frame
   (state, res and bytes unused). reason may be NULL. */
static kvx_result kvx__boot_conn_frame(kvx__boot_conn *c, uint32_t type, uint64_t room,
                                       kvx_poll state, kvx_result res, uint64_t bytes,
                                       const char *reason) {
    uint8_t h[KVX__BOOT_HDR + KVX__BOOT_STATUS_FIXED];
    size_t rl = reason ? kvx__boot_reason_len(strlen(reason)) : 0;
    struct iovec v[2];
    v[0].iov_base = h;
    v[0].iov_len = kvx__boot_reason_head(h, type, room, state, res, bytes, rl);
    v[1].iov_base = (void *)reason; v[1].iov_len = rl;
    return kvx__boot_conn_sendv(c, v, rl ? 2 : 1);
}

static kvx_result kvx__boot_conn_status(kvx__boot_conn *c, uint64_t room, kvx_poll state,
                                        kvx_result res, uint64_t bytes, const char *reason) {
    return kvx__boot_conn_frame(c, KVX_BOOT_FRAME_STATUS, room, state, res, bytes, reason);
}

/* Under b->mu: c joins (on) or leaves (off) the connections
   kvx_boot_peer_send can reach; one that left never joins again. The I/O
   thread's reference outlives its membership (it leaves in kvx__boot_drop). */
static void kvx__boot_live_locked(kvx_boot *b, kvx__boot_conn *c, int on) {
    size_t i;
    if (on && !c->gone && !c->live) {
        if (kvx__boot_reserve(b, &b->live, b->nlive, &b->clive, sizeof *b->live))
            return; /* unreachable for messages; everything else works */
        b->live[b->nlive++] = c;
        c->live = 1;
    } else if (!on) {
        c->gone = 1;
        for (i = 0; c->live && i < b->nlive; i++)
            if (b->live[i] == c) { b->live[i] = b->live[--b->nlive]; c->live = 0; }
    }
}

KVX_API kvx_result kvx_boot_peer_send(kvx_boot *b, const kvx_boot_peer *peer, const void *msg,
                                      size_t len, char *why, size_t wl) {
    kvx__boot_conn *c = NULL;
    uint8_t h[KVX__BOOT_HDR];
    struct iovec v[2];
    kvx_result r;
    size_t i;
    if (why && wl) why[0] = 0;
    if (!b || !peer || !msg || !len || len > KVX_BOOT_MAX_MESSAGE)
        return kvx__why(KVX_ERR_INVALID_ARGUMENT, why, wl, "a transport message of %zu "
                             "bytes (1..KVX_BOOT_MAX_MESSAGE = %u, with a kvx_boot and a peer)",
                             len, (unsigned)KVX_BOOT_MAX_MESSAGE);
    pthread_mutex_lock(&b->mu);
    for (i = 0; i < b->nlive && !c; i++)
        if (b->live[i]->info.conn_id == peer->conn_id) c = b->live[i];
    if (c) KVX__ADD(&c->refs, 1);
    pthread_mutex_unlock(&b->mu);
    if (!c)
        return kvx__why(KVX_ERR_PEER_LOST, why, wl, "the control connection with %s is gone",
                             peer->addr ? peer->addr : "the peer");
    kvx__boot_hdr(h, (uint32_t)len, KVX_BOOT_FRAME_TRANSPORT);
    v[0].iov_base = h; v[0].iov_len = sizeof h;
    v[1].iov_base = (void *)msg; v[1].iov_len = len;
    r = kvx__boot_conn_sendv(c, v, 2);
    if (r != KVX_OK)
        kvx__set_why(why, wl, "the control connection with %s is gone or stopped reading",
                     c->addr);
    kvx__boot_conn_unref(c);
    return r;
}

/* Fills c->info from a decoded hello (copies what the frame points to). */
static int kvx__boot_conn_set_info(kvx__boot_conn *c, const kvx_boot_hello *h) {
    kvx_boot_peer *i = &c->info;
    i->role = (kvx_role)h->role;
    i->instance = h->instance;
    i->fingerprint = h->fingerprint;
    i->tp_size = h->tp_size; i->tp_rank = h->tp_rank;
    i->dp_size = h->dp_size; i->dp_rank = h->dp_rank;
    i->pp_size = h->pp_size; i->pp_rank = h->pp_rank;
    i->cp_size = h->cp_size; i->cp_rank = h->cp_rank;
    memcpy(c->transport, h->transport, h->transport_len);
    c->transport[h->transport_len] = 0;
    if (h->endpoint_len) {
        c->endpoint = (uint8_t *)kvx_engine_alloc(c->boot->engine, h->endpoint_len);
        if (!c->endpoint) return -1;
        memcpy(c->endpoint, h->endpoint, h->endpoint_len);
    }
    i->endpoint = c->endpoint;
    i->endpoint_len = h->endpoint_len;
    if (kvx__boot_shape_set(c->boot, &c->shape, h)) return -1;
    i->layout = &c->shape.l;
    return 0;
}

/* Names the far end of a control connection for a failure sentence:
   "prefill engine at 10.0.0.2:5000 (tp rank 1 of 2, pp rank 0 of 1)". */
static const char *kvx__boot_who(const kvx__boot_conn *c, char *out, size_t n) {
    const kvx_boot_peer *i = &c->info;
    char dp[40] = "";
    if (i->dp_size > 1) snprintf(dp, sizeof dp, ", dp rank %d of %d", i->dp_rank, i->dp_size);
    snprintf(out, n, "%s engine at %s (tp rank %d of %d, pp rank %d of %d%s)",
             i->role == KVX_ROLE_PREFILL ? "prefill" : "decode", c->addr, i->tp_rank, i->tp_size,
             i->pp_rank, i->pp_size, dp);
    return out;
}

/* The sentence a decode room fails with when the control connection c of
   prefill instance p is lost: "lost connection with prefill instance H:P
   (rank IP:PORT), prefill tp rank 1 of 4, pp rank 0 of 1, dp rank 0 of 1:
   <reason>" (ranks from c's hello). */
static void kvx__boot_lost_sentence(const kvx__boot_pf *p, const kvx__boot_conn *c,
                                    const char *reason, char *out, size_t n);

/* >>boot: room table ------------------------------------------------------------ */

/* The entry of a table node (NULL for none). */
static kvx__boot_br *kvx__boot_at(kvx__hnode *h) {
    return h ? (kvx__boot_br *)(void *)((char *)h - offsetof(kvx__boot_br, hn)) : NULL;
}

static kvx__boot_br *kvx__boot_find(kvx_boot *b, uint64_t id) {
    return kvx__boot_at(kvx__htab_find(&b->rooms, id));
}

/* -1 when the table cannot grow. */
static int kvx__boot_insert(kvx_boot *b, kvx__boot_br *br) {
    return kvx__htab_insert(&b->rooms, kvx__boot_al(b), &br->hn) ? -1 : 0;
}

static kvx__boot_br *kvx__boot_br_new(kvx_boot *b, uint64_t id) {
    kvx__boot_br *br = (kvx__boot_br *)kvx__boot_zalloc(b, sizeof *br);
    if (!br) return NULL;
    br->boot = b;
    br->id = br->hn.key = id;
    br->refs = 1;
    br->conns = br->inl;
    br->tag = br->inl_tag;
    br->cap = 2;
    br->created_ns = kvx_now_ns();
    return br;
}

/* Frees the kept frame f and every one after it. */
static void kvx__boot_pframe_free(kvx__boot_pframe *f) {
    while (f) {
        kvx__boot_pframe *nx = f->next;
        kvx_engine *e = f->conn->boot->engine;
        if (f->cost) {
            KVX__SUB(&f->conn->pend_bytes, f->cost);
            KVX__SUB(&f->conn->boot->mem_total, f->cost);
        }
        kvx__boot_conn_unref(f->conn);
        kvx_engine_free(e, f->pages);
        kvx_engine_free(e, f->reason);
        kvx_engine_free(e, f);
        f = nx;
    }
}

/* Never called with boot->mu held: the room's last reference may run the
   transport's room_free. */
static void kvx__boot_br_unref(kvx__boot_br *br) {
    kvx_engine *e = br ? br->boot->engine : NULL;
    uint32_t i;
    if (!br || KVX__SUB(&br->refs, 1) != 0) return;
    kvx__boot_pframe_free(br->frames);
    for (i = 0; i < br->nconns; i++) kvx__boot_conn_unref(br->conns[i]);
    if (br->lost) kvx__boot_conn_unref(br->lost);
    if (br->conns != br->inl) kvx_engine_free(e, br->conns); /* and the tags */
    if (br->room) kvx_room_unref(br->room);
    kvx_engine_free(e, br);
}

/* Not under boot->mu: fails, one at a time (no memory needed), each room
   a notice could not be queued for (kvx__boot_vec_push out of memory), so
   it neither waits forever nor misses its failure. */
static void kvx__boot_fail_missed(kvx_boot *b) {
    for (;;) {
        kvx__boot_br *br = NULL, *it;
        size_t i;
        pthread_mutex_lock(&b->mu);
        for (i = 0; !br && i < b->rooms.nb; i++)
            for (it = kvx__boot_at(b->rooms.b[i]); it; it = kvx__boot_at(it->hn.hnext))
                if (it->missed) {
                    it->missed = 0;
                    if (!it->room) continue;
                    it->waiting = 0;
                    it->dpq = 0;
                    KVX__ADD(&it->refs, 1);
                    br = it;
                    break;
                }
        pthread_mutex_unlock(&b->mu);
        if (!br) return;
        kvx_room_fail(br->room, KVX_ERR_NO_MEMORY, "out of memory queueing a bootstrap notice for "
                      "the room");
        kvx__boot_br_unref(br);
    }
}

static void kvx__boot_vec_release(kvx__boot_vec *v) {
    kvx_boot *b = v->b;
    int missed = v->missed;
    size_t i;
    for (i = 0; i < v->n; i++) kvx__boot_br_unref(v->v[i]);
    if (b) kvx_engine_free(b->engine, v->v);
    memset(v, 0, sizeof *v);
    if (missed && b) kvx__boot_fail_missed(b);
}

/* Under boot->mu. Takes a connection reference. */
static int kvx__boot_br_add_conn(kvx__boot_br *br, kvx__boot_conn *c, uint32_t tag) {
    if (br->nconns == br->cap) { /* one block: the connections, then their tags */
        uint32_t nc = br->cap * 2;
        kvx_engine *e = br->boot->engine;
        kvx__boot_conn **ncs =
            (kvx__boot_conn **)kvx_engine_alloc(e, nc * (sizeof *ncs + sizeof *br->tag));
        if (!ncs) return -1;
        memcpy(ncs, br->conns, br->nconns * sizeof *ncs);
        memcpy(ncs + nc, br->tag, br->nconns * sizeof *br->tag);
        if (br->conns != br->inl) kvx_engine_free(e, br->conns);
        br->conns = ncs;
        br->tag = (uint32_t *)(void *)(ncs + nc);
        br->cap = nc;
    }
    KVX__ADD(&c->refs, 1);
    br->conns[br->nconns] = c;
    br->tag[br->nconns] = tag;
    br->nconns++;
    return 0;
}

/* Copies n connections (referenced; a room's or a prefill's, under
   boot->mu) so frames can be sent without boot->mu. Returns the count;
   *out (NULL: out of memory) must be freed with kvx__boot_conns_release. */
static uint32_t kvx__boot_conns_copy(kvx_boot *b, kvx__boot_conn **src, uint32_t n,
                                     kvx__boot_conn ***out, kvx__boot_conn **stack) {
    kvx__boot_conn **v = n <= 4 ? stack
                                : (kvx__boot_conn **)kvx_engine_alloc(b->engine, n * sizeof *v);
    uint32_t i;
    *out = v;
    if (!v) return 0;
    for (i = 0; i < n; i++) {
        v[i] = src[i];
        KVX__ADD(&v[i]->refs, 1);
    }
    return n;
}

/* Closes n connections and drops the caller's references. */
static void kvx__boot_conns_close(kvx__boot_conn **v, size_t n) {
    size_t i;
    for (i = 0; i < n; i++) {
        kvx__boot_conn_shut(v[i]);
        kvx__boot_conn_unref(v[i]);
    }
}

static void kvx__boot_conns_release(kvx_boot *b, kvx__boot_conn **v, uint32_t n,
                                    kvx__boot_conn **stack) {
    uint32_t i;
    for (i = 0; i < n; i++) kvx__boot_conn_unref(v[i]);
    if (v != stack) kvx_engine_free(b->engine, v);
}

static int kvx__boot_drop(kvx_boot *b, kvx__boot_conn *c, const char *reason);
static kvx_result kvx__boot_make_hello(kvx_boot *b, kvx__buf *out, const uint8_t *nonce,
                                       const uint8_t *proof);

/* >>boot: bootstrap server (the prefill engine whose ranks are all 0) ------------ */

typedef struct kvx__boot_regn {
    int tp, tp_rank, cp, cp_rank, dp, dp_rank, pp, pp_rank, system_dp, system_dp_rank;
    int port, page_size, http_port; /* http_port -1: absent or null */
    int follow; /* load_balance_method: absent 1 (SGLang's default), else == "follow_bootstrap_room" */
    int dsa;    /* enable_dsa_cache_layer_split, as Python's bool() of it */
    char ip[64], dtype[64], lbm[64];
} kvx__boot_regn;

/* An integer member given as a JSON number or a decimal string (SGLang
   clients send both). 1 ok, 0 absent or null, -1 bad or out of [lo, hi]. */
static int kvx__boot_jint(const kvx__json_doc *d, const kvx__json *o, const char *key, long lo,
                          long hi, int *out) {
    const kvx__json *v = kvx__json_get(d, o, key);
    long long x;
    if (!v || v->type == KVX_JSON_NULL) return 0;
    if (v->type == KVX_JSON_NUMBER) {
        if (!v->is_int) return -1;
        x = v->negative ? (long long)v->i64
                        : (v->u64 > (uint64_t)LLONG_MAX ? LLONG_MAX : (long long)v->u64);
    } else if (v->type == KVX_JSON_STRING) {
        char *end = NULL;
        if (!v->str_len || v->str_len > 12) return -1;
        errno = 0;
        x = strtoll(v->str, &end, 10);
        if (errno || !end || *end) return -1;
    } else {
        return -1;
    }
    if (x < lo || x > hi) return -1;
    *out = (int)x;
    return 1;
}

static int kvx__boot_jstr(const kvx__json_doc *d, const kvx__json *o, const char *key, char *out,
                          size_t n) {
    const kvx__json *v = kvx__json_get(d, o, key);
    if (!v || v->type == KVX_JSON_NULL) return 0;
    if (v->type != KVX_JSON_STRING || v->str_len >= n || memchr(v->str, 0, v->str_len)) return -1;
    memcpy(out, v->str, v->str_len);
    out[v->str_len] = 0;
    return 1;
}

static int kvx__boot_reg_parse(const kvx_allocator *a, const char *body, size_t len, kvx__boot_regn *g,
                               char *why, size_t wl) {
    static const struct { const char *key; size_t off; long lo, hi; } ints[] = {
        {"attn_tp_size", offsetof(kvx__boot_regn, tp), 1, 1024},
        {"attn_tp_rank", offsetof(kvx__boot_regn, tp_rank), 0, 1023},
        {"attn_cp_size", offsetof(kvx__boot_regn, cp), 1, 1024},
        {"attn_cp_rank", offsetof(kvx__boot_regn, cp_rank), 0, 1023},
        {"attn_dp_size", offsetof(kvx__boot_regn, dp), 1, 1024},
        {"attn_dp_rank", offsetof(kvx__boot_regn, dp_rank), 0, 1023},
        {"pp_size", offsetof(kvx__boot_regn, pp), 1, 1024},
        {"pp_rank", offsetof(kvx__boot_regn, pp_rank), 0, 1023},
        {"system_dp_size", offsetof(kvx__boot_regn, system_dp), 1, 1024},
        {"system_dp_rank", offsetof(kvx__boot_regn, system_dp_rank), 0, 1023},
        {"rank_port", offsetof(kvx__boot_regn, port), 1, 65535},
        {"page_size", offsetof(kvx__boot_regn, page_size), 1, 1 << 24},
        {"prefill_http_port", offsetof(kvx__boot_regn, http_port), 0, 65535}};
    kvx__json_doc d;
    const kvx__json *root;
    size_t i;
    int rc = -1;
    memset(g, 0, sizeof *g);
    g->tp = g->cp = g->dp = g->pp = g->system_dp = 1;
    g->http_port = -1;
    if (kvx__json_parse(&d, a, body ? body : "", len, 256) != KVX_OK) {
        kvx__set_why(why, wl, "the body is not JSON: %s", d.error);
        goto out;
    }
    root = kvx__json_root(&d);
    if (!root || root->type != KVX_JSON_OBJECT) {
        kvx__set_why(why, wl, "the body is not a JSON object");
        goto out;
    }
    for (i = 0; i < sizeof ints / sizeof ints[0]; i++)
        if (kvx__boot_jint(&d, root, ints[i].key, ints[i].lo, ints[i].hi,
                           (int *)(void *)((char *)g + ints[i].off)) < 0) {
            kvx__set_why(why, wl, "%s must be an integer in [%ld, %ld]", ints[i].key, ints[i].lo,
                         ints[i].hi);
            goto out;
        }
    if (kvx__boot_jstr(&d, root, "rank_ip", g->ip, sizeof g->ip) != 1 || !g->ip[0]) {
        kvx__set_why(why, wl, "rank_ip must be a non-empty string of at most 63 bytes");
        goto out;
    }
    if (!g->port) {
        kvx__set_why(why, wl, "rank_port is missing");
        goto out;
    }
    if (kvx__boot_jstr(&d, root, "kv_cache_dtype", g->dtype, sizeof g->dtype) < 0 ||
        kvx__boot_jstr(&d, root, "load_balance_method", g->lbm, sizeof g->lbm) < 0) {
        kvx__set_why(why, wl, "kv_cache_dtype and load_balance_method must be short strings");
        goto out;
    }
    {   /* SGLang: data.get("load_balance_method", "follow_bootstrap_room") ==
           "follow_bootstrap_room" (so null is not follow); bool(data.get(
           "enable_dsa_cache_layer_split", False)) */
        const kvx__json *v = kvx__json_get(&d, root, "load_balance_method");
        g->follow = !v || (v->type == KVX_JSON_STRING && !strcmp(g->lbm, "follow_bootstrap_room"));
        v = kvx__json_get(&d, root, "enable_dsa_cache_layer_split");
        if (!v || v->type == KVX_JSON_NULL) g->dsa = 0;
        else if (v->type == KVX_JSON_BOOL) g->dsa = v->i64 != 0;
        else if (v->type == KVX_JSON_NUMBER) g->dsa = v->num != 0;
        else if (v->type == KVX_JSON_STRING) g->dsa = v->str_len != 0;
        else {
            kvx__set_why(why, wl, "enable_dsa_cache_layer_split must be a boolean");
            goto out;
        }
    }
    if (g->system_dp_rank >= g->system_dp) {
        kvx__set_why(why, wl, "system_dp_rank %d is not below system_dp_size %d", g->system_dp_rank,
                     g->system_dp);
        goto out;
    }
    if (g->system_dp > 1) { /* SGLang: dp group = system dp when there is one */
        g->dp = g->system_dp;
        g->dp_rank = g->system_dp_rank;
    }
    if (g->tp_rank >= g->tp || g->cp_rank >= g->cp || g->dp_rank >= g->dp || g->pp_rank >= g->pp) {
        kvx__set_why(why, wl, "a rank is not below its size (tp %d/%d, cp %d/%d, dp %d/%d, pp %d/%d)",
                     g->tp_rank, g->tp, g->cp_rank, g->cp, g->dp_rank, g->dp, g->pp_rank, g->pp);
        goto out;
    }
    rc = 0;
out:
    kvx__json_free(&d);
    return rc;
}

/* Under boot->mu. */
static int kvx__boot_srv_register(kvx_boot *b, const kvx__boot_regn *g, char *why, size_t wl) {
    kvx__boot_server *s = &b->srv;
    kvx__boot_rank *slot;
    size_t idx;
    if (!s->ranks) {
        uint64_t total = (uint64_t)g->tp * (uint64_t)g->cp * (uint64_t)g->dp * (uint64_t)g->pp;
        if (total > KVX_BOOT_MAX_RANKS) {
            kvx__set_why(why, wl, "dp*cp*tp*pp = %llu ranks exceed KVX_BOOT_MAX_RANKS (%d)",
                         (unsigned long long)total, KVX_BOOT_MAX_RANKS);
            return -1;
        }
        s->ranks = (kvx__boot_rank *)kvx__boot_zalloc(b, (size_t)total * sizeof *s->ranks);
        if (!s->ranks) { kvx__set_why(why, wl, "out of memory"); return -1; }
        s->tp = g->tp; s->cp = g->cp; s->dp = g->dp; s->pp = g->pp;
        s->system_dp = g->system_dp;
        s->http_port = -1;
        s->follow = g->follow; /* the first registration decides, as in SGLang */
        s->dsa = g->dsa;
    } else if (g->tp != s->tp || g->cp != s->cp || g->dp != s->dp || g->pp != s->pp) {
        kvx__set_why(why, wl,
                     "sizes tp %d, cp %d, dp %d, pp %d differ from the registered tp %d, cp %d, "
                     "dp %d, pp %d", g->tp, g->cp, g->dp, g->pp, s->tp, s->cp, s->dp, s->pp);
        return -1;
    }
    if (g->page_size && s->page_size && g->page_size != s->page_size) {
        kvx__set_why(why, wl, "page_size %d differs from the registered %d", g->page_size,
                     s->page_size);
        return -1;
    }
    if (!s->page_size) s->page_size = g->page_size;
    if (!s->dtype[0]) memcpy(s->dtype, g->dtype, sizeof s->dtype);
    if (!s->lbm[0]) memcpy(s->lbm, g->lbm, sizeof s->lbm);
    if (s->http_port < 0) s->http_port = g->http_port;
    idx = (((size_t)g->dp_rank * (size_t)s->cp + (size_t)g->cp_rank) * (size_t)s->tp +
           (size_t)g->tp_rank) * (size_t)s->pp + (size_t)g->pp_rank;
    slot = &s->ranks[idx];
    if (!slot->set) s->registered++;
    slot->set = 1;
    memcpy(slot->ip, g->ip, sizeof slot->ip);
    slot->port = g->port;
    return 0;
}

static void kvx__boot_reg_json(kvx_boot *b, kvx__buf *o) {
    const kvx_layout *l = kvx_engine_layout(b->engine);
    kvx__buf_printf(o, "{\"attn_tp_size\":%d,\"attn_tp_rank\":%d,\"attn_cp_size\":%d,"
                      "\"attn_cp_rank\":%d,\"attn_dp_size\":%d,\"attn_dp_rank\":%d,\"pp_size\":%d,"
                      "\"pp_rank\":%d,\"system_dp_size\":%d,\"system_dp_rank\":%d,\"rank_ip\":",
                   b->tp_size, b->tp_rank, b->cp_size, b->cp_rank, b->dp_size, b->dp_rank,
                   b->pp_size, b->pp_rank, b->dp_size, b->dp_rank);
    kvx__buf_json_str(o, b->rank_ip);
    kvx__buf_printf(o, ",\"rank_port\":%d,\"page_size\":%u,\"kv_cache_dtype\":", b->ctrl_port,
                   l->page_size);
    kvx__buf_json_str(o, l->dtype ? l->dtype : "");
    kvx__buf_printf(o, ",\"load_balance_method\":");
    kvx__buf_json_str(o, b->lbm);
    kvx__buf_printf(o, ",\"enable_dsa_cache_layer_split\":false,\"prefill_http_port\":null}");
}

static const char *kvx__boot_reason_phrase(int st) {
    static const struct { int st; const char *text; } t[] = {
        {100, "Continue"}, {200, "OK"}, {400, "Bad Request"}, {403, "Forbidden"},
        {404, "Not Found"}, {405, "Method Not Allowed"}, {408, "Request Timeout"},
        {413, "Content Too Large"}, {417, "Expectation Failed"},
        {431, "Request Header Fields Too Large"}, {500, "Internal Server Error"},
        {501, "Not Implemented"}, {503, "Service Unavailable"}, {505, "HTTP Version Not Supported"}};
    size_t i;
    for (i = 0; i < KVX__COUNT(t); i++)
        if (t[i].st == st) return t[i].text;
    return "Unknown";
}

/* I/O thread: the response is queued; finish when it is written. */
static void kvx__boot_http_finish(kvx__boot_conn *c) {
    uint64_t d = kvx_now_ns() + 1000000000ull;
    shutdown(c->fd, SHUT_WR);
    c->http_state = KVX__BOOT_H_DRAINING;
    if (!c->deadline_ns || d < c->deadline_ns) c->deadline_ns = d;
}

static void kvx__boot_http_respond(kvx_boot *b, kvx__boot_conn *c, int status, const char *ctype,
                                   const char *body, size_t blen, const char *extra) {
    kvx__buf h;
    int err;
    kvx__buf_init(&h, kvx__boot_al(b));
    kvx__buf_printf(&h, "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n%s"
                       "Connection: close\r\n\r\n",
                   status, kvx__boot_reason_phrase(status), ctype, blen, extra ? extra : "");
    kvx__buf_put(&h, body, blen);
    if (h.oom) { kvx__buf_free(&h); kvx__boot_drop(b, c, "out of memory for a response"); return; }
    pthread_mutex_lock(&c->mu);
    err = kvx__boot_conn_append(c, (const uint8_t *)h.data, h.len);
    pthread_mutex_unlock(&c->mu);
    kvx__buf_free(&h);
    if (err) { kvx__boot_drop(b, c, "response too large"); return; }
    KVX__STORE(&c->want_write, 1);
    c->http_state = KVX__BOOT_H_WRITING;
    if ((err = kvx__boot_conn_flush(c)) != 0) { kvx__boot_drop(b, c, strerror(err)); return; }
    if (!KVX__LOAD(&c->want_write)) kvx__boot_http_finish(c);
}

static void kvx__boot_http_text(kvx_boot *b, kvx__boot_conn *c, int status, const char *text) {
    kvx__boot_http_respond(b, c, status, "text/plain; charset=utf-8", text, strlen(text), NULL);
}

static void kvx__boot_http_textf(kvx_boot *b, kvx__boot_conn *c, int status, const char *fmt, ...)
    KVX_PRINTF(4, 5);
static void kvx__boot_http_textf(kvx_boot *b, kvx__boot_conn *c, int status, const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    kvx__boot_http_text(b, c, status, msg);
}

static void kvx__boot_http_buf(kvx_boot *b, kvx__boot_conn *c, int status, const char *ctype,
                               kvx__buf *o) {
    if (o->oom) kvx__boot_http_text(b, c, 500, "out of memory\n");
    else kvx__boot_http_respond(b, c, status, ctype, o->data ? o->data : "", o->len, NULL);
}

static void kvx__boot_route_get(kvx_boot *b, kvx__boot_conn *c, const kvx_boot_http_request *rq) {
    static const char *keys[4] = {"prefill_dp_rank", "prefill_cp_rank", "target_tp_rank",
                                  "target_pp_rank"};
    int32_t v[4];
    int k, status = 200, total, all;
    kvx__boot_server *s = &b->srv;
    kvx__buf o;
    kvx__buf_init(&o, kvx__boot_al(b));
    for (k = 0; k < 4; k++) {
        int r = kvx_boot_query_int(rq->query, rq->query_len, keys[k], &v[k]);
        if (r != 1) {
            kvx__boot_http_textf(b, c, 400, "Missing inputs for bootstrap server: %s is %s.\n",
                                 keys[k], r == 0 ? "missing" : "not an integer");
            return;
        }
    }
    pthread_mutex_lock(&b->mu);
    total = s->ranks ? s->tp * s->cp * s->dp * s->pp : 0;
    all = v[0] == -1 && v[1] == -1 && v[2] == -1 && v[3] == -1; /* all -1: server info */
    if (!all && !s->ranks) {
        status = 503;
        kvx__buf_printf(&o, "Prefill server not fully registered yet: no rank registered.\n");
    } else if (!all && (v[0] < 0 || v[0] >= s->dp || v[1] < 0 || v[1] >= s->cp || v[2] < 0 ||
                        v[2] >= s->tp || v[3] < 0 || v[3] >= s->pp)) {
        status = 404;
        kvx__buf_printf(&o, "Bootstrap info not Found: no rank dp %ld, cp %ld, tp %ld, pp %ld "
                           "(sizes dp %d, cp %d, tp %d, pp %d).\n",
                       (long)v[0], (long)v[1], (long)v[2], (long)v[3], s->dp, s->cp, s->tp, s->pp);
    } else if (!s->ranks || s->registered < total) {
        status = 503;
        kvx__buf_printf(&o, "Prefill server not fully registered yet: %d of %d ranks.\n",
                       s->registered, total);
    } else if (all) {
        /* dataclasses.asdict(PrefillServerInfo): every field, in its order */
        kvx__buf_printf(&o, "{\"attn_tp_size\":%d,\"attn_cp_size\":%d,\"dp_size\":%d,"
                           "\"pp_size\":%d,\"page_size\":", s->tp, s->cp, s->dp, s->pp);
        if (s->page_size) kvx__buf_printf(&o, "%d", s->page_size);
        else kvx__buf_printf(&o, "null");
        kvx__buf_printf(&o, ",\"kv_cache_dtype\":");
        kvx__buf_json_str(&o, s->dtype[0] ? s->dtype : "auto");
        kvx__buf_printf(&o, ",\"follow_bootstrap_room\":%s,\"enable_dsa_cache_layer_split\":%s,"
                           "\"prefill_http_port\":", s->follow ? "true" : "false",
                       s->dsa ? "true" : "false");
        if (s->http_port >= 0) kvx__buf_printf(&o, "%d", s->http_port);
        else kvx__buf_printf(&o, "null");
        kvx__buf_printf(&o, ",\"target_tp_rank\":null,\"target_tp_ranks\":null,"
                           "\"target_cp_ranks\":null,\"target_pp_ranks\":null,"
                           "\"required_dst_info_num\":null,\"required_prefill_response_num\":null}");
    } else {
        const kvx__boot_rank *slot =
            &s->ranks[(((size_t)v[0] * (size_t)s->cp + (size_t)v[1]) * (size_t)s->tp +
                       (size_t)v[2]) * (size_t)s->pp + (size_t)v[3]];
        kvx__buf_printf(&o, "{\"rank_ip\":");
        kvx__buf_json_str(&o, slot->ip);
        kvx__buf_printf(&o, ",\"rank_port\":%d}", slot->port);
    }
    pthread_mutex_unlock(&b->mu);
    if (o.oom) kvx__boot_http_text(b, c, 500, "out of memory\n");
    else /* the header tells a kvx decode to heartbeat over the control connections; a
            member in the JSON would break SGLang's PrefillServerInfo(**data) */
        kvx__boot_http_respond(b, c, status, status == 200 ? "application/json"
                                                            : "text/plain; charset=utf-8",
                               o.data ? o.data : "", o.len,
                               status == 200 && all ? "X-Kvx-Heartbeat: control\r\n" : NULL);
    kvx__buf_free(&o);
}

/* >>boot: DP attention routes (SGLang's /register_dp_rank, /query_dp_ranks) */

/* Under boot->mu: unlinks and frees one pinned room. */
static void kvx__boot_dp_drop(kvx_boot *b, kvx__boot_dproom *e) {
    kvx__boot_server *s = &b->srv;
    kvx__htab_remove(&s->dprooms, &e->hn);
    if (e->prev) e->prev->next = e->next; else s->dp_old = e->next;
    if (e->next) e->next->prev = e->prev; else s->dp_new = e->prev;
    kvx_engine_free(b->engine, e);
}

/* Under boot->mu: drops pinned rooms older than KVX_BOOT_DP_ROOM_TTL_S. */
static void kvx__boot_dp_expire(kvx_boot *b, uint64_t now) {
    uint64_t ttl = (uint64_t)KVX_BOOT_DP_ROOM_TTL_S * 1000000000ull;
    while (b->srv.dp_old && now - b->srv.dp_old->t_ns > ttl) kvx__boot_dp_drop(b, b->srv.dp_old);
}

static void kvx__boot_dp_free(kvx_boot *b) {
    while (b->srv.dp_old) kvx__boot_dp_drop(b, b->srv.dp_old);
    kvx__htab_free(&b->srv.dprooms, kvx__boot_al(b));
}

/* Under boot->mu: pins room to dp rank (newest; the oldest goes when the
   table is full). 0, or -1 out of memory. */
static int kvx__boot_dp_pin(kvx_boot *b, uint64_t room, int dp) {
    kvx__boot_server *s = &b->srv;
    uint64_t now = kvx_now_ns();
    kvx__hnode *h;
    kvx__boot_dproom *e;
    kvx__boot_dp_expire(b, now);
    if ((h = kvx__htab_find(&s->dprooms, room)) != NULL)
        kvx__boot_dp_drop(b, (kvx__boot_dproom *)(void *)((char *)h - offsetof(kvx__boot_dproom, hn)));
    if (s->dprooms.n >= KVX_BOOT_MAX_DP_ROOMS && s->dp_old) kvx__boot_dp_drop(b, s->dp_old);
    e = (kvx__boot_dproom *)kvx__boot_zalloc(b, sizeof *e);
    if (!e) return -1;
    e->hn.key = room;
    e->dp = dp;
    e->t_ns = now;
    if (kvx__htab_insert(&s->dprooms, kvx__boot_al(b), &e->hn) != KVX_OK) {
        kvx_engine_free(b->engine, e);
        return -1;
    }
    e->prev = s->dp_new;
    if (s->dp_new) s->dp_new->next = e; else s->dp_old = e;
    s->dp_new = e;
    return 0;
}

/* A room id as SGLang's int() takes it: a JSON integer or a decimal
   string, here within [0, 2^63). 1 ok, 0 bad. */
static int kvx__boot_jroom(const kvx__json *v, uint64_t *out) {
    if (v->type == KVX_JSON_NUMBER) {
        if (!v->is_int || v->negative || v->u64 > (uint64_t)INT64_MAX) return 0;
        *out = v->u64;
        return 1;
    }
    if (v->type == KVX_JSON_STRING) {
        uint64_t x = 0;
        uint32_t i;
        if (!v->str_len || v->str_len > 19) return 0;
        for (i = 0; i < v->str_len; i++) {
            if (v->str[i] < '0' || v->str[i] > '9') return 0;
            x = x * 10 + (uint64_t)(v->str[i] - '0');
        }
        if (x > (uint64_t)INT64_MAX) return 0;
        *out = x;
        return 1;
    }
    return 0;
}

/* A /register_dp_rank body (pure; fuzzed): 0 and the room and dp rank, or
   -1 and a sentence. */
static int kvx__boot_dpreg_parse(const kvx_allocator *a, const char *body, size_t len,
                                 uint64_t *room, uint64_t *dp, char *why, size_t wl) {
    kvx__json_doc d;
    const kvx__json *root, *rv, *dv;
    int rc = -1;
    if (kvx__json_parse(&d, a, body ? body : "", len, 16) != KVX_OK ||
        !(root = kvx__json_root(&d)) || root->type != KVX_JSON_OBJECT)
        kvx__set_why(why, wl, "the body is not a JSON object");
    else if (!(rv = kvx__json_get(&d, root, "bootstrap_room")) || !kvx__boot_jroom(rv, room))
        kvx__set_why(why, wl, "bootstrap_room must be an integer in [0, 2^63)");
    else if (!(dv = kvx__json_get(&d, root, "dp_rank")) || !kvx__boot_jroom(dv, dp))
        kvx__set_why(why, wl, "dp_rank must be a non-negative integer");
    else
        rc = 0;
    kvx__json_free(&d);
    return rc;
}

/* A /query_dp_ranks body (pure; fuzzed): 0 with *ids (kvx__alloc'd from a,
   NULL when none) holding *n <= KVX_BOOT_MAX_QUERY_ROOMS rooms, or -1 and a
   sentence. */
static int kvx__boot_dpq_parse(const kvx_allocator *a, const char *body, size_t len, uint64_t **ids,
                               uint32_t *n, char *why, size_t wl) {
    kvx__json_doc d;
    const kvx__json *root, *arr = NULL;
    uint32_t k;
    int rc = -1;
    *ids = NULL;
    *n = 0;
    if (kvx__json_parse(&d, a, body ? body : "", len, KVX_BOOT_MAX_QUERY_ROOMS + 8) != KVX_OK ||
        !(root = kvx__json_root(&d)) || root->type != KVX_JSON_OBJECT)
        kvx__set_why(why, wl, "the body is not a JSON object (at most %d rooms)",
                     KVX_BOOT_MAX_QUERY_ROOMS);
    else if (!(arr = kvx__json_get(&d, root, "bootstrap_rooms")) || arr->type != KVX_JSON_ARRAY ||
             arr->count > KVX_BOOT_MAX_QUERY_ROOMS)
        kvx__set_why(why, wl, "bootstrap_rooms must be an array of at most %d rooms",
                     KVX_BOOT_MAX_QUERY_ROOMS);
    else if (arr->count && !(*ids = (uint64_t *)kvx__alloc(a, arr->count * sizeof **ids)))
        kvx__set_why(why, wl, "out of memory");
    else
        rc = 0;
    for (k = rc == 0 && arr->count ? arr->child : 0; k && *n < arr->count; k = d.nodes[k].next) {
        if (!kvx__boot_jroom(&d.nodes[k], &(*ids)[*n])) {
            kvx__set_why(why, wl, "every bootstrap room must be an integer in [0, 2^63)");
            rc = -1;
            break;
        }
        ++*n;
    }
    if (rc == 0 && *n != (arr ? arr->count : 0)) rc = -1; /* the parser's count and siblings disagree */
    if (rc) { kvx__free(a, *ids); *ids = NULL; *n = 0; }
    kvx__json_free(&d);
    return rc;
}

static int kvx__boot_route_auth(kvx_boot *b, const kvx_boot_http_request *rq);

/* POST /register_dp_rank {"bootstrap_room": R, "dp_rank": D}: 200 "OK". */
static void kvx__boot_register_dp(kvx_boot *b, kvx__boot_conn *c, const kvx_boot_http_request *rq) {
    uint64_t room = 0, dpr = 0;
    int st = 200, dp;
    char msg[300] = "OK", why[200];
    if (b->key && kvx__boot_route_auth(b, rq)) {
        kvx__boot_http_text(b, c, 403, "POST /register_dp_rank needs a valid X-Kvx-Auth header: "
                                       "this bootstrap server has a key (KVX_AUTH_KEY)\n");
        return;
    }
    if (kvx__boot_dpreg_parse(kvx__boot_al(b), rq->body, rq->body_len, &room, &dpr, why, sizeof why)) {
        kvx__boot_http_textf(b, c, 400, "bad request: %s\n", why);
        return;
    }
    {
        pthread_mutex_lock(&b->mu);
        dp = b->srv.ranks ? b->srv.dp : 0;
        if (!dp) {
            st = 503;
            snprintf(msg, sizeof msg, "Prefill server not fully registered yet: no rank registered.\n");
        } else if (dpr >= (uint64_t)dp) {
            st = 400;
            snprintf(msg, sizeof msg, "bad request: dp_rank %llu is not below the registered dp "
                     "size %d\n", (unsigned long long)dpr, dp);
        } else if (kvx__boot_dp_pin(b, room, (int)dpr)) {
            st = 500;
            snprintf(msg, sizeof msg, "out of memory\n");
        }
        pthread_mutex_unlock(&b->mu);
    }
    kvx__boot_http_text(b, c, st, msg);
}

static int kvx__boot_u64_cmp(const void *x, const void *y) {
    uint64_t a = *(const uint64_t *)x, b = *(const uint64_t *)y;
    return a < b ? -1 : a > b;
}

/* POST /query_dp_ranks {"bootstrap_rooms": [R...]} -> {"R": D, ...} for the
   rooms pinned here; others are left out (SGLang's answer). */
static void kvx__boot_query_dp(kvx_boot *b, kvx__boot_conn *c, const kvx_boot_http_request *rq) {
    uint64_t *ids = NULL, prev = 0;
    uint32_t n = 0, i;
    kvx__buf o;
    int first = 1;
    char why[200];
    if (kvx__boot_dpq_parse(kvx__boot_al(b), rq->body, rq->body_len, &ids, &n, why, sizeof why)) {
        kvx__boot_http_textf(b, c, strstr(why, "memory") ? 500 : 400, "bad request: %s\n", why);
        return;
    }
    /* a room asked twice is answered once (a JSON object, as Python's dict) */
    if (n) qsort(ids, n, sizeof *ids, kvx__boot_u64_cmp);
    kvx__buf_init(&o, kvx__boot_al(b));
    kvx__buf_printf(&o, "{");
    pthread_mutex_lock(&b->mu);
    kvx__boot_dp_expire(b, kvx_now_ns());
    for (i = 0; i < n; i++) {
        kvx__hnode *h;
        if (i && ids[i] == prev) continue;
        prev = ids[i];
        if (!(h = kvx__htab_find(&b->srv.dprooms, ids[i]))) continue;
        kvx__buf_printf(&o, "%s\"%llu\":%d", first ? "" : ",", (unsigned long long)ids[i],
                       ((kvx__boot_dproom *)(void *)((char *)h - offsetof(kvx__boot_dproom, hn)))->dp);
        first = 0;
    }
    pthread_mutex_unlock(&b->mu);
    kvx__buf_printf(&o, "}");
    kvx_engine_free(b->engine, ids);
    kvx__boot_http_buf(b, c, 200, "application/json", &o);
    kvx__buf_free(&o);
}

/* PUT /route with a key: "X-Kvx-Auth: <unix seconds>:<hex HMAC-SHA-256(key,
   "kvx-boot-route" 0 seconds 0 body)>" (a header line into out). */
static void kvx__boot_route_mac(kvx_boot *b, const char *body, size_t len, uint64_t secs, char *out,
                                size_t n) {
    kvx__hmac h;
    uint8_t mac[KVX_MAC_BYTES];
    char ts[24], hex[2 * KVX_MAC_BYTES + 1];
    int i;
    snprintf(ts, sizeof ts, "%llu", (unsigned long long)secs);
    kvx__hmac_init(&h, b->key, b->key_len);
    kvx__hmac_update(&h, "kvx-boot-route", 15); /* with its NUL */
    kvx__hmac_update(&h, ts, strlen(ts) + 1);
    kvx__hmac_update(&h, body, len);
    kvx__hmac_final(&h, mac);
    for (i = 0; i < KVX_MAC_BYTES; i++) snprintf(hex + 2 * i, 3, "%02x", mac[i]);
    snprintf(out, n, "X-Kvx-Auth: %s:%s\r\n", ts, hex);
}

/* 0 when the request carries a valid, fresh (+-300 s) route MAC. */
static int kvx__boot_route_auth(kvx_boot *b, const kvx_boot_http_request *rq) {
    char want[128], got[128];
    uint64_t secs = 0, now = (uint64_t)time(NULL);
    size_t i;
    if (!rq->auth || rq->auth_len >= 100) return -1;
    for (i = 0; i < rq->auth_len && rq->auth[i] >= '0' && rq->auth[i] <= '9' && i < 19; i++)
        secs = secs * 10 + (uint64_t)(rq->auth[i] - '0');
    if (!i || i >= rq->auth_len || rq->auth[i] != ':') return -1;
    if (secs + 300 < now || secs > now + 300) return -1;
    kvx__boot_route_mac(b, rq->body, rq->body_len, secs, want, sizeof want);
    snprintf(got, sizeof got, "X-Kvx-Auth: %.*s\r\n", (int)rq->auth_len, rq->auth);
    return strlen(got) == strlen(want) && kvx__equal_ct(got, want, strlen(want)) ? 0 : -1;
}

static void kvx__boot_route_put(kvx_boot *b, kvx__boot_conn *c, const kvx_boot_http_request *rq) {
    kvx__boot_regn g;
    char why[256];
    int rc;
    if (b->key && kvx__boot_route_auth(b, rq)) {
        kvx_engine_log(b->engine, KVX_LOG_WARN, "kvx.boot", 0,
                       "refused PUT /route from %s: no valid X-Kvx-Auth (this server has a key)", c->addr);
        kvx__boot_http_text(b, c, 403, "PUT /route needs a valid X-Kvx-Auth header: this bootstrap "
                                       "server has a key (KVX_AUTH_KEY)\n");
        return;
    }
    if (!(rc = kvx__boot_reg_parse(kvx__boot_al(b), rq->body, rq->body_len, &g, why, sizeof why))) {
        pthread_mutex_lock(&b->mu);
        rc = kvx__boot_srv_register(b, &g, why, sizeof why);
        pthread_mutex_unlock(&b->mu);
    }
    if (rc) {
        kvx__boot_http_textf(b, c, 400, "bad registration: %s\n", why);
        return;
    }
    kvx_engine_log(b->engine, KVX_LOG_INFO, "kvx.boot", 0,
                   "rank dp %d cp %d tp %d pp %d registered at %s:%d (from %s)", g.dp_rank,
                   g.cp_rank, g.tp_rank, g.pp_rank, g.ip, g.port, c->addr);
    kvx__boot_http_text(b, c, 200, "OK");
}

typedef struct kvx__boot_scan {
    kvx_boot *b;
    uint64_t by_state[5];
    kvx__boot_tally fails[KVX__BOOT_MAX_RESULTS];
    int nfails;
    kvx__buf *list; /* /rooms */
    size_t listed;
    uint64_t unfinished;
    uint64_t now;
} kvx__boot_scan;

static void kvx__boot_scan_room(kvx_room *r, void *arg) {
    kvx__boot_scan *s = (kvx__boot_scan *)arg;
    kvx_poll st = kvx_room_poll(r);
    if ((int)st >= 0 && (int)st <= 4) s->by_state[st]++;
    if (st == KVX_POLL_FAILED) kvx__boot_tally_add(s->fails, &s->nfails, (int)kvx_room_result(r), 1);
    if (st != KVX_POLL_FAILED && st != KVX_POLL_SUCCESS) s->unfinished++;
    if (s->list && st != KVX_POLL_FAILED && st != KVX_POLL_SUCCESS && s->listed < 10000) {
        char peer[300] = "";
        kvx__boot_br *br;
        pthread_mutex_lock(&s->b->mu);
        br = kvx__boot_find(s->b, kvx_room_id(r));
        if (br && br->room == r) {
            if (br->nconns) snprintf(peer, sizeof peer, "%s", br->conns[0]->addr);
            else if (br->peer) snprintf(peer, sizeof peer, "%s", br->peer->addr);
        }
        pthread_mutex_unlock(&s->b->mu);
        kvx__buf_printf(s->list, "%s{\"room\":%llu,\"role\":\"%s\",\"state\":\"%s\",\"age_s\":%.3f,"
                                "\"peer\":", s->listed ? "," : "",
                       (unsigned long long)kvx_room_id(r),
                       kvx_room_role(r) == KVX_ROLE_PREFILL ? "sender" : "receiver",
                       kvx_poll_str(st), (double)(s->now - kvx_room_created_ns(r)) / 1e9);
        kvx__buf_json_str(s->list, peer);
        kvx__buf_printf(s->list, "}");
        s->listed++;
    }
}

static void kvx__boot_metrics(kvx_boot *b, kvx__boot_conn *c) {
    kvx__boot_scan s;
    kvx_engine_stats st;
    kvx__buf o;
    int i, registered, expected;
    size_t pending;
    memset(&s, 0, sizeof s);
    kvx__buf_init(&o, kvx__boot_al(b));
    s.b = b;
    s.now = kvx_now_ns();
    kvx_engine_foreach_room(b->engine, kvx__boot_scan_room, &s);
    kvx_engine_stats_get(b->engine, &st);
    pthread_mutex_lock(&b->mu);
    for (i = 0; i < b->nfailures; i++) /* the open failed rooms, then the closed ones */
        kvx__boot_tally_add(s.fails, &s.nfails, b->failures[i].code, b->failures[i].count);
    registered = b->srv.registered;
    expected = b->srv.ranks ? b->srv.tp * b->srv.cp * b->srv.dp * b->srv.pp : 0;
    pending = b->npending;
    pthread_mutex_unlock(&b->mu);
    kvx__buf_printf(&o, "# HELP kvx_rooms Rooms open on this engine, by state.\n"
                       "# TYPE kvx_rooms gauge\n");
    for (i = 0; i < 5; i++)
        kvx__buf_printf(&o, "kvx_rooms{state=\"%s\"} %llu\n", kvx_poll_str((kvx_poll)i),
                       (unsigned long long)s.by_state[i]);
    kvx__buf_printf(&o, "# HELP kvx_rooms_created_total Rooms created.\n"
                       "# TYPE kvx_rooms_created_total counter\nkvx_rooms_created_total %llu\n"
                       "# HELP kvx_rooms_succeeded_total Rooms that reached Success.\n"
                       "# TYPE kvx_rooms_succeeded_total counter\nkvx_rooms_succeeded_total %llu\n"
                       "# HELP kvx_rooms_failed_total Rooms that reached Failed.\n"
                       "# TYPE kvx_rooms_failed_total counter\nkvx_rooms_failed_total %llu\n"
                       "# HELP kvx_bytes_total KV and aux bytes moved by finished rooms.\n"
                       "# TYPE kvx_bytes_total counter\nkvx_bytes_total %llu\n",
                   (unsigned long long)st.rooms_created, (unsigned long long)st.rooms_succeeded,
                   (unsigned long long)st.rooms_failed, (unsigned long long)st.bytes);
    kvx__buf_printf(&o, "# HELP kvx_room_failures_total Failed rooms by result code.\n"
                       "# TYPE kvx_room_failures_total counter\n");
    for (i = 0; i < s.nfails; i++)
        kvx__buf_printf(&o, "kvx_room_failures_total{reason=\"%s\"} %llu\n",
                       kvx_result_str((kvx_result)s.fails[i].code),
                       (unsigned long long)s.fails[i].count);
    kvx__buf_printf(&o, "# HELP kvx_boot_ranks_registered Prefill ranks registered with this "
                       "bootstrap server.\n# TYPE kvx_boot_ranks_registered gauge\n"
                       "kvx_boot_ranks_registered %d\n"
                       "# HELP kvx_boot_ranks_expected dp*cp*tp*pp of the registered instance.\n"
                       "# TYPE kvx_boot_ranks_expected gauge\nkvx_boot_ranks_expected %d\n"
                       "# HELP kvx_boot_control_connections Open control connections.\n"
                       "# TYPE kvx_boot_control_connections gauge\n"
                       "kvx_boot_control_connections %d\n"
                       "# HELP kvx_boot_pending_rooms Rooms whose frames arrived before their "
                       "sender.\n# TYPE kvx_boot_pending_rooms gauge\nkvx_boot_pending_rooms %zu\n"
                       "# HELP kvx_boot_http_connections Open bootstrap HTTP connections.\n"
                       "# TYPE kvx_boot_http_connections gauge\nkvx_boot_http_connections %d\n",
                   registered, expected, KVX__LOAD(&b->nctrl), pending, b->nhttp);
    kvx__boot_http_buf(b, c, 200, "text/plain; version=0.0.4; charset=utf-8", &o);
    kvx__buf_free(&o);
}

/* Room ids let a stranger claim a room (the first room frame names its
   destination), so only a loopback client gets the list; others get the
   count and an empty list. */
static void kvx__boot_rooms(kvx_boot *b, kvx__boot_conn *c) {
    kvx__boot_scan s;
    kvx__buf list, o;
    memset(&s, 0, sizeof s);
    kvx__buf_init(&list, kvx__boot_al(b));
    kvx__buf_init(&o, kvx__boot_al(b));
    s.b = b;
    s.now = kvx_now_ns();
    s.list = c->loopback ? &list : NULL;
    kvx_engine_foreach_room(b->engine, kvx__boot_scan_room, &s);
    if (c->loopback)
        kvx__buf_printf(&o, "{\"count\":%zu,\"rooms\":[%s]}", s.listed, list.data ? list.data : "");
    else
        kvx__buf_printf(&o, "{\"count\":%llu,\"rooms\":[],\"note\":\"room ids are listed to "
                           "loopback clients only\"}", (unsigned long long)s.unfinished);
    if (list.oom) o.oom = 1;
    kvx__boot_http_buf(b, c, 200, "application/json", &o);
    kvx__buf_free(&list);
    kvx__buf_free(&o);
}

static int kvx__boot_eq(const char *s, size_t n, const char *lit) {
    return n == strlen(lit) && memcmp(s, lit, n) == 0;
}
static int kvx__boot_is(const kvx_boot_http_request *rq, const char *path) {
    return kvx__boot_eq(rq->path, rq->path_len, path);
}

static void kvx__boot_http_route(kvx_boot *b, kvx__boot_conn *c, const kvx_boot_http_request *rq) {
    int get = kvx__boot_eq(rq->method, rq->method_len, "GET");
    if (kvx__boot_is(rq, "/route")) {
        if (get) kvx__boot_route_get(b, c, rq);
        else if (kvx__boot_eq(rq->method, rq->method_len, "PUT")) kvx__boot_route_put(b, c, rq);
        else kvx__boot_http_respond(b, c, 405, "text/plain; charset=utf-8", "use GET or PUT\n", 15,
                                    "Allow: GET, PUT\r\n");
        return;
    }
    if (kvx__boot_is(rq, "/health") || kvx__boot_is(rq, "/metrics") || kvx__boot_is(rq, "/rooms")) {
        if (!get) {
            kvx__boot_http_respond(b, c, 405, "text/plain; charset=utf-8", "use GET\n", 8,
                                   "Allow: GET\r\n");
            return;
        }
        if (b->key && !c->loopback && !kvx__boot_is(rq, "/health")) {
            kvx__boot_http_text(b, c, 403, "with a key (KVX_AUTH_KEY) /metrics and /rooms are served "
                                           "to loopback clients only\n");
            return;
        }
        if (kvx__boot_is(rq, "/health")) kvx__boot_http_text(b, c, 200, "OK");
        else if (kvx__boot_is(rq, "/metrics")) kvx__boot_metrics(b, c);
        else kvx__boot_rooms(b, c);
        return;
    }
    if (kvx__boot_is(rq, "/register_dp_rank") || kvx__boot_is(rq, "/query_dp_ranks")) {
        if (!kvx__boot_eq(rq->method, rq->method_len, "POST"))
            kvx__boot_http_respond(b, c, 405, "text/plain; charset=utf-8", "use POST\n", 9,
                                   "Allow: POST\r\n");
        else if (kvx__boot_is(rq, "/register_dp_rank")) kvx__boot_register_dp(b, c, rq);
        else kvx__boot_query_dp(b, c, rq);
        return;
    }
    kvx__boot_http_text(b, c, 404, "not found (routes: /route, /register_dp_rank, /query_dp_ranks, "
                                   "/health, /metrics, /rooms)\n");
}

static void kvx__boot_http_readable(kvx_boot *b, kvx__boot_conn *c) {
    size_t cap = (size_t)KVX_BOOT_MAX_HEADER + KVX_BOOT_MAX_BODY;
    kvx_boot_http_request rq;
    int eof = 0;
    if (c->http_state == KVX__BOOT_H_DRAINING) {
        /* read what the client still sends so closing does not reset the
           answer away, but at most 256 KiB and until the drain deadline */
        char tmp[4096];
        int i;
        for (i = 0; i < 16; i++) {
            ssize_t r = recv(c->fd, tmp, sizeof tmp, 0);
            if (r > 0) { c->need += (size_t)r; if (c->need > (256u << 10)) break; continue; }
            if (r < 0 && errno == EINTR) continue;
            if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
            break;
        }
        if (i == 16) return;
        kvx__boot_drop(b, c, "response sent");
        return;
    }
    if (c->http_state != KVX__BOOT_H_READING) return;
    for (;;) {
        ssize_t r;
        if (c->in_len == c->in_cap) {
            size_t nc = c->in_cap ? c->in_cap * 2 : 4096;
            int g;
            if (c->in_cap >= cap) break;
            if (nc > cap) nc = cap;
            if ((g = kvx__boot_buf_grow(c, &c->in, c->in_len, &c->in_cap, nc)) != 0) {
                kvx__boot_drop(b, c, g == -2 ? kvx__boot_over_total : "out of memory");
                return;
            }
        }
        r = recv(c->fd, c->in + c->in_len, c->in_cap - c->in_len, 0);
        if (r > 0) { c->in_len += (size_t)r; continue; }
        if (r == 0) { eof = 1; break; }
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) break;
        kvx__boot_drop(b, c, strerror(errno));
        return;
    }
    if (kvx_boot_parse_http_request(c->in, c->in_len, &rq) != KVX_OK) {
        kvx_engine_log(b->engine, KVX_LOG_INFO, "kvx.boot", 0, "bad HTTP request from %s: %d %s",
                       c->addr, rq.status, rq.error);
        kvx__boot_http_textf(b, c, rq.status ? rq.status : 400, "%s\n", rq.error);
        return;
    }
    if (rq.complete) {
        kvx__boot_http_route(b, c, &rq);
        return;
    }
    if (eof) { kvx__boot_drop(b, c, "the client closed the connection mid-request"); return; }
    if (rq.headers_done && rq.expect_continue && !c->sent_continue) {
        static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
        int err;
        c->sent_continue = 1;
        pthread_mutex_lock(&c->mu);
        err = kvx__boot_conn_append(c, (const uint8_t *)cont, sizeof cont - 1);
        pthread_mutex_unlock(&c->mu);
        if (err || kvx__boot_conn_flush(c)) { kvx__boot_drop(b, c, "cannot write"); return; }
    }
}

static void kvx__boot_http_event(kvx_boot *b, kvx__boot_conn *c, short rev) {
    if (rev & POLLOUT) {
        int err = kvx__boot_conn_flush(c);
        if (err) { kvx__boot_drop(b, c, strerror(err)); return; }
        if (c->http_state == KVX__BOOT_H_WRITING && !KVX__LOAD(&c->want_write))
            kvx__boot_http_finish(c);
    }
    if (c->http_state == KVX__BOOT_H_WRITING && (rev & (POLLERR | POLLHUP))) {
        kvx__boot_drop(b, c, "the client went away");
        return;
    }
    if (rev & (POLLIN | POLLHUP | POLLERR)) kvx__boot_http_readable(b, c);
}

/* >>boot: control channel, prefill side ------------------------------------------- */

#define KVX__BOOT_MAX_PENDING_PAGES (1u << 26) /* pages held in pending room frames */
#define KVX__BOOT_MAX_FRAMES_PER_ROOM 64

/* Copies a reason text from the wire, replacing control bytes. */
static void kvx__boot_reason_copy(char *out, size_t n, const char *s, uint32_t len) {
    uint32_t i;
    if (len >= n) len = (uint32_t)n - 1;
    for (i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)s[i];
        out[i] = (ch < 0x20 || ch == 0x7f) ? '?' : (char)ch;
    }
    out[len] = 0;
}

/* 1 when connection c owns room br's destination (it sent the room frame,
   or on decode it is a target rank). */
static int kvx__boot_owns(kvx_boot *b, kvx__boot_br *br, kvx__boot_conn *c) {
    uint32_t k;
    pthread_mutex_lock(&b->mu);
    for (k = 0; k < br->nconns && br->conns[k] != c; k++) {}
    pthread_mutex_unlock(&b->mu);
    return k < br->nconns;
}

/* kvx_boot_room_failed's telling, once (decode: only once the room frame
   went out; before that the prefill knows nothing of this receiver), to
   every connection of the room but `except` (the one that reported the
   failure; NULL: all). */
static void kvx__boot_tell(kvx_boot *b, kvx_room *r, const char *reason, kvx_result res,
                           const kvx__boot_conn *except) {
    kvx__boot_br *br;
    kvx__boot_conn *stack[4], **cs = NULL;
    const void *only = NULL;
    uint32_t n = 0, i;
    if (kvx_room_poll(r) == KVX_POLL_SUCCESS) return;
    pthread_mutex_lock(&b->mu);
    br = kvx__boot_find(b, kvx_room_id(r));
    if (!br || br->room != r || br->told == 1 || (br->told == 2 && except)) {
        pthread_mutex_unlock(&b->mu);
        return;
    }
    if (br->told == 2) only = br->told_skip; /* the others already heard it */
    br->told = except ? 2 : 1;
    br->told_skip = except;
    if (br->nconns && (b->role == KVX_ROLE_PREFILL || br->inited))
        n = kvx__boot_conns_copy(b, br->conns, br->nconns, &cs, stack);
    pthread_mutex_unlock(&b->mu);
    for (i = 0; cs && i < n; i++) /* prefill: status Failed; decode: abort */
        if (cs[i] != except && (!only || (const void *)cs[i] == only))
            kvx__boot_conn_frame(cs[i], b->role == KVX_ROLE_PREFILL ? KVX_BOOT_FRAME_STATUS
                                                                : KVX_BOOT_FRAME_ABORT,
                             kvx_room_id(r), KVX_POLL_FAILED, res, 0, reason);
    if (cs) kvx__boot_conns_release(b, cs, n, stack);
}

/* A peer failed or aborted room r (relayed with kvx_room_fail_remote, which
   tells no one): the room's other peers hear it from here (decode: the
   other contributing prefill ranks stop; prefill: the other decode ranks
   the room serves), with the room's sentence that names the reporter. */
static void kvx__boot_tell_others(kvx_boot *b, kvx_room *r, const kvx__boot_conn *reporter) {
    if (kvx_room_poll(r) == KVX_POLL_FAILED)
        kvx__boot_tell(b, r, kvx_room_error(r), kvx_room_result(r), reporter);
}

/* Applies one room frame to a sender that exists. br is referenced by the
   caller; boot->mu is not held. */
static void kvx__boot_apply_room(kvx_boot *b, kvx__boot_br *br, kvx__boot_conn *c,
                                 const int32_t *pages, uint32_t n, int32_t aux, uint16_t idx,
                                 uint16_t count, const int32_t *state, uint32_t ns) {
    kvx_room *r = br->room;
    int complete = 0, oom = 0;
    uint32_t i;
    char reason[KVX_ERROR_MAX] = "";
    kvx_result res;
    /* the destination is claimed: a frame that does not fit it is refused
       to its sender and does not touch the room */
    pthread_mutex_lock(&b->mu);
    if (!br->expected) br->expected = count;
    for (i = 0; i < br->nconns && br->tag[i] != idx; i++) {}
    if (count != br->expected)
        snprintf(reason, sizeof reason, "room %llu: decode %s says %u decode ranks serve it, its "
                 "destination already says %u; refused", (unsigned long long)br->id, c->addr,
                 (unsigned)count, (unsigned)br->expected);
    else if (i < br->nconns)
        snprintf(reason, sizeof reason, "room %llu: decode %s sent a destination for a slot already "
                 "claimed (peer index %u of %u); refused", (unsigned long long)br->id, c->addr,
                 (unsigned)idx, (unsigned)count);
    else if (br->nconns && n != br->dst_pages)
        snprintf(reason, sizeof reason, "room %llu: decode %s asks for %u pages, the room's "
                 "destination has %u; refused", (unsigned long long)br->id, c->addr, n,
                 br->dst_pages);
    else if (!(oom = kvx__boot_br_add_conn(br, c, idx) != 0)) {
        br->dst_pages = n;
        complete = br->nconns == br->expected;
    }
    pthread_mutex_unlock(&b->mu);
    if (reason[0]) {
        kvx_engine_log(b->engine, KVX_LOG_WARN, "kvx.boot", br->id, "%s", reason);
        kvx__boot_conn_status(c, br->id, KVX_POLL_FAILED, KVX_ERR_PROTOCOL, 0, reason);
        return;
    }
    if (oom) {
        kvx_room_fail(r, KVX_ERR_NO_MEMORY, "out of memory recording the destination of room %llu",
                      (unsigned long long)br->id);
        kvx__boot_conn_status(c, br->id, KVX_POLL_FAILED, KVX_ERR_NO_MEMORY, 0, "out of memory on prefill");
        return;
    }
    if (kvx_room_poll(r) == KVX_POLL_FAILED) {
        /* failed before this destination came (timeout, abort, a local
           error): this decode rank has not heard of it yet */
        kvx__boot_conn_status(c, br->id, KVX_POLL_FAILED, kvx_room_result(r), 0,
                              kvx_room_error(r));
        return;
    }
    if (b->hooks.on_room &&
        (res = b->hooks.on_room(b, r, &c->info, pages, n, aux, ns ? state : NULL, ns)) != KVX_OK) {
        kvx_room_fail(r, res, "the %s transport refused the destination sent by decode %s (%s)",
                      kvx_engine_transport(b->engine), c->addr, kvx_result_str(res));
        kvx__boot_tell(b, r, kvx_room_error(r), kvx_room_result(r), NULL);
        return;
    }
    if (complete) kvx_room_advance(r, KVX_POLL_WAITING_FOR_INPUT);
}

/* Under boot->mu: remembers (a bounded ring, KVX__BOOT_GONE entries, kept
   KVX_BOOTSTRAP_TIMEOUT) that room id's frame from c went with c, so its
   sender, created later, fails at once saying so instead of waiting out
   the timeout for a destination that is gone. */
static void kvx__boot_gone_add(kvx_boot *b, uint64_t id, const kvx__boot_conn *c, const char *reason) {
    kvx__boot_gone *g;
    if (!b->gone && !(b->gone = (kvx__boot_gone *)kvx__boot_zalloc(b, KVX__BOOT_GONE * sizeof *b->gone)))
        return; /* out of memory: the sender times out as before */
    g = &b->gone[b->gone_next++ % KVX__BOOT_GONE];
    g->id = id;
    g->t_ns = kvx_now_ns();
    snprintf(g->why, sizeof g->why, "decode %s closed its control connection (%s)", c->addr,
             reason ? reason : "closed");
}

/* Under boot->mu: copies the sentence of a remembered room into out. */
static int kvx__boot_gone_find(kvx_boot *b, uint64_t id, char *out, size_t n) {
    uint64_t limit = (uint64_t)(kvx_engine_settings(b->engine)->bootstrap_timeout_s * 1e9), now;
    uint32_t i;
    if (!b->gone) return 0;
    now = kvx_now_ns();
    for (i = 0; i < KVX__BOOT_GONE; i++)
        if (b->gone[i].t_ns && b->gone[i].id == id && now - b->gone[i].t_ns <= limit) {
            if (out && n) snprintf(out, n, "%s", b->gone[i].why);
            b->gone[i].t_ns = 0;
            return 1;
        }
    return 0;
}

/* Under boot->mu: the pending entry of a room with no sender yet. */
static kvx__boot_br *kvx__boot_pending_entry(kvx_boot *b, uint64_t id) {
    kvx__boot_br *br = kvx__boot_find(b, id);
    if (br) return br->room ? NULL : br;
    if (b->npending >= KVX_BOOT_MAX_PENDING) return NULL;
    br = kvx__boot_br_new(b, id);
    if (!br) return NULL;
    if (kvx__boot_insert(b, br)) { kvx_engine_free(b->engine, br); return NULL; }
    b->npending++;
    return br;
}

/* Charges a frame kept for a room with no sender yet to the connection
   that sent it (under boot->mu). NULL ok, else why the connection must go. */
static const char *kvx__boot_pend_charge(kvx__boot_conn *c, int64_t cost) {
    int64_t out;
    kvx_boot *b = c->boot;
    pthread_mutex_lock(&c->mu);
    out = (int64_t)(c->out_len - c->out_off);
    pthread_mutex_unlock(&c->mu);
    if (KVX__LOAD(&c->pend_bytes) + cost + out > (int64_t)KVX_BOOT_MAX_CONN_BYTES)
        return kvx__boot_over_conn;
    if (KVX__ADD(&b->mem_total, cost) > (int64_t)KVX_BOOT_MAX_TOTAL_BYTES) {
        KVX__SUB(&b->mem_total, cost);
        return kvx__boot_over_total;
    }
    KVX__ADD(&c->pend_bytes, cost);
    return NULL;
}

/* Under boot->mu: keeps a frame of c for br (no sender yet), charged to c,
   with room for n pages or a copy of reason. NULL when out of memory
   (nothing charged) or, with *over set, past a budget. */
static kvx__boot_pframe *kvx__boot_pframe_keep(kvx__boot_br *br, kvx__boot_conn *c, int type,
                                               uint32_t n, const char *reason, const char **over) {
    kvx_boot *b = c->boot;
    size_t rl = reason ? strlen(reason) + 1 : 0;
    int64_t cost = (int64_t)(sizeof(kvx__boot_pframe) + (reason ? rl : sizeof *br + 4ull * n));
    kvx__boot_pframe *fr;
    if ((*over = kvx__boot_pend_charge(c, cost)) != NULL) return NULL;
    if (!(fr = (kvx__boot_pframe *)kvx__boot_zalloc(b, sizeof *fr))) {
        KVX__SUB(&c->pend_bytes, cost);
        KVX__SUB(&b->mem_total, cost);
        return NULL;
    }
    fr->type = type;
    fr->conn = c;
    fr->cost = cost; /* from here kvx__boot_pframe_free uncharges */
    KVX__ADD(&c->refs, 1);
    if (n) fr->pages = (int32_t *)kvx_engine_alloc(b->engine, n * sizeof *fr->pages);
    if (rl) fr->reason = (char *)kvx_engine_alloc(b->engine, rl);
    if ((n && !fr->pages) || (rl && !fr->reason)) {
        kvx__boot_pframe_free(fr);
        return NULL;
    }
    if (rl) memcpy(fr->reason, reason, rl);
    if (br->frames_tail) br->frames_tail->next = fr;
    else br->frames = fr;
    br->frames_tail = fr;
    return fr;
}

static void kvx__boot_on_room_frame(kvx_boot *b, kvx__boot_conn *c, const kvx_boot_frame *f) {
    kvx__boot_br *br;
    uint32_t i, n = f->num_pages, nst = f->num_state;
    if (n + nst > b->scratch_cap) {
        int32_t *ns = (int32_t *)kvx__boot_grow(b, b->scratch, 0, (n + nst) * sizeof *ns);
        if (!ns) {
            kvx__boot_conn_status(c, f->room, KVX_POLL_FAILED, KVX_ERR_NO_MEMORY, 0,
                              "out of memory on prefill for the destination pages");
            return;
        }
        b->scratch = ns;
        b->scratch_cap = n + nst;
    }
    for (i = 0; i < n; i++) b->scratch[i] = kvx_boot_frame_page(f, i);
    for (i = 0; i < nst; i++) b->scratch[n + i] = kvx_boot_frame_state(f, i);
    pthread_mutex_lock(&b->mu);
    br = kvx__boot_find(b, f->room);
    if (!br || !br->room) { /* the sender does not exist yet: keep the frame */
        kvx__boot_pframe *fr = NULL;
        const char *why = "too many rooms wait for their sender (KVX_BOOT_MAX_PENDING)";
        const char *over = NULL;
        kvx__boot_gone_find(b, f->room, NULL, 0); /* a new destination replaces it */
        br = kvx__boot_pending_entry(b, f->room);
        for (i = 0, fr = br ? br->frames : NULL; fr; fr = fr->next) i++; /* frames kept */
        if (br && i >= KVX__BOOT_MAX_FRAMES_PER_ROOM) {
            br = NULL;
            why = "too many frames for one room";
        }
        if (br && b->pending_pages + n > KVX__BOOT_MAX_PENDING_PAGES) {
            br = NULL;
            why = "too many destination pages wait for their senders";
        }
        if (br && (fr = kvx__boot_pframe_keep(br, c, KVX_BOOT_FRAME_ROOM, n + nst, NULL, &over))) {
            fr->aux = f->aux_index;
            fr->idx = f->peer_index;
            fr->count = f->peer_count;
            fr->n = n;
            fr->ns = nst;
            if (n + nst) memcpy(fr->pages, b->scratch, (n + nst) * sizeof *fr->pages);
            b->pending_pages += n;
        }
        pthread_mutex_unlock(&b->mu);
        if (over) { /* past its budget: the connection goes, and with it only its rooms */
            kvx_engine_log(b->engine, KVX_LOG_WARN, "kvx.boot", f->room,
                           "closing control connection %s: %s", c->addr, over);
            kvx__boot_drop(b, c, over);
            return;
        }
        if (!fr) kvx__boot_conn_status(c, f->room, KVX_POLL_FAILED, KVX_ERR_NO_SPACE, 0, br ? "out of memory" : why);
        return;
    }
    KVX__ADD(&br->refs, 1);
    pthread_mutex_unlock(&b->mu);
    kvx__boot_apply_room(b, br, c, b->scratch, n, f->aux_index, f->peer_index, f->peer_count,
                         b->scratch + n, nst);
    kvx__boot_br_unref(br);
}

static void kvx__boot_on_abort_frame(kvx_boot *b, kvx__boot_conn *c, const kvx_boot_frame *f) {
    char reason[KVX_BOOT_MAX_REASON + 1], who[200], w[160];
    kvx__boot_br *br;
    uint32_t k;
    kvx_room *r;
    kvx__boot_reason_copy(reason, sizeof reason, f->reason, f->reason_len);
    pthread_mutex_lock(&b->mu);
    br = kvx__boot_find(b, f->room);
    if (b->role == KVX_ROLE_PREFILL && br && !br->room) {
        /* no sender yet: kept only when this connection sent the room's
           destination (then it owns the room), once */
        kvx__boot_pframe *fr, *own = NULL;
        const char *over = NULL;
        for (fr = br->frames; fr; fr = fr->next) {
            if (fr->conn != c) continue;
            if (fr->type == KVX_BOOT_FRAME_ABORT) { own = NULL; break; }
            own = fr;
        }
        if (own) kvx__boot_pframe_keep(br, c, KVX_BOOT_FRAME_ABORT, 0, reason, &over);
        pthread_mutex_unlock(&b->mu);
        if (over) kvx__boot_drop(b, c, over);
        return;
    }
    if (!br || !br->room) { pthread_mutex_unlock(&b->mu); return; }
    /* only the connection that owns the room's destination (prefill: sent
       its room frame; decode: the target rank) may abort it */
    for (k = 0; k < br->nconns && br->conns[k] != c; k++) {}
    if (k == br->nconns) {
        pthread_mutex_unlock(&b->mu);
        kvx_engine_log(b->engine, KVX_LOG_INFO, "kvx.boot", f->room,
                       "ignored an abort from %s, which does not own the room", c->addr);
        return;
    }
    KVX__ADD(&br->refs, 1);
    r = br->room;
    pthread_mutex_unlock(&b->mu);
    snprintf(who, sizeof who, "aborted by the %s", kvx__boot_who(c, w, sizeof w));
    kvx__boot_relay(r, KVX_ERR_ABORTED, reason, who);
    kvx__boot_tell_others(b, r, c);
    if (b->hooks.on_abort) b->hooks.on_abort(b, r, &c->info, reason);
    kvx__boot_br_unref(br);
}

/* The decode engine is in: log it and tell the transport. */
static void kvx__boot_accepted(kvx_boot *b, kvx__boot_conn *c) {
    char why[KVX_ERROR_MAX];
    kvx_result lr = kvx__boot_combine(kvx_engine_layout(b->engine), b->tp_size, b->tp_rank,
                                      &c->shape.l, c->info.tp_size, why, sizeof why);
    c->hello_done = 1;
    c->auth_wait = 0;
    c->deadline_ns = 0;
    pthread_mutex_lock(&b->mu);
    kvx__boot_live_locked(b, c, 1);
    pthread_mutex_unlock(&b->mu);
    if (lr != KVX_OK)
        kvx_engine_log(b->engine, KVX_LOG_WARN, "kvx.boot", 0,
                       "decode %s (tp rank %d of %d) will refuse this connection: its KV layout "
                       "does not combine with this prefill's: %s", c->addr, c->info.tp_rank,
                       c->info.tp_size, why);
    else
        kvx_engine_log(b->engine, KVX_LOG_INFO, "kvx.boot", 0,
                       "decode %s connected (tp rank %d of %d, transport %s%s)", c->addr,
                       c->info.tp_rank, c->info.tp_size, c->transport,
                       b->key ? ", authenticated" : "");
    if (b->hooks.on_connect) b->hooks.on_connect(b, &c->info);
}

/* Answers a keyed hello: our nonce and our proof over the decode's nonce.
   Until the decode's proof arrives (kvx__boot_on_auth) nothing else from
   it is read, and the read deadline still runs. */
static int kvx__boot_answer_keyed(kvx_boot *b, kvx__boot_conn *c, const kvx_boot_frame *f) {
    uint8_t proof[KVX_BOOT_PROOF];
    kvx__buf h;
    kvx_result r;
    if (kvx__random_bytes(c->nonce_self, KVX_BOOT_NONCE) != KVX_OK)
        return kvx__boot_drop(b, c, "no random bytes for a nonce");
    if (f->hello.nonce) memcpy(c->nonce_peer, f->hello.nonce, KVX_BOOT_NONCE);
    else memset(c->nonce_peer, 0, KVX_BOOT_NONCE);
    kvx__auth_proof(b->key, b->key_len, "kvx-boot-server", c->nonce_peer, c->nonce_self, proof);
    r = kvx__boot_make_hello(b, &h, c->nonce_self, proof);
    if (r == KVX_OK) r = kvx__boot_conn_send(c, h.data, h.len);
    kvx__buf_free(&h);
    if (r != KVX_OK)
        return kvx__boot_drop(b, c, "cannot answer its hello");
    return 0;
}

static int kvx__boot_on_hello(kvx_boot *b, kvx__boot_conn *c, const kvx_boot_frame *f) {
    int keyed = (f->hello.flags & KVX_BOOT_HELLO_AUTH) != 0;
    if (b->role != KVX_ROLE_PREFILL || f->hello.role != KVX_ROLE_DECODE)
        return kvx__boot_drop(b, c, "hello from a prefill engine on a prefill control port");
    if (kvx__boot_conn_set_info(c, &f->hello))
        return kvx__boot_drop(b, c, "out of memory");
    if (b->key) {
        /* answered keyed either way, so a decode without the key learns why */
        if (kvx__boot_answer_keyed(b, c, f)) return 1;
        if (!keyed) {
            kvx_engine_log(b->engine, KVX_LOG_WARN, "kvx.boot", 0,
                           "refused control connection from %s: it has no key and this prefill "
                           "requires one (KVX_AUTH_KEY)", c->addr);
            return kvx__boot_drop(b, c, "authentication required: the decode engine has no key");
        }
        c->auth_wait = 1;
        return 0;
    }
    if (kvx__boot_conn_send(c, b->hello.data, b->hello.len) != KVX_OK)
        return kvx__boot_drop(b, c, "cannot answer its hello");
    if (keyed) { /* the decode refuses an unauthenticated prefill, with our hello in hand */
        kvx_engine_log(b->engine, KVX_LOG_WARN, "kvx.boot", 0,
                       "refused control connection from %s: it has a key (KVX_AUTH_KEY) and this "
                       "prefill has none", c->addr);
        return kvx__boot_drop(b, c, "the decode engine has a key and this prefill has none");
    }
    kvx__boot_accepted(b, c);
    return 0;
}

/* The decode's proof over our nonce: in, or the connection goes (nothing
   it sent was applied). */
static int kvx__boot_on_auth(kvx_boot *b, kvx__boot_conn *c, const kvx_boot_frame *f) {
    uint8_t want[KVX_BOOT_PROOF];
    kvx__auth_proof(b->key, b->key_len, "kvx-boot-client", c->nonce_self, c->nonce_peer, want);
    if (!kvx__equal_ct(want, f->proof, KVX_BOOT_PROOF)) {
        kvx_engine_log(b->engine, KVX_LOG_WARN, "kvx.boot", 0,
                       "refused control connection from %s: its proof does not match this "
                       "prefill's key (KVX_AUTH_KEY differs)", c->addr);
        return kvx__boot_drop(b, c, "authentication failed: the decode engine's key differs");
    }
    kvx__boot_accepted(b, c);
    return 0;
}

/* >>boot: control channel, decode side --------------------------------------------- */

static void kvx__boot_on_status_frame(kvx_boot *b, kvx__boot_conn *c, const kvx_boot_frame *f) {
    char reason[KVX_BOOT_MAX_REASON + 1];
    kvx__boot_br *br;
    kvx_room *r;
    uint32_t k;
    int done = 0, inited, h = 0;
    uint64_t bytes = 0;
    kvx__boot_reason_copy(reason, sizeof reason, f->reason, f->reason_len);
    pthread_mutex_lock(&b->mu);
    br = kvx__boot_find(b, f->room);
    if (!br || !br->room) { pthread_mutex_unlock(&b->mu); return; }
    for (k = 0; k < br->nconns && br->conns[k] != c; k++) {}
    if (k == br->nconns) { pthread_mutex_unlock(&b->mu); return; }
    KVX__ADD(&br->refs, 1);
    r = br->room;
    inited = br->inited;
    pthread_mutex_unlock(&b->mu);
    if (b->hooks.on_status)
        h = b->hooks.on_status(b, r, &c->info, (kvx_poll)f->state, (kvx_result)f->result,
                               f->bytes, reason);
    /* 2: handled, and this rank is done with the room; 1: handled */
    if (h == 2 || (!h && f->state == KVX_POLL_SUCCESS && inited)) {
        pthread_mutex_lock(&b->mu);
        if (!br->tag[k]) {
            br->tag[k] = 1;
            br->ndone++;
            br->bytes += f->bytes;
        }
        done = !h && br->ndone == br->nconns;
        bytes = br->bytes;
        pthread_mutex_unlock(&b->mu);
        if (done) kvx_room_succeed(r, bytes);
    } else if (!h && f->state == KVX_POLL_SUCCESS) {
        kvx_engine_log(b->engine, KVX_LOG_WARN, "kvx.boot", br->id,
                       "prefill rank %s reported Success before this receiver sent its "
                       "destination; ignored", c->addr);
    } else if (!h && f->state == KVX_POLL_FAILED) {
        char who[600], w[160];
        snprintf(who, sizeof who, "failed by %s, bootstrap %s", kvx__boot_who(c, w, sizeof w),
                 c->peer ? c->peer->addr : "?");
        kvx__boot_relay(r, f->result < 0 ? (kvx_result)f->result : KVX_ERR_PEER, reason, who);
        kvx__boot_tell_others(b, r, c);
    }
    kvx__boot_br_unref(br);
}

static void kvx__boot_lost_sentence(const kvx__boot_pf *p, const kvx__boot_conn *c,
                                    const char *reason, char *out, size_t n) {
    const kvx_boot_peer *i = &c->info;
    if (snprintf(out, n, "lost connection with prefill instance %s (rank %s), prefill tp rank %d of "
                 "%d, pp rank %d of %d, dp rank %d of %d: %s", p->addr, c->addr, i->tp_rank,
                 i->tp_size, i->pp_rank, i->pp_size, i->dp_rank, i->dp_size, reason) < 0)
        out[0] = 0; /* longer than n: cut, as every failure sentence */
}

/* Under boot->mu: control connection c of prefill instance p is gone;
   returns the unfinished rooms that depend on it (c is one of their
   targets and has not reported Success). Rooms on p's other ranks go on. */
static void kvx__boot_rank_dead_locked(kvx_boot *b, kvx__boot_pf *p, kvx__boot_conn *c,
                                       kvx__boot_vec *out) {
    size_t i;
    uint32_t k;
    for (i = 0; i < b->rooms.nb; i++) {
        kvx__boot_br *br;
        for (br = kvx__boot_at(b->rooms.b[i]); br; br = kvx__boot_at(br->hn.hnext)) {
            if (!br->room || br->peer != p || br->waiting || br->gen != p->gen ||
                kvx__room_terminal(br->room))
                continue;
            for (k = 0; k < br->nconns && br->conns[k] != c; k++) {}
            if (k < br->nconns && !br->tag[k]) kvx__boot_vec_push(out, br);
        }
    }
}

/* Under boot->mu: 1 when a room of p's generation is still unfinished (its
   control connections must stay up). */
static int kvx__boot_gen_busy_locked(kvx_boot *b, kvx__boot_pf *p) {
    size_t i;
    for (i = 0; i < b->rooms.nb; i++) {
        kvx__boot_br *br;
        for (br = kvx__boot_at(b->rooms.b[i]); br; br = kvx__boot_at(br->hn.hnext))
            if (br->room && br->peer == p && !br->waiting && br->gen == p->gen &&
                !kvx__room_terminal(br->room) && !(br->nconns && br->ndone == br->nconns))
                return 1;
    }
    return 0;
}

/* Under boot->mu: the first lost control connection of p, or NULL. */
static kvx__boot_conn *kvx__boot_pf_lost_locked(const kvx__boot_pf *p) {
    uint32_t k;
    for (k = 0; k < p->r.nconns; k++)
        if (p->r.conns[k]->gone && p->r.conns[k]->lost[0]) return p->r.conns[k];
    return NULL;
}

/* Under boot->mu: the prefill instance is gone; returns its unfinished rooms. */
static void kvx__boot_peer_dead_locked(kvx_boot *b, kvx__boot_pf *p, kvx__boot_vec *out) {
    size_t i;
    uint32_t k;
    p->state = KVX__BOOT_PF_DEAD;
    for (k = 0; k < p->r.nconns; k++) KVX__STORE(&p->r.conns[k]->want_close, 1);
    for (i = 0; i < b->rooms.nb; i++) {
        kvx__boot_br *br;
        for (br = kvx__boot_at(b->rooms.b[i]); br; br = kvx__boot_at(br->hn.hnext))
            if (br->room && br->peer == p && !br->waiting && br->gen == p->gen &&
                !kvx__room_terminal(br->room) && !(br->nconns && br->ndone == br->nconns))
                kvx__boot_vec_push(out, br);
    }
    kvx__boot_wake(b);
}

static void kvx__boot_fail_all(kvx__boot_vec *v, kvx_result res, const char *fmt, ...) KVX_PRINTF(3, 4);
static void kvx__boot_fail_all(kvx__boot_vec *v, kvx_result res, const char *fmt, ...) {
    char msg[KVX_ERROR_MAX];
    va_list ap;
    size_t i;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    for (i = 0; i < v->n; i++) kvx_room_fail_remote(v->v[i]->room, res, "%s", msg);
    kvx__boot_vec_release(v);
}

/* Under boot->mu: takes out of the table, as a list (dnext), the rooms
   with no sender yet that have nothing left to wait for: with c (a lost
   connection; its kept frames go from every room), those whose every
   frame came from c; without, those kept longer than limit_ns. */
static kvx__boot_br *kvx__boot_unpend_locked(kvx_boot *b, kvx__boot_conn *c, uint64_t limit_ns,
                                             const char *reason) {
    uint64_t now = kvx_now_ns();
    kvx__boot_br *out = NULL, *br, *nx;
    kvx__boot_pframe **fp, *f;
    size_t i;
    for (i = 0; b->npending && i < b->rooms.nb; i++)
        for (br = kvx__boot_at(b->rooms.b[i]); br; br = nx) {
            int dropped = 0;
            nx = kvx__boot_at(br->hn.hnext);
            if (br->room || (!c && now - br->created_ns <= limit_ns)) continue;
            if (c) br->frames_tail = NULL;
            for (fp = &br->frames; c && (f = *fp) != NULL;) {
                if (f->conn != c) {
                    br->frames_tail = f;
                    fp = &f->next;
                    continue;
                }
                *fp = f->next;
                f->next = NULL;
                b->pending_pages -= f->n;
                kvx__boot_pframe_free(f);
                dropped = 1;
            }
            /* the sender, when it comes, fails at once with this instead of
               waiting out KVX_BOOTSTRAP_TIMEOUT for a destination that is
               gone; the entry expires like any pending one (kvx__boot_sweep) */
            if (dropped) kvx__boot_gone_add(b, br->id, c, reason);
            if (c && br->frames) continue;
            kvx__htab_remove(&b->rooms, &br->hn);
            b->npending--;
            for (f = br->frames; f; f = f->next) b->pending_pages -= f->n;
            br->dnext = out;
            out = br;
        }
    return out;
}

/* I/O thread: a control connection is gone; fail what depended on it. */
static void kvx__boot_conn_lost(kvx_boot *b, kvx__boot_conn *c, const char *reason) {
    kvx__boot_vec fail;
    size_t i;
    memset(&fail, 0, sizeof fail);
    if (b->role == KVX_ROLE_PREFILL) {
        kvx__boot_br *dead, *br, *nx;
        if (!c->hello_done) return;
        pthread_mutex_lock(&b->mu);
        dead = kvx__boot_unpend_locked(b, c, 0, reason);
        for (i = 0; i < b->rooms.nb; i++)
            for (br = kvx__boot_at(b->rooms.b[i]); br; br = kvx__boot_at(br->hn.hnext)) {
                uint32_t k;
                for (k = 0; br->room && k < br->nconns && br->conns[k] != c; k++) {}
                if (br->room && k < br->nconns && !kvx__room_terminal(br->room))
                    kvx__boot_vec_push(&fail, br);
            }
        pthread_mutex_unlock(&b->mu);
        for (; dead; dead = nx) {
            nx = dead->dnext;
            kvx__boot_br_unref(dead);
        }
        if (b->hooks.on_peer_lost) {
            size_t keep = 0;
            for (i = 0; i < fail.n; i++) {
                if (b->hooks.on_peer_lost(b, fail.v[i]->room, reason)) kvx__boot_br_unref(fail.v[i]);
                else fail.v[keep++] = fail.v[i];
            }
            fail.n = keep;
        }
        if (fail.n)
            kvx_engine_log(b->engine, KVX_LOG_WARN, "kvx.boot", 0,
                           "lost connection with decode instance %s (%s): failing %zu rooms",
                           c->addr, reason, fail.n);
        kvx__boot_fail_all(&fail, KVX_ERR_PEER_LOST, "lost connection with decode instance %s: %s",
                           c->addr, reason);
    } else {
        /* Only the rooms that depend on this rank fail; rooms on the
           instance's other ranks (other dp ranks, other contributors) go on.
           The instance is resolved again once every rank is lost, or when a
           room arrives while none of its rooms is unfinished; until then a
           room that needs the lost rank fails at once (kvx__boot_assign_dp). */
        kvx__boot_pf *p = c->peer;
        int dead = 0, all = 1;
        uint32_t k;
        char msg[KVX_ERROR_MAX];
        if (!p) return;
        kvx__boot_lost_sentence(p, c, reason, msg, sizeof msg);
        pthread_mutex_lock(&b->mu);
        if (p->gen == c->gen && p->state == KVX__BOOT_PF_READY) {
            snprintf(c->lost, sizeof c->lost, "%s", msg);
            for (k = 0; k < p->r.nconns && all; k++) all = p->r.conns[k]->gone;
            if (all) kvx__boot_peer_dead_locked(b, p, &fail); /* nothing left: resolve again */
            else kvx__boot_rank_dead_locked(b, p, c, &fail);
            dead = 1;
        }
        pthread_mutex_unlock(&b->mu);
        if (dead)
            kvx_engine_log(b->engine, fail.n ? KVX_LOG_WARN : KVX_LOG_INFO, "kvx.boot", 0,
                           "%s; failing %zu rooms", msg, fail.n);
        for (i = 0; i < fail.n; i++) { /* the room's other contributors stop too */
            kvx_room_fail_remote(fail.v[i]->room, KVX_ERR_PEER_LOST, "%s", msg);
            kvx__boot_tell_others(b, fail.v[i]->room, c);
        }
        kvx__boot_vec_release(&fail);
    }
    if (b->hooks.on_disconnect && c->hello_done) b->hooks.on_disconnect(b, &c->info, reason);
}

/* Returns 1 when the connection was dropped. */
static int kvx__boot_dispatch(kvx_boot *b, kvx__boot_conn *c, const kvx_boot_frame *f) {
    char msg[160];
    if (!c->hello_done) { /* a hello first; keyed, then the decode's proof */
        if (c->auth_wait && f->type == KVX_BOOT_FRAME_AUTH) return kvx__boot_on_auth(b, c, f);
        if (!c->auth_wait && f->type == KVX_BOOT_FRAME_HELLO) return kvx__boot_on_hello(b, c, f);
        snprintf(msg, sizeof msg, "protocol error: %s frame before %s",
                 kvx__boot_type_name(f->type), c->auth_wait ? "authentication" : "hello");
        return kvx__boot_drop(b, c, msg);
    }
    if (f->type == KVX_BOOT_FRAME_ROOM && b->role == KVX_ROLE_PREFILL) {
        kvx__boot_on_room_frame(b, c, f);
    } else if (f->type == KVX_BOOT_FRAME_STATUS && b->role == KVX_ROLE_DECODE) {
        kvx__boot_on_status_frame(b, c, f);
    } else if (f->type == KVX_BOOT_FRAME_ABORT) {
        kvx__boot_on_abort_frame(b, c, f);
    } else if (f->type == KVX_BOOT_FRAME_TRANSPORT && b->hooks.on_message) {
        b->hooks.on_message(b, &c->info, f->message, f->message_len);
    } else if (f->type == KVX_BOOT_FRAME_PING) { /* heartbeat: answer at once */
        uint8_t pong[KVX__BOOT_HDR + 8];
        kvx__boot_hdr(pong, 8, KVX_BOOT_FRAME_PONG);
        kvx__le_w64(pong + KVX__BOOT_HDR, f->seq);
        kvx__boot_conn_send(c, pong, sizeof pong);
    } else if (f->type != KVX_BOOT_FRAME_PONG) { /* a pong's last_rx_ns is all it does */
        snprintf(msg, sizeof msg, "protocol error: unexpected %s frame on a %s engine",
                 kvx__boot_type_name(f->type), b->role == KVX_ROLE_PREFILL ? "prefill" : "decode");
        return kvx__boot_drop(b, c, msg);
    }
    return c->dropped;
}

/* Decodes every whole frame in c->in. Returns 1 when the connection was dropped. */
static int kvx__boot_ctrl_frames(kvx_boot *b, kvx__boot_conn *c) {
    size_t off = 0;
    c->need = 0;
    while (off < c->in_len) {
        kvx_boot_frame f;
        size_t used = 0;
        char why[256], msg[300];
        if (kvx_boot_frame_decode(c->in + off, c->in_len - off, &f, &used, why, sizeof why) != KVX_OK) {
            snprintf(msg, sizeof msg, "protocol error: %s", why);
            kvx_engine_log(b->engine, KVX_LOG_WARN, "kvx.boot", 0, "closing control connection %s: %s",
                           c->addr, msg);
            return kvx__boot_drop(b, c, msg);
        }
        if (!used) {
            c->need = c->in_len - off >= KVX__BOOT_HDR ? KVX__BOOT_HDR + (size_t)f.body_len : KVX__BOOT_HDR;
            break;
        }
        if (kvx__boot_dispatch(b, c, &f)) return 1;
        off += used;
    }
    if (off) {
        memmove(c->in, c->in + off, c->in_len - off);
        c->in_len -= off;
    }
    if (c->in_cap > (1u << 20) && c->in_len < (64u << 10) && c->need < (64u << 10)) {
        uint8_t *ni = (uint8_t *)kvx__boot_grow(b, c->in, c->in_len, 64u << 10);
        if (ni) {
            kvx__boot_charge(c, -(int64_t)(c->in_cap - (64u << 10)));
            c->in = ni;
            c->in_cap = 64u << 10;
        }
    }
    return 0;
}

/* At most 8 reads (512 KiB) per connection per turn of the poll loop, so a
   peer that floods cannot starve the others (their pings among them). */
static void kvx__boot_ctrl_readable(kvx_boot *b, kvx__boot_conn *c) {
    int rounds;
    for (rounds = 0; rounds < 8; rounds++) {
        /* the buffer grows as bytes arrive (doubling up to the frame's size),
           so a header announcing 64 MiB costs nothing until they come */
        size_t want = c->in_len + (64u << 10);
        ssize_t r;
        int g;
        if (c->need > want) {
            size_t dbl = c->in_cap * 2;
            want = dbl > want ? dbl : want;
            if (want > c->need) want = c->need;
        }
        if (c->in_len + 4096 > c->in_cap &&
            (g = kvx__boot_buf_grow(c, &c->in, c->in_len, &c->in_cap, want)) != 0) {
            kvx__boot_drop(b, c, g == -2 ? kvx__boot_over_total : "out of memory for an incoming frame");
            return;
        }
        r = recv(c->fd, c->in + c->in_len, c->in_cap - c->in_len, 0);
        if (r > 0) {
            size_t space = c->in_cap - c->in_len;
            KVX__STORE(&c->last_rx_ns, kvx_now_ns());
            c->in_len += (size_t)r;
            if (kvx__boot_ctrl_frames(b, c)) return;
            if ((size_t)r < space) return;
            continue;
        }
        if (r == 0) { kvx__boot_drop(b, c, "the peer closed the connection"); return; }
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) return;
        kvx__boot_drop(b, c, kvx__errstr(errno));
        return;
    }
}

/* >>boot: I/O thread ----------------------------------------------------------------- */

static int kvx__boot_drop(kvx_boot *b, kvx__boot_conn *c, const char *reason) {
    if (c->dropped) return 1;
    c->dropped = 1;
    kvx__boot_conn_shut(c);
    if (c->kind == KVX__BOOT_K_HTTP) b->nhttp--;
    if (c->kind == KVX__BOOT_K_CTRL) {
        KVX__SUB(&b->nctrl, 1);
        pthread_mutex_lock(&b->mu);
        kvx__boot_live_locked(b, c, 0);
        pthread_mutex_unlock(&b->mu);
        kvx__boot_conn_lost(b, c, reason);
    }
    return 1;
}

/* Takes the caller's reference. */
static int kvx__boot_io_add(kvx_boot *b, kvx__boot_conn *c) {
    if (kvx__boot_reserve(b, &b->conns, b->nconns, &b->cconns, sizeof *b->conns)) return -1;
    b->conns[b->nconns++] = c;
    return 0;
}

static void kvx__boot_accept(kvx_boot *b, kvx__boot_conn *l) {
    int i;
    for (i = 0; i < 64; i++) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof ss;
        kvx__boot_conn *c;
        int fd = accept4(l->fd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR) continue;
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                kvx_engine_log(b->engine, KVX_LOG_WARN, "kvx.boot", 0,
                               "cannot accept connections: %s; pausing 100 ms", strerror(errno));
                l->deadline_ns = kvx_now_ns() + 100000000ull;
            }
            return;
        }
        if (l->kind == KVX__BOOT_K_HTTP_LISTEN && b->nhttp >= KVX_BOOT_MAX_HTTP_CONNS) {
            static const char busy[] = "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 21\r\n"
                                       "Connection: close\r\n\r\ntoo many connections\n";
            ssize_t w = send(fd, busy, sizeof busy - 1, MSG_NOSIGNAL | MSG_DONTWAIT);
            (void)w;
            close(fd);
            continue;
        }
        if (l->kind == KVX__BOOT_K_CTRL_LISTEN && KVX__LOAD(&b->nctrl) >= KVX_BOOT_MAX_CTRL_CONNS) {
            close(fd); /* KVX_BOOT_MAX_CTRL_CONNS */
            continue;
        }
        c = kvx__boot_conn_new(b, l->kind == KVX__BOOT_K_HTTP_LISTEN ? KVX__BOOT_K_HTTP : KVX__BOOT_K_CTRL, fd);
        if (!c || kvx__boot_io_add(b, c)) {
            if (c) kvx__boot_conn_unref(c);
            else close(fd);
            continue;
        }
        kvx__sa_str((struct sockaddr *)&ss, c->addr, sizeof c->addr);
        c->loopback = kvx__boot_is_loopback((struct sockaddr *)&ss);
        c->deadline_ns = kvx_now_ns() + (uint64_t)KVX_BOOT_READ_TIMEOUT_MS * 1000000ull;
        if (c->kind == KVX__BOOT_K_CTRL) {
            kvx__nodelay(fd);
            KVX__ADD(&b->nctrl, 1);
        } else {
            b->nhttp++;
        }
    }
}

static void kvx__boot_io_event(kvx_boot *b, kvx__boot_conn *c, short rev) {
    if (c->dropped) return;
    switch (c->kind) {
    case KVX__BOOT_K_HTTP_LISTEN:
    case KVX__BOOT_K_CTRL_LISTEN:
        if (rev & POLLIN) kvx__boot_accept(b, c);
        break;
    case KVX__BOOT_K_HTTP: kvx__boot_http_event(b, c, rev); break;
    case KVX__BOOT_K_CTRL:
        if (rev & POLLOUT) {
            int err = kvx__boot_conn_flush(c);
            if (err) { kvx__boot_drop(b, c, kvx__errstr(err)); return; }
        }
        if (rev & (POLLIN | POLLHUP | POLLERR)) kvx__boot_ctrl_readable(b, c);
        break;
    }
}

/* Prefill: room frames whose sender never came answer Failed after the
   bootstrap timeout. */
static void kvx__boot_sweep(kvx_boot *b) {
    uint64_t limit = (uint64_t)(kvx_engine_settings(b->engine)->bootstrap_timeout_s * 1e9);
    kvx__boot_br *expired, *nx;
    pthread_mutex_lock(&b->mu);
    expired = kvx__boot_unpend_locked(b, NULL, limit, NULL);
    pthread_mutex_unlock(&b->mu);
    for (; expired; expired = nx) {
        kvx__boot_pframe *f;
        char msg[KVX_ERROR_MAX];
        nx = expired->dnext;
        snprintf(msg, sizeof msg,
                 "no sender was created for room %llu on prefill rank %s:%d within %.0f s "
                 "(KVX_BOOTSTRAP_TIMEOUT)", (unsigned long long)expired->id, b->rank_ip,
                 b->ctrl_port, (double)limit / 1e9);
        for (f = expired->frames; f; f = f->next)
            if (f->type == KVX_BOOT_FRAME_ROOM)
                kvx__boot_conn_status(f->conn, expired->id, KVX_POLL_FAILED, KVX_ERR_TIMEOUT, 0, msg);
        kvx__boot_br_unref(expired);
    }
}

static void kvx__boot_housekeeping(kvx_boot *b) {
    uint64_t now = kvx_now_ns();
    size_t i, j;
    for (i = 0; i < b->nconns; i++) {
        kvx__boot_conn *c = b->conns[i];
        if (c->dropped) continue;
        if (c->kind == KVX__BOOT_K_HTTP_LISTEN || c->kind == KVX__BOOT_K_CTRL_LISTEN) {
            if (c->deadline_ns && now >= c->deadline_ns) c->deadline_ns = 0; /* accept pause over */
            continue;
        }
        if (KVX__LOAD(&c->want_close)) {
            const char *why;
            pthread_mutex_lock(&c->mu);
            why = c->close_why ? c->close_why : "the connection broke while sending";
            pthread_mutex_unlock(&c->mu);
            kvx__boot_drop(b, c, why);
            continue;
        }
        if (c->deadline_ns && now >= c->deadline_ns) {
            if (c->kind == KVX__BOOT_K_HTTP && c->http_state == KVX__BOOT_H_READING && c->in_len) {
                static const char slow[] = "HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n"
                                           "Connection: close\r\n\r\n";
                ssize_t w = send(c->fd, slow, sizeof slow - 1, MSG_NOSIGNAL | MSG_DONTWAIT);
                (void)w;
            }
            kvx__boot_drop(b, c, c->kind != KVX__BOOT_K_CTRL ? "request deadline passed"
                                 : c->auth_wait ? "no authentication within the read timeout"
                                                : "no hello within the read timeout");
        }
    }
    for (i = j = 0; i < b->nconns; i++) {
        if (b->conns[i]->dropped) kvx__boot_conn_unref(b->conns[i]);
        else b->conns[j++] = b->conns[i];
    }
    b->nconns = j;
    if (b->role == KVX_ROLE_PREFILL && now >= b->next_sweep_ns) {
        kvx__boot_sweep(b);
        b->next_sweep_ns = now + 500000000ull;
    }
}

static void kvx__boot_adopt(kvx_boot *b) {
    size_t i;
    pthread_mutex_lock(&b->mu);
    for (i = 0; i < b->nincoming; i++) {
        if (kvx__boot_io_add(b, b->incoming[i])) {
            KVX__STORE(&b->incoming[i]->want_close, 1);
            kvx__boot_conn_shut(b->incoming[i]);
            kvx__boot_conn_unref(b->incoming[i]);
            continue;
        }
        KVX__ADD(&b->nctrl, 1);
    }
    b->nincoming = 0;
    pthread_mutex_unlock(&b->mu);
}

static void *kvx__boot_io_main(void *arg) {
    kvx_boot *b = (kvx_boot *)arg;
    struct pollfd *pf = NULL;
    size_t pcap = 0, i;
    while (!KVX__LOAD(&b->stop)) {
        size_t n;
        int timeout = 250, rc;
        uint64_t now = kvx_now_ns();
        kvx__boot_adopt(b);
        n = b->nconns;
        if (pcap < n + 1) {
            size_t nc = (n + 1) * 2;
            struct pollfd *np = (struct pollfd *)kvx__boot_grow(b, pf, 0, nc * sizeof *np);
            if (!np) { poll(NULL, 0, 10); continue; }
            pf = np;
            pcap = nc;
        }
        pf[0].fd = b->wake_rd;
        pf[0].events = POLLIN;
        pf[0].revents = 0;
        for (i = 0; i < n; i++) {
            kvx__boot_conn *c = b->conns[i];
            short ev = POLLIN;
            if (c->kind == KVX__BOOT_K_HTTP_LISTEN || c->kind == KVX__BOOT_K_CTRL_LISTEN) {
                if (c->deadline_ns > now) ev = 0;
            } else if (c->kind == KVX__BOOT_K_HTTP && c->http_state == KVX__BOOT_H_WRITING) {
                ev = POLLOUT;
            }
            if (KVX__LOAD(&c->want_write)) ev |= POLLOUT;
            if (c->deadline_ns) {
                uint64_t ms = c->deadline_ns > now ? (c->deadline_ns - now) / 1000000u + 1 : 0;
                if ((int)ms < timeout) timeout = (int)ms;
            }
            pf[i + 1].fd = c->fd;
            pf[i + 1].events = ev;
            pf[i + 1].revents = 0;
        }
        rc = poll(pf, n + 1, timeout);
        if (rc > 0 && pf[0].revents) {
            KVX__STORE(&b->wake_pending, 0);
            kvx__drain(b->wake_rd);
        }
        for (i = 0; rc > 0 && i < n; i++)
            if (pf[i + 1].revents) kvx__boot_io_event(b, b->conns[i], pf[i + 1].revents);
        kvx__boot_housekeeping(b);
    }
    kvx__boot_adopt(b);
    kvx__boot_conns_close(b->conns, b->nconns);
    b->nconns = 0;
    kvx_engine_free(b->engine, pf);
    return NULL;
}

/* >>boot: decode client: resolving a prefill ------------------------------------------- */

/* GET target from the peer's bootstrap server with retries while it
   refuses connections, times out or answers 503. */
static kvx_result kvx__boot_get(kvx_boot *b, const kvx__boot_pf *p, const char *target,
                                kvx__buf *out, int *kvx_hb, char *why, size_t wl) {
    int attempt, status = 0, refused = 0, last_503 = 0;
    char err[256] = "";
    kvx__buf body;
    kvx__buf_init(out, kvx__boot_al(b));
    for (attempt = 0; attempt < KVX_BOOT_TRIES; attempt++) {
        kvx_result r;
        if (attempt && kvx__boot_backoff(b, attempt - 1))
            return kvx__why(KVX_ERR_ABORTED, why, wl, "the engine is shutting down");
        kvx__buf_init(&body, kvx__boot_al(b));
        r = kvx__boot_http_call(p->host, p->port, "GET", target, NULL, NULL, 0, KVX__BOOT_HTTP_TIMEOUT_S,
                                &status, &body, err, sizeof err, &refused, kvx_hb);
        if (r == KVX_OK && status == 200) {
            *out = body;
            return KVX_OK;
        }
        if (r == KVX_OK) {
            size_t n = body.len;
            while (n && (body.data[n - 1] == '\n' || body.data[n - 1] == '\r')) n--;
            snprintf(err, sizeof err, "%.*s", (int)(n > 200 ? 200 : n), body.data ? body.data : "");
        }
        kvx__buf_free(&body);
        if (r == KVX_OK && status != 503) {
            kvx__set_why(why, wl, "bootstrap server %s:%d answered %d to GET %s: %s", p->host,
                         p->port, status, target, err);
            return status == 404 ? KVX_ERR_NOT_FOUND : KVX_ERR_PEER;
        }
        last_503 = r == KVX_OK;
    }
    if (last_503)
        return kvx__why(KVX_ERR_PEER, why, wl, "bootstrap server %s:%d still answers 503 after "
                             "%d tries: %s (not every prefill rank has registered with it)",
                             p->host, p->port, KVX_BOOT_TRIES, err);
    if (refused)
        return kvx__why(KVX_ERR_PEER, why, wl, "cannot reach bootstrap server %s:%d: connection "
                             "refused (is the prefill running, and is KVX_BOOTSTRAP_PORT its "
                             "bootstrap port?)", p->host, p->port);
    return kvx__why(KVX_ERR_PEER, why, wl, "cannot reach bootstrap server %s:%d: %s (after %d "
                         "tries)", p->host, p->port, err, KVX_BOOT_TRIES);
}

/* Decode side of authentication, after the prefill's hello: both sides
   keyed, its proof over our nonce right, and our proof over its nonce sent
   (the auth frame, before any room frame). 0 ok, else why says which. */
static int kvx__boot_check_auth(kvx_boot *b, const kvx_boot_hello *h, const uint8_t *nonce,
                                const char *ip, int port, const char *boot_addr, int fd,
                                uint64_t deadline, char *why, size_t wl) {
    uint8_t want[KVX_BOOT_PROOF], frame[KVX__BOOT_HDR + KVX_BOOT_PROOF];
    int keyed = (h->flags & KVX_BOOT_HELLO_AUTH) != 0;
    if (!b->key && !keyed) return 0;
    if (!b->key) {
        kvx__set_why(why, wl, "prefill rank %s:%d (bootstrap %s) requires authentication: set the "
                     "same KVX_AUTH_KEY (or KVX_AUTH_KEY_FILE) on this decode engine", ip, port,
                     boot_addr);
        return -1;
    }
    if (!keyed) {
        kvx__set_why(why, wl, "prefill rank %s:%d (bootstrap %s) does not authenticate (it has no "
                     "KVX_AUTH_KEY) and this decode engine has a key: refusing it", ip, port,
                     boot_addr);
        return -1;
    }
    kvx__auth_proof(b->key, b->key_len, "kvx-boot-server", nonce, h->nonce, want);
    if (!kvx__equal_ct(want, h->proof, KVX_BOOT_PROOF)) {
        kvx__set_why(why, wl, "authentication with prefill rank %s:%d (bootstrap %s) failed: its "
                     "proof does not match this engine's key (KVX_AUTH_KEY differs)", ip, port,
                     boot_addr);
        return -1;
    }
    kvx__boot_hdr(frame, KVX_BOOT_PROOF, KVX_BOOT_FRAME_AUTH);
    kvx__auth_proof(b->key, b->key_len, "kvx-boot-client", h->nonce, nonce, frame + KVX__BOOT_HDR);
    if (kvx__send_all(fd, frame, sizeof frame, deadline)) {
        kvx__set_why(why, wl, "cannot send the authentication frame to prefill rank %s:%d: %s", ip,
                     port, kvx__errstr(errno));
        return -1;
    }
    return 0;
}

/* Connects to one prefill rank and exchanges hellos (resolver thread). */
static kvx_result kvx__boot_ctrl_connect(kvx_boot *b, kvx__boot_pf *p, const char *ip, int port,
                                         kvx__boot_conn **out, char *why, size_t wl) {
    int attempt, e = 0;
    char err[300] = "";
    uint8_t nonce[KVX_BOOT_NONCE];
    const char *tn = kvx_engine_transport(b->engine);
    *out = NULL;
    for (attempt = 0; attempt < KVX_BOOT_TRIES; attempt++) {
        uint64_t deadline;
        int fd, bad;
        kvx__buf in, kh;
        kvx_boot_frame f;
        size_t used = 0;
        char ferr[200], diff[KVX_ERROR_MAX];
        kvx_result dr = KVX_OK, res = KVX_OK;
        kvx__boot_conn *c = NULL;
        if (attempt && kvx__boot_backoff(b, attempt - 1))
            return kvx__why(KVX_ERR_ABORTED, why, wl, "the engine is shutting down");
        deadline = kvx_now_ns() + (uint64_t)(KVX__BOOT_HTTP_TIMEOUT_S * 1e9);
        fd = kvx__connect(ip, port, deadline, NULL, NULL, &e);
        if (fd < 0) { snprintf(err, sizeof err, "%s", kvx__errstr(e)); continue; }
        kvx__buf_init(&kh, kvx__boot_al(b));
        if (b->key && (kvx__random_bytes(nonce, sizeof nonce) != KVX_OK || /* the challenge */
                       kvx__boot_make_hello(b, &kh, nonce, NULL) != KVX_OK)) {
            kvx__buf_free(&kh);
            close(fd);
            kvx__set_why(why, wl, "cannot build an authenticated hello (no random bytes?)");
            return KVX_ERR_IO;
        }
        bad = b->key ? kvx__send_all(fd, kh.data, kh.len, deadline)
                     : kvx__send_all(fd, b->hello.data, b->hello.len, deadline);
        kvx__buf_free(&kh);
        if (bad) {
            snprintf(err, sizeof err, "cannot send hello: %s", kvx__errstr(errno));
            close(fd);
            continue;
        }
        kvx__buf_init(&in, kvx__boot_al(b));
        for (;;) { /* read the prefill's hello */
            char tmp[4096];
            ssize_t r;
            dr = kvx_boot_frame_decode(in.data, in.len, &f, &used, ferr, sizeof ferr);
            if (dr != KVX_OK || used) break;
            r = kvx__boot_recv_some(fd, tmp, sizeof tmp, deadline);
            if (r <= 0) {
                snprintf(err, sizeof err, "no hello: %s", r == 0 ? "the connection closed" : kvx__errstr(errno));
                break;
            }
            kvx__buf_put(&in, tmp, (size_t)r);
            if (in.oom) { snprintf(err, sizeof err, "out of memory"); break; }
        }
        if (dr == KVX_OK && !used) {
            if (b->key)
                snprintf(err + strlen(err), sizeof err - strlen(err),
                         " (a prefill of a kvx version without authentication closes keyed hellos)");
            kvx__buf_free(&in);
            close(fd);
            continue;
        }
        if (dr != KVX_OK) {
            kvx__set_why(why, wl, "prefill rank %s:%d (bootstrap %s) sent a bad hello: %s", ip,
                         port, p->addr, ferr);
            res = KVX_ERR_PROTOCOL;
        } else if (f.type != KVX_BOOT_FRAME_HELLO || f.hello.role != KVX_ROLE_PREFILL) {
            kvx__set_why(why, wl, "prefill rank %s:%d (bootstrap %s) answered with a %s frame, not "
                         "a prefill hello", ip, port, p->addr, kvx__boot_type_name(f.type));
            res = KVX_ERR_PROTOCOL;
        } else if (kvx__boot_check_auth(b, &f.hello, nonce, ip, port, p->addr, fd, deadline, why, wl)) {
            res = KVX_ERR_PERMISSION;
        } else if (f.hello.transport_len != strlen(tn) ||
                   memcmp(f.hello.transport, tn, f.hello.transport_len)) {
            kvx__set_why(why, wl, "prefill rank %s:%d (bootstrap %s) uses transport '%.*s', this "
                         "decode engine '%s'", ip, port, p->addr, (int)f.hello.transport_len,
                         f.hello.transport, tn);
            res = KVX_ERR_LAYOUT_MISMATCH;
        } else if (!(c = kvx__boot_conn_new(b, KVX__BOOT_K_CTRL, fd)) ||
                   kvx__boot_conn_set_info(c, &f.hello)) {
            kvx__set_why(why, wl, "out of memory");
            res = KVX_ERR_NO_MEMORY;
        } else if (kvx__boot_combine(&c->shape.l, f.hello.tp_size, f.hello.tp_rank,
                                     kvx_engine_layout(b->engine), b->tp_size, diff,
                                     sizeof diff) != KVX_OK) {
            kvx__set_why(why, wl, "KV layout of prefill rank %s:%d (bootstrap %s, tp rank %d of "
                         "%d, pp rank %d of %d) does not combine with this decode engine's: %s",
                         ip, port, p->addr, f.hello.tp_rank, f.hello.tp_size, f.hello.pp_rank,
                         f.hello.pp_size, diff);
            res = KVX_ERR_LAYOUT_MISMATCH;
        }
        if (res != KVX_OK) {
            if (c) kvx__boot_conn_unref(c); /* closes fd */
            else close(fd);
            kvx__buf_free(&in);
            return res;
        }
        snprintf(c->addr, sizeof c->addr, "%s%s%s:%d", strchr(ip, ':') ? "[" : "", ip,
                 strchr(ip, ':') ? "]" : "", port);
        c->hello_done = 1;
        c->peer = p;
        c->info.bootstrap = p->addr;
        /* nothing else is expected yet, but keep it */
        if (in.len > used && !kvx__boot_buf_grow(c, &c->in, 0, &c->in_cap, in.len - used)) {
            memcpy(c->in, in.data + used, in.len - used);
            c->in_len = in.len - used;
        }
        kvx__buf_free(&in);
        *out = c;
        return KVX_OK;
    }
    return kvx__why(KVX_ERR_PEER, why, wl, "cannot connect to prefill rank %s:%d (registered "
                         "with bootstrap server %s:%d): %s (after %d tries)", ip, port, p->host,
                         p->port, err, KVX_BOOT_TRIES);
}

static void kvx__boot_res_free(kvx_boot *b, kvx__boot_res *rs) {
    kvx__boot_conns_close(rs->conns, rs->nconns);
    kvx_engine_free(b->engine, rs->conns);
    memset(rs, 0, sizeof *rs);
}

/* Server info as the decode side reads it (pure; fuzzed); a: the parse's
   allocator. 0 ok, -1 bad. */
static int kvx__boot_info_parse(const kvx_allocator *a, const char *text, size_t len, int *tp, int *cp, int *dp, int *pp,
                                int *page_size, char *dtype, size_t dl, int *ctrl_ping,
                                int *follow) {
    kvx__json_doc d;
    const kvx__json *root, *fv;
    char hb[16] = "";
    int ok;
    *tp = *cp = *dp = *pp = 1;
    *ctrl_ping = 0;
    *follow = 1;
    *page_size = 0;
    dtype[0] = 0;
    if (kvx__json_parse(&d, a, text ? text : "", len, 256) != KVX_OK) {
        kvx__json_free(&d);
        return -1;
    }
    root = kvx__json_root(&d);
    ok = root && root->type == KVX_JSON_OBJECT &&
         kvx__boot_jint(&d, root, "attn_tp_size", 1, 1024, tp) == 1 &&
         kvx__boot_jint(&d, root, "attn_cp_size", 1, 1024, cp) >= 0 &&
         kvx__boot_jint(&d, root, "dp_size", 1, 1024, dp) >= 0 &&
         kvx__boot_jint(&d, root, "pp_size", 1, 1024, pp) >= 0 &&
         kvx__boot_jint(&d, root, "page_size", 1, 1 << 24, page_size) == 1 &&
         kvx__boot_jstr(&d, root, "kv_cache_dtype", dtype, dl) >= 0;
    if (ok && kvx__boot_jstr(&d, root, "kvx_heartbeat", hb, sizeof hb) == 1 && !strcmp(hb, "control"))
        *ctrl_ping = 1;
    /* absent (an older server): follow, as SGLang's default */
    if (ok && (fv = kvx__json_get(&d, root, "follow_bootstrap_room")) != NULL &&
        fv->type != KVX_JSON_NULL) {
        if (fv->type == KVX_JSON_BOOL) *follow = fv->i64 != 0;
        else ok = 0;
    }
    kvx__json_free(&d);
    return ok ? 0 : -1;
}

/* A rank answer {"rank_ip": ..., "rank_port": ...} (pure; fuzzed). */
static int kvx__boot_rank_parse(const kvx_allocator *a, const char *text, size_t len, char *ip,
                                size_t il, int *port) {
    kvx__json_doc d;
    const kvx__json *root;
    int ok;
    if (kvx__json_parse(&d, a, text ? text : "", len, 64) != KVX_OK) {
        kvx__json_free(&d);
        return -1;
    }
    root = kvx__json_root(&d);
    ok = root && root->type == KVX_JSON_OBJECT && kvx__boot_jstr(&d, root, "rank_ip", ip, il) == 1 &&
         ip[0] && kvx__boot_jint(&d, root, "rank_port", 1, 65535, port) == 1;
    kvx__json_free(&d);
    return ok ? 0 : -1;
}

static kvx_result kvx__boot_resolve(kvx_boot *b, kvx__boot_pf *p, kvx__boot_res *rs, char *why,
                                    size_t wl) {
    const kvx_layout *l = kvx_engine_layout(b->engine);
    kvx__buf body;
    char dtype[64] = "", target[192];
    int page_size = 0, first, count, dpi, cpi, t, ppi, pp_first, pp_count, bad, hb = 0;
    uint64_t total;
    kvx_result r;
    memset(rs, 0, sizeof *rs);
    r = kvx__boot_get(b, p, "/route?prefill_dp_rank=-1&prefill_cp_rank=-1&target_tp_rank=-1&"
                            "target_pp_rank=-1", &body, &hb, why, wl);
    if (r != KVX_OK) return r;
    bad = kvx__boot_info_parse(body.allocator, body.data, body.len, &rs->tp, &rs->cp, &rs->dp, &rs->pp, &page_size,
                               dtype, sizeof dtype, &rs->ctrl_ping, &rs->follow);
    rs->ctrl_ping |= hb;
    kvx__buf_free(&body);
    if (bad)
        return kvx__why(KVX_ERR_PROTOCOL, why, wl, "bootstrap server %s:%d sent server info "
                             "without valid attn_tp_size, page_size, dp_size, pp_size, "
                             "attn_cp_size or kv_cache_dtype", p->host, p->port);
    if ((uint32_t)page_size != l->page_size)
        return kvx__why(KVX_ERR_LAYOUT_MISMATCH, why, wl, "page size mismatch: prefill at "
                             "%s:%d has page_size %d, this decode engine %u (both sides must use "
                             "the same page size)", p->host, p->port, page_size, l->page_size);
    if (dtype[0] && strcmp(dtype, "auto") && l->dtype && l->dtype[0] && strcmp(dtype, l->dtype))
        return kvx__why(KVX_ERR_LAYOUT_MISMATCH, why, wl, "KV cache dtype mismatch: prefill "
                             "at %s:%d has kv_cache_dtype '%s', this decode engine '%s'", p->host,
                             p->port, dtype, l->dtype);
    rs->peer_count = 1; /* peer_index 0 */
    if (rs->tp == b->tp_size) {
        first = b->tp_rank; count = 1;
    } else if (rs->tp > b->tp_size && rs->tp % b->tp_size == 0) {
        count = rs->tp / b->tp_size; first = b->tp_rank * count;
    } else if (rs->tp < b->tp_size && b->tp_size % rs->tp == 0) {
        int ratio = b->tp_size / rs->tp;
        first = b->tp_rank / ratio; count = 1;
        rs->peer_index = (uint16_t)(b->tp_rank % ratio); rs->peer_count = (uint16_t)ratio;
    } else {
        return kvx__why(KVX_ERR_LAYOUT_MISMATCH, why, wl, "prefill at %s:%d has attn_tp_size "
                             "%d and this decode engine tp_size %d: one must divide the other",
                             p->host, p->port, rs->tp, b->tp_size);
    }
    if (b->cp_size != 1)
        return kvx__why(KVX_ERR_LAYOUT_MISMATCH, why, wl, "this decode engine has cp_size %d: decode "
                        "context parallelism must be 1 (SGLang's rule; prefill at %s:%d)",
                        b->cp_size, p->host, p->port);
    if (rs->cp != 1)
        return kvx__why(KVX_ERR_LAYOUT_MISMATCH, why, wl, "prefill at %s:%d has attn_cp_size %d: "
                        "prefill context parallelism is not supported yet (SGLang moves CP rank "
                        "0's pages and makes the other CP ranks dummies; kvx's transports have "
                        "no CP dummy, so each byte would come attn_cp_size times)", p->host,
                        p->port, rs->cp);
    if (b->pp_size == rs->pp) {
        pp_first = b->pp_rank; pp_count = 1;  /* pp rank to pp rank */
    } else if (b->pp_size == 1) {
        pp_first = 0; pp_count = rs->pp;      /* every prefill pp rank's layers */
    } else {
        return kvx__why(KVX_ERR_LAYOUT_MISMATCH, why, wl, "prefill at %s:%d has pp_size %d and this "
                        "decode engine pp_size %d: decode PP must equal prefill PP or be 1",
                        p->host, p->port, rs->pp, b->pp_size);
    }
    rs->per_dp = (uint32_t)(rs->cp * count * pp_count);
    total = (uint64_t)rs->dp * rs->per_dp;
    if (total > KVX_BOOT_MAX_RANKS)
        return kvx__why(KVX_ERR_OUT_OF_RANGE, why, wl, "prefill at %s:%d needs %llu control "
                             "connections (KVX_BOOT_MAX_RANKS %d)", p->host, p->port,
                             (unsigned long long)total, KVX_BOOT_MAX_RANKS);
    rs->conns = (kvx__boot_conn **)kvx__boot_zalloc(b, (size_t)total * sizeof *rs->conns);
    if (!rs->conns) { kvx__set_why(why, wl, "out of memory"); return KVX_ERR_NO_MEMORY; }
    for (dpi = 0; dpi < rs->dp; dpi++)
        for (cpi = 0; cpi < rs->cp; cpi++)
            for (t = first; t < first + count; t++)
                for (ppi = pp_first; ppi < pp_first + pp_count; ppi++) {
                    char ip[64];
                    int port = 0;
                    snprintf(target, sizeof target,
                             "/route?prefill_dp_rank=%d&prefill_cp_rank=%d&target_tp_rank=%d&"
                             "target_pp_rank=%d", dpi, cpi, t, ppi);
                    r = kvx__boot_get(b, p, target, &body, NULL, why, wl);
                    bad = r == KVX_OK && kvx__boot_rank_parse(body.allocator, body.data, body.len, ip, sizeof ip, &port);
                    kvx__buf_free(&body);
                    if (bad) {
                        kvx__set_why(why, wl, "bootstrap server %s:%d answered GET %s without "
                                     "rank_ip and rank_port", p->host, p->port, target);
                        r = KVX_ERR_PROTOCOL;
                    }
                    if (r == KVX_OK)
                        r = kvx__boot_ctrl_connect(b, p, ip, port, &rs->conns[rs->nconns], why, wl);
                    if (r != KVX_OK) { kvx__boot_res_free(b, rs); return r; }
                    rs->nconns++;
                }
    return KVX_OK;
}

/* Under boot->mu: points a decode room at its target connections in
   prefill dp rank dp. 0, -1 out of memory, or 2 when one of them is lost
   (its sentence in c->lost; the caller fails the room with it). */
static int kvx__boot_assign_dp(kvx__boot_br *br, kvx__boot_pf *p, uint32_t dp) {
    uint32_t k;
    for (k = 0; k < p->r.per_dp; k++) {
        kvx__boot_conn *c = p->r.conns[dp * p->r.per_dp + k];
        if (!c->gone) continue;
        if (!br->lost) { KVX__ADD(&c->refs, 1); br->lost = c; }
        br->waiting = 0;
        br->dpq = 0;
        return 2;
    }
    for (k = 0; k < p->r.per_dp; k++)
        if (kvx__boot_br_add_conn(br, p->r.conns[dp * p->r.per_dp + k], 0)) return -1;
    br->gen = p->gen;
    br->peer_index = p->r.peer_index;
    br->peer_count = p->r.peer_count;
    br->waiting = 0;
    br->dpq = 0;
    return 0;
}

/* Under boot->mu: the room's prefill dp rank (DP ATTENTION): 0 assigned,
   1 it must be asked for (br->dpq; kvx__boot_dpq_job), -1 out of memory. */
static int kvx__boot_assign(kvx__boot_br *br, kvx__boot_pf *p) {
    if (p->r.dp > 1 && !p->r.follow) {
        br->dpq = 1;
        br->waiting = 0;
        br->gen = p->gen;
        return 1;
    }
    return kvx__boot_assign_dp(br, p, (uint32_t)(br->id % (uint64_t)p->r.dp));
}

/* Fails each room of v that kvx__boot_assign_dp found needing a lost
   rank, with that rank's sentence; releases v. Not under boot->mu. */
static void kvx__boot_fail_lost(kvx_boot *b, kvx__boot_pf *p, kvx__boot_vec *v) {
    size_t i;
    for (i = 0; i < v->n; i++) {
        kvx__boot_br *br = v->v[i];
        kvx__boot_conn *c = br->lost;
        char msg[KVX_ERROR_MAX];
        pthread_mutex_lock(&b->mu);
        if (c && c->lost[0]) snprintf(msg, sizeof msg, "%s", c->lost);
        else if (c) kvx__boot_lost_sentence(p, c, "the connection was dropped", msg, sizeof msg);
        else snprintf(msg, sizeof msg, "lost connection with prefill instance %s", p->addr);
        br->lost = NULL;
        pthread_mutex_unlock(&b->mu);
        kvx_room_fail(br->room, KVX_ERR_PEER_LOST, "%s", msg);
        if (c) kvx__boot_conn_unref(c);
    }
    kvx__boot_vec_release(v);
}

/* Asks p's bootstrap server which dp rank serves each room that waits for
   one (POST /query_dp_ranks, up to 256 rooms a call), as SGLang's decode
   does while the prefill has not registered the room yet: again after 200,
   400, then every 800 ms, until the room's KVX_BOOTSTRAP_TIMEOUT. Runs on
   a worker, one per prefill instance at a time (p->dpq_busy). */
static void kvx__boot_dpq_job(void *arg) {
    kvx__boot_pf *p = (kvx__boot_pf *)arg;
    kvx_boot *b = p->boot;
    uint64_t limit = (uint64_t)(kvx_engine_settings(b->engine)->bootstrap_timeout_s * 1e9);
    int attempt = 0;
    for (;;) {
        uint64_t ids[256], now;
        size_t n = 0, i;
        int status = 0, refused = 0, dp = 0;
        char err[200] = "";
        kvx__buf req, resp;
        kvx__boot_vec ready, fail, late, gone;
        kvx__json_doc d;
        const kvx__json *root = NULL;
        kvx_result r;
        memset(&ready, 0, sizeof ready);
        memset(&fail, 0, sizeof fail);
        memset(&late, 0, sizeof late);
        memset(&gone, 0, sizeof gone);
        pthread_mutex_lock(&b->mu);
        for (i = 0; i < b->rooms.nb; i++) {
            kvx__boot_br *br;
            for (br = kvx__boot_at(b->rooms.b[i]); br; br = kvx__boot_at(br->hn.hnext))
                if (br->room && br->peer == p && br->dpq && n < 256) ids[n++] = br->id;
        }
        if (!n || KVX__LOAD(&b->stop) || p->state != KVX__BOOT_PF_READY) {
            p->dpq_busy = 0; /* rooms left behind fail with the prefill (or at destroy) */
            pthread_mutex_unlock(&b->mu);
            return;
        }
        pthread_mutex_unlock(&b->mu);
        kvx__buf_init(&req, kvx__boot_al(b));
        kvx__buf_init(&resp, kvx__boot_al(b));
        kvx__buf_printf(&req, "{\"bootstrap_rooms\":[");
        for (i = 0; i < n; i++) kvx__buf_printf(&req, "%s%llu", i ? "," : "", (unsigned long long)ids[i]);
        kvx__buf_printf(&req, "]}");
        r = req.oom ? KVX_ERR_NO_MEMORY
                    : kvx__boot_http_call(p->host, p->port, "POST", "/query_dp_ranks", NULL, req.data,
                                          req.len, KVX__BOOT_HTTP_TIMEOUT_S, &status, &resp, err,
                                          sizeof err, &refused, NULL);
        kvx__buf_free(&req);
        memset(&d, 0, sizeof d);
        if (r == KVX_OK && status == 200 &&
            kvx__json_parse(&d, kvx__boot_al(b), resp.data ? resp.data : "", resp.len, 600) == KVX_OK)
            root = kvx__json_root(&d);
        else if (r == KVX_OK)
            snprintf(err, sizeof err, "answered %d", status);
        now = kvx_now_ns();
        pthread_mutex_lock(&b->mu);
        dp = p->r.dp;
        for (i = 0; i < n; i++) {
            kvx__boot_br *br = kvx__boot_find(b, ids[i]);
            const kvx__json *v = NULL;
            char key[24];
            int x = -1;
            if (!br || !br->room || br->peer != p || !br->dpq) continue;
            snprintf(key, sizeof key, "%llu", (unsigned long long)ids[i]);
            if (root && root->type == KVX_JSON_OBJECT && (v = kvx__json_get(&d, root, key)) != NULL &&
                kvx__boot_jint(&d, root, key, 0, 1023, &x) == 1 && x < dp) {
                int a = kvx__boot_assign_dp(br, p, (uint32_t)x);
                if (a == 0) kvx__boot_vec_push(&ready, br);
                else if (a == 2) kvx__boot_vec_push(&gone, br);
                else { br->dpq = 0; kvx__boot_vec_push(&fail, br); }
            } else if (v) {
                br->dpq = 0;
                kvx__boot_vec_push(&late, br); /* an answer that is not a dp rank of it */
            } else if (now - br->created_ns > limit) {
                br->dpq = 0;
                kvx__boot_vec_push(&late, br);
            }
        }
        pthread_mutex_unlock(&b->mu);
        kvx__json_free(&d);
        kvx__buf_free(&resp);
        for (i = 0; i < ready.n; i++) kvx_room_advance(ready.v[i]->room, KVX_POLL_WAITING_FOR_INPUT);
        kvx__boot_vec_release(&ready);
        kvx__boot_fail_all(&fail, KVX_ERR_NO_MEMORY, "out of memory assigning the room to %s", p->addr);
        kvx__boot_fail_lost(b, p, &gone);
        kvx__boot_fail_all(&late, KVX_ERR_TIMEOUT, "prefill %s (dp size %d, load balancing not "
                           "follow_bootstrap_room) named no dp rank below %d for this room in "
                           "POST /query_dp_ranks within KVX_BOOTSTRAP_TIMEOUT (%.0f s): the prefill "
                           "rank that runs it must register it (POST /register_dp_rank)%s%s", p->addr,
                           dp, dp, (double)limit / 1e9, err[0] ? "; last answer: " : "", err);
        if (kvx__boot_backoff(b, attempt < 2 ? attempt : 2)) {
            pthread_mutex_lock(&b->mu);
            p->dpq_busy = 0;
            pthread_mutex_unlock(&b->mu);
            return;
        }
        attempt++;
    }
}

/* Starts p's dp query job unless it runs (a room that joins later is
   picked up by the running one). */
static void kvx__boot_dpq_start(kvx_boot *b, kvx__boot_pf *p) {
    int submit;
    pthread_mutex_lock(&b->mu);
    submit = !p->dpq_busy;
    p->dpq_busy = 1;
    pthread_mutex_unlock(&b->mu);
    if (submit && kvx__workq_submit(b->wq, kvx__boot_dpq_job, p) != KVX_OK) {
        pthread_mutex_lock(&b->mu);
        p->dpq_busy = 0;
        pthread_mutex_unlock(&b->mu);
        kvx_engine_log(b->engine, KVX_LOG_ERROR, "kvx.boot", 0, "out of memory queueing the dp "
                       "rank query for %s: its rooms will time out", p->addr);
    }
}

static void kvx__boot_resolve_job(void *arg) {
    kvx__boot_pf *p = (kvx__boot_pf *)arg;
    kvx_boot *b = p->boot;
    char why[KVX_ERROR_MAX] = "";
    kvx__boot_res rs;
    kvx__boot_vec ready, fail, gone;
    kvx__boot_conn **old = NULL;
    uint32_t nold = 0, k;
    kvx_result res;
    size_t i;
    int dpq = 0;
    memset(&ready, 0, sizeof ready);
    memset(&fail, 0, sizeof fail);
    memset(&gone, 0, sizeof gone);
    memset(&rs, 0, sizeof rs);
    res = KVX__LOAD(&b->stop) ? KVX_ERR_ABORTED : kvx__boot_resolve(b, p, &rs, why, sizeof why);
    pthread_mutex_lock(&b->mu);
    if (KVX__LOAD(&b->stop) && (res == KVX_OK || !why[0])) {
        res = KVX_ERR_ABORTED;
        snprintf(why, sizeof why, "the engine is shutting down");
    }
    if (res == KVX_OK) {
        old = p->r.conns;
        nold = p->r.nconns;
        p->gen++;
        p->r = rs;
        p->ping_sent_ns = 0;
        p->state = KVX__BOOT_PF_READY;
        p->hb_failures = 0;
        p->next_hb_ns = kvx_now_ns() + (uint64_t)(b->hb_interval * 1e9);
        for (k = 0; k < p->r.nconns; k++) {
            kvx__boot_conn *c = p->r.conns[k];
            c->gen = p->gen;
            if (kvx__boot_reserve(b, &b->incoming, b->nincoming, &b->cincoming,
                                  sizeof *b->incoming)) {
                KVX__STORE(&c->want_close, 1);
                continue;
            }
            KVX__ADD(&c->refs, 1);
            b->incoming[b->nincoming++] = c;
            kvx__boot_live_locked(b, c, 1);
        }
        rs.conns = NULL;
        rs.nconns = 0;
    } else {
        p->state = KVX__BOOT_PF_DEAD;
    }
    for (i = 0; i < b->rooms.nb; i++) {
        kvx__boot_br *br;
        for (br = kvx__boot_at(b->rooms.b[i]); br; br = kvx__boot_at(br->hn.hnext)) {
            int a;
            if (!br->room || br->peer != p || !br->waiting) continue;
            a = res == KVX_OK ? kvx__boot_assign(br, p) : -1;
            if (a == 0) kvx__boot_vec_push(&ready, br);
            else if (a == 1) dpq = 1;
            else if (a == 2) kvx__boot_vec_push(&gone, br);
            else { br->waiting = 0; kvx__boot_vec_push(&fail, br); }
        }
    }
    pthread_mutex_unlock(&b->mu);
    kvx__boot_wake(b);
    for (k = 0; k < nold; k++) {
        KVX__STORE(&old[k]->want_close, 1);
        kvx__boot_conn_unref(old[k]);
    }
    kvx_engine_free(b->engine, old);
    if (dpq) kvx__boot_dpq_start(b, p);
    if (res == KVX_OK) {
        kvx_engine_log(b->engine, KVX_LOG_INFO, "kvx.boot", 0,
                       "prefill %s: tp %d, cp %d, dp %d, pp %d; %u control connections up",
                       p->addr, p->r.tp, p->r.cp, p->r.dp, p->r.pp, p->r.nconns);
        if (b->hooks.on_connect) {
            kvx__boot_conn *stack[4];
            pthread_mutex_lock(&b->mu);
            nold = kvx__boot_conns_copy(b, p->r.conns, p->r.nconns, &old, stack);
            pthread_mutex_unlock(&b->mu);
            for (k = 0; k < nold; k++) b->hooks.on_connect(b, &old[k]->info);
            if (old) kvx__boot_conns_release(b, old, nold, stack);
        }
    } else {
        kvx_engine_log(b->engine, KVX_LOG_ERROR, "kvx.boot", 0, "%s", why);
    }
    for (i = 0; i < ready.n; i++) kvx_room_advance(ready.v[i]->room, KVX_POLL_WAITING_FOR_INPUT);
    kvx__boot_vec_release(&ready);
    kvx__boot_fail_lost(b, p, &gone);
    if (res == KVX_OK) /* resolved, but a room could not be pointed at its ranks */
        kvx__boot_fail_all(&fail, KVX_ERR_NO_MEMORY, "out of memory assigning the room to %s", p->addr);
    else
        kvx__boot_fail_all(&fail, res, "%s", why);
    kvx__boot_res_free(b, &rs);
}

/* >>boot: decode client: heartbeats --------------------------------------------------- */

/* Under boot->mu (released and taken again on failure): counts one
   heartbeat of prefill p, failing its unfinished rooms after
   KVX_HEARTBEAT_MAX_FAILURE misses in a row. */
static void kvx__boot_hb_result(kvx_boot *b, kvx__boot_pf *p, int ok, const char *err) {
    kvx__boot_vec fail;
    int nf;
    memset(&fail, 0, sizeof fail);
    p->next_hb_ns = kvx_now_ns() + (uint64_t)(b->hb_interval * 1e9);
    if (ok) { p->hb_failures = 0; return; }
    if (++p->hb_failures < b->hb_max_failure) {
        kvx_engine_log(b->engine, KVX_LOG_INFO, "kvx.boot", 0, "heartbeat %d of %d to prefill %s failed: %s",
                       p->hb_failures, b->hb_max_failure, p->addr, err);
        return;
    }
    nf = p->hb_failures;
    kvx__boot_peer_dead_locked(b, p, &fail);
    pthread_mutex_unlock(&b->mu);
    kvx_engine_log(b->engine, KVX_LOG_WARN, "kvx.boot", 0, "prefill %s failed %d heartbeats (%s); failing %zu rooms",
                   p->addr, nf, err, fail.n);
    kvx__boot_fail_all(&fail, KVX_ERR_PEER_LOST,
                       "lost connection with prefill instance %s: %d consecutive heartbeats failed "
                       "(last: %s)", p->addr, nf, err);
    pthread_mutex_lock(&b->mu);
}

/* Under boot->mu. A prefill whose server announced control heartbeats is
   pinged on its control connections (never blocks, needs no HTTP slot):
   a miss is a connection on which nothing arrived since the previous ping. */
static const char kvx__boot_hb_lost[] =
    "consecutive heartbeats failed (it answered none of KVX_HEARTBEAT_MAX_FAILURE pings in a row "
    "on its control connection)";

/* Each rank is judged alone: a rank that misses KVX_HEARTBEAT_MAX_FAILURE
   pings in a row has its connection closed, which fails the rooms that
   depend on that rank (kvx__boot_conn_lost names it); the instance goes
   when its last rank does. */
static void kvx__boot_hb_ping(kvx_boot *b, kvx__boot_pf *p) {
    uint8_t ping[KVX__BOOT_HDR + 8];
    uint32_t k;
    int closing = 0;
    uint64_t now = kvx_now_ns();
    for (k = 0; p->ping_sent_ns && k < p->r.nconns; k++) { /* a lost rank failed its rooms */
        kvx__boot_conn *c = p->r.conns[k];
        if (c->gone || KVX__LOAD(&c->want_close)) continue;
        if (KVX__LOAD(&c->last_rx_ns) >= p->ping_sent_ns) { c->hb_miss = 0; continue; }
        if (++c->hb_miss < b->hb_max_failure) {
            kvx_engine_log(b->engine, KVX_LOG_INFO, "kvx.boot", 0, "heartbeat %d of %d: prefill %s "
                           "rank %s did not answer a ping within %.1f s", c->hb_miss,
                           b->hb_max_failure, p->addr, c->addr, (double)(now - p->ping_sent_ns) / 1e9);
            continue;
        }
        pthread_mutex_lock(&c->mu);
        c->close_why = kvx__boot_hb_lost;
        pthread_mutex_unlock(&c->mu);
        KVX__STORE(&c->want_close, 1);
        closing = 1;
    }
    if (closing) kvx__boot_wake(b);
    p->ping_sent_ns = now;
    p->ping_seq++;
    kvx__boot_hdr(ping, 8, KVX_BOOT_FRAME_PING);
    kvx__le_w64(ping + KVX__BOOT_HDR, p->ping_seq);
    for (k = 0; k < p->r.nconns; k++) kvx__boot_conn_send(p->r.conns[k], ping, sizeof ping);
    kvx__boot_hb_result(b, p, 1, "");
}

static void *kvx__boot_hb_main(void *arg) {
    kvx_boot *b = (kvx_boot *)arg;
    double tmo = b->hb_interval < 0.1 ? 0.1 : b->hb_interval > 2 ? 2 : b->hb_interval;
    pthread_mutex_lock(&b->mu);
    while (!KVX__LOAD(&b->stop)) {
        uint64_t now = kvx_now_ns(), next = now + 1000000000ull;
        kvx__boot_pf *p, *due = NULL;
        struct timespec ts;
        for (p = b->peers; p; p = p->next) {
            if (p->state != KVX__BOOT_PF_READY) continue;
            if (p->next_hb_ns <= now) { due = p; break; }
            if (p->next_hb_ns < next) next = p->next_hb_ns;
        }
        if (due && due->r.ctrl_ping) {
            kvx__boot_hb_ping(b, due);
            continue;
        }
        if (due) { /* a prefill without control pings: GET /health, as SGLang does */
            uint64_t gen = due->gen;
            int status = 0, refused = 0, ok;
            char err[200] = "";
            kvx__buf body;
            kvx__buf_init(&body, kvx__boot_al(b));
            pthread_mutex_unlock(&b->mu);
            ok = kvx__boot_http_call(due->host, due->port, "GET", "/health", NULL, NULL, 0, tmo, &status,
                                     &body, err, sizeof err, &refused, NULL) == KVX_OK && status == 200;
            if (!ok && status) snprintf(err, sizeof err, "GET /health answered %d", status);
            kvx__buf_free(&body);
            pthread_mutex_lock(&b->mu);
            if (due->gen == gen && due->state == KVX__BOOT_PF_READY) kvx__boot_hb_result(b, due, ok, err);
            continue;
        }
        kvx__abstime(&ts, next > now ? next - now : 0);
        pthread_cond_timedwait(&b->cv, &b->mu, &ts);
    }
    pthread_mutex_unlock(&b->mu);
    return NULL;
}

/* >>boot: prefill ranks other than 0 register with rank 0's server ------------------- */

static void kvx__boot_register_job(void *arg) {
    kvx_boot *b = (kvx_boot *)arg;
    char host[256], err[200] = "", hdr[128];
    int attempt, status = 0, refused = 0;
    kvx__buf body, resp;
    kvx__buf_init(&body, kvx__boot_al(b));
    snprintf(host, sizeof host, "%s", b->srv_host);
    kvx__boot_reg_json(b, &body);
    for (attempt = 0; attempt < KVX_BOOT_TRIES * 2 && !body.oom; attempt++) {
        kvx_result r;
        if (attempt && kvx__boot_backoff(b, attempt - 1 > 3 ? 3 : attempt - 1)) break;
        kvx__buf_init(&resp, kvx__boot_al(b));
        if (b->key) kvx__boot_route_mac(b, body.data, body.len, (uint64_t)time(NULL), hdr, sizeof hdr);
        r = kvx__boot_http_call(host, b->srv_port, "PUT", "/route", b->key ? hdr : NULL, body.data, body.len,
                                KVX__BOOT_HTTP_TIMEOUT_S, &status, &resp, err, sizeof err, &refused, NULL);
        if (r == KVX_OK && status == 200) {
            kvx__buf_free(&resp);
            kvx__buf_free(&body);
            kvx_engine_log(b->engine, KVX_LOG_INFO, "kvx.boot", 0,
                           "registered rank dp %d cp %d tp %d pp %d (%s:%d) with bootstrap server %s:%d",
                           b->dp_rank, b->cp_rank, b->tp_rank, b->pp_rank, b->rank_ip, b->ctrl_port,
                           host, b->srv_port);
            return;
        }
        if (r == KVX_OK)
            snprintf(err, sizeof err, "answered %d: %.*s", status, (int)(resp.len > 150 ? 150 : resp.len),
                     resp.data ? resp.data : "");
        kvx__buf_free(&resp);
        if (r == KVX_OK && status != 503) break;
    }
    kvx__buf_free(&body);
    if (!KVX__LOAD(&b->stop))
        kvx_engine_log(b->engine, KVX_LOG_ERROR, "kvx.boot", 0,
                       "could not register rank dp %d cp %d tp %d pp %d with bootstrap server "
                       "%s:%d: %s; decode engines will get 503 from it", b->dp_rank, b->cp_rank,
                       b->tp_rank, b->pp_rank, host, b->srv_port, err);
}

/* A prefill sender's room pinned to this engine's dp rank at rank 0's
   bootstrap server (SGLang's _register_prefill_dp_rank). */
typedef struct kvx__boot_dpreg {
    kvx_boot *b;
    uint64_t room;
} kvx__boot_dpreg;

static void kvx__boot_dpreg_job(void *arg) {
    kvx__boot_dpreg *j = (kvx__boot_dpreg *)arg;
    kvx_boot *b = j->b;
    char host[256], err[200] = "", hdr[128], body[96];
    int attempt, status = 0, refused = 0;
    snprintf(host, sizeof host, "%s", b->srv_host);
    snprintf(body, sizeof body, "{\"bootstrap_room\":%llu,\"dp_rank\":%d}",
             (unsigned long long)j->room, b->dp_rank);
    for (attempt = 0; attempt < KVX_BOOT_TRIES; attempt++) {
        kvx__buf resp;
        kvx_result r;
        if (attempt && kvx__boot_backoff(b, attempt - 1)) break;
        kvx__buf_init(&resp, kvx__boot_al(b));
        if (b->key) kvx__boot_route_mac(b, body, strlen(body), (uint64_t)time(NULL), hdr, sizeof hdr);
        r = kvx__boot_http_call(host, b->srv_port, "POST", "/register_dp_rank", b->key ? hdr : NULL,
                                body, strlen(body), KVX__BOOT_HTTP_TIMEOUT_S, &status, &resp, err,
                                sizeof err, &refused, NULL);
        if (r == KVX_OK)
            snprintf(err, sizeof err, "answered %d: %.*s", status,
                     (int)(resp.len > 150 ? 150 : resp.len), resp.data ? resp.data : "");
        kvx__buf_free(&resp);
        if (r == KVX_OK && status == 200) { kvx_engine_free(b->engine, j); return; }
        if (r == KVX_OK && status != 503) break;
    }
    if (!KVX__LOAD(&b->stop))
        kvx_engine_log(b->engine, KVX_LOG_ERROR, "kvx.boot", j->room,
                       "could not register the room's dp rank %d with bootstrap server %s:%d "
                       "(POST /register_dp_rank): %s; its decode will not find it", b->dp_rank,
                       host, b->srv_port, err);
    kvx_engine_free(b->engine, j);
}

/* Prefill sender, dp_size > 1 (DP ATTENTION): follow_bootstrap_room wants
   room % dp_size == this dp rank; another method registers the room. 0 ok,
   else the room was failed with a sentence. */
static int kvx__boot_dp_open(kvx_boot *b, kvx_room *r) {
    uint64_t id = kvx_room_id(r), want = id % (uint64_t)b->dp_size;
    kvx__boot_dpreg *j;
    if (b->follow) {
        if (want == (uint64_t)b->dp_rank) return 0;
        kvx_room_fail(r, KVX_ERR_INVALID_ARGUMENT, "follow_bootstrap_room conflict: this prefill "
                      "is dp rank %d of %d but the room implies dp rank %llu (room %% dp_size); set "
                      "KVX_LOAD_BALANCE_METHOD to the router's method so decode asks "
                      "/query_dp_ranks", b->dp_rank, b->dp_size, (unsigned long long)want);
        return -1;
    }
    if (b->serves) {
        int bad;
        pthread_mutex_lock(&b->mu);
        bad = kvx__boot_dp_pin(b, id, b->dp_rank);
        pthread_mutex_unlock(&b->mu);
        if (!bad) return 0;
    } else if ((j = (kvx__boot_dpreg *)kvx__boot_zalloc(b, sizeof *j)) != NULL) {
        j->b = b;
        j->room = id;
        if (kvx__workq_submit(b->wq, kvx__boot_dpreg_job, j) == KVX_OK) return 0;
        kvx_engine_free(b->engine, j);
    }
    kvx_room_fail(r, KVX_ERR_NO_MEMORY, "out of memory registering the room's dp rank");
    return -1;
}

/* >>boot: room API ---------------------------------------------------------------------- */

static kvx__boot_pf *kvx__boot_peer_get(kvx_boot *b, const char *addr, char *why, size_t wl) {
    kvx__boot_pf *p;
    for (p = b->peers; p; p = p->next)
        if (!strcmp(p->addr, addr)) return p;
    if (b->npeers >= KVX__BOOT_MAX_PEERS) {
        kvx__set_why(why, wl, "this decode engine already talks to %d prefill instances",
                     KVX__BOOT_MAX_PEERS);
        return NULL;
    }
    if (strlen(addr) >= sizeof p->addr) {
        kvx__set_why(why, wl, "bootstrap address of %zu bytes is too long", strlen(addr));
        return NULL;
    }
    p = (kvx__boot_pf *)kvx__boot_zalloc(b, sizeof *p);
    if (!p) { kvx__set_why(why, wl, "out of memory"); return NULL; }
    p->boot = b;
    snprintf(p->addr, sizeof p->addr, "%s", addr);
    if (kvx__addr_split(addr, p->host, sizeof p->host, &p->port, KVX_BOOT_DEFAULT_PORT) ||
        !p->port) {
        kvx__set_why(why, wl, "bootstrap address '%s' is not host:port", addr);
        kvx_engine_free(b->engine, p);
        return NULL;
    }
    p->next = b->peers;
    b->peers = p;
    b->npeers++;
    return p;
}

static kvx_result kvx__boot_open_decode(kvx_boot *b, kvx_room *r, kvx__boot_br *br) {
    const char *addr = kvx_room_bootstrap_addr(r);
    char why[KVX_ERROR_MAX] = "";
    kvx__boot_pf *p = NULL;
    int ready = 0, submit = 0, dpq = 0, lost = 0;
    if (!addr || !addr[0]) {
        kvx__set_why(why, sizeof why, "no bootstrap address for this receiver: set "
                     "kvx_room_desc.bootstrap_addr or desc.bootstrap_addr to the prefill's "
                     "bootstrap host:port");
    } else {
        pthread_mutex_lock(&b->mu);
        p = kvx__boot_peer_get(b, addr, why, sizeof why);
        if (p) {
            br->peer = p;
            /* a rank of p was lost: resolve p again once none of its rooms
               is unfinished; until then rooms on its live ranks go on */
            if (p->state == KVX__BOOT_PF_READY && kvx__boot_pf_lost_locked(p) &&
                !kvx__boot_gen_busy_locked(b, p))
                p->state = KVX__BOOT_PF_DEAD;
            if (p->state == KVX__BOOT_PF_READY) {
                int a = kvx__boot_assign(br, p);
                if (a == 0) ready = 1;
                else if (a == 1) dpq = 1;
                else if (a == 2) lost = 1;
                else { snprintf(why, sizeof why, "out of memory"); p = NULL; }
            } else {
                br->waiting = 1;
                if (p->state != KVX__BOOT_PF_RESOLVING) { p->state = KVX__BOOT_PF_RESOLVING; submit = 1; }
            }
        }
        pthread_mutex_unlock(&b->mu);
    }
    if (!p) {
        kvx_room_fail(r, KVX_ERR_INVALID_ARGUMENT, "%s", why);
        return KVX_OK;
    }
    if (submit && kvx__workq_submit(b->wq, kvx__boot_resolve_job, p) != KVX_OK) {
        pthread_mutex_lock(&b->mu);
        p->state = KVX__BOOT_PF_DEAD;
        br->waiting = 0;
        pthread_mutex_unlock(&b->mu);
        kvx_room_fail(r, KVX_ERR_NO_MEMORY, "out of memory queueing the bootstrap of %s", addr);
        return KVX_OK;
    }
    if (lost) {
        kvx__boot_vec one;
        memset(&one, 0, sizeof one);
        pthread_mutex_lock(&b->mu);
        kvx__boot_vec_push(&one, br);
        pthread_mutex_unlock(&b->mu);
        kvx__boot_fail_lost(b, p, &one);
    }
    if (ready) kvx_room_advance(r, KVX_POLL_WAITING_FOR_INPUT);
    if (dpq) kvx__boot_dpq_start(b, p);
    return KVX_OK;
}

KVX_API kvx_result kvx_boot_room_open(kvx_boot *b, kvx_room *r) {
    kvx__boot_br *br, *fresh;
    kvx__boot_pframe *frames = NULL, *f;
    char gone[KVX__BOOT_GONE_WHY];
    int was_gone = 0;
    if (!b || !r) return KVX_ERR_INVALID_ARGUMENT;
    if (b->role == KVX_ROLE_PREFILL && b->dp_size > 1 && kvx__boot_dp_open(b, r)) return KVX_OK;
    fresh = kvx__boot_br_new(b, kvx_room_id(r));
    if (!fresh) return KVX_ERR_NO_MEMORY;
    pthread_mutex_lock(&b->mu);
    br = kvx__boot_find(b, kvx_room_id(r));
    if (br && br->room) {
        pthread_mutex_unlock(&b->mu);
        kvx_engine_free(b->engine, fresh);
        kvx_room_fail(r, KVX_ERR_INVALID_ARGUMENT, "room %llu is already open on this engine",
                      (unsigned long long)kvx_room_id(r));
        return KVX_OK;
    }
    if (br) { /* prefill: frames arrived before the sender */
        kvx_engine_free(b->engine, fresh);
        frames = br->frames;
        br->frames = br->frames_tail = NULL;
        for (f = frames; f; f = f->next) b->pending_pages -= f->n;
        b->npending--;
        br->created_ns = kvx_now_ns();
    } else if (kvx__boot_insert(b, fresh)) {
        pthread_mutex_unlock(&b->mu);
        kvx_engine_free(b->engine, fresh);
        return KVX_ERR_NO_MEMORY;
    } else {
        br = fresh;
    }
    if (b->role == KVX_ROLE_PREFILL) was_gone = kvx__boot_gone_find(b, kvx_room_id(r), gone, sizeof gone);
    kvx_room_ref(r);
    br->room = r;
    KVX__ADD(&br->refs, 1);
    pthread_mutex_unlock(&b->mu);
    if (b->role == KVX_ROLE_DECODE) {
        kvx__boot_open_decode(b, r, br);
    } else {
        for (f = frames; f; f = f->next) {
            if (f->type == KVX_BOOT_FRAME_ROOM) {
                kvx__boot_apply_room(b, br, f->conn, f->pages, f->n, f->aux, f->idx, f->count,
                                     f->pages ? f->pages + f->n : NULL, f->ns);
            } else if (kvx__boot_owns(b, br, f->conn)) {
                kvx_room_fail_remote(r, KVX_ERR_ABORTED, "aborted by the decode engine at %s: %s",
                                      f->conn->addr, f->reason ? f->reason : "no reason given");
                if (b->hooks.on_abort) b->hooks.on_abort(b, r, &f->conn->info, f->reason);
            }
        }
        if (was_gone)
            kvx_room_fail(r, KVX_ERR_PEER_LOST, "room %llu: %s before this sender was created, and "
                          "the room's destination went with it", (unsigned long long)kvx_room_id(r), gone);
    }
    kvx__boot_pframe_free(frames);
    kvx__boot_br_unref(br);
    return KVX_OK;
}

KVX_API void kvx_boot_room_close(kvx_boot *b, kvx_room *r) {
    kvx__boot_br *br;
    if (!b || !r) return;
    if (!kvx__room_terminal(r)) {
        char why[160];
        snprintf(why, sizeof why, "room %llu: the %s was destroyed before the transfer finished",
                 (unsigned long long)kvx_room_id(r), b->role == KVX_ROLE_DECODE ? "receiver" : "sender");
        kvx__boot_tell(b, r, why, KVX_ERR_ABORTED, NULL);
    }
    pthread_mutex_lock(&b->mu);
    br = kvx__boot_find(b, kvx_room_id(r));
    if (!br || br->room != r) { pthread_mutex_unlock(&b->mu); return; }
    kvx__htab_remove(&b->rooms, &br->hn);
    if (kvx_room_poll(r) == KVX_POLL_FAILED) kvx__boot_tally_add(b->failures, &b->nfailures, (int)kvx_room_result(r), 1);
    pthread_mutex_unlock(&b->mu);
    kvx__boot_br_unref(br);
}

KVX_API kvx_result kvx_boot_receiver_init(kvx_boot *b, kvx_room *r, const int32_t *pages,
                                          uint32_t n, int32_t aux_index) {
    kvx__boot_br *br;
    kvx__boot_conn *stack[4], **cs = NULL;
    uint32_t nc, i;
    uint16_t idx, count;
    uint8_t head[KVX__BOOT_HDR + KVX__BOOT_ROOM_FIXED];
    struct iovec v[3];
    const int32_t *st;
    uint32_t ns = 0;
    int32_t *le = NULL;
    kvx_result res = KVX_OK;
    if (!b || !r || (n && !pages) || n > KVX_MAX_PAGES) return KVX_ERR_INVALID_ARGUMENT;
    pthread_mutex_lock(&b->mu);
    br = kvx__boot_find(b, kvx_room_id(r));
    if (!br || br->room != r || !br->nconns || br->waiting) {
        pthread_mutex_unlock(&b->mu);
        return KVX_ERR_STATE;
    }
    br->inited = 1;
    idx = br->peer_index;
    count = br->peer_count ? br->peer_count : 1;
    nc = kvx__boot_conns_copy(b, br->conns, br->nconns, &cs, stack);
    pthread_mutex_unlock(&b->mu);
    if (!cs) return KVX_ERR_NO_MEMORY;
    st = kvx_room_state(r, &ns);
    if (ns > KVX_BOOT_MAX_STATE_INDICES) {
        kvx__boot_conns_release(b, cs, nc, stack);
        kvx_room_fail(r, KVX_ERR_OUT_OF_RANGE, "%u state indices exceed what a room frame carries "
                      "(KVX_BOOT_MAX_STATE_INDICES %u)", ns, (unsigned)KVX_BOOT_MAX_STATE_INDICES);
        return KVX_ERR_OUT_OF_RANGE;
    }
    kvx__boot_room_head(head, kvx_room_id(r), aux_index, n, idx, count, ns);
    v[0].iov_base = head;
    v[0].iov_len = sizeof head;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    if (n + ns) {
        le = (int32_t *)kvx_engine_alloc(b->engine, (n + ns) * sizeof *le);
        if (!le) { kvx__boot_conns_release(b, cs, nc, stack); return KVX_ERR_NO_MEMORY; }
        for (i = 0; i < n; i++) kvx__le_w32((uint8_t *)&le[i], (uint32_t)pages[i]);
        for (i = 0; i < ns; i++) kvx__le_w32((uint8_t *)&le[n + i], (uint32_t)st[i]);
    }
#endif
    v[1].iov_base = (void *)(le ? le : pages);
    v[1].iov_len = (size_t)n * 4u;
    v[2].iov_base = (void *)(le ? le + n : st);
    v[2].iov_len = (size_t)ns * 4u;
    for (i = 0; i < nc && res == KVX_OK; i++) {
        res = kvx__boot_conn_sendv(cs[i], v, 3);
        if (res != KVX_OK)
            kvx_room_fail_remote(r, res, "cannot send the destination of room %llu to prefill rank %s: "
                                 "the control connection is gone", (unsigned long long)kvx_room_id(r),
                                 cs[i]->addr);
    }
    kvx_engine_free(b->engine, le);
    kvx__boot_conns_release(b, cs, nc, stack);
    return res;
}

KVX_API kvx_result kvx_boot_send_status(kvx_boot *b, kvx_room *r, kvx_poll state,
                                        kvx_result result, uint64_t bytes, const char *reason) {
    kvx__boot_br *br;
    kvx__boot_conn *stack[4], **cs = NULL;
    const void *only = NULL;
    uint32_t nc, i;
    kvx_result res = KVX_OK;
    if (!b || !r) return KVX_ERR_INVALID_ARGUMENT;
    pthread_mutex_lock(&b->mu);
    br = kvx__boot_find(b, kvx_room_id(r));
    if (!br || br->room != r || !br->nconns) {
        pthread_mutex_unlock(&b->mu);
        return KVX_ERR_STATE;
    }
    if (state == KVX_POLL_FAILED) {
        if (br->told == 1) { pthread_mutex_unlock(&b->mu); return KVX_OK; } /* said once already */
        if (br->told == 2) only = br->told_skip; /* kvx__boot_tell_others told the rest */
        br->told = 1;
    }
    nc = kvx__boot_conns_copy(b, br->conns, br->nconns, &cs, stack);
    pthread_mutex_unlock(&b->mu);
    if (!cs) return KVX_ERR_NO_MEMORY;
    for (i = 0; i < nc; i++) {
        kvx_result x;
        if (only && (const void *)cs[i] != only) continue;
        x = kvx__boot_conn_status(cs[i], kvx_room_id(r), state, result, bytes, reason);
        if (x != KVX_OK && res == KVX_OK) res = x;
    }
    kvx__boot_conns_release(b, cs, nc, stack);
    return res;
}

KVX_API void kvx_boot_abort(kvx_boot *b, kvx_room *r, const char *reason) {
    int failed;
    if (!b || !r) return;
    /* an explicit abort forwards the caller's reason; a timeout or other
       failure forwards the room's own sentence, which says more */
    failed = kvx_room_poll(r) == KVX_POLL_FAILED;
    kvx__boot_tell(b, r,
                   failed && kvx_room_result(r) != KVX_ERR_ABORTED ? kvx_room_error(r)
                                                                        : (reason ? reason : "aborted"),
                   failed ? kvx_room_result(r) : KVX_ERR_ABORTED, NULL);
}

KVX_API void kvx_boot_room_failed(kvx_boot *b, kvx_room *r) {
    if (!b || !r || kvx_room_poll(r) != KVX_POLL_FAILED) return;
    kvx__boot_tell(b, r, kvx_room_error(r), kvx_room_result(r), NULL);
}

KVX_API uint32_t kvx_boot_room_dst_pages(kvx_boot *b, const kvx_room *r) {
    kvx__boot_br *br;
    uint32_t n = 0;
    if (!b || !r) return 0;
    pthread_mutex_lock(&b->mu);
    br = kvx__boot_find(b, kvx_room_id(r));
    if (br && br->room == r) n = br->dst_pages;
    pthread_mutex_unlock(&b->mu);
    return n;
}

/* >>boot: create and destroy --------------------------------------------------------------- */

static void kvx__boot_local_ip(const char *host, char *out, size_t n) {
    struct ifaddrs *ifs = NULL, *i;
    if (host[0] && strcmp(host, "0.0.0.0") && strcmp(host, "::") && strcmp(host, "*")) {
        struct addrinfo hints, *res = NULL;
        memset(&hints, 0, sizeof hints);
        hints.ai_socktype = SOCK_STREAM;
        if (getaddrinfo(host, NULL, &hints, &res) == 0 && res) {
            char tmp[64];
            kvx__sa_str(res->ai_addr, tmp, sizeof tmp); /* "ip:0" or "[ip]:0" */
            freeaddrinfo(res);
            if (tmp[0] == '[') { *strrchr(tmp, ']') = 0; snprintf(out, n, "%s", tmp + 1); }
            else { *strrchr(tmp, ':') = 0; snprintf(out, n, "%s", tmp); }
            return;
        }
        snprintf(out, n, "%.*s", (int)(n - 1), host);
        return;
    }
    snprintf(out, n, "127.0.0.1");
    if (getifaddrs(&ifs) != 0) return;
    for (i = ifs; i; i = i->ifa_next)
        if (i->ifa_addr && i->ifa_addr->sa_family == AF_INET && (i->ifa_flags & IFF_UP) &&
            !(i->ifa_flags & IFF_LOOPBACK)) {
            inet_ntop(AF_INET, &((struct sockaddr_in *)(void *)i->ifa_addr)->sin_addr, out,
                      (socklen_t)n);
            break;
        }
    freeifaddrs(ifs);
}

static kvx_result kvx__boot_rank_setting(const char *name, int size, int rank, int *sz, int *rk,
                                         char *why, size_t wl) {
    *sz = size > 0 ? size : 1;
    *rk = rank;
    if (rank < 0 || rank >= *sz)
        return kvx__why(KVX_ERR_BAD_CONFIG, why, wl, "desc.boot.%s_rank %d is not in [0, "
                             "%s_size %d)", name, rank, name, *sz);
    return KVX_OK;
}

/* The settings of ENVIRONMENT in the doc block, by kvx.h's rule. */
static const kvx__setting kvx__boot_table[] = {
    KVX__SET_STR("KVX_BOOTSTRAP_HOST", kvx_boot_desc, host),
    KVX__SET_INT0("KVX_BOOTSTRAP_PORT", kvx_boot_desc, port, KVX_BOOT_DEFAULT_PORT, 0, 65535),
    KVX__SET_DBL("KVX_HEARTBEAT_INTERVAL", kvx_boot_desc, heartbeat_interval_s, 5, 0.1, 3600),
    KVX__SET_INT("KVX_HEARTBEAT_MAX_FAILURE", kvx_boot_desc, heartbeat_max_failure, 2, 1, 1000),
    KVX__SET_STR("KVX_BOOTSTRAP_RANK_IP", kvx_boot_desc, rank_ip),
    KVX__SET_STR("KVX_LOAD_BALANCE_METHOD", kvx_boot_desc, load_balance_method),
    KVX__SET_STR("KVX_BOOTSTRAP_SERVER", kvx_boot_desc, server),
};

static kvx_result kvx__boot_settings(kvx_boot *b, char *why, size_t wl) {
    const kvx_engine_desc *d = kvx_engine_settings(b->engine);
    kvx_boot_desc s = d->boot;
    char ahost[256];
    int aport = 0;
    kvx_result r;
    /* a prefill's desc.bootstrap_addr stands in for an unset host and port */
    if (d->role == KVX_ROLE_PREFILL && d->bootstrap_addr &&
        !kvx__addr_split(d->bootstrap_addr, ahost, sizeof ahost, &aport, 0)) {
        if (!s.host) s.host = ahost;
        if (!s.port && aport) s.port = aport;
    }
    if ((r = kvx__settings_apply(kvx__boot_table, KVX__COUNT(kvx__boot_table), &s, why, wl)))
        return r;
    b->port_cfg = s.port;
    {   /* SGLang's --load-balance-method */
        const char *m = s.load_balance_method;
        if (!m || !m[0]) m = "follow_bootstrap_room";
        if (strlen(m) >= sizeof b->lbm || strspn(m, "abcdefghijklmnopqrstuvwxyz_") != strlen(m))
            return kvx__why(KVX_ERR_BAD_CONFIG, why, wl, "KVX_LOAD_BALANCE_METHOD '%s' is not a "
                            "method name (follow_bootstrap_room, round_robin, ...)", m);
        snprintf(b->lbm, sizeof b->lbm, "%s", m);
        b->follow = !strcmp(m, "follow_bootstrap_room");
    }
    if (!s.host) s.host = "0.0.0.0";
    if (strlen(s.host) >= sizeof b->host)
        return kvx__why(KVX_ERR_BAD_CONFIG, why, wl, "bootstrap host '%s' is too long",
                             s.host);
    snprintf(b->host, sizeof b->host, "%s", s.host);
    b->hb_interval = s.heartbeat_interval_s;
    b->hb_max_failure = s.heartbeat_max_failure;
    if ((r = kvx__boot_rank_setting("tp", d->boot.tp_size, d->boot.tp_rank, &b->tp_size,
                                    &b->tp_rank, why, wl)) ||
        (r = kvx__boot_rank_setting("dp", d->boot.dp_size, d->boot.dp_rank, &b->dp_size,
                                    &b->dp_rank, why, wl)) ||
        (r = kvx__boot_rank_setting("pp", d->boot.pp_size, d->boot.pp_rank, &b->pp_size,
                                    &b->pp_rank, why, wl)) ||
        (r = kvx__boot_rank_setting("cp", d->boot.cp_size, d->boot.cp_rank, &b->cp_size,
                                    &b->cp_rank, why, wl)))
        return r;
    b->serves = b->role == KVX_ROLE_PREFILL && !b->tp_rank && !b->dp_rank && !b->pp_rank &&
                !b->cp_rank && !(s.server && s.server[0]);
    if (s.server && s.server[0]) {
        if (kvx__addr_split(s.server, b->srv_host, sizeof b->srv_host, &b->srv_port, 0) ||
            !b->srv_host[0] || b->srv_port <= 0 || b->srv_port > 65535)
            return kvx__why(KVX_ERR_BAD_CONFIG, why, wl, "KVX_BOOTSTRAP_SERVER / desc.boot.server "
                                 "'%.80s' is not host:port", s.server);
    } else {
        snprintf(b->srv_host, sizeof b->srv_host, "%s",
                 (!b->host[0] || !strcmp(b->host, "0.0.0.0") || !strcmp(b->host, "::"))
                     ? "127.0.0.1" : b->host);
        b->srv_port = b->port_cfg;
    }
    if (b->role == KVX_ROLE_PREFILL && !b->serves && !b->srv_port)
        return kvx__why(KVX_ERR_BAD_CONFIG, why, wl, "prefill rank (tp %d, dp %d, pp %d, cp "
                             "%d) needs the bootstrap server's port to register with it; an "
                             "ephemeral port is only for rank 0", b->tp_rank, b->dp_rank,
                             b->pp_rank, b->cp_rank);
    if (s.rank_ip && strlen(s.rank_ip) >= sizeof b->rank_ip)
        return kvx__why(KVX_ERR_BAD_CONFIG, why, wl, "KVX_BOOTSTRAP_RANK_IP / "
                             "desc.boot.rank_ip '%.80s' is too long", s.rank_ip);
    if (s.rank_ip) snprintf(b->rank_ip, sizeof b->rank_ip, "%s", s.rank_ip);
    else kvx__boot_local_ip(b->host, b->rank_ip, sizeof b->rank_ip);
    return KVX_OK;
}

/* Our hello: keyless (nonce NULL), the shared encoding made once at
   create (b->hello); keyed, per connection, with a fresh nonce (and on
   prefill the proof over the decode's nonce). */
static kvx_result kvx__boot_make_hello(kvx_boot *b, kvx__buf *out, const uint8_t *nonce,
                                       const uint8_t *proof) {
    const kvx_layout *l = kvx_engine_layout(b->engine);
    const char *tn = kvx_engine_transport(b->engine), *dt = l->dtype ? l->dtype : "";
    uint64_t items[KVX_MAX_BUFFERS + KVX_MAX_AUX + KVX_MAX_STATE + 1]; /* the core checked the counts */
    kvx_boot_frame f;
    uint32_t i;
    for (i = 0; i < l->num_buffers; i++) items[i] = l->buffers[i].item_len;
    for (i = 0; i < l->num_aux; i++) items[l->num_buffers + i] = l->aux[i].item_len;
    for (i = 0; i < l->num_state; i++) items[l->num_buffers + l->num_aux + i] = l->state[i].item_len;
    memset(&f, 0, sizeof f);
    kvx__buf_init(out, kvx__boot_al(b));
    f.type = KVX_BOOT_FRAME_HELLO;
    f.hello.version = KVX_BOOT_PROTOCOL_VERSION;
    f.hello.role = (uint16_t)b->role;
    f.hello.flags = nonce ? KVX_BOOT_HELLO_AUTH : 0;
    f.hello.nonce = nonce;
    f.hello.proof = proof;
    f.hello.instance = b->instance;
    f.hello.fingerprint = kvx_layout_fingerprint(l);
    f.hello.tp_size = b->tp_size; f.hello.tp_rank = b->tp_rank;
    f.hello.dp_size = b->dp_size; f.hello.dp_rank = b->dp_rank;
    f.hello.pp_size = b->pp_size; f.hello.pp_rank = b->pp_rank;
    f.hello.cp_size = b->cp_size; f.hello.cp_rank = b->cp_rank;
    f.hello.page_size = l->page_size;
    f.hello.dtype_size = l->dtype_size;
    f.hello.num_kv_heads = l->num_kv_heads;
    f.hello.head_begin = l->head_begin;
    f.hello.layer_begin = l->layer_begin;
    f.hello.mla = l->mla != 0;
    f.hello.num_buffers = l->num_buffers;
    f.hello.num_aux = l->num_aux;
    f.hello.item_lens = items;
    f.hello.aux_item_lens = items + l->num_buffers;
    f.hello.num_state = l->num_state;
    f.hello.state_type = l->state_type;
    f.hello.state_item_lens = items + l->num_buffers + l->num_aux;
    f.hello.dtype = dt;
    f.hello.dtype_len = (uint32_t)strlen(dt);
    f.hello.transport = tn;
    f.hello.transport_len = (uint32_t)strlen(tn);
    f.hello.endpoint = b->endpoint;
    f.hello.endpoint_len = b->endpoint_len;
    return kvx__boot_frame_encode(&f, out);
}

static void kvx__boot_free(kvx_boot *b) {
    size_t i;
    kvx__boot_pf *p;
    for (i = 0; i < b->rooms.nb; i++)
        while (b->rooms.b[i]) {
            kvx__boot_br *br = kvx__boot_at(b->rooms.b[i]);
            b->rooms.b[i] = br->hn.hnext;
            kvx__boot_br_unref(br);
        }
    kvx__htab_free(&b->rooms, kvx__boot_al(b));
    while ((p = b->peers) != NULL) {
        b->peers = p->next;
        kvx__boot_conns_close(p->r.conns, p->r.nconns);
        kvx_engine_free(b->engine, p->r.conns);
        kvx_engine_free(b->engine, p);
    }
    kvx__boot_conns_close(b->incoming, b->nincoming);
    kvx_engine_free(b->engine, b->incoming);
    kvx__boot_conns_close(b->conns, b->nconns);
    kvx_engine_free(b->engine, b->conns);
    kvx_engine_free(b->engine, b->live);
    kvx_engine_free(b->engine, b->srv.ranks);
    kvx__boot_dp_free(b);
    kvx_engine_free(b->engine, b->scratch);
    kvx_engine_free(b->engine, b->gone);
    kvx_engine_free(b->engine, b->endpoint);
    kvx__buf_free(&b->hello);
    if (b->wake_rd >= 0) close(b->wake_rd);
    if (b->wake_wr >= 0) close(b->wake_wr);
    pthread_mutex_destroy(&b->mu);
    pthread_cond_destroy(&b->cv);
    kvx_engine_free(b->engine, b);
}

KVX_API void kvx_boot_destroy(kvx_boot *b) {
    kvx_boot **pp;
    if (!b) return;
    pthread_mutex_lock(&kvx__boot_registry_mu);
    for (pp = &kvx__boot_registry; *pp; pp = &(*pp)->reg_next)
        if (*pp == b) { *pp = b->reg_next; break; }
    pthread_mutex_unlock(&kvx__boot_registry_mu);
    pthread_mutex_lock(&b->mu);
    KVX__STORE(&b->stop, 1);
    pthread_cond_broadcast(&b->cv);
    pthread_mutex_unlock(&b->mu);
    kvx__boot_wake(b);
    if (b->hb_started) pthread_join(b->hb, NULL);
    kvx__workq_destroy(b->wq); /* resolver jobs see stop and give up */
    if (b->io_started) pthread_join(b->io, NULL);
    kvx__boot_free(b);
}

/* A listening socket of the prefill (control channel, bootstrap server) on
   the I/O thread's list. */
static kvx_result kvx__boot_add_listener(kvx_boot *b, int kind, int port, const char *what,
                                         int *port_out, char *why, size_t wl) {
    int err, fd = kvx__listen(b->host, port, 1024, port_out, &err);
    kvx__boot_conn *c;
    if (fd < 0)
        return kvx__why(KVX_ERR_IO, why, wl, "cannot listen on %s:%d for the %s: %s%s",
                             b->host, port, what, kvx__errstr(err), err == EADDRINUSE ?
                             " (another process has this port; set KVX_BOOTSTRAP_PORT)" : "");
    c = kvx__boot_conn_new(b, kind, fd);
    if (!c || kvx__boot_io_add(b, c)) {
        if (c) kvx__boot_conn_unref(c);
        else close(fd);
        return KVX_ERR_NO_MEMORY;
    }
    return KVX_OK;
}

/* The rank that serves the bootstrap registers itself with its own table. */
static kvx_result kvx__boot_self_register(kvx_boot *b, char *why, size_t wl) {
    kvx__boot_regn g;
    kvx__buf reg;
    char rwhy[256] = "";
    int rc;
    kvx__buf_init(&reg, kvx__boot_al(b));
    kvx__boot_reg_json(b, &reg);
    rc = reg.oom || kvx__boot_reg_parse(reg.allocator, reg.data, reg.len, &g, rwhy, sizeof rwhy) ||
         kvx__boot_srv_register(b, &g, rwhy, sizeof rwhy);
    kvx__buf_free(&reg);
    if (!rc) return KVX_OK;
    return kvx__why(KVX_ERR_INVALID_ARGUMENT, why, wl, "cannot register this rank with its "
                         "own bootstrap server: %s", rwhy);
}

KVX_API kvx_result kvx_boot_create(kvx_engine *e, const kvx_boot_hooks *hooks,
                                   const void *endpoint, size_t endpoint_len, kvx_boot **out,
                                   char *why, size_t wl) {
    kvx_boot *b;
    kvx_result r;
    if (why && wl) why[0] = 0;
    if (!out) return KVX_ERR_INVALID_ARGUMENT;
    *out = NULL;
    if (!e || endpoint_len > KVX_BOOT_MAX_ENDPOINT || (endpoint_len && !endpoint))
        return kvx__why(KVX_ERR_INVALID_ARGUMENT, why, wl, "kvx_boot_create: no engine, or "
                             "an endpoint of %zu bytes (limit %d)", endpoint_len,
                             KVX_BOOT_MAX_ENDPOINT);
    b = (kvx_boot *)kvx__zalloc(&kvx_engine_settings(e)->allocator, 1, sizeof *b);
    if (!b) return KVX_ERR_NO_MEMORY;
    b->engine = e;
    if (hooks) b->hooks = *hooks;
    b->role = kvx_engine_settings(e)->role;
    b->wake_rd = b->wake_wr = -1;
    pthread_mutex_init(&b->mu, NULL);
    pthread_cond_init(&b->cv, NULL);
    if (kvx__random_bytes(&b->instance, sizeof b->instance) != KVX_OK) b->instance = 0;
    b->instance ^= kvx_now_ns() ^ ((uint64_t)getpid() << 32) ^ (uint64_t)(uintptr_t)b;
    if (!b->instance) b->instance = 1; /* never 0 */
    b->key = kvx_engine_auth_key(e, &b->key_len);
    r = KVX_ERR_NO_MEMORY;
    if (endpoint_len) {
        if (!(b->endpoint = (uint8_t *)kvx_engine_alloc(e, endpoint_len))) goto fail;
        memcpy(b->endpoint, endpoint, endpoint_len);
        b->endpoint_len = (uint32_t)endpoint_len;
    }
    if ((r = kvx__boot_settings(b, why, wl)) != KVX_OK) goto fail;
    if (strlen(kvx_engine_transport(e)) > 31 ||
        strlen(kvx_engine_layout(e)->dtype ? kvx_engine_layout(e)->dtype : "") > 63) {
        kvx__set_why(why, wl, "transport name (31 bytes at most) or layout dtype (63) too long");
        r = KVX_ERR_INVALID_ARGUMENT;
        goto fail;
    }
    if ((r = kvx__boot_make_hello(b, &b->hello, NULL, NULL)) != KVX_OK) goto fail;
    if (kvx__pipe(&b->wake_rd, &b->wake_wr) != 0) {
        kvx__set_why(why, wl, "cannot create a pipe: %s", strerror(errno));
        r = KVX_ERR_IO;
        goto fail;
    }
    if (b->role == KVX_ROLE_PREFILL &&
        ((r = kvx__boot_add_listener(b, KVX__BOOT_K_CTRL_LISTEN, 0, "control channel",
                                     &b->ctrl_port, why, wl)) ||
         (b->serves &&
          ((r = kvx__boot_add_listener(b, KVX__BOOT_K_HTTP_LISTEN, b->port_cfg, "bootstrap server",
                                       &b->http_port, why, wl)) ||
           (r = kvx__boot_self_register(b, why, wl))))))
        goto fail;
    if ((r = kvx__workq_create(e, b->role == KVX_ROLE_DECODE ? 2 : 1, "kvx.boot", &b->wq)) != KVX_OK) {
        kvx__set_why(why, wl, "cannot start the bootstrap worker threads");
        goto fail;
    }
    if (pthread_create(&b->io, NULL, kvx__boot_io_main, b) != 0) {
        kvx__set_why(why, wl, "cannot start the bootstrap I/O thread: %s", strerror(errno));
        kvx__workq_destroy(b->wq);
        r = KVX_ERR_NO_MEMORY;
        goto fail;
    }
    b->io_started = 1;
    if (b->role == KVX_ROLE_DECODE) {
        if (pthread_create(&b->hb, NULL, kvx__boot_hb_main, b) != 0) {
            kvx__set_why(why, wl, "cannot start the heartbeat thread: %s", strerror(errno));
            kvx_boot_destroy(b);
            return KVX_ERR_NO_MEMORY;
        }
        b->hb_started = 1;
    } else if (!b->serves) {
        kvx__workq_submit(b->wq, kvx__boot_register_job, b);
    }
    pthread_mutex_lock(&kvx__boot_registry_mu);
    b->reg_next = kvx__boot_registry;
    kvx__boot_registry = b;
    pthread_mutex_unlock(&kvx__boot_registry_mu);
    if (b->role == KVX_ROLE_PREFILL)
        kvx_engine_log(e, KVX_LOG_INFO, "kvx.boot", 0,
                       "prefill rank tp %d/%d dp %d/%d pp %d/%d cp %d/%d: control %s:%d%s%s:%d",
                       b->tp_rank, b->tp_size, b->dp_rank, b->dp_size, b->pp_rank, b->pp_size,
                       b->cp_rank, b->cp_size, b->rank_ip, b->ctrl_port,
                       b->serves ? ", bootstrap server " : ", registering with ",
                       b->serves ? b->host : b->srv_host, b->serves ? b->http_port : b->srv_port);
    *out = b;
    return KVX_OK;
fail:
    kvx__boot_free(b);
    return r;
}

/* >>boot: the bootfake transport ---------------------------------------------------------- */

static kvx_boot *kvx__boot_fake(kvx_room *r) {
    return (kvx_boot *)kvx_engine_backend_data(kvx_room_engine(r));
}

static kvx_result kvx__boot_fake_init(kvx_engine *e, char *why, size_t wl) {
    kvx_boot *b;
    kvx_result r = kvx_boot_create(e, NULL, "bootfake", 8, &b, why, wl);
    if (r == KVX_OK) kvx_engine_set_backend_data(e, b);
    return r;
}
static void kvx__boot_fake_fini(kvx_engine *e) {
    kvx_boot_destroy((kvx_boot *)kvx_engine_backend_data(e));
    kvx_engine_set_backend_data(e, NULL);
}
static kvx_result kvx__boot_fake_open(kvx_room *r) { return kvx_boot_room_open(kvx__boot_fake(r), r); }
static void kvx__boot_fake_close(kvx_room *r) { kvx_boot_room_close(kvx__boot_fake(r), r); }
static void kvx__boot_fake_failed(kvx_room *r) { kvx_boot_room_failed(kvx__boot_fake(r), r); }

static kvx_result kvx__boot_fake_sender_init(kvx_room *r, uint32_t n, int32_t aux) {
    kvx_boot *b = kvx__boot_fake(r);
    uint32_t want = kvx_boot_room_dst_pages(b, r);
    (void)aux;
    if (n != want) {
        kvx_room_fail(r, KVX_ERR_INVALID_ARGUMENT,
                      "init declares %u pages but the decode side asked for %u", n, want);
        return KVX_ERR_INVALID_ARGUMENT; /* room_failed tells the decode side */
    }
    return KVX_OK;
}

static kvx_result kvx__boot_fake_send(kvx_room *r, kvx_chunk *c) {
    kvx_boot *b = kvx__boot_fake(r);
    int last = c->is_last;
    kvx_result res;
    kvx_chunk_free(kvx_room_engine(r), c);
    if (!last) return KVX_OK;
    /* Success first: a room that failed meanwhile stays Failed (and its
       room_failed tells the peer); a successful one never sends anything else */
    kvx_room_succeed(r, 0);
    if (kvx_room_poll(r) != KVX_POLL_SUCCESS) return KVX_OK;
    res = kvx_boot_send_status(b, r, KVX_POLL_SUCCESS, KVX_OK, 0, NULL);
    if (res != KVX_OK)
        kvx_engine_log(kvx_room_engine(r), KVX_LOG_WARN, "kvx.boot", kvx_room_id(r),
                       "cannot report success to the decode side: the control connection is gone");
    return KVX_OK;
}

static kvx_result kvx__boot_fake_recv_init(kvx_room *r, const int32_t *pages, uint32_t n,
                                          int32_t aux) {
    return kvx_boot_receiver_init(kvx__boot_fake(r), r, pages, n, aux);
}

static void kvx__boot_fake_hooks(kvx_backend *b) { /* no room_abort: room_failed does it */
    b->engine_fini = kvx__boot_fake_fini;
    b->room_open = kvx__boot_fake_open;
    b->sender_init = kvx__boot_fake_sender_init;
    b->sender_send = kvx__boot_fake_send;
    b->receiver_init = kvx__boot_fake_recv_init;
    b->room_close = kvx__boot_fake_close;
    b->room_failed = kvx__boot_fake_failed;
}

KVX_API const kvx_backend *kvx_bootfake_backend(void) {
    static kvx_backend b;
    return kvx__backend_table(&b, "bootfake", kvx__boot_fake_init, kvx__boot_fake_hooks);
}

KVX_API kvx_result kvx_boot_register(void) { return kvx_transport_register(kvx_bootfake_backend()); }

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
