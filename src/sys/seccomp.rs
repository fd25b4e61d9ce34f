//! Loading a seccomp filter, and a probe that makes raw system calls — native or i386 via
//! `int $0x80` — in a forked child under a filter, so tests and the in-container probe can
//! check what a filter answers.

use std::io::Read;
use std::os::fd::AsRawFd;

use nix::errno::Errno;
use nix::unistd::Pid;

use super::ExitInfo;

/// `seccomp(SECCOMP_SET_MODE_FILTER, 0, prog)`: install `prog` on the calling thread, for the
/// rest of its life and every process it execs or forks.
///
/// The kernel refuses (`EACCES`) unless the caller has set no_new_privs
/// (`prctl(PR_SET_NO_NEW_PRIVS, 1)`) or holds CAP_SYS_ADMIN in its user namespace; it checks
/// the program (`EINVAL` for a bad one, more than 4096 instructions included). No
/// `SECCOMP_FILTER_FLAG_TSYNC`: the caller (berth-helper) is single-threaded, and only the
/// calling thread is filtered.
pub fn load_filter(prog: &[libc::sock_filter]) -> nix::Result<()> {
    let len = u16::try_from(prog.len()).map_err(|_| Errno::EINVAL)?;
    let fprog = libc::sock_fprog {
        len,
        filter: prog.as_ptr().cast_mut(),
    };
    // SAFETY: `fprog` points at `prog`, which outlives the call; the kernel copies the program
    // and does not write through the pointer.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0 as libc::c_ulong,
            &fprog as *const libc::sock_fprog,
        )
    };
    if ret < 0 { Err(Errno::last()) } else { Ok(()) }
}

/// Which system call instruction a probe uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Abi {
    /// `syscall`: `AUDIT_ARCH_X86_64` (x32 too, with bit 30 in the number).
    X86_64,
    /// `int $0x80` from 64-bit code: `AUDIT_ARCH_I386`, i386 numbers, arguments truncated to
    /// 32 bits (so pass integers, never pointers to this process's memory).
    I386,
}

/// One raw system call for [`probe_in_child`] to make.
#[derive(Debug, Clone, Copy)]
pub struct RawCall {
    pub abi: Abi,
    pub nr: u64,
    /// Up to six arguments (the i386 probe passes the first five).
    pub args: [u64; 6],
    /// The call may create a process (fork-like clone): a 0 return means "I am the new
    /// process", which exits at once instead of running the rest of the probe.
    pub forks: bool,
}

impl RawCall {
    pub fn x86_64(nr: i64, args: &[u64]) -> RawCall {
        RawCall::new(Abi::X86_64, nr as u64, args)
    }

    pub fn i386(nr: u32, args: &[u64]) -> RawCall {
        RawCall::new(Abi::I386, u64::from(nr), args)
    }

    fn new(abi: Abi, nr: u64, args: &[u64]) -> RawCall {
        let mut a = [0u64; 6];
        for (dst, src) in a.iter_mut().zip(args) {
            *dst = *src;
        }
        RawCall {
            abi,
            nr,
            args: a,
            forks: false,
        }
    }

    /// Mark as fork-like (see [`RawCall::forks`]).
    pub fn forking(mut self) -> RawCall {
        self.forks = true;
        self
    }
}

/// What a probe child reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeReport {
    /// Setting no_new_privs and loading the filter (Ok when no filter was given).
    pub loaded: Result<(), Errno>,
    /// One entry per call made, in order: the return value, or the errno. Shorter than the
    /// call list when the child died (a kill action) or the filter could not be loaded.
    pub results: Vec<Result<u64, Errno>>,
    /// How the child ended.
    pub exit: ExitInfo,
}

/// Raw `syscall` with six arguments; returns the kernel's value (−errno on failure).
///
/// # Safety
/// The call must not break this process's memory (no unmapping or overwriting memory Rust
/// owns; pointer arguments valid for what the call does with them).
#[cfg(target_arch = "x86_64")]
unsafe fn raw_syscall(nr: u64, a: [u64; 6]) -> i64 {
    let ret: i64;
    // SAFETY: the `syscall` instruction clobbers only rax (result), rcx and r11, all declared;
    // it does not touch the user stack. Memory effects are the caller's contract.
    unsafe {
        core::arch::asm!(
            "syscall",
            inlateout("rax") nr as i64 => ret,
            in("rdi") a[0],
            in("rsi") a[1],
            in("rdx") a[2],
            in("r10") a[3],
            in("r8") a[4],
            in("r9") a[5],
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret
}

/// `int $0x80` from 64-bit code: the i386 system call entry, with i386 numbering and the
/// first five arguments (ebx, ecx, edx, esi, edi). Returns eax sign-extended (−errno on
/// failure).
///
/// # Safety
/// As [`raw_syscall`]; in addition, pointer arguments are truncated to 32 bits.
#[cfg(target_arch = "x86_64")]
unsafe fn raw_syscall_i386(nr: u32, a: [u32; 5]) -> i64 {
    let ret: i32;
    // SAFETY: LLVM reserves rbx, so the first argument is swapped into ebx around the `int`
    // and the original rbx swapped back (the kernel preserves rbx). Every register the ia32
    // entry may change is declared clobbered: eax (result), ecx/edx/esi/edi (inputs, marked
    // clobbered in case an old kernel truncates them) and r8–r11 (zeroed by kernels before
    // 4.17). The instruction does not use the user stack.
    unsafe {
        core::arch::asm!(
            "xchg {b}, rbx",
            "int 0x80",
            "xchg {b}, rbx",
            b = inout(reg) u64::from(a[0]) => _,
            inlateout("eax") nr => ret,
            inlateout("ecx") a[1] => _,
            inlateout("edx") a[2] => _,
            inlateout("esi") a[3] => _,
            inlateout("edi") a[4] => _,
            lateout("r8") _,
            lateout("r9") _,
            lateout("r10") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    i64::from(ret)
}

/// Write one 8-byte record; an 8-byte pipe write is atomic (≤ PIPE_BUF).
#[cfg(target_arch = "x86_64")]
fn child_report(fd: i32, value: i64) {
    let bytes = value.to_ne_bytes();
    // SAFETY: write(2) reads 8 bytes from `bytes`, a live stack array.
    unsafe {
        raw_syscall(
            libc::SYS_write as u64,
            [fd as u64, bytes.as_ptr() as u64, 8, 0, 0, 0],
        );
    }
}

#[cfg(target_arch = "x86_64")]
fn child_exit(code: i32) -> ! {
    loop {
        // SAFETY: exit_group(2) ends the process; it touches no memory.
        unsafe {
            raw_syscall(libc::SYS_exit_group as u64, [code as u64, 0, 0, 0, 0, 0]);
        }
    }
}

/// The probe child's whole life. Only raw system calls (no libc, no allocation, no locks, no
/// panics), so it is sound after `fork()` in a multi-threaded parent.
#[cfg(target_arch = "x86_64")]
fn child_main(fprog: Option<&libc::sock_fprog>, calls: &[RawCall], fd: i32) -> ! {
    // No core dump when a filter kills us (SIGSYS dumps core by default).
    // SAFETY: prctl(PR_SET_DUMPABLE, 0) only changes a flag of this process.
    unsafe {
        raw_syscall(
            libc::SYS_prctl as u64,
            [libc::PR_SET_DUMPABLE as u64, 0, 0, 0, 0, 0],
        );
    }
    let mut status = 0;
    if let Some(fprog) = fprog {
        // SAFETY: prctl(PR_SET_NO_NEW_PRIVS, 1) only changes a flag of this process.
        status = unsafe {
            raw_syscall(
                libc::SYS_prctl as u64,
                [libc::PR_SET_NO_NEW_PRIVS as u64, 1, 0, 0, 0, 0],
            )
        };
        if status == 0 {
            // SAFETY: `fprog` and the program it points at are in this process's (copied)
            // memory; the kernel only reads them.
            status = unsafe {
                raw_syscall(
                    libc::SYS_seccomp as u64,
                    [
                        u64::from(libc::SECCOMP_SET_MODE_FILTER),
                        0,
                        fprog as *const libc::sock_fprog as u64,
                        0,
                        0,
                        0,
                    ],
                )
            };
        }
    }
    child_report(fd, status);
    if status != 0 {
        child_exit(1);
    }
    for call in calls {
        let ret = match call.abi {
            // SAFETY: the calls run in this forked child, a copy of the parent's address
            // space; whatever they do to memory stays in this process, whose only remaining
            // code is this loop (no destructors, no unwinding). See probe_in_child.
            Abi::X86_64 => unsafe { raw_syscall(call.nr, call.args) },
            // SAFETY: as above.
            Abi::I386 => unsafe {
                raw_syscall_i386(
                    call.nr as u32,
                    [
                        call.args[0] as u32,
                        call.args[1] as u32,
                        call.args[2] as u32,
                        call.args[3] as u32,
                        call.args[4] as u32,
                    ],
                )
            },
        };
        if call.forks && ret == 0 {
            child_exit(0);
        }
        child_report(fd, ret);
    }
    child_exit(0)
}

/// Fork a child that sets no_new_privs, loads `filter` (when given), makes `calls` in order
/// and reports each result through a pipe; wait for it and return what it reported.
///
/// Sound in a multi-threaded process (the test harness, berthd): the child runs only raw
/// system calls until it exits. The filter must allow write(2) and exit_group(2), or nothing
/// comes back. Use integer arguments, or pointers to memory that exists in a fork of this
/// process (a static, a buffer allocated before the call); the calls' effects on memory stay
/// in the child, their effects on shared kernel objects (files, descriptors' offsets, other
/// processes) are the caller's business as with any system call.
#[cfg(target_arch = "x86_64")]
pub fn probe_in_child(
    filter: Option<&[libc::sock_filter]>,
    calls: &[RawCall],
) -> nix::Result<ProbeReport> {
    let fprog = match filter {
        Some(prog) => Some(libc::sock_fprog {
            len: u16::try_from(prog.len()).map_err(|_| Errno::EINVAL)?,
            filter: prog.as_ptr().cast_mut(),
        }),
        None => None,
    };
    let (read_end, write_end) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let wfd = write_end.as_raw_fd();
    // SAFETY: the child runs only `child_main`, which makes raw system calls, reads memory
    // that existed before the fork (`fprog`, `calls`, the program) and never returns, so it
    // does nothing that is unsafe in the child of a multi-threaded process (no allocation,
    // no locks, no libc state).
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(Errno::last());
    }
    if pid == 0 {
        child_main(fprog.as_ref(), calls, wfd);
    }
    drop(write_end);
    let pid = Pid::from_raw(pid);
    let mut bytes = Vec::new();
    let read = std::fs::File::from(read_end).read_to_end(&mut bytes);
    let exit = wait_exit(pid)?;
    read.map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?;

    let mut values = bytes
        .chunks_exact(8)
        .map(|c| i64::from_ne_bytes(c.try_into().unwrap_or([0; 8])));
    let as_result = |v: i64| {
        if (-4095..0).contains(&v) {
            Err(Errno::from_raw(-v as i32))
        } else {
            Ok(v as u64)
        }
    };
    let loaded = match values.next() {
        Some(0) => Ok(()),
        Some(v) => Err(as_result(v).err().unwrap_or(Errno::EIO)),
        None => Err(Errno::EIO),
    };
    let results = values.map(as_result).collect();
    Ok(ProbeReport {
        loaded,
        results,
        exit,
    })
}

/// Reap `pid` and say how it ended.
fn wait_exit(pid: Pid) -> nix::Result<ExitInfo> {
    use nix::sys::wait::{WaitStatus, waitpid};
    loop {
        match waitpid(pid, None) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(ExitInfo::Exited(code)),
            Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(ExitInfo::Signaled(sig as i32)),
            Ok(_) => continue,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
}
