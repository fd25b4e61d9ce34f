//! `--ulimit NAME=SOFT[:HARD]`, as docker and podman spell it: the payload's resource limits.
//! Containers get limits of their own (never berthd's), [`DEFAULTS`] unless the definition
//! says otherwise.

use nix::sys::resource::Resource;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// A resource limit a container may set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Rlimit {
    As,
    Core,
    Cpu,
    Data,
    Fsize,
    Locks,
    Memlock,
    Msgqueue,
    Nice,
    Nofile,
    Nproc,
    Rss,
    Rtprio,
    Rttime,
    Sigpending,
    Stack,
}

const NAMES: &[(&str, Rlimit)] = &[
    ("as", Rlimit::As),
    ("core", Rlimit::Core),
    ("cpu", Rlimit::Cpu),
    ("data", Rlimit::Data),
    ("fsize", Rlimit::Fsize),
    ("locks", Rlimit::Locks),
    ("memlock", Rlimit::Memlock),
    ("msgqueue", Rlimit::Msgqueue),
    ("nice", Rlimit::Nice),
    ("nofile", Rlimit::Nofile),
    ("nproc", Rlimit::Nproc),
    ("rss", Rlimit::Rss),
    ("rtprio", Rlimit::Rtprio),
    ("rttime", Rlimit::Rttime),
    ("sigpending", Rlimit::Sigpending),
    ("stack", Rlimit::Stack),
];

impl Rlimit {
    pub fn resource(self) -> Resource {
        match self {
            Rlimit::As => Resource::RLIMIT_AS,
            Rlimit::Core => Resource::RLIMIT_CORE,
            Rlimit::Cpu => Resource::RLIMIT_CPU,
            Rlimit::Data => Resource::RLIMIT_DATA,
            Rlimit::Fsize => Resource::RLIMIT_FSIZE,
            Rlimit::Locks => Resource::RLIMIT_LOCKS,
            Rlimit::Memlock => Resource::RLIMIT_MEMLOCK,
            Rlimit::Msgqueue => Resource::RLIMIT_MSGQUEUE,
            Rlimit::Nice => Resource::RLIMIT_NICE,
            Rlimit::Nofile => Resource::RLIMIT_NOFILE,
            Rlimit::Nproc => Resource::RLIMIT_NPROC,
            Rlimit::Rss => Resource::RLIMIT_RSS,
            Rlimit::Rtprio => Resource::RLIMIT_RTPRIO,
            Rlimit::Rttime => Resource::RLIMIT_RTTIME,
            Rlimit::Sigpending => Resource::RLIMIT_SIGPENDING,
            Rlimit::Stack => Resource::RLIMIT_STACK,
        }
    }

    pub fn name(self) -> &'static str {
        NAMES
            .iter()
            .find(|(_, r)| *r == self)
            .map_or("?", |(n, _)| n)
    }
}

/// One limit: soft and hard values (`u64::MAX` is unlimited).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ulimit {
    pub resource: Rlimit,
    pub soft: u64,
    pub hard: u64,
}

/// What every container gets unless it says otherwise: systemd's defaults for services
/// (open files soft 1024 for select(2) users, hard 524288), and no core dumps.
pub const DEFAULTS: &[Ulimit] = &[
    Ulimit {
        resource: Rlimit::Nofile,
        soft: 1024,
        hard: 524_288,
    },
    Ulimit {
        resource: Rlimit::Core,
        soft: 0,
        hard: u64::MAX,
    },
];

#[derive(Debug, Error, PartialEq, Eq)]
pub enum UlimitError {
    #[error("ulimit {0:?} is not NAME=SOFT[:HARD]")]
    Syntax(String),
    #[error("unknown ulimit {0:?} (known: {known})", known = NAMES.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", "))]
    Unknown(String),
    #[error("ulimit {0:?}: values are numbers or unlimited, and SOFT may not exceed HARD")]
    Value(String),
    #[error("ulimit {0} is given twice")]
    Twice(String),
}

fn value(v: &str) -> Option<u64> {
    match v {
        "unlimited" | "infinity" | "-1" => Some(u64::MAX),
        _ => v.parse().ok(),
    }
}

/// Parse one `NAME=SOFT[:HARD]` (HARD defaults to SOFT, as docker does).
pub fn parse(s: &str) -> Result<Ulimit, UlimitError> {
    let (name, vals) = s
        .split_once('=')
        .ok_or_else(|| UlimitError::Syntax(s.into()))?;
    let resource = NAMES
        .iter()
        .find(|(n, _)| *n == name.trim_start_matches("RLIMIT_").to_ascii_lowercase())
        .map(|(_, r)| *r)
        .ok_or_else(|| UlimitError::Unknown(name.into()))?;
    let (soft, hard) = vals.split_once(':').unwrap_or((vals, vals));
    let (Some(soft), Some(hard)) = (value(soft), value(hard)) else {
        return Err(UlimitError::Value(s.into()));
    };
    if soft > hard {
        return Err(UlimitError::Value(s.into()));
    }
    Ok(Ulimit {
        resource,
        soft,
        hard,
    })
}

/// The container's limits: [`DEFAULTS`], replaced per resource by the ones given.
pub fn resolve(given: &[String]) -> Result<Vec<Ulimit>, UlimitError> {
    let mut out: Vec<Ulimit> = DEFAULTS.to_vec();
    let mut seen = Vec::new();
    for s in given {
        let u = parse(s)?;
        if seen.contains(&u.resource) {
            return Err(UlimitError::Twice(u.resource.name().into()));
        }
        seen.push(u.resource);
        out.retain(|x| x.resource != u.resource);
        out.push(u);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_forms() {
        assert_eq!(
            parse("nofile=1024:4096"),
            Ok(Ulimit {
                resource: Rlimit::Nofile,
                soft: 1024,
                hard: 4096
            })
        );
        assert_eq!(parse("nproc=100").unwrap().hard, 100);
        assert_eq!(parse("core=unlimited").unwrap().soft, u64::MAX);
        assert_eq!(parse("RLIMIT_STACK=8192").unwrap().resource, Rlimit::Stack);
        for bad in ["nofile", "bogus=1", "nofile=2:1", "nofile=x", "nofile=1:y"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn given_limits_replace_the_defaults() {
        let r = resolve(&["nofile=10:20".into()]).unwrap();
        assert_eq!(r.iter().filter(|u| u.resource == Rlimit::Nofile).count(), 1);
        assert!(r.contains(&Ulimit {
            resource: Rlimit::Nofile,
            soft: 10,
            hard: 20
        }));
        assert!(r.iter().any(|u| u.resource == Rlimit::Core));
        assert!(resolve(&["nofile=1".into(), "nofile=2".into()]).is_err());
    }
}
