#!/usr/bin/env bash
# The privileged test tier: boot a disposable systemd host (tests/host/), install berth into it,
# start berthd, and run tests/integration.rs against it. If the host cannot boot this fails; it
# never skips. Usage: tests/run-integration.sh [extra cargo test args...]
set -euo pipefail
cd "$(dirname "$0")/.."
PROFILE=${PROFILE:-release}
state=$(mktemp -d /tmp/berth-it.XXXXXX)
rmdir "$state"
cleanup() {
  local rc=$?
  if [ $rc -ne 0 ] && [ -e "$state/pid" ]; then
    echo "--- berthd journal (test host) ---" >&2
    tests/host/exec.sh "$state" journalctl -u berthd -u 'berth@*' --no-pager -n 80 >&2 || true
  fi
  tests/host/down.sh "$state" >/dev/null 2>&1 || echo "run-integration: teardown of $state failed" >&2
  exit $rc
}
trap cleanup EXIT
pid=$(tests/host/up.sh "$state" --install-cmd "make install DESTDIR=\$ROOT PROFILE=$PROFILE >&2")
echo "test host up: systemd PID $pid, state $state" >&2
tests/host/exec.sh "$state" systemctl start berthd
cargo_profile=()
[ "$PROFILE" = release ] && cargo_profile=(--release)
BERTH_TEST_HOST=$state cargo test "${cargo_profile[@]}" --locked --tests -- --test-threads=1 "$@"
