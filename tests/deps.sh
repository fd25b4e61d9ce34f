#!/usr/bin/env bash
# Install (as root, from Debian) what building berth, its default image and its tests need.
# Cargo/rustc themselves must already be there (rustup; Rust >= 1.89).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
need=(systemd systemd-container dbus dbus-bin util-linux bsdutils mount iproute2 busybox-static python3 libglib2.0-bin make gcc
      docker-registry skopeo umoci apache2-utils podman python3-dbus python3-gi
      polkitd libc6-dev libcap2-bin tmux
      selinux-policy-dev checkpolicy semodule-utils setools bzip2 nftables iperf3)
missing=()
for p in "${need[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}" >&2
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi
command -v cargo >/dev/null || { echo "cargo not found: install Rust >= 1.89 (rustup)" >&2; exit 1; }
