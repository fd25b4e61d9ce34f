//! Container definitions (what `create` records) and the scope properties a user may set.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use thiserror::Error;

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
    /// Scope properties (`KEY=VALUE` as the user wrote them; checked by [`parse_property`]).
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

/// A typed value for one systemd unit property.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PropValue {
    U64(u64),
    Str(String),
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

type Parser = fn(&str) -> Result<(&'static str, PropValue), &'static str>;

/// The properties accepted, each with its parser to the systemd property and value.
const KNOWN: &[(&str, Parser)] = &[
    ("MemoryMax", |v| {
        Ok(("MemoryMax", PropValue::U64(bytes(v)?)))
    }),
    ("MemoryHigh", |v| {
        Ok(("MemoryHigh", PropValue::U64(bytes(v)?)))
    }),
    ("MemoryLow", |v| {
        Ok(("MemoryLow", PropValue::U64(bytes(v)?)))
    }),
    ("MemorySwapMax", |v| {
        Ok(("MemorySwapMax", PropValue::U64(bytes(v)?)))
    }),
    ("CPUQuota", |v| {
        Ok(("CPUQuotaPerSecUSec", PropValue::U64(percent_usec(v)?)))
    }),
    ("CPUWeight", |v| {
        Ok(("CPUWeight", PropValue::U64(weight(v)?)))
    }),
    ("IOWeight", |v| Ok(("IOWeight", PropValue::U64(weight(v)?)))),
    ("TasksMax", |v| Ok(("TasksMax", PropValue::U64(count(v)?)))),
    ("Description", |v| {
        Ok(("Description", PropValue::Str(text(v)?)))
    }),
];

/// Check `KEY=VALUE` and turn it into the systemd property name and typed value.
pub fn parse_property(key: &str, value: &str) -> Result<(&'static str, PropValue), PropertyError> {
    let (_, parse) = KNOWN
        .iter()
        .find(|(k, _)| *k == key)
        .ok_or_else(|| PropertyError::Unknown(key.into()))?;
    parse(value).map_err(|why| PropertyError::BadValue {
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

fn bytes(v: &str) -> Result<u64, &'static str> {
    if v == "infinity" {
        return Ok(u64::MAX);
    }
    let (num, mult) = match v.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m: u64 = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => return Err("expected a size like 512M, 2G or infinity"),
            };
            (&v[..i], m)
        }
        _ => (v, 1),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| "expected a size like 512M, 2G or infinity")?;
    let b = n.checked_mul(mult).ok_or("size is too large")?;
    if b == 0 {
        Err("size must be greater than zero")
    } else {
        Ok(b)
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

fn weight(v: &str) -> Result<u64, &'static str> {
    match v.parse::<u64>() {
        Ok(n @ 1..=10_000) => Ok(n),
        _ => Err("expected a weight from 1 to 10000"),
    }
}

fn count(v: &str) -> Result<u64, &'static str> {
    if v == "infinity" {
        return Ok(u64::MAX);
    }
    match v.parse::<u64>() {
        Ok(0) => Err("must be greater than zero"),
        Ok(n) => Ok(n),
        Err(_) => Err("expected a number or infinity"),
    }
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
            properties: [("TasksMax".to_string(), "10".to_string())].into(),
            created_at: 1,
        };
        let s = toml::to_string(&d).unwrap();
        assert_eq!(toml::from_str::<Definition>(&s).unwrap(), d);
        assert!(toml::from_str::<Definition>("name='x'\ncreated_at=1\nbogus=1").is_err());
        assert_eq!(d.hostname(), "web");
    }
}
