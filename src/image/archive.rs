//! Imports from local files: a directory tree, a root file system tarball, a `docker save`
//! archive, an OCI image layout directory or an OCI archive. Each gets its blobs into the store
//! (verified) and ends in [`Store::create_image_from_blob`], the one path that extracts
//! layers and writes records.
//!
//! - A directory becomes one uncompressed tar layer (written by [`export_dir`], so symlinks
//!   are stored, not followed), with a synthesized OCI config and manifest.
//! - A rootfs tarball is stored as its own layer blob as it is (gzip, zstd or uncompressed,
//!   recognised by content); xz, which has no OCI layer media type, is stored decompressed.
//! - Archives are read once, front to back, without extracting them by their paths: every
//!   regular file is spooled into `tmp/` and hashed; the JSON then says which spooled files
//!   are which blobs. Digests in hostile JSON go through [`Digest`]'s parser before they are
//!   used to name anything, and each blob's content must hash to the name it is filed under.
//!   Paths in `docker save`'s `manifest.json` must be relative without `..`.
//! - From an index with several manifests the one for this host's platform is chosen, or else
//!   the only one carrying an `org.opencontainers.image.ref.name` annotation.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;
use oci_spec::image::{Descriptor, ImageIndex, ImageManifest};
use serde::Deserialize;
use serde_json::json;

use super::ErrorKind;
use super::compress::{self, Compression};
use super::digest::Digest;
use super::export::{ExportError, export_dir};
use super::extract::{self, ExtractError};
use super::reference::TagName;
use super::store::{
    Created, ImageKind, ImageRecord, ImportProgress, SpooledBlob, Store, StoreError, TagMode,
    parse_digest,
};

mod formats;
mod sources;

use formats::*;
use sources::*;

const MAX_INDEX_DEPTH: usize = 3;
const REF_NAME: &str = "org.opencontainers.image.ref.name";

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("reading the archive: {0}")]
    Archive(#[from] ExtractError),
    #[error("copying the directory: {0}")]
    Export(#[from] ExportError),
    #[error("{0}")]
    Invalid(String),
    #[error("the archive has no image tagged {wanted} (it has: {available})")]
    NotInArchive { wanted: String, available: String },
    #[error(
        "{0} is an OCI/docker image archive, not a root file system tarball; use `berthctl image load -i {0}` (or import-oci)"
    )]
    ImageArchive(String),
    #[error("{path}: {source}")]
    Io { path: String, source: io::Error },
}

impl ImportError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            ImportError::Store(e) => e.kind(),
            ImportError::Archive(e) => e.kind(),
            ImportError::Export(e) => e.kind(),
            ImportError::Invalid(_) | ImportError::ImageArchive(_) => ErrorKind::InvalidInput,
            ImportError::NotInArchive { .. } => ErrorKind::NotFound,
            ImportError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound => {
                ErrorKind::NotFound
            }
            ImportError::Io { .. } => ErrorKind::Failed,
        }
    }
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> ImportError {
    let path = path.display().to_string();
    move |source| ImportError::Io { path, source }
}

fn invalid(msg: impl Into<String>) -> ImportError {
    ImportError::Invalid(msg.into())
}

/// OCI's name for this host's architecture.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "arm" => "arm",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        other => other,
    }
}

fn layer_media_type(c: Compression) -> &'static str {
    match c {
        Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
        Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        Compression::None | Compression::Xz => "application/vnd.oci.image.layer.v1.tar",
    }
}

fn sniff(path: &Path) -> Result<Compression, ImportError> {
    let mut head = [0u8; 6];
    let mut f = File::open(path).map_err(io_at(path))?;
    let mut got = 0;
    while got < head.len() {
        let n = f.read(&mut head[got..]).map_err(io_at(path))?;
        if n == 0 {
            break;
        }
        got += n;
    }
    Ok(Compression::detect(&head[..got]))
}

/// Fail early, before any copying, if the name is invalid or taken (the record write checks
/// again, atomically).
fn check_free(store: &Store, name: &str) -> Result<(), ImportError> {
    store.check_new_name(name)?;
    Ok(())
}

/// Synthesize config and manifest for single-layer imports and create the image.
fn single_layer_image(
    store: &Store,
    name: &str,
    blob: Digest,
    blob_size: u64,
    compression: Compression,
    kind: ImageKind,
    progress: &(dyn Fn(ImportProgress) + Sync),
) -> Result<ImageRecord, ImportError> {
    let (diff_id, _, _) = store.ensure_layer(&blob, None)?;
    let config = json!({
        "architecture": host_arch(),
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [diff_id.to_string()]},
    });
    let config = serde_json::to_vec(&config).expect("serializing a config");
    let config_digest = store.put_blob(&config)?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest.to_string(),
            "size": config.len(),
        },
        "layers": [{
            "mediaType": layer_media_type(compression),
            "digest": blob.to_string(),
            "size": blob_size,
        }],
    });
    let manifest = serde_json::to_vec(&manifest).expect("serializing a manifest");
    let md = store.put_blob(&manifest)?;
    let c = store.create_tagged(Some(name), &md, kind, TagMode::New, None, progress)?;
    Ok(c.record)
}

/// Import the tree below `dir` as a one-layer image.
pub fn import_fs(store: &Store, dir: &Path, name: &str) -> Result<ImageRecord, ImportError> {
    import_fs_with(store, dir, name, &|_| {})
}

/// A writer that counts what passes through it.
struct CountingWriter<W> {
    inner: W,
    count: Arc<AtomicU64>,
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// [`import_fs`] with progress: bytes of the tree read (the total is its apparent size,
/// measured first), then the layer.
pub fn import_fs_with(
    store: &Store,
    dir: &Path,
    name: &str,
    progress: &(dyn Fn(ImportProgress) + Sync),
) -> Result<ImageRecord, ImportError> {
    check_free(store, name)?;
    let total = super::usage::disk_usage(dir).apparent;
    let w = store.blob_writer()?;
    let w = with_byte_progress(total, progress, |count| {
        export_dir(dir, CountingWriter { inner: w, count }).map(|c| c.inner)
    })?;
    let (blob, len) = w.finish()?;
    let digest = blob.digest;
    store.adopt_blob(blob)?;
    single_layer_image(
        store,
        name,
        digest,
        len,
        Compression::None,
        ImageKind::Directory,
        progress,
    )
}

/// Import a root file system tarball (any supported compression) as a one-layer image.
pub fn import_tar(store: &Store, file: &Path, name: &str) -> Result<ImageRecord, ImportError> {
    import_tar_with(store, file, name, &|_| {})
}

/// [`import_tar`] with progress: bytes of the file read, then the layer. An OCI or docker
/// image archive is refused with a hint to use `load`.
pub fn import_tar_with(
    store: &Store,
    file: &Path,
    name: &str,
    progress: &(dyn Fn(ImportProgress) + Sync),
) -> Result<ImageRecord, ImportError> {
    check_free(store, name)?;
    if looks_like_image_archive(file)? {
        return Err(ImportError::ImageArchive(file.display().to_string()));
    }
    let c = sniff(file)?;
    let f = File::open(file).map_err(io_at(file))?;
    let total = f.metadata().map(|m| m.len()).unwrap_or(0);
    let (digest, len) = with_byte_progress(total, progress, |count| {
        let f = Counting { inner: f, count };
        if c == Compression::Xz {
            let r = compress::decompress(f).map_err(|e| io_at(file)(io::Error::other(e)))?;
            Ok::<_, ImportError>(store.ingest_blob(r, None)?)
        } else {
            Ok(store.ingest_blob(f, None)?)
        }
    })?;
    single_layer_image(store, name, digest, len, c, ImageKind::Tar, progress)
}

/// What kind of source `path` is: a layout directory, or an archive read into a spool.
enum Source {
    Layout(LayoutDir),
    Oci(Spool, ImageKind),
    Docker(Spool),
}

impl Source {
    fn open(
        store: &Store,
        path: &Path,
        progress: &(dyn Fn(ImportProgress) + Sync),
    ) -> Result<Source, ImportError> {
        let meta = fs::metadata(path).map_err(io_at(path))?;
        if meta.is_dir() {
            let root = nix::fcntl::open(
                path,
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| io_at(path)(e.into()))?;
            let mut dir = LayoutDir {
                root,
                path: path.to_path_buf(),
            };
            if dir.read_named("oci-layout")?.is_none() {
                return Err(invalid(format!(
                    "{} is not an OCI image layout (no oci-layout file)",
                    path.display()
                )));
            }
            return Ok(Source::Layout(dir));
        }
        let spool = with_byte_progress(meta.len(), progress, |count| {
            Spool::read(store, path, count)
        })?;
        let has = |p: &str| spool.lookup(p.as_bytes()).is_some();
        let is_oci = has("oci-layout") && has("index.json");
        let is_docker = has("manifest.json");
        if is_oci {
            let kind = if is_docker {
                ImageKind::Docker
            } else {
                ImageKind::Oci
            };
            Ok(Source::Oci(spool, kind))
        } else if is_docker {
            Ok(Source::Docker(spool))
        } else {
            spool.discard(store);
            Err(invalid(format!(
                "{} is neither a docker-save nor an OCI archive",
                path.display()
            )))
        }
    }

    fn discard(&self, store: &Store) {
        match self {
            Source::Layout(_) => {}
            Source::Oci(s, _) | Source::Docker(s) => s.discard(store),
        }
    }
}

/// Import a `docker save` archive, an OCI archive (either possibly compressed) or an OCI
/// image layout directory, recognised by content, as the new image `name`.
pub fn import_oci(store: &Store, path: &Path, name: &str) -> Result<ImageRecord, ImportError> {
    import_oci_with(store, path, name, &|_| {})
}

/// [`import_oci`] with progress: bytes of the archive read, then layers extracted.
pub fn import_oci_with(
    store: &Store,
    path: &Path,
    name: &str,
    progress: &(dyn Fn(ImportProgress) + Sync),
) -> Result<ImageRecord, ImportError> {
    check_free(store, name)?;
    let mut src = Source::open(store, path, progress)?;
    let r = match &mut src {
        Source::Layout(dir) => import_layout(store, dir, name, ImageKind::Oci, progress),
        Source::Oci(spool, kind) => {
            let kind = *kind;
            import_layout(store, spool, name, kind, progress)
        }
        Source::Docker(spool) => import_docker(store, spool, name, progress),
    };
    src.discard(store);
    r
}

/// One image [`load`] stored.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The image, named by its first tag (or its ID when the archive gave it none).
    pub record: ImageRecord,
    /// The tags the archive gave it (familiar form), now pointing at it.
    pub tags: Vec<String>,
    /// Every tag already pointed at this image.
    pub unchanged: bool,
}

/// `load -i FILE [--name REF]`: every image of a docker or OCI archive (or layout directory),
/// tagged as the archive says; tags that exist are moved (the images they named stay, dangling
/// unless named otherwise). With `name`, only the image the archive tags `name` is loaded, or,
/// when the archive holds one image without a tag, that image tagged `name`. A tag that is
/// not a valid reference is refused before anything is stored.
pub fn load(
    store: &Store,
    path: &Path,
    name: Option<&str>,
    progress: &(dyn Fn(ImportProgress) + Sync),
) -> Result<Vec<Loaded>, ImportError> {
    let wanted = name
        .map(|n| TagName::parse(n).map_err(StoreError::Reference))
        .transpose()?;
    let mut src = Source::open(store, path, progress)?;
    let r = load_from(store, &mut src, wanted.as_ref(), progress);
    src.discard(store);
    r
}

/// Pick the images of an archive to load: (tags, item) pairs.
fn pick<T>(
    items: Vec<(Vec<String>, T)>,
    wanted: Option<&TagName>,
) -> Result<Vec<(Vec<TagName>, T)>, ImportError> {
    let mut out = Vec::new();
    let count = items.len();
    for (names, item) in items {
        let tags = names
            .iter()
            .map(|n| {
                TagName::parse(n)
                    .map_err(|e| invalid(format!("the archive names an image {n:?}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        out.push((tags, item));
    }
    let Some(w) = wanted else {
        return Ok(out);
    };
    if count == 1 && out[0].0.is_empty() {
        out[0].0.push(w.clone());
        return Ok(out);
    }
    let all: Vec<String> = out
        .iter()
        .flat_map(|(t, _)| t.iter().map(|t| t.display()))
        .collect();
    let chosen: Vec<(Vec<TagName>, T)> = out
        .into_iter()
        .filter(|(t, _)| t.contains(w))
        .map(|(_, item)| (vec![w.clone()], item))
        .collect();
    if chosen.is_empty() {
        return Err(ImportError::NotInArchive {
            wanted: w.display(),
            available: if all.is_empty() {
                "no tagged images".into()
            } else {
                all.join(", ")
            },
        });
    }
    Ok(chosen)
}

fn load_from(
    store: &Store,
    src: &mut Source,
    wanted: Option<&TagName>,
    progress: &(dyn Fn(ImportProgress) + Sync),
) -> Result<Vec<Loaded>, ImportError> {
    // Each image: manifest digest (or descriptor) plus tags; then tagged one by one.
    let mut out = Vec::new();
    let mut finish = |store: &Store, tags: &[TagName], first: Created| -> Result<(), ImportError> {
        let mut unchanged = first.unchanged;
        let id = first.record.id();
        for t in tags.iter().skip(1) {
            let c = store.create_tagged(
                Some(t.key()),
                &first.record.digest,
                first.record.kind,
                TagMode::Move,
                None,
                &|_| {},
            )?;
            unchanged &= c.unchanged;
        }
        let record = match tags.first() {
            Some(t) => store.get(t.key())?,
            None => store.get_id(&id)?,
        };
        out.push(Loaded {
            record,
            tags: tags.iter().map(TagName::display).collect(),
            unchanged,
        });
        Ok(())
    };
    match src {
        Source::Docker(spool) => {
            let list = docker_list(spool)?;
            let items = list
                .into_iter()
                .map(|m| (m.repo_tags.clone().unwrap_or_default(), m))
                .collect();
            for (tags, m) in pick(items, wanted)? {
                let md = docker_entry(store, spool, &m)?;
                let first = store.create_tagged(
                    tags.first().map(TagName::key),
                    &md,
                    ImageKind::Docker,
                    TagMode::Move,
                    None,
                    progress,
                )?;
                finish(store, &tags, first)?;
            }
        }
        Source::Layout(_) | Source::Oci(..) => {
            let (blobs, kind): (&mut dyn BlobSource, ImageKind) = match src {
                Source::Layout(d) => (d, ImageKind::Oci),
                Source::Oci(s, k) => {
                    let k = *k;
                    (s, k)
                }
                Source::Docker(_) => unreachable!("matched above"),
            };
            let index = read_index(blobs)?;
            let entries: Vec<IndexEntry> = index
                .manifests()
                .iter()
                .map(|d| IndexEntry {
                    desc: d.clone(),
                    name: entry_name(d),
                })
                .collect();
            // Several entries, none named: one multi-platform image stored flat.
            let items: Vec<(Vec<String>, Descriptor)> =
                if entries.len() > 1 && entries.iter().all(|e| e.name.is_none()) {
                    vec![(Vec::new(), choose(&index)?.clone())]
                } else {
                    // Entries naming the same image (several tags) load it once.
                    let mut merged: Vec<(Vec<String>, Descriptor)> = Vec::new();
                    for e in entries {
                        match merged
                            .iter_mut()
                            .find(|(_, d)| d.digest() == e.desc.digest())
                        {
                            Some((names, _)) => names.extend(e.name),
                            None => merged.push((e.name.into_iter().collect(), e.desc)),
                        }
                    }
                    merged
                };
            for (tags, desc) in pick(items, wanted)? {
                let first = import_layout_entry(
                    store,
                    blobs,
                    &desc,
                    tags.first().map(TagName::key),
                    TagMode::Move,
                    kind,
                    progress,
                )?;
                finish(store, &tags, first)?;
            }
        }
    }
    Ok(out)
}

/// Whether `file` is a docker or OCI archive rather than a root file system tarball, judged
/// by its first entries (what `docker save`, podman and skopeo write first: `blobs/`,
/// `oci-layout`, `index.json`, `manifest.json`, `repositories`, or `<64 hex>.tar|.json|/`).
fn looks_like_image_archive(file: &Path) -> Result<bool, ImportError> {
    let f = File::open(file).map_err(io_at(file))?;
    let r = compress::decompress(f).map_err(|e| io_at(file)(io::Error::other(e)))?;
    let mut a = tar::Archive::new(r);
    let Ok(entries) = a.entries() else {
        return Ok(false);
    };
    // Only headers are read: the first entry that is not the root directory decides, so
    // no file data (which may be huge) is decompressed.
    for e in entries.take(4) {
        let Ok(e) = e else { return Ok(false) };
        let p = e.path_bytes();
        let p = p.strip_prefix(b"./").unwrap_or(&p);
        let first = p.split(|&b| b == b'/').next().unwrap_or(b"");
        if first.is_empty() || first == b"." {
            continue;
        }
        let is_hex_name = |s: &[u8]| {
            let stem = s
                .strip_suffix(b".tar")
                .or_else(|| s.strip_suffix(b".json"))
                .unwrap_or(s);
            stem.len() == 64 && stem.iter().all(|b| b.is_ascii_hexdigit())
        };
        return Ok(matches!(
            first,
            b"blobs" | b"oci-layout" | b"index.json" | b"manifest.json" | b"repositories"
        ) || is_hex_name(first));
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::export::export_image;
    use crate::image::store::tests::{assert_clean, gzip, image_json, layer};
    use crate::image::testtar::RawTar;
    use std::collections::BTreeMap;
    use std::io::Cursor;
    use std::os::unix::fs::symlink;

    fn store() -> (tempfile::TempDir, Store) {
        let tmp = tempfile::tempdir().unwrap();
        let s = Store::open(&tmp.path().join("store")).unwrap();
        (tmp, s)
    }

    /// Path → (kind, content or link target) of a tar stream.
    fn listing(tar: &[u8]) -> BTreeMap<String, (char, Vec<u8>)> {
        let mut a = tar::Archive::new(Cursor::new(tar));
        let mut out = BTreeMap::new();
        for e in a.entries().unwrap() {
            let mut e = e.unwrap();
            let p = String::from_utf8(e.path_bytes().into_owned()).unwrap();
            let k = e.header().entry_type().as_byte() as char;
            let mut v = Vec::new();
            if let Some(l) = e.link_name_bytes() {
                v = l.into_owned();
            } else {
                e.read_to_end(&mut v).unwrap();
            }
            out.insert(p, (k, v));
        }
        out
    }

    fn export(s: &Store, name: &str) -> BTreeMap<String, (char, Vec<u8>)> {
        listing(&export_image(s, name, Vec::new()).unwrap())
    }

    /// Three layers: a base, one with a whiteout and an opaque directory, one on top.
    fn three_layers() -> Vec<Vec<u8>> {
        let mut l1 = RawTar::new();
        l1.dir("etc")
            .file("etc/passwd", b"root")
            .file("etc/gone", b"x");
        l1.dir("opt").file("opt/old1", b"1").file("opt/old2", b"2");
        l1.file("bin/sh", b"sh").symlink("bin/ash", "sh");
        let mut l2 = RawTar::new();
        l2.file("etc/.wh.gone", b"")
            .file("opt/.wh..wh..opq", b"")
            .file("opt/new", b"n");
        let mut l3 = RawTar::new();
        l3.file("etc/passwd", b"root\nuser")
            .file("etc/gone", b"back");
        vec![l1.finish(), l2.finish(), l3.finish()]
    }

    fn check_merged(m: &BTreeMap<String, (char, Vec<u8>)>) {
        assert_eq!(m["etc/passwd"].1, b"root\nuser");
        assert_eq!(m["etc/gone"].1, b"back");
        assert_eq!(m["opt/new"].1, b"n");
        assert!(!m.contains_key("opt/old1") && !m.contains_key("opt/old2"));
        assert_eq!(m["bin/ash"], ('2', b"sh".to_vec()));
        assert!(!m.keys().any(|k| k.contains(".wh.")));
    }

    /// An OCI layout as path → content, with an index naming one manifest per platform given.
    fn oci_files(layers: &[Vec<u8>], platforms: &[&str]) -> BTreeMap<String, Vec<u8>> {
        let (m, c, blobs) = image_json(layers);
        let mut f = BTreeMap::new();
        for b in blobs.iter().chain([&m, &c]) {
            f.insert(format!("blobs/sha256/{}", Digest::of(b).hex()), b.clone());
        }
        let manifests: Vec<_> = platforms
            .iter()
            .map(|arch| {
                json!({"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": Digest::of(&m).to_string(), "size": m.len(),
                       "platform": {"os": "linux", "architecture": arch}})
            })
            .collect();
        f.insert(
            "oci-layout".into(),
            br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
        );
        f.insert(
            "index.json".into(),
            serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": manifests})).unwrap(),
        );
        f
    }

    fn pack(files: &BTreeMap<String, Vec<u8>>) -> Vec<u8> {
        let mut t = RawTar::new();
        for (p, d) in files {
            t.file(p, d);
        }
        t.finish()
    }

    fn write_file(dir: &Path, data: &[u8]) -> PathBuf {
        let p = dir.join("archive");
        fs::write(&p, data).unwrap();
        p
    }

    #[test]
    fn oci_archive_and_layout_dir_import_and_export_merged() {
        let (t, s) = store();
        let files = oci_files(&three_layers(), &["arm64", host_arch()]);
        let p = write_file(t.path(), &gzip(&pack(&files)));
        let r = import_oci(&s, &p, "oci-a").unwrap();
        assert_eq!(r.kind, ImageKind::Oci);
        assert_eq!(r.layers.len(), 3);
        check_merged(&export(&s, "oci-a"));

        let dir = t.path().join("layout");
        for (p, d) in &files {
            let fp = dir.join(p);
            fs::create_dir_all(fp.parent().unwrap()).unwrap();
            fs::write(fp, d).unwrap();
        }
        let r2 = import_oci(&s, &dir, "oci-b").unwrap();
        assert_eq!(r2.digest, r.digest, "same manifest bytes, same digest");
        check_merged(&export(&s, "oci-b"));
        assert_clean(&s, 2);
    }

    #[test]
    fn docker_save_archive() {
        let (t, s) = store();
        let layers = three_layers();
        let (_, c, _) = image_json(&layers);
        let mut files = BTreeMap::new();
        files.insert("cfg.json".to_string(), c);
        let mut paths = Vec::new();
        for (i, l) in layers.iter().enumerate() {
            files.insert(format!("l{i}/layer.tar"), l.clone());
            paths.push(format!("l{i}/layer.tar"));
        }
        files.insert("repositories".into(), b"{}".to_vec());
        // Old docker links duplicate layers; point the last one through a symlink.
        files.remove("l2/layer.tar");
        files.insert("blob3".into(), layers[2].clone());
        let manifest = json!([{"Config": "cfg.json", "RepoTags": ["x:latest"], "Layers": paths}]);
        files.insert(
            "manifest.json".into(),
            serde_json::to_vec(&manifest).unwrap(),
        );
        let mut tar = RawTar::new();
        for (p, d) in &files {
            tar.file(p, d);
        }
        tar.symlink("l2/layer.tar", "../blob3");
        let p = write_file(t.path(), &tar.finish());
        let r = import_oci(&s, &p, "dock").unwrap();
        assert_eq!(r.kind, ImageKind::Docker);
        check_merged(&export(&s, "dock"));

        // A manifest.json path that climbs out is refused.
        let bad = json!([{"Config": "../cfg.json", "Layers": []}]);
        let mut tar = RawTar::new();
        tar.file("manifest.json", &serde_json::to_vec(&bad).unwrap());
        let p = write_file(t.path(), &tar.finish());
        assert_eq!(
            import_oci(&s, &p, "bad").unwrap_err().kind(),
            ErrorKind::InvalidInput
        );
        assert_clean(&s, 1);
    }

    #[test]
    fn hostile_oci_archives_are_refused() {
        let (t, s) = store();
        let good = oci_files(&three_layers(), &[host_arch()]);
        type Change = Box<dyn Fn(&mut BTreeMap<String, Vec<u8>>)>;
        let cases: Vec<(&str, Change)> = vec![
            (
                "traversal digest in index",
                Box::new(|f| {
                    f.insert(
                        "index.json".into(),
                        serde_json::to_vec(&json!({"schemaVersion": 2,
                    "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": "sha256:../../../etc/passwd", "size": 1}]}))
                        .unwrap(),
                    );
                }),
            ),
            (
                "short digest",
                Box::new(|f| {
                    f.insert(
                        "index.json".into(),
                        serde_json::to_vec(&json!({"schemaVersion": 2,
                    "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": "sha256:abc", "size": 1}]}))
                        .unwrap(),
                    );
                }),
            ),
            (
                "blob content does not match its name",
                Box::new(|f| {
                    let k = f.keys().find(|k| k.starts_with("blobs/")).unwrap().clone();
                    f.insert(k, b"tampered".to_vec());
                }),
            ),
            (
                "missing blob",
                Box::new(|f| {
                    let k = f.keys().find(|k| k.starts_with("blobs/")).unwrap().clone();
                    f.remove(&k);
                }),
            ),
            (
                "no platform match",
                Box::new(|f| {
                    let idx: serde_json::Value = serde_json::from_slice(&f["index.json"]).unwrap();
                    let mut m = idx["manifests"][0].clone();
                    m["platform"]["architecture"] = "s390x".into();
                    let mut m2 = m.clone();
                    m2["platform"]["architecture"] = "riscv64".into();
                    f.insert(
                        "index.json".into(),
                        serde_json::to_vec(&json!({"schemaVersion": 2,
                    "manifests": [m, m2]}))
                        .unwrap(),
                    );
                }),
            ),
        ];
        for (what, change) in cases {
            let mut f = good.clone();
            change(&mut f);
            let p = write_file(t.path(), &pack(&f));
            let e = import_oci(&s, &p, "evil").unwrap_err();
            assert!(
                matches!(e.kind(), ErrorKind::InvalidInput | ErrorKind::NotFound),
                "{what}: {e}"
            );
            assert_clean(&s, 0);
        }
        // Truncated archive.
        let full = pack(&good);
        let p = write_file(t.path(), &full[..full.len() - 1536]);
        assert_eq!(
            import_oci(&s, &p, "evil").unwrap_err().kind(),
            ErrorKind::InvalidInput
        );
        // Unknown layer media type.
        let mut f = good.clone();
        let (m, _, _) = image_json(&three_layers());
        let mut mv: serde_json::Value = serde_json::from_slice(&m).unwrap();
        mv["layers"][0]["mediaType"] = "application/vnd.example.weird".into();
        let m2 = serde_json::to_vec(&mv).unwrap();
        f.insert(
            format!("blobs/sha256/{}", Digest::of(&m2).hex()),
            m2.clone(),
        );
        f.insert(
            "index.json".into(),
            serde_json::to_vec(&json!({"schemaVersion": 2,
            "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": Digest::of(&m2).to_string(), "size": m2.len()}]}))
            .unwrap(),
        );
        let p = write_file(t.path(), &pack(&f));
        assert_eq!(
            import_oci(&s, &p, "evil").unwrap_err().kind(),
            ErrorKind::InvalidInput
        );
        assert_clean(&s, 0);
    }

    #[test]
    fn layout_dir_symlinks_stay_inside() {
        let (t, s) = store();
        let files = oci_files(&[layer(&[("f", b"f")])], &[host_arch()]);
        let dir = t.path().join("layout");
        for (p, d) in &files {
            let fp = dir.join(p);
            fs::create_dir_all(fp.parent().unwrap()).unwrap();
            fs::write(fp, d).unwrap();
        }
        // index.json replaced by a link to a file outside the layout.
        let outside = t.path().join("outside.json");
        fs::write(&outside, fs::read(dir.join("index.json")).unwrap()).unwrap();
        fs::remove_file(dir.join("index.json")).unwrap();
        symlink(&outside, dir.join("index.json")).unwrap();
        let e = import_oci(&s, &dir, "x").unwrap_err();
        assert!(e.to_string().contains("index.json"), "{e}");
        assert_clean(&s, 0);
    }

    #[test]
    fn directories_and_tarballs() {
        let (t, s) = store();
        let src = t.path().join("src");
        fs::create_dir_all(src.join("etc")).unwrap();
        fs::write(src.join("etc/hostname"), b"box").unwrap();
        symlink("/etc/shadow", src.join("shadow-link")).unwrap();
        fs::hard_link(src.join("etc/hostname"), src.join("hn")).unwrap();
        let r = import_fs(&s, &src, "from-dir").unwrap();
        assert_eq!(r.kind, ImageKind::Directory);
        let m = export(&s, "from-dir");
        assert_eq!(m["etc/hostname"].1, b"box");
        assert_eq!(m["shadow-link"], ('2', b"/etc/shadow".to_vec()));
        assert_eq!(m["hn"], ('1', b"etc/hostname".to_vec()));
        assert!(matches!(
            import_fs(&s, &src, "from-dir").unwrap_err().kind(),
            ErrorKind::AlreadyExists
        ));

        let tarball = layer(&[("usr/bin/tool", b"tool")]);
        for (name, data) in [
            ("plain", tarball.clone()),
            ("gz", gzip(&tarball)),
            ("zst", zstd::encode_all(&tarball[..], 3).unwrap()),
            ("xz", {
                let mut e = liblzma::write::XzEncoder::new(Vec::new(), 1);
                std::io::Write::write_all(&mut e, &tarball).unwrap();
                e.finish().unwrap()
            }),
        ] {
            let p = write_file(t.path(), &data);
            let r = import_tar(&s, &p, name).unwrap();
            assert_eq!(r.kind, ImageKind::Tar);
            assert_eq!(r.layers, vec![Digest::of(&tarball)]);
            assert_eq!(export(&s, name)["usr/bin/tool"].1, b"tool");
        }
        let p = write_file(t.path(), b"not a tarball at all");
        assert_eq!(
            import_tar(&s, &p, "junk").unwrap_err().kind(),
            ErrorKind::InvalidInput
        );
        assert_clean(&s, 5);
    }
}
