//! berthd's side of the root: the detached overlay a container starts on (see the module
//! documentation of [`super`] and [`super::idmap`]), made while the scope job runs.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use super::RootSource;
use super::idmap::{self, IdmapError, Overlay, UpperDirs};
use crate::sys::mount_api::MountAttrFlags;

/// Build the container's root as a detached overlay: every lower layer an idmapped clone
/// through `userns` (the container's user namespace, maps written), or the layer as it is
/// without one; the writable layer a plain directory. (Not nodev: a node root makes with
/// CAP_MKNOD, which only `--userns=host` can use, still meets the scope's device policy.)
pub fn build(src: &RootSource, userns: Option<BorrowedFd<'_>>) -> Result<OwnedFd, IdmapError> {
    let lowers = src
        .lowers
        .iter()
        .map(|p| match userns {
            Some(u) => idmap::idmapped_clone(p, u),
            None => idmap::open_dir(p),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let upper = idmap::open_dir(&src.upper)?;
    let work = idmap::open_dir(&src.work)?;
    let borrowed: Vec<BorrowedFd<'_>> = lowers.iter().map(|l| l.as_fd()).collect();
    let options: Vec<(&str, &str)> = src
        .context
        .as_deref()
        .map(|c| ("context", c))
        .into_iter()
        .collect();
    idmap::mount_overlay(&Overlay {
        lowers: &borrowed,
        upper: Some(UpperDirs {
            upper: upper.as_fd(),
            work: work.as_fd(),
        }),
        source: "berth",
        options: &options,
        attrs: MountAttrFlags::empty(),
    })
}
