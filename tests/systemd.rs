//! systemd-native integration (issue 11, sysd's part): machined registration, berth@ units
//! that hold their container, enable/disable. Run in the disposable systemd host (tests/host/),
//! which has systemd-machined (bus-activated); without BERTH_TEST_HOST these tests fail.

mod common;

use common::*;

/// `machinectl show NAME -p P --value`, or None when machined has no such machine.
fn machine(name: &str, p: &str) -> Option<String> {
    let o = sh(&format!("machinectl show {name} -p {p} --value"));
    o.status.success().then(|| out(&o))
}

/// How many times `machinectl list` shows NAME.
fn listed(name: &str) -> usize {
    ok("machinectl list --no-legend --no-pager")
        .lines()
        .filter(|l| l.split_whitespace().next() == Some(name))
        .count()
}

fn wait_gone(name: &str) {
    wait_until(&format!("machine {name} to go"), || {
        machine(name, "Name").is_none()
    });
}

fn wait_exited(name: &str) {
    wait_until(&format!("{name} to exit"), || {
        prop(name, "State") == "exited"
    });
}

fn wait_berthd() {
    wait_until("berthd to serve again", || {
        code("systemctl is-active -q berthd && berthctl list >/dev/null") == 0
    });
}

#[test]
fn machined_registers_a_running_container_and_forgets_it_at_exit() {
    ok("berthctl run -d --name mreg -- sleep 1000");
    wait_until("machine mreg", || machine("mreg", "Name").is_some());
    let leader = prop("mreg", "Leader");
    assert_eq!(machine("mreg", "Leader").unwrap(), leader);
    assert_eq!(machine("mreg", "Service").unwrap(), "berth");
    assert_eq!(machine("mreg", "Class").unwrap(), "container");
    assert_eq!(machine("mreg", "Unit").unwrap(), "berth-mreg.scope");
    assert_eq!(listed("mreg"), 1);
    // status shows the scope's process tree (read by machined from the unit's cgroup).
    let status = ok("machinectl status mreg --no-pager");
    assert!(status.contains("sleep 1000"), "{status}");
    assert!(status.contains("berth-mreg.scope"), "{status}");
    ok("berthctl stop mreg");
    wait_gone("mreg");
    ok("berthctl rm mreg");
}

#[test]
fn machinectl_terminate_kill_and_poweroff_end_the_container_and_berthd_records_it() {
    ok("berthctl run -d --name mterm -- sleep 1000");
    wait_until("machine mterm", || machine("mterm", "Name").is_some());
    ok("machinectl terminate mterm");
    wait_exited("mterm");
    // The scope was stopped: SIGTERM to all, the payload's death by SIGTERM is 128+15.
    assert_eq!(prop("mterm", "ExitStatus"), "143");
    wait_gone("mterm");
    assert_eq!(code("systemctl is-active -q berth-mterm.scope"), 3);

    ok("berthctl start mterm");
    wait_until("machine mterm again", || machine("mterm", "Name").is_some());
    assert_eq!(machine("mterm", "Leader").unwrap(), prop("mterm", "Leader"));
    ok("machinectl kill -s KILL mterm");
    wait_exited("mterm");
    assert_eq!(prop("mterm", "ExitStatus"), "137");
    wait_gone("mterm");

    // poweroff is SIGRTMIN+4 to the leader (berth's init passes it on; sleep dies of it).
    ok("berthctl start mterm");
    wait_until("machine mterm a third time", || {
        machine("mterm", "Name").is_some()
    });
    ok("machinectl poweroff mterm");
    wait_exited("mterm");
    assert_ne!(prop("mterm", "ExitStatus"), "-1");
    wait_gone("mterm");
    ok("berthctl rm mterm");
}

#[test]
fn registrations_survive_kill_9_of_berthd_and_daemon_reexec_without_duplicates() {
    ok("berthctl run -d --name msurv -- sleep 1000");
    wait_until("machine msurv", || machine("msurv", "Name").is_some());
    let leader = prop("msurv", "Leader");
    ok("systemctl kill -s KILL berthd");
    wait_berthd();
    assert_eq!(prop("msurv", "State"), "running");
    assert_eq!(listed("msurv"), 1);
    assert_eq!(machine("msurv", "Leader").unwrap(), leader);
    ok("systemctl daemon-reexec");
    wait_berthd();
    assert_eq!(listed("msurv"), 1);
    assert_eq!(machine("msurv", "Leader").unwrap(), leader);
    assert_eq!(machine("msurv", "Unit").unwrap(), "berth-msurv.scope");
    // A restart of berthd re-registers nothing twice either.
    ok("systemctl restart berthd");
    wait_berthd();
    assert_eq!(listed("msurv"), 1);
    ok("berthctl stop msurv; berthctl rm msurv");
    wait_gone("msurv");
}

#[test]
fn no_stale_machine_after_a_container_dies_while_berthd_is_down() {
    ok("berthctl run -d --name mdead -- sleep 1000");
    wait_until("machine mdead", || machine("mdead", "Name").is_some());
    let leader = prop("mdead", "Leader");
    ok("systemctl stop berthd");
    ok(&format!("kill -9 {leader}"));
    // A stale registration berthd left behind: a machine with berth's service whose
    // container does not exist (a leader in a scope of its own, so machined keeps it).
    ok("systemd-run --unit ghost-leader --quiet -- sleep 1000");
    let ghost = ok("systemctl show -p MainPID --value ghost-leader.service");
    ok(&format!(
        "busctl call org.freedesktop.machine1 /org/freedesktop/machine1 org.freedesktop.machine1.Manager RegisterMachine 'sayssus' ghost 0 berth container {ghost} ''"
    ));
    assert!(machine("ghost", "Name").is_some());
    ok("systemctl start berthd");
    wait_berthd();
    wait_exited("mdead");
    wait_gone("mdead");
    wait_gone("ghost");
    assert_eq!(listed("mdead"), 0);
    ok("systemctl stop ghost-leader.service");
    ok("berthctl rm mdead");
}
