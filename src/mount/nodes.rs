//! berthd's side of `--device` in a user namespace: the container's own copies of the device
//! nodes it was given, on a small tmpfs berthd makes.
//!
//! A host node bound into a container keeps the host's owner. In a user namespace that owner
//! (host root) is not mapped, so the node shows as `nobody` and a mode such as `/dev/fuse`'s
//! `0600` lets nobody in the container open it, root included (CAP_DAC_OVERRIDE only covers
//! inodes whose owner is mapped). Nor may the container make the node itself: a filesystem
//! mounted inside a user namespace never honours device nodes. So berthd — root of the initial
//! user namespace — makes a detached tmpfs (its superblock belongs to the initial namespace,
//! so its nodes open), creates each node there with the host node's numbers and permission
//! bits, owned by the container's root, and hands the mount to the leader, which binds each
//! node onto its path under /dev (as nspawn makes its nodes and chowns them to the range).
//! What the container may then do with a node is still decided by the scope's device policy.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use nix::fcntl::AtFlags;
use nix::sys::stat::{Mode, SFlag, fchmodat, makedev, mknodat};
use nix::unistd::{Gid, Uid, fchownat};
use thiserror::Error;

use super::MountOp;
use crate::sys::mount_api::{self, MountAttrFlags};

#[derive(Debug, Error)]
pub enum NodesError {
    #[error("cannot check the device {path}: {source}")]
    Stat {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is no longer the device {major}:{minor}")]
    Changed {
        path: String,
        major: u64,
        minor: u64,
    },
    #[error("cannot make the container's device nodes ({step}): {errno}")]
    Make {
        step: String,
        errno: nix::errno::Errno,
    },
}

/// The nodes the plan's [`MountOp::Node`] operations take from the device mount, made on a
/// fresh detached tmpfs, each owned by `owner` (the container root's host IDs); `None` when
/// the plan has none.
pub fn make(ops: &[MountOp], owner: (u32, u32)) -> Result<Option<OwnedFd>, NodesError> {
    let nodes: Vec<_> = ops
        .iter()
        .filter_map(|op| match op {
            MountOp::Node {
                node,
                source,
                block,
                major,
                minor,
                ..
            } => Some((node, source, *block, *major, *minor)),
            _ => None,
        })
        .collect();
    if nodes.is_empty() {
        return Ok(None);
    }
    let make = |step: &str| {
        let step = step.to_owned();
        move |errno| NodesError::Make { step, errno }
    };
    let fs = mount_api::fsopen(c"tmpfs").map_err(make("fsopen tmpfs"))?;
    for (k, v) in [
        (c"mode", c"755"),
        (c"size", c"64k"),
        (c"nr_inodes", c"1024"),
    ] {
        mount_api::fsconfig_set_string(fs.as_fd(), k, v).map_err(make("fsconfig"))?;
    }
    mount_api::fsconfig_create(fs.as_fd()).map_err(make("create tmpfs"))?;
    let dir = mount_api::fsmount(fs.as_fd(), MountAttrFlags::NOSUID | MountAttrFlags::NOEXEC)
        .map_err(make("fsmount"))?;
    for (node, source, block, major, minor) in nodes {
        let perms = host_node(source, block, major, minor)?;
        let kind = if block {
            SFlag::S_IFBLK
        } else {
            SFlag::S_IFCHR
        };
        let name = node.as_str();
        mknodat(&dir, name, kind, Mode::empty(), makedev(major, minor))
            .map_err(make(&format!("mknod {source}")))?;
        fchownat(
            &dir,
            name,
            Some(Uid::from_raw(owner.0)),
            Some(Gid::from_raw(owner.1)),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(make(&format!("chown {source}")))?;
        // After the chown, which clears nothing here (no setuid bits on a node), and never
        // through the umask.
        fchmodat(
            &dir,
            name,
            Mode::from_bits_truncate(perms),
            nix::sys::stat::FchmodatFlags::FollowSymlink,
        )
        .map_err(make(&format!("chmod {source}")))?;
    }
    Ok(Some(dir))
}

/// Check that the host's `path` is still the device the container was created with; its
/// permission bits.
fn host_node(path: &str, block: bool, major: u64, minor: u64) -> Result<u32, NodesError> {
    let meta = std::fs::symlink_metadata(Path::new(path)).map_err(|source| NodesError::Stat {
        path: path.into(),
        source,
    })?;
    let kind_ok = if block {
        meta.file_type().is_block_device()
    } else {
        meta.file_type().is_char_device()
    };
    let rdev = meta.rdev();
    if !kind_ok || nix::sys::stat::major(rdev) != major || nix::sys::stat::minor(rdev) != minor {
        return Err(NodesError::Changed {
            path: path.into(),
            major,
            minor,
        });
    }
    Ok(meta.mode() & 0o777)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(path: &str, major: u64, minor: u64) -> MountOp {
        MountOp::Node {
            path: path.trim_start_matches('/').into(),
            node: "0".into(),
            source: path.into(),
            block: false,
            major,
            minor,
        }
    }

    #[test]
    fn no_node_no_mount() {
        assert!(make(&[], (1, 1)).unwrap().is_none());
    }

    #[test]
    fn a_host_node_that_changed_is_refused() {
        // /dev/null is 1:3, never 1:5.
        let err = make(&[node("/dev/null", 1, 5)], (524288, 524288)).unwrap_err();
        assert!(matches!(err, NodesError::Changed { .. }), "{err}");
    }

    /// Needs root (CI runs unit tests as root): the node is made with the host's numbers and
    /// mode, owned by the given IDs, and opens (its superblock is the initial namespace's).
    #[test]
    fn nodes_are_made_owned_by_the_container_root_and_open() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test makes a tmpfs and a device node: run it as root"
        );
        let dir = make(&[node("/dev/null", 1, 3)], (524288, 524289))
            .unwrap()
            .unwrap();
        let st = nix::sys::stat::fstatat(&dir, "0", AtFlags::AT_SYMLINK_NOFOLLOW).unwrap();
        assert_eq!((st.st_uid, st.st_gid), (524288, 524289));
        assert_eq!(st.st_mode & 0o777, 0o666, "the host's mode of /dev/null");
        assert_eq!(nix::sys::stat::major(st.st_rdev), 1);
        assert_eq!(nix::sys::stat::minor(st.st_rdev), 3);
        let f = nix::fcntl::openat(
            &dir,
            "0",
            nix::fcntl::OFlag::O_WRONLY | nix::fcntl::OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .unwrap();
        assert_eq!(nix::unistd::write(&f, b"x").unwrap(), 1);
    }
}
