//! berth-helper: executes one container start plan from berthd (see [`crate::protocol`]).
//!
//! It is exec'd by berthd with the protocol socket as descriptor 3, and is single-threaded,
//! so it may fork and run code in the child, which the multi-threaded daemon must not. Every
//! step goes through the [`Syscalls`] seam, in this fixed order:
//!
//! 1. (sync #1) the plan arrives; the helper makes a private mount namespace of its own
//!    ([`before_clone`]) and clones the leader into new namespaces (a user namespace first,
//!    owning the others); the leader's pidfd goes to berthd (sync #2); the helper exits.
//! 2. While systemd makes the scope, berthd writes the leader's ID maps, makes its root and
//!    plugs its network in; the leader waits for sync #3, which brings the root, then
//!    ([`prepare`]) brings loopback up, attaches the root, becomes root of its user
//!    namespace, makes the plan's mounts and masks up to [`mount::MountOp::InScope`] and
//!    pivots; at sync #4 (in its scope) it unshares the cgroup namespace, mounts its cgroup,
//!    sets the
//!    hostname, rlimits and a session keyring, resolves its user in the container's
//!    own databases, and starts the payload ([`init::exec_steps`]: session, groups, gid, uid,
//!    working directory, capabilities, no_new_privs, SELinux exec label, seccomp, exec);
//!    sync #5 says it ran.
//! 3. The leader stays as the container's PID 1 ([`init::supervise`]) with no capability but
//!    CAP_KILL (to pass signals on to a payload of another uid).

pub mod bind;
mod boot;
pub mod exec;
pub mod held;
mod init;
mod terminal;
pub mod user;

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::signal::Signal;

use crate::mount;
use crate::plan::Plan;
use crate::protocol::{self, FromHelper, PLAN_FDS, Step, ToHelper};
use crate::sys;
use crate::sys::process::Cloned;
use crate::sys::syscall::{Real, Syscalls};

/// The descriptor berthd hands the protocol socket on.
pub const SOCKET_FD: i32 = 3;

/// A failed step: which, its errno, and what to tell berthd.
type Failure = (Step, Errno, String);
type StepResult<T> = Result<T, Failure>;

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
    let held = std::env::args_os().nth(1).is_some_and(|a| a == held::ARG);
    let sock = if held {
        match held::take_socket() {
            Ok(s) => s,
            Err(e) => die("the protocol socket (standard input)", e),
        }
    } else {
        // Nothing berthd's process leaked may reach the container.
        if let Err(e) = sys::close_from(SOCKET_FD + 1) {
            die("close inherited descriptors", e);
        }
        match sys::take_inherited_fd(SOCKET_FD) {
            Ok(s) => s,
            Err(e) => die("the protocol socket (descriptor 3)", e),
        }
    };
    // The socket was passed without close-on-exec; the payload must not inherit it.
    if let Err(e) = nix::fcntl::fcntl(
        &sock,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    ) {
        die("the protocol socket", e);
    }
    let (msg, fds) = match protocol::recv::<ToHelper>(sock.as_fd()) {
        Ok(m) => m,
        Err(e) => fail(
            &sock,
            (
                Step::Protocol,
                Errno::EPROTO,
                format!("sync #1 (plan): {e}"),
            ),
        ),
    };
    match msg {
        ToHelper::Plan => {}
        ToHelper::Exec => exec::run(sock, fds),
        ToHelper::Bind => bind::run(sock, fds),
        ToHelper::Release | ToHelper::InScope => fail(
            &sock,
            (
                Step::Protocol,
                Errno::EPROTO,
                format!("sync #1 (plan): {msg:?} before the plan"),
            ),
        ),
    }
    let mut fds = fds;
    let plan = (|| {
        if fds.is_empty() {
            return Err(protocol::ProtocolError::Fds {
                got: 0,
                want: PLAN_FDS,
            });
        }
        let plan = protocol::read_plan(fds.remove(0))?;
        let want = protocol::plan_fds(&plan);
        if fds.len() + 1 != want {
            return Err(protocol::ProtocolError::Fds {
                got: fds.len() + 1,
                want,
            });
        }
        Ok((plan, fds))
    })();
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
    let notifier = match held.then(held::Notifier::from_env).transpose() {
        Ok(n) => n,
        Err(m) => fail(&sock, (Step::Protocol, Errno::EINVAL, m)),
    };
    run(sock, &plan, fds, notifier)
}

fn run(sock: OwnedFd, plan: &Plan, mut fds: Vec<OwnedFd>, notifier: Option<held::Notifier>) -> ! {
    let mut sys = Real;
    // The network namespace to join comes last, after the exit-status memfd.
    let netns = if plan.namespaces.join_net {
        fds.pop()
    } else {
        None
    };
    let cloned = init::Payload::from_plan(&plan.process)
        .map_err(|m| (Step::Exec, Errno::EINVAL, m))
        .and_then(|payload| {
            join_network(&mut sys, plan, netns.as_ref().map(|f| f.as_fd()))?;
            drop(netns);
            before_clone(&mut sys, plan)?;
            // In a unit, the leader is the service manager's child (see `held`).
            let parent = match notifier {
                Some(_) => nix::sched::CloneFlags::CLONE_PARENT,
                None => nix::sched::CloneFlags::empty(),
            };
            let c = sys::process::clone3_single_threaded(plan.namespaces.at_clone() | parent)
                .map_err(|e| (Step::Namespaces, e, "clone3 into new namespaces".into()))?;
            Ok((payload, c))
        });
    let payload = match cloned {
        Err(failure) => fail(&sock, failure),
        Ok((_, Cloned::Parent(pid, pidfd))) => {
            if let Some(n) = &notifier
                && let Err(e) = n.send(&format!("MAINPID={pid}"))
            {
                fail(
                    &sock,
                    (
                        Step::Fork,
                        Errno::EPIPE,
                        format!("tell the unit its main process: {e}"),
                    ),
                );
            }
            match protocol::send(sock.as_fd(), &FromHelper::Forked, &[pidfd.as_fd()]) {
                Ok(()) => std::process::exit(0),
                Err(e) => fail(
                    &sock,
                    (Step::Fork, Errno::EPIPE, format!("sync #2 (forked): {e}")),
                ),
            }
        }
        Ok((payload, Cloned::Child)) => payload,
    };
    // The leader keeps no handle on the service manager: berthd says READY=1 for it.
    drop(notifier);
    // The leader: PID 1 of the new PID namespace. Wait at the barrier for the scope, the ID
    // maps and the root.
    if nix::sys::prctl::set_pdeathsig(None).is_err() {
        std::process::exit(1);
    }
    // The root, the device mount when berthd made one (the plan has device nodes to bind),
    // then the detached mounts of the plan's `Attach` operations.
    let has_nodes = plan.security.id_maps.is_some()
        && plan
            .mounts
            .iter()
            .any(|m| matches!(m, mount::MountOp::Node { .. }));
    let (root, nodes, sources) = match protocol::recv::<ToHelper>(sock.as_fd()) {
        Ok((ToHelper::Release, mut fds)) if fds.len() > usize::from(has_nodes) => {
            let root = fds.remove(0);
            let nodes = has_nodes.then(|| fds.remove(0));
            (root, nodes, fds)
        }
        _ => std::process::exit(1),
    };
    if plan.process.boot {
        boot::run(sock, &mut sys, plan, payload, root, nodes, sources, fds)
    }
    match leader(
        &mut sys,
        plan,
        payload,
        (root, nodes, &sources),
        fds,
        |_| wait_in_scope(&sock),
    ) {
        Ok((pid, status_fd, devnull, master)) => {
            drop(sources);
            let passed: Vec<BorrowedFd<'_>> = master.iter().map(|m| m.as_fd()).collect();
            let sent = protocol::send(sock.as_fd(), &FromHelper::Started, &passed);
            drop(master);
            if sent.is_err() {
                // berthd went away before it learnt that the payload runs; a restarted
                // berthd adopts the container from its records or not at all. PID 1 goes on
                // either way.
            }
            init::become_init(pid, status_fd, devnull, sock)
        }
        Err(failure) => fail(&sock, failure),
    }
}

/// Sync #4: berthd says the leader is in its scope.
pub(crate) fn wait_in_scope(sock: &OwnedFd) -> StepResult<()> {
    match protocol::recv::<ToHelper>(sock.as_fd()) {
        Ok((ToHelper::InScope, fds)) if fds.is_empty() => Ok(()),
        Ok((other, fds)) => Err((
            Step::Protocol,
            Errno::EPROTO,
            format!(
                "{}: berthd sent {other:?} with {} descriptors",
                protocol::Sync::InScope,
                fds.len()
            ),
        )),
        Err(e) => Err((
            Step::Protocol,
            Errno::EPROTO,
            format!("{}: {e}", protocol::Sync::InScope),
        )),
    }
}

/// `--network container:NAME`: join the other container's network namespace first, while the
/// helper is still root of the initial user namespace (the leader could not: entering a
/// namespace needs CAP_SYS_ADMIN over the user namespace that owns it, setns(2)), and before
/// [`before_clone`] mounts the scratch sysfs, so that sysfs shows that namespace's devices.
/// The leader is then cloned without CLONE_NEWNET and inherits it.
pub fn join_network<S: Syscalls>(
    sys: &mut S,
    plan: &Plan,
    netns: Option<BorrowedFd<'_>>,
) -> StepResult<()> {
    match (plan.namespaces.join_net, netns) {
        (false, None) => Ok(()),
        (true, Some(fd)) => sys.setns_net(fd).map_err(|e| {
            (
                Step::Namespaces,
                e,
                "join the network namespace of the container it shares".into(),
            )
        }),
        _ => Err((
            Step::Protocol,
            Errno::EINVAL,
            "sync #1 (plan): the network namespace to join is missing".into(),
        )),
    }
}

/// The helper's own steps before it clones the leader: a private mount namespace of its own
/// (the leader's is copied from it), and — when the leader gets a user namespace — fresh,
/// uncovered proc and sysfs mounts in the plan's scratch directory. The kernel lets a user
/// namespace mount proc or sysfs only where such a fully visible instance exists in its mount
/// namespace (`mount_too_revealing()`), and berthd's own /proc is partly covered (its
/// sandboxing, the host's read-only /proc/sys). They are the helper's, never the host's, and
/// vanish with the old root at the pivot.
pub fn before_clone<S: Syscalls>(sys: &mut S, plan: &Plan) -> StepResult<()> {
    sys.unshare(nix::sched::CloneFlags::CLONE_NEWNS)
        .map_err(|e| (Step::Namespaces, e, "unshare the mount namespace".into()))?;
    sys.make_rprivate()
        .map_err(|e| (Step::Mount, e, "make / private".into()))?;
    if plan.namespaces.user {
        for (fstype, dir) in [("proc", "proc"), ("sysfs", "sys")] {
            let at = plan.root.scratch.join(dir);
            sys.mount_host(fstype, &at).map_err(|e| {
                (
                    Step::Mount,
                    e,
                    format!("mount a fresh {fstype} on {}", at.display()),
                )
            })?;
        }
    }
    Ok(())
}

/// The leader's steps before the payload: root of its user namespace, with the root
/// attached, the plan's mounts up to [`mount::MountOp::InScope`] made and pivoted into;
/// then, once `in_scope` returns (sync #4: systemd made the scope meanwhile), in the scope's
/// cgroup namespace with its cgroup mounted, named, limited, with a session keyring of its
/// own.
pub fn prepare<S: Syscalls>(
    sys: &mut S,
    plan: &Plan,
    root: BorrowedFd<'_>,
    nodes: Option<BorrowedFd<'_>>,
    sources: &[S::Fd],
    in_scope: impl FnOnce(&mut S) -> StepResult<()>,
) -> StepResult<()> {
    // Only in a network namespace of its own (berthd brings it up too, at the attach): the
    // host's or another container's loopback is not the container's to touch.
    if plan.namespaces.net {
        sys.loopback_up()
            .map_err(|e| (Step::Namespaces, e, "bring up loopback".into()))?;
    }
    // Still with the host's root as file owner (uid 0 of the initial namespace), which may
    // walk berthd's root-only directories to the mount point; the user namespace's root,
    // next, may not.
    sys.attach(root, &plan.root.target).map_err(|e| {
        (
            Step::Mount,
            e,
            format!("attach the root on {}", plan.root.target.display()),
        )
    })?;
    let root = sys.open_dir(&plan.root.target).map_err(|e| {
        (
            Step::Mount,
            e,
            format!("open {}", plan.root.target.display()),
        )
    })?;
    // berthd's device mount, attached in this (the leader's own) mount namespace so that its
    // nodes can be bound from it; it goes with the old root at the pivot.
    let nodes = match nodes {
        Some(fd) => {
            let at = plan.root.scratch.join("dev");
            let what = || format!("attach the device nodes on {}", at.display());
            sys.attach(fd, &at).map_err(|e| (Step::Mount, e, what()))?;
            Some(sys.open_dir(&at).map_err(|e| (Step::Mount, e, what()))?)
        }
        None => None,
    };
    if plan.namespaces.user {
        sys.become_root()
            .map_err(|e| (Step::Userns, e, "become root of the user namespace".into()))?;
    }
    let split = plan
        .mounts
        .iter()
        .position(|op| matches!(op, mount::MountOp::InScope))
        .ok_or_else(|| {
            (
                Step::Protocol,
                Errno::EINVAL,
                "sync #1 (plan): the mounts have no in-scope point".to_string(),
            )
        })?;
    let (before, after) = plan.mounts.split_at(split);
    mount::apply::operations_with(sys, &root, nodes.as_ref(), before, sources)
        .map_err(|(e, m)| (Step::Mount, e, m))?;
    sys.pivot_root(&root)
        .map_err(|e| (Step::Pivot, e, "pivot_root".into()))?;
    in_scope(sys)?;
    sys.unshare(plan.namespaces.in_scope())
        .map_err(|e| (Step::Cgroup, e, "unshare cgroup namespace".into()))?;
    // Inside the new root (`root` is it now): the cgroup mount.
    mount::apply::operations_with(sys, &root, None, after, &[])
        .map_err(|(e, m)| (Step::Mount, e, m))?;
    sys.sethostname(&plan.hostname)
        .map_err(|e| (Step::Hostname, e, "sethostname".into()))?;
    for u in &plan.process.rlimits {
        sys.setrlimit(u.resource.resource(), u.soft, u.hard)
            .map_err(|e| (Step::Rlimits, e, format!("setrlimit {}", u.resource.name())))?;
    }
    sys.join_session_keyring()
        .map_err(|e| (Step::Keyring, e, "join a new session keyring".into()))?;
    Ok(())
}

/// Everything the leader does after the barrier, up to the payload's exec. Returns the
/// payload's PID, the exit-status memfd, the container's /dev/null for PID 1, and the
/// terminal's master when the plan asked for a terminal.
#[allow(clippy::type_complexity)]
fn leader(
    sys: &mut Real,
    plan: &Plan,
    mut payload: init::Payload,
    (root, nodes, sources): (OwnedFd, Option<OwnedFd>, &[OwnedFd]),
    fds: Vec<OwnedFd>,
    in_scope: impl FnOnce(&mut Real) -> StepResult<()>,
) -> StepResult<(nix::unistd::Pid, OwnedFd, OwnedFd, Option<OwnedFd>)> {
    prepare(
        sys,
        plan,
        root.as_fd(),
        nodes.as_ref().map(|n| n.as_fd()),
        sources,
        in_scope,
    )?;
    drop(root);
    drop(nodes);
    // After the pivot, so that names mean what the image's /etc/passwd says.
    let ids = match &plan.process.user {
        Some(spec) => Some(user::resolve(spec).map_err(|m| (Step::User, Errno::EINVAL, m))?),
        None => None,
    };
    payload
        .set_user(ids.clone(), plan.process.home.as_deref(), &plan.security)
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
    let (stdio, master) = if plan.process.terminal.iter().any(|t| *t) {
        let uid = ids.as_ref().map_or(0, |i| i.uid);
        let gid = ids.as_ref().map_or(0, |i| i.gid);
        let pty = terminal::allocate(uid, gid, plan.process.window)?;
        let stdio = terminal::stdio(&pty.slave, plan.process.terminal, [i, o, e])?;
        (stdio, Some(pty.master))
    } else {
        ([i, o, e], None)
    };
    let pid = init::start_payload(&payload, stdio, None).map_err(|(step, errno)| {
        let what = match step {
            Step::Exec => format!("cannot execute {:?}", plan.process.argv[0]),
            step => format!(
                "the {step:?} step before executing {:?}",
                plan.process.argv[0]
            ),
        };
        (step, errno, format!("{what}: {}", errno.desc()))
    })?;
    Ok((pid, status, devnull, master))
}

/// Tell berthd which step failed, and exit.
pub(crate) fn fail(sock: &OwnedFd, (step, errno, message): (Step, Errno, String)) -> ! {
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

    fn devnull() -> OwnedFd {
        std::fs::File::open("/dev/null").unwrap().into()
    }

    #[test]
    fn the_helper_uncovers_proc_and_sys_for_a_user_namespace_only() {
        let mut plan = crate::plan::tests::sample();
        let mut sys = Recorder::default();
        before_clone(&mut sys, &plan).unwrap();
        assert_eq!(
            sys.calls,
            [
                "unshare CLONE_NEWNS",
                "make-rprivate /",
                "mount-host proc /run/berth/scratch/proc",
                "mount-host sysfs /run/berth/scratch/sys"
            ]
        );
        plan.namespaces.user = false;
        let mut sys = Recorder::default();
        before_clone(&mut sys, &plan).unwrap();
        assert_eq!(sys.calls, ["unshare CLONE_NEWNS", "make-rprivate /"]);
    }

    #[test]
    fn the_leader_is_root_then_mounts_then_pivots_then_names_itself() {
        let plan = crate::plan::tests::sample();
        let mut sys = Recorder::default();
        let root = devnull();
        prepare(&mut sys, &plan, root.as_fd(), None, &[], |sys| {
            sys.calls.push("in-scope".into());
            Ok(())
        })
        .unwrap();
        let order = [
            "loopback-up",
            "attach /var/lib/berth/containers/web/root",
            "become-root",
            "mount proc /proc",
            "bind /proc/sys/net /proc/sys/net",
            "bind /proc/sys /proc/sys",
            "remount /proc/sys MS_RDONLY",
            "mount sysfs /sys",
            "bind //run/berth/scratch/empty /proc/kcore",
            "mount tmpfs /dev ",
            "bind //dev/null /dev/null",
            "mount tmpfs /run",
            "pivot-root",
            // Sync #4: all of the above is made while systemd makes the scope.
            "in-scope",
            "unshare CLONE_NEWCGROUP",
            "mount cgroup2 /sys/fs/cgroup",
            "sethostname web",
            "setrlimit RLIMIT_NOFILE",
            "join-session-keyring",
        ];
        let pos: Vec<usize> = order.iter().map(|c| sys.pos(c)).collect();
        assert!(pos.windows(2).all(|w| w[0] < w[1]), "{:#?}", sys.calls);
    }

    #[test]
    fn a_shared_network_namespace_is_joined_before_the_scratch_sysfs_and_not_touched() {
        let mut plan = crate::plan::tests::sample();
        plan.namespaces.net = false;
        plan.namespaces.join_net = true;
        let mut sys = Recorder::default();
        let ns = devnull();
        join_network(&mut sys, &plan, Some(ns.as_fd())).unwrap();
        before_clone(&mut sys, &plan).unwrap();
        assert!(sys.pos("setns-net") < sys.pos("mount-host sysfs"));
        assert!(sys.pos("setns-net") < sys.pos("unshare CLONE_NEWNS"));
        // The plan and the descriptors must agree.
        let mut sys = Recorder::default();
        let (step, errno, _) = join_network(&mut sys, &plan, None).unwrap_err();
        assert_eq!((step, errno), (Step::Protocol, Errno::EINVAL));
        plan.namespaces.join_net = false;
        join_network(&mut sys, &plan, None).unwrap();
        assert!(sys.calls.is_empty());
        // The leader leaves a loopback it does not own alone.
        let mut sys = Recorder::default();
        prepare(&mut sys, &plan, ns.as_fd(), None, &[], |_| Ok(())).unwrap();
        assert!(!sys.calls.iter().any(|c| c == "loopback-up"));
    }

    #[test]
    fn device_nodes_from_berthd_are_attached_before_root_and_bound_after_dev() {
        let mut plan = crate::plan::tests::sample();
        plan.mounts.push(crate::mount::MountOp::Node {
            path: "dev/fuse".into(),
            node: "0".into(),
            source: "/dev/fuse".into(),
            block: false,
            major: 10,
            minor: 229,
        });
        crate::mount::defer_to_scope(&mut plan.mounts);
        let mut sys = Recorder::default();
        let (root, nodes) = (devnull(), devnull());
        prepare(
            &mut sys,
            &plan,
            root.as_fd(),
            Some(nodes.as_fd()),
            &[],
            |_| Ok(()),
        )
        .unwrap();
        let order = [
            "attach /var/lib/berth/containers/web/root",
            "attach /run/berth/scratch/dev",
            "become-root",
            "mount tmpfs /dev ",
            "bind /0 /dev/fuse",
            "pivot-root",
        ];
        let pos: Vec<usize> = order.iter().map(|c| sys.pos(c)).collect();
        assert!(pos.windows(2).all(|w| w[0] < w[1]), "{:#?}", sys.calls);
        // Without the mount, a Node is an error, never a host bind.
        let mut sys = Recorder::default();
        let (_, _, what) =
            prepare(&mut sys, &plan, root.as_fd(), None, &[], |_| Ok(())).unwrap_err();
        assert!(what.contains("no device mount"), "{what}");
    }

    #[test]
    fn a_failed_mount_stops_before_the_pivot() {
        let plan = crate::plan::tests::sample();
        let mut sys = Recorder {
            failing: vec!["attach"],
            ..Default::default()
        };
        let root = devnull();
        let (step, errno, _) =
            prepare(&mut sys, &plan, root.as_fd(), None, &[], |_| Ok(())).unwrap_err();
        assert_eq!((step, errno), (Step::Mount, Errno::EPERM));
        assert!(!sys.calls.iter().any(|c| c.starts_with("pivot-root")));
    }

    #[test]
    fn a_mount_that_fails_before_the_scope_is_reported_without_waiting_for_it() {
        let plan = crate::plan::tests::sample();
        let mut sys = Recorder {
            failing: vec!["mount"],
            ..Default::default()
        };
        let root = devnull();
        let waited = std::cell::Cell::new(false);
        let (step, errno, what) = prepare(&mut sys, &plan, root.as_fd(), None, &[], |_| {
            waited.set(true);
            Ok(())
        })
        .unwrap_err();
        assert_eq!((step, errno), (Step::Mount, Errno::EPERM), "{what}");
        assert!(!waited.get());
        assert!(
            !sys.calls
                .iter()
                .any(|c| c.starts_with("unshare CLONE_NEWCGROUP"))
        );
    }

    #[test]
    fn without_the_scope_nothing_after_the_wait_is_made() {
        let plan = crate::plan::tests::sample();
        let mut sys = Recorder::default();
        let root = devnull();
        let (step, _, _) = prepare(&mut sys, &plan, root.as_fd(), None, &[], |_| {
            Err((Step::Protocol, Errno::EPROTO, "berthd went away".into()))
        })
        .unwrap_err();
        assert_eq!(step, Step::Protocol);
        assert!(sys.calls.iter().any(|c| c.starts_with("pivot-root")));
        for never in ["unshare CLONE_NEWCGROUP", "mount cgroup2", "sethostname"] {
            assert!(!sys.calls.iter().any(|c| c.starts_with(never)), "{never}");
        }
    }
}
