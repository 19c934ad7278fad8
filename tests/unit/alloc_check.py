#!/usr/bin/env python3
"""Issue 12: every allocation goes through the desc allocator.

    python3 tests/unit/alloc_check.py [REPO_ROOT]

In the seven headers (comments and strings removed), these are failures:
- a call of malloc, calloc, realloc, strdup, strndup or free, unless it is
  inside kvx.h's kvx__alloc, kvx__free or kvx__grow (the one place the
  allocator falls back to libc);
- a NULL allocator given to the core's allocating helpers (kvx__alloc,
  kvx__zalloc, kvx__grow, kvx__free, kvx__json_parse, kvx__buf_init,
  KVX__BUF), which means libc;
- a kvx__buf started by memset or a brace literal instead of kvx__buf_init
  or KVX__BUF (that leaves its allocator NULL: libc);
unless the line, or the function it is in, says "libc:" with the reason
(memory that a libc or driver API hands out, a tool without an engine).
Prints "ok ..." per header and "FAIL file:line: ..." per finding; exits 1
on any failure.
"""
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from settings_docs import strip_comments  # noqa: E402

HEADERS = ["kvx.h", "kvx_boot.h", "kvx_file.h", "kvx_tcp.h", "kvx_rdma.h", "kvx_store.h",
           "kvx_cuda.h"]
CALL = re.compile(r"(?<![\w.>])(malloc|calloc|realloc|strdup|strndup|free)\s*\(")
NULL_AL = re.compile(r"\b(kvx__(?:alloc|zalloc|grow|free)|KVX__BUF)\s*\(\s*NULL\b"
                     r"|\b(kvx__json_parse|kvx__buf_init)\s*\([^,()]+,\s*NULL\b")
BUF_DECL = re.compile(r"\bkvx__buf\s+([^;()]+);")
BUF_LITERAL = re.compile(r"\bkvx__buf\s+\w+\s*=\s*\{")
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

        def where(pos):
            """(function name, its text in src, the line) of a position in code."""
            fn, fstart = None, 0
            for p, name in starts:
                if p > pos:
                    break
                fn, fstart = name, p
            fend = min([p for p, _ in starts if p > pos] or [len(code)])
            ln = code.count("\n", 0, pos) + 1
            body = "\n".join(lines[code.count("\n", 0, fstart):code.count("\n", 0, fend)])
            return fn, body, ln

        def report(pos, what):
            nonlocal n
            fn, body, ln = where(pos)
            if "libc:" in lines[ln - 1] or "libc:" in body:
                return
            print("FAIL %s:%d: %s in %s: %s" % (h, ln, what, fn, lines[ln - 1].strip()))
            n += 1

        for m in CALL.finditer(code):
            fn, _, _ = where(m.start())
            if h == "kvx.h" and fn in ALLOWED_FUNCS:
                continue
            report(m.start(), "%s() bypasses the desc allocator" % m.group(1))
        for m in NULL_AL.finditer(code):
            report(m.start(), "%s(..., NULL) allocates from libc" % (m.group(1) or m.group(2)))
        for m in BUF_LITERAL.finditer(code):
            report(m.start(), "a kvx__buf literal leaves its allocator NULL (use KVX__BUF)")
        for m in BUF_DECL.finditer(code):
            for name in re.findall(r"\w+", m.group(1)):
                z = re.compile(r"memset\s*\(\s*&%s\s*,\s*0\s*,\s*sizeof\s*\(?\s*%s\b"
                               % (name, name))
                fn, body, _ = where(m.start())
                for zm in z.finditer(code, m.end()):
                    if where(zm.start())[0] != fn:
                        break
                    report(zm.start(), "kvx__buf %s zeroed by memset leaves its allocator "
                           "NULL (use kvx__buf_init)" % name)
        if not n:
            print("ok %s: every allocation goes through the desc allocator" % h)
        bad += n
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
