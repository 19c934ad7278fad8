/* test_settings.c - the core's settings table (kvx__settings_apply): the
   field, then the variable, then the range; KVX_ZERO where 0 is a value;
   every refusal names the variable and the field. */
#define KVX_IMPLEMENTATION
#include "kvx.h"
#include "../kvx_test.h"

typedef struct demo_desc {
    int count;      /* 0 = default 4, range 1..64 */
    int retries;    /* 0 is a value: default 7, range 0..7 */
    int index;      /* default -1 (auto), 0 is a value, range 0..255 */
    uint32_t bytes; /* default 4096, range 512..1 MiB */
    double secs;    /* default 2.5, range 0.001..100 */
    const char *name;
    int level;
} demo_desc;

static const kvx__setting demo_table[] = {
    KVX__SET_INT("KVXT_COUNT", demo_desc, count, 4, 1, 64),
    KVX__SET_INT0("KVXT_RETRIES", demo_desc, retries, 7, 0, 7),
    KVX__SET_INT0("KVXT_INDEX", demo_desc, index, -1, 0, 255),
    KVX__SET_U32("KVXT_BYTES", demo_desc, bytes, 4096, 512, 1 << 20),
    KVX__SET_DBL("KVXT_SECS", demo_desc, secs, 2.5, 0.001, 100),
    KVX__SET_STR("KVXT_NAME", demo_desc, name),
    KVX__SET_ENUM("KVXT_LEVEL", demo_desc, level, "error|warn|info|debug"),
};

static const char *vars[] = {"KVXT_COUNT", "KVXT_RETRIES", "KVXT_INDEX", "KVXT_BYTES",
                             "KVXT_SECS",  "KVXT_NAME",    "KVXT_LEVEL"};

static kvx_result apply(demo_desc *d, char *why, size_t wl) {
    why[0] = 0;
    return kvx__settings_apply(demo_table, KVX__COUNT(demo_table), d, why, wl);
}

static void clear_env(void) {
    size_t i;
    for (i = 0; i < KVX__COUNT(vars); i++) unsetenv(vars[i]);
}

static void test_defaults(void) {
    demo_desc d;
    char why[256];
    memset(&d, 0, sizeof d);
    CHECK(apply(&d, why, sizeof why) == KVX_OK, "zero desc applies: %s", why);
    CHECK(d.count == 4 && d.retries == 7 && d.index == -1 && d.bytes == 4096 && d.secs == 2.5 &&
              d.name == NULL && d.level == 0,
          "defaults: %d %d %d %u %g %d", d.count, d.retries, d.index, (unsigned)d.bytes, d.secs,
          d.level);
}

static void test_fields(void) {
    demo_desc d;
    char why[256];
    memset(&d, 0, sizeof d);
    d.count = 9;
    d.retries = KVX_ZERO;
    d.index = KVX_ZERO;
    d.bytes = 1024;
    d.secs = 0.5;
    d.name = "from-desc";
    CHECK(apply(&d, why, sizeof why) == KVX_OK, "desc values apply: %s", why);
    CHECK(d.count == 9 && d.retries == 0 && d.index == 0 && d.bytes == 1024 && d.secs == 0.5,
          "KVX_ZERO asks for 0: retries %d index %d", d.retries, d.index);
    CHECK(!strcmp(d.name, "from-desc"), "string field kept");
    memset(&d, 0, sizeof d);
    d.count = 65;
    CHECK(apply(&d, why, sizeof why) == KVX_ERR_BAD_CONFIG, "field out of range refused");
    CHECK_STR(why, "KVXT_COUNT");
    CHECK_STR(why, "desc.count");
    CHECK_STR(why, "[1, 64]");
    memset(&d, 0, sizeof d);
    d.secs = -1;
    CHECK(apply(&d, why, sizeof why) == KVX_ERR_BAD_CONFIG, "negative double refused");
    CHECK_STR(why, "desc.secs");
    memset(&d, 0, sizeof d);
    d.retries = 8;
    CHECK(apply(&d, why, sizeof why) == KVX_ERR_BAD_CONFIG, "retries 8 refused");
    CHECK_STR(why, "KVXT_RETRIES");
}

static void test_env(void) {
    demo_desc d;
    char why[256];
    memset(&d, 0, sizeof d);
    d.count = 9;
    d.name = "from-desc";
    setenv("KVXT_COUNT", "12", 1);
    setenv("KVXT_RETRIES", "0", 1);
    setenv("KVXT_INDEX", "0", 1);
    setenv("KVXT_BYTES", "0", 1);
    setenv("KVXT_NAME", "from-env", 1);
    setenv("KVXT_LEVEL", "INFO", 1);
    CHECK(apply(&d, why, sizeof why) == KVX_OK, "env applies: %s", why);
    CHECK(d.count == 12, "the variable overrides the field (%d)", d.count);
    CHECK(d.retries == 0 && d.index == 0, "0 is a value where it is one (%d %d)", d.retries,
          d.index);
    CHECK(d.bytes == 4096, "a variable of 0 elsewhere means the default (%u)", (unsigned)d.bytes);
    CHECK(!strcmp(d.name, "from-env"), "string variable overrides");
    CHECK(d.level == 3, "enum names case-insensitive (%d)", d.level);
    clear_env();
    setenv("KVXT_INDEX", "-1", 1);
    memset(&d, 0, sizeof d);
    CHECK(apply(&d, why, sizeof why) == KVX_OK && d.index == -1,
          "the default (auto) is accepted from the variable: %s", why);
    clear_env();
    setenv("KVXT_NAME", "", 1);
    memset(&d, 0, sizeof d);
    d.name = "kept";
    CHECK(apply(&d, why, sizeof why) == KVX_OK && !strcmp(d.name, "kept"),
          "an empty variable is unset");
    clear_env();
}

static void test_env_refusals(void) {
    static const struct {
        const char *var, *val;
    } bad[] = {
        {"KVXT_COUNT", "1.5"},  {"KVXT_COUNT", "65"},  {"KVXT_COUNT", "-2"},
        {"KVXT_COUNT", "many"}, {"KVXT_COUNT", "4x"},  {"KVXT_RETRIES", "8"},
        {"KVXT_INDEX", "-2"},   {"KVXT_INDEX", "256"}, {"KVXT_BYTES", "100"},
        {"KVXT_SECS", "nan"},   {"KVXT_SECS", "1e9"},  {"KVXT_LEVEL", "loud"},
        {"KVXT_LEVEL", "war"},  {"KVXT_BYTES", "1e99"},
    };
    size_t i;
    for (i = 0; i < KVX__COUNT(bad); i++) {
        demo_desc d;
        char why[256];
        memset(&d, 0, sizeof d);
        setenv(bad[i].var, bad[i].val, 1);
        CHECK(apply(&d, why, sizeof why) == KVX_ERR_BAD_CONFIG, "%s=%s refused", bad[i].var,
              bad[i].val);
        CHECK(strstr(why, bad[i].var) != NULL, "%s=%s: sentence names it: %s", bad[i].var,
              bad[i].val, why);
        unsetenv(bad[i].var);
    }
}

int main(void) {
    kt_name = "test_settings";
    clear_env();
    test_defaults();
    test_fields();
    test_env();
    test_env_refusals();
    return kt_done();
}
