//! The embedded resolver: one UDP listener per bridge network on its gateway address, port 53.
//!
//! It answers `A`/`AAAA` for the names of the containers running on that network (`NAME` and
//! `NAME.berth`, case-insensitively), answers `NXDOMAIN` for other `.berth` names, and relays
//! every other query unchanged to the host's upstream resolvers (loopback stubs skipped, see
//! [`super::files::host_upstreams`]), with a fresh query ID, matching the answer back by ID and
//! source address.
//!
//! Hostile input: the parser reads only the 12-byte header and one question, refuses
//! compression pointers, labels over 63 bytes and names over 255, and never indexes past the
//! datagram; it is fuzzed by a property test. Memory is bounded: at most [`MAX_INFLIGHT`]
//! relayed queries are remembered (beyond that a query gets `SERVFAIL`), each forgotten after
//! [`RELAY_TIMEOUT`]; datagrams are at most 4096 bytes. Only clients inside the network's
//! subnets are answered, so the gateway address is not an open resolver for other links.
//! TCP (for answers too big for a datagram: the client retries over TCP after a truncated
//! one) is served on the same address: at most [`MAX_TCP`] connections at once, each closed
//! after [`TCP_IDLE`] and carrying messages of at most 64 KiB; relayed queries go to the
//! upstream over TCP as well.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

use super::types::Cidr;

pub const MAX_INFLIGHT: usize = 512;
pub const MAX_TCP: usize = 64;
pub const TCP_IDLE: Duration = Duration::from_secs(10);
pub const RELAY_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_DATAGRAM: usize = 4096;
const TTL: u32 = 10;

/// Names on one network: lower-case container name to its addresses.
pub type NameTable = HashMap<String, (Option<Ipv4Addr>, Option<Ipv6Addr>)>;

/// The resolver's view of the running containers, shared with the engine, which updates it on
/// attach and detach.
pub type Records = Arc<RwLock<NameTable>>;

/// A parsed question.
#[derive(Debug, PartialEq, Eq)]
pub struct Query {
    pub id: u16,
    pub rd: bool,
    /// Lower-case, dot-separated, no trailing dot ("" for the root).
    pub name: String,
    pub qtype: u16,
    pub qclass: u16,
    /// Where the question section ends in the datagram.
    pub question_end: usize,
}

pub const TYPE_A: u16 = 1;
pub const TYPE_AAAA: u16 = 28;

/// Parse a query: a header with QR=0, opcode QUERY, exactly one question. `None` for anything
/// else (dropped, or relayed unchanged).
pub fn parse_query(buf: &[u8]) -> Option<Query> {
    if buf.len() < 12 {
        return None;
    }
    let id = u16::from_be_bytes([buf[0], buf[1]]);
    let flags = u16::from_be_bytes([buf[2], buf[3]]);
    let qd = u16::from_be_bytes([buf[4], buf[5]]);
    if flags & 0x8000 != 0 || (flags >> 11) & 0xf != 0 || qd != 1 {
        return None;
    }
    let mut pos = 12;
    let mut name = String::new();
    loop {
        let len = *buf.get(pos)? as usize;
        pos += 1;
        if len == 0 {
            break;
        }
        if len > 63 {
            return None; // compression pointer or reserved label type
        }
        let label = buf.get(pos..pos + len)?;
        pos += len;
        if !name.is_empty() {
            name.push('.');
        }
        for &b in label {
            name.push(b.to_ascii_lowercase() as char);
        }
        if name.len() > 255 {
            return None;
        }
    }
    let tail = buf.get(pos..pos + 4)?;
    Some(Query {
        id,
        rd: flags & 0x0100 != 0,
        name,
        qtype: u16::from_be_bytes([tail[0], tail[1]]),
        qclass: u16::from_be_bytes([tail[2], tail[3]]),
        question_end: pos + 4,
    })
}

/// The local answer to `q`, if it is ours to answer: a container name of this network
/// (`web`, `web.berth`) or any other `*.berth` name (NXDOMAIN).
pub fn local_answer(q: &Query, buf: &[u8], table: &NameTable) -> Option<Vec<u8>> {
    let (short, in_berth) = match q.name.strip_suffix(".berth") {
        Some(s) => (s, true),
        None if q.name == "berth" => ("", true),
        None => (q.name.as_str(), false),
    };
    let found = if short.contains('.') {
        None
    } else {
        table.get(short)
    };
    let (rcode, answers): (u16, Vec<IpAddr>) = match found {
        Some(&(v4, v6)) if q.qclass == 1 || q.qclass == 255 => {
            let mut a = Vec::new();
            if matches!(q.qtype, TYPE_A | 255) {
                a.extend(v4.map(IpAddr::V4));
            }
            if matches!(q.qtype, TYPE_AAAA | 255) {
                a.extend(v6.map(IpAddr::V6));
            }
            (0, a)
        }
        Some(_) => (0, Vec::new()),
        None if in_berth => (3, Vec::new()),
        None => return None,
    };
    let mut out = Vec::with_capacity(q.question_end + answers.len() * 28);
    out.extend_from_slice(&q.id.to_be_bytes());
    // QR, AA, RD copied, RA; rcode.
    let flags: u16 = 0x8000 | 0x0400 | if q.rd { 0x0100 } else { 0 } | 0x0080 | rcode;
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&(answers.len() as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(&buf[12..q.question_end]);
    for a in answers {
        out.extend_from_slice(&[0xc0, 0x0c]); // name: pointer to the question
        let (t, data): (u16, Vec<u8>) = match a {
            IpAddr::V4(v) => (TYPE_A, v.octets().to_vec()),
            IpAddr::V6(v) => (TYPE_AAAA, v.octets().to_vec()),
        };
        out.extend_from_slice(&t.to_be_bytes());
        out.extend_from_slice(&1u16.to_be_bytes());
        out.extend_from_slice(&TTL.to_be_bytes());
        out.extend_from_slice(&(data.len() as u16).to_be_bytes());
        out.extend_from_slice(&data);
    }
    Some(out)
}

/// A header-only error answer (SERVFAIL = 2) echoing the question.
fn error_answer(q: &Query, buf: &[u8], rcode: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(q.question_end);
    out.extend_from_slice(&q.id.to_be_bytes());
    let flags: u16 = 0x8000 | if q.rd { 0x0100 } else { 0 } | 0x0080 | rcode;
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
    out.extend_from_slice(&buf[12..q.question_end]);
    out
}

struct Pending {
    client: SocketAddr,
    id: u16,
    upstream: SocketAddr,
    since: Instant,
}

fn seed() -> u64 {
    use std::io::Read;
    let mut b = [0u8; 8];
    match std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b)) {
        Ok(()) => u64::from_ne_bytes(b),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1),
    }
}

/// A small xorshift for relay query IDs, seeded from /dev/urandom; together with the kernel's
/// random source port that is what a stub resolver offers against off-path spoofing.
struct Ids(u64);

impl Ids {
    fn next(&mut self) -> u16 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 24) as u16
    }
}

/// Serve one network's resolver until the task is aborted. `listen` is bound to the gateway
/// address port 53; `clients` are the network's subnets; `upstreams` the servers to relay to
/// (port 53 unless given).
pub async fn serve(
    listen: UdpSocket,
    clients: Vec<Cidr>,
    records: Records,
    upstreams: Vec<SocketAddr>,
) {
    let relay4 = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).await.ok();
    let relay6 = UdpSocket::bind((Ipv6Addr::UNSPECIFIED, 0)).await.ok();
    let mut ids = Ids(seed() | 1);
    let mut pending: HashMap<u16, Pending> = HashMap::new();
    let mut next_upstream = 0usize;
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut rbuf = vec![0u8; MAX_DATAGRAM];
    let mut rbuf6 = vec![0u8; MAX_DATAGRAM];
    let mut sweep = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            r = listen.recv_from(&mut buf) => {
                let Ok((n, from)) = r else { continue };
                if !clients.iter().any(|c| c.contains(from.ip())) {
                    continue;
                }
                let pkt = &buf[..n];
                let Some(q) = parse_query(pkt) else { continue };
                let local = {
                    let table = records.read().unwrap_or_else(|p| p.into_inner());
                    local_answer(&q, pkt, &table)
                };
                if let Some(ans) = local {
                    send_best_effort(&listen, &ans, from).await;
                    continue;
                }
                let relay = upstreams.get(next_upstream % upstreams.len().max(1)).copied();
                next_upstream = next_upstream.wrapping_add(1);
                let sock = match relay {
                    Some(SocketAddr::V4(_)) => relay4.as_ref(),
                    Some(SocketAddr::V6(_)) => relay6.as_ref(),
                    None => None,
                };
                let (Some(up), Some(sock)) = (relay, sock) else {
                    send_best_effort(&listen, &error_answer(&q, pkt, 2), from).await;
                    continue;
                };
                if pending.len() >= MAX_INFLIGHT {
                    send_best_effort(&listen, &error_answer(&q, pkt, 2), from).await;
                    continue;
                }
                let mut id = ids.next();
                while pending.contains_key(&id) {
                    id = ids.next();
                }
                let mut out = pkt.to_vec();
                out[..2].copy_from_slice(&id.to_be_bytes());
                if sock.send_to(&out, up).await.is_ok() {
                    pending.insert(id, Pending { client: from, id: q.id, upstream: up, since: Instant::now() });
                }
            }
            r = recv_opt(relay4.as_ref(), &mut rbuf) => {
                if let Some((n, from)) = r {
                    relay_back(&listen, &mut pending, &mut rbuf[..n], from).await;
                }
            }
            r = recv_opt(relay6.as_ref(), &mut rbuf6) => {
                if let Some((n, from)) = r {
                    relay_back(&listen, &mut pending, &mut rbuf6[..n], from).await;
                }
            }
            _ = sweep.tick() => {
                pending.retain(|_, p| p.since.elapsed() < RELAY_TIMEOUT);
            }
        }
    }
}

/// Serve DNS over TCP on `listen` until the task is aborted.
pub async fn serve_tcp(
    listen: TcpListener,
    clients: Vec<Cidr>,
    records: Records,
    upstreams: Vec<SocketAddr>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_TCP));
    loop {
        let Ok((conn, from)) = listen.accept().await else {
            continue;
        };
        if !clients.iter().any(|c| c.contains(from.ip())) {
            continue;
        }
        // Full: the connection is dropped, the client falls back or retries.
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let (records, upstreams) = (records.clone(), upstreams.clone());
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(TCP_IDLE, tcp_session(conn, records, upstreams)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!("resolver: TCP client {from}: {e}, ignoring"),
                Err(_) => tracing::debug!("resolver: TCP client {from} idle, closed"),
            }
        });
    }
}

async fn read_msg(conn: &mut TcpStream) -> std::io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 2];
    match conn.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut msg = vec![0u8; u16::from_be_bytes(len) as usize];
    conn.read_exact(&mut msg).await?;
    Ok(Some(msg))
}

async fn write_msg(conn: &mut TcpStream, msg: &[u8]) -> std::io::Result<()> {
    let len = u16::try_from(msg.len()).map_err(|_| std::io::Error::other("answer over 64 KiB"))?;
    conn.write_all(&len.to_be_bytes()).await?;
    conn.write_all(msg).await
}

async fn tcp_session(
    mut conn: TcpStream,
    records: Records,
    upstreams: Vec<SocketAddr>,
) -> std::io::Result<()> {
    while let Some(msg) = read_msg(&mut conn).await? {
        let Some(q) = parse_query(&msg) else {
            return Ok(());
        };
        let local = {
            let table = records.read().unwrap_or_else(|p| p.into_inner());
            local_answer(&q, &msg, &table)
        };
        let answer = match local {
            Some(a) => a,
            None => match relay_tcp(&msg, &upstreams).await {
                Ok(a) if a.len() >= 2 => {
                    let mut a = a;
                    a[..2].copy_from_slice(&q.id.to_be_bytes());
                    a
                }
                _ => error_answer(&q, &msg, 2),
            },
        };
        write_msg(&mut conn, &answer).await?;
    }
    Ok(())
}

/// Ask the upstreams in turn over TCP; the first answer wins.
async fn relay_tcp(msg: &[u8], upstreams: &[SocketAddr]) -> std::io::Result<Vec<u8>> {
    let mut last = std::io::Error::other("no upstream resolver");
    for up in upstreams {
        let attempt = async {
            let mut c = TcpStream::connect(up).await?;
            write_msg(&mut c, msg).await?;
            read_msg(&mut c)
                .await?
                .ok_or_else(|| std::io::Error::other("upstream closed"))
        };
        match tokio::time::timeout(RELAY_TIMEOUT, attempt).await {
            Ok(Ok(a)) => return Ok(a),
            Ok(Err(e)) => last = e,
            Err(_) => last = std::io::Error::other(format!("{up} timed out")),
        }
    }
    Err(last)
}

/// Send one datagram; a failure is not reported anywhere: UDP DNS clients retry (and a full
/// socket buffer or a vanished client is all that can fail here).
async fn send_best_effort(sock: &UdpSocket, pkt: &[u8], to: SocketAddr) {
    if let Err(e) = sock.send_to(pkt, to).await {
        tracing::debug!("resolver: answer to {to} lost: {e}, ignoring");
    }
}

async fn recv_opt(sock: Option<&UdpSocket>, buf: &mut [u8]) -> Option<(usize, SocketAddr)> {
    match sock {
        Some(s) => s.recv_from(buf).await.ok(),
        None => std::future::pending().await,
    }
}

async fn relay_back(
    listen: &UdpSocket,
    pending: &mut HashMap<u16, Pending>,
    pkt: &mut [u8],
    from: SocketAddr,
) {
    if pkt.len() < 12 {
        return;
    }
    let id = u16::from_be_bytes([pkt[0], pkt[1]]);
    match pending.get(&id) {
        Some(p) if p.upstream == from => {}
        _ => return, // unknown ID or wrong source: a late or spoofed answer
    }
    let p = pending.remove(&id).expect("checked above");
    pkt[..2].copy_from_slice(&p.id.to_be_bytes());
    send_best_effort(listen, pkt, p.client).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&id.to_be_bytes());
        v.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
        for l in name.split('.').filter(|l| !l.is_empty()) {
            v.push(l.len() as u8);
            v.extend_from_slice(l.as_bytes());
        }
        v.push(0);
        v.extend_from_slice(&qtype.to_be_bytes());
        v.extend_from_slice(&1u16.to_be_bytes());
        v
    }

    fn table() -> NameTable {
        let mut t = NameTable::new();
        t.insert(
            "web".into(),
            (
                Some(Ipv4Addr::new(10, 89, 0, 2)),
                Some("fd00::2".parse().unwrap()),
            ),
        );
        t
    }

    #[test]
    fn answers_container_names() {
        let q = query(0x1234, "Web.berth", TYPE_A);
        let p = parse_query(&q).unwrap();
        assert_eq!(p.name, "web.berth");
        let a = local_answer(&p, &q, &table()).unwrap();
        assert_eq!(&a[..2], &[0x12, 0x34]);
        assert_eq!(a[3] & 0xf, 0, "NOERROR");
        assert_eq!(u16::from_be_bytes([a[6], a[7]]), 1, "one answer");
        assert_eq!(&a[a.len() - 4..], &[10, 89, 0, 2]);
        let q6 = query(1, "web", TYPE_AAAA);
        let a6 = local_answer(&parse_query(&q6).unwrap(), &q6, &table()).unwrap();
        assert_eq!(
            &a6[a6.len() - 16..],
            &"fd00::2".parse::<Ipv6Addr>().unwrap().octets()
        );
        let nx = query(2, "db.berth", TYPE_A);
        let ans = local_answer(&parse_query(&nx).unwrap(), &nx, &table()).unwrap();
        assert_eq!(ans[3] & 0xf, 3, "NXDOMAIN");
        let other = query(3, "example.org", TYPE_A);
        assert!(local_answer(&parse_query(&other).unwrap(), &other, &table()).is_none());
        let mx = query(4, "web", 15);
        let ans = local_answer(&parse_query(&mx).unwrap(), &mx, &table()).unwrap();
        assert_eq!((ans[3] & 0xf, ans[7]), (0, 0), "NODATA");
    }

    #[test]
    fn parser_refuses_malformed() {
        assert!(parse_query(&[0; 11]).is_none());
        let mut q = query(1, "web", TYPE_A);
        q[2] |= 0x80; // a response
        assert!(parse_query(&q).is_none());
        let mut q = query(1, "web", TYPE_A);
        q[12] = 0xc0; // compression pointer
        assert!(parse_query(&q).is_none());
        let q = query(1, "web", TYPE_A);
        assert!(
            parse_query(&q[..q.len() - 1]).is_none(),
            "truncated question"
        );
        let long = vec!["a".repeat(63); 5].join(".");
        assert!(
            parse_query(&query(1, &long, TYPE_A)).is_none(),
            "name over 255"
        );
    }

    #[test]
    fn parser_survives_random_input() {
        // A deterministic fuzz: mutations of a valid query and pure noise never panic, and
        // whatever parses yields an answer that stays in bounds.
        let mut rng = Ids(0x9e3779b97f4a7c15);
        let base = query(7, "web.berth", TYPE_A);
        for i in 0..20_000 {
            let mut b = if i % 2 == 0 {
                base.clone()
            } else {
                (0..(rng.next() % 64)).map(|_| rng.next() as u8).collect()
            };
            for _ in 0..(rng.next() % 4) {
                if !b.is_empty() {
                    let at = rng.next() as usize % b.len();
                    b[at] = rng.next() as u8;
                }
            }
            b.truncate(rng.next() as usize % (b.len() + 1).max(1) + b.len() / 2);
            if let Some(q) = parse_query(&b) {
                assert!(q.question_end <= b.len());
                if let Some(a) = local_answer(&q, &b, &table()) {
                    assert!(a.len() >= 12);
                }
            }
        }
    }
}
