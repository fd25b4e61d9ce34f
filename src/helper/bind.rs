//! The helper's live bind mount (`berthctl bind`): berthd made the detached mount on the host
//! side (`open_tree` of a descriptor the caller opened, read-only and idmapped as asked); the
//! helper, non-dumpable, joins only the container's mount namespace (it stays root of the
//! host, so what it makes can be given to the container's mapped root), resolves the mount
//! point inside the container's root with `openat2(RESOLVE_IN_ROOT)` — making it with
//! `--mkdir` — and attaches the mount onto that very descriptor (`move_mount` with both
//! `EMPTY_PATH` flags), so a symlink swapped meanwhile cannot redirect it (CVE-2021-30465).

use std::os::fd::{AsFd, OwnedFd};

use nix::errno::Errno;
use nix::sched::CloneFlags;

use super::{StepResult, fail};
use crate::copy::bind::MountKind;
use crate::plan::exec::BindPlan;
use crate::protocol::{self, FromHelper, Step};

fn bind(plan: &BindPlan, mut fds: Vec<OwnedFd>) -> StepResult<()> {
    if fds.len() != 2 {
        return Err((Step::Protocol, Errno::EINVAL, "descriptors".into()));
    }
    let mount = fds.remove(1);
    let leader = fds.remove(0);
    nix::sys::prctl::set_dumpable(false)
        .map_err(|e| (Step::Join, e, "make the helper non-dumpable".into()))?;
    nix::sched::setns(leader.as_fd(), CloneFlags::CLONE_NEWNS)
        .map_err(|e| (Step::Join, e, "join the container's mount namespace".into()))?;
    drop(leader);
    let root = crate::copy::Root::open(std::path::Path::new("/"))
        .map_err(|e| (Step::Mount, e.errno(), e.to_string()))?;
    let kind = if plan.dir {
        MountKind::Dir
    } else {
        MountKind::File
    };
    let point =
        crate::copy::bind::prepare_target(&root, &plan.target, kind, plan.mkdir, plan.owner)
            .map_err(|e| (Step::Mount, e.errno(), e.to_string()))?;
    crate::sys::mount_api::move_mount_onto(mount.as_fd(), point.as_fd())
        .map_err(|e| (Step::Mount, e, format!("mount on {}", plan.target)))
}

/// The helper's bind mode: `fds` are the request's (plan memfd, leader pidfd, the mount).
pub fn run(sock: OwnedFd, mut fds: Vec<OwnedFd>) -> ! {
    if fds.is_empty() {
        fail(
            &sock,
            (
                Step::Protocol,
                Errno::EPROTO,
                "a bind without its plan".into(),
            ),
        );
    }
    let plan: BindPlan = match protocol::read_sealed(fds.remove(0)) {
        Ok(p) => p,
        Err(e) => fail(
            &sock,
            (Step::Protocol, Errno::EPROTO, format!("the bind plan: {e}")),
        ),
    };
    match bind(&plan, fds) {
        Ok(()) => match protocol::send(sock.as_fd(), &FromHelper::Bound, &[]) {
            Ok(()) => std::process::exit(0),
            Err(e) => {
                eprintln!("berth-helper: cannot report the bind to berthd: {e}");
                std::process::exit(1)
            }
        },
        Err(failure) => fail(&sock, failure),
    }
}
