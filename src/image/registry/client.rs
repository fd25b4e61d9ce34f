//! The HTTP side of a pull or push: one client per repository, its requests, authentication round
//! trips (tokens, challenges), manifests and resumable blob downloads.

use super::*;

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
pub(super) struct FetchedManifest {
    pub(super) body: Vec<u8>,
    pub(super) content_type: Option<String>,
    /// `Docker-Content-Digest`, which registries send as their idea of the digest.
    pub(super) header_digest: Option<String>,
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

    pub(super) fn connect_error(&self, url: &str, e: ureq::Error) -> RegistryError {
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
    pub(super) fn get(
        &self,
        url: &str,
        headers: &[(&str, String)],
    ) -> Result<Response<Body>, RegistryError> {
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
    pub(super) fn answer(
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
    pub(super) fn token(
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

    pub(super) fn fetch_manifest(
        &self,
        wanted: &str,
        what: &str,
    ) -> Result<FetchedManifest, RegistryError> {
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
    pub(super) fn fetch_blob(
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
    pub(super) fn fetch_blob_once(
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
pub(super) fn content_range_start(resp: &Response<Body>) -> Option<u64> {
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
