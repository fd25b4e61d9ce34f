//! Profile + granted capabilities → one classic-BPF program for every ABI (see the module doc
//! of [`super`] for the program's layout).

use std::collections::HashMap;
use std::sync::OnceLock;

use super::bpf::{Asm, Label, Target, Test};
use super::profile::{Action, Arch, ArgCond, Cmp, KernelVersion, MAX_CONDS, Profile, Width};
use super::{Program, SeccompError};

/// `__X32_SYSCALL_BIT`: under `AUDIT_ARCH_X86_64`, a number with this bit is an x32 call.
pub(super) const X32_SYSCALL_BIT: u32 = 0x4000_0000;
/// What every x32 call gets, whatever the profile: berth runs no x32 programs, and an x32
/// number must never reach a 64-bit rule table it could slip past.
pub(super) const X32_ACTION: Action = Action::Errno(libc::ENOSYS as u16);
/// What a call from an ABI the profile does not list gets.
pub(super) const BAD_ARCH_ACTION: Action = Action::KillProcess;

/// `offsetof(struct seccomp_data, …)`.
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
const OFF_ARGS: u32 = 16;

/// The low and high 32-bit halves of argument `index` (little-endian).
fn arg_offsets(index: u8) -> (u32, u32) {
    let lo = OFF_ARGS + 8 * u32::from(index);
    (lo, lo + 4)
}

/// One argument condition, lowered for one ABI.
#[derive(Debug, Clone, PartialEq)]
enum Check {
    /// Holds for every argument value: dropped.
    Always,
    /// Holds for none: the rule can never match.
    Never,
    /// A test of the low half only (`Low32`, and every i386 argument).
    Low {
        offset: u32,
        mask: Option<u32>,
        test: Test,
        k: u32,
        /// The condition holds when the test fails.
        negate: bool,
    },
    /// A full 64-bit comparison.
    Full { index: u8, cmp: Cmp },
}

fn lower(cond: &ArgCond, arch: Arch) -> Check {
    let width = if arch == Arch::I386 {
        Width::Low32
    } else {
        cond.width
    };
    if width == Width::Full64 {
        // A mask with no high bits tests only the low half (the usual flags case).
        if let Cmp::MaskedEq { mask, value } = cond.cmp
            && mask >> 32 == 0
        {
            if value >> 32 != 0 {
                return Check::Never;
            }
            return Check::Low {
                offset: arg_offsets(cond.index).0,
                mask: Some(mask as u32),
                test: Test::Eq,
                k: value as u32,
                negate: false,
            };
        }
        return Check::Full {
            index: cond.index,
            cmp: cond.cmp,
        };
    }
    // The argument is its low half zero-extended; a constant with high bits folds.
    let (offset, _) = arg_offsets(cond.index);
    let low = |test, v: u64, negate, mask: Option<u64>| {
        let high_set = v >> 32 != 0;
        match (high_set, negate) {
            // arg < 2^32 ≤ v: Eq/Gt/Ge/MaskedEq never hold, Ne/Lt/Le always do.
            (true, false) => Check::Never,
            (true, true) => Check::Always,
            (false, _) => Check::Low {
                offset,
                mask: mask.map(|m| m as u32),
                test,
                k: v as u32,
                negate,
            },
        }
    };
    match cond.cmp {
        Cmp::Eq(v) => low(Test::Eq, v, false, None),
        Cmp::Ne(v) => low(Test::Eq, v, true, None),
        Cmp::Gt(v) => low(Test::Gt, v, false, None),
        Cmp::Ge(v) => low(Test::Ge, v, false, None),
        Cmp::Lt(v) => low(Test::Ge, v, true, None),
        Cmp::Le(v) => low(Test::Gt, v, true, None),
        Cmp::MaskedEq { mask, value } => low(Test::Eq, value, false, Some(mask)),
    }
}

/// What one system call number gets.
#[derive(Debug, Clone, PartialEq)]
enum Decision {
    Simple(Action),
    /// Rules in order (each: conditions that must all hold, action), then the fallback.
    Chain(Vec<(Vec<Check>, Action)>, Action),
}

/// Fall through when `check` holds, jump to `fail` when it does not.
fn emit_check(asm: &mut Asm, check: &Check, fail: Label) {
    let fail = Target::Label(fail);
    let next = Target::Next;
    match *check {
        Check::Always | Check::Never => unreachable!("folded before emission"),
        Check::Low {
            offset,
            mask,
            test,
            k,
            negate,
        } => {
            asm.load(offset);
            if let Some(m) = mask {
                asm.and(m);
            }
            let (jt, jf) = if negate { (fail, next) } else { (next, fail) };
            asm.jump(test, k, jt, jf);
        }
        Check::Full { index, cmp } => {
            let (lo_off, hi_off) = arg_offsets(index);
            let pass_label = asm.label();
            let pass = Target::Label(pass_label);
            let hi = |v: u64| (v >> 32) as u32;
            let lo = |v: u64| v as u32;
            match cmp {
                Cmp::Eq(v) => {
                    asm.load(hi_off);
                    asm.jump(Test::Eq, hi(v), next, fail);
                    asm.load(lo_off);
                    asm.jump(Test::Eq, lo(v), next, fail);
                }
                Cmp::Ne(v) => {
                    asm.load(hi_off);
                    asm.jump(Test::Eq, hi(v), next, pass);
                    asm.load(lo_off);
                    asm.jump(Test::Eq, lo(v), fail, next);
                }
                Cmp::Gt(v) | Cmp::Ge(v) => {
                    // arg > v  ⇔  hi > vhi  ∨  (hi = vhi ∧ lo > vlo); likewise ≥ on the low half.
                    asm.load(hi_off);
                    asm.jump(Test::Gt, hi(v), pass, next);
                    asm.jump(Test::Eq, hi(v), next, fail);
                    asm.load(lo_off);
                    let t = if matches!(cmp, Cmp::Gt(_)) {
                        Test::Gt
                    } else {
                        Test::Ge
                    };
                    asm.jump(t, lo(v), next, fail);
                }
                Cmp::Lt(v) | Cmp::Le(v) => {
                    // arg < v  ⇔  hi < vhi  ∨  (hi = vhi ∧ lo < vlo); likewise ≤.
                    asm.load(hi_off);
                    asm.jump(Test::Ge, hi(v), next, pass);
                    asm.jump(Test::Eq, hi(v), next, fail);
                    asm.load(lo_off);
                    let t = if matches!(cmp, Cmp::Lt(_)) {
                        Test::Ge
                    } else {
                        Test::Gt
                    };
                    asm.jump(t, lo(v), fail, next);
                }
                Cmp::MaskedEq { mask, value } => {
                    for (off, m, val) in
                        [(hi_off, hi(mask), hi(value)), (lo_off, lo(mask), lo(value))]
                    {
                        asm.load(off);
                        if m != u32::MAX {
                            asm.and(m);
                        }
                        asm.jump(Test::Eq, val, next, fail);
                    }
                }
            }
            asm.bind(pass_label);
        }
    }
}

fn emit_decision(asm: &mut Asm, d: &Decision) {
    match d {
        Decision::Simple(a) => asm.ret(a.ret()),
        Decision::Chain(rules, fallback) => {
            for (checks, action) in rules {
                let next_rule = asm.label();
                for c in checks {
                    emit_check(asm, c, next_rule);
                }
                asm.ret(action.ret());
                asm.bind(next_rule);
            }
            asm.ret(fallback.ret());
        }
    }
}

/// A binary search over `ranges` (sorted by first number, each running up to the next one's
/// start, the last to 2³²−1) on the accumulator, which holds the call number. Each inner
/// node is `jge k; ja right` (the `ja` carries the far jump, so conditional offsets stay 0/1).
fn emit_tree(asm: &mut Asm, ranges: &[(u32, Decision)]) {
    if let [(_, d)] = ranges {
        emit_decision(asm, d);
        return;
    }
    let mid = ranges.len() / 2;
    let left = asm.label();
    let right = asm.label();
    asm.jump(Test::Ge, ranges[mid].0, Target::Next, Target::Label(left));
    asm.ja(right);
    asm.bind(left);
    emit_tree(asm, &ranges[..mid]);
    asm.bind(right);
    emit_tree(asm, &ranges[mid..]);
}

/// The running kernel's version, read once.
fn host_kernel() -> Result<KernelVersion, SeccompError> {
    static KERNEL: OnceLock<Option<KernelVersion>> = OnceLock::new();
    KERNEL
        .get_or_init(|| {
            let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
            super::oci::parse_kernel_version(release.trim())
        })
        .ok_or(SeccompError::KernelVersion)
}

/// Compile `profile` for a payload holding the capabilities in `caps` (bit n = capability
/// n), on the running kernel (for rules with a minimum kernel).
pub fn compile(profile: &Profile, caps: u64) -> Result<Program, SeccompError> {
    let kernel = if profile.rules.iter().any(|r| r.min_kernel.is_some()) {
        host_kernel()?
    } else {
        KernelVersion(0, 0)
    };
    compile_for(profile, caps, kernel)
}

/// [`compile`] for a given kernel version.
pub fn compile_for(
    profile: &Profile,
    caps: u64,
    kernel: KernelVersion,
) -> Result<Program, SeccompError> {
    for (i, rule) in profile.rules.iter().enumerate() {
        if rule.args.len() > MAX_CONDS {
            return Err(SeccompError::TooManyConditions { rule: i });
        }
        if let Some(c) = rule.args.iter().find(|c| c.index > 5) {
            return Err(SeccompError::ArgIndex {
                rule: i,
                index: u32::from(c.index),
            });
        }
    }
    let mut arches = profile.arches.clone();
    arches.sort();
    arches.dedup();

    let mut asm = Asm::default();
    asm.load(OFF_ARCH);
    let arch_labels: Vec<Label> = arches.iter().map(|_| asm.label()).collect();
    for (arch, label) in arches.iter().zip(&arch_labels) {
        let other = asm.label();
        asm.jump(
            Test::Eq,
            arch.audit_arch(),
            Target::Next,
            Target::Label(other),
        );
        asm.ja(*label);
        asm.bind(other);
    }
    asm.ret(BAD_ARCH_ACTION.ret());
    for (arch, label) in arches.iter().zip(&arch_labels) {
        asm.bind(*label);
        asm.load(OFF_NR);
        emit_tree(&mut asm, &ranges(profile, *arch, caps, kernel));
    }
    if asm.len() > Program::MAX_LEN {
        return Err(SeccompError::TooLong { len: asm.len() });
    }
    Program::new(asm.finish()?)
}

/// The decision for every call number of `arch`, as contiguous ranges.
fn ranges(profile: &Profile, arch: Arch, caps: u64, kernel: KernelVersion) -> Vec<(u32, Decision)> {
    // Rules by name, in profile order, for the rules that apply to this payload.
    let mut by_name: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, rule) in profile.rules.iter().enumerate() {
        if rule.applies(caps, kernel) {
            for name in &rule.names {
                let list = by_name.entry(name.as_str()).or_default();
                if list.last() != Some(&i) {
                    list.push(i);
                }
            }
        }
    }
    let mut numbers: Vec<(u32, Decision)> = arch
        .table()
        .iter()
        .map(|(name, nr)| {
            let rules = by_name.get(name).map(Vec::as_slice).unwrap_or(&[]);
            (*nr, decide(profile, arch, rules))
        })
        .collect();
    numbers.sort_by_key(|(nr, _)| *nr);

    let mut out: Vec<(u32, Decision)> = Vec::new();
    let mut push = |lo: u32, d: Decision| {
        if let Some((_, last @ Decision::Simple(_))) = out.last()
            && *last == d
        {
            return;
        }
        out.push((lo, d));
    };
    let unknown = Decision::Simple(profile.unknown_action);
    let mut next = 0u32;
    for (nr, d) in numbers {
        if nr > next {
            push(next, unknown.clone());
        }
        push(nr, d);
        next = nr + 1;
    }
    push(next, unknown);
    if arch == Arch::X86_64 {
        push(X32_SYSCALL_BIT, Decision::Simple(X32_ACTION));
    }
    out
}

/// What one call gets, from the rules naming it (indices into `profile.rules`, in order).
///
/// When several rules match one call the most restrictive action wins (the kernel's
/// precedence between stacked filters), ties going to the rule written first; a rule without
/// conditions matches everything, so nothing after it is looked at.
fn decide(profile: &Profile, arch: Arch, rule_ids: &[usize]) -> Decision {
    let mut ids = rule_ids.to_vec();
    ids.sort_by_key(|&i| std::cmp::Reverse(profile.rules[i].action.precedence()));
    let mut chain: Vec<(Vec<Check>, Action)> = Vec::new();
    for i in ids {
        let rule = &profile.rules[i];
        let checks: Vec<Check> = rule
            .args
            .iter()
            .map(|c| lower(c, arch))
            .filter(|c| *c != Check::Always)
            .collect();
        if checks.contains(&Check::Never) {
            continue;
        }
        let unconditional = checks.is_empty();
        chain.push((checks, rule.action));
        if unconditional {
            break;
        }
    }
    let mut fallback = profile.default_action;
    if let Some((checks, action)) = chain.last()
        && checks.is_empty()
    {
        fallback = *action;
        chain.pop();
    }
    // A trailing rule that answers what the fallback answers changes nothing.
    while chain.last().is_some_and(|(_, a)| *a == fallback) {
        chain.pop();
    }
    if chain.is_empty() {
        Decision::Simple(fallback)
    } else {
        Decision::Chain(chain, fallback)
    }
}
