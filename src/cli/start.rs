//! `berthctl start NAME [--wait]`.

use clap::Args;

use super::{CliResult, manager};

#[derive(Debug, Args)]
pub struct StartArgs {
    pub name: String,
    /// Wait until the container exits and return its exit status (for berth@.service).
    #[arg(long)]
    pub wait: bool,
}

pub async fn run(a: StartArgs) -> CliResult {
    let (_conn, proxy) = manager().await?;
    proxy
        .start_container(a.name.clone(), crate::dbus::Options::default())
        .await?;
    if a.wait {
        return super::run::wait_forwarding_signals(&proxy, &a.name).await;
    }
    Ok(0)
}
