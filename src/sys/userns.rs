//! Starting a program in a new or an existing user namespace, for processes that are
//! multi-threaded (berthd, the test harness): the namespace calls run in `pre_exec`, between
//! `fork` and `exec` in the single-threaded child, and use only raw system calls, which are
//! async-signal-safe and allocate nothing.

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

/// Make the program `cmd` runs start in a new user namespace (`unshare(CLONE_NEWUSER)` just
/// before `exec`), owned by this process's effective UID. Its ID maps are empty until someone
/// writes them (see `crate::userns::write_maps`), so the program holds such a namespace open
/// for others (e.g. one whose `/proc/PID/ns/user` becomes the `userns_fd` of an idmapped mount).
pub fn command_unshare_user(cmd: &mut Command) {
    // SAFETY: the closure runs in the forked child before exec and calls only unshare(2), an
    // async-signal-safe system call that allocates nothing; the child has a single thread, the
    // condition unshare(CLONE_NEWUSER) requires.
    unsafe {
        cmd.pre_exec(|| {
            if libc::unshare(libc::CLONE_NEWUSER) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// How [`command_join_userns_as_root`] enters a container's namespaces.
pub struct JoinAsRoot {
    /// The user namespace to join (a `/proc/PID/ns/user` descriptor).
    pub userns: OwnedFd,
    /// Then unshare the mount namespace: a copy owned by `userns`, where its root may mount.
    pub new_mount_ns: bool,
    /// Then attach this detached mount (e.g. an overlay from `idmap::mount_overlay`) at this
    /// path, in that new mount namespace: how a mount made by root in the initial user
    /// namespace is handed to a container-side process.
    pub attach: Option<(OwnedFd, CString)>,
}

/// Make the program `cmd` runs join the user namespace `join.userns` (`setns(2)`) as its
/// root: supplementary groups cleared, real/effective/saved GID and UID set to 0 inside it,
/// which the namespace's maps translate to their host IDs; optionally unshare its mount
/// namespace and attach a mount there. Needs `CAP_SYS_ADMIN` over the user namespace (root in
/// its parent namespace has it) and maps that map 0.
pub fn command_join_userns_as_root(cmd: &mut Command, join: JoinAsRoot) {
    let raw = join.userns.as_raw_fd();
    let new_mount_ns = join.new_mount_ns;
    // SAFETY: the closure runs in the forked child before exec and calls only setns(2),
    // setgroups(2), setresgid(2), setresuid(2), unshare(2) and move_mount(2), directly or
    // through syscall(2) — raw, async-signal-safe system calls that allocate nothing (the libc
    // wrappers for the ID calls would try to synchronise with other threads, which the forked
    // child does not have); reading the descriptor number and the C string's pointer
    // allocates nothing either. `join` is moved into the closure, so the descriptors stay open
    // and the path stays allocated until the Command is dropped.
    unsafe {
        cmd.pre_exec(move || {
            // Capture all of `join` (a closure would otherwise move only the fields it names,
            // dropping — closing — the user namespace descriptor right here).
            let join = &join;
            if libc::setns(raw, libc::CLONE_NEWUSER) < 0
                || libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()) < 0
                || libc::syscall(libc::SYS_setresgid, 0, 0, 0) < 0
                || libc::syscall(libc::SYS_setresuid, 0, 0, 0) < 0
                || (new_mount_ns && libc::unshare(libc::CLONE_NEWNS) < 0)
            {
                return Err(std::io::Error::last_os_error());
            }
            if let Some((fd, path)) = &join.attach {
                let ret = libc::syscall(
                    libc::SYS_move_mount,
                    fd.as_raw_fd(),
                    c"".as_ptr(),
                    libc::AT_FDCWD,
                    path.as_ptr(),
                    libc::MOVE_MOUNT_F_EMPTY_PATH,
                );
                if ret < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}
