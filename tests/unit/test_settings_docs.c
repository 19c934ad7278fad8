/* test_settings_docs - the settings cross-check (issue 12): every
   environment variable the seven headers read is in the ENVIRONMENT section
   of the doc block of the header that reads it (or of one it includes) and
   in a README settings table, and every variable documented there is read;
   every COMPILE-TIME MACROS entry is used by the code and every overridable
   default (#ifndef KVX_X / #define KVX_X) is documented. The rules and the
   parsing are in tests/unit/settings_docs.py; this program runs it from the
   repository root and counts its "ok" and "FAIL" lines. */
#define SCRIPT "tests/unit/settings_docs.py"
#define TEST_NAME "test_settings_docs"
#include "pyscript.h"
