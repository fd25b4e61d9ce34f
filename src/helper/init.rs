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
use nix::unistd::{Pid, chdir, execve, pipe2, setsid};

use crate::protocol::Plan;
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

/// The directories searched for a command without `/`, as in a login shell.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The payload, ready to exec.
#[derive(Clone)]
pub struct Payload {
    argv: Vec<CString>,
    env: Vec<CString>,
    workdir: CString,
    /// Switch to these before exec; root stays root when `None`.
    ids: Option<super::user::Ids>,
}

impl Payload {
    pub fn from_plan(plan: &Plan) -> Result<Self, String> {
        let cs = |s: &String| CString::new(s.as_bytes()).map_err(|_| format!("NUL byte in {s:?}"));
        Ok(Payload {
            argv: plan.argv.iter().map(cs).collect::<Result<_, _>>()?,
            env: plan.env.iter().map(cs).collect::<Result<_, _>>()?,
            workdir: cs(&plan.workdir)?,
            ids: None,
        })
    }

    /// Run as `ids`, and give the payload a `HOME` if the environment has none: the user's
    /// home from /etc/passwd, else `/` (root's `/root`).
    pub fn set_user(&mut self, ids: Option<super::user::Ids>) {
        if !self.env.iter().any(|e| e.to_bytes().starts_with(b"HOME=")) {
            let home = match &ids {
                Some(i) => i.home.clone().unwrap_or_else(|| "/".into()),
                None => "/root".into(),
            };
            if let Ok(h) = CString::new(format!("HOME={home}")) {
                self.env.push(h);
            }
        }
        self.ids = ids;
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
            .unwrap_or(DEFAULT_PATH.as_bytes());
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
            let errno = exec_payload(payload, stdio);
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

/// In the payload child: stdio, session, signal mask, working directory, exec. Returns only
/// on failure.
fn exec_payload(payload: &Payload, stdio: [OwnedFd; 3]) -> Errno {
    let [i, o, e] = stdio;
    let r = (|| -> nix::Result<()> {
        nix::unistd::dup2_stdin(i.as_fd())?;
        nix::unistd::dup2_stdout(o.as_fd())?;
        nix::unistd::dup2_stderr(e.as_fd())?;
        setsid()?;
        if let Some(ids) = &payload.ids {
            // Groups first: after setuid the process may no longer change them.
            let groups: Vec<nix::unistd::Gid> = ids
                .groups
                .iter()
                .map(|g| nix::unistd::Gid::from_raw(*g))
                .collect();
            nix::unistd::setgroups(&groups)?;
            nix::unistd::setgid(nix::unistd::Gid::from_raw(ids.gid))?;
            nix::unistd::setuid(nix::unistd::Uid::from_raw(ids.uid))?;
        }
        sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)?;
        if chdir(payload.workdir.as_c_str()).is_err() {
            chdir("/")?;
        }
        Ok(())
    })();
    if let Err(e) = r {
        return e;
    }
    let mut err = Errno::ENOENT;
    for path in payload.candidates() {
        match execve(&path, &payload.argv, &payload.env) {
            Err(Errno::ENOENT) | Err(Errno::ENOTDIR) => continue,
            Err(e) => err = e,
            Ok(never) => match never {},
        }
    }
    err
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
    let _ = nix::unistd::write(status_fd, format!("{status}\n").as_bytes());
    let _ = status_fd.as_raw_fd();
    std::process::exit(status & 0xff)
}
