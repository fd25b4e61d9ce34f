//! Recovery: rebuild the container table from disk and systemd after a (re)start of berthd,
//! re-adopting running containers (their leader's start time must match the record, against
//! PID reuse) and recording the exit of those that ended while berthd was away. What cannot be
//! read is never deleted: a container whose definition is unusable goes to quarantine
//! (`quarantine`), a runtime record that is damaged is re-derived from systemd, and a start that
//! a crash interrupted is undone (`reconcile`, which then makes systemd and `/run/berth` agree
//! with the table).

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use tracing::{error, info, warn};

use super::lifecycle::{STAGING_PREFIX, TRASH_PREFIX};
use super::notify;
use super::quarantine;
use super::reaper::read_status;
use super::start::fdname;
use super::store::{self, Runtime};
use super::table::{Entry, Registry, State};
use crate::name;
use crate::sys;

/// What recovery found for one container.
pub(super) enum Found {
    /// Its leader still runs: watch it.
    Running {
        pidfd: Arc<OwnedFd>,
        memfd: Option<OwnedFd>,
        leader: i32,
    },
    /// It exited while berthd was away: record that.
    ExitedMeanwhile,
    /// A start was in progress when berthd died: undo it.
    Interrupted,
    /// Nothing to do.
    Settled,
}

/// Why a container's exit status can be unknown after a restart.
const LOST_FD_STORE: &str = "its exit status is unknown: it exited while berthd was stopped, and systemd drops berthd's file descriptor store (which held the status) when berthd stops or fails";

impl Registry {
    /// Rebuild the registry from disk and systemd, re-adopting running containers.
    pub async fn recover(&self, mut stored: HashMap<String, OwnedFd>) {
        // systemd hands the store back after a crash or a restart, not after a stop.
        let store_lost = stored.is_empty();
        let dir = match std::fs::read_dir(self.layout.containers()) {
            Ok(d) => d,
            Err(e) => {
                error!("cannot read {}: {e}", self.layout.containers().display());
                return;
            }
        };
        let mut names: Vec<String> = Vec::new();
        for d in dir.flatten() {
            let Ok(n) = d.file_name().into_string() else {
                continue;
            };
            if n.starts_with(TRASH_PREFIX) || n.starts_with(STAGING_PREFIX) {
                // A removal that berthd did not finish (the container is already gone), or a
                // create that it did not finish (the container never existed).
                match super::lifecycle::remove_tree(&d.path()) {
                    Ok(()) => info!(
                        "deleted {}, left by an interrupted flow",
                        d.path().display()
                    ),
                    Err(e) => warn!(
                        "cannot finish removing {}: {e}, ignoring",
                        d.path().display()
                    ),
                }
                continue;
            }
            if name::validate(&n).is_ok() {
                names.push(n);
            }
        }
        names.sort();
        self.rebuild_allocations(&names);
        let mut logs = super::logs::take_stored(&mut stored);
        for name in names {
            let spec = match quarantine::load(&self.layout, &name, &self.host) {
                Ok(s) => s,
                Err(defect) => {
                    self.quarantine(&name, defect).await;
                    continue;
                }
            };
            let shown = self.shown_root(&spec);
            let mut entry = Entry::new(spec, shown);
            entry.security = self.describe(&entry.spec);
            let memfd = stored.remove(&fdname(&name));
            let mut repaired = false;
            let found = match store::read_runtime(&self.layout, &name) {
                Ok(Some(rt)) if rt.starting => {
                    fill(&mut entry, &rt);
                    Found::Interrupted
                }
                Ok(Some(rt)) => adopt(&name, &rt, &mut entry, memfd, store_lost),
                Ok(None) => Found::Settled,
                Err(e) => {
                    repaired = true;
                    self.rederive(&name, &e, &mut entry, memfd).await
                }
            };
            let auto_remove = entry.spec.definition.auto_remove;
            self.entries.lock().unwrap().insert(name.clone(), entry);
            self.export(&name).await;
            if let Some(pipes) = logs.remove(&name) {
                // Lines still in the pipes go out; the relay ends when the last writer is gone.
                let (leader, alive) = match &found {
                    Found::Running { leader, .. } => (*leader as u32, true),
                    _ => (0, false),
                };
                self.resume_relays(&name, pipes, leader, alive);
            }
            match found {
                Found::Running {
                    pidfd,
                    memfd,
                    leader,
                } => {
                    if repaired {
                        self.save_running_record(&name, leader);
                    }
                    self.adopt_cgroup(&name, leader);
                    tokio::spawn(self.arc().watch_leader(name.clone(), pidfd, memfd));
                }
                Found::ExitedMeanwhile => {
                    if let Err(e) = self.systemd.stop_unit(&name::scope_unit(&name)).await {
                        warn!("cannot stop the scope of {name}: {e}, ignoring");
                    }
                    self.save_settled_record(&name);
                    if let Err(e) = notify::remove_fd(&fdname(&name)) {
                        warn!("cannot drop the exit descriptor of {name}: {e}, ignoring");
                    }
                    if auto_remove && let Err(e) = self.remove_entry(&name).await {
                        warn!("cannot remove {name}: {e}, ignoring");
                    }
                }
                Found::Interrupted => {
                    self.undo_interrupted_start(&name).await;
                    if auto_remove && let Err(e) = self.remove_entry(&name).await {
                        warn!("cannot remove {name}: {e}, ignoring");
                    }
                }
                Found::Settled => {
                    if repaired {
                        self.save_settled_record(&name);
                    }
                }
            }
        }
        for (left, pipes) in logs {
            // A container that is gone: what its pipes hold still goes to the journal.
            self.resume_relays(&left, pipes, 0, false);
        }
        for (left, _) in stored {
            if let Err(e) = notify::remove_fd(&left) {
                warn!("cannot drop the stale descriptor {left}: {e}, ignoring");
            }
        }
        self.reconcile().await;
    }

    /// Write the record of a container that is not running, from its entry.
    pub(super) fn save_settled_record(&self, name: &str) {
        let rt = self
            .with(name, |e| Runtime {
                running: false,
                started_at: e.started_at,
                exit_status: e.exit_status,
                oom_kills: e.oom_kills,
                last_oom_at: e.last_oom_at,
                last_error: e.last_error.clone(),
                ..Default::default()
            })
            .ok();
        if let Some(rt) = rt
            && let Err(e) = store::save_runtime(&self.layout, name, &rt)
        {
            warn!("cannot record the state of {name}: {e}, ignoring");
        }
    }

    /// Write the record of a running container, from its entry.
    fn save_running_record(&self, name: &str, leader: i32) {
        let rt = self
            .with(name, |e| Runtime {
                running: true,
                leader,
                leader_start: store::process_start_time(leader).unwrap_or(0),
                started_at: e.started_at,
                exit_status: e.exit_status,
                oom_kills: e.oom_kills,
                last_oom_at: e.last_oom_at,
                oom_seen: e.oom_seen,
                ..Default::default()
            })
            .ok();
        if let Some(rt) = rt
            && let Err(e) = store::save_runtime(&self.layout, name, &rt)
        {
            warn!("cannot record the state of {name}: {e}, ignoring");
        }
    }
}

/// The fields of a runtime record that every state keeps.
fn fill(entry: &mut Entry, rt: &Runtime) {
    entry.started_at = rt.started_at;
    entry.exit_status = rt.exit_status;
    entry.last_error = rt.last_error.clone();
    entry.oom_kills = rt.oom_kills;
    entry.last_oom_at = rt.last_oom_at;
    entry.oom_seen = rt.oom_seen;
    entry.held_by = rt.held_by.clone();
    // Ran before: a status, a run, or a start time. A status lost to a stopped berthd is -1
    // with a start time.
    entry.state = if rt.exit_status >= 0 || rt.running || rt.started_at != 0 {
        State::Exited
    } else {
        State::Created
    };
}

/// Fill `entry` from its runtime record and find out whether its leader still runs.
fn adopt(
    name: &str,
    rt: &Runtime,
    entry: &mut Entry,
    memfd: Option<OwnedFd>,
    store_lost: bool,
) -> Found {
    fill(entry, rt);
    if !rt.running {
        return Found::Settled;
    }
    let alive =
        rt.leader_start != 0 && store::process_start_time(rt.leader) == Some(rt.leader_start);
    let pidfd = alive
        .then(|| sys::pidfd_open(nix::unistd::Pid::from_raw(rt.leader)).ok())
        .flatten();
    match pidfd {
        Some(pidfd) => {
            let pidfd = Arc::new(pidfd);
            entry.state = State::Running;
            entry.leader = Some(rt.leader);
            entry.pidfd = Some(pidfd.clone());
            if let Some(r) = rt.resources.clone() {
                entry.resources = r;
            }
            let memfd = match memfd {
                Some(m) => Some(m),
                None => {
                    let m = super::reconcile::take_back_exit_fd(name, rt.leader, pidfd.as_fd());
                    if m.is_some() {
                        info!(
                            "took the exit descriptor of {name} back from its PID 1 (systemd's store had lost it)"
                        );
                    }
                    m
                }
            };
            match &memfd {
                Some(m) => {
                    if let Err(e) = notify::store_fd(&fdname(name), m.as_fd()) {
                        warn!("cannot keep the exit descriptor of {name}: {e}, ignoring");
                    }
                }
                None => warn!(
                    "{name} has no exit descriptor and its PID 1 holds none: its exit status will be unknown"
                ),
            }
            info!("re-adopted running container {name}, leader {}", rt.leader);
            Found::Running {
                pidfd,
                memfd,
                leader: rt.leader,
            }
        }
        None => {
            entry.state = State::Exited;
            match memfd.as_ref().and_then(read_status) {
                Some(status) => {
                    entry.exit_status = status;
                    info!("container {name} exited while berthd was away, status {status}");
                }
                None => {
                    entry.exit_status = -1;
                    entry.last_error = if store_lost {
                        LOST_FD_STORE.to_string()
                    } else {
                        "its exit status is unknown: it exited while berthd was away, and its PID 1 left no status".to_string()
                    };
                    warn!(
                        "container {name} exited while berthd was away; {}",
                        entry.last_error
                    );
                }
            }
            Found::ExitedMeanwhile
        }
    }
}
