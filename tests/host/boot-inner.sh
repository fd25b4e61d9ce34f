#!/bin/bash
# Runs as PID 1 of the test host's fresh pid/mount/uts/ipc/net/cgroup namespaces (up.sh starts
# it through `unshare --fork`). It finishes the host's root filesystem from inside the
# namespaces, pivots into it and execs systemd, which therefore becomes PID 1.
#
# Usage (internal): boot-inner.sh STATE_DIR
#
# Everything mounted here lives only in the host's private mount namespace (unshare makes
# propagation private), so none of it appears on the machine and none of it needs unmounting
# on teardown: the namespace vanishes with its last process.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tests/host/lib.sh
. "$HERE/lib.sh"

STATE=${1:?usage: boot-inner.sh STATE_DIR}
ROOT=$STATE/merged

# up.sh moves our parent (the `unshare` process) out of the host's cgroup subtree and then
# creates this file. We must not exec systemd before that: at start-up systemd migrates every
# process it finds in its root cgroup into init.scope, and the unshare process lives outside
# our pid namespace.
for _ in $(seq 1500); do
    [[ -e $STATE/release ]] && break
    sleep 0.02
done
[[ -e $STATE/release ]] || die "up.sh never released the boot (no $STATE/release after 30 s)"

# /proc for the new pid namespace. The machine's /proc, inherited with the mount namespace,
# would show the machine's processes.
mount -t proc -o nosuid,nodev,noexec proc "$ROOT/proc"

# The kernel's sysctls are mostly global: keep /proc/sys read-only so nothing in the host
# (systemd-sysctl, a test, berthd) changes the machine's kernel settings. /proc/sys/net is per
# network namespace and the host has its own, so it stays writable (berthd may need
# net.ipv4.ip_forward). This is what systemd-nspawn does for a private network.
mount --bind "$ROOT/proc/sys" "$ROOT/proc/sys"
mount -o remount,bind,ro,nosuid,nodev,noexec "$ROOT/proc/sys"
mount --bind "$ROOT/proc/sys/net" "$ROOT/proc/sys/net"
mount -o remount,bind,rw,nosuid,nodev,noexec "$ROOT/proc/sys/net"
# sysrq-trigger would reboot/crash the whole machine; hide it (if this kernel has it).
if [[ -e $ROOT/proc/sysrq-trigger ]]; then
    mount --bind /dev/null "$ROOT/proc/sysrq-trigger"
fi

# /sys read-only: the udev units are conditioned on a writable /sys, and udev-trigger would
# otherwise write to the uevent files of the machine's real devices. Mounted fresh (not bound)
# so that /sys/class/net shows the host's own network namespace.
mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$ROOT/sys"

# cgroups: the same layout as the machine, but mounted from inside our cgroup namespace, so
# each hierarchy's root is the host's own subtree. systemd then manages only that subtree and
# never touches the machine's root cgroups.
while IFS=$'\t' read -r rel fstype opts _subtree; do
    if [[ $rel == . ]]; then
        # Pure cgroup2 machine: cgroup2 directly at /sys/fs/cgroup.
        mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 "$ROOT/sys/fs/cgroup"
        continue
    fi
    if ! mountpoint -q "$ROOT/sys/fs/cgroup"; then
        mount -t tmpfs -o nosuid,nodev,noexec,mode=755,size=4m tmpfs "$ROOT/sys/fs/cgroup"
    fi
    mkdir -p "$ROOT/sys/fs/cgroup/$rel"
    if [[ $fstype == cgroup2 ]]; then
        mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 "$ROOT/sys/fs/cgroup/$rel"
    else
        mount -t cgroup -o "nosuid,nodev,noexec,$opts" cgroup "$ROOT/sys/fs/cgroup/$rel"
    fi
done <"$STATE/cgroups"
# Like systemd does on a real hybrid host: the tmpfs holding the mount points is read-only.
if [[ $(findmnt -no FSTYPE "$ROOT/sys/fs/cgroup") == tmpfs ]]; then
    mount -o remount,ro "$ROOT/sys/fs/cgroup"
fi

# A minimal /dev of our own (as systemd-nspawn builds one). Binding the machine's devtmpfs
# would let the host's tmpfiles/udev rules act on the machine's real devices.
mount -t tmpfs -o nosuid,mode=755,size=4m tmpfs "$ROOT/dev"
mknod -m 666 "$ROOT/dev/null" c 1 3
mknod -m 666 "$ROOT/dev/zero" c 1 5
mknod -m 666 "$ROOT/dev/full" c 1 7
mknod -m 666 "$ROOT/dev/random" c 1 8
mknod -m 666 "$ROOT/dev/urandom" c 1 9
mknod -m 666 "$ROOT/dev/tty" c 5 0
# fuse and tun are handy for container runtimes; bind them only if the machine has them.
for dev in fuse net/tun; do
    if [[ -c /dev/$dev ]]; then
        mkdir -p "$(dirname "$ROOT/dev/$dev")"
        touch "$ROOT/dev/$dev"
        mount --bind "/dev/$dev" "$ROOT/dev/$dev"
    fi
done
ln -s /proc/self/fd "$ROOT/dev/fd"
ln -s /proc/self/fd/0 "$ROOT/dev/stdin"
ln -s /proc/self/fd/1 "$ROOT/dev/stdout"
ln -s /proc/self/fd/2 "$ROOT/dev/stderr"
ln -s /proc/kcore "$ROOT/dev/core"
mkdir -m 755 "$ROOT/dev/pts" "$ROOT/dev/shm"
# A private devpts instance: ptys made in the host are not the machine's.
mount -t devpts -o newinstance,ptmxmode=0666,mode=620,gid=5,nosuid,noexec devpts "$ROOT/dev/pts"
ln -s pts/ptmx "$ROOT/dev/ptmx"
mount -t tmpfs -o nosuid,nodev,mode=1777 tmpfs "$ROOT/dev/shm"
# /dev/console: systemd as PID 1 reopens /dev/console for every log line and status message,
# and units with StandardOutput=...+console write there too. up.sh runs us under `script`, so
# our stdout is a pty whose master `script` copies to STATE_DIR/console.log. A pty (unlike a
# plain file, which would be overwritten from offset 0 on every open, or a FIFO, which blocks
# when its reader is gone) never blocks PID 1: if `script` dies, writes just fail with EIO.
[[ -t 1 && -t 2 ]] || die "stdout is not a terminal; boot-inner.sh must be started by up.sh (under script)"
# No CR before LF in console.log.
stty -onlcr <&1
touch "$ROOT/dev/console"
# (fd 2: inside $(...) fd 1 is the substitution's pipe.)
mount --bind "$(readlink -f /proc/self/fd/2)" "$ROOT/dev/console"

# Make the merged tree the root of this mount namespace, then drop every view of the machine's
# mounts. pivot_root needs a mount point as new root; merged is one (the overlay).
mkdir -p "$ROOT/run/.berth-oldroot"
cd "$ROOT"
pivot_root . run/.berth-oldroot
cd /
umount -l /run/.berth-oldroot
rmdir /run/.berth-oldroot

# `container=` tells systemd it runs in a container (skips hardware units, does not try to
# mount what the container manager provides, no reboot via the kernel). A clean environment:
# nothing of the caller's leaks into the host's services.
exec env -i container=berth-test PATH="$HOST_PATH" \
    /lib/systemd/systemd --system --unit=basic.target --show-status=yes
