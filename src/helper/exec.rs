//! The helper's exec: a command in a running container, as its payload would run there.
//!
//! Order (with the leader's cgroup2 directory in the request, first a fork of the helper born
//! in it — [`fork_into_cgroup`] — that goes on; then [`enter`], then the payload's own
//! [`super::init::exec_steps`]):
//! 1. non-dumpable first: from the moment this process shares a user namespace with the
//!    container, nobody there may ptrace it or open its `/proc/PID/{fd,exe,mem}` (runc
//!    CVE-2016-9962, CVE-2019-5736). It runs from berthd's sealed in-memory copy of the helper
//!    and holds, besides its protocol socket (close-on-exec), only the caller's standard
//!    streams and the leader's pidfd, which it closes once it has joined.
//! 2. the scope's cgroup on every v1 hierarchy (`tasks`: see [`crate::cgroup::membership`]),
//!    and on cgroup2 by `cgroup.procs` when it was not born there, while the host's cgroup
//!    filesystems are still this process's view;
//! 3. all of the container's namespaces at once, through the leader's pidfd (`setns(2)`
//!    with a pidfd, Linux 5.8): user, mount (which also moves the root and working directory
//!    to the container's), UTS, IPC, network, cgroup, and PID for the child;
//! 4. root of the user namespace (the container's root, not the host's), the payload's
//!    rlimits, a new session keyring;
//! 5. the user looked up in the container's own databases, the terminal allocated in its
//!    devpts, then a child (PID namespace) that makes the same identity → capabilities →
//!    no_new_privs → SELinux label → seccomp → exec steps as the payload.
//!
//! The helper reports the child's pidfd ([`FromHelper::Execed`]) once the exec worked and
//! exits; the child is re-parented to berthd (a child subreaper), which reaps it and keeps
//! its exit status.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;

use super::{StepResult, fail, init, terminal, user};
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

/// The container's /dev/null (opened inside it, never the host's).
fn devnull() -> StepResult<OwnedFd> {
    nix::fcntl::open(
        "/dev/null",
        nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NOFOLLOW,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| (Step::Exec, e, "open the container's /dev/null".into()))
}

/// Everything after the request arrived; returns the child's PID and pidfd, and the
/// terminal's master.
fn exec(plan: &ExecPlan, mut fds: Vec<OwnedFd>) -> StepResult<(i32, OwnedFd, Option<OwnedFd>)> {
    let mut sys = Real;
    let want = 1 + plan.passed.iter().filter(|p| **p).count();
    if fds.len() != want {
        return Err((
            Step::Protocol,
            Errno::EINVAL,
            format!("{} descriptors, expected {want}", fds.len()),
        ));
    }
    let leader = fds.remove(0);
    let mut payload =
        init::Payload::from_plan(&plan.process).map_err(|m| (Step::Exec, Errno::EINVAL, m))?;
    // Before the container's /proc replaces ours (see OwnTasks).
    let tasks = crate::sys::OwnTasks::open()
        .map_err(|e| (Step::Fork, e, "open /proc/self/task".to_string()))?;
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
    let (stdio, master) = if plan.process.terminal.iter().any(|t| *t) {
        let pty = terminal::allocate(uid, gid, plan.process.window)?;
        let stdio = terminal::stdio(&pty.slave, plan.process.terminal, given)?;
        (stdio, Some(pty.master))
    } else {
        (given, None)
    };
    let argv0 = plan.process.argv.first().cloned().unwrap_or_default();
    let pid = init::start_payload(&payload, stdio, Some(&tasks)).map_err(|(step, errno)| {
        let what = match step {
            Step::Exec => format!("cannot execute {argv0:?}"),
            step => format!("the {step:?} step before executing {argv0:?}"),
        };
        (step, errno, format!("{what}: {}", errno.desc()))
    })?;
    // Not reaped, so the PID cannot be reused before the pidfd holds it.
    let pidfd = crate::sys::pidfd_open(pid)
        .map_err(|e| (Step::Fork, e, "pidfd of the command".to_string()))?;
    Ok((pid.as_raw(), pidfd, master))
}

/// Go on in a child born in the leader's cgroup2 directory `cgroup` (closed in it before
/// anything else: no host descriptor but the request's goes into the container); this process
/// waits for it and exits as it does. The command the child starts is reparented to berthd,
/// the nearest subreaper, when the child exits, as it is when a helper without this step does.
fn fork_into_cgroup(cgroup: OwnedFd) -> StepResult<()> {
    use crate::sys::process::{Cloned, clone3_into_cgroup};
    match clone3_into_cgroup(cgroup.as_fd()) {
        Ok(Cloned::Child) => Ok(()),
        Ok(Cloned::Parent(pid, _pidfd)) => {
            let code = match nix::sys::wait::waitpid(pid, None) {
                Ok(nix::sys::wait::WaitStatus::Exited(_, code)) => code,
                _ => 1,
            };
            std::process::exit(code)
        }
        Err(e) => Err((Step::Cgroup, e, "start in the container's cgroup".into())),
    }
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
    if plan.into_cgroup {
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
        let cgroup = fds.remove(1);
        if let Err(failure) = fork_into_cgroup(cgroup) {
            fail(&sock, failure);
        }
    }
    match exec(&plan, fds) {
        Ok((pid, pidfd, master)) => {
            let mut passed = vec![pidfd.as_fd()];
            if let Some(m) = &master {
                passed.push(m.as_fd());
            }
            if let Err(e) = protocol::send(sock.as_fd(), &FromHelper::Execed { pid }, &passed) {
                // berthd is gone: nobody would reap or wait for the command.
                let _ = crate::sys::pidfd_send_signal(pidfd.as_fd(), nix::sys::signal::SIGKILL);
                eprintln!("berth-helper: cannot report the exec to berthd: {e}");
                std::process::exit(1);
            }
            std::process::exit(0)
        }
        Err(failure) => fail(&sock, failure),
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
