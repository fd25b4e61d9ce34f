//! `berthctl logs [-f] [-n N] [--since T] [--until T] [-o json] NAME`: a container's output
//! read back from the journal, where berthd's relay put it (see `src/daemon/logs.rs`).
//!
//! berthctl runs the journal's own reader, `journalctl -o export`, as the caller — so the
//! journal's access rules decide (root, or the `systemd-journal`/`adm` groups), as for
//! `journalctl CONTAINER_NAME=NAME` — matched on `CONTAINER_NAME=` and on `_UID=0` (only
//! berthd, as root, can have sent them), and joins lines the relay had to cut. It works for
//! running, exited and removed containers alike.
//!
//! `-f` does not follow the journal: journald tells its readers of new entries at most every
//! 250 ms. berthctl subscribes to berthd's live feed of the container's lines first
//! (`FollowLogs`, [`crate::journal::feed`]), then reads the journal's history, then the feed,
//! skipping by sequence number what the history showed. When berthd goes away (a restart) or
//! berthctl falls behind, it subscribes again and reads the journal from its last line; when
//! the container is removed, it ends. Where the feed is refused (the same rule as the journal:
//! root, systemd-journal, adm, wheel) or berthd is older, it follows the journal instead.

use std::collections::{HashSet, VecDeque};
use std::io::Write;
use std::os::fd::OwnedFd;

use clap::Args;
use serde::Serialize;

use super::{CliError, CliResult, Exit, Format};
use crate::dbus::Options;
use crate::journal::{
    ExportReader, FrameKind, FrameReader, LINE_MAX, LogEntry, LogQuery, Reassembler, Stream,
    TimeSpec,
};

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
    /// Microseconds since the epoch, when the journal received it (for lines shown live,
    /// when berthd relayed them).
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
        follow: false,
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
    // Checked before anything is shown.
    crate::journal::journalctl_args(&query).map_err(invalid)?;
    let format = a.output;
    let mut printer = Printer::new(format);
    // journalctl and the feed are read blocking: in a thread of their own. An unknown name
    // is looked up once, never followed; --until ends a follow where the journal does.
    if a.follow && known && query.until.is_none() {
        let rt = tokio::runtime::Handle::current();
        return tokio::task::spawn_blocking(move || follow(&rt, query, &mut printer))
            .await
            .map_err(|e| CliError::new(Exit::Failed, e.to_string()))?;
    }
    let mut q = query;
    q.follow = a.follow && known;
    let args = crate::journal::journalctl_args(&q).map_err(invalid)?;
    let h = tokio::task::spawn_blocking(move || {
        history(&args, &mut printer, None).map(|h| (h, printer.shown))
    })
    .await
    .map_err(|e| CliError::new(Exit::Failed, e.to_string()))??;
    if !known && h.1 == 0 {
        return Err(CliError::new(
            Exit::NotFound,
            format!("no container {name:?}, and the journal has no lines of one by that name"),
        ));
    }
    Ok(0)
}

/// Prints whole lines as the format says.
struct Printer {
    format: Format,
    shown: usize,
}

impl Printer {
    fn new(format: Format) -> Self {
        Printer { format, shown: 0 }
    }

    /// Print one line; false when the reader went away (a closed pipe).
    fn print(&mut self, e: LogEntry) -> bool {
        self.shown += 1;
        let msg = e
            .message
            .unwrap_or_else(|| b"[line left out by journalctl]".to_vec());
        let r = match self.format {
            Format::Json => {
                let v = LineView {
                    time_usec: e.realtime_usec,
                    stream: e.stream.as_str(),
                    message: String::from_utf8_lossy(&msg).into_owned(),
                };
                let mut stdout = std::io::stdout().lock();
                serde_json::to_writer(&mut stdout, &v)
                    .map_err(std::io::Error::other)
                    .and_then(|()| stdout.write_all(b"\n"))
                    .and_then(|()| stdout.flush())
            }
            Format::Table => {
                let (mut out, mut err);
                let w: &mut dyn Write = match e.stream {
                    Stream::Stdout => {
                        out = std::io::stdout().lock();
                        &mut out
                    }
                    Stream::Stderr => {
                        err = std::io::stderr().lock();
                        &mut err
                    }
                };
                w.write_all(&msg)
                    .and_then(|()| w.write_all(b"\n"))
                    .and_then(|()| w.flush())
            }
        };
        r.is_ok()
    }
}

/// The sequence numbers of lines shown lately, to show none twice while following.
struct Seen {
    set: HashSet<u64>,
    order: VecDeque<u64>,
    /// Every line up to this one counts as shown.
    floor: u64,
    /// The newest shown.
    newest: u64,
}

/// How many sequence numbers [`Seen`] keeps (a follower's history overlaps the feed by a
/// few hundred lines at most).
const SEEN_MAX: usize = 1 << 16;

impl Seen {
    fn new() -> Self {
        Seen {
            set: HashSet::new(),
            order: VecDeque::new(),
            floor: 0,
            newest: 0,
        }
    }

    fn shown(&self, seq: u64) -> bool {
        seq <= self.floor || self.set.contains(&seq)
    }

    fn add(&mut self, seq: u64) {
        self.newest = self.newest.max(seq);
        if seq == 0 || !self.set.insert(seq) {
            return;
        }
        self.order.push_back(seq);
        if self.order.len() > SEEN_MAX
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
            self.floor = self.floor.max(old);
        }
    }

    /// The oldest numbered line remembered.
    fn oldest(&self) -> Option<u64> {
        self.set.iter().min().copied()
    }
}

/// What a history read did.
struct History {
    /// The reader went away.
    closed: bool,
    shown: usize,
}

/// Print the entries journalctl finds, skipping those `seen` has (when given) and noting
/// those shown in it.
fn history(
    args: &[String],
    printer: &mut Printer,
    mut seen: Option<&mut Seen>,
) -> CliResult<History> {
    let mut child = std::process::Command::new("journalctl")
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| CliError::new(Exit::Failed, format!("cannot run journalctl: {e}")))?;
    let out = child.stdout.take().expect("piped");
    let mut joined = Reassembler::new(16 * LINE_MAX);
    let mut h = History {
        closed: false,
        shown: 0,
    };
    let mut show = |e: LogEntry, h: &mut History| -> bool {
        if let Some(s) = seen.as_deref_mut() {
            if e.seq != 0 && s.shown(e.seq) {
                return true;
            }
            s.add(e.seq);
        }
        h.shown += 1;
        printer.print(e)
    };
    let mut entries = ExportReader::new(std::io::BufReader::with_capacity(256 * 1024, out));
    loop {
        let entry = match entries.next_entry() {
            Ok(Some(e)) => e,
            Ok(None) => break,
            // The format has no resynchronisation point: what follows is lost too.
            Err(e) => return Err(CliError::new(Exit::Failed, format!("journalctl: {e}"))),
        };
        if let Some(whole) = joined.push(entry)
            && !show(whole, &mut h)
        {
            h.closed = true;
            break;
        }
    }
    if !h.closed {
        for rest in joined.finish() {
            if !show(rest, &mut h) {
                h.closed = true;
                break;
            }
        }
    }
    if h.closed {
        // journalctl would otherwise follow for ever.
        if let Err(e) = child.kill() {
            eprintln!("berthctl: cannot stop journalctl: {e}, ignoring");
        }
    }
    let status = child
        .wait()
        .map_err(|e| CliError::new(Exit::Failed, format!("journalctl: {e}")))?;
    if !h.closed && !status.success() {
        return Err(CliError::new(
            Exit::Failed,
            format!("journalctl failed ({status})"),
        ));
    }
    Ok(h)
}

/// How a subscription to the live feed went.
enum Subscribed {
    Feed(OwnedFd, u64),
    /// The container is gone.
    Gone,
    /// berthd is not there (restarting): try again.
    Retry(CliError),
    /// berthd refuses (the caller may not, too many followers) or predates the feed.
    Refused(CliError),
}

async fn subscribe(name: &str) -> Subscribed {
    let (conn, proxy) = match super::manager().await {
        Ok(p) => p,
        Err(e) => return Subscribed::Retry(e),
    };
    let c = match super::exec::container(&conn, &proxy, name).await {
        Ok(c) => c,
        Err(e) if e.exit == Exit::NotFound => return Subscribed::Gone,
        Err(e) => return Subscribed::Retry(e),
    };
    match c.follow_logs(Options::default()).await {
        Ok((fd, newest)) => Subscribed::Feed(fd.into(), newest),
        Err(crate::dbus::Error::NoSuchContainer(_)) => Subscribed::Gone,
        Err(crate::dbus::Error::ZBus(zbus::Error::InputOutput(e))) => {
            Subscribed::Retry(CliError::new(Exit::NoDaemon, e.to_string()))
        }
        Err(e) => Subscribed::Refused(e.into()),
    }
}

/// The journal's lines of `container` from shortly before `seq` on (to catch up after the
/// feed was lost).
fn since_seq(container: &str, seq: u64) -> LogQuery {
    let t = seq.saturating_sub(2_000_000);
    LogQuery {
        container: container.to_string(),
        since: TimeSpec::parse(&format!("@{}.{:06}", t / 1_000_000, t % 1_000_000)).ok(),
        ..Default::default()
    }
}

fn args_of(q: &LogQuery) -> CliResult<Vec<String>> {
    crate::journal::journalctl_args(q).map_err(invalid)
}

/// `logs -f`: history, then the live feed, for as long as the container exists.
fn follow(rt: &tokio::runtime::Handle, query: LogQuery, p: &mut Printer) -> CliResult {
    let name = query.container.clone();
    let mut seen = Seen::new();
    let mut first = true;
    let mut waiting = false;
    loop {
        let (fd, newest) = match rt.block_on(subscribe(&name)) {
            Subscribed::Feed(fd, newest) => (fd, newest),
            Subscribed::Gone => {
                // What berthd relayed after it said so is in the journal.
                if !first {
                    history(
                        &args_of(&since_seq(&name, seen.newest))?,
                        p,
                        Some(&mut seen),
                    )?;
                }
                return Ok(0);
            }
            Subscribed::Retry(e) if first => return Err(e),
            Subscribed::Retry(_) => {
                if !waiting {
                    eprintln!("berthctl: berthd is gone; waiting for it to follow {name} on");
                    waiting = true;
                }
                std::thread::sleep(std::time::Duration::from_millis(200));
                continue;
            }
            Subscribed::Refused(e) => {
                // Follow the journal itself, with its delay.
                if !first {
                    eprintln!("berthctl: {}; following the journal instead", e.message);
                }
                let mut q = if first {
                    query.clone()
                } else {
                    since_seq(&name, seen.newest)
                };
                q.follow = true;
                let seen = if first { None } else { Some(&mut seen) };
                history(&args_of(&q)?, p, seen)?;
                return Ok(0);
            }
        };
        waiting = false;
        if first {
            let h = history(&args_of(&query)?, p, Some(&mut seen))?;
            if h.closed {
                return Ok(0);
            }
            // The feed replays its newest lines: those the history showed, and those the
            // journal had not stored yet — unless the history was cut (-n, --since) and showed
            // nothing, when none of them was asked for.
            seen.floor = match seen.oldest() {
                Some(oldest) => oldest - 1,
                None if query.lines.is_some() || query.since.is_some() => newest,
                None => 0,
            };
            first = false;
        } else {
            let h = history(
                &args_of(&since_seq(&name, seen.newest))?,
                p,
                Some(&mut seen),
            )?;
            if h.closed {
                return Ok(0);
            }
        }
        let mut frames = FrameReader::new(std::os::unix::net::UnixStream::from(fd));
        let mut joined = Reassembler::new(16 * LINE_MAX);
        // Until berthd goes away (then subscribe again, to the next berthd).
        while let Ok(Some(f)) = frames.next_frame() {
            match f.kind {
                FrameKind::Line => {
                    if seen.shown(f.seq) {
                        continue;
                    }
                    seen.add(f.seq);
                    let e = LogEntry {
                        realtime_usec: f.seq,
                        stream: f.stream,
                        message: Some(f.line),
                        partial: f.partial,
                        cursor: String::new(),
                        seq: f.seq,
                    };
                    if let Some(whole) = joined.push(e)
                        && !p.print(whole)
                    {
                        return Ok(0);
                    }
                }
                FrameKind::Lagged => break,
                FrameKind::Gone => {
                    for rest in joined.finish() {
                        if !p.print(rest) {
                            return Ok(0);
                        }
                    }
                    history(
                        &args_of(&since_seq(&name, seen.newest))?,
                        p,
                        Some(&mut seen),
                    )?;
                    return Ok(0);
                }
            }
        }
        for rest in joined.finish() {
            if !p.print(rest) {
                return Ok(0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seen_skips_what_was_shown_and_forgets_the_oldest_into_its_floor() {
        let mut s = Seen::new();
        for q in [10, 12, 11] {
            assert!(!s.shown(q));
            s.add(q);
            assert!(s.shown(q));
        }
        assert_eq!((s.oldest(), s.newest), (Some(10), 12));
        assert!(!s.shown(13), "a line the history did not have");
        s.add(0);
        assert_eq!(s.oldest(), Some(10), "unnumbered lines are not remembered");
        for q in 100..100 + SEEN_MAX as u64 {
            s.add(q);
        }
        assert!(
            s.shown(11) && s.floor >= 12,
            "forgotten ones count as shown"
        );
        assert!(s.set.len() <= SEEN_MAX);
    }

    #[test]
    fn catching_up_reads_the_journal_from_shortly_before_the_last_line() {
        let q = since_seq("web", 1_700_000_005_000_042);
        let a = args_of(&q).unwrap();
        assert!(
            a.contains(&"--since=@1700000003.000042".to_string()),
            "{a:?}"
        );
        assert!(a.contains(&"CONTAINER_NAME=web".to_string()));
        assert!(!a.contains(&"--follow".to_string()));
    }
}
