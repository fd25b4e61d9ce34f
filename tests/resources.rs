//! Resource management against a real systemd and kernel (issue 4): limits as scope properties
//! that land in the scope's cgroup files, live changes with `set`, OOM reporting, the pids
//! limit against a fork bomb, the device policy, and stats checked against the cgroup files.
//! Run by tests/run-integration.sh (BERTH_TEST_HOST); without it these tests fail, never skip.
//!
//! Every check reads the kernel's own files. The host mirrors the machine's cgroup layout:
//! hybrid (v1 controllers, cgroup2 at /sys/fs/cgroup/unified) on the development machines and
//! in CI, unified (cgroup v2 only) elsewhere; [`Layout`] reads either.

mod common;

use common::*;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

/// The cgroup layout inside the test host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// v1 controllers, each in /sys/fs/cgroup/CONTROLLER; cgroup2 at /sys/fs/cgroup/unified.
    Hybrid,
    /// cgroup2 only, at /sys/fs/cgroup.
    Unified,
}

fn layout() -> Layout {
    if code("test -e /sys/fs/cgroup/cgroup.controllers") == 0 {
        Layout::Unified
    } else {
        assert_eq!(
            code("test -d /sys/fs/cgroup/memory && test -d /sys/fs/cgroup/pids"),
            0,
            "neither a unified nor a hybrid cgroup layout in the host"
        );
        Layout::Hybrid
    }
}

/// The path of one of a container scope's cgroup files. `controller` picks the v1 hierarchy on
/// hybrid hosts; on unified ones everything is in one directory.
fn cg(name: &str, controller: &str, file: &str) -> String {
    let group = ok(&format!(
        "systemctl show -p ControlGroup --value berth-{name}.scope"
    ));
    assert_eq!(group, format!("/machine.slice/berth-{name}.scope"));
    match layout() {
        Layout::Hybrid => format!("/sys/fs/cgroup/{controller}{group}/{file}"),
        Layout::Unified => format!("/sys/fs/cgroup{group}/{file}"),
    }
}

fn read(path: &str) -> String {
    ok(&format!("cat {path}"))
}

/// A v2-style limit (`max` = none) or a number.
fn limit(v: &str) -> Option<u64> {
    if v == "max" {
        None
    } else {
        Some(v.parse().unwrap_or_else(|_| panic!("not a limit: {v:?}")))
    }
}

/// The kernel's memory limit of a container's scope (None: unlimited).
fn memory_max(name: &str) -> Option<u64> {
    match layout() {
        Layout::Hybrid => {
            let v: u64 = read(&cg(name, "memory", "memory.limit_in_bytes"))
                .parse()
                .unwrap();
            // v1 writes "no limit" as the largest page multiple below 2^63.
            (v < 1 << 62).then_some(v)
        }
        Layout::Unified => limit(&read(&cg(name, "memory", "memory.max"))),
    }
}

/// Memory charged to the scope now.
fn memory_current(name: &str) -> u64 {
    let file = match layout() {
        Layout::Hybrid => "memory.usage_in_bytes",
        Layout::Unified => "memory.current",
    };
    read(&cg(name, "memory", file)).parse().unwrap()
}

/// (quota, period) in µs, None when the CPU time is not limited.
fn cpu_max(name: &str) -> Option<(u64, u64)> {
    match layout() {
        Layout::Hybrid => {
            let q: i64 = read(&cg(name, "cpu", "cpu.cfs_quota_us")).parse().unwrap();
            let p: u64 = read(&cg(name, "cpu", "cpu.cfs_period_us")).parse().unwrap();
            (q >= 0).then_some((q as u64, p))
        }
        Layout::Unified => {
            let v = read(&cg(name, "cpu", "cpu.max"));
            let (q, p) = v.split_once(' ').unwrap();
            limit(q).map(|q| (q, p.parse().unwrap()))
        }
    }
}

fn pids_max(name: &str) -> Option<u64> {
    limit(&read(&cg(name, "pids", "pids.max")))
}

fn pids_current(name: &str) -> u64 {
    read(&cg(name, "pids", "pids.current")).parse().unwrap()
}

/// Everything the kernel says about a scope's limits, to compare before and after a refusal.
fn kernel_limits(name: &str) -> (Option<u64>, Option<(u64, u64)>, Option<u64>) {
    (memory_max(name), cpu_max(name), pids_max(name))
}

fn scope_props(name: &str) -> String {
    ok(&format!(
        "systemctl show berth-{name}.scope -p MemoryMax -p TasksMax -p CPUQuotaPerSecUSec -p DevicePolicy"
    ))
}

fn definition(name: &str) -> String {
    ok(&format!(
        "cat /var/lib/berth/containers/{name}/container.toml"
    ))
}

/// The `[resources]` table of a definition, one `key = value` per line.
fn resources_table(name: &str) -> Vec<String> {
    definition(name)
        .lines()
        .skip_while(|l| *l != "[resources]")
        .skip(1)
        .take_while(|l| !l.starts_with('['))
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// Run a shell command inside the host with `input` on its stdin.
fn sh_in(cmd: &str, input: &str) -> std::process::Output {
    let root = env!("CARGO_MANIFEST_DIR");
    let mut child = Command::new(format!("{root}/tests/host/exec.sh"))
        .args([host().as_str(), "/bin/sh", "-c", cmd])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run exec.sh");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// Kill berthd and wait until systemd has restarted it and it answers.
fn restart_berthd() {
    let old = ok("systemctl show -p MainPID --value berthd");
    ok("systemctl kill -s KILL berthd");
    wait_until("berthd to come back", || {
        let pid = ok("systemctl show -p MainPID --value berthd");
        pid != old && pid != "0" && code("berthctl list >/dev/null 2>&1") == 0
    });
}

fn stats_json(names: &str) -> Vec<serde_json::Value> {
    let o = ok(&format!("berthctl stats --no-stream -o json {names}"));
    serde_json::from_str::<serde_json::Value>(&o)
        .unwrap_or_else(|e| panic!("stats JSON: {e}: {o}"))
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {o}"))
        .clone()
}

fn stats_of(name: &str) -> serde_json::Value {
    let all = stats_json(name);
    assert_eq!(all.len(), 1, "{all:?}");
    all[0].clone()
}

fn u(v: &serde_json::Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} is not a number: {v}"))
}

#[test]
fn limits_land_in_the_scope_cgroup() {
    ok(
        "berthctl run -d --name lim1 --memory 64M --cpus 0.5 --pids-limit 50 --cpu-weight 200 -- sleep 1000",
    );
    ok("berthctl run -d --name lim0 -- sleep 1000");
    assert_eq!(memory_max("lim1"), Some(64 * MIB));
    let (quota, period) = cpu_max("lim1").expect("no CPU quota");
    assert_eq!(quota * 1_000_000 / period, 500_000, "{quota}/{period}");
    assert_eq!(pids_max("lim1"), Some(50));
    match layout() {
        // systemd maps CPUWeight to cpu.shares on v1: weight * 1024 / 100.
        Layout::Hybrid => assert_eq!(read(&cg("lim1", "cpu", "cpu.shares")), "2048"),
        Layout::Unified => assert_eq!(read(&cg("lim1", "cpu", "cpu.weight")), "200"),
    }
    let props = scope_props("lim1");
    for want in [
        "MemoryMax=67108864",
        "TasksMax=50",
        "CPUQuotaPerSecUSec=500ms",
        "DevicePolicy=closed",
    ] {
        assert!(props.lines().any(|l| l == want), "{want} not in {props}");
    }
    // Without limits the kernel has none (the checks above can tell the difference), but the
    // device policy is closed all the same.
    assert_eq!(memory_max("lim0"), None);
    assert_eq!(cpu_max("lim0"), None);
    // (systemd's DefaultTasksMax applies to every scope.)
    let tasks = ok("systemctl show -p TasksMax --value berth-lim0.scope");
    assert_eq!(
        pids_max("lim0").map(|n| n.to_string()),
        Some(tasks).filter(|t| t != "infinity")
    );
    assert!(scope_props("lim0").contains("DevicePolicy=closed"));
    // The same numbers through berth.
    let s = stats_of("lim1");
    assert_eq!(u(&s, "memory_limit_bytes"), 64 * MIB);
    assert_eq!(u(&s, "pids_limit"), 50);
    let s = stats_of("lim0");
    assert!(s["memory_limit_bytes"].is_null(), "{s}");
    assert_eq!(s["pids_limit"].as_u64(), pids_max("lim0"), "{s}");
    assert_eq!(
        prop("lim1", "Resources"),
        "cpu-weight=200 cpus=0.5 memory=64M pids=50"
    );
    let status = ok("berthctl status lim1");
    assert!(
        status.contains("Limits: cpu-weight=200 cpus=0.5 memory=64M pids=50"),
        "{status}"
    );
    assert!(!status.contains("OOM:"), "{status}");
    ok("berthctl remove --force lim1 lim0");
}

#[test]
fn definition_keeps_resources_across_restarts() {
    ok("berthctl create --name def1 --memory 48M --pids-limit 30 --cpus 0.25 -- sleep 1000");
    assert_eq!(
        resources_table("def1"),
        ["memory = \"48M\"", "cpus = \"0.25\"", "pids = \"30\""]
    );
    for round in 0..2 {
        ok("berthctl start def1");
        assert_eq!(
            kernel_limits("def1"),
            (Some(48 * MIB), Some((25_000, 100_000)), Some(30)),
            "start #{round}"
        );
        ok("berthctl stop def1");
        assert_eq!(prop("def1", "State"), "exited");
    }
    assert_eq!(prop("def1", "Resources"), "cpus=0.25 memory=48M pids=30");
    ok("berthctl remove def1");
}

#[test]
fn set_changes_limits_live_and_runtime_changes_end_with_the_run() {
    ok("berthctl run -d --name set1 --memory 64M --pids-limit 50 -- sleep 1000");
    let leader = prop("set1", "Leader");
    assert_eq!(kernel_limits("set1"), (Some(64 * MIB), None, Some(50)));

    // Persistent: kernel, bus property and definition, the same process still running.
    ok("berthctl set set1 memory=128M pids=100 cpus=1.5");
    assert_eq!(
        kernel_limits("set1"),
        (Some(128 * MIB), Some((150_000, 100_000)), Some(100))
    );
    assert_eq!(prop("set1", "Leader"), leader);
    assert_eq!(prop("set1", "State"), "running");
    assert_eq!(prop("set1", "Resources"), "cpus=1.5 memory=128M pids=100");
    assert_eq!(
        resources_table("set1"),
        ["memory = \"128M\"", "cpus = \"1.5\"", "pids = \"100\""]
    );
    let props = scope_props("set1");
    assert!(
        props.contains("MemoryMax=134217728") && props.contains("TasksMax=100"),
        "{props}"
    );

    // Runtime: the kernel and the bus change, the definition does not; not even when a
    // persistent change of another key follows.
    ok("berthctl set --runtime set1 memory=96M");
    assert_eq!(memory_max("set1"), Some(96 * MIB));
    assert_eq!(prop("set1", "Resources"), "cpus=1.5 memory=96M pids=100");
    ok("berthctl set set1 pids=77");
    assert_eq!(pids_max("set1"), Some(77));
    assert_eq!(memory_max("set1"), Some(96 * MIB));
    assert_eq!(
        resources_table("set1"),
        ["memory = \"128M\"", "cpus = \"1.5\"", "pids = \"77\""]
    );

    // A berthd restart keeps the runtime value in force.
    restart_berthd();
    assert_eq!(prop("set1", "Resources"), "cpus=1.5 memory=96M pids=77");
    assert_eq!(prop("set1", "Leader"), leader);

    // The next run has the definition's values.
    ok("berthctl stop set1 && berthctl start set1");
    assert_ne!(prop("set1", "Leader"), leader);
    assert_eq!(
        kernel_limits("set1"),
        (Some(128 * MIB), Some((150_000, 100_000)), Some(77))
    );
    assert_eq!(prop("set1", "Resources"), "cpus=1.5 memory=128M pids=77");

    // An empty value removes the limit, in the kernel and in the definition.
    ok("berthctl set set1 memory= cpus=");
    assert_eq!(kernel_limits("set1"), (None, None, Some(77)));
    assert_eq!(resources_table("set1"), ["pids = \"77\""]);
    assert_eq!(prop("set1", "Resources"), "pids=77");
    ok("berthctl remove --force set1");
}

#[test]
fn oom_kill_is_reported_on_the_bus_in_status_and_in_the_journal() {
    let since = ok("date '+%Y-%m-%d %H:%M:%S'");
    // The payload doubles a shell string until the 32M limit stops it.
    let o = sh(
        "timeout 20 gdbus monitor --system --dest org.berth.berth1 > /tmp/oom-mon.log 2>&1 & sleep 1; \
         berthctl run --name oom1 --memory 32M -- /bin/sh -c 's=xxxxxxxxxxxxxxxx; while :; do s=$s$s; done'; \
         echo \"rc=$?\"; sleep 1; kill %1 2>/dev/null; cat /tmp/oom-mon.log",
    );
    let log = out(&o);
    assert!(log.starts_with("rc=137"), "{log}\n{}", err(&o));
    assert!(
        log.contains("org.berth.berth1.Manager.ContainerOOMKilled ('oom1', objectpath '/org/berth/berth1/container/oom1', uint64 "),
        "{log}"
    );
    let kills: u64 = prop("oom1", "OOMKills").parse().unwrap();
    assert!(kills >= 1, "OOMKills={kills}");
    let at: u64 = prop("oom1", "LastOOMAt").parse().unwrap();
    assert!(at > 0);
    let status = ok("berthctl status oom1");
    assert!(
        status.contains(&format!("OOM: {kills} kill(s), last at ")),
        "{status}"
    );
    assert!(status.contains("Status: exited with 137"), "{status}");
    assert!(u(&stats_of("oom1"), "oom_kills") >= 1);
    let journal = ok(&format!(
        "journalctl -u berthd --since '{since}' --no-pager -o cat"
    ));
    assert!(
        journal
            .lines()
            .any(|l| l.starts_with("container oom1: ") && l.contains("killed for lack of memory")),
        "{journal}"
    );
    // The counter belongs to the container, and a container that stays within its limit
    // has none.
    assert_eq!(
        ok(
            "berthctl run --rm --name oom2 --memory 32M -- /bin/sh -c 'dd if=/dev/zero bs=1M count=8 2>/dev/null | wc -c'"
        ),
        "8388608"
    );
    ok("berthctl create --name oom3 --memory 32M -- true && berthctl start --wait oom3");
    assert_eq!(prop("oom3", "OOMKills"), "0");
    assert!(!ok("berthctl status oom3").contains("OOM:"));
    ok("berthctl remove oom1 oom3");
}

#[test]
fn oom_kill_of_a_child_is_counted_and_survives_restarts() {
    // The payload survives: only its child runs out of memory, on the first run only (the
    // marker lives in the container's writable layer, which outlives the run).
    ok(
        "berthctl run -d --name oomc --memory 32M -- /bin/sh -c '[ -e /oomed ] || { touch /oomed; sh -c \"s=xxxxxxxxxxxxxxxx; while :; do s=\\$s\\$s; done\"; }; sleep 1000'",
    );
    wait_until("the child's OOM kill", || prop("oomc", "OOMKills") != "0");
    assert_eq!(prop("oomc", "State"), "running");
    let kills = prop("oomc", "OOMKills");
    let at = prop("oomc", "LastOOMAt");
    restart_berthd();
    assert_eq!(prop("oomc", "OOMKills"), kills, "lost in a berthd restart");
    assert_eq!(prop("oomc", "LastOOMAt"), at);
    // The count is the container's, over its runs.
    ok("berthctl stop oomc && berthctl start oomc");
    restart_berthd();
    assert_eq!(
        prop("oomc", "OOMKills"),
        kills,
        "lost in a restart of the container"
    );
    assert!(ok("berthctl status oomc").contains(&format!("OOM: {kills} kill(s)")));
    ok("berthctl remove --force oomc");
}

#[test]
fn fork_bomb_stays_within_the_pids_limit() {
    // Every shell forks a sleeper and another shell in a loop until fork fails (then ash
    // exits): the scope fills up at once, and the sleepers keep it full. The payload itself
    // sleeps (exec: it never forks again). Sampling starts with the container, in the host.
    let dir = match layout() {
        Layout::Hybrid => "/sys/fs/cgroup/pids/machine.slice/berth-fb1.scope",
        Layout::Unified => "/sys/fs/cgroup/machine.slice/berth-fb1.scope",
    };
    let (cur, events) = (format!("{dir}/pids.current"), format!("{dir}/pids.events"));
    let peak: u64 = ok(&format!(
        "berthctl run -d --name fb1 --pids-limit 20 -- /bin/sh -c \
           'f(){{ while :; do sleep 1000 & f & done; }}; f 2>/dev/null & exec sleep 1000' >/dev/null; \
         m=0; for i in $(seq 60); do c=$(cat {cur}); [ \"$c\" -gt \"$m\" ] && m=$c; sleep 0.05; done; echo $m"
    ))
    .parse()
    .unwrap();
    assert_eq!(read(&cg("fb1", "pids", "pids.max")), "20");
    assert!(peak <= 20, "pids.current reached {peak}");
    assert!(peak >= 10, "the bomb did not run: peak {peak}");
    // The kernel refused forks for the limit.
    let ev = read(&events);
    let refused: u64 = ev
        .strip_prefix("max ")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("pids.events: {ev}"));
    assert!(refused > 0, "{ev}");
    assert_eq!(prop("fb1", "State"), "running");
    // berthd still answers, and stops it cleanly.
    let t = Instant::now();
    ok("berthctl stop --timeout 3 fb1");
    assert!(t.elapsed() < Duration::from_secs(10));
    assert_eq!(prop("fb1", "State"), "exited");
    assert_eq!(prop("fb1", "ExitStatus"), "143");
    assert_eq!(
        ok("systemctl show -p LoadState --value berth-fb1.scope"),
        "not-found"
    );
    wait_until("the scope's cgroup to go", || {
        code(&format!("test -e {cur}")) != 0
    });
    // The host is fine: another container starts and runs.
    assert_eq!(
        ok("berthctl run --rm --pids-limit 20 -- /bin/sh -c 'echo ok'"),
        "ok"
    );
    ok("berthctl remove fb1");
}

#[test]
fn device_policy_allows_the_defaults_and_granted_devices_only() {
    // Not allowed: making a node for /dev/mem (c 1:1) or /dev/fuse (c 10:229).
    let o = sh("berthctl run --rm -- /bin/sh -c 'mknod /tmp/mem c 1 1; mknod /tmp/fuse c 10 229'");
    assert_eq!(
        err(&o)
            .lines()
            .filter(|l| l.contains("Operation not permitted"))
            .count(),
        2,
        "{}",
        err(&o)
    );
    assert_eq!(
        code("berthctl run --rm -- test -e /dev/fuse"),
        1,
        "/dev/fuse without --device"
    );
    // Allowed: the minimal /dev. /dev/tty opens to ENXIO (no controlling terminal), which is
    // the driver's answer, not the device cgroup's EPERM. Without a user namespace, and with
    // CAP_MKNOD, a node of an allowed device may be made too.
    let o = sh(
        "berthctl run --rm -- /bin/sh -c 'cat /dev/null && echo null-ok; head -c 4 /dev/zero | wc -c; \
         head -c 4 /dev/urandom | wc -c; head -c 4 /dev/random | wc -c; echo x > /dev/full; \
         cat /dev/tty; (exec 3<>/dev/ptmx) && echo ptmx-ok'",
    );
    assert_eq!(out(&o), "null-ok\n4\n4\n4\nptmx-ok", "{}", err(&o));
    assert_eq!(
        ok(
            "berthctl run --rm --userns=host --cap-add MKNOD -- /bin/sh -c 'mknod /tmp/null c 1 3 && cat /tmp/null && echo mknod-null-ok'"
        ),
        "mknod-null-ok"
    );
    assert!(err(&o).contains("No space left on device"), "{}", err(&o));
    assert!(err(&o).contains("No such device or address"), "{}", err(&o));
    assert!(!err(&o).contains("Operation not permitted"), "{}", err(&o));

    // --device /dev/fuse:r: the node is there, opens for reading, not for writing. (Checked
    // by the payload itself: only processes in the scope are under its device policy.)
    let o = sh(
        "berthctl run --rm --device /dev/fuse:r -- /bin/sh -c 'ls -l /dev/fuse; \
         (exec 3</dev/fuse) && echo read-ok; (exec 3>/dev/fuse) && echo write-ok'",
    );
    let stdout = out(&o);
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines.len() == 2 && lines[0].starts_with('c') && lines[0].contains(" 10, 229 "),
        "{}",
        out(&o)
    );
    assert_eq!(lines[1], "read-ok", "{}", err(&o));
    assert!(err(&o).contains("Operation not permitted"), "{}", err(&o));
    ok("berthctl run -d --name dev1 --device /dev/fuse:r -- sleep 1000");
    assert!(
        ok("systemctl show -p DeviceAllow --value berth-dev1.scope").contains("/dev/fuse rm"),
        "DeviceAllow"
    );
    if layout() == Layout::Hybrid {
        let list = read(&cg("dev1", "devices", "devices.list"));
        let lines: Vec<&str> = list.lines().collect();
        for want in [
            "c 1:3 rwm",
            "c 1:5 rwm",
            "c 1:7 rwm",
            "c 1:8 rwm",
            "c 1:9 rwm",
            "c 5:0 rwm",
            "c 5:2 rwm",
            "c 136:* rw",
            "c 10:229 rm",
        ] {
            assert!(lines.contains(&want), "{want} not in devices.list: {list}");
        }
        assert!(
            !lines
                .iter()
                .any(|l| l.starts_with("a ") || *l == "c 1:1 rwm"),
            "{list}"
        );
    }
    ok("berthctl remove --force dev1");
}

#[test]
fn stats_agree_with_the_cgroup_files() {
    ok("berthctl run -d --name sa1 --network none --memory 256M --pids-limit 64 -- sleep 1000");
    let all = stats_json("");
    let s = all
        .iter()
        .find(|s| s["name"] == "sa1")
        .unwrap_or_else(|| panic!("sa1 not in {all:?}"))
        .clone();
    for key in [
        "name",
        "state",
        "cpu_usage_ns",
        "cpu_percent",
        "memory_bytes",
        "memory_limit_bytes",
        "pids",
        "pids_limit",
        "io_read_bytes",
        "io_write_bytes",
        "net_rx_bytes",
        "net_tx_bytes",
        "oom_kills",
    ] {
        assert!(s.get(key).is_some(), "{key} missing: {s}");
    }
    assert_eq!(s["state"], "running");
    assert_eq!(u(&s, "memory_limit_bytes"), 256 * MIB);
    assert_eq!(u(&s, "pids_limit"), 64);
    let mem = memory_current("sa1");
    let got = u(&s, "memory_bytes");
    assert!(
        got.abs_diff(mem) < 2 * MIB && got > 0,
        "stats {got}, cgroup {mem}"
    );
    assert_eq!(u(&s, "pids"), pids_current("sa1"));
    assert_eq!(u(&s, "pids"), 2, "init and sleep");
    // --network none: only loopback, nothing leaves or enters (a bridge network sees the
    // neighbour discovery of its link at once).
    assert_eq!((u(&s, "net_rx_bytes"), u(&s, "net_tx_bytes")), (0, 0));

    // Memory moves when the payload fills its /dev/shm (tmpfs pages are charged to it).
    ok(
        "berthctl run -d --name sa2 -- /bin/sh -c 'sleep 2; dd if=/dev/zero of=/dev/shm/fill bs=1M count=20; sleep 1000'",
    );
    let before = u(&stats_of("sa2"), "memory_bytes");
    wait_until("sa2 to fill 20M", || {
        u(&stats_of("sa2"), "memory_bytes") >= before + 19 * MIB
    });
    let m = u(&stats_of("sa2"), "memory_bytes");
    let k = memory_current("sa2");
    assert!(m.abs_diff(k) < 2 * MIB, "stats {m}, cgroup {k}");

    // CPU moves when the payload burns it.
    ok("berthctl run -d --name sa3 -- /bin/sh -c 'while :; do :; done'");
    // (Loose bounds: the machine may be busy with other work; a busy loop still gets a fifth
    // of a CPU, an idle container nearly nothing.)
    std::thread::sleep(Duration::from_millis(500));
    let a = stats_of("sa3");
    std::thread::sleep(Duration::from_millis(1000));
    let b = stats_of("sa3");
    assert!(
        u(&b, "cpu_usage_ns") > u(&a, "cpu_usage_ns") + 150_000_000,
        "{a} {b}"
    );
    let pct = b["cpu_percent"].as_f64().unwrap();
    assert!(pct > 20.0 && pct < 210.0, "cpu_percent {pct}");
    // An idle container barely moves.
    let idle = stats_of("sa1")["cpu_percent"].as_f64().unwrap();
    assert!(idle < 5.0, "idle cpu_percent {idle}");

    // The table, and GetStats over the bus for another client.
    let table = ok("berthctl stats --no-stream sa1 sa3");
    assert!(
        table.starts_with("NAME") && table.contains("256.0MiB") && table.contains("2 / 64"),
        "{table}"
    );
    let busctl = ok(
        "busctl call org.berth.berth1 /org/berth/berth1 org.berth.berth1.Manager GetStats as 1 sa1",
    );
    let f: Vec<&str> = busctl.split_whitespace().collect();
    assert_eq!(
        &f[..4],
        ["a(ssttdttttttttt)", "1", "\"sa1\"", "\"running\""]
    );
    assert_eq!(f[8], (256 * MIB).to_string(), "{busctl}");
    assert_eq!(f[10], "64", "{busctl}");
    let o = sh(
        "gdbus call --system -d org.berth.berth1 -o /org/berth/berth1 -m org.berth.berth1.Manager.GetStats \"['nosuch']\" 2>&1",
    );
    assert!(
        out(&o).contains("org.berth.berth1.Error.NoSuchContainer"),
        "{}",
        out(&o)
    );
    assert_eq!(code("berthctl stats --no-stream nosuch"), 3);
    // Reading is for everyone (the bus policy allows GetStats), changing is not.
    assert_eq!(
        code("setpriv --reuid=65534 --regid=65534 --clear-groups berthctl stats --no-stream sa1"),
        0
    );
    assert_eq!(
        code("setpriv --reuid=65534 --regid=65534 --clear-groups berthctl set sa1 memory=1G"),
        7
    );
    ok("berthctl remove --force sa1 sa2 sa3");
}

#[test]
fn watch_stats_sends_signals_to_the_subscriber_until_it_unwatches() {
    ok("berthctl run -d --name ws1 -- sleep 1000");
    let script = include_str!("watch-stats.py");
    let o = sh_in("/usr/bin/python3 - 300 2.2", script);
    assert!(o.status.success(), "{}", err(&o));
    let v: serde_json::Value = serde_json::from_str(&out(&o)).expect("watch-stats.py JSON");
    assert_eq!(
        v["refused"], "org.berth.berth1.Error.InvalidArgument",
        "1 ms: {v}"
    );
    let unwatched = v["unwatched_at"].as_u64().unwrap();
    let unique = v["unique"].as_str().unwrap();
    let mut samples: Vec<u64> = Vec::new();
    for phase in ["during", "after"] {
        for sig in v[phase].as_array().unwrap() {
            // Unicast: addressed to the subscriber.
            assert_eq!(sig[2], unique, "{sig}");
            assert!(
                sig[3].as_array().unwrap().iter().any(|n| n == "ws1"),
                "{sig}"
            );
            let ts = sig[1].as_u64().unwrap();
            assert!(
                ts < unwatched,
                "a Stats signal sampled after UnwatchStats: {v}"
            );
            samples.push(ts);
        }
    }
    // 2.2 s at 300 ms: about 7 (the first sample takes 100 ms more to get a CPU rate).
    assert!(
        (5..=9).contains(&samples.len()),
        "{} signals: {v}",
        samples.len()
    );
    let gaps: Vec<u64> = samples.windows(2).map(|w| w[1] - w[0]).collect();
    let mean = gaps.iter().sum::<u64>() / gaps.len() as u64;
    assert!((250_000..=400_000).contains(&mean), "gaps {gaps:?}");
    ok("berthctl remove --force ws1");
}

#[test]
fn bad_resource_input_is_refused_and_changes_nothing() {
    ok("berthctl run -d --name bad1 --memory 64M --cpus 0.5 --pids-limit 50 -- sleep 1000");
    ok("berthctl create --name bad2 -- true && berthctl start --wait bad2");
    let kernel = kernel_limits("bad1");
    assert_eq!(kernel, (Some(64 * MIB), Some((50_000, 100_000)), Some(50)));
    let def = definition("bad1");
    let res = prop("bad1", "Resources");
    let before = leftovers();
    let mut cases: Vec<(&str, i32, &str)> = vec![
        ("berthctl set bad1 memory=-1", 4, "memory"),
        ("berthctl set bad1 memory=0", 4, "memory"),
        ("berthctl set bad1 memory=1.5G", 4, "memory"),
        ("berthctl set bad1 cpus=abc", 4, "cpus"),
        ("berthctl set bad1 cpus=0", 4, "cpus"),
        ("berthctl set bad1 pids=99999999999999999999", 4, "pids"),
        ("berthctl set bad1 cpu-weight=0", 4, "cpu-weight"),
        ("berthctl set bad1 bogus=1", 4, "bogus"),
        ("berthctl set bad1 devices=/dev/fuse", 4, "devices"),
        ("berthctl set bad1 network-rate=1M", 4, "network-rate"),
        // All or nothing: the valid first assignment is not applied either.
        ("berthctl set bad1 memory=128M pids=abc", 4, "pids"),
        ("berthctl set bad1 memory", 4, "KEY=VALUE"),
        ("berthctl set nosuch memory=1G", 3, "nosuch"),
        ("berthctl set bad2 memory=1G", 5, "not running"),
        (
            "berthctl create --name x1 --device /dev/nonexistent",
            4,
            "/dev/nonexistent",
        ),
        (
            "berthctl create --name x1 --device /etc/passwd",
            4,
            "under /dev",
        ),
        ("berthctl create --name x1 --device /dev/null:rwx", 4, "rwm"),
        (
            "berthctl create --name x1 --network-rate 1M",
            4,
            "network-rate",
        ),
        ("berthctl create --name x1 --memory 0", 4, "memory"),
        ("berthctl create --name x1 --cpus abc", 4, "cpus"),
        ("berthctl create --name x1 --pids-limit=-5", 4, "pids"),
        ("berthctl create --name x1 --cpuset 4096", 4, "cpuset"),
        (
            "berthctl create --name x1 --device-read-bps /dev/null:1M",
            4,
            "block",
        ),
        (
            "berthctl run --rm --name x1 --memory=-1 -- true",
            125,
            "memory",
        ),
    ];
    if layout() == Layout::Hybrid {
        // systemd would take these and apply nothing with v1 controllers.
        cases.extend([
            ("berthctl set bad1 cpuset=0", 4, "unified"),
            ("berthctl set bad1 memory-high=32M", 4, "unified"),
            ("berthctl create --name x1 --memory-swap 1M", 4, "unified"),
        ]);
    }
    for (cmd, want, says) in cases {
        let o = sh(cmd);
        assert_eq!(o.status.code(), Some(want), "`{cmd}`: {}", err(&o));
        let e = err(&o);
        assert!(
            e.starts_with("berthctl: ") && e.contains(says) && !e.contains("panicked"),
            "`{cmd}`: {e}"
        );
        assert_eq!(e.lines().count(), 1, "`{cmd}`: {e}");
        assert_eq!(kernel_limits("bad1"), kernel, "`{cmd}` changed the scope");
        assert_eq!(definition("bad1"), def, "`{cmd}` changed the definition");
        assert_eq!(prop("bad1", "Resources"), res, "`{cmd}` changed Resources");
        assert_eq!(leftovers(), before, "`{cmd}` left something behind");
    }
    // Typed errors on the bus.
    for (args, error) in [
        ("bad1 \"[('cpus', 'abc')]\" false", "InvalidArgument"),
        ("nosuch \"[('memory', '1G')]\" false", "NoSuchContainer"),
        ("bad2 \"[('memory', '1G')]\" true", "InvalidState"),
    ] {
        let o = sh(&format!(
            "gdbus call --system -d org.berth.berth1 -o /org/berth/berth1 -m org.berth.berth1.Manager.SetResources {args} 2>&1"
        ));
        assert!(
            out(&o).contains(&format!("org.berth.berth1.Error.{error}")),
            "{args}: {}",
            out(&o)
        );
    }
    assert_eq!(kernel_limits("bad1"), kernel);
    ok("berthctl remove --force bad1 bad2");
}
