//! The typed protocol between berthd and berth-helper: serde messages over a `SOCK_SEQPACKET`
//! socketpair, descriptors by `SCM_RIGHTS`.
//!
//! Sync points, named the same on both sides:
//! 1. berthd → helper: [`ToHelper::Plan`] with the stdio and exit-status descriptors.
//! 2. helper → berthd: [`FromHelper::Forked`] once the namespaces exist and the leader (PID 1
//!    of the new PID namespace) waits at the barrier. The helper process then exits.
//! 3. berthd → leader: [`ToHelper::Release`] once the scope holds the leader.
//! 4. leader → berthd: [`FromHelper::Started`] once the payload has exec'd, or
//!    [`FromHelper::Failed`] at any step before that.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::PathBuf;

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The largest message either side sends.
pub const MAX_MESSAGE: usize = 64 * 1024;
/// Descriptors that travel with the plan, in this order.
pub const PLAN_FDS: usize = 4;

/// One filesystem operation of the container's mount plan. Paths in `target`/`path` are
/// relative to the container's root and are resolved inside it without following symlinks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MountOp {
    /// Mount a fresh filesystem (`proc`, `sysfs`, `tmpfs`, `devpts`, `mqueue`).
    Fs {
        fstype: String,
        target: String,
        flags: u64,
        data: Option<String>,
    },
    /// Create a device node (`major:minor`, a block device when `block`).
    Device {
        path: String,
        mode: u32,
        block: bool,
        major: u64,
        minor: u64,
    },
    /// Create a symlink `path` → `target` (the link text is not resolved).
    Symlink { path: String, target: String },
    /// Bind a path onto itself and make it read-only (e.g. `proc/sys`).
    ReadOnly { path: String },
    /// Hide a file under an empty read-only bind of /dev/null, or a directory under an empty
    /// read-only tmpfs; a missing path is skipped.
    Mask { path: String },
}

/// Everything the helper needs, decided by berthd beforehand. The helper decides nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// Container name, for messages.
    pub name: String,
    pub hostname: String,
    /// The image's layers, read-only overlay lower layers, topmost first (overlayfs order).
    pub lowers: Vec<PathBuf>,
    /// The container's writable layer and overlayfs work directory.
    pub upper: PathBuf,
    pub work: PathBuf,
    /// Where the overlay is mounted before `pivot_root` (an empty host directory).
    pub root: PathBuf,
    /// Applied in order inside the new root, before pivoting.
    pub mounts: Vec<MountOp>,
    /// argv of the payload; `argv[0]` without `/` is searched in `PATH`.
    pub argv: Vec<String>,
    /// `KEY=VALUE` environment of the payload.
    pub env: Vec<String>,
    pub workdir: String,
    /// The user to run the payload as: `name`, `uid`, `name:group` or `uid:gid`, looked up in
    /// the container's /etc/passwd and /etc/group; root when `None`.
    pub user: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToHelper {
    Plan(Box<Plan>),
    Release,
}

/// The step at which the helper or leader failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Step {
    Namespaces,
    Fork,
    Cgroup,
    Mount,
    Hostname,
    Pivot,
    /// The image's or the caller's user does not exist in the container.
    User,
    /// The payload could not be executed (errno ENOENT: no such command).
    Exec,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FromHelper {
    Forked {
        pid: i32,
    },
    Started,
    Failed {
        step: Step,
        errno: i32,
        message: String,
    },
}

#[derive(Debug, Error)]
pub enum ProtocolError {
    #[error("helper socket: {0}")]
    Io(#[from] nix::Error),
    #[error("helper message malformed: {0}")]
    Decode(#[from] serde_json::Error),
    #[error("helper closed the connection")]
    Closed,
    #[error("helper message carried {got} descriptors, expected {want}")]
    Fds { got: usize, want: usize },
}

/// Send one message with descriptors. Blocking or not, as the socket is.
pub fn send<T: Serialize>(
    sock: BorrowedFd<'_>,
    msg: &T,
    fds: &[BorrowedFd<'_>],
) -> Result<(), ProtocolError> {
    let bytes = serde_json::to_vec(msg)?;
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let cmsg = [ControlMessage::ScmRights(&raw)];
    let cmsgs: &[ControlMessage<'_>] = if raw.is_empty() { &[] } else { &cmsg };
    sendmsg::<()>(
        sock.as_raw_fd(),
        &[IoSlice::new(&bytes)],
        cmsgs,
        MsgFlags::MSG_NOSIGNAL,
        None,
    )?;
    Ok(())
}

/// Receive one message and the descriptors it carries (close-on-exec).
pub fn recv<T: for<'de> Deserialize<'de>>(
    sock: BorrowedFd<'_>,
) -> Result<(T, Vec<OwnedFd>), ProtocolError> {
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut cmsg_space = nix::cmsg_space!([RawFd; PLAN_FDS]);
    let (len, fds) = {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg_space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )?;
        let mut fds = Vec::new();
        for c in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(list) = c {
                fds.extend(list.into_iter().map(crate::sys::owned_from_kernel));
            }
        }
        (msg.bytes, fds)
    };
    if len == 0 {
        return Err(ProtocolError::Closed);
    }
    Ok((serde_json::from_slice(&buf[..len])?, fds))
}

/// Check that a message carried exactly `want` descriptors.
pub fn expect_fds(fds: &[OwnedFd], want: usize) -> Result<(), ProtocolError> {
    if fds.len() == want {
        Ok(())
    } else {
        Err(ProtocolError::Fds {
            got: fds.len(),
            want,
        })
    }
}
