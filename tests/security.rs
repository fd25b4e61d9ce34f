//! The security layer, seen from inside containers: a static probe (tests/probe/probe.c,
//! built by tests/run-integration.sh into BERTH_FIXTURES) reports what a process observes —
//! ID maps, capability sets, no_new_privs, seccomp and the errno of every syscall that must be
//! denied (native and i386), masks, read-only paths, descriptors, keyrings, PID 1's
//! reachability — and these tests compare it with what the spec says. Each attack is a test
//! whose assertion is that it fails; no test writes a global kernel knob (a capability is
//! proven absent by the step that must fail).

mod common;

use common::*;
use serde_json::Value;

/// The probe image: the default image plus the probe, a setuid-root copy of it, a copy with
/// file capabilities, and a passwd whose entry *named* `1000` has uid 0 (runc CVE-2016-3697).
fn probe_image() {
    if code("berthctl image show probe >/dev/null 2>&1") == 0 {
        return;
    }
    let fix = std::env::var("BERTH_FIXTURES").expect("BERTH_FIXTURES (tests/run-integration.sh)");
    ok(&format!(
        "rm -rf /tmp/probe-root && cp -a /usr/local/lib/berth/images/default /tmp/probe-root \
         && cp {fix}/probe /tmp/probe-root/probe && cp {fix}/probe /tmp/probe-root/probe-suid \
         && chmod 4755 /tmp/probe-root/probe-suid \
         && cp {fix}/probe /tmp/probe-root/probe-caps-in && setcap cap_net_bind_service+ep /tmp/probe-root/probe-caps-in \
         && cp {fix}/probe /tmp/probe-root/probe-caps-out && setcap cap_sys_admin+ep /tmp/probe-root/probe-caps-out \
         && printf 'root:x:0:0:root:/root:/bin/sh\\n1000:x:0:0:evil:/:/bin/sh\\napp:x:1000:1000::/home/app:/bin/sh\\n' > /tmp/probe-root/etc/passwd \
         && printf 'root:x:0:\\napp:x:1000:\\nstaff:x:50:app\\n' > /tmp/probe-root/etc/group \
         && berthctl image import-fs /tmp/probe-root probe"
    ));
}

/// Run the probe (or `probe-suid`, `probe-caps`) with extra `run` flags; its JSON.
fn probe(flags: &str, which: &str) -> Value {
    probe_image();
    let out = ok(&format!(
        "berthctl run --rm --image probe {flags} -- /{which}"
    ));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("probe said {out:?}: {e}"))
}

fn caps(p: &Value, set: &str) -> u64 {
    u64::from_str_radix(p[set].as_str().unwrap(), 16).unwrap()
}

const DEFAULT_CAPS: u64 = 0x8004_05fb;
const EPERM: i64 = 1;
const EACCES: i64 = 13;
const EROFS: i64 = 30;
const ENOSYS: i64 = 38;
const EAFNOSUPPORT: i64 = 97;

/// The first line of a uid_map: (inside, outside, count).
fn map(p: &Value, which: &str) -> (u64, u64, u64) {
    let f: Vec<u64> = p[which]
        .as_str()
        .unwrap()
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    (f[0], f[1], f[2])
}

#[test]
fn root_in_a_container_is_an_unprivileged_host_uid_with_podmans_capabilities() {
    let p = probe("", "probe");
    let (inside, outside, count) = map(&p, "uid_map");
    assert_eq!((inside, count), (0, 65536), "{p}");
    assert!(outside >= 524288, "container root is host uid {outside}");
    assert_eq!(map(&p, "gid_map"), (0, outside, 65536));
    assert_eq!(p["uid"], 0);
    for set in ["CapPrm", "CapEff", "CapBnd"] {
        assert_eq!(caps(&p, set), DEFAULT_CAPS, "{set}: {p}");
    }
    assert_eq!(caps(&p, "CapInh"), 0);
    assert_eq!(caps(&p, "CapAmb"), 0);
    assert_eq!(p["NoNewPrivs"], "0");
    assert_eq!(p["Seccomp"], "2");
    // Only stdio reaches the payload.
    let fds: Vec<&String> = p["fds"].as_object().unwrap().keys().collect();
    assert_eq!(fds, ["0", "1", "2"], "{}", p["fds"]);
    // Its cgroup view is its own scope.
    assert!(
        p["cgroup"].as_str().unwrap().contains("0::/\n"),
        "{}",
        p["cgroup"]
    );
    // Two containers get distinct ranges.
    let q = probe("", "probe");
    assert_ne!(map(&q, "uid_map").1, outside);
}

#[test]
fn a_non_root_payload_holds_no_capability() {
    let p = probe("-u 1000", "probe");
    assert_eq!(p["uid"], 1000);
    for set in ["CapPrm", "CapEff", "CapInh", "CapAmb"] {
        assert_eq!(caps(&p, set), 0, "{set}: {p}");
    }
    assert_eq!(caps(&p, "CapBnd"), DEFAULT_CAPS);
}

#[test]
fn a_number_is_always_a_uid_even_when_a_name_says_otherwise() {
    // The probe image's passwd has `1000:x:0:0` before the real uid 1000.
    let p = probe("-u 1000", "probe");
    assert_eq!(
        (p["uid"].as_i64(), p["euid"].as_i64()),
        (Some(1000), Some(1000))
    );
    assert_eq!(
        ok("berthctl run --rm --image probe -u app -- id -u"),
        "1000"
    );
}

#[test]
fn denied_syscalls_fail_natively_and_in_compat_mode() {
    let p = probe("", "probe");
    let native = &p["native"];
    for call in [
        "keyctl",
        "add_key",
        "bpf",
        "perf_event_open",
        "open_by_handle_at",
        "unshare_user",
        "unshare_ns",
        "setns",
        "mount",
        "umount2",
        "pivot_root",
        "ptrace",
        "kexec_load",
        "init_module",
        "finit_module",
        "delete_module",
        "userfaultfd",
        "io_uring_setup",
        "swapon",
        "swapoff",
        "reboot",
        "socket_vsock",
        "tiocsti",
        "tioclinux",
        "mknod_block",
    ] {
        assert_eq!(native[call], EPERM, "{call}: {native}");
    }
    assert_eq!(native["clone3"], ENOSYS);
    assert_eq!(native["unknown"], ENOSYS);
    assert_eq!(native["socket_audit"], EAFNOSUPPORT);
    let i386 = &p["i386"];
    for call in ["keyctl", "unshare_user", "mount"] {
        assert_eq!(i386[call], EPERM, "i386 {call}: {i386}");
    }
    assert_eq!(i386["socketcall"], ENOSYS);
    assert_eq!(i386["getpid_ok"], 0);
}

#[test]
fn masked_paths_read_nothing_and_refuse_writes_read_only_paths_refuse_writes() {
    let p = probe("", "probe");
    let paths = p["paths"].as_object().unwrap();
    for m in [
        "/proc/acpi",
        "/proc/asound",
        "/proc/interrupts",
        "/proc/kcore",
        "/proc/keys",
        "/proc/kallsyms",
        "/proc/latency_stats",
        "/proc/sched_debug",
        "/proc/scsi",
        "/proc/timer_list",
        "/proc/timer_stats",
        "/proc/sysrq-trigger",
        "/sys/firmware",
        "/sys/devices/virtual/powercap",
    ] {
        let s = &paths[m];
        if s["exists"] == false {
            continue;
        }
        assert_eq!(s["read"], 0, "{m} is readable: {s}");
        assert_ne!(s["write_errno"], 0, "{m} is writable: {s}");
    }
    for ro in [
        "/proc/bus",
        "/proc/fs",
        "/proc/irq",
        "/proc/sys",
        "/sys",
        "/sys/fs/cgroup",
    ] {
        let s = &paths[ro];
        assert_eq!(s["ro_mount"], true, "{ro}: {s}");
        assert_ne!(s["write_errno"], 0, "{ro}: {s}");
    }
    // The machine's global core_pattern cannot be opened for writing.
    let cp = &paths["/proc/sys/kernel/core_pattern"];
    assert!(
        [EACCES, EROFS].contains(&cp["write_errno"].as_i64().unwrap()),
        "{cp}"
    );
    // The container's own network settings stay its own.
    assert_eq!(paths["/proc/sys/net"]["ro_mount"], false);
}

#[test]
fn pid1_the_helper_binary_and_the_hosts_keys_are_out_of_reach() {
    let p = probe("", "probe");
    for k in [
        "open_exe",
        "write_exe",
        "readlink_exe",
        "map_files",
        "fd_dir",
    ] {
        assert_eq!(p["pid1"][k], EACCES, "/proc/1 {k}: {}", p["pid1"]);
    }
    assert_eq!(p["keys"], "");
    // keyctl is denied, so no keyring of the host is reachable.
    assert_eq!(p["session_keyring"], -EPERM);
    // Even unconfined, its session keyring is a new one, not the host's.
    let host = ok("python3 -c 'import ctypes; print(ctypes.CDLL(None).syscall(250, 0, -3, 0))'");
    let u = probe("--security-opt seccomp=unconfined", "probe");
    assert_ne!(u["session_keyring"].to_string(), host, "{u}");
    // The container's PID 1 runs from a sealed in-memory copy of the helper.
    ok("berthctl run -d --name pid1exe -- sleep 100");
    let leader = prop("pid1exe", "Leader");
    let exe = ok(&format!("readlink /proc/{leader}/exe"));
    assert!(exe.starts_with("/memfd:berth-helper"), "{exe}");
    assert_ne!(
        code(&format!("echo x >> /proc/{leader}/exe")),
        0,
        "the helper image is writable"
    );
    ok("berthctl rm -f pid1exe");
}

#[test]
fn capabilities_are_added_and_dropped_as_podman_spells_them() {
    let p = probe("--cap-add NET_ADMIN --cap-drop cap_chown", "probe");
    let eff = caps(&p, "CapEff");
    assert_eq!(eff & (1 << 12), 1 << 12, "NET_ADMIN missing");
    assert_eq!(eff & 1, 0, "CHOWN kept");
    let p = probe("--cap-drop all", "probe");
    assert_eq!(caps(&p, "CapBnd"), 0);
    assert_eq!(caps(&p, "CapEff"), 0);
    // With CAP_SYS_ADMIN granted, mount is allowed by the filter (inside its own namespaces).
    let p = probe("--cap-add sys_admin", "probe");
    assert_ne!(p["native"]["mount"], EPERM, "{}", p["native"]);
}

#[test]
fn without_a_user_namespace_root_is_host_root_only_when_asked() {
    let p = probe("--userns=host", "probe");
    assert_eq!(map(&p, "uid_map"), (0, 0, 4294967295));
    assert_eq!(caps(&p, "CapEff"), DEFAULT_CAPS);
    assert_eq!(p["native"]["open_by_handle_at"], EPERM);
    // Host-dangerous capabilities need an explicit opt-in.
    let o = sh("berthctl create --name hostadmin --userns=host --cap-add SYS_ADMIN");
    assert_eq!(o.status.code(), Some(4), "{}", err(&o));
    assert!(err(&o).contains("unsafe-caps"), "{}", err(&o));
    ok(
        "berthctl create --name hostadmin --userns=host --cap-add SYS_ADMIN --security-opt unsafe-caps -- true",
    );
    let sec = ok("berthctl status hostadmin");
    assert!(sec.contains("userns=host"), "{sec}");
    ok("berthctl rm hostadmin");
}

#[test]
fn no_new_privileges_stops_setuid_and_file_capabilities() {
    // Without it a setuid-root binary raises the effective uid, as on any system.
    let p = probe("-u 1000", "probe-suid");
    assert_eq!(
        (p["uid"].as_i64(), p["euid"].as_i64()),
        (Some(1000), Some(0))
    );
    let p = probe("-u 1000 --no-new-privileges", "probe-suid");
    assert_eq!(p["NoNewPrivs"], "1");
    assert_eq!(p["euid"], 1000);
    // A file capability outside the bounding set is never gained: the kernel refuses to run
    // a binary it would have to give less than the file says (capabilities(7)).
    probe_image();
    let o = sh("berthctl run --rm --image probe -u 1000 -- /probe-caps-out");
    assert_eq!(o.status.code(), Some(126), "{}{}", out(&o), err(&o));
    assert!(err(&o).contains("Operation not permitted"), "{}", err(&o));
    // One inside the bounding set is gained (as with docker) — unless no_new_privs, under
    // which file capabilities count for nothing.
    let p = probe("-u 1000", "probe-caps-in");
    assert_eq!(caps(&p, "CapEff"), 1 << 10, "{p}");
    let p = probe("-u 1000 --no-new-privileges", "probe-caps-in");
    assert_eq!(caps(&p, "CapEff"), 0, "{p}");
    let o = sh("berthctl run --rm --image probe -u 1000 --no-new-privileges -- /probe-caps-out");
    assert_eq!(o.status.code(), Some(126), "{}{}", out(&o), err(&o));
}

#[test]
fn seccomp_unconfined_and_custom_profiles() {
    let p = probe("--security-opt seccomp=unconfined", "probe");
    assert_eq!(p["native"]["keyctl"], 0, "{}", p["native"]);
    ok(
        r#"printf '{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO","errnoRet":13}]}' > /tmp/nomkdir.json"#,
    );
    let o =
        sh("berthctl run --rm --security-opt seccomp=/tmp/nomkdir.json -- mkdir /made; echo rc=$?");
    assert!(err(&o).contains("Permission denied"), "{}", err(&o));
    // A bad profile is refused at create, with the reason, leaving nothing behind.
    ok("echo '{not json' > /tmp/bad.json");
    let before = leftovers();
    let o = sh("berthctl create --name badsec --security-opt seccomp=/tmp/bad.json");
    assert_eq!(o.status.code(), Some(4), "{}", err(&o));
    assert!(err(&o).contains("JSON"), "{}", err(&o));
    assert_eq!(leftovers(), before);
}

#[test]
fn image_layers_are_never_chowned_and_writes_land_in_the_containers_range() {
    probe_image();
    let sums = || ok("find /var/lib/berth/layers -printf '%p %U %G %m %s\\n' | sort | sha256sum");
    let before = sums();
    ok(
        "berthctl run --name own1 --image probe -- /bin/sh -c 'echo x > /etc/new; mkdir /d; chown 1000:1000 /d'",
    );
    ok("berthctl run --name own2 --image probe -- /bin/sh -c 'touch /etc/passwd'");
    assert_eq!(sums(), before, "a layer changed");
    let range = |n: &str| -> u64 {
        let leaderless = ok(&format!("stat -c %u /var/lib/berth/containers/{n}/upper"));
        leaderless.parse().unwrap()
    };
    let (r1, r2) = (range("own1"), range("own2"));
    assert!(r1 >= 524288 && r2 >= 524288 && r1 != r2, "{r1} {r2}");
    assert_eq!(
        ok("stat -c '%u:%g' /var/lib/berth/containers/own1/upper/etc/new"),
        format!("{r1}:{r1}")
    );
    assert_eq!(
        ok("stat -c '%u:%g' /var/lib/berth/containers/own1/upper/d"),
        format!("{}:{}", r1 + 1000, r1 + 1000)
    );
    ok("berthctl rm own1 own2 || { berthctl rm own1; berthctl rm own2; }");
}

#[test]
fn the_callers_terminal_is_not_the_containers_to_inject_into() {
    probe_image();
    // berthctl on a real terminal (script gives it one): TIOCSTI from inside is refused, and
    // nothing the container might push reaches the shell that ran berthctl.
    let out = ok(
        "rm -f /tmp/injected; script -qec 'berthctl run --rm --image probe -- /probe' /dev/null",
    );
    let json = out.lines().find(|l| l.starts_with('{')).unwrap_or("");
    let p: Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{out:?}: {e}"));
    assert_eq!(p["native"]["tiocsti"], EPERM, "{}", p["native"]);
}

#[test]
fn bad_security_input_is_refused_and_changes_nothing() {
    ok("berthctl create --name fixedrange --userns=1048576:65536 -- true");
    let before = leftovers();
    for (cmd, want) in [
        ("berthctl create --name b1 --cap-add CAP_BOGUS", "CAP_BOGUS"),
        ("berthctl create --name b1 --cap-drop nonsense", "nonsense"),
        (
            "berthctl create --name b1 --userns=1048576:65536",
            "overlaps",
        ),
        ("berthctl create --name b1 --userns=100:65536", "multiple"),
        ("berthctl create --name b1 --userns=0:65536", "outside"),
        ("berthctl create --name b1 --userns=sometimes", "sometimes"),
        (
            "berthctl create --name b1 --security-opt label=level:s0:c99999",
            "label",
        ),
        (
            "berthctl create --name b1 --security-opt apparmor=x",
            "apparmor",
        ),
        ("berthctl create --name b1 --ulimit nofile=10:5", "nofile"),
        (
            "berthctl create --name b1 -e \"$(printf 'A=b\\nc')\"",
            "KEY=VALUE",
        ),
    ] {
        let o = sh(cmd);
        assert_eq!(o.status.code(), Some(4), "`{cmd}`: {}", err(&o));
        assert!(err(&o).contains(want), "`{cmd}`: {}", err(&o));
        assert_eq!(leftovers(), before, "`{cmd}` left something behind");
    }
    ok("berthctl rm fixedrange");
}

#[test]
fn polkit_decides_who_may_do_what() {
    sh("berthctl rm -f pk0 pk1 pk2 pk3 gone; berthctl image rm pkimg");
    ok("id berthtest >/dev/null 2>&1 || useradd -M -s /bin/sh berthtest");
    ok(
        r#"mkdir -p /etc/polkit-1/rules.d && cat > /etc/polkit-1/rules.d/50-berth-test.rules <<'JS'
polkit.addRule(function(action, subject) {
    if (action.id == "org.berth.berth1.manage-containers" && subject.user == "berthtest")
        return polkit.Result.YES;
});
JS"#,
    );
    let as_user = |u: &str, cmd: &str| {
        code(&format!(
            "setpriv --reuid={u} --regid=$(id -g {u}) --clear-groups {cmd} >/dev/null 2>&1"
        ))
    };
    // polkitd notices new rules by itself; wait until it has.
    wait_until("polkit to read the rule", || {
        as_user("berthtest", "berthctl run --rm --name pk0 -- true") == 0
    });
    // The granted user manages containers…
    assert_eq!(
        as_user("berthtest", "berthctl run --rm --name pk1 -- true"),
        0
    );
    assert_eq!(
        as_user("berthtest", "berthctl run -d --name pk2 -- sleep 100"),
        0
    );
    assert_eq!(as_user("berthtest", "berthctl stop pk2"), 0);
    // …but not images, and nobody manages either.
    ok("berthctl image clone default pkimg");
    assert_eq!(as_user("berthtest", "berthctl image rm pkimg"), 7);
    assert_eq!(as_user("nobody", "berthctl rm pk2"), 7);
    assert_eq!(as_user("nobody", "berthctl create --name pk3"), 7);
    let o = sh("setpriv --reuid=nobody --regid=nogroup --clear-groups berthctl rm pk2");
    assert!(
        err(&o).contains("org.berth.berth1.manage-containers"),
        "{}",
        err(&o)
    );
    // A call whose sender disconnects right after sending executes nothing.
    ok(
        "setpriv --reuid=berthtest --regid=berthtest --init-groups busctl --expect-reply=no call org.berth.berth1 /org/berth/berth1 org.berth.berth1.Manager CreateContainer 'sa{sv}' gone 0",
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(code("berthctl show gone >/dev/null 2>&1"), 3);
    // Reads are for everyone, without secrets.
    let listed = ok(
        "setpriv --reuid=nobody --regid=nogroup --clear-groups berthctl ps -a -o json 2>/dev/null || setpriv --reuid=nobody --regid=nogroup --clear-groups berthctl list -a -o json",
    );
    let v: Value = serde_json::from_str(&listed).unwrap();
    for c in v.as_array().unwrap() {
        assert_eq!(c["root_directory"], "", "{c}");
    }
    // An image's environment is root's to see.
    let fix = std::env::var("BERTH_FIXTURES").unwrap();
    ok(&format!(
        "berthctl image show cfgsec >/dev/null 2>&1 || berthctl image import-oci {fix}/config.tar cfgsec"
    ));
    let get = "busctl get-property org.berth.berth1 /org/berth/berth1/image/cfgsec org.berth.berth1.Image Config";
    assert!(ok(get).contains("PATH="), "{}", ok(get));
    let cfg = ok(&format!(
        "setpriv --reuid=nobody --regid=nogroup --clear-groups {get}"
    ));
    assert!(!cfg.contains("PATH="), "{cfg}");
    ok("berthctl rm -f pk2; berthctl image rm pkimg; rm /etc/polkit-1/rules.d/50-berth-test.rules");
}
