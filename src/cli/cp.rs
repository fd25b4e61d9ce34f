//! `berthctl cp [-a] [NAME:]SRC [NAME:]DST`: copy files and directories into or out of a
//! running container (Container.CopyTo / CopyFrom).
//!
//! berthctl does the host side itself, as the caller — it reads or writes only what the
//! caller may — and streams it over a pipe ([`crate::copy::stream`]); berthd does the
//! container side against the container's root with every lookup confined to it. Files
//! copied in belong to the container's root (with `-a`: keep their owners, shifted into the
//! container's range); files copied out belong to the caller and lose setuid/setgid bits.

use std::os::fd::OwnedFd;

use clap::Args;
use zbus::OwnedVariant;

use super::exec::container;
use super::{CliError, CliResult, Exit, manager};
use crate::copy::{self, CopyError, Limits, Ownership, ReceiveOptions, Root};
use crate::dbus::Options;

#[derive(Debug, Args)]
pub struct CpArgs {
    /// Copying in: keep the files' owners (shifted into the container's ID range) instead
    /// of giving them to the container's root.
    #[arg(long, short = 'a')]
    pub archive: bool,
    /// The source: a host path, or NAME:PATH in a container.
    pub source: String,
    /// The destination: a host path, or NAME:PATH in a container.
    pub destination: String,
}

/// `NAME:PATH` → (NAME, PATH); a host path has no colon before its first slash (`./a:b` is
/// a host path).
fn split(arg: &str) -> Option<(&str, &str)> {
    let (name, path) = arg.split_once(':')?;
    (!name.is_empty() && !name.contains('/')).then_some((name, path))
}

fn failed(e: impl std::fmt::Display) -> CliError {
    CliError::new(Exit::Failed, e.to_string())
}

fn copy_failed(e: CopyError) -> CliError {
    let exit = match e {
        CopyError::NotFound { .. } => Exit::NotFound,
        CopyError::InvalidPath { .. } | CopyError::Refused { .. } => Exit::InvalidArgument,
        _ => Exit::Failed,
    };
    CliError::new(exit, e.to_string())
}

fn pipe() -> CliResult<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(failed)
}

pub async fn run(a: CpArgs) -> CliResult {
    let (into, name, container_path, host_path) = match (split(&a.source), split(&a.destination)) {
        (None, Some((n, p))) => (true, n, p, a.source.as_str()),
        (Some((n, p)), None) => (false, n, p, a.destination.as_str()),
        _ => {
            return Err(CliError::new(
                Exit::InvalidArgument,
                "exactly one of SRC and DST must be NAME:PATH in a container",
            ));
        }
    };
    if a.archive && !into {
        return Err(CliError::new(
            Exit::InvalidArgument,
            "-a only applies when copying into a container",
        ));
    }
    let (conn, mgr) = manager().await?;
    let c = container(&conn, &mgr, name).await?;
    let (rd, wr) = pipe()?;
    let host = host_path.to_string();
    if into {
        // Open the source before asking berthd, so a missing one fails here, cleanly.
        let item = Root::Host.open_item(&host).map_err(copy_failed)?;
        let sender = std::thread::spawn(move || {
            copy::send(item, std::fs::File::from(wr), &Limits::default())
        });
        let mut o = Options::default();
        if a.archive {
            o.insert(
                "Archive",
                OwnedVariant::try_from(zbus::Variant::from(true)).map_err(failed)?,
            );
        }
        let r = c
            .copy_to(container_path.to_string(), zbus::OwnedFd::from(rd), o)
            .await;
        let sent = sender
            .join()
            .map_err(|_| failed("the copy thread panicked"))?;
        r?;
        // berthd's error says more than our broken pipe; only ours is left to report.
        sent.map_err(copy_failed)?;
    } else {
        let receiver = std::thread::spawn(move || {
            copy::receive(
                std::fs::File::from(rd),
                |is_dir| Root::Host.resolve_dest(&host, is_dir),
                &ReceiveOptions {
                    limits: Limits::default(),
                    ownership: Ownership::Caller,
                    strip_setid: true,
                },
            )
        });
        let r = c
            .copy_from(
                container_path.to_string(),
                zbus::OwnedFd::from(wr),
                Options::default(),
            )
            .await;
        let received = receiver
            .join()
            .map_err(|_| failed("the copy thread panicked"))?;
        r?;
        received.map_err(copy_failed)?;
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::split;

    #[test]
    fn container_paths_have_a_name_before_the_colon() {
        assert_eq!(split("web:/etc/hosts"), Some(("web", "/etc/hosts")));
        assert_eq!(split("web:rel"), Some(("web", "rel")));
        assert_eq!(split("/tmp/a:b"), None);
        assert_eq!(split("./a:b"), None);
        assert_eq!(split(":/x"), None);
        assert_eq!(split("plain"), None);
    }
}
