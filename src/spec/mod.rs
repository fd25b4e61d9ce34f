//! What a container is: the stored [`Definition`] (as the user gave it), the typed
//! [`ContainerSpec`] that [`validate`] makes of it, and the pieces both are built from —
//! resource [`limits`], raw scope [`props`], the [`user`] to run as.
//!
//! [`validate`] is the only place a user's string is parsed or a host device is looked at:
//! create, start, `set` and recovery all work on its result.

pub mod declared;
pub mod definition;
pub mod lifecycle;
pub mod limits;
pub mod network;
pub mod props;
pub mod security;
pub mod ulimit;
pub mod user;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use thiserror::Error;

pub use definition::Definition;
pub use limits::{Limits, Resources};
pub use props::RawProperty;
pub use user::UserSpec;

use crate::image::ImageConfig;
use crate::name::{self, NameError};

/// The image used when neither an image nor a directory is given.
pub const DEFAULT_IMAGE: &str = "default";
/// Bounds on what a caller can make a plan carry.
pub const MAX_ARGS: usize = 4096;
pub const MAX_ARGV_BYTES: usize = 128 * 1024;
pub const MAX_ENV: usize = 4096;
pub const MAX_ENV_BYTES: usize = 128 * 1024;
pub const MAX_PROPERTIES: usize = 256;
pub const MAX_LABELS: usize = 256;
pub const MAX_LABEL_BYTES: usize = 64 * 1024;

/// What validation needs to know about the host, behind a trait so that it is tested without
/// one.
pub trait HostFacts {
    /// Whether the cgroup hierarchy is unified (cgroup v2 only).
    fn unified_cgroups(&self) -> bool;
    /// How many CPU numbers the machine may have.
    fn possible_cpus(&self) -> u32;
    /// Look up a device node.
    fn device(&self, path: &str) -> Result<limits::DeviceNode, String>;
    /// The canonical form of an existing directory.
    fn directory(&self, path: &Path) -> Result<PathBuf, String>;
    /// berth's default seccomp profile (made once).
    fn default_seccomp(&self) -> Arc<crate::seccomp::Profile>;
    /// A Docker/OCI seccomp profile read from the host and checked.
    fn seccomp_profile(&self, path: &Path) -> Result<crate::seccomp::Profile, String>;
}

/// The real host.
#[derive(Debug, Clone)]
pub struct Host {
    pub unified: bool,
    pub cpus: u32,
    pub seccomp: Arc<crate::seccomp::Profile>,
}

impl Host {
    /// Facts of this machine; `unified` comes from the cgroup mounts berthd found.
    pub fn new(unified: bool) -> Host {
        let cpus = std::fs::read_to_string("/sys/devices/system/cpu/possible")
            .ok()
            .and_then(|s| s.trim().rsplit(['-', ',']).next()?.parse::<u32>().ok())
            .map_or(1, |last| last + 1);
        Host {
            unified,
            cpus,
            seccomp: Arc::new(crate::seccomp::default_profile()),
        }
    }
}

impl HostFacts for Host {
    fn unified_cgroups(&self) -> bool {
        self.unified
    }
    fn possible_cpus(&self) -> u32 {
        self.cpus
    }
    fn device(&self, path: &str) -> Result<limits::DeviceNode, String> {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let md = std::fs::metadata(path).map_err(|e| format!("{path}: {e}"))?;
        let ft = md.file_type();
        if !ft.is_char_device() && !ft.is_block_device() {
            return Err(format!("{path} is not a device node"));
        }
        Ok(limits::DeviceNode {
            block: ft.is_block_device(),
            major: nix::sys::stat::major(md.rdev()),
            minor: nix::sys::stat::minor(md.rdev()),
        })
    }
    fn directory(&self, path: &Path) -> Result<PathBuf, String> {
        let canon = path
            .canonicalize()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if !canon.is_dir() {
            return Err(format!("{} is not a directory", path.display()));
        }
        Ok(canon)
    }
    fn default_seccomp(&self) -> Arc<crate::seccomp::Profile> {
        self.seccomp.clone()
    }
    fn seccomp_profile(&self, path: &Path) -> Result<crate::seccomp::Profile, String> {
        crate::seccomp::read_profile(path).map_err(|e| e.to_string())
    }
}

#[derive(Debug, Error, PartialEq)]
pub enum SpecError {
    #[error(transparent)]
    Name(#[from] NameError),
    #[error("invalid image name {0:?}")]
    ImageName(String),
    #[error("invalid image ID {0:?}")]
    ImageId(String),
    #[error("give an image or a directory, not both")]
    ImageAndDirectory,
    #[error("directory {0}")]
    Directory(String),
    #[error("invalid hostname {0:?}")]
    Hostname(String),
    #[error("{0}")]
    Command(&'static str),
    #[error("the environment is too large")]
    EnvTooLarge,
    #[error("environment entry {0:?} is not KEY=VALUE")]
    Env(String),
    #[error("working directory {0:?} is not an absolute path")]
    Workdir(String),
    #[error(transparent)]
    User(#[from] user::UserError),
    #[error(transparent)]
    Limit(#[from] limits::LimitError),
    #[error(transparent)]
    Property(#[from] props::PropertyError),
    #[error("label {0:?}: a key is non-empty, without '=', and neither holds control characters")]
    Label(String),
    #[error("at most {MAX_LABELS} labels of {MAX_LABEL_BYTES} bytes in all")]
    TooManyLabels,
    #[error("at most {MAX_PROPERTIES} properties")]
    TooManyProperties,
    #[error(transparent)]
    Security(#[from] security::SecurityError),
    #[error(transparent)]
    Network(#[from] network::NetworkSpecError),
    #[error(transparent)]
    Lifecycle(#[from] lifecycle::LifecycleError),
    /// A volume, bind mount or tmpfs (the message of [`crate::volume::VolumeError`]).
    #[error("{0}")]
    Mount(String),
    #[error(transparent)]
    LogDriver(#[from] LogDriverError),
    #[error("--boot needs a user namespace (not --userns=host): a booted init keeps CAP_SYS_ADMIN")]
    BootWithoutUserns,
}

/// An unknown `--log-driver`.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("log driver {0:?} (journald, none or passthrough)")]
pub struct LogDriverError(pub String);

/// Where a container's root comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Root {
    /// An image, by name: the store's, or a directory image shipped with berth.
    Image(String),
    /// A directory on the host, canonical, used as the read-only lower layer.
    Directory(PathBuf),
}

/// A checked container: every field typed, nothing left to parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSpec {
    /// The definition it was made from (what is stored, and what `set` changes).
    pub definition: Definition,
    pub root: Root,
    pub hostname: String,
    /// `KEY=VALUE` entries, checked.
    pub env: Vec<String>,
    pub workdir: Option<String>,
    pub user: Option<UserSpec>,
    pub limits: Limits,
    pub properties: Vec<RawProperty>,
    pub security: security::SecuritySpec,
    /// The stored image the container was created on (see [`Definition::image_id`]).
    pub image_id: Option<crate::image::Digest>,
    /// How it is networked (the image's EXPOSE ports are added at start for `-P`).
    pub network: crate::network::NetSpec,
    /// Readiness and restart policy (see [`lifecycle`]).
    pub life: lifecycle::LifeSpec,
    /// Volumes, bind mounts and tmpfs mounts, checked and bounded.
    pub mounts: Vec<crate::volume::MountSpec>,
    pub read_only: bool,
    pub ephemeral: bool,
    pub log_driver: crate::journal::LogDriver,
    /// `--boot` ([`crate::boot`]).
    pub boot: bool,
}

impl ContainerSpec {
    pub fn name(&self) -> &str {
        &self.definition.name
    }

    /// The payload's argv with the image's config (see [`Definition::argv`]).
    pub fn argv(&self, image: Option<&ImageConfig>) -> Vec<String> {
        self.definition.argv(image)
    }
}

/// Check a definition against the host and type every field.
pub fn validate(def: &Definition, facts: &dyn HostFacts) -> Result<ContainerSpec, SpecError> {
    name::validate(&def.name)?;
    let root = match (&def.image, &def.directory) {
        (Some(_), Some(_)) => return Err(SpecError::ImageAndDirectory),
        (None, Some(dir)) => Root::Directory(check_directory(dir, facts)?),
        (image, None) => {
            let image = image.as_deref().unwrap_or(DEFAULT_IMAGE);
            // Any spelling of an image: `web`, `alpine:3.20`, `registry:5000/app@sha256:…`, an ID.
            crate::image::ImageRef::parse(image).map_err(|_| SpecError::ImageName(image.into()))?;
            Root::Image(image.into())
        }
    };
    let hostname = def.hostname().to_string();
    check_hostname(&hostname)?;
    check_command(&def.command)?;
    if let Some(e) = &def.entrypoint {
        check_command(e)?;
    }
    check_env(&def.env)?;
    if let Some(w) = &def.workdir
        && (!w.starts_with('/') || w.contains('\0') || w.len() > 4096)
    {
        return Err(SpecError::Workdir(w.clone()));
    }
    let user = def.user.as_deref().map(UserSpec::parse).transpose()?;
    let limits = limits::check(&def.resources, facts)?;
    if def.properties.len() > MAX_PROPERTIES {
        return Err(SpecError::TooManyProperties);
    }
    let properties = def
        .properties
        .iter()
        .map(|(k, v)| props::parse(k, v, facts))
        .collect::<Result<_, _>>()?;
    let mut security = security::check(&def.security, facts)?;
    if def.boot_init {
        if security.userns.request().is_none() {
            return Err(SpecError::BootWithoutUserns);
        }
        security.caps = security.caps.union(crate::boot::CAPS);
    }
    check_labels(&def.labels)?;
    let image_id = match (&root, &def.image_id) {
        (Root::Image(_), Some(id)) => Some(
            id.parse::<crate::image::Digest>()
                .map_err(|_| SpecError::ImageId(id.clone()))?,
        ),
        (_, Some(id)) => return Err(SpecError::ImageId(id.clone())),
        (_, None) => None,
    };
    let network = network::check(&def.network, &limits, security.userns.request().is_some())?;
    let life = lifecycle::check(&def.lifecycle, def.auto_remove)?;
    let mounts = check_mounts(def)?;
    let log_driver = match def.log_driver.as_deref() {
        None => crate::journal::LogDriver::default(),
        Some(d) => d.parse().map_err(|_| LogDriverError(d.to_string()))?,
    };
    Ok(ContainerSpec {
        definition: def.clone(),
        root,
        hostname,
        env: def.env.clone(),
        workdir: def.workdir.clone(),
        user,
        limits,
        properties,
        security,
        image_id,
        network,
        life,
        mounts,
        read_only: def.read_only,
        ephemeral: def.ephemeral,
        log_driver,
        boot: def.boot_init,
    })
}

/// The definition's `-v`, `--mount` and `--tmpfs` entries as typed mounts, at most
/// [`crate::volume::mounts::MAX_MOUNTS`], no two on one target. Whether a bind's host path
/// exists is checked where it matters, at create and at each start (a path missing while
/// berthd restarts must not make the container unknown).
fn check_mounts(def: &Definition) -> Result<Vec<crate::volume::MountSpec>, SpecError> {
    use crate::volume::mounts;
    let n = def.volumes.len() + def.mounts.len() + def.tmpfs.len();
    if n > mounts::MAX_MOUNTS {
        return Err(SpecError::Mount(
            crate::volume::VolumeError::TooManyMounts(n).to_string(),
        ));
    }
    let there = |_: &Path| true;
    let err = |e: crate::volume::VolumeError| SpecError::Mount(e.to_string());
    let mut out = Vec::with_capacity(n);
    for v in &def.volumes {
        out.push(mounts::parse_volume(v, &there).map_err(err)?.spec);
    }
    for m in &def.mounts {
        out.push(mounts::parse_mount(m, &there).map_err(err)?.spec);
    }
    for t in &def.tmpfs {
        out.push(mounts::parse_tmpfs(t).map_err(err)?.spec);
    }
    mounts::check_list(&out).map_err(err)?;
    Ok(out)
}

/// A directory used as a lower layer: absolute, existing, a directory, and free of the
/// characters overlayfs uses as option separators.
fn check_directory(dir: &Path, facts: &dyn HostFacts) -> Result<PathBuf, SpecError> {
    if !dir.is_absolute() {
        return Err(SpecError::Directory(format!(
            "{} is not an absolute path",
            dir.display()
        )));
    }
    let canon = facts.directory(dir).map_err(SpecError::Directory)?;
    let s = canon.to_string_lossy();
    if s.contains([',', ':', '\\']) {
        return Err(SpecError::Directory(format!(
            "{s} contains ',', ':' or '\\', which overlayfs cannot take"
        )));
    }
    Ok(canon)
}

fn check_labels(labels: &std::collections::BTreeMap<String, String>) -> Result<(), SpecError> {
    let bytes: usize = labels.iter().map(|(k, v)| k.len() + v.len()).sum();
    if labels.len() > MAX_LABELS || bytes > MAX_LABEL_BYTES {
        return Err(SpecError::TooManyLabels);
    }
    for (k, v) in labels {
        if k.is_empty() || k.contains('=') || k.chars().chain(v.chars()).any(char::is_control) {
            return Err(SpecError::Label(k.clone()));
        }
    }
    Ok(())
}

fn check_hostname(h: &str) -> Result<(), SpecError> {
    let ok = !h.is_empty()
        && h.len() <= 64
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && !h.starts_with(['-', '.']);
    if ok {
        Ok(())
    } else {
        Err(SpecError::Hostname(h.into()))
    }
}

/// A command line: not empty-named, no NUL, bounded.
pub fn check_command(cmd: &[String]) -> Result<(), SpecError> {
    if cmd.first().is_some_and(|c| c.is_empty()) {
        return Err(SpecError::Command("the command is empty"));
    }
    if cmd.iter().any(|a| a.contains('\0')) {
        return Err(SpecError::Command("the command line contains a NUL byte"));
    }
    if cmd.len() > MAX_ARGS || cmd.iter().map(String::len).sum::<usize>() > MAX_ARGV_BYTES {
        return Err(SpecError::Command("the command line is too long"));
    }
    Ok(())
}

/// An environment: `KEY=VALUE` entries without NUL or newline, bounded.
pub fn check_env(env: &[String]) -> Result<(), SpecError> {
    if env.len() > MAX_ENV || env.iter().map(String::len).sum::<usize>() > MAX_ENV_BYTES {
        return Err(SpecError::EnvTooLarge);
    }
    for kv in env {
        match kv.split_once('=') {
            Some((k, _)) if !k.is_empty() && !kv.contains(['\0', '\n']) => {}
            _ => return Err(SpecError::Env(kv.clone())),
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A host with two CPUs, hybrid cgroups, /dev/null, /dev/zero and one block device.
    #[derive(Default)]
    pub struct Facts {
        pub unified: bool,
    }

    impl HostFacts for Facts {
        fn unified_cgroups(&self) -> bool {
            self.unified
        }
        fn possible_cpus(&self) -> u32 {
            2
        }
        fn device(&self, path: &str) -> Result<limits::DeviceNode, String> {
            let (block, major, minor) = match path {
                "/dev/null" => (false, 1, 3),
                "/dev/zero" => (false, 1, 5),
                "/dev/fuse" => (false, 10, 229),
                "/dev/vda" => (true, 254, 0),
                "/etc/passwd" => return Err(format!("{path} is not a device node")),
                _ => return Err(format!("{path}: No such file or directory")),
            };
            Ok(limits::DeviceNode {
                block,
                major,
                minor,
            })
        }
        fn directory(&self, path: &Path) -> Result<PathBuf, String> {
            match path.to_str() {
                Some("/srv/root") | Some("/srv/a,b") => Ok(path.into()),
                Some("/srv/link") => Ok("/srv/root".into()),
                _ => Err(format!("{}: No such file or directory", path.display())),
            }
        }
        fn default_seccomp(&self) -> Arc<crate::seccomp::Profile> {
            Arc::new(crate::seccomp::default_profile())
        }
        fn seccomp_profile(&self, path: &Path) -> Result<crate::seccomp::Profile, String> {
            Err(format!("{}: No such file or directory", path.display()))
        }
    }

    pub fn def(name: &str) -> Definition {
        toml::from_str(&format!("name = {name:?}\ncreated_at = 1")).unwrap()
    }

    #[test]
    fn a_plain_definition_runs_the_default_image_as_its_name() {
        let s = validate(&def("web"), &Facts::default()).unwrap();
        assert_eq!(s.root, Root::Image("default".into()));
        assert_eq!(s.hostname, "web");
        assert_eq!(s.user, None);
        assert!(s.limits.0.is_empty());
    }

    #[test]
    fn every_field_is_checked_and_typed() {
        let mut d = def("web");
        d.directory = Some("/srv/link".into());
        d.user = Some("1000:50".into());
        d.resources.set("memory", "64M").unwrap();
        d.resources.set("devices", "/dev/fuse:r").unwrap();
        d.properties.insert("TasksMax".into(), "10".into());
        let s = validate(&d, &Facts::default()).unwrap();
        assert_eq!(s.root, Root::Directory("/srv/root".into()));
        assert_eq!(s.user.unwrap().user, user::Id::Num(1000));
        assert_eq!(s.limits.devices().count(), 1);
        assert_eq!(s.properties[0].bus_name, "TasksMax");
    }

    #[test]
    fn bad_definitions_are_refused_with_what_is_wrong() {
        let facts = Facts::default();
        type Change = Box<dyn Fn(&mut Definition)>;
        let cases: Vec<(Change, &str)> = vec![
            (Box::new(|d| d.name = "a/b".into()), "may only contain"),
            (
                Box::new(|d| {
                    d.image = Some("x".into());
                    d.directory = Some("/srv/root".into())
                }),
                "not both",
            ),
            (Box::new(|d| d.directory = Some("rel".into())), "absolute"),
            (Box::new(|d| d.directory = Some("/nope".into())), "No such"),
            (
                Box::new(|d| d.directory = Some("/srv/a,b".into())),
                "overlayfs",
            ),
            (Box::new(|d| d.image = Some("../x".into())), "image name"),
            (Box::new(|d| d.hostname = Some("-x".into())), "hostname"),
            (Box::new(|d| d.command = vec![String::new()]), "empty"),
            (
                Box::new(|d| d.command = vec!["a".repeat(MAX_ARGV_BYTES + 1)]),
                "too long",
            ),
            (Box::new(|d| d.env = vec!["NOEQUALS".into()]), "KEY=VALUE"),
            (Box::new(|d| d.env = vec!["A=b\nc".into()]), "KEY=VALUE"),
            (Box::new(|d| d.env = vec!["A=b\0".into()]), "KEY=VALUE"),
            (Box::new(|d| d.workdir = Some("rel".into())), "absolute"),
            (Box::new(|d| d.user = Some("a/b".into())), "invalid user"),
            (
                Box::new(|d| d.resources.set("memory", "lots").unwrap()),
                "memory",
            ),
            (
                Box::new(|d| {
                    d.properties.insert("Bogus".into(), "1".into());
                }),
                "unknown property",
            ),
        ];
        for (change, want) in cases {
            let mut d = def("web");
            change(&mut d);
            let e = validate(&d, &facts).unwrap_err().to_string();
            assert!(e.contains(want), "{e:?} lacks {want:?}");
        }
    }
}
