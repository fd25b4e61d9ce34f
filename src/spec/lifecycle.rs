//! How a container's run is supervised by berthd: readiness (`--notify-ready`) and the
//! restart policy (`--restart`, spelled as podman and docker spell it). The `[lifecycle]`
//! table of a definition, and the typed [`LifeSpec`] that [`check`] makes of it.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The largest retry count `on-failure:N` takes.
pub const MAX_RETRIES: u32 = 1_000_000;

/// The `[lifecycle]` table, as the user wrote it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Lifecycle {
    /// The payload gets `NOTIFY_SOCKET`; the container is ready when it sends `READY=1`
    /// (nspawn's `--notify-ready=yes`), not when its command was executed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub notify_ready: bool,
    /// `no` (default), `on-failure[:N]`, `always` or `unless-stopped`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart: Option<String>,
    /// The health check, run with `/bin/sh -c` inside the container (through exec);
    /// `none` turns off the image's HEALTHCHECK.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_cmd: Option<String>,
    /// Time between checks (`30s`, `1m`, `500ms`; default 30s, or the image's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_interval: Option<String>,
    /// How long one check may take (default 30s, or the image's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_timeout: Option<String>,
    /// Failures in a row that make the container unhealthy (default 3, or the image's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_retries: Option<u32>,
    /// Failures during this time after the start do not count (default 0s, or the image's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_start_period: Option<String>,
    /// What berthd does when it turns unhealthy: none (default), kill or restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_on_failure: Option<String>,
}

impl Lifecycle {
    pub fn is_default(&self) -> bool {
        *self == Lifecycle::default()
    }
}

/// When berthd starts a container again after it exited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RestartPolicy {
    /// Never.
    #[default]
    No,
    /// After a non-zero exit, at most `max` times in a row (`None`: without bound).
    OnFailure { max: Option<u32> },
    /// After every exit, unless `berthctl stop` stopped it; and when berthd starts (at boot).
    Always,
    /// As `Always`, but a container the user stopped stays stopped across berthd restarts and
    /// reboots too.
    UnlessStopped,
}

impl RestartPolicy {
    pub fn parse(s: &str) -> Result<RestartPolicy, LifecycleError> {
        let bad = || LifecycleError::Restart(s.into());
        Ok(match s.split_once(':') {
            None => match s {
                "" | "no" => RestartPolicy::No,
                "on-failure" => RestartPolicy::OnFailure { max: None },
                "always" => RestartPolicy::Always,
                "unless-stopped" => RestartPolicy::UnlessStopped,
                _ => return Err(bad()),
            },
            Some(("on-failure", n)) => {
                let n: u32 = n.parse().map_err(|_| bad())?;
                if n > MAX_RETRIES {
                    return Err(bad());
                }
                // podman: 0 retries means no bound.
                RestartPolicy::OnFailure {
                    max: (n > 0).then_some(n),
                }
            }
            Some(_) => return Err(bad()),
        })
    }

    /// Whether an exit with `status` is followed by a restart, after `restarts` restarts in a
    /// row, when the user did (not) stop it.
    pub fn restarts_after(self, status: i32, restarts: u32, stopped_by_user: bool) -> bool {
        if stopped_by_user {
            return false;
        }
        match self {
            RestartPolicy::No => false,
            RestartPolicy::OnFailure { max } => status != 0 && max.is_none_or(|m| restarts < m),
            RestartPolicy::Always | RestartPolicy::UnlessStopped => true,
        }
    }
}

impl std::fmt::Display for RestartPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RestartPolicy::No => f.write_str("no"),
            RestartPolicy::OnFailure { max: None } => f.write_str("on-failure"),
            RestartPolicy::OnFailure { max: Some(n) } => write!(f, "on-failure:{n}"),
            RestartPolicy::Always => f.write_str("always"),
            RestartPolicy::UnlessStopped => f.write_str("unless-stopped"),
        }
    }
}

/// The checked `[lifecycle]` table.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LifeSpec {
    pub notify_ready: bool,
    pub restart: RestartPolicy,
    pub health: HealthSettings,
}

/// What berthd does when a container turns unhealthy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnFailure {
    #[default]
    None,
    Kill,
    Restart,
}

impl std::fmt::Display for OnFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            OnFailure::None => "none",
            OnFailure::Kill => "kill",
            OnFailure::Restart => "restart",
        })
    }
}

/// The health settings the user gave; each unset one falls back to the image's HEALTHCHECK,
/// then to docker's default ([`HealthSettings::resolve`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HealthSettings {
    /// `Some(argv)`: this check; `Some([])`: none at all (`--health-cmd none`); `None`: the
    /// image's, if it has one.
    pub test: Option<Vec<String>>,
    pub interval: Option<Duration>,
    pub timeout: Option<Duration>,
    pub retries: Option<u32>,
    pub start_period: Option<Duration>,
    pub on_failure: OnFailure,
}

/// A health check as it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub argv: Vec<String>,
    pub interval: Duration,
    pub timeout: Duration,
    pub retries: u32,
    pub start_period: Duration,
    pub on_failure: OnFailure,
}

/// Docker's defaults.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_RETRIES: u32 = 3;
/// Checks closer than this are refused (a check is an exec: a helper and a few syscalls).
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);

impl HealthSettings {
    /// The check that runs, with the image's HEALTHCHECK under the user's settings.
    pub fn resolve(&self, image: Option<&crate::image::Healthcheck>) -> Option<HealthCheck> {
        let ns = |n: u64| (n > 0).then(|| Duration::from_nanos(n));
        let argv = match (&self.test, image) {
            (Some(t), _) if t.is_empty() => return None,
            (Some(t), _) => t.clone(),
            (None, Some(h)) => image_argv(&h.test)?,
            (None, None) => return None,
        };
        Some(HealthCheck {
            argv,
            interval: self
                .interval
                .or(image.and_then(|h| ns(h.interval_ns)))
                .unwrap_or(DEFAULT_INTERVAL)
                .max(MIN_INTERVAL),
            timeout: self
                .timeout
                .or(image.and_then(|h| ns(h.timeout_ns)))
                .unwrap_or(DEFAULT_TIMEOUT),
            retries: self
                .retries
                .or(image.map(|h| h.retries).filter(|r| *r > 0))
                .unwrap_or(DEFAULT_RETRIES)
                .max(1),
            start_period: self
                .start_period
                .or(image.and_then(|h| ns(h.start_period_ns)))
                .unwrap_or_default(),
            on_failure: self.on_failure,
        })
    }
}

/// The argv of an image's `Test` (`CMD args…`, `CMD-SHELL command`, `NONE`).
fn image_argv(test: &[String]) -> Option<Vec<String>> {
    match test.split_first() {
        Some((k, rest)) if k == "CMD" && !rest.is_empty() => Some(rest.to_vec()),
        Some((k, rest)) if k == "CMD-SHELL" && !rest.is_empty() => {
            Some(vec!["/bin/sh".into(), "-c".into(), rest.join(" ")])
        }
        _ => None,
    }
}

/// A duration as podman and docker take them: `1h2m3s`, `500ms`, `1.5s`, `90` (seconds).
pub fn parse_duration(s: &str) -> Option<Duration> {
    if let Ok(n) = s.parse::<u64>() {
        return Some(Duration::from_secs(n));
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, tail) = rest.split_at(num_end);
        let unit_end = tail
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_end);
        let n: f64 = num.parse().ok()?;
        let secs = match unit {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        let d = n * secs;
        if !d.is_finite() || d > 1e9 {
            return None;
        }
        total += Duration::from_secs_f64(d);
        rest = tail;
    }
    Some(total)
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum LifecycleError {
    #[error("restart policy {0:?}: use no, on-failure[:N], always or unless-stopped")]
    Restart(String),
    #[error("restart policy {0:?} cannot be combined with removal at exit (--rm)")]
    RestartWithRemove(String),
    #[error("health {0} {1:?}: use a duration such as 30s, 1m30s or 500ms")]
    HealthDuration(&'static str, String),
    #[error("health interval {0:?}: at least 100ms")]
    HealthInterval(String),
    #[error("health on-failure {0:?}: use none, kill or restart")]
    HealthOnFailure(String),
    #[error("health command: empty, or longer than 64 KiB")]
    HealthCmd,
}

/// Type the `[lifecycle]` table; `auto_remove` is the definition's `--rm`.
pub fn check(l: &Lifecycle, auto_remove: bool) -> Result<LifeSpec, LifecycleError> {
    let restart = l
        .restart
        .as_deref()
        .map(RestartPolicy::parse)
        .transpose()?
        .unwrap_or_default();
    // As podman: a container removed at its exit has nothing left to restart.
    if auto_remove && restart != RestartPolicy::No {
        return Err(LifecycleError::RestartWithRemove(restart.to_string()));
    }
    let dur =
        |what: &'static str, v: &Option<String>| -> Result<Option<Duration>, LifecycleError> {
            v.as_deref()
                .map(|s| {
                    parse_duration(s).ok_or_else(|| LifecycleError::HealthDuration(what, s.into()))
                })
                .transpose()
        };
    let interval = dur("interval", &l.health_interval)?;
    if let Some(i) = interval
        && i < MIN_INTERVAL
    {
        return Err(LifecycleError::HealthInterval(
            l.health_interval.clone().unwrap_or_default(),
        ));
    }
    let test = match l.health_cmd.as_deref() {
        None => None,
        Some("none") => Some(vec![]),
        Some(c) if c.trim().is_empty() || c.len() > 64 * 1024 || c.contains('\0') => {
            return Err(LifecycleError::HealthCmd);
        }
        Some(c) => Some(vec!["/bin/sh".into(), "-c".into(), c.into()]),
    };
    let on_failure = match l.health_on_failure.as_deref() {
        None | Some("none") => OnFailure::None,
        Some("kill") => OnFailure::Kill,
        Some("restart") => OnFailure::Restart,
        Some(o) => return Err(LifecycleError::HealthOnFailure(o.into())),
    };
    Ok(LifeSpec {
        notify_ready: l.notify_ready,
        restart,
        health: HealthSettings {
            test,
            interval,
            timeout: dur("timeout", &l.health_timeout)?,
            retries: l.health_retries,
            start_period: dur("start period", &l.health_start_period)?,
            on_failure,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_policies_parse_as_podman_spells_them() {
        use RestartPolicy::*;
        assert_eq!(RestartPolicy::parse("no").unwrap(), No);
        assert_eq!(RestartPolicy::parse("always").unwrap(), Always);
        assert_eq!(
            RestartPolicy::parse("unless-stopped").unwrap(),
            UnlessStopped
        );
        assert_eq!(
            RestartPolicy::parse("on-failure").unwrap(),
            OnFailure { max: None }
        );
        assert_eq!(
            RestartPolicy::parse("on-failure:3").unwrap(),
            OnFailure { max: Some(3) }
        );
        assert_eq!(
            RestartPolicy::parse("on-failure:0").unwrap(),
            OnFailure { max: None }
        );
        for bad in [
            "sometimes",
            "always:3",
            "on-failure:",
            "on-failure:-1",
            "on-failure:x",
            "on-failure:99999999999",
            "On-Failure",
        ] {
            assert!(RestartPolicy::parse(bad).is_err(), "{bad}");
        }
        for s in [
            "no",
            "on-failure",
            "on-failure:5",
            "always",
            "unless-stopped",
        ] {
            assert_eq!(RestartPolicy::parse(s).unwrap().to_string(), s);
        }
    }

    #[test]
    fn who_restarts_after_which_exit() {
        use RestartPolicy::*;
        assert!(!No.restarts_after(1, 0, false));
        assert!(OnFailure { max: None }.restarts_after(1, 100, false));
        assert!(!OnFailure { max: None }.restarts_after(0, 0, false));
        assert!(OnFailure { max: Some(2) }.restarts_after(137, 1, false));
        assert!(!OnFailure { max: Some(2) }.restarts_after(137, 2, false));
        assert!(Always.restarts_after(0, 50, false));
        assert!(UnlessStopped.restarts_after(0, 50, false));
        for p in [Always, UnlessStopped, OnFailure { max: None }] {
            assert!(!p.restarts_after(1, 0, true), "{p}");
        }
    }

    #[test]
    fn a_restart_policy_and_removal_at_exit_exclude_each_other() {
        let l = Lifecycle {
            restart: Some("always".into()),
            ..Default::default()
        };
        assert_eq!(
            check(&l, true),
            Err(LifecycleError::RestartWithRemove("always".into()))
        );
        assert_eq!(check(&l, false).unwrap().restart, RestartPolicy::Always);
        let no = Lifecycle {
            restart: Some("no".into()),
            notify_ready: true,
            ..Default::default()
        };
        let s = check(&no, true).unwrap();
        assert!(s.notify_ready);
        assert_eq!(s.restart, RestartPolicy::No);
    }

    #[test]
    fn durations_parse_as_podman_takes_them() {
        assert_eq!(parse_duration("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        for bad in ["", "s", "5x", "-1s", "1e9h", "ms5"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_users_health_settings_override_the_images() {
        let image = crate::image::Healthcheck {
            test: vec!["CMD-SHELL".into(), "test -e /ok".into()],
            interval_ns: 5_000_000_000,
            retries: 7,
            ..Default::default()
        };
        let l = Lifecycle {
            health_interval: Some("1s".into()),
            health_on_failure: Some("restart".into()),
            ..Default::default()
        };
        let c = check(&l, false)
            .unwrap()
            .health
            .resolve(Some(&image))
            .unwrap();
        assert_eq!(c.argv, ["/bin/sh", "-c", "test -e /ok"]);
        assert_eq!(c.interval, Duration::from_secs(1));
        assert_eq!(c.retries, 7);
        assert_eq!(c.timeout, DEFAULT_TIMEOUT);
        assert_eq!(c.on_failure, OnFailure::Restart);
        // `none` turns the image's off; NONE in the image is none.
        let off = Lifecycle {
            health_cmd: Some("none".into()),
            ..Default::default()
        };
        assert!(
            check(&off, false)
                .unwrap()
                .health
                .resolve(Some(&image))
                .is_none()
        );
        let none = crate::image::Healthcheck {
            test: vec!["NONE".into()],
            ..Default::default()
        };
        assert!(HealthSettings::default().resolve(Some(&none)).is_none());
        assert!(HealthSettings::default().resolve(None).is_none());
        for bad in [
            Lifecycle {
                health_interval: Some("10ms".into()),
                ..Default::default()
            },
            Lifecycle {
                health_timeout: Some("soon".into()),
                ..Default::default()
            },
            Lifecycle {
                health_on_failure: Some("panic".into()),
                ..Default::default()
            },
            Lifecycle {
                health_cmd: Some(" ".into()),
                ..Default::default()
            },
        ] {
            assert!(check(&bad, false).is_err(), "{bad:?}");
        }
    }
}
