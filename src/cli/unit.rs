//! `berthctl unit-start NAME` (the ExecStart of berth@.service) and `berthctl enable|disable
//! NAME…` (start at boot through machines.target, like `machinectl enable`).
//!
//! `unit-start` hands berthd one end of the helper's socket and then becomes berth-helper on
//! the other end, in place (same PID, the unit's main process until the helper names the
//! container's PID 1 in its stead): see `daemon/unit.rs`. It is for berth@.service only and
//! refuses to run without the unit's `NOTIFY_SOCKET`.

use std::os::unix::process::CommandExt;

use clap::Args;
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};

use super::{CliError, CliResult, Exit, manager};

#[derive(Debug, Args)]
pub struct UnitStartArgs {
    pub name: String,
}

pub async fn unit_start(a: UnitStartArgs) -> CliResult {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return Err(CliError::new(
            Exit::InvalidArgument,
            "unit-start is berth@.service's ExecStart (Type=notify); use `systemctl start berth@NAME` or `berthctl start NAME`",
        ));
    }
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| {
        CliError::new(
            Exit::Failed,
            format!("cannot create the helper socket: {e}"),
        )
    })?;
    // The payload's output goes where any container's goes (the log driver: `berthctl logs`).
    let options = crate::dbus::Options::default();
    let (_conn, proxy) = manager().await?;
    let helper = proxy
        .start_container_in_unit(a.name, zbus::OwnedFd::from(theirs), options)
        .await?;
    // The helper takes its socket as standard input (see helper/held.rs); everything else of
    // ours is close-on-exec.
    nix::unistd::dup2_stdin(&ours)
        .map_err(|e| CliError::new(Exit::Failed, format!("cannot pass the helper socket: {e}")))?;
    let e = std::process::Command::new(&helper)
        .arg0("berth-helper")
        .arg(crate::helper::held::ARG)
        .exec();
    Err(CliError::new(
        Exit::Failed,
        format!("cannot execute {helper}: {e}"),
    ))
}

#[derive(Debug, Args)]
pub struct EnableArgs {
    #[arg(required = true, value_name = "NAME")]
    pub names: Vec<String>,
}

/// Enable (`on`) or disable berth@NAME.service for each name.
pub async fn enable(a: EnableArgs, on: bool) -> CliResult {
    let (_conn, proxy) = manager().await?;
    super::verbs::each(&a.names, |n| {
        let proxy = &proxy;
        async move {
            let done = if on {
                proxy.enable_container(n).await?
            } else {
                proxy.disable_container(n).await?
            };
            if !done.is_empty() {
                super::output::print_lines([done]);
            }
            Ok(())
        }
    })
    .await
}
