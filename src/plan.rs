//! Turning a container definition into the helper's [`Plan`]: every mount, device node and
//! environment variable is decided here, in berthd, and tested without root.

use std::path::{Path, PathBuf};

use nix::mount::MsFlags;

use crate::image::ImageConfig;
use crate::protocol::{MountOp, Plan};
use crate::resources::Device;
use crate::spec::Definition;

/// The `PATH` a payload gets.
pub const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Files under /proc a container must not read or write (as nspawn and runc mask them).
const MASKED: &[&str] = &[
    "proc/kcore",
    "proc/keys",
    "proc/timer_list",
    "proc/sysrq-trigger",
    "proc/latency_stats",
    "proc/acpi",
    "proc/scsi",
];

/// The device nodes of the minimal /dev: (name, major, minor).
const DEVICES: &[(&str, u64, u64)] = &[
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

fn fs(fstype: &str, target: &str, flags: MsFlags, data: Option<&str>) -> MountOp {
    MountOp::Fs {
        fstype: fstype.into(),
        target: target.into(),
        flags: flags.bits(),
        data: data.map(Into::into),
    }
}

fn link(path: &str, target: &str) -> MountOp {
    MountOp::Symlink {
        path: path.into(),
        target: target.into(),
    }
}

/// The API filesystems, /dev and masks every container gets, in the order they are applied.
pub fn api_mounts() -> Vec<MountOp> {
    let hard = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let mut ops = vec![
        fs("proc", "proc", hard, None),
        MountOp::ReadOnly {
            path: "proc/sys".into(),
        },
    ];
    ops.extend(MASKED.iter().map(|p| MountOp::Mask { path: (*p).into() }));
    ops.push(fs("sysfs", "sys", hard | MsFlags::MS_RDONLY, None));
    ops.push(fs(
        "tmpfs",
        "dev",
        MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
        Some("mode=755,size=4m"),
    ));
    ops.extend(DEVICES.iter().map(|(name, major, minor)| MountOp::Device {
        path: format!("dev/{name}"),
        mode: 0o666,
        block: false,
        major: *major,
        minor: *minor,
    }));
    ops.push(fs(
        "devpts",
        "dev/pts",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=620"),
    ));
    ops.push(link("dev/ptmx", "pts/ptmx"));
    ops.push(fs(
        "tmpfs",
        "dev/shm",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777"),
    ));
    ops.push(fs("mqueue", "dev/mqueue", hard, None));
    ops.push(link("dev/fd", "/proc/self/fd"));
    for (i, name) in ["stdin", "stdout", "stderr"].iter().enumerate() {
        ops.push(link(&format!("dev/{name}"), &format!("/proc/self/fd/{i}")));
    }
    ops.push(fs(
        "tmpfs",
        "run",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=755"),
    ));
    ops
}

/// Where a container's files live on the host.
#[derive(Debug, Clone)]
pub struct ContainerDirs {
    pub upper: std::path::PathBuf,
    pub work: std::path::PathBuf,
    pub root: std::path::PathBuf,
}

impl ContainerDirs {
    pub fn under(dir: &Path) -> Self {
        ContainerDirs {
            upper: dir.join("upper"),
            work: dir.join("work"),
            root: dir.join("root"),
        }
    }
}

/// The complete plan for starting `def` on top of `lower`.
/// The environment: berth's defaults, then the image's, then the definition's; a later
/// `KEY=` replaces an earlier one. `container=berth` always stays.
pub fn environment(
    def: &Definition,
    image: Option<&ImageConfig>,
    term: Option<&str>,
) -> Vec<String> {
    let mut env: Vec<String> = vec![format!("PATH={PATH}")];
    if let Some(t) = term {
        env.push(format!("TERM={t}"));
    }
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
    for kv in &def.env {
        set(&mut env, kv);
    }
    env.push("container=berth".into());
    env
}

/// The plan for starting `def` on the image layers `lowers` (topmost first), with `devices`
/// (already checked against the host) made in its /dev besides the defaults.
pub fn build(
    def: &Definition,
    lowers: &[PathBuf],
    image: Option<&ImageConfig>,
    dirs: &ContainerDirs,
    devices: &[Device],
    term: Option<&str>,
) -> Plan {
    let env = environment(def, image, term);
    Plan {
        name: def.name.clone(),
        hostname: def.hostname().into(),
        lowers: lowers.to_vec(),
        upper: dirs.upper.clone(),
        work: dirs.work.clone(),
        root: dirs.root.clone(),
        mounts: api_mounts()
            .into_iter()
            .chain(devices.iter().map(|d| MountOp::Device {
                path: d.path.trim_start_matches('/').into(),
                mode: 0o660,
                block: d.block,
                major: d.major,
                minor: d.minor,
            }))
            .collect(),
        argv: def.argv(image),
        env,
        workdir: def
            .workdir
            .clone()
            .or_else(|| image.and_then(|i| i.working_dir.clone()))
            .filter(|w| !w.is_empty())
            .unwrap_or_else(|| "/".into()),
        user: def
            .user
            .clone()
            .or_else(|| image.and_then(|i| i.user.clone()))
            .filter(|u| !u.is_empty()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_mounts_are_relative_and_ordered() {
        let ops = api_mounts();
        let pos = |pred: &dyn Fn(&MountOp) -> bool| ops.iter().position(pred).unwrap();
        let dev = pos(&|o| matches!(o, MountOp::Fs { target, .. } if target == "dev"));
        let null = pos(&|o| matches!(o, MountOp::Device { path, .. } if path == "dev/null"));
        let proc_ = pos(&|o| matches!(o, MountOp::Fs { target, .. } if target == "proc"));
        let sys_ro = pos(&|o| matches!(o, MountOp::ReadOnly { path } if path == "proc/sys"));
        assert!(dev < null && proc_ < sys_ro);
        for op in &ops {
            let p = match op {
                MountOp::Fs { target, .. } => target,
                MountOp::Device { path, .. } | MountOp::Symlink { path, .. } => path,
                MountOp::ReadOnly { path } | MountOp::Mask { path } => path,
            };
            assert!(
                !p.starts_with('/') && !p.split('/').any(|c| c == ".."),
                "{p}"
            );
        }
        assert!(
            ops.iter()
                .any(|o| matches!(o, MountOp::Fs { fstype, flags, .. }
            if fstype == "sysfs" && flags & MsFlags::MS_RDONLY.bits() != 0))
        );
    }

    #[test]
    fn plan_uses_definition() {
        let def = Definition {
            name: "web".into(),
            image: None,
            directory: Some("/srv/root".into()),
            command: vec![],
            entrypoint: None,
            env: vec!["A=1".into(), "PATH=/x".into()],
            workdir: None,
            user: None,
            hostname: Some("h1".into()),
            auto_remove: false,
            resources: Default::default(),
            properties: Default::default(),
            created_at: 0,
        };
        let dirs = ContainerDirs::under(Path::new("/var/lib/berth/containers/web"));
        let tun = Device {
            path: "/dev/net/tun".into(),
            perms: "rwm".into(),
            block: false,
            major: 10,
            minor: 200,
        };
        let img = ImageConfig {
            env: vec!["A=0".into(), "B=2".into(), "container=docker".into()],
            working_dir: Some("/app".into()),
            user: Some("www".into()),
            ..Default::default()
        };
        let p = build(&def, &["/srv/root".into()], Some(&img), &dirs, &[tun], None);
        assert_eq!(p.env, ["B=2", "A=1", "PATH=/x", "container=berth"]);
        assert_eq!(p.workdir, "/app");
        assert_eq!(p.user.as_deref(), Some("www"));
        assert!(p.mounts.contains(&MountOp::Device {
            path: "dev/net/tun".into(),
            mode: 0o660,
            block: false,
            major: 10,
            minor: 200
        }));
        assert_eq!(p.hostname, "h1");
        assert_eq!(p.argv, vec!["/bin/sh"]);
        assert_eq!(p.upper, Path::new("/var/lib/berth/containers/web/upper"));
        assert!(p.env.contains(&"container=berth".to_string()));
    }
}
