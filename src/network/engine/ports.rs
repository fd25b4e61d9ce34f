//! Published ports: the forwards a plan asks for, each host port checked against berth's own
//! forwards and the host's listeners and held with a bound socket.

use super::*;

impl Networks {
    pub(super) fn plan_ports(
        &self,
        plan: &mut Plan,
        spec: &NetSpec,
        def: &NetworkDef,
        lease: &Lease,
    ) -> Result<()> {
        let mut wanted: Vec<(Option<IpAddr>, Option<u16>, u16, Proto)> = Vec::new();
        for p in &spec.publish {
            for i in 0..p.container.len() as u16 {
                let host = p.host.map(|h| h.first + i);
                wanted.push((p.host_ip, host, p.container.first + i, p.proto));
            }
        }
        for &(port, proto) in &spec.publish_all {
            wanted.push((None, None, port, proto));
        }
        let mut mine: HashSet<(u16, Proto)> = HashSet::new();
        for (host_ip, host_port, cport, proto) in wanted {
            if let Some(IpAddr::V6(_)) = host_ip
                && lease.ip6.is_none()
            {
                return Err(NetError::NoIpv6(def.name.to_string()));
            }
            let (port, res) =
                self.reserve(host_ip, host_port, proto, lease.ip6.is_some(), cport)?;
            if !mine.insert((port, proto)) && host_ip.is_none() {
                return Err(NetError::PortTakenByContainer {
                    port,
                    proto,
                    container: plan.container.clone(),
                });
            }
            plan.reservations.push(res);
            let v4 = matches!(host_ip, None | Some(IpAddr::V4(_)));
            let v6 = matches!(host_ip, None | Some(IpAddr::V6(_))) && lease.ip6.is_some();
            if v4 {
                plan.forwards.push(Forward {
                    host_ip,
                    host_port: port,
                    proto,
                    container_ip: IpAddr::V4(lease.ip4),
                    container_port: cport,
                });
            }
            if let (true, Some(ip6)) = (v6, lease.ip6) {
                plan.forwards.push(Forward {
                    host_ip,
                    host_port: port,
                    proto,
                    container_ip: IpAddr::V6(ip6),
                    container_port: cport,
                });
            }
        }
        Ok(())
    }

    /// Check a host port against berth's forwards and the host's sockets, and hold it with a
    /// bound socket (a host program binding it later gets EADDRINUSE instead of having its
    /// traffic silently DNATed away). Port `None` asks the kernel for a free one.
    pub(super) fn reserve(
        &self,
        host_ip: Option<IpAddr>,
        port: Option<u16>,
        proto: Proto,
        dual: bool,
        cport: u16,
    ) -> Result<(u16, Reservation)> {
        for attempt in 0..16 {
            if let Some(p) = port
                && let Some(users) = self.ports.get(&(p, proto))
                && let Some((_, c)) = users
                    .iter()
                    .find(|(ip, _)| ip.is_none() || host_ip.is_none() || *ip == host_ip)
            {
                return Err(NetError::PortTakenByContainer {
                    port: p,
                    proto,
                    container: c.clone(),
                });
            }
            // Any address: the dual-stack wildcard covers IPv4 and IPv6 in one socket.
            let bind_ip = host_ip.unwrap_or(if dual {
                IpAddr::V6(Ipv6Addr::UNSPECIFIED)
            } else {
                IpAddr::V4(Ipv4Addr::UNSPECIFIED)
            });
            let addr = SocketAddr::new(bind_ip, port.unwrap_or(0));
            let bound = match proto {
                Proto::Tcp => std::net::TcpListener::bind(addr).map(|s| {
                    let p = s.local_addr().map(|a| a.port()).unwrap_or(0);
                    (p, Reservation::Tcp(s))
                }),
                Proto::Udp => std::net::UdpSocket::bind(addr).map(|s| {
                    let p = s.local_addr().map(|a| a.port()).unwrap_or(0);
                    (p, Reservation::Udp(s))
                }),
            };
            match bound {
                Ok((p, r)) => {
                    // A kernel-chosen port may be one berth forwards (only the sockets were
                    // closed, e.g. after a berthd restart): pick again.
                    if port.is_none() && self.ports.contains_key(&(p, proto)) && attempt < 15 {
                        continue;
                    }
                    return Ok((p, r));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                    return Err(NetError::PortTakenByHost {
                        port: port.unwrap_or(0),
                        proto,
                        addr: bind_ip,
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AddrNotAvailable => {
                    return Err(NetError::HostAddressNotLocal(bind_ip));
                }
                Err(e) => return Err(NetError::io("reserving host port", addr.to_string(), e)),
            }
        }
        Err(NetError::NoFreePort(cport, proto))
    }
}
