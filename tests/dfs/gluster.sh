#!/usr/bin/env bash
# tests/dfs/gluster.sh run CMD [ARGS...]
#
# Runs CMD against a private GlusterFS volume mounted twice through FUSE, as
# two nodes would mount it, each client with its own caches:
#   KVX_DFS_A      mount A of the volume (a directory)
#   KVX_DFS_B      mount B of the same volume
#   KVX_DFS_BRICK  the volume's one brick (the server's copy of the files)
#   KVX_DFS_VOLUME the volume's name, KVX_DFS_LOGS the directory of its logs
# and exits with CMD's status. Whatever happens (CMD fails, is killed, this
# script gets INT or TERM), it unmounts both mounts (lazily if busy), stops
# and deletes its volume, ends the brick and client processes of its volume
# (by process id, found by their command lines naming its volume and mounts)
# and the glusterd it started, removes its temporary directory, and checks
# that none of them is left.
#
# Exits 77 with a line "SKIP: ..." when it cannot run: not root, no
# /dev/fuse, GlusterFS missing and not installable (installed quietly with
# apt-get when root), no non-loopback IPv4 address (Gluster refuses bricks on
# 127.0.0.1), or glusterd, the volume or a mount fails (the tail of the log
# that says why is printed).
#
# glusterd: when one already listens on port 24007 (a system one, or a
# developer's), the volume is made through it with the default CLI, under a
# unique name (kvx-test-<pid>), and only that volume is removed. Otherwise
# this script starts its own glusterd with a private working directory in
# its temporary directory and ends it afterwards.
#
# Environment: KVX_DFS_KEEP_LOGS=DIR copies the logs there before teardown;
# KVX_GLUSTER_TIMEOUT seconds for each setup step (default 60).
set -u

usage() { echo "usage: $0 run CMD [ARGS...]" >&2; exit 2; }
[ "${1:-}" = run ] || usage
shift
[ $# -ge 1 ] || usage

STEP_TIMEOUT=${KVX_GLUSTER_TIMEOUT:-60}
VOL=kvx-test-$$
T=""            # temporary directory (brick, mounts, logs, glusterd working dir)
OWN_GLUSTERD=0  # 1 when this script started glusterd
GD_PID=""
VOL_CREATED=0
CMD_PID=""
CLEANED=0

say() { echo "gluster.sh: $*" >&2; }

# The processes of this volume: its brick (glusterfsd) and FUSE clients
# (glusterfs) carry the volume's name in their command lines.
vol_pids() {
  local p arg prev id
  for p in /proc/[0-9]*; do
    case "$(cat "$p/comm" 2>/dev/null)" in glusterfs|glusterfsd) ;; *) continue ;; esac
    prev=""; id=""
    while IFS= read -r -d '' arg; do
      case "$arg" in --volfile-id=*) id=${arg#--volfile-id=} ;; esac
      [ "$prev" = --volfile-id ] && id=$arg
      prev=$arg
    done <"$p/cmdline" 2>/dev/null
    case "$id" in "/$VOL"|"$VOL"|"$VOL".*) echo "${p#/proc/}" ;; esac
  done
}

# Ends one process by id: TERM, then KILL after a grace period.
end_pid() {
  local pid=$1 i
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null
  for i in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.05; done
  kill -KILL "$pid" 2>/dev/null
  for i in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.05; done
  say "process $pid did not end"
  return 1
}

# gluster CLI, in script mode, retried while another transaction holds
# glusterd's lock (several test runs may share one glusterd).
gcli() {
  local out rc deadline=$((SECONDS + STEP_TIMEOUT))
  while :; do
    out=$(timeout -k 5 "$STEP_TIMEOUT" gluster --mode=script "$@" 2>&1); rc=$?
    [ $rc -eq 0 ] && { printf '%s\n' "$out"; return 0; }
    case "$out" in
      *"Another transaction"*|*"ocking failed"*|*"ock not released"*)
        [ $SECONDS -lt $deadline ] && { sleep 0.2; continue; } ;;
    esac
    printf '%s\n' "$out"
    return $rc
  done
}

log_tail() { [ -f "$1" ] && { echo "---- tail of $1"; tail -n "${2:-20}" "$1"; echo "----"; }; }

brick_log() { echo "/var/log/glusterfs/bricks/$(echo "${T#/}/brick" | tr / -).log"; }

cleanup() {
  [ $CLEANED -eq 1 ] && return
  CLEANED=1
  trap '' INT TERM
  local m pid left=0
  if [ -n "${KVX_DFS_KEEP_LOGS:-}" ] && [ -n "$T" ]; then
    mkdir -p "$KVX_DFS_KEEP_LOGS" && cp -r "$T/log/." "$KVX_DFS_KEEP_LOGS/" 2>/dev/null
    [ -f "$(brick_log)" ] && cp "$(brick_log)" "$KVX_DFS_KEEP_LOGS/brick.log"
  fi
  if [ -n "$T" ]; then
    for m in "$T/mA" "$T/mB"; do
      if mountpoint -q "$m" 2>/dev/null; then
        umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || say "cannot unmount $m"
      fi
    done
  fi
  if [ $VOL_CREATED -eq 1 ]; then
    gcli volume stop "$VOL" force >/dev/null || say "volume stop $VOL failed"
    gcli volume delete "$VOL" >/dev/null || say "volume delete $VOL failed"
  fi
  # Whatever of this volume still runs (a client whose mount was lazily
  # detached, a brick the stop did not end): by id.
  for pid in $(vol_pids); do end_pid "$pid"; done
  if [ $OWN_GLUSTERD -eq 1 ] && [ -n "$GD_PID" ]; then end_pid "$GD_PID"; fi
  # Verify: nothing of ours mounted, running or registered.
  if [ -n "$T" ]; then
    for m in "$T/mA" "$T/mB"; do
      if mountpoint -q "$m" 2>/dev/null; then say "LEFT BEHIND: mount $m"; left=1; fi
    done
  fi
  for pid in $(vol_pids); do say "LEFT BEHIND: process $pid ($(tr '\0' ' ' </proc/$pid/cmdline 2>/dev/null))"; left=1; done
  if [ $OWN_GLUSTERD -eq 1 ] && [ -n "$GD_PID" ] && kill -0 "$GD_PID" 2>/dev/null; then
    say "LEFT BEHIND: glusterd $GD_PID"; left=1
  fi
  if [ $VOL_CREATED -eq 1 ] && [ $OWN_GLUSTERD -eq 0 ] && gcli volume info "$VOL" >/dev/null 2>&1; then
    say "LEFT BEHIND: volume $VOL"; left=1
  fi
  if [ -n "$T" ]; then
    rm -f "$(brick_log)" 2>/dev/null
    rmdir "/var/run/gluster/vols/$VOL" 2>/dev/null
    # Never descend into a mount that could not be detached.
    if [ $left -eq 0 ]; then rm -rf --one-file-system "$T"; else say "kept $T"; fi
  fi
  [ $left -eq 0 ] || say "teardown incomplete"
  return $left
}

on_signal() {
  local sig=$1
  say "got SIG$sig: stopping the command and tearing down"
  if [ -n "$CMD_PID" ]; then end_pid "$CMD_PID"; fi
  cleanup
  trap - EXIT
  [ "$sig" = INT ] && exit 130
  exit 143
}
trap cleanup EXIT
trap 'on_signal INT' INT
trap 'on_signal TERM' TERM

skip() { echo "SKIP: GlusterFS: $*"; cleanup; trap - EXIT; exit 77; }

# ---- what this machine offers --------------------------------------------------
[ "$(id -u)" = 0 ] || skip "not root (glusterd and FUSE mounts need root)"
[ -c /dev/fuse ] || skip "no /dev/fuse (FUSE is not available here)"
have_gluster() {
  command -v glusterd >/dev/null && command -v gluster >/dev/null &&
    command -v glusterfs >/dev/null && { command -v mount.glusterfs >/dev/null || [ -x /sbin/mount.glusterfs ]; }
}
if ! have_gluster; then
  if command -v apt-get >/dev/null; then
    say "installing glusterfs-server glusterfs-client"
    export DEBIAN_FRONTEND=noninteractive
    { apt-get update -qq && apt-get install -y -qq glusterfs-server glusterfs-client; } >/dev/null 2>&1
  fi
  have_gluster || skip "glusterd/gluster/mount.glusterfs missing and apt-get could not install glusterfs-server glusterfs-client"
fi
IP=""
for a in $(hostname -I 2>/dev/null); do
  case "$a" in *:*|127.*) ;; *) IP=$a; break ;; esac
done
[ -n "$IP" ] || skip "no non-loopback IPv4 address (hostname -I: '$(hostname -I 2>/dev/null)'; Gluster refuses bricks on 127.0.0.1)"

T=$(mktemp -d /tmp/kvx_gluster.XXXXXX) || skip "cannot make a temporary directory"
mkdir -p "$T/brick" "$T/mA" "$T/mB" "$T/log" "$T/run"

# ---- glusterd ------------------------------------------------------------------------
port_busy() { (exec 3<>/dev/tcp/127.0.0.1/24007) 2>/dev/null; }
if port_busy; then
  say "using the glusterd already running on this machine (port 24007); volume $VOL"
  gcli volume list >/dev/null || skip "port 24007 is taken but no glusterd answers the gluster CLI"
else
  OWN_GLUSTERD=1
  mkdir -p "$T/wd"
  for d in groups hooks; do
    [ -d "/var/lib/glusterd/$d" ] && cp -r "/var/lib/glusterd/$d" "$T/wd/"
  done
  cat >"$T/glusterd.vol" <<EOF
volume management
    type mgmt/glusterd
    option working-directory $T/wd
    option transport-type socket
    option transport.socket.listen-port 24007
    option ping-timeout 0
    option event-threads 1
end-volume
EOF
  glusterd -f "$T/glusterd.vol" -p "$T/run/glusterd.pid" -l "$T/log/glusterd.log" --log-level=WARNING \
    || { log_tail "$T/log/glusterd.log"; skip "glusterd did not start"; }
  deadline=$((SECONDS + STEP_TIMEOUT))
  until [ -s "$T/run/glusterd.pid" ] && gcli volume list >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || { log_tail "$T/log/glusterd.log"; skip "glusterd does not answer the CLI"; }
    sleep 0.1
  done
  GD_PID=$(cat "$T/run/glusterd.pid")
  say "started glusterd $GD_PID (working directory $T/wd); volume $VOL"
fi

# ---- the volume -------------------------------------------------------------------------
out=$(gcli volume create "$VOL" "$IP:$T/brick" force) || {
  echo "$out"; log_tail "$T/log/glusterd.log"; skip "volume create failed"; }
VOL_CREATED=1
out=$(gcli volume start "$VOL") || {
  echo "$out"; log_tail "$(brick_log)"; log_tail "$T/log/glusterd.log"; skip "volume start failed"; }

# ---- two mounts of it, observed working -------------------------------------------------
for side in A B; do
  m="$T/m$side"
  out=$(timeout -k 5 "$STEP_TIMEOUT" mount -t glusterfs -o "log-file=$T/log/mount$side.log,log-level=WARNING" \
        "$IP:/$VOL" "$m" 2>&1) || { echo "$out"; log_tail "$T/log/mount$side.log"; skip "mount $side failed"; }
done
deadline=$((SECONDS + STEP_TIMEOUT))
probe=".kvx_probe_$$_$RANDOM"
until mountpoint -q "$T/mA" && mountpoint -q "$T/mB" && { [ -f "$T/mA/$probe" ] || echo "$probe" >"$T/mA/$probe"; } &&
      [ "$(cat "$T/mB/$probe" 2>/dev/null)" = "$probe" ]; do
  [ $SECONDS -lt $deadline ] || { log_tail "$T/log/mountA.log"; log_tail "$T/log/mountB.log"; skip "the two mounts do not see each other's files"; }
  sleep 0.1
done
rm -f "$T/mB/$probe"

export KVX_DFS_A="$T/mA" KVX_DFS_B="$T/mB" KVX_DFS_BRICK="$T/brick" KVX_DFS_VOLUME="$VOL" KVX_DFS_LOGS="$T/log"
say "volume $VOL ($IP:$T/brick) mounted at $KVX_DFS_A and $KVX_DFS_B"

# ---- the command ----------------------------------------------------------------------------
# In the background, so that INT and TERM reach the trap at once.
"$@" &
CMD_PID=$!
wait "$CMD_PID"
rc=$?
CMD_PID=""
cleanup || { [ $rc -eq 0 ] && rc=1; }
trap - EXIT
exit $rc
