//! The helper's side of mounts: make the mount namespace private, mount the root overlay, then
//! apply the plan's operations inside it — all through the [`Syscalls`] seam, each target
//! resolved beneath the new root without following symlinks.

use nix::errno::Errno;
use nix::mount::MsFlags;

use super::{MountOp, RootPlan};
use crate::sys::syscall::{NodeKind, Syscalls};

/// A failed mount step, with what it was doing.
pub type MountResult<T> = Result<T, (Errno, String)>;

fn ctx<T>(r: nix::Result<T>, what: impl FnOnce() -> String) -> MountResult<T> {
    r.map_err(|e| (e, what()))
}

/// Everything before the pivot: private mounts, the overlay root, then `ops` in order.
pub fn root<S: Syscalls>(sys: &mut S, root: &RootPlan, ops: &[MountOp]) -> MountResult<()> {
    ctx(sys.make_rprivate(), || "make / private".into())?;
    ctx(sys.mount_overlay(&root.target, &root.options), || {
        format!("mount overlay on {}", root.target.display())
    })?;
    let fd = ctx(sys.open_dir(&root.target), || {
        format!("open {}", root.target.display())
    })?;
    for op in ops {
        apply(sys, &fd, op)?;
    }
    Ok(())
}

/// Apply one operation inside the root.
pub fn apply<S: Syscalls>(sys: &mut S, root: &S::Fd, op: &MountOp) -> MountResult<()> {
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
            mode,
            block,
            major,
            minor,
        } => {
            let kind = if *block {
                NodeKind::Block
            } else {
                NodeKind::Char
            };
            ctx(
                sys.mknod_in(root, path, kind, *mode, *major, *minor),
                || format!("mknod /{path}"),
            )
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
            let r = if ctx(sys.is_dir(&fd), || format!("stat /{path}"))? {
                sys.mount_fs("tmpfs", &fd, MsFlags::MS_RDONLY, Some("size=0,mode=000"))
            } else {
                sys.bind_host(std::path::Path::new("/dev/null"), &fd)
            };
            ctx(r, || format!("mask /{path}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::syscall::fake::Recorder;

    #[test]
    fn the_root_comes_first_then_every_operation_in_order() {
        let plan = crate::plan::tests::sample();
        let mut sys = Recorder {
            dirs: vec!["proc/acpi".into()],
            missing: vec!["proc/scsi".into()],
            ..Default::default()
        };
        root(&mut sys, &plan.root, &plan.mounts).unwrap();
        assert_eq!(sys.calls[0], "make-rprivate /");
        assert!(
            sys.calls[1].starts_with("mount-overlay /var/lib/berth/containers/web/root lowerdir=")
        );
        assert!(sys.pos("mount proc /proc") < sys.pos("bind /proc/sys /proc/sys rec=true"));
        assert!(sys.pos("bind /proc/sys") < sys.pos("remount /proc/sys MS_RDONLY"));
        // Files are hidden under /dev/null, directories under an empty read-only tmpfs, and a
        // missing path is skipped.
        assert!(
            sys.calls
                .contains(&"bind-host /dev/null /proc/kcore".to_string())
        );
        assert!(
            sys.calls
                .iter()
                .any(|c| c.starts_with("mount tmpfs /proc/acpi MS_RDONLY"))
        );
        assert!(!sys.calls.iter().any(|c| c.contains("proc/scsi")));
        assert!(sys.pos("mount tmpfs /dev ") < sys.pos("mknod /dev/null Char 666 1:3"));
        assert!(sys.pos("mount devpts /dev/pts") < sys.pos("symlink /dev/ptmx -> pts/ptmx"));
    }

    #[test]
    fn a_failing_mask_fails_the_start() {
        let plan = crate::plan::tests::sample();
        let mut sys = Recorder {
            failing: vec!["bind-host"],
            ..Default::default()
        };
        let (errno, what) = root(&mut sys, &plan.root, &plan.mounts).unwrap_err();
        assert_eq!(errno, Errno::EPERM);
        assert!(what.starts_with("mask /proc/"), "{what}");
    }
}
