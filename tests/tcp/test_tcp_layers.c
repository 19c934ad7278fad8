/* test_tcp_layers.c - LAYER-WISE SEND over the tcp transport (issue 16).
   Each prefill rank is a forked child; the decode engine lives in the
   parent, created after the fork (so no thread is forked).

   - layer-wise and all-layer sends mixed across chunks, 1 -> 1: room 0
     chunk 0 all-layer, chunk 1 layer by layer, chunk 2 in 3 ranges (its
     last part completes the room); room 1 the other way round. Every
     layer of every page verified byte for byte on the decode
     (ex_page_pattern: seeded by room, model layer, K/V, token, head), the
     aux rows, and bytes received == pages + aux rows (each byte once);
     again with 32 KiB pages and 64 KiB frames (a part is several frames
     over two streams);
   - the same layer-wise schedule from prefill TP 2 -> decode TP 1 (head
     slices per layer), PP 2 -> 1 (each rank its own layer numbers) and
     MLA TP 2 -> 1 (one dummy that sends nothing);
   - the sender held after every part of room 0 but the chunk's last: the
     decode has received exactly the bytes of the parts handed over so far
     (so a part moves when it is handed over, no later and no more), those
     layers are in place byte for byte, the later layers of the chunk are
     still untouched, and the receiver is Transferring, not Success (small
     and 32 KiB pages; and with the prefill's pool in GPU memory, a mock
     device behind kvx_mem_ops, so every frame goes through the pinned
     stage);
   - out-of-order ranges (layers skipped, a layer sent twice, a chunk that
     starts past the first layer): the sender's room fails with the core's
     sentence, the decode room fails with it too (the peer learns), never
     Success; the other room on the same link still succeeds;
   - the prefill SIGKILLed between two layers of a chunk (after the first
     layer landed): every decode room fails, none reports Success.
   Waits are on observed state (shared counters, the decode's byte counter,
   room states), never a fixed sleep. */
#define KVX_IMPLEMENTATION
#include "tcp_test.h"
#include <sys/mman.h>
#include <sched.h>

#define NREQ 2
#define NCHUNK 3
#define CHUNK 3 /* pages per chunk */
#define POOL 64
#define PAGE 16
#define MAXR 2

static const ex_model gqa = {"lw-gqa", 8, 2, 32, 2, 0, "bfloat16"}; /* 16 buffers */
static const ex_model mla = {"lw-mla", 8, 1, 36, 2, 1, "bfloat16"}; /* 8 buffers */
/* 32 KiB pages: with 64 KiB frames (KVX_TCP_SEGMENT) a part spans several
   frames over the streams */
static const ex_model big = {"lw-big", 8, 8, 128, 2, 0, "bfloat16"};

enum { ALL, EACH, THREE, SKIP, TWICE, LATE }; /* how a chunk's layers are sent */
enum { NORMAL, HOLD, KILL, BAD_SKIP, BAD_TWICE, BAD_LATE };

typedef struct scen {
    const char *name;
    const ex_model *m;
    int ptp, ppp;
    int mode;
    int gpu; /* the prefill pool in (mock) GPU memory: frames through the pinned stage */
} scen;

typedef struct shared {
    int boot_port;
    int prefill_up;
    int decode_done;
    int reported; /* prefill ranks whose ok / failed / err are written */
    /* HOLD / KILL: the prefill (one rank) published a point between parts */
    int hold_seq, go;
    uint64_t want;      /* decode bytes expected by then (this room's parts so far) */
    uint32_t chunk, le; /* the chunk and the end of its layers sent (model numbers) */
    int killme;
    struct {
        int ok, failed, copies; /* copies: device copies through kvx_mem_ops (gpu) */
        uint64_t bytes;
        char err[KVX_ERROR_MAX + 64];
    } pre[MAXR][MAXR];
} shared;

static shared *sh;

static uint32_t room_pages(void) { return NCHUNK * CHUNK; }
static uint64_t room_id(int s, int i) { return 0x16000ull + (uint64_t)s * 16 + (uint64_t)i; }

/* Room i's schedule (chunk c); the scenario's mode puts its bad range or
   its kill into room 0's chunk 1. */
static int scheme(const scen *t, int i, int c) {
    static const int sched[NREQ][NCHUNK] = {{ALL, EACH, THREE}, {THREE, EACH, ALL}};
    if (i == 0 && c == 1) {
        if (t->mode == BAD_SKIP) return SKIP;
        if (t->mode == BAD_TWICE) return TWICE;
        if (t->mode == BAD_LATE) return LATE;
    }
    return sched[i][c];
}

/* ---- prefill rank (a child) ------------------------------------------------ */

typedef struct sender_ctx {
    const scen *t;
    ex_pool *p;
    uint64_t sent; /* bytes of room 0's parts handed over (one rank: the decode's too) */
} sender_ctx;

/* Bytes of n pages in layers [lb, le) of this rank. */
static uint64_t part_bytes(const ex_pool *p, uint32_t n, uint32_t lb, uint32_t le) {
    return (uint64_t)n * p->bufs[0].item_len * (le - lb) * (p->mla ? 1u : 2u);
}

/* After a part of room 0 that is not the chunk's last (HOLD, KILL). */
static void between_parts(sender_ctx *x, int i, uint32_t c, uint32_t le) {
    int seq;
    if (i != 0 || (x->t->mode != HOLD && x->t->mode != KILL)) return;
    sh->want = x->sent;
    sh->chunk = c;
    sh->le = le;
    if (x->t->mode == KILL) {
        kt_shm_store(&sh->killme, 1);
        for (;;) pause(); /* the parent kills this process */
    }
    seq = kt_shm_add(&sh->hold_seq, 1);
    kt_shm_wait(&sh->go, seq, 60);
}

/* One layer range; 0 when the call succeeded. */
static int send_range(sender_ctx *x, kvx_sender *s, const int32_t *pg, uint32_t n, int i,
                      uint32_t c, uint32_t lb, uint32_t le, uint32_t lend) {
    if (kvx_sender_send_layers(s, pg, n, lb, le) != KVX_OK) return -1;
    if (i == 0) x->sent += part_bytes(x->p, n, lb, le);
    if (le < lend) between_parts(x, i, c, le);
    return 0;
}

static int send_chunk(sender_ctx *x, kvx_sender *s, const int32_t *pg, uint32_t n, int i,
                      uint32_t c) {
    uint32_t l0 = x->p->layer_begin, L = x->p->layers, lend = l0 + L, l;
    switch (scheme(x->t, i, (int)c)) {
    case ALL:
        if (kvx_sender_send(s, pg, n) != KVX_OK) return -1;
        if (i == 0) x->sent += (uint64_t)n * kvx_layout_page_bytes(&x->p->layout);
        return 0;
    case EACH:
        for (l = l0; l < lend; l++)
            if (send_range(x, s, pg, n, i, c, l, l + 1, lend)) return -1;
        return 0;
    case THREE:
        if (send_range(x, s, pg, n, i, c, l0, l0 + L / 3, lend) ||
            send_range(x, s, pg, n, i, c, l0 + L / 3, l0 + 2 * L / 3, lend))
            return -1;
        return send_range(x, s, pg, n, i, c, l0 + 2 * L / 3, lend, lend);
    case SKIP: /* [l0, l0+2) then [l0+3, l0+5): layer l0+2 skipped */
        if (kvx_sender_send_layers(s, pg, n, l0, l0 + 2) != KVX_OK) return -1;
        return kvx_sender_send_layers(s, pg, n, l0 + 3, l0 + 5) == KVX_OK ? 0 : -1;
    case TWICE: /* [l0, l0+3) then [l0+2, l0+4): layer l0+2 twice */
        if (kvx_sender_send_layers(s, pg, n, l0, l0 + 3) != KVX_OK) return -1;
        return kvx_sender_send_layers(s, pg, n, l0 + 2, l0 + 4) == KVX_OK ? 0 : -1;
    default: /* LATE: the chunk's first call starts past its first layer */
        return kvx_sender_send_layers(s, pg, n, l0 + 1, l0 + 3) == KVX_OK ? 0 : -1;
    }
}

/* A sender to leave BOOTSTRAPPING (ready) or to end; once the decode is
   done, one still bootstrapping gives up and one waiting for its ACK gets
   20 s more. */
static kvx_poll wait_sender(kvx_sender *s, int ready, double timeout) {
    double end = tt_now() + timeout;
    for (;;) {
        kvx_poll ps = kvx_sender_poll(s);
        if (ready ? ps != KVX_POLL_BOOTSTRAPPING : tt_terminal(ps)) return ps;
        if (tt_now() > end) return ps;
        if (__atomic_load_n(&sh->decode_done, __ATOMIC_ACQUIRE)) {
            if (ready || ps == KVX_POLL_BOOTSTRAPPING) return ps;
            if (end > tt_now() + 20) end = tt_now() + 20;
        }
        sched_yield(); /* the sender's state and decode_done are read again at once */
    }
}

static int prefill_main(const scen *t, int si, int tp, int pp) {
    ex_pool p;
    ex_rank rk;
    tt_opts o;
    kvx_engine *e;
    kvx_sender *s[NREQ];
    int32_t pages[NREQ][NCHUNK * CHUNK];
    char why[KVX_ERROR_MAX];
    sender_ctx x;
    kvx_tcp_stats st;
    kvx_mem_ops mem;
    kvx_buffer dev[64];
    int i;
    uint32_t c;
    rk.tp = (uint32_t)t->ptp;
    rk.pp = (uint32_t)t->ppp;
    rk.tp_rank = (uint32_t)tp;
    rk.pp_rank = (uint32_t)pp;
    if (ex_pool_init_rank(&p, t->m, POOL, PAGE, NREQ + 1, 11 + (uint64_t)tp * 7 + (uint64_t)pp, &rk))
        return 3;
    if (tp || pp) kt_shm_wait(&sh->boot_port, 1, 30);
    if (t->m == &big) setenv("KVX_TCP_SEGMENT", "65536", 1);
    memset(&o, 0, sizeof o);
    o.streams = 2;
    o.boot_port = tp || pp ? sh->boot_port : 0;
    o.tp_size = t->ptp;
    o.tp_rank = tp;
    o.pp_size = t->ppp;
    o.pp_rank = pp;
    if (t->gpu) { /* device pointers (host ^ DEV_TAG) copied through tt_mock_copy */
        tt_devmem(p.bufs, p.layout.num_buffers, dev);
        memset(&mem, 0, sizeof mem);
        mem.copy = tt_mock_copy;
        mem.host_alloc = tt_mock_alloc;
        mem.host_free = tt_mock_free;
        o.bufs = dev;
        o.mem = &mem;
    }
    if (!(e = tt_engine(KVX_ROLE_PREFILL, &p.layout, &o, why, sizeof why))) {
        snprintf(sh->pre[tp][pp].err, sizeof sh->pre[0][0].err, "engine: %s", why);
        kt_shm_add(&sh->prefill_up, 1);
        return 3;
    }
    if (!tp && !pp) kt_shm_store(&sh->boot_port, kvx_boot_engine_port(e));
    for (i = 0; i < NREQ; i++) {
        kvx_room_desc rd;
        memset(&rd, 0, sizeof rd);
        rd.room = room_id(si, i);
        ex_alloc_pages(&p, pages[i], room_pages());
        ex_pages_pattern(&p, rd.room, pages[i], room_pages(), 1);
        ex_aux_write(&p, rd.room, i);
        kvx_sender_create(e, &rd, &s[i]);
    }
    kt_shm_add(&sh->prefill_up, 1);
    memset(&x, 0, sizeof x);
    x.t = t;
    x.p = &p;
    for (i = 0; i < NREQ; i++) {
        if (wait_sender(s[i], 1, 30) != KVX_POLL_WAITING_FOR_INPUT) continue;
        kvx_sender_init(s[i], room_pages(), i);
        for (c = 0; c < NCHUNK; c++)
            if (send_chunk(&x, s[i], pages[i] + c * CHUNK, CHUNK, i, c)) break;
    }
    for (i = 0; i < NREQ; i++) {
        if (wait_sender(s[i], 0, 60) == KVX_POLL_SUCCESS) {
            sh->pre[tp][pp].ok++;
        } else {
            sh->pre[tp][pp].failed++;
            if (!sh->pre[tp][pp].err[0])
                snprintf(sh->pre[tp][pp].err, sizeof sh->pre[0][0].err, "room %d: %s", i,
                         kvx_sender_error(s[i]));
        }
    }
    kvx_tcp_stats_get(e, &st);
    sh->pre[tp][pp].bytes = st.bytes_sent;
    sh->pre[tp][pp].copies = __atomic_load_n(&tt_mock_copies, __ATOMIC_RELAXED);
    kt_shm_add(&sh->reported, 1);
    kt_shm_wait(&sh->decode_done, 1, 60); /* the control connection stays up till then */
    for (i = 0; i < NREQ; i++) kvx_sender_destroy(s[i]);
    kvx_engine_destroy(e);
    ex_pool_free(&p);
    return 0;
}

/* ---- decode (the parent) ------------------------------------------------------ */

/* The model layer of buffer b of a whole-model pool. */
static uint32_t buf_layer(const ex_pool *p, uint32_t b) {
    return p->mla ? b : b % p->layers;
}

static char *page_at(const ex_pool *p, uint32_t b, int32_t page) {
    return (char *)p->bufs[b].base + (uint64_t)page * p->bufs[b].item_len;
}

/* Room 0 at a point between parts: chunks before `chunk` whole, chunk
   `chunk` in layers [0, le) and still zero from le on. Returns what is
   wrong ("" when nothing). */
static void check_landed(const ex_pool *p, uint64_t room, const int32_t *pages, uint32_t chunk,
                         uint32_t le, char *bad, size_t bl) {
    uint32_t b, i, k, upto = (chunk + 1) * CHUNK;
    bad[0] = 0;
    for (b = 0; b < p->layout.num_buffers; b++)
        for (i = 0; i < upto; i++) {
            const char *pg = page_at(p, b, pages[i]);
            if (i < chunk * CHUNK || buf_layer(p, b) < le) {
                if (ex_page_pattern(p, room, b, i, (uint64_t *)(void *)page_at(p, b, pages[i]), 0)) {
                    snprintf(bad, bl, "page %u of buffer %u (layer %u) is not the prefill's", i, b,
                             buf_layer(p, b));
                    return;
                }
                continue;
            }
            for (k = 0; k < p->bufs[b].item_len; k++)
                if (pg[k]) {
                    snprintf(bad, bl, "page %u of buffer %u (layer %u, not sent yet) was written", i,
                             b, buf_layer(p, b));
                    return;
                }
        }
}

/* HOLD / KILL: the prefill stands between two parts; the decode must have
   exactly the bytes handed over, those layers in place, and not succeed.
   1 when the point was handled, 2 when after waiting 30 s for its bytes
   (later points then wait no more), 0 while its bytes have not all landed. */
static int at_point(const scen *t, kvx_engine *e, ex_pool *p, kvx_receiver *r, uint64_t room,
                    const int32_t *pages, double *since) {
    kvx_tcp_stats st;
    char bad[256];
    int late;
    kvx_tcp_stats_get(e, &st);
    late = tt_now() - *since >= 30;
    if (st.bytes_received < sh->want && !late) return 0;
    check_landed(p, room, pages, sh->chunk, sh->le, bad, sizeof bad);
    /* The next part's payload is written after these reads only through
       the prefill process (go -> its send -> recvmsg), which TSan cannot
       see: a connection thread takes te->mu before it reads a frame's
       payload, so this lock orders the reads before it for TSan too. */
    pthread_mutex_lock(&kvx__tcp_te(e)->mu);
    pthread_mutex_unlock(&kvx__tcp_te(e)->mu);
    CHECK(st.bytes_received == sh->want, "%s: held after chunk %u layers [0, %u): the decode has "
          "%llu bytes, the parts handed over are %llu", t->name, sh->chunk, sh->le,
          (unsigned long long)st.bytes_received, (unsigned long long)sh->want);
    CHECK(!bad[0], "%s: chunk %u layers [0, %u) in place byte for byte, the rest untouched %s",
          t->name, sh->chunk, sh->le, bad);
    CHECK(kvx_receiver_poll(r) == KVX_POLL_TRANSFERRING, "%s: the receiver is %s between layers",
          t->name, kvx_poll_str(kvx_receiver_poll(r)));
    if (!late) *since = tt_now();
    return late ? 2 : 1;
}

static void run(const scen *t, int si) {
    pid_t pid[MAXR][MAXR];
    ex_pool p;
    kvx_engine *e = NULL;
    kvx_receiver *r[NREQ];
    int32_t pages[NREQ][NCHUNK * CHUNK];
    char why[KVX_ERROR_MAX], addr[64];
    tt_opts o;
    kvx_tcp_stats st;
    int a, q, i, status, holds = 0, killed = 0, ok = 0, verified = 0, done;
    uint32_t b;
    uint64_t expected = 0;
    double end, since = tt_now(), t0 = tt_now();
    memset(sh, 0, sizeof *sh);
    fflush(stdout);
    for (a = 0; a < t->ptp; a++)
        for (q = 0; q < t->ppp; q++) {
            pid[a][q] = fork();
            if (pid[a][q] == 0) {
                prctl(PR_SET_PDEATHSIG, SIGKILL);
                _exit(prefill_main(t, si, a, q));
            }
        }
    if (ex_pool_init(&p, t->m, POOL, PAGE, NREQ + 1, 101)) {
        CHECK(0, "%s: decode pool", t->name);
        return;
    }
    for (b = 0; b < p.layout.num_buffers; b++) memset(p.bufs[b].base, 0, p.bufs[b].length);
    if (!kt_shm_wait(&sh->boot_port, 1, 60) || !kt_shm_wait(&sh->prefill_up, t->ptp * t->ppp, 60)) {
        CHECK(0, "%s: prefill ranks up: %s", t->name, sh->pre[0][0].err);
        goto out;
    }
    snprintf(addr, sizeof addr, "127.0.0.1:%d", sh->boot_port);
    memset(&o, 0, sizeof o);
    o.boot_addr = addr;
    if (!(e = tt_engine(KVX_ROLE_DECODE, &p.layout, &o, why, sizeof why))) {
        CHECK(0, "%s: decode engine: %s", t->name, why);
        goto out;
    }
    for (i = 0; i < NREQ; i++) {
        kvx_room_desc rd;
        memset(&rd, 0, sizeof rd);
        rd.room = room_id(si, i);
        ex_alloc_pages(&p, pages[i], room_pages());
        ex_aux_clear(&p, i);
        kvx_receiver_create(e, &rd, &r[i]);
        expected += room_pages() * kvx_layout_page_bytes(&p.layout) +
                    kvx_layout_aux_row_bytes(&p.layout);
    }
    for (i = 0; i < NREQ; i++)
        if (tt_wait_ready_r(r[i], 30)) kvx_receiver_init(r[i], pages[i], room_pages(), i);
    end = tt_now() + 90;
    do {
        done = 0;
        for (i = 0; i < NREQ; i++) done += tt_terminal(kvx_receiver_poll(r[i]));
        if (t->mode == HOLD && __atomic_load_n(&sh->hold_seq, __ATOMIC_ACQUIRE) > holds) {
            if (at_point(t, e, &p, r[0], room_id(si, 0), pages[0], &since))
                kt_shm_store(&sh->go, ++holds);
        }
        if (t->mode == KILL && !killed && __atomic_load_n(&sh->killme, __ATOMIC_ACQUIRE) &&
            at_point(t, e, &p, r[0], room_id(si, 0), pages[0], &since)) {
            kill(pid[0][0], SIGKILL);
            killed = 1;
        }
        if (done < NREQ) sched_yield(); /* states and byte counters are read again at once */
    } while (done < NREQ && tt_now() < end);
    kvx_tcp_stats_get(e, &st);
    for (i = 0; i < NREQ; i++) {
        if (kvx_receiver_poll(r[i]) != KVX_POLL_SUCCESS) continue;
        ok++;
        if (!ex_pages_pattern(&p, room_id(si, i), pages[i], room_pages(), 0) &&
            ex_aux_check(&p, room_id(si, i), i))
            verified++;
    }
    if (t->mode == NORMAL || t->mode == HOLD) {
        int f = kvx_receiver_poll(r[0]) == KVX_POLL_SUCCESS; /* the first failure, if any */
        CHECK(verified == NREQ, "%s: %d of %d rooms verified, every layer of every page and the "
              "aux rows (%d Success) %s", t->name, verified, NREQ, ok,
              f < NREQ ? kvx_receiver_error(r[f]) : "");
        CHECK(st.bytes_received == expected, "%s: the decode received %llu bytes, its pages and "
              "aux rows are %llu: each byte once", t->name, (unsigned long long)st.bytes_received,
              (unsigned long long)expected);
        if (t->mode == HOLD)
            CHECK(holds == (int)t->m->layers - 1 + 2, "%s: %d points between parts checked", t->name,
                  holds);
    } else if (t->mode == KILL) {
        CHECK(killed, "%s: the prefill was killed between two layers", t->name);
        CHECK(ok == 0 && kvx_receiver_poll(r[0]) == KVX_POLL_FAILED,
              "%s: the receivers fail, none Success (%d Success): %s", t->name, ok,
              kvx_receiver_error(r[0]));
    } else {
        const char *want = t->mode == BAD_SKIP ? "layers [2, 3) were skipped"
                         : t->mode == BAD_TWICE ? "layer 2 was already sent"
                                                : "not at this rank's first layer 0";
        /* the decode room's failure can be seen before the prefill wrote its own */
        kt_shm_wait(&sh->reported, t->ptp * t->ppp, 60);
        CHECK(strstr(sh->pre[0][0].err, want) != NULL, "%s: the sender's room failed with "
              "\"%s\": %s", t->name, want, sh->pre[0][0].err);
        CHECK(kvx_receiver_poll(r[0]) == KVX_POLL_FAILED && strstr(kvx_receiver_error(r[0]), want),
              "%s: the decode room failed (%s) with it: %s", t->name,
              kvx_poll_str(kvx_receiver_poll(r[0])), kvx_receiver_error(r[0]));
        CHECK(verified == 1 && kvx_receiver_poll(r[1]) == KVX_POLL_SUCCESS,
              "%s: the other room succeeded, verified (%s)", t->name, kvx_receiver_error(r[1]));
    }
    kt_shm_store(&sh->decode_done, 1);
    for (a = 0; a < t->ptp; a++)
        for (q = 0; q < t->ppp; q++) waitpid(pid[a][q], &status, 0);
    if (t->mode == NORMAL || t->mode == HOLD)
        for (a = 0; a < t->ptp; a++)
            for (q = 0; q < t->ppp; q++)
                CHECK(sh->pre[a][q].ok == NREQ, "%s: prefill tp %d pp %d: %d of %d senders "
                      "Success, %llu bytes sent %s", t->name, a, q, sh->pre[a][q].ok, NREQ,
                      (unsigned long long)sh->pre[a][q].bytes, sh->pre[a][q].err);
    if (t->gpu)
        CHECK(sh->pre[0][0].copies > 0, "%s: the prefill's frames came out of GPU memory through "
              "kvx_mem_ops (%d copies)", t->name, sh->pre[0][0].copies);
    if (t->m->mla && t->ptp > 1)
        CHECK(sh->pre[1][0].bytes == 0, "%s: the MLA dummy sent %llu bytes", t->name,
              (unsigned long long)sh->pre[1][0].bytes);
    for (i = 0; i < NREQ; i++) kvx_receiver_destroy(r[i]);
    printf("  %s: %.2f s\n", t->name, tt_now() - t0);
out:
    kt_shm_store(&sh->decode_done, 1);
    for (a = 0; a < t->ptp; a++)
        for (q = 0; q < t->ppp; q++)
            if (pid[a][q] > 0 && waitpid(pid[a][q], &status, WNOHANG) == 0) {
                kill(pid[a][q], SIGKILL);
                waitpid(pid[a][q], &status, 0);
            }
    kvx_engine_destroy(e);
    ex_pool_free(&p);
}

int main(int argc, char **argv) {
    static const scen all[] = {
        {"mixed 1 -> 1", &gqa, 1, 1, NORMAL, 0},
        {"held between parts 1 -> 1", &gqa, 1, 1, HOLD, 0},
        {"mixed 1 -> 1, 32 KiB pages in 64 KiB frames", &big, 1, 1, NORMAL, 0},
        {"held between parts 1 -> 1, 32 KiB pages in 64 KiB frames", &big, 1, 1, HOLD, 0},
        {"held between parts 1 -> 1, prefill pool in GPU memory (mock)", &gqa, 1, 1, HOLD, 1},
        {"tp 2 -> 1", &gqa, 2, 1, NORMAL, 0},
        {"pp 2 -> 1", &gqa, 1, 2, NORMAL, 0},
        {"mla tp 2 -> 1", &mla, 2, 1, NORMAL, 0},
        {"layers skipped", &gqa, 1, 1, BAD_SKIP, 0},
        {"a layer sent twice", &gqa, 1, 1, BAD_TWICE, 0},
        {"a chunk starting past its first layer", &gqa, 1, 1, BAD_LATE, 0},
        {"prefill killed between layers", &gqa, 1, 1, KILL, 0},
    };
    size_t i;
    const char *only = argc > 1 ? argv[1] : getenv("TT_LAYERS");
    kt_name = "test_tcp_layers";
    signal(SIGPIPE, SIG_IGN);
    setenv("KVX_WAITING_TIMEOUT", "120", 1); /* failures must come from the peer, not a timer */
    sh = (shared *)mmap(NULL, sizeof *sh, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (sh == MAP_FAILED) return 1;
    for (i = 0; i < sizeof all / sizeof all[0]; i++)
        if (!only || strstr(all[i].name, only)) run(&all[i], (int)i);
    return kt_done();
}
