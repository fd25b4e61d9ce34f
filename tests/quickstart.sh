#!/usr/bin/env bash
# The README's first command (`make quickstart`): build, install and run a first container
# from the built-in busybox image. On a systemd host berth is installed for real; where PID 1
# is not systemd, it is installed into a disposable systemd host (tests/host/) that is torn
# down afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
first=(berthctl run --rm --name first -- /bin/sh -c 'echo "hello from container $(hostname): PID $$ of $(ls -d /proc/[0-9]* | wc -l) processes"; cat /etc/os-release')
if [ "$(cat /proc/1/comm 2>/dev/null)" = systemd ]; then
  make install
  systemctl daemon-reload
  systemctl reload dbus || true
  systemctl start berthd
  "${first[@]}"
  berthctl list --all
  exit 0
fi
state=$(mktemp -d /tmp/berth-quickstart.XXXXXX)
rmdir "$state"
trap 'tests/host/down.sh "$state" >/dev/null 2>&1 || true' EXIT
echo "PID 1 is not systemd: booting a disposable systemd host for berth..." >&2
tests/host/up.sh "$state" --install-cmd 'make install DESTDIR=$ROOT >&2' >/dev/null
tests/host/exec.sh "$state" systemctl start berthd
tests/host/exec.sh "$state" "${first[@]}"
tests/host/exec.sh "$state" berthctl run -d --name web -- sleep 1000 >/dev/null
tests/host/exec.sh "$state" berthctl status web
