//! `save`: images from the store as one archive that `podman load`, `docker load` and
//! [`super::archive::load`] read: an OCI archive (an OCI image layout in a tar) or a docker
//! archive (`docker save`'s format). Several images go into one archive; a blob they share is
//! written once.
//!
//! The archive is streamed, front to back, to any writer (a file or a pipe): the blobs are
//! copied as stored, compressed layers included, never recompressed, so the bytes and digests
//! in the archive are those of the pull or import. Headers are deterministic (mode 0644,
//! owner 0:0, mtime 0, entries in a fixed order), so saving the same images twice gives the
//! same bytes. The store keeps every blob an image record names, so nothing is regenerated;
//! a blob lost from the store (disk trouble) fails the save naming it.
//!
//! - OCI archive: `oci-layout`, `blobs/sha256/<hex>` (layers, configs, manifests), then
//!   `index.json` with one entry per tag, annotated `org.opencontainers.image.ref.name`
//!   (`repo:tag`, familiar form, as skopeo and podman read it) and
//!   `io.containerd.image.name` (the full name, as containerd reads it).
//! - docker archive: `<hex>.tar` per layer blob (as stored: `docker load` and podman detect
//!   compressed layers by content), `<hex>.json` per config, then `manifest.json` with
//!   `RepoTags` and `repositories`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{self, Write};

use oci_spec::image::ImageManifest;
use serde_json::json;

use super::ErrorKind;
use super::digest::Digest;
use super::reference::TagName;
use super::store::{ImageRecord, Store, StoreError};

/// The archive formats `save` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaveFormat {
    OciArchive,
    DockerArchive,
}

impl std::str::FromStr for SaveFormat {
    type Err = SaveError;

    fn from_str(s: &str) -> Result<SaveFormat, SaveError> {
        match s {
            "oci-archive" | "oci" => Ok(SaveFormat::OciArchive),
            "docker-archive" | "docker" => Ok(SaveFormat::DockerArchive),
            other => Err(SaveError::Format(other.to_string())),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SaveError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("unknown archive format {0:?} (oci-archive or docker-archive)")]
    Format(String),
    #[error("no image to save")]
    Empty,
    #[error(
        "image {0} has no layer blobs recorded (imported before they were kept); pull or import it again to save it"
    )]
    NoBlobs(String),
    #[error("writing the archive: {0}")]
    Write(io::Error),
}

impl SaveError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            SaveError::Store(e) => e.kind(),
            SaveError::Format(_) | SaveError::Empty | SaveError::NoBlobs(_) => {
                ErrorKind::InvalidInput
            }
            SaveError::Write(_) => ErrorKind::Failed,
        }
    }
}

/// One image to save and the tags it is saved under.
struct Item {
    record: ImageRecord,
    manifest: ImageManifest,
    manifest_bytes: Vec<u8>,
    tags: Vec<TagName>,
}

/// A writer that counts bytes and reports them.
struct Counter<'a, W> {
    inner: W,
    done: u64,
    total: u64,
    last: u64,
    progress: &'a dyn Fn(u64, u64),
}

impl<W: Write> Write for Counter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.done += n as u64;
        if self.done - self.last >= 1 << 20 {
            self.last = self.done;
            (self.progress)(self.done, self.total);
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn header(size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_size(size);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    h
}

/// Resolve the names to images (an image named twice is saved once, with both tags).
fn items(store: &Store, names: &[String]) -> Result<Vec<Item>, SaveError> {
    let mut out: Vec<Item> = Vec::new();
    for n in names {
        let (tag, id) = store.resolve(n)?;
        if let Some(it) = out.iter_mut().find(|i| i.record.id() == id) {
            it.tags
                .extend(tag.filter(|t| !it.tags.contains(t) && !t.is_legacy()));
            continue;
        }
        let record = store.get(n)?;
        if record.layer_blobs.len() != record.layers.len() {
            return Err(SaveError::NoBlobs(record.name));
        }
        let manifest_bytes = store.read_blob(&record.digest)?;
        let manifest: ImageManifest = serde_json::from_slice(&manifest_bytes)
            .map_err(|e| StoreError::Invalid(format!("manifest {}: {e}", record.digest)))?;
        out.push(Item {
            record,
            manifest,
            manifest_bytes,
            // A legacy name (not a reference) cannot be a tag in an archive.
            tags: tag.into_iter().filter(|t| !t.is_legacy()).collect(),
        });
    }
    if out.is_empty() {
        return Err(SaveError::Empty);
    }
    Ok(out)
}

/// `repo:tag` in the familiar form, always with the tag (what `docker save` writes).
fn repo_tag(t: &TagName) -> String {
    let shown = t.display();
    if shown
        .rsplit_once(':')
        .is_some_and(|(_, tag)| !tag.contains('/'))
    {
        shown
    } else {
        format!("{shown}:latest")
    }
}

fn blob_len(store: &Store, d: &Digest) -> Result<u64, SaveError> {
    match std::fs::metadata(store.blob_path(d)) {
        Ok(m) => Ok(m.len()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(StoreError::MissingBlob(*d).into()),
        Err(e) => Err(SaveError::Store(StoreError::Io {
            context: format!("reading blob {d}"),
            source: e,
        })),
    }
}

/// Write images `names` (tags, IDs, digests) as one archive to `out`; returns `out`.
/// `progress(done, total)` gets the bytes written about every MiB.
pub fn save<W: Write>(
    store: &Store,
    names: &[String],
    format: SaveFormat,
    out: W,
    progress: &dyn Fn(u64, u64),
) -> Result<W, SaveError> {
    let items = items(store, names)?;
    // Blobs in write order, each once: layers bottom up, then configs (and OCI manifests).
    let mut blobs: Vec<(Digest, String)> = Vec::new();
    let mut seen = BTreeSet::new();
    let mut push = |d: Digest, path: String| {
        if seen.insert(d) {
            blobs.push((d, path));
        }
    };
    for it in &items {
        for l in &it.record.layer_blobs {
            push(
                *l,
                match format {
                    SaveFormat::OciArchive => format!("blobs/sha256/{}", l.hex()),
                    SaveFormat::DockerArchive => format!("{}.tar", l.hex()),
                },
            );
        }
        let c = it.record.id();
        push(
            c,
            match format {
                SaveFormat::OciArchive => format!("blobs/sha256/{}", c.hex()),
                SaveFormat::DockerArchive => format!("{}.json", c.hex()),
            },
        );
    }
    let mut sizes = BTreeMap::new();
    for (d, _) in &blobs {
        sizes.insert(*d, blob_len(store, d)?);
    }
    let mut total: u64 = sizes.values().map(|s| s + 1024).sum();
    let metadata: Vec<(String, Vec<u8>)> = match format {
        SaveFormat::OciArchive => oci_metadata(&items),
        SaveFormat::DockerArchive => docker_metadata(&items),
    };
    total += metadata
        .iter()
        .map(|(_, d)| d.len() as u64 + 1024)
        .sum::<u64>();
    let mut w = Counter {
        inner: out,
        done: 0,
        total,
        last: 0,
        progress,
    };
    progress(0, total);
    {
        let mut b = tar::Builder::new(&mut w);
        b.mode(tar::HeaderMode::Deterministic);
        if format == SaveFormat::OciArchive {
            let layout = br#"{"imageLayoutVersion":"1.0.0"}"#;
            b.append_data(&mut header(layout.len() as u64), "oci-layout", &layout[..])
                .map_err(SaveError::Write)?;
        }
        for (d, path) in &blobs {
            let f = File::open(store.blob_path(d)).map_err(|e| {
                if e.kind() == io::ErrorKind::NotFound {
                    SaveError::Store(StoreError::MissingBlob(*d))
                } else {
                    SaveError::Store(StoreError::Io {
                        context: format!("reading blob {d}"),
                        source: e,
                    })
                }
            })?;
            b.append_data(&mut header(sizes[d]), path, f)
                .map_err(SaveError::Write)?;
        }
        for (path, data) in &metadata {
            b.append_data(&mut header(data.len() as u64), path, &data[..])
                .map_err(SaveError::Write)?;
        }
        b.finish().map_err(SaveError::Write)?;
    }
    w.flush().map_err(SaveError::Write)?;
    progress(w.done, w.done);
    Ok(w.inner)
}

fn oci_metadata(items: &[Item]) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut manifests = Vec::new();
    for it in items {
        out.push((
            format!("blobs/sha256/{}", it.record.digest.hex()),
            it.manifest_bytes.clone(),
        ));
        let media_type = it
            .manifest
            .media_type()
            .as_ref()
            .map(|m| m.to_string())
            .unwrap_or_else(|| "application/vnd.oci.image.manifest.v1+json".into());
        let desc = |annotations: Option<serde_json::Value>| {
            let mut d = json!({
                "mediaType": media_type,
                "digest": it.record.digest.to_string(),
                "size": it.manifest_bytes.len(),
            });
            if let Some(a) = annotations {
                d["annotations"] = a;
            }
            d
        };
        if it.tags.is_empty() {
            manifests.push(desc(None));
        }
        for t in &it.tags {
            manifests.push(desc(Some(json!({
                "org.opencontainers.image.ref.name": repo_tag(t),
                "io.containerd.image.name": t.key(),
            }))));
        }
    }
    let index = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                       "manifests": manifests});
    out.push((
        "index.json".into(),
        serde_json::to_vec(&index).expect("serializing an index"),
    ));
    out
}

fn docker_metadata(items: &[Item]) -> Vec<(String, Vec<u8>)> {
    let mut list = Vec::new();
    let mut repositories: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for it in items {
        let tags: Vec<String> = it.tags.iter().map(repo_tag).collect();
        list.push(json!({
            "Config": format!("{}.json", it.record.id().hex()),
            "RepoTags": if tags.is_empty() { serde_json::Value::Null } else { json!(tags) },
            "Layers": it.record.layer_blobs.iter().map(|l| format!("{}.tar", l.hex())).collect::<Vec<_>>(),
        }));
        // `repositories` maps repo → tag → top layer "ID"; docker reads it, others ignore it.
        if let Some(top) = it.record.layer_blobs.last() {
            for t in &tags {
                if let Some((repo, tag)) = t.rsplit_once(':') {
                    repositories
                        .entry(repo.to_string())
                        .or_default()
                        .insert(tag.to_string(), top.hex());
                }
            }
        }
    }
    vec![
        (
            "manifest.json".into(),
            serde_json::to_vec(&list).expect("serializing manifest.json"),
        ),
        (
            "repositories".into(),
            serde_json::to_vec(&repositories).expect("serializing repositories"),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::archive::{import_tar, load};
    use crate::image::store::tests::{image_json, layer};
    use crate::image::store::{ImageKind, ImportProgress, TagMode};
    use std::sync::Mutex;

    fn store(t: &tempfile::TempDir, name: &str) -> Store {
        Store::open(&t.path().join(name)).unwrap()
    }

    /// Two images sharing a base layer, tagged `web`, `web:2` and `q.io/team/app:1.2`.
    fn two_images(s: &Store) -> (Digest, Digest) {
        let base = layer(&[("etc/os-release", b"base")]);
        let mut ids = Vec::new();
        for (i, top) in [b"one".as_slice(), b"two"].iter().enumerate() {
            let (m, c, blobs) = image_json(&[base.clone(), layer(&[("top", top)])]);
            for b in &blobs {
                s.put_blob(b).unwrap();
            }
            s.put_blob(&c).unwrap();
            let md = s.put_blob(&m).unwrap();
            let name = if i == 0 { "web" } else { "q.io/team/app:1.2" };
            let c = s
                .create_tagged(Some(name), &md, ImageKind::Oci, TagMode::New, None, &|_| {})
                .unwrap();
            ids.push(c.record.id());
        }
        s.tag("web", "web:2").unwrap();
        (ids[0], ids[1])
    }

    fn tar_names(data: &[u8]) -> Vec<String> {
        let mut a = tar::Archive::new(data);
        a.entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect()
    }

    #[test]
    fn saved_archives_load_back_with_tags_and_identical_blobs() {
        let t = tempfile::tempdir().unwrap();
        let s = store(&t, "a");
        let (web, app) = two_images(&s);
        let names: Vec<String> = ["web", "web:2", "q.io/team/app:1.2"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        for format in [SaveFormat::OciArchive, SaveFormat::DockerArchive] {
            let reports = Mutex::new(Vec::new());
            let data = save(&s, &names, format, Vec::new(), &|d, t| {
                reports.lock().unwrap().push((d, t))
            })
            .unwrap();
            let last = *reports.lock().unwrap().last().unwrap();
            assert_eq!(last, (data.len() as u64, data.len() as u64));
            // The shared base layer is written once.
            let entries = tar_names(&data);
            let base_blob = s.get("web").unwrap().layer_blobs[0];
            assert_eq!(
                entries
                    .iter()
                    .filter(|e| e.contains(&base_blob.hex()))
                    .count(),
                1,
                "{entries:?}"
            );
            // Deterministic: the same images give the same bytes.
            assert_eq!(
                save(&s, &names, format, Vec::new(), &|_, _| {}).unwrap(),
                data
            );

            let p = t.path().join(format!("{format:?}.tar"));
            std::fs::write(&p, &data).unwrap();
            let s2 = store(&t, &format!("{format:?}"));
            let loaded = load(&s2, &p, None, &|_| {}).unwrap();
            assert_eq!(loaded.len(), 2, "{format:?}");
            assert_eq!(s2.get("web").unwrap().id(), web);
            assert_eq!(s2.get("web:2").unwrap().id(), web);
            assert_eq!(s2.get("q.io/team/app:1.2").unwrap().id(), app);
            let (a, b) = (s.get("web").unwrap(), s2.get("web").unwrap());
            assert_eq!(a.layers, b.layers);
            assert_eq!(a.config, b.config);
            if format == SaveFormat::OciArchive {
                // Same manifest bytes, same blobs: nothing was recompressed.
                assert_eq!((a.digest, &a.layer_blobs), (b.digest, &b.layer_blobs));
            } else {
                assert_eq!(a.layer_blobs, b.layer_blobs);
            }
            // Loading again changes nothing; --name picks one image.
            assert!(
                load(&s2, &p, None, &|_| {})
                    .unwrap()
                    .iter()
                    .all(|l| l.unchanged)
            );
            let s3 = store(&t, &format!("{format:?}-one"));
            let one = load(&s3, &p, Some("q.io/team/app:1.2"), &|_| {}).unwrap();
            assert_eq!(one.len(), 1);
            assert_eq!(s3.list().len(), 1);
            assert_eq!(s3.get("q.io/team/app:1.2").unwrap().id(), app);
            let e = load(&s3, &p, Some("nope:1"), &|_| {}).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
            assert!(e.to_string().contains("web:2"), "{e}");
            // import-tar of an image archive says what to use.
            let e = import_tar(&s3, &p, "x").unwrap_err();
            assert!(e.to_string().contains("image load"), "{e}");
            assert_eq!(e.kind(), ErrorKind::InvalidInput);
            assert_eq!(s3.list().len(), 1);
        }
        let e = save(
            &s,
            &["nope".into()],
            SaveFormat::OciArchive,
            Vec::new(),
            &|_, _| {},
        )
        .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert_eq!(
            save(&s, &[], SaveFormat::OciArchive, Vec::new(), &|_, _| {})
                .unwrap_err()
                .kind(),
            ErrorKind::InvalidInput
        );
        assert!("zip".parse::<SaveFormat>().is_err());
    }

    #[test]
    fn a_load_moves_tags_and_the_old_image_dangles() {
        let t = tempfile::tempdir().unwrap();
        let s = store(&t, "a");
        let (web, _) = two_images(&s);
        // An archive that calls image "app" `web`.
        let data = save(
            &s,
            &["q.io/team/app:1.2".into()],
            SaveFormat::DockerArchive,
            Vec::new(),
            &|_, _| {},
        )
        .unwrap();
        let manifest: serde_json::Value = {
            let mut a = tar::Archive::new(&data[..]);
            let mut e = a
                .entries()
                .unwrap()
                .map(|e| e.unwrap())
                .find(|e| e.path().unwrap().ends_with("manifest.json"))
                .unwrap();
            serde_json::from_reader(&mut e).unwrap()
        };
        let rewrite = |tags: serde_json::Value, out: &str| {
            let mut manifest = manifest.clone();
            manifest[0]["RepoTags"] = tags;
            let mut b = tar::Builder::new(Vec::new());
            let mut a = tar::Archive::new(&data[..]);
            for e in a.entries().unwrap() {
                let mut e = e.unwrap();
                let p = e.path().unwrap().into_owned();
                let mut v = Vec::new();
                io::Read::read_to_end(&mut e, &mut v).unwrap();
                if p.ends_with("manifest.json") {
                    v = serde_json::to_vec(&manifest).unwrap();
                }
                b.append_data(&mut header(v.len() as u64), p, &v[..])
                    .unwrap();
            }
            let p = t.path().join(out);
            std::fs::write(&p, b.into_inner().unwrap()).unwrap();
            p
        };
        let p = rewrite(json!(["web:latest"]), "moved.tar");
        let bytes = Mutex::new(0u64);
        let l = load(&s, &p, None, &|ev| {
            if let ImportProgress::Bytes { done, .. } = ev {
                *bytes.lock().unwrap() = done;
            }
        })
        .unwrap();
        // Read to the end-of-archive marker (the padding after it is not needed).
        let (read, len) = (*bytes.lock().unwrap(), std::fs::metadata(&p).unwrap().len());
        assert!(read <= len && len - read <= 1024, "{read} of {len}");
        assert_eq!(l[0].tags, ["web"]);
        assert_ne!(s.get("web").unwrap().id(), web);
        // The old image keeps its other tag.
        assert_eq!(s.get("web:2").unwrap().id(), web);
        // A tag in the archive that is no reference is refused before anything is stored.
        let before = s.list();
        let p = rewrite(json!(["Bad Tag"]), "bad.tar");
        let e = load(&s, &p, None, &|_| {}).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
        assert_eq!(s.list(), before);
    }
}
