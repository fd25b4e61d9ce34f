//! `org.freedesktop.DBus.ObjectManager` on `/org/berth/berth1`, served by berth instead of
//! zbus's own (`zbus::fdo::ObjectManager`), for one reason: its `GetManagedObjects` reply holds
//! the properties of every container and image, and any user may call it, so it must be
//! bounded like the Manager's methods ([`super::admission`]): zbus's own took 155 MiB of
//! berthd for 1000 calls nobody read. zbus still announces objects as they come and go
//! (`InterfacesAdded`, `InterfacesRemoved`): it recognises an object manager by the interface's
//! name.

use std::collections::HashMap;
use std::sync::Weak;

use zbus::message::Header;
use zbus::object_server::{Interface, ObjectServer, SignalEmitter};
use zbus::{Connection, OwnedObjectPath, interface};

use super::gate::Gated;
use super::{Backend, Container, Held, Image, Result, enter, live};

/// What `GetManagedObjects` returns: object → interface → property → value.
pub type ManagedObjects = zbus::fdo::ManagedObjects;

/// How many `GetManagedObjects` replies are built at once, over all callers. Each is the
/// largest reply berth has (every object's properties): the admission bounds how many calls a
/// caller has in flight (64 per uid), and 64 replies of 50 containers being built at once grew
/// berthd by 20 MiB. A call waiting here holds nothing.
static BUILDING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

/// The object manager of berth's objects.
pub struct ObjectManager {
    pub backend: Weak<dyn Backend>,
}

/// The properties of the `I` interface at `path`, as `GetAll` gives them; `None` when the
/// object is gone meanwhile.
async fn properties_of<I: Interface>(
    server: &ObjectServer,
    conn: &Connection,
    hdr: &Header<'_>,
    path: &OwnedObjectPath,
) -> Option<(
    zbus::names::OwnedInterfaceName,
    HashMap<String, zbus::OwnedVariant>,
)> {
    let iface = server.interface::<_, I>(path.as_str()).await.ok()?;
    let emitter = SignalEmitter::new(conn, path.as_str()).ok()?;
    let props = iface
        .get()
        .await
        .get_all(server, conn, Some(hdr), &emitter)
        .await
        .ok()?;
    Some((I::name().into(), props))
}

#[interface(
    name = "org.freedesktop.DBus.ObjectManager",
    introspection_docs = false
)]
impl ObjectManager {
    /// Every container and image object with its properties.
    async fn get_managed_objects(
        &self,
        #[zbus(object_server)] server: &ObjectServer,
        #[zbus(connection)] conn: &Connection,
        #[zbus(header)] hdr: Header<'_>,
    ) -> Result<Held<ManagedObjects>> {
        let call = enter(&self.backend, &hdr, "").await?;
        let _building = BUILDING
            .acquire()
            .await
            .map_err(|_| super::Error::Failed("berthd is shutting down".into()))?;
        let backend = live(&self.backend)?;
        let mut out = ManagedObjects::new();
        // Each object's properties are read on their own, and none of it waits: without a
        // yield after each, a flood of these calls (each admitted as soon as the one before
        // was written) ran one after the other ahead of every other caller's call (7 s for
        // 1000 calls of 50 containers each).
        for c in backend.list() {
            if let Some((name, props)) =
                properties_of::<Gated<Container>>(server, conn, &hdr, &c.object_path).await
            {
                out.insert(c.object_path, HashMap::from([(name, props)]));
            }
            tokio::task::yield_now().await;
        }
        for i in backend.list_images() {
            if let Some((name, props)) =
                properties_of::<Gated<Image>>(server, conn, &hdr, &i.object_path).await
            {
                out.insert(i.object_path, HashMap::from([(name, props)]));
            }
            tokio::task::yield_now().await;
        }
        call.hold(out)
    }

    /// An object appeared, or gained interfaces (sent by zbus as objects are added).
    #[zbus(signal)]
    pub async fn interfaces_added(
        emitter: &SignalEmitter<'_>,
        object_path: zbus::ObjectPath<'_>,
        interfaces_and_properties: HashMap<
            zbus::names::InterfaceName<'_>,
            HashMap<&str, zbus::Variant<'_>>,
        >,
    ) -> zbus::Result<()>;

    /// An object went, or lost interfaces (sent by zbus as objects are removed).
    #[zbus(signal)]
    pub async fn interfaces_removed(
        emitter: &SignalEmitter<'_>,
        object_path: zbus::ObjectPath<'_>,
        interfaces: Vec<zbus::names::InterfaceName<'_>>,
    ) -> zbus::Result<()>;
}
