//! What berthd knows about a container's run beyond its state: whether it is ready
//! (`--notify-ready`), the status text its payload sent, and where its restart policy stands.
//! Kept on the entry ([`Life`]), announced as Container properties ([`LifeInfo`]) in the same
//! `PropertiesChanged` as the rest, and recorded in `/run/berth/life/NAME.json` (survives
//! berthd restarts) and `/var/lib/berth/life/NAME.stopped` (a user stop, which survives
//! reboots: `unless-stopped` keeps such a container stopped at boot).

use std::collections::HashMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use tracing::warn;
use zbus::Variant;

use super::store::{self, Layout};
use super::table::{Entry, Registry, State};
use crate::dbus::LifeInfo;

/// The runtime part of [`Life`], as recorded under /run/berth/life.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LifeRecord {
    /// `READY=1` arrived during the current run.
    pub ready: bool,
    /// The last `STATUS=` of the current run.
    pub status_text: String,
    /// Restarts made by the policy since the user last started the container.
    pub restarts: u32,
    /// Restarts in a row after short runs: the exponent of the back-off.
    pub streak: u32,
    /// When the pending restart is due (µs since the epoch; 0: none pending).
    pub restart_at: u64,
    /// The `started_at` of the run whose exit the policy has handled, so that a restarted
    /// berthd handles an exit it did not see exactly once.
    pub handled_run: u64,
    /// Health of the run `health_run` (its `started_at`): "" (no check), starting, healthy,
    /// unhealthy. Recorded so that a restarted berthd goes on from it, as podman does, rather
    /// than starting over at `starting`.
    pub health: String,
    /// Failed checks in a row.
    pub health_failures: u32,
    pub health_run: u64,
}

/// The entry's part.
#[derive(Debug, Default)]
pub struct Life {
    pub rec: LifeRecord,
    /// `berthctl stop` stopped it (restart policies then leave it alone).
    pub stopped_by_user: bool,
    /// Bumped to cancel a pending restart.
    pub generation: u64,
    /// The properties last announced.
    published: Option<LifeInfo>,
}

impl Life {
    /// The properties of an entry, as the bus shows them.
    pub fn info(e: &Entry) -> LifeInfo {
        let notify = e.spec.life.notify_ready;
        LifeInfo {
            ready: e.state == State::Running && (!notify || e.life.rec.ready),
            status_text: e.life.rec.status_text.clone(),
            notify_ready: notify,
            restart_policy: e.spec.life.restart.to_string(),
            restart_count: e.life.rec.restarts,
            next_restart_at: e.life.rec.restart_at,
            health: if e.state == State::Running {
                e.life.rec.health.clone()
            } else {
                String::new()
            },
            health_failures: e.life.rec.health_failures,
        }
    }

    /// The properties that changed since the last call, by their bus names.
    pub fn changes(e: &mut Entry) -> HashMap<&'static str, Variant<'static>> {
        let now = Life::info(e);
        let before = e.life.published.replace(now.clone());
        let mut m = HashMap::new();
        let Some(b) = before else { return m };
        if b.ready != now.ready {
            m.insert("Ready", Variant::from(now.ready));
        }
        if b.status_text != now.status_text {
            m.insert("StatusText", Variant::from(now.status_text));
        }
        if b.restart_count != now.restart_count {
            m.insert("RestartCount", Variant::from(now.restart_count));
        }
        if b.next_restart_at != now.next_restart_at {
            m.insert("NextRestartAt", Variant::from(now.next_restart_at));
        }
        if b.health != now.health {
            m.insert("Health", Variant::from(now.health));
        }
        if b.health_failures != now.health_failures {
            m.insert("HealthFailures", Variant::from(now.health_failures));
        }
        m
    }
}

pub fn record_path(layout: &Layout, name: &str) -> PathBuf {
    layout.run.join("life").join(format!("{name}.json"))
}

pub fn stopped_path(layout: &Layout, name: &str) -> PathBuf {
    layout.lib.join("life").join(format!("{name}.stopped"))
}

/// A marker that the container has run at least once (across reboots): `always` starts only
/// such containers when berthd starts.
pub fn ran_path(layout: &Layout, name: &str) -> PathBuf {
    layout.lib.join("life").join(format!("{name}.ran"))
}

/// The recorded state of a container; `None` when there is none (never started since boot).
pub fn read_record(layout: &Layout, name: &str) -> Option<LifeRecord> {
    let p = record_path(layout, name);
    match std::fs::read(&p) {
        Ok(b) => match serde_json::from_slice(&b) {
            Ok(r) => Some(r),
            Err(e) => {
                warn!("cannot read {}: {e}, ignoring", p.display());
                None
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            warn!("cannot read {}: {e}, ignoring", p.display());
            None
        }
    }
}

impl Registry {
    /// Write a container's life record (after every change that must survive a restart).
    pub(super) fn save_life(&self, name: &str) {
        let Ok(rec) = self.with(name, |e| e.life.rec.clone()) else {
            return;
        };
        let p = record_path(&self.layout, name);
        let written = (|| {
            if let Some(d) = p.parent() {
                std::fs::create_dir_all(d)?;
            }
            let text = serde_json::to_vec(&rec).map_err(std::io::Error::other)?;
            store::write_atomic(&p, &text)
        })();
        if let Err(e) = written {
            warn!(
                "cannot record the run of {name} in {}: {e}, ignoring",
                p.display()
            );
        }
    }

    /// Remember (or forget) that the user stopped a container, across reboots.
    pub(super) fn save_stopped(&self, name: &str, stopped: bool) {
        save_marker(&stopped_path(&self.layout, name), stopped);
    }

    /// Remember that a container has run.
    pub(super) fn save_ran(&self, name: &str) {
        let p = ran_path(&self.layout, name);
        if !p.exists() {
            save_marker(&p, true);
        }
    }

    /// Forget a removed container's records.
    pub(super) fn forget_life(&self, name: &str) {
        for p in [
            record_path(&self.layout, name),
            stopped_path(&self.layout, name),
            ran_path(&self.layout, name),
        ] {
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => warn!("cannot remove {}: {e}, ignoring", p.display()),
            }
        }
        super::ready::remove_dir(&self.layout, name);
    }

    /// Load what was recorded of each container, when berthd starts.
    pub(super) fn load_life(&self) {
        let mut entries = self.entries.lock().unwrap();
        for (name, e) in entries.iter_mut() {
            if let Some(rec) = read_record(&self.layout, name) {
                e.life.rec = rec;
            }
            e.life.stopped_by_user = stopped_path(&self.layout, name).exists();
            // A run that ended while berthd was away is not ready any more; the health of
            // another run than the one running now is no one's.
            if e.state != State::Running {
                e.life.rec.ready = false;
            }
            if e.state != State::Running || e.life.rec.health_run != e.started_at {
                e.life.rec.health.clear();
                e.life.rec.health_failures = 0;
                e.life.rec.health_run = 0;
            }
            e.life.published = Some(Life::info(e));
        }
    }

    /// Whether a container has ever run (as far as the records go).
    pub(super) fn has_run(&self, name: &str) -> bool {
        ran_path(&self.layout, name).exists()
    }

    pub(super) fn life_info(&self, name: &str) -> Option<LifeInfo> {
        self.entries.lock().unwrap().get(name).map(Life::info)
    }
}

/// Create (`true`) or delete a marker file.
fn save_marker(p: &std::path::Path, set: bool) {
    let done = if set {
        p.parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| store::write_atomic(p, b""))
    } else {
        match std::fs::remove_file(p) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            r => r,
        }
    };
    if let Err(e) = done {
        warn!("cannot update {}: {e}, ignoring", p.display());
    }
}
