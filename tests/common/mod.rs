//! Helpers shared by the integration test files: run commands inside the disposable systemd
//! host that tests/run-integration.sh booted (BERTH_TEST_HOST), and check outcomes.
#![allow(dead_code)]

use std::process::{Command, Output};
use std::time::{Duration, Instant};

pub fn host() -> String {
    std::env::var("BERTH_TEST_HOST")
        .expect("BERTH_TEST_HOST unset: run `make integration-test` (tests/run-integration.sh)")
}

/// Run a shell command inside the host.
pub fn sh(cmd: &str) -> Output {
    let root = env!("CARGO_MANIFEST_DIR");
    Command::new(format!("{root}/tests/host/exec.sh"))
        .args([host().as_str(), "/bin/sh", "-c", cmd])
        .output()
        .expect("run exec.sh")
}

pub fn ok(cmd: &str) -> String {
    let o = sh(cmd);
    assert!(
        o.status.success(),
        "`{cmd}` failed ({:?}): {}{}",
        o.status.code(),
        out(&o),
        err(&o)
    );
    out(&o)
}

pub fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

pub fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).trim().to_string()
}

pub fn code(cmd: &str) -> i32 {
    sh(cmd).status.code().unwrap_or(-1)
}

pub fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn prop(name: &str, p: &str) -> String {
    ok(&format!("berthctl show {name} -p {p} --value"))
}

/// What must not change when a request is refused.
pub fn leftovers() -> String {
    ok(
        "systemctl list-units --all --plain --no-legend 'berth-*' | sort; ls /run/berth/containers /var/lib/berth/containers | sort; berthctl list -a -o json | grep -c '\"name\"' || true",
    )
}
