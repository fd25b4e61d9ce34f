//! `make bench-cargo` (`cargo bench --bench mcs`): the cost of an MCS pair allocation with 1
//! and with 1000 pairs held, median of 21 rounds, split into the in-memory search, the
//! serialization of the state, and the whole durable operation (allocate + save, free + save:
//! temporary file, fsync, rename, fsync of the directory, in /var/tmp). Prints; asserts nothing
//! about time.

use std::time::{Duration, Instant};

use berth::selinux::{McsAllocator, STATE_FILE};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let dir = tempfile::tempdir_in("/var/tmp").expect("a directory in /var/tmp");
    let mut a = McsAllocator::open(dir.path()).expect("open the allocator");
    a.allocate("warm-up").expect("allocate");
    println!(
        "mcs allocator ({} build), median of 21 rounds:",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );
    for held in [1usize, 1000] {
        while a.len() < held {
            a.allocate(&format!("c{}", a.len())).expect("allocate");
        }
        let (mut pick, mut ser, mut alloc, mut free) = (vec![], vec![], vec![], vec![]);
        for _ in 0..21 {
            // 1000 searches per sample: one is below this clock's resolution.
            let t = Instant::now();
            for _ in 0..1000 {
                std::hint::black_box(a.probe_pick().expect("a free pair"));
            }
            pick.push(t.elapsed() / 1000);
            let t = Instant::now();
            std::hint::black_box(a.probe_serialize());
            ser.push(t.elapsed());
            let t = Instant::now();
            a.allocate("probe").expect("allocate");
            alloc.push(t.elapsed());
            let t = Instant::now();
            a.free("probe").expect("free");
            free.push(t.elapsed());
        }
        let size = std::fs::metadata(dir.path().join(STATE_FILE))
            .expect("the state file")
            .len();
        println!(
            "mcs with {held} held: pick {:?}, serialize {:?}, allocate+save {:?}, free+save {:?}; file {size} bytes",
            median(pick),
            median(ser),
            median(alloc),
            median(free)
        );
    }
}
