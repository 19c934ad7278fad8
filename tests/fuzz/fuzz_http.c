/* Fuzzes what kvx_boot reads over HTTP from untrusted peers: the bootstrap
   server's request parser and query integers (any client), the PUT /route
   registration body, and on the decode side the server-info and rank
   answers a bootstrap server sends back. Checks invariants, not just
   crashes: accepted requests point inside the input and respect the
   limits; refusals carry a 4xx/5xx status; accepted registrations are
   consistent. */
#define KVX_IMPLEMENTATION
#include "../../kvx_boot.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_request(const uint8_t *data, size_t size) {
    kvx_boot_http_request rq;
    const char *lo = (const char *)data, *hi = lo + size;
    kvx_result r = kvx_boot_parse_http_request(data, size, &rq);
    if (r != KVX_OK) {
        if (r != KVX_ERR_PROTOCOL || rq.status < 400 || rq.status > 505 || !rq.error[0] || rq.complete)
            __builtin_trap();
        return;
    }
    if (!rq.complete) {
        if (rq.headers_done && rq.header_len > KVX_BOOT_MAX_HEADER) __builtin_trap();
        return;
    }
    if (rq.consumed > size || rq.header_len + rq.body_len != rq.consumed ||
        rq.header_len > KVX_BOOT_MAX_HEADER || rq.body_len > KVX_BOOT_MAX_BODY ||
        rq.method < lo || rq.method + rq.method_len > hi || rq.path < lo ||
        rq.path + rq.path_len > hi || !rq.path_len || rq.path[0] != '/' ||
        (rq.body_len && (rq.body < lo || rq.body + rq.body_len > hi)) ||
        (rq.query && (rq.query < lo || rq.query + rq.query_len > hi)) ||
        (rq.auth && (rq.auth < lo || rq.auth + rq.auth_len > hi)))
        __builtin_trap();
    /* a request is complete exactly once: its own prefix minus one byte is not */
    if (rq.consumed > 0) {
        kvx_boot_http_request p;
        kvx_result pr = kvx_boot_parse_http_request(data, rq.consumed - 1, &p);
        if (pr == KVX_OK && p.complete) __builtin_trap();
    }
    if (rq.query) {
        static const char *keys[] = {"prefill_dp_rank", "prefill_cp_rank", "target_tp_rank",
                                     "target_pp_rank", "a", ""};
        size_t k;
        for (k = 0; k < sizeof keys / sizeof keys[0]; k++) {
            int32_t v = 7;
            int q = kvx_boot_query_int(rq.query, rq.query_len, keys[k], &v);
            if (q < -1 || q > 1) __builtin_trap();
        }
    }
    if (rq.body_len) {
        kvx__boot_regn g;
        char why[256];
        if (kvx__boot_reg_parse(NULL, rq.body, rq.body_len, &g, why, sizeof why) == 0) {
            if (g.tp_rank >= g.tp || g.cp_rank >= g.cp || g.dp_rank >= g.dp || g.pp_rank >= g.pp ||
                g.port < 1 || g.port > 65535 || !g.ip[0] || strlen(g.ip) >= sizeof g.ip)
                __builtin_trap();
        } else if (!why[0]) {
            __builtin_trap();
        }
    }
}

/* The decode side parses the bootstrap server's answers. */
static void check_answers(const uint8_t *data, size_t size) {
    int tp, cp, dp, pp, ps, port = 0, ping = 7, follow = 7;
    char dtype[64], ip[64];
    if (kvx__boot_info_parse(NULL, (const char *)data, size, &tp, &cp, &dp, &pp, &ps, dtype, sizeof dtype,
                             &ping, &follow) == 0) {
        if (tp < 1 || tp > 1024 || cp < 1 || cp > 1024 || dp < 1 || dp > 1024 || pp < 1 || pp > 1024 ||
            ps < 1 || strlen(dtype) >= sizeof dtype || (ping != 0 && ping != 1) || (follow != 0 && follow != 1))
            __builtin_trap();
    }
    if (kvx__boot_rank_parse(NULL, (const char *)data, size, ip, sizeof ip, &port) == 0) {
        if (port < 1 || port > 65535 || !ip[0]) __builtin_trap();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    check_request(data, size);
    check_answers(data, size);
    return 0;
}
