//! Callers leaving the bus, told by berthd's one `NameOwnerChanged` subscription
//! ([`super::Registry::watch_callers`]). What must end with its caller (an exec or a foreground
//! container started with EndWithCaller) waits here, instead of adding a match rule and asking
//! `NameHasOwner` of its own: two round trips to the bus on every exec, and a third to remove
//! the rule.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;

use tokio::sync::oneshot;

/// How many departed names are remembered, for a wait that begins after its caller's
/// departure was seen (the call and the signal are handled by different tasks). Unique names
/// are never reused, so an old one only costs its bytes.
const RECENT: usize = 1024;

#[derive(Default)]
pub struct Departures {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Whether the subscription works: without it nobody can be told.
    watching: bool,
    waiting: HashMap<String, Vec<oneshot::Sender<()>>>,
    recent: VecDeque<String>,
    gone: HashSet<String>,
}

impl Departures {
    /// The subscription is in place: departures from now on are seen.
    pub fn watching(&self) {
        self.inner.lock().unwrap().watching = true;
    }

    /// `name` left the bus: wake whoever waits for it.
    pub fn left(&self, name: &str) {
        let mut i = self.inner.lock().unwrap();
        for tx in i.waiting.remove(name).unwrap_or_default() {
            // A waiter that gave up dropped its receiver: nothing to tell.
            tx.send(()).ok();
        }
        if i.gone.insert(name.to_string()) {
            i.recent.push_back(name.to_string());
            if i.recent.len() > RECENT
                && let Some(old) = i.recent.pop_front()
            {
                i.gone.remove(&old);
            }
        }
    }

    /// Resolves once `name` has left the bus, at once if it already has; `None` when
    /// departures are not watched.
    pub fn wait(&self, name: &str) -> Option<oneshot::Receiver<()>> {
        let mut i = self.inner.lock().unwrap();
        if !i.watching {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        if i.gone.contains(name) {
            tx.send(()).ok();
            return Some(rx);
        }
        let waiters = i.waiting.entry(name.to_string()).or_default();
        // Waits that ended (their exec exited first) are dropped here, so a caller that stays
        // for many execs holds one entry per live wait.
        waiters.retain(|w| !w.is_closed());
        waiters.push(tx);
        Some(rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn told(rx: &mut oneshot::Receiver<()>) -> bool {
        rx.try_recv().is_ok()
    }

    #[test]
    fn nothing_is_promised_before_the_subscription_works() {
        let d = Departures::default();
        assert!(d.wait(":1.5").is_none());
        d.watching();
        assert!(d.wait(":1.5").is_some());
    }

    #[test]
    fn a_waiter_is_woken_when_its_caller_leaves_and_not_by_others() {
        let d = Departures::default();
        d.watching();
        let mut a = d.wait(":1.5").unwrap();
        let mut b = d.wait(":1.5").unwrap();
        let mut c = d.wait(":1.6").unwrap();
        d.left(":1.7");
        assert!(!told(&mut a) && !told(&mut c));
        d.left(":1.5");
        assert!(told(&mut a) && told(&mut b));
        assert!(!told(&mut c));
    }

    #[test]
    fn a_wait_that_begins_after_the_departure_ends_at_once() {
        let d = Departures::default();
        d.watching();
        d.left(":1.5");
        assert!(told(&mut d.wait(":1.5").unwrap()));
    }

    #[test]
    fn the_remembered_departures_and_ended_waits_are_bounded() {
        let d = Departures::default();
        d.watching();
        for n in 0..RECENT + 10 {
            d.left(&format!(":1.{n}"));
        }
        {
            let i = d.inner.lock().unwrap();
            assert_eq!((i.recent.len(), i.gone.len()), (RECENT, RECENT));
            assert!(!i.gone.contains(":1.0"));
        }
        // The oldest are forgotten: a wait for one of them waits.
        assert!(!told(&mut d.wait(":1.0").unwrap()));
        for _ in 0..100 {
            drop(d.wait(":2.1").unwrap());
        }
        let _live = d.wait(":2.1").unwrap();
        assert_eq!(d.inner.lock().unwrap().waiting[":2.1"].len(), 1);
    }
}
