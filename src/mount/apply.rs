//! The helper's side of mounts: make the mount namespace private, mount the root overlay, then
//! apply the plan's operations inside it — all through the [`Syscalls`] seam, each target
//! resolved beneath the new root without following symlinks.

use nix::errno::Errno;
use nix::mount::MsFlags;

use super::MountOp;
use crate::sys::syscall::{NodeKind, Syscalls};

/// A failed mount step, with what it was doing.
pub type MountResult<T> = Result<T, (Errno, String)>;

fn ctx<T>(r: nix::Result<T>, what: impl FnOnce() -> String) -> MountResult<T> {
    r.map_err(|e| (e, what()))
}

/// The plan's operations, in order, inside the opened root; `nodes` is the device mount
/// berthd made (see [`super::nodes`]), when the plan has [`MountOp::Node`]s.
pub fn operations<S: Syscalls>(
    sys: &mut S,
    root: &S::Fd,
    nodes: Option<&S::Fd>,
    ops: &[MountOp],
) -> MountResult<()> {
    operations_with(sys, root, nodes, ops, &[])
}

/// [`operations`], with `sources` the detached mounts the plan's `Attach` operations name by
/// index.
pub fn operations_with<S: Syscalls>(
    sys: &mut S,
    root: &S::Fd,
    nodes: Option<&S::Fd>,
    ops: &[MountOp],
    sources: &[S::Fd],
) -> MountResult<()> {
    for op in ops {
        match op {
            MountOp::Attach {
                source,
                target,
                dir,
            } => {
                let Some(src) = sources.get(*source) else {
                    return Err((
                        Errno::EINVAL,
                        format!("no mount source {source} for /{target}"),
                    ));
                };
                let point = ctx(sys.mount_point(root, target, *dir), || {
                    format!("mount point /{target}")
                })?;
                ctx(sys.attach_onto(src, &point), || {
                    format!("mount on /{target}")
                })?;
            }
            op => apply(sys, root, nodes, op)?,
        }
    }
    Ok(())
}

/// Open a host device node and check it is `kind major:minor`: a node swapped for anything
/// else is refused, never bound into a container.
fn host_device<S: Syscalls>(
    sys: &mut S,
    source: &str,
    kind: NodeKind,
    major: u64,
    minor: u64,
) -> MountResult<S::Fd> {
    let fd = ctx(sys.open_host(std::path::Path::new(source)), || {
        format!("open {source}")
    })?;
    if !ctx(sys.is_device(&fd, kind, major, minor), || {
        format!("stat {source}")
    })? {
        return Err((
            Errno::EINVAL,
            format!("{source} is not the device {major}:{minor}"),
        ));
    }
    Ok(fd)
}

/// Apply one operation inside the root.
pub fn apply<S: Syscalls>(
    sys: &mut S,
    root: &S::Fd,
    nodes: Option<&S::Fd>,
    op: &MountOp,
) -> MountResult<()> {
    match op {
        MountOp::Fs {
            fstype,
            target,
            flags,
            data,
        } => {
            let dir = ctx(sys.ensure_dir(root, target), || format!("create /{target}"))?;
            ctx(
                sys.mount_fs(
                    fstype,
                    &dir,
                    MsFlags::from_bits_truncate(*flags),
                    data.as_deref(),
                ),
                || format!("mount {fstype} on /{target}"),
            )
        }
        MountOp::Device {
            path,
            source,
            block,
            major,
            minor,
        } => {
            let kind = if *block {
                NodeKind::Block
            } else {
                NodeKind::Char
            };
            let src = host_device(sys, source, kind, *major, *minor)?;
            let target = ctx(sys.file_in(root, path), || format!("create /{path}"))?;
            ctx(sys.bind(&src, &target, false), || {
                format!("bind {source} on /{path}")
            })
        }
        MountOp::Node {
            path, node, source, ..
        } => {
            let Some(nodes) = nodes else {
                return Err((
                    Errno::EINVAL,
                    format!("no device mount from berthd for {source}"),
                ));
            };
            let src = ctx(sys.open_in(nodes, node), || {
                format!("open berthd's copy of {source}")
            })?;
            let target = ctx(sys.file_in(root, path), || format!("create /{path}"))?;
            ctx(sys.bind(&src, &target, false), || {
                format!("bind berthd's copy of {source} on /{path}")
            })
        }
        MountOp::Keep { path } => {
            let fd = match sys.open_in(root, path) {
                Err(Errno::ENOENT) => return Ok(()),
                other => ctx(other, || format!("open /{path}"))?,
            };
            ctx(sys.bind(&fd, &fd, false), || format!("bind /{path}"))
        }
        MountOp::Symlink { path, target } => ctx(sys.symlink_in(root, path, target), || {
            format!("symlink /{path}")
        }),
        MountOp::ReadOnly { path } => {
            let fd = ctx(sys.open_in(root, path), || format!("open /{path}"))?;
            ctx(sys.bind(&fd, &fd, true), || format!("bind /{path}"))?;
            // Re-open: the handle above names the directory under the new bind mount.
            let fd = ctx(sys.open_in(root, path), || format!("open /{path}"))?;
            let flags =
                MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
            ctx(sys.remount_bind(&fd, flags), || {
                format!("remount /{path} read-only")
            })
        }
        MountOp::Mask { path } => {
            let fd = match sys.open_in(root, path) {
                Err(Errno::ENOENT) => return Ok(()),
                other => ctx(other, || format!("open /{path}"))?,
            };
            let hard =
                MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
            if ctx(sys.is_dir(&fd), || format!("stat /{path}"))? {
                return ctx(
                    sys.mount_fs("tmpfs", &fd, hard, Some("size=0,mode=000")),
                    || format!("mask /{path}"),
                );
            }
            // An empty regular file of berthd's, bound read-only: reads give nothing and writes
            // fail (a null device would swallow them; a read-only mount does not stop writes
            // to a device).
            let empty = super::EMPTY_FILE;
            let src = ctx(sys.open_host(std::path::Path::new(empty)), || {
                format!("open {empty}")
            })?;
            if !ctx(sys.is_empty_file(&src), || format!("stat {empty}"))? {
                return Err((Errno::EINVAL, format!("{empty} is not an empty file")));
            }
            ctx(sys.bind(&src, &fd, false), || format!("mask /{path}"))?;
            let fd = ctx(sys.open_in(root, path), || format!("open /{path}"))?;
            ctx(sys.remount_bind(&fd, hard), || {
                format!("mask /{path} read-only")
            })
        }
        MountOp::BindFile { source, path } => {
            // What the root has there decides: nothing, or an empty file (a mount point an
            // image build left), is covered; anything else is the image's own. A symlink on
            // the way (an /etc that is a link) also means the image arranged it itself.
            match sys.open_in(root, path) {
                Err(Errno::ENOENT) => {}
                Err(Errno::ELOOP) | Err(Errno::ENOTDIR) | Err(Errno::EXDEV) => return Ok(()),
                Err(e) => return Err((e, format!("open /{path}"))),
                Ok(fd) => {
                    if !ctx(sys.is_empty_file(&fd), || format!("stat /{path}"))? {
                        return Ok(());
                    }
                }
            }
            let src = ctx(sys.open_host(std::path::Path::new(source)), || {
                format!("open {source}")
            })?;
            let target = ctx(sys.file_in(root, path), || format!("create /{path}"))?;
            ctx(sys.bind(&src, &target, false), || {
                format!("bind {source} on /{path}")
            })?;
            let fd = ctx(sys.open_in(root, path), || format!("open /{path}"))?;
            let flags =
                MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
            ctx(sys.remount_bind(&fd, flags), || {
                format!("remount /{path} read-only")
            })
        }
        MountOp::BindHost { source, path } => {
            let src = ctx(sys.open_host(std::path::Path::new(source)), || {
                format!("open {source}")
            })?;
            let target = ctx(sys.ensure_dir(root, path), || format!("create /{path}"))?;
            ctx(sys.bind(&src, &target, false), || {
                format!("bind {source} on /{path}")
            })?;
            let fd = ctx(sys.open_in(root, path), || format!("open /{path}"))?;
            let flags =
                MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
            ctx(sys.remount_bind(&fd, flags), || {
                format!("remount /{path} read-only")
            })
        }
        MountOp::Attach { target, .. } => Err((
            Errno::EINVAL,
            format!("a mount on /{target} without its source"),
        )),
        MountOp::Tmpfs {
            target,
            flags,
            data,
        } => {
            let point = ctx(sys.mount_point(root, target, true), || {
                format!("mount point /{target}")
            })?;
            ctx(
                sys.mount_fs(
                    "tmpfs",
                    &point,
                    MsFlags::from_bits_truncate(*flags),
                    data.as_deref(),
                ),
                || format!("mount tmpfs on /{target}"),
            )
        }
        MountOp::RootReadOnly => ctx(sys.make_read_only(root), || {
            "make the root read-only".to_string()
        }),
        // The helper splits the plan here (see `helper::prepare`).
        MountOp::InScope => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::syscall::fake::Recorder;

    #[test]
    fn every_operation_in_order_inside_the_root() {
        let plan = crate::plan::tests::sample();
        let mut sys = Recorder {
            dirs: vec!["proc/acpi".into()],
            missing: vec!["proc/scsi".into()],
            ..Default::default()
        };
        operations(&mut sys, &String::new(), None, &plan.mounts).unwrap();
        assert!(sys.pos("mount proc /proc") < sys.pos("bind /proc/sys /proc/sys rec=true"));
        assert!(sys.pos("bind /proc/sys") < sys.pos("remount /proc/sys MS_RDONLY"));
        // Files are hidden under the host's null device, directories under an empty
        // read-only tmpfs, and a missing path is skipped.
        assert!(
            sys.calls
                .contains(&"bind //run/berth/scratch/empty /proc/kcore rec=false".to_string())
        );
        assert!(
            sys.pos("bind //run/berth/scratch/empty /proc/kcore")
                < sys.pos("remount /proc/kcore MS_RDONLY")
        );
        assert!(
            sys.calls
                .iter()
                .any(|c| c.starts_with("mount tmpfs /proc/acpi MS_RDONLY"))
        );
        assert!(!sys.calls.iter().any(|c| c.contains("proc/scsi")));
        assert!(sys.pos("mount tmpfs /dev ") < sys.pos("bind //dev/null /dev/null"));
        assert!(sys.pos("mount devpts /dev/pts") < sys.pos("symlink /dev/ptmx -> pts/ptmx"));
        assert!(!sys.calls.iter().any(|c| c.starts_with("mknod")));
    }

    #[test]
    fn generated_files_cover_only_what_the_image_does_not_supply() {
        let mut ops = Vec::new();
        crate::mount::network::files(&mut ops, std::path::Path::new("/run/c"));
        // The image ships a real /etc/hosts and a symlinked /etc/resolv.conf; /etc/hostname
        // is an empty mount point.
        let mut sys = Recorder {
            impostors: vec!["etc/hosts".into()],
            ..Default::default()
        };
        sys.failing_open
            .push(("etc/resolv.conf".into(), Errno::ELOOP));
        operations(&mut sys, &String::new(), None, &ops).unwrap();
        assert!(!sys.calls.iter().any(|c| c.contains("/etc/hosts")));
        assert!(!sys.calls.iter().any(|c| c.contains("/etc/resolv.conf")));
        assert!(
            sys.pos("bind //run/c/hostname /etc/hostname rec=false")
                < sys.pos("remount /etc/hostname MS_RDONLY")
        );
        // A missing file is made and covered.
        let mut sys = Recorder {
            missing: vec!["etc/hosts".into()],
            ..Default::default()
        };
        operations(&mut sys, &String::new(), None, &ops[..1]).unwrap();
        assert!(
            sys.calls
                .contains(&"bind //run/c/hosts /etc/hosts rec=false".to_string())
        );
    }

    #[test]
    fn a_host_directory_is_bound_read_only() {
        let op = MountOp::BindHost {
            source: "/run/berth/scratch/sys".into(),
            path: "sys".into(),
        };
        let mut sys = Recorder::default();
        apply(&mut sys, &String::new(), None, &op).unwrap();
        assert_eq!(
            sys.calls,
            [
                "bind //run/berth/scratch/sys /sys rec=false",
                "remount /sys MS_RDONLY|MS_NOSUID|MS_NODEV|MS_NOEXEC"
            ]
        );
    }

    #[test]
    fn user_mounts_resolve_their_points_then_mount_through_them() {
        let ops = [
            MountOp::Attach {
                source: 0,
                target: "data".into(),
                dir: true,
            },
            MountOp::Tmpfs {
                target: "scratch".into(),
                flags: 0,
                data: None,
            },
            MountOp::RootReadOnly,
        ];
        let mut sys = Recorder::default();
        operations_with(&mut sys, &String::new(), None, &ops, &["vol0".to_string()]).unwrap();
        assert_eq!(
            sys.calls,
            [
                "mount-point /data dir=true",
                "attach-onto vol0 /data",
                "mount-point /scratch dir=true",
                "mount tmpfs /scratch 0x0 -",
                "read-only /",
            ]
        );
        // A source that did not come is an error, not a skipped mount.
        let mut sys = Recorder::default();
        let (errno, _) = operations_with(&mut sys, &String::new(), None, &ops, &[]).unwrap_err();
        assert_eq!(errno, Errno::EINVAL);
        assert!(sys.calls.is_empty());
    }

    #[test]
    fn a_failing_mask_fails_the_start() {
        let plan = crate::plan::tests::sample();
        let mut sys = Recorder {
            failing: vec!["bind"],
            ..Default::default()
        };
        let (errno, what) = operations(&mut sys, &String::new(), None, &plan.mounts).unwrap_err();
        assert_eq!(errno, Errno::EPERM);
        assert!(
            what.starts_with("bind /proc/sys/net") || what.starts_with("mask "),
            "{what}"
        );
    }

    #[test]
    fn a_node_that_is_not_the_device_is_never_bound() {
        let plan = crate::plan::tests::sample();
        let mut sys = Recorder {
            impostors: vec!["/dev/null".into()],
            ..Default::default()
        };
        let (errno, what) = operations(&mut sys, &String::new(), None, &plan.mounts).unwrap_err();
        assert_eq!(errno, Errno::EINVAL);
        assert!(what.contains("/dev/null is not the device 1:3"), "{what}");
        assert!(!sys.calls.iter().any(|c| c.starts_with("bind //dev/null")));
        // Nor a mask source that is not an empty file.
        let mut sys = Recorder {
            impostors: vec!["/run/berth/scratch/empty".into()],
            ..Default::default()
        };
        let (_, what) = operations(&mut sys, &String::new(), None, &plan.mounts).unwrap_err();
        assert!(what.contains("is not an empty file"), "{what}");
    }
}
