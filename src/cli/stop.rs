//! `berthctl stop NAME [--timeout SECONDS]`.

use clap::Args;

use super::{CliResult, manager};

#[derive(Debug, Args)]
pub struct StopArgs {
    pub name: String,
    /// Seconds to wait after SIGTERM before SIGKILL.
    #[arg(long, short = 't', default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub timeout: u64,
}

pub async fn run(a: StopArgs) -> CliResult {
    let (_conn, proxy) = manager().await?;
    proxy.stop_container(a.name, a.timeout * 1_000_000).await?;
    Ok(0)
}
