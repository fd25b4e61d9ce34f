//! How a container's run is supervised by berthd: readiness (`--notify-ready`) and the
//! restart policy (`--restart`, spelled as podman and docker spell it). The `[lifecycle]`
//! table of a definition, and the typed [`LifeSpec`] that [`check`] makes of it.

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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LifeSpec {
    pub notify_ready: bool,
    pub restart: RestartPolicy,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum LifecycleError {
    #[error("restart policy {0:?}: use no, on-failure[:N], always or unless-stopped")]
    Restart(String),
    #[error("restart policy {0:?} cannot be combined with removal at exit (--rm)")]
    RestartWithRemove(String),
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
    Ok(LifeSpec {
        notify_ready: l.notify_ready,
        restart,
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
        };
        let s = check(&no, true).unwrap();
        assert!(s.notify_ready);
        assert_eq!(s.restart, RestartPolicy::No);
    }
}
