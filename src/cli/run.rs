//! `berthctl run` and `berthctl create`.

use std::collections::HashMap;
use std::os::fd::AsFd;

use clap::Args;
use futures_util::FutureExt;
use zbus::{OwnedVariant, Variant};

use super::{CliError, CliResult, Exit, manager};
use crate::dbus::ManagerProxy;

/// What defines a container (shared by run and create).
#[derive(Debug, Args)]
pub struct ContainerOpts {
    /// Container name (default: a generated one).
    #[arg(long)]
    pub name: Option<String>,
    /// Image to run (default: the built-in "default" image).
    #[arg(long, conflicts_with = "directory")]
    pub image: Option<String>,
    /// Directory to use as the container's read-only root.
    #[arg(long, short = 'D')]
    pub directory: Option<String>,
    /// Hostname inside the container (default: its name).
    #[arg(long)]
    pub hostname: Option<String>,
    /// Remove the container when it exits.
    #[arg(long)]
    pub rm: bool,
    /// Scope property KEY=VALUE (MemoryMax, MemoryHigh, MemoryLow, MemorySwapMax, CPUQuota,
    /// CPUWeight, IOWeight, TasksMax, Description). Repeatable.
    #[arg(long = "property", short = 'p', value_name = "KEY=VALUE")]
    pub properties: Vec<String>,
    /// The command and its arguments (default: /bin/sh).
    #[arg(last = true)]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub opts: ContainerOpts,
    /// Start it and print its name instead of waiting for it.
    #[arg(long, short = 'd')]
    pub detach: bool,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    #[command(flatten)]
    pub opts: ContainerOpts,
}

fn generated_name() -> String {
    let mut b = [0u8; 4];
    let _ = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b));
    format!(
        "berth-{}",
        b.iter().map(|x| format!("{x:02x}")).collect::<String>()
    )
}

fn variant<'a>(v: impl Into<Variant<'a>>) -> CliResult<OwnedVariant> {
    OwnedVariant::try_from(v.into()).map_err(|e| CliError::new(Exit::Failed, e.to_string()))
}

fn create_options(o: &ContainerOpts) -> CliResult<HashMap<String, OwnedVariant>> {
    let mut m = HashMap::new();
    if let Some(i) = &o.image {
        m.insert("Image".into(), variant(i.as_str())?);
    }
    if let Some(d) = &o.directory {
        // Resolve relative paths here, where the caller's working directory is known.
        let abs = std::path::absolute(d)
            .map_err(|e| CliError::new(Exit::InvalidArgument, format!("{d}: {e}")))?;
        m.insert(
            "Directory".into(),
            variant(abs.to_string_lossy().into_owned())?,
        );
    }
    if let Some(h) = &o.hostname {
        m.insert("Hostname".into(), variant(h.as_str())?);
    }
    if !o.command.is_empty() {
        m.insert("Command".into(), variant(o.command.clone())?);
    }
    if o.rm {
        m.insert("AutoRemove".into(), variant(true)?);
    }
    if !o.properties.is_empty() {
        let mut props = HashMap::new();
        for p in &o.properties {
            let (k, v) = crate::spec::split_assignment(p)
                .map_err(|e| CliError::new(Exit::InvalidArgument, e.to_string()))?;
            props.insert(k.to_string(), v.to_string());
        }
        m.insert("Properties".into(), variant(props)?);
    }
    Ok(m)
}

async fn define(proxy: &ManagerProxy<'_>, o: &ContainerOpts) -> CliResult<String> {
    let name = o.name.clone().unwrap_or_else(generated_name);
    proxy
        .create_container(name.clone(), create_options(o)?)
        .await?;
    Ok(name)
}

pub async fn create(a: CreateArgs) -> CliResult {
    let (_conn, proxy) = manager().await?;
    let name = define(&proxy, &a.opts).await?;
    super::output::print_lines([name]);
    Ok(0)
}

/// The payload's stdio: ours, passed over the bus.
fn stdio_options() -> CliResult<HashMap<String, OwnedVariant>> {
    let mut m = HashMap::new();
    let fds = [
        (
            "StandardInput",
            std::io::stdin().as_fd().try_clone_to_owned(),
        ),
        (
            "StandardOutput",
            std::io::stdout().as_fd().try_clone_to_owned(),
        ),
        (
            "StandardError",
            std::io::stderr().as_fd().try_clone_to_owned(),
        ),
    ];
    for (k, fd) in fds {
        let fd = fd.map_err(|e| CliError::new(Exit::Failed, format!("{k}: {e}")))?;
        m.insert(k.into(), variant(zbus::Fd::from(fd))?);
    }
    Ok(m)
}

pub async fn run(a: RunArgs) -> CliResult {
    let as_run_error = |e: CliError| match e.exit {
        Exit::RunNotFound | Exit::NoDaemon => e,
        _ => CliError {
            exit: Exit::RunFailed,
            message: e.message,
        },
    };
    let (_conn, proxy) = manager().await.map_err(as_run_error)?;
    let name = define(&proxy, &a.opts).await.map_err(as_run_error)?;
    let options = if a.detach {
        HashMap::new()
    } else {
        stdio_options()?
    };
    if let Err(e) = proxy.start_container(name.clone(), options).await {
        // `run` made this container; a failed start leaves nothing behind.
        let _ = proxy.remove_container(name.clone(), true).await;
        return Err(as_run_error(e.into()));
    }
    if a.detach {
        super::output::print_lines([name]);
        return Ok(0);
    }
    wait_forwarding_signals(&proxy, &name)
        .await
        .map_err(as_run_error)
}

/// Wait for the container's exit, passing SIGINT, SIGTERM and SIGHUP on to its PID 1.
pub async fn wait_forwarding_signals(proxy: &ManagerProxy<'_>, name: &str) -> CliResult {
    use tokio::signal::unix::{SignalKind, signal};
    let sig = |k| signal(k).map_err(|e| CliError::new(Exit::Failed, e.to_string()));
    let (mut int, mut term, mut hup) = (
        sig(SignalKind::interrupt())?,
        sig(SignalKind::terminate())?,
        sig(SignalKind::hangup())?,
    );
    let mut wait = Box::pin(proxy.wait_container(name.to_string()).fuse());
    loop {
        let forward = tokio::select! {
            r = &mut wait => return Ok((r? & 0xff) as u8),
            _ = int.recv() => libc::SIGINT,
            _ = term.recv() => libc::SIGTERM,
            _ = hup.recv() => libc::SIGHUP,
        };
        let _ = proxy
            .kill_container(name.to_string(), "leader".into(), forward)
            .await;
    }
}
