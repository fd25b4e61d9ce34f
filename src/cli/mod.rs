//! berthctl: a thin CLI over the D-Bus API. Parses arguments, calls `org.berth.berth1`
//! through the proxies generated from [`crate::dbus`], renders tables or JSON. One file per
//! verb; exit codes in [`Exit`].

mod attach;
mod bind;
mod boot;
mod cp;
mod docs;
mod events;
mod exec;
mod format;
mod image;
mod kill;
mod list;
mod logs;
mod network;
mod output;
mod port;
mod remove;
mod run;
mod set;
mod show;
mod start;
mod stats;
mod status;
mod stop;
mod unit;
mod verbs;
mod volume;

use clap::{Parser, Subcommand, ValueEnum};

use crate::dbus::{self, ManagerProxy};

/// berthctl's exit codes (also in README.md). `run` in the foreground returns the payload's
/// own status instead, and 125/126/127 when the payload could not be started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    Success = 0,
    /// berthd, systemd or the kernel refused (org.berth.berth1.Error.Failed and others).
    Failed = 1,
    /// Bad command line (from clap).
    Usage = 2,
    /// No such container or image.
    NotFound = 3,
    /// An argument was rejected (InvalidArgument).
    InvalidArgument = 4,
    /// The container is not in a state that allows this (InvalidState).
    InvalidState = 5,
    /// The name is taken (AlreadyExists).
    AlreadyExists = 6,
    /// Not allowed (PermissionDenied, AccessDenied).
    PermissionDenied = 7,
    /// berthd cannot be reached on the system bus.
    NoDaemon = 8,
    /// `run`: berth failed before the payload ran.
    RunFailed = 125,
    /// `run`: the payload's command exists but cannot be executed.
    RunCannotExecute = 126,
    /// `run`: the payload's command was not found.
    RunNotFound = 127,
}

/// An error to show once on stderr, with its exit code.
#[derive(Debug)]
pub struct CliError {
    pub exit: Exit,
    pub message: String,
}

pub type CliResult<T = u8> = Result<T, CliError>;

impl CliError {
    pub fn new(exit: Exit, message: impl Into<String>) -> Self {
        CliError {
            exit,
            message: message.into(),
        }
    }

    /// An error already printed: only its exit code remains.
    pub fn reported(exit: Exit) -> Self {
        CliError {
            exit,
            message: String::new(),
        }
    }
}

impl From<dbus::Error> for CliError {
    fn from(e: dbus::Error) -> Self {
        use dbus::Error as E;
        let (exit, msg) = match e {
            E::NoSuchContainer(m)
            | E::NoSuchImage(m)
            | E::NoSuchNetwork(m)
            | E::NoSuchVolume(m)
            | E::NoSuchExec(m) => (Exit::NotFound, m),
            E::InvalidArgument(m) => (Exit::InvalidArgument, m),
            E::InvalidState(m) => (Exit::InvalidState, m),
            E::AlreadyExists(m) => (Exit::AlreadyExists, m),
            E::PermissionDenied(m) => (Exit::PermissionDenied, m),
            E::CommandNotFound(m) => (Exit::RunNotFound, m),
            E::CannotExecute(m) => (Exit::RunCannotExecute, m),
            E::LimitExceeded(m) | E::Failed(m) => (Exit::Failed, m),
            E::ZBus(z) => return z.into(),
        };
        CliError::new(exit, msg)
    }
}

impl From<zbus::Error> for CliError {
    fn from(e: zbus::Error) -> Self {
        if let zbus::Error::FDO(f) = &e {
            match f.as_ref() {
                zbus::fdo::Error::ServiceUnknown(_) | zbus::fdo::Error::NameHasNoOwner(_) => {
                    return CliError::new(
                        Exit::NoDaemon,
                        "berthd is not running (org.berth.berth1 is not on the system bus)",
                    );
                }
                zbus::fdo::Error::AccessDenied(_) => return access_denied(),
                _ => {}
            }
        }
        if let zbus::Error::MethodError(name, desc, _) = &e {
            let desc = desc.clone().unwrap_or_default();
            return match name.as_str() {
                "org.freedesktop.DBus.Error.ServiceUnknown"
                | "org.freedesktop.DBus.Error.NameHasNoOwner" => CliError::new(
                    Exit::NoDaemon,
                    "berthd is not running (org.berth.berth1 is not on the system bus)",
                ),
                // Activation failed: berthd.service is masked, missing or failed to start.
                n if n.starts_with("org.freedesktop.DBus.Error.Spawn.")
                    || n.starts_with("org.freedesktop.systemd1.") =>
                {
                    CliError::new(
                        Exit::NoDaemon,
                        format!("berthd cannot be started: {}", one_line(&desc)),
                    )
                }
                "org.freedesktop.DBus.Error.AccessDenied" => access_denied(),
                _ => CliError::new(Exit::Failed, format!("{name}: {desc}")),
            };
        }
        CliError::new(Exit::Failed, e.to_string())
    }
}

/// The polkit action the running verb needs, for the message of a refusal by the bus.
static ACTION: std::sync::OnceLock<crate::polkit::Action> = std::sync::OnceLock::new();

/// What a caller sees when the bus itself refused the call (dbus-daemon's policy): one line
/// naming what was refused and how to get the right, never the daemon's rule dump.
fn access_denied() -> CliError {
    let action = ACTION
        .get()
        .copied()
        .unwrap_or(crate::polkit::Action::ManageContainers);
    CliError::new(
        Exit::PermissionDenied,
        format!(
            "permission denied: {} is not permitted to this user; be root, or be granted the polkit action {}",
            action.what(),
            action.id()
        ),
    )
}

/// The first line of a message, for errors that quote other programs.
fn one_line(s: &str) -> &str {
    s.lines().next().unwrap_or("").trim()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Format {
    #[default]
    Table,
    Json,
}

#[derive(Debug, Parser)]
#[command(
    name = "berthctl",
    version,
    about = "Control berth containers over D-Bus"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
#[command(defer = true)]
pub enum Command {
    /// Create and start a container; wait for it unless --detach.
    Run(run::RunArgs),
    /// Define a container without starting it.
    Create(run::CreateArgs),
    /// Start a defined container.
    Start(start::StartArgs),
    /// Stop a container: SIGTERM, then SIGKILL after the timeout.
    Stop(stop::StopArgs),
    /// Send a signal to a container.
    Kill(kill::KillArgs),
    /// Power a booted container off (SIGRTMIN+4 to its init, as machinectl poweroff).
    Poweroff(boot::BootArgs),
    /// Reboot a booted container (SIGINT to its init, as machinectl reboot).
    Reboot(boot::BootArgs),
    /// Log in to a running container on a new terminal of its own (login(1), as a getty
    /// runs it; machinectl login). `login NAME` does the same for a container NAME.
    Console(boot::LoginArgs),
    /// Remove a container's definition and writable layer.
    #[command(alias = "rm")]
    Remove(remove::RemoveArgs),
    /// List containers (podman's ps: -a, -q, --filter, --format, --no-trunc).
    #[command(visible_alias = "ps", alias = "ls")]
    List(list::ListArgs),
    /// Stop and start containers again.
    Restart(verbs::RestartArgs),
    /// Give a stopped container a new name.
    Rename { name: String, new_name: String },
    /// Freeze a running container's processes (systemd's freezer; unified cgroups only).
    Pause(verbs::NamesArgs),
    /// Thaw a paused container.
    Unpause(verbs::NamesArgs),
    /// Wait for containers to exit; print each exit status.
    Wait(verbs::NamesArgs),
    /// Follow container and image events as they happen (podman's events).
    Events(events::EventsArgs),
    /// A container's processes: user, PID inside and on the host, command.
    Top { name: String },
    /// Everything known of containers or images, as JSON.
    Inspect(verbs::NamesArgs),
    /// Container maintenance: prune.
    Container {
        #[command(subcommand)]
        verb: verbs::ContainerVerb,
    },
    /// Disk use and cleanup: df, prune.
    System {
        #[command(subcommand)]
        verb: verbs::SystemVerb,
    },
    /// Apply the declarative definitions in /etc/berth/containers/NAME.toml.
    Reload,
    /// Check a declarative definition and print the plan berth would apply (nothing is made).
    Verify { file: String },
    /// Pull an image (same as `image pull`).
    Pull {
        /// [REGISTRY/]REPOSITORY[:TAG|@DIGEST]
        reference: String,
        /// The local tag (default: the reference itself).
        name: Option<String>,
        /// Talk plain HTTP to the registry (only for registries you trust on this network).
        #[arg(long)]
        insecure: bool,
        /// Credentials in docker/podman auth.json format.
        #[arg(long, value_name = "FILE")]
        authfile: Option<String>,
        /// No progress output.
        #[arg(long, short = 'q')]
        quiet: bool,
    },
    /// Push an image (same as `image push`).
    Push(image::PushArgs),
    /// Save images as an archive (same as `image save`).
    Save(image::SaveArgs),
    /// Load images from an archive (same as `image load`).
    Load(image::LoadArgs),
    /// Log in to container NAME's console (as `console`) when berthd has a container of that
    /// name and no registry option is given; otherwise log in to registry NAME (same as
    /// `image login`).
    Login(image::LoginArgs),
    /// Log out of a registry (same as `image logout`).
    Logout(image::LogoutArgs),
    /// Remove images (same as `image rm`).
    Rmi {
        #[arg(required = true)]
        names: Vec<String>,
        #[arg(long, short = 'f')]
        force: bool,
    },
    /// Names for shell completion (containers, images, all).
    #[command(name = "__complete", hide = true)]
    Complete { what: String },
    /// Write completions and man pages below DIR (make install).
    #[command(name = "__generate", hide = true)]
    Generate { dir: String },
    /// Show a container's state, unit, leader, uptime and processes.
    Status(status::StatusArgs),
    /// Show a container's properties.
    Show(show::ShowArgs),
    /// Change resource limits of a running container, live.
    Set(set::SetArgs),
    /// Show resource usage of running containers, refreshing.
    Stats(stats::StatsArgs),
    /// Manage images: list, show, import-fs, import-tar, import-oci, pull, remove, rename,
    /// clone, tag, export.
    Image(image::ImageArgs),
    /// List images (same as `image list`).
    Images(image::ListArgs),
    /// Manage networks: create, ls, inspect, rm.
    Network(network::NetworkArgs),
    /// List a container's published ports.
    Port(port::PortArgs),
    /// Start the container at boot: enable berth@NAME.service (through machines.target).
    Enable(unit::EnableArgs),
    /// No longer start the container at boot.
    Disable(unit::EnableArgs),
    /// berth@.service's ExecStart: run NAME held by the calling unit (not for use by hand).
    #[command(name = "unit-start")]
    UnitStart(unit::UnitStartArgs),
    /// Run a command in a running container (its namespaces, cgroup, user and confinement).
    Exec(exec::ExecArgs),
    /// An interactive shell in a running container (the user's shell, else /bin/sh).
    Shell(exec::ShellArgs),
    /// Show a container's output from the journal.
    Logs(logs::LogsArgs),
    /// Copy files and directories into or out of a running container.
    Cp(cp::CpArgs),
    /// Mount a host file or directory into a running container.
    Bind(bind::BindArgs),
    /// Manage named volumes: create, ls, rm, inspect.
    Volume(volume::VolumeArgs),
    /// Write a container's root file system (its changes over its image) as a tarball.
    Export {
        name: String,
        /// The tarball to write ("-": standard output).
        file: String,
    },
}

/// Connect to the system bus (`DBUS_SYSTEM_BUS_ADDRESS` overrides) and berthd's manager.
pub async fn manager() -> CliResult<(zbus::Connection, ManagerProxy<'static>)> {
    let conn = zbus::Connection::system().await.map_err(|e| {
        CliError::new(
            Exit::NoDaemon,
            format!("cannot connect to the system bus: {e}"),
        )
    })?;
    let proxy = ManagerProxy::new(&conn).await?;
    Ok((conn, proxy))
}

/// Every container (`ListContainers`), with `fields` decoded by [`dbus::listing::decode`]:
/// zbus's generic decoding of 1000 records was a sixth of `ps -a`'s time. A reply of another
/// signature is left to zbus (all fields), which says what is wrong with it.
pub async fn list_containers(
    proxy: &ManagerProxy<'_>,
    fields: dbus::listing::Fields,
) -> CliResult<Vec<dbus::ContainerInfo>> {
    let msg = proxy
        .inner()
        .call_method("ListContainers", &())
        .await
        .map_err(dbus::Error::from)?;
    let body = msg.body();
    if body.signature().to_string() == dbus::listing::SIGNATURE {
        let data = body.data();
        return dbus::listing::decode(data, data.context().endian(), fields)
            .map_err(|e| CliError::new(Exit::Failed, e.to_string()));
    }
    Ok(body
        .deserialize::<Vec<dbus::ContainerInfo>>()
        .map_err(dbus::Error::from)?)
}

/// Run berthctl; returns the process exit code.
pub fn main() -> u8 {
    let cli = match Cli::try_parse_from(run::mark_command_only(std::env::args_os().collect())) {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { Exit::Usage as u8 } else { 0 };
            let _ = e.print();
            return code;
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("berthctl: {e}");
            return Exit::Failed as u8;
        }
    };
    let images = matches!(
        cli.command,
        Command::Image(_)
            | Command::Images(_)
            | Command::Pull { .. }
            | Command::Push(_)
            | Command::Save(_)
            | Command::Load(_)
            | Command::Login(_)
            | Command::Logout(_)
            | Command::Rmi { .. }
    );
    if ACTION
        .set(if images {
            crate::polkit::Action::ManageImages
        } else {
            crate::polkit::Action::ManageContainers
        })
        .is_err()
    {
        // Set once per process; a second main() (tests) keeps the first.
    }
    let result = rt.block_on(async {
        match cli.command {
            Command::Run(a) => run::run(a).await,
            Command::Create(a) => run::create(a).await,
            Command::Start(a) => start::run(a).await,
            Command::Stop(a) => stop::run(a).await,
            Command::Kill(a) => kill::run(a).await,
            Command::Poweroff(a) => boot::signal(a, false).await,
            Command::Reboot(a) => boot::signal(a, true).await,
            Command::Console(a) => boot::login(a).await,
            Command::Remove(a) => remove::run(a).await,
            Command::List(a) => list::run(a).await,
            Command::Status(a) => status::run(a).await,
            Command::Show(a) => show::run(a).await,
            Command::Set(a) => set::run(a).await,
            Command::Stats(a) => stats::run(a).await,
            Command::Image(a) => image::run(a).await,
            Command::Images(a) => image::list(a).await,
            Command::Restart(a) => verbs::restart(a).await,
            Command::Rename { name, new_name } => verbs::rename(name, new_name).await,
            Command::Pause(a) => verbs::pause(a, true).await,
            Command::Unpause(a) => verbs::pause(a, false).await,
            Command::Wait(a) => verbs::wait(a).await,
            Command::Events(a) => events::run(a).await,
            Command::Top { name } => verbs::top(name).await,
            Command::Inspect(a) => verbs::inspect(a).await,
            Command::Container {
                verb: verbs::ContainerVerb::Prune { .. },
            } => {
                let (_conn, proxy) = manager().await?;
                verbs::container_prune(&proxy, false).await.map(|_| 0)
            }
            Command::System { verb } => verbs::system(verb).await,
            Command::Reload => verbs::reload().await,
            Command::Verify { file } => verbs::verify(file).await,
            Command::Pull {
                reference,
                name,
                insecure,
                authfile,
                quiet,
            } => image::pull(reference, name, insecure, authfile, quiet).await,
            Command::Push(a) => image::push(a).await,
            Command::Save(a) => image::save(a).await,
            Command::Load(a) => image::load(a).await,
            Command::Login(a) => boot::login_or_registry(a).await,
            Command::Logout(a) => image::logout(a).await,
            Command::Rmi { names, force } => image::remove(names, force).await,
            Command::Complete { what } => verbs::complete(what).await,
            Command::Generate { dir } => docs::generate(&dir),
            Command::Network(a) => network::run(a).await,
            Command::Port(a) => port::run(a).await,
            Command::Enable(a) => unit::enable(a, true).await,
            Command::Disable(a) => unit::enable(a, false).await,
            Command::UnitStart(a) => unit::unit_start(a).await,
            Command::Exec(a) => exec::exec(a).await,
            Command::Shell(a) => exec::shell(a).await,
            Command::Logs(a) => logs::run(a).await,
            Command::Cp(a) => cp::run(a).await,
            Command::Volume(a) => volume::run(a).await,
            Command::Bind(a) => bind::run(a).await,
            Command::Export { name, file } => {
                let fd = image::output_fd(&file)?;
                let (_conn, proxy) = manager().await?;
                proxy.export_container(name, fd.into()).await?;
                Ok(0)
            }
        }
    });
    // What the runtime still holds (the bus connection's tasks and socket) goes with the
    // process: tearing it down was a tenth of a `berthctl exec`.
    std::mem::forget(rt);
    match result {
        Ok(code) => code,
        Err(e) => {
            if !e.message.is_empty() {
                eprintln!("berthctl: {}", e.message);
            }
            e.exit as u8
        }
    }
}
