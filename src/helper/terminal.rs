//! The container side of a terminal, for a start (`run -t`) and an exec (`exec -t`): a pty
//! allocated in the container's own devpts ([`crate::pty::open_in`]), given to the user it is
//! for, its peer on the standard streams the plan names, its master for berthd to pass on.

use std::os::fd::{AsFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};

use crate::protocol::Step;

type StepResult<T> = Result<T, (Step, Errno, String)>;

fn failed(e: crate::pty::PtyError) -> (Step, Errno, String) {
    let errno = match &e {
        crate::pty::PtyError::OpenPtmx(e)
        | crate::pty::PtyError::Unlock(e)
        | crate::pty::PtyError::Peer(e)
        | crate::pty::PtyError::Owner(e)
        | crate::pty::PtyError::Termios(e) => *e,
        crate::pty::PtyError::NotPtmx => Errno::ENOTTY,
        crate::pty::PtyError::Io(e) => Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
    };
    (Step::Terminal, errno, e.to_string())
}

/// In the container's root (after the pivot, or after joining its mount namespace): a new
/// terminal of its devpts, owned by `uid` and the container's `tty` group (else `gid`), mode
/// 0620. `/dev/pts` is opened beneath `/` without following any symlink.
/// `window`: its size (rows, columns) before anyone reads it.
pub fn allocate(uid: u32, gid: u32, window: Option<(u16, u16)>) -> StepResult<crate::pty::Pty> {
    let err = |what: &'static str| move |e: Errno| (Step::Terminal, e, what.to_string());
    let root = nix::fcntl::open(
        "/",
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(err("open /"))?;
    let pts = openat2(
        root.as_fd(),
        "dev/pts",
        OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
            .resolve(
                ResolveFlag::RESOLVE_BENEATH
                    | ResolveFlag::RESOLVE_NO_SYMLINKS
                    | ResolveFlag::RESOLVE_NO_MAGICLINKS,
            ),
    )
    .map_err(err("open /dev/pts"))?;
    let pty = crate::pty::open_in(pts.as_fd()).map_err(failed)?;
    let group = super::user::tty_gid().unwrap_or(gid);
    crate::pty::give_to(pty.slave.as_fd(), uid, group).map_err(failed)?;
    if let Some((rows, cols)) = window {
        crate::sys::pty::set_window_size(
            pty.master.as_fd(),
            crate::sys::pty::WindowSize {
                rows,
                cols,
                xpixel: 0,
                ypixel: 0,
            },
        )
        .map_err(err("set the terminal's size"))?;
    }
    Ok(pty)
}

/// The payload's standard streams: the terminal's peer where `terminal` says, the given
/// descriptor elsewhere.
pub fn stdio(
    slave: &OwnedFd,
    terminal: [bool; 3],
    given: [OwnedFd; 3],
) -> StepResult<[OwnedFd; 3]> {
    let mut out = Vec::with_capacity(3);
    for (on, fd) in terminal.into_iter().zip(given) {
        out.push(if on {
            slave.try_clone().map_err(|e| {
                (
                    Step::Terminal,
                    Errno::EMFILE,
                    format!("dup the terminal: {e}"),
                )
            })?
        } else {
            fd
        });
    }
    out.try_into()
        .map_err(|_| (Step::Terminal, Errno::EINVAL, "three streams".to_string()))
}
