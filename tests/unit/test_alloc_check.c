/* test_alloc_check - every allocation of the seven headers goes through the
   desc allocator: no header calls malloc, calloc, realloc, strdup or free
   except kvx.h's kvx__alloc / kvx__free / kvx__grow, and lines marked
   "libc:" with the reason (memory a libc or driver API owns). The rules are
   in tests/unit/alloc_check.py. */
#define SCRIPT "tests/unit/alloc_check.py"
#define TEST_NAME "test_alloc_check"
#include "pyscript.h"
