//! `berthctl exec [-i] [-t] [-u USER] [-e K=V]… [-w DIR] NAME -- CMD ARGS…` and
//! `berthctl shell NAME [-u USER]`: a command in a running container through
//! `Container.Exec`, its exit status through `Container.WaitExec`.

use std::time::Duration;

use clap::Args;
use zbus::{OwnedVariant, Variant};

use super::attach;
use super::{CliError, CliResult, Exit, manager};
use crate::dbus::{ContainerProxy, Options};

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Keep standard input open (pass it to the command).
    #[arg(long, short = 'i')]
    pub interactive: bool,
    /// Allocate a pty in the container's devpts for the command.
    #[arg(long, short = 't')]
    pub tty: bool,
    /// Run as this user: name, uid, name:group or uid:gid (default: the payload's).
    #[arg(long, short = 'u')]
    pub user: Option<String>,
    /// Environment variable KEY=VALUE, over the payload's. Repeatable.
    #[arg(long = "env", short = 'e', value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Working directory inside the container (default: the payload's).
    #[arg(long, short = 'w', value_name = "DIR")]
    pub workdir: Option<String>,
    pub name: String,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ShellArgs {
    /// Log in as this user (default: root): the user's shell from the container's
    /// /etc/passwd, else /bin/sh.
    #[arg(long, short = 'u')]
    pub user: Option<String>,
    pub name: String,
}

fn variant<'a>(v: impl Into<Variant<'a>>) -> CliResult<OwnedVariant> {
    OwnedVariant::try_from(v.into()).map_err(|e| CliError::new(Exit::Failed, e.to_string()))
}

/// The proxy of container `name`'s object.
pub async fn container(
    conn: &zbus::Connection,
    manager: &crate::dbus::ManagerProxy<'_>,
    name: &str,
) -> CliResult<ContainerProxy<'static>> {
    let path = manager.get_container(name.to_string()).await?;
    // Only methods are called: no GetAll and no PropertiesChanged match on the way.
    Ok(ContainerProxy::builder(conn)
        .path(path)
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await?)
}

/// What an exec runs; everything else comes from the container's payload.
struct Request {
    name: String,
    options: Options,
    interactive: bool,
    tty: bool,
}

pub async fn exec(a: ExecArgs) -> CliResult {
    let mut options = Options::default();
    options.insert("Command", variant(a.command)?);
    if !a.env.is_empty() {
        options.insert("Environment", variant(a.env)?);
    }
    if let Some(w) = a.workdir {
        options.insert("WorkingDirectory", variant(w)?);
    }
    if let Some(u) = a.user {
        options.insert("User", variant(u)?);
    }
    run(Request {
        name: a.name,
        options,
        interactive: a.interactive,
        tty: a.tty,
    })
    .await
}

pub async fn shell(a: ShellArgs) -> CliResult {
    let mut options = Options::default();
    options.insert("Shell", variant(true)?);
    if let Some(u) = a.user {
        options.insert("User", variant(u)?);
    }
    let tty = nix::unistd::isatty(std::io::stdin()).unwrap_or(false);
    run(Request {
        name: a.name,
        options,
        interactive: true,
        tty,
    })
    .await
}

/// The proxy of container `name`'s object at the path its name gives, without asking berthd
/// (`GetContainer` was a round trip of every exec): the first call on it tells, through
/// [`no_such`], whether the container exists.
async fn at_name(conn: &zbus::Connection, name: &str) -> CliResult<ContainerProxy<'static>> {
    let path = zbus::OwnedObjectPath::try_from(crate::name::container_path(name))?;
    Ok(ContainerProxy::builder(conn)
        .path(path)
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await?)
}

/// A call on the object of a container that does not exist is answered by the bus
/// (`UnknownObject`): say it as `GetContainer` would.
fn no_such(name: &str, e: crate::dbus::Error) -> crate::dbus::Error {
    use crate::dbus::Error;
    const UNKNOWN: &str = "org.freedesktop.DBus.Error.UnknownObject";
    let unknown = match &e {
        Error::ZBus(zbus::Error::MethodError(n, ..)) => n.as_str() == UNKNOWN,
        Error::ZBus(zbus::Error::FDO(f)) => matches!(**f, zbus::fdo::Error::UnknownObject(_)),
        _ => false,
    };
    if unknown {
        Error::NoSuchContainer(format!("no container named {name:?}"))
    } else {
        e
    }
}

async fn run(r: Request) -> CliResult {
    let (conn, _) = manager().await?;
    let c = at_name(&conn, &r.name).await?;
    let mut options = r.options;
    // Killed or cut off, berthctl leaves: the command is hung up as a login's would be.
    options.insert("EndWithCaller", variant(true)?);
    let relays = if r.tty {
        options.insert("Terminal", variant(true)?);
        attach::terminal_size(&mut options)?;
        None
    } else {
        Some(attach::stdio_options(&mut options, r.interactive)?)
    };
    let mut reply = c.exec(options).await.map_err(|e| no_such(&r.name, e))?;
    let id = reply
        .remove("Id")
        .map(String::try_from)
        .transpose()
        .map_err(|e| CliError::new(Exit::Failed, format!("Exec reply: {e}")))?
        .ok_or_else(|| CliError::new(Exit::Failed, "Exec returned no Id"))?;
    if r.tty {
        let master = reply
            .remove("Terminal")
            .map(attach::take_fd)
            .transpose()?
            .ok_or_else(|| CliError::new(Exit::Failed, "Exec returned no terminal"))?;
        attach::terminal_until_closed(master, r.interactive, |sig| {
            let (c, id) = (&c, id.clone());
            async move { c.kill_exec(id, sig).await.map_err(CliError::from) }
        })
        .await?;
        let status = c.wait_exec(id).await?;
        return Ok((status & 0xff) as u8);
    }
    let status = wait_forwarding(&c, &id).await?;
    if let Some(relays) = relays {
        relays.finish(Duration::from_secs(1));
    }
    Ok((status & 0xff) as u8)
}

/// Wait for the command, passing SIGINT, SIGTERM and SIGHUP on to it.
async fn wait_forwarding(c: &ContainerProxy<'_>, id: &str) -> CliResult<i32> {
    use futures_util::FutureExt;
    use tokio::signal::unix::{SignalKind, signal};
    let sig = |k| signal(k).map_err(|e| CliError::new(Exit::Failed, e.to_string()));
    let (mut int, mut term, mut hup) = (
        sig(SignalKind::interrupt())?,
        sig(SignalKind::terminate())?,
        sig(SignalKind::hangup())?,
    );
    let mut wait = Box::pin(c.wait_exec(id.to_string()).fuse());
    loop {
        let forward = tokio::select! {
            r = &mut wait => return Ok(r?),
            _ = int.recv() => libc::SIGINT,
            _ = term.recv() => libc::SIGTERM,
            _ = hup.recv() => libc::SIGHUP,
        };
        // The command may have just ended; the wait then says how.
        if let Err(e) = c.kill_exec(id.to_string(), forward).await
            && !matches!(
                e,
                crate::dbus::Error::NoSuchExec(_) | crate::dbus::Error::InvalidState(_)
            )
        {
            eprintln!("berthctl: cannot pass signal {forward} on: {e}, ignoring");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dbus::Error;

    #[test]
    fn an_unknown_object_is_no_such_container_and_other_errors_stay() {
        let unknown = Error::ZBus(zbus::Error::FDO(Box::new(zbus::fdo::Error::UnknownObject(
            "Unknown object '/org/berth/berth1/container/x'".into(),
        ))));
        match no_such("x", unknown) {
            Error::NoSuchContainer(m) => assert_eq!(m, "no container named \"x\""),
            e => panic!("{e:?}"),
        }
        match no_such("x", Error::InvalidState("not running".into())) {
            Error::InvalidState(m) => assert_eq!(m, "not running"),
            e => panic!("{e:?}"),
        }
        let other = Error::ZBus(zbus::Error::FDO(Box::new(zbus::fdo::Error::AccessDenied(
            "no".into(),
        ))));
        assert!(matches!(no_such("x", other), Error::ZBus(_)));
    }
}
