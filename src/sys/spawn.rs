//! Starting a program from the multi-threaded daemon with `posix_spawn(3)`.
//!
//! `fork(2)` copies the caller's page tables and descriptor table, and the child's `execve`
//! then closes every close-on-exec descriptor one by one: in berthd, which holds about four
//! descriptors per running container, that made each start cost more the more containers ran
//! (measured: fork+exec of berth-helper 1.0 ms with no container running, 5.4 ms with 1000).
//! `std::process::Command` forks whenever a `pre_exec` hook is set, which passing a socket as
//! descriptor 3 needs. glibc's `posix_spawn` instead runs the child in the parent's memory
//! (`clone(CLONE_VM | CLONE_VFORK)`), so nothing is copied but the descriptor table, and it
//! applies the descriptor moves as file actions without running any Rust code in the child.

use std::ffi::{CString, OsString};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::spawn::{PosixSpawnAttr, PosixSpawnFileActions, PosixSpawnFlags, posix_spawn};
use nix::sys::signal::SigSet;
use nix::sys::stat::Mode;
use nix::unistd::Pid;

/// A child started by [`spawn_passing_fd`]: unreaped until its caller reaps it through the
/// pidfd, which refers to this process whatever happens to the PID.
#[derive(Debug)]
pub struct Spawned {
    pub pid: Pid,
    pub pidfd: OwnedFd,
}

/// Execute `path` (argv `[path, args...]`, this process's environment) with stdin and stdout on
/// `/dev/null`, stderr shared with this process, `fd` as descriptor `target` (not
/// close-on-exec there), and nothing else: every other descriptor of this process is
/// close-on-exec and stays behind. The child starts with every signal at its default action
/// and none blocked (berthd ignores SIGPIPE, as Rust programs do; the child must not inherit
/// that). Returns once the program has been executed, or its exec error.
pub fn spawn_passing_fd(
    path: &Path,
    arg0: &str,
    args: &[&str],
    fd: BorrowedFd<'_>,
    target: RawFd,
) -> nix::Result<Spawned> {
    // A dup2 action onto its own number would leave the descriptor close-on-exec: use a copy
    // at another number (the copy is close-on-exec here and dropped on return).
    let copy;
    let source = if fd.as_raw_fd() == target {
        copy = fd
            .try_clone_to_owned()
            .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?;
        copy.as_raw_fd()
    } else {
        fd.as_raw_fd()
    };
    let mut actions = PosixSpawnFileActions::init()?;
    actions.add_open(0, "/dev/null", OFlag::O_RDONLY, Mode::empty())?;
    actions.add_open(1, "/dev/null", OFlag::O_WRONLY, Mode::empty())?;
    actions.add_dup2(source, target)?;
    let mut attr = PosixSpawnAttr::init()?;
    attr.set_flags(
        PosixSpawnFlags::POSIX_SPAWN_SETSIGDEF | PosixSpawnFlags::POSIX_SPAWN_SETSIGMASK,
    )?;
    attr.set_sigdefault(&every_signal())?;
    attr.set_sigmask(&SigSet::empty())?;
    let program = CString::new(path.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)?;
    let mut argv = vec![CString::new(arg0).map_err(|_| Errno::EINVAL)?];
    for a in args {
        argv.push(CString::new(*a).map_err(|_| Errno::EINVAL)?);
    }
    let env = environment();
    let pid = posix_spawn(program.as_c_str(), &actions, &attr, &argv, &env)?;
    // Our unreaped child: its PID cannot be reused before the pidfd exists.
    let pidfd = super::pidfd_open(pid)?;
    Ok(Spawned { pid, pidfd })
}

/// Every signal, glibc's internal ones included. `sigfillset` leaves out signals 32 and 33
/// (glibc's SIGCANCEL and SIGSETXID), and glibc's posix_spawn sets every blocked signal it is
/// not told to reset to SIG_IGN in the child when it is one of those: the helper, and after
/// it the container's processes, would start with them ignored (seen: `SigIgn:
/// 0000000180000000`), where a forked child gets the default.
fn every_signal() -> SigSet {
    #[cfg(all(target_os = "linux", target_env = "gnu", target_pointer_width = "64"))]
    {
        const _: () = assert!(std::mem::size_of::<libc::sigset_t>() == 128);
        // Signals 1 to 64, one bit each from bit 0 (the kernel's and glibc's layout).
        let mut bits = [0u64; 16];
        bits[0] = u64::MAX;
        // SAFETY: on linux-gnu (64-bit) sigset_t is 1024 bits of plain data (checked to be 128
        // bytes above), a bit per signal starting at signal 1, so every bit pattern is a valid
        // value and this one holds exactly signals 1 to 64.
        let raw = unsafe { std::mem::transmute::<[u64; 16], libc::sigset_t>(bits) };
        // SAFETY: `raw` is a fully initialised signal set of the layout glibc uses, which is
        // what sigemptyset/sigfillset would produce for the same members.
        unsafe { SigSet::from_sigset_t_unchecked(raw) }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu", target_pointer_width = "64")))]
    {
        SigSet::all()
    }
}

/// This process's environment as `KEY=VALUE` strings.
fn environment() -> Vec<CString> {
    std::env::vars_os()
        .filter_map(|(k, v)| {
            let mut kv: OsString = k;
            kv.push("=");
            kv.push(v);
            CString::new(kv.into_vec()).ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    fn fds_of(pid: Pid) -> Vec<i32> {
        let mut fds: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_str().unwrap().parse().unwrap())
            .collect();
        fds.sort();
        fds
    }

    /// This process's descriptors that are not close-on-exec (inherited from whoever started
    /// the test binary), which any exec passes on.
    fn inheritable_here() -> Vec<i32> {
        fds_of(Pid::this())
            .into_iter()
            .filter(|fd| {
                let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"));
                let Ok(info) = info else { return false };
                let flags = info
                    .lines()
                    .find_map(|l| l.strip_prefix("flags:"))
                    .map(|v| i32::from_str_radix(v.trim(), 8).unwrap())
                    .unwrap();
                *fd > 2 && flags & libc::O_CLOEXEC == 0
            })
            .collect()
    }

    /// The child's descriptors, less what this process passes on anyway: what was
    /// inheritable before the spawn, or is now (other tests in this process make descriptors
    /// concurrently, some without close-on-exec).
    fn passed(child: Pid, inherited: &[i32]) -> Vec<i32> {
        let now = inheritable_here();
        fds_of(child)
            .into_iter()
            .filter(|fd| !(inherited.contains(fd) || now.contains(fd)))
            .collect()
    }

    fn status_field(pid: Pid, key: &str) -> String {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_string()))
            .unwrap()
    }

    fn kill_and_reap(s: &Spawned) {
        crate::sys::pidfd_send_signal(s.pidfd.as_fd(), nix::sys::signal::Signal::SIGKILL).unwrap();
        let mut pfd = [nix::poll::PollFd::new(
            s.pidfd.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        nix::poll::poll(&mut pfd, 5000u16).unwrap();
        assert_eq!(
            crate::sys::pidfd_try_reap(s.pidfd.as_fd()).unwrap(),
            Some(crate::sys::ExitInfo::Signaled(libc::SIGKILL))
        );
    }

    /// Wait until the child runs `sleep` (its comm name says so once the exec is done).
    fn wait_exec(pid: Pid) {
        for _ in 0..500 {
            if std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .unwrap()
                .trim()
                == "sleep"
            {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        panic!("{pid} did not exec sleep");
    }

    #[test]
    fn the_child_gets_only_descriptors_0_to_3_and_default_signals() {
        // Many close-on-exec descriptors here, like berthd's per-container ones.
        let many: Vec<OwnedFd> = (0..200)
            .map(|_| {
                nix::sys::memfd::memfd_create("t", nix::sys::memfd::MFdFlags::MFD_CLOEXEC).unwrap()
            })
            .collect();
        let (mine, theirs) = nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
        let inherited = inheritable_here();
        // Rust programs ignore SIGPIPE; the child must not.
        assert_ne!(status_field(Pid::this(), "SigIgn:"), "0000000000000000");
        let s = spawn_passing_fd(Path::new("/bin/sleep"), "sleep", &["60"], theirs.as_fd(), 3)
            .unwrap_or_else(|e| panic!("posix_spawn /bin/sleep: {e}"));
        wait_exec(s.pid);
        assert_eq!(passed(s.pid, &inherited), [0, 1, 2, 3]);
        // Descriptor 3 is the pipe we passed: same inode.
        let ours = std::fs::read_link(format!("/proc/self/fd/{}", theirs.as_raw_fd())).unwrap();
        let its = std::fs::read_link(format!("/proc/{}/fd/3", s.pid)).unwrap();
        assert_eq!(ours, its);
        assert_eq!(
            std::fs::read_link(format!("/proc/{}/fd/0", s.pid)).unwrap(),
            Path::new("/dev/null")
        );
        assert_eq!(status_field(s.pid, "SigIgn:"), "0000000000000000");
        assert_eq!(status_field(s.pid, "SigBlk:"), "0000000000000000");
        kill_and_reap(&s);
        drop((many, mine));
    }

    #[test]
    fn a_descriptor_already_at_the_target_number_is_passed_too() {
        let (_r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
        let n = w.as_raw_fd();
        let inherited = inheritable_here();
        let s = spawn_passing_fd(Path::new("/bin/sleep"), "sleep", &["60"], w.as_fd(), n).unwrap();
        wait_exec(s.pid);
        assert_eq!(passed(s.pid, &inherited), [0, 1, 2, n]);
        kill_and_reap(&s);
    }

    #[test]
    fn an_exec_error_is_returned() {
        let (_r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
        assert_eq!(
            spawn_passing_fd(
                Path::new("/nonexistent/berth-helper"),
                "berth-helper",
                &[],
                w.as_fd(),
                3
            )
            .unwrap_err(),
            Errno::ENOENT
        );
    }
}
