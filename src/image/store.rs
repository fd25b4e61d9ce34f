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

mod blobs;
mod create;
mod layers;
mod records;
mod remove;
mod tags;

pub use blobs::*;

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
