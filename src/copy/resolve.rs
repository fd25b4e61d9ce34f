//! Resolving the paths of a copy: inside a container through its root descriptor, with the
//! kernel keeping every lookup inside (`openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`),
//! or on the host as the caller would.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{Mode, SFlag};

use super::CopyError;

/// The longest path a copy accepts (PATH_MAX).
pub const MAX_PATH: usize = 4096;
/// The longest name of one entry (NAME_MAX).
pub const MAX_NAME: usize = 255;

/// Where container paths are resolved.
#[derive(Debug)]
pub enum Root {
    /// Inside this directory, which is `/` for every lookup: a container's root, opened once
    /// (`/proc/LEADER/root`, or its root mount).
    Confined(OwnedFd),
    /// The host as the calling process sees it: relative paths start at its working
    /// directory, symlinks resolve as usual. For berthctl's side of a copy, which runs as the
    /// caller.
    Host,
}

impl Root {
    /// Open a container's root directory (following the `/proc/PID/root` magic link once,
    /// here, on a path berthd made).
    pub fn open(path: &Path) -> Result<Root, CopyError> {
        nix::fcntl::open(
            path,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map(Root::Confined)
        .map_err(|e| CopyError::Root {
            path: path.to_path_buf(),
            source: e.into(),
        })
    }

    /// Open `path` below this root with `flags` (plus `O_CLOEXEC`).
    pub fn open_at(&self, path: &[u8], flags: OFlag) -> nix::Result<OwnedFd> {
        let path = if path.is_empty() { b"." } else { path };
        match self {
            Root::Confined(root) => nix::fcntl::openat2(
                root,
                OsStr::from_bytes(path),
                OpenHow::new()
                    .flags(flags | OFlag::O_CLOEXEC)
                    .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS),
            ),
            Root::Host => nix::fcntl::openat(
                nix::fcntl::AT_FDCWD,
                OsStr::from_bytes(path),
                flags | OFlag::O_CLOEXEC,
                Mode::empty(),
            ),
        }
    }
}

/// A path of a copy, split into checked names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyPath {
    /// As given, for messages.
    pub text: String,
    /// Absolute (inside a container, every path is) or relative to the working directory.
    pub absolute: bool,
    pub names: Vec<Vec<u8>>,
    /// Ends in `/`: must be a directory.
    pub trailing_slash: bool,
}

impl CopyPath {
    /// Split `path`: empty and `.` components are dropped; `..`, NUL and over-long paths or
    /// names are refused (inside a container `..` could not escape anyway, but a copy that
    /// names its target plainly is easier to reason about).
    pub fn parse(path: &str) -> Result<CopyPath, CopyError> {
        let bad = |reason| CopyError::InvalidPath {
            path: path.to_string(),
            reason,
        };
        if path.is_empty() {
            return Err(bad("empty"));
        }
        if path.len() > MAX_PATH {
            return Err(bad("longer than 4096 bytes"));
        }
        if path.contains('\0') {
            return Err(bad("contains NUL"));
        }
        let mut names = Vec::new();
        for c in path.split('/') {
            match c {
                "" | "." => {}
                ".." => return Err(bad("contains '..'")),
                c if c.len() > MAX_NAME => return Err(bad("has a name longer than 255 bytes")),
                c => names.push(c.as_bytes().to_vec()),
            }
        }
        Ok(CopyPath {
            text: path.to_string(),
            absolute: path.starts_with('/'),
            trailing_slash: path.ends_with('/') || path.ends_with("/."),
            names,
        })
    }

    fn joined(&self, names: &[Vec<u8>]) -> Vec<u8> {
        let mut p = Vec::new();
        if self.absolute {
            p.push(b'/');
        }
        for (i, n) in names.iter().enumerate() {
            if i > 0 {
                p.push(b'/');
            }
            p.extend_from_slice(n);
        }
        if p.is_empty() {
            p.push(b'.');
        }
        p
    }

    /// The whole path, normalised.
    pub fn whole(&self) -> Vec<u8> {
        self.joined(&self.names)
    }

    /// The parent's path and the last name; `None` for `/` (or `.`).
    pub fn split_last(&self) -> Option<(Vec<u8>, Vec<u8>)> {
        let (last, parent) = self.names.split_last()?;
        Some((self.joined(parent), last.clone()))
    }
}

/// Kernel filesystems a copy never reads from or writes into: their files are interfaces to
/// the kernel (often the host's, for a root berthd), not data.
const KERNEL_FS: &[i64] = &[
    0x9fa0,     // proc
    0x62656572, // sysfs
    0x0027e0eb, // cgroup
    0x63677270, // cgroup2
    0x1cd1,     // devpts
    0x64626720, // debugfs
    0x74726163, // tracefs
    0x73636673, // securityfs
    0xcafe4a11, // bpf
    0xf97cff8c, // selinuxfs
    0x6e736673, // nsfs
    0x6165676c, // pstore
    0xde5e81e4, // efivarfs
    0x62656570, // configfs
    0x42494e4d, // binfmt_misc
    0x65735543, // fusectl
];

/// Whether `fd` is on a kernel filesystem (see [`KERNEL_FS`]).
pub fn on_kernel_fs(fd: BorrowedFd<'_>) -> nix::Result<bool> {
    let t = nix::sys::statfs::fstatfs(fd)?.filesystem_type().0 as i64;
    Ok(KERNEL_FS.contains(&t))
}

/// What a copy reads: a handle (`O_PATH`, the last name not followed) and the name it gets
/// at the destination.
#[derive(Debug)]
pub struct Item {
    pub fd: OwnedFd,
    /// The last name of the path; empty for `/`.
    pub name: Vec<u8>,
    /// As given, for messages.
    pub path: String,
}

impl Root {
    /// Open what `path` names for reading, without following it if it is a symlink (a
    /// symlink is copied as one).
    pub fn open_item(&self, path: &str) -> Result<Item, CopyError> {
        let p = CopyPath::parse(path)?;
        let mut flags = OFlag::O_PATH | OFlag::O_NOFOLLOW;
        if p.trailing_slash {
            flags |= OFlag::O_DIRECTORY;
        }
        let fd = self.open_at(&p.whole(), flags).map_err(|e| match e {
            Errno::ENOENT => CopyError::NotFound {
                path: path.to_string(),
            },
            e => CopyError::io("open", path.as_bytes(), e),
        })?;
        Ok(Item {
            fd,
            name: p.names.last().cloned().unwrap_or_default(),
            path: path.to_string(),
        })
    }
}

/// Where a copy creates its top entry.
#[derive(Debug)]
pub enum Dest {
    /// Inside this existing directory, under the source's own name.
    Into(OwnedFd),
    /// As `name` in `parent` (replacing a file of that name, if there is one).
    As { parent: OwnedFd, name: Vec<u8> },
}

fn dir_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY
}

impl Root {
    /// Decide where a copy of a directory (`src_is_dir`) or of a file lands, as `cp` and
    /// `docker cp` do: into `path` if it is a directory; else as `path` (whose parent must be
    /// a directory), replacing a file, never a directory with a file or a file with a
    /// directory.
    pub fn resolve_dest(&self, path: &str, src_is_dir: bool) -> Result<Dest, CopyError> {
        let p = CopyPath::parse(path)?;
        let refuse = |reason: &str| CopyError::refused(path.as_bytes(), reason);
        match self.open_at(&p.whole(), dir_flags()) {
            Ok(dir) => return Ok(Dest::Into(dir)),
            Err(Errno::ENOENT) => {}
            Err(Errno::ENOTDIR) if p.trailing_slash => {
                return Err(refuse("is not a directory"));
            }
            Err(Errno::ENOTDIR) if src_is_dir => {
                // The parent may be what is not a directory; say so precisely.
                return match self.open_at(&p.whole(), OFlag::O_PATH) {
                    Ok(_) => Err(refuse("cannot overwrite a non-directory with a directory")),
                    Err(e) => Err(CopyError::io("open", path.as_bytes(), e)),
                };
            }
            Err(Errno::ENOTDIR) => {}
            Err(e) => return Err(CopyError::io("open", path.as_bytes(), e)),
        }
        if p.trailing_slash && !src_is_dir {
            return Err(CopyError::NotFound {
                path: path.to_string(),
            });
        }
        let (parent_path, name) = p
            .split_last()
            .ok_or_else(|| refuse("the root is not a file"))?;
        let parent = self
            .open_at(&parent_path, dir_flags())
            .map_err(|e| match e {
                Errno::ENOENT => CopyError::NotFound {
                    path: String::from_utf8_lossy(&parent_path).into_owned(),
                },
                e => CopyError::io("open", &parent_path, e),
            })?;
        // The last name may exist as something other than a directory: a file is replaced;
        // anything else was dealt with above.
        if let Ok(st) = nix::sys::stat::fstatat(
            &parent,
            name.as_slice(),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        ) && SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR
        {
            // A directory appeared between the two lookups.
            return Err(refuse("changed during the copy"));
        }
        Ok(Dest::As { parent, name })
    }
}

impl Dest {
    /// The directory the top entry is created in.
    pub fn dir(&self) -> BorrowedFd<'_> {
        match self {
            Dest::Into(d) => d.as_fd(),
            Dest::As { parent, .. } => parent.as_fd(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_split_into_checked_names() {
        let p = CopyPath::parse("/etc//nginx/./conf.d/").unwrap();
        assert_eq!(
            p.names,
            [b"etc".to_vec(), b"nginx".to_vec(), b"conf.d".to_vec()]
        );
        assert!(p.absolute && p.trailing_slash);
        assert_eq!(p.whole(), b"/etc/nginx/conf.d");
        assert_eq!(
            p.split_last(),
            Some((b"/etc/nginx".to_vec(), b"conf.d".to_vec()))
        );
        let root = CopyPath::parse("/").unwrap();
        assert!(root.names.is_empty());
        assert_eq!(root.whole(), b"/");
        assert_eq!(root.split_last(), None);
        assert_eq!(CopyPath::parse("a").unwrap().whole(), b"a");
        for bad in [
            "",
            "/a/../b",
            "..",
            "a\0b",
            &"x".repeat(4097),
            &format!("/{}", "n".repeat(256)),
        ] {
            assert!(
                matches!(CopyPath::parse(bad), Err(CopyError::InvalidPath { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_confined_root_keeps_symlinks_inside() {
        let host = tempfile::tempdir().unwrap();
        let root = host.path().join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(host.path().join("secret"), "host").unwrap();
        std::fs::write(root.join("secret"), "container").unwrap();
        std::os::unix::fs::symlink("/secret", root.join("etc/abs")).unwrap();
        std::os::unix::fs::symlink("../../../../secret", root.join("etc/rel")).unwrap();
        std::os::unix::fs::symlink("/proc/self/root", root.join("etc/magic")).unwrap();
        let r = Root::open(&root).unwrap();
        for link in ["/etc/abs", "etc/rel"] {
            let fd = r.open_at(link.as_bytes(), OFlag::O_RDONLY).unwrap();
            let mut s = String::new();
            std::io::Read::read_to_string(&mut std::fs::File::from(fd), &mut s).unwrap();
            assert_eq!(s, "container", "{link}");
        }
        // /proc/self/root inside the root is just a path there (and missing).
        assert_eq!(
            r.open_at(b"/etc/magic/secret", OFlag::O_RDONLY)
                .unwrap_err(),
            Errno::ENOENT
        );
        // The item itself is not followed.
        let item = r.open_item("/etc/abs").unwrap();
        let st = nix::sys::stat::fstat(&item.fd).unwrap();
        assert_eq!(
            SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT,
            SFlag::S_IFLNK
        );
        assert_eq!(item.name, b"abs");
        assert!(matches!(
            r.open_item("/nope"),
            Err(CopyError::NotFound { .. })
        ));
    }

    #[test]
    fn destinations_follow_cp() {
        let host = tempfile::tempdir().unwrap();
        let root = host.path();
        std::fs::create_dir(root.join("dir")).unwrap();
        std::fs::write(root.join("file"), "x").unwrap();
        let r = Root::open(root).unwrap();
        assert!(matches!(r.resolve_dest("/dir", false), Ok(Dest::Into(_))));
        assert!(matches!(r.resolve_dest("/", true), Ok(Dest::Into(_))));
        match r.resolve_dest("/dir/new", true).unwrap() {
            Dest::As { name, .. } => assert_eq!(name, b"new"),
            d => panic!("{d:?}"),
        }
        assert!(matches!(
            r.resolve_dest("/file", false),
            Ok(Dest::As { .. })
        ));
        assert!(matches!(
            r.resolve_dest("/file", true),
            Err(CopyError::Refused { .. })
        ));
        assert!(matches!(
            r.resolve_dest("/file/", false),
            Err(CopyError::Refused { .. })
        ));
        assert!(matches!(
            r.resolve_dest("/missing/new", false),
            Err(CopyError::NotFound { .. })
        ));
        assert!(matches!(
            r.resolve_dest("/new/", false),
            Err(CopyError::NotFound { .. })
        ));
    }

    #[test]
    fn kernel_filesystems_are_recognised() {
        let proc_ = nix::fcntl::open("/proc", OFlag::O_PATH, Mode::empty()).unwrap();
        assert!(on_kernel_fs(proc_.as_fd()).unwrap());
        let tmp = tempfile::tempdir().unwrap();
        let t = nix::fcntl::open(tmp.path(), OFlag::O_PATH, Mode::empty()).unwrap();
        assert!(!on_kernel_fs(t.as_fd()).unwrap());
    }
}
