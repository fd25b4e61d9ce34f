//! What berthd keeps on disk: definitions under /var/lib/berth/containers/NAME/ (survive
//! reboots) and runtime records under /run/berth/containers/NAME.json (survive berthd
//! restarts, not reboots). Every write is atomic (temporary file, then rename).

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::spec::Definition;

/// Where state lives.
#[derive(Debug, Clone)]
pub struct Layout {
    /// `/var/lib/berth`
    pub lib: PathBuf,
    /// `/run/berth`
    pub run: PathBuf,
    /// Directories searched for images by name, in order.
    pub image_dirs: Vec<PathBuf>,
}

impl Default for Layout {
    fn default() -> Self {
        Layout {
            lib: "/var/lib/berth".into(),
            run: "/run/berth".into(),
            image_dirs: vec![
                "/usr/local/lib/berth/images".into(),
                "/usr/lib/berth/images".into(),
            ],
        }
    }
}

/// The runtime record of a container that has been started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Runtime {
    pub running: bool,
    pub leader: i32,
    /// The leader's start time (field 22 of /proc/PID/stat), against PID reuse.
    pub leader_start: u64,
    pub started_at: u64,
    pub exit_status: i32,
    /// Resource settings in force while running, when `set --runtime` changed them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<crate::spec::Resources>,
    /// OOM kills recorded so far, and when the last one happened (microseconds).
    #[serde(default)]
    pub oom_kills: u64,
    #[serde(default)]
    pub last_oom_at: u64,
    /// Why the last start failed, or why the last exit status is unknown.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub last_error: String,
    /// A start is in progress: written before the start makes anything, replaced when it is
    /// recorded as running or failed. Found at recovery, it means berthd died during a start,
    /// which is then undone.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub starting: bool,
    /// The OOM kill counter of the run's cgroup as last counted (`None` in records of older
    /// berths), so that kills while berthd was away are counted when it re-adopts the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oom_seen: Option<u64>,
    /// The `berth@` unit that holds the run, when one does (its processes are there, not in
    /// a scope).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_by: Option<String>,
}

impl Layout {
    pub fn containers(&self) -> PathBuf {
        self.lib.join("containers")
    }
    pub fn container_dir(&self, name: &str) -> PathBuf {
        self.containers().join(name)
    }
    pub fn definition(&self, name: &str) -> PathBuf {
        self.container_dir(name).join("container.toml")
    }
    pub fn runtime(&self, name: &str) -> PathBuf {
        self.run.join("containers").join(format!("{name}.json"))
    }

    /// The first image directory holding `name`.
    pub fn find_image(&self, name: &str) -> Option<PathBuf> {
        self.image_dirs
            .iter()
            .map(|d| d.join(name))
            .find(|p| p.is_dir())
    }
}

/// Write `data` to `path` atomically. A write that fails (a full disk) leaves neither a
/// temporary file nor a damaged `path` behind.
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_data()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err()
        && let Err(e) = std::fs::remove_file(&tmp)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!("cannot remove {}: {e}, ignoring", tmp.display());
    }
    written
}

pub fn save_definition(layout: &Layout, def: &Definition) -> std::io::Result<()> {
    let text = toml::to_string(def).map_err(std::io::Error::other)?;
    write_atomic(&layout.definition(&def.name), text.as_bytes())
}

pub fn save_runtime(layout: &Layout, name: &str, rt: &Runtime) -> std::io::Result<()> {
    write_atomic(&layout.runtime(name), &serde_json::to_vec(rt)?)
}

/// The runtime record, if it is there and readable.
pub fn load_runtime(layout: &Layout, name: &str) -> Option<Runtime> {
    read_runtime(layout, name).ok().flatten()
}

/// The runtime record: `Ok(None)` when there is none, an error when it is there but cannot be
/// read or parsed (truncated, empty, garbage). Fields a newer berth added are ignored.
pub fn read_runtime(layout: &Layout, name: &str) -> std::io::Result<Option<Runtime>> {
    let data = match std::fs::read(layout.runtime(name)) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if data.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "the file is empty",
        ));
    }
    serde_json::from_slice(&data)
        .map(Some)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// The start time of a process (clock ticks since boot), from /proc/PID/stat.
pub fn process_start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_start_time(&stat)
}

/// Field 22 of a /proc/PID/stat line; the command (field 2) may contain spaces and ')'.
pub fn parse_start_time(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(19)?.parse().ok()
}

/// Microseconds since the epoch.
pub fn now_usec() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_survives_odd_command_names() {
        let line =
            "1234 (a) b (c) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 100";
        assert_eq!(parse_start_time(line), Some(987654));
        assert_eq!(parse_start_time("garbage"), None);
    }

    #[test]
    fn atomic_write_and_runtime_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout {
            lib: dir.path().join("lib"),
            run: dir.path().join("run"),
            image_dirs: vec![],
        };
        std::fs::create_dir_all(layout.run.join("containers")).unwrap();
        let rt = Runtime {
            running: true,
            leader: 7,
            leader_start: 9,
            started_at: 1,
            exit_status: -1,
            oom_kills: 2,
            ..Default::default()
        };
        save_runtime(&layout, "web", &rt).unwrap();
        assert_eq!(load_runtime(&layout, "web"), Some(rt));
        assert!(!layout.runtime("web").with_extension("tmp").exists());
    }

    #[test]
    fn damaged_runtime_records_are_errors_and_newer_ones_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout {
            lib: dir.path().join("lib"),
            run: dir.path().join("run"),
            image_dirs: vec![],
        };
        std::fs::create_dir_all(layout.run.join("containers")).unwrap();
        assert!(read_runtime(&layout, "none").unwrap().is_none());
        let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/state/runtime");
        let mut seen = 0;
        for f in std::fs::read_dir(fixtures).unwrap() {
            let f = f.unwrap().path();
            let text = std::fs::read_to_string(&f).unwrap_or_default();
            let text = text.replace("@LEADER@", "42").replace("@START@", "7");
            std::fs::write(layout.runtime("x"), text).unwrap();
            let r = read_runtime(&layout, "x");
            if f.ends_with("newer.json") {
                let rt = r.unwrap().unwrap();
                assert!(rt.running && rt.leader == 42 && rt.leader_start == 7);
                assert_eq!(rt.oom_seen, Some(0));
            } else {
                let e = r.unwrap_err();
                assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{f:?}: {e}");
                assert!(load_runtime(&layout, "x").is_none());
            }
            seen += 1;
        }
        assert_eq!(seen, 5);
    }

    #[test]
    fn a_failed_atomic_write_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        // The rename fails (the target is a non-empty directory): the file written for it goes.
        let target = dir.path().join("rec.json");
        std::fs::create_dir(&target).unwrap();
        std::fs::write(target.join("x"), "").unwrap();
        assert!(write_atomic(&target, b"{}").is_err());
        assert!(!dir.path().join("rec.tmp").exists());
    }
}
