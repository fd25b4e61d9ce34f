//! The per-container nftables change, published ports added to or removed from berth's maps,
//! sent as one nfnetlink batch directly instead of through `nft`.
//!
//! Why: `nft -f -` costs a fork+exec and a cache fetch, ~3 ms on an idle machine and 10–20 ms
//! on a loaded one (measured here), on the start path of every container with `-p`; this
//! batch costs one `sendmsg` and the acks. Only set elements go this way — a fixed, tiny part
//! of the protocol (`NFT_MSG_NEWSETELEM` / `NFT_MSG_DELSETELEM` with `NFTA_DATA_VALUE` keys and
//! data); the table itself, with its expressions, is still compiled by `nft` ([`super::nft`]),
//! once per berthd start.
//!
//! A batch is atomic: the kernel applies all its elements or none. The socket is blocking, but
//! the kernel handles a netfilter batch inside `sendmsg`, so the acks are queued by the time it
//! returns; they are drained without waiting (`MSG_DONTWAIT`).

use std::io;
use std::net::IpAddr;

use rtnetlink::sys::{Socket, protocols::NETLINK_NETFILTER};

use super::error::{NetError, Result};
use super::nft::{Forward, TABLE};

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLM_F_CREATE: u16 = 0x400;
const NLA_F_NESTED: u16 = 1 << 15;
const NFPROTO_INET: u8 = 1;

// enum nft_set_elem_list_attributes / nft_set_elem_attributes / nft_data_attributes
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;

fn nla(kind: u16, payload: &[u8]) -> Vec<u8> {
    let len = 4 + payload.len();
    let mut v = Vec::with_capacity((len + 3) & !3);
    v.extend_from_slice(&(len as u16).to_ne_bytes());
    v.extend_from_slice(&kind.to_ne_bytes());
    v.extend_from_slice(payload);
    v.resize((len + 3) & !3, 0);
    v
}

/// One field of a concatenation, in its 4-byte register slot (nft's `NFT_REG32_SIZE`).
fn push_field(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(bytes);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(a) => push_field(out, &a.octets()),
        IpAddr::V6(a) => push_field(out, &a.octets()),
    }
}

/// The map element's key and data, as `nft` lays them out (checked against
/// `nft --debug=netlink`): `[host ip .] proto . port` → `container ip . port`.
pub(crate) fn encode(f: &Forward) -> (Vec<u8>, Vec<u8>) {
    let mut key = Vec::with_capacity(24);
    if let Some(ip) = f.host_ip {
        push_ip(&mut key, ip);
    }
    let proto = match f.proto {
        super::types::Proto::Tcp => libc::IPPROTO_TCP as u8,
        super::types::Proto::Udp => libc::IPPROTO_UDP as u8,
    };
    push_field(&mut key, &[proto]);
    push_field(&mut key, &f.host_port.to_be_bytes());
    let mut data = Vec::with_capacity(20);
    push_ip(&mut data, f.container_ip);
    push_field(&mut data, &f.container_port.to_be_bytes());
    (key, data)
}

fn header(out: &mut Vec<u8>, ty: u16, flags: u16, seq: u32, family: u8, res_id: u16) {
    out.extend_from_slice(&0u32.to_ne_bytes()); // length, patched by finish()
    out.extend_from_slice(&ty.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
    out.push(family);
    out.push(0); // NFNETLINK_V0
    out.extend_from_slice(&res_id.to_be_bytes());
}

fn finish(buf: &mut [u8], start: usize) {
    let len = (buf.len() - start) as u32;
    buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
}

/// The batch for `forwards`: begin, one message per map, end. Returns the bytes and the
/// number of messages that ask for an ack.
pub(crate) fn batch(add: bool, forwards: &[Forward], seq: u32) -> (Vec<u8>, usize) {
    let mut buf = Vec::new();
    header(
        &mut buf,
        NFNL_MSG_BATCH_BEGIN,
        NLM_F_REQUEST,
        seq,
        0,
        NFNL_SUBSYS_NFTABLES,
    );
    finish(&mut buf, 0);
    let mut msgs = 0;
    for map in ["fwd4", "fwd4h", "fwd6", "fwd6h"] {
        let elems: Vec<&Forward> = forwards.iter().filter(|f| f.map() == map).collect();
        if elems.is_empty() {
            continue;
        }
        let start = buf.len();
        let (ty, flags) = if add {
            (NFT_MSG_NEWSETELEM, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE)
        } else {
            (NFT_MSG_DELSETELEM, NLM_F_REQUEST | NLM_F_ACK)
        };
        msgs += 1;
        header(
            &mut buf,
            (NFNL_SUBSYS_NFTABLES << 8) | ty,
            flags,
            seq + msgs as u32,
            NFPROTO_INET,
            0,
        );
        buf.extend(nla(
            NFTA_SET_ELEM_LIST_TABLE,
            format!("{TABLE}\0").as_bytes(),
        ));
        buf.extend(nla(NFTA_SET_ELEM_LIST_SET, format!("{map}\0").as_bytes()));
        let mut list = Vec::new();
        for f in elems {
            let (key, data) = encode(f);
            let mut elem = nla(
                NFTA_SET_ELEM_KEY | NLA_F_NESTED,
                &nla(NFTA_DATA_VALUE, &key),
            );
            if add {
                elem.extend(nla(
                    NFTA_SET_ELEM_DATA | NLA_F_NESTED,
                    &nla(NFTA_DATA_VALUE, &data),
                ));
            }
            list.extend(nla(NFTA_LIST_ELEM | NLA_F_NESTED, &elem));
        }
        buf.extend(nla(NFTA_SET_ELEM_LIST_ELEMENTS | NLA_F_NESTED, &list));
        finish(&mut buf, start);
    }
    let start = buf.len();
    header(
        &mut buf,
        NFNL_MSG_BATCH_END,
        NLM_F_REQUEST,
        seq + msgs as u32 + 1,
        0,
        NFNL_SUBSYS_NFTABLES,
    );
    finish(&mut buf, start);
    (buf, msgs)
}

/// The errno of the first failed message in a stream of netlink replies, and the number of
/// successful acks.
pub(crate) fn parse_acks(mut buf: &[u8]) -> (usize, Option<i32>) {
    let mut acks = 0;
    let mut err = None;
    while buf.len() >= 16 {
        let len = u32::from_ne_bytes(buf[0..4].try_into().expect("4 bytes")) as usize;
        let ty = u16::from_ne_bytes([buf[4], buf[5]]);
        if len < 16 || len > buf.len() {
            break;
        }
        if ty == NLMSG_ERROR && len >= 20 {
            let code = i32::from_ne_bytes(buf[16..20].try_into().expect("4 bytes"));
            if code == 0 {
                acks += 1;
            } else if err.is_none() {
                err = Some(-code);
            }
        }
        buf = &buf[(len + 3) & !3..];
        if buf.len() < 16 {
            break;
        }
    }
    (acks, err)
}

/// Add (or delete) the elements for `forwards` in one atomic batch.
pub fn apply(add: bool, forwards: &[Forward]) -> Result<()> {
    if forwards.is_empty() {
        return Ok(());
    }
    let op = if add {
        "publishing ports"
    } else {
        "withdrawing ports"
    };
    let fail = |e: io::Error| NetError::NetlinkIo {
        op: format!("{op} (nfnetlink)"),
        source: e,
    };
    let mut sock = Socket::new(NETLINK_NETFILTER).map_err(fail)?;
    sock.bind_auto().map_err(fail)?;
    let (bytes, msgs) = batch(add, forwards, 1);
    sock.send(&bytes, 0).map_err(fail)?;
    let mut acks = 0;
    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    while acks < msgs {
        buf.clear();
        let n = match sock.recv(&mut buf, libc::MSG_DONTWAIT) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(fail(e)),
        };
        let (a, err) = parse_acks(&buf[..n.min(buf.len())]);
        if let Some(errno) = err {
            return Err(NetError::NftBatch { op, errno });
        }
        acks += a;
    }
    if acks < msgs {
        return Err(NetError::Nft {
            op: op.into(),
            detail: format!("{acks} of {msgs} messages acknowledged"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::types::Proto;

    #[test]
    fn element_layout_matches_nft() {
        // nft --debug=netlink add element inet berth fwd4 { tcp . 8080 : 10.89.0.2 . 80 }
        //   element 00000006 0000901f  : 0200590a 00005000
        let f = Forward {
            host_ip: None,
            host_port: 8080,
            proto: Proto::Tcp,
            container_ip: "10.89.0.2".parse().unwrap(),
            container_port: 80,
        };
        let (k, d) = encode(&f);
        assert_eq!(k, [6, 0, 0, 0, 0x1f, 0x90, 0, 0]);
        assert_eq!(d, [10, 89, 0, 2, 0, 80, 0, 0]);
        let g = Forward {
            host_ip: Some("127.0.0.1".parse().unwrap()),
            proto: Proto::Udp,
            container_ip: "fd00::2".parse().unwrap(),
            ..f
        };
        let (k, d) = encode(&g);
        assert_eq!(k, [127, 0, 0, 1, 17, 0, 0, 0, 0x1f, 0x90, 0, 0]);
        assert_eq!(d.len(), 20);
    }

    #[test]
    fn batch_framing() {
        let f = Forward {
            host_ip: None,
            host_port: 1,
            proto: Proto::Tcp,
            container_ip: "10.0.0.2".parse().unwrap(),
            container_port: 2,
        };
        let v6 = Forward {
            container_ip: "fd00::2".parse().unwrap(),
            ..f
        };
        let (b, n) = batch(true, &[f, v6], 7);
        assert_eq!(n, 2, "one message per map");
        // Walk the messages: lengths add up, begin and end frame them.
        let mut types = Vec::new();
        let mut rest = &b[..];
        while !rest.is_empty() {
            let len = u32::from_ne_bytes(rest[0..4].try_into().unwrap()) as usize;
            types.push(u16::from_ne_bytes([rest[4], rest[5]]));
            assert!(len.is_multiple_of(4));
            rest = &rest[len..];
        }
        assert_eq!(types, [0x10, (10 << 8) | 12, (10 << 8) | 12, 0x11]);
        // Acks: two successes; an error reports its errno.
        let mut ack = Vec::new();
        for code in [0i32, 0] {
            ack.extend_from_slice(&36u32.to_ne_bytes());
            ack.extend_from_slice(&2u16.to_ne_bytes());
            ack.extend_from_slice(&[0; 10]);
            ack.extend_from_slice(&code.to_ne_bytes());
            ack.extend_from_slice(&[0; 16]);
        }
        assert_eq!(parse_acks(&ack), (2, None));
        ack[16..20].copy_from_slice(&(-17i32).to_ne_bytes());
        assert_eq!(parse_acks(&ack), (1, Some(17)));
        assert_eq!(parse_acks(&ack[..10]), (0, None));
    }
}
