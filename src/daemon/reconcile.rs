//! Reconciliation: berthd's records, systemd's units and the kernel's processes must agree,
//! whatever point a crash hit.
//!
//! - A start is recorded as in progress before it makes anything ([`Registry::record_start_intent`]);
//!   a restarted berthd that finds that record undoes the start (kills and stops its scope) and
//!   records the container as it was. A start is thus either fully recorded or fully undone.
//! - After recovery, every live `berth-*.scope` belongs to a container recorded as running
//!   (or to a quarantined one whose scope ran when it was found); any other is killed and
//!   stopped, and the log says which and why. Runtime records without a container are deleted.
//! - A damaged runtime record is re-derived from systemd and the scope's processes: the
//!   container's PID 1 is the process in the scope that is PID 1 of its own PID namespace.
//! - A running container's exit-status memfd that systemd's store lost is taken back from its
//!   PID 1 (`pidfd_getfd`), so the status survives a stop of berthd while the payload runs.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use nix::sys::signal::Signal;
use tracing::{info, warn};

use super::notify;
use super::reaper::read_status;
use super::recovery::Found;
use super::start::fdname;
use super::store::{self, Runtime};
use super::table::{Entry, Registry, State};
use crate::name;
use crate::sys;

impl Registry {
    /// Before a start makes anything: record that it is in progress (keeping what the record
    /// says of earlier runs).
    pub(super) fn record_start_intent(&self, name: &str) {
        let Ok(rt) = self.with(name, |e| Runtime {
            running: false,
            starting: true,
            started_at: e.started_at,
            exit_status: e.exit_status,
            oom_kills: e.oom_kills,
            last_oom_at: e.last_oom_at,
            last_error: e.last_error.clone(),
            ..Default::default()
        }) else {
            return;
        };
        if let Err(e) = store::save_runtime(&self.layout, name, &rt) {
            // Reconciliation still stops a scope a crash would orphan; only the reason given
            // for it is less precise.
            warn!("cannot record the start of {name} as in progress: {e}, ignoring");
        }
    }

    /// Kill and stop a scope, waiting until it is gone.
    async fn kill_and_stop(&self, unit: &str) {
        if let Err(e) = self
            .systemd
            .kill_unit(unit, "all", Signal::SIGKILL as i32)
            .await
        {
            warn!("cannot kill {unit}: {e}, stopping it anyway");
        }
        if let Err(e) = self.systemd.stop_unit(unit).await {
            warn!("cannot stop {unit}: {e}, ignoring");
        }
    }

    /// Undo a start that a crash of berthd interrupted: whatever it made (the scope and the
    /// processes in it) goes; the container stays as it was before, with the reason.
    pub(super) async fn undo_interrupted_start(&self, name: &str) {
        let unit = name::scope_unit(name);
        let live = self.systemd.unit_is_active(&unit).await;
        if live {
            self.kill_and_stop(&unit).await;
        }
        if self
            .with(name, |e| {
                e.last_error =
                    "the last start was interrupted (berthd stopped during it) and undone".into();
            })
            .is_err()
        {
            return;
        }
        self.save_settled_record(name);
        if live {
            warn!(
                "container {name}: berthd died during a start; stopped {unit} and undid the start"
            );
        } else {
            // Before the scope, or after it while the helper still waited at its barrier: the
            // helper and the leader die with berthd, and systemd collects the empty scope.
            warn!(
                "container {name}: berthd died during a start, of which nothing runs; undid the start"
            );
        }
    }

    /// Make systemd's units and the runtime records agree with the table (after recovery,
    /// before serving).
    pub(super) async fn reconcile(&self) {
        match self.systemd.live_units("berth-*.scope").await {
            Ok(units) => {
                for unit in units {
                    let Some(n) = unit
                        .strip_prefix("berth-")
                        .and_then(|u| u.strip_suffix(".scope"))
                    else {
                        continue;
                    };
                    let why = {
                        let entries = self.entries.lock().unwrap();
                        match entries.get(n) {
                            Some(e) if e.is_active() => None,
                            Some(e) => {
                                Some(format!("container {n} is recorded as {}", e.state.as_str()))
                            }
                            None => match self.broken.lock().unwrap().get(n) {
                                Some(b) if b.scope_active => None,
                                Some(_) => Some(format!("container {n} is broken")),
                                None => Some(format!("berthd has no container named {n:?}")),
                            },
                        }
                    };
                    if let Some(why) = why {
                        warn!("{unit} runs but {why}: stopping it");
                        self.kill_and_stop(&unit).await;
                        info!("stopped {unit}, which no record accounted for");
                    }
                }
            }
            Err(e) => {
                warn!("cannot list berth's scopes: {e}; any orphan among them stays, ignoring")
            }
        }
        let dir = self.layout.run.join("containers");
        let Ok(rd) = std::fs::read_dir(&dir) else {
            return;
        };
        for f in rd.flatten() {
            let file = f.file_name();
            let Some(file) = file.to_str() else { continue };
            let known = file.strip_suffix(".json").is_some_and(|n| {
                self.entries.lock().unwrap().contains_key(n)
                    || self.broken.lock().unwrap().contains_key(n)
            });
            if known {
                continue;
            }
            match std::fs::remove_file(f.path()) {
                Ok(()) => info!(
                    "deleted {}: no container is left for it",
                    f.path().display()
                ),
                Err(e) => warn!("cannot delete {}: {e}, ignoring", f.path().display()),
            }
        }
    }

    /// The runtime record of `name` is damaged: find out from systemd and the kernel whether
    /// the container runs, fill `entry` accordingly, and say what was repaired.
    pub(super) async fn rederive(
        &self,
        name: &str,
        err: &std::io::Error,
        entry: &mut Entry,
        memfd: Option<OwnedFd>,
    ) -> Found {
        let unit = name::scope_unit(name);
        let path = self.layout.runtime(name);
        let leader = match self.systemd.unit_processes(&unit).await {
            Ok(pids) => pids.into_iter().find_map(|p| adoptable_leader(p as i32)),
            Err(e) => {
                warn!("cannot list the processes of {unit}: {e}, taking it as not running");
                None
            }
        };
        match leader {
            Some((pid, pidfd)) => {
                let pidfd = Arc::new(pidfd);
                entry.state = State::Running;
                entry.leader = Some(pid);
                entry.pidfd = Some(pidfd.clone());
                entry.started_at = process_started_usec(pid).unwrap_or(0);
                // What the counter was at the damage is unknown: count from now.
                entry.oom_seen = None;
                let memfd = memfd.or_else(|| take_back_exit_fd(name, pid, pidfd.as_fd()));
                if let Some(m) = &memfd
                    && let Err(e) = notify::store_fd(&fdname(name), m.as_fd())
                {
                    warn!("cannot keep the exit descriptor of {name}: {e}, ignoring");
                }
                warn!(
                    "the runtime record {} of {name} is damaged ({err}); re-derived it from {unit}: running, leader {pid}{}",
                    path.display(),
                    if memfd.is_some() {
                        ""
                    } else {
                        " (its exit status will be unknown: no exit descriptor)"
                    }
                );
                Found::Running {
                    pidfd,
                    memfd,
                    leader: pid,
                }
            }
            None => {
                // The record existed, so the container has been started before.
                entry.state = State::Exited;
                match memfd.as_ref().and_then(read_status) {
                    Some(status) => {
                        entry.exit_status = status;
                        warn!(
                            "the runtime record {} of {name} is damaged ({err}); re-derived it: not running ({unit} is gone), exited with status {status}",
                            path.display()
                        );
                        Found::ExitedMeanwhile
                    }
                    None => {
                        entry.exit_status = -1;
                        entry.last_error =
                            "its exit status is unknown: its runtime record was damaged".into();
                        warn!(
                            "the runtime record {} of {name} is damaged ({err}); re-derived it: not running ({unit} is gone), exit status unknown",
                            path.display()
                        );
                        Found::Settled
                    }
                }
            }
        }
    }
}

/// `pid` is a container's PID 1 (PID 1 of its own PID namespace, one level below ours): a
/// pidfd to it, checked after opening so that a recycled PID is not taken for it.
fn adoptable_leader(pid: i32) -> Option<(i32, OwnedFd)> {
    if !is_namespace_init(pid) {
        return None;
    }
    let pidfd = sys::pidfd_open(nix::unistd::Pid::from_raw(pid)).ok()?;
    is_namespace_init(pid).then_some((pid, pidfd))
}

fn is_namespace_init(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .is_some_and(|s| nspid_is_child_init(&s))
}

/// The `NSpid:` line of /proc/PID/status lists the PID in each namespace from ours down: a
/// container's PID 1 has exactly two, the last being 1.
pub fn nspid_is_child_init(status: &str) -> bool {
    status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .map(|v| v.split_whitespace().collect::<Vec<_>>())
        .is_some_and(|ids| ids.len() == 2 && ids[1] == "1")
}

/// When a process started, in µs since the epoch (boot time plus its start time in ticks).
fn process_started_usec(pid: i32) -> Option<u64> {
    let ticks = store::process_start_time(pid)?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()? as u64;
    let btime: u64 = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    Some(btime * 1_000_000 + ticks * 1_000_000 / hz.max(1))
}

/// The link text of a container's exit-status memfd in /proc/PID/fd (made by `start`).
fn memfd_link(name: &str) -> String {
    format!("/memfd:berth-exit-{name} (deleted)")
}

/// Take a duplicate of the exit-status memfd that the container's PID 1 holds (found by its
/// name in /proc/LEADER/fd); `None` if it holds none (a payload run as PID 1) or is gone.
pub fn take_back_exit_fd(name: &str, leader: i32, pidfd: BorrowedFd<'_>) -> Option<OwnedFd> {
    let want = memfd_link(name);
    let dir = format!("/proc/{leader}/fd");
    let rd = match std::fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) => {
            warn!("cannot read {dir}: {e}, ignoring");
            return None;
        }
    };
    for f in rd.flatten() {
        let Ok(link) = std::fs::read_link(f.path()) else {
            continue;
        };
        if link.as_os_str() != want.as_str() {
            continue;
        }
        let Some(num) = f.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        match sys::pidfd_getfd::pidfd_getfd(pidfd, num) {
            // Only a shmem file (which is what a memfd is) answers F_GET_SEALS: reading it can
            // never block, whatever the process behind the pidfd holds.
            Ok(fd) if nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_GET_SEALS).is_ok() => {
                return Some(fd);
            }
            Ok(_) => {
                warn!("descriptor {num} of PID {leader} is not a memfd, ignoring");
                return None;
            }
            Err(e) => {
                warn!("cannot take the exit descriptor of {name} from PID {leader}: {e}, ignoring");
                return None;
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_child_namespace_init_is_a_leader() {
        assert!(nspid_is_child_init(
            "Name:\tberth-helper\nNSpid:\t4242\t1\n"
        ));
        assert!(!nspid_is_child_init("NSpid:\t4243\t2\n"));
        assert!(!nspid_is_child_init("NSpid:\t1\n"));
        // A container of a container: PID 1 two levels down is not ours.
        assert!(!nspid_is_child_init("NSpid:\t4250\t7\t1\n"));
        assert!(!nspid_is_child_init("Name:\tx\n"));
    }

    #[test]
    fn the_exit_memfd_is_found_by_name_and_taken_back() {
        // Our own process stands in for a container's PID 1: a memfd named as start names it.
        let m =
            nix::sys::memfd::memfd_create("berth-exit-tb1", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
                .unwrap();
        nix::unistd::write(&m, b"42\n").unwrap();
        let me = std::process::id() as i32;
        let pidfd = sys::pidfd_open(nix::unistd::Pid::from_raw(me)).unwrap();
        let got = take_back_exit_fd("tb1", me, pidfd.as_fd()).expect("found");
        assert_eq!(read_status(&got), Some(42));
        assert!(take_back_exit_fd("tb2", me, pidfd.as_fd()).is_none());
        drop(m);
    }

    #[test]
    fn a_process_start_time_is_near_now() {
        let now = store::now_usec();
        let t = process_started_usec(std::process::id() as i32).unwrap();
        // This test process started less than an hour ago, and not in the future (ticks are
        // 10 ms, btime is whole seconds).
        assert!(
            t <= now + 2_000_000 && now - t < 3_600_000_000,
            "{t} vs {now}"
        );
    }
}
