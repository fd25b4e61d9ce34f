#!/usr/bin/env bash
# `make bench-exec` (issue 9): latency of running a command in a running container.
#
# Everything runs in ONE disposable systemd host (tests/host/). In it, with one berth container
# and one podman container of the same busybox image (the built-in image; podman imports a
# tarball of its tree, offline) both running `sleep`, hyperfine -N ($BENCH_RUNS runs after
# $BENCH_WARMUP warm-ups each) times
#     berthctl exec bench-exec -- /bin/true              (berth)
#     podman exec bench-exec /bin/true                   (podman, its own container)
#     nsenter -t LEADER -a /bin/true                     (the floor: setns into the SAME berth
#                                                         container, no confinement, no bus)
# and prints p50/p90 per tool, the ratios, and whether berth's p50 is within the issue's
# 10 ms. A competitor that cannot run in the host is reported and skipped; berth failing is fatal.
#
# Needs root. Release binaries (`make bench-exec` builds them); BENCH_PROFILE=dev installs the
# debug ones (to check the script, not for numbers). Environment: BENCH_RUNS (200),
# BENCH_WARMUP (10), BENCH_OUT (results; default: a new directory under /tmp).
set -euo pipefail
cd "$(dirname "$0")/../.."

RUNS=${BENCH_RUNS:-200}
WARMUP=${BENCH_WARMUP:-10}
TARGET_MS=10
T_START=$(date +%s)

BENCH_NAME=bench-exec
. tests/bench/lib.sh
bench_preflight
bench_packages hyperfine:hyperfine podman:podman nsenter:util-linux python3:python3
for c in hyperfine python3 nsenter; do
    command -v $c >/dev/null || die "$c is required"
done

bench_boot_host
log "host PID $HOST_PID; berth $BENCH_PROFILE build, systemd $(H systemctl --version | awk 'NR==1 {print $2}'), kernel $(uname -r), $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg) (the machine is shared: compare within one run)"

H berthctl run -d --name bench-exec -- /bin/sleep 1000000 >/dev/null || die "berth cannot start a container"
LEADER=$(H berthctl show bench-exec | sed -n 's/^Leader=//p')
[[ $LEADER =~ ^[0-9]+$ && $LEADER != 0 ]] || die "no leader PID for bench-exec"
H berthctl exec bench-exec -- /bin/true || die "berthctl exec does not work"
log "berth: container bench-exec (built-in busybox image, defaults: user namespace, seccomp, capabilities), leader PID $LEADER"

declare -A CMD=(
    [berth]="berthctl exec bench-exec -- /bin/true"
    [nsenter]="nsenter -t $LEADER -a /bin/true"
)
if H sh -c "${CMD[nsenter]}" 2>"$OUT/nsenter.err"; then
    log "nsenter: $(H nsenter --version)"
else
    log "nsenter -a into the berth container FAILED: $(tr '\n' ' ' <"$OUT/nsenter.err"): skipped"
    unset 'CMD[nsenter]'
fi
P=''
if bench_podman bench-small; then
    # shellcheck disable=SC2086
    if H $P run -d --name bench-exec --network=none bench-small /bin/sleep 1000000 >/dev/null 2>"$OUT/podman-run.err"; then
        CMD[podman]="$P exec bench-exec /bin/true"
    else
        log "podman: run -d failed: $(tail -n2 "$OUT/podman-run.err" | tr '\n' ' '): skipped"
    fi
fi

log ""
log "== exec /bin/true into a running container: hyperfine -N --warmup $WARMUP --runs $RUNS (inside the host) =="
for t in berth podman nsenter; do
    [[ -n ${CMD[$t]:-} ]] || continue
    log "-- $t: ${CMD[$t]}"
    # -i: a failed run must not abort the series; failures are counted and reported.
    if H hyperfine -N -i --style basic --warmup "$WARMUP" --runs "$RUNS" --command-name "$t" \
        --export-json "/tmp/bench-$t.json" "${CMD[$t]}" >"$OUT/$t.log" 2>&1; then
        grep -E 'Time|Range' "$OUT/$t.log" | sed 's/^/   /'
        H cat "/tmp/bench-$t.json" >"$OUT/$t.json"
    else
        tail -n 3 "$OUT/$t.log" | sed 's/^/   /'
        [[ $t != berth ]] || die "hyperfine failed for berth"
        log "$t: hyperfine FAILED: left out of the table"
    fi
done

log ""
python3 - "$OUT" "$TARGET_MS" <<'EOF' || die "no successful berth run to report"
import json, os, sys
out, target = sys.argv[1], float(sys.argv[2])

def pct(xs, p):  # linear interpolation between closest ranks (numpy's default)
    xs = sorted(xs)
    k = (len(xs) - 1) * p / 100.0
    f = int(k)
    c = min(f + 1, len(xs) - 1)
    return xs[f] + (xs[c] - xs[f]) * (k - f)

label = {"berth": "berthctl exec", "podman": "podman exec", "nsenter": "nsenter -a (same container)"}
rows = {}
for name in label:
    path = os.path.join(out, name + ".json")
    if not os.path.exists(path):
        continue
    r = json.load(open(path))["results"][0]
    codes = r.get("exit_codes") or [0] * len(r["times"])
    ok = [t * 1e3 for t, c in zip(r["times"], codes) if c == 0]
    if ok:
        rows[name] = (len(ok), len(codes) - len(ok), pct(ok, 50), pct(ok, 90), min(ok))
print("%-30s %5s %6s %9s %9s %9s" % ("exec /bin/true", "runs", "failed", "p50 ms", "p90 ms", "min ms"))
for name, (n, bad, p50, p90, mn) in rows.items():
    print("%-30s %5d %6d %9.2f %9.2f %9.2f" % (label[name], n, bad, p50, p90, mn))
print()
if "berth" not in rows:
    sys.exit(1)
b = rows["berth"]
print("%-30s %9s %9s" % ("ratio", "p50", "p90"))
for name, what in (("podman", "podman / berth"), ("nsenter", "berth / nsenter")):
    if name not in rows:
        print("%-30s %9s %9s" % (what, "n/a", "n/a"))
        continue
    r = rows[name]
    num, den = (r, b) if name == "podman" else (b, r)
    print("%-30s %8.2fx %8.2fx" % (what, num[2] / den[2], num[3] / den[3]))
print()
print("berth p50 %.2f ms %s the issue's target of %g ms: %s"
      % (b[2], "<=" if b[2] <= target else ">", target, "MET" if b[2] <= target else "NOT MET"))
EOF
log ""
log "hyperfine JSON: $OUT"
log "bench-exec: done in $(($(date +%s) - T_START)) s"
