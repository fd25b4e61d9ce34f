//! [`Networks`]: the berthd-facing API tying store, netlink, nftables and the resolver together.
//!
//! The start sequence (ARCHITECTURE.md): `prepare` at step 1 (decides everything: leases,
//! host ports, interface names; makes nothing), `attach` at step 4 (makes everything, undoes
//! it all on any error), `detach` at step 6 (the container stopped), `release` when the
//! container is removed, `reconcile` when berthd starts.
//!
//! Runtime records: every attachment is written to `RUN_DIR/attachments/NAME.json` *before*
//! anything is made for it, and removed after it is undone, so a berthd killed at any point
//! leaves a record (or nothing, if it died before writing it — then nothing was made either,
//! except possibly a veth, which `reconcile` sweeps by name and master).

use std::collections::{HashMap, HashSet};
use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use super::dns::{self, NameTable, Records};
use super::error::{NetError, Result};
use super::files;
use super::netlink::{self, LinkStats, Nl};
use super::nft::{self, Forward};
use super::nftnl;
use super::store::{self, CreateRequest, Lease, NetworkDef, Store};
use super::types::{Cidr, DEFAULT_NETWORK, IfName, NetName, NetSpec, NetworkMode, Proto, Rate};

/// Where the engine keeps its files, and how it finds upstream resolvers.
#[derive(Debug, Clone)]
pub struct NetworksConfig {
    /// Persistent: definitions and leases (berthd: `/var/lib/berth/networks`).
    pub state_dir: PathBuf,
    /// Runtime: attachment records (berthd: `/run/berth/networks`).
    pub run_dir: PathBuf,
    /// Upstream resolvers for the embedded DNS; `None` reads the host's (`files::host_upstreams`).
    pub upstreams: Option<Vec<SocketAddr>>,
    /// Run the embedded resolver on each bridge's gateway, port 53.
    pub dns: bool,
    /// Give the default network an IPv6 ULA subnet when it is first created.
    pub default_ipv6: bool,
}

impl NetworksConfig {
    pub fn new(state_dir: impl Into<PathBuf>, run_dir: impl Into<PathBuf>) -> NetworksConfig {
        NetworksConfig {
            state_dir: state_dir.into(),
            run_dir: run_dir.into(),
            upstreams: None,
            dns: true,
            default_ipv6: Path::new("/proc/sys/net/ipv6").exists(),
        }
    }
}

/// Everything `attach` will make, decided by `prepare`. Holds the reserved host ports (bound
/// sockets) until `attach` takes them over; dropping a plan frees them, [`Networks::abandon`]
/// also frees a lease the plan took.
#[derive(Debug)]
pub struct Plan {
    pub container: String,
    pub mode: NetworkMode,
    /// The bridge network, its definition at prepare time.
    pub network: Option<NetworkDef>,
    pub lease: Option<Lease>,
    /// The lease was taken by this prepare (a first start): undone with the plan.
    pub new_lease: bool,
    /// Host side of the veth (`vb-…` on a bridge, `ve-…` for `veth`).
    pub host_if: Option<IfName>,
    pub forwards: Vec<Forward>,
    pub rate: Option<Rate>,
    pub macvlan_parent: Option<(IfName, u32)>,
    pub interfaces: Vec<(IfName, u32)>,
    reservations: Vec<Reservation>,
}

impl Plan {
    /// Whether the container needs a network namespace of its own (helper unshares one).
    pub fn own_netns(&self) -> bool {
        self.mode.own_netns()
    }
}

#[derive(Debug)]
#[allow(dead_code)] // held, never read: the bound socket is the reservation
enum Reservation {
    Tcp(std::net::TcpListener),
    Udp(std::net::UdpSocket),
}

/// What `attach` made, as berthd reports it (`berthctl port`, `inspect`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attachment {
    pub container: String,
    pub mode: NetworkMode,
    pub network: Option<NetName>,
    pub host_if: Option<IfName>,
    pub ip4: Option<Ipv4Addr>,
    pub ip6: Option<Ipv6Addr>,
    pub gateway4: Option<Ipv4Addr>,
    pub gateway6: Option<Ipv6Addr>,
    pub forwards: Vec<Forward>,
    pub rate: Option<Rate>,
    /// Host NICs moved in (`--network-interface`), by name; moved back on detach.
    pub moved: Vec<IfName>,
    /// The ifb device shaping what the container sends (`--network-rate`), `bi-…`.
    pub ifb: Option<IfName>,
}

struct Live {
    att: Attachment,
    /// The container's netns, held while NICs are moved in so they can be moved back after
    /// its processes exit (a dying netns sends physical NICs to the initial netns, not to the
    /// host berth manages, and destroys virtual ones).
    netns: Option<OwnedFd>,
    _reservations: Vec<Reservation>,
}

struct UpNet {
    bridge_index: u32,
    dns: Option<JoinHandle<()>>,
}

impl Drop for UpNet {
    fn drop(&mut self) {
        if let Some(t) = &self.dns {
            t.abort();
        }
    }
}

/// A running container as berthd knows it after a restart.
#[derive(Debug)]
pub struct Running {
    pub name: String,
    /// `/proc/PID/ns/net` of its PID 1, if berthd has it (needed only to move NICs back).
    pub netns: Option<OwnedFd>,
}

/// What `reconcile` did, for berthd's log.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    pub kept: Vec<String>,
    pub detached: Vec<String>,
    pub swept_links: Vec<String>,
    pub released: Vec<String>,
    /// Definition and lease files that could not be read.
    pub damaged: Vec<PathBuf>,
    /// Kept forwards whose host port could not be held again (a host program bound it while
    /// berthd was down): "container: error".
    pub unreserved: Vec<String>,
}

/// `network inspect`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NetworkInfo {
    pub def: NetworkDef,
    pub gateway4: Ipv4Addr,
    pub gateway6: Option<Ipv6Addr>,
    /// (container, IPv4, IPv6, attached now)
    pub containers: Vec<(String, Ipv4Addr, Option<Ipv6Addr>, bool)>,
}

/// The engine. One per berthd, used from its tokio runtime (not `Sync`: berthd keeps it behind
/// one async mutex or in one task). Opened in the host's network namespace.
pub struct Networks {
    cfg: NetworksConfig,
    store: Store,
    host: Nl,
    host_netns: OwnedFd,
    up: HashMap<NetName, UpNet>,
    table_built: bool,
    attached: HashMap<String, Live>,
    /// (host port, proto) → (host address or any, container): O(1) conflict checks.
    ports: HashMap<(u16, Proto), Vec<PortUser>>,
    names: HashMap<NetName, Records>,
    upstreams: Vec<SocketAddr>,
}

/// Who publishes a host port: on which host address (or any), and which container.
type PortUser = (Option<IpAddr>, String);

fn host_ifname(prefix: &str, container: &str, salt: u32) -> IfName {
    let name = if container.len() <= 12 && salt == 0 {
        format!("{prefix}{container}")
    } else {
        // FNV-1a of the whole name: '~' cannot occur in a container name, so this form never
        // equals the short form of another container.
        let mut h: u32 = 0x811c9dc5 ^ salt;
        for b in container.bytes() {
            h ^= b as u32;
            h = h.wrapping_mul(0x01000193);
        }
        let keep = &container[..container.len().min(5)];
        format!("{prefix}{keep}~{:06x}", h & 0xff_ffff)
    };
    name.parse().expect("at most 15 valid bytes")
}

fn sysctl(path: &str, value: &str) -> Result<()> {
    let p = Path::new("/proc/sys").join(path);
    match fs::read_to_string(&p) {
        Ok(v) if v.trim() == value => return Ok(()),
        _ => {}
    }
    fs::write(&p, value).map_err(|e| NetError::io("writing", &p, e))
}

impl Networks {
    /// Load definitions and leases (creating the default network's definition on first use)
    /// and open netlink in the calling thread's network namespace, which is the host's. Makes
    /// nothing on the host yet: `reconcile` (at berthd start) or the first `attach` does.
    pub async fn open(cfg: NetworksConfig) -> Result<Networks> {
        let mut store = Store::open(&cfg.state_dir)?;
        let att_dir = cfg.run_dir.join("attachments");
        fs::create_dir_all(&att_dir).map_err(|e| NetError::io("creating", &att_dir, e))?;
        let host = Nl::current()?;
        let p = "/proc/thread-self/ns/net";
        let host_netns: OwnedFd = fs::File::open(p)
            .map_err(|e| NetError::io("opening", p, e))?
            .into();
        let default: NetName = DEFAULT_NETWORK.parse()?;
        // Made at first use; a damaged one is reported (reconcile), not replaced.
        if let Err(NetError::NoSuchNetwork(_)) = store.get(&default) {
            let routes = host.main_routes(&[]).await?;
            let req = CreateRequest {
                ipv6: cfg.default_ipv6,
                ..Default::default()
            };
            store.create(&default, &req, &routes, random_u64())?;
        }
        let upstreams = match &cfg.upstreams {
            Some(u) => u.clone(),
            None => files::host_upstreams()
                .0
                .into_iter()
                .map(|ip| SocketAddr::new(ip, 53))
                .collect(),
        };
        let names = store
            .defs()
            .map(|d| (d.name.clone(), Records::default()))
            .collect();
        Ok(Networks {
            cfg,
            store,
            host,
            host_netns,
            up: HashMap::new(),
            table_built: false,
            attached: HashMap::new(),
            ports: HashMap::new(),
            names,
            upstreams,
        })
    }

    // ------------------------------------------------------------------ networks

    /// `network create`. Refuses subnets overlapping another network or a host route.
    pub async fn create_network(
        &mut self,
        name: &NetName,
        req: &CreateRequest,
    ) -> Result<NetworkDef> {
        let skip: Vec<u32> = self.up.values().map(|u| u.bridge_index).collect();
        let routes = self.host.main_routes(&skip).await?;
        let def = self.store.create(name, req, &routes, random_u64())?;
        self.names.insert(name.clone(), Records::default());
        if self.table_built {
            self.rebuild_table()?;
        }
        Ok(def)
    }

    pub fn list_networks(&self) -> Vec<NetworkDef> {
        self.store.defs().cloned().collect()
    }

    pub fn inspect_network(&self, name: &NetName) -> Result<NetworkInfo> {
        let def = self.store.get(name)?.clone();
        let mut containers: Vec<_> = self
            .store
            .leases(name)
            .map(|l| {
                (
                    l.container.clone(),
                    l.ip4,
                    l.ip6,
                    self.attached.contains_key(&l.container),
                )
            })
            .collect();
        containers.sort();
        Ok(NetworkInfo {
            gateway4: def.gateway4(),
            gateway6: def.gateway6(),
            def,
            containers,
        })
    }

    /// `network rm`: refused for the default network and while a container holds a lease on
    /// it; removes the bridge, the resolver, the NAT elements and the definition.
    pub async fn remove_network(&mut self, name: &NetName) -> Result<()> {
        if name.as_str() == DEFAULT_NETWORK {
            return Err(NetError::DefaultNetwork);
        }
        let def = self.store.get(name)?.clone();
        let users = self.store.leases(name).count();
        if users > 0 {
            return Err(NetError::NetworkInUse(name.to_string(), users));
        }
        self.up.remove(name);
        if let Some(l) = self.host.link_by_name(def.bridge.as_str()).await? {
            self.host.del_link(l.index).await?;
        }
        self.store.remove(name)?;
        self.names.remove(name);
        if self.table_built {
            self.rebuild_table()?;
        }
        Ok(())
    }

    /// Bring a bridge network up once: bridge with its gateway addresses, forwarding sysctls
    /// (of the host netns only), the nft table, the resolver. Cached; cheap when up.
    async fn ensure_up(&mut self, name: &NetName) -> Result<u32> {
        if let Some(u) = self.up.get(name) {
            return Ok(u.bridge_index);
        }
        let def = self.store.get(name)?.clone();
        let mut addrs = vec![(IpAddr::V4(def.gateway4()), def.subnet4.prefix())];
        if let (Some(g), Some(s)) = (def.gateway6(), def.subnet6) {
            addrs.push((IpAddr::V6(g), s.prefix()));
        }
        let index = self
            .host
            .ensure_bridge(
                def.bridge.as_str(),
                &addrs,
                netlink::mac_for(def.gateway4()),
            )
            .await?;
        sysctl("net/ipv4/ip_forward", "1")?;
        sysctl(&format!("net/ipv4/conf/{}/route_localnet", def.bridge), "1")?;
        if def.subnet6.is_some() {
            sysctl("net/ipv6/conf/all/forwarding", "1")?;
        }
        if !self.table_built {
            self.rebuild_table()?;
        }
        // A host resolver already bound to the wildcard port 53 (named, a dnsmasq without
        // bind-interfaces) would take the gateway's port too: then the network runs without
        // the embedded resolver and containers get the host's upstream servers instead.
        let dns = if self.cfg.dns {
            match self.start_dns(&def).await {
                Ok(t) => Some(t),
                Err(e) => {
                    tracing::warn!("network {}: no embedded resolver: {e}, ignoring", def.name);
                    None
                }
            }
        } else {
            None
        };
        self.up.insert(
            name.clone(),
            UpNet {
                bridge_index: index,
                dns,
            },
        );
        Ok(index)
    }

    async fn start_dns(&mut self, def: &NetworkDef) -> Result<JoinHandle<()>> {
        let addr = SocketAddr::new(IpAddr::V4(def.gateway4()), 53);
        let udp = tokio::net::UdpSocket::bind(addr)
            .await
            .map_err(|e| NetError::io("binding the resolver on", addr.to_string(), e))?;
        let tcp = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| NetError::io("binding the resolver (TCP) on", addr.to_string(), e))?;
        let clients: Vec<Cidr> = [Some(def.subnet4), def.subnet6]
            .into_iter()
            .flatten()
            .collect();
        let records = self.names.entry(def.name.clone()).or_default().clone();
        let up = self.upstreams.clone();
        Ok(tokio::spawn(async move {
            tokio::join!(
                dns::serve(udp, clients.clone(), records.clone(), up.clone()),
                dns::serve_tcp(tcp, clients, records, up),
            );
        }))
    }

    fn rebuild_table(&mut self) -> Result<()> {
        let defs: Vec<&NetworkDef> = self.store.defs().collect();
        let fwds: Vec<Forward> = self
            .attached
            .values()
            .flat_map(|l| l.att.forwards.iter().copied())
            .collect();
        nft::apply(
            "rebuilding table inet berth",
            &nft::full_script(&defs, &fwds),
        )?;
        self.table_built = true;
        Ok(())
    }

    // ------------------------------------------------------------------ containers

    /// Step 1 of a start: decide everything, make nothing. Takes (or reuses) the lease,
    /// reserves host ports (checking berth's own forwards and the host's listeners), names the
    /// host interface, checks the interfaces exist. `user_namespace` is whether the container
    /// gets one (for the `host` check).
    pub async fn prepare(
        &mut self,
        container: &str,
        spec: &NetSpec,
        user_namespace: bool,
    ) -> Result<Plan> {
        crate::name::validate(container)
            .map_err(|_| NetError::BadContainerName(container.to_string()))?;
        spec.check(user_namespace)?;
        if self.attached.contains_key(container) {
            return Err(NetError::AlreadyAttached(container.to_string()));
        }
        let mut plan = Plan {
            container: container.to_string(),
            mode: spec.mode.clone(),
            network: None,
            lease: None,
            new_lease: false,
            host_if: None,
            forwards: Vec::new(),
            rate: spec.rate,
            macvlan_parent: None,
            interfaces: Vec::new(),
            reservations: Vec::new(),
        };
        if spec.mode.own_netns() {
            for i in &spec.interfaces {
                let l = self
                    .host
                    .link_by_name(i.as_str())
                    .await?
                    .ok_or_else(|| NetError::NoSuchInterface(i.to_string()))?;
                plan.interfaces.push((i.clone(), l.index));
            }
        }
        match &spec.mode {
            NetworkMode::Bridge(net) => {
                let def = self.store.get(net)?.clone();
                let (lease, new) = self.store.lease(net, container, spec.ip4, spec.ip6)?;
                plan.new_lease = new;
                plan.lease = Some(lease.clone());
                plan.host_if = Some(self.pick_ifname("vb-", container));
                plan.network = Some(def.clone());
                if let Err(e) = self.plan_ports(&mut plan, spec, &def, &lease) {
                    self.abandon(plan)?;
                    return Err(e);
                }
            }
            NetworkMode::Veth => plan.host_if = Some(self.pick_ifname("ve-", container)),
            NetworkMode::Macvlan(parent) => {
                let l = self
                    .host
                    .link_by_name(parent.as_str())
                    .await?
                    .ok_or_else(|| NetError::NoSuchInterface(parent.to_string()))?;
                plan.macvlan_parent = Some((parent.clone(), l.index));
            }
            NetworkMode::None | NetworkMode::Host | NetworkMode::Container(_) => {}
        }
        Ok(plan)
    }

    fn pick_ifname(&self, prefix: &str, container: &str) -> IfName {
        let taken = |n: &IfName| {
            self.attached
                .values()
                .any(|l| l.att.container != container && l.att.host_if.as_ref() == Some(n))
        };
        (0..)
            .map(|salt| host_ifname(prefix, container, salt))
            .find(|n| !taken(n))
            .expect("some salt is free")
    }

    fn plan_ports(
        &self,
        plan: &mut Plan,
        spec: &NetSpec,
        def: &NetworkDef,
        lease: &Lease,
    ) -> Result<()> {
        let mut wanted: Vec<(Option<IpAddr>, Option<u16>, u16, Proto)> = Vec::new();
        for p in &spec.publish {
            for i in 0..p.container.len() as u16 {
                let host = p.host.map(|h| h.first + i);
                wanted.push((p.host_ip, host, p.container.first + i, p.proto));
            }
        }
        for &(port, proto) in &spec.publish_all {
            wanted.push((None, None, port, proto));
        }
        let mut mine: HashSet<(u16, Proto)> = HashSet::new();
        for (host_ip, host_port, cport, proto) in wanted {
            if let Some(IpAddr::V6(_)) = host_ip
                && lease.ip6.is_none()
            {
                return Err(NetError::NoIpv6(def.name.to_string()));
            }
            let (port, res) =
                self.reserve(host_ip, host_port, proto, lease.ip6.is_some(), cport)?;
            if !mine.insert((port, proto)) && host_ip.is_none() {
                return Err(NetError::PortTakenByContainer {
                    port,
                    proto,
                    container: plan.container.clone(),
                });
            }
            plan.reservations.push(res);
            let v4 = matches!(host_ip, None | Some(IpAddr::V4(_)));
            let v6 = matches!(host_ip, None | Some(IpAddr::V6(_))) && lease.ip6.is_some();
            if v4 {
                plan.forwards.push(Forward {
                    host_ip,
                    host_port: port,
                    proto,
                    container_ip: IpAddr::V4(lease.ip4),
                    container_port: cport,
                });
            }
            if let (true, Some(ip6)) = (v6, lease.ip6) {
                plan.forwards.push(Forward {
                    host_ip,
                    host_port: port,
                    proto,
                    container_ip: IpAddr::V6(ip6),
                    container_port: cport,
                });
            }
        }
        Ok(())
    }

    /// Check a host port against berth's forwards and the host's sockets, and hold it with a
    /// bound socket (a host program binding it later gets EADDRINUSE instead of having its
    /// traffic silently DNATed away). Port `None` asks the kernel for a free one.
    fn reserve(
        &self,
        host_ip: Option<IpAddr>,
        port: Option<u16>,
        proto: Proto,
        dual: bool,
        cport: u16,
    ) -> Result<(u16, Reservation)> {
        for attempt in 0..16 {
            if let Some(p) = port
                && let Some(users) = self.ports.get(&(p, proto))
                && let Some((_, c)) = users
                    .iter()
                    .find(|(ip, _)| ip.is_none() || host_ip.is_none() || *ip == host_ip)
            {
                return Err(NetError::PortTakenByContainer {
                    port: p,
                    proto,
                    container: c.clone(),
                });
            }
            // Any address: the dual-stack wildcard covers IPv4 and IPv6 in one socket.
            let bind_ip = host_ip.unwrap_or(if dual {
                IpAddr::V6(Ipv6Addr::UNSPECIFIED)
            } else {
                IpAddr::V4(Ipv4Addr::UNSPECIFIED)
            });
            let addr = SocketAddr::new(bind_ip, port.unwrap_or(0));
            let bound = match proto {
                Proto::Tcp => std::net::TcpListener::bind(addr).map(|s| {
                    let p = s.local_addr().map(|a| a.port()).unwrap_or(0);
                    (p, Reservation::Tcp(s))
                }),
                Proto::Udp => std::net::UdpSocket::bind(addr).map(|s| {
                    let p = s.local_addr().map(|a| a.port()).unwrap_or(0);
                    (p, Reservation::Udp(s))
                }),
            };
            match bound {
                Ok((p, r)) => {
                    // A kernel-chosen port may be one berth forwards (only the sockets were
                    // closed, e.g. after a berthd restart): pick again.
                    if port.is_none() && self.ports.contains_key(&(p, proto)) && attempt < 15 {
                        continue;
                    }
                    return Ok((p, r));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                    return Err(NetError::PortTakenByHost {
                        port: port.unwrap_or(0),
                        proto,
                        addr: bind_ip,
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AddrNotAvailable => {
                    return Err(NetError::HostAddressNotLocal(bind_ip));
                }
                Err(e) => return Err(NetError::io("reserving host port", addr.to_string(), e)),
            }
        }
        Err(NetError::NoFreePort(cport, proto))
    }

    /// Give up a plan that will not be attached (the start failed before step 4): frees its
    /// host ports and, if this prepare took it, its lease.
    pub fn abandon(&mut self, plan: Plan) -> Result<()> {
        if plan.new_lease {
            self.store.release(&plan.container)?;
        }
        Ok(())
    }

    /// Step 4 of a start: plug the container into its network. `netns` is its network
    /// namespace (`/proc/PID/ns/net` of the helper after it unshared). On error everything
    /// made is undone (and the plan's new lease freed) before returning.
    pub async fn attach(&mut self, plan: Plan, netns: impl AsFd) -> Result<Attachment> {
        let netns = netns.as_fd();
        let att = Attachment {
            container: plan.container.clone(),
            mode: plan.mode.clone(),
            network: plan.network.as_ref().map(|d| d.name.clone()),
            host_if: plan.host_if.clone(),
            ip4: plan.lease.as_ref().map(|l| l.ip4),
            ip6: plan.lease.as_ref().and_then(|l| l.ip6),
            gateway4: plan.network.as_ref().map(|d| d.gateway4()),
            gateway6: plan.network.as_ref().and_then(|d| d.gateway6()),
            forwards: plan.forwards.clone(),
            rate: plan.rate,
            moved: plan.interfaces.iter().map(|(n, _)| n.clone()).collect(),
            ifb: match (&plan.host_if, plan.rate) {
                (Some(h), Some(_)) => Some(format!("bi-{}", &h.as_str()[3..]).parse()?),
                _ => None,
            },
        };
        if !plan.mode.own_netns() {
            return Ok(att);
        }
        let needs_record = att.host_if.is_some() || !att.moved.is_empty();
        if needs_record {
            self.write_record(&att)?;
        }
        let mut made = Made::default();
        match self.attach_inner(&plan, &att, netns, &mut made).await {
            Ok(()) => {}
            Err(e) => {
                let undo = self.undo(&att, &made, Some(netns)).await;
                let rec = if needs_record {
                    self.remove_record(&att.container)
                } else {
                    Ok(())
                };
                let lease = if plan.new_lease {
                    self.store.release(&plan.container).map(|_| ())
                } else {
                    Ok(())
                };
                return Err(match undo.and(rec).and(lease) {
                    Ok(()) => e,
                    Err(c) => NetError::Cleanup(Box::new(e), Box::new(c)),
                });
            }
        }
        for f in &att.forwards {
            self.ports
                .entry((f.host_port, f.proto))
                .or_default()
                .push((f.host_ip, att.container.clone()));
        }
        if let (Some(net), Some(ip4)) = (&att.network, att.ip4) {
            let rec = self.names.entry(net.clone()).or_default();
            rec.write()
                .unwrap_or_else(|p| p.into_inner())
                .insert(att.container.to_ascii_lowercase(), (Some(ip4), att.ip6));
        }
        let keep_ns = if att.moved.is_empty() {
            None
        } else {
            Some(
                netns
                    .try_clone_to_owned()
                    .map_err(|e| NetError::io("duplicating", "netns fd", e))?,
            )
        };
        self.attached.insert(
            att.container.clone(),
            Live {
                att: att.clone(),
                netns: keep_ns,
                _reservations: plan.reservations,
            },
        );
        Ok(att)
    }

    async fn attach_inner(
        &mut self,
        plan: &Plan,
        att: &Attachment,
        netns: std::os::fd::BorrowedFd<'_>,
        made: &mut Made,
    ) -> Result<()> {
        let master = match &plan.network {
            Some(def) => Some(self.ensure_up(&def.name).await?),
            None => None,
        };
        // The container-side socket is opened on its own thread while the host side makes
        // the veth: the two round trips overlap.
        let cnl = Nl::in_netns(netns);
        let host_side = async {
            match &plan.host_if {
                Some(h) => self
                    .host
                    .add_veth(
                        h.as_str(),
                        master,
                        "eth0",
                        plan.lease.as_ref().map(|l| netlink::mac_for(l.ip4)),
                        netns,
                    )
                    .await
                    .map(Some),
                None => Ok(None),
            }
        };
        let (cnl, host_index) = tokio::join!(cnl, host_side);
        if let Ok(Some(i)) = host_index {
            made.veth = Some(i);
        }
        let cnl = cnl?;
        host_index?;
        if let (NetworkMode::Veth, Some(i)) = (&plan.mode, made.veth) {
            self.host
                .set_alias(i, &format!("berth:{}", plan.container))
                .await?;
        }
        if let Some((_, parent)) = &plan.macvlan_parent {
            self.host.add_macvlan(*parent, "eth0", netns).await?;
        }
        for (name, index) in &plan.interfaces {
            self.host.move_link(*index, netns, true).await?;
            made.moved.push(name.clone());
        }
        // Inside the container: lo up while eth0 is looked up; then eth0 up, addresses and
        // routes queued together. The kernel handles one socket's requests in order, so the
        // routes find their addresses; the answers come back as one round trip, not five.
        let lo = cnl.set_up(1); // lo is ifindex 1 in every netns (LOOPBACK_IFINDEX)
        let lookup = async {
            match made.veth {
                Some(_) => cnl.link_by_name("eth0").await.map(|l| l.map(|l| l.index)),
                None => Ok(None),
            }
        };
        let (lo, eth0) = tokio::join!(lo, lookup);
        lo?;
        let eth0 = match (made.veth, eth0?) {
            (Some(_), None) => return Err(NetError::NoSuchInterface("eth0 (container)".into())),
            (_, e) => e,
        };
        if let Some(eth0) = eth0 {
            type Step<'a> =
                std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>> + Send + 'a>>;
            let mut steps: Vec<Step<'_>> = vec![Box::pin(cnl.set_up(eth0))];
            if let (Some(def), Some(lease)) = (&plan.network, &plan.lease) {
                steps.push(Box::pin(cnl.add_address(
                    eth0,
                    IpAddr::V4(lease.ip4),
                    def.subnet4.prefix(),
                )));
                if let (Some(ip6), Some(s6)) = (lease.ip6, def.subnet6) {
                    steps.push(Box::pin(cnl.add_address(
                        eth0,
                        IpAddr::V6(ip6),
                        s6.prefix(),
                    )));
                }
                steps.push(Box::pin(
                    cnl.add_default_route(IpAddr::V4(def.gateway4()), eth0),
                ));
                if let (Some(_), Some(g6)) = (lease.ip6, def.gateway6()) {
                    steps.push(Box::pin(cnl.add_default_route(IpAddr::V6(g6), eth0)));
                }
            }
            futures_util::future::try_join_all(steps).await?;
        }
        if let (Some(rate), Some(i), Some(ifb)) = (plan.rate, made.veth, &att.ifb) {
            made.ifb = true; // possibly half made: undo deletes it by name
            self.host
                .shape(i, ifb.as_str(), &format!("berth:{}", plan.container), rate)
                .await?;
        }
        if !plan.forwards.is_empty() {
            nftnl::apply(true, &plan.forwards)?;
            made.forwards = true;
        }
        Ok(())
    }

    /// Undo what `made` says was made (or, with `Made::all`, everything the attachment
    /// implies). Keeps going after a failure and returns the first error.
    async fn undo(
        &self,
        att: &Attachment,
        made: &Made,
        netns: Option<std::os::fd::BorrowedFd<'_>>,
    ) -> Result<()> {
        let mut first: Option<NetError> = None;
        let mut note = |r: Result<()>| {
            if let Err(e) = r
                && first.is_none()
            {
                first = Some(e);
            }
        };
        if made.forwards && !att.forwards.is_empty() {
            note(withdraw(&att.forwards));
        }
        if !made.moved.is_empty() {
            // Without the netns (gone) physical NICs already went back to the initial netns.
            if let Some(ns) = netns {
                note(self.move_back(ns, &made.moved).await);
            }
        }
        if let (true, Some(ifb)) = (made.ifb || made.all, &att.ifb) {
            match self.host.link_by_name(ifb.as_str()).await {
                Ok(Some(l)) => note(self.host.del_link(l.index).await),
                Ok(None) => {}
                Err(e) => note(Err(e)),
            }
        }
        match made.veth {
            Some(i) => note(self.host.del_link(i).await),
            None if made.all => {
                if let Some(h) = &att.host_if {
                    match self.host.link_by_name(h.as_str()).await {
                        Ok(Some(l)) => note(self.host.del_link(l.index).await),
                        Ok(None) => {}
                        Err(e) => note(Err(e)),
                    }
                }
            }
            None => {}
        }
        first.map_or(Ok(()), Err)
    }

    async fn move_back(&self, netns: std::os::fd::BorrowedFd<'_>, names: &[IfName]) -> Result<()> {
        let cnl = Nl::in_netns(netns).await?;
        for n in names {
            if let Some(l) = cnl.link_by_name(n.as_str()).await? {
                cnl.move_link(l.index, self.host_netns.as_fd(), false)
                    .await?;
            }
        }
        Ok(())
    }

    /// Step 6: the container stopped (or is being stopped). Removes its veth, forwards,
    /// shaping and name records, moves NICs back; keeps its lease. Unknown containers are a
    /// no-op (detach is idempotent).
    pub async fn detach(&mut self, container: &str) -> Result<()> {
        let Some(live) = self.attached.remove(container) else {
            return Ok(());
        };
        let att = &live.att;
        for f in &att.forwards {
            if let Some(v) = self.ports.get_mut(&(f.host_port, f.proto)) {
                v.retain(|(_, c)| c != container);
                if v.is_empty() {
                    self.ports.remove(&(f.host_port, f.proto));
                }
            }
        }
        if let Some(net) = &att.network
            && let Some(r) = self.names.get(net)
        {
            r.write()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&container.to_ascii_lowercase());
        }
        let made = Made {
            all: true,
            veth: None,
            ifb: true,
            forwards: true,
            moved: att.moved.clone(),
        };
        let undone = self
            .undo(att, &made, live.netns.as_ref().map(|f| f.as_fd()))
            .await;
        let rec = self.remove_record(container);
        undone.and(rec)
    }

    /// The container was removed: free its leases.
    pub fn release(&mut self, container: &str) -> Result<Vec<Lease>> {
        self.store.release(container)
    }

    /// The current attachment of a container (`berthctl port` lists `forwards`).
    pub fn attachment(&self, container: &str) -> Option<&Attachment> {
        self.attached.get(container).map(|l| &l.att)
    }

    /// rx/tx of the container's interface, from the container's point of view (read on the
    /// host side of its veth, where received and sent swap).
    pub async fn stats(&self, container: &str) -> Result<Option<LinkStats>> {
        let Some(h) = self
            .attached
            .get(container)
            .and_then(|l| l.att.host_if.clone())
        else {
            return Ok(None);
        };
        let Some(l) = self.host.link_by_name(h.as_str()).await? else {
            return Ok(None);
        };
        let s = self.host.link_stats(l.index).await?;
        Ok(Some(LinkStats {
            rx_bytes: s.tx_bytes,
            tx_bytes: s.rx_bytes,
            rx_packets: s.tx_packets,
            tx_packets: s.rx_packets,
        }))
    }

    /// The container's `/etc/hosts`, `/etc/hostname` and `/etc/resolv.conf` contents for
    /// this attachment (berthd writes them unless the image or a bind mount provides them).
    pub fn container_files(&self, att: &Attachment, hostname: &str) -> (String, String, String) {
        let own = files::own_addrs(att.ip4, att.ip6);
        let resolver = att
            .network
            .as_ref()
            .and_then(|n| self.up.get(n))
            .is_some_and(|u| u.dns.is_some());
        // With the resolver, peers are found by name live; listing them here would make each
        // start cost more as more containers run, and the list would go stale.
        let mut peers: Vec<(String, IpAddr)> = Vec::new();
        if let (Some(net), false) = (&att.network, resolver) {
            for l in self.store.leases(net) {
                if l.container != att.container && self.attached.contains_key(&l.container) {
                    peers.push((l.container.clone(), IpAddr::V4(l.ip4)));
                }
            }
        }
        peers.sort();
        let (host_ns, search) = files::host_upstreams();
        let resolv = match (att.gateway4, resolver) {
            (Some(gw), true) => files::resolv_conf(&[IpAddr::V4(gw)], &[]),
            _ => files::resolv_conf(&host_ns, &search),
        };
        (
            files::hosts(hostname, &own, &peers),
            files::hostname(hostname),
            resolv,
        )
    }

    // ------------------------------------------------------------------ reconcile

    /// At berthd start (and whenever it suspects drift): bring every network up, keep the
    /// attachments of `running` containers, undo those of any other, delete stray berth veths,
    /// rebuild the nft table from what is kept, and free the leases of containers not in
    /// `existing` (removed while berthd was down).
    pub async fn reconcile(
        &mut self,
        running: Vec<Running>,
        existing: &[String],
    ) -> Result<ReconcileReport> {
        let mut report = ReconcileReport {
            damaged: self.store.damaged.clone(),
            ..Default::default()
        };
        let mut running: HashMap<String, Option<OwnedFd>> =
            running.into_iter().map(|r| (r.name, r.netns)).collect();
        let dir = self.cfg.run_dir.join("attachments");
        let mut records: Vec<Attachment> = Vec::new();
        for ent in fs::read_dir(&dir).map_err(|e| NetError::io("reading", &dir, e))? {
            let ent = ent.map_err(|e| NetError::io("reading", &dir, e))?;
            let p = ent.path();
            if p.extension().is_some_and(|x| x == "json")
                && !ent.file_name().to_string_lossy().starts_with('.')
            {
                match store::read_json::<Attachment>(&p) {
                    Ok(a) => records.push(a),
                    Err(NetError::Corrupt { .. }) => {
                        fs::remove_file(&p).map_err(|e| NetError::io("removing", &p, e))?;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        let mut first_err: Option<NetError> = None;
        let mut dead = Vec::new();
        for att in records {
            if self.attached.contains_key(&att.container) {
                report.kept.push(att.container.clone());
                continue;
            }
            if let Some(ns) = running.remove(&att.container) {
                // Hold its host ports again (the sockets died with the old berthd); a port a
                // host program took meanwhile is reported, the forward itself stays.
                let mut reservations = Vec::new();
                for f in &att.forwards {
                    let dual = att.ip6.is_some() && f.host_ip.is_none();
                    if f.container_ip.is_ipv6() && dual {
                        continue; // the dual-stack socket of the IPv4 forward holds it
                    }
                    match self.reserve(
                        f.host_ip,
                        Some(f.host_port),
                        f.proto,
                        dual,
                        f.container_port,
                    ) {
                        Ok((_, r)) => reservations.push(r),
                        Err(e) => report.unreserved.push(format!("{}: {e}", att.container)),
                    }
                }
                for f in &att.forwards {
                    self.ports
                        .entry((f.host_port, f.proto))
                        .or_default()
                        .push((f.host_ip, att.container.clone()));
                }
                if let (Some(net), Some(ip4)) = (&att.network, att.ip4) {
                    self.names
                        .entry(net.clone())
                        .or_default()
                        .write()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(att.container.to_ascii_lowercase(), (Some(ip4), att.ip6));
                }
                report.kept.push(att.container.clone());
                self.attached.insert(
                    att.container.clone(),
                    Live {
                        att,
                        netns: ns,
                        _reservations: reservations,
                    },
                );
            } else {
                dead.push(att);
            }
        }
        // One atomic rebuild of the table with the kept forwards only: running containers'
        // ports never stop working, dead ones' vanish. Then the bridges and resolvers.
        self.rebuild_table()?;
        let defs: Vec<NetName> = self.store.defs().map(|d| d.name.clone()).collect();
        for n in &defs {
            self.ensure_up(n).await?;
        }
        for att in dead {
            let made = Made {
                all: true,
                veth: None,
                ifb: true,
                forwards: false,
                moved: Vec::new(),
            };
            if let Err(e) = self.undo(&att, &made, None).await {
                first_err.get_or_insert(e);
            }
            if let Err(e) = self.remove_record(&att.container) {
                first_err.get_or_insert(e);
            }
            report.detached.push(att.container.clone());
        }
        // Stray links: berth's naming (vb- on a berth bridge) with no kept attachment. A `ve-`
        // or `bi-` link is berth's only if its alias says so (nspawn uses `ve-` too).
        let bridges: HashSet<u32> = self.up.values().map(|u| u.bridge_index).collect();
        let kept_ifs: HashSet<String> = self
            .attached
            .values()
            .flat_map(|l| [l.att.host_if.as_ref(), l.att.ifb.as_ref()])
            .flatten()
            .map(|h| h.to_string())
            .collect();
        for l in self.host.links().await? {
            let ours = (l.name.starts_with("vb-")
                && l.master.is_some_and(|m| bridges.contains(&m)))
                || ((l.name.starts_with("ve-") || l.name.starts_with("bi-"))
                    && l.alias.as_deref().is_some_and(|a| a.starts_with("berth:")));
            if ours && !kept_ifs.contains(&l.name) {
                if let Err(e) = self.host.del_link(l.index).await {
                    first_err.get_or_insert(e);
                }
                report.swept_links.push(l.name);
            }
        }
        let existing: HashSet<&str> = existing.iter().map(String::as_str).collect();
        for holder in self.store.lease_holders() {
            if !existing.contains(holder.as_str()) && !self.attached.contains_key(&holder) {
                self.store.release(&holder)?;
                report.released.push(holder);
            }
        }
        report.kept.sort();
        report.detached.sort();
        match first_err {
            Some(e) => Err(e),
            None => Ok(report),
        }
    }

    fn write_record(&self, att: &Attachment) -> Result<()> {
        let p = self
            .cfg
            .run_dir
            .join("attachments")
            .join(format!("{}.json", att.container));
        store::write_atomic(&p, &serde_json::to_vec(att).expect("serialisable"), false)
    }

    fn remove_record(&self, container: &str) -> Result<()> {
        let p = self
            .cfg
            .run_dir
            .join("attachments")
            .join(format!("{container}.json"));
        match fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(NetError::io("removing", &p, e)),
        }
    }

    /// Names a resolver on `network` currently answers (for tests and `inspect`).
    pub fn resolver_names(&self, network: &NetName) -> NameTable {
        self.names
            .get(network)
            .map(|r| r.read().unwrap_or_else(|p| p.into_inner()).clone())
            .unwrap_or_default()
    }
}

/// Remove a container's forwards: one batch; if some element is already gone (the batch is
/// all-or-nothing), element by element, a missing one counting as removed.
fn withdraw(forwards: &[Forward]) -> Result<()> {
    match nftnl::apply(false, forwards) {
        Err(e) if e.errno() == Some(libc::ENOENT) => {
            for f in forwards {
                match nftnl::apply(false, std::slice::from_ref(f)) {
                    Err(e) if e.errno() == Some(libc::ENOENT) => {}
                    other => other?,
                }
            }
            Ok(())
        }
        other => other,
    }
}

#[derive(Default)]
struct Made {
    /// Undo by name whatever the attachment implies (detach, reconcile).
    all: bool,
    veth: Option<u32>,
    ifb: bool,
    forwards: bool,
    moved: Vec<IfName>,
}

fn random_u64() -> u64 {
    use std::io::Read;
    let mut b = [0u8; 8];
    match fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b)) {
        Ok(()) => u64::from_ne_bytes(b),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x5eed),
    }
}

/// What a loopback-only container needs without the engine (it could not be opened: see
/// berthd's log): `lo` up in its network namespace. Nothing is made on the host.
pub async fn loopback_only(netns: impl AsFd) -> Result<()> {
    netlink::Nl::in_netns(netns.as_fd()).await?.set_up(1).await
}

/// The /etc files (hosts, hostname, resolv.conf) of a container with no address of its own
/// and no berth resolver: `none` and `host` without the engine.
pub fn plain_files(hostname: &str) -> (String, String, String) {
    let (host_ns, search) = files::host_upstreams();
    (
        files::hosts(hostname, &[], &[]),
        files::hostname(hostname),
        files::resolv_conf(&host_ns, &search),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ifnames_are_short_predictable_and_distinct() {
        assert_eq!(host_ifname("vb-", "web", 0).as_str(), "vb-web");
        assert_eq!(
            host_ifname("vb-", "abcdefghijkl", 0).as_str(),
            "vb-abcdefghijkl"
        );
        let a = host_ifname("vb-", "abcdefghijklm", 0);
        let b = host_ifname("vb-", "abcdefghijkln", 0);
        assert_eq!(a.as_str().len(), 15);
        assert!(a.as_str().starts_with("vb-abcde~"));
        assert_ne!(a, b);
        assert_eq!(a, host_ifname("vb-", "abcdefghijklm", 0), "stable");
        assert_ne!(host_ifname("vb-", "web", 1), host_ifname("vb-", "web", 0));
    }
}
