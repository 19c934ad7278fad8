/* The file transport: multi-process transfers verified byte for byte, and
   every failure the issue lists: layout mismatches, corrupted and truncated
   chunks, a missing or unwritable directory, a sender killed mid-write, a
   full disk, an abort, a receiver destroyed mid-read, stale rooms. */
#define KVX_IMPLEMENTATION
#include "../../kvx_file.h"
#include "../../examples/kvx_example.h"
#include "../kvx_test.h"
#include "file_test.h"
#include <signal.h>
#include <sys/wait.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/time.h>

static char root[256];
static const ex_model tiny = {"tiny", 4, 2, 64, 2, 0, "bfloat16"}; /* 8 buffers, 4 KiB pages */

static void sleep_ms(int ms) {
    struct timespec ts;
    ts.tv_sec = ms / 1000;
    ts.tv_nsec = (long)(ms % 1000) * 1000000L;
    nanosleep(&ts, NULL);
}

static kvx_engine *engine(kvx_role role, ex_pool *p, const char *dir, char *why) {
    kvx_engine_desc d = ft_desc(role, &p->layout, dir);
    return ft_create(&d, why);
}

static kvx_poll wait_terminal_s(kvx_sender *s, int ms) {
    uint64_t t0 = kvx_now_ns();
    while (kvx_sender_poll(s) != KVX_POLL_SUCCESS && kvx_sender_poll(s) != KVX_POLL_FAILED &&
           kvx_now_ns() - t0 < (uint64_t)ms * 1000000ull)
        sleep_ms(1);
    return kvx_sender_poll(s);
}

/* Receiver poll loop that also proves Success never shows up on a failure path. */
static kvx_poll wait_terminal_r(kvx_receiver *r, int ms) {
    uint64_t t0 = kvx_now_ns();
    while (kvx_receiver_poll(r) != KVX_POLL_SUCCESS && kvx_receiver_poll(r) != KVX_POLL_FAILED &&
           kvx_now_ns() - t0 < (uint64_t)ms * 1000000ull)
        sleep_ms(1);
    return kvx_receiver_poll(r);
}

/* Sends one request of n pages from a fresh pool; returns the sender's state. */
static kvx_poll send_one(kvx_engine *e, ex_pool *p, uint64_t room, uint32_t n, uint32_t chunk) {
    kvx_room_desc rd;
    kvx_sender *s;
    int32_t *pages = (int32_t *)malloc((n + 1) * sizeof(int32_t));
    uint32_t sent = 0;
    kvx_poll st;
    memset(&rd, 0, sizeof rd);
    rd.room = room;
    ex_alloc_pages(p, pages, n);
    ex_pages_pattern(p, room, pages, n, 1);
    ex_aux_write(p, room, 0);
    if (kvx_sender_create(e, &rd, &s) != KVX_OK) { free(pages); return KVX_POLL_FAILED; }
    kvx_sender_init(s, n, 0);
    while (sent < n) {
        uint32_t k = n - sent < chunk ? n - sent : chunk;
        kvx_sender_send(s, pages + sent, k);
        sent += k;
    }
    if (!n) kvx_sender_send(s, pages, 0);
    st = wait_terminal_s(s, 20000);
    if (st == KVX_POLL_FAILED) printf("  sender: %s\n", kvx_sender_error(s));
    kvx_sender_destroy(s);
    ex_free_pages(p, pages, n);
    free(pages);
    return st;
}

/* ---- multi-process transfers ----------------------------------------------- */

static int child_prefill(const char *dir, const ex_request *reqs, uint32_t nreq, uint32_t chunk) {
    ex_pool p;
    kvx_engine *e;
    kvx_sender *s[64];
    int32_t *pages[64];
    char why[512];
    uint32_t i, failed = 0;
    if (ex_pool_init(&p, &tiny, 4096, 16, 64, 11)) return 3;
    if (!(e = engine(KVX_ROLE_PREFILL, &p, dir, why))) { printf("  child: %s\n", why); return 3; }
    for (i = 0; i < nreq; i++) {
        kvx_room_desc rd;
        uint32_t sent = 0;
        memset(&rd, 0, sizeof rd);
        rd.room = reqs[i].room;
        pages[i] = (int32_t *)malloc(reqs[i].pages * sizeof(int32_t));
        ex_alloc_pages(&p, pages[i], reqs[i].pages);
        ex_pages_pattern(&p, reqs[i].room, pages[i], reqs[i].pages, 1);
        ex_aux_write(&p, reqs[i].room, (int32_t)i);
        kvx_sender_create(e, &rd, &s[i]);
        kvx_sender_init(s[i], reqs[i].pages, (int32_t)i);
        while (sent < reqs[i].pages) {
            uint32_t k = reqs[i].pages - sent < chunk ? reqs[i].pages - sent : chunk;
            kvx_sender_send(s[i], pages[i] + sent, k);
            sent += k;
        }
    }
    for (i = 0; i < nreq; i++) {
        if (wait_terminal_s(s[i], 30000) != KVX_POLL_SUCCESS) {
            printf("  child room %llu: %s\n", (unsigned long long)reqs[i].room,
                   kvx_sender_error(s[i]));
            failed++;
        }
        kvx_sender_destroy(s[i]);
        free(pages[i]);
    }
    kvx_engine_destroy(e);
    ex_pool_free(&p);
    return failed ? 1 : 0;
}

static void test_multiprocess(const char *label, uint32_t nreq, uint32_t max_tok, uint32_t chunk,
                              const char *stripe) {
    char dir[300], why[512];
    ex_request reqs[64];
    ex_pool p;
    kvx_engine *e;
    kvx_receiver *r[64];
    int32_t *pages[64];
    uint32_t i, ok = 0, verified = 0;
    uint64_t deadline;
    pid_t pid;
    int status;
    snprintf(dir, sizeof dir, "%s/mp_%s", root, label);
    if (stripe) setenv("KVX_FILE_STRIPE", stripe, 1);
    ex_requests(reqs, nreq, 1234 + nreq, 1, max_tok, 16);
    fflush(stdout);
    pid = fork();
    if (pid == 0) _exit(child_prefill(dir, reqs, nreq, chunk));
    ex_pool_init(&p, &tiny, 4096, 16, 64, 12);
    e = engine(KVX_ROLE_DECODE, &p, dir, why);
    CHECK(e != NULL, "%s: decode engine: %s", label, why);
    for (i = 0; e && i < nreq; i++) {
        kvx_room_desc rd;
        memset(&rd, 0, sizeof rd);
        rd.room = reqs[i].room;
        pages[i] = (int32_t *)malloc(reqs[i].pages * sizeof(int32_t));
        ex_alloc_pages(&p, pages[i], reqs[i].pages);
        ex_aux_clear(&p, (int32_t)i);
        kvx_receiver_create(e, &rd, &r[i]);
        kvx_receiver_init(r[i], pages[i], reqs[i].pages, (int32_t)i);
    }
    deadline = kvx_now_ns() + 60000000000ull; /* one budget for all rooms */
    for (i = 0; e && i < nreq; i++) {
        uint64_t now = kvx_now_ns();
        int left = now < deadline ? (int)((deadline - now) / 1000000ull) : 0;
        if (wait_terminal_r(r[i], left) == KVX_POLL_SUCCESS) {
            ok++;
            if (!ex_pages_pattern(&p, reqs[i].room, pages[i], reqs[i].pages, 0) &&
                ex_aux_check(&p, reqs[i].room, (int32_t)i))
                verified++;
        } else {
            printf("  room %llu: %s\n", (unsigned long long)reqs[i].room, kvx_receiver_error(r[i]));
        }
        kvx_receiver_destroy(r[i]);
        free(pages[i]);
    }
    waitpid(pid, &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "%s: prefill process succeeded", label);
    CHECK(ok == nreq, "%s: %u/%u rooms Success", label, ok, nreq);
    CHECK(verified == nreq, "%s: %u/%u rooms verified byte for byte with aux", label, verified, nreq);
    {
        struct stat st;
        snprintf(why, sizeof why, "%s/room_%llu", dir, (unsigned long long)reqs[0].room);
        CHECK(stat(why, &st) != 0, "%s: room directory removed after Success", label);
    }
    kvx_engine_destroy(e);
    ex_pool_free(&p);
    unsetenv("KVX_FILE_STRIPE");
}

/* ---- layout mismatches ---------------------------------------------------------- */

static void test_mismatch(const char *label, ex_model sm, uint32_t sps, ex_model rm, uint32_t rps,
                          const char *expect) {
    char dir[300], why[512];
    ex_pool ps, pr;
    kvx_engine *pe, *de;
    kvx_receiver *r;
    kvx_room_desc rd;
    int32_t pages[2] = {0, 1};
    snprintf(dir, sizeof dir, "%s/mm_%s", root, label);
    ex_pool_init(&ps, &sm, 8, sps, 4, 1);
    ex_pool_init(&pr, &rm, 8, rps, 4, 2);
    pe = engine(KVX_ROLE_PREFILL, &ps, dir, why);
    de = engine(KVX_ROLE_DECODE, &pr, dir, why);
    CHECK(send_one(pe, &ps, 9, 2, 2) == KVX_POLL_SUCCESS, "%s: sent", label);
    memset(&rd, 0, sizeof rd);
    rd.room = 9;
    kvx_receiver_create(de, &rd, &r);
    kvx_receiver_init(r, pages, 2, 0);
    CHECK(wait_terminal_r(r, 5000) == KVX_POLL_FAILED, "%s: receiver Failed", label);
    CHECK(kvx_receiver_result(r) == KVX_ERR_LAYOUT_MISMATCH, "%s: KVX_ERR_LAYOUT_MISMATCH, got %s",
          label, kvx_result_str(kvx_receiver_result(r)));
    CHECK_STR(kvx_receiver_error(r), expect);
    kvx_receiver_destroy(r);
    kvx_engine_destroy(pe);
    kvx_engine_destroy(de);
    ex_pool_free(&ps);
    ex_pool_free(&pr);
}

/* ---- damaged rooms ---------------------------------------------------------------- */

typedef void (*damage_fn)(const char *roomdir);
static void flip_byte(const char *d) {
    char p[400];
    int fd;
    unsigned char c;
    snprintf(p, sizeof p, "%s/kv_chunk_1.bin", d);
    fd = open(p, O_RDWR);
    pread(fd, &c, 1, 5000);
    c ^= 0x10;
    pwrite(fd, &c, 1, 5000);
    close(fd);
}
static void truncate_chunk(const char *d) {
    char p[400];
    snprintf(p, sizeof p, "%s/kv_chunk_0.bin", d);
    truncate(p, 4096);
}
static void garble_meta(const char *d) {
    char p[400];
    int fd;
    snprintf(p, sizeof p, "%s/kv_chunk_0.bin.meta", d);
    fd = open(p, O_WRONLY);
    pwrite(fd, "#garbage#", 9, 0);
    close(fd);
}
static void flip_aux(const char *d) {
    char p[400];
    int fd;
    snprintf(p, sizeof p, "%s/metadata.bin", d);
    fd = open(p, O_WRONLY);
    pwrite(fd, "X", 1, 3);
    close(fd);
}
static void remove_chunk(const char *d) {
    char p[400];
    snprintf(p, sizeof p, "%s/kv_chunk_1.bin", d);
    unlink(p);
}

static void test_damage(const char *label, damage_fn damage, kvx_result want, const char *expect) {
    char dir[300], rd_path[400], why[512];
    ex_pool ps, pr;
    kvx_engine *pe, *de;
    kvx_receiver *r;
    kvx_room_desc rd;
    int32_t pages[6] = {5, 0, 3, 1, 2, 4};
    snprintf(dir, sizeof dir, "%s/dmg_%s", root, label);
    ex_pool_init(&ps, &tiny, 16, 16, 4, 1);
    ex_pool_init(&pr, &tiny, 16, 16, 4, 2);
    pe = engine(KVX_ROLE_PREFILL, &ps, dir, why);
    de = engine(KVX_ROLE_DECODE, &pr, dir, why);
    CHECK(send_one(pe, &ps, 21, 6, 3) == KVX_POLL_SUCCESS, "%s: sent", label);
    snprintf(rd_path, sizeof rd_path, "%s/room_21", dir);
    damage(rd_path);
    memset(&rd, 0, sizeof rd);
    rd.room = 21;
    kvx_receiver_create(de, &rd, &r);
    kvx_receiver_init(r, pages, 6, 0);
    CHECK(wait_terminal_r(r, 30000) == KVX_POLL_FAILED, "%s: Failed, never Success", label);
    CHECK(kvx_receiver_result(r) == want, "%s: %s, got %s", label, kvx_result_str(want),
          kvx_result_str(kvx_receiver_result(r)));
    CHECK_STR(kvx_receiver_error(r), expect);
    kvx_receiver_destroy(r);
    kvx_engine_destroy(pe);
    kvx_engine_destroy(de);
    ex_pool_free(&ps);
    ex_pool_free(&pr);
}

/* ---- a shared filesystem that shows a room before all of its files -------------------- */

static char late_log[4096];
static pthread_mutex_t late_mu = PTHREAD_MUTEX_INITIALIZER;
static void late_logger(void *u, kvx_log_level lv, const char *sub, uint64_t room,
                        const char *msg) {
    (void)u; (void)lv; (void)sub; (void)room;
    pthread_mutex_lock(&late_mu);
    if (strlen(late_log) + strlen(msg) + 2 < sizeof late_log) {
        strcat(late_log, msg);
        strcat(late_log, "\n");
    }
    pthread_mutex_unlock(&late_mu);
}
static int late_logged(const char *what) {
    int found;
    pthread_mutex_lock(&late_mu);
    found = strstr(late_log, what) != NULL;
    pthread_mutex_unlock(&late_mu);
    return found;
}

/* transfer_done lists kv_chunk_1.bin, which this node does not see yet: the
   receiver looks again (KVX_FILE_SETTLE) instead of failing, and succeeds
   with every byte once it shows up; when it never does, the room fails as
   corrupt once the settle time is over. */
static void test_late_file(int shows_up) {
    char dir[300], room[400], chunk[500], hidden[500], why[512];
    ex_pool ps, pr;
    kvx_engine *pe, *de;
    kvx_engine_desc d;
    kvx_receiver *r;
    kvx_room_desc rd;
    int32_t pages[6] = {5, 0, 3, 1, 2, 4};
    uint64_t t0, waited;
    const char *label = shows_up ? "late_shows_up" : "late_never";
    snprintf(dir, sizeof dir, "%s/%s", root, label);
    ex_pool_init(&ps, &tiny, 16, 16, 4, 1);
    ex_pool_init(&pr, &tiny, 16, 16, 4, 2);
    pe = engine(KVX_ROLE_PREFILL, &ps, dir, why);
    CHECK(send_one(pe, &ps, 23, 6, 3) == KVX_POLL_SUCCESS, "%s: sent", label);
    snprintf(room, sizeof room, "%s/room_23", dir);
    snprintf(chunk, sizeof chunk, "%s/kv_chunk_1.bin", room);
    snprintf(hidden, sizeof hidden, "%s/hidden.bin", dir);
    CHECK(rename(chunk, hidden) == 0, "%s: chunk 1 hidden", label);
    memset(&d, 0, sizeof d);
    d.role = KVX_ROLE_DECODE;
    d.transport = "file";
    d.layout = pr.layout;
    d.file.dir = dir;
    d.file.settle_s = shows_up ? 60 : 0.5;
    d.logger.func = late_logger;
    d.logger.level = KVX_LOG_INFO;
    late_log[0] = 0;
    CHECK(kvx_engine_create(&d, &de, why, sizeof why) == KVX_OK, "%s: engine: %s", label, why);
    memset(&rd, 0, sizeof rd);
    rd.room = 23;
    t0 = kvx_now_ns();
    kvx_receiver_create(de, &rd, &r);
    kvx_receiver_init(r, pages, 6, 0);
    if (shows_up) {
        while (!late_logged("looking again") && kvx_now_ns() - t0 < 30000000000ull &&
               kvx_receiver_poll(r) != KVX_POLL_FAILED)
            sleep_ms(1);
        CHECK(late_logged("kv_chunk_1.bin") && late_logged("KVX_FILE_SETTLE"),
              "%s: the receiver said it looks again for kv_chunk_1.bin", label);
        CHECK(kvx_receiver_poll(r) != KVX_POLL_FAILED && kvx_receiver_poll(r) != KVX_POLL_SUCCESS,
              "%s: still waiting while the chunk is missing (%s)", label, kvx_receiver_error(r));
        CHECK(rename(hidden, chunk) == 0, "%s: chunk 1 shows up", label);
        CHECK(wait_terminal_r(r, 30000) == KVX_POLL_SUCCESS, "%s: Success once it is there: %s",
              label, kvx_receiver_error(r));
        CHECK(!ex_pages_pattern(&pr, 23, pages, 6, 0) && ex_aux_check(&pr, 23, 0),
              "%s: every byte and the aux row verified", label);
    } else {
        CHECK(wait_terminal_r(r, 30000) == KVX_POLL_FAILED, "%s: Failed, never Success", label);
        waited = kvx_now_ns() - t0;
        CHECK(kvx_receiver_result(r) == KVX_ERR_CORRUPT, "%s: corrupt, got %s", label,
              kvx_result_str(kvx_receiver_result(r)));
        CHECK_STR(kvx_receiver_error(r), "kv_chunk_1.bin");
        CHECK(waited >= 500000000ull, "%s: failed after the settle time (%.3f s)", label,
              (double)waited / 1e9);
    }
    kvx_receiver_destroy(r);
    kvx_engine_destroy(pe);
    kvx_engine_destroy(de);
    ex_pool_free(&ps);
    ex_pool_free(&pr);
}

/* A room id used again while the first room's directory is still there:
   the second sender's commit replaces it whole (moved aside, removed), and
   the receiver reads the second room, not a mix. */
static void test_reused_id(void) {
    char dir[300], why[512];
    ex_pool ps, pr;
    kvx_engine *pe, *de;
    kvx_receiver *r;
    kvx_room_desc rd;
    int32_t pages[6] = {5, 0, 3, 1, 2, 4};
    DIR *dd;
    struct dirent *de_;
    int left = 0;
    snprintf(dir, sizeof dir, "%s/reused", root);
    ex_pool_init(&ps, &tiny, 16, 16, 4, 1);
    ex_pool_init(&pr, &tiny, 16, 16, 4, 2);
    pe = engine(KVX_ROLE_PREFILL, &ps, dir, why);
    de = engine(KVX_ROLE_DECODE, &pr, dir, why);
    CHECK(pe && de, "reused: engines: %s", why);
    if (!pe || !de) return;
    CHECK(send_one(pe, &ps, 24, 3, 3) == KVX_POLL_SUCCESS, "reused: first room (3 pages) sent");
    CHECK(send_one(pe, &ps, 24, 6, 2) == KVX_POLL_SUCCESS, "reused: second room (6 pages) sent");
    memset(&rd, 0, sizeof rd);
    rd.room = 24;
    kvx_receiver_create(de, &rd, &r);
    kvx_receiver_init(r, pages, 6, 0);
    CHECK(wait_terminal_r(r, 30000) == KVX_POLL_SUCCESS, "reused: the second room received: %s",
          kvx_receiver_error(r));
    CHECK(!ex_pages_pattern(&pr, 24, pages, 6, 0) && ex_aux_check(&pr, 24, 0),
          "reused: every byte of the second room verified");
    kvx_receiver_destroy(r);
    if ((dd = opendir(dir)) != NULL) {
        while ((de_ = readdir(dd)) != NULL) left += de_->d_name[0] != '.';
        closedir(dd);
    }
    CHECK(left == 0, "reused: nothing left in the directory (%d entries)", left);
    kvx_engine_destroy(pe);
    kvx_engine_destroy(de);
    ex_pool_free(&ps);
    ex_pool_free(&pr);
}

/* ---- directories ---------------------------------------------------------------------- */

static void test_bad_dirs(void) {
    char why[512], dir[300];
    ex_pool p;
    kvx_engine *e;
    ex_pool_init(&p, &tiny, 4, 16, 2, 1);
    e = engine(KVX_ROLE_PREFILL, &p, "/proc/kvx_no_such/dir", why);
    CHECK(!e, "engine refused on a directory that cannot be created");
    CHECK_STR(why, "/proc/kvx_no_such");
    snprintf(dir, sizeof dir, "%s/afile", root);
    close(open(dir, O_CREAT | O_WRONLY, 0644));
    e = engine(KVX_ROLE_DECODE, &p, dir, why);
    CHECK(!e && strstr(why, dir), "a path that is a file is named: %s", why);
    /* no permission: as root, drop to nobody in a child */
    snprintf(dir, sizeof dir, "%s/ro", root);
    mkdir(dir, 0755);
    chmod(dir, 0555);
    {
        int fds[2];
        pid_t pid;
        char msg[512] = {0};
        int status;
        pipe(fds);
        fflush(stdout);
        pid = fork();
        if (pid == 0) {
            kvx_engine *ce;
            char w[512];
            close(fds[0]);
            if (geteuid() == 0 && (setgid(65534) || setuid(65534))) _exit(5);
            ce = engine(KVX_ROLE_PREFILL, &p, dir, w);
            write(fds[1], w, strlen(w));
            _exit(ce ? 1 : 0);
        }
        close(fds[1]);
        read(fds[0], msg, sizeof msg - 1);
        close(fds[0]);
        waitpid(pid, &status, 0);
        CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "engine refused without permission");
        CHECK(strstr(msg, dir) && strstr(msg, "ermission"), "names the path and the reason: %s",
              msg);
    }
    chmod(dir, 0755);
    ex_pool_free(&p);
}

static void test_stale_sweep(void) {
    char dir[300], old[400], fresh[400], why[512], f[500];
    struct timeval tv[2];
    struct stat st;
    ex_pool p;
    kvx_engine *e;
    snprintf(dir, sizeof dir, "%s/sweep", root);
    mkdir(dir, 0755);
    snprintf(old, sizeof old, "%s/room_1", dir);
    snprintf(fresh, sizeof fresh, "%s/room_2", dir);
    mkdir(old, 0755);
    mkdir(fresh, 0755);
    snprintf(f, sizeof f, "%s/kv_chunk_0.bin", old);
    close(open(f, O_CREAT | O_WRONLY, 0644));
    gettimeofday(&tv[0], NULL);
    tv[0].tv_sec -= 7200;
    tv[1] = tv[0];
    utimes(old, tv);
    ex_pool_init(&p, &tiny, 4, 16, 2, 1);
    e = engine(KVX_ROLE_DECODE, &p, dir, why);
    CHECK(e != NULL, "engine: %s", why);
    CHECK(stat(old, &st) != 0, "room older than KVX_FILE_TTL removed at engine start");
    CHECK(stat(fresh, &st) == 0, "fresh room kept");
    kvx_engine_destroy(e);
    ex_pool_free(&p);
}

/* ---- killed sender, full disk, abort, destroy mid-read ------------------------------ */

/* A sender builds its room in <dir>/room_<id>.tmp.<pid>.<nonce> and renames
   it into place when done: 1 when such a directory holds a chunk file. */
static int has_stage(const char *dir, const char *room) {
    DIR *d = opendir(dir);
    struct dirent *de;
    char pre[64], chunk[700];
    struct stat st;
    int found = 0;
    if (!d) return 0;
    snprintf(pre, sizeof pre, "%s.tmp.", room);
    while ((de = readdir(d)) != NULL) {
        if (strncmp(de->d_name, pre, strlen(pre))) continue;
        snprintf(chunk, sizeof chunk, "%s/%s/kv_chunk_0.bin", dir, de->d_name);
        if (!stat(chunk, &st)) found = 1;
    }
    closedir(d);
    return found;
}

static void test_killed_sender(void) {
    char dir[300], roomdir[400], why[512];
    ex_pool pr;
    kvx_engine *de;
    kvx_receiver *r;
    kvx_room_desc rd;
    int32_t *pages;
    uint32_t n = 1024, i; /* 1024 pages of 32 KiB = 32 MiB */
    pid_t pid;
    uint64_t t0;
    int status, saw_tmp = 0;
    struct stat st;
    snprintf(dir, sizeof dir, "%s/killed", root);
    snprintf(roomdir, sizeof roomdir, "%s/room_31", dir);
    fflush(stdout);
    pid = fork();
    if (pid == 0) {
        ex_pool ps;
        kvx_engine *pe;
        char w[512];
        /* slow writes: one thread, small stripes */
        setenv("KVX_FILE_IO_THREADS", "1", 1);
        setenv("KVX_FILE_STRIPE", "4096", 1);
        ex_pool_init(&ps, &tiny, n, 16, 4, 1);
        pe = engine(KVX_ROLE_PREFILL, &ps, dir, w);
        for (;;) send_one(pe, &ps, 31, n, n);
    }
    t0 = kvx_now_ns();
    while (!(saw_tmp = has_stage(dir, "room_31")) && kvx_now_ns() - t0 < 10000000000ull)
        sleep_ms(1);
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
    CHECK(saw_tmp, "sender was killed while writing a chunk of the room it was building");
    CHECK(stat(roomdir, &st) != 0, "a room killed before its commit is not in place");
    setenv("KVX_FILE_TIMEOUT", "0.5", 1);
    ex_pool_init(&pr, &tiny, n, 16, 4, 2);
    de = engine(KVX_ROLE_DECODE, &pr, dir, why);
    unsetenv("KVX_FILE_TIMEOUT");
    pages = (int32_t *)malloc(n * sizeof *pages);
    for (i = 0; i < n; i++) pages[i] = (int32_t)i;
    memset(&rd, 0, sizeof rd);
    rd.room = 31;
    kvx_receiver_create(de, &rd, &r);
    kvx_receiver_init(r, pages, n, 0);
    CHECK(wait_terminal_r(r, 10000) == KVX_POLL_FAILED, "receiver never reports Success");
    CHECK(kvx_receiver_result(r) == KVX_ERR_TIMEOUT, "times out, got %s",
          kvx_result_str(kvx_receiver_result(r)));
    CHECK_STR(kvx_receiver_error(r), "transfer_done appeared");
    CHECK_STR(kvx_receiver_error(r), roomdir);
    kvx_receiver_destroy(r);
    kvx_engine_destroy(de);
    ex_pool_free(&pr);
    free(pages);
}

static void test_disk_full(void) {
    char dir[300], why[512];
    ex_pool ps, pr;
    kvx_engine *pe, *de;
    kvx_receiver *r;
    kvx_room_desc rd;
    int32_t pages[256];
    uint32_t i;
    int mounted = 0;
    snprintf(dir, sizeof dir, "%s/full", root);
    mkdir(dir, 0755);
    if (geteuid() == 0 && mount("kvx_test", dir, "tmpfs", 0, "size=1m") == 0) mounted = 1;
    printf("  disk full via %s\n", mounted ? "a 1 MiB tmpfs" : "RLIMIT_FSIZE (no tmpfs mount here)");
    ex_pool_init(&ps, &tiny, 256, 16, 4, 1);
    ex_pool_init(&pr, &tiny, 256, 16, 4, 2);
    pe = engine(KVX_ROLE_PREFILL, &ps, dir, why);
    de = engine(KVX_ROLE_DECODE, &pr, dir, why);
    CHECK(pe && de, "engines: %s", why);
    if (!mounted) {
        struct rlimit rl = {1 << 20, 1 << 20};
        signal(SIGXFSZ, SIG_IGN);
        setrlimit(RLIMIT_FSIZE, &rl);
    }
    memset(&rd, 0, sizeof rd);
    rd.room = 41;
    kvx_receiver_create(de, &rd, &r);
    for (i = 0; i < 256; i++) pages[i] = (int32_t)i;
    kvx_receiver_init(r, pages, 256, 0);
    {
        kvx_sender *s;
        kvx_sender_create(pe, &rd, &s);
        kvx_sender_init(s, 256, 0); /* 8 MiB into 1 MiB */
        kvx_sender_send(s, pages, 256);
        CHECK(wait_terminal_s(s, 10000) == KVX_POLL_FAILED, "sender Failed on a full disk");
        CHECK(kvx_sender_result(s) == KVX_ERR_NO_SPACE, "KVX_ERR_NO_SPACE, got %s",
              kvx_result_str(kvx_sender_result(s)));
        CHECK_STR(kvx_sender_error(s), mounted ? "No space left on device" : "File too large");
        CHECK_STR(kvx_sender_error(s), "kv_chunk_0.bin");
        kvx_sender_destroy(s);
    }
    CHECK(wait_terminal_r(r, 5000) == KVX_POLL_FAILED, "receiver Failed, never Success");
    CHECK_STR(kvx_receiver_error(r), "the sender failed");
    kvx_receiver_destroy(r);
    if (!mounted) {
        struct rlimit rl = {RLIM_INFINITY, RLIM_INFINITY};
        setrlimit(RLIMIT_FSIZE, &rl);
    }
    kvx_engine_destroy(pe);
    kvx_engine_destroy(de);
    if (mounted) umount(dir);
    ex_pool_free(&ps);
    ex_pool_free(&pr);
}

static void test_abort_and_destroy(void) {
    char dir[300], why[512];
    ex_pool ps, pr;
    kvx_engine *pe, *de;
    kvx_receiver *r;
    kvx_sender *s;
    kvx_room_desc rd;
    int32_t pages[64];
    uint32_t i, round;
    snprintf(dir, sizeof dir, "%s/abort", root);
    ex_pool_init(&ps, &tiny, 64, 16, 4, 1);
    ex_pool_init(&pr, &tiny, 64, 16, 4, 2);
    pe = engine(KVX_ROLE_PREFILL, &ps, dir, why);
    de = engine(KVX_ROLE_DECODE, &pr, dir, why);
    for (i = 0; i < 64; i++) pages[i] = (int32_t)i;
    memset(&rd, 0, sizeof rd);
    rd.room = 51;
    kvx_sender_create(pe, &rd, &s);
    kvx_sender_init(s, 64, 0);
    kvx_sender_send(s, pages, 32);
    wait_terminal_s(s, 200);
    kvx_sender_abort(s, "request cancelled by the user");
    CHECK(kvx_sender_result(s) == KVX_ERR_ABORTED, "sender aborted");
    kvx_receiver_create(de, &rd, &r);
    kvx_receiver_init(r, pages, 64, 0);
    CHECK(wait_terminal_r(r, 5000) == KVX_POLL_FAILED, "receiver Failed after the sender's abort");
    CHECK_STR(kvx_receiver_error(r), "request cancelled by the user");
    kvx_receiver_destroy(r);
    kvx_sender_destroy(s);
    /* destroy a receiver while its reads are in flight, many times: no byte
       may land after destroy returns (ASan/TSan watch the pool) */
    {
        uint32_t late = 0, b;
        for (round = 0; round < 20; round++) {
            rd.room = 60 + round;
            send_one(pe, &ps, rd.room, 64, 64);
            kvx_receiver_create(de, &rd, &r);
            kvx_receiver_init(r, pages, 64, 1);
            sleep_ms((int)(round % 4));
            kvx_receiver_destroy(r);
            for (b = 0; b < pr.layout.num_buffers; b++) /* poison, then look for late bytes */
                memset(pr.bufs[b].base, 0xA5, pr.bufs[b].length);
            sleep_ms(20);
            for (b = 0; b < pr.layout.num_buffers; b++) {
                const unsigned char *m = (const unsigned char *)pr.bufs[b].base;
                uint64_t i;
                for (i = 0; i < pr.bufs[b].length; i++)
                    if (m[i] != 0xA5) { late++; break; }
            }
        }
        CHECK(late == 0, "no byte lands in the pool after kvx_receiver_destroy (%u buffers hit)", late);
    }
    kvx_engine_destroy(pe);
    kvx_engine_destroy(de);
    ex_pool_free(&ps);
    ex_pool_free(&pr);
}

/* ---- GPU-memory layouts through kvx_mem_ops, with a mock device (file_test.h) */

static kvx_engine *gpu_engine(kvx_role role, ex_pool *p, kvx_buffer *devbufs, const char *dir,
                              int with_ops, char *why) {
    kvx_engine_desc d;
    kvx_engine *e = NULL;
    uint32_t i;
    memset(&d, 0, sizeof d);
    for (i = 0; i < p->layout.num_buffers; i++) {
        devbufs[i] = p->bufs[i];
        devbufs[i].base = to_dev(p->bufs[i].base);
        devbufs[i].mem = KVX_MEM_CUDA;
        devbufs[i].device = 3;
    }
    d.role = role;
    d.transport = "file";
    d.layout = p->layout;
    d.layout.buffers = devbufs;
    d.file.dir = dir;
    d.logger.level = KVX_LOG_ERROR;
    if (with_ops) {
        d.mem.copy = mock_copy;
        d.mem.host_alloc = mock_alloc;
        d.mem.host_free = mock_free;
    }
    why[0] = 0;
    kvx_engine_create(&d, &e, why, 512);
    return e;
}

static void test_gpu_layout(void) {
    char dir[300], why[512];
    ex_pool ps, pr;
    kvx_buffer sb[8], rb[8];
    kvx_engine *pe, *de;
    kvx_receiver *r;
    kvx_sender *s;
    kvx_room_desc rd;
    int32_t sp[40], dp[40];
    uint32_t sent = 0;
    snprintf(dir, sizeof dir, "%s/gpu", root);
    setenv("KVX_FILE_STRIPE", "65536", 1);
    ex_pool_init(&ps, &tiny, 64, 16, 4, 1);
    ex_pool_init(&pr, &tiny, 64, 16, 4, 2);
    CHECK(!gpu_engine(KVX_ROLE_PREFILL, &ps, sb, dir, 0, why), "GPU layout without mem ops refused");
    CHECK_STR(why, "kvx_cuda_mem_ops");
    pe = gpu_engine(KVX_ROLE_PREFILL, &ps, sb, dir, 1, why);
    de = gpu_engine(KVX_ROLE_DECODE, &pr, rb, dir, 1, why);
    unsetenv("KVX_FILE_STRIPE");
    CHECK(pe && de, "GPU-layout engines: %s", why);
    ex_alloc_pages(&ps, sp, 40);
    ex_alloc_pages(&pr, dp, 40);
    ex_pages_pattern(&ps, 81, sp, 40, 1);
    ex_aux_write(&ps, 81, 2);
    memset(&rd, 0, sizeof rd);
    rd.room = 81;
    kvx_receiver_create(de, &rd, &r);
    kvx_receiver_init(r, dp, 40, 1);
    kvx_sender_create(pe, &rd, &s);
    kvx_sender_init(s, 40, 2);
    while (sent < 40) { kvx_sender_send(s, sp + sent, 8); sent += 8; }
    CHECK(wait_terminal_r(r, 10000) == KVX_POLL_SUCCESS, "GPU pages through staging: %s",
          kvx_receiver_error(r));
    CHECK(ex_pages_pattern(&pr, 81, dp, 40, 0) == 0 && ex_aux_check(&pr, 81, 1),
          "GPU pages verified byte for byte");
    CHECK(__atomic_load_n(&mock_copies, __ATOMIC_RELAXED) >= 2, "copies went through kvx_mem_ops");
    kvx_sender_destroy(s);
    kvx_receiver_destroy(r);
    /* a device error fails the room with the driver's words */
    __atomic_store_n(&mock_fail, 1, __ATOMIC_RELEASE);
    rd.room = 82;
    kvx_sender_create(pe, &rd, &s);
    kvx_sender_init(s, 8, -1);
    kvx_sender_send(s, sp, 8);
    CHECK(wait_terminal_s(s, 5000) == KVX_POLL_FAILED, "device error fails the sender");
    CHECK_STR(kvx_sender_error(s), "CUDA_ERROR_ILLEGAL_ADDRESS");
    kvx_sender_destroy(s);
    __atomic_store_n(&mock_fail, 0, __ATOMIC_RELEASE);
    kvx_engine_destroy(pe);
    kvx_engine_destroy(de);
    ex_pool_free(&ps);
    ex_pool_free(&pr);
}

/* The on-disk format is readable by a short script in another language. */
static void test_python_reader(void) {
    char dir[300], why[512], cmd[800];
    ex_pool ps;
    kvx_engine *pe;
    int rc;
    if (system("command -v python3 >/dev/null 2>&1") != 0) {
        printf("  python3 not found: skipping the cross-language reader check\n");
        return;
    }
    snprintf(dir, sizeof dir, "%s/py", root);
    setenv("KVX_FILE_KEEP", "1", 1);
    ex_pool_init(&ps, &tiny, 16, 16, 4, 1);
    pe = engine(KVX_ROLE_PREFILL, &ps, dir, why);
    unsetenv("KVX_FILE_KEEP");
    CHECK(send_one(pe, &ps, 71, 5, 2) == KVX_POLL_SUCCESS, "sent for python");
    snprintf(cmd, sizeof cmd, "python3 tests/file/read_room.py %s/room_71 71 >/dev/null", dir);
    rc = system(cmd);
    CHECK(rc == 0, "tests/file/read_room.py verified the room and the page bytes (rc %d)", rc);
    kvx_engine_destroy(pe);
    ex_pool_free(&ps);
}

int main(void) {
    ex_model m2 = tiny, m3 = tiny;
    kt_name = "test_file";
    snprintf(root, sizeof root, "/tmp/kvx_test_%d_file", (int)getpid());
    mkdir(root, 0755);
    kvx_file_register();
    test_multiprocess("unchunked", 8, 300, 100000, NULL);
    test_multiprocess("chunked", 8, 600, 2, NULL);
    test_multiprocess("concurrent", kt_quick() ? 24 : 48, 200, 3, NULL);
    test_multiprocess("striped", 4, 1000, 16, "65536");
    m2.dtype = "float16";
    m3.layers = 3;
    test_mismatch("page_size", tiny, 16, tiny, 32, "page_size differs: ours 32, theirs 16");
    test_mismatch("dtype", m2, 16, tiny, 16, "dtype differs: ours 'bfloat16', theirs 'float16'");
    test_mismatch("buffers", tiny, 16, m3, 16, "buffer count differs: ours 6, theirs 8");
    test_damage("flip", flip_byte, KVX_ERR_CORRUPT, "checksum mismatch in");
    test_damage("truncate", truncate_chunk, KVX_ERR_CORRUPT, "truncated");
    test_damage("meta", garble_meta, KVX_ERR_CORRUPT, "is not valid JSON");
    test_damage("aux", flip_aux, KVX_ERR_CORRUPT, "metadata.bin");
    test_damage("missing", remove_chunk, KVX_ERR_CORRUPT, "kv_chunk_1.bin");
    test_late_file(1);
    test_late_file(0);
    test_reused_id();
    kvx_file_chunk_info_free(NULL); /* NULL ok, like every free (a crash fails the test) */
    test_bad_dirs();
    test_stale_sweep();
    test_killed_sender();
    test_disk_full();
    test_abort_and_destroy();
    test_gpu_layout();
    test_python_reader();
    {
        char cmd[400];
        snprintf(cmd, sizeof cmd, "rm -rf %s", root);
        system(cmd);
    }
    return kt_done();
}
