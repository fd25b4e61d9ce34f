//! berth's own nftables table, `inet berth`, fed to `nft -f -`.
//!
//! Why the `nft` binary and not netlink: nftables' netlink protocol is a bytecode of
//! expressions (set lookups with concatenations, NAT with maps) that the Rust netlink crates
//! cover only partly; `nft -f -` is the reference compiler of that bytecode and applies a whole
//! script as one kernel transaction (all of it or none). It is used to (re)build the whole
//! table, at berthd start and on `network create/rm`. Measured here: one `nft -f -` costs
//! 7–20 ms on this (loaded, 2-core) machine, fork+exec plus a cache fetch; so the one
//! per-container change, a container's published ports, goes to the kernel as a small
//! nfnetlink batch instead ([`super::nftnl`]). A bridge start without published ports makes
//! no nftables change at all: NAT is per network (set elements in the table build).
//!
//! The table's shape never changes per container: every per-network and per-container fact is
//! an element of a set or map, so the rules stay O(1) per packet however many containers run,
//! and adding or removing a container is `add element` / `delete element`, never a rule handle.
//! berth only ever touches `inet berth`: it never lists, flushes or edits another table, and a
//! host firewall keeps its own verdicts (a `drop` in another table's forward hook still
//! drops).
//!
//! Loopback (`curl 127.0.0.1:8080` on the host): the output hook DNATs locally originated
//! packets too; a packet from 127.0.0.1 may only leave through a device with `route_localnet`
//! (set on berth's bridges only) and is masqueraded to the bridge address on its way out;
//! the `input` chain drops packets from the bridges addressed to 127.0.0.0/8 that open a
//! connection (replies to the host's own connections pass), the hole `route_localnet` would
//! otherwise open (CVE-2020-8558). IPv6 has no such switch: `[::1]`
//! cannot be DNATed to another host, so `[::1]:PORT` is not forwarded (documented limit).

use std::io::Write as _;
use std::net::IpAddr;
use std::process::{Command, Stdio};

use super::error::{NetError, Result};
use super::store::NetworkDef;
use super::types::Proto;

pub const TABLE: &str = "berth";

/// One published port as one map element: host (address?, proto, port) to container address
/// and port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Forward {
    /// A specific host address, or any local address.
    pub host_ip: Option<IpAddr>,
    pub host_port: u16,
    pub proto: Proto,
    pub container_ip: IpAddr,
    pub container_port: u16,
}

impl Forward {
    pub(crate) fn map(&self) -> &'static str {
        match (self.container_ip.is_ipv4(), self.host_ip.is_some()) {
            (true, false) => "fwd4",
            (true, true) => "fwd4h",
            (false, false) => "fwd6",
            (false, true) => "fwd6h",
        }
    }

    fn key(&self) -> String {
        match self.host_ip {
            Some(ip) => format!("{ip} . {} . {}", self.proto, self.host_port),
            None => format!("{} . {}", self.proto, self.host_port),
        }
    }

    fn element(&self) -> String {
        format!(
            "{} : {} . {}",
            self.key(),
            self.container_ip,
            self.container_port
        )
    }
}

/// The whole table: its fixed chains and the elements for `networks` and `forwards`.
/// Applied as `add table; delete table; table {...}` in one transaction, so rebuilding it is
/// atomic (no moment without NAT) and works whether or not it existed.
pub fn full_script(networks: &[&NetworkDef], forwards: &[Forward]) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "add table inet {TABLE}\ndelete table inet {TABLE}\n"
    ));
    let elems = |v: Vec<String>| {
        if v.is_empty() {
            String::new()
        } else {
            format!(" elements = {{ {} }};", v.join(", "))
        }
    };
    let bridges = elems(
        networks
            .iter()
            .map(|n| format!("\"{}\"", n.bridge))
            .collect(),
    );
    let internal = elems(
        networks
            .iter()
            .filter(|n| n.internal)
            .map(|n| format!("\"{}\"", n.bridge))
            .collect(),
    );
    // With br_netfilter loaded (docker loads it; its sysctls default to on in every netns),
    // traffic between two ports of one bridge passes the forward hook as bridge → bridge:
    // accepted first, before the isolation and internal drops.
    let same = elems(
        networks
            .iter()
            .map(|n| format!("\"{0}\" . \"{0}\"", n.bridge))
            .collect(),
    );
    let masq4 = elems(
        networks
            .iter()
            .filter(|n| !n.internal)
            .map(|n| n.subnet4.to_string())
            .collect(),
    );
    let masq6 = elems(
        networks
            .iter()
            .filter(|n| !n.internal)
            .filter_map(|n| n.subnet6.map(|c| c.to_string()))
            .collect(),
    );
    let fwd = |m: &str| {
        elems(
            forwards
                .iter()
                .filter(|f| f.map() == m)
                .map(|f| f.element())
                .collect(),
        )
    };
    s.push_str(&format!(
        r#"table inet {TABLE} {{
  comment "berth: managed by berthd, rebuilt at its start; do not edit"
  set bridges {{ type ifname;{bridges} }}
  set internal {{ type ifname;{internal} }}
  set same {{ type ifname . ifname;{same} }}
  set masq4 {{ type ipv4_addr; flags interval;{masq4} }}
  set masq6 {{ type ipv6_addr; flags interval;{masq6} }}
  map fwd4 {{ type inet_proto . inet_service : ipv4_addr . inet_service;{fwd4} }}
  map fwd4h {{ type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service;{fwd4h} }}
  map fwd6 {{ type inet_proto . inet_service : ipv6_addr . inet_service;{fwd6} }}
  map fwd6h {{ type ipv6_addr . inet_proto . inet_service : ipv6_addr . inet_service;{fwd6h} }}
  chain ports {{
    meta nfproto ipv4 dnat ip to ip daddr . meta l4proto . th dport map @fwd4h
    meta nfproto ipv4 dnat ip to meta l4proto . th dport map @fwd4
    meta nfproto ipv6 dnat ip6 to ip6 daddr . meta l4proto . th dport map @fwd6h
    meta nfproto ipv6 dnat ip6 to meta l4proto . th dport map @fwd6
  }}
  chain prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
    fib daddr type local jump ports
  }}
  chain output {{
    type nat hook output priority -100; policy accept;
    fib daddr type local jump ports
  }}
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    oifname @bridges ip saddr 127.0.0.0/8 masquerade
    ct status dnat oifname @bridges ip saddr @masq4 masquerade
    ct status dnat oifname @bridges ip6 saddr @masq6 masquerade
    ip saddr @masq4 ip daddr != @masq4 masquerade
    ip6 saddr @masq6 ip6 daddr != @masq6 masquerade
  }}
  chain forward {{
    type filter hook forward priority filter; policy accept;
    meta iifname . meta oifname @same accept
    iifname @internal drop
    oifname @internal drop
    iifname @bridges oifname @bridges ct status & dnat == 0 drop
  }}
  chain input {{
    type filter hook input priority filter; policy accept;
    iifname @bridges ip daddr 127.0.0.0/8 ct direction original drop
  }}
}}
"#,
        fwd4 = fwd("fwd4"),
        fwd4h = fwd("fwd4h"),
        fwd6 = fwd("fwd6"),
        fwd6h = fwd("fwd6h"),
    ));
    s
}

/// `add element` (or `delete element`) lines for `forwards`, one transaction.
pub fn elements_script(add: bool, forwards: &[Forward]) -> String {
    let verb = if add { "add" } else { "delete" };
    let mut s = String::new();
    for f in forwards {
        s.push_str(&format!(
            "{verb} element inet {TABLE} {} {{ {} }}",
            f.map(),
            f.element()
        ));
        s.push('\n');
    }
    s
}

/// Run `nft -f -` with `script` as one transaction.
pub fn apply(op: &str, script: &str) -> Result<()> {
    if script.is_empty() {
        return Ok(());
    }
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| NetError::Nft {
            op: op.to_string(),
            detail: format!("cannot run nft (package nftables): {e}"),
        })?;
    let written = child
        .stdin
        .take()
        .expect("piped")
        .write_all(script.as_bytes());
    let out = child.wait_with_output().map_err(|e| NetError::Nft {
        op: op.to_string(),
        detail: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(NetError::Nft {
            op: op.to_string(),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    written.map_err(|e| NetError::Nft {
        op: op.to_string(),
        detail: format!("writing the script: {e}"),
    })
}

/// The forwards currently in the table's maps (for reconcile), from `nft -j list table`.
/// A missing table reads as no forwards.
pub fn list_forwards() -> Result<Vec<Forward>> {
    let out = Command::new("nft")
        .args(["-j", "list", "table", "inet", TABLE])
        .stderr(Stdio::null())
        .output()
        .map_err(|e| NetError::Nft {
            op: "listing the berth table".into(),
            detail: e.to_string(),
        })?;
    if !out.status.success() {
        return Ok(Vec::new());
    }
    parse_forwards(&out.stdout)
}

fn parse_forwards(json: &[u8]) -> Result<Vec<Forward>> {
    let bad = |d: String| NetError::Nft {
        op: "reading the berth table".into(),
        detail: d,
    };
    let v: serde_json::Value = serde_json::from_slice(json).map_err(|e| bad(e.to_string()))?;
    let mut out = Vec::new();
    let items = v["nftables"].as_array().cloned().unwrap_or_default();
    for it in items {
        let Some(map) = it.get("map") else { continue };
        let name = map["name"].as_str().unwrap_or("");
        let with_ip = match name {
            "fwd4" | "fwd6" => false,
            "fwd4h" | "fwd6h" => true,
            _ => continue,
        };
        for e in map["elem"].as_array().cloned().unwrap_or_default() {
            let (Some(k), Some(val)) = (e[0]["concat"].as_array(), e[1]["concat"].as_array())
            else {
                return Err(bad(format!("unexpected element {e}")));
            };
            let off = usize::from(with_ip);
            let host_ip = if with_ip {
                Some(
                    k[0].as_str()
                        .and_then(|s| s.parse().ok())
                        .ok_or_else(|| bad(format!("bad key {e}")))?,
                )
            } else {
                None
            };
            let proto = match k.get(off).and_then(|p| p.as_str()) {
                Some("tcp") => Proto::Tcp,
                Some("udp") => Proto::Udp,
                _ => return Err(bad(format!("bad protocol in {e}"))),
            };
            let port = |x: Option<&serde_json::Value>| {
                x.and_then(|p| p.as_u64())
                    .and_then(|p| u16::try_from(p).ok())
                    .ok_or_else(|| bad(format!("bad port in {e}")))
            };
            out.push(Forward {
                host_ip,
                host_port: port(k.get(off + 1))?,
                proto,
                container_ip: val[0]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| bad(format!("bad address in {e}")))?,
                container_port: port(val.get(1))?,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(name: &str, bridge: &str, s4: &str, s6: Option<&str>, internal: bool) -> NetworkDef {
        NetworkDef {
            name: name.parse().unwrap(),
            bridge: bridge.parse().unwrap(),
            subnet4: s4.parse().unwrap(),
            subnet6: s6.map(|s| s.parse().unwrap()),
            internal,
        }
    }

    #[test]
    fn script_has_elements_per_network_and_forward() {
        let a = net(
            "berth",
            "berth0",
            "10.89.0.0/16",
            Some("fd00:1::/64"),
            false,
        );
        let b = net("lan", "berth1", "10.100.0.0/24", None, true);
        let f = Forward {
            host_ip: None,
            host_port: 8080,
            proto: Proto::Tcp,
            container_ip: "10.89.0.2".parse().unwrap(),
            container_port: 80,
        };
        let g = Forward {
            host_ip: Some("127.0.0.1".parse().unwrap()),
            proto: Proto::Udp,
            ..f
        };
        let s = full_script(&[&a, &b], &[f, g]);
        assert!(
            s.contains(r#"set bridges { type ifname; elements = { "berth0", "berth1" }; }"#),
            "{s}"
        );
        assert!(s.contains(r#"set internal { type ifname; elements = { "berth1" }; }"#));
        assert!(
            s.contains(r#"elements = { "berth0" . "berth0", "berth1" . "berth1" }"#),
            "{s}"
        );
        assert!(s.contains("elements = { 10.89.0.0/16 }"));
        assert!(
            !s.contains("10.100.0.0/24"),
            "internal networks are not masqueraded"
        );
        assert!(s.contains("elements = { fd00:1::/64 }"));
        assert!(s.contains("elements = { tcp . 8080 : 10.89.0.2 . 80 }"));
        assert!(s.contains("elements = { 127.0.0.1 . udp . 8080 : 10.89.0.2 . 80 }"));
        assert_eq!(
            elements_script(false, &[g]),
            "delete element inet berth fwd4h { 127.0.0.1 . udp . 8080 : 10.89.0.2 . 80 }\n"
        );
    }

    #[test]
    fn parses_nft_json() {
        let j = br#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
          {"map": {"family": "inet", "name": "fwd4", "table": "berth", "elem": [[{"concat": ["udp", 53]}, {"concat": ["10.89.0.3", 53]}]]}},
          {"map": {"family": "inet", "name": "fwd6h", "table": "berth", "elem": [[{"concat": ["fd00::1", "tcp", 80]}, {"concat": ["fd00::2", 8080]}]]}},
          {"set": {"family": "inet", "name": "masq4", "table": "berth"}}]}"#;
        let v = parse_forwards(j).unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].proto, Proto::Udp);
        assert_eq!(v[0].host_ip, None);
        assert_eq!(v[1].host_ip, Some("fd00::1".parse().unwrap()));
        assert_eq!((v[1].host_port, v[1].container_port), (80, 8080));
        assert!(parse_forwards(b"not json").is_err());
    }
}
