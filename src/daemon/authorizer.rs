//! Who is calling: each caller's uid (asked once, ahead of its first call where possible),
//! polkit's answer for what it asks to do, and callers leaving the bus.

use super::table::Registry;
use crate::dbus::{self, Action, Caller, Result};
use crate::polkit;

/// How many callers' uids are remembered.
const MAX_CALLERS: usize = 4096;
/// At most this many uids of new bus connections are asked for at once ahead of their first
/// call ([`Registry::watch_callers`]); beyond that a connection's first call asks.
const MAX_PREFETCH: usize = 8;

/// polkit, with each caller's uid asked once: unique bus names are never reused while the
/// bus runs, so a name's uid never changes. Root is allowed without asking polkit.
pub struct Authorizer {
    bus: Option<polkit::BusAuthority>,
    /// The uid of each caller, or the one lookup of it under way that every call of that caller
    /// waits for: a new connection's first burst of calls (a flood sends its whole burst before
    /// any answer) asks the bus once, not once per call.
    uids: std::sync::Mutex<
        std::collections::HashMap<String, std::sync::Arc<tokio::sync::OnceCell<u32>>>,
    >,
    /// uids being asked for ahead of a first call.
    prefetching: std::sync::atomic::AtomicUsize,
}

impl Authorizer {
    pub async fn new(conn: &zbus::Connection) -> Authorizer {
        let bus = match polkit::BusAuthority::new(conn).await {
            Ok(b) => Some(b),
            Err(e) => {
                tracing::warn!("cannot reach polkit: {e}; only root may change containers");
                None
            }
        };
        Authorizer {
            bus,
            uids: Default::default(),
            prefetching: Default::default(),
        }
    }
}

impl Authorizer {
    /// A caller left the bus: its name is never used again.
    fn forget(&self, sender: &str) {
        self.uids.lock().unwrap().remove(sender);
    }

    /// May `sender` read the system journal, by the journal's own rule: root, or a member of
    /// one of the groups its files are shared with (systemd-journal, adm, wheel).
    pub(super) async fn may_read_journal(&self, sender: &str) -> std::result::Result<bool, String> {
        use polkit::Authority;
        if self.caller_uid(sender).await? == 0 {
            return Ok(true);
        }
        let bus = self.bus.as_ref().ok_or("the bus is not reachable")?;
        let groups = bus.caller_groups(sender).await?;
        Ok(["systemd-journal", "adm", "wheel"].iter().any(|g| {
            matches!(nix::unistd::Group::from_name(g), Ok(Some(gr)) if groups.contains(&gr.gid.as_raw()))
        }))
    }
}

impl polkit::Authority for Authorizer {
    async fn caller_uid(&self, sender: &str) -> std::result::Result<u32, String> {
        let cell = {
            let mut uids = self.uids.lock().unwrap();
            if !uids.contains_key(sender) && uids.len() >= MAX_CALLERS {
                uids.clear();
            }
            uids.entry(sender.to_string()).or_default().clone()
        };
        let bus = self.bus.as_ref().ok_or("the bus is not reachable")?;
        // A failed lookup leaves the cell empty: the next call asks again.
        cell.get_or_try_init(|| bus.caller_uid(sender))
            .await
            .copied()
    }

    async fn check(&self, query: &polkit::Query) -> std::result::Result<polkit::Answer, String> {
        match &self.bus {
            Some(bus) => bus.check(query).await,
            None => Err("polkit is not reachable".into()),
        }
    }
}

impl Registry {
    /// May `caller` do `action` to `object`? Root may; anyone else if polkit says so. Any
    /// error while finding out is a denial.
    pub(super) async fn authorize(
        &self,
        caller: &Caller,
        action: Action,
        verb: &str,
        object: (&str, &str),
    ) -> Result<()> {
        let details = [(object.0, object.1), ("verb", verb)];
        polkit::authorize_with(
            &self.authorizer,
            &caller.sender,
            action,
            &details,
            caller.interactive,
        )
        .await
        .map_err(|d| dbus::Error::PermissionDenied(d.to_string()))
    }
}

impl Registry {
    /// Follow callers on the bus. A new connection's uid is asked for at once, so that its first
    /// call (berthctl makes one or two) finds it known: that round trip to the bus was on the
    /// way of every `berthctl exec`. Callers leaving: their waiting calls end, their uid is
    /// forgotten, what ends with them is told ([`super::departures`]).
    pub async fn watch_callers(&self) {
        let proxy = match zbus::fdo::DBusProxy::new(&self.conn).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!("cannot watch callers leaving the bus: {e}, ignoring");
                return;
            }
        };
        let mut left = match proxy.receive_name_owner_changed().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("cannot watch callers leaving the bus: {e}, ignoring");
                return;
            }
        };
        self.departures.watching();
        let me = self.me.clone();
        tokio::spawn(async move {
            use futures_util::StreamExt;
            while let Some(sig) = left.next().await {
                let Ok(args) = sig.args() else { continue };
                if !args.name.starts_with(':') {
                    continue;
                }
                let Some(me) = me.upgrade() else { return };
                if args.new_owner.is_some() {
                    me.prefetch_uid(args.name.to_string());
                    continue;
                }
                me.admission.left(args.name.as_str());
                me.authorizer.forget(args.name.as_str());
                me.departures.left(args.name.as_str());
            }
        });
    }
}

impl Registry {
    /// Learn the uid of `name`, a connection that just appeared, unless enough are being
    /// learnt already. An error is left for the first call to meet again.
    fn prefetch_uid(&self, name: String) {
        use std::sync::atomic::Ordering;
        let busy = &self.authorizer.prefetching;
        if busy.fetch_add(1, Ordering::Relaxed) >= MAX_PREFETCH {
            busy.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        let me = self.arc();
        tokio::spawn(async move {
            use polkit::Authority;
            if me.authorizer.caller_uid(&name).await.is_err() {
                // Gone already, or the bus did not answer: its first call asks again.
            }
            me.authorizer.prefetching.fetch_sub(1, Ordering::Relaxed);
        });
    }
}
