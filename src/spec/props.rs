//! Raw scope properties (`run -p KEY=VALUE`, `[properties]` in a definition), as systemd-run
//! spells them, each with the parser that checks its value. Only the properties in [`RAW`] are
//! accepted; their typed values are turned into D-Bus variants by `systemd::properties`.

use thiserror::Error;

use super::HostFacts;
use super::limits::{self, Bytes, Count, CpuSet, Weight};

/// A checked value of a raw property.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawValue {
    Bytes(Bytes),
    /// Microseconds (CPUQuota as CPUQuotaPerSecUSec, RuntimeMaxSec as RuntimeMaxUSec).
    Usec(u64),
    Weight(Weight),
    CpuSet(CpuSet),
    Count(Count),
    /// A device path and a byte rate.
    DeviceBytes(String, u64),
    /// A device path and an operation rate.
    DeviceCount(String, u64),
    /// A device (path, `char-*` or `block-*`) and `rwm` permissions.
    DeviceAllow(String, String),
    Bool(bool),
    Text(String),
}

/// One checked raw property.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawProperty {
    /// As the user wrote it (`CPUQuota`).
    pub key: &'static str,
    /// As systemd takes it on the bus (`CPUQuotaPerSecUSec`).
    pub bus_name: &'static str,
    pub value: RawValue,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum PropertyError {
    #[error("unknown property {0:?} (known: {known})", known = RAW.iter().map(|r| r.0).collect::<Vec<_>>().join(", "))]
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

type Parser = fn(&str, &dyn HostFacts) -> Result<RawValue, &'static str>;

/// The accepted raw properties: name as written, name on the bus, parser.
pub const RAW: &[(&str, &str, Parser)] = &[
    ("MemoryMin", "MemoryMin", |v, _| sized(v)),
    ("MemoryLow", "MemoryLow", |v, _| sized(v)),
    ("MemoryHigh", "MemoryHigh", |v, _| sized(v)),
    ("MemoryMax", "MemoryMax", |v, _| sized(v)),
    ("MemorySwapMax", "MemorySwapMax", |v, _| sized(v)),
    ("CPUQuota", "CPUQuotaPerSecUSec", |v, _| {
        Ok(RawValue::Usec(percent_usec(v)?))
    }),
    ("CPUWeight", "CPUWeight", |v, _| weighted(v)),
    ("StartupCPUWeight", "StartupCPUWeight", |v, _| weighted(v)),
    ("AllowedCPUs", "AllowedCPUs", |v, f| {
        Ok(RawValue::CpuSet(CpuSet(limits::cpuset(
            v,
            f.possible_cpus(),
        )?)))
    }),
    ("TasksMax", "TasksMax", |v, _| {
        Ok(RawValue::Count(Count(count(v)?)))
    }),
    ("IOWeight", "IOWeight", |v, _| weighted(v)),
    ("StartupIOWeight", "StartupIOWeight", |v, _| weighted(v)),
    ("IOReadBandwidthMax", "IOReadBandwidthMax", |v, _| {
        let (d, n) = device_and(v, "expected a device and a rate, like \"/dev/vda 10M\"")?;
        Ok(RawValue::DeviceBytes(d, size(n)?))
    }),
    ("IOWriteBandwidthMax", "IOWriteBandwidthMax", |v, _| {
        let (d, n) = device_and(v, "expected a device and a rate, like \"/dev/vda 10M\"")?;
        Ok(RawValue::DeviceBytes(d, size(n)?))
    }),
    ("IOReadIOPSMax", "IOReadIOPSMax", |v, _| {
        let (d, n) = device_and(v, "expected a device and a number, like \"/dev/vda 1000\"")?;
        Ok(RawValue::DeviceCount(d, count(n)?))
    }),
    ("IOWriteIOPSMax", "IOWriteIOPSMax", |v, _| {
        let (d, n) = device_and(v, "expected a device and a number, like \"/dev/vda 1000\"")?;
        Ok(RawValue::DeviceCount(d, count(n)?))
    }),
    ("DeviceAllow", "DeviceAllow", |v, _| {
        let (path, perms) = v.split_once(' ').unwrap_or((v, "rwm"));
        if !(path.starts_with("/dev/") || path.starts_with("char-") || path.starts_with("block-"))
            || path.split('/').any(|c| c == "..")
            || perms.is_empty()
            || !perms.chars().all(|c| "rwm".contains(c))
        {
            return Err("expected a device and permissions, like \"/dev/fuse rw\"");
        }
        Ok(RawValue::DeviceAllow(path.into(), perms.into()))
    }),
    ("RuntimeMaxSec", "RuntimeMaxUSec", |v, _| {
        let s = count(v).map_err(|_| "expected a number of seconds or infinity")?;
        Ok(RawValue::Usec(s.saturating_mul(1_000_000)))
    }),
    ("CPUAccounting", "CPUAccounting", |v, _| boolean(v)),
    ("MemoryAccounting", "MemoryAccounting", |v, _| boolean(v)),
    ("IOAccounting", "IOAccounting", |v, _| boolean(v)),
    ("TasksAccounting", "TasksAccounting", |v, _| boolean(v)),
    ("Description", "Description", |v, _| {
        if v.len() > 256 || v.chars().any(char::is_control) {
            Err("expected up to 256 printable characters")
        } else {
            Ok(RawValue::Text(v.into()))
        }
    }),
];

/// Check `KEY=VALUE` and type it.
pub fn parse(key: &str, value: &str, facts: &dyn HostFacts) -> Result<RawProperty, PropertyError> {
    let (k, bus, parse) = RAW
        .iter()
        .find(|(k, _, _)| *k == key)
        .ok_or_else(|| PropertyError::Unknown(key.into()))?;
    parse(value, facts)
        .map(|value| RawProperty {
            key: k,
            bus_name: bus,
            value,
        })
        .map_err(|why| PropertyError::BadValue {
            key: key.into(),
            value: value.into(),
            why,
        })
}

/// Whether `key` is a raw property berth accepts.
pub fn is_known(key: &str) -> bool {
    RAW.iter().any(|(k, _, _)| *k == key)
}

/// Split `KEY=VALUE`.
pub fn split_assignment(s: &str) -> Result<(&str, &str), PropertyError> {
    s.split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| PropertyError::Syntax(s.into()))
}

fn size(v: &str) -> Result<u64, &'static str> {
    limits::size(v).map_err(|_| "expected a size like 512M, 2G or infinity")
}

fn sized(v: &str) -> Result<RawValue, &'static str> {
    Ok(RawValue::Bytes(Bytes(size(v)?)))
}

fn count(v: &str) -> Result<u64, &'static str> {
    limits::count(v).map_err(|_| "expected a number greater than zero, or infinity")
}

fn weighted(v: &str) -> Result<RawValue, &'static str> {
    Ok(RawValue::Weight(Weight(
        limits::weight(v).map_err(|_| "expected a weight from 1 to 10000")?,
    )))
}

fn device_and<'a>(v: &'a str, why: &'static str) -> Result<(String, &'a str), &'static str> {
    let (dev, n) = v
        .split_once(' ')
        .filter(|(d, _)| d.starts_with("/dev/") && !d.split('/').any(|c| c == ".."))
        .ok_or(why)?;
    Ok((dev.into(), n))
}

fn boolean(v: &str) -> Result<RawValue, &'static str> {
    match v {
        "yes" | "true" | "1" | "on" => Ok(RawValue::Bool(true)),
        "no" | "false" | "0" | "off" => Ok(RawValue::Bool(false)),
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

#[cfg(test)]
mod tests {
    use super::super::tests::Facts;
    use super::*;

    fn p(k: &str, v: &str) -> Result<(&'static str, RawValue), PropertyError> {
        parse(k, v, &Facts::default()).map(|r| (r.bus_name, r.value))
    }

    #[test]
    fn sizes() {
        assert_eq!(
            p("MemoryMax", "512M"),
            Ok(("MemoryMax", RawValue::Bytes(Bytes(512 << 20))))
        );
        assert_eq!(
            p("MemoryMax", "infinity"),
            Ok(("MemoryMax", RawValue::Bytes(Bytes(u64::MAX))))
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
            assert!(p("MemoryMax", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cpu_tasks_devices_and_text() {
        assert_eq!(
            p("CPUQuota", "150%"),
            Ok(("CPUQuotaPerSecUSec", RawValue::Usec(1_500_000)))
        );
        assert!(p("CPUQuota", "1.5").is_err());
        assert!(p("CPUWeight", "0").is_err());
        assert!(p("CPUWeight", "10001").is_err());
        assert_eq!(
            p("TasksMax", "200"),
            Ok(("TasksMax", RawValue::Count(Count(200))))
        );
        assert_eq!(
            p("RuntimeMaxSec", "5"),
            Ok(("RuntimeMaxUSec", RawValue::Usec(5_000_000)))
        );
        assert!(p("DeviceAllow", "/etc/passwd rw").is_err());
        assert!(p("DeviceAllow", "/dev/../etc rw").is_err());
        assert!(p("Description", "a\nb").is_err());
        assert!(p("IOReadBandwidthMax", "/dev/vda 10M").is_ok());
        assert!(p("IOReadBandwidthMax", "/dev/vda").is_err());
    }

    #[test]
    fn unknown_and_syntax() {
        assert!(matches!(p("Bogus", "1"), Err(PropertyError::Unknown(_))));
        assert_eq!(split_assignment("A=b=c"), Ok(("A", "b=c")));
        assert!(split_assignment("nokey").is_err());
        assert!(split_assignment("=v").is_err());
    }
}
