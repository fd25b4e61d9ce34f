//! Rendering: the JSON view structs (a stable contract, snake_case keys) and human formats.

use std::borrow::Cow;
use std::io::Write;

use serde::Serialize;

use crate::dbus::ContainerInfo;

/// One container in `--output json`.
#[derive(Debug, Serialize)]
pub struct ContainerView {
    pub name: String,
    /// created | starting | running | stopping | exited
    pub state: String,
    pub unit: String,
    /// Host PID of the container's PID 1, null when not running.
    pub leader: Option<u32>,
    pub image: Option<String>,
    pub root_directory: String,
    /// Microseconds since the epoch.
    pub created_at: u64,
    pub started_at: Option<u64>,
    /// The last run's exit status (128 + signal when killed), null before the first exit.
    pub exit_status: Option<i32>,
    /// Resource settings in force, keys as `berthctl set` takes them.
    pub resources: std::collections::BTreeMap<String, String>,
    pub oom_kills: u64,
    /// When the last OOM kill happened (microseconds since the epoch), null when never.
    pub last_oom_at: Option<u64>,
    /// How it is confined: userns, capabilities, seccomp, no-new-privileges, selinux.
    pub security: std::collections::BTreeMap<String, String>,
    pub labels: std::collections::BTreeMap<String, String>,
    /// The stored image's ID, null for a directory.
    pub image_id: Option<String>,
    /// `--network` mode: bridge, bridge:NAME, none, host, container:NAME, veth, macvlan:IFACE.
    pub network: String,
    /// Its addresses with prefix length while it runs.
    pub addresses: Vec<String>,
    /// Its published ports while it runs.
    pub ports: Vec<PortView>,
    /// Readiness, health and restart policy, as `status` shows them in text.
    #[serde(flatten)]
    pub life: LifeView,
}

/// The readiness, health and restart-policy properties of a container in `--output json`
/// (read from its Container object: they are not part of `ListContainers`' records).
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct LifeView {
    /// Running, and (with `--notify-ready`) its payload sent `READY=1`.
    pub ready: bool,
    /// Created with `--notify-ready`.
    pub notify_ready: bool,
    /// The payload's last `STATUS=` text in this run; null when it sent none.
    pub status_text: Option<String>,
    /// starting, healthy or unhealthy; null without a health check or when not running.
    pub health: Option<String>,
    /// Failed health checks in a row.
    pub health_failures: u32,
    /// no, on-failure[:N], always or unless-stopped.
    pub restart_policy: String,
    /// Restarts made by the policy since the user last started it.
    pub restart_count: u32,
    /// When the pending restart is due (microseconds since the epoch), null when none is.
    pub next_restart_at: Option<u64>,
}

impl From<crate::dbus::LifeInfo> for LifeView {
    fn from(l: crate::dbus::LifeInfo) -> Self {
        LifeView {
            ready: l.ready,
            notify_ready: l.notify_ready,
            status_text: (!l.status_text.is_empty()).then_some(l.status_text),
            health: (!l.health.is_empty()).then_some(l.health),
            health_failures: l.health_failures,
            restart_policy: l.restart_policy,
            restart_count: l.restart_count,
            next_restart_at: (l.next_restart_at != 0).then_some(l.next_restart_at),
        }
    }
}

impl ContainerView {
    /// The view with its [`LifeView`] read from the container's object (one `GetAll`); left
    /// at its defaults when the container went away meanwhile.
    pub async fn with_life(mut self, conn: &zbus::Connection) -> Self {
        if let Some(l) = super::events::life_of(conn, &self.name).await {
            self.life = l.into();
        }
        self
    }

    /// Each view of `infos`, with its [`LifeView`].
    /// Several `GetAll` calls are in flight at once (well under berthd's admission of 32 per
    /// connection), so that 1000 containers cost a few round trips' worth, not 1000; the
    /// order of `infos` is kept.
    pub async fn all_with_life(conn: &zbus::Connection, infos: Vec<ContainerInfo>) -> Vec<Self> {
        use futures_util::StreamExt;
        futures_util::stream::iter(infos)
            .map(|i| ContainerView::from(i).with_life(conn))
            .buffered(16)
            .collect()
            .await
    }
}

/// One published port in `--output json` (`berthctl port`, `status`, `list`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PortView {
    /// The host address it is published on; null for all of the host's addresses.
    pub host_ip: Option<String>,
    pub host_port: u16,
    pub container_port: u16,
    /// tcp or udp
    pub protocol: String,
}

impl PortView {
    /// podman's form: `80/tcp -> 0.0.0.0:8080`.
    pub fn line(&self) -> String {
        let host = match self.host_ip.as_deref() {
            None => format!("0.0.0.0:{}", self.host_port),
            Some(ip) if ip.contains(':') => format!("[{ip}]:{}", self.host_port),
            Some(ip) => format!("{ip}:{}", self.host_port),
        };
        format!("{}/{} -> {host}", self.container_port, self.protocol)
    }
}

impl From<ContainerInfo> for ContainerView {
    fn from(i: ContainerInfo) -> Self {
        ContainerView {
            name: i.name,
            state: i.state,
            unit: i.unit,
            leader: (i.leader != 0).then_some(i.leader),
            image: (!i.image.is_empty()).then_some(i.image),
            root_directory: i.root_directory,
            created_at: i.created_at,
            started_at: (i.started_at != 0).then_some(i.started_at),
            exit_status: (i.exit_status >= 0).then_some(i.exit_status),
            resources: i.resources.into_iter().collect(),
            oom_kills: i.oom_kills,
            last_oom_at: (i.last_oom_at != 0).then_some(i.last_oom_at),
            security: i.security.into_iter().collect(),
            labels: i.labels.into_iter().collect(),
            image_id: (!i.image_id.is_empty()).then_some(i.image_id),
            network: i.network,
            addresses: i.addresses,
            ports: i
                .ports
                .into_iter()
                .map(|(ip, hp, cp, proto)| PortView {
                    host_ip: (!ip.is_empty()).then_some(ip),
                    host_port: hp,
                    container_port: cp,
                    protocol: proto,
                })
                .collect(),
            life: LifeView::default(),
        }
    }
}

/// One container's resource usage in `berthctl stats -o json`. Limits are null when
/// unlimited.
#[derive(Debug, Serialize)]
pub struct StatsView {
    pub name: String,
    pub state: String,
    pub timestamp_usec: u64,
    pub cpu_usage_ns: u64,
    pub cpu_percent: f64,
    pub memory_bytes: u64,
    pub memory_limit_bytes: Option<u64>,
    pub pids: u64,
    pub pids_limit: Option<u64>,
    pub io_read_bytes: u64,
    pub io_write_bytes: u64,
    pub net_rx_bytes: u64,
    pub net_tx_bytes: u64,
    pub oom_kills: u64,
}

impl From<crate::dbus::StatsInfo> for StatsView {
    fn from(s: crate::dbus::StatsInfo) -> Self {
        let limit = |v: u64| (v != u64::MAX).then_some(v);
        StatsView {
            name: s.name,
            state: s.state,
            timestamp_usec: s.timestamp_usec,
            cpu_usage_ns: s.cpu_usage_ns,
            cpu_percent: (s.cpu_percent * 100.0).round() / 100.0,
            memory_bytes: s.memory_bytes,
            memory_limit_bytes: limit(s.memory_limit_bytes),
            pids: s.pids,
            pids_limit: limit(s.pids_limit),
            io_read_bytes: s.io_read_bytes,
            io_write_bytes: s.io_write_bytes,
            net_rx_bytes: s.net_rx_bytes,
            net_tx_bytes: s.net_tx_bytes,
            oom_kills: s.oom_kills,
        }
    }
}

/// Bytes for people: `512B`, `1.5KiB`, `20.0MiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n}B");
    }
    let mut v = n as f64 / 1024.0;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1}{}", UNITS[u])
}

/// Print JSON to stdout; a closed pipe is not an error.
pub fn print_json<T: Serialize>(v: &T) {
    let mut out = std::io::stdout().lock();
    let _ = serde_json::to_writer_pretty(&mut out, v);
    let _ = writeln!(out);
}

/// Print lines to stdout, stopping quietly if the reader went away.
pub fn print_lines(lines: impl IntoIterator<Item = String>) {
    // Buffered: stdout is line-buffered, and a write per line was a tenth of `ps -a`'s time
    // with 1000 containers. A stdout that fails (a pager that quit) ends the output.
    let mut out = std::io::BufWriter::with_capacity(64 << 10, std::io::stdout().lock());
    for l in lines {
        if out.write_all(l.as_bytes()).is_err() || out.write_all(b"\n").is_err() {
            return;
        }
    }
    // The rest goes out as `out` is dropped, where a failure ends the output as silently.
}

/// A UTC timestamp from microseconds since the epoch: `2026-11-29 01:02:03 UTC`.
pub fn timestamp(usec: u64) -> String {
    let secs = usec / 1_000_000;
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Microseconds since the epoch, the clock of berth's timestamps.
pub fn now_usec() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// A short duration: `3h 2min`, `5s`.
pub fn span(usec: u64) -> String {
    let s = usec / 1_000_000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}min {}s", s / 60, s % 60),
        3600..86_400 => format!("{}h {}min", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// A string from an image or a user, safe for a terminal: control characters (escape
/// sequences, carriage returns, newlines) are shown as `\xNN`, `\n`, `\t`, `\r`.
pub fn escape(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => {
                let mut b = [0u8; 4];
                for byte in c.encode_utf8(&mut b).bytes() {
                    out.push_str(&format!("\\x{byte:02x}"));
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// Left-aligned columns; cells are [`escape`]d.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> Vec<String> {
    let rows: Vec<Vec<Cow<'_, str>>> = rows
        .iter()
        .map(|r| {
            r.iter()
                .map(|c| {
                    if c.chars().any(char::is_control) {
                        Cow::Owned(escape(c))
                    } else {
                        Cow::Borrowed(c.as_str())
                    }
                })
                .collect()
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line_len: usize = widths.iter().map(|w| w + 2).sum();
    // Each cell but the last padded to its column's width (in characters) and two spaces.
    let line = |cells: &[&str]| {
        let mut s = String::with_capacity(line_len);
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            s.push_str(c);
            if i + 1 != cells.len() {
                let pad = w.saturating_sub(c.chars().count()) + 2;
                s.extend(std::iter::repeat_n(' ', pad));
            }
        }
        s
    };
    let mut out = Vec::with_capacity(rows.len() + 1);
    out.push(line(header));
    let mut cells: Vec<&str> = Vec::with_capacity(header.len());
    for r in &rows {
        cells.clear();
        cells.extend(r.iter().map(|c| c.as_ref()));
        out.push(line(&cells));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(timestamp(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(
            timestamp(1_796_000_000 * 1_000_000),
            "2026-11-30 00:53:20 UTC"
        );
        assert_eq!(span(5_000_000), "5s");
        assert_eq!(span(3_700 * 1_000_000), "1h 1min");
        assert_eq!(bytes(512), "512B");
        assert_eq!(bytes(1536), "1.5KiB");
        assert_eq!(bytes(20 << 20), "20.0MiB");
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(escape("plain"), "plain");
        assert_eq!(escape("a\x1b[2Jb\nc\u{9b}"), "a\\x1b[2Jb\\nc\\xc2\\x9b");
        assert_eq!(table(&["A"], &[vec!["x\ry".into()]])[1], "x\\ry");
    }

    #[test]
    fn view_maps_sentinels_to_null() {
        let info = ContainerInfo {
            name: "a".into(),
            state: "created".into(),
            unit: "berth-a.scope".into(),
            leader: 0,
            image: String::new(),
            root_directory: "/srv".into(),
            created_at: 1,
            started_at: 0,
            exit_status: -1,
            last_error: String::new(),
            resources: Default::default(),
            oom_kills: 0,
            last_oom_at: 0,
            security: Default::default(),
            labels: Default::default(),
            image_id: String::new(),
            network: "bridge".into(),
            addresses: vec!["10.89.0.2/16".into()],
            ports: vec![
                (String::new(), 8080, 80, "tcp".into()),
                ("::1".into(), 53, 53, "udp".into()),
            ],
            object_path: zbus::OwnedObjectPath::try_from("/org/berth/berth1/container/a").unwrap(),
        };
        let view = ContainerView::from(info);
        assert_eq!(view.ports[0].line(), "80/tcp -> 0.0.0.0:8080");
        assert_eq!(view.ports[1].line(), "53/udp -> [::1]:53");
        let v = serde_json::to_value(view).unwrap();
        assert_eq!(v["ports"][0]["host_ip"], serde_json::Value::Null);
        assert_eq!(v["addresses"][0], "10.89.0.2/16");
        assert_eq!(v["network"], "bridge");
        assert_eq!(v["leader"], serde_json::Value::Null);
        assert_eq!(v["exit_status"], serde_json::Value::Null);
        assert_eq!(v["state"], "created");
        // Without a check or policy, health and the rest read as unset.
        assert_eq!(v["health"], serde_json::Value::Null);
        assert_eq!(v["ready"], false);
        assert_eq!(v["next_restart_at"], serde_json::Value::Null);
    }

    #[test]
    fn json_views_carry_readiness_health_and_the_restart_policy() {
        use zbus::{OwnedVariant, Variant};
        let all: std::collections::HashMap<String, OwnedVariant> = [
            ("Ready", Variant::from(true)),
            ("NotifyReady", Variant::from(true)),
            ("StatusText", Variant::from("serving")),
            ("Health", Variant::from("unhealthy")),
            ("HealthFailures", Variant::from(3u32)),
            ("RestartPolicy", Variant::from("on-failure:2")),
            ("RestartCount", Variant::from(1u32)),
            ("NextRestartAt", Variant::from(0u64)),
            ("State", Variant::from("running")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.try_into().unwrap()))
        .collect();
        let life = LifeView::from(crate::cli::events::life_from(&all));
        let v = serde_json::to_value(&life).unwrap();
        assert_eq!(v["ready"], true);
        assert_eq!(v["notify_ready"], true);
        assert_eq!(v["status_text"], "serving");
        assert_eq!(v["health"], "unhealthy");
        assert_eq!(v["health_failures"], 3);
        assert_eq!(v["restart_policy"], "on-failure:2");
        assert_eq!(v["restart_count"], 1);
        assert_eq!(v["next_restart_at"], serde_json::Value::Null);
    }
}
