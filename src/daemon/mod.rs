//! berthd: serves `org.berth.berth1` on the system bus and runs containers.

mod authorizer;
mod backend;
mod boot;
mod bus_work;
mod copy;
mod declared;
mod departures;
mod entries;
mod error;
mod exec;
mod failpoint;
mod health;
mod images;
mod life;
mod lifecycle;
mod limits;
mod logs;
mod machined;
mod mounts;
mod network;
mod notify;
mod ops;
mod quarantine;
mod ready;
mod reaper;
mod reconcile;
mod recovery;
mod restart;
mod security;
mod space;
mod start;
mod store;
mod table;
mod unit;
mod verbs;

use std::path::PathBuf;
use std::sync::Arc;

use thiserror::Error;
use tracing::{error, info};

pub use error::Error;
pub use store::Layout;
pub use table::Registry;

#[derive(Debug, Error)]
pub enum DaemonError {
    #[error("cannot connect to the system bus: {0}")]
    Bus(zbus::Error),
    #[error("cannot talk to systemd: {0}")]
    Systemd(zbus::Error),
    #[error("cannot serve {what}: {source}")]
    Serve {
        what: &'static str,
        source: zbus::Error,
    },
    #[error("cannot create {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open the image store: {0}")]
    Images(crate::image::StoreError),
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
    /// The bus went away (`systemctl restart dbus`): berthd cannot serve on a new bus with the
    /// old connection, so it exits with an error and systemd starts it again
    /// (`Restart=on-failure`), which re-adopts the containers.
    #[error("lost the system bus; exiting so that systemd restarts berthd on the new one")]
    BusLost,
    #[error(transparent)]
    Security(security::OpenError),
}

fn init_logging() {
    use tracing_subscriber::prelude::*;
    let filter = tracing_subscriber::EnvFilter::try_from_env("BERTH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let journald = if std::env::var_os("JOURNAL_STREAM").is_some() {
        tracing_journald::layer().ok()
    } else {
        None
    };
    match journald {
        Some(j) => tracing_subscriber::registry().with(filter).with(j).init(),
        None => tracing_subscriber::registry()
            .with(filter)
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .without_time(),
            )
            .init(),
    }
}

/// The berth-helper binary: `BERTH_HELPER`, else beside berthd (a build tree), else in
/// `../libexec` relative to it (an installed tree).
fn helper_path() -> PathBuf {
    if let Some(p) = std::env::var_os("BERTH_HELPER") {
        return p.into();
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    [
        dir.join("berth-helper"),
        dir.join("../libexec/berth-helper"),
    ]
    .into_iter()
    .find(|p| p.exists())
    .and_then(|p| p.canonicalize().ok())
    .unwrap_or_else(|| "/usr/local/libexec/berth-helper".into())
}

/// Run berthd until SIGTERM or SIGINT.
pub fn run() -> Result<(), DaemonError> {
    // Before any thread exists: take the descriptors systemd kept for us.
    let stored = notify::take_listen_fds();
    init_logging();
    failpoint::init();
    // Leaders are re-parented to us when their helper exits, so we can reap them.
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        tracing::warn!("cannot become a child subreaper: {e}, ignoring");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(DaemonError::Runtime)?;
    rt.block_on(serve(stored))
}

async fn serve(
    stored: std::collections::HashMap<String, std::os::fd::OwnedFd>,
) -> Result<(), DaemonError> {
    let layout = Layout::default();
    let scratch = std::path::Path::new(crate::mount::SCRATCH);
    for dir in [
        layout.containers(),
        layout.run.join("containers"),
        scratch.join("proc"),
        scratch.join("sys"),
        scratch.join("dev"),
    ] {
        std::fs::create_dir_all(&dir).map_err(|source| DaemonError::Dir {
            path: dir.clone(),
            source,
        })?;
    }
    make_empty_file(std::path::Path::new(crate::mount::EMPTY_FILE)).map_err(|source| {
        DaemonError::Dir {
            path: crate::mount::EMPTY_FILE.into(),
            source,
        }
    })?;
    let conn = zbus::connection::Builder::system()
        .build()
        .await
        .map_err(DaemonError::Bus)?;
    let systemd = crate::systemd::Systemd::new(&conn)
        .await
        .map_err(DaemonError::Systemd)?;
    let images = crate::image::Store::open(&layout.lib).map_err(DaemonError::Images)?;
    check_images(&images);
    let helper = helper_path();
    let security = security::open(&conn, &layout.lib, &helper)
        .await
        .map_err(DaemonError::Security)?;
    let registry = Registry::new(conn.clone(), systemd, layout, helper, images, security);
    registry.watch_callers().await;
    registry.import_shipped().await;
    registry.open_network().await;
    registry.recover(stored).await;
    registry.reconcile_network().await;
    registry.open_machined().await;
    registry.export_images().await;
    registry.apply_declared_at_start().await;
    registry.restart_at_start().await;
    let server = conn.object_server();
    let backend: Arc<dyn crate::dbus::Backend> = registry.clone();
    server
        .at(
            crate::dbus::MANAGER_PATH,
            crate::dbus::gate::Gated::new(
                crate::dbus::ObjectManager {
                    backend: Arc::downgrade(&backend),
                },
                Arc::downgrade(&backend),
            ),
        )
        .await
        .map_err(|source| DaemonError::Serve {
            what: "ObjectManager",
            source,
        })?;
    server
        .at(
            crate::dbus::MANAGER_PATH,
            crate::dbus::gate::Gated::new(
                crate::dbus::listing::ManagerServer(crate::dbus::Manager {
                    backend: Arc::downgrade(&backend),
                }),
                Arc::downgrade(&backend),
            ),
        )
        .await
        .map_err(|source| DaemonError::Serve {
            what: "Manager",
            source,
        })?;
    conn.request_name(crate::dbus::BUS_NAME)
        .await
        .map_err(|source| DaemonError::Serve {
            what: crate::dbus::BUS_NAME,
            source,
        })?;
    match notify::notify("READY=1\nSTATUS=serving", &[]) {
        Ok(_) => {}
        Err(e) => {
            tracing::warn!("cannot tell the service manager that berthd is ready: {e}, ignoring")
        }
    }
    info!("serving {} on the system bus", crate::dbus::BUS_NAME);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(DaemonError::Runtime)?;
    let lost = tokio::select! {
        _ = term.recv() => false,
        _ = tokio::signal::ctrl_c() => false,
        _ = conn.closed() => true,
    };
    if lost {
        return Err(DaemonError::BusLost);
    }
    if let Err(e) = notify::notify("STOPPING=1", &[]) {
        tracing::warn!("cannot tell the service manager that berthd stops: {e}, ignoring");
    }
    info!("stopping; containers keep running in their scopes");
    registry.stop_relays().await;
    drop(registry);
    Ok(())
}

/// Say which image records cannot be read (they are skipped, never deleted), and delete what
/// an import or pull interrupted by a crash left in the store.
fn check_images(images: &crate::image::Store) {
    let (_, bad) = images.list_checked();
    for (name, e) in &bad {
        tracing::warn!(
            "image record {name} cannot be read ({e}); skipping it, and deleting no layer while it is there"
        );
    }
    match images.reclaim() {
        Ok(0) => {}
        Ok(n) => info!(
            "deleted {n} blobs and layers that no image references (left by an interrupted import or pull)"
        ),
        Err(e) => tracing::warn!("cannot clean the image store: {e}, ignoring"),
    }
}

/// The empty, read-only file masked paths are replaced by: made anew, so that nothing written
/// to an old one can ever show through a mask.
fn make_empty_file(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let tmp = path.with_extension("new");
    let f = std::fs::File::create(&tmp)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o444))?;
    drop(f);
    std::fs::rename(&tmp, path)
}

/// Log a fatal error once, at the edge.
pub fn report(e: &DaemonError) {
    error!("{e}");
}
