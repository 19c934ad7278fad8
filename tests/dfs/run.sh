#!/usr/bin/env bash
# make test-dfs: the distributed-filesystem test. tests/dfs/run.sh [BUILD_DIR]
#
# Under ONE private GlusterFS volume mounted twice (tests/dfs/gluster.sh):
#   1. the reference prefill (BUILD_DIR/kvx_prefill) through mount A and the
#      reference decode (BUILD_DIR/kvx_decode) through mount B, 64 requests
#      of up to 1024 tokens of Llama-3.1-8B KV, every byte and aux row
#      verified by the decode;
#   2. every BUILD_DIR/test_dfs_* program, with KVX_DFS_A, KVX_DFS_B and
#      KVX_DFS_BRICK set.
# Prints what ran, passed, failed and skipped. Exits 0 when all passed, 1
# when any failed, 77 (with a line "SKIP: ...") when GlusterFS cannot run
# here. Each step is bounded by KVX_DFS_STEP_TIMEOUT seconds (default 240).
set -u
cd "$(dirname "$0")/../.."
B=${1:-build}
LIMIT=${KVX_DFS_STEP_TIMEOUT:-240}

if [ -z "${KVX_DFS_A:-}" ] || [ -z "${KVX_DFS_B:-}" ]; then
  for p in "$B/kvx_prefill" "$B/kvx_decode"; do
    [ -x "$p" ] || { echo "test-dfs: $p is not built (make examples tests)"; exit 1; }
  done
  out=$(mktemp /tmp/kvx_dfs_run.XXXXXX)
  bash tests/dfs/gluster.sh run bash "$0" "$B" 2>&1 | tee "$out"
  rc=${PIPESTATUS[0]}
  if [ "$rc" -eq 77 ]; then
    echo "test-dfs: SKIPPED: $(grep -m1 '^SKIP' "$out")"
  fi
  rm -f "$out"
  exit "$rc"
fi

# ---- inside the volume ----
pass=0; fail=0; skip=0
ok()   { pass=$((pass+1)); echo "  ok    $*"; }
bad()  { fail=$((fail+1)); echo "  FAIL  $*"; }
echo "test-dfs: GlusterFS volume ${KVX_DFS_VOLUME:-?}, mount A $KVX_DFS_A, mount B $KVX_DFS_B"

# 1. reference prefill on A, reference decode on B
n=64
d=kvx_dfs_pd_$$
logp="$B/dfs_prefill.log"; logd="$B/dfs_decode.log"
args=(--requests $n --min-tokens 16 --max-tokens 1024 --inflight 4 --quiet)
start=$(date +%s.%N)
KVX_FILE_TIMEOUT=120 timeout -k 5 "$LIMIT" "$B/kvx_prefill" --dir "$KVX_DFS_A/$d" "${args[@]}" >"$logp" 2>&1 &
pp=$!
KVX_FILE_TIMEOUT=120 timeout -k 5 "$LIMIT" "$B/kvx_decode" --dir "$KVX_DFS_B/$d" "${args[@]}" >"$logd" 2>&1
drc=$?
wait $pp; prc=$?
secs=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}')
summary=$(grep -E '^decode: [0-9]+ requests, ' "$logd" | tail -1)
if [ $prc -eq 0 ] && [ $drc -eq 0 ] && echo "$summary" | grep -q "^decode: $n requests, $n verified byte for byte, 0 failed, 0 corrupt"; then
  ok "kvx_prefill on A -> kvx_decode on B ($secs s): ${summary#decode: }"
else
  bad "kvx_prefill on A (exit $prc) -> kvx_decode on B (exit $drc) ($secs s): ${summary:-no summary}"
  grep -v '^decode: [0-9]*/' "$logp" "$logd" | tail -20 | sed 's/^/        /'
fi
rm -rf "${KVX_DFS_A:?}/$d"

# 2. the test programs
found=0
for t in "$B"/test_dfs_*; do
  [ -x "$t" ] || continue
  case "$t" in *.log) continue ;; esac
  found=1
  name=$(basename "$t")
  log="$B/$name.dfs.log"
  start=$(date +%s.%N)
  timeout -k 5 "$LIMIT" "$t" >"$log" 2>&1
  rc=$?
  secs=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}')
  summary=$(grep -E "^$name: [0-9]+ passed" "$log" | tail -1)
  if [ $rc -eq 77 ]; then
    skip=$((skip+1)); echo "  skip  $name ($secs s): $(grep -m1 '^SKIP' "$log")"
  elif [ $rc -eq 0 ] && [ -n "$summary" ]; then
    ok "$name ($secs s): ${summary#*: }"
  else
    bad "$name ($secs s, exit $rc${summary:+, ${summary#*: }})"
    grep -E "^FAIL|ERROR: |runtime error|WARNING: ThreadSanitizer|SUMMARY" "$log" | head -20 | sed 's/^/        /'
    echo "        (full log: $log)"
  fi
done
[ $found -eq 1 ] || echo "  (no $B/test_dfs_* programs built)"
echo "test-dfs: $pass passed, $fail failed, $skip skipped"
[ $fail -eq 0 ]
