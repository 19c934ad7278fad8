/* file_test.h - what the file transport's tests share: the engine they
   start from (one role, one pool's layout, one directory). */
#ifndef KVX_FILE_TEST_H
#define KVX_FILE_TEST_H

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

/* The engine of d, or NULL with the sentence in why (512 bytes). */
static KT_UNUSED kvx_engine *ft_create(const kvx_engine_desc *d, char *why) {
    kvx_engine *e = NULL;
    why[0] = 0;
    if (kvx_engine_create(d, &e, why, 512) != KVX_OK) e = NULL;
    return e;
}
#endif
