/* Block store: a store of another configuration (model id, TP rank or size,
   page size, dtype, head count, buffer list) never sees a block; the same
   configuration always does; aux buffers are not part of it. */
#define KVX_IMPLEMENTATION
#include "kvx_store.h"
#include "store_test.h"

static st_pool pool;
static char dir[256];

typedef struct cfg {
    const char *what;
    const char *model;
    int tp_rank, tp_size;
    uint32_t page_size, heads, nb;
    const char *dtype;
    uint64_t item0; /* 0 = the pool's */
    int with_aux;
    int same; /* expected to share blocks with the base */
} cfg;

static kvx_store *open_cfg(const cfg *c) {
    kvx_store_desc d;
    kvx_store *s = NULL;
    char why[KVX_ERROR_MAX];
    static kvx_buffer bufs[ST_MAX_BUFS];
    static kvx_aux_buffer aux;
    static uint8_t auxmem[64 * 4];
    memset(&d, 0, sizeof d);
    d.dir = dir;
    d.model = c->model;
    d.tp_rank = c->tp_rank;
    d.tp_size = c->tp_size;
    d.layout = pool.l;
    memcpy(bufs, pool.bufs, sizeof bufs);
    if (c->item0) bufs[0].item_len = c->item0;
    d.layout.buffers = bufs;
    d.layout.num_buffers = c->nb;
    d.layout.page_size = c->page_size;
    d.layout.num_kv_heads = c->heads;
    d.layout.dtype = c->dtype;
    if (c->with_aux) {
        aux.base = auxmem;
        aux.item_len = 64;
        aux.length = sizeof auxmem;
        d.layout.aux = &aux;
        d.layout.num_aux = 1;
    }
    if (kvx_store_open(&d, &s, why, sizeof why) != KVX_OK) printf("  open failed: %s\n", why);
    return s;
}

int main(void) {
    static const cfg base = {"base", "org/model-7b", 1, 4, 16, 8, 4, "bfloat16", 0, 0, 1};
    cfg others[] = {
        {"the same configuration", "org/model-7b", 1, 4, 16, 8, 4, "bfloat16", 0, 0, 1},
        {"the same with an aux buffer", "org/model-7b", 1, 4, 16, 8, 4, "bfloat16", 0, 1, 1},
        {"another model id", "org/model-7b-instruct", 1, 4, 16, 8, 4, "bfloat16", 0, 0, 0},
        {"another TP rank", "org/model-7b", 2, 4, 16, 8, 4, "bfloat16", 0, 0, 0},
        {"another TP size", "org/model-7b", 1, 2, 16, 8, 4, "bfloat16", 0, 0, 0},
        {"another page size (same bytes)", "org/model-7b", 1, 4, 32, 8, 4, "bfloat16", 0, 0, 0},
        {"another dtype (same bytes)", "org/model-7b", 1, 4, 16, 8, 4, "float16", 0, 0, 0},
        {"another head count", "org/model-7b", 1, 4, 16, 4, 4, "bfloat16", 0, 0, 0},
        {"one buffer fewer", "org/model-7b", 1, 4, 16, 8, 3, "bfloat16", 0, 0, 0},
        {"another item_len", "org/model-7b", 1, 4, 16, 8, 4, "bfloat16", 2048, 0, 0},
    };
    kvx_store *a, *b;
    kvx_store_key keys[6];
    int32_t src[6], dst[6];
    size_t i, n = sizeof others / sizeof others[0];
    st_pool_init(&pool, 4, 1024, 0, 32);
    st_scratch(dir, sizeof dir, "store_fp");
    a = open_cfg(&base);
    CHECK(a != NULL, "open the base configuration");
    if (!a) return st_finish("test_store_fingerprint");
    for (i = 0; i < 6; i++) {
        keys[i] = st_key(9, i);
        src[i] = (int32_t)i;
        dst[i] = (int32_t)(10 + i);
        st_fill(&pool, (int32_t)i, st_seed(&keys[i]));
    }
    CHECK(kvx_store_batch_put(a, keys, src, 6, NULL) == KVX_OK, "put 6 blocks");
    kvx_store_close(a);
    for (i = 0; i < n; i++) {
        size_t hits, loaded = 99;
        int ok = 1, j;
        b = open_cfg(&others[i]);
        if (!b) { CHECK(0, "%s: open", others[i].what); continue; }
        for (j = 0; j < 6; j++) memset((uint8_t *)pool.bufs[0].base + dst[j] * pool.bufs[0].item_len, 0, 16);
        hits = kvx_store_batch_exists(b, keys, 6);
        kvx_store_batch_get(b, keys, dst, 6, &loaded);
        if (others[i].same) {
            for (j = 0; j < 6; j++) ok &= st_verify(&pool, dst[j], st_seed(&keys[j]));
            CHECK(hits == 6 && loaded == 6 && ok, "%s: 6 hits, 6 loaded, bytes right", others[i].what);
        } else {
            CHECK(hits == 0 && loaded == 0, "%s: no hit (exists %zu, get %zu), namespace %016llx",
                  others[i].what, hits, loaded, (unsigned long long)kvx_store_config_hash(b));
        }
        kvx_store_close(b);
    }
    st_rm_rf(dir);
    st_pool_free(&pool);
    return st_finish("test_store_fingerprint");
}
