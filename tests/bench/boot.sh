#!/usr/bin/env bash
# Boot time of an OS container: `berthctl run -d --boot` beside `systemd-nspawn -b` of the same
# tree, in the same run, in ONE disposable systemd host (tests/host/). The tree is made from the
# machine's own packages (tests/fixtures/make-boot-tree.sh) on the host's tmpfs /srv. Each run
# times from the start command until `systemctl -M NAME is-system-running --wait` (through
# machined, the container's own bus: the same probe for both) says running or degraded, i.e.
# the default target (multi-user/graphical) is reached; then the container is powered off
# (machinectl poweroff) and that is timed too. Prints the median of each and the ratio.
#
# Needs root and systemd-nspawn. Release binaries by default; for a debug build:
#   BENCH_INSTALL_CMD='make install DESTDIR=$ROOT PROFILE=dev >&2' tests/bench/boot.sh
# Environment: BENCH_RUNS (5).
set -euo pipefail
cd "$(dirname "$0")/../.."

RUNS=${BENCH_RUNS:-5}
TREE=/srv/boot-tree

BENCH_NAME=bench-boot
. tests/bench/lib.sh
if [[ -z ${BENCH_INSTALL_CMD:-} ]]; then bench_preflight; fi
command -v systemd-nspawn >/dev/null || die "systemd-nspawn is required (systemd-container)"

bench_boot_host
H "$PWD/tests/fixtures/make-boot-tree.sh" "$TREE" || die "cannot make the boot tree"
log "tree: $TREE ($(H du -sh "$TREE" | cut -f1)), systemd $(H systemctl --version | awk 'NR==1 {print $2}'), kernel $(uname -r), $(nproc) CPUs"

now_ms() { date +%s%3N; }

# Wait until the machine's own manager is up; fail after 60 s.
wait_up() {
    local m=$1 t0 s
    t0=$(now_ms)
    while :; do
        s=$(H systemctl -M "$m" is-system-running --wait 2>/dev/null || true)
        [[ $s == running || $s == degraded ]] && return 0
        (($(now_ms) - t0 > 60000)) && die "$m did not come up (last state: ${s:-none})"
        sleep 0.05
    done
}

wait_gone() {
    local m=$1 t0
    t0=$(now_ms)
    while H machinectl show "$m" -p Name >/dev/null 2>&1; do
        (($(now_ms) - t0 > 60000)) && die "$m did not power off"
        sleep 0.05
    done
}

median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : int((a[NR/2]+a[NR/2+1])/2)}'; }

# nspawn as berth runs it: a user namespace of its own (idmapped tree), a network namespace,
# registered with machined, the console not attached to anything.
# nspawn's -U cannot mount a proc of its own in the test host (whose /proc is partly covered:
# the kernel's mount_too_revealing(); berth mounts a fresh one first): then it runs without.
NSPAWN="systemd-nspawn -b -q -D $TREE --private-network --console=passive --register=yes"
if H systemd-run -q --wait --unit=bench-nspawn-u --property=RuntimeMaxSec=20 \
    systemd-nspawn -q -D "$TREE" -U --private-network --register=no /bin/true >/dev/null 2>&1; then
    NSPAWN="$NSPAWN -U"
    log "systemd-nspawn: with -U (a user namespace, as berth)"
else
    log "systemd-nspawn: -U fails in the test host (mount proc: EPERM); WITHOUT a user namespace (berth has one)"
fi
H systemd-run -q --unit=bench-nspawn-probe $NSPAWN --machine=probe >/dev/null ||
    die "systemd-nspawn cannot start"
wait_up probe
H machinectl poweroff probe
wait_gone probe

: >"$OUT/berth-up" >"$OUT/berth-down" >"$OUT/nspawn-up" >"$OUT/nspawn-down"
for i in $(seq 1 "$RUNS"); do
    t0=$(now_ms)
    H berthctl run -d --boot --name "bb$i" -D "$TREE" >/dev/null
    wait_up "bb$i"
    t1=$(now_ms)
    H machinectl poweroff "bb$i"
    wait_gone "bb$i"
    t2=$(now_ms)
    H berthctl rm "bb$i" >/dev/null
    echo $((t1 - t0)) >>"$OUT/berth-up"
    echo $((t2 - t1)) >>"$OUT/berth-down"

    t0=$(now_ms)
    H systemd-run -q --unit="bench-nspawn-$i" $NSPAWN --machine="bn$i" >/dev/null
    wait_up "bn$i"
    t1=$(now_ms)
    H machinectl poweroff "bn$i"
    wait_gone "bn$i"
    t2=$(now_ms)
    echo $((t1 - t0)) >>"$OUT/nspawn-up"
    echo $((t2 - t1)) >>"$OUT/nspawn-down"
    log "run $i: berth up $(tail -1 "$OUT/berth-up") ms, down $(tail -1 "$OUT/berth-down") ms; nspawn up $(tail -1 "$OUT/nspawn-up") ms, down $(tail -1 "$OUT/nspawn-down") ms"
done

bu=$(median <"$OUT/berth-up")
bd=$(median <"$OUT/berth-down")
nu=$(median <"$OUT/nspawn-up")
nd=$(median <"$OUT/nspawn-down")
log "== boot to the default target (median of $RUNS) =="
log "berth --boot:        up $bu ms, poweroff $bd ms"
log "systemd-nspawn -b:   up $nu ms, poweroff $nd ms"
log "ratio berth/nspawn:  up $(awk -v a="$bu" -v b="$nu" 'BEGIN {printf "%.2f", a/b}'), poweroff $(awk -v a="$bd" -v b="$nd" 'BEGIN {printf "%.2f", a/b}')"
log "results in $OUT"
