#!/usr/bin/env bash
# Stop the registries start.sh started (only their PIDs) and remove their directory.
# usage: stop.sh DIR
set -u
dir=${1:?usage: stop.sh DIR}
case $dir in /tmp/berth-registry.*) ;; *) echo "not a registry test directory: $dir" >&2; exit 1 ;; esac
if [ -f "$dir/pids" ]; then
  while read -r pid; do kill "$pid" 2>/dev/null; done <"$dir/pids"
  while read -r pid; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
  done <"$dir/pids"
fi
rm -rf "$dir"
