//! berthd's machined registrations ([`crate::systemd::machined`]): every running container is
//! a machine while it runs, registered after its start, unregistered at its exit, and
//! reconciled after a (re)start of berthd, so that a registration is never duplicated nor left
//! behind for a container that ended while berthd was away. Without machined nothing changes,
//! and berthd says so once. When machined comes onto the bus later (started after berthd, or
//! restarted), berthd sees its name get an owner (`NameOwnerChanged`) and registers the
//! containers running then.
//!
//! What machinectl does to a machine (terminate: stop its unit; kill: signal it; poweroff and
//! reboot: SIGRTMIN+4 and SIGINT to its leader) reaches berthd the way any other end does: the
//! leader's pidfd, watched by the reaper, which records the state and exit status.

use std::sync::Mutex;

use futures_util::StreamExt;
use tracing::{info, warn};

use super::table::{Registry, State};
use crate::systemd::machined::{self, Machined};

/// The client: `None` while machined is neither on the bus nor activatable (until its name
/// gets an owner).
static MACHINED: Mutex<Option<Machined>> = Mutex::new(None);

fn client() -> Option<Machined> {
    MACHINED.lock().unwrap().clone()
}

impl Registry {
    /// Find machined (at berthd's start), make its berth machines agree with the running
    /// containers, and do that again whenever machined comes onto the bus.
    pub(super) async fn open_machined(&self) {
        // Watching first, so that machined starting during the lookup is not missed.
        let owners = match zbus::fdo::DBusProxy::new(&self.conn).await {
            Ok(dbus) => dbus
                .receive_name_owner_changed_with_args(&[(0, machined::BUS_NAME)])
                .await
                .map_err(|e| warn!("cannot watch for systemd-machined: {e}, ignoring"))
                .ok(),
            Err(e) => {
                warn!("cannot watch for systemd-machined: {e}, ignoring");
                None
            }
        };
        let found = match Machined::connect(&self.conn).await {
            Ok(Some(m)) => Some(m),
            Ok(None) => {
                info!(
                    "systemd-machined is not available; containers are not registered as machines until it is"
                );
                None
            }
            Err(e) => {
                warn!(
                    "systemd-machined is not available ({e}); containers are not registered as machines until it is"
                );
                None
            }
        };
        *MACHINED.lock().unwrap() = found;
        self.reconcile_machines().await;
        let Some(mut owners) = owners else { return };
        let me = self.arc();
        tokio::spawn(async move {
            while let Some(signal) = owners.next().await {
                let Ok(args) = signal.args() else { continue };
                if args.new_owner().is_none() {
                    continue;
                }
                me.machined_appeared().await;
            }
        });
    }

    /// machined got an owner (started, or restarted): connect if berthd had no client, and
    /// register what runs now (a restarted machined keeps what it had: reconciling registers
    /// only what is missing).
    async fn machined_appeared(&self) {
        if client().is_none() {
            match Machined::connect(&self.conn).await {
                Ok(Some(m)) => {
                    info!("systemd-machined appeared; registering the running containers");
                    *MACHINED.lock().unwrap() = Some(m);
                }
                Ok(None) => return,
                Err(e) => {
                    warn!("systemd-machined appeared but does not answer ({e}), ignoring");
                    return;
                }
            }
        }
        self.reconcile_machines().await;
    }

    /// Unregister berth machines whose container does not run (or runs with another leader),
    /// and register the running containers that have no registration.
    pub(super) async fn reconcile_machines(&self) {
        let Some(m) = client() else { return };
        let registered = match m.list_berth().await {
            Ok(r) => r,
            Err(e) => {
                warn!("cannot list machines: {e}, ignoring");
                return;
            }
        };
        let running: Vec<(String, u32)> = self
            .entries
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, e)| e.state == State::Running)
            .filter_map(|(n, e)| e.leader.map(|l| (n.clone(), l as u32)))
            .collect();
        let (unregister, register) = machined::reconcile_plan(&registered, &running);
        for name in unregister {
            info!(
                "machine {name} is stale (its container does not run with that leader); unregistering it"
            );
            if let Err(e) = m.unregister(&name).await {
                warn!("{e}, ignoring");
            }
        }
        for name in register {
            self.register_machine(&name).await;
        }
    }

    /// Register a running container as a machine (best effort: a container runs without).
    pub(super) async fn register_machine(&self, name: &str) {
        let Some(m) = client() else { return };
        let Ok((leader, root)) = self.with(name, |e| (e.leader, e.shown_root.clone())) else {
            return;
        };
        let Some(leader) = leader else { return };
        let ifindices = self.machine_ifindices(name).await;
        match m
            .register(name, leader as u32, &root.display().to_string(), &ifindices)
            .await
        {
            Ok(()) => tracing::debug!("registered container {name} with machined"),
            // It ended before the registration got there: nothing to register.
            Err(e) if e.is_gone_leader() => tracing::debug!("{e}, ignoring"),
            Err(e) => warn!("{e}, ignoring"),
        }
    }

    /// Drop a container's machine (at its exit).
    pub(super) async fn unregister_machine(&self, name: &str) {
        let Some(m) = client() else { return };
        if let Err(e) = m.unregister(name).await {
            warn!("{e}, ignoring");
        }
    }

    /// The host side of the container's network link, for machined (`machinectl status`).
    async fn machine_ifindices(&self, name: &str) -> Vec<i32> {
        let Some(Ok(engine)) = self.network.get() else {
            return Vec::new();
        };
        let ifname = engine
            .lock()
            .await
            .attachment(name)
            .and_then(|a| a.host_if.as_ref().map(|i| i.to_string()));
        ifname
            .and_then(|n| std::fs::read_to_string(format!("/sys/class/net/{n}/ifindex")).ok())
            .and_then(|i| i.trim().parse::<i32>().ok())
            .map(|i| vec![i])
            .unwrap_or_default()
    }
}
