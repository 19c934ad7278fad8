/* test_cuda_trust - failure semantics and the aux segment of the cuda
   transport, both engines in one process on the fake driver (issue 10):
   - a sender that fails on its own (page index out of range, more pages
     than declared, aux slot out of range) fails its receiver at once with
     its reason; a receiver that aborts fails its sender at once; the first
     reason wins;
   - a terminal room sends nothing: receivers (senders) that abort right
     after their Success never fail the other side;
   - the aux segment the prefill maps through /proc/<pid>/fd/<fd> (numbers
     from the peer's hello): a process of another user, or a file that is
     not a kvx aux segment, is refused with a sentence. */
#define KVX_IMPLEMENTATION
#include "../../kvx_cuda.h"
#include "cuda_test.h"
#include "cuda_xport.h"

#if !defined(KVX_WITH_CUDA)
int main(void) {
    kt_name = "test_cuda_trust";
    return kt_skip("built without KVX_WITH_CUDA (no CUDA toolkit headers at build time)");
}
#else
#include <sys/mman.h>

static ct_fake F;
static double slow = 1;

typedef struct xr {
    uint64_t room;
    uint32_t n;
    int32_t sp[16], dp[16];
    int32_t sslot, dslot;
    kvx_sender *s;
    kvx_receiver *r;
} xr;


/* These wait for a state the room reaches (polled every millisecond, the
   API has no blocking wait); the deadline is reached only on failure. */
static int wait_s(kvx_sender *s, kvx_poll want, double t) {
    double end = cx_now() + t * slow;
    while (cx_now() < end) {
        kvx_poll p = kvx_sender_poll(s);
        if (p >= want || p == KVX_POLL_FAILED) return p >= want;
        cx_sleep(0.001);
    }
    return 0;
}
static int wait_r(kvx_receiver *r, kvx_poll want, double t) {
    double end = cx_now() + t * slow;
    while (cx_now() < end) {
        kvx_poll p = kvx_receiver_poll(r);
        if (p >= want || p == KVX_POLL_FAILED) return p >= want;
        cx_sleep(0.001);
    }
    return 0;
}
static double until_r(kvx_receiver *r, double t) {
    double start = cx_now(), end = start + t * slow;
    while (cx_now() < end) {
        if (cx_terminal(kvx_receiver_poll(r))) return cx_now() - start;
        cx_sleep(0.001);
    }
    return -1;
}
static double until_s(kvx_sender *s, double t) {
    double start = cx_now(), end = start + t * slow;
    while (cx_now() < end) {
        if (cx_terminal(kvx_sender_poll(s))) return cx_now() - start;
        cx_sleep(0.001);
    }
    return -1;
}

static void xr_open(cx_side *pf, cx_side *dc, xr *x, uint64_t room, uint32_t n) {
    kvx_room_desc rd;
    memset(x, 0, sizeof *x);
    x->room = room;
    x->n = n;
    ex_alloc_pages(&pf->pool, x->sp, n);
    ex_alloc_pages(&dc->pool, x->dp, n);
    x->sslot = ex_alloc_slot(&pf->pool);
    x->dslot = ex_alloc_slot(&dc->pool);
    ex_aux_write(&pf->pool, room, x->sslot);
    ex_aux_clear(&dc->pool, x->dslot);
    memset(&rd, 0, sizeof rd);
    rd.room = room;
    kvx_receiver_create(dc->e, &rd, &x->r);
    kvx_sender_create(pf->e, &rd, &x->s);
}

static void xr_close(cx_side *pf, cx_side *dc, xr *x) {
    kvx_sender_destroy(x->s);
    kvx_receiver_destroy(x->r);
    ex_free_pages(&pf->pool, x->sp, x->n);
    ex_free_pages(&dc->pool, x->dp, x->n);
    ex_free_slot(&pf->pool, x->sslot);
    ex_free_slot(&dc->pool, x->dslot);
}

static int xr_ready(xr *x) {
    return wait_r(x->r, KVX_POLL_WAITING_FOR_INPUT, 20) &&
           kvx_receiver_init(x->r, x->dp, x->n, x->dslot) == KVX_OK &&
           wait_s(x->s, KVX_POLL_WAITING_FOR_INPUT, 20);
}

enum { BAD_PAGE, TOO_MANY, BAD_AUX };

static void sender_fails(cx_side *pf, cx_side *dc, int how, uint64_t room, const char *what) {
    xr x;
    int32_t pages[8];
    double t;
    int i;
    xr_open(pf, dc, &x, room, 4);
    if (!xr_ready(&x)) {
        CHECK(0, "%s: both sides ready (%s / %s)", what, kvx_receiver_error(x.r), kvx_sender_error(x.s));
        xr_close(pf, dc, &x);
        return;
    }
    if (how == BAD_AUX) {
        kvx_sender_init(x.s, x.n, 100000);
    } else {
        kvx_sender_init(x.s, x.n, x.sslot);
        for (i = 0; i < 8; i++) pages[i] = x.sp[i % 4];
        if (how == BAD_PAGE) {
            pages[2] = 1 << 20;
            kvx_sender_send(x.s, pages, 4);
        } else {
            kvx_sender_send(x.s, pages, 6);
        }
    }
    CHECK(kvx_sender_poll(x.s) == KVX_POLL_FAILED, "%s: the sender failed: %s", what,
          kvx_sender_error(x.s));
    t = until_r(x.r, 30);
    CHECK(t >= 0 && kvx_receiver_poll(x.r) == KVX_POLL_FAILED && t < 5 * slow,
          "%s: the receiver failed %.2f s later (KVX_WAITING_TIMEOUT is 300 s)", what, t);
    CHECK(kvx_sender_error(x.s)[0] && strstr(kvx_receiver_error(x.r), kvx_sender_error(x.s)),
          "%s: with the sender's reason: %s", what, kvx_receiver_error(x.r));
    xr_close(pf, dc, &x);
}

static void aborts(cx_side *pf, cx_side *dc) {
    xr x;
    double t;
    xr_open(pf, dc, &x, 2101, 6);
    if (xr_ready(&x)) {
        kvx_sender_init(x.s, x.n, x.sslot);
        kvx_sender_send(x.s, x.sp, 2);
        kvx_receiver_abort(x.r, "the scheduler dropped request 42");
        kvx_receiver_abort(x.r, "a second reason that must not win");
        t = until_s(x.s, 30);
        CHECK(t >= 0 && t < 5 * slow && kvx_sender_poll(x.s) == KVX_POLL_FAILED &&
              strstr(kvx_sender_error(x.s), "the scheduler dropped request 42") &&
              !strstr(kvx_sender_error(x.s), "second reason") &&
              !strstr(kvx_receiver_error(x.r), "second reason"),
              "receiver aborts mid-transfer: the sender failed %.2f s later with the first "
              "reason: %s", t, kvx_sender_error(x.s));
    } else {
        CHECK(0, "receiver aborts: both sides ready");
    }
    xr_close(pf, dc, &x);
    xr_open(pf, dc, &x, 2102, 6);
    if (xr_ready(&x)) {
        kvx_sender_abort(x.s, "prefill preempted the request");
        kvx_sender_abort(x.s, "a later reason");
        t = until_r(x.r, 30);
        CHECK(t >= 0 && t < 5 * slow && strstr(kvx_receiver_error(x.r), "prefill preempted the request") &&
              !strstr(kvx_receiver_error(x.r), "later reason"),
              "sender aborts twice: the receiver failed %.2f s later with the first reason: %s", t,
              kvx_receiver_error(x.r));
    } else {
        CHECK(0, "sender aborts: both sides ready");
    }
    xr_close(pf, dc, &x);
}

#define RACE 24

static void abort_after_success(cx_side *pf, cx_side *dc, int sender_side) {
    static xr x[RACE];
    int i, left = RACE, ready = 0, called = 0, ss = 0, rs = 0, errs = 0, done[RACE];
    double end;
    const char *what = sender_side ? "senders abort right after their Success"
                                   : "receivers abort right after their Success";
    memset(done, 0, sizeof done);
    for (i = 0; i < RACE; i++) xr_open(pf, dc, &x[i], (sender_side ? 3000u : 4000u) + (uint64_t)i, 1 + (uint32_t)(i % 6));
    for (i = 0; i < RACE; i++) ready += xr_ready(&x[i]);
    for (i = 0; i < RACE; i++) {
        kvx_sender_init(x[i].s, x[i].n, x[i].sslot);
        kvx_sender_send(x[i].s, x[i].sp, x[i].n);
    }
    end = cx_now() + 30 * slow;
    while (left && cx_now() < end) {
        for (i = 0; i < RACE; i++) {
            kvx_poll p;
            if (done[i]) continue;
            p = sender_side ? kvx_sender_poll(x[i].s) : kvx_receiver_poll(x[i].r);
            if (!cx_terminal(p)) continue;
            if (p == KVX_POLL_SUCCESS) {
                if (sender_side) kvx_sender_abort(x[i].s, "aborted after Success");
                else kvx_receiver_abort(x[i].r, "aborted after Success");
                called++;
            }
            done[i] = 1;
            left--;
        }
    }
    for (i = 0; i < RACE; i++) {
        until_s(x[i].s, 10);
        until_r(x[i].r, 10);
        ss += kvx_sender_poll(x[i].s) == KVX_POLL_SUCCESS;
        rs += kvx_receiver_poll(x[i].r) == KVX_POLL_SUCCESS;
        errs += kvx_sender_error(x[i].s)[0] != 0 || kvx_receiver_error(x[i].r)[0] != 0;
    }
    CHECK(ready == RACE && called == RACE, "%s: %d rooms ready, %d aborted after Success", what,
          ready, called);
    CHECK(ss == RACE && rs == RACE && errs == 0, "%s: every sender (%d) and receiver (%d) of %d "
          "stays Success with no error text (%d)", what, ss, rs, RACE, errs);
    for (i = 0; i < RACE; i++) xr_close(pf, dc, &x[i]);
}

/* ---- the aux segment named by a peer's hello ------------------------------------- */

static int seg_try(uint32_t pid, int fd, uint64_t size, char *why, size_t wl) {
    kvx__cux_peer p;
    struct stat st;
    char path[64];
    kvx_result r;
    memset(&p, 0, sizeof p);
    snprintf(p.name, sizeof p.name, "127.0.0.1:4242 (host stranger)");
    p.info.pid = pid;
    p.info.aux_fd = fd;
    p.info.aux_size = size;
    snprintf(path, sizeof path, "/proc/%u/fd/%d", pid, fd);
    p.info.aux_ino = stat(path, &st) == 0 ? (uint64_t)st.st_ino : 0;
    why[0] = 0;
    r = kvx__cux_seg_open(&p, why, wl);
    if (p.aux_map) munmap(p.aux_map, (size_t)size);
    return (int)r;
}

/* --memfd-as <uid>: a process of user uid holding a memfd named like a kvx
   aux segment; prints "SEG <pid> <fd>" and waits for stdin to close. */
static int helper_memfd(char **argv) {
    uid_t uid = (uid_t)atoi(argv[2]);
    int fd;
    if (setgid((gid_t)uid) || setuid(uid)) { printf("ERROR setuid: %s\n", strerror(errno)); return 2; }
    fd = memfd_create("kvx-cuda-aux", 0);
    if (fd < 0 || ftruncate(fd, 4096)) { printf("ERROR memfd: %s\n", strerror(errno)); return 2; }
    printf("SEG %d %d\n", (int)getpid(), fd);
    fflush(stdout);
    cx_wait_stdin_eof();
    return 0;
}

static void aux_segment(void) {
    char why[KVX_ERROR_MAX], line[256];
    int fd, r, pid = 0, sfd = -1;
    char tmpl[] = "/tmp/kvx_test_seg_XXXXXX";
    /* a memfd of this process, named as kvx names its segments: accepted */
    fd = memfd_create("kvx-cuda-aux", 0);
    r = fd >= 0 && ftruncate(fd, 4096) == 0 ? seg_try((uint32_t)getpid(), fd, 4096, why, sizeof why) : -1;
    CHECK(r == KVX_OK, "a kvx aux segment of this user's process maps: %s", why);
    if (fd >= 0) close(fd);
    /* another memfd */
    fd = memfd_create("something-else", 0);
    r = fd >= 0 && ftruncate(fd, 4096) == 0 ? seg_try((uint32_t)getpid(), fd, 4096, why, sizeof why) : -1;
    CHECK(r == KVX_ERR_PERMISSION && strstr(why, "not a kvx aux segment") && strstr(why, "stranger"),
          "a memfd that is not a kvx aux segment is refused: %s", why);
    if (fd >= 0) close(fd);
    /* a regular file of this user */
    fd = mkstemp(tmpl);
    r = fd >= 0 && ftruncate(fd, 4096) == 0 ? seg_try((uint32_t)getpid(), fd, 4096, why, sizeof why) : -1;
    CHECK(r == KVX_ERR_PERMISSION && strstr(why, "not a kvx aux segment"),
          "a regular file is refused: %s", why);
    if (fd >= 0) { close(fd); unlink(tmpl); }
    /* a process of another user (needs root to make one) */
    if (geteuid() != 0) {
        printf("     (not root: the other-user case is not run)\n");
        return;
    }
    {
        cx_proc h;
        const char *args[] = {"--memfd-as", "65534", NULL};
        if (cx_spawn(&h, args, NULL) == 0 && cx_expect(&h, "SEG", line, sizeof line, 20) &&
            sscanf(line, "SEG %d %d", &pid, &sfd) == 2) {
            r = seg_try((uint32_t)pid, sfd, 4096, why, sizeof why);
            CHECK(r == KVX_ERR_PERMISSION && strstr(why, "belongs to user 65534") &&
                      strstr(why, "stranger"),
                  "a segment in a process of another user is refused (even for root): %s", why);
        } else {
            CHECK(0, "a helper process as user 65534: %s", line);
        }
        cx_reap(&h, 10);
    }
}

int main(int argc, char **argv) {
    char why[512], addr[64];
    cx_side pf, dc;
    kt_name = "test_cuda_trust";
    setenv("FAKECUDA_DEVICES", "1", 0);
    cx_find_self(argv[0]);
    if (argc > 2 && !strcmp(argv[1], "--memfd-as")) return helper_memfd(argv);
    if (ct_fake_open(&F, argv[0], why, sizeof why) != 0) return kt_skip(why);
    signal(SIGPIPE, SIG_IGN);
    if (kt_quick()) slow = 3;
    if (cx_side_init(&pf, KVX_ROLE_PREFILL, "tiny", 5, 40, 16, 128, 0, NULL, why, sizeof why)) {
        CHECK(0, "prefill engine: %s", why);
        return kt_done();
    }
    snprintf(addr, sizeof addr, "127.0.0.1:%d", kvx_boot_engine_port(pf.e));
    if (cx_side_init(&dc, KVX_ROLE_DECODE, "tiny", 5, 40, 16, 128, 0, addr, why, sizeof why)) {
        CHECK(0, "decode engine: %s", why);
        cx_side_free(&pf);
        return kt_done();
    }
    sender_fails(&pf, &dc, BAD_PAGE, 2001, "page index out of range");
    sender_fails(&pf, &dc, TOO_MANY, 2002, "more pages than declared");
    sender_fails(&pf, &dc, BAD_AUX, 2003, "aux slot out of range");
    aborts(&pf, &dc);
    abort_after_success(&pf, &dc, 0);
    abort_after_success(&pf, &dc, 1);
    cx_side_free(&dc);
    cx_side_free(&pf);
    aux_segment();
    return kt_done();
}
#endif
