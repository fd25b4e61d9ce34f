//! The leader of a booted container (`--boot`, [`crate::boot`]): the same steps as any
//! leader up to the payload, then it execs the image's init *itself*, so that the init is the
//! container's PID 1 and every signal sent to the leader (machined's SIGRTMIN+4, berthd's
//! stop) reaches it. Nothing of berth stays in the container: the exit-status memfd is closed
//! (berthd reads the init's end from waitid), the protocol socket is close-on-exec.
//!
//! The init is looked for before sync #5 says "started", so that a missing one fails the
//! start with a clear message instead of a container that exits 127.

use std::ffi::CString;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;
use nix::unistd::AccessFlags;

use super::{StepResult, fail, init, prepare, terminal};
use crate::plan::Plan;
use crate::protocol::{self, FromHelper, Step};
use crate::sys::syscall::Real;

/// The first of `argv[0]` (then, for the default init, [`crate::boot::INIT_FALLBACKS`]) that
/// the container can execute, resolved in its root (after the pivot).
pub fn find_init(argv0: &str, executable: impl Fn(&str) -> bool) -> Option<String> {
    let fallbacks: &[&str] = if argv0 == crate::boot::INIT {
        &crate::boot::INIT_FALLBACKS
    } else {
        &[]
    };
    std::iter::once(argv0)
        .chain(fallbacks.iter().copied())
        .find(|p| executable(p))
        .map(str::to_string)
}

fn executable(path: &str) -> bool {
    CString::new(path).is_ok_and(|p| nix::unistd::access(p.as_c_str(), AccessFlags::X_OK).is_ok())
}

/// The booted leader, from the barrier on: prepare, pick the init, say "started" (with the
/// console's master when the plan has a terminal), exec the init in place. It takes what the
/// leader holds at the barrier, as `super::leader` does.
#[allow(clippy::too_many_arguments)]
pub(super) fn run(
    sock: OwnedFd,
    sys: &mut Real,
    plan: &Plan,
    mut payload: init::Payload,
    root: OwnedFd,
    nodes: Option<OwnedFd>,
    sources: Vec<OwnedFd>,
    fds: Vec<OwnedFd>,
) -> ! {
    let ready = (|| -> StepResult<([OwnedFd; 3], Option<OwnedFd>)> {
        prepare(
            sys,
            plan,
            root.as_fd(),
            nodes.as_ref().map(|n| n.as_fd()),
            &sources,
            |_| super::wait_in_scope(&sock),
        )?;
        let argv0 = plan.process.argv[0].as_str();
        let init = find_init(argv0, executable).ok_or_else(|| {
            (
                Step::Exec,
                Errno::ENOENT,
                format!("--boot: no init in the image ({argv0} and its fallbacks are missing)"),
            )
        })?;
        let mut argv = plan.process.argv.clone();
        argv[0] = init;
        payload
            .set_argv(&argv)
            .map_err(|m| (Step::Exec, Errno::EINVAL, m))?;
        // The init runs as the container's root.
        payload
            .set_user(None, plan.process.home.as_deref(), &plan.security)
            .map_err(|m| (Step::User, Errno::EINVAL, m))?;
        let [i, o, e, status]: [OwnedFd; 4] = fds
            .try_into()
            .map_err(|_| (Step::Protocol, Errno::EINVAL, "descriptors".to_string()))?;
        // Nothing writes the status: the init is no berth code (berthd uses waitid).
        drop(status);
        if plan.process.terminal.iter().any(|t| *t) {
            let pty = terminal::allocate(0, 0, plan.process.window)?;
            console(pty.master.as_fd())?;
            let stdio = terminal::stdio(&pty.slave, plan.process.terminal, [i, o, e])?;
            Ok((stdio, Some(pty.master)))
        } else {
            Ok(([i, o, e], None))
        }
    })();
    drop((root, nodes, sources));
    let (stdio, master) = match ready {
        Ok(r) => r,
        Err(failure) => fail(&sock, failure),
    };
    let passed: Vec<BorrowedFd<'_>> = master.iter().map(|m| m.as_fd()).collect();
    if protocol::send(sock.as_fd(), &FromHelper::Started, &passed).is_err() {
        // berthd went away: the container's init starts anyway, as a stub PID 1 would go on.
    }
    drop(master);
    drop(sock);
    let (_step, errno) = init::exec_in_place(&payload, stdio);
    std::process::exit(if errno == Errno::ENOENT { 127 } else { 126 })
}

/// `/dev/console` is the console pty's peer (bound over an empty file on the container's
/// /dev tmpfs), where systemd writes its status and runs console-getty.service, as nspawn
/// arranges it.
fn console(master: BorrowedFd<'_>) -> StepResult<()> {
    let what = |m: &str| m.to_string();
    let n = crate::sys::pty::number(master)
        .map(|n| format!("/dev/pts/{n}"))
        .map_err(|e| (Step::Terminal, e, what("the console's number")))?;
    let console = "/dev/console";
    match nix::fcntl::open(
        console,
        nix::fcntl::OFlag::O_WRONLY
            | nix::fcntl::OFlag::O_CREAT
            | nix::fcntl::OFlag::O_NOFOLLOW
            | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    ) {
        Ok(fd) => drop(fd),
        Err(e) => return Err((Step::Terminal, e, what("create /dev/console"))),
    }
    nix::mount::mount(
        Some(n.as_str()),
        console,
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| (Step::Terminal, e, format!("bind {n} on /dev/console")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_init_falls_back_to_systemd_and_a_named_one_does_not() {
        let only = |have: &'static [&'static str]| move |p: &str| have.contains(&p);
        assert_eq!(
            find_init("/sbin/init", only(&["/sbin/init", "/lib/systemd/systemd"])).as_deref(),
            Some("/sbin/init")
        );
        assert_eq!(
            find_init("/sbin/init", only(&["/lib/systemd/systemd"])).as_deref(),
            Some("/lib/systemd/systemd")
        );
        assert_eq!(find_init("/sbin/init", only(&[])), None);
        assert_eq!(
            find_init("/bin/myinit", only(&["/lib/systemd/systemd"])),
            None
        );
    }
}
