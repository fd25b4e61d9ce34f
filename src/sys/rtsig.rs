//! Realtime signals (`SIGRTMIN+n`), which nix's `Signal` cannot name: systemd's shutdown
//! requests (SIGRTMIN+3 halt, SIGRTMIN+4 poweroff, as `machinectl poweroff` sends them) must
//! reach the container's PID 1 loop.

use nix::errno::Errno;
use nix::sys::signal::SigSet;

/// `SIGRTMIN+n` as a number.
pub fn rtmin_plus(n: i32) -> i32 {
    libc::SIGRTMIN() + n
}

/// `set` plus the signals numbered `extra`.
pub fn with_numbers(set: &SigSet, extra: &[i32]) -> nix::Result<SigSet> {
    let mut raw: libc::sigset_t = *set.as_ref();
    for &n in extra {
        // SAFETY: `raw` is an initialised sigset_t on this stack; sigaddset only writes it,
        // and returns -1 (EINVAL) for a number out of range, checked below.
        if unsafe { libc::sigaddset(&mut raw, n) } != 0 {
            return Err(Errno::EINVAL);
        }
    }
    // SAFETY: `raw` came from a valid SigSet and was changed only through sigaddset.
    Ok(unsafe { SigSet::from_sigset_t_unchecked(raw) })
}

/// `sigwait(3)`, giving the signal's number (realtime ones included).
pub fn wait_number(set: &SigSet) -> nix::Result<i32> {
    let mut sig: libc::c_int = 0;
    // SAFETY: both pointers refer to live values on this stack for the duration of the call.
    let r = unsafe { libc::sigwait(set.as_ref(), &mut sig) };
    if r != 0 {
        return Err(Errno::from_raw(r));
    }
    Ok(sig)
}

/// `pidfd_send_signal(2)` by number, realtime signals included (nix's `Signal` has none).
pub fn pidfd_send_number(pidfd: std::os::fd::BorrowedFd<'_>, signal: i32) -> nix::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: the descriptor is valid for the duration of the borrow; info is NULL, which the
    // kernel accepts as "like kill(2)"; flags are 0; a bad number is the kernel's EINVAL.
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

/// Whether `n` is a realtime signal number (`SIGRTMIN..=SIGRTMAX`).
pub fn is_realtime(n: i32) -> bool {
    (libc::SIGRTMIN()..=libc::SIGRTMAX()).contains(&n)
}
