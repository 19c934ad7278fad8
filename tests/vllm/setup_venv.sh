#!/usr/bin/env bash
# Adds vLLM 0.34.0 (--no-deps) and what its KV connector and offloading
# modules need to import (requirements.txt, --no-deps) to build/venv-sglang,
# which tests/sglang/setup_venv.sh makes (torch 2.14.1 and the rest): one
# torch download serves both suites. Reused while requirements.txt, this
# script and the SGLang venv are unchanged. Prints "SKIP vllm: <why>" and
# exits 3 when it cannot be made (what tests/sglang/setup_venv.sh says, or
# PyPI unreachable, or the disk short).
set -u
REPO=$(cd "$(dirname "$0")/../.." && pwd)
VENV=$REPO/build/venv-sglang
VLLM=vllm==0.34.0
out=$(bash "$REPO/tests/sglang/setup_venv.sh")
rc=$?
if [ $rc -ne 0 ]; then
    echo "$out" | sed 's/^SKIP sglang:/SKIP vllm: the SGLang venv it extends cannot be made:/;s/^FAIL sglang:/FAIL vllm: the SGLang venv it extends:/'
    exit $rc
fi
[ -n "$out" ] && echo "$out"
stamp=$(cat "$REPO/tests/vllm/requirements.txt" "$0" "$VENV/.kvx-stamp" | sha256sum | cut -c1-16)
if [ "$(cat "$VENV/.kvx-vllm-stamp" 2>/dev/null)" = "$stamp" ]; then
    exit 0
fi
free_kb=$(df -Pk "$REPO/build" | awk 'NR==2 {print $4}')
if [ -n "$free_kb" ] && [ "$free_kb" -lt $((2 * 1024 * 1024)) ]; then
    echo "SKIP vllm: the pinned vLLM wheel needs about 2 GB free under build/ while it" \
         "installs; $((free_kb / 1024)) MB are free"
    exit 3
fi
log=$REPO/build/venv-vllm.log
echo "  installing $VLLM (--no-deps) and its import dependencies into build/venv-sglang (log: build/venv-vllm.log)"
if ! "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps -r "$REPO/tests/vllm/requirements.txt" "$VLLM" >"$log" 2>&1; then
    if grep -qiE "connection|resolve|network|timed out|no matching distribution" "$log"; then
        echo "SKIP vllm: cannot install the pinned packages from PyPI (see build/venv-vllm.log)"
        exit 3
    fi
    if grep -qiE "no space left on device" "$log"; then
        echo "SKIP vllm: the disk filled while installing the pinned packages (see build/venv-vllm.log)"
        exit 3
    fi
    echo "FAIL vllm: pip install --no-deps $VLLM -r tests/vllm/requirements.txt (see build/venv-vllm.log)"
    exit 1
fi
echo "$stamp" >"$VENV/.kvx-vllm-stamp"
exit 0
