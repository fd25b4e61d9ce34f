//! Readiness (`--notify-ready`), restart policies, `events` and `wait`, in the disposable
//! systemd host (tests/run-integration.sh sets BERTH_TEST_HOST and BERTH_FIXTURES); without
//! it these tests fail, never skip.

mod common;

use common::*;
use serde_json::Value;
use std::time::{Duration, Instant};

/// The image of these tests: the default image plus `/notify`, a static sd_notify client
/// (tests/probe/notify.c), compiled here when the fixtures lack it.
fn life_image() {
    if code("berthctl image show life >/dev/null 2>&1") == 0 {
        return;
    }
    let fix = std::env::var("BERTH_FIXTURES").expect("BERTH_FIXTURES (tests/run-integration.sh)");
    let bin = format!("{fix}/notify");
    if !std::path::Path::new(&bin).exists() {
        let src = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/probe/notify.c");
        let st = std::process::Command::new("gcc")
            .args(["-static", "-O2", "-Wall", "-o", &bin, src])
            .status()
            .expect("gcc");
        assert!(st.success(), "cannot compile {src}");
    }
    ok(&format!(
        "rm -rf /tmp/life-root && cp -a /usr/local/lib/berth/images/default /tmp/life-root \
         && cp {bin} /tmp/life-root/notify && berthctl image import-fs /tmp/life-root life >/dev/null"
    ));
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Start `berthctl events ARGS` in the background, writing to FILE; returns once it listens.
fn events_to(file: &str, args: &str) {
    ok(&format!(
        "rm -f {file} {file}.err; (berthctl events {args} > {file} 2> {file}.err & echo $! > {file}.pid); \
         for i in $(seq 100); do grep -q listening {file}.err && exit 0; sleep 0.05; done; cat {file}.err; exit 1"
    ));
}

/// Stop the event stream [`events_to`] started for `file`.
fn stop_events(file: &str) {
    ok(&format!("kill $(cat {file}.pid)"));
}

fn events_of(file: &str) -> Vec<Value> {
    ok(&format!("cat {file}"))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}

#[test]
fn notify_ready_waits_for_ready_1_and_shows_the_status_text() {
    life_image();
    let t = Instant::now();
    ok(
        "berthctl run -d --name rdy1 --notify-ready --image life -- /bin/sh -c \
        'sleep 1.5; /notify STATUS=warming; sleep 1; /notify READY=1 STATUS=serving; exec sleep 1000'",
    );
    // Running at once (exec succeeded), ready only after READY=1.
    assert_eq!(prop("rdy1", "State"), "running");
    assert_eq!(prop("rdy1", "Ready"), "no");
    assert_eq!(prop("rdy1", "NotifyReady"), "yes");
    wait_for("STATUS=warming", Duration::from_secs(10), || {
        prop("rdy1", "StatusText") == "warming"
    });
    assert_eq!(prop("rdy1", "Ready"), "no", "ready before READY=1");
    assert!(
        ok("berthctl status rdy1").contains("Ready: no (waiting for READY=1)"),
        "{}",
        ok("berthctl status rdy1")
    );
    wait_for("READY=1", Duration::from_secs(10), || {
        prop("rdy1", "Ready") == "yes"
    });
    assert!(
        t.elapsed() >= Duration::from_millis(2400),
        "ready after {:?}, before the payload said so",
        t.elapsed()
    );
    let status = ok("berthctl status rdy1");
    assert!(status.contains("Ready: yes"), "{status}");
    assert!(status.contains("Notify: serving"), "{status}");
    // The socket is what the payload (PID 2, under berth's init) sees, and only with
    // --notify-ready.
    assert_eq!(
        ok(
            "berthctl exec rdy1 -- /bin/sh -c 'tr \\\\0 \\\\n < /proc/2/environ | grep ^NOTIFY_SOCKET=; test -S /run/host/notify/notify && echo socket'"
        ),
        "NOTIFY_SOCKET=/run/host/notify/notify\nsocket"
    );
    assert_eq!(
        ok(
            "berthctl run --rm -- /bin/sh -c 'echo ${NOTIFY_SOCKET:-unset}; ls /run/host/notify 2>&1 | wc -l'"
        ),
        "unset\n1"
    );
    // A restarted berthd binds the socket again: the running payload still reaches it.
    ok("systemctl restart berthd");
    assert_eq!(
        prop("rdy1", "Ready"),
        "yes",
        "readiness lost over a restart"
    );
    ok(
        "berthctl exec rdy1 -- /bin/sh -c 'NOTIFY_SOCKET=/run/host/notify/notify /notify STATUS=again'",
    );
    wait_for(
        "STATUS after a berthd restart",
        Duration::from_secs(10),
        || prop("rdy1", "StatusText") == "again",
    );
    // Once it exits it is not ready any more.
    ok("berthctl stop -t 1 rdy1");
    assert_eq!(prop("rdy1", "Ready"), "no");
    ok("berthctl rm rdy1");
    // Without --notify-ready a container is ready when its command was executed.
    ok("berthctl run -d --name rdy2 -- sleep 1000");
    assert_eq!(prop("rdy2", "Ready"), "yes");
    assert_eq!(prop("rdy2", "NotifyReady"), "no");
    ok("berthctl rm -f rdy2");
}

#[test]
fn bad_lifecycle_input_is_refused_and_changes_nothing() {
    let before = leftovers();
    for (cmd, exit) in [
        ("berthctl create --name bad1 --restart=sometimes -- true", 4),
        (
            "berthctl create --name bad1 --restart=on-failure:x -- true",
            4,
        ),
        ("berthctl create --name bad1 --restart=always:3 -- true", 4),
        (
            "berthctl create --rm --name bad1 --restart=always -- true",
            4,
        ),
        ("berthctl events --filter bogus=1", 4),
        ("berthctl events --filter type=volume", 4),
    ] {
        let o = sh(cmd);
        assert_eq!(o.status.code(), Some(exit), "{cmd}: {}", err(&o));
        assert!(!err(&o).is_empty(), "{cmd} said nothing");
    }
    assert_eq!(leftovers(), before);
    // Through the bus too: a typed error.
    let o = sh(
        "busctl call org.berth.berth1 /org/berth/berth1 org.berth.berth1.Manager CreateContainer \
         'sa{sv}' bad2 1 Restart s never",
    );
    assert!(
        err(&o).contains("restart policy") && !o.status.success(),
        "{}",
        err(&o)
    );
    assert_eq!(leftovers(), before);
}

#[test]
fn on_failure_restarts_with_a_growing_back_off_and_stops_after_n() {
    events_to(
        "/tmp/ev-rs.json",
        "-o json --filter container=rs1 --filter event=start",
    );
    ok("berthctl create --name rs1 --restart=on-failure:4 -- /bin/sh -c 'exit 3'");
    assert_eq!(prop("rs1", "RestartPolicy"), "on-failure:4");
    ok("berthctl start rs1");
    wait_for("four restarts", Duration::from_secs(20), || {
        prop("rs1", "RestartCount") == "4" && prop("rs1", "State") == "exited"
    });
    // No fifth: the bound holds.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(prop("rs1", "RestartCount"), "4");
    assert_eq!(prop("rs1", "State"), "exited");
    assert_eq!(prop("rs1", "ExitStatus"), "3");
    assert_eq!(prop("rs1", "NextRestartAt"), "0");
    stop_events("/tmp/ev-rs.json");
    let starts: Vec<u64> = events_of("/tmp/ev-rs.json")
        .iter()
        .map(|e| e["Time"].as_u64().unwrap())
        .collect();
    assert_eq!(starts.len(), 5, "{starts:?}");
    let gaps: Vec<u64> = starts.windows(2).map(|w| (w[1] - w[0]) / 1000).collect();
    eprintln!("on-failure back-off, ms between starts: {gaps:?}");
    for (i, g) in gaps.iter().enumerate() {
        let want = 100u64 << i;
        assert!(
            *g >= want,
            "restart {i} after {g} ms, before its back-off {want} ms"
        );
    }
    assert!(
        gaps[3] > gaps[0] * 3,
        "the back-off does not grow: {gaps:?}"
    );
    // A user start counts anew.
    ok("berthctl start rs1");
    // Below 4 again: it climbs back within 1.5 s (100+200+400+800 ms), a window one read per
    // poll does not miss under load (0 or 1 alone lasts 300 ms).
    wait_for("the count to start over", Duration::from_secs(10), || {
        prop("rs1", "RestartCount").parse::<u32>().unwrap() < 4
    });
    ok("berthctl stop rs1 && berthctl rm rs1");
    // A clean exit is no failure.
    ok("berthctl create --name rs2 --restart=on-failure -- true && berthctl start rs2");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(prop("rs2", "RestartCount"), "0");
    assert_eq!(prop("rs2", "State"), "exited");
    ok("berthctl rm rs2");
}

#[test]
fn always_restarts_until_the_user_stops_it_and_survives_berthd_restarts() {
    ok("berthctl create --name al1 --restart=always -- /bin/sh -c 'sleep 0.3'");
    ok("berthctl start al1");
    wait_for("two restarts", Duration::from_secs(20), || {
        prop("al1", "RestartCount").parse::<u32>().unwrap() >= 2
    });
    // `berthctl stop` is a stop by the user, also when it lands in a back-off.
    ok("berthctl stop -t 1 al1");
    let n = prop("al1", "RestartCount");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(prop("al1", "State"), "exited");
    assert_eq!(
        prop("al1", "RestartCount"),
        n,
        "restarted after a user stop"
    );

    // A crash loop goes on across a kill -9 of berthd.
    ok("berthctl create --name cl1 --restart=on-failure -- /bin/sh -c 'sleep 0.5; exit 1'");
    ok("berthctl start cl1");
    wait_for("a restart", Duration::from_secs(20), || {
        prop("cl1", "RestartCount") != "0"
    });
    ok("systemctl kill -s KILL berthd; sleep 0.3; systemctl start berthd");
    let n: u32 = prop("cl1", "RestartCount").parse().unwrap();
    wait_for(
        "restarts after berthd came back",
        Duration::from_secs(30),
        || prop("cl1", "RestartCount").parse::<u32>().unwrap() > n,
    );
    ok("berthctl stop -t 1 cl1 && berthctl rm cl1");

    // When berthd starts: `always` starts again even after a user stop (as docker's daemon
    // does), `unless-stopped` only when the user did not stop it.
    ok("berthctl create --name us1 --restart=unless-stopped -- sleep 1000 && berthctl start us1");
    ok("berthctl stop -t 1 us1");
    ok("berthctl create --name us2 --restart=unless-stopped -- sleep 1000 && berthctl start us2");
    ok("systemctl stop berthd");
    // us2 dies while berthd is down (not by the user): it is started again.
    ok("systemctl kill -s KILL berth-us2.scope; sleep 0.5; systemctl start berthd");
    wait_for(
        "al1 and us2 started by berthd",
        Duration::from_secs(20),
        || prop("al1", "State") == "running" && prop("us2", "State") == "running",
    );
    assert_eq!(
        prop("us1", "State"),
        "exited",
        "a user-stopped unless-stopped started"
    );
    // The user stop marker of unless-stopped is persistent (it survives reboots).
    ok("test -e /var/lib/berth/life/us1.stopped");
    ok("berthctl rm -f al1 us1 us2");
    ok("! ls /var/lib/berth/life/ /run/berth/life/ 2>/dev/null | grep -E '^(al1|us1|us2)\\.'");
}

#[test]
fn events_see_a_start_an_oom_and_a_removal() {
    events_to("/tmp/ev-all.json", "-o json");
    events_to("/tmp/ev-img.txt", "--filter type=image");
    events_to("/tmp/ev-text.txt", "--filter container=oom1");
    ok("berthctl run -d --name oom1 --memory 32M -- /bin/sh -c \
        'sleep 0.5; s=xxxxxxxxxxxxxxxx; while :; do s=$s$s; done'");
    wait_for("the OOM kill", Duration::from_secs(20), || {
        prop("oom1", "OOMKills") != "0" && prop("oom1", "State") == "exited"
    });
    ok("berthctl rm oom1");
    std::thread::sleep(Duration::from_millis(500));
    for f in ["/tmp/ev-all.json", "/tmp/ev-img.txt", "/tmp/ev-text.txt"] {
        stop_events(f);
    }
    let all = events_of("/tmp/ev-all.json");
    let mine: Vec<&Value> = all.iter().filter(|e| e["Name"] == "oom1").collect();
    let st: Vec<&str> = mine.iter().map(|e| e["Status"].as_str().unwrap()).collect();
    let at = |s: &str| {
        st.iter()
            .position(|x| *x == s)
            .unwrap_or_else(|| panic!("no {s} in {st:?}"))
    };
    assert!(at("create") < at("start"), "{st:?}");
    assert!(at("start") < at("oom"), "{st:?}");
    assert!(at("oom") < at("remove"), "{st:?}");
    assert!(at("died") < at("remove"), "{st:?}");
    let died = mine.iter().find(|e| e["Status"] == "died").unwrap();
    assert_eq!(died["ContainerExitCode"], 137, "{died}");
    assert!(mine.iter().all(|e| e["Type"] == "container"));
    // Filters: no container event under type=image; the text form is podman's.
    assert_eq!(ok("cat /tmp/ev-img.txt"), "");
    let text = ok("cat /tmp/ev-text.txt");
    assert!(
        text.lines()
            .any(|l| l.ends_with("container oom oom1 (oomKills=1)")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.contains(" +0000 UTC container died oom1 (exitCode=137)")),
        "{text}"
    );
    assert!(text.lines().all(|l| l.contains(" oom1")), "{text}");
}

#[test]
fn wait_returns_each_exit_status_in_order() {
    ok("berthctl run -d --name w1 -- /bin/sh -c 'sleep 0.5; exit 3'");
    ok("berthctl run -d --name w2 -- /bin/sh -c 'sleep 1; exit 5'");
    assert_eq!(ok("berthctl wait w1 w2"), "3\n5");
    let o = sh("berthctl wait nosuch");
    assert_eq!(o.status.code(), Some(3), "{}", err(&o));
    ok("berthctl rm w1 w2");
}

#[test]
fn readiness_restart_and_events_add_no_process_per_container() {
    life_image();
    let berthd = || ok("systemctl show -p MainPID --value berthd");
    let census = |pid: &str| {
        ok(&format!(
            "echo $(ls /proc/{pid}/task | wc -l) $(ps -o pid= --ppid {pid} | wc -l) $(ps -e -o pid= | wc -l)"
        ))
    };
    let pid = berthd();
    let parse = |s: String| -> Vec<i64> { s.split(' ').map(|x| x.parse().unwrap()).collect() };
    let before = parse(census(&pid));
    for i in 0..5 {
        ok(&format!(
            "berthctl run -d --name np{i} --notify-ready --restart=always --image life -- \
             /bin/sh -c '/notify READY=1; exec sleep 1000'"
        ));
    }
    wait_for("all ready", Duration::from_secs(20), || {
        (0..5).all(|i| prop(&format!("np{i}"), "Ready") == "yes")
    });
    let after = parse(census(&pid));
    eprintln!(
        "5 containers with --notify-ready --restart=always: berthd threads {} → {}, children {} → {}, processes in the host {} → {}",
        before[0], after[0], before[1], after[1], before[2], after[2]
    );
    // No thread per container either (the runtime's blocking pool is shared and bounded);
    // each scope holds only the container's init and payload.
    // berthd's children are the containers' own inits (re-parented to it, the subreaper,
    // when their helper exits), one each; the machine gained their init and payload only.
    assert_eq!(
        after[1] - before[1],
        5,
        "berthd children {before:?} → {after:?}"
    );
    assert_eq!(after[2] - before[2], 10, "processes {before:?} → {after:?}");
    assert!(
        after[0] <= before[0] + 4,
        "berthd threads {before:?} → {after:?}"
    );
    for i in 0..5 {
        assert_eq!(
            ok(&format!(
                "systemctl show -p TasksCurrent --value berth-np{i}.scope"
            )),
            "2",
            "np{i}"
        );
    }
    ok("berthctl rm -f np0 np1 np2 np3 np4");
    // Start cost: the same command with and without --notify-ready --restart, in one run.
    let time = |flags: &str| {
        let t = Instant::now();
        for i in 0..5 {
            ok(&format!(
                "berthctl run -d --name sp{i} {flags} -- sleep 1000"
            ));
        }
        let e = t.elapsed() / 5;
        ok("berthctl rm -f sp0 sp1 sp2 sp3 sp4");
        e
    };
    let plain = time("");
    let life = time("--notify-ready --restart=always");
    eprintln!(
        "start (berthctl run -d, mean of 5): plain {plain:?}, --notify-ready --restart=always {life:?}, ratio {:.2}",
        life.as_secs_f64() / plain.as_secs_f64()
    );
    assert!(
        life.as_secs_f64() < plain.as_secs_f64() * 1.5 + 0.02,
        "readiness and restart policy make starts slower: {plain:?} → {life:?}"
    );
}

#[test]
fn a_health_check_turns_unhealthy_and_restarts_the_container() {
    events_to("/tmp/ev-health.json", "-o json --filter container=hc1");
    ok(
        "berthctl run -d --name hc1 --health-cmd 'test -e /tmp/ok' --health-interval 300ms \
        --health-retries 2 --health-on-failure restart -- /bin/sh -c 'touch /tmp/ok; exec sleep 1000'",
    );
    assert_eq!(prop("hc1", "Health"), "starting");
    wait_for("healthy", Duration::from_secs(15), || {
        prop("hc1", "Health") == "healthy"
    });
    assert!(
        ok("berthctl list").contains("(healthy)"),
        "{}",
        ok("berthctl list")
    );
    assert!(ok("berthctl status hc1").contains("Health: healthy"));
    let leader = prop("hc1", "Leader");
    let started = prop("hc1", "StartedAt");
    // Break it: two failed checks make it unhealthy, and berthd restarts it.
    ok("berthctl exec hc1 -- rm /tmp/ok");
    wait_for("the restart", Duration::from_secs(20), || {
        prop("hc1", "StartedAt") != started && prop("hc1", "State") == "running"
    });
    assert_ne!(prop("hc1", "Leader"), leader);
    // The new run touched /tmp/ok again: healthy again.
    wait_for("healthy again", Duration::from_secs(15), || {
        prop("hc1", "Health") == "healthy"
    });
    ok("berthctl rm -f hc1");
    std::thread::sleep(Duration::from_millis(300));
    stop_events("/tmp/ev-health.json");
    let health: Vec<String> = events_of("/tmp/ev-health.json")
        .iter()
        .filter(|e| e["Status"] == "health_status")
        .map(|e| e["Attributes"]["health"].as_str().unwrap().to_string())
        .collect();
    let at = |h: &str| {
        health
            .iter()
            .position(|x| x == h)
            .unwrap_or_else(|| panic!("no {h} in {health:?}"))
    };
    assert!(
        at("starting") < at("healthy") && at("healthy") < at("unhealthy"),
        "{health:?}"
    );
    assert_eq!(
        health.last().map(String::as_str),
        Some("healthy"),
        "{health:?}"
    );

    // --health-on-failure=kill: the container ends, killed (137).
    ok(
        "berthctl run -d --name hc2 --health-cmd false --health-interval 200ms --health-retries 1 \
        --health-on-failure kill -- sleep 1000",
    );
    wait_for("the kill", Duration::from_secs(15), || {
        prop("hc2", "State") == "exited"
    });
    assert_eq!(prop("hc2", "ExitStatus"), "137");
    // A failing check without an action only marks it; failures in the start period do not
    // count.
    ok(
        "berthctl run -d --name hc3 --health-cmd false --health-interval 200ms --health-retries 1 \
        --health-start-period 2s -- sleep 1000",
    );
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(prop("hc3", "Health"), "starting");
    wait_for("unhealthy", Duration::from_secs(15), || {
        prop("hc3", "Health") == "unhealthy"
    });
    assert_eq!(prop("hc3", "State"), "running");
    assert!(ok("berthctl list").contains("(unhealthy)"));
    ok("berthctl rm -f hc2 hc3");
    let o = sh("berthctl create --name hc4 --health-interval 1ms -- true");
    assert_eq!(o.status.code(), Some(4), "{}", err(&o));
}

/// The fixtures' docker-archive with a HEALTHCHECK added to its config (as `docker build`
/// writes one): `test -e /tmp/ok` every 200 ms, unhealthy after one failure.
fn healthcheck_archive() -> String {
    let fix = std::env::var("BERTH_FIXTURES").expect("BERTH_FIXTURES (tests/run-integration.sh)");
    let out = format!("{fix}/healthcheck-archive.tar");
    if std::path::Path::new(&out).exists() {
        return out;
    }
    let script = r#"
import hashlib, io, json, sys, tarfile
src, dst = sys.argv[1], sys.argv[2]
with tarfile.open(src) as t:
    members = {m.name: t.extractfile(m).read() for m in t.getmembers() if m.isfile()}
manifest = json.loads(members["manifest.json"])
cfg = json.loads(members.pop(manifest[0]["Config"]))
cfg["config"]["Healthcheck"] = {"Test": ["CMD-SHELL", "test -e /tmp/ok"],
                                "Interval": 200000000, "Retries": 1}
data = json.dumps(cfg).encode()
name = hashlib.sha256(data).hexdigest() + ".json"
members[name] = data
manifest[0]["Config"] = name
manifest[0]["RepoTags"] = ["localhost/healthy:latest"]
members["manifest.json"] = json.dumps(manifest).encode()
with tarfile.open(dst, "w") as t:
    for n, d in members.items():
        i = tarfile.TarInfo(n); i.size = len(d); t.addfile(i, io.BytesIO(d))
"#;
    let st = std::process::Command::new("python3")
        .args(["-c", script, &format!("{fix}/docker-archive.tar"), &out])
        .status()
        .expect("python3");
    assert!(st.success(), "cannot make {out}");
    out
}

#[test]
fn the_images_healthcheck_is_kept_and_runs() {
    let tar = healthcheck_archive();
    sh("berthctl rm -f hc5 hc6 >/dev/null 2>&1; berthctl image rm hcimg >/dev/null 2>&1");
    ok(&format!("berthctl image import-oci -q {tar} hcimg"));
    let shown = ok("berthctl image show hcimg");
    assert!(
        shown.contains("Healthcheck: CMD-SHELL test -e /tmp/ok"),
        "{shown}"
    );
    // No /tmp/ok: the image's check fails, one failure is enough.
    ok("berthctl run -d --name hc5 --image hcimg -- sleep 1000");
    wait_for(
        "unhealthy by the image's check",
        Duration::from_secs(15),
        || prop("hc5", "Health") == "unhealthy",
    );
    ok("berthctl exec hc5 -- touch /tmp/ok");
    wait_for(
        "healthy by the image's check",
        Duration::from_secs(15),
        || prop("hc5", "Health") == "healthy",
    );
    // --health-cmd none turns it off.
    ok("berthctl run -d --name hc6 --image hcimg --health-cmd none -- sleep 1000");
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(prop("hc6", "Health"), "");
    ok("berthctl rm -f hc5 hc6 && berthctl image rm hcimg");
}

/// The container's entry in a JSON array of containers (`ps -o json`, `inspect`).
fn entry_of(doc: &str, name: &str) -> Value {
    let v: Value = serde_json::from_str(doc).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {doc}"))
        .clone()
}

#[test]
fn health_survives_a_berthd_restart_and_shows_in_json() {
    // A long interval: a berthd that forgot the health would show `starting` for 4 s after
    // its restart, until its first check.
    ok(
        "berthctl run -d --name hc7 --health-cmd 'test -e /tmp/ok' --health-interval 4s \
        --health-retries 1 -- /bin/sh -c 'touch /tmp/ok; exec sleep 1000'",
    );
    wait_for("healthy", Duration::from_secs(15), || {
        prop("hc7", "Health") == "healthy"
    });
    ok("systemctl restart berthd");
    assert_eq!(prop("hc7", "Health"), "healthy");
    // The checks go on after the restart: one failure (retries 1) makes it unhealthy.
    ok("berthctl exec hc7 -- rm /tmp/ok");
    wait_for("unhealthy", Duration::from_secs(15), || {
        prop("hc7", "Health") == "unhealthy"
    });
    let failures: u32 = prop("hc7", "HealthFailures").parse().unwrap();
    assert!(failures >= 1);
    ok("systemctl restart berthd");
    assert_eq!(prop("hc7", "Health"), "unhealthy");
    assert!(prop("hc7", "HealthFailures").parse::<u32>().unwrap() >= failures);
    // The JSON outputs carry what the text shows.
    let status: Value = serde_json::from_str(&ok("berthctl status hc7 -o json")).unwrap();
    assert_eq!(status["health"], "unhealthy", "{status}");
    assert!(status["health_failures"].as_u64().unwrap() >= 1, "{status}");
    assert_eq!(status["ready"], true, "{status}");
    assert_eq!(status["restart_policy"], "no", "{status}");
    let ps = entry_of(&ok("berthctl ps -o json"), "hc7");
    assert_eq!(ps["health"], "unhealthy", "{ps}");
    let inspect = entry_of(&ok("berthctl inspect hc7"), "hc7");
    assert_eq!(inspect["health"], "unhealthy", "{inspect}");
    assert!(ok("berthctl status hc7").contains("Health: unhealthy"));
    // One pass heals it, as before.
    ok("berthctl exec hc7 -- touch /tmp/ok");
    wait_for("healthy again", Duration::from_secs(15), || {
        prop("hc7", "Health") == "healthy"
    });
    ok("berthctl rm -f hc7");
}
