//! The service manager protocol, the parts berthd uses: `READY=1`, and the file descriptor
//! store (`FDSTORE=1`), which keeps each running container's exit-status memfd across a berthd
//! crash and hands it back as `LISTEN_FDS` (sd_notify(3), sd_listen_fds(3)).

use std::collections::HashMap;
use std::io::IoSlice;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};

use nix::sys::socket::{
    AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType, UnixAddr, sendmsg, socket,
};

/// Send a notification to the service manager; `Ok(false)` when there is none.
pub fn notify(state: &str, fds: &[BorrowedFd<'_>]) -> nix::Result<bool> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    let path = path.into_encoded_bytes();
    let addr = match path.strip_prefix(b"@") {
        Some(abs) => UnixAddr::new_abstract(abs)?,
        None => UnixAddr::new(path.as_slice())?,
    };
    let sock = socket(
        AddressFamily::Unix,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let cmsg = [ControlMessage::ScmRights(&raw)];
    let cmsgs: &[ControlMessage<'_>] = if raw.is_empty() { &[] } else { &cmsg };
    sendmsg(
        sock.as_raw_fd(),
        &[IoSlice::new(state.as_bytes())],
        cmsgs,
        MsgFlags::empty(),
        Some(&addr),
    )?;
    Ok(true)
}

/// Send a notification on behalf of process `pid` (sd_pid_notify(3)): root may name another
/// process in SCM_CREDENTIALS, and the service manager attributes the message to the unit of
/// that process. This is how a `berth@` unit hears that its container runs (the leader is its
/// main process; berthd is not in its cgroup).
pub fn notify_as(pid: i32, state: &str) -> nix::Result<bool> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    let path = path.into_encoded_bytes();
    let addr = match path.strip_prefix(b"@") {
        Some(abs) => UnixAddr::new_abstract(abs)?,
        None => UnixAddr::new(path.as_slice())?,
    };
    let sock = socket(
        AddressFamily::Unix,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let creds = nix::sys::socket::UnixCredentials::from(libc::ucred {
        pid,
        uid: nix::unistd::geteuid().as_raw(),
        gid: nix::unistd::getegid().as_raw(),
    });
    sendmsg(
        sock.as_raw_fd(),
        &[IoSlice::new(state.as_bytes())],
        &[ControlMessage::ScmCredentials(&creds)],
        MsgFlags::empty(),
        Some(&addr),
    )?;
    Ok(true)
}

/// Put a descriptor in the store under `name`.
pub fn store_fd(name: &str, fd: BorrowedFd<'_>) -> nix::Result<bool> {
    notify(&format!("FDSTORE=1\nFDNAME={name}"), &[fd])
}

/// Drop a descriptor from the store.
pub fn remove_fd(name: &str) -> nix::Result<bool> {
    notify(&format!("FDSTOREREMOVE=1\nFDNAME={name}"), &[])
}

/// Take the descriptors passed to this process (`LISTEN_FDS`, with `LISTEN_FDNAMES`), by name,
/// and clear the variables. Call before any thread starts.
pub fn take_listen_fds() -> HashMap<String, OwnedFd> {
    let mut out = HashMap::new();
    let pid_ok = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        == Some(std::process::id());
    let count = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse::<i32>().ok())
        .unwrap_or(0);
    let names = std::env::var("LISTEN_FDNAMES").unwrap_or_default();
    for key in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        crate::sys::remove_env_single_threaded(key);
    }
    if !pid_ok {
        return out;
    }
    let mut names = names.split(':');
    for i in 0..count {
        let name = names.next().unwrap_or("unknown").to_string();
        let fd = match crate::sys::take_inherited_fd(3 + i) {
            Ok(fd) => fd,
            Err(e) => {
                eprintln!(
                    "berthd: passed descriptor {} ({name}): {e}, ignoring",
                    3 + i
                );
                continue;
            }
        };
        if let Err(e) = nix::fcntl::fcntl(
            &fd,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        ) {
            eprintln!("berthd: descriptor {name}: {e}, ignoring");
        }
        out.insert(name, fd);
    }
    out
}
