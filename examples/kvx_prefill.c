/* kvx_prefill - the reference prefill-side sender.

   It plays the part of a prefill engine: for each request it takes scattered
   pages from its KV pool, "runs prefill" (fills the pages with the bytes the
   decode side will expect), and hands them to kvx in chunks, as chunked
   prefill produces them. Copy the loop in run() into your engine. With
   --gpu the pool is in GPU memory (see ex_gpu_init in kvx_example.h). */
#define KVX_IMPLEMENTATION
#include "../kvx_file.h"
#include "../kvx_tcp.h"
#include "../kvx_cuda.h"
#include "../kvx_rdma.h"
#include "kvx_example.h"

typedef struct inflight {
    kvx_sender *s;
    ex_request *req;
    int32_t *pages;
    int32_t slot;
    uint32_t sent_pages;
} inflight;

/* One request: allocate, prefill, then send chunk by chunk. */
static int start(kvx_engine *e, ex_pool *pool, ex_gpu *gpu, const ex_args *a, ex_request *req,
                 inflight *f, FILE *times) {
    kvx_room_desc rd;
    uint64_t cpu;
    memset(&rd, 0, sizeof rd);
    rd.room = req->room;
    f->req = req;
    f->pages = (int32_t *)malloc(req->pages * sizeof(int32_t));
    if (!f->pages || ex_alloc_pages(pool, f->pages, req->pages)) return -1;
    f->slot = ex_alloc_slot(pool);
    cpu = ex_cpu_ns();
    ex_request_pages(gpu, pool, req->room, f->pages, req->pages, 1); /* the "forward pass" */
    ex_aux_write(pool, req->room, f->slot);
    ex_state_pattern(pool, req->room, &f->slot, pool->num_state ? 1 : 0, 1); /* hybrid: the slot's state */
    cpu = ex_cpu_ns() - cpu;
    if (kvx_sender_create(e, &rd, &f->s) != KVX_OK) return -1;
    /* With a handshake the sender waits here for the decode side's pages. */
    while (kvx_sender_poll(f->s) == KVX_POLL_BOOTSTRAPPING) {
        struct timespec ts = {0, 100000};
        nanosleep(&ts, NULL);
    }
    /* the transport's start for the demo's figures: the first send, after
       the pages were filled (and, with a handshake, the decode side's pages
       arrived) */
    if (times) fprintf(times, "%llu %llu %llu\n", (unsigned long long)req->room,
                       (unsigned long long)kvx_now_ns(), (unsigned long long)cpu);
    if (kvx_sender_init(f->s, req->pages, f->slot) != KVX_OK) return -1;
    /* chunked prefill: one send per chunk of chunk_tokens */
    f->sent_pages = 0;
    while (f->sent_pages < req->pages) {
        uint32_t n = a->chunk_tokens / a->page_size, l;
        const int32_t *pg = f->pages + f->sent_pages;
        int lw = a->layerwise && !pool->num_state; /* state rows go with a whole chunk */
        if (n > req->pages - f->sent_pages) n = req->pages - f->sent_pages;
        /* the forward pass, layer by layer (--layer-ms); --layerwise hands
           kvx each layer's pages as soon as that layer is computed */
        for (l = pool->layer_begin; l < pool->layer_begin + pool->layers; l++) {
            if (a->layer_ms > 0) ex_busy_ms(a->layer_ms);
            if (lw && kvx_sender_send_layers(f->s, pg, n, l, l + 1) != KVX_OK) return -1;
        }
        /* the last chunk carries the request's state indices (hybrid models) */
        if (!lw && kvx_sender_send_state(f->s, pg, n, &f->slot,
                                         pool->num_state && f->sent_pages + n == req->pages ? 1 : 0) != KVX_OK)
            return -1;
        f->sent_pages += n;
    }
    return 0;
}

static void finish(ex_pool *pool, inflight *f) {
    ex_free_pages(pool, f->pages, f->req->pages);
    ex_free_slot(pool, f->slot);
    free(f->pages);
    kvx_sender_destroy(f->s);
    memset(f, 0, sizeof *f);
}

int main(int argc, char **argv) {
    ex_args a;
    ex_pool pool;
    ex_gpu gpu, *g = NULL;
    ex_request *reqs;
    inflight *fl;
    kvx_engine_desc d;
    kvx_engine *e;
    char why[512];
    uint32_t next = 0, done = 0, failed = 0, i;
    FILE *times = NULL;
    if (ex_parse(&a, argc, argv)) return 2;
    if (ex_pool_init_rank(&pool, ex_model_find(a.model), a.pool_pages, a.page_size, 2 * a.inflight + 2,
                     a.seed * 31 + 1, &a.rank) ||
        ex_pool_hybrid(&pool, a.model, &a.rank, 2 * a.inflight + 2)) {
        fprintf(stderr, "prefill: out of memory for a pool of %u pages\n", a.pool_pages);
        return 1;
    }
    reqs = (ex_request *)calloc(a.requests, sizeof *reqs);
    fl = (inflight *)calloc(a.inflight, sizeof *fl);
    ex_requests(reqs, a.requests, a.seed, a.min_tokens, a.max_tokens, a.page_size);
    a.requests = ex_requests_dp(reqs, a.requests, a.dp, a.dp_rank);
    if (a.gpu) {
        if (ex_gpu_init(&gpu, &pool, why, sizeof why)) {
            fprintf(stderr, "prefill: %s\n", why);
            return 1;
        }
        g = &gpu;
    }
    kvx_file_register();
    kvx_boot_register();
    kvx_tcp_register();
    kvx_rdma_register();
    kvx_cuda_register();
    memset(&d, 0, sizeof d);
    d.role = KVX_ROLE_PREFILL;
    if (g) d.mem = g->ops;
    d.transport = a.transport;
    d.layout = pool.layout;
    d.file.dir = a.dir;
    d.bootstrap_addr = a.bootstrap;
    ex_desc_ranks(&d, &a);
    if (kvx_engine_create(&d, &e, why, sizeof why) != KVX_OK) {
        fprintf(stderr, "prefill: cannot create the engine: %s\n", why);
        return 1;
    }
    if (a.times) times = fopen(a.times, "w");
    while (done < a.requests) {
        for (i = 0; i < a.inflight; i++) {
            inflight *f = &fl[i];
            kvx_poll st;
            if (!f->s && next < a.requests) {
                if (start(e, &pool, g, &a, &reqs[next], f, times)) {
                    fprintf(stderr, "prefill: room %llu: %s\n", (unsigned long long)reqs[next].room,
                            f->s ? kvx_sender_error(f->s) : "cannot allocate pages");
                    if (!f->s) return 1;
                }
                next++;
            }
            if (!f->s) continue;
            st = kvx_sender_poll(f->s);
            if (st == KVX_POLL_SUCCESS || st == KVX_POLL_FAILED) {
                if (st == KVX_POLL_FAILED) {
                    failed++;
                    fprintf(stderr, "prefill: room %llu failed: %s\n",
                            (unsigned long long)f->req->room, kvx_sender_error(f->s));
                }
                finish(&pool, f);
                done++;
            }
        }
        {
            struct timespec ts = {0, 200000};
            nanosleep(&ts, NULL);
        }
    }
    if (times) fclose(times);
    ex_linger(&a); /* other ranks may still need this engine */
    kvx_engine_destroy(e);
    if (!a.quiet)
        printf("prefill: %u requests sent, %u failed\n", a.requests - failed, failed);
    if (g) ex_gpu_free(g, &pool);
    ex_pool_free(&pool);
    free(reqs);
    free(fl);
    return failed ? 1 : 0;
}
