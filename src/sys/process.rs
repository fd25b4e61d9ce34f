//! Process creation and credentials the helper needs that nix does not wrap: `clone3(2)` with
//! namespace flags and a pidfd, and a fresh session keyring.

use std::os::fd::{FromRawFd, OwnedFd};

use nix::errno::Errno;
use nix::unistd::Pid;

/// The two sides of [`clone3_single_threaded`].
pub enum Cloned {
    /// The parent, with the child's PID and a pidfd for it.
    Parent(Pid, OwnedFd),
    Child,
}

/// `struct clone_args` from `<linux/sched.h>` (the second version, 88 bytes: with `cgroup`,
/// Linux 5.7).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// `CLONE_INTO_CGROUP` (`<linux/sched.h>`), which the libc crate does not have.
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// `clone3(2)` like fork (a copy of this process, SIGCHLD on exit) with `flags` — namespace
/// flags are created for the child, owned by a new user namespace if `CLONE_NEWUSER` is among
/// them — and `CLONE_PIDFD`, so the parent gets a pidfd that refers to the child from its
/// first instant. For single-threaded processes only (berth-helper), as [`super::fork_single_threaded`].
pub fn clone3_single_threaded(flags: nix::sched::CloneFlags) -> nix::Result<Cloned> {
    clone3(flags, None)
}

/// [`clone3_single_threaded`] without new namespaces, the child born in the cgroup2 directory
/// `cgroup` (`CLONE_INTO_CGROUP`): placed at fork, not migrated, so without the kernel's global
/// `cgroup_threadgroup_rwsem` write lock that a `cgroup.procs` write takes.
pub fn clone3_into_cgroup(cgroup: std::os::fd::BorrowedFd<'_>) -> nix::Result<Cloned> {
    use std::os::fd::AsRawFd;
    clone3(nix::sched::CloneFlags::empty(), Some(cgroup.as_raw_fd()))
}

fn clone3(flags: nix::sched::CloneFlags, cgroup: Option<libc::c_int>) -> nix::Result<Cloned> {
    let threads = std::fs::read_dir("/proc/self/task")
        .map_err(|_| Errno::EIO)?
        .count();
    if threads != 1 {
        return Err(Errno::EDEADLK);
    }
    let mut pidfd: libc::c_int = -1;
    let mut args = CloneArgs {
        flags: flags.bits() as u64
            | libc::CLONE_PIDFD as u64
            | cgroup.map_or(0, |_| CLONE_INTO_CGROUP),
        cgroup: cgroup.map_or(0, |fd| fd as u64),
        pidfd: &mut pidfd as *mut libc::c_int as u64,
        // With CLONE_PARENT the child is our parent's, and signals it as we do: clone3 refuses
        // an exit signal of its own then (EINVAL).
        exit_signal: if flags.contains(nix::sched::CloneFlags::CLONE_PARENT) {
            0
        } else {
            libc::SIGCHLD as u64
        },
        ..Default::default()
    };
    // SAFETY: the process has exactly one thread (checked above, and only this thread could
    // make another), so the child may run arbitrary code, as after fork(2). `args` and
    // `pidfd` live on this stack for the duration of the call; stack = 0 makes the child run
    // on a copy of this stack, like fork; `cgroup`, when given, is a descriptor the caller
    // holds open across the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &mut args as *mut CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    match ret {
        r if r < 0 => Err(Errno::last()),
        0 => Ok(Cloned::Child),
        pid => {
            // SAFETY: with CLONE_PIDFD the kernel stored a new descriptor for the child in
            // `pidfd`, owned by nobody else.
            let fd = unsafe { OwnedFd::from_raw_fd(pidfd) };
            Ok(Cloned::Parent(Pid::from_raw(pid as i32), fd))
        }
    }
}

/// Join a new, anonymous session keyring (`keyctl(KEYCTL_JOIN_SESSION_KEYRING, NULL)`), so the
/// container shares no keyring with the process that started it.
pub fn join_new_session_keyring() -> nix::Result<()> {
    const KEYCTL_JOIN_SESSION_KEYRING: libc::c_long = 1;
    // SAFETY: a NULL name asks for a new anonymous keyring; no memory is passed.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_keyctl,
            KEYCTL_JOIN_SESSION_KEYRING,
            std::ptr::null::<libc::c_char>(),
        )
    };
    if ret < 0 { Err(Errno::last()) } else { Ok(()) }
}
