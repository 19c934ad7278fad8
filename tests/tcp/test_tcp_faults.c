/* test_tcp_faults - the tcp transport when things go wrong. Every case
   ends in Failed with a sentence that says what happened and names the
   peer, within a bounded time; nothing hangs.

   - the prefill process killed (kill -9) in the middle of the stream
   - the decode process killed in the middle of the stream; then a new
     decode process gets its rooms through (a new link)
   - a receiver that stops reading (SIGSTOP): the sender blocks, its memory
     stays bounded; resumed, every byte arrives; stopped for longer than
     KVX_TCP_TIMEOUT, the sender's rooms fail
   - a receiver destroyed, a sender destroyed, each side aborting, in the
     middle of a transfer; the link survives for the next room
   - init disagreeing with the destination (pages, aux)
   - engines destroyed with rooms in flight
   - a receiver whose KV never comes (KVX_WAITING_TIMEOUT) */
#define KVX_IMPLEMENTATION
#include "tcp_test.h"

#define BIG "llama-3.1-8b"

/* ---- an in-process prefill driving many senders ------------------------------ */

typedef struct drive {
    kvx_engine *e;
    ex_pool *p;
    ex_request *reqs;
    uint32_t n, chunk;
    kvx_sender **s;
    int32_t **pages;
    int *started;
} drive;

static void drive_start(drive *d, kvx_engine *e, ex_pool *p, ex_request *reqs, uint32_t n,
                        uint32_t chunk) {
    uint32_t i;
    memset(d, 0, sizeof *d);
    d->e = e; d->p = p; d->reqs = reqs; d->n = n; d->chunk = chunk;
    d->s = (kvx_sender **)calloc(n, sizeof *d->s);
    d->pages = (int32_t **)calloc(n, sizeof *d->pages);
    d->started = (int *)calloc(n, sizeof *d->started);
    for (i = 0; i < n; i++) {
        kvx_room_desc rd;
        memset(&rd, 0, sizeof rd);
        rd.room = reqs[i].room;
        d->pages[i] = (int32_t *)malloc((reqs[i].pages + 1) * sizeof(int32_t));
        ex_alloc_pages(p, d->pages[i], reqs[i].pages);
        ex_pages_pattern(p, reqs[i].room, d->pages[i], reqs[i].pages, 1);
        ex_aux_write(p, reqs[i].room, (int32_t)i);
        kvx_sender_create(e, &rd, &d->s[i]);
    }
}

/* Starts senders whose destination arrived; returns how many are terminal. */
static uint32_t drive_pump(drive *d) {
    uint32_t i, done = 0;
    for (i = 0; i < d->n; i++) {
        if (!d->started[i] && kvx_sender_poll(d->s[i]) == KVX_POLL_WAITING_FOR_INPUT) {
            uint32_t sent = 0;
            d->started[i] = 1;
            kvx_sender_init(d->s[i], d->reqs[i].pages, (int32_t)i);
            while (sent < d->reqs[i].pages) {
                uint32_t k = d->reqs[i].pages - sent < d->chunk ? d->reqs[i].pages - sent : d->chunk;
                if (kvx_sender_send(d->s[i], d->pages[i] + sent, k) != KVX_OK) break;
                sent += k;
            }
        }
        if (tt_terminal(kvx_sender_poll(d->s[i]))) done++;
    }
    return done;
}

static uint32_t drive_started(const drive *d) {
    uint32_t i, k = 0;
    for (i = 0; i < d->n; i++) k += d->started[i] != 0;
    return k;
}

static void drive_free(drive *d) {
    uint32_t i;
    for (i = 0; i < d->n; i++) {
        kvx_sender_destroy(d->s[i]);
        ex_free_pages(d->p, d->pages[i], d->reqs[i].pages);
        free(d->pages[i]);
    }
    free(d->s); free(d->pages); free(d->started);
}

/* ---- an in-process decode driving many receivers -------------------------------- */

typedef struct ddrive {
    ex_pool *p;
    ex_request *reqs;
    uint32_t n;
    kvx_receiver **r;
    int32_t **pages;
    int *inited;
} ddrive;

static void ddrive_start(ddrive *d, kvx_engine *e, ex_pool *p, ex_request *reqs, uint32_t n) {
    uint32_t i;
    memset(d, 0, sizeof *d);
    d->p = p; d->reqs = reqs; d->n = n;
    d->r = (kvx_receiver **)calloc(n, sizeof *d->r);
    d->pages = (int32_t **)calloc(n, sizeof *d->pages);
    d->inited = (int *)calloc(n, sizeof *d->inited);
    for (i = 0; i < n; i++) {
        kvx_room_desc rd;
        memset(&rd, 0, sizeof rd);
        rd.room = reqs[i].room;
        d->pages[i] = (int32_t *)malloc((reqs[i].pages + 1) * sizeof(int32_t));
        ex_alloc_pages(p, d->pages[i], reqs[i].pages);
        ex_aux_clear(p, (int32_t)i);
        kvx_receiver_create(e, &rd, &d->r[i]);
    }
}

static uint32_t ddrive_pump(ddrive *d) {
    uint32_t i, done = 0;
    for (i = 0; i < d->n; i++) {
        if (!d->inited[i] && kvx_receiver_poll(d->r[i]) == KVX_POLL_WAITING_FOR_INPUT) {
            d->inited[i] = 1;
            kvx_receiver_init(d->r[i], d->pages[i], d->reqs[i].pages, (int32_t)i);
        }
        if (tt_terminal(kvx_receiver_poll(d->r[i]))) done++;
    }
    return done;
}

static void ddrive_free(ddrive *d) {
    uint32_t i;
    for (i = 0; i < d->n; i++) {
        kvx_receiver_destroy(d->r[i]);
        ex_free_pages(d->p, d->pages[i], d->reqs[i].pages);
        free(d->pages[i]);
    }
    free(d->r); free(d->pages); free(d->inited);
}

static uint64_t total_bytes(const ex_request *r, uint32_t n, const ex_pool *p) {
    uint64_t t = 0;
    uint32_t i;
    for (i = 0; i < n; i++) t += (uint64_t)r[i].pages * kvx_layout_page_bytes(&p->layout);
    return t;
}

/* ---- kill -9 of the prefill ------------------------------------------------------------ */

static void test_kill_prefill(void) {
    uint32_t n = kt_quick() ? 4 : 8, tok = kt_quick() ? 512 : 1024, i, failed = 0, ok = 0,
             named = 0, done;
    ex_request reqs[8];
    ex_pool p;
    tt_proc pr;
    ddrive d;
    kvx_engine *e;
    tt_opts o;
    kvx_tcp_stats st;
    char why[512], addr[64];
    uint64_t total;
    double t0, end;
    int port;
    ex_requests(reqs, n, 41, tok, tok, 16);
    port = tt_spawn_prefill(&pr, 41, n, tok, tok, 8, BIG, 4, NULL);
    CHECK(port > 0, "kill prefill: helper up");
    if (port <= 0) return;
    ex_pool_init(&p, tt_model(BIG), tt_pool_pages(reqs, n), 16, n + 1, 7);
    total = total_bytes(reqs, n, &p);
    snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
    memset(&o, 0, sizeof o);
    o.boot_addr = addr;
    e = tt_engine(KVX_ROLE_DECODE, &p.layout, &o, why, sizeof why);
    ddrive_start(&d, e, &p, reqs, n);
    end = tt_now() + 30;
    do {
        ddrive_pump(&d);
        kvx_tcp_stats_get(e, &st);
    } while (st.bytes_received == 0 && tt_now() < end);
    kill(pr.pid, SIGSTOP); /* frozen mid-stream, then killed there */
    tt_sleep(0.02);
    kvx_tcp_stats_get(e, &st);
    CHECK(st.bytes_received > 0 && st.bytes_received < total,
          "kill prefill: stopped mid-stream (%.1f of %.1f MiB arrived)",
          (double)st.bytes_received / (1 << 20), (double)total / (1 << 20));
    kill(pr.pid, SIGKILL);
    t0 = tt_now();
    do done = ddrive_pump(&d);
    while (done < n && tt_now() < t0 + 10);
    CHECK(done == n, "kill prefill: every room terminal %.2f s after the kill", tt_now() - t0);
    for (i = 0; i < n; i++) {
        const char *err = kvx_receiver_error(d.r[i]);
        if (kvx_receiver_poll(d.r[i]) == KVX_POLL_SUCCESS) {
            ok += ex_pages_pattern(&p, reqs[i].room, d.pages[i], reqs[i].pages, 0) == 0;
            continue;
        }
        failed++;
        if (strstr(err, "prefill") && strstr(err, "127.0.0.1:")) named++;
        if (failed == 1) printf("  first failure: %s\n", err);
    }
    CHECK(failed >= 1, "kill prefill: %u rooms failed, %u finished and verified before", failed, ok);
    CHECK(named == failed, "kill prefill: %u/%u failure sentences name the prefill", named, failed);
    ddrive_free(&d);
    kvx_engine_destroy(e);
    ex_pool_free(&p);
    tt_reap(&pr, 5);
}

/* ---- kill -9 of the decode, then a new decode --------------------------------------------- */

static void test_kill_decode(void) {
    uint32_t n = kt_quick() ? 4 : 8, tok = kt_quick() ? 512 : 1024, i, failed = 0, named = 0, done;
    ex_request reqs[8], reqs2[4];
    ex_pool p;
    tt_proc dp;
    drive d;
    kvx_engine *e;
    tt_opts o;
    kvx_tcp_stats st;
    char why[512], addr[64], line[512];
    double t0, end;
    int stt;
    ex_requests(reqs, n, 51, tok, tok, 16);
    ex_requests(reqs2, 4, 52, 16, 600, 16);
    ex_pool_init(&p, tt_model(BIG), tt_pool_pages(reqs, n) + tt_pool_pages(reqs2, 4), 16, n + 1, 8);
    memset(&o, 0, sizeof o);
    e = tt_engine(KVX_ROLE_PREFILL, &p.layout, &o, why, sizeof why);
    CHECK(e != NULL, "kill decode: prefill engine: %s", why);
    if (!e) return;
    snprintf(addr, sizeof addr, "127.0.0.1:%d", kvx_boot_engine_port(e));
    CHECK(tt_spawn_decode(&dp, addr, 51, n, tok, tok, BIG, NULL) == 0, "kill decode: helper up");
    drive_start(&d, e, &p, reqs, n, 8);
    end = tt_now() + 30;
    do {
        drive_pump(&d);
        kvx_tcp_stats_get(e, &st);
    } while (st.bytes_sent == 0 && tt_now() < end);
    kill(dp.pid, SIGKILL);
    t0 = tt_now();
    do done = drive_pump(&d);
    while (done < n && tt_now() < t0 + 10);
    CHECK(done == n, "kill decode: every sender terminal %.2f s after the kill", tt_now() - t0);
    for (i = 0; i < n; i++) {
        const char *err = kvx_sender_error(d.s[i]);
        if (kvx_sender_poll(d.s[i]) == KVX_POLL_SUCCESS) continue;
        failed++;
        if (strstr(err, "decode") && strstr(err, "127.0.0.1:")) named++;
        if (failed == 1) printf("  first failure: %s\n", err);
    }
    CHECK(failed >= 1, "kill decode: %u senders failed", failed);
    CHECK(named == failed, "kill decode: %u/%u failure sentences name the decode", named, failed);
    drive_free(&d);
    tt_reap(&dp, 5);
    /* a new decode process: a new link, and its rooms arrive */
    CHECK(tt_spawn_decode(&dp, addr, 52, 4, 16, 600, "llama-3.1-8b", NULL) == 0,
          "kill decode: a new decode helper up");
    drive_start(&d, e, &p, reqs2, 4, 4);
    end = tt_now() + 30;
    while (drive_pump(&d) < 4 && tt_now() < end) tt_sleep(0.001);
    for (i = 0, done = 0; i < 4; i++) done += kvx_sender_poll(d.s[i]) == KVX_POLL_SUCCESS;
    CHECK(done == 4, "kill decode: %u/4 rooms to the new decode Success", done);
    CHECK(tt_expect(&dp, "RESULT ", line, sizeof line, 20) && !strcmp(line, "RESULT 4 4 0"),
          "kill decode: the new decode verified every byte (%s)", line);
    drive_free(&d);
    stt = tt_reap(&dp, 10);
    CHECK(WIFEXITED(stt) && WEXITSTATUS(stt) == 0, "kill decode: new decode helper exit %d", stt);
    kvx_tcp_stats_get(e, &st);
    CHECK(st.links_opened == 2 && st.links_lost >= 1, "kill decode: %llu links opened, %llu lost",
          (unsigned long long)st.links_opened, (unsigned long long)st.links_lost);
    kvx_engine_destroy(e);
    ex_pool_free(&p);
}

/* ---- a receiver that stops reading -------------------------------------------------------- */

static void test_slow_receiver(int give_up) {
    uint32_t n = kt_quick() ? 4 : 8, tok = kt_quick() ? 512 : 1024, i, done, failed = 0, named = 0;
    const char *label = give_up ? "stalled receiver" : "slow receiver";
    ex_request reqs[8];
    ex_pool p;
    tt_proc dp;
    drive d;
    kvx_engine *e;
    tt_opts o;
    kvx_tcp_stats st;
    char why[512], addr[64], line[512];
    uint64_t total, b1, b2;
    long rss0, rss1;
    double end, t0;
    int stt;
    ex_requests(reqs, n, 61 + (uint64_t)give_up, tok, tok, 16);
    ex_pool_init(&p, tt_model(BIG), tt_pool_pages(reqs, n), 16, n + 1, 9);
    total = total_bytes(reqs, n, &p);
    memset(&o, 0, sizeof o);
    if (give_up) setenv("KVX_TCP_TIMEOUT", "1", 1);
    e = tt_engine(KVX_ROLE_PREFILL, &p.layout, &o, why, sizeof why);
    unsetenv("KVX_TCP_TIMEOUT");
    CHECK(e != NULL, "%s: prefill engine: %s", label, why);
    if (!e) return;
    snprintf(addr, sizeof addr, "127.0.0.1:%d", kvx_boot_engine_port(e));
    CHECK(tt_spawn_decode(&dp, addr, 61 + (uint64_t)give_up, n, tok, tok, BIG, NULL) == 0,
          "%s: decode helper up", label);
    drive_start(&d, e, &p, reqs, n, 4);
    rss0 = tt_rss_kb(getpid());
    end = tt_now() + 30;
    do {
        drive_pump(&d);
        kvx_tcp_stats_get(e, &st);
    } while ((drive_started(&d) < n || st.bytes_sent == 0) && tt_now() < end);
    kill(dp.pid, SIGSTOP);
    t0 = tt_now();
    tt_sleep(0.5);
    drive_pump(&d);
    kvx_tcp_stats_get(e, &st);
    b1 = st.bytes_sent;
    if (give_up) { /* until every sender failed (observed), bounded for a loaded machine */
        uint32_t k, nf = 0;
        while (nf < n && tt_now() < t0 + 60) {
            drive_pump(&d);
            for (k = 0, nf = 0; k < n; k++) nf += kvx_sender_poll(d.s[k]) == KVX_POLL_FAILED;
            tt_sleep(0.01);
        }
        printf("  senders failed %.1f s after the receiver stalled (KVX_TCP_TIMEOUT=1)\n",
               tt_now() - t0);
    } else {
        while (tt_now() < t0 + 1.5) {
            drive_pump(&d);
            tt_sleep(0.01);
        }
    }
    kvx_tcp_stats_get(e, &st);
    b2 = st.bytes_sent;
    rss1 = tt_rss_kb(getpid());
    if (!give_up) {
        CHECK(b2 < total && b2 - b1 < (8u << 20),
              "%s: the sender blocks (%.1f of %.1f MiB sent, %.1f MiB in the last second)", label,
              (double)b2 / (1 << 20), (double)total / (1 << 20), (double)(b2 - b1) / (1 << 20));
        CHECK(rss1 - rss0 < 64 * 1024, "%s: sender memory grew by %ld KiB while %.0f MiB waited",
              label, rss1 - rss0, (double)(total - b2) / (1 << 20));
        kill(dp.pid, SIGCONT);
        end = tt_now() + 60;
        while ((done = drive_pump(&d)) < n && tt_now() < end) tt_sleep(0.001);
        for (i = 0, done = 0; i < n; i++) done += kvx_sender_poll(d.s[i]) == KVX_POLL_SUCCESS;
        CHECK(done == n, "%s: resumed, %u/%u senders Success", label, done, n);
        CHECK(tt_expect(&dp, "RESULT ", line, sizeof line, 30) && atoi(line + 7) == (int)n,
              "%s: the receiver verified every byte (%s)", label, line);
    } else {
        for (i = 0; i < n; i++) {
            const char *err = kvx_sender_error(d.s[i]);
            if (kvx_sender_poll(d.s[i]) != KVX_POLL_FAILED) continue;
            failed++;
            if (strstr(err, "KVX_TCP_TIMEOUT") && strstr(err, "decode 127.0.0.1:")) named++;
            if (failed == 1) printf("  first failure: %s\n", err);
        }
        CHECK(failed == n, "%s: %u/%u senders failed (KVX_TCP_TIMEOUT=1)", label, failed, n);
        CHECK(named == failed, "%s: %u/%u sentences say KVX_TCP_TIMEOUT and name the decode", label,
              named, failed);
        kill(dp.pid, SIGKILL);
    }
    drive_free(&d);
    stt = tt_reap(&dp, 10);
    if (!give_up) CHECK(WIFEXITED(stt) && WEXITSTATUS(stt) == 0, "%s: decode exit %d", label, stt);
    kvx_engine_destroy(e);
    ex_pool_free(&p);
}

/* ---- aborts and destroys in one process ----------------------------------------------------- */

typedef struct pair {
    ex_pool ps, pr;
    kvx_engine *pe, *de;
} pair;

static int pair_open(pair *x, const char *model, uint32_t pages) {
    tt_opts o;
    char why[512], addr[64];
    ex_pool_init(&x->ps, tt_model(model), pages, 16, 8, 1);
    ex_pool_init(&x->pr, tt_model(model), pages, 16, 8, 2);
    memset(&o, 0, sizeof o);
    x->pe = tt_engine(KVX_ROLE_PREFILL, &x->ps.layout, &o, why, sizeof why);
    if (!x->pe) { printf("  %s\n", why); return -1; }
    snprintf(addr, sizeof addr, "127.0.0.1:%d", kvx_boot_engine_port(x->pe));
    o.boot_addr = addr;
    x->de = tt_engine(KVX_ROLE_DECODE, &x->pr.layout, &o, why, sizeof why);
    if (!x->de) { printf("  %s\n", why); return -1; }
    return 0;
}

static void pair_close(pair *x) {
    kvx_engine_destroy(x->de);
    kvx_engine_destroy(x->pe);
    ex_pool_free(&x->ps);
    ex_pool_free(&x->pr);
}

/* Opens room `room` on both sides, inits both (n pages), sends in chunks
   of 16 pages. hold: the last chunk is kept back, as chunked prefill would
   before its last forward pass, so the room is certainly mid-transfer. */
static int hold;
static void pair_room(pair *x, uint64_t room, uint32_t n, int32_t *sp, int32_t *dp,
                      kvx_sender **s, kvx_receiver **r, int32_t recv_n, int32_t send_aux,
                      int32_t recv_aux) {
    kvx_room_desc rd;
    uint32_t sent = 0, upto = hold && n > 16 ? n - 16 : n;
    memset(&rd, 0, sizeof rd);
    rd.room = room;
    kvx_receiver_create(x->de, &rd, r);
    kvx_sender_create(x->pe, &rd, s);
    tt_wait_ready_r(*r, 10);
    kvx_receiver_init(*r, dp, (uint32_t)recv_n, recv_aux);
    tt_wait_ready_s(*s, 10);
    if (kvx_sender_init(*s, n, send_aux) != KVX_OK) return;
    while (sent < upto) {
        uint32_t k = upto - sent < 16 ? upto - sent : 16;
        kvx_sender_send(*s, sp + sent, k);
        sent += k;
    }
}

static void wait_bytes(kvx_engine *de) {
    kvx_tcp_stats st;
    double end = tt_now() + 10;
    uint64_t b0;
    kvx_tcp_stats_get(de, &st);
    b0 = st.bytes_received;
    do kvx_tcp_stats_get(de, &st);
    while (st.bytes_received == b0 && tt_now() < end);
}

static void test_abort_destroy(void) {
    pair x;
    uint32_t n = kt_quick() ? 32 : 64; /* llama pages: 2 MiB each */
    int32_t sp[64], dp[64];
    kvx_sender *s;
    kvx_receiver *r;
    kvx_tcp_stats st;
    double t0;
    uint32_t i;
    if (pair_open(&x, BIG, 160)) { CHECK(0, "abort: engines"); return; }
    ex_alloc_pages(&x.ps, sp, n);
    ex_alloc_pages(&x.pr, dp, n);
    ex_pages_pattern(&x.ps, 5, sp, n, 1);
    ex_aux_write(&x.ps, 5, 0);
    /* the receiver destroyed mid-transfer */
    hold = 1;
    pair_room(&x, 1, n, sp, dp, &s, &r, (int32_t)n, 0, 0);
    wait_bytes(x.de);
    t0 = tt_now();
    kvx_receiver_destroy(r);
    CHECK(tt_now() - t0 < 1.5, "receiver destroyed mid-transfer in %.3f s", tt_now() - t0);
    CHECK(tt_wait_s(s, 10) == KVX_POLL_FAILED, "its sender failed");
    CHECK_STR(kvx_sender_error(s), "receiver was destroyed");
    kvx_sender_destroy(s);
    /* the sender destroyed mid-transfer */
    pair_room(&x, 2, n, sp, dp, &s, &r, (int32_t)n, 0, 0);
    wait_bytes(x.de);
    t0 = tt_now();
    kvx_sender_destroy(s);
    CHECK(tt_now() - t0 < 1.5, "sender destroyed mid-transfer in %.3f s", tt_now() - t0);
    CHECK(tt_wait_r(r, 10) == KVX_POLL_FAILED, "its receiver failed");
    CHECK_STR(kvx_receiver_error(r), "sender was destroyed");
    kvx_receiver_destroy(r);
    /* aborts carry the reason across */
    pair_room(&x, 3, n, sp, dp, &s, &r, (int32_t)n, 0, 0);
    wait_bytes(x.de);
    kvx_sender_abort(s, "operator cancelled the request");
    CHECK(tt_wait_r(r, 10) == KVX_POLL_FAILED, "sender abort fails the receiver");
    CHECK_STR(kvx_receiver_error(r), "operator cancelled the request");
    kvx_sender_destroy(s);
    kvx_receiver_destroy(r);
    pair_room(&x, 4, n, sp, dp, &s, &r, (int32_t)n, 0, 0);
    wait_bytes(x.de);
    kvx_receiver_abort(r, "decode ran out of KV slots");
    CHECK(tt_wait_s(s, 10) == KVX_POLL_FAILED, "receiver abort fails the sender");
    CHECK_STR(kvx_sender_error(s), "decode ran out of KV slots");
    kvx_sender_destroy(s);
    kvx_receiver_destroy(r);
    /* the link survived all that: the next room goes through */
    hold = 0;
    for (i = 0; i < 64; i++) dp[i] = (int32_t)(159 - i);
    ex_aux_clear(&x.pr, 1);
    pair_room(&x, 5, n, sp, dp, &s, &r, (int32_t)n, 0, 1);
    CHECK(tt_wait_r(r, 20) == KVX_POLL_SUCCESS && tt_wait_s(s, 20) == KVX_POLL_SUCCESS,
          "the next room Success: %s / %s", kvx_receiver_error(r), kvx_sender_error(s));
    CHECK(ex_pages_pattern(&x.pr, 5, dp, n, 0) == 0 && ex_aux_check(&x.pr, 5, 1),
          "the next room verified byte for byte");
    kvx_sender_destroy(s);
    kvx_receiver_destroy(r);
    kvx_tcp_stats_get(x.pe, &st);
    CHECK(st.links_opened == 1 && st.links_lost == 0, "one link throughout (%llu opened, %llu lost)",
          (unsigned long long)st.links_opened, (unsigned long long)st.links_lost);
    /* init disagreeing with the destination */
    pair_room(&x, 6, 9, sp, dp, &s, &r, 8, 0, 0);
    CHECK(kvx_sender_poll(s) == KVX_POLL_FAILED, "init with 9 pages for 8 requested fails");
    CHECK_STR(kvx_sender_error(s), "asked for 8");
    CHECK(tt_wait_r(r, 10) == KVX_POLL_FAILED, "and the receiver hears it");
    CHECK_STR(kvx_receiver_error(r), "asked for 8");
    kvx_sender_destroy(s);
    kvx_receiver_destroy(r);
    pair_room(&x, 7, 8, sp, dp, &s, &r, 8, -1, 2);
    CHECK(kvx_sender_poll(s) == KVX_POLL_FAILED, "no aux slot for a receiver that wants aux fails");
    CHECK_STR(kvx_sender_error(s), "expects aux rows");
    CHECK(tt_wait_r(r, 10) == KVX_POLL_FAILED, "and the receiver hears it");
    kvx_sender_destroy(s);
    kvx_receiver_destroy(r);
    /* engines destroyed with a room in flight */
    hold = 1;
    pair_room(&x, 8, n, sp, dp, &s, &r, (int32_t)n, 0, 0);
    wait_bytes(x.de);
    t0 = tt_now();
    kvx_engine_destroy(x.pe); /* fails and frees the open sender */
    x.pe = NULL;
    CHECK(tt_now() - t0 < 3, "prefill engine destroyed mid-transfer in %.3f s", tt_now() - t0);
    CHECK(tt_wait_r(r, 10) == KVX_POLL_FAILED, "the receiver failed: %s", kvx_receiver_error(r));
    t0 = tt_now();
    kvx_engine_destroy(x.de);
    x.de = NULL;
    CHECK(tt_now() - t0 < 3, "decode engine destroyed with an open receiver in %.3f s", tt_now() - t0);
    pair_close(&x);
}

static void test_waiting_timeout(void) {
    pair x;
    int32_t dp[4] = {0, 1, 2, 3};
    kvx_room_desc rd;
    kvx_receiver *r;
    double t0;
    setenv("KVX_WAITING_TIMEOUT", "1", 1);
    if (pair_open(&x, "tiny", 16)) { CHECK(0, "timeout: engines"); unsetenv("KVX_WAITING_TIMEOUT"); return; }
    unsetenv("KVX_WAITING_TIMEOUT");
    memset(&rd, 0, sizeof rd);
    rd.room = 77;
    kvx_receiver_create(x.de, &rd, &r);
    tt_wait_ready_r(r, 10);
    t0 = tt_now();
    kvx_receiver_init(r, dp, 4, -1); /* no sender is ever created for room 77 */
    CHECK(tt_wait_r(r, 5) == KVX_POLL_FAILED && kvx_receiver_result(r) == KVX_ERR_TIMEOUT,
          "a receiver whose KV never comes times out after %.2f s", tt_now() - t0);
    CHECK_STR(kvx_receiver_error(r), "KVX_WAITING_TIMEOUT");
    kvx_receiver_destroy(r);
    pair_close(&x);
}

int main(int argc, char **argv) {
    int h = tt_helper_main(argc, argv);
    if (h >= 0) return h;
    kt_name = "test_tcp_faults";
    tt_find_self(argv[0]);
    signal(SIGPIPE, SIG_IGN);
    test_kill_prefill();
    test_kill_decode();
    test_slow_receiver(0);
    test_slow_receiver(1);
    test_abort_destroy();
    test_waiting_timeout();
    return kt_done();
}
