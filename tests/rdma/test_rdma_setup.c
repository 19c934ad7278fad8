/* test_rdma_setup - the rdma transport in one process on softverbs:
   engine creation that fails with a clear sentence (no verbs library, a
   library that is not libibverbs, no devices, unknown device, empty GID,
   bad settings, GPU memory without a dma-buf op in desc.mem); two receivers whose
   completion tags collide (the second waits for the first); a broken
   idle connection on either side that the next room repairs; receivers
   and senders destroyed mid-transfer (no byte lands afterwards); a room
   of zero pages; init errors; the stats API; every numeric row of
   kvx__rdma_table refusing an out-of-range value from its variable and
   from its desc.rdma field, and KVX_ZERO asking for 0. */
#define KVX_IMPLEMENTATION
#define KVX_WITH_RDMA
#include "rdma_test.h"

static char lib[4096];
static kvx_mem_ops try_mem; /* try_engine's desc.mem */
static kvx_rdma_desc try_rdma; /* and desc.rdma */

typedef struct side {
    ex_pool pool;
    kvx_engine *e;
} side;

static kvx_engine *try_engine(kvx_role role, const kvx_layout *l, kvx_result *res, char *why,
                              size_t wl) {
    kvx_engine_desc d;
    kvx_engine *e = NULL;
    memset(&d, 0, sizeof d);
    d.role = role;
    d.transport = "rdma";
    d.layout = *l;
    d.mem = try_mem;
    d.rdma = try_rdma;
    d.logger.func = rt_log;
    d.logger.level = KVX_LOG_WARN;
    d.boot.host = "127.0.0.1";
    d.boot.port = -1;
    d.bootstrap_addr = "127.0.0.1:1";
    why[0] = 0;
    kvx_rdma_register();
    *res = kvx_engine_create(&d, &e, why, wl);
    return e;
}

static void creation_failures(void) {
    ex_pool p;
    kvx_result res;
    char why[KVX_ERROR_MAX];
    kvx_engine *e;
    kvx_buffer gbufs[8];
    kvx_layout gl;
    struct stat st;
    ex_pool_init(&p, &rt_tiny, 64, 16, 4, 1);

    setenv("KVX_IBVERBS_LIBRARY", "/nonexistent/libibverbs.so.1", 1);
    e = try_engine(KVX_ROLE_PREFILL, &p.layout, &res, why, sizeof why);
    CHECK(!e && res == KVX_ERR_NOT_FOUND && strstr(why, "cannot load the verbs library") &&
          strstr(why, "/nonexistent/libibverbs.so.1") && strstr(why, "KVX_IBVERBS_LIBRARY"),
          "missing verbs library: %s (%s)", kvx_result_str(res), why);

    setenv("KVX_IBVERBS_LIBRARY", "libm.so.6", 1);
    e = try_engine(KVX_ROLE_PREFILL, &p.layout, &res, why, sizeof why);
    CHECK(!e && res == KVX_ERR_NOT_FOUND && strstr(why, "has no symbol ibv_"),
          "a library that is not libibverbs: %s", why);

    if (stat("/sys/class/infiniband", &st) != 0) {
        void *h = dlopen("libibverbs.so.1", RTLD_NOW | RTLD_LOCAL);
        if (h) {
            dlclose(h);
            setenv("KVX_IBVERBS_LIBRARY", "libibverbs.so.1", 1);
            e = try_engine(KVX_ROLE_DECODE, &p.layout, &res, why, sizeof why);
            CHECK(!e && res == KVX_ERR_NOT_FOUND && strstr(why, "no RDMA device found") &&
                  strstr(why, "rdma link add"),
                  "the real libibverbs on a host without RDMA devices: %s", why);
        } else {
            printf("     (libibverbs.so.1 is not installed: its no-device case is not run)\n");
        }
    }

    setenv("KVX_IBVERBS_LIBRARY", lib, 1);
    setenv("KVX_IB_DEVICE", "mlx5_9", 1);
    e = try_engine(KVX_ROLE_PREFILL, &p.layout, &res, why, sizeof why);
    CHECK(!e && res == KVX_ERR_BAD_CONFIG && strstr(why, "mlx5_9") && strstr(why, "softverbs0"),
          "unknown KVX_IB_DEVICE lists the devices present: %s", why);
    setenv("KVX_IB_DEVICE", "softverbs0:1", 1);
    e = try_engine(KVX_ROLE_PREFILL, &p.layout, &res, why, sizeof why);
    CHECK(e && res == KVX_OK, "KVX_IB_DEVICE=softverbs0:1 is accepted (%s)", why);
    kvx_engine_destroy(e);
    unsetenv("KVX_IB_DEVICE");

    setenv("KVX_IB_GID_INDEX", "0", 1);
    e = try_engine(KVX_ROLE_PREFILL, &p.layout, &res, why, sizeof why);
    CHECK(!e && res == KVX_ERR_BAD_CONFIG && strstr(why, "KVX_IB_GID_INDEX=0") && strstr(why, "no GID"),
          "an empty GID index: %s", why);
    unsetenv("KVX_IB_GID_INDEX");


    setenv("SOFTVERBS_MAX_MR_SIZE", "4096", 1); /* every page its own region */
    e = try_engine(KVX_ROLE_DECODE, &p.layout, &res, why, sizeof why);
    CHECK(e && res == KVX_OK, "registrations split at a max_mr_size of 4096 (%s)", why);
    kvx_engine_destroy(e);
    unsetenv("SOFTVERBS_MAX_MR_SIZE");

    memcpy(gbufs, p.bufs, sizeof gbufs);
    gbufs[3].mem = KVX_MEM_CUDA;
    gbufs[3].device = 1;
    gl = p.layout;
    gl.buffers = gbufs;
    e = try_engine(KVX_ROLE_DECODE, &gl, &res, why, sizeof why);
    CHECK(!e && res == KVX_ERR_INVALID_ARGUMENT &&
          strstr(why, "GPU memory registration needs dma-buf export in desc.mem") &&
          strstr(why, "kvx_cuda_mem_ops") && strstr(why, "KV buffer 3"),
          "GPU memory without a dma-buf op in desc.mem: %s", why);
    ex_pool_free(&p);
}

/* Engine creation with one setting out of range: refused, naming the
   variable and the field. */
static int refused(const kvx__setting *t, const kvx_layout *l, const char *from, double v) {
    kvx_result res;
    char why[KVX_ERROR_MAX];
    kvx_engine *e = try_engine(KVX_ROLE_DECODE, l, &res, why, sizeof why);
    CHECK(!e && res == KVX_ERR_BAD_CONFIG && strstr(why, t->env) && strstr(why, t->field),
          "%s %s = %g is refused naming it: %s", t->env, from, v, why);
    kvx_engine_destroy(e);
    return !e;
}

/* Every numeric row of kvx__rdma_table (a new row is covered by itself):
   a value above its range, from the variable and from the desc field, and
   one below it from the variable where that is not the default. Then the
   KVX_ZERO rule on the resolved settings. */
static void settings_ranges(void) {
    ex_pool p;
    kvx_result res;
    char why[KVX_ERROR_MAX], v[64];
    kvx_engine *e;
    kvx_engine_desc d;
    size_t i, rows = 0;
    ex_pool_init(&p, &rt_tiny, 64, 16, 4, 1);
    for (i = 0; i < KVX__COUNT(kvx__rdma_table); i++) {
        const kvx__setting *t = &kvx__rdma_table[i];
        double lo = t->min - 1;
        if (t->kind == KVX__S_STR || t->kind == KVX__S_ENUM) continue;
        rows++;
        snprintf(v, sizeof v, "%.17g", t->max + 1);
        setenv(t->env, v, 1);
        refused(t, &p.layout, "(variable)", t->max + 1);
        unsetenv(t->env);
        if (lo != t->def && (lo != 0 || t->zero) && t->kind != KVX__S_DBL) {
            snprintf(v, sizeof v, "%.17g", lo);
            setenv(t->env, v, 1);
            refused(t, &p.layout, "(variable)", lo);
            unsetenv(t->env);
        }
        memset(&d, 0, sizeof d);
        kvx__setting_put(t, &d, t->max + 1); /* rows are over the engine desc */
        try_rdma = d.rdma;
        refused(t, &p.layout, t->field, t->max + 1);
        memset(&try_rdma, 0, sizeof try_rdma);
    }
    CHECK(rows == 14, "%u numeric rows in kvx__rdma_table", (unsigned)rows);

    try_rdma.retry_cnt = KVX_ZERO;
    try_rdma.gid_index = 0;   /* auto */
    try_rdma.rnr_retry = 3;
    try_rdma.relaxed_ordering = KVX_ZERO;
    setenv("KVX_IB_TIMEOUT", "0", 1);
    setenv("KVX_IB_RNR_RETRY", "5", 1);
    e = try_engine(KVX_ROLE_DECODE, &p.layout, &res, why, sizeof why);
    CHECK(e && res == KVX_OK, "an engine with KVX_ZERO fields (%s)", why);
    if (e) {
        const kvx_rdma_desc *c = &kvx__rdma_re(e)->cfg;
        CHECK(c->retry_cnt == 0, "desc.rdma.retry_cnt = KVX_ZERO gives 0 (%d)", c->retry_cnt);
        CHECK(c->relaxed_ordering == 0, "relaxed_ordering = KVX_ZERO gives 0 (%d)",
              c->relaxed_ordering);
        CHECK(c->timeout == 0, "KVX_IB_TIMEOUT=0 gives 0 (%d)", c->timeout);
        CHECK(c->rnr_retry == 5, "the variable overrides the field (%d)", c->rnr_retry);
        CHECK(c->gid_index == -1 && c->qps == 2 && c->max_msg == 1 << 20 && c->sl == 0 &&
              c->fence_timeout_s == 2, "0 = the default: gid auto %d, qps %d, max_msg %d",
              c->gid_index, c->qps, c->max_msg);
    }
    kvx_engine_destroy(e);
    unsetenv("KVX_IB_TIMEOUT");
    unsetenv("KVX_IB_RNR_RETRY");
    memset(&try_rdma, 0, sizeof try_rdma);
    setenv("KVX_IB_GID_INDEX", "-1", 1);
    setenv("KVX_IB_QPS", "0", 1);
    e = try_engine(KVX_ROLE_DECODE, &p.layout, &res, why, sizeof why);
    CHECK(e && kvx__rdma_re(e)->cfg.gid_index == -1 && kvx__rdma_re(e)->cfg.qps == 2,
          "KVX_IB_GID_INDEX=-1 is auto, KVX_IB_QPS=0 the default (%s)", why);
    kvx_engine_destroy(e);
    unsetenv("KVX_IB_GID_INDEX");
    unsetenv("KVX_IB_QPS");
    ex_pool_free(&p);
}

static void dmabuf_op(void) {
    ex_pool p;
    kvx_buffer gbufs[8];
    kvx_layout gl;
    kvx_result res;
    char why[KVX_ERROR_MAX];
    kvx_engine *e;
    ex_pool_init(&p, &rt_tiny, 64, 16, 4, 1);
    memcpy(gbufs, p.bufs, sizeof gbufs);
    gbufs[2].mem = KVX_MEM_CUDA;
    gl = p.layout;
    gl.buffers = gbufs;
    try_mem.dmabuf_fd = rt_fake_dmabuf;
    e = try_engine(KVX_ROLE_DECODE, &gl, &res, why, sizeof why);
    CHECK(!e && res == KVX_ERR_TRANSPORT && strstr(why, "cannot register KV buffer 2") &&
          rt_fd_given >= 0 && fcntl(rt_fd_given, F_GETFD) == -1,
          "GPU memory through desc.mem.dmabuf_fd reaches ibv_reg_dmabuf_mr (softverbs refuses "
          "it) and the fd is closed: %s", why);
    memset(&try_mem, 0, sizeof try_mem);
    ex_pool_free(&p);
}

static int pair_up(side *pf, side *dc) {
    char why[KVX_ERROR_MAX], addr[64];
    ex_pool_init(&pf->pool, &rt_tiny, 512, 16, 16, 3);
    ex_pool_init(&dc->pool, &rt_tiny, 512, 16, 16, 4);
    pf->e = rt_engine(KVX_ROLE_PREFILL, &pf->pool.layout, NULL, why, sizeof why);
    if (!pf->e) { printf("prefill engine: %s\n", why); return -1; }
    snprintf(addr, sizeof addr, "127.0.0.1:%d", kvx_boot_engine_port(pf->e));
    dc->e = rt_engine(KVX_ROLE_DECODE, &dc->pool.layout, addr, why, sizeof why);
    if (!dc->e) { printf("decode engine: %s\n", why); return -1; }
    return 0;
}

typedef struct xfer {
    uint64_t room;
    uint32_t n;
    int32_t sp[64], dp[64];
    int32_t sslot, dslot;
    kvx_sender *s;
    kvx_receiver *r;
} xfer;

static int wait_state(kvx_sender *s, kvx_receiver *r, kvx_poll want, double t) {
    double end = rt_now() + t;
    while (rt_now() < end) {
        if (s && kvx_sender_poll(s) >= want) return 1;
        if (r && kvx_receiver_poll(r) >= want) return 1;
        if ((s && kvx_sender_poll(s) == KVX_POLL_FAILED) || (r && kvx_receiver_poll(r) == KVX_POLL_FAILED))
            return 0;
        rt_sleep(0.001);
    }
    return 0;
}

static int wait_terminal_r(kvx_receiver *r, double t) {
    double end = rt_now() + t;
    while (rt_now() < end) {
        kvx_poll p = kvx_receiver_poll(r);
        if (p == KVX_POLL_FAILED || p == KVX_POLL_SUCCESS) return 1;
        rt_sleep(0.001);
    }
    return 0;
}
static int wait_terminal_s(kvx_sender *s, double t) {
    double end = rt_now() + t;
    while (rt_now() < end) {
        kvx_poll p = kvx_sender_poll(s);
        if (p == KVX_POLL_FAILED || p == KVX_POLL_SUCCESS) return 1;
        rt_sleep(0.001);
    }
    return 0;
}

static void xfer_open(side *pf, side *dc, xfer *x, uint64_t room, uint32_t n) {
    kvx_room_desc rd;
    memset(x, 0, sizeof *x);
    x->room = room;
    x->n = n;
    ex_alloc_pages(&pf->pool, x->sp, n);
    ex_alloc_pages(&dc->pool, x->dp, n);
    x->sslot = ex_alloc_slot(&pf->pool);
    x->dslot = ex_alloc_slot(&dc->pool);
    ex_pages_pattern(&pf->pool, room, x->sp, n, 1);
    ex_aux_write(&pf->pool, room, x->sslot);
    ex_aux_clear(&dc->pool, x->dslot);
    memset(&rd, 0, sizeof rd);
    rd.room = room;
    kvx_receiver_create(dc->e, &rd, &x->r);
    kvx_sender_create(pf->e, &rd, &x->s);
}

static void xfer_close(side *pf, side *dc, xfer *x) {
    kvx_sender_destroy(x->s);
    kvx_receiver_destroy(x->r);
    ex_free_pages(&pf->pool, x->sp, x->n);
    ex_free_pages(&dc->pool, x->dp, x->n);
    ex_free_slot(&pf->pool, x->sslot);
    ex_free_slot(&dc->pool, x->dslot);
}

/* Runs a whole room; 1 when both sides succeed and every byte checks. */
static int xfer_run(side *pf, side *dc, uint64_t room, uint32_t n, char *err, size_t el) {
    xfer x;
    int ok;
    xfer_open(pf, dc, &x, room, n);
    err[0] = 0;
    ok = wait_state(NULL, x.r, KVX_POLL_WAITING_FOR_INPUT, 10) &&
         kvx_receiver_init(x.r, x.dp, n, x.dslot) == KVX_OK &&
         wait_state(x.s, NULL, KVX_POLL_WAITING_FOR_INPUT, 15) &&
         kvx_sender_init(x.s, n, x.sslot) == KVX_OK && kvx_sender_send(x.s, x.sp, n) == KVX_OK &&
         wait_terminal_r(x.r, 15) && wait_terminal_s(x.s, 15) &&
         kvx_receiver_poll(x.r) == KVX_POLL_SUCCESS && kvx_sender_poll(x.s) == KVX_POLL_SUCCESS &&
         ex_pages_pattern(&dc->pool, room, x.dp, n, 0) == 0 && ex_aux_check(&dc->pool, room, x.dslot);
    if (!ok) snprintf(err, el, "receiver %s (%s), sender %s (%s)", kvx_poll_str(kvx_receiver_poll(x.r)),
                      kvx_receiver_error(x.r), kvx_poll_str(kvx_sender_poll(x.s)),
                      kvx_sender_error(x.s));
    xfer_close(pf, dc, &x);
    return ok;
}

/* The listed connection of an engine (its only peer here). */
static kvx__rdma_pair *the_pair(kvx_engine *e) {
    kvx__rdma_engine *re = kvx__rdma_re(e);
    kvx__rdma_pair *p;
    pthread_mutex_lock(&re->mu);
    p = re->pairs;
    if (p) kvx__rdma_pair_ref(p);
    pthread_mutex_unlock(&re->mu);
    return p;
}

static void transfers(void) {
    side pf, dc;
    char err[1024];
    kvx_rdma_stats ps, ds;
    kvx__rdma_pair *p;
    xfer a, b;
    uint64_t ra = 0x1234567800000042ull, rb = ra ^ 0x0000000100000001ull;
    int ok;
    if (pair_up(&pf, &dc)) { CHECK(0, "engines"); return; }

    CHECK(xfer_run(&pf, &dc, 1001, 37, err, sizeof err), "a room of 37 scattered pages %s", err);

    /* rooms whose ids fold to the same 32-bit tag: the second waits */
    CHECK(kvx__rdma_tag(ra) == kvx__rdma_tag(rb) && ra != rb, "rooms %llx and %llx share tag %08x",
          (unsigned long long)ra, (unsigned long long)rb, kvx__rdma_tag(ra));
    xfer_open(&pf, &dc, &a, ra, 20);
    xfer_open(&pf, &dc, &b, rb, 30);
    wait_state(NULL, a.r, KVX_POLL_WAITING_FOR_INPUT, 10);
    wait_state(NULL, b.r, KVX_POLL_WAITING_FOR_INPUT, 10);
    kvx_receiver_init(a.r, a.dp, a.n, a.dslot);
    kvx_receiver_init(b.r, b.dp, b.n, b.dslot);
    ok = wait_state(a.s, NULL, KVX_POLL_WAITING_FOR_INPUT, 10);
    rt_sleep(0.2);
    CHECK(ok && kvx_sender_poll(b.s) == KVX_POLL_BOOTSTRAPPING,
          "the second receiver's destination waits while the first is open (%s)",
          kvx_poll_str(kvx_sender_poll(b.s)));
    kvx_sender_init(a.s, a.n, a.sslot);
    kvx_sender_send(a.s, a.sp, a.n);
    wait_terminal_r(a.r, 10);
    CHECK(kvx_receiver_poll(a.r) == KVX_POLL_SUCCESS && !ex_pages_pattern(&dc.pool, ra, a.dp, a.n, 0),
          "the first room succeeded and verified (%s)", kvx_receiver_error(a.r));
    ok = wait_state(b.s, NULL, KVX_POLL_WAITING_FOR_INPUT, 10);
    CHECK(ok, "then the second's destination goes out (%s)", kvx_poll_str(kvx_sender_poll(b.s)));
    kvx_sender_init(b.s, b.n, b.sslot);
    kvx_sender_send(b.s, b.sp, 11);
    kvx_sender_send(b.s, b.sp + 11, b.n - 11);
    wait_terminal_r(b.r, 10);
    CHECK(kvx_receiver_poll(b.r) == KVX_POLL_SUCCESS && !ex_pages_pattern(&dc.pool, rb, b.dp, b.n, 0) &&
          ex_aux_check(&dc.pool, rb, b.dslot),
          "and succeeds with every byte (%s)", kvx_receiver_error(b.r));
    xfer_close(&pf, &dc, &a);
    xfer_close(&pf, &dc, &b);

    /* the prefill's side of the connection breaks while idle: the next
       room asks the decode side to reconnect and then goes through */
    p = the_pair(pf.e);
    kvx__rdma_pair_kill(kvx__rdma_re(pf.e), p, KVX_ERR_TRANSPORT, "test: prefill side broken");
    kvx__rdma_pair_unref(kvx__rdma_re(pf.e), p);
    CHECK(xfer_run(&pf, &dc, 1002, 25, err, sizeof err),
          "after the prefill's side broke while idle, the next room reconnects %s", err);
    kvx_rdma_stats_get(pf.e, &ps);
    CHECK(ps.pairs == 2, "the prefill accepted a second connection (%llu)", (unsigned long long)ps.pairs);

    /* the decode's side breaks while idle: its next receiver redials */
    p = the_pair(dc.e);
    kvx__rdma_pair_kill(kvx__rdma_re(dc.e), p, KVX_ERR_TRANSPORT, "test: decode side broken");
    kvx__rdma_pair_unref(kvx__rdma_re(dc.e), p);
    CHECK(xfer_run(&pf, &dc, 1003, 25, err, sizeof err),
          "after the decode's side broke while idle, the next room redials %s", err);
    kvx_rdma_stats_get(dc.e, &ds);
    CHECK(ds.pairs == 3, "the decode side connected three times (%llu)", (unsigned long long)ds.pairs);

    /* a room of zero pages carries only its aux row */
    {
        xfer z;
        xfer_open(&pf, &dc, &z, 1004, 0);
        wait_state(NULL, z.r, KVX_POLL_WAITING_FOR_INPUT, 10);
        kvx_receiver_init(z.r, NULL, 0, z.dslot);
        wait_state(z.s, NULL, KVX_POLL_WAITING_FOR_INPUT, 10);
        kvx_sender_init(z.s, 0, z.sslot);
        kvx_sender_send(z.s, NULL, 0);
        wait_terminal_r(z.r, 10);
        CHECK(kvx_receiver_poll(z.r) == KVX_POLL_SUCCESS && ex_aux_check(&dc.pool, 1004, z.dslot),
              "a room of zero pages moves its aux row (%s)", kvx_receiver_error(z.r));
        xfer_close(&pf, &dc, &z);
    }

    /* init errors fail the room with a sentence on both sides */
    {
        xfer y;
        xfer_open(&pf, &dc, &y, 1005, 10);
        wait_state(NULL, y.r, KVX_POLL_WAITING_FOR_INPUT, 10);
        kvx_receiver_init(y.r, y.dp, 10, y.dslot);
        wait_state(y.s, NULL, KVX_POLL_WAITING_FOR_INPUT, 10);
        CHECK(kvx_sender_init(y.s, 9, y.sslot) == KVX_ERR_INVALID_ARGUMENT &&
              strstr(kvx_sender_error(y.s), "asked for 10"),
              "a sender declaring 9 pages for 10 fails: %s", kvx_sender_error(y.s));
        wait_terminal_r(y.r, 10);
        CHECK(kvx_receiver_poll(y.r) == KVX_POLL_FAILED && strstr(kvx_receiver_error(y.r), "asked for 10"),
              "and the receiver learns why: %s", kvx_receiver_error(y.r));
        xfer_close(&pf, &dc, &y);
        xfer_open(&pf, &dc, &y, 1006, 10);
        wait_state(NULL, y.r, KVX_POLL_WAITING_FOR_INPUT, 10);
        kvx_receiver_init(y.r, y.dp, 10, y.dslot);
        wait_state(y.s, NULL, KVX_POLL_WAITING_FOR_INPUT, 10);
        CHECK(kvx_sender_init(y.s, 10, -1) == KVX_ERR_INVALID_ARGUMENT &&
              strstr(kvx_sender_error(y.s), "aux"),
              "a sender without aux for a receiver that wants it fails: %s", kvx_sender_error(y.s));
        xfer_close(&pf, &dc, &y);
    }

    /* the receiver is destroyed mid-transfer: the sender fails with the
       reason, and nothing lands in the pages after destroy returns */
    {
        xfer m;
        uint32_t k;
        double t0, took;
        uint8_t *snap;
        size_t page = (size_t)dc.pool.bufs[0].item_len;
        int same = 1;
        xfer_open(&pf, &dc, &m, 1007, 64);
        wait_state(NULL, m.r, KVX_POLL_WAITING_FOR_INPUT, 10);
        kvx_receiver_init(m.r, m.dp, 64, m.dslot);
        wait_state(m.s, NULL, KVX_POLL_WAITING_FOR_INPUT, 10);
        kvx_sender_init(m.s, 64, m.sslot);
        for (k = 0; k < 16; k += 2) kvx_sender_send(m.s, m.sp + k, 2);
        t0 = rt_now();
        kvx_receiver_destroy(m.r);
        took = rt_now() - t0;
        snap = (uint8_t *)malloc(64 * page);
        for (k = 0; k < 64; k++)
            memcpy(snap + k * page, (char *)dc.pool.bufs[0].base + (size_t)m.dp[k] * page, page);
        for (k = 16; k < 64; k += 8) kvx_sender_send(m.s, m.sp + k, 8);
        wait_terminal_s(m.s, 10);
        rt_sleep(0.2);
        for (k = 0; k < 64; k++)
            if (memcmp(snap + k * page, (char *)dc.pool.bufs[0].base + (size_t)m.dp[k] * page, page))
                same = 0;
        free(snap);
        CHECK(took < 3.0, "destroying a receiver mid-transfer returns in %.2f s", took);
        CHECK(kvx_sender_poll(m.s) == KVX_POLL_FAILED && strstr(kvx_sender_error(m.s), "destroyed"),
              "the sender fails with the reason: %s", kvx_sender_error(m.s));
        CHECK(same, "no byte of the room landed after kvx_receiver_destroy returned");
        kvx_sender_destroy(m.s);
        ex_free_pages(&pf.pool, m.sp, m.n);
        ex_free_pages(&dc.pool, m.dp, m.n);
    }

    /* the sender is destroyed mid-transfer */
    {
        xfer m;
        xfer_open(&pf, &dc, &m, 1008, 40);
        wait_state(NULL, m.r, KVX_POLL_WAITING_FOR_INPUT, 10);
        kvx_receiver_init(m.r, m.dp, 40, m.dslot);
        wait_state(m.s, NULL, KVX_POLL_WAITING_FOR_INPUT, 10);
        kvx_sender_init(m.s, 40, m.sslot);
        kvx_sender_send(m.s, m.sp, 8);
        kvx_sender_destroy(m.s);
        m.s = NULL;
        wait_terminal_r(m.r, 10);
        CHECK(kvx_receiver_poll(m.r) == KVX_POLL_FAILED && strstr(kvx_receiver_error(m.r), "sender was destroyed"),
              "destroying a sender mid-transfer fails the receiver: %s", kvx_receiver_error(m.r));
        xfer_close(&pf, &dc, &m);
    }

    CHECK(xfer_run(&pf, &dc, 1009, 50, err, sizeof err), "the connection still works afterwards %s", err);
    CHECK(kvx_rdma_stats_get(pf.e, &ps) == KVX_OK && ps.wrs > 0 && ps.posts > 0 && ps.posts < ps.wrs,
          "stats: %llu work requests in %llu posts", (unsigned long long)ps.wrs,
          (unsigned long long)ps.posts);
    kvx_engine_destroy(dc.e);
    kvx_engine_destroy(pf.e);
    ex_pool_free(&pf.pool);
    ex_pool_free(&dc.pool);
}

static void stats_api(void) {
    ex_pool p;
    kvx_engine_desc d;
    kvx_engine *e = NULL;
    kvx_rdma_stats s;
    char why[256];
    ex_pool_init(&p, &rt_tiny, 16, 16, 2, 1);
    memset(&d, 0, sizeof d);
    d.role = KVX_ROLE_PREFILL;
    d.transport = "fake";
    d.layout = p.layout;
    kvx_engine_create(&d, &e, why, sizeof why);
    CHECK(kvx_rdma_stats_get(e, &s) == KVX_ERR_INVALID_ARGUMENT && kvx_rdma_stats_get(NULL, &s) ==
          KVX_ERR_INVALID_ARGUMENT, "kvx_rdma_stats_get refuses a non-rdma engine");
    CHECK(kvx_rdma_compiled() == 1, "kvx_rdma_compiled() is 1 with KVX_WITH_RDMA");
    kvx_engine_destroy(e);
    ex_pool_free(&p);
}

int main(void) {
    char svdir[128];
    rt_name = "test_rdma_setup";
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (!rt_find_softverbs(lib, sizeof lib))
        return printf("SKIP: libsoftverbs.so not found (make tests/softverbs/libsoftverbs.so)\n"), 77;
    snprintf(svdir, sizeof svdir, "/tmp/kvx_test_%d_sv", (int)getpid());
    setenv("SOFTVERBS_DIR", svdir, 1);
    setenv("KVX_IB_FENCE_TIMEOUT", "2", 1);
    creation_failures();
    settings_ranges();
    dmabuf_op();
    setenv("KVX_IBVERBS_LIBRARY", lib, 1);
    transfers();
    stats_api();
    return rt_finish();
}
