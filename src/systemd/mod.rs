//! Talking to systemd (`org.freedesktop.systemd1`): transient scopes the way nspawn makes them
//! (subscribe, watch `JobRemoved`, `StartTransientUnit`, wait; only `done` is success), unit
//! stop and kill, and a small typed builder for unit properties.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use thiserror::Error;
use tokio::sync::oneshot;
use zbus::{OwnedObjectPath, Variant, proxy};

use crate::spec::PropValue;

#[proxy(
    interface = "org.freedesktop.systemd1.Manager",
    default_service = "org.freedesktop.systemd1",
    default_path = "/org/freedesktop/systemd1"
)]
pub trait SystemdManager {
    fn subscribe(&self) -> zbus::Result<()>;
    fn start_transient_unit(
        &self,
        name: &str,
        mode: &str,
        properties: &[(&str, Variant<'_>)],
        aux: &[(&str, &[(&str, Variant<'_>)])],
    ) -> zbus::Result<OwnedObjectPath>;
    fn stop_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn kill_unit(&self, name: &str, whom: &str, signal: i32) -> zbus::Result<()>;
    fn get_unit(&self, name: &str) -> zbus::Result<OwnedObjectPath>;
    fn unref_unit(&self, name: &str) -> zbus::Result<()>;
    fn set_unit_properties(
        &self,
        name: &str,
        runtime: bool,
        properties: &[(&str, Variant<'_>)],
    ) -> zbus::Result<()>;
    fn get_unit_processes(&self, name: &str) -> zbus::Result<Vec<(String, u32, String)>>;
    #[zbus(signal)]
    fn job_removed(
        &self,
        id: u32,
        job: OwnedObjectPath,
        unit: String,
        result: String,
    ) -> zbus::Result<()>;
}

#[derive(Debug, Error)]
pub enum SystemdError {
    #[error("systemd call {call} for {unit} failed: {source}")]
    Call {
        call: &'static str,
        unit: String,
        source: zbus::Error,
    },
    #[error("systemd job for {unit} ended with result {result:?}")]
    Job { unit: String, result: String },
    #[error("systemd job for {unit} did not finish within {0:?}", JOB_TIMEOUT)]
    Timeout { unit: String },
}

/// How long a unit job may take.
pub const JOB_TIMEOUT: Duration = Duration::from_secs(30);

/// Properties for a transient unit, built with typed setters.
#[derive(Default)]
pub struct UnitProperties(Vec<(&'static str, Variant<'static>)>);

impl UnitProperties {
    pub fn string(mut self, key: &'static str, v: impl Into<String>) -> Self {
        self.0.push((key, Variant::from(v.into())));
        self
    }
    pub fn boolean(mut self, key: &'static str, v: bool) -> Self {
        self.0.push((key, Variant::from(v)));
        self
    }
    pub fn u64(mut self, key: &'static str, v: u64) -> Self {
        self.0.push((key, Variant::from(v)));
        self
    }
    pub fn pids(mut self, pids: Vec<u32>) -> Self {
        self.0.push(("PIDs", Variant::from(pids)));
        self
    }
    pub fn value(mut self, key: &'static str, v: &PropValue) -> Self {
        let v = match v {
            PropValue::U64(n) => Variant::from(*n),
            PropValue::Str(s) => Variant::from(s.clone()),
            PropValue::Bool(b) => Variant::from(*b),
            PropValue::Bytes(b) => Variant::from(b.clone()),
            PropValue::PathU64(l) => Variant::from(l.clone()),
            PropValue::PathStr(l) => Variant::from(l.clone()),
        };
        self.0.push((key, v));
        self
    }
    /// Every property of `props`, in order.
    pub fn values<'a>(
        self,
        props: impl IntoIterator<Item = &'a (&'static str, PropValue)>,
    ) -> Self {
        props.into_iter().fold(self, |p, (k, v)| p.value(k, v))
    }
    /// The property names, in order (for tests and logs).
    pub fn keys(&self) -> Vec<&'static str> {
        self.0.iter().map(|(k, _)| *k).collect()
    }
}

/// The properties of a container's scope: in `machine.slice`, delegated, collected when it
/// ends (also when failed), referenced by berthd while it starts it, with accounting on so that
/// every controller's files exist for stats (on hybrid hosts systemd only creates a unit's v1
/// cgroups for the controllers it needs).
pub fn scope_properties(description: &str, leader: u32) -> UnitProperties {
    UnitProperties::default()
        .string("Description", description)
        .string("Slice", "machine.slice")
        .boolean("Delegate", true)
        .string("CollectMode", "inactive-or-failed")
        .boolean("AddRef", true)
        .boolean("CPUAccounting", true)
        .boolean("MemoryAccounting", true)
        .boolean("TasksAccounting", true)
        .boolean("IOAccounting", true)
        .pids(vec![leader])
}

/// A systemd client with one shared `JobRemoved` watcher.
#[derive(Clone)]
pub struct Systemd {
    proxy: SystemdManagerProxy<'static>,
    jobs: Arc<Mutex<Jobs>>,
}

#[derive(Default)]
struct Jobs {
    waiting: HashMap<OwnedObjectPath, oneshot::Sender<String>>,
    /// Results that arrived before anyone waited (the reply and the signal race).
    finished: HashMap<OwnedObjectPath, String>,
}

impl Systemd {
    /// Connect, subscribe and start watching job results.
    pub async fn new(conn: &zbus::Connection) -> zbus::Result<Self> {
        let proxy = SystemdManagerProxy::new(conn).await?;
        let mut stream = proxy.receive_job_removed().await?;
        proxy.subscribe().await?;
        let jobs: Arc<Mutex<Jobs>> = Arc::default();
        let j = jobs.clone();
        tokio::spawn(async move {
            while let Some(sig) = stream.next().await {
                let Ok(args) = sig.args() else { continue };
                let mut jobs = j.lock().unwrap();
                if let Some(tx) = jobs.waiting.remove(&args.job) {
                    let _ = tx.send(args.result);
                } else {
                    if jobs.finished.len() > 1024 {
                        jobs.finished.clear();
                    }
                    jobs.finished.insert(args.job, args.result);
                }
            }
        });
        Ok(Systemd { proxy, jobs })
    }

    async fn wait_job(&self, unit: &str, job: OwnedObjectPath) -> Result<(), SystemdError> {
        let rx = {
            let mut jobs = self.jobs.lock().unwrap();
            if let Some(result) = jobs.finished.remove(&job) {
                return check(unit, result);
            }
            let (tx, rx) = oneshot::channel();
            jobs.waiting.insert(job.clone(), tx);
            rx
        };
        match tokio::time::timeout(JOB_TIMEOUT, rx).await {
            Ok(Ok(result)) => check(unit, result),
            _ => {
                self.jobs.lock().unwrap().waiting.remove(&job);
                Err(SystemdError::Timeout { unit: unit.into() })
            }
        }
    }

    /// Start a transient scope and wait for its job: only `done` is success.
    pub async fn start_scope(
        &self,
        unit: &str,
        props: &UnitProperties,
    ) -> Result<(), SystemdError> {
        let job = self
            .proxy
            .start_transient_unit(
                unit,
                "fail",
                &props
                    .0
                    .iter()
                    .map(|(k, v)| (*k, v.clone()))
                    .collect::<Vec<_>>(),
                &[],
            )
            .await
            .map_err(|source| SystemdError::Call {
                call: "StartTransientUnit",
                unit: unit.into(),
                source,
            })?;
        self.wait_job(unit, job).await
    }

    /// Stop a unit, wait until it is stopped, and drop the reference `AddRef=yes` took, so
    /// that systemd collects it. A unit that is already gone is fine.
    pub async fn stop_unit(&self, unit: &str) -> Result<(), SystemdError> {
        let stopped = match self.proxy.stop_unit(unit, "replace").await {
            Ok(job) => self.wait_job(unit, job).await,
            Err(e) if is_no_such_unit(&e) => return Ok(()),
            Err(source) => Err(SystemdError::Call {
                call: "StopUnit",
                unit: unit.into(),
                source,
            }),
        };
        match self.proxy.unref_unit(unit).await {
            Err(e) if !is_no_such_unit(&e) && !is_not_referenced(&e) => {
                tracing::warn!("cannot drop the reference on {unit}: {e}, ignoring")
            }
            _ => {}
        }
        stopped
    }

    /// Send a signal to the processes of a unit (`whom`: main, control or all).
    pub async fn kill_unit(&self, unit: &str, whom: &str, signal: i32) -> Result<(), SystemdError> {
        match self.proxy.kill_unit(unit, whom, signal).await {
            Err(e) if is_no_such_unit(&e) => Ok(()),
            r => r.map_err(|source| SystemdError::Call {
                call: "KillUnit",
                unit: unit.into(),
                source,
            }),
        }
    }

    /// Change properties of a live unit (`runtime`: until it stops, not written to disk).
    pub async fn set_unit_properties(
        &self,
        unit: &str,
        runtime: bool,
        props: &[(&'static str, PropValue)],
    ) -> Result<(), SystemdError> {
        let p = UnitProperties::default().values(props);
        self.proxy
            .set_unit_properties(unit, runtime, &p.0)
            .await
            .map_err(|source| SystemdError::Call {
                call: "SetUnitProperties",
                unit: unit.into(),
                source,
            })
    }

    /// Whether systemd knows the unit (loaded, active or not yet collected).
    pub async fn unit_exists(&self, unit: &str) -> bool {
        self.proxy.get_unit(unit).await.is_ok()
    }
}

fn check(unit: &str, result: String) -> Result<(), SystemdError> {
    if result == "done" {
        Ok(())
    } else {
        Err(SystemdError::Job {
            unit: unit.into(),
            result,
        })
    }
}

fn is_no_such_unit(e: &zbus::Error) -> bool {
    matches!(e, zbus::Error::MethodError(name, _, _) if name.as_str() == "org.freedesktop.systemd1.NoSuchUnit"
        || name.as_str() == "org.freedesktop.systemd1.LoadFailed")
}

fn is_not_referenced(e: &zbus::Error) -> bool {
    matches!(e, zbus::Error::MethodError(name, _, _) if name.as_str() == "org.freedesktop.systemd1.NotReferenced")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_properties_are_delegated_in_machine_slice() {
        let p = scope_properties("berth container web", 42);
        assert_eq!(
            p.keys(),
            [
                "Description",
                "Slice",
                "Delegate",
                "CollectMode",
                "AddRef",
                "CPUAccounting",
                "MemoryAccounting",
                "TasksAccounting",
                "IOAccounting",
                "PIDs"
            ]
        );
        assert!(
            p.0.iter()
                .any(|(k, v)| *k == "Slice" && *v == Variant::from("machine.slice"))
        );
        assert!(
            p.0.iter()
                .any(|(k, v)| *k == "Delegate" && *v == Variant::from(true))
        );
    }
}
