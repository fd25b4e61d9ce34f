# Shared by tests/bench/*.sh, sourced from the checkout's root after BENCH_NAME is set:
# logging, the root and binary checks, Debian packages, and the disposable systemd host every
# benchmark runs in (tests/host/), torn down on exit.

log() { printf '%s\n' "$*"; }
die() { printf '%s: %s\n' "$BENCH_NAME" "$*" >&2; exit 1; }

# Root, and the release binaries built (in $CARGO_TARGET_DIR, else target/).
bench_preflight() {
    [[ $EUID == 0 ]] || die "must run as root (it boots a disposable systemd host)"
    local bin=${CARGO_TARGET_DIR:-target}/release b
    for b in berthd berthctl berth-helper; do
        [[ -x $bin/$b ]] || die "$bin/$b missing: build first (cargo build --release --locked)"
    done
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
    HOST_PID=$(tests/host/up.sh "$state" --install-cmd "${BENCH_INSTALL_CMD:-make install DESTDIR=\$ROOT PROFILE=release >&2}" 2>"$OUT/up.log") || {
        cat "$OUT/up.log" >&2
        die "the disposable systemd host did not boot"
    }
    H systemctl start berthd || die "systemctl start berthd failed in the host"
}
