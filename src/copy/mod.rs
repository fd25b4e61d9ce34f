//! Copying files into and out of a container (`berthctl cp`) and preparing live bind mount
//! points (`berthctl bind`), without ever trusting a path inside the container.
//!
//! **Who does what.** A copy is a stream ([`stream`]) between two processes: the side that
//! reads a tree encodes it, the side that writes decodes it. On the host the caller's own
//! berthctl does its side, as the caller — so nobody can use berthd, which is root, to read or
//! write a host file the caller could not. berthd does the container side, in a thread of its
//! own (other clients are served meanwhile), against an open descriptor of the container's
//! root ([`resolve::Root`]: `/proc/LEADER/root`), and runs nothing from the container (Docker
//! CVE-2019-14271 ran the container's libc in `docker cp`).
//!
//! **Paths inside the container** are resolved by the kernel, with
//! `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)` against the root descriptor: a symlink,
//! absolute or with `..`, resolves inside the root however the container swaps it, and
//! `/proc/PID/root`-style magic links are refused (CVE-2021-30465, CVE-2018-15664). Below the
//! resolved directory every step is one name relative to an open directory descriptor,
//! opened with `O_NOFOLLOW`; files are created under a fresh name with
//! `O_CREAT | O_EXCL | O_NOFOLLOW`, filled, given owner, mode and times through their
//! descriptor (`fchown`, `fchmod`, `futimens`), then renamed over the final name — so nothing
//! is ever written through a name the container controls.
//!
//! **What is copied.** Directories, regular files and symlinks (as symlinks, never followed).
//! FIFOs, sockets and device nodes are refused at the top and skipped (and counted) inside a
//! directory; a file is opened for reading only after its `O_PATH` handle proved it regular,
//! through `/proc/self/fd`, so a swapped-in FIFO or `/dev/zero` can neither block nor feed the
//! copy. Directories on kernel filesystems (proc, sysfs, cgroup, devpts, debugfs, tracefs,
//! securityfs, bpf) are refused or skipped on both sides. Holes of sparse files are kept
//! (`SEEK_DATA`/`SEEK_HOLE`): only data travels and counts. Hard links arrive as separate
//! files. Everything is bounded by [`Limits`], on both sides, since either stream may be
//! hostile.
//!
//! **Owners** ([`Ownership`]): files copied in belong to the container's root as the
//! container's user namespace maps it (podman's and docker's default), or keep their recorded
//! IDs shifted into the container's range (`cp -a`); files copied out belong to the caller,
//! who writes them, and lose setuid and setgid bits.

pub mod bind;
pub mod resolve;
pub mod stream;

use std::path::PathBuf;

pub use resolve::{Dest, Item, Root};
pub use stream::{ReceiveOptions, receive, send};

/// Bounds on one copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// File data bytes (holes do not count).
    pub max_bytes: u64,
    /// Directories, files and symlinks.
    pub max_entries: u64,
    /// Nesting of directories below the copied one.
    pub max_depth: usize,
    /// The apparent size of one file (a sparse file's holes count here).
    pub max_file_size: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: 64 << 30,
            max_entries: 1_000_000,
            max_depth: 128,
            max_file_size: 1 << 40,
        }
    }
}

/// One contiguous range of a user namespace's ID map: container IDs
/// `inside..inside + count` are host IDs `outside..outside + count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdMap {
    pub inside: u32,
    pub outside: u32,
    pub count: u32,
}

impl IdMap {
    /// No user namespace: every ID is itself.
    pub const IDENTITY: IdMap = IdMap {
        inside: 0,
        outside: 0,
        count: u32::MAX,
    };

    /// The host ID of container ID `id`, if the map has it.
    pub fn to_host(&self, id: u32) -> Option<u32> {
        let off = id.checked_sub(self.inside)?;
        (off < self.count).then(|| self.outside.checked_add(off))?
    }
}

/// Who owns what a copy creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ownership {
    /// Everything belongs to this container uid and gid (root, 0:0, by default), mapped to
    /// the host by `map`.
    Fixed { uid: u32, gid: u32, map: IdMap },
    /// The IDs recorded in the stream, as container IDs mapped by `map`; an ID outside the map
    /// refuses the copy.
    Preserve(IdMap),
    /// No chown: whoever writes the files owns them (the caller, copying out).
    Caller,
}

/// What a copy did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CopyStats {
    /// Directories, files and symlinks copied.
    pub entries: u64,
    /// File data bytes copied (holes not included).
    pub bytes: u64,
    /// FIFOs, sockets, devices and kernel-filesystem directories left out.
    pub skipped: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("invalid path {path:?}: {reason}")]
    InvalidPath { path: String, reason: &'static str },
    #[error("{path:?} not found")]
    NotFound { path: String },
    #[error("{path:?}: {reason}")]
    Refused { path: String, reason: String },
    #[error("the copy exceeds its limit of {0}")]
    LimitExceeded(String),
    #[error("the copy stream is malformed: {0}")]
    Malformed(String),
    #[error("{what} {path:?}: {source}")]
    Io {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("the copy stream: {0}")]
    Stream(std::io::Error),
    #[error("cannot open the root {path}: {source}")]
    Root {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl CopyError {
    /// The errno closest to this error, for callers that speak errno (the helper's steps).
    pub fn errno(&self) -> nix::errno::Errno {
        use nix::errno::Errno;
        match self {
            CopyError::NotFound { .. } => Errno::ENOENT,
            CopyError::InvalidPath { .. } | CopyError::Refused { .. } => Errno::EINVAL,
            CopyError::LimitExceeded(_) => Errno::EFBIG,
            CopyError::Malformed(_) => Errno::EPROTO,
            CopyError::Io { source, .. }
            | CopyError::Stream(source)
            | CopyError::Root { source, .. } => {
                Errno::from_raw(source.raw_os_error().unwrap_or(libc::EIO))
            }
        }
    }

    pub(crate) fn io(what: &'static str, path: &[u8], e: impl Into<std::io::Error>) -> Self {
        CopyError::Io {
            what,
            path: String::from_utf8_lossy(path).into_owned(),
            source: e.into(),
        }
    }

    pub(crate) fn refused(path: &[u8], reason: impl Into<String>) -> Self {
        CopyError::Refused {
            path: String::from_utf8_lossy(path).into_owned(),
            reason: reason.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_maps_shift_only_inside_their_range() {
        let m = IdMap {
            inside: 0,
            outside: 100_000,
            count: 65_536,
        };
        assert_eq!(m.to_host(0), Some(100_000));
        assert_eq!(m.to_host(65_535), Some(165_535));
        assert_eq!(m.to_host(65_536), None);
        assert_eq!(IdMap::IDENTITY.to_host(1000), Some(1000));
        let m = IdMap {
            inside: 10,
            outside: u32::MAX - 1,
            count: 5,
        };
        assert_eq!(m.to_host(9), None);
        assert_eq!(m.to_host(11), Some(u32::MAX));
        assert_eq!(m.to_host(12), None, "overflow");
    }
}
