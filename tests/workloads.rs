//! Working with running containers, seen from the host and from inside: output in the journal
//! (`berthctl logs`, `journalctl CONTAINER_NAME=`, `journalctl -u`, across a berthd restart),
//! exec (exit status, user, cwd, env, and the exec'd process's cgroup, namespaces, ID map,
//! capabilities and seccomp compared with the payload's), terminals (`-t` gives a pty of the
//! container's devpts; without it no stream of the caller's terminal reaches the container),
//! a killed foreground berthctl, volumes, bind mounts, tmpfs, and `cp` in and out — plus the
//! bad inputs each must refuse without changing anything.

mod common;

use common::*;

/// A detached container running `script` in sh, gone again when the returned guard drops.
struct Running(String);

/// A name no earlier run used: the journal keeps what earlier runs logged.
fn fresh(prefix: &str) -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    format!("{prefix}-{}", t.as_micros() % 100_000_000)
}

impl Running {
    fn start(name: &str, flags: &str, script: &str) -> Running {
        sh(&format!("berthctl rm -f {name} >/dev/null 2>&1"));
        ok(&format!(
            "berthctl run -d --name {name} {flags} -- /bin/sh -c '{script}'"
        ));
        wait_until(&format!("{name} running"), || {
            prop(name, "State") == "running"
        });
        Running(name.to_string())
    }

    fn leader(&self) -> u32 {
        prop(&self.0, "Leader").parse().unwrap()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        sh(&format!("berthctl rm -f {} >/dev/null 2>&1", self.0));
    }
}

/// One field of a /proc/PID/status text.
fn status_field(status: &str, key: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .unwrap_or_else(|| panic!("no {key} in {status}"))
        .trim()
        .to_string()
}

/// The `cgroup.procs` of a container's scope on the host (hybrid or unified layout).
fn scope_procs(name: &str) -> Vec<u32> {
    let cg = ok(&format!(
        "systemctl show -p ControlGroup --value berth-{name}.scope"
    ));
    let procs = ok(&format!(
        "cat /sys/fs/cgroup/unified{cg}/cgroup.procs 2>/dev/null || cat /sys/fs/cgroup{cg}/cgroup.procs"
    ));
    procs.lines().map(|l| l.trim().parse().unwrap()).collect()
}

#[test]
fn output_of_a_detached_container_is_in_the_journal_with_its_fields_across_a_berthd_restart() {
    let name = fresh("wl-logs");
    let c = Running::start(
        &name,
        "",
        "echo to-stderr >&2; i=0; while :; do echo tick-$i; i=$((i+1)); sleep 0.1; done",
    );
    wait_until("ticks in berthctl logs", || {
        sh(&format!("berthctl logs {name} 2>/dev/null"))
            .stdout
            .windows(6)
            .any(|w| w == b"tick-5")
    });
    // stderr lines go to berthctl's stderr, stdout lines to its stdout.
    let o = sh(&format!("berthctl logs {name}"));
    assert!(o.status.success(), "{}", err(&o));
    assert!(out(&o).starts_with("tick-0\ntick-1\n"), "{}", out(&o));
    assert_eq!(err(&o), "to-stderr");
    // The journal's own fields, for journalctl users.
    let json = ok(&format!(
        "journalctl -o json --no-pager CONTAINER_NAME={name} _UID=0 | head -n 50"
    ));
    let entries: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let err_entry = entries
        .iter()
        .find(|e| e["MESSAGE"] == "to-stderr")
        .expect("the stderr line");
    assert_eq!(err_entry["PRIORITY"], "3");
    let tick = entries
        .iter()
        .find(|e| e["MESSAGE"] == "tick-0")
        .expect("tick-0");
    assert_eq!(tick["PRIORITY"], "6");
    assert_eq!(tick["SYSLOG_IDENTIFIER"], name.as_str());
    assert_eq!(tick["CONTAINER_NAME"], name.as_str());
    assert_eq!(tick["_UID"], "0");
    // `journalctl -u` finds them through the scope.
    wait_until("journalctl -u berth-NAME.scope", || {
        out(&sh(&format!(
            "journalctl --no-pager -o cat -u berth-{name}.scope | grep -c '^tick-'"
        )))
        .parse::<u32>()
        .unwrap_or(0)
            > 0
    });
    // -n and -o json.
    let last = ok(&format!("berthctl logs -n 1 -o json {name}"));
    let v: serde_json::Value = serde_json::from_str(&last).unwrap();
    assert!(v["message"].as_str().unwrap().starts_with("tick-"), "{v}");
    assert_eq!(v["stream"], "stdout");
    // A restarted berthd relays on, and no line is lost on the way.
    ok("systemctl restart berthd");
    let before = ok(&format!("berthctl logs {name} 2>/dev/null | tail -n 1"));
    let n: u32 = before.trim_start_matches("tick-").parse().unwrap();
    wait_until("new ticks after the restart", || {
        let last = out(&sh(&format!("berthctl logs -n 1 {name} 2>/dev/null")));
        last.trim_start_matches("tick-").parse::<u32>().unwrap_or(0) > n + 10
    });
    let all = ok(&format!("berthctl logs {name} 2>/dev/null"));
    for (i, line) in all.lines().enumerate() {
        assert_eq!(line, format!("tick-{i}"), "line {i} of the log");
    }
    // logs -f shows new lines as they come.
    let followed = ok(&format!("timeout 2 berthctl logs -f -n 0 {name}; true"));
    assert!(followed.lines().count() >= 3, "{followed:?}");
    drop(c);
    // Exited and removed: still in the journal.
    assert_eq!(
        ok(&format!("berthctl logs {name} 2>/dev/null | head -n 1")),
        "tick-0"
    );
}

/// The number of the last `n-N` line in `text`, if any.
fn last_n(text: &str) -> Option<u32> {
    text.lines()
        .rev()
        .find_map(|l| l.strip_prefix("n-").and_then(|n| n.parse().ok()))
}

#[test]
fn logs_follow_shows_every_line_once_in_order_across_a_berthd_restart_and_ends_at_removal() {
    let name = fresh("wl-follow");
    let c = Running::start(
        &name,
        "",
        "echo early; echo to-stderr >&2; i=0; while :; do echo n-$i; i=$((i+1)); sleep 0.02; done",
    );
    wait_until("lines in the journal", || {
        last_n(&out(&sh(&format!("berthctl logs {name} 2>/dev/null")))).unwrap_or(0) >= 20
    });
    // berthctl logs -f in the background, its stdout and stderr in files.
    let f = format!("/tmp/{name}.follow");
    let pid = ok(&format!(
        "setsid sh -c 'exec berthctl logs -f {name} >{f} 2>{f}.err' </dev/null >/dev/null 2>&1 & echo $!"
    ));
    let followed = || out(&sh(&format!("cat {f}")));
    wait_until("the follower shows new lines", || {
        last_n(&followed()).unwrap_or(0) >= 60
    });
    // A berthd restart ends the feed; berthctl subscribes again and catches up.
    ok("systemctl restart berthd");
    let at_restart = last_n(&followed()).unwrap();
    wait_until("the follower goes on after the restart", || {
        last_n(&followed()).unwrap_or(0) > at_restart + 50
    });
    assert_eq!(
        code(&format!("test -d /proc/{pid}")),
        0,
        "the follower still runs"
    );
    // Removal ends it, and what it showed is exactly what the journal has.
    ok(&format!("berthctl rm -f {name}"));
    drop(c);
    wait_until("the follower ends when the container is removed", || {
        code(&format!("test -d /proc/{pid}")) != 0
    });
    let shown = followed();
    let journal = ok(&format!("berthctl logs {name} 2>/dev/null"));
    let lines: Vec<&str> = shown.lines().collect();
    assert_eq!(
        lines.first(),
        Some(&"early"),
        "{}",
        &shown[..shown.len().min(200)]
    );
    for (i, line) in lines[1..].iter().enumerate() {
        assert_eq!(
            *line,
            format!("n-{i}"),
            "line {} of what logs -f showed",
            i + 1
        );
    }
    assert_eq!(
        shown.trim_end(),
        journal.trim_end(),
        "logs -f and the journal agree"
    );
    let e = ok(&format!("cat {f}.err"));
    assert!(
        e.starts_with("to-stderr"),
        "stderr lines go to stderr: {e:?}"
    );
    assert_eq!(e.matches("to-stderr").count(), 1, "{e:?}");
    sh(&format!("rm -f {f} {f}.err"));
}

#[test]
fn a_foreground_run_gets_no_descriptor_of_the_callers_terminal_but_its_output_arrives() {
    // `script` gives berthctl a real terminal as stdin, stdout and stderr.
    let o = ok(
        "script -qec \"berthctl run --rm -- /bin/sh -c 'for f in 0 1 2; do if [ -t \\$f ]; then echo fd\\$f-tty; else echo fd\\$f-notty; fi; done; echo to-err >&2'\" /dev/null",
    );
    let o = o.replace('\r', "");
    assert!(o.contains("fd0-notty"), "{o}");
    assert!(o.contains("fd1-notty"), "{o}");
    assert!(o.contains("fd2-notty"), "{o}");
    assert!(o.contains("to-err"), "{o}");
    // Not a terminal: passed as they are.
    assert_eq!(ok("berthctl run --rm -- /bin/echo hello | cat"), "hello");
    assert_eq!(ok("echo piped | berthctl run --rm -- /bin/cat"), "piped");
}

#[test]
fn run_t_gives_a_pty_of_the_containers_own_devpts() {
    let o = ok(
        "script -qec \"stty rows 24 cols 80; berthctl run --rm -t -- /bin/sh -c 'tty; stty size; ls -l /proc/self/fd/0'\" /dev/null",
    )
    .replace('\r', "");
    assert!(o.contains("/dev/pts/0"), "{o}");
    assert!(o.contains("24 80"), "{o}");
    // The exit status comes back through the terminal session.
    assert_eq!(
        code(
            "script -qec \"berthctl run --rm -t -- /bin/sh -c 'exit 5'\" /dev/null >/dev/null; echo $? > /tmp/rc; true; exit $(cat /tmp/rc)"
        ),
        5
    );
}

#[test]
fn a_killed_foreground_berthctl_leaves_no_rm_container_running() {
    sh("berthctl rm -f wl-fg >/dev/null 2>&1");
    ok(
        "berthctl run --rm --name wl-fg -- /bin/sleep 1000 </dev/null >/dev/null 2>&1 & echo $! > /tmp/wl-fg.pid",
    );
    wait_until("wl-fg running", || {
        out(&sh("berthctl show wl-fg -p State --value 2>/dev/null")) == "running"
    });
    ok("kill -9 $(cat /tmp/wl-fg.pid)");
    wait_until("wl-fg removed", || {
        code("berthctl status wl-fg >/dev/null 2>&1") != 0
    });
    assert_eq!(
        code("systemctl is-active --quiet berth-wl-fg.scope"),
        3,
        "the scope is gone"
    );
}

#[test]
fn exec_runs_in_the_payloads_namespaces_cgroup_map_capabilities_and_seccomp() {
    let c = Running::start("wl-exec", "", "exec /bin/sleep 1000");
    assert_eq!(code("berthctl exec wl-exec -- /bin/sh -c 'exit 7'"), 7);
    assert_eq!(
        ok(
            "berthctl exec -u 1000 -w /tmp -e FOO=bar wl-exec -- /bin/sh -c 'id -u; pwd; echo $FOO'"
        ),
        "1000\n/tmp\nbar"
    );
    // The exec'd process, from the host: find it in the scope's cgroup.
    ok("(berthctl exec wl-exec -- /bin/sleep 998 >/dev/null 2>&1 &); true");
    let before: Vec<u32> = scope_procs("wl-exec");
    let mut pid = 0;
    wait_until("the exec'd sleep in the scope", || {
        for p in scope_procs("wl-exec") {
            if out(&sh(&format!("tr '\\0' ' ' < /proc/{p}/cmdline"))).contains("sleep 998") {
                pid = p;
                return true;
            }
        }
        false
    });
    let _ = before;
    let leader = c.leader();
    let payload = scope_procs("wl-exec")
        .into_iter()
        .find(|p| out(&sh(&format!("tr '\\0' ' ' < /proc/{p}/cmdline"))).contains("sleep 1000"))
        .expect("the payload");
    let ours = ok(&format!("cat /proc/{pid}/status"));
    let theirs = ok(&format!("cat /proc/{payload}/status"));
    for key in [
        "CapEff",
        "CapPrm",
        "CapBnd",
        "CapInh",
        "Seccomp",
        "NoNewPrivs",
        "Uid",
        "Gid",
    ] {
        assert_eq!(
            status_field(&ours, key),
            status_field(&theirs, key),
            "{key}"
        );
    }
    assert_eq!(status_field(&ours, "Seccomp"), "2");
    // In the container's PID namespace: two levels of PID.
    assert_eq!(status_field(&ours, "NSpid").split_whitespace().count(), 2);
    for ns in ["mnt", "pid", "net", "ipc", "uts", "user", "cgroup"] {
        assert_eq!(
            ok(&format!("readlink /proc/{pid}/ns/{ns}")),
            ok(&format!("readlink /proc/{leader}/ns/{ns}")),
            "{ns} namespace"
        );
    }
    assert_eq!(
        ok(&format!("cat /proc/{pid}/uid_map")),
        ok(&format!("cat /proc/{payload}/uid_map"))
    );
    assert_eq!(
        ok(&format!("cat /proc/{pid}/cgroup")),
        ok(&format!("cat /proc/{payload}/cgroup"))
    );
    // The command ends when it is killed: the status says so.
    ok(&format!("kill -9 {pid}"));
    // exec with a terminal: a pty of the container's devpts, the exit status back.
    let o = ok("script -qec \"berthctl exec -t wl-exec -- /bin/sh -c 'tty; exit 0'\" /dev/null")
        .replace('\r', "");
    assert!(o.contains("/dev/pts/"), "{o}");
    // shell, without a terminal (stdin is a pipe).
    assert_eq!(
        ok("echo 'echo in-shell; id -u' | berthctl shell wl-exec"),
        "in-shell\n0"
    );
    assert_eq!(code("echo 'exit 3' | berthctl shell wl-exec"), 3);
}

#[test]
fn exec_refuses_bad_input_with_typed_errors() {
    let _c = Running::start("wl-bad", "", "exec /bin/sleep 1000");
    let before = leftovers();
    // Not found: 127; a relative program path: invalid argument; an unknown user.
    assert_eq!(code("berthctl exec wl-bad -- /no/such/program"), 127);
    assert_eq!(code("berthctl exec wl-bad -- bin/true"), 4);
    assert_ne!(code("berthctl exec -u nosuchuser wl-bad -- /bin/true"), 0);
    assert_eq!(code("berthctl exec wl-bad -e NOEQUALS -- /bin/true"), 4);
    assert_eq!(code("berthctl exec no-such-container -- /bin/true"), 3);
    ok("berthctl create --name wl-stopped -- /bin/true");
    assert_eq!(code("berthctl exec wl-stopped -- /bin/true"), 5);
    ok("berthctl rm wl-stopped");
    assert_eq!(leftovers(), before);
}

#[test]
fn bind_mounts_volumes_and_tmpfs_are_mounted_inside_with_the_right_owner() {
    ok("rm -rf /tmp/wl-bind && mkdir -p /tmp/wl-bind && echo host-data > /tmp/wl-bind/f");
    // idmap: the host's root files belong to the container's root.
    assert_eq!(
        ok(
            "berthctl run --rm -v /tmp/wl-bind:/data:rw,idmap -- /bin/sh -c 'cat /data/f; stat -c %u /data/f; echo new > /data/g'"
        ),
        "host-data\n0"
    );
    assert_eq!(
        ok("cat /tmp/wl-bind/g; stat -c %u /tmp/wl-bind/g"),
        "new\n0"
    );
    // Without idmap they are nobody's, and the container's root may not write there.
    assert_eq!(
        ok(
            "berthctl run --rm -v /tmp/wl-bind:/data -- /bin/sh -c 'stat -c %u /data/f; touch /data/x 2>/dev/null && echo wrote || echo refused'"
        ),
        "65534\nrefused"
    );
    // :ro refuses writes.
    assert_eq!(
        ok(
            "berthctl run --rm -v /tmp/wl-bind:/data:ro,idmap -- /bin/sh -c 'touch /data/x 2>&1; grep \" /data \" /proc/self/mountinfo | grep -c \" ro,\"'"
        ),
        "touch: /data/x: Read-only file system\n1"
    );
    // A named volume keeps its data between containers, and is refused removal while used.
    sh("berthctl volume rm wl-vol >/dev/null 2>&1");
    ok("berthctl volume create wl-vol");
    assert!(ok("berthctl volume ls").contains("wl-vol"));
    ok("berthctl run --rm -v wl-vol:/v -- /bin/sh -c 'echo kept > /v/x'");
    assert_eq!(
        ok("berthctl run --rm -v wl-vol:/v -- /bin/cat /v/x"),
        "kept"
    );
    let c = Running::start("wl-voluser", "-v wl-vol:/v", "exec /bin/sleep 1000");
    assert_ne!(code("berthctl volume rm wl-vol"), 0);
    drop(c);
    ok("berthctl volume rm wl-vol");
    assert!(!ok("berthctl volume ls").contains("wl-vol"));
    // tmpfs, and a read-only root with a writable /tmp.
    assert_eq!(
        ok(
            "berthctl run --rm --tmpfs /scratch:size=1m --read-only -- /bin/sh -c 'grep -c \"^tmpfs /scratch tmpfs\" /proc/mounts; touch /x 2>/dev/null && echo root-rw || echo root-ro; touch /tmp/x && echo tmp-rw'"
        ),
        "1\nroot-ro\ntmp-rw"
    );
}

#[test]
fn bad_mounts_are_refused_and_change_nothing() {
    let before = leftovers();
    for bad in [
        "-v /no/such/host/path:/data",
        "-v /tmp:relative",
        "-v /tmp:/a/../b",
        "--mount type=bind,source=/tmp,target=/x,bind-propagation=shared",
        "--tmpfs relative",
    ] {
        let o = sh(&format!("berthctl run --rm {bad} -- /bin/true"));
        assert!(!o.status.success(), "{bad} was accepted");
        assert!(!err(&o).is_empty(), "{bad}: no message");
    }
    assert_eq!(leftovers(), before);
    // An image whose mount target is a symlink to / cannot redirect the mount to the host.
    ok(
        "rm -rf /tmp/wl-evil && cp -a /usr/local/lib/berth/images/default /tmp/wl-evil && ln -s / /tmp/wl-evil/escape",
    );
    sh("berthctl image rm -f wl-evil >/dev/null 2>&1");
    ok("berthctl image import-fs /tmp/wl-evil wl-evil");
    ok("rm -rf /tmp/wl-src && mkdir /tmp/wl-src && echo mounted > /tmp/wl-src/marker");
    let o = sh(
        "berthctl run --rm --image wl-evil -v /tmp/wl-src:/escape/etc/wl-target -- /bin/cat /etc/wl-target/marker",
    );
    assert_eq!(
        code("test -e /etc/wl-target"),
        1,
        "the host's /etc was touched: {}",
        err(&o)
    );
    ok("berthctl image rm wl-evil");
}

#[test]
fn cp_copies_files_and_trees_in_and_out_confined_to_the_container() {
    let _c = Running::start("wl-cp", "", "exec /bin/sleep 1000");
    ok(
        "rm -rf /tmp/wl-cp && mkdir -p /tmp/wl-cp/tree/sub && echo one > /tmp/wl-cp/f && echo two > /tmp/wl-cp/tree/sub/g",
    );
    ok("berthctl cp /tmp/wl-cp/f wl-cp:/tmp/");
    assert_eq!(
        ok("berthctl exec wl-cp -- /bin/sh -c 'cat /tmp/f; stat -c %u /tmp/f'"),
        "one\n0"
    );
    ok("berthctl cp /tmp/wl-cp/tree wl-cp:/tmp/tree");
    assert_eq!(ok("berthctl exec wl-cp -- /bin/cat /tmp/tree/sub/g"), "two");
    // Out: a file and a tree, owned by the caller.
    ok("rm -rf /tmp/wl-out && mkdir /tmp/wl-out");
    ok("berthctl exec wl-cp -- /bin/sh -c 'echo inside > /tmp/made; chmod 4755 /tmp/made'");
    ok("berthctl cp wl-cp:/tmp/made /tmp/wl-out/made");
    assert_eq!(
        ok("cat /tmp/wl-out/made; stat -c '%u %a' /tmp/wl-out/made"),
        "inside\n0 755"
    );
    ok("berthctl cp wl-cp:/tmp/tree /tmp/wl-out/");
    assert_eq!(ok("cat /tmp/wl-out/tree/sub/g"), "two");
    // A symlink inside pointing at a host path resolves inside the container.
    ok("rm -rf /tmp/wl-canary && mkdir /tmp/wl-canary");
    ok("berthctl exec wl-cp -- /bin/sh -c 'mkdir -p /inside && ln -s /tmp/wl-canary /inside/link'");
    sh("berthctl cp /tmp/wl-cp/f wl-cp:/inside/link/");
    assert_eq!(
        ok("ls -A /tmp/wl-canary | wc -l"),
        "0",
        "the host canary changed"
    );
    sh("berthctl cp /tmp/wl-cp/f wl-cp:../../../tmp/wl-canary/f");
    assert_eq!(
        ok("ls -A /tmp/wl-canary | wc -l"),
        "0",
        "the host canary changed"
    );
    // Refused: a FIFO, a missing source, a stopped container.
    ok("rm -f /tmp/wl-fifo && mkfifo /tmp/wl-fifo");
    assert_ne!(code("timeout 10 berthctl cp /tmp/wl-fifo wl-cp:/tmp/"), 0);
    assert_ne!(
        code("timeout 10 berthctl cp wl-cp:/dev/zero /tmp/wl-out/zero"),
        0
    );
    assert_eq!(code("berthctl cp /tmp/wl-cp/missing wl-cp:/tmp/"), 3);
    assert_eq!(code("berthctl cp /tmp/wl-cp/f /tmp/elsewhere"), 4);
}

/// What the tmux pane shows now.
fn pane() -> String {
    ok("tmux -L wl capture-pane -p -t wl")
}

fn type_keys(keys: &str) {
    ok(&format!("tmux -L wl send-keys -t wl {keys}"));
}

fn wait_pane(what: &str) {
    wait_until(&format!("{what:?} on the terminal"), || {
        pane().contains(what)
    });
}

#[test]
fn an_interactive_shell_in_a_real_terminal_has_job_control_resizes_and_restores_the_terminal() {
    sh("tmux -L wl kill-server >/dev/null 2>&1; berthctl rm -f wl-tty >/dev/null 2>&1");
    ok("tmux -L wl new-session -d -s wl -x 80 -y 24 /bin/sh");
    type_keys("'berthctl run --rm -it --name wl-tty -- /bin/sh' Enter");
    wait_pane("/ #");
    type_keys("'tty; stty size' Enter");
    wait_pane("/dev/pts/0");
    wait_pane("24 80");
    // A resize reaches the container's terminal (SIGWINCH, then TIOCSWINSZ on the master).
    ok("tmux -L wl resize-window -t wl -x 120 -y 40");
    std::thread::sleep(std::time::Duration::from_millis(500));
    type_keys("'clear; stty size' Enter");
    wait_pane("40 120");
    // Ctrl-C interrupts the shell's job, not the container.
    type_keys("'clear; sleep 100' Enter");
    std::thread::sleep(std::time::Duration::from_millis(500));
    type_keys("C-c");
    type_keys("'echo after-$((20+1))' Enter");
    wait_pane("after-21");
    assert_eq!(prop("wl-tty", "State"), "running");
    // Ctrl-Z stops it; the shell's job control shows it, `fg` takes it back.
    type_keys("'clear; sleep 100' Enter");
    std::thread::sleep(std::time::Duration::from_millis(500));
    type_keys("C-z");
    wait_pane("Stopped");
    type_keys("'fg' Enter");
    std::thread::sleep(std::time::Duration::from_millis(500));
    type_keys("C-c");
    type_keys("'clear; jobs; echo back-$((30+1))' Enter");
    wait_pane("back-31");
    assert!(!pane().contains("Stopped"), "{}", pane());
    // Leaving the shell ends the container (--rm: removed) and gives the terminal back as it
    // was: canonical mode and echo on again.
    type_keys("'exit' Enter");
    wait_until("wl-tty removed", || {
        code("berthctl status wl-tty >/dev/null 2>&1") != 0
    });
    type_keys(
        "'clear; stty -a | tr \" \" \"\\n\" | grep -x -e -icanon -e icanon -e -echo -e echo' Enter",
    );
    // The typed command line holds both words too: wait for the output's own lines.
    wait_until("stty's answer", || {
        pane()
            .lines()
            .any(|l| matches!(l.trim(), "icanon" | "-icanon"))
    });
    let p = pane();
    assert!(p.lines().any(|l| l.trim() == "icanon"), "{p}");
    assert!(p.lines().any(|l| l.trim() == "echo"), "{p}");
    sh("tmux -L wl kill-server");
}

#[test]
fn bind_mounts_a_host_directory_into_a_running_container_confined_to_its_root() {
    let c = Running::start("wl-live", "", "exec /bin/sleep 1000");
    ok(
        "rm -rf /tmp/wl-live-src /tmp/wl-live-canary && mkdir /tmp/wl-live-src /tmp/wl-live-canary && echo live > /tmp/wl-live-src/f",
    );
    ok("berthctl bind --mkdir --read-only wl-live /tmp/wl-live-src /mnt/live");
    assert_eq!(
        ok(
            "berthctl exec wl-live -- /bin/sh -c 'cat /mnt/live/f; touch /mnt/live/x 2>/dev/null && echo rw || echo ro'"
        ),
        "live\nro"
    );
    // A mount point that is a symlink to a host path is resolved inside the container.
    ok("berthctl exec wl-live -- /bin/ln -s /tmp/wl-live-canary /escape");
    sh("berthctl bind wl-live /tmp/wl-live-src /escape");
    assert_eq!(ok("ls -A /tmp/wl-live-canary | wc -l"), "0");
    assert_eq!(
        ok("grep -c wl-live-canary /proc/self/mountinfo || true"),
        "0"
    );
    // Missing host path, relative target, a stopped container.
    assert_eq!(code("berthctl bind wl-live /no/such/path /x"), 3);
    assert_eq!(code("berthctl bind wl-live /tmp/wl-live-src relative"), 4);
    drop(c);
}

/// More lines than journald lets one unit send by default (10000 per 30 s, scaled by free
/// space: about 35000 here), counted back in order: berthd.service's rate limit is lifted
/// and the relay drops nothing.
#[test]
fn a_burst_of_lines_is_all_in_the_journal_in_order() {
    let name = fresh("wl-burst");
    ok(&format!(
        "berthctl run -d --rm --name {name} -- /bin/seq 1 60000"
    ));
    let count = || {
        out(&sh(&format!(
            "journalctl CONTAINER_NAME={name} _UID=0 -o cat --no-pager | wc -l"
        )))
        .parse::<u32>()
        .unwrap_or(0)
    };
    let t = std::time::Instant::now();
    while count() < 60000 && t.elapsed() < std::time::Duration::from_secs(120) {
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
    assert_eq!(count(), 60000);
    assert_eq!(
        ok(&format!(
            "berthctl logs {name} | awk 'NR != $1 {{ print \"gap at \" NR; exit }}'"
        )),
        ""
    );
}

#[test]
fn a_killed_berthctl_exec_hangs_its_command_up() {
    let _c = Running::start("wl-hup", "", "exec /bin/sleep 1000");
    ok(
        "berthctl exec wl-hup -- /bin/sleep 997 </dev/null >/dev/null 2>&1 & echo $! > /tmp/wl-hup.pid",
    );
    let running = || {
        scope_procs("wl-hup").into_iter().any(|p| {
            out(&sh(&format!(
                "tr '\\0' ' ' < /proc/{p}/cmdline 2>/dev/null"
            )))
            .contains("sleep 997")
        })
    };
    wait_until("the exec'd sleep", running);
    ok("kill -9 $(cat /tmp/wl-hup.pid)");
    wait_until("the exec'd sleep hung up", || !running());
    assert_eq!(prop("wl-hup", "State"), "running", "only the command ends");
}

#[test]
fn log_driver_none_sends_nothing_to_the_journal() {
    let name = fresh("wl-quiet");
    ok(&format!(
        "berthctl run -d --rm --log-driver none --name {name} -- /bin/echo not-logged"
    ));
    wait_until("it exited", || {
        code(&format!("berthctl status {name} >/dev/null 2>&1")) != 0
    });
    assert_eq!(
        ok(&format!(
            "journalctl CONTAINER_NAME={name} -o cat --no-pager | wc -l"
        )),
        "0"
    );
    assert_ne!(
        code("berthctl run --rm --log-driver syslog -- /bin/true"),
        0
    );
}

#[test]
fn ephemeral_containers_start_from_the_image_and_anonymous_volumes_go_with_their_container() {
    sh("berthctl rm -f wl-eph >/dev/null 2>&1");
    ok("berthctl create --name wl-eph --ephemeral -v /cache -- /bin/sleep 1000");
    ok("berthctl start wl-eph");
    ok("berthctl exec wl-eph -- /bin/sh -c 'echo x > /written; echo y > /cache/kept'");
    let anon = ok("berthctl volume ls -o json");
    let vols: serde_json::Value = serde_json::from_str(&anon).unwrap();
    let mine: Vec<&serde_json::Value> = vols
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["anonymous"] == true && v["users"].to_string().contains("wl-eph"))
        .collect();
    assert_eq!(mine.len(), 1, "{anon}");
    let vol = mine[0]["name"].as_str().unwrap().to_string();
    ok("berthctl stop wl-eph");
    ok("berthctl start wl-eph");
    assert_eq!(
        ok(
            "berthctl exec wl-eph -- /bin/sh -c 'test -e /written && echo kept || echo gone; cat /cache/kept'"
        ),
        "gone\ny"
    );
    ok("berthctl rm -f wl-eph");
    assert!(
        !ok("berthctl volume ls").contains(&vol),
        "{vol} outlived its container"
    );
}

#[test]
fn run_dt_gives_a_detached_container_a_terminal_whose_output_is_in_the_journal() {
    let name = fresh("wl-dt");
    let _c = Running::start(
        &name,
        "-t",
        "if [ -t 0 ] && [ -t 1 ]; then echo dt-has-a-tty; fi; tty; exec /bin/sleep 1000",
    );
    wait_until("the terminal's lines in the journal", || {
        let o = sh(&format!("berthctl logs {name}"));
        out(&o).contains("dt-has-a-tty") && out(&o).contains("/dev/pts/0")
    });
    // Its input is a terminal that stays open and silent: the payload runs on.
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(prop(&name, "State"), "running");
}

#[test]
fn ctrl_c_in_run_t_without_i_is_passed_to_the_payload_and_its_output_still_arrives() {
    sh("tmux -L wlt kill-server >/dev/null 2>&1; berthctl rm -f wl-t >/dev/null 2>&1");
    ok("tmux -L wlt new-session -d -s wlt -x 80 -y 24 /bin/sh");
    let pane = || ok("tmux -L wlt capture-pane -p -t wlt");
    ok(r#"cat > /tmp/wl-t.sh <<'EOF'
exec berthctl run --rm -t --name wl-t -- /bin/sh -c 'trap "echo got-int; exit 7" INT; echo armed; while :; do sleep 0.1; done'
EOF"#);
    ok("tmux -L wlt send-keys -t wlt 'sh /tmp/wl-t.sh' Enter");
    wait_until("armed", || pane().contains("armed"));
    // Not in raw mode (no -i): Ctrl-C is a SIGINT to berthctl, which passes it on and keeps
    // showing the payload's terminal until it ends.
    ok("tmux -L wlt send-keys -t wlt C-c");
    wait_until("the payload's answer", || pane().contains("got-int"));
    // berthctl's exit status is the payload's.
    ok("tmux -L wlt send-keys -t wlt 'echo rc=$?' Enter");
    wait_until("the exit status", || pane().contains("rc=7"));
    wait_until("wl-t removed", || {
        code("berthctl status wl-t >/dev/null 2>&1") != 0
    });
    sh("tmux -L wlt kill-server");
}

#[test]
fn logs_of_a_name_nobody_used_is_an_error_but_a_removed_containers_lines_stay() {
    let gone = fresh("wl-gone");
    ok(&format!(
        "berthctl run -d --rm --name {gone} -- /bin/echo line-of-{gone}"
    ));
    wait_until("the removed container's line", || {
        out(&sh(&format!("berthctl logs {gone}"))).contains(&format!("line-of-{gone}"))
    });
    let never = fresh("wl-never");
    let r = sh(&format!("berthctl logs {never}"));
    assert_eq!(r.status.code(), Some(3), "{r:?}");
    assert!(err(&r).contains(&never), "{r:?}");
    assert_eq!(
        code(&format!("berthctl logs -f {never} >/dev/null 2>&1")),
        3
    );
}
