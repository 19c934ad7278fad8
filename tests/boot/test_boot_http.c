/* test_boot_http - the bootstrap HTTP server answered by real clients:
   curl and Python's http.client (separate processes) against every route,
   including 400, 404, 405 and 503, SGLang-style registration with numbers
   sent as strings, the server info and rank answers, /metrics (Prometheus
   text, checked by a parser in Python) and /rooms. */
#define KVX_IMPLEMENTATION
#include "boot_test.h"

static int g_port, g_ctrl;

/* curl: returns the HTTP status; body in out. */
static int curl(const char *method, const char *path, const char *body, char *out, size_t n) {
    char url[256], raw[65536];
    char *argv[16];
    int a = 0, rc, st;
    char *nl;
    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", g_port, path);
    argv[a++] = (char *)"curl";
    argv[a++] = (char *)"-s";
    argv[a++] = (char *)"--max-time";
    argv[a++] = (char *)"10";
    argv[a++] = (char *)"-X";
    argv[a++] = (char *)method;
    if (body) {
        argv[a++] = (char *)"-H";
        argv[a++] = (char *)"Content-Type: application/json";
        argv[a++] = (char *)"--data-binary";
        argv[a++] = (char *)body;
    }
    argv[a++] = (char *)"-w";
    argv[a++] = (char *)"\n%{http_code}";
    argv[a++] = url;
    argv[a] = NULL;
    rc = bt_run(argv, raw, sizeof raw, 15);
    nl = strrchr(raw, '\n');
    if (rc != 0 || !nl) { snprintf(out, n, "curl failed (%d): %.200s", rc, raw); return -1; }
    st = atoi(nl + 1);
    *nl = 0;
    while (nl > raw && nl[-1] == '\n') *--nl = 0;
    snprintf(out, n, "%s", raw);
    return st;
}

static const char *PY =
    "import http.client, json, sys\n"
    "port = int(sys.argv[1])\n"
    "for req in json.loads(sys.argv[2]):\n"
    "    method, path, body = req\n"
    "    c = http.client.HTTPConnection('127.0.0.1', port, timeout=10)\n"
    "    hdrs = {'Content-Type': 'application/json'} if body is not None else {}\n"
    "    c.request(method, path, body=body, headers=hdrs)\n"
    "    r = c.getresponse()\n"
    "    data = r.read().decode()\n"
    "    extra = ''\n"
    "    if path == '/metrics':\n"
    "        # every sample line must be 'name{labels} value' with a float value\n"
    "        bad = [l for l in data.splitlines() if l and not l.startswith('#') and\n"
    "               (len(l.rsplit(' ', 1)) != 2 or not l.rsplit(' ', 1)[1].replace('.', '', 1).isdigit())]\n"
    "        extra = 'prometheus-ok' if not bad else 'bad:' + repr(bad[:3])\n"
    "    if r.getheader('Content-Type', '').startswith('application/json'):\n"
    "        json.loads(data)\n"
    "        extra = extra or 'json-ok'\n"
    "    print(json.dumps([r.status, data, r.getheader('Connection'), extra]))\n"
    "    c.close()\n";

/* Runs the Python client on a JSON list of [method, path, body]; one JSON
   line per answer in out. */
static int python(const char *reqs, char *out, size_t n) {
    char port[16];
    char *argv[6];
    snprintf(port, sizeof port, "%d", g_port);
    argv[0] = (char *)"python3";
    argv[1] = (char *)"-c";
    argv[2] = (char *)PY;
    argv[3] = port;
    argv[4] = (char *)reqs;
    argv[5] = NULL;
    return bt_run(argv, out, n, 30);
}

/* The i-th answer line of the Python output: status, body, connection, extra. */
static int py_answer(const char *out, int i, char *body, size_t n, char *conn, char *extra) {
    kvx__json_doc d;
    const char *p = out;
    const kvx__json *root, *x;
    int st = -1, k;
    for (k = 0; k < i && p; k++) {
        p = strchr(p, '\n');
        if (p) p++;
    }
    if (!p || !*p) return -1;
    if (kvx__json_parse(&d, NULL, p, strcspn(p, "\n"), 64) == KVX_OK && (root = kvx__json_root(&d)) &&
        root->type == KVX_JSON_ARRAY && root->count == 4) {
        st = (int)kvx__json_at(&d, root, 0)->num;
        x = kvx__json_at(&d, root, 1);
        snprintf(body, n, "%.*s", (int)x->str_len, x->str);
        x = kvx__json_at(&d, root, 2);
        if (x->type == KVX_JSON_STRING) snprintf(conn, 32, "%.*s", (int)x->str_len, x->str);
        else snprintf(conn, 32, "(none)");
        x = kvx__json_at(&d, root, 3);
        snprintf(extra, 64, "%.*s", (int)x->str_len, x->str);
    }
    kvx__json_free(&d);
    return st;
}

static int json_int(const char *text, const char *key, int64_t *v) {
    kvx__json_doc d;
    const kvx__json *x;
    int ok = 0;
    if (kvx__json_parse(&d, NULL, text, strlen(text), 256) == KVX_OK &&
        (x = kvx__json_get(&d, kvx__json_root(&d), key)) != NULL) {
        if (x->type == KVX_JSON_NUMBER) { *v = (int64_t)x->num; ok = 1; }
        if (x->type == KVX_JSON_BOOL) { *v = x->i64; ok = 1; }
    }
    kvx__json_free(&d);
    return ok;
}

static int json_str_is(const char *text, const char *key, const char *want) {
    kvx__json_doc d;
    const kvx__json *x;
    int ok = 0;
    if (kvx__json_parse(&d, NULL, text, strlen(text), 256) == KVX_OK &&
        (x = kvx__json_get(&d, kvx__json_root(&d), key)) != NULL && x->type == KVX_JSON_STRING)
        ok = !strcmp(x->str, want);
    kvx__json_free(&d);
    return ok;
}

#define INFO "/route?prefill_dp_rank=-1&prefill_cp_rank=-1&target_tp_rank=-1&target_pp_rank=-1"
#define RANK(dp, tp) "/route?prefill_dp_rank=" #dp "&prefill_cp_rank=0&target_tp_rank=" #tp "&target_pp_rank=0"

int main(void) {
    bt_pool pool;
    kvx_engine *e;
    bt_engine_opts o;
    char why[256], body[65536], out[65536], conn[32], extra[64];
    int st;
    int64_t v = 0;
    kvx_sender *s5, *s6;
    kvx_room_desc rd;
    bt_name = "test_boot_http";
    signal(SIGPIPE, SIG_IGN);
    if (!bt_have("curl") || !bt_have("python3")) {
        printf("SKIP: curl and python3 are needed\n");
        return 77;
    }
    bt_pool_init(&pool, 256, 16, 128, "bfloat16");
    memset(&o, 0, sizeof o);
    o.tp_size = 2; /* rank 1 registers below, by hand */
    e = bt_engine(KVX_ROLE_PREFILL, &pool, &o, why, sizeof why);
    if (!e) { printf("cannot start the prefill engine: %s\n", why); return 1; }
    g_port = kvx_boot_engine_port(e);
    g_ctrl = kvx_boot_control_port(kvx_boot_get(e));
    memset(&rd, 0, sizeof rd);
    rd.room = 5;
    kvx_sender_create(e, &rd, &s5);

    /* ---- curl ---- */
    st = curl("GET", "/health", NULL, body, sizeof body);
    CHECK(st == 200 && !strcmp(body, "OK"), "curl GET /health -> %d %s", st, body);
    st = curl("GET", INFO, NULL, body, sizeof body);
    CHECK(st == 503 && strstr(body, "1 of 2 ranks"), "curl server info before rank 1 registered -> %d %s", st, body);
    st = curl("GET", RANK(0, 0), NULL, body, sizeof body);
    CHECK(st == 503, "curl rank 0 before every rank registered -> %d", st);
    st = curl("GET", "/route?prefill_dp_rank=0&target_tp_rank=0", NULL, body, sizeof body);
    CHECK(st == 400 && strstr(body, "prefill_cp_rank is missing"), "curl missing parameter -> %d %s", st, body);
    st = curl("GET", "/route?prefill_dp_rank=zero&prefill_cp_rank=0&target_tp_rank=0&target_pp_rank=0",
              NULL, body, sizeof body);
    CHECK(st == 400 && strstr(body, "not an integer"), "curl non-integer parameter -> %d", st);
    st = curl("PUT", "/route", "{\"attn_tp_size\": 4, \"attn_tp_rank\": 1, \"rank_ip\": \"10.0.0.7\", \"rank_port\": 17000}",
              body, sizeof body);
    CHECK(st == 400 && strstr(body, "differ"), "curl registration with other sizes -> %d %s", st, body);
    st = curl("PUT", "/route", "{not json", body, sizeof body);
    CHECK(st == 400 && strstr(body, "not JSON"), "curl registration that is not JSON -> %d %s", st, body);
    st = curl("PUT", "/route", "{\"attn_tp_size\": 2, \"attn_tp_rank\": 1, \"rank_port\": 1}", body, sizeof body);
    CHECK(st == 400 && strstr(body, "rank_ip"), "curl registration without rank_ip -> %d %s", st, body);
    st = curl("POST", "/route", "{}", body, sizeof body);
    CHECK(st == 405, "curl POST /route -> %d", st);
    st = curl("GET", "/no/such/path", NULL, body, sizeof body);
    CHECK(st == 404, "curl unknown path -> %d", st);

    /* ---- Python http.client: registration as SGLang sends it, then every answer ---- */
    {
        const char *reqs =
            "[[\"PUT\", \"/route\", \"{\\\"attn_tp_size\\\": \\\"2\\\", \\\"attn_tp_rank\\\": \\\"1\\\", "
            "\\\"attn_cp_size\\\": 1, \\\"attn_cp_rank\\\": 0, \\\"attn_dp_size\\\": 1, \\\"attn_dp_rank\\\": 0, "
            "\\\"pp_size\\\": 1, \\\"pp_rank\\\": 0, \\\"system_dp_size\\\": 1, \\\"system_dp_rank\\\": 0, "
            "\\\"rank_ip\\\": \\\"10.0.0.7\\\", \\\"rank_port\\\": \\\"17000\\\", \\\"page_size\\\": \\\"16\\\", "
            "\\\"kv_cache_dtype\\\": \\\"bfloat16\\\", \\\"load_balance_method\\\": \\\"follow_bootstrap_room\\\", "
            "\\\"prefill_http_port\\\": \\\"30000\\\"}\"],"
            "[\"GET\", \"" INFO "\", null],"
            "[\"GET\", \"" RANK(0, 0) "\", null],"
            "[\"GET\", \"" RANK(0, 1) "\", null],"
            "[\"GET\", \"" RANK(0, 5) "\", null],"
            "[\"GET\", \"" RANK(3, 0) "\", null],"
            "[\"GET\", \"/route?prefill_dp_rank=-1&prefill_cp_rank=0&target_tp_rank=0&target_pp_rank=0\", null],"
            "[\"GET\", \"/health\", null],"
            "[\"DELETE\", \"/health\", null],"
            "[\"GET\", \"/metrics\", null],"
            "[\"GET\", \"/rooms\", null]]";
        int rc = python(reqs, out, sizeof out);
        CHECK(rc == 0, "python http.client ran (exit %d)", rc);
        st = py_answer(out, 0, body, sizeof body, conn, extra);
        CHECK(st == 200 && !strcmp(body, "OK"), "python PUT /route (numbers as strings) -> %d %s", st, body);
        st = py_answer(out, 1, body, sizeof body, conn, extra);
        CHECK(st == 200 && !strcmp(extra, "json-ok") && !strcmp(conn, "close"),
              "python server info -> %d, JSON, Connection: %s: %s", st, conn, body);
        CHECK(json_int(body, "attn_tp_size", &v) && v == 2 && json_int(body, "attn_cp_size", &v) && v == 1 &&
                  json_int(body, "dp_size", &v) && v == 1 && json_int(body, "pp_size", &v) && v == 1 &&
                  json_int(body, "page_size", &v) && v == 16 &&
                  json_str_is(body, "kv_cache_dtype", "bfloat16") &&
                  json_int(body, "follow_bootstrap_room", &v) && v == 1 &&
                  json_int(body, "prefill_http_port", &v) && v == 30000,
              "server info has SGLang's fields and values");
        st = py_answer(out, 2, body, sizeof body, conn, extra);
        CHECK(st == 200 && json_str_is(body, "rank_ip", "127.0.0.1") && json_int(body, "rank_port", &v) &&
                  v == g_ctrl,
              "rank tp 0 is this engine's control listener (port %d): %s", g_ctrl, body);
        st = py_answer(out, 3, body, sizeof body, conn, extra);
        CHECK(st == 200 && json_str_is(body, "rank_ip", "10.0.0.7") && json_int(body, "rank_port", &v) &&
                  v == 17000,
              "rank tp 1 is what was registered: %s", body);
        st = py_answer(out, 4, body, sizeof body, conn, extra);
        CHECK(st == 404, "unknown tp rank 5 -> %d %s", st, body);
        st = py_answer(out, 5, body, sizeof body, conn, extra);
        CHECK(st == 404, "unknown dp rank 3 -> %d", st);
        st = py_answer(out, 6, body, sizeof body, conn, extra);
        CHECK(st == 404, "dp -1 with concrete other ranks -> %d", st);
        st = py_answer(out, 7, body, sizeof body, conn, extra);
        CHECK(st == 200 && !strcmp(body, "OK"), "python GET /health -> %d", st);
        st = py_answer(out, 8, body, sizeof body, conn, extra);
        CHECK(st == 405, "python DELETE /health -> %d", st);
        st = py_answer(out, 9, body, sizeof body, conn, extra);
        CHECK(st == 200 && !strcmp(extra, "prometheus-ok") &&
                  strstr(body, "# TYPE kvx_rooms gauge") &&
                  strstr(body, "kvx_rooms{state=\"Bootstrapping\"} 1") &&
                  strstr(body, "kvx_boot_ranks_registered 2") && strstr(body, "kvx_boot_ranks_expected 2") &&
                  strstr(body, "kvx_rooms_created_total 1") && strstr(body, "kvx_bytes_total 0"),
              "python /metrics -> %d, Prometheus text with rooms by state and ranks (%s)", st, extra);
        st = py_answer(out, 10, body, sizeof body, conn, extra);
        CHECK(st == 200 && !strcmp(extra, "json-ok") && json_int(body, "count", &v) && v == 1 &&
                  strstr(body, "\"room\":5") && strstr(body, "\"state\":\"Bootstrapping\"") &&
                  strstr(body, "\"age_s\":") && strstr(body, "\"role\":\"sender\""),
              "python /rooms lists the open sender: %s", body);
    }

    /* after registration curl sees the same */
    st = curl("GET", INFO, NULL, body, sizeof body);
    CHECK(st == 200 && json_int(body, "attn_tp_size", &v) && v == 2, "curl server info -> %d %s", st, body);
    st = curl("GET", RANK(0, 1), NULL, body, sizeof body);
    CHECK(st == 200 && json_int(body, "rank_port", &v) && v == 17000, "curl rank tp 1 -> %d %s", st, body);

    /* failures by reason: an aborted open room, then closed */
    memset(&rd, 0, sizeof rd);
    rd.room = 6;
    kvx_sender_create(e, &rd, &s6);
    kvx_sender_abort(s6, "test");
    st = curl("GET", "/metrics", NULL, body, sizeof body);
    CHECK(st == 200 && strstr(body, "kvx_room_failures_total{reason=\"KVX_ERR_ABORTED\"} 1") &&
              strstr(body, "kvx_rooms{state=\"Failed\"} 1"),
          "metrics count an open failed room by reason");
    kvx_sender_destroy(s6);
    st = curl("GET", "/metrics", NULL, body, sizeof body);
    CHECK(st == 200 && strstr(body, "kvx_room_failures_total{reason=\"KVX_ERR_ABORTED\"} 1") &&
              strstr(body, "kvx_rooms{state=\"Failed\"} 0") && strstr(body, "kvx_rooms_failed_total 1"),
          "metrics keep counting it once it is closed");
    st = curl("GET", "/rooms", NULL, body, sizeof body);
    CHECK(st == 200 && json_int(body, "count", &v) && v == 1, "curl /rooms -> %d %s", st, body);
    kvx_sender_destroy(s5);
    st = curl("GET", "/rooms", NULL, body, sizeof body);
    CHECK(st == 200 && json_int(body, "count", &v) && v == 0, "no unfinished room left: %s", body);
    kvx_engine_destroy(e);
    bt_pool_free(&pool);
    return bt_finish();
}
