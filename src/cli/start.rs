//! `berthctl start NAME… [--wait]`.

use clap::Args;

use super::{CliError, CliResult, Exit, manager};

#[derive(Debug, Args)]
pub struct StartArgs {
    #[arg(required = true, value_name = "NAME")]
    pub names: Vec<String>,
    /// Wait until the container exits and return its exit status (for berth@.service; one
    /// name only).
    #[arg(long)]
    pub wait: bool,
}

pub async fn run(a: StartArgs) -> CliResult {
    if a.wait && a.names.len() != 1 {
        return Err(CliError::new(
            Exit::Usage,
            "--wait takes one container (use `wait NAME…` for several)",
        ));
    }
    let (_conn, proxy) = manager().await?;
    let code = super::verbs::each(&a.names, |n| {
        let proxy = &proxy;
        async move {
            proxy
                .start_container(n, crate::dbus::Options::default())
                .await?;
            Ok(())
        }
    })
    .await?;
    if a.wait {
        return super::run::wait_forwarding_signals(&proxy, &a.names[0]).await;
    }
    Ok(code)
}
