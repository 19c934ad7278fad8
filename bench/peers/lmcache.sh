#!/usr/bin/env bash
# bench/peers/lmcache.sh <pin> - LMCache's local disk backend, where the pinned
# release installs (into build/venv-lmcache, once per pin) and runs without a
# GPU; otherwise one "PEER-SKIP LMCache: <why>" line.
set -u
REPO=$(cd "$(dirname "$0")/../.." && pwd)
PIN=$1
V=$REPO/build/venv-lmcache
log=$REPO/build/peers-lmcache.log
if [ "$(cat "$V/.kvx-stamp" 2>/dev/null)" != "$PIN" ]; then
    echo "  installing $PIN into build/venv-lmcache (log: build/peers-lmcache.log)"
    rm -rf "$V"
    python3 -m venv "$V" >/dev/null 2>&1 || { echo "PEER-SKIP LMCache: python3 -m venv failed"; exit 0; }
    if ! timeout 600 "$V/bin/pip" install --disable-pip-version-check --only-binary=:all: "$PIN" >"$log" 2>&1; then
        echo "PEER-SKIP LMCache: pip install $PIN failed or took over 10 min ($(grep -E 'ERROR|error:' "$log" | head -1 | cut -c1-160))"
        exit 0
    fi
    echo "$PIN" >"$V/.kvx-stamp"
fi
timeout 600 "$V/bin/python" "$REPO/bench/peers/lmcache_disk.py" 2>>"$log"
rc=$?
[ $rc -eq 0 ] || echo "PEER-SKIP LMCache: bench/peers/lmcache_disk.py exited $rc (build/peers-lmcache.log)"
exit 0
