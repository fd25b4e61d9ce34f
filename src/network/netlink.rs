//! Links, addresses, routes and traffic control through rtnetlink (never by running `ip`).
//!
//! A netlink socket acts on the network namespace its creating thread was in when `socket(2)`
//! ran, for its whole life. So:
//! - [`Nl::current`] opens a socket in the caller's namespace (berthd: the host's).
//! - [`Nl::in_netns`] opens one inside a container's namespace without ever moving berthd's
//!   runtime thread: a short-lived helper thread `setns(2)`s into the namespace, creates the
//!   socket (registered with the caller's tokio runtime) and exits; the socket then lives on
//!   in the runtime and keeps acting on the container's namespace. The helper thread is the
//!   only thread that ever changes namespace, and it dies right after.
//!
//! The veth pair is made with one `RTM_NEWLINK`: host side enslaved (`IFLA_MASTER`) and up, the
//! peer named `eth0`, created directly in the container's namespace (`IFLA_NET_NS_FD` inside
//! `VETH_INFO_PEER`, see `veth_newlink()` in drivers/net/veth.c) and up.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use futures_util::TryStreamExt;
use nix::sched::CloneFlags;
use rtnetlink::packet_core::{
    DefaultNla, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload,
};
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags};
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, InfoMacVlan, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
    MacVlanMode,
};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteType};
use rtnetlink::packet_route::tc::{TcAttribute, TcHandle, TcHeader, TcMessage, TcOption};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::{Handle, LinkBridge, LinkMessageBuilder, LinkUnspec, RouteMessageBuilder};
use tokio::task::JoinHandle;

use super::error::{NetError, Result};
use super::types::{Cidr, Rate};

mod unlink;

/// A locally administered unicast MAC derived from an IPv4 address (02:62:a.b.c.d, "b" for
/// berth): a container keeps its MAC with its address across restarts, so its peers' ARP
/// entries stay right, as docker does.
pub fn mac_for(ip: Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x02, 0x62, o[0], o[1], o[2], o[3]]
}

/// `ENOENT`/`ENODEV` from the kernel: the object is already gone.
fn is_gone(e: &NetError) -> bool {
    matches!(
        e.errno(),
        Some(libc::ENOENT) | Some(libc::ENODEV) | Some(libc::ESRCH)
    )
}

/// One rtnetlink connection, bound to one network namespace.
pub struct Nl {
    handle: Handle,
    task: JoinHandle<()>,
    /// The namespace, unless it is berthd's own.
    netns: Option<Arc<OwnedFd>>,
}

impl Drop for Nl {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What [`Nl::links`] reports of a link.
#[derive(Debug, Clone)]
pub struct LinkSummary {
    pub index: u32,
    pub name: String,
    pub master: Option<u32>,
    pub alias: Option<String>,
    pub kind: Option<String>,
    pub up: bool,
}

/// Byte and packet counters of one link, as the kernel counts them on that link.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub tx_packets: u64,
}

impl Nl {
    /// A connection in the calling thread's network namespace. Must run inside a tokio runtime.
    pub fn current() -> Result<Nl> {
        let (conn, handle, _) =
            rtnetlink::new_connection().map_err(|source| NetError::NetlinkIo {
                op: "opening a netlink socket".into(),
                source,
            })?;
        Ok(Nl {
            handle,
            task: tokio::spawn(conn),
            netns: None,
        })
    }

    /// A connection in the network namespace `netns` (e.g. `/proc/PID/ns/net` of a container's
    /// PID 1), made from a throw-away thread so the runtime's threads never change namespace.
    pub async fn in_netns(netns: BorrowedFd<'_>) -> Result<Nl> {
        let kept = Arc::new(
            netns
                .try_clone_to_owned()
                .map_err(|source| NetError::NetlinkIo {
                    op: "duplicating the netns descriptor".into(),
                    source,
                })?,
        );
        let fd = kept.clone();
        let rt = tokio::runtime::Handle::current();
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("berth-netns".into())
            .spawn(move || {
                let made = nix::sched::setns(fd.as_fd(), CloneFlags::CLONE_NEWNET)
                    .map_err(NetError::Setns)
                    .and_then(|()| {
                        let _guard = rt.enter();
                        rtnetlink::new_connection().map_err(|source| NetError::NetlinkIo {
                            op: "opening a netlink socket in the container's netns".into(),
                            source,
                        })
                    });
                // The receiver only goes away if the caller was cancelled; nothing to report to.
                if tx.send(made).is_err() {}
            })
            .map_err(|source| NetError::NetlinkIo {
                op: "spawning the netns thread".into(),
                source,
            })?;
        let (conn, handle, _) = rx.await.map_err(|_| NetError::NetlinkIo {
            op: "netns thread died".into(),
            source: std::io::Error::other("no answer"),
        })??;
        Ok(Nl {
            handle,
            task: tokio::spawn(conn),
            netns: Some(kept),
        })
    }

    /// Send one request that expects only an ACK.
    async fn ack(
        &self,
        op: impl Fn() -> String,
        msg: RouteNetlinkMessage,
        create: bool,
    ) -> Result<()> {
        let mut req = NetlinkMessage::from(msg);
        req.header.flags = NLM_F_REQUEST | NLM_F_ACK;
        if create {
            req.header.flags |= NLM_F_CREATE | NLM_F_EXCL;
        }
        let mut handle = self.handle.clone();
        let mut resp = handle
            .request(req)
            .map_err(|e| NetError::netlink(op(), e))?;
        use futures_util::StreamExt;
        while let Some(m) = resp.next().await {
            if let NetlinkPayload::Error(err) = m.payload
                && err.code.is_some()
            {
                return Err(NetError::netlink(op(), rtnetlink::Error::NetlinkError(err)));
            }
        }
        Ok(())
    }

    pub async fn link_by_name(&self, name: &str) -> Result<Option<LinkSummary>> {
        let mut s = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match s.try_next().await {
            Ok(Some(m)) => Ok(Some(summary(&m))),
            Ok(None) => Ok(None),
            Err(e) => {
                let e = NetError::netlink(format!("looking up link {name}"), e);
                if is_gone(&e) { Ok(None) } else { Err(e) }
            }
        }
    }

    pub async fn links(&self) -> Result<Vec<LinkSummary>> {
        let msgs: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| NetError::netlink("listing links", e))?;
        Ok(msgs.iter().map(summary).collect())
    }

    pub async fn link_stats(&self, index: u32) -> Result<LinkStats> {
        let mut s = self.handle.link().get().match_index(index).execute();
        let m = s
            .try_next()
            .await
            .map_err(|e| NetError::netlink(format!("reading link {index}"), e))?;
        let mut out = LinkStats::default();
        if let Some(m) = m {
            for a in &m.attributes {
                if let LinkAttribute::Stats64(st) = a {
                    out = LinkStats {
                        rx_bytes: st.rx_bytes,
                        tx_bytes: st.tx_bytes,
                        rx_packets: st.rx_packets,
                        tx_packets: st.tx_packets,
                    };
                }
            }
        }
        Ok(out)
    }

    /// Create the bridge `name` if missing, bring it up, and add the addresses it lacks.
    /// Returns its index. STP stays off (the default), so a new port forwards at once.
    ///
    /// The bridge gets the fixed MAC `mac`: without one it takes the lowest MAC of its ports,
    /// which changes as containers come and go and leaves stale ARP entries for the gateway
    /// in every container.
    pub async fn ensure_bridge(
        &self,
        name: &str,
        addrs: &[(IpAddr, u8)],
        mac: [u8; 6],
    ) -> Result<u32> {
        let link = match self.link_by_name(name).await? {
            Some(l) => l,
            None => {
                let msg = LinkBridge::new(name).address(mac.to_vec()).up().build();
                match self
                    .ack(
                        || format!("creating bridge {name}"),
                        RouteNetlinkMessage::NewLink(msg),
                        true,
                    )
                    .await
                {
                    Ok(()) => {}
                    Err(e) if e.errno() == Some(libc::EEXIST) => {}
                    Err(e) => return Err(e),
                }
                self.link_by_name(name)
                    .await?
                    .ok_or_else(|| NetError::NoSuchInterface(name.to_string()))?
            }
        };
        if !link.up {
            self.set_up(link.index).await?;
        }
        let have = self.addresses(link.index).await?;
        for &(ip, prefix) in addrs {
            if !have.contains(&ip) {
                match self.add_address(link.index, ip, prefix).await {
                    Ok(()) => {}
                    Err(e) if e.errno() == Some(libc::EEXIST) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(link.index)
    }

    pub async fn addresses(&self, index: u32) -> Result<Vec<IpAddr>> {
        let msgs: Vec<_> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(|e| NetError::netlink(format!("listing addresses of link {index}"), e))?;
        let mut out = Vec::new();
        for m in msgs {
            if m.header.index != index {
                continue;
            }
            for a in m.attributes {
                if let AddressAttribute::Address(ip) = a {
                    out.push(ip);
                }
            }
        }
        Ok(out)
    }

    /// Add an address with `IFA_F_NODAD`: berth hands out the addresses, so duplicate address
    /// detection would only delay IPv6 by a second or more.
    pub async fn add_address(&self, index: u32, ip: IpAddr, prefix: u8) -> Result<()> {
        let mut req = self.handle.address().add(index, ip, prefix);
        if ip.is_ipv6() {
            req.message_mut()
                .attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        req.execute()
            .await
            .map_err(|e| NetError::netlink(format!("adding {ip}/{prefix} to link {index}"), e))
    }

    pub async fn set_up(&self, index: u32) -> Result<()> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(|e| NetError::netlink(format!("bringing link {index} up"), e))
    }

    /// Set a link's alias (`ip link set … alias`): how berth marks the `ve-` links it made.
    pub async fn set_alias(&self, index: u32, alias: &str) -> Result<()> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).alias(alias).build())
            .execute()
            .await
            .map_err(|e| NetError::netlink(format!("setting the alias of link {index}"), e))
    }

    /// Delete a link, returning once it is unlisted (see [`unlink`]); a link already gone is
    /// success.
    pub async fn del_link(&self, index: u32) -> Result<()> {
        match unlink::del_link(self.netns.clone(), index).await {
            Err(e) if is_gone(&e) => Ok(()),
            r => r,
        }
    }

    /// A veth pair: `host` in this namespace (enslaved to `master` if given, up) and `peer` in
    /// the namespace `netns` (down). One request. Returns the host side's index.
    pub async fn add_veth(
        &self,
        host: &str,
        master: Option<u32>,
        peer: &str,
        peer_mac: Option<[u8; 6]>,
        netns: BorrowedFd<'_>,
    ) -> Result<u32> {
        // The peer cannot be brought up in the same request: veth_newlink() configures it
        // before linking the pair, so its open would fail with ENOTCONN. The caller brings it
        // up from inside the namespace.
        let mut peer_b = LinkMessageBuilder::<LinkUnspec>::new()
            .name(peer.to_string())
            .setns_by_fd(netns.as_raw_fd());
        if let Some(mac) = peer_mac {
            peer_b = peer_b.address(mac.to_vec());
        }
        let peer_msg = peer_b.build();
        let mut b = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Veth)
            .name(host.to_string())
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg)))
            .up();
        if let Some(m) = master {
            b = b.controller(m);
        }
        self.ack(
            || format!("creating veth {host}"),
            RouteNetlinkMessage::NewLink(b.build()),
            true,
        )
        .await?;
        self.link_by_name(host)
            .await?
            .map(|l| l.index)
            .ok_or_else(|| NetError::NoSuchInterface(host.to_string()))
    }

    /// A macvlan (bridge mode) on `parent`, created directly in `netns` as `name`, up.
    pub async fn add_macvlan(&self, parent: u32, name: &str, netns: BorrowedFd<'_>) -> Result<()> {
        let msg = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::MacVlan)
            .name(name.to_string())
            .link(parent)
            .set_info_data(InfoData::MacVlan(vec![InfoMacVlan::Mode(
                MacVlanMode::Bridge,
            )]))
            .setns_by_fd(netns.as_raw_fd())
            .up()
            .build();
        self.ack(
            || format!("creating macvlan {name} on link {parent}"),
            RouteNetlinkMessage::NewLink(msg),
            true,
        )
        .await
    }

    /// Move link `index` of this namespace into `netns`, keeping its name, and bring it up
    /// (`up`) or leave its state.
    pub async fn move_link(&self, index: u32, netns: BorrowedFd<'_>, up: bool) -> Result<()> {
        let mut b = LinkUnspec::new_with_index(index).setns_by_fd(netns.as_raw_fd());
        if up {
            b = b.up();
        }
        self.handle
            .link()
            .set(b.build())
            .execute()
            .await
            .map_err(|e| NetError::netlink(format!("moving link {index} to another netns"), e))
    }

    /// A default route via `gw` on link `oif`.
    pub async fn add_default_route(&self, gw: IpAddr, oif: u32) -> Result<()> {
        let msg = match gw {
            IpAddr::V4(g) => RouteMessageBuilder::<Ipv4Addr>::new()
                .gateway(g)
                .output_interface(oif)
                .build(),
            IpAddr::V6(g) => RouteMessageBuilder::<Ipv6Addr>::new()
                .gateway(g)
                .output_interface(oif)
                .build(),
        };
        self.handle
            .route()
            .add(msg)
            .execute()
            .await
            .map_err(|e| NetError::netlink(format!("adding the default route via {gw}"), e))
    }

    /// The main table's unicast routes of both families, as subnets (for overlap checks).
    /// Routes on the links in `skip` (berth's own bridges) are left out.
    pub async fn main_routes(&self, skip: &[u32]) -> Result<Vec<Cidr>> {
        let mut out = Vec::new();
        for msg in [
            RouteMessageBuilder::<Ipv4Addr>::new().build(),
            RouteMessageBuilder::<Ipv6Addr>::new().build(),
        ] {
            let routes: Vec<RouteMessage> = self
                .handle
                .route()
                .get(msg)
                .execute()
                .try_collect()
                .await
                .map_err(|e| NetError::netlink("listing routes", e))?;
            for r in routes {
                if r.header.table != 254 || r.header.kind != RouteType::Unicast {
                    continue;
                }
                let mut dst = None;
                let mut oif = None;
                for a in &r.attributes {
                    match a {
                        RouteAttribute::Destination(RouteAddress::Inet(a)) => {
                            dst = Some(IpAddr::V4(*a))
                        }
                        RouteAttribute::Destination(RouteAddress::Inet6(a)) => {
                            dst = Some(IpAddr::V6(*a))
                        }
                        RouteAttribute::Oif(i) => oif = Some(*i),
                        _ => {}
                    }
                }
                if oif.is_some_and(|i| skip.contains(&i)) {
                    continue;
                }
                let dst = match (dst, r.header.address_family) {
                    (Some(d), _) => d,
                    (None, AddressFamily::Inet6) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
                    (None, _) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                };
                // IPv6 link-local and multicast routes exist on every link; they never clash.
                if let IpAddr::V6(a) = dst
                    && ((a.segments()[0] & 0xffc0) == 0xfe80 || a.is_multicast())
                {
                    continue;
                }
                if let Ok(c) = Cidr::new(dst, r.header.destination_prefix_length) {
                    out.push(c);
                }
            }
        }
        Ok(out)
    }

    /// Shape link `index` (a container's host-side veth) to `rate` in both directions, all on
    /// the host side where the container cannot undo it:
    /// - what the link sends (the container receives): a token bucket filter as its root qdisc;
    /// - what the link receives (the container sends): redirected on ingress (u32 match-all,
    ///   mirred) to an ifb device `ifb_name` whose root is the same tbf. An ifb rather than an
    ///   ingress policer because a policer drops instead of queueing (TCP collapses under it,
    ///   worst with veth's 64 KiB GSO packets), and because the policer and matchall modules
    ///   are often not built (they are not on the development kernels).
    ///
    /// Returns the ifb's index; the caller deletes it on detach (the veth's qdiscs go with
    /// the veth).
    pub async fn shape(&self, index: u32, ifb_name: &str, alias: &str, rate: Rate) -> Result<u32> {
        self.tbf(index, rate).await?;
        let msg = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Ifb)
            .name(ifb_name.to_string())
            .up()
            .build();
        self.ack(
            || format!("creating ifb {ifb_name}"),
            RouteNetlinkMessage::NewLink(msg),
            true,
        )
        .await?;
        let ifb = self
            .link_by_name(ifb_name)
            .await?
            .ok_or_else(|| NetError::NoSuchInterface(ifb_name.to_string()))?
            .index;
        self.set_alias(ifb, alias).await?;
        self.tbf(ifb, rate).await?;
        let ingress = tc_message(
            tc_header(
                index,
                TcHandle {
                    major: 0xffff,
                    minor: 0,
                },
                TcHandle::INGRESS,
            ),
            vec![TcAttribute::Kind("ingress".into())],
        );
        self.ack(
            || format!("adding the ingress qdisc to link {index}"),
            RouteNetlinkMessage::NewQueueDiscipline(ingress),
            true,
        )
        .await?;
        let mut tf = self.handle.traffic_filter(index as i32);
        tf.add()
            .parent(0xffff_0000)
            .protocol((libc::ETH_P_ALL as u16).to_be())
            .redirect(ifb)
            .map_err(|e| NetError::netlink("building the redirect filter", e))?
            .execute()
            .await
            .map_err(|e| {
                NetError::netlink(
                    format!("redirecting ingress of link {index} to {ifb_name}"),
                    e,
                )
            })?;
        Ok(ifb)
    }

    /// tbf as the root qdisc of `index`: a burst of 20 ms at the rate (at least two full
    /// frames; larger GSO packets are segmented by tbf), a queue of 50 ms.
    async fn tbf(&self, index: u32, rate: Rate) -> Result<()> {
        let bps = rate.bytes_per_sec;
        let burst = (bps / 50).max(3200) as u32;
        let limit = (bps / 20).max(16 * 1024) as u32 + burst;
        let mut parms = Vec::with_capacity(36);
        parms.extend_from_slice(&ratespec(bps as u32));
        parms.extend_from_slice(&[0u8; 12]); // peakrate: none
        parms.extend_from_slice(&limit.to_ne_bytes());
        parms.extend_from_slice(&ticks(burst as u64, bps).to_ne_bytes()); // buffer
        parms.extend_from_slice(&0u32.to_ne_bytes()); // mtu (peak rate only)
        let tbf = tc_message(
            tc_header(index, TcHandle { major: 1, minor: 0 }, TcHandle::ROOT),
            vec![
                TcAttribute::Kind("tbf".into()),
                TcAttribute::Options(vec![
                    TcOption::Other(DefaultNla::new(1, parms)), // TCA_TBF_PARMS
                    TcOption::Other(DefaultNla::new(6, burst.to_ne_bytes().to_vec())), // TCA_TBF_BURST
                ]),
            ],
        );
        self.ack(
            || format!("adding tbf to link {index}"),
            RouteNetlinkMessage::NewQueueDiscipline(tbf),
            true,
        )
        .await
    }
}

/// `struct tc_ratespec` for `bps` bytes/s: cell_log 3 (required non-zero), link layer ethernet.
fn ratespec(bps: u32) -> [u8; 12] {
    let mut r = [0u8; 12];
    r[0] = 3; // cell_log
    r[1] = 1; // TC_LINKLAYER_ETHERNET
    r[8..12].copy_from_slice(&bps.to_ne_bytes());
    r
}

/// Time to send `bytes` at `bps`, in psched ticks (64 ns each: PSCHED_SHIFT is 6).
fn ticks(bytes: u64, bps: u64) -> u32 {
    let ns = bytes.saturating_mul(1_000_000_000) / bps.max(1);
    (ns >> 6).min(u32::MAX as u64) as u32
}

#[allow(clippy::field_reassign_with_default)] // TcMessage is non_exhaustive
fn tc_message(header: TcHeader, attributes: Vec<TcAttribute>) -> TcMessage {
    let mut m = TcMessage::default();
    m.header = header;
    m.attributes = attributes;
    m
}

#[allow(clippy::field_reassign_with_default)] // TcHeader is non_exhaustive
fn tc_header(index: u32, handle: TcHandle, parent: TcHandle) -> TcHeader {
    let mut h = TcHeader::default();
    h.family = AddressFamily::Unspec;
    h.index = index as i32;
    h.handle = handle;
    h.parent = parent;
    h
}

fn summary(m: &LinkMessage) -> LinkSummary {
    let mut s = LinkSummary {
        index: m.header.index,
        name: String::new(),
        master: None,
        alias: None,
        kind: None,
        up: m.header.flags.contains(LinkFlags::Up),
    };
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => s.name = n.clone(),
            LinkAttribute::Controller(c) => s.master = Some(*c),
            LinkAttribute::IfAlias(a) => s.alias = Some(a.clone()),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let LinkInfo::Kind(k) = i {
                        s.kind = Some(k.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_are_local_unicast_and_follow_the_address() {
        let m = mac_for(Ipv4Addr::new(10, 89, 0, 2));
        assert_eq!(m, [0x02, 0x62, 10, 89, 0, 2]);
        assert_eq!(m[0] & 0x01, 0, "unicast");
        assert_eq!(m[0] & 0x02, 0x02, "locally administered");
    }

    #[test]
    fn ticks_are_64ns() {
        // 125000 bytes at 125000 bytes/s is one second: 1e9 / 64 ticks.
        assert_eq!(ticks(125_000, 125_000), 15_625_000);
        assert_eq!(ratespec(125_000)[8..12], 125_000u32.to_ne_bytes());
    }
}
