//! Integration tests: berth installed in a disposable systemd host (tests/host/), driven
//! through the real berthctl, bus, systemctl and kernel. Run by tests/run-integration.sh,
//! which boots the host and sets BERTH_TEST_HOST; without it these tests fail, never skip.

mod common;

use common::*;
use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn payload_gets_its_own_namespaces_hostname_and_dev() {
    let inside = ok(
        "berthctl run --rm --name ns1 -- /bin/sh -c 'for n in pid mnt uts ipc net cgroup; do readlink /proc/self/ns/$n; done'",
    );
    let outside = ok("for n in pid mnt uts ipc net cgroup; do readlink /proc/self/ns/$n; done");
    for (i, o) in inside.lines().zip(outside.lines()) {
        assert_ne!(i, o, "namespace shared with the host");
    }
    assert_eq!(inside.lines().count(), 6);
    assert_eq!(ok("berthctl run --rm --name hn1 -- hostname"), "hn1");
    assert_eq!(
        ok("berthctl run --rm --name hn2 --hostname other -- hostname"),
        "other"
    );
    // With --network none only loopback, and it is up (the default, a bridge network, is
    // tests/network-integration.rs's).
    let links = ok(
        "berthctl run --rm --network none -- /bin/sh -c 'ls /sys/class/net; cat /sys/class/net/lo/operstate /sys/class/net/lo/flags'",
    );
    assert!(links.starts_with("lo\n"), "{links}");
    assert!(links.ends_with("0x9"), "lo is not up: {links}");
    let dev = ok("berthctl run --rm -- ls /dev");
    for d in [
        "null", "zero", "full", "random", "urandom", "tty", "pts", "ptmx", "shm",
    ] {
        assert!(dev.lines().any(|l| l == d), "/dev/{d} missing: {dev}");
    }
    // PID 1 is berth's init, the payload is PID 2; /sys is read-only; /proc/sys too.
    assert_eq!(ok("berthctl run --rm -- /bin/sh -c 'echo $$'"), "2");
    assert_eq!(code("berthctl run --rm -- /bin/sh -c 'touch /sys/x'"), 1);
    assert_eq!(
        code("berthctl run --rm -- /bin/sh -c 'echo 1 > /proc/sys/kernel/shmmax'"),
        1
    );
}

#[test]
fn scope_is_delegated_in_machine_slice_and_goes_away() {
    ok("berthctl run -d --name sc1 -- sleep 1000");
    assert_eq!(prop("sc1", "State"), "running");
    let leader = prop("sc1", "Leader");
    let cg = ok(&format!("cat /proc/{leader}/cgroup"));
    assert!(
        cg.lines()
            .any(|l| l.ends_with(":/machine.slice/berth-sc1.scope")),
        "{cg}"
    );
    assert_eq!(
        ok("systemctl show -p Delegate --value berth-sc1.scope"),
        "yes"
    );
    assert_eq!(
        ok("systemctl show -p Slice --value berth-sc1.scope"),
        "machine.slice"
    );
    // The payload sees its own cgroup as the root (cgroup namespace).
    assert!(
        ok("berthctl run --rm -- cat /proc/self/cgroup")
            .lines()
            .all(|l| l.ends_with(":/"))
    );
    let status = ok("berthctl status sc1");
    assert!(
        status.contains("berth-sc1.scope") && status.contains("sleep 1000"),
        "{status}"
    );
    ok("berthctl stop sc1");
    assert_eq!(prop("sc1", "State"), "exited");
    assert_eq!(prop("sc1", "ExitStatus"), "143");
    assert_eq!(
        ok("systemctl show -p LoadState --value berth-sc1.scope"),
        "not-found"
    );
    assert_ne!(code(&format!("test -e /proc/{leader}")), 0);
    ok("berthctl remove sc1");
}

#[test]
fn writes_go_to_the_container_layer_never_to_the_image() {
    ok("rm -rf /srv/img1 && cp -a /usr/local/lib/berth/images/default /srv/img1");
    let before = ok("cd /srv/img1 && find . -printf '%p %s %m\\n' | sort | md5sum");
    ok(
        "berthctl create --name wr1 -D /srv/img1 -- /bin/sh -c 'test -e /marker && echo again; echo x > /marker; rm /etc/passwd; rm -rf /bin/ls'",
    );
    ok("berthctl start --wait wr1");
    assert_eq!(
        ok("cd /srv/img1 && find . -printf '%p %s %m\\n' | sort | md5sum"),
        before
    );
    // The writable layer survives a restart of the same container.
    let o = sh("berthctl start --wait wr1; cat /var/lib/berth/containers/wr1/upper/marker");
    assert_eq!(out(&o), "x");
    ok("berthctl remove wr1");
    assert_ne!(code("test -e /var/lib/berth/containers/wr1"), 0);
}

#[test]
fn exit_codes_propagate_and_zombies_are_reaped() {
    assert_eq!(code("berthctl run --rm -- /bin/sh -c 'exit 42'"), 42);
    assert_eq!(code("berthctl run --rm -- /bin/sh -c 'kill -9 $$'"), 137);
    assert_eq!(code("berthctl run --rm -- /bin/true"), 0);
    // A payload that exits at once is removed before berthctl asks for its status: still 0.
    assert_eq!(
        ok("for i in $(seq 40); do berthctl run --rm -- /bin/true || echo FAIL $?; done"),
        ""
    );
    // Orphans are re-parented to PID 1, which must reap them.
    let stats = ok(
        "berthctl run --rm -- /bin/sh -c '(sleep 0.2 &); (sleep 0.2 &); sleep 1.5; cat /proc/[0-9]*/stat'",
    );
    assert!(stats.lines().count() >= 2, "{stats}");
    assert!(
        !stats.lines().any(|l| l.contains(") Z ")),
        "zombie left: {stats}"
    );
    // --rm leaves nothing.
    assert_eq!(
        ok("ls /var/lib/berth/containers | grep -c . || true"),
        ok("berthctl list -a -o json | grep -c '\"name\"' || true")
    );
}

#[test]
fn stop_kill_and_signals() {
    ok("berthctl run -d --name st1 -- /bin/sh -c 'trap \"\" TERM; while :; do sleep 0.1; done'");
    let t = Instant::now();
    ok("berthctl stop --timeout 1 st1");
    assert!(t.elapsed() >= Duration::from_millis(900));
    assert_eq!(prop("st1", "ExitStatus"), "137");
    ok("berthctl remove st1");

    ok(
        "berthctl run -d --name k1 -- /bin/sh -c 'trap \"exit 3\" USR1; while :; do sleep 0.1; done'",
    );
    std::thread::sleep(Duration::from_millis(300));
    ok("berthctl kill -s USR1 k1");
    wait_until("k1 to exit", || prop("k1", "State") == "exited");
    assert_eq!(prop("k1", "ExitStatus"), "3");
    ok("berthctl remove k1");

    ok("berthctl run -d --name k2 -- sleep 1000");
    ok("berthctl kill --all -s KILL k2");
    wait_until("k2 to exit", || prop("k2", "State") == "exited");
    ok("berthctl remove k2");
}

#[test]
fn json_views_have_stable_keys() {
    ok("berthctl run -d --name js1 -- sleep 1000");
    let list = ok("berthctl list -o json");
    let status = ok("berthctl status -o json js1");
    for key in [
        "\"name\"",
        "\"state\"",
        "\"unit\"",
        "\"leader\"",
        "\"image\"",
        "\"exit_status\"",
        "\"created_at\"",
    ] {
        assert!(
            list.contains(key) && status.contains(key),
            "{key} missing: {list}"
        );
    }
    assert!(status.contains("\"state\": \"running\""), "{status}");
    ok("berthctl remove --force js1");
    assert!(!ok("berthctl list -a").contains("js1"));
}

#[test]
fn bad_input_is_refused_cleanly() {
    ok("berthctl create --name busy1 -- sleep 1000 && berthctl start busy1");
    ok("touch /srv/afile");
    let before = leftovers();
    let long = "a".repeat(65);
    let cases: Vec<(String, i32)> = vec![
        ("berthctl create --name ''".into(), 4),
        ("berthctl create --name /".into(), 4),
        ("berthctl create --name ..".into(), 4),
        (format!("berthctl create --name {long}"), 4),
        ("berthctl create --name héllo".into(), 4),
        ("berthctl create --name busy1".into(), 6),
        ("berthctl create --name x1 -D /nonexistent".into(), 4),
        ("berthctl create --name x1 -D /srv/afile".into(), 4),
        ("berthctl create --name x1 --image nosuch".into(), 3),
        (
            "berthctl run --rm --name x1 -- /no/such/command".into(),
            127,
        ),
        ("berthctl run --name x1 -- nosuchcmd".into(), 127),
        ("berthctl stop nosuch".into(), 3),
        ("berthctl kill nosuch".into(), 3),
        ("berthctl remove nosuch".into(), 3),
        ("berthctl remove busy1".into(), 5),
        ("berthctl start busy1".into(), 5),
        ("berthctl create --name x1 --property Bogus=1".into(), 4),
        (
            "berthctl create --name x1 --property MemoryMax=-1".into(),
            4,
        ),
        (
            "berthctl create --name x1 --property TasksMax=99999999999999999999".into(),
            4,
        ),
        (
            "berthctl create --name x1 --property CPUQuota=abc".into(),
            4,
        ),
        ("berthctl kill -s NOPE busy1".into(), 4),
        (
            "berthctl run --name x1 --property Bogus=1 -- true".into(),
            125,
        ),
    ];
    for (cmd, want) in cases {
        let o = sh(&cmd);
        assert_eq!(o.status.code(), Some(want), "`{cmd}`: {}", err(&o));
        assert!(
            err(&o).starts_with("berthctl: ") && !err(&o).contains("panicked"),
            "`{cmd}`: {}",
            err(&o)
        );
        assert_eq!(leftovers(), before, "`{cmd}` left something behind");
    }
    // Typed errors on the bus.
    let o = sh(
        "busctl call org.berth.berth1 /org/berth/berth1 org.berth.berth1.Manager StopContainer st nosuch 0",
    );
    assert!(
        err(&o).contains("no container named") || out(&o).contains("NoSuchContainer"),
        "{}",
        err(&o)
    );
    let o = sh(
        "gdbus call --system -d org.berth.berth1 -o /org/berth/berth1 -m org.berth.berth1.Manager.CreateContainer .. {} 2>&1",
    );
    assert!(
        out(&o).contains("org.berth.berth1.Error.InvalidArgument"),
        "{}",
        out(&o)
    );
    ok("berthctl remove --force busy1");
}

#[test]
fn berthd_restart_loses_nothing() {
    ok("berthctl run -d --name rs1 -- sleep 1000");
    ok("berthctl run -d --name rs2 -- /bin/sh -c 'sleep 2; exit 5'");
    let leader = prop("rs1", "Leader");
    let old = ok("systemctl show -p MainPID --value berthd");
    ok("systemctl kill -s KILL berthd");
    wait_until("berthd to come back", || {
        let pid = ok("systemctl show -p MainPID --value berthd");
        pid != old && pid != "0" && code("berthctl list >/dev/null") == 0
    });
    assert_eq!(prop("rs1", "State"), "running");
    assert_eq!(prop("rs1", "Leader"), leader);
    // rs2 exits while (or after) berthd was away; its status is still known.
    wait_until("rs2 to exit", || prop("rs2", "State") == "exited");
    assert_eq!(prop("rs2", "ExitStatus"), "5");
    ok("berthctl stop rs1");
    assert_eq!(prop("rs1", "State"), "exited");
    ok("berthctl remove rs1 rs2");
}

#[test]
fn exit_while_berthd_is_down_is_recorded() {
    ok("berthctl run -d --name dn1 -- sleep 1000");
    let leader = prop("dn1", "Leader");
    // Stop berthd's restart from racing us: kill it and the container's payload at once.
    ok("systemctl kill -s KILL berthd");
    ok(&format!("kill -TERM {leader}"));
    wait_until("berthd to come back", || {
        code("berthctl list >/dev/null 2>&1") == 0
    });
    wait_until("dn1 to be seen exited", || prop("dn1", "State") == "exited");
    assert_eq!(prop("dn1", "ExitStatus"), "143");
    assert_eq!(
        ok("systemctl show -p LoadState --value berth-dn1.scope"),
        "not-found"
    );
    ok("berthctl remove dn1");
}

#[test]
fn template_unit_runs_a_defined_container() {
    ok("berthctl create --name svc1 -- /bin/sh -c 'sleep 0.5; exit 3'");
    let _ = sh("systemctl start berth@svc1");
    wait_until("berth@svc1 to finish", || {
        ok("systemctl show -p ActiveState --value berth@svc1") != "active"
    });
    assert_eq!(
        ok("systemctl show -p ExecMainStatus --value berth@svc1"),
        "3"
    );
    ok("berthctl create --name svc2 -- sleep 1000");
    ok("systemctl start berth@svc2");
    wait_until("svc2 to run", || prop("svc2", "State") == "running");
    ok("systemctl stop berth@svc2");
    assert_eq!(prop("svc2", "State"), "exited");
    ok("systemctl reset-failed 'berth@*' || true; berthctl remove svc1 svc2");
}

#[test]
fn unprivileged_users_may_read_but_not_act() {
    ok("berthctl create --name pv1 -- true");
    assert_eq!(
        code("setpriv --reuid=65534 --regid=65534 --clear-groups berthctl list -a >/dev/null"),
        0
    );
    assert_eq!(
        code("setpriv --reuid=65534 --regid=65534 --clear-groups berthctl remove pv1"),
        7
    );
    assert_eq!(
        code("setpriv --reuid=65534 --regid=65534 --clear-groups berthctl create --name pv2"),
        7
    );
    ok("berthctl remove pv1");
}

#[test]
fn published_interfaces_match_what_berthd_serves() {
    let root = env!("CARGO_MANIFEST_DIR");
    ok("berthctl create --name if1 -- true");
    for (iface, path) in [
        ("org.berth.berth1.Manager", "/org/berth/berth1"),
        (
            "org.berth.berth1.Container",
            "/org/berth/berth1/container/if1",
        ),
        ("org.berth.berth1.Image", "/org/berth/berth1/image/default"),
    ] {
        // Extract outside the host: its /tmp is its own, and the checkout may live there.
        let xml = ok(&format!(
            "busctl introspect --xml-interface org.berth.berth1 {path}"
        ));
        let mut py = Command::new("python3")
            .args([format!("{root}/tests/extract-interface.py").as_str(), iface])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3");
        std::io::Write::write_all(&mut py.stdin.take().unwrap(), xml.as_bytes()).unwrap();
        let served = String::from_utf8(py.wait_with_output().unwrap().stdout).unwrap();
        let published =
            std::fs::read_to_string(format!("{root}/dbus-interfaces/{iface}.xml")).unwrap();
        assert_eq!(
            served.trim(),
            published.trim(),
            "{iface} drifted from dbus-interfaces/"
        );
    }
    ok("berthctl remove if1");
}

#[test]
fn bus_signals_announce_new_removed_and_state_changes() {
    // A real client on the bus, listening while a container comes and goes.
    let o = sh(
        "timeout 6 gdbus monitor --system -d org.berth.berth1 > /tmp/mon.log 2>&1 & sleep 1; \
                berthctl run --rm --name sig1 -- /bin/true; sleep 1; kill %1 2>/dev/null; cat /tmp/mon.log",
    );
    let log = out(&o);
    assert!(
        log.contains("org.berth.berth1.Manager.ContainerNew ('sig1'"),
        "{log}"
    );
    assert!(
        log.contains("org.berth.berth1.Manager.ContainerRemoved ('sig1'"),
        "{log}"
    );
    assert!(
        log.contains("'State': <'running'>") && log.contains("'State': <'exited'>"),
        "{log}"
    );
    assert!(
        log.contains("org.freedesktop.DBus.ObjectManager.InterfacesAdded"),
        "{log}"
    );
}

#[test]
fn containers_cannot_load_modules_read_kernel_logs_or_set_the_clock() {
    // berthd.service's ProtectKernelModules/ProtectKernelLogs/ProtectClock reach every container.
    let capbnd = ok("berthctl run --rm -- /bin/sh -c 'grep CapBnd /proc/self/status'");
    let mask = u64::from_str_radix(capbnd.split_whitespace().last().unwrap(), 16).unwrap();
    for (cap, bit) in [("CAP_SYS_MODULE", 16), ("CAP_SYSLOG", 34)] {
        assert_eq!(mask & (1 << bit), 0, "{cap} in the bounding set: {capbnd}");
    }
    // busybox date exits 0 even when settimeofday fails: check the clock itself.
    let year = ok("berthctl run --rm -- /bin/sh -c 'date -s 2000-01-01 >/dev/null 2>&1; date +%Y'");
    assert_ne!(year, "2000", "a container set the clock");
}

#[test]
fn init_holds_no_host_descriptors() {
    // PID 1 keeps only the container's /dev/null on 0-2 and its exit-status memfd. It is not
    // dumpable, so the container cannot look: read its descriptors from the host. Right after
    // exec it may still hold the exec-status pipe for a moment: wait, and skip an fd that
    // closes between the glob and readlink (it is not held).
    ok("berthctl run -d --name initfd -- sleep 100");
    let leader = prop("initfd", "Leader");
    let fds = ok(&format!(
        "sleep 0.2; for f in /proc/{leader}/fd/*; do readlink $f || true; done"
    ));
    assert!(!fds.is_empty());
    for l in fds.lines() {
        assert!(
            l == "/dev/null" || l.starts_with("/memfd:berth-exit"),
            "PID 1 holds {l}: {fds}"
        );
    }
    ok("berthctl rm -f initfd");
}
