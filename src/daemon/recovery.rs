//! Recovery: rebuild the container table from disk and systemd after a (re)start of berthd,
//! re-adopting running containers (their leader's start time must match the record, against
//! PID reuse) and recording the exit of those that ended while berthd was away.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use tracing::{error, info, warn};

use super::lifecycle::TRASH_PREFIX;
use super::notify;
use super::reaper::read_status;
use super::start::fdname;
use super::store::{self, Runtime};
use super::table::{Entry, Registry, State};
use crate::name;
use crate::spec;
use crate::sys;

/// What recovery found for one container.
enum Found {
    /// Its leader still runs: watch it.
    Running {
        pidfd: Arc<OwnedFd>,
        memfd: Option<OwnedFd>,
        leader: i32,
    },
    /// It exited while berthd was away: record that.
    ExitedMeanwhile,
    /// Nothing to do.
    Settled,
}

impl Registry {
    /// Rebuild the registry from disk and systemd, re-adopting running containers.
    pub async fn recover(&self, mut stored: HashMap<String, OwnedFd>) {
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
            if n.starts_with(TRASH_PREFIX) {
                // A removal that berthd did not finish: the container is already gone.
                if let Err(e) = std::fs::remove_dir_all(d.path()) {
                    warn!(
                        "cannot finish removing {}: {e}, ignoring",
                        d.path().display()
                    );
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
            let def = match store::load_definition(&self.layout.definition(&name)) {
                Ok(d) if d.name == name => d,
                Ok(d) => {
                    error!(
                        "container directory {name} holds the definition of {:?}; leaving it alone",
                        d.name
                    );
                    continue;
                }
                Err(e) => {
                    // Never delete what cannot be read: it may be a newer berth's, or damaged
                    // but holding the container's data.
                    error!("container {name} has no readable definition ({e}); leaving it alone");
                    continue;
                }
            };
            let spec = match spec::validate(&def, &self.host) {
                Ok(s) => s,
                Err(e) => {
                    error!(
                        "the definition of container {name} is not valid here ({e}); leaving it alone"
                    );
                    continue;
                }
            };
            let shown = self.shown_root(&spec);
            let mut entry = Entry::new(spec, shown);
            entry.security = self.describe(&entry.spec);
            let memfd = stored.remove(&fdname(&name));
            let found = match store::load_runtime(&self.layout, &name) {
                Some(rt) => adopt(&name, &rt, &mut entry, memfd),
                None => Found::Settled,
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
                    self.adopt_cgroup(&name, leader);
                    tokio::spawn(self.arc().watch_leader(name.clone(), pidfd, memfd));
                }
                Found::ExitedMeanwhile => {
                    if let Err(e) = self.systemd.stop_unit(&name::scope_unit(&name)).await {
                        warn!("cannot stop the scope of {name}: {e}, ignoring");
                    }
                    let rt = self
                        .with(&name, |e| Runtime {
                            running: false,
                            started_at: e.started_at,
                            exit_status: e.exit_status,
                            oom_kills: e.oom_kills,
                            last_oom_at: e.last_oom_at,
                            ..Default::default()
                        })
                        .ok();
                    if let Some(rt) = rt
                        && let Err(e) = store::save_runtime(&self.layout, &name, &rt)
                    {
                        warn!("cannot record the exit of {name}: {e}, ignoring");
                    }
                    if let Err(e) = notify::remove_fd(&fdname(&name)) {
                        warn!("cannot drop the exit descriptor of {name}: {e}, ignoring");
                    }
                    if auto_remove && let Err(e) = self.remove_entry(&name).await {
                        warn!("cannot remove {name}: {e}, ignoring");
                    }
                }
                Found::Settled => {}
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
    }
}

/// Fill `entry` from its runtime record and find out whether its leader still runs.
fn adopt(name: &str, rt: &Runtime, entry: &mut Entry, memfd: Option<OwnedFd>) -> Found {
    entry.started_at = rt.started_at;
    entry.exit_status = rt.exit_status;
    entry.last_error = rt.last_error.clone();
    entry.oom_kills = rt.oom_kills;
    entry.last_oom_at = rt.last_oom_at;
    entry.state = if rt.exit_status >= 0 || rt.running {
        State::Exited
    } else {
        State::Created
    };
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
            match &memfd {
                Some(m) => {
                    if let Err(e) = notify::store_fd(&fdname(name), m.as_fd()) {
                        warn!("cannot keep the exit descriptor of {name}: {e}, ignoring");
                    }
                }
                None => warn!(
                    "{name} has no exit descriptor (berthd ran without a service manager?), its exit status may be lost"
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
            entry.exit_status = memfd.as_ref().and_then(read_status).unwrap_or(-1);
            info!(
                "container {name} exited while berthd was away, status {}",
                entry.exit_status
            );
            Found::ExitedMeanwhile
        }
    }
}
