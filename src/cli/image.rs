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

mod show;
mod transfer;

pub use show::*;
pub use transfer::*;

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
#[command(defer = true)]
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
