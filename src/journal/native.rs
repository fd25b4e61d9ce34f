//! The journal's native protocol, client side (systemd `docs/JOURNAL_NATIVE_PROTOCOL.md`):
//! one datagram per entry on `/run/systemd/journal/socket`, each field either `KEY=value\n`
//! or, when the value holds a newline, `KEY\n<le64 length>value\n`. An entry too large for a
//! datagram (`EMSGSIZE`) travels as an empty datagram carrying one sealed memfd with the same
//! bytes, which journald maps instead of copying.

use std::io::{self, IoSlice, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
use tokio::io::Interest;
use tokio::net::UnixDatagram;

use super::JournalError;

/// Where journald listens for native entries.
pub const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

/// The send buffer we ask for: large enough that bursts of lines queue in the kernel rather
/// than wake us per datagram (journald's own clients do the same). Capped by
/// `net.core.wmem_max` without privilege; root gets it regardless (`SO_SNDBUFFORCE`).
const SEND_BUFFER: usize = 8 << 20;

/// Whether `key` is a field name a client may send: 1–64 characters of `A-Z`, `0-9` and `_`,
/// not starting with a digit, and not starting with `_` (those are journald's trusted
/// fields, which it drops from clients) — journald's `journal_field_valid()`.
pub fn field_name_valid(key: &str) -> bool {
    let b = key.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && !b[0].is_ascii_digit()
        && b[0] != b'_'
        && b.iter()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == b'_')
}

/// Append one field to `out` in the native serialization: the plain form when the value has
/// no newline, else the binary-safe, length-prefixed form. `key` must satisfy
/// [`field_name_valid`] (checked in debug builds; callers pass constants or checked names).
pub fn encode_field(out: &mut Vec<u8>, key: &str, value: &[u8]) {
    debug_assert!(field_name_valid(key), "{key:?}");
    out.extend_from_slice(key.as_bytes());
    if memchr::memchr(b'\n', value).is_some() {
        out.push(b'\n');
        out.extend_from_slice(&(value.len() as u64).to_le_bytes());
    } else {
        out.push(b'=');
    }
    out.extend_from_slice(value);
    out.push(b'\n');
}

/// One entry being built, field by field.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Entry {
    bytes: Vec<u8>,
}

impl Entry {
    pub fn new() -> Self {
        Entry::default()
    }

    /// Add a field; refused (`InvalidField`) when the name is not one a client may send.
    pub fn field(&mut self, key: &str, value: impl AsRef<[u8]>) -> Result<&mut Self, JournalError> {
        if !field_name_valid(key) {
            return Err(JournalError::InvalidField(key.to_string()));
        }
        encode_field(&mut self.bytes, key, value.as_ref());
        Ok(self)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// A sealed memfd holding `parts`, for entries over the datagram size. journald refuses
/// unsealed memfds from unprivileged peers and maps sealed ones without copying.
fn sealed_memfd(parts: &[IoSlice<'_>]) -> io::Result<OwnedFd> {
    use nix::fcntl::{FcntlArg, SealFlag, fcntl};
    use nix::sys::memfd::{MFdFlags, memfd_create};
    let fd = memfd_create(
        "berth-journal-entry",
        MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
    )?;
    let mut f = std::fs::File::from(fd);
    for p in parts {
        f.write_all(p)?;
    }
    let fd = OwnedFd::from(f);
    fcntl(
        &fd,
        FcntlArg::F_ADD_SEALS(
            SealFlag::F_SEAL_WRITE
                | SealFlag::F_SEAL_GROW
                | SealFlag::F_SEAL_SHRINK
                | SealFlag::F_SEAL_SEAL,
        ),
    )?;
    Ok(fd)
}

/// A connected datagram socket to journald (or to a test's fake one), driven by tokio.
/// Sending waits while the socket is full: that is the relay's backpressure.
pub struct JournalSocket {
    path: PathBuf,
    sock: UnixDatagram,
}

fn connect(path: &Path) -> io::Result<UnixDatagram> {
    let sock = UnixDatagram::unbound()?;
    // Best effort: a smaller buffer only means more wake-ups, never lost entries.
    if nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::SndBufForce, &SEND_BUFFER)
        .is_err()
    {
        let _best_effort =
            nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::SndBuf, &SEND_BUFFER);
    }
    sock.connect(path)?;
    Ok(sock)
}

impl JournalSocket {
    /// Connect to journald's socket at `path` ([`JOURNAL_SOCKET`] on a real host).
    pub fn connect(path: impl Into<PathBuf>) -> Result<Self, JournalError> {
        let path = path.into();
        let sock = connect(&path).map_err(|source| JournalError::Connect {
            path: path.clone(),
            source,
        })?;
        Ok(JournalSocket { path, sock })
    }

    /// Connect again (journald was restarted without socket activation, so the old peer is
    /// gone: `ECONNREFUSED`).
    pub fn reconnect(&mut self) -> Result<(), JournalError> {
        self.sock = connect(&self.path).map_err(|source| JournalError::Connect {
            path: self.path.clone(),
            source,
        })?;
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Send one entry made of `parts` (concatenated, they are its serialization). Waits while
    /// the socket is full; an entry over the datagram size goes as a sealed memfd.
    pub async fn send(&self, parts: &[IoSlice<'_>]) -> Result<(), JournalError> {
        let fd = self.sock.as_fd().as_raw_fd();
        let sent = self
            .sock
            .async_io(Interest::WRITABLE, || {
                sendmsg::<()>(fd, parts, &[], MsgFlags::MSG_NOSIGNAL, None).map_err(io::Error::from)
            })
            .await;
        match sent {
            Ok(_) => Ok(()),
            Err(e) if e.raw_os_error() == Some(Errno::EMSGSIZE as i32) => {
                let memfd = sealed_memfd(parts).map_err(JournalError::Memfd)?;
                let raw = [memfd.as_raw_fd()];
                let cmsg = [ControlMessage::ScmRights(&raw)];
                self.sock
                    .async_io(Interest::WRITABLE, || {
                        sendmsg::<()>(fd, &[], &cmsg, MsgFlags::MSG_NOSIGNAL, None)
                            .map_err(io::Error::from)
                    })
                    .await
                    .map(|_| ())
                    .map_err(JournalError::Send)
            }
            Err(e) => Err(JournalError::Send(e)),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::io::{IoSliceMut, Read, Seek};
    use std::os::unix::net::UnixDatagram as StdDatagram;

    use nix::sys::socket::{ControlMessageOwned, recvmsg};

    /// Decode one serialized entry into (field, value) pairs, as journald parses it.
    pub fn decode(mut b: &[u8]) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        while !b.is_empty() {
            let nl = b.iter().position(|c| *c == b'\n').expect("field ends");
            let line = &b[..nl];
            if let Some(eq) = line.iter().position(|c| *c == b'=') {
                out.push((
                    String::from_utf8(line[..eq].to_vec()).unwrap(),
                    line[eq + 1..].to_vec(),
                ));
                b = &b[nl + 1..];
            } else {
                let key = String::from_utf8(line.to_vec()).unwrap();
                let len = u64::from_le_bytes(b[nl + 1..nl + 9].try_into().unwrap()) as usize;
                let value = b[nl + 9..nl + 9 + len].to_vec();
                assert_eq!(b[nl + 9 + len], b'\n', "binary field ends with a newline");
                out.push((key, value));
                b = &b[nl + 10 + len..];
            }
        }
        out
    }

    /// A fake journald: a datagram socket bound in a temporary directory.
    pub struct FakeJournal {
        pub dir: tempfile::TempDir,
        pub sock: StdDatagram,
    }

    impl FakeJournal {
        pub fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let sock = StdDatagram::bind(dir.path().join("socket")).unwrap();
            FakeJournal { dir, sock }
        }

        /// A fake journal whose socket queues `qlen` datagrams, as journald's does on a
        /// systemd host (systemd's sysctl.d sets `net.unix.max_dgram_qlen=512`; this machine
        /// has the kernel's 10). The sysctl is per network namespace and read when the socket
        /// is made, so the socket is made in a thread that entered a network namespace of its
        /// own: nothing of the machine changes.
        pub fn with_queue(qlen: usize) -> Self {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("socket");
            let sock = std::thread::spawn(move || {
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
                std::fs::write("/proc/sys/net/unix/max_dgram_qlen", qlen.to_string()).unwrap();
                StdDatagram::bind(&path).unwrap()
            })
            .join()
            .unwrap();
            FakeJournal { dir, sock }
        }

        pub fn path(&self) -> PathBuf {
            self.dir.path().join("socket")
        }

        /// Receive one entry, from the datagram or from the memfd it carries.
        pub fn recv(&self, buf: &mut Vec<u8>) -> Vec<u8> {
            buf.resize(1 << 20, 0);
            let mut space = nix::cmsg_space!([std::os::fd::RawFd; 2]);
            let (n, fds) = {
                let mut iov = [IoSliceMut::new(buf)];
                let msg = recvmsg::<()>(
                    self.sock.as_raw_fd(),
                    &mut iov,
                    Some(&mut space),
                    MsgFlags::MSG_CMSG_CLOEXEC,
                )
                .unwrap();
                let mut fds = Vec::new();
                for c in msg.cmsgs().unwrap() {
                    if let ControlMessageOwned::ScmRights(l) = c {
                        fds.extend(l.into_iter().map(crate::sys::owned_from_scm_rights));
                    }
                }
                (msg.bytes, fds)
            };
            if let Some(fd) = fds.into_iter().next() {
                assert_eq!(n, 0, "a memfd datagram has no payload");
                let seals = nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_GET_SEALS).unwrap();
                assert_ne!(seals & libc::F_SEAL_WRITE, 0, "the memfd is sealed");
                let mut f = std::fs::File::from(fd);
                f.rewind().unwrap();
                let mut v = Vec::new();
                f.read_to_end(&mut v).unwrap();
                return v;
            }
            buf[..n].to_vec()
        }
    }

    #[test]
    fn fields_encode_to_the_exact_bytes_of_the_protocol() {
        let mut e = Entry::new();
        e.field("MESSAGE", "hello").unwrap();
        e.field("PRIORITY", "6").unwrap();
        e.field("BINARY_BLOB", b"xx\nx").unwrap();
        e.field("EMPTY", b"").unwrap();
        let mut want = b"MESSAGE=hello\nPRIORITY=6\nBINARY_BLOB\n".to_vec();
        want.extend_from_slice(&[4, 0, 0, 0, 0, 0, 0, 0]);
        want.extend_from_slice(b"xx\nx\nEMPTY=\n");
        assert_eq!(e.as_bytes(), want.as_slice());
        // NUL and invalid UTF-8 travel as they are.
        let mut e = Entry::new();
        e.field("MESSAGE", b"a\0\xff").unwrap();
        assert_eq!(e.as_bytes(), b"MESSAGE=a\0\xff\n");
        assert_eq!(
            decode(e.as_bytes()),
            [("MESSAGE".into(), b"a\0\xff".to_vec())]
        );
    }

    #[test]
    fn field_names_follow_journald() {
        for ok in ["MESSAGE", "CONTAINER_NAME", "A1", "X_"] {
            assert!(field_name_valid(ok), "{ok}");
        }
        for bad in [
            "",
            "_PID",
            "1ABC",
            "message",
            "A=B",
            "A\nB",
            "ÄÖ",
            &"A".repeat(65),
        ] {
            assert!(!field_name_valid(bad), "{bad:?}");
            assert!(matches!(
                Entry::new().field(bad, "x"),
                Err(JournalError::InvalidField(_))
            ));
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn entries_arrive_as_datagrams_and_large_ones_as_sealed_memfds() {
        let fake = FakeJournal::new();
        let sock = JournalSocket::connect(fake.path()).unwrap();
        let mut e = Entry::new();
        e.field("MESSAGE", "small").unwrap();
        sock.send(&[IoSlice::new(e.as_bytes())]).await.unwrap();
        // Bigger than any datagram the (doubled, 8 MiB) send buffer admits.
        let big = vec![b'x'; 24 << 20];
        let mut e = Entry::new();
        e.field("MESSAGE", &big).unwrap();
        sock.send(&[IoSlice::new(e.as_bytes())]).await.unwrap();
        let mut buf = Vec::new();
        let got: BTreeMap<_, _> = decode(&fake.recv(&mut buf)).into_iter().collect();
        assert_eq!(got["MESSAGE"], b"small");
        let got: BTreeMap<_, _> = decode(&fake.recv(&mut buf)).into_iter().collect();
        assert_eq!(got["MESSAGE"].len(), big.len());
    }

    #[test]
    fn a_missing_journal_is_a_connect_error() {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _g = rt.enter();
        assert!(matches!(
            JournalSocket::connect(dir.path().join("nothing")),
            Err(JournalError::Connect { .. })
        ));
    }
}
