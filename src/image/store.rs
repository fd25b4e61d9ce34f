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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::fcntl::{AT_FDCWD, RenameFlags};
use oci_spec::image::{ImageConfiguration, ImageManifest};
use serde::{Deserialize, Serialize};

use super::ErrorKind;
use super::compress;
use super::digest::{Digest, Hasher};
use super::extract::{self, ExtractError, Limits};
use super::reference::{ImageRef, ReferenceError, TagName, short_matches};

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
/// image can never carry privileged settings (mounts, capabilities, devices). Every field added
/// since the first version has a serde default, so older records read as before.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    pub stop_signal: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// Docker's `HEALTHCHECK` (not in the OCI spec; docker and buildah write it).
    #[serde(default)]
    pub healthcheck: Option<Healthcheck>,
    /// `EXPOSE`: `PORT/PROTO` (`80/tcp`), sorted.
    #[serde(default)]
    pub exposed_ports: Vec<String>,
    /// `VOLUME`: absolute paths in the container, sorted.
    #[serde(default)]
    pub volumes: Vec<String>,
}

/// A `HEALTHCHECK` as docker stores it in the image config. Durations are nanoseconds, 0
/// meaning "the default" (docker's rule).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Healthcheck {
    /// `["NONE"]` (disabled), `["CMD", prog, args…]` or `["CMD-SHELL", command]`.
    pub test: Vec<String>,
    #[serde(default)]
    pub interval_ns: u64,
    #[serde(default)]
    pub timeout_ns: u64,
    #[serde(default)]
    pub start_period_ns: u64,
    #[serde(default)]
    pub start_interval_ns: u64,
    #[serde(default)]
    pub retries: u32,
}

/// One image as the store API shows it: the image (by ID) seen through one of its names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageRecord {
    /// The tag this record was looked up by, in its familiar form (see
    /// [`super::reference`]), or the image ID (`sha256:…`) for an image without tags.
    pub name: String,
    /// Every tag naming the image, familiar form, sorted.
    pub tags: Vec<String>,
    pub kind: ImageKind,
    /// Digest of the manifest blob.
    pub digest: Digest,
    /// The image ID: the digest of its config.
    pub config_digest: Digest,
    /// Unix seconds: the config's `created`, or the import time.
    pub created: u64,
    /// Unix seconds: when this name was given (the import, the tag, the clone).
    pub imported: u64,
    /// Sum of the layers' uncompressed tar sizes, bytes.
    pub size: u64,
    /// Layer diff_ids (uncompressed digests), bottom first.
    pub layers: Vec<Digest>,
    /// The layer blobs as stored (compressed digests), bottom first, same length as `layers`.
    pub layer_blobs: Vec<Digest>,
    /// A read-only tag cannot be removed or renamed until the flag is cleared.
    pub read_only: bool,
    pub config: ImageConfig,
    /// `registry/repository`s the image was pulled from or pushed to.
    pub sources: Vec<String>,
}

impl ImageRecord {
    /// The image ID.
    pub fn id(&self) -> Digest {
        self.config_digest
    }

    /// Whether no tag names the image.
    pub fn dangling(&self) -> bool {
        self.tags.is_empty()
    }
}

/// `images/<id hex>.json`: one image, whatever its names. The JSON is a stable format.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ImageData {
    /// The config digest.
    id: Digest,
    kind: ImageKind,
    digest: Digest,
    created: u64,
    imported: u64,
    size: u64,
    layers: Vec<Digest>,
    layer_blobs: Vec<Digest>,
    config: ImageConfig,
    #[serde(default)]
    sources: Vec<String>,
}

impl ImageData {
    /// The blobs the image keeps alive: manifest, config, layers.
    fn blobs(&self) -> BTreeSet<Digest> {
        let mut b: BTreeSet<Digest> = self.layer_blobs.iter().copied().collect();
        b.insert(self.digest);
        b.insert(self.id);
        b
    }
}

/// `images/<name>.json` as stores before tags wrote it; read once, by the migration.
#[derive(Deserialize)]
struct LegacyRecord {
    name: String,
    kind: ImageKind,
    digest: Digest,
    config_digest: Digest,
    created: u64,
    imported: u64,
    size: u64,
    layers: Vec<Digest>,
    #[serde(default)]
    layer_blobs: Vec<Digest>,
    read_only: bool,
    config: ImageConfig,
}

/// `tags.json`: canonical tag → image.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct TagIndex {
    #[serde(default)]
    tags: BTreeMap<String, TagEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct TagEntry {
    id: Digest,
    #[serde(default)]
    read_only: bool,
    /// Unix seconds.
    #[serde(default)]
    tagged: u64,
    /// How this name was made, when it differs from how the image first arrived (the same
    /// image imported from a docker archive under one name, an OCI archive under another).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kind: Option<ImageKind>,
}

/// What creating an image does to a tag that exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TagMode {
    /// Refuse (AlreadyExists): imports, tag, clone.
    New,
    /// Point it at the new image: pull, load.
    Move,
}

/// The outcome of [`Store::create_tagged`].
#[derive(Debug, Clone)]
pub struct Created {
    pub record: ImageRecord,
    /// The tag already pointed at this image: nothing changed.
    pub unchanged: bool,
    /// The image the tag pointed at before it moved.
    pub previous: Option<Digest>,
    /// The image was in the store already (under another name, or dangling).
    pub existed: bool,
}

/// The outcome of [`Store::remove_with`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removed {
    /// The tags removed (familiar form).
    pub untagged: Vec<String>,
    /// The image deleted, if it was.
    pub deleted: Option<Digest>,
    /// Bytes freed on disk (layers, blobs, records).
    pub freed_bytes: u64,
}

/// The outcome of [`Store::prune`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// The images deleted, by ID.
    pub images: Vec<Digest>,
    /// Tags removed with them (only with `all`).
    pub untagged: Vec<String>,
    /// Bytes freed on disk: layers and blobs.
    pub freed_bytes: u64,
}

/// Disk use of the store and of container writable layers (`system df`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiskUsage {
    pub images: usize,
    /// Images no tag names.
    pub dangling: usize,
    pub layers: usize,
    /// Extracted layers, allocated bytes (hard links counted once).
    pub layers_bytes: u64,
    pub blobs: usize,
    pub blobs_bytes: u64,
    /// Layer bytes that only unused dangling images hold (what `prune` frees, roughly).
    pub reclaimable_bytes: u64,
    pub containers: usize,
    pub containers_bytes: u64,
}

/// Progress of an import: bytes of the source read, then one call per layer step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImportProgress {
    /// `done` bytes of the source (file, archive, tree) read, of `total` (0: unknown).
    Bytes { done: u64, total: u64 },
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
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error("image {0} is used by a container")]
    InUse(String),
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
            | StoreError::ReadOnly(_)
            | StoreError::Reference(_) => ErrorKind::InvalidInput,
            StoreError::InUse(_) => ErrorKind::Busy,
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

/// The fields of an image config berth keeps (see [`ImageConfig`]). HEALTHCHECK, EXPOSE and
/// VOLUME are read from the raw JSON: HEALTHCHECK is docker's and not in the OCI spec, and the
/// other two are maps of empty objects that OCI tools and docker write differently.
fn image_config(cfg: &ImageConfiguration, raw: &[u8]) -> ImageConfig {
    let raw: serde_json::Value = serde_json::from_slice(raw).unwrap_or_default();
    let rc = raw.get("config").or_else(|| raw.get("Config"));
    let keys = |k: &str| -> Vec<String> {
        let mut v: Vec<String> = rc
            .and_then(|c| c.get(k))
            .and_then(|m| m.as_object())
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        v.sort();
        v
    };
    let healthcheck = rc.and_then(|c| c.get("Healthcheck")).and_then(|h| {
        let test: Vec<String> = h
            .get("Test")?
            .as_array()?
            .iter()
            .filter_map(|t| t.as_str().map(String::from))
            .collect();
        if test.is_empty() {
            return None;
        }
        let n = |k: &str| h.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
        Some(Healthcheck {
            test,
            interval_ns: n("Interval"),
            timeout_ns: n("Timeout"),
            start_period_ns: n("StartPeriod"),
            start_interval_ns: n("StartInterval"),
            retries: u32::try_from(n("Retries")).unwrap_or(u32::MAX),
        })
    });
    let Some(c) = cfg.config() else {
        return ImageConfig {
            healthcheck,
            exposed_ports: keys("ExposedPorts"),
            volumes: keys("Volumes"),
            ..ImageConfig::default()
        };
    };
    ImageConfig {
        entrypoint: c.entrypoint().clone().unwrap_or_default(),
        cmd: c.cmd().clone().unwrap_or_default(),
        env: c.env().clone().unwrap_or_default(),
        working_dir: c.working_dir().clone().filter(|s| !s.is_empty()),
        user: c.user().clone().filter(|s| !s.is_empty()),
        stop_signal: c.stop_signal().clone().filter(|s| !s.is_empty()),
        labels: c.labels().clone().unwrap_or_default().into_iter().collect(),
        healthcheck,
        exposed_ports: keys("ExposedPorts"),
        volumes: keys("Volumes"),
    }
}

/// The image store rooted at one directory.
pub struct Store {
    root: PathBuf,
    limits: Limits,
    /// Imports hold it shared, garbage collection exclusively.
    gc: RwLock<()>,
    /// Held for every read-modify-write of `tags.json` (and of image records' sources).
    tags: Mutex<()>,
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
        let store = Store {
            root: root.to_path_buf(),
            limits: Limits::default(),
            gc: RwLock::new(()),
            tags: Mutex::new(()),
        };
        let n = store.migrate()?;
        if n > 0 {
            tracing::info!("image store: {n} image records moved to the tagged layout");
        }
        Ok(store)
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

    fn image_data_path(&self, id: &Digest) -> PathBuf {
        self.root.join("images").join(format!("{}.json", id.hex()))
    }

    fn tags_path(&self) -> PathBuf {
        self.root.join("tags.json")
    }

    /// Write `data` to `path` atomically: a synced file in `tmp/`, renamed over `path`.
    fn write_atomic(&self, path: &Path, data: &[u8], what: &str) -> Result<(), StoreError> {
        let tmp = self.tmp_path("write");
        let r = (|| {
            let mut f = File::create(&tmp)?;
            f.write_all(data)?;
            f.sync_all()?;
            fs::rename(&tmp, path)
        })();
        if r.is_err()
            && let Err(e) = fs::remove_file(&tmp)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!("cannot remove {}: {e}, ignoring", tmp.display());
        }
        r.map_err(io_err(format!("writing {what}")))
    }

    fn read_tags(&self) -> Result<TagIndex, StoreError> {
        match fs::read(self.tags_path()) {
            Ok(d) => serde_json::from_slice(&d).map_err(|e| StoreError::Io {
                context: "reading tags.json".into(),
                source: io::Error::new(io::ErrorKind::InvalidData, e),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(TagIndex::default()),
            Err(e) => Err(io_err("reading tags.json")(e)),
        }
    }

    fn write_tags(&self, t: &TagIndex) -> Result<(), StoreError> {
        let data = serde_json::to_vec_pretty(t).expect("serializing tags");
        self.write_atomic(&self.tags_path(), &data, "tags.json")
    }

    fn lock_tags(&self) -> std::sync::MutexGuard<'_, ()> {
        self.tags.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn read_image(&self, id: &Digest) -> Result<ImageData, StoreError> {
        let p = self.image_data_path(id);
        let data = match fs::read(&p) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::NoSuchImage(id.to_string()));
            }
            Err(e) => return Err(io_err(format!("reading image {id}"))(e)),
        };
        let d: ImageData = serde_json::from_slice(&data).map_err(|e| StoreError::Io {
            context: format!("image record {id}"),
            source: io::Error::new(io::ErrorKind::InvalidData, e),
        })?;
        if d.id != *id {
            return Err(StoreError::Io {
                context: format!("image record {id}"),
                source: io::Error::new(io::ErrorKind::InvalidData, "names another image"),
            });
        }
        Ok(d)
    }

    fn write_image(&self, d: &ImageData) -> Result<(), StoreError> {
        let data = serde_json::to_vec_pretty(d).expect("serializing an image record");
        self.write_atomic(
            &self.image_data_path(&d.id),
            &data,
            &format!("image {}", d.id),
        )
    }

    /// Every image's data, by ID. Unreadable records are skipped.
    fn all_images(&self) -> BTreeMap<Digest, ImageData> {
        let mut out = BTreeMap::new();
        let Ok(rd) = fs::read_dir(self.root.join("images")) else {
            return out;
        };
        for e in rd.flatten() {
            let n = e.file_name();
            let Some(id) = n
                .to_str()
                .and_then(|n| n.strip_suffix(".json"))
                .and_then(|h| format!("sha256:{h}").parse::<Digest>().ok())
            else {
                continue;
            };
            if let Ok(d) = self.read_image(&id) {
                out.insert(id, d);
            }
        }
        out
    }

    /// Turn `images/<name>.json` records of stores made before tags into image records by
    /// ID plus tags. Each old record is removed only once its image and tag are written, so
    /// a crash in between repeats the step harmlessly on the next open.
    fn migrate(&self) -> Result<usize, StoreError> {
        let dir = self.root.join("images");
        let mut old = Vec::new();
        for e in fs::read_dir(&dir)
            .map_err(io_err("reading images"))?
            .flatten()
        {
            let n = e.file_name();
            let Some(stem) = n.to_str().and_then(|n| n.strip_suffix(".json")) else {
                continue;
            };
            if format!("sha256:{stem}").parse::<Digest>().is_ok() {
                continue;
            }
            old.push((stem.to_string(), e.path()));
        }
        if old.is_empty() {
            return Ok(0);
        }
        let _t = self.lock_tags();
        let mut tags = self.read_tags()?;
        let mut done = Vec::new();
        for (stem, path) in old {
            let data = fs::read(&path).map_err(io_err(format!("reading {}", path.display())))?;
            let rec: LegacyRecord = match serde_json::from_slice(&data) {
                Ok(r) => r,
                Err(e) => {
                    // Never delete what cannot be read: leave it for a person to look at.
                    tracing::warn!("image record {}: {e}, ignoring", path.display());
                    continue;
                }
            };
            if rec.name != stem {
                tracing::warn!(
                    "image record {} names {:?}, ignoring",
                    path.display(),
                    rec.name
                );
                continue;
            }
            let id = rec.config_digest;
            if !self.image_data_path(&id).exists() {
                self.write_image(&ImageData {
                    id,
                    kind: rec.kind,
                    digest: rec.digest,
                    created: rec.created,
                    imported: rec.imported,
                    size: rec.size,
                    layers: rec.layers,
                    layer_blobs: rec.layer_blobs,
                    config: rec.config,
                    sources: Vec::new(),
                })?;
            }
            let key = TagName::parse(&rec.name).unwrap_or_else(|_| TagName::legacy(&rec.name));
            tags.tags.entry(key.key().to_string()).or_insert(TagEntry {
                id,
                read_only: rec.read_only,
                tagged: rec.imported,
                kind: Some(rec.kind),
            });
            done.push(path);
        }
        self.write_tags(&tags)?;
        for p in &done {
            fs::remove_file(p).map_err(io_err(format!("removing {}", p.display())))?;
        }
        Ok(done.len())
    }

    /// What `s` names: the tag (if it is one) and the image ID. See
    /// [`super::reference`] for the rules.
    fn resolve_in(
        &self,
        s: &str,
        tags: &TagIndex,
    ) -> Result<(Option<TagName>, Digest), StoreError> {
        let not_found = || StoreError::NoSuchImage(s.to_string());
        let by_id = |prefix: &str| -> Result<Option<Digest>, StoreError> {
            let ids: Vec<Digest> = self
                .all_images()
                .into_keys()
                .filter(|d| d.hex().starts_with(prefix))
                .collect();
            match &ids[..] {
                [] => Ok(None),
                [one] => Ok(Some(*one)),
                _ => Err(StoreError::Invalid(format!(
                    "image ID prefix {prefix} is ambiguous ({} images)",
                    ids.len()
                ))),
            }
        };
        let tagged = |k: &str| {
            tags.tags
                .get(k)
                .map(|e| (Some(TagName::from_key(k.into())), e.id))
        };
        match ImageRef::parse(s).map_err(StoreError::Reference)? {
            ImageRef::Id(prefix) => by_id(&prefix)?.map(|d| (None, d)).ok_or_else(not_found),
            ImageRef::Digest(d) => self
                .all_images()
                .into_values()
                .find(|i| i.digest == d || i.id == d)
                .map(|i| (None, i.id))
                .ok_or_else(not_found),
            ImageRef::Legacy(raw) => tagged(&raw).ok_or_else(not_found),
            ImageRef::Tag { tag, short, raw } => {
                if let Some(hit) = tagged(tag.key()) {
                    return Ok(hit);
                }
                if let Some(prefix) = ImageRef::id_candidate(&raw)
                    && let Some(d) = by_id(prefix)?
                {
                    return Ok((None, d));
                }
                let Some((path, t)) = short else {
                    return Err(not_found());
                };
                let hits: Vec<&String> = tags
                    .tags
                    .keys()
                    .filter(|k| short_matches(&TagName::from_key((*k).clone()), &path, &t))
                    .collect();
                match &hits[..] {
                    [] => Err(not_found()),
                    [one] => Ok(tagged(one).expect("listed")),
                    many => Err(StoreError::Invalid(format!(
                        "{s:?} is ambiguous: {}",
                        many.iter()
                            .map(|k| TagName::from_key((*k).clone()).display())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))),
                }
            }
        }
    }

    /// The tag and image ID `s` names (see [`super::reference`]).
    pub fn resolve(&self, s: &str) -> Result<(Option<TagName>, Digest), StoreError> {
        let tags = self.read_tags()?;
        self.resolve_in(s, &tags)
    }

    fn view(&self, tag: Option<&TagName>, d: ImageData, tags: &TagIndex) -> ImageRecord {
        let names: Vec<&String> = tags
            .tags
            .iter()
            .filter(|(_, e)| e.id == d.id)
            .map(|(k, _)| k)
            .collect();
        let mut names: Vec<String> = names
            .into_iter()
            .map(|k| TagName::from_key(k.clone()).display())
            .collect();
        names.sort();
        let entry = tag.and_then(|t| tags.tags.get(t.key()));
        ImageRecord {
            name: match tag {
                Some(t) => t.display(),
                None => d.id.to_string(),
            },
            tags: names,
            kind: entry.and_then(|e| e.kind).unwrap_or(d.kind),
            digest: d.digest,
            config_digest: d.id,
            created: d.created,
            imported: entry.map_or(d.imported, |e| e.tagged),
            size: d.size,
            layers: d.layers,
            layer_blobs: d.layer_blobs,
            read_only: entry.is_some_and(|e| e.read_only),
            config: d.config,
            sources: d.sources,
        }
    }

    /// The image `s` names, as seen through that name (its tag's flags).
    pub fn get(&self, s: &str) -> Result<ImageRecord, StoreError> {
        let tags = self.read_tags()?;
        let (tag, id) = self.resolve_in(s, &tags)?;
        let d = self.read_image(&id)?;
        Ok(self.view(tag.as_ref(), d, &tags))
    }

    /// The image with this ID, named by its first tag (or its ID when it has none).
    pub fn get_id(&self, id: &Digest) -> Result<ImageRecord, StoreError> {
        let tags = self.read_tags()?;
        let d = self.read_image(id)?;
        let first = tags
            .tags
            .iter()
            .find(|(_, e)| e.id == *id)
            .map(|(k, _)| TagName::from_key(k.clone()));
        Ok(self.view(first.as_ref(), d, &tags))
    }

    /// One entry per tag, then one per dangling image (named by its ID), by name.
    pub fn list(&self) -> Vec<ImageRecord> {
        let Ok(tags) = self.read_tags() else {
            return Vec::new();
        };
        let images = self.all_images();
        let mut out = Vec::new();
        let mut tagged = BTreeSet::new();
        for (k, e) in &tags.tags {
            if let Some(d) = images.get(&e.id) {
                tagged.insert(e.id);
                out.push(self.view(Some(&TagName::from_key(k.clone())), d.clone(), &tags));
            }
        }
        for (id, d) in images {
            if !tagged.contains(&id) {
                out.push(self.view(None, d, &tags));
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// One entry per image (named by its first tag, or its ID), with all its tags.
    pub fn images(&self) -> Vec<ImageRecord> {
        let Ok(tags) = self.read_tags() else {
            return Vec::new();
        };
        self.all_images()
            .into_values()
            .map(|d| {
                let first = tags
                    .tags
                    .iter()
                    .find(|(_, e)| e.id == d.id)
                    .map(|(k, _)| TagName::from_key(k.clone()));
                self.view(first.as_ref(), d, &tags)
            })
            .collect()
    }

    fn check_free(&self, name: &TagName) -> Result<(), StoreError> {
        if self.read_tags()?.tags.contains_key(name.key()) {
            return Err(StoreError::Exists(name.display()));
        }
        Ok(())
    }

    /// Check a name for a new tag and fail early if it is taken (the tag write checks again,
    /// atomically).
    pub fn check_new_name(&self, name: &str) -> Result<TagName, StoreError> {
        let t = TagName::parse(name).map_err(StoreError::Reference)?;
        self.check_free(&t)?;
        Ok(t)
    }

    /// Import an image whose blobs are all in the store, under the new tag `name`
    /// (AlreadyExists if it is taken). The manifest is stored as a blob in its serde form; use
    /// [`Store::create_image_from_blob`] to keep the original bytes (and so the registry's
    /// manifest digest).
    pub fn create_image(
        &self,
        name: &str,
        manifest: &ImageManifest,
        kind: ImageKind,
        progress: &dyn Fn(ImportProgress),
    ) -> Result<ImageRecord, StoreError> {
        self.check_new_name(name)?;
        let bytes = serde_json::to_vec(manifest)
            .map_err(|e| StoreError::Invalid(format!("manifest does not serialize: {e}")))?;
        let digest = self.put_blob(&bytes)?;
        let c = self.create_tagged(Some(name), &digest, kind, TagMode::New, None, progress)?;
        Ok(c.record)
    }

    /// Import an image from a manifest already stored as blob `manifest_digest`, under the
    /// new tag `name`.
    pub fn create_image_from_blob(
        &self,
        name: &str,
        manifest_digest: &Digest,
        kind: ImageKind,
        progress: &dyn Fn(ImportProgress),
    ) -> Result<ImageRecord, StoreError> {
        let c = self.create_tagged(
            Some(name),
            manifest_digest,
            kind,
            TagMode::New,
            None,
            progress,
        )?;
        Ok(c.record)
    }

    /// Import an image from a stored manifest and point tag `name` at it: a new tag only
    /// ([`TagMode::New`]), or moving an existing one ([`TagMode::Move`]; the image it pointed
    /// at stays, dangling unless another tag names it). With no name the image is stored
    /// untagged. An image already stored (same config digest) is not imported again.
    /// `source` (`registry/repository`) is remembered for cross-repository mounts on push.
    pub fn create_tagged(
        &self,
        name: Option<&str>,
        manifest_digest: &Digest,
        kind: ImageKind,
        mode: TagMode,
        source: Option<&str>,
        progress: &dyn Fn(ImportProgress),
    ) -> Result<Created, StoreError> {
        let tag = name
            .map(|n| TagName::parse(n).map_err(StoreError::Reference))
            .transpose()?;
        if let (Some(t), TagMode::New) = (&tag, mode) {
            self.check_free(t)?;
        }
        let data = self.read_blob(manifest_digest)?;
        let manifest: ImageManifest = serde_json::from_slice(&data)
            .map_err(|e| StoreError::Invalid(format!("manifest {manifest_digest}: {e}")))?;
        // From the first layer until the tag exists, garbage collection must wait.
        let _guard = self.gc.read().unwrap_or_else(|p| p.into_inner());
        let built = self.build_image(&manifest, *manifest_digest, kind, progress)?;
        let _t = self.lock_tags();
        let mut tags = self.read_tags()?;
        let id = built.id;
        let existed = match self.read_image(&id) {
            Ok(mut d) => {
                if let Some(s) = source
                    && !d.sources.iter().any(|x| x == s)
                {
                    d.sources.push(s.to_string());
                    self.write_image(&d)?;
                }
                true
            }
            Err(StoreError::NoSuchImage(_)) => {
                let mut d = built;
                d.sources.extend(source.map(String::from));
                self.write_image(&d)?;
                false
            }
            Err(e) => return Err(e),
        };
        let mut previous = None;
        if let Some(t) = &tag {
            match tags.tags.get(t.key()) {
                Some(_) if mode == TagMode::New => {
                    return Err(StoreError::Exists(t.display()));
                }
                Some(e) if e.read_only && e.id != id => {
                    return Err(StoreError::ReadOnly(t.display()));
                }
                Some(e) => previous = Some(e.id),
                None => {}
            }
            if previous != Some(id) {
                tags.tags.insert(
                    t.key().to_string(),
                    TagEntry {
                        id,
                        read_only: false,
                        tagged: now(),
                        kind: existed.then_some(kind),
                    },
                );
                self.write_tags(&tags)?;
            }
        }
        let d = self.read_image(&id)?;
        Ok(Created {
            record: self.view(tag.as_ref(), d, &tags),
            unchanged: previous == Some(id),
            previous: previous.filter(|p| *p != id),
            existed,
        })
    }

    /// Check the manifest, extract its layers and make the image record (not yet written).
    fn build_image(
        &self,
        manifest: &ImageManifest,
        digest: Digest,
        kind: ImageKind,
        progress: &dyn Fn(ImportProgress),
    ) -> Result<ImageData, StoreError> {
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
        Ok(ImageData {
            id: config_digest,
            kind,
            digest,
            created: cfg
                .created()
                .as_deref()
                .and_then(parse_rfc3339)
                .unwrap_or(imported),
            imported,
            size,
            layers: diff_ids,
            layer_blobs: layers,
            config: image_config(&cfg, &cfg_data),
            sources: Vec::new(),
        })
    }

    /// Remember that the image is in `source` (`registry/repository`), for cross-repository
    /// mounts on later pushes.
    pub fn add_source(&self, id: &Digest, source: &str) -> Result<(), StoreError> {
        let _t = self.lock_tags();
        let mut d = self.read_image(id)?;
        if !d.sources.iter().any(|s| s == source) {
            d.sources.push(source.to_string());
            self.write_image(&d)?;
        }
        Ok(())
    }

    /// Remove the name `s`: a tag is removed, and its image with it when no other tag names
    /// it and `in_use` does not claim it (it then stays, dangling). An image ID removes the
    /// image and every tag naming it, refused while `in_use` claims it. Layers and blobs no
    /// remaining image references are deleted. Read-only tags are refused.
    pub fn remove_with(
        &self,
        s: &str,
        in_use: &dyn Fn(&Digest) -> bool,
    ) -> Result<Removed, StoreError> {
        let _guard = self.gc.write().unwrap_or_else(|p| p.into_inner());
        let t = self.lock_tags();
        let mut tags = self.read_tags()?;
        let (tag, id) = self.resolve_in(s, &tags)?;
        let data = self.read_image(&id)?;
        let mut untagged = Vec::new();
        match &tag {
            Some(tag) => {
                if tags.tags[tag.key()].read_only {
                    return Err(StoreError::ReadOnly(tag.display()));
                }
                tags.tags.remove(tag.key());
                untagged.push(tag.display());
            }
            None => {
                if in_use(&id) {
                    return Err(StoreError::InUse(id.to_string()));
                }
                if let Some((k, _)) = tags.tags.iter().find(|(_, e)| e.id == id && e.read_only) {
                    return Err(StoreError::ReadOnly(TagName::from_key(k.clone()).display()));
                }
                let keys: Vec<String> = tags
                    .tags
                    .iter()
                    .filter(|(_, e)| e.id == id)
                    .map(|(k, _)| k.clone())
                    .collect();
                for k in keys {
                    tags.tags.remove(&k);
                    untagged.push(TagName::from_key(k).display());
                }
            }
        }
        let still_named = tags.tags.values().any(|e| e.id == id);
        let mut deleted = None;
        let mut freed = 0;
        self.write_tags(&tags)?;
        if !still_named && !in_use(&id) {
            let p = self.image_data_path(&id);
            fs::remove_file(&p).map_err(io_err(format!("removing image {id}")))?;
            drop(t);
            freed = self.collect(&data.blobs())?;
            deleted = Some(id);
        }
        Ok(Removed {
            untagged,
            deleted,
            freed_bytes: freed,
        })
    }

    /// [`Store::remove_with`] when no container uses any image.
    pub fn remove(&self, s: &str) -> Result<Removed, StoreError> {
        self.remove_with(s, &|_| false)
    }

    /// Remove dangling images `in_use` does not claim (with `all`, every such image, tags and
    /// all, except those with a read-only tag), then every layer no image references and
    /// every unreferenced blob older than the grace period.
    pub fn prune(
        &self,
        all: bool,
        in_use: &dyn Fn(&Digest) -> bool,
    ) -> Result<PruneReport, StoreError> {
        let _guard = self.gc.write().unwrap_or_else(|p| p.into_inner());
        let t = self.lock_tags();
        let mut tags = self.read_tags()?;
        let mut report = PruneReport::default();
        let mut freed_blobs = BTreeSet::new();
        for (id, d) in self.all_images() {
            let names: Vec<String> = tags
                .tags
                .iter()
                .filter(|(_, e)| e.id == id)
                .map(|(k, _)| k.clone())
                .collect();
            if in_use(&id) || (!names.is_empty() && !all) {
                continue;
            }
            if names.iter().any(|k| tags.tags[k].read_only) {
                continue;
            }
            for k in names {
                tags.tags.remove(&k);
                report.untagged.push(TagName::from_key(k).display());
            }
            self.write_tags(&tags)?;
            let p = self.image_data_path(&id);
            fs::remove_file(&p).map_err(io_err(format!("removing image {id}")))?;
            freed_blobs.extend(d.blobs());
            report.images.push(id);
        }
        drop(t);
        report.freed_bytes = self.collect(&freed_blobs)?;
        Ok(report)
    }

    /// Delete what no image references: layers always, blobs if in `just_freed` or old.
    /// Returns the bytes freed on disk.
    fn collect(&self, just_freed: &BTreeSet<Digest>) -> Result<u64, StoreError> {
        self.collect_counted(just_freed).map(|(_, freed)| freed)
    }

    /// [`Store::collect`], also counting the files and directories deleted. Deletes nothing
    /// while an image record cannot be read: the layers it names may be in use.
    fn collect_counted(&self, just_freed: &BTreeSet<Digest>) -> Result<(usize, u64), StoreError> {
        if !self.unreadable().is_empty() {
            return Ok((0, 0));
        }
        let mut removed = 0usize;
        let images = self.all_images();
        let layers: BTreeSet<Digest> = images.values().flat_map(|r| r.layers.clone()).collect();
        let blobs: BTreeSet<Digest> = images.values().flat_map(ImageData::blobs).collect();
        let mut freed = 0u64;
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
                freed += e.metadata().map(|m| m.len()).unwrap_or(0);
                fs::remove_file(e.path()).map_err(io_err(format!("removing layer {d}")))?;
                removed += 1;
            } else {
                // Out of sight in one step, then deleted at leisure.
                let t = self.tmp_path("dead-layer");
                fs::rename(e.path(), &t).map_err(io_err(format!("removing layer {d}")))?;
                freed += super::usage::disk_usage(&t).bytes;
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
            let meta = e.metadata();
            let aged = meta
                .as_ref()
                .ok()
                .and_then(|m| m.modified().ok())
                .is_some_and(|t| t < old);
            if just_freed.contains(&d) || aged {
                freed += meta.map(|m| m.len()).unwrap_or(0);
                fs::remove_file(e.path()).map_err(io_err(format!("removing blob {d}")))?;
                removed += 1;
            }
        }
        Ok((removed, freed))
    }

    /// Image records (`images/<id>.json`) that cannot be read (truncated, empty, garbage),
    /// with why. They are left alone: never deleted, and while any exists, garbage collection
    /// deletes nothing.
    pub fn unreadable(&self) -> Vec<(String, StoreError)> {
        let mut bad = Vec::new();
        let Ok(rd) = fs::read_dir(self.root.join("images")) else {
            return bad;
        };
        for e in rd.flatten() {
            let n = e.file_name();
            let Some(name) = n.to_str().and_then(|n| n.strip_suffix(".json")) else {
                continue;
            };
            let read = format!("sha256:{name}")
                .parse::<Digest>()
                .map_err(|_| {
                    StoreError::Invalid(format!("{name}.json is not named by an image ID"))
                })
                .and_then(|id| self.read_image(&id));
            if let Err(e) = read {
                bad.push((name.to_string(), e));
            }
        }
        bad.sort_by(|a, b| a.0.cmp(&b.0));
        bad
    }

    /// Every image as [`Store::list`] shows it, and the records that cannot be read (see
    /// [`Store::unreadable`]).
    pub fn list_checked(&self) -> (Vec<ImageRecord>, Vec<(String, StoreError)>) {
        (self.list(), self.unreadable())
    }

    /// After a failure for lack of space, or at start: delete what no image references
    /// (blobs and layers an interrupted import left, resumable downloads in `tmp/`), so that
    /// the space a failed operation took is free again at once. Call with no other operation
    /// in flight. Returns how many files and directories it deleted.
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
        // Every stored blob counts as just freed: those no image references go now, not
        // after the grace period.
        let all: BTreeSet<Digest> = fs::read_dir(self.root.join("blobs/sha256"))
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| {
                        e.file_name()
                            .to_str()
                            .and_then(|n| format!("sha256:{n}").parse::<Digest>().ok())
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(partials + self.collect_counted(&all)?.0)
    }

    /// Give the tag `old` the name `new` (AlreadyExists if taken; nothing changes then). An
    /// image ID or digest is tagged `new`.
    pub fn rename(&self, old: &str, new: &str) -> Result<ImageRecord, StoreError> {
        let newt = TagName::parse(new).map_err(StoreError::Reference)?;
        let _t = self.lock_tags();
        let mut tags = self.read_tags()?;
        let (tag, id) = self.resolve_in(old, &tags)?;
        if tags.tags.contains_key(newt.key()) {
            return Err(StoreError::Exists(newt.display()));
        }
        let entry = match &tag {
            Some(t) => {
                let e = tags.tags[t.key()].clone();
                if e.read_only {
                    return Err(StoreError::ReadOnly(t.display()));
                }
                tags.tags.remove(t.key());
                e
            }
            None => TagEntry {
                id,
                read_only: false,
                tagged: now(),
                kind: None,
            },
        };
        tags.tags.insert(newt.key().to_string(), entry);
        self.write_tags(&tags)?;
        let d = self.read_image(&id)?;
        Ok(self.view(Some(&newt), d, &tags))
    }

    fn add_tag(&self, name: &str, new: &str, copy_flags: bool) -> Result<ImageRecord, StoreError> {
        let newt = TagName::parse(new).map_err(StoreError::Reference)?;
        let _t = self.lock_tags();
        let mut tags = self.read_tags()?;
        let (tag, id) = self.resolve_in(name, &tags)?;
        if tags.tags.contains_key(newt.key()) {
            return Err(StoreError::Exists(newt.display()));
        }
        let from = tag.and_then(|t| tags.tags.get(t.key()).cloned());
        let read_only = copy_flags && from.as_ref().is_some_and(|e| e.read_only);
        tags.tags.insert(
            newt.key().to_string(),
            TagEntry {
                id,
                read_only,
                tagged: now(),
                kind: from.and_then(|e| e.kind),
            },
        );
        self.write_tags(&tags)?;
        let d = self.read_image(&id)?;
        Ok(self.view(Some(&newt), d, &tags))
    }

    /// A second tag for the same image (and the same flags); AlreadyExists if taken.
    pub fn tag(&self, name: &str, new_name: &str) -> Result<ImageRecord, StoreError> {
        self.add_tag(name, new_name, true)
    }

    /// A new, writable tag for the same image (layers are immutable and shared; a container
    /// writes to its own layer, so "a copy" needs nothing else).
    pub fn clone_image(&self, name: &str, new_name: &str) -> Result<ImageRecord, StoreError> {
        self.add_tag(name, new_name, false)
    }

    /// Mark the tag read-only or writable.
    pub fn set_read_only(&self, name: &str, read_only: bool) -> Result<ImageRecord, StoreError> {
        let _t = self.lock_tags();
        let mut tags = self.read_tags()?;
        let (tag, id) = self.resolve_in(name, &tags)?;
        let Some(tag) = tag else {
            return Err(StoreError::Invalid(format!(
                "{name:?} is an image ID; the read-only flag belongs to a tag"
            )));
        };
        tags.tags.get_mut(tag.key()).expect("resolved").read_only = read_only;
        self.write_tags(&tags)?;
        let d = self.read_image(&id)?;
        Ok(self.view(Some(&tag), d, &tags))
    }

    /// The image's layer directories, **bottom first** (the base layer is element 0). An
    /// overlayfs `lowerdir=` lists the topmost layer first: reverse this.
    pub fn layer_paths(&self, rec: &ImageRecord) -> Vec<PathBuf> {
        rec.layers.iter().map(|d| self.layer_dir(d)).collect()
    }

    /// Sizes on disk: images, layers, blobs, and the given container writable layers.
    pub fn disk_usage(&self, uppers: &[PathBuf], in_use: &dyn Fn(&Digest) -> bool) -> DiskUsage {
        let images = self.all_images();
        let tags = self.read_tags().unwrap_or_default();
        let mut du = DiskUsage {
            images: images.len(),
            ..DiskUsage::default()
        };
        let mut layer_bytes: BTreeMap<Digest, u64> = BTreeMap::new();
        if let Ok(rd) = fs::read_dir(self.root.join("layers")) {
            for e in rd.flatten() {
                let n = e.file_name();
                let Some(d) = n
                    .to_str()
                    .filter(|n| !n.ends_with(".json"))
                    .and_then(|h| format!("sha256:{h}").parse::<Digest>().ok())
                else {
                    continue;
                };
                layer_bytes.insert(d, super::usage::disk_usage(&e.path()).bytes);
            }
        }
        du.layers = layer_bytes.len();
        du.layers_bytes = layer_bytes.values().sum();
        if let Ok(rd) = fs::read_dir(self.root.join("blobs/sha256")) {
            for e in rd.flatten() {
                du.blobs += 1;
                du.blobs_bytes += e.metadata().map(|m| m.len()).unwrap_or(0);
            }
        }
        // Reclaimable: what a prune would free, layers counted once however many images.
        let keep: BTreeSet<Digest> = images
            .values()
            .filter(|d| in_use(&d.id) || tags.tags.values().any(|e| e.id == d.id))
            .flat_map(|d| d.layers.clone())
            .collect();
        du.dangling = images
            .keys()
            .filter(|id| !tags.tags.values().any(|e| e.id == **id))
            .count();
        du.reclaimable_bytes = layer_bytes
            .iter()
            .filter(|(d, _)| !keep.contains(d))
            .map(|(_, b)| b)
            .sum();
        du.containers = uppers.len();
        du.containers_bytes = uppers
            .iter()
            .map(|p| super::usage::disk_usage(p).bytes)
            .sum();
        du
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

#[cfg(test)]
mod tag_tests {
    use super::tests::{image_json, layer};
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let tmp = tempfile::tempdir().unwrap();
        let s = Store::open(&tmp.path().join("store")).unwrap();
        (tmp, s)
    }

    /// Store the blobs of an image of `layers` whose config differs by `cmd`; returns the
    /// manifest digest.
    fn blobs_of(s: &Store, layers: &[Vec<u8>], cmd: &str) -> Digest {
        let (m, c, blobs) = image_json(layers);
        let mut cv: serde_json::Value = serde_json::from_slice(&c).unwrap();
        cv["config"]["Cmd"] = serde_json::json!([cmd]);
        let c = serde_json::to_vec(&cv).unwrap();
        let mut mv: serde_json::Value = serde_json::from_slice(&m).unwrap();
        mv["config"]["digest"] = Digest::of(&c).to_string().into();
        mv["config"]["size"] = c.len().into();
        for b in &blobs {
            s.put_blob(b).unwrap();
        }
        s.put_blob(&c).unwrap();
        s.put_blob(&serde_json::to_vec(&mv).unwrap()).unwrap()
    }

    fn names(s: &Store) -> Vec<String> {
        s.list().into_iter().map(|r| r.name).collect()
    }

    #[test]
    fn tags_move_and_old_images_dangle_until_pruned() {
        let (_t, s) = store();
        let base = layer(&[("etc/os-release", b"base")]);
        let v1 = blobs_of(&s, &[base.clone(), layer(&[("v", b"1")])], "one");
        let v2 = blobs_of(&s, &[base.clone(), layer(&[("v", b"2")])], "two");

        let c1 = s
            .create_tagged(
                Some("web"),
                &v1,
                ImageKind::Registry,
                TagMode::Move,
                Some("r/web"),
                &|_| {},
            )
            .unwrap();
        assert!(!c1.unchanged && c1.previous.is_none() && !c1.existed);
        assert_eq!(c1.record.name, "web");
        assert_eq!(c1.record.sources, ["r/web"]);
        let id1 = c1.record.id();
        // `web`, `web:latest`, `docker.io/library/web`, podman's `localhost/web`, the ID and
        // an ID prefix all name it.
        for n in [
            "web",
            "web:latest",
            "docker.io/library/web:latest",
            &id1.to_string(),
            &id1.hex()[..12],
        ] {
            assert_eq!(s.get(n).unwrap().id(), id1, "{n}");
        }
        assert_eq!(
            s.get(&format!("web@{}", c1.record.digest)).unwrap().id(),
            id1
        );
        // Same manifest again: unchanged, nothing new.
        let again = s
            .create_tagged(
                Some("web"),
                &v1,
                ImageKind::Registry,
                TagMode::Move,
                None,
                &|_| {},
            )
            .unwrap();
        assert!(again.unchanged && again.existed && again.previous.is_none());

        // A second tag on v1, then the tag `web` moves to v2.
        s.tag("web", "uxweb:1.0").unwrap();
        let c2 = s
            .create_tagged(
                Some("web"),
                &v2,
                ImageKind::Registry,
                TagMode::Move,
                None,
                &|_| {},
            )
            .unwrap();
        assert_eq!(c2.previous, Some(id1));
        assert!(!c2.unchanged);
        assert_eq!(s.get("web").unwrap().id(), c2.record.id());
        assert_eq!(s.get("uxweb:1.0").unwrap().id(), id1);
        assert_eq!(s.get_id(&id1).unwrap().tags, ["uxweb:1.0"]);
        // New mode refuses a taken tag, and leaves it alone.
        let e = s
            .create_tagged(
                Some("web"),
                &v1,
                ImageKind::Oci,
                TagMode::New,
                None,
                &|_| {},
            )
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::AlreadyExists);
        assert_eq!(s.get("web").unwrap().id(), c2.record.id());

        // Untagging v1's last tag while a container uses it: it stays, dangling.
        let r = s.remove_with("uxweb:1.0", &|d| *d == id1).unwrap();
        assert_eq!(r.untagged, ["uxweb:1.0"]);
        assert_eq!(r.deleted, None);
        let listed = s.list();
        let dangling: Vec<&ImageRecord> = listed.iter().filter(|r| r.dangling()).collect();
        assert_eq!(dangling.len(), 1);
        assert_eq!(dangling[0].name, id1.to_string());
        // Still in use: prune keeps it, and so does removal by ID.
        let p = s.prune(false, &|d| *d == id1).unwrap();
        assert!(p.images.is_empty());
        assert_eq!(
            s.remove_with(&id1.to_string(), &|d| *d == id1)
                .unwrap_err()
                .kind(),
            ErrorKind::Busy
        );
        let unique1 = Digest::of(&layer(&[("v", b"1")]));
        assert!(s.layer_dir(&unique1).exists());
        // No longer in use: prune removes it and its unique layer, keeps the shared base.
        let du = s.disk_usage(&[], &|_| false);
        assert_eq!((du.images, du.dangling, du.layers), (2, 1, 3));
        assert!(du.reclaimable_bytes > 0 && du.reclaimable_bytes < du.layers_bytes);
        let p = s.prune(false, &|_| false).unwrap();
        assert_eq!(p.images, [id1]);
        assert!(p.freed_bytes >= du.reclaimable_bytes, "{p:?} {du:?}");
        assert!(!s.layer_dir(&unique1).exists());
        assert!(s.layer_dir(&Digest::of(&base)).exists());
        assert!(!s.has_blob(&v1));
        assert_eq!(names(&s), ["web"]);
        assert_eq!(s.prune(false, &|_| false).unwrap(), PruneReport::default());
        // prune --all also removes tagged images nothing uses (not read-only ones).
        s.set_read_only("web", true).unwrap();
        assert!(s.prune(true, &|_| false).unwrap().images.is_empty());
        s.set_read_only("web", false).unwrap();
        let p = s.prune(true, &|_| false).unwrap();
        assert_eq!(p.untagged, ["web"]);
        assert!(names(&s).is_empty());
        assert!(
            fs::read_dir(s.root.join("layers"))
                .unwrap()
                .next()
                .is_none()
        );
        assert!(
            fs::read_dir(s.root.join("blobs/sha256"))
                .unwrap()
                .next()
                .is_none()
        );
    }

    #[test]
    fn tag_rename_remove_refusals_change_nothing() {
        let (_t, s) = store();
        let m = blobs_of(&s, &[layer(&[("f", b"f")])], "x");
        let id = s
            .create_image_from_blob("app", &m, ImageKind::Oci, &|_| {})
            .unwrap()
            .id();
        s.tag("app", "registry:5000/team/app:1.2").unwrap();
        s.clone_image("app", "other").unwrap();
        // The same image arriving another way under another name keeps that name's kind.
        let c = s
            .create_tagged(
                Some("dock"),
                &m,
                ImageKind::Docker,
                TagMode::New,
                None,
                &|_| {},
            )
            .unwrap();
        assert!(c.existed);
        assert_eq!(s.get("dock").unwrap().kind, ImageKind::Docker);
        assert_eq!(s.get("app").unwrap().kind, ImageKind::Oci);
        s.remove("dock").unwrap();
        let before = fs::read(s.tags_path()).unwrap();
        let refuse = |e: StoreError, kind| assert_eq!(e.kind(), kind, "{e}");
        refuse(
            s.rename("app", "other").unwrap_err(),
            ErrorKind::AlreadyExists,
        );
        refuse(
            s.rename("app", "Bad Name").unwrap_err(),
            ErrorKind::InvalidInput,
        );
        refuse(s.rename("nope", "x").unwrap_err(), ErrorKind::NotFound);
        refuse(
            s.tag("app", "other:latest").unwrap_err(),
            ErrorKind::AlreadyExists,
        );
        refuse(
            s.tag("app", &format!("x@{id}")).unwrap_err(),
            ErrorKind::InvalidInput,
        );
        refuse(s.remove("nope:1").unwrap_err(), ErrorKind::NotFound);
        refuse(
            s.remove("sha256:0000").unwrap_err(),
            ErrorKind::InvalidInput,
        );
        refuse(s.get("a").unwrap_err(), ErrorKind::NotFound);
        assert_eq!(fs::read(s.tags_path()).unwrap(), before, "nothing changed");
        // A short name matches the end of a repository; matching two is ambiguous.
        s.tag("app", "q.io/x/tool").unwrap();
        assert_eq!(s.get("x/tool").unwrap().name, "q.io/x/tool");
        assert_eq!(s.get("tool").unwrap().name, "q.io/x/tool");
        s.tag("app", "r.io/y/tool").unwrap();
        refuse(s.get("tool").unwrap_err(), ErrorKind::InvalidInput);
        refuse(s.remove("tool").unwrap_err(), ErrorKind::InvalidInput);
        assert_eq!(
            s.get("team/app:1.2").unwrap().name,
            "registry:5000/team/app:1.2"
        );
        assert_eq!(s.get("app:1.2").unwrap().name, "registry:5000/team/app:1.2");

        // A rename keeps the image; the old name is gone.
        s.rename("other", "renamed:2").unwrap();
        assert!(s.get("other").is_err());
        assert_eq!(s.get("renamed:2").unwrap().id(), id);
        // Removing a tag of an image with other tags deletes nothing.
        let r = s.remove("renamed:2").unwrap();
        assert_eq!(r.deleted, None);
        // Removing by ID removes every tag, then the image.
        let r = s.remove(&id.hex()[..12]).unwrap();
        assert_eq!(r.deleted, Some(id));
        assert_eq!(r.untagged.len(), 4, "{r:?}");
        assert!(s.list().is_empty());
    }

    /// A store made before tags: `images/<name>.json` per name, copies of one image under
    /// several names, a name that is no valid reference, and an unreadable record.
    #[test]
    fn old_records_are_migrated_and_nothing_is_lost() {
        let (t, s) = store();
        let m = blobs_of(&s, &[layer(&[("f", b"f")])], "x");
        let rec = s
            .create_image_from_blob("web", &m, ImageKind::Oci, &|_| {})
            .unwrap();
        // Write that image in the old layout, as three names, and drop the new files.
        let old = |name: &str, ro: bool| {
            serde_json::json!({
                "name": name, "kind": "oci", "digest": rec.digest, "config_digest": rec.id(),
                "created": rec.created, "imported": 5, "size": rec.size, "layers": rec.layers,
                "layer_blobs": rec.layer_blobs, "read_only": ro,
                "config": {"entrypoint": [], "cmd": ["x"], "env": [], "working_dir": null,
                           "user": null, "stop_signal": null, "labels": {}},
            })
        };
        let root = s.root.clone();
        drop(s);
        fs::remove_file(root.join("tags.json")).unwrap();
        fs::remove_file(root.join(format!("images/{}.json", rec.id().hex()))).unwrap();
        for (n, ro) in [("web", false), ("Web.Old", true), ("web-copy", false)] {
            fs::write(
                root.join(format!("images/{n}.json")),
                serde_json::to_vec(&old(n, ro)).unwrap(),
            )
            .unwrap();
        }
        fs::write(root.join("images/broken.json"), b"{").unwrap();
        let s = Store::open(&root).unwrap();
        assert_eq!(names(&s), ["Web.Old", "web", "web-copy"]);
        let w = s.get("web").unwrap();
        assert_eq!(
            (w.id(), w.imported, w.config.cmd.clone()),
            (rec.id(), 5, vec!["x".to_string()])
        );
        assert_eq!(w.tags, ["Web.Old", "web", "web-copy"]);
        assert!(s.get("Web.Old").unwrap().read_only);
        assert!(!s.get("web-copy").unwrap().read_only);
        // The unreadable record is left where it was; the migrated ones are gone.
        let left: Vec<String> = fs::read_dir(root.join("images"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| !n.starts_with(&rec.id().hex()))
            .collect();
        assert_eq!(left, ["broken.json"]);
        // Opening again changes nothing.
        let tags = fs::read(root.join("tags.json")).unwrap();
        let s = Store::open(&root).unwrap();
        assert_eq!(fs::read(root.join("tags.json")).unwrap(), tags);
        // The migrated image still runs: its layers are where they were.
        assert!(s.layer_paths(&s.get("web").unwrap())[0].join("f").exists());
        drop(t);
    }

    #[test]
    fn config_keeps_healthcheck_ports_volumes_labels() {
        let (_t, s) = store();
        let (m, c, blobs) = image_json(&[layer(&[("f", b"f")])]);
        let mut cv: serde_json::Value = serde_json::from_slice(&c).unwrap();
        cv["config"]["Healthcheck"] = serde_json::json!({
            "Test": ["CMD-SHELL", "curl -f http://localhost/ || exit 1"],
            "Interval": 30_000_000_000u64, "Timeout": 5_000_000_000u64,
            "StartPeriod": 1_000_000_000u64, "Retries": 3});
        cv["config"]["ExposedPorts"] = serde_json::json!({"8080/tcp": {}, "53/udp": {}});
        cv["config"]["Volumes"] = serde_json::json!({"/data": {}});
        let c = serde_json::to_vec(&cv).unwrap();
        let mut mv: serde_json::Value = serde_json::from_slice(&m).unwrap();
        mv["config"]["digest"] = Digest::of(&c).to_string().into();
        mv["config"]["size"] = c.len().into();
        for b in &blobs {
            s.put_blob(b).unwrap();
        }
        s.put_blob(&c).unwrap();
        let md = s.put_blob(&serde_json::to_vec(&mv).unwrap()).unwrap();
        let r = s
            .create_image_from_blob("hc", &md, ImageKind::Oci, &|_| {})
            .unwrap();
        let h = r.config.healthcheck.unwrap();
        assert_eq!(h.test[0], "CMD-SHELL");
        assert_eq!(
            (h.interval_ns, h.timeout_ns, h.start_period_ns, h.retries),
            (30_000_000_000, 5_000_000_000, 1_000_000_000, 3)
        );
        assert_eq!(r.config.exposed_ports, ["53/udp", "8080/tcp"]);
        assert_eq!(r.config.volumes, ["/data"]);
        assert_eq!(r.config.labels["k"], "v");
        // A config record from before these fields reads with them empty.
        let old: ImageConfig = serde_json::from_str(
            r#"{"entrypoint":[],"cmd":[],"env":[],
            "working_dir":null,"user":null,"stop_signal":null,"labels":{}}"#,
        )
        .unwrap();
        assert_eq!(old, ImageConfig::default());
    }
}
