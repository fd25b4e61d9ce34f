//! The start sequence (ARCHITECTURE.md, "Starting a container"): plan, helper, scope,
//! release, started. On error everything made so far is undone — the leader is killed and
//! the scope stopped — and the failure is recorded on the container (status and reason).
//! Each step is a tracing span, so `BERTH_LOG=debug` shows where a start spends its time.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tracing::{debug, info, warn};

use super::error::{Error, Result};
use super::images::parse_stop_signal;
use super::notify;
use super::store::{self, Runtime};
use super::table::{Registry, State};
use crate::mount::ContainerDirs;
use crate::name;
use crate::plan;
use crate::protocol::{self, FromHelper, Sync, ToHelper};
use crate::spawn::{self, Helper};
use crate::spec::{ContainerSpec, Root};
use crate::sys;
use crate::systemd::{self, properties};

mod launch;

/// The payload's stdio for a start (default: the log driver's, see [`super::logs`]).
#[derive(Default)]
pub struct Stdio(pub [Option<OwnedFd>; 3]);

/// What a start asks for besides stdio.
#[derive(Debug, Default, Clone)]
pub struct StartExtras {
    /// A terminal of the container's own on every stream the starter did not pass.
    pub terminal: bool,
    /// The terminal's first size (rows, columns).
    pub window: Option<(u16, u16)>,
    /// Hang the container up when this bus name leaves (a foreground `run`).
    pub caller: Option<String>,
    /// berthd keeps the terminal's master and relays what the container writes to it to the
    /// journal, as its stdout (a detached `run -dt`); its input stays open and silent.
    pub keep_master: bool,
}

/// What a successful launch leaves running.
pub(super) struct Launched {
    pub pid: i32,
    pub pidfd: OwnedFd,
    pub memfd: OwnedFd,
    pub stop_signal: Signal,
    /// The `berth@` unit that holds it, when one does.
    pub held_by: Option<String>,
    /// The terminal's master, when one was asked for.
    pub master: Option<OwnedFd>,
    /// The read ends of the stdout and stderr log pipes, when the journal gets them.
    pub logs: super::logs::LogPipes,
    /// What execs into it start from.
    pub exec_base: Arc<crate::plan::exec::ExecBase>,
}

/// A start's plan and what came with it.
pub(super) struct Planned {
    pub plan: plan::Plan,
    pub root_source: crate::mount::RootSource,
    pub stop_signal: Signal,
    pub config: Option<crate::image::ImageConfig>,
    pub range: Option<crate::userns::IdRange>,
    pub dirs: ContainerDirs,
}

/// The name of a container's exit-status descriptor in systemd's FD store.
pub fn fdname(name: &str) -> String {
    format!("exit-{name}")
}

/// Time one step of a start or an exit, for `BERTH_LOG=debug`.
pub(super) struct Timer<'a> {
    flow: &'static str,
    name: &'a str,
    step: &'static str,
    at: Instant,
}

impl<'a> Timer<'a> {
    fn new(name: &'a str, step: &'static str) -> Self {
        Timer::of("start", name, step)
    }

    /// A step of `flow` ("start", "exit").
    pub(super) fn of(flow: &'static str, name: &'a str, step: &'static str) -> Self {
        Timer {
            flow,
            name,
            step,
            at: Instant::now(),
        }
    }
}

impl Drop for Timer<'_> {
    fn drop(&mut self) {
        debug!(
            container = self.name,
            step = self.step,
            usec = self.at.elapsed().as_micros() as u64,
            "{} step {} of {} took {:?}",
            self.flow,
            self.step,
            self.name,
            self.at.elapsed()
        );
    }
}

impl Registry {
    /// Start, with a terminal or bound to a caller as `extras` says; returns the terminal's
    /// master when there is one.
    pub(super) async fn start_with(
        &self,
        name: String,
        stdio: Stdio,
        extras: StartExtras,
    ) -> Result<Option<OwnedFd>> {
        self.start_with_held(name, stdio, extras, None).await
    }

    /// Start in a `berth@` unit (see `unit`).
    pub(super) async fn start_held(
        &self,
        name: String,
        stdio: Stdio,
        held: super::unit::Held,
    ) -> Result<()> {
        self.start_with_held(name, stdio, StartExtras::default(), Some(held))
            .await
            .map(drop)
    }

    async fn start_with_held(
        &self,
        name: String,
        stdio: Stdio,
        extras: StartExtras,
        held: Option<super::unit::Held>,
    ) -> Result<Option<OwnedFd>> {
        let _whole = Timer::new(&name, "start (berthd)");
        let (spec, previous) = self.with(&name, |e| match e.state {
            State::Created | State::Exited => {
                let previous = e.state;
                e.state = State::Starting;
                Ok((e.spec.clone(), previous))
            }
            s => Err(Error::InvalidState {
                name: name.clone(),
                state: s.as_str(),
                hint: "",
            }),
        })??;
        self.publish(&name).await;
        self.record_start_intent(&name);
        super::failpoint::hit("start:after-intent");
        let notify = match self.notify_socket(&spec) {
            Ok(s) => s,
            Err(err) => {
                self.start_failed(&name, previous, &err).await;
                return Err(err);
            }
        };
        self.run_starting(&name);
        let mut net = super::network::NetStart::default();
        match self
            .launch(&spec, stdio, extras.terminal, extras.window, &mut net, held)
            .await
        {
            Ok(mut l) => {
                let mut master = l.master.take();
                // A booted container's console goes to its log (drained, so that its init
                // never blocks on a full terminal) unless the starter wants it; a detached
                // terminal (`run -dt`) is relayed to the log as it is.
                if spec.boot && (!extras.terminal || extras.keep_master) {
                    if let Some(m) = master.take()
                        && let Err(e) = super::boot::console_to_log(&mut l.logs, m, &l.pidfd)
                    {
                        warn!("cannot relay the console of {name}: {e}, ignoring");
                    }
                } else if extras.keep_master {
                    l.logs.out = master.take();
                }
                self.started(&name, l).await;
                self.run_started(&name, notify);
                if let Some(caller) = extras.caller {
                    self.hang_up_with_caller(&name, caller);
                }
                Ok(master)
            }
            Err(err) => {
                self.net_start_failed(&name, net).await;
                self.start_failed(&name, previous, &err).await;
                Err(err)
            }
        }
    }

    /// Record a running container and watch it.
    async fn started(&self, name: &str, l: Launched) {
        super::failpoint::hit("start:before-record");
        let started_at = store::now_usec();
        let pidfd = Arc::new(l.pidfd);
        let rt = Runtime {
            running: true,
            leader: l.pid,
            leader_start: store::process_start_time(l.pid).unwrap_or(0),
            started_at,
            exit_status: -1,
            oom_seen: Some(0),
            held_by: l.held_by.clone(),
            ..Default::default()
        };
        if let Err(e) = store::save_runtime(&self.layout, name, &rt) {
            warn!("cannot record runtime state of {name}: {e}, ignoring");
        }
        match notify::store_fd(&fdname(name), l.memfd.as_fd()) {
            Ok(_) => {}
            Err(e) => warn!("cannot store exit descriptor of {name}: {e}, ignoring"),
        }
        let recorded = self.with(name, |e| {
            e.state = State::Running;
            e.leader = Some(l.pid);
            e.started_at = started_at;
            e.last_error.clear();
            e.pidfd = Some(pidfd.clone());
            e.resources = e.spec.definition.resources.clone();
            e.stop_signal = l.stop_signal;
            e.paused = false;
            e.exec_base = Some(l.exec_base.clone());
            e.oom_seen = Some(0);
            e.exited.send_replace(None);
            e.held_by = l.held_by.clone();
        });
        if recorded.is_err() {
            warn!("container {name} vanished while it started, ignoring");
        }
        self.relay_logs(name, l.logs, l.pid as u32, true, started_at);
        // A `--notify-ready` payload says when it is ready itself (see `ready`).
        let notify_ready = self
            .with(name, |e| e.spec.life.notify_ready)
            .unwrap_or(false);
        if l.held_by.is_some() && !notify_ready {
            self.held_ready(name, l.pid);
        }
        self.adopt_cgroup(name, l.pid);
        tokio::spawn(
            self.arc()
                .watch_leader(name.to_string(), pidfd, Some(l.memfd)),
        );
        self.publish(name).await;
        // Off the start path: the registration is one more bus round trip.
        let me = self.arc();
        let n = name.to_string();
        tokio::spawn(async move { me.register_machine(&n).await });
        info!("started container {name}, leader {}", l.pid);
    }

    /// Record why a start failed: the status a shell would give (127/126/125) and the
    /// reason, on the container and in its runtime record.
    async fn start_failed(&self, name: &str, previous: State, err: &Error) {
        let status = err.start_status();
        let message = err.to_string();
        let ran_before = self
            .with(name, |e| {
                // A command that never ran is an exit with its status; a start that failed
                // before that leaves the container as it was, with the reason.
                e.state = if status == 125 {
                    previous
                } else {
                    State::Exited
                };
                if status != 125 {
                    e.exit_status = status;
                }
                e.last_error = message.clone();
                (e.started_at, e.exit_status, e.oom_kills, e.last_oom_at)
            })
            .ok();
        if let Some((started_at, exit_status, oom_kills, last_oom_at)) = ran_before {
            let rt = Runtime {
                running: false,
                started_at,
                exit_status,
                oom_kills,
                last_oom_at,
                last_error: message.clone(),
                ..Default::default()
            };
            if let Err(e) = store::save_runtime(&self.layout, name, &rt) {
                warn!("cannot record the failed start of {name}: {e}, ignoring");
            }
        }
        info!("container {name} failed to start: {message}");
        self.publish(name).await;
    }

    /// The plan of a start of `spec`, before its stdio, mounts and terminal: what a start
    /// and an exec (of a container berthd re-adopted) both begin with.
    pub(super) fn plan_for(&self, spec: &ContainerSpec) -> Result<Planned> {
        let name = spec.name();
        let mut dirs = ContainerDirs::under(&self.layout.container_dir(name));
        if spec.ephemeral {
            dirs = super::mounts::ephemeral_dirs(&dirs);
        }
        if let Root::Directory(dir) = &spec.root
            && !dir.is_dir()
        {
            return Err(Error::Failed(format!(
                "root directory {} is gone",
                dir.display()
            )));
        }
        let root = self.container_root(spec)?;
        let stop_signal = match root.config.as_ref().and_then(|c| c.stop_signal.as_deref()) {
            Some(s) => parse_stop_signal(s).unwrap_or_else(|| {
                warn!("{name}: image stop signal {s:?} is unknown, using SIGTERM");
                Signal::SIGTERM
            }),
            None => Signal::SIGTERM,
        };
        let range = self.id_range(spec)?;
        let decided = plan::Decided {
            id_maps: range.map(|r| r.id_maps()),
            labels: self.labels(spec)?,
            seccomp: self.seccomp_program(spec)?,
            hard_limits: hard_limit,
        };
        let (plan, root_source) =
            plan::build(spec, &root.lowers, root.config.as_ref(), &dirs, decided)?;
        Ok(Planned {
            plan,
            root_source,
            stop_signal,
            config: root.config,
            range,
            dirs,
        })
    }
}

/// berthd's own hard limit of a resource: a container never gets more.
fn hard_limit(r: nix::sys::resource::Resource) -> u64 {
    nix::sys::resource::getrlimit(r).map_or(u64::MAX, |(_, hard)| hard)
}

/// A step the helper or leader reported failed, as the error the caller gets.
pub(super) fn helper_failed(name: &str, step: protocol::Step, errno: i32, message: &str) -> Error {
    Error::Helper {
        step,
        errno,
        message: failure_message(name, step, errno, message),
    }
}

/// What a failed step tells the user.
fn failure_message(name: &str, step: protocol::Step, errno: i32, message: &str) -> String {
    use protocol::Step;
    let errno = nix::errno::Errno::from_raw(errno);
    match (step, errno) {
        (Step::Exec, nix::errno::Errno::ENOENT) => {
            format!("container {name:?}: {message}")
        }
        (Step::Exec, _) | (Step::User, _) => format!("container {name:?}: {message}"),
        (step, errno) => format!(
            "container {name:?}: {step:?} failed: {message}: {}",
            errno.desc()
        ),
    }
}
