/* test_file_topo.c - the file transport between instances of different
   parallel layouts (kvx_file.h PARALLEL LAYOUTS): each prefill rank is a
   process that writes its own room; each decode rank is a process that
   reads its contributors' rooms and verifies every head of every token
   (ex_pages_pattern), the aux rows, and that it received each byte once.
   Heterogeneous TP both ways, TP beyond the KV heads, MLA (dummies write
   nothing), PP 2 -> 1 and 2 -> 2, and a contributor that fails or is
   killed mid-room (the decode fails naming it, never Success). */
#define KVX_IMPLEMENTATION
#include "../../kvx_file.h"
#include "../../examples/kvx_example.h"
#include "../kvx_test.h"
#include "file_test.h"
#include <signal.h>
#include <sys/wait.h>
#include <dirent.h>

#define NP 24    /* request pages */
#define POOL 64
#define PS 4     /* tokens per page */

static char root[128];
static const ex_model gqa = {"gqa", 4, 8, 8, 2, 0, "bfloat16"}; /* 8 KV heads of 16 bytes */
static const ex_model mla = {"mla", 4, 1, 36, 2, 1, "bfloat16"};

enum { OK_RUN = 0, FAIL_RUN = 1, KILL_RUN = 2, LIE_RUN = 3, WAIT_RUN = 4 };

static uint32_t count_prefix(const char *dir, const char *prefix) {
    DIR *d = opendir(dir);
    struct dirent *de;
    uint32_t n = 0;
    if (!d) return 0;
    while ((de = readdir(d)) != NULL) n += !strncmp(de->d_name, prefix, strlen(prefix));
    closedir(d);
    return n;
}

static void sleep_ms(int ms) {
    struct timespec ts;
    ts.tv_sec = ms / 1000;
    ts.tv_nsec = (long)(ms % 1000) * 1000000L;
    nanosleep(&ts, NULL);
}

static void child_exit(void) {
    fflush(stdout);
    _exit(kt_fail ? 1 : 0);
}

/* This process's engine, as rank rk (desc.boot), and the room's desc;
   the process ends when the engine cannot start. */
static kvx_engine *rank_engine(kvx_role role, ex_pool *p, const char *dir, const ex_rank *rk,
                               uint64_t room, kvx_room_desc *rd) {
    char why[512];
    kvx_engine_desc d = ft_rank_desc(role, &p->layout, dir, rk->tp, rk->tp_rank, rk->pp, rk->pp_rank);
    kvx_engine *e = ft_create(&d, why);
    CHECK(e != NULL, "%s engine: %s", role == KVX_ROLE_PREFILL ? "prefill" : "decode", why);
    if (!e) child_exit();
    memset(rd, 0, sizeof *rd);
    rd->room = room;
    return e;
}

/* A prefill rank: writes its room in two chunks (mode: or fails after
   the first, or dies after the first). */
static void prefill_rank(const char *dir, const ex_model *m, ex_rank rk, uint32_t dtp,
                         uint32_t dpp, uint64_t room, int mode) {
    ex_pool p;
    kvx_engine *e;
    kvx_sender *s;
    kvx_room_desc rd;
    char v[16];
    int32_t pages[NP];
    kvx_poll st;
    kt_fail = kt_pass = 0; /* this process's own checks */
    snprintf(v, sizeof v, "%u", dtp);
    setenv("KVX_FILE_DECODE_TP", v, 1);
    CHECK(ex_pool_init_rank(&p, m, POOL, PS, 2, 1 + rk.tp_rank * 7 + rk.pp_rank, &rk) == 0, "pool");
    ex_alloc_pages(&p, pages, NP); /* scattered: the pool's free list is shuffled */
    ex_pages_pattern(&p, room, pages, NP, 1);
    /* the aux rows are right only where the decode rank's last layer is
       (kvx_layout_overlap's sends_aux): elsewhere they would fail the check */
    ex_aux_write(&p, dpp == rk.pp || p.layer_begin + p.layers == m->layers ? room : room ^ 0xBAD, 0);
    if (mode == LIE_RUN) p.layout.layer_begin = p.layers; /* claims the next rank's layers */
    e = rank_engine(KVX_ROLE_PREFILL, &p, dir, &rk, room, &rd);
    kvx_sender_create(e, &rd, &s);
    kvx_sender_init(s, NP, 0);
    kvx_sender_send(s, pages, NP / 2);
    if (mode == KILL_RUN) raise(SIGKILL);
    if (mode == WAIT_RUN) { /* a slow rank: the decode gives up meanwhile */
        char marker[600];
        struct stat sb;
        uint64_t t0 = kvx_now_ns();
        snprintf(marker, sizeof marker, "%s/room_%llu.tp%u.pp%u.aborted", dir,
                 (unsigned long long)room, rk.tp_rank, rk.pp_rank);
        /* the marker appears, or the first chunk's own writes already saw it */
        while (stat(marker, &sb) && kvx_sender_poll(s) != KVX_POLL_FAILED &&
               kvx_now_ns() - t0 < 60000000000ull)
            sleep_ms(2);
        CHECK(stat(marker, &sb) == 0 || kvx_sender_poll(s) == KVX_POLL_FAILED,
              "the decode's abort marker %s appeared", marker);
        if (kvx_sender_poll(s) != KVX_POLL_FAILED) kvx_sender_send(s, pages + NP / 2, NP - NP / 2);
        st = kvx_sender_wait(s, KVX_POLL_SUCCESS, 60000);
        CHECK(st == KVX_POLL_FAILED, "the slow prefill rank stops (%s)", kvx_poll_str(st));
        CHECK_STR(kvx_sender_error(s), "the decode side gave up the room");
        CHECK_STR(kvx_sender_error(s), "decode rank tp 0 pp 0: ");
        snprintf(marker, sizeof marker, "room_%llu.tp%u.pp%u", (unsigned long long)room, rk.tp_rank,
                 rk.pp_rank);
        t0 = kvx_now_ns(); /* room_failed runs after the state turns Failed */
        while (count_prefix(dir, marker) && kvx_now_ns() - t0 < 60000000000ull) sleep_ms(2);
        CHECK(count_prefix(dir, marker) == 0, "the slow prefill rank removed its room and the marker");
        kvx_sender_destroy(s);
        kvx_engine_destroy(e);
        ex_pool_free(&p);
        child_exit();
    }
    if (mode == FAIL_RUN) kvx_sender_abort(s, "prefill gave up");
    else kvx_sender_send(s, pages + NP / 2, NP - NP / 2);
    st = kvx_sender_wait(s, KVX_POLL_SUCCESS, 60000);
    if (mode == OK_RUN || mode == LIE_RUN)
        CHECK(st == KVX_POLL_SUCCESS, "prefill tp %u pp %u: %s", rk.tp_rank, rk.pp_rank,
              kvx_sender_error(s));
    kvx_sender_destroy(s);
    kvx_engine_destroy(e);
    ex_pool_free(&p);
    child_exit();
}

/* A decode rank: reads the room; expect NULL = Success with every byte
   checked, else the failure sentence must contain expect. */
static void decode_rank(const char *dir, const ex_model *m, ex_rank rk, uint32_t ptp, uint32_t ppp,
                        uint64_t room, const char *expect, int give_up) {
    ex_pool p;
    kvx_engine *e;
    kvx_receiver *r;
    kvx_room_desc rd;
    kvx_engine_stats stats;
    char v[16];
    int32_t pages[NP];
    uint32_t i;
    kvx_poll st;
    kt_fail = kt_pass = 0; /* this process's own checks */
    snprintf(v, sizeof v, "%u", ptp);
    setenv("KVX_FILE_PREFILL_TP", v, 1);
    snprintf(v, sizeof v, "%u", ppp);
    setenv("KVX_FILE_PREFILL_PP", v, 1);
    CHECK(ex_pool_init_rank(&p, m, POOL, PS, 2, 100 + rk.tp_rank * 7 + rk.pp_rank, &rk) == 0, "pool");
    for (i = 0; i < p.layout.num_buffers; i++) memset(p.bufs[i].base, 0xEE, p.bufs[i].length);
    ex_aux_clear(&p, 1);
    ex_alloc_pages(&p, pages, NP);
    e = rank_engine(KVX_ROLE_DECODE, &p, dir, &rk, room, &rd);
    kvx_receiver_create(e, &rd, &r);
    kvx_receiver_init(r, pages, NP, 1);
    if (give_up) kvx_receiver_abort(r, "decode gave up");
    st = kvx_receiver_wait(r, KVX_POLL_SUCCESS, 60000);
    if (!expect) {
        CHECK(st == KVX_POLL_SUCCESS, "decode tp %u pp %u: %s", rk.tp_rank, rk.pp_rank,
              kvx_receiver_error(r));
        CHECK(ex_pages_pattern(&p, room, pages, NP, 0) == 0,
              "decode tp %u pp %u: every head of every token in place", rk.tp_rank, rk.pp_rank);
        CHECK(ex_aux_check(&p, room, 1), "decode tp %u pp %u: the aux rows of the last layer's rank",
              rk.tp_rank, rk.pp_rank);
        kvx_engine_stats_get(e, &stats);
        CHECK(stats.bytes == NP * kvx_layout_page_bytes(&p.layout) + kvx_layout_aux_row_bytes(&p.layout),
              "decode tp %u pp %u: %llu bytes placed, each byte once: %llu", rk.tp_rank, rk.pp_rank,
              (unsigned long long)stats.bytes,
              (unsigned long long)(NP * kvx_layout_page_bytes(&p.layout) +
                                   kvx_layout_aux_row_bytes(&p.layout)));
    } else {
        CHECK(st == KVX_POLL_FAILED, "decode tp %u pp %u fails, never Success (%s)", rk.tp_rank,
              rk.pp_rank, kvx_poll_str(st));
        CHECK_STR(kvx_receiver_error(r), expect);
    }
    kvx_receiver_destroy(r);
    kvx_engine_destroy(e);
    ex_pool_free(&p);
    child_exit();
}

static int exists(const char *dir, const char *name) {
    char path[600];
    struct stat st;
    snprintf(path, sizeof path, "%s/%s", dir, name);
    return stat(path, &st) == 0;
}

static uint32_t count_rooms(const char *dir) {
    DIR *d = opendir(dir);
    struct dirent *de;
    uint32_t n = 0;
    if (!d) return 0;
    while ((de = readdir(d)) != NULL) n += !strncmp(de->d_name, "room_", 5);
    closedir(d);
    return n;
}

/* One topology: every prefill rank (one process each) writes, then every
   decode rank (one process each) reads and verifies. bad_tp: that prefill
   TP rank (PP rank 0) fails (mode) and every decode rank that reads it
   must fail naming it. */
static void topo(const ex_model *m, uint32_t ptp, uint32_t dtp, uint32_t ppp, uint32_t dpp,
                 int bad_tp, int mode) {
    char dir[400], label[96], name[96], expect[96];
    pid_t pids[64];
    uint32_t a, q, n = 0, i;
    const uint64_t room = 7000 + ptp * 100 + dtp * 10 + ppp + dpp * 1000 + (uint64_t)m->mla * 5;
    snprintf(label, sizeof label, "%s tp %u->%u pp %u->%u%s", m->name, ptp, dtp, ppp, dpp,
             bad_tp < 0 ? "" : mode == KILL_RUN ? " (one killed)" : mode == LIE_RUN ?
             " (two claim the same layers)" : " (one fails)");
    snprintf(dir, sizeof dir, "%s/%s_%u_%u_%u_%u_%d", root, m->name, ptp, dtp, ppp, dpp, mode);
    for (a = 0; a < ptp; a++)
        for (q = 0; q < ppp; q++) {
            ex_rank rk = {ptp, a, ppp, q};
            pid_t pid;
            fflush(stdout);
            pid = fork();
            if (pid == 0) prefill_rank(dir, m, rk, dtp, dpp, room, (int)a == bad_tp && !q ? mode : OK_RUN);
            pids[n++] = pid;
        }
    for (i = 0; i < n; i++) {
        int status = ft_reap(pids[i]);
        int killed = bad_tp >= 0 && mode == KILL_RUN && i == (uint32_t)bad_tp * ppp;
        CHECK(killed ? WIFSIGNALED(status) : WIFEXITED(status) && WEXITSTATUS(status) == 0,
              "%s: prefill process %u (status %d)", label, i, status);
    }
    for (a = 0; a < ptp; a++)
        for (q = 0; q < ppp; q++) {
            int dummy = kvx_mla_dummy(m->mla, (int)ptp, (int)a, (int)dtp);
            snprintf(name, sizeof name, "room_%llu.tp%u.pp%u", (unsigned long long)room, a, q);
            if (ptp * ppp == 1) snprintf(name, sizeof name, "room_%llu", (unsigned long long)room);
            if ((int)a == bad_tp && !q && mode == KILL_RUN) continue;
            CHECK(exists(dir, name) == !dummy, "%s: %s %s", label, name,
                  dummy ? "not written (an MLA dummy writes nothing)" : "written");
        }
    n = 0;
    for (a = 0; a < dtp; a++)
        for (q = 0; q < dpp; q++) {
            ex_rank rk = {dtp, a, dpp, q};
            const char *ex = NULL;
            pid_t pid;
            if (bad_tp >= 0) { /* does this decode rank read the bad prefill rank? */
                uint32_t first = ptp >= dtp ? a * (ptp / dtp) : a / (dtp / ptp);
                uint32_t count = ptp >= dtp ? ptp / dtp : 1;
                if ((uint32_t)bad_tp >= first && (uint32_t)bad_tp < first + count && (dpp == 1 || !q)) {
                    snprintf(expect, sizeof expect, "prefill rank tp %d pp 0", bad_tp);
                    if (mode == LIE_RUN)
                        snprintf(expect, sizeof expect, "both hold layers 2-3, heads 0-7");
                    ex = expect;
                }
            }
            fflush(stdout);
            pid = fork();
            if (pid == 0) {
                /* only a rank that waits for the killed one: the others
                   must finish whatever the load */
                if (ex && mode == KILL_RUN) setenv("KVX_FILE_TIMEOUT", "2", 1);
                decode_rank(dir, m, rk, ptp, ppp, room, ex, 0);
            }
            pids[n++] = pid;
        }
    for (i = 0; i < n; i++) {
        int status = ft_reap(pids[i]);
        CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "%s: decode process %u (status %d)",
              label, i, status);
    }
    if (bad_tp < 0 || mode == LIE_RUN) /* the last of several readers removes a room: nothing is left */
        CHECK(count_rooms(dir) == 0, "%s: %u room entries left in %s", label, count_rooms(dir), dir);
    printf("  %s\n", label);
    fflush(stdout);
}

/* The decode side gives up while a contributor still writes: that prefill
   rank sees it at its next chunk, fails with the decode's reason and
   removes its room. */
static void give_up(void) {
    char dir[400];
    ex_rank p1 = {2, 1, 1, 0}, d0 = {1, 0, 1, 0};
    pid_t pp, pd;
    int st1, st2;
    snprintf(dir, sizeof dir, "%s/give_up", root);
    fflush(stdout);
    if ((pp = fork()) == 0) prefill_rank(dir, &gqa, p1, 1, 1, 9901, WAIT_RUN);
    if ((pd = fork()) == 0) decode_rank(dir, &gqa, d0, 2, 1, 9901, "decode gave up", 1);
    st1 = ft_reap(pp);
    st2 = ft_reap(pd);
    CHECK(WIFEXITED(st1) && WEXITSTATUS(st1) == 0, "give up: prefill process (status %d)", st1);
    CHECK(WIFEXITED(st2) && WEXITSTATUS(st2) == 0, "give up: decode process (status %d)", st2);
    printf("  gqa tp 2->1: the decode gives up, the slow prefill rank stops\n");
}

int main(void) {
    char cmd[600];
    kt_name = "test_file_topo";
    kvx_file_register();
    snprintf(root, sizeof root, "/tmp/kvx_test_%d_topo", (int)getpid());
    snprintf(cmd, sizeof cmd, "rm -rf %s && mkdir -p %s", root, root);
    if (system(cmd) != 0) return kt_skip("cannot make a scratch directory in /tmp");
    fflush(stdout);
    topo(&gqa, 4, 2, 1, 1, -1, OK_RUN);
    topo(&gqa, 2, 4, 1, 1, -1, OK_RUN);
    topo(&gqa, 1, 8, 1, 1, -1, OK_RUN);
    topo(&gqa, 2, 2, 1, 1, -1, OK_RUN);
    topo(&mla, 4, 2, 1, 1, -1, OK_RUN);
    topo(&mla, 2, 4, 1, 1, -1, OK_RUN);
    topo(&gqa, 1, 1, 2, 1, -1, OK_RUN);
    topo(&gqa, 1, 1, 2, 2, -1, OK_RUN);
    topo(&gqa, 2, 1, 2, 1, -1, OK_RUN);
    topo(&gqa, 4, 2, 1, 1, 1, FAIL_RUN);
    topo(&gqa, 4, 2, 1, 1, 3, KILL_RUN);
    topo(&gqa, 1, 1, 2, 1, 0, LIE_RUN);
    give_up();
    snprintf(cmd, sizeof cmd, "rm -rf %s", root);
    if (system(cmd) != 0) printf("  (could not remove %s)\n", root);
    return kt_done();
}
