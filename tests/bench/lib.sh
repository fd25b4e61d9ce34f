# Shared by tests/bench/*.sh, sourced from the checkout's root after BENCH_NAME is set:
# logging, the root and binary checks, Debian packages, and the disposable systemd host every
# benchmark runs in (tests/host/), torn down on exit.

log() { printf '%s\n' "$*"; }
die() { printf '%s: %s\n' "$BENCH_NAME" "$*" >&2; exit 1; }

# The build that is installed in the host: release, the only one whose numbers mean anything;
# BENCH_PROFILE=dev installs the debug binaries instead, to check that a script runs end to end.
export BENCH_PROFILE=${BENCH_PROFILE:-release}
[[ $BENCH_PROFILE == release || $BENCH_PROFILE == dev ]] || die "BENCH_PROFILE must be release or dev"

# Root, and the binaries built (in $CARGO_TARGET_DIR, else target/).
bench_preflight() {
    [[ $EUID == 0 ]] || die "must run as root (it boots a disposable systemd host)"
    local dir=release b
    [[ $BENCH_PROFILE == dev ]] && dir=debug
    local bin=${CARGO_TARGET_DIR:-target}/$dir
    for b in berthd berthctl berth-helper; do
        [[ -x $bin/$b ]] || die "$bin/$b missing: build first (cargo build --profile $BENCH_PROFILE --locked)"
    done
    [[ $BENCH_PROFILE == release ]] ||
        log "$BENCH_NAME: WARNING: debug binaries (BENCH_PROFILE=dev): the numbers mean nothing" >&2
}

# Install what is missing: COMMAND:PACKAGE pairs (installed when the command is not found) or
# plain PACKAGE names (installed when dpkg does not know them).
bench_packages() {
    local want need=()
    for want in "$@"; do
        if [[ $want == *:* ]]; then
            command -v "${want%%:*}" >/dev/null || need+=("${want#*:}")
        else
            dpkg -s "$want" >/dev/null 2>&1 || need+=("$want")
        fi
    done
    ((${#need[@]})) || return 0
    log "$BENCH_NAME: installing ${need[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends "${need[@]}" >&2 ||
        log "$BENCH_NAME: apt-get install failed; continuing with what is there" >&2
}

# Run a command in the host.
H() { tests/host/exec.sh "$state" "$@"; }

bench_cleanup() {
    local rc=$?
    if ((rc != 0)) && [[ -e $state/pid ]]; then
        echo "--- berthd journal (bench host) ---" >&2
        tests/host/exec.sh "$state" journalctl -u berthd --no-pager -n 60 >&2 || true
    fi
    # Everything a benchmark starts in the host (registries, podman, containers, tmpfs
    # mounts) goes with it.
    tests/host/down.sh "$state" >/dev/null 2>&1 || echo "$BENCH_NAME: teardown of $state failed" >&2
    exit $rc
}

# Boot the host with berth installed and berthd started. Sets OUT (results: BENCH_OUT, else a
# new directory under /tmp), state and HOST_PID; the host is torn down when the script exits.
bench_boot_host() {
    OUT=${BENCH_OUT:-$(mktemp -d "/tmp/berth-$BENCH_NAME-results.XXXXXX")}
    mkdir -p "$OUT"
    state=$(mktemp -d /tmp/berth-bench.XXXXXX)
    rmdir "$state"
    trap bench_cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    log "== booting a disposable systemd host (state $state) =="
    HOST_PID=$(tests/host/up.sh "$state" --install-cmd "${BENCH_INSTALL_CMD:-make install DESTDIR=\$ROOT PROFILE=$BENCH_PROFILE >&2}" 2>"$OUT/up.log") || {
        cat "$OUT/up.log" >&2
        die "the disposable systemd host did not boot"
    }
    H systemctl start berthd || die "systemctl start berthd failed in the host"
}

# podman in the host, with the built-in busybox image imported as IMAGE (a tarball of its tree:
# no network). Its storage is a fresh tmpfs (the host's / is an overlay, and overlayfs refuses
# an upper dir on overlayfs; a fresh one for each try, as podman's database remembers the
# storage driver). Tries global options until `podman run -d` and `podman exec` work. Sets P
# to "podman" and those options and returns 0; else reports why, leaves P empty, returns 1.
bench_podman() { # IMAGE
    local img=$1 g extra globals
    P=''
    if ! H sh -c 'command -v podman' >/dev/null; then
        log "podman: NOT AVAILABLE (package podman not installed): skipped"
        return 1
    fi
    for g in '' '--storage-driver=vfs' FAIL; do
        [[ $g != FAIL ]] || { log "podman: CANNOT import an image in the host: skipped"; return 1; }
        H bash -c 'umount -R /var/lib/containers 2>/dev/null; rm -rf /run/containers /run/libpod
                   mkdir -p /var/lib/containers && mount -t tmpfs -o mode=700 bench-podman /var/lib/containers'
        # shellcheck disable=SC2086
        H bash -c "tar -C /usr/local/lib/berth/images/default -c . | podman $g import -q - $img" \
            >"$OUT/podman-import.log" 2>&1 && break
        log "podman: 'podman${g:+ }$g import' failed: $(tail -n1 "$OUT/podman-import.log")"
    done
    for extra in '' '--events-backend=file' '--events-backend=file --cgroup-manager=systemd' \
        '--events-backend=file --cgroup-manager=cgroupfs'; do
        globals="$g${g:+${extra:+ }}$extra"
        # shellcheck disable=SC2086
        if H podman $globals run -d --name bench-podman-probe --network=none "$img" /bin/sleep 1000 >"$OUT/podman.err" 2>&1 &&
            H podman $globals exec bench-podman-probe /bin/true >>"$OUT/podman.err" 2>&1; then
            P="podman${globals:+ }$globals"
            H $P rm -f -t 0 bench-podman-probe >/dev/null 2>&1 || log "podman: cannot remove its probe container, ignoring"
            log "podman: $(H $P info --format '{{.Version.Version}}, runtime {{.Host.OCIRuntime.Name}}, storage {{.Store.GraphDriverName}} on tmpfs, cgroup manager {{.Host.CgroupManager}} (cgroups {{.Host.CgroupsVersion}}), events {{.Host.EventLogger}}' 2>/dev/null || echo '(podman info failed)'); global options \"$globals\""
            return 0
        fi
        log "podman: 'podman${globals:+ }$globals run -d / exec' failed: $(tail -n2 "$OUT/podman.err" | tr '\n' ' ')"
        # shellcheck disable=SC2086
        H podman $globals rm -f -t 0 bench-podman-probe >/dev/null 2>&1 || true
    done
    log "podman: CANNOT run containers in the host: skipped"
    return 1
}
