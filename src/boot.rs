//! `--boot`: an OS container, as `systemd-nspawn -b` runs one. The image's init (systemd) is
//! the container's PID 1 itself — no stub init in front of it, so that the signals the
//! service manager and machined use (SIGRTMIN+3/+4 halt and poweroff, SIGINT reboot, SIGTERM
//! re-execution) reach it — with:
//! - `container=berth` in its environment (systemd's `detect_virt()` reads PID 1's);
//! - a writable cgroup2 at /sys/fs/cgroup, the root of its cgroup namespace being the
//!   container's delegated scope, owned by the container's root (berthd chowns it, as nspawn
//!   does for a user-namespaced container and as systemd's delegation contract describes);
//! - `/run/host/os-release`, the host's os-release, read-only (systemd's container
//!   interface, `docs/CONTAINER_INTERFACE.md`);
//! - nspawn's default capability set, among them CAP_SYS_ADMIN (systemd mounts its API file
//!   systems and sandboxes services) and CAP_SYS_BOOT (so that `reboot(2)` in the container
//!   ends its PID namespace with SIGHUP or SIGINT, telling a reboot from a poweroff). This is
//!   only offered inside a user namespace: a booted container never has host capabilities.
//!
//! The plan side is here; berthd's side (the os-release copy, the cgroup's owner, the exit
//! meaning) is in `daemon::boot`, the helper's in `helper::boot`.

use std::path::Path;

use nix::mount::MsFlags;

use crate::caps::{Cap, CapSet};
use crate::mount::MountOp;
use crate::plan::Plan;

/// The init a booted container runs unless its command names another (`argv[0]`), and where
/// the helper looks next when it is missing (images without systemd-sysv's symlink).
pub const INIT: &str = "/sbin/init";
/// Tried in order after [`INIT`] when it does not exist.
pub const INIT_FALLBACKS: [&str; 2] = ["/usr/lib/systemd/systemd", "/lib/systemd/systemd"];

/// The file in the container's runtime directory berthd copies the host's os-release to.
pub const OS_RELEASE_FILE: &str = "host-os-release";
/// Where the container sees it.
pub const OS_RELEASE_PATH: &str = "run/host/os-release";
/// The host's os-release, in the order os-release(5) says to read them.
pub const HOST_OS_RELEASE: [&str; 2] = ["/etc/os-release", "/usr/lib/os-release"];

/// The capabilities a booted container's root gets on top of the container default: nspawn's
/// default set (`systemd-nspawn(1)`, `--capability=`).
pub const CAPS: CapSet = CapSet::of(&[
    Cap::AUDIT_CONTROL,
    Cap::AUDIT_WRITE,
    Cap::CHOWN,
    Cap::DAC_OVERRIDE,
    Cap::DAC_READ_SEARCH,
    Cap::FOWNER,
    Cap::FSETID,
    Cap::IPC_OWNER,
    Cap::KILL,
    Cap::LEASE,
    Cap::LINUX_IMMUTABLE,
    Cap::MKNOD,
    Cap::NET_BIND_SERVICE,
    Cap::NET_BROADCAST,
    Cap::NET_RAW,
    Cap::SETFCAP,
    Cap::SETGID,
    Cap::SETPCAP,
    Cap::SETUID,
    Cap::SYS_ADMIN,
    Cap::SYS_BOOT,
    Cap::SYS_CHROOT,
    Cap::SYS_NICE,
    Cap::SYS_PTRACE,
    Cap::SYS_RESOURCE,
    Cap::SYS_TTY_CONFIG,
]);

/// The init's argv: [`INIT`] (or the definition's command, whose first word is then the init
/// and the rest its arguments, as `systemd-nspawn -b` passes them) — never the image's
/// entrypoint or command, which describe an application container.
pub fn argv(command: &[String]) -> Vec<String> {
    match command.first() {
        Some(first) if first.starts_with('/') => command.to_vec(),
        _ => std::iter::once(INIT.to_string())
            .chain(command.iter().cloned())
            .collect(),
    }
}

/// Turn a container's plan into a booted one's: the init as the payload (PID 1 itself), a
/// writable cgroup2, and `/run/host/os-release` bound from `files` (berthd's runtime
/// directory of the container, where it copied the host's file).
pub fn shape_plan(plan: &mut Plan, command: &[String], files: &Path) {
    plan.process.boot = true;
    plan.process.argv = argv(command);
    for op in plan.mounts.iter_mut() {
        if let MountOp::Fs { fstype, flags, .. } = op
            && fstype == "cgroup2"
        {
            *flags &= !MsFlags::MS_RDONLY.bits();
        }
    }
    // /run is the container's fresh tmpfs: /run/host is made on it, then the file bound in.
    plan.mounts.push(MountOp::Tmpfs {
        target: "run/host".into(),
        flags: (MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC).bits(),
        data: Some("mode=755,size=64k".into()),
    });
    plan.mounts.push(MountOp::BindFile {
        source: files.join(OS_RELEASE_FILE).display().to_string(),
        path: OS_RELEASE_PATH.into(),
    });
}

/// What the end of a booted container's PID 1 means. In a PID namespace, `reboot(2)` kills
/// its init: with SIGHUP for a restart, SIGINT for a halt or poweroff (pid_namespace.c,
/// `reboot_pid_ns()`); a systemd without CAP_SYS_BOOT exits 0 instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Powered off or halted: the container's status is 0.
    PowerOff,
    /// Rebooted: berthd starts it again.
    Reboot,
    /// Anything else: the status as it is.
    Other(i32),
}

/// The ending of a booted container whose leader ended as `info`.
pub fn ending(info: crate::sys::ExitInfo) -> Ending {
    match info {
        crate::sys::ExitInfo::Signaled(s) if s == libc::SIGINT => Ending::PowerOff,
        crate::sys::ExitInfo::Signaled(s) if s == libc::SIGHUP => Ending::Reboot,
        other => Ending::Other(other.as_status()),
    }
}

/// [`ending`] from a shell-convention status (128 + signal for a signalled leader).
pub fn ending_of_status(status: i32) -> Ending {
    match status - 128 {
        s if s == libc::SIGINT => Ending::PowerOff,
        s if s == libc::SIGHUP => Ending::Reboot,
        _ => Ending::Other(status),
    }
}

/// The signal `berthctl poweroff` (and `stop`) sends a booted container's init: systemd's
/// SIGRTMIN+4, "poweroff" (systemd(1), "Signals").
pub fn poweroff_signal() -> i32 {
    crate::sys::rtsig::rtmin_plus(4)
}

/// The signal `berthctl reboot` sends: SIGINT, systemd's ctrl-alt-del.target (a reboot).
pub const REBOOT_SIGNAL: i32 = libc::SIGINT;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_init_is_sbin_init_unless_the_command_names_one() {
        assert_eq!(argv(&[]), ["/sbin/init"]);
        assert_eq!(
            argv(&["--log-level=debug".into()]),
            ["/sbin/init", "--log-level=debug"]
        );
        assert_eq!(
            argv(&["/lib/systemd/systemd".into(), "--unit=rescue.target".into()]),
            ["/lib/systemd/systemd", "--unit=rescue.target"]
        );
    }

    #[test]
    fn a_booted_plan_has_a_writable_cgroup_and_the_hosts_os_release_read_only() {
        let mut plan = crate::plan::tests::sample();
        let before = plan.mounts.len();
        shape_plan(&mut plan, &[], Path::new("/run/berth/containers/os"));
        assert!(plan.process.boot);
        assert_eq!(plan.process.argv, ["/sbin/init"]);
        let cgroup = plan
            .mounts
            .iter()
            .find_map(|o| match o {
                MountOp::Fs { fstype, flags, .. } if fstype == "cgroup2" => Some(*flags),
                _ => None,
            })
            .expect("a cgroup2 mount");
        assert_eq!(cgroup & MsFlags::MS_RDONLY.bits(), 0);
        assert_ne!(cgroup & MsFlags::MS_NOSUID.bits(), 0);
        assert_eq!(plan.mounts.len(), before + 2);
        assert_eq!(
            plan.mounts[before + 1],
            MountOp::BindFile {
                source: "/run/berth/containers/os/host-os-release".into(),
                path: "run/host/os-release".into()
            }
        );
        // The tmpfs it lands on comes after the container's /run.
        let run = plan
            .mounts
            .iter()
            .position(|o| matches!(o, MountOp::Fs { target, .. } if target == "run"))
            .unwrap();
        assert!(run < before);
    }

    #[test]
    fn a_booted_container_keeps_nspawns_capabilities() {
        assert!(CAPS.contains(Cap::SYS_ADMIN));
        assert!(CAPS.contains(Cap::SYS_BOOT));
        assert!(!CAPS.contains(Cap::SYS_MODULE));
        assert!(!CAPS.contains(Cap::NET_ADMIN));
    }

    #[test]
    fn reboot_and_poweroff_are_told_apart_by_the_signal_that_ended_init() {
        use crate::sys::ExitInfo;
        assert_eq!(ending(ExitInfo::Signaled(libc::SIGINT)), Ending::PowerOff);
        assert_eq!(ending(ExitInfo::Signaled(libc::SIGHUP)), Ending::Reboot);
        assert_eq!(ending(ExitInfo::Exited(0)), Ending::Other(0));
        assert_eq!(ending(ExitInfo::Signaled(9)), Ending::Other(137));
        assert_eq!(ending_of_status(130), Ending::PowerOff);
        assert_eq!(ending_of_status(129), Ending::Reboot);
        assert_eq!(ending_of_status(3), Ending::Other(3));
        assert!(poweroff_signal() > libc::SIGRTMIN());
    }
}
