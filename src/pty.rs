//! Terminals for `run -t` and `exec -t`, both sides.
//!
//! **Container side** ([`open_in`]): the pty is allocated in the container's own devpts, by
//! opening `ptmx` relative to a descriptor of the container's `/dev/pts` and getting the
//! peer with `TIOCGPTPEER` — no `/dev/pts/N` lookup, which in a foreign devpts would name
//! someone else's terminal or nothing. The payload gets the peer as its stdio and controlling
//! terminal ([`crate::sys::pty::set_controlling_terminal`] after `setsid`), so `tty` answers,
//! job control works and Ctrl-C reaches the foreground job; the master goes to the caller as
//! a unix fd.
//!
//! **Caller side** ([`RawMode`], [`proxy`]): berthctl puts its terminal in raw mode (restored
//! when the guard drops: on return, on `?`, on panic unwinding, and on SIGTERM/SIGHUP, which
//! end the proxy), copies input to the master and the master's output to its own, passes
//! window-size changes (`SIGWINCH`) on with `TIOCSWINSZ`, and returns when the container side
//! is gone (the master reads `EIO`) — after everything it wrote is out.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::sys::signal::Signal;
use nix::sys::stat::Mode;
use nix::sys::termios::{SetArg, Termios, cfmakeraw, tcgetattr, tcsetattr};
use tokio::io::unix::AsyncFd;
use tokio::signal::unix::{SignalKind, signal};

use crate::sys::pty as sys;
pub use crate::sys::pty::WindowSize;

#[derive(Debug, thiserror::Error)]
pub enum PtyError {
    #[error("cannot open the container's ptmx: {0}")]
    OpenPtmx(nix::Error),
    #[error("the container's ptmx is not a pty multiplexer of a devpts")]
    NotPtmx,
    #[error("cannot unlock the pty: {0}")]
    Unlock(nix::Error),
    #[error("cannot open the pty's peer: {0}")]
    Peer(nix::Error),
    #[error("cannot give the terminal to its user: {0}")]
    Owner(nix::Error),
    #[error("terminal settings: {0}")]
    Termios(nix::Error),
    #[error("terminal proxy: {0}")]
    Io(#[from] io::Error),
}

/// A pseudo-terminal pair.
#[derive(Debug)]
pub struct Pty {
    /// For the caller: what it writes is the terminal's input.
    pub master: OwnedFd,
    /// For the payload: its stdio and controlling terminal.
    pub slave: OwnedFd,
}

const DEVPTS_SUPER_MAGIC: i64 = 0x1cd1;

/// Allocate a pty in the devpts whose directory `pts` is (the container's `/dev/pts`,
/// opened inside its root). The multiplexer is checked to be `ptmx` (5:2) on a devpts, so a
/// container that swapped its `/dev/pts` cannot hand us another device.
pub fn open_in(pts: BorrowedFd<'_>) -> Result<Pty, PtyError> {
    let master = nix::fcntl::openat(
        pts,
        "ptmx",
        OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK,
        Mode::empty(),
    )
    .map_err(PtyError::OpenPtmx)?;
    let st = nix::sys::stat::fstat(&master).map_err(PtyError::OpenPtmx)?;
    let fs = nix::sys::statfs::fstatfs(&master).map_err(PtyError::OpenPtmx)?;
    let is_chr = nix::sys::stat::SFlag::from_bits_truncate(st.st_mode)
        .contains(nix::sys::stat::SFlag::S_IFCHR);
    if !is_chr
        || st.st_rdev != nix::sys::stat::makedev(5, 2)
        || fs.filesystem_type().0 as i64 != DEVPTS_SUPER_MAGIC
    {
        return Err(PtyError::NotPtmx);
    }
    // Blocking again: the opener of ptmx gets O_NONBLOCK only so that a wrong node could not
    // block us; the master is used through its own (non-blocking) proxy later.
    fcntl(&master, FcntlArg::F_SETFL(OFlag::empty())).map_err(PtyError::OpenPtmx)?;
    sys::unlock(master.as_fd()).map_err(PtyError::Unlock)?;
    let slave = sys::peer(master.as_fd()).map_err(PtyError::Peer)?;
    Ok(Pty { master, slave })
}

/// Give the terminal to the user it is for, as login(1) does: owner `uid`, group `gid` (the
/// container's `tty` group, else the user's), mode 0620.
pub fn give_to(slave: BorrowedFd<'_>, uid: u32, gid: u32) -> Result<(), PtyError> {
    nix::unistd::fchown(
        slave,
        Some(nix::unistd::Uid::from_raw(uid)),
        Some(nix::unistd::Gid::from_raw(gid)),
    )
    .map_err(PtyError::Owner)?;
    nix::sys::stat::fchmod(slave, Mode::from_bits_truncate(0o620)).map_err(PtyError::Owner)
}

/// The caller's terminal in raw mode, for as long as this guard lives: no echo, no line
/// editing, no signals from keys (Ctrl-C and Ctrl-Z go to the container's terminal, whose
/// line discipline turns them into signals for its foreground job), no output processing.
pub struct RawMode {
    fd: OwnedFd,
    saved: Termios,
}

impl RawMode {
    /// Put the terminal `fd` in raw mode.
    pub fn enter(fd: BorrowedFd<'_>) -> Result<RawMode, PtyError> {
        let fd = fd.try_clone_to_owned()?;
        let saved = tcgetattr(&fd).map_err(PtyError::Termios)?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(&fd, SetArg::TCSANOW, &raw).map_err(PtyError::Termios)?;
        Ok(RawMode { fd, saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // Nothing better to do if the terminal is gone: there is nobody to restore it for.
        let _restore = tcsetattr(&self.fd, SetArg::TCSANOW, &self.saved);
    }
}

/// A non-blocking descriptor of the same file as another: a fresh open of it through
/// `/proc/self/fd` where possible, so the flag stays ours (the terminal's own open file is
/// shared with the shell, which must not find it non-blocking after we exit); else the
/// shared file's flag is set and put back on drop.
struct NonBlocking {
    fd: OwnedFd,
    restore: Option<OFlag>,
}

impl NonBlocking {
    fn new(fd: BorrowedFd<'_>, access: OFlag) -> io::Result<NonBlocking> {
        let reopened = nix::fcntl::open(
            format!("/proc/self/fd/{}", fd.as_raw_fd()).as_str(),
            access | OFlag::O_NONBLOCK | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
            Mode::empty(),
        );
        if let Ok(fd) = reopened {
            return Ok(NonBlocking { fd, restore: None });
        }
        let fd = fd.try_clone_to_owned()?;
        let flags = OFlag::from_bits_truncate(fcntl(&fd, FcntlArg::F_GETFL)?);
        fcntl(&fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
        Ok(NonBlocking {
            fd,
            restore: Some(flags),
        })
    }
}

impl Drop for NonBlocking {
    fn drop(&mut self) {
        if let Some(flags) = self.restore {
            // The shared file stays non-blocking only if this fails, and then we cannot help.
            let _restore = fcntl(&self.fd, FcntlArg::F_SETFL(flags));
        }
    }
}

async fn read_some(fd: &AsyncFd<OwnedFd>, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        let mut guard = fd.readable().await?;
        match guard.try_io(|f| nix::unistd::read(f.get_ref(), buf).map_err(io::Error::from)) {
            Ok(Err(e)) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Ok(r) => return r,
            Err(_would_block) => continue,
        }
    }
}

async fn write_all(fd: &AsyncFd<OwnedFd>, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        let mut guard = fd.writable().await?;
        match guard.try_io(|f| nix::unistd::write(f.get_ref(), buf).map_err(io::Error::from)) {
            Ok(Ok(n)) => buf = &buf[n..],
            Ok(Err(e)) if e.raw_os_error() == Some(libc::EINTR) => {}
            Ok(Err(e)) => return Err(e),
            Err(_would_block) => {}
        }
    }
    Ok(())
}

fn async_nonblocking(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    let flags = OFlag::from_bits_truncate(fcntl(&fd, FcntlArg::F_GETFL)?);
    fcntl(&fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    crate::sys::async_fd(fd)
}

/// The caller's side of a terminal session.
pub struct Terminal<'a> {
    /// Keyboard input (standard input); `None` without `-i`.
    pub input: Option<BorrowedFd<'a>>,
    /// Where the container's output goes (standard output).
    pub output: BorrowedFd<'a>,
    /// The terminal whose size the container's follows (on start and on each `SIGWINCH`);
    /// `None` when the caller has no terminal.
    pub size_from: Option<BorrowedFd<'a>>,
}

/// How a terminal session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyEnd {
    /// The container side closed its terminal (the process exited); all its output is out.
    Closed,
    /// berthctl got this signal (SIGTERM, SIGHUP): the caller decides what happens to the
    /// container, after the terminal is restored.
    Signal(Signal),
    /// The caller's own terminal went away (read error `EIO`: hung up).
    TerminalLost,
}

/// The end-of-file character a canonical-mode terminal turns into EOF for its reader:
/// sent once when the caller's input ends (a pipe into `exec -i -t`).
const VEOF: u8 = 0x04;

/// Relay between the caller's terminal and a pty master until the container side closes
/// it, a stop signal arrives, or the caller's terminal is lost. Both directions run
/// concurrently, so a container that does not read its input cannot stop its output (or the
/// other way round).
pub async fn proxy(master: OwnedFd, term: Terminal<'_>) -> Result<ProxyEnd, PtyError> {
    let master = async_nonblocking(master)?;
    let input_nb = match term.input {
        Some(fd) => Some(NonBlocking::new(fd, OFlag::O_RDONLY)?),
        None => None,
    };
    let input = match &input_nb {
        Some(nb) => Some(crate::sys::async_fd(nb.fd.try_clone()?)?),
        None => None,
    };
    let output_nb = NonBlocking::new(term.output, OFlag::O_WRONLY)?;
    let output = crate::sys::async_fd(output_nb.fd.try_clone()?)?;
    let mut winch = signal(SignalKind::window_change())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut hangup = signal(SignalKind::hangup())?;
    let follow_size = |from: BorrowedFd<'_>| {
        if let Ok(size) = sys::window_size(from) {
            // A terminal that cannot take the size keeps the old one; not worth ending for.
            let _best_effort = sys::set_window_size(master.as_fd(), size);
        }
    };
    if let Some(from) = term.size_from {
        follow_size(from);
    }

    let to_container = async {
        let Some(input) = &input else {
            return std::future::pending::<Result<ProxyEnd, PtyError>>().await;
        };
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match read_some(input, &mut buf).await {
                Ok(0) => {
                    write_all(&master, &[VEOF]).await?;
                    return std::future::pending().await;
                }
                Ok(n) => write_all(&master, &buf[..n]).await?,
                Err(e) if e.raw_os_error() == Some(libc::EIO) => return Ok(ProxyEnd::TerminalLost),
                Err(e) => return Err(e.into()),
            }
        }
    };
    let from_container = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match read_some(&master, &mut buf).await {
                // EIO: every descriptor of the peer is closed (the container side exited);
                // whatever it wrote before was read first.
                Ok(0) => return Ok(ProxyEnd::Closed),
                Err(e) if e.raw_os_error() == Some(Errno::EIO as i32) => {
                    return Ok(ProxyEnd::Closed);
                }
                Err(e) => return Err(PtyError::Io(e)),
                Ok(n) => write_all(&output, &buf[..n]).await?,
            }
        }
    };
    let resize = async {
        loop {
            winch.recv().await;
            if let Some(from) = term.size_from {
                follow_size(from);
            }
        }
    };
    tokio::select! {
        r = from_container => r,
        r = to_container => r,
        () = resize => unreachable!("the SIGWINCH loop does not end"),
        _ = terminate.recv() => Ok(ProxyEnd::Signal(Signal::SIGTERM)),
        _ = hangup.recv() => Ok(ProxyEnd::Signal(Signal::SIGHUP)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::termios::{LocalFlags, OutputFlags};
    use std::io::{Read, Write};
    use std::time::Duration;

    /// A pty pair of this machine's devpts, as a container's would be made.
    fn local_pty() -> Pty {
        let pts = nix::fcntl::open(
            "/dev/pts",
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .unwrap();
        open_in(pts.as_fd()).unwrap()
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn a_pty_is_allocated_in_the_given_devpts_and_refused_elsewhere() {
        let p = local_pty();
        assert!(nix::unistd::isatty(&p.slave).unwrap());
        let n = sys::number(p.master.as_fd()).unwrap();
        let st = nix::sys::stat::fstat(&p.slave).unwrap();
        let by_name = nix::sys::stat::stat(format!("/dev/pts/{n}").as_str()).unwrap();
        assert_eq!(st.st_rdev, by_name.st_rdev, "the peer is /dev/pts/{n}");
        give_to(p.slave.as_fd(), 1234, 5).unwrap();
        let st = nix::sys::stat::fstat(&p.slave).unwrap();
        assert_eq!((st.st_uid, st.st_gid, st.st_mode & 0o777), (1234, 5, 0o620));
        // A directory whose "ptmx" is something else is refused.
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("ptmx"), "").unwrap();
        let d =
            nix::fcntl::open(t.path(), OFlag::O_PATH | OFlag::O_DIRECTORY, Mode::empty()).unwrap();
        assert!(matches!(open_in(d.as_fd()), Err(PtyError::NotPtmx)));
        std::fs::remove_file(t.path().join("ptmx")).unwrap();
        std::os::unix::fs::symlink("/dev/pts/ptmx", t.path().join("ptmx")).unwrap();
        assert!(matches!(
            open_in(d.as_fd()),
            Err(PtyError::OpenPtmx(Errno::ELOOP))
        ));
    }

    #[test]
    fn raw_mode_is_set_and_restored_on_drop_and_on_panic() {
        let user = local_pty();
        let before = tcgetattr(&user.slave).unwrap();
        assert!(
            before
                .local_flags
                .contains(LocalFlags::ICANON | LocalFlags::ECHO | LocalFlags::ISIG)
        );
        {
            let _raw = RawMode::enter(user.slave.as_fd()).unwrap();
            let now = tcgetattr(&user.slave).unwrap();
            assert!(
                !now.local_flags
                    .intersects(LocalFlags::ICANON | LocalFlags::ECHO | LocalFlags::ISIG)
            );
            assert!(!now.output_flags.contains(OutputFlags::OPOST));
        }
        assert_eq!(tcgetattr(&user.slave).unwrap(), before);
        let fd = user.slave.try_clone().unwrap();
        let r = std::thread::spawn(move || {
            let _raw = RawMode::enter(fd.as_fd()).unwrap();
            panic!("on purpose");
        })
        .join();
        assert!(r.is_err());
        assert_eq!(tcgetattr(&user.slave).unwrap(), before);
    }

    /// The container side's terminal in raw mode, so that bytes pass unchanged.
    fn container_side() -> Pty {
        let c = local_pty();
        let mut t = tcgetattr(&c.slave).unwrap();
        cfmakeraw(&mut t);
        tcsetattr(&c.slave, SetArg::TCSANOW, &t).unwrap();
        c
    }

    #[test]
    fn bytes_flow_both_ways_and_the_proxy_ends_when_the_container_side_closes() {
        let c = container_side();
        let (in_rd, in_wr) = nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
        let (out_rd, out_wr) = nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
        let Pty { master, slave } = c;
        let container = std::thread::spawn(move || {
            let mut s = std::fs::File::from(slave);
            let mut got = [0u8; 5];
            s.read_exact(&mut got).unwrap();
            assert_eq!(&got, b"hello");
            s.write_all(b"world, and a last line\r\n").unwrap();
            // The process exits: its terminal closes.
        });
        std::fs::File::from(in_wr).write_all(b"hello").unwrap();
        let end = rt().block_on(async {
            let term = Terminal {
                input: Some(in_rd.as_fd()),
                output: out_wr.as_fd(),
                size_from: None,
            };
            tokio::time::timeout(Duration::from_secs(10), proxy(master, term))
                .await
                .expect("the proxy ends")
                .unwrap()
        });
        container.join().unwrap();
        assert_eq!(end, ProxyEnd::Closed);
        drop(out_wr);
        let mut out = String::new();
        std::fs::File::from(out_rd)
            .read_to_string(&mut out)
            .unwrap();
        assert_eq!(
            out, "world, and a last line\r\n",
            "all output came out before the end"
        );
    }

    #[test]
    fn the_window_size_follows_the_callers_terminal_on_start_and_on_sigwinch() {
        let user = local_pty();
        let c = container_side();
        let size = WindowSize {
            rows: 40,
            cols: 120,
            ..Default::default()
        };
        sys::set_window_size(user.master.as_fd(), size).unwrap();
        let (out_rd, out_wr) = nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
        let Pty { master, slave } = c;
        let got = rt().block_on(async {
            let term = Terminal {
                input: None,
                output: out_wr.as_fd(),
                size_from: Some(user.slave.as_fd()),
            };
            let check = async {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let first = sys::window_size(slave.as_fd()).unwrap();
                let bigger = WindowSize {
                    rows: 50,
                    cols: 200,
                    ..Default::default()
                };
                sys::set_window_size(user.master.as_fd(), bigger).unwrap();
                nix::sys::signal::raise(Signal::SIGWINCH).unwrap();
                let mut second = first;
                for _ in 0..100 {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    second = sys::window_size(slave.as_fd()).unwrap();
                    if second == bigger {
                        break;
                    }
                }
                drop(slave);
                (first, second)
            };
            let (end, sizes) = tokio::join!(proxy(master, term), check);
            assert_eq!(end.unwrap(), ProxyEnd::Closed);
            sizes
        });
        assert_eq!(got.0, size);
        assert_eq!((got.1.rows, got.1.cols), (50, 200));
        drop(out_rd);
    }

    #[test]
    fn the_end_of_piped_input_is_an_eof_character_for_the_container() {
        let c = local_pty(); // canonical mode: ^D ends a read with what came before
        let (in_rd, in_wr) = nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
        let (_out_rd, out_wr) = nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
        let Pty { master, slave } = c;
        let mut t = tcgetattr(&slave).unwrap();
        t.local_flags.remove(LocalFlags::ECHO);
        tcsetattr(&slave, SetArg::TCSANOW, &t).unwrap();
        std::fs::File::from(in_wr).write_all(b"a line\n").unwrap();
        let reader = std::thread::spawn(move || {
            let mut s = std::fs::File::from(slave);
            let mut buf = [0u8; 64];
            let n = s.read(&mut buf).unwrap();
            let eof = s.read(&mut buf[n..]).unwrap();
            (buf[..n].to_vec(), eof)
        });
        rt().block_on(async {
            let term = Terminal {
                input: Some(in_rd.as_fd()),
                output: out_wr.as_fd(),
                size_from: None,
            };
            tokio::time::timeout(Duration::from_secs(10), proxy(master, term))
                .await
                .expect("ends when the reader closes")
                .unwrap()
        });
        let (got, eof) = reader.join().unwrap();
        assert_eq!(got, b"a line\n");
        assert_eq!(eof, 0, "the next read sees end of file");
    }
}
