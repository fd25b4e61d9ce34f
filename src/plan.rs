//! The helper's [`Plan`]: everything a start does, decided in berthd from a checked
//! [`ContainerSpec`] by the per-concern modules ([`crate::ns`], [`crate::mount`], the process
//! settings here), and tested without root. The helper only applies it.

use std::path::PathBuf;

use nix::sys::resource::Resource;
use serde::{Deserialize, Serialize};

use crate::image::ImageConfig;
use crate::mount::{self, ContainerDirs, MountOp, MountPlanError, RootPlan};
use crate::ns::Namespaces;
use crate::spec::{ContainerSpec, UserSpec};

/// The `PATH` a payload gets unless its environment says otherwise.
pub const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Open files: systemd's defaults for services (soft 1024 for select(2) users, hard 524288),
/// never above what berthd itself may grant.
pub const NOFILE: (u64, u64) = (1024, 524_288);

/// Everything the helper needs, decided by berthd beforehand. The helper decides nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// Container name, for messages.
    pub name: String,
    pub namespaces: Namespaces,
    pub root: RootPlan,
    /// Applied in order inside the new root, before pivoting.
    pub mounts: Vec<MountOp>,
    pub hostname: String,
    pub process: ProcessPlan,
}

/// A resource limit the payload gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Rlimit {
    Nofile,
}

impl Rlimit {
    pub fn resource(self) -> Resource {
        match self {
            Rlimit::Nofile => Resource::RLIMIT_NOFILE,
        }
    }
}

/// The payload's process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessPlan {
    /// argv; `argv[0]` without `/` is searched in the `PATH` of `env`.
    pub argv: Vec<String>,
    /// `KEY=VALUE` environment, complete but for `HOME` when `home` says to look it up.
    pub env: Vec<String>,
    pub workdir: String,
    /// Who to run as, looked up in the container's /etc/passwd and /etc/group after the
    /// pivot; root when `None`.
    pub user: Option<UserSpec>,
    /// `Some(fallback)`: set `HOME` to the user's passwd home directory, else `fallback`
    /// (the environment had none). `None`: `env` is complete.
    pub home: Option<String>,
    pub rlimits: Vec<(Rlimit, u64, u64)>,
}

/// Host facts the plan depends on.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The hard RLIMIT_NOFILE berthd may hand on.
    pub nofile_hard: u64,
}

/// The environment: berth's defaults, then the image's, then the definition's; a later
/// `KEY=` replaces an earlier one. `container=berth` always stays.
pub fn environment(spec: &ContainerSpec, image: Option<&ImageConfig>) -> Vec<String> {
    let mut env: Vec<String> = vec![format!("PATH={PATH}")];
    let set = |env: &mut Vec<String>, kv: &String| {
        let key = kv.split_once('=').map_or(kv.as_str(), |(k, _)| k);
        if key.is_empty() || key == "container" {
            return;
        }
        env.retain(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) != key);
        env.push(kv.clone());
    };
    for kv in image.map(|i| i.env.as_slice()).unwrap_or_default() {
        set(&mut env, kv);
    }
    for kv in &spec.env {
        set(&mut env, kv);
    }
    env.push("container=berth".into());
    env
}

/// The user the payload runs as: the definition's, else the image's (checked here, like any
/// string from an image), else root.
fn user(spec: &ContainerSpec, image: Option<&ImageConfig>) -> Result<Option<UserSpec>, String> {
    if let Some(u) = &spec.user {
        return Ok(Some(u.clone()));
    }
    match image
        .and_then(|i| i.user.as_deref())
        .filter(|u| !u.is_empty())
    {
        Some(u) => UserSpec::parse(u)
            .map(Some)
            .map_err(|e| format!("the image's user: {e}")),
        None => Ok(None),
    }
}

/// Why a plan cannot be made.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error(transparent)]
    Mount(#[from] MountPlanError),
    #[error("{0}")]
    Image(String),
}

/// The plan for starting `spec` on the image layers `lowers` (topmost first).
pub fn build(
    spec: &ContainerSpec,
    lowers: &[PathBuf],
    image: Option<&ImageConfig>,
    dirs: &ContainerDirs,
    host: Limits,
) -> Result<Plan, PlanError> {
    let mut env = environment(spec, image);
    let user = user(spec, image).map_err(PlanError::Image)?;
    let has_home = env.iter().any(|e| e.starts_with("HOME="));
    let home = match (&user, has_home) {
        (_, true) => None,
        (Some(u), false) if !u.is_root() => Some("/".to_string()),
        (_, false) => {
            env.push("HOME=/root".into());
            None
        }
    };
    let devices: Vec<_> = spec.limits.devices().collect();
    Ok(Plan {
        name: spec.name().into(),
        namespaces: Namespaces::container(),
        root: mount::root(lowers, dirs)?,
        mounts: mount::operations(&devices),
        hostname: spec.hostname.clone(),
        process: ProcessPlan {
            argv: spec.argv(image),
            env,
            workdir: spec
                .workdir
                .clone()
                .or_else(|| image.and_then(|i| i.working_dir.clone()))
                .filter(|w| !w.is_empty())
                .unwrap_or_else(|| "/".into()),
            user,
            home,
            rlimits: vec![(
                Rlimit::Nofile,
                NOFILE.0.min(host.nofile_hard),
                NOFILE.1.min(host.nofile_hard),
            )],
        },
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::spec::tests::{Facts, def};
    use std::path::Path;

    pub fn sample() -> Plan {
        let spec = crate::spec::validate(&def("web"), &Facts::default()).unwrap();
        let dirs = ContainerDirs::under(Path::new("/var/lib/berth/containers/web"));
        build(&spec, &["/srv/root".into()], None, &dirs, HOST).unwrap()
    }

    const HOST: Limits = Limits { nofile_hard: 20000 };

    #[test]
    fn plan_uses_definition_then_image() {
        let mut d = def("web");
        d.directory = Some("/srv/root".into());
        d.env = vec!["A=1".into(), "PATH=/x".into()];
        d.hostname = Some("h1".into());
        d.resources.set("devices", "/dev/fuse").unwrap();
        let spec = crate::spec::validate(&d, &Facts::default()).unwrap();
        let dirs = ContainerDirs::under(Path::new("/var/lib/berth/containers/web"));
        let img = ImageConfig {
            env: vec!["A=0".into(), "B=2".into(), "container=docker".into()],
            working_dir: Some("/app".into()),
            user: Some("www".into()),
            ..Default::default()
        };
        let p = build(&spec, &["/srv/root".into()], Some(&img), &dirs, HOST).unwrap();
        assert_eq!(p.process.env, ["B=2", "A=1", "PATH=/x", "container=berth"]);
        assert_eq!(p.process.workdir, "/app");
        assert_eq!(p.process.user, Some(UserSpec::parse("www").unwrap()));
        // The user's passwd home, looked up after the pivot, else "/".
        assert_eq!(p.process.home.as_deref(), Some("/"));
        assert!(p.mounts.contains(&MountOp::Device {
            path: "dev/fuse".into(),
            mode: 0o660,
            block: false,
            major: 10,
            minor: 229
        }));
        assert_eq!(p.hostname, "h1");
        assert_eq!(p.process.argv, vec!["/bin/sh"]);
        assert!(
            p.root
                .options
                .contains("upperdir=/var/lib/berth/containers/web/upper")
        );
        assert_eq!(p.process.rlimits, [(Rlimit::Nofile, 1024, 20000)]);
    }

    #[test]
    fn root_gets_its_home_and_an_explicit_home_wins() {
        let p = sample();
        assert!(p.process.env.contains(&"HOME=/root".to_string()));
        assert_eq!(p.process.home, None);
        let mut d = def("web");
        d.user = Some("1000".into());
        d.env = vec!["HOME=/data".into()];
        let spec = crate::spec::validate(&d, &Facts::default()).unwrap();
        let dirs = ContainerDirs::under(Path::new("/c"));
        let p = build(&spec, &["/l".into()], None, &dirs, HOST).unwrap();
        assert_eq!(p.process.home, None);
        assert!(p.process.env.contains(&"HOME=/data".to_string()));
    }

    #[test]
    fn a_bad_user_in_an_image_is_an_error() {
        let spec = crate::spec::validate(&def("web"), &Facts::default()).unwrap();
        let img = ImageConfig {
            user: Some("a/b".into()),
            ..Default::default()
        };
        let dirs = ContainerDirs::under(Path::new("/c"));
        assert!(matches!(
            build(&spec, &["/l".into()], Some(&img), &dirs, HOST),
            Err(PlanError::Image(_))
        ));
    }
}
