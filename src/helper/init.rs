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
use crate::protocol::Step;
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
    /// The capability sets it gets (root's or another user's, chosen with `ids`).
    caps: Option<crate::sys::caps::CapSets>,
    no_new_privs: bool,
    label: Option<String>,
    seccomp: Option<Vec<libc::sock_filter>>,
    /// The standard stream (0–2) that is a terminal to become the controlling terminal.
    ctty: Option<usize>,
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
            caps: None,
            no_new_privs: false,
            label: None,
            seccomp: None,
            ctty: p.terminal.iter().position(|t| *t),
        })
    }

    /// Run `argv` instead of the plan's (a login shell, found once the user is known).
    pub fn set_argv(&mut self, argv: &[String]) -> Result<(), String> {
        self.argv = argv.iter().map(|s| cs(s)).collect::<Result<_, _>>()?;
        Ok(())
    }

    /// Run as `ids`; when the plan says so (`home`), `HOME` is the user's passwd home
    /// directory, else the plan's fallback.
    pub fn set_user(
        &mut self,
        ids: Option<super::user::Ids>,
        home: Option<&str>,
        security: &crate::plan::SecurityPlan,
    ) -> Result<(), String> {
        if let Some(fallback) = home {
            let dir = ids
                .as_ref()
                .and_then(|i| i.home.as_deref())
                .unwrap_or(fallback);
            self.env.push(cs(&format!("HOME={dir}"))?);
        }
        let root = ids.as_ref().is_none_or(|i| i.uid == 0);
        let mut caps = if root {
            security.caps_root
        } else {
            security.caps_user
        };
        // seccomp(2) without no_new_privs needs CAP_SYS_ADMIN at the moment of loading: keep
        // it in permitted and effective until then. It is not in the bounding set, so the
        // exec that follows takes it away again.
        if security.seccomp.is_some() && !security.no_new_privs {
            caps = caps.retaining(crate::caps::Cap::SYS_ADMIN);
        }
        self.caps = Some(caps.sets());
        self.no_new_privs = security.no_new_privs;
        self.label = security.label.clone();
        self.seccomp = security.seccomp.as_ref().map(|p| p.to_sock_filters());
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
/// `tasks`: this process's thread list when `/proc` is not its own (an exec helper).
pub fn start_payload(
    payload: &Payload,
    stdio: [OwnedFd; 3],
    tasks: Option<&crate::sys::OwnTasks>,
) -> Result<Pid, (Step, Errno)> {
    let early = |e| (Step::Exec, e);
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&SigSet::all()), None).map_err(early)?;
    nix::sys::prctl::set_dumpable(false).map_err(early)?;
    // A close-on-exec pipe tells the parent whether exec worked: EOF means it did; else it
    // carries the failed step and errno.
    let (rd, wr) = pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(early)?;
    let forked = match tasks {
        Some(t) => crate::sys::fork_single_threaded_in(t),
        None => fork_single_threaded(),
    };
    match forked.map_err(|e| (Step::Fork, e))? {
        Forked::Child => {
            drop(rd);
            let (step, errno) = exec_payload(&mut crate::sys::syscall::Real, payload, stdio);
            let mut msg = [0u8; 8];
            msg[..4].copy_from_slice(&(step as i32).to_ne_bytes());
            msg[4..].copy_from_slice(&(errno as i32).to_ne_bytes());
            // The parent reads EOF if this fails, and reports the exit below as the payload's.
            let _ = std::fs::File::from(wr).write_all(&msg);
            std::process::exit(127);
        }
        Forked::Parent(pid) => {
            drop(wr);
            drop(stdio);
            let mut buf = [0u8; 8];
            let mut f = std::fs::File::from(rd);
            match f.read(&mut buf) {
                Ok(8) => {
                    // The child exits at once; reap it so PID 1 starts with no zombie.
                    let _ = waitpid(pid, None);
                    let step = i32::from_ne_bytes(buf[..4].try_into().unwrap_or_default());
                    let errno = i32::from_ne_bytes(buf[4..].try_into().unwrap_or_default());
                    Err((Step::from_index(step), Errno::from_raw(errno)))
                }
                _ => Ok(pid),
            }
        }
    }
}

/// A booted container's leader (`helper::boot`): exec the init in this very process, PID 1,
/// through the payload's own steps. Returns only on failure.
pub(super) fn exec_in_place(payload: &Payload, stdio: [OwnedFd; 3]) -> (Step, Errno) {
    exec_payload(&mut crate::sys::syscall::Real, payload, stdio)
}

/// In the payload child: stdio, signal mask, then [`exec_steps`]. Returns only on failure.
fn exec_payload<S: Syscalls>(sys: &mut S, payload: &Payload, stdio: [OwnedFd; 3]) -> (Step, Errno) {
    let [i, o, e] = stdio;
    let r = (|| -> nix::Result<()> {
        nix::unistd::dup2_stdin(i.as_fd())?;
        nix::unistd::dup2_stdout(o.as_fd())?;
        nix::unistd::dup2_stderr(e.as_fd())?;
        sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)?;
        Ok(())
    })();
    if let Err(e) = r {
        return (Step::Exec, e);
    }
    exec_steps(sys, payload)
}

/// The payload's own steps, in their fixed order: session, groups, gid, uid, working
/// directory, capabilities, no_new_privs, SELinux exec label, seccomp (last, so nothing after
/// it needs a denied call), exec (each candidate of `PATH` in turn). Returns only on failure.
pub fn exec_steps<S: Syscalls>(sys: &mut S, payload: &Payload) -> (Step, Errno) {
    let r = (|| -> Result<(), (Step, Errno)> {
        let at = |step| move |e| (step, e);
        sys.setsid().map_err(at(Step::Exec))?;
        if let Some(stdio) = payload.ctty {
            sys.set_controlling_terminal(stdio)
                .map_err(at(Step::Terminal))?;
        }
        if let Some(ids) = &payload.ids {
            // A uid change away from 0 clears the permitted set unless KEEPCAPS: keep it for
            // the capability step, which sets exactly what the payload keeps.
            if ids.uid != 0 {
                sys.set_keepcaps(true).map_err(at(Step::Capabilities))?;
            }
            // Groups first: after setuid the process may no longer change them.
            sys.setgroups(&ids.groups).map_err(at(Step::User))?;
            sys.setgid(ids.gid).map_err(at(Step::User))?;
            sys.setuid(ids.uid).map_err(at(Step::User))?;
        }
        if sys.chdir(&payload.workdir.to_string_lossy()).is_err() {
            sys.chdir("/").map_err(at(Step::Exec))?;
        }
        if let Some(caps) = &payload.caps {
            sys.apply_caps(caps).map_err(at(Step::Capabilities))?;
        }
        if payload.no_new_privs {
            sys.set_no_new_privs().map_err(at(Step::NoNewPrivs))?;
        }
        if let Some(label) = &payload.label {
            sys.set_exec_label(label).map_err(at(Step::Label))?;
        }
        if let Some(filter) = &payload.seccomp {
            sys.load_seccomp(filter).map_err(at(Step::Seccomp))?;
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
    (Step::Exec, err)
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
        // PID 1 needs no privilege but to signal a payload of another uid.
        let kill = 1u64 << crate::caps::Cap::KILL.number();
        crate::sys::caps::apply(&crate::sys::caps::CapSets {
            bounding: kill,
            permitted: kill,
            effective: kill,
            inheritable: 0,
        })?;
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
    // systemd's halt and poweroff requests (`machinectl poweroff`): the payload is asked to
    // stop, as nspawn's stub PID 1 does (reboot, SIGINT, is forwarded as it is).
    let shutdown = [
        crate::sys::rtsig::rtmin_plus(3),
        crate::sys::rtsig::rtmin_plus(4),
    ];
    let set = crate::sys::rtsig::with_numbers(&set, &shutdown).unwrap_or(set);
    loop {
        let sig = crate::sys::rtsig::wait_number(&set).unwrap_or(Signal::SIGCHLD as i32);
        if shutdown.contains(&sig) {
            let _ = kill(payload, Signal::SIGTERM);
            continue;
        }
        if sig != Signal::SIGCHLD as i32 {
            if let Ok(sig) = Signal::try_from(sig) {
                let _ = kill(payload, sig);
            }
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

    fn payload_with(security: impl FnOnce(&mut crate::plan::SecurityPlan)) -> Payload {
        let full = crate::plan::tests::sample();
        let mut plan = full.process;
        plan.argv = vec!["sh".into(), "-c".into(), "true".into()];
        plan.env = vec!["PATH=/usr/bin:/bin".into()];
        let mut sec = full.security;
        sec.seccomp = Some(crate::seccomp::compile(&crate::seccomp::default_profile(), 0).unwrap());
        sec.label = Some("system_u:system_r:container_t:s0:c1,c2".into());
        security(&mut sec);
        let mut p = Payload::from_plan(&plan).unwrap();
        p.set_user(
            Some(crate::helper::user::Ids {
                uid: 1000,
                gid: 1000,
                groups: vec![1000, 50],
                home: Some("/home/app".into()),
            }),
            Some("/"),
            &sec,
        )
        .unwrap();
        p
    }

    fn payload() -> Payload {
        payload_with(|s| s.no_new_privs = true)
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
        assert_eq!(err, (Step::Exec, Errno::UnknownErrno));
        let order = [
            "setsid",
            "keepcaps true",
            "setgroups [1000, 50]",
            "setgid 1000",
            "setuid 1000",
            "chdir /",
            // A non-root payload: the default bounding set, nothing else.
            "caps bnd=800405fb prm=0 eff=0 inh=0",
            "no-new-privs",
            "exec-label system_u:system_r:container_t:s0:c1,c2",
            "seccomp ",
            "execve \"/usr/bin/sh\"",
            "execve \"/bin/sh\"",
        ];
        let pos: Vec<usize> = order.iter().map(|c| sys.pos(c)).collect();
        assert!(pos.windows(2).all(|w| w[0] < w[1]), "{:#?}", sys.calls);
    }

    #[test]
    fn without_no_new_privs_sys_admin_is_held_until_seccomp_only() {
        let mut sys = Recorder::default();
        exec_steps(&mut sys, &payload_with(|s| s.no_new_privs = false));
        // CAP_SYS_ADMIN (bit 21) in permitted and effective, not in the bounding set.
        assert!(
            sys.calls
                .contains(&"caps bnd=800405fb prm=200000 eff=200000 inh=0".to_string()),
            "{:#?}",
            sys.calls
        );
        assert!(!sys.calls.iter().any(|c| c == "no-new-privs"));
        assert!(sys.pos("caps ") < sys.pos("seccomp "));
    }

    #[test]
    fn a_terminal_becomes_the_controlling_terminal_right_after_setsid() {
        let full = crate::plan::tests::sample();
        let mut plan = full.process;
        plan.terminal = [false, true, true];
        let p = Payload::from_plan(&plan).unwrap();
        let mut sys = Recorder::default();
        exec_steps(&mut sys, &p);
        assert_eq!(sys.calls[..2], ["setsid", "controlling-terminal 1"]);
        let mut sys = Recorder::default();
        exec_steps(&mut sys, &payload());
        assert!(!sys.calls.iter().any(|c| c.starts_with("controlling")));
    }

    #[test]
    fn a_failed_identity_step_stops_before_exec() {
        let mut sys = Recorder {
            failing: vec!["setgroups"],
            ..Default::default()
        };
        assert_eq!(exec_steps(&mut sys, &payload()), (Step::User, Errno::EPERM));
        assert!(
            !sys.calls
                .iter()
                .any(|c| c.starts_with("setuid") || c.starts_with("execve"))
        );
    }
}
