//! The registry client against real `docker-registry` instances on loopback, started once per
//! test run by `tests/registry/start.sh` (which pushes the images from `mkimage.py` with skopeo).
//! Missing tools fail the run: install them with `tests/deps.sh`.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use berth::image::ErrorKind;
use berth::image::digest::Digest;
use berth::image::registry::{
    BlobSink, Progress, PullOptions, Pulled, Reference, RegistryError, pull,
};
use serde_json::Value;

struct Harness {
    dir: PathBuf,
    port: u16,
    auth_port: u16,
    expected: Value,
}

/// The registries, started by the first test that needs them. A watchdog started by the
/// script stops them and removes their directory when this test process exits.
fn harness() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/registry/start.sh");
        let out = Command::new(&script)
            .arg(std::process::id().to_string())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        assert!(
            out.status.success(),
            "{} failed (install the test dependencies with tests/deps.sh):\n{}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let vars: HashMap<String, String> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let dir = PathBuf::from(&vars["DIR"]);
        let expected = serde_json::from_slice(&fs::read(dir.join("expected.json")).unwrap())
            .expect("expected.json");
        Harness {
            port: vars["PORT"].parse().unwrap(),
            auth_port: vars["AUTH_PORT"].parse().unwrap(),
            dir,
            expected,
        }
    })
}

impl Harness {
    fn reference(&self, port: u16, name: &str) -> Reference {
        format!("127.0.0.1:{port}/{name}").parse().unwrap()
    }

    fn digest(&self, image: &str, field: &str) -> Digest {
        self.expected[image][field]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    }

    fn layers(&self, image: &str) -> Vec<Digest> {
        let l = self.expected[image]["layers"].as_array().unwrap();
        l.iter()
            .map(|d| d.as_str().unwrap().parse().unwrap())
            .collect()
    }

    fn size(&self, image: &str, layer: usize) -> u64 {
        self.expected[image]["sizes"][layer].as_u64().unwrap()
    }

    /// The open registry's access log.
    fn access_log(&self) -> String {
        fs::read_to_string(self.dir.join("open.log")).unwrap()
    }
}

/// A blob directory like the store's: `blobs/<hex>` verified, `tmp/<hex>.partial` in progress.
struct DirSink {
    _tmp: tempfile::TempDir,
    root: PathBuf,
}

impl DirSink {
    fn new() -> DirSink {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        fs::create_dir_all(root.join("blobs")).unwrap();
        fs::create_dir_all(root.join("tmp")).unwrap();
        DirSink { _tmp: tmp, root }
    }

    fn partial(&self, d: &Digest) -> PathBuf {
        self.root.join("tmp").join(format!("{}.partial", d.hex()))
    }

    fn blob(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs").join(d.hex())
    }
}

impl BlobSink for DirSink {
    fn has_blob(&self, d: &Digest) -> bool {
        self.blob(d).exists()
    }

    fn begin_blob(&self, d: &Digest) -> io::Result<(File, u64)> {
        let f = OpenOptions::new()
            .append(true)
            .create(true)
            .open(self.partial(d))?;
        let len = f.metadata()?.len();
        Ok((f, len))
    }

    fn commit_blob(&self, d: &Digest, f: File) -> io::Result<()> {
        drop(f);
        let mut data = Vec::new();
        File::open(self.partial(d))?.read_to_end(&mut data)?;
        if Digest::of(&data) != *d {
            fs::remove_file(self.partial(d))?;
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "digest mismatch",
            ));
        }
        fs::rename(self.partial(d), self.blob(d))
    }

    fn put_blob(&self, data: &[u8]) -> io::Result<Digest> {
        let d = Digest::of(data);
        fs::write(self.blob(&d), data)?;
        Ok(d)
    }
}

fn insecure() -> PullOptions {
    PullOptions {
        insecure: true,
        ..PullOptions::default()
    }
}

/// Pull and collect the progress reports.
fn pull_with(
    sink: &DirSink,
    r: &Reference,
    opts: &PullOptions,
) -> (Result<Pulled, RegistryError>, Vec<Progress>) {
    let events = Mutex::new(Vec::new());
    let result = pull(sink, r, opts, &|p| events.lock().unwrap().push(p));
    (result, events.into_inner().unwrap())
}

fn layer_digests(p: &Pulled) -> Vec<Digest> {
    let l = p.manifest.layers();
    l.iter()
        .map(|l| l.digest().to_string().parse().unwrap())
        .collect()
}

/// Every blob the manifest names is in the sink, and hashes to its name.
fn assert_complete(sink: &DirSink, p: &Pulled) {
    for d in layer_digests(p).iter().chain([&p.config_digest]) {
        let data = fs::read(sink.blob(d)).unwrap_or_else(|e| panic!("blob {d}: {e}"));
        assert_eq!(Digest::of(&data), *d);
    }
    let manifest = fs::read(sink.blob(&p.manifest_digest)).unwrap();
    assert_eq!(Digest::of(&manifest), p.manifest_digest);
}

#[test]
fn shared_layers_are_fetched_once() {
    let h = harness();
    let sink = DirSink::new();
    let (a, events) = pull_with(&sink, &h.reference(h.port, "test/a:1"), &insecure());
    let a = a.unwrap();
    assert_eq!(a.manifest_digest, h.digest("a", "manifest"));
    assert_eq!(a.config_digest, h.digest("a", "config"));
    assert_eq!(a.index_digest, None);
    assert_eq!(layer_digests(&a), h.layers("a"));
    assert_eq!(a.fetched_blobs, 4, "config and three layers");
    assert_complete(&sink, &a);
    assert!(matches!(events[0], Progress::Resolved { layers: 3, .. }));
    let done = events
        .iter()
        .filter(|e| matches!(e, Progress::BlobDone { .. }));
    assert_eq!(done.count(), 4);

    let (b, events) = pull_with(&sink, &h.reference(h.port, "test/b:1"), &insecure());
    let b = b.unwrap();
    assert_eq!(layer_digests(&b), h.layers("b"));
    assert_eq!(b.fetched_blobs, 2, "only b's config and top layer are new");
    assert_eq!(
        b.fetched_bytes,
        h.size("b", 2) + fs::metadata(sink.blob(&b.config_digest)).unwrap().len()
    );
    let skipped: Vec<Digest> = events
        .iter()
        .filter_map(|e| match e {
            Progress::BlobSkipped { digest, .. } => Some(*digest),
            _ => None,
        })
        .collect();
    assert_eq!(skipped, h.layers("a")[..2]);
    assert_complete(&sink, &b);

    // Pulled again, nothing is fetched.
    let again = pull(
        &sink,
        &h.reference(h.port, "test/b:1"),
        &insecure(),
        &|_| {},
    )
    .unwrap();
    assert_eq!((again.fetched_blobs, again.fetched_bytes), (0, 0));
}

#[test]
fn pull_by_digest() {
    let h = harness();
    let sink = DirSink::new();
    let digest = h.digest("a", "manifest");
    let r = h.reference(h.port, &format!("test/a@{digest}"));
    let p = pull(&sink, &r, &insecure(), &|_| {}).unwrap();
    assert_eq!(p.manifest_digest, digest);
    assert_complete(&sink, &p);

    // A digest the repository does not have.
    let r = h.reference(h.port, &format!("test/a@{}", Digest::of(b"nothing")));
    let e = pull(&sink, &r, &insecure(), &|_| {}).unwrap_err();
    eprintln!("expected error: {e}");
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
}

#[test]
fn docker_schema2_manifests() {
    let h = harness();
    let sink = DirSink::new();
    let p = pull(
        &sink,
        &h.reference(h.port, "test/b-docker:1"),
        &insecure(),
        &|_| {},
    )
    .unwrap();
    assert_eq!(layer_digests(&p), h.layers("b"));
    assert_eq!(
        p.manifest.media_type().as_ref().unwrap().to_string(),
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    assert_complete(&sink, &p);
}

#[test]
fn index_picks_the_host_platform() {
    let h = harness();
    for repo in ["test/multi:1", "test/multi-docker:1"] {
        let sink = DirSink::new();
        let p = pull(&sink, &h.reference(h.port, repo), &insecure(), &|_| {}).unwrap();
        // The first entry is the other architecture; its top layer must not be fetched.
        assert_eq!(layer_digests(&p), h.layers("multi"), "{repo}");
        assert_eq!(p.fetched_blobs, 3, "{repo}");
        assert_complete(&sink, &p);
        if repo == "test/multi:1" {
            assert_eq!(p.index_digest, Some(h.digest("multi", "index")));
            assert_eq!(p.manifest_digest, h.digest("multi", "manifest"));
        } else {
            // skopeo rewrote the manifests as Docker ones: other digests, same layers.
            assert!(p.index_digest.is_some());
        }
    }
}

#[test]
fn basic_auth_from_auth_file() {
    let h = harness();
    let r = h.reference(h.auth_port, "test/a:1");

    let sink = DirSink::new();
    let e = pull(&sink, &r, &insecure(), &|_| {}).unwrap_err();
    eprintln!("expected error: {e}");
    assert_eq!(e.kind(), ErrorKind::Failed);
    let msg = e.to_string();
    assert!(
        msg.contains("refused access to test/a") && msg.contains("user name and password"),
        "{msg}"
    );

    let auth_dir = tempfile::tempdir().unwrap();
    let write_auth = |user_pass: &str| {
        let path = auth_dir.path().join(format!("{user_pass}.json"));
        let auth = BASE64.encode(user_pass);
        let json = format!(
            r#"{{"auths":{{"127.0.0.1:{}":{{"auth":"{auth}"}}}}}}"#,
            h.auth_port
        );
        fs::write(&path, json).unwrap();
        PullOptions {
            auth_file: Some(path),
            ..insecure()
        }
    };
    let p = pull(&sink, &r, &write_auth("berth:secret"), &|_| {}).unwrap();
    assert_eq!(p.manifest_digest, h.digest("a", "manifest"));
    assert_complete(&sink, &p);

    let e = pull(&DirSink::new(), &r, &write_auth("berth:wrong"), &|_| {}).unwrap_err();
    eprintln!("expected error: {e}");
    assert!(
        e.to_string()
            .contains("credentials from the auth file were refused"),
        "{e}"
    );

    let missing = PullOptions {
        auth_file: Some(auth_dir.path().join("none.json")),
        ..insecure()
    };
    let e = pull(&DirSink::new(), &r, &missing, &|_| {}).unwrap_err();
    eprintln!("expected error: {e}");
    assert!(e.to_string().contains("cannot read auth file"), "{e}");
}

#[test]
fn resumes_a_partial_download() {
    let h = harness();
    let layer = h.layers("big")[0];
    let size = h.size("big", 0);
    let source = h.dir.join("layout/blobs/sha256").join(layer.hex());
    let have = 5 << 20;

    let sink = DirSink::new();
    let mut partial = File::create(sink.partial(&layer)).unwrap();
    partial
        .write_all(&fs::read(&source).unwrap()[..have])
        .unwrap();
    drop(partial);
    let (p, events) = pull_with(&sink, &h.reference(h.port, "test/big:1"), &insecure());
    let p = p.unwrap();
    assert_complete(&sink, &p);
    let config_size = fs::metadata(sink.blob(&p.config_digest)).unwrap().len();
    assert_eq!(p.fetched_bytes, size - have as u64 + config_size);
    let first = events.iter().find_map(|e| match e {
        Progress::Blob { digest, done, .. } if *digest == layer => Some(*done),
        _ => None,
    });
    assert_eq!(
        first,
        Some(have as u64),
        "progress starts at the resumed offset"
    );
    let ranged = format!(
        "\"GET /v2/test/big/blobs/{layer} HTTP/1.1\" 206 {}",
        size - have as u64
    );
    assert!(
        h.access_log().contains(&ranged),
        "no Range request in the access log"
    );

    // A damaged partial file is noticed when the blob is complete, and fetched again whole.
    let sink = DirSink::new();
    fs::write(sink.partial(&layer), vec![0u8; have]).unwrap();
    let p = pull(
        &sink,
        &h.reference(h.port, "test/big:1"),
        &insecure(),
        &|_| {},
    )
    .unwrap();
    assert_complete(&sink, &p);
    assert_eq!(p.fetched_bytes, size - have as u64 + size + config_size);
}

#[test]
fn throughput() {
    let h = harness();
    let sink = DirSink::new();
    let start = Instant::now();
    let p = pull(
        &sink,
        &h.reference(h.port, "test/big:1"),
        &insecure(),
        &|_| {},
    )
    .unwrap();
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "pulled {} bytes in {:.3} s: {:.1} MiB/s ({} build, loopback)",
        p.fetched_bytes,
        secs,
        p.fetched_bytes as f64 / secs / f64::from(1 << 20),
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );
}

#[test]
fn corrupt_blob_is_refused() {
    let h = harness();
    let sink = DirSink::new();
    let e = pull(
        &sink,
        &h.reference(h.port, "test/corrupt:1"),
        &insecure(),
        &|_| {},
    )
    .unwrap_err();
    eprintln!("expected error: {e}");
    assert!(matches!(e, RegistryError::DigestMismatch { .. }), "{e}");
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    let bad = h.layers("corrupt")[1];
    assert!(e.to_string().contains(&bad.to_string()), "{e}");
    assert!(!sink.has_blob(&bad));
    // Nothing of the bad content is kept to be resumed.
    assert_eq!(
        fs::metadata(sink.partial(&bad))
            .map(|m| m.len())
            .unwrap_or(0),
        0
    );
}

#[test]
fn unknown_tag_is_not_found() {
    let h = harness();
    let e = pull(
        &DirSink::new(),
        &h.reference(h.port, "test/a:nope"),
        &insecure(),
        &|_| {},
    )
    .unwrap_err();
    eprintln!("expected error: {e}");
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    let msg = e.to_string();
    assert!(
        msg.starts_with(&format!(
            "registry 127.0.0.1:{} has no manifest for test/a:nope",
            h.port
        )),
        "{msg}"
    );
    let e = pull(
        &DirSink::new(),
        &h.reference(h.port, "test/none:1"),
        &insecure(),
        &|_| {},
    )
    .unwrap_err();
    eprintln!("expected error: {e}");
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
}

#[test]
fn plain_http_needs_insecure() {
    let h = harness();
    let e = pull(
        &DirSink::new(),
        &h.reference(h.port, "test/a:1"),
        &PullOptions::default(),
        &|_| {},
    )
    .unwrap_err();
    eprintln!("expected error: {e}");
    assert_eq!(e.kind(), ErrorKind::Failed);
    let msg = e.to_string();
    assert!(
        msg.contains("https://127.0.0.1:") && msg.contains("marked insecure"),
        "{msg}"
    );
}

/// A minimal registry serving image `a` from the harness's OCI layout as `test/a:1`, which,
/// like Docker Hub, wants a bearer token from its own token service. docker-registry's token
/// mode needs a signing PKI, which this stands in for. Records "path authorization" per request.
fn token_registry(layout: PathBuf, manifest: Digest) -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let log = Arc::new(Mutex::new(Vec::new()));
    let log2 = log.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let (layout, log) = (layout.clone(), log2.clone());
            std::thread::spawn(move || serve_token_registry(stream, port, &layout, manifest, &log));
        }
    });
    (port, log)
}

fn serve_token_registry(
    mut stream: TcpStream,
    port: u16,
    layout: &Path,
    manifest: Digest,
    log: &Mutex<Vec<String>>,
) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let path = line.split(' ').nth(1).unwrap_or("").to_string();
    let mut auth = String::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':')
            && k.eq_ignore_ascii_case("authorization")
        {
            auth = v.trim().to_string();
        }
    }
    log.lock().unwrap().push(format!("{path} {auth}"));
    let blob = |d: &Digest| fs::read(layout.join("blobs/sha256").join(d.hex())).ok();
    let mut extra = String::new();
    let (status, body) = if path.starts_with("/token?") {
        (200, Some(br#"{"token":"t0k3n","expires_in":300}"#.to_vec()))
    } else if auth != "Bearer t0k3n" {
        extra = format!(
            "WWW-Authenticate: Bearer realm=\"http://127.0.0.1:{port}/token\",service=\"fake\",scope=\"repository:test/a:pull\"\r\n"
        );
        (401, Some(b"{}".to_vec()))
    } else if path == "/v2/test/a/manifests/1" {
        extra = "Content-Type: application/vnd.oci.image.manifest.v1+json\r\n".to_string();
        (200, blob(&manifest))
    } else if let Some(d) = path.strip_prefix("/v2/test/a/blobs/") {
        (200, d.parse().ok().and_then(|d| blob(&d)))
    } else {
        (404, None)
    };
    let (status, body) = match body {
        Some(b) => (status, b),
        None => (404, b"{}".to_vec()),
    };
    let _ = write!(
        stream,
        "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n",
        body.len()
    );
    let _ = stream.write_all(&body);
}

#[test]
fn bearer_token_from_the_token_service() {
    let h = harness();
    let (port, log) = token_registry(h.dir.join("layout"), h.digest("a", "manifest"));
    let sink = DirSink::new();
    let p = pull(&sink, &h.reference(port, "test/a:1"), &insecure(), &|_| {}).unwrap();
    assert_eq!(layer_digests(&p), h.layers("a"));
    assert_complete(&sink, &p);
    let log = log.lock().unwrap();
    let tokens: Vec<&String> = log.iter().filter(|l| l.starts_with("/token?")).collect();
    assert_eq!(tokens.len(), 1, "one token for the whole pull: {log:#?}");
    // Anonymous: no credentials were given, so none are sent to the token service.
    assert!(tokens[0].ends_with(' '), "{}", tokens[0]);
    assert!(
        tokens[0].contains("service=fake") && tokens[0].contains("test%2Fa"),
        "{}",
        tokens[0]
    );
    let unauthorized = log
        .iter()
        .filter(|l| !l.starts_with("/token?") && !l.ends_with("Bearer t0k3n"));
    assert_eq!(
        unauthorized.count(),
        1,
        "only the first request goes without the token: {log:#?}"
    );
}

// ---- push, login, save/load against docker-registry, skopeo and podman ----

use berth::image::auth::{remove_credentials, store_credentials};
use berth::image::ops::{pull_image, push_image};
use berth::image::push::check_login;
use berth::image::{SaveFormat, Store, load, save};

fn store() -> (tempfile::TempDir, Store) {
    let t = tempfile::tempdir().unwrap();
    let s = Store::open(&t.path().join("store")).unwrap();
    (t, s)
}

/// `PUT …/blobs/uploads/…` lines in the open registry's access log for `repo` (blob uploads).
fn blob_uploads(h: &Harness, repo: &str) -> usize {
    h.access_log()
        .lines()
        .filter(|l| l.contains(&format!("\"PUT /v2/{repo}/blobs/uploads/")))
        .count()
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// podman with its own storage in `dir` (never the machine's), no systemd, no network.
fn podman(dir: &Path) -> Command {
    let mut c = Command::new("podman");
    c.arg("--root")
        .arg(dir.join("root"))
        .arg("--runroot")
        .arg(dir.join("run"))
        .args([
            "--storage-driver",
            "vfs",
            "--cgroup-manager",
            "cgroupfs",
            "--events-backend",
            "file",
        ])
        .env("XDG_RUNTIME_DIR", dir.join("xdg"))
        .env("CONTAINERS_REGISTRIES_CONF", dir.join("registries.conf"));
    fs::create_dir_all(dir.join("xdg")).unwrap();
    fs::write(
        dir.join("registries.conf"),
        "unqualified-search-registries = []\n",
    )
    .unwrap();
    c
}

fn skopeo_digest(h: &Harness, port: u16, repo: &str, creds: Option<&str>) -> String {
    let mut c = Command::new("skopeo");
    c.args(["inspect", "--raw", "--tls-verify=false"]);
    if let Some(cr) = creds {
        c.arg("--creds").arg(cr);
    }
    c.arg(format!("docker://127.0.0.1:{port}/{repo}"));
    let raw = run(&mut c);
    let _ = h;
    Digest::of(raw.as_bytes()).to_string()
}

#[test]
fn push_sends_only_missing_blobs_and_mounts_across_repositories() {
    let h = harness();
    let (_t, s) = store();
    let src = format!("127.0.0.1:{}/test/a:1", h.port);
    let p = pull_image(&s, &src, None, &insecure(), &|_| {}, &|_| {}).unwrap();
    assert_eq!(p.tag.as_deref(), Some(src.as_str()));
    assert!(!p.unchanged());
    // Pulled again: the tag already points there and no blob is fetched.
    let again = pull_image(&s, &src, None, &insecure(), &|_| {}, &|_| {}).unwrap();
    assert!(again.unchanged(), "{:?}", again.pulled);

    // To another repository of the same registry: every blob is mounted from test/a.
    let dest = format!("127.0.0.1:{}/pushed/mounted:1", h.port);
    let (_, pushed) = push_image(&s, &src, Some(&dest), &insecure(), &|_| {}).unwrap();
    assert_eq!(pushed.manifest_digest, h.digest("a", "manifest"));
    assert_eq!(
        (pushed.mounted_blobs, pushed.uploaded_blobs),
        (4, 0),
        "{pushed:?}"
    );
    assert_eq!(blob_uploads(h, "pushed/mounted"), 0);
    assert!(
        h.access_log().contains("mount=sha256:"),
        "no mount request in the access log"
    );
    assert_eq!(
        skopeo_digest(h, h.port, "pushed/mounted:1", None),
        h.digest("a", "manifest").to_string()
    );

    // An image the registry has never seen: every blob uploaded once, and not again.
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("hello"), b"hello from berth").unwrap();
    berth::image::import_fs(&s, dir.path(), "local-app").unwrap();
    let dest = format!("127.0.0.1:{}/pushed/local:1", h.port);
    let events = Mutex::new(Vec::new());
    let (_, first) = push_image(&s, "local-app", Some(&dest), &insecure(), &|e| {
        events.lock().unwrap().push(e)
    })
    .unwrap();
    assert_eq!(
        (first.uploaded_blobs, first.existing_blobs),
        (2, 0),
        "{first:?}"
    );
    assert_eq!(blob_uploads(h, "pushed/local"), 2);
    assert!(
        events
            .lock()
            .unwrap()
            .iter()
            .any(|e| matches!(e, berth::image::push::PushProgress::BlobDone { .. }))
    );
    let (_, second) = push_image(&s, "local-app", Some(&dest), &insecure(), &|_| {}).unwrap();
    assert_eq!(
        (second.uploaded_blobs, second.existing_blobs),
        (0, 2),
        "{second:?}"
    );
    assert_eq!(
        blob_uploads(h, "pushed/local"),
        2,
        "the second push sent no blob"
    );

    // Pulled back by berth into another store, and by skopeo.
    let (_t2, s2) = store();
    let back = pull_image(&s2, &dest, None, &insecure(), &|_| {}, &|_| {}).unwrap();
    assert_eq!(back.created.record.id(), s.get("local-app").unwrap().id());
    let oci = dir.path().join("oci");
    run(Command::new("skopeo")
        .args(["copy", "-q", "--src-tls-verify=false"])
        .arg(format!("docker://{dest}"))
        .arg(format!("oci:{}:x", oci.display())));
    assert!(oci.join("index.json").exists());

    // Bad input: a bad reference, an unknown image, and a name from before tags without a
    // destination, are typed errors.
    assert_eq!(
        push_image(&s, "local-app", Some("Bad Ref"), &insecure(), &|_| {})
            .unwrap_err()
            .kind(),
        ErrorKind::InvalidInput
    );
    assert_eq!(
        push_image(&s, "nope", None, &insecure(), &|_| {})
            .unwrap_err()
            .kind(),
        ErrorKind::NotFound
    );
}

#[test]
fn a_moved_tag_is_seen_by_berth_and_podman() {
    let h = harness();
    let (t, s) = store();
    let tag = format!("127.0.0.1:{}/test/moving:1", h.port);
    // v1 is image a, v2 image b: pushed by berth under one tag in turn.
    pull_image(
        &s,
        &format!("127.0.0.1:{}/test/a:1", h.port),
        Some("v1"),
        &insecure(),
        &|_| {},
        &|_| {},
    )
    .unwrap();
    pull_image(
        &s,
        &format!("127.0.0.1:{}/test/b:1", h.port),
        Some("v2"),
        &insecure(),
        &|_| {},
        &|_| {},
    )
    .unwrap();
    push_image(&s, "v1", Some(&tag), &insecure(), &|_| {}).unwrap();
    let (_t2, local) = store();
    let first = pull_image(&local, &tag, None, &insecure(), &|_| {}, &|_| {}).unwrap();
    let old = first.created.record.id();
    push_image(&s, "v2", Some(&tag), &insecure(), &|_| {}).unwrap();
    let second = pull_image(&local, &tag, None, &insecure(), &|_| {}, &|_| {}).unwrap();
    assert_eq!(second.created.previous, Some(old));
    assert_eq!(local.get(&tag).unwrap().id(), s.get("v2").unwrap().id());
    // The old image stays, dangling; prune removes it.
    let dangling: Vec<_> = local.list().into_iter().filter(|r| r.dangling()).collect();
    assert_eq!(dangling.len(), 1);
    assert_eq!(dangling[0].id(), old);
    assert_eq!(local.prune(false, &|_| false).unwrap().images, [old]);
    // podman sees what the tag points at now.
    let pm = t.path().join("podman");
    run(podman(&pm).args(["pull", "-q", "--tls-verify=false", &tag]));
    let digest = run(podman(&pm).args(["image", "inspect", "--format", "{{.Digest}}", &tag]));
    assert_eq!(digest.trim(), h.digest("b", "manifest").to_string());
}

#[test]
fn login_checks_the_password_and_push_uses_the_auth_file() {
    let h = harness();
    let reg = format!("127.0.0.1:{}", h.auth_port);
    check_login(&reg, "berth", "secret", true).unwrap();
    let e = check_login(&reg, "berth", "wrong", true).unwrap_err();
    eprintln!("expected error: {e}");
    assert!(matches!(e, RegistryError::LoginRefused { .. }), "{e}");
    assert!(
        e.to_string().contains("refused the user name or password"),
        "{e}"
    );
    // The open registry needs no credentials: any login passes, as with docker.
    check_login(&format!("127.0.0.1:{}", h.port), "x", "y", true).unwrap();

    let (t, s) = store();
    let auth = t.path().join("auth.json");
    store_credentials(&auth, &reg, "berth", "secret").unwrap();
    let opts = PullOptions {
        auth_file: Some(auth.clone()),
        ..insecure()
    };
    pull_image(
        &s,
        &format!("{reg}/test/a:1"),
        Some("a"),
        &opts,
        &|_| {},
        &|_| {},
    )
    .unwrap();
    let dest = format!("{reg}/authed/a:1");
    let e = push_image(&s, "a", Some(&dest), &insecure(), &|_| {}).unwrap_err();
    eprintln!("expected error: {e}");
    assert_eq!(e.kind(), ErrorKind::Failed);
    push_image(&s, "a", Some(&dest), &opts, &|_| {}).unwrap();
    assert_eq!(
        skopeo_digest(h, h.auth_port, "authed/a:1", Some("berth:secret")),
        h.digest("a", "manifest").to_string()
    );
    remove_credentials(&auth, &reg).unwrap();
    let e = push_image(&s, "a", Some(&dest), &opts, &|_| {}).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Failed, "{e}");
}

#[test]
fn saved_archives_are_read_by_podman_and_podman_archives_by_berth() {
    let h = harness();
    let (t, s) = store();
    pull_image(
        &s,
        &format!("127.0.0.1:{}/test/a:1", h.port),
        Some("web:1"),
        &insecure(),
        &|_| {},
        &|_| {},
    )
    .unwrap();
    pull_image(
        &s,
        &format!("127.0.0.1:{}/test/b:1", h.port),
        Some("registry:5000/team/app:1.2"),
        &insecure(),
        &|_| {},
        &|_| {},
    )
    .unwrap();
    let names = vec![
        "web:1".to_string(),
        "registry:5000/team/app:1.2".to_string(),
    ];
    let pm = t.path().join("podman");
    // docker-archive: both images in one file.
    let docker = t.path().join("docker.tar");
    save(
        &s,
        &names,
        SaveFormat::DockerArchive,
        File::create(&docker).unwrap(),
        &|_, _| {},
    )
    .unwrap();
    run(podman(&pm).args(["load", "-q", "-i"]).arg(&docker));
    let listed = run(podman(&pm).args(["images", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}"]));
    let id = |n: &str| s.get(n).unwrap().id().hex()[..12].to_string();
    // podman names an unqualified `web:1` `localhost/web:1`; berth reads that back as `web:1`.
    assert!(
        listed.contains(&format!("localhost/web:1 {}", id("web:1"))),
        "{listed}"
    );
    assert!(
        listed.contains(&format!(
            "registry:5000/team/app:1.2 {}",
            id("registry:5000/team/app:1.2")
        )),
        "{listed}"
    );
    // oci-archive (podman reads one image from one).
    let oci = t.path().join("oci.tar");
    save(
        &s,
        &names[..1],
        SaveFormat::OciArchive,
        File::create(&oci).unwrap(),
        &|_, _| {},
    )
    .unwrap();
    let pm2 = t.path().join("podman2");
    run(podman(&pm2).args(["load", "-q", "-i"]).arg(&oci));
    let listed = run(podman(&pm2).args(["images", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}"]));
    assert!(listed.contains(&id("web:1")), "{listed}");
    // podman save --multi-image-archive, read back by berth: all, or one by --name.
    let multi = t.path().join("multi.tar");
    run(podman(&pm)
        .args(["save", "-q", "--multi-image-archive", "-o"])
        .arg(&multi)
        .args(["web:1", "registry:5000/team/app:1.2"]));
    let (_t2, s2) = store();
    let loaded = load(&s2, &multi, None, &|_| {}).unwrap();
    assert_eq!(loaded.len(), 2);
    assert_eq!(s2.get("web:1").unwrap().id(), s.get("web:1").unwrap().id());
    assert_eq!(
        s2.get("registry:5000/team/app:1.2").unwrap().layers,
        s.get("registry:5000/team/app:1.2").unwrap().layers
    );
    let (_t3, s3) = store();
    load(&s3, &multi, Some("registry:5000/team/app:1.2"), &|_| {}).unwrap();
    assert_eq!(s3.list().len(), 1);
    assert!(s3.get("web:1").is_err());
}
