#!/bin/bash
# Stop a test host started by up.sh and remove every trace of it.
#
# Usage: tests/host/down.sh STATE_DIR
#
# Kills the host (SIGKILL to its systemd, which kills every process of its pid namespace),
# unmounts everything under STATE_DIR, removes its cgroup subtrees on every hierarchy and
# removes STATE_DIR. Idempotent: a missing STATE_DIR, or one left half-made by a failed
# up.sh, is fine. It deletes only the files up.sh creates, never anything else (so a wrong
# STATE_DIR fails instead of being wiped). Exits non-zero if something could not be removed.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tests/host/lib.sh
. "$HERE/lib.sh"

(($# == 1)) || { echo "usage: ${0##*/} STATE_DIR" >&2; exit 2; }
[[ $EUID == 0 ]] || die "must run as root"
STATE=$(canonical_state_dir "$1")
[[ $STATE != / ]] || die "STATE_DIR must not be /"
[[ -e $STATE ]] || exit 0
[[ -d $STATE ]] || die "$STATE is not a directory"
# Refuse a directory that up.sh never claimed: unmounting "everything below" some other path
# could take down the machine's own mounts.
if [[ ! -d $STATE/layer && ! -f $STATE/id ]]; then
    [[ -z $(ls -A "$STATE") ]] || die "$STATE is not a test host's state directory (no layer/ or id); not touching it"
    rmdir "$STATE"
    exit 0
fi

FAILED=0

# ---- processes ---------------------------------------------------------------------------
# "PID start-time" from a file, or nothing.
read_pid_file() { if [[ -f $1 ]]; then cat "$1"; fi; }

# Wait up to $3 tenths of a second for recorded process ($1 $2) to be gone.
wait_gone() {
    local i
    for ((i = 0; i < $3 * 5; i++)); do
        same_process_alive "$1" "$2" || return 0
        sleep 0.02
    done
    return 1
}

# Kill only what up.sh started: each PID is checked against its recorded start time, so a
# PID that was reused by another process since is left alone.
kill_recorded() { # pid start what
    local pid=$1 start=$2 what=$3
    [[ -n $pid && -n $start ]] || return 0
    same_process_alive "$pid" "$start" || return 0
    kill -KILL "$pid" 2>/dev/null || true
    wait_gone "$pid" "$start" 100 || { warn "$what (PID $pid) survived SIGKILL for 10 s"; FAILED=1; }
}

HOST_PID=$(read_pid_file "$STATE/pid")
HOST_START=$(read_pid_file "$STATE/pid.start")
read -r UNSHARE_PID UNSHARE_START < <(read_pid_file "$STATE/unshare.pid"; echo) || true
read -r SCRIPT_PID SCRIPT_START < <(read_pid_file "$STATE/script.pid"; echo) || true

# SIGKILL to PID 1 of a pid namespace makes the kernel kill every process in it, including
# those that exec.sh put there with nsenter. No clean shutdown: the host is disposable and
# has nothing worth saving, and a clean `systemctl poweroff` takes seconds.
kill_recorded "$HOST_PID" "$HOST_START" "the host's systemd"
# unshare exits when its child has died, and script when unshare has: give them a moment,
# then kill them (they are ours: recorded by up.sh with their start times).
wait_gone "$UNSHARE_PID" "$UNSHARE_START" 50 || kill_recorded "$UNSHARE_PID" "$UNSHARE_START" "the unshare process"
wait_gone "$SCRIPT_PID" "$SCRIPT_START" 50 || kill_recorded "$SCRIPT_PID" "$SCRIPT_START" "the console logger (script)"

# Anything still in the host's cgroup subtrees belongs to the host (the subtrees are ours,
# named with a random id). Normally nothing is left; this catches a host killed before its
# PID was recorded (up.sh failing between fork and bookkeeping).
for _ in 1 2 3; do
    left=$(recorded_subtrees "$STATE" | while IFS= read -r dir; do
        if [[ -d $dir ]]; then find "$dir" -name cgroup.procs -exec cat {} + 2>/dev/null || true; fi
    done | sort -un)
    [[ -n $left ]] || break
    # shellcheck disable=SC2086
    kill -KILL $left 2>/dev/null || true
    sleep 0.2
done

# ---- mounts ------------------------------------------------------------------------------
# Every mount at or below STATE_DIR, deepest first. mountinfo escapes space, tab, newline and
# backslash as \ooo; printf %b decodes them.
mounts_below() {
    awk -v s="$STATE" '{ print $5 }' /proc/self/mountinfo | while IFS= read -r m; do
        m=$(printf '%b' "$m")
        if [[ $m == "$STATE" || $m == "$STATE"/* ]]; then echo "$m"; fi
    done | awk '{ print length($0) "\t" $0 }' | sort -rn | cut -f2-
}
for _ in 1 2 3 4 5; do
    mapfile -t mounts < <(mounts_below)
    ((${#mounts[@]})) || break
    for m in "${mounts[@]}"; do
        # A plain unmount first; a lazy one if something still holds it (it then goes away
        # as soon as the last user does, and is gone from the mount table at once).
        umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
    done
done
mapfile -t mounts < <(mounts_below)
if ((${#mounts[@]})); then
    warn "could not unmount: ${mounts[*]}"
    FAILED=1
fi

# ---- cgroups -----------------------------------------------------------------------------
# rmdir deepest first: a cgroup with children cannot be removed. An emptied cgroup may still
# refuse for a moment (EBUSY) while the kernel finishes with the killed tasks, so retry.
remove_subtree() {
    local dir=$1 i
    for ((i = 0; i < 50; i++)); do
        [[ -d $dir ]] || return 0
        find "$dir" -depth -type d -exec rmdir {} + 2>/dev/null || true
        [[ -d $dir ]] || return 0
        sleep 0.1
    done
    warn "could not remove cgroup $dir (processes left: $(find "$dir" -name cgroup.procs -exec cat {} + 2>/dev/null | tr '\n' ' '))"
    return 1
}
while IFS= read -r dir; do
    [[ -n $dir ]] || continue
    remove_subtree "$dir" || FAILED=1
done < <(recorded_subtrees "$STATE")

((FAILED == 0)) || die "teardown of $STATE incomplete; kept $STATE (see warnings above)"

# ---- files -------------------------------------------------------------------------------
# Only what up.sh creates. The layers were tmpfs mounts, so layer/ and merged/ are empty now.
rm -f "$STATE"/{id,cgroups,pid,pid.start,unshare.pid,script.pid,release,console.log}
for d in merged layer; do
    [[ ! -d $STATE/$d ]] || rmdir "$STATE/$d" || die "$STATE/$d is not empty after unmounting"
done
rmdir "$STATE" || die "$STATE holds files that up.sh did not make; left in place: $(find "$STATE" -mindepth 1 -maxdepth 1 -printf '%f ')"
