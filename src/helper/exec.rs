//! The helper's exec: a command in a running container, as its payload would run there.
//!
//! The helper joins the container's PID namespace for its children, then forks once — the
//! child born in the leader's cgroup2 directory (`CLONE_INTO_CGROUP`) when the request has
//! it — and that child becomes the command: [`enter`], then the payload's own
//! [`super::init::exec_steps`], in its place. In order:
//! 1. non-dumpable first (in the helper, before the fork): from the moment a process shares
//!    a namespace with the container, nobody there may ptrace it or open its
//!    `/proc/PID/{fd,exe,mem}` (runc CVE-2016-9962, CVE-2019-5736). It runs from berthd's
//!    sealed in-memory copy of the helper and holds, besides its protocol socket
//!    (close-on-exec), only the caller's standard streams and the leader's pidfd, which it
//!    closes once it has joined.
//! 2. the scope's cgroup on every v1 hierarchy (`tasks`: see [`crate::cgroup::membership`]),
//!    and on cgroup2 by `cgroup.procs` when it was not born there, while the host's cgroup
//!    filesystems are still this process's view;
//! 3. all of the container's namespaces at once, through the leader's pidfd (`setns(2)`
//!    with a pidfd, Linux 5.8): user, mount (which also moves the root and working directory
//!    to the container's), UTS, IPC, network, cgroup (PID it is in already);
//! 4. root of the user namespace (the container's root, not the host's), the payload's
//!    rlimits, a new session keyring;
//! 5. the user looked up in the container's own databases, the terminal allocated in its
//!    devpts (its master handed to the helper), then the same identity → capabilities →
//!    no_new_privs → SELinux label → seccomp → exec steps as the payload.
//!
//! The child tells the helper over a close-on-exec socket: its end of file means the exec
//! worked. The helper then reports the child's pidfd ([`FromHelper::Execed`]) and exits; the
//! command is re-parented to berthd (a child subreaper), which reaps it and keeps its exit
//! status. A child that fails reports it to berthd itself.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;
use nix::sched::CloneFlags;
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};

use super::{Failure, StepResult, fail, init, terminal, user};
use crate::plan::exec::ExecPlan;
use crate::protocol::{self, FromHelper, Step};
use crate::sys::syscall::{Real, Syscalls};

/// Join the container: non-dumpable, cgroup, namespaces, its root, its limits and a keyring of
/// its own. Through the seam, so the order has a test.
pub fn enter<S: Syscalls>(sys: &mut S, plan: &ExecPlan, leader: BorrowedFd<'_>) -> StepResult<()> {
    sys.set_non_dumpable()
        .map_err(|e| (Step::Join, e, "make the helper non-dumpable".into()))?;
    for procs in &plan.cgroup_joins {
        sys.join_cgroup(procs).map_err(|e| {
            (
                Step::Cgroup,
                e,
                format!("join the container's cgroup ({})", procs.display()),
            )
        })?;
    }
    sys.setns(leader, plan.join_flags())
        .map_err(|e| (Step::Join, e, "join the container's namespaces".into()))?;
    if plan.namespaces.user {
        sys.become_root()
            .map_err(|e| (Step::Userns, e, "become root of the user namespace".into()))?;
    }
    for u in &plan.process.rlimits {
        sys.setrlimit(u.resource.resource(), u.soft, u.hard)
            .map_err(|e| (Step::Rlimits, e, format!("setrlimit {}", u.resource.name())))?;
    }
    sys.join_session_keyring()
        .map_err(|e| (Step::Keyring, e, "join a new session keyring".into()))?;
    Ok(())
}

/// The helper, before its fork: non-dumpable, since the child is in the container's PID
/// namespace from its first instant; then that namespace, for its children.
pub fn before_fork<S: Syscalls>(
    sys: &mut S,
    plan: &ExecPlan,
    leader: BorrowedFd<'_>,
) -> StepResult<()> {
    sys.set_non_dumpable()
        .map_err(|e| (Step::Join, e, "make the helper non-dumpable".into()))?;
    if plan.namespaces.pid {
        sys.setns(leader, CloneFlags::CLONE_NEWPID)
            .map_err(|e| (Step::Join, e, "join the container's PID namespace".into()))?;
    }
    Ok(())
}

/// The container's /dev/null (opened inside it, never the host's).
fn devnull() -> StepResult<OwnedFd> {
    nix::fcntl::open(
        "/dev/null",
        nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NOFOLLOW,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| (Step::Exec, e, "open the container's /dev/null".into()))
}

/// What the command's process tells the helper before it executes the command, over a
/// close-on-exec socket: end of file means the exec worked.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
enum Told {
    /// The terminal's master (the descriptor the message carries).
    Terminal,
    /// It failed and told berthd why.
    Failed,
}

/// Everything after the request arrived: one fork, whose child joins the container and
/// becomes the command. Returns the command's PID and pidfd and the terminal's master, or
/// the failure to report (`None`: the child reported it).
fn exec(
    sock: &OwnedFd,
    plan: &ExecPlan,
    mut fds: Vec<OwnedFd>,
    cgroup: Option<OwnedFd>,
) -> Result<(i32, OwnedFd, Option<OwnedFd>), Option<Failure>> {
    use crate::sys::process::{Cloned, clone3_into_cgroup, clone3_single_threaded};
    let mut sys = Real;
    let want = 1 + plan.passed.iter().filter(|p| **p).count();
    if fds.len() != want {
        return Err(Some((
            Step::Protocol,
            Errno::EINVAL,
            format!("{} descriptors, expected {want}", fds.len()),
        )));
    }
    let leader = fds.remove(0);
    before_fork(&mut sys, plan, leader.as_fd()).map_err(Some)?;
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| Some((Step::Fork, e, "socketpair".into())))?;
    let forked = match &cgroup {
        Some(dir) => clone3_into_cgroup(dir.as_fd())
            .map_err(|e| Some((Step::Cgroup, e, "start in the container's cgroup".into()))),
        None => clone3_single_threaded(CloneFlags::empty())
            .map_err(|e| Some((Step::Fork, e, "fork".into()))),
    }?;
    let (pid, pidfd) = match forked {
        Cloned::Child => {
            drop(ours);
            // No host descriptor but the request's goes into the container.
            drop(cgroup);
            let failure = become_command(plan, leader, fds, &theirs);
            let told = FromHelper::Failed {
                step: failure.0,
                errno: failure.1 as i32,
                message: failure.2,
            };
            if let Err(e) = protocol::send(sock.as_fd(), &told, &[]) {
                eprintln!("berth-helper: cannot report the failure to berthd: {e}");
            }
            if let Err(e) = protocol::send(theirs.as_fd(), &Told::Failed, &[]) {
                eprintln!("berth-helper: cannot tell the helper of the failure: {e}");
            }
            std::process::exit(1)
        }
        Cloned::Parent(pid, pidfd) => (pid, pidfd),
    };
    drop(theirs);
    drop(leader);
    drop(fds);
    let mut master = None;
    loop {
        match protocol::recv::<Told>(ours.as_fd()) {
            Ok((Told::Terminal, mut got)) if got.len() == 1 => master = got.pop(),
            Ok((Told::Failed, _)) => {
                // It exits at once; reaped here, it does not go to berthd as a zombie.
                if let Err(e) = nix::sys::wait::waitpid(pid, None) {
                    eprintln!("berth-helper: cannot reap the failed command's process: {e}");
                }
                return Err(None);
            }
            // End of file: the command's process executed it (or died before; berthd then
            // sees it exit).
            Err(protocol::ProtocolError::Closed) => return Ok((pid.as_raw(), pidfd, master)),
            Ok((told, got)) => {
                return Err(Some((
                    Step::Protocol,
                    Errno::EPROTO,
                    format!(
                        "the command's process sent {told:?} with {} descriptors",
                        got.len()
                    ),
                )));
            }
            Err(e) => {
                return Err(Some((
                    Step::Protocol,
                    Errno::EPROTO,
                    format!("the command's process: {e}"),
                )));
            }
        }
    }
}

/// In the fork: join the container (see [`enter`]) and execute the command in its place.
/// Returns only on failure.
fn become_command(
    plan: &ExecPlan,
    leader: OwnedFd,
    fds: Vec<OwnedFd>,
    helper: &OwnedFd,
) -> Failure {
    match join_and_prepare(plan, leader, fds, helper) {
        Ok((payload, stdio)) => {
            let argv0 = plan.process.argv.first().cloned().unwrap_or_default();
            let (step, errno) = init::exec_in_place(&payload, stdio);
            let what = match step {
                Step::Exec => format!("cannot execute {argv0:?}"),
                step => format!("the {step:?} step before executing {argv0:?}"),
            };
            (step, errno, format!("{what}: {}", errno.desc()))
        }
        Err(failure) => failure,
    }
}

fn join_and_prepare(
    plan: &ExecPlan,
    leader: OwnedFd,
    fds: Vec<OwnedFd>,
    helper: &OwnedFd,
) -> StepResult<(init::Payload, [OwnedFd; 3])> {
    let mut sys = Real;
    let mut payload =
        init::Payload::from_plan(&plan.process).map_err(|m| (Step::Exec, Errno::EINVAL, m))?;
    enter(&mut sys, plan, leader.as_fd())?;
    drop(leader);
    // From here on the root, /etc/passwd and /dev are the container's.
    let ids = match &plan.process.user {
        Some(spec) => Some(user::resolve(spec).map_err(|m| (Step::User, Errno::EINVAL, m))?),
        None => None,
    };
    let uid = ids.as_ref().map_or(0, |i| i.uid);
    let gid = ids.as_ref().map_or(0, |i| i.gid);
    if plan.shell {
        let shell = user::shell_of(uid);
        payload
            .set_argv(&[shell, "-l".into()])
            .map_err(|m| (Step::Exec, Errno::EINVAL, m))?;
    }
    payload
        .set_user(ids, plan.process.home.as_deref(), &plan.security)
        .map_err(|m| (Step::User, Errno::EINVAL, m))?;
    let mut passed = fds.into_iter();
    let mut given = Vec::with_capacity(3);
    for p in plan.passed {
        given.push(match p {
            true => passed
                .next()
                .ok_or((Step::Protocol, Errno::EINVAL, "stdio".to_string()))?,
            false => devnull()?,
        });
    }
    let given: [OwnedFd; 3] = given
        .try_into()
        .map_err(|_| (Step::Protocol, Errno::EINVAL, "stdio".to_string()))?;
    if !plan.process.terminal.iter().any(|t| *t) {
        return Ok((payload, given));
    }
    let pty = terminal::allocate(uid, gid, plan.process.window)?;
    let stdio = terminal::stdio(&pty.slave, plan.process.terminal, given)?;
    protocol::send(helper.as_fd(), &Told::Terminal, &[pty.master.as_fd()]).map_err(|e| {
        (
            Step::Terminal,
            Errno::EPROTO,
            format!("pass the terminal to the helper: {e}"),
        )
    })?;
    Ok((payload, stdio))
}

/// The helper's exec mode: `fds` are the request's (plan memfd, leader pidfd, the passed
/// standard streams).
pub fn run(sock: OwnedFd, mut fds: Vec<OwnedFd>) -> ! {
    if fds.is_empty() {
        fail(
            &sock,
            (
                Step::Protocol,
                Errno::EPROTO,
                "an exec without its plan".into(),
            ),
        );
    }
    let plan: ExecPlan = match protocol::read_sealed(fds.remove(0)) {
        Ok(p) => p,
        Err(e) => fail(
            &sock,
            (Step::Protocol, Errno::EPROTO, format!("the exec plan: {e}")),
        ),
    };
    // The request's descriptors: the leader's pidfd, then the cgroup2 directory if any.
    let cgroup = if plan.into_cgroup {
        if fds.len() < 2 {
            fail(
                &sock,
                (
                    Step::Protocol,
                    Errno::EPROTO,
                    "an exec into a cgroup without its directory".into(),
                ),
            );
        }
        Some(fds.remove(1))
    } else {
        None
    };
    match exec(&sock, &plan, fds, cgroup) {
        Ok((pid, pidfd, master)) => {
            let mut passed = vec![pidfd.as_fd()];
            if let Some(m) = &master {
                passed.push(m.as_fd());
            }
            if let Err(e) = protocol::send(sock.as_fd(), &FromHelper::Execed { pid }, &passed) {
                // berthd is gone: nobody would reap or wait for the command.
                if let Err(k) =
                    crate::sys::pidfd_send_signal(pidfd.as_fd(), nix::sys::signal::SIGKILL)
                {
                    eprintln!("berth-helper: cannot kill the command: {k}");
                }
                eprintln!("berth-helper: cannot report the exec to berthd: {e}");
                std::process::exit(1)
            }
            std::process::exit(0)
        }
        Err(Some(failure)) => fail(&sock, failure),
        Err(None) => std::process::exit(1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::exec::{ExecBase, ExecRequest};
    use crate::sys::syscall::fake::Recorder;

    fn plan() -> ExecPlan {
        let sample = crate::plan::tests::sample();
        ExecBase::of(&sample, vec!["PATH=/bin".into()]).plan(
            &ExecRequest {
                argv: vec!["/bin/true".into()],
                ..Default::default()
            },
            vec![
                "/sys/fs/cgroup/memory/machine.slice/berth-web.scope/tasks".into(),
                "/sys/fs/cgroup/unified/machine.slice/berth-web.scope/cgroup.procs".into(),
            ],
        )
    }

    fn pidfd() -> OwnedFd {
        std::fs::File::open("/dev/null").unwrap().into()
    }

    #[test]
    fn the_helper_is_non_dumpable_before_it_joins_and_joins_cgroup_then_namespaces() {
        let mut sys = Recorder::default();
        let fd = pidfd();
        enter(&mut sys, &plan(), fd.as_fd()).unwrap();
        assert_eq!(
            sys.calls,
            [
                "non-dumpable",
                "join-cgroup /sys/fs/cgroup/memory/machine.slice/berth-web.scope/tasks",
                "join-cgroup /sys/fs/cgroup/unified/machine.slice/berth-web.scope/cgroup.procs",
                "setns CLONE_NEWNS|CLONE_NEWCGROUP|CLONE_NEWUTS|CLONE_NEWIPC|CLONE_NEWUSER|CLONE_NEWPID|CLONE_NEWNET",
                "become-root",
                "setrlimit RLIMIT_NOFILE 1024 20000",
                "setrlimit RLIMIT_CORE 0 18446744073709551615",
                "join-session-keyring",
            ]
        );
    }

    #[test]
    fn the_helper_is_non_dumpable_before_it_joins_the_pid_namespace_for_its_child() {
        let mut sys = Recorder::default();
        let fd = pidfd();
        before_fork(&mut sys, &plan(), fd.as_fd()).unwrap();
        assert_eq!(sys.calls, ["non-dumpable", "setns CLONE_NEWPID"]);
        let mut sys = Recorder {
            failing: vec!["non-dumpable"],
            ..Default::default()
        };
        assert!(before_fork(&mut sys, &plan(), fd.as_fd()).is_err());
        assert!(!sys.calls.iter().any(|c| c.starts_with("setns")));
        // A container without a PID namespace of its own: nothing to join.
        let mut p = plan();
        p.namespaces.pid = false;
        let mut sys = Recorder::default();
        before_fork(&mut sys, &p, fd.as_fd()).unwrap();
        assert_eq!(sys.calls, ["non-dumpable"]);
    }

    #[test]
    fn a_failed_join_stops_before_the_namespaces() {
        let mut sys = Recorder {
            failing: vec!["join-cgroup"],
            ..Default::default()
        };
        let fd = pidfd();
        let (step, errno, _) = enter(&mut sys, &plan(), fd.as_fd()).unwrap_err();
        assert_eq!((step, errno), (Step::Cgroup, Errno::EPERM));
        assert!(!sys.calls.iter().any(|c| c.starts_with("setns")));
        // Without a user namespace there is no root of one to become.
        let mut p = plan();
        p.namespaces.user = false;
        let mut sys = Recorder::default();
        enter(&mut sys, &p, fd.as_fd()).unwrap();
        assert!(!sys.calls.iter().any(|c| c == "become-root"));
        assert!(!sys.calls.iter().any(|c| c.contains("CLONE_NEWUSER")));
    }
}
