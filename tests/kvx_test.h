/* kvx_test.h - the tiny check harness every kvx test uses. */
#ifndef KVX_TEST_H
#define KVX_TEST_H
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(__GNUC__) || defined(__clang__)
#define KT_UNUSED __attribute__((unused))
#else
#define KT_UNUSED
#endif

static int kt_pass, kt_fail;
static const char *kt_name = "test";

#define CHECK(cond, ...)                                                                       \
    do {                                                                                       \
        if (cond) {                                                                            \
            kt_pass++;                                                                         \
        } else {                                                                               \
            kt_fail++;                                                                         \
            printf("FAIL %s:%d: ", __FILE__, __LINE__);                                        \
            printf(__VA_ARGS__);                                                               \
            printf("\n");                                                                      \
        }                                                                                      \
    } while (0)

static KT_UNUSED const char *kt_str(const char *s) { return s ? s : "(null)"; }
#define CHECK_STR(hay, needle)                                                                 \
    CHECK(strstr(kt_str(hay), (needle)) != NULL, "expected \"%s\" in \"%s\"", (needle),       \
          kt_str(hay))


static KT_UNUSED int kt_done(void) {
    printf("%s: %d passed, %d failed\n", kt_name, kt_pass, kt_fail);
    return kt_fail ? 1 : 0;
}

static KT_UNUSED int kt_skip(const char *why) {
    printf("SKIP: %s\n", why);
    return 77;
}

static KT_UNUSED int kt_quick(void) {
    const char *q = getenv("KVX_TEST_QUICK");
    return q && *q && *q != '0';
}
#endif
