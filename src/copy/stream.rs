//! The copy stream: a tree as a sequence of records, written by [`send`] from an open item
//! and applied by [`receive`] below a [`Dest`], both bounded by [`Limits`].
//!
//! ```text
//! stream  = "BERTHCP1" entry "Z" entries:u64 skipped:u64
//! entry   = "D" meta entry* "U"                          a directory and what is in it
//!         | "F" meta size:u64 (offset:u64 len:u64 data[len])* 0:u64 0:u64
//!         | "L" meta len:u16 target[len]
//! meta    = len:u16 name[len] mode:u32 uid:u32 gid:u32 mtime_sec:i64 mtime_nsec:u32
//! ```
//!
//! All integers are little-endian. A name is one path component (1–255 bytes, no `/` or
//! NUL, not `.` or `..`). A file's ranges are its data in ascending order; what lies between
//! them and after the last, up to `size`, is a hole. Because every name is one component
//! applied relative to the directory descriptor the receiver holds, a hostile stream can place
//! entries only below the destination.

use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicU64, Ordering};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FileStat, Mode, SFlag};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, Whence};

use super::resolve::{Dest, Item, MAX_NAME, MAX_PATH, on_kernel_fs};
use super::{CopyError, CopyStats, Limits, Ownership};

mod receive;
mod send;

pub use receive::*;
pub use send::*;

const MAGIC: &[u8; 8] = b"BERTHCP1";
const DIR: u8 = b'D';
const FILE: u8 = b'F';
const LINK: u8 = b'L';
const UP: u8 = b'U';
const END: u8 = b'Z';
/// How much file data moves per read and write.
const CHUNK: usize = 128 * 1024;

/// The metadata every entry carries.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Meta {
    name: Vec<u8>,
    /// Permission bits only (`0o7777`).
    mode: u32,
    uid: u32,
    gid: u32,
    mtime_sec: i64,
    mtime_nsec: u32,
}

impl Meta {
    fn of(name: &[u8], st: &FileStat) -> Meta {
        Meta {
            name: name.to_vec(),
            mode: st.st_mode & 0o7777,
            uid: st.st_uid,
            gid: st.st_gid,
            mtime_sec: st.st_mtime,
            mtime_nsec: st.st_mtime_nsec as u32,
        }
    }
}

fn kind(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT
}

/// Whether `name` is one path component a stream may carry.
fn name_ok(name: &[u8]) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name != b"."
        && name != b".."
        && !name.contains(&b'/')
        && !name.contains(&0)
}

/// Open a regular file for reading through its `O_PATH` handle (the `/proc/self/fd` link of
/// our own descriptor): the very inode the handle names, never whatever a name points to
/// now. `O_NONBLOCK` and `O_NOCTTY` keep even a wrong inode from blocking or becoming our
/// terminal; the caller checks the result is still the same regular file.
fn reopen_for_reading(handle: BorrowedFd<'_>) -> nix::Result<OwnedFd> {
    nix::fcntl::open(
        format!("/proc/self/fd/{}", handle.as_raw_fd()).as_str(),
        OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

#[cfg(test)]
mod tests;
