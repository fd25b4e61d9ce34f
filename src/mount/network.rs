//! The mount side of networking, planned in berthd: the generated `/etc/hosts`,
//! `/etc/hostname` and `/etc/resolv.conf`, and what changes for a container that has no
//! network namespace of its own (`--network host`, `container:NAME`).
//!
//! Without a network namespace of its own:
//! - `/proc/sys/net` is not kept writable: it would be the host's (or the other container's)
//!   network settings, and without a user namespace the container's root owns them
//!   (net_ctl_permissions() gives uid 0 of the namespace's owner write access);
//! - with a user namespace, the container may not mount a sysfs of its own: sysfs is tagged
//!   with the mounter's network namespace and needs CAP_SYS_ADMIN over the user namespace
//!   that owns it (net_current_may_mount()), here the initial one or another container's. It
//!   gets the helper's fresh sysfs from the scratch directory instead (mounted before the
//!   clone, in that same network namespace, so /sys/class/net lists the right devices),
//!   bound read-only.

use std::path::Path;

use super::MountOp;

/// The generated files: (name in the runtime directory, path in the container).
pub const FILES: [(&str, &str); 3] = [
    ("hosts", "etc/hosts"),
    ("hostname", "etc/hostname"),
    ("resolv.conf", "etc/resolv.conf"),
];

/// Bind the files berthd writes into `dir` over the container's, unless it has its own.
pub fn files(ops: &mut Vec<MountOp>, dir: &Path) {
    ops.extend(FILES.iter().map(|(name, path)| MountOp::BindFile {
        source: dir.join(name).display().to_string(),
        path: (*path).into(),
    }));
}

/// Adjust the standard operations for a container sharing a network namespace it does not
/// own (see the module documentation). `scratch` is the plan's scratch directory.
pub fn shared_netns(ops: &mut Vec<MountOp>, user_namespace: bool, scratch: &Path) {
    ops.retain(|o| !matches!(o, MountOp::Keep { path } if path == "proc/sys/net"));
    if !user_namespace {
        return;
    }
    for op in ops.iter_mut() {
        if matches!(op, MountOp::Fs { fstype, target, .. } if fstype == "sysfs" && target == "sys")
        {
            *op = MountOp::BindHost {
                source: scratch.join("sys").display().to_string(),
                path: "sys".into(),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_bound_from_the_runtime_directory() {
        let mut ops = Vec::new();
        files(&mut ops, Path::new("/run/berth/containers/web"));
        assert_eq!(
            ops[2],
            MountOp::BindFile {
                source: "/run/berth/containers/web/resolv.conf".into(),
                path: "etc/resolv.conf".into()
            }
        );
        assert_eq!(ops.len(), 3);
    }

    #[test]
    fn a_shared_netns_keeps_no_writable_net_sysctls_and_binds_sysfs_in_a_userns() {
        let std = super::super::operations(&[], None, true);
        let mut ops = std.clone();
        shared_netns(&mut ops, false, Path::new("/run/berth/scratch"));
        assert!(
            !ops.iter()
                .any(|o| matches!(o, MountOp::Keep { path } if path == "proc/sys/net"))
        );
        assert_eq!(ops.len(), std.len() - 1);
        // Without a user namespace the container mounts its own sysfs.
        assert!(
            ops.iter()
                .any(|o| matches!(o, MountOp::Fs { fstype, .. } if fstype == "sysfs"))
        );
        let mut ops = std.clone();
        shared_netns(&mut ops, true, Path::new("/run/berth/scratch"));
        let at = |ops: &[MountOp], f: &dyn Fn(&MountOp) -> bool| ops.iter().position(f).unwrap();
        let sys = at(
            &ops,
            &|o| matches!(o, MountOp::BindHost { path, .. } if path == "sys"),
        );
        assert_eq!(
            ops[sys],
            MountOp::BindHost {
                source: "/run/berth/scratch/sys".into(),
                path: "sys".into()
            }
        );
        // Where the fresh sysfs was: before the cgroup mount and the sysfs masks.
        let cg = at(
            &ops,
            &|o| matches!(o, MountOp::Fs { target, .. } if target == "sys/fs/cgroup"),
        );
        let fw = at(
            &ops,
            &|o| matches!(o, MountOp::Mask { path } if path == "sys/firmware"),
        );
        assert!(sys < cg && sys < fw);
        assert!(
            !ops.iter()
                .any(|o| matches!(o, MountOp::Fs { fstype, .. } if fstype == "sysfs"))
        );
    }
}
