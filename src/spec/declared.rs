//! Declarative containers: `/etc/berth/containers/NAME.toml`, written by the admin like a
//! quadlet or `.nspawn` file. The keys are those of the stored [`Definition`] (what `create`
//! records; unknown keys are refused), plus `boot`: start the container at boot
//! (`berth@NAME.service` is enabled). `name` defaults to the file's name and must match it
//! when given; `created_at`, `image_id` and `declared` are berthd's and may not appear.
//!
//! ```toml
//! image = "web:1.2"
//! command = ["/usr/sbin/httpd", "-f"]
//! env = ["MODE=prod"]
//! boot = true
//! [labels]
//! tier = "front"
//! [resources]
//! memory = "256M"
//! ```

use std::path::Path;

use super::Definition;

/// Where declarative definitions live.
pub const DIR: &str = "/etc/berth/containers";
/// Files larger than this are not definitions.
pub const MAX_FILE: u64 = 256 * 1024;

/// One declarative definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Declared {
    pub definition: Definition,
    /// Start at boot: `berth@NAME.service` is enabled.
    pub boot: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DeclaredError {
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

fn invalid(path: &Path, message: impl Into<String>) -> DeclaredError {
    DeclaredError::Invalid {
        path: path.display().to_string(),
        message: message.into(),
    }
}

/// The container name a file `NAME.toml` defines.
pub fn name_of(path: &Path) -> Option<String> {
    let file = path.file_name()?.to_str()?;
    let stem = file.strip_suffix(".toml")?;
    crate::name::validate(stem).ok()?;
    Some(stem.to_string())
}

/// Parse the text of a declarative file at `path` (a `NAME.toml`); the definition is checked
/// by [`super::validate`] next, as every other.
pub fn parse(path: &Path, text: &str) -> Result<Declared, DeclaredError> {
    let name = name_of(path).ok_or_else(|| {
        invalid(
            path,
            "a declarative definition is NAME.toml, NAME a valid container name",
        )
    })?;
    let mut table: toml::Table = toml::from_str(text).map_err(|e| invalid(path, e.to_string()))?;
    let boot = match table.remove("boot") {
        None => false,
        Some(toml::Value::Boolean(b)) => b,
        Some(_) => return Err(invalid(path, "boot must be true or false")),
    };
    for key in ["created_at", "image_id", "declared"] {
        if table.contains_key(key) {
            return Err(invalid(
                path,
                format!("{key} is set by berthd, not in a file"),
            ));
        }
    }
    match table.get("name") {
        None => {
            table.insert("name".into(), toml::Value::String(name.clone()));
        }
        Some(toml::Value::String(n)) if *n == name => {}
        Some(_) => {
            return Err(invalid(
                path,
                format!("name must be {name:?}, the file's name, or absent"),
            ));
        }
    }
    table.insert("created_at".into(), toml::Value::Integer(0));
    table.insert("declared".into(), toml::Value::Boolean(true));
    let definition: Definition = table
        .try_into()
        .map_err(|e: toml::de::Error| invalid(path, e.to_string()))?;
    Ok(Declared { definition, boot })
}

/// Read one file: a regular file, not too large.
pub fn read(path: &Path) -> Result<Declared, DeclaredError> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|e| invalid(path, e.to_string()))?;
    let md = f.metadata().map_err(|e| invalid(path, e.to_string()))?;
    if !md.is_file() || md.len() > MAX_FILE {
        return Err(invalid(
            path,
            format!("not a regular file of at most {MAX_FILE} bytes"),
        ));
    }
    let mut text = String::new();
    f.take(MAX_FILE)
        .read_to_string(&mut text)
        .map_err(|e| invalid(path, e.to_string()))?;
    parse(path, &text)
}

/// Every `NAME.toml` in `dir`, by name; a missing directory holds none.
pub fn list(dir: &Path) -> std::io::Result<Vec<std::path::PathBuf>> {
    let mut out = Vec::new();
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for e in rd {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "toml") {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_defines_its_named_container_with_definition_keys() {
        let d = parse(
            Path::new("/etc/berth/containers/web.toml"),
            "image = 'web:1.2'\ncommand = ['/bin/httpd']\nboot = true\n[labels]\ntier = 'front'\n[resources]\nmemory = '256M'\n",
        )
        .unwrap();
        assert!(d.boot);
        assert_eq!(d.definition.name, "web");
        assert_eq!(d.definition.image.as_deref(), Some("web:1.2"));
        assert_eq!(d.definition.labels["tier"], "front");
        let spec = crate::spec::validate(&d.definition, &crate::spec::tests::Facts::default());
        assert!(spec.is_ok(), "{spec:?}");
    }

    #[test]
    fn unknown_and_daemon_keys_and_other_names_are_refused() {
        let p = Path::new("/x/web.toml");
        for (text, want) in [
            ("bogus = 1", "bogus"),
            ("created_at = 5", "set by berthd"),
            ("image_id = 'sha256:00'", "set by berthd"),
            ("declared = false", "set by berthd"),
            ("name = 'other'", "file's name"),
            ("boot = 'yes'", "true or false"),
            ("image = ", "TOML"),
        ] {
            let e = parse(p, text).unwrap_err().to_string();
            assert!(
                e.contains(want) || (want == "TOML" && e.contains("web.toml")),
                "{text:?}: {e}"
            );
        }
        assert!(parse(Path::new("/x/a b.toml"), "").is_err());
        // What a file makes is marked as the file's, for a reload after it is deleted.
        assert!(parse(p, "").unwrap().definition.declared);
    }
}
