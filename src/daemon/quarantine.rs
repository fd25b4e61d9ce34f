//! Quarantine: containers whose definition berthd cannot use — `container.toml` missing, empty,
//! truncated, garbage, with a key given twice, with a key this berth does not know (a newer berth
//! wrote it), naming another container, or not valid on this host.
//!
//! berthd never deletes user data because it cannot parse a file. Such a container keeps its
//! directory (writable layer included) exactly as it is; berthd lists it as `broken` with the
//! reason, refuses every operation on it but `remove` (an explicit act of the user), keeps
//! serving the others, and leaves a scope that still runs alone (reconciliation counts it as
//! recorded). Repairing the file and restarting berthd brings the container back.

use std::fmt;
use std::path::PathBuf;

use tracing::{error, info, warn};

use super::error::{Error, Result};
use super::lifecycle::TRASH_PREFIX;
use super::store::{self, Layout};
use super::table::{Registry, path};
use crate::dbus::{self, ContainerInfo};
use crate::name;
use crate::spec::{self, ContainerSpec, Definition};

/// Why a container's definition cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Defect {
    /// There is no `container.toml` (a directory made by hand, or a create interrupted by an
    /// older berth).
    Missing,
    /// It exists but cannot be read (permissions, I/O error).
    Unreadable(String),
    /// It is empty.
    Empty,
    /// It is not TOML berth can parse: truncated, garbage, a key given twice.
    Malformed(String),
    /// It has keys this berth does not know: a newer berth wrote it.
    Newer(String),
    /// It is the definition of another container.
    WrongName(String),
    /// It parses but is not valid here (an option this host lacks, a value out of range).
    Invalid(String),
}

impl fmt::Display for Defect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Defect::Missing => f.write_str("container.toml is missing"),
            Defect::Unreadable(e) => write!(f, "container.toml cannot be read: {e}"),
            Defect::Empty => f.write_str("container.toml is empty"),
            Defect::Malformed(e) => write!(f, "container.toml is not valid TOML: {e}"),
            Defect::Newer(e) => write!(
                f,
                "container.toml was written by a newer berth ({e}); this berth leaves it alone"
            ),
            Defect::WrongName(other) => {
                write!(f, "container.toml is the definition of {other:?}")
            }
            Defect::Invalid(e) => write!(f, "the definition is not valid on this host: {e}"),
        }
    }
}

/// Read a stored definition and say exactly what is wrong with it, if anything.
pub fn read_definition(layout: &Layout, name: &str) -> std::result::Result<Definition, Defect> {
    let text = match std::fs::read(layout.definition(name)) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(Defect::Missing),
        Err(e) => return Err(Defect::Unreadable(e.to_string())),
    };
    parse_definition(name, &text)
}

/// Parse the bytes of a `container.toml` stored for container `name`.
pub fn parse_definition(name: &str, text: &[u8]) -> std::result::Result<Definition, Defect> {
    if text.iter().all(u8::is_ascii_whitespace) {
        return Err(Defect::Empty);
    }
    let text =
        std::str::from_utf8(text).map_err(|e| Defect::Malformed(format!("not UTF-8 text: {e}")))?;
    let def: Definition = toml::from_str(text).map_err(|e| classify(&e))?;
    if def.name != name {
        return Err(Defect::WrongName(def.name));
    }
    Ok(def)
}

/// A TOML error: a key unknown to this berth means a newer one wrote the file; anything else is
/// damage.
fn classify(e: &toml::de::Error) -> Defect {
    let msg = e.message().trim().to_string();
    let line = e
        .span()
        .map(|s| format!(" (at byte {})", s.start))
        .unwrap_or_default();
    // serde's words for a key or value it does not know, and the resource table's.
    if msg.starts_with("unknown field")
        || msg.starts_with("unknown variant")
        || msg.starts_with("unknown resource")
    {
        Defect::Newer(msg)
    } else {
        Defect::Malformed(format!("{msg}{line}"))
    }
}

/// Load a container's definition and check it for this host.
pub fn load(
    layout: &Layout,
    name: &str,
    host: &spec::Host,
) -> std::result::Result<ContainerSpec, Defect> {
    let def = read_definition(layout, name)?;
    spec::validate(&def, host).map_err(|e| Defect::Invalid(e.to_string()))
}

/// A quarantined container.
#[derive(Debug, Clone)]
pub struct Broken {
    pub defect: Defect,
    /// Its scope still ran when berthd found it broken; `remove` then needs force.
    pub scope_active: bool,
    /// The directory's modification time, as the creation time shown (µs since the epoch).
    pub created_at: u64,
}

impl Broken {
    pub fn info(&self, name: &str) -> ContainerInfo {
        let mut reason = format!("broken: {}", self.defect);
        if self.scope_active {
            reason.push_str(&format!(
                "; its scope {} still runs (remove --force stops it)",
                name::scope_unit(name)
            ));
        }
        ContainerInfo {
            name: name.into(),
            state: "broken".into(),
            unit: name::scope_unit(name),
            leader: 0,
            image: String::new(),
            root_directory: String::new(),
            created_at: self.created_at,
            started_at: 0,
            exit_status: -1,
            last_error: reason,
            resources: Default::default(),
            oom_kills: 0,
            last_oom_at: 0,
            security: Default::default(),
            object_path: path(name),
        }
    }
}

fn mtime_usec(p: &std::path::Path) -> u64 {
    std::fs::metadata(p)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_micros() as u64)
}

impl Registry {
    /// Put a container whose definition cannot be used in quarantine: keep everything, list it
    /// as broken, say so in the log.
    pub(super) async fn quarantine(&self, name: &str, defect: Defect) {
        let unit = name::scope_unit(name);
        let scope_active = self.systemd.unit_is_active(&unit).await;
        let created_at = mtime_usec(&self.layout.container_dir(name));
        let mut msg = format!(
            "container {name} is broken: {defect}; keeping {} untouched and listing it as broken",
            self.layout.container_dir(name).display()
        );
        if scope_active {
            msg.push_str(&format!("; its scope {unit} keeps running"));
        }
        error!("{msg}");
        self.broken.lock().unwrap().insert(
            name.to_string(),
            Broken {
                defect,
                scope_active,
                created_at,
            },
        );
        self.export(name).await;
    }

    /// The quarantine record of `name`, if it is broken.
    pub(super) fn broken(&self, name: &str) -> Option<Broken> {
        self.broken.lock().unwrap().get(name).cloned()
    }

    /// The error every operation but `remove` gets on a broken container.
    pub(super) fn broken_error(&self, name: &str) -> Option<Error> {
        self.broken(name).map(|b| Error::Broken {
            name: name.into(),
            reason: b.defect.to_string(),
        })
    }

    /// Remove a broken container: the user asked for it by name, so its directory goes (after
    /// its scope, with `force`).
    pub(super) async fn remove_broken(&self, name: &str, force: bool) -> Result<()> {
        let Some(b) = self.broken(name) else {
            return Err(Error::NoSuchContainer(name.into()));
        };
        let unit = name::scope_unit(name);
        if b.scope_active || self.systemd.unit_is_active(&unit).await {
            if !force {
                return Err(Error::InvalidState {
                    name: name.into(),
                    state: "broken",
                    hint: " and its scope still runs; remove it with --force",
                });
            }
            self.systemd
                .kill_unit(&unit, "all", libc::SIGKILL)
                .await
                .map_err(|source| Error::Systemd {
                    what: "to kill the scope",
                    source,
                })?;
            if let Err(e) = self.systemd.stop_unit(&unit).await {
                warn!("cannot stop {unit}: {e}, ignoring");
            }
        }
        let dir = self.layout.container_dir(name);
        let trash = self
            .layout
            .containers()
            .join(format!("{TRASH_PREFIX}{name}-{}", store::now_usec()));
        {
            let mut broken = self.broken.lock().unwrap();
            if broken.remove(name).is_none() {
                return Err(Error::NoSuchContainer(name.into()));
            }
            if let Err(e) = std::fs::rename(&dir, &trash) {
                broken.insert(name.to_string(), b);
                return Err(Error::io(format!("cannot move {} aside", dir.display()), e));
            }
            // Under the lock a create of the same name checks: it never gets a range this
            // removal frees afterwards.
            self.release_allocations(name);
        }
        let rt = self.layout.runtime(name);
        let victim: PathBuf = trash.clone();
        let removed = tokio::task::spawn_blocking(move || {
            super::lifecycle::remove_tree(&victim)?;
            match std::fs::remove_file(&rt) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            }
        })
        .await
        .map_err(|e| Error::Failed(format!("removal of {name:?}: {e}")))?;
        self.unexport(name).await;
        if let Some(em) = self.manager_emitter()
            && let Err(e) = dbus::Manager::container_removed(&em, name, path(name)).await
        {
            warn!("cannot announce the removal of {name}: {e}, ignoring");
        }
        removed.map_err(|e| {
            Error::io(
                format!(
                    "broken container {name:?} is removed, but {} is not deleted",
                    trash.display()
                ),
                e,
            )
        })?;
        info!("removed broken container {name}");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed fixtures of damaged and newer definitions, each with the defect it shows.
    #[test]
    fn every_damaged_definition_fixture_is_diagnosed() {
        let dir = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/state/container"
        );
        type Expect = fn(&Defect) -> bool;
        let cases: &[(&str, Expect)] = &[
            ("good.toml", |_| false),
            ("empty.toml", |d| *d == Defect::Empty),
            ("blank.toml", |d| *d == Defect::Empty),
            ("truncated.toml", |d| matches!(d, Defect::Malformed(_))),
            ("garbage.toml", |d| matches!(d, Defect::Malformed(_))),
            ("binary.toml", |d| matches!(d, Defect::Malformed(_))),
            (
                "duplicate-key.toml",
                |d| matches!(d, Defect::Malformed(m) if m.contains("duplicate")),
            ),
            (
                "newer-key.toml",
                |d| matches!(d, Defect::Newer(m) if m.contains("readonly_rootfs")),
            ),
            ("newer-resource.toml", |d| matches!(d, Defect::Newer(_))),
            ("other-name.toml", |d| {
                *d == Defect::WrongName("someone-else".into())
            }),
            ("missing-field.toml", |d| matches!(d, Defect::Malformed(_))),
        ];
        let mut seen = 0;
        for (file, want) in cases {
            let text = std::fs::read(format!("{dir}/{file}")).unwrap();
            match parse_definition("fx", &text) {
                Ok(def) => {
                    assert_eq!(*file, "good.toml", "{file} parsed: {def:?}");
                    assert_eq!(def.command, ["sleep", "1000"]);
                }
                Err(d) => assert!(want(&d), "{file}: {d:?}"),
            }
            seen += 1;
        }
        // Every fixture in the directory is a case here.
        let files = std::fs::read_dir(dir).unwrap().count();
        assert_eq!(files, seen, "a fixture in {dir} is not checked");
    }

    #[test]
    fn a_missing_definition_is_not_an_empty_one() {
        let tmp = tempfile::tempdir().unwrap();
        let layout = Layout {
            lib: tmp.path().into(),
            run: tmp.path().join("run"),
            image_dirs: vec![],
        };
        std::fs::create_dir_all(layout.container_dir("a")).unwrap();
        assert_eq!(read_definition(&layout, "a").unwrap_err(), Defect::Missing);
        std::fs::write(layout.definition("a"), "").unwrap();
        assert_eq!(read_definition(&layout, "a").unwrap_err(), Defect::Empty);
        let reason = Broken {
            defect: Defect::Newer("unknown field `x`".into()),
            scope_active: true,
            created_at: 1,
        }
        .info("a");
        assert_eq!(reason.state, "broken");
        assert!(reason.last_error.contains("newer berth"), "{reason:?}");
        assert!(reason.last_error.contains("berth-a.scope still runs"));
    }
}
