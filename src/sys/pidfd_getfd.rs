//! `pidfd_getfd(2)`: a duplicate of another process's descriptor. berthd uses it to take back a
//! running container's exit-status memfd from the container's PID 1 when systemd's file
//! descriptor store lost its copy (berthd was stopped, not restarted, or failed).

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;

/// Duplicate descriptor number `target` of the process behind `pidfd` into this process (with
/// close-on-exec, as the kernel always sets it). Needs ptrace access to the process
/// (`PTRACE_MODE_ATTACH_REALCREDS`): root with CAP_SYS_PTRACE has it.
pub fn pidfd_getfd(pidfd: BorrowedFd<'_>, target: i32) -> nix::Result<OwnedFd> {
    // SAFETY: pidfd_getfd takes a descriptor borrowed for the duration of the call, a number
    // in the other process and flags (0), all by value; it returns a new descriptor or -1.
    let ret = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), target, 0) };
    if ret < 0 {
        return Err(Errno::last());
    }
    // SAFETY: ret is a descriptor the kernel just installed in this process (non-negative,
    // checked above), owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(ret as RawFd) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, Write};
    use std::os::fd::AsFd;

    #[test]
    fn a_descriptor_of_our_own_process_comes_back_as_the_same_file() {
        let me = super::super::pidfd_open(nix::unistd::getpid()).unwrap();
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(b"42\n").unwrap();
        let dup = pidfd_getfd(me.as_fd(), f.as_raw_fd()).unwrap();
        let mut g = std::fs::File::from(dup);
        g.rewind().unwrap();
        let mut s = String::new();
        g.read_to_string(&mut s).unwrap();
        assert_eq!(s, "42\n");
        assert_eq!(pidfd_getfd(me.as_fd(), 1 << 20).unwrap_err(), Errno::EBADF);
    }
}
