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
    /// Replace the image's entrypoint (and its default command); "" clears it.
    #[arg(long, value_name = "PROGRAM")]
    pub entrypoint: Option<String>,
    /// Environment variable KEY=VALUE, over the image's. Repeatable.
    #[arg(long = "env", short = 'e', value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Working directory (default: the image's, else /).
    #[arg(long, short = 'w', value_name = "DIR")]
    pub workdir: Option<String>,
    /// Run as this user: name, uid, name:group or uid:gid (default: the image's, else root).
    #[arg(long, short = 'u')]
    pub user: Option<String>,
    #[command(flatten)]
    pub resources: ResourceOpts,
    /// Raw scope property KEY=VALUE, as systemd-run takes them (MemoryLow, IOReadIOPSMax,
    /// DeviceAllow, RuntimeMaxSec, …; see README). Repeatable.
    #[arg(long = "property", short = 'p', value_name = "KEY=VALUE")]
    pub properties: Vec<String>,
    /// The command and its arguments (default: /bin/sh).
    #[arg(last = true)]
    pub command: Vec<String>,
}

/// Resource limits and devices (the keys of `berthctl set`).
#[derive(Debug, Args)]
pub struct ResourceOpts {
    /// Memory limit (MemoryMax), like 512M or 2G.
    #[arg(long, value_name = "SIZE")]
    pub memory: Option<String>,
    /// Memory use above which the container is throttled (MemoryHigh).
    #[arg(long, value_name = "SIZE")]
    pub memory_high: Option<String>,
    /// Swap limit (MemorySwapMax).
    #[arg(long, value_name = "SIZE")]
    pub memory_swap: Option<String>,
    /// CPU time as a number of CPUs, like 1.5 (CPUQuota=150%).
    #[arg(long, value_name = "CPUS")]
    pub cpus: Option<String>,
    /// Relative CPU weight, 1 to 10000 (CPUWeight).
    #[arg(long, value_name = "WEIGHT")]
    pub cpu_weight: Option<String>,
    /// CPUs it may run on, like 0-1,3 (AllowedCPUs; needs the unified cgroup hierarchy).
    #[arg(long, value_name = "LIST")]
    pub cpuset: Option<String>,
    /// Maximum number of tasks (TasksMax).
    #[arg(long, value_name = "N")]
    pub pids_limit: Option<String>,
    /// Relative block IO weight, 1 to 10000 (IOWeight).
    #[arg(long, value_name = "WEIGHT")]
    pub io_weight: Option<String>,
    /// Read bandwidth limit of a block device, like /dev/vda:10M. Repeatable.
    #[arg(long, value_name = "DEV:RATE")]
    pub device_read_bps: Vec<String>,
    /// Write bandwidth limit of a block device. Repeatable.
    #[arg(long, value_name = "DEV:RATE")]
    pub device_write_bps: Vec<String>,
    /// Network bandwidth limit (needs a network interface; containers only have loopback yet).
    #[arg(long, value_name = "RATE")]
    pub network_rate: Option<String>,
    /// A host device to make and allow in the container, PATH[:rwm]. Repeatable.
    #[arg(long = "device", value_name = "PATH[:rwm]")]
    pub devices: Vec<String>,
}

impl ResourceOpts {
    /// The settings as (key, value) pairs, keys as `berthctl set` spells them.
    pub fn pairs(&self) -> Vec<(String, String)> {
        let one = [
            ("memory", &self.memory),
            ("memory-high", &self.memory_high),
            ("memory-swap", &self.memory_swap),
            ("cpus", &self.cpus),
            ("cpu-weight", &self.cpu_weight),
            ("cpuset", &self.cpuset),
            ("pids", &self.pids_limit),
            ("io-weight", &self.io_weight),
            ("network-rate", &self.network_rate),
        ];
        let many = [
            ("device-read-bps", &self.device_read_bps),
            ("device-write-bps", &self.device_write_bps),
            ("devices", &self.devices),
        ];
        let mut out: Vec<(String, String)> = one
            .iter()
            .filter_map(|(k, v)| v.as_ref().map(|v| (k.to_string(), v.clone())))
            .collect();
        for (k, list) in many {
            out.extend(list.iter().map(|v| (k.to_string(), v.clone())));
        }
        out
    }
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
    if let Some(e) = &o.entrypoint {
        let argv: Vec<String> = if e.is_empty() {
            vec![]
        } else {
            vec![e.clone()]
        };
        m.insert("Entrypoint".into(), variant(argv)?);
    }
    if !o.env.is_empty() {
        m.insert("Environment".into(), variant(o.env.clone())?);
    }
    if let Some(w) = &o.workdir {
        m.insert("WorkingDirectory".into(), variant(w.as_str())?);
    }
    if let Some(u) = &o.user {
        m.insert("User".into(), variant(u.as_str())?);
    }
    let resources = o.resources.pairs();
    if !resources.is_empty() {
        m.insert("Resources".into(), variant(resources)?);
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
