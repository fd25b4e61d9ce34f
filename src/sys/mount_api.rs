//! The new mount API (Linux 5.2+, `mount_setattr` 5.12+), which nix does not wrap:
//! `open_tree(2)`, `mount_setattr(2)`, `move_mount(2)`, `fsopen(2)`, `fsconfig(2)`,
//! `fsmount(2)`.
//!
//! Each wrapper returns an owned descriptor or `nix::Result`; paths go through [`NixPath`], so
//! no caller builds a C string. Detached mounts (from `OPEN_TREE_CLONE` or `fsmount`) are
//! unmounted by the kernel when their last descriptor closes, so dropping an [`OwnedFd`] from
//! here never leaves a mount behind.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::NixPath;
use nix::errno::Errno;

/// Attributes of `mount_setattr(2)` and `fsmount(2)` (`MOUNT_ATTR_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MountAttrFlags(u64);

impl MountAttrFlags {
    pub const RDONLY: Self = Self(libc::MOUNT_ATTR_RDONLY);
    pub const NOSUID: Self = Self(libc::MOUNT_ATTR_NOSUID);
    pub const NODEV: Self = Self(libc::MOUNT_ATTR_NODEV);
    pub const NOEXEC: Self = Self(libc::MOUNT_ATTR_NOEXEC);
    pub const NOSYMFOLLOW: Self = Self(libc::MOUNT_ATTR_NOSYMFOLLOW);
    /// Only through [`mount_setattr_idmap`], which supplies the user namespace with it.
    const IDMAP: Self = Self(libc::MOUNT_ATTR_IDMAP);

    pub const fn empty() -> Self {
        Self(0)
    }
    pub const fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }
    pub const fn bits(self) -> u64 {
        self.0
    }
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }
}

impl std::ops::BitOr for MountAttrFlags {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        self.union(rhs)
    }
}

fn fd_result(ret: libc::c_long) -> nix::Result<OwnedFd> {
    if ret < 0 {
        return Err(Errno::last());
    }
    // SAFETY: every caller passes the return value of a system call that, on success, installs a
    // new descriptor in this process and returns it; nobody else owns it yet.
    Ok(unsafe { OwnedFd::from_raw_fd(ret as RawFd) })
}

fn unit_result(ret: libc::c_long) -> nix::Result<()> {
    if ret < 0 { Err(Errno::last()) } else { Ok(()) }
}

fn dirfd_raw(dirfd: Option<BorrowedFd<'_>>) -> RawFd {
    dirfd.map_or(libc::AT_FDCWD, |fd| fd.as_raw_fd())
}

/// `open_tree(dirfd, path, OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC [| AT_RECURSIVE])`: a detached
/// copy of the mount (tree) at `path`, relative to `dirfd` (or the working directory). Symlinks
/// in the last component are not followed (`AT_SYMLINK_NOFOLLOW`), so a layer directory that
/// was swapped for a link is refused rather than followed.
///
/// A detached clone is private to its descriptor: attributes set on it (read-only, idmap) never
/// reach the original mount, and it disappears when the descriptor closes.
pub fn open_tree_clone<P: ?Sized + NixPath>(
    dirfd: Option<BorrowedFd<'_>>,
    path: &P,
    recursive: bool,
) -> nix::Result<OwnedFd> {
    let mut flags =
        libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC | libc::AT_SYMLINK_NOFOLLOW as u32;
    if recursive {
        flags |= libc::AT_RECURSIVE as u32;
    }
    let dfd = dirfd_raw(dirfd);
    let ret = path.with_nix_path(|p| {
        // SAFETY: `p` is a NUL-terminated string valid for the duration of the call; `dfd` is a
        // descriptor borrowed for the call or AT_FDCWD; flags are plain integers.
        unsafe { libc::syscall(libc::SYS_open_tree, dfd, p.as_ptr(), flags) }
    })?;
    fd_result(ret)
}

fn mount_setattr_raw(
    mount: BorrowedFd<'_>,
    recursive: bool,
    set: MountAttrFlags,
    clear: MountAttrFlags,
    userns: Option<BorrowedFd<'_>>,
) -> nix::Result<()> {
    let attr = libc::mount_attr {
        attr_set: set.bits(),
        attr_clr: clear.bits(),
        propagation: 0,
        userns_fd: userns.map_or(0, |fd| fd.as_raw_fd() as u64),
    };
    let mut flags = libc::AT_EMPTY_PATH as u32;
    if recursive {
        flags |= libc::AT_RECURSIVE as u32;
    }
    // SAFETY: the path is the empty C string (with AT_EMPTY_PATH, the descriptor itself is the
    // target); `attr` is a fully initialised mount_attr that lives across the call and its size
    // is passed alongside; the descriptors are borrowed for the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            mount.as_raw_fd(),
            c"".as_ptr(),
            flags,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    unit_result(ret)
}

/// `mount_setattr(fd, "", AT_EMPTY_PATH [| AT_RECURSIVE], {attr_set, attr_clr})` without an
/// idmap: e.g. make a detached clone read-only, nosuid and nodev.
pub fn mount_setattr(
    mount: BorrowedFd<'_>,
    recursive: bool,
    set: MountAttrFlags,
    clear: MountAttrFlags,
) -> nix::Result<()> {
    mount_setattr_raw(mount, recursive, set, clear, None)
}

/// `mount_setattr(fd, "", AT_EMPTY_PATH [| AT_RECURSIVE], {attr_set: MOUNT_ATTR_IDMAP | set,
/// userns_fd})`: turn a detached mount into an idmapped mount that translates on-disk IDs
/// through `userns`'s ID map (on-disk 0 appears as the host ID that userns maps 0 to).
///
/// The kernel's rules (mount_setattr(2)): the mount must be detached and not yet idmapped, its
/// filesystem must support idmapping (`FS_ALLOW_IDMAP`: ext4, xfs, btrfs, tmpfs ≥ 6.3,
/// overlayfs…), `userns` must not be the initial user namespace and must already have its maps
/// written, and the caller needs `CAP_SYS_ADMIN` in the user namespace owning the mount's mount
/// namespace.
pub fn mount_setattr_idmap(
    mount: BorrowedFd<'_>,
    recursive: bool,
    userns: BorrowedFd<'_>,
    set: MountAttrFlags,
) -> nix::Result<()> {
    mount_setattr_raw(
        mount,
        recursive,
        set | MountAttrFlags::IDMAP,
        MountAttrFlags::empty(),
        Some(userns),
    )
}

/// `move_mount(fd, "", to_dirfd, to_path, MOVE_MOUNT_F_EMPTY_PATH)`: attach a detached mount
/// (or move an attached one) onto `to_path`, resolved relative to `to_dirfd` (or the working
/// directory) in the caller's mount namespace.
pub fn move_mount_to<P: ?Sized + NixPath>(
    mount: BorrowedFd<'_>,
    to_dirfd: Option<BorrowedFd<'_>>,
    to_path: &P,
) -> nix::Result<()> {
    let tfd = dirfd_raw(to_dirfd);
    let ret = to_path.with_nix_path(|p| {
        // SAFETY: both paths are NUL-terminated strings valid for the call (the source one is
        // the empty string, meaning the descriptor itself, as MOVE_MOUNT_F_EMPTY_PATH says); the
        // descriptors are borrowed for the call.
        unsafe {
            libc::syscall(
                libc::SYS_move_mount,
                mount.as_raw_fd(),
                c"".as_ptr(),
                tfd,
                p.as_ptr(),
                libc::MOVE_MOUNT_F_EMPTY_PATH,
            )
        }
    })?;
    unit_result(ret)
}

/// `open_tree(fd, "", OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_EMPTY_PATH [| AT_RECURSIVE])`: a
/// detached copy of the mount (tree) at the file `fd` names (an `O_PATH` descriptor a caller
/// opened as itself, e.g. the source of a live bind mount). No path is resolved here.
pub fn open_tree_clone_fd(fd: BorrowedFd<'_>, recursive: bool) -> nix::Result<OwnedFd> {
    let mut flags = libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC | libc::AT_EMPTY_PATH as u32;
    if recursive {
        flags |= libc::AT_RECURSIVE as u32;
    }
    // SAFETY: the path is the empty C string (AT_EMPTY_PATH: the descriptor itself); the
    // descriptor is borrowed for the call; flags are plain integers.
    let ret = unsafe { libc::syscall(libc::SYS_open_tree, fd.as_raw_fd(), c"".as_ptr(), flags) };
    fd_result(ret)
}

/// `move_mount(mount, "", target, "", MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH)`:
/// attach a detached mount onto the very file `target` names (an `O_PATH` descriptor of a
/// mount point resolved and checked beforehand), so that no path is looked up again between
/// the check and the mount (runc CVE-2021-30465).
pub fn move_mount_onto(mount: BorrowedFd<'_>, target: BorrowedFd<'_>) -> nix::Result<()> {
    // SAFETY: both paths are the empty C string, meaning the descriptors themselves (the two
    // EMPTY_PATH flags); the descriptors are borrowed for the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            mount.as_raw_fd(),
            c"".as_ptr(),
            target.as_raw_fd(),
            c"".as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH | libc::MOVE_MOUNT_T_EMPTY_PATH,
        )
    };
    unit_result(ret)
}

/// `fsopen(fstype, FSOPEN_CLOEXEC)`: a filesystem context to configure with the `fsconfig_*`
/// calls. Messages the filesystem logs while being configured can be read back with
/// [`fs_context_log`].
pub fn fsopen(fstype: &std::ffi::CStr) -> nix::Result<OwnedFd> {
    // SAFETY: `fstype` is a NUL-terminated string valid for the call; the flag is an integer.
    let ret = unsafe { libc::syscall(libc::SYS_fsopen, fstype.as_ptr(), libc::FSOPEN_CLOEXEC) };
    fd_result(ret)
}

fn fsconfig_raw(
    fs: BorrowedFd<'_>,
    cmd: libc::c_uint,
    key: Option<&std::ffi::CStr>,
    value: *const libc::c_void,
    aux: libc::c_int,
) -> nix::Result<()> {
    let key = key.map_or(std::ptr::null(), |k| k.as_ptr());
    // SAFETY: `key` is NULL or a NUL-terminated string valid for the call; each caller passes a
    // `value`/`aux` pair that matches `cmd` as fsconfig(2) defines it (NULL/0 for flags and
    // commands, a NUL-terminated string for SET_STRING, NULL plus a borrowed descriptor for
    // SET_FD); the context descriptor is borrowed for the call.
    let ret = unsafe { libc::syscall(libc::SYS_fsconfig, fs.as_raw_fd(), cmd, key, value, aux) };
    unit_result(ret)
}

/// `fsconfig(fs, FSCONFIG_SET_STRING, key, value, 0)`.
pub fn fsconfig_set_string(
    fs: BorrowedFd<'_>,
    key: &std::ffi::CStr,
    value: &std::ffi::CStr,
) -> nix::Result<()> {
    fsconfig_raw(
        fs,
        libc::FSCONFIG_SET_STRING,
        Some(key),
        value.as_ptr().cast(),
        0,
    )
}

/// `fsconfig(fs, FSCONFIG_SET_FLAG, key, NULL, 0)`.
pub fn fsconfig_set_flag(fs: BorrowedFd<'_>, key: &std::ffi::CStr) -> nix::Result<()> {
    fsconfig_raw(fs, libc::FSCONFIG_SET_FLAG, Some(key), std::ptr::null(), 0)
}

/// `fsconfig(fs, FSCONFIG_SET_FD, key, NULL, fd)`: e.g. an overlayfs layer given as an open
/// directory or a detached mount (overlayfs accepts that for `lowerdir+`, `upperdir`,
/// `workdir` and `datadir+` since Linux 6.13; O_PATH and detached mounts since 6.15).
pub fn fsconfig_set_fd(
    fs: BorrowedFd<'_>,
    key: &std::ffi::CStr,
    fd: BorrowedFd<'_>,
) -> nix::Result<()> {
    fsconfig_raw(
        fs,
        libc::FSCONFIG_SET_FD,
        Some(key),
        std::ptr::null(),
        fd.as_raw_fd(),
    )
}

/// `fsconfig(fs, FSCONFIG_CMD_CREATE, NULL, NULL, 0)`: create the superblock from the
/// configuration given so far.
pub fn fsconfig_create(fs: BorrowedFd<'_>) -> nix::Result<()> {
    fsconfig_raw(fs, libc::FSCONFIG_CMD_CREATE, None, std::ptr::null(), 0)
}

/// `fsmount(fs, FSMOUNT_CLOEXEC, attrs)`: a detached mount of the superblock created in `fs`,
/// with the given mount attributes (`MOUNT_ATTR_RDONLY`, `NOSUID`, `NODEV`, …).
pub fn fsmount(fs: BorrowedFd<'_>, attrs: MountAttrFlags) -> nix::Result<OwnedFd> {
    // MOUNT_ATTR_IDMAP is not valid for fsmount; it is private to this module, so callers cannot
    // pass it.
    // SAFETY: plain integer arguments and a descriptor borrowed for the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_fsmount,
            fs.as_raw_fd(),
            libc::FSMOUNT_CLOEXEC,
            attrs.bits() as libc::c_uint,
        )
    };
    fd_result(ret)
}

/// The messages a filesystem context has logged so far (each line starts with `e `, `w ` or
/// `i ` for error, warning, information), e.g. `e overlay: failed to resolve 'lowerdir+'`.
/// Reading consumes them. Never blocks: an empty log reads as `ENODATA`.
pub fn fs_context_log(fs: BorrowedFd<'_>) -> Vec<String> {
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    // The kernel keeps at most 8 messages; bound the loop anyway.
    for _ in 0..16 {
        match nix::unistd::read(fs, &mut buf) {
            Ok(n) if n > 0 => out.push(String::from_utf8_lossy(&buf[..n]).trim_end().to_owned()),
            _ => break,
        }
    }
    out
}
