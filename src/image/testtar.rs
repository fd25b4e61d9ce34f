//! Test helper: tar streams written header by header, so tests can say things the `tar`
//! crate's builder refuses to write (`..`, absolute paths, whiteouts through symlinks).

use tar::{EntryType, Header};

/// A tar stream under construction.
#[derive(Default)]
pub struct RawTar {
    pub bytes: Vec<u8>,
}

fn pad(v: &mut Vec<u8>) {
    let r = v.len() % 512;
    if r != 0 {
        v.resize(v.len() + 512 - r, 0);
    }
}

impl RawTar {
    pub fn new() -> RawTar {
        RawTar::default()
    }

    /// Append one header (and its data) with `path` and `link` written verbatim; names longer
    /// than the header field get a GNU long-name entry first.
    pub fn raw(&mut self, kind: EntryType, path: &[u8], link: &[u8], mode: u32, data: &[u8]) {
        if path.len() > 100 {
            self.raw(EntryType::GNULongName, b"././@LongLink", b"", 0, path);
        }
        if link.len() > 100 {
            self.raw(EntryType::GNULongLink, b"././@LongLink", b"", 0, link);
        }
        let mut h = Header::new_gnu();
        {
            let old = h.as_old_mut();
            let n = path.len().min(100);
            old.name[..n].copy_from_slice(&path[..n]);
            let l = link.len().min(100);
            old.linkname[..l].copy_from_slice(&link[..l]);
        }
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_600_000_000);
        h.set_size(data.len() as u64);
        h.set_cksum();
        self.bytes.extend_from_slice(h.as_bytes());
        self.bytes.extend_from_slice(data);
        pad(&mut self.bytes);
    }

    /// Same as [`RawTar::raw`] with a header the caller adjusts (owner, times, devices).
    pub fn with_header(&mut self, path: &[u8], data: &[u8], f: impl FnOnce(&mut Header)) {
        let mut h = Header::new_gnu();
        let n = path.len().min(100);
        h.as_old_mut().name[..n].copy_from_slice(&path[..n]);
        h.set_mode(0o644);
        h.set_mtime(1_600_000_000);
        h.set_size(data.len() as u64);
        h.set_entry_type(EntryType::Regular);
        f(&mut h);
        h.set_cksum();
        self.bytes.extend_from_slice(h.as_bytes());
        self.bytes.extend_from_slice(data);
        pad(&mut self.bytes);
    }

    /// A PAX extended header for the next entry.
    pub fn pax(&mut self, records: &[(&str, &[u8])]) {
        let mut data = Vec::new();
        for (k, v) in records {
            // "<len> <key>=<value>\n", where len counts itself.
            let body = k.len() + v.len() + 3;
            let mut len = body + 1;
            while format!("{len}").len() + body != len {
                len += 1;
            }
            data.extend_from_slice(format!("{len} {k}=").as_bytes());
            data.extend_from_slice(v);
            data.push(b'\n');
        }
        self.raw(EntryType::XHeader, b"PaxHeader", b"", 0o644, &data);
    }

    pub fn file(&mut self, path: &str, data: &[u8]) -> &mut Self {
        self.raw(EntryType::Regular, path.as_bytes(), b"", 0o644, data);
        self
    }

    pub fn dir(&mut self, path: &str) -> &mut Self {
        self.raw(EntryType::Directory, path.as_bytes(), b"", 0o755, b"");
        self
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.raw(
            EntryType::Symlink,
            path.as_bytes(),
            target.as_bytes(),
            0o777,
            b"",
        );
        self
    }

    pub fn hardlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.raw(
            EntryType::Link,
            path.as_bytes(),
            target.as_bytes(),
            0o644,
            b"",
        );
        self
    }

    /// The stream with its end-of-archive blocks.
    pub fn finish(&self) -> Vec<u8> {
        let mut v = self.bytes.clone();
        v.resize(v.len() + 1024, 0);
        v
    }
}
