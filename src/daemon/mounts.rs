//! A container's volumes, bind mounts and writable layer as berthd prepares them at start,
//! and the named-volume store (`berthctl volume`).
//!
//! **Sources are opened by berthd, on the host side, before the container exists**: each bind
//! source and volume becomes a detached clone (`open_tree(OPEN_TREE_CLONE)`), made nosuid and
//! nodev (and read-only, noexec as asked) with `mount_setattr`, then idmapped through the
//! container's user namespace once its maps are written — so the container's mapped root
//! owns a volume's `_data`, and nothing on the host is ever chowned. The clones travel to the
//! leader with sync #3; it attaches each on a mount point it resolves inside the root
//! ([`crate::mount::MountOp::Attach`]). No path on the host is looked up by the container.
//!
//! **Anonymous volumes**: `-v /path` and the image's `VOLUME` entries (unless the user mounts
//! something there) get a volume of their own, named by 64 hex digits, recorded in the
//! container's directory (`volumes.json`) so every start finds the same one, and removed with
//! the container.
//!
//! **Ephemeral containers** (`--ephemeral`) get a fresh writable layer at every start, under
//! the container's directory, removed at exit.

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use tracing::{info, warn};

use super::error::{Error, Result};
use super::store;
use super::table::Registry;
use crate::image::ImageConfig;
use crate::mount::ContainerDirs;
use crate::spec::ContainerSpec;
use crate::sys::mount_api::{self, MountAttrFlags};
use crate::volume::{ContainerPath, MountSource, MountSpec, VolumeError, VolumeName, VolumeStore};

/// One detached mount for the leader.
pub(super) struct Source {
    pub fd: OwnedFd,
    /// A directory (else a file).
    pub dir: bool,
    pub idmap: bool,
    pub recursive: bool,
}

/// One volume, as ListVolumes shows it.
#[derive(Debug, Clone)]
pub struct VolumeView {
    pub record: crate::volume::VolumeRecord,
    /// The containers whose definitions mount it.
    pub users: Vec<String>,
}

const ANONYMOUS: &str = "volumes.json";

/// Where an ephemeral container's writable layer lives.
pub(super) fn ephemeral_dirs(dirs: &ContainerDirs) -> ContainerDirs {
    let base = dirs
        .root
        .parent()
        .map(|p| p.join("ephemeral"))
        .unwrap_or_else(|| PathBuf::from("ephemeral"));
    ContainerDirs {
        upper: base.join("upper"),
        work: base.join("work"),
        root: dirs.root.clone(),
    }
}

fn remake(dirs: &ContainerDirs) -> std::io::Result<()> {
    let base = dirs.upper.parent().unwrap_or(Path::new("/nonexistent"));
    match std::fs::remove_dir_all(base) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::fs::create_dir(base)?;
    std::fs::create_dir(&dirs.upper)?;
    std::fs::create_dir(&dirs.work)
}

/// A fresh, empty writable layer for an ephemeral container, owned by its root.
pub(super) fn fresh_ephemeral(dirs: &ContainerDirs, range: crate::userns::IdRange) -> Result<()> {
    remake(dirs)
        .and_then(|()| super::security::own_upper(&dirs.upper, Some(range)))
        .map_err(|e| Error::io(format!("the ephemeral layer {}", dirs.upper.display()), e))
}

/// [`fresh_ephemeral`] without a user namespace.
pub(super) fn fresh_ephemeral_unmapped(dirs: &ContainerDirs) -> Result<()> {
    remake(dirs).map_err(|e| Error::io(format!("the ephemeral layer {}", dirs.upper.display()), e))
}

fn volume_error(e: VolumeError) -> Error {
    match e {
        VolumeError::NoSuchVolume(_) => Error::Bus(crate::dbus::Error::NoSuchVolume(e.to_string())),
        VolumeError::InUse { .. } => Error::Bus(crate::dbus::Error::InvalidState(e.to_string())),
        VolumeError::AlreadyExists(_) => Error::AlreadyExists(e.to_string()),
        VolumeError::TooManyVolumes => Error::LimitExceeded(e.to_string()),
        VolumeError::Io { .. } | VolumeError::BadRecord { .. } => Error::Failed(e.to_string()),
        e => Error::InvalidArgument(e.to_string()),
    }
}

/// The anonymous volumes of a container, by target.
fn anonymous_of(dir: &Path) -> BTreeMap<String, VolumeName> {
    std::fs::read(dir.join(ANONYMOUS))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Open a detached clone of `path` with the attributes every container mount gets.
fn clone_of(fd: OwnedFd, what: &str, m: &MountSpec, recursive: bool) -> Result<Source> {
    let mut set = MountAttrFlags::NOSUID | MountAttrFlags::NODEV;
    if m.read_only {
        set = set | MountAttrFlags::RDONLY;
    }
    if m.noexec {
        set = set | MountAttrFlags::NOEXEC;
    }
    mount_api::mount_setattr(fd.as_fd(), recursive, set, MountAttrFlags::empty())
        .map_err(|e| Error::Failed(format!("cannot set the attributes of {what}: {}", e.desc())))?;
    let st = nix::sys::stat::fstat(fd.as_fd())
        .map_err(|e| Error::Failed(format!("stat {what}: {}", e.desc())))?;
    Ok(Source {
        fd,
        dir: st.st_mode & libc::S_IFMT == libc::S_IFDIR,
        idmap: m.idmap,
        recursive,
    })
}

impl Registry {
    /// The named-volume store.
    pub(super) fn volumes(&self) -> Result<VolumeStore> {
        VolumeStore::open(&self.layout.lib.join("volumes")).map_err(volume_error)
    }

    /// Every mount of a start — the definition's, then an anonymous volume for each of the
    /// image's `VOLUME` paths nobody mounts over — and the detached mounts their binds and
    /// volumes need, in order.
    pub(super) fn mount_sources(
        &self,
        spec: &ContainerSpec,
        image: Option<&ImageConfig>,
    ) -> Result<(Vec<MountSpec>, Vec<Source>)> {
        let mut mounts = spec.mounts.clone();
        for v in image.map(|i| i.volumes.as_slice()).unwrap_or_default() {
            match ContainerPath::parse(v) {
                Ok(target) if !mounts.iter().any(|m| m.target == target) => {
                    if mounts.len() >= crate::volume::mounts::MAX_MOUNTS {
                        warn!(
                            "{}: image volume {v} is over the limit of mounts, skipped",
                            spec.name()
                        );
                        continue;
                    }
                    mounts.push(
                        crate::volume::mounts::parse_volume(target.as_str(), &|_| true)
                            .map_err(volume_error)?
                            .spec,
                    );
                }
                Ok(_) => {}
                Err(e) => warn!("{}: the image's VOLUME {v:?} is skipped: {e}", spec.name()),
            }
        }
        if mounts.is_empty() {
            return Ok((mounts, Vec::new()));
        }
        let dir = self.layout.container_dir(spec.name());
        let mut anonymous = anonymous_of(&dir);
        let before = anonymous.len();
        let mut sources = Vec::new();
        let store = self.volumes()?;
        for m in &mounts {
            match &m.source {
                MountSource::Tmpfs { .. } => {}
                MountSource::Bind { path, recursive } => {
                    let p = path.as_path();
                    let canon = p.canonicalize().map_err(|e| {
                        Error::InvalidArgument(format!("bind mount source {}: {e}", p.display()))
                    })?;
                    let fd = mount_api::open_tree_clone(None, &canon, *recursive).map_err(|e| {
                        Error::InvalidArgument(format!(
                            "bind mount source {}: {}",
                            p.display(),
                            e.desc()
                        ))
                    })?;
                    sources.push(clone_of(fd, &p.display().to_string(), m, *recursive)?);
                }
                MountSource::Volume { name } => {
                    let name = match name {
                        Some(n) => {
                            // A named volume is made on first use, as podman does.
                            if let Err(VolumeError::NoSuchVolume(_)) = store.get(n) {
                                store
                                    .create(n, BTreeMap::new(), store::now_usec())
                                    .map_err(volume_error)?;
                                info!("created volume {} for {}", n.as_str(), spec.name());
                            }
                            n.clone()
                        }
                        None => match anonymous.get(m.target.as_str()) {
                            Some(n) if store.get(n).is_ok() => n.clone(),
                            _ => {
                                let rec = store
                                    .create_anonymous(store::now_usec())
                                    .map_err(volume_error)?;
                                anonymous.insert(m.target.as_str().to_string(), rec.name.clone());
                                rec.name
                            }
                        },
                    };
                    let data = store.open_data(&name).map_err(volume_error)?;
                    let fd = mount_api::open_tree_clone_fd(data.as_fd(), false).map_err(|e| {
                        Error::Failed(format!("volume {}: {}", name.as_str(), e.desc()))
                    })?;
                    sources.push(clone_of(
                        fd,
                        &format!("volume {}", name.as_str()),
                        m,
                        false,
                    )?);
                }
            }
        }
        if anonymous.len() != before {
            let bytes = serde_json::to_vec_pretty(&anonymous).expect("a map serialises");
            store::write_atomic(&dir.join(ANONYMOUS), &bytes)
                .map_err(|e| Error::io("record the anonymous volumes", e))?;
        }
        Ok((mounts, sources))
    }

    /// Remove a removed container's anonymous volumes (`dir` is where its directory was).
    pub(super) fn remove_anonymous(&self, name: &str, volumes: BTreeMap<String, VolumeName>) {
        let Ok(store) = self.volumes() else { return };
        for (_, v) in volumes {
            match store.remove(&v, &BTreeSet::new()) {
                Ok(()) | Err(VolumeError::NoSuchVolume(_)) => {}
                Err(e) => warn!(
                    "cannot remove the anonymous volume {} of {name}: {e}, ignoring",
                    v.as_str()
                ),
            }
        }
    }

    /// The anonymous volumes recorded for a container.
    pub(super) fn anonymous_volumes(&self, name: &str) -> BTreeMap<String, VolumeName> {
        anonymous_of(&self.layout.container_dir(name))
    }

    /// An ephemeral container exited: its writable layer goes.
    pub(super) fn discard_ephemeral(&self, name: &str) {
        let dirs = ephemeral_dirs(&ContainerDirs::under(&self.layout.container_dir(name)));
        if let Some(base) = dirs.upper.parent()
            && let Err(e) = std::fs::remove_dir_all(base)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            warn!("cannot discard the writable layer of {name}: {e}, ignoring");
        }
    }

    /// The containers whose definitions mount volume `name`, or whose anonymous volume it is.
    fn volume_users(&self, name: &VolumeName) -> BTreeSet<String> {
        let (mut users, names): (BTreeSet<String>, Vec<String>) = {
            let entries = self.entries.lock().unwrap();
            let users = entries
                .iter()
                .filter(|(_, e)| {
                    e.spec.mounts.iter().any(
                        |m| matches!(&m.source, MountSource::Volume { name: Some(n) } if n == name),
                    )
                })
                .map(|(n, _)| n.clone())
                .collect();
            (users, entries.keys().cloned().collect())
        };
        for c in names {
            if self.anonymous_volumes(&c).values().any(|v| v == name) {
                users.insert(c);
            }
        }
        users
    }

    pub(super) fn create_volume(
        &self,
        name: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<String> {
        let n = VolumeName::parse(name).map_err(volume_error)?;
        self.volumes()?
            .create(&n, labels, store::now_usec())
            .map_err(volume_error)?;
        info!("created volume {name}");
        Ok(name.to_string())
    }

    pub(super) fn list_volumes(&self) -> Result<Vec<VolumeView>> {
        let records = self.volumes()?.list().map_err(volume_error)?;
        Ok(records
            .into_iter()
            .map(|record| VolumeView {
                users: self.volume_users(&record.name).into_iter().collect(),
                record,
            })
            .collect())
    }

    pub(super) fn remove_volume(&self, name: &str) -> Result<()> {
        let n = VolumeName::parse(name).map_err(volume_error)?;
        let users = self.volume_users(&n);
        self.volumes()?.remove(&n, &users).map_err(volume_error)?;
        info!("removed volume {name}");
        Ok(())
    }
}

/// Idmap the sources that ask for it through the leader's user namespace (maps written):
/// on-disk 0 is the container's root. Without a user namespace, IDs are the host's anyway.
pub(super) fn idmap_sources(pid: i32, plan: &crate::plan::Plan, sources: &[Source]) -> Result<()> {
    if plan.security.id_maps.is_none() || !sources.iter().any(|s| s.idmap) {
        return Ok(());
    }
    let userns = super::security::userns_of(pid)
        .map_err(|e| Error::io("open the container's user namespace", e))?;
    for s in sources.iter().filter(|s| s.idmap) {
        mount_api::mount_setattr_idmap(s.fd.as_fd(), s.recursive, userns.as_fd(), MountAttrFlags::empty())
            .map_err(|e| {
                Error::Failed(format!(
                    "cannot idmap a mount for the container (does its file system support idmapped mounts?): {}",
                    e.desc()
                ))
            })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ephemeral_layer_lives_beside_the_root_and_is_made_fresh() {
        let t = tempfile::tempdir().unwrap();
        let dirs = ephemeral_dirs(&ContainerDirs::under(t.path()));
        assert_eq!(dirs.upper, t.path().join("ephemeral/upper"));
        assert_eq!(dirs.work, t.path().join("ephemeral/work"));
        assert_eq!(dirs.root, t.path().join("root"));
        fresh_ephemeral_unmapped(&dirs).unwrap();
        std::fs::write(dirs.upper.join("left"), "x").unwrap();
        fresh_ephemeral_unmapped(&dirs).unwrap();
        assert_eq!(std::fs::read_dir(&dirs.upper).unwrap().count(), 0);
    }

    #[test]
    fn layout_is_where_volumes_live() {
        let l = super::super::store::Layout::default();
        assert_eq!(l.lib.join("volumes"), Path::new("/var/lib/berth/volumes"));
    }
}
