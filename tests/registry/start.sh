#!/usr/bin/env bash
# Start two docker-registry instances on loopback for tests/registry.rs, sharing one storage:
# an open one and one behind htpasswd basic auth (user "berth", password "secret"). Push the
# images from mkimage.py, then damage the unique layer of test/corrupt in storage.
#
# usage: start.sh [OWNER_PID]
# Prints DIR=, PORT=, AUTH_PORT= lines. stop.sh DIR stops both registries and removes DIR;
# with OWNER_PID, a watchdog does that when the owner (the test process) exits.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
for cmd in docker-registry skopeo htpasswd python3; do
  command -v "$cmd" >/dev/null || { echo "$cmd is missing: run tests/deps.sh (as root)" >&2; exit 1; }
done

dir=$(mktemp -d /tmp/berth-registry.XXXXXX)
trap '"$here/stop.sh" "$dir"' ERR

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# OCI names; Debian's architecture names differ for a few.
case $(dpkg --print-architecture) in
  armhf) host=arm ;; ppc64el) host=ppc64le ;; *) host=$(dpkg --print-architecture) ;;
esac
other=s390x; [ "$host" = s390x ] && other=ppc64le
python3 "$here/mkimage.py" "$dir" "$host" "$other"

htpasswd -Bbc "$dir/htpasswd" berth secret 2>/dev/null

start_registry() { # name port [auth yaml]
  cat >"$dir/$1.yml" <<YML
version: 0.1
log:
  level: warn
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: $dir/storage
http:
  addr: 127.0.0.1:$2
  secret: berth-test-only
$3
YML
  /usr/bin/docker-registry serve "$dir/$1.yml" </dev/null >"$dir/$1.log" 2>&1 &
  echo $! >>"$dir/pids"
  for _ in $(seq 100); do
    if python3 -c "import socket,sys; socket.create_connection(('127.0.0.1', $2), 0.2)" 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "docker-registry $1 did not start:" >&2; cat "$dir/$1.log" >&2; return 1
}

port=$(free_port)
start_registry open "$port" ""
auth_port=$(free_port)
start_registry auth "$auth_port" "auth:
  htpasswd:
    realm: berth-test
    path: $dir/htpasswd"

push() { # src-name dest-repo [skopeo options]
  local src=$1 dest=$2; shift 2
  skopeo --tmpdir "$dir" copy -q "$@" --dest-tls-verify=false \
    "oci:$dir/layout:$src" "docker://127.0.0.1:$port/$dest" >&2
}
push a test/a:1
push b test/b:1
push big test/big:1
push corrupt test/corrupt:1
push multi test/multi:1 --all
push b test/b-docker:1 --format v2s2
push multi test/multi-docker:1 --all --format v2s2

# Flip one byte of the layer only test/corrupt has; the registry serves it unchecked.
layer=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["corrupt"]["layers"][1].split(":")[1])' "$dir/expected.json")
python3 - "$dir/storage/docker/registry/v2/blobs/sha256/${layer:0:2}/$layer/data" <<'PY'
import sys
with open(sys.argv[1], "r+b") as f:
    f.seek(100); b = f.read(1); f.seek(100); f.write(bytes([b[0] ^ 0xff]))
PY

if [ -n "${1:-}" ]; then
  # Detached, with no inherited stdio, so the caller's read of our output ends.
  setsid bash -c 'while kill -0 "$1" 2>/dev/null; do sleep 0.5; done; exec "$2/stop.sh" "$3"' \
    watchdog "$1" "$here" "$dir" </dev/null >/dev/null 2>&1 &
fi
trap - ERR
echo "DIR=$dir"
echo "PORT=$port"
echo "AUTH_PORT=$auth_port"
