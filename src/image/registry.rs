//! A client for OCI distribution registries (the protocol of Docker Hub, quay.io, GHCR and
//! `docker-registry`): resolve a reference to one image manifest for this host's platform,
//! then download its config and layers into a [`BlobSink`] (the image store).
//!
//! The flow follows the distribution spec (`docs/spec.md` of opencontainers/distribution-spec):
//! 1. `GET /v2/<repo>/manifests/<tag|digest>` with an `Accept` list of the four manifest types
//!    berth understands. An image index / Docker manifest list is resolved to the entry for
//!    `linux/<host arch>`, and that manifest is fetched by digest.
//! 2. Every manifest is hashed as received. The digest of the exact bytes is the manifest's
//!    identity; when pulling by digest it must match, when pulling by tag it is recorded.
//! 3. Config and layers not yet in the sink are fetched with a few threads. A download
//!    continues a `.partial` file left by an interrupted pull with an HTTP `Range` request, and
//!    the sink re-hashes the whole blob before it gets its final name.
//!
//! Authentication is lazy, as Docker does it: a request answered `401` carries a
//! `WWW-Authenticate` challenge. `Basic` gets the credentials from the auth file; `Bearer` makes
//! us ask the token service named by `realm` for a token (anonymously, or with the credentials
//! from the auth file), and the request is repeated once with it.
//!
//! Nothing from the network is trusted for sizes: manifests and configs are read to at most
//! [`MAX_MANIFEST_SIZE`], and a blob may not grow past the size its descriptor declares,
//! whatever `Content-Length` says.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use oci_spec::image::{Descriptor, ImageIndex, ImageManifest};
use serde::Deserialize;
use ureq::http::Response;
use ureq::{Body, http};

use super::ErrorKind;
use super::digest::{Digest, Hasher};

/// Largest manifest, index or image config we read. Real ones are a few KiB; the bound keeps a
/// hostile registry from making us buffer without end.
pub const MAX_MANIFEST_SIZE: u64 = 4 << 20;

/// Largest token-service answer or error body we read.
const MAX_SMALL_BODY: u64 = 64 << 10;

/// How often a blob download is attempted before the pull fails; later attempts continue the
/// partial file with a `Range` request.
const BLOB_ATTEMPTS: u32 = 3;

/// Report `Progress::Blob` after at least this many new bytes (and at the start and the end).
const PROGRESS_STEP: u64 = 1 << 20;

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
const DOCKER_SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";

/// Sent as `Accept` on manifest requests. Without it, registries that still hold schema 1
/// manifests may convert to them, and some answer with a Docker manifest instead of an index.
const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
     application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.docker.distribution.manifest.v2+json";

/// Where downloaded blobs go: the image store, through a small adapter. Implementations must
/// verify the content against the digest in `commit_blob`; that is where a resumed download,
/// whose beginning the client never saw, is checked.
pub trait BlobSink: Sync {
    /// Whether the verified blob is already stored (it is then not downloaded).
    fn has_blob(&self, digest: &Digest) -> bool;
    /// Open the partial file for `digest` for appending, creating it empty if there is none;
    /// returns it with the number of bytes it already holds.
    fn begin_blob(&self, digest: &Digest) -> io::Result<(File, u64)>;
    /// Check the complete partial file against `digest` and store it under its name. A
    /// mismatch is an `InvalidData` error.
    fn commit_blob(&self, digest: &Digest, file: File) -> io::Result<()>;
    /// Store a small blob held in memory (manifests), returning its digest.
    fn put_blob(&self, data: &[u8]) -> io::Result<Digest>;
}

/// An image reference: `[registry/]repository[:tag][@digest]`, normalized the way Docker does
/// (`debian` is `docker.io/library/debian:latest`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// `host[:port]` as written (`docker.io` for Docker Hub).
    pub registry: String,
    /// The path in the registry, e.g. `library/debian`.
    pub repository: String,
    /// The tag; `latest` when neither tag nor digest was given.
    pub tag: Option<String>,
    /// Pull exactly this manifest (or index); the tag is then only informational.
    pub digest: Option<Digest>,
}

impl Reference {
    /// What goes after `/manifests/`: the digest if there is one, else the tag.
    fn manifest_ref(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".to_string(),
        }
    }

    /// `repository:tag` or `repository@digest`, for messages.
    fn short(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => format!("{}@{d}", self.repository),
            (None, Some(t)) => format!("{}:{t}", self.repository),
            (None, None) => self.repository.clone(),
        }
    }

    /// The host the API is served on: Docker Hub's name is not its API endpoint.
    pub(crate) fn api_host(&self) -> &str {
        if self.registry == "docker.io" {
            "registry-1.docker.io"
        } else {
            &self.registry
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl FromStr for Reference {
    type Err = RegistryError;

    /// The grammar of distribution's `reference` package: the first path component is a
    /// registry if it has a `.` or a `:`, is `localhost`, or has upper case letters.
    fn from_str(s: &str) -> Result<Reference, RegistryError> {
        let bad = |reason: &'static str| RegistryError::InvalidReference {
            reference: s.to_string(),
            reason,
        };
        if s.is_empty() || s.len() > 512 {
            return Err(bad("it must have 1 to 512 characters"));
        }
        let (rest, digest) = match s.rsplit_once('@') {
            Some((rest, d)) => (
                rest,
                Some(
                    d.parse::<Digest>()
                        .map_err(|_| bad("the digest is not sha256:<64 lowercase hex digits>"))?,
                ),
            ),
            None => (s, None),
        };
        let (name, tag) = match rest.rfind(':') {
            Some(i) if !rest[i + 1..].contains('/') => (&rest[..i], Some(&rest[i + 1..])),
            _ => (rest, None),
        };
        if let Some(t) = tag
            && !valid_tag(t)
        {
            return Err(bad(
                "a tag has 1 to 128 letters, digits, '_', '.' or '-' and does not start with '.' or '-'",
            ));
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, rest))
                if first.contains(['.', ':'])
                    || first == "localhost"
                    || first.bytes().any(|b| b.is_ascii_uppercase()) =>
            {
                if !valid_registry(first) {
                    return Err(bad(
                        "the registry is not a host name or address with an optional port",
                    ));
                }
                (first, rest.to_string())
            }
            _ => ("docker.io", name.to_string()),
        };
        // Docker Hub's legacy name, and its single-component official images.
        let registry = if registry == "index.docker.io" {
            "docker.io"
        } else {
            registry
        };
        let repository = if registry == "docker.io" && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        if !repository.split('/').all(valid_component) {
            return Err(bad(
                "repository path components are lower case letters and digits separated by '.', '_', '__' or dashes",
            ));
        }
        if registry.len() + 1 + repository.len() > 255 {
            return Err(bad("the name is longer than 255 characters"));
        }
        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_string()),
            (None, Some(_)) => None,
            (None, None) => Some("latest".to_string()),
        };
        Ok(Reference {
            registry: registry.to_string(),
            repository,
            tag,
            digest,
        })
    }
}

fn valid_tag(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn valid_component(c: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let b = c.as_bytes();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-')) {
            return false;
        }
    }
    true
}

/// `host[:port]` where host is DNS labels or a bracketed IPv6 address.
pub(crate) fn valid_registry(r: &str) -> bool {
    let (host, port) = if let Some(v6) = r.strip_prefix('[') {
        let Some((addr, after)) = v6.split_once(']') else {
            return false;
        };
        if addr.parse::<std::net::Ipv6Addr>().is_err() {
            return false;
        }
        match after {
            "" => return true,
            p => match p.strip_prefix(':') {
                Some(p) => ("", Some(p)),
                None => return false,
            },
        }
    } else {
        match r.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (r, None),
        }
    };
    if let Some(p) = port
        && (p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) || p.parse::<u16>().is_err())
    {
        return false;
    }
    host.is_empty() && r.starts_with('[')
        || !host.is_empty()
            && host.len() <= 253
            && host.split('.').all(|l| {
                let b = l.as_bytes();
                !b.is_empty()
                    && b.len() <= 63
                    && b[0].is_ascii_alphanumeric()
                    && b[b.len() - 1].is_ascii_alphanumeric()
                    && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
            })
}

/// How to pull.
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// Talk plain HTTP to the registry (and allow an HTTP token service). Only for registries
    /// explicitly marked insecure; everything else is HTTPS checked against the webpki roots.
    pub insecure: bool,
    /// A docker/podman `auth.json` (`{"auths":{"host[:port]":{"auth":"base64(user:pass)"}}}`).
    pub auth_file: Option<PathBuf>,
    /// Blob downloads at once (clamped to 1..=8).
    pub parallel: usize,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions {
            insecure: false,
            auth_file: None,
            parallel: 3,
        }
    }
}

/// What a pull reports as it goes; the callback may be called from several threads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// The image manifest is known: this many layers, and the bytes of config plus layers.
    Resolved {
        manifest: Digest,
        layers: usize,
        total_bytes: u64,
    },
    /// `done` of `total` bytes of a blob are on disk (including a resumed part).
    Blob {
        digest: Digest,
        done: u64,
        total: u64,
    },
    /// The blob was already in the store.
    BlobSkipped { digest: Digest, size: u64 },
    /// The blob is downloaded, verified and stored.
    BlobDone { digest: Digest },
}

/// The result of a pull; all blobs it names are in the sink.
#[derive(Debug, Clone)]
pub struct Pulled {
    /// The image manifest for this platform (Docker schema 2 manifests have the same shape).
    pub manifest: ImageManifest,
    /// sha256 of the exact manifest bytes.
    pub manifest_digest: Digest,
    /// The index (manifest list) the manifest was chosen from, if the reference named one.
    pub index_digest: Option<Digest>,
    /// The image config blob.
    pub config_digest: Digest,
    /// Bytes of blobs downloaded by this pull (without resumed parts and skipped blobs).
    pub fetched_bytes: u64,
    /// Blobs downloaded by this pull.
    pub fetched_blobs: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference {
        reference: String,
        reason: &'static str,
    },
    #[error("cannot read auth file {}: {source}", path.display())]
    ReadAuthFile { path: PathBuf, source: io::Error },
    #[error("auth file {}: {reason}", path.display())]
    BadAuthFile { path: PathBuf, reason: String },
    #[error("cannot reach registry {registry} at {url}: {source}{hint}")]
    Connect {
        registry: String,
        url: String,
        source: Box<ureq::Error>,
        hint: &'static str,
    },
    #[error("transfer of {what} from registry {registry} failed: {source}")]
    Transfer {
        registry: String,
        what: String,
        source: io::Error,
    },
    #[error("registry {registry} answered {status} for {url}{detail}")]
    Http {
        registry: String,
        url: String,
        status: u16,
        detail: String,
    },
    #[error("registry {registry} has no manifest for {reference}{detail}")]
    ManifestNotFound {
        registry: String,
        reference: String,
        detail: String,
    },
    #[error("registry {registry} has no blob {digest} in {repository}")]
    BlobNotFound {
        registry: String,
        repository: String,
        digest: Digest,
    },
    #[error("registry {registry} refused access to {repository}: {reason}")]
    Unauthorized {
        registry: String,
        repository: String,
        reason: String,
    },
    #[error("token service {realm} for registry {registry} failed: {reason}")]
    Token {
        registry: String,
        realm: String,
        reason: String,
    },
    #[error(
        "{reference} is a Docker schema 1 manifest, which berth does not support (push it again with a current docker or skopeo)"
    )]
    Schema1 { reference: String },
    #[error("{reference} has media type {media_type:?}, which is not an image manifest or index")]
    UnsupportedMediaType {
        reference: String,
        media_type: String,
    },
    #[error("{what} is not valid: {reason}")]
    BadManifest { what: String, reason: String },
    #[error("{what} is larger than the {limit} bytes allowed")]
    TooLarge { what: String, limit: u64 },
    #[error("{what} does not match its digest {expected}: {detail}")]
    DigestMismatch {
        what: String,
        expected: Digest,
        detail: String,
    },
    #[error(
        "registry {registry} sent {what} with {actual} bytes where the manifest declares {expected}"
    )]
    SizeMismatch {
        registry: String,
        what: String,
        expected: u64,
        actual: String,
    },
    #[error("{reference} has no image for {wanted} (it has: {available})")]
    NoPlatform {
        reference: String,
        wanted: String,
        available: String,
    },
    #[error("cannot store blob {digest}: {source}")]
    Store { digest: String, source: io::Error },
    #[error("registry {registry} refused the user name or password")]
    LoginRefused { registry: String },
}

impl RegistryError {
    pub fn kind(&self) -> ErrorKind {
        use RegistryError::*;
        match self {
            InvalidReference { .. }
            | BadAuthFile { .. }
            | Schema1 { .. }
            | UnsupportedMediaType { .. }
            | BadManifest { .. }
            | TooLarge { .. }
            | DigestMismatch { .. }
            | SizeMismatch { .. } => ErrorKind::InvalidInput,
            ManifestNotFound { .. } | BlobNotFound { .. } | NoPlatform { .. } => {
                ErrorKind::NotFound
            }
            ReadAuthFile { .. }
            | Connect { .. }
            | Transfer { .. }
            | Http { .. }
            | Unauthorized { .. }
            | Token { .. }
            | Store { .. } => ErrorKind::Failed,
            LoginRefused { .. } => ErrorKind::InvalidInput,
        }
    }

    /// Worth another attempt of the same download: the network or the server hiccuped.
    fn transient(&self) -> bool {
        match self {
            RegistryError::Connect { .. } | RegistryError::Transfer { .. } => true,
            RegistryError::Http { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

/// Parse one challenge (RFC 7235: a scheme, then `key=value` or `key="quoted value"` pairs).
/// Unknown schemes give `None`.
fn parse_challenge(header: &str) -> Option<Challenge> {
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
    fn basic_header(&self) -> String {
        format!(
            "Basic {}",
            BASE64.encode(format!("{}:{}", self.user, self.password))
        )
    }
}

#[derive(Deserialize)]
struct AuthFile {
    #[serde(default)]
    auths: HashMap<String, AuthEntry>,
}

#[derive(Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
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
fn lookup_credentials(
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

/// Whether a manifest body is an index or a single-image manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ManifestKind {
    Index,
    Image,
}

/// Decide what a manifest body is from its `mediaType` field, falling back to the
/// `Content-Type` header, then to its shape (the OCI spec lets `mediaType` be absent).
fn classify_manifest(
    body: &[u8],
    content_type: Option<&str>,
    what: &str,
) -> Result<ManifestKind, RegistryError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        schema_version: Option<u32>,
        media_type: Option<String>,
        manifests: Option<serde::de::IgnoredAny>,
        config: Option<serde::de::IgnoredAny>,
    }
    let probe: Probe = serde_json::from_slice(body).map_err(|e| RegistryError::BadManifest {
        what: what.to_string(),
        reason: format!("not a JSON manifest: {e}"),
    })?;
    let header = content_type
        .map(|c| c.split(';').next().unwrap_or("").trim())
        .filter(|c| !c.is_empty());
    let media_type = match (&probe.media_type, header) {
        (Some(m), _) => m.as_str(),
        (None, Some(h)) if h != "application/json" => h,
        _ if probe.manifests.is_some() => OCI_INDEX,
        _ if probe.config.is_some() => OCI_MANIFEST,
        _ => "",
    };
    if probe.schema_version == Some(1)
        || media_type == DOCKER_SCHEMA1
        || media_type == DOCKER_SCHEMA1_SIGNED
    {
        return Err(RegistryError::Schema1 {
            reference: what.to_string(),
        });
    }
    let kind = match media_type {
        OCI_INDEX | DOCKER_LIST => ManifestKind::Index,
        OCI_MANIFEST | DOCKER_MANIFEST => ManifestKind::Image,
        other => {
            return Err(RegistryError::UnsupportedMediaType {
                reference: what.to_string(),
                media_type: other.to_string(),
            });
        }
    };
    if probe.schema_version != Some(2) {
        return Err(RegistryError::BadManifest {
            what: what.to_string(),
            reason: format!("schemaVersion is {:?}, expected 2", probe.schema_version),
        });
    }
    Ok(kind)
}

/// The OCI platform of this host: `linux`, the GOARCH-style architecture name and, where
/// indexes distinguish them, a variant.
fn host_platform() -> (&'static str, &'static str, Option<&'static str>) {
    let little = cfg!(target_endian = "little");
    let (arch, variant) = match std::env::consts::ARCH {
        "x86_64" => ("amd64", None),
        "x86" => ("386", None),
        "aarch64" => ("arm64", Some("v8")),
        "arm" => ("arm", Some("v7")),
        "powerpc64" if little => ("ppc64le", None),
        "powerpc64" => ("ppc64", None),
        "s390x" => ("s390x", None),
        "riscv64" => ("riscv64", None),
        "loongarch64" => ("loong64", None),
        "mips64" if little => ("mips64le", None),
        other => (other, None),
    };
    ("linux", arch, variant)
}

/// Choose the manifest for `os/arch[/variant]` from an index: an exact variant match first,
/// then an entry without a variant, then any variant (arm64 images rarely say `v8`).
fn select_platform<'a>(
    index: &'a ImageIndex,
    os: &str,
    arch: &str,
    variant: Option<&str>,
    what: &str,
) -> Result<&'a Descriptor, RegistryError> {
    let candidates: Vec<&Descriptor> = index
        .manifests()
        .iter()
        .filter(|d| {
            d.platform()
                .as_ref()
                .is_some_and(|p| p.os().to_string() == os && p.architecture().to_string() == arch)
        })
        .collect();
    let variant_of = |d: &Descriptor| d.platform().as_ref().and_then(|p| p.variant().clone());
    let chosen = candidates
        .iter()
        .find(|d| variant.is_some() && variant_of(d).as_deref() == variant)
        .or_else(|| candidates.iter().find(|d| variant_of(d).is_none()))
        .or_else(|| candidates.first());
    match chosen {
        Some(d) => Ok(d),
        None => {
            let available: Vec<String> = index
                .manifests()
                .iter()
                .filter_map(|d| d.platform().as_ref())
                .map(|p| match p.variant() {
                    Some(v) => format!("{}/{}/{v}", p.os(), p.architecture()),
                    None => format!("{}/{}", p.os(), p.architecture()),
                })
                .collect();
            Err(RegistryError::NoPlatform {
                reference: what.to_string(),
                wanted: match variant {
                    Some(v) => format!("{os}/{arch}/{v}"),
                    None => format!("{os}/{arch}"),
                },
                available: if available.is_empty() {
                    "no platforms".to_string()
                } else {
                    available.join(", ")
                },
            })
        }
    }
}

/// Our digest of an oci-spec descriptor digest; berth stores only sha256.
fn descriptor_digest(d: &Descriptor, what: &str) -> Result<Digest, RegistryError> {
    d.digest()
        .to_string()
        .parse()
        .map_err(|e| RegistryError::BadManifest {
            what: what.to_string(),
            reason: format!("{e}"),
        })
}

/// One connection to one repository of one registry, shared by the download threads.
pub(crate) struct Client<'a> {
    pub(crate) agent: ureq::Agent,
    pub(crate) reference: &'a Reference,
    /// `scheme://host/v2/<repository>`.
    pub(crate) base: String,
    pub(crate) insecure: bool,
    pub(crate) credentials: Option<Credentials>,
    /// The `Authorization` value that last worked (or that a challenge asked for).
    pub(crate) authorization: Mutex<Option<String>>,
    /// Scopes asked of a token service besides the challenge's (a push's mount sources).
    pub(crate) extra_scopes: Vec<String>,
    /// Ask a token service for no scope when the challenge names none (a login).
    pub(crate) no_default_scope: bool,
}

/// A manifest as fetched.
struct FetchedManifest {
    body: Vec<u8>,
    content_type: Option<String>,
    /// `Docker-Content-Digest`, which registries send as their idea of the digest.
    header_digest: Option<String>,
}

impl<'a> Client<'a> {
    pub(crate) fn new(
        reference: &'a Reference,
        opts: &PullOptions,
        credentials: Option<Credentials>,
    ) -> Self {
        let config = ureq::Agent::config_builder()
            // Errors are told apart by status below; a 401 carries the challenge we need.
            .http_status_as_error(false)
            // A redirect (blob storage on a CDN) may not downgrade to plain HTTP.
            .https_only(!opts.insecure)
            .timeout_connect(Some(Duration::from_secs(30)))
            .timeout_recv_response(Some(Duration::from_secs(60)))
            // A stalled transfer fails (and is resumed on the next attempt) instead of hanging.
            .timeout_per_read(Some(Duration::from_secs(60)))
            .user_agent(concat!("berth/", env!("CARGO_PKG_VERSION")))
            .build();
        let scheme = if opts.insecure { "http" } else { "https" };
        Client {
            agent: config.new_agent(),
            base: format!(
                "{scheme}://{}/v2/{}",
                reference.api_host(),
                reference.repository
            ),
            reference,
            insecure: opts.insecure,
            credentials,
            authorization: Mutex::new(None),
            extra_scopes: Vec::new(),
            no_default_scope: false,
        }
    }

    /// `scheme://host` of the registry's API.
    pub(crate) fn origin(&self) -> String {
        let scheme = if self.insecure { "http" } else { "https" };
        format!("{scheme}://{}", self.reference.api_host())
    }

    /// A request without a body (HEAD, GET, or an empty POST/PUT), authenticated as
    /// [`Client::get`] is: a 401 is answered once.
    pub(crate) fn request(
        &self,
        method: http::Method,
        url: &str,
        headers: &[(&str, String)],
    ) -> Result<Response<Body>, RegistryError> {
        let mut answered = false;
        loop {
            let authorization = self.authorization.lock().unwrap().clone();
            let mut req = http::Request::builder().method(method.clone()).uri(url);
            for (k, v) in headers {
                req = req.header(*k, v);
            }
            if matches!(method, http::Method::POST | http::Method::PUT) {
                req = req.header("Content-Length", "0");
            }
            if let Some(a) = &authorization {
                req = req.header("Authorization", a);
            }
            let req = req.body(()).map_err(|e| RegistryError::BadManifest {
                what: url.to_string(),
                reason: format!("not a valid request: {e}"),
            })?;
            let resp = self
                .agent
                .run(req)
                .map_err(|e| self.connect_error(url, e))?;
            if resp.status() != http::StatusCode::UNAUTHORIZED || answered {
                return Ok(resp);
            }
            answered = true;
            let challenges: Vec<Challenge> = resp
                .headers()
                .get_all(http::header::WWW_AUTHENTICATE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .filter_map(parse_challenge)
                .collect();
            let new = self.answer(&challenges, resp)?;
            *self.authorization.lock().unwrap() = Some(new);
        }
    }

    /// A request with a body, sent once with the authorization established by earlier
    /// requests (a body cannot be sent twice; the caller starts over on a 401).
    pub(crate) fn send_body(
        &self,
        method: http::Method,
        url: &str,
        headers: &[(&str, String)],
        body: ureq::SendBody<'_>,
    ) -> Result<Response<Body>, RegistryError> {
        let mut req = http::Request::builder().method(method).uri(url);
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        if let Some(a) = self.authorization.lock().unwrap().clone() {
            req = req.header("Authorization", a);
        }
        let req = req.body(body).map_err(|e| RegistryError::BadManifest {
            what: url.to_string(),
            reason: format!("not a valid request: {e}"),
        })?;
        self.agent.run(req).map_err(|e| self.connect_error(url, e))
    }

    pub(crate) fn registry(&self) -> String {
        self.reference.registry.clone()
    }

    fn connect_error(&self, url: &str, e: ureq::Error) -> RegistryError {
        let hint = match e {
            _ if self.insecure => "",
            ureq::Error::HostNotFound | ureq::Error::ConnectionFailed | ureq::Error::Timeout(_) => {
                ""
            }
            _ => " (if the registry serves plain HTTP only, it has to be marked insecure)",
        };
        RegistryError::Connect {
            registry: self.registry(),
            url: url.to_string(),
            source: Box::new(e),
            hint,
        }
    }

    /// GET with authentication: on a 401, answer its challenge and try once more.
    fn get(&self, url: &str, headers: &[(&str, String)]) -> Result<Response<Body>, RegistryError> {
        let mut answered = false;
        loop {
            let authorization = self.authorization.lock().unwrap().clone();
            let mut req = self.agent.get(url);
            for (k, v) in headers {
                req = req.header(*k, v);
            }
            if let Some(a) = &authorization {
                req = req.header("Authorization", a);
            }
            let resp = req.call().map_err(|e| self.connect_error(url, e))?;
            if resp.status() != http::StatusCode::UNAUTHORIZED || answered {
                return Ok(resp);
            }
            answered = true;
            let challenges: Vec<Challenge> = resp
                .headers()
                .get_all(http::header::WWW_AUTHENTICATE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .filter_map(parse_challenge)
                .collect();
            let new = self.answer(&challenges, resp)?;
            *self.authorization.lock().unwrap() = Some(new);
        }
    }

    /// The `Authorization` value answering one of `challenges` (Bearer preferred).
    fn answer(
        &self,
        challenges: &[Challenge],
        resp: Response<Body>,
    ) -> Result<String, RegistryError> {
        let unauthorized = |reason: String| RegistryError::Unauthorized {
            registry: self.registry(),
            repository: self.reference.repository.clone(),
            reason,
        };
        let bearer = challenges.iter().find_map(|c| match c {
            Challenge::Bearer {
                realm,
                service,
                scope,
            } => Some((realm, service, scope)),
            Challenge::Basic => None,
        });
        if let Some((realm, service, scope)) = bearer {
            return self.token(realm, service.as_deref(), scope.as_deref());
        }
        if challenges.contains(&Challenge::Basic) {
            return match &self.credentials {
                Some(c) => Ok(c.basic_header()),
                None => Err(unauthorized(
                    "it asks for a user name and password, and the auth file has none for it"
                        .to_string(),
                )),
            };
        }
        Err(unauthorized(format!(
            "it answered 401 without a challenge berth understands{}",
            error_detail(resp)
        )))
    }

    /// Get a bearer token from the token service (docker's token authentication spec).
    fn token(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: Option<&str>,
    ) -> Result<String, RegistryError> {
        let fail = |reason: String| RegistryError::Token {
            registry: self.registry(),
            realm: realm.to_string(),
            reason,
        };
        // Credentials go to the realm in the clear unless it is HTTPS.
        if !self.insecure && !realm.starts_with("https://") {
            return Err(fail("the token service is not HTTPS".to_string()));
        }
        let default_scope = format!("repository:{}:pull", self.reference.repository);
        let mut req = self.agent.get(realm);
        match scope {
            Some(s) => req = req.query("scope", s),
            None if !self.no_default_scope => req = req.query("scope", &default_scope),
            None => {}
        }
        for s in &self.extra_scopes {
            req = req.query("scope", s);
        }
        if let Some(s) = service {
            req = req.query("service", s);
        }
        if let Some(c) = &self.credentials {
            req = req.header("Authorization", c.basic_header());
        }
        let resp = req.call().map_err(|e| fail(e.to_string()))?;
        let status = resp.status().as_u16();
        if status != 200 {
            let reason = if status == 401 || status == 403 {
                if self.credentials.is_some() {
                    "the credentials from the auth file were refused".to_string()
                } else {
                    "it wants credentials, and the auth file has none for this registry".to_string()
                }
            } else {
                format!("it answered {status}{}", error_detail(resp))
            };
            return Err(fail(reason));
        }
        let body = read_bounded(resp, MAX_SMALL_BODY, "token", &self.registry())?;
        #[derive(Deserialize)]
        struct TokenResponse {
            token: Option<String>,
            access_token: Option<String>,
        }
        let t: TokenResponse =
            serde_json::from_slice(&body).map_err(|e| fail(format!("bad answer: {e}")))?;
        let token = t
            .token
            .or(t.access_token)
            .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_graphic()))
            .ok_or_else(|| fail("the answer has no usable token".to_string()))?;
        Ok(format!("Bearer {token}"))
    }

    /// Map a non-success status to an error.
    pub(crate) fn status_error(&self, url: &str, resp: Response<Body>) -> RegistryError {
        let status = resp.status().as_u16();
        let detail = error_detail(resp);
        match status {
            401 | 403 => RegistryError::Unauthorized {
                registry: self.registry(),
                repository: self.reference.repository.clone(),
                reason: if self.credentials.is_some() {
                    format!("the credentials from the auth file were refused{detail}")
                } else {
                    format!("it needs credentials{detail}")
                },
            },
            _ => RegistryError::Http {
                registry: self.registry(),
                url: url.to_string(),
                status,
                detail,
            },
        }
    }

    fn fetch_manifest(&self, wanted: &str, what: &str) -> Result<FetchedManifest, RegistryError> {
        let url = format!("{}/manifests/{wanted}", self.base);
        let resp = self.get(&url, &[("Accept", MANIFEST_ACCEPT.to_string())])?;
        match resp.status().as_u16() {
            200 => {}
            404 => {
                return Err(RegistryError::ManifestNotFound {
                    registry: self.registry(),
                    reference: what.to_string(),
                    detail: error_detail(resp),
                });
            }
            _ => return Err(self.status_error(&url, resp)),
        }
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let content_type = header("content-type");
        let header_digest = header("docker-content-digest");
        let body = read_bounded(resp, MAX_MANIFEST_SIZE, what, &self.registry())?;
        Ok(FetchedManifest {
            body,
            content_type,
            header_digest,
        })
    }

    /// Download one blob into the sink, resuming and retrying; returns the bytes fetched.
    fn fetch_blob(
        &self,
        sink: &dyn BlobSink,
        digest: &Digest,
        size: u64,
        progress: &(dyn Fn(Progress) + Sync),
        stop: &AtomicBool,
    ) -> Result<u64, RegistryError> {
        let mut fetched = 0;
        let mut from_scratch = false;
        let mut attempt = 1;
        loop {
            let mut resumed = false;
            let result = self.fetch_blob_once(
                sink,
                digest,
                size,
                from_scratch,
                &mut resumed,
                &mut fetched,
                progress,
                stop,
            );
            match result {
                Ok(()) => return Ok(fetched),
                // A partial file that does not hash right after completion may have been
                // corrupt before we continued it: start over once.
                Err(RegistryError::DigestMismatch { .. }) if resumed && !from_scratch => {
                    from_scratch = true;
                }
                Err(e)
                    if e.transient()
                        && attempt < BLOB_ATTEMPTS
                        && !stop.load(Ordering::Relaxed) =>
                {
                    attempt += 1;
                    std::thread::sleep(Duration::from_millis(200 * u64::from(attempt)));
                }
                Err(e) => return Err(e),
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn fetch_blob_once(
        &self,
        sink: &dyn BlobSink,
        digest: &Digest,
        size: u64,
        from_scratch: bool,
        resumed: &mut bool,
        fetched: &mut u64,
        progress: &(dyn Fn(Progress) + Sync),
        stop: &AtomicBool,
    ) -> Result<(), RegistryError> {
        let store_err = |source| RegistryError::Store {
            digest: digest.to_string(),
            source,
        };
        let what = format!("blob {digest}");
        let (mut file, mut have) = sink.begin_blob(digest).map_err(store_err)?;
        if from_scratch || have > size {
            file.set_len(0).map_err(store_err)?;
            have = 0;
        }
        if have < size {
            let url = format!("{}/blobs/{digest}", self.base);
            let mut headers = Vec::new();
            if have > 0 {
                headers.push(("Range", format!("bytes={have}-")));
            }
            let resp = self.get(&url, &headers)?;
            match resp.status().as_u16() {
                200 if have > 0 => {
                    // The server ignored the range and sends everything.
                    file.set_len(0).map_err(store_err)?;
                    have = 0;
                }
                200 => {}
                206 if have > 0 && content_range_start(&resp) == Some(have) => *resumed = true,
                206 | 416 => {
                    // A range we did not ask for, or one the server cannot satisfy: the partial
                    // file cannot be trusted, so the next attempt starts over.
                    file.set_len(0).map_err(store_err)?;
                    return Err(RegistryError::Transfer {
                        registry: self.registry(),
                        what,
                        source: io::Error::other("the registry did not honour the Range request"),
                    });
                }
                404 => {
                    return Err(RegistryError::BlobNotFound {
                        registry: self.registry(),
                        repository: self.reference.repository.clone(),
                        digest: *digest,
                    });
                }
                _ => return Err(self.status_error(&url, resp)),
            }
            // Hash what we see when we see all of it: a bad blob is then named as the
            // registry's fault before the sink checks it again.
            let mut hasher = (have == 0).then(Hasher::default);
            let mut reader = resp.into_body().into_reader();
            let mut buf = vec![0u8; 256 << 10];
            let mut reported = have;
            progress(Progress::Blob {
                digest: *digest,
                done: have,
                total: size,
            });
            loop {
                if stop.load(Ordering::Relaxed) {
                    return Err(RegistryError::Transfer {
                        registry: self.registry(),
                        what,
                        source: io::Error::other("cancelled because another download failed"),
                    });
                }
                let n = match reader.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(source) => {
                        return Err(RegistryError::Transfer {
                            registry: self.registry(),
                            what,
                            source,
                        });
                    }
                };
                if have + n as u64 > size {
                    file.set_len(0).map_err(store_err)?;
                    return Err(RegistryError::SizeMismatch {
                        registry: self.registry(),
                        what,
                        expected: size,
                        actual: "more".to_string(),
                    });
                }
                file.write_all(&buf[..n]).map_err(store_err)?;
                if let Some(h) = &mut hasher {
                    h.update(&buf[..n]);
                }
                have += n as u64;
                *fetched += n as u64;
                if have - reported >= PROGRESS_STEP || have == size {
                    reported = have;
                    progress(Progress::Blob {
                        digest: *digest,
                        done: have,
                        total: size,
                    });
                }
            }
            if have < size {
                // Keep the partial file: the next attempt continues it.
                return Err(RegistryError::Transfer {
                    registry: self.registry(),
                    what,
                    source: io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("connection closed after {have} of {size} bytes"),
                    ),
                });
            }
            if let Some(h) = hasher {
                let actual = h.finish();
                if actual != *digest {
                    file.set_len(0).map_err(store_err)?;
                    return Err(RegistryError::DigestMismatch {
                        what: format!("a blob from registry {}", self.registry()),
                        expected: *digest,
                        detail: format!("the content hashes to {actual}"),
                    });
                }
            }
        } else {
            *resumed = true;
        }
        file.flush().map_err(store_err)?;
        sink.commit_blob(digest, file).map_err(|source| {
            if source.kind() == io::ErrorKind::InvalidData {
                RegistryError::DigestMismatch {
                    what: format!("a blob from registry {}", self.registry()),
                    expected: *digest,
                    detail: format!("the store says: {source}"),
                }
            } else {
                store_err(source)
            }
        })?;
        progress(Progress::BlobDone { digest: *digest });
        Ok(())
    }
}

/// The first byte position of a `Content-Range: bytes FIRST-LAST/TOTAL` header.
fn content_range_start(resp: &Response<Body>) -> Option<u64> {
    let v = resp
        .headers()
        .get(http::header::CONTENT_RANGE)?
        .to_str()
        .ok()?;
    let range = v.trim().strip_prefix("bytes ")?;
    range.split_once('-')?.0.trim().parse().ok()
}

/// Read a body of at most `limit` bytes.
pub(crate) fn read_bounded(
    resp: Response<Body>,
    limit: u64,
    what: &str,
    registry: &str,
) -> Result<Vec<u8>, RegistryError> {
    let mut body = Vec::new();
    resp.into_body()
        .into_reader()
        .take(limit + 1)
        .read_to_end(&mut body)
        .map_err(|source| RegistryError::Transfer {
            registry: registry.to_string(),
            what: what.to_string(),
            source,
        })?;
    if body.len() as u64 > limit {
        return Err(RegistryError::TooLarge {
            what: what.to_string(),
            limit,
        });
    }
    Ok(body)
}

/// The registry's explanation from an error body (`{"errors":[{"code":..,"message":..}]}`),
/// as `": CODE: message"`, or nothing.
pub(crate) fn error_detail(resp: Response<Body>) -> String {
    #[derive(Deserialize)]
    struct Errors {
        errors: Vec<ErrorEntry>,
    }
    #[derive(Deserialize)]
    struct ErrorEntry {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    let mut body = Vec::new();
    if resp
        .into_body()
        .into_reader()
        .take(MAX_SMALL_BODY)
        .read_to_end(&mut body)
        .is_err()
    {
        return String::new();
    }
    match serde_json::from_slice::<Errors>(&body) {
        Ok(e) if !e.errors.is_empty() => {
            let parts: Vec<String> = e
                .errors
                .iter()
                .map(|e| format!("{}: {}", e.code, e.message))
                .collect();
            format!(" ({})", parts.join("; "))
        }
        _ => String::new(),
    }
}

/// Check a fetched manifest's digest: against the one we asked for, and against the one the
/// registry claims. Returns the digest of the bytes.
fn verify_manifest(
    fetched: &FetchedManifest,
    expected: Option<&Digest>,
    what: &str,
) -> Result<Digest, RegistryError> {
    let actual = Digest::of(&fetched.body);
    let claimed = fetched
        .header_digest
        .as_deref()
        .filter(|h| h.starts_with("sha256:"));
    for want in expected
        .map(Digest::to_string)
        .iter()
        .map(String::as_str)
        .chain(claimed)
    {
        if want != actual.to_string() {
            return Err(RegistryError::DigestMismatch {
                what: what.to_string(),
                expected: want.parse().map_err(|_| RegistryError::BadManifest {
                    what: what.to_string(),
                    reason: format!("the registry claims digest {want:?}"),
                })?,
                detail: format!("the content hashes to {actual}"),
            });
        }
    }
    Ok(actual)
}

/// Pull `reference` for this host's platform: resolve the manifest, and download config and
/// layers that `sink` does not have yet. When this returns, every blob of the manifest is in
/// the sink; creating the image from it is the caller's step.
pub fn pull(
    sink: &dyn BlobSink,
    reference: &Reference,
    opts: &PullOptions,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<Pulled, RegistryError> {
    let credentials = match &opts.auth_file {
        Some(path) => read_credentials(path, reference)?,
        None => None,
    };
    let client = Client::new(reference, opts, credentials);
    let what = reference.short();
    let first = client.fetch_manifest(&reference.manifest_ref(), &what)?;
    let first_digest = verify_manifest(&first, reference.digest.as_ref(), &what)?;
    let store_err = |d: &Digest, source| RegistryError::Store {
        digest: d.to_string(),
        source,
    };

    let (index_digest, manifest, manifest_digest) =
        match classify_manifest(&first.body, first.content_type.as_deref(), &what)? {
            ManifestKind::Image => (None, first, first_digest),
            ManifestKind::Index => {
                let index: ImageIndex = serde_json::from_slice(&first.body).map_err(|e| {
                    RegistryError::BadManifest {
                        what: what.clone(),
                        reason: e.to_string(),
                    }
                })?;
                let (os, arch, variant) = host_platform();
                let chosen = select_platform(&index, os, arch, variant, &what)?;
                let digest = descriptor_digest(chosen, &what)?;
                let inner_what = format!("{}@{digest}", reference.repository);
                if chosen.size() > MAX_MANIFEST_SIZE {
                    return Err(RegistryError::TooLarge {
                        what: inner_what,
                        limit: MAX_MANIFEST_SIZE,
                    });
                }
                let inner = client.fetch_manifest(&digest.to_string(), &inner_what)?;
                verify_manifest(&inner, Some(&digest), &inner_what)?;
                // Only one level: an index of indexes is not an image for this platform.
                if classify_manifest(&inner.body, inner.content_type.as_deref(), &inner_what)?
                    != ManifestKind::Image
                {
                    return Err(RegistryError::BadManifest {
                        what: inner_what,
                        reason: "an index entry for this platform is itself an index".to_string(),
                    });
                }
                sink.put_blob(&first.body)
                    .map_err(|e| store_err(&first_digest, e))?;
                (Some(first_digest), inner, digest)
            }
        };
    let parsed: ImageManifest =
        serde_json::from_slice(&manifest.body).map_err(|e| RegistryError::BadManifest {
            what: what.clone(),
            reason: e.to_string(),
        })?;
    sink.put_blob(&manifest.body)
        .map_err(|e| store_err(&manifest_digest, e))?;

    let config_digest = descriptor_digest(parsed.config(), &what)?;
    if parsed.config().size() > MAX_MANIFEST_SIZE {
        return Err(RegistryError::TooLarge {
            what: format!("the config of {what}"),
            limit: MAX_MANIFEST_SIZE,
        });
    }
    // Config first, then layers bottom up; a layer listed twice is fetched once.
    let mut blobs = vec![(config_digest, parsed.config().size())];
    for layer in parsed.layers() {
        blobs.push((descriptor_digest(layer, &what)?, layer.size()));
    }
    let mut seen = HashSet::new();
    blobs.retain(|(d, _)| seen.insert(*d));
    progress(Progress::Resolved {
        manifest: manifest_digest,
        layers: parsed.layers().len(),
        total_bytes: blobs.iter().map(|(_, s)| s).sum(),
    });

    let mut todo = Vec::new();
    for (digest, size) in blobs {
        if sink.has_blob(&digest) {
            progress(Progress::BlobSkipped { digest, size });
        } else {
            todo.push((digest, size));
        }
    }
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let fetched_bytes = AtomicU64::new(0);
    let failure: Mutex<Option<RegistryError>> = Mutex::new(None);
    let threads = opts.parallel.clamp(1, 8).min(todo.len());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let Some((digest, size)) = todo.get(next.fetch_add(1, Ordering::Relaxed))
                    else {
                        break;
                    };
                    match client.fetch_blob(sink, digest, *size, progress, &stop) {
                        Ok(n) => {
                            fetched_bytes.fetch_add(n, Ordering::Relaxed);
                        }
                        Err(e) => {
                            stop.store(true, Ordering::Relaxed);
                            failure.lock().unwrap().get_or_insert(e);
                        }
                    }
                }
            });
        }
    });
    if let Some(e) = failure.into_inner().unwrap() {
        return Err(e);
    }
    Ok(Pulled {
        manifest: parsed,
        manifest_digest,
        index_digest,
        config_digest,
        fetched_bytes: fetched_bytes.into_inner(),
        fetched_blobs: todo.len(),
    })
}

/// The image store is where pulls put their blobs.
impl BlobSink for super::store::Store {
    fn has_blob(&self, d: &Digest) -> bool {
        super::store::Store::has_blob(self, d)
    }

    fn begin_blob(&self, d: &Digest) -> io::Result<(File, u64)> {
        let p = super::store::Store::begin_blob(self, d).map_err(io::Error::other)?;
        Ok((p.file, p.len))
    }

    fn commit_blob(&self, d: &Digest, file: File) -> io::Result<()> {
        let len = file.metadata()?.len();
        let partial = super::store::PartialBlob { file, len };
        super::store::Store::commit_blob(self, d, partial).map_err(|e| {
            let kind = if e.kind() == ErrorKind::InvalidInput {
                io::ErrorKind::InvalidData
            } else {
                io::ErrorKind::Other
            };
            io::Error::new(kind, e.to_string())
        })
    }

    fn put_blob(&self, data: &[u8]) -> io::Result<Digest> {
        super::store::Store::put_blob(self, data).map_err(io::Error::other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn r(s: &str) -> Reference {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn parses_references() {
        let x = r("localhost:5000/foo/bar:1");
        assert_eq!(
            (
                x.registry.as_str(),
                x.repository.as_str(),
                x.tag.as_deref(),
                x.digest
            ),
            ("localhost:5000", "foo/bar", Some("1"), None)
        );
        let x = r(&format!("127.0.0.1:5000/x@{D}"));
        assert_eq!(
            (x.registry.as_str(), x.repository.as_str()),
            ("127.0.0.1:5000", "x")
        );
        assert_eq!((x.tag, x.digest), (None, Some(D.parse().unwrap())));
        assert_eq!(r("debian:12").to_string(), "docker.io/library/debian:12");
        assert_eq!(r("debian").to_string(), "docker.io/library/debian:latest");
        assert_eq!(
            r("index.docker.io/foo/bar").to_string(),
            "docker.io/foo/bar:latest"
        );
        assert_eq!(r("quay.io/a/b").to_string(), "quay.io/a/b:latest");
        assert_eq!(r("localhost/a").registry, "localhost");
        assert_eq!(r("[::1]:5000/a:t").registry, "[::1]:5000");
        assert_eq!(r("a/b-c__d.e--f:V_1.0-x").repository, "a/b-c__d.e--f");
        let both = r(&format!("q.io/a:1@{D}"));
        assert_eq!(both.manifest_ref(), D);
        assert_eq!(both.to_string(), format!("q.io/a:1@{D}"));
        assert_eq!(
            r("docker.io/library/debian:12").api_host(),
            "registry-1.docker.io"
        );
    }

    #[test]
    fn refuses_bad_references() {
        for bad in [
            "",
            "Debian",
            "a//b",
            "/a",
            "a/",
            "a:",
            "a:-x",
            "a:.x",
            "a@sha256:abc",
            "a@sha512:00",
            "a/B",
            "a/b_",
            "a/b...c",
            "a/b___c",
            "localhost:5000",
            "host:99999/a",
            "ho_st:5000/a",
            "-host.io/a",
            "[zz]:5000/a",
            "a b",
            "a/../b",
            &format!("a:{}", "t".repeat(129)),
            &format!("q.io/{}", "a".repeat(260)),
        ] {
            let e = bad.parse::<Reference>();
            // "localhost:5000" is a Docker Hub repository with tag 5000, as in docker.
            if bad == "localhost:5000" {
                assert_eq!(e.unwrap().to_string(), "docker.io/library/localhost:5000");
                continue;
            }
            let e = e.expect_err(bad);
            assert_eq!(e.kind(), ErrorKind::InvalidInput, "{bad}");
            assert!(e.to_string().contains("invalid image reference"), "{e}");
        }
    }

    #[test]
    fn parses_challenges() {
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/debian:pull""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/debian:pull".into()),
            })
        );
        assert_eq!(
            parse_challenge(
                r#"bearer realm=http://127.0.0.1:1/t, scope="a:b,c:pull", error="x\"y""#
            ),
            Some(Challenge::Bearer {
                realm: "http://127.0.0.1:1/t".into(),
                service: None,
                scope: Some("a:b,c:pull".into()),
            })
        );
        assert_eq!(
            parse_challenge(r#"Basic realm="Registry Realm""#),
            Some(Challenge::Basic)
        );
        assert_eq!(parse_challenge("Basic"), Some(Challenge::Basic));
        assert_eq!(parse_challenge(r#"Bearer service="x""#), None);
        assert_eq!(parse_challenge(r#"Bearer realm="unterminated"#), None);
        assert_eq!(parse_challenge(r#"Negotiate abc"#), None);
    }

    #[test]
    fn looks_up_auth_file() {
        let b = |s: &str| BASE64.encode(s);
        let json = format!(
            r#"{{"auths":{{
                "127.0.0.1:5000":{{"auth":"{}"}},
                "127.0.0.1:5000/team":{{"auth":"{}"}},
                "https://index.docker.io/v1/":{{"auth":"{}"}},
                "quay.io":{{"auth":""}},
                "bad.io":{{"auth":"!!"}}
            }}, "credHelpers":{{}}}}"#,
            b("u:p:w"),
            b("team:pw"),
            b("hub:x")
        );
        let get = |reg: &str, repo: &str| lookup_credentials(json.as_bytes(), reg, repo);
        let c = get("127.0.0.1:5000", "x").unwrap().unwrap();
        assert_eq!((c.user.as_str(), c.password.as_str()), ("u", "p:w"));
        assert_eq!(c.basic_header(), format!("Basic {}", b("u:p:w")));
        assert_eq!(
            get("127.0.0.1:5000", "team/app").unwrap().unwrap().user,
            "team"
        );
        assert_eq!(
            get("127.0.0.1:5000", "teamx/app").unwrap().unwrap().user,
            "u"
        );
        assert_eq!(
            get("docker.io", "library/debian").unwrap().unwrap().user,
            "hub"
        );
        assert_eq!(get("127.0.0.1:5001", "x").unwrap(), None);
        assert_eq!(get("quay.io", "a/b").unwrap(), None);
        assert!(get("bad.io", "a").unwrap_err().contains("base64"));
        assert!(lookup_credentials(b"{", "a", "b").is_err());
        assert!(!format!("{c:?}").contains("p:w"));
    }

    fn index(entries: &[(&str, &str, Option<&str>, char)]) -> ImageIndex {
        let manifests: Vec<String> = entries
            .iter()
            .map(|(os, arch, variant, fill)| {
                let v = variant.map(|v| format!(r#","variant":"{v}""#)).unwrap_or_default();
                format!(
                    r#"{{"mediaType":"{OCI_MANIFEST}","size":100,"digest":"sha256:{}","platform":{{"os":"{os}","architecture":"{arch}"{v}}}}}"#,
                    fill.to_string().repeat(64)
                )
            })
            .collect();
        serde_json::from_str(&format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{}]}}"#,
            manifests.join(",")
        ))
        .unwrap()
    }

    #[test]
    fn selects_platform() {
        let pick = |i: &ImageIndex, arch, variant| {
            select_platform(i, "linux", arch, variant, "x")
                .map(|d| d.digest().to_string().chars().last().unwrap())
        };
        let i = index(&[
            ("linux", "s390x", None, 'a'),
            ("windows", "amd64", None, 'b'),
            ("linux", "amd64", None, 'c'),
            ("linux", "arm64", Some("v8"), 'd'),
            ("linux", "arm", Some("v6"), 'e'),
            ("linux", "arm", Some("v7"), 'f'),
            ("unknown", "unknown", None, '0'),
        ]);
        assert_eq!(pick(&i, "amd64", None).unwrap(), 'c');
        assert_eq!(pick(&i, "arm64", Some("v8")).unwrap(), 'd');
        assert_eq!(pick(&i, "arm", Some("v7")).unwrap(), 'f');
        assert_eq!(
            pick(
                &index(&[("linux", "arm64", None, 'a')]),
                "arm64",
                Some("v8")
            )
            .unwrap(),
            'a'
        );
        let e = pick(&i, "riscv64", None).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert!(e.to_string().contains("linux/riscv64"), "{e}");
        assert!(e.to_string().contains("linux/arm/v7"), "{e}");
        let (os, arch, _) = host_platform();
        assert_eq!(os, "linux");
        assert!(!arch.is_empty() && arch != "x86_64" && arch != "aarch64");
    }

    #[test]
    fn classifies_media_types() {
        let m = |mt: &str| format!(r#"{{"schemaVersion":2,"mediaType":"{mt}","config":{{}}}}"#);
        let c = |body: &str, ct: Option<&str>| classify_manifest(body.as_bytes(), ct, "x");
        assert_eq!(c(&m(OCI_MANIFEST), None).unwrap(), ManifestKind::Image);
        assert_eq!(c(&m(DOCKER_MANIFEST), None).unwrap(), ManifestKind::Image);
        assert_eq!(c(&m(OCI_INDEX), None).unwrap(), ManifestKind::Index);
        assert_eq!(c(&m(DOCKER_LIST), None).unwrap(), ManifestKind::Index);
        // No mediaType in the body: the header decides, then the shape.
        let bare = r#"{"schemaVersion":2,"manifests":[]}"#;
        assert_eq!(
            c(bare, Some(&format!("{DOCKER_MANIFEST}; charset=utf-8"))).unwrap(),
            ManifestKind::Image
        );
        assert_eq!(
            c(bare, Some("application/json")).unwrap(),
            ManifestKind::Index
        );
        assert_eq!(
            c(r#"{"schemaVersion":2,"config":{}}"#, None).unwrap(),
            ManifestKind::Image
        );

        let schema1 = r#"{"schemaVersion":1,"name":"x","fsLayers":[]}"#;
        for (body, ct) in [
            (schema1, None),
            (schema1, Some(DOCKER_SCHEMA1_SIGNED)),
            (&*m(DOCKER_SCHEMA1), None),
        ] {
            let e = c(body, ct).unwrap_err();
            assert!(matches!(e, RegistryError::Schema1 { .. }), "{e}");
            assert_eq!(e.kind(), ErrorKind::InvalidInput);
            assert!(e.to_string().contains("schema 1"), "{e}");
        }
        let e = c(&m("application/vnd.cncf.helm.config.v1+json"), None).unwrap_err();
        assert!(
            matches!(e, RegistryError::UnsupportedMediaType { .. }),
            "{e}"
        );
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        assert!(c(r#"{"schemaVersion":2}"#, None).is_err());
        assert!(c("<html>", Some(OCI_MANIFEST)).is_err());
        assert!(c(&m(OCI_MANIFEST).replace("2,", "3,"), None).is_err());
    }

    #[test]
    fn docker_manifest_parses_as_image_manifest() {
        let docker = r#"{
           "schemaVersion": 2,
           "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
           "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": 7023,
              "digest": "sha256:b5b2b2c507a0944348e0303114d8d93aaaa081732b86451d9bce1f432a537bc7"},
           "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "size": 32654,
              "digest": "sha256:e692418e4cbaf90ca69d05a66403747baa33ee08806650b51fab815ad7fc331f"}]
        }"#;
        let m: ImageManifest = serde_json::from_str(docker).unwrap();
        assert_eq!(m.layers().len(), 1);
        assert_eq!(m.config().size(), 7023);
        assert!(descriptor_digest(&m.layers()[0], "x").is_ok());
    }

    #[test]
    fn verifies_manifest_digests() {
        let f = |hdr: Option<&str>| FetchedManifest {
            body: b"{}".to_vec(),
            content_type: None,
            header_digest: hdr.map(str::to_string),
        };
        let good = Digest::of(b"{}");
        assert_eq!(verify_manifest(&f(None), Some(&good), "x").unwrap(), good);
        assert_eq!(
            verify_manifest(&f(Some(&good.to_string())), None, "x").unwrap(),
            good
        );
        // Other algorithms in the header cannot be checked and are left alone.
        assert_eq!(
            verify_manifest(&f(Some("sha512:00")), None, "x").unwrap(),
            good
        );
        let e = verify_manifest(&f(None), Some(&D.parse().unwrap()), "x").unwrap_err();
        assert!(matches!(e, RegistryError::DigestMismatch { .. }));
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        assert!(verify_manifest(&f(Some(D)), None, "x").is_err());
    }
}
