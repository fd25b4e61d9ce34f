#!/usr/bin/env bash
# `make bench-logs` (issue 9): log throughput and `logs -f` latency, berth beside podman.
#
# Everything runs in ONE disposable systemd host (tests/host/); both tools log into the host's
# journald (podman with its default log driver there, reported, and once more with k8s-file,
# its file driver). In it:
#   1. throughput: a detached container of the built-in busybox image prints $BENCH_LINES
#      (1,000,000) numbered lines of 100 bytes (100 MB; busybox awk). Timed from the start
#      command until `berthctl logs NAME | wc -l` (`podman logs NAME | wc -l`) counts them all
#      (the count is retried until it stops growing); then, untimed, every line is checked to
#      be there once and in order. $BENCH_RUNS (1) runs per tool, the median reported; MB/s
#      and the ratio podman/berth (of the time: >1 means berth is faster);
#   2. `logs -f` latency: a container runs `cat` on a FIFO bind-mounted from the host; the
#      host writes a line stamped with its clock into the FIFO, and the time until
#      `berthctl logs -f` (`podman logs -f`) prints that line is taken, $BENCH_FOLLOW (10)
#      samples 0.2 s apart; median and max.
#
# Needs root. Release binaries (`make bench-logs` builds them); BENCH_PROFILE=dev installs the
# debug ones (to check the script, not for numbers). Environment: BENCH_LINES (1000000),
# BENCH_RUNS (1), BENCH_FOLLOW (10), BENCH_OUT (results; default: a new directory under /tmp).
set -euo pipefail
cd "$(dirname "$0")/../.."

LINES=${BENCH_LINES:-1000000}
RUNS=${BENCH_RUNS:-1}
FOLLOW=${BENCH_FOLLOW:-10}
T_START=$(date +%s)

BENCH_NAME=bench-logs
. tests/bench/lib.sh
bench_preflight
bench_packages podman:podman python3:python3
command -v python3 >/dev/null || die "python3 is required"

bench_boot_host
log "host PID $HOST_PID; berth $BENCH_PROFILE build, systemd $(H systemctl --version | awk 'NR==1 {print $2}'), kernel $(uname -r), $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg) (the machine is shared: compare within one run)"
log "journal: $(H journalctl --header 2>/dev/null | sed -n 's/^File path: //p' | head -1) (the host's root: a tmpfs)"

# 100-byte lines: the line number, zero-padded to 99 digits, and the newline.
GEN="/bin/awk 'BEGIN { for (i = 1; i <= $LINES; i++) printf \"%099d\\n\", i }'"
MB=$(awk -v n="$LINES" 'BEGIN {printf "%.1f", n * 100 / 1e6}')
t0=$(date +%s%N)
H sh -c "$GEN | wc -l" >/dev/null
log "the writer alone (busybox awk to a pipe, in the host): $((($(date +%s%N) - t0) / 1000000)) ms for $MB MB"

P=''
declare -A TOOL=([berth]=berthctl)
if bench_podman bench-small; then
    TOOL[podman]=$P
    TOOL[podman-k8s-file]="$P"
fi
# What `run -d` takes beside the tool's own options.
declare -A RUNOPT=([berth]='' [podman]='--network=none' [podman-k8s-file]='--network=none --log-driver=k8s-file')
declare -A IMG=([berth]='' [podman]=bench-small [podman-k8s-file]=bench-small)
declare -A SEP=([berth]='--' [podman]='' [podman-k8s-file]='')

# The run, inside the host (one script: exec.sh's own cost stays out of the timings). Prints
# "TOOL RUN START_TO_EXIT_NS START_TO_COUNTED_NS COUNTED LAST_READ_NS ORDERED_OK".
throughput() { # tool run
    local t=$1 r=$2 name="bench-logs-$1-$2"
    # shellcheck disable=SC2016
    H bash -s -- "${TOOL[$t]}" "$name" "${RUNOPT[$t]}" "${IMG[$t]}" "${SEP[$t]}" "$GEN" "$LINES" "$t" "$r" <<'EOF'
set -uo pipefail
tool=$1 name=$2 opts=$3 img=$4 sep=$5 gen=$6 lines=$7 t=$8 r=$9
now() { date +%s%N; }
t0=$(now)
# shellcheck disable=SC2086
$tool run -d --name "$name" $opts $img $sep /bin/sh -c "$gen" >/dev/null || { echo "error $t: run -d failed"; exit 1; }
$tool wait "$name" >/dev/null || { echo "error $t: wait failed"; exit 1; }
t_exit=$(now)
n=0 stable=0 last=0
while ((n < lines && stable < 3)); do
    s=$(now)
    m=$($tool logs "$name" 2>/dev/null | wc -l)
    e=$(now)
    last=$((e - s))
    if ((m == n)); then stable=$((stable + 1)); sleep 1; else stable=0; fi
    n=$m
    (($(now) - t0 < 300000000000)) || break
done
t_counted=$e
# Untimed: the lines seen in order, none twice (line k starts with the number k); lines
# missing are $lines - $n.
bad=$($tool logs "$name" 2>/dev/null | awk '$1 + 0 <= prev { b++ } { prev = $1 + 0 } END { print b + 0 }')
echo "$t $r $((t_exit - t0)) $((t_counted - t0)) $n $last $bad"
$tool rm -f "$name" >/dev/null 2>&1 || echo "error $t: cannot remove $name, ignoring"
EOF
}

log ""
log "== 1. $LINES lines of 100 bytes ($MB MB) from a detached container, counted back by 'logs | wc -l' ($RUNS run(s) each) =="
: >"$OUT/throughput.txt"
for r in $(seq 1 "$RUNS"); do
    for t in berth podman podman-k8s-file; do
        [[ -n ${TOOL[$t]:-} ]] || continue
        throughput "$t" "$r" | tee -a "$OUT/throughput.txt" | sed 's/^/   /' ||
            { [[ $t != berth ]] || die "the berth run failed"; }
    done
done
PODMAN_DRIVER=''
if [[ -n ${TOOL[podman]:-} ]]; then
    # shellcheck disable=SC2086
    H $P create --name bench-driver --network=none bench-small /bin/true >/dev/null &&
        PODMAN_DRIVER=$(H $P inspect --format '{{.HostConfig.LogConfig.Type}}' bench-driver) &&
        H $P rm bench-driver >/dev/null || PODMAN_DRIVER='?'
fi

log ""
log "== 2. logs -f: a line written into the container's FIFO until the tool prints it ($FOLLOW samples) =="
: >"$OUT/follow.txt"
follow() { # tool
    local t=$1 name="bench-follow-$1"
    H bash -c "rm -rf /srv/fifo-$t && mkdir -p -m 0755 /srv/fifo-$t && mkfifo -m 0666 /srv/fifo-$t/fifo"
    # cat on the FIFO opened read-write: it never sees end-of-file and writes each line as it
    # reads it.
    # shellcheck disable=SC2086
    H ${TOOL[$t]} run -d --name "$name" -v /srv/fifo-$t:/f ${RUNOPT[$t]} ${IMG[$t]} ${SEP[$t]} \
        /bin/sh -c 'exec /bin/cat <>/f/fifo' >/dev/null || { log "$t: the follow container did not start"; return 1; }
    # shellcheck disable=SC2016
    H bash -s -- "${TOOL[$t]}" "$name" "/srv/fifo-$t/fifo" "$FOLLOW" "$t" <<'EOF'
set -uo pipefail
tool=$1 name=$2 fifo=$3 k=$4 t=$5
coproc F { exec $tool logs -f "$name" 2>/dev/null; }
exec 3<>"$fifo"
# A first line, read back before the samples: the follower has started and printed history.
echo "warmup 0" >&3
up=0
while read -r -t 30 -u "${F[0]}" a _; do [[ $a == warmup ]] && { up=1; break; }; done
((up)) || { echo "error $t: logs -f did not print the first line in 30 s"; kill "$F_PID"; exit 1; }
for ((i = 1; i <= k; i++)); do
    sleep 0.2
    echo "$i ${EPOCHREALTIME/./}" >&3
    if read -r -t 10 -u "${F[0]}" a b && [[ $a == "$i" ]]; then
        n=${EPOCHREALTIME/./}
        echo "$t $i $((n - b))"
    else
        echo "error $t: sample $i not printed within 10 s (got '${a:-} ${b:-}')"
    fi
done
kill "$F_PID" 2>/dev/null
wait "$F_PID" 2>/dev/null
exit 0
EOF
    H ${TOOL[$t]} rm -f "$name" >/dev/null 2>&1 || log "$t: cannot remove $name, ignoring"
}
for t in berth podman podman-k8s-file; do
    [[ -n ${TOOL[$t]:-} ]] || continue
    follow "$t" >>"$OUT/follow.txt" || { [[ $t != berth ]] || die "berth's logs -f run failed"; }
done
grep '^error' "$OUT/follow.txt" "$OUT/throughput.txt" | sed 's/^/   /' || true

log ""
python3 - "$OUT" "$LINES" "${PODMAN_DRIVER:-}" <<'EOF' || die "no berth result to report"
import os, statistics, sys
out, lines, driver = sys.argv[1], int(sys.argv[2]), sys.argv[3]
mb = lines * 100 / 1e6
label = {"berth": "berth (journald)", "podman": "podman (%s, its default)" % (driver or "?"),
         "podman-k8s-file": "podman --log-driver=k8s-file"}
runs = {}
for l in open(os.path.join(out, "throughput.txt")):
    f = l.split()
    if len(f) == 7 and f[0] in label:
        runs.setdefault(f[0], []).append([int(x) for x in f[2:]])
print("%-32s %5s %9s %9s %9s %11s %8s %8s %7s" % ("throughput (median of runs)", "runs", "exit s", "counted s",
      "MB/s", "lines seen", "lost", "misorder", "vs berth"))
base = statistics.median(r[1] for r in runs["berth"]) if "berth" in runs else None
for t in label:
    if t not in runs:
        print("%-32s n/a" % label[t])
        continue
    rs = runs[t]
    ex = statistics.median(r[0] for r in rs) / 1e9
    counted = statistics.median(r[1] for r in rs) / 1e9
    seen = min(r[2] for r in rs)
    bad = max(r[4] for r in rs)
    ratio = "%6.2fx" % (counted * 1e9 / base) if base else "n/a"
    print("%-32s %5d %9.2f %9.2f %9.1f %11d %8d %8d %7s" % (label[t], len(rs), ex, counted, mb / counted, seen,
          lines - seen, bad, ratio))
print("exit s: start command to the container's exit (`wait`); counted s: to the `logs | wc -l` that")
print("counted all lines (or stopped growing); MB/s = %.0f MB / counted s; lost: lines never seen;" % mb)
print("misorder: lines repeated or out of order; vs berth: time / berth's time (>1: berth is faster).")
last = {t: statistics.median(r[3] for r in rs) / 1e9 for t, rs in runs.items()}
print("one full `logs | wc -l` read of the %d lines: " % lines + ", ".join(
      "%s %.2f s (%.1f MB/s)" % (t, s, mb / s) for t, s in last.items() if s > 0))
print()
fol = {}
for l in open(os.path.join(out, "follow.txt")):
    f = l.split()
    if len(f) == 3 and f[0] in label:
        fol.setdefault(f[0], []).append(int(f[2]) / 1e3)
print("%-32s %8s %9s %9s %9s" % ("logs -f latency of a new line", "samples", "p50 ms", "max ms", "min ms"))
for t in label:
    if t in fol:
        v = fol[t]
        print("%-32s %8d %9.2f %9.2f %9.2f" % (label[t], len(v), statistics.median(v), max(v), min(v)))
    else:
        print("%-32s n/a" % label[t])
if "berth" not in runs or "berth" not in fol:
    sys.exit(1)
EOF
log ""
log "raw results: $OUT/throughput.txt, $OUT/follow.txt"
log "bench-logs: done in $(($(date +%s) - T_START)) s"
