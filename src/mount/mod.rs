//! Mounts: the container's root (an overlay of its image's layers and its writable layer) and
//! the list of operations inside it — API filesystems, the minimal /dev, masks — planned here in
//! berthd and applied by the helper ([`apply`]) through the syscall seam, in order.
//!
//! The root overlay is made by berthd itself ([`root::build`]), as root in the initial user
//! namespace (overlayfs reads the layers' `trusted.overlay.*` markers only for such a
//! mounter): each image layer is an idmapped clone ([`idmap`]) seen through the container's ID
//! map, so no layer is ever chowned; the writable layer stays a plain directory owned by the
//! container's root. The result is a detached mount the container's PID 1 attaches in its own
//! mount namespace.

pub mod apply;
pub mod idmap;
pub mod network;
pub mod nodes;
pub mod root;

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
    /// Bind the host's device node `source` onto `path` (an empty file made for it), after
    /// checking that `source` is the device `major:minor` (a block device when `block`). No
    /// container ever makes device nodes: in a user namespace it could not, and the scope's
    /// device policy has no `m`.
    Device {
        path: String,
        source: String,
        block: bool,
        major: u64,
        minor: u64,
    },
    /// Bind the node `node` of the device mount berthd made for this container
    /// ([`nodes::make`]: a copy of the host's device `source`, owned by the container's root)
    /// onto `path`. What `--device` becomes in a user namespace, where a bound host node would
    /// keep an owner the container cannot see.
    Node {
        path: String,
        node: String,
        source: String,
        block: bool,
        major: u64,
        minor: u64,
    },
    /// Bind a path inside the root onto itself, so that a later read-only bind of its parent
    /// leaves it as it is (`proc/sys/net`, which the container's network namespace owns).
    Keep { path: String },
    /// Create a symlink `path` → `target` (the link text is not resolved).
    Symlink { path: String, target: String },
    /// Bind a path onto itself and make it read-only (e.g. `proc/sys`).
    ReadOnly { path: String },
    /// Hide a file under a read-only bind of an empty file ([`EMPTY_FILE`], checked to be
    /// one), or a directory under an empty read-only tmpfs; a missing path is skipped, any
    /// other failure fails the start.
    Mask { path: String },
    /// Attach the `source`-th detached mount berthd sent with sync #3 (a bind mount or a
    /// volume, already read-only, nosuid, nodev, idmapped as asked) on `target`. The mount
    /// point is resolved inside the root with `openat2(RESOLVE_IN_ROOT)` and made if missing
    /// (a directory when `dir`, else a file), then mounted on through its descriptor.
    Attach {
        source: usize,
        target: String,
        dir: bool,
    },
    /// A tmpfs the user asked for, on a mount point resolved and made like `Attach`'s.
    Tmpfs {
        target: String,
        flags: u64,
        data: Option<String>,
    },
    /// Make the root's own mount read-only (`--read-only`), last, once every mount point
    /// exists: the mounts on it (/proc, /dev, /run, /tmp, volumes) stay as they are.
    RootReadOnly,
    /// Bind the host file `source` (berthd's, in the container's runtime directory) read-only
    /// onto the file `path`, unless the root supplies its own: only a missing path or an
    /// empty regular file is covered; a non-empty file, a symlink or a directory there is the
    /// image's (or a bind mount's) and stays. `/etc/hosts`, `/etc/hostname`,
    /// `/etc/resolv.conf` ([`network`]).
    BindFile { source: String, path: String },
    /// Bind the host directory `source` read-only onto `path` (the helper's fresh sysfs in
    /// the scratch directory, for a container whose network namespace another user namespace
    /// owns; see [`network`]).
    BindHost { source: String, path: String },
    /// Where the leader, pivoted into its root, waits to be in its scope (sync #4) and
    /// unshares its cgroup namespace. Everything before it is made while systemd still makes
    /// the scope; after it comes only the cgroup mount, which needs that namespace, made
    /// inside the new root ([`defer_to_scope`]). It changes no mount itself; every plan has
    /// exactly one.
    InScope,
}

/// The container's root: the detached overlay berthd made, attached at `target` (an empty
/// directory) by the container's PID 1 before the pivot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootPlan {
    pub target: PathBuf,
    /// An empty directory with empty `proc` and `sys` below it, where the helper mounts what
    /// a user namespace needs to see before it may mount proc and sysfs of its own.
    pub scratch: PathBuf,
}

/// The scratch directory under berthd's runtime directory (made by berthd at start).
pub const SCRATCH: &str = "/run/berth/scratch";
/// An empty, read-only regular file berthd makes at start: what masked files are replaced by.
pub const EMPTY_FILE: &str = "/run/berth/scratch/empty";

#[derive(Debug, Error, PartialEq, Eq)]
pub enum MountPlanError {
    #[error("the image has too many layers ({0}; at most {MAX_LAYERS})")]
    TooManyLayers(usize),
}

/// The most layers a root may have (overlayfs' own limit is 500).
pub const MAX_LAYERS: usize = 128;

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

/// What berthd builds the root overlay from: the image's layers (topmost first) and the
/// container's writable layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootSource {
    pub lowers: Vec<PathBuf>,
    pub upper: PathBuf,
    pub work: PathBuf,
    /// The SELinux `context=` of every file in the root, when labels are applied.
    pub context: Option<String>,
}

/// The root of a container on `lowers` (topmost first).
pub fn root(
    lowers: &[PathBuf],
    dirs: &ContainerDirs,
    context: Option<String>,
) -> Result<(RootSource, RootPlan), MountPlanError> {
    if lowers.len() > MAX_LAYERS {
        return Err(MountPlanError::TooManyLayers(lowers.len()));
    }
    Ok((
        RootSource {
            lowers: lowers.to_vec(),
            upper: dirs.upper.clone(),
            work: dirs.work.clone(),
            context,
        },
        RootPlan {
            target: dirs.root.clone(),
            scratch: SCRATCH.into(),
        },
    ))
}

/// What a container must not read or write: the union of Docker's, podman's and nspawn's
/// masked paths. Files are hidden under /dev/null, directories under an empty tmpfs.
pub const MASKED: &[&str] = &[
    "proc/acpi",
    "proc/asound",
    "proc/interrupts",
    "proc/kcore",
    "proc/keys",
    "proc/kallsyms",
    "proc/latency_stats",
    "proc/sched_debug",
    "proc/scsi",
    "proc/timer_list",
    "proc/timer_stats",
    "proc/sysrq-trigger",
    "sys/firmware",
    "sys/devices/virtual/powercap",
];

/// What a container may read but not write (besides all of /sys, mounted read-only).
pub const READ_ONLY: &[&str] = &["proc/bus", "proc/fs", "proc/irq", "proc/sys"];

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

/// Mount data with the SELinux `context=` option added, when labels apply.
fn with_context(data: &str, context: Option<&str>) -> String {
    match context {
        Some(c) if data.is_empty() => format!("context=\"{c}\""),
        Some(c) => format!("{data},context=\"{c}\""),
        None => data.to_string(),
    }
}

/// The API filesystems, /dev, masks and read-only paths every container gets, then its extra
/// devices, in the order they are applied. `context` labels the tmpfs, devpts and mqueue
/// mounts (never proc or sysfs, which have labels of their own). In a user namespace
/// (`userns`) the extra devices are nodes berthd makes ([`MountOp::Node`]); the defaults
/// (null, zero, full, random, urandom, tty: mode 0666 on every host) are bound from the host.
pub fn operations(devices: &[&Device], context: Option<&str>, userns: bool) -> Vec<MountOp> {
    let hard = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let ctx = |data: &str| Some(with_context(data, context)).filter(|d| !d.is_empty());
    let mut ops = vec![
        fs("proc", "proc", hard, None),
        MountOp::Keep {
            path: "proc/sys/net".into(),
        },
    ];
    ops.extend(
        READ_ONLY
            .iter()
            .map(|p| MountOp::ReadOnly { path: (*p).into() }),
    );
    ops.push(fs("sysfs", "sys", hard | MsFlags::MS_RDONLY, None));
    // The container's own cgroup (its namespace's root is its scope), read-only: it may look
    // at its limits, never raise them. [`defer_to_scope`] moves it last.
    ops.push(fs(
        "cgroup2",
        "sys/fs/cgroup",
        hard | MsFlags::MS_RDONLY,
        None,
    ));
    ops.extend(MASKED.iter().map(|p| MountOp::Mask { path: (*p).into() }));
    ops.push(MountOp::Fs {
        fstype: "tmpfs".into(),
        target: "dev".into(),
        flags: (MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME).bits(),
        data: ctx("mode=755,size=4m"),
    });
    ops.extend(DEVICES.iter().map(|(name, major, minor)| MountOp::Device {
        path: format!("dev/{name}"),
        source: format!("/dev/{name}"),
        block: false,
        major: *major,
        minor: *minor,
    }));
    ops.push(MountOp::Fs {
        fstype: "devpts".into(),
        target: "dev/pts".into(),
        flags: (MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC).bits(),
        data: ctx("newinstance,ptmxmode=0666,mode=620"),
    });
    ops.push(link("dev/ptmx", "pts/ptmx"));
    ops.push(MountOp::Fs {
        fstype: "tmpfs".into(),
        target: "dev/shm".into(),
        flags: (MsFlags::MS_NOSUID | MsFlags::MS_NODEV).bits(),
        data: ctx("mode=1777"),
    });
    ops.push(MountOp::Fs {
        fstype: "mqueue".into(),
        target: "dev/mqueue".into(),
        flags: hard.bits(),
        data: ctx(""),
    });
    ops.push(link("dev/fd", "/proc/self/fd"));
    for (i, name) in ["stdin", "stdout", "stderr"].iter().enumerate() {
        ops.push(link(&format!("dev/{name}"), &format!("/proc/self/fd/{i}")));
    }
    ops.push(MountOp::Fs {
        fstype: "tmpfs".into(),
        target: "run".into(),
        flags: (MsFlags::MS_NOSUID | MsFlags::MS_NODEV).bits(),
        data: ctx("mode=755"),
    });
    ops.extend(devices.iter().enumerate().map(|(i, d)| {
        let path = d.path.trim_start_matches('/').into();
        let source = d.path.clone();
        let (block, major, minor) = (d.block, d.major, d.minor);
        if userns {
            MountOp::Node {
                path,
                node: i.to_string(),
                source,
                block,
                major,
                minor,
            }
        } else {
            MountOp::Device {
                path,
                source,
                block,
                major,
                minor,
            }
        }
    }));
    ops
}

/// Finish a plan's mounts: the cgroup mounts (the container's cgroup namespace exists only
/// once the leader is in its scope) move after [`MountOp::InScope`], at the end, so that all
/// else is made while systemd makes the scope. Nothing else depends on them: no mask is
/// under /sys/fs/cgroup, and user mounts under /proc or /sys are refused.
pub fn defer_to_scope(ops: &mut Vec<MountOp>) {
    let (cgroup, mut rest): (Vec<MountOp>, Vec<MountOp>) = ops
        .drain(..)
        .filter(|op| !matches!(op, MountOp::InScope))
        .partition(|op| matches!(op, MountOp::Fs { fstype, .. } if fstype == "cgroup2"));
    rest.push(MountOp::InScope);
    rest.extend(cgroup);
    *ops = rest;
}

/// The mounts a container asked for (`spec`), after [`operations`], parents before children;
/// then, for `read_only`, a tmpfs on /tmp (unless the user mounts one) and the root made
/// read-only. `source_dirs[i]` says whether the `i`-th bind or volume of `spec`, in order, is
/// a directory; its detached mount travels as the `i`-th mount source.
pub fn user_operations(
    spec: &[crate::volume::MountSpec],
    source_dirs: &[bool],
    read_only: bool,
    context: Option<&str>,
) -> Vec<MountOp> {
    use crate::volume::MountSource;
    let mut ops: Vec<(usize, MountOp)> = Vec::with_capacity(spec.len() + 2);
    let mut source = 0;
    for m in spec {
        let target = m.target.relative().to_string();
        let depth = target.split('/').count();
        match &m.source {
            MountSource::Bind { .. } | MountSource::Volume { .. } => {
                let dir = source_dirs.get(source).copied().unwrap_or(true);
                ops.push((
                    depth,
                    MountOp::Attach {
                        source,
                        target,
                        dir,
                    },
                ));
                source += 1;
            }
            MountSource::Tmpfs { size, mode } => {
                let mut flags = MsFlags::empty();
                for (on, f) in [
                    (m.read_only, MsFlags::MS_RDONLY),
                    (m.nosuid, MsFlags::MS_NOSUID),
                    (m.nodev, MsFlags::MS_NODEV),
                    (m.noexec, MsFlags::MS_NOEXEC),
                ] {
                    if on {
                        flags |= f;
                    }
                }
                let mut data: Vec<String> = Vec::new();
                if let Some(s) = size {
                    data.push(format!("size={s}"));
                }
                if let Some(m) = mode {
                    data.push(format!("mode={m:o}"));
                }
                let data = with_context(&data.join(","), context);
                ops.push((
                    depth,
                    MountOp::Tmpfs {
                        target,
                        flags: flags.bits(),
                        data: Some(data).filter(|d| !d.is_empty()),
                    },
                ));
            }
        }
    }
    // Parents before children: a mount on /data/sub must land on the /data mount.
    ops.sort_by_key(|(depth, _)| *depth);
    let mut ops: Vec<MountOp> = ops.into_iter().map(|(_, op)| op).collect();
    if read_only {
        if !spec.iter().any(|m| m.target.as_str() == "/tmp") {
            ops.insert(
                0,
                MountOp::Tmpfs {
                    target: "tmp".into(),
                    flags: (MsFlags::MS_NOSUID | MsFlags::MS_NODEV).bits(),
                    data: Some(with_context("mode=1777", context)),
                },
            );
        }
        ops.push(MountOp::RootReadOnly);
    }
    ops
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_mounts_come_parents_first_and_read_only_last() {
        let there = |_: &Path| true;
        let specs: Vec<_> = [
            crate::volume::mounts::parse_volume("/srv/a:/data/sub:ro", &there),
            crate::volume::mounts::parse_volume("vol:/data", &there),
            crate::volume::mounts::parse_tmpfs("/scratch:size=1m,mode=700"),
        ]
        .into_iter()
        .map(|p| p.unwrap().spec)
        .collect();
        let ops = user_operations(&specs, &[false, true], true, None);
        assert_eq!(
            ops,
            [
                MountOp::Tmpfs {
                    target: "tmp".into(),
                    flags: (MsFlags::MS_NOSUID | MsFlags::MS_NODEV).bits(),
                    data: Some("mode=1777".into())
                },
                MountOp::Attach {
                    source: 1,
                    target: "data".into(),
                    dir: true
                },
                MountOp::Tmpfs {
                    target: "scratch".into(),
                    flags: (MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC).bits(),
                    data: Some("size=1048576,mode=700".into())
                },
                MountOp::Attach {
                    source: 0,
                    target: "data/sub".into(),
                    dir: false
                },
                MountOp::RootReadOnly,
            ]
        );
        assert_eq!(user_operations(&[], &[], false, None), []);
    }

    #[test]
    fn operations_are_relative_and_ordered() {
        let ops = operations(&[], None, false);
        let pos = |pred: &dyn Fn(&MountOp) -> bool| ops.iter().position(pred).unwrap();
        let dev = pos(&|o| matches!(o, MountOp::Fs { target, .. } if target == "dev"));
        let null = pos(&|o| matches!(o, MountOp::Device { path, .. } if path == "dev/null"));
        let proc_ = pos(&|o| matches!(o, MountOp::Fs { target, .. } if target == "proc"));
        let sys_ro = pos(&|o| matches!(o, MountOp::ReadOnly { path } if path == "proc/sys"));
        let kcore = pos(&|o| matches!(o, MountOp::Mask { path } if path == "proc/kcore"));
        let net = pos(&|o| matches!(o, MountOp::Keep { path } if path == "proc/sys/net"));
        let firmware = pos(&|o| matches!(o, MountOp::Mask { path } if path == "sys/firmware"));
        let sys = pos(&|o| matches!(o, MountOp::Fs { target, .. } if target == "sys"));
        assert!(dev < null && proc_ < sys_ro && proc_ < kcore);
        // proc/sys/net is kept writable before proc/sys becomes read-only; sysfs masks come
        // after sysfs.
        assert!(net < sys_ro && sys < firmware);
        for op in &ops {
            let p = match op {
                MountOp::Fs { target, .. } => target,
                MountOp::Device { path, .. }
                | MountOp::Node { path, .. }
                | MountOp::Symlink { path, .. } => path,
                MountOp::ReadOnly { path } | MountOp::Mask { path } | MountOp::Keep { path } => {
                    path
                }
                MountOp::Attach { target, .. } | MountOp::Tmpfs { target, .. } => target,
                MountOp::RootReadOnly | MountOp::InScope => continue,
                MountOp::BindFile { path, .. } | MountOp::BindHost { path, .. } => path,
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
    fn the_cgroup_mount_alone_waits_for_the_scope_at_the_end() {
        let mut ops = operations(&[], None, true);
        ops.extend(user_operations(&[], &[], true, None));
        let before = ops.clone();
        defer_to_scope(&mut ops);
        let n = ops.len();
        assert_eq!(ops[n - 2], MountOp::InScope);
        assert!(matches!(&ops[n - 1], MountOp::Fs { fstype, target, .. }
            if fstype == "cgroup2" && target == "sys/fs/cgroup"));
        // The rest keeps its order, the read-only root last of it.
        let rest: Vec<_> = before
            .iter()
            .filter(|o| !matches!(o, MountOp::Fs { fstype, .. } if fstype == "cgroup2"))
            .cloned()
            .collect();
        assert_eq!(ops[..n - 2], rest[..]);
        assert_eq!(ops[n - 3], MountOp::RootReadOnly);
        // Once only.
        let once = ops.clone();
        defer_to_scope(&mut ops);
        assert_eq!(ops, once);
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
        let ops = operations(&[&tun], None, false);
        assert_eq!(
            ops.last(),
            Some(&MountOp::Device {
                path: "dev/net/tun".into(),
                source: "/dev/net/tun".into(),
                block: false,
                major: 10,
                minor: 200
            })
        );
        // In a user namespace: a node berthd makes, the first of the device mount.
        assert_eq!(
            operations(&[&tun], None, true).last(),
            Some(&MountOp::Node {
                path: "dev/net/tun".into(),
                node: "0".into(),
                source: "/dev/net/tun".into(),
                block: false,
                major: 10,
                minor: 200
            })
        );
    }

    #[test]
    fn labels_go_on_tmpfs_devpts_and_mqueue_only() {
        let ops = operations(
            &[],
            Some("system_u:object_r:container_file_t:s0:c1,c2"),
            false,
        );
        for op in &ops {
            if let MountOp::Fs { fstype, data, .. } = op {
                let labelled = data.as_deref().is_some_and(|d| {
                    d.contains("context=\"system_u:object_r:container_file_t:s0:c1,c2\"")
                });
                let should = matches!(fstype.as_str(), "tmpfs" | "devpts" | "mqueue");
                assert_eq!(labelled, should, "{fstype}: {data:?}");
            }
        }
    }

    #[test]
    fn the_root_is_decided_here_and_bounded() {
        let dirs = ContainerDirs::under(Path::new("/var/lib/berth/containers/web"));
        let (src, plan) = root(&["/l2".into(), "/l1".into()], &dirs, None).unwrap();
        assert_eq!(src.lowers, [PathBuf::from("/l2"), PathBuf::from("/l1")]);
        assert_eq!(src.upper, Path::new("/var/lib/berth/containers/web/upper"));
        assert_eq!(plan.target, Path::new("/var/lib/berth/containers/web/root"));
        let many: Vec<PathBuf> = (0..200).map(|i| format!("/l/{i}").into()).collect();
        assert_eq!(
            root(&many, &dirs, None).err(),
            Some(MountPlanError::TooManyLayers(200))
        );
    }
}
