#!/usr/bin/env python3
"""The settings cross-check (issue 12): every environment variable a header
reads is documented, and every documented one is read.

    python3 tests/unit/settings_docs.py [REPO_ROOT]

Rules (see tests/README.md):

- A variable is READ when it starts a settings-table row
  (KVX__SET_INT("KVX_NAME", ...), kvx.h's kvx__settings_apply reads them),
  or when a string literal "KVX_NAME" is the first argument of a reader: getenv/secure_getenv, or any function that passes its own
  (non-literal) first argument on to a reader - found by a fixpoint over the
  seven headers, so a new wrapper (kvx_setting_int, kvx__rdma_env_int...) is
  followed without naming it here. A reader called with anything else (a
  name glued by a macro, "KVX_" #x) outside such a wrapper is a failure: the
  check could not tell which variable it reads.
- A variable is DOCUMENTED IN A HEADER when it starts an entry line (five
  spaces, then the name, or names joined by ',' '/' 'and') of a section of
  the header's top doc block whose heading (three spaces, capitals) has the
  word ENVIRONMENT in it.
- A variable is DOCUMENTED IN THE README when it is in the first column of
  a README table row.
- Every read variable is documented in the header that reads it or in a
  header that header includes (kvx.h for the core ones), and in the README.
  Every variable documented in a header is read by that header or one it
  includes; every README one by some header.
- A COMPILE-TIME MACROS entry of a doc block names a macro the code uses.

Prints "ok ..." per passed check and "FAIL file: NAME ..." per mismatch;
exits 1 on any mismatch.
"""
import glob
import os
import re
import sys

NAME = r"KVX_[A-Z0-9_]*[A-Z0-9](?![A-Za-z0-9_*])"
HEADING = re.compile(r"^   [A-Z][A-Z-]+( |$)")
ENTRY = re.compile(r"^     (" + NAME + r"(?:\s*(?:,|/|\band\b)\s*" + NAME + r")*)")

ok = 0
bad = 0


def check(cond, msg):
    global ok, bad
    if cond:
        ok += 1
        print("ok   " + msg)
    else:
        bad += 1
        print("FAIL " + msg)


def strip_comments(src):
    """The code with comments blanked (newlines kept); strings kept."""
    out = []
    i, n = 0, len(src)
    while i < n:
        c = src[i]
        if c == '"' or c == "'":
            j = i + 1
            while j < n and src[j] != c:
                j += 2 if src[j] == "\\" else 1
            out.append(src[i:j + 1])
            i = j + 1
        elif src.startswith("/*", i):
            j = src.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append(re.sub(r"[^\n]", " ", src[i:j]))
            i = j
        elif src.startswith("//", i):
            j = src.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        else:
            out.append(c)
            i += 1
    return "".join(out)


def top_functions(code):
    """[(start, end, name)] of every top-level brace block that follows a
    parenthesised list (a function body); name is the identifier before it."""
    res = []
    depth = 0
    last_stop = 0
    i, n = 0, len(code)
    while i < n:
        c = code[i]
        if c in "\"'":
            j = i + 1
            while j < n and code[j] != c:
                j += 2 if code[j] == "\\" else 1
            i = j + 1
            continue
        if c == "#" and (i == 0 or code[i - 1] == "\n") and depth == 0:
            while i < n and code[i] != "\n":      # a preprocessor line
                if code[i] == "\\" and i + 1 < n and code[i + 1] == "\n":
                    i += 1
                i += 1
            last_stop = i
            continue
        if c == "{" and depth == 0 and re.search(r'extern\s*"C"\s*$', code[last_stop:i]):
            last_stop = i + 1                     # extern "C" { is no block
        elif c == "{":
            if depth == 0:
                head = code[last_stop:i]
                m = re.findall(r"\b([A-Za-z_]\w*)\s*\(", head)
                res_name = m[0] if m and head.rstrip().endswith(")") else None
                res.append([i, None, res_name, head])
            depth += 1
        elif c == "}" and depth == 0:
            last_stop = i + 1                     # the end of extern "C"
        elif c == "}":
            depth -= 1
            if depth == 0:
                res[-1][1] = i
                last_stop = i + 1
        elif c == ";" and depth == 0:
            last_stop = i + 1
        i += 1
    return [(s, e, f, hd) for s, e, f, hd in res if f and e is not None]


def enclosing(funcs, pos, head=False):
    for s, e, f, hd in funcs:
        if s <= pos <= e:
            return hd if head else f
    return None


def passes_param(funcs, pos, arg):
    """arg is a parameter of the function around pos (a wrapper)."""
    hd = enclosing(funcs, pos, True)
    return hd is not None and re.search(r"\b" + arg + r"\s*[,)]", hd) is not None


def line_of(src, pos):
    return src.count("\n", 0, pos) + 1


def doc_block(src):
    end = src.find("*/")
    return src[:end] if src.startswith("/*") and end > 0 else ""


def sections(doc, word):
    """Lines of every doc-block section whose heading contains word."""
    lines = doc.split("\n")
    out, inside = [], False
    for ln in lines:
        if HEADING.match(ln):
            inside = word in ln
            continue
        if inside:
            out.append(ln)
    return out


def entries(lines):
    names = []
    for ln in lines:
        m = ENTRY.match(ln)
        if m:
            names += re.findall(NAME, m.group(1))
    return names


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else "."
    paths = sorted(glob.glob(os.path.join(root, "kvx*.h")))
    if len(paths) < 7:
        print("FAIL fewer than seven kvx*.h headers under %s" % os.path.abspath(root))
        return 1
    src, code, funcs = {}, {}, {}
    for p in paths:
        h = os.path.basename(p)
        with open(p, encoding="utf-8") as f:
            src[h] = f.read()
        code[h] = strip_comments(src[h])
        funcs[h] = top_functions(code[h])

    # Includes (transitively) between the headers.
    direct = {h: set(re.findall(r'^\s*#\s*include\s+"(kvx\w*\.h)"', code[h], re.M)) & set(src)
              for h in src}
    incl = {}
    for h in src:
        seen, todo = set(), [h]
        while todo:
            x = todo.pop()
            if x in seen:
                continue
            seen.add(x)
            todo += list(direct[x])
        incl[h] = seen

    # Readers: a fixpoint from getenv.
    call = re.compile(r"\b([A-Za-z_]\w*)\s*\((?=\s*([^,)]*))")
    param = re.compile(r"(const\s+)?[A-Za-z_]\w*(\s+|\s*\*+\s*)[A-Za-z_]\w*")
    readers = {"getenv", "secure_getenv"}
    changed = True
    while changed:
        changed = False
        for h in src:
            for m in call.finditer(code[h]):
                if m.group(1) not in readers:
                    continue
                arg = m.group(2).strip()
                f = enclosing(funcs[h], m.start())
                if (re.fullmatch(r"[A-Za-z_]\w*", arg) and f and f not in readers
                        and passes_param(funcs[h], m.start(), arg)):
                    readers.add(f)
                    changed = True

    read = {}          # name -> set of headers reading it
    for h in src:
        for m in call.finditer(code[h]):
            if m.group(1) not in readers:
                continue
            arg = m.group(2).strip()
            lit = re.fullmatch(r'"(KVX_[A-Z0-9_]+)"', arg)
            if lit:
                read.setdefault(lit.group(1), set()).add(h)
            elif re.fullmatch(r"[A-Za-z_]\w*", arg) and passes_param(funcs[h], m.start(), arg):
                pass    # a wrapper passing its parameter on
            elif param.fullmatch(arg):
                pass    # the reader's own declaration
            elif enclosing(funcs[h], m.start()) == "kvx__settings_apply":
                pass    # the table walker: its rows are read below
            elif not re.fullmatch(r'"[^"]*"', arg) or arg.startswith('"KVX_'):
                check(False, "%s:%d: %s(%s ...) reads a variable this check cannot name "
                      "(build the name as one string literal)"
                      % (h, line_of(src[h], m.start()), m.group(1), arg))
    # Settings-table rows: KVX__SET_INT("KVX_NAME", ...) and its siblings.
    for h in src:
        for m in re.finditer(r'\bKVX__SET_[A-Z0-9]+\s*\(\s*"(KVX_[A-Z0-9_]+)"', code[h]):
            read.setdefault(m.group(1), set()).add(h)
    check(len(read) > 0, "found the variables the headers read: %d through %s"
          % (len(read), ", ".join(sorted(readers))))

    docs = {h: entries(sections(doc_block(src[h]), "ENVIRONMENT")) for h in src}

    readme = []
    rpath = os.path.join(root, "README.md")
    with open(rpath, encoding="utf-8") as f:
        for ln in f:
            m = re.match(r"^\|([^|]*)\|", ln)
            if m:
                readme += re.findall(NAME, m.group(1))
    readme = set(readme)

    for name in sorted(read):
        for h in sorted(read[name]):
            homes = [x for x in sorted(incl[h]) if name in docs[x]]
            check(bool(homes), "%s: %s is read here and documented in the ENVIRONMENT section "
                  "of %s" % (h, name, ", ".join(homes) if homes else
                             "none of " + ", ".join(sorted(incl[h]))))
        check(name in readme, "README.md: %s (read by %s) is in a settings table"
              % (name, ", ".join(sorted(read[name]))))

    for h in sorted(docs):
        for name in sorted(set(docs[h])):
            by = [x for x in sorted(read.get(name, ())) if x in incl[h]]
            check(bool(by), "%s: %s is documented in the ENVIRONMENT section and read by %s"
                  % (h, name, ", ".join(by) if by else
                     "nothing (nor by any header it includes: "
                     + ", ".join(sorted(incl[h])) + ")"))
    for name in sorted(readme):
        check(name in read, "README.md: %s in a settings table is read by %s"
              % (name, ", ".join(sorted(read[name])) if name in read else "no header"))

    # Compile-time macros the doc blocks name are used by the code.
    allcode = "\n".join(code.values())
    for h in sorted(src):
        for name in sorted(set(entries(sections(doc_block(src[h]), "COMPILE-TIME MACROS")))):
            used = re.search(r"\b" + name + r"\b", allcode) is not None
            check(used, "%s: compile-time macro %s is used by the code" % (h, name))

    # Every overridable default (#ifndef KVX_X / #define KVX_X) is in the
    # COMPILE-TIME MACROS section of its header's doc block.
    for h in sorted(src):
        documented = set(entries(sections(doc_block(src[h]), "COMPILE-TIME MACROS")))
        for m in re.finditer(r"^[ \t]*#[ \t]*ifndef[ \t]+(KVX_\w+)[ \t]*\n[ \t]*#[ \t]*(?:if|define)",
                             code[h], re.M):
            name = m.group(1)
            if name.endswith("_H_INCLUDED") or name.endswith("_H"):
                continue
            check(name in documented, "%s:%d: compile-time macro %s (#ifndef: the user may set "
                  "it) is in the COMPILE-TIME MACROS section"
                  % (h, line_of(src[h], m.start()), name))

    print("settings_docs: %d passed, %d failed" % (ok, bad))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
