//! The internal model of a seccomp policy (berth's default profile is in [`super::default`]).
//!
//! One model serves both the built-in default and profiles parsed from Docker/OCI JSON
//! ([`super::parse_oci`]), so one compiler ([`super::compile`]) turns either into BPF.

use serde::Serialize;

/// What the filter answers for a system call.
///
/// The variants are the kernel's `SECCOMP_RET_*` actions berth supports. There is no `Trace`:
/// berth never attaches a tracer, and with a tracer inside the container `SECCOMP_RET_TRACE`
/// would let that tracer run the call, so OCI `SCMP_ACT_TRACE` becomes `Errno(ENOSYS)`, what
/// the kernel answers for `SECCOMP_RET_TRACE` when nobody traces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Action {
    /// Run the call.
    Allow,
    /// Run the call and log it to the audit log.
    Log,
    /// Fail the call with this errno (0..=4095) without running it.
    Errno(u16),
    /// Send the thread `SIGSYS`.
    Trap,
    /// Kill the calling thread (libseccomp's `SCMP_ACT_KILL`).
    KillThread,
    /// Kill the whole process.
    KillProcess,
}

/// The largest errno the kernel passes through (`MAX_ERRNO`).
pub const MAX_ERRNO: u16 = 4095;

impl Action {
    /// The kernel's precedence between actions (seccomp(2), "Filter return values"): when
    /// several rules match one call, the highest wins, as between stacked filters.
    pub(super) fn precedence(self) -> u8 {
        match self {
            Action::KillProcess => 6,
            Action::KillThread => 5,
            Action::Trap => 4,
            Action::Errno(_) => 3,
            Action::Log => 1,
            Action::Allow => 0,
        }
    }

    /// Whether the call runs.
    pub fn is_permissive(self) -> bool {
        matches!(self, Action::Allow | Action::Log)
    }

    /// The `SECCOMP_RET_*` value the BPF program returns.
    pub(super) fn ret(self) -> u32 {
        match self {
            Action::Allow => libc::SECCOMP_RET_ALLOW,
            Action::Log => libc::SECCOMP_RET_LOG,
            Action::Errno(e) => libc::SECCOMP_RET_ERRNO | u32::from(e.min(MAX_ERRNO)),
            Action::Trap => libc::SECCOMP_RET_TRAP,
            Action::KillThread => libc::SECCOMP_RET_KILL_THREAD,
            Action::KillProcess => libc::SECCOMP_RET_KILL_PROCESS,
        }
    }
}

/// A comparison of one 64-bit system call argument with constants, unsigned, as libseccomp's
/// `SCMP_CMP_*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Cmp {
    Eq(u64),
    Ne(u64),
    Lt(u64),
    Le(u64),
    Gt(u64),
    Ge(u64),
    /// `(arg & mask) == value`.
    MaskedEq {
        mask: u64,
        value: u64,
    },
}

/// How much of an argument the kernel reads on x86_64.
///
/// A call whose parameter is `int` or `unsigned int` (socket's family, ioctl's request,
/// personality's persona) only looks at the low 32 bits of the register; a filter that compares
/// all 64 can be bypassed by setting the high half (CVE-2019-10063, snapd's TIOCSTI filter).
/// Such arguments are compared as `Low32`: the high half is taken as zero, as the kernel does.
/// i386 arguments are always `Low32` (the ia32 entry code truncates every register).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Width {
    Low32,
    Full64,
}

/// One argument condition of a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct ArgCond {
    /// Argument index, 0..=5.
    pub index: u8,
    pub cmp: Cmp,
    pub width: Width,
}

/// A kernel version, major and minor (`includes.minKernel`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct KernelVersion(pub u32, pub u32);

/// One rule: these calls get `action` when every condition holds.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Rule {
    /// System call names, resolved per architecture at compile time; a name an architecture
    /// does not have is skipped there.
    pub names: Vec<String>,
    pub action: Action,
    /// Conditions, all of which must hold (at most [`MAX_CONDS`]).
    pub args: Vec<ArgCond>,
    /// The rule applies only when every one of these capabilities is granted
    /// (bit n = capability n; Docker's `includes.caps`).
    pub caps_all: u64,
    /// The rule is skipped when any of these capabilities is granted (`excludes.caps`).
    pub caps_none: u64,
    /// The rule applies only on this kernel or newer (`includes.minKernel`).
    pub min_kernel: Option<KernelVersion>,
}

/// Conditions one rule may carry, so that every jump inside a rule fits classic BPF's 8-bit
/// conditional offsets (the compiler checks this too).
pub const MAX_CONDS: usize = 12;

impl Rule {
    /// An unconditional rule.
    pub fn new(action: Action, names: &[&str]) -> Rule {
        Rule {
            names: names.iter().map(|n| n.to_string()).collect(),
            action,
            args: Vec::new(),
            caps_all: 0,
            caps_none: 0,
            min_kernel: None,
        }
    }

    /// Add the condition `arg[index] cmp`.
    pub fn when(mut self, index: u8, cmp: Cmp, width: Width) -> Rule {
        self.args.push(ArgCond { index, cmp, width });
        self
    }

    /// Apply only when all capabilities in `caps` are granted.
    pub fn with_caps(mut self, caps: u64) -> Rule {
        self.caps_all |= caps;
        self
    }

    /// Whether the rule takes part for this capability set and kernel.
    pub(super) fn applies(&self, caps: u64, kernel: KernelVersion) -> bool {
        caps & self.caps_all == self.caps_all
            && caps & self.caps_none == 0
            && self.min_kernel.is_none_or(|min| kernel >= min)
    }
}

/// The system call ABIs an x86_64 kernel runs, as `seccomp_data.arch` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Arch {
    /// `AUDIT_ARCH_X86_64`. Its x32 calls (numbers with bit 30 set) are always answered
    /// `ENOSYS`: berth does not run x32 programs.
    X86_64,
    /// `AUDIT_ARCH_I386`: 32-bit programs, and `int $0x80` from 64-bit code.
    I386,
}

impl Arch {
    /// The `AUDIT_ARCH_*` value (`EM_*` | `__AUDIT_ARCH_64BIT` | `__AUDIT_ARCH_LE`).
    pub(super) fn audit_arch(self) -> u32 {
        match self {
            Arch::X86_64 => 0xC000_003E,
            Arch::I386 => 0x4000_0003,
        }
    }

    /// The name → number table of this ABI.
    pub(super) fn table(self) -> &'static [(&'static str, u32)] {
        match self {
            Arch::X86_64 => super::table::X86_64,
            Arch::I386 => super::table::I386,
        }
    }

    /// This ABI's number for `name`, if it has that call.
    pub fn number(self, name: &str) -> Option<u32> {
        let table = self.table();
        table
            .binary_search_by(|(n, _)| (*n).cmp(name))
            .ok()
            .map(|i| table[i].1)
    }
}

/// A whole policy.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Profile {
    /// For calls berth knows (in its table for that ABI) that no rule matches.
    pub default_action: Action,
    /// For numbers berth's table does not have on that ABI: `Errno(ENOSYS)` unless the
    /// default allows, so that a libc probing a newer call (clone3, faccessat2, …) sees "not
    /// implemented" and falls back to an older call the filter can inspect.
    pub unknown_action: Action,
    /// ABIs the filter accepts (sorted, no duplicates); a call from any other ABI kills the
    /// process.
    pub arches: Vec<Arch>,
    pub rules: Vec<Rule>,
    /// Things a parsed profile asked for that berth changed or left out, one sentence each,
    /// for berthd to log.
    pub warnings: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_sorted_and_match_known_numbers() {
        for arch in [Arch::X86_64, Arch::I386] {
            let t = arch.table();
            assert!(t.windows(2).all(|w| w[0].0 < w[1].0), "{arch:?} not sorted");
        }
        // Numbers the kernel's syscall_64.tbl / syscall_32.tbl give, checked by hand.
        assert_eq!(Arch::X86_64.number("keyctl"), Some(250));
        assert_eq!(Arch::X86_64.number("clone3"), Some(435));
        assert_eq!(Arch::X86_64.number("read"), Some(0));
        assert_eq!(Arch::I386.number("keyctl"), Some(288));
        assert_eq!(Arch::I386.number("unshare"), Some(310));
        assert_eq!(Arch::I386.number("mount"), Some(21));
        assert_eq!(Arch::I386.number("socketcall"), Some(102));
        assert_eq!(Arch::I386.number("socket"), Some(359));
        assert_eq!(Arch::I386.number("socketcall"), Some(102));
        assert_eq!(Arch::X86_64.number("socketcall"), None);
        // libc's x86_64 constants agree with the table for every name both have.
        assert_eq!(Arch::X86_64.number("mount"), Some(libc::SYS_mount as u32));
        assert_eq!(
            Arch::X86_64.number("io_uring_setup"),
            Some(libc::SYS_io_uring_setup as u32)
        );
        assert_eq!(
            Arch::X86_64.number("open_by_handle_at"),
            Some(libc::SYS_open_by_handle_at as u32)
        );
    }
}
