//! The helper in a `berth@` unit (nspawn's `--keep-unit`): exec'd in place of
//! `berthctl unit-start`, which systemd started as the unit's main process, so that the
//! container's leader is cloned with `CLONE_PARENT` as a child of the service manager, in the
//! unit's own cgroup. The helper names the leader the unit's main process (`MAINPID=`) before
//! it exits, and berthd says `READY=1` on the leader's behalf once the payload runs: systemd
//! then tracks the container itself, gets its exit status, and neither berthd nor berthctl
//! dying changes that.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixDatagram;

/// The helper's first argument in a unit.
pub const ARG: &str = "--held";

/// The protocol socket, which `berthctl unit-start` passes as standard input (the one number
/// it can place with safe code; systemd gives services /dev/null there). Every other
/// inherited descriptor is closed, the socket moves to a close-on-exec number of its own, and
/// standard input becomes /dev/null again.
pub fn take_socket() -> nix::Result<OwnedFd> {
    crate::sys::close_from(3)?;
    let sock = crate::sys::dup_at_least(std::io::stdin().as_fd(), 3)?;
    let devnull = std::fs::File::open("/dev/null").map_err(|_| nix::errno::Errno::EIO)?;
    nix::unistd::dup2_stdin(&devnull)?;
    Ok(sock)
}

/// A datagram socket connected to the service manager's `NOTIFY_SOCKET`, for the helper's own
/// `MAINPID=`; the leader closes its copy right after the clone.
pub struct Notifier(UnixDatagram);

impl Notifier {
    /// From `NOTIFY_SOCKET` (a path, or `@name` for an abstract socket).
    pub fn from_env() -> Result<Notifier, String> {
        let addr = std::env::var("NOTIFY_SOCKET")
            .map_err(|_| "NOTIFY_SOCKET is not set: not started by berth@.service".to_string())?;
        let sock = UnixDatagram::unbound().map_err(|e| format!("notify socket: {e}"))?;
        let connected = match addr.strip_prefix('@') {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
                    .and_then(|a| sock.connect_addr(&a))
            }
            None => sock.connect(&addr),
        };
        connected.map_err(|e| format!("connect to NOTIFY_SOCKET {addr}: {e}"))?;
        Ok(Notifier(sock))
    }

    pub fn send(&self, msg: &str) -> std::io::Result<()> {
        self.0.send(msg.as_bytes()).map(drop)
    }
}
