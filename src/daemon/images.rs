//! Image flows of the registry: resolving an image name to overlay layers and config, and the
//! image management methods (list, import, pull, remove, rename, clone, tag, export). Long work
//! runs on the blocking pool; progress goes out as `ImageProgress` signals, at most every
//! 100 ms per operation.

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tracing::info;
use zbus::OwnedObjectPath;

use super::table::Registry;
use crate::dbus::{self, Error, ImageInfo, Result};
use crate::image::{self, ErrorKind, ImageConfig, ImageKind, ImageRecord, registry as reg};
use crate::name;

/// Registry credentials used when a pull names no auth file (docker/podman auth.json format).
pub const DEFAULT_AUTH_FILE: &str = "/etc/berth/auth.json";

/// At most this many imports, pulls and exports at once.
pub const MAX_OPERATIONS: usize = 4;

/// What a container's root is made of.
pub struct Rootfs {
    /// Overlay lower directories, topmost first.
    pub lowers: Vec<PathBuf>,
    /// The image's config (none for plain directories).
    pub config: Option<ImageConfig>,
    /// What `RootDirectory` shows: the directory, or empty for a layered image.
    pub shown: PathBuf,
}

/// An image's `StopSignal` (`SIGTERM`, `TERM` or `15`).
pub fn parse_stop_signal(s: &str) -> Option<Signal> {
    if let Ok(n) = s.parse::<i32>() {
        return Signal::try_from(n).ok();
    }
    let up = s.to_ascii_uppercase();
    let full = if up.starts_with("SIG") {
        up
    } else {
        format!("SIG{up}")
    };
    full.parse().ok()
}

/// Map an image store error to the bus.
fn bus_error(kind: ErrorKind, msg: String) -> Error {
    match kind {
        ErrorKind::InvalidInput => Error::InvalidArgument(msg),
        ErrorKind::NotFound => Error::NoSuchImage(msg),
        ErrorKind::AlreadyExists => Error::AlreadyExists(msg),
        ErrorKind::Busy => Error::InvalidState(msg),
        ErrorKind::Failed => Error::Failed(msg),
    }
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::InvalidArgument(msg.into())
}

fn store_error(e: image::StoreError) -> Error {
    bus_error(e.kind(), e.to_string())
}

fn image_path(name: &str) -> OwnedObjectPath {
    OwnedObjectPath::try_from(name::image_path(name)).expect("escaped path is valid")
}

/// A directory image shipped with berth (`/usr/lib/berth/images/NAME`), shown like a stored
/// one: read-only, one layer, no config.
fn system_image(name: &str, dir: &std::path::Path) -> ImageInfo {
    let created = std::fs::metadata(dir)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_micros() as u64);
    ImageInfo {
        name: name.into(),
        kind: "directory".into(),
        digest: String::new(),
        size: 0,
        created,
        layers: vec![dir.display().to_string()],
        read_only: true,
        object_path: image_path(name),
    }
}

fn info_of(rec: &ImageRecord) -> ImageInfo {
    ImageInfo {
        name: rec.name.clone(),
        kind: serde_json::to_value(rec.kind)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default(),
        digest: rec.digest.to_string(),
        size: rec.size,
        created: rec.created.saturating_mul(1_000_000),
        layers: rec.layers.iter().map(ToString::to_string).collect(),
        read_only: rec.read_only,
        object_path: image_path(&rec.name),
    }
}

/// Turns store and pull progress into rate-limited `ImageProgress` signals.
struct Progress {
    tx: tokio::sync::mpsc::UnboundedSender<(String, u64, u64, u32, u32)>,
    last: std::sync::Mutex<Instant>,
}

impl Progress {
    fn send(&self, phase: &str, done: u64, total: u64, layers_done: u32, layers: u32, force: bool) {
        let mut last = self.last.lock().unwrap();
        if force || last.elapsed() >= Duration::from_millis(100) {
            *last = Instant::now();
            if self
                .tx
                .send((phase.into(), done, total, layers_done, layers))
                .is_err()
            {
                // The relay is gone: the operation's caller left; the work goes on.
            }
        }
    }
}

impl Registry {
    /// An image by name: the store first, then the directories shipped with berth.
    pub(super) fn resolve_image(&self, image: &str) -> Result<Rootfs> {
        name::validate(image).map_err(|_| invalid(format!("invalid image name {image:?}")))?;
        match self.images.get(image) {
            Ok(rec) => {
                let mut lowers = self.images.layer_paths(&rec);
                lowers.reverse();
                return Ok(Rootfs {
                    lowers,
                    config: Some(rec.config),
                    shown: PathBuf::new(),
                });
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(store_error(e)),
        }
        let dir = self
            .layout
            .find_image(image)
            .ok_or_else(|| Error::NoSuchImage(format!("no image named {image:?}")))?;
        Ok(Rootfs {
            lowers: vec![dir.clone()],
            config: None,
            shown: dir,
        })
    }

    pub(super) fn list_images(&self) -> Vec<ImageInfo> {
        let mut out: Vec<ImageInfo> = self.images.list().iter().map(info_of).collect();
        for dir in &self.layout.image_dirs {
            let Ok(rd) = std::fs::read_dir(dir) else {
                continue;
            };
            for d in rd.flatten() {
                let Ok(n) = d.file_name().into_string() else {
                    continue;
                };
                if d.path().is_dir()
                    && name::validate(&n).is_ok()
                    && !out.iter().any(|i| i.name == n)
                {
                    out.push(system_image(&n, &d.path()));
                }
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// One image's record: the store's, else a shipped directory image. Reads one record, not
    /// the whole store (every Image property read comes here).
    pub(super) fn image_info(&self, image: &str) -> Option<ImageInfo> {
        if name::validate(image).is_err() {
            return None;
        }
        if let Ok(rec) = self.images.get(image) {
            return Some(info_of(&rec));
        }
        self.layout
            .find_image(image)
            .map(|dir| system_image(image, &dir))
    }

    /// The image's config as the `Image.Config` property shows it.
    pub(super) fn image_config(&self, image: &str) -> Option<ImageConfig> {
        self.images.get(image).ok().map(|r| r.config)
    }

    /// Containers defined on an image, with whether each is running.
    fn users_of(&self, image: &str) -> Vec<(String, bool)> {
        self.entries
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, e)| e.spec.root == crate::spec::Root::Image(image.to_string()))
            .map(|(n, e)| (n.clone(), e.is_active()))
            .collect()
    }

    fn begin_operation(&self) -> Result<OperationGuard> {
        let n = self
            .operations
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if n >= MAX_OPERATIONS {
            self.operations
                .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            return Err(Error::LimitExceeded(format!(
                "at most {MAX_OPERATIONS} image operations at once"
            )));
        }
        Ok(OperationGuard(self.arc()))
    }

    /// Run `work` on the blocking pool with a progress reporter for image `name`, relaying
    /// its progress as signals until it ends.
    async fn with_progress<T: Send + 'static>(
        &self,
        name: &str,
        work: impl FnOnce(&Progress) -> std::result::Result<T, Error> + Send + 'static,
    ) -> Result<T> {
        let _op = self.begin_operation()?;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let progress = Progress {
            tx,
            last: std::sync::Mutex::new(Instant::now() - Duration::from_secs(1)),
        };
        let job = tokio::task::spawn_blocking(move || work(&progress));
        let em = self.manager_emitter();
        let relay = async {
            while let Some((phase, done, total, ld, lt)) = rx.recv().await {
                if let Some(em) = &em
                    && let Err(e) =
                        dbus::Manager::image_progress(em, name, &phase, done, total, ld, lt).await
                {
                    tracing::debug!("cannot send progress of {name}: {e}, ignoring");
                }
            }
        };
        let (r, ()) = tokio::join!(job, relay);
        let r = r.map_err(|e| Error::Failed(format!("image operation failed: {e}")))?;
        drop(_op);
        let full = matches!(&r, Err(e) if super::space::is_storage_full(&e.to_string()));
        self.after_operation(full).await;
        r
    }

    async fn announce(&self, rec: &ImageRecord) -> OwnedObjectPath {
        self.export_image_object(&rec.name).await;
        let path = image_path(&rec.name);
        if let Some(em) = self.manager_emitter()
            && let Err(e) = dbus::Manager::image_new(&em, &rec.name, path.clone()).await
        {
            tracing::warn!("cannot announce image {}: {e}, ignoring", rec.name);
        }
        path
    }

    async fn retire(&self, image: &str) {
        let path = name::image_path(image);
        if let Err(e) = self
            .conn
            .object_server()
            .remove::<dbus::Image, _>(path.as_str())
            .await
        {
            tracing::warn!("cannot remove the bus object of image {image}: {e}, ignoring");
        }
        if let Some(em) = self.manager_emitter()
            && let Err(e) = dbus::Manager::image_removed(&em, image, image_path(image)).await
        {
            tracing::warn!("cannot announce the removal of image {image}: {e}, ignoring");
        }
    }

    pub(super) async fn export_image_object(&self, image: &str) {
        let obj = dbus::Image {
            backend: self.weak_backend(),
            name: image.into(),
        };
        if let Err(e) = self
            .conn
            .object_server()
            .at(name::image_path(image), obj)
            .await
        {
            tracing::warn!("cannot export image {image}: {e}, ignoring");
        }
    }

    /// Put the directory images shipped with berth into the store (once; they stay read-only
    /// there). A container's layers are mapped into its user namespace with idmapped mounts,
    /// which not every filesystem a shipped directory may live on supports (overlayfs does
    /// not); the store's does.
    pub async fn import_shipped(&self) {
        let mut shipped = Vec::new();
        for dir in &self.layout.image_dirs {
            let Ok(rd) = std::fs::read_dir(dir) else {
                continue;
            };
            for d in rd.flatten() {
                let Ok(n) = d.file_name().into_string() else {
                    continue;
                };
                if d.path().is_dir()
                    && name::validate(&n).is_ok()
                    && self.images.get(&n).is_err()
                    && !shipped.iter().any(|(m, _)| *m == n)
                {
                    shipped.push((n, d.path()));
                }
            }
        }
        for (n, dir) in shipped {
            let store = self.images.clone();
            let name = n.clone();
            let done = tokio::task::spawn_blocking(move || {
                image::import_fs(&store, &dir, &name)
                    .map_err(|e| e.to_string())
                    .and_then(|_| store.set_read_only(&name, true).map_err(|e| e.to_string()))
            })
            .await;
            match done {
                Ok(Ok(_)) => info!("added the shipped image {n} to the store"),
                Ok(Err(e)) => {
                    tracing::warn!("cannot add the shipped image {n} to the store: {e}, ignoring")
                }
                Err(e) => {
                    tracing::warn!("cannot add the shipped image {n} to the store: {e}, ignoring")
                }
            }
        }
    }

    /// Export every image as a bus object (at start).
    pub async fn export_images(&self) {
        for i in self.list_images() {
            self.export_image_object(&i.name).await;
        }
    }

    fn check_new_name(&self, new: &str) -> Result<()> {
        name::validate(new).map_err(|e| invalid(format!("invalid image name {new:?}: {e}")))?;
        if self.image_info(new).is_some() {
            return Err(Error::AlreadyExists(format!(
                "an image named {new:?} exists"
            )));
        }
        Ok(())
    }

    pub(super) async fn import_image(
        &self,
        format: String,
        source: String,
        image: String,
    ) -> Result<OwnedObjectPath> {
        self.check_new_name(&image)?;
        let src = PathBuf::from(&source);
        if !src.is_absolute() {
            return Err(invalid(format!("{source:?} is not an absolute path")));
        }
        if !src.exists() {
            return Err(invalid(format!("{source}: no such file or directory")));
        }
        let import: fn(
            &image::Store,
            &std::path::Path,
            &str,
        ) -> std::result::Result<ImageRecord, image::ImportError> = match format.as_str() {
            "fs" | "directory" => image::import_fs,
            "tar" => image::import_tar,
            "oci" | "docker" => image::import_oci,
            f => {
                return Err(invalid(format!(
                    "unknown import format {f:?} (fs, tar or oci)"
                )));
            }
        };
        let store = self.images.clone();
        let n = image.clone();
        let started = Instant::now();
        let rec = self
            .with_progress(&image, move |p| {
                p.send("importing", 0, 0, 0, 0, true);
                let r = import(&store, &src, &n).map_err(|e| bus_error(e.kind(), e.to_string()));
                p.send("done", 0, 0, 0, 0, true);
                r
            })
            .await?;
        info!(
            "imported image {image} ({} layers, {} bytes) from {source} in {:?}",
            rec.layers.len(),
            rec.size,
            started.elapsed()
        );
        Ok(self.announce(&rec).await)
    }

    pub(super) async fn pull_image(
        &self,
        reference: String,
        image: String,
        insecure: bool,
        auth_file: Option<String>,
    ) -> Result<OwnedObjectPath> {
        let r: reg::Reference = reference
            .parse()
            .map_err(|e: reg::RegistryError| bus_error(e.kind(), e.to_string()))?;
        let image = if image.is_empty() {
            default_name(&r)
        } else {
            image
        };
        self.check_new_name(&image)?;
        let mut opts = reg::PullOptions {
            insecure,
            ..Default::default()
        };
        if let Some(f) = auth_file {
            if !f.starts_with('/') {
                return Err(invalid(format!("auth file {f:?} is not an absolute path")));
            }
            opts.auth_file = Some(f.into());
        }
        if opts.auth_file.is_none() && std::path::Path::new(DEFAULT_AUTH_FILE).exists() {
            opts.auth_file = Some(DEFAULT_AUTH_FILE.into());
        }
        let store = self.images.clone();
        let n = image.clone();
        let started = Instant::now();
        let (rec, pulled) = self
            .with_progress(&image, move |p| {
                let state = std::sync::Mutex::new((0u64, 0u64, 0u32, 0u32));
                let blobs = std::sync::Mutex::new(std::collections::HashMap::<String, u64>::new());
                let report = |ev: reg::Progress| {
                    let mut s = state.lock().unwrap();
                    let mut force = false;
                    match ev {
                        reg::Progress::Resolved {
                            layers,
                            total_bytes,
                            ..
                        } => {
                            s.1 = total_bytes;
                            s.3 = layers as u32;
                            force = true;
                        }
                        reg::Progress::Blob { digest, done, .. } => {
                            let mut b = blobs.lock().unwrap();
                            let prev = b.insert(digest.to_string(), done).unwrap_or(0);
                            s.0 = s.0 + done - prev.min(done);
                        }
                        reg::Progress::BlobSkipped { size, .. } => {
                            s.0 += size;
                            s.2 += 1;
                        }
                        reg::Progress::BlobDone { .. } => {
                            s.2 += 1;
                            force = true;
                        }
                    }
                    p.send("downloading", s.0, s.1, s.2.min(s.3), s.3, force);
                };
                let pulled = reg::pull(&*store, &r, &opts, &report)
                    .map_err(|e| bus_error(e.kind(), e.to_string()))?;
                let layers = pulled.manifest.layers().len() as u32;
                p.send("extracting", 0, 0, 0, layers, true);
                let rec = store
                    .create_image_from_blob(
                        &n,
                        &pulled.manifest_digest,
                        ImageKind::Registry,
                        &|ev| {
                            if let image::ImportProgress::LayerDone { index, count, .. } = ev {
                                p.send("extracting", 0, 0, index as u32 + 1, count as u32, true);
                            }
                        },
                    )
                    .map_err(store_error)?;
                p.send("done", 0, 0, layers, layers, true);
                Ok((rec, pulled))
            })
            .await?;
        info!(
            "pulled image {image} ({} layers) from {reference}: fetched {} blobs, {} bytes, in {:?}",
            rec.layers.len(),
            pulled.fetched_blobs,
            pulled.fetched_bytes,
            started.elapsed()
        );
        Ok(self.announce(&rec).await)
    }

    pub(super) async fn remove_image(&self, image: String, force: bool) -> Result<()> {
        let users = self.users_of(&image);
        if let Some((c, _)) = users.iter().find(|(_, running)| *running) {
            return Err(Error::InvalidState(format!(
                "image {image:?} is used by running container {c:?}"
            )));
        }
        if !users.is_empty() && !force {
            return Err(Error::InvalidState(format!(
                "image {image:?} is used by container(s) {}; remove them first or use --force",
                users
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let shipped = match self.images.get(&image) {
            Ok(rec) => rec.read_only,
            Err(_) => self.layout.find_image(&image).is_some(),
        };
        if shipped {
            return Err(Error::InvalidState(format!(
                "image {image:?} is shipped with berth and read-only"
            )));
        }
        let store = self.images.clone();
        let n = image.clone();
        tokio::task::spawn_blocking(move || store.remove(&n))
            .await
            .map_err(|e| Error::Failed(e.to_string()))?
            .map_err(store_error)?;
        info!("removed image {image}");
        self.retire(&image).await;
        Ok(())
    }

    /// Rename, clone or tag (`op`) an image to `new`.
    pub(super) async fn copy_image(
        &self,
        op: &str,
        image: String,
        new: String,
    ) -> Result<OwnedObjectPath> {
        self.check_new_name(&new)?;
        if op == "rename" && !self.users_of(&image).is_empty() {
            return Err(Error::InvalidState(format!(
                "image {image:?} is used by containers, which refer to it by name"
            )));
        }
        let rec = match op {
            "rename" => self.images.rename(&image, &new),
            "clone" => self.images.clone_image(&image, &new),
            _ => self.images.tag(&image, &new),
        }
        .map_err(store_error)?;
        info!("{op} image {image} as {new}");
        if op == "rename" {
            self.retire(&image).await;
        }
        Ok(self.announce(&rec).await)
    }

    /// Write a flattened tarball of an image, or of a container's root (its writable layer
    /// over its image), to `fd`.
    pub(super) async fn export_tar(&self, what: &str, name_: String, fd: OwnedFd) -> Result<()> {
        let layers: Vec<PathBuf> = if what == "image" {
            let root = self.resolve_image(&name_)?;
            root.lowers
        } else {
            let (root, upper) = {
                let entries = self.entries.lock().unwrap();
                let e = entries.get(&name_).ok_or_else(|| {
                    Error::NoSuchContainer(format!("no container named {name_:?}"))
                })?;
                (
                    e.spec.root.clone(),
                    crate::mount::ContainerDirs::under(&self.layout.container_dir(&name_)).upper,
                )
            };
            let mut l = vec![upper];
            match root {
                crate::spec::Root::Directory(d) => l.push(d),
                crate::spec::Root::Image(i) => l.extend(self.resolve_image(&i)?.lowers),
            }
            l
        };
        let n = name_.clone();
        self.with_progress(&name_, move |p| {
            p.send("exporting", 0, 0, 0, 0, true);
            let out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::from(fd));
            image::export_layers(&layers, out)
                .map(|_| ())
                .map_err(|e| bus_error(e.kind(), format!("export of {n:?}: {e}")))
        })
        .await
    }
}

/// A name for a pulled image: the repository's last component, plus `-TAG` unless the tag is
/// `latest` (`docker.io/library/debian:12` → `debian-12`).
fn default_name(r: &reg::Reference) -> String {
    let base = r.repository.rsplit('/').next().unwrap_or("image");
    let mut n = match r.tag.as_deref() {
        Some(t) if t != "latest" && r.digest.is_none() => format!("{base}-{t}"),
        _ => base.to_string(),
    };
    n.retain(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    n.truncate(64);
    n
}

/// Counts one image operation in flight; dropping it ends the operation.
struct OperationGuard(Arc<Registry>);

impl Drop for OperationGuard {
    fn drop(&mut self) {
        self.0
            .operations
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_signals() {
        assert_eq!(parse_stop_signal("SIGQUIT"), Some(Signal::SIGQUIT));
        assert_eq!(parse_stop_signal("int"), Some(Signal::SIGINT));
        assert_eq!(parse_stop_signal("9"), Some(Signal::SIGKILL));
        assert_eq!(parse_stop_signal("SIGBOGUS"), None);
    }

    #[test]
    fn pulled_image_names() {
        let r: reg::Reference = "docker.io/library/debian:12".parse().unwrap();
        assert_eq!(default_name(&r), "debian-12");
        let r: reg::Reference = "127.0.0.1:5000/test/a".parse().unwrap();
        assert_eq!(default_name(&r), "a");
    }
}
