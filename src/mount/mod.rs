//! Mounts: the container's root (an overlay of its image's layers and its writable layer) and
//! the list of operations inside it — API filesystems, the minimal /dev, masks — planned here in
//! berthd ([`plan`]) and applied by the helper ([`apply`]) through the syscall seam, in order.

pub mod apply;

use std::path::{Path, PathBuf};

use nix::mount::MsFlags;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::spec::limits::Device;

/// One filesystem operation of the container's mount plan. Paths in `target`/`path` are
/// relative to the container's root and are resolved inside it without following symlinks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MountOp {
    /// Mount a fresh filesystem (`proc`, `sysfs`, `tmpfs`, `devpts`, `mqueue`).
    Fs {
        fstype: String,
        target: String,
        flags: u64,
        data: Option<String>,
    },
    /// Create a device node (`major:minor`, a block device when `block`).
    Device {
        path: String,
        mode: u32,
        block: bool,
        major: u64,
        minor: u64,
    },
    /// Create a symlink `path` → `target` (the link text is not resolved).
    Symlink { path: String, target: String },
    /// Bind a path onto itself and make it read-only (e.g. `proc/sys`).
    ReadOnly { path: String },
    /// Hide a file under an empty read-only bind of /dev/null, or a directory under an empty
    /// read-only tmpfs; a missing path is skipped.
    Mask { path: String },
}

/// The container's root: an overlay mounted at `target` before the pivot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootPlan {
    /// The overlay mount options, complete.
    pub options: String,
    /// Where the overlay is mounted (an empty host directory).
    pub target: PathBuf,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum MountPlanError {
    #[error(
        "the image has too many layers ({0}) for one overlay mount (the kernel reads mount \
         options from one page)"
    )]
    TooManyLayers(usize),
    #[error("layer path {0} contains ',', ':' or '\\', which overlayfs cannot take")]
    BadLayerPath(String),
}

/// Where a container's files live on the host.
#[derive(Debug, Clone)]
pub struct ContainerDirs {
    pub upper: PathBuf,
    pub work: PathBuf,
    pub root: PathBuf,
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

/// The root overlay on `lowers` (topmost first). The kernel reads mount options from one page,
/// which bounds the number of layers (about 45 of the store's paths).
pub fn root(lowers: &[PathBuf], dirs: &ContainerDirs) -> Result<RootPlan, MountPlanError> {
    let mut parts = Vec::with_capacity(lowers.len());
    for p in lowers.iter().chain([&dirs.upper, &dirs.work]) {
        let s = p.display().to_string();
        if s.contains([',', ':', '\\']) {
            return Err(MountPlanError::BadLayerPath(s));
        }
        parts.push(s);
    }
    let (work, rest) = parts.split_last().expect("upper and work are there");
    let (upper, lowers_s) = rest.split_last().expect("upper is there");
    let options = format!(
        "lowerdir={},upperdir={upper},workdir={work}",
        lowers_s.join(":")
    );
    if options.len() >= 4096 {
        return Err(MountPlanError::TooManyLayers(lowers.len()));
    }
    Ok(RootPlan {
        options,
        target: dirs.root.clone(),
    })
}

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

/// The API filesystems, /dev and masks every container gets, then its extra devices, in the
/// order they are applied.
pub fn operations(devices: &[&Device]) -> Vec<MountOp> {
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
    ops.extend(devices.iter().map(|d| MountOp::Device {
        path: d.path.trim_start_matches('/').into(),
        mode: 0o660,
        block: d.block,
        major: d.major,
        minor: d.minor,
    }));
    ops
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_are_relative_and_ordered() {
        let ops = operations(&[]);
        let pos = |pred: &dyn Fn(&MountOp) -> bool| ops.iter().position(pred).unwrap();
        let dev = pos(&|o| matches!(o, MountOp::Fs { target, .. } if target == "dev"));
        let null = pos(&|o| matches!(o, MountOp::Device { path, .. } if path == "dev/null"));
        let proc_ = pos(&|o| matches!(o, MountOp::Fs { target, .. } if target == "proc"));
        let sys_ro = pos(&|o| matches!(o, MountOp::ReadOnly { path } if path == "proc/sys"));
        let kcore = pos(&|o| matches!(o, MountOp::Mask { path } if path == "proc/kcore"));
        assert!(dev < null && proc_ < sys_ro && proc_ < kcore);
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
    fn extra_devices_come_last_with_their_numbers() {
        let tun = Device {
            path: "/dev/net/tun".into(),
            perms: "rwm".into(),
            block: false,
            major: 10,
            minor: 200,
        };
        let ops = operations(&[&tun]);
        assert_eq!(
            ops.last(),
            Some(&MountOp::Device {
                path: "dev/net/tun".into(),
                mode: 0o660,
                block: false,
                major: 10,
                minor: 200
            })
        );
    }

    #[test]
    fn the_root_overlay_is_decided_here_and_bounded() {
        let dirs = ContainerDirs::under(Path::new("/var/lib/berth/containers/web"));
        let r = root(&["/l2".into(), "/l1".into()], &dirs).unwrap();
        assert_eq!(
            r.options,
            "lowerdir=/l2:/l1,upperdir=/var/lib/berth/containers/web/upper,\
             workdir=/var/lib/berth/containers/web/work"
        );
        assert_eq!(r.target, Path::new("/var/lib/berth/containers/web/root"));
        let many: Vec<PathBuf> = (0..100)
            .map(|i| format!("/var/lib/berth/layers/{i:064}").into())
            .collect();
        assert_eq!(root(&many, &dirs), Err(MountPlanError::TooManyLayers(100)));
        assert!(matches!(
            root(&["/a:b".into()], &dirs),
            Err(MountPlanError::BadLayerPath(_))
        ));
    }
}
