//! `make bench-cargo` (`cargo bench --bench copy`): `cp`'s copy stream, as berthd and berthctl
//! run it (sender and receiver in two threads, a pipe between them): a 1 GiB file from the
//! host into a container root (owned by the container's root, shifted by an ID map), in MB/s.
//! Runs in a temporary directory under $TMPDIR (else /tmp): 2 GiB of space at the peak.

use std::io::Write;

use berth::copy::{IdMap, Limits, Ownership, ReceiveOptions, Root, receive, send};
use nix::fcntl::OFlag;

const SHIFT: IdMap = IdMap {
    inside: 0,
    outside: 100_000,
    count: 65_536,
};

fn main() {
    let t = tempfile::tempdir().expect("a temporary directory");
    let src = t.path().join("big");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&src).expect("create big"));
        let block: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
        for _ in 0..1024 {
            f.write_all(&block).expect("write big");
        }
        f.flush().expect("write big");
    }
    let rootdir = t.path().join("root");
    std::fs::create_dir(&rootdir).expect("the root");
    let (rd, wr) = nix::unistd::pipe2(OFlag::O_CLOEXEC).expect("a pipe");
    let started = std::time::Instant::now();
    let sender = std::thread::spawn(move || {
        let item = Root::Host
            .open_item(src.to_str().expect("a UTF-8 path"))
            .expect("open big");
        send(item, std::fs::File::from(wr), &Limits::default()).expect("send")
    });
    let root = Root::open(&rootdir).expect("open the root");
    let opts = ReceiveOptions {
        limits: Limits::default(),
        ownership: Ownership::Fixed {
            uid: 0,
            gid: 0,
            map: SHIFT,
        },
        strip_setid: false,
    };
    let got = receive(
        std::fs::File::from(rd),
        |d| root.resolve_dest("/big", d),
        &opts,
    )
    .expect("receive");
    let secs = started.elapsed().as_secs_f64();
    sender.join().expect("the sender thread");
    assert_eq!(got.bytes, 1 << 30);
    println!(
        "copy ({} build): {:.0} MB/s (1 GiB file through a pipe)",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        (1u64 << 30) as f64 / 1e6 / secs
    );
}
