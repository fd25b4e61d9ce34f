//! `make bench-cargo` (`cargo bench --bench relay`; issue 9): 100 MB of numbered 100-byte lines
//! through a pipe, berth's journal relay and a fake journald (a datagram socket this process
//! reads), every line counted and checked in order on the receiving side; MB/s with the
//! socket queueing 10 datagrams (the kernel's default) and 512 (systemd's sysctl.d on a
//! systemd host). The queue length is a per-network-namespace sysctl read when the socket is
//! made: that socket is made in a thread in a network namespace of its own (root needed),
//! nothing of the machine changes. tests/bench/logs.sh measures the same through the real
//! journald and `berthctl logs`.

use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use berth::journal::{Feed, JournalSocket, RelayEnd, Sink, Source, Stream, log_pipe, relay};

const LINE: usize = 100;

/// A fake journald: a datagram socket bound in a temporary directory.
struct FakeJournal {
    dir: tempfile::TempDir,
    sock: UnixDatagram,
}

impl FakeJournal {
    fn with_queue(qlen: usize) -> FakeJournal {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("socket");
        let sock = std::thread::spawn(move || {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                .expect("a network namespace (root needed)");
            std::fs::write("/proc/sys/net/unix/max_dgram_qlen", qlen.to_string())
                .expect("set its max_dgram_qlen");
            UnixDatagram::bind(&path).expect("bind the socket")
        })
        .join()
        .expect("the socket thread");
        FakeJournal { dir, sock }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("socket")
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

/// `total` bytes of numbered lines through the relay into `fake`: MB/s.
fn throughput(total: usize, fake: FakeJournal) -> f64 {
    let (rd, wr) = log_pipe().expect("a log pipe");
    let lines = total / LINE;
    let writer = std::thread::spawn(move || {
        let mut w = std::io::BufWriter::with_capacity(1 << 16, std::fs::File::from(wr));
        for i in 0..lines {
            // 100 bytes with the newline.
            writeln!(w, "{i:>12} {}", "x".repeat(LINE - 14)).expect("write a line");
        }
    });
    let path = fake.path();
    let started = Instant::now();
    let relay_thread = std::thread::spawn(move || {
        rt().block_on(async {
            let mut j = JournalSocket::connect(path).expect("connect to the fake journal");
            let source = Source {
                container: "web".into(),
                identifier: "web".into(),
                unit: "berth-web.scope".into(),
                leader: 4242,
                image: None,
            };
            let tags = source.tags(Stream::Stdout, Arc::new(AtomicBool::new(true)));
            let (_tx, stop) = tokio::sync::watch::channel(false);
            let feed = Feed::new();
            relay(rd, &mut Sink::new(&mut j, &feed), &tags, stop)
                .await
                .expect("relay")
        })
    });
    let mut buf = vec![0u8; 1 << 16];
    for i in 0..lines {
        let n = fake.sock.recv(&mut buf).expect("an entry");
        let entry = &buf[..n];
        // The message is the entry's last field: no need to decode them all.
        let at = memchr::memmem::rfind(entry, b"MESSAGE=").expect("a MESSAGE= field");
        let msg = &entry[at + 8..n - 1];
        assert_eq!(msg.len(), LINE - 1, "line {i}");
        let got: usize = std::str::from_utf8(&msg[..12])
            .expect("a number")
            .trim()
            .parse()
            .expect("a number");
        assert_eq!(got, i, "lines arrive in order, none lost");
    }
    let elapsed = started.elapsed();
    writer.join().expect("the writer thread");
    match relay_thread.join().expect("the relay thread") {
        RelayEnd::Eof(stats) => assert_eq!(stats.entries, lines as u64),
        other => panic!("the relay ended with {other:?}"),
    }
    (lines * LINE) as f64 / 1e6 / elapsed.as_secs_f64()
}

fn main() {
    let build = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    for (q, what) in [
        (10, "socket queue 10, the kernel's default"),
        (512, "socket queue 512 as on systemd hosts"),
    ] {
        let mbs = throughput(100_000_000, FakeJournal::with_queue(q));
        println!("relay ({build} build): {mbs:.1} MB/s (100 MB of 100-byte lines, {what})");
    }
}
