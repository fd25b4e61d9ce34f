//! `berthctl list [--all] [-o json]`.

use clap::Args;

use super::output::{self, ContainerView};
use super::{CliResult, Format, manager};

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Include created and exited containers.
    #[arg(long, short = 'a')]
    pub all: bool,
    #[arg(long, short = 'o', value_enum, default_value_t)]
    pub output: Format,
}

pub async fn run(a: ListArgs) -> CliResult {
    let (_conn, proxy) = manager().await?;
    let views: Vec<ContainerView> = proxy
        .list_containers()
        .await?
        .into_iter()
        .filter(|c| a.all || !matches!(c.state.as_str(), "created" | "exited"))
        .map(ContainerView::from)
        .collect();
    match a.output {
        Format::Json => output::print_json(&views),
        Format::Table => {
            let rows: Vec<Vec<String>> = views
                .iter()
                .map(|v| {
                    vec![
                        v.name.clone(),
                        v.state.clone(),
                        v.leader
                            .map(|p| p.to_string())
                            .unwrap_or_else(|| "-".into()),
                        v.image.clone().unwrap_or_else(|| v.root_directory.clone()),
                        v.exit_status
                            .map(|s| s.to_string())
                            .unwrap_or_else(|| "-".into()),
                    ]
                })
                .collect();
            output::print_lines(output::table(
                &["NAME", "STATE", "LEADER", "IMAGE", "EXIT"],
                &rows,
            ));
        }
    }
    Ok(0)
}
