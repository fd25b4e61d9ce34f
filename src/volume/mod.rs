//! Named volumes (`berthctl volume create|ls|rm|inspect`) and the parsing of a container's
//! mounts ([`mounts`]).
//!
//! A volume is a directory under the store (`/var/lib/berth/volumes/NAME`): a record,
//! `volume.json`, and the data, `_data`, made empty with mode 0755 and owned by 0:0. It is
//! never chowned: a container sees it through an idmapped mount with the container's own ID
//! map, so its root owns `_data` inside, whatever range it was given. Image `VOLUME` entries
//! become anonymous volumes (named by 64 random hex digits, marked `anonymous`, removed with
//! their container) as podman does; an anonymous volume starts empty (berth does not copy the
//! image's content there).

pub mod mounts;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use mounts::{ContainerPath, HostPath, MountSource, MountSpec, Parsed, Relabel};

/// The most volumes a store holds.
pub const MAX_VOLUMES: usize = 4096;
/// The most labels per volume, and their sizes.
pub const MAX_LABELS: usize = 64;
const MAX_LABEL_KEY: usize = 128;
const MAX_LABEL_VALUE: usize = 4096;
/// The only driver.
pub const DRIVER: &str = "local";
const RECORD: &str = "volume.json";
const DATA: &str = "_data";

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error(
        "volume name {0:?}: 1 to 64 characters of [A-Za-z0-9._-], starting with a letter or digit"
    )]
    InvalidName(String),
    #[error("invalid path {path:?}: {reason}")]
    InvalidPath { path: String, reason: &'static str },
    #[error("invalid {option}: {reason}")]
    InvalidMount { option: String, reason: String },
    #[error("a container may have at most {max} mounts, not {0}", max = mounts::MAX_MOUNTS)]
    TooManyMounts(usize),
    #[error("two mounts on {0}")]
    DuplicateTarget(String),
    #[error("invalid label {0:?}")]
    InvalidLabel(String),
    #[error("no volume {0:?}")]
    NoSuchVolume(String),
    #[error("volume {0:?} exists")]
    AlreadyExists(String),
    #[error("volume {name:?} is in use by {}", users.join(", "))]
    InUse { name: String, users: Vec<String> },
    #[error("the store holds the most volumes it may ({MAX_VOLUMES})")]
    TooManyVolumes,
    #[error("volume record {path}: {reason}")]
    BadRecord { path: PathBuf, reason: String },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> VolumeError + 'a {
    move |source| VolumeError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// A checked volume name: the rules of container names (1–64 characters of
/// `[A-Za-z0-9._-]`, starting with a letter or digit), so it is one safe path component.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct VolumeName(String);

impl VolumeName {
    pub fn parse(s: &str) -> Result<VolumeName, VolumeError> {
        crate::name::validate(s)
            .map(|()| VolumeName(s.to_string()))
            .map_err(|_| VolumeError::InvalidName(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for VolumeName {
    type Error = VolumeError;
    fn try_from(s: String) -> Result<Self, VolumeError> {
        VolumeName::parse(&s)
    }
}

impl From<VolumeName> for String {
    fn from(n: VolumeName) -> String {
        n.0
    }
}

/// What `volume inspect` shows, and what `volume.json` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeRecord {
    pub name: VolumeName,
    /// Always "local".
    pub driver: String,
    /// Microseconds since the epoch.
    pub created_at: u64,
    pub labels: BTreeMap<String, String>,
    /// Made for one container (an image's VOLUME, `-v /path`), removed with it.
    pub anonymous: bool,
}

fn check_labels(labels: &BTreeMap<String, String>) -> Result<(), VolumeError> {
    if labels.len() > MAX_LABELS {
        return Err(VolumeError::InvalidLabel(format!(
            "more than {MAX_LABELS} labels"
        )));
    }
    for (k, v) in labels {
        let key_ok = !k.is_empty()
            && k.len() <= MAX_LABEL_KEY
            && !k.contains('=')
            && !k.chars().any(char::is_control);
        if !key_ok || v.len() > MAX_LABEL_VALUE || v.chars().any(|c| c.is_control() && c != '\t') {
            return Err(VolumeError::InvalidLabel(k.clone()));
        }
    }
    Ok(())
}

/// The volume store: one directory per volume.
#[derive(Debug, Clone)]
pub struct VolumeStore {
    dir: PathBuf,
}

impl VolumeStore {
    /// Open (and make, mode 0700) the store at `dir`.
    pub fn open(dir: &Path) -> Result<VolumeStore, VolumeError> {
        std::fs::create_dir_all(dir).map_err(io("create", dir))?;
        std::fs::set_permissions(dir, PermissionsExt::from_mode(0o700))
            .map_err(io("chmod", dir))?;
        Ok(VolumeStore {
            dir: dir.to_path_buf(),
        })
    }

    fn vol_dir(&self, name: &VolumeName) -> PathBuf {
        self.dir.join(name.as_str())
    }

    /// The data directory of a volume (what is mounted).
    pub fn data_dir(&self, name: &VolumeName) -> PathBuf {
        self.vol_dir(name).join(DATA)
    }

    /// The data directory as a descriptor (`O_PATH`, not following a symlink), for berthd
    /// to pass to the helper as a mount source; fails if the volume does not exist.
    pub fn open_data(&self, name: &VolumeName) -> Result<OwnedFd, VolumeError> {
        self.get(name)?;
        let p = self.data_dir(name);
        nix::fcntl::open(
            &p,
            nix::fcntl::OFlag::O_PATH
                | nix::fcntl::OFlag::O_DIRECTORY
                | nix::fcntl::OFlag::O_NOFOLLOW
                | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(|e| io("open", &p)(e.into()))
    }

    /// Make a volume. A directory of that name without a record (a create cut short) is
    /// cleared first.
    pub fn create(
        &self,
        name: &VolumeName,
        labels: BTreeMap<String, String>,
        now_usec: u64,
    ) -> Result<VolumeRecord, VolumeError> {
        self.make(name, labels, now_usec, false)
    }

    /// Make an anonymous volume with a fresh random name.
    pub fn create_anonymous(&self, now_usec: u64) -> Result<VolumeRecord, VolumeError> {
        let mut b = [0u8; 32];
        let mut f =
            std::fs::File::open("/dev/urandom").map_err(io("open", Path::new("/dev/urandom")))?;
        std::io::Read::read_exact(&mut f, &mut b).map_err(io("read", Path::new("/dev/urandom")))?;
        let name = VolumeName::parse(&hex::encode(b)).expect("64 hex digits are a valid name");
        self.make(&name, BTreeMap::new(), now_usec, true)
    }

    fn make(
        &self,
        name: &VolumeName,
        labels: BTreeMap<String, String>,
        now_usec: u64,
        anonymous: bool,
    ) -> Result<VolumeRecord, VolumeError> {
        check_labels(&labels)?;
        if self.names()?.len() >= MAX_VOLUMES {
            return Err(VolumeError::TooManyVolumes);
        }
        let dir = self.vol_dir(name);
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                if dir.join(RECORD).exists() {
                    return Err(VolumeError::AlreadyExists(name.as_str().into()));
                }
                std::fs::remove_dir_all(&dir).map_err(io("clear", &dir))?;
                std::fs::create_dir(&dir).map_err(io("create", &dir))?;
            }
            Err(e) => return Err(io("create", &dir)(e)),
        }
        std::fs::set_permissions(&dir, PermissionsExt::from_mode(0o700))
            .map_err(io("chmod", &dir))?;
        let data = dir.join(DATA);
        std::fs::create_dir(&data).map_err(io("create", &data))?;
        // Explicitly: the umask must not decide what a container's root may do in it.
        std::fs::set_permissions(&data, PermissionsExt::from_mode(0o755))
            .map_err(io("chmod", &data))?;
        let rec = VolumeRecord {
            name: name.clone(),
            driver: DRIVER.into(),
            created_at: now_usec,
            labels,
            anonymous,
        };
        // The record last, atomically: a volume exists once its record does.
        let tmp = dir.join(".volume.json.tmp");
        let mut f = std::fs::File::create(&tmp).map_err(io("create", &tmp))?;
        f.write_all(&serde_json::to_vec_pretty(&rec).expect("a record serialises"))
            .and_then(|()| f.sync_all())
            .map_err(io("write", &tmp))?;
        std::fs::rename(&tmp, dir.join(RECORD)).map_err(io("rename", &tmp))?;
        Ok(rec)
    }

    /// The record of a volume.
    pub fn get(&self, name: &VolumeName) -> Result<VolumeRecord, VolumeError> {
        let path = self.vol_dir(name).join(RECORD);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(VolumeError::NoSuchVolume(name.as_str().into()));
            }
            Err(e) => return Err(io("read", &path)(e)),
        };
        let rec: VolumeRecord =
            serde_json::from_slice(&bytes).map_err(|e| VolumeError::BadRecord {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        if &rec.name != name {
            return Err(VolumeError::BadRecord {
                path,
                reason: format!("it names {:?}", rec.name.as_str()),
            });
        }
        Ok(rec)
    }

    /// The names of the store's entries that are volume names (records or not).
    fn names(&self) -> Result<Vec<VolumeName>, VolumeError> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(&self.dir).map_err(io("read", &self.dir))? {
            let e = e.map_err(io("read", &self.dir))?;
            if let Some(n) = e
                .file_name()
                .to_str()
                .and_then(|n| VolumeName::parse(n).ok())
            {
                out.push(n);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Every volume, by name. Directories without a valid record are left out.
    pub fn list(&self) -> Result<Vec<VolumeRecord>, VolumeError> {
        Ok(self
            .names()?
            .into_iter()
            .filter_map(|n| self.get(&n).ok())
            .collect())
    }

    /// Remove a volume and its data, unless `users` (the containers that mount it, as the
    /// caller knows them) is not empty.
    pub fn remove(&self, name: &VolumeName, users: &BTreeSet<String>) -> Result<(), VolumeError> {
        self.get(name)?;
        if !users.is_empty() {
            return Err(VolumeError::InUse {
                name: name.as_str().into(),
                users: users.iter().cloned().collect(),
            });
        }
        // Out of sight first, so a removal cut short never leaves a half volume listed.
        let dir = self.vol_dir(name);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let gone = self
            .dir
            .join(format!(".removing-{}-{nanos}", name.as_str()));
        std::fs::rename(&dir, &gone).map_err(io("rename", &dir))?;
        // remove_dir_all never follows symlinks a container left in the data.
        std::fs::remove_dir_all(&gone).map_err(io("remove", &gone))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn store() -> (tempfile::TempDir, VolumeStore) {
        let t = tempfile::tempdir().unwrap();
        let s = VolumeStore::open(&t.path().join("volumes")).unwrap();
        (t, s)
    }

    fn n(s: &str) -> VolumeName {
        VolumeName::parse(s).unwrap()
    }

    #[test]
    fn names_follow_container_names() {
        for ok in ["data", "pg-data_1.0", "9"] {
            assert!(VolumeName::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "-x",
            ".hidden",
            "_data",
            &"a".repeat(65),
            "a b",
        ] {
            assert!(
                matches!(VolumeName::parse(bad), Err(VolumeError::InvalidName(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn create_inspect_list_remove() {
        let (_t, s) = store();
        let labels = BTreeMap::from([("app".to_string(), "web".to_string())]);
        let rec = s.create(&n("data"), labels.clone(), 42).unwrap();
        assert_eq!(rec.driver, "local");
        assert_eq!(rec.labels, labels);
        assert!(!rec.anonymous);
        assert_eq!(s.get(&n("data")).unwrap(), rec);
        let m = std::fs::metadata(s.data_dir(&n("data"))).unwrap();
        assert!(m.is_dir());
        assert_eq!((m.mode() & 0o7777, m.uid(), m.gid()), (0o755, 0, 0));
        assert_eq!(
            std::fs::read_dir(s.data_dir(&n("data"))).unwrap().count(),
            0
        );
        assert!(matches!(
            s.create(&n("data"), BTreeMap::new(), 43),
            Err(VolumeError::AlreadyExists(_))
        ));
        let anon = s.create_anonymous(44).unwrap();
        assert!(anon.anonymous && anon.name.as_str().len() == 64);
        let names: Vec<_> = s.list().unwrap().into_iter().map(|r| r.name).collect();
        assert_eq!(names.len(), 2);
        assert!(names.contains(&n("data")));
        let fd = s.open_data(&n("data")).unwrap();
        assert!(nix::sys::stat::fstat(&fd).unwrap().st_mode & libc::S_IFMT == libc::S_IFDIR);
        // In use: refused, nothing removed.
        std::fs::write(s.data_dir(&n("data")).join("f"), "x").unwrap();
        let users = BTreeSet::from(["web".to_string()]);
        assert!(matches!(
            s.remove(&n("data"), &users),
            Err(VolumeError::InUse { users, .. }) if users == ["web"]
        ));
        assert!(s.data_dir(&n("data")).join("f").exists());
        s.remove(&n("data"), &BTreeSet::new()).unwrap();
        assert!(matches!(
            s.get(&n("data")),
            Err(VolumeError::NoSuchVolume(_))
        ));
        assert!(matches!(
            s.remove(&n("data"), &BTreeSet::new()),
            Err(VolumeError::NoSuchVolume(_))
        ));
        assert_eq!(s.list().unwrap().len(), 1);
    }

    #[test]
    fn removal_never_follows_symlinks_in_the_data() {
        let (t, s) = store();
        let outside = t.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("keep"), "x").unwrap();
        s.create(&n("v"), BTreeMap::new(), 1).unwrap();
        std::os::unix::fs::symlink(&outside, s.data_dir(&n("v")).join("link")).unwrap();
        s.remove(&n("v"), &BTreeSet::new()).unwrap();
        assert!(outside.join("keep").exists());
        assert_eq!(
            std::fs::read_dir(t.path().join("volumes")).unwrap().count(),
            0
        );
    }

    #[test]
    fn a_create_cut_short_is_redone_and_bad_records_are_reported() {
        let (t, s) = store();
        std::fs::create_dir_all(t.path().join("volumes/half/_data")).unwrap();
        assert!(
            s.list().unwrap().is_empty(),
            "a directory without a record is no volume"
        );
        s.create(&n("half"), BTreeMap::new(), 1).unwrap();
        std::fs::write(
            t.path().join("volumes/half/volume.json"),
            "{\"name\":\"other\"}",
        )
        .unwrap();
        assert!(matches!(
            s.get(&n("half")),
            Err(VolumeError::BadRecord { .. })
        ));
        assert!(s.list().unwrap().is_empty());
    }

    #[test]
    fn labels_are_bounded() {
        let (_t, s) = store();
        let many: BTreeMap<_, _> = (0..65).map(|i| (format!("k{i}"), String::new())).collect();
        for labels in [
            many,
            BTreeMap::from([("a=b".to_string(), String::new())]),
            BTreeMap::from([(String::new(), String::new())]),
            BTreeMap::from([("k".to_string(), "line\nbreak".to_string())]),
        ] {
            assert!(matches!(
                s.create(&n("x"), labels, 1),
                Err(VolumeError::InvalidLabel(_))
            ));
        }
        assert!(s.list().unwrap().is_empty());
    }
}
