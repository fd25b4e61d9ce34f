//! Deleting a link without waiting for the kernel to free it.
//!
//! An `RTM_DELLINK` unlists the device at once: its name and index are free again, `ip link`
//! no longer shows it and the kernel sends its `RTM_DELLINK` notification. Then, still inside
//! the sender's `sendmsg(2)` but with the RTNL lock released, the kernel waits for RCU
//! callbacks and for the last references to the device (`netdev_run_todo()`), which took 13 to
//! 30 ms per veth pair on a 2-core machine. berthd's runtime has one thread: an rtnetlink
//! deletion stalled every bus call of every container for that long, and each container's exit.
//!
//! So the request goes out with `NLM_F_ECHO` from a throw-away thread on a socket of its own;
//! the kernel queues the notification on that socket as soon as the device is unlisted, and the
//! caller returns then, while the thread finishes the `sendmsg` alone. A failed request is
//! answered at once with its error. A kernel that does not echo link deletions answers with the
//! ACK at the end: slower, the same result.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;

use nix::sched::CloneFlags;
use nix::sys::socket::{MsgFlags, recv};
use rtnetlink::packet_core::{
    NLM_F_ACK, NLM_F_ECHO, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload,
};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::packet_route::link::LinkMessage;
use rtnetlink::sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use tokio::sync::oneshot;

use crate::network::error::{NetError, Result};

/// The request's sequence number: the socket carries this one request only.
const SEQ: u32 = 1;

/// Delete link `index` of the namespace `netns` (`None`: berthd's own) and return once the
/// kernel has unlisted it.
pub(super) async fn del_link(netns: Option<Arc<OwnedFd>>, index: u32) -> Result<()> {
    let op = || format!("deleting link {index}");
    let io = |source| NetError::NetlinkIo { op: op(), source };
    let req = request(index);
    let (sock_tx, sock_rx) = oneshot::channel();
    let (sent_tx, mut sent_rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("berth-unlink".into())
        .spawn(move || {
            // The socket stays with this thread for the send; the caller reads a duplicate.
            let (sock, dup) = match open(netns.as_deref()) {
                Ok(pair) => pair,
                Err(e) => {
                    // The receiver is gone only if the caller was cancelled.
                    sock_tx.send(Err(e)).ok();
                    return;
                }
            };
            if sock_tx.send(Ok(dup)).is_err() {
                return;
            }
            let sent = sock.send_to(&req, &SocketAddr::new(0, 0), 0).map(|_| ());
            sent_tx.send(sent).ok();
        })
        .map_err(io)?;
    let died = || io(std::io::Error::other("the netlink thread died"));
    let fd = sock_rx.await.map_err(|_| died())?.map_err(io)?;
    let fd = crate::sys::async_fd(fd).map_err(io)?;
    let mut sending = true;
    let mut buf = vec![0; 8192];
    loop {
        tokio::select! {
            sent = &mut sent_rx, if sending => {
                // Sent: the answer is queued on the socket already. Not sent: none comes.
                sent.map_err(|_| died())?.map_err(io)?;
                sending = false;
            }
            ready = fd.readable() => {
                let mut ready = ready.map_err(io)?;
                let got = ready.try_io(|fd| {
                    recv(fd.get_ref().as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT)
                        .map_err(std::io::Error::from)
                });
                match got {
                    Ok(n) => {
                        let n = n.map_err(io)?;
                        if let Some(answer) = answer(&buf[..n], index) {
                            return answer.map_err(|e| NetError::netlink(op(), e));
                        }
                    }
                    // Once sent, the answer was queued before the send returned: a drained
                    // socket without one means the kernel's reply was not understood.
                    Err(_would_block) if !sending => {
                        return Err(io(std::io::Error::other("no answer from the kernel")));
                    }
                    Err(_would_block) => continue,
                }
            }
        }
    }
}

/// A netlink socket in `netns` (entered by the calling thread, which must be a throw-away one),
/// and a duplicate of its descriptor.
fn open(netns: Option<&OwnedFd>) -> std::io::Result<(Socket, OwnedFd)> {
    if let Some(ns) = netns {
        nix::sched::setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
    }
    let mut sock = Socket::new(NETLINK_ROUTE)?;
    sock.bind_auto()?;
    let dup = sock.as_fd().try_clone_to_owned()?;
    Ok((sock, dup))
}

/// The `RTM_DELLINK` for `index`, asking for the ACK and the echo.
fn request(index: u32) -> Vec<u8> {
    let mut link = LinkMessage::default();
    link.header.index = index;
    let mut msg = NetlinkMessage::from(RouteNetlinkMessage::DelLink(link));
    msg.header.flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_ECHO;
    msg.header.sequence_number = SEQ;
    msg.finalize();
    let mut buf = vec![0; msg.buffer_len()];
    msg.serialize(&mut buf);
    buf
}

/// What one datagram says about the deletion: unlisted (the echo) or the ACK, `None` if it is
/// neither.
fn answer(mut buf: &[u8], index: u32) -> Option<std::result::Result<(), rtnetlink::Error>> {
    while !buf.is_empty() {
        let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(buf).ok()?;
        let len = (msg.header.length as usize).next_multiple_of(4);
        match msg.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(l))
                if l.header.index == index =>
            {
                return Some(Ok(()));
            }
            NetlinkPayload::Error(e) if msg.header.sequence_number == SEQ => {
                return Some(match e.code {
                    None => Ok(()),
                    Some(_) => Err(rtnetlink::Error::NetlinkError(e)),
                });
            }
            _ => {}
        }
        if len == 0 || len >= buf.len() {
            break;
        }
        buf = &buf[len..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtnetlink::packet_core::ErrorMessage;

    fn datagram(msgs: Vec<NetlinkMessage<RouteNetlinkMessage>>) -> Vec<u8> {
        let mut out = Vec::new();
        for mut m in msgs {
            m.finalize();
            let mut b = vec![0; m.buffer_len()];
            m.serialize(&mut b);
            b.resize(b.len().next_multiple_of(4), 0);
            out.extend(b);
        }
        out
    }

    fn dellink(index: u32) -> NetlinkMessage<RouteNetlinkMessage> {
        let mut l = LinkMessage::default();
        l.header.index = index;
        NetlinkMessage::from(RouteNetlinkMessage::DelLink(l))
    }

    fn ack(seq: u32, code: i32) -> NetlinkMessage<RouteNetlinkMessage> {
        let mut e = ErrorMessage::default();
        e.code = std::num::NonZeroI32::new(code);
        let mut m = NetlinkMessage::new(Default::default(), NetlinkPayload::Error(e));
        m.header.sequence_number = seq;
        m
    }

    #[test]
    fn the_request_asks_for_echo_and_ack() {
        let req = request(7);
        let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&req).unwrap();
        assert_eq!(m.header.flags, NLM_F_REQUEST | NLM_F_ACK | NLM_F_ECHO);
        match m.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(l)) => {
                assert_eq!(l.header.index, 7)
            }
            p => panic!("not a DelLink: {p:?}"),
        }
    }

    #[test]
    fn the_echo_of_this_link_answers_another_does_not() {
        assert!(answer(&datagram(vec![dellink(8)]), 7).is_none());
        assert!(matches!(
            answer(&datagram(vec![dellink(8), dellink(7)]), 7),
            Some(Ok(()))
        ));
    }

    #[test]
    fn the_ack_of_this_request_answers() {
        assert!(matches!(
            answer(&datagram(vec![ack(SEQ, 0)]), 7),
            Some(Ok(()))
        ));
        assert!(matches!(
            answer(&datagram(vec![ack(SEQ, -libc::EPERM)]), 7),
            Some(Err(_))
        ));
        assert!(answer(&datagram(vec![ack(SEQ + 1, -libc::EPERM)]), 7).is_none());
    }
}
