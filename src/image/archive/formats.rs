//! The two archive formats: an OCI layout (index, platform choice, manifests) and docker save's
//! manifest.json, each imported from a blob source.

use super::*;

pub(super) fn platform_matches(d: &Descriptor) -> bool {
    d.platform().as_ref().is_some_and(|p| {
        p.os().to_string() == "linux" && p.architecture().to_string() == host_arch()
    })
}

/// Pick one manifest from an index (see the module docs).
pub(super) fn choose(index: &ImageIndex) -> Result<&Descriptor, ImportError> {
    let all = index.manifests();
    if all.len() == 1 {
        return Ok(&all[0]);
    }
    if let Some(d) = all.iter().find(|d| platform_matches(d)) {
        return Ok(d);
    }
    let named: Vec<&Descriptor> = all
        .iter()
        .filter(|d| {
            d.annotations()
                .as_ref()
                .is_some_and(|a| a.contains_key(REF_NAME))
        })
        .collect();
    if named.len() == 1 {
        return Ok(named[0]);
    }
    Err(invalid(format!(
        "the index lists {} manifests and none is for linux/{}",
        all.len(),
        host_arch()
    )))
}

/// A reader that counts what passes through it, for progress reports from another thread.
pub(super) struct Counting<R> {
    pub(super) inner: R,
    pub(super) count: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// Run `work` with a byte counter, reporting `ImportProgress::Bytes` every 100 ms from a
/// helper thread (and once at the end), so a single large layer still shows progress.
pub(super) fn with_byte_progress<T>(
    total: u64,
    progress: &(dyn Fn(ImportProgress) + Sync),
    work: impl FnOnce(Arc<AtomicU64>) -> T,
) -> T {
    let count = Arc::new(AtomicU64::new(0));
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                progress(ImportProgress::Bytes {
                    done: count.load(Ordering::Relaxed),
                    total,
                });
                std::thread::park_timeout(Duration::from_millis(100));
            }
        });
        let r = work(count.clone());
        done.store(true, Ordering::Relaxed);
        progress(ImportProgress::Bytes {
            done: count.load(Ordering::Relaxed),
            total,
        });
        r
    })
}

/// A path in an OCI image index: the descriptor of an image (or a nested index) and the
/// name its annotations give it.
pub(super) struct IndexEntry {
    pub(super) desc: Descriptor,
    pub(super) name: Option<String>,
}

/// The name an index entry carries: containerd's full-name annotation, else the OCI ref name
/// when it is a whole reference (`app:1`, `q.io/a/b:2`; a bare `1` is only a tag within the
/// layout and names nothing here).
pub(super) fn entry_name(d: &Descriptor) -> Option<String> {
    let a = d.annotations().as_ref()?;
    if let Some(n) = a.get("io.containerd.image.name") {
        return Some(n.clone());
    }
    let r = a.get(REF_NAME)?;
    (r.contains(':') || r.contains('/')).then(|| r.clone())
}

pub(super) fn read_index(src: &mut dyn BlobSource) -> Result<ImageIndex, ImportError> {
    let index = src
        .read_named("index.json")?
        .ok_or_else(|| invalid("index.json is missing"))?;
    serde_json::from_slice(&index).map_err(|e| invalid(format!("index.json: {e}")))
}

/// Import the image `desc` names (choosing this host's platform from a nested index), with
/// tag `name`.
#[allow(clippy::too_many_arguments)]
pub(super) fn import_layout_entry(
    store: &Store,
    src: &mut dyn BlobSource,
    desc: &Descriptor,
    name: Option<&str>,
    mode: TagMode,
    kind: ImageKind,
    progress: &(dyn Fn(ImportProgress) + Sync),
) -> Result<Created, ImportError> {
    let mut desc = desc.clone();
    for _ in 0..MAX_INDEX_DEPTH {
        let d = parse_digest(desc.digest().as_ref())?;
        src.fetch(store, &d)?;
        let data = store.read_blob(&d)?;
        let mt = desc.media_type().to_string();
        let is_index = mt == "application/vnd.oci.image.index.v1+json"
            || mt == "application/vnd.docker.distribution.manifest.list.v2+json";
        if is_index {
            let index: ImageIndex =
                serde_json::from_slice(&data).map_err(|e| invalid(format!("index {d}: {e}")))?;
            desc = choose(&index)?.clone();
            continue;
        }
        let manifest: ImageManifest =
            serde_json::from_slice(&data).map_err(|e| invalid(format!("manifest {d}: {e}")))?;
        src.fetch(store, &parse_digest(manifest.config().digest().as_ref())?)?;
        for l in manifest.layers() {
            src.fetch(store, &parse_digest(l.digest().as_ref())?)?;
        }
        return Ok(store.create_tagged(name, &d, kind, mode, None, progress)?);
    }
    Err(invalid("image indexes nest too deeply"))
}

/// The single image of a layout (see the module docs for how an index is read).
pub(super) fn import_layout(
    store: &Store,
    src: &mut dyn BlobSource,
    name: &str,
    kind: ImageKind,
    progress: &(dyn Fn(ImportProgress) + Sync),
) -> Result<ImageRecord, ImportError> {
    let index = read_index(src)?;
    let named = index
        .manifests()
        .iter()
        .filter(|d| entry_name(d).is_some())
        .count();
    if named > 1 {
        return Err(invalid(format!(
            "the archive holds {named} images; use `berthctl image load --name REF` to pick one"
        )));
    }
    let desc = choose(&index)?.clone();
    let c = import_layout_entry(store, src, &desc, Some(name), TagMode::New, kind, progress)?;
    Ok(c.record)
}

/// One image in a `docker save` manifest.json.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct DockerManifest {
    pub(super) config: String,
    #[serde(default)]
    pub(super) repo_tags: Option<Vec<String>>,
    pub(super) layers: Vec<String>,
}

pub(super) fn docker_list(spool: &mut Spool) -> Result<Vec<DockerManifest>, ImportError> {
    let data = spool
        .read_named("manifest.json")?
        .ok_or_else(|| invalid("manifest.json is missing"))?;
    serde_json::from_slice(&data).map_err(|e| invalid(format!("manifest.json: {e}")))
}

/// Store one image of a docker archive: its blobs, and a synthesized OCI manifest; returns
/// the manifest digest.
pub(super) fn docker_entry(
    store: &Store,
    spool: &mut Spool,
    m: &DockerManifest,
) -> Result<Digest, ImportError> {
    let fetch = |spool: &mut Spool, p: &str| -> Result<(Digest, u64, Compression), ImportError> {
        let np = norm(p.as_bytes())
            .ok_or_else(|| invalid(format!("manifest.json path {p:?} leaves the archive")))?;
        let b = spool
            .lookup(&np)
            .ok_or_else(|| invalid(format!("{p:?} is missing from the archive")))?;
        let (len, c) = (
            fs::metadata(&b.path).map_err(io_at(&b.path))?.len(),
            sniff(&b.path)?,
        );
        let d = spool.adopt(store, &np)?.expect("looked up above");
        Ok((d, len, c))
    };
    let (config_digest, config_len, _) = fetch(spool, &m.config)?;
    let mut layers = Vec::new();
    for l in &m.layers {
        let (d, len, c) = fetch(spool, l)?;
        if c == Compression::Xz {
            return Err(invalid(format!("layer {l:?} is xz-compressed")));
        }
        layers.push(json!({
            "mediaType": layer_media_type(c),
            "digest": d.to_string(),
            "size": len,
        }));
    }
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest.to_string(),
            "size": config_len,
        },
        "layers": layers,
    });
    Ok(store.put_blob(&serde_json::to_vec(&manifest).expect("serializing a manifest"))?)
}

pub(super) fn import_docker(
    store: &Store,
    spool: &mut Spool,
    name: &str,
    progress: &(dyn Fn(ImportProgress) + Sync),
) -> Result<ImageRecord, ImportError> {
    let list = docker_list(spool)?;
    let [m] = &list[..] else {
        let tags: Vec<String> = list
            .iter()
            .flat_map(|m| m.repo_tags.clone().unwrap_or_default())
            .collect();
        return Err(invalid(format!(
            "the archive holds {} images ({}); use `berthctl image load --name REF` to pick one",
            list.len(),
            tags.join(", ")
        )));
    };
    let md = docker_entry(store, spool, m)?;
    let c = store.create_tagged(
        Some(name),
        &md,
        ImageKind::Docker,
        TagMode::New,
        None,
        progress,
    )?;
    Ok(c.record)
}
