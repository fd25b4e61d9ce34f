//! Container definitions (what `create` records) and the scope properties a user may set.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::resources::{self, Resources};

/// A container definition, stored as `/var/lib/berth/containers/NAME/container.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Definition {
    /// The container's name (also its hostname unless `hostname` is set).
    pub name: String,
    /// Image name, resolved in the image directories at start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// A root directory used as the read-only lower layer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub directory: Option<PathBuf>,
    /// The payload's argv; empty means `/bin/sh`.
    #[serde(default)]
    pub command: Vec<String>,
    /// Hostname inside the container; defaults to the name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Remove the definition and writable layer when the container exits.
    #[serde(default)]
    pub auto_remove: bool,
    /// Resource limits and extra devices (see [`Resources`]).
    #[serde(default, skip_serializing_if = "is_default")]
    pub resources: Resources,
    /// Raw scope properties (`KEY=VALUE` as the user wrote them; checked by [`parse_property`]).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// Creation time, microseconds since the epoch.
    pub created_at: u64,
}

impl Definition {
    /// The hostname the container gets.
    pub fn hostname(&self) -> &str {
        self.hostname.as_deref().unwrap_or(&self.name)
    }

    /// The payload's argv.
    pub fn argv(&self) -> Vec<String> {
        if self.command.is_empty() {
            vec!["/bin/sh".into()]
        } else {
            self.command.clone()
        }
    }
}

fn is_default(r: &Resources) -> bool {
    *r == Resources::default()
}

/// A typed value for one systemd unit property (the D-Bus signatures systemd expects).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PropValue {
    /// `t`
    U64(u64),
    /// `s`
    Str(String),
    /// `b`
    Bool(bool),
    /// `ay` (CPU and NUMA node bitmasks)
    Bytes(Vec<u8>),
    /// `a(st)` (per-device IO limits)
    PathU64(Vec<(String, u64)>),
    /// `a(ss)` (device allow list)
    PathStr(Vec<(String, String)>),
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum PropertyError {
    #[error("unknown property {0:?} (known: {known})", known = KNOWN.iter().map(|(k, _)| *k).collect::<Vec<_>>().join(", "))]
    Unknown(String),
    #[error("bad value {value:?} for {key}: {why}")]
    BadValue {
        key: String,
        value: String,
        why: &'static str,
    },
    #[error("property must be KEY=VALUE, got {0:?}")]
    Syntax(String),
}

type Parser = fn(&str) -> Result<PropValue, &'static str>;

/// The raw scope properties accepted by `--property`, as systemd-run spells them, each with
/// its parser to the typed value. CPUQuota and RuntimeMaxSec are renamed to the properties
/// systemd takes on the bus (see [`bus_name`]).
const KNOWN: &[(&str, Parser)] = &[
    ("MemoryMin", |v| Ok(PropValue::U64(size(v)?))),
    ("MemoryLow", |v| Ok(PropValue::U64(size(v)?))),
    ("MemoryHigh", |v| Ok(PropValue::U64(size(v)?))),
    ("MemoryMax", |v| Ok(PropValue::U64(size(v)?))),
    ("MemorySwapMax", |v| Ok(PropValue::U64(size(v)?))),
    ("CPUQuota", |v| Ok(PropValue::U64(percent_usec(v)?))),
    ("CPUWeight", |v| Ok(PropValue::U64(weight(v)?))),
    ("StartupCPUWeight", |v| Ok(PropValue::U64(weight(v)?))),
    ("AllowedCPUs", |v| {
        let possible = resources::possible_cpus();
        Ok(PropValue::Bytes(resources::cpuset(v, possible)?))
    }),
    ("TasksMax", |v| Ok(PropValue::U64(count(v)?))),
    ("IOWeight", |v| Ok(PropValue::U64(weight(v)?))),
    ("StartupIOWeight", |v| Ok(PropValue::U64(weight(v)?))),
    ("IOReadBandwidthMax", |v| {
        Ok(PropValue::PathU64(vec![device_size(v)?]))
    }),
    ("IOWriteBandwidthMax", |v| {
        Ok(PropValue::PathU64(vec![device_size(v)?]))
    }),
    ("IOReadIOPSMax", |v| {
        Ok(PropValue::PathU64(vec![device_count(v)?]))
    }),
    ("IOWriteIOPSMax", |v| {
        Ok(PropValue::PathU64(vec![device_count(v)?]))
    }),
    ("DeviceAllow", |v| {
        let (path, perms) = v.split_once(' ').unwrap_or((v, "rwm"));
        if !(path.starts_with("/dev/") || path.starts_with("char-") || path.starts_with("block-"))
            || perms.is_empty()
            || !perms.chars().all(|c| "rwm".contains(c))
        {
            return Err("expected a device and permissions, like \"/dev/fuse rw\"");
        }
        Ok(PropValue::PathStr(vec![(path.into(), perms.into())]))
    }),
    ("RuntimeMaxSec", |v| {
        let s = count(v).map_err(|_| "expected a number of seconds or infinity")?;
        Ok(PropValue::U64(s.saturating_mul(1_000_000)))
    }),
    ("CPUAccounting", |v| Ok(PropValue::Bool(boolean(v)?))),
    ("MemoryAccounting", |v| Ok(PropValue::Bool(boolean(v)?))),
    ("IOAccounting", |v| Ok(PropValue::Bool(boolean(v)?))),
    ("TasksAccounting", |v| Ok(PropValue::Bool(boolean(v)?))),
    ("Description", |v| Ok(PropValue::Str(text(v)?))),
];

/// The name systemd takes on the bus for a property as users write it.
fn bus_name(key: &'static str) -> &'static str {
    match key {
        "CPUQuota" => "CPUQuotaPerSecUSec",
        "RuntimeMaxSec" => "RuntimeMaxUSec",
        k => k,
    }
}

/// Check `KEY=VALUE` and turn it into the systemd property name and typed value.
pub fn parse_property(key: &str, value: &str) -> Result<(&'static str, PropValue), PropertyError> {
    let (k, parse) = KNOWN
        .iter()
        .find(|(k, _)| *k == key)
        .ok_or_else(|| PropertyError::Unknown(key.into()))?;
    parse(value)
        .map(|v| (bus_name(k), v))
        .map_err(|why| PropertyError::BadValue {
            key: key.into(),
            value: value.into(),
            why,
        })
}

/// Split `KEY=VALUE`.
pub fn split_assignment(s: &str) -> Result<(&str, &str), PropertyError> {
    s.split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| PropertyError::Syntax(s.into()))
}

fn size(v: &str) -> Result<u64, &'static str> {
    resources::size(v).map_err(|_| "expected a size like 512M, 2G or infinity")
}

fn count(v: &str) -> Result<u64, &'static str> {
    resources::count(v).map_err(|_| "expected a number greater than zero, or infinity")
}

fn weight(v: &str) -> Result<u64, &'static str> {
    resources::weight(v).map_err(|_| "expected a weight from 1 to 10000")
}

fn device_size(v: &str) -> Result<(String, u64), &'static str> {
    let (dev, n) = v
        .split_once(' ')
        .filter(|(d, _)| d.starts_with("/dev/"))
        .ok_or("expected a device and a rate, like \"/dev/vda 10M\"")?;
    Ok((dev.into(), size(n)?))
}

fn device_count(v: &str) -> Result<(String, u64), &'static str> {
    let (dev, n) = v
        .split_once(' ')
        .filter(|(d, _)| d.starts_with("/dev/"))
        .ok_or("expected a device and a number, like \"/dev/vda 1000\"")?;
    Ok((dev.into(), count(n)?))
}

fn boolean(v: &str) -> Result<bool, &'static str> {
    match v {
        "yes" | "true" | "1" | "on" => Ok(true),
        "no" | "false" | "0" | "off" => Ok(false),
        _ => Err("expected yes or no"),
    }
}

fn percent_usec(v: &str) -> Result<u64, &'static str> {
    let n: u64 = v
        .strip_suffix('%')
        .ok_or("expected a percentage like 150%")?
        .parse()
        .map_err(|_| "expected a percentage like 150%")?;
    if n == 0 {
        return Err("quota must be greater than 0%");
    }
    n.checked_mul(10_000).ok_or("percentage is too large")
}

fn text(v: &str) -> Result<String, &'static str> {
    if v.len() > 256 || v.chars().any(char::is_control) {
        Err("expected up to 256 printable characters")
    } else {
        Ok(v.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(
            parse_property("MemoryMax", "512M"),
            Ok(("MemoryMax", PropValue::U64(512 << 20)))
        );
        assert_eq!(
            parse_property("MemoryMax", "4096"),
            Ok(("MemoryMax", PropValue::U64(4096)))
        );
        assert_eq!(
            parse_property("MemoryMax", "infinity"),
            Ok(("MemoryMax", PropValue::U64(u64::MAX)))
        );
        for bad in [
            "-1",
            "abc",
            "0",
            "",
            "5X",
            "99999999999999999999",
            "16777216T",
        ] {
            assert!(parse_property("MemoryMax", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cpu_and_tasks() {
        assert_eq!(
            parse_property("CPUQuota", "150%"),
            Ok(("CPUQuotaPerSecUSec", PropValue::U64(1_500_000)))
        );
        assert!(parse_property("CPUQuota", "1.5").is_err());
        assert_eq!(
            parse_property("CPUWeight", "100"),
            Ok(("CPUWeight", PropValue::U64(100)))
        );
        assert!(parse_property("CPUWeight", "0").is_err());
        assert!(parse_property("CPUWeight", "10001").is_err());
        assert_eq!(
            parse_property("TasksMax", "200"),
            Ok(("TasksMax", PropValue::U64(200)))
        );
        assert!(parse_property("TasksMax", "99999999999999999999").is_err());
    }

    #[test]
    fn unknown_and_syntax() {
        assert!(matches!(
            parse_property("Bogus", "1"),
            Err(PropertyError::Unknown(_))
        ));
        assert_eq!(split_assignment("A=b=c"), Ok(("A", "b=c")));
        assert!(split_assignment("nokey").is_err());
        assert!(split_assignment("=v").is_err());
    }

    #[test]
    fn definition_round_trips_and_rejects_unknown_keys() {
        let d = Definition {
            name: "web".into(),
            image: Some("default".into()),
            directory: None,
            command: vec!["/bin/true".into()],
            hostname: None,
            auto_remove: true,
            resources: Resources::default(),
            properties: [("TasksMax".to_string(), "10".to_string())].into(),
            created_at: 1,
        };
        let s = toml::to_string(&d).unwrap();
        assert_eq!(toml::from_str::<Definition>(&s).unwrap(), d);
        assert!(toml::from_str::<Definition>("name='x'\ncreated_at=1\nbogus=1").is_err());
        assert_eq!(d.hostname(), "web");
    }
}
