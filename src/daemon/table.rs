//! The container table: one [`Entry`] per defined container, its bus object, and the
//! `PropertiesChanged` signal that follows every change of it. Lock order: `entries` before
//! `broken`, neither held across an await.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};

use nix::sys::signal::Signal;
use tokio::sync::watch;
use tracing::warn;
use zbus::object_server::SignalEmitter;
use zbus::{Connection, OwnedObjectPath, Variant};

use super::entries::{Entries, View};
use super::error::{Error, Result};
use super::quarantine::Broken;
use super::store::Layout;
use crate::cgroup::{Cgroup, Hierarchies};
use crate::dbus::{self, ContainerInfo};
use crate::image;
use crate::name;
use crate::spec::{self, ContainerSpec, Resources};
use crate::systemd::Systemd;

/// At most this many containers are defined at once.
pub const MAX_CONTAINERS: usize = 4096;
/// How many auto-removed containers' statuses are remembered.
const REMEMBER_REMOVED: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Created,
    Starting,
    Running,
    Stopping,
    Exited,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Created => "created",
            State::Starting => "starting",
            State::Running => "running",
            State::Stopping => "stopping",
            State::Exited => "exited",
        }
    }
}

pub struct Entry {
    pub spec: ContainerSpec,
    /// What `RootDirectory` shows: the directory, or the image's directory, or empty.
    pub shown_root: PathBuf,
    pub state: State,
    pub leader: Option<i32>,
    pub started_at: u64,
    /// -1 before the first exit.
    pub exit_status: i32,
    /// Why the last start failed (empty when it did not).
    pub last_error: String,
    pub pidfd: Option<Arc<OwnedFd>>,
    /// `Some(status)` once the current run has exited.
    pub exited: watch::Sender<Option<i32>>,
    /// The resource settings in force: the definition's, plus `set --runtime` changes while
    /// running.
    pub resources: Resources,
    /// The running container's cgroup.
    pub cgroup: Option<Cgroup>,
    /// What `stop` sends first: the image's StopSignal, else SIGTERM.
    pub stop_signal: Signal,
    /// OOM kills seen over the container's life, and the last one's time (µs since the epoch).
    pub oom_kills: u64,
    pub last_oom_at: u64,
    /// The OOM kill counter of the current run's cgroup as last counted, so that kills while
    /// berthd was away are counted on re-adoption (`None`: unknown, from an older record).
    pub oom_seen: Option<u64>,
    /// How it is confined, as `Security` shows it.
    pub security: BTreeMap<String, String>,
    /// Frozen by `pause` (systemd's freezer) while running.
    pub paused: bool,
    /// Its addresses and published ports while it runs.
    pub net: super::network::NetView,
    /// Readiness and the restart policy's state (see `life`).
    pub life: super::life::Life,
    /// The `berth@` unit that holds the current (or last) run, when one does.
    pub held_by: Option<String>,
    /// What execs into the running container start from (its start's plan).
    pub exec_base: Option<Arc<crate::plan::exec::ExecBase>>,
    /// The properties last announced on the bus, to send only what changed.
    published: Option<ContainerInfo>,
}

impl Entry {
    pub fn new(spec: ContainerSpec, shown_root: PathBuf) -> Entry {
        Entry {
            resources: spec.definition.resources.clone(),
            spec,
            shown_root,
            state: State::Created,
            leader: None,
            started_at: 0,
            exit_status: -1,
            last_error: String::new(),
            pidfd: None,
            exited: watch::channel(None).0,
            cgroup: None,
            stop_signal: Signal::SIGTERM,
            oom_kills: 0,
            last_oom_at: 0,
            oom_seen: Some(0),
            security: BTreeMap::new(),
            paused: false,
            net: Default::default(),
            life: Default::default(),
            held_by: None,
            exec_base: None,
            published: None,
        }
    }

    pub fn info(&self, name: &str) -> ContainerInfo {
        ContainerInfo {
            name: name.into(),
            state: if self.paused && self.state == State::Running {
                "paused".into()
            } else {
                self.state.as_str().into()
            },
            unit: self
                .held_by
                .clone()
                .unwrap_or_else(|| name::scope_unit(name)),
            leader: self.leader.map(|p| p as u32).unwrap_or(0),
            image: self.spec.definition.image.clone().unwrap_or_default(),
            root_directory: self.shown_root.display().to_string(),
            created_at: self.spec.definition.created_at,
            started_at: self.started_at,
            exit_status: self.exit_status,
            last_error: self.last_error.clone(),
            resources: self.resources.display_map().into_iter().collect(),
            oom_kills: self.oom_kills,
            last_oom_at: self.last_oom_at,
            security: self.security.clone().into_iter().collect(),
            labels: self.spec.definition.labels.clone().into_iter().collect(),
            image_id: self
                .spec
                .image_id
                .map(|d| d.to_string())
                .unwrap_or_default(),
            network: self.spec.network.mode.to_string(),
            addresses: self.net.addresses.clone(),
            ports: self.net.ports.clone(),
            object_path: path(name),
        }
    }

    /// Whether the container has processes (or is about to).
    pub fn is_active(&self) -> bool {
        matches!(
            self.state,
            State::Running | State::Stopping | State::Starting
        )
    }
}

/// The object path of a container.
pub fn path(name: &str) -> OwnedObjectPath {
    OwnedObjectPath::try_from(name::container_path(name)).expect("escaped path is valid")
}

/// The daemon's state.
pub struct Registry {
    pub(super) me: Weak<Registry>,
    pub(super) conn: Connection,
    pub(super) systemd: Systemd,
    pub(super) layout: Layout,
    pub(super) helper: PathBuf,
    /// The entries, with their `ListContainers` records (see `entries`).
    pub(super) entries: Mutex<Entries<Entry>>,
    /// Containers whose definition cannot be used, kept in quarantine (see `quarantine`).
    pub(super) broken: Mutex<BTreeMap<String, Broken>>,
    /// Exit statuses of containers removed at exit (`--rm`), newest last, so that a
    /// WaitContainer arriving after the removal still gets the status.
    pub(super) removed_at_exit: Mutex<VecDeque<(String, i32)>>,
    /// The image store under /var/lib/berth.
    pub(super) images: Arc<image::Store>,
    /// The machine's cgroup hierarchies, found once.
    pub(super) hierarchies: Hierarchies,
    /// What validation needs to know about the host, found once.
    pub(super) host: spec::Host,
    /// The last CPU sample per container (time, usage), for CPU percentages.
    pub(super) cpu_samples: Mutex<HashMap<String, (std::time::Instant, u64)>>,
    /// Image operations (imports, pulls, exports) in flight.
    pub(super) operations: std::sync::atomic::AtomicUsize,
    /// A failed image operation left space to reclaim once no operation is in flight.
    pub(super) reclaim_pending: std::sync::atomic::AtomicBool,
    /// Stats subscriptions by subscriber (unique bus name).
    pub(super) stats_watchers: Mutex<HashMap<String, tokio::task::AbortHandle>>,
    /// Calls in flight by caller and uid (see `dbus::admission`).
    pub(super) admission: Arc<dbus::admission::Admission>,
    /// Who may call what: polkit, with each caller's uid remembered.
    pub(super) authorizer: super::authorizer::Authorizer,
    /// User-ID ranges of the containers, persisted under /var/lib/berth.
    pub(super) id_ranges: Mutex<crate::userns::IdAllocator>,
    /// SELinux: whether labels apply, the policy's container types, the MCS pairs.
    pub(super) selinux: super::security::Selinux,
    /// Compiled seccomp filters by (profile, capabilities): each compiled once.
    pub(super) seccomp: crate::seccomp::Cache,
    /// The helper binary, as a sealed memfd: every helper and container PID 1 runs from it,
    /// so no container can ever reach the host's file.
    pub(super) helper_image: Option<std::os::fd::OwnedFd>,
    /// The network engine, opened once at start ([`Registry::open_network`]).
    pub(super) network: super::network::NetSlot,
    /// The log relays of running (and lately exited) containers.
    pub(super) relays: super::logs::Relays,
    /// Commands started with exec.
    pub(super) execs: super::exec::Execs,
    /// Callers leaving the bus, for what ends with its caller.
    pub(super) departures: super::departures::Departures,
}

impl Registry {
    pub fn new(
        conn: Connection,
        systemd: Systemd,
        layout: Layout,
        helper: PathBuf,
        images: image::Store,
        security: super::security::Opened,
    ) -> Arc<Self> {
        let hierarchies = Hierarchies::detect().unwrap_or_else(|e| {
            warn!("cannot read the cgroup mounts: {e}, stats will be empty");
            Hierarchies::default()
        });
        Arc::new_cyclic(|me| Registry {
            me: me.clone(),
            conn,
            systemd,
            layout,
            helper,
            entries: Mutex::default(),
            broken: Mutex::default(),
            images: Arc::new(images),
            removed_at_exit: Mutex::default(),
            host: spec::Host::new(hierarchies.unified_only),
            hierarchies,
            cpu_samples: Mutex::default(),
            operations: Default::default(),
            reclaim_pending: Default::default(),
            stats_watchers: Mutex::default(),
            admission: Arc::default(),
            authorizer: security.authorizer,
            id_ranges: Mutex::new(security.id_ranges),
            selinux: security.selinux,
            seccomp: crate::seccomp::Cache::new(),
            helper_image: security.helper_image,
            network: Default::default(),
            relays: Default::default(),
            execs: Default::default(),
            departures: Default::default(),
        })
    }

    pub(super) fn arc(&self) -> Arc<Registry> {
        self.me.upgrade().expect("registry alive while serving")
    }

    pub(super) fn weak_backend(&self) -> Weak<dyn dbus::Backend> {
        let w: Weak<dyn dbus::Backend> = self.me.clone();
        w
    }

    /// Run `f` on a container's entry.
    pub(super) fn with<T>(&self, name: &str, f: impl FnOnce(&mut Entry) -> T) -> Result<T> {
        let mut entries = self.entries.lock().unwrap();
        let Some(e) = entries.get_mut(name) else {
            return Err(self
                .broken_error(name)
                .unwrap_or_else(|| Error::NoSuchContainer(name.into())));
        };
        Ok(f(e))
    }

    pub(super) fn list(&self) -> Vec<ContainerInfo> {
        let entries = self.entries.lock().unwrap();
        let mut all: Vec<ContainerInfo> = entries.iter().map(|(n, e)| e.info(n)).collect();
        all.extend(self.broken.lock().unwrap().iter().map(|(n, b)| b.info(n)));
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// The `ListContainers` reply body: the kept records of the entries (made for those
    /// changed since the last listing) and those of the quarantined containers, by name.
    pub(super) fn list_body(&self, redact: bool) -> Vec<u8> {
        let view = if redact { View::Redacted } else { View::Full };
        let mut entries = self.entries.lock().unwrap();
        let kept = entries.records(
            view,
            |name, e, view| {
                let mut info = e.info(name);
                if view == View::Redacted {
                    info.redact();
                }
                dbus::listing::encode(&info)
            },
            |name, e| warn!("cannot encode the record of {name}: {e}, leaving it out of the list"),
        );
        // Quarantined containers are few and rarely listed: encoded each time.
        let broken: Vec<(String, Vec<u8>)> = self
            .broken
            .lock()
            .unwrap()
            .iter()
            .filter_map(|(n, b)| {
                let mut info = b.info(n);
                if redact {
                    info.redact();
                }
                match dbus::listing::encode(&info) {
                    Ok(r) => Some((n.clone(), r)),
                    Err(e) => {
                        warn!("cannot encode the record of {n}: {e}, leaving it out of the list");
                        None
                    }
                }
            })
            .collect();
        let mut all: Vec<(&str, &[u8])> = kept;
        all.extend(broken.iter().map(|(n, r)| (n.as_str(), &r[..])));
        // Both are in name order already; a name is never in both.
        all.sort_by(|a, b| a.0.cmp(b.0));
        dbus::listing::body(all.into_iter().map(|(_, r)| r))
    }

    pub(super) fn info(&self, name: &str) -> Option<ContainerInfo> {
        let entries = self.entries.lock().unwrap();
        match entries.get(name) {
            Some(e) => Some(e.info(name)),
            None => self.broken.lock().unwrap().get(name).map(|b| b.info(name)),
        }
    }

    /// Export a container's bus object (and announce its properties as published).
    pub(super) async fn export(&self, name: &str) {
        let obj = dbus::Container {
            backend: self.weak_backend(),
            name: name.into(),
        };
        let server = self.conn.object_server();
        let path = name::container_path(name);
        let obj = dbus::gate::Gated::new(obj, self.weak_backend());
        if let Err(e) = server.at(path.as_str(), obj).await {
            warn!("cannot export container {name}: {e}, ignoring");
        }
        // Its Properties and Introspectable bounded like every call of berth's.
        if let Err(e) = dbus::standard::replace(server, &path, &self.weak_backend()).await {
            warn!("cannot serve the standard interfaces of container {name}: {e}, ignoring");
        }
        if let Some(e) = self.entries.lock().unwrap().get_mut(name) {
            e.published = Some(e.info(name));
            super::life::Life::changes(e);
        }
    }

    pub(super) async fn unexport(&self, name: &str) {
        if let Err(e) = self
            .conn
            .object_server()
            .remove::<dbus::Container, _>(name::container_path(name))
            .await
        {
            warn!("cannot remove the bus object of {name}: {e}, ignoring");
        }
    }

    /// Send one `PropertiesChanged` with every property of the container that changed since
    /// the last one.
    pub(super) async fn publish(&self, name: &str) {
        let (before, after, life) = {
            let mut entries = self.entries.lock().unwrap();
            let Some(e) = entries.get_mut(name) else {
                return;
            };
            let after = e.info(name);
            let life = super::life::Life::changes(e);
            (e.published.replace(after.clone()), after, life)
        };
        let Some(before) = before else { return };
        let mut changed = changed_properties(&before, &after);
        changed.extend(life);
        if changed.is_empty() {
            return;
        }
        let Ok(em) = SignalEmitter::new(&self.conn, name::container_path(name)) else {
            return;
        };
        let iface =
            zbus::names::InterfaceName::from_static_str_unchecked("org.berth.berth1.Container");
        if let Err(e) =
            zbus::fdo::Properties::properties_changed(&em, iface, changed, (&[][..]).into()).await
        {
            warn!("cannot announce the change of {name}: {e}, ignoring");
        }
    }

    pub(super) fn manager_emitter(&self) -> Option<SignalEmitter<'static>> {
        SignalEmitter::new(&self.conn, dbus::MANAGER_PATH).ok()
    }

    /// Remember the status of a container removed at its exit, for late WaitContainer calls.
    pub(super) fn remember_removed(&self, name: &str, status: i32) {
        let mut gone = self.removed_at_exit.lock().unwrap();
        gone.retain(|(n, _)| n != name);
        if gone.len() == REMEMBER_REMOVED {
            gone.pop_front();
        }
        gone.push_back((name.to_string(), status));
    }
}

/// The container properties that differ between two snapshots, as the bus names them.
pub fn changed_properties<'a>(
    a: &ContainerInfo,
    b: &'a ContainerInfo,
) -> HashMap<&'static str, Variant<'a>> {
    let mut m = HashMap::new();
    if a.state != b.state {
        m.insert("State", Variant::from(b.state.as_str()));
    }
    if a.leader != b.leader {
        m.insert("Leader", Variant::from(b.leader));
    }
    if a.started_at != b.started_at {
        m.insert("StartedAt", Variant::from(b.started_at));
    }
    if a.exit_status != b.exit_status {
        m.insert("ExitStatus", Variant::from(b.exit_status));
    }
    if a.last_error != b.last_error {
        m.insert("LastError", Variant::from(b.last_error.as_str()));
    }
    if a.resources != b.resources {
        m.insert("Resources", Variant::from(b.resources.clone()));
    }
    if a.oom_kills != b.oom_kills {
        m.insert("OOMKills", Variant::from(b.oom_kills));
    }
    if a.last_oom_at != b.last_oom_at {
        m.insert("LastOOMAt", Variant::from(b.last_oom_at));
    }
    if a.addresses != b.addresses {
        m.insert("Addresses", Variant::from(b.addresses.clone()));
    }
    if a.ports != b.ports {
        m.insert("Ports", Variant::from(b.ports.clone()));
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_start_changes_state_leader_and_time_in_one_signal() {
        let spec = crate::spec::validate(
            &crate::spec::tests::def("web"),
            &crate::spec::tests::Facts::default(),
        )
        .unwrap();
        let mut e = Entry::new(spec, PathBuf::new());
        let before = e.info("web");
        e.state = State::Running;
        e.leader = Some(42);
        e.started_at = 7;
        let after = e.info("web");
        let c = changed_properties(&before, &after);
        let mut keys: Vec<_> = c.keys().copied().collect();
        keys.sort();
        assert_eq!(keys, ["Leader", "StartedAt", "State"]);
        assert_eq!(c["Leader"], Variant::from(42u32));
        assert!(changed_properties(&after, &after).is_empty());
    }
}
