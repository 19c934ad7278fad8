#!/usr/bin/env bash
# bench/peers/run.sh - make bench-peers: kvx against its peers, one table.
#
# Storage (storage.py): kvx_store against SGLang's HiCacheFile, in the SGLang
#   venv of tests/sglang (build/venv-sglang, made by tests/sglang/setup_venv.sh,
#   about 6 GB the first time; KVX_SGLANG_VENV=<dir> uses another one as is).
# PD transfer (tcp.py): kvx tcp against Mooncake TE's tcp transport and NIXL
#   over UCX, in build/venv-peers (made here; pinned versions below).
# LMCache (lmcache.py): its local disk backend when the pinned release
#   installs and runs without a GPU in build/venv-lmcache; else one line why.
# kvx itself: python/ on PYTHONPATH with KVX_PY_LIBRARY=build/libkvx.so
#   (make lib), so no venv needs kvx installed.
#
# Environment: KVX_PEERS_PAGES (256: the 4096-token request; fewer for a quick
# run), KVX_PEERS_REPS (3), KVX_PEERS_DIR (build/bench-peers: the store
# directories, on the file system to measure), KVX_SGLANG_VENV.
# Installs are tried once per pin set (a stamp); a failed one is retried on
# the next run. Output: build/bench-peers.out (the raw lines) and the table.
set -u
REPO=$(cd "$(dirname "$0")/../.." && pwd)
cd "$REPO" || exit 1
MOONCAKE=mooncake-transfer-engine-non-cuda==0.3.13.post1
NIXL=nixl==1.5.1
NUMPY=numpy==2.4.6
LMCACHE=lmcache==0.5.6
OUT=build/bench-peers.out
export PYTHONPATH=$REPO/python KVX_PY_LIBRARY=$REPO/build/libkvx.so
: >"$OUT"
say() { echo "$*" | tee -a "$OUT"; }

[ -e build/libkvx.so ] || { echo "bench-peers: build/libkvx.so is missing (make lib)"; exit 1; }

# ---- storage: the SGLang venv
VENV_SG=${KVX_SGLANG_VENV:-}
if [ -z "$VENV_SG" ]; then
    bash tests/sglang/setup_venv.sh; rc=$?
    if [ $rc -eq 0 ]; then VENV_SG=$REPO/build/venv-sglang
    else say "PEER-SKIP HiCacheFile and kvx_store: tests/sglang/setup_venv.sh could not make the SGLang venv (rc $rc, see above)"; fi
fi
if [ -n "$VENV_SG" ]; then
    echo "== storage: kvx_store vs HiCacheFile (${KVX_PEERS_PAGES:-256} pages)"
    timeout 900 "$VENV_SG/bin/python" bench/peers/storage.py 2>&1 | tee -a "$OUT" | grep -v '^RESULT'
fi

# ---- PD transfer: build/venv-peers
VP=$REPO/build/venv-peers
stamp=$(echo "$NUMPY $MOONCAKE $NIXL" | sha256sum | cut -c1-16)
if [ "$(cat "$VP/.kvx-stamp" 2>/dev/null)" != "$stamp" ]; then
    echo "  installing $NUMPY $MOONCAKE $NIXL into build/venv-peers (logs: build/peers-*.log)"
    rm -rf "$VP"
    if python3 -m venv "$VP" >/dev/null 2>&1 &&
       timeout 600 "$VP/bin/pip" install -q --disable-pip-version-check "$NUMPY" >build/peers-numpy.log 2>&1; then
        ok=1
        timeout 600 "$VP/bin/pip" install -q --disable-pip-version-check "$MOONCAKE" >build/peers-mooncake.log 2>&1 ||
            { ok=0; echo "  pip install $MOONCAKE failed (build/peers-mooncake.log)"; }
        # nixl is the meta package; it pulls nixl-cu12 (and with it torch): it
        # imports and runs UCX on a machine without a GPU
        timeout 600 "$VP/bin/pip" install -q --disable-pip-version-check "$NIXL" >build/peers-nixl.log 2>&1 ||
            { ok=0; echo "  pip install $NIXL failed (build/peers-nixl.log)"; }
        [ $ok = 1 ] && echo "$stamp" >"$VP/.kvx-stamp"
    else
        say "PEER-SKIP kvx tcp, Mooncake TE, NIXL: cannot make build/venv-peers with $NUMPY (python3 -m venv or PyPI; build/peers-numpy.log)"
        VP=
    fi
fi
if [ -n "$VP" ]; then
    echo "== PD transfer over loopback: kvx tcp vs Mooncake TE tcp vs NIXL UCX (${KVX_PEERS_PAGES:-256} pages)"
    timeout 900 "$VP/bin/python" bench/peers/tcp.py 2>&1 | tee -a "$OUT" | grep -E '^(PEER-SKIP|ERROR)'
fi

# ---- LMCache
bash bench/peers/lmcache.sh "$LMCACHE" 2>&1 | tee -a "$OUT" | grep -v '^RESULT'

echo
echo "== kvx and its peers, $(date -u +%Y-%m-%d), $(nproc) CPUs, $(uname -m), pages ${KVX_PEERS_PAGES:-256} of 2 MiB"
python3 bench/peers/table.py "$OUT"
