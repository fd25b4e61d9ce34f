//! Capability system calls nix does not wrap: `capget(2)`/`capset(2)` and the two `prctl(2)`
//! operations on the bounding and ambient sets.
//!
//! Every wrapper is a single system call on data owned by the caller's stack: no allocation,
//! no lock, so they may be called between `fork` and `exec` of a multi-threaded process. All of
//! them act on the calling thread only (capabilities are per-thread in Linux).

use nix::errno::Errno;

/// `_LINUX_CAPABILITY_VERSION_3`: 64-bit sets, passed as two 32-bit data structs.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// `struct __user_cap_header_struct` from `<linux/capability.h>`.
#[repr(C)]
struct CapUserHeader {
    version: u32,
    pid: libc::c_int,
}

/// `struct __user_cap_data_struct` from `<linux/capability.h>`; version 3 takes two of them,
/// the low 32 capabilities first.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapUserData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// The three capget/capset sets of a thread, as 64-bit masks (bit n = capability n).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThreadCaps {
    pub effective: u64,
    pub permitted: u64,
    pub inheritable: u64,
}

fn split(mask: u64) -> (u32, u32) {
    (mask as u32, (mask >> 32) as u32)
}

/// `capget(2)` for the calling thread.
pub fn capget() -> nix::Result<ThreadCaps> {
    let mut header = CapUserHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapUserData::default(); 2];
    // SAFETY: header and data are valid, writable and sized as version 3 requires (one header,
    // two data structs); pid 0 means the calling thread. The kernel writes only within them.
    let ret = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
    if ret < 0 {
        return Err(Errno::last());
    }
    let join = |lo: u32, hi: u32| u64::from(lo) | (u64::from(hi) << 32);
    Ok(ThreadCaps {
        effective: join(data[0].effective, data[1].effective),
        permitted: join(data[0].permitted, data[1].permitted),
        inheritable: join(data[0].inheritable, data[1].inheritable),
    })
}

/// `capset(2)` for the calling thread: all three sets in one call, so there is no moment at
/// which effective exceeds permitted (which the kernel would refuse).
pub fn capset(caps: ThreadCaps) -> nix::Result<()> {
    let mut header = CapUserHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let (e0, e1) = split(caps.effective);
    let (p0, p1) = split(caps.permitted);
    let (i0, i1) = split(caps.inheritable);
    let data = [
        CapUserData {
            effective: e0,
            permitted: p0,
            inheritable: i0,
        },
        CapUserData {
            effective: e1,
            permitted: p1,
            inheritable: i1,
        },
    ];
    // SAFETY: header and data are valid and sized for version 3; the kernel only reads data
    // (and may write the preferred version into header, which is ours and writable).
    let ret = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
    if ret < 0 { Err(Errno::last()) } else { Ok(()) }
}

/// `prctl(PR_CAPBSET_DROP, cap)`: remove one capability from the calling thread's bounding
/// set. `EINVAL` means the kernel does not know `cap`; `EPERM` means no `CAP_SETPCAP`.
pub fn capbset_drop(cap: u32) -> nix::Result<()> {
    // SAFETY: PR_CAPBSET_DROP takes integer arguments only and touches no user memory.
    let ret = unsafe {
        libc::prctl(
            libc::PR_CAPBSET_DROP,
            libc::c_ulong::from(cap),
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    if ret < 0 { Err(Errno::last()) } else { Ok(()) }
}

/// `prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)`: empty the calling thread's ambient set.
pub fn ambient_clear_all() -> nix::Result<()> {
    // SAFETY: PR_CAP_AMBIENT takes integer arguments only and touches no user memory.
    let ret = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    if ret < 0 { Err(Errno::last()) } else { Ok(()) }
}

/// The capability sets a thread is given: bounding, permitted, effective and inheritable
/// (ambient is always emptied), as 64-bit masks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapSets {
    pub bounding: u64,
    pub permitted: u64,
    pub effective: u64,
    pub inheritable: u64,
}

/// Give the calling thread exactly `sets`, in the only order that works: effective raised to
/// permitted (after a setuid with KEEPCAPS cleared it), the bounding set dropped (which needs
/// CAP_SETPCAP, so before capset removes it), ambient emptied, then capset. Capabilities the
/// running kernel knows beyond the table are dropped from the bounding set too (it walks to
/// bit 63 and stops at the first number the kernel refuses as unknown).
pub fn apply(sets: &CapSets) -> nix::Result<()> {
    let mut now = capget()?;
    now.effective = now.permitted;
    capset(now)?;
    for cap in 0..64u32 {
        if sets.bounding & (1 << cap) != 0 {
            continue;
        }
        match capbset_drop(cap) {
            Ok(()) => {}
            Err(Errno::EINVAL) => break,
            Err(e) => return Err(e),
        }
    }
    ambient_clear_all()?;
    capset(ThreadCaps {
        effective: sets.effective,
        permitted: sets.permitted,
        inheritable: sets.inheritable,
    })
}
