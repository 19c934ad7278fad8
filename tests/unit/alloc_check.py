#!/usr/bin/env python3
"""Issue 12: every allocation goes through the desc allocator.

    python3 tests/unit/alloc_check.py [REPO_ROOT]

In the seven headers (comments and strings removed), a call of malloc,
calloc, realloc, strdup, strndup or free is a failure unless it is inside
kvx.h's kvx__alloc, kvx__free or kvx__grow (the one place the allocator
falls back to libc), or its line says "libc:" with the reason (memory that
a libc or driver API hands out or takes back). Prints "ok ..." per header
and "FAIL file:line: ..." per call; exits 1 on any failure.
"""
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from settings_docs import strip_comments  # noqa: E402

HEADERS = ["kvx.h", "kvx_boot.h", "kvx_file.h", "kvx_tcp.h", "kvx_rdma.h", "kvx_store.h",
           "kvx_cuda.h"]
CALL = re.compile(r"(?<![\w.>])(malloc|calloc|realloc|strdup|strndup|free)\s*\(")
ALLOWED_FUNCS = {"kvx__alloc", "kvx__free", "kvx__grow"}
FUNC = re.compile(r"^(?:static\s+|KVX_API\s+|KVX__UNUSED\s+)*[\w\s\*]+?\b(\w+)\s*\([^;{]*\)\s*\{",
                  re.M)


def strip(src):
    """Comments (settings_docs.strip_comments) and string literals blanked."""
    return re.sub(r'"(?:\\.|[^"\\\n])*"', '""', strip_comments(src))


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else "."
    bad = 0
    for h in HEADERS:
        src = open(os.path.join(root, h), encoding="utf-8").read()
        code = strip(src)
        lines = src.split("\n")
        starts = [(m.start(), m.group(1)) for m in FUNC.finditer(code)
                  if m.group(1) not in ("if", "while", "for", "switch", "return", "sizeof")]
        n = 0
        for m in CALL.finditer(code):
            fn = None
            for pos, name in starts:
                if pos > m.start():
                    break
                fn = name
            ln = code.count("\n", 0, m.start()) + 1
            if h == "kvx.h" and fn in ALLOWED_FUNCS:
                continue
            if "libc:" in lines[ln - 1]:
                continue
            print("FAIL %s:%d: %s() in %s bypasses the desc allocator: %s"
                  % (h, ln, m.group(1), fn, lines[ln - 1].strip()))
            n += 1
        if not n:
            print("ok %s: every allocation goes through the desc allocator" % h)
        bad += n
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
