#!/usr/bin/env bash
# make test-lib: libkvx.so as an engine that links rather than vendors sees
# it. Installs the library into a scratch DESTDIR (make install), builds
# tests/lib/lib_user.c against the installed headers (no
# KVX_IMPLEMENTATION) with the flags of the installed kvx.pc, runs it, and
# checks that the library exports the public API only (no kvx__ helper).
# Usage: tests/lib/run.sh [build dir]   (the library is already built there)
# LIB_USER_CFLAGS: extra flags for lib_user (e.g. -fsanitize=address for a
# library built with it).
set -u
cd "$(dirname "$0")/../.."
B=${1:-build}
CC=${CC:-cc}
if ! command -v pkg-config >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "lib: installing pkg-config"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pkg-config >/dev/null 2>&1 ||
      { apt-get update -qq >/dev/null 2>&1; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pkg-config >/dev/null 2>&1; }
  fi
  if ! command -v pkg-config >/dev/null; then
    echo "SKIP lib: pkg-config is missing (Debian: pkg-config) and could not be installed"; exit 0
  fi
fi
tmp=$(mktemp -d "${TMPDIR:-/tmp}/kvx_lib.XXXXXX") || exit 1
trap 'rm -rf "$tmp"' EXIT
pass=0 fail=0
no() { echo "FAIL lib: $*"; fail=$((fail+1)); }
ok() { if "$@"; then pass=$((pass+1)); return 0; fi; return 1; }

# Exports: every symbol is a public kvx_ function, none is a kvx__ helper.
syms=$(nm -D --defined-only "$B/libkvx.so" | awk '{print $3}')
nsyms=$(echo "$syms" | grep -c .)
internal=$(echo "$syms" | grep -c '^kvx__')
other=$(echo "$syms" | grep -vc '^kvx_')
ok [ "$internal" -eq 0 ] || no "$internal kvx__ symbols exported: $(echo "$syms" | grep '^kvx__' | head -5 | tr '\n' ' ')"
ok [ "$other" -eq 0 ] || no "symbols outside kvx_ exported: $(echo "$syms" | grep -v '^kvx_' | head -5 | tr '\n' ' ')"
ok [ "$nsyms" -gt 100 ] || no "only $nsyms symbols exported"
soname=$(readelf -d "$B/libkvx.so" 2>/dev/null | sed -n 's/.*SONAME.*\[\(.*\)\]/\1/p')
ok [ "$soname" = "libkvx.so.0" ] || no "soname is '$soname', not libkvx.so.0"

make -s --no-print-directory B="$B" install DESTDIR="$tmp/root" PREFIX=/usr/local >"$tmp/install.log" 2>&1 ||
  { cat "$tmp/install.log"; no "make install DESTDIR=$tmp/root failed"; }
for f in include/kvx/kvx.h include/kvx/kvx_rdma.h lib/libkvx.so lib/libkvx.so.0 lib/pkgconfig/kvx.pc; do
  ok [ -e "$tmp/root/usr/local/$f" ] || no "make install did not install /usr/local/$f"
done

# The pc file says prefix=/usr/local; the sysroot maps it into DESTDIR.
export PKG_CONFIG_PATH="$tmp/root/usr/local/lib/pkgconfig" PKG_CONFIG_SYSROOT_DIR="$tmp/root"
flags=$(pkg-config --cflags --libs kvx) || no "pkg-config --cflags --libs kvx failed"
version=$(pkg-config --modversion kvx)
libdir="$tmp/root/usr/local/lib"
# shellcheck disable=SC2086
if $CC -std=c11 -Wall -Wextra -Wpedantic -Werror ${LIB_USER_CFLAGS:-} tests/lib/lib_user.c -o "$tmp/lib_user" $flags \
     -Wl,-rpath,"$libdir"; then
  out=$("$tmp/lib_user" "$tmp/rooms" "$version" 2>&1); rc=$?
  echo "$out" | grep -v '^lib: ' | sed 's/^/  /'
  ok [ $rc -eq 0 ] || no "lib_user exited $rc"
  ok grep -q "$libdir/libkvx.so.0" <(ldd "$tmp/lib_user") || no "lib_user is not linked against the installed libkvx.so.0"
  # its own counts: "lib: N passed, M failed"
  counts=$(echo "$out" | sed -n 's/^lib: \([0-9]*\) passed, \([0-9]*\) failed$/\1 \2/p')
  if [ -n "$counts" ]; then set -- $counts; pass=$((pass+$1)); fail=$((fail+$2)); else no "lib_user printed no counts"; fi
else
  no "tests/lib/lib_user.c does not build with: $flags"
fi
echo "  $nsyms symbols exported, $internal kvx__; pkg-config --cflags --libs kvx: $flags"
echo "lib: $pass passed, $fail failed"
[ $fail -eq 0 ]
