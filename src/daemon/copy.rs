//! Copying into and out of a running container (`Container.CopyTo`/`CopyFrom`, `berthctl
//! cp`) and live bind mounts (`Container.Bind`, `berthctl bind`).
//!
//! A copy is a stream ([`crate::copy::stream`]) on a pipe between berthctl, which does the
//! host side as the caller, and berthd, which does the container side against the
//! container's root (`/proc/LEADER/root`, opened once) with every lookup confined to it by
//! the kernel (`openat2(RESOLVE_IN_ROOT)`) — in a blocking thread, so berthd serves other
//! clients meanwhile. Nothing from the container runs on the host side. Files copied in
//! belong to the container's root as its user namespace maps it (or keep their IDs, shifted
//! into its range, with `Archive`).

use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use tracing::info;

use super::error::{Error, Result};
use super::table::{Registry, State};
use crate::copy::{self, CopyError, CopyStats, IdMap, Ownership, ReceiveOptions, Root};
use crate::plan::exec::BindPlan;
use crate::protocol::{self, FromHelper, Step, ToHelper};
use crate::spawn::Helper;
use crate::sys::mount_api::{self, MountAttrFlags};

fn copy_error(e: CopyError) -> Error {
    match e {
        CopyError::LimitExceeded(_) => Error::LimitExceeded(e.to_string()),
        CopyError::InvalidPath { .. } | CopyError::NotFound { .. } | CopyError::Refused { .. } => {
            Error::InvalidArgument(e.to_string())
        }
        e => Error::Failed(e.to_string()),
    }
}

/// The file the caller's descriptor names, opened in berthd's mount namespace: by the path
/// the kernel reports for it, without following a final symlink, and only if it is the very
/// same inode (the caller proved it may reach that file; a path that now names another file
/// is refused).
fn same_file_here(theirs: std::os::fd::BorrowedFd<'_>) -> Result<OwnedFd> {
    use std::os::fd::AsRawFd;
    let refused = || Error::InvalidArgument("the bind source is not visible to berthd".into());
    let path = std::fs::read_link(format!("/proc/self/fd/{}", theirs.as_raw_fd()))
        .map_err(|e| Error::io("resolve the bind source", e))?;
    let here = nix::fcntl::open(
        &path,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|_| refused())?;
    let (a, b) = (
        nix::sys::stat::fstat(theirs).map_err(|_| refused())?,
        nix::sys::stat::fstat(here.as_fd()).map_err(|_| refused())?,
    );
    if (a.st_dev, a.st_ino) != (b.st_dev, b.st_ino) {
        return Err(refused());
    }
    Ok(here)
}

impl Registry {
    /// The leader and the ID map of a running container.
    fn running_root(&self, name: &str) -> Result<(i32, std::sync::Arc<OwnedFd>, IdMap)> {
        let (leader, pidfd, spec) =
            self.with(name, |e| match (e.state, e.leader, &e.pidfd) {
                (State::Running, Some(l), Some(fd)) => Ok((l, fd.clone(), e.spec.clone())),
                (s, _, _) => Err(Error::InvalidState {
                    name: name.into(),
                    state: s.as_str(),
                    hint: ", not running",
                }),
            })??;
        let map = match self.id_range(&spec)? {
            Some(r) if spec.security.userns.request().is_some() => IdMap {
                inside: 0,
                outside: r.host_start,
                count: r.count,
            },
            _ => IdMap::IDENTITY,
        };
        Ok((leader, pidfd, map))
    }

    /// Apply the copy stream on `stream` at `path` inside container `name`.
    pub(super) async fn copy_to(
        &self,
        name: &str,
        path: String,
        stream: OwnedFd,
        archive: bool,
    ) -> Result<CopyStats> {
        let (leader, _pidfd, map) = self.running_root(name)?;
        let ownership = if archive {
            Ownership::Preserve(map)
        } else {
            Ownership::Fixed {
                uid: 0,
                gid: 0,
                map,
            }
        };
        let root_path = format!("/proc/{leader}/root");
        let stats = tokio::task::spawn_blocking(move || {
            let root = Root::open(std::path::Path::new(&root_path))?;
            copy::receive(
                std::fs::File::from(stream),
                |is_dir| root.resolve_dest(&path, is_dir),
                &ReceiveOptions {
                    limits: copy::Limits::default(),
                    ownership,
                    strip_setid: false,
                },
            )
        })
        .await
        .map_err(|e| Error::Failed(format!("the copy: {e}")))?
        .map_err(copy_error)?;
        info!(
            "copied {} entries ({} bytes) into {name}",
            stats.entries, stats.bytes
        );
        Ok(stats)
    }

    /// Write `path` of container `name` to `stream` as a copy stream.
    pub(super) async fn copy_from(
        &self,
        name: &str,
        path: String,
        stream: OwnedFd,
    ) -> Result<CopyStats> {
        let (leader, _pidfd, _) = self.running_root(name)?;
        let root_path = format!("/proc/{leader}/root");
        tokio::task::spawn_blocking(move || {
            let root = Root::open(std::path::Path::new(&root_path))?;
            let item = root.open_item(&path)?;
            copy::send(item, std::fs::File::from(stream), &copy::Limits::default())
        })
        .await
        .map_err(|e| Error::Failed(format!("the copy: {e}")))?
        .map_err(copy_error)
    }

    /// Mount what `source` (a descriptor the caller opened) names on `target` in running
    /// container `name`.
    pub(super) async fn bind(
        &self,
        name: &str,
        source: OwnedFd,
        target: crate::volume::ContainerPath,
        read_only: bool,
        mkdir: bool,
        idmap: bool,
    ) -> Result<()> {
        let (leader, pidfd, map) = self.running_root(name)?;
        let mount = match mount_api::open_tree_clone_fd(source.as_fd(), true) {
            // The source is a mount of the caller's mount namespace, not of berthd's own
            // (berthd.service's Protect* settings give it one): clone the same file as berthd
            // sees it.
            Err(nix::errno::Errno::EINVAL) => {
                let here = same_file_here(source.as_fd())?;
                mount_api::open_tree_clone_fd(here.as_fd(), true)
            }
            r => r,
        }
        .map_err(|e| Error::InvalidArgument(format!("the bind source: {}", e.desc())))?;
        drop(source);
        let mut set = MountAttrFlags::NOSUID | MountAttrFlags::NODEV;
        if read_only {
            set = set | MountAttrFlags::RDONLY;
        }
        mount_api::mount_setattr(mount.as_fd(), true, set, MountAttrFlags::empty())
            .map_err(|e| Error::Failed(format!("the bind source's attributes: {}", e.desc())))?;
        if idmap && map != IdMap::IDENTITY {
            let userns = super::security::userns_of(leader)
                .map_err(|e| Error::io("open the container's user namespace", e))?;
            mount_api::mount_setattr_idmap(
                mount.as_fd(),
                true,
                userns.as_fd(),
                MountAttrFlags::empty(),
            )
            .map_err(|e| Error::Failed(format!("cannot idmap the bind source: {}", e.desc())))?;
        }
        let dir = nix::sys::stat::fstat(mount.as_fd())
            .map(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR)
            .map_err(|e| Error::Failed(format!("stat the bind source: {}", e.desc())))?;
        let plan = BindPlan {
            name: name.to_string(),
            target: target.as_str().to_string(),
            dir,
            mkdir,
            owner: Some((map.outside, map.outside)).filter(|_| map != IdMap::IDENTITY),
        };
        let memfd = protocol::bind_memfd(&plan)
            .map_err(|e| Error::Failed(format!("cannot pass the bind plan: {e}")))?;
        let helper = Helper::spawn(&self.helper, self.helper_image.as_ref())?;
        let fds = [memfd.as_fd(), pidfd.as_fd(), mount.as_fd()];
        if let Err(err) = helper.send(&ToHelper::Bind, &fds).await {
            helper.kill().await;
            return Err(err.into());
        }
        let reply = helper.recv(Duration::from_secs(10)).await;
        helper.finish().await;
        match reply? {
            (FromHelper::Bound, _) => {
                info!("bound a host path on {} in {name}", target.as_str());
                Ok(())
            }
            (
                FromHelper::Failed {
                    step: Step::Mount,
                    errno,
                    message,
                },
                _,
            ) if errno == libc::ENOENT || errno == libc::EINVAL || errno == libc::ENOTDIR => {
                Err(Error::InvalidArgument(message))
            }
            (
                FromHelper::Failed {
                    step,
                    errno,
                    message,
                },
                _,
            ) => Err(super::start::helper_failed(name, step, errno, &message)),
            (other, _) => Err(Error::Failed(format!(
                "berth-helper sent {other:?} to a bind"
            ))),
        }
    }
}
