#!/usr/bin/env bash
# Build the SELinux policy modules in policy/selinux/ with the distribution's policy
# development tools, then link them into Debian's policy (selinux-policy-default, fetched
# with apt-get download, never installed) and check the rules berth depends on:
#   A. berth.pp into the base policy alone: it loads where there is no container module
#      (Debian 12), the container rules left out;
#   B. berth.pp + berth_container.pp into the whole policy (no clash with any of its 330
#      modules): berthd_t may exec its helper, is started by systemd,
#      and may move the payload to container_t (also under no_new_privs) on container_file_t
#      mounts.
# Fails on any build error or m4 warning and on any missing rule. Needs no root and no
# SELinux in the kernel; needs the packages selinux-policy-dev checkpolicy semodule-utils
# setools (and apt-get to fetch the reference policy).
# BERTH_SELINUX_POLICY_DEB=/path/to/selinux-policy-default_*.deb skips the download.
set -euo pipefail
cd "$(dirname "$0")/.."

devel=/usr/share/selinux/devel/Makefile
for tool in "$devel" checkmodule semodule_package semodule_link semodule_expand sesearch seinfo; do
  if ! [ -e "$tool" ] && ! command -v "$tool" >/dev/null; then
    echo "selinux-policy: $tool missing: apt-get install selinux-policy-dev checkpolicy semodule-utils setools" >&2
    exit 1
  fi
done

tmp=$(mktemp -d /tmp/berth-selinux.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
chmod 0755 "$tmp" # apt-get download runs as _apt where it can

passed=0
failed=0
# check DESCRIPTION WORD COMMAND...: COMMAND must succeed and print WORD (a whole word).
check() {
  local what=$1 word=$2; shift 2
  local out
  if out=$("$@" 2>&1) && grep -qw -- "$word" <<<"$out"; then
    passed=$((passed + 1))
  else
    printf 'selinux-policy: FAILED: %s (%s)\n%s\n' "$what" "$*" "$out" >&2
    failed=$((failed + 1))
  fi
}
# check_none DESCRIPTION WORD COMMAND...: COMMAND must succeed and not print WORD.
check_none() {
  local what=$1 word=$2; shift 2
  local out
  if out=$("$@" 2>&1) && ! grep -qw -- "$word" <<<"$out"; then
    passed=$((passed + 1))
  else
    printf 'selinux-policy: FAILED: %s (%s)\n%s\n' "$what" "$*" "$out" >&2
    failed=$((failed + 1))
  fi
}

# --- build --------------------------------------------------------------------------------
mkdir "$tmp/build"
cp policy/selinux/*.te policy/selinux/*.if policy/selinux/*.fc "$tmp/build/"
if ! (cd "$tmp/build" && make -f "$devel" berth.pp berth_container.pp) >"$tmp/build.log" 2>&1; then
  cat "$tmp/build.log" >&2
  echo "selinux-policy: building the modules failed" >&2
  exit 1
fi
if grep -iE 'warning|error' "$tmp/build.log" >&2; then
  echo "selinux-policy: the build printed warnings (above); fix them" >&2
  exit 1
fi
echo "selinux-policy: built berth.pp and berth_container.pp"

# --- the reference policy -----------------------------------------------------------------
mkdir "$tmp/ref"
deb=${BERTH_SELINUX_POLICY_DEB:-}
if [ -z "$deb" ]; then
  (cd "$tmp/ref" && apt-get download -q -o APT::Sandbox::User=root selinux-policy-default >/dev/null)
  deb=$(ls "$tmp"/ref/selinux-policy-default_*.deb)
fi
dpkg-deb -x "$deb" "$tmp/ref/root"
mkdir "$tmp/ref/pp"
for f in "$tmp"/ref/root/usr/share/selinux/default/*.pp.bz2; do
  bunzip2 -c "$f" >"$tmp/ref/pp/$(basename "$f" .bz2)"
done
modules=$(cd "$tmp/ref/pp" && ls *.pp | grep -v '^base\.pp$')

# --- A: berth.pp without any container policy ---------------------------------------------
# base and policykit are all berth.pp needs outside optional blocks.
semodule_link -o "$tmp/a.lnk" "$tmp/ref/pp/base.pp" "$tmp/ref/pp/policykit.pp" "$tmp/build/berth.pp" >/dev/null
semodule_expand "$tmp/a.lnk" "$tmp/a.bin"
check "A: berthd_t is declared" berthd_t seinfo -t berthd_t "$tmp/a.bin"
check "A: systemd starts berthd in berthd_t" type_transition sesearch -T -s init_t -t berthd_exec_t -c process "$tmp/a.bin"
check_none "A: no container types without a container policy" container_t seinfo -t container_t "$tmp/a.bin"

# --- B: the whole Debian policy + berth_container.pp + berth.pp ----------------------------
(cd "$tmp/ref/pp" && semodule_link -o "$tmp/b.lnk" base.pp $modules \
  "$tmp/build/berth_container.pp" "$tmp/build/berth.pp" >/dev/null)
semodule_expand "$tmp/b.lnk" "$tmp/b.bin"
b=$tmp/b.bin
check "B: systemd starts berthd in berthd_t" type_transition sesearch -T -s init_t -t berthd_exec_t -c process "$b"
check "B: berthd executes berth-helper" allow sesearch -A -s berthd_t -t berth_helper_exec_t -c file -p execute "$b"
check "B: berthd sets exec labels" allow sesearch -A -s berthd_t -t berthd_t -c process -p setexec "$b"
check "B: transition to container_t" allow sesearch -A -s berthd_t -t container_t -c process -p transition "$b"
check "B: transition under no_new_privs" allow sesearch -A -s berthd_t -t container_t -c process2 -p nnp_transition "$b"
check "B: context= relabels to container_file_t" allow sesearch -A -s berthd_t -t container_file_t -c filesystem -p relabelto "$b"
check "B: context= relabels overlay from its xattr type" allow sesearch -A -s berthd_t -t fs_t -c filesystem -p relabelfrom "$b"
check "B: context= relabels tmpfs" allow sesearch -A -s berthd_t -t tmpfs_t -c filesystem -p relabelfrom "$b"
check "B: the payload enters container_t from container_file_t" allow sesearch -A -s container_t -t container_file_t -c file -p entrypoint "$b"
check "B: the payload inherits stdio from the helper" allow sesearch -A -s container_t -t berthd_t -c fd -p use "$b"
check "B: berthd is a system container engine" berthd_t seinfo -x -a container_engine_system_domain "$b"
check "B: berthd owns /var/lib/berth" allow sesearch -A -s berthd_t -t berth_var_lib_t -c dir -p add_name "$b"
check "B: berthd owns /run/berth" allow sesearch -A -s berthd_t -t berth_var_run_t -c file -p create "$b"
check "B: berthd starts transient scopes" allow sesearch -A -s berthd_t -t systemd_transient_unit_t -c service -p start "$b"
check "B: berthd is a system bus client" allow sesearch -A -s berthd_t -t system_dbusd_t -c dbus -p send_msg "$b"

echo "selinux-policy: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
