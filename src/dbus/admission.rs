//! Admission: how much one connection and one uid can make berthd hold.
//!
//! zbus handles each method call in a task of its own, and a task keeps its reply until the
//! bus has read it. A client that sends calls faster than the bus reads the replies (or a bus
//! that passes them on slowly to a client that never reads) thus makes berthd hold a reply per
//! call: eight connections of 125 `ListContainers` each grew berthd by 33 MiB, and
//! `GetManagedObjects` by 155 MiB. So every method counts its call against its sender (the
//! unique bus name) and the sender's uid from before its body runs until its reply is written
//! — a [`Held`] reply keeps its [`Permit`] until zbus has sent it — and so do the bytes of
//! the large replies (lists), which are what costs: a call over a bound is answered at once
//! with `LimitExceeded`, which costs berthd a small error and nothing else. A sender or uid
//! that holds nothing is always admitted, so that any one call works however large its reply.
//! Other callers are never made to wait: nothing is queued.
//!
//! A call that waits for an event (`WaitContainer`) ends when its caller leaves the bus
//! ([`Permit::caller_left`]): nobody is left to read its reply.
//!
//! A refusal is a reply too, and it waits to be written like any other: 64 connections of one
//! uid sending 125 calls each grew berthd by 20 MiB of `LimitExceeded` errors. So every call
//! of a uid other than root is also counted as an [`Answer`] from its arrival until its reply,
//! whatever it is, has been written ([`super::gate`]); a uid with [`ANSWERS_PER_UID`] of them
//! has its further calls dropped unanswered (its client's own timeout answers them), which
//! costs berthd nothing it keeps. What one uid can make berthd hold is then bounded however
//! many connections it opens.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::{Serialize, Serializer};
use tokio::sync::watch;
use zbus::{Signature, zvariant::Type};

use super::Error;

/// Calls in flight per connection.
pub const PER_SENDER: usize = 32;
/// Calls in flight per uid other than root, over all its connections.
pub const PER_UID: usize = 64;
/// Bytes of replies not yet written (as serialized), per connection. A reply costs berthd
/// several times that while it waits (the value, its message, the allocator's slack): about
/// 6 times for `GetManagedObjects`.
pub const PER_SENDER_BYTES: usize = 512 << 10;
/// Bytes of replies not yet written (as serialized), per uid other than root.
pub const PER_UID_BYTES: usize = 1 << 20;

/// Calls of one uid other than root that berthd holds until their replies are written
/// (refusals included); past it the uid's calls are dropped unanswered.
pub const ANSWERS_PER_UID: usize = 4 * PER_UID;

/// The counts of calls in flight.
#[derive(Debug, Default)]
pub struct Admission {
    inner: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    senders: HashMap<String, Sender>,
    uids: HashMap<u32, Uid>,
    /// Calls not yet answered, per uid other than root.
    answers: HashMap<u32, usize>,
}

#[derive(Debug)]
struct Sender {
    calls: usize,
    bytes: usize,
    /// Set when the sender leaves the bus.
    left: watch::Sender<bool>,
}

#[derive(Debug, Default)]
struct Uid {
    calls: usize,
    bytes: usize,
}

/// One call in flight; dropping it ends the call's count.
#[derive(Debug)]
pub struct Permit {
    admission: Arc<Admission>,
    sender: String,
    uid: Option<u32>,
    /// Reply bytes charged (see [`Permit::hold`]).
    bytes: usize,
    left: watch::Receiver<bool>,
}

/// A call counted from its arrival until its reply is written (see [`Admission::answer`]).
#[derive(Debug)]
pub struct Answer {
    admission: Arc<Admission>,
    /// `None` for a call that is not counted (root's, or one whose caller is unknown).
    uid: Option<u32>,
}

impl Drop for Answer {
    fn drop(&mut self) {
        let Some(uid) = self.uid else { return };
        let mut c = self.admission.inner.lock().unwrap();
        if let Some(n) = c.answers.get_mut(&uid) {
            *n -= 1;
            if *n == 0 {
                c.answers.remove(&uid);
            }
        }
    }
}

impl Admission {
    /// Count a call of `uid` until its reply is written, or `None` when that uid already has
    /// [`ANSWERS_PER_UID`] calls unanswered: the call is to be dropped without a reply. Root's
    /// calls, and those of a caller whose uid is unknown, are never dropped.
    pub fn answer(self: &Arc<Self>, uid: Option<u32>) -> Option<Answer> {
        let uid = uid.filter(|u| *u != 0);
        if let Some(u) = uid {
            let mut c = self.inner.lock().unwrap();
            let n = c.answers.entry(u).or_default();
            if *n >= ANSWERS_PER_UID {
                return None;
            }
            *n += 1;
        }
        Some(Answer {
            admission: self.clone(),
            uid,
        })
    }

    /// Count a call of `sender`, or refuse it if the sender has [`PER_SENDER`] in flight.
    pub fn admit(self: &Arc<Self>, sender: &str) -> Result<Permit, Error> {
        let mut c = self.inner.lock().unwrap();
        let s = c
            .senders
            .entry(sender.to_string())
            .or_insert_with(|| Sender {
                calls: 0,
                bytes: 0,
                left: watch::channel(false).0,
            });
        if s.calls >= PER_SENDER {
            return Err(Error::LimitExceeded(format!(
                "at most {PER_SENDER} calls in flight per connection; read the replies first"
            )));
        }
        s.calls += 1;
        Ok(Permit {
            admission: self.clone(),
            sender: sender.to_string(),
            uid: None,
            bytes: 0,
            left: s.left.subscribe(),
        })
    }

    /// How many calls `sender` has in flight.
    pub fn in_flight(&self, sender: &str) -> usize {
        let c = self.inner.lock().unwrap();
        c.senders.get(sender).map_or(0, |s| s.calls)
    }

    /// `sender` left the bus: its waiting calls end.
    pub fn left(&self, sender: &str) {
        if let Some(s) = self.inner.lock().unwrap().senders.get(sender) {
            s.left.send_replace(true);
        }
    }
}

impl Permit {
    /// Count the call against `uid` too (not for root), or refuse it if that uid has
    /// [`PER_UID`] in flight.
    pub fn for_uid(mut self, uid: u32) -> Result<Permit, Error> {
        if uid == 0 {
            return Ok(self);
        }
        let mut c = self.admission.inner.lock().unwrap();
        let n = c.uids.entry(uid).or_default();
        if n.calls >= PER_UID {
            return Err(Error::LimitExceeded(format!(
                "at most {PER_UID} calls in flight per user"
            )));
        }
        n.calls += 1;
        drop(c);
        self.uid = Some(uid);
        Ok(self)
    }

    /// Make `value` the reply of this call, charging its size until it is written; refused
    /// (and dropped) if the sender or its uid already holds that much.
    pub fn hold<T: Serialize + Type>(self, value: T) -> Result<Held<T>, Error> {
        let ctx = zbus::wire::serialized::Context::new(zbus::wire::Endian::Little, 0);
        let size = zbus::wire::serialized_size(ctx, &value)
            .map(|s| s.size())
            .unwrap_or(0);
        self.hold_sized(value, size)
    }

    /// [`Permit::hold`] for a reply whose size is known without serializing it (a body
    /// encoded already, `ListContainers`'): `size` bytes are charged.
    pub fn hold_sized<T>(mut self, value: T, size: usize) -> Result<Held<T>, Error> {
        {
            let mut c = self.admission.inner.lock().unwrap();
            let held = c.senders.get(&self.sender).map_or(0, |s| s.bytes);
            if held > 0 && held + size > PER_SENDER_BYTES {
                return Err(Error::LimitExceeded(format!(
                    "this connection has {held} bytes of replies it has not read"
                )));
            }
            if let Some(uid) = self.uid {
                let held = c.uids.get(&uid).map_or(0, |u| u.bytes);
                if held > 0 && held + size > PER_UID_BYTES {
                    return Err(Error::LimitExceeded(format!(
                        "this user has {held} bytes of replies not read"
                    )));
                }
                c.uids.entry(uid).or_default().bytes += size;
            }
            if let Some(s) = c.senders.get_mut(&self.sender) {
                s.bytes += size;
            }
        }
        self.bytes = size;
        Ok(Held {
            value,
            _permit: Some(self),
        })
    }

    /// Completes when the caller has left the bus.
    pub async fn caller_left(&mut self) {
        if self.left.wait_for(|l| *l).await.is_err() {
            // The sender's entry is gone only once every permit is: not while we hold one.
            std::future::pending::<()>().await;
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut c = self.admission.inner.lock().unwrap();
        if let Some(s) = c.senders.get_mut(&self.sender) {
            s.calls -= 1;
            s.bytes -= self.bytes;
            if s.calls == 0 {
                c.senders.remove(&self.sender);
            }
        }
        if let Some(uid) = self.uid
            && let Some(n) = c.uids.get_mut(&uid)
        {
            n.calls -= 1;
            n.bytes -= self.bytes;
            if n.calls == 0 {
                c.uids.remove(&uid);
            }
        }
    }
}

/// A reply that keeps its call counted until zbus has written it: zbus serializes the value
/// and drops it only after the send. On the bus it is `T`; a proxy (berthctl) receives it
/// without a permit, and uses it as `T` (`Deref`, `IntoIterator`).
#[derive(Debug)]
pub struct Held<T> {
    pub value: T,
    _permit: Option<Permit>,
}

impl<T> Held<T> {
    pub fn into_inner(self) -> T {
        self.value
    }
}

impl<T> std::ops::Deref for Held<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

impl<T: IntoIterator> IntoIterator for Held<T> {
    type Item = T::Item;
    type IntoIter = T::IntoIter;
    fn into_iter(self) -> T::IntoIter {
        self.value.into_iter()
    }
}

impl<'de, T: serde::Deserialize<'de>> serde::Deserialize<'de> for Held<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        T::deserialize(d).map(|value| Held {
            value,
            _permit: None,
        })
    }
}

impl<T: Type> Type for Held<T> {
    const SIGNATURE: &'static Signature = T::SIGNATURE;
}

impl<T: Serialize> Serialize for Held<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.value.serialize(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn senders_and_uids_are_bounded_and_counts_come_back() {
        let a = Arc::new(Admission::default());
        let mut held: Vec<Permit> = (0..PER_SENDER).map(|_| a.admit(":1.1").unwrap()).collect();
        assert!(matches!(a.admit(":1.1"), Err(Error::LimitExceeded(_))));
        // Another connection is not affected.
        let other = a.admit(":1.2").unwrap();
        held.pop();
        assert!(a.admit(":1.1").is_ok());
        drop(held);
        drop(other);
        assert_eq!(a.in_flight(":1.1"), 0);
        assert!(a.inner.lock().unwrap().senders.is_empty());
        // A uid over many connections.
        let mut by_uid = Vec::new();
        for i in 0..PER_UID {
            by_uid.push(a.admit(&format!(":2.{i}")).unwrap().for_uid(65534).unwrap());
        }
        let over = a.admit(":2.999").unwrap().for_uid(65534);
        assert!(matches!(over, Err(Error::LimitExceeded(_))));
        // The refused call's sender count came back with it.
        assert_eq!(a.in_flight(":2.999"), 0);
        // Root has no uid bound.
        assert!(a.admit(":3.1").unwrap().for_uid(0).is_ok());
        drop(by_uid);
        assert!(a.inner.lock().unwrap().uids.is_empty());
    }

    #[test]
    fn reply_bytes_not_yet_written_are_bounded_but_one_reply_always_goes() {
        let a = Arc::new(Admission::default());
        let big = vec![0u8; PER_SENDER_BYTES * 2];
        // Alone, even a reply over the bound goes.
        let first = a.admit(":1.1").unwrap().hold(big.clone()).unwrap();
        // A second one waits for the first to be written: refused.
        assert!(matches!(
            a.admit(":1.1").unwrap().hold(vec![0u8; 16]),
            Err(Error::LimitExceeded(_))
        ));
        drop(first);
        let small: Vec<_> = (0..4)
            .map(|_| a.admit(":1.1").unwrap().hold(vec![0u8; 1024]).unwrap())
            .collect();
        drop(small);
        // Per uid, over connections.
        let held: Vec<_> = (0..3)
            .map(|i| {
                a.admit(&format!(":2.{i}"))
                    .unwrap()
                    .for_uid(65534)
                    .unwrap()
                    .hold(vec![0u8; PER_UID_BYTES / 4])
                    .unwrap()
            })
            .collect();
        let over = a
            .admit(":2.9")
            .unwrap()
            .for_uid(65534)
            .unwrap()
            .hold(vec![0u8; PER_UID_BYTES / 3]);
        assert!(matches!(over, Err(Error::LimitExceeded(_))));
        drop(held);
        let c = a.inner.lock().unwrap();
        assert!(c.senders.is_empty() && c.uids.is_empty());
    }

    #[test]
    fn a_uid_past_its_unanswered_calls_is_dropped_and_root_never_is() {
        let a = Arc::new(Admission::default());
        let held: Vec<Answer> = (0..ANSWERS_PER_UID)
            .map(|_| a.answer(Some(65534)).unwrap())
            .collect();
        assert!(a.answer(Some(65534)).is_none());
        // Another uid, root and an unknown caller are not affected.
        let other = a.answer(Some(1000)).unwrap();
        let root: Vec<Answer> = (0..2 * ANSWERS_PER_UID)
            .map(|_| a.answer(Some(0)).unwrap())
            .collect();
        assert!(a.answer(None).is_some());
        drop(held);
        assert!(a.answer(Some(65534)).is_some());
        drop((other, root));
        assert!(a.inner.lock().unwrap().answers.is_empty());
    }

    #[test]
    fn a_waiting_call_ends_when_its_caller_leaves() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let a = Arc::new(Admission::default());
            let mut p = a.admit(":1.7").unwrap();
            let waiting =
                tokio::time::timeout(std::time::Duration::from_millis(50), p.caller_left());
            assert!(waiting.await.is_err(), "ended while the caller is there");
            a.left(":1.7");
            tokio::time::timeout(std::time::Duration::from_secs(5), p.caller_left())
                .await
                .expect("ends once the caller left");
        });
    }

    #[test]
    fn a_held_reply_is_its_value_on_the_wire() {
        let a = Arc::new(Admission::default());
        let h = a.admit(":1.1").unwrap().hold(vec![1u32, 2]).unwrap();
        assert_eq!(
            <Held<Vec<u32>> as Type>::SIGNATURE,
            <Vec<u32> as Type>::SIGNATURE
        );
        let ctx = zbus::wire::serialized::Context::new(zbus::wire::Endian::Little, 0);
        let bytes = zbus::wire::to_bytes(ctx, &h).unwrap();
        let back: Vec<u32> = bytes.deserialize().unwrap().0;
        assert_eq!(back, [1, 2]);
        assert_eq!(a.in_flight(":1.1"), 1);
        drop(h);
        assert_eq!(a.in_flight(":1.1"), 0);
    }
}
