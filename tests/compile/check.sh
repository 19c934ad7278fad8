#!/usr/bin/env bash
# Compile checks: every kvx header alone and all together, declarations and
# implementation, as C11 and C++11, on gcc and clang; KVX_STATIC in two
# translation units linked together; the implementation included twice;
# KVX_WITH_* variants where the toolkit is present; then examples.sh (the
# doc examples compile).
set -u
cd "$(dirname "$0")/../.."
W="-Wall -Wextra -Wpedantic -Werror"
T=$(mktemp -d /tmp/kvx_compile_XXXXXX)
trap 'rm -rf "$T"' EXIT
pass=0; fail=0
ok()  { pass=$((pass+1)); }
bad() { fail=$((fail+1)); echo "FAIL compile: $1"; sed 's/^/    /' "$T/err" | head -20; }
run() { local what=$1; shift; if "$@" >"$T/err" 2>&1; then ok; else bad "$what: $*"; fi; }

compilers_c="gcc"; compilers_cxx="g++"
command -v clang >/dev/null && compilers_c="$compilers_c clang"
command -v clang++ >/dev/null && compilers_cxx="$compilers_cxx clang++"
headers=$(ls kvx*.h)
variants=("")
[ -f kvx_rdma.h ] && [ -f /usr/include/infiniband/verbs.h ] && variants+=("-DKVX_WITH_RDMA")
if [ -f kvx_cuda.h ]; then
  for inc in /usr/local/cuda/include /usr/include; do
    [ -f "$inc/cuda.h" ] && { variants+=("-DKVX_WITH_CUDA -I$inc"); break; }
  done
fi

# Each header's checks, and the all-together checks, run as one job each,
# KVX_JOBS (2) at a time, in their own scratch directory; a job's counts
# and failures are gathered afterwards.
job() { # job NAME: the counts go to $T/NAME.cnt, the failures to $T/NAME.out
  local name=$1; shift
  ( T="$T/$name"; mkdir -p "$T"; pass=0; fail=0; "$@" > "$T.out" 2>&1; echo "$pass $fail" > "$T.cnt" ) &
  while [ "$(jobs -pr | wc -l)" -ge "${KVX_JOBS:-2}" ]; do wait -n; done
}
header_checks() {
  local h=$1 v cc cxx
  printf '#include "%s"\n' "$h" > "$T/decl.c"
  printf '#define KVX_IMPLEMENTATION\n#include "%s"\n#include "%s"\nint main(void){return 0;}\n' "$h" "$h" > "$T/impl.c"
  printf '#include "%s"\n#include "%s"\nint main(void){return 0;}\n' "$h" "$h" > "$T/twice.c"
  cp "$T/decl.c" "$T/decl.cpp"; cp "$T/impl.c" "$T/impl.cpp"
  for v in "${variants[@]}"; do
    for cc in $compilers_c; do
      run "$h decl $cc $v" $cc -std=c11 $W $v -I. -fsyntax-only "$T/decl.c"
      run "$h impl $cc $v" $cc -std=c11 $W $v -I. "$T/impl.c" -o "$T/a.out" -lpthread -ldl
      run "$h impl -DKVX_IMPLEMENTATION $cc $v" $cc -std=c11 $W $v -DKVX_IMPLEMENTATION -I. "$T/twice.c" -o "$T/a.out" -lpthread -ldl
    done
    for cxx in $compilers_cxx; do
      run "$h decl $cxx $v" $cxx -std=c++11 $W $v -I. -fsyntax-only "$T/decl.cpp"
      run "$h impl $cxx $v" $cxx -std=c++11 $W $v -I. "$T/impl.cpp" -o "$T/a.out" -lpthread -ldl
    done
  done
}
together_checks() {
  local h v cc cxx
  { for h in $headers; do printf '#include "%s"\n' "$h"; done; } > "$T/all.h"
  printf '#define KVX_IMPLEMENTATION\n#include "all.h"\nint main(void){return kvx_result_str(KVX_OK)[0] != 75;}\n' > "$T/all.c"
  cp "$T/all.c" "$T/all.cpp"
  printf '#define KVX_STATIC\n#define KVX_IMPLEMENTATION\n#include "all.h"\nconst char *tu1(void){return kvx_poll_str(KVX_POLL_SUCCESS);}\n' > "$T/tu1.c"
  printf '#define KVX_STATIC\n#define KVX_IMPLEMENTATION\n#include "all.h"\nconst char *tu1(void);\nint main(void){return tu1()[0] != kvx_poll_str(KVX_POLL_SUCCESS)[0];}\n' > "$T/tu2.c"
  for v in "${variants[@]}"; do
    for cc in $compilers_c; do
      run "all together $cc $v" $cc -std=c11 $W $v -I. -I"$T" "$T/all.c" -o "$T/a.out" -lpthread -ldl
      run "KVX_STATIC two TUs $cc $v" $cc -std=c11 $W $v -I. -I"$T" "$T/tu1.c" "$T/tu2.c" -o "$T/b.out" -lpthread -ldl
      run "KVX_STATIC runs $cc $v" "$T/b.out"
    done
    for cxx in $compilers_cxx; do
      run "all together $cxx $v" $cxx -std=c++11 $W $v -I. -I"$T" "$T/all.cpp" -o "$T/a.out" -lpthread -ldl
    done
  done
}
job together together_checks
for h in $headers; do job "$h" header_checks "$h"; done
wait
for c in "$T"/*.cnt; do
  read -r p f < "$c"; pass=$((pass + p)); fail=$((fail + f)); cat "${c%.cnt}.out"
done
echo "compile checks: $pass passed, $fail failed"
# The doc examples (headers' EXAMPLE sections, README's c blocks) compile.
bash tests/compile/examples.sh || fail=$((fail+1))
[ "$fail" -eq 0 ]
