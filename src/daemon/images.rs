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
use crate::image::{self, ErrorKind, ImageConfig, ImageRecord, registry as reg};
use crate::name;

mod objects;
mod transfer;
mod users;

/// Sizes of the directory images shipped with berth, measured once per install.
static SHIPPED_SIZES: std::sync::LazyLock<image::usage::SizeCache> =
    std::sync::LazyLock::new(image::usage::SizeCache::default);

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
    /// The stored image's ID (none for directories, shipped or given).
    pub id: Option<image::Digest>,
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
        size: SHIPPED_SIZES.usage(dir).apparent,
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
        image::ImageRef::parse(image)
            .map_err(|e| invalid(format!("invalid image name {image:?}: {e}")))?;
        match self.images.get(image) {
            Ok(rec) => {
                let mut lowers = self.images.layer_paths(&rec);
                lowers.reverse();
                return Ok(Rootfs {
                    lowers,
                    config: Some(rec.config),
                    shown: PathBuf::new(),
                    id: Some(rec.config_digest),
                });
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(store_error(e)),
        }
        let dir = shipped_name(image)
            .and_then(|n| self.layout.find_image(n))
            .ok_or_else(|| Error::NoSuchImage(format!("no image named {image:?}")))?;
        Ok(Rootfs {
            lowers: vec![dir.clone()],
            config: None,
            shown: dir,
            id: None,
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

    /// The image a name means: a stored image by any spelling (`web`, `web:latest`, an ID),
    /// else a shipped directory image.
    pub(super) fn image_info(&self, image: &str) -> Option<ImageInfo> {
        if let Ok(mut rec) = self.images.get(image) {
            // Looked up by ID (or a prefix): bus objects exist per tag, so an image that has
            // tags is answered with its first tag's object.
            if rec.name.starts_with("sha256:")
                && let Some(t) = rec.tags.first()
            {
                rec.name = t.clone();
            }
            return Some(info_of(&rec));
        }
        let n = shipped_name(image)?;
        let dir = self.layout.find_image(n)?;
        Some(system_image(n, &dir))
    }

    /// The image's config as the `Image.Config` property shows it.
    pub(super) fn image_config(&self, image: &str) -> Option<ImageConfig> {
        self.images.get(image).ok().map(|r| r.config)
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

    fn check_new_name(&self, new: &str) -> Result<()> {
        self.images.check_new_name(new).map_err(store_error)?;
        if shipped_name(new).is_some_and(|n| self.layout.find_image(n).is_some()) {
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
        type Import = fn(
            &image::Store,
            &std::path::Path,
            &str,
            &(dyn Fn(image::ImportProgress) + Sync),
        ) -> std::result::Result<ImageRecord, image::ImportError>;
        let import: Import = match format.as_str() {
            "fs" | "directory" => image::import_fs_with,
            "tar" => image::import_tar_with,
            "oci" | "docker" => image::import_oci_with,
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
                let r = import(&store, &src, &n, &|ev| import_progress(p, ev))
                    .map_err(|e| bus_error(e.kind(), e.to_string()));
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
        opts: reg::PullOptions,
    ) -> Result<OwnedObjectPath> {
        let r: reg::Reference = reference
            .parse()
            .map_err(|e: reg::RegistryError| bus_error(e.kind(), e.to_string()))?;
        // The local tag: the name given, or the reference itself; an existing tag moves.
        let tag = if image.is_empty() {
            image::TagName::of(&r).display()
        } else {
            image::TagName::parse(&image)
                .map_err(|e| invalid(e.to_string()))?
                .display()
        };
        if r.digest.is_none() && image.is_empty() || !image.is_empty() {
            self.check_not_shipped(&tag)?;
        }
        let store = self.images.clone();
        let name_for_pull = (!image.is_empty()).then(|| image.clone());
        let started = Instant::now();
        let out = self
            .with_progress(&tag, move |p| {
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
                let extract = |ev: image::ImportProgress| {
                    if let image::ImportProgress::LayerDone { index, count, .. } = ev {
                        p.send("extracting", 0, 0, index as u32 + 1, count as u32, true);
                    }
                };
                let out = image::ops::pull_image(
                    &store,
                    &reference,
                    name_for_pull.as_deref(),
                    &opts,
                    &report,
                    &extract,
                )
                .map_err(|e| bus_error(e.kind(), e.to_string()))?;
                let layers = out.pulled.manifest.layers().len() as u32;
                if out.unchanged() {
                    p.send("up-to-date", 0, 0, layers, layers, true);
                }
                p.send("done", 0, 0, layers, layers, true);
                Ok(out)
            })
            .await?;
        let rec = &out.created.record;
        info!(
            "pulled image {} ({} layers) from {}: fetched {} blobs, {} bytes, in {:?}{}",
            rec.name,
            rec.layers.len(),
            r,
            out.pulled.fetched_blobs,
            out.pulled.fetched_bytes,
            started.elapsed(),
            if out.unchanged() { ", unchanged" } else { "" }
        );
        if let Some(prev) = out.created.previous {
            // The image the tag named before is now shown under its ID if nothing else names it.
            self.export_image_object(&prev.to_string()).await;
        }
        Ok(self.announce(rec).await)
    }

    /// A shipped directory image's name cannot become a tag (it would hide the directory).
    fn check_not_shipped(&self, tag: &str) -> Result<()> {
        if shipped_name(tag).is_some_and(|n| self.layout.find_image(n).is_some()) {
            return Err(Error::AlreadyExists(format!(
                "{tag:?} is an image shipped with berth"
            )));
        }
        Ok(())
    }

    pub(super) async fn remove_image(&self, image: String, force: bool) -> Result<()> {
        // A tag of an image other tags also name only goes away: no container loses its
        // image. The last name (or the ID) takes the image, so its users count.
        let untag_only = matches!(self.images.resolve(&image), Ok((Some(_), _)))
            && self.images.get(&image).is_ok_and(|r| r.tags.len() > 1);
        let users = if untag_only {
            Vec::new()
        } else {
            self.users_of(&image)
        };
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
            Err(_) => shipped_name(&image).is_some_and(|n| self.layout.find_image(n).is_some()),
        };
        if shipped {
            return Err(Error::InvalidState(format!(
                "image {image:?} is shipped with berth and read-only"
            )));
        }
        if self.images.get(&image).is_err() && self.entries.lock().unwrap().contains_key(&image) {
            return Err(Error::NoSuchImage(format!(
                "no image named {image:?} ({image:?} is a container: `berthctl rm {image}`)"
            )));
        }
        let store = self.images.clone();
        let n = image.clone();
        let in_use = self.ids_in_use();
        let removed =
            tokio::task::spawn_blocking(move || store.remove_with(&n, &|d| in_use.contains(d)))
                .await
                .map_err(|e| Error::Failed(e.to_string()))?
                .map_err(store_error)?;
        info!(
            "removed image {image}: untagged {:?}, deleted {:?}, {} bytes freed",
            removed.untagged, removed.deleted, removed.freed_bytes
        );
        for t in &removed.untagged {
            self.retire(t).await;
        }
        if let Some(id) = removed.deleted {
            self.retire(&id.to_string()).await;
        } else if let Ok((None, id)) = self.images.resolve(&image) {
            self.export_image_object(&id.to_string()).await;
        }
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
        if op == "rename" {
            let by_name = self.users_by_name(&image);
            if !by_name.is_empty() {
                return Err(Error::InvalidState(format!(
                    "image {image:?} is used by container(s) {}, which refer to it by name",
                    by_name.join(", ")
                )));
            }
        }
        let shipped = self.images.get(&image).is_err()
            && op == "clone"
            && shipped_name(&image).is_some_and(|n| self.layout.find_image(n).is_some());
        let rec = if shipped {
            // A shipped directory image becomes a stored one-layer image under the new name.
            let dir = self
                .layout
                .find_image(shipped_name(&image).unwrap_or_default())
                .ok_or_else(|| Error::NoSuchImage(format!("no image named {image:?}")))?;
            let store = self.images.clone();
            let n = new.clone();
            self.with_progress(&new, move |p| {
                image::import_fs_with(&store, &dir, &n, &|ev| import_progress(p, ev))
                    .map_err(|e| bus_error(e.kind(), e.to_string()))
            })
            .await?
        } else {
            match op {
                "rename" => self.images.rename(&image, &new),
                "clone" => self.images.clone_image(&image, &new),
                _ => self.images.tag(&image, &new),
            }
            .map_err(store_error)?
        };
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
            let (spec, upper) = {
                let entries = self.entries.lock().unwrap();
                let e = entries.get(&name_).ok_or_else(|| {
                    Error::NoSuchContainer(format!("no container named {name_:?}"))
                })?;
                (
                    e.spec.clone(),
                    crate::mount::ContainerDirs::under(&self.layout.container_dir(&name_)).upper,
                )
            };
            let mut l = vec![upper];
            l.extend(self.container_root(&spec)?.lowers);
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

/// The name of a shipped directory image a user string may mean: a plain name, with or
/// without `:latest`.
fn shipped_name(image: &str) -> Option<&str> {
    let n = image.strip_suffix(":latest").unwrap_or(image);
    name::validate(n).is_ok().then_some(n)
}

/// Import progress as `ImageProgress`: bytes of the source, then layers.
fn import_progress(p: &Progress, ev: image::ImportProgress) {
    match ev {
        image::ImportProgress::Bytes { done, total } => {
            p.send("importing", done, total, 0, 0, false);
        }
        image::ImportProgress::LayerDone { index, count, .. } => {
            p.send("extracting", 0, 0, index as u32 + 1, count as u32, true);
        }
        image::ImportProgress::LayerStarted { .. } => {}
    }
}

/// Registry options of PullImage, PushImage and Login: Insecure (b) and AuthFile (s, an
/// absolute path). Pulls and pushes read /etc/berth/auth.json when no file is named.
pub(super) fn registry_options(
    o: &mut crate::dbus::options::Checked,
    default_auth: bool,
) -> Result<reg::PullOptions> {
    let mut opts = reg::PullOptions {
        insecure: o.take::<bool>("Insecure")?.unwrap_or(false),
        ..Default::default()
    };
    if let Some(f) = o.take::<String>("AuthFile")? {
        if !f.starts_with('/') {
            return Err(invalid(format!("auth file {f:?} is not an absolute path")));
        }
        opts.auth_file = Some(f.into());
    }
    if default_auth && opts.auth_file.is_none() && std::path::Path::new(DEFAULT_AUTH_FILE).exists()
    {
        opts.auth_file = Some(DEFAULT_AUTH_FILE.into());
    }
    Ok(opts)
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
    fn shipped_names() {
        assert_eq!(shipped_name("default"), Some("default"));
        assert_eq!(shipped_name("default:latest"), Some("default"));
        assert_eq!(shipped_name("a/b"), None);
    }
}
