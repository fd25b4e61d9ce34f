//! A D-Bus method reply around a body berth encoded itself (`dbus::listing`).

use zbus::message::{Builder, Header, Message};
use zbus::names::UniqueName;

/// The reply to `call` whose body is `body`, of `signature`, sent as `sender`.
///
/// `body` must be a valid encoding of `signature` in the machine's byte order, starting at an
/// 8-byte boundary: the message is sent as it is, and a bus that finds it invalid drops the
/// connection. `dbus::listing::body` makes such bodies (and its tests hold them to zbus's own
/// encoding byte for byte).
pub fn method_return(
    call: &Header<'_>,
    sender: Option<UniqueName<'_>>,
    body: &[u8],
    signature: &str,
) -> zbus::Result<Message> {
    let mut b: Builder<'_> = Message::method_return(call);
    if let Some(s) = sender {
        b = b.sender(s);
    }
    // SAFETY: zbus cannot check a body it did not serialize; what makes the message valid is
    // the caller's side of the contract above (a body of `signature` in native byte order,
    // framed by `dbus::listing::body` from records that zbus's own serializer wrote). No file
    // descriptors are passed, so none can be left dangling or unaccounted for.
    unsafe { b.build_raw_body(body, signature, Vec::new()) }
}
