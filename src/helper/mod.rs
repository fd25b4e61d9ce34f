//! berth-helper: executes one container start plan from berthd (see [`crate::protocol`]).
//!
//! It is exec'd by berthd with the protocol socket as descriptor 3, and is single-threaded,
//! so it may fork and run code in the child, which the multi-threaded daemon must not.

mod init;
mod mount;
pub mod user;

use std::os::fd::{AsFd, OwnedFd};

use nix::errno::Errno;
use nix::sched::{CloneFlags, unshare};
use nix::sys::signal::Signal;

use crate::protocol::{self, FromHelper, PLAN_FDS, Plan, Step, ToHelper};
use crate::sys::{self, Forked};

/// The descriptor berthd hands the protocol socket on.
pub const SOCKET_FD: i32 = 3;

type StepResult<T> = Result<T, (Step, Errno, String)>;

/// Entry point of the berth-helper binary.
pub fn main() -> ! {
    // If berthd dies before the leader is released, take everything down with it.
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    // Nothing berthd's process leaked may reach the container.
    let _ = sys::close_from(SOCKET_FD + 1);
    let sock = sys::owned_from_kernel(SOCKET_FD);
    let (msg, fds) = match protocol::recv::<ToHelper>(sock.as_fd()) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("berth-helper: {e}");
            std::process::exit(1);
        }
    };
    let ToHelper::Plan(plan) = msg else {
        eprintln!("berth-helper: expected a plan");
        std::process::exit(1);
    };
    if let Err(failure) = run(&sock, &plan, fds) {
        fail(&sock, failure);
    }
    std::process::exit(0);
}

fn run(sock: &OwnedFd, plan: &Plan, fds: Vec<OwnedFd>) -> StepResult<()> {
    protocol::expect_fds(&fds, PLAN_FDS)
        .map_err(|e| (Step::Namespaces, Errno::EINVAL, e.to_string()))?;
    let payload = init::Payload::from_plan(plan).map_err(|m| (Step::Exec, Errno::EINVAL, m))?;
    let ns = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWNET
        | CloneFlags::CLONE_NEWPID;
    unshare(ns).map_err(|e| (Step::Namespaces, e, "unshare namespaces".into()))?;
    match sys::fork_single_threaded().map_err(|e| (Step::Fork, e, "fork".into()))? {
        Forked::Parent(pid) => {
            protocol::send(sock.as_fd(), &FromHelper::Forked { pid: pid.as_raw() }, &[])
                .map_err(|e| (Step::Fork, Errno::EPIPE, e.to_string()))?;
            Ok(())
        }
        Forked::Child => {
            // The leader: PID 1 of the new PID namespace. Wait at the barrier for the scope.
            let _ = nix::sys::prctl::set_pdeathsig(None);
            match protocol::recv::<ToHelper>(sock.as_fd()) {
                Ok((ToHelper::Release, _)) => {}
                _ => std::process::exit(1),
            }
            let result = leader(plan, &payload, fds);
            match result {
                Ok((pid, status_fd, devnull)) => {
                    let _ = protocol::send(sock.as_fd(), &FromHelper::Started, &[]);
                    // From here on PID 1 holds only /dev/null (on 0-2) and the status memfd.
                    let _ = nix::unistd::dup2_stdin(devnull.as_fd());
                    let _ = nix::unistd::dup2_stdout(devnull.as_fd());
                    let _ = nix::unistd::dup2_stderr(devnull.as_fd());
                    drop(devnull);
                    // This replaces the protocol socket (descriptor 3); `sock` is never used or
                    // dropped again, since supervise() does not return.
                    let status_fd = sys::move_fd(status_fd, SOCKET_FD);
                    let _ = sys::close_from(SOCKET_FD + 1);
                    init::supervise(pid, status_fd)
                }
                Err(failure) => fail(sock, failure),
            }
        }
    }
}

/// Everything the leader does after the barrier, up to the payload's exec.
fn leader(
    plan: &Plan,
    payload: &init::Payload,
    fds: Vec<OwnedFd>,
) -> StepResult<(nix::unistd::Pid, OwnedFd, OwnedFd)> {
    // Now that systemd has moved us into the scope, the cgroup namespace root is the scope.
    unshare(CloneFlags::CLONE_NEWCGROUP)
        .map_err(|e| (Step::Cgroup, e, "unshare cgroup namespace".into()))?;
    sys::set_loopback_up().map_err(|e| (Step::Namespaces, e, "bring up loopback".into()))?;
    let root = mount::mount_root(plan).map_err(|(e, m)| (Step::Mount, e, m))?;
    for op in &plan.mounts {
        mount::apply(&root, op).map_err(|(e, m)| (Step::Mount, e, m))?;
    }
    drop(root);
    nix::unistd::sethostname(&plan.hostname)
        .map_err(|e| (Step::Hostname, e, "sethostname".into()))?;
    mount::pivot(&plan.root).map_err(|(e, m)| (Step::Pivot, e, m))?;
    // After the pivot, so that names mean what the image's /etc/passwd says.
    let ids = match &plan.user {
        Some(spec) => Some(user::resolve(spec).map_err(|m| (Step::User, Errno::EINVAL, m))?),
        None => None,
    };
    let mut payload = payload.clone();
    payload.set_user(ids);
    let devnull = nix::fcntl::open(
        "/dev/null",
        nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| (Step::Mount, e, "open /dev/null".into()))?;
    let mut fds = fds.into_iter();
    let (i, o, e, status) = (
        fds.next().unwrap(),
        fds.next().unwrap(),
        fds.next().unwrap(),
        fds.next().unwrap(),
    );
    let pid = init::start_payload(&payload, [i, o, e]).map_err(|errno| {
        (
            Step::Exec,
            errno,
            format!("cannot execute {:?}: {}", plan.argv[0], errno.desc()),
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
    let _ = protocol::send(sock.as_fd(), &failed, &[]);
    std::process::exit(1)
}
