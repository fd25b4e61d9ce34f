//! Namespaces: which ones a container gets (planned in berthd) and in which order the helper
//! makes them.
//!
//! The helper unshares everything but the cgroup namespace before it forks the leader (so the
//! leader is PID 1 of the new PID namespace); the cgroup namespace is made by the leader after
//! berthd has moved it into its scope, so that the namespace's root is the scope's cgroup.

use nix::sched::CloneFlags;
use serde::{Deserialize, Serialize};

/// The namespaces a container gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Namespaces {
    pub mount: bool,
    pub uts: bool,
    pub ipc: bool,
    pub net: bool,
    pub pid: bool,
    pub cgroup: bool,
}

impl Namespaces {
    /// What every container gets today: all of them (user namespaces come with the security
    /// layer).
    pub fn container() -> Namespaces {
        Namespaces {
            mount: true,
            uts: true,
            ipc: true,
            net: true,
            pid: true,
            cgroup: true,
        }
    }

    /// The flags the helper unshares before forking the leader.
    pub fn before_fork(&self) -> CloneFlags {
        let mut f = CloneFlags::empty();
        for (on, flag) in [
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
        let ns = Namespaces::container();
        assert!(!ns.before_fork().contains(CloneFlags::CLONE_NEWCGROUP));
        assert!(
            ns.before_fork()
                .contains(CloneFlags::CLONE_NEWPID | CloneFlags::CLONE_NEWNS)
        );
        assert_eq!(ns.in_scope(), CloneFlags::CLONE_NEWCGROUP);
    }
}
