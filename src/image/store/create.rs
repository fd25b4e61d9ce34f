//! Creating images: from blobs already in the store, under a new tag, with their layers extracted.

use super::*;

impl Store {
    pub(super) fn check_free(&self, name: &TagName) -> Result<(), StoreError> {
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
    pub(super) fn build_image(
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
}
