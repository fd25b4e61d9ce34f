//! `push`: an image from the store to an OCI distribution registry, and `login`, which checks
//! credentials against a registry before they are written to the auth file
//! ([`super::auth`]).
//!
//! Push follows the distribution spec's push flow, blob by blob (config, then layers bottom
//! up, a few at a time), then the manifest:
//! 1. `HEAD /v2/<repo>/blobs/<digest>`: a blob the registry has is not sent.
//! 2. When the image is known to be in another repository of the same registry (it was
//!    pulled from or pushed to it), `POST /v2/<repo>/blobs/uploads/?mount=<digest>&from=<other>`:
//!    `201` means the registry linked it without a transfer; `202` opens an upload instead.
//! 3. Otherwise `POST /v2/<repo>/blobs/uploads/` opens an upload session (`202` with a
//!    `Location`), and one `PUT <location>?digest=<digest>` sends the blob as stored (the
//!    compressed bytes whose digest the manifest names), with its `Content-Length`.
//! 4. `PUT /v2/<repo>/manifests/<tag>` with the stored manifest bytes and their media type;
//!    the registry's `Docker-Content-Digest` must be the digest of those bytes.
//!
//! Authentication is the pull client's: a `401` is answered from the auth file (Basic, or a
//! bearer token for the scope the challenge names plus `pull` on the mount sources).

use std::fs::File;
use std::io::{self, Read};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use oci_spec::image::ImageManifest;
use ureq::http;

use super::digest::Digest;
use super::registry::{
    Client, Credentials, PullOptions, Reference, RegistryError, error_detail, read_credentials,
};

/// Where pushed blobs come from.
pub trait BlobSource: Sync {
    /// The stored blob, opened for reading, with its length.
    fn open_blob(&self, digest: &Digest) -> io::Result<(File, u64)>;
    /// A small blob (manifest) in memory.
    fn read_small(&self, digest: &Digest) -> io::Result<Vec<u8>>;
}

impl BlobSource for super::store::Store {
    fn open_blob(&self, d: &Digest) -> io::Result<(File, u64)> {
        let f = File::open(self.blob_path(d))?;
        let len = f.metadata()?.len();
        Ok((f, len))
    }

    fn read_small(&self, d: &Digest) -> io::Result<Vec<u8>> {
        self.read_blob(d).map_err(io::Error::other)
    }
}

/// What a push reports as it goes; may be called from several threads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushProgress {
    /// The blobs to consider: this many, of this many bytes.
    Started { blobs: usize, total_bytes: u64 },
    /// The registry has the blob already.
    BlobExists { digest: Digest, size: u64 },
    /// The registry linked the blob from another repository.
    BlobMounted { digest: Digest, size: u64 },
    /// `done` of `total` bytes of a blob sent.
    Blob {
        digest: Digest,
        done: u64,
        total: u64,
    },
    /// The blob is uploaded.
    BlobDone { digest: Digest },
}

/// The result of a push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    /// The digest of the manifest as pushed (the stored bytes).
    pub manifest_digest: Digest,
    pub uploaded_blobs: usize,
    pub uploaded_bytes: u64,
    pub mounted_blobs: usize,
    pub existing_blobs: usize,
}

/// A counting reader over a blob being uploaded.
struct Upload<'a> {
    file: File,
    done: u64,
    reported: u64,
    total: u64,
    digest: Digest,
    stop: &'a AtomicBool,
    progress: &'a (dyn Fn(PushProgress) + Sync),
}

impl Read for Upload<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.stop.load(Ordering::Relaxed) {
            return Err(io::Error::other("cancelled because another upload failed"));
        }
        let n = self.file.read(buf)?;
        self.done += n as u64;
        if self.done - self.reported >= 1 << 20 || (n > 0 && self.done == self.total) {
            self.reported = self.done;
            (self.progress)(PushProgress::Blob {
                digest: self.digest,
                done: self.done,
                total: self.total,
            });
        }
        Ok(n)
    }
}

/// Resolve a `Location` header against the registry's origin.
fn location(client: &Client, resp: &ureq::http::Response<ureq::Body>) -> Option<String> {
    let l = resp.headers().get(http::header::LOCATION)?.to_str().ok()?;
    Some(if l.starts_with("http://") || l.starts_with("https://") {
        l.to_string()
    } else if l.starts_with('/') {
        format!("{}{l}", client.origin())
    } else {
        return None;
    })
}

enum Outcome {
    Exists,
    Mounted,
    Uploaded(u64),
}

fn push_blob(
    client: &Client,
    src: &dyn BlobSource,
    digest: &Digest,
    mount_from: &[String],
    stop: &AtomicBool,
    progress: &(dyn Fn(PushProgress) + Sync),
) -> Result<Outcome, RegistryError> {
    let url = format!("{}/blobs/{digest}", client.base);
    let resp = client.request(http::Method::HEAD, &url, &[])?;
    match resp.status().as_u16() {
        200 => return Ok(Outcome::Exists),
        404 => {}
        _ => return Err(client.status_error(&url, resp)),
    }
    let uploads = format!("{}/blobs/uploads/", client.base);
    let mut session = None;
    for from in mount_from {
        let u = format!("{uploads}?mount={digest}&from={from}");
        let resp = client.request(http::Method::POST, &u, &[])?;
        match resp.status().as_u16() {
            201 => return Ok(Outcome::Mounted),
            202 => {
                session = location(client, &resp);
                break;
            }
            // A registry that does not mount answers like a plain upload request would, or
            // refuses; either way the blob is uploaded.
            _ => {}
        }
    }
    let session = match session {
        Some(s) => s,
        None => {
            let resp = client.request(http::Method::POST, &uploads, &[])?;
            if resp.status().as_u16() != 202 {
                return Err(client.status_error(&uploads, resp));
            }
            location(client, &resp).ok_or_else(|| RegistryError::Http {
                registry: client.registry(),
                url: uploads.clone(),
                status: 202,
                detail: " (no usable Location header)".into(),
            })?
        }
    };
    let sep = if session.contains('?') { '&' } else { '?' };
    let put = format!("{session}{sep}digest={digest}");
    let store_err = |source| RegistryError::Store {
        digest: digest.to_string(),
        source,
    };
    let (file, len) = src.open_blob(digest).map_err(store_err)?;
    let mut body = Upload {
        file,
        done: 0,
        reported: 0,
        total: len,
        digest: *digest,
        stop,
        progress,
    };
    progress(PushProgress::Blob {
        digest: *digest,
        done: 0,
        total: len,
    });
    let resp = client.send_body(
        http::Method::PUT,
        &put,
        &[
            ("Content-Type", "application/octet-stream".into()),
            ("Content-Length", len.to_string()),
        ],
        ureq::SendBody::from_reader(&mut body),
    )?;
    match resp.status().as_u16() {
        201 | 204 => {}
        _ => return Err(client.status_error(&put, resp)),
    }
    progress(PushProgress::BlobDone { digest: *digest });
    Ok(Outcome::Uploaded(len))
}

/// Push the image whose manifest is stored as `manifest_digest` to `dest` (its tag, or its
/// digest). `mount_from` lists `registry/repository`s that hold the image already; those on
/// `dest`'s registry are offered to it for cross-repository mounts.
pub fn push(
    src: &dyn BlobSource,
    manifest_digest: &Digest,
    dest: &Reference,
    mount_from: &[String],
    opts: &PullOptions,
    progress: &(dyn Fn(PushProgress) + Sync),
) -> Result<Pushed, RegistryError> {
    let store_err = |d: &Digest, source| RegistryError::Store {
        digest: d.to_string(),
        source,
    };
    let bytes = src
        .read_small(manifest_digest)
        .map_err(|e| store_err(manifest_digest, e))?;
    let manifest: ImageManifest =
        serde_json::from_slice(&bytes).map_err(|e| RegistryError::BadManifest {
            what: format!("stored manifest {manifest_digest}"),
            reason: e.to_string(),
        })?;
    let media_type = manifest
        .media_type()
        .as_ref()
        .map(|m| m.to_string())
        .unwrap_or_else(|| "application/vnd.oci.image.manifest.v1+json".into());
    let credentials: Option<Credentials> = match &opts.auth_file {
        Some(path) => read_credentials(path, dest)?,
        None => None,
    };
    let mut client = Client::new(dest, opts, credentials);
    let prefix = format!("{}/", dest.registry);
    let mounts: Vec<String> = mount_from
        .iter()
        .filter_map(|s| s.strip_prefix(&prefix))
        .filter(|r| *r != dest.repository)
        .map(String::from)
        .collect();
    client.extra_scopes = mounts
        .iter()
        .map(|r| format!("repository:{r}:pull"))
        .collect();

    let mut blobs: Vec<(Digest, u64)> = Vec::new();
    let what = format!("stored manifest {manifest_digest}");
    let parse = |d: &oci_spec::image::Descriptor| -> Result<(Digest, u64), RegistryError> {
        let digest = d
            .digest()
            .to_string()
            .parse()
            .map_err(|e| RegistryError::BadManifest {
                what: what.clone(),
                reason: format!("{e}"),
            })?;
        Ok((digest, d.size()))
    };
    blobs.push(parse(manifest.config())?);
    for l in manifest.layers() {
        let b = parse(l)?;
        if !blobs.contains(&b) {
            blobs.push(b);
        }
    }
    progress(PushProgress::Started {
        blobs: blobs.len(),
        total_bytes: blobs.iter().map(|(_, s)| s).sum(),
    });
    // The first request settles authentication before the threads start.
    let probe = format!("{}/tags/list", client.base);
    client.request(http::Method::GET, &probe, &[])?;

    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let uploaded = AtomicUsize::new(0);
    let uploaded_bytes = AtomicU64::new(0);
    let mounted = AtomicUsize::new(0);
    let existing = AtomicUsize::new(0);
    let failure: Mutex<Option<RegistryError>> = Mutex::new(None);
    let threads = opts.parallel.clamp(1, 8).min(blobs.len());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let Some((d, size)) = blobs.get(next.fetch_add(1, Ordering::Relaxed)) else {
                        break;
                    };
                    match push_blob(&client, src, d, &mounts, &stop, progress) {
                        Ok(Outcome::Exists) => {
                            existing.fetch_add(1, Ordering::Relaxed);
                            progress(PushProgress::BlobExists {
                                digest: *d,
                                size: *size,
                            });
                        }
                        Ok(Outcome::Mounted) => {
                            mounted.fetch_add(1, Ordering::Relaxed);
                            progress(PushProgress::BlobMounted {
                                digest: *d,
                                size: *size,
                            });
                        }
                        Ok(Outcome::Uploaded(n)) => {
                            uploaded.fetch_add(1, Ordering::Relaxed);
                            uploaded_bytes.fetch_add(n, Ordering::Relaxed);
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
    let tag = match (&dest.digest, &dest.tag) {
        (Some(d), _) => d.to_string(),
        (None, Some(t)) => t.clone(),
        (None, None) => "latest".into(),
    };
    let url = format!("{}/manifests/{tag}", client.base);
    let resp = client.send_body(
        http::Method::PUT,
        &url,
        &[
            ("Content-Type", media_type),
            ("Content-Length", bytes.len().to_string()),
        ],
        ureq::SendBody::from_reader(&mut &bytes[..]),
    )?;
    match resp.status().as_u16() {
        200 | 201 | 204 => {}
        _ => return Err(client.status_error(&url, resp)),
    }
    let claimed = resp
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if let Some(claimed) = claimed
        && claimed.starts_with("sha256:")
        && claimed != manifest_digest.to_string()
    {
        return Err(RegistryError::DigestMismatch {
            what: format!("the manifest pushed to {dest}"),
            expected: *manifest_digest,
            detail: format!("the registry stored it as {claimed}{}", error_detail(resp)),
        });
    }
    Ok(Pushed {
        manifest_digest: *manifest_digest,
        uploaded_blobs: uploaded.into_inner(),
        uploaded_bytes: uploaded_bytes.into_inner(),
        mounted_blobs: mounted.into_inner(),
        existing_blobs: existing.into_inner(),
    })
}

/// Check `user`/`password` against `registry` (`host[:port]`, `docker.io` for Docker Hub):
/// `GET /v2/`, answering a Basic challenge with them, or asking the token service a Bearer
/// challenge names for a token with them. `Ok` when the registry accepts them (or needs
/// none); [`RegistryError::LoginRefused`] when it refuses them.
pub fn check_login(
    registry: &str,
    user: &str,
    password: &str,
    insecure: bool,
) -> Result<(), RegistryError> {
    // A reference only to address the registry; the repository is not used.
    let r = Reference {
        registry: registry.to_string(),
        repository: "library/login".into(),
        tag: None,
        digest: None,
    };
    let opts = PullOptions {
        insecure,
        ..PullOptions::default()
    };
    let mut client = Client::new(
        &r,
        &opts,
        Some(Credentials {
            user: user.to_string(),
            password: password.to_string(),
        }),
    );
    client.no_default_scope = true;
    let url = format!("{}/v2/", client.origin());
    let refused = || RegistryError::LoginRefused {
        registry: registry.to_string(),
    };
    let resp = match client.request(http::Method::GET, &url, &[]) {
        Ok(r) => r,
        Err(RegistryError::Token { reason, .. }) if reason.contains("refused") => {
            return Err(refused());
        }
        Err(e) => return Err(e),
    };
    match resp.status().as_u16() {
        200 => Ok(()),
        401 | 403 => Err(refused()),
        _ => Err(client.status_error(&url, resp)),
    }
}
