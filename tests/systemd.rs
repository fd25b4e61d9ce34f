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
    // The host side of its veth is the machine's interface; machined reads the addresses
    // from the container's network namespace.
    assert!(status.contains("Iface: vb-mreg"), "{status}");
    let addr = prop("mreg", "Addresses");
    let ip4 = addr
        .split(['/', ' ', ',', '"', '['])
        .find(|a| a.starts_with("10."))
        .unwrap_or("none");
    assert!(
        status.contains(&format!("Address: {ip4}")),
        "{addr} / {status}"
    );
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
    assert_eq!(prop("mterm", "ExitStatus"), "143");
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

fn unit(name: &str, p: &str) -> String {
    ok(&format!(
        "systemctl show -p {p} --value berth@{name}.service"
    ))
}

fn wait_unit(name: &str, state: &str) {
    wait_until(&format!("berth@{name} to be {state}"), || {
        unit(name, "ActiveState") == state
    });
}

fn cleanup_unit(name: &str) {
    sh(&format!(
        "systemctl stop berth@{name}; systemctl reset-failed berth@{name}; berthctl rm -f {name}"
    ));
}

#[test]
fn a_berth_unit_holds_its_container_in_its_own_cgroup() {
    ok("berthctl create --name uhold -- sleep 1000");
    ok("systemctl start berth@uhold");
    // Type=notify: active once the payload runs, and the container's PID 1 is the main
    // process, a child of the service manager.
    assert_eq!(unit("uhold", "ActiveState"), "active");
    assert_eq!(unit("uhold", "Type"), "notify");
    let main = unit("uhold", "MainPID");
    assert_eq!(prop("uhold", "Leader"), main);
    assert_eq!(prop("uhold", "State"), "running");
    assert_eq!(prop("uhold", "Unit"), "berth@uhold.service");
    assert_eq!(ok(&format!("ps -o ppid= -p {main}")), "1");
    // It holds no handle on the service manager (berthd said READY=1 on its behalf): no
    // socket at all, only /dev/null and its exit-status memfd.
    let fds = ok(&format!("ls -l /proc/{main}/fd"));
    assert!(!fds.contains("socket:"), "{fds}");
    let cg = ok(&format!("cat /proc/{main}/cgroup"));
    assert!(
        cg.lines()
            .any(|l| l == "0::/machine.slice/berth@uhold.service/payload"),
        "{cg}"
    );
    // status shows the container's processes; no berthctl is left in the unit.
    let status = ok("systemctl status berth@uhold --no-pager");
    assert!(status.contains("sleep 1000"), "{status}");
    assert!(status.contains("payload"), "{status}");
    let procs = ok(
        "d=/sys/fs/cgroup/unified; [ -d $d ] || d=/sys/fs/cgroup; cg=$d$(systemctl show -p ControlGroup --value berth@uhold); for p in $(cat $cg/cgroup.procs $cg/payload/cgroup.procs); do cat /proc/$p/comm; done | sort | tr '\\n' ' '",
    );
    assert_eq!(procs, "berth-helper sleep", "{status}");
    // The unit's accounting is the container's, and set-property reaches its cgroup.
    assert_ne!(unit("uhold", "TasksCurrent"), "0");
    ok("systemctl set-property --runtime berth@uhold MemoryMax=48M");
    let limit = ok(
        "cat /sys/fs/cgroup/memory/machine.slice/berth@uhold.service/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/machine.slice/berth@uhold.service/memory.max",
    );
    assert_eq!(limit, "50331648");
    // machined knows it under the unit.
    wait_until("machine uhold", || machine("uhold", "Name").is_some());
    assert_eq!(machine("uhold", "Unit").unwrap(), "berth@uhold.service");
    assert_eq!(machine("uhold", "Leader").unwrap(), main);
    // systemctl stop: clean, and berthd has recorded the exit before it returns.
    ok("systemctl stop berth@uhold");
    assert_eq!(unit("uhold", "ActiveState"), "inactive");
    assert_eq!(unit("uhold", "Result"), "success");
    assert_eq!(prop("uhold", "State"), "exited");
    assert_eq!(prop("uhold", "ExitStatus"), "143");
    wait_gone("uhold");
    cleanup_unit("uhold");
}

#[test]
fn kill_9_of_berthd_or_berthctl_changes_nothing_for_the_unit() {
    ok("berthctl create --name ukill -- sleep 1000");
    ok("systemctl start berth@ukill");
    let main = unit("ukill", "MainPID");
    // berthctl exec'd the helper in place and is gone: nothing of it to kill.
    assert_eq!(code("pgrep -x berthctl"), 1);
    ok("systemctl kill -s KILL berthd");
    wait_berthd();
    assert_eq!(unit("ukill", "ActiveState"), "active");
    assert_eq!(unit("ukill", "MainPID"), main);
    assert_eq!(prop("ukill", "State"), "running");
    assert_eq!(prop("ukill", "Leader"), main);
    // A kill -9 of a berthctl talking to berthd meanwhile is nothing to the unit either.
    sh("berthctl wait ukill >/dev/null 2>&1 & sleep 0.3; pkill -9 -x berthctl; true");
    assert_eq!(unit("ukill", "ActiveState"), "active");
    assert_eq!(unit("ukill", "MainPID"), main);
    // berthctl stop of a unit-run container: the unit ends inactive, not failed.
    ok("berthctl stop ukill");
    wait_unit("ukill", "inactive");
    assert_eq!(unit("ukill", "Result"), "success");
    assert_eq!(prop("ukill", "ExitStatus"), "143");
    cleanup_unit("ukill");
}

#[test]
fn systemctl_kill_restart_and_the_exit_status_act_on_the_container() {
    ok("berthctl create --name usig -- sleep 1000");
    ok("systemctl start berth@usig");
    let first = unit("usig", "MainPID");
    ok("systemctl restart berth@usig");
    assert_eq!(unit("usig", "ActiveState"), "active");
    let second = unit("usig", "MainPID");
    assert_ne!(first, second);
    assert_eq!(prop("usig", "Leader"), second);
    assert_eq!(code(&format!("kill -0 {first}")), 1);
    // --kill-whom=main with a signal the payload's PID 1 passes on.
    ok("systemctl kill --kill-whom=main -s USR1 berth@usig");
    wait_unit("usig", "failed");
    assert_eq!(prop("usig", "ExitStatus"), "138");
    // SIGKILL to everything: the container dies, the unit says so, berthd records 137.
    ok("systemctl reset-failed berth@usig; systemctl start berth@usig");
    let killed = unit("usig", "MainPID");
    ok("systemctl kill -s KILL berth@usig");
    wait_unit("usig", "failed");
    assert_eq!(unit("usig", "Result"), "signal");
    wait_exited("usig");
    assert_eq!(prop("usig", "ExitStatus"), "137");
    assert_eq!(code(&format!("kill -0 {killed}")), 1);
    assert_eq!(unit("usig", "TasksCurrent"), "[not set]");
    cleanup_unit("usig");
    // The container's exit status is the unit's.
    ok("berthctl create --name uexit -- /bin/sh -c 'sleep 0.3; exit 7'");
    ok("systemctl start berth@uexit");
    wait_unit("uexit", "failed");
    assert_eq!(unit("uexit", "ExecMainStatus"), "7");
    assert_eq!(unit("uexit", "Result"), "exit-code");
    wait_exited("uexit");
    assert_eq!(prop("uexit", "ExitStatus"), "7");
    cleanup_unit("uexit");
}

#[test]
fn a_unit_for_a_container_that_does_not_exist_fails_at_once() {
    let before = leftovers();
    let t = std::time::Instant::now();
    assert_eq!(code("systemctl start berth@nosuch"), 1);
    assert!(t.elapsed() < std::time::Duration::from_secs(5));
    assert_eq!(unit("nosuch", "ActiveState"), "failed");
    assert_eq!(unit("nosuch", "ExecMainStatus"), "3");
    let log = ok("journalctl -u berth@nosuch --no-pager -o cat");
    assert!(log.contains("nosuch"), "{log}");
    ok("systemctl reset-failed berth@nosuch");
    assert_eq!(leftovers(), before);
    // unit-start outside its unit is refused, with nothing made.
    ok("berthctl create --name unot -- true");
    assert_eq!(code("berthctl unit-start unot"), 4);
    assert_eq!(prop("unot", "State"), "created");
    ok("berthctl rm unot");
}

#[test]
fn enable_and_disable_start_the_container_at_boot_through_machines_target() {
    ok("berthctl create --name uboot -- sleep 1000");
    assert_eq!(ok("berthctl enable uboot"), "enabled berth@uboot.service");
    assert_eq!(ok("systemctl is-enabled berth@uboot.service"), "enabled");
    assert_eq!(ok("systemctl is-enabled machines.target"), "enabled");
    let wants = ok("systemctl show -p Wants --value machines.target");
    assert!(wants.contains("berth@uboot.service"), "{wants}");
    // What boot does: machines.target pulls it in.
    ok("systemctl start machines.target");
    wait_unit("uboot", "active");
    assert_eq!(prop("uboot", "State"), "running");
    // Enabling twice changes nothing.
    assert_eq!(ok("berthctl enable uboot"), "");
    ok("berthctl disable uboot");
    assert_eq!(code("systemctl is-enabled -q berth@uboot.service"), 1);
    // Unknown container: typed error, exit 3, nothing enabled.
    assert_eq!(code("berthctl enable nosuch"), 3);
    assert_eq!(code("systemctl is-enabled -q berth@nosuch.service"), 1);
    cleanup_unit("uboot");
}

#[test]
fn without_machined_containers_run_as_before_and_berthd_says_so_once() {
    let since = ok("date +%s");
    ok("systemctl stop systemd-machined; systemctl mask --runtime systemd-machined");
    ok("systemctl restart berthd");
    wait_berthd();
    ok(
        "berthctl run -d --name nomach1 -- sleep 1000; berthctl run -d --name nomach2 -- sleep 1000",
    );
    assert_eq!(prop("nomach1", "State"), "running");
    assert_eq!(prop("nomach2", "State"), "running");
    let log = ok(&format!(
        "journalctl -u berthd -o cat --no-pager --since @{since} | grep -c 'systemd-machined is not available' || true"
    ));
    assert_eq!(log, "1");
    assert_eq!(
        ok(&format!(
            "journalctl -u berthd -o cat --no-pager --since @{since} | grep -c RegisterMachine || true"
        )),
        "0"
    );
    ok("berthctl rm -f nomach1 nomach2");
    ok("systemctl unmask --runtime systemd-machined");
    ok("systemctl restart berthd");
    wait_berthd();
    ok("berthctl run -d --name nomach3 -- sleep 1000");
    wait_until("machine nomach3", || machine("nomach3", "Name").is_some());
    ok("berthctl rm -f nomach3");
}

#[test]
fn machined_started_after_berthd_gets_the_running_containers_registered() {
    // berthd starts while machined cannot run (masked, so not even bus activation brings it).
    ok("systemctl stop systemd-machined; systemctl mask --runtime systemd-machined");
    ok("systemctl restart berthd");
    wait_berthd();
    ok("berthctl run -d --name late1 -- sleep 1000");
    assert_eq!(prop("late1", "State"), "running");
    assert_eq!(code("machinectl show late1 -p Name"), 1);
    // machined comes onto the bus: berthd sees its name get an owner and registers what runs.
    ok("systemctl unmask --runtime systemd-machined; systemctl start systemd-machined");
    let t = std::time::Instant::now();
    wait_until("machine late1", || machine("late1", "Name").is_some());
    assert!(t.elapsed() < std::time::Duration::from_secs(5));
    assert_eq!(machine("late1", "Leader").unwrap(), prop("late1", "Leader"));
    assert_eq!(machine("late1", "Service").unwrap(), "berth");
    // A container started while it runs is registered as usual; after a restart of machined
    // both are there again, once each.
    ok("berthctl run -d --name late2 -- sleep 1000");
    wait_until("machine late2", || machine("late2", "Name").is_some());
    ok("systemctl restart systemd-machined");
    let t = std::time::Instant::now();
    wait_until("both machines after machined's restart", || {
        machine("late1", "Name").is_some() && machine("late2", "Name").is_some()
    });
    assert!(t.elapsed() < std::time::Duration::from_secs(5));
    assert_eq!(listed("late1"), 1);
    assert_eq!(listed("late2"), 1);
    assert_eq!(machine("late2", "Leader").unwrap(), prop("late2", "Leader"));
    ok("berthctl rm -f late1 late2");
    wait_gone("late1");
    wait_gone("late2");
}
