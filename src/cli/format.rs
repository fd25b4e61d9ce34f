//! `ps` output: filters (`name=`, `status=`, `label=`, `ancestor=`) and `--format` with
//! podman's Go-template fields (`{{.Names}} {{.State}}`, `table …` for a header row).

use super::{CliError, CliResult, Exit};
use crate::dbus::ContainerInfo;

/// One `--filter KEY=VALUE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    /// The name contains this.
    Name(String),
    /// The state is this (created, running, paused, stopping, exited).
    Status(String),
    /// The label is set (`label=KEY`) or has this value (`label=KEY=VALUE`).
    Label(String, Option<String>),
    /// Created on this image: its name as given, or its ID (or a prefix of one).
    Ancestor(String),
}

impl Filter {
    pub fn parse(s: &str) -> CliResult<Filter> {
        let (k, v) = s.split_once('=').ok_or_else(|| {
            CliError::new(
                Exit::InvalidArgument,
                format!("filter {s:?} is not KEY=VALUE (name=, status=, label=, ancestor=)"),
            )
        })?;
        Ok(match k {
            "name" => Filter::Name(v.into()),
            "status" | "state" => {
                const STATES: [&str; 5] = ["created", "running", "paused", "stopping", "exited"];
                if !STATES.contains(&v) {
                    return Err(CliError::new(
                        Exit::InvalidArgument,
                        format!("unknown status {v:?} (one of {})", STATES.join(", ")),
                    ));
                }
                Filter::Status(v.into())
            }
            "label" => match v.split_once('=') {
                Some((k, v)) => Filter::Label(k.into(), Some(v.into())),
                None => Filter::Label(v.into(), None),
            },
            "ancestor" => Filter::Ancestor(v.into()),
            _ => {
                return Err(CliError::new(
                    Exit::InvalidArgument,
                    format!("unknown filter {k:?} (name, status, label, ancestor)"),
                ));
            }
        })
    }

    /// Whether `c` passes; `ancestor_ids` are the IDs the ancestor names resolve to.
    pub fn matches(&self, c: &ContainerInfo, ancestor_ids: &[String]) -> bool {
        match self {
            Filter::Name(n) => c.name.contains(n.as_str()),
            Filter::Status(s) => c.state == *s,
            Filter::Label(k, v) => match (c.labels.get(k), v) {
                (Some(_), None) => true,
                (Some(have), Some(want)) => have == want,
                (None, _) => false,
            },
            Filter::Ancestor(a) => {
                let hex = a.strip_prefix("sha256:").unwrap_or(a);
                c.image == *a
                    || c.image.strip_suffix(":latest") == Some(a.as_str())
                    || (hex.len() >= 12
                        && c.image_id
                            .strip_prefix("sha256:")
                            .unwrap_or("")
                            .starts_with(hex))
                    || (!c.image_id.is_empty() && ancestor_ids.contains(&c.image_id))
            }
        }
    }
}

/// The Go-template fields `ps --format` knows, as podman names them.
pub const FIELDS: &[&str] = &[
    "Names",
    "Name",
    "ID",
    "Image",
    "ImageID",
    "State",
    "Status",
    "Pid",
    "ExitCode",
    "CreatedAt",
    "StartedAt",
    "Labels",
    "Unit",
];

/// A field's value for a container (`no_trunc`: full image IDs).
pub fn field(c: &ContainerInfo, f: &str, no_trunc: bool) -> Option<String> {
    let id = |s: &str| {
        if no_trunc {
            s.to_string()
        } else {
            s.strip_prefix("sha256:")
                .unwrap_or(s)
                .chars()
                .take(12)
                .collect()
        }
    };
    Some(match f {
        "Names" | "Name" | "ID" => c.name.clone(),
        "Image" => {
            if c.image.is_empty() {
                c.root_directory.clone()
            } else {
                c.image.clone()
            }
        }
        "ImageID" => id(&c.image_id),
        "State" => c.state.clone(),
        "Status" => status(c),
        "Pid" => c.leader.to_string(),
        "ExitCode" => c.exit_status.max(0).to_string(),
        "CreatedAt" => super::output::timestamp(c.created_at),
        "StartedAt" => {
            if c.started_at == 0 {
                String::new()
            } else {
                super::output::timestamp(c.started_at)
            }
        }
        "Labels" => {
            let mut l: Vec<String> = c.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            l.sort();
            l.join(",")
        }
        "Unit" => c.unit.clone(),
        _ => return None,
    })
}

/// podman's STATUS column: `Up 5 minutes`, `Exited (3) 2 hours ago`, `Created`.
pub fn status(c: &ContainerInfo) -> String {
    let now = super::output::now_usec();
    match c.state.as_str() {
        "running" | "paused" | "stopping" => {
            let up = super::output::span(now.saturating_sub(c.started_at));
            match c.state.as_str() {
                "paused" => format!("Up {up} (paused)"),
                "stopping" => format!("Up {up} (stopping)"),
                _ => format!("Up {up}"),
            }
        }
        "exited" => format!("Exited ({})", c.exit_status.max(0)),
        "created" => "Created".into(),
        s => s.to_string(),
    }
}

/// A parsed `--format` template: literal text and fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    /// `table …`: print a header row first.
    pub table: bool,
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Field(String),
}

impl Template {
    pub fn parse(s: &str) -> CliResult<Template> {
        let (table, body) = match s.strip_prefix("table") {
            Some(rest) if rest.is_empty() || rest.starts_with(char::is_whitespace) => {
                (true, rest.trim_start())
            }
            _ => (false, s),
        };
        let body = body.replace("\\t", "\t").replace("\\n", "\n");
        let mut parts = Vec::new();
        let mut rest = body.as_str();
        while let Some(i) = rest.find("{{") {
            if i > 0 {
                parts.push(Part::Text(rest[..i].to_string()));
            }
            let end = rest[i..].find("}}").ok_or_else(|| {
                CliError::new(Exit::InvalidArgument, format!("unclosed {{{{ in {s:?}"))
            })?;
            let inner = rest[i + 2..i + end].trim();
            let name = inner.strip_prefix('.').ok_or_else(|| {
                CliError::new(
                    Exit::InvalidArgument,
                    format!(
                        "{inner:?}: a field is {{{{.Name}}}} (known: {})",
                        FIELDS.join(", ")
                    ),
                )
            })?;
            if !FIELDS.contains(&name) {
                return Err(CliError::new(
                    Exit::InvalidArgument,
                    format!("unknown field .{name} (known: {})", FIELDS.join(", ")),
                ));
            }
            parts.push(Part::Field(name.to_string()));
            rest = &rest[i + end + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        Ok(Template { table, parts })
    }

    pub fn render(&self, c: &ContainerInfo, no_trunc: bool) -> String {
        self.parts
            .iter()
            .map(|p| match p {
                Part::Text(t) => t.clone(),
                Part::Field(f) => super::output::escape(&field(c, f, no_trunc).unwrap_or_default()),
            })
            .collect()
    }

    /// The header row of a `table` template: the field names in upper case.
    pub fn header(&self) -> String {
        self.parts
            .iter()
            .map(|p| match p {
                Part::Text(t) => t.clone(),
                Part::Field(f) => f.to_uppercase(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c() -> ContainerInfo {
        ContainerInfo {
            name: "web".into(),
            state: "exited".into(),
            unit: "berth-web.scope".into(),
            leader: 0,
            image: "alpine:3.20".into(),
            root_directory: String::new(),
            created_at: 0,
            started_at: 0,
            exit_status: 3,
            last_error: String::new(),
            resources: Default::default(),
            oom_kills: 0,
            last_oom_at: 0,
            security: Default::default(),
            labels: [("tier".to_string(), "front\x1b[31m".to_string())].into(),
            image_id: format!("sha256:{}", "ab".repeat(32)),
            network: "bridge".into(),
            addresses: vec![],
            ports: vec![],
            object_path: zbus::OwnedObjectPath::try_from("/x").unwrap(),
        }
    }

    #[test]
    fn templates_render_podman_fields() {
        let t = Template::parse("{{.Names}} {{ .State }}\\t{{.ImageID}}").unwrap();
        assert_eq!(
            t.render(&c(), false),
            format!("web exited\t{}", "ab".repeat(6))
        );
        assert_eq!(
            Template::parse("{{.ImageID}}").unwrap().render(&c(), true),
            c().image_id
        );
        let t = Template::parse("table {{.Names}}\t{{.Status}}").unwrap();
        assert!(t.table);
        assert_eq!(t.header(), "NAMES\tSTATUS");
        assert_eq!(t.render(&c(), false), "web\tExited (3)");
        // Strings from images and users are escaped.
        assert_eq!(
            Template::parse("{{.Labels}}").unwrap().render(&c(), false),
            "tier=front\\x1b[31m"
        );
        for bad in ["{{.Bogus}}", "{{Names}}", "{{.Names"] {
            assert_eq!(
                Template::parse(bad).unwrap_err().exit,
                Exit::InvalidArgument
            );
        }
    }

    #[test]
    fn filters() {
        let c = c();
        let ok = |f: &str| Filter::parse(f).unwrap().matches(&c, &[]);
        assert!(ok("name=we"));
        assert!(!ok("name=db"));
        assert!(ok("status=exited"));
        assert!(!ok("status=running"));
        assert!(ok("label=tier"));
        assert!(!ok("label=tier=back"));
        assert!(ok("ancestor=alpine:3.20"));
        assert!(ok(&format!("ancestor={}", "ab".repeat(8))));
        assert!(!ok("ancestor=debian"));
        assert!(
            Filter::parse("ancestor=x")
                .unwrap()
                .matches(&c, std::slice::from_ref(&c.image_id))
        );
        assert!(Filter::parse("bogus=1").is_err());
        assert!(Filter::parse("status=asleep").is_err());
        assert!(Filter::parse("name").is_err());
    }
}
