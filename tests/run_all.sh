#!/usr/bin/env bash
# make test: compile checks, the test suite in a plain build, under
# ASan+UBSan and under TSan, then the fuzzers for a bounded time.
set -u
cd "$(dirname "$0")/.."
J=${KVX_JOBS:-2}
W="-Wall -Wextra -Wpedantic -Werror"
status=0; suites_pass=0; suites_fail=0; suites_skip=0
T0=$(date +%s)
step() { echo; echo "== $* [at $(( $(date +%s) - T0 )) s]"; }
result() { if [ "$1" -eq 0 ]; then suites_pass=$((suites_pass+1)); else suites_fail=$((suites_fail+1)); status=1; fi; }

step "compile checks (gcc, clang, C11, C++11, KVX_STATIC, implementation twice)"
bash tests/compile/check.sh; result $?

step "build and run (build/)"
if make -s -j"$J" all; then bash tests/run_tests.sh build; result $?; else result 1; fi

step "shared library: make lib, make install into a scratch DESTDIR, a program linked through pkg-config (build/)"
make -s --no-print-directory test-lib; result $?

step "Python package: pip install ./python into a fresh venv (build/pyvenv), tests/python/test_kvx.py"
make -s --no-print-directory test-python; result $?

step "SGLang backends against SGLang 0.5.23 (build/venv-sglang): tests/sglang/test_pd.py, test_hicache.py"
make -s --no-print-directory test-sglang; result $?

step "vLLM connector and offloading spec against vLLM 0.34.0 (in build/venv-sglang): tests/vllm/test_pd.py, test_offload.py"
make -s --no-print-directory test-vllm; result $?

step "demo, small, on every transport this machine can run (build/)"
demo() { local label=$1; shift; if out=$("$@" --requests 8 --max-tokens 512 --inflight 2 2>&1); then
    echo "  ok    $label: $(echo "$out" | grep -E 'KV bytes moved' | tr -s ' ')"; return 0
  else echo "  FAIL  $label"; echo "$out" | tail -15 | sed 's/^/        /'; return 1; fi; }
drc=0
demo "file" ./build/kvx_demo || drc=1
demo "file + bootstrap handshake" ./build/kvx_demo --handshake || drc=1
demo "tcp" ./build/kvx_demo --transport tcp || drc=1
# topologies: one process per rank, every head of every token verified on its decode rank
demo "file, prefill TP 4 -> decode TP 2" ./build/kvx_demo --prefill-tp 4 --decode-tp 2 || drc=1
demo "file, PP 2 -> 1, TP 1 -> 2, DP 2" ./build/kvx_demo --prefill-pp 2 --decode-tp 2 --dp 2 || drc=1
demo "tcp, prefill TP 2 -> decode TP 4" ./build/kvx_demo --transport tcp --prefill-tp 2 --decode-tp 4 || drc=1
demo "tcp, MLA (deepseek-v3) TP 4 -> 2, DP 2" ./build/kvx_demo --transport tcp --model deepseek-v3 \
  --prefill-tp 4 --decode-tp 2 --dp 2 || drc=1
# layer-wise: each layer's pages sent after its (simulated) compute
demo "file, layer-wise, PP 2 -> 1, TP 1 -> 2" ./build/kvx_demo --layerwise --layer-ms 0.05 \
  --prefill-pp 2 --decode-tp 2 || drc=1
demo "tcp, layer-wise, prefill TP 2 -> decode TP 4" ./build/kvx_demo --transport tcp --layerwise \
  --layer-ms 0.05 --prefill-tp 2 --decode-tp 4 || drc=1
# hybrid model: linear-attention state rows per request slot beside the KV pages
demo "file, hybrid (qwen3-next-80b state), PP 2 -> 2" ./build/kvx_demo --model qwen3-next-80b \
  --prefill-pp 2 --decode-pp 2 || drc=1
demo "tcp, hybrid (qwen3-next-80b state), TP 2 -> 2" ./build/kvx_demo --transport tcp \
  --model qwen3-next-80b --prefill-tp 2 --decode-tp 2 || drc=1
if [ -f tests/softverbs/libsoftverbs.so ] && [ -f /usr/include/infiniband/verbs.h ]; then
  KVX_IBVERBS_LIBRARY=$PWD/tests/softverbs/libsoftverbs.so demo "rdma on softverbs" ./build/kvx_demo --transport rdma || drc=1
  KVX_IBVERBS_LIBRARY=$PWD/tests/softverbs/libsoftverbs.so demo "rdma on softverbs, layer-wise" \
    ./build/kvx_demo --transport rdma --layerwise --layer-ms 0.05 || drc=1
  KVX_IBVERBS_LIBRARY=$PWD/tests/softverbs/libsoftverbs.so demo "rdma on softverbs, TP 4 -> 2, PP 2 -> 2" \
    ./build/kvx_demo --transport rdma --prefill-tp 4 --decode-tp 2 --prefill-pp 2 --decode-pp 2 || drc=1
  KVX_IBVERBS_LIBRARY=$PWD/tests/softverbs/libsoftverbs.so demo "rdma on softverbs, hybrid (qwen3-next-80b state)" \
    ./build/kvx_demo --transport rdma --model qwen3-next-80b || drc=1
else echo "  skip  rdma: built without the rdma-core headers"; fi
if [ -f tests/fakecuda/libfakecuda.so ]; then
  KVX_CUDA_LIBRARY=$PWD/tests/fakecuda/libfakecuda.so demo "cuda on the fake driver" ./build/kvx_demo --transport cuda || drc=1
  KVX_CUDA_LIBRARY=$PWD/tests/fakecuda/libfakecuda.so demo "cuda on the fake driver, layer-wise" \
    ./build/kvx_demo --transport cuda --layerwise --layer-ms 0.05 || drc=1
  KVX_CUDA_LIBRARY=$PWD/tests/fakecuda/libfakecuda.so demo "cuda on the fake driver, TP 2 -> 4, PP 2 -> 1" \
    ./build/kvx_demo --transport cuda --prefill-tp 2 --decode-tp 4 --prefill-pp 2 || drc=1
else echo "  skip  cuda: built without the CUDA toolkit headers"; fi
result $drc

SAN_ASAN="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
step "ASan + UBSan (build/asan/)"
mkdir -p build/asan
if make -s -j"$J" B=build/asan KVX_CFLAGS="-std=c11 -O0 -g $W -I. $SAN_ASAN" all; then
  KVX_TEST_QUICK=1 ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
    bash tests/run_tests.sh build/asan; result $?
else result 1; fi

step "TSan (build/tsan/)"
mkdir -p build/tsan
if make -s -j"$J" B=build/tsan KVX_CFLAGS="-std=c11 -O0 -g $W -I. -fsanitize=thread" all; then
  KVX_TEST_QUICK=1 TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1" \
    bash tests/run_tests.sh build/tsan; result $?
else result 1; fi

step "fuzzers (bounded)"
bash tests/fuzz/run.sh; rc=$?
if [ $rc -eq 77 ]; then suites_skip=$((suites_skip+1)); else result $rc; fi

echo
echo "make test: $suites_pass passed, $suites_fail failed, $suites_skip skipped ($(( $(date +%s) - T0 )) s)"
exit $status
