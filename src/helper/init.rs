//! The container's PID 1: starts the payload, then reaps zombies, forwards the usual
//! termination signals to the payload and exits with its status — the job of nspawn's stub
//! init and of catatonit. It runs from the helper's image in memory; before the payload runs it
//! makes itself non-dumpable (so `/proc/1/exe` and `/proc/1/fd` cannot be opened from the
//! container, cf. CVE-2019-5736), and once the payload runs it holds no descriptor but the
//! container's own /dev/null and its exit-status memfd.

use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill, sigprocmask};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{Pid, pipe2};

use crate::plan::ProcessPlan;
use crate::sys::syscall::Syscalls;
use crate::sys::{Forked, fork_single_threaded};

/// Signals PID 1 passes on to the payload.
const FORWARDED: [Signal; 8] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
    Signal::SIGCONT,
];

/// The payload, ready to exec.
#[derive(Clone)]
pub struct Payload {
    argv: Vec<CString>,
    env: Vec<CString>,
    workdir: CString,
    /// Switch to these before exec; root stays root when `None`.
    ids: Option<super::user::Ids>,
}

fn cs(s: &str) -> Result<CString, String> {
    CString::new(s.as_bytes()).map_err(|_| format!("NUL byte in {s:?}"))
}

impl Payload {
    pub fn from_plan(p: &ProcessPlan) -> Result<Self, String> {
        Ok(Payload {
            argv: p.argv.iter().map(|s| cs(s)).collect::<Result<_, _>>()?,
            env: p.env.iter().map(|s| cs(s)).collect::<Result<_, _>>()?,
            workdir: cs(&p.workdir)?,
            ids: None,
        })
    }

    /// Run as `ids`; when the plan says so (`home`), `HOME` is the user's passwd home
    /// directory, else the plan's fallback.
    pub fn set_user(
        &mut self,
        ids: Option<super::user::Ids>,
        home: Option<&str>,
    ) -> Result<(), String> {
        if let Some(fallback) = home {
            let dir = ids
                .as_ref()
                .and_then(|i| i.home.as_deref())
                .unwrap_or(fallback);
            self.env.push(cs(&format!("HOME={dir}"))?);
        }
        self.ids = ids;
        Ok(())
    }

    /// The candidate paths for argv[0]: itself if it has a `/`, else each `PATH` entry.
    fn candidates(&self) -> Vec<CString> {
        let arg0 = self.argv[0].to_bytes();
        if arg0.contains(&b'/') {
            return vec![self.argv[0].clone()];
        }
        let path = self
            .env
            .iter()
            .find_map(|e| e.to_bytes().strip_prefix(b"PATH="))
            .unwrap_or(crate::plan::PATH.as_bytes());
        path.split(|b| *b == b':')
            .filter(|d| !d.is_empty())
            .filter_map(|d| CString::new([d, b"/", arg0].concat()).ok())
            .collect()
    }
}

/// Start the payload as a child of this PID 1. Returns its PID once it has exec'd, or the
/// errno of the failed exec. All signals are blocked in PID 1 from here on; the child unblocks
/// them before exec.
pub fn start_payload(payload: &Payload, stdio: [OwnedFd; 3]) -> Result<Pid, Errno> {
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&SigSet::all()), None)?;
    nix::sys::prctl::set_dumpable(false)?;
    // A close-on-exec pipe tells the parent whether exec worked: EOF means it did.
    let (rd, wr) = pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    match fork_single_threaded()? {
        Forked::Child => {
            drop(rd);
            let errno = exec_payload(&mut crate::sys::syscall::Real, payload, stdio);
            let _ = std::fs::File::from(wr).write_all(&(errno as i32).to_ne_bytes());
            std::process::exit(127);
        }
        Forked::Parent(pid) => {
            drop(wr);
            drop(stdio);
            let mut buf = [0u8; 4];
            let mut f = std::fs::File::from(rd);
            match f.read(&mut buf) {
                Ok(4) => {
                    let _ = waitpid(pid, None);
                    Err(Errno::from_raw(i32::from_ne_bytes(buf)))
                }
                _ => Ok(pid),
            }
        }
    }
}

/// In the payload child: stdio, session, identity, signal mask, working directory, exec.
/// Returns only on failure.
fn exec_payload<S: Syscalls>(sys: &mut S, payload: &Payload, stdio: [OwnedFd; 3]) -> Errno {
    let [i, o, e] = stdio;
    let r = (|| -> nix::Result<()> {
        nix::unistd::dup2_stdin(i.as_fd())?;
        nix::unistd::dup2_stdout(o.as_fd())?;
        nix::unistd::dup2_stderr(e.as_fd())?;
        sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)?;
        Ok(())
    })();
    if let Err(e) = r {
        return e;
    }
    exec_steps(sys, payload)
}

/// The payload's own steps, in their fixed order: session, groups, gid, uid, working
/// directory, exec (each candidate of `PATH` in turn). Returns only on failure.
pub fn exec_steps<S: Syscalls>(sys: &mut S, payload: &Payload) -> Errno {
    let r = (|| -> nix::Result<()> {
        sys.setsid()?;
        if let Some(ids) = &payload.ids {
            // Groups first: after setuid the process may no longer change them.
            sys.setgroups(&ids.groups)?;
            sys.setgid(ids.gid)?;
            sys.setuid(ids.uid)?;
        }
        if sys.chdir(&payload.workdir.to_string_lossy()).is_err() {
            sys.chdir("/")?;
        }
        Ok(())
    })();
    if let Err(e) = r {
        return e;
    }
    let mut err = Errno::ENOENT;
    for path in payload.candidates() {
        match sys.execve(&path, &payload.argv, &payload.env) {
            Errno::ENOENT | Errno::ENOTDIR => continue,
            e => err = e,
        }
    }
    err
}

/// Become the container's PID 1 for good: hold only the container's /dev/null on 0–2 and the
/// exit-status memfd (moved onto the protocol socket's number, closing it), then supervise.
pub fn become_init(payload: Pid, status_fd: OwnedFd, devnull: OwnedFd, sock: OwnedFd) -> ! {
    let r = (|| -> nix::Result<OwnedFd> {
        nix::unistd::dup2_stdin(devnull.as_fd())?;
        nix::unistd::dup2_stdout(devnull.as_fd())?;
        nix::unistd::dup2_stderr(devnull.as_fd())?;
        drop(devnull);
        let status_fd = crate::sys::move_fd(status_fd, sock)?;
        crate::sys::close_from(status_fd.as_raw_fd() + 1)?;
        Ok(status_fd)
    })();
    match r {
        Ok(status_fd) => supervise(payload, status_fd),
        // PID 1 cannot keep its promise to hold no other descriptor: end the container.
        Err(_) => {
            let _ = kill(payload, Signal::SIGKILL);
            std::process::exit(125)
        }
    }
}

/// PID 1's loop: reap everything, forward signals, and exit with the payload's status, after
/// writing it to `status_fd` so berthd can read it even if it was restarted meanwhile.
pub fn supervise(payload: Pid, status_fd: OwnedFd) -> ! {
    let mut set = SigSet::empty();
    set.add(Signal::SIGCHLD);
    for s in FORWARDED {
        set.add(s);
    }
    loop {
        let sig = set.wait().unwrap_or(Signal::SIGCHLD);
        if sig != Signal::SIGCHLD {
            let _ = kill(payload, sig);
            continue;
        }
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) if pid == payload => finish(code, &status_fd),
                Ok(WaitStatus::Signaled(pid, sig, _)) if pid == payload => {
                    finish(128 + sig as i32, &status_fd)
                }
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => continue,
            }
        }
    }
}

fn finish(status: i32, status_fd: &OwnedFd) -> ! {
    // Nobody is left to tell of a failed write: berthd then reads the status from waitid.
    let _ = nix::unistd::write(status_fd, format!("{status}\n").as_bytes());
    std::process::exit(status & 0xff)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::syscall::fake::Recorder;

    fn payload() -> Payload {
        let mut plan = crate::plan::tests::sample().process;
        plan.argv = vec!["sh".into(), "-c".into(), "true".into()];
        plan.env = vec!["PATH=/usr/bin:/bin".into()];
        let mut p = Payload::from_plan(&plan).unwrap();
        p.set_user(
            Some(crate::helper::user::Ids {
                uid: 1000,
                gid: 1000,
                groups: vec![1000, 50],
                home: Some("/home/app".into()),
            }),
            Some("/"),
        )
        .unwrap();
        p
    }

    #[test]
    fn identity_is_dropped_groups_first_then_exec_searches_path() {
        let mut sys = Recorder {
            missing: vec!["/usr/bin/sh".into()],
            ..Default::default()
        };
        let p = payload();
        assert!(p.env.iter().any(|e| e.to_bytes() == b"HOME=/home/app"));
        let err = exec_steps(&mut sys, &p);
        assert_eq!(err, Errno::UnknownErrno);
        let order = [
            "setsid",
            "setgroups [1000, 50]",
            "setgid 1000",
            "setuid 1000",
            "chdir /",
            "execve \"/usr/bin/sh\"",
            "execve \"/bin/sh\"",
        ];
        let pos: Vec<usize> = order.iter().map(|c| sys.pos(c)).collect();
        assert!(pos.windows(2).all(|w| w[0] < w[1]), "{:#?}", sys.calls);
    }

    #[test]
    fn a_failed_identity_step_stops_before_exec() {
        let mut sys = Recorder {
            failing: vec!["setgroups"],
            ..Default::default()
        };
        assert_eq!(exec_steps(&mut sys, &payload()), Errno::EPERM);
        assert!(
            !sys.calls
                .iter()
                .any(|c| c.starts_with("setuid") || c.starts_with("execve"))
        );
    }
}
