#!/usr/bin/env bash
# `make bench`: container start latency of berth vs systemd-nspawn vs podman, and berthd's
# memory cost per running container.
#
# Everything runs in ONE disposable systemd host (tests/host/), so this works where PID 1 is
# not systemd and leaves nothing behind on the machine. In that host it:
#   1. copies the built-in busybox image to /srv/bench-root (the root all three tools run);
#   2. times `/bin/true` in a fresh container with hyperfine (warmup 3, $BENCH_RUNS runs) for
#        berthctl run --rm --directory /srv/bench-root -- /bin/true   (default: bridged network)
#        berthctl run --rm --network none ...   (loopback only, as podman --network=none is;
#                                                nspawn here shares the host's network)
#        systemd-nspawn -q -D /srv/bench-root --register=yes /bin/true
#        podman run --rm --network=none bench-root /bin/true   (image imported from the root)
#      and prints p50/p90 per tool and the ratios to both berth rows;
#   3. starts $BENCH_CONTAINERS detached berth containers and prints berthd's RSS/PSS growth
#      per container and the number of processes per container, then removes them.
# A competitor that cannot run in the host is reported and skipped; berth failing is fatal.
#
# Needs root. Assumes the release binaries are built (`make bench` builds first).
# Environment: BENCH_RUNS (30), BENCH_CONTAINERS (100), BENCH_OUT (where the hyperfine JSON
# files are kept; default: a new directory under /tmp, printed at the end).
set -euo pipefail
cd "$(dirname "$0")/../.."

RUNS=${BENCH_RUNS:-30}
NCT=${BENCH_CONTAINERS:-100}
ROOTDIR=/srv/bench-root
T_START=$(date +%s)

BENCH_NAME=bench
. tests/bench/lib.sh
bench_preflight
bench_packages hyperfine:hyperfine podman:podman systemd-nspawn:systemd-container python3:python3
command -v hyperfine >/dev/null || die "hyperfine is required (apt-get install hyperfine)"
command -v python3 >/dev/null || die "python3 is required"

# ---- the host ----------------------------------------------------------------------------------
bench_boot_host
log "host PID $HOST_PID; berth: $(H berthctl --version 2>/dev/null || echo '(version unknown)'), systemd $(H systemctl --version | awk 'NR==1 {print $2}'), kernel $(uname -r), $(nproc) CPUs"

# ---- 1. the root directory ---------------------------------------------------------------------
H bash -c "rm -rf $ROOTDIR && mkdir -p /srv && cp -a /usr/local/lib/berth/images/default $ROOTDIR"
log "root: $ROOTDIR = copy of /usr/local/lib/berth/images/default ($(H du -sh $ROOTDIR | cut -f1), busybox)"
H berthctl run --rm --directory "$ROOTDIR" -- /bin/true || die "berth cannot run /bin/true from $ROOTDIR"

# ---- competitors: check they work, find the options that do ------------------------------------
NSPAWN_CMD=''
if ! H sh -c 'command -v systemd-nspawn' >/dev/null; then
    log "systemd-nspawn: NOT AVAILABLE (package systemd-container not installed): skipped"
else
    if H systemd-nspawn -q -D "$ROOTDIR" --register=yes /bin/true 2>"$OUT/nspawn.err"; then
        NSPAWN_CMD="systemd-nspawn -q -D $ROOTDIR --register=yes /bin/true"
        log "systemd-nspawn: --register=yes works (systemd-machined $(H systemctl is-active systemd-machined 2>/dev/null || true), bus-activated)"
    else
        log "systemd-nspawn: --register=yes FAILED: $(tr '\n' ' ' <"$OUT/nspawn.err")"
        log "  machined: $(H systemctl is-active systemd-machined 2>&1 | head -1); org.freedesktop.machine1 on the bus: $(H busctl --no-pager status org.freedesktop.machine1 >/dev/null 2>&1 && echo yes || echo no)"
        log "  (registration needs systemd-machined on the host's system bus; without it nspawn cannot create its scope via machined)"
        if H systemd-nspawn -q -D "$ROOTDIR" --register=no /bin/true 2>"$OUT/nspawn.err"; then
            NSPAWN_CMD="systemd-nspawn -q -D $ROOTDIR --register=no /bin/true"
            log "systemd-nspawn: FALLING BACK to --register=no (no machined registration; not quite the same work as berth, which always creates a scope)"
        else
            log "systemd-nspawn: CANNOT RUN in the host (also with --register=no: $(tr '\n' ' ' <"$OUT/nspawn.err")): skipped"
        fi
    fi
fi

PODMAN_CMD=''
if ! H sh -c 'command -v podman' >/dev/null; then
    log "podman: NOT AVAILABLE (package podman not installed): skipped"
else
    # The host's / is an overlay, and overlayfs refuses an upper dir on overlayfs: podman's
    # storage must live on a tmpfs (the host's mount namespace, gone with the host).
    # (A fresh, empty tmpfs each time: podman's database remembers the storage driver.)
    fresh_podman_storage() {
        H bash -c 'umount -R /var/lib/containers 2>/dev/null; rm -rf /run/containers /run/libpod
                   mkdir -p /var/lib/containers && mount -t tmpfs -o mode=700 bench-podman /var/lib/containers'
    }
    podman_image=''
    podman_globals=''
    for g in '' '--storage-driver=vfs'; do
        fresh_podman_storage
        # shellcheck disable=SC2086
        if H bash -c "tar -C $ROOTDIR -c . | podman $g import - bench-root" >"$OUT/podman-import.log" 2>&1; then
            podman_image=bench-root
            podman_globals=$g
            break
        fi
        log "podman: 'podman${g:+ }$g import' of $ROOTDIR failed: $(tail -n1 "$OUT/podman-import.log")"
    done
    if [[ -z $podman_image ]]; then
        fresh_podman_storage
        log "podman: trying --rootfs $ROOTDIR instead of an imported image"
    fi
    image_args=("$podman_image")
    [[ -n $podman_image ]] || image_args=(--rootfs "$ROOTDIR")
    for extra in '' '--events-backend=file' '--events-backend=file --cgroup-manager=systemd' \
        '--events-backend=file --cgroup-manager=cgroupfs'; do
        globals="$podman_globals${podman_globals:+${extra:+ }}$extra"
        # shellcheck disable=SC2086
        if H podman $globals run --rm --network=none "${image_args[@]}" /bin/true >"$OUT/podman.err" 2>&1; then
            PODMAN_CMD="podman ${globals}${globals:+ }run --rm --network=none ${image_args[*]} /bin/true"
            break
        fi
        log "podman: 'podman ${globals}${globals:+ }run' failed: $(tail -n2 "$OUT/podman.err" | tr '\n' ' ')"
    done
    if [[ -n $PODMAN_CMD ]]; then
        log "podman: works: $(H podman ${podman_globals} info --format '{{.Version.Version}}, runtime {{.Host.OCIRuntime.Name}}, storage {{.Store.GraphDriverName}} on tmpfs, cgroup manager {{.Host.CgroupManager}} (cgroups {{.Host.CgroupsVersion}}), events {{.Host.EventLogger}}' 2>/dev/null || echo '(podman info failed)')"
    else
        log "podman: CANNOT RUN in the host: skipped"
    fi
fi

# ---- 2. start latency --------------------------------------------------------------------------
log ""
log "== start latency: /bin/true in a new container, hyperfine --warmup 3 --runs $RUNS (inside the host) =="
BERTH_CMD="berthctl run --rm --directory $ROOTDIR -- /bin/true"
bench() { # name command -> $OUT/NAME.json (in the machine's view)
    local name=$1 cmd=$2
    log "-- $name: $cmd"
    # -i: a failed run must not abort the series; failures are counted from the JSON's
    # exit_codes and reported in the table. (Seen: `berthctl run --rm` of a payload that exits
    # at once sometimes fails with 125 "no container named ...": the container is auto-removed
    # before berthctl's WaitContainer call reaches berthd.)
    if H hyperfine -N -i --style basic --warmup 3 --runs "$RUNS" --command-name "$name" \
        --export-json "/tmp/bench-$name.json" "$cmd"; then
        H cat "/tmp/bench-$name.json" >"$OUT/$name.json"
    else
        rm -f "$OUT/$name.json"
        return 1
    fi
}
bench berth "$BERTH_CMD" || die "hyperfine failed for berth"
bench berth-none "berthctl run --rm --network none --directory $ROOTDIR -- /bin/true" ||
    die "hyperfine failed for berth --network none"
if [[ -n $NSPAWN_CMD ]]; then
    bench nspawn "$NSPAWN_CMD" || log "systemd-nspawn: hyperfine run FAILED: left out of the table"
fi
if [[ -n $NSPAWN_CMD ]]; then
    # berth runs every container in a user namespace of its own; nspawn's equivalent. The
    # first run chowns a copy of the tree to the picked range (nspawn 252 cannot idmap it);
    # later runs find it owned by that range and reuse it, so the warm-up pays the chown.
    H bash -c "rm -rf $ROOTDIR-userns && cp -a $ROOTDIR $ROOTDIR-userns"
    NSPAWN_USERNS_CMD="${NSPAWN_CMD/-D $ROOTDIR/-D $ROOTDIR-userns} --private-users=pick --private-users-ownership=auto"
    if H $NSPAWN_USERNS_CMD 2>"$OUT/nspawn-userns.err"; then
        bench nspawn-userns "$NSPAWN_USERNS_CMD" || log "systemd-nspawn --private-users=pick: hyperfine run FAILED: left out of the table"
    else
        log "systemd-nspawn --private-users=pick: CANNOT RUN: $(tr '\n' ' ' <"$OUT/nspawn-userns.err")"
    fi
fi
if [[ -n $PODMAN_CMD ]]; then
    bench podman "$PODMAN_CMD" || log "podman: hyperfine run FAILED: left out of the table"
fi

log ""
python3 - "$OUT" <<'EOF' || die "no successful berth run to report"
import json, os, sys
out = sys.argv[1]

def pct(xs, p):  # linear interpolation between closest ranks (numpy's default)
    xs = sorted(xs)
    k = (len(xs) - 1) * p / 100.0
    f = int(k)
    c = min(f + 1, len(xs) - 1)
    return xs[f] + (xs[c] - xs[f]) * (k - f)

rows, notes = {}, []
label = {"berth": "berth", "berth-none": "berth --network none", "nspawn": "systemd-nspawn", "nspawn-userns": "nspawn --private-users=pick", "podman": "podman"}
for name in ("berth", "berth-none", "nspawn", "nspawn-userns", "podman"):
    path = os.path.join(out, name + ".json")
    if not os.path.exists(path):
        continue
    r = json.load(open(path))["results"][0]
    codes = r.get("exit_codes") or [0] * len(r["times"])
    ok = [t for t, c in zip(r["times"], codes) if c == 0]
    bad = [c for c in codes if c != 0]
    if bad:
        notes.append("WARNING: %d of %d %s runs exited non-zero (exit codes %s); they are left out of the percentiles"
                     % (len(bad), len(codes), label[name], sorted(set(bad))))
    if not ok:
        notes.append("%s: no successful run: left out of the table" % label[name])
        continue
    rows[name] = (len(ok), len(bad), pct(ok, 50) * 1e3, pct(ok, 90) * 1e3, min(ok) * 1e3)

print("%-28s %5s %6s %9s %9s %9s" % ("tool", "runs", "failed", "p50 ms", "p90 ms", "min ms"))
for name, (n, nbad, p50, p90, mn) in rows.items():
    print("%-28s %5d %6d %9.1f %9.1f %9.1f" % (label[name], n, nbad, p50, p90, mn))
print()
for n in notes:
    print(n)
if notes:
    print()
if "berth" not in rows:
    sys.exit(1)
print("%-34s %9s %9s" % ("ratio", "p50", "p90"))
for base in ("berth", "berth-none"):
    if base not in rows:
        continue
    b = rows[base]
    for name in ("nspawn", "nspawn-userns", "podman"):
        if name in rows:
            r = rows[name]
            print("%-34s %8.2fx %8.2fx" % (name + "/" + base, r[2] / b[2], r[3] / b[3]))
        else:
            print("%-34s %9s %9s" % (name + "/" + base, "n/a", "n/a"))
EOF

# ---- 3. memory per running container -----------------------------------------------------------
log ""
log "== berthd memory with $NCT running containers (berthctl run -d ... -- sleep 1000) =="
# One script inside the host, so that exec.sh's own processes do not disturb the counts.
# shellcheck disable=SC2016
H bash -s -- "$ROOTDIR" "$NCT" <<'EOF'
set -euo pipefail
root=$1 n=$2
pid=$(systemctl show -p MainPID --value berthd)
[[ $pid != 0 ]] || { echo "berthd is not running" >&2; exit 1; }
kv() { awk -v k="$1:" '$1 == k {print $2}' "$2"; }
nprocs() { local c=0 d; for d in /proc/[0-9]*; do [[ -e $d/stat ]] && c=$((c + 1)); done; echo $c; }
snap() { # prefix
    eval "$1_rss=$(kv VmRSS /proc/$pid/status) $1_anon=$(kv RssAnon /proc/$pid/status)"
    eval "$1_pss=$(kv Pss /proc/$pid/smaps_rollup) $1_thr=$(kv Threads /proc/$pid/status)"
    eval "$1_fds=$(ls /proc/$pid/fd | wc -l) $1_procs=$(nprocs)"
}
sleep 0.5
snap before
t0=$(date +%s%N)
for i in $(seq 1 "$n"); do
    berthctl run -d --name "bench$i" --directory "$root" -- sleep 1000 >/dev/null
done
t1=$(date +%s%N)
running=$(berthctl list | awk 'NR > 1 && $2 == "running"' | wc -l)
[[ $running == "$n" ]] || { echo "only $running of $n containers are running" >&2; berthctl list >&2; exit 1; }
sleep 1
snap after

# Processes per container: what is in each container's scope, and all of the host's processes.
declare -A hist=()
cg_root=/sys/fs/cgroup
[[ -d $cg_root/unified ]] && cg_root=$cg_root/unified
for i in $(seq 1 "$n"); do
    unit=$(berthctl show "bench$i" | sed -n 's/^Unit=//p')
    cg=$(systemctl show -p ControlGroup --value "$unit")
    c=$(wc -l <"$cg_root$cg/cgroup.procs")
    hist[$c]=$((${hist[$c]:-0} + 1))
done
ex_unit=$(berthctl show bench1 | sed -n 's/^Unit=//p')

printf '%-26s %10s %10s %14s\n' "berthd (PID $pid)" before "after $n" "per container"
per() { awk -v a="$1" -v b="$2" -v n="$n" 'BEGIN {printf "%.1f", (b - a) / n}'; }
printf '%-26s %10s %10s %14s\n' "VmRSS KiB" "$before_rss" "$after_rss" "$(per "$before_rss" "$after_rss") KiB"
printf '%-26s %10s %10s %14s\n' "  of which RssAnon KiB" "$before_anon" "$after_anon" "$(per "$before_anon" "$after_anon") KiB"
printf '%-26s %10s %10s %14s\n' "Pss KiB (smaps_rollup)" "$before_pss" "$after_pss" "$(per "$before_pss" "$after_pss") KiB"
printf '%-26s %10s %10s %14s\n' "threads" "$before_thr" "$after_thr" "$(per "$before_thr" "$after_thr")"
printf '%-26s %10s %10s %14s\n' "open fds" "$before_fds" "$after_fds" "$(per "$before_fds" "$after_fds")"
printf '%-26s %10s %10s %14s\n' "processes in the host" "$before_procs" "$after_procs" "$(per "$before_procs" "$after_procs")"
echo
echo "started $n detached containers in $(( (t1 - t0) / 1000000 )) ms ($(( (t1 - t0) / 1000 / n )) us each, sequential berthctl calls)"
for c in "${!hist[@]}"; do
    echo "processes in the container's scope cgroup: $c in ${hist[$c]} of $n containers"
done
echo "e.g. $ex_unit ($cg_root$(systemctl show -p ControlGroup --value "$ex_unit")):"
while read -r p; do
    printf '  PID %-6s %s\n' "$p" "$(tr '\0' ' ' </proc/$p/cmdline)"
done <"$cg_root$(systemctl show -p ControlGroup --value "$ex_unit")/cgroup.procs"
echo "(berth's init + the payload, nothing else: no per-container supervisor process; berthd is one process for all)"

t0=$(date +%s%N)
names=()
for i in $(seq 1 "$n"); do names+=("bench$i"); done
berthctl remove --force "${names[@]}"
t1=$(date +%s%N)
left=$(berthctl list --all | awk 'NR > 1' | wc -l)
sleep 0.5
echo "removed them (berthctl remove --force, one call) in $(( (t1 - t0) / 1000000 )) ms; containers left: $left; berthd VmRSS now $(kv VmRSS /proc/$pid/status) KiB, $(ls /proc/$pid/fd | wc -l) fds"
[[ $left == 0 ]]
EOF

log ""
log "hyperfine JSON: $OUT/{berth,berth-none,nspawn,nspawn-userns,podman}.json"
log "bench: done in $(($(date +%s) - T_START)) s"
