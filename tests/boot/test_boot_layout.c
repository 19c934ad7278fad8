/* kvx_boot hello protocol version 3: each side learns the other's layout
   shape (kvx_boot_peer.layout: head_begin, layer_begin, heads, item_lens,
   bases NULL), and a prefill rank whose layout differs from the decode's is
   accepted when kvx_layout_overlap says they combine (heterogeneous TP),
   refused with its sentence (or "shares no heads/layers") otherwise. */
#define KVX_IMPLEMENTATION
#include "../../kvx_boot.h"
#include "boot_test.h"

/* "bootpeek": bootfake with an on_connect hook that records each peer's layout. */
typedef struct seen {
    kvx_role side, peer_role;
    int peer_tp_rank;
    kvx_layout l;
    uint64_t item0, aux0, state0;
    int null_bases;
    char dtype[64];
} seen;
static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static seen g_seen[16];
static int g_nseen;

static void peek_connect(kvx_boot *b, const kvx_boot_peer *p) {
    seen s;
    uint32_t i;
    memset(&s, 0, sizeof s);
    s.side = p->role == KVX_ROLE_PREFILL ? KVX_ROLE_DECODE : KVX_ROLE_PREFILL; (void)b;
    s.peer_role = p->role;
    s.peer_tp_rank = p->tp_rank;
    if (p->layout) {
        s.l = *p->layout;
        s.item0 = p->layout->num_buffers ? p->layout->buffers[0].item_len : 0;
        s.aux0 = p->layout->num_aux ? p->layout->aux[0].item_len : 0;
        s.state0 = p->layout->num_state ? p->layout->state[0].item_len : 0;
        s.null_bases = 1;
        for (i = 0; i < p->layout->num_buffers; i++)
            if (p->layout->buffers[i].base || p->layout->buffers[i].length) s.null_bases = 0;
        snprintf(s.dtype, sizeof s.dtype, "%s", p->layout->dtype ? p->layout->dtype : "(null)");
    }
    pthread_mutex_lock(&g_mu);
    if (g_nseen < 16) g_seen[g_nseen++] = s;
    pthread_mutex_unlock(&g_mu);
}

/* The last destination's state indices the prefill's transport was given. */
static uint32_t g_room_nstate;
static int32_t g_room_state[4];

static kvx_result peek_room(kvx_boot *b, kvx_room *r, const kvx_boot_peer *peer, const int32_t *dst,
                            uint32_t n, int32_t aux, const int32_t *st, uint32_t ns) {
    (void)b; (void)r; (void)peer; (void)dst; (void)n; (void)aux;
    pthread_mutex_lock(&g_mu);
    g_room_nstate = ns;
    memset(g_room_state, 0xff, sizeof g_room_state);
    if (ns && ns <= 4) memcpy(g_room_state, st, ns * sizeof *st);
    pthread_mutex_unlock(&g_mu);
    return KVX_OK;
}

static kvx_result peek_init(kvx_engine *e, char *why, size_t wl) {
    kvx_boot *b;
    kvx_boot_hooks h;
    kvx_result r;
    memset(&h, 0, sizeof h);
    h.on_connect = peek_connect;
    h.on_room = peek_room;
    r = kvx_boot_create(e, &h, "peek", 4, &b, why, wl);
    if (r == KVX_OK) kvx_engine_set_backend_data(e, b);
    return r;
}

static const kvx_backend *peek_backend(void) {
    static kvx_backend bk;
    return kvx__backend_table(&bk, "bootpeek", peek_init, kvx__boot_fake_hooks);
}

#define mk_recv bt_recv

#define mk_send bt_send

/* A rank's pool: 1 layer (K, V), `heads` of the model's 8 heads from
   head_begin, 16 tokens per page, 1 byte per head per token. */
static void rank_pool(bt_pool *p, uint32_t heads, uint32_t head_begin) {
    bt_pool_init(p, 64, 16, 16u * heads, "bfloat16");
    p->layout.num_kv_heads = heads;
    p->layout.head_begin = head_begin;
}

/* prefill TP ptp (8 / ptp heads each) -> decode TP dtp: every decode rank's
   room reaches Success and both sides saw the other's layout. */
static void hetero(int ptp, int dtp) {
    bt_pool pp[4], dp[4];
    kvx_engine *pe[4] = {0}, *de[4] = {0};
    kvx_sender *s[4] = {0};
    kvx_receiver *r[4] = {0};
    bt_engine_opts o;
    char why[256], addr[64], what[32];
    int32_t pages[2] = {3, 4};
    int i, ok = 1, nsaw = 0, port = 0;
    uint64_t room = 100 + (uint64_t)ptp * 10 + (uint64_t)dtp;
    snprintf(what, sizeof what, "tp %d -> %d", ptp, dtp);
    pthread_mutex_lock(&g_mu);
    g_nseen = 0;
    pthread_mutex_unlock(&g_mu);
    for (i = 0; i < ptp + dtp; i++) { /* prefill ranks, then decode ranks */
        int pre = i < ptp, tp = pre ? ptp : dtp, k = pre ? i : i - ptp;
        bt_pool *pool = pre ? &pp[k] : &dp[k];
        kvx_engine *e;
        if (i == ptp) snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
        rank_pool(pool, 8u / (uint32_t)tp, (uint32_t)k * (8u / (uint32_t)tp));
        memset(&o, 0, sizeof o);
        o.transport = "bootpeek";
        o.tp_size = tp; o.tp_rank = k;
        o.port = pre ? port : 0;
        o.addr = pre ? NULL : addr;
        e = bt_engine(pre ? KVX_ROLE_PREFILL : KVX_ROLE_DECODE, pool, &o, why, sizeof why);
        if (!e) { CHECK(0, "%s: %s rank %d: %s", what, pre ? "prefill" : "decode", k, why); return; }
        if (pre) pe[k] = e; else de[k] = e;
        if (!i) port = kvx_boot_engine_port(e);
    }
    for (i = 0; i < ptp; i++) s[i] = mk_send(pe[i], room);
    for (i = 0; i < dtp; i++) r[i] = mk_recv(de[i], room, NULL);
    ok = bt_wait_receivers(r, dtp, bt_is_ready, 30);
    for (i = 0; i < dtp && ok; i++)
        if (kvx_receiver_poll(r[i]) != KVX_POLL_WAITING_FOR_INPUT) ok = 0;
    CHECK(ok, "%s: every decode rank accepted its prefill ranks (%s)", what,
          kvx_receiver_error(r[0]));
    for (i = 0; i < dtp; i++) kvx_receiver_init(r[i], pages, 2, -1);
    CHECK(bt_wait_senders(s, ptp, bt_is_ready, 30), "%s: every prefill rank got its room frames", what);
    for (i = 0; i < ptp; i++) {
        kvx_sender_init(s[i], 2, -1);
        kvx_sender_send(s[i], pages, 2);
    }
    ok = bt_wait_receivers(r, dtp, bt_is_terminal, 30);
    for (i = 0; i < dtp && ok; i++)
        if (kvx_receiver_poll(r[i]) != KVX_POLL_SUCCESS) ok = 0;
    CHECK(ok, "%s: every decode room Success (%s)", what, kvx_receiver_error(r[0]));
    pthread_mutex_lock(&g_mu);
    for (i = 0; i < g_nseen; i++) {
        const seen *v = &g_seen[i];
        uint32_t heads = v->peer_role == KVX_ROLE_PREFILL ? 8u / (uint32_t)ptp : 8u / (uint32_t)dtp;
        if (v->l.num_kv_heads == heads && v->l.head_begin == (uint32_t)v->peer_tp_rank * heads &&
            v->l.layer_begin == 0 && v->item0 == 16u * heads && v->aux0 == 64 && v->null_bases &&
            v->l.num_buffers == 2 && v->l.num_aux == 1 && v->l.page_size == 16 &&
            v->l.dtype_size == 2 && !strcmp(v->dtype, "bfloat16") && !v->l.mla &&
            v->side != v->peer_role)
            nsaw++;
        else
            printf("  peer layout seen by %s: heads %u from %u, item_len %llu, bases null %d\n",
                   v->side == KVX_ROLE_PREFILL ? "prefill" : "decode", v->l.num_kv_heads,
                   v->l.head_begin, (unsigned long long)v->item0, v->null_bases);
    }
    /* a connection per (decode rank, prefill rank it targets), seen on both ends */
    CHECK(nsaw == g_nseen && nsaw == 2 * (ptp > dtp ? ptp : dtp),
          "%s: kvx_boot_peer.layout on both sides carries the peer's shape (%d of %d right)", what,
          nsaw, g_nseen);
    pthread_mutex_unlock(&g_mu);
    for (i = 0; i < dtp; i++) kvx_receiver_destroy(r[i]);
    for (i = 0; i < ptp; i++) kvx_sender_destroy(s[i]);
    for (i = 0; i < dtp; i++) { kvx_engine_destroy(de[i]); bt_pool_free(&dp[i]); }
    for (i = ptp - 1; i >= 0; i--) { kvx_engine_destroy(pe[i]); bt_pool_free(&pp[i]); }
}

/* A decode rank whose layers the prefill does not hold: refused, naming why. */
static void refuse_disjoint(void) {
    bt_pool pp, dp;
    kvx_engine *pe, *de;
    kvx_receiver *r;
    bt_engine_opts o;
    char why[256], addr[64];
    rank_pool(&pp, 8, 0);
    rank_pool(&dp, 8, 0);
    dp.layout.layer_begin = 5; /* the prefill holds layer 0 only */
    memset(&o, 0, sizeof o);
    o.transport = "bootpeek";
    pe = bt_engine(KVX_ROLE_PREFILL, &pp, &o, why, sizeof why);
    if (!pe) { CHECK(0, "disjoint: prefill: %s", why); return; }
    snprintf(addr, sizeof addr, "127.0.0.1:%d", kvx_boot_engine_port(pe));
    o.addr = addr;
    de = bt_engine(KVX_ROLE_DECODE, &dp, &o, why, sizeof why);
    r = mk_recv(de, 77, NULL);
    bt_wait_receivers(&r, 1, bt_is_terminal, 30);
    CHECK(kvx_receiver_poll(r) == KVX_POLL_FAILED &&
              kvx_receiver_result(r) == KVX_ERR_LAYOUT_MISMATCH &&
              strstr(kvx_receiver_error(r), "shares no heads/layers") &&
              strstr(kvx_receiver_error(r), "tp rank 0 of 1"),
          "disjoint layers refused: %s", kvx_receiver_error(r));
    kvx_receiver_destroy(r);
    kvx_engine_destroy(de);
    kvx_engine_destroy(pe);
    bt_pool_free(&pp);
    bt_pool_free(&dp);
}

/* Hybrid state (protocol v4): the hello carries the state shape, the room
   frame the decode's state indices (handed to on_room); SWA state between
   non-MLA ranks holding different heads is refused with kvx_layout_overlap's
   sentence. */
static void state_shape(void) {
    static uint64_t mem[2][3][2 * 32 * 256 / 8];
    bt_pool pp, dp, pp2;
    kvx_buffer st[3][2];
    kvx_engine *pe, *de, *pe2;
    kvx_receiver *r;
    kvx_sender *s;
    bt_engine_opts o;
    char why[256], addr[64];
    int32_t pages[2] = {3, 4}, sidx[3] = {9, 10, 2};
    int k, j, ok;
    rank_pool(&pp, 8, 0);
    rank_pool(&dp, 8, 0);
    rank_pool(&pp2, 4, 0); /* a decode TP 2 rank: heads 0..3 */
    for (k = 0; k < 3; k++) {
        bt_pool *pl = k == 0 ? &pp : k == 1 ? &dp : &pp2;
        for (j = 0; j < 2; j++) {
            memset(&st[k][j], 0, sizeof st[k][j]);
            st[k][j].base = mem[0][k] + j * (32 * 256 / 8);
            st[k][j].length = 32 * 256;
            st[k][j].item_len = 256;
        }
        pl->layout.state = st[k];
        pl->layout.num_state = 2;
        pl->layout.state_type = KVX_STATE_SWA;
    }
    pthread_mutex_lock(&g_mu);
    g_nseen = 0;
    pthread_mutex_unlock(&g_mu);
    memset(&o, 0, sizeof o);
    o.transport = "bootpeek";
    pe = bt_engine(KVX_ROLE_PREFILL, &pp, &o, why, sizeof why);
    if (!pe) { CHECK(0, "state: prefill: %s", why); return; }
    snprintf(addr, sizeof addr, "127.0.0.1:%d", kvx_boot_engine_port(pe));
    o.addr = addr;
    de = bt_engine(KVX_ROLE_DECODE, &dp, &o, why, sizeof why);
    if (!de) { CHECK(0, "state: decode: %s", why); return; }
    s = mk_send(pe, 501);
    r = mk_recv(de, 501, NULL);
    bt_wait_receivers(&r, 1, bt_is_ready, 30);
    CHECK(kvx_receiver_init_state(r, pages, 2, -1, sidx, 3) == KVX_OK, "state: receiver init with 3 state indices");
    ok = bt_wait_senders(&s, 1, bt_is_ready, 30);
    pthread_mutex_lock(&g_mu);
    CHECK(ok && g_room_nstate == 3 && g_room_state[0] == 9 && g_room_state[1] == 10 && g_room_state[2] == 2,
          "state: the room frame hands the decode's state indices to on_room (%u: %d %d %d)",
          g_room_nstate, g_room_state[0], g_room_state[1], g_room_state[2]);
    ok = 0;
    for (k = 0; k < g_nseen; k++)
        ok += g_seen[k].l.num_state == 2 && g_seen[k].l.state_type == KVX_STATE_SWA && g_seen[k].state0 == 256;
    CHECK(ok == 2 && g_nseen == 2, "state: both sides see the peer's state shape (%d of %d)", ok, g_nseen);
    pthread_mutex_unlock(&g_mu);
    kvx_receiver_destroy(r);
    kvx_sender_destroy(s);
    kvx_engine_destroy(de);
    /* decode TP 2 rank 0 (heads 0..3) against the prefill (heads 0..7), both with SWA state */
    memset(&o, 0, sizeof o);
    o.transport = "bootpeek";
    o.addr = addr;
    o.tp_size = 2;
    pe2 = bt_engine(KVX_ROLE_DECODE, &pp2, &o, why, sizeof why);
    if (!pe2) { CHECK(0, "state: decode tp 2: %s", why); return; }
    de = pe2;
    pe2 = NULL;
    r = mk_recv(de, 502, NULL);
    bt_wait_receivers(&r, 1, bt_is_terminal, 30);
    CHECK(kvx_receiver_poll(r) == KVX_POLL_FAILED && kvx_receiver_result(r) == KVX_ERR_LAYOUT_MISMATCH &&
              strstr(kvx_receiver_error(r), "sliding-window state between ranks holding different heads") &&
              strstr(kvx_receiver_error(r), "SGLang refuses"),
          "state: SWA state with heterogeneous TP (non-MLA) refused: %s", kvx_receiver_error(r));
    kvx_receiver_destroy(r);
    kvx_engine_destroy(de);
    kvx_engine_destroy(pe2);
    kvx_engine_destroy(pe);
    bt_pool_free(&pp);
    bt_pool_free(&dp);
    bt_pool_free(&pp2);
}

int main(void) {
    bt_name = "test_boot_layout";
    signal(SIGPIPE, SIG_IGN);
    if (kvx_transport_register(peek_backend()) != KVX_OK) {
        CHECK(0, "register bootpeek");
        return bt_finish();
    }
    hetero(1, 2);
    hetero(2, 1);
    hetero(4, 2);
    hetero(2, 4);
    refuse_disjoint();
    state_shape();
    return bt_finish();
}
