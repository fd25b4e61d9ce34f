//! Namespaces: which ones a container gets (planned in berthd) and in which order the helper
//! makes them.
//!
//! The helper clones the leader into every namespace but the cgroup one at once (`clone3`):
//! the leader is PID 1 of the new PID namespace, and with a user namespace all the others are
//! owned by it. The cgroup namespace is made by the leader after berthd has moved it into its
//! scope, so that the namespace's root is the scope's cgroup.

use nix::sched::CloneFlags;
use serde::{Deserialize, Serialize};

/// The namespaces a container gets. With `user`, every other namespace is created inside
/// (owned by) the container's user namespace, as podman does: root in the container is root
/// over its own mounts, network and hostname, and nothing else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Namespaces {
    pub user: bool,
    pub mount: bool,
    pub uts: bool,
    pub ipc: bool,
    pub net: bool,
    /// Instead of a network namespace of its own, the leader joins one berthd hands over with
    /// the plan (`--network container:NAME`): the helper `setns(2)`s into it before the
    /// clone, while it is still root of the initial user namespace (the leader, root only of
    /// its own user namespace, may not enter a namespace another user namespace owns).
    #[serde(default)]
    pub join_net: bool,
    pub pid: bool,
    pub cgroup: bool,
}

impl Namespaces {
    /// What a container gets: all of them; a user namespace unless `--userns=host`.
    pub fn container(user: bool) -> Namespaces {
        Namespaces {
            user,
            mount: true,
            uts: true,
            ipc: true,
            net: true,
            join_net: false,
            pid: true,
            cgroup: true,
        }
    }

    /// The flags the leader is cloned with (it is PID 1 of the new PID namespace).
    pub fn at_clone(&self) -> CloneFlags {
        let mut f = CloneFlags::empty();
        for (on, flag) in [
            (self.user, CloneFlags::CLONE_NEWUSER),
            (self.mount, CloneFlags::CLONE_NEWNS),
            (self.uts, CloneFlags::CLONE_NEWUTS),
            (self.ipc, CloneFlags::CLONE_NEWIPC),
            (self.net, CloneFlags::CLONE_NEWNET),
            (self.pid, CloneFlags::CLONE_NEWPID),
        ] {
            if on {
                f |= flag;
            }
        }
        f
    }

    /// The flags the leader unshares once it is in its scope.
    pub fn in_scope(&self) -> CloneFlags {
        if self.cgroup {
            CloneFlags::CLONE_NEWCGROUP
        } else {
            CloneFlags::empty()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cgroup_namespace_waits_for_the_scope() {
        let ns = Namespaces::container(true);
        assert!(!ns.at_clone().contains(CloneFlags::CLONE_NEWCGROUP));
        assert!(ns.at_clone().contains(
            CloneFlags::CLONE_NEWPID | CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWUSER
        ));
        assert_eq!(ns.in_scope(), CloneFlags::CLONE_NEWCGROUP);
        assert!(
            !Namespaces::container(false)
                .at_clone()
                .contains(CloneFlags::CLONE_NEWUSER)
        );
    }
}
