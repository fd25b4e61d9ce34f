//! Resource settings: the one table of keys (`memory`, `cpus`, …), the stored form users write
//! (`run --memory 512M`, `[resources]` in a definition, `berthctl set NAME memory=512M`), and
//! the typed limits [`check`] turns them into. Parsing happens here and nowhere else; systemd's
//! property names and value types are applied by `systemd::properties`.
//!
//! Every container also gets `DevicePolicy=closed` with an allow list of the devices its /dev
//! holds (`DEFAULT_DEVICES`); `devices` grants more.

use std::collections::BTreeMap;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::HostFacts;

/// What a key's values are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A size: `512M`, `2G`, `infinity`.
    Bytes,
    /// A number of CPUs: `1.5`.
    Cpus,
    /// A weight, 1–10000.
    Weight,
    /// CPU numbers: `0-2,4`.
    CpuSet,
    /// A number of tasks or `infinity`.
    Count,
    /// A block device and a rate: `/dev/vda:10M`.
    DeviceRate,
    /// A device node and permissions: `/dev/fuse:rw`.
    Device,
    /// A network rate in tc units: `1mbit`, `2mbps` (stored as bytes per second).
    Rate,
}

/// One user-facing resource key.
#[derive(Debug)]
pub struct Key {
    /// As `berthctl set` and `[resources]` spell it.
    pub name: &'static str,
    /// The `run`/`create` flag (without `--`).
    pub flag: &'static str,
    /// The scope property it becomes ("" for settings that are not scope properties).
    pub property: &'static str,
    pub kind: Kind,
    /// Repeatable: a list of values (per device).
    pub list: bool,
    /// systemd only applies it on the unified hierarchy: with v1 controllers it accepts the
    /// property and changes nothing (systemd.resource-control(5)), so berth refuses it there.
    pub unified_only: bool,
    /// What a value looks like, for messages.
    pub expected: &'static str,
    /// One line of help for the flag.
    pub help: &'static str,
}

const SIZE: &str = "a size like 512M, 2G or infinity";

/// Every resource key, in the order settings are applied and shown.
pub const KEYS: &[Key] = &[
    Key {
        name: "memory",
        flag: "memory",
        property: "MemoryMax",
        kind: Kind::Bytes,
        list: false,
        unified_only: false,
        expected: SIZE,
        help: "Memory limit (MemoryMax), like 512M or 2G",
    },
    Key {
        name: "memory-high",
        flag: "memory-high",
        property: "MemoryHigh",
        kind: Kind::Bytes,
        list: false,
        unified_only: true,
        expected: SIZE,
        help: "Memory use above which the container is throttled (MemoryHigh)",
    },
    Key {
        name: "memory-swap",
        flag: "memory-swap",
        property: "MemorySwapMax",
        kind: Kind::Bytes,
        list: false,
        unified_only: true,
        expected: SIZE,
        help: "Swap limit (MemorySwapMax)",
    },
    Key {
        name: "cpus",
        flag: "cpus",
        property: "CPUQuotaPerSecUSec",
        kind: Kind::Cpus,
        list: false,
        unified_only: false,
        expected: "a number of CPUs like 1.5",
        help: "CPU time as a number of CPUs, like 1.5 (CPUQuota=150%)",
    },
    Key {
        name: "cpu-weight",
        flag: "cpu-weight",
        property: "CPUWeight",
        kind: Kind::Weight,
        list: false,
        unified_only: false,
        expected: "a weight from 1 to 10000",
        help: "Relative CPU weight, 1 to 10000 (CPUWeight)",
    },
    Key {
        name: "cpuset",
        flag: "cpuset",
        property: "AllowedCPUs",
        kind: Kind::CpuSet,
        list: false,
        unified_only: true,
        expected: "CPU numbers like 0-2,4",
        help: "CPUs it may run on, like 0-1,3 (AllowedCPUs; unified cgroup hierarchy only)",
    },
    Key {
        name: "pids",
        flag: "pids-limit",
        property: "TasksMax",
        kind: Kind::Count,
        list: false,
        unified_only: false,
        expected: "a number of tasks or infinity",
        help: "Maximum number of tasks (TasksMax)",
    },
    Key {
        name: "io-weight",
        flag: "io-weight",
        property: "IOWeight",
        kind: Kind::Weight,
        list: false,
        unified_only: false,
        expected: "a weight from 1 to 10000",
        help: "Relative block IO weight, 1 to 10000 (IOWeight)",
    },
    Key {
        name: "device-read-bps",
        flag: "device-read-bps",
        property: "IOReadBandwidthMax",
        kind: Kind::DeviceRate,
        list: true,
        unified_only: false,
        expected: "DEVICE:RATE like /dev/vda:10M",
        help: "Read bandwidth limit of a block device, like /dev/vda:10M (repeatable)",
    },
    Key {
        name: "device-write-bps",
        flag: "device-write-bps",
        property: "IOWriteBandwidthMax",
        kind: Kind::DeviceRate,
        list: true,
        unified_only: false,
        expected: "DEVICE:RATE like /dev/vda:10M",
        help: "Write bandwidth limit of a block device (repeatable)",
    },
    Key {
        name: "devices",
        flag: "device",
        property: "DeviceAllow",
        kind: Kind::Device,
        list: true,
        unified_only: false,
        expected: "a device PATH[:rwm]",
        help: "A host device to make and allow in the container, PATH[:rwm] (repeatable)",
    },
    Key {
        name: "network-rate",
        flag: "network-rate",
        property: "",
        kind: Kind::Rate,
        list: false,
        unified_only: false,
        expected: "a rate in tc units like 1mbit, 500kbit or 2mbps",
        help: "Bandwidth of the container's veth, both directions, in tc units (1mbit, 2mbps; bridge and veth networks)",
    },
];

/// The key named `name`.
pub fn key(name: &str) -> Option<&'static Key> {
    KEYS.iter().find(|k| k.name == name)
}

/// Devices every container may use (they are in its minimal /dev), as DeviceAllow entries.
/// `char-pts` is the container's own devpts instance (major 136+), /dev/pts/ptmx is 5:2.
pub const DEFAULT_DEVICES: &[(&str, &str)] = &[
    ("/dev/null", "rwm"),
    ("/dev/zero", "rwm"),
    ("/dev/full", "rwm"),
    ("/dev/random", "rwm"),
    ("/dev/urandom", "rwm"),
    ("/dev/tty", "rwm"),
    ("/dev/ptmx", "rwm"),
    ("char-pts", "rw"),
];

#[derive(Debug, Error, PartialEq, Eq)]
pub enum LimitError {
    #[error("unknown resource {0:?} (known: {known})", known = KEYS.iter().map(|k| k.name).collect::<Vec<_>>().join(", "))]
    Unknown(String),
    #[error("bad value {value:?} for {key}: expected {expected}{why}")]
    BadValue {
        key: String,
        value: String,
        expected: &'static str,
        why: String,
    },
    #[error(
        "{0} needs the unified cgroup hierarchy (cgroup v2); with this host's v1 controllers \
         systemd would accept it and apply nothing"
    )]
    NeedsUnified(String),
}

/// Resource settings as users wrote them (what a definition stores): key → values, keys from
/// [`KEYS`]. Serialized as a table whose scalar keys take numbers or strings
/// (`pids = 200`, `cpus = 1.5`, `memory = "512M"`) and list keys arrays of strings; an unknown
/// key is refused when read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources(BTreeMap<&'static str, Vec<String>>);

impl Resources {
    /// The values of `key` (empty when unset).
    pub fn values(&self, key: &str) -> &[String] {
        self.0.get(key).map_or(&[], Vec::as_slice)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The settings as `key=value` pairs in [`KEYS`] order, lists expanded.
    pub fn pairs(&self) -> Vec<(String, String)> {
        KEYS.iter()
            .flat_map(|k| {
                self.values(k.name)
                    .iter()
                    .map(|v| (k.name.to_string(), v.clone()))
            })
            .collect()
    }

    /// Apply `key=value`. For list keys a value replaces the entry for the same device (for
    /// `devices` it adds one); an empty value resets the key.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), LimitError> {
        let k = self::key(key).ok_or_else(|| LimitError::Unknown(key.into()))?;
        if value.is_empty() {
            self.0.remove(k.name);
            return Ok(());
        }
        let list = self.0.entry(k.name).or_default();
        if k.list {
            let dev = |v: &str| v.rsplit_once(':').map_or(v, |(d, _)| d).to_string();
            let d = dev(value);
            list.retain(|v| dev(v) != d);
            list.push(value.to_string());
        } else {
            *list = vec![value.to_string()];
        }
        Ok(())
    }

    /// Only the keys of `other` that are set, on top of these settings.
    pub fn merged(&self, other: &Resources) -> Resources {
        let mut r = self.clone();
        for (k, v) in &other.0 {
            r.0.insert(k, v.clone());
        }
        r
    }

    /// The settings as a map (what the bus carries); list entries are joined by spaces.
    pub fn display_map(&self) -> BTreeMap<String, String> {
        self.0
            .iter()
            .map(|(k, v)| (k.to_string(), v.join(" ")))
            .collect()
    }
}

impl Serialize for Resources {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for k in KEYS {
            let Some(v) = self.0.get(k.name) else {
                continue;
            };
            if k.list {
                m.serialize_entry(k.name, v)?;
            } else if let Some(one) = v.first() {
                m.serialize_entry(k.name, one)?;
            }
        }
        m.end()
    }
}

impl<'de> Deserialize<'de> for Resources {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Value {
            I(i64),
            F(f64),
            S(String),
            L(Vec<String>),
        }
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Resources;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a table of resource settings")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Resources, A::Error> {
                let mut r = Resources::default();
                while let Some(name) = map.next_key::<String>()? {
                    let k = key(&name).ok_or_else(|| {
                        de::Error::custom(LimitError::Unknown(name.clone()).to_string())
                    })?;
                    if r.0.contains_key(k.name) {
                        return Err(de::Error::custom(format!("duplicate resource {name:?}")));
                    }
                    let values = match (map.next_value::<Value>()?, k.list) {
                        (Value::L(l), true) => l,
                        (Value::S(s), true) => vec![s],
                        (Value::I(i), false) => vec![i.to_string()],
                        (Value::F(f), false) => vec![f.to_string()],
                        (Value::S(s), false) => vec![s],
                        _ => {
                            return Err(de::Error::custom(format!(
                                "resource {name:?} takes {}",
                                if k.list { "a list" } else { "one value" }
                            )));
                        }
                    };
                    r.0.insert(k.name, values);
                }
                Ok(r)
            }
        }
        d.deserialize_map(V)
    }
}

/// A size in bytes; `u64::MAX` is "infinity".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bytes(pub u64);

/// CPU time per second of wall clock, in microseconds (systemd's CPUQuotaPerSecUSec).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuQuota(pub u64);

/// A relative weight, 1–10000.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Weight(pub u64);

/// A set of CPUs as the bitmask systemd takes (byte i, bit j = CPU 8i+j).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuSet(pub Vec<u8>);

/// A count (tasks); `u64::MAX` is "infinity".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Count(pub u64);

/// A block device's bandwidth limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRate {
    pub device: String,
    pub bytes_per_sec: u64,
}

/// Network bandwidth in bytes per second.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate(pub u64);

/// A host device node a container gets in addition to the defaults, checked against the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub path: String,
    /// A non-empty subset of `rwm`.
    pub perms: String,
    pub block: bool,
    pub major: u64,
    pub minor: u64,
}

/// What the host says of a device path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceNode {
    pub block: bool,
    pub major: u64,
    pub minor: u64,
}

/// One checked setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Limit {
    Memory(Bytes),
    MemoryHigh(Bytes),
    MemorySwap(Bytes),
    Cpus(CpuQuota),
    CpuWeight(Weight),
    CpuSet(CpuSet),
    Pids(Count),
    IoWeight(Weight),
    ReadBps(DeviceRate),
    WriteBps(DeviceRate),
    Device(Device),
    NetworkRate(Rate),
}

impl Limit {
    /// The key this setting belongs to.
    pub fn key(&self) -> &'static Key {
        let name = match self {
            Limit::Memory(_) => "memory",
            Limit::MemoryHigh(_) => "memory-high",
            Limit::MemorySwap(_) => "memory-swap",
            Limit::Cpus(_) => "cpus",
            Limit::CpuWeight(_) => "cpu-weight",
            Limit::CpuSet(_) => "cpuset",
            Limit::Pids(_) => "pids",
            Limit::IoWeight(_) => "io-weight",
            Limit::ReadBps(_) => "device-read-bps",
            Limit::WriteBps(_) => "device-write-bps",
            Limit::Device(_) => "devices",
            Limit::NetworkRate(_) => "network-rate",
        };
        key(name).expect("every limit has a key")
    }
}

/// Checked settings, in [`KEYS`] order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits(pub Vec<Limit>);

impl Limits {
    /// The extra devices.
    pub fn devices(&self) -> impl Iterator<Item = &Device> {
        self.0.iter().filter_map(|l| match l {
            Limit::Device(d) => Some(d),
            _ => None,
        })
    }

    /// The settings of one key.
    pub fn of_key<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Limit> + 'a {
        self.0.iter().filter(move |l| l.key().name == name)
    }
}

/// Check every setting against the host and turn it into a typed [`Limit`]. Nothing is
/// accepted that systemd would take and then not apply on this host's cgroup layout.
pub fn check(r: &Resources, facts: &dyn HostFacts) -> Result<Limits, LimitError> {
    let mut out = Vec::new();
    for k in KEYS {
        for value in r.values(k.name) {
            if k.unified_only && !facts.unified_cgroups() {
                return Err(LimitError::NeedsUnified(k.name.into()));
            }
            out.push(parse(k, value, facts)?);
        }
    }
    Ok(Limits(out))
}

/// Parse one value of `k`.
pub fn parse(k: &'static Key, value: &str, facts: &dyn HostFacts) -> Result<Limit, LimitError> {
    let bad = |why: &str| LimitError::BadValue {
        key: k.name.into(),
        value: value.into(),
        expected: k.expected,
        why: if why.is_empty() {
            String::new()
        } else {
            format!(" ({why})")
        },
    };
    Ok(match k.name {
        "memory" => Limit::Memory(Bytes(size(value).map_err(bad)?)),
        "memory-high" => Limit::MemoryHigh(Bytes(size(value).map_err(bad)?)),
        "memory-swap" => Limit::MemorySwap(Bytes(size(value).map_err(bad)?)),
        "cpus" => Limit::Cpus(CpuQuota(cpus(value).map_err(bad)?)),
        "cpu-weight" => Limit::CpuWeight(Weight(weight(value).map_err(bad)?)),
        "io-weight" => Limit::IoWeight(Weight(weight(value).map_err(bad)?)),
        "pids" => Limit::Pids(Count(count(value).map_err(bad)?)),
        "cpuset" => Limit::CpuSet(CpuSet(cpuset(value, facts.possible_cpus()).map_err(bad)?)),
        "device-read-bps" | "device-write-bps" => {
            let (dev, rate) = value.rsplit_once(':').ok_or_else(|| bad(""))?;
            let node = device_node(dev, facts).map_err(|e| bad(&e))?;
            if !node.block {
                return Err(bad("not a block device"));
            }
            let r = DeviceRate {
                device: dev.to_string(),
                bytes_per_sec: size(rate).map_err(bad)?,
            };
            if k.name == "device-read-bps" {
                Limit::ReadBps(r)
            } else {
                Limit::WriteBps(r)
            }
        }
        "devices" => Limit::Device(device(value, facts).map_err(|e| bad(&e))?),
        "network-rate" => {
            let r: crate::network::Rate = value.parse().map_err(|_| bad(""))?;
            Limit::NetworkRate(Rate(r.bytes_per_sec))
        }
        _ => return Err(LimitError::Unknown(k.name.into())),
    })
}

fn device(v: &str, facts: &dyn HostFacts) -> Result<Device, String> {
    let (path, perms) = match v.rsplit_once(':') {
        Some((p, m)) if !m.is_empty() && m.chars().all(|c| "rwm".contains(c)) => (p, m),
        Some((_, m)) if !m.starts_with('/') => {
            return Err(format!("permissions {m:?} are not a subset of rwm"));
        }
        _ => (v, "rwm"),
    };
    let n = device_node(path, facts)?;
    Ok(Device {
        path: path.to_string(),
        perms: perms.to_string(),
        block: n.block,
        major: n.major,
        minor: n.minor,
    })
}

fn device_node(path: &str, facts: &dyn HostFacts) -> Result<DeviceNode, String> {
    if !path.starts_with("/dev/") || path.split('/').any(|c| c == ".." || c == ".") {
        return Err("device paths are absolute paths under /dev".into());
    }
    facts.device(path)
}

/// A size: digits with an optional K/M/G/T suffix (powers of 1024), or `infinity`/`max`.
pub fn size(v: &str) -> Result<u64, &'static str> {
    if v == "infinity" || v == "max" {
        return Ok(u64::MAX);
    }
    let (num, mult) = match v.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m: u64 = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => return Err("unknown unit"),
            };
            (&v[..i], m)
        }
        _ => (v, 1),
    };
    if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) {
        return Err("not a whole non-negative number");
    }
    let n: u64 = num.parse().map_err(|_| "too large")?;
    let b = n.checked_mul(mult).ok_or("too large")?;
    if b == 0 {
        Err("must be greater than zero")
    } else {
        Ok(b)
    }
}

/// CPUs → microseconds of CPU time per second. At least 1% of a CPU, systemd's own minimum.
pub fn cpus(v: &str) -> Result<u64, &'static str> {
    let f: f64 = v.parse().map_err(|_| "not a number")?;
    if !f.is_finite() || f <= 0.0 {
        return Err("must be greater than zero");
    }
    if f > 65536.0 {
        return Err("too large");
    }
    let usec = (f * 1_000_000.0).round() as u64;
    if usec < 10_000 {
        Err("less than 0.01 CPUs")
    } else {
        Ok(usec)
    }
}

pub fn weight(v: &str) -> Result<u64, &'static str> {
    match v.parse::<u64>() {
        Ok(n @ 1..=10_000) => Ok(n),
        _ => Err("out of range"),
    }
}

pub fn count(v: &str) -> Result<u64, &'static str> {
    if v == "infinity" || v == "max" {
        return Ok(u64::MAX);
    }
    match v.parse::<u64>() {
        Ok(0) => Err("must be greater than zero"),
        Ok(n) => Ok(n),
        Err(_) if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) => Err("too large"),
        Err(_) => Err("not a whole non-negative number"),
    }
}

/// `0-2,4` → the bitmask systemd takes for AllowedCPUs (byte i, bit j = CPU 8i+j).
pub fn cpuset(v: &str, possible: u32) -> Result<Vec<u8>, &'static str> {
    let mut cpus = Vec::new();
    for part in v.split(',') {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let a: u32 = a.trim().parse().map_err(|_| "not a CPU list")?;
        let b: u32 = b.trim().parse().map_err(|_| "not a CPU list")?;
        if a > b {
            return Err("a range goes downwards");
        }
        if b >= possible {
            return Err("no such CPU on this machine");
        }
        cpus.extend(a..=b);
    }
    let mut mask = vec![0u8; (*cpus.iter().max().ok_or("empty")? as usize) / 8 + 1];
    for c in cpus {
        mask[c as usize / 8] |= 1 << (c % 8);
    }
    Ok(mask)
}

#[cfg(test)]
mod tests {
    use super::super::tests::Facts;
    use super::*;

    fn checked(pairs: &[(&str, &str)]) -> Result<Limits, LimitError> {
        let mut r = Resources::default();
        for (k, v) in pairs {
            r.set(k, v).unwrap();
        }
        check(&r, &Facts::default())
    }

    #[test]
    fn friendly_keys_become_typed_limits() {
        let l = checked(&[
            ("memory", "512M"),
            ("cpus", "1.5"),
            ("pids", "200"),
            ("cpu-weight", "50"),
        ])
        .unwrap();
        assert_eq!(
            l.0,
            [
                Limit::Memory(Bytes(512 << 20)),
                Limit::Cpus(CpuQuota(1_500_000)),
                Limit::CpuWeight(Weight(50)),
                Limit::Pids(Count(200)),
            ]
        );
        let mut r = Resources::default();
        r.set("memory", "1G").unwrap();
        r.set("memory", "").unwrap();
        assert!(r.is_empty());
    }

    #[test]
    fn bad_values_are_refused_with_the_reason() {
        for (k, v) in [
            ("memory", "-1"),
            ("memory", "0"),
            ("memory", "abc"),
            ("memory", "1.5G"),
            ("memory", "99999999999999999999"),
            ("memory", "16777216T"),
            ("cpus", "abc"),
            ("cpus", "0"),
            ("cpus", "-2"),
            ("cpus", "NaN"),
            ("cpus", "inf"),
            ("cpus", "0.001"),
            ("pids", "99999999999999999999"),
            ("pids", "0"),
            ("pids", "-5"),
            ("cpu-weight", "0"),
            ("io-weight", "10001"),
            ("devices", "/dev/does-not-exist"),
            ("devices", "/etc/passwd"),
            ("devices", "/dev/null:rwx"),
            ("devices", "/dev/../etc/passwd"),
            ("device-read-bps", "/dev/null:1M"),
            ("device-read-bps", "nocolon"),
        ] {
            let e = checked(&[(k, v)]).unwrap_err();
            assert!(e.to_string().contains(k), "{k}={v}: {e}");
        }
        let mut r = Resources::default();
        assert_eq!(
            r.set("bogus", "1"),
            Err(LimitError::Unknown("bogus".into()))
        );
        // Rates are in tc's units (the network engine shapes with them).
        assert!(
            checked(&[("network-rate", "10M")])
                .unwrap_err()
                .to_string()
                .contains("network-rate")
        );
        assert_eq!(
            checked(&[("network-rate", "1mbit")]).unwrap().0,
            [Limit::NetworkRate(Rate(125_000))]
        );
    }

    #[test]
    fn unified_only_keys_are_refused_on_hybrid_hosts() {
        let mut r = Resources::default();
        r.set("cpuset", "0").unwrap();
        let unified = Facts { unified: true };
        assert_eq!(
            check(&r, &unified).unwrap().0,
            [Limit::CpuSet(CpuSet(vec![1]))]
        );
        assert_eq!(
            check(&r, &Facts::default()),
            Err(LimitError::NeedsUnified("cpuset".into()))
        );
        for bad in ["3-1", "100000", "x"] {
            r.set("cpuset", bad).unwrap();
            assert!(check(&r, &unified).is_err(), "{bad}");
        }
    }

    #[test]
    fn cpuset_bitmask() {
        assert_eq!(cpuset("0", 4), Ok(vec![1]));
        assert_eq!(cpuset("0-1,3", 4), Ok(vec![0b1011]));
        assert_eq!(cpuset("9", 16), Ok(vec![0, 2]));
        assert!(cpuset("4", 4).is_err());
    }

    #[test]
    fn devices_are_checked_on_the_host_and_replace_by_path() {
        let l = checked(&[("devices", "/dev/null:r"), ("devices", "/dev/zero")]).unwrap();
        let d: Vec<&Device> = l.devices().collect();
        assert_eq!((d[0].major, d[0].minor, d[0].perms.as_str()), (1, 3, "r"));
        assert_eq!(d[1].perms, "rwm");
        let mut r = Resources::default();
        r.set("devices", "/dev/null:r").unwrap();
        r.set("devices", "/dev/zero").unwrap();
        r.set("devices", "/dev/null:rw").unwrap();
        assert_eq!(r.values("devices"), ["/dev/zero", "/dev/null:rw"]);
    }

    #[test]
    fn toml_takes_numbers_and_strings_and_refuses_unknown_keys() {
        let r: Resources =
            toml::from_str("memory = \"1G\"\ncpus = 1.5\npids = 200\ndevices = [\"/dev/null\"]")
                .unwrap();
        assert_eq!(r.values("cpus"), ["1.5"]);
        assert_eq!(r.values("pids"), ["200"]);
        assert!(toml::from_str::<Resources>("bogus = 1").is_err());
        assert!(toml::from_str::<Resources>("memory = [\"1G\"]").is_err());
        let s = toml::to_string(&r).unwrap();
        assert_eq!(toml::from_str::<Resources>(&s).unwrap(), r);
        assert_eq!(r.display_map()["memory"], "1G");
        // The JSON form the runtime records have always used.
        let j: Resources =
            serde_json::from_str(r#"{"memory":"64M","devices":["/dev/fuse:r"]}"#).unwrap();
        assert_eq!(
            serde_json::to_string(&j).unwrap(),
            r#"{"memory":"64M","devices":["/dev/fuse:r"]}"#
        );
    }

    #[test]
    fn every_key_has_a_limit_and_a_flag() {
        for k in KEYS {
            assert!(!k.flag.is_empty() && !k.help.is_empty(), "{}", k.name);
            assert_eq!(key(k.name).map(|x| x.name), Some(k.name));
        }
    }
}
