#!/bin/bash
# Run a command inside a test host started by up.sh.
#
# Usage: tests/host/exec.sh STATE_DIR CMD [ARGS...]
#
# stdin, stdout and stderr are passed through, and the exit status is CMD's (128+N if it was
# killed by signal N). Exit status 1 with a message on stderr if the host is not running.
# The command runs as root in all of the host's namespaces, with the host's / and cwd /. The
# caller's environment is kept except for what would point at the machine instead of the
# host (DBUS_*_BUS_ADDRESS, NOTIFY_SOCKET, XDG_RUNTIME_DIR, TMPDIR); PATH is reset.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tests/host/lib.sh
. "$HERE/lib.sh"

(($# >= 2)) || { echo "usage: ${0##*/} STATE_DIR CMD [ARGS...]" >&2; exit 2; }
STATE=$(canonical_state_dir "$1")
shift

[[ -f $STATE/pid ]] || die "no test host in $STATE (no $STATE/pid)"
PID=$(cat "$STATE/pid")
same_process_alive "$PID" "$(cat "$STATE/pid.start" 2>/dev/null)" ||
    die "the test host in $STATE is not running (PID $PID is gone)"

# Join the host's cgroup subtree first (a child cgroup of its root that systemd does not
# manage). nsenter does not move cgroups, and a process left in the machine's cgroup is
# outside the host's cgroup namespace: the host's systemd could not move it into a unit
# (e.g. `systemd-run --scope` fails on the cgroup2 hierarchy), and it would look like
# "/../.." in /proc/self/cgroup.
cgroup_attach "$STATE" $$ berth-testhost-exec

unset DBUS_SYSTEM_BUS_ADDRESS DBUS_SESSION_BUS_ADDRESS NOTIFY_SOCKET XDG_RUNTIME_DIR TMPDIR \
    LISTEN_PID LISTEN_FDS LISTEN_FDNAMES INVOCATION_ID JOURNAL_STREAM
export PATH=$HOST_PATH

# -a: every namespace of PID (util-linux skips the ones we already share, e.g. user), plus
# its root directory and cwd. nsenter forks for the pid namespace and relays the exit status.
exec nsenter --target "$PID" --all -- "$@"
