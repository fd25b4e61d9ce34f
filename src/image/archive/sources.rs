//! Where an archive's blobs come from: an OCI layout directory, or a tar read once into a spool in
//! the store's tmp/ (paths normalized, links resolved inside the archive).

use super::*;

/// Where blobs of an image archive or layout come from.
pub(super) trait BlobSource {
    /// Make sure blob `d` is in the store, verified.
    fn fetch(&mut self, store: &Store, d: &Digest) -> Result<(), ImportError>;
    /// A small file at a fixed path of the layout (`index.json`, `manifest.json`).
    fn read_named(&mut self, path: &str) -> Result<Option<Vec<u8>>, ImportError>;
}

/// An OCI image layout directory on disk; every path is resolved inside it.
pub(super) struct LayoutDir {
    pub(super) root: std::os::fd::OwnedFd,
    pub(super) path: PathBuf,
}

impl LayoutDir {
    pub(super) fn open(&self, rel: &str) -> Result<Option<File>, ImportError> {
        let how = OpenHow::new()
            .flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        match nix::fcntl::openat2(&self.root, rel, how) {
            Ok(fd) => Ok(Some(File::from(fd))),
            Err(nix::errno::Errno::ENOENT) => Ok(None),
            Err(e) => Err(io_at(&self.path.join(rel))(e.into())),
        }
    }
}

pub(super) const MAX_JSON: u64 = 16 << 20;

pub(super) fn read_capped(mut r: impl Read, what: &str) -> Result<Vec<u8>, ImportError> {
    let mut v = Vec::new();
    (&mut r)
        .take(MAX_JSON + 1)
        .read_to_end(&mut v)
        .map_err(|e| invalid(format!("reading {what}: {e}")))?;
    if v.len() as u64 > MAX_JSON {
        return Err(invalid(format!("{what} is too large")));
    }
    Ok(v)
}

impl BlobSource for LayoutDir {
    fn fetch(&mut self, store: &Store, d: &Digest) -> Result<(), ImportError> {
        if store.has_blob(d) {
            return Ok(());
        }
        let rel = format!("blobs/sha256/{}", d.hex());
        let f = self
            .open(&rel)?
            .ok_or_else(|| invalid(format!("blob {d} is missing from the layout")))?;
        store.ingest_blob(f, Some(d))?;
        Ok(())
    }

    fn read_named(&mut self, path: &str) -> Result<Option<Vec<u8>>, ImportError> {
        match self.open(path)? {
            Some(f) => Ok(Some(read_capped(f, path)?)),
            None => Ok(None),
        }
    }
}

/// An archive read once into `tmp/`: regular files by normalized path, links by target.
pub(super) struct Spool {
    pub(super) files: HashMap<Vec<u8>, SpooledBlob>,
    pub(super) links: HashMap<Vec<u8>, Vec<u8>>,
}

/// Normalize an archive path; `None` if it is absolute or climbs with `..`.
pub(super) fn norm(path: &[u8]) -> Option<Vec<u8>> {
    let c = extract::components(path).ok()?;
    Some(c.join(&b'/'))
}

/// Resolve `target` of a link at `at` the way the file system would (relative to the link's
/// directory; hard link targets are archive paths), staying inside the archive.
pub(super) fn link_target(at: &[u8], target: &[u8], hard: bool) -> Option<Vec<u8>> {
    if hard {
        return norm(target);
    }
    if target.first() == Some(&b'/') {
        return None;
    }
    let mut out: Vec<&[u8]> = at.split(|&b| b == b'/').collect();
    out.pop();
    for c in target.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                out.pop()?;
            }
            c => out.push(c),
        }
    }
    Some(out.join(&b'/'))
}

impl Spool {
    pub(super) fn read(
        store: &Store,
        file: &Path,
        count: Arc<AtomicU64>,
    ) -> Result<Spool, ImportError> {
        let f = File::open(file).map_err(io_at(file))?;
        let f = Counting { inner: f, count };
        let r = compress::decompress(f).map_err(|e| io_at(file)(io::Error::other(e)))?;
        let mut files = HashMap::new();
        let mut links = HashMap::new();
        let err: std::cell::Cell<Option<StoreError>> = std::cell::Cell::new(None);
        let res = extract::read_archive(
            r,
            store.limits(),
            |e| {
                let Some(p) = norm(&e.path) else {
                    return Ok(None);
                };
                match e.kind {
                    tar::EntryType::Regular | tar::EntryType::Continuous => {
                        match store.blob_writer() {
                            Ok(w) => Ok(Some(w)),
                            Err(se) => {
                                err.set(Some(se));
                                Err(ExtractError::Truncated("spooling failed"))
                            }
                        }
                    }
                    tar::EntryType::Symlink | tar::EntryType::Link => {
                        let hard = e.kind == tar::EntryType::Link;
                        if let Some(t) = e.link.as_deref().and_then(|t| link_target(&p, t, hard)) {
                            links.insert(p, t);
                        }
                        Ok(None)
                    }
                    _ => Ok(None),
                }
            },
            |e, w| {
                let p = norm(&e.path).expect("normalized before");
                match w.finish() {
                    Ok((b, _)) => {
                        if let Some(old) = files.insert(p, b) {
                            crate::image::store::discard(&old.path);
                        }
                        Ok(())
                    }
                    Err(se) => {
                        err.set(Some(se));
                        Err(ExtractError::Truncated("spooling failed"))
                    }
                }
            },
        );
        let spool = Spool { files, links };
        if let Some(se) = err.take() {
            spool.discard(store);
            return Err(se.into());
        }
        if let Err(e) = res {
            spool.discard(store);
            return Err(e.into());
        }
        Ok(spool)
    }

    pub(super) fn lookup(&self, path: &[u8]) -> Option<&SpooledBlob> {
        let mut p = path.to_vec();
        for _ in 0..8 {
            if let Some(b) = self.files.get(&p) {
                return Some(b);
            }
            p = self.links.get(&p)?.clone();
        }
        None
    }

    /// Move the spooled file at `path` into the store's blobs (its digest was computed while
    /// spooling). Later lookups of the same path see the stored blob.
    pub(super) fn adopt(
        &mut self,
        store: &Store,
        path: &[u8],
    ) -> Result<Option<Digest>, ImportError> {
        let Some(b) = self.lookup(path) else {
            return Ok(None);
        };
        let d = b.digest;
        let blob_path = store.blob_path(&d);
        if b.path != blob_path {
            let key = self
                .files
                .iter()
                .find(|(_, v)| v.path == b.path)
                .map(|(k, _)| k.clone())
                .expect("looked up above");
            let spooled = self.files.remove(&key).expect("present");
            store.adopt_blob(spooled)?;
            self.files.insert(
                key,
                SpooledBlob {
                    digest: d,
                    path: blob_path,
                },
            );
        }
        Ok(Some(d))
    }

    /// Remove what was spooled and not adopted.
    pub(super) fn discard(&self, store: &Store) {
        for b in self.files.values() {
            if b.path != store.blob_path(&b.digest) {
                crate::image::store::discard(&b.path);
            }
        }
    }
}

impl BlobSource for Spool {
    fn fetch(&mut self, store: &Store, d: &Digest) -> Result<(), ImportError> {
        let path = format!("blobs/sha256/{}", d.hex());
        match self.lookup(path.as_bytes()).map(|b| b.digest) {
            None if store.has_blob(d) => Ok(()),
            None => Err(invalid(format!("blob {d} is missing from the archive"))),
            Some(actual) if actual != *d => Err(StoreError::DigestMismatch {
                expected: *d,
                actual,
            }
            .into()),
            Some(_) => self.adopt(store, path.as_bytes()).map(drop),
        }
    }

    fn read_named(&mut self, path: &str) -> Result<Option<Vec<u8>>, ImportError> {
        match self.lookup(path.as_bytes()) {
            Some(b) => {
                let f = File::open(&b.path).map_err(io_at(&b.path))?;
                Ok(Some(read_capped(f, path)?))
            }
            None => Ok(None),
        }
    }
}
