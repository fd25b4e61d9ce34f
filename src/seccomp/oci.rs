//! Docker/OCI JSON seccomp profiles → [`Profile`].
//!
//! The format is moby's `profiles/seccomp/default.json` (also containers/common's
//! `seccomp.json` and the OCI runtime spec's `linux.seccomp`): `defaultAction`,
//! `defaultErrnoRet`, `architectures` or `archMap`, and `syscalls[]` with `names`, `action`,
//! `errnoRet`, `args[] {index, value, valueTwo, op}` and `includes`/`excludes`
//! `{caps, arches, minKernel}`. Unknown fields are refused (a typo must not silently drop a
//! rule).
//!
//! Decisions where the format leaves room:
//! - `includes.caps` means "all of these are granted", `excludes.caps` "none of these is", and
//!   `arches` is matched against this host (`amd64`), as moby does.
//! - Architectures: `architectures` if given, else the `archMap` entry for
//!   `SCMP_ARCH_X86_64` and its sub-architectures, else x86_64 alone. `SCMP_ARCH_X32` is
//!   accepted but x32 calls always get ENOSYS; other architectures cannot run here and are
//!   ignored. A profile naming neither x86_64 nor x86 is refused.
//! - Syscall names berth does not know (not in its x86_64 or i386 table) are tolerated, as
//!   libseccomp and runc do, and listed in [`Profile::warnings`] — unless the rule would deny
//!   them while the default action allows: ignoring that rule would leave the call open, so
//!   such a profile is refused.
//! - `SCMP_ACT_TRACE` becomes `ERRNO(ENOSYS)` (what the kernel answers when no tracer is
//!   attached; berth attaches none, and a tracer inside the container must not decide);
//!   `SCMP_ACT_NOTIFY` and `listenerPath` are refused (berth runs no notify agent).
//! - `SCMP_ACT_ERRNO` without `errnoRet` (and `defaultErrnoRet` absent) is EPERM.
//! - Numbers berth's tables do not name get ENOSYS when the default action denies (so libcs
//!   fall back from calls newer than the table, as runc arranges too), and the default action
//!   when it allows.
//! - Argument comparisons are 64-bit unsigned on x86_64, as libseccomp does (so, as with
//!   libseccomp, a rule on an `int` argument can be dodged with the high half set; berth's own
//!   profile compares such arguments on 32 bits), and 32-bit on i386.

use serde::Deserialize;

use super::SeccompError;
use super::default::cap_number;
use super::profile::{
    Action, Arch, ArgCond, Cmp, KernelVersion, MAX_CONDS, MAX_ERRNO, Profile, Rule, Width,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct OciProfile {
    default_action: String,
    default_errno_ret: Option<u32>,
    architectures: Option<Vec<String>>,
    arch_map: Option<Vec<OciArchMap>>,
    syscalls: Option<Vec<OciSyscall>>,
    flags: Option<Vec<String>>,
    listener_path: Option<String>,
    /// Only meaningful with a listener, which is refused.
    #[allow(dead_code)]
    listener_metadata: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct OciArchMap {
    architecture: String,
    sub_architectures: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct OciSyscall {
    name: Option<String>,
    names: Option<Vec<String>>,
    action: String,
    errno_ret: Option<u32>,
    args: Option<Vec<OciArg>>,
    #[allow(dead_code)]
    comment: Option<String>,
    includes: Option<OciFilter>,
    excludes: Option<OciFilter>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct OciArg {
    index: u32,
    value: u64,
    #[serde(default)]
    value_two: u64,
    op: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct OciFilter {
    caps: Option<Vec<String>>,
    arches: Option<Vec<String>>,
    min_kernel: Option<String>,
}

/// Names this host answers to in `includes.arches` / `excludes.arches`.
const NATIVE_ARCH_NAMES: [&str; 3] = ["amd64", "x86_64", "SCMP_ARCH_X86_64"];

/// `"4.8"` or `"6.18.44-generic"` → (major, minor).
pub(super) fn parse_kernel_version(s: &str) -> Option<KernelVersion> {
    let mut parts = s.split(['.', '-', '+']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some(KernelVersion(major, minor))
}

fn parse_action(name: &str, errno: Option<u32>, what: &str) -> Result<Action, SeccompError> {
    let errno = match errno {
        None => libc::EPERM as u16,
        Some(e) if e <= u32::from(MAX_ERRNO) => e as u16,
        Some(e) => {
            return Err(SeccompError::Errno {
                what: what.to_string(),
                errno: e,
            });
        }
    };
    Ok(match name {
        "SCMP_ACT_ALLOW" => Action::Allow,
        "SCMP_ACT_LOG" => Action::Log,
        "SCMP_ACT_ERRNO" => Action::Errno(errno),
        "SCMP_ACT_TRAP" => Action::Trap,
        "SCMP_ACT_KILL" | "SCMP_ACT_KILL_THREAD" => Action::KillThread,
        "SCMP_ACT_KILL_PROCESS" => Action::KillProcess,
        "SCMP_ACT_TRACE" => Action::Errno(libc::ENOSYS as u16),
        "SCMP_ACT_NOTIFY" => {
            return Err(SeccompError::UnsupportedAction {
                what: what.to_string(),
                action: name.to_string(),
                why: "berth runs no seccomp notify agent",
            });
        }
        _ => {
            return Err(SeccompError::UnknownAction {
                what: what.to_string(),
                action: name.to_string(),
            });
        }
    })
}

fn parse_arg(arg: &OciArg, rule: usize) -> Result<ArgCond, SeccompError> {
    let index = u8::try_from(arg.index)
        .ok()
        .filter(|i| *i <= 5)
        .ok_or(SeccompError::ArgIndex {
            rule,
            index: arg.index,
        })?;
    let v = arg.value;
    let cmp = match arg.op.as_str() {
        "SCMP_CMP_EQ" => Cmp::Eq(v),
        "SCMP_CMP_NE" => Cmp::Ne(v),
        "SCMP_CMP_LT" => Cmp::Lt(v),
        "SCMP_CMP_LE" => Cmp::Le(v),
        "SCMP_CMP_GT" => Cmp::Gt(v),
        "SCMP_CMP_GE" => Cmp::Ge(v),
        // libseccomp: value is the mask, valueTwo the datum.
        "SCMP_CMP_MASKED_EQ" => Cmp::MaskedEq {
            mask: v,
            value: arg.value_two,
        },
        op => {
            return Err(SeccompError::UnknownOperator {
                rule,
                op: op.to_string(),
            });
        }
    };
    Ok(ArgCond {
        index,
        cmp,
        width: Width::Full64,
    })
}

fn caps_mask(names: &[String], rule: usize) -> Result<u64, SeccompError> {
    names.iter().try_fold(0u64, |mask, name| {
        cap_number(name)
            .map(|n| mask | 1u64 << n)
            .ok_or_else(|| SeccompError::UnknownCapability {
                rule,
                name: name.clone(),
            })
    })
}

fn map_arch(name: &str, out: &mut Vec<Arch>) {
    match name {
        "SCMP_ARCH_X86_64" => out.push(Arch::X86_64),
        "SCMP_ARCH_X86" => out.push(Arch::I386),
        // x32 calls always get ENOSYS; other architectures never run on this host.
        _ => {}
    }
}

/// Parse a Docker/OCI JSON seccomp profile (see the module doc for the decisions made).
pub fn parse_oci(json: &[u8]) -> Result<Profile, SeccompError> {
    let oci: OciProfile = serde_json::from_slice(json).map_err(SeccompError::Json)?;
    let mut warnings = Vec::new();

    if oci.listener_path.as_deref().is_some_and(|p| !p.is_empty()) {
        return Err(SeccompError::UnsupportedAction {
            what: "listenerPath".to_string(),
            action: "SCMP_ACT_NOTIFY".to_string(),
            why: "berth runs no seccomp notify agent",
        });
    }
    for flag in oci.flags.iter().flatten() {
        match flag.as_str() {
            "SECCOMP_FILTER_FLAG_TSYNC" => {}
            "SECCOMP_FILTER_FLAG_LOG" | "SECCOMP_FILTER_FLAG_SPEC_ALLOW" => {
                warnings.push(format!("seccomp flag {flag} is not applied"))
            }
            other => {
                return Err(SeccompError::UnknownFlag(other.to_string()));
            }
        }
    }

    let default_action = parse_action(&oci.default_action, oci.default_errno_ret, "defaultAction")?;
    if oci.default_action == "SCMP_ACT_TRACE" {
        warnings.push("defaultAction SCMP_ACT_TRACE is applied as ERRNO(ENOSYS)".to_string());
    }

    let mut arches = Vec::new();
    match (&oci.architectures, &oci.arch_map) {
        (Some(list), _) if !list.is_empty() => list.iter().for_each(|a| map_arch(a, &mut arches)),
        (_, Some(map)) if !map.is_empty() => {
            for entry in map.iter().filter(|e| e.architecture == "SCMP_ARCH_X86_64") {
                map_arch(&entry.architecture, &mut arches);
                for sub in entry.sub_architectures.iter().flatten() {
                    map_arch(sub, &mut arches);
                }
            }
        }
        _ => arches.push(Arch::X86_64),
    }
    arches.sort();
    arches.dedup();
    if arches.is_empty() {
        return Err(SeccompError::NoArch);
    }

    let mut rules = Vec::new();
    let mut unknown_names: Vec<String> = Vec::new();
    for (i, sc) in oci.syscalls.iter().flatten().enumerate() {
        let what = format!("syscalls[{i}]");
        let action = parse_action(&sc.action, sc.errno_ret, &what)?;
        if sc.action == "SCMP_ACT_TRACE" {
            warnings.push(format!(
                "{what}: SCMP_ACT_TRACE is applied as ERRNO(ENOSYS)"
            ));
        }
        let mut names: Vec<String> = sc.names.clone().unwrap_or_default();
        names.extend(sc.name.clone());
        if names.is_empty() {
            return Err(SeccompError::EmptyRule { rule: i });
        }
        let args = sc
            .args
            .iter()
            .flatten()
            .map(|a| parse_arg(a, i))
            .collect::<Result<Vec<_>, _>>()?;
        if args.len() > MAX_CONDS {
            return Err(SeccompError::TooManyConditions { rule: i });
        }
        let includes = sc.includes.as_ref();
        let excludes = sc.excludes.as_ref();
        let caps_all = caps_mask(includes.and_then(|f| f.caps.as_deref()).unwrap_or(&[]), i)?;
        let caps_none = caps_mask(excludes.and_then(|f| f.caps.as_deref()).unwrap_or(&[]), i)?;
        let min_kernel = match includes.and_then(|f| f.min_kernel.as_deref()) {
            None => None,
            Some(v) => Some(
                parse_kernel_version(v).ok_or_else(|| SeccompError::MinKernel {
                    rule: i,
                    value: v.to_string(),
                })?,
            ),
        };
        let native = |f: Option<&OciFilter>| {
            f.and_then(|f| f.arches.as_ref())
                .map(|a| a.iter().any(|n| NATIVE_ARCH_NAMES.contains(&n.as_str())))
        };
        // A rule for other hosts' architectures does not apply here at all.
        if native(includes) == Some(false) || native(excludes) == Some(true) {
            continue;
        }
        for name in &names {
            if Arch::X86_64.number(name).is_none() && Arch::I386.number(name).is_none() {
                if !action.is_permissive() && default_action.is_permissive() {
                    return Err(SeccompError::UnknownSyscall {
                        rule: i,
                        name: name.clone(),
                    });
                }
                if !unknown_names.contains(name) {
                    unknown_names.push(name.clone());
                }
            }
        }
        rules.push(Rule {
            names,
            action,
            args,
            caps_all,
            caps_none,
            min_kernel,
        });
    }
    if !unknown_names.is_empty() {
        warnings.push(format!(
            "syscall names unknown to berth left at the default action: {}",
            unknown_names.join(", ")
        ));
    }
    let unknown_action = if default_action.is_permissive() {
        default_action
    } else {
        Action::Errno(libc::ENOSYS as u16)
    };
    Ok(Profile {
        default_action,
        unknown_action,
        arches,
        rules,
        warnings,
    })
}
