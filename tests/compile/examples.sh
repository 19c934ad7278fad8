#!/usr/bin/env bash
# The doc examples compile: every EXAMPLE section in the top doc comment of
# each kvx*.h and every ```c block of README.md is extracted, wrapped into a
# translation unit and compiled as C11 with -Wall -Wextra -Wpedantic -Werror
# on gcc and clang (-fsyntax-only, with KVX_IMPLEMENTATION: they need not run).
#
# How an example is written so that this finds it:
#   header: a line "   EXAMPLE ..." (three spaces) in the top comment starts
#           it; every following line is code (indented, the indent is kept)
#           until the next line indented three spaces or less (the next
#           heading) or the end of the comment. Use // comments in it.
#   README: a ```c fence.
#   Names the example uses but does not declare are declared on lines
#     // given: kvx_layout layout; int32_t *pages; void die(const char *);
#   (README: /* given: ... */); what follows "given:" is put at file scope
#   verbatim, before the function that holds the example's code. A block
#   with a preprocessor line (#define, #include) is a whole file instead.
# A header example includes only its own header; a README block all of them.
# Every header must have at least one example, and a DATA PATH section whose
# kvx_ names exist in the code. Run by check.sh (make test).
set -u
cd "$(dirname "$0")/../.."
W="-Wall -Wextra -Wpedantic -Werror -Wno-unused-variable -Wno-unused-but-set-variable -Wno-unused-parameter"
T=$(mktemp -d /tmp/kvx_examples_XXXXXX)
trap 'rm -rf "$T"' EXIT
compilers="gcc"
command -v clang >/dev/null && compilers="$compilers clang"
headers=$(ls kvx*.h)

# Extract: one file per example, $T/ex<N>.{body,given,origin,inc}.
awk -v T="$T" '
function start(line) {
    n++; f = T "/ex" n
    printf "%s:%d\n", FILENAME, line > (f ".origin"); close(f ".origin")
    printf "" > (f ".body"); printf "" > (f ".given")
    if (FILENAME == "README.md") printf "ALL\n" > (f ".inc")
    else printf "%s\n", FILENAME > (f ".inc")
    close(f ".inc")
}
function take(s,   g) {
    if (match(s, /^[ \t]*(\/\/|\/\*)[ \t]*given:/)) {
        g = substr(s, RLENGTH + 1); sub(/\*\/[ \t]*$/, "", g)
        print g >> (f ".given"); close(f ".given")
        s = ""  # keeps the line numbers of the body
    }
    print s >> (f ".body"); close(f ".body")
}
FNR == 1 { incomment = (FILENAME != "README.md"); inex = 0; infence = 0 }
FILENAME == "README.md" {
    if (infence) { if ($0 ~ /^```/) infence = 0; else take($0); next }
    if ($0 ~ /^```c[ \t]*$/) { infence = 1; start(FNR + 1) }
    next
}
incomment {
    if (index($0, "*/")) { incomment = 0; inex = 0; next }
    if ($0 ~ /^   EXAMPLE/) { inex = 1; start(FNR + 1); next }
    if (inex && ($0 ~ /^[^ ]/ || $0 ~ /^ [^ ]/ || $0 ~ /^  [^ ]/ || $0 ~ /^   [^ ]/)) inex = 0
    if (inex) take($0)
}
END { print n + 0 > (T "/count") }
' $headers README.md

count=$(cat "$T/count")
pass=0; fail=0
for i in $(seq 1 "$count"); do
  ex="$T/ex$i"; origin=$(cat "$ex.origin"); inc=$(cat "$ex.inc")
  if grep -q '^[[:space:]]*#' "$ex.body"; then
    { cat "$ex.given"; cat "$ex.body"; echo "int main(void) { return 0; }"; } > "$ex.c"
  else
    {
      echo "#define KVX_IMPLEMENTATION"
      if [ "$inc" = ALL ]; then for h in $headers; do echo "#include \"$h\""; done
      else echo "#include \"$inc\""; fi
      echo "#include <stdio.h>"; echo "#include <stdlib.h>"; echo "#include <string.h>"
      echo "#line 1 \"$origin (given)\""
      cat "$ex.given"
      echo "void kvx_example(void);"
      echo "void kvx_example(void) {"
      echo "#line ${origin##*:} \"${origin%:*}\""
      cat "$ex.body"
      echo "}"
      echo "int main(void) { kvx_example(); return 0; }"
    } > "$ex.c"
  fi
  lines=$(wc -l < "$ex.body")
  for cc in $compilers; do
    if $cc -std=c11 $W -I. -fsyntax-only "$ex.c" > "$ex.err" 2>&1; then
      pass=$((pass+1)); echo "ok   example $origin ($lines lines) $cc"
    else
      fail=$((fail+1)); echo "FAIL example $origin ($lines lines) $cc"
      sed 's/^/    /' "$ex.err" | head -20
    fi
  done
done
# Every header has a DATA PATH section, and every kvx_ function it names
# exists in the code of the headers (so the paragraph cannot drift silently).
for h in $headers; do
  sect=$(awk 'index($0, "*/") { exit } /^   DATA PATH/ { on = 1; print; next }
              on && ($0 ~ /^[^ ]/ || $0 ~ /^ [^ ]/ || $0 ~ /^  [^ ]/ || $0 ~ /^   [^ ]/) { on = 0 }
              on { print }' "$h")
  if [ -z "$sect" ]; then echo "FAIL: $h has no DATA PATH section"; fail=$((fail+1)); continue; fi
  for name in $(printf '%s\n' "$sect" | grep -o 'kvx_[a-z0-9_]*[a-z0-9]\(\.h\)\?' | grep -v '\.h$' | sort -u); do
    if ! awk 'FNR == 1 { p = 0 } p { print } index($0, "*/") { p = 1 }' $headers | grep -qw "$name"; then
      echo "FAIL: $h's DATA PATH names $name, which no header defines or uses"; fail=$((fail+1))
    fi
  done
done
# Every doc block follows one skeleton (README "Vendoring"): after the title
# line and summary, the headings CONTENTS, DO THIS, DATA PATH, EXAMPLE,
# COMPILE-TIME MACROS, ENVIRONMENT, THREAD SAFETY in this order, then the
# header's own sections, LICENSE last; and its DO THIS line "(includes ...)"
# names exactly the kvx headers it includes, directly or through another.
skeleton="CONTENTS|DO THIS|DATA PATH|EXAMPLE|COMPILE-TIME MACROS|ENVIRONMENT|THREAD SAFETY"
skeleton_pending=""   # headers not yet converted (none left)
kvx_includes() {  # the kvx headers $1 includes, transitively, sorted
  local todo=$1 seen="" x y
  while [ -n "$todo" ]; do
    x=${todo%% *}; [ "$todo" = "$x" ] && todo="" || todo=${todo#* }
    for y in $(awk 'p && /^#[ \t]*include[ \t]*"kvx[a-z_]*\.h"/ { split($0, q, "\""); print q[2] }
                    index($0, "*/") { p = 1 }' "$x"); do
      case " $seen " in *" $y "*) ;; *) seen="$seen $y"; todo="${todo:+$todo }$y" ;; esac
    done
  done
  printf '%s\n' $seen | sort -u | tr '\n' ' '
}
for h in $headers; do
  case " $skeleton_pending " in *" $h "*) continue ;; esac
  got=$(awk 'index($0, "*/") { exit } /^   [A-Z][A-Z-]+( |:|$)/ { sub(/^   /, ""); print }' "$h" |
        awk -v want="$skeleton" 'BEGIN { n = split(want, w, "|") }
             NR <= n && index($0, w[NR]) != 1 { printf "heading %d is \"%s\", not %s; ", NR, substr($0, 1, 30), w[NR] }
             { last = $0 } END { if (NR < n) printf "only %d headings; ", NR; if (last !~ /^LICENSE/) printf "LICENSE is not last; " }')
  [ -z "$got" ] || { echo "FAIL: $h's doc block: $got"; fail=$((fail+1)); }
  if [ "$h" != kvx.h ]; then
    said=$(awk 'index($0, "*/") { exit } /#include "/ && /\(includes / { print; exit }' "$h" |
           sed 's/.*(includes //' | grep -o 'kvx[a-z_]*\.h' | sort -u | tr '\n' ' ')
    real=$(kvx_includes "$h")
    [ "$said" = "$real" ] || { echo "FAIL: $h's DO THIS says it includes '$said'; it includes '$real'"; fail=$((fail+1)); }
  fi
done
# Every header has an example, and none is empty.
for h in $headers; do
  grep -qx "$h" "$T"/ex*.inc 2>/dev/null || { echo "FAIL: $h has no EXAMPLE in its top comment"; fail=$((fail+1)); }
done
for i in $(seq 1 "$count"); do
  grep -q '[^[:space:]]' "$T/ex$i.body" || { echo "FAIL example $(cat "$T/ex$i.origin"): no code"; fail=$((fail+1)); }
done
echo "doc examples: $count found; $pass passed, $fail failed"
[ "$fail" -eq 0 ]
