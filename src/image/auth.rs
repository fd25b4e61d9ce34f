//! The registry credentials file berth reads for pulls and pushes (`/etc/berth/auth.json` by
//! default), in the docker/podman `auth.json` format (containers-auth.json(5)):
//! `{"auths": {"host[:port]": {"auth": "<base64 of user:password>"}}}`. `login` adds or
//! replaces one entry, `logout` removes one; every other key of the file is kept as it was.
//!
//! The file holds passwords: it is written mode 0600, atomically (a new file beside it,
//! synced, renamed over it, the directory synced), so a reader never sees half a file and a
//! failure leaves the old one. A file that is not valid JSON is refused, not replaced.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Map, Value};

use super::ErrorKind;
use super::registry::{normalize_auth_key, valid_registry};

/// Largest auth file read.
const MAX_AUTH_FILE: u64 = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum AuthFileError {
    #[error("{0:?} is not a registry (host[:port])")]
    BadRegistry(String),
    #[error("a user name must be non-empty and without ':'")]
    BadUser,
    #[error("auth file {}: {reason}", path.display())]
    BadFile { path: PathBuf, reason: String },
    #[error("not logged in to {registry} (no entry in {})", path.display())]
    NotLoggedIn { registry: String, path: PathBuf },
    #[error("auth file {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
}

impl AuthFileError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            AuthFileError::BadRegistry(_)
            | AuthFileError::BadUser
            | AuthFileError::BadFile { .. } => ErrorKind::InvalidInput,
            AuthFileError::NotLoggedIn { .. } => ErrorKind::NotFound,
            AuthFileError::Io { .. } => ErrorKind::Failed,
        }
    }
}

/// The key a registry is filed under: `host[:port]`, Docker Hub as `docker.io` (podman's
/// spelling; docker's `https://index.docker.io/v1/` is read as the same).
pub fn registry_key(registry: &str) -> Result<String, AuthFileError> {
    let k = normalize_auth_key(registry);
    if k.contains('/') || !valid_registry(&k) {
        return Err(AuthFileError::BadRegistry(registry.to_string()));
    }
    Ok(k)
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> AuthFileError + '_ {
    move |source| AuthFileError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn read(path: &Path) -> Result<Map<String, Value>, AuthFileError> {
    let mut data = Vec::new();
    match File::open(path) {
        Ok(f) => {
            f.take(MAX_AUTH_FILE + 1)
                .read_to_end(&mut data)
                .map_err(io_err(path))?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Map::new()),
        Err(e) => return Err(io_err(path)(e)),
    }
    let bad = |reason: String| AuthFileError::BadFile {
        path: path.to_path_buf(),
        reason,
    };
    if data.len() as u64 > MAX_AUTH_FILE {
        return Err(bad("larger than 4 MiB".into()));
    }
    if data.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(&data) {
        Ok(Value::Object(m)) => {
            if m.get("auths").is_some_and(|a| !a.is_object()) {
                return Err(bad("\"auths\" is not an object".into()));
            }
            Ok(m)
        }
        Ok(_) => Err(bad("not a JSON object".into())),
        Err(e) => Err(bad(e.to_string())),
    }
}

fn write(path: &Path, file: &Map<String, Value>) -> Result<(), AuthFileError> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(io_err(dir))?;
    let mut data = serde_json::to_vec_pretty(file).expect("serializing the auth file");
    data.push(b'\n');
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let r = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if r.is_err()
        && let Err(e) = fs::remove_file(&tmp)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!("cannot remove {}: {e}, ignoring", tmp.display());
    }
    r.map_err(io_err(path))
}

/// Add (or replace) the credentials for `registry` in the auth file at `path`, creating it.
pub fn store_credentials(
    path: &Path,
    registry: &str,
    user: &str,
    password: &str,
) -> Result<String, AuthFileError> {
    let key = registry_key(registry)?;
    if user.is_empty() || user.contains(':') {
        return Err(AuthFileError::BadUser);
    }
    let mut file = read(path)?;
    let auths = file
        .entry("auths")
        .or_insert_with(|| Value::Object(Map::new()))
        .as_object_mut()
        .expect("checked by read");
    // Entries naming the same registry another way (`https://host/v1/`) are replaced too.
    auths.retain(|k, _| normalize_auth_key(k) != key);
    auths.insert(
        key.clone(),
        serde_json::json!({"auth": BASE64.encode(format!("{user}:{password}"))}),
    );
    write(path, &file)?;
    Ok(key)
}

/// Remove the credentials for `registry` from the auth file at `path`; NotLoggedIn when it
/// has none (the file is then not touched).
pub fn remove_credentials(path: &Path, registry: &str) -> Result<String, AuthFileError> {
    let key = registry_key(registry)?;
    let mut file = read(path)?;
    let not_logged_in = || AuthFileError::NotLoggedIn {
        registry: key.clone(),
        path: path.to_path_buf(),
    };
    let Some(auths) = file.get_mut("auths").and_then(Value::as_object_mut) else {
        return Err(not_logged_in());
    };
    let before = auths.len();
    auths.retain(|k, _| normalize_auth_key(k) != key);
    if auths.len() == before {
        return Err(not_logged_in());
    }
    write(path, &file)?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::registry::{Reference, read_credentials};
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn login_and_logout_edit_one_entry_and_keep_the_rest() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("etc/berth/auth.json");
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(
            &p,
            r#"{"auths":{"https://index.docker.io/v1/":{"auth":"b2xkOm9sZA=="},"q.io":{"auth":"eDp5"}},"credHelpers":{"x":"y"}}"#,
        )
        .unwrap();
        assert_eq!(
            store_credentials(&p, "docker.io", "me", "p:w").unwrap(),
            "docker.io"
        );
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let v: Value = serde_json::from_slice(&fs::read(&p).unwrap()).unwrap();
        assert_eq!(v["credHelpers"]["x"], "y", "other keys kept");
        assert_eq!(
            v["auths"].as_object().unwrap().len(),
            2,
            "docker's spelling replaced"
        );
        // What pulls read back.
        let r: Reference = "alpine".parse().unwrap();
        let c = read_credentials(&p, &r).unwrap().unwrap();
        assert_eq!((c.user.as_str(), c.password.as_str()), ("me", "p:w"));
        store_credentials(&p, "127.0.0.1:5000", "u", "s").unwrap();
        let r: Reference = "127.0.0.1:5000/a/b".parse().unwrap();
        assert_eq!(read_credentials(&p, &r).unwrap().unwrap().user, "u");

        assert_eq!(
            remove_credentials(&p, "127.0.0.1:5000").unwrap(),
            "127.0.0.1:5000"
        );
        assert!(read_credentials(&p, &r).unwrap().is_none());
        let before = fs::read(&p).unwrap();
        let e = remove_credentials(&p, "127.0.0.1:5000").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert_eq!(fs::read(&p).unwrap(), before);
        // Bad input changes nothing.
        for (reg, user) in [
            ("not a host", "u"),
            ("q.io/path", "u"),
            ("q.io", ""),
            ("q.io", "a:b"),
        ] {
            let e = store_credentials(&p, reg, user, "x").unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidInput, "{reg} {user}");
        }
        assert_eq!(fs::read(&p).unwrap(), before);
        // A file that is not JSON is refused, not replaced.
        fs::write(&p, b"{broken").unwrap();
        assert_eq!(
            store_credentials(&p, "q.io", "u", "p").unwrap_err().kind(),
            ErrorKind::InvalidInput
        );
        assert_eq!(fs::read(&p).unwrap(), b"{broken");
        // A missing file and directory are created; no temporary file is left.
        let p2 = t.path().join("new/dir/auth.json");
        store_credentials(&p2, "q.io", "u", "p").unwrap();
        assert_eq!(fs::read_dir(p2.parent().unwrap()).unwrap().count(), 1);
    }
}
