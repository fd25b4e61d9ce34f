//! `berthctl stop NAME… [--timeout SECONDS]`: a container that does not run is already
//! stopped (success, as podman's stop).

use clap::Args;

use super::{CliResult, manager};

#[derive(Debug, Args)]
pub struct StopArgs {
    #[arg(required = true, value_name = "NAME")]
    pub names: Vec<String>,
    /// Seconds to wait after SIGTERM before SIGKILL.
    #[arg(long, short = 't', default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub timeout: u64,
}

pub async fn run(a: StopArgs) -> CliResult {
    let (_conn, proxy) = manager().await?;
    super::verbs::each(&a.names, |n| {
        let proxy = &proxy;
        async move {
            proxy.stop_container(n, a.timeout * 1_000_000).await?;
            Ok(())
        }
    })
    .await
}
