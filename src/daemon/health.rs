//! Health checks (`--health-cmd`…, or the image's HEALTHCHECK): berthd runs the check through
//! the exec path (the container's namespaces, cgroup, user, capabilities and seccomp) every
//! interval, from one timer task of its runtime per running container — no process per
//! container besides the check itself while it runs. As docker: `starting` until the first
//! check passes, failures during the start period do not count, `retries` failures in a row
//! make it `unhealthy`, one pass makes it `healthy` again. Unhealthy with
//! `--health-on-failure=kill` kills the scope; with `restart` berthd stops and starts it.
//! The health is recorded with the rest of the run's life record (`/run/berth/life`), so a
//! restarted berthd goes on from what the last check said (podman keeps it too).

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tracing::{info, warn};

use super::start::{StartExtras, Stdio};
use super::table::{Registry, State};
use crate::plan::exec::ExecRequest;
use crate::spec::lifecycle::{HealthCheck, OnFailure};

pub const STARTING: &str = "starting";
pub const HEALTHY: &str = "healthy";
pub const UNHEALTHY: &str = "unhealthy";

/// What one check's result does to the state: (new health, failures in a row, whether it
/// just turned unhealthy).
pub fn judge(
    health: &str,
    failures: u32,
    passed: bool,
    in_start_period: bool,
    retries: u32,
) -> (&'static str, u32, bool) {
    if passed {
        return (HEALTHY, 0, false);
    }
    let current = match health {
        HEALTHY => HEALTHY,
        UNHEALTHY => UNHEALTHY,
        _ => STARTING,
    };
    // Docker: a failure in the start period does not count until a check has passed.
    if in_start_period && current == STARTING {
        return (STARTING, failures, false);
    }
    let failures = failures.saturating_add(1);
    if failures >= retries && current != UNHEALTHY {
        return (UNHEALTHY, failures, true);
    }
    (current, failures, false)
}

impl Registry {
    /// Schedule the health checks of the run that just started, if it has any.
    pub(super) fn watch_health(&self, name: &str) {
        let Ok((settings, spec, started_at, mut exited)) = self.with(name, |e| {
            (
                e.spec.life.health.clone(),
                e.spec.clone(),
                e.started_at,
                e.exited.subscribe(),
            )
        }) else {
            return;
        };
        let me = self.arc();
        let name = name.to_string();
        tokio::spawn(async move {
            let image = match settings.test {
                Some(_) => None,
                None => me
                    .container_root(&spec)
                    .ok()
                    .and_then(|r| r.config)
                    .and_then(|c| c.healthcheck),
            };
            // Without a check the run's health stays unset (as the start left it: nothing
            // to record or announce per start).
            let Some(check) = settings.resolve(image.as_ref()) else {
                me.set_health(&name, 0, "", 0).await;
                return;
            };
            // What was recorded of this very run (berthd restarted) stands until the next
            // check; a new run starts at `starting`.
            let resumed = me
                .with(&name, |e| {
                    (e.life.rec.health_run == started_at && !e.life.rec.health.is_empty())
                        .then(|| (e.life.rec.health.clone(), e.life.rec.health_failures))
                })
                .ok()
                .flatten();
            match resumed {
                Some((h, n)) => {
                    info!("container {name} is {h} as last recorded ({n} failed check(s) in a row)")
                }
                None => me.set_health(&name, started_at, STARTING, 0).await,
            }
            // The start period runs from the run's start (not from berthd's).
            let began = Instant::now()
                .checked_sub(Duration::from_micros(
                    super::store::now_usec().saturating_sub(started_at),
                ))
                .unwrap_or_else(Instant::now);
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(check.interval) => {}
                    _ = exited.wait_for(Option::is_some) => return,
                }
                let same_run = me
                    .with(&name, |e| {
                        e.state == State::Running && e.started_at == started_at
                    })
                    .unwrap_or(false);
                if !same_run {
                    return;
                }
                let passed = me.run_check(&name, &check).await;
                let Ok((health, failures)) = me.with(&name, |e| {
                    (e.life.rec.health.clone(), e.life.rec.health_failures)
                }) else {
                    return;
                };
                let (now, failures, turned) = judge(
                    &health,
                    failures,
                    passed,
                    began.elapsed() < check.start_period,
                    check.retries,
                );
                me.set_health(&name, started_at, now, failures).await;
                if !turned {
                    continue;
                }
                info!(
                    "container {name} is unhealthy after {failures} failed checks; on failure: {}",
                    check.on_failure
                );
                match check.on_failure {
                    OnFailure::None => {}
                    OnFailure::Kill => {
                        if let Err(e) = me
                            .kill(name.clone(), "all".into(), Signal::SIGKILL as i32)
                            .await
                        {
                            warn!("cannot kill unhealthy {name}: {e}, ignoring");
                        }
                        return;
                    }
                    OnFailure::Restart => {
                        // A container its berth@ unit holds is restarted by the unit, or it
                        // would leave it.
                        if let Some(unit) = me.with(&name, |e| e.held_by.clone()).ok().flatten() {
                            if let Err(e) = me.systemd.restart_unit(&unit).await {
                                warn!("cannot restart {unit} of unhealthy {name}: {e}, ignoring");
                            }
                            return;
                        }
                        if let Err(e) = me.stop(name.clone(), 0).await {
                            warn!("cannot stop unhealthy {name}: {e}, ignoring");
                        }
                        if let Err(e) = me
                            .start_with(name.clone(), Stdio::default(), StartExtras::default())
                            .await
                        {
                            warn!("cannot start unhealthy {name} again: {e}");
                        }
                        return;
                    }
                }
            }
        });
    }

    /// Set the health of run `run` (its `started_at`); a change is recorded (a write to
    /// /run, off the start path) and announced.
    async fn set_health(&self, name: &str, run: u64, health: &str, failures: u32) {
        let changed = self
            .with(name, |e| {
                let r = &mut e.life.rec;
                let changed =
                    r.health != health || r.health_failures != failures || r.health_run != run;
                r.health = health.to_string();
                r.health_failures = failures;
                r.health_run = run;
                changed
            })
            .unwrap_or(false);
        if changed {
            self.save_life(name);
            self.publish(name).await;
        }
    }

    /// Run one check: passed when it exits 0 within its timeout.
    async fn run_check(&self, name: &str, check: &HealthCheck) -> bool {
        let req = match ExecRequest::check(check.argv.clone(), vec![], None, None, false) {
            Ok(r) => r,
            Err(e) => {
                warn!("health check of {name}: {e}");
                return false;
            }
        };
        let started = match self.exec(name, req, [None, None, None], false, None).await {
            Ok(s) => s,
            Err(e) => {
                info!("health check of {name} could not run: {e}");
                return false;
            }
        };
        match tokio::time::timeout(check.timeout, self.wait_exec(&started.id)).await {
            Ok(Ok(0)) => true,
            Ok(Ok(_)) | Ok(Err(_)) => false,
            Err(_) => {
                info!(
                    "health check of {name} did not finish within {:?}, killing it",
                    check.timeout
                );
                if let Err(e) = self.kill_exec(&started.id, Signal::SIGKILL) {
                    warn!("cannot kill the health check of {name}: {e}, ignoring");
                }
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_follows_dockers_rules() {
        // Failures during the start period do not count before a pass.
        assert_eq!(judge(STARTING, 0, false, true, 2), (STARTING, 0, false));
        assert_eq!(judge(STARTING, 0, false, false, 2), (STARTING, 1, false));
        assert_eq!(judge(STARTING, 1, false, false, 2), (UNHEALTHY, 2, true));
        // Once it passed, start-period failures count.
        assert_eq!(judge(HEALTHY, 0, false, true, 2), (HEALTHY, 1, false));
        assert_eq!(judge(HEALTHY, 1, false, true, 2), (UNHEALTHY, 2, true));
        // It turns unhealthy once; one pass heals it.
        assert_eq!(judge(UNHEALTHY, 2, false, false, 2), (UNHEALTHY, 3, false));
        assert_eq!(judge(UNHEALTHY, 3, true, false, 2), (HEALTHY, 0, false));
    }
}
