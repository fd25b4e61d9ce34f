//! Resource settings as users write them (`run --memory 512M`, `[resources]` in a definition,
//! `berthctl set NAME memory=512M`), checked and turned into systemd scope properties. Limits are
//! only ever applied as scope properties (at creation, or live with `SetUnitProperties`).
//!
//! Every container also gets `DevicePolicy=closed` with an allow list of the devices its /dev
//! holds; `devices` grants more.

use std::collections::BTreeMap;
use std::os::unix::fs::FileTypeExt;

use serde::{Deserialize, Deserializer, Serialize};
use thiserror::Error;

use crate::spec::PropValue;

/// The user-facing resource keys, each with its systemd property and what it takes.
pub const KEYS: &[(&str, &str, &str)] = &[
    ("memory", "MemoryMax", "a size like 512M, 2G or infinity"),
    (
        "memory-high",
        "MemoryHigh",
        "a size like 512M, 2G or infinity",
    ),
    (
        "memory-swap",
        "MemorySwapMax",
        "a size like 512M, 2G or infinity",
    ),
    ("cpus", "CPUQuotaPerSecUSec", "a number of CPUs like 1.5"),
    ("cpu-weight", "CPUWeight", "a weight from 1 to 10000"),
    ("cpuset", "AllowedCPUs", "CPU numbers like 0-2,4"),
    ("pids", "TasksMax", "a number of tasks or infinity"),
    ("io-weight", "IOWeight", "a weight from 1 to 10000"),
    (
        "device-read-bps",
        "IOReadBandwidthMax",
        "DEVICE:RATE like /dev/vda:10M",
    ),
    (
        "device-write-bps",
        "IOWriteBandwidthMax",
        "DEVICE:RATE like /dev/vda:10M",
    ),
    ("devices", "DeviceAllow", "a device PATH[:rwm]"),
    ("network-rate", "", "a rate like 10M (bytes per second)"),
];

/// Keys whose scope properties systemd only applies on the unified hierarchy (cgroup v2):
/// with v1 controllers it accepts them and changes nothing (systemd.resource-control(5)).
pub const UNIFIED_ONLY: &[&str] = &["memory-high", "memory-swap", "cpuset"];

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
pub enum ResourceError {
    #[error("unknown resource {0:?} (known: {known})", known = KEYS.iter().map(|k| k.0).collect::<Vec<_>>().join(", "))]
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
    #[error(
        "network-rate needs a network interface, and berth containers have only loopback so far"
    )]
    NoNetwork,
}

/// Resource settings; `None`/empty means "systemd's default" (no limit).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Resources {
    /// Hard memory limit (MemoryMax): a size like 512M, or infinity.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "scalar"
    )]
    pub memory: Option<String>,
    /// Memory throttling threshold (MemoryHigh).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "scalar"
    )]
    pub memory_high: Option<String>,
    /// Swap limit (MemorySwapMax).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "scalar"
    )]
    pub memory_swap: Option<String>,
    /// CPU time as a number of CPUs (CPUQuota; 1.5 = 150%).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "scalar"
    )]
    pub cpus: Option<String>,
    /// Relative CPU weight, 1–10000 (CPUWeight).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "scalar"
    )]
    pub cpu_weight: Option<String>,
    /// CPUs the container may run on, like 0-2,4 (AllowedCPUs).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "scalar"
    )]
    pub cpuset: Option<String>,
    /// Maximum number of tasks (TasksMax).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "scalar"
    )]
    pub pids: Option<String>,
    /// Relative block IO weight, 1–10000 (IOWeight).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "scalar"
    )]
    pub io_weight: Option<String>,
    /// Read bandwidth limits, DEVICE:RATE (IOReadBandwidthMax).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub device_read_bps: Vec<String>,
    /// Write bandwidth limits, DEVICE:RATE (IOWriteBandwidthMax).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub device_write_bps: Vec<String>,
    /// Extra devices, PATH[:rwm], made in the container's /dev and allowed (DeviceAllow).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<String>,
    /// Network bandwidth (egress and ingress) on the container's host-side interface.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "scalar"
    )]
    pub network_rate: Option<String>,
}

/// Accept `pids = 200`, `cpus = 1.5` and `memory = "512M"` alike in TOML.
fn scalar<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Scalar {
        I(i64),
        F(f64),
        S(String),
    }
    Ok(Some(match Scalar::deserialize(d)? {
        Scalar::I(i) => i.to_string(),
        Scalar::F(f) => f.to_string(),
        Scalar::S(s) => s,
    }))
}

/// A device the container gets in addition to the defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub path: String,
    pub perms: String,
    pub block: bool,
    pub major: u64,
    pub minor: u64,
}

impl Resources {
    /// The settings as `key=value` pairs, lists expanded (for display and the bus).
    pub fn pairs(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (key, _, _) in KEYS {
            for v in self.values(key) {
                out.push((key.to_string(), v));
            }
        }
        out
    }

    fn values(&self, key: &str) -> Vec<String> {
        let one = |o: &Option<String>| o.iter().cloned().collect();
        match key {
            "memory" => one(&self.memory),
            "memory-high" => one(&self.memory_high),
            "memory-swap" => one(&self.memory_swap),
            "cpus" => one(&self.cpus),
            "cpu-weight" => one(&self.cpu_weight),
            "cpuset" => one(&self.cpuset),
            "pids" => one(&self.pids),
            "io-weight" => one(&self.io_weight),
            "device-read-bps" => self.device_read_bps.clone(),
            "device-write-bps" => self.device_write_bps.clone(),
            "devices" => self.devices.clone(),
            "network-rate" => one(&self.network_rate),
            _ => Vec::new(),
        }
    }

    /// Apply `key=value` on top of these settings. For the per-device lists a value replaces
    /// the entry for the same device; for `devices` it adds one. An empty value resets the key.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), ResourceError> {
        let scalar = |slot: &mut Option<String>| {
            *slot = (!value.is_empty()).then(|| value.to_string());
        };
        let per_device = |list: &mut Vec<String>| {
            if value.is_empty() {
                list.clear();
                return;
            }
            let dev = value.rsplit_once(':').map_or(value, |(d, _)| d);
            list.retain(|v| v.rsplit_once(':').map_or(v.as_str(), |(d, _)| d) != dev);
            list.push(value.to_string());
        };
        match key {
            "memory" => scalar(&mut self.memory),
            "memory-high" => scalar(&mut self.memory_high),
            "memory-swap" => scalar(&mut self.memory_swap),
            "cpus" => scalar(&mut self.cpus),
            "cpu-weight" => scalar(&mut self.cpu_weight),
            "cpuset" => scalar(&mut self.cpuset),
            "pids" => scalar(&mut self.pids),
            "io-weight" => scalar(&mut self.io_weight),
            "device-read-bps" => per_device(&mut self.device_read_bps),
            "device-write-bps" => per_device(&mut self.device_write_bps),
            "devices" => per_device(&mut self.devices),
            "network-rate" => scalar(&mut self.network_rate),
            _ => return Err(ResourceError::Unknown(key.into())),
        }
        Ok(())
    }

    /// Check every setting and turn the settings into scope properties. Device paths are
    /// looked up on the host, so a missing device is an error here, before anything starts.
    pub fn properties(&self) -> Result<Vec<(&'static str, PropValue)>, ResourceError> {
        let mut props = Vec::new();
        let mut read_bps = Vec::new();
        let mut write_bps = Vec::new();
        for (key, value) in self.pairs() {
            let (_, prop, expected) = KEYS.iter().find(|k| k.0 == key).expect("known key");
            let bad = |why: &str| ResourceError::BadValue {
                key: key.clone(),
                value: value.clone(),
                expected,
                why: if why.is_empty() {
                    String::new()
                } else {
                    format!(" ({why})")
                },
            };
            match key.as_str() {
                "memory" | "memory-high" | "memory-swap" => {
                    props.push((*prop, PropValue::U64(size(&value).map_err(bad)?)))
                }
                "cpus" => props.push((*prop, PropValue::U64(cpus(&value).map_err(bad)?))),
                "cpu-weight" | "io-weight" => {
                    props.push((*prop, PropValue::U64(weight(&value).map_err(bad)?)))
                }
                "pids" => props.push((*prop, PropValue::U64(count(&value).map_err(bad)?))),
                "cpuset" => {
                    let online = possible_cpus();
                    props.push((
                        *prop,
                        PropValue::Bytes(cpuset(&value, online).map_err(bad)?),
                    ))
                }
                "device-read-bps" | "device-write-bps" => {
                    let (dev, rate) = value.rsplit_once(':').ok_or_else(|| bad(""))?;
                    let d = device(dev).map_err(|e| bad(&e))?;
                    if !d.block {
                        return Err(bad("not a block device"));
                    }
                    let entry = (dev.to_string(), size(rate).map_err(bad)?);
                    if key == "device-read-bps" {
                        read_bps.push(entry)
                    } else {
                        write_bps.push(entry)
                    }
                }
                "devices" => {
                    parse_device(&value).map_err(|e| bad(&e))?;
                }
                "network-rate" => return Err(ResourceError::NoNetwork),
                _ => unreachable!("keys come from KEYS"),
            }
        }
        if !read_bps.is_empty() {
            props.push(("IOReadBandwidthMax", PropValue::PathU64(read_bps)));
        }
        if !write_bps.is_empty() {
            props.push(("IOWriteBandwidthMax", PropValue::PathU64(write_bps)));
        }
        Ok(props)
    }

    /// The scope properties that carry `key`'s current value, or reset it when unset (what
    /// systemd takes as "no limit" for each).
    pub fn key_properties(
        &self,
        key: &str,
    ) -> Result<Vec<(&'static str, PropValue)>, ResourceError> {
        let mut only = Resources::default();
        for (k, v) in self.pairs() {
            if k == key {
                only.set(&k, &v)?;
            }
        }
        let props = only.properties()?;
        if !props.is_empty() {
            return Ok(props);
        }
        let (_, prop, _) = KEYS
            .iter()
            .find(|k| k.0 == key)
            .ok_or_else(|| ResourceError::Unknown(key.into()))?;
        Ok(vec![(
            prop,
            match key {
                "cpuset" => PropValue::Bytes(Vec::new()),
                "device-read-bps" | "device-write-bps" => PropValue::PathU64(Vec::new()),
                _ => PropValue::U64(u64::MAX),
            },
        )])
    }

    /// Refuse settings that the cgroup layout cannot apply (see [`UNIFIED_ONLY`]).
    pub fn check_layout(&self, unified: bool) -> Result<(), ResourceError> {
        if unified {
            return Ok(());
        }
        match UNIFIED_ONLY.iter().find(|k| !self.values(k).is_empty()) {
            Some(k) => Err(ResourceError::NeedsUnified(k.to_string())),
            None => Ok(()),
        }
    }

    /// The extra devices, checked against the host.
    pub fn extra_devices(&self) -> Result<Vec<Device>, ResourceError> {
        self.devices
            .iter()
            .map(|v| {
                parse_device(v).map_err(|why| ResourceError::BadValue {
                    key: "devices".into(),
                    value: v.clone(),
                    expected: "a device PATH[:rwm]",
                    why: format!(" ({why})"),
                })
            })
            .collect()
    }

    /// The device policy: closed, the defaults, and the extra devices.
    pub fn device_properties(&self) -> Result<Vec<(&'static str, PropValue)>, ResourceError> {
        let mut allow: Vec<(String, String)> = DEFAULT_DEVICES
            .iter()
            .map(|(p, m)| (p.to_string(), m.to_string()))
            .collect();
        // berth-helper makes the node with mknod(2) once it is in the scope, and the device
        // cgroup checks that against `m`. `m` only lets the container make nodes for this same
        // device, whose opens stay limited to the `r`/`w` granted, so it is always added.
        allow.extend(self.extra_devices()?.into_iter().map(|d| {
            let mut perms = d.perms;
            if !perms.contains('m') {
                perms.push('m');
            }
            (d.path, perms)
        }));
        Ok(vec![
            ("DevicePolicy", PropValue::Str("closed".into())),
            ("DeviceAllow", PropValue::PathStr(allow)),
        ])
    }
}

/// The resource settings as a map (what the bus carries); the entries of a list
/// (`devices`, `device-read-bps`, `device-write-bps`) are separated by spaces.
pub fn display_map(r: &Resources) -> BTreeMap<String, String> {
    let mut m: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in r.pairs() {
        m.entry(k)
            .and_modify(|s| {
                s.push(' ');
                s.push_str(&v)
            })
            .or_insert(v);
    }
    m
}

fn parse_device(v: &str) -> Result<Device, String> {
    let (path, perms) = match v.rsplit_once(':') {
        Some((p, m)) if !m.is_empty() && m.chars().all(|c| "rwm".contains(c)) => (p, m),
        Some((_, m)) if !m.starts_with('/') => {
            return Err(format!("permissions {m:?} are not a subset of rwm"));
        }
        _ => (v, "rwm"),
    };
    let mut d = device(path)?;
    d.perms = perms.to_string();
    Ok(d)
}

fn device(path: &str) -> Result<Device, String> {
    if !path.starts_with("/dev/") || path.split('/').any(|c| c == "..") {
        return Err("device paths are absolute paths under /dev".into());
    }
    let md = std::fs::metadata(path).map_err(|e| format!("{path}: {e}"))?;
    let ft = md.file_type();
    if !ft.is_char_device() && !ft.is_block_device() {
        return Err(format!("{path} is not a device node"));
    }
    use std::os::unix::fs::MetadataExt;
    let rdev = md.rdev();
    Ok(Device {
        path: path.to_string(),
        perms: "rwm".into(),
        block: ft.is_block_device(),
        major: nix::sys::stat::major(rdev),
        minor: nix::sys::stat::minor(rdev),
    })
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

/// CPUs → microseconds of CPU time per second (CPUQuotaPerSecUSec). At least 1% of a CPU,
/// which is systemd's own minimum (CPUQuota=1%).
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

/// How many CPU numbers this machine may have (`/sys/devices/system/cpu/possible`, like
/// `0-3`).
pub fn possible_cpus() -> u32 {
    std::fs::read_to_string("/sys/devices/system/cpu/possible")
        .ok()
        .and_then(|s| s.trim().rsplit(['-', ',']).next()?.parse::<u32>().ok())
        .map_or(1, |last| last + 1)
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
    use super::*;

    fn prop(r: &Resources, name: &str) -> Option<PropValue> {
        r.properties()
            .unwrap()
            .into_iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    }

    #[test]
    fn friendly_keys_map_to_scope_properties() {
        let mut r = Resources::default();
        for (k, v) in [
            ("memory", "512M"),
            ("cpus", "1.5"),
            ("pids", "200"),
            ("cpu-weight", "50"),
        ] {
            r.set(k, v).unwrap();
        }
        assert_eq!(prop(&r, "MemoryMax"), Some(PropValue::U64(512 << 20)));
        assert_eq!(
            prop(&r, "CPUQuotaPerSecUSec"),
            Some(PropValue::U64(1_500_000))
        );
        assert_eq!(prop(&r, "TasksMax"), Some(PropValue::U64(200)));
        assert_eq!(prop(&r, "CPUWeight"), Some(PropValue::U64(50)));
        r.set("memory", "").unwrap();
        assert_eq!(prop(&r, "MemoryMax"), None);
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
            ("cpuset", "3-1"),
            ("cpuset", "100000"),
            ("cpuset", "x"),
            ("devices", "/dev/does-not-exist"),
            ("devices", "/etc/passwd"),
            ("devices", "/dev/null:rwx"),
            ("devices", "/dev/../etc/passwd"),
            ("device-read-bps", "/dev/null:1M"),
            ("device-read-bps", "nocolon"),
        ] {
            let mut r = Resources::default();
            r.set(k, v).unwrap();
            let e = r.properties().and_then(|_| r.extra_devices().map(|_| ()));
            assert!(e.is_err(), "{k}={v} accepted");
            assert!(e.unwrap_err().to_string().contains(k), "{k}={v}");
        }
        let mut r = Resources::default();
        assert!(matches!(
            r.set("bogus", "1"),
            Err(ResourceError::Unknown(_))
        ));
        r.set("cpuset", "0").unwrap();
        assert!(r.check_layout(true).is_ok());
        assert_eq!(
            r.check_layout(false),
            Err(ResourceError::NeedsUnified("cpuset".into()))
        );
        r.set("network-rate", "10M").unwrap();
        assert_eq!(r.properties(), Err(ResourceError::NoNetwork));
    }

    #[test]
    fn cpuset_bitmask() {
        assert_eq!(cpuset("0", 4), Ok(vec![1]));
        assert_eq!(cpuset("0-1,3", 4), Ok(vec![0b1011]));
        assert_eq!(cpuset("9", 16), Ok(vec![0, 2]));
        assert!(cpuset("4", 4).is_err());
    }

    #[test]
    fn devices_and_policy() {
        let mut r = Resources::default();
        r.set("devices", "/dev/null:r").unwrap();
        r.set("devices", "/dev/zero").unwrap();
        let d = r.extra_devices().unwrap();
        assert_eq!((d[0].major, d[0].minor, d[0].perms.as_str()), (1, 3, "r"));
        assert_eq!(d[1].perms, "rwm");
        let p = r.device_properties().unwrap();
        assert_eq!(p[0], ("DevicePolicy", PropValue::Str("closed".into())));
        let PropValue::PathStr(allow) = &p[1].1 else {
            panic!()
        };
        // `m` is added: the helper makes the node inside the scope.
        assert!(allow.contains(&("/dev/null".into(), "rm".into())));
        assert!(allow.contains(&("char-pts".into(), "rw".into())));
        // The same device again replaces its entry.
        r.set("devices", "/dev/null:rw").unwrap();
        assert_eq!(r.devices, ["/dev/zero", "/dev/null:rw"]);
    }

    #[test]
    fn toml_takes_numbers_and_strings() {
        let r: Resources =
            toml::from_str("memory = \"1G\"\ncpus = 1.5\npids = 200\ndevices = [\"/dev/null\"]")
                .unwrap();
        assert_eq!(r.cpus.as_deref(), Some("1.5"));
        assert_eq!(r.pids.as_deref(), Some("200"));
        assert!(toml::from_str::<Resources>("bogus = 1").is_err());
        let s = toml::to_string(&r).unwrap();
        assert_eq!(toml::from_str::<Resources>(&s).unwrap(), r);
        assert_eq!(display_map(&r)["memory"], "1G");
    }
}
