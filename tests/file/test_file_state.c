/* test_file_state.c - hybrid-model state through the file transport
   (kvx.h HYBRID STATE, kvx_file.h ON DISK version 4: state.bin). Each
   prefill rank is a process that writes several rooms at once; each decode
   rank is a process that reads them and checks every KV head of every
   token (ex_pages_pattern), the aux rows, every state row at the decode's
   own indices (ex_state_pattern) and that each byte came once.
     Mamba-like: 2 state buffers (4096 and 1024 bytes), one index a request.
     SWA-like: window pages, several scattered indices with consecutive runs.
     Multi-rank: MLA TP 4 -> 2 (dummies write nothing; the aux writer sends
     the state), GQA TP 2 -> 2, PP 2 -> 2.
     Count mismatch: the decode fails with both counts.
     Refusals by kvx_layout_overlap reach the room: SWA on GQA TP 2 -> 1,
     Mamba PP 2 -> 1, different state item_len.
     Rooms without state: test_file, test_file_topo. */
#define KVX_IMPLEMENTATION
#include "../../kvx_file.h"
#include "../../examples/kvx_example.h"
#include "../kvx_test.h"
#include "file_test.h"
#include <sys/wait.h>

#define NP 12    /* request pages */
#define POOL 64
#define PS 4     /* tokens per page */
#define ROWS 128 /* state rows */
#define ROOMS 3  /* rooms per run, open at once */
#define MAXS 8   /* most state indices a request */

static char root[128];
static const ex_model gqa = {"gqa", 4, 8, 8, 2, 0, "bfloat16"};
static const ex_model mla = {"mla", 4, 1, 36, 2, 1, "bfloat16"};

typedef struct scase {
    const char *label;
    const ex_model *m;
    uint32_t ptp, dtp, ppp, dpp; /* PP 0 = 1 */
    uint32_t type;              /* KVX_STATE_* */
    uint32_t nbuf;
    uint64_t item[2];           /* state item_len, prefill */
    uint64_t ditem0;            /* decode's item_len of state buffer 0 (0 = the same) */
    uint32_t ns, nd;            /* state indices: prefill gives ns, decode asks nd */
    const char *expect;         /* NULL: Success; else every decode rank fails saying this */
    int damage;                 /* before the decode starts: 1 flips a byte of state.bin, 2
                                   truncates it, 3 removes it, 4 sets transfer_done's
                                   state_crc32c to 0 */
    int auth;                   /* both sides have an auth key (KVX_AUTH_KEY) */
    int gpu;                    /* state buffers in (mock) GPU memory, through desc.mem */
} scase;

static void child_exit(void) {
    fflush(stdout);
    _exit(kt_fail ? 1 : 0);
}

/* Room q's state indices on one side: scattered, with consecutive runs;
   each room its own rows (q * 40 on). */
static void state_idx(int decode, uint32_t q, uint32_t n, int32_t *out) {
    static const int32_t pre[MAXS] = {3, 4, 5, 17, 30, 31, 9, 20};
    static const int32_t dec[MAXS] = {25, 2, 3, 4, 12, 13, 31, 11};
    uint32_t k;
    for (k = 0; k < n; k++) out[k] = (decode ? dec[k] : pre[k]) + (int32_t)q * 40;
}

/* gpu: the state buffers move to the mock device (file_test.h), and the
   engine gets its copy functions. */
static kvx_engine *rank_engine(kvx_role role, ex_pool *p, const char *dir, const ex_rank *rk,
                               int gpu) {
    char why[512];
    static kvx_buffer dev[2];
    /* the failures here are expected: nothing logged */
    kvx_engine_desc d = ft_rank_desc(role, &p->layout, dir, rk->tp, rk->tp_rank, rk->pp, rk->pp_rank);
    kvx_engine *e;
    uint32_t b;
    for (b = 0; gpu && b < p->num_state && b < 2; b++) {
        dev[b] = p->state[b];
        dev[b].base = to_dev(p->state[b].base);
        dev[b].mem = KVX_MEM_CUDA;
        dev[b].device = 3;
        d.layout.state = dev;
    }
    if (gpu) {
        d.mem.copy = mock_copy;
        d.mem.host_alloc = mock_alloc;
        d.mem.host_free = mock_free;
        d.file.stripe_bytes = 4096; /* rows of several runs move in several pieces */
    }
    e = ft_create(&d, why);
    if (!e) {
        CHECK(0, "%s engine: %s", role == KVX_ROLE_PREFILL ? "prefill" : "decode", why);
        child_exit();
    }
    return e;
}

static void prefill_rank(const char *dir, const scase *c, ex_rank rk, uint64_t base) {
    ex_pool p;
    kvx_engine *e;
    kvx_sender *s[ROOMS];
    int32_t pages[ROOMS][NP], sidx[MAXS];
    char v[16];
    uint32_t q, b;
    kt_fail = kt_pass = 0;
    if (c->auth) setenv("KVX_AUTH_KEY", "kvx-file-state-test-key", 1);
    snprintf(v, sizeof v, "%u", c->dtp);
    setenv("KVX_FILE_DECODE_TP", v, 1);
    CHECK(ex_pool_init_rank(&p, c->m, POOL, PS, ROOMS, 1 + rk.tp_rank * 7 + rk.pp_rank, &rk) == 0,
          "pool");
    CHECK(ex_pool_add_state(&p, c->type, c->nbuf, c->item[0], ROWS) == 0, "state buffers");
    for (b = 1; b < c->nbuf; b++) { /* a second buffer of another item_len */
        free(p.state[b].base);
        p.state[b].base = calloc(ROWS, (size_t)c->item[1]);
        p.state[b].item_len = c->item[1];
        p.state[b].length = c->item[1] * ROWS;
    }
    e = rank_engine(KVX_ROLE_PREFILL, &p, dir, &rk, c->gpu);
    for (q = 0; q < ROOMS; q++) {
        kvx_room_desc rd;
        uint64_t room = base + q;
        memset(&rd, 0, sizeof rd);
        rd.room = room;
        ex_alloc_pages(&p, pages[q], NP);
        ex_pages_pattern(&p, room, pages[q], NP, 1);
        ex_aux_write(&p, c->dpp == rk.pp || p.layer_begin + p.layers == c->m->layers ? room
                                                                                   : room ^ 0xBAD,
                     (int32_t)q);
        state_idx(0, q, c->ns, sidx);
        ex_state_pattern(&p, room, sidx, c->ns, 1);
        CHECK(kvx_sender_create(e, &rd, &s[q]) == KVX_OK, "sender");
        kvx_sender_init(s[q], NP, (int32_t)q);
        kvx_sender_send(s[q], pages[q], NP / 2);
    }
    for (q = 0; q < ROOMS; q++) {
        kvx_poll st;
        state_idx(0, q, c->ns, sidx);
        /* a room a decode rank already refused may fail this call */
        CHECK(kvx_sender_send_state(s[q], pages[q] + NP / 2, NP - NP / 2, sidx, c->ns) == KVX_OK ||
                  c->expect, "%s: send_state", c->label);
        st = kvx_sender_wait(s[q], KVX_POLL_SUCCESS, 60000);
        /* a prefill rank that committed its room succeeds even where the
           decode refuses it (the file transport tells a prefill nothing after
           its commit); one still writing when a decode rank refuses another
           contributor stops with the decode's reason (<R>.aborted) */
        if (c->expect && st == KVX_POLL_FAILED)
            CHECK_STR(kvx_sender_error(s[q]), "the decode side gave up the room");
        else
            CHECK(st == KVX_POLL_SUCCESS, "%s: prefill tp %u pp %u room %u: %s", c->label,
                  rk.tp_rank, rk.pp_rank, q, kvx_sender_error(s[q]));
        kvx_sender_destroy(s[q]);
    }
    kvx_engine_destroy(e);
    ex_pool_free(&p);
    child_exit();
}

static void decode_rank(const char *dir, const scase *c, ex_rank rk, uint64_t base) {
    ex_pool p;
    kvx_engine *e;
    kvx_receiver *r[ROOMS];
    kvx_engine_stats stats;
    int32_t pages[ROOMS][NP], didx[MAXS];
    char v[16];
    uint32_t q, b, ok = 0;
    kt_fail = kt_pass = 0;
    if (c->auth) setenv("KVX_AUTH_KEY", "kvx-file-state-test-key", 1);
    snprintf(v, sizeof v, "%u", c->ptp);
    setenv("KVX_FILE_PREFILL_TP", v, 1);
    snprintf(v, sizeof v, "%u", c->ppp);
    setenv("KVX_FILE_PREFILL_PP", v, 1);
    CHECK(ex_pool_init_rank(&p, c->m, POOL, PS, ROOMS + 1, 100 + rk.tp_rank * 7 + rk.pp_rank, &rk) == 0,
          "pool");
    CHECK(ex_pool_add_state(&p, c->type, c->nbuf, c->ditem0 ? c->ditem0 : c->item[0], ROWS) == 0,
          "state buffers");
    for (b = 1; b < c->nbuf; b++) {
        free(p.state[b].base);
        p.state[b].base = calloc(ROWS, (size_t)c->item[1]);
        p.state[b].item_len = c->item[1];
        p.state[b].length = c->item[1] * ROWS;
    }
    for (b = 0; b < p.layout.num_buffers; b++) memset(p.bufs[b].base, 0xEE, p.bufs[b].length);
    for (b = 0; b < p.num_state; b++) memset(p.state[b].base, 0xEE, p.state[b].length);
    e = rank_engine(KVX_ROLE_DECODE, &p, dir, &rk, c->gpu);
    for (q = 0; q < ROOMS; q++) {
        kvx_room_desc rd;
        memset(&rd, 0, sizeof rd);
        rd.room = base + q;
        ex_aux_clear(&p, (int32_t)q + 1);
        ex_alloc_pages(&p, pages[q], NP);
        state_idx(1, q, c->nd, didx);
        CHECK(kvx_receiver_create(e, &rd, &r[q]) == KVX_OK, "receiver");
        CHECK(kvx_receiver_init_state(r[q], pages[q], NP, (int32_t)q + 1, didx, c->nd) == KVX_OK,
              "%s: init_state", c->label);
    }
    for (q = 0; q < ROOMS; q++) {
        uint64_t room = base + q;
        kvx_poll st = kvx_receiver_wait(r[q], KVX_POLL_SUCCESS, 60000);
        state_idx(1, q, c->nd, didx);
        if (!c->expect) {
            CHECK(st == KVX_POLL_SUCCESS, "%s: decode tp %u pp %u room %u: %s", c->label,
                  rk.tp_rank, rk.pp_rank, q, kvx_receiver_error(r[q]));
            CHECK(ex_pages_pattern(&p, room, pages[q], NP, 0) == 0,
                  "%s: decode tp %u room %u: every head of every token", c->label, rk.tp_rank, q);
            CHECK(ex_aux_check(&p, room, (int32_t)q + 1), "%s: decode tp %u room %u: aux rows",
                  c->label, rk.tp_rank, q);
            CHECK(ex_state_pattern(&p, room, didx, c->nd, 0) == 0,
                  "%s: decode tp %u pp %u room %u: every state row of every state buffer at the "
                  "decode's indices", c->label, rk.tp_rank, rk.pp_rank, q);
            ok++;
        } else {
            CHECK(st == KVX_POLL_FAILED, "%s: decode tp %u room %u fails, never Success (%s)",
                  c->label, rk.tp_rank, q, kvx_poll_str(st));
            CHECK_STR(kvx_receiver_error(r[q]), c->expect);
        }
        kvx_receiver_destroy(r[q]);
    }
    if (!c->expect && c->gpu)
        CHECK(__atomic_load_n(&mock_copies, __ATOMIC_RELAXED) > 0, "%s: the state rows went "
              "through desc.mem (%d copies)", c->label, mock_copies);
    if (!c->expect) {
        uint64_t want = ok * (NP * kvx_layout_page_bytes(&p.layout) +
                              kvx_layout_aux_row_bytes(&p.layout) +
                              c->nd * kvx_layout_state_row_bytes(&p.layout));
        kvx_engine_stats_get(e, &stats);
        CHECK(stats.bytes == want, "%s: decode tp %u: %llu bytes placed, each once: %llu", c->label,
              rk.tp_rank, (unsigned long long)stats.bytes, (unsigned long long)want);
    }
    /* rows the request did not name are untouched */
    if (!c->expect && c->nbuf) {
        uint32_t row, bad = 0;
        for (row = 0; row < ROWS; row++) {
            int named = 0;
            for (q = 0; q < ROOMS; q++) {
                uint32_t k;
                state_idx(1, q, c->nd, didx);
                for (k = 0; k < c->nd; k++) named |= didx[k] == (int32_t)row;
            }
            if (!named && ((unsigned char *)p.state[0].base)[row * p.state[0].item_len] != 0xEE) bad++;
        }
        CHECK(bad == 0, "%s: %u state rows outside the request's indices were written", c->label, bad);
    }
    kvx_engine_destroy(e);
    ex_pool_free(&p);
    child_exit();
}

/* Starts one process per rank of one side (prefill or decode) of c. */
static void spawn(const scase *c, const char *dir, uint64_t base, int decode, pid_t *pids,
                  uint32_t *n) {
    uint32_t tp = decode ? c->dtp : c->ptp, pp = decode ? c->dpp : c->ppp, a, q;
    for (a = 0; a < tp; a++)
        for (q = 0; q < pp; q++) {
            ex_rank rk = {tp, a, pp, q};
            pid_t pid;
            fflush(stdout);
            if ((pid = fork()) == 0) {
                if (decode) decode_rank(dir, c, rk, base);
                prefill_rank(dir, c, rk, base);
            }
            pids[(*n)++] = pid;
        }
}

/* Waits for processes pids[0..n) and checks each ended well. */
static void reap_all(const scase *c, const pid_t *pids, uint32_t n) {
    uint32_t i;
    for (i = 0; i < n; i++) {
        int status = ft_reap(pids[i]);
        CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "%s: process %u (status %d)",
              c->label, i, status);
    }
}

static void run(const scase *cs, uint64_t base) {
    scase one = *cs;
    const scase *c = &one;
    char dir[400];
    pid_t pids[64];
    uint32_t q, n = 0;
    if (!one.ppp) one.ppp = 1;
    if (!one.dpp) one.dpp = 1;
    snprintf(dir, sizeof dir, "%s/r%llu", root, (unsigned long long)base);
    spawn(c, dir, base, 0, pids, &n);
    if (c->damage) { /* every prefill rank is done: damage its rooms' state.bin */
        reap_all(c, pids, n);
        n = 0;
        for (q = 0; q < ROOMS; q++) {
            char path[600];
            int fd;
            snprintf(path, sizeof path, "%s/room_%llu/state.bin", dir, (unsigned long long)(base + q));
            if (c->damage == 3) {
                CHECK(unlink(path) == 0, "%s: removed %s", c->label, path);
                continue;
            }
            if (c->damage == 4) { /* the state's CRC32C in transfer_done, MAC kept */
                char text[4096], *at;
                FILE *f;
                size_t len;
                snprintf(path, sizeof path, "%s/room_%llu/transfer_done", dir,
                         (unsigned long long)(base + q));
                f = fopen(path, "r+");
                len = f ? fread(text, 1, sizeof text - 1, f) : 0;
                text[len] = 0;
                at = strstr(text, "\"state_crc32c\":");
                CHECK(at != NULL, "%s: %s lists state_crc32c", c->label, path);
                if (at) {
                    at += strlen("\"state_crc32c\":");
                    while (*at >= '0' && *at <= '9') *at++ = '0'; /* same length */
                    rewind(f);
                    CHECK(fwrite(text, 1, len, f) == len, "rewrite");
                }
                if (f) fclose(f);
                continue;
            }
            fd = open(path, O_RDWR);
            CHECK(fd >= 0, "%s: open %s", c->label, path);
            if (fd < 0) continue;
            if (c->damage == 1) {
                char x = 0;
                CHECK(pread(fd, &x, 1, 700) == 1, "read");
                x ^= 0x10;
                CHECK(pwrite(fd, &x, 1, 700) == 1, "write");
            } else {
                CHECK(ftruncate(fd, 100) == 0, "truncate");
            }
            close(fd);
        }
    }
    spawn(c, dir, base, 1, pids, &n);
    reap_all(c, pids, n);
    printf("  %s\n", c->label);
    fflush(stdout);
}

/* With a bootstrap address (kvx_boot sends the decode's state indices in
   its room frame): ns -> nd indices; both sides end as expected, the
   prefill too on a count mismatch (on_room). In-process. */
static void boot_case(uint32_t ns, uint32_t nd, const char *expect) {
    char why[512], addr[64], dir[300];
    ex_pool ps, pr;
    kvx_engine *pe, *de;
    kvx_engine_desc d;
    kvx_sender *s;
    kvx_receiver *r;
    kvx_room_desc rd;
    int32_t sp[NP], dp[NP], sidx[MAXS], didx[MAXS];
    const uint64_t room = 77000 + ns * 10 + nd;
    kvx_poll a, b;
    snprintf(dir, sizeof dir, "%s/boot", root);
    ex_pool_init(&ps, &gqa, POOL, PS, 4, 1);
    ex_pool_init(&pr, &gqa, POOL, PS, 4, 2);
    ex_pool_add_state(&ps, KVX_STATE_MAMBA, 2, 1024, ROWS);
    ex_pool_add_state(&pr, KVX_STATE_MAMBA, 2, 1024, ROWS);
    d = ft_desc(KVX_ROLE_PREFILL, &ps.layout, dir);
    d.boot.host = "127.0.0.1";
    d.boot.port = -1; /* ephemeral */
    d.logger.level = KVX_LOG_ERROR + 1;
    pe = ft_create(&d, why);
    CHECK(pe != NULL, "boot: prefill engine: %s", why);
    if (!pe) return;
    snprintf(addr, sizeof addr, "127.0.0.1:%d", kvx_boot_engine_port(pe));
    d = ft_desc(KVX_ROLE_DECODE, &pr.layout, dir);
    d.bootstrap_addr = addr;
    d.logger.level = KVX_LOG_ERROR + 1;
    de = ft_create(&d, why);
    CHECK(de != NULL, "boot: decode engine: %s", why);
    if (!de) { kvx_engine_destroy(pe); return; }
    ex_alloc_pages(&ps, sp, NP);
    ex_alloc_pages(&pr, dp, NP);
    ex_pages_pattern(&ps, room, sp, NP, 1);
    ex_aux_write(&ps, room, 0);
    state_idx(0, 0, ns, sidx);
    state_idx(1, 0, nd, didx);
    ex_state_pattern(&ps, room, sidx, ns, 1);
    memset(&rd, 0, sizeof rd);
    rd.room = room;
    kvx_sender_create(pe, &rd, &s);
    kvx_receiver_create(de, &rd, &r);
    CHECK(kvx_receiver_wait(r, KVX_POLL_WAITING_FOR_INPUT, 60000) == KVX_POLL_WAITING_FOR_INPUT,
          "boot: the receiver reached the prefill: %s", kvx_receiver_error(r));
    CHECK(kvx_receiver_init_state(r, dp, NP, 1, didx, nd) == KVX_OK, "boot: init_state");
    CHECK(kvx_sender_wait(s, KVX_POLL_WAITING_FOR_INPUT, 60000) == KVX_POLL_WAITING_FOR_INPUT,
          "boot: the room frame moved the sender on: %s", kvx_sender_error(s));
    kvx_sender_init(s, NP, 0);
    kvx_sender_send(s, sp, NP / 2);
    kvx_sender_send_state(s, sp + NP / 2, NP - NP / 2, sidx, ns);
    a = kvx_sender_wait(s, KVX_POLL_SUCCESS, 60000);
    b = kvx_receiver_wait(r, KVX_POLL_SUCCESS, 60000);
    if (!expect) {
        CHECK(a == KVX_POLL_SUCCESS && b == KVX_POLL_SUCCESS, "boot %u -> %u: Success (%s / %s)",
              ns, nd, kvx_sender_error(s), kvx_receiver_error(r));
        CHECK(ex_pages_pattern(&pr, room, dp, NP, 0) == 0 && ex_aux_check(&pr, room, 1) &&
                  ex_state_pattern(&pr, room, didx, nd, 0) == 0,
              "boot %u -> %u: pages, aux and state rows in place", ns, nd);
    } else {
        CHECK(a == KVX_POLL_FAILED && b == KVX_POLL_FAILED, "boot %u -> %u: both sides fail (%s, %s)",
              ns, nd, kvx_poll_str(a), kvx_poll_str(b));
        CHECK_STR(kvx_sender_error(s), expect);
        CHECK_STR(kvx_receiver_error(r), expect);
    }
    kvx_sender_destroy(s);
    kvx_receiver_destroy(r);
    kvx_engine_destroy(de);
    kvx_engine_destroy(pe);
    ex_pool_free(&ps);
    ex_pool_free(&pr);
    printf("  boot: %u -> %u state indices%s\n", ns, nd, expect ? " (both sides fail)" : "");
    fflush(stdout);
}

int main(void) {
    static const scase cases[] = {
        {.label = "mamba: 2 state buffers (4096, 1024), 1 index, 3 rooms", .m = &gqa, .ptp = 1,
         .dtp = 1, .type = KVX_STATE_MAMBA, .nbuf = 2, .item = {4096, 1024}, .ns = 1, .nd = 1},
        {.label = "swa: window pages, 6 scattered indices with runs", .m = &gqa, .ptp = 1, .dtp = 1,
         .type = KVX_STATE_SWA, .nbuf = 2, .item = {512, 512}, .ns = 6, .nd = 6},
        {.label = "mamba MLA tp 4->2 (dummies write nothing)", .m = &mla, .ptp = 4, .dtp = 2,
         .type = KVX_STATE_MAMBA, .nbuf = 2, .item = {4096, 1024}, .ns = 1, .nd = 1},
        {.label = "mamba MLA tp 2->4", .m = &mla, .ptp = 2, .dtp = 4, .type = KVX_STATE_MAMBA,
         .nbuf = 1, .item = {2048}, .ns = 1, .nd = 1},
        {.label = "swa gqa tp 2->2", .m = &gqa, .ptp = 2, .dtp = 2, .type = KVX_STATE_SWA,
         .nbuf = 1, .item = {1024}, .ns = 4, .nd = 4},
        {.label = "mamba gqa pp 2->2", .m = &gqa, .ptp = 1, .dtp = 1, .ppp = 2, .dpp = 2,
         .type = KVX_STATE_MAMBA, .nbuf = 2, .item = {4096, 1024}, .ns = 1, .nd = 1},
        /* the counts differ: the decode fails saying both (kvx.h HYBRID STATE) */
        {.label = "count mismatch: prefill 2, decode 3", .m = &gqa, .ptp = 1, .dtp = 1,
         .type = KVX_STATE_SWA, .nbuf = 1, .item = {512}, .ns = 2, .nd = 3,
         .expect = "prefill sent 2 state indices, this decode asked for 3"},
        {.label = "count mismatch: prefill 1, decode 0", .m = &gqa, .ptp = 1, .dtp = 1,
         .type = KVX_STATE_MAMBA, .nbuf = 1, .item = {512}, .ns = 1, .nd = 0,
         .expect = "prefill sent 1 state indices, this decode asked for 0"},
        /* kvx_layout_overlap's refusals reach the room with its sentence */
        {.label = "refused: swa gqa tp 2->1", .m = &gqa, .ptp = 2, .dtp = 1, .type = KVX_STATE_SWA,
         .nbuf = 1, .item = {512}, .ns = 2, .nd = 2,
         .expect = "SGLang refuses sliding-window state with heterogeneous TP on non-MLA models too"},
        {.label = "refused: mamba gqa tp 1->2", .m = &gqa, .ptp = 1, .dtp = 2,
         .type = KVX_STATE_MAMBA, .nbuf = 1, .item = {512}, .ns = 1, .nd = 1,
         .expect = "prefill and decode TP must be equal"},
        {.label = "refused: mamba gqa pp 2->1", .m = &gqa, .ptp = 1, .dtp = 1, .ppp = 2,
         .type = KVX_STATE_MAMBA, .nbuf = 1, .item = {512}, .ns = 1, .nd = 1,
         .expect = "decode PP must equal prefill PP for a hybrid model"},
        /* the same topology: the item lengths transfer_done lists are checked */
        {.label = "refused: mamba tp 2->2, state item_len 4096 vs 2048", .m = &gqa, .ptp = 2,
         .dtp = 2, .type = KVX_STATE_MAMBA, .nbuf = 1, .item = {4096}, .ditem0 = 2048, .ns = 1,
         .nd = 1, .expect = "item_len of state buffer 0 differs"},
        /* what a file says is checked before use: size, CRC32C, presence */
        {.label = "damaged: a byte of state.bin flipped", .m = &gqa, .ptp = 1, .dtp = 1,
         .type = KVX_STATE_SWA, .nbuf = 2, .item = {512, 256}, .ns = 3, .nd = 3,
         .expect = "has CRC32C", .damage = 1},
        {.label = "damaged: state.bin truncated", .m = &gqa, .ptp = 1, .dtp = 1,
         .type = KVX_STATE_SWA, .nbuf = 1, .item = {512}, .ns = 3, .nd = 3,
         .expect = "is 100 bytes; transfer_done says 1536", .damage = 2},
        /* GPU state buffers go through desc.mem's staging copies */
        {.label = "swa, state in (mock) GPU memory, 4 KiB stripes", .m = &gqa, .ptp = 1,
         .dtp = 1, .type = KVX_STATE_SWA, .nbuf = 2, .item = {2048, 1024}, .ns = 6, .nd = 6,
         .gpu = 1},
        {.label = "mamba MLA tp 4->2, state in (mock) GPU memory", .m = &mla, .ptp = 4, .dtp = 2,
         .type = KVX_STATE_MAMBA, .nbuf = 2, .item = {4096, 1024}, .ns = 1, .nd = 1, .gpu = 1},
        /* with an auth key the state fields are inside the MAC */
        {.label = "mamba, auth key", .m = &gqa, .ptp = 1, .dtp = 1, .type = KVX_STATE_MAMBA,
         .nbuf = 2, .item = {4096, 1024}, .ns = 1, .nd = 1, .auth = 1},
        {.label = "damaged: state_crc32c altered under an auth key", .m = &gqa, .ptp = 1,
         .dtp = 1, .type = KVX_STATE_SWA, .nbuf = 1, .item = {512}, .ns = 2, .nd = 2,
         .expect = "its MAC does not match", .damage = 4, .auth = 1},
        {.label = "damaged: state_crc32c altered, no key", .m = &gqa, .ptp = 1, .dtp = 1,
         .type = KVX_STATE_SWA, .nbuf = 1, .item = {512}, .ns = 2, .nd = 2,
         .expect = "transfer_done says 00000000", .damage = 4},
        {.label = "damaged: state.bin removed", .m = &gqa, .ptp = 1, .dtp = 1,
         .type = KVX_STATE_MAMBA, .nbuf = 1, .item = {512}, .ns = 1, .nd = 1, .expect = "state.bin",
         .damage = 3},
    };
    char cmd[600];
    uint32_t i;
    kt_name = "test_file_state";
    kvx_file_register();
    snprintf(root, sizeof root, "/tmp/kvx_test_%d_state", (int)getpid());
    snprintf(cmd, sizeof cmd, "rm -rf %s && mkdir -p %s", root, root);
    if (system(cmd) != 0) return kt_skip("cannot make a scratch directory in /tmp");
    for (i = 0; i < sizeof cases / sizeof cases[0]; i++) run(&cases[i], 60000 + (uint64_t)i * 10);
    boot_case(1, 1, NULL);
    boot_case(3, 3, NULL);
    boot_case(1, 2, "prefill sent 1 state indices, this decode asked for 2");
    boot_case(2, 0, "prefill sent 2 state indices, this decode asked for 0");
    snprintf(cmd, sizeof cmd, "rm -rf %s", root);
    if (system(cmd) != 0) printf("  (could not remove %s)\n", root);
    return kt_done();
}
