//! `make bench-cargo` (`cargo bench --bench bridge_iperf3`): container-to-container TCP
//! throughput over berth's bridge (the network engine alone, as tests/network.rs drives it)
//! beside two namespaces joined by a plain veth pair, iperf3 in interleaved rounds of 3 s
//! each (`BENCH_ROUNDS`, default 5), in the same run.
//!
//! Needs root, iproute2, nftables, util-linux and iperf3. It re-runs itself under
//! `unshare --net`: that fresh namespace plays the host (bridge, sysctls and nft table are
//! made there, never in the machine's namespace); the "containers" are `sleep` processes in
//! network namespaces of their own, with documentation addresses, so no packet leaves them.
//! Prints every round's rates, the medians and their ratio, and a note if the bridge is below
//! half the veth's.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::os::fd::AsFd;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use berth::network::{NetSpec, Networks, NetworksConfig};

const INNER: &str = "BERTH_BENCH_NETNS_INNER";

fn sh(cmd: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .expect("run sh");
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A process in a network namespace of its own.
struct Ns {
    child: Child,
    fd: File,
}

impl Ns {
    fn new() -> Ns {
        let mut child = Command::new("unshare")
            .args(["--net", "--", "sh", "-c", "echo ready; exec sleep 600"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("unshare --net");
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().expect("its stdout"))
            .read_line(&mut line)
            .expect("its first line");
        assert_eq!(line.trim(), "ready");
        let fd = File::open(format!("/proc/{}/ns/net", child.id())).expect("its netns");
        Ns { child, fd }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn sh(&self, cmd: &str) -> String {
        sh(&format!("nsenter -t {} -n -- sh -c '{cmd}'", self.pid()))
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        if self.child.kill().is_ok() && self.child.wait().is_err() {
            eprintln!("cannot reap the namespace's sleep, ignoring");
        }
    }
}

/// Seconds per iperf3 run.
const SECS: u32 = 3;

/// iperf3 from `client` to a one-shot server in `server` on `addr`: bits per second received.
fn iperf3(server: &Ns, client: &Ns, addr: &str) -> f64 {
    let mut srv = Command::new("nsenter")
        .args(["-t", &server.pid().to_string(), "-n", "--"])
        .args(["iperf3", "-s", "-1", "-B", addr])
        .stdout(Stdio::null())
        .spawn()
        .expect("iperf3 -s");
    std::thread::sleep(Duration::from_millis(300));
    let out = client.sh(&format!("iperf3 -c {addr} -t {SECS} -J"));
    srv.wait().expect("iperf3 -s exits after one test");
    let v: serde_json::Value = serde_json::from_str(&out).expect("iperf3's JSON");
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .expect("bits_per_second")
}

fn measure() {
    sh("ip link set lo up");
    let dir = tempfile::tempdir().expect("a state directory");
    let (p, q) = (Ns::new(), Ns::new());
    sh(&format!(
        "ip link add pv0 netns {} type veth peer name pv1 netns {}",
        p.pid(),
        q.pid()
    ));
    p.sh("ip link set lo up && ip link set pv0 up && ip addr add 192.0.2.1/24 dev pv0");
    q.sh("ip link set lo up && ip link set pv1 up && ip addr add 192.0.2.2/24 dev pv1");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    // The engine stays open (and the containers attached) for all rounds.
    let (_nets, a, b, ip) = rt.block_on(async {
        let mut cfg = NetworksConfig::new(dir.path().join("state"), dir.path().join("run"));
        cfg.upstreams = Some(vec!["198.51.100.2:53".parse().expect("an address")]);
        let mut nets = Networks::open(cfg).await.expect("open the engine");
        let spec = NetSpec {
            mode: "bridge".parse().expect("a mode"),
            ..NetSpec::default()
        };
        let (a, b) = (Ns::new(), Ns::new());
        let prepared = nets.prepare("a", &spec, true).await.expect("prepare a");
        nets.attach(prepared, a.fd.as_fd()).await.expect("attach a");
        let prepared = nets.prepare("b", &spec, true).await.expect("prepare b");
        let att = nets.attach(prepared, b.fd.as_fd()).await.expect("attach b");
        let ip = att.ip4.expect("an IPv4 address").to_string();
        (nets, a, b, ip)
    });
    // Interleaved rounds: single 5 s runs varied by ±15% here, more than the difference.
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let (mut plain, mut bridged) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        plain.push(iperf3(&q, &p, "192.0.2.2"));
        bridged.push(iperf3(&b, &a, &ip));
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let rates = |v: &[f64]| {
        v.iter()
            .map(|r| format!("{:.2}", r / 1e9))
            .collect::<Vec<_>>()
            .join(" ")
    };
    println!("plain veth Gbit/s:   {}", rates(&plain));
    println!("berth bridge Gbit/s: {}", rates(&bridged));
    let (plain, bridged) = (median(&mut plain), median(&mut bridged));
    println!(
        "iperf3, {rounds} interleaved rounds of {SECS} s, medians: plain veth {:.2} Gbit/s, berth bridge {:.2} Gbit/s ({:.1}% of the veth)",
        plain / 1e9,
        bridged / 1e9,
        100.0 * bridged / plain
    );
    if bridged < 0.5 * plain {
        println!("NOTE: the bridge is below half the veth (a loaded machine, or a regression)");
    }
}

fn main() {
    if std::env::var_os(INNER).is_some() {
        measure();
        return;
    }
    assert!(
        nix::unistd::geteuid().is_root(),
        "needs root (it makes network namespaces)"
    );
    for tool in ["ip", "nft", "unshare", "nsenter", "iperf3"] {
        assert!(
            Command::new("sh")
                .arg("-c")
                .arg(format!("command -v {tool}"))
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success()),
            "{tool} is missing: install iproute2, nftables, util-linux, iperf3"
        );
    }
    // cargo bench passes `--bench`; the inner run needs no arguments.
    let status = Command::new("unshare")
        .arg("--net")
        .arg("--")
        .arg(std::env::current_exe().expect("this binary"))
        .env(INNER, "1")
        .status()
        .expect("unshare --net");
    assert!(status.success(), "the measurement failed in its namespace");
}
