//! The `[network]` table of a definition (what `--network`, `-p/--publish`, `-P`, `--ip`,
//! `--ip6`, `--network-interface` and `--network-host-userns` stored) and its check into the
//! network engine's typed [`NetSpec`]. `--network-rate` is a resource key (`network-rate`),
//! parsed with the other limits and carried over here.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::limits::{Limit, Limits};
use crate::network::types::{parse_ip4, parse_ip6};
use crate::network::{NetSpec, NetworkMode, Rate};

/// How many `--publish` and `--network-interface` entries a definition may hold (the engine
/// bounds the expanded ports again).
pub const MAX_NETWORK_ENTRIES: usize = 256;

/// The `[network]` table, as the user wrote it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct NetworkSettings {
    /// `bridge` (default), `none`, `host`, `container:NAME`, `veth`, `macvlan:IFACE`, or the
    /// name of a network made with `berthctl network create` (`bridge:NAME` too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// Published ports, podman's `[HOSTIP:][HOSTPORT:]CONTAINERPORT[/tcp|/udp]` (ranges too).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub publish: Vec<String>,
    /// Publish the image's EXPOSE ports on free host ports (`-P`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub publish_all: bool,
    /// A fixed IPv4 address on the container's bridge network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// A fixed IPv6 address on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip6: Option<String>,
    /// Host interfaces moved into the container while it runs (`--network-interface`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<String>,
    /// `--network host` together with a user namespace, asked for explicitly
    /// (`--network-host-userns`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub host_userns: bool,
}

impl NetworkSettings {
    pub fn is_default(&self) -> bool {
        *self == NetworkSettings::default()
    }
}

/// A `[network]` value that is not valid, with the option it came from.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("{option}: {message}")]
pub struct NetworkSpecError {
    pub option: &'static str,
    pub message: String,
}

fn bad(option: &'static str, e: impl std::fmt::Display) -> NetworkSpecError {
    NetworkSpecError {
        option,
        message: e.to_string(),
    }
}

/// Check the table (with the `network-rate` limit and whether the container gets a user
/// namespace) into the engine's typed spec. The image's EXPOSE ports are added at start,
/// when the image is known ([`NetSpec::publish_all`]).
pub fn check(
    s: &NetworkSettings,
    limits: &Limits,
    user_namespace: bool,
) -> Result<NetSpec, NetworkSpecError> {
    if s.publish.len() > MAX_NETWORK_ENTRIES || s.interfaces.len() > MAX_NETWORK_ENTRIES {
        return Err(bad(
            "--publish/--network-interface",
            format!("at most {MAX_NETWORK_ENTRIES} entries"),
        ));
    }
    let mode: NetworkMode = match &s.mode {
        Some(m) => m.parse().map_err(|e| bad("--network", e))?,
        None => NetworkMode::default(),
    };
    let publish = s
        .publish
        .iter()
        .map(|p| p.parse().map_err(|e| bad("--publish", e)))
        .collect::<Result<Vec<crate::network::PortSpec>, _>>()?;
    if let Some(p) = publish
        .iter()
        .zip(&s.publish)
        .find(|(p, _)| p.host_ip.is_some_and(|ip| ip.is_ipv6() && ip.is_loopback()))
    {
        // Linux does not route ::1 out of the host's loopback (there is no route_localnet
        // for IPv6), so such a forward would be accepted and never answer.
        return Err(bad(
            "--publish",
            format!(
                "{}: publishing on [::1] is not supported (IPv6 has no route_localnet); use \
                 127.0.0.1 or no host address",
                p.1
            ),
        ));
    }
    let interfaces = s
        .interfaces
        .iter()
        .map(|i| i.parse().map_err(|e| bad("--network-interface", e)))
        .collect::<Result<Vec<_>, _>>()?;
    let rate = limits.of_key("network-rate").find_map(|l| match l {
        Limit::NetworkRate(r) => Some(Rate { bytes_per_sec: r.0 }),
        _ => None,
    });
    let spec = NetSpec {
        mode,
        ip4: s
            .ip
            .as_deref()
            .map(parse_ip4)
            .transpose()
            .map_err(|e| bad("--ip", e))?,
        ip6: s
            .ip6
            .as_deref()
            .map(parse_ip6)
            .transpose()
            .map_err(|e| bad("--ip6", e))?,
        publish,
        publish_all: Vec::new(),
        rate,
        interfaces,
        allow_host_with_userns: s.host_userns,
    };
    if s.publish_all && !matches!(spec.mode, NetworkMode::Bridge(_)) {
        return Err(bad(
            "--publish-all",
            format!(
                "publishing ports needs a bridge network, not --network {}",
                spec.mode
            ),
        ));
    }
    if spec.mode == NetworkMode::Host && user_namespace && !s.host_userns {
        // The engine refuses it too; here the user learns which flag decides.
        return Err(bad(
            "--network",
            "host with a user namespace is refused (the container's root would hold no \
             privilege over the host's network, yet see and use all of it): add \
             --userns=host, or --network-host-userns to ask for it explicitly",
        ));
    }
    spec.check(user_namespace)
        .map_err(|e| bad("--network", e))?;
    Ok(spec)
}

/// The image's EXPOSE entries (`80/tcp`, `53/udp`, `8080`) as ports to publish with `-P`;
/// entries berth cannot publish (`sctp`, ranges, junk) are returned separately for a warning.
pub fn exposed_ports(exposed: &[String]) -> (Vec<(u16, crate::network::Proto)>, Vec<String>) {
    use crate::network::Proto;
    let mut ok = Vec::new();
    let mut skipped = Vec::new();
    for e in exposed {
        let (port, proto) = match e.split_once('/') {
            Some((p, "tcp")) | Some((p, "TCP")) => (p, Proto::Tcp),
            Some((p, "udp")) | Some((p, "UDP")) => (p, Proto::Udp),
            Some(_) => {
                skipped.push(e.clone());
                continue;
            }
            None => (e.as_str(), Proto::Tcp),
        };
        match port.parse::<u16>() {
            Ok(p) if p > 0 && !ok.contains(&(p, proto)) => ok.push((p, proto)),
            Ok(p) if p > 0 => {}
            _ => skipped.push(e.clone()),
        }
    }
    (ok, skipped)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::Proto;

    fn with_rate(r: u64) -> Limits {
        Limits(vec![Limit::NetworkRate(super::super::limits::Rate(r))])
    }

    #[test]
    fn the_default_is_the_default_bridge_and_every_field_is_typed() {
        let s = check(&NetworkSettings::default(), &Limits::default(), true).unwrap();
        assert_eq!(s.mode, NetworkMode::default());
        assert_eq!(s.mode.to_string(), "bridge");
        let n = NetworkSettings {
            mode: Some("mynet".into()),
            publish: vec!["127.0.0.1:8080:80".into(), "53/udp".into()],
            ip: Some("10.90.0.7".into()),
            ..Default::default()
        };
        let s = check(&n, &with_rate(125_000), true).unwrap();
        assert_eq!(s.mode.to_string(), "bridge:mynet");
        assert_eq!(s.publish.len(), 2);
        assert_eq!(s.publish[1].proto, Proto::Udp);
        assert_eq!(s.ip4, Some("10.90.0.7".parse().unwrap()));
        assert_eq!(s.rate.unwrap().bytes_per_sec, 125_000);
    }

    #[test]
    fn bad_values_name_their_option() {
        let cases: Vec<(NetworkSettings, &str)> = vec![
            (
                NetworkSettings {
                    mode: Some("container:".into()),
                    ..Default::default()
                },
                "--network",
            ),
            (
                NetworkSettings {
                    publish: vec!["70000:80".into()],
                    ..Default::default()
                },
                "out of range",
            ),
            (
                NetworkSettings {
                    publish: vec!["[::1]:8080:80".into()],
                    ..Default::default()
                },
                "[::1]",
            ),
            (
                NetworkSettings {
                    ip: Some("10.0.0.300".into()),
                    ..Default::default()
                },
                "--ip",
            ),
            (
                NetworkSettings {
                    interfaces: vec!["a/b".into()],
                    ..Default::default()
                },
                "--network-interface",
            ),
            (
                NetworkSettings {
                    mode: Some("none".into()),
                    publish: vec!["80".into()],
                    ..Default::default()
                },
                "bridge network",
            ),
            (
                NetworkSettings {
                    mode: Some("host".into()),
                    publish_all: true,
                    ..Default::default()
                },
                "--publish-all",
            ),
        ];
        for (n, want) in cases {
            let e = check(&n, &Limits::default(), true).unwrap_err().to_string();
            assert!(e.contains(want), "{e:?} lacks {want:?}");
        }
    }

    #[test]
    fn host_with_a_user_namespace_needs_the_explicit_flag() {
        let mut n = NetworkSettings {
            mode: Some("host".into()),
            ..Default::default()
        };
        let e = check(&n, &Limits::default(), true).unwrap_err().to_string();
        assert!(
            e.contains("--network-host-userns") && e.contains("--userns=host"),
            "{e}"
        );
        assert!(check(&n, &Limits::default(), false).is_ok());
        n.host_userns = true;
        assert!(check(&n, &Limits::default(), true).is_ok());
        // A rate needs a veth of the container's own.
        assert!(check(&n, &with_rate(1000), false).is_err());
    }

    #[test]
    fn expose_entries_become_ports() {
        let (ok, skipped) = exposed_ports(&[
            "80/tcp".into(),
            "53/udp".into(),
            "8080".into(),
            "80/tcp".into(),
            "9/sctp".into(),
            "0/tcp".into(),
        ]);
        assert_eq!(ok, [(80, Proto::Tcp), (53, Proto::Udp), (8080, Proto::Tcp)]);
        assert_eq!(skipped, ["9/sctp", "0/tcp"]);
    }
}
