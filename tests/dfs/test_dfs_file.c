/* The file transport across two mounts of one distributed filesystem
   (tests/dfs/gluster.sh: two FUSE mounts of one GlusterFS volume, as two
   nodes would mount it, each client with its own caches). The sender's
   directory is on mount A ($KVX_DFS_A), the receiver's is the same
   directory of the volume seen through mount B ($KVX_DFS_B); the brick
   ($KVX_DFS_BRICK) is the server's copy, used to damage files behind both
   clients and to see what really is on the server.

   Cases: a sender killed mid-write (the receiver fails, never Success: at
   once with a bootstrap address, at KVX_FILE_TIMEOUT without one); a
   corrupted chunk (KVX_ERR_CORRUPT, never Success with wrong bytes); a
   sender failure (abort, a bad page index) reaching a receiver that is
   already polling from the other mount, well before KVX_FILE_TIMEOUT; two
   prefill processes writing rooms into one fresh directory at once, one
   through each mount, each read back through the other mount; 200 rooms
   made one after another on A while their receivers poll from B (the case
   that reproduced issue 11's ENOENT). Every byte and aux row is checked
   against content generated independently from the room id.

   Without KVX_DFS_A and KVX_DFS_B it says SKIP and exits 77. */
#define KVX_IMPLEMENTATION
#include "../../kvx_file.h"
#include "../../examples/kvx_example.h"
#include "../kvx_test.h"
#include <dirent.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/mman.h>
#include <sys/wait.h>

static const char *mnt_a, *mnt_b, *brick;
static char rel[128]; /* this run's directory inside the volume */
static const ex_model tiny = {"tiny", 4, 2, 64, 2, 0, "bfloat16"}; /* 8 buffers, 32 KiB pages */
static int layerwise; /* send_rooms: odd requests' chunks go one layer at a time */

/* The pause between two looks of a polling loop; every loop that calls it
   re-checks an observed state and has a deadline. */
static void sleep_ms(int ms) {
    struct timespec ts;
    ts.tv_sec = ms / 1000;
    ts.tv_nsec = (long)(ms % 1000) * 1000000L;
    nanosleep(&ts, NULL);
}
static double secs(uint64_t t0) { return (double)(kvx_now_ns() - t0) / 1e9; }

/* <mount>/<rel>/<sub> */
static void at(char *out, size_t n, const char *mount, const char *sub) {
    snprintf(out, n, "%s/%s/%s", mount, rel, sub);
}

static kvx_engine *engine(kvx_role role, ex_pool *p, const char *dir, const char *boot, char *why) {
    kvx_engine_desc d;
    kvx_engine *e = NULL;
    memset(&d, 0, sizeof d);
    d.role = role;
    d.transport = "file";
    d.layout = p->layout;
    d.file.dir = dir;
    d.logger.level = KVX_LOG_ERROR;
    if (role == KVX_ROLE_PREFILL && boot) {
        d.boot.host = "127.0.0.1";
        d.boot.port = -1; /* ephemeral */
    } else if (boot) {
        d.bootstrap_addr = boot;
    }
    why[0] = 0;
    if (kvx_engine_create(&d, &e, why, 512) != KVX_OK) e = NULL;
    return e;
}

static int terminal(kvx_poll p) { return p == KVX_POLL_SUCCESS || p == KVX_POLL_FAILED; }

static kvx_poll wait_s(kvx_sender *s, int ms) {
    uint64_t t0 = kvx_now_ns();
    while (!terminal(kvx_sender_poll(s)) && kvx_now_ns() - t0 < (uint64_t)ms * 1000000ull)
        sleep_ms(1);
    return kvx_sender_poll(s);
}
static kvx_poll wait_r(kvx_receiver *r, int ms) {
    uint64_t t0 = kvx_now_ns();
    while (!terminal(kvx_receiver_poll(r)) && kvx_now_ns() - t0 < (uint64_t)ms * 1000000ull)
        sleep_ms(1);
    return kvx_receiver_poll(r);
}
static kvx_poll wait_leave_r(kvx_receiver *r, kvx_poll state, int ms) {
    uint64_t t0 = kvx_now_ns();
    while (kvx_receiver_poll(r) == state && kvx_now_ns() - t0 < (uint64_t)ms * 1000000ull)
        sleep_ms(1);
    return kvx_receiver_poll(r);
}

/* A chunk file (whole or temporary) in any directory under dir, seen
   through that path's mount: in room_<id>/ or wherever the sender builds
   a room before it commits it. */
static int chunk_seen(const char *dir) {
    DIR *d = opendir(dir);
    struct dirent *e;
    int found = 0;
    while (d && !found && (e = readdir(d)) != NULL) {
        char sub[1024];
        DIR *s;
        struct dirent *f;
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        snprintf(sub, sizeof sub, "%s/%s", dir, e->d_name);
        if (!(s = opendir(sub))) continue;
        while ((f = readdir(s)) != NULL)
            if (!strncmp(f->d_name, "kv_chunk_", 9)) { found = 1; break; }
        closedir(s);
    }
    if (d) closedir(d);
    return found;
}

static int exists(const char *path) {
    struct stat st;
    return lstat(path, &st) == 0;
}

/* ---- a prefill process sending a list of rooms -------------------------------- */

/* Sends every request through an engine on dir, `window` rooms at a time,
   each request's pages and aux row generated from its room id. Returns the
   number of rooms that failed (printed). */
static int send_rooms(const char *dir, const ex_request *reqs, uint32_t n, uint32_t window,
                      uint32_t chunk, uint64_t seed, atomic_uint *making) {
    ex_pool p;
    kvx_engine *e;
    kvx_sender **s = (kvx_sender **)calloc(window, sizeof *s);
    int32_t **pg = (int32_t **)calloc(window, sizeof *pg);
    uint32_t *which = (uint32_t *)calloc(window, sizeof *which);
    uint32_t next = 0, done = 0, w, maxp = 0, i;
    int failed = 0;
    char why[512];
    for (i = 0; i < n; i++) maxp = reqs[i].pages > maxp ? reqs[i].pages : maxp;
    if (!s || !pg || !which || ex_pool_init(&p, &tiny, maxp * window + 1, 16, window, seed)) return (int)n;
    if (!(e = engine(KVX_ROLE_PREFILL, &p, dir, NULL, why))) {
        printf("  prefill on %s: %s\n", dir, why);
        return (int)n;
    }
    while (done < n) {
        for (w = 0; w < window; w++) {
            if (!s[w] && next < n) {
                const ex_request *q = &reqs[next];
                kvx_room_desc rd;
                uint32_t sent = 0;
                memset(&rd, 0, sizeof rd);
                rd.room = q->room;
                which[w] = next++;
                if (making) atomic_store(making, which[w]); /* for the lookers */
                pg[w] = (int32_t *)malloc(q->pages * sizeof(int32_t));
                ex_alloc_pages(&p, pg[w], q->pages);
                ex_pages_pattern(&p, q->room, pg[w], q->pages, 1);
                ex_aux_write(&p, q->room, (int32_t)w);
                if (kvx_sender_create(e, &rd, &s[w]) != KVX_OK) {
                    printf("  room %llu: sender_create failed\n", (unsigned long long)q->room);
                    failed++, done++;
                    ex_free_pages(&p, pg[w], q->pages);
                    free(pg[w]);
                    s[w] = NULL;
                    continue;
                }
                kvx_sender_init(s[w], q->pages, (int32_t)w);
                while (sent < q->pages) {
                    uint32_t k = q->pages - sent < chunk ? q->pages - sent : chunk, l;
                    if (layerwise && (which[w] & 1))
                        for (l = 0; l < tiny.layers; l++)
                            kvx_sender_send_layers(s[w], pg[w] + sent, k, l, l + 1);
                    else
                        kvx_sender_send(s[w], pg[w] + sent, k);
                    sent += k;
                }
            }
            if (s[w] && terminal(kvx_sender_poll(s[w]))) {
                const ex_request *q = &reqs[which[w]];
                if (kvx_sender_poll(s[w]) != KVX_POLL_SUCCESS) {
                    printf("  sender of room %llu: %s\n", (unsigned long long)q->room,
                           kvx_sender_error(s[w]));
                    failed++;
                }
                kvx_sender_destroy(s[w]);
                ex_free_pages(&p, pg[w], q->pages);
                free(pg[w]);
                s[w] = NULL;
                done++;
            }
        }
        sleep_ms(1);
    }
    kvx_engine_destroy(e);
    ex_pool_free(&p);
    free(s);
    free(pg);
    free(which);
    return failed;
}

/* Receivers for every request, all created (and polling) at once on engine
   e; waits for all within one deadline. Returns how many were verified
   byte for byte with their aux rows; prints every failure. */
typedef struct rx_set {
    kvx_engine *e;
    ex_pool p;
    kvx_receiver **r;
    int32_t **pg;
    const ex_request *reqs;
    uint32_t n, ok, verified, failed;
    /* the lookers (below) */
    char dir[512];
    atomic_uint front;   /* the first room not finished yet */
    atomic_uint *making; /* the room the sender is making now, when it says (shared memory) */
    atomic_int stop;
    pthread_t th[2];
    int nth;
} rx_set;

static int rx_start(rx_set *x, const char *dir, const ex_request *reqs, uint32_t n, uint64_t seed) {
    uint32_t i, total = 0;
    char why[512];
    memset(x, 0, sizeof *x);
    x->reqs = reqs;
    x->n = n;
    snprintf(x->dir, sizeof x->dir, "%s", dir);
    atomic_init(&x->front, 0);
    atomic_init(&x->stop, 0);
    for (i = 0; i < n; i++) total += reqs[i].pages;
    if (ex_pool_init(&x->p, &tiny, total + 1, 16, n, seed)) return -1;
    if (!(x->e = engine(KVX_ROLE_DECODE, &x->p, dir, NULL, why))) {
        printf("  decode on %s: %s\n", dir, why);
        return -1;
    }
    x->r = (kvx_receiver **)calloc(n, sizeof *x->r);
    x->pg = (int32_t **)calloc(n, sizeof *x->pg);
    for (i = 0; i < n; i++) {
        kvx_room_desc rd;
        memset(&rd, 0, sizeof rd);
        rd.room = reqs[i].room;
        x->pg[i] = (int32_t *)malloc(reqs[i].pages * sizeof(int32_t));
        ex_alloc_pages(&x->p, x->pg[i], reqs[i].pages);
        ex_aux_clear(&x->p, (int32_t)i);
        kvx_receiver_create(x->e, &rd, &x->r[i]);
        kvx_receiver_init(x->r[i], x->pg[i], reqs[i].pages, (int32_t)i);
    }
    return 0;
}

/* One pass over the receivers: collects those that finished. Returns 1 when all have. */
static int rx_poll(rx_set *x) {
    uint32_t i, left = 0;
    for (i = 0; i < x->n; i++) {
        kvx_poll st;
        if (!x->r[i]) continue;
        st = kvx_receiver_poll(x->r[i]);
        if (!terminal(st)) {
            if (!left++) atomic_store(&x->front, i);
            continue;
        }
        if (st == KVX_POLL_SUCCESS) {
            x->ok++;
            if (!ex_pages_pattern(&x->p, x->reqs[i].room, x->pg[i], x->reqs[i].pages, 0) &&
                ex_aux_check(&x->p, x->reqs[i].room, (int32_t)i))
                x->verified++;
            else
                printf("  room %llu: Success with WRONG BYTES\n", (unsigned long long)x->reqs[i].room);
        } else {
            x->failed++;
            if (x->failed <= 5)
                printf("  receiver of room %llu: %s\n", (unsigned long long)x->reqs[i].room,
                       kvx_receiver_error(x->r[i]));
        }
        kvx_receiver_destroy(x->r[i]);
        x->r[i] = NULL;
    }
    return left == 0;
}

/* Lookers: threads on the receivers' mount that keep looking up
   room_<id>/transfer_done of the next rooms the sender is about to make, as
   the receivers of many decode processes on other nodes would, only
   without pause. A lookup from another client racing the sender's mkdir
   of that room is what made GlusterFS answer EEXIST for a directory it
   then removed (issue 11); the receivers' own polls hit that window
   rarely. The sender process says which room it is making (a word in
   shared memory), so the lookers hit that window every few dozen rooms. */
static void *looker(void *arg) {
    rx_set *x = (rx_set *)arg;
    char p[700];
    struct stat st;
    while (!atomic_load(&x->stop)) {
        uint32_t f = x->making ? atomic_load(x->making) : atomic_load(&x->front), k;
        for (k = 0; k < 4 && f + k < x->n; k++) {
            snprintf(p, sizeof p, "%s/room_%llu/transfer_done", x->dir,
                     (unsigned long long)x->reqs[f + k].room);
            stat(p, &st);
        }
    }
    return NULL;
}
static void rx_lookers(rx_set *x, int n) {
    for (x->nth = 0; x->nth < n; x->nth++)
        if (pthread_create(&x->th[x->nth], NULL, looker, x)) break;
}

static void rx_end(rx_set *x) {
    uint32_t i;
    atomic_store(&x->stop, 1);
    for (i = 0; i < (uint32_t)x->nth; i++) pthread_join(x->th[i], NULL);
    for (i = 0; i < x->n; i++) {
        if (x->r && x->r[i]) kvx_receiver_destroy(x->r[i]);
        if (x->pg) free(x->pg[i]);
    }
    if (x->e) kvx_engine_destroy(x->e);
    ex_pool_free(&x->p);
    free(x->r);
    free(x->pg);
}

static int wait_child(pid_t pid) {
    int status = 0;
    if (waitpid(pid, &status, 0) != pid) return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
}

/* ---- a sender killed mid-write ------------------------------------------------------ */

/* The child: a prefill on mount A sending one big room (2048 pages, 64 MiB)
   in 64-page chunks through one I/O thread with 4 KiB stripes, so that it
   is still writing when it is killed. With boot, it serves a bootstrap
   address (its port goes to fd) and waits for the receiver's handshake. */
static void killed_child(const char *dir, uint64_t room, uint32_t n, int boot, int fd) {
    ex_pool p;
    kvx_engine *e;
    kvx_sender *s;
    kvx_room_desc rd;
    int32_t *pages = (int32_t *)malloc(n * sizeof(int32_t));
    uint32_t sent = 0;
    int port = 0;
    char why[512];
    setenv("KVX_FILE_IO_THREADS", "1", 1);
    setenv("KVX_FILE_STRIPE", "4096", 1);
    if (!pages || ex_pool_init(&p, &tiny, n, 16, 4, 1)) _exit(3);
    e = engine(KVX_ROLE_PREFILL, &p, dir, boot ? "" : NULL, why);
    if (boot) {
        port = e ? kvx_boot_engine_port(e) : 0;
        if (write(fd, &port, sizeof port) != (ssize_t)sizeof port) _exit(3);
    }
    if (!e) { printf("  killed child: %s\n", why); _exit(3); }
    ex_alloc_pages(&p, pages, n);
    ex_pages_pattern(&p, room, pages, n, 1);
    ex_aux_write(&p, room, 0);
    memset(&rd, 0, sizeof rd);
    rd.room = room;
    if (kvx_sender_create(e, &rd, &s) != KVX_OK) _exit(3);
    while (kvx_sender_poll(s) == KVX_POLL_BOOTSTRAPPING) sleep_ms(1);
    kvx_sender_init(s, n, 0);
    while (sent < n) {
        kvx_sender_send(s, pages + sent, 64);
        sent += 64;
    }
    for (;;) pause(); /* until the parent's SIGKILL */
}

static void test_killed(int boot) {
    const char *label = boot ? "killed sender, bootstrap address" : "killed sender, no bootstrap";
    char dir_a[512], dir_b[512], done_brick[768], why[512], addr[64];
    uint64_t room = boot ? 32 : 31, t0;
    uint32_t n = 2048, i;
    int fds[2] = {-1, -1}, port = 0, saw = 0, rc;
    ex_pool pr;
    kvx_engine *de = NULL;
    kvx_receiver *r = NULL;
    kvx_room_desc rd;
    int32_t *pages;
    pid_t pid;
    printf("- %s\n", label);
    at(dir_a, sizeof dir_a, mnt_a, boot ? "killed_boot" : "killed");
    at(dir_b, sizeof dir_b, mnt_b, boot ? "killed_boot" : "killed");
    snprintf(done_brick, sizeof done_brick, "%s/%s/%s/room_%llu/transfer_done", brick, rel,
             boot ? "killed_boot" : "killed", (unsigned long long)room);
    if (boot && pipe(fds)) return;
    fflush(stdout);
    pid = fork();
    if (pid == 0) killed_child(dir_a, room, n, boot, fds[1]);
    if (boot) {
        close(fds[1]);
        if (read(fds[0], &port, sizeof port) != (ssize_t)sizeof port) port = 0;
        close(fds[0]);
        CHECK(port > 0, "%s: the child prefill serves a bootstrap address", label);
        snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
        setenv("KVX_HEARTBEAT_INTERVAL", "0.3", 1);
        setenv("KVX_FILE_TIMEOUT", "120", 1); /* to show it is not what ends the room */
    } else {
        setenv("KVX_FILE_TIMEOUT", "3", 1);
    }
    ex_pool_init(&pr, &tiny, n, 16, 4, 2);
    de = engine(KVX_ROLE_DECODE, &pr, dir_b, boot ? addr : NULL, why);
    unsetenv("KVX_HEARTBEAT_INTERVAL");
    unsetenv("KVX_FILE_TIMEOUT");
    CHECK(de != NULL, "%s: decode engine on mount B: %s", label, why);
    pages = (int32_t *)malloc(n * sizeof *pages);
    for (i = 0; i < n; i++) pages[i] = (int32_t)i;
    memset(&rd, 0, sizeof rd);
    rd.room = room;
    if (de && boot && port > 0) {
        /* the handshake first: the child only writes once it has the room frame */
        kvx_receiver_create(de, &rd, &r);
        CHECK(wait_leave_r(r, KVX_POLL_BOOTSTRAPPING, 30000) == KVX_POLL_WAITING_FOR_INPUT,
              "%s: handshake: %s", label, kvx_receiver_error(r));
        kvx_receiver_init(r, pages, n, 0);
    }
    /* kill it once a chunk file of the room shows through the OTHER mount */
    t0 = kvx_now_ns();
    while (!(saw = chunk_seen(dir_b)) && secs(t0) < 60) sleep_ms(2);
    kill(pid, SIGKILL);
    rc = wait_child(pid);
    CHECK(saw, "%s: a chunk file showed through mount B before the kill (%.1f s)", label, secs(t0));
    CHECK(rc == 128 + SIGKILL, "%s: the sender died by SIGKILL (%d)", label, rc);
    CHECK(!exists(done_brick), "%s: no transfer_done on the server: killed mid-room", label);
    if (de && !boot) {
        kvx_receiver_create(de, &rd, &r);
        kvx_receiver_init(r, pages, n, 0);
    }
    if (r) {
        kvx_poll st;
        t0 = kvx_now_ns();
        st = wait_r(r, 60000);
        CHECK(st == KVX_POLL_FAILED, "%s: the receiver Failed, never Success (%d)", label, (int)st);
        if (boot) {
            CHECK(secs(t0) < 20, "%s: ... at once by the control channel (%.1f s, KVX_FILE_TIMEOUT 120 s)",
                  label, secs(t0));
            CHECK_STR(kvx_receiver_error(r), "prefill");
        } else {
            CHECK(kvx_receiver_result(r) == KVX_ERR_TIMEOUT, "%s: KVX_ERR_TIMEOUT, got %s", label,
                  kvx_result_str(kvx_receiver_result(r)));
            CHECK(secs(t0) > 1.0 && secs(t0) < 40, "%s: ... at KVX_FILE_TIMEOUT (3 s): %.1f s", label,
                  secs(t0));
        }
        printf("  receiver: %.1f s: %s\n", secs(t0), kvx_receiver_error(r));
        kvx_receiver_destroy(r);
    }
    if (de) kvx_engine_destroy(de);
    ex_pool_free(&pr);
    free(pages);
}

/* ---- a corrupted chunk ----------------------------------------------------------------- */

static void test_corrupt(int via_brick) {
    const char *label = via_brick ? "chunk flipped on the brick" : "chunk flipped through mount B";
    const char *sub = via_brick ? "corrupt_brick" : "corrupt_b";
    char dir_a[512], dir_b[512], chunk[768], why[512];
    ex_pool ps, pr;
    kvx_engine *pe, *de;
    kvx_sender *s;
    kvx_receiver *r;
    kvx_room_desc rd;
    int32_t sp[6] = {0, 1, 2, 3, 4, 5}, dp[6] = {5, 0, 3, 1, 2, 4};
    int fd, flipped = 0;
    unsigned char c;
    printf("- %s\n", label);
    at(dir_a, sizeof dir_a, mnt_a, sub);
    at(dir_b, sizeof dir_b, mnt_b, sub);
    ex_pool_init(&ps, &tiny, 16, 16, 4, 1);
    ex_pool_init(&pr, &tiny, 16, 16, 4, 2);
    pe = engine(KVX_ROLE_PREFILL, &ps, dir_a, NULL, why);
    CHECK(pe != NULL, "%s: prefill engine on A: %s", label, why);
    de = engine(KVX_ROLE_DECODE, &pr, dir_b, NULL, why);
    CHECK(de != NULL, "%s: decode engine on B: %s", label, why);
    if (!pe || !de) goto out;
    memset(&rd, 0, sizeof rd);
    rd.room = 21;
    ex_pages_pattern(&ps, 21, sp, 6, 1);
    ex_aux_write(&ps, 21, 0);
    kvx_sender_create(pe, &rd, &s);
    kvx_sender_init(s, 6, 0);
    kvx_sender_send(s, sp, 3);
    kvx_sender_send(s, sp + 3, 3);
    CHECK(wait_s(s, 30000) == KVX_POLL_SUCCESS, "%s: sent: %s", label, kvx_sender_error(s));
    kvx_sender_destroy(s);
    if (via_brick)
        snprintf(chunk, sizeof chunk, "%s/%s/%s/room_21/kv_chunk_1.bin", brick, rel, sub);
    else
        snprintf(chunk, sizeof chunk, "%s/room_21/kv_chunk_1.bin", dir_b);
    if ((fd = open(chunk, O_RDWR)) >= 0) {
        if (pread(fd, &c, 1, 5000) == 1) {
            c ^= 0x10;
            flipped = pwrite(fd, &c, 1, 5000) == 1;
        }
        close(fd);
    }
    CHECK(flipped, "%s: flipped a byte of %s", label, chunk);
    kvx_receiver_create(de, &rd, &r);
    kvx_receiver_init(r, dp, 6, 1);
    CHECK(wait_r(r, 30000) == KVX_POLL_FAILED, "%s: Failed, never Success", label);
    CHECK(kvx_receiver_result(r) == KVX_ERR_CORRUPT, "%s: KVX_ERR_CORRUPT, got %s: %s", label,
          kvx_result_str(kvx_receiver_result(r)), kvx_receiver_error(r));
    CHECK_STR(kvx_receiver_error(r), "kv_chunk_1.bin");
    kvx_receiver_destroy(r);
out:
    if (pe) kvx_engine_destroy(pe);
    if (de) kvx_engine_destroy(de);
    ex_pool_free(&ps);
    ex_pool_free(&pr);
}

/* ---- a sender failure reaches a receiver already polling from mount B -------- */

typedef enum { FAIL_ABORT_MIDWAY, FAIL_ABORT_AT_ONCE, FAIL_BAD_PAGE } fail_kind;

static void test_sender_fails(fail_kind kind) {
    const char *label = kind == FAIL_ABORT_MIDWAY  ? "abort after a chunk"
                        : kind == FAIL_ABORT_AT_ONCE ? "abort before any chunk"
                                                     : "bad page index";
    const char *expect = kind == FAIL_BAD_PAGE ? "page index 100000" : "cancelled on node A";
    char dir_a[512], dir_b[512], why[512];
    ex_pool ps, pr;
    kvx_engine *pe, *de;
    kvx_sender *s;
    kvx_receiver *r;
    kvx_room_desc rd;
    int32_t sp[64], dp[64];
    uint32_t i;
    uint64_t t0;
    printf("- sender failure: %s\n", label);
    at(dir_a, sizeof dir_a, mnt_a, "fail");
    at(dir_b, sizeof dir_b, mnt_b, "fail");
    for (i = 0; i < 64; i++) sp[i] = dp[i] = (int32_t)i;
    ex_pool_init(&ps, &tiny, 64, 16, 4, 1);
    ex_pool_init(&pr, &tiny, 64, 16, 4, 2);
    pe = engine(KVX_ROLE_PREFILL, &ps, dir_a, NULL, why);
    CHECK(pe != NULL, "%s: prefill engine on A: %s", label, why);
    setenv("KVX_FILE_TIMEOUT", "120", 1);
    de = engine(KVX_ROLE_DECODE, &pr, dir_b, NULL, why);
    unsetenv("KVX_FILE_TIMEOUT");
    CHECK(de != NULL, "%s: decode engine on B: %s", label, why);
    if (!pe || !de) goto out;
    memset(&rd, 0, sizeof rd);
    rd.room = 80 + (uint64_t)kind;
    /* the receiver polls first: mount B looks the room up before it exists */
    kvx_receiver_create(de, &rd, &r);
    kvx_receiver_init(r, dp, 64, 0);
    {   /* mount B looks the room up before it exists, as the receiver's
           polls do: three lookups observed to find nothing */
        char room_path[700];
        struct stat st;
        int misses = 0;
        snprintf(room_path, sizeof room_path, "%s/room_%llu", dir_b, (unsigned long long)rd.room);
        while (misses < 3 && stat(room_path, &st) != 0 && errno == ENOENT) misses++;
        CHECK(misses == 3, "%s: mount B looked the room up before the sender made it", label);
    }
    kvx_sender_create(pe, &rd, &s);
    kvx_sender_init(s, 64, 0);
    CHECK(kvx_sender_poll(s) != KVX_POLL_FAILED, "%s: the sender is alive before it fails: %s", label,
          kvx_sender_error(s));
    t0 = kvx_now_ns();
    if (kind == FAIL_ABORT_MIDWAY) {
        char room_b[600];
        kvx_sender_send(s, sp, 32);
        snprintf(room_b, sizeof room_b, "%s", dir_b);
        while (!chunk_seen(room_b) && secs(t0) < 30) sleep_ms(2);
        kvx_sender_abort(s, "request cancelled on node A");
    } else if (kind == FAIL_ABORT_AT_ONCE) {
        kvx_sender_abort(s, "request cancelled on node A");
    } else {
        sp[3] = 100000;
        kvx_sender_send(s, sp, 64);
        sp[3] = 3;
    }
    CHECK(kvx_sender_poll(s) == KVX_POLL_FAILED, "%s: sender Failed", label);
    t0 = kvx_now_ns();
    CHECK(wait_r(r, 60000) == KVX_POLL_FAILED, "%s: receiver on B Failed", label);
    CHECK(secs(t0) < 15, "%s: ... promptly: %.2f s (KVX_FILE_TIMEOUT 120 s)", label, secs(t0));
    CHECK_STR(kvx_receiver_error(r), expect);
    printf("  receiver: %.2f s: %s\n", secs(t0), kvx_receiver_error(r));
    kvx_receiver_destroy(r);
    kvx_sender_destroy(s);
out:
    if (pe) kvx_engine_destroy(pe);
    if (de) kvx_engine_destroy(de);
    ex_pool_free(&ps);
    ex_pool_free(&pr);
}

/* ---- two prefills, one directory ----------------------------------------------------- */

/* Two prefill processes start at once on a fresh directory (both make it),
   one through each mount, and write rooms into it; each one's rooms are
   received through the other mount by receivers that poll from the start. */
static void test_two_prefills(void) {
    enum { N = 32 };
    char dir_a[512], dir_b[512];
    ex_request ra[N], rb[N];
    rx_set xa, xb;
    atomic_uint *making;
    pid_t pa, pb;
    int ca, cb, sa, sb, all;
    uint64_t t0;
    printf("- two prefills writing rooms into one directory, one on each mount\n");
    at(dir_a, sizeof dir_a, mnt_a, "two");
    at(dir_b, sizeof dir_b, mnt_b, "two");
    ex_requests(ra, N, 501, 16, 512, 16); /* seeds apart in high bits: distinct rooms */
    ex_requests(rb, N, 501 + (1ull << 40), 16, 512, 16);
    fflush(stdout);
    making = (atomic_uint *)mmap(NULL, 2 * sizeof *making, PROT_READ | PROT_WRITE,
                                 MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (making == MAP_FAILED) making = NULL;
    if (making) atomic_init(&making[0], 0), atomic_init(&making[1], 0);
    if ((pa = fork()) == 0) _exit(send_rooms(dir_a, ra, N, 4, 8, 11, making) ? 1 : 0);
    if ((pb = fork()) == 0) _exit(send_rooms(dir_b, rb, N, 4, 8, 12, making ? making + 1 : NULL) ? 1 : 0);
    setenv("KVX_FILE_TIMEOUT", "90", 1);
    sb = rx_start(&xb, dir_b, ra, N, 21); /* A's rooms, read through B */
    sa = rx_start(&xa, dir_a, rb, N, 22); /* B's rooms, read through A */
    unsetenv("KVX_FILE_TIMEOUT");
    CHECK(sa == 0 && sb == 0, "decode engines on both mounts");
    xb.making = making;
    xa.making = making ? making + 1 : NULL;
    rx_lookers(&xa, 1);
    rx_lookers(&xb, 1);
    t0 = kvx_now_ns();
    do {
        int db = sb || rx_poll(&xb), da = sa || rx_poll(&xa); /* poll both every pass */
        all = db && da;
        if (!all) sleep_ms(2);
    } while (!all && secs(t0) < 120);
    ca = wait_child(pa);
    cb = wait_child(pb);
    CHECK(ca == 0, "prefill on A: every room Success (exit %d)", ca);
    CHECK(cb == 0, "prefill on B: every room Success (exit %d)", cb);
    CHECK(xb.verified == N, "A's rooms through B: %u/%u verified (%u Success, %u failed)", xb.verified,
          N, xb.ok, xb.failed);
    CHECK(xa.verified == N, "B's rooms through A: %u/%u verified (%u Success, %u failed)", xa.verified,
          N, xa.ok, xa.failed);
    printf("  %u + %u rooms verified in %.1f s\n", xb.verified, xa.verified, secs(t0));
    rx_end(&xa);
    rx_end(&xb);
    if (making) munmap(making, 2 * sizeof *making);
}

/* ---- many rooms: the case that reproduced issue 11 ---------------------------------- */

static void test_many_rooms(uint32_t n) {
    char dir_a[512], dir_b[512];
    ex_request *reqs = (ex_request *)malloc(n * sizeof *reqs);
    rx_set x;
    atomic_uint *making;
    pid_t pid;
    int c, started, go[2];
    uint64_t t0;
    printf("- %u rooms made on A one after another%s, receivers and 2 lookers polling from B\n", n,
           layerwise ? " (every other one layer by layer)" : "");
    at(dir_a, sizeof dir_a, mnt_a, layerwise ? "many_lw" : "many");
    at(dir_b, sizeof dir_b, mnt_b, layerwise ? "many_lw" : "many");
    ex_requests(reqs, n, layerwise ? 778 : 777, 16, 64, 16);
    making = (atomic_uint *)mmap(NULL, sizeof *making, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
                                 -1, 0);
    if (making == MAP_FAILED) making = NULL;
    if (making) atomic_init(making, 0);
    /* the sender process first (no fork once this one has threads), held
       until the receivers poll */
    if (pipe(go)) go[0] = go[1] = -1;
    fflush(stdout);
    if ((pid = fork()) == 0) {
        char c;
        close(go[1]);
        if (read(go[0], &c, 1) != 1) _exit(2);
        _exit(send_rooms(dir_a, reqs, n, 2, 2, 41, making) ? 1 : 0);
    }
    close(go[0]);
    setenv("KVX_FILE_TIMEOUT", "90", 1);
    started = rx_start(&x, dir_b, reqs, n, 31); /* polling before the first room exists */
    unsetenv("KVX_FILE_TIMEOUT");
    CHECK(started == 0, "decode engine on B");
    x.making = making;
    rx_lookers(&x, 2);
    t0 = kvx_now_ns();
    if (write(go[1], "g", 1) != 1) printf("  cannot start the sender\n");
    close(go[1]);
    while (!started && !rx_poll(&x) && secs(t0) < 150) sleep_ms(2);
    c = wait_child(pid);
    CHECK(c == 0, "prefill on A: all %u rooms Success (exit %d)", n, c);
    CHECK(x.verified == n, "%u/%u rooms verified through B (%u Success, %u failed)", x.verified, n,
          x.ok, x.failed);
    printf("  %u rooms verified in %.1f s\n", x.verified, secs(t0));
    rx_end(&x);
    if (making) munmap(making, sizeof *making);
    free(reqs);
}

int main(void) {
    char top[600], cmd[800];
    kt_name = "test_dfs_file";
    setvbuf(stdout, NULL, _IOLBF, 0);
    mnt_a = getenv("KVX_DFS_A");
    mnt_b = getenv("KVX_DFS_B");
    brick = getenv("KVX_DFS_BRICK");
    if (!mnt_a || !*mnt_a || !mnt_b || !*mnt_b || !brick || !*brick)
        return kt_skip("KVX_DFS_A, KVX_DFS_B and KVX_DFS_BRICK unset: run under tests/dfs/gluster.sh "
                       "(make test-dfs)");
    snprintf(rel, sizeof rel, "kvx_dfs_file_%d", (int)getpid());
    snprintf(top, sizeof top, "%s/%s", mnt_a, rel);
    if (mkdir(top, 0700)) {
        printf("cannot make %s: %s\n", top, strerror(errno));
        return 1;
    }
    kvx_file_register();
    test_killed(0);
    test_killed(1);
    test_corrupt(0);
    test_corrupt(1);
    test_sender_fails(FAIL_ABORT_MIDWAY);
    test_sender_fails(FAIL_ABORT_AT_ONCE);
    test_sender_fails(FAIL_BAD_PAGE);
    test_two_prefills();
    test_many_rooms(200);
    layerwise = 1; /* LAYER-WISE SEND: the same, half the rooms' chunks sent layer by layer */
    test_many_rooms(40);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", top);
    if (system(cmd)) printf("cannot remove %s\n", top);
    return kt_done();
}
