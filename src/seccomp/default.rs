//! berth's default seccomp profile, in the model of [`super::profile`]: Docker's allow-list
//! less io_uring, the calls allowed only with a capability, and the calls filtered by their
//! arguments (namespaces in clone, personality, TIOCSTI/TIOCLINUX, netlink audit, vsock).

use super::profile::{Action, Arch, Cmp, Profile, Rule, Width};

/// Capability numbers (linux/capability.h), by name without the `CAP_` prefix.
const CAPS: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// The capability number for `CAP_NAME` (or `NAME`), case-insensitive.
pub fn cap_number(name: &str) -> Option<u8> {
    let upper = name.to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    CAPS.iter().position(|c| *c == bare).map(|i| i as u8)
}

/// The mask bit of capability `CAP_NAME`; panics on a name not in the table (for constants).
fn cap(name: &str) -> u64 {
    match cap_number(name) {
        Some(n) => 1u64 << n,
        None => panic!("unknown capability {name}"),
    }
}

const EPERM: u16 = libc::EPERM as u16;
const ENOSYS: u16 = libc::ENOSYS as u16;

/// The namespace flags of clone(2): CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER |
/// NEWPID | NEWNET, plus CLONE_NEWTIME (0x80). clone(2) cannot take NEWTIME (that bit is part
/// of the exit-signal byte, and a signal ≥ 128 is refused anyway); it is in the mask so the
/// rule names every namespace flag.
pub const CLONE_NS_FLAGS: u64 = 0x7E02_0080;

/// Calls every container may make: Docker's default allow-list (moby
/// `profiles/seccomp/default.json`) without io_uring (a large kernel attack surface, and
/// every io_uring op bypasses this filter) and without the calls berth filters by argument
/// below, plus calls added to Linux since that list was written that are as harmless as
/// their older siblings (cachestat, fchmodat2, futex2, mseal, the *xattrat family,
/// statmount/listmount, file_getattr/setattr, LSM self-attr reads, the uprobe trampolines).
pub(super) const ALLOWED: &[&str] = &[
    "_llseek",
    "_newselect",
    "accept",
    "accept4",
    "access",
    "adjtimex",
    "alarm",
    "arch_prctl",
    "bind",
    "brk",
    "cachestat",
    "capget",
    "capset",
    "chdir",
    "chmod",
    "chown",
    "chown32",
    "clock_adjtime",
    "clock_adjtime64",
    "clock_getres",
    "clock_getres_time64",
    "clock_gettime",
    "clock_gettime64",
    "clock_nanosleep",
    "clock_nanosleep_time64",
    "close",
    "close_range",
    "connect",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_ctl_old",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "epoll_wait_old",
    "eventfd",
    "eventfd2",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fadvise64_64",
    "fallocate",
    "fanotify_mark",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchmodat2",
    "fchown",
    "fchown32",
    "fchownat",
    "fcntl",
    "fcntl64",
    "fdatasync",
    "fgetxattr",
    "file_getattr",
    "file_setattr",
    "flistxattr",
    "flock",
    "fork",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstat64",
    "fstatat64",
    "fstatfs",
    "fstatfs64",
    "fsync",
    "ftruncate",
    "ftruncate64",
    "futex",
    "futex_requeue",
    "futex_time64",
    "futex_wait",
    "futex_waitv",
    "futex_wake",
    "futimesat",
    "get_robust_list",
    "get_thread_area",
    "getcpu",
    "getcwd",
    "getdents",
    "getdents64",
    "getegid",
    "getegid32",
    "geteuid",
    "geteuid32",
    "getgid",
    "getgid32",
    "getgroups",
    "getgroups32",
    "getitimer",
    "getpeername",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresgid32",
    "getresuid",
    "getresuid32",
    "getrlimit",
    "getrusage",
    "getsid",
    "getsockname",
    "getsockopt",
    "gettid",
    "gettimeofday",
    "getuid",
    "getuid32",
    "getxattr",
    "getxattrat",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "io_cancel",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "io_pgetevents_time64",
    "io_setup",
    "io_submit",
    "ioprio_get",
    "ioprio_set",
    "ipc",
    "kill",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "lchown",
    "lchown32",
    "lgetxattr",
    "link",
    "linkat",
    "listen",
    "listmount",
    "listxattr",
    "listxattrat",
    "llistxattr",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lsm_get_self_attr",
    "lsm_list_modules",
    "lstat",
    "lstat64",
    "madvise",
    "map_shadow_stack",
    "membarrier",
    "memfd_create",
    "memfd_secret",
    "mincore",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "mmap2",
    "modify_ldt",
    "mprotect",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedreceive_time64",
    "mq_timedsend",
    "mq_timedsend_time64",
    "mq_unlink",
    "mremap",
    "mseal",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "name_to_handle_at",
    "nanosleep",
    "newfstatat",
    "open",
    "openat",
    "openat2",
    "pause",
    "pidfd_open",
    "pidfd_send_signal",
    "pipe",
    "pipe2",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "poll",
    "ppoll",
    "ppoll_time64",
    "prctl",
    "pread64",
    "preadv",
    "preadv2",
    "prlimit64",
    "process_mrelease",
    "pselect6",
    "pselect6_time64",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "recvfrom",
    "recvmmsg",
    "recvmmsg_time64",
    "recvmsg",
    "remap_file_pages",
    "removexattr",
    "removexattrat",
    "rename",
    "renameat",
    "renameat2",
    "restart_syscall",
    "rmdir",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_sigtimedwait_time64",
    "rt_tgsigqueueinfo",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_rr_get_interval_time64",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "select",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "semtimedop_time64",
    "sendfile",
    "sendfile64",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "set_robust_list",
    "set_thread_area",
    "set_tid_address",
    "setfsgid",
    "setfsgid32",
    "setfsuid",
    "setfsuid32",
    "setgid",
    "setgid32",
    "setgroups",
    "setgroups32",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setregid32",
    "setresgid",
    "setresgid32",
    "setresuid",
    "setresuid32",
    "setreuid",
    "setreuid32",
    "setrlimit",
    "setsid",
    "setsockopt",
    "setuid",
    "setuid32",
    "setxattr",
    "setxattrat",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "shutdown",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "sigprocmask",
    "sigreturn",
    "socketpair",
    "splice",
    "stat",
    "stat64",
    "statfs",
    "statfs64",
    "statmount",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "sysinfo",
    "tee",
    "tgkill",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_gettime64",
    "timer_settime",
    "timer_settime64",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_gettime64",
    "timerfd_settime",
    "timerfd_settime64",
    "times",
    "tkill",
    "truncate",
    "truncate64",
    "ugetrlimit",
    "umask",
    "uname",
    "unlink",
    "unlinkat",
    "uprobe",
    "uretprobe",
    "utime",
    "utimensat",
    "utimensat_time64",
    "utimes",
    "vfork",
    "vmsplice",
    "wait4",
    "waitid",
    "waitpid",
    "write",
    "writev",
];

/// Calls a container may make only with a capability, as in Docker's default profile (plus
/// pivot_root and open_tree_attr with CAP_SYS_ADMIN, and ptrace & co. only with
/// CAP_SYS_PTRACE rather than on every kernel ≥ 4.8). Without the capability they get EPERM.
pub(super) const CAP_GATED: &[(&str, &[&str])] = &[
    (
        "SYS_ADMIN",
        &[
            "bpf",
            "clone",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "mount",
            "mount_setattr",
            "move_mount",
            "open_tree",
            "open_tree_attr",
            "perf_event_open",
            "pivot_root",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "syslog",
            "umount",
            "umount2",
            "unshare",
        ],
    ),
    (
        "SYS_PTRACE",
        &[
            "kcmp",
            "pidfd_getfd",
            "process_madvise",
            "process_vm_readv",
            "process_vm_writev",
            "ptrace",
        ],
    ),
    ("SYS_BOOT", &["reboot"]),
    ("SYS_CHROOT", &["chroot"]),
    (
        "SYS_MODULE",
        &["delete_module", "init_module", "finit_module"],
    ),
    ("SYS_PACCT", &["acct"]),
    ("SYS_RAWIO", &["iopl", "ioperm"]),
    (
        "SYS_TIME",
        &["settimeofday", "stime", "clock_settime", "clock_settime64"],
    ),
    ("SYS_TTY_CONFIG", &["vhangup"]),
    (
        "SYS_NICE",
        &[
            "get_mempolicy",
            "mbind",
            "set_mempolicy",
            "set_mempolicy_home_node",
        ],
    ),
    ("SYSLOG", &["syslog"]),
    ("BPF", &["bpf"]),
    ("PERFMON", &["perf_event_open"]),
    ("DAC_READ_SEARCH", &["open_by_handle_at"]),
];

/// `personality(2)` values Docker allows: PER_LINUX, PER_LINUX32, UNAME26, UNAME26 |
/// PER_LINUX32, and 0xffffffff (query only). Everything else (ADDR_NO_RANDOMIZE,
/// READ_IMPLIES_EXEC, …) weakens the process's own hardening.
const PERSONALITIES: [u64; 5] = [0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

const AF_NETLINK: u64 = libc::AF_NETLINK as u64;
const AF_VSOCK: u64 = libc::AF_VSOCK as u64;
const NETLINK_AUDIT: u64 = libc::NETLINK_AUDIT as u64;
/// The x86 ioctl request numbers (asm-generic/ioctls.h), spelled out because the filter is for
/// x86 whatever `libc` the crate is built against.
const TIOCSTI: u64 = 0x5412;
const TIOCLINUX: u64 = 0x541C;
/// socketcall(2)'s sub-call number for socket(2) (linux/net.h `SYS_SOCKET`).
const SYS_SOCKET: u64 = 1;

/// berth's default profile: an allow-list in the style of Docker's, on x86_64 and i386.
///
/// - Calls berth knows but does not allow: `EPERM`; numbers it does not know: `ENOSYS`.
/// - Never allowed, whatever the capabilities: keyctl, add_key, request_key (the kernel
///   keyring is not namespaced), kexec_load, kexec_file_load, userfaultfd, io_uring_*,
///   swapon, swapoff, lsm_set_self_attr, and every call not listed here.
/// - Capability-gated groups: see `CAP_GATED`.
/// - clone(2) with any namespace flag: `EPERM` unless CAP_SYS_ADMIN; clone3(2) always `ENOSYS`
///   (its flags sit in memory a filter cannot read; libcs fall back to clone).
/// - socket(AF_VSOCK): `EPERM` (vsock reaches the hypervisor and other VMs);
///   socket(AF_NETLINK, *, NETLINK_AUDIT): `EAFNOSUPPORT` (what a kernel without audit says,
///   so audit-aware programs carry on). On i386, socketcall(SYS_SOCKET) hides the family in
///   memory, so it gets `ENOSYS`; i386 socket(2) (number 359, Linux ≥ 4.3) works and is
///   filtered like x86_64's.
/// - ioctl(TIOCSTI) and ioctl(TIOCLINUX): `EPERM` (typing into, or reading, the terminal of
///   whoever holds it: CVE-2016-7545 and relatives), compared on the low 32 bits like the
///   kernel.
/// - personality(2): only the values in `PERSONALITIES`.
pub fn default_profile() -> Profile {
    let mut rules = vec![Rule::new(Action::Allow, ALLOWED)];
    for (cap_name, names) in CAP_GATED {
        rules.push(Rule::new(Action::Allow, names).with_caps(cap(cap_name)));
    }
    rules.push(Rule::new(Action::Allow, &["clone"]).when(
        0,
        Cmp::MaskedEq {
            mask: CLONE_NS_FLAGS,
            value: 0,
        },
        // kernel_clone_args.flags takes lower_32_bits(clone_flags) for clone(2).
        Width::Low32,
    ));
    rules.push(Rule::new(Action::Errno(ENOSYS), &["clone3"]));
    for value in PERSONALITIES {
        rules.push(Rule::new(Action::Allow, &["personality"]).when(
            0,
            Cmp::Eq(value),
            Width::Low32,
        ));
    }
    rules.push(Rule::new(Action::Errno(EPERM), &["socket"]).when(
        0,
        Cmp::Eq(AF_VSOCK),
        Width::Low32,
    ));
    rules.push(
        Rule::new(Action::Errno(libc::EAFNOSUPPORT as u16), &["socket"])
            .when(0, Cmp::Eq(AF_NETLINK), Width::Low32)
            .when(2, Cmp::Eq(NETLINK_AUDIT), Width::Low32),
    );
    rules.push(Rule::new(Action::Allow, &["socket"]));
    rules.push(Rule::new(Action::Errno(ENOSYS), &["socketcall"]).when(
        0,
        Cmp::Eq(SYS_SOCKET),
        Width::Low32,
    ));
    rules.push(Rule::new(Action::Allow, &["socketcall"]));
    for request in [TIOCSTI, TIOCLINUX] {
        rules.push(Rule::new(Action::Errno(EPERM), &["ioctl"]).when(
            1,
            Cmp::Eq(request),
            Width::Low32,
        ));
    }
    rules.push(Rule::new(Action::Allow, &["ioctl"]));
    Profile {
        default_action: Action::Errno(EPERM),
        unknown_action: Action::Errno(ENOSYS),
        arches: vec![Arch::X86_64, Arch::I386],
        rules,
        warnings: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_default_name_exists_on_some_arch() {
        for rule in default_profile().rules {
            for name in &rule.names {
                assert!(
                    Arch::X86_64.number(name).is_some() || Arch::I386.number(name).is_some(),
                    "{name} is in no syscall table"
                );
            }
        }
    }

    #[test]
    fn cap_names() {
        assert_eq!(cap_number("CAP_SYS_ADMIN"), Some(21));
        assert_eq!(cap_number("sys_ptrace"), Some(19));
        assert_eq!(cap_number("CAP_CHECKPOINT_RESTORE"), Some(40));
        assert_eq!(cap_number("CAP_NOPE"), None);
    }
}
