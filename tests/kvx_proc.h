/* kvx_proc.h - child processes for the multi-process tests: spawn a helper
   with extra environment variables and its stdin/stdout on pipes, then read
   its stdout line by line with a timeout. Closing in_fd asks a helper to
   finish. Shared by tests/boot, tests/tcp and tests/rdma. */
#ifndef KVX_PROC_H
#define KVX_PROC_H
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <limits.h>
#include <linux/futex.h>
#include <sys/syscall.h>

extern char **environ;

#if defined(__GNUC__) || defined(__clang__)
#define KP_UNUSED __attribute__((unused))
#else
#define KP_UNUSED
#endif

typedef struct kt_proc {
    pid_t pid;
    int in_fd;  /* its stdin (write end) */
    int out_fd; /* its stdout (read end) */
    char buf[65536];
    size_t len;
} kt_proc;

static KP_UNUSED double kt_proc_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Counters in shared memory (MAP_SHARED) that one process raises and
   another waits for: the waiter sleeps in the kernel (futex) until the value
   changes, so it wakes when the state it waits for is written, not on a
   timer. Every writer goes through kt_shm_store / kt_shm_add (they wake). */
static KP_UNUSED void kt_shm_wake(int *p) {
    syscall(SYS_futex, p, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}
static KP_UNUSED void kt_shm_store(int *p, int v) {
    __atomic_store_n(p, v, __ATOMIC_RELEASE);
    kt_shm_wake(p);
}
static KP_UNUSED int kt_shm_add(int *p, int d) {
    int v = __atomic_add_fetch(p, d, __ATOMIC_ACQ_REL);
    kt_shm_wake(p);
    return v;
}
/* Until *p >= want (1) or timeout_s pass (0). */
static KP_UNUSED int kt_shm_wait(int *p, int want, double timeout_s) {
    double end = kt_proc_now() + timeout_s;
    for (;;) {
        int v = __atomic_load_n(p, __ATOMIC_ACQUIRE);
        double left = end - kt_proc_now();
        struct timespec ts;
        if (v >= want) return 1;
        if (left <= 0) return 0;
        ts.tv_sec = (time_t)left;
        ts.tv_nsec = (long)((left - (double)ts.tv_sec) * 1e9);
        /* returns at once when *p is no longer v; else when a writer wakes it */
        syscall(SYS_futex, p, FUTEX_WAIT, v, &ts, NULL, 0);
    }
}
/* Until *p differs from `seen` or timeout_s pass; the value then. */
static KP_UNUSED int kt_shm_wait_change(int *p, int seen, double timeout_s) {
    struct timespec ts;
    int v = __atomic_load_n(p, __ATOMIC_ACQUIRE);
    if (v != seen || timeout_s <= 0) return v;
    ts.tv_sec = (time_t)timeout_s;
    ts.tv_nsec = (long)((timeout_s - (double)ts.tv_sec) * 1e9);
    syscall(SYS_futex, p, FUTEX_WAIT, seen, &ts, NULL, 0);
    return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}

/* Spawns argv (PATH searched when argv[0] has no '/') with the "K=V"
   entries of extra_env in front of the environment (first match wins in
   getenv). 0, or -1 with errno. */
static KP_UNUSED int kt_spawn(kt_proc *p, char *const argv[], char *const extra_env[]) {
    int in[2], out[2], rc;
    size_t ne = 0, nx = 0, i;
    char **env;
    posix_spawn_file_actions_t fa;
    memset(p, 0, sizeof *p);
    p->pid = -1;
    while (environ[ne]) ne++;
    while (extra_env && extra_env[nx]) nx++;
    env = (char **)calloc(ne + nx + 1, sizeof *env);
    if (!env) return -1;
    for (i = 0; i < nx; i++) env[i] = extra_env[i];
    for (i = 0; i < ne; i++) env[nx + i] = environ[i];
    if (pipe(in)) { free(env); return -1; }
    if (pipe(out)) { close(in[0]); close(in[1]); free(env); return -1; }
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, in[0], 0);
    posix_spawn_file_actions_adddup2(&fa, out[1], 1);
    posix_spawn_file_actions_addclose(&fa, in[1]);
    posix_spawn_file_actions_addclose(&fa, out[0]);
    rc = posix_spawnp(&p->pid, argv[0], &fa, NULL, argv, env);
    posix_spawn_file_actions_destroy(&fa);
    free(env);
    close(in[0]);
    close(out[1]);
    fcntl(in[1], F_SETFD, FD_CLOEXEC);
    fcntl(out[0], F_SETFD, FD_CLOEXEC);
    if (rc) {
        close(in[1]);
        close(out[0]);
        p->pid = -1;
        errno = rc;
        return -1;
    }
    p->in_fd = in[1];
    p->out_fd = out[0];
    return 0;
}

/* One line of the child's stdout, without the newline; 1, or 0 on timeout
   or EOF. A line longer than the buffer is dropped. */
static KP_UNUSED int kt_readline(kt_proc *p, char *line, size_t n, double timeout) {
    double end = kt_proc_now() + timeout;
    line[0] = 0;
    for (;;) {
        char *nl = (char *)memchr(p->buf, '\n', p->len);
        struct pollfd pf;
        ssize_t r;
        int ms;
        if (nl) {
            size_t l = (size_t)(nl - p->buf);
            snprintf(line, n, "%.*s", (int)l, p->buf);
            memmove(p->buf, nl + 1, p->len - l - 1);
            p->len -= l + 1;
            return 1;
        }
        if (p->len == sizeof p->buf) p->len = 0;
        ms = (int)((end - kt_proc_now()) * 1000);
        if (ms <= 0 || p->out_fd < 0) return 0;
        pf.fd = p->out_fd;
        pf.events = POLLIN;
        if (poll(&pf, 1, ms) <= 0) continue;
        r = read(p->out_fd, p->buf + p->len, sizeof p->buf - p->len);
        if (r <= 0) return 0;
        p->len += (size_t)r;
    }
}
#endif
