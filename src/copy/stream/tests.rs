use super::*;
use crate::copy::{IdMap, Root};
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

const SHIFT: IdMap = IdMap {
    inside: 0,
    outside: 100_000,
    count: 65_536,
};

fn into_container() -> ReceiveOptions {
    ReceiveOptions {
        limits: Limits::default(),
        ownership: Ownership::Fixed {
            uid: 0,
            gid: 0,
            map: SHIFT,
        },
        strip_setid: false,
    }
}

fn out_of_container() -> ReceiveOptions {
    ReceiveOptions {
        limits: Limits::default(),
        ownership: Ownership::Caller,
        strip_setid: true,
    }
}

fn encode(root: &Root, path: &str, limits: &Limits) -> Result<(Vec<u8>, CopyStats), CopyError> {
    let mut out = Vec::new();
    let stats = send(root.open_item(path)?, &mut out, limits)?;
    Ok((out, stats))
}

/// Copy host `src` to `dst` inside the container `root`.
fn copy_in(src: &Path, root: &Root, dst: &str) -> Result<CopyStats, CopyError> {
    let (bytes, _) = encode(&Root::Host, src.to_str().unwrap(), &Limits::default())?;
    receive(
        &bytes[..],
        |is_dir| root.resolve_dest(dst, is_dir),
        &into_container(),
    )
}

fn tree(base: &Path) -> PathBuf {
    let src = base.join("src");
    std::fs::create_dir_all(src.join("sub/deeper")).unwrap();
    std::fs::write(src.join("hello.txt"), "hello\n").unwrap();
    std::fs::write(src.join("sub/deeper/data.bin"), vec![7u8; 300_000]).unwrap();
    std::fs::set_permissions(src.join("hello.txt"), PermissionsExt::from_mode(0o4755)).unwrap();
    std::fs::set_permissions(src.join("sub"), PermissionsExt::from_mode(0o750)).unwrap();
    symlink("../hello.txt", src.join("sub/link")).unwrap();
    symlink("/etc/passwd", src.join("abs-link")).unwrap();
    nix::unistd::mkfifo(&src.join("fifo"), Mode::from_bits_truncate(0o644)).unwrap();
    src
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

#[test]
fn a_tree_copied_in_arrives_whole_owned_by_the_containers_root() {
    let t = tempfile::tempdir().unwrap();
    let src = tree(t.path());
    let rootdir = t.path().join("root");
    std::fs::create_dir_all(rootdir.join("srv")).unwrap();
    let root = Root::open(&rootdir).unwrap();
    let stats = copy_in(&src, &root, "/srv").unwrap();
    assert_eq!(stats.skipped, 1, "the FIFO");
    assert_eq!(stats.entries, 7);
    assert_eq!(stats.bytes, 6 + 300_000);
    let got = rootdir.join("srv/src");
    assert_eq!(std::fs::read(got.join("hello.txt")).unwrap(), b"hello\n");
    assert_eq!(
        std::fs::read(got.join("sub/deeper/data.bin")).unwrap(),
        vec![7u8; 300_000]
    );
    assert_eq!(
        std::fs::read_link(got.join("sub/link")).unwrap(),
        Path::new("../hello.txt")
    );
    assert_eq!(
        std::fs::read_link(got.join("abs-link")).unwrap(),
        Path::new("/etc/passwd")
    );
    assert!(!got.join("fifo").exists());
    // Modes as recorded (setuid kept inside the container), owners the container's root.
    assert_eq!(mode(&got.join("hello.txt")), 0o4755);
    assert_eq!(mode(&got.join("sub")), 0o750);
    for p in [
        "",
        "hello.txt",
        "sub",
        "sub/deeper/data.bin",
        "sub/link",
        "abs-link",
    ] {
        let m = std::fs::symlink_metadata(got.join(p)).unwrap();
        assert_eq!((m.uid(), m.gid()), (100_000, 100_000), "{p}");
    }
    // Times as recorded.
    let (a, b) = (
        std::fs::metadata(src.join("hello.txt")).unwrap(),
        std::fs::metadata(got.join("hello.txt")).unwrap(),
    );
    assert_eq!((a.mtime(), a.mtime_nsec()), (b.mtime(), b.mtime_nsec()));
    // No temporary names are left behind.
    let leftovers: Vec<_> = std::fs::read_dir(&got)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(".berth-cp-"))
        .collect();
    assert!(leftovers.is_empty());
}

#[test]
fn a_file_copied_over_a_file_replaces_it_and_as_a_new_name_takes_it() {
    let t = tempfile::tempdir().unwrap();
    let rootdir = t.path().join("root");
    std::fs::create_dir_all(rootdir.join("etc")).unwrap();
    std::fs::write(rootdir.join("etc/conf"), "old").unwrap();
    // A hard link elsewhere must keep the old content: the name is replaced, the inode not
    // written.
    std::fs::hard_link(rootdir.join("etc/conf"), rootdir.join("keep")).unwrap();
    std::fs::write(t.path().join("new"), "new").unwrap();
    let root = Root::open(&rootdir).unwrap();
    copy_in(&t.path().join("new"), &root, "/etc/conf").unwrap();
    assert_eq!(std::fs::read(rootdir.join("etc/conf")).unwrap(), b"new");
    assert_eq!(std::fs::read(rootdir.join("keep")).unwrap(), b"old");
    copy_in(&t.path().join("new"), &root, "/etc/renamed").unwrap();
    assert_eq!(std::fs::read(rootdir.join("etc/renamed")).unwrap(), b"new");
    // A directory over a file, or a file over a directory: refused, nothing changed.
    std::fs::create_dir(t.path().join("adir")).unwrap();
    assert!(matches!(
        copy_in(&t.path().join("adir"), &root, "/etc/conf"),
        Err(CopyError::Refused { .. })
    ));
    std::fs::create_dir(rootdir.join("etc/adir")).unwrap();
    std::fs::write(t.path().join("adir2"), "x").unwrap();
    let (bytes, _) = encode(
        &Root::Host,
        t.path().join("adir2").to_str().unwrap(),
        &Limits::default(),
    )
    .unwrap();
    let err = receive(
        &bytes[..],
        |_| {
            Ok(Dest::As {
                parent: nix::fcntl::open(&rootdir.join("etc"), OFlag::O_RDONLY, Mode::empty())
                    .unwrap(),
                name: b"adir".to_vec(),
            })
        },
        &into_container(),
    )
    .unwrap_err();
    assert!(matches!(err, CopyError::Refused { .. }), "{err}");
    assert!(rootdir.join("etc/adir").is_dir());
}

#[test]
fn copied_out_files_belong_to_the_caller_without_setid_bits() {
    let t = tempfile::tempdir().unwrap();
    let rootdir = t.path().join("root");
    std::fs::create_dir_all(rootdir.join("usr/bin")).unwrap();
    std::fs::write(rootdir.join("usr/bin/su"), "#!").unwrap();
    std::fs::set_permissions(
        rootdir.join("usr/bin/su"),
        PermissionsExt::from_mode(0o6755),
    )
    .unwrap();
    nix::unistd::chown(
        &rootdir.join("usr/bin/su"),
        Some(Uid::from_raw(100_000)),
        Some(Gid::from_raw(100_000)),
    )
    .unwrap();
    let root = Root::open(&rootdir).unwrap();
    let (bytes, _) = encode(&root, "/usr/bin", &Limits::default()).unwrap();
    let out = t.path().join("out");
    std::fs::create_dir(&out).unwrap();
    receive(
        &bytes[..],
        |d| Root::Host.resolve_dest(out.to_str().unwrap(), d),
        &out_of_container(),
    )
    .unwrap();
    let m = std::fs::metadata(out.join("bin/su")).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o755);
    assert_eq!(
        (m.uid(), m.gid()),
        (
            nix::unistd::geteuid().as_raw(),
            nix::unistd::getegid().as_raw()
        )
    );
}

#[test]
fn preserved_owners_are_shifted_and_unmapped_ones_refused() {
    let t = tempfile::tempdir().unwrap();
    std::fs::write(t.path().join("f"), "x").unwrap();
    nix::unistd::chown(
        &t.path().join("f"),
        Some(Uid::from_raw(33)),
        Some(Gid::from_raw(34)),
    )
    .unwrap();
    let rootdir = t.path().join("root");
    std::fs::create_dir(&rootdir).unwrap();
    let root = Root::open(&rootdir).unwrap();
    let (bytes, _) = encode(
        &Root::Host,
        t.path().join("f").to_str().unwrap(),
        &Limits::default(),
    )
    .unwrap();
    let opts = ReceiveOptions {
        ownership: Ownership::Preserve(SHIFT),
        ..into_container()
    };
    receive(&bytes[..], |d| root.resolve_dest("/f", d), &opts).unwrap();
    let m = std::fs::metadata(rootdir.join("f")).unwrap();
    assert_eq!((m.uid(), m.gid()), (100_033, 100_034));
    nix::unistd::chown(&t.path().join("f"), Some(Uid::from_raw(70_000)), None).unwrap();
    let (bytes, _) = encode(
        &Root::Host,
        t.path().join("f").to_str().unwrap(),
        &Limits::default(),
    )
    .unwrap();
    assert!(matches!(
        receive(&bytes[..], |d| root.resolve_dest("/g", d), &opts),
        Err(CopyError::Refused { .. })
    ));
    assert!(!rootdir.join("g").exists());
}

#[test]
fn fifos_devices_and_kernel_files_are_refused_at_the_top() {
    let t = tempfile::tempdir().unwrap();
    let fifo = t.path().join("fifo");
    nix::unistd::mkfifo(&fifo, Mode::from_bits_truncate(0o644)).unwrap();
    for (path, what) in [
        (fifo.to_str().unwrap(), "FIFO"),
        ("/dev/zero", "device"),
        ("/dev/null", "device"),
        ("/proc/self/status", "kernel"),
        ("/sys/kernel", "kernel"),
    ] {
        let started = std::time::Instant::now();
        let err = encode(&Root::Host, path, &Limits::default()).unwrap_err();
        assert!(
            matches!(&err, CopyError::Refused { reason, .. } if reason.contains(what)),
            "{path}: {err}"
        );
        assert!(started.elapsed().as_secs() < 5, "{path} blocked");
    }
    // And nothing is written into a kernel file system.
    std::fs::write(t.path().join("f"), "x").unwrap();
    let (bytes, _) = encode(
        &Root::Host,
        t.path().join("f").to_str().unwrap(),
        &Limits::default(),
    )
    .unwrap();
    let err = receive(
        &bytes[..],
        |d| Root::Host.resolve_dest("/proc/", d),
        &out_of_container(),
    )
    .unwrap_err();
    assert!(matches!(err, CopyError::Refused { .. }), "{err}");
}

#[test]
fn a_sparse_100_gib_file_travels_as_its_data_and_keeps_its_holes() {
    let t = tempfile::tempdir().unwrap();
    let big = t.path().join("sparse");
    {
        let f = std::fs::File::create(&big).unwrap();
        f.set_len(100 << 30).unwrap();
        nix::sys::uio::pwrite(&f, &[1u8; 1 << 20], 50 << 30).unwrap();
    }
    let rootdir = t.path().join("root");
    std::fs::create_dir(&rootdir).unwrap();
    let root = Root::open(&rootdir).unwrap();
    let (bytes, sent) = encode(&Root::Host, big.to_str().unwrap(), &Limits::default()).unwrap();
    assert!(bytes.len() < 2 << 20, "stream of {} bytes", bytes.len());
    // File systems allocate in blocks around the data; a few of them at most.
    assert!(
        sent.bytes >= 1 << 20 && sent.bytes < 8 << 20,
        "{}",
        sent.bytes
    );
    receive(
        &bytes[..],
        |d| root.resolve_dest("/sparse", d),
        &into_container(),
    )
    .unwrap();
    let m = std::fs::metadata(rootdir.join("sparse")).unwrap();
    assert_eq!(m.len(), 100 << 30);
    assert!(m.blocks() * 512 < 16 << 20, "{} blocks", m.blocks());
    let mut b = [0u8; 4];
    let f = std::fs::File::open(rootdir.join("sparse")).unwrap();
    nix::sys::uio::pread(&f, &mut b, 50 << 30).unwrap();
    assert_eq!(b, [1; 4]);
    nix::sys::uio::pread(&f, &mut b, 10 << 30).unwrap();
    assert_eq!(b, [0; 4]);
    // The apparent size is bounded too.
    let small = Limits {
        max_file_size: 1 << 30,
        ..Limits::default()
    };
    assert!(matches!(
        encode(&Root::Host, big.to_str().unwrap(), &small),
        Err(CopyError::LimitExceeded(_))
    ));
    let opts = ReceiveOptions {
        limits: small,
        ..into_container()
    };
    assert!(matches!(
        receive(&bytes[..], |d| root.resolve_dest("/sparse2", d), &opts),
        Err(CopyError::LimitExceeded(_))
    ));
    assert!(!rootdir.join("sparse2").exists());
}

#[test]
fn limits_hold_on_both_sides() {
    let t = tempfile::tempdir().unwrap();
    let src = tree(t.path());
    let few = Limits {
        max_entries: 3,
        ..Limits::default()
    };
    assert!(matches!(
        encode(&Root::Host, src.to_str().unwrap(), &few),
        Err(CopyError::LimitExceeded(_))
    ));
    let (bytes, _) = encode(&Root::Host, src.to_str().unwrap(), &Limits::default()).unwrap();
    let rootdir = t.path().join("root");
    std::fs::create_dir(&rootdir).unwrap();
    let root = Root::open(&rootdir).unwrap();
    for limits in [
        few,
        Limits {
            max_bytes: 1000,
            ..Limits::default()
        },
        Limits {
            max_depth: 1,
            ..Limits::default()
        },
    ] {
        let opts = ReceiveOptions {
            limits,
            ..into_container()
        };
        assert!(matches!(
            receive(&bytes[..], |d| root.resolve_dest("/x", d), &opts),
            Err(CopyError::LimitExceeded(_))
        ));
    }
    let shallow = Limits {
        max_depth: 1,
        ..Limits::default()
    };
    assert!(matches!(
        encode(&Root::Host, src.to_str().unwrap(), &shallow),
        Err(CopyError::LimitExceeded(_))
    ));
}

/// A hand-made stream with one entry of `tag` named `name`.
fn hostile(tag: u8, name: &[u8], body: &[u8]) -> Vec<u8> {
    let mut v = MAGIC.to_vec();
    v.push(tag);
    v.extend_from_slice(&(name.len() as u16).to_le_bytes());
    v.extend_from_slice(name);
    v.extend_from_slice(
        &[
            0o644u32.to_le_bytes(),
            0u32.to_le_bytes(),
            0u32.to_le_bytes(),
        ]
        .concat(),
    );
    v.extend_from_slice(&0i64.to_le_bytes());
    v.extend_from_slice(&0u32.to_le_bytes());
    v.extend_from_slice(body);
    v
}

fn file_body(size: u64, ranges: &[(u64, u64)]) -> Vec<u8> {
    let mut v = size.to_le_bytes().to_vec();
    for (off, len) in ranges {
        v.extend_from_slice(&off.to_le_bytes());
        v.extend_from_slice(&len.to_le_bytes());
        v.extend(std::iter::repeat_n(b'x', *len as usize));
    }
    v.extend_from_slice(&[0u8; 16]);
    v
}

#[test]
fn hostile_streams_change_nothing_outside_and_say_why() {
    let t = tempfile::tempdir().unwrap();
    let rootdir = t.path().join("root");
    std::fs::create_dir(&rootdir).unwrap();
    let root = Root::open(&rootdir).unwrap();
    let end = |n: u64| {
        [
            vec![END],
            n.to_le_bytes().to_vec(),
            0u64.to_le_bytes().to_vec(),
        ]
        .concat()
    };
    // A directory whose child tries to climb out, or names a path.
    for bad in [&b".."[..], b"a/b", b".", b"", b"x\0y"] {
        let mut s = hostile(DIR, b"d", &[]);
        s.extend(hostile(FILE, bad, &file_body(1, &[(0, 1)]))[8..].to_vec());
        s.push(UP);
        s.extend(end(2));
        let r = receive(&s[..], |d| root.resolve_dest("/", d), &into_container());
        assert!(
            matches!(r, Err(CopyError::Refused { .. })),
            "{bad:?}: {r:?}"
        );
    }
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"NOTMAGIC".to_vec(), "magic"),
        (
            hostile(FILE, b"f", &file_body(4, &[(2, 1), (0, 1)])),
            "order",
        ),
        (
            hostile(FILE, b"f", &file_body(4, &[(3, 2)])),
            "past its size",
        ),
        (
            hostile(FILE, b"f", &file_body(2, &[(0, 2)])[..20]),
            "truncated",
        ),
        (
            [hostile(FILE, b"f", &file_body(1, &[(0, 1)])), end(5)].concat(),
            "count",
        ),
        ([hostile(LINK, b"l", &[0, 0])].concat(), "empty target"),
        (hostile(b'X', b"f", &[]), "tag"),
        (
            [hostile(DIR, b"d", &[]), vec![UP, b'Q']].concat(),
            "trailer",
        ),
    ];
    for (s, what) in cases {
        let r = receive(&s[..], |d| root.resolve_dest("/", d), &into_container());
        assert!(matches!(r, Err(CopyError::Malformed(_))), "{what}: {r:?}");
    }
    // What is there is what the stream made before its fault was found ("d", and "f"
    // from the stream whose trailer lied), and no temporary name.
    let left: Vec<_> = walk(&rootdir);
    assert!(
        left.iter()
            .all(|p| ["d", "f"].contains(&p.file_name().unwrap().to_str().unwrap())),
        "{left:?}"
    );
    assert_eq!(
        std::fs::read_dir(t.path()).unwrap().count(),
        1,
        "nothing beside the root"
    );
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() && !p.is_symlink() {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
}

fn snapshot(dir: &Path) -> Vec<(PathBuf, u32, u32, u32, Vec<u8>)> {
    let mut v: Vec<_> = walk(dir)
        .into_iter()
        .map(|p| {
            let m = std::fs::symlink_metadata(&p).unwrap();
            let data = if m.is_file() {
                std::fs::read(&p).unwrap()
            } else {
                vec![]
            };
            (p, m.mode(), m.uid(), m.gid(), data)
        })
        .collect();
    v.sort();
    v
}

/// The race of CVE-2018-15664 and CVE-2021-30465: while copies run, a thread keeps
/// replacing a directory on the copy's path with a symlink to a canary directory outside
/// the root (absolute, and relative with `..`). The canary must never change, and nothing
/// of it may be read.
#[test]
fn a_symlink_swapped_during_copies_never_reaches_outside_the_root() {
    let t = tempfile::tempdir().unwrap();
    let rootdir = t.path().join("root");
    let canary = t.path().join("canary");
    std::fs::create_dir_all(rootdir.join("a/b")).unwrap();
    std::fs::create_dir_all(&canary).unwrap();
    std::fs::write(canary.join("secret"), "CANARY-SECRET").unwrap();
    std::fs::create_dir(canary.join("b")).unwrap();
    std::fs::write(canary.join("b/secret"), "CANARY-SECRET").unwrap();
    std::fs::write(rootdir.join("a/b/secret"), "container data").unwrap();
    let before = snapshot(&canary);
    let src = t.path().join("payload");
    std::fs::create_dir_all(src.join("inner")).unwrap();
    std::fs::write(src.join("inner/file"), "payload").unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    // Shared so that the copy loop runs until the race really ran, however busy the machine.
    let swapped = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let swapper = {
        let (rootdir, canary, stop, swapped) = (
            rootdir.clone(),
            canary.clone(),
            stop.clone(),
            swapped.clone(),
        );
        std::thread::spawn(move || {
            let targets = [
                canary.clone(),
                PathBuf::from("../../../../../..").join(canary.strip_prefix("/").unwrap()),
            ];
            let mut swaps = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let a = rootdir.join("a");
                let real = rootdir.join("a.real");
                if std::fs::rename(&a, &real).is_ok() {
                    symlink(&targets[(swaps % 2) as usize], &a).unwrap();
                    std::thread::yield_now();
                    std::fs::remove_file(&a).unwrap();
                    std::fs::rename(&real, &a).unwrap();
                    swaps += 1;
                    swapped.store(swaps, Ordering::Relaxed);
                    // Leave copies a window in which the path is real.
                    std::thread::sleep(std::time::Duration::from_micros(20));
                }
                // The inner directory too, where the receiver descends.
                let b = rootdir.join("a/b/payload/inner");
                let breal = rootdir.join("a/b/payload/inner.real");
                if std::fs::rename(&b, &breal).is_ok() {
                    let _ = symlink(&canary, &b);
                    std::thread::yield_now();
                    let _ = std::fs::remove_file(&b);
                    let _ = std::fs::rename(&breal, &b);
                }
            }
            swaps
        })
    };
    let root = Root::open(&rootdir).unwrap();
    let (payload, _) = encode(&Root::Host, src.to_str().unwrap(), &Limits::default()).unwrap();
    let (mut ok_in, mut ok_out) = (0, 0);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let mut rounds = 0;
    while rounds < 2000
        || (swapped.load(Ordering::Relaxed) <= 100 && std::time::Instant::now() < deadline)
    {
        rounds += 1;
        if receive(
            &payload[..],
            |d| root.resolve_dest("/a/b", d),
            &into_container(),
        )
        .is_ok()
        {
            ok_in += 1;
        }
        if let Ok((out, _)) = encode(&root, "/a/b", &Limits::default()) {
            assert!(
                memchr::memmem::find(&out, b"CANARY-SECRET").is_none(),
                "the copy read the canary"
            );
            ok_out += 1;
        }
        if let Ok(item) = root.open_item("/a/b/secret") {
            let mut out = Vec::new();
            if send(item, &mut out, &Limits::default()).is_ok() {
                assert!(memchr::memmem::find(&out, b"CANARY-SECRET").is_none());
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let swaps = swapper.join().unwrap();
    assert!(swaps > 100, "the race ran ({swaps} swaps)");
    assert!(
        ok_in > 0 && ok_out > 0,
        "some copies went through ({ok_in} in, {ok_out} out)"
    );
    assert_eq!(snapshot(&canary), before, "the canary is untouched");
}
