//! Tests of the seccomp layer: the compiled program asked directly (a BPF interpreter over
//! every call of both ABIs), then the kernel asked through forked children under the filter.

use std::os::fd::AsRawFd;
use std::time::Instant;

use nix::errno::Errno;

use super::bpf::run;
use super::compile::{BAD_ARCH_ACTION, X32_ACTION, X32_SYSCALL_BIT};
use super::default::{ALLOWED, CAP_GATED};
use super::*;
use crate::sys::ExitInfo;
use crate::sys::seccomp::{RawCall, probe_in_child};

const X86_64: u32 = 0xC000_003E;
const I386: u32 = 0x4000_0003;
const AARCH64: u32 = 0xC000_00B7;

fn caps(names: &[&str]) -> u64 {
    names
        .iter()
        .map(|n| 1u64 << cap_number(n).expect("capability name"))
        .fold(0, |a, b| a | b)
}

/// Docker's default capability set, what a container usually holds.
fn default_caps() -> u64 {
    caps(&[
        "CHOWN",
        "DAC_OVERRIDE",
        "FSETID",
        "FOWNER",
        "MKNOD",
        "NET_RAW",
        "SETGID",
        "SETUID",
        "SETFCAP",
        "SETPCAP",
        "NET_BIND_SERVICE",
        "SYS_CHROOT",
        "KILL",
        "AUDIT_WRITE",
    ])
}

const ALLOW: u32 = libc::SECCOMP_RET_ALLOW;
fn errno(e: i32) -> u32 {
    libc::SECCOMP_RET_ERRNO | e as u32
}

/// What `prog` answers for call `name` of `arch` with `args`.
fn verdict(prog: &Program, arch: Arch, name: &str, args: [u64; 6]) -> u32 {
    let nr = arch
        .number(name)
        .unwrap_or_else(|| panic!("{name} on {arch:?}"));
    run(prog.instructions(), nr, arch.audit_arch(), args).0
}

fn both_arches(name: &str) -> Vec<Arch> {
    [Arch::X86_64, Arch::I386]
        .into_iter()
        .filter(|a| a.number(name).is_some())
        .collect()
}

// ---------------------------------------------------------------------------------------
// The default profile, asked through the interpreter.

#[test]
fn default_program_fits_and_its_size_and_compile_time_are_reported() {
    let profile = default_profile();
    let start = Instant::now();
    let rounds = 50;
    let mut prog = None;
    for _ in 0..rounds {
        prog = Some(compile(&profile, default_caps()).unwrap());
    }
    let per_compile = start.elapsed() / rounds;
    let prog = prog.unwrap();
    assert!(prog.len() <= Program::MAX_LEN);
    let admin = compile(&profile, default_caps() | caps(&["SYS_ADMIN"])).unwrap();

    // Instructions executed per allowed call (the cost every system call pays).
    let mut steps = Vec::new();
    for arch in [Arch::X86_64, Arch::I386] {
        for (_, nr) in arch.table() {
            let (ret, n) = run(prog.instructions(), *nr, arch.audit_arch(), [0; 6]);
            if ret == ALLOW {
                steps.push(n);
            }
        }
    }
    let avg = steps.iter().sum::<usize>() as f64 / steps.len() as f64;
    println!(
        "seccomp default profile: {} instructions ({} with CAP_SYS_ADMIN), compiled in {:?}; \
         allowed calls execute {}..{} instructions (mean {avg:.1})",
        prog.len(),
        admin.len(),
        per_compile,
        steps.iter().min().unwrap(),
        steps.iter().max().unwrap(),
    );
    // A linear scan over ~370 calls per ABI would cost up to ~400 instructions per call.
    assert!(*steps.iter().max().unwrap() < 40);
}

#[test]
fn default_denies_the_dangerous_calls_with_eperm_on_both_abis() {
    let prog = compile(&default_profile(), default_caps()).unwrap();
    let denied = [
        "keyctl",
        "add_key",
        "request_key",
        "bpf",
        "perf_event_open",
        "kexec_load",
        "kexec_file_load",
        "open_by_handle_at",
        "init_module",
        "finit_module",
        "delete_module",
        "userfaultfd",
        "io_uring_setup",
        "io_uring_enter",
        "io_uring_register",
        "swapon",
        "swapoff",
        "reboot",
        "mount",
        "umount",
        "umount2",
        "pivot_root",
        "unshare",
        "setns",
        "fsopen",
        "fsmount",
        "fsconfig",
        "fspick",
        "open_tree",
        "move_mount",
        "mount_setattr",
        "ptrace",
        "process_vm_readv",
        "process_vm_writev",
        "settimeofday",
        "clock_settime",
        "iopl",
        "ioperm",
        "acct",
        "syslog",
        "vhangup",
        "mbind",
        "lookup_dcookie",
        "quotactl",
        "sethostname",
        "lsm_set_self_attr",
        "uselib",
    ];
    for name in denied {
        let arches = both_arches(name);
        assert!(!arches.is_empty(), "{name}");
        for arch in arches {
            assert_eq!(
                verdict(&prog, arch, name, [0; 6]),
                errno(libc::EPERM),
                "{name} on {arch:?}"
            );
        }
    }
}

#[test]
fn default_allows_its_allow_list_on_every_abi_that_has_the_call() {
    let prog = compile(&default_profile(), 0).unwrap();
    for name in ALLOWED {
        for arch in both_arches(name) {
            assert_eq!(
                verdict(&prog, arch, name, [0; 6]),
                ALLOW,
                "{name} on {arch:?}"
            );
        }
    }
}

#[test]
fn unknown_numbers_x32_and_foreign_abis() {
    let prog = compile(&default_profile(), default_caps()).unwrap();
    let p = prog.instructions();
    let enosys = errno(libc::ENOSYS);
    assert_eq!(run(p, 1000, X86_64, [0; 6]).0, enosys);
    assert_eq!(run(p, 1000, I386, [0; 6]).0, enosys);
    // Gaps inside the tables: x86_64 336..424 is unassigned past uprobe, i386 222 too.
    assert_eq!(run(p, 400, X86_64, [0; 6]).0, enosys);
    assert_eq!(run(p, 222, I386, [0; 6]).0, enosys);
    assert_eq!(run(p, u32::MAX, X86_64, [0; 6]).0, enosys);
    assert_eq!(run(p, u32::MAX, I386, [0; 6]).0, enosys);
    // x32: getpid, keyctl, and the x32-only ioctl number 514, each with the x32 bit.
    for nr in [39, 250, 514] {
        assert_eq!(
            run(p, X32_SYSCALL_BIT | nr, X86_64, [0; 6]).0,
            X32_ACTION.ret()
        );
    }
    assert_eq!(X32_ACTION.ret(), enosys);
    assert_eq!(run(p, 39, AARCH64, [0; 6]).0, BAD_ARCH_ACTION.ret());
    assert_eq!(BAD_ARCH_ACTION.ret(), libc::SECCOMP_RET_KILL_PROCESS);
}

#[test]
fn x32_is_denied_even_when_the_profile_allows_everything() {
    let profile = parse_oci(br#"{"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"], "syscalls": [{"names": ["keyctl"], "action": "SCMP_ACT_ERRNO"}]}"#).unwrap();
    let prog = compile(&profile, 0).unwrap();
    let p = prog.instructions();
    assert_eq!(run(p, 250, X86_64, [0; 6]).0, errno(libc::EPERM));
    assert_eq!(run(p, 288, I386, [0; 6]).0, errno(libc::EPERM));
    assert_eq!(
        run(p, X32_SYSCALL_BIT | 250, X86_64, [0; 6]).0,
        errno(libc::ENOSYS)
    );
    // Unknown numbers follow the permissive default.
    assert_eq!(run(p, 1000, X86_64, [0; 6]).0, ALLOW);
}

#[test]
fn capability_groups_open_exactly_their_calls() {
    let profile = default_profile();
    let none = compile(&profile, 0).unwrap();
    for (cap_name, names) in CAP_GATED {
        let with = compile(&profile, caps(&[cap_name])).unwrap();
        for name in *names {
            for arch in both_arches(name) {
                // clone is allowed without namespace flags anyway; test it with one.
                let args = if *name == "clone" {
                    [0x1000_0000 | 17, 0, 0, 0, 0, 0]
                } else {
                    [0; 6]
                };
                assert_eq!(
                    verdict(&with, arch, name, args),
                    ALLOW,
                    "{name} with {cap_name}"
                );
                assert_eq!(
                    verdict(&none, arch, name, args),
                    errno(libc::EPERM),
                    "{name} without {cap_name}"
                );
            }
        }
    }
    // CAP_SYS_ADMIN does not open what no capability opens.
    let all = compile(&profile, u64::MAX).unwrap();
    for name in [
        "keyctl",
        "add_key",
        "kexec_load",
        "userfaultfd",
        "io_uring_setup",
        "swapon",
    ] {
        for arch in both_arches(name) {
            assert_eq!(
                verdict(&all, arch, name, [0; 6]),
                errno(libc::EPERM),
                "{name}"
            );
        }
    }
    for arch in [Arch::X86_64, Arch::I386] {
        assert_eq!(verdict(&all, arch, "clone3", [0; 6]), errno(libc::ENOSYS));
    }
}

#[test]
fn clone_namespace_flags_are_filtered_on_both_abis() {
    let prog = compile(&default_profile(), default_caps()).unwrap();
    let sigchld = libc::SIGCHLD as u64;
    for arch in [Arch::X86_64, Arch::I386] {
        assert_eq!(
            verdict(&prog, arch, "clone", [sigchld, 0, 0, 0, 0, 0]),
            ALLOW
        );
        // Threads: glibc's pthread_create flags.
        let thread = (libc::CLONE_VM
            | libc::CLONE_FS
            | libc::CLONE_FILES
            | libc::CLONE_SIGHAND
            | libc::CLONE_THREAD
            | libc::CLONE_SYSVSEM
            | libc::CLONE_SETTLS
            | libc::CLONE_PARENT_SETTID
            | libc::CLONE_CHILD_CLEARTID) as u64;
        assert_eq!(
            verdict(&prog, arch, "clone", [thread, 0, 0, 0, 0, 0]),
            ALLOW
        );
        for flag in [
            libc::CLONE_NEWNS,
            libc::CLONE_NEWUTS,
            libc::CLONE_NEWIPC,
            libc::CLONE_NEWUSER,
            libc::CLONE_NEWPID,
            libc::CLONE_NEWNET,
            libc::CLONE_NEWCGROUP,
        ] {
            let flags = flag as u64 | sigchld;
            assert_eq!(
                verdict(&prog, arch, "clone", [flags, 0, 0, 0, 0, 0]),
                errno(libc::EPERM),
                "{flag:#x} on {arch:?}"
            );
            // High bits do not hide a flag (the kernel reads the low 32 for clone).
            assert_eq!(
                verdict(&prog, arch, "clone", [flags | 1 << 40, 0, 0, 0, 0, 0]),
                errno(libc::EPERM)
            );
        }
        assert_eq!(verdict(&prog, arch, "clone3", [0; 6]), errno(libc::ENOSYS));
    }
}

#[test]
fn socket_ioctl_personality_argument_rules() {
    let prog = compile(&default_profile(), default_caps()).unwrap();
    let (vsock, netlink, inet) = (
        libc::AF_VSOCK as u64,
        libc::AF_NETLINK as u64,
        libc::AF_INET as u64,
    );
    let audit = libc::NETLINK_AUDIT as u64;
    let raw = libc::SOCK_RAW as u64;
    for arch in [Arch::X86_64, Arch::I386] {
        let s = |args: [u64; 6]| verdict(&prog, arch, "socket", args);
        assert_eq!(s([vsock, 1, 0, 0, 0, 0]), errno(libc::EPERM));
        // The family is an int: a high half must not hide AF_VSOCK.
        assert_eq!(s([vsock | 1 << 32, 1, 0, 0, 0, 0]), errno(libc::EPERM));
        assert_eq!(s([netlink, raw, audit, 0, 0, 0]), errno(libc::EAFNOSUPPORT));
        assert_eq!(
            s([netlink, raw, audit | 0xffff_0000_0000, 0, 0, 0]),
            errno(libc::EAFNOSUPPORT)
        );
        assert_eq!(
            s([netlink, raw, libc::NETLINK_ROUTE as u64, 0, 0, 0]),
            ALLOW
        );
        assert_eq!(s([inet, 2, 0, 0, 0, 0]), ALLOW);

        let io = |req: u64| verdict(&prog, arch, "ioctl", [0, req, 0, 0, 0, 0]);
        assert_eq!(io(0x5412), errno(libc::EPERM), "TIOCSTI");
        assert_eq!(
            io(0x5412 | 1 << 32),
            errno(libc::EPERM),
            "TIOCSTI, high bit set"
        );
        assert_eq!(io(0x541C), errno(libc::EPERM), "TIOCLINUX");
        assert_eq!(io(0x5401), ALLOW, "TCGETS");

        let pers = |p: u64| verdict(&prog, arch, "personality", [p, 0, 0, 0, 0, 0]);
        for ok in [0, 8, 0x20000, 0x20008, 0xffff_ffff] {
            assert_eq!(pers(ok), ALLOW, "{ok:#x}");
        }
        // ADDR_NO_RANDOMIZE, READ_IMPLIES_EXEC.
        assert_eq!(pers(0x0040000), errno(libc::EPERM));
        assert_eq!(pers(0x0400000), errno(libc::EPERM));
    }
    // i386 socketcall: SYS_SOCKET hides the family in memory.
    let sc = |call: u64| verdict(&prog, Arch::I386, "socketcall", [call, 0, 0, 0, 0, 0]);
    assert_eq!(sc(1), errno(libc::ENOSYS));
    assert_eq!(sc(3), ALLOW, "SYS_CONNECT");
    assert_eq!(sc(8), ALLOW, "SYS_SOCKETPAIR");
}

// ---------------------------------------------------------------------------------------
// The code generator's comparisons against plain Rust, over boundary values.

fn holds(cmp: Cmp, arg: u64) -> bool {
    match cmp {
        Cmp::Eq(v) => arg == v,
        Cmp::Ne(v) => arg != v,
        Cmp::Lt(v) => arg < v,
        Cmp::Le(v) => arg <= v,
        Cmp::Gt(v) => arg > v,
        Cmp::Ge(v) => arg >= v,
        Cmp::MaskedEq { mask, value } => arg & mask == value,
    }
}

#[test]
fn every_comparison_matches_its_definition_at_the_boundaries() {
    let constants = [
        0u64,
        1,
        5,
        0xffff_ffff,
        0x1_0000_0000,
        0x1_0000_0005,
        0x8000_0000_0000_0000,
        u64::MAX,
    ];
    let mut args = Vec::new();
    for c in constants {
        for d in [0u64, 1, 1 << 32, (1 << 32) + 1] {
            args.push(c.wrapping_add(d));
            args.push(c.wrapping_sub(d));
        }
    }
    for v in constants {
        let cmps = [
            Cmp::Eq(v),
            Cmp::Ne(v),
            Cmp::Lt(v),
            Cmp::Le(v),
            Cmp::Gt(v),
            Cmp::Ge(v),
            Cmp::MaskedEq { mask: v, value: v },
            Cmp::MaskedEq {
                mask: 0xffff_0000_ffff_0000,
                value: v & 0xffff_0000_ffff_0000,
            },
            Cmp::MaskedEq {
                mask: 0xff,
                value: v & 0xff,
            },
            Cmp::MaskedEq {
                mask: 0xf0,
                value: 5,
            },
        ];
        for cmp in cmps {
            for width in [Width::Full64, Width::Low32] {
                let mut profile = default_profile();
                profile.default_action = Action::Allow;
                profile.unknown_action = Action::Allow;
                profile.rules = vec![
                    Rule::new(Action::Errno(7), &["getppid"])
                        .when(3, cmp, width)
                        .when(5, Cmp::Eq(0), Width::Full64),
                ];
                let prog = compile(&profile, 0).unwrap();
                for &arg in &args {
                    for arch in [Arch::X86_64, Arch::I386] {
                        // What the kernel hands the callee: all 64 bits, or the low 32.
                        let seen = if width == Width::Low32 || arch == Arch::I386 {
                            arg & 0xffff_ffff
                        } else {
                            arg
                        };
                        let want = if holds(cmp, seen) { errno(7) } else { ALLOW };
                        let got = verdict(&prog, arch, "getppid", [0, 0, 0, arg, 0, 0]);
                        assert_eq!(got, want, "{cmp:?} {width:?} {arch:?} arg {arg:#x}");
                    }
                }
                // The second condition is ANDed.
                let got = verdict(&prog, Arch::X86_64, "getppid", [0, 0, 0, v, 0, 1]);
                assert_eq!(got, ALLOW);
            }
        }
    }
}

#[test]
fn the_most_restrictive_matching_rule_wins() {
    let profile = parse_oci(
        br#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
            {"names": ["getppid"], "action": "SCMP_ACT_ALLOW"},
            {"names": ["getppid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 5,
             "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_EQ"}]},
            {"names": ["getppid"], "action": "SCMP_ACT_KILL_PROCESS",
             "args": [{"index": 1, "value": 1, "op": "SCMP_CMP_EQ"}]}
        ]}"#,
    )
    .unwrap();
    let prog = compile(&profile, 0).unwrap();
    let v = |a0, a1| verdict(&prog, Arch::X86_64, "getppid", [a0, a1, 0, 0, 0, 0]);
    assert_eq!(v(0, 0), ALLOW);
    assert_eq!(v(1, 0), errno(5));
    assert_eq!(v(0, 1), libc::SECCOMP_RET_KILL_PROCESS);
    assert_eq!(v(1, 1), libc::SECCOMP_RET_KILL_PROCESS);
}

// ---------------------------------------------------------------------------------------
// OCI profiles.

/// A profile in moby's format, written for these tests.
const CUSTOM: &str = r#"{
    "defaultAction": "SCMP_ACT_ERRNO",
    "defaultErrnoRet": 1,
    "archMap": [
        {"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]},
        {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]},
        {"architecture": "SCMP_ARCH_RISCV64", "subArchitectures": null}
    ],
    "syscalls": [
        {"names": ["read", "write", "exit_group", "getpid", "dup", "close", "not_a_syscall"],
         "action": "SCMP_ACT_ALLOW", "comment": "the basics"},
        {"names": ["dup"], "action": "SCMP_ACT_ERRNO", "errnoRet": 43,
         "args": [{"index": 0, "value": 1000, "valueTwo": 0, "op": "SCMP_CMP_GE"}]},
        {"names": ["getppid"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"]}},
        {"names": ["gettid"], "action": "SCMP_ACT_ALLOW", "excludes": {"caps": ["CAP_SYS_ADMIN"]}},
        {"names": ["arm_fadvise64_64"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["arm", "arm64"]}},
        {"names": ["uname"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "4.8"}},
        {"names": ["getuid"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "99.0"}},
        {"name": "getgid", "action": "SCMP_ACT_TRACE"}
    ]
}"#;

#[test]
fn parse_a_moby_style_profile() {
    let p = parse_oci(CUSTOM.as_bytes()).unwrap();
    assert_eq!(p.default_action, Action::Errno(1));
    assert_eq!(p.unknown_action, Action::Errno(libc::ENOSYS as u16));
    assert_eq!(p.arches, vec![Arch::X86_64, Arch::I386]);
    // The arm-only rule is dropped; the others kept.
    assert_eq!(p.rules.len(), 7);
    assert!(p.warnings.iter().any(|w| w.contains("not_a_syscall")));
    assert!(p.warnings.iter().any(|w| w.contains("TRACE")));

    let kernel = KernelVersion(6, 1);
    let prog = compile_for(&p, 0, kernel).unwrap();
    let v = |name, a0| verdict(&prog, Arch::X86_64, name, [a0, 0, 0, 0, 0, 0]);
    assert_eq!(v("dup", 3), ALLOW);
    assert_eq!(v("dup", 1000), errno(43));
    assert_eq!(v("getppid", 0), errno(1));
    assert_eq!(v("gettid", 0), ALLOW);
    assert_eq!(v("uname", 0), ALLOW);
    assert_eq!(v("getuid", 0), errno(1));
    assert_eq!(v("getgid", 0), errno(libc::ENOSYS));
    assert_eq!(v("keyctl", 0), errno(1));
    let admin = compile_for(&p, caps(&["SYS_ADMIN"]), kernel).unwrap();
    let v = |name| verdict(&admin, Arch::X86_64, name, [0; 6]);
    assert_eq!(v("getppid"), ALLOW);
    assert_eq!(v("gettid"), errno(1));
    // i386 gets the same rules under its own numbers.
    assert_eq!(
        verdict(&prog, Arch::I386, "dup", [1000, 0, 0, 0, 0, 0]),
        errno(43)
    );
}

#[test]
fn architectures_default_to_x86_64_and_foreign_only_is_refused() {
    let p = parse_oci(br#"{"defaultAction": "SCMP_ACT_ALLOW"}"#).unwrap();
    assert_eq!(p.arches, vec![Arch::X86_64]);
    let prog = compile(&p, 0).unwrap();
    // i386 is not listed: int $0x80 kills.
    assert_eq!(
        run(prog.instructions(), 20, I386, [0; 6]).0,
        libc::SECCOMP_RET_KILL_PROCESS
    );
    let err = parse_oci(
        br#"{"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_AARCH64"]}"#,
    )
    .unwrap_err();
    assert!(matches!(err, SeccompError::NoArch), "{err}");
}

#[test]
fn bad_profiles_are_refused_with_a_reason() {
    let cases: &[(&str, &str)] = &[
        (r#"{"defaultAction": "SCMP_ACT_ALLOW""#, "not valid JSON"),
        (
            r#"{"defaultAction": "SCMP_ACT_MAYBE"}"#,
            "unknown action \"SCMP_ACT_MAYBE\"",
        ),
        (
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_EXPLODE"}]}"#,
            "syscalls[0]: unknown action",
        ),
        (
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_NOTIFY"}]}"#,
            "not supported",
        ),
        (
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/run/agent.sock"}"#,
            "not supported",
        ),
        (
            r#"{"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 5000}"#,
            "errno 5000 is out of range",
        ),
        (
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO", "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_ALMOST"}]}]}"#,
            "unknown comparison operator \"SCMP_CMP_ALMOST\"",
        ),
        (
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO", "args": [{"index": 6, "value": 1, "op": "SCMP_CMP_EQ"}]}]}"#,
            "argument index 6",
        ),
        (
            r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_WIZARD"]}}]}"#,
            "unknown capability \"CAP_SYS_WIZARD\"",
        ),
        (
            r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "new"}}]}"#,
            "minKernel \"new\"",
        ),
        (
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": [], "action": "SCMP_ACT_ERRNO"}]}"#,
            "names no system call",
        ),
        (
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["keyctl_v2"], "action": "SCMP_ACT_ERRNO"}]}"#,
            "denies \"keyctl_v2\"",
        ),
        (
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscals": []}"#,
            "unknown field `syscals`",
        ),
        (
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "flags": ["SECCOMP_FILTER_FLAG_WHATEVER"]}"#,
            "unknown flag",
        ),
    ];
    for (json, reason) in cases {
        let err = parse_oci(json.as_bytes()).expect_err(json);
        let msg = err.to_string();
        assert!(msg.contains(reason), "{json}: {msg:?} lacks {reason:?}");
    }
    // An unknown name in an allow rule is only a warning.
    let p = parse_oci(
        br#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read", "frobnicate"], "action": "SCMP_ACT_ALLOW"}]}"#,
    )
    .unwrap();
    assert_eq!(p.warnings.len(), 1);
}

#[test]
fn an_oversize_profile_is_refused_at_compile() {
    let rules: Vec<String> = (0..1200)
        .map(|i| {
            format!(
                r#"{{"names": ["ioctl"], "action": "SCMP_ACT_ERRNO", "args": [{{"index": 1, "value": {i}, "op": "SCMP_CMP_EQ"}}]}}"#
            )
        })
        .collect();
    let json = format!(
        r#"{{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{}]}}"#,
        rules.join(",")
    );
    let p = parse_oci(json.as_bytes()).unwrap();
    let err = compile(&p, 0).unwrap_err();
    assert!(
        matches!(err, SeccompError::TooLong { len } if len > 4096),
        "{err}"
    );
    assert!(err.to_string().contains("limit of 4096"));
}

#[test]
fn too_many_conditions_in_one_rule_are_refused() {
    let args: Vec<String> = (0..13)
        .map(|_| r#"{"index": 0, "value": 1, "op": "SCMP_CMP_NE"}"#.to_string())
        .collect();
    let json = format!(
        r#"{{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{{"names": ["read"], "action": "SCMP_ACT_ERRNO", "args": [{}]}}]}}"#,
        args.join(",")
    );
    let err = parse_oci(json.as_bytes()).unwrap_err();
    assert!(
        matches!(err, SeccompError::TooManyConditions { rule: 0 }),
        "{err}"
    );
    // Twelve is fine, and every jump in it fits.
    let json = json.replacen(r#"{"index": 0, "value": 1, "op": "SCMP_CMP_NE"},"#, "", 1);
    let p = parse_oci(json.as_bytes()).unwrap();
    compile(&p, 0).unwrap();
}

#[test]
fn read_profile_bounds_and_reports_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("profile.json");
    std::fs::write(&path, CUSTOM).unwrap();
    read_profile(&path).unwrap();
    let big = dir.path().join("big.json");
    std::fs::write(&big, vec![b' '; MAX_PROFILE_BYTES as usize + 1]).unwrap();
    assert!(matches!(
        read_profile(&big),
        Err(SeccompError::TooLarge { .. })
    ));
    let missing = dir.path().join("missing.json");
    let err = read_profile(&missing).unwrap_err();
    assert!(err.to_string().contains("missing.json"), "{err}");
}

#[test]
fn security_opt_values() {
    assert_eq!(
        SeccompOpt::parse("unconfined").unwrap(),
        SeccompOpt::Unconfined
    );
    assert_eq!(
        SeccompOpt::parse("/etc/berth/seccomp.json").unwrap(),
        SeccompOpt::Profile("/etc/berth/seccomp.json".into())
    );
    assert!(matches!(
        SeccompOpt::parse("profile.json"),
        Err(SeccompError::RelativePath(_))
    ));
}

// ---------------------------------------------------------------------------------------
// Program as plan data, and the cache.

#[test]
fn program_travels_as_json_and_the_length_is_checked_on_the_way_in() {
    let prog = compile(&default_profile(), default_caps()).unwrap();
    let json = serde_json::to_string(&prog).unwrap();
    let back: Program = serde_json::from_str(&json).unwrap();
    assert_eq!(back, prog);
    assert!(serde_json::from_str::<Program>("[]").is_err());
    let long = serde_json::to_string(&vec![6u64; 4097]).unwrap();
    let err = serde_json::from_str::<Program>(&long).unwrap_err();
    assert!(err.to_string().contains("4097"), "{err}");
}

#[test]
fn cache_compiles_each_combination_once_and_stays_bounded() {
    let cache = Cache::new();
    let profile = default_profile();
    let a = cache.get_or_compile(&profile, default_caps()).unwrap();
    let b = cache.get_or_compile(&profile, default_caps()).unwrap();
    assert!(std::sync::Arc::ptr_eq(&a, &b));
    let c = cache
        .get_or_compile(&profile, default_caps() | caps(&["SYS_ADMIN"]))
        .unwrap();
    assert!(!std::sync::Arc::ptr_eq(&a, &c));
    assert_ne!(*a, *c);
    assert_eq!(cache.len(), 2);
    for bit in 0..100u64 {
        let mut p = default_profile();
        p.rules
            .push(Rule::new(Action::Errno(bit as u16 + 1), &["getppid"]));
        cache.get_or_compile(&p, 0).unwrap();
    }
    assert_eq!(cache.len(), Cache::CAPACITY);
}

// ---------------------------------------------------------------------------------------
// The kernel's answers, from forked children under the filter.

mod nr {
    pub const I386_GETPID: u32 = 20;
    pub const I386_MOUNT: u32 = 21;
    pub const I386_SOCKETCALL: u32 = 102;
    pub const I386_CLONE: u32 = 120;
    pub const I386_KEYCTL: u32 = 288;
    pub const I386_UNSHARE: u32 = 310;
    pub const I386_SOCKET: u32 = 359;
}

/// A probe: a call, and the answer the filter must make the kernel give.
struct Expect {
    what: &'static str,
    call: RawCall,
    want: Want,
}

#[derive(Debug, Clone, Copy)]
enum Want {
    Errno(Errno),
    /// Success: a non-negative return.
    Ok,
}

fn x(what: &'static str, nr: i64, args: &[u64], want: Want) -> Expect {
    Expect {
        what,
        call: RawCall::x86_64(nr, args),
        want,
    }
}

fn i(what: &'static str, nr: u32, args: &[u64], want: Want) -> Expect {
    Expect {
        what,
        call: RawCall::i386(nr, args),
        want,
    }
}

fn check(prog: &Program, probes: &[Expect]) {
    let filter = prog.to_sock_filters();
    let calls: Vec<RawCall> = probes.iter().map(|p| p.call).collect();
    let report = probe_in_child(Some(&filter), &calls).expect("probe child");
    assert_eq!(report.loaded, Ok(()), "kernel refused the program");
    assert_eq!(
        report.exit,
        ExitInfo::Exited(0),
        "probe child died: {report:?}"
    );
    assert_eq!(report.results.len(), probes.len());
    for (p, got) in probes.iter().zip(&report.results) {
        match (p.want, got) {
            (Want::Ok, Ok(_)) => {}
            (Want::Errno(e), Err(g)) if e == *g => {}
            _ => panic!("{}: want {:?}, got {:?}", p.what, p.want, got),
        }
    }
}

static TIOCSTI_BYTE: u8 = b'x';

/// A socket type the kernel refuses (EINVAL, `type >= SOCK_MAX`) before it would look for a
/// protocol module: should the filter let a denied socket(2) through, the probe still loads no
/// module (vsock, netlink audit) on the test machine. The filter does not look at the type.
const BAD_SOCK_TYPE: u64 = 15;

/// The probes whose answer comes from the filter, each with that answer.
fn denied_probes(pty: u64) -> Vec<Expect> {
    use Want::Errno as E;
    let eperm = E(Errno::EPERM);
    let enosys = E(Errno::ENOSYS);
    let sigchld = libc::SIGCHLD as u64;
    let byte = &TIOCSTI_BYTE as *const u8 as u64;
    let mut v = vec![
        x("keyctl", libc::SYS_keyctl, &[0xdead], eperm),
        x("add_key", libc::SYS_add_key, &[0, 0, 0, 0, 0], eperm),
        x("bpf", libc::SYS_bpf, &[u64::MAX, 0, 0], eperm),
        x(
            "perf_event_open",
            libc::SYS_perf_event_open,
            &[0, 0, u64::MAX, u64::MAX, 0],
            eperm,
        ),
        x(
            "open_by_handle_at",
            libc::SYS_open_by_handle_at,
            &[u64::MAX, 0, 0],
            eperm,
        ),
        x(
            "unshare(CLONE_NEWUSER)",
            libc::SYS_unshare,
            &[libc::CLONE_NEWUSER as u64],
            eperm,
        ),
        x("io_uring_setup", libc::SYS_io_uring_setup, &[0, 0], eperm),
        x("userfaultfd", libc::SYS_userfaultfd, &[0], eperm),
        x("mount", libc::SYS_mount, &[0, 0, 0, 0, 0], eperm),
        x(
            "socket(AF_VSOCK)",
            libc::SYS_socket,
            &[libc::AF_VSOCK as u64, BAD_SOCK_TYPE, 0],
            eperm,
        ),
        x(
            "socket(AF_NETLINK, SOCK_RAW, NETLINK_AUDIT)",
            libc::SYS_socket,
            &[
                libc::AF_NETLINK as u64,
                BAD_SOCK_TYPE,
                libc::NETLINK_AUDIT as u64,
            ],
            E(Errno::EAFNOSUPPORT),
        ),
        x(
            "ioctl(TIOCSTI)",
            libc::SYS_ioctl,
            &[pty, 0x5412, byte],
            eperm,
        ),
        x(
            "ioctl(TIOCSTI | 1<<32)",
            libc::SYS_ioctl,
            &[pty, 0x5412 | 1 << 32, byte],
            eperm,
        ),
        x(
            "ioctl(TIOCLINUX)",
            libc::SYS_ioctl,
            &[pty, 0x541C, byte],
            eperm,
        ),
        x("clone3", libc::SYS_clone3, &[0, 0], enosys),
        x("syscall 1000", 1000, &[], enosys),
        x("x32 getpid", (X32_SYSCALL_BIT | 39) as i64, &[], enosys),
        x(
            "x32 keyctl",
            (X32_SYSCALL_BIT | 250) as i64,
            &[0xdead],
            enosys,
        ),
        i("i386 keyctl", nr::I386_KEYCTL, &[0xdead], eperm),
        i(
            "i386 unshare",
            nr::I386_UNSHARE,
            &[libc::CLONE_NEWUSER as u64],
            eperm,
        ),
        i("i386 mount", nr::I386_MOUNT, &[0, 0, 0, 0, 0], eperm),
        i(
            "i386 socketcall(SYS_SOCKET)",
            nr::I386_SOCKETCALL,
            &[1, 0],
            enosys,
        ),
        i(
            "i386 socket(AF_VSOCK)",
            nr::I386_SOCKET,
            &[libc::AF_VSOCK as u64, BAD_SOCK_TYPE, 0],
            eperm,
        ),
        i("i386 syscall 1000", 1000, &[], enosys),
    ];
    let mut forking = |what, call: RawCall| {
        v.push(Expect {
            what,
            call: call.forking(),
            want: eperm,
        })
    };
    forking(
        "clone(CLONE_NEWNS)",
        RawCall::x86_64(
            libc::SYS_clone,
            &[libc::CLONE_NEWNS as u64 | sigchld, 0, 0, 0, 0],
        ),
    );
    forking(
        "clone(CLONE_NEWUSER)",
        RawCall::x86_64(
            libc::SYS_clone,
            &[libc::CLONE_NEWUSER as u64 | sigchld, 0, 0, 0, 0],
        ),
    );
    forking(
        "i386 clone(CLONE_NEWNET)",
        RawCall::i386(
            nr::I386_CLONE,
            &[libc::CLONE_NEWNET as u64 | sigchld, 0, 0, 0, 0],
        ),
    );
    v
}

static WRITE_BYTE: u8 = b'.';

fn allowed_probes(devnull: u64) -> Vec<Expect> {
    let sigchld = libc::SIGCHLD as u64;
    let ok = Want::Ok;
    vec![
        x("getpid", libc::SYS_getpid, &[], ok),
        x(
            "write",
            libc::SYS_write,
            &[devnull, &WRITE_BYTE as *const u8 as u64, 1],
            ok,
        ),
        Expect {
            what: "clone(SIGCHLD)",
            call: RawCall::x86_64(libc::SYS_clone, &[sigchld, 0, 0, 0, 0]).forking(),
            want: ok,
        },
        x("fork", libc::SYS_fork, &[], ok),
        x(
            "socket(AF_INET)",
            libc::SYS_socket,
            &[
                libc::AF_INET as u64,
                (libc::SOCK_DGRAM | libc::SOCK_CLOEXEC) as u64,
                0,
            ],
            ok,
        ),
        x(
            "socket(AF_NETLINK, NETLINK_ROUTE)",
            libc::SYS_socket,
            &[
                libc::AF_NETLINK as u64,
                (libc::SOCK_RAW | libc::SOCK_CLOEXEC) as u64,
                0,
            ],
            ok,
        ),
        x(
            "personality(query)",
            libc::SYS_personality,
            &[0xffff_ffff],
            ok,
        ),
        i("i386 getpid", nr::I386_GETPID, &[], ok),
    ]
    .into_iter()
    .map(|mut e| {
        if e.what == "fork" {
            e.call = e.call.forking();
        }
        e
    })
    .collect()
}

struct Fds {
    _pty_master: std::os::fd::OwnedFd,
    pty: std::os::fd::OwnedFd,
    devnull: std::fs::File,
}

fn fds() -> Fds {
    let pty = nix::pty::openpty(None, None).expect("openpty");
    Fds {
        _pty_master: pty.master,
        pty: pty.slave,
        devnull: std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/null")
            .unwrap(),
    }
}

#[test]
fn kernel_enforces_the_default_profile() {
    let f = fds();
    let prog = compile(&default_profile(), default_caps()).unwrap();
    let mut probes = denied_probes(f.pty.as_raw_fd() as u64);
    probes.extend(allowed_probes(f.devnull.as_raw_fd() as u64));
    check(&prog, &probes);
}

/// The errnos above could in principle come from the kernel itself (EPERM for lack of
/// privilege, ENOSYS for an absent call). Compiled with every errno remapped to values no
/// kernel path gives for these calls, the same probes prove the filter made each decision.
#[test]
fn the_filter_not_the_kernel_gives_those_answers() {
    let remap = |e: u16| match i32::from(e) {
        libc::EPERM => libc::EHWPOISON as u16,
        libc::ENOSYS => libc::ENOTRECOVERABLE as u16,
        libc::EAFNOSUPPORT => libc::ERFKILL as u16,
        other => panic!("unexpected errno {other} in the default profile"),
    };
    let mut profile = default_profile();
    let map = |a: Action| match a {
        Action::Errno(e) => Action::Errno(remap(e)),
        other => other,
    };
    profile.default_action = map(profile.default_action);
    profile.unknown_action = map(profile.unknown_action);
    for r in &mut profile.rules {
        r.action = map(r.action);
    }
    let prog = compile(&profile, default_caps()).unwrap();
    let f = fds();
    let mut probes = denied_probes(f.pty.as_raw_fd() as u64);
    for p in &mut probes {
        if let Want::Errno(e) = p.want {
            let sentinel = if p.what.contains("x32") {
                // x32 is not the profile's to remap: fixed ENOSYS, and no x32 kernel here.
                e as u16
            } else {
                remap(e as u16)
            };
            p.want = Want::Errno(Errno::from_raw(i32::from(sentinel)));
        }
    }
    // x32's ENOSYS could be the kernel's (no CONFIG_X86_X32_ABI): prove it with the interpreter
    // instead, which the default-profile tests do.
    probes.retain(|p| !p.what.contains("x32"));
    check(&prog, &probes);
}

#[test]
fn with_cap_sys_admin_the_filter_lets_namespace_calls_reach_the_kernel() {
    let prog = compile(&default_profile(), default_caps() | caps(&["SYS_ADMIN"])).unwrap();
    // Arguments the kernel refuses before any privilege check, with its own errno: EINVAL
    // for an unshare flag it does not take (CLONE_VFORK), EFAULT for a NULL mount target.
    let bad_unshare = (libc::CLONE_NEWUSER | libc::CLONE_VFORK) as u64;
    let probes = vec![
        x(
            "unshare",
            libc::SYS_unshare,
            &[bad_unshare],
            Want::Errno(Errno::EINVAL),
        ),
        x(
            "mount",
            libc::SYS_mount,
            &[0, 0, 0, 0, 0],
            Want::Errno(Errno::EFAULT),
        ),
        i(
            "i386 unshare",
            nr::I386_UNSHARE,
            &[bad_unshare],
            Want::Errno(Errno::EINVAL),
        ),
        i(
            "i386 mount",
            nr::I386_MOUNT,
            &[0, 0, 0, 0, 0],
            Want::Errno(Errno::EFAULT),
        ),
        x(
            "keyctl",
            libc::SYS_keyctl,
            &[0xdead],
            Want::Errno(Errno::EPERM),
        ),
        x(
            "clone3",
            libc::SYS_clone3,
            &[0, 0],
            Want::Errno(Errno::ENOSYS),
        ),
    ];
    check(&prog, &probes);
}

#[test]
fn kernel_enforces_a_custom_oci_profile() {
    let p = parse_oci(CUSTOM.as_bytes()).unwrap();
    let prog = compile(&p, 0).unwrap();
    let probes = vec![
        x(
            "dup(1000)",
            libc::SYS_dup,
            &[1000],
            Want::Errno(Errno::EIDRM),
        ),
        // Allowed through: the kernel's own answer for a closed descriptor.
        x("dup(999)", libc::SYS_dup, &[999], Want::Errno(Errno::EBADF)),
        x("getpid", libc::SYS_getpid, &[], Want::Ok),
        x("getppid", libc::SYS_getppid, &[], Want::Errno(Errno::EPERM)),
        x("gettid", libc::SYS_gettid, &[], Want::Ok),
        x(
            "getgid (TRACE)",
            libc::SYS_getgid,
            &[],
            Want::Errno(Errno::ENOSYS),
        ),
        i("i386 getpid", nr::I386_GETPID, &[], Want::Ok),
        i("i386 dup(1000)", 41, &[1000], Want::Errno(Errno::EIDRM)),
    ];
    check(&prog, &probes);
}

#[test]
fn kill_and_trap_actions_end_the_process_with_sigsys() {
    for action in ["SCMP_ACT_KILL_PROCESS", "SCMP_ACT_KILL", "SCMP_ACT_TRAP"] {
        let json = format!(
            r#"{{"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"],
                "syscalls": [{{"names": ["getppid"], "action": "{action}"}}]}}"#
        );
        let prog = compile(&parse_oci(json.as_bytes()).unwrap(), 0).unwrap();
        let filter = prog.to_sock_filters();
        let calls = [
            RawCall::x86_64(libc::SYS_getpid, &[]),
            RawCall::x86_64(libc::SYS_getppid, &[]),
            RawCall::x86_64(libc::SYS_getpid, &[]),
        ];
        let report = probe_in_child(Some(&filter), &calls).unwrap();
        assert_eq!(report.loaded, Ok(()));
        assert_eq!(report.exit, ExitInfo::Signaled(libc::SIGSYS), "{action}");
        assert_eq!(
            report.results.len(),
            1,
            "{action}: only the first call returned"
        );
    }
}

#[test]
fn probe_without_filter_sees_the_kernel() {
    let calls = [
        RawCall::x86_64(1000, &[]),
        RawCall::i386(nr::I386_GETPID, &[]),
        // The guard BAD_SOCK_TYPE relies on: refused before any module lookup.
        RawCall::x86_64(libc::SYS_socket, &[libc::AF_VSOCK as u64, BAD_SOCK_TYPE, 0]),
    ];
    let report = probe_in_child(None, &calls).unwrap();
    assert_eq!(report.loaded, Ok(()));
    assert_eq!(report.exit, ExitInfo::Exited(0));
    assert_eq!(report.results[0], Err(Errno::ENOSYS));
    assert!(
        matches!(report.results[1], Ok(pid) if pid > 0),
        "{report:?}"
    );
    assert_eq!(report.results[2], Err(Errno::EINVAL));
}
