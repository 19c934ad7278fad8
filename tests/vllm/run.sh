#!/usr/bin/env bash
# make test-vllm: the vLLM connector and offloading spec against vLLM itself.
# Adds the pinned vLLM (--no-deps) and what its connector and offloading
# modules need to build/venv-sglang (tests/vllm/setup_venv.sh, which makes
# that venv first when it is missing), then runs tests/vllm/test_pd.py
# (KvxConnector: prefill and decode processes over tcp and file) and
# tests/vllm/test_offload.py (KvxOffloadingSpec: store, load, capacity,
# restart). Says SKIP and why when the venv cannot be made.
set -u
cd "$(dirname "$0")/../.."
bash tests/vllm/setup_venv.sh
rc=$?
if [ $rc -eq 3 ]; then exit 0; fi   # setup_venv.sh printed the SKIP line
[ $rc -eq 0 ] || exit 1
PY=build/venv-sglang/bin/python
status=0
for t in test_pd test_offload; do
    log=build/vllm_$t.log
    start=$(date +%s)
    if PYTHONWARNINGS=ignore VLLM_LOGGING_LEVEL=WARNING $PY tests/vllm/$t.py >"$log" 2>&1; then
        echo "  ok    $t ($(( $(date +%s) - start )) s): $(grep -E '^vllm-(pd|offload): ' "$log" | tail -1)"
    else
        status=1
        echo "  FAIL  $t ($(( $(date +%s) - start )) s): log $log"
        grep -E "^FAIL" "$log" | head -40 | sed 's/^/        /'
        grep -E '^vllm-(pd|offload): ' "$log" | tail -1 | sed 's/^/        /'
    fi
done
exit $status
