#!/usr/bin/env bash
# `make bench-network`: what a container's network costs at start (issue 10), in ONE disposable
# systemd host (tests/host/; its network namespace is its own, so no traffic leaves it):
#   1. start p50 of `/bin/true` with a private bridged network minus without one, for
#        berth:  berthctl run --rm --network bridge   vs --network none
#        nspawn: systemd-nspawn --network-veth        vs --private-network
#        podman: podman run --rm (default bridge)     vs --network=none
#      (hyperfine --warmup 3, $BENCH_RUNS runs each; the goal for berth: <= 5 ms);
#   2. $BENCH_CONTAINERS (100) detached containers started on one bridge, one after the other
#      and then $BENCH_PARALLEL (8) at a time, total wall time (goal: <= 2 s), each with its
#      own address, then removed; podman's default bridge beside, at the same parallelism.
# Container-to-container throughput over the bridge (iperf3) is in `make bench-cargo`.
#
# Needs root and the release binaries. Environment: BENCH_RUNS (30), BENCH_CONTAINERS (100),
# BENCH_PARALLEL (8), BENCH_OUT (where results are kept).
set -euo pipefail
cd "$(dirname "$0")/../.."

RUNS=${BENCH_RUNS:-30}
NCT=${BENCH_CONTAINERS:-100}
PAR=${BENCH_PARALLEL:-8}
ROOTDIR=/srv/bench-root

BENCH_NAME=bench-network
. tests/bench/lib.sh
bench_preflight
bench_packages hyperfine:hyperfine podman:podman systemd-nspawn:systemd-container python3:python3
command -v hyperfine >/dev/null || die "hyperfine is required (apt-get install hyperfine)"

bench_boot_host
log "host PID $HOST_PID; berth $(H berthctl --version 2>/dev/null || echo '(version unknown)'), kernel $(uname -r), $(nproc) CPUs"
H bash -c "rm -rf $ROOTDIR && mkdir -p /srv && cp -a /usr/local/lib/berth/images/default $ROOTDIR"

# ---- the commands, each checked once -------------------------------------------------------
declare -A CMD=()
try() { # name command
    if H bash -c "$2" >"$OUT/$1.err" 2>&1; then
        CMD[$1]=$2
    else
        log "$1: CANNOT RUN ($2): $(tail -n2 "$OUT/$1.err" | tr '\n' ' '): left out"
    fi
}
try berth-none "berthctl run --rm --network none --directory $ROOTDIR -- /bin/true"
try berth-bridge "berthctl run --rm --network bridge --directory $ROOTDIR -- /bin/true"
[[ -n ${CMD[berth-none]:-} && -n ${CMD[berth-bridge]:-} ]] || die "berth cannot run both ways"
if H sh -c 'command -v systemd-nspawn' >/dev/null; then
    try nspawn-none "systemd-nspawn -q -D $ROOTDIR --register=no --private-network /bin/true"
    try nspawn-veth "systemd-nspawn -q -D $ROOTDIR --register=no --network-veth /bin/true"
fi
if H sh -c 'command -v podman' >/dev/null; then
    # podman's storage on a tmpfs: overlayfs refuses an upper dir on the host's overlay root.
    H bash -c 'mkdir -p /var/lib/containers && mount -t tmpfs -o mode=700 bench-podman /var/lib/containers'
    if H bash -c "tar -C $ROOTDIR -c . | podman --storage-driver=vfs import - bench-root" >"$OUT/podman-import.log" 2>&1; then
        P="podman --storage-driver=vfs --events-backend=file"
        try podman-none "$P run --rm --network=none bench-root /bin/true"
        try podman-bridge "$P run --rm bench-root /bin/true"
    else
        log "podman: import failed: $(tail -n1 "$OUT/podman-import.log"): left out"
    fi
fi

# ---- 1. start latency with and without a network -------------------------------------------
log ""
log "== start latency of /bin/true, hyperfine --warmup 3 --runs $RUNS (inside the host) =="
for name in berth-none berth-bridge nspawn-none nspawn-veth podman-none podman-bridge; do
    [[ -n ${CMD[$name]:-} ]] || continue
    log "-- $name: ${CMD[$name]}"
    if H hyperfine -N -i --style none --warmup 3 --runs "$RUNS" --export-json "/tmp/$name.json" "${CMD[$name]}" >/dev/null; then
        H cat "/tmp/$name.json" >"$OUT/$name.json"
    else
        log "$name: hyperfine failed: left out"
    fi
done
python3 - "$OUT" <<'EOF'
import json, os, statistics, sys
out = sys.argv[1]
def p50(name):
    path = os.path.join(out, name + ".json")
    if not os.path.exists(path):
        return None
    r = json.load(open(path))["results"][0]
    codes = r.get("exit_codes") or [0] * len(r["times"])
    ok = [t for t, c in zip(r["times"], codes) if c == 0]
    if len(ok) < len(codes):
        print("WARNING: %s: %d of %d runs failed (left out)" % (name, len(codes) - len(ok), len(codes)))
    return statistics.median(ok) * 1e3 if ok else None
print("%-10s %16s %16s %12s" % ("tool", "p50 no network", "p50 network", "cost ms"))
cost = {}
for tool, a, b in (("berth", "berth-none", "berth-bridge"), ("nspawn", "nspawn-none", "nspawn-veth"),
                   ("podman", "podman-none", "podman-bridge")):
    x, y = p50(a), p50(b)
    if x is None or y is None:
        print("%-10s %16s %16s %12s" % (tool, "n/a", "n/a", "n/a"))
        continue
    cost[tool] = y - x
    print("%-10s %16.1f %16.1f %12.1f" % (tool, x, y, y - x))
print()
if "berth" in cost:
    print("berth's network cost %.1f ms (goal <= 5 ms): %s" % (cost["berth"], "met" if cost["berth"] <= 5 else "NOT met"))
    for t in ("nspawn", "podman"):
        if t in cost and cost["berth"] > 0:
            print("  %s's cost / berth's: %.1fx" % (t, cost[t] / cost["berth"]))
EOF

# ---- 2. many containers on one bridge ------------------------------------------------------
# Once one after the other (a shell loop), once $PAR at a time (a unit file set or a script
# starting many); each time every container has its own address and everything is removed.
many() { # label parallelism
    log ""
    log "== $NCT detached containers on one bridge (berthctl run -d ... -- sleep 1000, $1) =="
    H bash -s -- "$ROOTDIR" "$NCT" "$2" <<'EOF'
set -euo pipefail
root=$1 n=$2 par=$3
t0=$(date +%s%N)
seq 1 "$n" | xargs -P "$par" -I{} berthctl run -d --name "bn{}" --directory "$root" -- sleep 1000 >/dev/null
t1=$(date +%s%N)
addrs=$(for i in $(seq 1 "$n"); do berthctl show "bn$i" | sed -n 's/^Addresses=//p' | awk '{print $1}'; done | sort -u | wc -l)
veths=$(ip -o link | grep -c ' vb-' || true)
ms=$(( (t1 - t0) / 1000000 ))
echo "started $n in $ms ms ($(( ms * 1000 / n )) us each); distinct addresses: $addrs; host-side veths: $veths"
if (( ms <= 2000 )); then echo "goal (<= 2 s): met"; else echo "goal (<= 2 s): NOT met"; fi
seq 1 "$n" | xargs -P "$par" -I{} berthctl remove -f "bn{}" >/dev/null
left=$(ip -o link | grep -c ' vb-' || true)
echo "after removing them: host-side veths $left"
EOF
}
many "one after the other" 1
many "$PAR at a time" "$PAR"
if [[ -n ${CMD[podman-bridge]:-} ]]; then
    log ""
    log "== peer: $NCT detached podman containers on its default bridge, $PAR at a time =="
    H bash -s -- "$NCT" "$PAR" "$P" <<'EOF'
set -euo pipefail
n=$1 par=$2 p=$3
t0=$(date +%s%N)
seq 1 "$n" | xargs -P "$par" -I{} $p run -d --name "pn{}" bench-root /bin/sleep 1000 >/dev/null
t1=$(date +%s%N)
echo "podman started $n in $(( (t1 - t0) / 1000000 )) ms"
# shellcheck disable=SC2046
$p rm -f -t 0 $(seq -f 'pn%g' 1 "$n") >/dev/null
EOF
fi
log ""
log "results in $OUT"
