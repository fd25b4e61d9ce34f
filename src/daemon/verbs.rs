//! The container verbs that came with the podman-shaped CLI: rename, pause/unpause (systemd's
//! freezer), the processes of a container (`top`), the dry-run plan (`run --dry-run`,
//! `verify`) and disk usage (`system df`).

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;

use tracing::{info, warn};
use zbus::OwnedObjectPath;

use super::error::{Error, Result};
use super::store;
use super::table::{Registry, State, path};
use crate::dbus::{self, ProcessInfo};
use crate::name;
use crate::spec::{ContainerSpec, Root};

impl Registry {
    /// Rename a container that does not run: its directory, definition, runtime record, ID
    /// range and MCS pair, and bus object follow, all under the table's lock.
    pub(super) async fn rename(&self, old: String, new: String) -> Result<OwnedObjectPath> {
        name::validate(&new)
            .map_err(|e| Error::InvalidArgument(format!("invalid container name {new:?}: {e}")))?;
        {
            let mut entries = self.entries.lock().unwrap();
            if entries.contains_key(&new) {
                return Err(Error::AlreadyExists(new));
            }
            let e = entries
                .get(&old)
                .ok_or_else(|| Error::NoSuchContainer(old.clone()))?;
            if !matches!(e.state, State::Created | State::Exited) {
                return Err(Error::InvalidState {
                    name: old,
                    state: e.state.as_str(),
                    hint: "; stop it first",
                });
            }
            let (from, to) = (
                self.layout.container_dir(&old),
                self.layout.container_dir(&new),
            );
            std::fs::rename(&from, &to).map_err(|e| {
                Error::io(format!("rename {} to {}", from.display(), to.display()), e)
            })?;
            let mut entry = entries.remove(&old).expect("checked above");
            entry.spec.definition.name = new.clone();
            if entry.spec.definition.hostname.is_none() {
                entry.spec.hostname = new.clone();
            }
            if let Err(e) = store::save_definition(&self.layout, &entry.spec.definition) {
                // Put everything back: the container keeps its old name.
                if let Err(back) = std::fs::rename(&to, &from) {
                    warn!("cannot move {} back: {back}, ignoring", to.display());
                }
                entry.spec.definition.name = old.clone();
                if entry.spec.definition.hostname.is_none() {
                    entry.spec.hostname = old.clone();
                }
                entries.insert(old.clone(), entry);
                return Err(Error::io(
                    format!("cannot write the definition of {new:?}"),
                    e,
                ));
            }
            match std::fs::rename(self.layout.runtime(&old), self.layout.runtime(&new)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => warn!("cannot move the runtime record of {old}: {e}, ignoring"),
            }
            self.move_allocations(&old, &new);
            entry.security = self.describe(&entry.spec);
            entries.insert(new.clone(), entry);
        }
        self.unexport(&old).await;
        self.logs_forget(&old);
        if let Some(em) = self.manager_emitter()
            && let Err(e) = dbus::Manager::container_removed(&em, &old, path(&old)).await
        {
            warn!("cannot announce the rename of {old}: {e}, ignoring");
        }
        self.export(&new).await;
        if let Some(em) = self.manager_emitter()
            && let Err(e) = dbus::Manager::container_new(&em, &new, path(&new)).await
        {
            warn!("cannot announce container {new}: {e}, ignoring");
        }
        info!("renamed container {old} to {new}");
        Ok(path(&new))
    }

    /// The ID range and MCS pair of `old` become `new`'s: its writable layer is owned by the
    /// range, so it must stay the same.
    fn move_allocations(&self, old: &str, new: &str) {
        let mut ranges = self.id_ranges.lock().unwrap();
        match ranges.release(old) {
            Ok(Some(r)) => {
                if let Err(e) = ranges.allocate(new, crate::userns::RangeRequest::Fixed(r)) {
                    warn!("cannot give {new} the ID range {r} of {old}: {e}, ignoring");
                }
            }
            Ok(None) => {}
            Err(e) => warn!("cannot release the ID range of {old}: {e}, ignoring"),
        }
        drop(ranges);
        if let Some((_, alloc)) = &self.selinux.labels {
            let mut alloc = alloc.lock().unwrap();
            match alloc.free(old) {
                Ok(Some(pair)) => {
                    if let Err(e) = alloc.reserve(new, pair) {
                        warn!("cannot give {new} the MCS pair of {old}: {e}, ignoring");
                    }
                }
                Ok(None) => {}
                Err(e) => warn!("cannot release the MCS pair of {old}: {e}, ignoring"),
            }
        }
    }

    /// Freeze (pause) or thaw (unpause) a running container's scope through systemd.
    pub(super) async fn freeze(&self, name: String, freeze: bool) -> Result<()> {
        let paused = self.with(&name, |e| (e.state, e.paused))?;
        match paused {
            (State::Running, p) if p != freeze => {}
            (State::Running, _) => {
                return Err(Error::InvalidState {
                    name,
                    state: if freeze { "paused" } else { "running" },
                    hint: if freeze { " already" } else { ", not paused" },
                });
            }
            (s, _) => {
                return Err(Error::InvalidState {
                    name,
                    state: s.as_str(),
                    hint: ", not running",
                });
            }
        }
        let unit = self.unit_of(&name);
        let proxy = crate::systemd::units::UnitManagerProxy::new(&self.conn)
            .await
            .map_err(|e| Error::Failed(format!("cannot talk to systemd: {e}")))?;
        let r = if freeze {
            proxy.freeze_unit(&unit).await
        } else {
            proxy.thaw_unit(&unit).await
        };
        match r {
            Ok(()) => {}
            Err(e) if crate::systemd::units::freeze_unsupported(&e) || !self.host.unified => {
                return Err(Error::Failed(format!(
                    "cannot {} {name:?}: systemd's freezer works on the unified cgroup hierarchy \
                     (cgroup v2) only, and this host uses the {} layout ({e})",
                    if freeze { "pause" } else { "unpause" },
                    if self.host.unified {
                        "unified"
                    } else {
                        "hybrid"
                    },
                )));
            }
            Err(e) => {
                return Err(Error::Failed(format!(
                    "systemd refused to {} {unit}: {e}",
                    if freeze { "freeze" } else { "thaw" }
                )));
            }
        }
        self.with(&name, |e| e.paused = freeze)?;
        self.publish(&name).await;
        info!(
            "{} container {name}",
            if freeze { "paused" } else { "unpaused" }
        );
        Ok(())
    }

    /// A paused container is thawed before it is stopped or killed (a frozen process
    /// cannot act on SIGTERM).
    pub(super) async fn thaw_if_paused(&self, name: &str) {
        if self.with(name, |e| e.paused).unwrap_or(false)
            && let Err(e) = self.freeze(name.to_string(), false).await
        {
            warn!("cannot unpause {name} before stopping it: {e}, ignoring");
        }
    }

    /// The processes in a running container's scope, as the host and the container see them.
    pub(super) async fn processes(&self, name: String) -> Result<Vec<ProcessInfo>> {
        let leader = self.with(&name, |e| (e.state, e.leader))?;
        let leader = match leader {
            (State::Running | State::Stopping, Some(pid)) => pid,
            (s, _) => {
                return Err(Error::InvalidState {
                    name,
                    state: s.as_str(),
                    hint: ", not running",
                });
            }
        };
        let unit = self.unit_of(&name);
        let sd = crate::systemd::SystemdManagerProxy::new(&self.conn)
            .await
            .map_err(|e| Error::Failed(format!("cannot talk to systemd: {e}")))?;
        let procs = sd
            .get_unit_processes(&unit)
            .await
            .map_err(|e| Error::Failed(format!("cannot list the processes of {unit}: {e}")))?;
        tokio::task::spawn_blocking(move || {
            let users = passwd_of(leader);
            procs
                .into_iter()
                .map(|(_, pid, cmd)| process_info(pid, cmd, &users))
                .collect()
        })
        .await
        .map_err(|e| Error::Failed(format!("processes of {name:?}: {e}")))
    }

    /// The plan a definition would start with, as JSON, made of nothing: no directory, ID
    /// range, label or record is created.
    pub(super) fn plan_json(&self, spec: &ContainerSpec) -> Result<String> {
        let root = match &spec.root {
            Root::Directory(_) => self.container_root(spec)?,
            Root::Image(i) => self.resolve_image(i)?,
        };
        let dirs = crate::mount::ContainerDirs::under(&self.layout.container_dir(spec.name()));
        // The range it would get: an explicit one as asked, else a placeholder of the pool
        // (a real one is allocated at create).
        let request = spec.security.userns.request();
        let pool = self.id_ranges.lock().unwrap().pool();
        let range = match request {
            Some(crate::userns::RangeRequest::Fixed(r)) => Some(r),
            Some(crate::userns::RangeRequest::Auto) => Some(crate::userns::IdRange {
                host_start: pool.host_start,
                count: crate::userns::RANGE_SIZE,
            }),
            None => None,
        };
        let seccomp = self.seccomp_program(spec)?;
        let decided = crate::plan::Decided {
            id_maps: range.map(|r| r.id_maps()),
            labels: None,
            seccomp: seccomp.clone(),
            hard_limits: |r| nix::sys::resource::getrlimit(r).map_or(u64::MAX, |(_, h)| h),
        };
        let (plan, root_source) =
            crate::plan::build(spec, &root.lowers, root.config.as_ref(), &dirs, decided)?;
        let props =
            crate::systemd::scope_properties(&format!("berth container {}", spec.name()), 0)
                .extend(crate::systemd::properties::device_policy(&spec.limits))
                .extend(crate::systemd::properties::limit_properties(&spec.limits))
                .extend(
                    spec.properties
                        .iter()
                        .map(crate::systemd::properties::raw_property),
                );
        let scope: serde_json::Map<String, serde_json::Value> = props
            .keys()
            .into_iter()
            .filter(|k| *k != "PIDs")
            .filter_map(|k| {
                props
                    .get(k)
                    .map(|v| (k.to_string(), serde_json::Value::String(prop_text(v))))
            })
            .collect();
        let mut plan_v = serde_json::to_value(&plan)
            .map_err(|e| Error::Failed(format!("cannot show the plan: {e}")))?;
        // The compiled filter is thousands of numbers: say what it is instead.
        if let Some(sec) = plan_v.get_mut("security") {
            sec["seccomp"] = match &seccomp {
                Some(p) => serde_json::json!({
                    "profile": self.describe(spec).get("seccomp").cloned().unwrap_or_default(),
                    "instructions": p.len(),
                }),
                None => serde_json::Value::String("unconfined".into()),
            };
            if matches!(request, Some(crate::userns::RangeRequest::Auto)) {
                sec["id_maps_note"] = serde_json::Value::String(format!(
                    "auto: {} IDs from the pool {pool}, allocated at create",
                    crate::userns::RANGE_SIZE
                ));
            }
            sec["selinux"] = serde_json::Value::String(
                self.describe(spec)
                    .get("selinux")
                    .cloned()
                    .unwrap_or_default(),
            );
        }
        let doc = serde_json::json!({
            "name": spec.name(),
            "image": spec.definition.image,
            "image_id": root.id.map(|d| d.to_string()),
            "root": {
                "lowers": root.lowers,
                "upper": dirs.upper,
                "source": format!("{root_source:?}"),
            },
            "scope": {
                "unit": name::scope_unit(spec.name()),
                "slice": "machine.slice",
                "properties": scope,
            },
            "labels": spec.definition.labels,
            "plan": plan_v,
        });
        serde_json::to_string_pretty(&doc)
            .map_err(|e| Error::Failed(format!("cannot show the plan: {e}")))
    }

    /// `system df` as a dictionary.
    pub(super) async fn disk_usage_map(&self) -> Result<HashMap<String, u64>> {
        let du = self.disk_usage().await.map_err(Error::Bus)?;
        Ok([
            ("images", du.images as u64),
            ("dangling", du.dangling as u64),
            ("layers", du.layers as u64),
            ("layers_bytes", du.layers_bytes),
            ("blobs", du.blobs as u64),
            ("blobs_bytes", du.blobs_bytes),
            ("reclaimable_bytes", du.reclaimable_bytes),
            ("containers", du.containers as u64),
            ("containers_bytes", du.containers_bytes),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect())
    }
}

fn prop_text(v: &crate::systemd::PropValue) -> String {
    use crate::systemd::PropValue as P;
    match v {
        P::U64(n) => n.to_string(),
        P::Str(s) => s.clone(),
        P::Bool(b) => if *b { "yes" } else { "no" }.into(),
        P::Bytes(b) => b.iter().map(|x| format!("{x:02x}")).collect(),
        P::PathU64(l) => l
            .iter()
            .map(|(p, n)| format!("{p} {n}"))
            .collect::<Vec<_>>()
            .join(", "),
        P::PathStr(l) => l
            .iter()
            .map(|(p, s)| format!("{p} {s}"))
            .collect::<Vec<_>>()
            .join(", "),
    }
}

/// Read a small regular file without following it into a FIFO or device: container
/// processes own what is below their root.
fn read_small(path: &std::path::Path, max: u64) -> Option<String> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .ok()?;
    if !f.metadata().ok()?.is_file() {
        return None;
    }
    let mut s = String::new();
    f.take(max).read_to_string(&mut s).ok()?;
    Some(s)
}

/// uid → name from the container's /etc/passwd, read through its leader's root.
fn passwd_of(leader: i32) -> HashMap<u32, String> {
    let text =
        read_small(format!("/proc/{leader}/root/etc/passwd").as_ref(), 1 << 20).unwrap_or_default();
    parse_passwd(&text)
}

fn parse_passwd(text: &str) -> HashMap<u32, String> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            let name = f.next()?;
            let uid = f.nth(1)?.parse().ok()?;
            Some((uid, name.to_string()))
        })
        .collect()
}

/// One process, from /proc/PID/status (the last NSpid is its PID in its own namespace) and
/// /proc/PID/uid_map (its uid inside the container's user namespace).
fn process_info(pid: u32, cmd: String, users: &HashMap<u32, String>) -> ProcessInfo {
    let status = read_small(format!("/proc/{pid}/status").as_ref(), 64 << 10).unwrap_or_default();
    let field = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map(str::trim)
            .unwrap_or("")
            .to_string()
    };
    let ns_pid = field("NSpid:")
        .split_whitespace()
        .last()
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    let host_uid: u32 = field("Uid:")
        .split_whitespace()
        .next()
        .and_then(|u| u.parse().ok())
        .unwrap_or(u32::MAX);
    let map = read_small(format!("/proc/{pid}/uid_map").as_ref(), 64 << 10).unwrap_or_default();
    let uid = inside_id(&map, host_uid).unwrap_or(host_uid);
    ProcessInfo {
        host_pid: pid,
        pid: ns_pid,
        host_uid,
        uid,
        user: users.get(&uid).cloned().unwrap_or_default(),
        command: cmd,
    }
}

/// The ID inside a user namespace of host ID `id`, by the namespace's map
/// (`inside outside count` lines).
fn inside_id(map: &str, id: u32) -> Option<u32> {
    map.lines().find_map(|l| {
        let mut f = l.split_whitespace().map(|x| x.parse::<u64>().ok());
        let (inside, outside, count) = (f.next()??, f.next()??, f.next()??);
        let id = u64::from(id);
        (id >= outside && id < outside + count).then(|| (inside + id - outside) as u32)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_map_into_the_namespace() {
        let map = "         0     524288      65536\n";
        assert_eq!(inside_id(map, 524288), Some(0));
        assert_eq!(inside_id(map, 524288 + 1000), Some(1000));
        assert_eq!(inside_id(map, 0), None);
        assert_eq!(inside_id("0 0 4294967295\n", 7), Some(7));
        let users = parse_passwd("root:x:0:0:root:/root:/bin/sh\nwww:x:33:33::/:/bin/false\nbad");
        assert_eq!(users[&33], "www");
        assert_eq!(users.len(), 2);
    }

    #[test]
    fn our_own_process_reads_as_itself() {
        let me = std::process::id();
        let p = process_info(me, "self".into(), &HashMap::new());
        assert_eq!(p.host_pid, me);
        assert_eq!(p.host_uid, nix::unistd::getuid().as_raw());
        assert!(p.pid > 0);
    }
}
