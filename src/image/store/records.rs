//! Image records and the tag index: their files, migration from the old layout, and resolving and
//! listing names.

use super::*;

impl Store {
    // ---- images ----

    pub(super) fn image_data_path(&self, id: &Digest) -> PathBuf {
        self.root.join("images").join(format!("{}.json", id.hex()))
    }

    pub(super) fn tags_path(&self) -> PathBuf {
        self.root.join("tags.json")
    }

    /// Write `data` to `path` atomically: a synced file in `tmp/`, renamed over `path`.
    pub(super) fn write_atomic(
        &self,
        path: &Path,
        data: &[u8],
        what: &str,
    ) -> Result<(), StoreError> {
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

    pub(super) fn read_tags(&self) -> Result<TagIndex, StoreError> {
        match fs::read(self.tags_path()) {
            Ok(d) => serde_json::from_slice(&d).map_err(|e| StoreError::Io {
                context: "reading tags.json".into(),
                source: io::Error::new(io::ErrorKind::InvalidData, e),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(TagIndex::default()),
            Err(e) => Err(io_err("reading tags.json")(e)),
        }
    }

    pub(super) fn write_tags(&self, t: &TagIndex) -> Result<(), StoreError> {
        let data = serde_json::to_vec_pretty(t).expect("serializing tags");
        self.write_atomic(&self.tags_path(), &data, "tags.json")
    }

    pub(super) fn lock_tags(&self) -> std::sync::MutexGuard<'_, ()> {
        self.tags.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn read_image(&self, id: &Digest) -> Result<ImageData, StoreError> {
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

    pub(super) fn write_image(&self, d: &ImageData) -> Result<(), StoreError> {
        let data = serde_json::to_vec_pretty(d).expect("serializing an image record");
        self.write_atomic(
            &self.image_data_path(&d.id),
            &data,
            &format!("image {}", d.id),
        )
    }

    /// Every image's data, by ID. Unreadable records are skipped.
    pub(super) fn all_images(&self) -> BTreeMap<Digest, ImageData> {
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
    pub(super) fn migrate(&self) -> Result<usize, StoreError> {
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
    /// [`super::super::reference`] for the rules.
    pub(super) fn resolve_in(
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

    /// The tag and image ID `s` names (see [`super::super::reference`]).
    pub fn resolve(&self, s: &str) -> Result<(Option<TagName>, Digest), StoreError> {
        let tags = self.read_tags()?;
        self.resolve_in(s, &tags)
    }

    pub(super) fn view(&self, tag: Option<&TagName>, d: ImageData, tags: &TagIndex) -> ImageRecord {
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
}
