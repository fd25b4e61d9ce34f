//! berthd's side of the helper protocol: exec berth-helper with the socket as descriptor 3,
//! then exchange [`crate::protocol`] messages asynchronously.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
use serde::Serialize;
use thiserror::Error;
use tokio::io::unix::AsyncFd;

use crate::protocol::{self, FromHelper, ProtocolError};

#[derive(Debug, Error)]
pub enum SpawnError {
    #[error("cannot create the helper socket: {0}")]
    Socket(nix::Error),
    #[error("cannot execute {path}: {source}")]
    Exec {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error("the helper did not answer within {0:?}")]
    Timeout(Duration),
}

/// A running helper (and, after `Forked`, the leader that inherited its socket). The helper is
/// berthd's child, watched and reaped through a pidfd (not tokio's SIGCHLD-driven child table).
pub struct Helper {
    sock: AsyncFd<OwnedFd>,
    pidfd: OwnedFd,
    /// Whether berthd execed it (and so reaps it); a helper in a `berth@` unit is the service
    /// manager's child, which reaps it.
    ours: bool,
}

impl Helper {
    /// Exec the helper: from `image`, its sealed in-memory copy, when there is one (the
    /// child execs `/proc/self/fd/N`, which names the memfd: it stays open until the exec,
    /// being close-on-exec), else from the file at `path`. With `posix_spawn` (see
    /// [`crate::sys::spawn`]): berthd's page tables are not copied, so the cost does not grow
    /// with berthd's memory.
    pub fn spawn(path: &Path, image: Option<&OwnedFd>) -> Result<Helper, SpawnError> {
        use std::os::fd::AsRawFd;
        let flags = SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK;
        let (ours, theirs) = socketpair(AddressFamily::Unix, SockType::SeqPacket, None, flags)
            .map_err(SpawnError::Socket)?;
        // The helper blocks on its end; only ours is non-blocking.
        let theirs = clear_nonblock(theirs).map_err(SpawnError::Socket)?;
        let program = match image {
            Some(fd) => std::path::PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd())),
            None => path.to_path_buf(),
        };
        let child = crate::sys::spawn::spawn_passing_fd(
            &program,
            "berth-helper",
            &[],
            theirs.as_fd(),
            crate::helper::SOCKET_FD,
        )
        .map_err(|e| SpawnError::Exec {
            path: path.display().to_string(),
            source: e.into(),
        })?;
        let sock = crate::sys::async_fd(ours).map_err(io_err)?;
        Ok(Helper {
            sock,
            pidfd: child.pidfd,
            ours: true,
        })
    }

    /// A helper that `berthctl unit-start` execs in a `berth@` unit: berthd got the other end
    /// of its socket over the bus; `pid` is the caller's, which becomes the helper.
    pub fn adopt(sock: OwnedFd, pid: nix::unistd::Pid) -> Result<Helper, SpawnError> {
        let pidfd = crate::sys::pidfd_open(pid).map_err(SpawnError::Socket)?;
        let sock = set_nonblock(sock).map_err(SpawnError::Socket)?;
        let sock = crate::sys::async_fd(sock).map_err(io_err)?;
        Ok(Helper {
            sock,
            pidfd,
            ours: false,
        })
    }

    pub async fn send<T: Serialize>(
        &self,
        msg: &T,
        fds: &[BorrowedFd<'_>],
    ) -> Result<(), SpawnError> {
        send_on(&self.sock, msg, fds).await
    }

    /// The next message and the descriptors it carries, within `timeout`.
    pub async fn recv(&self, timeout: Duration) -> Result<(FromHelper, Vec<OwnedFd>), SpawnError> {
        recv_on(&self.sock, timeout).await
    }

    /// Reap the helper process itself (it exits right after `Forked`) in the background.
    pub fn reap_in_background(self) -> AsyncFd<OwnedFd> {
        let Helper { sock, pidfd, ours } = self;
        if ours {
            tokio::spawn(reap(pidfd));
        }
        sock
    }

    /// Wait until the helper process has exited (it does right after its last message): then
    /// what it forked is berthd's child.
    pub async fn finish(self) {
        reap(self.pidfd).await
    }

    /// Whether the helper is still there (has not exited; its pidfd does not poll readable).
    pub fn waiting(&self) -> bool {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        let mut fds = [PollFd::new(self.pidfd.as_fd(), PollFlags::POLLIN)];
        matches!(poll(&mut fds, PollTimeout::ZERO), Ok(0))
    }

    /// Kill the helper process (not the leader) and wait until it is reaped.
    pub async fn kill(self) {
        match crate::sys::pidfd_send_signal(self.pidfd.as_fd(), Signal::SIGKILL) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
            Err(e) => tracing::warn!("cannot kill berth-helper: {e}, ignoring"),
        }
        if self.ours {
            reap(self.pidfd).await
        }
    }
}

/// Wait until our child behind `pidfd` has exited (its pidfd polls readable) and reap it.
async fn reap(pidfd: OwnedFd) {
    let watch = match crate::sys::async_fd(pidfd) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!("cannot watch berth-helper: {e}, ignoring");
            return;
        }
    };
    loop {
        match crate::sys::pidfd_try_reap(watch.get_ref().as_fd()) {
            Ok(Some(_)) => return,
            Ok(None) => {}
            Err(e) => {
                tracing::warn!("cannot reap berth-helper: {e}, ignoring");
                return;
            }
        }
        match watch.readable().await {
            Ok(mut guard) => guard.clear_ready(),
            Err(e) => {
                tracing::warn!("cannot wait for berth-helper: {e}, ignoring");
                return;
            }
        }
    }
}

fn set_nonblock(fd: OwnedFd) -> nix::Result<OwnedFd> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let flags = OFlag::from_bits_truncate(fcntl(&fd, FcntlArg::F_GETFL)?);
    fcntl(&fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(fd)
}

fn clear_nonblock(fd: OwnedFd) -> nix::Result<OwnedFd> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let flags = OFlag::from_bits_truncate(fcntl(&fd, FcntlArg::F_GETFL)?);
    fcntl(&fd, FcntlArg::F_SETFL(flags - OFlag::O_NONBLOCK))?;
    Ok(fd)
}

// AsyncFd::try_io wants io::Error with WouldBlock; carry protocol errors through it.
fn to_io(e: ProtocolError) -> std::io::Error {
    match e {
        ProtocolError::Io(nix::Error::EAGAIN) => std::io::ErrorKind::WouldBlock.into(),
        other => std::io::Error::other(other),
    }
}

fn from_io(e: std::io::Error) -> SpawnError {
    match e.downcast::<ProtocolError>() {
        Ok(p) => SpawnError::Protocol(p),
        Err(e) => io_err(e),
    }
}

fn io_err(e: std::io::Error) -> SpawnError {
    SpawnError::Protocol(ProtocolError::Io(nix::Error::from_raw(
        e.raw_os_error().unwrap_or(libc::EIO),
    )))
}

/// Send a message (and descriptors) on the helper's socket.
pub async fn send_on<T: Serialize>(
    sock: &AsyncFd<OwnedFd>,
    msg: &T,
    fds: &[BorrowedFd<'_>],
) -> Result<(), SpawnError> {
    loop {
        let mut guard = sock.writable().await.map_err(io_err)?;
        match guard.try_io(|s| protocol::send(s.get_ref().as_fd(), msg, fds).map_err(to_io)) {
            Ok(r) => return r.map_err(from_io),
            Err(_) => continue,
        }
    }
}

/// A message already waiting on the helper's socket, without waiting for one: what a leader
/// reported before it exited.
pub fn pending(sock: &AsyncFd<OwnedFd>) -> Option<FromHelper> {
    protocol::recv::<FromHelper>(sock.get_ref().as_fd())
        .ok()
        .map(|(msg, _)| msg)
}

/// Receive the next message (and its descriptors) on the helper's socket, within `timeout`.
pub async fn recv_on(
    sock: &AsyncFd<OwnedFd>,
    timeout: Duration,
) -> Result<(FromHelper, Vec<OwnedFd>), SpawnError> {
    let fut = async {
        loop {
            let mut guard = sock.readable().await.map_err(io_err)?;
            match guard.try_io(|s| protocol::recv::<FromHelper>(s.get_ref().as_fd()).map_err(to_io))
            {
                Ok(r) => return r.map_err(from_io),
                Err(_) => continue,
            }
        }
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| SpawnError::Timeout(timeout))?
}
