//! A container's root from its image, and the image operations that move images in and out: push,
//! save, load, prune, registry login and logout, disk usage.

use super::*;

impl Registry {
    /// The root of a container: its directory, or the image it was created on — by the ID it
    /// recorded (a tag moved since does not change it), else by name.
    pub(in crate::daemon) fn container_root(
        &self,
        spec: &crate::spec::ContainerSpec,
    ) -> Result<Rootfs> {
        match (&spec.root, spec.image_id) {
            (crate::spec::Root::Directory(dir), _) => Ok(Rootfs {
                lowers: vec![dir.clone()],
                config: None,
                shown: dir.clone(),
                id: None,
            }),
            (crate::spec::Root::Image(_), Some(id)) => {
                let rec = self.images.get_id(&id).map_err(|e| match e.kind() {
                    ErrorKind::NotFound => Error::NoSuchImage(format!(
                        "the image {id} container {:?} was created on is gone",
                        spec.name()
                    )),
                    _ => store_error(e),
                })?;
                let mut lowers = self.images.layer_paths(&rec);
                lowers.reverse();
                Ok(Rootfs {
                    lowers,
                    config: Some(rec.config),
                    shown: PathBuf::new(),
                    id: Some(id),
                })
            }
            (crate::spec::Root::Image(name), None) => self.resolve_image(name),
        }
    }

    pub(in crate::daemon) async fn push_image(
        &self,
        image: String,
        reference: String,
        opts: reg::PullOptions,
    ) -> Result<String> {
        let dest = (!reference.is_empty()).then_some(reference);
        let store = self.images.clone();
        let n = image.clone();
        let started = Instant::now();
        let (dest, pushed) = self
            .with_progress(&image, move |p| {
                let state = std::sync::Mutex::new((0u64, 0u64, 0u32, 0u32));
                let sent = std::sync::Mutex::new(std::collections::HashMap::<String, u64>::new());
                let report = |ev: image::push::PushProgress| {
                    use image::push::PushProgress as P;
                    let mut s = state.lock().unwrap();
                    let mut force = false;
                    match ev {
                        P::Started { blobs, total_bytes } => {
                            (s.1, s.3) = (total_bytes, blobs as u32);
                            force = true;
                        }
                        P::BlobExists { size, .. } | P::BlobMounted { size, .. } => {
                            s.0 += size;
                            s.2 += 1;
                        }
                        P::Blob { digest, done, .. } => {
                            let prev = sent.lock().unwrap().insert(digest.to_string(), done);
                            s.0 = s.0 + done - prev.unwrap_or(0).min(done);
                        }
                        P::BlobDone { .. } => {
                            s.2 += 1;
                            force = true;
                        }
                    }
                    p.send("uploading", s.0, s.1, s.2.min(s.3), s.3, force);
                };
                let r = image::ops::push_image(&store, &n, dest.as_deref(), &opts, &report)
                    .map_err(|e| bus_error(e.kind(), e.to_string()));
                p.send("done", 0, 0, 0, 0, true);
                r
            })
            .await?;
        info!(
            "pushed image {image} to {dest}: {} blobs uploaded ({} bytes), {} mounted, {} present, in {:?}",
            pushed.uploaded_blobs,
            pushed.uploaded_bytes,
            pushed.mounted_blobs,
            pushed.existing_blobs,
            started.elapsed()
        );
        Ok(pushed.manifest_digest.to_string())
    }

    /// Check the images of a save before it is authorized and started.
    pub(in crate::daemon) fn check_save(
        &self,
        names: &[String],
        format: &str,
    ) -> Result<image::SaveFormat> {
        let format: image::SaveFormat = format
            .parse()
            .map_err(|e: image::SaveError| invalid(e.to_string()))?;
        if names.is_empty() {
            return Err(invalid("no image to save"));
        }
        for n in names {
            self.images.resolve(n).map_err(store_error)?;
        }
        Ok(format)
    }

    pub(in crate::daemon) async fn save_images(
        &self,
        names: Vec<String>,
        format: image::SaveFormat,
        fd: OwnedFd,
    ) -> Result<()> {
        let store = self.images.clone();
        let label = names.join(" ");
        self.with_progress(&label, move |p| {
            let out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::from(fd));
            image::save(&store, &names, format, out, &|done, total| {
                p.send("saving", done, total, 0, 0, false)
            })
            .map(drop)
            .map_err(|e| bus_error(e.kind(), e.to_string()))
        })
        .await
    }

    pub(in crate::daemon) async fn load_images(
        &self,
        path: String,
        wanted: Option<String>,
    ) -> Result<Vec<(String, OwnedObjectPath)>> {
        let src = PathBuf::from(&path);
        if !src.is_absolute() {
            return Err(invalid(format!("{path:?} is not an absolute path")));
        }
        if !src.exists() {
            return Err(invalid(format!("{path}: no such file or directory")));
        }
        let store = self.images.clone();
        let started = Instant::now();
        let loaded = self
            .with_progress(&path, move |p| {
                p.send("loading", 0, 0, 0, 0, true);
                let r = image::load(&store, &src, wanted.as_deref(), &|ev| {
                    import_progress(p, ev)
                })
                .map_err(|e| bus_error(e.kind(), e.to_string()));
                p.send("done", 0, 0, 0, 0, true);
                r
            })
            .await?;
        info!(
            "loaded {} images from {path} in {:?}",
            loaded.len(),
            started.elapsed()
        );
        let mut out = Vec::new();
        for l in loaded {
            for t in &l.tags {
                if let Ok(rec) = self.images.get(t) {
                    self.announce(&rec).await;
                }
            }
            let path = self.announce(&l.record).await;
            out.push((l.record.name.clone(), path));
        }
        Ok(out)
    }

    pub(in crate::daemon) async fn prune_images(&self, all: bool) -> Result<(Vec<String>, u64)> {
        let in_use = self.ids_in_use();
        let store = self.images.clone();
        let report = self
            .with_progress("prune", move |_| {
                store
                    .prune(all, &|d| in_use.contains(d))
                    .map_err(store_error)
            })
            .await?;
        let mut removed: Vec<String> = report.untagged.clone();
        for t in &report.untagged {
            self.retire(t).await;
        }
        for id in &report.images {
            self.retire(&id.to_string()).await;
            removed.push(id.to_string());
        }
        info!(
            "pruned {} images, {} bytes freed",
            report.images.len(),
            report.freed_bytes
        );
        Ok((removed, report.freed_bytes))
    }

    pub(in crate::daemon) async fn login(
        &self,
        registry: String,
        user: String,
        password: String,
        opts: reg::PullOptions,
    ) -> Result<()> {
        let file = opts
            .auth_file
            .clone()
            .unwrap_or_else(|| DEFAULT_AUTH_FILE.into());
        let key = image::auth::registry_key(&registry).map_err(|e| invalid(e.to_string()))?;
        let insecure = opts.insecure;
        let k = key.clone();
        tokio::task::spawn_blocking(move || {
            image::push::check_login(&k, &user, &password, insecure)
                .map_err(|e| bus_error(e.kind(), e.to_string()))?;
            image::auth::store_credentials(&file, &k, &user, &password)
                .map_err(|e| bus_error(e.kind(), e.to_string()))
        })
        .await
        .map_err(|e| Error::Failed(e.to_string()))??;
        info!("stored credentials for {key}");
        Ok(())
    }

    pub(in crate::daemon) async fn logout(
        &self,
        registry: String,
        auth_file: Option<String>,
    ) -> Result<()> {
        if let Some(f) = &auth_file
            && !f.starts_with('/')
        {
            return Err(invalid(format!("auth file {f:?} is not an absolute path")));
        }
        let file: PathBuf = auth_file.unwrap_or_else(|| DEFAULT_AUTH_FILE.into()).into();
        let key = tokio::task::spawn_blocking(move || {
            image::auth::remove_credentials(&file, &registry).map_err(|e| match e.kind() {
                // Not logged in is a bad argument, not a missing image.
                ErrorKind::NotFound => invalid(e.to_string()),
                k => bus_error(k, e.to_string()),
            })
        })
        .await
        .map_err(|e| Error::Failed(e.to_string()))??;
        info!("removed credentials for {key}");
        Ok(())
    }

    /// Disk use of the image store and the containers' writable layers (`system df`).
    pub(in crate::daemon) async fn disk_usage(&self) -> Result<image::DiskUsage> {
        let uppers: Vec<PathBuf> = self
            .entries
            .lock()
            .unwrap()
            .keys()
            .map(|n| crate::mount::ContainerDirs::under(&self.layout.container_dir(n)).upper)
            .collect();
        let in_use = self.ids_in_use();
        let store = self.images.clone();
        tokio::task::spawn_blocking(move || store.disk_usage(&uppers, &|d| in_use.contains(d)))
            .await
            .map_err(|e| Error::Failed(format!("disk usage: {e}")))
    }
}
