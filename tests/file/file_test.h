/* file_test.h - what the file transport's tests share: the engine they
   start from (one role, one pool's layout, one directory). */
#ifndef KVX_FILE_TEST_H
#define KVX_FILE_TEST_H
#include <sys/wait.h>

/* A file engine's desc: callers add what their test needs. */
static KT_UNUSED kvx_engine_desc ft_desc(kvx_role role, const kvx_layout *l, const char *dir) {
    kvx_engine_desc d;
    memset(&d, 0, sizeof d);
    d.role = role;
    d.transport = "file";
    d.layout = *l;
    d.file.dir = dir;
    d.logger.level = KVX_LOG_ERROR;
    return d;
}

/* ft_desc for one rank (desc.boot: TP size and rank, PP size and rank),
   logging nothing below KVX_LOG_ERROR + 1 (tests whose failures are
   expected). */
static KT_UNUSED kvx_engine_desc ft_rank_desc(kvx_role role, const kvx_layout *l, const char *dir,
                                              uint32_t tp, uint32_t tp_rank, uint32_t pp,
                                              uint32_t pp_rank) {
    kvx_engine_desc d = ft_desc(role, l, dir);
    d.boot.tp_size = (int)tp;
    d.boot.tp_rank = (int)tp_rank;
    d.boot.pp_size = (int)pp;
    d.boot.pp_rank = (int)pp_rank;
    d.logger.level = KVX_LOG_ERROR + 1;
    return d;
}

/* waitpid(pid) through EINTR: the child's status. */
static KT_UNUSED int ft_reap(pid_t pid) {
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
    return status;
}

/* The engine of d, or NULL with the sentence in why (512 bytes). */
static KT_UNUSED kvx_engine *ft_create(const kvx_engine_desc *d, char *why) {
    kvx_engine *e = NULL;
    why[0] = 0;
    if (kvx_engine_create(d, &e, why, 512) != KVX_OK) e = NULL;
    return e;
}
#endif
