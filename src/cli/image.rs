//! `berthctl image VERB` (and `berthctl images`): list, show, import-fs, import-tar,
//! import-oci, pull, push, save, load, prune, login, logout, remove, rename, clone, tag,
//! export. Long operations show progress from the `ImageProgress` signal (bytes, layers,
//! speed) on a terminal, and nothing with `--quiet` or when stderr is not a terminal.
//!
//! Image names are references (`web`, `uxweb:1.0`, `registry:5000/team/app:1.2`,
//! `app@sha256:…`, an image ID); see [`crate::image::reference`].

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::time::Duration;

use clap::{Args, Subcommand};
use futures_util::StreamExt;
use serde::Serialize;
use zbus::OwnedVariant;

use super::output::{self, timestamp};
use super::{CliError, CliResult, Exit, Format, manager};
use crate::dbus::{ImageInfo, ImageProxy, ManagerProxy, Options};

#[derive(Debug, Args)]
pub struct ImageArgs {
    #[command(subcommand)]
    pub verb: ImageVerb,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[arg(long, short = 'o', value_enum, default_value_t)]
    pub output: Format,
    /// Only print names.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The directory, tarball or archive (a path on this machine).
    pub source: String,
    /// The new image's name.
    pub name: String,
    /// No progress output.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

#[derive(Debug, Subcommand)]
pub enum ImageVerb {
    /// List images.
    #[command(alias = "ls")]
    List(ListArgs),
    /// Show an image's properties and config.
    Show {
        name: String,
        #[arg(long, short = 'o', value_enum, default_value_t)]
        output: Format,
    },
    /// Import a directory tree as a one-layer image.
    ImportFs(ImportArgs),
    /// Import a root file system tarball (gzip, zstd, xz or plain; detected by content).
    ImportTar(ImportArgs),
    /// Import a docker-save archive, an OCI archive or an OCI layout directory.
    ImportOci(ImportArgs),
    /// Pull an image from an OCI distribution registry.
    Pull {
        /// [REGISTRY/]REPOSITORY[:TAG|@DIGEST]
        reference: String,
        /// The local tag (default: the reference itself, as podman names a pulled image).
        name: Option<String>,
        /// Talk plain HTTP to the registry (only for registries you trust on this network).
        #[arg(long)]
        insecure: bool,
        /// Credentials in docker/podman auth.json format.
        #[arg(long, value_name = "FILE")]
        authfile: Option<String>,
        #[arg(long, short = 'q')]
        quiet: bool,
    },
    /// Remove an image (and the layers no other image uses).
    #[command(alias = "rm")]
    Remove {
        #[arg(required = true)]
        names: Vec<String>,
        /// Also when stopped containers are defined on it.
        #[arg(long, short = 'f')]
        force: bool,
    },
    /// Rename an image.
    Rename { name: String, new_name: String },
    /// Make an independent, writable copy of an image.
    Clone { name: String, new_name: String },
    /// Give an image a second name.
    Tag { name: String, new_name: String },
    /// Write an image's merged root file system as a tarball.
    Export {
        name: String,
        /// The tarball to write ("-": standard output).
        file: String,
    },
    /// Push an image to an OCI distribution registry.
    Push(PushArgs),
    /// Write images as one archive that `podman load` / `docker load` read.
    Save(SaveArgs),
    /// Load the images of a docker or OCI archive (all, or one with --name).
    Load(LoadArgs),
    /// Remove images without tags that no container uses, and unused layers.
    Prune(PruneArgs),
    /// Check and store registry credentials (in berthd's auth file).
    Login(LoginArgs),
    /// Remove stored registry credentials.
    Logout(LogoutArgs),
}

#[derive(Debug, Args)]
pub struct PushArgs {
    /// The image (tag or ID).
    pub name: String,
    /// Where to: [REGISTRY/]REPOSITORY[:TAG] (default: what the image's tag names).
    pub reference: Option<String>,
    /// Talk plain HTTP to the registry (only for registries you trust on this network).
    #[arg(long)]
    pub insecure: bool,
    /// Credentials in docker/podman auth.json format (default /etc/berth/auth.json).
    #[arg(long, value_name = "FILE")]
    pub authfile: Option<String>,
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct SaveArgs {
    /// The archive to write ("-": standard output, which must not be a terminal).
    #[arg(long = "output", short = 'o', value_name = "FILE")]
    pub output: String,
    #[arg(long, value_parser = ["oci-archive", "docker-archive"], default_value = "oci-archive")]
    pub format: String,
    /// The images (tags or IDs); several go into one archive.
    #[arg(required = true)]
    pub names: Vec<String>,
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct LoadArgs {
    /// The archive (docker-archive, oci-archive, compressed or not) or OCI layout directory.
    #[arg(long = "input", short = 'i', value_name = "FILE")]
    pub input: String,
    /// Load only the image the archive tags NAME (or name its only, untagged image so).
    #[arg(long)]
    pub name: Option<String>,
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Also remove tagged images no container uses.
    #[arg(long, short = 'a')]
    pub all: bool,
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// host[:port] (docker.io for Docker Hub); for `berthctl login`, a container's name
    /// attaches to its console instead.
    pub registry: String,
    #[arg(long, short = 'u')]
    pub username: Option<String>,
    /// Read the password from standard input (never give it on the command line).
    #[arg(long)]
    pub password_stdin: bool,
    #[arg(long)]
    pub insecure: bool,
    #[arg(long, value_name = "FILE")]
    pub authfile: Option<String>,
}

impl LoginArgs {
    /// Whether a registry option was given: then `berthctl login WORD` is always the
    /// registry's, even when a container is called WORD.
    pub fn has_registry_options(&self) -> bool {
        self.username.is_some() || self.password_stdin || self.insecure || self.authfile.is_some()
    }
}

#[derive(Debug, Args)]
pub struct LogoutArgs {
    pub registry: String,
    #[arg(long, value_name = "FILE")]
    pub authfile: Option<String>,
}

/// One image in `-o json`.
#[derive(Debug, Serialize)]
pub struct ImageView {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub digest: Option<String>,
    /// Bytes, uncompressed.
    pub size: u64,
    /// Number of layers.
    pub layers: usize,
    pub layer_digests: Vec<String>,
    /// Microseconds since the epoch.
    pub created: u64,
    pub read_only: bool,
}

impl From<ImageInfo> for ImageView {
    fn from(i: ImageInfo) -> Self {
        ImageView {
            // An image without tags is listed under its ID (`sha256:…`).
            name: i.name,
            kind: i.kind,
            digest: (!i.digest.is_empty()).then_some(i.digest),
            size: i.size,
            layers: i.layers.len(),
            layer_digests: i.layers,
            created: i.created,
            read_only: i.read_only,
        }
    }
}

pub async fn list(a: ListArgs) -> CliResult {
    let (_conn, proxy) = manager().await?;
    let views: Vec<ImageView> = proxy
        .list_images()
        .await?
        .into_iter()
        .map(ImageView::from)
        .collect();
    if a.quiet {
        output::print_lines(views.into_iter().map(|v| v.name));
        return Ok(0);
    }
    match a.output {
        Format::Json => output::print_json(&views),
        Format::Table => {
            let rows: Vec<Vec<String>> = views
                .iter()
                .map(|v| {
                    vec![
                        if v.name.starts_with("sha256:") {
                            "<none>".to_string()
                        } else {
                            v.name.clone()
                        },
                        v.kind.clone(),
                        v.digest
                            .as_deref()
                            .map(|d| d.trim_start_matches("sha256:")[..12].to_string())
                            .unwrap_or_else(|| "-".into()),
                        v.layers.to_string(),
                        output::bytes(v.size),
                        timestamp(v.created),
                    ]
                })
                .collect();
            output::print_lines(output::table(
                &["NAME", "TYPE", "DIGEST", "LAYERS", "SIZE", "CREATED"],
                &rows,
            ));
        }
    }
    Ok(0)
}

pub async fn run(a: ImageArgs) -> CliResult {
    match a.verb {
        ImageVerb::List(l) => list(l).await,
        ImageVerb::Show { name, output } => show(name, output).await,
        ImageVerb::ImportFs(i) => import("fs", i).await,
        ImageVerb::ImportTar(i) => import("tar", i).await,
        ImageVerb::ImportOci(i) => import("oci", i).await,
        ImageVerb::Pull {
            reference,
            name,
            insecure,
            authfile,
            quiet,
        } => pull(reference, name, insecure, authfile, quiet).await,
        ImageVerb::Remove { names, force } => remove(names, force).await,
        ImageVerb::Rename { name, new_name } => {
            let (_conn, proxy) = manager().await?;
            proxy.rename_image(name, new_name).await?;
            Ok(0)
        }
        ImageVerb::Clone { name, new_name } => {
            let (_conn, proxy) = manager().await?;
            proxy.clone_image(name, new_name).await?;
            Ok(0)
        }
        ImageVerb::Tag { name, new_name } => {
            let (_conn, proxy) = manager().await?;
            proxy.tag_image(name, new_name).await?;
            Ok(0)
        }
        ImageVerb::Export { name, file } => {
            let (_conn, proxy) = manager().await?;
            let fd = output_fd(&file)?;
            proxy.export_image(name, fd.into()).await?;
            Ok(0)
        }
        ImageVerb::Push(a) => push(a).await,
        ImageVerb::Save(a) => save(a).await,
        ImageVerb::Load(a) => load(a).await,
        ImageVerb::Prune(a) => prune(a).await,
        ImageVerb::Login(a) => login(a).await,
        ImageVerb::Logout(a) => logout(a).await,
    }
}

/// `rmi NAME… [--force]` (top-level alias of `image rm`).
pub async fn remove(names: Vec<String>, force: bool) -> CliResult {
    let (_conn, proxy) = manager().await?;
    for n in names {
        proxy.remove_image(n, force).await?;
    }
    Ok(0)
}

fn variant(v: impl Into<zbus::Variant<'static>>) -> CliResult<OwnedVariant> {
    OwnedVariant::try_from(v.into()).map_err(|e| CliError::new(Exit::Failed, e.to_string()))
}

fn registry_opts(insecure: bool, authfile: Option<String>) -> CliResult<Options> {
    let mut opts = Options::default();
    if insecure {
        opts.insert("Insecure", OwnedVariant::from(true));
    }
    if let Some(f) = authfile {
        let abs = std::path::absolute(&f)
            .map_err(|e| CliError::new(Exit::InvalidArgument, format!("{f}: {e}")))?;
        opts.insert("AuthFile", variant(abs.to_string_lossy().into_owned())?);
    }
    Ok(opts)
}

/// `push IMAGE [REF]`.
pub async fn push(a: PushArgs) -> CliResult {
    let opts = registry_opts(a.insecure, a.authfile)?;
    let (conn, proxy) = manager().await?;
    let call = proxy.push_image(
        a.name.clone(),
        a.reference.clone().unwrap_or_default(),
        opts,
    );
    let digest = with_progress(&conn, &proxy, &a.name, a.quiet, call).await?;
    if !a.quiet {
        output::print_lines([format!(
            "{} pushed to {} ({digest})",
            a.name,
            a.reference.as_deref().unwrap_or(&a.name)
        )]);
    }
    Ok(0)
}

/// `save -o FILE [--format F] IMAGE…`.
pub async fn save(a: SaveArgs) -> CliResult {
    if a.output == "-" && std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        return Err(CliError::new(
            Exit::InvalidArgument,
            "refusing to write an archive to a terminal; use -o FILE",
        ));
    }
    let fd = output_fd(&a.output)?;
    let (conn, proxy) = manager().await?;
    let label = a.names.join(" ");
    let call = proxy.save_images(
        a.names.clone(),
        a.format.clone(),
        fd.into(),
        Options::default(),
    );
    let r = with_progress(&conn, &proxy, &label, a.quiet, call).await;
    if r.is_err() && a.output != "-" {
        // Leave no half-written archive behind under the name asked for.
        if let Err(e) = std::fs::remove_file(&a.output)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            eprintln!("berthctl: cannot remove {}: {e}, ignoring", a.output);
        }
    }
    r?;
    Ok(0)
}

/// `load -i FILE [--name REF]`.
pub async fn load(a: LoadArgs) -> CliResult {
    let abs = std::path::absolute(&a.input)
        .map_err(|e| CliError::new(Exit::InvalidArgument, format!("{}: {e}", a.input)))?;
    let mut opts = Options::default();
    if let Some(n) = &a.name {
        opts.insert("Name", variant(n.clone())?);
    }
    let path = abs.to_string_lossy().into_owned();
    let (conn, proxy) = manager().await?;
    let call = proxy.load_images(path.clone(), opts);
    let loaded = with_progress(&conn, &proxy, &path, a.quiet, call).await?;
    if !a.quiet {
        output::print_lines(
            loaded
                .into_iter()
                .map(|(n, _)| format!("Loaded image: {n}")),
        );
    }
    Ok(0)
}

/// `image prune [--all]`.
pub async fn prune(a: PruneArgs) -> CliResult {
    let mut opts = Options::default();
    if a.all {
        opts.insert("All", OwnedVariant::from(true));
    }
    let (_conn, proxy) = manager().await?;
    let (removed, bytes) = proxy.prune_images(opts).await?;
    if !a.quiet {
        let mut lines: Vec<String> = removed
            .into_iter()
            .map(|r| format!("removed {r}"))
            .collect();
        lines.push(format!("freed {}", output::bytes(bytes)));
        output::print_lines(lines);
    }
    Ok(0)
}

/// Read one line from the terminal, echo off when `secret`.
fn prompt(what: &str, secret: bool) -> CliResult<String> {
    use nix::sys::termios;
    use std::io::{BufRead, Write};
    let stdin = std::io::stdin();
    eprint!("{what}: ");
    let _ = std::io::stderr().flush();
    let saved = if secret {
        let t = termios::tcgetattr(&stdin)
            .map_err(|e| CliError::new(Exit::Failed, format!("reading the terminal: {e}")))?;
        let mut quiet = t.clone();
        quiet.local_flags.remove(termios::LocalFlags::ECHO);
        termios::tcsetattr(&stdin, termios::SetArg::TCSANOW, &quiet)
            .map_err(|e| CliError::new(Exit::Failed, format!("setting the terminal: {e}")))?;
        Some(t)
    } else {
        None
    };
    let mut line = String::new();
    let r = stdin.lock().read_line(&mut line);
    if let Some(t) = saved {
        let _ = termios::tcsetattr(&stdin, termios::SetArg::TCSANOW, &t);
        eprintln!();
    }
    r.map_err(|e| CliError::new(Exit::Failed, format!("reading {what}: {e}")))?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

/// `login REGISTRY [-u USER] [--password-stdin]`: the password comes from standard input or
/// a prompt, never from the command line (where `ps` shows it); berthd checks it against the
/// registry and stores it in its auth file.
pub async fn login(a: LoginArgs) -> CliResult {
    use std::io::{IsTerminal, Read};
    let tty = std::io::stdin().is_terminal();
    let user = match a.username {
        Some(u) => u,
        None if tty && !a.password_stdin => prompt("Username", false)?,
        None => {
            return Err(CliError::new(
                Exit::InvalidArgument,
                "give the user name with --username",
            ));
        }
    };
    let password = if a.password_stdin {
        let mut p = String::new();
        std::io::stdin()
            .read_to_string(&mut p)
            .map_err(|e| CliError::new(Exit::Failed, format!("reading the password: {e}")))?;
        p.trim_end_matches(['\n', '\r']).to_string()
    } else if tty {
        prompt("Password", true)?
    } else {
        return Err(CliError::new(
            Exit::InvalidArgument,
            "no terminal to ask for the password: use --password-stdin",
        ));
    };
    if password.is_empty() {
        return Err(CliError::new(
            Exit::InvalidArgument,
            "the password is empty",
        ));
    }
    let opts = registry_opts(a.insecure, a.authfile)?;
    let (_conn, proxy) = manager().await?;
    proxy
        .login(a.registry.clone(), user, password, opts)
        .await?;
    output::print_lines([format!("Login Succeeded ({})", a.registry)]);
    Ok(0)
}

/// `logout REGISTRY`.
pub async fn logout(a: LogoutArgs) -> CliResult {
    let opts = registry_opts(false, a.authfile)?;
    let (_conn, proxy) = manager().await?;
    proxy.logout(a.registry.clone(), opts).await?;
    output::print_lines([format!("Removed login credentials for {}", a.registry)]);
    Ok(0)
}

/// The file a tarball goes to, opened here (where the caller's paths mean something).
pub fn output_fd(file: &str) -> CliResult<OwnedFd> {
    if file == "-" {
        use std::os::fd::AsFd;
        return std::io::stdout()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| CliError::new(Exit::Failed, e.to_string()));
    }
    std::fs::File::create(file)
        .map(OwnedFd::from)
        .map_err(|e| CliError::new(Exit::InvalidArgument, format!("{file}: {e}")))
}

/// An image's `image show -o json` document (also what `inspect` prints for an image).
pub async fn document(
    conn: &zbus::Connection,
    proxy: &ManagerProxy<'_>,
    name: String,
) -> CliResult<serde_json::Value> {
    let doc = gather(conn, proxy, name).await?;
    Ok(serde_json::to_value(doc.json()).unwrap_or_default())
}

async fn show(name: String, format: Format) -> CliResult {
    let (conn, proxy) = manager().await?;
    let doc = gather(&conn, &proxy, name).await?;
    if format == Format::Json {
        output::print_json(&doc.json());
        return Ok(0);
    }
    doc.print();
    Ok(0)
}

/// What `image show` knows of an image: its object's properties and config.
struct Gathered {
    info: ImageInfo,
    config: HashMap<String, OwnedVariant>,
}

async fn gather(
    conn: &zbus::Connection,
    proxy: &ManagerProxy<'_>,
    name: String,
) -> CliResult<Gathered> {
    let path = proxy.get_image(name.clone()).await?;
    let img = ImageProxy::builder(conn).path(path.clone()).build().await?;
    // By its object (the name given may be another spelling: `web:latest`, an ID).
    let info = ImageInfo {
        name: img.name().await?,
        kind: img.kind().await?,
        digest: img.digest().await?,
        size: img.size().await?,
        created: img.created().await?,
        layers: img.layers().await?,
        read_only: img.read_only().await?,
        object_path: path,
    };
    let config = img.config().await?;
    Ok(Gathered { info, config })
}

/// `image show -o json`.
#[derive(Serialize)]
struct Show {
    #[serde(flatten)]
    image: ImageView,
    entrypoint: Vec<String>,
    cmd: Vec<String>,
    env: Vec<String>,
    working_dir: String,
    user: String,
    stop_signal: String,
    labels: std::collections::BTreeMap<String, String>,
    exposed_ports: Vec<String>,
    volumes: Vec<String>,
    healthcheck: Vec<String>,
}

impl Gathered {
    fn strs(&self, k: &str) -> Vec<String> {
        self.config
            .get(k)
            .and_then(|v| Vec::<String>::try_from(v.clone()).ok())
            .unwrap_or_default()
    }

    fn one(&self, k: &str) -> String {
        self.config
            .get(k)
            .and_then(|v| String::try_from(v.clone()).ok())
            .unwrap_or_default()
    }

    fn labels(&self) -> std::collections::BTreeMap<String, String> {
        self.config
            .get("Labels")
            .and_then(|v| HashMap::<String, String>::try_from(v.clone()).ok())
            .unwrap_or_default()
            .into_iter()
            .collect()
    }

    /// The healthcheck's command (CMD / CMD-SHELL / NONE and its arguments).
    fn healthcheck(&self) -> Vec<String> {
        self.config
            .get("Healthcheck")
            .and_then(|v| HashMap::<String, OwnedVariant>::try_from(v.clone()).ok())
            .and_then(|h| {
                h.get("Test")
                    .and_then(|t| Vec::<String>::try_from(t.clone()).ok())
            })
            .unwrap_or_default()
    }

    fn json(&self) -> Show {
        Show {
            image: ImageView::from(self.info.clone()),
            entrypoint: self.strs("Entrypoint"),
            cmd: self.strs("Cmd"),
            env: self.strs("Env"),
            working_dir: self.one("WorkingDir"),
            user: self.one("User"),
            stop_signal: self.one("StopSignal"),
            labels: self.labels(),
            exposed_ports: self.strs("ExposedPorts"),
            volumes: self.strs("Volumes"),
            healthcheck: self.healthcheck(),
        }
    }

    /// The human form. Every string from the image is escaped: an image's labels and
    /// config may hold terminal escape sequences.
    fn print(&self) {
        let v = ImageView::from(self.info.clone());
        let mut lines = vec![
            format!("      Name: {}", v.name),
            format!(
                "      Type: {}{}",
                v.kind,
                if v.read_only { " (read-only)" } else { "" }
            ),
            format!("    Digest: {}", v.digest.unwrap_or_else(|| "-".into())),
            format!("      Size: {} ({} bytes)", output::bytes(v.size), v.size),
            format!("   Created: {}", timestamp(v.created)),
            format!("    Layers: {}", v.layers),
        ];
        lines.extend(v.layer_digests.iter().map(|l| format!("            {l}")));
        for (k, label) in [
            ("Entrypoint", "Entrypoint"),
            ("Cmd", "       Cmd"),
            ("Env", "       Env"),
        ] {
            let s = self.strs(k);
            if !s.is_empty() {
                lines.push(format!("{label}: {}", s.join(" ")));
            }
        }
        for (k, label) in [
            ("WorkingDir", "WorkingDir"),
            ("User", "      User"),
            ("StopSignal", "StopSignal"),
        ] {
            let s = self.one(k);
            if !s.is_empty() {
                lines.push(format!("{label}: {s}"));
            }
        }
        for (k, val) in self.labels() {
            lines.push(format!("     Label: {k}={val}"));
        }
        for (k, label) in [("ExposedPorts", "    Expose"), ("Volumes", "    Volume")] {
            let s = self.strs(k);
            if !s.is_empty() {
                lines.push(format!("{label}: {}", s.join(" ")));
            }
        }
        let hc = self.healthcheck();
        if !hc.is_empty() {
            lines.push(format!("Healthcheck: {}", hc.join(" ")));
        }
        output::print_lines(lines.iter().map(|l| output::escape(l)));
    }
}

async fn import(format: &str, a: ImportArgs) -> CliResult {
    let abs = std::path::absolute(&a.source)
        .map_err(|e| CliError::new(Exit::InvalidArgument, format!("{}: {e}", a.source)))?;
    let (conn, proxy) = manager().await?;
    let call = proxy.import_image(
        format.to_string(),
        abs.to_string_lossy().into_owned(),
        a.name.clone(),
        crate::dbus::Options::default(),
    );
    with_progress(&conn, &proxy, &a.name, a.quiet, call).await?;
    if !a.quiet {
        output::print_lines([a.name]);
    }
    Ok(0)
}

pub async fn pull(
    reference: String,
    name: Option<String>,
    insecure: bool,
    authfile: Option<String>,
    quiet: bool,
) -> CliResult {
    let mut opts = crate::dbus::Options::default();
    if insecure {
        opts.insert("Insecure", OwnedVariant::from(true));
    }
    if let Some(f) = authfile {
        let abs = std::path::absolute(&f)
            .map_err(|e| CliError::new(Exit::InvalidArgument, format!("{f}: {e}")))?;
        opts.insert(
            "AuthFile",
            OwnedVariant::try_from(zbus::Variant::from(abs.to_string_lossy().into_owned()))
                .map_err(|e| CliError::new(Exit::Failed, e.to_string()))?,
        );
    }
    let (conn, proxy) = manager().await?;
    let name = name.unwrap_or_default();
    // What the tag names before the pull, to say whether it moved.
    let tag = if name.is_empty() {
        reference
            .parse::<crate::image::registry::Reference>()
            .ok()
            .filter(|r| r.digest.is_none())
            .map(|r| crate::image::TagName::of(&r).display())
    } else {
        Some(name.clone())
    };
    let before = match &tag {
        Some(t) => match proxy.get_image(t.clone()).await {
            Ok(p) => {
                let img = ImageProxy::builder(&conn).path(p).build().await?;
                img.digest().await.ok()
            }
            Err(_) => None,
        },
        None => None,
    };
    // The daemon names the image when we do not; progress signals carry that name.
    let label = tag.clone().unwrap_or_default();
    let call = proxy.pull_image(reference, name.clone(), opts);
    let path = with_progress(&conn, &proxy, &label, quiet, call).await?;
    if !quiet {
        let img = ImageProxy::builder(&conn).path(path).build().await?;
        let (shown, digest) = (img.name().await?, img.digest().await?);
        let line = match before {
            Some(b) if b == digest => format!("{shown}: up to date ({digest})"),
            Some(b) => format!("{shown}: updated to {digest} (was {b})"),
            None => shown,
        };
        output::print_lines([line]);
    }
    Ok(0)
}

/// Await `call` while showing its `ImageProgress` signals for `name` (any name when empty).
async fn with_progress<T>(
    conn: &zbus::Connection,
    proxy: &ManagerProxy<'_>,
    name: &str,
    quiet: bool,
    call: impl std::future::Future<Output = Result<T, crate::dbus::Error>>,
) -> CliResult<T> {
    let _ = conn;
    if quiet || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return Ok(call.await?);
    }
    let mut signals = proxy.receive_image_progress().await?;
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {msg:12} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} {prefix}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    let watch = async {
        while let Some(sig) = signals.next().await {
            let Ok(a) = sig.args() else { continue };
            if !name.is_empty() && a.name != name {
                continue;
            }
            bar.set_message(a.phase.to_string());
            if a.total > 0 {
                bar.set_length(a.total);
                bar.set_position(a.done);
            } else if a.done > 0 {
                // Total unknown: show the bytes and the rate all the same.
                bar.set_length(a.done);
                bar.set_position(a.done);
            }
            if a.layers_total > 0 {
                bar.set_prefix(format!("layers {}/{}", a.layers_done, a.layers_total));
            }
        }
    };
    tokio::pin!(call);
    let r = tokio::select! {
        r = &mut call => r,
        () = watch => call.await,
    };
    bar.finish_and_clear();
    Ok(r?)
}
