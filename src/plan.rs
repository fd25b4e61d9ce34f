//! The helper's [`Plan`]: everything a start does, decided in berthd from a checked
//! [`ContainerSpec`] by the per-concern modules ([`crate::ns`], [`crate::mount`], the process
//! settings here), and tested without root. The helper only applies it.

pub mod exec;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::caps::{self, CapPlan};
use crate::image::ImageConfig;
use crate::mount::{self, ContainerDirs, MountOp, MountPlanError, RootPlan, RootSource};
use crate::ns::Namespaces;
use crate::seccomp::Program;
use crate::spec::ulimit::Ulimit;
use crate::spec::{ContainerSpec, UserSpec};
use crate::userns::IdMaps;

/// The `PATH` a payload gets unless its environment says otherwise.
pub const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

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
    pub security: SecurityPlan,
}

/// How the payload is confined, applied in the fixed order setgroups/setgid/setuid →
/// capabilities → no_new_privs → SELinux exec label → seccomp → exec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityPlan {
    /// The container's ID maps (`None`: no user namespace). berthd writes them.
    pub id_maps: Option<IdMaps>,
    /// The capability sets of a payload that runs as root, and of one that does not.
    pub caps_root: CapPlan,
    pub caps_user: CapPlan,
    pub no_new_privs: bool,
    /// The exec label (`None`: SELinux off, or `label=disable`).
    pub label: Option<String>,
    /// The compiled filter (`None`: `seccomp=unconfined`).
    pub seccomp: Option<Program>,
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
    pub rlimits: Vec<Ulimit>,
    /// Which of stdin, stdout and stderr are a terminal allocated in the container's own
    /// devpts (the payload's controlling terminal; its master goes to the caller). None: no
    /// terminal.
    #[serde(default)]
    pub terminal: [bool; 3],
    /// The terminal's size (rows, columns) before the payload runs, so that its first look
    /// at the size is the caller's; `None`: the kernel's 0×0 until the caller sets one.
    #[serde(default)]
    pub window: Option<(u16, u16)>,
    /// `--boot`: `argv` is the image's init and becomes the container's PID 1 itself (see
    /// [`crate::boot`]); no stub init supervises it.
    #[serde(default)]
    pub boot: bool,
}

/// What berthd decided for the plan besides the spec: the ID range, the label, the compiled
/// filter, and the limits it may grant.
#[derive(Debug, Clone)]
pub struct Decided {
    pub id_maps: Option<IdMaps>,
    /// The SELinux labels (process, file), when labels apply.
    pub labels: Option<crate::selinux::Labels>,
    pub seccomp: Option<Program>,
    /// The hard limit of each resource berthd itself has (a container never gets more).
    pub hard_limits: fn(nix::sys::resource::Resource) -> u64,
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

/// The plan for starting `spec` on the image layers `lowers` (topmost first), and what berthd
/// builds the root from.
pub fn build(
    spec: &ContainerSpec,
    lowers: &[PathBuf],
    image: Option<&ImageConfig>,
    dirs: &ContainerDirs,
    decided: Decided,
) -> Result<(Plan, RootSource), PlanError> {
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
    let file_label = decided.labels.as_ref().map(|l| l.file.clone());
    let (root_source, root) = mount::root(lowers, dirs, file_label.clone())?;
    let sec = &spec.security;
    let rlimits = sec
        .ulimits
        .iter()
        .map(|u| {
            let cap = (decided.hard_limits)(u.resource.resource());
            Ulimit {
                soft: u.soft.min(cap),
                hard: u.hard.min(cap),
                ..*u
            }
        })
        .collect();
    let plan = Plan {
        name: spec.name().into(),
        namespaces: Namespaces::container(decided.id_maps.is_some()),
        root,
        mounts: mount::operations(&devices, file_label.as_deref(), decided.id_maps.is_some()),
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
            rlimits,
            terminal: [false; 3],
            window: None,
            boot: false,
        },
        security: SecurityPlan {
            id_maps: decided.id_maps,
            caps_root: caps::plan_for(sec.caps, true),
            caps_user: caps::plan_for(sec.caps, false),
            no_new_privs: sec.no_new_privs,
            label: decided.labels.map(|l| l.process),
            seccomp: decided.seccomp,
        },
    };
    Ok((plan, root_source))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::spec::tests::{Facts, def};
    use std::path::Path;

    pub fn sample() -> Plan {
        let spec = crate::spec::validate(&def("web"), &Facts::default()).unwrap();
        let dirs = ContainerDirs::under(Path::new("/var/lib/berth/containers/web"));
        let mut plan = build(&spec, &["/srv/root".into()], None, &dirs, decided())
            .unwrap()
            .0;
        crate::mount::defer_to_scope(&mut plan.mounts);
        plan
    }

    fn hard(r: nix::sys::resource::Resource) -> u64 {
        if r == nix::sys::resource::Resource::RLIMIT_NOFILE {
            20000
        } else {
            u64::MAX
        }
    }

    pub fn decided() -> Decided {
        Decided {
            id_maps: Some(
                crate::userns::IdRange {
                    host_start: 524288,
                    count: 65536,
                }
                .id_maps(),
            ),
            labels: None,
            seccomp: None,
            hard_limits: hard,
        }
    }

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
        let p = build(&spec, &["/srv/root".into()], Some(&img), &dirs, decided())
            .unwrap()
            .0;
        assert_eq!(p.process.env, ["B=2", "A=1", "PATH=/x", "container=berth"]);
        assert_eq!(p.process.workdir, "/app");
        assert_eq!(p.process.user, Some(UserSpec::parse("www").unwrap()));
        // The user's passwd home, looked up after the pivot, else "/".
        assert_eq!(p.process.home.as_deref(), Some("/"));
        // In its user namespace the device is a node berthd makes, not the host's node.
        assert!(p.mounts.contains(&MountOp::Node {
            path: "dev/fuse".into(),
            node: "0".into(),
            source: "/dev/fuse".into(),
            block: false,
            major: 10,
            minor: 229
        }));
        assert_eq!(p.hostname, "h1");
        assert_eq!(p.process.argv, vec!["/bin/sh"]);
        assert_eq!(
            p.root.target,
            Path::new("/var/lib/berth/containers/web/root")
        );
        let nofile = p
            .process
            .rlimits
            .iter()
            .find(|u| u.resource == crate::spec::ulimit::Rlimit::Nofile)
            .unwrap();
        // Never more than berthd may grant.
        assert_eq!((nofile.soft, nofile.hard), (1024, 20000));
        assert!(p.namespaces.user);
        assert_eq!(p.security.caps_root.effective, crate::caps::CapSet::DEFAULT);
        assert!(p.security.caps_user.effective.is_empty());
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
        let p = build(&spec, &["/l".into()], None, &dirs, decided())
            .unwrap()
            .0;
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
            build(&spec, &["/l".into()], Some(&img), &dirs, decided()),
            Err(PlanError::Image(_))
        ));
    }
}
