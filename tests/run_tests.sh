#!/usr/bin/env bash
# Runs every test program in a build directory: tests/run_tests.sh BUILD_DIR
# Exit 77 from a test = skipped (with its reason printed). Prints one line
# per test and a summary; exits non-zero when any test failed.
set -u
B=${1:-build}
LIMIT=${KVX_TEST_TIMEOUT:-300}
pass=0; fail=0; skip=0; failed=()
for t in "$B"/test_*; do
  [ -x "$t" ] || continue
  name=$(basename "$t")
  log="$B/$name.log"
  start=$(date +%s.%N)
  timeout -k 5 "$LIMIT" "$t" >"$log" 2>&1
  rc=$?
  secs=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}')
  summary=$(grep -E "^$name: [0-9]+ passed" "$log" | tail -1)
  if [ $rc -eq 77 ]; then
    skip=$((skip+1)); echo "  skip  $name ($secs s): $(grep -m1 '^SKIP' "$log")"
  elif [ $rc -eq 0 ] && [ -n "$summary" ]; then
    pass=$((pass+1)); echo "  ok    $name ($secs s): ${summary#*: }"
  else
    fail=$((fail+1)); failed+=("$name")
    echo "  FAIL  $name ($secs s, exit $rc${summary:+, ${summary#*: }})"
    grep -E "FAIL|ERROR: |runtime error|WARNING: ThreadSanitizer|SUMMARY" "$log" | head -20 | sed 's/^/        /'
    echo "        (full log: $log)"
  fi
done
echo "$B: $pass passed, $fail failed, $skip skipped"
[ $fail -eq 0 ]
