//! The syscall seam of the helper: every step that shapes a container (namespaces, mounts,
//! pivot, hostname, identity, limits, exec) goes through [`Syscalls`], with the real
//! implementation [`Real`] and a recording fake (`fake::Recorder`, tests only), so that the
//! order of operations has unit tests without root (as youki's `syscall/` module does).
//!
//! Paths inside the container root are resolved relative to an open root descriptor with
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)`, so an image whose
//! `/proc` or `/dev` is a symlink cannot redirect a mount onto the host (the class of runc
//! CVE-2021-30465); mount targets are then named as `/proc/self/fd/N`.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::CloneFlags;
use nix::sys::resource::Resource;
use nix::sys::stat::{Mode, mkdirat};
use nix::unistd::{chdir, pivot_root, symlinkat};

/// A node the helper creates inside the root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    Char,
    Block,
}

/// The operations the helper performs, in the order its caller decides.
pub trait Syscalls {
    /// An open directory or file: a descriptor for [`Real`], a path for the fake.
    type Fd;

    fn unshare(&mut self, flags: CloneFlags) -> nix::Result<()>;
    /// Join the network namespace `netns` (`--network container:NAME`, before the clone).
    fn setns_net(&mut self, netns: BorrowedFd<'_>) -> nix::Result<()>;
    /// Make every mount of this mount namespace private (mounts below must not propagate back
    /// to the host's shared mounts).
    fn make_rprivate(&mut self) -> nix::Result<()>;
    /// Mount an overlay at a host path.
    fn mount_overlay(&mut self, target: &Path, options: &str) -> nix::Result<()>;
    /// Open a host directory (the container's root mount point).
    fn open_dir(&mut self, path: &Path) -> nix::Result<Self::Fd>;
    /// Open `rel` inside `root`, following no symlink.
    fn open_in(&mut self, root: &Self::Fd, rel: &str) -> nix::Result<Self::Fd>;
    /// Open directory `rel` inside `root`, creating missing components (mode 0755).
    fn ensure_dir(&mut self, root: &Self::Fd, rel: &str) -> nix::Result<Self::Fd>;
    fn is_dir(&mut self, fd: &Self::Fd) -> nix::Result<bool>;
    /// Mount a fresh filesystem on an opened directory.
    fn mount_fs(
        &mut self,
        fstype: &str,
        target: &Self::Fd,
        flags: MsFlags,
        data: Option<&str>,
    ) -> nix::Result<()>;
    /// Bind `source` (opened) onto `target`.
    fn bind(&mut self, source: &Self::Fd, target: &Self::Fd, recursive: bool) -> nix::Result<()>;
    /// Bind a host path onto `target` (e.g. /dev/null over a masked file).
    fn bind_host(&mut self, source: &Path, target: &Self::Fd) -> nix::Result<()>;
    /// Change the flags of the bind mount at `target`.
    fn remount_bind(&mut self, target: &Self::Fd, flags: MsFlags) -> nix::Result<()>;
    /// Attach a detached mount (the root overlay berthd made) at a host path.
    fn attach(&mut self, mount: BorrowedFd<'_>, target: &Path) -> nix::Result<()>;
    /// Mount a fresh filesystem at a path of the caller's own view (not inside the root).
    fn mount_host(&mut self, fstype: &str, target: &Path) -> nix::Result<()>;
    /// Open a host path (a device node, /dev/null) without following a final symlink.
    fn open_host(&mut self, path: &Path) -> nix::Result<Self::Fd>;
    /// Whether `fd` is the device `major:minor` of `kind`.
    fn is_device(
        &mut self,
        fd: &Self::Fd,
        kind: NodeKind,
        major: u64,
        minor: u64,
    ) -> nix::Result<bool>;
    /// Whether `fd` is an empty regular file.
    fn is_empty_file(&mut self, fd: &Self::Fd) -> nix::Result<bool>;
    /// Create (or open) an empty regular file `rel` inside `root`, as a mount point for a
    /// file.
    fn file_in(&mut self, root: &Self::Fd, rel: &str) -> nix::Result<Self::Fd>;
    /// Create a symlink `rel` → `target` inside `root`; an existing one is fine.
    fn symlink_in(&mut self, root: &Self::Fd, rel: &str, target: &str) -> nix::Result<()>;
    /// `pivot_root` into the opened `new_root` and detach the old root.
    fn pivot_root(&mut self, new_root: &Self::Fd) -> nix::Result<()>;
    fn sethostname(&mut self, name: &str) -> nix::Result<()>;
    /// Bring the loopback interface up.
    fn loopback_up(&mut self) -> nix::Result<()>;
    fn setrlimit(&mut self, resource: Resource, soft: u64, hard: u64) -> nix::Result<()>;
    fn setsid(&mut self) -> nix::Result<()>;
    fn setgroups(&mut self, groups: &[u32]) -> nix::Result<()>;
    fn setgid(&mut self, gid: u32) -> nix::Result<()>;
    fn setuid(&mut self, uid: u32) -> nix::Result<()>;
    fn chdir(&mut self, dir: &str) -> nix::Result<()>;
    /// Become root of the user namespace just entered (setresgid/setresuid 0).
    fn become_root(&mut self) -> nix::Result<()>;
    /// Join a new anonymous session keyring.
    fn join_session_keyring(&mut self) -> nix::Result<()>;
    /// `PR_SET_KEEPCAPS`.
    fn set_keepcaps(&mut self, keep: bool) -> nix::Result<()>;
    /// Give the thread exactly these capability sets (the bounding set dropped to
    /// `sets.bounding`, ambient emptied).
    fn apply_caps(&mut self, sets: &super::caps::CapSets) -> nix::Result<()>;
    /// `PR_SET_NO_NEW_PRIVS`.
    fn set_no_new_privs(&mut self) -> nix::Result<()>;
    /// The SELinux label the next exec runs under.
    fn set_exec_label(&mut self, label: &str) -> nix::Result<()>;
    /// Install a seccomp filter (last before exec).
    fn load_seccomp(&mut self, filter: &[libc::sock_filter]) -> nix::Result<()>;
    /// Replace the process image; returns only on failure.
    fn execve(&mut self, path: &CString, argv: &[CString], env: &[CString]) -> Errno;
    /// `PR_SET_DUMPABLE 0`: nobody of the same uid may ptrace us or open `/proc/self/fd`,
    /// `/proc/self/exe` or `/proc/self/mem` (what a process entering a container needs
    /// before it joins: runc CVE-2016-9962, CVE-2019-5736).
    fn set_non_dumpable(&mut self) -> nix::Result<()>;
    /// Move this process into the cgroup whose `cgroup.procs` file is `procs` (writing `0`,
    /// "myself").
    fn join_cgroup(&mut self, procs: &Path) -> nix::Result<()>;
    /// `setns(pidfd, flags)`: join the namespaces `flags` names of the process behind
    /// `pidfd`, all at once (Linux 5.8).
    fn setns(&mut self, pidfd: BorrowedFd<'_>, flags: CloneFlags) -> nix::Result<()>;
    /// Make standard stream `stdio` (0, 1 or 2), a terminal, this session's controlling
    /// terminal (after `setsid`), so that job control and Ctrl-C work.
    fn set_controlling_terminal(&mut self, stdio: usize) -> nix::Result<()>;
    /// Open (making it if missing, as the caller) the mount point `rel` inside `root` for a
    /// directory (`dir`) or a file, resolved by the kernel inside the root
    /// (`openat2(RESOLVE_IN_ROOT)`): a symlink, however the image made it, stays inside; the
    /// root itself, a point of the other kind and kernel filesystems are refused.
    fn mount_point(&mut self, root: &Self::Fd, rel: &str, dir: bool) -> nix::Result<Self::Fd>;
    /// Attach the detached mount `mount` onto the opened mount point `target`
    /// (`move_mount` with both `EMPTY_PATH` flags: no path is looked up again).
    fn attach_onto(&mut self, mount: &Self::Fd, target: &Self::Fd) -> nix::Result<()>;
    /// Make the mount `root` is the top of read-only (that mount only: the mounts on it stay
    /// as they are).
    fn make_read_only(&mut self, root: &Self::Fd) -> nix::Result<()>;
}

/// The real system calls.
pub struct Real;

fn how(flags: OFlag) -> OpenHow {
    OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
        .resolve(
            ResolveFlag::RESOLVE_BENEATH
                | ResolveFlag::RESOLVE_NO_SYMLINKS
                | ResolveFlag::RESOLVE_NO_MAGICLINKS,
        )
}

fn fd_path(fd: &OwnedFd) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

/// Split `a/b/c` into the opened parent `a/b` (created if missing, as a real directory
/// descriptor, which mknodat/symlinkat need) and `c`.
fn parent_of<'a>(sys: &mut Real, root: &OwnedFd, rel: &'a str) -> nix::Result<(OwnedFd, &'a str)> {
    let (dir, base) = rel.rsplit_once('/').unwrap_or(("", rel));
    let parent = sys.ensure_dir(root, dir)?;
    let parent = openat2(
        parent.as_fd(),
        ".",
        how(OFlag::O_RDONLY | OFlag::O_DIRECTORY),
    )?;
    Ok((parent, base))
}

impl Syscalls for Real {
    type Fd = OwnedFd;

    fn unshare(&mut self, flags: CloneFlags) -> nix::Result<()> {
        nix::sched::unshare(flags)
    }

    fn setns_net(&mut self, netns: BorrowedFd<'_>) -> nix::Result<()> {
        nix::sched::setns(netns, CloneFlags::CLONE_NEWNET)
    }

    fn make_rprivate(&mut self) -> nix::Result<()> {
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        )
    }

    fn mount_overlay(&mut self, target: &Path, options: &str) -> nix::Result<()> {
        mount(
            Some("overlay"),
            target,
            Some("overlay"),
            MsFlags::empty(),
            Some(options),
        )
    }

    fn open_dir(&mut self, path: &Path) -> nix::Result<OwnedFd> {
        nix::fcntl::open(
            path,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
    }

    fn open_in(&mut self, root: &OwnedFd, rel: &str) -> nix::Result<OwnedFd> {
        openat2(root.as_fd(), rel, how(OFlag::O_PATH))
    }

    fn ensure_dir(&mut self, root: &OwnedFd, rel: &str) -> nix::Result<OwnedFd> {
        let mut cur = openat2(root.as_fd(), ".", how(OFlag::O_PATH | OFlag::O_DIRECTORY))?;
        for comp in rel.split('/').filter(|c| !c.is_empty() && *c != ".") {
            let next = match openat2(cur.as_fd(), comp, how(OFlag::O_PATH | OFlag::O_DIRECTORY)) {
                Err(Errno::ENOENT) => {
                    let dir = openat2(cur.as_fd(), ".", how(OFlag::O_RDONLY | OFlag::O_DIRECTORY))?;
                    match mkdirat(dir.as_fd(), comp, Mode::from_bits_truncate(0o755)) {
                        Ok(()) | Err(Errno::EEXIST) => {}
                        Err(e) => return Err(e),
                    }
                    openat2(cur.as_fd(), comp, how(OFlag::O_PATH | OFlag::O_DIRECTORY))?
                }
                other => other?,
            };
            cur = next;
        }
        Ok(cur)
    }

    fn is_dir(&mut self, fd: &OwnedFd) -> nix::Result<bool> {
        Ok(nix::sys::stat::fstat(fd.as_fd())?.st_mode & libc::S_IFMT == libc::S_IFDIR)
    }

    fn mount_fs(
        &mut self,
        fstype: &str,
        target: &OwnedFd,
        flags: MsFlags,
        data: Option<&str>,
    ) -> nix::Result<()> {
        mount(
            Some(fstype),
            fd_path(target).as_str(),
            Some(fstype),
            flags,
            data,
        )
    }

    fn bind(&mut self, source: &OwnedFd, target: &OwnedFd, recursive: bool) -> nix::Result<()> {
        let mut flags = MsFlags::MS_BIND;
        if recursive {
            flags |= MsFlags::MS_REC;
        }
        mount(
            Some(fd_path(source).as_str()),
            fd_path(target).as_str(),
            None::<&str>,
            flags,
            None::<&str>,
        )
    }

    fn bind_host(&mut self, source: &Path, target: &OwnedFd) -> nix::Result<()> {
        mount(
            Some(source),
            fd_path(target).as_str(),
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
    }

    fn remount_bind(&mut self, target: &OwnedFd, flags: MsFlags) -> nix::Result<()> {
        mount(
            None::<&str>,
            fd_path(target).as_str(),
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | flags,
            None::<&str>,
        )
    }

    fn attach(&mut self, mount: BorrowedFd<'_>, target: &Path) -> nix::Result<()> {
        super::mount_api::move_mount_to(mount, None, target)
    }

    fn mount_host(&mut self, fstype: &str, target: &Path) -> nix::Result<()> {
        mount(
            Some(fstype),
            target,
            Some(fstype),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            None::<&str>,
        )
    }

    fn open_host(&mut self, path: &Path) -> nix::Result<OwnedFd> {
        nix::fcntl::open(
            path,
            OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
    }

    fn is_device(
        &mut self,
        fd: &OwnedFd,
        kind: NodeKind,
        major: u64,
        minor: u64,
    ) -> nix::Result<bool> {
        let st = nix::sys::stat::fstat(fd.as_fd())?;
        let want = match kind {
            NodeKind::Char => libc::S_IFCHR,
            NodeKind::Block => libc::S_IFBLK,
        };
        Ok(st.st_mode & libc::S_IFMT == want
            && nix::sys::stat::major(st.st_rdev) == major
            && nix::sys::stat::minor(st.st_rdev) == minor)
    }

    fn is_empty_file(&mut self, fd: &OwnedFd) -> nix::Result<bool> {
        let st = nix::sys::stat::fstat(fd.as_fd())?;
        Ok(st.st_mode & libc::S_IFMT == libc::S_IFREG && st.st_size == 0)
    }

    fn file_in(&mut self, root: &OwnedFd, rel: &str) -> nix::Result<OwnedFd> {
        let (parent, base) = parent_of(self, root, rel)?;
        let created = openat2(
            parent.as_fd(),
            base,
            how(OFlag::O_WRONLY | OFlag::O_CREAT).mode(Mode::from_bits_truncate(0o644)),
        );
        match created {
            Ok(_) | Err(Errno::EISDIR) => {}
            Err(e) => return Err(e),
        }
        self.open_in(root, rel)
    }

    fn symlink_in(&mut self, root: &OwnedFd, rel: &str, target: &str) -> nix::Result<()> {
        let (parent, base) = parent_of(self, root, rel)?;
        match symlinkat(target, parent.as_fd(), base) {
            Ok(()) | Err(Errno::EEXIST) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// `pivot_root(".", ".")` then detach the old root: the trick from pivot_root(2) that needs
    /// no put_old directory inside the container.
    fn pivot_root(&mut self, new_root: &OwnedFd) -> nix::Result<()> {
        nix::unistd::fchdir(new_root)?;
        pivot_root(".", ".")?;
        umount2(".", MntFlags::MNT_DETACH)?;
        chdir("/")
    }

    fn sethostname(&mut self, name: &str) -> nix::Result<()> {
        nix::unistd::sethostname(name)
    }

    fn loopback_up(&mut self) -> nix::Result<()> {
        super::set_loopback_up()
    }

    fn setrlimit(&mut self, resource: Resource, soft: u64, hard: u64) -> nix::Result<()> {
        nix::sys::resource::setrlimit(resource, soft, hard)
    }

    fn setsid(&mut self) -> nix::Result<()> {
        nix::unistd::setsid().map(|_| ())
    }

    fn setgroups(&mut self, groups: &[u32]) -> nix::Result<()> {
        let g: Vec<nix::unistd::Gid> = groups
            .iter()
            .map(|g| nix::unistd::Gid::from_raw(*g))
            .collect();
        nix::unistd::setgroups(&g)
    }

    fn setgid(&mut self, gid: u32) -> nix::Result<()> {
        nix::unistd::setgid(nix::unistd::Gid::from_raw(gid))
    }

    fn setuid(&mut self, uid: u32) -> nix::Result<()> {
        nix::unistd::setuid(nix::unistd::Uid::from_raw(uid))
    }

    fn chdir(&mut self, dir: &str) -> nix::Result<()> {
        chdir(dir)
    }

    fn become_root(&mut self) -> nix::Result<()> {
        let root_gid = nix::unistd::Gid::from_raw(0);
        let root_uid = nix::unistd::Uid::from_raw(0);
        nix::unistd::setresgid(root_gid, root_gid, root_gid)?;
        nix::unistd::setresuid(root_uid, root_uid, root_uid)
    }

    fn join_session_keyring(&mut self) -> nix::Result<()> {
        super::process::join_new_session_keyring()
    }

    fn set_keepcaps(&mut self, keep: bool) -> nix::Result<()> {
        nix::sys::prctl::set_keepcaps(keep)
    }

    fn apply_caps(&mut self, sets: &super::caps::CapSets) -> nix::Result<()> {
        super::caps::apply(sets)
    }

    fn set_no_new_privs(&mut self) -> nix::Result<()> {
        nix::sys::prctl::set_no_new_privs()
    }

    fn set_exec_label(&mut self, label: &str) -> nix::Result<()> {
        use std::io::Write;
        let io = |e: std::io::Error| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open("/proc/thread-self/attr/exec")
            .map_err(io)?;
        // One write: the kernel takes the label from exactly this buffer.
        let n = f.write(label.as_bytes()).map_err(io)?;
        if n == label.len() {
            Ok(())
        } else {
            Err(Errno::EIO)
        }
    }

    fn load_seccomp(&mut self, filter: &[libc::sock_filter]) -> nix::Result<()> {
        super::seccomp::load_filter(filter)
    }

    fn execve(&mut self, path: &CString, argv: &[CString], env: &[CString]) -> Errno {
        match nix::unistd::execve(path, argv, env) {
            Err(e) => e,
            Ok(never) => match never {},
        }
    }

    fn set_non_dumpable(&mut self) -> nix::Result<()> {
        nix::sys::prctl::set_dumpable(false)
    }

    fn join_cgroup(&mut self, procs: &Path) -> nix::Result<()> {
        use std::io::Write;
        let io = |e: std::io::Error| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(procs)
            .map_err(io)?;
        f.write_all(b"0").map_err(io)
    }

    fn setns(&mut self, pidfd: BorrowedFd<'_>, flags: CloneFlags) -> nix::Result<()> {
        nix::sched::setns(pidfd, flags)
    }

    fn set_controlling_terminal(&mut self, stdio: usize) -> nix::Result<()> {
        match stdio {
            0 => super::pty::set_controlling_terminal(std::io::stdin().as_fd()),
            1 => super::pty::set_controlling_terminal(std::io::stdout().as_fd()),
            2 => super::pty::set_controlling_terminal(std::io::stderr().as_fd()),
            _ => Err(Errno::EBADF),
        }
    }

    fn mount_point(&mut self, root: &OwnedFd, rel: &str, dir: bool) -> nix::Result<OwnedFd> {
        let confined = crate::copy::Root::Confined(
            root.try_clone()
                .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EMFILE)))?,
        );
        let kind = if dir {
            crate::copy::bind::MountKind::Dir
        } else {
            crate::copy::bind::MountKind::File
        };
        let fd = crate::copy::bind::prepare_target(&confined, &format!("/{rel}"), kind, true, None)
            .map_err(|e| e.errno())?;
        // A symlink to "/" resolves to the root itself: never mount over the whole root.
        let (a, b) = (
            nix::sys::stat::fstat(fd.as_fd())?,
            nix::sys::stat::fstat(root.as_fd())?,
        );
        if (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino) {
            return Err(Errno::EINVAL);
        }
        Ok(fd)
    }

    fn attach_onto(&mut self, mount: &OwnedFd, target: &OwnedFd) -> nix::Result<()> {
        super::mount_api::move_mount_onto(mount.as_fd(), target.as_fd())
    }

    fn make_read_only(&mut self, root: &OwnedFd) -> nix::Result<()> {
        super::mount_api::mount_setattr(
            root.as_fd(),
            false,
            super::mount_api::MountAttrFlags::RDONLY,
            super::mount_api::MountAttrFlags::empty(),
        )
    }
}

/// A recording fake: every call appends one line to `calls`; handles are the paths they name.
#[cfg(test)]
pub mod fake {
    use super::*;

    #[derive(Default)]
    pub struct Recorder {
        pub calls: Vec<String>,
        /// Paths (relative to the root, or absolute) that do not exist.
        pub missing: Vec<String>,
        /// Paths that are directories.
        pub dirs: Vec<String>,
        /// Calls (by the first word of their line) that fail with EPERM.
        pub failing: Vec<&'static str>,
        /// Host paths that are not the device they should be.
        pub impostors: Vec<String>,
        /// Paths whose `open_in` fails with this errno.
        pub failing_open: Vec<(String, Errno)>,
    }

    /// `MsFlags(MS_RDONLY | MS_NOSUID)` → `MS_RDONLY|MS_NOSUID`.
    fn flags(f: impl std::fmt::Debug) -> String {
        let s = format!("{f:?}");
        let inner = s
            .split_once('(')
            .map_or(s.as_str(), |(_, r)| r.trim_end_matches(')'));
        inner.replace(" | ", "|")
    }

    impl Recorder {
        fn log(&mut self, line: String) -> nix::Result<()> {
            let word = line.split(' ').next().unwrap_or_default().to_string();
            self.calls.push(line);
            if self.failing.iter().any(|f| *f == word) {
                Err(Errno::EPERM)
            } else {
                Ok(())
            }
        }

        /// The position of the first call starting with `prefix`.
        pub fn pos(&self, prefix: &str) -> usize {
            self.calls
                .iter()
                .position(|c| c.starts_with(prefix))
                .unwrap_or_else(|| panic!("no call {prefix:?} in {:#?}", self.calls))
        }
    }

    fn join(root: &str, rel: &str) -> String {
        if root.is_empty() {
            rel.to_string()
        } else {
            format!("{root}/{rel}")
        }
    }

    impl Syscalls for Recorder {
        type Fd = String;

        fn unshare(&mut self, flags: CloneFlags) -> nix::Result<()> {
            self.log(format!("unshare {}", self::flags(flags)))
        }
        fn setns_net(&mut self, _netns: BorrowedFd<'_>) -> nix::Result<()> {
            self.log("setns-net".into())
        }
        fn make_rprivate(&mut self) -> nix::Result<()> {
            self.log("make-rprivate /".into())
        }
        fn mount_overlay(&mut self, target: &Path, options: &str) -> nix::Result<()> {
            self.log(format!("mount-overlay {} {options}", target.display()))
        }
        fn open_dir(&mut self, _path: &Path) -> nix::Result<String> {
            Ok(String::new())
        }
        fn open_in(&mut self, root: &String, rel: &str) -> nix::Result<String> {
            let p = join(root, rel);
            if let Some((_, e)) = self.failing_open.iter().find(|(f, _)| *f == p) {
                return Err(*e);
            }
            if self.missing.contains(&p) {
                Err(Errno::ENOENT)
            } else {
                Ok(p)
            }
        }
        fn ensure_dir(&mut self, root: &String, rel: &str) -> nix::Result<String> {
            Ok(join(root, rel))
        }
        fn is_dir(&mut self, fd: &String) -> nix::Result<bool> {
            Ok(self.dirs.contains(fd))
        }
        fn mount_fs(
            &mut self,
            fstype: &str,
            target: &String,
            flags: MsFlags,
            data: Option<&str>,
        ) -> nix::Result<()> {
            self.log(format!(
                "mount {fstype} /{target} {} {}",
                self::flags(flags),
                data.unwrap_or("-")
            ))
        }
        fn bind(&mut self, source: &String, target: &String, recursive: bool) -> nix::Result<()> {
            self.log(format!("bind /{source} /{target} rec={recursive}"))
        }
        fn bind_host(&mut self, source: &Path, target: &String) -> nix::Result<()> {
            self.log(format!("bind-host {} /{target}", source.display()))
        }
        fn remount_bind(&mut self, target: &String, flags: MsFlags) -> nix::Result<()> {
            self.log(format!("remount /{target} {}", self::flags(flags)))
        }
        fn attach(&mut self, _mount: BorrowedFd<'_>, target: &Path) -> nix::Result<()> {
            self.log(format!("attach {}", target.display()))
        }
        fn mount_host(&mut self, fstype: &str, target: &Path) -> nix::Result<()> {
            self.log(format!("mount-host {fstype} {}", target.display()))
        }
        fn open_host(&mut self, path: &Path) -> nix::Result<String> {
            let p = path.display().to_string();
            if self.missing.contains(&p) {
                Err(Errno::ENOENT)
            } else {
                Ok(p)
            }
        }
        fn is_device(
            &mut self,
            fd: &String,
            kind: NodeKind,
            major: u64,
            minor: u64,
        ) -> nix::Result<bool> {
            let _ = (kind, major, minor);
            Ok(!self.impostors.contains(fd))
        }
        fn is_empty_file(&mut self, fd: &String) -> nix::Result<bool> {
            Ok(!self.impostors.contains(fd))
        }
        fn file_in(&mut self, root: &String, rel: &str) -> nix::Result<String> {
            // The file exists from now on.
            let p = join(root, rel);
            self.missing.retain(|m| *m != p);
            Ok(p)
        }
        fn symlink_in(&mut self, root: &String, rel: &str, target: &str) -> nix::Result<()> {
            self.log(format!("symlink /{} -> {target}", join(root, rel)))
        }
        fn pivot_root(&mut self, new_root: &String) -> nix::Result<()> {
            self.log(format!("pivot-root /{new_root}"))
        }
        fn sethostname(&mut self, name: &str) -> nix::Result<()> {
            self.log(format!("sethostname {name}"))
        }
        fn loopback_up(&mut self) -> nix::Result<()> {
            self.log("loopback-up".into())
        }
        fn setrlimit(&mut self, resource: Resource, soft: u64, hard: u64) -> nix::Result<()> {
            self.log(format!("setrlimit {resource:?} {soft} {hard}"))
        }
        fn setsid(&mut self) -> nix::Result<()> {
            self.log("setsid".into())
        }
        fn setgroups(&mut self, groups: &[u32]) -> nix::Result<()> {
            self.log(format!("setgroups {groups:?}"))
        }
        fn setgid(&mut self, gid: u32) -> nix::Result<()> {
            self.log(format!("setgid {gid}"))
        }
        fn setuid(&mut self, uid: u32) -> nix::Result<()> {
            self.log(format!("setuid {uid}"))
        }
        fn chdir(&mut self, dir: &str) -> nix::Result<()> {
            self.log(format!("chdir {dir}"))
        }
        fn become_root(&mut self) -> nix::Result<()> {
            self.log("become-root".into())
        }
        fn join_session_keyring(&mut self) -> nix::Result<()> {
            self.log("join-session-keyring".into())
        }
        fn set_keepcaps(&mut self, keep: bool) -> nix::Result<()> {
            self.log(format!("keepcaps {keep}"))
        }
        fn apply_caps(&mut self, sets: &crate::sys::caps::CapSets) -> nix::Result<()> {
            self.log(format!(
                "caps bnd={:x} prm={:x} eff={:x} inh={:x}",
                sets.bounding, sets.permitted, sets.effective, sets.inheritable
            ))
        }
        fn set_no_new_privs(&mut self) -> nix::Result<()> {
            self.log("no-new-privs".into())
        }
        fn set_exec_label(&mut self, label: &str) -> nix::Result<()> {
            self.log(format!("exec-label {label}"))
        }
        fn load_seccomp(&mut self, filter: &[libc::sock_filter]) -> nix::Result<()> {
            self.log(format!("seccomp {}", filter.len()))
        }
        fn execve(&mut self, path: &CString, argv: &[CString], _env: &[CString]) -> Errno {
            let _ = self.log(format!("execve {path:?} {argv:?}"));
            if self.missing.contains(&path.to_string_lossy().into_owned()) {
                Errno::ENOENT
            } else {
                Errno::UnknownErrno
            }
        }
        fn set_non_dumpable(&mut self) -> nix::Result<()> {
            self.log("non-dumpable".into())
        }
        fn join_cgroup(&mut self, procs: &Path) -> nix::Result<()> {
            self.log(format!("join-cgroup {}", procs.display()))
        }
        fn setns(&mut self, _pidfd: BorrowedFd<'_>, flags: CloneFlags) -> nix::Result<()> {
            self.log(format!("setns {}", self::flags(flags)))
        }
        fn set_controlling_terminal(&mut self, stdio: usize) -> nix::Result<()> {
            self.log(format!("controlling-terminal {stdio}"))
        }
        fn mount_point(&mut self, root: &String, rel: &str, dir: bool) -> nix::Result<String> {
            let p = join(root, rel);
            self.log(format!("mount-point /{p} dir={dir}"))?;
            Ok(p)
        }
        fn attach_onto(&mut self, mount: &String, target: &String) -> nix::Result<()> {
            self.log(format!("attach-onto {mount} /{target}"))
        }
        fn make_read_only(&mut self, root: &String) -> nix::Result<()> {
            self.log(format!("read-only /{root}"))
        }
    }
}
