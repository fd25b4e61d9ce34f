//! `berthctl logs [-f] [-n N] [--since T] [--until T] [-o json] NAME`: a container's output
//! read back from the journal, where berthd's relay put it (see `src/daemon/logs.rs`).
//!
//! berthctl runs the journal's own reader, `journalctl -o json`, as the caller — so the
//! journal's access rules decide (root, or the `systemd-journal`/`adm` groups), as for
//! `journalctl CONTAINER_NAME=NAME` — matched on `CONTAINER_NAME=` and on `_UID=0` (only
//! berthd, as root, can have sent them), and joins lines the relay had to cut. It works for
//! running, exited and removed containers alike.

use std::io::{BufRead, Write};

use clap::Args;
use serde::Serialize;

use super::{CliError, CliResult, Exit, Format};
use crate::journal::{LINE_MAX, LogQuery, Reassembler, Stream, TimeSpec};

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Keep printing new lines as they come.
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Only the last N lines.
    #[arg(long = "tail", visible_alias = "lines", short = 'n', value_name = "N")]
    pub lines: Option<u64>,
    /// Lines from this time on (journalctl's forms: "2024-01-31 12:00", "-1h", "today").
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Lines up to this time.
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
    #[arg(long, short = 'o', value_enum, default_value_t)]
    pub output: Format,
    pub name: String,
}

/// One line in `--output json` (one object per line).
#[derive(Serialize)]
struct LineView<'a> {
    /// Microseconds since the epoch, when the journal received it.
    time_usec: u64,
    /// `stdout` or `stderr`.
    stream: &'a str,
    message: String,
}

fn invalid(e: impl std::fmt::Display) -> CliError {
    CliError::new(Exit::InvalidArgument, e.to_string())
}

pub async fn run(a: LogsArgs) -> CliResult {
    // A removed container's lines stay in the journal and are shown; a name that is neither
    // a container nor in the journal is an error, not an empty answer.
    let known = {
        let (_conn, proxy) = super::manager().await?;
        match proxy.get_container(a.name.clone()).await {
            Ok(_) => true,
            Err(e) => match e {
                crate::dbus::Error::NoSuchContainer(_) => false,
                other => return Err(other.into()),
            },
        }
    };
    let name = a.name.clone();
    let query = LogQuery {
        container: a.name,
        follow: a.follow && known,
        lines: a.lines,
        since: a
            .since
            .as_deref()
            .map(TimeSpec::parse)
            .transpose()
            .map_err(invalid)?,
        until: a
            .until
            .as_deref()
            .map(TimeSpec::parse)
            .transpose()
            .map_err(invalid)?,
    };
    let args = crate::journal::journalctl_args(&query).map_err(invalid)?;
    let format = a.output;
    // journalctl blocks while following: read it in a thread of its own. An unknown name
    // is looked up once, never followed.
    let shown = tokio::task::spawn_blocking(move || show(&args, format))
        .await
        .map_err(|e| CliError::new(Exit::Failed, e.to_string()))??;
    if !known && shown == 0 {
        return Err(CliError::new(
            Exit::NotFound,
            format!("no container {name:?}, and the journal has no lines of one by that name"),
        ));
    }
    Ok(0)
}

/// Print the entries journalctl finds; returns how many.
fn show(args: &[String], format: Format) -> CliResult<usize> {
    let mut child = std::process::Command::new("journalctl")
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| CliError::new(Exit::Failed, format!("cannot run journalctl: {e}")))?;
    let out = child.stdout.take().expect("piped");
    let mut joined = Reassembler::new(16 * LINE_MAX);
    let mut stdout = std::io::stdout().lock();
    let mut stderr = std::io::stderr().lock();
    let mut closed = false;
    let mut shown = 0;
    let mut print = |e: crate::journal::LogEntry| -> bool {
        let msg = e
            .message
            .unwrap_or_else(|| b"[line left out by journalctl]".to_vec());
        let r = match format {
            Format::Json => {
                let v = LineView {
                    time_usec: e.realtime_usec,
                    stream: e.stream.as_str(),
                    message: String::from_utf8_lossy(&msg).into_owned(),
                };
                serde_json::to_writer(&mut stdout, &v)
                    .map_err(std::io::Error::other)
                    .and_then(|()| stdout.write_all(b"\n"))
                    .and_then(|()| stdout.flush())
            }
            Format::Table => {
                let w: &mut dyn Write = match e.stream {
                    Stream::Stdout => &mut stdout,
                    Stream::Stderr => &mut stderr,
                };
                w.write_all(&msg)
                    .and_then(|()| w.write_all(b"\n"))
                    .and_then(|()| w.flush())
            }
        };
        r.is_ok()
    };
    for line in std::io::BufReader::new(out).split(b'\n') {
        let line = line.map_err(|e| CliError::new(Exit::Failed, format!("journalctl: {e}")))?;
        if line.is_empty() {
            continue;
        }
        let entry = match crate::journal::parse_entry(&line) {
            Ok(e) => e,
            Err(e) => {
                eprintln!("berthctl: {e}, ignoring");
                continue;
            }
        };
        shown += 1;
        if let Some(whole) = joined.push(entry)
            && !print(whole)
        {
            // The reader went away (a closed pipe): stop quietly.
            closed = true;
            break;
        }
    }
    if !closed {
        for rest in joined.finish() {
            if !print(rest) {
                break;
            }
        }
    }
    if closed {
        // journalctl would otherwise follow for ever.
        if let Err(e) = child.kill() {
            eprintln!("berthctl: cannot stop journalctl: {e}, ignoring");
        }
    }
    let status = child
        .wait()
        .map_err(|e| CliError::new(Exit::Failed, format!("journalctl: {e}")))?;
    if !closed && !status.success() {
        return Err(CliError::new(
            Exit::Failed,
            format!("journalctl failed ({status})"),
        ));
    }
    Ok(shown)
}
