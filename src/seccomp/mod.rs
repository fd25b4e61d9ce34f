//! berth's seccomp layer: a policy model, Docker/OCI profile parsing, and a compiler to one
//! classic-BPF program, built once in berthd and loaded by the helper as the last step
//! before exec.
//!
//! # Flow
//!
//! - berthd at start: `default_profile()` → [`Cache::get_or_compile`] with the default
//!   capability set → a [`Program`] (664 instructions, under a millisecond in a release
//!   build; measured by the `default_program_fits…` test).
//! - `--security-opt seccomp=FILE`: [`SeccompOpt::parse`] at validation, [`read_profile`] +
//!   compile with the container's capabilities at create; `seccomp=unconfined`: no program.
//! - The [`Program`] (plain `u64` words, serde) travels in the plan; the helper calls
//!   [`Program::load`] after no_new_privs and the SELinux label, just before exec.
//!
//! # Policy
//!
//! Per call: the most restrictive matching rule wins (ties: first written); calls berth
//! knows that no rule matches get the profile's default action (EPERM in the default
//! profile); numbers berth's table lacks get `unknown_action` (ENOSYS, so libcs fall back from
//! calls newer than the table); x32 numbers always ENOSYS; an ABI the profile does not list
//! kills the process. Rule conditions compare arguments as the kernel reads them (see
//! [`Width`]). The default profile is described at [`default_profile`].
//!
//! # Program layout
//!
//! ```text
//!   ld  [4]                        ; seccomp_data.arch
//!   jeq AUDIT_ARCH_X86_64, 0, 1
//!   ja  x86_64
//!   jeq AUDIT_ARCH_I386, 0, 1
//!   ja  i386
//!   ret KILL_PROCESS               ; any other ABI
//! x86_64:
//!   ld  [0]                        ; seccomp_data.nr
//!   <tree>                         ; binary search over number ranges
//! i386:
//!   ld  [0]
//!   <tree>
//! ```
//!
//! Each ABI's numbers 0..2³² are cut into ranges that get the same answer (allowed runs,
//! denied runs, unknown gaps, everything from 0x40000000 up on x86_64 for x32); a tree node
//! is `jge first_of_right_half, 0, 1; ja right`, so every path costs about 2·log₂(ranges)
//! instructions and far jumps use `ja`'s 32-bit offset. A leaf is `ret ACTION`, or for a call
//! with argument rules a chain: per rule, load each argument half (`ld [16 + 8·i]` low,
//! `+4` high), compare, jump to the next rule on mismatch, `ret` on match; the chain ends in
//! the call's fallback `ret`. 64-bit comparisons test the high half, then the low one;
//! 32-bit ones only the low half.

mod bpf;
mod compile;
mod default;
mod oci;
mod profile;
mod table;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

pub use compile::{compile, compile_for};
pub use default::{CLONE_NS_FLAGS, cap_number, default_profile};
pub use oci::parse_oci;
pub use profile::{
    Action, Arch, ArgCond, Cmp, KernelVersion, MAX_CONDS, MAX_ERRNO, Profile, Rule, Width,
};

/// Why a profile was refused or could not be compiled.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("seccomp profile is not valid JSON: {0}")]
    Json(#[source] serde_json::Error),
    #[error("seccomp profile: {what}: unknown action {action:?}")]
    UnknownAction { what: String, action: String },
    #[error("seccomp profile: {what}: action {action} is not supported: {why}")]
    UnsupportedAction {
        what: String,
        action: String,
        why: &'static str,
    },
    #[error("seccomp profile: {what}: errno {errno} is out of range 0..=4095")]
    Errno { what: String, errno: u32 },
    #[error("seccomp profile: unknown flag {0:?}")]
    UnknownFlag(String),
    #[error("seccomp profile: syscalls[{rule}] names no system call")]
    EmptyRule { rule: usize },
    #[error("seccomp profile: syscalls[{rule}]: unknown comparison operator {op:?}")]
    UnknownOperator { rule: usize, op: String },
    #[error("seccomp profile: syscalls[{rule}]: argument index {index} is out of range 0..=5")]
    ArgIndex { rule: usize, index: u32 },
    #[error("seccomp profile: syscalls[{rule}]: more than {MAX_CONDS} argument conditions")]
    TooManyConditions { rule: usize },
    #[error("seccomp profile: syscalls[{rule}]: unknown capability {name:?}")]
    UnknownCapability { rule: usize, name: String },
    #[error("seccomp profile: syscalls[{rule}]: minKernel {value:?} is not a kernel version")]
    MinKernel { rule: usize, value: String },
    #[error(
        "seccomp profile: syscalls[{rule}] denies {name:?}, a system call berth does not know, \
         while the default action allows: refusing rather than leaving it allowed"
    )]
    UnknownSyscall { rule: usize, name: String },
    #[error(
        "seccomp profile lists no architecture this host runs (SCMP_ARCH_X86_64, SCMP_ARCH_X86)"
    )]
    NoArch,
    #[error(
        "seccomp profile compiles to {len} instructions, more than the kernel's limit of {max}",
        max = Program::MAX_LEN
    )]
    TooLong { len: usize },
    #[error("seccomp program is empty")]
    Empty,
    #[error("cannot read the running kernel's version from /proc/sys/kernel/osrelease")]
    KernelVersion,
    #[error("seccomp profile path {0:?} is not absolute")]
    RelativePath(PathBuf),
    #[error("reading seccomp profile {path:?}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("seccomp profile {path:?} is larger than {max} bytes")]
    TooLarge { path: PathBuf, max: u64 },
    #[error("seccomp compiler bug: {0}")]
    Internal(&'static str),
}

/// A compiled filter: classic-BPF instructions, each a `struct sock_filter` packed in a `u64`
/// (`code | jt << 16 | jf << 24 | k << 32`), 1 to 4096 of them (checked on construction and
/// on deserialization, so a plan cannot carry an over-long one).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "Vec<u64>", into = "Vec<u64>")]
pub struct Program(Vec<u64>);

impl Program {
    /// The kernel's limit (`BPF_MAXINSNS`).
    pub const MAX_LEN: usize = 4096;

    fn new(insns: Vec<u64>) -> Result<Program, SeccompError> {
        match insns.len() {
            0 => Err(SeccompError::Empty),
            len if len > Program::MAX_LEN => Err(SeccompError::TooLong { len }),
            _ => Ok(Program(insns)),
        }
    }

    /// Number of instructions.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Always false (a program has at least one instruction).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The packed instructions.
    pub fn instructions(&self) -> &[u64] {
        &self.0
    }

    /// The instructions as the kernel's `struct sock_filter`.
    pub fn to_sock_filters(&self) -> Vec<libc::sock_filter> {
        self.0
            .iter()
            .map(|&insn| {
                let (code, jt, jf, k) = bpf::unpack(insn);
                libc::sock_filter { code, jt, jf, k }
            })
            .collect()
    }

    /// Install the filter on the calling thread (see [`crate::sys::seccomp::load_filter`]).
    /// The caller must have set no_new_privs, or hold CAP_SYS_ADMIN in its user namespace;
    /// everything it execs afterwards runs under the filter.
    pub fn load(&self) -> nix::Result<()> {
        crate::sys::seccomp::load_filter(&self.to_sock_filters())
    }
}

impl TryFrom<Vec<u64>> for Program {
    type Error = SeccompError;
    fn try_from(insns: Vec<u64>) -> Result<Program, SeccompError> {
        Program::new(insns)
    }
}

impl From<Program> for Vec<u64> {
    fn from(p: Program) -> Vec<u64> {
        p.0
    }
}

/// The value of `--security-opt seccomp=VALUE` (the part after `seccomp=`), parsed once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SeccompOpt {
    /// berth's default profile (no `--security-opt seccomp=…`).
    Default,
    /// `unconfined`: no filter at all.
    Unconfined,
    /// A Docker/OCI JSON profile on the host, by absolute path, read at create.
    Profile(PathBuf),
}

impl SeccompOpt {
    pub fn parse(value: &str) -> Result<SeccompOpt, SeccompError> {
        match value {
            "unconfined" => Ok(SeccompOpt::Unconfined),
            "default" | "builtin" => Ok(SeccompOpt::Default),
            path => {
                let path = PathBuf::from(path);
                if path.is_absolute() {
                    Ok(SeccompOpt::Profile(path))
                } else {
                    Err(SeccompError::RelativePath(path))
                }
            }
        }
    }
}

/// The largest profile file berth reads (moby's default.json is about 20 KiB).
pub const MAX_PROFILE_BYTES: u64 = 1 << 20;

/// Read and parse a JSON profile file (at most [`MAX_PROFILE_BYTES`]).
pub fn read_profile(path: &Path) -> Result<Profile, SeccompError> {
    let read_err = |source| SeccompError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_err)?;
    let mut json = Vec::new();
    file.take(MAX_PROFILE_BYTES + 1)
        .read_to_end(&mut json)
        .map_err(read_err)?;
    if json.len() as u64 > MAX_PROFILE_BYTES {
        return Err(SeccompError::TooLarge {
            path: path.to_path_buf(),
            max: MAX_PROFILE_BYTES,
        });
    }
    parse_oci(&json)
}

/// Compiled programs by (profile, capability set), so berthd compiles each distinct
/// combination once. Bounded: past [`Cache::CAPACITY`] entries the least recently used is
/// dropped (a caller making new profiles cannot make it grow).
#[derive(Default)]
pub struct Cache {
    inner: Mutex<CacheInner>,
}

#[derive(Default)]
struct CacheInner {
    /// Value: the program and when it was last used.
    map: HashMap<(Profile, u64), (Arc<Program>, u64)>,
    clock: u64,
}

impl Cache {
    pub const CAPACITY: usize = 64;

    pub fn new() -> Cache {
        Cache::default()
    }

    /// The program for `profile` with capabilities `caps`, compiled on first use.
    pub fn get_or_compile(
        &self,
        profile: &Profile,
        caps: u64,
    ) -> Result<Arc<Program>, SeccompError> {
        // A panic while holding the lock leaves the map consistent (insertions are atomic).
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.clock += 1;
        let now = inner.clock;
        let key = (profile.clone(), caps);
        if let Some((prog, used)) = inner.map.get_mut(&key) {
            *used = now;
            return Ok(Arc::clone(prog));
        }
        let prog = Arc::new(compile(profile, caps)?);
        if inner.map.len() >= Cache::CAPACITY {
            let oldest = inner
                .map
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                inner.map.remove(&k);
            }
        }
        inner.map.insert(key, (Arc::clone(&prog), now));
        Ok(prog)
    }

    /// Number of cached programs.
    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
