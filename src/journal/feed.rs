//! Live followers of a container's output: `berthctl logs -f` without the journal's delay.
//!
//! A reader of the journal learns of new entries from inotify, and journald coalesces those
//! notifications (it posts a change at most every 250 ms: `POST_CHANGE_TIMER_INTERVAL_USEC`
//! in journald), so `journalctl -f` shows a line 250–300 ms after it was written. berthd
//! relays every line itself, so it hands each one, right after the journal accepted it, to
//! whoever follows that container too: a [`Feed`] per container, and per follower a stream
//! socket berthd writes [`Frame`]s to.
//!
//! **Nothing lost, nothing twice.** Every line has a sequence number ([`Feed::next_seq`]:
//! microseconds since the epoch, made strictly increasing per container, so a restarted
//! berthd goes on above the last one) that the journal entry carries too (`BERTH_SEQ=`). A
//! follower subscribes first, then reads the journal's history, then the feed, skipping what
//! the history showed (sequence ≤ the last one shown). Lines the journal had not stored yet
//! when the history was read come from the feed's short memory of the last lines
//! ([`RING_FRAMES`]), which a subscription replays first.
//!
//! **A slow follower never slows the container.** Frames wait for a follower in memory up to
//! [`MAX_QUEUED`] bytes; past that it gets a [`FrameKind::Lagged`] frame and is let go, and
//! reads the journal again from its last line (berthctl does that on its own).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use super::Stream;
use super::split::LINE_MAX;

/// Bytes of a frame before its line.
pub const FRAME_HEADER: usize = 16;
/// How many of the newest frames a feed keeps to replay to a new follower.
pub const RING_FRAMES: usize = 512;
/// … and at most this many bytes of them.
pub const RING_BYTES: usize = 512 << 10;
/// Bytes that may wait for one follower before it is let go as lagging.
pub const MAX_QUEUED: usize = 8 << 20;
/// Followers of one container at once.
pub const MAX_FOLLOWERS: usize = 32;

/// What a frame says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// A line (or a piece of an overlong one) of the container's output.
    Line = 0,
    /// The follower fell behind and is let go: read the journal from the last line seen.
    Lagged = 1,
    /// The container is gone (removed or renamed): nothing more will come.
    Gone = 2,
}

/// One message on a follower's socket: 16 bytes of header — kind, stream, flags (1: the next
/// frame of this stream continues the line), a zero byte, the line's length (u32, little
/// endian), the sequence number (u64, little endian) — then the line, without its newline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: FrameKind,
    pub seq: u64,
    pub stream: Stream,
    pub partial: bool,
    pub line: Vec<u8>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FeedError {
    #[error("a log frame is damaged: {0}")]
    BadFrame(String),
    #[error("{0} followers of this container's output already (at most {MAX_FOLLOWERS})")]
    TooMany(usize),
}

impl Frame {
    pub fn line(seq: u64, stream: Stream, partial: bool, line: &[u8]) -> Frame {
        Frame {
            kind: FrameKind::Line,
            seq,
            stream,
            partial,
            line: line.to_vec(),
        }
    }

    fn mark(kind: FrameKind, seq: u64) -> Frame {
        Frame {
            kind,
            seq,
            stream: Stream::Stdout,
            partial: false,
            line: Vec::new(),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        encode(self.kind, self.seq, self.stream, self.partial, &self.line)
    }

    /// The first frame in `buf`, and its length; `None` while `buf` holds only part of it.
    pub fn decode(buf: &[u8]) -> Result<Option<(Frame, usize)>, FeedError> {
        if buf.len() < FRAME_HEADER {
            return Ok(None);
        }
        let kind = match buf[0] {
            0 => FrameKind::Line,
            1 => FrameKind::Lagged,
            2 => FrameKind::Gone,
            k => return Err(FeedError::BadFrame(format!("kind {k}"))),
        };
        let stream = match buf[1] {
            0 => Stream::Stdout,
            1 => Stream::Stderr,
            s => return Err(FeedError::BadFrame(format!("stream {s}"))),
        };
        if buf[2] > 1 || buf[3] != 0 {
            return Err(FeedError::BadFrame(format!("flags {} {}", buf[2], buf[3])));
        }
        let len = u32::from_le_bytes(buf[4..8].try_into().expect("4 bytes")) as usize;
        if len > LINE_MAX {
            return Err(FeedError::BadFrame(format!("a line of {len} bytes")));
        }
        let seq = u64::from_le_bytes(buf[8..16].try_into().expect("8 bytes"));
        let end = FRAME_HEADER + len;
        if buf.len() < end {
            return Ok(None);
        }
        Ok(Some((
            Frame {
                kind,
                seq,
                stream,
                partial: buf[2] == 1,
                line: buf[FRAME_HEADER..end].to_vec(),
            },
            end,
        )))
    }
}

fn encode(kind: FrameKind, seq: u64, stream: Stream, partial: bool, line: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(FRAME_HEADER + line.len());
    out.push(kind as u8);
    out.push(stream as u8);
    out.push(u8::from(partial));
    out.push(0);
    out.extend_from_slice(&(line.len() as u32).to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(line);
    out
}

/// An encoded frame, shared by the ring and every follower's queue.
#[derive(Debug)]
struct Encoded {
    seq: u64,
    bytes: Vec<u8>,
}

struct Follower {
    tx: mpsc::UnboundedSender<Arc<Encoded>>,
    queued: Arc<AtomicUsize>,
}

impl Follower {
    /// Queue a frame; false when the follower is gone or has fallen too far behind (then
    /// it gets a last `Lagged` frame, and is dropped by the caller).
    fn offer(&self, f: &Arc<Encoded>) -> bool {
        if self.tx.is_closed() {
            return false;
        }
        let n = f.bytes.len();
        if self.queued.load(Ordering::Relaxed) + n > MAX_QUEUED {
            let lagged = Arc::new(Encoded {
                seq: f.seq,
                bytes: Frame::mark(FrameKind::Lagged, f.seq).encode(),
            });
            self.queued.fetch_add(lagged.bytes.len(), Ordering::Relaxed);
            // Closed meanwhile: nothing to tell.
            drop(self.tx.send(lagged));
            return false;
        }
        self.queued.fetch_add(n, Ordering::Relaxed);
        self.tx.send(f.clone()).is_ok()
    }
}

#[derive(Default)]
struct Inner {
    ring: VecDeque<Arc<Encoded>>,
    ring_bytes: usize,
    followers: Vec<Follower>,
}

/// One container's live output.
#[derive(Default)]
pub struct Feed {
    last_seq: AtomicU64,
    inner: Mutex<Inner>,
}

/// What a new follower gets: its queue (the replayed frames first), and the sequence number
/// of the newest line relayed before it subscribed (0: none yet).
pub struct Subscription {
    rx: mpsc::UnboundedReceiver<Arc<Encoded>>,
    queued: Arc<AtomicUsize>,
    pub newest: u64,
}

fn now_usec() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

impl Feed {
    pub fn new() -> Feed {
        Feed::default()
    }

    /// The next line's sequence number: now in microseconds since the epoch, or one more than
    /// the last one when that is not earlier (two lines in one microsecond, or a clock set
    /// back).
    pub fn next_seq(&self) -> u64 {
        self.seq_at(now_usec())
    }

    fn seq_at(&self, now: u64) -> u64 {
        let mut last = self.last_seq.load(Ordering::Relaxed);
        loop {
            let next = now.max(last + 1);
            match self.last_seq.compare_exchange_weak(
                last,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return next,
                Err(seen) => last = seen,
            }
        }
    }

    /// A line the journal has accepted: keep it for new followers and hand it to the current
    /// ones.
    pub fn publish(&self, seq: u64, stream: Stream, partial: bool, line: &[u8]) {
        let f = Arc::new(Encoded {
            seq,
            bytes: encode(FrameKind::Line, seq, stream, partial, line),
        });
        let mut inner = self.inner.lock().unwrap();
        inner.ring_bytes += f.bytes.len();
        inner.ring.push_back(f.clone());
        while inner.ring.len() > RING_FRAMES || inner.ring_bytes > RING_BYTES {
            let old = inner.ring.pop_front().expect("not empty");
            inner.ring_bytes -= old.bytes.len();
        }
        inner.followers.retain(|w| w.offer(&f));
    }

    /// Follow from now on, with the kept frames first.
    pub fn subscribe(&self) -> Result<Subscription, FeedError> {
        let mut inner = self.inner.lock().unwrap();
        inner.followers.retain(|w| !w.tx.is_closed());
        if inner.followers.len() >= MAX_FOLLOWERS {
            return Err(FeedError::TooMany(inner.followers.len()));
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let w = Follower {
            tx,
            queued: Arc::new(AtomicUsize::new(0)),
        };
        for f in &inner.ring {
            w.offer(f);
        }
        let sub = Subscription {
            rx,
            queued: w.queued.clone(),
            newest: inner.ring.back().map_or(0, |f| f.seq),
        };
        inner.followers.push(w);
        Ok(sub)
    }

    /// How many follow now.
    pub fn followers(&self) -> usize {
        let mut inner = self.inner.lock().unwrap();
        inner.followers.retain(|w| !w.tx.is_closed());
        inner.followers.len()
    }

    /// The container is gone: every follower gets a `Gone` frame after what it has queued.
    pub fn close(&self) {
        let mut inner = self.inner.lock().unwrap();
        let gone = Arc::new(Encoded {
            seq: 0,
            bytes: Frame::mark(FrameKind::Gone, 0).encode(),
        });
        for w in inner.followers.drain(..) {
            // A follower that left needs no farewell.
            drop(w.tx.send(gone.clone()));
        }
    }
}

/// Write a follower's frames to its socket until it leaves, lags, or the feed closes.
pub async fn serve(mut sub: Subscription, mut sock: tokio::net::UnixStream) {
    let mut probe = [0u8; 64];
    loop {
        tokio::select! {
            f = sub.rx.recv() => {
                let Some(f) = f else { return };
                if sock.write_all(&f.bytes).await.is_err() {
                    return;
                }
                sub.queued.fetch_sub(f.bytes.len(), Ordering::Relaxed);
                let kind = f.bytes[0];
                if kind != FrameKind::Line as u8 {
                    return;
                }
            }
            // The follower never writes: readable means it closed its end.
            r = sock.readable() => {
                if r.is_err() {
                    return;
                }
                match sock.try_read(&mut probe) {
                    Ok(_) => return,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => return,
                }
            }
        }
    }
}

/// Reads frames from a follower's socket (berthctl's side, blocking).
pub struct FrameReader<R> {
    r: R,
    buf: Vec<u8>,
    start: usize,
}

impl<R: std::io::Read> FrameReader<R> {
    pub fn new(r: R) -> Self {
        FrameReader {
            r,
            buf: Vec::with_capacity(64 * 1024),
            start: 0,
        }
    }

    /// The next frame; `None` when the socket ended between frames (berthd went away).
    pub fn next_frame(&mut self) -> std::io::Result<Option<Frame>> {
        loop {
            match Frame::decode(&self.buf[self.start..]) {
                Ok(Some((f, n))) => {
                    self.start += n;
                    return Ok(Some(f));
                }
                Ok(None) => {}
                Err(e) => return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
            }
            self.buf.drain(..self.start);
            self.start = 0;
            let have = self.buf.len();
            self.buf.resize(have + 64 * 1024, 0);
            let n = loop {
                match self.r.read(&mut self.buf[have..]) {
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    other => break other,
                }
            };
            let n = match n {
                Ok(n) => n,
                Err(e) => {
                    self.buf.truncate(have);
                    return Err(e);
                }
            };
            self.buf.truncate(have + n);
            if n == 0 {
                return Ok(None);
            }
        }
    }
}

#[cfg(test)]
impl Subscription {
    /// The next queued frame, decoded (unit tests of the relay).
    pub(crate) fn next_for_test(&mut self) -> Frame {
        let f = self.rx.try_recv().expect("a queued frame");
        self.queued.fetch_sub(f.bytes.len(), Ordering::Relaxed);
        Frame::decode(&f.bytes).unwrap().unwrap().0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(sub: &mut Subscription) -> Vec<Frame> {
        let mut out = Vec::new();
        while let Ok(f) = sub.rx.try_recv() {
            sub.queued.fetch_sub(f.bytes.len(), Ordering::Relaxed);
            out.push(Frame::decode(&f.bytes).unwrap().unwrap().0);
        }
        out
    }

    #[test]
    fn frames_round_trip_and_damage_is_refused() {
        let f = Frame::line(1_700_000_000_123_456, Stream::Stderr, true, b"hello\xff");
        let mut bytes = f.encode();
        assert_eq!(bytes.len(), FRAME_HEADER + 6);
        assert_eq!(Frame::decode(&bytes[..10]).unwrap(), None);
        assert_eq!(Frame::decode(&bytes[..20]).unwrap(), None);
        assert_eq!(Frame::decode(&bytes).unwrap(), Some((f.clone(), 22)));
        bytes.extend_from_slice(&Frame::mark(FrameKind::Gone, 0).encode());
        let mut r = FrameReader::new(&bytes[..]);
        assert_eq!(r.next_frame().unwrap(), Some(f));
        assert_eq!(r.next_frame().unwrap().unwrap().kind, FrameKind::Gone);
        assert_eq!(r.next_frame().unwrap(), None);
        for (i, v) in [(0, 9u8), (1, 2), (2, 2), (3, 1)] {
            let mut b = Frame::line(1, Stream::Stdout, false, b"x").encode();
            b[i] = v;
            assert!(Frame::decode(&b).is_err(), "byte {i} = {v}");
        }
        let mut b = Frame::line(1, Stream::Stdout, false, b"x").encode();
        b[4..8].copy_from_slice(&((LINE_MAX + 1) as u32).to_le_bytes());
        assert!(Frame::decode(&b).is_err());
    }

    #[test]
    fn sequence_numbers_are_the_time_and_always_increase() {
        let feed = Feed::new();
        assert_eq!(feed.seq_at(1000), 1000);
        assert_eq!(feed.seq_at(1000), 1001, "same microsecond");
        assert_eq!(feed.seq_at(900), 1002, "clock set back");
        assert_eq!(feed.seq_at(5000), 5000);
        let a = feed.next_seq();
        assert!(a > 1_600_000_000_000_000 && feed.next_seq() > a);
    }

    #[test]
    fn a_new_follower_gets_the_kept_lines_then_the_new_ones() {
        let feed = Feed::new();
        for i in 1..=RING_FRAMES as u64 + 10 {
            feed.publish(i, Stream::Stdout, false, format!("l{i}").as_bytes());
        }
        let mut sub = feed.subscribe().unwrap();
        assert_eq!(sub.newest, RING_FRAMES as u64 + 10);
        feed.publish(10_000, Stream::Stderr, false, b"new");
        let got = drain(&mut sub);
        assert_eq!(got.len(), RING_FRAMES + 1);
        assert_eq!(got[0].seq, 11, "the oldest were let go");
        assert_eq!(got.last().unwrap().line, b"new");
        assert_eq!(got.last().unwrap().stream, Stream::Stderr);
        // The kept bytes are bounded too.
        let big = vec![b'x'; LINE_MAX];
        for i in 0..40 {
            feed.publish(20_000 + i, Stream::Stdout, false, &big);
        }
        let inner = feed.inner.lock().unwrap();
        assert!(inner.ring_bytes <= RING_BYTES && inner.ring.len() < 40);
    }

    #[test]
    fn a_follower_that_falls_behind_is_told_and_let_go_and_others_go_on() {
        let feed = Feed::new();
        let mut slow = feed.subscribe().unwrap();
        let mut quick = feed.subscribe().unwrap();
        let line = vec![b'y'; LINE_MAX];
        let n = MAX_QUEUED / (LINE_MAX + FRAME_HEADER) + 5;
        for i in 0..n as u64 {
            feed.publish(i + 1, Stream::Stdout, false, &line);
            assert_eq!(drain(&mut quick).len(), 1);
        }
        let got = drain(&mut slow);
        assert_eq!(got.last().unwrap().kind, FrameKind::Lagged);
        assert!(got.len() < n);
        assert_eq!(feed.followers(), 1);
        feed.publish(999_999, Stream::Stdout, false, b"after");
        assert!(drain(&mut slow).is_empty());
        assert_eq!(drain(&mut quick)[0].line, b"after");
    }

    #[test]
    fn followers_are_bounded_and_leaving_frees_a_place() {
        let feed = Feed::new();
        let mut subs: Vec<_> = (0..MAX_FOLLOWERS)
            .map(|_| feed.subscribe().unwrap())
            .collect();
        assert_eq!(
            feed.subscribe().err(),
            Some(FeedError::TooMany(MAX_FOLLOWERS))
        );
        drop(subs.pop());
        assert!(feed.subscribe().is_ok());
    }

    #[test]
    fn closing_tells_every_follower_after_its_lines() {
        let feed = Feed::new();
        let mut sub = feed.subscribe().unwrap();
        feed.publish(1, Stream::Stdout, false, b"last");
        feed.close();
        let got = drain(&mut sub);
        assert_eq!(got.len(), 2);
        assert_eq!(got[1].kind, FrameKind::Gone);
        assert_eq!(feed.followers(), 0);
    }

    #[test]
    fn serve_writes_frames_and_ends_when_the_follower_leaves() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let feed = Feed::new();
            let (ours, theirs) = tokio::net::UnixStream::pair().unwrap();
            let task = tokio::spawn(serve(feed.subscribe().unwrap(), ours));
            feed.publish(7, Stream::Stdout, false, b"one");
            let theirs = theirs.into_std().unwrap();
            theirs.set_nonblocking(false).unwrap();
            let mut r = FrameReader::new(theirs);
            let f = tokio::task::spawn_blocking(move || (r.next_frame().unwrap(), r))
                .await
                .unwrap();
            assert_eq!(f.0.unwrap().line, b"one");
            drop(f.1);
            tokio::time::timeout(std::time::Duration::from_secs(5), task)
                .await
                .expect("serve ends when the follower closes")
                .unwrap();
            assert_eq!(feed.followers(), 0);
        });
    }
}
