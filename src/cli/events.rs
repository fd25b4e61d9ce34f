//! `berthctl events [--filter KEY=VALUE]... [-o json]`: a live stream of what happens to
//! containers and images, made from berthd's D-Bus signals (as `podman events` shows its
//! event log): container create, start, ready, stop, died, pause, unpause, restart, oom,
//! health_status and remove; image create and remove. Nothing is polled: one match rule on
//! the bus, for signals sent by berthd.
//!
//! Also the readiness and restart lines `status` shows.

use std::collections::BTreeMap;
use std::collections::HashMap;

use clap::Args;
use futures_util::StreamExt;
use serde::Serialize;
use zbus::names::InterfaceName;
use zbus::{OwnedObjectPath, OwnedVariant as OwnedValue, Variant};

use super::{CliError, CliResult, Exit, Format, manager};
use crate::dbus::{BUS_NAME, ContainerProxy, MANAGER_PATH};

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Only events matching KEY=VALUE: container=NAME, image=NAME, type=container|image,
    /// event=STATUS (start, died, oom, remove, …). Repeatable: the same key matches any of
    /// its values, different keys must all match.
    #[arg(long = "filter", short = 'f', value_name = "KEY=VALUE")]
    pub filters: Vec<String>,
    #[arg(long, short = 'o', value_enum, default_value_t)]
    pub output: Format,
}

/// One event, as `-o json` prints it (podman's keys).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Event {
    /// container | image
    #[serde(rename = "Type")]
    pub kind: &'static str,
    pub status: &'static str,
    pub name: String,
    /// Microseconds since the epoch (when berthctl received it).
    pub time: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_exit_code: Option<i32>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, String>,
}

/// The parsed `--filter`s: key → accepted values.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Filters(BTreeMap<String, Vec<String>>);

impl Filters {
    pub fn parse(list: &[String]) -> Result<Filters, String> {
        let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for f in list {
            let Some((k, v)) = f.split_once('=') else {
                return Err(format!("filter {f:?} is not KEY=VALUE"));
            };
            if !matches!(k, "container" | "image" | "type" | "event") {
                return Err(format!(
                    "unknown filter {k:?}: use container, image, type or event"
                ));
            }
            if k == "type" && !matches!(v, "container" | "image") {
                return Err(format!("type={v:?}: use container or image"));
            }
            m.entry(k.into()).or_default().push(v.into());
        }
        Ok(Filters(m))
    }

    pub fn matches(&self, e: &Event) -> bool {
        self.0.iter().all(|(k, vs)| {
            let got = match k.as_str() {
                "container" if e.kind == "container" => e.name.as_str(),
                "image" if e.kind == "image" => e.name.as_str(),
                "container" | "image" => return false,
                "type" => e.kind,
                "event" => e.status,
                _ => return false,
            };
            vs.iter().any(|v| v == got)
        })
    }
}

impl Event {
    fn new(kind: &'static str, status: &'static str, name: &str) -> Event {
        Event {
            kind,
            status,
            name: name.into(),
            time: super::output::now_usec(),
            container_exit_code: None,
            attributes: BTreeMap::new(),
        }
    }

    /// The line podman prints: time, type, status, name (attributes).
    pub fn line(&self) -> String {
        let mut attrs: Vec<String> = self
            .attributes
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        if let Some(c) = self.container_exit_code {
            attrs.insert(0, format!("exitCode={c}"));
        }
        let attrs = if attrs.is_empty() {
            String::new()
        } else {
            format!(" ({})", attrs.join(", "))
        };
        format!(
            "{} {} {} {}{attrs}",
            precise_time(self.time),
            self.kind,
            self.status,
            self.name
        )
    }
}

fn precise_time(usec: u64) -> String {
    let t = super::output::timestamp(usec);
    let t = t.strip_suffix(" UTC").unwrap_or(&t);
    format!("{t}.{:06} +0000 UTC", usec % 1_000_000)
}

/// The events one Manager signal means.
pub fn manager_event(member: &str, name: &str, extra: Option<u64>) -> Option<Event> {
    let (kind, status) = match member {
        "ContainerNew" => ("container", "create"),
        "ContainerRemoved" => ("container", "remove"),
        "ContainerOOMKilled" => ("container", "oom"),
        "ImageNew" => ("image", "create"),
        "ImageRemoved" => ("image", "remove"),
        _ => return None,
    };
    let mut e = Event::new(kind, status, name);
    if let Some(k) = extra {
        e.attributes.insert("oomKills".into(), k.to_string());
    }
    Some(e)
}

/// The events one `PropertiesChanged` of a container means (in the order they happened).
pub fn container_events(name: &str, changed: &HashMap<String, OwnedValue>) -> Vec<Event> {
    let s = |k: &str| {
        changed
            .get(k)
            .and_then(|v| String::try_from(v.clone()).ok())
    };
    let mut out = Vec::new();
    if let Some(n) = changed
        .get("RestartCount")
        .and_then(|v| u32::try_from(v).ok())
        && n > 0
    {
        let mut e = Event::new("container", "restart", name);
        e.attributes.insert("restartCount".into(), n.to_string());
        out.push(e);
    }
    match s("State").as_deref() {
        Some("running") if changed.contains_key("StartedAt") => {
            out.push(Event::new("container", "start", name))
        }
        Some("running") => out.push(Event::new("container", "unpause", name)),
        Some("paused") => out.push(Event::new("container", "pause", name)),
        Some("stopping") => out.push(Event::new("container", "stop", name)),
        Some("exited") => {
            let mut e = Event::new("container", "died", name);
            e.container_exit_code = changed
                .get("ExitStatus")
                .and_then(|v| i32::try_from(v).ok());
            out.push(e);
        }
        _ => {}
    }
    if changed.get("Ready").and_then(|v| bool::try_from(v).ok()) == Some(true) {
        let mut e = Event::new("container", "ready", name);
        if let Some(t) = s("StatusText").filter(|t| !t.is_empty()) {
            e.attributes.insert("status".into(), t);
        }
        out.push(e);
    }
    if let Some(h) = s("Health").filter(|h| !h.is_empty()) {
        let mut e = Event::new("container", "health_status", name);
        e.attributes.insert("health".into(), h);
        out.push(e);
    }
    out
}

pub async fn run(a: EventsArgs) -> CliResult {
    let filters =
        Filters::parse(&a.filters).map_err(|m| CliError::new(Exit::InvalidArgument, m))?;
    let (conn, proxy) = manager().await?;
    let rule = zbus::MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .sender(BUS_NAME)
        .build()
        .map_err(CliError::from)?;
    let mut stream =
        zbus::MessageStream::for_match_rule(rule, &conn, std::num::NonZeroUsize::new(256))
            .await
            .map_err(CliError::from)?;
    // The subscription is in place: say so on stderr (scripts and tests wait for it), then
    // make sure berthd is there.
    proxy.list_containers().await?;
    eprintln!("berthctl: listening for events");
    let prefix = format!("{}/container/", MANAGER_PATH);
    while let Some(msg) = stream.next().await {
        let Ok(msg) = msg else { continue };
        let hdr = msg.header();
        let (Some(iface), Some(member), Some(path)) = (hdr.interface(), hdr.member(), hdr.path())
        else {
            continue;
        };
        let events = match (iface.as_str(), member.as_str()) {
            ("org.berth.berth1.Manager", "ContainerOOMKilled") => msg
                .body()
                .deserialize::<(String, OwnedObjectPath, u64)>()
                .ok()
                .and_then(|(n, _, k)| manager_event("ContainerOOMKilled", &n, Some(k)))
                .into_iter()
                .collect(),
            ("org.berth.berth1.Manager", m) => msg
                .body()
                .deserialize::<(String, OwnedObjectPath)>()
                .ok()
                .and_then(|(n, _)| manager_event(m, &n, None))
                .into_iter()
                .collect(),
            ("org.freedesktop.DBus.Properties", "PropertiesChanged") => {
                let Some(name) = path
                    .as_str()
                    .strip_prefix(&prefix)
                    .and_then(crate::name::bus_unescape)
                else {
                    continue;
                };
                let Ok((i, mut changed, _)) =
                    msg.body()
                        .deserialize::<(String, HashMap<String, OwnedValue>, Vec<String>)>()
                else {
                    continue;
                };
                if i != "org.berth.berth1.Container" {
                    continue;
                }
                // An exit with the same status as the last one does not change ExitStatus:
                // ask for it.
                if changed
                    .get("State")
                    .and_then(|v| String::try_from(v.clone()).ok())
                    == Some("exited".into())
                    && !changed.contains_key("ExitStatus")
                    && let Ok(c) = container(&conn, path.as_str()).await
                    && let Ok(st) = c.exit_status().await
                    && let Ok(v) = OwnedValue::try_from(Variant::from(st))
                {
                    changed.insert("ExitStatus".into(), v);
                }
                container_events(&name, &changed)
            }
            _ => continue,
        };
        for e in events.into_iter().filter(|e| filters.matches(e)) {
            let text = match a.output {
                Format::Json => serde_json::to_string(&e).unwrap_or_default(),
                Format::Table => e.line(),
            };
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            if writeln!(out, "{text}").and_then(|()| out.flush()).is_err() {
                // A closed pipe (`| head`): stop quietly.
                return Ok(0);
            }
        }
    }
    Ok(0)
}

async fn container<'a>(conn: &zbus::Connection, path: &'a str) -> zbus::Result<ContainerProxy<'a>> {
    ContainerProxy::builder(conn).path(path).build().await
}

/// The properties of a container's `org.berth.berth1.Container` interface, without the
/// `GetAll` and match rule that a caching container proxy would first make.
async fn container_properties(
    conn: &zbus::Connection,
    name: &str,
) -> Option<(zbus::fdo::PropertiesProxy<'static>, InterfaceName<'static>)> {
    let props = zbus::fdo::PropertiesProxy::builder(conn)
        .destination(crate::dbus::BUS_NAME)
        .path(crate::name::container_path(name))
        .build()
        .await
        .ok()?;
    Some((
        props,
        InterfaceName::from_static_str_unchecked("org.berth.berth1.Container"),
    ))
}

/// A container's health ("" without a check, or when it cannot be read): one
/// `Properties.Get`.
pub async fn health_of(conn: &zbus::Connection, name: &str) -> String {
    let get = async {
        let (props, iface) = container_properties(conn, name).await?;
        String::try_from(props.get(iface, "Health").await.ok()?).ok()
    };
    get.await.unwrap_or_default()
}

/// A container's readiness, health and restart-policy properties, in one `GetAll`; `None`
/// when it cannot be read (the container went away meanwhile).
pub async fn life_of(conn: &zbus::Connection, name: &str) -> Option<crate::dbus::LifeInfo> {
    let (props, iface) = container_properties(conn, name).await?;
    let all = props.get_all(iface).await.ok()?;
    Some(life_from(&all))
}

/// [`life_of`]'s reading of a `GetAll` answer (absent or mistyped properties read as unset).
pub fn life_from(all: &HashMap<String, OwnedValue>) -> crate::dbus::LifeInfo {
    let s = |k: &str| {
        all.get(k)
            .and_then(|v| String::try_from(v.clone()).ok())
            .unwrap_or_default()
    };
    let b = |k: &str| {
        all.get(k)
            .and_then(|v| bool::try_from(v).ok())
            .unwrap_or(false)
    };
    let u = |k: &str| all.get(k).and_then(|v| u32::try_from(v).ok()).unwrap_or(0);
    crate::dbus::LifeInfo {
        ready: b("Ready"),
        status_text: s("StatusText"),
        notify_ready: b("NotifyReady"),
        restart_policy: s("RestartPolicy"),
        restart_count: u("RestartCount"),
        next_restart_at: all
            .get("NextRestartAt")
            .and_then(|v| u64::try_from(v).ok())
            .unwrap_or(0),
        health: s("Health"),
        health_failures: u("HealthFailures"),
    }
}

/// What `status` shows of readiness and the restart policy.
pub async fn life_lines(conn: &zbus::Connection, name: &str) -> Vec<String> {
    let path = crate::name::container_path(name);
    let Ok(c) = container(conn, &path).await else {
        return vec![];
    };
    let mut lines = Vec::new();
    if c.notify_ready().await.unwrap_or(false) {
        let ready = if c.ready().await.unwrap_or(false) {
            "yes"
        } else {
            "no (waiting for READY=1)"
        };
        lines.push(format!("     Ready: {ready}"));
    }
    if let Ok(t) = c.status_text().await
        && !t.is_empty()
    {
        lines.push(format!("    Notify: {t}"));
    }
    if let Ok(h) = c.health().await
        && !h.is_empty()
    {
        lines.push(format!(
            "    Health: {h} ({} failed check(s) in a row)",
            c.health_failures().await.unwrap_or(0)
        ));
    }
    if let Ok(p) = c.restart_policy().await
        && p != "no"
    {
        let mut l = format!(
            "   Restart: {p}; {} restart(s)",
            c.restart_count().await.unwrap_or(0)
        );
        if let Ok(at) = c.next_restart_at().await
            && at != 0
        {
            l.push_str(&format!("; next at {}", precise_time(at)));
        }
        lines.push(l);
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(x: impl Into<Variant<'static>>) -> OwnedValue {
        OwnedValue::try_from(x.into()).unwrap()
    }

    #[test]
    fn property_changes_become_podman_events() {
        let m: HashMap<String, OwnedValue> = [
            ("State".to_string(), v("running")),
            ("StartedAt".to_string(), v(5u64)),
        ]
        .into();
        let e = container_events("web", &m);
        assert_eq!(e.len(), 1);
        assert_eq!((e[0].kind, e[0].status), ("container", "start"));
        let m: HashMap<String, OwnedValue> = [
            ("State".to_string(), v("exited")),
            ("ExitStatus".to_string(), v(3i32)),
        ]
        .into();
        let e = container_events("web", &m);
        assert_eq!(e[0].status, "died");
        assert_eq!(e[0].container_exit_code, Some(3));
        assert!(
            e[0].line().ends_with("container died web (exitCode=3)"),
            "{}",
            e[0].line()
        );
        let m: HashMap<String, OwnedValue> = [
            ("RestartCount".to_string(), v(2u32)),
            ("State".to_string(), v("running")),
            ("StartedAt".to_string(), v(9u64)),
        ]
        .into();
        let st: Vec<_> = container_events("web", &m)
            .iter()
            .map(|e| e.status)
            .collect();
        assert_eq!(st, ["restart", "start"]);
        let m: HashMap<String, OwnedValue> = [("Ready".to_string(), v(true))].into();
        assert_eq!(container_events("web", &m)[0].status, "ready");
        // A reset count (a user start) is no restart.
        let m: HashMap<String, OwnedValue> = [("RestartCount".to_string(), v(0u32))].into();
        assert!(container_events("web", &m).is_empty());
        assert_eq!(
            manager_event("ContainerOOMKilled", "web", Some(1))
                .unwrap()
                .status,
            "oom"
        );
        assert!(manager_event("Stats", "web", None).is_none());
    }

    #[test]
    fn filters_match_like_podmans() {
        let f = Filters::parse(&[
            "container=web".into(),
            "container=db".into(),
            "event=start".into(),
        ])
        .unwrap();
        let start = Event::new("container", "start", "db");
        assert!(f.matches(&start));
        assert!(!f.matches(&Event::new("container", "died", "db")));
        assert!(!f.matches(&Event::new("container", "start", "other")));
        assert!(!f.matches(&Event::new("image", "start", "web")));
        let t = Filters::parse(&["type=image".into()]).unwrap();
        assert!(t.matches(&Event::new("image", "remove", "alpine")));
        assert!(!t.matches(&start));
        assert!(Filters::parse(&["bogus=1".into()]).is_err());
        assert!(Filters::parse(&["type=volume".into()]).is_err());
        assert!(Filters::parse(&["container".into()]).is_err());
        let j = serde_json::to_value(&start).unwrap();
        assert_eq!(j["Type"], "container");
        assert_eq!(j["Status"], "start");
        assert_eq!(j["Name"], "db");
    }
}
