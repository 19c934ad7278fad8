/* test_dir_race - kvx__dir_open (every transport's and the store's way into
   a directory) when the directory it just made or found is gone when it
   opens it, as on GlusterFS when two clients make one directory at once and
   the filesystem undoes one of the two mkdirs under the other. openat is
   interposed (this file defines it before kvx.h uses it): for the last
   component it removes the directory and answers ENOENT the first `vanish`
   times. A few such answers: the directory is made again and opened; more
   than the retries allow: a clear error, not a loop; without
   KVX__DIR_CREATE: the first ENOENT is the answer; a missing first
   component is "not found", never a link read from a stat that failed. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *race_name; /* the component that vanishes */
static int vanish, opens;     /* answers left to spoil; openat calls on it */

static int kt_openat(int dfd, const char *name, int flags, ...) {
    mode_t mode = 0;
    if (flags & O_CREAT) {
        va_list ap;
        va_start(ap, flags);
        mode = (mode_t)va_arg(ap, int);
        va_end(ap);
    }
    if (race_name && !strcmp(name, race_name)) {
        opens++;
        if (vanish > 0) {
            vanish--;
            unlinkat(dfd, name, AT_REMOVEDIR); /* undone under the caller */
            errno = ENOENT;
            return -1;
        }
    }
    return openat(dfd, name, flags, mode);
}
#define openat kt_openat
#if defined(__GNUC__)
#define KVX__NOINLINE_TEST __attribute__((noinline))
#else
#define KVX__NOINLINE_TEST
#endif

#define KVX_IMPLEMENTATION
#include "../../kvx.h"
#include "../kvx_test.h"

static char root[128];

static kvx_result try_open(const char *leaf, int spoil, int flags, char *why, size_t wl) {
    char path[256];
    int fd = -1;
    kvx_result r;
    snprintf(path, sizeof path, "%s/%s", root, leaf);
    race_name = leaf;
    vanish = spoil;
    opens = 0;
    why[0] = 0;
    r = kvx__dir_open(path, 0700, flags, &fd, why, wl);
    race_name = NULL;
    if (fd >= 0) {
        struct stat st;
        CHECK(fstat(fd, &st) == 0 && S_ISDIR(st.st_mode), "%s: the descriptor is a directory", leaf);
        close(fd);
    }
    return r;
}

/* Leaves the stack below the caller full of bytes that read as a symbolic
   link's st_mode (0xA1A1A1A1 & S_IFMT == S_IFLNK), so a struct stat that
   a failed fstatat left unset would claim a link. */
static void KVX__NOINLINE_TEST dirty_stack(void) {
    volatile unsigned char junk[32768];
    size_t i;
    for (i = 0; i < sizeof junk; i++) junk[i] = 0xA1;
    (void)junk[0];
}

int main(void) {
    char why[KVX_ERROR_MAX], path[256];
    kvx_result r;
    kt_name = "test_dir_race";
    snprintf(root, sizeof root, "/tmp/kvx_test_%d_dirrace", (int)getpid());
    CHECK(mkdir(root, 0700) == 0, "mkdir %s: %s", root, strerror(errno));

    r = try_open("a", 0, KVX__DIR_CREATE, why, sizeof why);
    CHECK(r == KVX_OK && opens == 1, "no race: made and opened at once (%s, %d opens) %s",
          kvx_result_str(r), opens, why);

    r = try_open("b", 3, KVX__DIR_CREATE, why, sizeof why);
    CHECK(r == KVX_OK && opens == 4, "gone 3 times after it was made: made again and opened "
          "(%s, %d opens) %s", kvx_result_str(r), opens, why);
    snprintf(path, sizeof path, "%s/b", root);
    CHECK(access(path, F_OK) == 0, "b exists afterwards");

    r = try_open("c", 1000, KVX__DIR_CREATE, why, sizeof why);
    CHECK(r == KVX_ERR_NOT_FOUND && opens == 9 && strstr(why, "cannot open directory") != NULL,
          "gone every time: KVX_ERR_NOT_FOUND after 9 opens (%s, %d opens): %s",
          kvx_result_str(r), opens, why);

    CHECK(mkdir(path, 0700) == 0 || errno == EEXIST, "mkdir b");
    r = try_open("b", 1, 0, why, sizeof why);
    CHECK(r == KVX_ERR_NOT_FOUND && opens == 1, "without KVX__DIR_CREATE the first ENOENT is the "
          "answer (%s, %d opens): %s", kvx_result_str(r), opens, why);

    /* a missing first component, not to be made: the answer is that it is
       not there (its stat failed: nothing is known of a link) */
    {
        int fd = -1;
        snprintf(path, sizeof path, "/kvx_test_%d_missing", (int)getpid());
        dirty_stack();
        r = kvx__dir_open(path, 0700, 0, &fd, why, sizeof why);
        CHECK(r == KVX_ERR_NOT_FOUND && fd < 0 && strstr(why, "cannot open directory") != NULL,
              "a missing directory without KVX__DIR_CREATE: KVX_ERR_NOT_FOUND, not a link (%s): %s",
              kvx_result_str(r), why);
    }

    snprintf(path, sizeof path, "%s/a", root);
    rmdir(path);
    snprintf(path, sizeof path, "%s/b", root);
    rmdir(path);
    snprintf(path, sizeof path, "%s/c", root);
    rmdir(path);
    rmdir(root);
    return kt_done();
}
