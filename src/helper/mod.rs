//! berth-helper: executes one container start plan from berthd (see [`crate::protocol`]).
//!
//! It is exec'd by berthd with the protocol socket as descriptor 3, and is single-threaded,
//! so it may fork and run code in the child, which the multi-threaded daemon must not. Every
//! step goes through the [`Syscalls`] seam, in this fixed order:
//!
//! 1. (sync #1) the plan arrives; namespaces are unshared; the leader is forked and its pidfd
//!    sent to berthd (sync #2); the helper process exits.
//! 2. The leader waits for sync #3 (it is in its scope), unshares the cgroup namespace,
//!    brings loopback up, mounts the root and the plan's operations, pivots, sets the
//!    hostname, resolves its user in the container's own databases, sets rlimits, and starts
//!    the payload (session, groups, gid, uid, working directory, exec); sync #4 says it ran.
//! 3. The leader stays as the container's PID 1 ([`init::supervise`]).

mod init;
pub mod user;

use std::os::fd::{AsFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::signal::Signal;

use crate::mount;
use crate::plan::Plan;
use crate::protocol::{self, FromHelper, PLAN_FDS, Step, ToHelper};
use crate::sys::syscall::{Real, Syscalls};
use crate::sys::{self, Forked};

/// The descriptor berthd hands the protocol socket on.
pub const SOCKET_FD: i32 = 3;

type StepResult<T> = Result<T, (Step, Errno, String)>;

fn die(what: &str, e: impl std::fmt::Display) -> ! {
    eprintln!("berth-helper: {what}: {e}");
    std::process::exit(1)
}

/// Entry point of the berth-helper binary.
pub fn main() -> ! {
    // If berthd dies before the leader is released, take everything down with it.
    if let Err(e) = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL) {
        die("PR_SET_PDEATHSIG", e);
    }
    // Nothing berthd's process leaked may reach the container.
    if let Err(e) = sys::close_from(SOCKET_FD + 1) {
        die("close inherited descriptors", e);
    }
    let sock = match sys::take_inherited_fd(SOCKET_FD) {
        Ok(s) => s,
        Err(e) => die("the protocol socket (descriptor 3)", e),
    };
    // The socket was passed without close-on-exec; the payload must not inherit it.
    if let Err(e) = nix::fcntl::fcntl(
        &sock,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    ) {
        die("the protocol socket", e);
    }
    let plan = protocol::recv::<ToHelper>(sock.as_fd()).and_then(|(msg, mut fds)| {
        if msg != ToHelper::Plan {
            return Err(protocol::ProtocolError::Closed);
        }
        protocol::expect_fds(&fds, PLAN_FDS)?;
        let plan = protocol::read_plan(fds.remove(0))?;
        Ok((plan, fds))
    });
    let (plan, fds) = match plan {
        Ok(p) => p,
        Err(e) => fail(
            &sock,
            (
                Step::Protocol,
                Errno::EPROTO,
                format!("sync #1 (plan): {e}"),
            ),
        ),
    };
    run(sock, &plan, fds)
}

fn run(sock: OwnedFd, plan: &Plan, fds: Vec<OwnedFd>) -> ! {
    let mut sys = Real;
    let forked = init::Payload::from_plan(&plan.process)
        .map_err(|m| (Step::Exec, Errno::EINVAL, m))
        .and_then(|payload| {
            sys.unshare(plan.namespaces.before_fork())
                .map_err(|e| (Step::Namespaces, e, "unshare namespaces".into()))?;
            let f = sys::fork_single_threaded().map_err(|e| (Step::Fork, e, "fork".into()))?;
            Ok((payload, f))
        });
    let payload = match forked {
        Err(failure) => fail(&sock, failure),
        Ok((_, Forked::Parent(pid))) => {
            // Our unreaped child: its PID cannot be reused before the pidfd exists.
            let sent = sys::pidfd_open(pid)
                .map_err(|e| (Step::Fork, e, "pidfd_open".into()))
                .and_then(|pidfd| {
                    protocol::send(sock.as_fd(), &FromHelper::Forked, &[pidfd.as_fd()])
                        .map_err(|e| (Step::Fork, Errno::EPIPE, format!("sync #2 (forked): {e}")))
                });
            match sent {
                Ok(()) => std::process::exit(0),
                Err(failure) => fail(&sock, failure),
            }
        }
        Ok((payload, Forked::Child)) => payload,
    };
    // The leader: PID 1 of the new PID namespace. Wait at the barrier for the scope.
    if nix::sys::prctl::set_pdeathsig(None).is_err() {
        std::process::exit(1);
    }
    match protocol::recv::<ToHelper>(sock.as_fd()) {
        Ok((ToHelper::Release, _)) => {}
        _ => std::process::exit(1),
    }
    match leader(&mut sys, plan, payload, fds) {
        Ok((pid, status_fd, devnull)) => {
            if protocol::send(sock.as_fd(), &FromHelper::Started, &[]).is_err() {
                // berthd went away before it learnt that the payload runs; a restarted
                // berthd adopts the container from its records or not at all. PID 1 goes on
                // either way.
            }
            init::become_init(pid, status_fd, devnull, sock)
        }
        Err(failure) => fail(&sock, failure),
    }
}

/// The leader's steps before the payload: in the scope's cgroup namespace, with the root
/// mounted and pivoted into, the hostname set.
pub fn prepare<S: Syscalls>(sys: &mut S, plan: &Plan) -> StepResult<()> {
    sys.unshare(plan.namespaces.in_scope())
        .map_err(|e| (Step::Cgroup, e, "unshare cgroup namespace".into()))?;
    sys.loopback_up()
        .map_err(|e| (Step::Namespaces, e, "bring up loopback".into()))?;
    mount::apply::root(sys, &plan.root, &plan.mounts).map_err(|(e, m)| (Step::Mount, e, m))?;
    sys.pivot_root(&plan.root.target)
        .map_err(|e| (Step::Pivot, e, "pivot_root".into()))?;
    sys.sethostname(&plan.hostname)
        .map_err(|e| (Step::Hostname, e, "sethostname".into()))?;
    for (r, soft, hard) in &plan.process.rlimits {
        sys.setrlimit(r.resource(), *soft, *hard)
            .map_err(|e| (Step::Rlimits, e, format!("setrlimit {r:?}")))?;
    }
    Ok(())
}

/// Everything the leader does after the barrier, up to the payload's exec.
fn leader(
    sys: &mut Real,
    plan: &Plan,
    mut payload: init::Payload,
    fds: Vec<OwnedFd>,
) -> StepResult<(nix::unistd::Pid, OwnedFd, OwnedFd)> {
    prepare(sys, plan)?;
    // After the pivot, so that names mean what the image's /etc/passwd says.
    let ids = match &plan.process.user {
        Some(spec) => Some(user::resolve(spec).map_err(|m| (Step::User, Errno::EINVAL, m))?),
        None => None,
    };
    payload
        .set_user(ids, plan.process.home.as_deref())
        .map_err(|m| (Step::User, Errno::EINVAL, m))?;
    let devnull = nix::fcntl::open(
        "/dev/null",
        nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| (Step::Mount, e, "open /dev/null".into()))?;
    let [i, o, e, status]: [OwnedFd; 4] = fds
        .try_into()
        .map_err(|_| (Step::Protocol, Errno::EINVAL, "descriptors".to_string()))?;
    let pid = init::start_payload(&payload, [i, o, e]).map_err(|errno| {
        (
            Step::Exec,
            errno,
            format!(
                "cannot execute {:?}: {}",
                plan.process.argv[0],
                errno.desc()
            ),
        )
    })?;
    Ok((pid, status, devnull))
}

/// Tell berthd which step failed, and exit.
fn fail(sock: &OwnedFd, (step, errno, message): (Step, Errno, String)) -> ! {
    let failed = FromHelper::Failed {
        step,
        errno: errno as i32,
        message,
    };
    if let Err(e) = protocol::send(sock.as_fd(), &failed, &[]) {
        eprintln!("berth-helper: cannot report the failure to berthd: {e}");
    }
    std::process::exit(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::syscall::fake::Recorder;

    #[test]
    fn the_leader_mounts_then_pivots_then_names_itself() {
        let plan = crate::plan::tests::sample();
        let mut sys = Recorder::default();
        prepare(&mut sys, &plan).unwrap();
        let order = [
            "unshare CLONE_NEWCGROUP",
            "loopback-up",
            "make-rprivate",
            "mount-overlay",
            "mount proc /proc",
            "mount tmpfs /run",
            "pivot-root /var/lib/berth/containers/web/root",
            "sethostname web",
            "setrlimit RLIMIT_NOFILE",
        ];
        let pos: Vec<usize> = order.iter().map(|c| sys.pos(c)).collect();
        assert!(pos.windows(2).all(|w| w[0] < w[1]), "{:#?}", sys.calls);
    }

    #[test]
    fn a_failed_mount_stops_before_the_pivot() {
        let plan = crate::plan::tests::sample();
        let mut sys = Recorder {
            failing: vec!["mount-overlay"],
            ..Default::default()
        };
        let (step, errno, _) = prepare(&mut sys, &plan).unwrap_err();
        assert_eq!((step, errno), (Step::Mount, Errno::EPERM));
        assert!(!sys.calls.iter().any(|c| c.starts_with("pivot-root")));
    }
}
