#!/usr/bin/env bash
# Runs every test program in a build directory: tests/run_tests.sh BUILD_DIR
# Exit 77 from a test = skipped (with its reason printed). Prints one line
# per test as it ends and a summary; exits non-zero when any test failed.
# KVX_TEST_JOBS (default 2) tests run at a time, the longest known ones
# (allocation-failure sweeps, mostly waiting) first; every test keeps to its
# own scratch directories and ports, and passes on a loaded machine.
set -u
B=${1:-build}
LIMIT=${KVX_TEST_TIMEOUT:-300}
J=${KVX_TEST_JOBS:-2}
pass=0; fail=0; skip=0; failed=()

one() { # runs test $1; its result goes to $B/NAME.res: kind, line, details
  local t=$1 name log start rc secs summary kind line
  name=$(basename "$t")
  log="$B/$name.log"
  start=$(date +%s.%N)
  timeout -k 5 "$LIMIT" "$t" >"$log" 2>&1
  rc=$?
  secs=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}')
  summary=$(grep -E "^$name: [0-9]+ passed" "$log" | tail -1)
  if [ $rc -eq 77 ]; then
    kind=skip; line="  skip  $name ($secs s): $(grep -m1 '^SKIP' "$log")"
  elif [ $rc -eq 0 ] && [ -n "$summary" ]; then
    kind=pass; line="  ok    $name ($secs s): ${summary#*: }"
  else
    kind=fail; line="  FAIL  $name ($secs s, exit $rc${summary:+, ${summary#*: }})"
  fi
  { echo "$kind"; echo "$line"
    if [ $kind = fail ]; then
      grep -E "FAIL|ERROR: |runtime error|WARNING: ThreadSanitizer|SUMMARY" "$log" | head -20 | sed 's/^/        /'
      echo "        (full log: $log)"
    fi; } > "$B/$name.res.tmp"
  mv "$B/$name.res.tmp" "$B/$name.res"
  echo "$line"
}

tests=()
for t in "$B"/test_*alloc_fail "$B"/test_*; do
  [ -x "$t" ] && [ -f "$t" ] || continue
  case " ${tests[*]-} " in *" $t "*) continue;; esac
  tests+=("$t")
done
for t in "${tests[@]}"; do rm -f "$B/$(basename "$t").res"; done
for t in "${tests[@]}"; do
  one "$t" &
  while [ "$(jobs -pr | wc -l)" -ge "$J" ]; do wait -n; done
done
wait
for name in $(for t in "${tests[@]}"; do basename "$t"; done | sort); do
  res="$B/$name.res"
  if [ ! -f "$res" ]; then fail=$((fail+1)); failed+=("$name"); echo "  FAIL  $name (no result)"; continue; fi
  case $(head -1 "$res") in
    pass) pass=$((pass+1));;
    skip) skip=$((skip+1));;
    *) fail=$((fail+1)); failed+=("$name"); echo "FAILED:"; tail -n +2 "$res";;
  esac
done
echo "$B: $pass passed, $fail failed, $skip skipped"
[ $fail -eq 0 ]
