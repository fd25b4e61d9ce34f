# shellcheck shell=bash
# Shared helpers for the disposable systemd test host (up.sh, exec.sh, down.sh, boot-inner.sh).
# Sourced, never executed. Callers have already done `set -euo pipefail`.
#
# Files a host keeps in its STATE_DIR (all plain text, one value per file unless noted):
#   id            random id; the cgroup subtrees are named berth-testhost-<id>
#   cgroups       one line per cgroup hierarchy of the machine (see hierarchies_record):
#                 <mount point relative to /sys/fs/cgroup>\t<fstype>\t<mount options or ->\t<subtree dir>
#   pid           machine-visible PID of the host's systemd (PID 1 of its pid namespace)
#   pid.start     start time (field 22 of /proc/PID/stat) of that PID, so that down.sh never
#                 kills a recycled PID that someone else now owns
#   unshare.pid   PID (and .start) of the util-linux `unshare` process that forked systemd
#   console.log   the host's console: systemd's stdout/stderr and anything written to /dev/console
#   layer/        tmpfs holding the overlay's upper and work dirs
#   merged/       the host's root filesystem (overlay: lower = machine's /, upper = layer/upper)

# With `set -e` a failing command ends the script without a word. Remember the last command
# that failed (ERR; -E: also inside functions) and name it on exit if the script fails
# without having said why (die). Printing from the ERR trap directly would also report
# harmless failures inside command substitutions; a variable set there dies with the subshell.
set -E
BERTH_LAST_ERR=''
BERTH_DIED=0
trap 'BERTH_LAST_ERR="\"$BASH_COMMAND\" failed (exit $?) at line $LINENO"' ERR
report_unexpected_exit() {
    if (($1 != 0 && BERTH_DIED == 0)) && [[ -n $BERTH_LAST_ERR ]]; then
        printf '%s: error: %s\n' "${0##*/}" "$BERTH_LAST_ERR" >&2
    fi
}
trap 'report_unexpected_exit $?' EXIT

# PATH for everything run inside the host (used by boot-inner.sh and exec.sh).
# shellcheck disable=SC2034
HOST_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

die() {
    BERTH_DIED=1
    printf '%s: error: %s\n' "${0##*/}" "$*" >&2
    exit 1
}

warn() {
    printf '%s: warning: %s\n' "${0##*/}" "$*" >&2
}

# Absolute, symlink-free path of STATE_DIR (it need not exist yet): mount points and
# /proc/self/mountinfo use canonical paths, so every comparison below needs one.
canonical_state_dir() {
    [[ -n ${1:-} ]] || die "missing STATE_DIR argument"
    realpath -m -- "$1"
}

# Start time of a PID in clock ticks since boot (field 22 of /proc/PID/stat), or nothing
# if the PID does not exist. Field 2 (comm) may contain spaces, so cut after the last ')'.
proc_start_time() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
    stat=${stat##*) }
    # After "comm) " the fields start at field 3, so field 22 is word 20.
    awk '{print $20}' <<<"$stat"
}

# True if PID $1 is alive and still the process we recorded (same start time $2). A zombie
# counts as gone: it has released everything but its PID, and once up.sh has exited, the
# zombies of its children are reaped by the machine's PID 1, which may take a second.
same_process_alive() {
    local pid=$1 start=$2 stat
    [[ -n $pid && -n $start ]] || return 1
    stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    read -r -a f <<<"$stat"
    [[ ${f[0]} != Z && ${f[19]} == "$start" ]]
}

# Print one line per cgroup hierarchy this process belongs to, as
#   <mount point relative to /sys/fs/cgroup>\t<fstype>\t<mount options or ->\t<our cgroup path>
# The host must sit in a subtree of its own on EVERY hierarchy (otherwise its systemd would
# manage, and on teardown we would miss, cgroups of the machine), so we mirror whatever the
# machine has: the hybrid layout (v1 controllers + name=systemd + cgroup2 "unified") or a pure
# cgroup2 mount at /sys/fs/cgroup itself.
hierarchies_list() {
    local id ctrls path mnt fstype opts rel
    while IFS=: read -r id ctrls path; do
        mnt='' fstype='' opts=''
        if [[ $id == 0 ]]; then
            # cgroup2: the one mount of type cgroup2 under /sys/fs/cgroup.
            read -r mnt fstype < <(awk '$0 ~ / - cgroup2 / && $5 ~ "^/sys/fs/cgroup" {print $5, "cgroup2"; exit}' /proc/self/mountinfo) || true
            # "-": no options. (Never an empty field: tab is IFS whitespace to `read`, so
            # an empty field between two tabs would vanish and shift the fields after it.)
            opts=-
        else
            # cgroup v1: the mount whose super options contain every controller of this
            # hierarchy ("cpu", "cpu,cpuacct" or "name=systemd").
            mnt=$(awk -v want="$ctrls" '
                $0 ~ / - cgroup / && $5 ~ "^/sys/fs/cgroup" {
                    n = split($0, halves, " - "); split(halves[2], f, " ")
                    nso = split(f[3], so, ","); delete have
                    for (i = 1; i <= nso; i++) have[so[i]] = 1
                    nw = split(want, w, ","); ok = 1
                    for (i = 1; i <= nw; i++) if (!(w[i] in have)) ok = 0
                    if (ok) { print $5; exit }
                }' /proc/self/mountinfo)
            fstype=cgroup
            # A named hierarchy without controllers must be mounted with "none,name=X";
            # plain "name=X" would ask for every unbound controller too.
            if [[ $ctrls == name=* ]]; then opts="none,$ctrls"; else opts=$ctrls; fi
        fi
        if [[ -z $mnt ]]; then
            # A hierarchy in /proc/self/cgroup that is not mounted under /sys/fs/cgroup
            # (e.g. one mounted elsewhere by some tool): we cannot place the host in it.
            die "cgroup hierarchy '$id:$ctrls' is not mounted under /sys/fs/cgroup; cannot give the host its own subtree there"
        fi
        rel=${mnt#/sys/fs/cgroup}
        rel=${rel#/}
        printf '%s\t%s\t%s\t%s\n' "${rel:-.}" "$fstype" "$opts" "$path"
    done </proc/self/cgroup
}

# Subtree directories (absolute, on the machine) recorded in STATE_DIR/cgroups.
recorded_subtrees() {
    local state=$1
    [[ -f $state/cgroups ]] || return 0
    awk -F'\t' '{print $4}' "$state/cgroups"
}

# Move process $2 into every recorded subtree (or a child $3 of it, created if missing).
# cgroup v1 cpuset needs cpus/mems filled in before it accepts a task.
cgroup_attach() {
    local state=$1 pid=$2 child=${3:-} dir
    while IFS= read -r dir; do
        [[ -n $dir ]] || continue
        if [[ -n $child ]]; then
            dir=$dir/$child
            if [[ ! -d $dir ]]; then
                mkdir -p "$dir"
                cpuset_fill "$dir"
            fi
        fi
        echo "$pid" >"$dir/cgroup.procs" || die "cannot move PID $pid into cgroup $dir"
    done < <(recorded_subtrees "$state")
}

# A new v1 cpuset cgroup starts with empty cpuset.cpus/cpuset.mems and refuses tasks until
# they are set; copy them from the parent.
cpuset_fill() {
    local dir=$1
    if [[ -f $dir/cpuset.cpus && -z $(cat "$dir/cpuset.cpus") ]]; then
        cat "$dir/../cpuset.cpus" >"$dir/cpuset.cpus"
        cat "$dir/../cpuset.mems" >"$dir/cpuset.mems"
    fi
}
