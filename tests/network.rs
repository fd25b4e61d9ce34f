//! The network engine with real traffic (issue 10), inside network namespaces the tests make.
//!
//! Every test re-runs itself under `unshare --net`: that fresh namespace plays the host (the
//! engine makes its bridge, sysctls and nft table there, never in the machine's namespace).
//! "Containers" are `sleep` processes in network namespaces of their own; an "uplink" and a
//! "client" namespace hang off the host by veth pairs with documentation addresses
//! (198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32), so no packet can leave the test's own
//! namespaces. Probes run on threads that `setns(2)` into a namespace and use std sockets.
//!
//! Needs root, iproute2, nftables and util-linux (`unshare`, `nsenter`); without them the tests
//! fail, they do not skip. Run: `cargo test --test network -- --test-threads=2`.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth::network::{
    CreateRequest, NetError, NetName, NetSpec, NetworkMode, Networks, NetworksConfig, Running,
};

// ---------------------------------------------------------------- harness

/// Run `body` in a fresh network namespace: re-exec this test binary for exactly this test
/// under `unshare --net`, and check it passed.
fn in_fresh_netns(name: &str, body: impl FnOnce()) {
    if std::env::var("BERTH_NETTEST_INNER").as_deref() == Ok(name) {
        sh("ip link set lo up");
        body();
        return;
    }
    assert!(
        nix::unistd::geteuid().is_root(),
        "the network tests need root (CI runs as root)"
    );
    for tool in ["ip", "nft", "unshare", "nsenter"] {
        assert!(
            Command::new("sh")
                .arg("-c")
                .arg(format!("command -v {tool}"))
                .stdout(Stdio::null())
                .status()
                .unwrap()
                .success(),
            "{tool} is missing: install iproute2, nftables, util-linux"
        );
    }
    let exe = std::env::current_exe().unwrap();
    let status = Command::new("unshare")
        .arg("--net")
        .arg("--")
        .arg(exe)
        .args([
            name,
            "--exact",
            "--nocapture",
            "--test-threads=1",
            "--include-ignored",
        ])
        .env("BERTH_NETTEST_INNER", name)
        .status()
        .unwrap();
    assert!(status.success(), "{name} failed in its namespace");
}

fn sh(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A process in a network namespace of its own.
struct Ns {
    child: Child,
    fd: Arc<File>,
}

impl Ns {
    fn new() -> Ns {
        let mut child = Command::new("unshare")
            .args(["--net", "--", "sh", "-c", "echo ready; exec sleep 600"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready");
        let fd = Arc::new(File::open(format!("/proc/{}/ns/net", child.id())).unwrap());
        Ns { child, fd }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn sh(&self, cmd: &str) -> String {
        sh(&format!("nsenter -t {} -n -- sh -c '{cmd}'", self.pid()))
    }

    /// Run `f` on a thread inside this namespace.
    fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let fd = self.fd.clone();
        std::thread::spawn(move || {
            nix::sched::setns(fd.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            f()
        })
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        if self.child.kill().is_ok() {
            let _ = self.child.wait();
        }
    }
}

/// A TCP server in `ns` on `addr` that answers one connection with the peer address it saw.
fn serve_once(ns: &Ns, addr: SocketAddr) -> std::thread::JoinHandle<SocketAddr> {
    let (tx, rx) = std::sync::mpsc::channel();
    let h = ns.run(move || {
        let l = TcpListener::bind(addr).unwrap();
        tx.send(()).unwrap();
        let (mut s, peer) = l.accept().unwrap();
        s.write_all(format!("{peer}").as_bytes()).unwrap();
        peer
    });
    rx.recv().unwrap();
    h
}

/// Connect to `addr` (from the calling thread's namespace) and read what the server says.
fn fetch(addr: SocketAddr) -> std::io::Result<String> {
    // Ten seconds: room for SYN retransmits (1 s, 3 s, 7 s) on a loaded machine, where a first
    // SYN can be lost while a neighbour entry resolves; a forward that does not work still fails.
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn config(dir: &std::path::Path) -> NetworksConfig {
    let mut cfg = NetworksConfig::new(dir.join("state"), dir.join("run"));
    cfg.upstreams = Some(vec!["198.51.100.2:53".parse().unwrap()]);
    cfg.default_ipv6 = true;
    cfg
}

/// An uplink namespace: the host's "internet", 198.51.100.2 and 2001:db8:1::2, with the host
/// at .1 / ::1 and its default routes through it.
fn uplink() -> Ns {
    let up = Ns::new();
    sh(&format!(
        "ip link add up0 type veth peer name eth0 netns {}",
        up.pid()
    ));
    sh(
        "ip addr add 198.51.100.1/24 dev up0 && ip -6 addr add 2001:db8:1::1/64 dev up0 nodad && ip link set up0 up",
    );
    sh("ip route add default via 198.51.100.2 && ip -6 route add default via 2001:db8:1::2");
    up.sh("ip link set lo up && ip link set eth0 up && ip addr add 198.51.100.2/24 dev eth0 && ip -6 addr add 2001:db8:1::2/64 dev eth0 nodad");
    up
}

fn spec(mode: &str) -> NetSpec {
    NetSpec {
        mode: mode.parse().unwrap(),
        ..NetSpec::default()
    }
}

/// Links in the calling thread's netns whose name starts with `prefix` (`ip` shows a veth as
/// `name@peer`; the peer part is not the name).
fn count_links(prefix: &str) -> usize {
    link_names()
        .iter()
        .filter(|n| n.starts_with(prefix))
        .count()
}

fn link_names() -> Vec<String> {
    sh("ip -o link show")
        .lines()
        .filter_map(|l| {
            l.split(": ")
                .nth(1)
                .map(|n| n.split('@').next().unwrap_or(n).to_string())
        })
        .collect()
}

fn has_link(name: &str) -> bool {
    link_names().iter().any(|n| n == name)
}

fn nft_elements() -> usize {
    let out = sh("nft -j list table inet berth");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i.get("map"))
        .map(|m| m["elem"].as_array().map_or(0, |e| e.len()))
        .sum()
}

/// A DNS query for `name` (type A or AAAA) from the calling thread; the answer's addresses.
fn resolve(server: SocketAddr, name: &str, qtype: u16) -> Vec<IpAddr> {
    let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut q = vec![0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for l in name.split('.') {
        q.push(l.len() as u8);
        q.extend_from_slice(l.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&[0, 1]);
    sock.send_to(&q, server).unwrap();
    let mut buf = [0u8; 512];
    let n = sock.recv(&mut buf).unwrap();
    assert_eq!(&buf[..2], &[0xab, 0xcd], "answer carries our ID");
    let ancount = u16::from_be_bytes([buf[6], buf[7]]);
    let mut pos = q.len();
    let mut out = Vec::new();
    for _ in 0..ancount {
        pos += 2 + 2 + 2 + 4; // pointer, type, class, ttl
        let len = u16::from_be_bytes([buf[pos], buf[pos + 1]]) as usize;
        pos += 2;
        let data = &buf[pos..pos + len];
        pos += len;
        out.push(match len {
            4 => IpAddr::from(<[u8; 4]>::try_from(data).unwrap()),
            _ => IpAddr::from(<[u8; 16]>::try_from(data).unwrap()),
        });
        assert!(pos <= n);
    }
    out
}

async fn plug(
    nets: &mut Networks,
    name: &str,
    spec: &NetSpec,
    ns: &Ns,
) -> berth::network::Result<berth::network::Attachment> {
    let p = nets.prepare(name, spec, true).await?;
    nets.attach(p, ns.fd.as_fd()).await
}

/// The same over TCP (2-byte length prefix): the first A/AAAA address of the answer.
fn resolve_tcp(server: SocketAddr, name: &str) -> Option<IpAddr> {
    let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for l in name.split('.') {
        q.push(l.len() as u8);
        q.extend_from_slice(l.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&[0, 1, 0, 1]);
    let mut s = TcpStream::connect_timeout(&server, Duration::from_secs(3)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(6))).unwrap();
    s.write_all(&(q.len() as u16).to_be_bytes()).unwrap();
    s.write_all(&q).unwrap();
    let mut len = [0u8; 2];
    s.read_exact(&mut len).unwrap();
    let mut a = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut a).unwrap();
    assert_eq!(&a[..2], &[0x12, 0x34]);
    if u16::from_be_bytes([a[6], a[7]]) == 0 {
        return None;
    }
    let tail = &a[a.len() - 4..];
    Some(IpAddr::from(<[u8; 4]>::try_from(tail).unwrap()))
}

// ---------------------------------------------------------------- tests

#[test]
fn bridge_containers_by_address_and_name() {
    in_fresh_netns("bridge_containers_by_address_and_name", || {
        let dir = tempfile::tempdir().unwrap();
        rt().block_on(async {
            let mut nets = Networks::open(config(dir.path())).await.unwrap();
            let (a, b) = (Ns::new(), Ns::new());
            let pa = nets.prepare("a", &spec("bridge"), true).await.unwrap();
            let aa = nets.attach(pa, a.fd.as_fd()).await.unwrap();
            let pb = nets.prepare("b", &spec("bridge"), true).await.unwrap();
            let ab = nets.attach(pb, b.fd.as_fd()).await.unwrap();
            assert_ne!(aa.ip4, ab.ip4);
            assert_eq!(aa.host_if.as_ref().unwrap().as_str(), "vb-a");
            // The container sees eth0 with its address and a default route; lo is up.
            let addrs = a.sh("ip -o addr show dev eth0");
            assert!(addrs.contains(&aa.ip4.unwrap().to_string()), "{addrs}");
            assert!(
                a.sh("ip route")
                    .contains(&format!("default via {}", aa.gateway4.unwrap()))
            );
            assert!(a.sh("ip -o link show lo").contains("UP"));
            // Stable MACs: the container's follows its address, the bridge's its gateway.
            let o = aa.ip4.unwrap().octets();
            let mac = format!("02:62:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3]);
            assert!(a.sh("ip -o link show eth0").contains(&mac), "{mac}");
            let g = aa.gateway4.unwrap().octets();
            let gmac = format!("02:62:{:02x}:{:02x}:{:02x}:{:02x}", g[0], g[1], g[2], g[3]);
            assert!(sh("ip -o link show berth0").contains(&gmac));
            // a → b by IPv4 and by IPv6.
            let b4 = SocketAddr::new(IpAddr::V4(ab.ip4.unwrap()), 7000);
            let srv = serve_once(&b, b4);
            let seen = tokio::task::spawn_blocking({
                let h = a.run(move || fetch(b4).unwrap());
                move || h.join().unwrap()
            })
            .await
            .unwrap();
            assert_eq!(srv.join().unwrap().ip(), IpAddr::V4(aa.ip4.unwrap()));
            assert!(
                seen.starts_with(&aa.ip4.unwrap().to_string()),
                "no NAT between containers"
            );
            let b6 = SocketAddr::new(IpAddr::V6(ab.ip6.unwrap()), 7001);
            let srv = serve_once(&b, b6);
            let h = a.run(move || fetch(b6).unwrap());
            tokio::task::spawn_blocking(move || h.join().unwrap())
                .await
                .unwrap();
            assert_eq!(srv.join().unwrap().ip(), IpAddr::V6(aa.ip6.unwrap()));
            // ... while the bridge ports themselves have no IPv6: no address, no route (each
            // port's routes would make every veth deletion walk a table growing with them).
            for port in ["vb-a", "vb-b"] {
                let off =
                    std::fs::read_to_string(format!("/proc/sys/net/ipv6/conf/{port}/disable_ipv6"));
                assert_eq!(off.unwrap().trim(), "1", "{port}");
                assert_eq!(sh(&format!("ip -6 -o addr show dev {port}")), "", "{port}");
                assert_eq!(
                    sh(&format!("ip -6 route show table all dev {port}")),
                    "",
                    "{port}"
                );
            }
            // a resolves b by name through the resolver on the gateway.
            let gw = SocketAddr::new(IpAddr::V4(aa.gateway4.unwrap()), 53);
            let h = a.run(move || {
                (
                    resolve(gw, "b", 1),
                    resolve(gw, "B.berth", 28),
                    resolve(gw, "nobody.berth", 1),
                )
            });
            let (v4, v6, none) = tokio::task::spawn_blocking(move || h.join().unwrap())
                .await
                .unwrap();
            assert_eq!(v4, vec![IpAddr::V4(ab.ip4.unwrap())]);
            assert_eq!(v6, vec![IpAddr::V6(ab.ip6.unwrap())]);
            assert!(none.is_empty());
            let h = a.run(move || resolve_tcp(gw, "b"));
            let tcp = tokio::task::spawn_blocking(move || h.join().unwrap())
                .await
                .unwrap();
            assert_eq!(tcp, Some(IpAddr::V4(ab.ip4.unwrap())), "over TCP too");
            // The generated files point at the resolver (which knows the peers by name).
            let (hosts, hostname, resolv) = nets.container_files(&aa, "a");
            assert!(
                hosts.contains(&format!("{}\ta a.berth", aa.ip4.unwrap()))
                    && !hosts.contains(" b "),
                "{hosts}"
            );
            assert_eq!(hostname, "a\n");
            assert!(resolv.contains(&format!("nameserver {}", aa.gateway4.unwrap())));
            // A bridge start without ports made no forward.
            assert_eq!(nft_elements(), 0);
            // stats: what a sent is counted.
            let st = nets.stats("a").await.unwrap().unwrap();
            assert!(st.tx_bytes > 0 && st.rx_bytes > 0, "{st:?}");
            nets.detach("a").await.unwrap();
            nets.detach("b").await.unwrap();
            assert!(nets.resolver_names(&"berth".parse().unwrap()).is_empty());
        });
    });
}

#[test]
fn nat_to_uplink_and_dns_relay() {
    in_fresh_netns("nat_to_uplink_and_dns_relay", || {
        let dir = tempfile::tempdir().unwrap();
        let up = uplink();
        // A fake upstream resolver in the uplink: answers every query with 192.0.2.7.
        let (tx, rx) = std::sync::mpsc::channel();
        up.run(move || {
            let s = UdpSocket::bind("198.51.100.2:53").unwrap();
            tx.send(()).unwrap();
            let mut buf = [0u8; 512];
            while let Ok((n, from)) = s.recv_from(&mut buf) {
                let mut a = buf[..n].to_vec();
                a[2] |= 0x80;
                a[7] = 1;
                a.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 9, 0, 4, 192, 0, 2, 7]);
                let _ = s.send_to(&a, from);
            }
        });
        rx.recv().unwrap();
        // ... and over TCP with 192.0.2.8.
        let (tx, rx) = std::sync::mpsc::channel();
        up.run(move || {
            let l = TcpListener::bind("198.51.100.2:53").unwrap();
            tx.send(()).unwrap();
            while let Ok((mut c, _)) = l.accept() {
                let mut len = [0u8; 2];
                c.read_exact(&mut len).unwrap();
                let mut q = vec![0u8; u16::from_be_bytes(len) as usize];
                c.read_exact(&mut q).unwrap();
                q[2] |= 0x80;
                q[7] = 1;
                q.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 9, 0, 4, 192, 0, 2, 8]);
                c.write_all(&(q.len() as u16).to_be_bytes()).unwrap();
                c.write_all(&q).unwrap();
            }
        });
        rx.recv().unwrap();
        rt().block_on(async {
            let mut nets = Networks::open(config(dir.path())).await.unwrap();
            let c = Ns::new();
            let p = nets.prepare("c", &spec("bridge"), true).await.unwrap();
            let att = nets.attach(p, c.fd.as_fd()).await.unwrap();
            let target: SocketAddr = "198.51.100.2:9000".parse().unwrap();
            let srv = serve_once(&up, target);
            let h = c.run(move || fetch(target).unwrap());
            tokio::task::spawn_blocking(move || h.join().unwrap())
                .await
                .unwrap();
            assert_eq!(
                srv.join().unwrap().ip(),
                "198.51.100.1".parse::<IpAddr>().unwrap(),
                "masqueraded to the host's address"
            );
            // IPv6 too (NAT66 from the ULA).
            let t6: SocketAddr = "[2001:db8:1::2]:9001".parse().unwrap();
            let srv = serve_once(&up, t6);
            let h = c.run(move || fetch(t6).unwrap());
            tokio::task::spawn_blocking(move || h.join().unwrap())
                .await
                .unwrap();
            assert_eq!(
                srv.join().unwrap().ip(),
                "2001:db8:1::1".parse::<IpAddr>().unwrap()
            );
            // Names that are not berth's are relayed to the upstream.
            let gw = SocketAddr::new(IpAddr::V4(att.gateway4.unwrap()), 53);
            let h = c.run(move || resolve(gw, "example.test", 1));
            let got = tokio::task::spawn_blocking(move || h.join().unwrap())
                .await
                .unwrap();
            assert_eq!(got, vec!["192.0.2.7".parse::<IpAddr>().unwrap()]);
            let h = c.run(move || resolve_tcp(gw, "example.test"));
            let got = tokio::task::spawn_blocking(move || h.join().unwrap())
                .await
                .unwrap();
            assert_eq!(
                got,
                Some("192.0.2.8".parse::<IpAddr>().unwrap()),
                "relayed over TCP"
            );
            nets.detach("c").await.unwrap();
        });
    });
}

#[test]
fn published_ports_from_client_loopback_and_ipv6() {
    in_fresh_netns("published_ports_from_client_loopback_and_ipv6", || {
        let dir = tempfile::tempdir().unwrap();
        let client = Ns::new();
        sh(&format!(
            "ip link add cl0 type veth peer name eth0 netns {}",
            client.pid()
        ));
        sh(
            "ip addr add 203.0.113.1/24 dev cl0 && ip -6 addr add 2001:db8:2::1/64 dev cl0 nodad && ip link set cl0 up",
        );
        client.sh("ip link set lo up && ip link set eth0 up && ip addr add 203.0.113.2/24 dev eth0 && ip -6 addr add 2001:db8:2::2/64 dev eth0 nodad");
        rt().block_on(async {
            let mut nets = Networks::open(config(dir.path())).await.unwrap();
            let c = Ns::new();
            let mut s = spec("bridge");
            s.publish = vec![
                "8080:80".parse().unwrap(),
                "127.0.0.1:8081:81".parse().unwrap(),
                "90".parse().unwrap(),
            ];
            let p = nets.prepare("web", &s, true).await.unwrap();
            let att = nets.attach(p, c.fd.as_fd()).await.unwrap();
            let random = att
                .forwards
                .iter()
                .find(|f| f.container_port == 90)
                .unwrap()
                .host_port;
            assert!(random > 1024);
            // v4 + v6 for 8080 and 90, v4 only for 127.0.0.1:8081.
            assert_eq!(att.forwards.len(), 5, "{:?}", att.forwards);
            assert_eq!(nft_elements(), 5);
            let ip4 = att.ip4.unwrap();
            // From another host.
            let srv = serve_once(&c, SocketAddr::new(IpAddr::V4(ip4), 80));
            let h = client.run(|| fetch("203.0.113.1:8080".parse().unwrap()).unwrap());
            tokio::task::spawn_blocking(move || h.join().unwrap())
                .await
                .unwrap();
            assert_eq!(
                srv.join().unwrap().ip(),
                "203.0.113.2".parse::<IpAddr>().unwrap(),
                "client address kept"
            );
            // Over IPv6.
            let srv = serve_once(&c, SocketAddr::new(IpAddr::V6(att.ip6.unwrap()), 80));
            let h = client.run(|| fetch("[2001:db8:2::1]:8080".parse().unwrap()).unwrap());
            tokio::task::spawn_blocking(move || h.join().unwrap())
                .await
                .unwrap();
            srv.join().unwrap();
            // From the host's own loopback (the whole test process is in the host's netns).
            let srv = serve_once(&c, SocketAddr::new(IpAddr::V4(ip4), 81));
            let got =
                tokio::task::spawn_blocking(|| fetch("127.0.0.1:8081".parse().unwrap()).unwrap())
                    .await
                    .unwrap();
            assert!(!got.is_empty());
            srv.join().unwrap();
            let srv = serve_once(&c, SocketAddr::new(IpAddr::V4(ip4), 80));
            tokio::task::spawn_blocking(|| fetch("127.0.0.1:8080".parse().unwrap()).unwrap())
                .await
                .unwrap();
            srv.join().unwrap();
            let srv = serve_once(&c, SocketAddr::new(IpAddr::V4(ip4), 90));
            tokio::task::spawn_blocking(move || {
                fetch(SocketAddr::new("203.0.113.1".parse().unwrap(), random)).unwrap()
            })
            .await
            .unwrap();
            srv.join().unwrap();
            // Hairpin: another container on the bridge reaches web through the published port
            // on the host's address (the gateway), masqueraded so the reply comes back the same way.
            let peer = Ns::new();
            plug(&mut nets, "peer", &spec("bridge"), &peer)
                .await
                .unwrap();
            let srv = serve_once(&c, SocketAddr::new(IpAddr::V4(ip4), 80));
            let gw = att.gateway4.unwrap();
            let h = peer.run(move || fetch(SocketAddr::new(IpAddr::V4(gw), 8080)).unwrap());
            tokio::task::spawn_blocking(move || h.join().unwrap())
                .await
                .unwrap();
            srv.join().unwrap();
            nets.detach("peer").await.unwrap();
            // UDP.
            let mut su = spec("bridge");
            su.publish = vec!["5353:53/udp".parse().unwrap()];
            let dnsy = Ns::new();
            let au = plug(&mut nets, "dnsy", &su, &dnsy).await.unwrap();
            let uaddr = SocketAddr::new(IpAddr::V4(au.ip4.unwrap()), 53);
            let (tx, rx) = std::sync::mpsc::channel();
            let echo = dnsy.run(move || {
                let s = UdpSocket::bind(uaddr).unwrap();
                tx.send(()).unwrap();
                let mut b = [0u8; 64];
                let (n, from) = s.recv_from(&mut b).unwrap();
                s.send_to(&b[..n], from).unwrap();
                from
            });
            rx.recv().unwrap();
            let h = client.run(|| {
                let s = UdpSocket::bind("0.0.0.0:0").unwrap();
                s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
                s.send_to(b"ping", "203.0.113.1:5353").unwrap();
                let mut b = [0u8; 64];
                let n = s.recv(&mut b).unwrap();
                b[..n].to_vec()
            });
            assert_eq!(
                tokio::task::spawn_blocking(move || h.join().unwrap())
                    .await
                    .unwrap(),
                b"ping"
            );
            assert_eq!(
                echo.join().unwrap().ip(),
                "203.0.113.2".parse::<IpAddr>().unwrap()
            );
            nets.detach("dnsy").await.unwrap();
            // Taken ports are refused with a clear error, and leave nothing behind.
            let files_before = std::fs::read_dir(dir.path().join("state/leases/berth"))
                .unwrap()
                .count();
            let d = Ns::new();
            let mut s2 = spec("bridge");
            s2.publish = vec!["8080:80".parse().unwrap()];
            match nets.prepare("other", &s2, true).await {
                Err(NetError::PortTakenByContainer {
                    port: 8080,
                    container,
                    ..
                }) => assert_eq!(container, "web"),
                other => panic!("{other:?}"),
            }
            let _host_listener = TcpListener::bind("0.0.0.0:9999").unwrap();
            s2.publish = vec!["9999:80".parse().unwrap()];
            assert!(matches!(
                nets.prepare("other", &s2, true).await,
                Err(NetError::PortTakenByHost { port: 9999, .. })
            ));
            assert_eq!(
                std::fs::read_dir(dir.path().join("state/leases/berth"))
                    .unwrap()
                    .count(),
                files_before,
                "no lease left"
            );
            // The reserved port is held: a host program cannot take it.
            assert!(TcpListener::bind("0.0.0.0:8080").is_err());
            drop(d);
            assert_eq!(nets.attachment("web").unwrap().forwards.len(), 5);
            nets.detach("web").await.unwrap();
            assert_eq!(nft_elements(), 0);
            assert!(
                TcpListener::bind("0.0.0.0:8080").is_ok(),
                "released on detach"
            );
        });
    });
}

#[test]
fn internal_network_cannot_reach_uplink() {
    in_fresh_netns("internal_network_cannot_reach_uplink", || {
        let dir = tempfile::tempdir().unwrap();
        let up = uplink();
        rt().block_on(async {
            let mut nets = Networks::open(config(dir.path())).await.unwrap();
            let name: NetName = "secret".parse().unwrap();
            let req = CreateRequest {
                internal: true,
                ..Default::default()
            };
            let def = nets.create_network(&name, &req).await.unwrap();
            assert_eq!(def.bridge.as_str(), "berth1");
            let (x, y) = (Ns::new(), Ns::new());
            let ax = plug(&mut nets, "x", &spec("secret"), &x).await.unwrap();
            let ay = plug(&mut nets, "y", &spec("secret"), &y).await.unwrap();
            let _listener = up
                .run(|| TcpListener::bind("198.51.100.2:9000").unwrap())
                .join()
                .unwrap();
            let h = x.run(|| fetch("198.51.100.2:9000".parse().unwrap()));
            let r = tokio::task::spawn_blocking(move || h.join().unwrap())
                .await
                .unwrap();
            assert!(r.is_err(), "internal network reached the uplink: {r:?}");
            // Containers on it still reach each other, and the resolver.
            let t = SocketAddr::new(IpAddr::V4(ay.ip4.unwrap()), 7000);
            let srv = serve_once(&y, t);
            let h = x.run(move || fetch(t).unwrap());
            tokio::task::spawn_blocking(move || h.join().unwrap())
                .await
                .unwrap();
            srv.join().unwrap();
            let gw = SocketAddr::new(IpAddr::V4(ax.gateway4.unwrap()), 53);
            let h = x.run(move || resolve(gw, "y", 1));
            assert_eq!(
                tokio::task::spawn_blocking(move || h.join().unwrap())
                    .await
                    .unwrap(),
                vec![IpAddr::V4(ay.ip4.unwrap())]
            );
            // A container on the default network cannot reach the internal one.
            let z = Ns::new();
            plug(&mut nets, "z", &spec("bridge"), &z).await.unwrap();
            let srv_addr = SocketAddr::new(IpAddr::V4(ay.ip4.unwrap()), 7002);
            let _l = y
                .run(move || TcpListener::bind(srv_addr).unwrap())
                .join()
                .unwrap();
            let h = z.run(move || fetch(srv_addr));
            assert!(
                tokio::task::spawn_blocking(move || h.join().unwrap())
                    .await
                    .unwrap()
                    .is_err()
            );
            // In use: refused; once released: removed, bridge gone.
            assert!(matches!(
                nets.remove_network(&name).await,
                Err(NetError::NetworkInUse(_, 2))
            ));
            for c in ["x", "y"] {
                nets.detach(c).await.unwrap();
                nets.release(c).unwrap();
            }
            nets.remove_network(&name).await.unwrap();
            assert!(!has_link("berth1"));
            assert!(matches!(
                nets.remove_network(&"berth".parse().unwrap()).await,
                Err(NetError::DefaultNetwork)
            ));
        });
    });
}

#[test]
fn nothing_left_after_detach_or_failed_attach() {
    in_fresh_netns("nothing_left_after_detach_or_failed_attach", || {
        let dir = tempfile::tempdir().unwrap();
        rt().block_on(async {
            let mut nets = Networks::open(config(dir.path())).await.unwrap();
            // Bring the bridge up, then take the baseline.
            let warm = Ns::new();
            plug(&mut nets, "warm", &spec("bridge"), &warm).await.unwrap();
            nets.detach("warm").await.unwrap();
            let links = sh("ip -o link show | wc -l");
            // Link-local addresses left out: the bridge gets its fe80:: one whenever linkwatch
            // (up to a second late) reports its first carrier, and it is the bridge's, kept up.
            let addrs = sh("ip -o addr show | grep -v fe80:: | wc -l");
            let rules = sh("nft list table inet berth | wc -l");
            let cs: Vec<Ns> = (0..3).map(|_| Ns::new()).collect();
            for (i, c) in cs.iter().enumerate() {
                let mut s = spec("bridge");
                s.publish = vec![format!("{}:80", 8000 + i).parse().unwrap()];
                s.rate = Some("10mbit".parse().unwrap());
                plug(&mut nets, &format!("c{i}"), &s, c).await.unwrap();
            }
            assert_eq!(count_links("vb-"), 3);
            assert_eq!(nft_elements(), 6);
            for i in 0..3 {
                nets.detach(&format!("c{i}")).await.unwrap();
            }
            assert_eq!(sh("ip -o link show | wc -l"), links);
            assert_eq!(sh("ip -o addr show | grep -v fe80:: | wc -l"), addrs);
            assert_eq!(sh("nft list table inet berth | wc -l"), rules);
            assert_eq!(nft_elements(), 0);
            assert_eq!(std::fs::read_dir(dir.path().join("run/attachments")).unwrap().count(), 0);
            // A failing attach (the container already has an eth0, so the veth's peer cannot
            // be made) leaves nothing, not even the lease it took.
            let bad = Ns::new();
            bad.sh("ip link add eth0 type veth peer name eth0p");
            let mut s = spec("bridge");
            s.publish = vec!["8100:80".parse().unwrap()];
            let p = nets.prepare("bad", &s, true).await.unwrap();
            assert!(p.new_lease);
            let e = nets.attach(p, bad.fd.as_fd()).await.unwrap_err();
            assert_eq!(e.errno(), Some(libc::EEXIST), "{e}");
            assert_eq!(sh("ip -o link show | wc -l"), links);
            assert_eq!(nft_elements(), 0);
            assert!(!dir.path().join("state/leases/berth/bad.json").exists());
            assert_eq!(std::fs::read_dir(dir.path().join("run/attachments")).unwrap().count(), 0);
            assert!(TcpListener::bind("0.0.0.0:8100").is_ok(), "reservation dropped");
            // Bad input: typed errors, nothing made.
            assert!(matches!("10.0.0.0/33".parse::<berth::network::Cidr>(), Err(NetError::BadCidr(_))));
            assert!(matches!("8080:70000".parse::<berth::network::PortSpec>(), Err(NetError::PortOutOfRange(_))));
            let over = CreateRequest { subnet4: Some(nets.list_networks()[0].subnet4), ..Default::default() };
            assert!(matches!(nets.create_network(&"dup".parse().unwrap(), &over).await, Err(NetError::SubnetOverlapsNetwork(..))));
            sh("ip link add hostroute type veth peer name hostroute-p && ip addr add 10.200.0.1/16 dev hostroute && ip link set hostroute up");
            let clash = CreateRequest { subnet4: Some("10.200.5.0/24".parse().unwrap()), ..Default::default() };
            assert!(matches!(nets.create_network(&"clash".parse().unwrap(), &clash).await, Err(NetError::SubnetOverlapsRoute(..))));
            assert!(matches!(nets.prepare("u", &spec("nosuchnet"), true).await, Err(NetError::NoSuchNetwork(_))));
            assert!(matches!(nets.prepare("u", &spec("macvlan:nosuchif"), true).await, Err(NetError::NoSuchInterface(_))));
            let mut s = spec("none");
            s.interfaces = vec!["nosuchif".parse().unwrap()];
            assert!(matches!(nets.prepare("u", &s, true).await, Err(NetError::NoSuchInterface(_))));
            assert!(matches!(nets.prepare("u", &spec("host"), true).await, Err(NetError::HostWithUserns)));
            let mut s = spec("bridge");
            s.ip4 = Some("10.1.2.3".parse().unwrap());
            assert!(matches!(nets.prepare("u", &s, true).await, Err(NetError::AddressNotInSubnet(..))));
            assert_eq!(nets.list_networks().len(), 1);
            assert!(!dir.path().join("state/leases/berth/u.json").exists());
            assert_eq!(count_links("vb-"), 0);
        });
    });
}

#[test]
fn reconcile_after_kill_and_stable_leases() {
    in_fresh_netns("reconcile_after_kill_and_stable_leases", || {
        let dir = tempfile::tempdir().unwrap();
        let (keep, gone) = (Ns::new(), Ns::new());
        let (ip_keep, ip_gone);
        {
            let r = rt();
            let (a, b) = r.block_on(async {
                let mut nets = Networks::open(config(dir.path())).await.unwrap();
                let mut s = spec("bridge");
                s.publish = vec!["8080:80".parse().unwrap()];
                let a = plug(&mut nets, "keep", &s, &keep).await.unwrap();
                s.publish = vec!["8081:80".parse().unwrap()];
                let b = plug(&mut nets, "gone", &s, &gone).await.unwrap();
                // berthd is killed here: no detach, the engine is simply dropped.
                drop(nets);
                (a, b)
            });
            ip_keep = a.ip4;
            ip_gone = b.ip4;
        }
        // A veth berthd made but had no record of (killed in between), on berth's bridge.
        sh(
            "ip link add vb-stray type veth peer name vb-stray-p && ip link set vb-stray master berth0",
        );
        assert_eq!(count_links("vb-"), 4);
        rt().block_on(async {
            let mut nets = Networks::open(config(dir.path())).await.unwrap();
            let report = nets
                .reconcile(
                    vec![Running {
                        name: "keep".into(),
                        netns: None,
                    }],
                    &["keep".into(), "gone".into()],
                )
                .await
                .unwrap();
            assert_eq!(report.kept, vec!["keep"]);
            assert_eq!(report.detached, vec!["gone"]);
            assert_eq!(report.swept_links, vec!["vb-stray"]);
            assert!(report.released.is_empty());
            assert!(report.unreserved.is_empty(), "{:?}", report.unreserved);
            assert!(
                TcpListener::bind("0.0.0.0:8080").is_err(),
                "keep's port is held again"
            );
            assert_eq!(count_links("vb-"), 1, "only keep's veth is left");
            assert_eq!(
                nft_elements(),
                2,
                "keep's forwards (v4+v6) kept, gone's removed"
            );
            assert_eq!(nets.attachment("keep").unwrap().ip4, ip_keep);
            // keep still works through its forward after the restart.
            let srv = serve_once(&keep, SocketAddr::new(IpAddr::V4(ip_keep.unwrap()), 80));
            tokio::task::spawn_blocking(|| fetch("127.0.0.1:8080".parse().unwrap()).unwrap())
                .await
                .unwrap();
            srv.join().unwrap();
            // gone restarts: same address as before.
            let again = plug(&mut nets, "gone", &spec("bridge"), &gone).await;
            // Its old netns still has eth0 (only the host side was deleted, which took the
            // peer with it), so this attach succeeds with the old lease.
            assert_eq!(again.unwrap().ip4, ip_gone);
            nets.detach("gone").await.unwrap();
            // Removed while berthd was down: lease freed at reconcile.
            let report = nets
                .reconcile(
                    vec![Running {
                        name: "keep".into(),
                        netns: None,
                    }],
                    &["keep".into()],
                )
                .await
                .unwrap();
            assert_eq!(report.released, vec!["gone"]);
            assert_eq!(report.kept, vec!["keep"]);
            assert!(!dir.path().join("state/leases/berth/gone.json").exists());
            nets.detach("keep").await.unwrap();
        });
    });
}

#[test]
fn macvlan_nic_move_host_and_container_modes() {
    in_fresh_netns("macvlan_nic_move_host_and_container_modes", || {
        let dir = tempfile::tempdir().unwrap();
        sh(
            "ip link add lan0 type veth peer name lan0p && ip link set lan0 up && ip link add nic0 type veth peer name nic0p",
        );
        rt().block_on(async {
            let mut nets = Networks::open(config(dir.path())).await.unwrap();
            let m = Ns::new();
            let p = nets
                .prepare("m", &spec("macvlan:lan0"), true)
                .await
                .unwrap();
            nets.attach(p, m.fd.as_fd()).await.unwrap();
            let l = m.sh("ip -d -o link show eth0");
            assert!(l.contains("macvlan") && l.contains("mode bridge"), "{l}");
            nets.detach("m").await.unwrap();
            // --network-interface: in while attached, back on detach.
            let n = Ns::new();
            let mut s = spec("none");
            s.interfaces = vec!["nic0".parse().unwrap()];
            let p = nets.prepare("n", &s, true).await.unwrap();
            nets.attach(p, n.fd.as_fd()).await.unwrap();
            assert!(!has_link("nic0"));
            assert!(n.sh("ip -o link show nic0").contains("UP"));
            nets.detach("n").await.unwrap();
            assert!(has_link("nic0"), "returned to the host");
            assert!(
                n.sh("ip -o link show").lines().count() == 1,
                "only lo left inside"
            );
            // host and container:NAME: nothing to make; the helper shares a netns.
            let p = nets.prepare("h", &spec("host"), false).await.unwrap();
            assert!(!p.own_netns());
            let p = nets.prepare("j", &spec("container:m"), true).await.unwrap();
            assert!(!p.own_netns());
            assert_eq!(p.mode, NetworkMode::Container("m".into()));
            // veth: ve-NAME on the host, marked as berth's, eth0 inside.
            let v = Ns::new();
            let att = plug(&mut nets, "v", &spec("veth"), &v).await.unwrap();
            assert_eq!(att.host_if.unwrap().as_str(), "ve-v");
            assert!(
                sh("ip -o link show ve-v").contains("alias berth:v")
                    || sh("ip -d link show ve-v").contains("alias berth:v")
            );
            assert!(v.sh("ip -o link show eth0").contains("UP"));
            nets.detach("v").await.unwrap();
            assert_eq!(count_links("ve-"), 0);
        });
    });
}

/// Bulk transfer both ways through a container shaped to 1mbit: the rate seen must be near
/// 125000 bytes/s (within the token bucket's burst).
#[test]
fn network_rate_limits_both_directions() {
    in_fresh_netns("network_rate_limits_both_directions", || {
        let dir = tempfile::tempdir().unwrap();
        rt().block_on(async {
            let mut nets = Networks::open(config(dir.path())).await.unwrap();
            let c = Ns::new();
            let mut s = spec("bridge");
            s.rate = Some("1mbit".parse().unwrap());
            let att = plug(&mut nets, "slow", &s, &c).await.unwrap();
            let gw = att.gateway4.unwrap();
            const BYTES: usize = 500_000;
            // Container → host (policed on the host side's ingress).
            let l = TcpListener::bind((gw, 5001)).unwrap();
            let h = c.run(move || {
                let mut s = TcpStream::connect((gw, 5001)).unwrap();
                s.write_all(&vec![7u8; BYTES]).unwrap();
            });
            let up = tokio::task::spawn_blocking(move || {
                let (mut s, _) = l.accept().unwrap();
                let t = Instant::now();
                let mut buf = Vec::new();
                s.read_to_end(&mut buf).unwrap();
                (buf.len(), t.elapsed())
            })
            .await
            .unwrap();
            h.join().unwrap();
            // Host → container (tbf on the host side's egress).
            let ip = att.ip4.unwrap();
            let (tx, rx) = std::sync::mpsc::channel();
            let h = c.run(move || {
                let l = TcpListener::bind((ip, 5002)).unwrap();
                tx.send(()).unwrap();
                let (mut s, _) = l.accept().unwrap();
                let t = Instant::now();
                let mut buf = Vec::new();
                s.read_to_end(&mut buf).unwrap();
                (buf.len(), t.elapsed())
            });
            rx.recv().unwrap();
            tokio::task::spawn_blocking(move || {
                let mut s = TcpStream::connect((ip, 5002)).unwrap();
                s.write_all(&vec![7u8; BYTES]).unwrap();
            })
            .await
            .unwrap();
            let down = h.join().unwrap();
            for (what, (n, t)) in [("container→host", up), ("host→container", down)] {
                let rate = n as f64 / t.as_secs_f64();
                eprintln!("{what}: {n} bytes in {t:?} = {rate:.0} bytes/s (limit 125000)");
                assert_eq!(n, BYTES);
                assert!(rate < 125_000.0 * 1.4, "{what} not limited: {rate:.0} B/s");
                assert!(
                    rate > 125_000.0 * 0.4,
                    "{what} far below the limit: {rate:.0} B/s"
                );
            }
            nets.detach("slow").await.unwrap();
        });
    });
}

async fn p50(nets: &mut Networks, nss: &[Ns], mode: &str) -> Duration {
    let mut v = Vec::new();
    for (i, ns) in nss.iter().enumerate().take(50) {
        let name = format!("c{i}");
        let t = Instant::now();
        let p = nets.prepare(&name, &spec(mode), true).await.unwrap();
        nets.attach(p, ns.fd.as_fd()).await.unwrap();
        v.push(t.elapsed());
        nets.detach(&name).await.unwrap();
    }
    v.sort();
    v[25]
}

/// Attach cost: p50 of 50 attaches with bridge and with none, and 100 containers on one bridge.
#[test]
fn attach_timing() {
    in_fresh_netns("attach_timing", || {
        let dir = tempfile::tempdir().unwrap();
        rt().block_on(async {
            let mut nets = Networks::open(config(dir.path())).await.unwrap();
            let nss: Vec<Ns> = (0..100).map(|_| Ns::new()).collect();
            // Warm up: bridge, table, resolver, leases.
            plug(&mut nets, "c0", &spec("bridge"), &nss[0]).await.unwrap();
            nets.detach("c0").await.unwrap();
            let none = p50(&mut nets, &nss, "none").await;
            let bridge = p50(&mut nets, &nss, "bridge").await;
            // With one published port: the nft change (one `nft -f -`) and the reservation.
            let mut v = Vec::new();
            for (i, ns) in nss.iter().enumerate().take(20) {
                let name = format!("p{i}");
                let mut s = spec("bridge");
                s.publish = vec!["8080:80".parse().unwrap()];
                let t = Instant::now();
                plug(&mut nets, &name, &s, ns).await.unwrap();
                v.push(t.elapsed());
                nets.detach(&name).await.unwrap();
                nets.release(&name).unwrap();
            }
            v.sort();
            let ported = v[10];
            // The element change alone: nfnetlink batch vs `nft -f -`.
            let f = berth::network::Forward {
                host_ip: None,
                host_port: 9090,
                proto: berth::network::Proto::Tcp,
                container_ip: "10.89.0.200".parse().unwrap(),
                container_port: 80,
            };
            let (mut batch, mut binary) = (Vec::new(), Vec::new());
            for _ in 0..30 {
                let t = Instant::now();
                berth::network::nftnl::apply(true, &[f]).unwrap();
                batch.push(t.elapsed());
                berth::network::nftnl::apply(false, &[f]).unwrap();
                let t = Instant::now();
                berth::network::nft::apply("bench", &berth::network::nft::elements_script(true, &[f])).unwrap();
                binary.push(t.elapsed());
                berth::network::nftnl::apply(false, &[f]).unwrap();
            }
            batch.sort();
            binary.sort();
            eprintln!("one element add, p50: nfnetlink batch {:?}, nft -f - {:?}", batch[15], binary[15]);
            eprintln!("attach p50 with one published port: {ported:?} (nft change ≈ {:?})", ported.saturating_sub(bridge));
            let t = Instant::now();
            for (i, ns) in nss.iter().enumerate() {
                let name = format!("c{i}");
                let p = nets.prepare(&name, &spec("bridge"), true).await.unwrap();
                nets.attach(p, ns.fd.as_fd()).await.unwrap();
            }
            let hundred = t.elapsed();
            eprintln!("attach p50: none {none:?}, bridge {bridge:?} (difference {:?}); 100 bridge attaches: {hundred:?}", bridge.saturating_sub(none));
            assert_eq!(count_links("vb-"), 100);
            assert!(hundred < Duration::from_secs(10), "{hundred:?}");
            for i in 0..100 {
                nets.detach(&format!("c{i}")).await.unwrap();
            }
            assert_eq!(count_links("vb-"), 0);
        });
    });
}
