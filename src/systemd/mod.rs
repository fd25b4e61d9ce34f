//! Talking to systemd (`org.freedesktop.systemd1`): transient scopes the way nspawn makes them
//! (subscribe, watch `JobRemoved`, `StartTransientUnit`, wait; only `done` is success), unit
//! stop and kill; typed unit properties in [`properties`].

pub mod machined;
pub mod properties;
pub mod units;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use thiserror::Error;
use tokio::sync::oneshot;
use zbus::{OwnedObjectPath, Variant, proxy};

pub use properties::{PropValue, Property, UnitProperties, scope_properties};

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
    fn restart_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn kill_unit(&self, name: &str, whom: &str, signal: i32) -> zbus::Result<()>;
    fn get_unit(&self, name: &str) -> zbus::Result<OwnedObjectPath>;
    fn get_job(&self, id: u32) -> zbus::Result<OwnedObjectPath>;
    fn set_unit_properties(
        &self,
        name: &str,
        runtime: bool,
        properties: &[(&str, Variant<'_>)],
    ) -> zbus::Result<()>;
    fn attach_processes_to_unit(
        &self,
        name: &str,
        subcgroup: &str,
        pids: &[u32],
    ) -> zbus::Result<()>;
    fn get_unit_processes(&self, name: &str) -> zbus::Result<Vec<(String, u32, String)>>;
    #[allow(clippy::type_complexity)]
    fn list_units_by_patterns(
        &self,
        states: &[&str],
        patterns: &[&str],
    ) -> zbus::Result<
        Vec<(
            String,
            String,
            String,
            String,
            String,
            String,
            OwnedObjectPath,
            u32,
            String,
            OwnedObjectPath,
        )>,
    >;
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
/// How often a job still waited for is looked up, in case its JobRemoved was lost.
const JOB_POLL: Duration = Duration::from_secs(2);

/// What the unit of a job is when the job has done its work.
#[derive(Debug, Clone, Copy)]
enum Want {
    Active,
    Inactive,
}

/// A systemd client with one shared `JobRemoved` watcher.
#[derive(Clone)]
pub struct Systemd {
    proxy: SystemdManagerProxy<'static>,
    jobs: Arc<Mutex<Jobs>>,
}

/// Job results berthd is waiting for. systemd broadcasts `JobRemoved` for every job on the
/// machine; a result is only kept while one of berthd's own calls may still claim it (the
/// method reply and the signal race), and only for berth's units, so the table stays small
/// however many units run — and a result is never dropped while its caller is on its way.
#[derive(Default)]
struct Jobs {
    waiting: HashMap<OwnedObjectPath, oneshot::Sender<String>>,
    /// Results that arrived before their caller waited, with when they arrived.
    finished: HashMap<OwnedObjectPath, (String, Instant)>,
    /// Job-making calls whose reply has not been claimed yet.
    in_flight: usize,
}

/// Unclaimed results older than this are dropped (a caller claims its result within
/// milliseconds of the reply).
const UNCLAIMED: Duration = Duration::from_secs(60);

impl Jobs {
    fn finished(&mut self, job: OwnedObjectPath, unit: &str, result: String) {
        if let Some(tx) = self.waiting.remove(&job) {
            if tx.send(result).is_err() {
                tracing::debug!("job {job} finished after its caller gave up");
            }
            return;
        }
        if self.in_flight == 0 || !unit.starts_with("berth") {
            return;
        }
        let now = Instant::now();
        self.finished
            .retain(|_, (_, at)| now.duration_since(*at) < UNCLAIMED);
        self.finished.insert(job, (result, now));
    }
}

/// Counts a job-making call from before it is sent until its job is claimed.
struct InFlight(Arc<Mutex<Jobs>>);

impl InFlight {
    fn new(jobs: &Arc<Mutex<Jobs>>) -> InFlight {
        jobs.lock().unwrap().in_flight += 1;
        InFlight(jobs.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.lock().unwrap().in_flight -= 1;
    }
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
                j.lock()
                    .unwrap()
                    .finished(args.job, &args.unit, args.result);
            }
        });
        Ok(Systemd { proxy, jobs })
    }

    /// Wait for `job`, which a call counted by `_call` made, to reach `want`.
    ///
    /// The result normally comes with `JobRemoved`. systemd sends it to the job's client even
    /// unsubscribed, but a signal is lost if systemd's own bus connection drops and comes back
    /// (sd-bus closes it when, for one, an AddMatch of systemd's fails). So while waiting,
    /// every [`JOB_POLL`] berthd asks whether the job still exists; once it is gone without a
    /// signal, the unit's state says how it ended. A start never fails because a signal was
    /// lost, and a job that really hangs still ends at [`JOB_TIMEOUT`].
    async fn wait_job(
        &self,
        unit: &str,
        job: OwnedObjectPath,
        want: Want,
        _call: InFlight,
    ) -> Result<(), SystemdError> {
        let mut rx = {
            let mut jobs = self.jobs.lock().unwrap();
            if let Some((result, _)) = jobs.finished.remove(&job) {
                return check(unit, result);
            }
            let (tx, rx) = oneshot::channel();
            jobs.waiting.insert(job.clone(), tx);
            rx
        };
        let deadline = tokio::time::Instant::now() + JOB_TIMEOUT;
        loop {
            let poll_at = (tokio::time::Instant::now() + JOB_POLL).min(deadline);
            match tokio::time::timeout_at(poll_at, &mut rx).await {
                Ok(Ok(result)) => return check(unit, result),
                // The watcher task is gone (the connection closed): ask systemd instead.
                Ok(Err(_)) => {}
                Err(_) if tokio::time::Instant::now() >= deadline => {
                    self.jobs.lock().unwrap().waiting.remove(&job);
                    return Err(SystemdError::Timeout { unit: unit.into() });
                }
                Err(_) => {}
            }
            if self.job_exists(&job).await {
                if tokio::time::Instant::now() >= deadline {
                    self.jobs.lock().unwrap().waiting.remove(&job);
                    return Err(SystemdError::Timeout { unit: unit.into() });
                }
                continue;
            }
            self.jobs.lock().unwrap().waiting.remove(&job);
            // The signal may have come in between.
            if let Ok(result) = rx.try_recv() {
                return check(unit, result);
            }
            let state = self.active_state(unit).await;
            tracing::warn!(
                "systemd job {job} for {unit} ended without a JobRemoved signal; {unit} is {}, ignoring",
                state.as_deref().unwrap_or("gone")
            );
            return match (want, state.as_deref()) {
                (Want::Active, Some("active")) => Ok(()),
                (Want::Inactive, None | Some("inactive") | Some("failed")) => Ok(()),
                (_, state) => Err(SystemdError::Job {
                    unit: unit.into(),
                    result: format!(
                        "unknown (no JobRemoved; the unit is {})",
                        state.unwrap_or("gone")
                    ),
                }),
            };
        }
    }

    /// Whether systemd still has the job (`false` only when it says there is no such job).
    async fn job_exists(&self, job: &OwnedObjectPath) -> bool {
        let Some(id) = job_id(job) else { return true };
        match self.proxy.get_job(id).await {
            Ok(_) => true,
            Err(zbus::Error::MethodError(name, _, _))
                if name.as_str() == "org.freedesktop.systemd1.NoSuchJob" =>
            {
                false
            }
            // systemd is off the bus for a moment, or busy: keep waiting.
            Err(_) => true,
        }
    }

    /// A unit's `ActiveState`, `None` when systemd does not know the unit.
    async fn active_state(&self, unit: &str) -> Option<String> {
        let path = self.proxy.get_unit(unit).await.ok()?;
        let props = zbus::fdo::PropertiesProxy::builder(self.proxy.inner().connection())
            .destination("org.freedesktop.systemd1")
            .path(path)
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await
            .ok()?;
        let iface =
            zbus::names::InterfaceName::from_static_str_unchecked("org.freedesktop.systemd1.Unit");
        let v = props.get(iface, "ActiveState").await.ok()?;
        String::try_from(v).ok()
    }

    /// A service's main process as systemd last recorded it: (ExecMainPID, ExecMainCode,
    /// ExecMainStatus), the code being waitid's (1 exited, 2 killed, 3 dumped; 0 while it
    /// runs). `None` when that cannot be read.
    pub async fn main_exit(&self, unit: &str) -> Option<(u32, i32, i32)> {
        let path = self.proxy.get_unit(unit).await.ok()?;
        let props = zbus::fdo::PropertiesProxy::builder(self.proxy.inner().connection())
            .destination("org.freedesktop.systemd1")
            .path(path)
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await
            .ok()?;
        let iface = zbus::names::InterfaceName::from_static_str_unchecked(
            "org.freedesktop.systemd1.Service",
        );
        let all = props.get_all(iface).await.ok()?;
        let get = |k: &str| all.get(k).and_then(|v| v.try_clone().ok());
        let pid = u32::try_from(get("ExecMainPID")?).ok()?;
        let code = i32::try_from(get("ExecMainCode")?).ok()?;
        let status = i32::try_from(get("ExecMainStatus")?).ok()?;
        Some((pid, code, status))
    }

    /// Start a transient scope and wait for its job: only `done` is success.
    pub async fn start_scope(
        &self,
        unit: &str,
        props: &UnitProperties,
    ) -> Result<(), SystemdError> {
        let call = InFlight::new(&self.jobs);
        let job = self
            .proxy
            .start_transient_unit(unit, "fail", &props.variants(), &[])
            .await
            .map_err(|source| SystemdError::Call {
                call: "StartTransientUnit",
                unit: unit.into(),
                source,
            })?;
        self.wait_job(unit, job, Want::Active, call).await
    }

    /// Stop a unit and wait until it is stopped. A unit that is already gone is fine.
    pub async fn stop_unit(&self, unit: &str) -> Result<(), SystemdError> {
        let call = InFlight::new(&self.jobs);
        match self.proxy.stop_unit(unit, "replace").await {
            Ok(job) => self.wait_job(unit, job, Want::Inactive, call).await,
            Err(e) if is_no_such_unit(&e) => Ok(()),
            Err(source) => Err(SystemdError::Call {
                call: "StopUnit",
                unit: unit.into(),
                source,
            }),
        }
    }

    /// Queue a restart of a unit (a `berth@` service whose container turned unhealthy); does
    /// not wait for it: the unit's own start path runs it.
    pub async fn restart_unit(&self, unit: &str) -> Result<(), SystemdError> {
        self.proxy
            .restart_unit(unit, "replace")
            .await
            .map(drop)
            .map_err(|source| SystemdError::Call {
                call: "RestartUnit",
                unit: unit.into(),
                source,
            })
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
        props: &[Property],
    ) -> Result<(), SystemdError> {
        let p = UnitProperties::default().extend(props.iter().cloned());
        self.proxy
            .set_unit_properties(unit, runtime, &p.variants())
            .await
            .map_err(|source| SystemdError::Call {
                call: "SetUnitProperties",
                unit: unit.into(),
                source,
            })
    }

    /// Move processes into `subcgroup` of a delegated unit's cgroup (made if missing).
    pub async fn attach_processes(
        &self,
        unit: &str,
        subcgroup: &str,
        pids: &[u32],
    ) -> Result<(), SystemdError> {
        self.proxy
            .attach_processes_to_unit(unit, subcgroup, pids)
            .await
            .map_err(|source| SystemdError::Call {
                call: "AttachProcessesToUnit",
                unit: unit.into(),
                source,
            })
    }

    /// Whether systemd knows the unit (loaded, active or not yet collected).
    pub async fn unit_exists(&self, unit: &str) -> bool {
        self.proxy.get_unit(unit).await.is_ok()
    }

    /// The units matching a glob `pattern` that have processes or are about to (active,
    /// activating, deactivating, reloading).
    pub async fn live_units(&self, pattern: &str) -> Result<Vec<String>, SystemdError> {
        let units = self
            .proxy
            .list_units_by_patterns(
                &["active", "activating", "deactivating", "reloading"],
                &[pattern],
            )
            .await
            .map_err(|source| SystemdError::Call {
                call: "ListUnitsByPatterns",
                unit: pattern.into(),
                source,
            })?;
        Ok(units.into_iter().map(|u| u.0).collect())
    }

    /// Whether `unit` is live (see [`Systemd::live_units`]); false when that cannot be told.
    pub async fn unit_is_active(&self, unit: &str) -> bool {
        match self.live_units(unit).await {
            Ok(u) => u.iter().any(|u| u == unit),
            Err(e) => {
                tracing::warn!("cannot tell whether {unit} runs: {e}, assuming not");
                false
            }
        }
    }

    /// The PIDs of the processes in `unit`; empty when it has none or does not exist.
    pub async fn unit_processes(&self, unit: &str) -> Result<Vec<u32>, SystemdError> {
        match self.proxy.get_unit_processes(unit).await {
            Ok(p) => Ok(p.into_iter().map(|(_, pid, _)| pid).collect()),
            Err(e) if is_no_such_unit(&e) => Ok(Vec::new()),
            Err(source) => Err(SystemdError::Call {
                call: "GetUnitProcesses",
                unit: unit.into(),
                source,
            }),
        }
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

/// The number at the end of a job's object path (`/org/freedesktop/systemd1/job/N`).
fn job_id(job: &OwnedObjectPath) -> Option<u32> {
    job.as_str().rsplit('/').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(n: u32) -> OwnedObjectPath {
        OwnedObjectPath::try_from(format!("/org/freedesktop/systemd1/job/{n}")).unwrap()
    }

    #[test]
    fn early_results_are_kept_only_while_a_call_may_claim_them() {
        let jobs: Arc<Mutex<Jobs>> = Arc::default();
        // Nobody is calling: other units' jobs and ours are not kept.
        jobs.lock()
            .unwrap()
            .finished(path(1), "berth-a.scope", "done".into());
        assert!(jobs.lock().unwrap().finished.is_empty());
        let call = InFlight::new(&jobs);
        // Thousands of foreign jobs while a call is in flight never push ours out.
        jobs.lock()
            .unwrap()
            .finished(path(2), "berth-a.scope", "done".into());
        for n in 3..5000 {
            jobs.lock()
                .unwrap()
                .finished(path(n), "user@0.service", "done".into());
        }
        assert_eq!(jobs.lock().unwrap().finished.len(), 1);
        assert!(jobs.lock().unwrap().finished.contains_key(&path(2)));
        drop(call);
        assert_eq!(jobs.lock().unwrap().in_flight, 0);
    }

    use crate::testbus::bus;

    #[derive(Debug, zbus::DBusError)]
    #[zbus(prefix = "org.freedesktop.systemd1")]
    enum FakeError {
        #[zbus(error)]
        ZBus(zbus::Error),
        NoSuchJob(String),
    }

    /// How the fake systemd ends the job of a StartTransientUnit.
    #[derive(Clone)]
    enum Ending {
        /// Sends JobRemoved with this result.
        Signal(&'static str),
        /// Forgets the job without a signal (as when systemd's bus connection dropped); the
        /// unit is then in this state.
        Lost(&'static str),
    }

    struct FakeSystemd {
        conn: zbus::Connection,
        ending: Ending,
    }

    const JOB: &str = "/org/freedesktop/systemd1/job/7";
    const UNIT: &str = "/org/freedesktop/systemd1/unit/berth_2dweb_2escope";

    #[zbus::interface(name = "org.freedesktop.systemd1.Manager")]
    impl FakeSystemd {
        fn subscribe(&self) {}
        fn start_transient_unit(
            &self,
            name: String,
            _mode: String,
            _properties: Vec<(String, zbus::OwnedVariant)>,
            _aux: Vec<(String, Vec<(String, zbus::OwnedVariant)>)>,
        ) -> OwnedObjectPath {
            if let Ending::Signal(result) = self.ending {
                let conn = self.conn.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    let job = OwnedObjectPath::try_from(JOB).unwrap();
                    conn.emit_signal(
                        None::<()>,
                        "/org/freedesktop/systemd1",
                        "org.freedesktop.systemd1.Manager",
                        "JobRemoved",
                        &(7u32, job, name, result),
                    )
                    .await
                    .unwrap();
                });
            }
            OwnedObjectPath::try_from(JOB).unwrap()
        }
        fn get_job(&self, id: u32) -> std::result::Result<OwnedObjectPath, FakeError> {
            match self.ending {
                Ending::Lost(_) => Err(FakeError::NoSuchJob(format!("no job {id}"))),
                Ending::Signal(_) => Ok(OwnedObjectPath::try_from(JOB).unwrap()),
            }
        }
        fn get_unit(&self, _name: String) -> OwnedObjectPath {
            OwnedObjectPath::try_from(UNIT).unwrap()
        }
    }

    struct FakeUnit(&'static str);

    #[zbus::interface(name = "org.freedesktop.systemd1.Unit")]
    impl FakeUnit {
        #[zbus(property)]
        fn active_state(&self) -> String {
            self.0.into()
        }
    }

    /// Start `berth-web.scope` against a fake systemd that ends the job as told; the result
    /// and how long it took.
    fn start_with(ending: Ending) -> (Result<(), SystemdError>, Duration) {
        let bus = bus();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(20), async {
                let server = zbus::connection::Builder::address(bus.address.as_str())
                    .build()
                    .await
                    .unwrap();
                let state = match ending {
                    Ending::Lost(s) => s,
                    Ending::Signal(_) => "active",
                };
                let os = server.object_server();
                let fake = FakeSystemd {
                    conn: server.clone(),
                    ending,
                };
                os.at("/org/freedesktop/systemd1", fake).await.unwrap();
                os.at(UNIT, FakeUnit(state)).await.unwrap();
                server
                    .request_name("org.freedesktop.systemd1")
                    .await
                    .unwrap();
                let client = zbus::connection::Builder::address(bus.address.as_str())
                    .build()
                    .await
                    .unwrap();
                let systemd = Systemd::new(&client).await.unwrap();
                let at = Instant::now();
                let r = systemd
                    .start_scope("berth-web.scope", &scope_properties("web", 1))
                    .await;
                (r, at.elapsed())
            })
            .await
            .expect("the scope start did not end")
        })
    }

    #[test]
    fn a_scope_start_ends_with_its_job_removed_signal() {
        let (r, took) = start_with(Ending::Signal("done"));
        r.unwrap();
        assert!(took < JOB_POLL, "took {took:?}");
        let (r, _) = start_with(Ending::Signal("failed"));
        assert!(
            matches!(&r, Err(SystemdError::Job { result, .. }) if result == "failed"),
            "{r:?}"
        );
    }

    #[test]
    fn a_lost_job_removed_signal_does_not_fail_the_start() {
        let (r, took) = start_with(Ending::Lost("active"));
        r.unwrap();
        assert!(took >= JOB_POLL && took < JOB_TIMEOUT, "took {took:?}");
        // Lost, and the scope did not come up: a failure, said as such, not a timeout.
        let (r, _) = start_with(Ending::Lost("failed"));
        assert!(
            matches!(&r, Err(SystemdError::Job { result, .. }) if result.contains("failed")),
            "{r:?}"
        );
    }
}
