/* pyscript.h - runs one of the repository's Python checks (SCRIPT, from the
   repository root) as a kvx test: its "ok ..." lines pass, its "FAIL ..."
   lines fail, and its exit status must agree. Define SCRIPT and TEST_NAME,
   then include this file. */
#define _POSIX_C_SOURCE 200809L
#include "../kvx_test.h"
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

/* The repository root: the current directory (make test), else up from
   the program (build/test_x, build/asan/test_x). */
static int find_root(const char *argv0, char *root, size_t n) {
    const char *ups[] = {".", NULL, NULL};
    char a[4096], b[4096], path[4200];
    const char *slash = strrchr(argv0, '/');
    size_t dl = slash ? (size_t)(slash - argv0) : 1;
    if (!slash) argv0 = ".";
    snprintf(a, sizeof a, "%.*s/..", (int)dl, argv0);
    snprintf(b, sizeof b, "%.*s/../..", (int)dl, argv0);
    ups[1] = a;
    ups[2] = b;
    for (int i = 0; i < 3; i++) {
        snprintf(path, sizeof path, "%s/" SCRIPT, ups[i]);
        if (access(path, R_OK) == 0) {
            snprintf(root, n, "%s", ups[i]);
            return 0;
        }
    }
    return -1;
}

int main(int argc, char **argv) {
    char root[4096], cmd[8400], line[2048];
    int fails_seen = 0;
    (void)argc;
    kt_name = TEST_NAME;
    if (find_root(argv[0], root, sizeof root) != 0)
        return kt_skip(SCRIPT " not found (run from the repository root)");
    if (system("command -v python3 >/dev/null 2>&1") != 0) return kt_skip("python3 is needed");
    snprintf(cmd, sizeof cmd, "cd '%s' && python3 " SCRIPT " . 2>&1", root);
    FILE *p = popen(cmd, "r");
    CHECK(p != NULL, "ran %s", cmd);
    if (!p) return kt_done();
    while (fgets(line, sizeof line, p)) {
        if (!strncmp(line, "ok ", 3)) {
            kt_pass++;
        } else if (!strncmp(line, "FAIL ", 5)) {
            kt_fail++;
            fails_seen++;
            fputs(line, stdout);
        } else {
            fputs(line, stdout);
        }
    }
    int st = pclose(p);
    int rc = (st != -1 && WIFEXITED(st)) ? WEXITSTATUS(st) : -1;
    /* The script's verdict and the lines counted here agree. */
    CHECK(rc == (fails_seen ? 1 : 0), "%s exited %d with %d mismatches", SCRIPT, rc, fails_seen);
    return kt_done();
}
