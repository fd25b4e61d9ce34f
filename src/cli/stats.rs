//! `berthctl stats [NAME...] [--no-stream] [-o json]`: resource usage like `docker stats`,
//! from the containers' cgroups (GetStats), refreshed every second until interrupted.

use std::io::Write;
use std::time::Duration;

use clap::Args;

use super::output::{self, StatsView};
use super::{CliResult, Format, manager};

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Containers to show (default: all running ones).
    pub names: Vec<String>,
    /// Print one sample and exit.
    #[arg(long)]
    pub no_stream: bool,
    /// Seconds between refreshes.
    #[arg(long, default_value_t = 1.0)]
    pub interval: f64,
    #[arg(long, short = 'o', value_enum, default_value_t)]
    pub output: Format,
}

fn rows(stats: Vec<StatsView>) -> Vec<String> {
    let limit = |l: Option<u64>, f: fn(u64) -> String| l.map_or("-".to_string(), f);
    let rows: Vec<Vec<String>> = stats
        .into_iter()
        .map(|s| {
            vec![
                s.name,
                format!("{:.2}%", s.cpu_percent),
                format!(
                    "{} / {}",
                    output::bytes(s.memory_bytes),
                    limit(s.memory_limit_bytes, output::bytes)
                ),
                format!("{} / {}", s.pids, limit(s.pids_limit, |n| n.to_string())),
                format!(
                    "{} / {}",
                    output::bytes(s.io_read_bytes),
                    output::bytes(s.io_write_bytes)
                ),
                format!(
                    "{} / {}",
                    output::bytes(s.net_rx_bytes),
                    output::bytes(s.net_tx_bytes)
                ),
                s.oom_kills.to_string(),
            ]
        })
        .collect();
    output::table(
        &[
            "NAME",
            "CPU",
            "MEM / LIMIT",
            "PIDS",
            "BLOCK R / W",
            "NET RX / TX",
            "OOM",
        ],
        &rows,
    )
}

pub async fn run(a: StatsArgs) -> CliResult {
    let (_conn, proxy) = manager().await?;
    let interval = Duration::from_secs_f64(a.interval.clamp(0.1, 3600.0));
    loop {
        let stats: Vec<StatsView> = proxy
            .get_stats(a.names.clone())
            .await?
            .into_iter()
            .map(StatsView::from)
            .collect();
        let mut out = std::io::stdout().lock();
        if a.output == Format::Json {
            if a.no_stream {
                drop(out);
                output::print_json(&stats);
                return Ok(0);
            }
            // One JSON document per line, so a stream can be read line by line.
            if serde_json::to_writer(&mut out, &stats).is_err() || writeln!(out).is_err() {
                return Ok(0);
            }
        } else {
            if !a.no_stream {
                // Clear the screen and go home, like top.
                let _ = write!(out, "\x1b[H\x1b[2J");
            }
            for l in rows(stats) {
                if writeln!(out, "{l}").is_err() {
                    return Ok(0);
                }
            }
        }
        let _ = out.flush();
        drop(out);
        if a.no_stream {
            return Ok(0);
        }
        tokio::time::sleep(interval).await;
    }
}
