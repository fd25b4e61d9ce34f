//! `--notify-ready`: the payload gets a `NOTIFY_SOCKET` (sd_notify(3)), as nspawn's
//! `--notify-ready=yes` gives one. berthd binds a datagram socket in
//! `/run/berth/notify/NAME/notify`; the plan binds that directory read-only onto the
//! container's `/run/host/notify` (a directory, not the socket itself, so that a restarted
//! berthd can bind a new socket at the same path and the running container still reaches it)
//! and sets `NOTIFY_SOCKET=/run/host/notify/notify`. `READY=1` makes the container ready,
//! `STATUS=` sets its status text. One task of berthd reads each socket; no process per
//! container. The socket is reachable only from inside the container (its mount namespace)
//! and by root on the host.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::PathBuf;

use tokio::net::UnixDatagram;
use tracing::{debug, info, warn};

use super::store::Layout;
use super::table::{Registry, State};
use crate::mount::MountOp;
use crate::plan::Plan;
use crate::spec::ContainerSpec;

/// Where the socket's directory is bound in the container, and the socket's name in it.
pub const IN_CONTAINER: &str = "run/host/notify";
pub const SOCKET: &str = "notify";
/// The longest message read; sd_notify messages are short (systemd takes at most 4 KiB of
/// STATUS= text… and so does this).
const MAX_MESSAGE: usize = 4096;

pub fn dir(layout: &Layout, name: &str) -> PathBuf {
    layout.run.join("notify").join(name)
}

/// Delete a container's socket directory.
pub fn remove_dir(layout: &Layout, name: &str) {
    let d = dir(layout, name);
    match std::fs::remove_dir_all(&d) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => warn!("cannot remove {}: {e}, ignoring", d.display()),
    }
}

/// Bind a container's notify socket anew (a leftover one is replaced).
pub fn bind(layout: &Layout, name: &str) -> std::io::Result<std::os::unix::net::UnixDatagram> {
    let d = dir(layout, name);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(&d)?;
    let path = d.join(SOCKET);
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let sock = std::os::unix::net::UnixDatagram::bind(&path)?;
    // connect(2)/sendto(2) on a unix socket need write permission on it: the payload runs as
    // any user of the container's user namespace, which is "other" here.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666))?;
    sock.set_nonblocking(true)?;
    Ok(sock)
}

/// The plan's part: the socket's directory bound in, and `NOTIFY_SOCKET` set.
pub fn shape_plan(plan: &mut Plan, spec: &ContainerSpec, layout: &Layout) {
    if !spec.life.notify_ready {
        return;
    }
    plan.mounts.push(MountOp::BindHost {
        source: dir(layout, spec.name()).display().to_string(),
        path: IN_CONTAINER.into(),
    });
    plan.process
        .env
        .retain(|e| !e.starts_with("NOTIFY_SOCKET="));
    plan.process
        .env
        .push(format!("NOTIFY_SOCKET=/{IN_CONTAINER}/{SOCKET}"));
}

/// What one datagram says: (READY=1 seen, the last STATUS= if any).
pub fn parse(msg: &[u8]) -> (bool, Option<String>) {
    let text = String::from_utf8_lossy(msg);
    let mut ready = false;
    let mut status = None;
    for line in text.split('\n') {
        if line == "READY=1" {
            ready = true;
        } else if let Some(s) = line.strip_prefix("STATUS=") {
            status = Some(s.chars().filter(|c| !c.is_control()).collect());
        }
    }
    (ready, status)
}

impl Registry {
    /// The socket of a container about to start (`None` without `--notify-ready`).
    pub(super) fn notify_socket(
        &self,
        spec: &ContainerSpec,
    ) -> super::error::Result<Option<std::os::unix::net::UnixDatagram>> {
        if !spec.life.notify_ready {
            return Ok(None);
        }
        bind(&self.layout, spec.name())
            .map(Some)
            .map_err(|e| super::error::Error::io("bind the container's notify socket", e))
    }

    /// Read a running container's notify socket until its run ends.
    pub(super) fn watch_notify(&self, name: &str, sock: std::os::unix::net::UnixDatagram) {
        let sock = match UnixDatagram::from_std(sock) {
            Ok(s) => s,
            Err(e) => {
                warn!("cannot watch the notify socket of {name}: {e}, ignoring");
                return;
            }
        };
        let Ok(mut exited) = self.with(name, |e| e.exited.subscribe()) else {
            return;
        };
        let me = self.arc();
        let name = name.to_string();
        tokio::spawn(async move {
            let mut buf = vec![0u8; MAX_MESSAGE];
            loop {
                let n = tokio::select! {
                    r = sock.recv(&mut buf) => match r {
                        Ok(n) => n,
                        Err(e) => {
                            warn!("cannot read the notify socket of {name}: {e}, ignoring it");
                            return;
                        }
                    },
                    _ = exited.wait_for(Option::is_some) => return,
                };
                let (ready, status) = parse(&buf[..n]);
                debug!("{name} sent {:?}", String::from_utf8_lossy(&buf[..n]));
                let changed = me
                    .with(&name, |e| {
                        if e.state != State::Running {
                            return false;
                        }
                        let was = e.life.rec.ready;
                        if ready {
                            e.life.rec.ready = true;
                        }
                        if let Some(s) = &status {
                            e.life.rec.status_text = s.clone();
                        }
                        if ready && !was {
                            info!("container {name} is ready");
                        }
                        ready || status.is_some()
                    })
                    .unwrap_or(false);
                if changed {
                    me.save_life(&name);
                    me.publish(&name).await;
                    me.forward_to_unit(&name, ready, status.as_deref());
                }
            }
        });
    }

    /// A container its berth@ unit holds: READY=1 and STATUS= go on to the unit, in the
    /// leader's name (systemd takes notifications from the unit's processes only).
    fn forward_to_unit(&self, name: &str, ready: bool, status: Option<&str>) {
        let Ok((Some(_unit), Some(leader))) = self.with(name, |e| (e.held_by.clone(), e.leader))
        else {
            return;
        };
        let mut msg = String::new();
        if ready {
            msg.push_str("READY=1\n");
        }
        if let Some(s) = status {
            msg.push_str(&format!("STATUS={s}\n"));
        }
        if let Err(e) = super::notify::notify_as(leader, msg.trim_end()) {
            warn!("container {name}: cannot pass its readiness on to its unit: {e}, ignoring");
        }
    }

    /// After a berthd restart: bind the socket of a running `--notify-ready` container again
    /// (its directory is bound in the container, so the new socket is what it reaches).
    pub(super) fn rewatch_notify(&self, name: &str) {
        match bind(&self.layout, name) {
            Ok(s) => self.watch_notify(name, s),
            Err(e) => warn!("cannot bind the notify socket of {name} again: {e}, ignoring"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_and_status_are_read_from_any_line() {
        assert_eq!(parse(b"READY=1"), (true, None));
        assert_eq!(
            parse(b"STATUS=warming up\nMAINPID=7"),
            (false, Some("warming up".into()))
        );
        assert_eq!(
            parse(b"READY=1\nSTATUS=a\nSTATUS=serving\x07"),
            (true, Some("serving".into()))
        );
        assert_eq!(parse(b"READY=0\nREADY=11"), (false, None));
    }

    #[test]
    fn a_bound_socket_receives_what_a_client_sends_and_is_writable_by_anyone() {
        let tmp = tempfile::tempdir().unwrap();
        let layout = Layout {
            lib: tmp.path().join("lib"),
            run: tmp.path().join("run"),
            image_dirs: vec![],
        };
        let old = bind(&layout, "web").unwrap();
        // A leftover socket is replaced.
        let s = bind(&layout, "web").unwrap();
        drop(old);
        let path = dir(&layout, "web").join(SOCKET);
        use std::os::unix::fs::MetadataExt;
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o666);
        let c = std::os::unix::net::UnixDatagram::unbound().unwrap();
        c.send_to(b"READY=1\nSTATUS=up", &path).unwrap();
        let mut buf = [0u8; 64];
        let n = s.recv(&mut buf).unwrap();
        assert_eq!(parse(&buf[..n]), (true, Some("up".into())));
        remove_dir(&layout, "web");
        assert!(!dir(&layout, "web").exists());
    }
}
