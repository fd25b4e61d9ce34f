//! The relay: berthd reads a container's stdout or stderr pipe and sends each line to the
//! journal as a native entry carrying the container's fields. It is a tokio task in berthd,
//! not a process per container.
//!
//! **Backpressure, never loss.** The relay reads the pipe only after the lines it already
//! read have been accepted by the journal socket. A slow journald fills the socket, the relay
//! waits, the pipe fills, and the container blocks in `write(2)` — which is what "loses no
//! line" costs. The same holds while berthd restarts (the pipe waits in the kernel).
//!
//! **Restart.** The pipe's read end lives in systemd's FD store as well (named by
//! [`fdstore_name`]), so a restarted berthd gets it back and runs a new relay on it. A relay
//! asked to stop ([`relay`]'s `stop`) reads no more, sends what it has read — an unfinished
//! line as a continued piece — and hands the pipe back; only what a crash interrupts between
//! `read(2)` and the journal (at most one read, [`READ_CHUNK`], plus one unfinished line) can
//! be lost.

use std::io::IoSlice;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use tokio::sync::watch;
use tracing::warn;

use super::feed::Feed;
use super::native::{JournalSocket, encode_field};
use super::split::{LINE_MAX, LineBuffer, LineEnd};
use super::{JournalError, Stream};

/// How much the relay reads at once.
pub const READ_CHUNK: usize = 64 * 1024;
/// The pipe size berthd asks for (the default `fs.pipe-max-size`): a burst of output waits
/// in the kernel rather than blocking the container at once.
pub const PIPE_SIZE: i32 = 1 << 20;

/// What every entry of one container says about where it comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// `CONTAINER_NAME=`: what `journalctl CONTAINER_NAME=web` and `berthctl logs` match.
    pub container: String,
    /// `SYSLOG_IDENTIFIER=`: the container's name too, so `journalctl -t web` works and the
    /// default output shows `web[PID]:`; the image's or command's name would be the same for
    /// every container of one image.
    pub identifier: String,
    /// The unit that holds the container (`berth-NAME.scope`, or `berth@NAME.service`): sent
    /// as `OBJECT_SYSTEMD_UNIT=` with every entry (see [`Tags`]).
    pub unit: String,
    /// The container's leader (its PID 1) on the host: `OBJECT_PID=`.
    pub leader: u32,
    /// `IMAGE_NAME=`, when the container runs an image.
    pub image: Option<String>,
}

impl Source {
    /// The fields of one stream's entries. `leader_alive` is shared with whoever watches the
    /// leader, and cleared when it exits.
    pub fn tags(&self, stream: Stream, leader_alive: Arc<AtomicBool>) -> Tags {
        let mut common = Vec::new();
        encode_field(&mut common, "PRIORITY", stream.priority().as_bytes());
        encode_field(&mut common, "SYSLOG_IDENTIFIER", self.identifier.as_bytes());
        encode_field(&mut common, "CONTAINER_NAME", self.container.as_bytes());
        if let Some(image) = &self.image {
            encode_field(&mut common, "IMAGE_NAME", image.as_bytes());
        }
        encode_field(&mut common, "OBJECT_SYSTEMD_UNIT", self.unit.as_bytes());
        let mut with_pid = common.clone();
        encode_field(
            &mut with_pid,
            "OBJECT_PID",
            self.leader.to_string().as_bytes(),
        );
        let with_unit = common;
        Tags {
            stream,
            with_pid,
            with_unit,
            leader_alive,
        }
    }
}

/// The serialized fields every entry of one stream starts with.
///
/// `journalctl -u berth-web.scope` matches `OBJECT_SYSTEMD_UNIT=berth-web.scope` from a
/// sender with `_UID=0`. journald derives that field itself from `OBJECT_PID=` when the
/// sender is root (journald-native.c: `allow_object_pid()` is `ucred->uid == 0`), by reading
/// the process's cgroup — which works only while the process exists, and the relay can read
/// a line after the leader died but before the reaper has said so. So every entry names the
/// unit directly; while the leader runs, entries also name it by `OBJECT_PID=` (journald then
/// adds the trusted `OBJECT_*` fields of it, the unit among them with the same value); once
/// the leader is known to be gone, they do not, lest a reused PID lend its fields.
#[derive(Debug, Clone)]
pub struct Tags {
    stream: Stream,
    with_pid: Vec<u8>,
    with_unit: Vec<u8>,
    leader_alive: Arc<AtomicBool>,
}

impl Tags {
    fn current(&self) -> &[u8] {
        if self.leader_alive.load(Ordering::Relaxed) {
            &self.with_pid
        } else {
            &self.with_unit
        }
    }
}

/// The name of a container's log pipe in systemd's FD store.
pub fn fdstore_name(container: &str, stream: Stream) -> String {
    match stream {
        Stream::Stdout => format!("log-{container}-out"),
        Stream::Stderr => format!("log-{container}-err"),
    }
}

/// A pipe for one stream: (read end for the relay, write end for the payload), both
/// close-on-exec (the helper dups the write end onto 1 or 2, which clears it there).
pub fn log_pipe() -> Result<(OwnedFd, OwnedFd), JournalError> {
    let (rd, wr) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(JournalError::Pipe)?;
    // Best effort: the default 64 KiB pipe works, it only blocks the container sooner.
    if fcntl(&rd, FcntlArg::F_SETPIPE_SZ(PIPE_SIZE)).is_err() {
        warn!("cannot enlarge a log pipe to {PIPE_SIZE} bytes, ignoring");
    }
    Ok((rd, wr))
}

/// What a relay did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// Bytes read from the pipe.
    pub bytes: u64,
    /// Entries sent.
    pub entries: u64,
}

/// How a relay ended.
#[derive(Debug)]
pub enum RelayEnd {
    /// Every writer closed the pipe (the container exited), and everything was sent.
    Eof(RelayStats),
    /// Asked to stop: everything read was sent; the pipe, with whatever is still in it, is
    /// handed back.
    Stopped { pipe: OwnedFd, stats: RelayStats },
}

/// Where a relay sends its lines: the journal, then the container's live followers.
pub struct Sink<'a> {
    pub journal: &'a mut JournalSocket,
    pub feed: &'a Feed,
    outage: bool,
}

impl<'a> Sink<'a> {
    pub fn new(journal: &'a mut JournalSocket, feed: &'a Feed) -> Self {
        Sink {
            journal,
            feed,
            outage: false,
        }
    }

    /// One line: numbered, into the journal, then to the followers.
    async fn line(&mut self, tags: &Tags, line: &[u8], end: LineEnd) {
        let seq = self.feed.next_seq();
        send_line(self.journal, tags, line, end, seq, &mut self.outage).await;
        self.feed
            .publish(seq, tags.stream, end == LineEnd::Split, line);
    }
}

/// Send one line; on failure wait and try again (reconnecting when the peer is gone), for as
/// long as it takes — dropping the line is not an option, and the container blocks meanwhile.
async fn send_line(
    journal: &mut JournalSocket,
    tags: &Tags,
    line: &[u8],
    end: LineEnd,
    seq: u64,
    outage: &mut bool,
) {
    let mut delay = Duration::from_millis(10);
    let seq = format!("BERTH_SEQ={seq}\n");
    loop {
        let partial: &[u8] = if end == LineEnd::Split {
            b"CONTAINER_PARTIAL_MESSAGE=true\n"
        } else {
            b""
        };
        let parts = [
            IoSlice::new(tags.current()),
            IoSlice::new(seq.as_bytes()),
            IoSlice::new(b"MESSAGE="),
            IoSlice::new(line),
            IoSlice::new(b"\n"),
            IoSlice::new(partial),
        ];
        let err = match journal.send(&parts).await {
            Ok(()) => {
                if *outage {
                    warn!(
                        "the journal at {} accepts entries again",
                        journal.path().display()
                    );
                    *outage = false;
                }
                return;
            }
            Err(e) => e,
        };
        if !*outage {
            warn!("cannot send a log line to the journal: {err}, retrying");
            *outage = true;
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(1));
        if let JournalError::Send(e) = &err
            && matches!(
                e.raw_os_error().map(Errno::from_raw),
                Some(Errno::ECONNREFUSED | Errno::ENOTCONN | Errno::ENOENT)
            )
            && let Err(e) = journal.reconnect()
        {
            warn!("cannot reconnect to the journal: {e}, retrying");
        }
    }
}

/// Relay `pipe` (the read end of a container's stdout or stderr) to the journal and the
/// followers of `sink`, line by line, with `tags`, until every writer has closed it or `stop`
/// becomes true.
pub async fn relay(
    pipe: OwnedFd,
    sink: &mut Sink<'_>,
    tags: &Tags,
    mut stop: watch::Receiver<bool>,
) -> Result<RelayEnd, JournalError> {
    let flags = fcntl(&pipe, FcntlArg::F_GETFL).map_err(JournalError::Pipe)?;
    fcntl(
        &pipe,
        FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK),
    )
    .map_err(JournalError::Pipe)?;
    let afd = crate::sys::async_fd(pipe).map_err(JournalError::Read)?;
    let mut buf = LineBuffer::new(LINE_MAX, READ_CHUNK);
    let mut stats = RelayStats::default();
    let mut stopping = *stop.borrow();
    loop {
        if stopping {
            while let Some((line, end)) = buf.next_line() {
                sink.line(tags, line, end).await;
                stats.entries += 1;
            }
            // The rest of this line is still in the pipe, for the next relay.
            if let Some((line, _)) = buf.finish() {
                sink.line(tags, line, LineEnd::Split).await;
                stats.entries += 1;
            }
            return Ok(RelayEnd::Stopped {
                pipe: afd.into_inner(),
                stats,
            });
        }
        let mut guard = tokio::select! {
            g = afd.readable() => g.map_err(JournalError::Read)?,
            changed = stop.changed() => {
                // A dropped sender means nobody can stop us any more: read on to the end.
                stopping = changed.is_ok() && *stop.borrow();
                continue;
            }
        };
        let n = match guard.try_io(|fd| {
            nix::unistd::read(fd.get_ref().as_fd(), buf.spare()).map_err(std::io::Error::from)
        }) {
            Err(_would_block) => continue,
            Ok(Err(e)) if e.raw_os_error() == Some(libc::EINTR) => continue,
            // A pty master (a detached container with a terminal) reads EIO, not 0, once
            // every descriptor of its terminal side is closed.
            Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => 0,
            Ok(Err(e)) => return Err(JournalError::Read(e)),
            Ok(Ok(n)) => n,
        };
        if n == 0 {
            while let Some((line, end)) = buf.next_line() {
                sink.line(tags, line, end).await;
                stats.entries += 1;
            }
            if let Some((line, end)) = buf.finish() {
                sink.line(tags, line, end).await;
                stats.entries += 1;
            }
            return Ok(RelayEnd::Eof(stats));
        }
        buf.filled(n);
        stats.bytes += n as u64;
        while let Some((line, end)) = buf.next_line() {
            sink.line(tags, line, end).await;
            stats.entries += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::native::tests::{FakeJournal, decode};
    use super::*;
    use std::collections::BTreeMap;
    use std::io::Write;
    use std::time::Instant;

    fn source() -> Source {
        Source {
            container: "web".into(),
            identifier: "web".into(),
            unit: "berth-web.scope".into(),
            leader: 4242,
            image: Some("docker.io/library/nginx:latest".into()),
        }
    }

    fn same_pipe(a: &OwnedFd, b: &OwnedFd) -> bool {
        let (sa, sb) = (
            nix::sys::stat::fstat(a).unwrap(),
            nix::sys::stat::fstat(b).unwrap(),
        );
        (sa.st_ino, sa.st_dev) == (sb.st_ino, sb.st_dev)
    }

    fn fields(entry: &[u8]) -> BTreeMap<String, Vec<u8>> {
        decode(entry).into_iter().collect()
    }

    /// Relay `pipe` until its writers close it, with no follower and nobody to stop it.
    async fn relay_to_end(pipe: OwnedFd, j: &mut JournalSocket, tags: &Tags) -> RelayEnd {
        relay(
            pipe,
            &mut Sink::new(j, &Feed::new()),
            tags,
            watch::channel(false).1,
        )
        .await
        .unwrap()
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn each_line_becomes_an_entry_with_the_containers_fields() {
        let fake = FakeJournal::new();
        let alive = Arc::new(AtomicBool::new(true));
        let (rd, wr) = log_pipe().unwrap();
        let mut w = std::fs::File::from(wr);
        w.write_all(b"hello\n\xff\xfebinary\nlast, no newline")
            .unwrap();
        drop(w);
        let feed = Feed::new();
        let mut follower = feed.subscribe().unwrap();
        let end = rt().block_on(async {
            let mut j = JournalSocket::connect(fake.path()).unwrap();
            let tags = source().tags(Stream::Stderr, alive.clone());
            let (_tx, stop) = watch::channel(false);
            relay(rd, &mut Sink::new(&mut j, &feed), &tags, stop)
                .await
                .unwrap()
        });
        // The followers got the same lines, numbered as in the journal.
        let mut seqs = Vec::new();
        for want in [&b"hello"[..], b"\xff\xfebinary", b"last, no newline"] {
            let f = follower.next_for_test();
            assert_eq!((f.line.as_slice(), f.stream), (want, Stream::Stderr));
            seqs.push(f.seq);
        }
        let RelayEnd::Eof(stats) = end else {
            panic!("{end:?}")
        };
        assert_eq!(stats.entries, 3);
        let mut buf = Vec::new();
        let e = fields(&fake.recv(&mut buf));
        assert_eq!(e["MESSAGE"], b"hello");
        assert_eq!(e["PRIORITY"], b"3");
        assert_eq!(e["CONTAINER_NAME"], b"web");
        assert_eq!(e["SYSLOG_IDENTIFIER"], b"web");
        assert_eq!(e["OBJECT_PID"], b"4242");
        assert_eq!(e["IMAGE_NAME"], b"docker.io/library/nginx:latest");
        // Named even if the leader dies before the reaper clears `alive`.
        assert_eq!(e["OBJECT_SYSTEMD_UNIT"], b"berth-web.scope");
        assert_eq!(e["BERTH_SEQ"], seqs[0].to_string().as_bytes());
        assert!(seqs[0] < seqs[1] && seqs[1] < seqs[2]);
        assert_eq!(fields(&fake.recv(&mut buf))["MESSAGE"], b"\xff\xfebinary");
        let e = fields(&fake.recv(&mut buf));
        assert_eq!(e["MESSAGE"], b"last, no newline");
        assert!(!e.contains_key("CONTAINER_PARTIAL_MESSAGE"));
    }

    #[test]
    fn once_the_leader_is_gone_entries_name_the_unit() {
        let fake = FakeJournal::new();
        let alive = Arc::new(AtomicBool::new(false));
        let (rd, wr) = log_pipe().unwrap();
        std::fs::File::from(wr).write_all(b"bye\n").unwrap();
        rt().block_on(async {
            let mut j = JournalSocket::connect(fake.path()).unwrap();
            let tags = source().tags(Stream::Stdout, alive);
            relay_to_end(rd, &mut j, &tags).await
        });
        let e = fields(&fake.recv(&mut Vec::new()));
        assert_eq!(e["OBJECT_SYSTEMD_UNIT"], b"berth-web.scope");
        assert_eq!(e["PRIORITY"], b"6");
        assert!(!e.contains_key("OBJECT_PID"));
    }

    #[test]
    fn a_stopped_relay_sends_what_it_read_and_hands_the_pipe_back() {
        let fake = FakeJournal::new();
        let (rd, wr) = log_pipe().unwrap();
        let mut w = std::fs::File::from(wr);
        w.write_all(b"one\ntwo, unfinished").unwrap();
        let rd_probe = rd.try_clone().unwrap();
        let (pipe, stats) = rt().block_on(async {
            let mut j = JournalSocket::connect(fake.path()).unwrap();
            let tags = source().tags(Stream::Stdout, Arc::new(AtomicBool::new(true)));
            let (tx, stop) = watch::channel(false);
            let task = async {
                // Let the relay read what is there, then stop it.
                tokio::time::sleep(Duration::from_millis(50)).await;
                tx.send_replace(true);
            };
            let feed = Feed::new();
            let mut sink = Sink::new(&mut j, &feed);
            let (end, ()) = tokio::join!(relay(rd, &mut sink, &tags, stop), task);
            match end.unwrap() {
                RelayEnd::Stopped { pipe, stats } => (pipe, stats),
                other => panic!("{other:?}"),
            }
        });
        assert_eq!(stats.entries, 2);
        assert!(same_pipe(&pipe, &rd_probe));
        let mut buf = Vec::new();
        assert_eq!(fields(&fake.recv(&mut buf))["MESSAGE"], b"one");
        let e = fields(&fake.recv(&mut buf));
        assert_eq!(e["MESSAGE"], b"two, unfinished");
        assert_eq!(e["CONTAINER_PARTIAL_MESSAGE"], b"true");
        // A new relay (as after a restart) goes on with what is written next.
        w.write_all(b" the rest\n").unwrap();
        drop(w);
        rt().block_on(async {
            let mut j = JournalSocket::connect(fake.path()).unwrap();
            let tags = source().tags(Stream::Stdout, Arc::new(AtomicBool::new(true)));
            relay_to_end(pipe, &mut j, &tags).await
        });
        assert_eq!(fields(&fake.recv(&mut buf))["MESSAGE"], b" the rest");
    }

    #[test]
    fn a_line_reaches_the_journal_within_milliseconds() {
        let fake = FakeJournal::new();
        let (rd, wr) = log_pipe().unwrap();
        let path = fake.path();
        let relay_thread = std::thread::spawn(move || {
            rt().block_on(async {
                let mut j = JournalSocket::connect(path).unwrap();
                let tags = source().tags(Stream::Stdout, Arc::new(AtomicBool::new(true)));
                relay_to_end(rd, &mut j, &tags).await
            })
        });
        let mut w = std::fs::File::from(wr);
        let mut buf = Vec::new();
        let mut worst = Duration::ZERO;
        for i in 0..20 {
            std::thread::sleep(Duration::from_millis(5));
            let at = Instant::now();
            writeln!(w, "line {i}").unwrap();
            let e = fields(&fake.recv(&mut buf));
            worst = worst.max(at.elapsed());
            assert_eq!(e["MESSAGE"], format!("line {i}").as_bytes());
        }
        drop(w);
        relay_thread.join().unwrap();
        assert!(worst < Duration::from_millis(100), "{worst:?}");
        eprintln!("relay latency: worst {worst:?} of 20 lines");
    }

    #[test]
    fn a_stalled_journal_blocks_the_writer_and_loses_nothing() {
        let fake = FakeJournal::new();
        let (rd, wr) = log_pipe().unwrap();
        let lines = 100_000;
        let done = Arc::new(AtomicBool::new(false));
        let writer = {
            let done = done.clone();
            std::thread::spawn(move || {
                let mut w = std::io::BufWriter::new(std::fs::File::from(wr));
                // 10 MB: far more than the pipe (1 MiB) and the socket hold.
                for i in 0..lines {
                    writeln!(w, "{i:>99}").unwrap();
                }
                drop(w);
                done.store(true, Ordering::SeqCst);
            })
        };
        let path = fake.path();
        let relay_thread = std::thread::spawn(move || {
            rt().block_on(async {
                let mut j = JournalSocket::connect(path).unwrap();
                let tags = source().tags(Stream::Stdout, Arc::new(AtomicBool::new(true)));
                relay_to_end(rd, &mut j, &tags).await
            })
        });
        // Nobody reads the journal socket: the socket, then the pipe fill up, and the writer
        // (the container) waits.
        std::thread::sleep(Duration::from_millis(500));
        assert!(!done.load(Ordering::SeqCst), "the writer was held back");
        let mut buf = Vec::new();
        for i in 0..lines {
            let e = fields(&fake.recv(&mut buf));
            assert_eq!(e["MESSAGE"], format!("{i:>99}").as_bytes());
        }
        writer.join().unwrap();
        assert!(done.load(Ordering::SeqCst));
        match relay_thread.join().unwrap() {
            RelayEnd::Eof(stats) => assert_eq!(stats.entries, lines as u64),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_queue_of_512_is_made_without_touching_the_machine() {
        let before = std::fs::read_to_string("/proc/sys/net/unix/max_dgram_qlen").unwrap();
        let mbs = throughput(4 << 20, FakeJournal::with_queue(512));
        assert_eq!(
            std::fs::read_to_string("/proc/sys/net/unix/max_dgram_qlen").unwrap(),
            before
        );
        eprintln!("relay: {mbs:.1} MB/s (debug build, socket queue 512)");
    }

    #[test]
    fn store_names() {
        assert_eq!(fdstore_name("web", Stream::Stdout), "log-web-out");
        assert_eq!(fdstore_name("web", Stream::Stderr), "log-web-err");
    }

    /// Push `total` bytes of numbered lines through a pipe, the relay and a fake journal;
    /// count and check every line on the receiving side. Returns MB/s.
    fn throughput(total: usize, fake: FakeJournal) -> f64 {
        let (rd, wr) = log_pipe().unwrap();
        let line_len = 100;
        let lines = total / line_len;
        let writer = std::thread::spawn(move || {
            let mut w = std::io::BufWriter::with_capacity(1 << 16, std::fs::File::from(wr));
            for i in 0..lines {
                // 100 bytes with the newline.
                writeln!(w, "{i:>12} {}", "x".repeat(line_len - 14)).unwrap();
            }
        });
        let path = fake.path();
        let started = Instant::now();
        let relay_thread = std::thread::spawn(move || {
            rt().block_on(async {
                let mut j = JournalSocket::connect(path).unwrap();
                let tags = source().tags(Stream::Stdout, Arc::new(AtomicBool::new(true)));
                relay_to_end(rd, &mut j, &tags).await
            })
        });
        let mut buf = Vec::new();
        for i in 0..lines {
            let entry = fake.recv(&mut buf);
            // The message is the entry's last field: no need to decode them all.
            let at = memchr::memmem::rfind(&entry, b"MESSAGE=").unwrap();
            let msg = &entry[at + 8..entry.len() - 1];
            assert_eq!(msg.len(), line_len - 1, "line {i}");
            let n: usize = std::str::from_utf8(&msg[..12])
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            assert_eq!(n, i, "lines arrive in order, none lost");
        }
        let elapsed = started.elapsed();
        writer.join().unwrap();
        match relay_thread.join().unwrap() {
            RelayEnd::Eof(stats) => assert_eq!(stats.entries, lines as u64),
            other => panic!("{other:?}"),
        }
        (lines * line_len) as f64 / 1e6 / elapsed.as_secs_f64()
    }

    #[test]
    fn eight_megabytes_of_lines_arrive_whole_and_in_order() {
        let mbs = throughput(8 << 20, FakeJournal::new());
        eprintln!("relay: {mbs:.1} MB/s (debug build, 100-byte lines)");
    }
}
