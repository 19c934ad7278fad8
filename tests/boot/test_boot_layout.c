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
    uint64_t item0, aux0;
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
        s.null_bases = 1;
        for (i = 0; i < p->layout->num_buffers; i++)
            if (p->layout->buffers[i].base || p->layout->buffers[i].length) s.null_bases = 0;
        snprintf(s.dtype, sizeof s.dtype, "%s", p->layout->dtype ? p->layout->dtype : "(null)");
    }
    pthread_mutex_lock(&g_mu);
    if (g_nseen < 16) g_seen[g_nseen++] = s;
    pthread_mutex_unlock(&g_mu);
}

static kvx_result peek_init(kvx_engine *e, char *why, size_t wl) {
    kvx_boot *b;
    kvx_boot_hooks h;
    kvx_result r;
    memset(&h, 0, sizeof h);
    h.on_connect = peek_connect;
    r = kvx_boot_create(e, &h, "peek", 4, &b, why, wl);
    if (r == KVX_OK) kvx_engine_set_backend_data(e, b);
    return r;
}

static const kvx_backend *peek_backend(void) {
    static kvx_backend bk;
    return kvx__backend_table(&bk, "bootpeek", peek_init, kvx__boot_fake_hooks);
}

static kvx_receiver *mk_recv(kvx_engine *e, uint64_t room, const char *addr) {
    kvx_room_desc rd;
    kvx_receiver *r = NULL;
    memset(&rd, 0, sizeof rd);
    rd.room = room;
    rd.bootstrap_addr = addr;
    kvx_receiver_create(e, &rd, &r);
    return r;
}

static kvx_sender *mk_send(kvx_engine *e, uint64_t room) {
    kvx_room_desc rd;
    kvx_sender *s = NULL;
    memset(&rd, 0, sizeof rd);
    rd.room = room;
    kvx_sender_create(e, &rd, &s);
    return s;
}

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
    for (i = 0; i < ptp; i++) {
        rank_pool(&pp[i], 8u / (uint32_t)ptp, (uint32_t)i * (8u / (uint32_t)ptp));
        memset(&o, 0, sizeof o);
        o.transport = "bootpeek";
        o.tp_size = ptp; o.tp_rank = i;
        o.port = port;
        pe[i] = bt_engine(KVX_ROLE_PREFILL, &pp[i], &o, why, sizeof why);
        if (!pe[i]) { CHECK(0, "%s: prefill rank %d: %s", what, i, why); return; }
        if (!i) port = kvx_boot_engine_port(pe[0]);
    }
    snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
    for (i = 0; i < dtp; i++) {
        rank_pool(&dp[i], 8u / (uint32_t)dtp, (uint32_t)i * (8u / (uint32_t)dtp));
        memset(&o, 0, sizeof o);
        o.transport = "bootpeek";
        o.tp_size = dtp; o.tp_rank = i;
        o.addr = addr;
        de[i] = bt_engine(KVX_ROLE_DECODE, &dp[i], &o, why, sizeof why);
        if (!de[i]) { CHECK(0, "%s: decode rank %d: %s", what, i, why); return; }
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
    return bt_finish();
}
