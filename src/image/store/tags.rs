//! Renaming, tagging, cloning and read-only tags; what images and containers take on disk.

use super::*;

impl Store {
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

    pub(super) fn add_tag(
        &self,
        name: &str,
        new: &str,
        copy_flags: bool,
    ) -> Result<ImageRecord, StoreError> {
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
                layer_bytes.insert(d, super::super::usage::disk_usage(&e.path()).bytes);
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
            .map(|p| super::super::usage::disk_usage(p).bytes)
            .sum();
        du
    }
}
