#!/usr/bin/env bash
# `make bench-images`: image import and pull throughput, and container start time from a large
# image, of berth vs podman vs skopeo+umoci on the same inputs, in the same run.
#
# Everything runs in ONE disposable systemd host (tests/host/), so this works where PID 1 is
# not systemd and leaves nothing behind on the machine. In that host (all storage on tmpfs:
# the host's /tmp, /var/lib/berth and a tmpfs for podman's /var/lib/containers) it:
#   1. writes a large OCI image offline (tests/bench/mkbigimage.py: 5 gzip layers, ~440 MB
#      uncompressed / ~240 MB compressed: busybox, thousands of small files from the machine's
#      /usr/share and /usr/lib, 100 MB random, a 32 MB random "app" layer) and "big2", which
#      differs from it in the app layer only; skopeo makes an oci-archive and a docker-archive
#      of "big";
#   2. starts Debian's docker-registry on the host's loopback and pushes both with skopeo;
#   3. times with hyperfine (warmup 1, $BENCH_RUNS runs, the image removed before each run):
#        import:  berthctl image import-oci ARCHIVE big
#                 podman load -i ARCHIVE
#                 skopeo copy oci-archive:ARCHIVE oci:DIR:big && umoci unpack --image DIR:big B
#                 (the same for the docker-archive, skopeo reading docker-archive:ARCHIVE)
#        pull:    berthctl image pull --insecure 127.0.0.1:PORT/bench/big:1 big
#                 podman pull --tls-verify=false 127.0.0.1:PORT/bench/big:1
#                 skopeo copy --src-tls-verify=false docker://... oci:DIR:big && umoci unpack ...
#        pull of big2 with big present (bytes served counted from the registry's access log);
#      and /bin/true in a new container from the large image (hyperfine -N, warmup 3,
#      $BENCH_START_RUNS runs): berthctl run --rm --image big vs podman run --rm --network=none,
#      and from the small busybox image for comparison;
#   4. prints a summary: seconds, MB/s, and competitor time / berth time.
# A competitor that cannot run in the host is reported and skipped; berth failing is fatal.
#
# Needs root. Assumes the release binaries are built in ${CARGO_TARGET_DIR:-target}/release
# (`make bench-images` builds first). Environment: BENCH_RUNS (3), BENCH_START_RUNS (20),
# BENCH_IMAGE_MB (400: the large image's uncompressed size, roughly), BENCH_OUT (where the
# hyperfine JSON files are kept; default: a new directory under /tmp, printed at the end).
set -euo pipefail
cd "$(dirname "$0")/../.."

RUNS=${BENCH_RUNS:-3}
START_RUNS=${BENCH_START_RUNS:-20}
IMAGE_MB=${BENCH_IMAGE_MB:-400}
W=/tmp/bench-images # work directory inside the host (the host's own tmpfs /tmp)
T_START=$(date +%s)

BENCH_NAME=bench-images
. tests/bench/lib.sh
bench_preflight
busybox_pkg=
{ [[ -x /bin/busybox ]] && ! ldd /bin/busybox >/dev/null 2>&1; } || busybox_pkg=busybox-static
bench_packages hyperfine:hyperfine podman:podman skopeo:skopeo umoci:umoci \
    docker-registry:docker-registry python3:python3 $busybox_pkg
for c in hyperfine python3 skopeo docker-registry; do
    command -v $c >/dev/null || die "$c is required (apt-get install $c)"
done

# ---- the host ----------------------------------------------------------------------------------
bench_boot_host
log "host PID $HOST_PID; berth: $(H berthctl --version 2>/dev/null || echo '(version unknown)'), kernel $(uname -r), $(nproc) CPUs"
log "competitors: $(podman --version 2>/dev/null || echo 'podman missing'), $(skopeo --version 2>/dev/null || echo 'skopeo missing'), $(umoci --version 2>/dev/null || echo 'umoci missing'); $(hyperfine --version)"
[[ $(H findmnt -no FSTYPE /var/lib/berth) == tmpfs ]] || die "/var/lib/berth in the host is not a tmpfs"

# ---- 1. the inputs ------------------------------------------------------------------------------
case $(dpkg --print-architecture) in
    armhf) arch=arm ;; ppc64el) arch=ppc64le ;; *) arch=$(dpkg --print-architecture) ;;
esac
log ""
log "== inputs (in the host's tmpfs $W) =="
t0=$(date +%s)
H mkdir -p $W
H python3 "$PWD/tests/bench/mkbigimage.py" $W "$arch" "$IMAGE_MB" >"$OUT/image.json" ||
    die "mkbigimage.py failed"
H skopeo copy -q oci:$W/layout:big oci-archive:$W/big.oci.tar:localhost/bench/big:latest ||
    die "skopeo could not write the oci-archive"
H skopeo copy -q oci:$W/layout:big docker-archive:$W/big.docker.tar:localhost/bench/big:latest ||
    die "skopeo could not write the docker-archive"
H stat -c '%s' $W/big.oci.tar $W/big.docker.tar >"$OUT/archives.txt"
python3 - "$OUT" <<'EOF'
import json, sys
s = json.load(open(sys.argv[1] + "/image.json"))
oci, docker = (int(x) for x in open(sys.argv[1] + "/archives.txt").read().split())
b = s["big"]
print("big: %d layers, %.0f MB compressed (gzip -6), %.0f MB uncompressed; %d files from /usr/share, %d from /usr/lib"
      % (b["layers"], b["compressed"] / 1e6, b["uncompressed"] / 1e6, s["files"]["usr/share"], s["files"]["usr/lib"]))
print("  layers (compressed / uncompressed MB): " + ", ".join(
      "%.1f/%.1f" % (c / 1e6, u / 1e6) for c, u in zip(b["layer_compressed"], b["layer_uncompressed"])))
print("big2: the same but for the last layer (%.1f MB compressed)" % (s["big2"]["layer_compressed"][-1] / 1e6))
print("oci-archive %.0f MB (gzip layers), docker-archive %.0f MB (skopeo writes it uncompressed)" % (oci / 1e6, docker / 1e6))
EOF

# The registry: a unit of the host's systemd, so it goes with the host.
PORT=$(H python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
REG=127.0.0.1:$PORT
H bash -c "cat >$W/registry.yml" <<YML
version: 0.1
log:
  level: warn
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: $W/registry
http:
  addr: $REG
  secret: berth-bench-only
YML
H systemd-run -q --unit=bench-registry -p StandardOutput=append:$W/registry.log \
    -p StandardError=append:$W/registry.log /usr/bin/docker-registry serve $W/registry.yml ||
    die "could not start docker-registry in the host"
for _ in $(seq 100); do
    H python3 -c "import socket; socket.create_connection(('127.0.0.1', $PORT), 0.2)" 2>/dev/null && break
    sleep 0.1
done
for t in big big2; do
    H skopeo copy -q --dest-tls-verify=false oci:$W/layout:$t "docker://$REG/bench/$t:1" ||
        { H cat $W/registry.log >&2; die "skopeo could not push $t to the registry"; }
done
log "registry: docker-registry $(H /usr/bin/docker-registry --version 2>/dev/null | awk '{print $NF}') on $REG (filesystem storage on tmpfs), bench/big:1 and bench/big2:1 pushed by skopeo"
log "inputs ready in $(($(date +%s) - t0)) s"

# ---- the competitors: find what works in the host -----------------------------------------------
UMOCI=''
if H sh -c 'command -v umoci' >/dev/null; then UMOCI=umoci; else log "umoci: NOT AVAILABLE: skopeo+umoci skipped"; fi

PG='' # podman's global options
PODMAN=''
PRUN='' # podman's run options
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
    for g in '' '--storage-driver=vfs'; do
        fresh_podman_storage
        # shellcheck disable=SC2086
        if H bash -c "tar -C /usr/local/lib/berth/images/default -c . | podman $g import - bench-small" >"$OUT/podman-import.log" 2>&1; then
            PODMAN=podman
            PG=$g
            break
        fi
        log "podman: 'podman${g:+ }$g import' failed: $(tail -n1 "$OUT/podman-import.log")"
    done
    if [[ -n $PODMAN ]]; then
        for extra in '' '--events-backend=file' '--events-backend=file --cgroup-manager=systemd' \
            '--events-backend=file --cgroup-manager=cgroupfs' '--events-backend=file --cgroup-manager=cgroupfs --runtime=runc' \
            '--events-backend=file --cgroups=disabled'; do
            g="$PG${PG:+${extra:+ }}$extra"
            # --cgroups is a run option, the rest are global ones.
            ro=''
            [[ $g == *--cgroups=disabled* ]] && { ro=--cgroups=disabled; g=${g/ --cgroups=disabled/}; }
            # shellcheck disable=SC2086
            if H podman $g run --rm --network=none $ro bench-small /bin/true >"$OUT/podman.err" 2>&1; then
                PG=$g PRUN="--network=none${ro:+ }$ro"
                break
            fi
            log "podman: 'podman $g run $ro' failed: $(tail -n2 "$OUT/podman.err" | tr '\n' ' ')"
            PRUN=FAIL
        done
        [[ $PRUN != FAIL ]] || { PRUN=''; log "podman: cannot run containers in the host: its start time is skipped (import and pull still measured)"; }
        # shellcheck disable=SC2086
        log "podman: $(H podman $PG info --format '{{.Version.Version}}, runtime {{.Host.OCIRuntime.Name}}, storage {{.Store.GraphDriverName}} on tmpfs, cgroup manager {{.Host.CgroupManager}} (cgroups {{.Host.CgroupsVersion}})' 2>/dev/null || echo '(podman info failed)'); global options \"$PG\", run options \"$PRUN\""
    else
        log "podman: CANNOT use its storage in the host: skipped"
    fi
fi
P="podman${PG:+ }$PG"
# Remove every podman image but the small one (images are named differently by load and pull).
P_CLEAN="$P images -q --no-trunc | grep -v \"\$($P images -q --no-trunc localhost/bench-small)\" | xargs -r $P rmi -f >/dev/null 2>&1; true"

# ---- hyperfine ----------------------------------------------------------------------------------
bench() { # name warmup runs prepare command [hyperfine options] -> $OUT/NAME.json
    local name=$1 warm=$2 runs=$3 prep=$4 cmd=$5
    shift 5
    log "-- $name: $cmd"
    if H timeout 900 hyperfine "$@" --style basic --warmup "$warm" --runs "$runs" --command-name "$name" \
        ${prep:+--prepare "$prep"} --export-json "/tmp/bench-$name.json" "$cmd" >"$OUT/$name.log" 2>&1; then
        grep -E 'Time|Range' "$OUT/$name.log" | sed 's/^/   /'
        H cat "/tmp/bench-$name.json" >"$OUT/$name.json"
    else
        tail -n 3 "$OUT/$name.log" | sed 's/^/   /'
        log "   once more outside hyperfine, to show why:"
        H bash -c "$prep" >/dev/null 2>&1 || true
        H timeout 300 sh -c "$cmd" 2>&1 | tail -n 5 | sed 's/^/   /' || true
        rm -f "$OUT/$name.json"
        return 1
    fi
}
skip() { log "$1: $2: left out"; echo "$2" >"$OUT/$1.skipped"; }
B_RM="berthctl image remove big big2 >/dev/null 2>&1; true"
U="$W/umoci"
U_PREP="rm -rf $U && mkdir -p $U" # skopeo wants the layout's parent directory to exist

# Checks that an image has the content it should: the random files and the app layer's config.
check_berth() { # image version
    local got
    got=$(H timeout 120 berthctl run --rm --image "$1" -- /bin/sh -c 'ls /opt/random | wc -l; cat /etc/app.conf; ls /usr/share | wc -l') ||
        die "berth cannot run a container from image $1"
    [[ $(echo "$got" | sed -n 2p) == "version=$2" && $(echo "$got" | sed -n 1p) -gt 0 ]] ||
        die "berth's image $1 has the wrong content: $(echo "$got" | tr '\n' ' ')"
}

log ""
log "== 1. import, hyperfine --warmup 1 --runs $RUNS, the image removed before each run =="
for fmt in oci docker; do
    A=$W/big.$fmt.tar
    bench "import-$fmt-berth" 1 "$RUNS" "$B_RM" "berthctl image import-oci -q $A big" ||
        die "berthctl image import-oci $A failed"
    check_berth big 1
    H berthctl image remove big || die "berthctl image remove big failed"
    if [[ -n $PODMAN ]]; then
        bench "import-$fmt-podman" 1 "$RUNS" "$P_CLEAN" "$P load -q -i $A" ||
            skip "import-$fmt-podman" "podman load -i $A failed"
        H bash -c "$P_CLEAN"
    fi
    if [[ -n $UMOCI ]]; then
        src=oci-archive
        [[ $fmt == docker ]] && src=docker-archive
        bench "import-$fmt-umoci" 1 "$RUNS" "$U_PREP" \
            "skopeo copy -q $src:$A oci:$U/layout:big && umoci unpack --image $U/layout:big $U/bundle >/dev/null" ||
            skip "import-$fmt-umoci" "skopeo+umoci from $src failed"
        H rm -rf $U
    fi
done

log ""
log "== 2. pull from the registry on loopback, hyperfine --warmup 1 --runs $RUNS, the image removed before each run =="
bench pull-berth 1 "$RUNS" "$B_RM" "berthctl image pull -q --insecure $REG/bench/big:1 big" ||
    die "berthctl image pull failed"
check_berth big 1
if [[ -n $PODMAN ]]; then
    bench pull-podman 1 "$RUNS" "$P_CLEAN" "$P pull -q --tls-verify=false $REG/bench/big:1" ||
        skip pull-podman "podman pull failed"
fi
if [[ -n $UMOCI ]]; then
    bench pull-umoci 1 "$RUNS" "$U_PREP" \
        "skopeo copy -q --src-tls-verify=false docker://$REG/bench/big:1 oci:$U/layout:big && umoci unpack --image $U/layout:big $U/bundle >/dev/null" ||
        skip pull-umoci "skopeo+umoci pull failed"
fi

log ""
log "== 3. pull of big2 (all layers but the last shared with big) with big present =="
# What the registry served for one pull: response bytes in its access log, from an offset.
served() { # offset -> "bytes requests"
    H python3 - "$W/registry.log" "$1" <<'EOF'
import re, sys
f = open(sys.argv[1], "rb"); f.seek(int(sys.argv[2]))
n = total = 0
for line in f.read().decode(errors="replace").splitlines():
    m = re.search(r'"(GET|HEAD) (\S+) HTTP/[\d.]+" (\d+) (\d+)', line)
    if m:
        n += 1
        total += int(m.group(4)) if m.group(1) == "GET" else 0
print(total, n)
EOF
}
count_bytes() { # name prepare command
    H bash -c "$2" || true
    local off
    off=$(H stat -c %s $W/registry.log)
    H bash -c "$3" >/dev/null || return 1
    sleep 0.2
    served "$off" >"$OUT/$1.bytes"
}
# The layout with big only, copied before each skopeo run: skopeo reuses the blobs in it.
U2_PREP="rm -rf $U/layout2 $U/bundle2 && cp -a $U/layout $U/layout2"
declare -A incr_cmd=(
    [berth]="berthctl image pull -q --insecure $REG/bench/big2:1 big2"
    [podman]="$P pull -q --tls-verify=false $REG/bench/big2:1"
    [umoci]="skopeo copy -q --src-tls-verify=false docker://$REG/bench/big2:1 oci:$U/layout2:big2 && umoci unpack --image $U/layout2:big2 $U/bundle2 >/dev/null"
)
declare -A incr_prep=(
    [berth]="berthctl image remove big2 >/dev/null 2>&1; true"
    [podman]="$P rmi -f $REG/bench/big2:1 >/dev/null 2>&1; true"
    [umoci]="$U2_PREP"
)
for t in berth podman umoci; do
    if [[ $t == podman && ( -z $PODMAN || -e $OUT/pull-podman.skipped ) ]] || [[ $t == umoci && ( -z $UMOCI || -e $OUT/pull-umoci.skipped ) ]]; then
        continue
    fi
    # big is there from the last run of the full pull.
    count_bytes "incr-$t" "${incr_prep[$t]}" "${incr_cmd[$t]}" || {
        [[ $t == berth ]] && die "berthctl image pull of big2 failed"
        skip "incr-$t" "the pull of big2 failed"
        continue
    }
    bench "incr-$t" 1 "$RUNS" "${incr_prep[$t]}" "${incr_cmd[$t]}" || {
        [[ $t == berth ]] && die "berthctl image pull of big2 failed"
        skip "incr-$t" "the pull of big2 failed"
    }
done
check_berth big2 2
check_berth big 1
H rm -rf $U

log ""
log "== 4. start: /bin/true in a new container, hyperfine -N --warmup 3 --runs $START_RUNS =="
bench start-berth-big 3 "$START_RUNS" "" "berthctl run --rm --image big -- /bin/true" -N -i ||
    die "hyperfine failed for berth"
bench start-berth-small 3 "$START_RUNS" "" "berthctl run --rm --image default -- /bin/true" -N -i ||
    die "hyperfine failed for berth"
if [[ -n $PODMAN && -n $PRUN && ! -e $OUT/pull-podman.skipped ]]; then
    bench start-podman-big 3 "$START_RUNS" "" "$P run --rm $PRUN $REG/bench/big:1 /bin/true" -N -i ||
        skip start-podman-big "podman run failed"
    bench start-podman-small 3 "$START_RUNS" "" "$P run --rm $PRUN bench-small /bin/true" -N -i ||
        skip start-podman-small "podman run failed"
fi

# ---- summary ------------------------------------------------------------------------------------
log ""
log "== summary (big: $(python3 -c 'import json,sys; b=json.load(open(sys.argv[1]))["big"]; print("%d layers, %.0f MB gzip, %.0f MB uncompressed" % (b["layers"], b["compressed"]/1e6, b["uncompressed"]/1e6))' "$OUT/image.json")) =="
python3 - "$OUT" "$RUNS" "$START_RUNS" <<'EOF' || die "no successful berth run to report"
import json, os, sys
out = sys.argv[1]
img = json.load(open(os.path.join(out, "image.json")))
oci, docker = (int(x) for x in open(os.path.join(out, "archives.txt")).read().split())
big = img["big"]

def pct(xs, p):  # linear interpolation between closest ranks (numpy's default)
    xs = sorted(xs)
    k = (len(xs) - 1) * p / 100.0
    f = int(k)
    c = min(f + 1, len(xs) - 1)
    return xs[f] + (xs[c] - xs[f]) * (k - f)

def load(name):
    path = os.path.join(out, name + ".json")
    if not os.path.exists(path):
        return None
    r = json.load(open(path))["results"][0]
    codes = r.get("exit_codes") or [0] * len(r["times"])
    ok = [t for t, c in zip(r["times"], codes) if c == 0]
    return {"ok": ok, "bad": len(codes) - len(ok)} if ok else None

def why(name):
    p = os.path.join(out, name + ".skipped")
    return open(p).read().strip() if os.path.exists(p) else "not run"

tools = [("berth", "berth"), ("podman", "podman"), ("umoci", "skopeo+umoci")]
print("%-28s %-13s %8s %8s %8s %9s %10s" % ("throughput (mean of runs)", "tool", "mean s", "min s", "MB/s", "unc MB/s", "vs berth"))
for key, what, mb in [("import-oci", "import oci-archive", oci / 1e6),
                      ("import-docker", "import docker-archive", docker / 1e6),
                      ("pull", "pull (full)", big["compressed"] / 1e6),
                      ("incr", "pull big2, big present", None)]:
    base = load(key + "-berth")
    for t, label in tools:
        r = load("%s-%s" % (key, t))
        if r is None:
            print("%-28s %-13s %s" % (what, label, "n/a (%s)" % why("%s-%s" % (key, t))))
            what = ""
            continue
        mean = sum(r["ok"]) / len(r["ok"])
        rate = "%8.1f %9.1f" % (mb / mean, big["uncompressed"] / 1e6 / mean) if mb else "%8s %9s" % ("-", "-")
        ratio = "%9.2fx" % (mean / (sum(base["ok"]) / len(base["ok"]))) if base else "%10s" % "n/a"
        print("%-28s %-13s %8.2f %8.2f %s %s%s" % (what, label, mean, min(r["ok"]), rate, ratio,
              "  (%d failed runs left out)" % r["bad"] if r["bad"] else ""))
        what = ""
print("MB/s: archive size (oci %.0f MB, docker %.0f MB) or compressed image size (pull, %.0f MB) / mean time;"
      % (oci / 1e6, docker / 1e6, big["compressed"] / 1e6))
print("unc MB/s: uncompressed image size (%.0f MB) / mean time. Wall clock of the client command: berth's"
      % (big["uncompressed"] / 1e6))
print("work happens in berthd, podman's and skopeo's/umoci's in the command itself.")
print()
print("bytes the registry served for one pull of big2 with big present (the new layer is %.1f MB):"
      % (img["big2"]["layer_compressed"][-1] / 1e6))
for t, label in tools:
    p = os.path.join(out, "incr-%s.bytes" % t)
    if os.path.exists(p):
        b, n = open(p).read().split()
        print("  %-13s %8.1f MB in %s requests" % (label, int(b) / 1e6, n))
print()
print("%-28s %-13s %6s %8s %8s %8s %12s" % ("start /bin/true", "tool", "runs", "p50 ms", "p90 ms", "min ms", "p50 vs berth"))
base = load("start-berth-big")
for img_name, what in [("big", "from big (%d layers, %.0f MB)" % (big["layers"], big["uncompressed"] / 1e6)),
                       ("small", "from busybox (1 layer, 2 MB)")]:
    for t, label in [("berth", "berth"), ("podman", "podman")]:
        r = load("start-%s-%s" % (t, img_name))
        if r is None:
            print("%-28s %-13s %s" % (what, label, "n/a (%s)" % why("start-%s-%s" % (t, img_name))))
            what = ""
            continue
        ok = r["ok"]
        ratio = "%11.2fx" % (pct(ok, 50) / pct(base["ok"], 50)) if base else ""
        print("%-28s %-13s %6d %8.1f %8.1f %8.1f %s%s" % (what, label, len(ok), pct(ok, 50) * 1e3,
              pct(ok, 90) * 1e3, min(ok) * 1e3, ratio,
              "  (%d failed runs left out)" % r["bad"] if r["bad"] else ""))
        what = ""
print("vs berth: competitor time / berth time (>1: berth is faster); start ratios against berth from big")
if base is None:
    sys.exit(1)
EOF

log ""
log "hyperfine JSON and logs: $OUT"
log "bench-images: done in $(($(date +%s) - T_START)) s"
