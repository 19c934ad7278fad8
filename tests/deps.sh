#!/usr/bin/env bash
# Installs what `make test` needs when it is missing and this is root on
# Debian; otherwise says what will be skipped.
set -u
need=()
command -v cc >/dev/null || need+=(gcc)
command -v c++ >/dev/null || need+=(g++)
command -v clang >/dev/null || need+=(clang)
command -v python3 >/dev/null || need+=(python3)
# the Python package's test builds it in a venv (Debian splits venv and ensurepip out)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
command -v pkg-config >/dev/null || need+=(pkg-config)
command -v curl >/dev/null || need+=(curl)
[ -f /usr/include/infiniband/verbs.h ] || need+=(libibverbs-dev)
# GlusterFS for the distributed-filesystem test (tests/dfs/gluster.sh)
{ command -v glusterd && command -v gluster && { command -v mount.glusterfs || [ -x /sbin/mount.glusterfs ]; }; } \
  >/dev/null || need+=(glusterfs-server glusterfs-client)
# libFuzzer and the sanitizer runtimes for clang
if command -v clang >/dev/null; then
  echo 'int LLVMFuzzerTestOneInput(const unsigned char*d,unsigned long n){(void)d;(void)n;return 0;}' > /tmp/kvx_fz_$$.c
  clang -fsanitize=fuzzer,address /tmp/kvx_fz_$$.c -o /tmp/kvx_fz_$$ >/dev/null 2>&1 || need+=(libclang-rt-14-dev)
  rm -f /tmp/kvx_fz_$$.c /tmp/kvx_fz_$$
fi
if [ ${#need[@]} -eq 0 ]; then exit 0; fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "deps: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null 2>&1
  apt-get install -y -qq "${need[@]}" >/dev/null 2>&1 || echo "deps: apt-get could not install some of: ${need[*]}; the tests that need them say so and skip"
else
  echo "deps: missing ${need[*]} and not root: the tests that need them will say so and skip"
fi
exit 0
