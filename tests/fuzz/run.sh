#!/usr/bin/env bash
# Builds every tests/fuzz/fuzz_*.c with libFuzzer + ASan/UBSan and runs it
# for KVX_FUZZ_SECONDS (default 15) each. Without clang's libFuzzer the
# same targets run under tests/fuzz/driver.c over random inputs instead.
set -u
cd "$(dirname "$0")/../.."
S=${KVX_FUZZ_SECONDS:-15}
mkdir -p build/fuzz
pass=0; fail=0
targets=$(ls tests/fuzz/fuzz_*.c 2>/dev/null)
[ -n "$targets" ] || { echo "SKIP: no fuzz targets"; exit 77; }
use_lf=0
echo 'int LLVMFuzzerTestOneInput(const unsigned char*d,unsigned long n){(void)d;(void)n;return 0;}' > build/fuzz/probe.c
clang -fsanitize=fuzzer build/fuzz/probe.c -o build/fuzz/probe >/dev/null 2>&1 && use_lf=1
# One target: build, run, and its result line (ok / FAIL and the logs) in
# build/fuzz/NAME.result. Targets run KVX_JOBS (2) at a time: each is one
# CPU-bound process, so the cores are used and each still gets S seconds.
one() {
  local src=$1 name rc runs
  name=$(basename "$src" .c)
  corpus=build/fuzz/$name.corpus; mkdir -p "$corpus"
  [ -d "tests/fuzz/corpus/$name" ] && cp -n tests/fuzz/corpus/$name/* "$corpus"/ 2>/dev/null
  if [ $use_lf = 1 ]; then
    clang -std=c11 -O1 -g -I. -fsanitize=fuzzer,address,undefined "$src" -o build/fuzz/$name -lpthread -lm -ldl 2>build/fuzz/$name.build.log &&
      build/fuzz/$name -max_total_time="$S" -max_len=65536 -timeout=10 -rss_limit_mb=2048 "$corpus" >build/fuzz/$name.log 2>&1
  else
    cc -std=c11 -O1 -g -I. -fsanitize=address,undefined -DKVX_FUZZ_DRIVER "$src" tests/fuzz/driver.c -o build/fuzz/$name -lpthread -lm -ldl 2>build/fuzz/$name.build.log &&
      build/fuzz/$name "$S" >build/fuzz/$name.log 2>&1
  fi
  rc=$?
  runs=$(grep -oE "#[0-9]+ +DONE|Done [0-9]+ runs|[0-9]+ inputs" build/fuzz/$name.log | tail -1)
  if [ $rc -eq 0 ]; then echo "  ok    $name (${S}s, ${runs:-ran})"
  else echo "  FAIL  $name (exit $rc)"; tail -n 30 build/fuzz/$name.log build/fuzz/$name.build.log | sed 's/^/        /'; fi > build/fuzz/$name.result
}
for src in $targets; do
  rm -f "build/fuzz/$(basename "$src" .c).result"
  one "$src" &
  while [ "$(jobs -pr | wc -l)" -ge "${KVX_JOBS:-2}" ]; do wait -n; done
done
wait
for src in $targets; do
  r=build/fuzz/$(basename "$src" .c).result
  if [ -f "$r" ] && head -1 "$r" | grep -q '^  ok '; then pass=$((pass+1)); else fail=$((fail+1)); fi
  if [ -f "$r" ]; then cat "$r"; else echo "  FAIL  $(basename "$src" .c) (no result)"; fi
done
echo "fuzz: $pass passed, $fail failed"
[ $fail -eq 0 ]
