//! `berthctl volume create [--label K=V]… NAME | ls [-o json] | rm NAME… | inspect NAME`:
//! named volumes under /var/lib/berth/volumes (Manager.CreateVolume, ListVolumes,
//! RemoveVolume). A container mounts one with `-v NAME:/path` or
//! `--mount type=volume,source=NAME,target=/path`.

use std::collections::HashMap;

use clap::{Args, Subcommand};
use serde::Serialize;
use zbus::OwnedVariant;

use super::output;
use super::{CliError, CliResult, Exit, Format, manager};
use crate::dbus::{Options, VolumeInfo};

#[derive(Debug, Args)]
pub struct VolumeArgs {
    #[command(subcommand)]
    pub command: VolumeCommand,
}

#[derive(Debug, Subcommand)]
#[command(defer = true)]
pub enum VolumeCommand {
    /// Make a named volume (empty; owned by each container's root through idmapped mounts).
    Create {
        /// A label KEY=VALUE. Repeatable.
        #[arg(long = "label", value_name = "KEY=VALUE")]
        labels: Vec<String>,
        name: String,
    },
    /// List volumes.
    #[command(alias = "list")]
    Ls {
        #[arg(long, short = 'o', value_enum, default_value_t)]
        output: Format,
    },
    /// Remove volumes and their data (refused while a container mounts one).
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Show one volume as JSON.
    Inspect { name: String },
}

/// A volume in `--output json` and `inspect`.
#[derive(Debug, Serialize)]
struct VolumeView {
    name: String,
    driver: String,
    /// Microseconds since the epoch.
    created_at: u64,
    anonymous: bool,
    labels: std::collections::BTreeMap<String, String>,
    users: Vec<String>,
    mountpoint: String,
}

impl From<VolumeInfo> for VolumeView {
    fn from(v: VolumeInfo) -> Self {
        VolumeView {
            mountpoint: format!("/var/lib/berth/volumes/{}/_data", v.name),
            name: v.name,
            driver: v.driver,
            created_at: v.created_at,
            anonymous: v.anonymous,
            labels: v.labels.into_iter().collect(),
            users: v.users,
        }
    }
}

pub async fn run(a: VolumeArgs) -> CliResult {
    let (_conn, proxy) = manager().await?;
    match a.command {
        VolumeCommand::Create { labels, name } => {
            let mut map = HashMap::new();
            for l in labels {
                let (k, v) = l.split_once('=').ok_or_else(|| {
                    CliError::new(
                        Exit::InvalidArgument,
                        format!("label {l:?} is not KEY=VALUE"),
                    )
                })?;
                map.insert(k.to_string(), v.to_string());
            }
            let mut o = Options::default();
            if !map.is_empty() {
                o.insert(
                    "Labels",
                    OwnedVariant::try_from(zbus::Variant::from(map))
                        .map_err(|e| CliError::new(Exit::Failed, e.to_string()))?,
                );
            }
            let made = proxy.create_volume(name, o).await?;
            output::print_lines([made]);
        }
        VolumeCommand::Ls { output: format } => {
            let views: Vec<VolumeView> = proxy
                .list_volumes()
                .await?
                .into_iter()
                .map(VolumeView::from)
                .collect();
            match format {
                Format::Json => output::print_json(&views),
                Format::Table => {
                    let rows: Vec<Vec<String>> = views
                        .iter()
                        .map(|v| {
                            vec![
                                v.name.clone(),
                                v.driver.clone(),
                                if v.users.is_empty() {
                                    "-".into()
                                } else {
                                    v.users.join(",")
                                },
                            ]
                        })
                        .collect();
                    output::print_lines(output::table(&["NAME", "DRIVER", "USED BY"], &rows));
                }
            }
        }
        VolumeCommand::Rm { names } => {
            for n in names {
                proxy.remove_volume(n).await?;
            }
        }
        VolumeCommand::Inspect { name } => {
            let v = proxy
                .list_volumes()
                .await?
                .into_iter()
                .find(|v| v.name == name)
                .ok_or_else(|| {
                    CliError::new(Exit::NotFound, format!("no volume named {name:?}"))
                })?;
            output::print_json(&VolumeView::from(v));
        }
    }
    Ok(0)
}
