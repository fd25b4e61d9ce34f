//! Containers held by their `berth@NAME.service` (nspawn's `--keep-unit`).
//!
//! systemd starts `berthctl unit-start NAME` as the unit's main process. berthctl makes the
//! helper's socket pair, hands berthd one end (`StartContainerInUnit`), and execs berth-helper
//! on the other, in place, so the helper is the service manager's child in the unit's cgroup.
//! berthd drives that helper through the usual start sequence, with two differences: the
//! leader is cloned with `CLONE_PARENT` (a child of the service manager, which therefore gets
//! its exit status, see [`crate::helper::held`]), and instead of a scope berthd moves the leader
//! into the unit's `payload` subgroup (`AttachProcessesToUnit`) and sets the container's
//! resource properties on the unit, at runtime. The helper names the leader the unit's main
//! process (`MAINPID=`), and berthd says `READY=1` on the leader's behalf once the payload
//! runs ([`super::notify::notify_as`]).
//!
//! So the unit's accounting, `systemctl status` and `set-property` are the container's; the
//! unit's main process is the container's PID 1, so `systemctl stop/restart/kill` act on it,
//! its exit status is the unit's, and neither berthd nor berthctl is anything the unit waits
//! on. berthd watches the leader as it watches any other (pidfd, exit-status memfd).

use std::os::fd::OwnedFd;
use std::path::PathBuf;

use futures_util::future::BoxFuture;
use tracing::{info, warn};

use super::error::{Error, Result};
use super::start::Stdio;
use super::table::{Registry, State};
use crate::name;
use crate::spawn::Helper;
use crate::spec::ContainerSpec;
use crate::systemd::{self, properties};

/// The subgroup of the unit's cgroup the container lives in: the unit's own cgroup keeps no
/// process of the container, so the container's cgroup namespace is a subtree of its own.
pub const PAYLOAD_CGROUP: &str = "/payload";

/// How long a restarted unit waits for its previous run's exit to be recorded.
const RECORD_EXIT: std::time::Duration = std::time::Duration::from_secs(5);

/// The unit of a container held by a `berth@` service.
pub fn held_unit(name: &str) -> String {
    format!("berth@{name}.service")
}

/// A start inside a unit: the unit and the helper its main process became.
pub(super) struct Held {
    pub unit: String,
    pub helper: Helper,
}

impl Registry {
    /// `StartContainerInUnit`: check that the process at the other end of `sock` (the one
    /// that will exec the helper) runs in `berth@NAME.service` and that the container may
    /// start, then start it in the background and say which helper to exec. Errors come
    /// before anything is made, so `systemctl start berth@nosuch` fails at once.
    pub(super) async fn start_in_unit(
        &self,
        name: String,
        sock: OwnedFd,
        stdio: Stdio,
    ) -> Result<PathBuf> {
        let unit = held_unit(&name);
        let peer = nix::sys::socket::getsockopt(&sock, nix::sys::socket::sockopt::PeerCredentials)
            .map_err(|e| Error::Failed(format!("cannot tell who holds the helper socket: {e}")))?;
        let pid = peer.pid();
        let in_unit = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .map(|cg| cgroup_is_unit(&cg, &unit))
            .unwrap_or(false);
        if !in_unit {
            return Err(Error::InvalidArgument(format!(
                "StartContainerInUnit is for the main process of {unit} (berth@.service); use StartContainer"
            )));
        }
        // A restart of the unit: systemd starts it again once the old PID 1 has exited, which
        // berthd may not have recorded yet.
        let (state, held, exited) = self.with(&name, |e| {
            (e.state, e.held_by.clone(), e.exited.subscribe())
        })?;
        let state = if matches!(state, State::Running | State::Stopping)
            && held.as_deref() == Some(unit.as_str())
        {
            let mut rx = exited;
            if tokio::time::timeout(RECORD_EXIT, rx.wait_for(Option::is_some))
                .await
                .is_err()
            {
                info!("container {name}: its unit starts again, but its last run has not ended");
            }
            self.with(&name, |e| e.state)?
        } else {
            state
        };
        match state {
            State::Created | State::Exited => {}
            s => {
                return Err(Error::InvalidState {
                    name,
                    state: s.as_str(),
                    hint: ", not created or exited",
                });
            }
        }
        let helper = Helper::adopt(sock, nix::unistd::Pid::from_raw(pid))?;
        let me = self.arc();
        let n = name.clone();
        let u = unit.clone();
        tokio::spawn(async move {
            let held = Held { unit: u, helper };
            // The outcome is recorded on the container and, through the leader, on the unit.
            if let Err(e) = me.start_held(n.clone(), stdio, held).await {
                info!("container {n} in its unit: {e}");
            }
        });
        Ok(self.helper.clone())
    }

    /// In place of the scope: the leader into the unit's payload subgroup, and the
    /// container's resource properties on the unit (runtime only: the unit file stays the
    /// admin's).
    pub(super) async fn attach_held(
        &self,
        unit: &str,
        pid: i32,
        spec: &ContainerSpec,
    ) -> Result<()> {
        make_payload_cgroup(pid)
            .map_err(|e| Error::io(format!("make the payload cgroup of {unit}"), e))?;
        self.systemd
            .attach_processes(unit, PAYLOAD_CGROUP, &[pid as u32])
            .await
            .map_err(|source| Error::Systemd {
                what: "the unit",
                source,
            })?;
        // The unit file has the default device policy: runtime properties are only what this
        // container adds (each SetUnitProperties writes a drop-in, which systemctl then
        // reports as changed on disk).
        let devices = match spec.limits.devices().next() {
            Some(_) => properties::device_policy(&spec.limits),
            None => Vec::new(),
        };
        let props: Vec<systemd::Property> = devices
            .into_iter()
            .chain(properties::limit_properties(&spec.limits))
            .chain(spec.properties.iter().map(properties::raw_property))
            .collect();
        if props.is_empty() {
            return Ok(());
        }
        self.systemd
            .set_unit_properties(unit, true, &props)
            .await
            .map_err(|source| Error::Systemd {
                what: "the unit's properties",
                source,
            })
    }

    /// The exit status of a held container whose PID 1 left none (killed by a signal): the
    /// service manager, its parent, reaped it and recorded the status on the unit. Waits a
    /// little for systemd to get there.
    pub(super) async fn held_exit_status(&self, name: &str, leader: i32) -> Option<i32> {
        let unit = self.with(name, |e| e.held_by.clone()).ok().flatten()?;
        for _ in 0..100 {
            match self.systemd.main_exit(&unit).await {
                Some((pid, code, status)) if pid == leader as u32 && code != 0 => {
                    return Some(if code == 1 { status } else { 128 + status });
                }
                _ => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            }
        }
        None
    }

    /// Tell a held container's unit that it runs (`READY=1` on behalf of its leader, the
    /// unit's main process). Without it the unit's start times out and systemd stops it.
    pub(super) fn held_ready(&self, name: &str, leader: i32) {
        match super::notify::notify_as(leader, "READY=1") {
            Ok(true) => {}
            Ok(false) => {
                warn!("container {name}: no NOTIFY_SOCKET to tell its unit it runs, ignoring")
            }
            Err(e) => warn!("container {name}: cannot tell its unit it runs: {e}, ignoring"),
        }
    }

    /// The unit a container's processes are in: its `berth@` service when one holds it, else
    /// its scope.
    pub(super) fn unit_of(&self, name: &str) -> String {
        self.with(name, |e| e.held_by.clone())
            .ok()
            .flatten()
            .unwrap_or_else(|| name::scope_unit(name))
    }
}

impl crate::dbus::UnitOps for Registry {
    fn start_in_unit(
        &self,
        caller: crate::dbus::Caller,
        name: String,
        helper_socket: OwnedFd,
        options: crate::dbus::Options,
    ) -> BoxFuture<'_, crate::dbus::Result<String>> {
        Box::pin(async move {
            let (stdio, _) = super::bus_work::start_options(&caller, options, false)?;
            self.known(&name)?;
            self.authorize(
                &caller,
                crate::dbus::Action::ManageContainers,
                "start",
                ("container", &name),
            )
            .await?;
            let helper = self.start_in_unit(name, helper_socket, stdio).await?;
            Ok(helper.display().to_string())
        })
    }

    fn set_enabled(
        &self,
        caller: crate::dbus::Caller,
        name: String,
        enabled: bool,
    ) -> BoxFuture<'_, crate::dbus::Result<String>> {
        Box::pin(async move {
            self.known(&name)?;
            self.authorize(
                &caller,
                crate::dbus::Action::ManageContainers,
                if enabled { "enable" } else { "disable" },
                ("container", &name),
            )
            .await?;
            Ok(self.set_boot(&name, enabled).await?)
        })
    }
}

/// Make the `payload` subgroup of the unit's cgroup (where `pid`, cloned there, still is) in
/// the hierarchies systemd moves processes in: the unified one and systemd's named one on a
/// hybrid host. systemd's AttachProcessesToUnit does not make it (v252), and the unit's
/// delegated subtree is the container's to shape; v1 controllers fall back to the unit's own
/// group, which is where its limits are.
fn make_payload_cgroup(pid: i32) -> std::io::Result<()> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")?;
    let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    for (ctl, path) in own.lines().filter_map(|l| {
        let mut f = l.splitn(3, ':');
        let (_, ctl, path) = (f.next()?, f.next()?, f.next()?);
        (ctl.is_empty() || ctl == "name=systemd").then_some((ctl, path))
    }) {
        let Some(mnt) = cgroup_mount(&mounts, ctl) else {
            continue;
        };
        let dir = mnt
            .join(path.trim_start_matches('/'))
            .join(PAYLOAD_CGROUP.trim_start_matches('/'));
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The mount point of the cgroup2 hierarchy (`ctl` empty) or of a named v1 one.
fn cgroup_mount(mountinfo: &str, ctl: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let sep = fields.iter().position(|f| *f == "-")?;
        let (mnt, fstype, opts) = (fields.get(4)?, fields.get(sep + 1)?, fields.get(sep + 3)?);
        let ours = if ctl.is_empty() {
            *fstype == "cgroup2"
        } else {
            *fstype == "cgroup" && opts.split(',').any(|o| o == ctl)
        };
        ours.then(|| PathBuf::from(mnt))
    })
}

/// Whether `/proc/PID/cgroup` text puts the process in `unit`'s own cgroup (the unified
/// hierarchy's line, or systemd's named one on a legacy host).
fn cgroup_is_unit(cgroup: &str, unit: &str) -> bool {
    cgroup.lines().any(|l| {
        let mut f = l.splitn(3, ':');
        let (Some(_), Some(ctl), Some(path)) = (f.next(), f.next(), f.next()) else {
            return false;
        };
        (ctl.is_empty() || ctl == "name=systemd") && path.rsplit('/').next() == Some(unit)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_units_device_policy_is_the_default_one() {
        let unit = include_str!("../../units/berth@.service");
        assert!(unit.lines().any(|l| l == "DevicePolicy=closed"));
        let allowed: Vec<String> = unit
            .lines()
            .filter_map(|l| l.strip_prefix("DeviceAllow="))
            .map(String::from)
            .collect();
        let default: Vec<String> = crate::spec::limits::DEFAULT_DEVICES
            .iter()
            .map(|(p, m)| format!("{p} {m}"))
            .collect();
        assert_eq!(allowed, default);
    }

    #[test]
    fn cgroup_mounts_are_found_by_type_and_name() {
        let mi = "30 25 0:26 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw,nsdelegate\n31 25 0:27 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd\n32 25 0:28 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        assert_eq!(cgroup_mount(mi, ""), Some("/sys/fs/cgroup/unified".into()));
        assert_eq!(
            cgroup_mount(mi, "name=systemd"),
            Some("/sys/fs/cgroup/systemd".into())
        );
        assert_eq!(cgroup_mount(mi, "name=other"), None);
    }

    #[test]
    fn only_the_units_own_cgroup_counts() {
        let unit = held_unit("web");
        assert_eq!(unit, "berth@web.service");
        let hybrid = "12:memory:/system.slice/system-berth.slice/berth@web.service\n1:name=systemd:/system.slice/system-berth.slice/berth@web.service\n0::/system.slice/system-berth.slice/berth@web.service\n";
        assert!(cgroup_is_unit(hybrid, &unit));
        let other = "0::/system.slice/system-berth.slice/berth@web2.service\n";
        assert!(!cgroup_is_unit(other, &unit));
        let sub = "0::/system.slice/system-berth.slice/berth@web.service/payload\n";
        assert!(!cgroup_is_unit(sub, &unit));
        // A v1 controller line alone proves nothing: anyone may sit in any memory cgroup.
        let v1 = "12:memory:/x/berth@web.service\n0::/user.slice\n";
        assert!(!cgroup_is_unit(v1, &unit));
    }
}
