//! `--boot` (issue 11, booting an OS container): the image's init as the container's PID 1, in
//! the disposable systemd host (tests/host/), on a tree made from the machine's own packages
//! (tests/fixtures/make-boot-tree.sh, on the host's tmpfs /srv, which supports idmapped
//! mounts). Without BERTH_TEST_HOST these tests fail.

mod common;

use common::*;

const TREE: &str = "/srv/boot-tree";

fn tree() {
    let root = env!("CARGO_MANIFEST_DIR");
    ok(&format!("{root}/tests/fixtures/make-boot-tree.sh {TREE}"));
}

/// Boot `name` and wait until its own systemd says it is up (`running`, or `degraded` if a
/// unit of the machine's configuration fails in a container).
fn boot(name: &str) {
    tree();
    ok(&format!("berthctl run -d --boot --name {name} -D {TREE}"));
    // The container's manager answers once its private bus is up.
    let mut state = String::new();
    wait_until(&format!("{name}'s systemd to answer"), || {
        let o = sh(&format!(
            "berthctl exec {name} -- systemctl is-system-running --wait"
        ));
        state = out(&o);
        matches!(state.as_str(), "running" | "degraded")
    });
}

fn state(name: &str) -> String {
    prop(name, "State")
}

fn wait_exited(name: &str) {
    wait_until(&format!("{name} to exit"), || state(name) == "exited");
}

fn scope_gone(name: &str) -> bool {
    code(&format!("systemctl is-active -q berth-{name}.scope")) != 0
}

#[test]
fn a_booted_container_runs_systemd_as_pid_1_and_powers_off_on_request() {
    boot("bt1");
    // PID 1 is the image's systemd itself, with container=berth in its environment.
    let comm = ok("berthctl exec bt1 -- cat /proc/1/comm");
    assert_eq!(comm, "systemd");
    let environ = ok("berthctl exec bt1 -- cat /proc/1/environ");
    assert!(
        environ.split('\0').any(|e| e == "container=berth"),
        "{environ:?}"
    );
    // The host's os-release, read-only.
    let host = ok("cat /etc/os-release 2>/dev/null || cat /usr/lib/os-release");
    assert_eq!(ok("berthctl exec bt1 -- cat /run/host/os-release"), host);
    assert_ne!(
        code("berthctl exec bt1 -- /bin/bash -c 'echo x >> /run/host/os-release'"),
        0
    );
    // Its systemd manages its own cgroup subtree: init.scope and system.slice below the root
    // of its cgroup namespace, which is the container's scope on the host.
    assert_eq!(
        ok("berthctl exec bt1 -- cat /proc/1/cgroup | grep '^0::'"),
        "0::/init.scope"
    );
    let leader = prop("bt1", "Leader");
    let cg = ok(&format!("grep '^0::' /proc/{leader}/cgroup | cut -d: -f3"));
    assert!(cg.ends_with("berth-bt1.scope/init.scope"), "{cg}");
    assert!(
        ok("berthctl exec bt1 -- systemctl show -p ControlGroup --value systemd-journald")
            .starts_with("/system.slice/")
    );
    // machined reaches its manager and its bus: a shell through `machinectl shell`, its
    // journal through `journalctl -M`.
    let shell = ok("machinectl shell bt1 /bin/echo through-machined");
    assert!(shell.contains("through-machined"), "{shell}");
    let journal = ok("journalctl -M bt1 --no-pager -o cat");
    assert!(journal.contains("Startup finished"), "{journal}");
    // Its console is its log.
    let logs = ok("berthctl logs bt1");
    assert!(logs.contains("Welcome to"), "{logs}");
    // poweroff: SIGRTMIN+4 to its init; it shuts down and the container exits 0.
    ok("berthctl poweroff bt1");
    wait_exited("bt1");
    assert_eq!(prop("bt1", "ExitStatus"), "0");
    wait_until("the scope to go", || scope_gone("bt1"));
    ok("berthctl rm bt1");
}

#[test]
fn machinectl_poweroff_and_berthctl_stop_shut_a_booted_container_down_cleanly() {
    boot("bt2");
    wait_until("machine bt2", || code("machinectl show bt2 -p Name") == 0);
    ok("machinectl poweroff bt2");
    wait_exited("bt2");
    assert_eq!(prop("bt2", "ExitStatus"), "0");
    wait_until("the scope to go", || scope_gone("bt2"));
    wait_until("the machine to go", || {
        code("machinectl show bt2 -p Name") != 0
    });
    // berthctl stop asks systemd to power off (not SIGTERM, which systemd takes as
    // "re-execute"): a clean shutdown, status 0, well within the stop timeout.
    ok("berthctl start bt2");
    wait_until("bt2's systemd to answer", || {
        matches!(
            out(&sh(
                "berthctl exec bt2 -- systemctl is-system-running --wait"
            ))
            .as_str(),
            "running" | "degraded"
        )
    });
    let t = std::time::Instant::now();
    ok("berthctl stop bt2");
    assert!(t.elapsed() < std::time::Duration::from_secs(8));
    assert_eq!(state("bt2"), "exited");
    assert_eq!(prop("bt2", "ExitStatus"), "0");
    ok("berthctl rm bt2");
}

#[test]
fn boot_refuses_a_container_without_a_user_namespace_and_changes_nothing() {
    tree();
    let before = leftovers();
    let o = sh(&format!(
        "berthctl create --boot --userns=host --name bt3 -D {TREE}"
    ));
    // InvalidArgument (`run` says 125, failed before the payload ran).
    assert_eq!(o.status.code(), Some(4), "{}", err(&o));
    assert!(err(&o).contains("user namespace"), "{}", err(&o));
    assert_eq!(leftovers(), before);
}

#[test]
fn berthctl_reboot_restarts_a_booted_container() {
    boot("bt4");
    let before = prop("bt4", "Leader");
    // SIGINT: systemd's reboot; its reboot(2) ends the PID namespace with SIGHUP, and berthd
    // starts the container again (a new leader), recording the reboot as status 0.
    ok("berthctl reboot bt4");
    wait_until("bt4 to come back with a new leader", || {
        state("bt4") == "running" && prop("bt4", "Leader") != before
    });
    assert_eq!(prop("bt4", "ExitStatus"), "0");
    ok("berthctl poweroff bt4");
    wait_exited("bt4");
    ok("berthctl rm bt4");
}

#[test]
fn berthctl_console_logs_in_on_a_terminal_of_the_container() {
    boot("bt5");
    // login(1) on a pty of the container's devpts; the tree's root has no password. script(1)
    // gives berthctl a terminal of its own.
    let o = ok(
        "(sleep 2; printf 'root\\n'; sleep 2; printf 'echo in-console-$((6*7))\\n'; \
         sleep 1; printf 'exit\\n') | timeout 20 script -qfc 'berthctl console bt5' /dev/null",
    );
    assert!(o.contains("in-console-42"), "{o}");
    ok("berthctl poweroff bt5");
    wait_exited("bt5");
    ok("berthctl rm bt5");
}

#[test]
fn berthctl_login_of_a_container_is_its_console_and_stays_the_registrys_otherwise() {
    boot("bt6");
    // `login NAME` of a container berthd has: its console, as `console NAME`.
    let o = ok(
        "(sleep 2; printf 'root\\n'; sleep 2; printf 'echo in-login-$((6*7))\\n'; \
         sleep 1; printf 'exit\\n') | timeout 20 script -qfc 'berthctl login bt6' /dev/null",
    );
    assert!(o.contains("in-login-42"), "{o}");
    // A registry option makes it the registry's login even for a container's name: berthd
    // then talks to a registry "bt6" (there is none), and no console opens.
    let o = sh("echo pw | timeout 20 berthctl login bt6 -u someone --password-stdin");
    assert_ne!(o.status.code(), Some(0), "{}", out(&o));
    assert!(!out(&o).contains("login:"), "{}", out(&o));
    assert!(!err(&o).contains("no container"), "{}", err(&o));
    // A word that is no container's name is a registry: without a terminal, registry login
    // asks for --username (InvalidArgument), never for a container.
    let o = sh("timeout 20 berthctl login registry.invalid </dev/null");
    assert_eq!(o.status.code(), Some(4), "{}", err(&o));
    assert!(err(&o).contains("--username"), "{}", err(&o));
    ok("berthctl poweroff bt6");
    wait_exited("bt6");
    ok("berthctl rm bt6");
}

fn unit_prop(name: &str, p: &str) -> String {
    ok(&format!(
        "systemctl show berth@{name}.service -p {p} --value"
    ))
}

fn wait_booted(name: &str) {
    wait_until(&format!("{name}'s systemd to answer"), || {
        matches!(
            out(&sh(&format!(
                "berthctl exec {name} -- systemctl is-system-running --wait"
            )))
            .as_str(),
            "running" | "degraded"
        )
    });
}

#[test]
fn a_booted_container_in_its_berth_unit_boots_reboots_and_stops_cleanly() {
    tree();
    ok(&format!("berthctl create --boot --name bt7 -D {TREE}"));
    ok("systemctl start berth@bt7");
    wait_booted("bt7");
    // The unit holds it: its main process is the container's systemd.
    assert_eq!(unit_prop("bt7", "ActiveState"), "active");
    let main = unit_prop("bt7", "MainPID");
    assert_eq!(main, prop("bt7", "Leader"));
    assert_eq!(ok(&format!("cat /proc/{main}/comm")), "systemd");
    assert_eq!(prop("bt7", "Unit"), "berth@bt7.service");
    // A reboot starts it again in its unit (not in a scope outside it).
    ok("berthctl reboot bt7");
    wait_until("bt7 to come back in its unit", || {
        let m = unit_prop("bt7", "MainPID");
        unit_prop("bt7", "ActiveState") == "active"
            && m != "0"
            && m != main
            && state("bt7") == "running"
            && prop("bt7", "Leader") == m
    });
    assert_eq!(prop("bt7", "Unit"), "berth@bt7.service");
    assert!(scope_gone("bt7"));
    wait_booted("bt7");
    // systemctl stop powers it off: the unit inactive (not failed), the container exited 0.
    let t = std::time::Instant::now();
    ok("systemctl stop berth@bt7");
    assert!(t.elapsed() < std::time::Duration::from_secs(10));
    assert_eq!(unit_prop("bt7", "ActiveState"), "inactive");
    assert_eq!(unit_prop("bt7", "Result"), "success");
    assert_eq!(state("bt7"), "exited");
    assert_eq!(prop("bt7", "ExitStatus"), "0");
    let log = ok("journalctl -u berth@bt7 -o cat --no-pager");
    assert!(log.contains("System Power Off"), "{log}");
    ok("berthctl rm bt7");
}
