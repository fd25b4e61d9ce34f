//! Reading a layer's tar stream: the decompressed bytes counted, hashed and bounded; headers
//! checked; PAX and GNU long names; one entry at a time.

use super::*;

/// The decompressed stream: counts and hashes every byte and enforces `max_bytes`.
pub(super) struct Stream<R> {
    pub(super) inner: R,
    pub(super) hasher: Hasher,
    pub(super) read: u64,
    pub(super) max: u64,
}

impl<R: Read> Stream<R> {
    pub(super) fn new(inner: R, limits: &Limits) -> Self {
        Stream {
            inner,
            hasher: Hasher::default(),
            read: 0,
            max: limits.max_bytes,
        }
    }

    pub(super) fn read_some(&mut self, buf: &mut [u8]) -> Result<usize, ExtractError> {
        if self.read > self.max {
            return Err(ExtractError::Limit(format!("{} bytes", self.max)));
        }
        let n = loop {
            match self.inner.read(buf) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ExtractError::Read(e)),
            }
        };
        self.hasher.update(&buf[..n]);
        self.read += n as u64;
        if self.read > self.max {
            return Err(ExtractError::Limit(format!("{} bytes", self.max)));
        }
        Ok(n)
    }

    /// Fill `buf` completely; `Ok(false)` only if the stream ended before its first byte.
    pub(super) fn fill(
        &mut self,
        buf: &mut [u8],
        what: &'static str,
    ) -> Result<bool, ExtractError> {
        let mut got = 0;
        while got < buf.len() {
            let n = self.read_some(&mut buf[got..])?;
            if n == 0 {
                if got == 0 {
                    return Ok(false);
                }
                return Err(ExtractError::Truncated(what));
            }
            got += n;
        }
        Ok(true)
    }

    /// Read `len` bytes of entry data into `out`, then the padding up to the next block.
    pub(super) fn copy_data(
        &mut self,
        len: u64,
        out: &mut dyn Write,
        path: &[u8],
    ) -> Result<(), ExtractError> {
        let mut buf = vec![0u8; 64 * 1024];
        let mut left = len;
        while left > 0 {
            let want = left.min(buf.len() as u64) as usize;
            let n = self.read_some(&mut buf[..want])?;
            if n == 0 {
                return Err(ExtractError::Truncated("entry data ends early"));
            }
            out.write_all(&buf[..n]).map_err(|e| io_at(path, e))?;
            left -= n as u64;
        }
        let pad = (BLOCK - (len % BLOCK as u64) as usize) % BLOCK;
        if pad > 0 && !self.fill(&mut buf[..pad], "padding ends early")? {
            return Err(ExtractError::Truncated("padding ends early"));
        }
        Ok(())
    }

    pub(super) fn skip_data(&mut self, len: u64, path: &[u8]) -> Result<(), ExtractError> {
        self.copy_data(len, &mut io::sink(), path)
    }

    /// Read a small extension record (long name, PAX header) into memory.
    pub(super) fn read_small(
        &mut self,
        len: u64,
        cap: u64,
        path: &[u8],
    ) -> Result<Vec<u8>, ExtractError> {
        if len > cap {
            return Err(ExtractError::Limit(format!(
                "{cap} bytes for an extension header"
            )));
        }
        let mut v = Vec::with_capacity(len as usize);
        self.copy_data(len, &mut v, path)?;
        Ok(v)
    }
}

/// One file system entry after extension headers are folded in.
pub(crate) struct Entry {
    pub(crate) kind: EntryType,
    pub(crate) path: Vec<u8>,
    pub(crate) link: Option<Vec<u8>>,
    pub(crate) size: u64,
    pub(super) mode: u32,
    pub(super) uid: u64,
    pub(super) gid: u64,
    pub(super) mtime: u64,
    pub(super) xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Per-header state that GNU `L`/`K` and PAX `x` headers carry over to the next entry.
#[derive(Default)]
pub(super) struct Pending {
    pub(super) long_name: Option<Vec<u8>>,
    pub(super) long_link: Option<Vec<u8>>,
    pub(super) pax: Option<Vec<u8>>,
}

pub(super) fn strip_nul(mut v: Vec<u8>) -> Vec<u8> {
    while v.last() == Some(&0) {
        v.pop();
    }
    v
}

pub(super) fn parse_num(v: &[u8]) -> Option<u64> {
    // PAX times may carry a fraction ("1700000000.123"); whole seconds are all we keep.
    let int = v.split(|&b| b == b'.').next()?;
    std::str::from_utf8(int).ok()?.parse().ok()
}

/// A numeric header field; an empty one (all NULs or spaces) is 0, as Go's archive/tar reads
/// it, since some writers leave owner fields blank.
pub(super) fn numeric(
    raw: &[u8],
    parsed: io::Result<u64>,
    what: &str,
) -> Result<u64, ExtractError> {
    if raw.iter().all(|&b| b == 0 || b == b' ') {
        return Ok(0);
    }
    parsed.map_err(|e| ExtractError::Malformed(format!("bad {what}: {e}")))
}

pub(super) fn header_checksum_ok(
    block: &[u8; BLOCK],
    h: &tar::Header,
) -> Result<bool, ExtractError> {
    let sum: u32 = block[..148]
        .iter()
        .chain(&block[156..])
        .map(|&b| b as u32)
        .sum::<u32>()
        + 8 * 32;
    let want = h
        .cksum()
        .map_err(|e| ExtractError::Malformed(format!("bad checksum field: {e}")))?;
    Ok(sum == want)
}

/// Read headers until the next real entry; `None` at the end-of-archive block.
pub(super) fn next_entry<R: Read>(
    s: &mut Stream<R>,
    limits: &Limits,
    headers: &mut u64,
) -> Result<Option<Entry>, ExtractError> {
    let mut pending = Pending::default();
    let mut block = [0u8; BLOCK];
    loop {
        if !s.fill(&mut block, "header ends early")? {
            return Err(ExtractError::Truncated("no end-of-archive block"));
        }
        if block.iter().all(|&b| b == 0) {
            if pending.long_name.is_some() || pending.long_link.is_some() || pending.pax.is_some() {
                return Err(ExtractError::Malformed(
                    "extension header without an entry".into(),
                ));
            }
            return Ok(None);
        }
        *headers += 1;
        if *headers > limits.max_entries {
            return Err(ExtractError::Limit(format!(
                "{} entries",
                limits.max_entries
            )));
        }
        let h = tar::Header::from_byte_slice(&block);
        if !header_checksum_ok(&block, h)? {
            return Err(ExtractError::Malformed("header checksum mismatch".into()));
        }
        let size = h
            .entry_size()
            .map_err(|e| ExtractError::Malformed(format!("bad size field: {e}")))?;
        let path_cap = limits.max_path_len as u64 + 1;
        let here = h.path_bytes().into_owned();
        match h.entry_type() {
            EntryType::GNULongName => {
                pending.long_name = Some(strip_nul(s.read_small(size, path_cap, &here)?));
                continue;
            }
            EntryType::GNULongLink => {
                pending.long_link = Some(strip_nul(s.read_small(size, path_cap, &here)?));
                continue;
            }
            EntryType::XHeader => {
                pending.pax = Some(s.read_small(size, MAX_PAX_LEN, &here)?);
                continue;
            }
            EntryType::XGlobalHeader => {
                s.skip_data(size, &here)?;
                continue;
            }
            _ => {}
        }

        let mut e = Entry {
            kind: h.entry_type(),
            path: pending.long_name.take().unwrap_or(here),
            link: pending
                .long_link
                .take()
                .or_else(|| h.link_name_bytes().map(|l| l.into_owned())),
            size,
            mode: h
                .mode()
                .map_err(|e| ExtractError::Malformed(format!("bad mode: {e}")))?,
            uid: numeric(&h.as_old().uid, h.uid(), "uid")?,
            gid: numeric(&h.as_old().gid, h.gid(), "gid")?,
            mtime: h.mtime().unwrap_or(0),
            xattrs: Vec::new(),
        };
        if let Some(pax) = pending.pax.take() {
            for rec in tar::PaxExtensions::new(&pax) {
                let rec =
                    rec.map_err(|e| ExtractError::Malformed(format!("bad PAX record: {e}")))?;
                let (k, v) = (rec.key_bytes(), rec.value_bytes());
                let num = || {
                    parse_num(v).ok_or_else(|| {
                        ExtractError::Malformed(format!(
                            "bad PAX {} value",
                            String::from_utf8_lossy(k)
                        ))
                    })
                };
                match k {
                    b"path" => e.path = v.to_vec(),
                    b"linkpath" => e.link = Some(v.to_vec()),
                    b"uid" => e.uid = num()?,
                    b"gid" => e.gid = num()?,
                    b"mtime" => e.mtime = num()?,
                    b"size" => {
                        if num()? != size {
                            return Err(refused(&e.path, "PAX size differs from the header"));
                        }
                    }
                    _ if k.starts_with(b"GNU.sparse.") => {
                        return Err(refused(&e.path, "sparse files are not supported"));
                    }
                    _ => {
                        if let Some(name) = k.strip_prefix(b"SCHILY.xattr.") {
                            e.xattrs.push((name.to_vec(), v.to_vec()));
                        }
                    }
                }
            }
        }
        if e.path.len() > limits.max_path_len {
            return Err(ExtractError::Limit(format!(
                "{} bytes for a path",
                limits.max_path_len
            )));
        }
        return Ok(Some(e));
    }
}

/// Read a tar stream (not a layer: nothing is extracted) with the framing, limits and
/// truncation checks of [`apply_layer`]. For each entry `open` may return a sink for its data,
/// which `close` gets back once the data is copied. Paths are not validated here.
pub(crate) fn read_archive<R: Read, W: Write>(
    reader: R,
    limits: &Limits,
    mut open: impl FnMut(&Entry) -> Result<Option<W>, ExtractError>,
    mut close: impl FnMut(&Entry, W) -> Result<(), ExtractError>,
) -> Result<(), ExtractError> {
    let mut s = Stream::new(reader, limits);
    let mut headers = 0;
    while let Some(e) = next_entry(&mut s, limits, &mut headers)? {
        match open(&e)? {
            Some(mut w) => {
                s.copy_data(e.size, &mut w, &e.path)?;
                close(&e, w)?;
            }
            None => s.skip_data(e.size, &e.path)?,
        }
    }
    Ok(())
}

/// Split an entry path into components, refusing absolute paths and `..`.
pub(crate) fn components(path: &[u8]) -> Result<Vec<&[u8]>, ExtractError> {
    if path.first() == Some(&b'/') {
        return Err(refused(path, "absolute path"));
    }
    let mut out = Vec::new();
    for c in path.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err(refused(path, "path has a '..' component")),
            c => out.push(c),
        }
    }
    Ok(out)
}
