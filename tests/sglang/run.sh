#!/usr/bin/env bash
# make test-sglang: the SGLang backends against SGLang itself. Makes (or
# reuses) build/venv-sglang with the pinned SGLang release and what its
# disaggregation and HiCache modules need (tests/sglang/setup_venv.sh), then
# runs tests/sglang/test_pd.py (the PD transfer backend: tcp, file, rdma on
# softverbs, and SGLang's decode code on kvx's bootstrap server) and
# tests/sglang/test_hicache.py (the HiCache storage backend). Says SKIP and
# why when the venv cannot be made (no python3 venv module, PyPI unreachable).
set -u
cd "$(dirname "$0")/../.."
bash tests/sglang/setup_venv.sh
rc=$?
if [ $rc -eq 3 ]; then exit 0; fi   # setup_venv.sh printed the SKIP line
[ $rc -eq 0 ] || exit 1
PY=build/venv-sglang/bin/python
[ -f tests/softverbs/libsoftverbs.so ] || make -s --no-print-directory softverbs >/dev/null 2>&1
status=0
for t in test_pd test_hicache; do
    log=build/sglang_$t.log
    start=$(date +%s)
    if PYTHONWARNINGS=ignore $PY tests/sglang/$t.py >"$log" 2>&1; then
        echo "  ok    $t ($(( $(date +%s) - start )) s): $(grep -E '^(sglang-pd|hicache): ' "$log" | tail -1)"
    else
        status=1
        echo "  FAIL  $t ($(( $(date +%s) - start )) s): log $log"
        grep -E "^(FAIL|    \|)" "$log" | head -40 | sed 's/^/        /'
        grep -E '^(sglang-pd|hicache): ' "$log" | tail -1 | sed 's/^/        /'
    fi
done
exit $status
