/* kvx_example.h - what the reference prefill and decode programs share: a
   simulated engine KV pool of a named model shape, a scattered page
   allocator, deterministic page contents, and the request list both sides
   derive from one seed (in a real deployment the router tells both sides).

   Not part of the library: engines have their own pools. Copy what helps. */
#ifndef KVX_EXAMPLE_H
#define KVX_EXAMPLE_H

#include "../kvx.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <time.h>
#include <unistd.h>

#if defined(__GNUC__) || defined(__clang__)
#define EX_UNUSED __attribute__((unused))
#else
#define EX_UNUSED
#endif

/* ---- model shapes --------------------------------------------------------- */

typedef struct ex_model {
    const char *name;
    uint32_t layers, kv_heads, head_dim, dtype_size;
    int mla; /* MLA: one buffer per layer of head_dim (kv_lora_rank + rope) wide */
    const char *dtype;
} ex_model;

static const ex_model ex_models[] = {
    {"llama-3.1-8b", 32, 8, 128, 2, 0, "bfloat16"},
    {"llama-3.1-70b", 80, 8, 128, 2, 0, "bfloat16"},
    {"deepseek-v3", 61, 1, 576, 2, 1, "bfloat16"},
    /* hybrid: the 12 full-attention layers of 48 hold KV pages; the 36 linear
       attention (Gated DeltaNet) layers hold state (ex_hybrids) */
    {"qwen3-next-80b", 12, 2, 256, 2, 0, "bfloat16"},
};

/* The state of a hybrid model's other layers (kvx.h HYBRID STATE): per
   layer a conv state and a recurrent state row per request slot, bytes at
   TP 1 (a TP rank holds 1/tp of each). Scaled down 16x from Qwen3-Next's
   fp32 recurrent state so demo pools stay small. */
typedef struct ex_hybrid {
    const char *model;
    uint32_t state_layers;
    uint64_t conv_bytes, ssm_bytes;
} ex_hybrid;

static const ex_hybrid ex_hybrids[] = {
    {"qwen3-next-80b", 36, 24576, 131072},
};

static const ex_model *ex_model_find(const char *name) {
    size_t i;
    for (i = 0; i < sizeof ex_models / sizeof ex_models[0]; i++)
        if (!strcmp(ex_models[i].name, name)) return &ex_models[i];
    return NULL;
}

/* ---- deterministic content ------------------------------------------------- */

static EX_UNUSED uint64_t ex_mix(uint64_t x) { /* splitmix64 finaliser */
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

/* The bytes of token `tok` of buffer `buf` of request `room`: a word stream
   seeded from all three, so a page landing in the wrong place, buffer or
   request is caught. */
static EX_UNUSED uint64_t ex_seed(uint64_t room, uint32_t buf, uint64_t tok) {
    return ex_mix(room * 0x100000001B3ull ^ ((uint64_t)buf << 40) ^ tok);
}

#define EX_AUX_IDS 0  /* aux 0: 16 int32 output token ids, padded to 64 bytes */
#define EX_AUX_ROOM 1 /* aux 1: the room id, 8 bytes (0 = slot never written) */

/* Where one rank sits in the prefill or decode instance (PARALLEL LAYOUTS in
   kvx.h): tensor-parallel size and rank, pipeline-parallel size and rank. */
typedef struct ex_rank {
    uint32_t tp, tp_rank, pp, pp_rank;
} ex_rank;

static const ex_rank ex_rank_all = {1, 0, 1, 0};

typedef struct ex_pool {
    kvx_layout layout;
    kvx_buffer *bufs;
    kvx_aux_buffer aux[2];
    uint32_t num_pages, page_size, token_bytes; /* bytes of one token in one buffer */
    uint32_t heads, head_begin, head_bytes;     /* this rank's KV heads */
    uint32_t layers, layer_begin, model_layers; /* this rank's layers; the model's */
    int mla;
    kvx_buffer *state; /* hybrid state buffers (ex_pool_add_state), host memory */
    uint32_t num_state;
    /* scattered free list */
    int32_t *free_pages;
    uint32_t num_free;
    uint32_t num_slots;
    int32_t *free_slots;
    uint32_t num_free_slots;
    uint64_t rng;
} ex_pool;

static EX_UNUSED uint64_t ex_rand(uint64_t *s) { return ex_mix((*s)++); }

/* SGLang's split: TP ranks share the KV heads evenly (a rank holds one
   head, replicated, when TP exceeds the heads); MLA ranks hold the same
   latent; PP ranks hold consecutive layer ranges. */
static EX_UNUSED void ex_rank_slice(const ex_model *m, const ex_rank *r, uint32_t *heads,
                                    uint32_t *head_begin, uint32_t *layers, uint32_t *layer_begin) {
    if (m->mla) {
        *heads = m->kv_heads;
        *head_begin = 0;
    } else if (r->tp <= m->kv_heads) {
        *heads = m->kv_heads / r->tp;
        *head_begin = r->tp_rank * *heads;
    } else {
        *heads = 1;
        *head_begin = (uint32_t)((uint64_t)r->tp_rank * m->kv_heads / r->tp);
    }
    *layer_begin = (uint32_t)((uint64_t)r->pp_rank * m->layers / r->pp);
    *layers = (uint32_t)((uint64_t)(r->pp_rank + 1) * m->layers / r->pp) - *layer_begin;
}

static EX_UNUSED int ex_pool_init_rank(ex_pool *p, const ex_model *m, uint32_t num_pages,
                                       uint32_t page_size, uint32_t num_slots, uint64_t seed,
                                       const ex_rank *rk) {
    uint32_t nb, i;
    uint64_t item;
    memset(p, 0, sizeof *p);
    if (!rk->tp || !rk->pp || rk->tp_rank >= rk->tp || rk->pp_rank >= rk->pp || rk->pp > m->layers ||
        (!m->mla && rk->tp <= m->kv_heads && m->kv_heads % rk->tp) ||
        (!m->mla && rk->tp > m->kv_heads && rk->tp % m->kv_heads))
        return -1;
    ex_rank_slice(m, rk, &p->heads, &p->head_begin, &p->layers, &p->layer_begin);
    p->model_layers = m->layers;
    p->mla = m->mla;
    p->head_bytes = m->head_dim * m->dtype_size;
    nb = m->mla ? p->layers : 2 * p->layers;
    p->token_bytes = p->heads * p->head_bytes;
    item = (uint64_t)p->token_bytes * page_size;
    p->bufs = (kvx_buffer *)calloc(nb, sizeof *p->bufs);
    if (!p->bufs) return -1;
    for (i = 0; i < nb; i++) {
        /* one allocation per buffer, as engines do (a tensor per layer) */
        p->bufs[i].base = malloc(item * num_pages);
        if (!p->bufs[i].base) return -1;
        p->bufs[i].length = item * num_pages;
        p->bufs[i].item_len = item;
    }
    p->aux[EX_AUX_IDS].item_len = 64;
    p->aux[EX_AUX_ROOM].item_len = 8;
    for (i = 0; i < 2; i++) {
        p->aux[i].length = p->aux[i].item_len * num_slots;
        p->aux[i].base = calloc(num_slots, p->aux[i].item_len);
        if (!p->aux[i].base) return -1;
    }
    p->layout.buffers = p->bufs;
    p->layout.num_buffers = nb;
    p->layout.aux = p->aux;
    p->layout.num_aux = 2;
    p->layout.page_size = page_size;
    p->layout.num_kv_heads = p->heads;
    p->layout.dtype_size = m->dtype_size;
    p->layout.dtype = m->dtype;
    p->layout.mla = m->mla;
    p->layout.head_begin = p->head_begin;
    p->layout.layer_begin = p->layer_begin;
    p->num_pages = num_pages;
    p->page_size = page_size;
    p->num_slots = num_slots;
    p->rng = seed;
    /* a pool after hours of serving: the free list is shuffled */
    p->free_pages = (int32_t *)malloc(num_pages * sizeof(int32_t));
    p->free_slots = (int32_t *)malloc(num_slots * sizeof(int32_t));
    if (!p->free_pages || !p->free_slots) return -1;
    for (i = 0; i < num_pages; i++) p->free_pages[i] = (int32_t)i;
    for (i = num_pages; i > 1; i--) {
        uint32_t j = (uint32_t)(ex_rand(&p->rng) % i);
        int32_t t = p->free_pages[i - 1];
        p->free_pages[i - 1] = p->free_pages[j];
        p->free_pages[j] = t;
    }
    p->num_free = num_pages;
    for (i = 0; i < num_slots; i++) p->free_slots[i] = (int32_t)(num_slots - 1 - i);
    p->num_free_slots = num_slots;
    return 0;
}

static EX_UNUSED int ex_pool_init(ex_pool *p, const ex_model *m, uint32_t num_pages,
                                  uint32_t page_size, uint32_t num_slots, uint64_t seed) {
    return ex_pool_init_rank(p, m, num_pages, page_size, num_slots, seed, &ex_rank_all);
}

static EX_UNUSED void ex_pool_free(ex_pool *p) {
    uint32_t i;
    for (i = 0; i < p->layout.num_buffers && p->bufs; i++) free(p->bufs[i].base);
    free(p->bufs);
    free(p->aux[0].base);
    free(p->aux[1].base);
    for (i = 0; i < p->num_state; i++) free(p->state[i].base);
    free(p->state);
    free(p->free_pages);
    free(p->free_slots);
}

/* ---- hybrid state (kvx.h HYBRID STATE) ----------------------------------------
   Adds `count` state buffers of `rows` rows of item_len bytes (a multiple
   of 8) in host memory, of state type `type` (KVX_STATE_MAMBA: conv and
   SSM state, one row per request slot; KVX_STATE_SWA: window pages). */
static EX_UNUSED int ex_pool_add_state(ex_pool *p, uint32_t type, uint32_t count, uint64_t item_len,
                                       uint32_t rows) {
    uint32_t i;
    if (!count || !rows || !item_len || item_len % 8 || p->state) return -1;
    p->state = (kvx_buffer *)calloc(count, sizeof *p->state);
    if (!p->state) return -1;
    for (i = 0; i < count; i++) {
        p->state[i].base = calloc(rows, (size_t)item_len);
        if (!p->state[i].base) return -1;
        p->num_state = i + 1;
        p->state[i].length = item_len * rows;
        p->state[i].item_len = item_len;
    }
    p->layout.state = p->state;
    p->layout.num_state = count;
    p->layout.state_type = type;
    return 0;
}

/* Adds the state buffers of a hybrid model (ex_hybrids; nothing for other
   models) to a rank's pool: `slots` rows, one per request slot (the slot is
   the request's state index); this PP rank's share of the state layers,
   this TP rank's share of each row. 0 ok, -1 out of memory. */
static EX_UNUSED int ex_pool_hybrid(ex_pool *p, const char *model, const ex_rank *rk, uint32_t slots) {
    size_t i;
    for (i = 0; i < sizeof ex_hybrids / sizeof ex_hybrids[0]; i++)
        if (!strcmp(ex_hybrids[i].model, model)) {
            const ex_hybrid *h = &ex_hybrids[i];
            uint32_t layers = h->state_layers / rk->pp + (rk->pp_rank < h->state_layers % rk->pp);
            uint64_t conv = h->conv_bytes / rk->tp / 8 * 8, ssm = h->ssm_bytes / rk->tp / 8 * 8;
            uint32_t b;
            if (!layers) return 0;
            if (ex_pool_add_state(p, KVX_STATE_MAMBA, 2 * layers, conv > ssm ? conv : ssm, slots)) return -1;
            for (b = 0; b < p->num_state; b++) { /* conv states first, then the recurrent ones */
                p->state[b].item_len = b < layers ? conv : ssm;
                p->state[b].length = p->state[b].item_len * slots;
            }
            return 0;
        }
    return 0;
}

/* Fills (write=1) or checks (write=0) the state rows idx[0..n) of a request:
   row idx[k] of state buffer b holds words seeded from (room, b, k), so a
   row at the wrong index, buffer or request is caught. Returns bad rows. */
static EX_UNUSED uint64_t ex_state_pattern(ex_pool *p, uint64_t room, const int32_t *idx, uint32_t n,
                                           int write) {
    uint64_t bad = 0;
    uint32_t b, k;
    for (b = 0; b < p->num_state; b++)
        for (k = 0; k < n; k++) {
            uint64_t words = p->state[b].item_len / 8, w;
            uint64_t *row = (uint64_t *)((char *)p->state[b].base + (uint64_t)idx[k] * p->state[b].item_len);
            uint64_t v = ex_seed(room, 0x5A000000u + b, k);
            for (w = 0; w < words; w++) {
                if (write) row[w] = v + w * 0x9E3779B97F4A7C15ull;
                else if (row[w] != v + w * 0x9E3779B97F4A7C15ull) { bad++; break; }
            }
        }
    return bad;
}

/* Takes n pages from the free list (0 on success, -1 when the pool is full). */
static EX_UNUSED int ex_alloc_pages(ex_pool *p, int32_t *out, uint32_t n) {
    uint32_t i;
    if (n > p->num_free) return -1;
    for (i = 0; i < n; i++) out[i] = p->free_pages[--p->num_free];
    return 0;
}

/* Returns pages at a random place in the free list, so the pool stays scattered. */
static EX_UNUSED void ex_free_pages(ex_pool *p, const int32_t *pages, uint32_t n) {
    uint32_t i;
    for (i = 0; i < n; i++) {
        uint32_t j = p->num_free ? (uint32_t)(ex_rand(&p->rng) % (p->num_free + 1)) : 0;
        p->free_pages[p->num_free] = p->free_pages[j];
        p->free_pages[j] = pages[i];
        p->num_free++;
    }
}

static EX_UNUSED int32_t ex_alloc_slot(ex_pool *p) {
    return p->num_free_slots ? p->free_slots[--p->num_free_slots] : -1;
}
static EX_UNUSED void ex_free_slot(ex_pool *p, int32_t s) { p->free_slots[p->num_free_slots++] = s; }

/* Fills (write=1) or checks (write=0) page i of a request in buffer b, at
   `page` in host memory. Every head of every token is seeded from (room,
   the model's layer, K or V, token, the model's head), so a page checks the
   same whichever ranks it travelled through. Returns the number of bad
   (token, head) pairs. */
static EX_UNUSED uint64_t ex_page_pattern(const ex_pool *p, uint64_t room, uint32_t b, uint32_t i,
                                          uint64_t *page, int write) {
    uint64_t bad = 0;
    uint32_t t, h, w, words = p->head_bytes / 8, layers = p->mla ? p->layout.num_buffers
                                                                  : p->layout.num_buffers / 2;
    uint32_t kv = b / layers, gbuf = kv * p->model_layers + p->layer_begin + b % layers;
    for (t = 0; t < p->page_size; t++)
        for (h = 0; h < p->heads; h++) {
            uint64_t *hw = page + ((uint64_t)t * p->heads + h) * words;
            uint64_t v = ex_seed(room, gbuf, ((uint64_t)i * p->page_size + t) |
                                                 ((uint64_t)(p->head_begin + h) << 48));
            if (write) {
                for (w = 0; w < words; w++) hw[w] = v + w * 0xD1B54A32D192ED03ull;
            } else {
                for (w = 0; w < words; w++)
                    if (hw[w] != v + w * 0xD1B54A32D192ED03ull) { bad++; break; }
            }
        }
    return bad;
}

/* Fills (write=1) or checks (write=0) the pages of a request as a prefill
   forward pass would have left them. Returns the number of bad tokens. */
static EX_UNUSED uint64_t ex_pages_pattern(ex_pool *p, uint64_t room, const int32_t *pages, uint32_t n,
                                 int write) {
    uint64_t bad = 0;
    uint32_t b, i;
    for (b = 0; b < p->layout.num_buffers; b++)
        for (i = 0; i < n; i++)
            bad += ex_page_pattern(p, room, b, i,
                                   (uint64_t *)((char *)p->bufs[b].base +
                                                (uint64_t)pages[i] * p->bufs[b].item_len),
                                   write);
    return bad;
}

/* ---- the pool in GPU memory (--gpu) --------------------------------------------
   The KV buffers move to GPU 0, all in one cuMemAlloc (as one pool tensor);
   the engine gets kvx_cuda_mem_ops in desc.mem, and the pages are filled and
   checked through pinned staging copies, since the CPU cannot touch them. */

typedef struct ex_gpu {
    kvx_mem_ops ops; /* staging; also the engine's desc.mem */
    void *mem;       /* the one allocation holding every KV buffer */
    char *stage;     /* pinned staging for filling and checking */
    size_t stage_bytes;
} ex_gpu;

#ifdef KVX_WITH_CUDA
#include "../kvx_cuda.h"

static EX_UNUSED int ex_gpu_init(ex_gpu *g, ex_pool *p, char *why, size_t wl) {
    kvx_cuda *cu;
    uint64_t total = 0, off = 0;
    uint32_t b;
    memset(g, 0, sizeof *g);
    if (kvx_cuda_mem_ops(&g->ops, NULL, why, wl) != KVX_OK) return -1;
    cu = kvx_cuda_from_mem_ops(&g->ops);
    for (b = 0; b < p->layout.num_buffers; b++) total += p->bufs[b].length;
    if (kvx_cuda_alloc(cu, 0, (size_t)total, &g->mem, why, wl) != KVX_OK) return -1;
    for (b = 0; b < p->layout.num_buffers; b++) {
        free(p->bufs[b].base); /* the host pool ex_pool_init made */
        p->bufs[b].base = (char *)g->mem + off;
        p->bufs[b].mem = KVX_MEM_CUDA;
        p->bufs[b].device = 0;
        off += p->bufs[b].length;
    }
    g->stage_bytes = 16u << 20;
    if (g->stage_bytes < p->bufs[0].item_len) g->stage_bytes = (size_t)p->bufs[0].item_len;
    g->stage = (char *)g->ops.host_alloc(g->ops.ctx, g->stage_bytes);
    if (!g->stage) snprintf(why, wl, "no pinned staging memory");
    return g->stage ? 0 : -1;
}

/* Releases the GPU pool (before ex_pool_free) and the driver (after the
   engine is destroyed). */
static EX_UNUSED void ex_gpu_free(ex_gpu *g, ex_pool *p) {
    uint32_t b;
    for (b = 0; b < p->layout.num_buffers; b++) p->bufs[b].base = NULL;
    if (g->stage) g->ops.host_free(g->ops.ctx, g->stage);
    kvx_cuda_free(kvx_cuda_from_mem_ops(&g->ops), 0, g->mem);
    kvx_cuda_mem_ops_release(&g->ops);
    memset(g, 0, sizeof *g);
}

/* ex_pages_pattern for the GPU pool: a stage full of pages at a time. */
static EX_UNUSED uint64_t ex_gpu_pages(ex_gpu *g, ex_pool *p, uint64_t room, const int32_t *pages,
                                       uint32_t n, int write) {
    kvx_copy c[64];
    char why[KVX_ERROR_MAX];
    uint64_t bad = 0;
    uint32_t b, i, k, q;
    for (b = 0; b < p->layout.num_buffers; b++) {
        uint64_t item = p->bufs[b].item_len;
        uint32_t per = (uint32_t)(g->stage_bytes / item);
        if (per > 64) per = 64;
        for (i = 0; i < n; i += k) {
            k = n - i < per ? n - i : per;
            for (q = 0; q < k; q++) {
                c[q].buf_ptr = (char *)p->bufs[b].base + (uint64_t)pages[i + q] * item;
                c[q].host = g->stage + q * item;
                c[q].len = item;
                c[q].device = 0;
                if (write) ex_page_pattern(p, room, b, i + q, (uint64_t *)c[q].host, 1);
            }
            if (g->ops.copy(g->ops.ctx, !write, c, k, why, sizeof why) != KVX_OK) {
                fprintf(stderr, "GPU pages: %s\n", why);
                return (uint64_t)n * p->page_size;
            }
            for (q = 0; !write && q < k; q++)
                bad += ex_page_pattern(p, room, b, i + q, (uint64_t *)c[q].host, 0);
        }
    }
    return bad;
}
#else
static EX_UNUSED int ex_gpu_init(ex_gpu *g, ex_pool *p, char *why, size_t wl) {
    (void)p;
    memset(g, 0, sizeof *g);
    snprintf(why, wl, "--gpu: CUDA support was not compiled in (build with -DKVX_WITH_CUDA "
                      "-I<CUDA toolkit>/include)");
    return -1;
}
static EX_UNUSED void ex_gpu_free(ex_gpu *g, ex_pool *p) { (void)g; (void)p; }
static EX_UNUSED uint64_t ex_gpu_pages(ex_gpu *g, ex_pool *p, uint64_t room, const int32_t *pages,
                                       uint32_t n, int write) {
    (void)g; (void)room; (void)pages; (void)write;
    return (uint64_t)n * p->page_size;
}
#endif

/* Fills or checks a request's pages wherever the pool lives (g NULL: host). */
static EX_UNUSED uint64_t ex_request_pages(ex_gpu *g, ex_pool *p, uint64_t room,
                                           const int32_t *pages, uint32_t n, int write) {
    return g ? ex_gpu_pages(g, p, room, pages, n, write) : ex_pages_pattern(p, room, pages, n, write);
}

static EX_UNUSED void ex_aux_write(ex_pool *p, uint64_t room, int32_t slot) {
    int32_t ids[16];
    int i;
    for (i = 0; i < 16; i++) ids[i] = (int32_t)(ex_mix(room + (uint64_t)i) % 128256);
    memcpy((char *)p->aux[EX_AUX_IDS].base + (uint64_t)slot * 64, ids, sizeof ids);
    memcpy((char *)p->aux[EX_AUX_ROOM].base + (uint64_t)slot * 8, &room, 8);
}

static EX_UNUSED int ex_aux_check(ex_pool *p, uint64_t room, int32_t slot) {
    int32_t ids[16];
    uint64_t got;
    int i;
    for (i = 0; i < 16; i++) ids[i] = (int32_t)(ex_mix(room + (uint64_t)i) % 128256);
    memcpy(&got, (char *)p->aux[EX_AUX_ROOM].base + (uint64_t)slot * 8, 8);
    return got == room &&
           !memcmp((char *)p->aux[EX_AUX_IDS].base + (uint64_t)slot * 64, ids, sizeof ids);
}

static EX_UNUSED void ex_aux_clear(ex_pool *p, int32_t slot) {
    memset((char *)p->aux[EX_AUX_IDS].base + (uint64_t)slot * 64, 0, 64);
    memset((char *)p->aux[EX_AUX_ROOM].base + (uint64_t)slot * 8, 0, 8);
}

/* ---- Success times (measurement only; an engine does not need this) ---------
   The transport finishes a room on its own threads; the decode loop sees it
   at its next poll, which can wait behind the check of another room's pages.
   This thread polls the rooms in flight every 100 us and notes when each
   reaches Success, so the latency the demo reports is the transport's own,
   not the simulated engine's checking. Slot i holds one receiver; the loop
   sets and clears it under mu (ex_watch_set), takes its time with
   ex_watch_take. */
#include <pthread.h>

typedef struct ex_watch {
    pthread_mutex_t mu;
    pthread_t th;
    kvx_receiver **r;  /* per slot, NULL when free */
    uint64_t *done_ns; /* per slot: when its room was first seen at Success, 0 not yet */
    uint32_t n;
    int stop, running;
} ex_watch;

static EX_UNUSED void *ex_watch_main(void *arg) {
    ex_watch *w = (ex_watch *)arg;
    for (;;) {
        struct timespec ts = {0, 100000};
        uint32_t i;
        pthread_mutex_lock(&w->mu);
        if (w->stop) {
            pthread_mutex_unlock(&w->mu);
            return NULL;
        }
        for (i = 0; i < w->n; i++)
            if (w->r[i] && !w->done_ns[i] && kvx_receiver_poll(w->r[i]) == KVX_POLL_SUCCESS)
                w->done_ns[i] = kvx_now_ns();
        pthread_mutex_unlock(&w->mu);
        nanosleep(&ts, NULL);
    }
}

/* 0 ok, -1 out of memory or no thread (the caller then measures at its
   own polls: ex_watch_take falls back to the time it is called). */
static EX_UNUSED int ex_watch_start(ex_watch *w, uint32_t slots) {
    memset(w, 0, sizeof *w);
    pthread_mutex_init(&w->mu, NULL);
    w->r = (kvx_receiver **)calloc(slots, sizeof *w->r);
    w->done_ns = (uint64_t *)calloc(slots, sizeof *w->done_ns);
    if (!w->r || !w->done_ns) return -1;
    w->n = slots;
    if (pthread_create(&w->th, NULL, ex_watch_main, w)) return -1;
    w->running = 1;
    return 0;
}

/* Puts r in slot i (NULL: empties it, before the receiver is destroyed). */
static EX_UNUSED void ex_watch_set(ex_watch *w, uint32_t i, kvx_receiver *r) {
    if (i >= w->n) return;
    pthread_mutex_lock(&w->mu);
    w->r[i] = r;
    w->done_ns[i] = 0;
    pthread_mutex_unlock(&w->mu);
}

/* When slot i's room reached Success: the watcher's time, or now when the
   caller's poll saw it first. */
static EX_UNUSED uint64_t ex_watch_take(ex_watch *w, uint32_t i) {
    uint64_t t = 0;
    if (i < w->n) {
        pthread_mutex_lock(&w->mu);
        t = w->done_ns[i];
        pthread_mutex_unlock(&w->mu);
    }
    return t ? t : kvx_now_ns();
}

/* CPU time of the calling thread: what the simulated engine's filling and
   checking cost, CPU a real engine spends on its GPU instead. */
static EX_UNUSED uint64_t ex_cpu_ns(void) {
    struct timespec ts;
    if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts)) return 0;
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static EX_UNUSED void ex_watch_stop(ex_watch *w) {
    if (w->running) {
        pthread_mutex_lock(&w->mu);
        w->stop = 1;
        pthread_mutex_unlock(&w->mu);
        pthread_join(w->th, NULL);
    }
    pthread_mutex_destroy(&w->mu);
    free(w->r);
    free(w->done_ns);
    memset(w, 0, sizeof *w);
}

/* ---- requests ----------------------------------------------------------------- */

typedef struct ex_request {
    uint64_t room;
    uint32_t tokens, pages;
} ex_request;

/* Lengths are log-uniform in [min, max] tokens: mostly short prompts, a few
   long ones, as in chat traffic. Rooms are random 63-bit ids like SGLang's. */
static EX_UNUSED void ex_requests(ex_request *r, uint32_t n, uint64_t seed, uint32_t min_tok,
                        uint32_t max_tok, uint32_t page_size) {
    uint32_t i;
    double lo = (double)min_tok, ratio = (double)max_tok / (double)min_tok;
    for (i = 0; i < n; i++) {
        double u = (double)(ex_mix(seed * 7919 + i) >> 11) / 9007199254740992.0;
        double len = lo * pow(ratio, u);
        r[i].room = ex_mix(seed ^ (0xABCDull << 32) ^ i) & 0x7FFFFFFFFFFFFFFFull;
        r[i].tokens = (uint32_t)len;
        if (r[i].tokens < min_tok) r[i].tokens = min_tok;
        if (r[i].tokens > max_tok) r[i].tokens = max_tok;
        r[i].pages = (r[i].tokens + page_size - 1) / page_size;
    }
}

/* Keeps the requests whose room this DP rank serves (room % dp == dp_rank,
   SGLang's follow_bootstrap_room); returns how many are left at the front. */
static EX_UNUSED uint32_t ex_requests_dp(ex_request *r, uint32_t n, uint32_t dp, uint32_t dp_rank) {
    uint32_t i, k = 0;
    for (i = 0; i < n; i++)
        if (r[i].room % dp == dp_rank) r[k++] = r[i];
    return k;
}

/* ---- command line ---------------------------------------------------------- */

typedef struct ex_args {
    const char *model, *transport, *dir, *times, *bootstrap;
    uint32_t requests, min_tokens, max_tokens, chunk_tokens, page_size, pool_pages, inflight;
    uint64_t seed;
    int quiet, gpu;
    int linger;              /* --linger: keep serving until stdin closes */
    int done_fd;             /* --done-fd N: closed when this rank's requests are done */
    ex_rank rank;            /* this process: --tp --tp-rank --pp --pp-rank */
    uint32_t dp, dp_rank;    /* --dp --dp-rank: this process serves rooms with room % dp == dp_rank */
    uint32_t prefill_tp, prefill_pp; /* decode: the prefill instance's sizes (0 = ours) */
    uint32_t decode_tp;              /* prefill: the decode instance's TP size (0 = ours) */
    int layerwise;           /* --layerwise: send each layer of a chunk as it is computed */
    double layer_ms;         /* --layer-ms X: simulated compute per layer per chunk (busy) */
} ex_args;

static EX_UNUSED void ex_usage(const char *prog) {
    fprintf(stderr,
            "usage: %s [--model llama-3.1-8b|llama-3.1-70b|deepseek-v3]\n"
            "          [--transport file|tcp|cuda|fake] [--gpu] [--dir DIR] [--bootstrap HOST:PORT]\n"
            "          [--requests N] [--min-tokens N] [--max-tokens N] [--chunk-tokens N]\n"
            "          [--page-size N] [--pool-pages N] [--inflight N] [--seed N] [--times FILE]\n"
            "          [--quiet] [--tp N --tp-rank R] [--pp N --pp-rank R] [--dp N --dp-rank R]\n"
            "          [--prefill-tp N --prefill-pp N] [--decode-tp N] [--linger] [--done-fd N]\n"
            "          [--layerwise] [--layer-ms X]\n"
            "  --gpu   the KV pool on GPU 0 (implied by --transport cuda)\n"
            "  --tp/--pp/--dp place this process in its instance (sizes 1, ranks 0); the pool\n"
            "          holds that rank's heads and layers; --prefill-tp/--prefill-pp tell a\n"
            "          decode rank the prefill instance's sizes, --decode-tp a prefill rank\n"
            "          the decode instance's TP size (default: its own)\n"
            "  --linger  after its requests, keep the engine (bootstrap server, control\n"
            "          connections) up until stdin reaches end of file, as a serving engine\n"
            "          would while other ranks still work (a decode rank's room frames to\n"
            "          MLA dummy prefill ranks, for one, must reach them)\n"
            "  --done-fd N  close file descriptor N once this rank's requests are done\n"
            "          (how kvx_demo learns every rank is done before ending the lingering)\n"
            "  --layer-ms X  prefill: X ms of busy work per layer of every chunk, the\n"
            "          simulated forward pass (it competes for the CPU as an engine's\n"
            "          launch thread would); --layerwise sends each layer's pages after its\n"
            "          compute (kvx_sender_send_layers), else a chunk goes after its last\n"
            "          layer. Hybrid models (state rows) always send whole chunks\n",
            prog);
}

static EX_UNUSED int ex_parse(ex_args *a, int argc, char **argv) {
    int i;
    a->model = "llama-3.1-8b"; a->transport = "file"; a->dir = NULL; a->times = NULL;
    a->bootstrap = NULL;
    a->requests = 64; a->min_tokens = 16; a->max_tokens = 2048; a->chunk_tokens = 512;
    a->page_size = 16; a->pool_pages = 0; a->inflight = 4; a->seed = 1; a->quiet = 0; a->gpu = 0;
    a->rank = ex_rank_all; a->dp = 1; a->dp_rank = 0; a->prefill_tp = 0; a->prefill_pp = 0;
    a->decode_tp = 0; a->linger = 0; a->done_fd = -1; a->layerwise = 0; a->layer_ms = 0;
    for (i = 1; i < argc; i++) {
        const char *k = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        unsigned long long n = v ? strtoull(v, NULL, 10) : 0;
        if (!strcmp(k, "--quiet")) { a->quiet = 1; continue; }
        if (!strcmp(k, "--linger")) { a->linger = 1; continue; }
        if (!strcmp(k, "--gpu")) { a->gpu = 1; continue; }
        if (!strcmp(k, "--layerwise")) { a->layerwise = 1; continue; }
        if (!v) { ex_usage(argv[0]); return -1; }
        i++;
        if (!strcmp(k, "--model")) a->model = v;
        else if (!strcmp(k, "--transport")) a->transport = v;
        else if (!strcmp(k, "--dir")) a->dir = v;
        else if (!strcmp(k, "--times")) a->times = v;
        else if (!strcmp(k, "--done-fd")) a->done_fd = n <= 1023 && v[0] >= '0' && v[0] <= '9' ? (int)n : -2;
        else if (!strcmp(k, "--bootstrap")) a->bootstrap = v;
        else if (!strcmp(k, "--requests")) a->requests = (uint32_t)n;
        else if (!strcmp(k, "--min-tokens")) a->min_tokens = (uint32_t)n;
        else if (!strcmp(k, "--max-tokens")) a->max_tokens = (uint32_t)n;
        else if (!strcmp(k, "--chunk-tokens")) a->chunk_tokens = (uint32_t)n;
        else if (!strcmp(k, "--page-size")) a->page_size = (uint32_t)n;
        else if (!strcmp(k, "--pool-pages")) a->pool_pages = (uint32_t)n;
        else if (!strcmp(k, "--inflight")) a->inflight = (uint32_t)n;
        else if (!strcmp(k, "--seed")) a->seed = n;
        else if (!strcmp(k, "--tp")) a->rank.tp = (uint32_t)n;
        else if (!strcmp(k, "--tp-rank")) a->rank.tp_rank = (uint32_t)n;
        else if (!strcmp(k, "--pp")) a->rank.pp = (uint32_t)n;
        else if (!strcmp(k, "--pp-rank")) a->rank.pp_rank = (uint32_t)n;
        else if (!strcmp(k, "--dp")) a->dp = (uint32_t)n;
        else if (!strcmp(k, "--dp-rank")) a->dp_rank = (uint32_t)n;
        else if (!strcmp(k, "--prefill-tp")) a->prefill_tp = (uint32_t)n;
        else if (!strcmp(k, "--prefill-pp")) a->prefill_pp = (uint32_t)n;
        else if (!strcmp(k, "--decode-tp")) a->decode_tp = (uint32_t)n;
        else if (!strcmp(k, "--layer-ms")) {
            char *end = NULL;
            a->layer_ms = strtod(v, &end);
            if (!end || *end || !(a->layer_ms >= 0 && a->layer_ms <= 10000)) {
                fprintf(stderr, "bad --layer-ms '%s': need milliseconds 0..10000\n", v);
                return -1;
            }
        }
        else { ex_usage(argv[0]); return -1; }
    }
    if (!strcmp(a->transport, "cuda")) a->gpu = 1; /* GPU to GPU needs the pool on the GPU */
    if (!ex_model_find(a->model)) {
        fprintf(stderr, "unknown model '%s'\n", a->model);
        return -1;
    }
    if (!a->page_size || !a->min_tokens || a->min_tokens > a->max_tokens || !a->inflight ||
        !a->chunk_tokens || a->chunk_tokens % a->page_size) {
        fprintf(stderr, "bad sizes: need page-size > 0, 0 < min-tokens <= max-tokens, "
                        "inflight > 0, chunk-tokens a multiple of page-size\n");
        return -1;
    }
    if (!a->rank.tp || a->rank.tp_rank >= a->rank.tp || !a->rank.pp || a->rank.pp_rank >= a->rank.pp ||
        !a->dp || a->dp_rank >= a->dp) {
        fprintf(stderr, "bad ranks: need --tp/--pp/--dp >= 1 and each rank below its size\n");
        return -1;
    }
    if (a->done_fd == -2) {
        fprintf(stderr, "bad --done-fd: need a file descriptor number 0..1023\n");
        return -1;
    }
    if (!a->pool_pages) /* room for every request in flight, plus slack */
        a->pool_pages = (a->max_tokens / a->page_size + 1) * (a->inflight + 1);
    return 0;
}

/* Busy work for ms milliseconds of wall time (a simulated forward pass: it
   uses the CPU, unlike a sleep). */
static EX_UNUSED void ex_busy_ms(double ms) {
    uint64_t end = kvx_now_ns() + (uint64_t)(ms * 1e6);
    volatile uint64_t x = 1;
    while (kvx_now_ns() < end) {
        int k;
        for (k = 0; k < 256; k++) x = x * 6364136223846793005ull + 1442695040888963407ull;
    }
}

/* After a rank's requests: tells a launcher it is done (closes --done-fd),
   then with --linger keeps the engine up until stdin reaches end of file. */
static EX_UNUSED void ex_linger(const ex_args *a) {
    char buf[64];
    if (a->done_fd >= 0) close(a->done_fd);
    if (a->linger)
        while (fread(buf, 1, sizeof buf, stdin) > 0) {}
}

/* Places an engine desc in the topology the command line gave: its rank
   (desc.boot) and, for the file transport, the other instance's sizes. */
static EX_UNUSED void ex_desc_ranks(kvx_engine_desc *d, const ex_args *a) {
    d->boot.tp_size = (int)a->rank.tp;
    d->boot.tp_rank = (int)a->rank.tp_rank;
    d->boot.pp_size = (int)a->rank.pp;
    d->boot.pp_rank = (int)a->rank.pp_rank;
    d->boot.dp_size = (int)a->dp;
    d->boot.dp_rank = (int)a->dp_rank;
    d->file.prefill_tp = (int)a->prefill_tp; /* decode: who writes our rooms */
    d->file.prefill_pp = (int)a->prefill_pp;
    d->file.decode_tp = (int)a->decode_tp;   /* prefill: MLA dummies */
}

#endif
