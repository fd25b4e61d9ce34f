//! Removing images and tags, pruning, and collecting the layers and blobs no image references.

use super::*;

impl Store {
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
    pub(super) fn collect(&self, just_freed: &BTreeSet<Digest>) -> Result<u64, StoreError> {
        self.collect_counted(just_freed).map(|(_, freed)| freed)
    }

    /// [`Store::collect`], also counting the files and directories deleted. Deletes nothing
    /// while an image record cannot be read: the layers it names may be in use.
    pub(super) fn collect_counted(
        &self,
        just_freed: &BTreeSet<Digest>,
    ) -> Result<(usize, u64), StoreError> {
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
                freed += super::super::usage::disk_usage(&t).bytes;
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
}
