//! The mount point of a live bind mount (`berthctl bind NAME HOSTPATH [PATH] [--mkdir]`):
//! resolved, and with `--mkdir` created, inside the container's root as an `O_PATH`
//! descriptor, which the helper hands to `move_mount(2)` with `MOVE_MOUNT_T_EMPTY_PATH`. The
//! mount then lands on the very inode that was checked, never on whatever a path names a
//! moment later (CVE-2021-30465, where runc mounted onto a path a container had swapped for a
//! symlink).
//!
//! The helper's order for a live bind, in the container's mount namespace (which
//! `move_mount` requires of its target): `open_tree(source, OPEN_TREE_CLONE)` on the host
//! side first (plus `mount_setattr(MOUNT_ATTR_RDONLY)` for `--read-only`, and the idmap of the
//! container's user namespace), then `setns` into the container's namespaces, then
//! [`prepare_target`] against `/` (now the container's root), then `move_mount`.

use std::os::fd::{AsFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::{Mode, SFlag};
use nix::unistd::{Gid, Uid};

use super::CopyError;
use super::resolve::{CopyPath, Root, on_kernel_fs};

/// What is mounted: a directory needs a directory to cover, anything else a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountKind {
    Dir,
    File,
}

/// Open (with `mkdir`, make) the mount point `path` inside `root` for a source of `kind`.
/// Made directories and files belong to `owner` (host IDs: the container's root as its user
/// namespace maps it), mode 0755 and 0644. A symlink on the way or at the end resolves inside
/// the root. Refused: `/`, a point of the other kind, and a point on a kernel file system.
pub fn prepare_target(
    root: &Root,
    path: &str,
    kind: MountKind,
    mkdir: bool,
    owner: Option<(u32, u32)>,
) -> Result<OwnedFd, CopyError> {
    let p = CopyPath::parse(path)?;
    if p.names.is_empty() {
        return Err(CopyError::refused(
            path.as_bytes(),
            "cannot mount over the root",
        ));
    }
    let fd = match root.open_at(&p.whole(), OFlag::O_PATH) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) if mkdir => make(root, &p, kind, owner)?,
        Err(Errno::ENOENT) => {
            return Err(CopyError::NotFound {
                path: path.to_string(),
            });
        }
        Err(e) => return Err(CopyError::io("open", path.as_bytes(), e)),
    };
    let st = nix::sys::stat::fstat(&fd).map_err(|e| CopyError::io("stat", path.as_bytes(), e))?;
    let is_dir = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR;
    match (kind, is_dir) {
        (MountKind::Dir, false) => {
            return Err(CopyError::refused(
                path.as_bytes(),
                "a directory cannot be mounted on a file",
            ));
        }
        (MountKind::File, true) => {
            return Err(CopyError::refused(
                path.as_bytes(),
                "a file cannot be mounted on a directory",
            ));
        }
        _ => {}
    }
    if on_kernel_fs(fd.as_fd()).map_err(|e| CopyError::io("statfs", path.as_bytes(), e))? {
        return Err(CopyError::refused(
            path.as_bytes(),
            "is on a kernel file system",
        ));
    }
    Ok(fd)
}

/// Make the missing components of `p`, one name at a time below an open directory.
fn make(
    root: &Root,
    p: &CopyPath,
    kind: MountKind,
    owner: Option<(u32, u32)>,
) -> Result<OwnedFd, CopyError> {
    let chown = |fd: &OwnedFd, name: &[u8]| -> Result<(), CopyError> {
        if let Some((uid, gid)) = owner {
            nix::unistd::fchownat(
                fd,
                "",
                Some(Uid::from_raw(uid)),
                Some(Gid::from_raw(gid)),
                nix::fcntl::AtFlags::AT_EMPTY_PATH,
            )
            .map_err(|e| CopyError::io("chown", name, e))?;
        }
        Ok(())
    };
    let dir_flags = OFlag::O_PATH | OFlag::O_DIRECTORY;
    let mut cur = root
        .open_at(b"/", dir_flags)
        .map_err(|e| CopyError::io("open", b"/", e))?;
    let last = p.names.len() - 1;
    for (i, name) in p.names.iter().enumerate() {
        let want_dir = i < last || kind == MountKind::Dir;
        // An existing component is looked up by the kernel within the root (it may be a
        // symlink that resolves inside); a missing one is made right here.
        let prefix = CopyPath {
            names: p.names[..=i].to_vec(),
            ..p.clone()
        }
        .whole();
        let flags = if want_dir { dir_flags } else { OFlag::O_PATH };
        cur = match root.open_at(&prefix, flags) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => {
                let created = if want_dir {
                    nix::sys::stat::mkdirat(&cur, name.as_slice(), Mode::from_bits_truncate(0o755))
                } else {
                    nix::fcntl::openat(
                        &cur,
                        name.as_slice(),
                        OFlag::O_CREAT
                            | OFlag::O_EXCL
                            | OFlag::O_WRONLY
                            | OFlag::O_NOFOLLOW
                            | OFlag::O_CLOEXEC,
                        Mode::from_bits_truncate(0o644),
                    )
                    .map(drop)
                };
                match created {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(CopyError::io("create", name, e)),
                }
                let fd = nix::fcntl::openat(
                    &cur,
                    name.as_slice(),
                    flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| match e {
                    // It exists, but as a symlink whose target is missing: `mkdir -p` refuses
                    // too, and making the target is not what anyone asked for.
                    Errno::ELOOP | Errno::ENOTDIR => {
                        CopyError::refused(&prefix, "is a symlink to nothing inside the container")
                    }
                    e => CopyError::io("open", name, e),
                })?;
                chown(&fd, name)?;
                fd
            }
            Err(e) => return Err(CopyError::io("open", &prefix, e)),
        };
    }
    Ok(cur)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, symlink};

    fn ino(fd: &OwnedFd) -> u64 {
        nix::sys::stat::fstat(fd).unwrap().st_ino
    }

    #[test]
    fn mount_points_resolve_inside_the_root_and_are_made_on_request() {
        let t = tempfile::tempdir().unwrap();
        let rootdir = t.path().join("root");
        std::fs::create_dir_all(rootdir.join("srv/data")).unwrap();
        std::fs::create_dir_all(t.path().join("outside")).unwrap();
        symlink(t.path().join("outside"), rootdir.join("escape")).unwrap();
        let root = Root::open(&rootdir).unwrap();
        let fd = prepare_target(&root, "/srv/data", MountKind::Dir, false, None).unwrap();
        assert_eq!(
            ino(&fd),
            std::fs::metadata(rootdir.join("srv/data")).unwrap().ino()
        );
        // A symlink to a host directory is a path inside the root: missing there.
        assert!(matches!(
            prepare_target(&root, "/escape", MountKind::Dir, false, None),
            Err(CopyError::NotFound { .. })
        ));
        // With mkdir, still nothing is made outside: the dangling symlink is refused.
        assert!(matches!(
            prepare_target(&root, "/escape/sub", MountKind::Dir, true, None),
            Err(CopyError::Refused { .. })
        ));
        assert_eq!(
            std::fs::read_dir(t.path().join("outside")).unwrap().count(),
            0
        );
        // Once its target exists inside the root, the symlink leads there.
        let inside = rootdir.join(t.path().join("outside").strip_prefix("/").unwrap());
        std::fs::create_dir_all(&inside).unwrap();
        let fd = prepare_target(
            &root,
            "/escape/sub",
            MountKind::Dir,
            true,
            Some((100_000, 100_000)),
        )
        .unwrap();
        assert_eq!(
            std::fs::read_dir(t.path().join("outside")).unwrap().count(),
            0
        );
        let m = std::fs::metadata(inside.join("sub")).unwrap();
        assert_eq!(ino(&fd), m.ino());
        assert_eq!((m.uid(), m.mode() & 0o7777), (100_000, 0o755));
        // A file mount point is a file.
        let fd = prepare_target(&root, "/etc/resolv.conf", MountKind::File, true, None).unwrap();
        assert!(rootdir.join("etc/resolv.conf").is_file());
        assert_eq!(
            ino(&fd),
            std::fs::metadata(rootdir.join("etc/resolv.conf"))
                .unwrap()
                .ino()
        );
    }

    #[test]
    fn wrong_kinds_the_root_and_kernel_files_are_refused() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("d")).unwrap();
        std::fs::write(t.path().join("f"), "").unwrap();
        let root = Root::open(t.path()).unwrap();
        for (path, kind) in [
            ("/d", MountKind::File),
            ("/f", MountKind::Dir),
            ("/", MountKind::Dir),
        ] {
            assert!(
                matches!(
                    prepare_target(&root, path, kind, true, None),
                    Err(CopyError::Refused { .. })
                ),
                "{path}"
            );
        }
        assert!(matches!(
            prepare_target(&root, "/a/../b", MountKind::Dir, true, None),
            Err(CopyError::InvalidPath { .. })
        ));
        let host = Root::open(std::path::Path::new("/")).unwrap();
        assert!(matches!(
            prepare_target(&host, "/proc/sys", MountKind::Dir, false, None),
            Err(CopyError::Refused { .. })
        ));
    }
}
