//! Failpoints for the fault-injection tests (tests/faults.rs): with `BERTH_FAILPOINT=STEP` in
//! its environment, berthd aborts — as abruptly as `kill -9`, but at a known point — when it
//! reaches the named step. Read once, when berthd starts; unset, every [`hit`] is one atomic
//! load. The steps are the points between two effects of a flow where a crash must leave
//! nothing half done:
//!
//! | step | where |
//! | --- | --- |
//! | `create:after-staging` | the container's directory is complete under its staging name |
//! | `start:after-intent` | the start is recorded as in progress, nothing made yet |
//! | `start:after-scope` | the scope exists and holds the helper; not released yet |
//! | `start:before-record` | the payload runs; not recorded as running yet |
//! | `stop:after-signal` | the stop signal is sent; the exit is not recorded yet |
//! | `exit:after-record` | the exit is recorded; the scope is not stopped yet |
//! | `remove:after-rename` | the directory is moved aside; not deleted, not announced |

use std::sync::OnceLock;

/// The environment variable naming the step to abort at.
pub const VAR: &str = "BERTH_FAILPOINT";

static STEP: OnceLock<Option<String>> = OnceLock::new();

/// Read `BERTH_FAILPOINT`; call once at startup.
pub fn init() {
    let step = std::env::var(VAR).ok().filter(|s| !s.is_empty());
    if let Some(s) = &step {
        tracing::warn!("{VAR}={s}: berthd will abort when it reaches that step");
    }
    if STEP.set(step).is_err() {
        tracing::debug!("failpoints were already read");
    }
}

/// Abort here if this is the step `BERTH_FAILPOINT` names.
pub fn hit(step: &'static str) {
    if let Some(Some(want)) = STEP.get()
        && want == step
    {
        tracing::error!("failpoint {step}: aborting");
        // A crash, not a core dump: nothing to inspect, and nothing left on the disk.
        if let Err(e) =
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_CORE, 0, 0)
        {
            tracing::warn!("cannot turn core dumps off: {e}, ignoring");
        }
        std::process::abort();
    }
}
