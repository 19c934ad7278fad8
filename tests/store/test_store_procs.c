/* Block store with several processes: two processes putting the same keys
   at the same moment leave intact blocks and no temporaries; a writer
   killed with SIGKILL in the middle of big writes leaves no block that
   loads torn (every block file either verifies or is absent). */
#define KVX_IMPLEMENTATION
#include "kvx_store.h"
#include "store_test.h"
#include <time.h>

static st_pool pool;

static kvx_store *open_store(const char *dir) {
    kvx_store_desc d;
    kvx_store *s = NULL;
    char why[KVX_ERROR_MAX];
    memset(&d, 0, sizeof d);
    d.dir = dir;
    d.model = "procs";
    d.layout = pool.l;
    d.capacity_bytes = 256ull << 20;
    d.io_threads = 2;
    if (kvx_store_open(&d, &s, why, sizeof why) != KVX_OK) printf("  open failed: %s\n", why);
    return s;
}

#define KEYS 16

/* ---- two writers of the same keys ---- */

static int child_writer(const char *dir, int fd, int rounds, const char *out) {
    kvx_store *s;
    kvx_store_stats st;
    char c;
    int r, rc = 0;
    FILE *f;
    while (read(fd, &c, 1) < 0 && errno == EINTR) {} /* EOF: the parent says go */
    s = open_store(dir);
    if (!s) return 2;
    for (r = 0; r < rounds; r++) {
        kvx_store_key k[KEYS];
        int32_t pg[KEYS];
        int i;
        for (i = 0; i < KEYS; i++) {
            k[i] = st_key(40 + (uint64_t)r, (uint64_t)i);
            pg[i] = i;
            st_fill(&pool, i, st_seed(&k[i]));
        }
        if (kvx_store_batch_put(s, k, pg, KEYS, NULL) != KVX_OK) rc = 1;
    }
    kvx_store_stats_get(s, &st);
    f = fopen(out, "w");
    if (f) {
        fprintf(f, "%llu %llu\n", (unsigned long long)st.puts, (unsigned long long)st.put_present);
        fclose(f);
    }
    kvx_store_close(s);
    return rc;
}

static void test_same_keys(const char *dir) {
    int p[2], r, rc0, rc1, rounds = st_quick() ? 4 : 12, ok = 1;
    pid_t w0, w1;
    char fdarg[16], rarg[16], out0[512], out1[512];
    char *argv[7];
    unsigned long long puts0 = 0, puts1 = 0, pres = 0;
    kvx_store *s;
    kvx_store_verify_report rep;
    FILE *f;
    CHECK(pipe(p) == 0, "a pipe to start both writers at once");
    fcntl(p[1], F_SETFD, FD_CLOEXEC);
    snprintf(fdarg, sizeof fdarg, "%d", p[0]);
    snprintf(rarg, sizeof rarg, "%d", rounds);
    snprintf(out0, sizeof out0, "%s/w0.txt", dir);
    snprintf(out1, sizeof out1, "%s/w1.txt", dir);
    argv[0] = (char *)"test_store_procs";
    argv[1] = (char *)"writer";
    argv[2] = (char *)dir;
    argv[3] = fdarg;
    argv[4] = rarg;
    argv[6] = NULL;
    argv[5] = out0;
    w0 = st_spawn(argv);
    argv[5] = out1;
    w1 = st_spawn(argv);
    close(p[0]);
    usleep(100 * 1000);
    close(p[1]); /* go */
    rc0 = st_wait(w0);
    rc1 = st_wait(w1);
    CHECK(rc0 == 0 && rc1 == 0, "two processes put the same %d keys x %d rounds at once (%d, %d)",
          KEYS, rounds, rc0, rc1);
    if ((f = fopen(out0, "r"))) { if (fscanf(f, "%llu %llu", &puts0, &pres) != 2) puts0 = 0; fclose(f); }
    if ((f = fopen(out1, "r"))) { if (fscanf(f, "%llu %llu", &puts1, &pres) != 2) puts1 = 0; fclose(f); }
    printf("  writer 0 wrote %llu blocks, writer 1 wrote %llu: %llu keys were written by both\n",
           puts0, puts1, puts0 + puts1 - (unsigned long long)(KEYS * rounds));
    CHECK(puts0 + puts1 >= (unsigned long long)(KEYS * rounds), "every key was written at least once");
    s = open_store(dir);
    if (!s) return;
    ok = kvx_store_verify(s, 0, &rep) == KVX_OK;
    CHECK(ok && rep.blocks == (uint64_t)(KEYS * rounds) && rep.bad == 0 && rep.temporary == 0,
          "verify: %llu blocks, %llu bad, %llu temporaries left", (unsigned long long)rep.blocks,
          (unsigned long long)rep.bad, (unsigned long long)rep.temporary);
    for (ok = 1, r = 0; r < rounds; r++) {
        kvx_store_key k[KEYS];
        int32_t dst[KEYS];
        size_t loaded = 0;
        int i;
        for (i = 0; i < KEYS; i++) {
            k[i] = st_key(40 + (uint64_t)r, (uint64_t)i);
            dst[i] = KEYS + i;
        }
        if (kvx_store_batch_get(s, k, dst, KEYS, &loaded) != KVX_OK || loaded != KEYS) ok = 0;
        for (i = 0; i < KEYS; i++) ok &= st_verify(&pool, dst[i], st_seed(&k[i]));
    }
    CHECK(ok, "every block loads with the right bytes");
    kvx_store_close(s);
}

/* ---- SIGKILL in the middle of writes ---- */

static int child_hammer(const char *dir, uint64_t family) {
    kvx_store *s = open_store(dir);
    uint64_t i = 0;
    if (!s) return 2;
    for (;;) {
        kvx_store_key k[4];
        int32_t pg[4];
        int j;
        for (j = 0; j < 4; j++, i++) {
            k[j] = st_key(family, i);
            pg[j] = j;
            st_fill(&pool, j, st_seed(&k[j]));
        }
        kvx_store_batch_put(s, k, pg, 4, NULL);
    }
    return 0;
}

typedef struct kill_check {
    kvx_store *s;
    int listed, bad_listed, loaded, wrong;
} kill_check;

static int kill_scan_cb(void *user, const kvx_store_entry *e) {
    kill_check *c = (kill_check *)user;
    int32_t dst = 7;
    size_t loaded = 0;
    c->listed++;
    if (e->status != KVX_OK || !e->info) {
        c->bad_listed++;
        printf("  bad block after kill: %s: %s\n", e->path, e->why);
        return 0;
    }
    kvx_store_batch_get(c->s, &e->info->key, &dst, 1, &loaded);
    if (loaded == 1) {
        c->loaded++;
        if (!st_verify(&pool, dst, st_seed(&e->info->key))) c->wrong++;
    }
    return 0;
}

static void test_kill(const char *dir) {
    int rounds = st_quick() ? 3 : 6, r;
    kill_check c;
    kvx_store *s;
    kvx_store_verify_report rep;
    char why[KVX_ERROR_MAX], nsdir[4096];
    srand((unsigned)time(NULL));
    s = open_store(dir);
    if (!s) return;
    snprintf(nsdir, sizeof nsdir, "%s", kvx_store_dir(s));
    kvx_store_close(s);
    for (r = 0; r < rounds; r++) {
        char *argv[5], fam[16];
        pid_t pid;
        int waited = 0, rc;
        st_du du;
        argv[0] = (char *)"test_store_procs";
        argv[1] = (char *)"hammer";
        argv[2] = (char *)dir;
        snprintf(fam, sizeof fam, "%d", 50 + r); /* new keys each round: real writes */
        argv[3] = fam;
        argv[4] = NULL;
        pid = st_spawn(argv);
        waited = 0;
        do {
            usleep(10 * 1000);
            du = st_du_dir(nsdir);
        } while (du.blocks < (uint64_t)(r + 1) * 4 + 4 && ++waited < 1000);
        usleep((useconds_t)(rand() % 150) * 1000);
        kill(pid, SIGKILL);
        rc = st_wait(pid);
        du = st_du_dir(nsdir);
        printf("  round %d: killed the writer (status %d) with %llu blocks and %llu temporaries on disk\n",
               r, rc, (unsigned long long)du.blocks, (unsigned long long)du.tmps);
        CHECK(rc == 128 + SIGKILL, "round %d: writer killed by SIGKILL", r);
    }
    printf("  %d temporaries were left by the kills (writes cut in the middle)\n", (int)st_du_dir(nsdir).tmps);
    s = open_store(dir);
    memset(&c, 0, sizeof c);
    c.s = s;
    CHECK(s && kvx_store_scan(nsdir, 1, kill_scan_cb, &c, why, sizeof why) == KVX_OK, "scan after the kills");
    CHECK(c.listed > 0 && c.bad_listed == 0, "%d block files, none torn or corrupt", c.listed);
    CHECK(c.loaded == c.listed && c.wrong == 0, "every one loads (%d) with the right bytes (%d wrong)",
          c.loaded, c.wrong);
    CHECK(kvx_store_verify(s, 0, &rep) == KVX_OK && rep.bad == 0, "verify finds nothing bad");
    {
        kvx_store_stats st;
        kvx_store_stats_get(s, &st);
        CHECK(st.corrupt == 0, "no corrupt block counted");
    }
    kvx_store_close(s);
}

int main(int argc, char **argv) {
    char dir[256];
    if (argc >= 2 && !strcmp(argv[1], "writer") && argc == 6) {
        st_prefix = "  [child] ";
        st_pool_init(&pool, 4, 64 << 10, 0, KEYS * 2);
        return child_writer(argv[2], atoi(argv[3]), atoi(argv[4]), argv[5]);
    }
    if (argc == 4 && !strcmp(argv[1], "hammer")) {
        st_pool_init(&pool, 4, 1 << 20, 0, 8);
        return child_hammer(argv[2], strtoull(argv[3], NULL, 10));
    }
    st_scratch(dir, sizeof dir, "store_procs");
    st_pool_init(&pool, 4, 64 << 10, 0, KEYS * 2);
    test_same_keys(dir);
    st_pool_free(&pool);
    st_rm_rf(dir);
    mkdir(dir, 0755);
    st_pool_init(&pool, 4, 1 << 20, 0, 8);
    test_kill(dir);
    st_pool_free(&pool);
    st_rm_rf(dir);
    return st_finish("test_store_procs");
}
