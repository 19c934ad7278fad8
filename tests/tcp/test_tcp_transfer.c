/* test_tcp_transfer - the tcp transport moving real KV bytes, verified byte
   for byte with their aux rows:

   - in one process: unchunked, one page per chunk, a request of zero pages
     (with and without aux), counters; three aux buffers of different
     item_len from one slot into another, nothing else touched
   - between processes (the test binary runs itself as the prefill helper):
     unchunked, chunked, many concurrent rooms, 1 / 4 / 8 streams, and a
     Llama-3.1-8B shaped request (64 buffers of 32 KiB pages)
   - GPU-memory layouts through kvx_mem_ops staging (a mock device whose
     pointers crash if dereferenced), and a device error */
#define KVX_IMPLEMENTATION
#include "tcp_test.h"

/* ---- in one process ---------------------------------------------------------- */

static void test_inproc(void) {
    ex_pool ps, pr;
    kvx_engine *pe, *de;
    tt_opts o;
    char why[512], addr[64];
    int32_t sp[64], dp[64];
    struct { uint32_t n, chunk; int32_t aux; } cases[4] = {{40, 40, 1}, {33, 1, 2}, {0, 1, 3}, {0, 1, -1}};
    kvx_tcp_stats st;
    uint64_t want = 0;
    int i;
    ex_pool_init(&ps, &tt_tiny, 256, 16, 8, 1);
    ex_pool_init(&pr, &tt_tiny, 256, 16, 8, 2);
    memset(&o, 0, sizeof o);
    pe = tt_engine(KVX_ROLE_PREFILL, &ps.layout, &o, why, sizeof why);
    CHECK(pe != NULL, "prefill engine: %s", why);
    if (!pe) return;
    snprintf(addr, sizeof addr, "127.0.0.1:%d", kvx_boot_engine_port(pe));
    o.boot_addr = addr;
    de = tt_engine(KVX_ROLE_DECODE, &pr.layout, &o, why, sizeof why);
    CHECK(de != NULL, "decode engine: %s", why);
    if (!de) { kvx_engine_destroy(pe); return; }
    for (i = 0; i < 4; i++) {
        kvx_room_desc rd;
        kvx_sender *s;
        kvx_receiver *r;
        uint32_t n = cases[i].n, sent = 0;
        uint64_t room = 1000 + (uint64_t)i;
        memset(&rd, 0, sizeof rd);
        rd.room = room;
        ex_alloc_pages(&ps, sp, n);
        ex_alloc_pages(&pr, dp, n);
        ex_pages_pattern(&ps, room, sp, n, 1);
        ex_aux_write(&ps, room, 5);
        ex_aux_clear(&pr, cases[i].aux < 0 ? 0 : cases[i].aux);
        kvx_receiver_create(de, &rd, &r);
        kvx_sender_create(pe, &rd, &s);
        CHECK(tt_wait_ready_r(r, 10), "case %d: receiver ready (%s)", i, kvx_receiver_error(r));
        kvx_receiver_init(r, dp, n, cases[i].aux);
        CHECK(tt_wait_ready_s(s, 10), "case %d: sender ready (%s)", i, kvx_sender_error(s));
        CHECK(kvx_sender_init(s, n, cases[i].aux < 0 ? -1 : 5) == KVX_OK, "case %d: init", i);
        do {
            uint32_t k = n - sent < cases[i].chunk ? n - sent : cases[i].chunk;
            kvx_sender_send(s, sp + sent, k);
            sent += k;
        } while (sent < n);
        CHECK(tt_wait_r(r, 20) == KVX_POLL_SUCCESS, "case %d: receiver Success: %s", i,
              kvx_receiver_error(r));
        CHECK(tt_wait_s(s, 20) == KVX_POLL_SUCCESS, "case %d: sender Success: %s", i,
              kvx_sender_error(s));
        CHECK(ex_pages_pattern(&pr, room, dp, n, 0) == 0, "case %d: %u pages verified", i, n);
        if (cases[i].aux >= 0)
            CHECK(ex_aux_check(&pr, room, cases[i].aux), "case %d: aux rows verified", i);
        want += (uint64_t)n * kvx_layout_page_bytes(&pr.layout) + (cases[i].aux >= 0 ? 72 : 0);
        kvx_sender_destroy(s);
        kvx_receiver_destroy(r);
        ex_free_pages(&ps, sp, n);
        ex_free_pages(&pr, dp, n);
    }
    kvx_tcp_stats_get(de, &st);
    CHECK(st.bytes_received == want, "decode counted %llu bytes, expected %llu",
          (unsigned long long)st.bytes_received, (unsigned long long)want);
    CHECK(st.frames_rejected == 0 && st.conns_refused == 0, "nothing rejected");
    kvx_tcp_stats_get(pe, &st);
    CHECK(st.bytes_sent == want && st.links_opened == 1 && st.links_lost == 0,
          "prefill sent %llu bytes over %llu link(s)", (unsigned long long)st.bytes_sent,
          (unsigned long long)st.links_opened);
    {
        kvx_tcp_endpoint ep;
        CHECK(kvx_tcp_endpoint_get(de, &ep) == KVX_OK && ep.port > 0 && memcmp(ep.token, "\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0", 16) &&
                  !strcmp(ep.host, "127.0.0.1"),
              "decode endpoint %s:%d", ep.host, ep.port);
        CHECK(kvx_tcp_endpoint_get(pe, &ep) == KVX_ERR_STATE, "no endpoint on a prefill engine");
    }
    kvx_engine_destroy(de);
    kvx_engine_destroy(pe);
    ex_pool_free(&ps);
    ex_pool_free(&pr);
}

/* Aux rows land in the receiver's slot and nowhere else: three aux buffers
   of different item_len, the prefill's slot 4 of 6 into the decode's slot 7
   of 9 (a slot the prefill's own buffers do not have), every other aux
   byte of both pools compared with what it held before. */
static void test_aux_slots(void) {
    static const uint64_t item[3] = {24, 8, 40};
    static uint8_t rows[2][3][9 * 40], before[2][3][9 * 40];
    kvx_aux_buffer aux[2][3];
    kvx_layout l[2];
    ex_pool ps, pr;
    kvx_engine *pe, *de;
    kvx_room_desc rd;
    kvx_sender *s;
    kvx_receiver *r;
    tt_opts o;
    char why[512], addr[64];
    int32_t sp[3], dp[3];
    uint32_t side, b, j, bad = 0;
    ex_pool_init(&ps, &tt_tiny, 64, 16, 8, 1);
    ex_pool_init(&pr, &tt_tiny, 64, 16, 8, 2);
    for (side = 0; side < 2; side++) {
        l[side] = side ? pr.layout : ps.layout;
        l[side].aux = aux[side];
        l[side].num_aux = 3;
        for (b = 0; b < 3; b++) {
            aux[side][b].base = rows[side][b];
            aux[side][b].item_len = item[b];
            aux[side][b].length = (side ? 9 : 6) * item[b];
            for (j = 0; j < sizeof rows[side][b]; j++)
                rows[side][b][j] = (uint8_t)(side * 101 + b * 37 + j * 7 + 1);
        }
    }
    memcpy(before, rows, sizeof rows);
    memset(&o, 0, sizeof o);
    pe = tt_engine(KVX_ROLE_PREFILL, &l[0], &o, why, sizeof why);
    CHECK(pe != NULL, "aux slots: prefill engine: %s", why);
    snprintf(addr, sizeof addr, "127.0.0.1:%d", pe ? kvx_boot_engine_port(pe) : 0);
    o.boot_addr = addr;
    de = pe ? tt_engine(KVX_ROLE_DECODE, &l[1], &o, why, sizeof why) : NULL;
    CHECK(de != NULL, "aux slots: decode engine: %s", why);
    if (!de) goto out;
    memset(&rd, 0, sizeof rd);
    rd.room = 4242;
    ex_alloc_pages(&ps, sp, 3);
    ex_alloc_pages(&pr, dp, 3);
    ex_pages_pattern(&ps, rd.room, sp, 3, 1);
    kvx_receiver_create(de, &rd, &r);
    kvx_sender_create(pe, &rd, &s);
    CHECK(tt_wait_ready_r(r, 10) && kvx_receiver_init(r, dp, 3, 7) == KVX_OK,
          "aux slots: receiver init, slot 7 (%s)", kvx_receiver_error(r));
    CHECK(tt_wait_ready_s(s, 10) && kvx_sender_init(s, 3, 4) == KVX_OK,
          "aux slots: sender init, slot 4 (%s)", kvx_sender_error(s));
    kvx_sender_send(s, sp, 3);
    CHECK(tt_wait_r(r, 30) == KVX_POLL_SUCCESS, "aux slots: receiver Success: %s",
          kvx_receiver_error(r));
    CHECK(tt_wait_s(s, 30) == KVX_POLL_SUCCESS, "aux slots: sender Success: %s",
          kvx_sender_error(s));
    for (b = 0; b < 3; b++) /* what the decode's slot 7 must now hold */
        memcpy(before[1][b] + 7 * item[b], before[0][b] + 4 * item[b], (size_t)item[b]);
    for (side = 0; side < 2; side++)
        for (b = 0; b < 3; b++)
            for (j = 0; j < sizeof rows[side][b]; j++) bad += rows[side][b][j] != before[side][b][j];
    CHECK(bad == 0, "aux slots: the decode's slot 7 holds the prefill's slot 4 of every aux "
          "buffer, no other aux byte changed on either side (%u bad)", bad);
    CHECK(ex_pages_pattern(&pr, rd.room, dp, 3, 0) == 0, "aux slots: 3 pages verified");
    kvx_sender_destroy(s);
    kvx_receiver_destroy(r);
    ex_free_pages(&ps, sp, 3);
    ex_free_pages(&pr, dp, 3);
out:
    kvx_engine_destroy(de);
    kvx_engine_destroy(pe);
    ex_pool_free(&ps);
    ex_pool_free(&pr);
}

/* ---- between processes --------------------------------------------------------- */

static void test_multiprocess(const char *label, uint64_t seed, uint32_t nreq, uint32_t mn,
                              uint32_t mx, uint32_t chunk, const char *model, int streams) {
    tt_proc pr;
    ex_request *reqs = (ex_request *)calloc(nreq, sizeof *reqs);
    ex_pool p;
    kvx_engine *e = NULL;
    tt_opts o;
    char why[512], addr[64], line[512], err[512];
    uint32_t ok = 0, verified = 0;
    uint64_t bytes = 0, i;
    int port, st;
    double t0 = tt_now();
    ex_requests(reqs, nreq, seed, mn, mx, 16);
    port = tt_spawn_prefill(&pr, seed, nreq, mn, mx, chunk, model, streams, NULL);
    CHECK(port > 0, "%s: prefill helper up", label);
    if (port <= 0) { tt_reap(&pr, 5); free(reqs); return; }
    ex_pool_init(&p, tt_model(model), tt_pool_pages(reqs, nreq), 16, nreq + 1, seed * 3 + 2);
    snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
    memset(&o, 0, sizeof o);
    o.boot_addr = addr;
    e = tt_engine(KVX_ROLE_DECODE, &p.layout, &o, why, sizeof why);
    CHECK(e != NULL, "%s: decode engine: %s", label, why);
    if (e) verified = tt_decode_all(e, &p, reqs, nreq, 60, &ok, err, sizeof err, 0);
    CHECK(ok == nreq, "%s: %u/%u rooms Success %s", label, ok, nreq, err);
    CHECK(verified == nreq, "%s: %u/%u rooms verified byte for byte with aux", label, verified, nreq);
    {
        unsigned pok = 0, pfail = 1;
        int got = tt_expect(&pr, "RESULT ", line, sizeof line, 30) &&
                  sscanf(line, "RESULT %u %u", &pok, &pfail) == 2;
        CHECK(got && pok == nreq && pfail == 0, "%s: every sender Success (%s)", label, line);
    }
    st = tt_reap(&pr, 20);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "%s: prefill helper exit status %d", label, st);
    for (i = 0; i < nreq; i++) bytes += (uint64_t)reqs[i].pages * kvx_layout_page_bytes(&p.layout);
    printf("  %s: %u rooms, %.1f MiB, %d streams, %.2f s\n", label, nreq,
           (double)bytes / (1 << 20), streams, tt_now() - t0);
    kvx_engine_destroy(e);
    ex_pool_free(&p);
    free(reqs);
}

/* ---- GPU-memory layouts through kvx_mem_ops ------------------------------------- */

static void test_gpu(void) {
    ex_pool ps, pr;
    kvx_buffer sb[8], rb[8];
    kvx_mem_ops mem;
    kvx_engine *pe, *de;
    tt_opts o;
    char why[512], addr[64];
    int32_t sp[48], dp[48];
    kvx_room_desc rd;
    kvx_sender *s;
    kvx_receiver *r;
    uint32_t sent = 0;
    ex_pool_init(&ps, &tt_tiny, 64, 16, 4, 1);
    ex_pool_init(&pr, &tt_tiny, 64, 16, 4, 2);
    tt_devmem(ps.bufs, ps.layout.num_buffers, sb);
    tt_devmem(pr.bufs, pr.layout.num_buffers, rb);
    memset(&o, 0, sizeof o);
    o.bufs = sb;
    CHECK(!tt_engine(KVX_ROLE_PREFILL, &ps.layout, &o, why, sizeof why),
          "GPU layout without kvx_mem_ops refused");
    CHECK_STR(why, "kvx_cuda_mem_ops");
    memset(&mem, 0, sizeof mem);
    mem.copy = tt_mock_copy;
    mem.host_alloc = tt_mock_alloc;
    mem.host_free = tt_mock_free;
    o.mem = &mem;
    setenv("KVX_TCP_SEGMENT", "65536", 1); /* several frames per chunk */
    pe = tt_engine(KVX_ROLE_PREFILL, &ps.layout, &o, why, sizeof why);
    snprintf(addr, sizeof addr, "127.0.0.1:%d", pe ? kvx_boot_engine_port(pe) : 0);
    o.boot_addr = addr;
    o.bufs = rb;
    de = tt_engine(KVX_ROLE_DECODE, &pr.layout, &o, why, sizeof why);
    unsetenv("KVX_TCP_SEGMENT");
    CHECK(pe && de, "GPU-layout engines: %s", why);
    if (!pe || !de) return;
    ex_alloc_pages(&ps, sp, 48);
    ex_alloc_pages(&pr, dp, 48);
    ex_pages_pattern(&ps, 81, sp, 48, 1);
    ex_aux_write(&ps, 81, 2);
    memset(&rd, 0, sizeof rd);
    rd.room = 81;
    kvx_receiver_create(de, &rd, &r);
    kvx_sender_create(pe, &rd, &s);
    tt_wait_ready_r(r, 10);
    kvx_receiver_init(r, dp, 48, 1);
    tt_wait_ready_s(s, 10);
    kvx_sender_init(s, 48, 2);
    while (sent < 48) { kvx_sender_send(s, sp + sent, 8); sent += 8; }
    CHECK(tt_wait_r(r, 20) == KVX_POLL_SUCCESS, "GPU pages through staging: %s", kvx_receiver_error(r));
    CHECK(tt_wait_s(s, 20) == KVX_POLL_SUCCESS, "GPU sender Success: %s", kvx_sender_error(s));
    CHECK(ex_pages_pattern(&pr, 81, dp, 48, 0) == 0 && ex_aux_check(&pr, 81, 1),
          "GPU pages verified byte for byte");
    CHECK(__atomic_load_n(&tt_mock_copies, __ATOMIC_RELAXED) >= 4, "copies went through kvx_mem_ops (%d)",
          __atomic_load_n(&tt_mock_copies, __ATOMIC_RELAXED));
    kvx_sender_destroy(s);
    kvx_receiver_destroy(r);
    /* a device error fails the room with the driver's words, on both sides */
    __atomic_store_n(&tt_mock_fail, 1, __ATOMIC_RELEASE);
    rd.room = 82;
    kvx_receiver_create(de, &rd, &r);
    kvx_sender_create(pe, &rd, &s);
    tt_wait_ready_r(r, 10);
    kvx_receiver_init(r, dp, 8, -1);
    tt_wait_ready_s(s, 10);
    kvx_sender_init(s, 8, -1);
    kvx_sender_send(s, sp, 8);
    CHECK(tt_wait_s(s, 10) == KVX_POLL_FAILED, "device error fails the sender");
    CHECK_STR(kvx_sender_error(s), "CUDA_ERROR_ILLEGAL_ADDRESS");
    CHECK(tt_wait_r(r, 10) == KVX_POLL_FAILED, "and the receiver hears it");
    CHECK_STR(kvx_receiver_error(r), "CUDA_ERROR_ILLEGAL_ADDRESS");
    kvx_sender_destroy(s);
    kvx_receiver_destroy(r);
    __atomic_store_n(&tt_mock_fail, 0, __ATOMIC_RELEASE);
    kvx_engine_destroy(de);
    kvx_engine_destroy(pe);
    ex_pool_free(&ps);
    ex_pool_free(&pr);
}

int main(int argc, char **argv) {
    int q = kt_quick(), h = tt_helper_main(argc, argv);
    if (h >= 0) return h;
    kt_name = "test_tcp_transfer";
    tt_find_self(argv[0]);
    signal(SIGPIPE, SIG_IGN);
    test_inproc();
    test_aux_slots();
    test_multiprocess("unchunked", 11, 8, 16, 1000, 100000, "tiny", 4);
    test_multiprocess("chunked", 12, 8, 16, 1000, 2, "tiny", 4);
    test_multiprocess("concurrent", 13, q ? 32 : 96, 16, 400, 3, "tiny", 4);
    test_multiprocess("one stream", 14, 8, 16, 1000, 5, "tiny", 1);
    test_multiprocess("eight streams", 15, 8, 16, 1000, 5, "tiny", 8);
    test_multiprocess("llama-3.1-8b", 16, 2, q ? 256 : 1024, q ? 256 : 1024, 16, "llama-3.1-8b", 4);
    test_gpu();
    return kt_done();
}
