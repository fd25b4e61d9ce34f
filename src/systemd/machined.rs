//! systemd-machined (`org.freedesktop.machine1`): registering containers the way
//! `systemd-nspawn --register=yes --keep-unit` does when its unit already exists. berth makes
//! its own scope (or runs in its `berth@` service), so it uses `RegisterMachineWithNetwork`,
//! which takes the unit from the leader's cgroup, never `CreateMachine`, which would make a
//! second scope. machined then serves `machinectl list/status/show/terminate/kill/poweroff/
//! reboot/login/shell` on the machine, and drops it by itself when its unit goes away.

use thiserror::Error;
use zbus::{OwnedObjectPath, proxy};

/// The service name berth registers its machines under (`machinectl show -p Service`).
pub const SERVICE: &str = "berth";
/// The class of every berth machine.
pub const CLASS: &str = "container";
/// machined's bus name.
pub const BUS_NAME: &str = "org.freedesktop.machine1";

#[proxy(
    interface = "org.freedesktop.machine1.Manager",
    default_service = "org.freedesktop.machine1",
    default_path = "/org/freedesktop/machine1"
)]
pub trait MachineManager {
    #[allow(clippy::too_many_arguments)]
    fn register_machine_with_network(
        &self,
        name: &str,
        id: &[u8],
        service: &str,
        class: &str,
        leader: u32,
        root_directory: &str,
        network_interfaces: &[i32],
    ) -> zbus::Result<OwnedObjectPath>;
    fn unregister_machine(&self, name: &str) -> zbus::Result<()>;
    fn get_machine(&self, name: &str) -> zbus::Result<OwnedObjectPath>;
    fn list_machines(&self) -> zbus::Result<Vec<(String, String, String, OwnedObjectPath)>>;
}

#[proxy(
    interface = "org.freedesktop.machine1.Machine",
    default_service = "org.freedesktop.machine1"
)]
pub trait Machine {
    #[zbus(property)]
    fn leader(&self) -> zbus::Result<u32>;
    #[zbus(property)]
    fn service(&self) -> zbus::Result<String>;
}

#[derive(Debug, Error)]
pub enum MachinedError {
    #[error("machined call {call} for machine {name} failed: {source}")]
    Call {
        call: &'static str,
        name: String,
        source: zbus::Error,
    },
}

impl MachinedError {
    /// machined could not find the leader (it exited before the call arrived).
    pub fn is_gone_leader(&self) -> bool {
        let MachinedError::Call { source, .. } = self;
        matches!(source, zbus::Error::MethodError(name, _, _) if name.as_str() == "org.freedesktop.DBus.Error.UnixProcessIdUnknown")
    }
}

/// One machine machined knows that berth registered (its service is [`SERVICE`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    pub name: String,
    pub leader: u32,
}

/// A machined client.
#[derive(Clone)]
pub struct Machined {
    proxy: MachineManagerProxy<'static>,
}

impl Machined {
    /// A client when machined is on the bus or can be activated on it and answers; `None` when
    /// it is not there at all (no systemd-container installed), which is not an error.
    pub async fn connect(conn: &zbus::Connection) -> zbus::Result<Option<Machined>> {
        let dbus = zbus::fdo::DBusProxy::new(conn).await?;
        let name = zbus::names::BusName::from_static_str(BUS_NAME)?;
        let owned = dbus.name_has_owner(name).await?;
        let activatable = owned
            || dbus
                .list_activatable_names()
                .await?
                .iter()
                .any(|n| n.as_str() == BUS_NAME);
        if !activatable {
            return Ok(None);
        }
        let proxy = MachineManagerProxy::new(conn).await?;
        // Listed but unusable (masked, or failing to start): an error, said once, rather than
        // a failed registration at every start.
        proxy.list_machines().await?;
        Ok(Some(Machined { proxy }))
    }

    /// Register a running container: class `container`, service `berth`, its leader (whose
    /// cgroup names the unit), root directory (absolute, or empty when there is none to show)
    /// and host-side network interfaces.
    pub async fn register(
        &self,
        name: &str,
        leader: u32,
        root_directory: &str,
        ifindices: &[i32],
    ) -> Result<(), MachinedError> {
        let root = if root_directory.starts_with('/') {
            root_directory
        } else {
            ""
        };
        self.proxy
            .register_machine_with_network(name, &[], SERVICE, CLASS, leader, root, ifindices)
            .await
            .map(drop)
            .map_err(|source| MachinedError::Call {
                call: "RegisterMachineWithNetwork",
                name: name.into(),
                source,
            })
    }

    /// Forget a machine (its processes are left alone). One that is already gone is fine.
    pub async fn unregister(&self, name: &str) -> Result<(), MachinedError> {
        match self.proxy.unregister_machine(name).await {
            Err(e) if is_no_such_machine(&e) => Ok(()),
            r => r.map_err(|source| MachinedError::Call {
                call: "UnregisterMachine",
                name: name.into(),
                source,
            }),
        }
    }

    /// The machines berth registered, with their leaders.
    pub async fn list_berth(&self) -> Result<Vec<Registered>, MachinedError> {
        let all = self
            .proxy
            .list_machines()
            .await
            .map_err(|source| MachinedError::Call {
                call: "ListMachines",
                name: "*".into(),
                source,
            })?;
        let mut out = Vec::new();
        for (name, _class, service, path) in all {
            if service != SERVICE {
                continue;
            }
            // A machine that vanished meanwhile, or whose leader cannot be read, shows leader
            // 0, which no running container has: reconciling then drops it.
            let leader = match MachineProxy::builder(self.proxy.inner().connection())
                .path(path)
                .cache_properties(zbus::proxy::CacheProperties::No)
                .build()
                .await
            {
                Ok(p) => p.leader().await.unwrap_or(0),
                Err(_) => 0,
            };
            out.push(Registered { name, leader });
        }
        Ok(out)
    }
}

fn is_no_such_machine(e: &zbus::Error) -> bool {
    matches!(e, zbus::Error::MethodError(name, _, _) if name.as_str() == "org.freedesktop.machine1.NoSuchMachine")
}

/// What reconciling berth's machines with machined has to do: unregister machines whose
/// container does not run or whose leader is another process (a stale registration: machined
/// keeps one as long as its unit lives, systemd#7236/#8431), and register every running
/// container that has no registration (or had a stale one).
pub fn reconcile_plan(
    registered: &[Registered],
    running: &[(String, u32)],
) -> (Vec<String>, Vec<String>) {
    let mut unregister = Vec::new();
    let mut register = Vec::new();
    for r in registered {
        let current = running.iter().find(|(n, _)| *n == r.name);
        if current.is_none_or(|(_, leader)| *leader != r.leader) {
            unregister.push(r.name.clone());
        }
    }
    for (name, leader) in running {
        let ok = registered
            .iter()
            .any(|r| r.name == *name && r.leader == *leader);
        if !ok {
            register.push(name.clone());
        }
    }
    (unregister, register)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(name: &str, leader: u32) -> Registered {
        Registered {
            name: name.into(),
            leader,
        }
    }

    #[test]
    fn reconciling_drops_stale_and_foreign_leaders_and_registers_the_missing() {
        let registered = [reg("web", 10), reg("gone", 11), reg("reused", 12)];
        let running = [
            ("web".to_string(), 10),
            ("reused".to_string(), 99),
            ("new".to_string(), 13),
        ];
        let (unregister, register) = reconcile_plan(&registered, &running);
        assert_eq!(unregister, ["gone", "reused"]);
        assert_eq!(register, ["reused", "new"]);
    }

    #[test]
    fn reconciling_an_agreeing_state_does_nothing() {
        let (u, r) = reconcile_plan(&[reg("a", 1)], &[("a".into(), 1)]);
        assert!(u.is_empty() && r.is_empty());
        let (u, r) = reconcile_plan(&[], &[]);
        assert!(u.is_empty() && r.is_empty());
    }
}
