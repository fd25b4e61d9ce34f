//! The only module with `unsafe`: one small wrapper per system call that nix does not cover
//! (pidfd calls, `close_range`, `fork`, passing a descriptor to an exec'd child).
//!
//! Every wrapper returns owned handles (`OwnedFd`) and `nix::Result`, so callers never touch raw
//! integers or `errno`. [`syscall`] is the seam the helper's steps go through.

pub mod pidfd_getfd;
pub mod process;
pub mod pty;
pub mod rtsig;
pub mod spawn;
pub mod syscall;

pub mod mount_api;
pub mod userns;

pub mod caps;
pub mod dbus_raw;

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::unistd::Pid;

pub mod seccomp;

/// How a process ended, as `waitid(2)` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitInfo {
    /// `_exit(code)`.
    Exited(i32),
    /// Killed by this signal number.
    Signaled(i32),
}

impl ExitInfo {
    /// The shell's convention: the exit code, or 128 + the signal number.
    pub fn as_status(self) -> i32 {
        match self {
            ExitInfo::Exited(code) => code,
            ExitInfo::Signaled(sig) => 128 + sig,
        }
    }
}

/// `pidfd_open(2)`: a descriptor that refers to `pid` for as long as it is held, immune to PID
/// reuse, and that polls readable when the process exits.
pub fn pidfd_open(pid: Pid) -> nix::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags by value and returns a new descriptor or -1; the
    // descriptor is owned by nobody else, so wrapping it in OwnedFd is sound.
    let ret = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    if ret < 0 {
        return Err(Errno::last());
    }
    // SAFETY: ret is a fresh descriptor returned by the kernel (checked non-negative above).
    Ok(unsafe { OwnedFd::from_raw_fd(ret as RawFd) })
}

/// `pidfd_send_signal(2)`: signal the process behind `pidfd`, never a recycled PID.
pub fn pidfd_send_signal(pidfd: BorrowedFd<'_>, signal: Signal) -> nix::Result<()> {
    // SAFETY: the descriptor is valid for the duration of the borrow; info is NULL, which the
    // kernel accepts as "like kill(2)"; flags are 0.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal as libc::c_int,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if ret < 0 { Err(Errno::last()) } else { Ok(()) }
}

/// `waitid(P_PIDFD, WEXITED | WNOHANG)`: reap our child behind `pidfd` if it has exited.
/// Returns `Ok(None)` while it runs and `Err(ECHILD)` when it is not our child.
pub fn pidfd_try_reap(pidfd: BorrowedFd<'_>) -> nix::Result<Option<ExitInfo>> {
    // SAFETY: siginfo_t is plain data for which all-zero is a valid value.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: `info` is a valid, writable siginfo_t; the descriptor is valid for the borrow.
    let ret = unsafe {
        libc::waitid(
            libc::P_PIDFD,
            pidfd.as_raw_fd() as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG,
        )
    };
    if ret < 0 {
        return Err(Errno::last());
    }
    // SAFETY: waitid filled `info` (or left it zeroed, which si_pid() == 0 tells us).
    let (pid, code, status) = unsafe { (info.si_pid(), info.si_code, info.si_status()) };
    if pid == 0 {
        return Ok(None);
    }
    Ok(Some(if code == libc::CLD_EXITED {
        ExitInfo::Exited(status)
    } else {
        ExitInfo::Signaled(status)
    }))
}

/// `close_range(2)`: close every descriptor from `first` up, so that nothing the parent leaked
/// reaches a container.
pub fn close_from(first: RawFd) -> nix::Result<()> {
    // SAFETY: close_range only closes descriptors; no Rust object in this single-threaded
    // helper owns a descriptor at or above `first` when this is called (callers guarantee it).
    let ret = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first as libc::c_uint,
            libc::c_uint::MAX,
            0,
        )
    };
    if ret < 0 { Err(Errno::last()) } else { Ok(()) }
}

/// The two sides of `fork(2)`.
pub enum Forked {
    Parent(Pid),
    Child,
}

/// `fork(2)`, for single-threaded processes only (berth-helper): refuses with `EDEADLK` when
/// the process has more than one thread, since the child could then inherit a lock another
/// thread held and must not run arbitrary code.
pub fn fork_single_threaded() -> nix::Result<Forked> {
    let threads = std::fs::read_dir("/proc/self/task")
        .map_err(|_| Errno::EIO)?
        .count();
    fork_if_single(threads)
}

/// This process's own thread list (`/proc/self/task`), opened while `/proc` is the host's.
/// An exec helper that joined a container's mount namespace sees the container's /proc, in
/// whose PID namespace it has no PID, so `/proc/self` no longer resolves there; the open
/// directory still lists this process's threads.
pub struct OwnTasks(OwnedFd);

impl OwnTasks {
    pub fn open() -> nix::Result<OwnTasks> {
        nix::fcntl::open(
            "/proc/self/task",
            nix::fcntl::OFlag::O_RDONLY
                | nix::fcntl::OFlag::O_DIRECTORY
                | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map(OwnTasks)
    }

    fn count(&self) -> nix::Result<usize> {
        // A duplicate shares the offset; the iterator rewinds it when dropped.
        let mut dir = nix::dir::Dir::from_fd(self.0.try_clone().map_err(|_| Errno::EMFILE)?)?;
        let mut n = 0;
        for e in dir.iter() {
            let name = e?.file_name().to_bytes().to_vec();
            if name != b"." && name != b".." {
                n += 1;
            }
        }
        Ok(n)
    }
}

/// [`fork_single_threaded`], counting the threads through `tasks`.
pub fn fork_single_threaded_in(tasks: &OwnTasks) -> nix::Result<Forked> {
    fork_if_single(tasks.count()?)
}

fn fork_if_single(threads: usize) -> nix::Result<Forked> {
    if threads != 1 {
        return Err(Errno::EDEADLK);
    }
    // SAFETY: the caller counted exactly one thread in this process just before, the condition
    // under which running arbitrary code in the child is sound; no thread can appear in
    // between because only this thread could create one.
    match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Parent { child } => Ok(Forked::Parent(child)),
        nix::unistd::ForkResult::Child => Ok(Forked::Child),
    }
}

/// Set an environment variable of this process. Only for single-threaded processes (the
/// helper), where no other thread can read the environment concurrently.
pub fn set_env_single_threaded(key: &str, value: &str) {
    // SAFETY: callers are single-threaded, the documented condition for set_var.
    unsafe { std::env::set_var(key, value) }
}

/// Take ownership of a descriptor the kernel just installed for us by `SCM_RIGHTS`.
pub fn owned_from_scm_rights(fd: RawFd) -> OwnedFd {
    // SAFETY: descriptors received by SCM_RIGHTS are new in this process and owned by nobody
    // else; recvmsg's caller hands each one over exactly once.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Take ownership of a descriptor this process inherited across exec at a known number
/// (`LISTEN_FDS` from systemd, the helper's protocol socket). Returns `EBADF` if it is not
/// open.
///
/// Only for startup, before any other code of this process has opened or closed descriptors,
/// and once per number: that is what makes the inherited number unowned until now.
pub fn take_inherited_fd(fd: RawFd) -> nix::Result<OwnedFd> {
    nix::fcntl::fcntl(
        // SAFETY: only borrowed for this one fcntl(F_GETFD), which reads the flags of the
        // number and fails with EBADF if it is not open.
        unsafe { BorrowedFd::borrow_raw(fd) },
        nix::fcntl::FcntlArg::F_GETFD,
    )?;
    // SAFETY: the descriptor is open (checked above); it was inherited across exec, and the
    // caller takes each inherited number once, at startup, before anything else could own it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The PID of the process behind a pidfd, from `/proc/self/fdinfo` (the `Pid:` line); `None`
/// when it has been reaped.
pub fn pidfd_pid(pidfd: BorrowedFd<'_>) -> nix::Result<Pid> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", pidfd.as_raw_fd()))
        .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?;
    let pid: i32 = info
        .lines()
        .find_map(|l| l.strip_prefix("Pid:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or(Errno::EINVAL)?;
    if pid <= 0 {
        return Err(Errno::ESRCH);
    }
    Ok(Pid::from_raw(pid))
}

/// Bring the loopback interface of the current network namespace up (`SIOCSIFFLAGS`), the
/// one thing a fresh network namespace needs for `127.0.0.1` to work.
pub fn set_loopback_up() -> nix::Result<()> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // SAFETY: ifreq is plain data; all-zero is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads the flags into the ifreq we own; the socket is valid.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(Errno::last());
    }
    // SAFETY: ifr_ifru is a union; SIOCGIFFLAGS just initialised its `ifru_flags` member.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: SIOCSIFFLAGS reads the ifreq we own; the socket is valid.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(Errno::last());
    }
    Ok(())
}

/// Move `fd` to the number of `replaced`, which the caller gives up, keeping it close-on-exec.
/// On failure both are closed and the error returned.
pub fn move_fd(fd: OwnedFd, replaced: OwnedFd) -> nix::Result<OwnedFd> {
    if fd.as_raw_fd() == replaced.as_raw_fd() {
        return Ok(fd);
    }
    // Not closed here: dup3 closes and reuses the number atomically.
    let target = std::os::fd::IntoRawFd::into_raw_fd(replaced);
    // SAFETY: dup3 onto `target` atomically replaces the descriptor the caller handed over
    // (owned until just now, so no other handle to it exists).
    let ret = unsafe { libc::dup3(fd.as_raw_fd(), target, libc::O_CLOEXEC) };
    // SAFETY: whether dup3 worked (then `target` is a fresh duplicate) or not (then it is still
    // the descriptor taken from `replaced`), `target` is open and only ours.
    let owned = unsafe { OwnedFd::from_raw_fd(target) };
    if ret < 0 {
        Err(Errno::last())
    } else {
        Ok(owned)
    }
}

/// A close-on-exec duplicate of `fd` numbered `min` or higher (`F_DUPFD_CLOEXEC`).
pub fn dup_at_least(fd: BorrowedFd<'_>, min: RawFd) -> nix::Result<OwnedFd> {
    let n = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(min))?;
    // SAFETY: F_DUPFD_CLOEXEC returned a new descriptor, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(n) })
}

/// A `/proc` text file, read into a buffer large enough for one read: procfs files report
/// size 0, so `fs::read_to_string` reads them 32 bytes first and doubles from there, and each
/// read makes the kernel produce the text again (berthd's mountinfo took 9 reads, 0.35 ms, on
/// every exec).
pub fn read_proc(path: impl AsRef<std::path::Path>) -> std::io::Result<String> {
    use std::io::Read;
    let mut text = String::with_capacity(64 * 1024);
    std::fs::File::open(path)?.read_to_string(&mut text)?;
    Ok(text)
}

/// Register an owned descriptor with the tokio reactor.
pub fn async_fd(fd: OwnedFd) -> std::io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    // SAFETY: `fd` is owned (moved in), so no other handle can close or reuse the descriptor
    // while it is registered; it is deregistered when the AsyncFd drops it.
    unsafe { tokio::io::unix::AsyncFd::register(fd) }.map_err(|e| e.into_parts().1)
}

/// Remove an environment variable. Only before any second thread exists.
pub fn remove_env_single_threaded(key: &str) {
    // SAFETY: callers run before the process starts threads, the documented condition.
    unsafe { std::env::remove_var(key) }
}
