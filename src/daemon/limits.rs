//! Resource flows of the registry: live changes (`SetUnitProperties` on the scope), stats from
//! the scope's cgroup, stats subscriptions, and OOM kill detection.

use std::os::fd::{AsFd, AsRawFd};
use std::time::{Duration, Instant};

use tracing::{info, warn};
use zbus::names::BusName;
use zbus::object_server::SignalEmitter;

use super::error::{Error, Result};
use super::store;
use super::table::{Registry, State, path};
use crate::cgroup::{self, Cgroup, OomWatch};
use crate::dbus::{self, StatsInfo};
use crate::spec::{limits, props};
use crate::systemd::properties::{self, Property};

/// At most this many stats subscriptions at once.
pub const MAX_STATS_WATCHERS: usize = 64;
/// The shortest interval a subscriber may ask for.
pub const MIN_STATS_INTERVAL: Duration = Duration::from_millis(100);

impl Registry {
    /// Find a running container's cgroup and start watching it for OOM kills.
    pub(super) fn adopt_cgroup(&self, name: &str, leader: i32) {
        let cg = match self.hierarchies.of_process(leader as u32) {
            Ok(cg) => cg,
            Err(e) => {
                warn!("cannot find the cgroup of {name}: {e}, ignoring");
                return;
            }
        };
        match cg.delegated() {
            Ok(true) => {}
            // A container held by its berth@ unit is in the unit's `payload` subgroup; the
            // mark is on the unit's own cgroup.
            Ok(false) if self.with(name, |e| e.held_by.is_some()).unwrap_or(false) => {}
            Ok(false) => {
                warn!("the cgroup of {name} is not marked as delegated by systemd, ignoring")
            }
            Err(e) => warn!("cannot check delegation of {name}'s cgroup: {e}, ignoring"),
        }
        let (exited, kills, at, seen) = {
            let mut entries = self.entries.lock().unwrap();
            let Some(e) = entries.get_mut(name) else {
                return;
            };
            e.cgroup = Some(cg.clone());
            (e.exited.subscribe(), e.oom_kills, e.last_oom_at, e.oom_seen)
        };
        // A start writes a fresh runtime record; the kills of earlier runs go on counting.
        if kills > 0 {
            self.persist_oom(name, kills, at, seen.unwrap_or(0));
        }
        if let Some(w) = cg.oom_watch() {
            tokio::spawn(self.arc().watch_oom(name.to_string(), cg, w, exited, seen));
        }
    }

    /// Wait for OOM events in a container's cgroup until it exits.
    ///
    /// - v2: the kernel notifies changes of `memory.events` (inotify IN_MODIFY) after counting
    ///   the kill, so the counter is read at once.
    /// - v1: an eventfd registered in `cgroup.event_control` fires when the OOM killer is
    ///   invoked, before the victim dies and the kill is counted. When the victim was the
    ///   payload, the container ends and systemd removes the cgroup within milliseconds, so
    ///   the counter is polled briefly; if the cgroup vanishes first, the event counts as one
    ///   kill (with `oom_kill_disable=0`, which berth never changes, the killer always kills).
    ///
    /// `seen` is the cgroup's counter as last counted (0 for a new run). On re-adoption the
    /// kernel's counter may be ahead of it: those kills happened while berthd was away, and are
    /// counted at once. `None` (a record of an older berth) takes the counter as it is now.
    async fn watch_oom(
        self: std::sync::Arc<Self>,
        name: String,
        cg: Cgroup,
        w: OomWatch,
        mut exited: tokio::sync::watch::Receiver<Option<i32>>,
        seen: Option<u64>,
    ) {
        let now = cg.oom_kills().ok().flatten();
        let mut seen = seen.or(now).unwrap_or(0);
        if let Some(now) = now
            && now > seen
        {
            info!(
                "container {name}: {} OOM kill(s) happened while berthd was away",
                now - seen
            );
            self.record_oom(&name, &mut seen, now).await;
        }
        let source = match oom_event_source(&w) {
            Ok(s) => s,
            Err(e) => {
                warn!("cannot watch {name} for OOM kills: {e}, ignoring");
                return;
            }
        };
        let v1 = matches!(w, OomWatch::V1 { .. });
        let mut buf = [0u8; 4096];
        loop {
            tokio::select! {
                r = source.readable() => {
                    let Ok(mut guard) = r else { return };
                    let _ = guard.try_io(|fd| {
                        nix::unistd::read(fd.get_ref(), &mut buf).map_err(std::io::Error::from)
                    });
                    guard.clear_ready();
                }
                _ = async { exited.wait_for(Option::is_some).await.is_ok() } => return,
            }
            if !v1 {
                if let Ok(Some(now)) = cg.oom_kills() {
                    self.record_oom(&name, &mut seen, now).await;
                }
                continue;
            }
            for attempt in 0..100 {
                match cg.oom_kills() {
                    Ok(Some(now)) if now > seen => {
                        self.record_oom(&name, &mut seen, now).await;
                        break;
                    }
                    Ok(_) => tokio::time::sleep(Duration::from_millis(2)).await,
                    // Gone at once: the eventfd also fires when the cgroup is removed (the
                    // container stopped), which is no OOM kill.
                    Err(_) if attempt == 0 => return,
                    Err(_) => {
                        // Gone while the kill was being counted: the victim was the payload,
                        // so the container ends; it was an OOM kill if it died of SIGKILL.
                        let status = tokio::time::timeout(
                            Duration::from_secs(2),
                            exited.wait_for(Option::is_some),
                        )
                        .await
                        .ok()
                        .and_then(|r| r.ok().and_then(|v| *v));
                        if status == Some(128 + libc::SIGKILL) {
                            let now = seen + 1;
                            self.record_oom(&name, &mut seen, now).await;
                        }
                        return;
                    }
                }
            }
        }
    }

    /// The kernel's counter says `now` kills; record the ones not seen yet.
    async fn record_oom(&self, name: &str, seen: &mut u64, now: u64) {
        if now <= *seen {
            return;
        }
        let new = now - *seen;
        *seen = now;
        let at = store::now_usec();
        let total = {
            let mut entries = self.entries.lock().unwrap();
            let Some(e) = entries.get_mut(name) else {
                return;
            };
            e.oom_kills += new;
            e.last_oom_at = at;
            e.oom_seen = Some(now);
            e.oom_kills
        };
        self.persist_oom(name, total, at, now);
        warn!("container {name}: {new} process(es) killed for lack of memory ({total} so far)");
        self.publish(name).await;
        if let Some(em) = self.manager_emitter()
            && let Err(e) = dbus::Manager::container_oom_killed(&em, name, path(name), total).await
        {
            warn!("cannot announce the OOM kill in {name}: {e}, ignoring");
        }
    }

    /// Keep the OOM counters in the runtime record, so that a berthd restart keeps them.
    /// Only while it runs, under the entries lock: `on_exit` marks the entry exited before it
    /// writes its own record (with the counters), which must not be overwritten by this one.
    fn persist_oom(&self, name: &str, kills: u64, at: u64, seen: u64) {
        let entries = self.entries.lock().unwrap();
        if entries.get(name).map(|e| e.state) != Some(State::Running) {
            return;
        }
        let Some(mut rt) = store::load_runtime(&self.layout, name) else {
            return;
        };
        rt.oom_kills = kills;
        rt.last_oom_at = at;
        rt.oom_seen = Some(seen);
        if let Err(e) = store::save_runtime(&self.layout, name, &rt) {
            warn!("cannot record OOM kills of {name}: {e}, ignoring");
        }
    }

    // ---- set ----------------------------------------------------------------------------

    /// Change resource settings of a running container through systemd. Every assignment is
    /// checked before anything changes; `runtime` keeps the definition as it is.
    pub(super) async fn set_resources(
        &self,
        name: String,
        assignments: Vec<(String, String)>,
        runtime: bool,
    ) -> Result<()> {
        if assignments.is_empty() {
            return Err(Error::InvalidArgument("nothing to set".into()));
        }
        // `res` is what is in force (the definition plus earlier runtime changes); the
        // definition only takes this call's assignments, so that a runtime value set before
        // never leaks into it through a later persistent change of another key.
        let (mut res, mut def) = self.with(&name, |e| {
            if e.state != State::Running {
                return Err(Error::InvalidState {
                    name: name.clone(),
                    state: e.state.as_str(),
                    hint: ", not running; limits of a stopped container are changed in its \
                           definition",
                });
            }
            Ok((e.resources.clone(), e.spec.definition.clone()))
        })??;
        let mut keys: Vec<&'static limits::Key> = Vec::new();
        let mut raw = std::collections::BTreeMap::new();
        let mut raw_props: Vec<Property> = Vec::new();
        for (key, value) in &assignments {
            if let Some(k) = limits::key(key) {
                if k.kind == limits::Kind::Device {
                    return Err(Error::InvalidArgument(
                        "devices can only be given when the container is created".into(),
                    ));
                }
                if k.kind == limits::Kind::Rate {
                    // The shaping is made with the veth at start; it is not a scope property.
                    return Err(Error::InvalidArgument(
                        "network-rate can only be given when the container is created".into(),
                    ));
                }
                res.set(key, value)?;
                def.resources.set(key, value)?;
                if !keys.iter().any(|x| x.name == k.name) {
                    keys.push(k);
                }
            } else if props::is_known(key) {
                let p = props::parse(key, value, &self.host)
                    .map_err(|e| Error::InvalidArgument(e.to_string()))?;
                raw_props.push(properties::raw_property(&p));
                raw.insert(key.clone(), value.clone());
            } else {
                return Err(Error::InvalidArgument(format!(
                    "unknown setting {key:?} (known: {}, or a scope property like MemoryLow)",
                    limits::KEYS
                        .iter()
                        .map(|k| k.name)
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
        // The whole set in force must be valid together; only the keys assigned are sent.
        let in_force = limits::check(&res, &self.host)?;
        let mut props: Vec<Property> = keys
            .iter()
            .flat_map(|k| properties::key_properties(&in_force, k))
            .collect();
        props.extend(raw_props);
        let unit = self.unit_of(&name);
        self.systemd
            .set_unit_properties(&unit, runtime, &props)
            .await
            .map_err(|source| Error::Systemd {
                what: "the change",
                source,
            })?;
        if !runtime {
            def.properties.extend(raw);
            store::save_definition(&self.layout, &def)
                .map_err(|e| Error::io("cannot save the definition", e))?;
        }
        let rt_res = res.clone();
        let spec = if runtime {
            None
        } else {
            Some(crate::spec::validate(&def, &self.host)?)
        };
        if self
            .with(&name, |e| {
                e.resources = res;
                if let Some(s) = spec {
                    e.spec = s;
                }
            })
            .is_err()
        {
            return Err(Error::NoSuchContainer(name));
        }
        if let Some(mut rt) = store::load_runtime(&self.layout, &name) {
            rt.resources = Some(rt_res);
            if let Err(e) = store::save_runtime(&self.layout, &name, &rt) {
                warn!("cannot record the runtime settings of {name}: {e}, ignoring");
            }
        }
        info!(
            "container {name}: set {}{}",
            assignments
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" "),
            if runtime { " (until it stops)" } else { "" }
        );
        self.publish(&name).await;
        Ok(())
    }

    // ---- stats --------------------------------------------------------------------------

    /// One sample per container (all when `names` is empty). CPU percentages are over the
    /// time since the previous sample of the same container; without a recent one, two
    /// samples are taken 100 ms apart.
    pub(super) async fn stats(&self, names: Vec<String>) -> Result<Vec<StatsInfo>> {
        let first = self.sample(&names)?;
        let stale = {
            let prev = self.cpu_samples.lock().unwrap();
            first.iter().any(|(s, _)| {
                s.state == "running"
                    && prev
                        .get(&s.name)
                        .is_none_or(|(t, _)| t.elapsed() >= Duration::from_secs(30))
            })
        };
        let samples = if stale {
            self.record_cpu(&first);
            tokio::time::sleep(Duration::from_millis(100)).await;
            self.sample(&names)?
        } else {
            first
        };
        Ok(self.record_cpu(&samples))
    }

    /// Fill in `cpu_percent` from the previous sample and remember this one.
    fn record_cpu(&self, samples: &[(StatsInfo, Instant)]) -> Vec<StatsInfo> {
        let mut prev = self.cpu_samples.lock().unwrap();
        let mut out = Vec::with_capacity(samples.len());
        for (s, at) in samples {
            let mut s = s.clone();
            if let Some((t0, u0)) = prev.get(&s.name) {
                let dt = at.saturating_duration_since(*t0).as_nanos() as f64;
                if dt > 0.0 && s.cpu_usage_ns >= *u0 {
                    s.cpu_percent = (s.cpu_usage_ns - u0) as f64 / dt * 100.0;
                }
            }
            if s.state == "running" {
                prev.insert(s.name.clone(), (*at, s.cpu_usage_ns));
            }
            out.push(s);
        }
        out
    }

    fn sample(&self, names: &[String]) -> Result<Vec<(StatsInfo, Instant)>> {
        let targets: Vec<Target> = {
            let entries = self.entries.lock().unwrap();
            let pick: Vec<String> = if names.is_empty() {
                entries
                    .iter()
                    .filter(|(_, e)| e.state == State::Running)
                    .map(|(n, _)| n.clone())
                    .collect()
            } else {
                names.to_vec()
            };
            pick.into_iter()
                .map(|n| {
                    let e = entries
                        .get(&n)
                        .ok_or_else(|| Error::NoSuchContainer(n.clone()))?;
                    // With the host's network namespace, its counters are the host's, not the
                    // container's: report none.
                    let own_net = e.spec.network.mode != crate::network::NetworkMode::Host;
                    Ok((
                        n,
                        e.state.as_str().to_string(),
                        e.cgroup.clone(),
                        e.leader.filter(|_| own_net),
                        e.oom_kills,
                    ))
                })
                .collect::<Result<_>>()?
        };
        let mut out = Vec::with_capacity(targets.len());
        for (name, state, cg, leader, oom_kills) in targets {
            let mut s = StatsInfo {
                name,
                state,
                memory_limit_bytes: u64::MAX,
                pids_limit: u64::MAX,
                oom_kills,
                ..StatsInfo::default()
            };
            if let Some(Ok(c)) = cg.as_ref().map(Cgroup::stats) {
                s.cpu_usage_ns = c.cpu_usage_ns.unwrap_or(0);
                s.memory_bytes = c.memory_bytes.unwrap_or(0);
                s.memory_limit_bytes = c.memory_limit_bytes.unwrap_or(u64::MAX);
                s.pids = c.pids.unwrap_or(0);
                s.pids_limit = c.pids_limit.unwrap_or(u64::MAX);
                s.io_read_bytes = c.io_read_bytes.unwrap_or(0);
                s.io_write_bytes = c.io_write_bytes.unwrap_or(0);
            }
            if let Some(Ok((rx, tx))) = leader.map(|p| cgroup::net_totals(p as u32)) {
                s.net_rx_bytes = rx;
                s.net_tx_bytes = tx;
            }
            s.timestamp_usec = store::now_usec();
            out.push((s, Instant::now()));
        }
        Ok(out)
    }

    /// Send `Stats` signals to `subscriber` every `interval` until it leaves the bus or
    /// unsubscribes. A second subscription of the same subscriber replaces the first.
    pub(super) fn watch_stats(&self, subscriber: String, interval_usec: u64) -> Result<()> {
        let interval = Duration::from_micros(interval_usec);
        if interval < MIN_STATS_INTERVAL || interval > Duration::from_secs(3600) {
            return Err(Error::InvalidArgument(format!(
                "the interval must be between {} ms and one hour",
                MIN_STATS_INTERVAL.as_millis()
            )));
        }
        let dest = BusName::try_from(subscriber.clone())
            .map_err(|_| Error::InvalidArgument("the subscriber has no bus name".into()))?
            .to_owned();
        let mut watchers = self.stats_watchers.lock().unwrap();
        watchers.retain(|_, h| !h.is_finished());
        if !watchers.contains_key(&subscriber) && watchers.len() >= MAX_STATS_WATCHERS {
            return Err(Error::LimitExceeded(format!(
                "at most {MAX_STATS_WATCHERS} stats subscriptions"
            )));
        }
        let me = self.arc();
        let conn = self.conn.clone();
        let task = tokio::spawn(async move {
            let Ok(em) = SignalEmitter::new(&conn, dbus::MANAGER_PATH) else {
                return;
            };
            let em = em.set_destination(dest.clone());
            let Ok(bus) = zbus::fdo::DBusProxy::new(&conn).await else {
                return;
            };
            let mut tick = tokio::time::interval(interval);
            loop {
                tick.tick().await;
                if !bus.name_has_owner(dest.clone()).await.unwrap_or(false) {
                    break;
                }
                let Ok(stats) = me.stats(Vec::new()).await else {
                    continue;
                };
                if dbus::Manager::stats(&em, stats).await.is_err() {
                    break;
                }
            }
            me.stats_watchers.lock().unwrap().remove(dest.as_str());
        });
        if let Some(old) = watchers.insert(subscriber, task.abort_handle()) {
            old.abort();
        }
        Ok(())
    }

    pub(super) fn unwatch_stats(&self, subscriber: &str) {
        if let Some(h) = self.stats_watchers.lock().unwrap().remove(subscriber) {
            h.abort();
        }
    }
}

/// What [`Registry::sample`] reads for one container: name, state, cgroup, leader, OOM kills.
type Target = (String, String, Option<Cgroup>, Option<i32>, u64);

/// An fd that becomes readable on OOM events (see [`Registry::watch_oom`]).
fn oom_event_source(
    w: &OomWatch,
) -> std::io::Result<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>> {
    use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
    match w {
        OomWatch::Events(path) => {
            let ino = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
            ino.add_watch(path, AddWatchFlags::IN_MODIFY)?;
            crate::sys::async_fd(ino.into())
        }
        OomWatch::V1 {
            oom_control,
            event_control,
        } => {
            let efd = nix::sys::eventfd::EventFd::from_flags(
                nix::sys::eventfd::EfdFlags::EFD_CLOEXEC
                    | nix::sys::eventfd::EfdFlags::EFD_NONBLOCK,
            )?;
            let ctl = std::fs::File::open(oom_control)?;
            // cgroup-v1/memory.rst §9: write "<event_fd> <fd of memory.oom_control>".
            std::fs::write(
                event_control,
                format!("{} {}", efd.as_fd().as_raw_fd(), ctl.as_raw_fd()),
            )?;
            crate::sys::async_fd(efd.into())
        }
    }
}
