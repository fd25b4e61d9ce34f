//! The registry of containers and their lifecycle flows: create, start, stop, kill, remove,
//! wait, and re-adoption after a berthd restart. Implements [`crate::dbus::Backend`].

use std::collections::{BTreeMap, HashMap};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures_util::future::BoxFuture;
use nix::sys::signal::Signal;
use tokio::sync::watch;
use tracing::{info, warn};
use zbus::object_server::SignalEmitter;
use zbus::{Connection, OwnedObjectPath, OwnedVariant};

use crate::cgroup::{Cgroup, Hierarchies};
use crate::daemon::notify;
use crate::daemon::store::{self, Layout, Runtime};
use crate::dbus::{self, ContainerInfo, Error, Result};
use crate::image;
use crate::name;
use crate::plan::{self, ContainerDirs};
use crate::protocol::{FromHelper, Step, ToHelper};
use crate::resources::Resources;
use crate::spawn::{self, Helper};
use crate::spec::{self, Definition};
use crate::sys;
use crate::systemd::{self, Systemd};

/// At most this many containers are defined at once.
pub const MAX_CONTAINERS: usize = 4096;
/// The default stop timeout.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// The image used when neither an image nor a directory is given.
pub const DEFAULT_IMAGE: &str = "default";

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

struct Entry {
    def: Definition,
    lower: PathBuf,
    state: State,
    leader: Option<i32>,
    started_at: u64,
    exit_status: i32,
    pidfd: Option<Arc<OwnedFd>>,
    /// `Some(status)` once the current run has exited.
    exited: watch::Sender<Option<i32>>,
    /// The resource settings in force: the definition's, plus `set --runtime` changes while
    /// running.
    resources: Resources,
    /// The running container's cgroup.
    cgroup: Option<Cgroup>,
    /// What `stop` sends first: the image's StopSignal, else SIGTERM.
    stop_signal: Signal,
    /// OOM kills seen over the container's life in this berthd's records, and the last one's
    /// time (microseconds since the epoch).
    oom_kills: u64,
    last_oom_at: u64,
}

/// The daemon's state. Lock order: only `entries`, never held across an await.
pub struct Registry {
    me: Weak<Registry>,
    conn: Connection,
    systemd: Systemd,
    layout: Layout,
    helper: PathBuf,
    entries: Mutex<BTreeMap<String, Entry>>,
    /// Exit statuses of containers removed at exit (`--rm`), newest last, so that a
    /// WaitContainer arriving after the removal still gets the status.
    removed_at_exit: Mutex<std::collections::VecDeque<(String, i32)>>,
    /// The image store under /var/lib/berth.
    images: Arc<image::Store>,
    /// The machine's cgroup hierarchies, found once.
    hierarchies: Hierarchies,
    /// The last CPU sample per container (time, usage), for CPU percentages.
    cpu_samples: Mutex<HashMap<String, (std::time::Instant, u64)>>,
    /// Image operations (imports, pulls, exports) in flight.
    operations: std::sync::atomic::AtomicUsize,
    /// Stats subscriptions by subscriber (unique bus name).
    stats_watchers: Mutex<HashMap<String, tokio::task::AbortHandle>>,
}

mod images;
mod limits;

/// How many auto-removed containers' statuses are remembered.
const REMEMBER_REMOVED: usize = 256;

fn invalid(msg: impl Into<String>) -> Error {
    Error::InvalidArgument(msg.into())
}

fn no_such(name: &str) -> Error {
    Error::NoSuchContainer(format!("no container named {name:?}"))
}

fn fdname(name: &str) -> String {
    format!("exit-{name}")
}

/// Options of CreateContainer, checked.
struct CreateOptions {
    image: Option<String>,
    directory: Option<PathBuf>,
    command: Vec<String>,
    hostname: Option<String>,
    auto_remove: bool,
    entrypoint: Option<Vec<String>>,
    env: Vec<String>,
    workdir: Option<String>,
    user: Option<String>,
    resources: Resources,
    properties: BTreeMap<String, String>,
}

fn opt<T: TryFrom<OwnedVariant>>(key: &str, v: OwnedVariant) -> Result<T> {
    T::try_from(v).map_err(|_| invalid(format!("option {key} has the wrong type")))
}

fn parse_create_options(options: HashMap<String, OwnedVariant>) -> Result<CreateOptions> {
    let mut o = CreateOptions {
        image: None,
        directory: None,
        command: vec![],
        hostname: None,
        auto_remove: false,
        entrypoint: None,
        env: Vec::new(),
        workdir: None,
        user: None,
        resources: Resources::default(),
        properties: BTreeMap::new(),
    };
    for (key, v) in options {
        match key.as_str() {
            "Image" => o.image = Some(opt::<String>(&key, v)?),
            "Directory" => o.directory = Some(opt::<String>(&key, v)?.into()),
            "Command" => o.command = opt::<Vec<String>>(&key, v)?,
            "Hostname" => o.hostname = Some(opt::<String>(&key, v)?),
            "AutoRemove" => o.auto_remove = opt::<bool>(&key, v)?,
            "Entrypoint" => o.entrypoint = Some(opt::<Vec<String>>(&key, v)?),
            "Environment" => o.env = opt::<Vec<String>>(&key, v)?,
            "WorkingDirectory" => o.workdir = Some(opt::<String>(&key, v)?),
            "User" => o.user = Some(opt::<String>(&key, v)?),
            "Resources" => {
                for (k, val) in opt::<Vec<(String, String)>>(&key, v)? {
                    o.resources
                        .set(&k, &val)
                        .map_err(|e| invalid(e.to_string()))?;
                }
            }
            "Properties" => {
                o.properties = opt::<HashMap<String, String>>(&key, v)?
                    .into_iter()
                    .collect()
            }
            _ => return Err(invalid(format!("unknown option {key:?}"))),
        }
    }
    Ok(o)
}

/// Check a directory used as a lower layer: absolute, existing, a directory, and free of the
/// characters that overlayfs uses as option separators.
fn check_directory(dir: &Path) -> Result<PathBuf> {
    if !dir.is_absolute() {
        return Err(invalid(format!(
            "directory {} is not an absolute path",
            dir.display()
        )));
    }
    let canon = dir
        .canonicalize()
        .map_err(|e| invalid(format!("directory {}: {e}", dir.display())))?;
    if !canon.is_dir() {
        return Err(invalid(format!("{} is not a directory", dir.display())));
    }
    let s = canon.to_string_lossy();
    if s.contains([',', ':', '\\']) {
        return Err(invalid(format!(
            "directory {s} contains ',', ':' or '\\', which overlayfs cannot take"
        )));
    }
    Ok(canon)
}

fn check_hostname(h: &str) -> Result<()> {
    let ok = !h.is_empty()
        && h.len() <= 64
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && !h.starts_with(['-', '.']);
    if ok {
        Ok(())
    } else {
        Err(invalid(format!("invalid hostname {h:?}")))
    }
}

fn check_command(cmd: &[String]) -> Result<()> {
    if cmd.first().is_some_and(|c| c.is_empty()) {
        return Err(invalid("the command is empty"));
    }
    if cmd.len() > 4096 || cmd.iter().map(String::len).sum::<usize>() > 128 * 1024 {
        return Err(invalid("the command line is too long"));
    }
    Ok(())
}

/// Check the options that shape the payload's process.
fn check_runtime_options(o: &CreateOptions) -> Result<()> {
    if let Some(e) = &o.entrypoint {
        check_command(e)?;
    }
    if o.env.len() > 4096 || o.env.iter().map(String::len).sum::<usize>() > 128 * 1024 {
        return Err(invalid("the environment is too large"));
    }
    for kv in &o.env {
        match kv.split_once('=') {
            Some((k, _)) if !k.is_empty() && !k.contains('\0') && !kv.contains('\0') => {}
            _ => {
                return Err(invalid(format!(
                    "environment entry {kv:?} is not KEY=VALUE"
                )));
            }
        }
    }
    if let Some(w) = &o.workdir
        && (!w.starts_with('/') || w.contains('\0') || w.len() > 4096)
    {
        return Err(invalid(format!(
            "working directory {w:?} is not an absolute path"
        )));
    }
    if let Some(u) = &o.user
        && (u.is_empty() || u.len() > 256 || u.chars().any(|c| c.is_control() || c == '/'))
    {
        return Err(invalid(format!("invalid user {u:?}")));
    }
    Ok(())
}

/// Check resource settings and turn them into scope properties: the device policy first, then
/// the settings.
fn check_resources(r: &Resources) -> Result<Vec<(&'static str, spec::PropValue)>> {
    let mut props = r.device_properties().map_err(|e| invalid(e.to_string()))?;
    props.extend(r.properties().map_err(|e| invalid(e.to_string()))?);
    Ok(props)
}

fn check_properties(
    props: &BTreeMap<String, String>,
) -> Result<Vec<(&'static str, spec::PropValue)>> {
    props
        .iter()
        .map(|(k, v)| spec::parse_property(k, v).map_err(|e| invalid(e.to_string())))
        .collect()
}

impl Registry {
    pub fn new(
        conn: Connection,
        systemd: Systemd,
        layout: Layout,
        helper: PathBuf,
        images: image::Store,
    ) -> Arc<Self> {
        Arc::new_cyclic(|me| Registry {
            me: me.clone(),
            conn,
            systemd,
            layout,
            helper,
            entries: Mutex::new(BTreeMap::new()),
            images: Arc::new(images),
            removed_at_exit: Mutex::default(),
            hierarchies: Hierarchies::detect().unwrap_or_else(|e| {
                warn!("cannot read the cgroup mounts: {e}, stats will be empty");
                Hierarchies::default()
            }),
            cpu_samples: Mutex::default(),
            operations: Default::default(),
            stats_watchers: Mutex::default(),
        })
    }

    fn arc(&self) -> Arc<Registry> {
        self.me.upgrade().expect("registry alive while serving")
    }

    fn info_of(name: &str, e: &Entry) -> ContainerInfo {
        ContainerInfo {
            name: name.into(),
            state: e.state.as_str().into(),
            unit: name::scope_unit(name),
            leader: e.leader.map(|p| p as u32).unwrap_or(0),
            image: e.def.image.clone().unwrap_or_default(),
            root_directory: e.lower.display().to_string(),
            created_at: e.def.created_at,
            started_at: e.started_at,
            exit_status: e.exit_status,
            resources: crate::resources::display_map(&e.resources)
                .into_iter()
                .collect(),
            oom_kills: e.oom_kills,
            last_oom_at: e.last_oom_at,
            object_path: OwnedObjectPath::try_from(name::container_path(name))
                .expect("escaped path is valid"),
        }
    }

    fn new_entry(def: Definition, lower: PathBuf) -> Entry {
        Entry {
            resources: def.resources.clone(),
            cgroup: None,
            stop_signal: Signal::SIGTERM,
            oom_kills: 0,
            last_oom_at: 0,
            def,
            lower,
            state: State::Created,
            leader: None,
            started_at: 0,
            exit_status: -1,
            pidfd: None,
            exited: watch::channel(None).0,
        }
    }

    async fn export(&self, name: &str) {
        let obj = dbus::Container {
            backend: self.arc(),
            name: name.into(),
        };
        if let Err(e) = self
            .conn
            .object_server()
            .at(name::container_path(name), obj)
            .await
        {
            warn!("cannot export container {name}: {e}, ignoring");
        }
    }

    async fn emit_changed(&self, name: &str) {
        let path = name::container_path(name);
        let Ok(iface) = self
            .conn
            .object_server()
            .interface::<_, dbus::Container>(path.as_str())
            .await
        else {
            return;
        };
        let c = iface.get().await;
        let e = iface.signal_emitter();
        let _ = c.state_changed(e).await;
        let _ = c.leader_changed(e).await;
        let _ = c.started_at_changed(e).await;
        let _ = c.exit_status_changed(e).await;
        let _ = c.resources_changed(e).await;
        let _ = c.o_o_m_kills_changed(e).await;
        let _ = c.last_o_o_m_at_changed(e).await;
    }

    fn manager_emitter(&self) -> Option<SignalEmitter<'static>> {
        SignalEmitter::new(&self.conn, dbus::MANAGER_PATH).ok()
    }

    fn path(name: &str) -> OwnedObjectPath {
        OwnedObjectPath::try_from(name::container_path(name)).expect("escaped path is valid")
    }

    // ---- create -------------------------------------------------------------------------

    async fn create(
        &self,
        name: String,
        options: HashMap<String, OwnedVariant>,
    ) -> Result<OwnedObjectPath> {
        name::validate(&name).map_err(|e| invalid(e.to_string()))?;
        let o = parse_create_options(options)?;
        let lower = match (&o.image, &o.directory) {
            (Some(_), Some(_)) => return Err(invalid("give an image or a directory, not both")),
            (None, Some(dir)) => check_directory(dir)?,
            (image, None) => {
                let image = image.as_deref().unwrap_or(DEFAULT_IMAGE);
                self.resolve_image(image)?.shown
            }
        };
        check_runtime_options(&o)?;
        if let Some(h) = &o.hostname {
            check_hostname(h)?;
        }
        check_command(&o.command)?;
        check_resources(&o.resources)?;
        self.check_layout(&o.resources)?;
        check_properties(&o.properties)?;
        let image = if o.directory.is_some() {
            None
        } else {
            Some(o.image.unwrap_or_else(|| DEFAULT_IMAGE.into()))
        };
        let def = Definition {
            name: name.clone(),
            image,
            directory: o.directory.map(|_| lower.clone()),
            command: o.command,
            entrypoint: o.entrypoint,
            env: o.env,
            workdir: o.workdir,
            user: o.user,
            hostname: o.hostname,
            auto_remove: o.auto_remove,
            resources: o.resources,
            properties: o.properties,
            created_at: store::now_usec(),
        };
        {
            let mut entries = self.entries.lock().unwrap();
            if entries.contains_key(&name) {
                return Err(Error::AlreadyExists(format!(
                    "a container named {name:?} exists"
                )));
            }
            if entries.len() >= MAX_CONTAINERS {
                return Err(Error::LimitExceeded(format!(
                    "at most {MAX_CONTAINERS} containers"
                )));
            }
            if let Err(e) = self.write_container_dir(&def) {
                let _ = std::fs::remove_dir_all(self.layout.container_dir(&name));
                return Err(Error::Failed(format!(
                    "cannot write the definition of {name:?}: {e}"
                )));
            }
            entries.insert(name.clone(), Self::new_entry(def, lower));
        }
        self.export(&name).await;
        if let Some(em) = self.manager_emitter() {
            let _ = dbus::Manager::container_new(&em, &name, Self::path(&name)).await;
        }
        info!("created container {name}");
        Ok(Self::path(&name))
    }

    fn write_container_dir(&self, def: &Definition) -> std::io::Result<()> {
        let dir = self.layout.container_dir(&def.name);
        std::fs::create_dir(&dir)?;
        let dirs = ContainerDirs::under(&dir);
        for d in [&dirs.upper, &dirs.work, &dirs.root] {
            std::fs::create_dir(d)?;
        }
        store::save_definition(&self.layout, def)
    }

    // ---- start --------------------------------------------------------------------------

    async fn start(&self, name: String, options: HashMap<String, OwnedVariant>) -> Result<()> {
        let mut stdio: [Option<OwnedFd>; 3] = [None, None, None];
        for (key, v) in options {
            let slot = match key.as_str() {
                "StandardInput" => 0,
                "StandardOutput" => 1,
                "StandardError" => 2,
                _ => return Err(invalid(format!("unknown option {key:?}"))),
            };
            let fd = zbus::Fd::try_from(v)
                .map_err(|_| invalid(format!("option {key} must be a file descriptor")))?;
            stdio[slot] = Some(OwnedFd::try_from(fd).map_err(|e| Error::Failed(e.to_string()))?);
        }
        let (def, previous) = {
            let mut entries = self.entries.lock().unwrap();
            let e = entries.get_mut(&name).ok_or_else(|| no_such(&name))?;
            match e.state {
                State::Created | State::Exited => {}
                s => {
                    return Err(Error::InvalidState(format!(
                        "container {name:?} is {}",
                        s.as_str()
                    )));
                }
            }
            let previous = e.state;
            e.state = State::Starting;
            (e.def.clone(), previous)
        };
        self.emit_changed(&name).await;
        match self.launch(&def, stdio).await {
            Ok((pid, pidfd, memfd, stop_signal)) => {
                let started_at = store::now_usec();
                let pidfd = Arc::new(pidfd);
                let rt = Runtime {
                    running: true,
                    leader: pid,
                    leader_start: store::process_start_time(pid).unwrap_or(0),
                    started_at,
                    exit_status: -1,
                    ..Default::default()
                };
                if let Err(e) = store::save_runtime(&self.layout, &name, &rt) {
                    warn!("cannot record runtime state of {name}: {e}, ignoring");
                }
                match notify::store_fd(&fdname(&name), memfd.as_fd()) {
                    Ok(_) => {}
                    Err(e) => warn!("cannot store exit descriptor of {name}: {e}, ignoring"),
                }
                {
                    let mut entries = self.entries.lock().unwrap();
                    if let Some(e) = entries.get_mut(&name) {
                        e.state = State::Running;
                        e.leader = Some(pid);
                        e.started_at = started_at;
                        e.pidfd = Some(pidfd.clone());
                        e.resources = e.def.resources.clone();
                        e.stop_signal = stop_signal;
                        e.exited.send_replace(None);
                    }
                }
                self.adopt_cgroup(&name, pid);
                tokio::spawn(self.arc().watch_leader(name.clone(), pidfd, Some(memfd)));
                self.emit_changed(&name).await;
                info!("started container {name}, leader {pid}");
                Ok(())
            }
            Err(err) => {
                if let Some(e) = self.entries.lock().unwrap().get_mut(&name) {
                    e.state = previous;
                }
                self.emit_changed(&name).await;
                Err(err)
            }
        }
    }

    /// The start sequence (ARCHITECTURE.md, "Starting a container"). On error everything made
    /// so far is undone: the leader is killed and the scope stopped.
    async fn launch(
        &self,
        def: &Definition,
        stdio: [Option<OwnedFd>; 3],
    ) -> Result<(i32, OwnedFd, OwnedFd, Signal)> {
        let failed = |what: &str, e: &dyn std::fmt::Display| Error::Failed(format!("{what}: {e}"));
        let devnull = || {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/null")
                .map(OwnedFd::from)
        };
        let [i, o, e] = stdio;
        let i = match i {
            Some(fd) => fd,
            None => devnull().map_err(|e| failed("open /dev/null", &e))?,
        };
        let o = match o {
            Some(fd) => fd,
            None => devnull().map_err(|e| failed("open /dev/null", &e))?,
        };
        let e = match e {
            Some(fd) => fd,
            None => devnull().map_err(|e| failed("open /dev/null", &e))?,
        };
        let memfd = nix::sys::memfd::memfd_create(
            format!("berth-exit-{}", def.name).as_str(),
            nix::sys::memfd::MFdFlags::MFD_CLOEXEC,
        )
        .map_err(|e| failed("memfd_create", &e))?;
        let mut props = check_resources(&def.resources)?;
        props.extend(check_properties(&def.properties)?);
        let devices = def
            .resources
            .extra_devices()
            .map_err(|e| invalid(e.to_string()))?;
        let dirs = ContainerDirs::under(&self.layout.container_dir(&def.name));
        let root = match (&def.directory, &def.image) {
            (Some(dir), _) => {
                if !dir.is_dir() {
                    return Err(Error::Failed(format!(
                        "root directory {} is gone",
                        dir.display()
                    )));
                }
                images::Rootfs {
                    lowers: vec![dir.clone()],
                    config: None,
                    shown: dir.clone(),
                }
            }
            (None, image) => self.resolve_image(image.as_deref().unwrap_or(DEFAULT_IMAGE))?,
        };
        let stop_signal = match root.config.as_ref().and_then(|c| c.stop_signal.as_deref()) {
            Some(s) => images::parse_stop_signal(s).unwrap_or_else(|| {
                warn!(
                    "{}: image stop signal {s:?} is unknown, using SIGTERM",
                    def.name
                );
                Signal::SIGTERM
            }),
            None => Signal::SIGTERM,
        };
        let plan = plan::build(
            def,
            &root.lowers,
            root.config.as_ref(),
            &dirs,
            &devices,
            None,
        );
        let argv0 = plan.argv[0].clone();

        let helper =
            Helper::spawn(&self.helper).map_err(|e| failed("cannot start berth-helper", &e))?;
        let fds = [i.as_fd(), o.as_fd(), e.as_fd(), memfd.as_fd()];
        if let Err(err) = helper.send(&ToHelper::Plan(Box::new(plan)), &fds).await {
            helper.kill().await;
            return Err(failed("berth-helper", &err));
        }
        let pid = match helper.recv(Duration::from_secs(10)).await {
            Ok(FromHelper::Forked { pid }) => pid,
            Ok(FromHelper::Failed {
                step,
                errno,
                message,
            }) => {
                helper.kill().await;
                return Err(helper_failure(def, &argv0, step, errno, &message));
            }
            Ok(other) => {
                helper.kill().await;
                return Err(Error::Failed(format!(
                    "berth-helper sent {other:?} out of order"
                )));
            }
            Err(err) => {
                helper.kill().await;
                return Err(failed("berth-helper", &err));
            }
        };
        let sock = helper.reap_in_background();
        let pidfd = sys::pidfd_open(nix::unistd::Pid::from_raw(pid))
            .map_err(|e| failed("pidfd_open", &e))?;
        let unit = name::scope_unit(&def.name);
        let scope = systemd::scope_properties(&format!("berth container {}", def.name), pid as u32)
            .values(&props);
        let abort = |reason: Error| async {
            let _ = sys::pidfd_send_signal(pidfd.as_fd(), Signal::SIGKILL);
            self.reap_now(&pidfd).await;
            if let Err(e) = self.systemd.stop_unit(&unit).await {
                warn!("cannot stop {unit} after a failed start: {e}, ignoring");
            }
            reason
        };
        if let Err(e) = self.systemd.start_scope(&unit, &scope).await {
            return Err(abort(Error::Failed(format!("systemd refused the scope: {e}"))).await);
        }
        if let Err(e) = spawn::send_on(&sock, &ToHelper::Release, &[]).await {
            return Err(abort(failed("release the container", &e)).await);
        }
        match spawn::recv_on(&sock, Duration::from_secs(30)).await {
            Ok(FromHelper::Started) => Ok((pid, pidfd, memfd, stop_signal)),
            Ok(FromHelper::Failed {
                step,
                errno,
                message,
            }) => Err(abort(helper_failure(def, &argv0, step, errno, &message)).await),
            Ok(other) => Err(abort(Error::Failed(format!(
                "container sent {other:?} out of order"
            )))
            .await),
            Err(e) => Err(abort(failed("container start", &e)).await),
        }
    }

    /// Wait until the process behind `pidfd` has exited and reap it if it is our child.
    async fn reap_now(&self, pidfd: &OwnedFd) -> Option<sys::ExitInfo> {
        for _ in 0..500 {
            match sys::pidfd_try_reap(pidfd.as_fd()) {
                Ok(Some(info)) => return Some(info),
                Ok(None) => tokio::time::sleep(Duration::from_millis(10)).await,
                Err(_) => return None,
            }
        }
        None
    }

    /// Watch a running leader; on exit record its status, stop the scope and notify.
    async fn watch_leader(
        self: Arc<Self>,
        name: String,
        pidfd: Arc<OwnedFd>,
        memfd: Option<OwnedFd>,
    ) {
        if let Some(afd) = pidfd
            .try_clone()
            .ok()
            .and_then(|dup| sys::async_fd(dup).ok())
        {
            let _ = afd.readable().await;
        }
        let reaped = self.reap_now(&pidfd).await;
        let status = memfd
            .as_ref()
            .and_then(read_status)
            .or(reaped.map(sys::ExitInfo::as_status))
            .unwrap_or(-1);
        self.on_exit(&name, status).await;
    }

    async fn on_exit(&self, name: &str, status: i32) {
        let unit = name::scope_unit(name);
        if let Err(e) = self.systemd.stop_unit(&unit).await {
            warn!("cannot stop {unit}: {e}, ignoring");
        }
        let _ = notify::remove_fd(&fdname(name));
        self.cpu_samples.lock().unwrap().remove(name);
        let (tx, auto_remove, started_at, oom_kills, last_oom_at) = {
            let mut entries = self.entries.lock().unwrap();
            let Some(e) = entries.get_mut(name) else {
                return;
            };
            e.state = State::Exited;
            e.leader = None;
            e.pidfd = None;
            e.exit_status = status;
            e.cgroup = None;
            e.resources = e.def.resources.clone();
            (
                e.exited.clone(),
                e.def.auto_remove,
                e.started_at,
                e.oom_kills,
                e.last_oom_at,
            )
        };
        info!("container {name} exited with status {status}");
        let rt = Runtime {
            running: false,
            leader: 0,
            leader_start: 0,
            started_at,
            exit_status: status,
            oom_kills,
            last_oom_at,
            ..Default::default()
        };
        if let Err(e) = store::save_runtime(&self.layout, name, &rt) {
            warn!("cannot record exit of {name}: {e}, ignoring");
        }
        self.emit_changed(name).await;
        if auto_remove {
            {
                let mut gone = self.removed_at_exit.lock().unwrap();
                gone.retain(|(n, _)| n != name);
                if gone.len() == REMEMBER_REMOVED {
                    gone.pop_front();
                }
                gone.push_back((name.to_string(), status));
            }
            self.remove_entry(name).await;
        }
        tx.send_replace(Some(status));
    }

    // ---- stop, kill, wait ---------------------------------------------------------------

    fn running(
        &self,
        name: &str,
        next: Option<State>,
    ) -> Result<(Arc<OwnedFd>, watch::Receiver<Option<i32>>)> {
        let mut entries = self.entries.lock().unwrap();
        let e = entries.get_mut(name).ok_or_else(|| no_such(name))?;
        match (e.state, &e.pidfd) {
            (State::Running, Some(fd)) | (State::Stopping, Some(fd)) => {
                let r = (fd.clone(), e.exited.subscribe());
                if let Some(s) = next {
                    e.state = s;
                }
                Ok(r)
            }
            (s, _) => Err(Error::InvalidState(format!(
                "container {name:?} is {}, not running",
                s.as_str()
            ))),
        }
    }

    async fn stop(&self, name: String, timeout_usec: u64) -> Result<()> {
        let timeout = if timeout_usec == 0 {
            DEFAULT_STOP_TIMEOUT
        } else {
            Duration::from_micros(timeout_usec)
        };
        let (pidfd, mut rx) = self.running(&name, Some(State::Stopping))?;
        self.emit_changed(&name).await;
        let sig = self
            .entries
            .lock()
            .unwrap()
            .get(&name)
            .map_or(Signal::SIGTERM, |e| e.stop_signal);
        let _ = sys::pidfd_send_signal(pidfd.as_fd(), sig);
        if tokio::time::timeout(timeout, rx.wait_for(Option::is_some))
            .await
            .is_err()
        {
            info!("container {name} did not stop within {timeout:?}, killing it");
            self.systemd
                .kill_unit(&name::scope_unit(&name), "all", Signal::SIGKILL as i32)
                .await
                .map_err(|e| Error::Failed(e.to_string()))?;
            tokio::time::timeout(Duration::from_secs(30), rx.wait_for(Option::is_some))
                .await
                .map_err(|_| {
                    Error::Failed(format!("container {name:?} did not die after SIGKILL"))
                })?
                .ok();
        }
        Ok(())
    }

    async fn kill(&self, name: String, whom: String, signal: i32) -> Result<()> {
        let sig = Signal::try_from(signal)
            .map_err(|_| invalid(format!("invalid signal number {signal}")))?;
        let (pidfd, _) = self.running(&name, None)?;
        match whom.as_str() {
            "leader" | "" => {
                sys::pidfd_send_signal(pidfd.as_fd(), sig).map_err(|e| Error::Failed(e.to_string()))
            }
            "all" => self
                .systemd
                .kill_unit(&name::scope_unit(&name), "all", signal)
                .await
                .map_err(|e| Error::Failed(e.to_string())),
            other => Err(invalid(format!(
                "whom must be \"leader\" or \"all\", not {other:?}"
            ))),
        }
    }

    async fn wait(&self, name: String) -> Result<i32> {
        let mut rx = {
            let entries = self.entries.lock().unwrap();
            let Some(e) = entries.get(&name) else {
                let gone = self.removed_at_exit.lock().unwrap();
                return gone
                    .iter()
                    .rev()
                    .find(|(n, _)| *n == name)
                    .map(|(_, s)| *s)
                    .ok_or_else(|| no_such(&name));
            };
            match e.state {
                State::Exited => return Ok(e.exit_status),
                State::Created => {
                    return Err(Error::InvalidState(format!(
                        "container {name:?} has not been started"
                    )));
                }
                _ => e.exited.subscribe(),
            }
        };
        let v = rx
            .wait_for(Option::is_some)
            .await
            .map_err(|_| Error::Failed("berthd is shutting down".into()))?;
        Ok(v.unwrap_or(-1))
    }

    // ---- remove -------------------------------------------------------------------------

    async fn remove(&self, name: String, force: bool) -> Result<()> {
        let state = {
            let entries = self.entries.lock().unwrap();
            entries.get(&name).ok_or_else(|| no_such(&name))?.state
        };
        match state {
            State::Created | State::Exited => {}
            State::Running | State::Stopping if force => {
                let (_, mut rx) = self.running(&name, None)?;
                self.systemd
                    .kill_unit(&name::scope_unit(&name), "all", Signal::SIGKILL as i32)
                    .await
                    .map_err(|e| Error::Failed(e.to_string()))?;
                let _ = tokio::time::timeout(Duration::from_secs(30), rx.wait_for(Option::is_some))
                    .await;
            }
            State::Running | State::Stopping => {
                return Err(Error::InvalidState(format!(
                    "container {name:?} is running; stop it first or remove it with --force"
                )));
            }
            State::Starting => {
                return Err(Error::InvalidState(format!(
                    "container {name:?} is starting"
                )));
            }
        }
        self.remove_entry(&name).await;
        Ok(())
    }

    async fn remove_entry(&self, name: &str) {
        if self.entries.lock().unwrap().remove(name).is_none() {
            return;
        }
        let dir = self.layout.container_dir(name);
        let rt = self.layout.runtime(name);
        let removed = tokio::task::spawn_blocking(move || {
            let _ = std::fs::remove_file(rt);
            std::fs::remove_dir_all(&dir)
        })
        .await;
        if let Ok(Err(e)) = removed {
            warn!("cannot remove the files of {name}: {e}, ignoring");
        }
        let _ = self
            .conn
            .object_server()
            .remove::<dbus::Container, _>(name::container_path(name))
            .await;
        if let Some(em) = self.manager_emitter() {
            let _ = dbus::Manager::container_removed(&em, name, Self::path(name)).await;
        }
        info!("removed container {name}");
    }

    // ---- recovery -----------------------------------------------------------------------

    /// Rebuild the registry from disk and systemd after a (re)start of berthd, re-adopting
    /// running containers.
    pub async fn recover(&self, mut stored: HashMap<String, OwnedFd>) {
        let Ok(dir) = std::fs::read_dir(self.layout.containers()) else {
            return;
        };
        let mut names: Vec<String> = dir
            .flatten()
            .filter_map(|d| d.file_name().into_string().ok())
            .collect();
        names.sort();
        for name in names {
            if name::validate(&name).is_err() {
                continue;
            }
            let def = match store::load_definition(&self.layout.definition(&name)) {
                Ok(d) if d.name == name => d,
                Ok(_) | Err(_) => {
                    // A create that died before writing its definition: nothing refers to it.
                    warn!("container directory {name} has no valid definition, removing it");
                    let _ = std::fs::remove_dir_all(self.layout.container_dir(&name));
                    continue;
                }
            };
            let lower = match (&def.directory, &def.image) {
                (Some(d), _) => d.clone(),
                (None, Some(i)) => self.resolve_image(i).map(|r| r.shown).unwrap_or_default(),
                (None, None) => PathBuf::new(),
            };
            let mut entry = Self::new_entry(def, lower);
            let memfd = stored.remove(&fdname(&name));
            let mut watch = None;
            if let Some(rt) = store::load_runtime(&self.layout, &name) {
                entry.started_at = rt.started_at;
                entry.exit_status = rt.exit_status;
                entry.oom_kills = rt.oom_kills;
                entry.last_oom_at = rt.last_oom_at;
                entry.state = State::Exited;
                if rt.running {
                    let alive = store::process_start_time(rt.leader) == Some(rt.leader_start)
                        && rt.leader_start != 0;
                    let pidfd = if alive {
                        sys::pidfd_open(nix::unistd::Pid::from_raw(rt.leader)).ok()
                    } else {
                        None
                    };
                    match (pidfd, memfd) {
                        (Some(pidfd), memfd) => {
                            let pidfd = Arc::new(pidfd);
                            entry.state = State::Running;
                            entry.leader = Some(rt.leader);
                            entry.pidfd = Some(pidfd.clone());
                            if let Some(r) = rt.resources.clone() {
                                entry.resources = r;
                            }
                            match &memfd {
                                Some(m) => {
                                    let _ = notify::store_fd(&fdname(&name), m.as_fd());
                                }
                                None => warn!(
                                    "{name} has no exit descriptor (berthd ran without a service manager?), its exit status may be lost"
                                ),
                            }
                            watch = Some((pidfd, memfd));
                            info!("re-adopted running container {name}, leader {}", rt.leader);
                        }
                        (None, memfd) => {
                            entry.exit_status = memfd.as_ref().and_then(read_status).unwrap_or(-1);
                            info!(
                                "container {name} exited while berthd was away, status {}",
                                entry.exit_status
                            );
                        }
                    }
                }
            }
            let exited_meanwhile = entry.state == State::Exited && watch.is_none();
            let auto_remove = entry.def.auto_remove;
            self.entries.lock().unwrap().insert(name.clone(), entry);
            self.export(&name).await;
            match watch {
                Some((pidfd, memfd)) => {
                    let leader = self
                        .entries
                        .lock()
                        .unwrap()
                        .get(&name)
                        .and_then(|e| e.leader);
                    if let Some(leader) = leader {
                        self.adopt_cgroup(&name, leader);
                    }
                    tokio::spawn(self.arc().watch_leader(name.clone(), pidfd, memfd));
                }
                None if exited_meanwhile => {
                    let status = self
                        .entries
                        .lock()
                        .unwrap()
                        .get(&name)
                        .map(|e| e.exit_status)
                        .unwrap_or(-1);
                    let _ = self.systemd.stop_unit(&name::scope_unit(&name)).await;
                    let rt = Runtime {
                        running: false,
                        leader: 0,
                        leader_start: 0,
                        started_at: 0,
                        exit_status: status,
                        ..Default::default()
                    };
                    let _ = store::save_runtime(&self.layout, &name, &rt);
                    let _ = notify::remove_fd(&fdname(&name));
                    if auto_remove {
                        self.remove_entry(&name).await;
                    }
                }
                None => {}
            }
        }
        for (left, _) in stored {
            let _ = notify::remove_fd(&left);
        }
    }
}

/// The status PID 1 wrote before exiting, if it did.
fn read_status(memfd: &OwnedFd) -> Option<i32> {
    let mut buf = [0u8; 16];
    let n = nix::sys::uio::pread(memfd, &mut buf, 0).ok()?;
    std::str::from_utf8(&buf[..n]).ok()?.trim().parse().ok()
}

fn helper_failure(def: &Definition, argv0: &str, step: Step, errno: i32, message: &str) -> Error {
    let errno = nix::errno::Errno::from_raw(errno);
    match (step, errno) {
        (Step::Exec, nix::errno::Errno::ENOENT) => Error::CommandNotFound(format!(
            "command {argv0:?} not found in container {:?}",
            def.name
        )),
        (Step::User, _) => Error::InvalidArgument(format!("container {:?}: {message}", def.name)),
        (Step::Exec, _) => Error::Failed(message.to_string()),
        (step, errno) => Error::Failed(format!(
            "container {:?}: {step:?} failed: {message}: {}",
            def.name,
            errno.desc()
        )),
    }
}

impl dbus::Backend for Registry {
    fn create(
        &self,
        name: String,
        options: HashMap<String, OwnedVariant>,
    ) -> BoxFuture<'_, Result<OwnedObjectPath>> {
        Box::pin(self.create(name, options))
    }
    fn start(
        &self,
        name: String,
        options: HashMap<String, OwnedVariant>,
    ) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.start(name, options))
    }
    fn stop(&self, name: String, timeout_usec: u64) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.stop(name, timeout_usec))
    }
    fn kill(&self, name: String, whom: String, signal: i32) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.kill(name, whom, signal))
    }
    fn remove(&self, name: String, force: bool) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.remove(name, force))
    }
    fn wait(&self, name: String) -> BoxFuture<'_, Result<i32>> {
        Box::pin(self.wait(name))
    }
    fn set_resources(
        &self,
        name: String,
        assignments: Vec<(String, String)>,
        runtime: bool,
    ) -> BoxFuture<'_, Result<()>> {
        Box::pin(Registry::set_resources(self, name, assignments, runtime))
    }
    fn stats(&self, names: Vec<String>) -> BoxFuture<'_, Result<Vec<dbus::StatsInfo>>> {
        Box::pin(Registry::stats(self, names))
    }
    fn watch_stats(&self, subscriber: String, interval_usec: u64) -> Result<()> {
        Registry::watch_stats(self, subscriber, interval_usec)
    }
    fn unwatch_stats(&self, subscriber: &str) {
        Registry::unwatch_stats(self, subscriber)
    }
    fn list_images(&self) -> Vec<dbus::ImageInfo> {
        Registry::list_images(self)
    }
    fn image_info(&self, name: &str) -> Option<dbus::ImageInfo> {
        Registry::image_info(self, name)
    }
    fn image_config(&self, name: &str) -> Option<image::ImageConfig> {
        Registry::image_config(self, name)
    }
    fn import_image(
        &self,
        format: String,
        source: String,
        name: String,
        options: HashMap<String, OwnedVariant>,
    ) -> BoxFuture<'_, Result<OwnedObjectPath>> {
        Box::pin(Registry::import_image(self, format, source, name, options))
    }
    fn pull_image(
        &self,
        reference: String,
        name: String,
        options: HashMap<String, OwnedVariant>,
    ) -> BoxFuture<'_, Result<OwnedObjectPath>> {
        Box::pin(Registry::pull_image(self, reference, name, options))
    }
    fn remove_image(&self, name: String, force: bool) -> BoxFuture<'_, Result<()>> {
        Box::pin(Registry::remove_image(self, name, force))
    }
    fn copy_image(
        &self,
        op: &'static str,
        name: String,
        new_name: String,
    ) -> BoxFuture<'_, Result<OwnedObjectPath>> {
        Box::pin(Registry::copy_image(self, op, name, new_name))
    }
    fn export_tar(
        &self,
        what: &'static str,
        name: String,
        fd: OwnedFd,
    ) -> BoxFuture<'_, Result<()>> {
        Box::pin(Registry::export_tar(self, what, name, fd))
    }
    fn list(&self) -> Vec<ContainerInfo> {
        self.entries
            .lock()
            .unwrap()
            .iter()
            .map(|(n, e)| Self::info_of(n, e))
            .collect()
    }
    fn info(&self, name: &str) -> Option<ContainerInfo> {
        self.entries
            .lock()
            .unwrap()
            .get(name)
            .map(|e| Self::info_of(name, e))
    }
}
