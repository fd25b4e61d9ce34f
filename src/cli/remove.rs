//! `berthctl remove NAME... [--force]`.

use clap::Args;

use super::{CliResult, manager};

#[derive(Debug, Args)]
pub struct RemoveArgs {
    #[arg(required = true)]
    pub names: Vec<String>,
    /// Kill a running container first.
    #[arg(long, short = 'f')]
    pub force: bool,
}

pub async fn run(a: RemoveArgs) -> CliResult {
    let (_conn, proxy) = manager().await?;
    for name in a.names {
        proxy.remove_container(name, a.force).await?;
    }
    Ok(0)
}
