//! Pseudo-terminal ioctls nix does not wrap: unlocking a master, getting its peer without a
//! path (`TIOCGPTPEER`), its number, window sizes, and the controlling terminal.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;

/// A terminal's window size, as `TIOCGWINSZ` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WindowSize {
    pub rows: u16,
    pub cols: u16,
    pub xpixel: u16,
    pub ypixel: u16,
}

/// `ioctl(master, TIOCSPTLCK, &0)`: unlock a new master so its peer can be opened (what
/// `unlockpt(3)` does).
pub fn unlock(master: BorrowedFd<'_>) -> nix::Result<()> {
    let zero: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads one int through the pointer, which points to a live local; the
    // descriptor is valid for the borrow.
    let r = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &zero) };
    if r < 0 { Err(Errno::last()) } else { Ok(()) }
}

/// `ioctl(master, TIOCGPTPEER, O_RDWR | O_NOCTTY | O_CLOEXEC)`: open the master's peer
/// (slave) directly, without looking up `/dev/pts/N` — race-free, and correct for a master
/// of another devpts instance (a container's), whose `/dev/pts/N` is not ours (Linux 4.13).
pub fn peer(master: BorrowedFd<'_>) -> nix::Result<OwnedFd> {
    let flags = libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC;
    // SAFETY: TIOCGPTPEER takes its flags by value and returns a new descriptor or -1.
    let fd = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTPEER, flags) };
    if fd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: `fd` is a descriptor the kernel just created for us (checked non-negative).
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// `ioctl(master, TIOCGPTN)`: the pty's number N (its peer is `/dev/pts/N` in its devpts).
pub fn number(master: BorrowedFd<'_>) -> nix::Result<u32> {
    let mut n: libc::c_uint = 0;
    // SAFETY: TIOCGPTN writes one unsigned int through the pointer, which points to a live
    // local.
    let r = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTN, &mut n) };
    if r < 0 { Err(Errno::last()) } else { Ok(n) }
}

/// `ioctl(fd, TIOCGWINSZ)`.
pub fn window_size(fd: BorrowedFd<'_>) -> nix::Result<WindowSize> {
    // SAFETY: winsize is plain data; all-zero is valid.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ writes one winsize through the pointer, which points to a live local.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
    if r < 0 {
        return Err(Errno::last());
    }
    Ok(WindowSize {
        rows: ws.ws_row,
        cols: ws.ws_col,
        xpixel: ws.ws_xpixel,
        ypixel: ws.ws_ypixel,
    })
}

/// `ioctl(fd, TIOCSWINSZ)`: the foreground process group of the terminal gets `SIGWINCH`.
pub fn set_window_size(fd: BorrowedFd<'_>, size: WindowSize) -> nix::Result<()> {
    let ws = libc::winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: size.xpixel,
        ws_ypixel: size.ypixel,
    };
    // SAFETY: TIOCSWINSZ reads one winsize through the pointer, which points to a live local.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    if r < 0 { Err(Errno::last()) } else { Ok(()) }
}

/// `ioctl(fd, TIOCSCTTY, 0)`: make the terminal the controlling terminal of this process,
/// which must lead a session without one (call after `setsid`). Job control and Ctrl-C in
/// a shell need it.
pub fn set_controlling_terminal(fd: BorrowedFd<'_>) -> nix::Result<()> {
    // SAFETY: TIOCSCTTY takes an int argument by value (0: do not steal it from another
    // session).
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSCTTY, 0 as libc::c_int) };
    if r < 0 { Err(Errno::last()) } else { Ok(()) }
}
