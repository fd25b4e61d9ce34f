//! The gate every interface berthd serves is behind: each call is counted as an
//! [`Answer`](super::admission::Answer) of its caller's uid from its arrival until its reply,
//! a refusal included, has been written — or dropped unanswered when that uid already has too
//! many (see [`super::admission`]). The interface behind it is unchanged: its introspection,
//! properties and methods are the inner one's.

use std::collections::HashMap;
use std::sync::Weak;

use zbus::message::{Header, Message};
use zbus::names::{InterfaceName, MemberName};
use zbus::object_server::{DispatchResult, Interface, ObjectServer, SignalEmitter};
use zbus::{BoxDBusError, Connection, OwnedVariant, Variant};

use super::Backend;

/// `I`, served behind the gate.
pub struct Gated<I> {
    pub inner: I,
    pub backend: Weak<dyn Backend>,
}

impl<I> Gated<I> {
    pub fn new(inner: I, backend: Weak<dyn Backend>) -> Self {
        Gated { inner, backend }
    }
}

impl<I> std::ops::Deref for Gated<I> {
    type Target = I;
    fn deref(&self) -> &I {
        &self.inner
    }
}

/// Run `call` (which writes its own reply) counted as an answer of the caller's; an error it
/// returns instead is written here, inside the count.
async fn gated<'a>(
    backend: &Weak<dyn Backend>,
    connection: &Connection,
    msg: &Message,
    call: impl Future<Output = Result<(), BoxDBusError>> + Send + 'a,
) -> Result<(), BoxDBusError> {
    let hdr = msg.header();
    let answer = match (backend.upgrade(), hdr.sender()) {
        (Some(b), Some(sender)) => match b.answer(sender.to_string()).await {
            Some(a) => Some(a),
            // Dropped: no reply, nothing kept.
            None => return Ok(()),
        },
        // Shutting down, or a call without a sender (not on a bus): not counted.
        _ => None,
    };
    let r = match call.await {
        Err(e) => reply_error(connection, &hdr, e).await,
        ok => ok,
    };
    drop(answer);
    r
}

async fn reply_error(
    connection: &Connection,
    hdr: &Header<'_>,
    e: BoxDBusError,
) -> Result<(), BoxDBusError> {
    connection.reply_dbus_error(hdr, e).await?;
    Ok(())
}

#[async_trait::async_trait]
impl<I: Interface> Interface for Gated<I> {
    fn name() -> InterfaceName<'static> {
        I::name()
    }

    fn spawn_tasks_for_methods(&self) -> bool {
        self.inner.spawn_tasks_for_methods()
    }

    async fn get(
        &self,
        property_name: &str,
        server: &ObjectServer,
        connection: &Connection,
        header: Option<&Header<'_>>,
        emitter: &SignalEmitter<'_>,
    ) -> Option<Result<OwnedVariant, BoxDBusError>> {
        self.inner
            .get(property_name, server, connection, header, emitter)
            .await
    }

    async fn get_all(
        &self,
        server: &ObjectServer,
        connection: &Connection,
        header: Option<&Header<'_>>,
        emitter: &SignalEmitter<'_>,
    ) -> zbus::fdo::Result<HashMap<String, OwnedVariant>> {
        self.inner
            .get_all(server, connection, header, emitter)
            .await
    }

    fn set<'call>(
        &'call self,
        property_name: &'call str,
        value: &'call Variant<'_>,
        server: &'call ObjectServer,
        connection: &'call Connection,
        header: Option<&'call Header<'_>>,
        emitter: &'call SignalEmitter<'_>,
    ) -> DispatchResult<'call> {
        self.inner
            .set(property_name, value, server, connection, header, emitter)
    }

    async fn set_mut(
        &mut self,
        property_name: &str,
        value: &Variant<'_>,
        server: &ObjectServer,
        connection: &Connection,
        header: Option<&Header<'_>>,
        emitter: &SignalEmitter<'_>,
    ) -> Option<Result<(), BoxDBusError>> {
        self.inner
            .set_mut(property_name, value, server, connection, header, emitter)
            .await
    }

    fn call<'call>(
        &'call self,
        server: &'call ObjectServer,
        connection: &'call Connection,
        msg: &'call Message,
        name: MemberName<'call>,
    ) -> DispatchResult<'call> {
        match self.inner.call(server, connection, msg, name) {
            DispatchResult::Async(call) => {
                DispatchResult::Async(Box::pin(gated(&self.backend, connection, msg, call)))
            }
            other => other,
        }
    }

    fn call_mut<'call>(
        &'call mut self,
        server: &'call ObjectServer,
        connection: &'call Connection,
        msg: &'call Message,
        name: MemberName<'call>,
    ) -> DispatchResult<'call> {
        let backend = self.backend.clone();
        match self.inner.call_mut(server, connection, msg, name) {
            DispatchResult::Async(call) => DispatchResult::Async(Box::pin(async move {
                gated(&backend, connection, msg, call).await
            })),
            other => other,
        }
    }

    fn introspect_to_writer(&self, writer: &mut dyn std::fmt::Write, level: usize) {
        self.inner.introspect_to_writer(writer, level)
    }
}
