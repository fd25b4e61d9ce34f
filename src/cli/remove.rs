//! `berthctl remove NAME... [--force]`.

use clap::Args;

use super::{CliError, CliResult, manager};

#[derive(Debug, Args)]
pub struct RemoveArgs {
    #[arg(required = true)]
    pub names: Vec<String>,
    /// Kill a running container first.
    #[arg(long, short = 'f')]
    pub force: bool,
}

/// Remove each container; a failure is reported and the others are still removed. The exit
/// code is the last failure's (0 when all went).
pub async fn run(a: RemoveArgs) -> CliResult {
    let (_conn, proxy) = manager().await?;
    let mut last: Option<CliError> = None;
    for name in a.names {
        if let Err(e) = proxy.remove_container(name, a.force).await {
            let e = CliError::from(e);
            eprintln!("berthctl: {}", e.message);
            last = Some(e);
        }
    }
    match last {
        Some(e) => Err(CliError::reported(e.exit)),
        None => Ok(0),
    }
}
