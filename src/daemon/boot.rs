//! berthd's side of `--boot` ([`crate::boot`]): the host's os-release copied where the plan
//! binds it from, the container's cgroup handed to its root before the init runs, the console
//! pty's master read into the container's log, and what the init's end means (a poweroff is
//! status 0; a reboot starts the container again).

use std::os::fd::OwnedFd;
use std::path::Path;

use tracing::{info, warn};

use super::error::{Error, Result};
use super::table::Registry;
use crate::plan::Plan;
use crate::spec::ContainerSpec;

/// The console's master as the container's log (`berthctl logs`, the journal), in place of
/// the log pipes its init does not write to: a task of berthd's pumps it into a log pipe for
/// as long as the leader (`pidfd`) lives, so the console is always drained — systemd waits on
/// a full terminal for a while before each status line — as nspawn's own process reads its
/// pty. A master reads EIO while no one has the console open (systemd closes and reopens it,
/// and hangs it up at boot): that is waited out, as nspawn's PTY_FORWARD_IGNORE_VHANGUP does.
/// The log pipe outlives a berthd restart (FD store); the console does not (it then hangs up).
pub(super) fn console_to_log(
    logs: &mut super::logs::LogPipes,
    master: OwnedFd,
    pidfd: &OwnedFd,
) -> Result<()> {
    let (rd, wr) = crate::journal::log_pipe().map_err(|e| Error::Failed(e.to_string()))?;
    let leader = pidfd
        .try_clone()
        .map_err(|e| Error::io("duplicate the leader's pidfd", e))?;
    logs.out = Some(rd);
    logs.err = None;
    tokio::spawn(async move {
        if let Err(e) = pump(master, wr, leader).await {
            warn!("the console relay ended: {e}, ignoring");
        }
    });
    Ok(())
}

fn nonblocking(fd: &OwnedFd) -> nix::Result<()> {
    let flags = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFL)?;
    nix::fcntl::fcntl(
        fd,
        nix::fcntl::FcntlArg::F_SETFL(
            nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK,
        ),
    )?;
    Ok(())
}

async fn pump(master: OwnedFd, out: OwnedFd, leader: OwnedFd) -> std::io::Result<()> {
    use std::os::fd::AsFd;
    use std::time::Duration;
    // Both ends non-blocking: a full log pipe must never stall berthd's runtime.
    nonblocking(&master)?;
    nonblocking(&out)?;
    let mut console = crate::sys::async_fd(master)?;
    let out = crate::sys::async_fd(out)?;
    let gone = crate::sys::async_fd(leader)?;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let (n, hup) = {
            let mut ready = tokio::select! {
                _ = gone.readable() => {
                    drain(console.get_ref(), out.get_ref(), &[]);
                    return Ok(());
                }
                r = console.readable() => r?,
            };
            // A hangup is sticky in the reactor's readiness: after one, every wait returns
            // at once, and EAGAIN alone must not make this loop spin.
            let hup = ready.ready().is_read_closed();
            match ready.try_io(|fd| {
                nix::unistd::read(fd.get_ref().as_fd(), &mut buf).map_err(std::io::Error::from)
            }) {
                Err(_would_block) => (0, hup),
                Ok(Ok(n)) => (n, false),
                // No one has the console open (EIO): wait it out.
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => (0, true),
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EINTR) => (0, false),
                Ok(Err(e)) => return Err(e),
            }
        };
        if n == 0 {
            if hup {
                // A fresh registration forgets the old hangup.
                tokio::time::sleep(Duration::from_millis(50)).await;
                console = crate::sys::async_fd(console.into_inner())?;
            }
            continue;
        }
        let mut rest = &buf[..n];
        while !rest.is_empty() {
            let mut w = tokio::select! {
                _ = gone.readable() => {
                    drain(console.get_ref(), out.get_ref(), rest);
                    return Ok(());
                }
                w = out.writable() => w?,
            };
            match w
                .try_io(|fd| nix::unistd::write(fd.get_ref(), rest).map_err(std::io::Error::from))
            {
                Err(_would_block) => {}
                Ok(Ok(k)) => rest = &rest[k..],
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EINTR) => {}
                Ok(Err(e)) => return Err(e),
            }
        }
    }
}

/// The init is gone: what it wrote last (its "System Power Off") is still in the console,
/// and `pending` not yet written: pass on what the log pipe takes now, without waiting.
fn drain(console: &OwnedFd, out: &OwnedFd, pending: &[u8]) {
    let put = |mut data: &[u8]| -> bool {
        while !data.is_empty() {
            match nix::unistd::write(out, data) {
                Ok(k) => data = &data[k..],
                Err(nix::errno::Errno::EINTR) => {}
                // Full (EAGAIN) or gone: the rest is lost, as at any end of a log.
                Err(_) => return false,
            }
        }
        true
    };
    if !put(pending) {
        return;
    }
    let mut buf = vec![0u8; 16 * 1024];
    // At most what a terminal holds, a few times over: the end of its output.
    for _ in 0..16 {
        match nix::unistd::read(console, &mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) if !put(&buf[..n]) => return,
            Ok(_) => {}
        }
    }
}

/// Make the plan a booted one (see [`crate::boot::shape_plan`]), the host's os-release bound
/// from `files` (the container's runtime directory; [`write_os_release`] writes it there).
pub(super) fn shape_plan(spec: &ContainerSpec, plan: &mut Plan, files: &Path) {
    crate::boot::shape_plan(plan, &spec.definition.command, files);
    // The console: a pty of the container's own on the three streams of its init.
    plan.process.terminal = [true; 3];
}

/// Once the network files are written (their directory is remade then), before the leader is
/// released: the host's os-release copied into `files`. A copy, not the host's file: the
/// leader may not reach host paths once it is root of its user namespace, and the file must
/// not change under the container; it goes with the directory at the container's exit.
pub(super) fn write_os_release(files: &Path) -> Result<()> {
    let text = crate::boot::HOST_OS_RELEASE
        .iter()
        .find_map(|p| std::fs::read(p).ok())
        .ok_or_else(|| Error::Failed("--boot: the host has no os-release".into()))?;
    let to = files.join(crate::boot::OS_RELEASE_FILE);
    std::fs::create_dir_all(files)
        .and_then(|()| std::fs::write(&to, text))
        .map_err(|e| Error::io(format!("write {}", to.display()), e))
}

/// Hand the leader's cgroup (the root of the container's cgroup namespace) to the container's
/// root, as systemd's delegation contract and nspawn do for a user-namespaced container: the
/// directory, `cgroup.procs`, `cgroup.threads` and `cgroup.subtree_control`. Its systemd may
/// then make and fill subgroups and enable controllers below, never change the scope's own
/// limits (those files stay host root's).
pub(super) fn delegate_cgroup(reg: &Registry, pid: i32, plan: &Plan) -> Result<()> {
    let Some(root) = plan
        .security
        .id_maps
        .as_ref()
        .and_then(|m| m.uid.iter().find(|m| m.inside == 0))
        .map(|m| m.outside)
    else {
        return Err(Error::Failed("--boot needs a user namespace".into()));
    };
    let gid = plan
        .security
        .id_maps
        .as_ref()
        .and_then(|m| m.gid.iter().find(|m| m.inside == 0))
        .map_or(root, |m| m.outside);
    let cg = reg
        .hierarchies
        .of_process(pid as u32)
        .map_err(|e| Error::io(format!("the cgroup of {pid}"), e))?;
    let dir = cg
        .unified
        .ok_or_else(|| Error::Failed("--boot needs a cgroup2 hierarchy".into()))?;
    for f in [
        "",
        "cgroup.procs",
        "cgroup.threads",
        "cgroup.subtree_control",
    ] {
        let p = if f.is_empty() {
            dir.clone()
        } else {
            dir.join(f)
        };
        std::os::unix::fs::chown(&p, Some(root), Some(gid))
            .map_err(|e| Error::io(format!("chown {}", p.display()), e))?;
    }
    Ok(())
}

impl Registry {
    /// Whether `name` is a booted container.
    pub(super) fn is_booted(&self, name: &str) -> bool {
        self.with(name, |e| e.spec.boot).unwrap_or(false)
    }

    /// A booted container's exit: a poweroff or halt (its init killed by SIGINT) is status 0;
    /// a reboot (SIGHUP) is recorded as 0 too and starts the container again (or its berth@
    /// unit, when one holds it), off this task.
    pub(super) fn booted_exit(&self, name: &str, status: i32) -> i32 {
        if !self.is_booted(name) {
            return status;
        }
        match crate::boot::ending_of_status(status) {
            crate::boot::Ending::PowerOff => 0,
            crate::boot::Ending::Reboot => {
                let me = self.arc();
                let n = name.to_string();
                // A container its berth@ unit holds ended that unit's main process: it starts
                // again as that unit (as nspawn's unit restarts on its reboot status), never
                // in a scope of its own outside the unit.
                let held = self.with(name, |e| e.held_by.clone()).ok().flatten();
                tokio::spawn(async move {
                    // on_exit runs first: the container must show as exited before it starts.
                    let mut rx = match me.with(&n, |e| e.exited.subscribe()) {
                        Ok(rx) => rx,
                        Err(_) => return,
                    };
                    if tokio::time::timeout(
                        std::time::Duration::from_secs(10),
                        rx.wait_for(Option::is_some),
                    )
                    .await
                    .is_err()
                    {
                        warn!("{n} rebooted but did not show as exited, not starting it again");
                        return;
                    }
                    if let Some(unit) = held {
                        info!("container {n} rebooted, starting {unit} again");
                        if let Err(e) = me.systemd.restart_unit(&unit).await {
                            warn!("cannot start {unit} again after its reboot: {e}, ignoring");
                        }
                        return;
                    }
                    info!("container {n} rebooted, starting it again");
                    if let Err(e) = me
                        .start_with(
                            n.clone(),
                            super::start::Stdio([None, None, None]),
                            Default::default(),
                        )
                        .await
                    {
                        warn!("cannot start {n} again after its reboot: {e}, ignoring");
                    }
                });
                0
            }
            crate::boot::Ending::Other(s) => s,
        }
    }
}
