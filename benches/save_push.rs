//! `make bench-push` (`cargo bench --bench save_push`; issue 12's speed item): `save` and
//! `push` of a ~200 MB image (tests/bench/mkbigimage.py, 5 gzip layers) by berth's image
//! engine beside `podman save` / `podman push` (private storage, vfs) in the same run, to the
//! same docker-registry on loopback (tests/registry/start.sh, stopped when this exits).
//! Pushes: all blobs new, to a new repository of the same registry (berth mounts the blobs),
//! and the same again (nothing new). Prints the mean of BENCH_RUNS (3) runs of each and the
//! ratios podman/berth; BENCH_IMAGE_MB (200) sets the image's size. Needs python3, skopeo,
//! podman, docker-registry, htpasswd (tests/deps.sh).

use std::collections::HashMap;
use std::fs::{self, File};
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use berth::image::ops::push_image;
use berth::image::registry::PullOptions;
use berth::image::{SaveFormat, Store, load, save};

/// The open registry of tests/registry/start.sh (its watchdog stops it when this exits): its
/// port.
fn registry() -> u16 {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/registry/start.sh");
    let out = run(Command::new(&script).arg(std::process::id().to_string()));
    let vars: HashMap<&str, &str> = out.lines().filter_map(|l| l.split_once('=')).collect();
    vars["PORT"].parse().expect("a port")
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// podman with its own storage in `dir` (never the machine's), no systemd, no network.
fn podman(dir: &Path) -> Command {
    let mut c = Command::new("podman");
    c.arg("--root")
        .arg(dir.join("root"))
        .arg("--runroot")
        .arg(dir.join("run"))
        .args([
            "--storage-driver",
            "vfs",
            "--cgroup-manager",
            "cgroupfs",
            "--events-backend",
            "file",
        ])
        .env("XDG_RUNTIME_DIR", dir.join("xdg"))
        .env("CONTAINERS_REGISTRIES_CONF", dir.join("registries.conf"));
    fs::create_dir_all(dir.join("xdg")).expect("podman's XDG_RUNTIME_DIR");
    fs::write(
        dir.join("registries.conf"),
        "unqualified-search-registries = []\n",
    )
    .expect("podman's registries.conf");
    c
}

fn insecure() -> PullOptions {
    PullOptions {
        insecure: true,
        ..PullOptions::default()
    }
}

fn main() {
    let port = registry();
    let mb: u64 = std::env::var("BENCH_IMAGE_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let t = tempfile::tempdir().unwrap();
    let w = t.path();
    let arch = berth::image::archive::host_arch();
    let mk = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bench/mkbigimage.py");
    run(Command::new("python3")
        .arg(&mk)
        .arg(w)
        .arg(arch)
        .arg(mb.to_string()));
    let archive = w.join("big.oci.tar");
    run(Command::new("skopeo")
        .args(["copy", "-q"])
        .arg(format!("oci:{}/layout:big", w.display()))
        .arg(format!(
            "oci-archive:{}:localhost/bench/big:latest",
            archive.display()
        )));
    let s = Store::open(&w.join("store")).unwrap();
    load(&s, &archive, None, &|_| {}).unwrap();
    let name = "localhost/bench/big:latest";
    let rec = s.get(name).unwrap();
    let compressed: u64 = rec
        .layer_blobs
        .iter()
        .map(|b| fs::metadata(s.blob_path(b)).unwrap().len())
        .sum();
    eprintln!(
        "image: {} layers, {:.0} MB compressed, {:.0} MB uncompressed",
        rec.layers.len(),
        compressed as f64 / 1e6,
        rec.size as f64 / 1e6
    );
    let pm = w.join("podman");
    run(podman(&pm).args(["load", "-q", "-i"]).arg(&archive));
    let time = |f: &mut dyn FnMut(usize)| -> Vec<f64> {
        (0..runs)
            .map(|i| {
                let t0 = Instant::now();
                f(i);
                t0.elapsed().as_secs_f64()
            })
            .collect()
    };
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let mut rows = Vec::new();
    for (fmt, pfmt) in [
        (SaveFormat::OciArchive, "oci-archive"),
        (SaveFormat::DockerArchive, "docker-archive"),
    ] {
        let out = w.join("out.tar");
        let b = time(&mut |_| {
            let f = std::io::BufWriter::with_capacity(1 << 20, File::create(&out).unwrap());
            save(&s, &[name.to_string()], fmt, f, &|_, _| {}).unwrap();
        });
        let size = fs::metadata(&out).unwrap().len();
        let p = time(&mut |_| {
            if let Err(e) = fs::remove_file(&out) {
                assert_eq!(
                    e.kind(),
                    std::io::ErrorKind::NotFound,
                    "remove {}",
                    out.display()
                );
            }
            run(podman(&pm)
                .args(["save", "-q", "--format", pfmt, "-o"])
                .arg(&out)
                .arg(name));
        });
        let psize = fs::metadata(&out).unwrap().len();
        rows.push(format!("save {pfmt:15} berth {:6.2} s ({:.0} MB)   podman {:6.2} s ({:.0} MB)   podman/berth {:.2}x", mean(&b), size as f64 / 1e6, mean(&p), psize as f64 / 1e6, mean(&p) / mean(&b)));
    }
    let reg = format!("127.0.0.1:{port}");
    let pid = std::process::id();
    // The first push uploads everything; once an image is known to be in a repository,
    // pushes to other repositories of that registry mount its blobs (berth), or reuse what
    // podman's blob info cache knows.
    let t0 = Instant::now();
    let (_, first) = push_image(
        &s,
        name,
        Some(&format!("{reg}/bench/berth-{pid}-0:1")),
        &insecure(),
        &|_| {},
    )
    .unwrap();
    let b = t0.elapsed().as_secs_f64();
    assert_eq!(first.uploaded_blobs, 6, "{first:?}");
    let t0 = Instant::now();
    run(podman(&pm).args([
        "push",
        "-q",
        "--tls-verify=false",
        name,
        &format!("docker://{reg}/bench/podman-{pid}-0:1"),
    ]));
    let p = t0.elapsed().as_secs_f64();
    rows.push(format!(
        "push (all blobs new)     berth {b:6.2} s   podman {p:6.2} s   podman/berth {:.2}x",
        p / b
    ));
    let b = time(&mut |i| {
        let dest = format!("{reg}/bench/berth-{pid}-m{i}:1");
        let (_, p) = push_image(&s, name, Some(&dest), &insecure(), &|_| {}).unwrap();
        assert_eq!(p.uploaded_blobs, 0, "{p:?}");
    });
    let p = time(&mut |i| {
        let dest = format!("docker://{reg}/bench/podman-{pid}-m{i}:1");
        run(podman(&pm).args(["push", "-q", "--tls-verify=false", name, &dest]));
    });
    rows.push(format!(
        "push to a new repository berth {:6.2} s   podman {:6.2} s   podman/berth {:.2}x",
        mean(&b),
        mean(&p),
        mean(&p) / mean(&b)
    ));
    let b = time(&mut |_| {
        let dest = format!("{reg}/bench/berth-{pid}-0:1");
        let (_, p) = push_image(&s, name, Some(&dest), &insecure(), &|_| {}).unwrap();
        assert_eq!(p.uploaded_blobs, 0, "{p:?}");
    });
    let p = time(&mut |_| {
        let dest = format!("docker://{reg}/bench/podman-{pid}-0:1");
        run(podman(&pm).args(["push", "-q", "--tls-verify=false", name, &dest]));
    });
    rows.push(format!(
        "push again (none new)    berth {:6.2} s   podman {:6.2} s   podman/berth {:.2}x",
        mean(&b),
        mean(&p),
        mean(&p) / mean(&b)
    ));
    eprintln!(
        "{} runs each, {} build:\n{}",
        runs,
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        rows.join("\n")
    );
}
