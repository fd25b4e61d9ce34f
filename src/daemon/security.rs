//! The daemon's security state: the ID-range allocator, SELinux (state, the policy's
//! container types, MCS pairs), the sealed helper image; and the per-container decisions made
//! from it at create, start and remove.

use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Mutex;

use tracing::{info, warn};

use super::error::{Error, Result};
use super::table::Registry;
use crate::selinux::{self, ContainerContexts, Labels, McsAllocator, SelinuxState};
use crate::spec::ContainerSpec;
use crate::userns::{HostIds, IdAllocator, IdRange};

/// SELinux as berthd found it at start.
pub struct Selinux {
    pub state: SelinuxState,
    /// The policy's container types and the MCS pairs, when labels apply.
    pub labels: Option<(ContainerContexts, Mutex<McsAllocator>)>,
}

/// What berthd opens once at start.
pub struct Opened {
    pub authorizer: super::authorizer::Authorizer,
    pub id_ranges: IdAllocator,
    pub selinux: Selinux,
    pub helper_image: Option<OwnedFd>,
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("the user-ID range allocator in {dir}: {source}")]
    Ranges {
        dir: String,
        source: crate::userns::UsernsError,
    },
}

/// Open the allocators and find out about SELinux; say once what applies.
pub async fn open(
    conn: &zbus::Connection,
    lib: &Path,
    helper: &Path,
) -> std::result::Result<Opened, OpenError> {
    let id_ranges = IdAllocator::open(lib).map_err(|source| OpenError::Ranges {
        dir: lib.display().to_string(),
        source,
    })?;
    let state = selinux::state();
    let labels = if state.labels() {
        match (
            ContainerContexts::load(Path::new("/")),
            McsAllocator::open(lib),
        ) {
            (Ok(c), Ok(a)) => {
                info!(
                    "SELinux is {state:?}: containers run as {} with their own MCS pair",
                    c.process.type_
                );
                Some((c, Mutex::new(a)))
            }
            (Err(e), _) | (_, Err(e)) => {
                warn!(
                    "SELinux is {state:?} but berth cannot label containers: {e}, running them unlabelled"
                );
                None
            }
        }
    } else {
        info!("SELinux is disabled on this host: containers get no SELinux label");
        None
    };
    let helper_image = match helper_memfd(helper) {
        Ok(fd) => Some(fd),
        Err(e) => {
            warn!(
                "cannot make a sealed copy of {}: {e}; containers' PID 1 runs from the file itself",
                helper.display()
            );
            None
        }
    };
    Ok(Opened {
        authorizer: super::authorizer::Authorizer::new(conn).await,
        id_ranges,
        selinux: Selinux { state, labels },
        helper_image,
    })
}

/// A sealed, executable in-memory copy of the helper binary (runc's answer to CVE-2019-5736):
/// `/proc/PID/exe` of every helper and container PID 1 then names this memfd, which nobody
/// can write, never the host's file.
fn helper_memfd(path: &Path) -> std::io::Result<OwnedFd> {
    use nix::fcntl::{FcntlArg, SealFlag, fcntl};
    use nix::sys::memfd::{MFdFlags, memfd_create};
    let fd = memfd_create(
        "berth-helper",
        MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
    )?;
    let mut out = std::fs::File::from(fd);
    std::io::copy(&mut std::fs::File::open(path)?, &mut out)?;
    let fd = OwnedFd::from(out);
    // Far from the low numbers a child's stdio and protocol socket are moved onto before the
    // exec that names this descriptor.
    let fd = crate::sys::dup_at_least(std::os::fd::AsFd::as_fd(&fd), 64)?;
    fcntl(
        &fd,
        FcntlArg::F_ADD_SEALS(
            SealFlag::F_SEAL_WRITE
                | SealFlag::F_SEAL_GROW
                | SealFlag::F_SEAL_SHRINK
                | SealFlag::F_SEAL_SEAL,
        ),
    )?;
    Ok(fd)
}

impl Registry {
    /// Reconcile the allocators with the containers on disk (every directory counts, also one
    /// whose definition cannot be read: its files are owned by its range).
    pub(super) fn rebuild_allocations(&self, names: &[String]) {
        let host = match HostIds::load(Path::new("/etc")) {
            Ok(h) => h,
            Err(e) => {
                warn!("cannot read the host's IDs: {e}, keeping the ranges as they are");
                return;
            }
        };
        match self
            .id_ranges
            .lock()
            .unwrap()
            .rebuild(names.iter().map(String::as_str), host)
        {
            Ok(report) => {
                for (owner, range) in &report.released {
                    info!("released the ID range {range} of {owner}, which no longer exists");
                }
                for (owner, range, conflict) in &report.conflicts {
                    warn!(
                        "container {owner}'s ID range {range} now collides with {conflict}, ignoring"
                    );
                }
            }
            Err(e) => warn!("cannot reconcile the ID ranges: {e}, ignoring"),
        }
    }

    /// The ID range `spec` runs with, allocated (and persisted) if it has none yet; `None`
    /// without a user namespace.
    pub(super) fn id_range(&self, spec: &ContainerSpec) -> Result<Option<IdRange>> {
        let Some(request) = spec.security.userns.request() else {
            return Ok(None);
        };
        let mut ranges = self.id_ranges.lock().unwrap();
        if let Some(r) = ranges.get(spec.name()) {
            return Ok(Some(r));
        }
        ranges
            .allocate(spec.name(), request)
            .map(Some)
            .map_err(|e| match e {
                crate::userns::UsernsError::PoolExhausted { .. } => {
                    Error::LimitExceeded(e.to_string())
                }
                e => Error::InvalidArgument(e.to_string()),
            })
    }

    /// The SELinux labels of `spec` (allocated at create; a lookup afterwards).
    pub(super) fn labels(&self, spec: &ContainerSpec) -> Result<Option<Labels>> {
        let Some((contexts, alloc)) = &self.selinux.labels else {
            return Ok(None);
        };
        selinux::plan_labels(
            self.selinux.state,
            contexts,
            &spec.security.label,
            &mut alloc.lock().unwrap(),
            spec.name(),
        )
        .map_err(|e| Error::InvalidArgument(e.to_string()))
    }

    /// How a container is confined, in words (the `Security` property).
    pub(super) fn describe(
        &self,
        spec: &ContainerSpec,
    ) -> std::collections::BTreeMap<String, String> {
        let sec = &spec.security;
        let mut m = std::collections::BTreeMap::new();
        let userns = match (sec.userns, self.id_ranges.lock().unwrap().get(spec.name())) {
            (crate::userns::UsernsMode::Host, _) => "host".to_string(),
            (mode, Some(r)) => format!("{mode} {r}"),
            (mode, None) => mode.to_string(),
        };
        m.insert("userns".into(), userns);
        m.insert(
            "capabilities".into(),
            sec.caps
                .iter()
                .map(|c| c.name().trim_start_matches("CAP_").to_string())
                .collect::<Vec<_>>()
                .join(","),
        );
        m.insert(
            "seccomp".into(),
            match &sec.seccomp {
                None => "unconfined".into(),
                Some(p) if std::sync::Arc::ptr_eq(p, &self.host.seccomp) => "default".into(),
                Some(_) => "profile".into(),
            },
        );
        m.insert("no-new-privileges".into(), sec.no_new_privs.to_string());
        let selinux = if sec.label.disable {
            "disabled for this container".to_string()
        } else {
            match &self.selinux.labels {
                None => format!("{:?} on this host: no label", self.selinux.state).to_lowercase(),
                Some((contexts, alloc)) => match alloc.lock().unwrap().get(spec.name()) {
                    Some(pair) => {
                        crate::selinux::Labels::compute(
                            contexts,
                            &sec.label,
                            &crate::selinux::Level::of_pair(pair),
                        )
                        .process
                    }
                    None => "not labelled yet".into(),
                },
            }
        };
        m.insert("selinux".into(), selinux);
        m
    }

    /// Give back a removed container's range and MCS pair.
    pub(super) fn release_allocations(&self, name: &str) {
        if let Err(e) = self.id_ranges.lock().unwrap().release(name) {
            warn!("cannot release the ID range of {name}: {e}, ignoring");
        }
        if let Some((_, alloc)) = &self.selinux.labels
            && let Err(e) = alloc.lock().unwrap().free(name)
        {
            warn!("cannot release the MCS pair of {name}: {e}, ignoring");
        }
    }

    /// The compiled seccomp filter of `spec` (from the cache after the first time).
    pub(super) fn seccomp_program(
        &self,
        spec: &ContainerSpec,
    ) -> Result<Option<crate::seccomp::Program>> {
        let Some(profile) = &spec.security.seccomp else {
            return Ok(None);
        };
        self.seccomp
            .get_or_compile(profile, spec.security.caps.bits())
            .map(|p| Some((*p).clone()))
            .map_err(|e| Error::InvalidArgument(format!("seccomp profile: {e}")))
    }
}

/// Make a new container's writable layer owned by its root (the merged root directory takes
/// the upper directory's owner), or by real root without a user namespace.
pub fn own_upper(upper: &Path, range: Option<IdRange>) -> std::io::Result<()> {
    if let Some(r) = range {
        std::os::unix::fs::chown(upper, Some(r.host_start), Some(r.host_start))?;
    }
    Ok(())
}

/// Shift the owners of a writable layer written before the container had a user namespace
/// (every ID n becomes range start + n), once, so that an upgraded container keeps its files.
/// Only the container's own writable layer is touched, never an image layer.
pub fn shift_upper(upper: &Path, range: IdRange) -> std::io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let mut shifted = 0;
    let mut stack = vec![upper.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let md = entry.metadata()?;
            let path = entry.path();
            if md.is_dir() {
                stack.push(path.clone());
            }
            let shift = |id: u32| {
                if id < range.count {
                    range.host_start + id
                } else {
                    id
                }
            };
            std::os::unix::fs::lchown(&path, Some(shift(md.uid())), Some(shift(md.gid())))?;
            shifted += 1;
        }
    }
    own_upper(upper, Some(range))?;
    Ok(shifted)
}

/// The user namespace of a process, for idmapping its layers.
pub fn userns_of(pid: i32) -> std::io::Result<OwnedFd> {
    let f = std::fs::File::open(format!("/proc/{pid}/ns/user"))?;
    Ok(f.into())
}
