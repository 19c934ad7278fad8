/* The file transport's LAYER-WISE SEND (kvx_sender_send_layers): chunks
   sent whole, layer by layer and in layer ranges, mixed in one room, with
   every layer of every page verified byte for byte against content seeded
   from (room, model layer, K/V, token, head); a part's bytes are in the
   chunk file as soon as it is handed over, while the receiver is still not
   Success; GPU pools (staged pieces); heterogeneous TP 2 -> 1 and PP 2 -> 1
   with layer-wise prefill ranks; an out-of-order range and a layer sent
   twice fail the sender with the core's sentence and the decode room with
   it; a prefill killed between layers fails the decode room, never
   Success. */
#define KVX_IMPLEMENTATION
#include "../../kvx_file.h"
#include "../../examples/kvx_example.h"
#include "../kvx_test.h"
#include "file_test.h"
#include <signal.h>
#include <sys/wait.h>
#include <sys/inotify.h>
#include <poll.h>

static char root[256];
static const ex_model tiny = {"tiny", 4, 2, 64, 2, 0, "bfloat16"}; /* 8 buffers, 4 KiB pages */
static const ex_model gqa = {"gqa", 4, 8, 8, 2, 0, "bfloat16"};   /* 8 KV heads of 16 bytes */
static const ex_model mla = {"mla", 4, 1, 36, 2, 1, "bfloat16"};  /* 4 buffers */


/* The sender's room being built: <dir>/room_<id>.tmp.<pid>.<nonce>; its
   path into out, 1 when found. */
static int find_stage(const char *dir, uint64_t room, char *out, size_t n) {
    DIR *d = opendir(dir);
    struct dirent *de;
    char pre[64];
    int found = 0;
    if (!d) return 0;
    snprintf(pre, sizeof pre, "room_%llu.tmp.", (unsigned long long)room);
    while ((de = readdir(d)) != NULL && !found)
        if (!strncmp(de->d_name, pre, strlen(pre))) {
            snprintf(out, n, "%s/%s", dir, de->d_name);
            found = 1;
        }
    closedir(d);
    return found;
}

/* Whether buffer b's region of the staged chunk file holds the pool's
   pages[0..n) of that buffer (the file is buffer-major: ON DISK). */
static int staged_buffer_is(const char *file, const ex_pool *p, uint32_t b, const int32_t *pages,
                            uint32_t n) {
    uint64_t off = 0, len = p->bufs[b].item_len;
    uint32_t i;
    char *got = (char *)malloc(len);
    int fd = open(file, O_RDONLY), ok = fd >= 0;
    for (i = 0; i < b; i++) off += (uint64_t)n * p->bufs[i].item_len;
    for (i = 0; ok && i < n; i++)
        ok = pread(fd, got, len, (off_t)(off + i * len)) == (ssize_t)len &&
             !memcmp(got, (char *)p->bufs[b].base + (uint64_t)pages[i] * len, len);
    if (fd >= 0) close(fd);
    free(got);
    return ok;
}

/* Waits, on inotify events of `dir` and of the sender's staged room in it
   (no timer), until chunk file `name` of room `room` holds pool p's bytes of
   buffers ba and bb for pages pg[0..n); 1 when seen, 0 after timeout_s. */
static int wait_staged(const char *dir, uint64_t room, const char *name, ex_pool *p, uint32_t ba,
                       uint32_t bb, const int32_t *pg, uint32_t n, double timeout_s) {
    char stage[512], file[700];
    int fd = inotify_init1(IN_CLOEXEC | IN_NONBLOCK), watched = 0, landed = 0;
    uint64_t end = kvx_now_ns() + (uint64_t)(timeout_s * 1e9);
    if (fd < 0) return 0;
    if (inotify_add_watch(fd, dir, IN_CREATE | IN_MOVED_TO) < 0) { /* dir must exist: no event else */
        close(fd);
        return 0;
    }
    for (;;) {
        struct pollfd q;
        char ev[4096];
        uint64_t now = kvx_now_ns();
        if (find_stage(dir, room, stage, sizeof stage)) {
            if (!watched) /* before the check: a write after it is an event */
                watched = inotify_add_watch(fd, stage, IN_CREATE | IN_MODIFY | IN_CLOSE_WRITE) >= 0;
            snprintf(file, sizeof file, "%s/%s", stage, name);
            landed = staged_buffer_is(file, p, ba, pg, n) && staged_buffer_is(file, p, bb, pg, n);
        }
        if (landed || now >= end) break;
        q.fd = fd;
        q.events = POLLIN;
        if (poll(&q, 1, (int)((end - now) / 1000000u) + 1) > 0)
            while (read(fd, ev, sizeof ev) > 0) {} /* drained: the state is read again */
    }
    close(fd);
    return landed;
}

static kvx_engine *gpu_engine(kvx_role role, ex_pool *p, kvx_buffer *devbufs, const char *dir,
                              char *why) {
    kvx_engine_desc d = ft_desc(role, &p->layout, dir);
    uint32_t i;
    for (i = 0; i < p->layout.num_buffers; i++) {
        devbufs[i] = p->bufs[i];
        devbufs[i].base = to_dev(p->bufs[i].base);
        devbufs[i].mem = KVX_MEM_CUDA;
        devbufs[i].device = 3;
    }
    d.layout.buffers = devbufs;
    d.mem.copy = mock_copy;
    d.mem.host_alloc = mock_alloc;
    d.mem.host_free = mock_free;
    return ft_create(&d, why);
}

/* One room of 3 chunks of 8 pages: chunk 0 whole, chunk 1 one layer at a
   time, chunk 2 in the ranges [0,1), [1,3), [3,4). After chunk 2's first
   layer is handed over, its bytes must reach the staged chunk file while
   the receiver is not Success; then everything is verified. sealed: with
   an auth key (every meta sealed) and KVX_FILE_FSYNC=1. */
static void test_mixed(const char *label, int gpu, int sealed) {
    char dir[300], why[512];
    ex_pool ps, pr;
    kvx_buffer sb[8], rb[8];
    kvx_engine *pe, *de;
    kvx_sender *s;
    kvx_receiver *r;
    kvx_room_desc rd;
    kvx_engine_stats st;
    int32_t sp[24], dp[24];
    const uint64_t room = gpu ? 12 : sealed ? 13 : 11;
    uint32_t l, b;
    int landed = 0;
    snprintf(dir, sizeof dir, "%s/mixed%d%d", root, gpu, sealed);
    setenv("KVX_FILE_STRIPE", "4096", 1); /* several pieces per part: their CRC32Cs combine */
    if (sealed) setenv("KVX_FILE_FSYNC", "1", 1), setenv("KVX_AUTH_KEY", "layer-wise-key-0123456789", 1);
    ex_pool_init(&ps, &tiny, 64, 16, 4, 1);
    ex_pool_init(&pr, &tiny, 64, 16, 4, 2);
    if (gpu) {
        pe = gpu_engine(KVX_ROLE_PREFILL, &ps, sb, dir, why);
        de = pe ? gpu_engine(KVX_ROLE_DECODE, &pr, rb, dir, why) : NULL;
    } else {
        kvx_engine_desc d = ft_desc(KVX_ROLE_PREFILL, &ps.layout, dir);
        pe = ft_create(&d, why);
        d = ft_desc(KVX_ROLE_DECODE, &pr.layout, dir);
        de = pe ? ft_create(&d, why) : NULL;
    }
    unsetenv("KVX_FILE_STRIPE");
    unsetenv("KVX_FILE_FSYNC");
    unsetenv("KVX_AUTH_KEY");
    CHECK(pe && de, "%s: engines: %s", label, why);
    if (!pe || !de) return;
    for (b = 0; b < pr.layout.num_buffers; b++) memset(pr.bufs[b].base, 0xEE, pr.bufs[b].length);
    ex_alloc_pages(&ps, sp, 24); /* scattered: the pool's free list is shuffled */
    ex_alloc_pages(&pr, dp, 24);
    ex_pages_pattern(&ps, room, sp, 24, 1);
    ex_aux_write(&ps, room, 2);
    ex_aux_clear(&pr, 1);
    memset(&rd, 0, sizeof rd);
    rd.room = room;
    kvx_receiver_create(de, &rd, &r);
    kvx_receiver_init(r, dp, 24, 1);
    kvx_sender_create(pe, &rd, &s);
    kvx_sender_init(s, 24, 2);
    CHECK(kvx_sender_send(s, sp, 8) == KVX_OK, "%s: chunk 0 whole", label);
    for (l = 0; l < 4; l++)
        CHECK(kvx_sender_send_layers(s, sp + 8, 8, l, l + 1) == KVX_OK, "%s: chunk 1 layer %u: %s",
              label, l, kvx_sender_error(s));
    CHECK(kvx_sender_send_layers(s, sp + 16, 8, 0, 1) == KVX_OK, "%s: chunk 2 layer 0", label);
    /* chunk 2's layer 0 (K buffer 0 and V buffer 4) lands before its other
       layers are even handed over */
    landed = wait_staged(dir, room, "kv_chunk_2.bin", &ps, 0, 4, sp + 16, 8, 20);
    CHECK(landed, "%s: chunk 2's layer 0 is in its file before its layers 1-3 are sent", label);
    CHECK(kvx_receiver_poll(r) != KVX_POLL_SUCCESS && kvx_sender_poll(s) == KVX_POLL_TRANSFERRING,
          "%s: between layers the receiver is not Success (%s), the sender Transferring (%s)", label,
          kvx_poll_str(kvx_receiver_poll(r)), kvx_poll_str(kvx_sender_poll(s)));
    CHECK(kvx_sender_send_layers(s, sp + 16, 8, 1, 3) == KVX_OK, "%s: chunk 2 layers 1-2", label);
    CHECK(kvx_receiver_poll(r) != KVX_POLL_SUCCESS, "%s: not Success before the last layer", label);
    CHECK(kvx_sender_send_layers(s, sp + 16, 8, 3, 4) == KVX_OK, "%s: chunk 2 layer 3", label);
    CHECK(kvx_receiver_wait(r, KVX_POLL_SUCCESS, 20000) == KVX_POLL_SUCCESS, "%s: receiver: %s",
          label, kvx_receiver_error(r));
    CHECK(kvx_sender_wait(s, KVX_POLL_SUCCESS, 20000) == KVX_POLL_SUCCESS, "%s: sender: %s", label,
          kvx_sender_error(s));
    CHECK(ex_pages_pattern(&pr, room, dp, 24, 0) == 0,
          "%s: every layer of every page verified byte for byte", label);
    CHECK(ex_aux_check(&pr, room, 1), "%s: aux rows", label);
    kvx_engine_stats_get(de, &st);
    CHECK(st.bytes == 24 * kvx_layout_page_bytes(&pr.layout) + kvx_layout_aux_row_bytes(&pr.layout),
          "%s: each byte once (%llu)", label, (unsigned long long)st.bytes);
    kvx_engine_stats_get(pe, &st);
    CHECK(st.bytes == 24 * kvx_layout_page_bytes(&ps.layout), "%s: the sender counts 3 chunks' "
          "bytes, not the parts' (%llu)", label, (unsigned long long)st.bytes);
    kvx_sender_destroy(s);
    kvx_receiver_destroy(r);
    kvx_engine_destroy(pe);
    kvx_engine_destroy(de);
    ex_pool_free(&ps);
    ex_pool_free(&pr);
    printf("  %s\n", label);
}

/* Chunk 0 goes in two parts, then the bad range: the sender fails with
   the core's sentence, and the decode room fails with it, never Success. */
static void test_refused(const char *label, uint32_t b2, uint32_t e2, const char *sentence) {
    char dir[300], why[512];
    ex_pool ps, pr;
    kvx_engine *pe, *de;
    kvx_engine_desc d;
    kvx_sender *s;
    kvx_receiver *r;
    kvx_room_desc rd;
    int32_t sp[8], dp[8];
    kvx_poll rs;
    snprintf(dir, sizeof dir, "%s/refused_%u_%u", root, b2, e2);
    ex_pool_init(&ps, &tiny, 32, 16, 4, 1);
    ex_pool_init(&pr, &tiny, 32, 16, 4, 2);
    d = ft_desc(KVX_ROLE_PREFILL, &ps.layout, dir);
    d.logger.level = KVX_LOG_ERROR + 1; /* the failures are expected */
    pe = ft_create(&d, why);
    d = ft_desc(KVX_ROLE_DECODE, &pr.layout, dir);
    d.logger.level = KVX_LOG_ERROR + 1;
    de = pe ? ft_create(&d, why) : NULL;
    CHECK(pe && de, "%s: engines: %s", label, why);
    if (!pe || !de) return;
    ex_alloc_pages(&ps, sp, 8);
    ex_alloc_pages(&pr, dp, 8);
    ex_pages_pattern(&ps, 21, sp, 8, 1);
    memset(&rd, 0, sizeof rd);
    rd.room = 21 + b2 * 10 + e2;
    kvx_receiver_create(de, &rd, &r);
    kvx_receiver_init(r, dp, 8, -1);
    kvx_sender_create(pe, &rd, &s);
    kvx_sender_init(s, 8, -1);
    CHECK(kvx_sender_send_layers(s, sp, 8, 0, 1) == KVX_OK, "%s: layer 0", label);
    CHECK(kvx_sender_send_layers(s, sp, 8, 1, 2) == KVX_OK, "%s: layer 1", label);
    CHECK(kvx_sender_send_layers(s, sp, 8, b2, e2) != KVX_OK, "%s: refused", label);
    CHECK(kvx_sender_wait(s, KVX_POLL_SUCCESS, 20000) == KVX_POLL_FAILED, "%s: the sender fails",
          label);
    CHECK_STR(kvx_sender_error(s), sentence);
    rs = kvx_receiver_wait(r, KVX_POLL_SUCCESS, 20000);
    CHECK(rs == KVX_POLL_FAILED, "%s: the decode room fails, never Success (%s)", label,
          kvx_poll_str(rs));
    CHECK_STR(kvx_receiver_error(r), sentence);
    kvx_sender_destroy(s);
    kvx_receiver_destroy(r);
    kvx_engine_destroy(pe);
    kvx_engine_destroy(de);
    ex_pool_free(&ps);
    ex_pool_free(&pr);
    printf("  %s\n", label);
}

/* A prefill process killed between layers (after layers 0-1 of its only
   chunk are in the chunk file): the decode room fails at KVX_FILE_TIMEOUT,
   never Success. */
static void test_killed(void) {
    char dir[300], why[512];
    ex_pool ps, pr;
    kvx_engine *de;
    kvx_engine_desc d;
    kvx_receiver *r;
    kvx_room_desc rd;
    int32_t sp[8], dp[8];
    int landed = 0, status;
    pid_t pid;
    kvx_poll rs;
    snprintf(dir, sizeof dir, "%s/killed", root);
    /* made here, so wait_staged watches it from the start (the child's
       engine would make it, maybe after the watch was tried) */
    CHECK(mkdir(dir, 0700) == 0, "mkdir %s: %s", dir, strerror(errno));
    ex_pool_init(&ps, &tiny, 32, 16, 4, 1); /* the child's pool: the same seed, the same pages */
    ex_alloc_pages(&ps, sp, 8);
    fflush(stdout);
    pid = fork();
    if (pid == 0) {
        kvx_engine *pe;
        kvx_sender *s;
        d = ft_desc(KVX_ROLE_PREFILL, &ps.layout, dir);
        ex_pages_pattern(&ps, 41, sp, 8, 1);
        if (!(pe = ft_create(&d, why))) _exit(3);
        memset(&rd, 0, sizeof rd);
        rd.room = 41;
        kvx_sender_create(pe, &rd, &s);
        kvx_sender_init(s, 8, -1);
        kvx_sender_send_layers(s, sp, 8, 0, 2);
        for (;;) pause(); /* the next layers never come: killed here */
    }
    ex_pages_pattern(&ps, 41, sp, 8, 1); /* what the child wrote, to compare with */
    landed = wait_staged(dir, 41, "kv_chunk_0.bin", &ps, 1, 5, sp, 8, 20);
    kill(pid, SIGKILL);
    status = ft_reap(pid);
    CHECK(landed && WIFSIGNALED(status), "the prefill was killed after layers 0-1 landed");
    setenv("KVX_FILE_TIMEOUT", "0.5", 1);
    ex_pool_init(&pr, &tiny, 32, 16, 4, 2);
    d = ft_desc(KVX_ROLE_DECODE, &pr.layout, dir);
    d.logger.level = KVX_LOG_ERROR + 1;
    de = ft_create(&d, why);
    unsetenv("KVX_FILE_TIMEOUT");
    CHECK(de != NULL, "decode engine: %s", why);
    if (!de) return;
    ex_alloc_pages(&pr, dp, 8);
    memset(&rd, 0, sizeof rd);
    rd.room = 41;
    kvx_receiver_create(de, &rd, &r);
    kvx_receiver_init(r, dp, 8, -1);
    rs = kvx_receiver_wait(r, KVX_POLL_SUCCESS, 20000);
    CHECK(rs == KVX_POLL_FAILED && kvx_receiver_result(r) == KVX_ERR_TIMEOUT,
          "a prefill killed between layers: the decode room fails (%s, %s), never Success",
          kvx_poll_str(rs), kvx_result_str(kvx_receiver_result(r)));
    CHECK_STR(kvx_receiver_error(r), "transfer_done appeared");
    kvx_receiver_destroy(r);
    kvx_engine_destroy(de);
    ex_pool_free(&ps);
    ex_pool_free(&pr);
    printf("  killed between layers\n");
}

/* Parallel layouts: every prefill rank of (ptp, ppp) sends its 16 pages
   in two chunks, layer by layer in its own model layers (chunk 0: each
   layer alone; chunk 1: the first layer, then the rest); one decode rank
   (TP 1, PP 1) reads them all and verifies every head of every layer. */
static void test_ranks(const ex_model *m, uint32_t ptp, uint32_t ppp) {
    char dir[300], why[512], label[96];
    ex_pool ps[4], pr;
    kvx_engine *pe[4], *de;
    kvx_sender *s[4];
    kvx_receiver *r;
    kvx_room_desc rd;
    kvx_engine_desc d;
    kvx_engine_stats st;
    int32_t sp[4][16], dp[16];
    const uint64_t room = 60 + ptp * 10 + ppp + (uint64_t)m->mla * 100;
    uint32_t k, n = ptp * ppp, b, ok = 1;
    snprintf(label, sizeof label, "%s tp %u pp %u -> tp 1 pp 1, layer-wise", m->name, ptp, ppp);
    snprintf(dir, sizeof dir, "%s/ranks_%s_%u_%u", root, m->name, ptp, ppp);
    ex_pool_init(&pr, m, 64, 4, 2, 100);
    for (b = 0; b < pr.layout.num_buffers; b++) memset(pr.bufs[b].base, 0xEE, pr.bufs[b].length);
    ex_alloc_pages(&pr, dp, 16);
    ex_aux_clear(&pr, 1);
    d = ft_rank_desc(KVX_ROLE_DECODE, &pr.layout, dir, 1, 0, 1, 0);
    d.file.prefill_tp = (int)ptp;
    d.file.prefill_pp = (int)ppp;
    de = ft_create(&d, why);
    CHECK(de != NULL, "%s: decode engine: %s", label, why);
    if (!de) return;
    memset(&rd, 0, sizeof rd);
    rd.room = room;
    kvx_receiver_create(de, &rd, &r);
    kvx_receiver_init(r, dp, 16, 1);
    for (k = 0; k < n; k++) {
        ex_rank rk;
        rk.tp = ptp, rk.tp_rank = k / ppp, rk.pp = ppp, rk.pp_rank = k % ppp;
        ok &= ex_pool_init_rank(&ps[k], m, 64, 4, 2, 1 + k, &rk) == 0;
        ex_alloc_pages(&ps[k], sp[k], 16);
        ex_pages_pattern(&ps[k], room, sp[k], 16, 1);
        ex_aux_write(&ps[k], room, 0);
        d = ft_rank_desc(KVX_ROLE_PREFILL, &ps[k].layout, dir, ptp, rk.tp_rank, ppp, rk.pp_rank);
        d.file.decode_tp = 1;
        pe[k] = ft_create(&d, why);
        ok &= pe[k] != NULL;
        CHECK(pe[k] != NULL, "%s: prefill engine %u: %s", label, k, why);
        if (!pe[k]) continue;
        kvx_sender_create(pe[k], &rd, &s[k]);
        kvx_sender_init(s[k], 16, 0);
    }
    for (k = 0; ok && k < n; k++) { /* the ranks' layers interleave, as their compute would */
        uint32_t l0 = ps[k].layer_begin, le = l0 + ps[k].layers, l;
        for (l = l0; l < le; l++)
            CHECK(kvx_sender_send_layers(s[k], sp[k], 8, l, l + 1) == KVX_OK, "%s: rank %u layer %u: "
                  "%s", label, k, l, kvx_sender_error(s[k]));
        CHECK(kvx_sender_send_layers(s[k], sp[k] + 8, 8, l0, l0 + 1) == KVX_OK, "%s: rank %u", label, k);
        if (le > l0 + 1)
            CHECK(kvx_sender_send_layers(s[k], sp[k] + 8, 8, l0 + 1, le) == KVX_OK, "%s: rank %u: %s",
                  label, k, kvx_sender_error(s[k]));
    }
    CHECK(kvx_receiver_wait(r, KVX_POLL_SUCCESS, 20000) == KVX_POLL_SUCCESS, "%s: receiver: %s",
          label, kvx_receiver_error(r));
    CHECK(ex_pages_pattern(&pr, room, dp, 16, 0) == 0, "%s: every head of every layer in place",
          label);
    CHECK(ex_aux_check(&pr, room, 1), "%s: aux rows", label);
    kvx_engine_stats_get(de, &st);
    CHECK(st.bytes == 16 * kvx_layout_page_bytes(&pr.layout) + kvx_layout_aux_row_bytes(&pr.layout),
          "%s: each byte once (%llu)", label, (unsigned long long)st.bytes);
    for (k = 0; k < n; k++) {
        if (!pe[k]) continue;
        CHECK(kvx_sender_wait(s[k], KVX_POLL_SUCCESS, 20000) == KVX_POLL_SUCCESS,
              "%s: prefill rank %u: %s", label, k, kvx_sender_error(s[k]));
        kvx_sender_destroy(s[k]);
        kvx_engine_destroy(pe[k]);
        ex_pool_free(&ps[k]);
    }
    kvx_receiver_destroy(r);
    kvx_engine_destroy(de);
    ex_pool_free(&pr);
    printf("  %s\n", label);
}

int main(void) {
    kt_name = "test_file_layers";
    snprintf(root, sizeof root, "/tmp/kvx_test_%d_file_layers", (int)getpid());
    mkdir(root, 0755);
    kvx_file_register();
    test_mixed("mixed whole, per-layer and ranged chunks", 0, 0);
    test_mixed("mixed, GPU pool through staging", 1, 0);
    test_mixed("mixed, auth key and KVX_FILE_FSYNC=1", 0, 1);
    test_refused("out of order", 3, 4, "chunk 0: layers [2, 3) were skipped");
    test_refused("a layer twice", 1, 3, "chunk 0: layer 1 was already sent");
    test_killed();
    test_ranks(&gqa, 2, 1);
    test_ranks(&gqa, 1, 2);
    test_ranks(&mla, 2, 1);
    {
        char cmd[400];
        snprintf(cmd, sizeof cmd, "rm -rf %s", root);
        if (system(cmd)) {}
    }
    return kt_done();
}
