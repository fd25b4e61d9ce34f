//! berthd's side of networking (issue 10): the one [`Networks`] engine behind an async mutex,
//! and where the container flows call it.
//!
//! - berthd start: [`Registry::open_network`] (host netns, runtime thread), then, after the
//!   container table is recovered, [`Registry::reconcile_network`]: bridges, resolvers and the
//!   nft table come up; running containers keep their veths and forwards, everything else is
//!   removed (also what a berthd killed in the middle of a start left).
//! - create: [`Registry::net_check_create`] (unknown network, interface or container).
//! - start, step 1: [`Registry::net_prepare`] (lease, host ports, names; makes nothing) and
//!   [`net_shape_plan`] (which namespaces, the /etc files, a shared netns' mounts); step 4,
//!   concurrently with the scope job and the root: [`Registry::net_attach`] (veth, addresses,
//!   routes, shaping, forwards; then the /etc files in the container's runtime directory). A
//!   failed start: [`Registry::net_start_failed`].
//! - exit: [`Registry::net_detach`]; remove: [`Registry::net_release`].

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::OnceLock;

use tracing::{info, warn};

use super::error::{Error, Result};
use super::table::{Registry, State};
use crate::dbus::NetworkInfo as BusNetwork;
use crate::image::ImageConfig;
use crate::network::{
    Attachment, CreateRequest, NetError, NetName, NetworkMode, Networks, NetworksConfig, Running,
};
use crate::plan::Plan;
use crate::spec::ContainerSpec;

/// The engine once opened, or why it could not be.
pub type NetSlot = OnceLock<std::result::Result<tokio::sync::Mutex<Networks>, String>>;

/// What a container shows of its network (the `Addresses` and `Ports` properties).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetView {
    /// `10.89.0.2/16`, `fd…::2/64`: the addresses it has while it runs.
    pub addresses: Vec<String>,
    /// (host address or "", host port, container port, protocol), one per published port.
    pub ports: Vec<(String, u16, u16, String)>,
}

impl NetView {
    fn of(att: &Attachment, prefix4: Option<u8>, prefix6: Option<u8>) -> NetView {
        let mut addresses = Vec::new();
        if let (Some(ip), Some(p)) = (att.ip4, prefix4) {
            addresses.push(format!("{ip}/{p}"));
        }
        if let (Some(ip), Some(p)) = (att.ip6, prefix6) {
            addresses.push(format!("{ip}/{p}"));
        }
        let mut ports: Vec<(String, u16, u16, String)> = Vec::new();
        for f in &att.forwards {
            // A dual-stack forward is one port for the user (the kernel needs two elements).
            let p = (
                f.host_ip.map(|i| i.to_string()).unwrap_or_default(),
                f.host_port,
                f.container_port,
                f.proto.to_string(),
            );
            if !ports.contains(&p) {
                ports.push(p);
            }
        }
        NetView { addresses, ports }
    }
}

/// What a start holds of the network between its steps.
#[derive(Debug, Default)]
pub struct NetStart {
    /// Prepared and not attached yet (abandoned if the start fails before step 4).
    plan: Option<crate::network::Plan>,
    /// Attached: a failed start detaches it.
    attached: bool,
    /// The lease was taken by this start (a first start): a failed one frees it again.
    new_lease: bool,
    /// `container:NAME`: the other container's network namespace, for the helper to join.
    pub join: Option<OwnedFd>,
    /// `container:NAME`: whose generated files to copy.
    shares: Option<String>,
    /// A network namespace of its own (`attach` is needed).
    own: bool,
    /// `none` or `host` while the engine is unavailable: started without it.
    plain: bool,
}

fn netns_of(pid: i32) -> Result<std::fs::File> {
    std::fs::File::open(format!("/proc/{pid}/ns/net"))
        .map_err(|e| Error::io("open the container's network namespace", e))
}

/// Where a container's generated /etc files live while it runs.
pub fn files_dir(layout: &super::store::Layout, name: &str) -> PathBuf {
    layout.run.join("containers").join(name)
}

/// The plan's network part: which network namespace the leader gets, the generated /etc
/// files, and the mounts of a container that shares a namespace it does not own.
pub fn net_shape_plan(plan: &mut Plan, net: &NetStart, files: &std::path::Path) {
    plan.namespaces.net = net.own;
    plan.namespaces.join_net = net.join.is_some();
    if !net.own {
        crate::mount::network::shared_netns(
            &mut plan.mounts,
            plan.namespaces.user,
            &plan.root.scratch,
        );
    }
    crate::mount::network::files(&mut plan.mounts, files);
}

impl From<NetError> for Error {
    fn from(e: NetError) -> Error {
        Error::Network(e)
    }
}

impl Registry {
    /// Open the engine: in the host's network namespace, on the runtime thread. A failure is
    /// logged once; containers that need a network then fail to start with the reason.
    pub async fn open_network(&self) {
        let cfg = NetworksConfig::new(
            self.layout.lib.join("networks"),
            self.layout.run.join("networks"),
        );
        let opened = match Networks::open(cfg).await {
            Ok(n) => Ok(tokio::sync::Mutex::new(n)),
            Err(e) => {
                warn!("cannot open the network engine: {e}; containers get no network");
                Err(e.to_string())
            }
        };
        if self.network.set(opened).is_err() {
            warn!("the network engine was opened twice, ignoring");
        }
    }

    fn engine(&self) -> Result<&tokio::sync::Mutex<Networks>> {
        match self.network.get() {
            Some(Ok(n)) => Ok(n),
            Some(Err(why)) => Err(Error::Failed(format!("networking is not available: {why}"))),
            None => Err(Error::Failed("networking is not set up yet".into())),
        }
    }

    /// After recovery: bring the networks up, keep what running containers have, remove the
    /// rest (veths, forwards, records of containers that stopped or whose start berthd did
    /// not finish), free the leases of containers that no longer exist.
    pub async fn reconcile_network(&self) {
        let Ok(engine) = self.engine() else { return };
        let running: Vec<(String, i32)> = self
            .entries
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, e)| e.state == State::Running)
            .filter_map(|(n, e)| e.leader.map(|p| (n.clone(), p)))
            .collect();
        let running: Vec<Running> = running
            .into_iter()
            .map(|(name, pid)| Running {
                netns: std::fs::File::open(format!("/proc/{pid}/ns/net"))
                    .ok()
                    .map(OwnedFd::from),
                name,
            })
            .collect();
        // Every container directory counts, also one whose definition cannot be read now.
        let mut existing: Vec<String> = self.entries.lock().unwrap().keys().cloned().collect();
        if let Ok(dir) = std::fs::read_dir(self.layout.containers()) {
            existing.extend(
                dir.flatten()
                    .filter_map(|d| d.file_name().into_string().ok())
                    .filter(|n| crate::name::validate(n).is_ok()),
            );
        }
        let mut net = engine.lock().await;
        match net.reconcile(running, &existing).await {
            Ok(r) => {
                if !r.detached.is_empty() || !r.swept_links.is_empty() || !r.released.is_empty() {
                    info!(
                        "network: kept {:?}, cleaned up after {:?}, removed links {:?}, freed the leases of {:?}",
                        r.kept, r.detached, r.swept_links, r.released
                    );
                }
                for u in &r.unreserved {
                    warn!("network: cannot hold a published port again ({u}), ignoring");
                }
                for d in &r.damaged {
                    warn!(
                        "network: damaged state file {} skipped (its network is unknown, or its lease free, until it is repaired), ignoring",
                        d.display()
                    );
                }
            }
            Err(e) => warn!("network: reconciling after the restart failed: {e}, ignoring"),
        }
        // What the kept containers show again.
        let views: Vec<(String, NetView)> = self
            .entries
            .lock()
            .unwrap()
            .keys()
            .filter_map(|n| net.attachment(n).map(|a| (n.clone(), a.clone())))
            .map(|(n, a)| {
                let v = view(&net, &a);
                (n, v)
            })
            .collect();
        drop(net);
        for (name, v) in views {
            if self.with(&name, |e| e.net = v).is_ok() {
                self.publish(&name).await;
            }
        }
        // Generated files of containers that no longer run.
        if let Ok(dir) = std::fs::read_dir(self.layout.run.join("containers")) {
            for d in dir.flatten() {
                let Ok(n) = d.file_name().into_string() else {
                    continue;
                };
                let active = self.with(&n, |e| e.is_active()).unwrap_or(false);
                if d.path().is_dir() && !active {
                    remove_files(&d.path());
                }
            }
        }
    }

    /// At create: what the network settings name must exist (a container to share must be
    /// defined; it must run only at start).
    pub(super) async fn net_check_create(&self, spec: &ContainerSpec) -> Result<()> {
        let n = &spec.network;
        let mut ifaces: Vec<&str> = n.interfaces.iter().map(|i| i.as_str()).collect();
        match &n.mode {
            NetworkMode::Bridge(net) => {
                self.engine()?.lock().await.network_def(net)?;
            }
            NetworkMode::Macvlan(parent) => ifaces.push(parent.as_str()),
            NetworkMode::Container(other) => {
                if other == spec.name() {
                    return Err(Error::InvalidArgument(
                        "--network container:NAME names the container itself".into(),
                    ));
                }
                if !self.entries.lock().unwrap().contains_key(other) {
                    return Err(Error::NoSuchContainer(other.clone()));
                }
            }
            NetworkMode::None | NetworkMode::Host | NetworkMode::Veth => {}
        }
        for i in ifaces {
            // berthd runs in the host's network namespace: its sysfs lists the host's links.
            if !std::path::Path::new("/sys/class/net").join(i).exists() {
                return Err(NetError::NoSuchInterface(i.to_string()).into());
            }
        }
        Ok(())
    }

    /// Step 1 of a start: decide the network (makes nothing). `image` gives `-P` its ports.
    pub(super) async fn net_prepare(
        &self,
        spec: &ContainerSpec,
        image: Option<&ImageConfig>,
        net: &mut NetStart,
    ) -> Result<()> {
        let name = spec.name();
        let mut ns = spec.network.clone();
        if spec.definition.network.publish_all {
            let (ports, skipped) = crate::spec::network::exposed_ports(
                image
                    .map(|i| i.exposed_ports.as_slice())
                    .unwrap_or_default(),
            );
            if !skipped.is_empty() {
                warn!("{name}: the image's EXPOSE {skipped:?} cannot be published, ignoring");
            }
            ns.publish_all = ports;
        }
        if let NetworkMode::Container(other) = &ns.mode {
            let (leader, mode) = self
                .with(other, |e| {
                    (
                        (e.state == State::Running).then_some(e.leader).flatten(),
                        e.spec.network.mode.clone(),
                    )
                })
                .map_err(|_| Error::NoSuchContainer(other.clone()))?;
            let Some(pid) = leader else {
                return Err(Error::InvalidState {
                    name: other.clone(),
                    state: "not running",
                    hint: ", so its network cannot be shared",
                });
            };
            if mode == NetworkMode::Host {
                return Err(Error::InvalidArgument(format!(
                    "container {other:?} runs with --network host: use --network host"
                )));
            }
            let fd = std::fs::File::open(format!("/proc/{pid}/ns/net"))
                .map_err(|e| Error::io(format!("open the network namespace of {other:?}"), e))?;
            net.join = Some(fd.into());
            net.shares = Some(other.clone());
        }
        net.own = ns.mode.own_netns();
        let user = spec.security.userns.request().is_some();
        let engine = match self.engine() {
            Ok(engine) => engine,
            // Loopback only and the host's own network need nothing of the engine: without
            // it (the reason is in the log and in the error of those that need it) they still
            // start.
            Err(_) if matches!(ns.mode, NetworkMode::None | NetworkMode::Host) => {
                ns.check(user)?;
                net.plain = true;
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let plan = engine.lock().await.prepare(name, &ns, user).await?;
        net.new_lease = plan.new_lease;
        net.plan = Some(plan);
        Ok(())
    }

    /// Step 4 of a start (after the ID maps are written, before the release): plug the
    /// leader's network namespace in, then write the container's /etc files. On an error the
    /// engine has undone what it made.
    pub(super) async fn net_attach(
        &self,
        spec: &ContainerSpec,
        pid: i32,
        net: &mut NetStart,
    ) -> Result<()> {
        let name = spec.name();
        let dir = files_dir(&self.layout, name);
        if net.plain {
            if net.own {
                crate::network::engine::loopback_only(&netns_of(pid)?).await?;
            }
            let (hosts, hostname, resolv) = crate::network::engine::plain_files(&spec.hostname);
            return write_files(&dir, &[hosts, hostname, resolv])
                .map_err(|e| Error::io(format!("write {}", dir.display()), e));
        }
        let Some(plan) = net.plan.take() else {
            return Err(Error::Failed("the network was not prepared".into()));
        };
        let netns = netns_of(pid)?;
        let mut engine = self.engine()?.lock().await;
        let att = engine.attach(plan, &netns).await?;
        net.attached = true;
        let shown = match net.shares.as_deref().and_then(|o| engine.attachment(o)) {
            Some(other) => other.clone(),
            None => att.clone(),
        };
        let (hosts, hostname, resolv) = engine.container_files(&shown, &spec.hostname);
        let v = view(&engine, &att);
        drop(engine);
        write_files(&dir, &[hosts, hostname, resolv])
            .map_err(|e| Error::io(format!("write {}", dir.display()), e))?;
        if self.with(name, |e| e.net = v).is_err() {
            warn!("container {name} vanished while it started, ignoring");
        }
        Ok(())
    }

    /// The start failed: undo what its network part made (a first start's lease too).
    pub(super) async fn net_start_failed(&self, name: &str, net: NetStart) {
        remove_files(&files_dir(&self.layout, name));
        let Ok(engine) = self.engine() else { return };
        let mut engine = engine.lock().await;
        if let Some(plan) = net.plan
            && let Err(e) = engine.abandon(plan)
        {
            warn!("cannot give up the network plan of {name}: {e}, ignoring");
        }
        if net.attached {
            if let Err(e) = engine.detach(name).await {
                warn!("cannot unplug the network of {name} after a failed start: {e}, ignoring");
            }
            if net.new_lease
                && let Err(e) = engine.release(name)
            {
                warn!("cannot free the addresses of {name}: {e}, ignoring");
            }
        }
        drop(engine);
        if self.with(name, |e| e.net = NetView::default()).is_ok() {
            self.publish(name).await;
        }
    }

    /// The container exited (or was stopped): unplug it; its lease stays.
    pub(super) async fn net_detach(&self, name: &str) {
        remove_files(&files_dir(&self.layout, name));
        if self.with(name, |e| e.net = NetView::default()).is_err() {
            return;
        }
        let Ok(engine) = self.engine() else { return };
        if let Err(e) = engine.lock().await.detach(name).await {
            warn!("cannot unplug the network of {name}: {e}, ignoring");
        }
    }

    /// The container was removed: free its addresses.
    pub(super) async fn net_release(&self, name: &str) {
        remove_files(&files_dir(&self.layout, name));
        let Ok(engine) = self.engine() else { return };
        let mut engine = engine.lock().await;
        // Normally detached at its exit already; idempotent.
        if let Err(e) = engine.detach(name).await {
            warn!("cannot unplug the network of {name}: {e}, ignoring");
        }
        if let Err(e) = engine.release(name) {
            warn!("cannot free the addresses of {name}: {e}, ignoring");
        }
    }

    // ---- networks -----------------------------------------------------------------------

    pub(super) async fn create_network(&self, name: &NetName, req: &CreateRequest) -> Result<()> {
        let def = self
            .engine()?
            .lock()
            .await
            .create_network(name, req)
            .await?;
        info!(
            "created network {} ({}{}{}, bridge {})",
            def.name,
            def.subnet4,
            def.subnet6.map(|s| format!(", {s}")).unwrap_or_default(),
            if def.internal { ", internal" } else { "" },
            def.bridge
        );
        Ok(())
    }

    pub(super) async fn remove_network(&self, name: &NetName) -> Result<()> {
        self.engine()?.lock().await.remove_network(name).await?;
        info!("removed network {name}");
        Ok(())
    }

    pub(super) async fn list_networks(&self) -> Result<Vec<BusNetwork>> {
        let engine = self.engine()?.lock().await;
        engine
            .list_networks()
            .iter()
            .map(|d| engine.inspect_network(&d.name).map(bus_network))
            .collect::<std::result::Result<_, _>>()
            .map_err(Error::from)
    }

    pub(super) async fn network_info(&self, name: &NetName) -> Result<BusNetwork> {
        let engine = self.engine()?.lock().await;
        Ok(bus_network(engine.inspect_network(name)?))
    }
}

fn view(engine: &Networks, att: &Attachment) -> NetView {
    let def = att
        .network
        .as_ref()
        .and_then(|n| engine.network_def(n).ok());
    NetView::of(
        att,
        def.map(|d| d.subnet4.prefix()),
        def.and_then(|d| d.subnet6).map(|s| s.prefix()),
    )
}

fn bus_network(i: crate::network::NetworkInfo) -> BusNetwork {
    BusNetwork {
        name: i.def.name.to_string(),
        bridge: i.def.bridge.to_string(),
        subnet: i.def.subnet4.to_string(),
        subnet6: i.def.subnet6.map(|s| s.to_string()).unwrap_or_default(),
        gateway: i.gateway4.to_string(),
        gateway6: i.gateway6.map(|g| g.to_string()).unwrap_or_default(),
        internal: i.def.internal,
        containers: i
            .containers
            .into_iter()
            .map(|(c, ip4, ip6, up)| {
                (
                    c,
                    ip4.to_string(),
                    ip6.map(|i| i.to_string()).unwrap_or_default(),
                    up,
                )
            })
            .collect(),
    }
}

/// The container's hosts, hostname and resolv.conf, in [`crate::mount::network::FILES`]
/// order, in a fresh directory the container's root may read (0755/0644: it only holds what
/// the container sees anyway), made before the leader is released.
fn write_files(dir: &std::path::Path, contents: &[String; 3]) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::fs::DirBuilder::new().mode(0o755).create(dir)?;
    for ((name, _), text) in crate::mount::network::FILES.iter().zip(contents) {
        let p = dir.join(name);
        std::fs::write(&p, text)?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644))?;
    }
    Ok(())
}

fn remove_files(dir: &std::path::Path) {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => warn!("cannot remove {}: {e}, ignoring", dir.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dual_stack_port_shows_once_and_addresses_carry_their_prefix() {
        let f = |ip: &str| crate::network::Forward {
            host_ip: None,
            host_port: 8080,
            proto: crate::network::Proto::Tcp,
            container_ip: ip.parse().unwrap(),
            container_port: 80,
        };
        let att = Attachment {
            container: "web".into(),
            mode: NetworkMode::default(),
            network: Some("berth".parse().unwrap()),
            host_if: None,
            ip4: Some("10.89.0.2".parse().unwrap()),
            ip6: Some("fd00::2".parse().unwrap()),
            gateway4: None,
            gateway6: None,
            forwards: vec![f("10.89.0.2"), f("fd00::2")],
            rate: None,
            moved: vec![],
            ifb: None,
        };
        let v = NetView::of(&att, Some(16), Some(64));
        assert_eq!(v.addresses, ["10.89.0.2/16", "fd00::2/64"]);
        assert_eq!(v.ports, [(String::new(), 8080, 80, "tcp".to_string())]);
    }

    #[test]
    fn the_plan_follows_the_mode() {
        let mut plan = crate::plan::tests::sample();
        let own = NetStart {
            own: true,
            ..Default::default()
        };
        net_shape_plan(
            &mut plan,
            &own,
            std::path::Path::new("/run/berth/containers/web"),
        );
        assert!(plan.namespaces.net && !plan.namespaces.join_net);
        assert!(plan.mounts.iter().any(|m| matches!(m,
            crate::mount::MountOp::BindFile { path, .. } if path == "etc/resolv.conf")));
        let mut plan = crate::plan::tests::sample();
        let joined = NetStart {
            join: Some(std::fs::File::open("/dev/null").unwrap().into()),
            ..Default::default()
        };
        net_shape_plan(&mut plan, &joined, std::path::Path::new("/x"));
        assert!(!plan.namespaces.net && plan.namespaces.join_net);
        assert!(
            !plan
                .namespaces
                .at_clone()
                .contains(nix::sched::CloneFlags::CLONE_NEWNET)
        );
        assert!(plan.mounts.iter().any(|m| matches!(m,
            crate::mount::MountOp::BindHost { path, .. } if path == "sys")));
        let w = tempfile::tempdir().unwrap();
        let d = w.path().join("web");
        write_files(&d, &["h".into(), "n".into(), "r".into()]).unwrap();
        assert_eq!(std::fs::read_to_string(d.join("resolv.conf")).unwrap(), "r");
        write_files(&d, &["h2".into(), "n".into(), "r".into()]).unwrap();
        assert_eq!(std::fs::read_to_string(d.join("hosts")).unwrap(), "h2");
        remove_files(&d);
        assert!(!d.exists());
    }
}
