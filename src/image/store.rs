//! The store on disk (layout in the [module docs](super)): blobs, extracted layers, image
//! records, and the one path every import ends in, [`Store::create_image`].
//!
//! Paths inside the store are built from validated parts only (a [`Digest`]'s hex, a name that
//! passed [`crate::name::validate`]), so joining them cannot leave the store. Content from
//! images is never addressed by path here: that is [`super::extract`]'s job, fd-relative.
//!
//! Concurrency. Everything becomes visible by `rename`: blobs and layers are content-addressed,
//! so two imports of the same content race harmlessly (the loser discards its copy); image
//! records are created with `renameat2(RENAME_NOREPLACE)`, so of two imports under one name
//! exactly one wins and the other gets AlreadyExists. Garbage collection (in [`Store::remove`])
//! takes a write lock that imports hold for reading from their first layer to their record, so
//! it never deletes a layer an import is about to reference. A blob downloaded but not yet
//! referenced by any record is collected only when the removed image referenced it too, or
//! when it is older than a day (left over from a failed pull); a pull that races such a
//! removal fails with NotFound and can be retried. One process (berthd) owns a store root:
//! [`Store::open`] wipes `tmp/`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::fcntl::{AT_FDCWD, RenameFlags};
use oci_spec::image::{ImageConfiguration, ImageManifest};
use serde::{Deserialize, Serialize};

use super::ErrorKind;
use super::compress;
use super::digest::{Digest, Hasher};
use super::extract::{self, ExtractError, Limits};

/// Manifests and configs are small; anything bigger is not one.
const MAX_JSON_BLOB: u64 = 16 << 20;
/// Unreferenced blobs younger than this survive a collection: a pull may be about to use them.
const BLOB_GRACE: Duration = Duration::from_secs(24 * 3600);

/// Where an image came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageKind {
    Directory,
    Tar,
    Oci,
    Docker,
    Registry,
}

/// The name the registry client may know it by.
pub type ImageSource = ImageKind;

/// What an image asks of the container that runs it; deliberately only these fields, so an
/// image can never carry privileged settings (mounts, capabilities, devices).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    pub stop_signal: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// The image's `VOLUME` paths: each becomes an anonymous volume of a container that does
    /// not mount something else there (as podman does).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<String>,
}

/// One image name, as stored in `images/<name>.json`. The JSON is a stable format.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    pub name: String,
    pub kind: ImageKind,
    /// Digest of the manifest blob.
    pub digest: Digest,
    pub config_digest: Digest,
    /// Unix seconds: the config's `created`, or the import time.
    pub created: u64,
    /// Unix seconds.
    pub imported: u64,
    /// Sum of the layers' uncompressed tar sizes, bytes.
    pub size: u64,
    /// Layer diff_ids (uncompressed digests), bottom first.
    pub layers: Vec<Digest>,
    /// The layer blobs as stored (compressed digests), bottom first, same length as `layers`.
    #[serde(default)]
    pub layer_blobs: Vec<Digest>,
    /// A read-only image cannot be removed or renamed until the flag is cleared.
    pub read_only: bool,
    pub config: ImageConfig,
}

/// Progress of [`Store::create_image`], one call per layer step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImportProgress {
    /// Extraction of layer `index` (0-based, of `count`) starts.
    LayerStarted {
        index: usize,
        count: usize,
        diff_id: Digest,
    },
    /// Layer `index` is in the store; `reused` when it already was.
    LayerDone {
        index: usize,
        count: usize,
        diff_id: Digest,
        size: u64,
        reused: bool,
    },
}

/// A blob being written (downloaded) into `tmp/<hex>.partial`.
#[derive(Debug)]
pub struct PartialBlob {
    /// Opened for appending (and reading, for the final check).
    pub file: File,
    /// Bytes already in the file: resume the download from here.
    pub len: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid image name {name:?}: {source}")]
    Name {
        name: String,
        source: crate::name::NameError,
    },
    #[error("no image named {0:?}")]
    NoSuchImage(String),
    #[error("an image named {0:?} already exists")]
    Exists(String),
    #[error("image {0:?} is read-only")]
    ReadOnly(String),
    #[error("blob {0} is not in the store")]
    MissingBlob(Digest),
    #[error("content of blob {expected} has digest {actual}")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("{0}")]
    Invalid(String),
    #[error("layer {blob}: {source}")]
    Layer { blob: Digest, source: ExtractError },
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
}

impl StoreError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            StoreError::Name { .. }
            | StoreError::DigestMismatch { .. }
            | StoreError::Invalid(_)
            | StoreError::ReadOnly(_) => ErrorKind::InvalidInput,
            StoreError::NoSuchImage(_) | StoreError::MissingBlob(_) => ErrorKind::NotFound,
            StoreError::Exists(_) => ErrorKind::AlreadyExists,
            StoreError::Layer { source, .. } => source.kind(),
            StoreError::Io { .. } => ErrorKind::Failed,
        }
    }
}

pub(crate) fn io_err(context: impl std::fmt::Display) -> impl FnOnce(io::Error) -> StoreError {
    let context = context.to_string();
    move |source| StoreError::Io { context, source }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A name unique among this process's temporary files.
fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}-{}-{n}-{nanos}", std::process::id())
}

/// `rename(2)` that fails with EEXIST instead of replacing.
fn rename_noreplace(from: &Path, to: &Path) -> nix::Result<()> {
    nix::fcntl::renameat2(AT_FDCWD, from, AT_FDCWD, to, RenameFlags::RENAME_NOREPLACE)
}

/// The OCI or docker media types of a layer this store can extract.
pub fn is_layer_media_type(mt: &str) -> bool {
    matches!(
        mt,
        "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
            | "application/vnd.docker.image.rootfs.diff.tar"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.zstd"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
    )
}

fn is_manifest_media_type(mt: &str) -> bool {
    matches!(
        mt,
        "application/vnd.oci.image.manifest.v1+json"
            | "application/vnd.docker.distribution.manifest.v2+json"
    )
}

fn is_config_media_type(mt: &str) -> bool {
    matches!(
        mt,
        "application/vnd.oci.image.config.v1+json"
            | "application/vnd.docker.container.image.v1+json"
    )
}

/// A digest from hostile JSON: sha256 only, 64 lowercase hex digits, or InvalidInput.
pub(crate) fn parse_digest(s: &str) -> Result<Digest, StoreError> {
    s.parse()
        .map_err(|e| StoreError::Invalid(format!("bad digest: {e}")))
}

/// Seconds since the epoch of an RFC 3339 time (`2024-01-02T03:04:05.678+01:00`).
pub(crate) fn parse_rfc3339(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> { s.get(r)?.parse().ok() };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        rest = &frac[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 && (rest.starts_with('+') || rest.starts_with('-')) => {
            let oh: i64 = rest[1..3].parse().ok()?;
            let om: i64 = rest[4..6].parse().ok()?;
            let o = oh * 3600 + om * 60;
            if rest.starts_with('-') { -o } else { o }
        }
        _ => return None,
    };
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y2 = if mo <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    let t = days * 86400 + h * 3600 + mi * 60 + se - offset;
    u64::try_from(t).ok()
}

fn image_config(cfg: &ImageConfiguration) -> ImageConfig {
    let Some(c) = cfg.config() else {
        return ImageConfig::default();
    };
    ImageConfig {
        entrypoint: c.entrypoint().clone().unwrap_or_default(),
        cmd: c.cmd().clone().unwrap_or_default(),
        env: c.env().clone().unwrap_or_default(),
        working_dir: c.working_dir().clone().filter(|s| !s.is_empty()),
        user: c.user().clone().filter(|s| !s.is_empty()),
        stop_signal: c.stop_signal().clone().filter(|s| !s.is_empty()),
        labels: c.labels().clone().unwrap_or_default().into_iter().collect(),
        volumes: c.volumes().clone().unwrap_or_default(),
    }
}

/// The image store rooted at one directory.
pub struct Store {
    root: PathBuf,
    limits: Limits,
    /// Imports hold it shared, garbage collection exclusively.
    gc: RwLock<()>,
}

impl Store {
    /// Open (creating if needed, mode 0700) the store at `root`, and discard the work in
    /// progress a previous run left in `tmp/`.
    pub fn open(root: &Path) -> Result<Store, StoreError> {
        let mut b = fs::DirBuilder::new();
        b.recursive(true).mode(0o700);
        for sub in ["", "blobs/sha256", "layers", "images", "tmp"] {
            let p = root.join(sub);
            b.create(&p)
                .map_err(io_err(format!("creating {}", p.display())))?;
        }
        let tmp = root.join("tmp");
        for e in fs::read_dir(&tmp).map_err(io_err(format!("reading {}", tmp.display())))? {
            let e = e.map_err(io_err(format!("reading {}", tmp.display())))?;
            let p = e.path();
            // remove_dir_all does not follow symlinks.
            let r = if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                fs::remove_dir_all(&p)
            } else {
                fs::remove_file(&p)
            };
            r.map_err(io_err(format!("removing {}", p.display())))?;
        }
        Ok(Store {
            root: root.to_path_buf(),
            limits: Limits::default(),
            gc: RwLock::new(()),
        })
    }

    /// Use other extraction limits (tests, or a stricter configuration).
    pub fn with_limits(mut self, limits: Limits) -> Store {
        self.limits = limits;
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub(crate) fn tmp_path(&self, prefix: &str) -> PathBuf {
        self.root.join("tmp").join(unique(prefix))
    }

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

    fn partial_path(&self, d: &Digest) -> PathBuf {
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
            let _ = fs::remove_file(&p);
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

    // ---- layers ----

    fn layer_dir(&self, diff_id: &Digest) -> PathBuf {
        self.root.join("layers").join(diff_id.hex())
    }

    fn layer_sidecar(&self, diff_id: &Digest) -> PathBuf {
        self.root
            .join("layers")
            .join(format!("{}.json", diff_id.hex()))
    }

    fn layer_size(&self, diff_id: &Digest) -> Option<u64> {
        if !self.layer_dir(diff_id).is_dir() {
            return None;
        }
        let data = fs::read(self.layer_sidecar(diff_id)).ok()?;
        let s: LayerSidecar = serde_json::from_slice(&data).ok()?;
        (s.diff_id == *diff_id).then_some(s.size)
    }

    /// Extract the layer blob into `layers/`, unless a layer with the expected diff_id is
    /// there already. Returns the diff_id, size and whether it was reused. With no expected
    /// diff_id the blob is always extracted (in tmp/) and named by what it turns out to be.
    pub(crate) fn ensure_layer(
        &self,
        blob: &Digest,
        expected: Option<&Digest>,
    ) -> Result<(Digest, u64, bool), StoreError> {
        if let Some(want) = expected
            && let Some(size) = self.layer_size(want)
        {
            return Ok((*want, size, true));
        }
        // Verify the compressed blob first; reading it also warms the page cache for the
        // extraction pass.
        let path = self.blob_path(blob);
        let open = || -> Result<File, StoreError> {
            File::open(&path).map_err(|e| {
                if e.kind() == io::ErrorKind::NotFound {
                    StoreError::MissingBlob(*blob)
                } else {
                    io_err(format!("opening blob {blob}"))(e)
                }
            })
        };
        let mut h = Hasher::default();
        let mut f = open()?;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = f
                .read(&mut buf)
                .map_err(io_err(format!("reading blob {blob}")))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        let actual = h.finish();
        if actual != *blob {
            return Err(StoreError::DigestMismatch {
                expected: *blob,
                actual,
            });
        }

        let tmp = self.tmp_path("layer");
        fs::DirBuilder::new()
            .mode(0o755)
            .create(&tmp)
            .map_err(io_err("creating a layer directory"))?;
        let r = self.extract_into(open()?, blob, expected, &tmp);
        if r.is_err() {
            let _ = fs::remove_dir_all(&tmp);
        }
        r
    }

    fn extract_into(
        &self,
        file: File,
        blob: &Digest,
        expected: Option<&Digest>,
        tmp: &Path,
    ) -> Result<(Digest, u64, bool), StoreError> {
        let reader = compress::decompress(file).map_err(|e| StoreError::Layer {
            blob: *blob,
            source: ExtractError::Read(io::Error::other(e)),
        })?;
        let stats = extract::apply_layer(reader, tmp, &self.limits).map_err(|source| {
            StoreError::Layer {
                blob: *blob,
                source,
            }
        })?;
        if let Some(want) = expected
            && *want != stats.diff_id
        {
            return Err(StoreError::Invalid(format!(
                "layer blob {blob} has diff_id {}, the image config says {want}",
                stats.diff_id
            )));
        }
        let diff_id = stats.diff_id;
        if let Some(size) = self.layer_size(&diff_id) {
            let _ = fs::remove_dir_all(tmp);
            return Ok((diff_id, size, true));
        }
        // Data must be on disk before the name is (a crash must not leave a named layer with
        // empty files); syncfs covers the whole tree in one call.
        let fd = File::open(tmp).map_err(io_err("syncing a layer"))?;
        nix::unistd::syncfs(&fd).map_err(|e| io_err("syncing a layer")(e.into()))?;
        // The sidecar goes first: a sidecar without its directory is harmless (collected),
        // a directory without its sidecar is re-extracted.
        let side = serde_json::to_vec(&LayerSidecar {
            diff_id,
            size: stats.size,
        })
        .expect("serializing a sidecar");
        let side_tmp = self.tmp_path("sidecar");
        let written = fs::write(&side_tmp, side)
            .and_then(|()| fs::rename(&side_tmp, self.layer_sidecar(&diff_id)));
        if written.is_err() {
            discard(&side_tmp);
        }
        written.map_err(io_err("writing a layer sidecar"))?;
        match rename_noreplace(tmp, &self.layer_dir(&diff_id)) {
            Ok(()) => Ok((diff_id, stats.size, false)),
            // Someone else extracted the same layer meanwhile; theirs is as good as ours.
            Err(Errno::EEXIST) | Err(Errno::ENOTEMPTY) => {
                let _ = fs::remove_dir_all(tmp);
                Ok((diff_id, stats.size, true))
            }
            Err(e) => Err(io_err("naming a layer")(e.into())),
        }
    }

    // ---- images ----

    fn record_path(&self, name: &str) -> Result<PathBuf, StoreError> {
        crate::name::validate(name).map_err(|source| StoreError::Name {
            name: name.to_string(),
            source,
        })?;
        Ok(self.root.join("images").join(format!("{name}.json")))
    }

    /// Write `rec` under its name, failing with AlreadyExists if the name is taken.
    fn write_record(&self, rec: &ImageRecord) -> Result<(), StoreError> {
        let path = self.record_path(&rec.name)?;
        let tmp = self.tmp_path("record");
        let data = serde_json::to_vec_pretty(rec).expect("serializing an image record");
        let ctx = || format!("writing image record {:?}", rec.name);
        let r = (|| {
            let mut f = File::create(&tmp).map_err(io_err(ctx()))?;
            f.write_all(&data).map_err(io_err(ctx()))?;
            f.sync_all().map_err(io_err(ctx()))?;
            match rename_noreplace(&tmp, &path) {
                Ok(()) => Ok(()),
                Err(Errno::EEXIST) => Err(StoreError::Exists(rec.name.clone())),
                Err(e) => Err(io_err(ctx())(e.into())),
            }
        })();
        if r.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        r
    }

    /// Import an image whose blobs are all in the store. The manifest is stored as a blob in
    /// its serde form; use [`Store::create_image_from_blob`] to keep the original bytes (and
    /// so the registry's manifest digest).
    pub fn create_image(
        &self,
        name: &str,
        manifest: &ImageManifest,
        kind: ImageKind,
        progress: &dyn Fn(ImportProgress),
    ) -> Result<ImageRecord, StoreError> {
        self.record_path(name)?;
        let bytes = serde_json::to_vec(manifest)
            .map_err(|e| StoreError::Invalid(format!("manifest does not serialize: {e}")))?;
        let digest = self.put_blob(&bytes)?;
        self.create_image_inner(name, manifest, digest, kind, progress)
    }

    /// Import an image from a manifest already stored as blob `manifest_digest`.
    pub fn create_image_from_blob(
        &self,
        name: &str,
        manifest_digest: &Digest,
        kind: ImageKind,
        progress: &dyn Fn(ImportProgress),
    ) -> Result<ImageRecord, StoreError> {
        self.record_path(name)?;
        let data = self.read_blob(manifest_digest)?;
        let manifest: ImageManifest = serde_json::from_slice(&data)
            .map_err(|e| StoreError::Invalid(format!("manifest {manifest_digest}: {e}")))?;
        self.create_image_inner(name, &manifest, *manifest_digest, kind, progress)
    }

    fn create_image_inner(
        &self,
        name: &str,
        manifest: &ImageManifest,
        digest: Digest,
        kind: ImageKind,
        progress: &dyn Fn(ImportProgress),
    ) -> Result<ImageRecord, StoreError> {
        if self.record_path(name)?.exists() {
            return Err(StoreError::Exists(name.to_string()));
        }
        if manifest.schema_version() != 2 {
            return Err(StoreError::Invalid(format!(
                "manifest schema version {} is not 2",
                manifest.schema_version()
            )));
        }
        if let Some(mt) = manifest.media_type()
            && !is_manifest_media_type(mt.as_ref())
        {
            return Err(StoreError::Invalid(format!(
                "media type {mt} is not an image manifest"
            )));
        }
        let cd = manifest.config();
        if !is_config_media_type(cd.media_type().as_ref()) {
            return Err(StoreError::Invalid(format!(
                "config media type {} is not an image config",
                cd.media_type()
            )));
        }
        let config_digest = parse_digest(cd.digest().as_ref())?;
        let mut layers = Vec::new();
        for l in manifest.layers() {
            let mt = l.media_type().to_string();
            let d = parse_digest(l.digest().as_ref())?;
            if !is_layer_media_type(&mt) {
                return Err(StoreError::Invalid(format!(
                    "layer {d} has unknown media type {mt:?}"
                )));
            }
            if !self.has_blob(&d) {
                return Err(StoreError::MissingBlob(d));
            }
            layers.push(d);
        }
        let cfg_data = self.read_blob(&config_digest)?;
        let cfg: ImageConfiguration = serde_json::from_slice(&cfg_data)
            .map_err(|e| StoreError::Invalid(format!("image config {config_digest}: {e}")))?;
        let diff_ids = cfg
            .rootfs()
            .diff_ids()
            .iter()
            .map(|s| parse_digest(s))
            .collect::<Result<Vec<_>, _>>()?;
        if diff_ids.len() != layers.len() {
            return Err(StoreError::Invalid(format!(
                "manifest has {} layers, config has {} diff_ids",
                layers.len(),
                diff_ids.len()
            )));
        }

        // From the first layer until the record exists, garbage collection must wait.
        let _guard = self.gc.read().unwrap_or_else(|p| p.into_inner());
        let count = layers.len();
        let mut size = 0;
        for (index, (blob, diff_id)) in layers.iter().zip(&diff_ids).enumerate() {
            progress(ImportProgress::LayerStarted {
                index,
                count,
                diff_id: *diff_id,
            });
            let (_, s, reused) = self.ensure_layer(blob, Some(diff_id))?;
            size += s;
            progress(ImportProgress::LayerDone {
                index,
                count,
                diff_id: *diff_id,
                size: s,
                reused,
            });
        }
        let imported = now();
        let rec = ImageRecord {
            name: name.to_string(),
            kind,
            digest,
            config_digest,
            created: cfg
                .created()
                .as_deref()
                .and_then(parse_rfc3339)
                .unwrap_or(imported),
            imported,
            size,
            layers: diff_ids,
            layer_blobs: layers,
            read_only: false,
            config: image_config(&cfg),
        };
        self.write_record(&rec)?;
        Ok(rec)
    }

    /// All image records, by name. Unreadable records are skipped (see [`Store::list_checked`]).
    pub fn list(&self) -> Vec<ImageRecord> {
        self.list_checked().0
    }

    /// All image records, by name, and the names of those that cannot be read (truncated,
    /// empty, garbage, naming another image) with why. Those are left alone: never deleted,
    /// and while any exists, garbage collection deletes nothing (their layers may be in use).
    pub fn list_checked(&self) -> (Vec<ImageRecord>, Vec<(String, StoreError)>) {
        let mut out = Vec::new();
        let mut bad = Vec::new();
        let Ok(rd) = fs::read_dir(self.root.join("images")) else {
            return (out, bad);
        };
        for e in rd.flatten() {
            let n = e.file_name();
            let Some(name) = n.to_str().and_then(|n| n.strip_suffix(".json")) else {
                continue;
            };
            match self.get(name) {
                Ok(r) => out.push(r),
                Err(e) => bad.push((name.to_string(), e)),
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        bad.sort_by(|a, b| a.0.cmp(&b.0));
        (out, bad)
    }

    /// After a failure for lack of space: delete what no record references (blobs and layers
    /// an interrupted import left, resumable downloads in `tmp/`), so that the space a failed
    /// operation took is free again at once; also what a crash left. Call with no other
    /// operation in flight. Returns how many files and directories it deleted.
    pub fn reclaim(&self) -> Result<usize, StoreError> {
        let _guard = self.gc.write().unwrap_or_else(|p| p.into_inner());
        let tmp = self.root.join("tmp");
        let mut partials = 0;
        for e in fs::read_dir(&tmp)
            .map_err(io_err(format!("reading {}", tmp.display())))?
            .flatten()
        {
            if e.file_name()
                .to_str()
                .is_some_and(|n| n.ends_with(".partial"))
            {
                fs::remove_file(e.path())
                    .map_err(io_err(format!("removing {}", e.path().display())))?;
                partials += 1;
            }
        }
        Ok(partials + self.collect(&BTreeSet::new(), true)?)
    }

    pub fn get(&self, name: &str) -> Result<ImageRecord, StoreError> {
        let p = self.record_path(name)?;
        let data = match fs::read(&p) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::NoSuchImage(name.to_string()));
            }
            Err(e) => return Err(io_err(format!("reading image record {name:?}"))(e)),
        };
        let rec: ImageRecord = serde_json::from_slice(&data).map_err(|e| StoreError::Io {
            context: format!("image record {name:?}"),
            source: io::Error::new(io::ErrorKind::InvalidData, e),
        })?;
        if rec.name != name {
            return Err(StoreError::Io {
                context: format!("image record {name:?}"),
                source: io::Error::new(io::ErrorKind::InvalidData, "names another image"),
            });
        }
        Ok(rec)
    }

    /// Remove the record, then every layer and blob no remaining record references. The
    /// caller checks that no container uses the image.
    pub fn remove(&self, name: &str) -> Result<(), StoreError> {
        let rec = self.get(name)?;
        if rec.read_only {
            return Err(StoreError::ReadOnly(name.to_string()));
        }
        let _guard = self.gc.write().unwrap_or_else(|p| p.into_inner());
        let p = self.record_path(name)?;
        fs::remove_file(&p).map_err(io_err(format!("removing image record {name:?}")))?;
        let mut just_freed: BTreeSet<Digest> = rec.layer_blobs.iter().copied().collect();
        just_freed.insert(rec.digest);
        just_freed.insert(rec.config_digest);
        self.collect(&just_freed, false).map(drop)
    }

    /// Delete what no record references: layers always, blobs if in `just_freed`, old, or
    /// `all_blobs`. Nothing at all while a record cannot be read: what it references is not
    /// known, and may be in use.
    fn collect(&self, just_freed: &BTreeSet<Digest>, all_blobs: bool) -> Result<usize, StoreError> {
        let (recs, bad) = self.list_checked();
        if !bad.is_empty() {
            return Ok(0);
        }
        let mut removed = 0;
        let layers: BTreeSet<Digest> = recs.iter().flat_map(|r| r.layers.clone()).collect();
        let mut blobs: BTreeSet<Digest> = BTreeSet::new();
        for r in &recs {
            blobs.insert(r.digest);
            blobs.insert(r.config_digest);
            blobs.extend(r.layer_blobs.iter().copied());
        }
        let ldir = self.root.join("layers");
        for e in fs::read_dir(&ldir)
            .map_err(io_err("reading layers"))?
            .flatten()
        {
            let n = e.file_name();
            let Some(n) = n.to_str() else { continue };
            let hex = n.strip_suffix(".json").unwrap_or(n);
            let Ok(d) = format!("sha256:{hex}").parse::<Digest>() else {
                continue;
            };
            if layers.contains(&d) {
                continue;
            }
            if n.ends_with(".json") {
                fs::remove_file(e.path()).map_err(io_err(format!("removing layer {d}")))?;
                removed += 1;
            } else {
                // Out of sight in one step, then deleted at leisure.
                let t = self.tmp_path("dead-layer");
                fs::rename(e.path(), &t).map_err(io_err(format!("removing layer {d}")))?;
                fs::remove_dir_all(&t).map_err(io_err(format!("removing layer {d}")))?;
                removed += 1;
            }
        }
        let bdir = self.root.join("blobs/sha256");
        let old = SystemTime::now() - BLOB_GRACE;
        for e in fs::read_dir(&bdir)
            .map_err(io_err("reading blobs"))?
            .flatten()
        {
            let n = e.file_name();
            let Some(d) = n
                .to_str()
                .and_then(|n| format!("sha256:{n}").parse::<Digest>().ok())
            else {
                continue;
            };
            if blobs.contains(&d) {
                continue;
            }
            let aged = e
                .metadata()
                .and_then(|m| m.modified())
                .map(|t| t < old)
                .unwrap_or(false);
            if all_blobs || just_freed.contains(&d) || aged {
                fs::remove_file(e.path()).map_err(io_err(format!("removing blob {d}")))?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Give the image a new name.
    pub fn rename(&self, old: &str, new: &str) -> Result<ImageRecord, StoreError> {
        let mut rec = self.get(old)?;
        if rec.read_only {
            return Err(StoreError::ReadOnly(old.to_string()));
        }
        rec.name = new.to_string();
        self.write_record(&rec)?;
        fs::remove_file(self.record_path(old)?)
            .map_err(io_err(format!("removing image record {old:?}")))?;
        Ok(rec)
    }

    /// A second name for the same content (and the same flags).
    pub fn tag(&self, name: &str, new_name: &str) -> Result<ImageRecord, StoreError> {
        let mut rec = self.get(name)?;
        rec.name = new_name.to_string();
        self.write_record(&rec)?;
        Ok(rec)
    }

    /// An independent, writable copy of the record (the layers are immutable and shared).
    pub fn clone_image(&self, name: &str, new_name: &str) -> Result<ImageRecord, StoreError> {
        let mut rec = self.get(name)?;
        rec.name = new_name.to_string();
        rec.read_only = false;
        rec.imported = now();
        self.write_record(&rec)?;
        Ok(rec)
    }

    /// Mark the image read-only or writable.
    pub fn set_read_only(&self, name: &str, read_only: bool) -> Result<ImageRecord, StoreError> {
        let mut rec = self.get(name)?;
        rec.read_only = read_only;
        let tmp = self.tmp_path("record");
        let data = serde_json::to_vec_pretty(&rec).expect("serializing an image record");
        let ctx = || format!("writing image record {name:?}");
        let dest = self.record_path(name)?;
        let written = fs::write(&tmp, data).and_then(|()| fs::rename(&tmp, dest));
        if written.is_err() {
            discard(&tmp);
        }
        written.map_err(io_err(ctx()))?;
        Ok(rec)
    }

    /// The image's layer directories, **bottom first** (the base layer is element 0). An
    /// overlayfs `lowerdir=` lists the topmost layer first: reverse this.
    pub fn layer_paths(&self, rec: &ImageRecord) -> Vec<PathBuf> {
        rec.layers.iter().map(|d| self.layer_dir(d)).collect()
    }
}

/// A blob being written to `tmp/`, hashed on the way.
pub struct BlobWriter {
    file: File,
    path: PathBuf,
    hasher: Hasher,
    len: u64,
    /// Finished: the file is the caller's now. Until then, dropping the writer (an error, a
    /// full disk) deletes it at once.
    done: bool,
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if !self.done {
            discard(&self.path);
        }
    }
}

/// Delete a temporary file of a failed operation; there is nobody to tell if that fails too
/// (the next [`Store::open`] wipes `tmp/`).
fn discard(path: &Path) {
    if let Err(e) = fs::remove_file(path)
        && e.kind() != io::ErrorKind::NotFound
    {
        tracing::debug!("cannot remove {}: {e}", path.display());
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

#[derive(Serialize, Deserialize)]
struct LayerSidecar {
    diff_id: Digest,
    size: u64,
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::image::testtar::RawTar;

    pub(crate) fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    /// Config and manifest JSON for `layers` (uncompressed tars, stored gzipped), with the
    /// layer blobs; returns (manifest, config, blobs).
    pub(crate) fn image_json(layers: &[Vec<u8>]) -> (Vec<u8>, Vec<u8>, Vec<Vec<u8>>) {
        let blobs: Vec<Vec<u8>> = layers.iter().map(|l| gzip(l)).collect();
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "created": "2024-01-02T03:04:05.5Z",
            "config": {"Entrypoint": ["/bin/sh"], "Cmd": ["-c", "true"], "Env": ["A=1"],
                       "WorkingDir": "/srv", "User": "1000:1000", "StopSignal": "SIGINT",
                       "Labels": {"k": "v"}},
            "rootfs": {"type": "layers",
                       "diff_ids": layers.iter().map(|l| Digest::of(l).to_string()).collect::<Vec<_>>()},
        }))
        .unwrap();
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": Digest::of(&config).to_string(), "size": config.len()},
            "layers": blobs.iter().map(|b| serde_json::json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": Digest::of(b).to_string(), "size": b.len()})).collect::<Vec<_>>(),
        }))
        .unwrap();
        (manifest, config, blobs)
    }

    pub(crate) fn layer(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut t = RawTar::new();
        for (p, d) in files {
            t.file(p, d);
        }
        t.finish()
    }

    fn store() -> (tempfile::TempDir, Store) {
        let tmp = tempfile::tempdir().unwrap();
        let s = Store::open(&tmp.path().join("store")).unwrap();
        (tmp, s)
    }

    fn import(s: &Store, name: &str, layers: &[Vec<u8>]) -> Result<ImageRecord, StoreError> {
        let (m, c, blobs) = image_json(layers);
        for b in &blobs {
            s.put_blob(b).unwrap();
        }
        s.put_blob(&c).unwrap();
        let md = s.put_blob(&m).unwrap();
        s.create_image_from_blob(name, &md, ImageKind::Oci, &|_| {})
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    /// After a failed import: no record, no layer, and tmp/ empty once reopened.
    pub(crate) fn assert_clean(s: &Store, images_before: usize) {
        assert_eq!(s.list().len(), images_before);
        let layers = names(&s.root.join("layers"));
        let recs = s.list();
        let referenced: BTreeSet<String> = recs
            .iter()
            .flat_map(|r| r.layers.iter().map(|d| d.hex()))
            .collect();
        for l in layers {
            let hex = l.strip_suffix(".json").unwrap_or(&l).to_string();
            assert!(referenced.contains(&hex), "stray layer {l}");
        }
        let s2 = Store::open(&s.root).unwrap();
        assert!(names(&s2.root.join("tmp")).is_empty());
    }

    /// A reader that fails midway the way a full disk makes a copy fail.
    struct FailsMidway(usize);

    impl Read for FailsMidway {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.0 == 0 {
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
            let n = buf.len().min(self.0);
            buf[..n].fill(7);
            self.0 -= n;
            Ok(n)
        }
    }

    #[test]
    fn a_failed_write_leaves_nothing_in_tmp_at_once() {
        let (_t, s) = store();
        let e = s.ingest_blob(FailsMidway(1 << 20), None).unwrap_err();
        assert!(e.to_string().contains("os error 28"), "{e}");
        // Not at the next open: now.
        assert!(names(&s.root.join("tmp")).is_empty());
        // A blob that is not what it should be goes too.
        let want = Digest::of(b"other");
        assert!(s.ingest_blob(&b"content"[..], Some(&want)).is_err());
        assert!(names(&s.root.join("tmp")).is_empty());
        assert!(names(&s.root.join("blobs/sha256")).is_empty());
        // A writer dropped unfinished.
        let mut w = s.blob_writer().unwrap();
        w.write_all(b"half").unwrap();
        drop(w);
        assert!(names(&s.root.join("tmp")).is_empty());
    }

    #[test]
    fn reclaim_deletes_what_no_record_references_unless_a_record_is_unreadable() {
        let (_t, s) = store();
        let rec = import(&s, "kept", &[layer(&[("a", b"a")])]).unwrap();
        // What an interrupted import leaves: a blob and a layer nobody references, a partial
        // download.
        let orphan = layer(&[("b", b"b")]);
        let d = s.put_blob(&gzip(&orphan)).unwrap();
        s.ensure_layer(&d, None).unwrap();
        fs::write(s.root.join("tmp/abc.partial"), b"x").unwrap();
        let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/state/image");
        for f in fs::read_dir(fixtures).unwrap() {
            let f = f.unwrap().path();
            fs::copy(&f, s.root.join("images/bad.json")).unwrap();
            let (good, bad) = s.list_checked();
            assert_eq!(good, vec![rec.clone()], "{f:?}");
            assert_eq!(bad.len(), 1, "{f:?}");
            assert_eq!(bad[0].0, "bad");
            // While a record cannot be read, nothing is collected.
            s.reclaim().unwrap();
            assert!(s.has_blob(&d), "{f:?}: collected with an unreadable record");
        }
        fs::remove_file(s.root.join("images/bad.json")).unwrap();
        assert!(s.reclaim().unwrap() >= 3);
        assert!(!s.has_blob(&d));
        assert!(names(&s.root.join("tmp")).is_empty());
        assert_eq!(s.list(), vec![rec.clone()]);
        for l in s.layer_paths(&rec) {
            assert!(l.is_dir());
        }
        for b in &rec.layer_blobs {
            assert!(s.has_blob(b));
        }
    }

    #[test]
    fn images_share_layers_and_gc_keeps_what_is_referenced() {
        let (_t, s) = store();
        let base = layer(&[("etc/os-release", b"base")]);
        let a = layer(&[("a", b"a")]);
        let b = layer(&[("b", b"b")]);
        let steps = std::cell::RefCell::new(Vec::new());
        let (m, c, blobs) = image_json(&[base.clone(), a.clone()]);
        for x in &blobs {
            s.put_blob(x).unwrap();
        }
        s.put_blob(&c).unwrap();
        let manifest: ImageManifest = serde_json::from_slice(&m).unwrap();
        let ra = s
            .create_image("img-a", &manifest, ImageKind::Registry, &|p| {
                steps.borrow_mut().push(p)
            })
            .unwrap();
        assert_eq!(steps.borrow().len(), 4);
        assert_eq!(ra.layers, vec![Digest::of(&base), Digest::of(&a)]);
        assert_eq!(ra.size, (base.len() + a.len()) as u64);
        assert_eq!(ra.created, 1_704_164_645);
        assert_eq!(ra.config.entrypoint, ["/bin/sh"]);
        assert_eq!(ra.config.cmd, ["-c", "true"]);
        assert_eq!(ra.config.working_dir.as_deref(), Some("/srv"));
        assert_eq!(ra.config.user.as_deref(), Some("1000:1000"));
        assert_eq!(ra.config.stop_signal.as_deref(), Some("SIGINT"));
        assert_eq!(ra.config.labels["k"], "v");
        let paths = s.layer_paths(&ra);
        assert_eq!(fs::read(paths[0].join("etc/os-release")).unwrap(), b"base");
        assert_eq!(fs::read(paths[1].join("a")).unwrap(), b"a");

        let rb = import(&s, "img-b", &[base.clone(), b.clone()]).unwrap();
        assert!(matches!(
            // (Same content, so no unreferenced blobs are left to wait for their grace period.)
            import(&s, "img-b", &[base.clone(), b.clone()]).unwrap_err(),
            StoreError::Exists(_)
        ));
        assert_eq!(s.get("img-b").unwrap(), rb);
        s.tag("img-b", "img-b2").unwrap();
        s.clone_image("img-b", "img-b3").unwrap();
        s.rename("img-b3", "img-c").unwrap();
        assert!(matches!(s.get("img-b3"), Err(StoreError::NoSuchImage(_))));
        assert_eq!(
            s.list().iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
            ["img-a", "img-b", "img-b2", "img-c"]
        );
        s.set_read_only("img-c", true).unwrap();
        assert_eq!(
            s.remove("img-c").unwrap_err().kind(),
            ErrorKind::InvalidInput
        );
        s.set_read_only("img-c", false).unwrap();

        s.remove("img-a").unwrap();
        assert!(!s.layer_dir(&Digest::of(&a)).exists());
        assert!(!s.has_blob(&ra.digest) && !s.has_blob(&ra.layer_blobs[1]));
        assert!(s.layer_dir(&Digest::of(&base)).exists(), "shared base kept");
        assert!(s.has_blob(&ra.layer_blobs[0]));
        for n in ["img-b", "img-b2", "img-c"] {
            s.remove(n).unwrap();
        }
        assert!(names(&s.root.join("layers")).is_empty());
        assert!(names(&s.root.join("blobs/sha256")).is_empty());
        assert!(names(&s.root.join("images")).is_empty());
    }

    #[test]
    fn blobs_resume_and_verify() {
        let (_t, s) = store();
        let data = b"some manifest bytes";
        let d = Digest::of(data);
        let mut p = s.begin_blob(&d).unwrap();
        assert_eq!(p.len, 0);
        p.file.write_all(&data[..5]).unwrap();
        drop(p);
        let mut p = s.begin_blob(&d).unwrap();
        assert_eq!(p.len, 5);
        p.file.write_all(&data[5..]).unwrap();
        s.commit_blob(&d, p).unwrap();
        assert!(s.has_blob(&d));
        assert_eq!(fs::read(s.blob_path(&d)).unwrap(), data);

        let wrong = Digest::of(b"other");
        let mut p = s.begin_blob(&wrong).unwrap();
        p.file.write_all(b"not other").unwrap();
        let e = s.commit_blob(&wrong, p).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        assert!(!s.has_blob(&wrong));
        assert!(names(&s.root.join("tmp")).is_empty(), "partial deleted");
        assert_eq!(s.put_blob(b"x").unwrap(), Digest::of(b"x"));
    }

    #[test]
    fn bad_manifests_leave_nothing_behind() {
        let (_t, s) = store();
        let l = layer(&[("f", b"f")]);
        let (m, c, blobs) = image_json(std::slice::from_ref(&l));
        let mut mv: serde_json::Value = serde_json::from_slice(&m).unwrap();

        // Missing layer blob: NotFound naming the digest.
        s.put_blob(&c).unwrap();
        let md = s.put_blob(&m).unwrap();
        let e = s
            .create_image_from_blob("x", &md, ImageKind::Oci, &|_| {})
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert!(
            e.to_string().contains(&Digest::of(&blobs[0]).to_string()),
            "{e}"
        );
        s.put_blob(&blobs[0]).unwrap();

        let try_with = |f: &dyn Fn(&mut serde_json::Value)| {
            let mut v = mv.clone();
            f(&mut v);
            let md = s.put_blob(&serde_json::to_vec(&v).unwrap()).unwrap();
            let e = s
                .create_image_from_blob("x", &md, ImageKind::Oci, &|_| {})
                .unwrap_err();
            assert_clean(&s, 0);
            e
        };
        let e = try_with(&|v| v["layers"][0]["mediaType"] = "application/x-tar-ish".into());
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
        let e = try_with(&|v| v["layers"][0]["digest"] = "sha256:../x".into());
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
        let e = try_with(&|v| v["layers"][0]["digest"] = "sha256:abcd".into());
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
        let e = try_with(&|v| v["config"]["digest"] = "sha512:abcd".into());
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
        // A layer whose content is not what the config's diff_id says.
        let other = gzip(&layer(&[("g", b"g")]));
        s.put_blob(&other).unwrap();
        let e = try_with(&|v| {
            v["layers"][0]["digest"] = Digest::of(&other).to_string().into();
        });
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
        // A hostile layer.
        let mut t = RawTar::new();
        t.file("../escape", b"x");
        let evil = t.finish();
        let (m2, c2, b2) = image_json(&[evil]);
        s.put_blob(&c2).unwrap();
        s.put_blob(&b2[0]).unwrap();
        let md = s.put_blob(&m2).unwrap();
        let e = s
            .create_image_from_blob("x", &md, ImageKind::Oci, &|_| {})
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
        assert_clean(&s, 0);
        mv["schemaVersion"] = 1.into();
        let md = s.put_blob(&serde_json::to_vec(&mv).unwrap()).unwrap();
        assert!(
            s.create_image_from_blob("x", &md, ImageKind::Oci, &|_| {})
                .is_err()
        );
        assert!(!s.root.join("../escape").exists());
        // Names are validated.
        assert_eq!(
            import(&s, "../x", &[l]).unwrap_err().kind(),
            ErrorKind::InvalidInput
        );
    }

    #[test]
    fn concurrent_imports_of_one_name_and_one_layer() {
        let (_t, s) = store();
        let shared = layer(&[("big", &[1u8; 200_000])]);
        let (m, c, blobs) = image_json(std::slice::from_ref(&shared));
        for b in &blobs {
            s.put_blob(b).unwrap();
        }
        s.put_blob(&c).unwrap();
        let md = s.put_blob(&m).unwrap();
        let results: Vec<_> = std::thread::scope(|sc| {
            let hs: Vec<_> = (0..4)
                .map(|i| {
                    let s = &s;
                    sc.spawn(move || {
                        let name = if i < 2 {
                            "same".to_string()
                        } else {
                            format!("n{i}")
                        };
                        s.create_image_from_blob(&name, &md, ImageKind::Oci, &|_| {})
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let exists = results
            .iter()
            .filter(|r| matches!(r, Err(StoreError::Exists(_))))
            .count();
        assert_eq!(exists, 1, "{results:?}");
        assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 3);
        assert_eq!(
            names(&s.root.join("layers")).len(),
            2,
            "one layer and its sidecar"
        );
        assert_clean(&s, 3);
    }

    #[test]
    fn parses_rfc3339() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339("2024-01-02T03:04:05.123456789Z"),
            Some(1_704_164_645)
        );
        assert_eq!(
            parse_rfc3339("2024-01-02T04:04:05+01:00"),
            Some(1_704_164_645)
        );
        assert_eq!(parse_rfc3339("yesterday"), None);
        assert_eq!(parse_rfc3339("1969-12-31T23:59:59Z"), None);
    }
}
