#!/usr/bin/env bash
# `make bench-stats`: what collecting resource stats of many running containers costs, berth
# vs systemd-cgtop vs podman, and berthd's own CPU time per GetStats.
#
# Everything runs in ONE disposable systemd host (tests/host/), like tests/bench/start.sh. In it:
#   1. starts $BENCH_CONTAINERS (100) berth containers (`sleep 1000`, built-in busybox image);
#   2. times with hyperfine (warmup 3, $BENCH_RUNS runs):
#        berthctl stats --no-stream -o json            (GetStats over the bus, all containers)
#        systemd-cgtop -b -1 -r machine.slice          (systemd's reader of the same cgroups)
#        podman stats --no-stream                      ($BENCH_CONTAINERS podman containers)
#      and prints p50/p90 and the ratios to berth;
#   3. measures berthd's CPU time (utime + stime from /proc/PID/stat) over $BENCH_CALLS (200)
#      GetStats calls for all containers, per call and per container.
# podman runs after the berth containers are removed, so each tool sees the same number of
# containers and nothing else. A competitor that cannot run is reported and skipped; berth
# failing is fatal.
#
# Needs root. Assumes the release binaries are built (`make bench-stats` builds first).
# Environment: BENCH_CONTAINERS (100), BENCH_RUNS (20), BENCH_CALLS (200), BENCH_OUT (where the
# hyperfine JSON files are kept; default: a new directory under /tmp, printed at the end).
set -euo pipefail
cd "$(dirname "$0")/../.."

NCT=${BENCH_CONTAINERS:-100}
RUNS=${BENCH_RUNS:-20}
CALLS=${BENCH_CALLS:-200}
ROOTDIR=/srv/bench-root
T_START=$(date +%s)

BENCH_NAME=bench-stats
. tests/bench/lib.sh
bench_preflight
bench_packages hyperfine:hyperfine podman:podman python3:python3
command -v hyperfine >/dev/null || die "hyperfine is required (apt-get install hyperfine)"

bench_boot_host
cg_layout=hybrid
H test -e /sys/fs/cgroup/cgroup.controllers && cg_layout=unified
log "systemd $(H systemctl --version | awk 'NR==1 {print $2}'), kernel $(uname -r), $(nproc) CPUs, cgroups: $cg_layout"
H bash -c "rm -rf $ROOTDIR && mkdir -p /srv && cp -a /usr/local/lib/berth/images/default $ROOTDIR"

bench() { # name runs command -> $OUT/NAME.json
    local name=$1 runs=$2 cmd=$3
    log "-- $name: $cmd"
    if H hyperfine -N --style basic --warmup 3 --runs "$runs" --command-name "$name" \
        --export-json "/tmp/bench-$name.json" "$cmd" >"$OUT/$name.log" 2>&1; then
        H cat "/tmp/bench-$name.json" >"$OUT/$name.json"
    else
        tail -n 5 "$OUT/$name.log" >&2
        rm -f "$OUT/$name.json"
        return 1
    fi
}

# ---- berth: 100 containers ---------------------------------------------------------------------
log ""
log "== $NCT running berth containers =="
H bash -c "for i in \$(seq 1 $NCT); do berthctl run -d --name st\$i --directory $ROOTDIR -- sleep 1000 >/dev/null || exit 1; done" ||
    die "cannot start $NCT berth containers"
running=$(H berthctl stats --no-stream -o json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')
[[ $running == "$NCT" ]] || die "berthctl stats lists $running containers, not $NCT"
log "berthctl stats lists $running containers; systemd-cgtop sees $(H systemd-cgtop -b -1 -r machine.slice | grep -c 'berth-st') berth scopes"

bench berth "$RUNS" "berthctl stats --no-stream -o json" || die "hyperfine failed for berthctl stats"
bench cgtop "$RUNS" "systemd-cgtop -b -1 -r machine.slice" || log "systemd-cgtop: hyperfine run FAILED: left out of the table"

# berthd's CPU time per GetStats of all containers, from its own /proc/PID/stat.
log ""
log "== berthd CPU time over $CALLS GetStats calls ($NCT containers each) =="
# shellcheck disable=SC2016
H bash -s -- "$CALLS" "$NCT" <<'EOF' | tee "$OUT/berthd-cpu.txt"
set -euo pipefail
calls=$1 n=$2
pid=$(systemctl show -p MainPID --value berthd)
hz=$(getconf CLK_TCK)
ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
busctl call org.berth.berth1 /org/berth/berth1 org.berth.berth1.Manager GetStats as 0 >/dev/null
t0=$(ticks); w0=$(date +%s%N)
for _ in $(seq "$calls"); do
    busctl call org.berth.berth1 /org/berth/berth1 org.berth.berth1.Manager GetStats as 0 >/dev/null
done
t1=$(ticks); w1=$(date +%s%N)
awk -v t="$((t1 - t0))" -v hz="$hz" -v c="$calls" -v n="$n" -v w="$((w1 - w0))" 'BEGIN {
    ms = t * 1000 / hz / c
    printf "berthd CPU: %d ticks (%d Hz) over %d calls = %.2f ms per GetStats, %.1f us per container\n", t, hz, c, ms, ms * 1000 / n
    printf "wall time: %.1f ms per busctl call (sequential, client included)\n", w / 1e6 / c
}'
EOF

H bash -c "berthctl remove --force \$(seq -f 'st%g' 1 $NCT) >/dev/null" || die "cannot remove the berth containers"

# ---- podman: 100 containers --------------------------------------------------------------------
log ""
log "== $NCT running podman containers =="
PODMAN=''
if ! H sh -c 'command -v podman' >/dev/null; then
    log "podman: NOT AVAILABLE: skipped"
else
    # overlayfs refuses an upper dir on the host's overlay root: storage on a fresh tmpfs.
    fresh_podman_storage() {
        H bash -c 'umount -R /var/lib/containers 2>/dev/null; rm -rf /run/containers /run/libpod
                   mkdir -p /var/lib/containers && mount -t tmpfs -o mode=700 bench-podman /var/lib/containers'
    }
    for g in '' '--storage-driver=vfs'; do
        fresh_podman_storage
        # shellcheck disable=SC2086
        if H bash -c "tar -C $ROOTDIR -c . | podman $g import - bench-root" >"$OUT/podman-import.log" 2>&1; then
            for extra in '--events-backend=file' '--events-backend=file --cgroup-manager=cgroupfs' \
                '--events-backend=file --runtime=runc' '--events-backend=file --cgroup-manager=cgroupfs --runtime=runc'; do
                # shellcheck disable=SC2086
                if H podman $g $extra run -d --name probe --network=none bench-root sleep 1000 >"$OUT/podman.err" 2>&1 &&
                    H podman $g $extra stats --no-stream >>"$OUT/podman.err" 2>&1; then
                    PODMAN="podman${g:+ $g} $extra"
                    H podman $g $extra rm -f -t 0 probe >/dev/null 2>&1 || true
                    break 2
                fi
                log "podman: '$extra' failed: $(tail -n2 "$OUT/podman.err" | tr '\n' ' ')"
                H podman $g $extra rm -f -t 0 probe >/dev/null 2>&1 || true
            done
        else
            log "podman: 'podman${g:+ $g} import' failed: $(tail -n1 "$OUT/podman-import.log")"
        fi
    done
fi
if [[ -n $PODMAN ]]; then
    # shellcheck disable=SC2086 # PODMAN is a command line
    log "podman: using '$PODMAN': $(H $PODMAN info --format '{{.Version.Version}}, runtime {{.Host.OCIRuntime.Name}}, cgroup manager {{.Host.CgroupManager}} (cgroups {{.Host.CgroupsVersion}})' 2>/dev/null || echo '(podman info failed)')"
    H bash -c "for i in \$(seq 1 $NCT); do $PODMAN run -d --name pm\$i --network=none bench-root sleep 1000 >/dev/null || exit 1; done" ||
        die "cannot start $NCT podman containers"
    # shellcheck disable=SC2086
    log "podman ps lists $(H $PODMAN ps -q | wc -l) running containers"
    bench podman "$RUNS" "$PODMAN stats --no-stream" || log "podman: hyperfine run FAILED: left out of the table"
    H bash -c "$PODMAN rm -f -t 0 -a >/dev/null 2>&1" || true
else
    log "podman: CANNOT RUN in the host: skipped"
fi

log ""
log "== collecting stats of $NCT running containers, hyperfine --warmup 3 --runs $RUNS =="
python3 - "$OUT" <<'EOF'
import json, os, sys
out = sys.argv[1]

def pct(xs, p):
    xs = sorted(xs)
    k = (len(xs) - 1) * p / 100.0
    f = int(k)
    c = min(f + 1, len(xs) - 1)
    return xs[f] + (xs[c] - xs[f]) * (k - f)

label = {"berth": "berthctl stats", "cgtop": "systemd-cgtop", "podman": "podman stats"}
rows = {}
for name in label:
    path = os.path.join(out, name + ".json")
    if os.path.exists(path):
        t = json.load(open(path))["results"][0]["times"]
        rows[name] = (len(t), pct(t, 50) * 1e3, pct(t, 90) * 1e3, min(t) * 1e3)
print("%-16s %5s %9s %9s %9s" % ("tool", "runs", "p50 ms", "p90 ms", "min ms"))
for name, (n, p50, p90, mn) in rows.items():
    print("%-16s %5d %9.1f %9.1f %9.1f" % (label[name], n, p50, p90, mn))
print()
b = rows["berth"]
print("%-24s %9s %9s" % ("ratio", "p50", "p90"))
for name in ("cgtop", "podman"):
    if name in rows:
        r = rows[name]
        print("%-24s %8.2fx %8.2fx" % (label[name] + " / berth", r[1] / b[1], r[2] / b[2]))
    else:
        print("%-24s %9s %9s" % (label[name] + " / berth", "n/a", "n/a"))
EOF
log ""
log "(berthctl stats: the first call after 30 s without one takes two samples 100 ms apart for CPU"
log " percentages; hyperfine's warmup makes the timed calls reuse the previous sample.)"
log "hyperfine JSON: $OUT/{berth,cgtop,podman}.json"
log "bench-stats: done in $(($(date +%s) - T_START)) s"
