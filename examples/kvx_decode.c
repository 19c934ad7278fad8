/* kvx_decode - the reference decode-side receiver.

   It plays the part of a decode engine: for each request it takes scattered
   destination pages and an aux slot from its pool, asks kvx to fill them,
   polls, and once the room reports Success checks every byte against what
   the prefill side's forward pass would have produced. Copy the loop in
   main() into your engine's scheduler. With --gpu the pool is in GPU
   memory (see ex_gpu_init in kvx_example.h). */
#define KVX_IMPLEMENTATION
#include "../kvx_file.h"
#include "../kvx_tcp.h"
#include "../kvx_cuda.h"
#include "../kvx_rdma.h"
#include "kvx_example.h"

typedef struct inflight {
    kvx_receiver *r;
    ex_request *req;
    int32_t *pages;
    int32_t slot;
    uint64_t posted_ns; /* when its pages were given to kvx (for the demo's figures) */
} inflight;

int main(int argc, char **argv) {
    ex_args a;
    ex_pool pool;
    ex_gpu gpu, *g = NULL;
    ex_request *reqs;
    inflight *fl;
    kvx_engine_desc d;
    kvx_engine *e;
    char why[512];
    uint32_t next = 0, done = 0, failed = 0, bad = 0, i;
    uint64_t bytes = 0, t0, report_at;
    FILE *times = NULL;
    ex_watch watch; /* when each room reaches Success (for the demo's figures) */
    if (ex_parse(&a, argc, argv)) return 2;
    if (ex_pool_init_rank(&pool, ex_model_find(a.model), a.pool_pages, a.page_size, 2 * a.inflight + 2,
                     a.seed * 31 + 2, &a.rank) ||
        ex_pool_hybrid(&pool, a.model, &a.rank, 2 * a.inflight + 2)) {
        fprintf(stderr, "decode: out of memory for a pool of %u pages\n", a.pool_pages);
        return 1;
    }
    reqs = (ex_request *)calloc(a.requests, sizeof *reqs);
    fl = (inflight *)calloc(a.inflight, sizeof *fl);
    ex_requests(reqs, a.requests, a.seed, a.min_tokens, a.max_tokens, a.page_size);
    a.requests = ex_requests_dp(reqs, a.requests, a.dp, a.dp_rank);
    if (a.gpu) {
        if (ex_gpu_init(&gpu, &pool, why, sizeof why)) {
            fprintf(stderr, "decode: %s\n", why);
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
    d.role = KVX_ROLE_DECODE;
    if (g) d.mem = g->ops;
    d.transport = a.transport;
    d.layout = pool.layout;
    d.file.dir = a.dir;
    d.bootstrap_addr = a.bootstrap;
    ex_desc_ranks(&d, &a);
    if (kvx_engine_create(&d, &e, why, sizeof why) != KVX_OK) {
        fprintf(stderr, "decode: cannot create the engine: %s\n", why);
        return 1;
    }
    if (a.times) times = fopen(a.times, "w");
    if (ex_watch_start(&watch, a.inflight))
        fprintf(stderr, "decode: no Success watcher; times are taken at the loop's polls\n");
    t0 = kvx_now_ns();
    report_at = t0 + 500000000ull;
    while (done < a.requests) {
        for (i = 0; i < a.inflight; i++) {
            inflight *f = &fl[i];
            kvx_poll st;
            if (!f->r && next < a.requests) {
                kvx_room_desc rd;
                memset(&rd, 0, sizeof rd);
                rd.room = reqs[next].room;
                f->req = &reqs[next++];
                f->pages = (int32_t *)malloc(f->req->pages * sizeof(int32_t));
                if (!f->pages || ex_alloc_pages(&pool, f->pages, f->req->pages)) {
                    fprintf(stderr, "decode: pool exhausted\n");
                    return 1;
                }
                f->slot = ex_alloc_slot(&pool);
                ex_aux_clear(&pool, f->slot);
                if (kvx_receiver_create(e, &rd, &f->r) != KVX_OK) return 1;
                ex_watch_set(&watch, i, f->r);
            }
            if (!f->r) continue;
            st = kvx_receiver_poll(f->r);
            if (st == KVX_POLL_WAITING_FOR_INPUT) {
                if (!f->posted_ns) f->posted_ns = kvx_now_ns();
                kvx_receiver_init_state(f->r, f->pages, f->req->pages, f->slot, &f->slot,
                                        pool.num_state ? 1 : 0); /* hybrid: the slot's state */
            }
            if (st != KVX_POLL_SUCCESS && st != KVX_POLL_FAILED) continue;
            if (st == KVX_POLL_SUCCESS) {
                /* the transport's end: Success, before the pages are checked */
                uint64_t now = ex_watch_take(&watch, i), cpu = ex_cpu_ns();
                uint64_t nb = ex_request_pages(g, &pool, f->req->room, f->pages, f->req->pages, 0);
                uint64_t rb = (uint64_t)f->req->pages * kvx_layout_page_bytes(&pool.layout) +
                              kvx_layout_state_row_bytes(&pool.layout);
                uint64_t sb = ex_state_pattern(&pool, f->req->room, &f->slot, pool.num_state ? 1 : 0, 0);
                int aux_ok = ex_aux_check(&pool, f->req->room, f->slot);
                cpu = ex_cpu_ns() - cpu;
                if (nb || sb || !aux_ok) {
                    bad++;
                    fprintf(stderr, "decode: room %llu: VERIFY FAILED (%llu bad tokens, %llu bad state "
                            "rows, aux %s)\n", (unsigned long long)f->req->room, (unsigned long long)nb,
                            (unsigned long long)sb, aux_ok ? "ok" : "bad");
                }
                bytes += rb;
                if (times)
                    fprintf(times, "%llu %llu %llu %u %llu %llu\n", (unsigned long long)f->req->room,
                            (unsigned long long)now, (unsigned long long)rb, f->req->tokens,
                            (unsigned long long)f->posted_ns, (unsigned long long)cpu);
            } else {
                failed++;
                fprintf(stderr, "decode: room %llu failed: %s\n",
                        (unsigned long long)f->req->room, kvx_receiver_error(f->r));
            }
            ex_watch_set(&watch, i, NULL);
            kvx_receiver_destroy(f->r);
            ex_free_pages(&pool, f->pages, f->req->pages);
            ex_free_slot(&pool, f->slot);
            free(f->pages);
            memset(f, 0, sizeof *f);
            done++;
        }
        if (!a.quiet && kvx_now_ns() > report_at) {
            double s = (double)(kvx_now_ns() - t0) / 1e9;
            printf("decode: %u/%u requests, %.2f GiB verified, %.1f s\n", done, a.requests,
                   (double)bytes / (1u << 30), s);
            fflush(stdout);
            report_at += 500000000ull;
        }
        {
            struct timespec ts = {0, 100000};
            nanosleep(&ts, NULL);
        }
    }
    if (times) fclose(times);
    ex_watch_stop(&watch);
    ex_linger(&a); /* room frames to MLA dummy prefill ranks must still reach them */
    kvx_engine_destroy(e);
    printf("decode: %u requests, %u verified byte for byte, %u failed, %u corrupt, %.2f GiB\n",
           a.requests, a.requests - failed - bad, failed, bad, (double)bytes / (1u << 30));
    if (g) ex_gpu_free(g, &pool);
    ex_pool_free(&pool);
    free(reqs);
    free(fl);
    return failed || bad ? 1 : 0;
}
