//! Network definitions and IPAM, persisted as JSON.
//!
//! Layout under the state directory the caller gives (berthd: `/var/lib/berth/networks`):
//!
//! ```text
//! defs/NAME.json                 one network definition (subnets, bridge, flags)
//! leases/NAME/CONTAINER.json     one container's addresses on network NAME
//! ```
//!
//! One file per lease, so taking or freeing an address writes one small file whatever the number
//! of containers (the start path must not cost more as more containers exist). Every write is
//! a write to a temporary file, then `rename` over the old one: after a crash at any point a
//! file is either the old or the new version. Definitions are also `fsync`ed; leases are not
//! (measured: one fsync costs ~9 ms here, more than the whole bridge attach), because losing a
//! lease in a power cut only means the container may get another address on its next start,
//! and a lease file left empty by one is skipped at open and reported in [`Store::damaged`]. Allocation keeps a cursor per family and
//! a hash set of used addresses, so it is O(1) amortised until a subnet fills up.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::error::{NetError, Result};
use super::types::{Cidr, DEFAULT_NETWORK, IfName, NetName};

/// The bridge of the default network.
pub const DEFAULT_BRIDGE: &str = "berth0";

/// One network, as `berthctl network create` made it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkDef {
    /// The network's name (`bridge` means [`DEFAULT_NETWORK`]).
    pub name: NetName,
    /// The host bridge: `berth0` for the default network, `berthN` for the others.
    pub bridge: IfName,
    /// IPv4 subnet; the gateway (the bridge's address) is its first host address.
    pub subnet4: Cidr,
    /// IPv6 subnet (a ULA /64 generated at creation unless given), if the network has IPv6.
    pub subnet6: Option<Cidr>,
    /// No NAT and no forwarding to or from anything but the bridge itself.
    pub internal: bool,
}

impl NetworkDef {
    pub fn gateway4(&self) -> Ipv4Addr {
        match self.subnet4.nth(1) {
            Some(IpAddr::V4(a)) => a,
            _ => unreachable!("subnet4 is an IPv4 /30 or larger"),
        }
    }

    pub fn gateway6(&self) -> Option<Ipv6Addr> {
        self.subnet6.and_then(|s| match s.nth(1) {
            Some(IpAddr::V6(a)) => Some(a),
            _ => None,
        })
    }
}

/// A container's addresses on one network; kept until the container is removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lease {
    pub container: String,
    pub network: NetName,
    pub ip4: Ipv4Addr,
    pub ip6: Option<Ipv6Addr>,
}

/// What a caller asks `network create` for.
#[derive(Debug, Clone, Default)]
pub struct CreateRequest {
    pub subnet4: Option<Cidr>,
    pub ipv6: bool,
    pub subnet6: Option<Cidr>,
    pub internal: bool,
}

/// One network with its leases.
#[derive(Debug)]
pub(crate) struct Pool {
    pub def: NetworkDef,
    pub leases: HashMap<String, Lease>,
    used4: HashMap<Ipv4Addr, String>,
    used6: HashMap<Ipv6Addr, String>,
    cursor4: u128,
    cursor6: u128,
}

impl Pool {
    fn new(def: NetworkDef) -> Pool {
        Pool {
            def,
            leases: HashMap::new(),
            used4: HashMap::new(),
            used6: HashMap::new(),
            cursor4: 2,
            cursor6: 2,
        }
    }

    fn insert(&mut self, lease: Lease) {
        self.used4.insert(lease.ip4, lease.container.clone());
        if let Some(a) = lease.ip6 {
            self.used6.insert(a, lease.container.clone());
        }
        self.leases.insert(lease.container.clone(), lease);
    }

    /// Host offsets that may be handed out: 2 ..= size-2 (the network address, the gateway
    /// and, for IPv4, the broadcast address are never leased). For IPv6 the range is capped so
    /// a scan of a full /64 stays bounded.
    fn host_range(subnet: &Cidr) -> (u128, u128) {
        let size = subnet.size();
        let last = if subnet.is_ipv4() {
            size - 2
        } else {
            (size - 1).min(1 << 24)
        };
        (2, last)
    }

    fn check_fixed(&self, ip: IpAddr, subnet: &Cidr, container: &str) -> Result<()> {
        let name = self.def.name.to_string();
        let off =
            subnet
                .offset(ip)
                .ok_or(NetError::AddressNotInSubnet(ip, *subnet, name.clone()))?;
        let (lo, hi) = Pool::host_range(subnet);
        if off < lo || (subnet.is_ipv4() && off > hi) || off >= subnet.size() {
            return Err(NetError::AddressReserved(ip));
        }
        let owner = match ip {
            IpAddr::V4(a) => self.used4.get(&a),
            IpAddr::V6(a) => self.used6.get(&a),
        };
        match owner {
            Some(o) if o != container => Err(NetError::AddressTaken(ip, name, o.clone())),
            _ => Ok(()),
        }
    }

    fn free4(&mut self, prefer: Option<u128>) -> Result<Ipv4Addr> {
        let subnet = self.def.subnet4;
        let (lo, hi) = Pool::host_range(&subnet);
        let n = hi - lo + 1;
        let start = prefer.unwrap_or(self.cursor4).clamp(lo, hi);
        for i in 0..n {
            let off = lo + (start - lo + i) % n;
            if let Some(IpAddr::V4(a)) = subnet.nth(off)
                && !self.used4.contains_key(&a)
            {
                if prefer.is_none() {
                    self.cursor4 = off + 1;
                }
                return Ok(a);
            }
        }
        Err(NetError::SubnetFull(subnet, self.def.name.to_string()))
    }

    fn free6(&mut self, prefer: u128) -> Result<Option<Ipv6Addr>> {
        let Some(subnet) = self.def.subnet6 else {
            return Ok(None);
        };
        let (lo, hi) = Pool::host_range(&subnet);
        // The same host number as the IPv4 address when it is free: 10.89.0.7 and fd..::7.
        if let Some(IpAddr::V6(a)) = subnet.nth(prefer)
            && prefer >= lo
            && prefer <= hi
            && !self.used6.contains_key(&a)
        {
            return Ok(Some(a));
        }
        let n = hi - lo + 1;
        let start = self.cursor6.clamp(lo, hi);
        for i in 0..n {
            let off = lo + (start - lo + i) % n;
            if let Some(IpAddr::V6(a)) = subnet.nth(off)
                && !self.used6.contains_key(&a)
            {
                self.cursor6 = off + 1;
                return Ok(Some(a));
            }
        }
        Err(NetError::SubnetFull(subnet, self.def.name.to_string()))
    }
}

/// All networks and leases, loaded from and written to the state directory.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    pub(crate) pools: BTreeMap<NetName, Pool>,
    /// Definition and lease files that could not be read at open (e.g. empty after a power
    /// cut): such a network is unknown until its file is repaired; such a lease's addresses
    /// are free again. berthd logs them.
    pub damaged: Vec<PathBuf>,
}

/// The pool auto-picked subnets come from: the default network gets the first free /16 of
/// 10.89.0.0 – 10.99.0.0, other networks the first free /24 of 10.100.0.0 – 10.127.255.0. Both
/// stay clear of podman (10.88/16) and docker (172.17/16 and up).
fn candidates(default: bool) -> Box<dyn Iterator<Item = Cidr>> {
    if default {
        Box::new(
            (89u8..=99).map(|b| Cidr::new(IpAddr::V4(Ipv4Addr::new(10, b, 0, 0)), 16).unwrap()),
        )
    } else {
        Box::new((100u8..=127).flat_map(|b| {
            (0u8..=255).map(move |c| Cidr::new(IpAddr::V4(Ipv4Addr::new(10, b, c, 0)), 24).unwrap())
        }))
    }
}

impl Store {
    /// Load every definition and lease under `dir` (created if missing).
    pub fn open(dir: &Path) -> Result<Store> {
        for sub in ["defs", "leases"] {
            let d = dir.join(sub);
            fs::create_dir_all(&d).map_err(|e| NetError::io("creating", &d, e))?;
        }
        let mut pools = BTreeMap::new();
        let mut damaged = Vec::new();
        for path in json_files(&dir.join("defs"))? {
            // One damaged definition costs its own network, not every other one: it is left
            // where it is for the administrator (and reported), never rewritten.
            match read_json::<NetworkDef>(&path) {
                Ok(def) => {
                    pools.insert(def.name.clone(), Pool::new(def));
                }
                Err(NetError::Corrupt { .. }) => damaged.push(path),
                Err(e) => return Err(e),
            }
        }
        for (name, pool) in pools.iter_mut() {
            let d = dir.join("leases").join(name.as_str());
            if !d.exists() {
                continue;
            }
            for path in json_files(&d)? {
                match read_json::<Lease>(&path) {
                    Ok(lease) if lease.network == *name => pool.insert(lease),
                    Ok(_) | Err(NetError::Corrupt { .. }) => damaged.push(path),
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(Store {
            dir: dir.to_path_buf(),
            pools,
            damaged,
        })
    }

    pub fn get(&self, name: &NetName) -> Result<&NetworkDef> {
        self.pools.get(name).map(|p| &p.def).ok_or_else(|| {
            let path = self.def_path(name);
            if self.damaged.contains(&path) {
                NetError::DamagedNetwork(name.to_string(), path)
            } else {
                NetError::NoSuchNetwork(name.to_string())
            }
        })
    }

    pub fn defs(&self) -> impl Iterator<Item = &NetworkDef> {
        self.pools.values().map(|p| &p.def)
    }

    pub fn leases(&self, name: &NetName) -> impl Iterator<Item = &Lease> {
        self.pools
            .get(name)
            .into_iter()
            .flat_map(|p| p.leases.values())
    }

    /// Define a network. `host_routes` are the host's routes (main table, not berth's own
    /// bridges): a subnet overlapping one of them is refused, an auto-picked one avoids them.
    /// `ula_seed` gives the 40-bit global ID of a generated ULA prefix.
    pub fn create(
        &mut self,
        name: &NetName,
        req: &CreateRequest,
        host_routes: &[Cidr],
        ula_seed: u64,
    ) -> Result<NetworkDef> {
        if self.pools.contains_key(name) {
            return Err(NetError::NetworkExists(name.to_string()));
        }
        // A damaged definition of that name is the administrator's to look at, not to be
        // replaced unseen.
        if self.def_path(name).exists() {
            return Err(NetError::DamagedNetwork(
                name.to_string(),
                self.def_path(name),
            ));
        }
        let is_default = name.as_str() == DEFAULT_NETWORK;
        let check = |c: &Cidr, pools: &BTreeMap<NetName, Pool>| -> Result<()> {
            for p in pools.values() {
                for other in [Some(p.def.subnet4), p.def.subnet6].into_iter().flatten() {
                    if other.overlaps(c) {
                        return Err(NetError::SubnetOverlapsNetwork(
                            *c,
                            p.def.name.to_string(),
                            other,
                        ));
                    }
                }
            }
            for r in host_routes {
                if r.prefix() > 0 && r.overlaps(c) {
                    return Err(NetError::SubnetOverlapsRoute(*c, *r));
                }
            }
            Ok(())
        };
        let subnet4 = match req.subnet4 {
            Some(c) => {
                if !c.is_ipv4() {
                    return Err(NetError::BadCidr(format!(
                        "{c} (--subnet takes IPv4; use --subnet6)"
                    )));
                }
                if c.prefix() > 30 {
                    return Err(NetError::SubnetTooSmall(c));
                }
                check(&c, &self.pools)?;
                c
            }
            None => candidates(is_default)
                .find(|c| check(c, &self.pools).is_ok())
                .ok_or(NetError::NoFreeSubnet)?,
        };
        let subnet6 = match (req.ipv6 || req.subnet6.is_some(), req.subnet6) {
            (false, _) => None,
            (true, Some(c)) => {
                if c.is_ipv4() {
                    return Err(NetError::BadCidr(format!("{c} (--subnet6 takes IPv6)")));
                }
                if c.prefix() > 126 {
                    return Err(NetError::SubnetTooSmall(c));
                }
                check(&c, &self.pools)?;
                Some(c)
            }
            (true, None) => {
                // RFC 4193: fd00::/8, a 40-bit random global ID, a 16-bit subnet ID (0).
                let gid = (ula_seed & 0xff_ffff_ffff) as u128;
                let mut found = None;
                for bump in 0..64u128 {
                    let prefix = (0xfdu128 << 120) | (((gid + bump) & 0xff_ffff_ffff) << 80);
                    let c = Cidr::new(IpAddr::V6(Ipv6Addr::from(prefix)), 64)?;
                    if check(&c, &self.pools).is_ok() {
                        found = Some(c);
                        break;
                    }
                }
                Some(found.ok_or(NetError::NoFreeSubnet)?)
            }
        };
        let bridge = self.next_bridge(is_default)?;
        let def = NetworkDef {
            name: name.clone(),
            bridge,
            subnet4,
            subnet6,
            internal: req.internal,
        };
        write_json(&self.def_path(name), &def)?;
        self.pools.insert(name.clone(), Pool::new(def.clone()));
        Ok(def)
    }

    fn next_bridge(&self, is_default: bool) -> Result<IfName> {
        if is_default {
            return DEFAULT_BRIDGE.parse();
        }
        let used: Vec<&str> = self.pools.values().map(|p| p.def.bridge.as_str()).collect();
        (1..10_000)
            .map(|i| format!("berth{i}"))
            .find(|b| !used.contains(&b.as_str()))
            .ok_or(NetError::NoFreeSubnet)?
            .parse()
    }

    fn def_path(&self, name: &NetName) -> PathBuf {
        self.dir.join("defs").join(format!("{name}.json"))
    }

    /// Forget a network. The caller checks it is unused and has removed its bridge and rules.
    pub fn remove(&mut self, name: &NetName) -> Result<NetworkDef> {
        let pool = self
            .pools
            .remove(name)
            .ok_or_else(|| NetError::NoSuchNetwork(name.to_string()))?;
        let lease_dir = self.dir.join("leases").join(name.as_str());
        if lease_dir.exists() {
            fs::remove_dir_all(&lease_dir).map_err(|e| NetError::io("removing", &lease_dir, e))?;
        }
        let path = self.def_path(name);
        fs::remove_file(&path).map_err(|e| NetError::io("removing", &path, e))?;
        Ok(pool.def)
    }

    /// The container's lease on `network`, taking one if it has none. An existing lease is
    /// kept (stable addresses across restarts) unless `ip4`/`ip6` ask for another address.
    /// Returns the lease and whether it was newly written.
    pub fn lease(
        &mut self,
        network: &NetName,
        container: &str,
        ip4: Option<Ipv4Addr>,
        ip6: Option<Ipv6Addr>,
    ) -> Result<(Lease, bool)> {
        let pool = self
            .pools
            .get_mut(network)
            .ok_or_else(|| NetError::NoSuchNetwork(network.to_string()))?;
        if let Some(old) = pool.leases.get(container) {
            let same4 = ip4.is_none_or(|a| a == old.ip4);
            let same6 = ip6.is_none_or(|a| Some(a) == old.ip6);
            if same4 && same6 {
                return Ok((old.clone(), false));
            }
        }
        if ip6.is_some() && pool.def.subnet6.is_none() {
            return Err(NetError::NoIpv6(network.to_string()));
        }
        if let Some(a) = ip4 {
            pool.check_fixed(IpAddr::V4(a), &pool.def.subnet4.clone(), container)?;
        }
        if let (Some(a), Some(s)) = (ip6, pool.def.subnet6) {
            pool.check_fixed(IpAddr::V6(a), &s, container)?;
        }
        // Free the old lease's addresses (if any) only after the new ones are known good.
        let old = pool.leases.get(container).cloned();
        if let Some(o) = &old {
            pool.used4.remove(&o.ip4);
            if let Some(a) = o.ip6 {
                pool.used6.remove(&a);
            }
        }
        let new4 = match ip4 {
            Some(a) => Ok(a),
            None => match &old {
                Some(o) => Ok(o.ip4),
                None => pool.free4(None),
            },
        };
        let new4 = match new4 {
            Ok(a) => a,
            Err(e) => {
                if let Some(o) = old {
                    pool.insert(o);
                }
                return Err(e);
            }
        };
        let off = pool.def.subnet4.offset(IpAddr::V4(new4)).unwrap_or(2);
        let new6 = match ip6 {
            Some(a) => Ok(Some(a)),
            None => match old.as_ref().and_then(|o| o.ip6) {
                Some(a) => Ok(Some(a)),
                None => pool.free6(off),
            },
        };
        let new6 = match new6 {
            Ok(a) => a,
            Err(e) => {
                if let Some(o) = old {
                    pool.insert(o);
                }
                return Err(e);
            }
        };
        let lease = Lease {
            container: container.to_string(),
            network: network.clone(),
            ip4: new4,
            ip6: new6,
        };
        let dir = self.dir.join("leases").join(network.as_str());
        fs::create_dir_all(&dir).map_err(|e| NetError::io("creating", &dir, e))?;
        let bytes = serde_json::to_vec(&lease).expect("serialisable");
        if let Err(e) = write_atomic(&dir.join(format!("{container}.json")), &bytes, false) {
            if let Some(o) = old {
                pool.insert(o);
            }
            return Err(e);
        }
        pool.insert(lease.clone());
        Ok((lease, true))
    }

    /// Free the container's leases on every network (container removed).
    pub fn release(&mut self, container: &str) -> Result<Vec<Lease>> {
        let mut freed = Vec::new();
        for (name, pool) in self.pools.iter_mut() {
            if let Some(l) = pool.leases.remove(container) {
                pool.used4.remove(&l.ip4);
                if let Some(a) = l.ip6 {
                    pool.used6.remove(&a);
                }
                let path = self
                    .dir
                    .join("leases")
                    .join(name.as_str())
                    .join(format!("{container}.json"));
                match fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(NetError::io("removing", &path, e)),
                }
                freed.push(l);
            }
        }
        Ok(freed)
    }

    /// Every container that holds a lease somewhere.
    pub fn lease_holders(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .pools
            .values()
            .flat_map(|p| p.leases.keys().cloned())
            .collect();
        v.sort();
        v.dedup();
        v
    }
}

fn json_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let rd = fs::read_dir(dir).map_err(|e| NetError::io("reading", dir, e))?;
    for ent in rd {
        let ent = ent.map_err(|e| NetError::io("reading", dir, e))?;
        let p = ent.path();
        let name = ent.file_name();
        let name = name.to_string_lossy();
        if name.ends_with(".json") && !name.starts_with('.') {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

pub(crate) fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let bytes = fs::read(path).map_err(|e| NetError::io("reading", path, e))?;
    serde_json::from_slice(&bytes).map_err(|source| NetError::Corrupt {
        path: path.to_path_buf(),
        source,
    })
}

/// Write `value` to `path` atomically: temporary file in the same directory, fsync, rename.
pub(crate) fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    write_atomic(
        path,
        &serde_json::to_vec_pretty(value).expect("serialisable"),
        true,
    )
}

pub(crate) fn write_atomic(path: &Path, bytes: &[u8], durable: bool) -> Result<()> {
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{file_name}.tmp"));
    let mut f = fs::File::create(&tmp).map_err(|e| NetError::io("creating", &tmp, e))?;
    f.write_all(bytes)
        .map_err(|e| NetError::io("writing", &tmp, e))?;
    if durable {
        f.sync_data()
            .map_err(|e| NetError::io("syncing", &tmp, e))?;
    }
    drop(f);
    fs::rename(&tmp, path).map_err(|e| NetError::io("renaming", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> NetName {
        s.parse().unwrap()
    }

    fn store() -> (tempfile::TempDir, Store) {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        (d, s)
    }

    #[test]
    fn default_network_avoids_host_routes() {
        let (_d, mut s) = store();
        let routes = [
            "10.89.0.0/16".parse().unwrap(),
            "0.0.0.0/0".parse().unwrap(),
        ];
        let req = CreateRequest {
            ipv6: true,
            ..Default::default()
        };
        let def = s
            .create(&n(DEFAULT_NETWORK), &req, &routes, 0x12_3456_789a)
            .unwrap();
        assert_eq!(def.subnet4.to_string(), "10.90.0.0/16");
        assert_eq!(def.bridge.as_str(), "berth0");
        assert_eq!(def.gateway4(), Ipv4Addr::new(10, 90, 0, 1));
        assert_eq!(def.subnet6.unwrap().to_string(), "fd12:3456:789a::/64");
        assert_eq!(
            def.gateway6().unwrap(),
            "fd12:3456:789a::1".parse::<Ipv6Addr>().unwrap()
        );
    }

    #[test]
    fn overlaps_and_duplicates_are_refused() {
        let (_d, mut s) = store();
        let req = CreateRequest {
            subnet4: Some("10.50.0.0/24".parse().unwrap()),
            ..Default::default()
        };
        s.create(&n("a"), &req, &[], 1).unwrap();
        assert!(matches!(
            s.create(&n("a"), &req, &[], 1),
            Err(NetError::NetworkExists(_))
        ));
        let over = CreateRequest {
            subnet4: Some("10.50.0.0/16".parse().unwrap()),
            ..Default::default()
        };
        assert!(matches!(
            s.create(&n("b"), &over, &[], 1),
            Err(NetError::SubnetOverlapsNetwork(..))
        ));
        let routes = ["10.60.0.0/20".parse().unwrap()];
        let r = CreateRequest {
            subnet4: Some("10.60.1.0/24".parse().unwrap()),
            ..Default::default()
        };
        assert!(matches!(
            s.create(&n("c"), &r, &routes, 1),
            Err(NetError::SubnetOverlapsRoute(..))
        ));
        let tiny = CreateRequest {
            subnet4: Some("10.70.0.0/31".parse().unwrap()),
            ..Default::default()
        };
        assert!(matches!(
            s.create(&n("d"), &tiny, &[], 1),
            Err(NetError::SubnetTooSmall(_))
        ));
        // Nothing was written for the refused ones.
        assert_eq!(s.defs().count(), 1);
        assert_eq!(json_files(&s.dir.join("defs")).unwrap().len(), 1);
        let auto = s
            .create(&n("e"), &CreateRequest::default(), &[], 1)
            .unwrap();
        assert_eq!(auto.subnet4.to_string(), "10.100.0.0/24");
        assert_eq!(auto.bridge.as_str(), "berth2");
    }

    #[test]
    fn leases_are_stable_fixed_and_freed() {
        let (d, mut s) = store();
        let req = CreateRequest {
            subnet4: Some("10.50.0.0/29".parse().unwrap()),
            ipv6: true,
            ..Default::default()
        };
        s.create(&n("a"), &req, &[], 7).unwrap();
        let (l1, new) = s.lease(&n("a"), "c1", None, None).unwrap();
        assert!(new);
        assert_eq!(l1.ip4, Ipv4Addr::new(10, 50, 0, 2));
        assert_eq!(l1.ip6.unwrap().segments()[7], 2);
        let (again, new) = s.lease(&n("a"), "c1", None, None).unwrap();
        assert!(!new);
        assert_eq!(again, l1);
        // Fixed address: taken, reserved, outside.
        assert!(matches!(
            s.lease(&n("a"), "c2", Some(Ipv4Addr::new(10, 50, 0, 2)), None),
            Err(NetError::AddressTaken(..))
        ));
        assert!(matches!(
            s.lease(&n("a"), "c2", Some(Ipv4Addr::new(10, 50, 0, 1)), None),
            Err(NetError::AddressReserved(_))
        ));
        assert!(matches!(
            s.lease(&n("a"), "c2", Some(Ipv4Addr::new(10, 50, 0, 7)), None),
            Err(NetError::AddressReserved(_))
        ));
        assert!(matches!(
            s.lease(&n("a"), "c2", Some(Ipv4Addr::new(10, 51, 0, 2)), None),
            Err(NetError::AddressNotInSubnet(..))
        ));
        let (l2, _) = s
            .lease(&n("a"), "c2", Some(Ipv4Addr::new(10, 50, 0, 6)), None)
            .unwrap();
        assert_eq!(l2.ip4, Ipv4Addr::new(10, 50, 0, 6));
        // /29: hosts .2 .. .6 → 5 leases; c1 and c2 hold two.
        for c in ["c3", "c4", "c5"] {
            s.lease(&n("a"), c, None, None).unwrap();
        }
        match s.lease(&n("a"), "c6", None, None) {
            Err(NetError::SubnetFull(c, name)) => {
                assert_eq!(
                    (c.to_string().as_str(), name.as_str()),
                    ("10.50.0.0/29", "a")
                )
            }
            other => panic!("{other:?}"),
        }
        // Stable across a re-open.
        drop(s);
        let mut s = Store::open(d.path()).unwrap();
        assert_eq!(
            s.lease(&n("a"), "c1", None, None).unwrap(),
            (l1.clone(), false)
        );
        assert_eq!(s.lease(&n("a"), "c2", None, None).unwrap().0, l2);
        // Released, its address is free again.
        assert_eq!(s.release("c1").unwrap(), vec![l1.clone()]);
        let (l6, _) = s.lease(&n("a"), "c6", None, None).unwrap();
        assert_eq!(l6.ip4, l1.ip4);
        assert!(matches!(
            s.lease(&n("nope"), "x", None, None),
            Err(NetError::NoSuchNetwork(_))
        ));
        let v4only = CreateRequest {
            subnet4: Some("10.52.0.0/24".parse().unwrap()),
            ..Default::default()
        };
        s.create(&n("b"), &v4only, &[], 7).unwrap();
        assert!(matches!(
            s.lease(&n("b"), "c1", None, Some("fd00::5".parse().unwrap())),
            Err(NetError::NoIpv6(_))
        ));
    }

    #[test]
    fn allocation_is_cheap_on_a_big_subnet() {
        let (_d, mut s) = store();
        s.create(
            &n(DEFAULT_NETWORK),
            &CreateRequest {
                ipv6: true,
                ..Default::default()
            },
            &[],
            3,
        )
        .unwrap();
        let t = std::time::Instant::now();
        for i in 0..500 {
            s.lease(&n(DEFAULT_NETWORK), &format!("c{i}"), None, None)
                .unwrap();
        }
        // 500 leases, each one small file: O(1) each, so well under a second.
        assert!(t.elapsed().as_secs() < 2, "{:?}", t.elapsed());
        let ips: std::collections::HashSet<_> =
            s.leases(&n(DEFAULT_NETWORK)).map(|l| l.ip4).collect();
        assert_eq!(ips.len(), 500);
    }

    #[test]
    fn remove_forgets_definition_and_leases() {
        let (d, mut s) = store();
        s.create(&n("a"), &CreateRequest::default(), &[], 1)
            .unwrap();
        s.lease(&n("a"), "c1", None, None).unwrap();
        std::fs::write(d.path().join("leases/a/broken.json"), b"").unwrap();
        let s2 = Store::open(d.path()).unwrap();
        assert_eq!(s2.damaged, vec![d.path().join("leases/a/broken.json")]);
        assert_eq!(s2.leases(&n("a")).count(), 1);
        s.remove(&n("a")).unwrap();
        assert!(!d.path().join("leases/a").exists());
        let s = Store::open(d.path()).unwrap();
        assert_eq!(s.defs().count(), 0);
    }

    #[test]
    fn a_damaged_definition_costs_only_its_network_and_is_never_replaced() {
        let (d, mut s) = store();
        s.create(&n("a"), &CreateRequest::default(), &[], 1)
            .unwrap();
        s.create(&n("b"), &CreateRequest::default(), &[], 2)
            .unwrap();
        let a = d.path().join("defs/a.json");
        std::fs::write(&a, b"{ truncated").unwrap();
        let mut s = Store::open(d.path()).unwrap();
        assert_eq!(s.damaged, vec![a.clone()]);
        assert!(s.get(&n("b")).is_ok());
        assert!(matches!(s.get(&n("a")), Err(NetError::DamagedNetwork(..))));
        let e = s
            .create(&n("a"), &CreateRequest::default(), &[], 3)
            .unwrap_err();
        assert!(matches!(e, NetError::DamagedNetwork(..)), "{e}");
        assert_eq!(std::fs::read(&a).unwrap(), b"{ truncated");
    }
}
