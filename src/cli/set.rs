//! `berthctl set NAME [--runtime] KEY=VALUE...`: change resource limits of a running container
//! through systemd (`SetUnitProperties` on its scope), without restarting it.

use clap::Args;

use super::{CliError, CliResult, Exit, manager};

#[derive(Debug, Args)]
pub struct SetArgs {
    pub name: String,
    /// memory=512M, memory-high=, memory-swap=, cpus=1.5, cpu-weight=, cpuset=0-1, pids=200,
    /// io-weight=, device-read-bps=DEV:RATE, device-write-bps=DEV:RATE, or a scope property
    /// like MemoryLow=64M. An empty value removes the limit.
    #[arg(required = true, value_name = "KEY=VALUE")]
    pub assignments: Vec<String>,
    /// Only until the container stops; its definition keeps the old values.
    #[arg(long)]
    pub runtime: bool,
}

pub async fn run(a: SetArgs) -> CliResult {
    let mut pairs = Vec::with_capacity(a.assignments.len());
    for s in &a.assignments {
        let (k, v) = s
            .split_once('=')
            .filter(|(k, _)| !k.is_empty())
            .ok_or_else(|| {
                CliError::new(
                    Exit::InvalidArgument,
                    format!("expected KEY=VALUE, got {s:?}"),
                )
            })?;
        pairs.push((k.to_string(), v.to_string()));
    }
    let (_conn, proxy) = manager().await?;
    proxy.set_resources(a.name, pairs, a.runtime).await?;
    Ok(0)
}
