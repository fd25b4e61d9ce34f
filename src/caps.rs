//! Linux capabilities: berthd plans the five sets of a container's first process, the helper
//! applies them.
//!
//! # The sets (capabilities(7))
//! - **bounding**: the ceiling for everything gained at `execve` (file capabilities, set-uid
//!   root binaries, uid 0 itself). Dropping from it needs `CAP_SETPCAP` and cannot be undone.
//! - **permitted / effective / inheritable**: what the thread holds, uses, and may pass on.
//! - **ambient**: kept across `execve` of unprivileged programs; always emptied here.
//!
//! For a root payload `execve` recomputes permitted = effective = bounding (the file sets of
//! uid 0 are notionally all ones), so the bounding set is what the container really gets. For
//! a non-root payload everything is empty, and the bounding set still caps what a set-uid or
//! file-capability binary inside could gain (unless `no_new_privs` is set).
//!
//! # Names
//! As podman and `capsh` spell them: case-insensitive, with or without the `CAP_` prefix
//! (`net_raw`, `CAP_NET_RAW`, `Net_Raw`), plus `all`. Anything else is an error naming it.
//!
//! # Merging `--cap-add` / `--cap-drop` ([`resolve`])
//! Podman's rules (containers/common `MergeCapabilities`), as sets, so the order of the flags
//! does not matter:
//! 1. every name must be known;
//! 2. `all` in both lists is an error;
//! 3. a capability named in both lists is an error;
//! 4. `--cap-add all`: every known capability, minus the drops;
//! 5. `--cap-drop all`: exactly the adds;
//! 6. otherwise: the default set, minus the drops, plus the adds.

use std::fmt;

use nix::errno::Errno;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::sys::caps as sys;

/// The highest capability number berth knows (`CAP_CHECKPOINT_RESTORE`, Linux 5.9).
pub const LAST_CAP: u8 = 40;

/// The option that lets host-dangerous capabilities through with `--userns=host`. The
/// integrator names the real flag here; [`CapError::DangerousWithHostUserns`] quotes it.
pub const UNSAFE_CAPS_OPT: &str = "--security-opt unsafe-caps";

#[derive(Debug, Error, PartialEq, Eq)]
pub enum CapError {
    #[error("unknown capability {0:?}")]
    UnknownName(String),
    #[error("capability {0} cannot be both added and dropped")]
    AddedAndDropped(Cap),
    #[error("cannot add all and drop all capabilities at once")]
    AddAllAndDropAll,
    #[error("capability bits {0:#x} are beyond CAP_LAST_CAP ({LAST_CAP})")]
    UnknownBits(u64),
    #[error(
        "with --userns=host the capabilities {caps} act on the host itself; pass {UNSAFE_CAPS_OPT} to allow them"
    )]
    DangerousWithHostUserns { caps: CapSet },
    #[error("dropping capability {cap} from the bounding set: {source}")]
    BoundingDrop { cap: u32, source: Errno },
    #[error("clearing the ambient capability set: {0}")]
    AmbientClear(Errno),
    #[error("setting PR_SET_KEEPCAPS: {0}")]
    KeepCaps(Errno),
    #[error("capget: {0}")]
    Capget(Errno),
    #[error("capset: {0}")]
    Capset(Errno),
    #[error("reading capability sets from /proc status: {0}")]
    Status(String),
}

/// One capability, by number (0..=[`LAST_CAP`]).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cap(u8);

/// Declares the constants and the name table from one list, and checks at compile time that
/// the numbers run 0, 1, 2, … so a name can never sit at the wrong index.
macro_rules! capabilities {
    ($($num:literal $name:ident),* $(,)?) => {
        impl Cap {
            $(pub const $name: Cap = Cap($num);)*
        }
        /// Canonical names, indexed by capability number.
        const NAMES: [&str; LAST_CAP as usize + 1] = [$(concat!("CAP_", stringify!($name))),*];
        const _: () = {
            let mut next = 0u8;
            $(assert!($num == next); next += 1;)*
            assert!(next == LAST_CAP + 1);
        };
    };
}

capabilities! {
    0 CHOWN, 1 DAC_OVERRIDE, 2 DAC_READ_SEARCH, 3 FOWNER, 4 FSETID, 5 KILL, 6 SETGID, 7 SETUID,
    8 SETPCAP, 9 LINUX_IMMUTABLE, 10 NET_BIND_SERVICE, 11 NET_BROADCAST, 12 NET_ADMIN,
    13 NET_RAW, 14 IPC_LOCK, 15 IPC_OWNER, 16 SYS_MODULE, 17 SYS_RAWIO, 18 SYS_CHROOT,
    19 SYS_PTRACE, 20 SYS_PACCT, 21 SYS_ADMIN, 22 SYS_BOOT, 23 SYS_NICE, 24 SYS_RESOURCE,
    25 SYS_TIME, 26 SYS_TTY_CONFIG, 27 MKNOD, 28 LEASE, 29 AUDIT_WRITE, 30 AUDIT_CONTROL,
    31 SETFCAP, 32 MAC_OVERRIDE, 33 MAC_ADMIN, 34 SYSLOG, 35 WAKE_ALARM, 36 BLOCK_SUSPEND,
    37 AUDIT_READ, 38 PERFMON, 39 BPF, 40 CHECKPOINT_RESTORE,
}

impl Cap {
    /// The capability with this number, if berth knows it.
    pub fn from_number(n: u32) -> Option<Cap> {
        (n <= u32::from(LAST_CAP)).then_some(Cap(n as u8))
    }

    pub fn number(self) -> u32 {
        u32::from(self.0)
    }

    /// The canonical name, e.g. `CAP_NET_RAW`.
    pub fn name(self) -> &'static str {
        NAMES[usize::from(self.0)]
    }

    /// Parse one capability name (not `all`): case-insensitive, `CAP_` prefix optional.
    pub fn parse(name: &str) -> Result<Cap, CapError> {
        match parse_name(name)? {
            CapName::One(cap) => Ok(cap),
            CapName::All => Err(CapError::UnknownName(name.to_string())),
        }
    }
}

impl fmt::Display for Cap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl fmt::Debug for Cap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A parsed `--cap-add`/`--cap-drop` word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapName {
    All,
    One(Cap),
}

/// Parse a name as podman does: `all` (any case), or a capability name in any case with or
/// without `CAP_`. `cap_all` is not `all` (podman refuses it too).
pub fn parse_name(name: &str) -> Result<CapName, CapError> {
    if name.eq_ignore_ascii_case("all") {
        return Ok(CapName::All);
    }
    let bare = match name.get(..4) {
        Some(prefix) if prefix.eq_ignore_ascii_case("CAP_") => &name[4..],
        _ => name,
    };
    NAMES
        .iter()
        .position(|n| n[4..].eq_ignore_ascii_case(bare))
        .map(|i| CapName::One(Cap(i as u8)))
        .ok_or_else(|| CapError::UnknownName(name.to_string()))
}

/// A set of capabilities, as the kernel's 64-bit mask (bit n = capability n). Only bits
/// 0..=[`LAST_CAP`] can be set; deserializing anything else fails.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(try_from = "u64", into = "u64")]
pub struct CapSet(u64);

const ALL_BITS: u64 = (1u64 << (LAST_CAP + 1)) - 1;

impl CapSet {
    pub const EMPTY: CapSet = CapSet(0);
    /// Every capability berth knows.
    pub const ALL: CapSet = CapSet(ALL_BITS);

    /// Podman's default for a container's root: 11 capabilities, mask `0x800405fb`.
    pub const DEFAULT: CapSet = CapSet::of(&[
        Cap::CHOWN,
        Cap::DAC_OVERRIDE,
        Cap::FOWNER,
        Cap::FSETID,
        Cap::KILL,
        Cap::NET_BIND_SERVICE,
        Cap::SETFCAP,
        Cap::SETGID,
        Cap::SETPCAP,
        Cap::SETUID,
        Cap::SYS_CHROOT,
    ]);

    /// Capabilities that, held by root in the host's user namespace, reach past the
    /// container's other walls to the host itself (load modules, raw I/O and devices, trace
    /// any process, change the clock, reconfigure host networking, override SELinux/AppArmor,
    /// read kernel memory and logs, lift resource limits, pin memory and CPU, …).
    pub const HOST_DANGEROUS: CapSet = CapSet::of(&[
        Cap::DAC_READ_SEARCH, // open_by_handle_at: walk out of any mount (the "shocker" escape)
        Cap::LINUX_IMMUTABLE,
        Cap::NET_ADMIN,
        Cap::SYS_MODULE,
        Cap::SYS_RAWIO,
        Cap::SYS_PTRACE,
        Cap::SYS_PACCT,
        Cap::SYS_ADMIN,
        Cap::SYS_BOOT,
        Cap::SYS_NICE, // real-time scheduling can starve the host
        Cap::SYS_RESOURCE,
        Cap::SYS_TIME,
        Cap::SYS_TTY_CONFIG,
        Cap::AUDIT_CONTROL,
        Cap::AUDIT_READ,
        Cap::MAC_OVERRIDE,
        Cap::MAC_ADMIN,
        Cap::SYSLOG,
        Cap::WAKE_ALARM,
        Cap::BLOCK_SUSPEND,
        Cap::PERFMON,
        Cap::BPF,
        Cap::CHECKPOINT_RESTORE,
    ]);

    /// The set of these capabilities (usable in constants).
    pub const fn of(caps: &[Cap]) -> CapSet {
        let mut bits = 0;
        let mut i = 0;
        while i < caps.len() {
            bits |= 1u64 << caps[i].0;
            i += 1;
        }
        CapSet(bits)
    }

    /// The set with this kernel mask; bits beyond [`LAST_CAP`] are an error.
    pub fn from_bits(bits: u64) -> Result<CapSet, CapError> {
        if bits & !ALL_BITS != 0 {
            return Err(CapError::UnknownBits(bits & !ALL_BITS));
        }
        Ok(CapSet(bits))
    }

    pub fn bits(self) -> u64 {
        self.0
    }

    pub fn contains(self, cap: Cap) -> bool {
        self.0 & (1 << cap.0) != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn insert(&mut self, cap: Cap) {
        self.0 |= 1 << cap.0;
    }

    pub fn remove(&mut self, cap: Cap) {
        self.0 &= !(1 << cap.0);
    }

    pub fn union(self, other: CapSet) -> CapSet {
        CapSet(self.0 | other.0)
    }

    pub fn intersection(self, other: CapSet) -> CapSet {
        CapSet(self.0 & other.0)
    }

    pub fn difference(self, other: CapSet) -> CapSet {
        CapSet(self.0 & !other.0)
    }

    pub fn len(self) -> usize {
        self.0.count_ones() as usize
    }

    /// The capabilities in ascending number order.
    pub fn iter(self) -> impl Iterator<Item = Cap> {
        (0..=LAST_CAP).map(Cap).filter(move |c| self.contains(*c))
    }

    /// Parse a list of names (no `all`) into a set.
    pub fn parse_names<S: AsRef<str>>(names: &[S]) -> Result<CapSet, CapError> {
        let mut set = CapSet::EMPTY;
        for name in names {
            set.insert(Cap::parse(name.as_ref())?);
        }
        Ok(set)
    }
}

impl TryFrom<u64> for CapSet {
    type Error = CapError;
    fn try_from(bits: u64) -> Result<Self, CapError> {
        CapSet::from_bits(bits)
    }
}

impl From<CapSet> for u64 {
    fn from(set: CapSet) -> u64 {
        set.0
    }
}

/// Comma-separated canonical names, `none` when empty.
impl fmt::Display for CapSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("none");
        }
        for (i, cap) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(cap.name())?;
        }
        Ok(())
    }
}

impl fmt::Debug for CapSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CapSet({:#x}: {self})", self.0)
    }
}

/// The capability set of a container's root from `--cap-add`/`--cap-drop`, by podman's rules
/// (see the module documentation): unknown names, `all` in both lists, or one capability in
/// both lists are errors; otherwise the result does not depend on the order of the names.
pub fn resolve<S: AsRef<str>>(add: &[S], drop: &[S]) -> Result<CapSet, CapError> {
    let parse = |names: &[S]| -> Result<(bool, CapSet), CapError> {
        let mut all = false;
        let mut set = CapSet::EMPTY;
        for name in names {
            match parse_name(name.as_ref())? {
                CapName::All => all = true,
                CapName::One(cap) => set.insert(cap),
            }
        }
        Ok((all, set))
    };
    let (add_all, add) = parse(add)?;
    let (drop_all, drop) = parse(drop)?;
    if add_all && drop_all {
        return Err(CapError::AddAllAndDropAll);
    }
    if let Some(cap) = add.intersection(drop).iter().next() {
        return Err(CapError::AddedAndDropped(cap));
    }
    Ok(if add_all {
        CapSet::ALL.difference(drop)
    } else if drop_all {
        add
    } else {
        CapSet::DEFAULT.difference(drop).union(add)
    })
}

/// With `--userns=host` the container's root is the host's root: refuse
/// [`CapSet::HOST_DANGEROUS`] members unless the caller explicitly allowed them. (Inside a
/// user namespace of its own the same capabilities only reach what that namespace owns.)
pub fn check_host_userns(set: CapSet, allow_dangerous: bool) -> Result<(), CapError> {
    let caps = set.intersection(CapSet::HOST_DANGEROUS);
    if caps.is_empty() || allow_dangerous {
        Ok(())
    } else {
        Err(CapError::DangerousWithHostUserns { caps })
    }
}

/// The five sets the helper gives the container's first process before `execve`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapPlan {
    pub bounding: CapSet,
    pub permitted: CapSet,
    pub effective: CapSet,
    pub inheritable: CapSet,
    pub ambient: CapSet,
}

/// The plan for a payload running as root (uid 0 in its user namespace) or not. A root
/// payload holds `set` in bounding, permitted and effective; a non-root one holds nothing,
/// with `set` as its bounding set. Inheritable and ambient are always empty, so no capability
/// survives an `execve` except through the bounding set.
pub fn plan_for(set: CapSet, payload_is_root: bool) -> CapPlan {
    let held = if payload_is_root { set } else { CapSet::EMPTY };
    CapPlan {
        bounding: set,
        permitted: held,
        effective: held,
        inheritable: CapSet::EMPTY,
        ambient: CapSet::EMPTY,
    }
}

impl CapPlan {
    /// This plan with `cap` kept in permitted and effective (not in bounding): for a helper
    /// that must still load seccomp without `no_new_privs`, which needs `CAP_SYS_ADMIN`. The
    /// payload does not get it: `execve` recomputes permitted and effective from the bounding
    /// set (root) or from nothing (non-root).
    pub fn retaining(mut self, cap: Cap) -> CapPlan {
        self.permitted.insert(cap);
        self.effective.insert(cap);
        self
    }

    /// Read a thread's five sets from the text of `/proc/<pid>/task/<tid>/status` (the
    /// `CapInh`, `CapPrm`, `CapEff`, `CapBnd`, `CapAmb` lines), e.g. in a probe that compares
    /// what a container got with what was planned. Bits beyond [`LAST_CAP`] are an error.
    pub fn from_proc_status(status: &str) -> Result<CapPlan, CapError> {
        let field = |key: &str| -> Result<CapSet, CapError> {
            let line = status
                .lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
                .ok_or_else(|| CapError::Status(format!("no {key} line")))?;
            let bits = u64::from_str_radix(line.trim(), 16)
                .map_err(|e| CapError::Status(format!("{key}: {e}")))?;
            CapSet::from_bits(bits)
        };
        Ok(CapPlan {
            bounding: field("CapBnd")?,
            permitted: field("CapPrm")?,
            effective: field("CapEff")?,
            inheritable: field("CapInh")?,
            ambient: field("CapAmb")?,
        })
    }
}

// ---- applying, in the helper ----------------------------------------------------------------
//
// Each function below is one or a few system calls on the calling thread, with no allocation
// and no lock (errors carry only numbers), so they are safe in the single-threaded helper and
// even between fork and exec. The helper calls them after setgroups/setgid/setuid:
//
// - Switching from uid 0 to a non-zero uid clears permitted and effective unless
//   PR_SET_KEEPCAPS was set before (then only effective is cleared): a helper that runs a
//   non-root payload calls `set_keepcaps(true)` before setuid; [`apply`] raises effective again,
//   because dropping the bounding set needs CAP_SETPCAP in the effective set. `execve` resets
//   KEEPCAPS, so it does not leak to the payload.
// - Seccomp is loaded after this step. Without no_new_privs, seccomp(2) needs CAP_SYS_ADMIN in
//   the current user namespace: then capset `plan.retaining(Cap::SYS_ADMIN)` here; execve
//   drops it again (it is not in the bounding set).

/// `PR_SET_KEEPCAPS`: keep the permitted set across a uid change away from 0 (see above).
pub fn set_keepcaps(keep: bool) -> Result<(), CapError> {
    nix::sys::prctl::set_keepcaps(keep).map_err(CapError::KeepCaps)
}

impl CapPlan {
    /// The sets as the syscall layer takes them.
    pub fn sets(&self) -> sys::CapSets {
        sys::CapSets {
            bounding: self.bounding.0,
            permitted: self.permitted.0,
            effective: self.effective.0,
            inheritable: self.inheritable.0,
        }
    }
}

/// The whole step in a safe order (see [`sys::apply`]). For a non-root payload,
/// `set_keepcaps(true)` must have preceded the setuid.
pub fn apply(plan: &CapPlan) -> Result<(), CapError> {
    sys::apply(&plan.sets()).map_err(CapError::Capset)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn names_with_and_without_prefix_any_case() {
        for name in [
            "CAP_NET_RAW",
            "net_raw",
            "Net_Raw",
            "cap_net_raw",
            "NET_RAW",
        ] {
            assert_eq!(parse_name(name), Ok(CapName::One(Cap::NET_RAW)), "{name}");
        }
        assert_eq!(parse_name("ALL"), Ok(CapName::All));
        assert_eq!(parse_name("all"), Ok(CapName::All));
        assert_eq!(
            parse_name("cap_all"),
            Err(CapError::UnknownName("cap_all".into()))
        );
        for bad in [
            "",
            "CAP_",
            "net-raw",
            "CAP_NET_RAWX",
            "sys admin",
            "ünïcode",
        ] {
            assert_eq!(parse_name(bad), Err(CapError::UnknownName(bad.into())));
        }
        assert_eq!(Cap::parse("all"), Err(CapError::UnknownName("all".into())));
        let err = resolve(&s(&["chown", "bogus"]), &[]).unwrap_err();
        assert_eq!(err.to_string(), "unknown capability \"bogus\"");
    }

    #[test]
    fn table_numbers_match_the_kernel_header() {
        assert_eq!(Cap::CHOWN.number(), 0);
        assert_eq!(Cap::SYS_ADMIN.number(), 21);
        assert_eq!(Cap::SETFCAP.number(), 31);
        assert_eq!(Cap::BPF.number(), 39);
        assert_eq!(Cap::CHECKPOINT_RESTORE.number(), 40);
        assert_eq!(Cap::CHECKPOINT_RESTORE.name(), "CAP_CHECKPOINT_RESTORE");
        assert_eq!(Cap::from_number(41), None);
        // Every name parses back to its own number.
        for n in 0..=u32::from(LAST_CAP) {
            let cap = Cap::from_number(n).unwrap();
            assert_eq!(Cap::parse(cap.name()), Ok(cap));
        }
        assert_eq!(CapSet::ALL.len(), 41);
    }

    #[test]
    fn default_set_is_podmans_eleven() {
        assert_eq!(CapSet::DEFAULT.len(), 11);
        assert_eq!(CapSet::DEFAULT.bits(), 0x8004_05fb);
        assert!(
            CapSet::DEFAULT
                .intersection(CapSet::HOST_DANGEROUS)
                .is_empty()
        );
    }

    #[test]
    fn resolve_follows_podman() {
        let none: &[String] = &[];
        assert_eq!(resolve(none, none), Ok(CapSet::DEFAULT));
        // Drop all, then add some: exactly the adds.
        assert_eq!(
            resolve(&s(&["net_raw", "CAP_CHOWN"]), &s(&["ALL"])),
            Ok(CapSet::of(&[Cap::NET_RAW, Cap::CHOWN]))
        );
        assert_eq!(resolve(none, &s(&["all"])), Ok(CapSet::EMPTY));
        // Add all, minus drops.
        assert_eq!(resolve(&s(&["all"]), none), Ok(CapSet::ALL));
        let mut expect = CapSet::ALL;
        expect.remove(Cap::SYS_ADMIN);
        assert_eq!(resolve(&s(&["all"]), &s(&["sys_admin"])), Ok(expect));
        // Default, minus drops, plus adds; order and duplicates do not matter.
        let got = resolve(&s(&["net_raw", "NET_RAW"]), &s(&["setfcap", "kill"])).unwrap();
        let mut expect = CapSet::DEFAULT;
        expect.remove(Cap::SETFCAP);
        expect.remove(Cap::KILL);
        expect.insert(Cap::NET_RAW);
        assert_eq!(got, expect);
        assert_eq!(
            resolve(&s(&["kill", "net_raw"]), &s(&["setfcap"])),
            resolve(&s(&["net_raw", "kill"]), &s(&["setfcap"]))
        );
        // Dropping something not in the default is not an error.
        assert_eq!(resolve(none, &s(&["sys_admin"])), Ok(CapSet::DEFAULT));
        // Errors.
        assert_eq!(
            resolve(&s(&["all"]), &s(&["all"])),
            Err(CapError::AddAllAndDropAll)
        );
        assert_eq!(
            resolve(&s(&["net_raw"]), &s(&["CAP_NET_RAW"])),
            Err(CapError::AddedAndDropped(Cap::NET_RAW))
        );
        assert_eq!(
            resolve(none, &s(&["nope"])),
            Err(CapError::UnknownName("nope".into()))
        );
    }

    #[test]
    fn host_userns_refuses_dangerous_unless_allowed() {
        assert_eq!(check_host_userns(CapSet::DEFAULT, false), Ok(()));
        let set = CapSet::DEFAULT.union(CapSet::of(&[Cap::SYS_ADMIN, Cap::NET_ADMIN]));
        let err = check_host_userns(set, false).unwrap_err();
        assert_eq!(
            err,
            CapError::DangerousWithHostUserns {
                caps: CapSet::of(&[Cap::SYS_ADMIN, Cap::NET_ADMIN])
            }
        );
        let msg = err.to_string();
        assert!(msg.contains("CAP_NET_ADMIN, CAP_SYS_ADMIN"), "{msg}");
        assert!(msg.contains(UNSAFE_CAPS_OPT), "{msg}");
        assert_eq!(check_host_userns(set, true), Ok(()));
        for cap in [
            Cap::SYS_MODULE,
            Cap::SYS_RAWIO,
            Cap::SYS_PTRACE,
            Cap::SYS_BOOT,
            Cap::SYS_TIME,
            Cap::MAC_ADMIN,
            Cap::MAC_OVERRIDE,
            Cap::SYS_RESOURCE,
            Cap::DAC_READ_SEARCH,
            Cap::BPF,
            Cap::PERFMON,
            Cap::SYSLOG,
        ] {
            assert!(
                check_host_userns(CapSet::of(&[cap]), false).is_err(),
                "{cap}"
            );
        }
    }

    #[test]
    fn plans_for_root_and_non_root() {
        let set = CapSet::DEFAULT;
        assert_eq!(
            plan_for(set, true),
            CapPlan {
                bounding: set,
                permitted: set,
                effective: set,
                inheritable: CapSet::EMPTY,
                ambient: CapSet::EMPTY,
            }
        );
        assert_eq!(
            plan_for(set, false),
            CapPlan {
                bounding: set,
                permitted: CapSet::EMPTY,
                effective: CapSet::EMPTY,
                inheritable: CapSet::EMPTY,
                ambient: CapSet::EMPTY,
            }
        );
        let kept = plan_for(set, false).retaining(Cap::SYS_ADMIN);
        assert!(kept.effective.contains(Cap::SYS_ADMIN) && !kept.bounding.contains(Cap::SYS_ADMIN));
    }

    #[test]
    fn plan_serde_round_trip_and_bad_bits() {
        let plan = plan_for(CapSet::DEFAULT, true);
        let json = serde_json::to_string(&plan).unwrap();
        assert_eq!(
            json,
            r#"{"bounding":2147747323,"permitted":2147747323,"effective":2147747323,"inheritable":0,"ambient":0}"#
        );
        assert_eq!(serde_json::from_str::<CapPlan>(&json).unwrap(), plan);
        let bad = json.replacen("\"inheritable\":0", "\"inheritable\":2199023255552", 1);
        let err = serde_json::from_str::<CapPlan>(&bad).unwrap_err();
        assert!(err.to_string().contains("beyond CAP_LAST_CAP"), "{err}");
    }

    #[test]
    fn proc_status_parsing() {
        let text = "Name:\tx\nCapInh:\t0000000000000000\nCapPrm:\t00000000800405fb\n\
                    CapEff:\t00000000800405fb\nCapBnd:\t00000000800405fb\nCapAmb:\t0000000000000000\n";
        assert_eq!(
            CapPlan::from_proc_status(text),
            Ok(plan_for(CapSet::DEFAULT, true))
        );
        assert!(matches!(
            CapPlan::from_proc_status("CapInh:\t0\n"),
            Err(CapError::Status(_))
        ));
        let extra = text.replace("CapBnd:\t00000000800405fb", "CapBnd:\t00000200800405fb");
        assert_eq!(
            CapPlan::from_proc_status(&extra),
            Err(CapError::UnknownBits(1 << 41))
        );
    }

    // ---- applying, in a child process ------------------------------------------------------
    //
    // Capabilities are per-thread and a uid change in glibc reaches every thread, so the apply
    // tests run in a fresh copy of this test binary (re-exec'd with CHILD_ENV naming the mode
    // and `--exact` naming the same test) and never touch this process. The child applies the
    // sequence and prints its thread's /proc status between markers; the parent parses it.

    const CHILD_ENV: &str = "BERTH_CAPS_TEST_CHILD";
    const BEGIN: &str = "--- berth caps status begin ---";
    const END: &str = "--- berth caps status end ---";

    /// Parent side: re-exec this test in a child and return what its thread ended up with
    /// (or the child's error line for modes that expect an error).
    fn in_child(test: &str, mode: &str) -> String {
        assert!(
            nix::unistd::geteuid().is_root(),
            "caps::tests::{test} needs root (it applies capability sets in a child process)"
        );
        let exe = std::env::current_exe().expect("current_exe");
        let out = std::process::Command::new(exe)
            .args([&format!("caps::tests::{test}"), "--exact", "--nocapture"])
            .args(["--test-threads=1"])
            .env(CHILD_ENV, mode)
            .output()
            .expect("spawning the test binary");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "child failed: {}\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let body = stdout
            .split_once(BEGIN)
            .and_then(|(_, rest)| rest.split_once(END))
            .map(|(body, _)| body.to_string());
        body.unwrap_or_else(|| panic!("child printed no status:\n{stdout}"))
    }

    fn thread_status() -> String {
        std::fs::read_to_string("/proc/thread-self/status").expect("reading /proc/thread-self")
    }

    fn child_mode() -> Option<String> {
        std::env::var(CHILD_ENV).ok()
    }

    fn become_nobody() {
        use nix::unistd::{Gid, Uid, setgroups, setresgid, setresuid};
        setgroups(&[]).expect("setgroups");
        let (g, u) = (Gid::from_raw(65534), Uid::from_raw(65534));
        setresgid(g, g, g).expect("setresgid");
        setresuid(u, u, u).expect("setresuid");
    }

    #[test]
    fn apply_root_plan_drops_to_default() {
        if let Some(mode) = child_mode() {
            assert_eq!(mode, "root");
            apply(&plan_for(CapSet::DEFAULT, true)).expect("apply");
            println!("{BEGIN}\n{}{END}", thread_status());
            return;
        }
        let status = in_child("apply_root_plan_drops_to_default", "root");
        for (key, hex) in [
            ("CapBnd", "00000000800405fb"),
            ("CapPrm", "00000000800405fb"),
            ("CapEff", "00000000800405fb"),
            ("CapInh", "0000000000000000"),
            ("CapAmb", "0000000000000000"),
        ] {
            let line = format!("{key}:\t{hex}");
            assert!(
                status.lines().any(|l| l == line),
                "want {line} in\n{status}"
            );
        }
        assert_eq!(
            CapPlan::from_proc_status(&status),
            Ok(plan_for(CapSet::DEFAULT, true))
        );
    }

    #[test]
    fn apply_non_root_plan_after_setuid_with_keepcaps() {
        if let Some(mode) = child_mode() {
            assert_eq!(mode, "nonroot");
            set_keepcaps(true).expect("keepcaps");
            become_nobody();
            apply(&plan_for(CapSet::DEFAULT, false)).expect("apply");
            println!("{BEGIN}\n{}{END}", thread_status());
            return;
        }
        let status = in_child("apply_non_root_plan_after_setuid_with_keepcaps", "nonroot");
        assert!(
            status.lines().any(|l| l == "CapBnd:\t00000000800405fb"),
            "{status}"
        );
        for key in ["CapPrm", "CapEff", "CapInh", "CapAmb"] {
            let line = format!("{key}:\t0000000000000000");
            assert!(
                status.lines().any(|l| l == line),
                "want {line} in\n{status}"
            );
        }
        assert!(
            status.lines().any(|l| l.starts_with("Uid:\t65534\t")),
            "{status}"
        );
    }

    #[test]
    fn bounding_drop_after_setuid_without_keepcaps_is_refused() {
        if let Some(mode) = child_mode() {
            assert_eq!(mode, "no-keepcaps");
            become_nobody();
            let err = apply(&plan_for(CapSet::DEFAULT, false)).unwrap_err();
            println!("{BEGIN}\n{err:?}\n{END}");
            return;
        }
        let out = in_child(
            "bounding_drop_after_setuid_without_keepcaps_is_refused",
            "no-keepcaps",
        );
        // Dropping the bounding set is refused for lack of CAP_SETPCAP.
        assert_eq!(out.trim(), format!("{:?}", CapError::Capset(Errno::EPERM)));
    }
}
