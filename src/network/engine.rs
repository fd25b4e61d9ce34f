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

mod attach;
mod networks;
mod ports;
mod reconcile;

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

/// Turn IPv6 off on a bridge port's host end before its peer comes up (no carrier, so no
/// address or route has been made on it yet). A port needs no IPv6 of its own (the bridge
/// carries the containers' IPv6), and each port's link-local and multicast routes would make
/// every later port change walk a routing table that grows with the number of containers
/// (`fib6_ifdown` at each veth deletion). Without IPv6 in the kernel there is nothing to do.
fn disable_port_ipv6(ifname: &str) -> std::io::Result<()> {
    let p = format!("/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6");
    match fs::write(&p, "1") {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
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
