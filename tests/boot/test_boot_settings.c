/* test_boot_settings.c - the handshake's settings are the rows of
   kvx__boot_table, read by the core's settings rule (issue 12): every
   numeric row refuses a value outside its range, from the variable and from
   the desc field, with KVX_ERR_BAD_CONFIG and a sentence naming the
   variable (before, heartbeat values were clamped and a bad desc port was
   refused without naming KVX_BOOTSTRAP_PORT); KVX_ZERO in desc.boot.port
   and 0 in KVX_BOOTSTRAP_PORT ask for an ephemeral port; the variable
   overrides the field. */
#define KVX_IMPLEMENTATION
#include "../../kvx_file.h"
#include "../../examples/kvx_example.h"
#include "../kvx_test.h"

static const ex_model tiny = {"tiny", 2, 2, 32, 2, 0, "bfloat16"};
static char root[256];
static ex_pool pool;

static void quiet(void *u, kvx_log_level lvl, const char *sub, uint64_t room, const char *msg) {
    (void)u; (void)lvl; (void)sub; (void)room; (void)msg;
}

/* A prefill file engine with the handshake (an ephemeral port unless the
   caller's boot desc says otherwise). */
static kvx_result make(const kvx_boot_desc *boot, kvx_engine **e, char *why, size_t wl) {
    kvx_engine_desc d;
    memset(&d, 0, sizeof d);
    d.role = KVX_ROLE_PREFILL;
    d.transport = "file";
    d.layout = pool.layout;
    d.file.dir = root;
    d.logger.func = quiet;
    d.boot = *boot;
    d.boot.host = "127.0.0.1";
    if (!d.boot.port) d.boot.port = KVX_ZERO;
    *e = NULL;
    why[0] = 0;
    return kvx_engine_create(&d, e, why, wl);
}

/* The field of row t in a kvx_boot_desc, written as a double. */
static void put(const kvx__setting *t, kvx_boot_desc *b, double v) {
    char *p = (char *)b + t->off;
    if (t->kind == KVX__S_DBL) *(double *)(void *)p = v;
    else *(int *)(void *)p = (int)v;
}

static void refuses(const kvx__setting *t, double v, int from_env) {
    kvx_boot_desc b;
    kvx_engine *e;
    char why[512], text[64];
    kvx_result r;
    memset(&b, 0, sizeof b);
    snprintf(text, sizeof text, "%.17g", v);
    if (from_env) setenv(t->env, text, 1);
    else put(t, &b, v);
    r = make(&b, &e, why, sizeof why);
    CHECK(r == KVX_ERR_BAD_CONFIG && !e && strstr(why, t->env),
          "%s = %s from the %s: refused naming it (%s: %s)", t->env, text,
          from_env ? "variable" : "field", kvx_result_str(r), why);
    kvx_engine_destroy(e);
    if (from_env) unsetenv(t->env);
}

static void accepts(const kvx__setting *t, double v) {
    kvx_boot_desc b;
    kvx_engine *e;
    char why[512];
    kvx_result r;
    memset(&b, 0, sizeof b);
    if (t->zero && v == 0) v = KVX_ZERO;
    put(t, &b, v);
    r = make(&b, &e, why, sizeof why);
    CHECK(r == KVX_OK && e, "%s: the field at %g is accepted (%s)", t->env, v, why);
    kvx_engine_destroy(e);
}

static void rows(void) {
    size_t i, n = 0;
    for (i = 0; i < KVX__COUNT(kvx__boot_table); i++) {
        const kvx__setting *t = &kvx__boot_table[i];
        double step = t->kind == KVX__S_DBL ? t->max : 1, below;
        if (t->kind == KVX__S_STR) continue;
        n++;
        refuses(t, t->max + step, 1);
        refuses(t, t->max + step, 0);
        /* below the range: 0.05 s was raised to 0.1 before; 0 means the
           default where it is no value, so -1; -1 in the field is KVX_ZERO */
        below = t->kind == KVX__S_DBL ? t->min / 2 : t->min - 1 == 0 ? -1 : t->min - 1;
        refuses(t, below, 1);
        if (!(t->zero && below == KVX_ZERO)) refuses(t, below, 0);
        if (strcmp(t->env, "KVX_BOOTSTRAP_PORT")) { /* a fixed port may be taken */
            accepts(t, t->min);
            accepts(t, t->max);
        }
    }
    CHECK(n == 3, "the table has the port and the two heartbeat rows (%zu numeric)", n);
}

static void port(void) {
    kvx_boot_desc b;
    kvx_engine *e;
    char why[512];
    memset(&b, 0, sizeof b);
    b.port = KVX_ZERO;
    CHECK(make(&b, &e, why, sizeof why) == KVX_OK && kvx_boot_engine_port(e) > 0 &&
              kvx_boot_engine_port(e) != KVX_BOOT_DEFAULT_PORT,
          "desc.boot.port = KVX_ZERO: an ephemeral port (%d) %s", kvx_boot_engine_port(e), why);
    kvx_engine_destroy(e);
    b.port = 1; /* the variable overrides the field */
    setenv("KVX_BOOTSTRAP_PORT", "0", 1);
    CHECK(make(&b, &e, why, sizeof why) == KVX_OK && kvx_boot_engine_port(e) > 1 &&
              kvx_boot_engine_port(e) != KVX_BOOT_DEFAULT_PORT,
          "KVX_BOOTSTRAP_PORT=0 over desc.boot.port 1: an ephemeral port (%d) %s",
          kvx_boot_engine_port(e), why);
    kvx_engine_destroy(e);
    setenv("KVX_BOOTSTRAP_PORT", "port", 1);
    CHECK(make(&b, &e, why, sizeof why) == KVX_ERR_BAD_CONFIG &&
              strstr(why, "KVX_BOOTSTRAP_PORT"),
          "KVX_BOOTSTRAP_PORT=port refused: %s", why);
    kvx_engine_destroy(e);
    unsetenv("KVX_BOOTSTRAP_PORT");
}

int main(void) {
    static const char *vars[] = {"KVX_BOOTSTRAP_HOST", "KVX_BOOTSTRAP_PORT", "KVX_HEARTBEAT_INTERVAL",
                                 "KVX_HEARTBEAT_MAX_FAILURE", "KVX_BOOTSTRAP_RANK_IP"};
    size_t i;
    kt_name = "test_boot_settings";
    for (i = 0; i < KVX__COUNT(vars); i++) unsetenv(vars[i]);
    snprintf(root, sizeof root, "/tmp/kvx_bootsettings_%d", (int)getpid());
    kvx_file_register();
    ex_pool_init(&pool, &tiny, 16, 16, 2, 1);
    rows();
    port();
    ex_pool_free(&pool);
    {
        char cmd[300];
        snprintf(cmd, sizeof cmd, "rm -rf %s", root);
        if (system(cmd)) printf("  could not remove %s\n", root);
    }
    return kt_done();
}
