/* Block store on a shared host (issue 10 items 8 and 10): its directories
   are opened without following links and refused when another user owns
   them or may write in them (named with owner and mode); the default root
   is private to the user; KVX_STORE_* numbers have ranges. The parts that
   need another user run as root (skipped otherwise). */
#define KVX_IMPLEMENTATION
#include "kvx_store.h"
#include "store_test.h"
#include <pwd.h>

static st_pool pool;

static kvx_result try_open(const char *dir, int shared, char *why, size_t wl) {
    kvx_store_desc d;
    kvx_store *s = NULL;
    kvx_result r;
    memset(&d, 0, sizeof d);
    d.dir = dir;
    d.model = "test/dirs";
    d.layout = pool.l;
    d.shared = shared;
    why[0] = 0;
    r = kvx_store_open(&d, &s, why, wl);
    kvx_store_close(s);
    return r;
}

static void test_modes(const char *root) {
    char dir[400], why[KVX_ERROR_MAX], def[64];
    struct stat st;
    snprintf(dir, sizeof dir, "%s/open", root);
    mkdir(dir, 0700);
    chmod(dir, 0777);
    CHECK(try_open(dir, 0, why, sizeof why) == KVX_ERR_PERMISSION,
          "a world-writable root without sticky bit is refused: %s", why);
    CHECK(strstr(why, dir) && strstr(why, "mode 0777"), "the sentence names it and its mode");
    snprintf(dir, sizeof dir, "%s/group", root);
    mkdir(dir, 0700);
    chmod(dir, 0770);
    CHECK(try_open(dir, 0, why, sizeof why) == KVX_ERR_PERMISSION,
          "a group-writable root is refused by default: %s", why);
    CHECK(try_open(dir, 1, why, sizeof why) == KVX_OK, "... accepted with shared = 1: %s", why);
    snprintf(dir, sizeof dir, "%s/link", root);
    symlink("group", dir);
    CHECK(try_open(dir, 0, why, sizeof why) != KVX_OK && strstr(why, "symbolic link"),
          "a root given as a symbolic link is refused: %s", why);
    snprintf(def, sizeof def, "/tmp/kvx_store-%u", (unsigned)geteuid());
    if (try_open(NULL, 0, why, sizeof why) == KVX_OK)
        CHECK(lstat(def, &st) == 0 && st.st_uid == geteuid() && !(st.st_mode & 077),
              "the default root %s is this user's, mode 0700", def);
    else
        CHECK(strstr(why, def) != NULL, "the default root refused with its name: %s", why);
}

/* a namespace directory planted as a link into a victim directory */
static void test_planted_ns(const char *root) {
    char dir[400], why[KVX_ERROR_MAX], victim[400], ns[800], p[700];
    struct dirent *e;
    DIR *d;
    int n = 0;
    snprintf(dir, sizeof dir, "%s/planted", root);
    snprintf(victim, sizeof victim, "%s/victim", root);
    mkdir(dir, 0700);
    mkdir(victim, 0700);
    snprintf(p, sizeof p, "%s/precious", victim);
    close(open(p, O_CREAT | O_WRONLY, 0600));
    /* learn the namespace name, then replace it by a link */
    CHECK(try_open(dir, 0, why, sizeof why) == KVX_OK, "store opens: %s", why);
    d = opendir(dir);
    while (d && (e = readdir(d)) != NULL)
        if (strlen(e->d_name) == 16) snprintf(ns, sizeof ns, "%s/%.16s", dir, e->d_name), n++;
    if (d) closedir(d);
    CHECK(n == 1, "one namespace directory");
    if (n != 1) return;
    st_rm_rf(ns);
    symlink(victim, ns);
    CHECK(try_open(dir, 0, why, sizeof why) == KVX_ERR_PERMISSION,
          "a namespace planted as a link is refused: %s", why);
    CHECK(strstr(why, "symbolic link") != NULL, "the sentence says so");
    d = opendir(victim);
    n = 0;
    while (d && (e = readdir(d)) != NULL) n += e->d_name[0] != '.';
    if (d) closedir(d);
    CHECK(n == 1, "nothing was created in the link's target (%d entries)", n);
}

static void test_other_owner(const char *root) {
    char dir[400], why[KVX_ERROR_MAX];
    struct passwd *pw = getpwnam("nobody");
    uid_t uid = pw ? pw->pw_uid : 65534;
    gid_t gid = pw ? pw->pw_gid : 65534;
    snprintf(dir, sizeof dir, "%s/theirs", root);
    mkdir(dir, 0755);
    if (chown(dir, uid, gid)) {
        printf("SKIP (part): chown: %s\n", strerror(errno));
        return;
    }
    CHECK(try_open(dir, 0, why, sizeof why) == KVX_ERR_PERMISSION,
          "a root owned by nobody is refused: %s", why);
    CHECK(strstr(why, dir) && strstr(why, "uid") && strstr(why, "mode 0755"),
          "the sentence names it, its owner and mode");
}

static void test_settings(const char *root) {
    static const struct { const char *env, *val; } bad[] = {
        {"KVX_STORE_IO_THREADS", "1000"}, {"KVX_STORE_IO_THREADS", "-1"},
        {"KVX_STORE_FSYNC", "2"},         {"KVX_STORE_SHARED", "2"},
        {"KVX_STORE_CAPACITY", "lots"},
    };
    char dir[400], why[KVX_ERROR_MAX];
    size_t i;
    snprintf(dir, sizeof dir, "%s/settings", root);
    for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        setenv(bad[i].env, bad[i].val, 1);
        CHECK(try_open(dir, 0, why, sizeof why) == KVX_ERR_BAD_CONFIG &&
                  strstr(why, bad[i].env) != NULL,
              "%s=%s refused naming the variable: %s", bad[i].env, bad[i].val, why);
        unsetenv(bad[i].env);
    }
    setenv("KVX_STORE_IO_THREADS", "0", 1);
    CHECK(try_open(dir, 0, why, sizeof why) == KVX_OK, "KVX_STORE_IO_THREADS=0 is the default: %s",
          why);
    unsetenv("KVX_STORE_IO_THREADS");
}

int main(void) {
    char root[256];
    st_pool_init(&pool, 2, 512, 64, 8);
    st_scratch(root, sizeof root, "store_dirs");
    chmod(root, 0755);
    test_modes(root);
    test_planted_ns(root);
    test_settings(root);
    if (geteuid() == 0) test_other_owner(root);
    else printf("SKIP (part): a root owned by another user needs root (chown)\n");
    st_rm_rf(root);
    st_pool_free(&pool);
    return st_finish("test_store_dirs");
}
