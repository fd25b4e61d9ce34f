//! Authentication: WWW-Authenticate challenges, credentials and the auth file (podman's auth.json).

use super::*;

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

/// Parse one challenge (RFC 7235: a scheme, then `key=value` or `key="quoted value"` pairs).
/// Unknown schemes give `None`.
pub(super) fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim_start();
    let (scheme, mut rest) = header.split_once(' ').unwrap_or((header, ""));
    let mut params = HashMap::new();
    loop {
        rest = rest.trim_start_matches([' ', '\t', ',']);
        if rest.is_empty() {
            break;
        }
        let (key, after) = rest.split_once('=')?;
        let key = key.trim().to_ascii_lowercase();
        let after = after.trim_start();
        let value;
        if let Some(quoted) = after.strip_prefix('"') {
            let mut v = String::new();
            let mut chars = quoted.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => v.push(chars.next()?.1),
                    '"' => {
                        end = Some(i + 1);
                        break;
                    }
                    c => v.push(c),
                }
            }
            value = v;
            rest = &quoted[end?..];
        } else {
            let end = after.find([',', ' ', '\t']).unwrap_or(after.len());
            value = after[..end].to_string();
            rest = &after[end..];
        }
        params.insert(key, value);
    }
    if scheme.eq_ignore_ascii_case("basic") {
        Some(Challenge::Basic)
    } else if scheme.eq_ignore_ascii_case("bearer") {
        Some(Challenge::Bearer {
            realm: params.remove("realm")?,
            service: params.remove("service"),
            scope: params.remove("scope"),
        })
    } else {
        None
    }
}

#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Credentials {
    pub(crate) user: String,
    pub(crate) password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credentials({}, <hidden>)", self.user)
    }
}

impl Credentials {
    pub(super) fn basic_header(&self) -> String {
        format!(
            "Basic {}",
            BASE64.encode(format!("{}:{}", self.user, self.password))
        )
    }
}

#[derive(Deserialize)]
pub(super) struct AuthFile {
    #[serde(default)]
    pub(super) auths: HashMap<String, AuthEntry>,
}

#[derive(Deserialize)]
pub(super) struct AuthEntry {
    #[serde(default)]
    pub(super) auth: Option<String>,
}

/// The key of an `auths` entry as a registry name with an optional repository prefix.
/// docker's `config.json` has `https://index.docker.io/v1/`; podman writes `host[:port]` or
/// `host[:port]/namespace` (containers-auth.json(5)).
pub(crate) fn normalize_auth_key(key: &str) -> String {
    let k = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key)
        .trim_end_matches('/');
    let k = k
        .strip_suffix("/v1")
        .or_else(|| k.strip_suffix("/v2"))
        .unwrap_or(k);
    let (host, path) = match k.split_once('/') {
        Some((h, p)) => (h, Some(p)),
        None => (k, None),
    };
    let host = match host {
        "index.docker.io" | "registry-1.docker.io" => "docker.io",
        h => h,
    };
    match path {
        Some(p) => format!("{host}/{p}"),
        None => host.to_string(),
    }
}

/// The credentials for `registry/repository` in an auth file: the most specific matching key.
pub(super) fn lookup_credentials(
    json: &[u8],
    registry: &str,
    repository: &str,
) -> Result<Option<Credentials>, String> {
    let file: AuthFile = serde_json::from_slice(json).map_err(|e| e.to_string())?;
    let full = format!("{registry}/{repository}");
    let mut best: Option<(usize, &str)> = None;
    for (key, entry) in &file.auths {
        let Some(auth) = entry.auth.as_deref().filter(|a| !a.is_empty()) else {
            continue;
        };
        let k = normalize_auth_key(key);
        let matches = k == registry || full == k || full.starts_with(&format!("{k}/"));
        if matches && best.is_none_or(|(len, _)| k.len() > len) {
            best = Some((k.len(), auth));
        }
    }
    let Some((_, auth)) = best else {
        return Ok(None);
    };
    let raw = BASE64
        .decode(auth.trim())
        .map_err(|_| format!("the \"auth\" of {registry} is not base64"))?;
    let text =
        String::from_utf8(raw).map_err(|_| format!("the \"auth\" of {registry} is not UTF-8"))?;
    let (user, password) = text
        .split_once(':')
        .ok_or_else(|| format!("the \"auth\" of {registry} is not base64 of user:password"))?;
    Ok(Some(Credentials {
        user: user.to_string(),
        password: password.to_string(),
    }))
}

pub(crate) fn read_credentials(
    path: &Path,
    r: &Reference,
) -> Result<Option<Credentials>, RegistryError> {
    let mut json = Vec::new();
    File::open(path)
        .and_then(|f| f.take(MAX_MANIFEST_SIZE + 1).read_to_end(&mut json))
        .map_err(|source| RegistryError::ReadAuthFile {
            path: path.to_path_buf(),
            source,
        })?;
    if json.len() as u64 > MAX_MANIFEST_SIZE {
        return Err(RegistryError::BadAuthFile {
            path: path.to_path_buf(),
            reason: "larger than 4 MiB".to_string(),
        });
    }
    lookup_credentials(&json, &r.registry, &r.repository).map_err(|reason| {
        RegistryError::BadAuthFile {
            path: path.to_path_buf(),
            reason,
        }
    })
}
