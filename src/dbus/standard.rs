//! `org.freedesktop.DBus.Properties` and `org.freedesktop.DBus.Introspectable` on every
//! container and image object, served by berth instead of the ones zbus gives every object,
//! for the reason [`super::object_manager`] is: any user may call them, and each reply waits in
//! berthd until the bus has read it, so they must be bounded like the Manager's methods
//! ([`super::admission`]). zbus's own, unbounded, grew berthd by 30 MiB for 16 connections of
//! 125 unread `Introspect` calls each. The replies are the same as zbus's: the same values, the
//! same errors, the same XML.
//!
//! zbus puts its own on every object it makes; [`replace`] swaps them for these once the
//! object is there. Under an object manager, zbus announces the swap: `InterfacesRemoved` and
//! `InterfacesAdded` of the two standard interfaces follow the object's own `InterfacesAdded`
//! (not for the objects berthd exports before it serves the object manager, at start).
//! `PropertiesChanged` does not depend on them: the interfaces send it themselves.

use std::collections::HashMap;
use std::sync::Weak;

use zbus::message::Header;
use zbus::names::InterfaceName;
use zbus::object_server::{DispatchResult, Interface, ObjectServer, SignalEmitter};
use zbus::{BoxDBusError, Connection, OwnedVariant, Variant, interface};

use super::gate::Gated;
use super::{Backend, Container, Held, Image, enter};

/// A berth error as the boxed error these replies carry.
fn boxed(e: super::Error) -> BoxDBusError {
    Box::new(e)
}

/// The standard interfaces zbus serves on every object itself; they have no properties.
const STANDARD: [&str; 3] = [
    "org.freedesktop.DBus.Introspectable",
    "org.freedesktop.DBus.Peer",
    "org.freedesktop.DBus.Properties",
];

/// `org.freedesktop.DBus.Peer` as zbus introspects it (zbus keeps that interface to itself).
const PEER_XML: [&str; 7] = [
    r#"<interface name="org.freedesktop.DBus.Peer">"#,
    r#"  <method name="Ping">"#,
    r#"  </method>"#,
    r#"  <method name="GetMachineId">"#,
    r#"    <arg type="s" direction="out"/>"#,
    r#"  </method>"#,
    r#"</interface>"#,
];

/// What zbus's `Introspect` of an object starts with.
const XML_HEADER: &str = r#"
<!DOCTYPE node PUBLIC "-//freedesktop//DTD D-BUS Object Introspection 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd">
<node>
"#;

/// Serve berth's [`Properties`] and [`Introspectable`] at `path` (a container or image object
/// just exported) instead of zbus's.
pub async fn replace(
    server: &ObjectServer,
    path: &str,
    backend: &Weak<dyn Backend>,
) -> zbus::Result<()> {
    // Removing fails when there is no object at `path` (its export failed): nothing is added
    // then, which would make an object of nothing but these. A call between the removal and
    // the addition is answered `UnknownInterface`/`UnknownMethod`, as on an object not there.
    for name in [STANDARD[2], STANDARD[0]] {
        let name = InterfaceName::from_static_str_unchecked(name);
        server.remove_named(path, name).await?;
    }
    server
        .at(
            path,
            Gated::new(
                Properties {
                    backend: backend.clone(),
                },
                backend.clone(),
            ),
        )
        .await?;
    server
        .at(
            path,
            Gated::new(
                Introspectable {
                    backend: backend.clone(),
                },
                backend.clone(),
            ),
        )
        .await?;
    Ok(())
}

/// The interfaces of berth that an object may have.
enum Own {
    Container,
    Image,
}

impl Own {
    fn of(name: &str) -> Option<Own> {
        if name == <Container as Interface>::name().as_str() {
            Some(Own::Container)
        } else if name == <Image as Interface>::name().as_str() {
            Some(Own::Image)
        } else {
            None
        }
    }
}

fn unknown_interface(name: &str) -> zbus::fdo::Error {
    zbus::fdo::Error::UnknownInterface(format!("Unknown interface '{name}'"))
}

fn unknown_property(name: &str) -> zbus::fdo::Error {
    zbus::fdo::Error::UnknownProperty(format!("Unknown property '{name}'"))
}

/// Whether the object at `path` has the standard interface `name` (every object of berth has
/// them all).
fn standard(name: &str) -> bool {
    STANDARD.contains(&name)
}

/// The path a call was sent to.
fn path_of<'h>(hdr: &'h Header<'_>) -> Result<&'h zbus::ObjectPath<'h>, BoxDBusError> {
    hdr.path().ok_or_else(|| zbus::Error::MissingField.into())
}

/// `org.freedesktop.DBus.Properties` of one container or image object.
pub struct Properties {
    pub backend: Weak<dyn Backend>,
}

/// Call `$body` with `$iface` the interface `$own` at `$path` (read-locked), or fail with
/// `UnknownInterface` when the object does not have it.
macro_rules! with_interface {
    ($server:expr, $path:expr, $own:expr, $name:expr, |$iface:ident| $body:expr) => {
        match $own {
            Own::Container => match $server
                .interface::<_, Gated<Container>>($path.as_str())
                .await
            {
                Ok(r) => {
                    let guard = r.get().await;
                    let $iface = &*guard;
                    $body
                }
                Err(_) => Err(unknown_interface($name).into()),
            },
            Own::Image => match $server.interface::<_, Gated<Image>>($path.as_str()).await {
                Ok(r) => {
                    let guard = r.get().await;
                    let $iface = &*guard;
                    $body
                }
                Err(_) => Err(unknown_interface($name).into()),
            },
        }
    };
}

/// The error for a property of an interface that is not berth's: zbus's for the standard ones
/// (they have none), UnknownInterface for any other.
fn not_ours(interface: &str, property: &str) -> BoxDBusError {
    if standard(interface) {
        unknown_property(property)
    } else {
        unknown_interface(interface)
    }
    .into()
}

#[interface(name = "org.freedesktop.DBus.Properties", introspection_docs = false)]
impl Properties {
    /// Get a property value.
    async fn get(
        &self,
        interface_name: InterfaceName<'_>,
        property_name: &str,
        #[zbus(connection)] conn: &Connection,
        #[zbus(object_server)] server: &ObjectServer,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
    ) -> Result<Held<OwnedVariant>, BoxDBusError> {
        let call = enter(&self.backend, &hdr, "ss").await.map_err(boxed)?;
        let path = path_of(&hdr)?;
        let Some(own) = Own::of(interface_name.as_str()) else {
            return Err(not_ours(interface_name.as_str(), property_name));
        };
        let value: Result<OwnedVariant, BoxDBusError> =
            with_interface!(server, path, own, interface_name.as_str(), |iface| {
                Interface::get(iface, property_name, server, conn, Some(&hdr), &emitter)
                    .await
                    .unwrap_or_else(|| Err(unknown_property(property_name).into()))
            });
        call.hold(value?).map_err(boxed)
    }

    /// Set a property value (berth's are all read-only: refused as zbus refuses them).
    #[allow(clippy::too_many_arguments)]
    async fn set(
        &self,
        interface_name: InterfaceName<'_>,
        property_name: &str,
        value: &Variant<'_>,
        #[zbus(object_server)] server: &ObjectServer,
        #[zbus(connection)] conn: &Connection,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
    ) -> Result<(), BoxDBusError> {
        let _call = enter(&self.backend, &hdr, "ssv").await.map_err(boxed)?;
        let path = path_of(&hdr)?;
        let Some(own) = Own::of(interface_name.as_str()) else {
            return Err(not_ours(interface_name.as_str(), property_name));
        };
        // As zbus does it: the interface's `set` first, `set_mut` if it asks for that.
        macro_rules! set_on {
            ($ty:ty) => {{
                let r = server
                    .interface::<_, $ty>(path.as_str())
                    .await
                    .map_err(|_| BoxDBusError::from(unknown_interface(interface_name.as_str())))?;
                {
                    let guard = r.get().await;
                    match Interface::set(
                        &*guard,
                        property_name,
                        value,
                        server,
                        conn,
                        Some(&hdr),
                        &emitter,
                    ) {
                        DispatchResult::RequiresMut => {}
                        DispatchResult::NotFound => {
                            return Err(unknown_property(property_name).into());
                        }
                        DispatchResult::Async(f) => return f.await,
                    }
                }
                let mut guard = r.get_mut().await;
                Interface::set_mut(
                    &mut *guard,
                    property_name,
                    value,
                    server,
                    conn,
                    Some(&hdr),
                    &emitter,
                )
                .await
                .unwrap_or_else(|| Err(unknown_property(property_name).into()))
            }};
        }
        match own {
            Own::Container => set_on!(Gated<Container>),
            Own::Image => set_on!(Gated<Image>),
        }
    }

    /// Get all properties.
    async fn get_all(
        &self,
        interface_name: InterfaceName<'_>,
        #[zbus(object_server)] server: &ObjectServer,
        #[zbus(connection)] conn: &Connection,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
    ) -> Result<Held<HashMap<String, OwnedVariant>>, BoxDBusError> {
        let call = enter(&self.backend, &hdr, "s").await.map_err(boxed)?;
        let path = path_of(&hdr)?;
        let Some(own) = Own::of(interface_name.as_str()) else {
            if standard(interface_name.as_str()) {
                return call.hold(HashMap::new()).map_err(boxed);
            }
            return Err(unknown_interface(interface_name.as_str()).into());
        };
        let all: Result<HashMap<String, OwnedVariant>, BoxDBusError> =
            with_interface!(server, path, own, interface_name.as_str(), |iface| {
                Interface::get_all(iface, server, conn, Some(&hdr), &emitter)
                    .await
                    .map_err(BoxDBusError::from)
            });
        call.hold(all?).map_err(boxed)
    }

    /// Emit the `org.freedesktop.DBus.Properties.PropertiesChanged` signal.
    #[zbus(signal)]
    pub async fn properties_changed(
        emitter: &SignalEmitter<'_>,
        interface_name: InterfaceName<'_>,
        changed_properties: HashMap<&str, Variant<'_>>,
        invalidated_properties: std::borrow::Cow<'_, [&str]>,
    ) -> zbus::Result<()>;
}

/// `org.freedesktop.DBus.Introspectable` of one container or image object.
pub struct Introspectable {
    pub backend: Weak<dyn Backend>,
}

/// Write `lines` indented by `level`, each on a line of its own (as zbus writes them).
fn write_indented(xml: &mut String, lines: &[&str], level: usize) {
    for line in lines {
        xml.extend(std::iter::repeat_n(' ', level));
        xml.push_str(line);
        xml.push('\n');
    }
}

#[interface(
    name = "org.freedesktop.DBus.Introspectable",
    introspection_docs = false
)]
impl Introspectable {
    /// Returns an XML description of the object, including its interfaces (with signals and
    /// methods), objects below it in the object path tree, and its properties.
    async fn introspect(
        &self,
        #[zbus(object_server)] server: &ObjectServer,
        #[zbus(header)] hdr: Header<'_>,
    ) -> Result<Held<String>, BoxDBusError> {
        let call = enter(&self.backend, &hdr, "").await.map_err(boxed)?;
        let path = path_of(&hdr)?;
        // The interfaces in the order of their names, as zbus writes them; container and
        // image objects have no objects below them.
        let mut xml = String::with_capacity(8192);
        xml.push_str(XML_HEADER);
        if let Ok(r) = server.interface::<_, Gated<Container>>(path.as_str()).await {
            r.get().await.introspect_to_writer(&mut xml, 2);
        }
        if let Ok(r) = server.interface::<_, Gated<Image>>(path.as_str()).await {
            r.get().await.introspect_to_writer(&mut xml, 2);
        }
        self.introspect_to_writer(&mut xml, 2);
        write_indented(&mut xml, &PEER_XML, 2);
        Properties {
            backend: self.backend.clone(),
        }
        .introspect_to_writer(&mut xml, 2);
        xml.push_str("</node>\n");
        call.hold(xml).map_err(boxed)
    }
}
