#!/usr/bin/env bash
# The privileged test tier: boot a disposable systemd host (tests/host/), install berth into it,
# start berthd, and run tests/integration.rs against it. If the host cannot boot this fails; it
# never skips. Usage: tests/run-integration.sh [extra cargo test args...]
set -euo pipefail
cd "$(dirname "$0")/.."
PROFILE=${PROFILE:-release}
state=$(mktemp -d /tmp/berth-it.XXXXXX)
rmdir "$state"
# Image fixtures made by real tools (podman, skopeo) and the registry harness, in a directory
# the test host sees (its /tmp is its own, so not under /tmp).
fixtures=$(mktemp -d /var/tmp/berth-fixtures.XXXXXX)
cleanup() {
  local rc=$?
  if [ $rc -ne 0 ] && [ -e "$state/pid" ]; then
    echo "--- berthd journal (test host) ---" >&2
    tests/host/exec.sh "$state" journalctl -u berthd -u 'berth@*' --no-pager -n 80 >&2 || true
  fi
  tests/host/down.sh "$state" >/dev/null 2>&1 || echo "run-integration: teardown of $state failed" >&2
  rm -rf "$fixtures"
  exit $rc
}
trap cleanup EXIT
tests/fixtures/make-images.sh "$fixtures" >&2
# The in-container probe of tests/security.rs, static so it runs in any image.
gcc -static -O2 -Wall -o "$fixtures/probe" tests/probe/probe.c
cp -r tests/registry "$fixtures/registry"
pid=$(tests/host/up.sh "$state" --install-cmd "make install DESTDIR=\$ROOT PROFILE=$PROFILE >&2")
echo "test host up: systemd PID $pid, state $state" >&2
tests/host/exec.sh "$state" systemctl start berthd
cargo_profile=()
[ "$PROFILE" = release ] && cargo_profile=(--release)
BERTH_TEST_HOST=$state BERTH_FIXTURES=$fixtures cargo test "${cargo_profile[@]}" --locked --no-fail-fast --tests -- --test-threads=1 "$@"
