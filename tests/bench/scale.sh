#!/usr/bin/env bash
# `make bench-scale`: does a start cost more when many containers run? berth vs systemd-run.
#
# Everything runs in ONE disposable systemd host (tests/host/), like tests/bench/start.sh. In it:
#   1. copies the built-in busybox image to /srv/bench-root;
#   2. starts $BENCH_CONTAINERS (1000) detached containers, one `berthctl run -d --name sN
#      --directory /srv/bench-root -- sleep 1000000` at a time, timing each one;
#   3. at each of $BENCH_POINTS running containers (0 500 1000) times $BENCH_SAMPLES (25) runs of
#        berthctl run --rm --directory /srv/bench-root -- /bin/true        (berth)
#        systemd-run -q --scope --slice=machine.slice /bin/true            (the peer, beside
#                                                                           berth's scopes)
#        systemd-run -q --scope --slice=machine.slice -p Delegate=yes -p *Accounting=yes
#                    -p DevicePolicy=closed /bin/true                      (the same scope
#                                                                           properties as berth's)
#        systemd-run -q --scope /bin/true                                  (the peer, system.slice)
#      in interleaved rounds (one of each per round, so machine load hits all three alike), and
#      the CPU time berthd, systemd (PID 1) and dbus-daemon spent per start;
#   4. prints p50/p90 per tool and point, the ratios p50@last/p50@0, the detached starts' p50 per
#      hundred, berthd's memory and descriptors at each point, its per-step start timings from
#      the journal (BERTH_LOG=info,berth::daemon::start=debug, a drop-in installed with berth),
#      and every failed start (there must be none: the run fails otherwise);
#   5. removes all containers (`berthctl remove --force`, one call) and tears the host down.
# The run is bounded by $BENCH_TIMEOUT seconds (900): past it, no more containers are started
# and the points not reached are reported missing (the run then fails).
#
# Needs root. Assumes the release binaries are built (`make bench-scale` builds first).
# Environment: BENCH_CONTAINERS (1000), BENCH_POINTS ("0 500 1000"), BENCH_SAMPLES (25),
# BENCH_TIMEOUT (900), BENCH_STEPS (1: debug step timings on; 0: off), BENCH_OUT (results;
# default: a new directory under /tmp, printed at the end).
set -euo pipefail
cd "$(dirname "$0")/../.."

NCT=${BENCH_CONTAINERS:-1000}
POINTS=${BENCH_POINTS:-"0 $((NCT / 2)) $NCT"}
SAMPLES=${BENCH_SAMPLES:-25}
TIMEOUT=${BENCH_TIMEOUT:-900}
STEPS=${BENCH_STEPS:-1}
ROOTDIR=/srv/bench-root
T_START=$(date +%s)

BENCH_NAME=bench-scale
. tests/bench/lib.sh
bench_preflight
bench_packages python3:python3
command -v python3 >/dev/null || die "python3 is required"
for p in $POINTS; do
    [[ $p =~ ^[0-9]+$ ]] && ((p <= NCT)) || die "BENCH_POINTS: $p is not a count between 0 and $NCT"
done

# berthd logs each start step's duration at debug level; only its own start module, so that
# zbus's debug output does not cost anything.
if [[ $STEPS == 1 ]]; then
    BENCH_INSTALL_CMD='make install DESTDIR=$ROOT PROFILE=$BENCH_PROFILE >&2 &&
        mkdir -p $ROOT/etc/systemd/system/berthd.service.d &&
        printf "[Service]\nEnvironment=BERTH_LOG=info,berth::daemon::start=debug\n" \
            >$ROOT/etc/systemd/system/berthd.service.d/bench-steps.conf'
fi
bench_boot_host
log "systemd $(H systemctl --version | awk 'NR==1 {print $2}'), kernel $(uname -r), $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg) (the machine is shared: compare ratios within one run)"
H bash -c "rm -rf $ROOTDIR && mkdir -p /srv && cp -a /usr/local/lib/berth/images/default $ROOTDIR"
H berthctl run --rm --directory "$ROOTDIR" -- /bin/true || die "berth cannot run /bin/true from $ROOTDIR"
H systemd-run -q --scope --slice=machine.slice /bin/true || die "systemd-run --scope does not work in the host"

# ---- the run, inside the host (one script, so that exec.sh's own cost is not measured) -------
# Output: lines of $OUT/scale.tsv, parsed below:
#   detached I USEC RC | sample POINT TOOL USEC RC | cpu POINT TOOL N BERTHD SYSTEMD DBUS (CPU ns)
#   proc POINT WHO VmRSS-KiB FDSize fds threads bus-match-rules | limit WHO soft hard
#   error TEXT | missing POINT | running POINT N | removed N USEC LEFT
log ""
log "== $NCT detached containers; $SAMPLES interleaved samples per tool at $POINTS running (limit ${TIMEOUT}s) =="
# shellcheck disable=SC2016
H timeout --kill-after=30 "$((TIMEOUT + 60))" bash -s -- "$ROOTDIR" "$NCT" "$SAMPLES" "$TIMEOUT" $POINTS \
    >"$OUT/scale.tsv" 2>"$OUT/scale.err" <<'EOF' || true
set -uo pipefail
root=$1 n=$2 samples=$3 budget=$4
shift 4
points=("$@")
bpid=$(systemctl show -p MainPID --value berthd)
dpid=$(systemctl show -p MainPID --value dbus)
[[ $bpid != 0 && $dpid != 0 ]] || { echo "error berthd or dbus-daemon is not running"; exit 1; }
kv() { awk -v k="$1:" '$1 == k {print $2}' "/proc/$2/status"; }
# CPU time of all of a process's threads, in ns (schedstat's first field: time on the CPU).
ticks() { local t; read -r t _ <"/proc/$1/schedstat"; echo "$t"; }
# Match rules dbus-daemon holds for a process's bus connection (its Debug.Stats interface);
# "?" where that is not available. (AddRef=yes scopes cost systemd one rule each; dbus-daemon
# allows 512.)
match_rules() { # pid
    local name
    name=$(busctl list --no-pager --no-legend 2>/dev/null | awk -v p="$1" '$1 ~ /^:/ && $2 == p {print $1; exit}')
    [[ -n $name ]] || { echo "?"; return; }
    busctl call org.freedesktop.DBus /org/freedesktop/DBus org.freedesktop.DBus.Debug.Stats \
        GetConnectionStats s "$name" 2>/dev/null | grep -o '"MatchRules" u [0-9]*' | awk '{print $3}' | grep . || echo "?"
}
snap() { # point
    local who pid
    for who in berthd:$bpid systemd:1 dbus-daemon:$dpid; do
        pid=${who#*:}
        echo "proc $1 ${who%%:*} $(kv VmRSS "$pid") $(kv FDSize "$pid") $(ls "/proc/$pid/fd" | wc -l) $(kv Threads "$pid") $(match_rules "$pid")"
    done
}
for who in berthd:$bpid systemd:1 dbus-daemon:$dpid; do
    echo "limit ${who%%:*} $(awk '/^Max open files/ {print $4, $5}' "/proc/${who#*:}/limits")"
done
measure() { # point: $samples rounds of (berth, systemd-run machine.slice, systemd-run)
    local p=$1 k tool t0 t1 rc
    local -A c0b c0s c0d
    for tool in berth machine delegated system; do
        c0b[$tool]=0 c0s[$tool]=0 c0d[$tool]=0
    done
    for ((k = 1; k <= samples; k++)); do
        for tool in berth machine delegated system; do
            local b=$(ticks "$bpid") s=$(ticks 1) d=$(ticks "$dpid")
            t0=${EPOCHREALTIME/./}
            case $tool in
            berth) berthctl run --rm --name "m${p}x$k" --directory "$root" -- /bin/true ;;
            machine) systemd-run -q --scope --slice=machine.slice /bin/true ;;
            delegated) systemd-run -q --scope --slice=machine.slice -p Delegate=yes \
                -p CPUAccounting=yes -p MemoryAccounting=yes -p TasksAccounting=yes \
                -p IOAccounting=yes -p DevicePolicy=closed /bin/true ;;
            system) systemd-run -q --scope /bin/true ;;
            esac >/dev/null 2>/tmp/scale-last.err
            rc=$?
            t1=${EPOCHREALTIME/./}
            c0b[$tool]=$((c0b[$tool] + $(ticks "$bpid") - b))
            c0s[$tool]=$((c0s[$tool] + $(ticks 1) - s))
            c0d[$tool]=$((c0d[$tool] + $(ticks "$dpid") - d))
            echo "sample $p $tool $((t1 - t0)) $rc"
            ((rc == 0)) || echo "error $tool at $p running, sample $k: exit $rc: $(tr '\n' ' ' </tmp/scale-last.err)"
        done
    done
    for tool in berth machine delegated system; do
        echo "cpu $p $tool $samples ${c0b[$tool]} ${c0s[$tool]} ${c0d[$tool]}"
    done
}
i=0 fails=0 streak=0
for p in "${points[@]}"; do
    while ((i < p)); do
        if ((SECONDS > budget)); then
            echo "error time limit of ${budget}s reached with $i containers started"
            break 2
        fi
        i=$((i + 1))
        t0=${EPOCHREALTIME/./}
        berthctl run -d --name "s$i" --directory "$root" -- sleep 1000000 >/dev/null 2>/tmp/scale-last.err
        rc=$?
        t1=${EPOCHREALTIME/./}
        echo "detached $i $((t1 - t0)) $rc"
        if ((rc != 0)); then
            echo "error detached start of s$i: exit $rc: $(tr '\n' ' ' </tmp/scale-last.err)"
            fails=$((fails + 1)) streak=$((streak + 1))
            ((streak < 10)) || { echo "error 10 detached starts failed in a row: giving up"; break 2; }
        else
            streak=0
        fi
    done
    running=$(berthctl list | awk 'NR > 1 && $2 == "running"' | wc -l)
    echo "running $p $running"
    sleep 1
    snap "$p"
    measure "$p"
done
for p in "${points[@]}"; do
    ((p <= i)) || echo "missing $p"
done
snap end
t0=${EPOCHREALTIME/./}
names=$(berthctl list --all | awk 'NR > 1 {print $1}')
if [[ -n $names ]]; then
    # shellcheck disable=SC2086
    timeout 300 berthctl remove --force $names >/dev/null 2>/tmp/scale-last.err ||
        echo "error remove --force: $(tr '\n' ' ' </tmp/scale-last.err)"
fi
t1=${EPOCHREALTIME/./}
echo "removed $(echo "$names" | grep -c .) $((t1 - t0)) $(berthctl list --all | awk 'NR > 1' | wc -l)"
EOF
[[ -s $OUT/scale.err ]] && { log "stderr of the run:"; head -n 20 "$OUT/scale.err"; }
if [[ $STEPS == 1 ]]; then
    H journalctl -u berthd -o json --no-pager --output-fields=MESSAGE,F_STEP,F_USEC,F_CONTAINER \
        >"$OUT/journal.json" 2>/dev/null || log "cannot read berthd's journal: no step timings"
fi

log ""
rc=0
python3 - "$OUT" "$NCT" $POINTS <<'EOF' || rc=$?
import json, os, sys
out, nct, points = sys.argv[1], int(sys.argv[2]), [int(p) for p in sys.argv[3:]]

def pct(xs, p):  # linear interpolation between closest ranks (numpy's default)
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * p / 100.0
    f = int(k)
    c = min(f + 1, len(xs) - 1)
    return xs[f] + (xs[c] - xs[f]) * (k - f)

samples, cpu, procs, detached, errors, missing, limits, running = {}, {}, {}, [], [], [], [], {}
removed = None
for line in open(os.path.join(out, "scale.tsv")):
    f = line.split()
    if not f:
        continue
    kind = f[0]
    if kind == "sample":
        samples.setdefault((int(f[1]), f[2]), []).append((int(f[3]) / 1000.0, int(f[4])))
    elif kind == "cpu":
        cpu[(int(f[1]), f[2])] = [int(x) for x in f[3:]]
    elif kind == "proc":
        procs[(f[1], f[2])] = f[3:]
    elif kind == "detached":
        detached.append((int(f[1]), int(f[2]) / 1000.0, int(f[3])))
    elif kind == "error":
        errors.append(line.strip()[6:])
    elif kind == "missing":
        missing.append(int(f[1]))
    elif kind == "limit":
        limits.append("%s: soft %s, hard %s" % (f[1], f[2], f[3]))
    elif kind == "running":
        running[int(f[1])] = int(f[2])
    elif kind == "removed":
        removed = (int(f[1]), int(f[2]) / 1e6, int(f[3]))

tools = [("berth", "berthctl run --rm"), ("machine", "systemd-run --scope machine.slice"),
         ("delegated", "systemd-run, berth's props"),
         ("system", "systemd-run --scope (system.slice)")]
print("open files limit: " + "; ".join(limits))
print()
print("start latency, ms (p50 / p90 of %s samples per cell; failed starts in brackets)"
      % ",".join(sorted({str(len(v)) for v in samples.values()}) or ["0"]))
hdr = "%-9s %-8s" % ("running", "(seen)") + "".join("%-24s" % t[1][:23] for t in tools)
print(hdr)
for p in points:
    if p in missing:
        print("%-9d %-8s not reached" % (p, ""))
        continue
    row = "%-9d %-8s" % (p, running.get(p, "?"))
    for t, _ in tools:
        s = samples.get((p, t), [])
        ok = [ms for ms, rc in s if rc == 0]
        bad = len(s) - len(ok)
        row += "%-24s" % ("%6.1f / %6.1f%s" % (pct(ok, 50), pct(ok, 90), " [%d]" % bad if bad else ""))
    print(row)
first, last = points[0], points[-1]
row = "%-18s" % ("p50 %d/%d" % (last, first))
for t, _ in tools:
    a = [ms for ms, rc in samples.get((first, t), []) if rc == 0]
    b = [ms for ms, rc in samples.get((last, t), []) if rc == 0]
    row += "%-24s" % ("%6.2fx" % (pct(b, 50) / pct(a, 50)) if a and b else "n/a")
print(row)
print()
print("CPU time per start, ms (/proc/PID/schedstat, all threads, mean over the samples)")
print("%-9s %-10s %9s %9s %12s" % ("running", "tool", "berthd", "systemd", "dbus-daemon"))
for p in points:
    for t, _ in tools:
        if (p, t) in cpu:
            n, b, s, d = cpu[(p, t)]
            print("%-9d %-10s %9.2f %9.2f %12.2f" % (p, t, b / 1e6 / n, s / 1e6 / n, d / 1e6 / n))
print()
if detached:
    print("detached starts (berthctl run -d ... sleep), ms, by hundred:")
    print("%-12s %8s %8s %8s %7s" % ("containers", "p50", "p90", "max", "failed"))
    for lo in range(0, len(detached), 100):
        chunk = detached[lo:lo + 100]
        ok = [ms for _, ms, rc in chunk if rc == 0]
        print("%-12s %8.1f %8.1f %8.1f %7d" % ("%d-%d" % (chunk[0][0], chunk[-1][0]), pct(ok, 50),
                                               pct(ok, 90), max(ok) if ok else float("nan"),
                                               len(chunk) - len(ok)))
    print()
print("processes at each point: VmRSS KiB, FDSize, open fds, threads, match rules on the bus")
for (p, who), v in sorted(procs.items(), key=lambda kv: (kv[0][1], str(kv[0][0]).zfill(6))):
    v = (v + ["?"] * 5)[:5]
    print("  %-12s at %-5s %8s %7s %7s %4s %6s" % (who, p, *v))
print()

# Per-step timings of the measured berth starts (containers m<POINT>x<K>), from the journal.
jpath = os.path.join(out, "journal.json")
if os.path.exists(jpath):
    steps = {}
    order = []
    for line in open(jpath):
        try:
            j = json.loads(line)
        except ValueError:
            continue
        c, step, us = j.get("F_CONTAINER"), j.get("F_STEP"), j.get("F_USEC")
        if not (c and step and us) or not c.startswith("m") or "x" not in c:
            continue
        try:
            p = int(c[1:c.index("x")])
        except ValueError:
            continue
        if step not in order:
            order.append(step)
        steps.setdefault((p, step), []).append(int(us) / 1000.0)
    if steps:
        print("berthd start steps of the measured runs (BERTH_LOG debug), p50 ms:")
        print("%-32s" % "step" + "".join("%10s" % ("@%d" % p) for p in points))
        for step in order:
            print("%-32s" % step + "".join("%10.2f" % pct(steps.get((p, step), []), 50) for p in points))
        print()
if removed:
    print("removed %d containers (one berthctl remove --force) in %.1f s; %d left" % removed)
failed = sum(1 for _, _, rc in detached if rc != 0) + sum(
    1 for v in samples.values() for _, rc in v if rc != 0)
print("failed starts: %d (detached and measured); points not reached: %s" % (failed, missing or "none"))
for e in errors[:20]:
    print("  " + e)
if len(errors) > 20:
    print("  ... %d more in scale.tsv" % (len(errors) - 20))
sys.exit(1 if failed or missing or (removed and removed[2]) else 0)
EOF
log ""
log "results: $OUT/scale.tsv (raw), $OUT/journal.json (berthd's journal)"
log "bench-scale: done in $(($(date +%s) - T_START)) s"
exit $rc
