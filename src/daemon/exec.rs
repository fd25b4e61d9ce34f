//! Exec into a running container (`Container.Exec`, `berthctl exec`/`shell`): berthd makes the
//! [`ExecPlan`] from what the container started with (the same environment, user, limits,
//! capabilities, no_new_privs, label and seccomp filter), runs the helper in exec mode (see
//! [`crate::helper::exec`]), and keeps each command in a table by ID: its pidfd (berthd reaps
//! it, being a child subreaper), and its exit status for `WaitExec` — also for a while after
//! it ended, so a caller that asks late still gets it.
//!
//! **Callers that go away.** A foreground `run` and an `exec` made by berthctl are tied to
//! their caller's bus connection: when it closes (berthctl killed, its terminal lost), the
//! command — or the container — is hung up like a session whose terminal went: SIGHUP, then
//! after [`HANGUP_GRACE`] SIGKILL (for a container: its stop, then the scope). A `--rm`
//! container is then removed as at any exit. Detached containers are never tied.

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use nix::fcntl::OFlag;
use nix::sys::signal::Signal;
use tokio::sync::watch;
use tracing::{info, warn};

use super::error::{Error, Result};
use super::start::helper_failed;
use super::table::{Registry, State};
use crate::plan::exec::{ExecBase, ExecRequest};
use crate::protocol::{self, FromHelper, ToHelper};
use crate::spawn::Helper;
use crate::sys;

/// At most this many commands run through exec at once (all containers).
pub const MAX_EXECS: usize = 1024;
/// How many ended commands' statuses are kept for late `WaitExec` calls.
const REMEMBER_ENDED: usize = 1024;
/// How long a hung-up command or container has before it is killed.
pub const HANGUP_GRACE: Duration = Duration::from_secs(10);

struct Running {
    container: String,
    pidfd: Arc<OwnedFd>,
    exited: watch::Sender<Option<i32>>,
}

/// The commands started by exec.
#[derive(Default)]
pub struct Execs(std::sync::Mutex<Table>);

#[derive(Default)]
struct Table {
    next: u64,
    running: HashMap<String, Running>,
    ended: VecDeque<(String, i32)>,
    /// A helper exec'd ahead of time, waiting for its request: the next exec takes it, and
    /// the one after that finds a new one, made once the exec it served has started.
    /// Exec'ing the helper and its start were 2 of an exec's 12 ms.
    spare: Option<Helper>,
}

/// What Exec returns.
pub struct Started {
    pub id: String,
    pub pid: u32,
    pub terminal: Option<OwnedFd>,
}

impl Registry {
    /// What execs into `name` start from: recorded at its start, or made again (berthd was
    /// restarted since) the way the start made it.
    fn exec_base(&self, name: &str) -> Result<(Arc<ExecBase>, Arc<OwnedFd>, i32)> {
        let (base, pidfd, leader, spec) =
            self.with(name, |e| match (e.state, &e.pidfd, e.leader) {
                (State::Running, Some(fd), Some(leader)) => {
                    Ok((e.exec_base.clone(), fd.clone(), leader, e.spec.clone()))
                }
                (s, _, _) => Err(Error::InvalidState {
                    name: name.into(),
                    state: s.as_str(),
                    hint: ", not running",
                }),
            })??;
        let base = match base {
            Some(b) => b,
            None => {
                let p = self.plan_for(&spec)?;
                let b = Arc::new(ExecBase::of(
                    &p.plan,
                    crate::plan::environment(&spec, p.config.as_ref()),
                ));
                if let Err(e) = self.with(name, |e| e.exec_base = Some(b.clone())) {
                    warn!("cannot keep the exec base of {name}: {e}, ignoring");
                }
                b
            }
        };
        Ok((base, pidfd, leader))
    }

    /// Run `req` in container `name`; `stdio` are the streams the caller passed (the others
    /// are the container's /dev/null, or the terminal with `terminal`). `caller`: hang the
    /// command up when that bus name leaves.
    pub(super) async fn exec(
        &self,
        name: &str,
        mut req: ExecRequest,
        stdio: [Option<OwnedFd>; 3],
        terminal: bool,
        caller: Option<String>,
    ) -> Result<Started> {
        if self.execs.0.lock().unwrap().running.len() >= MAX_EXECS {
            return Err(Error::LimitExceeded(format!(
                "at most {MAX_EXECS} commands run through exec at once"
            )));
        }
        let (base, leader_fd, leader) = self.exec_base(name)?;
        for (i, fd) in stdio.iter().enumerate() {
            req.passed[i] = fd.is_some();
            req.terminal[i] = fd.is_none() && terminal;
        }
        let mountinfo = sys::read_proc("/proc/self/mountinfo")
            .map_err(|e| Error::io("read /proc/self/mountinfo", e))?;
        let cgroup = sys::read_proc(format!("/proc/{leader}/cgroup"))
            .map_err(|e| Error::io(format!("read the cgroup of {name}"), e))?;
        let member = crate::cgroup::membership(&mountinfo, &cgroup);
        let mut joins = member.v1_tasks;
        // The helper forks itself into the leader's cgroup2 directory; where that cannot be
        // opened it joins by cgroup.procs (and waits for the kernel's lock).
        let inside = member.unified.and_then(|dir| {
            match nix::fcntl::open(
                &dir,
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                nix::sys::stat::Mode::empty(),
            ) {
                Ok(fd) => Some(fd),
                Err(e) => {
                    warn!(
                        "cannot open {}: {e}, joining it by cgroup.procs",
                        dir.display()
                    );
                    joins.push(dir.join("cgroup.procs"));
                    None
                }
            }
        });
        let mut plan = base.plan(&req, joins);
        plan.into_cgroup = inside.is_some();
        let memfd = protocol::exec_memfd(&plan)
            .map_err(|e| Error::Failed(format!("cannot pass the exec plan: {e}")))?;
        let helper = self.exec_helper().await?;
        let mut fds = vec![memfd.as_fd(), leader_fd.as_fd()];
        fds.extend(inside.as_ref().map(|fd| fd.as_fd()));
        fds.extend(stdio.iter().flatten().map(|f| f.as_fd()));
        if let Err(err) = helper.send(&ToHelper::Exec, &fds).await {
            helper.kill().await;
            return Err(err.into());
        }
        drop(fds);
        drop(stdio);
        let (msg, mut got) = match helper.recv(Duration::from_secs(10)).await {
            Ok(m) => m,
            Err(err) => {
                helper.kill().await;
                return Err(err.into());
            }
        };
        let pid = match msg {
            FromHelper::Execed { pid }
                if got.len() == 1 + usize::from(plan.process.terminal.iter().any(|t| *t)) =>
            {
                pid
            }
            FromHelper::Failed {
                step,
                errno,
                message,
            } => {
                helper.finish().await;
                return Err(helper_failed(name, step, errno, &message));
            }
            other => {
                helper.kill().await;
                return Err(Error::Failed(format!(
                    "berth-helper sent {other:?} to an exec"
                )));
            }
        };
        let master = (got.len() == 2).then(|| got.remove(1));
        let pidfd = Arc::new(got.remove(0));
        let (tx, _) = watch::channel(None);
        let id = {
            let mut t = self.execs.0.lock().unwrap();
            t.next += 1;
            let id = format!("{}", t.next);
            t.running.insert(
                id.clone(),
                Running {
                    container: name.to_string(),
                    pidfd: pidfd.clone(),
                    exited: tx.clone(),
                },
            );
            id
        };
        let started = format!("exec {id} in {name}: {:?}, PID {pid}", plan.process.argv);
        tokio::spawn(
            self.arc()
                .watch_exec(id.clone(), started, helper, pidfd.clone(), tx),
        );
        if let Some(caller) = caller {
            let me = self.arc();
            let id2 = id.clone();
            tokio::spawn(async move {
                if me.caller_left(&caller, &id2).await {
                    me.hang_up_exec(&id2).await;
                }
            });
        }
        Ok(Started {
            id,
            pid: pid as u32,
            terminal: master,
        })
    }

    /// The spare helper if it is still there (it dies with berthd's main thread, or when
    /// killed), else a new one.
    async fn exec_helper(&self) -> Result<Helper> {
        let spare = self.execs.0.lock().unwrap().spare.take();
        if let Some(h) = spare {
            if h.waiting() {
                return Ok(h);
            }
            h.finish().await;
        }
        Ok(Helper::spawn(&self.helper, self.helper_image.as_ref())?)
    }

    /// Have a spare helper ready for the next exec.
    fn spare_helper(&self) {
        if self.execs.0.lock().unwrap().spare.is_some() {
            return;
        }
        match Helper::spawn(&self.helper, self.helper_image.as_ref()) {
            Ok(h) => {
                let old = self.execs.0.lock().unwrap().spare.replace(h);
                if let Some(old) = old {
                    // Another exec filled it meanwhile: one is enough.
                    tokio::spawn(old.kill());
                }
            }
            Err(e) => warn!("cannot keep a helper ready for exec: {e}, ignoring"),
        }
    }

    /// Reap an exec'd command once its helper is gone (then it is our child) and it exited.
    async fn watch_exec(
        self: Arc<Self>,
        id: String,
        started: String,
        helper: Helper,
        pidfd: Arc<OwnedFd>,
        exited: watch::Sender<Option<i32>>,
    ) {
        helper.finish().await;
        // Logged, and the next exec's helper made, once this helper is gone, by when the Exec
        // reply is on its way: the journal woken on berthd's CPU ran before the reply (0.6 ms
        // of every exec).
        info!("{started}");
        self.spare_helper();
        match pidfd.try_clone().and_then(sys::async_fd) {
            Ok(afd) => {
                if let Err(e) = afd.readable().await {
                    warn!("cannot wait for exec {id}: {e}, polling");
                }
            }
            Err(e) => warn!("cannot watch exec {id}: {e}, polling"),
        }
        let status = loop {
            match sys::pidfd_try_reap(pidfd.as_fd()) {
                Ok(Some(info)) => break info.as_status(),
                Ok(None) => tokio::time::sleep(Duration::from_millis(10)).await,
                Err(e) => {
                    warn!("cannot reap exec {id}: {e}, its status is lost");
                    break -1;
                }
            }
        };
        {
            let mut t = self.execs.0.lock().unwrap();
            t.running.remove(&id);
            if t.ended.len() == REMEMBER_ENDED {
                t.ended.pop_front();
            }
            t.ended.push_back((id.clone(), status));
        }
        exited.send_replace(Some(status));
        info!("exec {id} exited with status {status}");
    }

    /// The exit status of exec `id`, once it has exited.
    pub(super) async fn wait_exec(&self, id: &str) -> Result<i32> {
        let mut rx = {
            let t = self.execs.0.lock().unwrap();
            match t.running.get(id) {
                Some(r) => r.exited.subscribe(),
                None => {
                    return t
                        .ended
                        .iter()
                        .rev()
                        .find(|(i, _)| i == id)
                        .map(|(_, s)| *s)
                        .ok_or_else(|| {
                            Error::Bus(crate::dbus::Error::NoSuchExec(format!(
                                "no exec with ID {id:?}"
                            )))
                        });
                }
            }
        };
        let v = rx
            .wait_for(Option::is_some)
            .await
            .map_err(|_| Error::Failed("berthd is shutting down".into()))?;
        Ok(v.unwrap_or(-1))
    }

    /// The container an exec runs in, if it still runs.
    pub(super) fn exec_container(&self, id: &str) -> Option<String> {
        self.execs
            .0
            .lock()
            .unwrap()
            .running
            .get(id)
            .map(|r| r.container.clone())
    }

    /// Signal exec `id`.
    pub(super) fn kill_exec(&self, id: &str, signal: Signal) -> Result<()> {
        let pidfd = self
            .execs
            .0
            .lock()
            .unwrap()
            .running
            .get(id)
            .map(|r| r.pidfd.clone())
            .ok_or_else(|| {
                Error::Bus(crate::dbus::Error::NoSuchExec(format!(
                    "no running exec with ID {id:?}"
                )))
            })?;
        match sys::pidfd_send_signal(pidfd.as_fd(), signal) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
            Err(e) => Err(Error::Failed(format!("cannot send {signal}: {e}"))),
        }
    }

    /// Whether `caller` left the bus while `what` (for messages) went on; `false` when it can
    /// no longer be told (then nothing is hung up).
    async fn caller_left(&self, caller: &str, what: &str) -> bool {
        match self.departures.wait(caller) {
            Some(left) => left.await.is_ok(),
            None => {
                warn!("cannot watch the caller of {what}, ignoring");
                false
            }
        }
    }

    async fn hang_up_exec(&self, id: &str) {
        if self.kill_exec(id, Signal::SIGHUP).is_err() {
            return;
        }
        info!("the caller of exec {id} left: hung up");
        tokio::time::sleep(HANGUP_GRACE).await;
        if self.exec_container(id).is_some() && self.kill_exec(id, Signal::SIGKILL).is_ok() {
            info!("exec {id} outlived its hangup: killed");
        }
    }

    /// A foreground container: when `caller` leaves the bus while it runs, hang it up
    /// (SIGHUP to its PID 1, which passes it on), and stop it after [`HANGUP_GRACE`].
    pub(super) fn hang_up_with_caller(&self, name: &str, caller: String) {
        let me = self.arc();
        let name = name.to_string();
        let Ok((_, mut rx)) = self.running(&name, None) else {
            return;
        };
        tokio::spawn(async move {
            let left = tokio::select! {
                l = me.caller_left(&caller, &name) => l,
                _ = rx.wait_for(Option::is_some) => false,
            };
            if !left {
                return;
            }
            let Ok((pidfd, mut rx)) = me.running(&name, None) else {
                return;
            };
            info!("the caller of container {name} left: hanging it up");
            if let Err(e) = sys::pidfd_send_signal(pidfd.as_fd(), Signal::SIGHUP)
                && e != nix::errno::Errno::ESRCH
            {
                warn!("cannot hang up {name}: {e}, ignoring");
            }
            if tokio::time::timeout(HANGUP_GRACE, rx.wait_for(Option::is_some))
                .await
                .is_err()
            {
                info!("container {name} outlived its hangup: stopping it");
                if let Err(e) = me.stop(name.clone(), 0).await {
                    warn!("cannot stop {name} after its caller left: {e}, ignoring");
                }
            }
        });
    }
}
