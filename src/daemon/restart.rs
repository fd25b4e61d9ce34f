//! Restart policies (`--restart`), carried out by berthd: after an exit the policy decides
//! (see [`RestartPolicy::restarts_after`]); a restart waits a back-off that doubles with
//! each restart in a row after a short run, like systemd's `RestartSec=` with
//! `RestartSteps=`/`RestartMaxDelaySec=` (100 ms, 200 ms, … at most 30 s), and starts again
//! from 100 ms once a run lasted [`STABLE_RUN`]. `berthctl stop` is a stop by the user: no
//! policy restarts it. What is pending is recorded (see `life`), so a restarted berthd
//! carries it out, and handles an exit that happened while it was away exactly once. When
//! berthd starts (at boot, or after a restart), `always` containers that have run before are
//! started again, and so are `unless-stopped` ones the user did not stop, as docker does.
//! A timer task per pending restart, no process.

use std::time::Duration;

use tracing::{info, warn};

use super::start::{StartExtras, Stdio};
use super::store;
use super::table::{Registry, State};
use crate::spec::lifecycle::RestartPolicy;

/// The first back-off.
pub const FIRST_DELAY: Duration = Duration::from_millis(100);
/// The longest back-off.
pub const MAX_DELAY: Duration = Duration::from_secs(30);
/// A run this long resets the back-off (docker resets its back-off after 10 s too).
pub const STABLE_RUN: Duration = Duration::from_secs(10);

/// The back-off before the restart that follows `streak` restarts in a row.
pub fn delay(streak: u32) -> Duration {
    FIRST_DELAY
        .saturating_mul(1u32 << streak.min(16))
        .min(MAX_DELAY)
}

impl Registry {
    /// A new run begins: it is not ready yet, and has no status text.
    pub(super) fn run_starting(&self, name: &str) {
        if self
            .with(name, |e| {
                e.life.rec.ready = false;
                e.life.rec.status_text.clear();
                e.life.rec.restart_at = 0;
                e.life.rec.health.clear();
                e.life.rec.health_failures = 0;
                e.life.rec.health_run = 0;
            })
            .is_err()
        {
            warn!("container {name} vanished while it started, ignoring");
        }
    }

    /// A run began: watch its notify socket, record it.
    pub(super) fn run_started(&self, name: &str, notify: Option<std::os::unix::net::UnixDatagram>) {
        if let Some(s) = notify {
            self.watch_notify(name, s);
        }
        self.save_life(name);
        self.save_ran(name);
        self.watch_health(name);
    }

    /// The user started it: the count starts over, and a stop by the user is forgotten.
    pub(super) async fn user_started(&self, name: &str) {
        let was_stopped = self
            .with(name, |e| {
                e.life.generation += 1;
                e.life.rec.restarts = 0;
                e.life.rec.streak = 0;
                e.life.rec.restart_at = 0;
                std::mem::replace(&mut e.life.stopped_by_user, false)
            })
            .unwrap_or(false);
        if was_stopped {
            self.save_stopped(name, false);
        }
        self.save_life(name);
        self.publish(name).await;
    }

    /// The user stopped it: no policy restarts it, and a pending restart is cancelled.
    pub(super) async fn user_stopped(&self, name: &str) {
        let Ok(policy) = self.with(name, |e| {
            e.life.generation += 1;
            e.life.stopped_by_user = true;
            e.life.rec.restart_at = 0;
            e.spec.life.restart
        }) else {
            return;
        };
        if policy != RestartPolicy::No {
            self.save_stopped(name, true);
        }
        self.save_life(name);
        self.publish(name).await;
        // A stop that lands while the policy is starting it again waits for that start to end
        // (a start cannot be interrupted), then stops what it started.
        let t = std::time::Instant::now();
        while self
            .with(name, |e| e.state == State::Starting)
            .unwrap_or(false)
            && t.elapsed() < Duration::from_secs(60)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The policy's decision after the run that started at the entry's `started_at` exited
    /// with `status`.
    pub(super) async fn after_exit(&self, name: &str, status: i32) {
        let now = store::now_usec();
        let plan = self.with(name, |e| {
            e.life.rec.handled_run = e.started_at;
            let policy = e.spec.life.restart;
            // A berth@ unit's run is the unit's to restart (its Restart=), not berthd's.
            if e.held_by.is_some() {
                return None;
            }
            if e.state != State::Exited
                || !policy.restarts_after(status, e.life.rec.restarts, e.life.stopped_by_user)
            {
                return None;
            }
            let ran = Duration::from_micros(now.saturating_sub(e.started_at));
            if ran >= STABLE_RUN {
                e.life.rec.streak = 0;
            }
            let wait = delay(e.life.rec.streak);
            e.life.rec.restart_at = now + wait.as_micros() as u64;
            e.life.generation += 1;
            Some((policy, wait, e.life.generation))
        });
        let Ok(plan) = plan else { return };
        self.save_life(name);
        let Some((policy, wait, generation)) = plan else {
            return;
        };
        info!(
            "container {name} exited with status {status}; restart policy {policy}: starting it again in {wait:?}"
        );
        self.publish(name).await;
        self.schedule_restart(name, wait, generation);
    }

    fn schedule_restart(&self, name: &str, wait: Duration, generation: u64) {
        let me = self.arc();
        let name = name.to_string();
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            me.restart_due(&name, generation).await;
        });
    }

    /// A pending restart is due: start the container unless something overtook it (a user
    /// start, stop or removal).
    async fn restart_due(&self, name: &str, generation: u64) {
        let go = self
            .with(name, |e| {
                let go = e.life.generation == generation
                    && e.state == State::Exited
                    && !e.life.stopped_by_user;
                if go {
                    e.life.rec.restarts = e.life.rec.restarts.saturating_add(1);
                    e.life.rec.streak = e.life.rec.streak.saturating_add(1);
                }
                go
            })
            .unwrap_or(false);
        if !go {
            return;
        }
        self.save_life(name);
        if let Err(e) = self
            .start_with(name.to_string(), Stdio::default(), StartExtras::default())
            .await
        {
            warn!("restart of {name} failed: {e}");
            // A start that failed is an exit as far as the policy goes: it tries again,
            // later each time, as systemd does.
            let status = self.with(name, |e| e.exit_status).unwrap_or(125);
            self.after_exit(name, if status == 0 { 125 } else { status })
                .await;
        }
    }

    /// When berthd starts: carry out what the policies have pending, handle exits that
    /// happened while berthd was away, start `always` (and `unless-stopped`, unless the user
    /// stopped them) containers that are not running, and watch the notify sockets of those
    /// that are.
    pub async fn restart_at_start(&self) {
        self.load_life();
        let now = store::now_usec();
        enum Do {
            Watch,
            Health,
            Pending(Duration),
            Exited(i32),
            Start,
        }
        let todo: Vec<(String, Do)> = {
            let entries = self.entries.lock().unwrap();
            entries
                .iter()
                .filter_map(|(name, e)| {
                    let policy = e.spec.life.restart;
                    let d = match e.state {
                        State::Running if e.spec.life.notify_ready => Do::Watch,
                        State::Running => Do::Health,
                        State::Exited | State::Created if policy != RestartPolicy::No => {
                            if e.life.rec.restart_at != 0 && !e.life.stopped_by_user {
                                Do::Pending(Duration::from_micros(
                                    e.life.rec.restart_at.saturating_sub(now),
                                ))
                            } else if e.state == State::Exited
                                && e.started_at != 0
                                && e.life.rec.handled_run != e.started_at
                                && e.exit_status >= 0
                            {
                                Do::Exited(e.exit_status)
                            } else if self.has_run(name)
                                && (policy == RestartPolicy::Always
                                    || (policy == RestartPolicy::UnlessStopped
                                        && !e.life.stopped_by_user))
                            {
                                Do::Start
                            } else {
                                return None;
                            }
                        }
                        _ => return None,
                    };
                    Some((name.clone(), d))
                })
                .collect()
        };
        for (name, d) in todo {
            match d {
                Do::Watch => {
                    self.rewatch_notify(&name);
                    self.watch_health(&name);
                }
                Do::Health => self.watch_health(&name),
                Do::Pending(wait) => {
                    let generation = self
                        .with(&name, |e| {
                            e.life.generation += 1;
                            e.life.generation
                        })
                        .unwrap_or(0);
                    self.schedule_restart(&name, wait, generation);
                }
                Do::Exited(status) => {
                    info!("container {name} exited while berthd was away");
                    self.after_exit(&name, status).await;
                }
                Do::Start => {
                    info!("starting container {name} (restart policy at berthd start)");
                    // An `always` container the user stopped starts again now, as docker's
                    // does when its daemon starts; from here on it counts as not stopped.
                    let generation = self
                        .with(&name, |e| {
                            e.life.stopped_by_user = false;
                            e.life.generation += 1;
                            e.life.generation
                        })
                        .unwrap_or(0);
                    self.save_stopped(&name, false);
                    self.schedule_restart(&name, Duration::ZERO, generation);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_back_off_doubles_up_to_its_bound() {
        assert_eq!(delay(0), Duration::from_millis(100));
        assert_eq!(delay(1), Duration::from_millis(200));
        assert_eq!(delay(3), Duration::from_millis(800));
        assert_eq!(delay(9), MAX_DELAY);
        assert_eq!(delay(u32::MAX), MAX_DELAY);
    }
}
