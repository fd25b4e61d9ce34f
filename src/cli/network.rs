//! `berthctl network create|ls|inspect|rm`: bridge networks containers join with
//! `--network NAME`.

use clap::{Args, Subcommand};
use serde::Serialize;

use super::output;
use super::{CliError, CliResult, Exit, Format, manager};
use crate::dbus::{NetworkInfo, Options};

#[derive(Debug, Args)]
pub struct NetworkArgs {
    #[command(subcommand)]
    pub verb: NetworkVerb,
}

#[derive(Debug, Subcommand)]
#[command(defer = true)]
pub enum NetworkVerb {
    /// Define a bridge network (its bridge comes up with its first container).
    Create {
        name: String,
        /// IPv4 subnet (default: the first free /24 of 10.89.0.0/16 the host does not route).
        #[arg(long, value_name = "CIDR")]
        subnet: Option<String>,
        /// Give it an IPv6 subnet too (a ULA /64 unless --subnet6).
        #[arg(long)]
        ipv6: bool,
        /// IPv6 subnet (implies --ipv6).
        #[arg(long, value_name = "CIDR")]
        subnet6: Option<String>,
        /// No NAT, no traffic beyond the bridge: containers reach only each other.
        #[arg(long)]
        internal: bool,
    },
    /// List networks.
    #[command(alias = "list")]
    Ls {
        #[arg(long, short = 'o', value_enum, default_value_t)]
        output: Format,
    },
    /// Show a network and the containers on it.
    Inspect {
        name: String,
        #[arg(long, short = 'o', value_enum, default_value_t)]
        output: Format,
    },
    /// Remove networks (refused while containers hold addresses on them).
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
}

/// One network in `--output json` (a stable contract).
#[derive(Debug, Serialize)]
pub struct NetworkView {
    pub name: String,
    pub bridge: String,
    pub subnet: String,
    pub subnet6: Option<String>,
    pub gateway: String,
    pub gateway6: Option<String>,
    pub internal: bool,
    pub containers: Vec<NetworkMember>,
}

#[derive(Debug, Serialize)]
pub struct NetworkMember {
    pub name: String,
    pub ipv4: String,
    pub ipv6: Option<String>,
    /// Whether it runs (holds its address now) or only keeps its lease.
    pub running: bool,
}

impl From<NetworkInfo> for NetworkView {
    fn from(n: NetworkInfo) -> Self {
        let opt = |s: String| (!s.is_empty()).then_some(s);
        NetworkView {
            name: n.name,
            bridge: n.bridge,
            subnet: n.subnet,
            subnet6: opt(n.subnet6),
            gateway: n.gateway,
            gateway6: opt(n.gateway6),
            internal: n.internal,
            containers: n
                .containers
                .into_iter()
                .map(|(name, ipv4, ipv6, running)| NetworkMember {
                    name,
                    ipv4,
                    ipv6: opt(ipv6),
                    running,
                })
                .collect(),
        }
    }
}

fn variant<'a>(v: impl Into<zbus::Variant<'a>>) -> CliResult<zbus::OwnedVariant> {
    zbus::OwnedVariant::try_from(v.into()).map_err(|e| CliError::new(Exit::Failed, e.to_string()))
}

pub async fn run(a: NetworkArgs) -> CliResult {
    let (_conn, proxy) = manager().await?;
    match a.verb {
        NetworkVerb::Create {
            name,
            subnet,
            ipv6,
            subnet6,
            internal,
        } => {
            let mut o = Options::default();
            if let Some(s) = subnet {
                o.insert("Subnet", variant(s)?);
            }
            if ipv6 {
                o.insert("IPv6", variant(true)?);
            }
            if let Some(s) = subnet6 {
                o.insert("Subnet6", variant(s)?);
            }
            if internal {
                o.insert("Internal", variant(true)?);
            }
            proxy.create_network(name.clone(), o).await?;
            output::print_lines([name]);
        }
        NetworkVerb::Ls { output: fmt } => {
            let views: Vec<NetworkView> = proxy
                .list_networks()
                .await?
                .into_iter()
                .map(NetworkView::from)
                .collect();
            if fmt == Format::Json {
                output::print_json(&views);
                return Ok(0);
            }
            let rows: Vec<Vec<String>> = views
                .iter()
                .map(|v| {
                    vec![
                        v.name.clone(),
                        v.bridge.clone(),
                        v.subnet.clone(),
                        v.subnet6.clone().unwrap_or_else(|| "-".into()),
                        if v.internal { "yes" } else { "no" }.into(),
                        v.containers.len().to_string(),
                    ]
                })
                .collect();
            output::print_lines(output::table(
                &[
                    "NAME",
                    "BRIDGE",
                    "SUBNET",
                    "SUBNET6",
                    "INTERNAL",
                    "CONTAINERS",
                ],
                &rows,
            ));
        }
        NetworkVerb::Inspect { name, output: fmt } => {
            let v = NetworkView::from(proxy.get_network(name).await?);
            if fmt == Format::Json {
                output::print_json(&v);
                return Ok(0);
            }
            let mut lines = vec![
                v.name.clone(),
                format!("    Bridge: {}", v.bridge),
                format!("    Subnet: {} (gateway {})", v.subnet, v.gateway),
            ];
            if let (Some(s), Some(g)) = (&v.subnet6, &v.gateway6) {
                lines.push(format!("   Subnet6: {s} (gateway {g})"));
            }
            lines.push(format!(
                "  Internal: {}",
                if v.internal { "yes" } else { "no" }
            ));
            for c in &v.containers {
                lines.push(format!(
                    " Container: {} {}{}{}",
                    c.name,
                    c.ipv4,
                    c.ipv6
                        .as_deref()
                        .map(|i| format!(" {i}"))
                        .unwrap_or_default(),
                    if c.running { "" } else { " (stopped)" }
                ));
            }
            output::print_lines(lines);
        }
        NetworkVerb::Rm { names } => {
            let mut first: Option<CliError> = None;
            for n in names {
                match proxy.remove_network(n.clone()).await {
                    Ok(()) => output::print_lines([n]),
                    Err(e) => {
                        let e = CliError::from(e);
                        eprintln!("berthctl: {}", e.message);
                        first.get_or_insert(CliError::reported(e.exit));
                    }
                }
            }
            if let Some(e) = first {
                return Err(e);
            }
        }
    }
    Ok(0)
}
