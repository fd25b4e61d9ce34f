//! `image show` / `inspect IMAGE`: one image's record, config and layers gathered over the bus, as
//! text or JSON.

use super::*;

/// An image's `image show -o json` document (also what `inspect` prints for an image).
pub async fn document(
    conn: &zbus::Connection,
    proxy: &ManagerProxy<'_>,
    name: String,
) -> CliResult<serde_json::Value> {
    let doc = gather(conn, proxy, name).await?;
    Ok(serde_json::to_value(doc.json()).unwrap_or_default())
}

pub(super) async fn show(name: String, format: Format) -> CliResult {
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
pub(super) struct Gathered {
    pub(super) info: ImageInfo,
    pub(super) config: HashMap<String, OwnedVariant>,
}

pub(super) async fn gather(
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
pub(super) struct Show {
    #[serde(flatten)]
    pub(super) image: ImageView,
    pub(super) entrypoint: Vec<String>,
    pub(super) cmd: Vec<String>,
    pub(super) env: Vec<String>,
    pub(super) working_dir: String,
    pub(super) user: String,
    pub(super) stop_signal: String,
    pub(super) labels: std::collections::BTreeMap<String, String>,
    pub(super) exposed_ports: Vec<String>,
    pub(super) volumes: Vec<String>,
    pub(super) healthcheck: Vec<String>,
}

impl Gathered {
    pub(super) fn strs(&self, k: &str) -> Vec<String> {
        self.config
            .get(k)
            .and_then(|v| Vec::<String>::try_from(v.clone()).ok())
            .unwrap_or_default()
    }

    pub(super) fn one(&self, k: &str) -> String {
        self.config
            .get(k)
            .and_then(|v| String::try_from(v.clone()).ok())
            .unwrap_or_default()
    }

    pub(super) fn labels(&self) -> std::collections::BTreeMap<String, String> {
        self.config
            .get("Labels")
            .and_then(|v| HashMap::<String, String>::try_from(v.clone()).ok())
            .unwrap_or_default()
            .into_iter()
            .collect()
    }

    /// The healthcheck's command (CMD / CMD-SHELL / NONE and its arguments).
    pub(super) fn healthcheck(&self) -> Vec<String> {
        self.config
            .get("Healthcheck")
            .and_then(|v| HashMap::<String, OwnedVariant>::try_from(v.clone()).ok())
            .and_then(|h| {
                h.get("Test")
                    .and_then(|t| Vec::<String>::try_from(t.clone()).ok())
            })
            .unwrap_or_default()
    }

    pub(super) fn json(&self) -> Show {
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
    pub(super) fn print(&self) {
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
