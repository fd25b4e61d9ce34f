//! Blobs: content-addressed files under blobs/sha256, written through tmp/ and verified (resumable
//! partial downloads, spooled writers).

use super::*;

impl Store {
    // ---- blobs ----

    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(d.hex())
    }

    pub fn has_blob(&self, d: &Digest) -> bool {
        self.blob_path(d).is_file()
    }

    /// Open `tmp/<hex>.partial` to append to, keeping what an earlier attempt downloaded.
    pub fn begin_blob(&self, d: &Digest) -> Result<PartialBlob, StoreError> {
        let p = self.partial_path(d);
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&p)
            .map_err(io_err(format!("opening {}", p.display())))?;
        let len = file
            .metadata()
            .map_err(io_err(format!("reading {}", p.display())))?
            .len();
        Ok(PartialBlob { file, len })
    }

    pub(super) fn partial_path(&self, d: &Digest) -> PathBuf {
        self.root.join("tmp").join(format!("{}.partial", d.hex()))
    }

    /// Check the whole partial file against `d` and give it its final name; on a mismatch the
    /// partial file is deleted, so a retry starts from scratch.
    pub fn commit_blob(&self, d: &Digest, partial: PartialBlob) -> Result<(), StoreError> {
        let p = self.partial_path(d);
        let mut file = partial.file;
        let ctx = || format!("committing blob {d}");
        file.rewind().map_err(io_err(ctx()))?;
        let mut h = Hasher::default();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = file.read(&mut buf).map_err(io_err(ctx()))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        let actual = h.finish();
        if actual != *d {
            discard(&p);
            return Err(StoreError::DigestMismatch {
                expected: *d,
                actual,
            });
        }
        file.sync_all().map_err(io_err(ctx()))?;
        fs::rename(&p, self.blob_path(d)).map_err(io_err(ctx()))
    }

    /// Store a small blob (manifest, config) held in memory.
    pub fn put_blob(&self, data: &[u8]) -> Result<Digest, StoreError> {
        let d = Digest::of(data);
        if self.has_blob(&d) {
            return Ok(d);
        }
        let tmp = self.tmp_path("blob");
        let ctx = || format!("writing blob {d}");
        let r = (|| {
            let mut f = File::create(&tmp).map_err(io_err(ctx()))?;
            f.write_all(data).map_err(io_err(ctx()))?;
            f.sync_all().map_err(io_err(ctx()))?;
            fs::rename(&tmp, self.blob_path(&d)).map_err(io_err(ctx()))
        })();
        if r.is_err() {
            discard(&tmp);
        }
        r.map(|()| d)
    }

    /// Stream `reader` into the store, hashing as it goes; returns the digest and length.
    /// With `expected`, a mismatch is an error and nothing is kept.
    pub fn ingest_blob(
        &self,
        mut reader: impl Read,
        expected: Option<&Digest>,
    ) -> Result<(Digest, u64), StoreError> {
        let mut w = self.blob_writer()?;
        io::copy(&mut reader, &mut w).map_err(io_err("reading blob content"))?;
        let (d, len) = w.finish()?;
        if let Some(want) = expected
            && *want != d.digest
        {
            discard(&d.path);
            return Err(StoreError::DigestMismatch {
                expected: *want,
                actual: d.digest,
            });
        }
        let digest = d.digest;
        self.adopt_blob(d)?;
        Ok((digest, len))
    }

    /// A file in `tmp/` that hashes what is written to it; [`BlobWriter::finish`] then
    /// [`Store::adopt_blob`] gives it its name.
    pub fn blob_writer(&self) -> Result<BlobWriter, StoreError> {
        let path = self.tmp_path("blob");
        let file = File::create(&path).map_err(io_err("creating a blob"))?;
        Ok(BlobWriter {
            file,
            path,
            hasher: Hasher::default(),
            len: 0,
            done: false,
        })
    }

    /// Move a finished blob into `blobs/` (a no-op if the store has it already).
    pub fn adopt_blob(&self, b: SpooledBlob) -> Result<(), StoreError> {
        if self.has_blob(&b.digest) {
            discard(&b.path);
            return Ok(());
        }
        let r = fs::rename(&b.path, self.blob_path(&b.digest))
            .map_err(io_err(format!("storing blob {}", b.digest)));
        if r.is_err() {
            discard(&b.path);
        }
        r
    }

    /// Read a small blob, checking its digest (the store is trusted, the disk less so).
    pub fn read_blob(&self, d: &Digest) -> Result<Vec<u8>, StoreError> {
        let p = self.blob_path(d);
        let f = match File::open(&p) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::MissingBlob(*d));
            }
            Err(e) => return Err(io_err(format!("reading blob {d}"))(e)),
        };
        let mut data = Vec::new();
        f.take(MAX_JSON_BLOB + 1)
            .read_to_end(&mut data)
            .map_err(io_err(format!("reading blob {d}")))?;
        if data.len() as u64 > MAX_JSON_BLOB {
            return Err(StoreError::Invalid(format!(
                "blob {d} is too large for a manifest or config"
            )));
        }
        let actual = Digest::of(&data);
        if actual != *d {
            return Err(StoreError::DigestMismatch {
                expected: *d,
                actual,
            });
        }
        Ok(data)
    }
}

/// A blob being written to `tmp/`, hashed on the way.
pub struct BlobWriter {
    pub(super) file: File,
    pub(super) path: PathBuf,
    pub(super) hasher: Hasher,
    pub(super) len: u64,
    /// Finished: the file is the caller's now. Until then, dropping the writer (an error, a
    /// full disk) deletes it at once.
    pub(super) done: bool,
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if !self.done {
            discard(&self.path);
        }
    }
}

/// Delete a temporary file of a failed or finished operation; a failure is logged (the next
/// [`Store::open`] wipes `tmp/`).
pub(crate) fn discard(path: &Path) {
    if let Err(e) = fs::remove_file(path)
        && e.kind() != io::ErrorKind::NotFound
    {
        tracing::warn!("cannot remove {}: {e}, ignoring", path.display());
    }
}

/// [`discard`] for a temporary directory and everything in it.
pub(crate) fn discard_dir(path: &Path) {
    if let Err(e) = fs::remove_dir_all(path)
        && e.kind() != io::ErrorKind::NotFound
    {
        tracing::warn!("cannot remove {}: {e}, ignoring", path.display());
    }
}

/// A complete, synced blob in `tmp/`, not yet in `blobs/` (dropped: stays in tmp/ until the
/// next [`Store::open`], or is removed by its owner).
#[derive(Debug)]
pub struct SpooledBlob {
    pub digest: Digest,
    pub path: PathBuf,
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl BlobWriter {
    /// Sync the data; returns the blob and its length.
    pub fn finish(mut self) -> Result<(SpooledBlob, u64), StoreError> {
        // On an error the writer is dropped unfinished, which deletes the file.
        self.file.sync_all().map_err(io_err("syncing a blob"))?;
        self.done = true;
        Ok((
            SpooledBlob {
                digest: std::mem::take(&mut self.hasher).finish(),
                path: std::mem::take(&mut self.path),
            },
            self.len,
        ))
    }
}
