//! `berthctl run` and `berthctl create`.

use std::collections::HashMap;
use std::os::fd::OwnedFd;

use clap::Args;
use futures_util::FutureExt;
use zbus::{OwnedVariant, Variant};

use super::{CliError, CliResult, Exit, manager};
use crate::dbus::{ManagerProxy, Options};
use crate::spec::limits;

// What defines a container (shared by run and create). This and the groups flattened into it
// have plain comments: with the verbs' arguments deferred (`#[command(defer)]`), a doc comment
// here would become the about text of run and create.
#[derive(Debug, Args)]
pub struct ContainerOpts {
    /// Container name (default: a generated one).
    #[arg(long)]
    pub name: Option<String>,
    /// Image to run (default: the built-in "default" image); the same as giving IMAGE.
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
    pub security: SecurityOpts,
    #[command(flatten)]
    pub resources: ResourceOpts,
    #[command(flatten)]
    pub network: NetworkOpts,
    /// Raw scope property KEY=VALUE, as systemd-run takes them (MemoryLow, IOReadIOPSMax,
    /// DeviceAllow, RuntimeMaxSec, …; see README). Repeatable. (-p is --publish.)
    #[arg(long = "property", value_name = "KEY=VALUE")]
    pub properties: Vec<String>,
    #[command(flatten)]
    pub storage: StorageOpts,
    /// Where stdout and stderr go when berthctl does not pass them (detached, `start`,
    /// `berth@`): journald (default), none, or passthrough.
    #[arg(long = "log-driver", value_name = "DRIVER")]
    pub log_driver: Option<String>,
    /// Boot an OS container, as systemd-nspawn -b: the image's init (/sbin/init, else
    /// systemd) is its PID 1, with a console pty and a cgroup subtree of its own; the command,
    /// if any, is the init's arguments (or the init, when it starts with /).
    #[arg(long)]
    pub boot: bool,
    /// A label KEY=VALUE, shown by ps and inspect and matched by ps --filter label=. Repeatable.
    #[arg(long = "label", short = 'l', value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// Give the payload a NOTIFY_SOCKET (sd_notify); the container is ready once it sends
    /// READY=1, and its STATUS= text is shown by status.
    #[arg(long)]
    pub notify_ready: bool,
    /// Restart policy, carried out by berthd: no (default), on-failure[:N], always,
    /// unless-stopped.
    #[arg(long, value_name = "POLICY")]
    pub restart: Option<String>,
    /// Health check command, run with /bin/sh -c in the container by berthd ("none": not
    /// even the image's HEALTHCHECK).
    #[arg(long, value_name = "COMMAND", help_heading = "Health")]
    pub health_cmd: Option<String>,
    /// Time between health checks (default 30s, or the image's).
    #[arg(long, value_name = "DURATION", help_heading = "Health")]
    pub health_interval: Option<String>,
    /// How long one check may take (default 30s, or the image's).
    #[arg(long, value_name = "DURATION", help_heading = "Health")]
    pub health_timeout: Option<String>,
    /// Failures in a row that make it unhealthy (default 3, or the image's).
    #[arg(long, value_name = "N", help_heading = "Health")]
    pub health_retries: Option<u32>,
    /// Failures in this time after the start do not count (default 0s, or the image's).
    #[arg(long, value_name = "DURATION", help_heading = "Health")]
    pub health_start_period: Option<String>,
    /// When it turns unhealthy: none (default), kill or restart.
    #[arg(long, value_name = "ACTION", help_heading = "Health")]
    pub health_on_failure: Option<String>,
    /// IMAGE, then the command and its arguments (default: the image's, else /bin/sh), as
    /// podman takes them; with --image or --directory every word is the command.
    #[arg(
        value_name = "IMAGE [COMMAND [ARG]...]",
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    pub args: Vec<String>,
    /// Set by [`mark_command_only`]: a `--` came before any positional word, so every word is
    /// the command (berth's older spelling `run -- CMD` runs the default image).
    #[arg(long = COMMAND_ONLY_FLAG, hide = true)]
    pub command_only: bool,
}

/// The hidden flag [`mark_command_only`] inserts before the first `--` of `run`/`create`.
const COMMAND_ONLY_FLAG: &str = "berth-command-only";

/// Mark the first `--` of a `run` or `create` command line, so that `run -- CMD` keeps its
/// meaning (CMD in the default image) beside podman's `run IMAGE CMD`: clap consumes a `--`
/// without a trace, and a trailing positional cannot be followed by a `last` one.
pub fn mark_command_only(mut argv: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let verb = argv.get(1).and_then(|v| v.to_str());
    if !matches!(verb, Some("run" | "create")) {
        return argv;
    }
    if let Some(i) = argv.iter().skip(2).position(|w| w == "--") {
        argv.insert(i + 2, format!("--{COMMAND_ONLY_FLAG}").into());
    }
    argv
}

impl ContainerOpts {
    /// The image and command the positional words mean: `IMAGE [COMMAND…]`, or only the
    /// command when --image or --directory names the root or when every word came after `--`.
    pub fn image_and_command(&self) -> (Option<String>, Vec<String>) {
        let mut args = self.args.clone();
        // The mark landed among the command's words when `--` came after IMAGE: it was not
        // the user's.
        let mark = format!("--{COMMAND_ONLY_FLAG}");
        if let Some(i) = args.iter().position(|w| *w == mark) {
            args.remove(i);
        }
        if self.command_only || self.image.is_some() || self.directory.is_some() || args.is_empty()
        {
            return (self.image.clone(), args);
        }
        let image = args.remove(0);
        // `run IMAGE -- CMD`: the `--` only separates.
        if args.first().is_some_and(|w| w == "--") {
            args.remove(0);
        }
        (Some(image), args)
    }
}

// Volumes, bind mounts, tmpfs and the root's writability (see `crate::volume::mounts`).
#[derive(Debug, Args)]
pub struct StorageOpts {
    /// HOST-PATH:PATH[:ro|rw][,idmap], VOLUME:PATH[:OPTS] (a named volume) or PATH (an
    /// anonymous volume). Repeatable.
    #[arg(
        long = "volume",
        short = 'v',
        value_name = "SPEC",
        help_heading = "Storage"
    )]
    pub volumes: Vec<String>,
    /// type=bind|volume|tmpfs,source=…,target=…[,readonly][,idmap] (docker's syntax).
    /// Repeatable.
    #[arg(long = "mount", value_name = "SPEC", help_heading = "Storage")]
    pub mounts: Vec<String>,
    /// A tmpfs on PATH[:size=…,mode=…]. Repeatable.
    #[arg(long = "tmpfs", value_name = "PATH[:OPTS]", help_heading = "Storage")]
    pub tmpfs: Vec<String>,
    /// A read-only root file system, with a writable /run and /tmp.
    #[arg(long = "read-only", help_heading = "Storage")]
    pub read_only: bool,
    /// Discard the writable layer when the container exits: each start begins from the image.
    #[arg(long, help_heading = "Storage")]
    pub ephemeral: bool,
}

// How the container is confined (the `[security]` table of its definition).
#[derive(Debug, Args)]
pub struct SecurityOpts {
    /// User namespace: auto (default: 65536 IDs of its own), UID:COUNT (an explicit host
    /// range), or host (none: root in the container is root on the host).
    #[arg(long, value_name = "MODE", help_heading = "Security")]
    pub userns: Option<String>,
    /// Add a capability to the default set (NET_ADMIN, CAP_SYS_PTRACE, all). Repeatable.
    #[arg(long = "cap-add", value_name = "CAP", help_heading = "Security")]
    pub cap_add: Vec<String>,
    /// Drop a capability from the default set (all: none at all). Repeatable.
    #[arg(long = "cap-drop", value_name = "CAP", help_heading = "Security")]
    pub cap_drop: Vec<String>,
    /// Set no_new_privs: setuid binaries and file capabilities gain nothing.
    #[arg(long = "no-new-privileges", help_heading = "Security")]
    pub no_new_privileges: bool,
    /// A resource limit of the payload, NAME=SOFT[:HARD] (nofile=1024:4096). Repeatable.
    #[arg(
        long = "ulimit",
        value_name = "NAME=SOFT[:HARD]",
        help_heading = "Security"
    )]
    pub ulimits: Vec<String>,
    /// seccomp=unconfined|PROFILE.json, label=disable|level:s0:c1,c2|type:T, unsafe-caps,
    /// no-new-privileges. Repeatable.
    #[arg(long = "security-opt", value_name = "OPT", help_heading = "Security")]
    pub security_opt: Vec<String>,
}

// How the container is networked (the `[network]` table of its definition).
#[derive(Debug, Args)]
pub struct NetworkOpts {
    /// bridge (default: the network "berth" on bridge berth0, with NAT), none (loopback
    /// only), host, container:NAME, veth, macvlan:IFACE, or a network made with `berthctl
    /// network create`.
    #[arg(long, value_name = "MODE", help_heading = "Network")]
    pub network: Option<String>,
    /// Publish a port: [HOSTIP:][HOSTPORT:]CONTAINERPORT[/tcp|/udp], ranges as 8000-8010:80-90,
    /// IPv6 host addresses in brackets ([2001:db8::5]:8080:80; not [::1]). Repeatable.
    #[arg(
        long = "publish",
        short = 'p',
        value_name = "[HOSTIP:][HOSTPORT:]PORT[/PROTO]",
        help_heading = "Network"
    )]
    pub publish: Vec<String>,
    /// Publish every port the image EXPOSEs on a free host port.
    #[arg(long = "publish-all", short = 'P', help_heading = "Network")]
    pub publish_all: bool,
    /// The container's IPv4 address on its bridge network (default: a free one, kept).
    #[arg(long = "ip", value_name = "ADDRESS", help_heading = "Network")]
    pub ip: Option<String>,
    /// The container's IPv6 address on its bridge network.
    #[arg(long = "ip6", value_name = "ADDRESS", help_heading = "Network")]
    pub ip6: Option<String>,
    /// Move a host network interface into the container while it runs (it returns to the
    /// host when the container stops). Repeatable.
    #[arg(
        long = "network-interface",
        value_name = "IFACE",
        help_heading = "Network"
    )]
    pub interfaces: Vec<String>,
    /// Allow --network host together with a user namespace (see README: the container's
    /// root then has no privilege over the host's network and cannot bind ports below 1024).
    #[arg(long = "network-host-userns", help_heading = "Network")]
    pub host_userns: bool,
}

// Resource limits and devices: one flag per key of [`limits::KEYS`] (the keys of
// `berthctl set`), made from that table so the list exists once.
#[derive(Debug, Clone, Default)]
pub struct ResourceOpts {
    /// (key, value) in the order given.
    pub pairs: Vec<(String, String)>,
}

impl ResourceOpts {
    /// The settings as (key, value) pairs, keys as `berthctl set` spells them.
    pub fn pairs(&self) -> Vec<(String, String)> {
        self.pairs.clone()
    }
}

fn arg_id(k: &limits::Key) -> &'static str {
    k.name
}

impl clap::FromArgMatches for ResourceOpts {
    fn from_arg_matches(m: &clap::ArgMatches) -> Result<Self, clap::Error> {
        let mut pairs = Vec::new();
        for k in limits::KEYS {
            if let Some(vals) = m.get_many::<String>(arg_id(k)) {
                pairs.extend(vals.map(|v| (k.name.to_string(), v.clone())));
            }
        }
        Ok(ResourceOpts { pairs })
    }
    fn update_from_arg_matches(&mut self, m: &clap::ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

impl clap::Args for ResourceOpts {
    fn augment_args(mut cmd: clap::Command) -> clap::Command {
        for k in limits::KEYS {
            let value = match k.kind {
                limits::Kind::Bytes => "SIZE",
                limits::Kind::Cpus => "CPUS",
                limits::Kind::Weight => "WEIGHT",
                limits::Kind::CpuSet => "LIST",
                limits::Kind::Count => "N",
                limits::Kind::DeviceRate => "DEV:RATE",
                limits::Kind::Device => "PATH[:rwm]",
                limits::Kind::Rate => "RATE",
            };
            let mut a = clap::Arg::new(arg_id(k))
                .long(k.flag)
                .value_name(value)
                .help(k.help)
                .help_heading("Resources");
            a = if k.list {
                a.action(clap::ArgAction::Append)
            } else {
                a.action(clap::ArgAction::Set)
            };
            cmd = cmd.arg(a);
        }
        cmd
    }
    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub opts: ContainerOpts,
    /// Give the container a terminal of its own (a pty in its devpts), proxied to ours.
    #[arg(long, short = 't')]
    pub tty: bool,
    /// Keep standard input open: pass our input to the container.
    #[arg(long, short = 'i')]
    pub interactive: bool,
    /// Start it and print its name instead of waiting for it.
    #[arg(long, short = 'd')]
    pub detach: bool,
    /// Validate and print the plan berth would apply (root, mounts, limits, namespaces, user,
    /// capabilities, seccomp), as JSON; nothing is created.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    #[command(flatten)]
    pub opts: ContainerOpts,
}

pub(super) fn generated_name() -> String {
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

pub(super) fn create_options(o: &ContainerOpts) -> CliResult<Options> {
    let mut m = Options::default();
    let (image, command) = o.image_and_command();
    if let Some(i) = &image {
        m.insert("Image", variant(i.as_str())?);
    }
    if let Some(d) = &o.directory {
        // Resolve relative paths here, where the caller's working directory is known.
        let abs = std::path::absolute(d)
            .map_err(|e| CliError::new(Exit::InvalidArgument, format!("{d}: {e}")))?;
        m.insert("Directory", variant(abs.to_string_lossy().into_owned())?);
    }
    if let Some(h) = &o.hostname {
        m.insert("Hostname", variant(h.as_str())?);
    }
    if !command.is_empty() {
        m.insert("Command", variant(command)?);
    }
    if !o.labels.is_empty() {
        m.insert("Labels", variant(super::verbs::labels(&o.labels)?)?);
    }
    if o.rm {
        m.insert("AutoRemove", variant(true)?);
    }
    if o.notify_ready {
        m.insert("NotifyReady", variant(true)?);
    }
    if let Some(r) = &o.restart {
        m.insert("Restart", variant(r.as_str())?);
    }
    for (key, val) in [
        ("HealthCmd", &o.health_cmd),
        ("HealthInterval", &o.health_interval),
        ("HealthTimeout", &o.health_timeout),
        ("HealthStartPeriod", &o.health_start_period),
        ("HealthOnFailure", &o.health_on_failure),
    ] {
        if let Some(v) = val {
            m.insert(key, variant(v.as_str())?);
        }
    }
    if let Some(n) = o.health_retries {
        m.insert("HealthRetries", variant(n)?);
    }
    if let Some(e) = &o.entrypoint {
        let argv: Vec<String> = if e.is_empty() {
            vec![]
        } else {
            vec![e.clone()]
        };
        m.insert("Entrypoint", variant(argv)?);
    }
    if !o.env.is_empty() {
        m.insert("Environment", variant(o.env.clone())?);
    }
    if let Some(w) = &o.workdir {
        m.insert("WorkingDirectory", variant(w.as_str())?);
    }
    if let Some(u) = &o.user {
        m.insert("User", variant(u.as_str())?);
    }
    let sec = &o.security;
    if let Some(u) = &sec.userns {
        m.insert("UserNamespace", variant(u.as_str())?);
    }
    for (key, list) in [
        ("CapAdd", &sec.cap_add),
        ("CapDrop", &sec.cap_drop),
        ("Ulimits", &sec.ulimits),
    ] {
        if !list.is_empty() {
            m.insert(key, variant(list.clone())?);
        }
    }
    if !sec.security_opt.is_empty() {
        // Relative seccomp profiles are the caller's: make them absolute here.
        let mut opts = Vec::with_capacity(sec.security_opt.len());
        for o in &sec.security_opt {
            match o.split_once(['=', ':']) {
                Some(("seccomp", p)) if !matches!(p, "unconfined" | "default" | "builtin") => {
                    let abs = std::path::absolute(p)
                        .map_err(|e| CliError::new(Exit::InvalidArgument, format!("{p}: {e}")))?;
                    opts.push(format!("seccomp={}", abs.display()));
                }
                _ => opts.push(o.clone()),
            }
        }
        m.insert("SecurityOpt", variant(opts)?);
    }
    if sec.no_new_privileges {
        m.insert("NoNewPrivileges", variant(true)?);
    }
    let n = &o.network;
    if let Some(mode) = &n.network {
        m.insert("Network", variant(mode.as_str())?);
    }
    if !n.publish.is_empty() {
        m.insert("Publish", variant(n.publish.clone())?);
    }
    if n.publish_all {
        m.insert("PublishAll", variant(true)?);
    }
    if let Some(ip) = &n.ip {
        m.insert("IPAddress", variant(ip.as_str())?);
    }
    if let Some(ip) = &n.ip6 {
        m.insert("IPv6Address", variant(ip.as_str())?);
    }
    if !n.interfaces.is_empty() {
        m.insert("NetworkInterfaces", variant(n.interfaces.clone())?);
    }
    if n.host_userns {
        m.insert("HostNetworkUserNamespace", variant(true)?);
    }
    let resources = o.resources.pairs();
    if !resources.is_empty() {
        m.insert("Resources", variant(resources)?);
    }
    let st = &o.storage;
    if !st.volumes.is_empty() {
        // Relative host paths are the caller's: make them absolute here.
        let mut v = Vec::with_capacity(st.volumes.len());
        for spec in &st.volumes {
            match spec.split_once(':') {
                Some((src, rest)) if src.starts_with("./") || src.starts_with("../") => {
                    let abs = std::path::absolute(src)
                        .map_err(|e| CliError::new(Exit::InvalidArgument, format!("{src}: {e}")))?;
                    v.push(format!("{}:{rest}", abs.display()));
                }
                _ => v.push(spec.clone()),
            }
        }
        m.insert("Volumes", variant(v)?);
    }
    if !st.mounts.is_empty() {
        m.insert("Mounts", variant(st.mounts.clone())?);
    }
    if !st.tmpfs.is_empty() {
        m.insert("Tmpfs", variant(st.tmpfs.clone())?);
    }
    if st.read_only {
        m.insert("ReadOnly", variant(true)?);
    }
    if st.ephemeral {
        m.insert("Ephemeral", variant(true)?);
    }
    if let Some(d) = &o.log_driver {
        m.insert("LogDriver", variant(d.as_str())?);
    }
    if o.boot {
        m.insert("Boot", variant(true)?);
    }
    if !o.properties.is_empty() {
        let mut props = HashMap::new();
        for p in &o.properties {
            let (k, v) = crate::spec::props::split_assignment(p)
                .map_err(|e| CliError::new(Exit::InvalidArgument, e.to_string()))?;
            props.insert(k.to_string(), v.to_string());
        }
        m.insert("Properties", variant(props)?);
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

pub async fn run(a: RunArgs) -> CliResult {
    let as_run_error = |e: CliError| match e.exit {
        Exit::RunNotFound | Exit::RunCannotExecute | Exit::NoDaemon => e,
        _ => CliError {
            exit: Exit::RunFailed,
            message: e.message,
        },
    };
    let (_conn, proxy) = manager().await.map_err(as_run_error)?;
    if a.dry_run {
        let name = a.opts.name.clone().unwrap_or_else(generated_name);
        let plan = proxy.plan_container(name, create_options(&a.opts)?).await?;
        super::output::print_lines([plan]);
        return Ok(0);
    }
    let name = define(&proxy, &a.opts).await.map_err(as_run_error)?;
    let mut options = Options::default();
    let mut relays = None;
    if !a.detach {
        // A foreground container ends with berthctl: killed or cut off, berthctl leaves the
        // bus and berthd hangs the container up (then stops it; `--rm` removes it).
        options.insert("EndWithCaller", variant(true)?);
        if a.tty {
            super::attach::terminal_size(&mut options)?;
        } else {
            relays = Some(super::attach::stdio_options(&mut options, a.interactive)?);
        }
    }
    if a.tty && a.detach {
        // `-dt`: a terminal of its own that berthd holds; its output goes to the journal.
        options.insert("Terminal", variant(true)?);
        super::attach::terminal_size(&mut options)?;
    }
    let started = if a.tty && !a.detach {
        proxy
            .start_container_terminal(name.clone(), options)
            .await
            .map(|fd| Some(OwnedFd::from(fd)))
    } else {
        proxy
            .start_container(name.clone(), options)
            .await
            .map(|()| None)
    };
    let master = match started {
        Ok(m) => m,
        Err(e) => {
            // `run` made this container; a failed start leaves nothing behind.
            if let Err(r) = proxy.remove_container(name.clone(), true).await {
                eprintln!("berthctl: cannot remove {name} after its failed start: {r}, ignoring");
            }
            return Err(as_run_error(e.into()));
        }
    };
    if a.detach {
        super::output::print_lines([name]);
        return Ok(0);
    }
    if let Some(master) = master {
        super::attach::terminal_until_closed(master, a.interactive, |sig| {
            let (proxy, name) = (&proxy, name.clone());
            async move {
                // It may have just exited; the wait below says how.
                if let Err(e) = proxy.kill_container(name, "leader".into(), sig).await
                    && !matches!(e, crate::dbus::Error::InvalidState(_))
                {
                    eprintln!("berthctl: cannot pass signal {sig} on: {e}, ignoring");
                }
                Ok(())
            }
        })
        .await?;
    }
    let r = wait_forwarding_signals(&proxy, &name)
        .await
        .map_err(as_run_error);
    if let Some(relays) = relays {
        relays.finish(std::time::Duration::from_secs(1));
    }
    r
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

#[cfg(test)]
mod tests {
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct T {
        #[command(flatten)]
        opts: super::ContainerOpts,
    }

    fn parse(args: &[&str]) -> (Option<String>, Vec<String>) {
        let argv = ["berthctl", "run"]
            .iter()
            .chain(args)
            .map(|a| a.into())
            .collect();
        let argv = super::mark_command_only(argv);
        let t = T::try_parse_from(argv.into_iter().skip(1)).unwrap();
        t.opts.image_and_command()
    }

    #[test]
    fn podman_order_and_the_older_spellings() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            parse(&["--rm", "alpine", "echo", "hi"]),
            (Some("alpine".into()), s(&["echo", "hi"]))
        );
        // Words after IMAGE are the command's, flags included.
        assert_eq!(
            parse(&["alpine", "ls", "-l", "--rm"]),
            (Some("alpine".into()), s(&["ls", "-l", "--rm"]))
        );
        assert_eq!(
            parse(&["alpine:3.20"]),
            (Some("alpine:3.20".into()), vec![])
        );
        assert_eq!(parse(&["--", "/bin/true"]), (None, s(&["/bin/true"])));
        assert_eq!(
            parse(&["--image", "web", "--", "sh", "-c", "x"]),
            (Some("web".into()), s(&["sh", "-c", "x"]))
        );
        assert_eq!(
            parse(&["--directory", "/srv", "/bin/sh"]),
            (None, s(&["/bin/sh"]))
        );
        assert_eq!(parse(&[]), (None, vec![]));
        assert_eq!(
            parse(&["-e", "A=1", "web", "--", "x"]),
            (Some("web".into()), s(&["x"]))
        );
        assert_eq!(
            parse(&["--rm", "--name", "a", "--", "sh", "-c", "x -- y"]),
            (None, s(&["sh", "-c", "x -- y"]))
        );
    }
}
