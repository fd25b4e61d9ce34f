//! The lifecycle flows other than start: create, stop, kill, wait, remove.

use std::path::PathBuf;
use std::time::Duration;

use nix::sys::signal::Signal;
use tracing::{info, warn};
use zbus::OwnedObjectPath;

use super::error::{Error, Result};
use super::store;
use super::table::{Entry, MAX_CONTAINERS, Registry, State, path};
use crate::dbus;
use crate::mount::ContainerDirs;
use crate::spec::{ContainerSpec, Definition, Root};
use crate::sys;

/// The default stop timeout.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long berthd waits for a container to die after SIGKILL.
const KILL_TIMEOUT: Duration = Duration::from_secs(30);
/// Prefix of a removed container's directory while it is being deleted.
pub const TRASH_PREFIX: &str = ".removed-";
/// Prefix of a container's directory while `create` fills it; renamed to the name when
/// complete, so that a crash never leaves a half-made container behind.
pub const STAGING_PREFIX: &str = ".creating-";

/// Delete a directory tree, and say so if anything is left. `remove_dir_all` never follows
/// symlinks, but a tree that changes under it (a directory swapped for a symlink by a process
/// still writing into it) makes it fail midway, sometimes with NotFound for an inner entry:
/// that is not "already gone", so the tree itself is checked, and the removal retried.
pub fn remove_tree(dir: &std::path::Path) -> std::io::Result<()> {
    remove_tree_with(dir, |d| std::fs::remove_dir_all(d))
}

fn remove_tree_with(
    dir: &std::path::Path,
    remove: impl Fn(&std::path::Path) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let mut last = None;
    for _ in 0..3 {
        match remove(dir) {
            Ok(()) => return Ok(()),
            Err(e) => last = Some(e),
        }
        match std::fs::symlink_metadata(dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            _ => {}
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("the tree is still there")))
}

impl Registry {
    /// What `RootDirectory` shows for a spec.
    pub(super) fn shown_root(&self, spec: &ContainerSpec) -> PathBuf {
        match &spec.root {
            Root::Directory(d) => d.clone(),
            Root::Image(_) => self
                .container_root(spec)
                .map(|r| r.shown)
                .unwrap_or_default(),
        }
    }

    /// Define a container from its checked spec.
    pub(super) async fn create(&self, spec: ContainerSpec) -> Result<OwnedObjectPath> {
        let name = spec.name().to_string();
        let mut spec = spec;
        let shown = match &spec.root {
            Root::Directory(d) => d.clone(),
            Root::Image(i) => {
                let root = self.resolve_image(i)?;
                // The container runs this image from now on, whatever the tag names later.
                spec.image_id = root.id;
                spec.definition.image_id = root.id.map(|d| d.to_string());
                root.shown
            }
        };
        // A profile that does not compile (too long for the kernel) is refused now; the
        // program stays in the cache for the first start.
        self.seccomp_program(&spec)?;
        self.net_check_create(&spec).await?;
        {
            let mut entries = self.entries.lock().unwrap();
            if entries.contains_key(&name) || self.broken.lock().unwrap().contains_key(&name) {
                return Err(Error::AlreadyExists(name));
            }
            if entries.len() >= MAX_CONTAINERS {
                return Err(Error::LimitExceeded(format!(
                    "at most {MAX_CONTAINERS} containers"
                )));
            }
            // The stored definition keeps the canonical directory it was checked as.
            let mut spec = spec;
            if let Root::Directory(d) = &spec.root {
                spec.definition.directory = Some(d.clone());
            }
            // Its ID range and label come first: an exhausted pool or a taken range leaves
            // nothing behind.
            let range = self.id_range(&spec)?;
            if let Err(e) = self.labels(&spec) {
                self.release_allocations(&name);
                return Err(e);
            }
            if let Err(e) = self.write_container_dir(&spec.definition, range) {
                self.release_allocations(&name);
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    // Not ours: a directory no container of the table owns (left by hand, or
                    // by a removal that could not move it aside).
                    return Err(Error::AlreadyExists(name));
                }
                return Err(Error::io(
                    format!("cannot write the definition of {name:?}"),
                    e,
                ));
            }
            let mut entry = Entry::new(spec, shown);
            entry.security = self.describe(&entry.spec);
            entries.insert(name.clone(), entry);
        }
        self.export(&name).await;
        if let Some(em) = self.manager_emitter()
            && let Err(e) = dbus::Manager::container_new(&em, &name, path(&name)).await
        {
            warn!("cannot announce container {name}: {e}, ignoring");
        }
        info!("created container {name}");
        Ok(path(&name))
    }

    /// Make the container's directory whole (layer directories and definition) under a
    /// staging name, then give it its name in one `rename`: a crash or a full disk never leaves
    /// a directory without its definition. Whatever fails is removed at once.
    fn write_container_dir(
        &self,
        def: &Definition,
        range: Option<crate::userns::IdRange>,
    ) -> std::io::Result<()> {
        let dir = self.layout.container_dir(&def.name);
        let staging = self.layout.containers().join(format!(
            "{STAGING_PREFIX}{}-{}",
            def.name,
            store::now_usec()
        ));
        let made = (|| {
            std::fs::create_dir(&staging)?;
            let dirs = ContainerDirs::under(&staging);
            for d in [&dirs.upper, &dirs.work, &dirs.root] {
                std::fs::create_dir(d)?;
            }
            super::security::own_upper(&dirs.upper, range)?;
            let text = toml::to_string(def).map_err(std::io::Error::other)?;
            store::write_atomic(&staging.join("container.toml"), text.as_bytes())?;
            super::failpoint::hit("create:after-staging");
            match nix::fcntl::renameat2(
                nix::fcntl::AT_FDCWD,
                &staging,
                nix::fcntl::AT_FDCWD,
                &dir,
                nix::fcntl::RenameFlags::RENAME_NOREPLACE,
            ) {
                Ok(()) => Ok(()),
                Err(nix::errno::Errno::EEXIST) | Err(nix::errno::Errno::ENOTEMPTY) => Err(
                    std::io::Error::new(std::io::ErrorKind::AlreadyExists, "the directory exists"),
                ),
                Err(e) => Err(e.into()),
            }
        })();
        if made.is_err()
            && let Err(e) = remove_tree(&staging)
        {
            warn!(
                "cannot remove {} after a failed create: {e}, ignoring",
                staging.display()
            );
        }
        made
    }

    /// A running container's pidfd and exit watch; moves it to `next` if given.
    pub(super) fn running(
        &self,
        name: &str,
        next: Option<State>,
    ) -> Result<(
        std::sync::Arc<std::os::fd::OwnedFd>,
        tokio::sync::watch::Receiver<Option<i32>>,
    )> {
        self.with(name, |e| match (e.state, &e.pidfd) {
            (State::Running, Some(fd)) | (State::Stopping, Some(fd)) => {
                let r = (fd.clone(), e.exited.subscribe());
                if let Some(s) = next {
                    e.state = s;
                }
                Ok(r)
            }
            (s, _) => Err(Error::InvalidState {
                name: name.into(),
                state: s.as_str(),
                hint: ", not running",
            }),
        })?
    }

    pub(super) async fn stop(&self, name: String, timeout_usec: u64) -> Result<()> {
        let timeout = if timeout_usec == 0 {
            DEFAULT_STOP_TIMEOUT
        } else {
            Duration::from_micros(timeout_usec)
        };
        // Stopping a container that does not run succeeds, as podman's stop does.
        if matches!(
            self.with(&name, |e| e.state)?,
            State::Created | State::Exited
        ) {
            return Ok(());
        }
        self.thaw_if_paused(&name).await;
        let (pidfd, mut rx) = self.running(&name, Some(State::Stopping))?;
        self.publish(&name).await;
        let sig = self
            .with(&name, |e| e.stop_signal)
            .unwrap_or(Signal::SIGTERM);
        // A booted init stops on systemd's poweroff request, as `machinectl poweroff` asks.
        let sent = if self.is_booted(&name) {
            sys::rtsig::pidfd_send_number(
                std::os::fd::AsFd::as_fd(&*pidfd),
                crate::boot::poweroff_signal(),
            )
        } else {
            sys::pidfd_send_signal(std::os::fd::AsFd::as_fd(&*pidfd), sig)
        };
        match sent {
            // It exited meanwhile: the reaper records it.
            Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
            Err(e) => warn!("cannot send {sig} to {name}: {e}, killing it"),
        }
        super::failpoint::hit("stop:after-signal");
        if tokio::time::timeout(timeout, rx.wait_for(Option::is_some))
            .await
            .is_err()
        {
            info!("container {name} did not stop within {timeout:?}, killing it");
            self.kill_scope(&name).await?;
            tokio::time::timeout(KILL_TIMEOUT, rx.wait_for(Option::is_some))
                .await
                .map_err(|_| {
                    Error::Failed(format!("container {name:?} did not die after SIGKILL"))
                })?
                .map_err(|_| Error::Failed("berthd is shutting down".into()))?;
        }
        Ok(())
    }

    async fn kill_scope(&self, name: &str) -> Result<()> {
        self.systemd
            .kill_unit(&self.unit_of(name), "all", Signal::SIGKILL as i32)
            .await
            .map_err(|source| Error::Systemd {
                what: "to kill the scope",
                source,
            })
    }

    pub(super) async fn kill(&self, name: String, whom: String, signal: i32) -> Result<()> {
        // systemd's SIGRTMIN+n requests (poweroff, halt) are numbers nix cannot name.
        let realtime = sys::rtsig::is_realtime(signal);
        let sig = match Signal::try_from(signal) {
            Ok(s) => s,
            Err(_) if realtime => Signal::SIGTERM,
            Err(_) => {
                return Err(Error::InvalidArgument(format!(
                    "invalid signal number {signal}"
                )));
            }
        };
        if !matches!(whom.as_str(), "leader" | "" | "all") {
            return Err(Error::InvalidArgument(format!(
                "whom must be \"leader\" or \"all\", not {whom:?}"
            )));
        }
        let (pidfd, _) = self.running(&name, None)?;
        if whom == "all" {
            return self
                .systemd
                .kill_unit(&self.unit_of(&name), "all", signal)
                .await
                .map_err(|source| Error::Systemd {
                    what: "to signal the scope",
                    source,
                });
        }
        let sent = if realtime {
            sys::rtsig::pidfd_send_number(std::os::fd::AsFd::as_fd(&*pidfd), signal)
        } else {
            sys::pidfd_send_signal(std::os::fd::AsFd::as_fd(&*pidfd), sig)
        };
        match sent {
            Ok(()) => Ok(()),
            // The leader exited between the check and the signal: say what is true now.
            Err(nix::errno::Errno::ESRCH) => Err(Error::InvalidState {
                name,
                state: "exited",
                hint: ", not running",
            }),
            Err(e) => Err(Error::Failed(format!("cannot send {sig}: {e}"))),
        }
    }

    pub(super) async fn wait(&self, name: String) -> Result<i32> {
        let mut rx = {
            let entries = self.entries.lock().unwrap();
            let Some(e) = entries.get(&name) else {
                let gone = self.removed_at_exit.lock().unwrap();
                return gone
                    .iter()
                    .rev()
                    .find(|(n, _)| *n == name)
                    .map(|(_, s)| *s)
                    .ok_or(Error::NoSuchContainer(name));
            };
            match e.state {
                State::Exited if e.exit_status < 0 => {
                    return Err(Error::Failed(format!(
                        "container {name:?} exited, but {}",
                        e.last_error
                    )));
                }
                State::Exited => return Ok(e.exit_status),
                State::Created => {
                    return Err(Error::InvalidState {
                        name,
                        state: "created",
                        hint: " and has not been started",
                    });
                }
                _ => e.exited.subscribe(),
            }
        };
        let status = rx
            .wait_for(Option::is_some)
            .await
            .map_err(|_| Error::Failed("berthd is shutting down".into()))?
            .unwrap_or(-1);
        if status < 0 {
            let why = self
                .with(&name, |e| e.last_error.clone())
                .unwrap_or_else(|_| "its exit status is unknown".into());
            return Err(Error::Failed(format!(
                "container {name:?} exited, but {why}"
            )));
        }
        Ok(status)
    }

    pub(super) async fn remove(&self, name: String, force: bool) -> Result<()> {
        if self.broken(&name).is_some() {
            return self.remove_broken(&name, force).await;
        }
        let state = self.with(&name, |e| e.state)?;
        match state {
            State::Created | State::Exited => {}
            State::Running | State::Stopping if force => {
                self.thaw_if_paused(&name).await;
                let (_, mut rx) = self.running(&name, None)?;
                self.kill_scope(&name).await?;
                if tokio::time::timeout(KILL_TIMEOUT, rx.wait_for(Option::is_some))
                    .await
                    .is_err()
                {
                    return Err(Error::Failed(format!(
                        "container {name:?} did not die after SIGKILL"
                    )));
                }
            }
            State::Running | State::Stopping => {
                return Err(Error::InvalidState {
                    name,
                    state: "running",
                    hint: "; stop it first or remove it with --force",
                });
            }
            State::Starting => {
                return Err(Error::InvalidState {
                    name,
                    state: "starting",
                    hint: "",
                });
            }
        }
        self.remove_entry(&name).await
    }

    /// Forget a container and delete its files. The directory is first renamed out of the
    /// way (atomically, under the table's lock), so that a container created with the same
    /// name right after never has its new directory deleted by this removal. Only a container
    /// that is created or exited at that moment is removed: one that a concurrent start made
    /// live keeps its directory.
    pub(super) async fn remove_entry(&self, name: &str) -> Result<()> {
        let dir = self.layout.container_dir(name);
        let anonymous = self.anonymous_volumes(name);
        let trash = self
            .layout
            .containers()
            .join(format!("{TRASH_PREFIX}{name}-{}", store::now_usec()));
        let victim = {
            let mut entries = self.entries.lock().unwrap();
            match entries.get(name).map(|e| e.state) {
                None => return Err(Error::NoSuchContainer(name.into())),
                Some(State::Created | State::Exited) => {}
                Some(s) => {
                    return Err(Error::InvalidState {
                        name: name.into(),
                        state: s.as_str(),
                        hint: "; it was started again meanwhile",
                    });
                }
            }
            entries.remove(name);
            let victim = match std::fs::rename(&dir, &trash) {
                Ok(()) => trash,
                Err(e) => {
                    if e.kind() != std::io::ErrorKind::NotFound {
                        warn!(
                            "cannot move {} aside: {e}, deleting it in place",
                            dir.display()
                        );
                    }
                    dir
                }
            };
            // Under the table's lock, so that a create of the same name right after allocates
            // anew and this removal never frees what that new container holds; after the
            // rename, so that a crash before it keeps the range the layer's files belong to.
            self.release_allocations(name);
            victim
        };
        super::failpoint::hit("remove:after-rename");
        let rt = self.layout.runtime(name);
        let removed = tokio::task::spawn_blocking(move || {
            match std::fs::remove_file(&rt) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            remove_tree(&victim)
        })
        .await
        .map_err(|e| Error::Failed(format!("removal of {name:?}: {e}")))?;
        self.unexport(name).await;
        if let Some(em) = self.manager_emitter()
            && let Err(e) = dbus::Manager::container_removed(&em, name, path(name)).await
        {
            warn!("cannot announce the removal of {name}: {e}, ignoring");
        }
        self.net_release(name).await;
        self.forget_life(name);
        self.logs_forget(name);
        self.remove_anonymous(name, anonymous);
        removed.map_err(|e| {
            Error::io(
                format!("container {name:?} is removed, but its files could not all be deleted"),
                e,
            )
        })?;
        info!("removed container {name}");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tree_left_behind_is_reported_even_when_the_error_says_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join(".removed-x-1");
        std::fs::create_dir_all(tree.join("upper/a")).unwrap();
        // What a tree changing under the removal looks like: an inner entry vanished
        // (NotFound), the tree is still there.
        let vanished = || std::io::Error::from(std::io::ErrorKind::NotFound);
        let e = remove_tree_with(&tree, |_| Err(vanished())).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
        assert!(tree.exists());
        // A retry that gets through is success.
        let tries = std::cell::Cell::new(0);
        remove_tree_with(&tree, |d| {
            tries.set(tries.get() + 1);
            if tries.get() == 1 {
                Err(vanished())
            } else {
                std::fs::remove_dir_all(d)
            }
        })
        .unwrap();
        assert!(!tree.exists());
        // Already gone is success.
        remove_tree(&tree).unwrap();
    }
}
