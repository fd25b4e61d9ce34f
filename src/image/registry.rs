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

mod auth;
mod client;
mod manifest;
mod reference;

pub(crate) use auth::*;
pub(crate) use client::*;
use manifest::*;
pub use reference::*;

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
