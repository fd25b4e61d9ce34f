//! The D-Bus API `org.berth.berth1`: one definition serves berthd (the `#[interface]` impls)
//! and berthctl (the proxies generated from them).
//!
//! The objects only translate between the bus and a [`Backend`]; the daemon implements it.
//! Objects hold `Weak` references to it: the daemon owns the backend, the object server does
//! not keep it alive.

pub mod admission;
pub mod containers;
pub mod gate;
pub mod images;
pub mod life;
pub mod listing;
pub mod object_manager;
pub mod options;
pub mod standard;
#[cfg(test)]
mod tests;
pub mod units;

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use zbus::message::Header;
use zbus::object_server::SignalEmitter;
use zbus::{DBusError, OwnedObjectPath, OwnedVariant, Type, interface};

pub use admission::{Held, Permit};
pub use containers::{ContainerOps, ProcessInfo, ReloadResult};
pub use images::ImageOps;
pub use life::LifeInfo;
pub use object_manager::ObjectManager;
pub use options::Options;
pub use units::UnitOps;

pub const BUS_NAME: &str = "org.berth.berth1";
pub const MANAGER_PATH: &str = "/org/berth/berth1";

/// Errors on the bus, named `org.berth.berth1.Error.<Variant>`.
#[derive(Debug, DBusError)]
#[zbus(prefix = "org.berth.berth1.Error")]
pub enum Error {
    #[zbus(error)]
    ZBus(zbus::Error),
    /// No container has that name.
    NoSuchContainer(String),
    /// No image has that name.
    NoSuchImage(String),
    /// No network has that name.
    NoSuchNetwork(String),
    /// No volume has that name.
    NoSuchVolume(String),
    /// No exec has that ID (it ended and was waited for long ago, or never was).
    NoSuchExec(String),
    /// An argument is malformed or out of range.
    InvalidArgument(String),
    /// A container with that name exists.
    AlreadyExists(String),
    /// The container is not in a state that allows the operation.
    InvalidState(String),
    /// The payload's command does not exist in the container.
    CommandNotFound(String),
    /// The payload's command exists but cannot be executed.
    CannotExecute(String),
    /// The caller may not do this.
    PermissionDenied(String),
    /// A configured bound was reached.
    LimitExceeded(String),
    /// Starting or stopping failed (systemd, the kernel or the helper refused).
    Failed(String),
}

pub type Result<T> = std::result::Result<T, Error>;

/// One container, as `ListContainers` returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct ContainerInfo {
    pub name: String,
    /// created | starting | running | stopping | exited
    pub state: String,
    pub unit: String,
    /// Host PID of the container's PID 1; 0 when not running.
    pub leader: u32,
    pub image: String,
    pub root_directory: String,
    /// Microseconds since the epoch; 0 when never.
    pub created_at: u64,
    pub started_at: u64,
    /// The payload's exit status (128 + signal when killed; 127/126/125 when a start
    /// failed: command not found, not executable, other); -1 before the first exit.
    pub exit_status: i32,
    /// Why the last start failed; empty when it did not.
    pub last_error: String,
    /// Resource settings in force (`memory` → `512M`, …; see README).
    pub resources: HashMap<String, String>,
    /// OOM kills recorded, and when the last happened (microseconds since the epoch, 0: never).
    pub oom_kills: u64,
    pub last_oom_at: u64,
    /// How it is confined: `userns` (`auto RANGE`, `UID:COUNT` or `host`), `capabilities`,
    /// `seccomp` (`default`, `unconfined` or the profile), `no-new-privileges`, `selinux`
    /// (its label, or why there is none).
    pub security: HashMap<String, String>,
    /// `--label KEY=VALUE`s of the container.
    pub labels: HashMap<String, String>,
    /// The ID of the stored image it runs (`sha256:…`); empty for a directory or a shipped
    /// directory image.
    pub image_id: String,
    /// The network mode: bridge, bridge:NAME, none, host, container:NAME, veth,
    /// macvlan:IFACE.
    pub network: String,
    /// Its addresses with their prefix (`10.89.0.2/16`, `fd…::2/64`) while it runs.
    pub addresses: Vec<String>,
    /// Published ports while it runs: (host address, empty for all; host port; container
    /// port; tcp or udp).
    pub ports: Vec<(String, u16, u16, String)>,
    pub object_path: OwnedObjectPath,
}

/// One network, as `ListNetworks` and `GetNetwork` return it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct NetworkInfo {
    pub name: String,
    /// The host bridge (`berth0` for the default network `berth`).
    pub bridge: String,
    pub subnet: String,
    /// Empty without IPv6.
    pub subnet6: String,
    /// The bridge's addresses, the containers' default routes and resolver.
    pub gateway: String,
    pub gateway6: String,
    /// No NAT and no traffic beyond the bridge.
    pub internal: bool,
    /// Containers holding an address on it: (name, IPv4, IPv6 or empty, running now).
    pub containers: Vec<(String, String, String, bool)>,
}

/// One image, as `ListImages` returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct ImageInfo {
    pub name: String,
    /// directory | tar | oci | docker | registry
    pub kind: String,
    /// The manifest digest (`sha256:…`); empty for directory images shipped with berth.
    pub digest: String,
    /// Bytes of the layers, uncompressed.
    pub size: u64,
    /// Microseconds since the epoch.
    pub created: u64,
    /// Layer digests (diff IDs), bottom first; a shipped directory image lists its directory.
    pub layers: Vec<String>,
    pub read_only: bool,
    pub object_path: OwnedObjectPath,
}

/// One container's resource usage, as `GetStats` and the `Stats` signal carry it. Counters the
/// kernel does not provide here are 0; limits are `u64::MAX` when unlimited.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, Type)]
pub struct StatsInfo {
    pub name: String,
    pub state: String,
    /// When the sample was taken, microseconds since the epoch.
    pub timestamp_usec: u64,
    pub cpu_usage_ns: u64,
    /// CPU use since the previous sample, in percent of one CPU.
    pub cpu_percent: f64,
    pub memory_bytes: u64,
    pub memory_limit_bytes: u64,
    pub pids: u64,
    pub pids_limit: u64,
    pub io_read_bytes: u64,
    pub io_write_bytes: u64,
    pub net_rx_bytes: u64,
    pub net_tx_bytes: u64,
    pub oom_kills: u64,
}

/// A named volume, as `ListVolumes` returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct VolumeInfo {
    pub name: String,
    /// Always `local`.
    pub driver: String,
    /// Microseconds since the epoch.
    pub created_at: u64,
    /// Made for one container (`-v /path`, an image's VOLUME) and removed with it.
    pub anonymous: bool,
    pub labels: HashMap<String, String>,
    /// The containers that mount it.
    pub users: Vec<String>,
}

/// A command started by `Exec`.
#[derive(Debug)]
pub struct ExecStarted {
    /// What `WaitExec` and `KillExec` take.
    pub id: String,
    /// Its PID on the host (berthd's PID namespace).
    pub pid: u32,
    /// The master of its terminal, when one was asked for.
    pub terminal: Option<std::os::fd::OwnedFd>,
}

/// What a copy did: entries (directories, files, symlinks), file data bytes, and entries
/// left out (FIFOs, sockets, devices, kernel file systems).
pub type CopyCounts = (u64, u64, u64);

pub use crate::polkit::Action;

/// Who is calling: the sender's unique name, and whether its message allows interactive
/// authorization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub sender: String,
    pub interactive: bool,
}

impl Caller {
    fn of(hdr: &Header<'_>) -> Result<Caller> {
        let sender = hdr
            .sender()
            .ok_or_else(|| Error::PermissionDenied("the caller is unknown".into()))?;
        Ok(Caller {
            sender: sender.to_string(),
            interactive: hdr
                .primary()
                .flags()
                .contains(zbus::message::Flags::ALLOW_INTERACTIVE_AUTH),
        })
    }
}

/// What the bus objects need from the daemon. Every mutating method gets its caller: the
/// backend checks the arguments, then asks whether the caller may do that (polkit), then
/// acts.
pub trait Backend: ImageOps + ContainerOps + UnitOps + Send + Sync + 'static {
    /// Count a call of `sender` against its connection and its uid (see [`admission`]), or
    /// refuse it with `LimitExceeded`. Every method asks this first.
    fn admit(&self, sender: String) -> BoxFuture<'_, Result<Permit>>;
    /// Count a call of `sender` until its reply is written (see [`gate`]), or `None`: its uid
    /// has too many unanswered already, and the call is dropped.
    fn answer(&self, sender: String) -> BoxFuture<'_, Option<admission::Answer>>;
    /// Whether the caller is root (who may see everything); false when it cannot be told.
    fn caller_is_root(&self, sender: String) -> BoxFuture<'_, bool>;
    fn create(
        &self,
        caller: Caller,
        name: String,
        options: Options,
    ) -> BoxFuture<'_, Result<OwnedObjectPath>>;
    fn start(&self, caller: Caller, name: String, options: Options) -> BoxFuture<'_, Result<()>>;
    fn stop(&self, caller: Caller, name: String, timeout_usec: u64) -> BoxFuture<'_, Result<()>>;
    fn kill(
        &self,
        caller: Caller,
        name: String,
        whom: String,
        signal: i32,
    ) -> BoxFuture<'_, Result<()>>;
    fn remove(&self, caller: Caller, name: String, force: bool) -> BoxFuture<'_, Result<()>>;
    fn wait(&self, name: String) -> BoxFuture<'_, Result<i32>>;
    fn set_resources(
        &self,
        caller: Caller,
        name: String,
        assignments: Vec<(String, String)>,
        runtime: bool,
    ) -> BoxFuture<'_, Result<()>>;
    fn stats(&self, names: Vec<String>) -> BoxFuture<'_, Result<Vec<StatsInfo>>>;
    fn watch_stats(&self, subscriber: String, interval_usec: u64) -> Result<()>;
    fn unwatch_stats(&self, subscriber: &str);
    fn list_images(&self) -> Vec<ImageInfo>;
    fn image_info(&self, name: &str) -> Option<ImageInfo>;
    fn image_config(&self, name: &str) -> Option<crate::image::ImageConfig>;
    /// The image ID (`sha256:…` of its config) of a stored image; None for a shipped
    /// directory image.
    fn image_id(&self, _name: &str) -> Option<String> {
        None
    }
    /// A container's readiness and restart policy (see [`LifeInfo`]).
    fn life(&self, _name: &str) -> Option<LifeInfo> {
        Some(LifeInfo::default())
    }
    fn import_image(
        &self,
        caller: Caller,
        format: String,
        source: String,
        name: String,
        options: Options,
    ) -> BoxFuture<'_, Result<OwnedObjectPath>>;
    fn pull_image(
        &self,
        caller: Caller,
        reference: String,
        name: String,
        options: Options,
    ) -> BoxFuture<'_, Result<OwnedObjectPath>>;
    fn remove_image(&self, caller: Caller, name: String, force: bool) -> BoxFuture<'_, Result<()>>;
    /// `op`: rename, clone or tag.
    fn copy_image(
        &self,
        caller: Caller,
        op: &'static str,
        name: String,
        new_name: String,
    ) -> BoxFuture<'_, Result<OwnedObjectPath>>;
    /// `what`: image or container.
    fn export_tar(
        &self,
        caller: Caller,
        what: &'static str,
        name: String,
        fd: std::os::fd::OwnedFd,
    ) -> BoxFuture<'_, Result<()>>;
    fn list(&self) -> Vec<ContainerInfo>;
    /// The `ListContainers` reply body: [`Backend::list`] as [`listing::body`] frames it,
    /// each record [`ContainerInfo::redact`]ed when `redact`. berthd's keeps the records
    /// encoded between changes; this one encodes them all.
    fn list_body(&self, redact: bool) -> zbus::Result<Vec<u8>> {
        let mut records = Vec::new();
        for mut c in self.list() {
            if redact {
                c.redact();
            }
            records.push(listing::encode(&c)?);
        }
        Ok(listing::body(records.iter().map(Vec::as_slice)))
    }
    fn info(&self, name: &str) -> Option<ContainerInfo>;
    fn create_network(
        &self,
        caller: Caller,
        name: String,
        options: Options,
    ) -> BoxFuture<'_, Result<()>>;
    fn remove_network(&self, caller: Caller, name: String) -> BoxFuture<'_, Result<()>>;
    fn list_networks(&self) -> BoxFuture<'_, Result<Vec<NetworkInfo>>>;
    fn network_info(&self, name: String) -> BoxFuture<'_, Result<NetworkInfo>>;
    /// StartContainer with a terminal: returns its master.
    fn start_terminal(
        &self,
        caller: Caller,
        name: String,
        options: Options,
    ) -> BoxFuture<'_, Result<std::os::fd::OwnedFd>>;
    fn exec(
        &self,
        caller: Caller,
        name: String,
        options: Options,
    ) -> BoxFuture<'_, Result<ExecStarted>>;
    fn wait_exec(&self, name: String, id: String) -> BoxFuture<'_, Result<i32>>;
    /// Follow a container's output live: a socket of frames
    /// ([`crate::journal::feed`]) and the sequence number of the newest line relayed before.
    fn follow_logs(
        &self,
        _caller: Caller,
        name: String,
    ) -> BoxFuture<'_, Result<(std::os::fd::OwnedFd, u64)>> {
        Box::pin(async move { Err(Error::NoSuchContainer(name)) })
    }
    fn kill_exec(
        &self,
        caller: Caller,
        name: String,
        id: String,
        signal: i32,
    ) -> BoxFuture<'_, Result<()>>;
    /// `into`: CopyTo (the stream is read) or CopyFrom (written).
    fn copy(
        &self,
        caller: Caller,
        into: bool,
        name: String,
        path: String,
        stream: std::os::fd::OwnedFd,
        options: Options,
    ) -> BoxFuture<'_, Result<CopyCounts>>;
    fn bind(
        &self,
        caller: Caller,
        name: String,
        source: std::os::fd::OwnedFd,
        path: String,
        options: Options,
    ) -> BoxFuture<'_, Result<()>>;
    fn create_volume(
        &self,
        caller: Caller,
        name: String,
        options: Options,
    ) -> BoxFuture<'_, Result<String>>;
    fn list_volumes(&self) -> Result<Vec<VolumeInfo>>;
    fn remove_volume(&self, caller: Caller, name: String) -> BoxFuture<'_, Result<()>>;
}

/// Whether the sender of `hdr` is root; a property read without a header (the ObjectManager's
/// signals) counts as not.
async fn is_root(b: &Arc<dyn Backend>, hdr: Option<&Header<'_>>) -> bool {
    match hdr.and_then(|h| h.sender()) {
        Some(s) => b.caller_is_root(s.to_string()).await,
        None => false,
    }
}

impl ContainerInfo {
    /// Drop what only root may see: paths on the host and failure messages (which name
    /// commands and paths). Everything else is public.
    pub fn redact(&mut self) {
        self.root_directory.clear();
        self.last_error.clear();
    }
}

/// The backend, while the daemon is alive.
fn live(b: &Weak<dyn Backend>) -> Result<Arc<dyn Backend>> {
    b.upgrade()
        .ok_or_else(|| Error::Failed("berthd is shutting down".into()))
}

/// What every method does first: refuse arguments beyond its signature with
/// `InvalidArgument` (zbus refuses arguments of the wrong types with `InvalidArgs`, but
/// ignores any after those it reads), then count the call (see [`admission`]).
async fn enter(b: &Weak<dyn Backend>, hdr: &Header<'_>, signature: &str) -> Result<Permit> {
    strict(hdr, signature)?;
    let sender = hdr
        .sender()
        .ok_or_else(|| Error::PermissionDenied("the caller is unknown".into()))?;
    let permit = live(b)?.admit(sender.to_string()).await?;
    // Let other calls in before doing the work: a call that never waits finishes (and is
    // written, which frees its permit) before the next is even read, so a flood of them was
    // served one after the other ahead of everyone else's calls, and never reached its bound.
    tokio::task::yield_now().await;
    Ok(permit)
}

/// The call's arguments are exactly `signature`.
fn strict(hdr: &Header<'_>, signature: &str) -> Result<()> {
    // The body's signature is that of a structure of the arguments: compare without it.
    let got = hdr.signature().to_string_no_parens();
    if got == signature {
        return Ok(());
    }
    Err(Error::InvalidArgument(format!(
        "the method takes arguments ({signature}), not ({got})"
    )))
}

/// `/org/berth/berth1`: the manager.
pub struct Manager {
    pub backend: Weak<dyn Backend>,
}

#[interface(
    name = "org.berth.berth1.Manager",
    // The documentation is in dbus-interfaces/ and README.md; left out of Introspect it
    // keeps every reply a few kB (an unread flood of them cost berthd 17 MB).
    introspection_docs = false,
    proxy(
        default_service = "org.berth.berth1",
        default_path = "/org/berth/berth1"
    )
)]
impl Manager {
    /// Define a container. Options: Image (s), Directory (s), Command (as), Hostname (s),
    /// AutoRemove (b), Properties (a{ss}, scope properties). Returns the container's object.
    async fn create_container(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        name: String,
        options: Options,
    ) -> Result<OwnedObjectPath> {
        let _call = enter(&self.backend, &hdr, "sa{sv}").await?;
        live(&self.backend)?
            .create(Caller::of(&hdr)?, name, options)
            .await
    }

    /// Start a defined container and return once its payload runs. Options: StandardInput,
    /// StandardOutput, StandardError (h) for the payload's stdio (default /dev/null).
    async fn start_container(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        name: String,
        options: Options,
    ) -> Result<()> {
        let _call = enter(&self.backend, &hdr, "sa{sv}").await?;
        live(&self.backend)?
            .start(Caller::of(&hdr)?, name, options)
            .await
    }

    /// Start a defined container held by the caller's unit, `berth@NAME.service` (for
    /// `berthctl unit-start`, its ExecStart): berthd drives the helper on the other end of
    /// `helper_socket`, which the caller execs, in place, once this returns the helper's path.
    /// Options as StartContainer.
    async fn start_container_in_unit(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        name: String,
        helper_socket: zbus::OwnedFd,
        options: Options,
    ) -> Result<String> {
        let _call = enter(&self.backend, &hdr, "sha{sv}").await?;
        live(&self.backend)?
            .start_in_unit(Caller::of(&hdr)?, name, helper_socket.into(), options)
            .await
    }

    /// Start the container at boot: enable `berth@NAME.service` through machines.target.
    /// Returns what was done (empty when it already was).
    async fn enable_container(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        name: String,
    ) -> Result<String> {
        let _call = enter(&self.backend, &hdr, "s").await?;
        live(&self.backend)?
            .set_enabled(Caller::of(&hdr)?, name, true)
            .await
    }

    /// No longer start the container at boot (disable `berth@NAME.service`).
    async fn disable_container(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        name: String,
    ) -> Result<String> {
        let _call = enter(&self.backend, &hdr, "s").await?;
        live(&self.backend)?
            .set_enabled(Caller::of(&hdr)?, name, false)
            .await
    }

    /// StartContainer with a terminal: a pty allocated in the container's own devpts is the
    /// payload's controlling terminal and every standard stream not passed in `options`;
    /// returns its master. Options as StartContainer.
    async fn start_container_terminal(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        name: String,
        options: Options,
    ) -> Result<zbus::OwnedFd> {
        let _call = enter(&self.backend, &hdr, "sa{sv}").await?;
        live(&self.backend)?
            .start_terminal(Caller::of(&hdr)?, name, options)
            .await
            .map(zbus::OwnedFd::from)
    }

    /// Make a named volume under /var/lib/berth/volumes. Options: Labels (a{ss}). Returns its
    /// name.
    async fn create_volume(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        name: String,
        options: Options,
    ) -> Result<String> {
        let _call = enter(&self.backend, &hdr, "sa{sv}").await?;
        live(&self.backend)?
            .create_volume(Caller::of(&hdr)?, name, options)
            .await
    }

    /// All volumes.
    async fn list_volumes(&self, #[zbus(header)] hdr: Header<'_>) -> Result<Vec<VolumeInfo>> {
        let _call = enter(&self.backend, &hdr, "").await?;
        live(&self.backend)?.list_volumes()
    }

    /// Remove a volume and its data; refused (InvalidState) while a container mounts it.
    async fn remove_volume(&self, #[zbus(header)] hdr: Header<'_>, name: String) -> Result<()> {
        let _call = enter(&self.backend, &hdr, "s").await?;
        live(&self.backend)?
            .remove_volume(Caller::of(&hdr)?, name)
            .await
    }

    /// SIGTERM to the container's PID 1, then SIGKILL to the whole scope after the timeout
    /// (microseconds; 0 means 10 s). Returns once the container has exited.
    async fn stop_container(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        name: String,
        timeout_usec: u64,
    ) -> Result<()> {
        let _call = enter(&self.backend, &hdr, "st").await?;
        live(&self.backend)?
            .stop(Caller::of(&hdr)?, name, timeout_usec)
            .await
    }

    /// Send a signal to the container's PID 1 (whom = "leader") or every process in its scope
    /// (whom = "all").
    async fn kill_container(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        name: String,
        whom: String,
        signal: i32,
    ) -> Result<()> {
        let _call = enter(&self.backend, &hdr, "ssi").await?;
        live(&self.backend)?
            .kill(Caller::of(&hdr)?, name, whom, signal)
            .await
    }

    /// Remove a container's definition and writable layer; a running one only with force,
    /// which kills it first.
    async fn remove_container(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        name: String,
        force: bool,
    ) -> Result<()> {
        let _call = enter(&self.backend, &hdr, "sb").await?;
        live(&self.backend)?
            .remove(Caller::of(&hdr)?, name, force)
            .await
    }

    /// Change resource settings of a running container, live, through systemd
    /// (`SetUnitProperties` on its scope). Assignments are `(key, value)`: the keys of
    /// `berthctl set` (memory, cpus, pids, …) or scope properties (MemoryLow, …). Unless
    /// `runtime`, the container's definition keeps them for its next start.
    async fn set_resources(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        name: String,
        assignments: Vec<(String, String)>,
        runtime: bool,
    ) -> Result<()> {
        let _call = enter(&self.backend, &hdr, "sa(ss)b").await?;
        live(&self.backend)?
            .set_resources(Caller::of(&hdr)?, name, assignments, runtime)
            .await
    }

    /// Resource usage of the named containers (all running ones when empty).
    async fn get_stats(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        names: Vec<String>,
    ) -> Result<Held<Vec<StatsInfo>>> {
        let call = enter(&self.backend, &hdr, "as").await?;
        call.hold(live(&self.backend)?.stats(names).await?)
    }

    /// Receive a `Stats` signal (sent to the caller only) for all running containers every
    /// `interval_usec` (at least 100 ms), until `UnwatchStats` or the caller leaves the bus.
    async fn watch_stats(&self, #[zbus(header)] hdr: Header<'_>, interval_usec: u64) -> Result<()> {
        let _call = enter(&self.backend, &hdr, "t").await?;
        let sender = hdr
            .sender()
            .ok_or_else(|| Error::InvalidArgument("the caller is unknown".into()))?;
        live(&self.backend)?.watch_stats(sender.to_string(), interval_usec)
    }

    /// Stop the caller's `Stats` signals.
    async fn unwatch_stats(&self, #[zbus(header)] hdr: Header<'_>) -> Result<()> {
        let _call = enter(&self.backend, &hdr, "").await?;
        if let Some(sender) = hdr.sender() {
            live(&self.backend)?.unwatch_stats(sender.as_str());
        }
        Ok(())
    }

    /// All images: those in the store and the directory images shipped with berth.
    async fn list_images(&self, #[zbus(header)] hdr: Header<'_>) -> Result<Held<Vec<ImageInfo>>> {
        let call = enter(&self.backend, &hdr, "").await?;
        call.hold(live(&self.backend)?.list_images())
    }

    /// The object path of an image.
    async fn get_image(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        name: String,
    ) -> Result<OwnedObjectPath> {
        let _call = enter(&self.backend, &hdr, "s").await?;
        live(&self.backend)?
            .image_info(&name)
            .map(|i| i.object_path)
            .ok_or_else(|| Error::NoSuchImage(format!("no image named {name:?}")))
    }

    /// Import an image from `source` (an absolute path): format "fs" (a directory), "tar" (a
    /// root file system tarball; gzip, zstd, xz or none) or "oci" (a docker-save archive, an
    /// OCI archive or an OCI layout directory). Returns once the image is complete; progress
    /// goes out as ImageProgress signals.
    async fn import_image(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        format: String,
        source: String,
        name: String,
        options: Options,
    ) -> Result<OwnedObjectPath> {
        let _call = enter(&self.backend, &hdr, "sssa{sv}").await?;
        live(&self.backend)?
            .import_image(Caller::of(&hdr)?, format, source, name, options)
            .await
    }

    /// Pull an image from an OCI distribution registry. `name` may be empty (then the
    /// repository's last component, with `-TAG` unless the tag is latest). Options: Insecure
    /// (b, plain HTTP), AuthFile (s, a docker/podman auth.json; default /etc/berth/auth.json
    /// when it exists).
    async fn pull_image(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        reference: String,
        name: String,
        options: Options,
    ) -> Result<OwnedObjectPath> {
        let _call = enter(&self.backend, &hdr, "ssa{sv}").await?;
        live(&self.backend)?
            .pull_image(Caller::of(&hdr)?, reference, name, options)
            .await
    }

    /// Remove an image; refused while a running container uses it, and while any container
    /// is defined on it unless `force`. Layers no other image uses are deleted.
    async fn remove_image(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        name: String,
        force: bool,
    ) -> Result<()> {
        let _call = enter(&self.backend, &hdr, "sb").await?;
        live(&self.backend)?
            .remove_image(Caller::of(&hdr)?, name, force)
            .await
    }

    /// Give an image a new name (refused while containers refer to it).
    async fn rename_image(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        name: String,
        new_name: String,
    ) -> Result<OwnedObjectPath> {
        let _call = enter(&self.backend, &hdr, "ss").await?;
        live(&self.backend)?
            .copy_image(Caller::of(&hdr)?, "rename", name, new_name)
            .await
    }

    /// Make an independent, writable copy of an image (layers are shared, never copied).
    async fn clone_image(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        name: String,
        new_name: String,
    ) -> Result<OwnedObjectPath> {
        let _call = enter(&self.backend, &hdr, "ss").await?;
        live(&self.backend)?
            .copy_image(Caller::of(&hdr)?, "clone", name, new_name)
            .await
    }

    /// A second name for the same image.
    async fn tag_image(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        name: String,
        new_name: String,
    ) -> Result<OwnedObjectPath> {
        let _call = enter(&self.backend, &hdr, "ss").await?;
        live(&self.backend)?
            .copy_image(Caller::of(&hdr)?, "tag", name, new_name)
            .await
    }

    /// Write an image's merged root file system as an uncompressed tarball to `fd`.
    async fn export_image(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        name: String,
        fd: zbus::OwnedFd,
    ) -> Result<()> {
        let _call = enter(&self.backend, &hdr, "sh").await?;
        live(&self.backend)?
            .export_tar(Caller::of(&hdr)?, "image", name, fd.into())
            .await
    }

    /// Write a container's root file system (its writable layer over its image) as an
    /// uncompressed tarball to `fd`.
    async fn export_container(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        name: String,
        fd: zbus::OwnedFd,
    ) -> Result<()> {
        let _call = enter(&self.backend, &hdr, "sh").await?;
        live(&self.backend)?
            .export_tar(Caller::of(&hdr)?, "container", name, fd.into())
            .await
    }

    /// Push an image to an OCI distribution registry: `reference` is the destination
    /// (empty: the registry and repository the image's tag names). Blobs the registry has are
    /// not sent; cross-repository mounts are used where the image is known to be. Options:
    /// Insecure (b), AuthFile (s; default /etc/berth/auth.json when it exists). Returns the
    /// manifest digest.
    async fn push_image(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        name: String,
        reference: String,
        options: Options,
    ) -> Result<String> {
        let _call = enter(&self.backend, &hdr, "ssa{sv}").await?;
        live(&self.backend)?
            .push_image(Caller::of(&hdr)?, name, reference, options)
            .await
    }

    /// Write images (tags, IDs) as one archive to `fd`: format "oci-archive" or
    /// "docker-archive" (what `podman load` / `docker load` read). No options yet.
    async fn save_images(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        names: Vec<String>,
        format: String,
        fd: zbus::OwnedFd,
        options: Options,
    ) -> Result<()> {
        let _call = enter(&self.backend, &hdr, "assha{sv}").await?;
        live(&self.backend)?
            .save_images(Caller::of(&hdr)?, names, format, fd.into(), options)
            .await
    }

    /// Load every image of a docker or OCI archive (or OCI layout directory) at `path` (an
    /// absolute path), tagged as the archive says; tags that exist move. Options: Name (s,
    /// load only the image the archive tags so, or name its single untagged image). Returns
    /// (name, object) per image.
    async fn load_images(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        path: String,
        options: Options,
    ) -> Result<Vec<(String, OwnedObjectPath)>> {
        let _call = enter(&self.backend, &hdr, "sa{sv}").await?;
        live(&self.backend)?
            .load_images(Caller::of(&hdr)?, path, options)
            .await
    }

    /// Remove dangling images no container uses, then unreferenced layers and old blobs.
    /// Options: All (b, also tagged images no container uses). Returns what was removed (IDs
    /// and tags) and the bytes freed.
    #[zbus(out_args("removed", "bytes"))]
    async fn prune_images(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        options: Options,
    ) -> Result<(Vec<String>, u64)> {
        let _call = enter(&self.backend, &hdr, "a{sv}").await?;
        live(&self.backend)?
            .prune_images(Caller::of(&hdr)?, options)
            .await
    }

    /// Check credentials against a registry (host[:port]) and store them in the auth file
    /// pulls and pushes read (/etc/berth/auth.json, mode 0600). A refused password is
    /// InvalidArgument and leaves the file as it was. Options: Insecure (b), AuthFile (s).
    async fn login(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        registry: String,
        user: String,
        password: String,
        options: Options,
    ) -> Result<()> {
        let _call = enter(&self.backend, &hdr, "sssa{sv}").await?;
        live(&self.backend)?
            .login(Caller::of(&hdr)?, registry, user, password, options)
            .await
    }

    /// Remove a registry's credentials from the auth file; InvalidArgument when it has none
    /// (the file is then not touched). Options: AuthFile (s).
    async fn logout(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        registry: String,
        options: Options,
    ) -> Result<()> {
        let _call = enter(&self.backend, &hdr, "sa{sv}").await?;
        live(&self.backend)?
            .logout(Caller::of(&hdr)?, registry, options)
            .await
    }

    /// Give a stopped container a new name: its definition, writable layer, runtime record
    /// and bus object move; its scope is named after it at its next start. Refused while it
    /// runs and when the new name is taken.
    async fn rename_container(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        name: String,
        new_name: String,
    ) -> Result<OwnedObjectPath> {
        let _call = enter(&self.backend, &hdr, "ss").await?;
        live(&self.backend)?
            .rename(Caller::of(&hdr)?, name, new_name)
            .await
    }

    /// Freeze every process of a running container (systemd's freezer, `FreezeUnit` on its
    /// scope; hosts with the unified cgroup hierarchy only).
    async fn pause_container(&self, #[zbus(header)] hdr: Header<'_>, name: String) -> Result<()> {
        let _call = enter(&self.backend, &hdr, "s").await?;
        live(&self.backend)?
            .freeze(Caller::of(&hdr)?, name, true)
            .await
    }

    /// Thaw a paused container.
    async fn unpause_container(&self, #[zbus(header)] hdr: Header<'_>, name: String) -> Result<()> {
        let _call = enter(&self.backend, &hdr, "s").await?;
        live(&self.backend)?
            .freeze(Caller::of(&hdr)?, name, false)
            .await
    }

    /// The processes of a running container: host and container PID, host and container
    /// uid, the user's name in the container, the command line.
    async fn list_processes(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        name: String,
    ) -> Result<Vec<ProcessInfo>> {
        let _call = enter(&self.backend, &hdr, "s").await?;
        live(&self.backend)?.processes(name).await
    }

    /// Validate a container definition (the options of CreateContainer) and return the plan
    /// berthd would apply to start it, as JSON (root, mounts, limits, namespaces, user,
    /// capabilities, seccomp). Nothing is created, allocated or written.
    async fn plan_container(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        name: String,
        options: Options,
    ) -> Result<String> {
        let _call = enter(&self.backend, &hdr, "sa{sv}").await?;
        live(&self.backend)?
            .plan(Caller::of(&hdr)?, name, options)
            .await
    }

    /// Read the declarative definitions in /etc/berth/containers/NAME.toml: create the
    /// containers that do not exist, update stopped ones whose file changed, and enable
    /// berth@NAME.service for those that ask to start at boot (disable it for the others).
    async fn reload(&self, #[zbus(header)] hdr: Header<'_>) -> Result<Vec<ReloadResult>> {
        let _call = enter(&self.backend, &hdr, "").await?;
        live(&self.backend)?.reload(Caller::of(&hdr)?).await
    }

    /// Disk use: images, dangling, layers, layers_bytes, blobs, blobs_bytes,
    /// reclaimable_bytes, containers, containers_bytes.
    async fn get_disk_usage(
        &self,
        #[zbus(header)] hdr: Header<'_>,
    ) -> Result<HashMap<String, u64>> {
        let _call = enter(&self.backend, &hdr, "").await?;
        live(&self.backend)?.disk_usage().await
    }

    /// Wait until the container has exited and return its exit status. A container removed at
    /// its exit (AutoRemove) still answers with its status for a while, so a client that calls
    /// this after StartContainer cannot miss a payload that exited at once.
    async fn wait_container(&self, #[zbus(header)] hdr: Header<'_>, name: String) -> Result<i32> {
        let mut call = enter(&self.backend, &hdr, "s").await?;
        let backend = live(&self.backend)?;
        tokio::select! {
            r = backend.wait(name) => r,
            // Nobody is left to read the status.
            () = call.caller_left() => Err(Error::Failed("the caller left the bus".into())),
        }
    }

    /// All containers.
    async fn list_containers(
        &self,
        #[zbus(header)] hdr: Header<'_>,
    ) -> Result<Held<Vec<ContainerInfo>>> {
        let call = enter(&self.backend, &hdr, "").await?;
        let b = live(&self.backend)?;
        let root = is_root(&b, Some(&hdr)).await;
        let mut all = b.list();
        if !root {
            all.iter_mut().for_each(ContainerInfo::redact);
        }
        call.hold(all)
    }

    /// The object path of a container.
    async fn get_container(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        name: String,
    ) -> Result<OwnedObjectPath> {
        let _call = enter(&self.backend, &hdr, "s").await?;
        live(&self.backend)?
            .info(&name)
            .map(|i| i.object_path)
            .ok_or_else(|| Error::NoSuchContainer(format!("no container named {name:?}")))
    }

    /// Define a bridge network containers join by its name (the Network option of
    /// CreateContainer). Options: Subnet
    /// (s, IPv4 CIDR; default: the first free /24 of 10.89.0.0/16 avoiding the host's routes),
    /// IPv6 (b, add an IPv6 subnet, a ULA /64 unless Subnet6 is given), Subnet6 (s), Internal
    /// (b, no NAT and no traffic beyond the bridge). Overlapping subnets are refused.
    async fn create_network(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        name: String,
        options: Options,
    ) -> Result<()> {
        let _call = enter(&self.backend, &hdr, "sa{sv}").await?;
        live(&self.backend)?
            .create_network(Caller::of(&hdr)?, name, options)
            .await
    }

    /// Remove a network; refused for the default network and while containers hold
    /// addresses on it.
    async fn remove_network(&self, #[zbus(header)] hdr: Header<'_>, name: String) -> Result<()> {
        let _call = enter(&self.backend, &hdr, "s").await?;
        live(&self.backend)?
            .remove_network(Caller::of(&hdr)?, name)
            .await
    }

    /// All networks (the default one, `berth`, always).
    async fn list_networks(
        &self,
        #[zbus(header)] hdr: Header<'_>,
    ) -> Result<Held<Vec<NetworkInfo>>> {
        let call = enter(&self.backend, &hdr, "").await?;
        call.hold(live(&self.backend)?.list_networks().await?)
    }

    /// One network.
    async fn get_network(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        name: String,
    ) -> Result<NetworkInfo> {
        let _call = enter(&self.backend, &hdr, "s").await?;
        live(&self.backend)?.network_info(name).await
    }

    /// A container was defined.
    #[zbus(signal)]
    pub async fn container_new(
        emitter: &SignalEmitter<'_>,
        name: &str,
        path: OwnedObjectPath,
    ) -> zbus::Result<()>;

    /// Periodic resource usage, for a subscriber of `WatchStats`.
    #[zbus(signal)]
    pub async fn stats(emitter: &SignalEmitter<'_>, stats: Vec<StatsInfo>) -> zbus::Result<()>;

    /// The kernel killed a process of the container for lack of memory; `kills` counts all
    /// so far.
    #[zbus(signal, name = "ContainerOOMKilled")]
    pub async fn container_oom_killed(
        emitter: &SignalEmitter<'_>,
        name: &str,
        path: OwnedObjectPath,
        kills: u64,
    ) -> zbus::Result<()>;

    /// An image appeared (imported, pulled, renamed, cloned or tagged).
    #[zbus(signal)]
    pub async fn image_new(
        emitter: &SignalEmitter<'_>,
        name: &str,
        path: OwnedObjectPath,
    ) -> zbus::Result<()>;

    /// An image name was removed.
    #[zbus(signal)]
    pub async fn image_removed(
        emitter: &SignalEmitter<'_>,
        name: &str,
        path: OwnedObjectPath,
    ) -> zbus::Result<()>;

    /// Progress of an import, pull or export for image (or container) `name`: phase
    /// (importing, downloading, extracting, exporting, done), bytes done and total (0 when
    /// unknown), layers done and total.
    #[zbus(signal)]
    #[allow(clippy::too_many_arguments)]
    pub async fn image_progress(
        emitter: &SignalEmitter<'_>,
        name: &str,
        phase: &str,
        done: u64,
        total: u64,
        layers_done: u32,
        layers_total: u32,
    ) -> zbus::Result<()>;

    /// A container was removed.
    #[zbus(signal)]
    pub async fn container_removed(
        emitter: &SignalEmitter<'_>,
        name: &str,
        path: OwnedObjectPath,
    ) -> zbus::Result<()>;
}

/// `/org/berth/berth1/container/<escaped name>`: one container.
pub struct Container {
    pub backend: Weak<dyn Backend>,
    pub name: String,
}

fn gone(what: &str, name: &str) -> zbus::fdo::Error {
    zbus::fdo::Error::UnknownObject(format!("{what} {name:?} is gone"))
}

impl Container {
    /// The container as `hdr`'s sender may see it.
    async fn get_for(&self, hdr: Option<&Header<'_>>) -> zbus::fdo::Result<ContainerInfo> {
        let b = self
            .backend
            .upgrade()
            .ok_or_else(|| gone("container", &self.name))?;
        let mut info = self.get()?;
        if !is_root(&b, hdr).await {
            info.redact();
        }
        Ok(info)
    }

    fn get(&self) -> zbus::fdo::Result<ContainerInfo> {
        let b = self
            .backend
            .upgrade()
            .ok_or_else(|| gone("container", &self.name))?;
        b.info(&self.name).ok_or_else(|| {
            zbus::fdo::Error::UnknownObject(format!("container {:?} is gone", self.name))
        })
    }
}

#[interface(
    name = "org.berth.berth1.Container",
    // The documentation is in dbus-interfaces/ and README.md; left out of Introspect it
    // keeps every reply a few kB (an unread flood of them cost berthd 17 MB).
    introspection_docs = false,
    proxy(
        default_service = "org.berth.berth1",
        default_path = "/org/berth/berth1/container/_"
    )
)]
impl Container {
    #[zbus(property(emits_changed_signal = "const"))]
    fn name(&self) -> String {
        self.name.clone()
    }

    /// created | starting | running | stopping | exited
    #[zbus(property)]
    fn state(&self) -> zbus::fdo::Result<String> {
        Ok(self.get()?.state)
    }

    /// Host PID of the container's PID 1, 0 when not running.
    #[zbus(property)]
    fn leader(&self) -> zbus::fdo::Result<u32> {
        Ok(self.get()?.leader)
    }

    #[zbus(property(emits_changed_signal = "const"))]
    fn unit(&self) -> zbus::fdo::Result<String> {
        Ok(self.get()?.unit)
    }

    #[zbus(property(emits_changed_signal = "const"))]
    fn image(&self) -> zbus::fdo::Result<String> {
        Ok(self.get()?.image)
    }

    /// The root directory on the host (root only; empty for other callers).
    #[zbus(property(emits_changed_signal = "const"))]
    async fn root_directory(
        &self,
        #[zbus(header)] hdr: Option<Header<'_>>,
    ) -> zbus::fdo::Result<String> {
        Ok(self.get_for(hdr.as_ref()).await?.root_directory)
    }

    #[zbus(property(emits_changed_signal = "const"))]
    fn created_at(&self) -> zbus::fdo::Result<u64> {
        Ok(self.get()?.created_at)
    }

    #[zbus(property)]
    fn started_at(&self) -> zbus::fdo::Result<u64> {
        Ok(self.get()?.started_at)
    }

    /// Exit status of the last run (128 + signal when killed; 127, 126 or 125 when a start
    /// failed), -1 before the first exit.
    #[zbus(property)]
    fn exit_status(&self) -> zbus::fdo::Result<i32> {
        Ok(self.get()?.exit_status)
    }

    /// Why the last start failed; empty when it did not (root only; empty for other
    /// callers).
    #[zbus(property)]
    async fn last_error(
        &self,
        #[zbus(header)] hdr: Option<Header<'_>>,
    ) -> zbus::fdo::Result<String> {
        Ok(self.get_for(hdr.as_ref()).await?.last_error)
    }

    /// Resource settings in force: the definition's, plus live changes made with
    /// `SetResources(runtime = true)` while it runs.
    #[zbus(property)]
    fn resources(&self) -> zbus::fdo::Result<HashMap<String, String>> {
        Ok(self.get()?.resources)
    }

    /// OOM kills recorded for this container.
    #[zbus(property, name = "OOMKills")]
    fn oom_kills(&self) -> zbus::fdo::Result<u64> {
        Ok(self.get()?.oom_kills)
    }

    /// When the last OOM kill happened, microseconds since the epoch; 0 when never.
    #[zbus(property, name = "LastOOMAt")]
    fn last_oom_at(&self) -> zbus::fdo::Result<u64> {
        Ok(self.get()?.last_oom_at)
    }

    /// How it is confined (see ListContainers).
    #[zbus(property)]
    fn security(&self) -> zbus::fdo::Result<HashMap<String, String>> {
        Ok(self.get()?.security)
    }

    /// The container's labels (KEY=VALUE, given at create).
    #[zbus(property(emits_changed_signal = "const"))]
    fn labels(&self) -> zbus::fdo::Result<HashMap<String, String>> {
        Ok(self.get()?.labels)
    }

    /// The ID of the stored image it runs; empty for a directory.
    #[zbus(property(emits_changed_signal = "const"), name = "ImageID")]
    fn image_id(&self) -> zbus::fdo::Result<String> {
        Ok(self.get()?.image_id)
    }

    /// Its network mode: bridge, bridge:NAME, none, host, container:NAME, veth or
    /// macvlan:IFACE.
    #[zbus(property(emits_changed_signal = "const"))]
    fn network(&self) -> zbus::fdo::Result<String> {
        Ok(self.get()?.network)
    }

    /// Its addresses with their prefix length while it runs; empty otherwise.
    #[zbus(property)]
    fn addresses(&self) -> zbus::fdo::Result<Vec<String>> {
        Ok(self.get()?.addresses)
    }

    /// Its published ports while it runs: (host address, empty for all; host port;
    /// container port; tcp or udp).
    #[zbus(property)]
    fn ports(&self) -> zbus::fdo::Result<Vec<(String, u16, u16, String)>> {
        Ok(self.get()?.ports)
    }

    /// Running and ready: without NotifyReady as soon as its command was executed, with it
    /// once the payload sent READY=1 on its NOTIFY_SOCKET.
    #[zbus(property)]
    fn ready(&self) -> zbus::fdo::Result<bool> {
        Ok(self.life()?.ready)
    }

    /// The last STATUS= text its payload sent during this run (NotifyReady only).
    #[zbus(property)]
    fn status_text(&self) -> zbus::fdo::Result<String> {
        Ok(self.life()?.status_text)
    }

    /// The payload gets a NOTIFY_SOCKET and is ready when it sends READY=1.
    #[zbus(property(emits_changed_signal = "const"))]
    fn notify_ready(&self) -> zbus::fdo::Result<bool> {
        Ok(self.life()?.notify_ready)
    }

    /// no, on-failure[:N], always or unless-stopped.
    #[zbus(property(emits_changed_signal = "const"))]
    fn restart_policy(&self) -> zbus::fdo::Result<String> {
        Ok(self.life()?.restart_policy)
    }

    /// Restarts made by the restart policy since a user last started it.
    #[zbus(property)]
    fn restart_count(&self) -> zbus::fdo::Result<u32> {
        Ok(self.life()?.restart_count)
    }

    /// When the policy's pending restart is due (microseconds since the epoch; 0: none).
    #[zbus(property)]
    fn next_restart_at(&self) -> zbus::fdo::Result<u64> {
        Ok(self.life()?.next_restart_at)
    }

    /// Its health while it runs: starting, healthy or unhealthy; empty without a health
    /// check (the HealthCmd option or the image's HEALTHCHECK) or when not running.
    #[zbus(property)]
    fn health(&self) -> zbus::fdo::Result<String> {
        Ok(self.life()?.health)
    }

    /// Failed health checks in a row.
    #[zbus(property)]
    fn health_failures(&self) -> zbus::fdo::Result<u32> {
        Ok(self.life()?.health_failures)
    }

    /// Run a command in the running container: in all of its namespaces and its scope's
    /// cgroup, with its payload's environment, user, capabilities, no_new_privs, SELinux label
    /// and seccomp filter. Options: Command (as; a program path or a name searched in the
    /// container's PATH), Environment (as, KEY=VALUE over the container's), WorkingDirectory
    /// (s), User (s), Shell (b: the user's login shell instead of Command), StandardInput,
    /// StandardOutput, StandardError (h; the container's /dev/null when not given), Terminal
    /// (b: a pty of the container's own devpts on every stream not given, its master returned),
    /// EndWithCaller (b: SIGHUP when the caller leaves the bus, SIGKILL 10 s later). Returns
    /// Id (s, for WaitExec and KillExec), Pid (u, on the host) and Terminal (h).
    async fn exec(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        options: Options,
    ) -> Result<HashMap<String, OwnedVariant>> {
        let started = live(&self.backend)?
            .exec(Caller::of(&hdr)?, self.name.clone(), options)
            .await?;
        let mut m = HashMap::new();
        let fail = |e: zbus::Error| Error::Failed(e.to_string());
        m.insert(
            "Id".to_string(),
            OwnedVariant::try_from(zbus::Variant::from(started.id)).map_err(fail)?,
        );
        m.insert(
            "Pid".to_string(),
            OwnedVariant::try_from(zbus::Variant::from(started.pid)).map_err(fail)?,
        );
        if let Some(t) = started.terminal {
            m.insert(
                "Terminal".to_string(),
                OwnedVariant::try_from(zbus::Variant::from(zbus::Fd::from(t))).map_err(fail)?,
            );
        }
        Ok(m)
    }

    /// Follow the container's output as berthd relays it to the journal, without the
    /// journal's delay: returns a stream socket of frames (see `berthctl logs -f` and
    /// src/journal/feed.rs: 16-byte header — kind, stream, flags, 0, length u32le, sequence
    /// u64le — then the line) and the sequence number of the newest line relayed before this
    /// call (the journal entries carry it as `BERTH_SEQ=`). The newest lines are replayed
    /// first. Allowed to who may read the system journal: root and the members of
    /// systemd-journal, adm and wheel. No options are known yet.
    async fn follow_logs(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        options: Options,
    ) -> Result<(zbus::OwnedFd, u64)> {
        let _call = enter(&self.backend, &hdr, "a{sv}").await?;
        options.check(&[])?;
        let (fd, newest) = live(&self.backend)?
            .follow_logs(Caller::of(&hdr)?, self.name.clone())
            .await?;
        Ok((zbus::OwnedFd::from(fd), newest))
    }

    /// Wait until an exec'd command has exited and return its exit status (128 + signal when
    /// killed). Its status stays available for a while after it ended.
    async fn wait_exec(&self, id: String) -> Result<i32> {
        live(&self.backend)?.wait_exec(self.name.clone(), id).await
    }

    /// Send a signal to an exec'd command.
    async fn kill_exec(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        id: String,
        signal: i32,
    ) -> Result<()> {
        live(&self.backend)?
            .kill_exec(Caller::of(&hdr)?, self.name.clone(), id, signal)
            .await
    }

    /// Copy into the running container: read a berth copy stream (as `berthctl cp` writes
    /// it) from `stream` and create it at `path` (into it if it is a directory). Paths are
    /// resolved inside the container's root; what is made belongs to the container's root
    /// (Options: Archive (b), keep the stream's IDs, shifted into the container's range).
    /// Returns entries, bytes and skipped entries.
    async fn copy_to(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        path: String,
        stream: zbus::OwnedFd,
        options: Options,
    ) -> Result<(u64, u64, u64)> {
        live(&self.backend)?
            .copy(
                Caller::of(&hdr)?,
                true,
                self.name.clone(),
                path,
                stream.into(),
                options,
            )
            .await
    }

    /// Copy out of the running container: write `path` (a file, symlink or directory tree)
    /// to `stream` as a berth copy stream. No options yet. Returns entries, bytes and skipped
    /// entries.
    async fn copy_from(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        path: String,
        stream: zbus::OwnedFd,
        options: Options,
    ) -> Result<(u64, u64, u64)> {
        live(&self.backend)?
            .copy(
                Caller::of(&hdr)?,
                false,
                self.name.clone(),
                path,
                stream.into(),
                options,
            )
            .await
    }

    /// Mount what `source` (a descriptor the caller opened, O_PATH is enough) names on `path`
    /// in the running container, recursively, nosuid and nodev. Options: ReadOnly (b),
    /// MakeDirectory (b: make the mount point and its parents, owned by the container's root),
    /// IdMap (b: map the source's IDs through the container's user namespace).
    async fn bind(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        source: zbus::OwnedFd,
        path: String,
        options: Options,
    ) -> Result<()> {
        live(&self.backend)?
            .bind(
                Caller::of(&hdr)?,
                self.name.clone(),
                source.into(),
                path,
                options,
            )
            .await
    }
}

impl Container {
    fn life(&self) -> zbus::fdo::Result<LifeInfo> {
        let b = self
            .backend
            .upgrade()
            .ok_or_else(|| gone("container", &self.name))?;
        b.life(&self.name)
            .ok_or_else(|| gone("container", &self.name))
    }
}

/// `/org/berth/berth1/image/<escaped name>`: one image.
pub struct Image {
    pub backend: Weak<dyn Backend>,
    pub name: String,
}

impl Image {
    fn get(&self) -> zbus::fdo::Result<ImageInfo> {
        let b = self
            .backend
            .upgrade()
            .ok_or_else(|| gone("image", &self.name))?;
        b.image_info(&self.name).ok_or_else(|| {
            zbus::fdo::Error::UnknownObject(format!("image {:?} is gone", self.name))
        })
    }
}

#[interface(
    name = "org.berth.berth1.Image",
    // The documentation is in dbus-interfaces/ and README.md; left out of Introspect it
    // keeps every reply a few kB (an unread flood of them cost berthd 17 MB).
    introspection_docs = false,
    proxy(
        default_service = "org.berth.berth1",
        default_path = "/org/berth/berth1/image/_"
    )
)]
impl Image {
    #[zbus(property(emits_changed_signal = "const"))]
    fn name(&self) -> String {
        self.name.clone()
    }

    /// directory | tar | oci | docker | registry
    #[zbus(property(emits_changed_signal = "const"), name = "Type")]
    fn kind(&self) -> zbus::fdo::Result<String> {
        Ok(self.get()?.kind)
    }

    #[zbus(property(emits_changed_signal = "const"))]
    fn digest(&self) -> zbus::fdo::Result<String> {
        Ok(self.get()?.digest)
    }

    /// The image ID: the digest of its config (`sha256:…`), what containers record; empty
    /// for a shipped directory image.
    #[zbus(property(emits_changed_signal = "const"), name = "ID")]
    fn id(&self) -> zbus::fdo::Result<String> {
        let b = self
            .backend
            .upgrade()
            .ok_or_else(|| gone("image", &self.name))?;
        Ok(b.image_id(&self.name).unwrap_or_default())
    }

    /// Bytes of the layers, uncompressed.
    #[zbus(property(emits_changed_signal = "const"))]
    fn size(&self) -> zbus::fdo::Result<u64> {
        Ok(self.get()?.size)
    }

    /// Microseconds since the epoch.
    #[zbus(property(emits_changed_signal = "const"))]
    fn created(&self) -> zbus::fdo::Result<u64> {
        Ok(self.get()?.created)
    }

    /// Layer digests, bottom first.
    #[zbus(property(emits_changed_signal = "const"))]
    fn layers(&self) -> zbus::fdo::Result<Vec<String>> {
        Ok(self.get()?.layers)
    }

    #[zbus(property(emits_changed_signal = "const"))]
    fn read_only(&self) -> zbus::fdo::Result<bool> {
        Ok(self.get()?.read_only)
    }

    /// What the image asks of containers: Entrypoint (as), Cmd (as), Env (as, root only:
    /// empty for other callers), WorkingDir (s), User (s), StopSignal (s), Labels (a{ss}),
    /// ExposedPorts (as, `80/tcp`), Volumes (as), and Healthcheck (a{sv}: Test as,
    /// Interval/Timeout/StartPeriod/StartInterval t in nanoseconds, Retries u) when the image
    /// has one. Empty for directory images.
    #[zbus(property(emits_changed_signal = "const"))]
    async fn config(
        &self,
        #[zbus(header)] hdr: Option<Header<'_>>,
    ) -> zbus::fdo::Result<HashMap<String, OwnedVariant>> {
        let mut m = HashMap::new();
        let b = self
            .backend
            .upgrade()
            .ok_or_else(|| gone("image", &self.name))?;
        let Some(mut c) = b.image_config(&self.name) else {
            return Ok(m);
        };
        // An image's environment may hold credentials.
        if !is_root(&b, hdr.as_ref()).await {
            c.env.clear();
        }
        let mut put = |k: &str, v: zbus::Variant<'_>| {
            if let Ok(v) = OwnedVariant::try_from(v) {
                m.insert(k.to_string(), v);
            }
        };
        put("Entrypoint", c.entrypoint.into());
        put("Cmd", c.cmd.into());
        put("Env", c.env.into());
        put("WorkingDir", c.working_dir.unwrap_or_default().into());
        put("User", c.user.unwrap_or_default().into());
        put("StopSignal", c.stop_signal.unwrap_or_default().into());
        put(
            "Labels",
            c.labels
                .into_iter()
                .collect::<HashMap<String, String>>()
                .into(),
        );
        put("ExposedPorts", c.exposed_ports.into());
        put("Volumes", c.volumes.into());
        if let Some(h) = c.healthcheck {
            let mut hc: HashMap<String, OwnedVariant> = HashMap::new();
            let mut hput = |k: &str, v: zbus::Variant<'_>| {
                if let Ok(v) = OwnedVariant::try_from(v) {
                    hc.insert(k.to_string(), v);
                }
            };
            hput("Test", h.test.into());
            hput("Interval", h.interval_ns.into());
            hput("Timeout", h.timeout_ns.into());
            hput("StartPeriod", h.start_period_ns.into());
            hput("StartInterval", h.start_interval_ns.into());
            hput("Retries", h.retries.into());
            put("Healthcheck", hc.into());
        }
        Ok(m)
    }
}
