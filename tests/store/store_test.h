/* Helpers shared by the block store tests (tests/store/test_*.c).
   Include after kvx_store.h with KVX_IMPLEMENTATION defined. */
#ifndef KVX_STORE_TEST_H
#define KVX_STORE_TEST_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdarg.h>
#include <errno.h>
#include <fcntl.h>
#include <unistd.h>
#include <dirent.h>
#include <ftw.h>
#include <signal.h>
#include <pthread.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>

#define ST_UNUSED __attribute__((unused))

static int st_passed, st_failed;
static const char *st_prefix = ""; /* "  [child] " in child processes */

static ST_UNUSED void st_check(int ok, const char *fmt, ...) {
    va_list ap;
    printf("%s%s - ", st_prefix, ok ? "ok" : "FAIL");
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
    fflush(stdout);
    if (ok) st_passed++;
    else st_failed++;
}
#define CHECK(c, ...) st_check((c) ? 1 : 0, __VA_ARGS__)

static ST_UNUSED int st_finish(const char *name) {
    printf("%s: %d passed, %d failed\n", name, st_passed, st_failed);
    return st_failed ? 1 : 0;
}

static ST_UNUSED int st_quick(void) {
    const char *q = getenv("KVX_TEST_QUICK");
    return q && *q && strcmp(q, "0");
}

/* ---- scratch directories ---- */

static ST_UNUSED int st_rm_cb(const char *p, const struct stat *sb, int flag, struct FTW *f) {
    (void)sb; (void)flag; (void)f;
    remove(p);
    return 0;
}
static ST_UNUSED void st_rm_rf(const char *dir) { nftw(dir, st_rm_cb, 16, FTW_DEPTH | FTW_PHYS); }

/* /tmp/kvx_test_<pid>_<tag>, created empty. */
static ST_UNUSED void st_scratch(char *out, size_t len, const char *tag) {
    snprintf(out, len, "/tmp/kvx_test_%ld_%s", (long)getpid(), tag);
    st_rm_rf(out);
    mkdir(out, 0755);
}

/* ---- a small pool ---- */

#define ST_MAX_BUFS 64
typedef struct st_pool {
    kvx_buffer bufs[ST_MAX_BUFS];
    kvx_layout l;
    uint32_t pages;
} st_pool;

/* nb buffers; buffer b's item_len = item + b * step (bytes), pages pages. */
static ST_UNUSED void st_pool_init(st_pool *p, uint32_t nb, uint64_t item, uint64_t step, uint32_t pages) {
    uint32_t b;
    memset(p, 0, sizeof *p);
    for (b = 0; b < nb; b++) {
        uint64_t it = item + b * step;
        p->bufs[b].item_len = it;
        p->bufs[b].length = it * pages;
        p->bufs[b].base = malloc((size_t)(it * pages));
        memset(p->bufs[b].base, 0xEE, (size_t)(it * pages));
    }
    p->l.buffers = p->bufs;
    p->l.num_buffers = nb;
    p->l.page_size = 16;
    p->l.num_kv_heads = 8;
    p->l.dtype_size = 2;
    p->l.dtype = "bfloat16";
    p->pages = pages;
}

static ST_UNUSED void st_pool_free(st_pool *p) {
    uint32_t b;
    for (b = 0; b < p->l.num_buffers; b++) free(p->bufs[b].base);
}

static ST_UNUSED uint64_t st_mix(uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

/* Deterministic content of "the page for seed" in every buffer. */
static ST_UNUSED void st_fill(st_pool *p, int32_t page, uint64_t seed) {
    uint32_t b;
    for (b = 0; b < p->l.num_buffers; b++) {
        uint8_t *d = (uint8_t *)p->bufs[b].base + (uint64_t)page * p->bufs[b].item_len;
        uint64_t i, x = st_mix(seed * 1000003u + b);
        for (i = 0; i + 8 <= p->bufs[b].item_len; i += 8) {
            x = st_mix(x);
            memcpy(d + i, &x, 8);
        }
        for (; i < p->bufs[b].item_len; i++) d[i] = (uint8_t)(seed + i);
    }
}

static ST_UNUSED int st_verify(const st_pool *p, int32_t page, uint64_t seed) {
    uint32_t b;
    for (b = 0; b < p->l.num_buffers; b++) {
        const uint8_t *d = (const uint8_t *)p->bufs[b].base + (uint64_t)page * p->bufs[b].item_len;
        uint64_t i, x = st_mix(seed * 1000003u + b);
        for (i = 0; i + 8 <= p->bufs[b].item_len; i += 8) {
            x = st_mix(x);
            if (memcmp(d + i, &x, 8)) return 0;
        }
        for (; i < p->bufs[b].item_len; i++)
            if (d[i] != (uint8_t)(seed + i)) return 0;
    }
    return 1;
}

static ST_UNUSED int st_page_is(const st_pool *p, int32_t page, uint8_t v) {
    uint32_t b;
    uint64_t i;
    for (b = 0; b < p->l.num_buffers; b++) {
        const uint8_t *d = (const uint8_t *)p->bufs[b].base + (uint64_t)page * p->bufs[b].item_len;
        for (i = 0; i < p->bufs[b].item_len; i++)
            if (d[i] != v) return 0;
    }
    return 1;
}

/* Key of test item i in a key family. */
static ST_UNUSED kvx_store_key st_key(uint64_t family, uint64_t i) {
    kvx_store_key k;
    kvx__sha256 h;
    uint64_t v[2];
    v[0] = family;
    v[1] = i;
    kvx__sha256_init(&h);
    kvx__sha256_update(&h, v, sizeof v);
    kvx__sha256_final(&h, k.bytes);
    return k;
}

/* Seed that a test derives from a key (so content can be checked from the key alone). */
static ST_UNUSED uint64_t st_seed(const kvx_store_key *k) {
    uint64_t s;
    memcpy(&s, k->bytes, 8);
    return s;
}

/* ---- a logger that remembers ---- */

typedef struct st_log {
    pthread_mutex_t mu;
    int warns, errors;
    char last[1024];
} st_log;

static ST_UNUSED void st_log_fn(void *user, kvx_log_level lvl, const char *sub, uint64_t room,
                      const char *msg) {
    st_log *l = (st_log *)user;
    (void)room;
    pthread_mutex_lock(&l->mu);
    if (lvl == KVX_LOG_WARN) l->warns++;
    if (lvl == KVX_LOG_ERROR) l->errors++;
    if (lvl <= KVX_LOG_WARN) snprintf(l->last, sizeof l->last, "%s", msg);
    pthread_mutex_unlock(&l->mu);
    fprintf(stderr, "  [log %d %s] %s\n", (int)lvl, sub, msg);
}

static ST_UNUSED void st_log_init(st_log *l) {
    memset(l, 0, sizeof *l);
    pthread_mutex_init(&l->mu, NULL);
}

/* ---- files ---- */

typedef struct st_du {
    uint64_t blocks, bytes, tmps;
} st_du;

static st_du st_du_acc;
static ST_UNUSED int st_du_cb(const char *p, const struct stat *sb, int flag, struct FTW *f) {
    size_t n = strlen(p);
    (void)f;
    if (flag != FTW_F) return 0;
    if (n > 4 && !strcmp(p + n - 4, ".kvb")) {
        st_du_acc.blocks++;
        st_du_acc.bytes += (uint64_t)sb->st_size;
    } else if (strstr(p, ".kvb.tmp.")) {
        st_du_acc.tmps++;
    }
    return 0;
}
/* Block files and their bytes under dir, counted from the filesystem. */
static ST_UNUSED st_du st_du_dir(const char *dir) {
    memset(&st_du_acc, 0, sizeof st_du_acc);
    nftw(dir, st_du_cb, 16, FTW_PHYS);
    return st_du_acc;
}

static ST_UNUSED int st_flip_byte(const char *path, off_t off) {
    int fd = open(path, O_RDWR);
    unsigned char c;
    int ok;
    if (fd < 0) return -1;
    ok = pread(fd, &c, 1, off) == 1;
    c ^= 0x5A;
    ok = ok && pwrite(fd, &c, 1, off) == 1;
    close(fd);
    return ok ? 0 : -1;
}

/* ---- a store over a test pool ---- */

/* A store of pool p's layout under dir: capacity in blocks of bb bytes each
   (KVX_STORE_UNLIMITED: no limit), a namespace scan every `scan` seconds
   (-1: only at open). NULL, with the reason printed, when it cannot open. */
static ST_UNUSED kvx_store *st_open_blocks(const st_pool *p, const char *dir, const char *model,
                                           int io_threads, uint64_t cap_blocks, uint64_t bb,
                                           double scan) {
    kvx_store_desc d;
    kvx_store *s = NULL;
    char why[KVX_ERROR_MAX];
    memset(&d, 0, sizeof d);
    d.dir = dir;
    d.model = model;
    d.layout = p->l;
    d.io_threads = io_threads;
    d.scan_interval = scan;
    d.capacity_bytes = cap_blocks == KVX_STORE_UNLIMITED ? cap_blocks : cap_blocks * bb;
    if (kvx_store_open(&d, &s, why, sizeof why) != KVX_OK) {
        printf("%s  open %s failed: %s\n", st_prefix, dir, why);
        return NULL;
    }
    return s;
}

/* Bytes of one block file of pool p (from a store without a limit or a
   scanner: harmless on a shared namespace); 0 when it cannot open. */
static ST_UNUSED uint64_t st_block_bytes(const st_pool *p, const char *dir, const char *model) {
    kvx_store *s = st_open_blocks(p, dir, model, 1, KVX_STORE_UNLIMITED, 0, -1);
    uint64_t bb;
    if (!s) return 0;
    bb = kvx_store_block_bytes(s);
    kvx_store_close(s);
    return bb;
}

/* ---- child processes: this program run again with arguments ---- */

static ST_UNUSED pid_t st_spawn(char *const argv[]) {
    pid_t pid = fork();
    if (pid == 0) {
        execv("/proc/self/exe", argv);
        _exit(127);
    }
    return pid;
}

static ST_UNUSED int st_wait(pid_t pid) {
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
    if (WIFEXITED(status)) return WEXITSTATUS(status);
    if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
    return -1;
}

#endif
