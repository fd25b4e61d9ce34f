//! Typed network input, parsed once: subnets, modes, published ports, rates, names.
//!
//! Everything a user types for `--network`, `-p`, `--ip`, `--subnet` or `--network-rate`
//! becomes one of these values at the edge; nothing downstream parses a string again.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::error::{NetError, Result};

/// The most published ports one container may have (after expanding ranges): each is one nft
/// map element and one reserved host socket.
pub const MAX_PORTS: usize = 1024;

/// An IP network: a network address and a prefix length, host bits zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// A network from an address and prefix; host bits of `addr` are cleared.
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Cidr> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(NetError::BadCidr(format!("{addr}/{prefix}")));
        }
        Ok(Cidr {
            addr: mask(addr, prefix),
            prefix,
        })
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    pub fn is_ipv4(&self) -> bool {
        self.addr.is_ipv4()
    }

    fn bits(&self) -> u32 {
        if self.is_ipv4() { 32 } else { 128 }
    }

    /// Number of addresses in the network (saturating at u128::MAX for a /0 in IPv6).
    pub fn size(&self) -> u128 {
        let host_bits = self.bits() - self.prefix as u32;
        if host_bits >= 128 {
            u128::MAX
        } else {
            1u128 << host_bits
        }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.is_ipv4() && mask(ip, self.prefix) == self.addr
    }

    pub fn overlaps(&self, other: &Cidr) -> bool {
        if self.is_ipv4() != other.is_ipv4() {
            return false;
        }
        let p = self.prefix.min(other.prefix);
        mask(self.addr, p) == mask(other.addr, p)
    }

    /// The address at offset `n` from the network address, if it lies inside.
    pub fn nth(&self, n: u128) -> Option<IpAddr> {
        if n >= self.size() {
            return None;
        }
        Some(match self.addr {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) + n as u32)),
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) + n)),
        })
    }

    /// The offset of `ip` from the network address (`ip` must be inside).
    pub fn offset(&self, ip: IpAddr) -> Option<u128> {
        if !self.contains(ip) {
            return None;
        }
        Some(to_u128(ip) - to_u128(self.addr))
    }
}

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u32::from(a) as u128,
        IpAddr::V6(a) => u128::from(a),
    }
}

fn mask(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(a) => {
            let m = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - prefix as u32)
            };
            IpAddr::V4(Ipv4Addr::from(u32::from(a) & m))
        }
        IpAddr::V6(a) => {
            let m = if prefix == 0 {
                0
            } else {
                u128::MAX << (128 - prefix as u32)
            };
            IpAddr::V6(Ipv6Addr::from(u128::from(a) & m))
        }
    }
}

impl FromStr for Cidr {
    type Err = NetError;

    /// `ADDRESS/PREFIX`. Host bits must be zero: `10.89.0.5/24` is refused with the network it
    /// probably meant, since silently widening a user's subnet hides typos.
    fn from_str(s: &str) -> Result<Cidr> {
        let bad = || NetError::BadCidr(s.to_string());
        let (a, p) = s.split_once('/').ok_or_else(bad)?;
        let addr: IpAddr = a.parse().map_err(|_| bad())?;
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) || p.len() > 3 {
            return Err(bad());
        }
        let prefix: u8 = p.parse().map_err(|_| bad())?;
        let c = Cidr::new(addr, prefix).map_err(|_| bad())?;
        if c.addr != addr {
            return Err(NetError::CidrHostBits {
                given: s.to_string(),
                network: c,
            });
        }
        Ok(c)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl TryFrom<String> for Cidr {
    type Error = NetError;
    fn try_from(s: String) -> Result<Cidr> {
        s.parse()
    }
}

impl From<Cidr> for String {
    fn from(c: Cidr) -> String {
        c.to_string()
    }
}

/// A network name (`berthctl network create NAME`): like a container name, at most 32 bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NetName(String);

impl NetName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for NetName {
    type Err = NetError;
    fn from_str(s: &str) -> Result<NetName> {
        let ok = !s.is_empty()
            && s.len() <= 32
            && s.as_bytes()[0].is_ascii_alphanumeric()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if ok {
            Ok(NetName(s.to_string()))
        } else {
            Err(NetError::BadNetworkName(s.to_string()))
        }
    }
}

impl TryFrom<String> for NetName {
    type Error = NetError;
    fn try_from(s: String) -> Result<NetName> {
        s.parse()
    }
}

impl From<NetName> for String {
    fn from(n: NetName) -> String {
        n.0
    }
}

impl fmt::Display for NetName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A kernel interface name: 1..=15 bytes (IFNAMSIZ - 1), none of `/`, `:`, whitespace, and not
/// `.` or `..` (the kernel's `dev_valid_name`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct IfName(String);

impl IfName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for IfName {
    type Err = NetError;
    fn from_str(s: &str) -> Result<IfName> {
        let ok = !s.is_empty()
            && s.len() <= 15
            && s != "."
            && s != ".."
            && s.bytes()
                .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':');
        if ok {
            Ok(IfName(s.to_string()))
        } else {
            Err(NetError::BadInterfaceName(s.to_string()))
        }
    }
}

impl TryFrom<String> for IfName {
    type Error = NetError;
    fn try_from(s: String) -> Result<IfName> {
        s.parse()
    }
}

impl From<IfName> for String {
    fn from(n: IfName) -> String {
        n.0
    }
}

impl fmt::Display for IfName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `--network`: podman's names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NetworkMode {
    /// A veth on a berth bridge network (`bridge` is the default network, `bridge:NAME` or a
    /// bare `NAME` a user-defined one).
    Bridge(NetName),
    /// Loopback only.
    None,
    /// The host's network namespace (no netns of its own).
    Host,
    /// Join the network namespace of another (running) container.
    Container(String),
    /// A veth with no bridge; the host side is `ve-NAME` and gets no address from berth.
    Veth,
    /// A macvlan (bridge mode) on the host interface.
    Macvlan(IfName),
}

/// The name of the network `bridge` means.
pub const DEFAULT_NETWORK: &str = "berth";

impl NetworkMode {
    /// Whether the container gets a network namespace of its own (the helper unshares it).
    pub fn own_netns(&self) -> bool {
        !matches!(self, NetworkMode::Host | NetworkMode::Container(_))
    }
}

impl Default for NetworkMode {
    fn default() -> Self {
        NetworkMode::Bridge(NetName(DEFAULT_NETWORK.to_string()))
    }
}

impl FromStr for NetworkMode {
    type Err = NetError;
    fn from_str(s: &str) -> Result<NetworkMode> {
        let bad = || NetError::BadMode(s.to_string());
        Ok(match s {
            "" => return Err(bad()),
            "bridge" | "default" => NetworkMode::default(),
            "none" => NetworkMode::None,
            "host" => NetworkMode::Host,
            "veth" => NetworkMode::Veth,
            _ => match s.split_once(':') {
                Some(("bridge", n)) => NetworkMode::Bridge(n.parse()?),
                Some(("container", n)) => {
                    crate::name::validate(n)
                        .map_err(|_| NetError::BadContainerName(n.to_string()))?;
                    NetworkMode::Container(n.to_string())
                }
                Some(("macvlan", i)) => NetworkMode::Macvlan(i.parse()?),
                Some(_) => return Err(bad()),
                None => NetworkMode::Bridge(s.parse().map_err(|_| bad())?),
            },
        })
    }
}

impl fmt::Display for NetworkMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NetworkMode::Bridge(n) if n.as_str() == DEFAULT_NETWORK => f.write_str("bridge"),
            NetworkMode::Bridge(n) => write!(f, "bridge:{n}"),
            NetworkMode::None => f.write_str("none"),
            NetworkMode::Host => f.write_str("host"),
            NetworkMode::Container(c) => write!(f, "container:{c}"),
            NetworkMode::Veth => f.write_str("veth"),
            NetworkMode::Macvlan(i) => write!(f, "macvlan:{i}"),
        }
    }
}

/// A transport protocol of a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An inclusive range of ports, `first..=last`, both in 1..=65535.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub fn len(&self) -> usize {
        (self.last - self.first) as usize + 1
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    fn parse(s: &str, spec: &str) -> Result<PortRange> {
        let (a, b) = match s.split_once('-') {
            Some((a, b)) => (a, b),
            None => (s, s),
        };
        let first = parse_port(a, spec)?;
        let last = parse_port(b, spec)?;
        if last < first {
            return Err(NetError::BadPort {
                spec: spec.to_string(),
                why: format!("range {s} ends before it starts"),
            });
        }
        Ok(PortRange { first, last })
    }
}

fn parse_port(s: &str, spec: &str) -> Result<u16> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(NetError::BadPort {
            spec: spec.to_string(),
            why: format!("{s:?} is not a port number"),
        });
    }
    match s.parse::<u32>() {
        Ok(n @ 1..=65535) => Ok(n as u16),
        _ => Err(NetError::PortOutOfRange(s.to_string())),
    }
}

/// One `-p/--publish` argument, podman's forms:
/// `CPORT`, `HPORT:CPORT`, `HOSTIP:HPORT:CPORT`, `HOSTIP::CPORT`, `[V6]:HPORT:CPORT`, each port
/// possibly a range `A-B` (host and container ranges of equal length), with `/tcp` (default) or
/// `/udp`. A missing host port means "any free port".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortSpec {
    pub host_ip: Option<IpAddr>,
    pub host: Option<PortRange>,
    pub container: PortRange,
    pub proto: Proto,
}

impl FromStr for PortSpec {
    type Err = NetError;
    fn from_str(spec: &str) -> Result<PortSpec> {
        let bad = |why: &str| NetError::BadPort {
            spec: spec.to_string(),
            why: why.to_string(),
        };
        let (rest, proto) = match spec.rsplit_once('/') {
            Some((r, "tcp")) => (r, Proto::Tcp),
            Some((r, "udp")) => (r, Proto::Udp),
            Some((_, p)) => return Err(bad(&format!("unsupported protocol {p:?} (tcp or udp)"))),
            None => (spec, Proto::Tcp),
        };
        // An IPv6 host address is bracketed: [::1]:8080:80.
        let (host_ip, rest): (Option<IpAddr>, &str) = if let Some(r) = rest.strip_prefix('[') {
            let (ip, r) = r.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
            let ip: Ipv6Addr = ip
                .parse()
                .map_err(|_| bad(&format!("{ip:?} is not an IPv6 address")))?;
            let r = r
                .strip_prefix(':')
                .ok_or_else(|| bad("expected ':' after ']'"))?;
            (Some(IpAddr::V6(ip)), r)
        } else {
            let parts: Vec<&str> = rest.split(':').collect();
            match parts.len() {
                1 | 2 => (None, rest),
                3 => {
                    let ip: Ipv4Addr = parts[0]
                        .parse()
                        .map_err(|_| bad(&format!("{:?} is not an IPv4 address", parts[0])))?;
                    (Some(IpAddr::V4(ip)), &rest[parts[0].len() + 1..])
                }
                _ => return Err(bad("too many ':' (bracket an IPv6 address: [::1]:8080:80)")),
            }
        };
        let (host, container) = match rest.split_once(':') {
            Some(("", c)) => (None, PortRange::parse(c, spec)?),
            Some((h, c)) => (Some(PortRange::parse(h, spec)?), PortRange::parse(c, spec)?),
            None if host_ip.is_some() => return Err(bad("expected HOSTIP:HOSTPORT:CONTAINERPORT")),
            None => (None, PortRange::parse(rest, spec)?),
        };
        if let Some(h) = host
            && h.len() != container.len()
        {
            return Err(bad("host and container port ranges differ in length"));
        }
        if let Some(ip) = host_ip
            && ip.is_multicast()
        {
            return Err(bad("a multicast host address cannot be published on"));
        }
        if container.len() > MAX_PORTS {
            return Err(NetError::TooManyPorts(container.len()));
        }
        Ok(PortSpec {
            host_ip,
            host,
            container,
            proto,
        })
    }
}

impl fmt::Display for PortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let range = |r: &PortRange| {
            if r.first == r.last {
                r.first.to_string()
            } else {
                format!("{}-{}", r.first, r.last)
            }
        };
        match self.host_ip {
            Some(IpAddr::V6(ip)) => write!(f, "[{ip}]:")?,
            Some(IpAddr::V4(ip)) => write!(f, "{ip}:")?,
            None => {}
        }
        if let Some(h) = &self.host {
            write!(f, "{}:", range(h))?;
        } else if self.host_ip.is_some() {
            f.write_str(":")?;
        }
        write!(f, "{}/{}", range(&self.container), self.proto)
    }
}

/// `--network-rate`: a rate in tc's units, stored in bytes per second (what the kernel's tbf
/// and police take). Units as in tc(8): `bit` (or no unit), `kbit`, `mbit`, `gbit`, `tbit`
/// (powers of 1000 bits), `kibit`..`tibit` (powers of 1024 bits), and `bps`, `kbps`, `mbps`,
/// `gbps`, `tbps`, `kibps`..`tibps` for bytes per second. `1mbit` is 125000 bytes/s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rate {
    pub bytes_per_sec: u64,
}

impl FromStr for Rate {
    type Err = NetError;
    fn from_str(s: &str) -> Result<Rate> {
        let bad = || NetError::BadRate(s.to_string());
        let lower = s.to_ascii_lowercase();
        let split = lower
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(lower.len());
        let (num, unit) = lower.split_at(split);
        let n: f64 = num.parse().map_err(|_| bad())?;
        // (multiplier, is_bytes)
        let (mult, bytes): (f64, bool) = match unit {
            "" | "bit" => (1.0, false),
            "kbit" => (1e3, false),
            "mbit" => (1e6, false),
            "gbit" => (1e9, false),
            "tbit" => (1e12, false),
            "kibit" => (1024.0, false),
            "mibit" => (1024.0 * 1024.0, false),
            "gibit" => (1024.0 * 1024.0 * 1024.0, false),
            "tibit" => (1024f64.powi(4), false),
            "bps" => (1.0, true),
            "kbps" => (1e3, true),
            "mbps" => (1e6, true),
            "gbps" => (1e9, true),
            "tbps" => (1e12, true),
            "kibps" => (1024.0, true),
            "mibps" => (1024.0 * 1024.0, true),
            "gibps" => (1024.0 * 1024.0 * 1024.0, true),
            "tibps" => (1024f64.powi(4), true),
            _ => return Err(bad()),
        };
        let bps = if bytes { n * mult } else { n * mult / 8.0 };
        // Below 1 kbit/s the token bucket cannot pass one full-size frame per second; above
        // 2^32-1 bytes/s the kernel needs the 64-bit attributes, which we do not send.
        if !bps.is_finite() || bps < 125.0 || bps > u32::MAX as f64 {
            return Err(bad());
        }
        Ok(Rate {
            bytes_per_sec: bps as u64,
        })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bits = self.bytes_per_sec * 8;
        if bits.is_multiple_of(1_000_000) {
            write!(f, "{}mbit", bits / 1_000_000)
        } else if bits.is_multiple_of(1000) {
            write!(f, "{}kbit", bits / 1000)
        } else {
            write!(f, "{bits}bit")
        }
    }
}

/// Parse `--ip`.
pub fn parse_ip4(s: &str) -> Result<Ipv4Addr> {
    s.parse().map_err(|_| NetError::BadAddress(s.to_string()))
}

/// Parse `--ip6`.
pub fn parse_ip6(s: &str) -> Result<Ipv6Addr> {
    s.parse().map_err(|_| NetError::BadAddress(s.to_string()))
}

/// What a container asks of the network, validated. Built by the definition's `validate()`
/// from `--network`, `-p`, `-P`, `--ip`, `--ip6`, `--network-rate`, `--network-interface`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetSpec {
    pub mode: NetworkMode,
    /// `--ip`: a fixed IPv4 address on the bridge network.
    pub ip4: Option<Ipv4Addr>,
    /// `--ip6`: a fixed IPv6 address on the bridge network.
    pub ip6: Option<Ipv6Addr>,
    /// `-p`.
    pub publish: Vec<PortSpec>,
    /// `-P`: publish these (the image's EXPOSE ports) on free host ports.
    pub publish_all: Vec<(u16, Proto)>,
    /// `--network-rate`, both directions.
    pub rate: Option<Rate>,
    /// `--network-interface`: host NICs moved into the container while it runs.
    pub interfaces: Vec<IfName>,
    /// `--network host` together with a user namespace, asked for explicitly.
    pub allow_host_with_userns: bool,
}

impl NetSpec {
    /// The checks that need nothing but the spec itself.
    pub fn check(&self, user_namespace: bool) -> Result<()> {
        if self.mode == NetworkMode::Host && user_namespace && !self.allow_host_with_userns {
            return Err(NetError::HostWithUserns);
        }
        let bridged = matches!(self.mode, NetworkMode::Bridge(_));
        if !bridged && (self.ip4.is_some() || self.ip6.is_some()) {
            return Err(NetError::Unsupported(format!(
                "--ip/--ip6 need a bridge network, not --network {}",
                self.mode
            )));
        }
        if !bridged && (!self.publish.is_empty() || !self.publish_all.is_empty()) {
            return Err(NetError::Unsupported(format!(
                "publishing ports needs a bridge network, not --network {}",
                self.mode
            )));
        }
        if !self.mode.own_netns() && (!self.interfaces.is_empty() || self.rate.is_some()) {
            return Err(NetError::Unsupported(format!(
                "--network-interface and --network-rate need a network namespace of the container's own, not --network {}",
                self.mode
            )));
        }
        if self.rate.is_some() && !matches!(self.mode, NetworkMode::Bridge(_) | NetworkMode::Veth) {
            return Err(NetError::Unsupported(
                "--network-rate shapes the host side of a veth: use a bridge or veth network"
                    .into(),
            ));
        }
        let n: usize = self
            .publish
            .iter()
            .map(|p| p.container.len())
            .sum::<usize>()
            + self.publish_all.len();
        if n > MAX_PORTS {
            return Err(NetError::TooManyPorts(n));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_parse_and_math() {
        let c: Cidr = "10.89.0.0/24".parse().unwrap();
        assert_eq!(c.size(), 256);
        assert!(c.contains("10.89.0.200".parse().unwrap()));
        assert!(!c.contains("10.89.1.1".parse().unwrap()));
        assert!(!c.contains("::1".parse().unwrap()));
        assert_eq!(c.nth(1), Some("10.89.0.1".parse().unwrap()));
        assert_eq!(c.nth(256), None);
        assert_eq!(c.offset("10.89.0.7".parse().unwrap()), Some(7));
        let big: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(big.overlaps(&c) && c.overlaps(&big));
        assert!(!c.overlaps(&"10.89.1.0/24".parse().unwrap()));
        let v6: Cidr = "fd12:3456:789a:1::/64".parse().unwrap();
        assert_eq!(v6.nth(2), Some("fd12:3456:789a:1::2".parse().unwrap()));
        assert_eq!(v6.to_string(), "fd12:3456:789a:1::/64");
        assert_eq!("::/0".parse::<Cidr>().unwrap().size(), u128::MAX);
    }

    #[test]
    fn cidr_rejects_bad_input() {
        for s in [
            "",
            "10.0.0.0",
            "10.0.0.0/",
            "10.0.0.0/33",
            "10.0.0/8",
            "x/8",
            "::/129",
            "10.0.0.0/+8",
        ] {
            assert!(
                matches!(s.parse::<Cidr>(), Err(NetError::BadCidr(_))),
                "{s}"
            );
        }
        match "10.89.0.5/24".parse::<Cidr>() {
            Err(NetError::CidrHostBits { network, .. }) => {
                assert_eq!(network.to_string(), "10.89.0.0/24")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn modes() {
        assert_eq!(
            "bridge".parse::<NetworkMode>().unwrap(),
            NetworkMode::default()
        );
        assert_eq!(
            "bridge:lan".parse::<NetworkMode>().unwrap(),
            NetworkMode::Bridge("lan".parse().unwrap())
        );
        assert_eq!(
            "lan".parse::<NetworkMode>().unwrap(),
            NetworkMode::Bridge("lan".parse().unwrap())
        );
        assert_eq!("none".parse::<NetworkMode>().unwrap(), NetworkMode::None);
        assert_eq!("host".parse::<NetworkMode>().unwrap(), NetworkMode::Host);
        assert_eq!("veth".parse::<NetworkMode>().unwrap(), NetworkMode::Veth);
        assert_eq!(
            "container:web".parse::<NetworkMode>().unwrap(),
            NetworkMode::Container("web".into())
        );
        assert_eq!(
            "macvlan:eth0".parse::<NetworkMode>().unwrap(),
            NetworkMode::Macvlan("eth0".parse().unwrap())
        );
        for bad in [
            "",
            "slirp4netns:x",
            "container:",
            "container:../x",
            "macvlan:a/b",
            "bridge:",
        ] {
            assert!(bad.parse::<NetworkMode>().is_err(), "{bad}");
        }
        for m in [
            "bridge",
            "bridge:lan",
            "none",
            "host",
            "veth",
            "container:c",
            "macvlan:eth0",
        ] {
            assert_eq!(m.parse::<NetworkMode>().unwrap().to_string(), m);
        }
    }

    fn p(s: &str) -> PortSpec {
        s.parse().unwrap()
    }

    #[test]
    fn port_forms() {
        let x = p("8080:80");
        assert_eq!(
            (x.host_ip, x.host.unwrap().first, x.container.first),
            (None, 8080, 80)
        );
        assert_eq!(x.proto, Proto::Tcp);
        let x = p("80");
        assert_eq!((x.host, x.container.first), (None, 80));
        let x = p("127.0.0.1:8080:80/udp");
        assert_eq!(x.host_ip, Some("127.0.0.1".parse().unwrap()));
        assert_eq!(x.proto, Proto::Udp);
        let x = p("127.0.0.1::80");
        assert_eq!((x.host, x.container.first), (None, 80));
        let x = p("[::1]:8080:80");
        assert_eq!(x.host_ip, Some("::1".parse().unwrap()));
        let x = p("8000-8010:9000-9010/udp");
        assert_eq!(
            x.host.unwrap(),
            PortRange {
                first: 8000,
                last: 8010
            }
        );
        assert_eq!(x.container.len(), 11);
        for s in [
            "8080:80",
            "80/udp",
            "127.0.0.1:8080:80/udp",
            "[::1]:8080:80",
            "1-3:4-6",
            "1.2.3.4::80",
        ] {
            let shown = p(s).to_string();
            assert_eq!(p(&shown), p(s), "{s} -> {shown}");
        }
    }

    #[test]
    fn port_errors() {
        assert!(matches!(
            "70000:80".parse::<PortSpec>(),
            Err(NetError::PortOutOfRange(_))
        ));
        assert!(matches!(
            "80:65536".parse::<PortSpec>(),
            Err(NetError::PortOutOfRange(_))
        ));
        assert!(matches!(
            "0:80".parse::<PortSpec>(),
            Err(NetError::PortOutOfRange(_))
        ));
        for bad in [
            "",
            "a:80",
            "80/sctp",
            "1-3:4-5",
            "5-3:5-3",
            "::1:80:80",
            "[::1:80:80",
            "1.2.3:80:80",
            "1.2.3.4:80",
            "224.0.0.1:80:80",
            "80:",
            ":80:80:80",
        ] {
            assert!(bad.parse::<PortSpec>().is_err(), "{bad:?} accepted");
        }
        assert!(matches!(
            "1-2000:1-2000".parse::<PortSpec>(),
            Err(NetError::TooManyPorts(2000))
        ));
    }

    #[test]
    fn rates() {
        assert_eq!("1mbit".parse::<Rate>().unwrap().bytes_per_sec, 125_000);
        assert_eq!("1Mbit".parse::<Rate>().unwrap().bytes_per_sec, 125_000);
        assert_eq!("8000".parse::<Rate>().unwrap().bytes_per_sec, 1000);
        assert_eq!("2mbps".parse::<Rate>().unwrap().bytes_per_sec, 2_000_000);
        assert_eq!("1kibps".parse::<Rate>().unwrap().bytes_per_sec, 1024);
        assert_eq!("1.5mbit".parse::<Rate>().unwrap().bytes_per_sec, 187_500);
        for bad in ["", "mbit", "1xbit", "0mbit", "-1mbit", "100bit", "1000gbit"] {
            assert!(bad.parse::<Rate>().is_err(), "{bad}");
        }
        assert_eq!("1mbit".parse::<Rate>().unwrap().to_string(), "1mbit");
    }

    #[test]
    fn names() {
        assert!("berth0".parse::<IfName>().is_ok());
        for bad in ["", "a/b", "a:b", "a b", "0123456789abcdef", ".", ".."] {
            assert!(bad.parse::<IfName>().is_err(), "{bad}");
        }
        assert!("lan-1".parse::<NetName>().is_ok());
        assert!("-x".parse::<NetName>().is_err());
        assert!("a".repeat(33).parse::<NetName>().is_err());
    }

    #[test]
    fn spec_checks() {
        let host = NetSpec {
            mode: NetworkMode::Host,
            ..NetSpec::default()
        };
        assert!(matches!(host.check(true), Err(NetError::HostWithUserns)));
        assert!(host.check(false).is_ok());
        let explicit = NetSpec {
            allow_host_with_userns: true,
            ..host.clone()
        };
        assert!(explicit.check(true).is_ok());
        let ports_on_none = NetSpec {
            mode: NetworkMode::None,
            publish: vec![p("80")],
            ..NetSpec::default()
        };
        assert!(matches!(
            ports_on_none.check(false),
            Err(NetError::Unsupported(_))
        ));
        let rate_on_host = NetSpec {
            mode: NetworkMode::Host,
            rate: Some("1mbit".parse().unwrap()),
            ..NetSpec::default()
        };
        assert!(rate_on_host.check(false).is_err());
    }
}
