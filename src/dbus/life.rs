//! The Container properties of readiness and restart policy (see `daemon::life`).

use serde::{Deserialize, Serialize};
use zbus::Type;

/// What a container's `Ready`, `StatusText`, `NotifyReady`, `RestartPolicy`, `RestartCount`
/// and `NextRestartAt` properties show.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct LifeInfo {
    /// Running, and (with `--notify-ready`) its payload sent `READY=1`.
    pub ready: bool,
    /// The last `STATUS=` its payload sent during this run.
    pub status_text: String,
    /// Created with `--notify-ready`.
    pub notify_ready: bool,
    /// no, on-failure[:N], always or unless-stopped.
    pub restart_policy: String,
    /// Restarts made by the policy since the container was last started by a user.
    pub restart_count: u32,
    /// When the policy's pending restart is due, µs since the epoch; 0 when none is.
    pub next_restart_at: u64,
    /// "" (no health check), starting, healthy or unhealthy.
    pub health: String,
    /// Failed checks in a row.
    pub health_failures: u32,
}
