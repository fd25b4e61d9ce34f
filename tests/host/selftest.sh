#!/bin/bash
# Self-test of the disposable systemd test host (up.sh / exec.sh / down.sh).
#
# Usage: tests/host/selftest.sh [--cycles N]
#
# Boots two hosts at the same time and checks, in each, what berth's integration tests rely
# on: systemctl, busctl (inside and from the machine), a delegated transient scope in
# machine.slice, journald, overlayfs with its upper layer under /var/lib/berth, nested
# namespaces, exit-status/stdio passing and isolation from the machine. Then boots and tears
# down N more times (default 5) and checks that nothing is left behind: no mounts, no cgroup
# directories, no processes, and the machine's /run and /tmp unchanged.
# Prints the boot and teardown times. Exits non-zero at the first failure.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tests/host/lib.sh
. "$HERE/lib.sh"

CYCLES=5
while (($#)); do
    case $1 in
    --cycles) CYCLES=$2; shift 2 ;;
    *) echo "usage: ${0##*/} [--cycles N]" >&2; exit 2 ;;
    esac
done
[[ $EUID == 0 ]] || die "must run as root"

WORK=$(mktemp -d /tmp/berth-testhost-selftest.XXXXXX)
STATES=()
cleanup() {
    local rc=$? s
    for s in "${STATES[@]}"; do
        [[ -e $s ]] || continue
        "$HERE/down.sh" "$s" || { echo "selftest: down.sh $s failed" >&2; rc=1; }
    done
    rm -f "$WORK/canary" "$WORK"/*.snap "$WORK"/*.time
    rmdir "$WORK" 2>/dev/null || { echo "selftest: $WORK not empty" >&2; rc=1; }
    exit "$rc"
}
trap cleanup EXIT

fail() { die "FAILED: $*"; }
ok() { echo "ok   $*"; }

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", b - a}'; }

# What the machine looks like from the outside, to compare before/after.
snapshot() {
    {
        echo "== mounts"; awk '{print $5}' /proc/self/mountinfo | sort
        echo "== cgroups"; find /sys/fs/cgroup -maxdepth 6 -type d -name 'berth-testhost-*' | sort
        echo "== /run"; find /run -mindepth 1 -maxdepth 1 | sort
        echo "== /tmp"; find /tmp -mindepth 1 -maxdepth 1 ! -path "$WORK" | sort
    }
}

UP_PID=''
up() { # state_dir -> sets UP_PID; records timing
    local s=$1 t0 t1
    STATES+=("$s")
    t0=$(now)
    UP_PID=$("$HERE/up.sh" "$s" 2>"$WORK/up.err") || { cat "$WORK/up.err" >&2; rm -f "$WORK/up.err"; fail "up.sh $s"; }
    t1=$(now)
    rm -f "$WORK/up.err"
    elapsed "$t0" "$t1" >>"$WORK/up.time"; echo >>"$WORK/up.time"
}

down() { # state_dir pid
    local s=$1 pid=$2 t0 t1 pidns i
    pidns=$(readlink "/proc/$pid/ns/pid")
    t0=$(now)
    "$HERE/down.sh" "$s" || fail "down.sh $s"
    t1=$(now)
    elapsed "$t0" "$t1" >>"$WORK/down.time"; echo >>"$WORK/down.time"
    [[ ! -e $s ]] || fail "down.sh left $s"
    if grep -q " ${s}[/ ]" /proc/self/mountinfo; then fail "down.sh left mounts under $s"; fi

    # No process of the host's pid namespace may survive.
    for i in /proc/[0-9]*; do
        if [[ $(readlink "$i/ns/pid" 2>/dev/null) == "$pidns" ]]; then
            fail "process ${i#/proc/} of the host's pid namespace survived down.sh"
        fi
    done
    return 0
}

check_host() { # state_dir pid
    local s=$1 pid=$2 x spid cg
    local ex=("$HERE/exec.sh" "$s")

    x=$("${ex[@]}" systemctl is-system-running) || true
    [[ $x == running || $x == degraded ]] || fail "is-system-running says '$x'"
    ok "[$s] systemctl is-system-running: $x"
    x=$("${ex[@]}" systemctl --failed --plain --no-legend --no-pager)
    [[ -z $x ]] || echo "note [$s] failed units: $x"

    "${ex[@]}" busctl list --no-pager | grep -q '^org.freedesktop.systemd1 ' || fail "busctl list inside"
    ok "[$s] busctl inside"
    DBUS_SYSTEM_BUS_ADDRESS=unix:path=/proc/$pid/root/run/dbus/system_bus_socket \
        busctl list --no-pager | grep -q '^org.freedesktop.systemd1 ' || fail "busctl list from the machine"
    x=$(DBUS_SYSTEM_BUS_ADDRESS=unix:path=/proc/$pid/root/run/dbus/system_bus_socket busctl get-property \
        org.freedesktop.hostname1 /org/freedesktop/hostname1 org.freedesktop.hostname1 Hostname)
    [[ $x == "s \"berth-testhost-$(cat "$s/id")\"" ]] || fail "hostnamed through the bus from outside says $x"
    ok "[$s] busctl from the machine (and bus activation of hostnamed)"

    # A delegated scope, as berthd will create for each container.
    # (In a subshell whose stderr is discarded: bash reports "Killed" when we kill the scope.)
    ( "${ex[@]}" systemd-run --quiet --scope -p Delegate=yes --slice=machine.slice --unit=t1 sleep 5 \
        2>"$WORK/t1.err"; true ) 2>/dev/null &
    local job=$!
    for _ in $(seq 50); do
        x=$("${ex[@]}" systemctl is-active t1.scope) || true
        [[ $x == active ]] && break
        sleep 0.1
    done
    [[ $x == active ]] || fail "t1.scope is '$x'"
    [[ $("${ex[@]}" systemctl show -P Delegate t1.scope) == yes ]] || fail "t1.scope not delegated"
    spid=$("${ex[@]}" cat /sys/fs/cgroup/systemd/machine.slice/t1.scope/cgroup.procs)
    cg=$("${ex[@]}" cat "/proc/$spid/cgroup")
    grep -qx '[0-9]*:name=systemd:/machine.slice/t1.scope' <<<"$cg" || fail "sleep not in t1.scope on name=systemd: $cg"
    grep -qx '0::/machine.slice/t1.scope' <<<"$cg" || fail "sleep not in t1.scope on the unified hierarchy: $cg"
    # Delegation means the payload may make its own sub-cgroups and move itself into them.
    "${ex[@]}" sh -c "mkdir /sys/fs/cgroup/unified/machine.slice/t1.scope/payload &&
        echo $spid > /sys/fs/cgroup/unified/machine.slice/t1.scope/payload/cgroup.procs &&
        grep -qx '0::/machine.slice/t1.scope/payload' /proc/$spid/cgroup" || fail "sub-cgroup in delegated scope"
    # Seen from the machine, that sub-cgroup is inside the host's own subtree.
    x=$(awk -F'\t' '$2 == "cgroup2" {print $4}' "$s/cgroups")
    [[ -d $x/machine.slice/t1.scope/payload ]] || fail "scope not under the host's subtree $x on the machine"
    "${ex[@]}" systemctl kill --signal=KILL t1.scope
    wait "$job" || true
    [[ ! -s $WORK/t1.err ]] || { cat "$WORK/t1.err" >&2; fail "systemd-run printed errors"; }
    rm -f "$WORK/t1.err"
    ok "[$s] systemd-run --scope -p Delegate=yes --slice=machine.slice (sleep $spid in machine.slice/t1.scope)"

    [[ $("${ex[@]}" systemctl is-active systemd-journald) == active ]] || fail "journald not active"
    "${ex[@]}" logger -t berth-selftest "hello from the selftest"
    for _ in $(seq 20); do
        "${ex[@]}" journalctl --no-pager -q -t berth-selftest | grep -q 'hello from the selftest' && break
        sleep 0.1
    done
    "${ex[@]}" journalctl --no-pager -q -t berth-selftest | grep -q 'hello from the selftest' || fail "journal"
    ok "[$s] journald"

    "${ex[@]}" sh -euc '
        d=/var/lib/berth/selftest; mkdir -p $d/upper $d/work $d/merged
        mount -t overlay -o lowerdir=/usr/share/doc,upperdir=$d/upper,workdir=$d/work selftest $d/merged
        echo x > $d/merged/new-file; test -f $d/upper/new-file; test -d $d/merged/bash
        umount $d/merged; rm -rf $d' || fail "overlay with upper under /var/lib/berth"
    ok "[$s] overlayfs with upper/work under /var/lib/berth"

    "${ex[@]}" unshare --pid --fork --mount --net --uts --ipc true || fail "unshare inside"
    ok "[$s] unshare --pid --fork --mount --net --uts --ipc inside"

    set +e
    "${ex[@]}" sh -c 'exit 7'; x=$?
    set -e
    [[ $x == 7 ]] || fail "exit status: got $x, want 7"
    [[ $(echo in | "${ex[@]}" sh -c 'cat; echo err >&2' 2>&1) == $'in\nerr' ]] || fail "stdio passing"
    ok "[$s] exec.sh passes stdin/stdout/stderr and the exit status"

    [[ $("${ex[@]}" hostname) == "berth-testhost-$(cat "$s/id")" ]] || fail "hostname"
    [[ $("${ex[@]}" sh -c 'ls /sys/class/net') == lo ]] || fail "host has interfaces other than lo"
    "${ex[@]}" sh -c 'echo 1 > /proc/sys/kernel/sysrq' 2>/dev/null && fail "/proc/sys/kernel is writable"
    "${ex[@]}" sh -c 'echo 1 > /proc/sys/net/ipv4/ip_forward' || fail "/proc/sys/net is not writable"
    [[ $("${ex[@]}" sh -c 'echo $DBUS_SYSTEM_BUS_ADDRESS' </dev/null) == '' ]] || fail "DBUS_SYSTEM_BUS_ADDRESS leaked"
    [[ $("${ex[@]}" cat /proc/1/cgroup | grep name=systemd) == *':name=systemd:/init.scope' ]] || fail "systemd's cgroup"
    ok "[$s] isolation: hostname, network, read-only /proc/sys (net writable), own cgroup root"
}

echo "canary" >"$WORK/canary"
BEFORE=$(snapshot)

# ---- two hosts at once ------------------------------------------------------------------
A=$WORK/a B=$WORK/b
up "$A"; PA=$UP_PID
up "$B"; PB=$UP_PID
[[ $PA != "$PB" ]] || fail "same PID"
[[ $(cat "$A/id") != "$(cat "$B/id")" ]] || fail "same cgroup id"
check_host "$A" "$PA"
check_host "$B" "$PB"
down "$A" "$PA"
# B must be unaffected by A's teardown.
"$HERE/exec.sh" "$B" systemctl is-system-running >/dev/null || fail "B broken by A's teardown"
down "$B" "$PB"
ok "two concurrent hosts"

# ---- repeated up/down -------------------------------------------------------------------
for i in $(seq "$CYCLES"); do
    S=$WORK/cycle$i
    up "$S"; P=$UP_PID
    "$HERE/exec.sh" "$S" systemctl is-system-running >/dev/null || true
    down "$S" "$P"
    [[ $(snapshot) == "$BEFORE" ]] || { diff <(echo "$BEFORE") <(snapshot) >&2 || true; fail "cycle $i left traces"; }
done
ok "$CYCLES up/down cycles leave no mounts, cgroups or processes"

[[ $(cat "$WORK/canary") == canary ]] || fail "machine's /tmp was touched"
AFTER=$(snapshot)
[[ $AFTER == "$BEFORE" ]] || { diff <(echo "$BEFORE") <(echo "$AFTER") >&2 || true; fail "machine changed"; }
ok "machine's mounts, cgroups, /run and /tmp unchanged"

echo "up.sh times (s):   $(tr '\n' ' ' <"$WORK/up.time")"
echo "down.sh times (s): $(tr '\n' ' ' <"$WORK/down.time")"
echo "selftest: all passed"
