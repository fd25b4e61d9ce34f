//! The reaper: watch each running leader's pidfd; when it exits, read its status (from the
//! memfd its PID 1 wrote, else from waitid), stop the scope, record and announce the exit,
//! and remove the container if it was run with `--rm`.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use super::notify;
use super::start::{Timer, fdname};
use super::store::{self, Runtime};
use super::table::{Registry, State};
use crate::name;
use crate::sys;

impl Registry {
    /// Wait until the process behind `pidfd` has exited and reap it if it is our child.
    pub(super) async fn reap_now(&self, pidfd: &OwnedFd) -> Option<sys::ExitInfo> {
        for _ in 0..500 {
            match sys::pidfd_try_reap(pidfd.as_fd()) {
                Ok(Some(info)) => return Some(info),
                Ok(None) => tokio::time::sleep(Duration::from_millis(10)).await,
                Err(_) => return None,
            }
        }
        None
    }

    /// Watch a running leader; on exit record its status, stop the scope and notify.
    pub(super) async fn watch_leader(
        self: Arc<Self>,
        name: String,
        pidfd: Arc<OwnedFd>,
        memfd: Option<OwnedFd>,
    ) {
        match pidfd.try_clone().and_then(sys::async_fd) {
            Ok(afd) => {
                if let Err(e) = afd.readable().await {
                    warn!("cannot wait for the leader of {name}: {e}, polling");
                }
            }
            Err(e) => warn!("cannot watch the leader of {name}: {e}, polling"),
        }
        let reaped = self.reap_now(&pidfd).await;
        let mut status = memfd
            .as_ref()
            .and_then(read_status)
            .or(reaped.map(sys::ExitInfo::as_status));
        if status.is_none()
            && let Ok(Some(leader)) = self.with(&name, |e| e.leader)
        {
            status = self.held_exit_status(&name, leader).await;
        }
        if status.is_none() {
            // Neither PID 1 wrote it (killed, or no exit descriptor) nor is the leader our child
            // (a re-adopted one): say so rather than make one up.
            warn!("container {name} exited, and its exit status is unknown");
            if self
                .with(&name, |e| {
                    e.last_error = "its exit status is unknown: its PID 1 left no status, and it was re-adopted after a restart of berthd".into();
                })
                .is_err()
            {
                return;
            }
        }
        let status = self.booted_exit(&name, status.unwrap_or(-1));
        self.on_exit(&name, status).await;
    }

    /// Record an exit. The order is what makes a crash at any point harmless: the exit record
    /// is written first (while the status is known), then the scope is stopped (a restarted
    /// berthd stops a scope that outlived a record saying "exited"; machined and the network
    /// are let go at the same time, each reconciled the same way), then the exit descriptor
    /// is dropped from the store (a restarted berthd that still finds it reads the same
    /// status), and only then does the container show as exited (so that a start right after
    /// never finds the old scope).
    pub(super) async fn on_exit(&self, name: &str, status: i32) {
        let _whole = Timer::of("exit", name, "exit (berthd)");
        let unit = name::scope_unit(name);
        let record = self.with(name, |e| Runtime {
            running: false,
            started_at: e.started_at,
            exit_status: status,
            oom_kills: e.oom_kills,
            last_oom_at: e.last_oom_at,
            last_error: e.last_error.clone(),
            ..Default::default()
        });
        if let Ok(rt) = &record
            && let Err(e) = store::save_runtime(&self.layout, name, rt)
        {
            warn!("cannot record exit of {name}: {e}, ignoring");
        }
        super::failpoint::hit("exit:after-record");
        // machined, the scope and the network are independent of each other (and each is
        // reconciled by a restarted berthd): one round trip's time, not three.
        let machined = async {
            let _t = Timer::of("exit", name, "machined");
            self.unregister_machine(name).await;
        };
        let scope = async {
            let _t = Timer::of("exit", name, "scope");
            if let Err(e) = self.systemd.stop_unit(&unit).await {
                warn!("cannot stop {unit}: {e}, ignoring");
            }
        };
        let network = async {
            let _t = Timer::of("exit", name, "network");
            self.net_detach(name).await;
        };
        tokio::join!(machined, scope, network);
        if let Err(e) = notify::remove_fd(&fdname(name)) {
            warn!("cannot drop the exit descriptor of {name}: {e}, ignoring");
        }
        self.cpu_samples.lock().unwrap().remove(name);
        self.logs_leader_gone(name);
        let Ok((tx, auto_remove)) = self.with(name, |e| {
            e.state = State::Exited;
            e.exec_base = None;
            e.leader = None;
            e.pidfd = None;
            e.exit_status = status;
            e.cgroup = None;
            e.oom_seen = Some(0);
            e.resources = e.spec.definition.resources.clone();
            (e.exited.clone(), e.spec.definition.auto_remove)
        }) else {
            return;
        };
        info!("container {name} exited with status {status}");
        if self.with(name, |e| e.spec.ephemeral).unwrap_or(false) {
            self.discard_ephemeral(name);
        }
        self.publish(name).await;
        if auto_remove {
            let _t = Timer::of("exit", name, "remove");
            self.remember_removed(name, status);
            if let Err(e) = self.remove_entry(name).await {
                warn!("cannot remove {name} at its exit: {e}, ignoring");
            }
        }
        tx.send_replace(Some(status));
        self.after_exit(name, status).await;
    }
}

/// The status PID 1 wrote before exiting, if it did.
pub(super) fn read_status(memfd: &OwnedFd) -> Option<i32> {
    let mut buf = [0u8; 16];
    let n = nix::sys::uio::pread(memfd, &mut buf, 0).ok()?;
    std::str::from_utf8(&buf[..n]).ok()?.trim().parse().ok()
}
