//! The typed protocol between berthd and berth-helper: serde messages over a `SOCK_SEQPACKET`
//! socketpair, descriptors by `SCM_RIGHTS`.
//!
//! The sync points, in order, named the same on both sides ([`Sync`]):
//! 1. berthd → helper, [`ToHelper::Plan`]: the plan, in a sealed memfd (so a plan of any size
//!    the validator admits travels), with the payload's stdio and the exit-status memfd.
//! 2. helper → berthd, [`FromHelper::Forked`]: the namespaces exist and the leader (PID 1 of
//!    the new PID namespace) waits at the barrier; the message carries the leader's pidfd.
//!    The helper process then exits.
//!    With `--network container:NAME` a sixth descriptor comes last: the network namespace the
//!    helper joins before it clones the leader.
//! 3. berthd → leader, [`ToHelper::Release`]: its ID maps are written, its root is made (the
//!    message carries it, and the detached mounts of binds and volumes) and its network is
//!    plugged (veth, addresses, routes, forwards, and the generated /etc files). The leader
//!    makes the plan's mounts up to [`crate::mount::MountOp::InScope`] and pivots, while
//!    systemd still makes the scope.
//! 4. berthd → leader, [`ToHelper::InScope`]: the scope holds the leader; it unshares its
//!    cgroup namespace, mounts its cgroup and starts the payload.
//! 5. leader → berthd, [`FromHelper::Started`] once the payload has exec'd, or
//!    [`FromHelper::Failed`] at any step before that (a failure before sync #4 waits in the
//!    socket until berthd reads it).
//!
//! An exec into a running container ([`ToHelper::Exec`], its [`ExecPlan`] in a sealed memfd)
//! and a live bind mount ([`ToHelper::Bind`]) are one exchange each: the request, then
//! [`FromHelper::Execed`] (the command runs; its pidfd) or [`FromHelper::Bound`], or
//! [`FromHelper::Failed`].

use std::io::{IoSlice, IoSliceMut, Read, Seek, Write};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::plan::Plan;
use crate::plan::exec::{BindPlan, ExecPlan};

/// The largest inline message either side sends (the plan travels in a memfd).
pub const MAX_MESSAGE: usize = 16 * 1024;
/// The largest plan the helper reads.
pub const MAX_PLAN: u64 = 8 << 20;
/// Descriptors that travel with the plan, in this order: the plan memfd, stdin, stdout,
/// stderr, the exit-status memfd.
pub const PLAN_FDS: usize = 5;
/// The most descriptors any message carries: sync #3 brings the root and one detached mount
/// per bind mount or volume (at most [`crate::volume::mounts::MAX_MOUNTS`], plus the image's
/// anonymous volumes, bounded the same way).
pub const MAX_FDS: usize = 2 * crate::volume::mounts::MAX_MOUNTS + 8;
/// The descriptors a plan travels with: [`PLAN_FDS`], and the network namespace to join last
/// when the plan says so (`--network container:NAME`).
pub fn plan_fds(plan: &Plan) -> usize {
    PLAN_FDS + usize::from(plan.namespaces.join_net)
}

/// The sync points of a start, in order (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Sync {
    Plan = 1,
    Forked = 2,
    Release = 3,
    InScope = 4,
    Started = 5,
}

impl std::fmt::Display for Sync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            Sync::Plan => "plan",
            Sync::Forked => "forked",
            Sync::Release => "release",
            Sync::InScope => "in scope",
            Sync::Started => "started",
        };
        write!(f, "sync #{} ({name})", *self as u8)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToHelper {
    /// Sync #1; the plan itself is in the first descriptor.
    Plan,
    /// Sync #3; carries the container's root, a detached mount, then the detached mounts the
    /// plan's `MountOp::Attach` operations name by index.
    Release,
    /// Sync #4; no descriptors: the leader is in its scope.
    InScope,
    /// Run a command in a running container: an [`ExecPlan`] in the first descriptor, the
    /// leader's pidfd in the second, then the standard streams the plan says were passed.
    Exec,
    /// Mount into a running container: a [`BindPlan`] in the first descriptor, the leader's
    /// pidfd, and the detached mount.
    Bind,
}

/// The step at which the helper or leader failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Step {
    Protocol,
    Namespaces,
    Fork,
    Cgroup,
    Mount,
    Pivot,
    Hostname,
    /// The image's or the caller's user does not exist in the container.
    User,
    Rlimits,
    Userns,
    Keyring,
    Capabilities,
    NoNewPrivs,
    Label,
    Seccomp,
    /// The payload could not be executed (errno ENOENT: no such command).
    Exec,
    /// Joining a running container: its cgroup and namespaces.
    Join,
    /// Allocating or setting up the terminal.
    Terminal,
}

impl Step {
    const ALL: [Step; 18] = [
        Step::Protocol,
        Step::Namespaces,
        Step::Fork,
        Step::Cgroup,
        Step::Mount,
        Step::Pivot,
        Step::Hostname,
        Step::User,
        Step::Rlimits,
        Step::Userns,
        Step::Keyring,
        Step::Capabilities,
        Step::NoNewPrivs,
        Step::Label,
        Step::Seccomp,
        Step::Exec,
        Step::Join,
        Step::Terminal,
    ];

    /// The step with this number (`step as i32`); unknown numbers are `Exec`.
    pub fn from_index(i: i32) -> Step {
        usize::try_from(i)
            .ok()
            .and_then(|i| Step::ALL.get(i).copied())
            .unwrap_or(Step::Exec)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FromHelper {
    /// Sync #2; carries the leader's pidfd.
    Forked,
    /// Sync #5; carries the master of the container's terminal when the plan asked for one.
    Started,
    /// An exec runs: `pid` (in berthd's PID namespace); carries its pidfd, and the terminal's
    /// master when the plan asked for one.
    Execed { pid: i32 },
    /// A live bind mount is in place.
    Bound,
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
    #[error("helper message was truncated (over {MAX_MESSAGE} bytes or {MAX_FDS} descriptors)")]
    Truncated,
    #[error("the plan memfd: {0}")]
    Plan(std::io::Error),
    #[error("the plan is {0} bytes, more than {MAX_PLAN}")]
    PlanTooLarge(u64),
}

/// Send one message with descriptors. Blocking or not, as the socket is.
pub fn send<T: Serialize>(
    sock: BorrowedFd<'_>,
    msg: &T,
    fds: &[BorrowedFd<'_>],
) -> Result<(), ProtocolError> {
    let bytes = serde_json::to_vec(msg)?;
    if bytes.len() > MAX_MESSAGE || fds.len() > MAX_FDS {
        return Err(ProtocolError::Truncated);
    }
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

/// Receive one message and the descriptors it carries (close-on-exec). A message cut short by
/// the buffer (`MSG_TRUNC`, `MSG_CTRUNC`) is an error, never a silently shorter one.
pub fn recv<T: for<'de> Deserialize<'de>>(
    sock: BorrowedFd<'_>,
) -> Result<(T, Vec<OwnedFd>), ProtocolError> {
    let mut buf = vec![0u8; MAX_MESSAGE + 1];
    let mut cmsg_space = nix::cmsg_space!([RawFd; MAX_FDS]);
    let (len, fds, truncated) = {
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
                fds.extend(list.into_iter().map(crate::sys::owned_from_scm_rights));
            }
        }
        let truncated = msg
            .flags
            .intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC)
            || msg.bytes > MAX_MESSAGE;
        (msg.bytes, fds, truncated)
    };
    if truncated {
        return Err(ProtocolError::Truncated);
    }
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

/// Write the plan into a sealed memfd: the helper reads it whole, and nobody can change it
/// after berthd checked it.
pub fn plan_memfd(plan: &Plan) -> Result<OwnedFd, ProtocolError> {
    sealed_json(plan)
}

/// An exec plan in a sealed memfd, as [`plan_memfd`].
pub fn exec_memfd(plan: &ExecPlan) -> Result<OwnedFd, ProtocolError> {
    sealed_json(plan)
}

/// A bind plan in a sealed memfd, as [`plan_memfd`].
pub fn bind_memfd(plan: &BindPlan) -> Result<OwnedFd, ProtocolError> {
    sealed_json(plan)
}

fn sealed_json<T: Serialize>(value: &T) -> Result<OwnedFd, ProtocolError> {
    use nix::fcntl::{FcntlArg, SealFlag, fcntl};
    use nix::sys::memfd::{MFdFlags, memfd_create};
    let bytes = serde_json::to_vec(value)?;
    if bytes.len() as u64 > MAX_PLAN {
        return Err(ProtocolError::PlanTooLarge(bytes.len() as u64));
    }
    let fd = memfd_create(
        "berth-plan",
        MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
    )?;
    let mut f = std::fs::File::from(fd);
    f.write_all(&bytes).map_err(ProtocolError::Plan)?;
    let fd = OwnedFd::from(f);
    fcntl(
        &fd,
        FcntlArg::F_ADD_SEALS(
            SealFlag::F_SEAL_WRITE
                | SealFlag::F_SEAL_GROW
                | SealFlag::F_SEAL_SHRINK
                | SealFlag::F_SEAL_SEAL,
        ),
    )?;
    Ok(fd)
}

/// Read a plan from the memfd berthd sent.
pub fn read_plan(fd: OwnedFd) -> Result<Plan, ProtocolError> {
    read_sealed(fd)
}

/// Read an exec or bind plan from the memfd berthd sent.
pub fn read_sealed<T: for<'de> Deserialize<'de>>(fd: OwnedFd) -> Result<T, ProtocolError> {
    let mut f = std::fs::File::from(fd);
    let len = f.metadata().map_err(ProtocolError::Plan)?.len();
    if len > MAX_PLAN {
        return Err(ProtocolError::PlanTooLarge(len));
    }
    f.rewind().map_err(ProtocolError::Plan)?;
    let mut bytes = Vec::with_capacity(len as usize);
    f.take(MAX_PLAN)
        .read_to_end(&mut bytes)
        .map_err(ProtocolError::Plan)?;
    Ok(serde_json::from_slice(&bytes)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
    use std::os::fd::AsFd;

    fn pair() -> (OwnedFd, OwnedFd) {
        socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap()
    }

    #[test]
    fn the_largest_plan_the_validator_admits_travels_whole() {
        let mut plan = crate::plan::tests::sample();
        // 128 KiB of argv and 128 KiB of environment, what validate() admits.
        plan.process.argv = vec!["a".repeat(1024); 128];
        plan.process.env = (0..128)
            .map(|i| format!("K{i}={}", "v".repeat(1020)))
            .collect();
        let (a, b) = pair();
        let memfd = plan_memfd(&plan).unwrap();
        send(a.as_fd(), &ToHelper::Plan, &[memfd.as_fd()]).unwrap();
        let (msg, mut fds) = recv::<ToHelper>(b.as_fd()).unwrap();
        assert_eq!(msg, ToHelper::Plan);
        assert_eq!(read_plan(fds.remove(0)).unwrap(), plan);
    }

    #[test]
    fn the_plan_memfd_is_sealed() {
        let memfd = plan_memfd(&crate::plan::tests::sample()).unwrap();
        let mut f = std::fs::File::from(memfd);
        assert!(f.write_all(b"x").is_err());
        assert!(f.set_len(0).is_err());
    }

    #[test]
    fn oversized_and_truncated_messages_are_errors() {
        let (a, b) = pair();
        let big = "x".repeat(MAX_MESSAGE + 10);
        assert!(matches!(
            send(a.as_fd(), &big, &[]),
            Err(ProtocolError::Truncated)
        ));
        // A peer that writes more than the buffer: the receiver says so.
        nix::sys::socket::send(
            a.as_raw_fd(),
            big.as_bytes(),
            nix::sys::socket::MsgFlags::empty(),
        )
        .unwrap();
        assert!(matches!(
            recv::<String>(b.as_fd()),
            Err(ProtocolError::Truncated)
        ));
        drop(a);
        assert!(matches!(
            recv::<String>(b.as_fd()),
            Err(ProtocolError::Closed)
        ));
    }

    #[test]
    fn steps_travel_as_numbers() {
        for s in Step::ALL {
            assert_eq!(Step::from_index(s as i32), s);
        }
        assert_eq!(Step::from_index(99), Step::Exec);
    }

    #[test]
    fn sync_points_are_numbered_and_named() {
        assert_eq!(Sync::Forked.to_string(), "sync #2 (forked)");
        assert_eq!(Sync::Started as u8, 5);
        assert_eq!(Sync::InScope.to_string(), "sync #4 (in scope)");
    }
}
