//! The helper's side of mounts: the root overlay, then the plan's operations, each resolved
//! inside the new root with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` so that an image
//! whose `/proc` or `/dev` is a symlink cannot redirect a mount onto the host (the class of
//! runc CVE-2021-30465). Mount targets are then named as `/proc/self/fd/N`.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::stat::{Mode, SFlag, makedev, mkdirat, mknodat};
use nix::unistd::{chdir, pivot_root, symlinkat};

use crate::protocol::{MountOp, Plan};

/// A failed mount step, with what it was doing.
pub type MountResult<T> = Result<T, (Errno, String)>;

fn ctx<T>(r: nix::Result<T>, what: impl FnOnce() -> String) -> MountResult<T> {
    r.map_err(|e| (e, what()))
}

fn how(flags: OFlag) -> OpenHow {
    OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
        .resolve(
            ResolveFlag::RESOLVE_BENEATH
                | ResolveFlag::RESOLVE_NO_SYMLINKS
                | ResolveFlag::RESOLVE_NO_MAGICLINKS,
        )
}

/// Open `rel` inside `root` as an `O_PATH` handle, following no symlink.
fn open_in(root: &OwnedFd, rel: &str) -> nix::Result<OwnedFd> {
    openat2(root.as_fd(), rel, how(OFlag::O_PATH))
}

/// Open directory `rel` inside `root`, creating missing components (mode 0755).
fn ensure_dir(root: &OwnedFd, rel: &str) -> nix::Result<OwnedFd> {
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

/// Split `a/b/c` into the opened parent `a/b` (created if missing) and `c`.
fn parent_of<'a>(root: &OwnedFd, rel: &'a str) -> nix::Result<(OwnedFd, &'a str)> {
    let (dir, base) = rel.rsplit_once('/').unwrap_or(("", rel));
    let parent = ensure_dir(root, dir)?;
    // mknodat/symlinkat need a real directory descriptor, not O_PATH.
    let parent = openat2(
        parent.as_fd(),
        ".",
        how(OFlag::O_RDONLY | OFlag::O_DIRECTORY),
    )?;
    Ok((parent, base))
}

fn fd_path(fd: &OwnedFd) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

/// The overlay mount options. The kernel reads mount options from one page, which bounds the
/// number of layers (about 45 of the store's paths); longer lists fail with a clear error.
/// berthd checked that no path holds `,` or `:`, overlayfs' separators.
fn overlay_options(plan: &Plan) -> Result<String, String> {
    let lowers: Vec<String> = plan
        .lowers
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    let data = format!(
        "lowerdir={},upperdir={},workdir={}",
        lowers.join(":"),
        plan.upper.display(),
        plan.work.display()
    );
    if data.len() >= 4096 {
        return Err(format!(
            "the image has too many layers ({}) for one overlay mount",
            lowers.len()
        ));
    }
    Ok(data)
}

/// Make every mount private, then mount the overlay root at `plan.root`.
pub fn mount_root(plan: &Plan) -> MountResult<OwnedFd> {
    // Without this, mounts below would propagate back to the host's shared mounts.
    ctx(
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        ),
        || "make / private".into(),
    )?;
    let data = overlay_options(plan).map_err(|m| (Errno::E2BIG, m))?;
    ctx(
        mount(
            Some("overlay"),
            &plan.root,
            Some("overlay"),
            MsFlags::empty(),
            Some(data.as_str()),
        ),
        || format!("mount overlay on {}", plan.root.display()),
    )?;
    ctx(
        nix::fcntl::open(
            &plan.root,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        ),
        || format!("open {}", plan.root.display()),
    )
}

/// Apply one operation inside the root.
pub fn apply(root: &OwnedFd, op: &MountOp) -> MountResult<()> {
    match op {
        MountOp::Fs {
            fstype,
            target,
            flags,
            data,
        } => {
            let dir = ctx(ensure_dir(root, target), || format!("create /{target}"))?;
            let flags = MsFlags::from_bits_truncate(*flags);
            ctx(
                mount(
                    Some(fstype.as_str()),
                    fd_path(&dir).as_str(),
                    Some(fstype.as_str()),
                    flags,
                    data.as_deref(),
                ),
                || format!("mount {fstype} on /{target}"),
            )
        }
        MountOp::Device {
            path,
            mode,
            block,
            major,
            minor,
        } => {
            let (parent, base) = ctx(parent_of(root, path), || format!("open parent of /{path}"))?;
            ctx(
                mknodat(
                    parent.as_fd(),
                    base,
                    if *block {
                        SFlag::S_IFBLK
                    } else {
                        SFlag::S_IFCHR
                    },
                    Mode::from_bits_truncate(*mode),
                    makedev(*major, *minor),
                ),
                || format!("mknod /{path}"),
            )?;
            // mknod honours the umask; set the mode we asked for.
            let node = ctx(open_in(root, path), || format!("open /{path}"))?;
            ctx(
                nix::sys::stat::fchmodat(
                    nix::fcntl::AT_FDCWD,
                    fd_path(&node).as_str(),
                    Mode::from_bits_truncate(*mode),
                    nix::sys::stat::FchmodatFlags::FollowSymlink,
                ),
                || format!("chmod /{path}"),
            )
        }
        MountOp::Symlink { path, target } => {
            let (parent, base) = ctx(parent_of(root, path), || format!("open parent of /{path}"))?;
            match symlinkat(target.as_str(), parent.as_fd(), base) {
                Ok(()) | Err(Errno::EEXIST) => Ok(()),
                Err(e) => Err((e, format!("symlink /{path}"))),
            }
        }
        MountOp::ReadOnly { path } => {
            let fd = ctx(open_in(root, path), || format!("open /{path}"))?;
            let p = fd_path(&fd);
            ctx(
                mount(
                    Some(p.as_str()),
                    p.as_str(),
                    None::<&str>,
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    None::<&str>,
                ),
                || format!("bind /{path}"),
            )?;
            // Re-open: the handle above names the directory under the new bind mount.
            let fd = ctx(open_in(root, path), || format!("open /{path}"))?;
            let flags = MsFlags::MS_BIND
                | MsFlags::MS_REMOUNT
                | MsFlags::MS_RDONLY
                | MsFlags::MS_NOSUID
                | MsFlags::MS_NODEV
                | MsFlags::MS_NOEXEC;
            ctx(
                mount(
                    None::<&str>,
                    fd_path(&fd).as_str(),
                    None::<&str>,
                    flags,
                    None::<&str>,
                ),
                || format!("remount /{path} read-only"),
            )
        }
        MountOp::Mask { path } => {
            let fd = match open_in(root, path) {
                Err(Errno::ENOENT) => return Ok(()),
                other => ctx(other, || format!("open /{path}"))?,
            };
            let is_dir = ctx(nix::sys::stat::fstat(fd.as_fd()), || {
                format!("stat /{path}")
            })?
            .st_mode
                & libc::S_IFMT
                == libc::S_IFDIR;
            let target = fd_path(&fd);
            let r = if is_dir {
                mount(
                    Some("tmpfs"),
                    target.as_str(),
                    Some("tmpfs"),
                    MsFlags::MS_RDONLY,
                    Some("size=0,mode=000"),
                )
            } else {
                mount(
                    Some("/dev/null"),
                    target.as_str(),
                    None::<&str>,
                    MsFlags::MS_BIND,
                    None::<&str>,
                )
            };
            ctx(r, || format!("mask /{path}"))
        }
    }
}

/// `pivot_root(".", ".")` then detach the old root: the trick from pivot_root(2) that needs no
/// put_old directory inside the container.
pub fn pivot(root: &Path) -> MountResult<()> {
    ctx(chdir(root), || format!("chdir {}", root.display()))?;
    ctx(pivot_root(".", "."), || "pivot_root".into())?;
    ctx(umount2(".", MntFlags::MNT_DETACH), || {
        "detach old root".into()
    })?;
    ctx(chdir("/"), || "chdir /".into())
}
