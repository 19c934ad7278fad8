#!/usr/bin/env bash
# Makes build/venv-sglang: SGLang 0.5.23 (--no-deps) with what its
# disaggregation and HiCache modules need to import (requirements.txt), and
# the kvx package from python/. Reused while requirements.txt and this
# script are unchanged. Prints "SKIP sglang: <why>" and exits 3 when it
# cannot be made (no python3 venv module, PyPI unreachable).
set -u
REPO=$(cd "$(dirname "$0")/../.." && pwd)
VENV=$REPO/build/venv-sglang
SGLANG=sglang==0.5.23
stamp=$(cat "$REPO/tests/sglang/requirements.txt" "$0" | sha256sum | cut -c1-16)
if [ -x "$VENV/bin/python" ] && [ "$(cat "$VENV/.kvx-stamp" 2>/dev/null)" = "$stamp" ]; then
    # the kvx package changes with the tree: reinstall it (seconds)
    "$VENV/bin/pip" install -q --no-deps --force-reinstall "$REPO/python" >"$VENV/.kvx-pip.log" 2>&1 ||
        { echo "FAIL sglang: pip install ./python into $VENV (see $VENV/.kvx-pip.log)"; exit 1; }
    exit 0
fi
command -v python3 >/dev/null || { echo "SKIP sglang: python3 is not installed"; exit 3; }
python3 -c "import venv, ensurepip" 2>/dev/null ||
    { echo "SKIP sglang: python3 -m venv is not available (Debian: python3-venv)"; exit 3; }
rm -rf "$VENV"
mkdir -p "$REPO/build"
# torch's CUDA build and its nvidia-* libraries take about 6 GB installed
# (pip also needs room for the wheels while it unpacks them)
free_kb=$(df -Pk "$REPO/build" | awk 'NR==2 {print $4}')
if [ -n "$free_kb" ] && [ "$free_kb" -lt $((9 * 1024 * 1024)) ]; then
    echo "SKIP sglang: the pinned SGLang and torch need about 9 GB free under build/ while" \
         "they install; $((free_kb / 1024 / 1024)) GB are free"
    exit 3
fi
python3 -m venv "$VENV" || { echo "SKIP sglang: python3 -m venv failed"; exit 3; }
log=$REPO/build/venv-sglang.log
echo "  installing $SGLANG and its import dependencies into build/venv-sglang (log: build/venv-sglang.log)"
if ! "$VENV/bin/pip" install -q --disable-pip-version-check -r "$REPO/tests/sglang/requirements.txt" >"$log" 2>&1; then
    if grep -qiE "connection|resolve|network|timed out|no matching distribution" "$log"; then
        echo "SKIP sglang: cannot install the pinned packages from PyPI (see build/venv-sglang.log)"
        rm -rf "$VENV"; exit 3
    fi
    if grep -qiE "no space left on device" "$log"; then
        echo "SKIP sglang: the disk filled while installing the pinned packages (see build/venv-sglang.log)"
        rm -rf "$VENV"; exit 3
    fi
    echo "FAIL sglang: pip install -r tests/sglang/requirements.txt (see build/venv-sglang.log)"; exit 1
fi
"$VENV/bin/pip" install -q --disable-pip-version-check --no-deps "$SGLANG" >>"$log" 2>&1 ||
    { echo "FAIL sglang: pip install --no-deps $SGLANG (see build/venv-sglang.log)"; exit 1; }
"$VENV/bin/pip" install -q --no-deps "$REPO/python" >>"$log" 2>&1 ||
    { echo "FAIL sglang: pip install ./python (see build/venv-sglang.log)"; exit 1; }
echo "$stamp" >"$VENV/.kvx-stamp"
exit 0
