//! `berthctl status NAME [-o json]`: state, unit, leader, uptime and the scope's processes.

use clap::Args;

use super::output::{self, ContainerView};
use super::{CliError, CliResult, Exit, Format, manager};
use crate::systemd::SystemdManagerProxy;

#[derive(Debug, Args)]
pub struct StatusArgs {
    pub name: String,
    #[arg(long, short = 'o', value_enum, default_value_t)]
    pub output: Format,
}

pub async fn run(a: StatusArgs) -> CliResult {
    let (conn, proxy) = manager().await?;
    let info = proxy
        .list_containers()
        .await?
        .into_iter()
        .find(|c| c.name == a.name)
        .ok_or_else(|| CliError::new(Exit::NotFound, format!("no container named {:?}", a.name)))?;
    let view = ContainerView::from(info).with_life(&conn).await;
    if a.output == Format::Json {
        output::print_json(&view);
        return Ok(0);
    }
    let now = output::now_usec();
    let mut lines = vec![format!("{} ({})", view.name, view.state)];
    lines.push(format!("      Unit: {}", view.unit));
    lines.push(format!(
        "    Leader: {}",
        view.leader
            .map(|p| p.to_string())
            .unwrap_or_else(|| "-".into())
    ));
    match &view.image {
        Some(i) => lines.push(format!("     Image: {i} ({})", view.root_directory)),
        None => lines.push(format!("      Root: {}", view.root_directory)),
    }
    lines.push(format!(
        "   Created: {}",
        output::timestamp(view.created_at)
    ));
    if let Some(s) = view.started_at {
        let up = if view.leader.is_some() {
            format!("; up {}", output::span(now.saturating_sub(s)))
        } else {
            String::new()
        };
        lines.push(format!("   Started: {}{up}", output::timestamp(s)));
    }
    if let Some(s) = view.exit_status {
        lines.push(format!("    Status: exited with {s}"));
    }
    lines.extend(super::events::life_lines(&conn, &view.name).await);
    if !view.resources.is_empty() {
        let r: Vec<String> = view
            .resources
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        lines.push(format!("    Limits: {}", r.join(" ")));
    }
    let mut net = view.network.clone();
    if !view.addresses.is_empty() {
        net.push_str(&format!(" {}", view.addresses.join(" ")));
    }
    lines.push(format!("   Network: {net}"));
    if !view.ports.is_empty() {
        let p: Vec<String> = view.ports.iter().map(|p| p.line()).collect();
        lines.push(format!("     Ports: {}", p.join(", ")));
    }
    if !view.security.is_empty() {
        let s: Vec<String> = view
            .security
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        lines.push(format!("  Security: {}", s.join(" ")));
    }
    if let Some(at) = view.last_oom_at {
        lines.push(format!(
            "       OOM: {} kill(s), last at {}",
            view.oom_kills,
            output::timestamp(at)
        ));
    }
    if view.leader.is_some() {
        lines.extend(processes(&conn, &view.unit).await);
    }
    output::print_lines(lines);
    Ok(0)
}

/// The scope's processes, from systemd (what `systemctl status` shows); none if it cannot say.
async fn processes(conn: &zbus::Connection, unit: &str) -> Vec<String> {
    let Ok(sd) = SystemdManagerProxy::new(conn).await else {
        return vec![];
    };
    let Ok(procs) = sd.get_unit_processes(unit).await else {
        return vec![];
    };
    let mut lines: Vec<String> = procs
        .first()
        .map(|(cg, _, _)| format!("    CGroup: {cg}"))
        .into_iter()
        .collect();
    let n = procs.len();
    for (i, (_, pid, cmd)) in procs.iter().enumerate() {
        let branch = if i + 1 == n { "└─" } else { "├─" };
        lines.push(format!("            {branch}{pid} {cmd}"));
    }
    lines
}
