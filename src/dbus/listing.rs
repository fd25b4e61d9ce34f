//! `ListContainers` on the wire, by hand at both ends: its reply is the largest berth sends
//! often (about 550 bytes a container), and zbus's generic serde path cost more than the call
//! itself with 1000 containers (berthd: about 7 ms to build the records and serialize them
//! twice, once to measure; berthctl: about 4 ms to decode them).
//!
//! berthd keeps each container's record encoded (see `daemon::entries`) and frames the
//! reply from those bytes ([`body`]): a D-Bus array of structures aligns every element to 8
//! bytes, so a record encoded at offset 0 is the same bytes wherever it lands in the array.
//! berthctl decodes the body with [`decode`], a reader of this one signature that checks what
//! zbus's deserializer checks (bounds, zero padding, UTF-8, no NUL in strings, object path
//! syntax). Both are tested against zbus's own encoding of `Vec<ContainerInfo>`.

use std::collections::HashMap;
use std::sync::Weak;

use zbus::message::{Flags, Message};
use zbus::names::{InterfaceName, MemberName};
use zbus::object_server::{DispatchResult, Interface, ObjectServer, SignalEmitter};
use zbus::wire::Endian;
use zbus::wire::serialized::Context;
use zbus::{BoxDBusError, Connection, OwnedObjectPath, OwnedVariant, Variant};

use super::{Backend, ContainerInfo, Manager, enter, is_root, live};

/// The reply's signature: an array of [`ContainerInfo`].
pub const SIGNATURE: &str = "a(sssussttisa{ss}tta{ss}a{ss}ssasa(sqqs)o)";

/// The endianness berthd's messages are in (zbus writes them in the machine's).
pub const fn endian() -> Endian {
    Endian::native()
}

/// One container's record, as it is inside the reply's array.
pub fn encode(info: &ContainerInfo) -> zbus::Result<Vec<u8>> {
    let data = zbus::wire::to_bytes(Context::new(endian(), 0), info)?;
    Ok(data.bytes().to_vec())
}

/// The reply's body: the array of the records given, each encoded by [`encode`].
pub fn body<'a>(records: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let records = records.into_iter();
    let mut out = Vec::with_capacity(8 + records.size_hint().0 * 600);
    // The array's byte length (filled in below), then padding to the elements' alignment.
    out.extend_from_slice(&[0; 8]);
    for (i, r) in records.enumerate() {
        if i > 0 {
            out.resize(out.len().next_multiple_of(8), 0);
        }
        out.extend_from_slice(r);
    }
    let len = u32::try_from(out.len() - 8).unwrap_or(u32::MAX);
    let len = match endian() {
        Endian::Little => len.to_le_bytes(),
        Endian::Big => len.to_be_bytes(),
    };
    out[..4].copy_from_slice(&len);
    out
}

/// The Manager as berthd serves it: zbus's dispatch of every method but `ListContainers`,
/// which [`list_containers`] answers from the encoded records. Its introspection, and so its
/// published API, are the Manager's.
pub struct ManagerServer(pub Manager);

/// Answer `ListContainers` as the `#[interface]` method does (the same checks, admission and
/// errors), with a body framed from the backend's encoded records.
async fn list_containers(
    backend: &Weak<dyn Backend>,
    conn: &Connection,
    msg: &Message,
) -> Result<(), BoxDBusError> {
    let hdr = msg.header();
    let reply = async {
        let call = enter(backend, &hdr, "").await?;
        let b = live(backend)?;
        let root = is_root(&b, Some(&hdr)).await;
        let body = b
            .list_body(!root)
            .map_err(|e| super::Error::Failed(format!("cannot encode the containers: {e}")))?;
        let size = body.len();
        call.hold_sized(body, size)
    }
    .await;
    if hdr.primary().flags().contains(Flags::NO_REPLY_EXPECTED) {
        return Ok(());
    }
    match reply {
        Ok(held) => {
            let sender = conn.unique_name().map(|n| n.inner().clone());
            let m = crate::sys::dbus_raw::method_return(&hdr, sender, &held.value, SIGNATURE)?;
            // The permit (and the bytes it charges) goes once zbus has written the reply.
            conn.send(&m).await?;
            drop(held);
            Ok(())
        }
        Err(e) => Ok(conn.reply_dbus_error(&hdr, e).await?),
    }
}

#[async_trait::async_trait]
impl Interface for ManagerServer {
    fn name() -> InterfaceName<'static> {
        <Manager as Interface>::name()
    }

    fn spawn_tasks_for_methods(&self) -> bool {
        self.0.spawn_tasks_for_methods()
    }

    async fn get(
        &self,
        property_name: &str,
        server: &ObjectServer,
        connection: &Connection,
        header: Option<&zbus::message::Header<'_>>,
        emitter: &SignalEmitter<'_>,
    ) -> Option<Result<OwnedVariant, BoxDBusError>> {
        self.0
            .get(property_name, server, connection, header, emitter)
            .await
    }

    async fn get_all(
        &self,
        server: &ObjectServer,
        connection: &Connection,
        header: Option<&zbus::message::Header<'_>>,
        emitter: &SignalEmitter<'_>,
    ) -> zbus::fdo::Result<HashMap<String, OwnedVariant>> {
        self.0.get_all(server, connection, header, emitter).await
    }

    fn set<'call>(
        &'call self,
        property_name: &'call str,
        value: &'call Variant<'_>,
        server: &'call ObjectServer,
        connection: &'call Connection,
        header: Option<&'call zbus::message::Header<'_>>,
        emitter: &'call SignalEmitter<'_>,
    ) -> DispatchResult<'call> {
        self.0
            .set(property_name, value, server, connection, header, emitter)
    }

    async fn set_mut(
        &mut self,
        property_name: &str,
        value: &Variant<'_>,
        server: &ObjectServer,
        connection: &Connection,
        header: Option<&zbus::message::Header<'_>>,
        emitter: &SignalEmitter<'_>,
    ) -> Option<Result<(), BoxDBusError>> {
        self.0
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
        if name.as_str() == "ListContainers" {
            return DispatchResult::Async(Box::pin(list_containers(
                &self.0.backend,
                connection,
                msg,
            )));
        }
        self.0.call(server, connection, msg, name)
    }

    fn call_mut<'call>(
        &'call mut self,
        server: &'call ObjectServer,
        connection: &'call Connection,
        msg: &'call Message,
        name: MemberName<'call>,
    ) -> DispatchResult<'call> {
        self.0.call_mut(server, connection, msg, name)
    }

    fn introspect_to_writer(&self, writer: &mut dyn std::fmt::Write, level: usize) {
        self.0.introspect_to_writer(writer, level)
    }
}

/// Why a reply could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("the ListContainers reply ends early (at byte {0})")]
    Short(usize),
    #[error("the ListContainers reply has non-zero padding at byte {0}")]
    Padding(usize),
    #[error("the ListContainers reply has an invalid string at byte {0}")]
    BadString(usize),
    #[error("the ListContainers reply has an invalid object path at byte {0}")]
    BadPath(usize),
    #[error("the ListContainers reply has an array of the wrong length at byte {0}")]
    BadArray(usize),
    #[error("the ListContainers reply has {0} bytes after its array")]
    Trailing(usize),
}

/// A D-Bus array is at most 64 MiB.
const MAX_ARRAY: usize = 64 << 20;

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    endian: Endian,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or(DecodeError::Short(self.pos))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn align(&mut self, n: usize) -> Result<(), DecodeError> {
        let at = self.pos;
        let pad = self.pos.next_multiple_of(n) - self.pos;
        if self.take(pad)?.iter().any(|&b| b != 0) {
            return Err(DecodeError::Padding(at));
        }
        Ok(())
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        self.align(2)?;
        Ok(self.endian.read_u16(self.take(2)?))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        self.align(4)?;
        Ok(self.endian.read_u32(self.take(4)?))
    }

    fn i32(&mut self) -> Result<i32, DecodeError> {
        self.align(4)?;
        Ok(self.endian.read_i32(self.take(4)?))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        self.align(8)?;
        Ok(self.endian.read_u64(self.take(8)?))
    }

    fn str(&mut self) -> Result<&'a str, DecodeError> {
        let len = self.u32()? as usize;
        let at = self.pos;
        let bytes = self.take(len)?;
        if self.take(1)? != [0] || memchr::memchr(0, bytes).is_some() {
            return Err(DecodeError::BadString(at));
        }
        std::str::from_utf8(bytes).map_err(|_| DecodeError::BadString(at))
    }

    fn string(&mut self) -> Result<String, DecodeError> {
        self.str().map(str::to_string)
    }

    /// A string, kept or only checked.
    fn string_if(&mut self, keep: bool) -> Result<String, DecodeError> {
        if keep {
            self.string()
        } else {
            self.str().map(|_| String::new())
        }
    }

    /// An array whose elements align to `align`: calls `element` until its end, which must
    /// fall on an element's end.
    fn array(
        &mut self,
        align: usize,
        mut element: impl FnMut(&mut Self) -> Result<(), DecodeError>,
    ) -> Result<(), DecodeError> {
        let at = self.pos;
        let len = self.u32()? as usize;
        if len > MAX_ARRAY {
            return Err(DecodeError::BadArray(at));
        }
        self.align(align)?;
        let end = self.pos + len;
        if end > self.buf.len() {
            return Err(DecodeError::Short(self.pos));
        }
        while self.pos < end {
            // Elements after the first may start with padding.
            self.align(align)?;
            element(self)?;
        }
        if self.pos != end {
            return Err(DecodeError::BadArray(at));
        }
        Ok(())
    }

    /// A dictionary of strings, kept or only checked.
    fn dict_if(&mut self, keep: bool) -> Result<HashMap<String, String>, DecodeError> {
        let mut m = HashMap::new();
        self.array(8, |r| {
            let k = r.string_if(keep)?;
            let v = r.string_if(keep)?;
            if keep {
                m.insert(k, v);
            }
            Ok(())
        })?;
        Ok(m)
    }

    fn container(&mut self, fields: Fields) -> Result<ContainerInfo, DecodeError> {
        let all = fields == Fields::All;
        self.align(8)?;
        let name = self.string()?;
        let state = self.string()?;
        let unit = self.string_if(all)?;
        let leader = self.u32()?;
        let image = self.string()?;
        let root_directory = self.string()?;
        let created_at = self.u64()?;
        let started_at = self.u64()?;
        let exit_status = self.i32()?;
        let last_error = self.string_if(all)?;
        let resources = self.dict_if(all)?;
        let oom_kills = self.u64()?;
        let last_oom_at = self.u64()?;
        let security = self.dict_if(all)?;
        let labels = self.dict_if(all)?;
        let image_id = self.string_if(all)?;
        let network = self.string_if(all)?;
        let mut addresses = Vec::new();
        self.array(4, |r| {
            let a = r.string_if(all)?;
            if all {
                addresses.push(a);
            }
            Ok(())
        })?;
        let mut ports = Vec::new();
        self.array(8, |r| {
            let host = r.string_if(all)?;
            let hp = r.u16()?;
            let cp = r.u16()?;
            let proto = r.string_if(all)?;
            if all {
                ports.push((host, hp, cp, proto));
            }
            Ok(())
        })?;
        let at = self.pos;
        let path = self.str()?;
        let object_path = if all {
            OwnedObjectPath::try_from(path.to_string()).map_err(|_| DecodeError::BadPath(at))?
        } else {
            zbus::ObjectPath::try_from(path).map_err(|_| DecodeError::BadPath(at))?;
            OwnedObjectPath::default()
        };
        Ok(ContainerInfo {
            name,
            state,
            unit,
            leader,
            image,
            root_directory,
            created_at,
            started_at,
            exit_status,
            last_error,
            resources,
            oom_kills,
            last_oom_at,
            security,
            labels,
            image_id,
            network,
            addresses,
            ports,
            object_path,
        })
    }
}

/// Which fields [`decode`] fills.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fields {
    /// Every field.
    All,
    /// What `ps`'s table and `ps -q` show: the name, state, image and root directory, and
    /// the numbers. The other strings, maps and lists are checked and left empty (the object
    /// path is `/`): most of a record, which `ps` would allocate and free only to show none of
    /// it.
    Table,
}

/// The containers in a `ListContainers` reply body (of [`SIGNATURE`], in `endian`).
pub fn decode(
    body: &[u8],
    endian: Endian,
    fields: Fields,
) -> Result<Vec<ContainerInfo>, DecodeError> {
    let mut r = Reader {
        buf: body,
        pos: 0,
        endian,
    };
    let mut all = Vec::new();
    r.array(8, |r| {
        all.push(r.container(fields)?);
        Ok(())
    })?;
    if r.pos != body.len() {
        return Err(DecodeError::Trailing(body.len() - r.pos));
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;
    use zbus::zvariant::Type;

    fn info(name: &str, odd: bool) -> ContainerInfo {
        let map = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<HashMap<_, _>>()
        };
        ContainerInfo {
            name: name.into(),
            state: if odd { "running" } else { "created" }.into(),
            unit: format!("berth-{name}.scope"),
            leader: if odd { 4242 } else { 0 },
            image: if odd { "" } else { "busybox" }.into(),
            root_directory: "/srv/ünïcode".into(),
            created_at: 1_796_171_652_965_062,
            started_at: u64::from(odd) * 7,
            exit_status: if odd { -1 } else { 137 },
            last_error: if odd { "x" } else { "" }.into(),
            resources: if odd {
                map(&[("memory", "512M"), ("cpu-weight", "100")])
            } else {
                HashMap::new()
            },
            oom_kills: 3,
            last_oom_at: u64::MAX,
            security: map(&[
                ("userns", "auto 524288–589823 (65536 IDs)"),
                ("seccomp", "default"),
            ]),
            labels: if odd {
                map(&[("a", "b")])
            } else {
                HashMap::new()
            },
            image_id: "sha256:81ea".into(),
            network: "bridge".into(),
            addresses: if odd {
                vec!["10.89.0.2/16".into(), "fd00::2/64".into()]
            } else {
                vec![]
            },
            ports: if odd {
                vec![
                    ("".into(), 8080, 80, "tcp".into()),
                    ("::1".into(), 53, 53, "udp".into()),
                ]
            } else {
                vec![]
            },
            object_path: OwnedObjectPath::try_from(crate::name::container_path(name)).unwrap(),
        }
    }

    fn zbus_body(all: &Vec<ContainerInfo>, endian: Endian) -> Vec<u8> {
        zbus::wire::to_bytes(Context::new(endian, 0), all)
            .unwrap()
            .bytes()
            .to_vec()
    }

    fn sample() -> Vec<ContainerInfo> {
        (0..7).map(|i| info(&format!("c{i}"), i % 2 == 1)).collect()
    }

    #[test]
    fn the_signature_is_that_of_the_records() {
        assert_eq!(
            <Vec<ContainerInfo> as Type>::SIGNATURE.to_string(),
            SIGNATURE
        );
    }

    #[test]
    fn a_body_framed_from_records_is_zbus_own_encoding() {
        for all in [vec![], vec![info("one", false)], sample()] {
            let records: Vec<Vec<u8>> = all.iter().map(|c| encode(c).unwrap()).collect();
            let framed = body(records.iter().map(Vec::as_slice));
            assert_eq!(framed, zbus_body(&all, endian()), "{} records", all.len());
        }
    }

    /// What `Fields::Table` keeps of `c`.
    fn table_fields(c: &ContainerInfo) -> ContainerInfo {
        ContainerInfo {
            name: c.name.clone(),
            state: c.state.clone(),
            unit: String::new(),
            leader: c.leader,
            image: c.image.clone(),
            root_directory: c.root_directory.clone(),
            created_at: c.created_at,
            started_at: c.started_at,
            exit_status: c.exit_status,
            last_error: String::new(),
            resources: HashMap::new(),
            oom_kills: c.oom_kills,
            last_oom_at: c.last_oom_at,
            security: HashMap::new(),
            labels: HashMap::new(),
            image_id: String::new(),
            network: String::new(),
            addresses: vec![],
            ports: vec![],
            object_path: OwnedObjectPath::default(),
        }
    }

    #[test]
    fn decoding_gives_back_what_zbus_encoded_in_either_endianness() {
        for endian in [Endian::Little, Endian::Big] {
            for all in [vec![], sample()] {
                let bytes = zbus_body(&all, endian);
                assert_eq!(decode(&bytes, endian, Fields::All).unwrap(), all);
                let table: Vec<ContainerInfo> = all.iter().map(table_fields).collect();
                assert_eq!(decode(&bytes, endian, Fields::Table).unwrap(), table);
            }
        }
    }

    #[test]
    fn malformed_bodies_are_refused_not_misread() {
        for fields in [Fields::All, Fields::Table] {
            malformed_bodies_are_refused(fields);
        }
    }

    fn malformed_bodies_are_refused(fields: Fields) {
        let decode = |b: &[u8], e| decode(b, e, fields);
        let good = zbus_body(&sample(), Endian::Little);
        // Every truncation fails.
        for n in 0..good.len() {
            assert!(decode(&good[..n], Endian::Little).is_err(), "cut at {n}");
        }
        // Trailing bytes.
        let mut long = good.clone();
        long.extend_from_slice(&[0; 8]);
        assert_eq!(decode(&long, Endian::Little), Err(DecodeError::Trailing(8)));
        // A NUL inside the first name ("c0" at offset 8 + 4).
        let mut nul = good.clone();
        nul[13] = 0;
        assert_eq!(
            decode(&nul, Endian::Little),
            Err(DecodeError::BadString(12))
        );
        // Invalid UTF-8.
        let mut utf = good.clone();
        utf[12] = 0xff;
        assert_eq!(
            decode(&utf, Endian::Little),
            Err(DecodeError::BadString(12))
        );
        // Non-zero padding: after the array's length, before the first element.
        let mut pad = good.clone();
        pad[5] = 1;
        assert_eq!(decode(&pad, Endian::Little), Err(DecodeError::Padding(4)));
        // A bad string in a field that `Fields::Table` does not keep is still refused.
        let mut skipped = good.clone();
        let at = good.windows(7).position(|w| w == b"seccomp").unwrap();
        skipped[at] = 0xff;
        assert!(matches!(
            decode(&skipped, Endian::Little),
            Err(DecodeError::BadString(_))
        ));
        // An array length past the end.
        let mut len = good.clone();
        len[..4].copy_from_slice(&(good.len() as u32).to_le_bytes());
        assert!(decode(&len, Endian::Little).is_err());
        // An object path that is not one.
        let all = vec![info("p", false)];
        let mut bytes = zbus_body(&all, Endian::Little);
        let at = bytes.len() - 2; // the path's last character, before its NUL
        bytes[at] = b'-';
        assert!(matches!(
            decode(&bytes, Endian::Little),
            Err(DecodeError::BadPath(_))
        ));
    }
}
