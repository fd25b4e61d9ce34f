//! Container output in the journal: the payload's stdout and stderr are pipes whose read ends
//! berthd relays ([`crate::journal::relay`]) as native journal entries with the container's
//! fields — a tokio task per stream in berthd, no process per container.
//!
//! Why a relay of native entries from berthd (and not the journal's stream socket handed to
//! the payload): the stream protocol carries no fields of ours (`CONTAINER_NAME=`), and
//! journald rate-limits a stream by the sender's unit — the container's scope, which cannot
//! raise `LogRateLimitBurst=` — while berthd.service lifts its own limit. Entries
//! name the unit that holds the container with `OBJECT_SYSTEMD_UNIT=` (`berth-NAME.scope`, or
//! `berth@NAME.service`), so `journalctl -u` finds them, and, while it runs, the leader with
//! `OBJECT_PID=` (which journald honours from root).
//!
//! The read ends also live in systemd's FD store (`log-NAME-out.GEN`, `log-NAME-err.GEN`,
//! GEN the start's time): a restarted berthd relays them on, and a stopping berthd lets its
//! relays finish what they read and leaves the rest in the pipes. Nothing is dropped: a slow
//! journal blocks the container's writes.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use tracing::warn;

use super::error::{Error, Result};
use super::notify;
use super::start::Stdio;
use super::table::Registry;
use crate::dbus::Caller;
use crate::journal::{self, Feed, JournalSocket, LogDriver, RelayEnd, Sink, Source, Stream};
use crate::spec::ContainerSpec;

/// The read ends of a start's log pipes.
#[derive(Debug, Default)]
pub struct LogPipes {
    pub out: Option<OwnedFd>,
    pub err: Option<OwnedFd>,
}

struct Relay {
    stop: watch::Sender<bool>,
    alive: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

/// The relays running, and the live followers' feeds, by container.
#[derive(Default)]
pub struct Relays {
    running: std::sync::Mutex<HashMap<String, Vec<Relay>>>,
    feeds: std::sync::Mutex<HashMap<String, Arc<Feed>>>,
}

impl Relays {
    /// The container's feed, made on first use (by its first relay or follower).
    fn feed(&self, name: &str) -> Arc<Feed> {
        self.feeds
            .lock()
            .unwrap()
            .entry(name.to_string())
            .or_default()
            .clone()
    }
}

fn devnull() -> Result<OwnedFd> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map(OwnedFd::from)
        .map_err(|e| Error::io("open /dev/null", e))
}

/// The payload's three streams for a start: what the starter passed; else, with `terminal`,
/// the terminal (a placeholder here, replaced by the leader); else the log driver's choice —
/// journald: a pipe whose read end berthd relays, for stdout and stderr; none or
/// passthrough: /dev/null. Returns the streams, the read ends, and which streams are the
/// terminal.
pub(super) fn start_stdio(
    spec: &ContainerSpec,
    stdio: Stdio,
    terminal: bool,
) -> Result<(Vec<OwnedFd>, LogPipes, [bool; 3])> {
    let mut fds = Vec::with_capacity(3);
    let mut logs = LogPipes::default();
    let mut slots = [false; 3];
    for (i, fd) in stdio.0.into_iter().enumerate() {
        fds.push(match fd {
            Some(fd) => fd,
            None if terminal => {
                slots[i] = true;
                devnull()?
            }
            None if i > 0 && spec.log_driver == LogDriver::Journald => {
                let (rd, wr) =
                    journal::log_pipe().map_err(|e| Error::Failed(format!("log pipe: {e}")))?;
                if i == 1 {
                    logs.out = Some(rd);
                } else {
                    logs.err = Some(rd);
                }
                wr
            }
            None => devnull()?,
        });
    }
    Ok((fds, logs, slots))
}

/// The FD store name of one stream's pipe of the start at `generation`.
fn store_name(container: &str, stream: Stream, generation: u64) -> String {
    format!("{}.{generation}", journal::fdstore_name(container, stream))
}

/// `log-NAME-out.GEN` → (NAME, stream, GEN).
fn parse_store_name(s: &str) -> Option<(&str, Stream, u64)> {
    let rest = s.strip_prefix("log-")?;
    let (rest, generation) = rest.rsplit_once('.')?;
    let generation = generation.parse().ok()?;
    if let Some(name) = rest.strip_suffix("-out") {
        Some((name, Stream::Stdout, generation))
    } else {
        rest.strip_suffix("-err")
            .map(|name| (name, Stream::Stderr, generation))
    }
}

/// Relay descriptors found in the FD store, by container: (stream, generation, read end).
pub(super) type StoredLogs = HashMap<String, Vec<(Stream, u64, OwnedFd)>>;

/// Take the log pipes out of what systemd kept for us.
pub(super) fn take_stored(stored: &mut HashMap<String, OwnedFd>) -> StoredLogs {
    let mut out: StoredLogs = HashMap::new();
    let names: Vec<String> = stored
        .keys()
        .filter(|k| parse_store_name(k).is_some())
        .cloned()
        .collect();
    for k in names {
        if let (Some(fd), Some((name, stream, generation))) =
            (stored.remove(&k), parse_store_name(&k))
        {
            out.entry(name.to_string())
                .or_default()
                .push((stream, generation, fd));
        }
    }
    out
}

impl Registry {
    fn log_source(&self, name: &str, leader: u32) -> Source {
        let (image, held_by) = self
            .with(name, |e| {
                (e.spec.definition.image.clone(), e.held_by.clone())
            })
            .unwrap_or_default();
        Source {
            container: name.to_string(),
            identifier: name.to_string(),
            // The unit that holds it: its scope, or its berth@ service.
            unit: held_by.unwrap_or_else(|| crate::name::scope_unit(name)),
            leader,
            image,
        }
    }

    /// Relay a start's log pipes (and keep them in the FD store).
    pub(super) fn relay_logs(
        &self,
        name: &str,
        pipes: LogPipes,
        leader: u32,
        alive: bool,
        generation: u64,
    ) {
        for (stream, pipe) in [(Stream::Stdout, pipes.out), (Stream::Stderr, pipes.err)] {
            let Some(pipe) = pipe else { continue };
            let fdname = store_name(name, stream, generation);
            if let Err(e) = notify::store_fd(&fdname, pipe.as_fd()) {
                warn!(
                    "cannot keep the {} pipe of {name} in the FD store: {e}, ignoring",
                    stream.as_str()
                );
            }
            self.spawn_relay(name, stream, pipe, leader, alive, fdname);
        }
    }

    /// Relay the pipes a previous berthd left in the FD store.
    pub(super) fn resume_relays(
        &self,
        name: &str,
        pipes: Vec<(Stream, u64, OwnedFd)>,
        leader: u32,
        alive: bool,
    ) {
        for (stream, generation, pipe) in pipes {
            let fdname = store_name(name, stream, generation);
            self.spawn_relay(name, stream, pipe, leader, alive, fdname);
        }
    }

    fn spawn_relay(
        &self,
        name: &str,
        stream: Stream,
        pipe: OwnedFd,
        leader: u32,
        alive: bool,
        fdname: String,
    ) {
        let alive = Arc::new(AtomicBool::new(alive));
        let tags = self.log_source(name, leader).tags(stream, alive.clone());
        let (stop, stop_rx) = watch::channel(false);
        let container = name.to_string();
        let feed = self.relays.feed(name);
        let task = tokio::spawn(async move {
            let mut sock = loop {
                match JournalSocket::connect(journal::JOURNAL_SOCKET) {
                    Ok(s) => break s,
                    Err(e) => {
                        warn!("{container}: {e}, retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            };
            match journal::relay(pipe, &mut Sink::new(&mut sock, &feed), &tags, stop_rx).await {
                Ok(RelayEnd::Eof(_)) => {
                    if let Err(e) = notify::remove_fd(&fdname) {
                        warn!("cannot drop {fdname} from the FD store: {e}, ignoring");
                    }
                }
                // What is still in the pipe waits there, in the FD store, for the next berthd.
                Ok(RelayEnd::Stopped { .. }) => {}
                Err(e) => warn!("the log relay of {container} ended: {e}, ignoring"),
            }
        });
        let mut relays = self.relays.running.lock().unwrap();
        let list = relays.entry(name.to_string()).or_default();
        list.retain(|r| !r.task.is_finished());
        list.push(Relay { stop, alive, task });
    }

    /// The leader exited: entries name the unit from now on.
    pub(super) fn logs_leader_gone(&self, name: &str) {
        if let Some(list) = self.relays.running.lock().unwrap().get(name) {
            for r in list {
                r.alive.store(false, Ordering::Relaxed);
            }
        }
    }

    /// The container is removed or renamed: its followers are told, and its finished relays
    /// forgotten (one still draining its pipe finishes on its own).
    pub(super) fn logs_forget(&self, name: &str) {
        if let Some(feed) = self.relays.feeds.lock().unwrap().remove(name) {
            feed.close();
        }
        let mut running = self.relays.running.lock().unwrap();
        if let Some(list) = running.get_mut(name) {
            list.retain(|r| !r.task.is_finished());
            if list.is_empty() {
                running.remove(name);
            }
        }
    }

    /// `FollowLogs`: a socket of the container's lines from now on (the newest few first),
    /// for who may read the system journal.
    pub(super) async fn follow_logs(&self, caller: Caller, name: String) -> Result<(OwnedFd, u64)> {
        if !self.entries.lock().unwrap().contains_key(&name) {
            return Err(Error::NoSuchContainer(name));
        }
        match self.authorizer.may_read_journal(&caller.sender).await {
            Ok(true) => {}
            Ok(false) => {
                return Err(Error::PermissionDenied(format!(
                    "following the output of {name:?} is for who may read the system journal: \
                     root, or the groups systemd-journal, adm and wheel"
                )));
            }
            Err(e) => return Err(Error::PermissionDenied(format!("who is calling: {e}"))),
        }
        let sub = self
            .relays
            .feed(&name)
            .subscribe()
            .map_err(|e| Error::LimitExceeded(e.to_string()))?;
        let (ours, theirs) =
            tokio::net::UnixStream::pair().map_err(|e| Error::io("a socket pair", e))?;
        let theirs = theirs
            .into_std()
            .map_err(|e| Error::io("a socket pair", e))?;
        // berthctl reads it blocking.
        theirs
            .set_nonblocking(false)
            .map_err(|e| Error::io("a socket pair", e))?;
        let newest = sub.newest;
        tokio::spawn(journal::feed::serve(sub, ours));
        Ok((OwnedFd::from(theirs), newest))
    }

    /// berthd stops: every relay sends what it has read and leaves the rest in its pipe.
    pub async fn stop_relays(&self) {
        let all: Vec<Relay> = self
            .relays
            .running
            .lock()
            .unwrap()
            .drain()
            .flat_map(|(_, v)| v)
            .collect();
        for r in &all {
            r.stop.send_replace(true);
        }
        for r in all {
            if tokio::time::timeout(Duration::from_secs(5), r.task)
                .await
                .is_err()
            {
                warn!("a log relay did not stop within 5 s, ignoring");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_names_carry_container_stream_and_generation() {
        let n = store_name("web.1", Stream::Stderr, 42);
        assert_eq!(n, "log-web.1-err.42");
        assert_eq!(parse_store_name(&n), Some(("web.1", Stream::Stderr, 42)));
        assert_eq!(
            parse_store_name("log-a-out-out.7"),
            Some(("a-out", Stream::Stdout, 7))
        );
        for bad in ["exit-web", "log-web-out", "log-web-in.1", "log-web-out.x"] {
            assert_eq!(parse_store_name(bad), None, "{bad}");
        }
        let mut stored: HashMap<String, OwnedFd> = HashMap::new();
        stored.insert(
            "exit-web".into(),
            std::fs::File::open("/dev/null").unwrap().into(),
        );
        stored.insert(n, std::fs::File::open("/dev/null").unwrap().into());
        let logs = take_stored(&mut stored);
        assert_eq!(stored.len(), 1);
        assert_eq!(logs["web.1"].len(), 1);
    }
}
