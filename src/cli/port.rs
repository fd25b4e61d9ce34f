//! `berthctl port NAME [-o json]`: the container's published ports, as podman prints them
//! (`80/tcp -> 0.0.0.0:8080`).

use clap::Args;

use super::output::{self, ContainerView};
use super::{CliError, CliResult, Exit, Format, manager};

#[derive(Debug, Args)]
pub struct PortArgs {
    pub name: String,
    #[arg(long, short = 'o', value_enum, default_value_t)]
    pub output: Format,
}

pub async fn run(a: PortArgs) -> CliResult {
    let (_conn, proxy) = manager().await?;
    let info = proxy
        .list_containers()
        .await?
        .into_iter()
        .find(|c| c.name == a.name)
        .ok_or_else(|| CliError::new(Exit::NotFound, format!("no container named {:?}", a.name)))?;
    let view = ContainerView::from(info);
    match a.output {
        Format::Json => output::print_json(&view.ports),
        Format::Table => output::print_lines(view.ports.iter().map(|p| p.line())),
    }
    Ok(0)
}
