/* kvx_inspect - prints what a file-transport room directory holds and
   verifies every checksum, without touching any engine.

   usage: kvx_inspect ROOM_DIR...      a room_<id> directory
          kvx_inspect KVX_FILE_DIR     every room_* directory in it
          kvx_inspect --store DIR      every block of a kvx_store.h store
                                       (root or one namespace), data CRCs
                                       included
   Exit status: 0 all verified, 1 a problem found, 2 usage. */
#define KVX_IMPLEMENTATION
#include "../kvx_file.h"
#include "../kvx_store.h"
#include <dirent.h>

typedef struct store_tally { uint64_t blocks, bad, bytes; } store_tally;

static int print_block(void *user, const kvx_store_entry *e) {
    store_tally *t = (store_tally *)user;
    char key[65] = "?";
    if (e->info) kvx_store_key_hex(&e->info->key, key);
    t->blocks++;
    t->bytes += e->file_bytes;
    if (e->status != KVX_OK) t->bad++;
    printf("  %s  %llu bytes  %s%s%s\n", key, (unsigned long long)e->file_bytes,
           e->status == KVX_OK ? "ok" : "BAD: ", e->status == KVX_OK ? "" : e->why,
           e->status == KVX_OK ? "" : "");
    return 0;
}

static int inspect_store(const char *dir) {
    store_tally t = {0, 0, 0};
    char why[512];
    if (kvx_store_scan(dir, 1, print_block, &t, why, sizeof why) != KVX_OK) {
        fprintf(stderr, "%s\n", why);
        return 2;
    }
    printf("%llu blocks, %.1f MiB, %llu bad: %s\n", (unsigned long long)t.blocks,
           (double)t.bytes / (1 << 20), (unsigned long long)t.bad,
           t.bad ? "PROBLEMS FOUND" : "all verified");
    return t.bad ? 1 : 0;
}

static int inspect_room(const char *dir) {
    char path[4096], why[512];
    kvx_file_done_info done;
    uint32_t i, pages = 0;
    int bad = 0, fd;
    kvx_result r;
    printf("%s\n", dir);
    snprintf(path, sizeof path, "%s/transfer_done", dir);
    r = kvx_file_read_done(path, &done, why, sizeof why);
    if (r == KVX_ERR_NOT_FOUND) {
        printf("  transfer_done: absent (the sender has not finished, or failed)\n");
        snprintf(path, sizeof path, "%s/transfer_failed", dir);
        if (access(path, F_OK) == 0) printf("  transfer_failed: present\n");
        return 1;
    }
    if (r != KVX_OK) { printf("  transfer_done: BAD: %s\n", why); return 1; }
    printf("  room %llu, %u chunks, %u pages, layout %016llx, aux slot %d (%llu bytes)\n",
           (unsigned long long)done.room, done.chunks, done.total_pages,
           (unsigned long long)done.fingerprint, (int)done.aux_index,
           (unsigned long long)done.aux_bytes);
    for (i = 0; i < done.chunks; i++) {
        kvx_file_chunk_info m;
        uint32_t crc = 0;
        snprintf(path, sizeof path, "%s/kv_chunk_%u.bin.meta", dir, i);
        if (kvx_file_read_meta(path, &m, why, sizeof why) != KVX_OK) {
            printf("  chunk %u: BAD meta: %s\n", i, why);
            bad = 1;
            continue;
        }
        snprintf(path, sizeof path, "%s/kv_chunk_%u.bin", dir, i);
        fd = open(path, O_RDONLY);
        r = fd < 0 ? KVX_ERR_NOT_FOUND : kvx_file_crc32c(fd, 0, m.bytes, &crc);
        if (fd >= 0) {
            struct stat st;
            if (fstat(fd, &st) == 0 && (uint64_t)st.st_size != m.bytes) r = KVX_ERR_CORRUPT;
            close(fd);
        }
        printf("  chunk %u: pages [%u, %u), %u buffers, page_size %u, %s, %llu bytes, "
               "crc32c %08x: %s\n", i, m.first_page, m.first_page + m.num_pages, m.num_buffers,
               m.page_size, m.dtype, (unsigned long long)m.bytes, m.crc32c,
               r != KVX_OK ? "BAD (missing, short or unreadable)"
                           : crc == m.crc32c ? "ok" : "BAD (checksum mismatch)");
        if (r != KVX_OK || crc != m.crc32c || m.first_page != pages) bad = 1;
        pages += m.num_pages;
        kvx_file_chunk_info_free(&m);
    }
    if (done.aux_index >= 0) {
        uint32_t crc = 0;
        snprintf(path, sizeof path, "%s/metadata.bin", dir);
        fd = open(path, O_RDONLY);
        r = fd < 0 ? KVX_ERR_NOT_FOUND : kvx_file_crc32c(fd, 0, done.aux_bytes, &crc);
        if (fd >= 0) close(fd);
        printf("  metadata.bin: %s\n", r == KVX_OK && crc == done.aux_crc32c ? "ok" : "BAD");
        if (r != KVX_OK || crc != done.aux_crc32c) bad = 1;
    }
    if (pages != done.total_pages) {
        printf("  chunks hold %u pages, transfer_done says %u: BAD\n", pages, done.total_pages);
        bad = 1;
    }
    return bad;
}

int main(int argc, char **argv) {
    int i, bad = 0, rooms = 0, building = 0;
    if (argc < 2) {
        fprintf(stderr, "usage: %s ROOM_DIR... | KVX_FILE_DIR | --store DIR\n", argv[0]);
        return 2;
    }
    if (!strcmp(argv[1], "--store")) {
        if (argc != 3) { fprintf(stderr, "usage: %s --store DIR\n", argv[0]); return 2; }
        return inspect_store(argv[2]);
    }
    for (i = 1; i < argc; i++) {
        const char *base = strrchr(argv[i], '/');
        base = base ? base + 1 : argv[i];
        if (!strncmp(base, "room_", 5)) {
            bad |= inspect_room(argv[i]);
            rooms++;
        } else {
            DIR *d = opendir(argv[i]);
            struct dirent *de;
            char p[4096];
            if (!d) { fprintf(stderr, "%s: %s\n", argv[i], strerror(errno)); return 2; }
            while ((de = readdir(d)) != NULL) {
                if (strncmp(de->d_name, "room_", 5)) continue;
                if (de->d_name[5 + strspn(de->d_name + 5, "0123456789")]) {
                    /* room_<id>.tmp.* (being built), .old.* (being removed), .failed */
                    if (strstr(de->d_name, ".tmp.")) building++;
                    continue;
                }
                snprintf(p, sizeof p, "%s/%s", argv[i], de->d_name);
                bad |= inspect_room(p);
                rooms++;
            }
            closedir(d);
        }
    }
    if (building)
        printf("%d rooms being built (room_<id>.tmp.*: not committed yet, or left by a killed "
               "sender), not checked\n", building);
    printf("%d rooms, %s\n", rooms, bad ? "PROBLEMS FOUND" : "all verified");
    return bad ? 1 : 0;
}
