//! `berthctl bind [--read-only] [--mkdir] [--idmap] NAME HOST-PATH [CONTAINER-PATH]`: mount a
//! host file or directory into a running container (Container.Bind), as `machinectl bind`.
//! berthctl opens the host path as the caller (`O_PATH`), so only what the caller can reach
//! can be bound; berthd mounts that descriptor on the target, resolved inside the container's
//! root.

use clap::Args;
use zbus::OwnedVariant;

use super::exec::container;
use super::{CliError, CliResult, Exit, manager};
use crate::dbus::Options;

#[derive(Debug, Args)]
pub struct BindArgs {
    /// Mount it read-only.
    #[arg(long)]
    pub read_only: bool,
    /// Make the mount point (and its parents) when missing.
    #[arg(long)]
    pub mkdir: bool,
    /// Show the source's owners as the container's user namespace maps them.
    #[arg(long)]
    pub idmap: bool,
    pub name: String,
    pub host_path: String,
    /// Where inside the container (default: the host path).
    pub container_path: Option<String>,
}

pub async fn run(a: BindArgs) -> CliResult {
    let abs = std::path::absolute(&a.host_path)
        .map_err(|e| CliError::new(Exit::InvalidArgument, format!("{}: {e}", a.host_path)))?;
    let source = nix::fcntl::open(
        &abs,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| {
        let exit = if e == nix::errno::Errno::ENOENT {
            Exit::NotFound
        } else {
            Exit::Failed
        };
        CliError::new(exit, format!("{}: {e}", abs.display()))
    })?;
    let target = a
        .container_path
        .unwrap_or_else(|| abs.to_string_lossy().into_owned());
    let mut o = Options::default();
    for (key, on) in [
        ("ReadOnly", a.read_only),
        ("MakeDirectory", a.mkdir),
        ("IdMap", a.idmap),
    ] {
        if on {
            o.insert(
                key,
                OwnedVariant::try_from(zbus::Variant::from(true))
                    .map_err(|e| CliError::new(Exit::Failed, e.to_string()))?,
            );
        }
    }
    let (conn, mgr) = manager().await?;
    let c = container(&conn, &mgr, &a.name).await?;
    c.bind(zbus::OwnedFd::from(source), target, o).await?;
    Ok(0)
}
