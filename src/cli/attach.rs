//! The caller's side of a foreground `run` or an `exec`: which of berthctl's own standard
//! streams the container may have, and the terminal session with `-t`.
//!
//! **Never the caller's terminal.** A descriptor of the caller's terminal inside the
//! container would let it type into the caller's shell (`TIOCSTI`, allowed on this kernel:
//! `dev.tty.legacy_tiocsti=1`), change its modes, or read what the caller types later. So a
//! stream that is a terminal is never passed: without `-t` it is relayed through a pipe by a
//! thread of berthctl; with `-t` the container gets a pty of its own devpts and berthctl
//! proxies between it and the caller's terminal ([`crate::pty::proxy`]), in raw mode, with
//! the window size following `SIGWINCH`, and restores the terminal however the session ends.
//! Streams that are not terminals (files, pipes, sockets) are passed as they are.

use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use zbus::{OwnedVariant, Variant};

use super::{CliError, CliResult, Exit};
use crate::dbus::Options;
use crate::pty::{ProxyEnd, RawMode, Terminal};

fn variant<'a>(v: impl Into<Variant<'a>>) -> CliResult<OwnedVariant> {
    OwnedVariant::try_from(v.into()).map_err(|e| CliError::new(Exit::Failed, e.to_string()))
}

fn failed(what: &str, e: impl std::fmt::Display) -> CliError {
    CliError::new(Exit::Failed, format!("{what}: {e}"))
}

fn is_tty(fd: BorrowedFd<'_>) -> bool {
    nix::unistd::isatty(fd).unwrap_or(false)
}

/// Threads relaying between berthctl's terminal and pipes the container has instead.
#[derive(Default)]
pub struct Relays {
    done: Vec<std::sync::mpsc::Receiver<()>>,
}

impl Relays {
    /// Copy `from` to `to` in a thread until `from` ends; `wait`: [`Relays::finish`] waits
    /// for it (not for our terminal's input, which never ends by itself).
    fn spawn(&mut self, mut from: std::fs::File, mut to: impl Write + Send + 'static, wait: bool) {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match from.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if to.write_all(&buf[..n]).and_then(|()| to.flush()).is_err() {
                            break;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            // The receiver may be gone (berthctl is exiting): nothing to tell then.
            let _gone = tx.send(());
        });
        if wait {
            self.done.push(rx);
        }
    }

    /// Wait (at most `grace`) until the container's output is all out: its pipes end when
    /// the last process holding them exits, which may outlive the payload.
    pub fn finish(self, grace: Duration) {
        let until = std::time::Instant::now() + grace;
        for rx in self.done {
            let left = until.saturating_duration_since(std::time::Instant::now());
            // Timeout or a vanished thread: either way there is nothing more to wait for.
            let _ended = rx.recv_timeout(left);
        }
    }
}

/// The StandardInput/Output/Error options of a start or an exec without a terminal:
/// berthctl's own streams, except that a terminal is relayed through a pipe. `stdin`: give
/// the container our input (`-i`; a non-terminal input is always given, as before).
pub fn stdio_options(options: &mut Options, stdin: bool) -> CliResult<Relays> {
    let mut relays = Relays::default();
    let input = std::io::stdin();
    if is_tty(input.as_fd()) {
        if stdin {
            let (rd, wr) = pipe()?;
            options.insert("StandardInput", variant(zbus::Fd::from(rd))?);
            // Reading our terminal blocks until a key; the thread ends with berthctl.
            let from = std::fs::File::from(
                input
                    .as_fd()
                    .try_clone_to_owned()
                    .map_err(|e| failed("stdin", e))?,
            );
            relays.spawn(from, std::fs::File::from(wr), false);
        }
    } else {
        let fd = input
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| failed("stdin", e))?;
        options.insert("StandardInput", variant(zbus::Fd::from(fd))?);
    }
    for (key, fd) in [
        (
            "StandardOutput",
            std::io::stdout().as_fd().try_clone_to_owned(),
        ),
        (
            "StandardError",
            std::io::stderr().as_fd().try_clone_to_owned(),
        ),
    ] {
        let fd = fd.map_err(|e| failed(key, e))?;
        if is_tty(fd.as_fd()) {
            let (rd, wr) = pipe()?;
            options.insert(key, variant(zbus::Fd::from(wr))?);
            relays.spawn(std::fs::File::from(rd), std::fs::File::from(fd), true);
        } else {
            options.insert(key, variant(zbus::Fd::from(fd))?);
        }
    }
    Ok(relays)
}

fn pipe() -> CliResult<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| failed("pipe", e))
}

/// Run a terminal session on `master` until the container side closes it. `input`: forward
/// our standard input (`-i`). Returns how it ended, with the terminal restored.
pub async fn terminal_session(master: OwnedFd, input: bool) -> CliResult<ProxyEnd> {
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    let size_from = if is_tty(stdin.as_fd()) {
        Some(stdin.as_fd())
    } else if is_tty(stdout.as_fd()) {
        Some(stdout.as_fd())
    } else {
        None
    };
    // Raw mode only for a terminal we read keys from: its keys (Ctrl-C, Ctrl-Z) then reach
    // the container's terminal, whose line discipline turns them into signals there.
    let raw = match (input, is_tty(stdin.as_fd())) {
        (true, true) => Some(RawMode::enter(stdin.as_fd()).map_err(|e| failed("raw mode", e))?),
        _ => None,
    };
    let end = crate::pty::proxy(
        master,
        Terminal {
            input: input.then(|| stdin.as_fd()),
            output: stdout.as_fd(),
            size_from,
        },
    )
    .await;
    drop(raw);
    end.map_err(|e| failed("terminal", e))
}

/// Our terminal's size as the `TerminalSize` option (rows, columns), when we have a terminal.
pub fn terminal_size(options: &mut Options) -> CliResult<()> {
    for fd in [std::io::stdin().as_fd(), std::io::stdout().as_fd()] {
        if is_tty(fd)
            && let Ok(ws) = crate::sys::pty::window_size(fd)
        {
            options.insert("TerminalSize", variant((ws.rows, ws.cols))?);
            break;
        }
    }
    Ok(())
}

/// The descriptor in an `h` variant of a reply.
pub fn take_fd(v: OwnedVariant) -> CliResult<OwnedFd> {
    let fd = zbus::Fd::try_from(v).map_err(|e| failed("reply", e))?;
    Ok(zbus::OwnedFd::from(fd).into())
}
