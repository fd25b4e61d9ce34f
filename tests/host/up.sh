#!/bin/bash
# Boot a disposable systemd host for berth's integration tests.
#
# Usage: tests/host/up.sh STATE_DIR [--install-cmd 'CMD'] [--timeout SECONDS]
#
#   STATE_DIR       where the host keeps its layers, PID files and console log. Created if
#                   missing; if it exists it must be empty. Give every concurrent host its own.
#   --install-cmd   run `bash -c CMD` before boot, on the machine, with $ROOT exported as the
#                   host's root directory, e.g. --install-cmd 'make install DESTDIR=$ROOT'.
#                   (Single-quote it so that $ROOT is expanded by up.sh, not by your shell.)
#                   Its stdout is sent to stderr: up.sh's stdout carries only the PID.
#   --timeout       how long to wait for the boot (default 60, or $BERTH_TESTHOST_TIMEOUT).
#
# The host: systemd 252 as PID 1 of fresh pid, mount, uts, ipc, net and cgroup namespaces, on
# an overlay whose lower layer is the machine's / and whose upper layer is a tmpfs, with its
# own tmpfs /run, /tmp and /var/lib/berth, its own cgroup subtree on every hierarchy and only
# a loopback interface. It boots basic.target only (not the machine's other services).
#
# On success prints the machine-visible PID of the host's systemd (also in STATE_DIR/pid) and
# exits 0. The host's system bus is then reachable from the machine as
#   DBUS_SYSTEM_BUS_ADDRESS=unix:path=/proc/PID/root/run/dbus/system_bus_socket
# and commands run inside with tests/host/exec.sh STATE_DIR CMD...; tests/host/down.sh
# STATE_DIR removes everything again.
#
# On failure prints the reason and the end of the host's console on stderr, tears down
# whatever it made (via down.sh) and exits non-zero.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tests/host/lib.sh
. "$HERE/lib.sh"

usage() {
    echo "usage: ${0##*/} STATE_DIR [--install-cmd 'CMD'] [--timeout SECONDS]" >&2
    exit 2
}

STATE=''
INSTALL_CMD=''
TIMEOUT=${BERTH_TESTHOST_TIMEOUT:-60}
while (($#)); do
    case $1 in
    --install-cmd) (($# >= 2)) || usage; INSTALL_CMD=$2; shift 2 ;;
    --install-cmd=*) INSTALL_CMD=${1#*=}; shift ;;
    --timeout) (($# >= 2)) || usage; TIMEOUT=$2; shift 2 ;;
    --timeout=*) TIMEOUT=${1#*=}; shift ;;
    -h | --help) usage ;;
    -*) echo "${0##*/}: unknown option $1" >&2; usage ;;
    *) [[ -z $STATE ]] || usage; STATE=$1; shift ;;
    esac
done
[[ -n $STATE ]] || usage
[[ $TIMEOUT =~ ^[0-9]+$ ]] || die "--timeout must be a whole number of seconds, not '$TIMEOUT'"
[[ $EUID == 0 ]] || die "must run as root (it mounts, creates namespaces and cgroups)"
STATE=$(canonical_state_dir "$STATE")
[[ $STATE != / ]] || die "STATE_DIR must not be /"
# The path goes into overlayfs mount options, where ',' ':' and '\' are separators or escapes,
# and into mountinfo, where whitespace is escaped: keep it plain.
[[ $STATE =~ ^[A-Za-z0-9/._+@-]+$ ]] || die "STATE_DIR '$STATE' may contain only letters, digits and / . _ + @ -"

for tool in unshare nsenter script busctl mount umount findmnt mountpoint pivot_root mknod setsid; do
    command -v "$tool" >/dev/null || die "required tool '$tool' not found"
done
[[ -x /lib/systemd/systemd ]] || die "/lib/systemd/systemd not found (is systemd installed?)"
[[ -e /usr/share/dbus-1/system.conf ]] || die "dbus (the system bus daemon) is not installed"
grep -qw overlay /proc/filesystems || modprobe overlay 2>/dev/null || true
grep -qw overlay /proc/filesystems || die "the kernel has no overlayfs"

# Claim STATE_DIR. mkdir of layer/ is the lock: it fails if another up.sh got there first.
if [[ -e $STATE ]]; then
    [[ -d $STATE ]] || die "$STATE exists and is not a directory"
    [[ -z $(ls -A "$STATE") ]] || die "$STATE is not empty (a host already up there? run down.sh $STATE first)"
fi
mkdir -p "$STATE"
mkdir "$STATE/layer" || die "cannot claim $STATE"

# From here on, any failure tears down what was made. down.sh is idempotent and copes with
# every half-made state, so it is simply called on whatever exists.
SUCCESS=0
on_exit() {
    local rc=$?
    report_unexpected_exit "$rc"
    ((SUCCESS)) && return 0
    ((rc != 0)) || rc=1
    {
        echo "${0##*/}: boot of the test host in $STATE failed (exit $rc)"
        if [[ -s $STATE/console.log ]]; then
            echo "---- last 40 lines of the host's console ($STATE/console.log) ----"
            tail -n 40 "$STATE/console.log" | tr -d '\r'
            echo "---- end of console ----"
        fi
        if [[ -n ${HOST_PID:-} ]] && same_process_alive "$HOST_PID" "$(cat "$STATE/pid.start" 2>/dev/null)"; then
            echo "---- units that failed in the host ----"
            "$HERE/exec.sh" "$STATE" systemctl --no-pager --failed 2>&1 | tail -n 20 || true
            echo "---- last 30 journal lines of the host ----"
            "$HERE/exec.sh" "$STATE" journalctl --no-pager -n 30 2>&1 || true
        fi
        echo "${0##*/}: tearing down"
        "$HERE/down.sh" "$STATE" || echo "${0##*/}: down.sh $STATE failed too; clean up by hand"
    } >&2
    exit "$rc"
}
trap on_exit EXIT
# Turn SIGINT/SIGTERM into a normal exit so that the EXIT trap tears down.
trap 'exit 130' INT
trap 'exit 143' TERM

T0=$(date +%s.%N)

# ---- cgroups: a subtree of our own on every hierarchy ----------------------------------------
# The subtree sits below the cgroup up.sh itself runs in (not at the hierarchy root), so the
# host stays inside whatever limits and accounting the caller is under. The random id makes
# concurrent hosts distinct; it is kept in STATE_DIR so that down.sh removes exactly these.
ID=$(od -An -N4 -tx1 /dev/urandom | tr -d ' \n')
echo "$ID" >"$STATE/id"
# (Into a variable first: a failure inside `< <(...)` would go unnoticed.)
HIERARCHIES=$(hierarchies_list)
: >"$STATE/cgroups"
while IFS=$'\t' read -r rel fstype opts path; do
    subtree=$(realpath -m "/sys/fs/cgroup/$rel/$path/berth-testhost-$ID")
    printf '%s\t%s\t%s\t%s\n' "$rel" "$fstype" "$opts" "$subtree" >>"$STATE/cgroups"
done <<<"$HIERARCHIES"
while IFS= read -r dir; do
    mkdir "$dir" || die "cannot create cgroup $dir"
    cpuset_fill "$dir"
    # Let the host's own v1 cpuset children inherit cpus/mems, so that they accept tasks.
    if [[ -f $dir/cpuset.cpus && -f $dir/cgroup.clone_children ]]; then
        echo 1 >"$dir/cgroup.clone_children"
    fi
done < <(recorded_subtrees "$STATE")

# ---- root filesystem ---------------------------------------------------------------------
# The upper layer must be a tmpfs: it is thrown away on teardown, and writes in the host never
# reach the machine's disk. lower=/ shows only the root filesystem itself, not the mounts on
# top of it (/proc, /sys, /dev, ... are made fresh by boot-inner.sh).
mount -t tmpfs -o mode=755 berth-testhost-layer "$STATE/layer"
mkdir "$STATE/layer/upper" "$STATE/layer/work" "$STATE/merged"
mount -t overlay -o "lowerdir=/,upperdir=$STATE/layer/upper,workdir=$STATE/layer/work" \
    berth-testhost-root "$STATE/merged"
ROOT=$STATE/merged
# Own /run and /tmp: systemd-tmpfiles wipes /tmp at boot, and /run would hold a second
# dbus/systemd runtime directory on top of the machine's. Own /var/lib/berth: overlayfs refuses
# an upper layer on overlayfs, and berthd puts containers' writable layers there.
mount -t tmpfs -o mode=755,nosuid,nodev berth-testhost-run "$ROOT/run"
mount -t tmpfs -o mode=1777,nosuid,nodev berth-testhost-tmp "$ROOT/tmp"
mkdir -p "$ROOT/var/lib/berth"
mount -t tmpfs -o mode=700 berth-testhost-state "$ROOT/var/lib/berth"
# Own /srv, a filesystem of its own as on a real machine: root directories given with
# --directory live there, and berth maps them into user namespaces with idmapped mounts, which
# overlayfs (the host's root) does not support.
mount -t tmpfs -o mode=755 berth-testhost-srv "$ROOT/srv"

# A machine id of its own, so the host's journal and D-Bus id are not the machine's.
systemd-id128 new >"$ROOT/etc/machine-id"
echo "berth-testhost-$ID" >"$ROOT/etc/hostname"

# Mask units that would act on the machine rather than on the host. Most are already skipped
# in a container (ConditionVirtualization=!container, read-only /sys and /proc/sys), masking
# makes sure: kernel-global sysctls, kernel modules, binfmt_misc, pstore, the clock (NTP),
# debugfs/tracefs/configfs (global kernel knobs, writable even with /sys read-only), SSD trim
# and filesystem scrubbing, and apt's network timers. None is needed by berth.
for unit in \
    systemd-sysctl.service systemd-modules-load.service \
    systemd-binfmt.service proc-sys-fs-binfmt_misc.automount proc-sys-fs-binfmt_misc.mount \
    systemd-pstore.service systemd-timesyncd.service systemd-time-wait-sync.service \
    systemd-repart.service systemd-firstboot.service \
    sys-kernel-debug.mount sys-kernel-tracing.mount sys-kernel-config.mount \
    fstrim.timer e2scrub_all.timer e2scrub_reap.service \
    apt-daily.timer apt-daily-upgrade.timer man-db.timer dpkg-db-backup.timer \
    podman-auto-update.timer; do
    ln -sfn /dev/null "$ROOT/etc/systemd/system/$unit"
done

# ---- install -----------------------------------------------------------------------------
if [[ -n $INSTALL_CMD ]]; then
    echo "${0##*/}: running install command with ROOT=$ROOT: $INSTALL_CMD" >&2
    (export ROOT && bash -c "$INSTALL_CMD") >&2 || die "install command failed (exit $?): $INSTALL_CMD"
fi

# ---- boot --------------------------------------------------------------------------------
# Process tree (machine's view):
#   script          allocates the pty that becomes the host's /dev/console, copies it to
#                   console.log; stays in the caller's cgroup
#    └ unshare      moves itself into the subtrees, creates the namespaces, forks; up.sh then
#                   moves it back out (see boot-inner.sh for why)
#       └ boot-inner.sh → exec systemd   PID 1 of the new pid namespace
# setsid: the host must not share the caller's session or terminal, and a Ctrl-C meant for a
# test run must not hit the host's console.
LAUNCH=$(printf 'set -euo pipefail; . %q; cgroup_attach %q $$; exec unshare --pid --fork --mount --uts --ipc --net --cgroup --propagation private -- %q %q' \
    "$HERE/lib.sh" "$STATE" "$HERE/boot-inner.sh" "$STATE")
SHELL=/bin/bash setsid script --quiet --flush --return --command "$LAUNCH" "$STATE/console.log" \
    </dev/null >/dev/null 2>&1 &
SCRIPT_PID=$!
echo "$SCRIPT_PID $(proc_start_time "$SCRIPT_PID")" >"$STATE/script.pid"
# setsid execs in place unless its caller leads a process group (then it forks, and $! would
# be a short-lived parent). Without job control a background job never leads one; check.
for _ in $(seq 100); do
    [[ $(cat "/proc/$SCRIPT_PID/comm" 2>/dev/null || true) == script ]] && break
    sleep 0.01
done
[[ $(cat "/proc/$SCRIPT_PID/comm" 2>/dev/null || true) == script ]] ||
    die "PID $SCRIPT_PID did not become 'script' (did setsid fork, or script fail to start?)"

# Child of $1 whose command name is $2 (the first one), or nothing.
child_named() {
    local c
    for c in $(cat /proc/"$1"/task/*/children 2>/dev/null); do
        if [[ $(cat "/proc/$c/comm" 2>/dev/null) == "$2" ]]; then
            echo "$c"
            return 0
        fi
    done
}

wait_child() { # parent name what
    local p=$1 name=$2 c=''
    for _ in $(seq 100); do
        c=$(child_named "$p" "$name")
        [[ -n $c ]] && { echo "$c"; return 0; }
        [[ -d /proc/$p ]] || break
        sleep 0.05
    done
    die "the $3 did not start"
}
UNSHARE_PID=$(wait_child "$SCRIPT_PID" unshare "unshare process")
echo "$UNSHARE_PID $(proc_start_time "$UNSHARE_PID")" >"$STATE/unshare.pid"
# boot-inner.sh is a bash script until it execs systemd.
HOST_PID=$(wait_child "$UNSHARE_PID" boot-inner.sh "host's PID 1")
echo "$HOST_PID" >"$STATE/pid"
proc_start_time "$HOST_PID" >"$STATE/pid.start"
nspid=$(awk '/^NSpid:/ {print $NF}' "/proc/$HOST_PID/status")
[[ $nspid == 1 ]] || die "PID $HOST_PID is PID $nspid in its namespace, expected 1"

# The unshare process had to be in the subtree when it created the cgroup namespace (the
# namespace's root is the creator's cgroup). Now move it back to the caller's cgroups, so that
# the host's root cgroup holds only the host's processes.
while IFS= read -r dir; do
    echo "$UNSHARE_PID" >"$(dirname "$dir")/cgroup.procs" ||
        die "cannot move the unshare process out of $dir"
done < <(recorded_subtrees "$STATE")
touch "$STATE/release"

# ---- wait until the host is up -------------------------------------------------------------
BUS="unix:path=/proc/$HOST_PID/root/run/dbus/system_bus_socket"
DEADLINE=$(($(date +%s) + TIMEOUT))
state=''
while :; do
    same_process_alive "$HOST_PID" "$(cat "$STATE/pid.start")" ||
        die "the host's systemd (PID $HOST_PID) exited during boot"
    if [[ -S /proc/$HOST_PID/root/run/dbus/system_bus_socket ]]; then
        # Through the system bus from the machine: proves dbus and systemd's bus API both work.
        state=$(DBUS_SYSTEM_BUS_ADDRESS=$BUS timeout 5 busctl --system --timeout=2 get-property \
            org.freedesktop.systemd1 /org/freedesktop/systemd1 org.freedesktop.systemd1.Manager \
            SystemState 2>/dev/null) || state=''
        state=${state#s }
        state=${state//\"/}
        case $state in
        running | degraded) break ;;
        maintenance | stopping | offline) die "the host's systemd reports state '$state'" ;;
        esac
    fi
    (($(date +%s) < DEADLINE)) ||
        die "the host did not finish booting within ${TIMEOUT}s (last state: '${state:-no answer on the system bus}')"
    sleep 0.05
done

# And from inside, the way tests will use it.
inside=$("$HERE/exec.sh" "$STATE" systemctl is-system-running 2>&1) || true
case $inside in
running | degraded) ;;
*) die "systemctl is-system-running inside the host says '$inside'" ;;
esac

T1=$(date +%s.%N)
SUCCESS=1
echo "${0##*/}: host up in $STATE: PID $HOST_PID, state $state, $(awk -v a="$T0" -v b="$T1" 'BEGIN {printf "%.2f", b - a}') s" >&2
if [[ $state == degraded ]]; then
    echo "${0##*/}: failed units in the host:" >&2
    "$HERE/exec.sh" "$STATE" systemctl --no-pager --failed --plain --no-legend >&2 || true
fi
echo "$HOST_PID"
