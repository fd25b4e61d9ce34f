//! Layers: a layer blob extracted once into layers/, named by its diff_id, with its size in a
//! sidecar.

use super::*;

impl Store {
    // ---- layers ----

    pub(super) fn layer_dir(&self, diff_id: &Digest) -> PathBuf {
        self.root.join("layers").join(diff_id.hex())
    }

    pub(super) fn layer_sidecar(&self, diff_id: &Digest) -> PathBuf {
        self.root
            .join("layers")
            .join(format!("{}.json", diff_id.hex()))
    }

    pub(super) fn layer_size(&self, diff_id: &Digest) -> Option<u64> {
        if !self.layer_dir(diff_id).is_dir() {
            return None;
        }
        let data = fs::read(self.layer_sidecar(diff_id)).ok()?;
        let s: LayerSidecar = serde_json::from_slice(&data).ok()?;
        (s.diff_id == *diff_id).then_some(s.size)
    }

    /// Extract the layer blob into `layers/`, unless a layer with the expected diff_id is
    /// there already. Returns the diff_id, size and whether it was reused. With no expected
    /// diff_id the blob is always extracted (in tmp/) and named by what it turns out to be.
    pub(crate) fn ensure_layer(
        &self,
        blob: &Digest,
        expected: Option<&Digest>,
    ) -> Result<(Digest, u64, bool), StoreError> {
        if let Some(want) = expected
            && let Some(size) = self.layer_size(want)
        {
            return Ok((*want, size, true));
        }
        // Verify the compressed blob first; reading it also warms the page cache for the
        // extraction pass.
        let path = self.blob_path(blob);
        let open = || -> Result<File, StoreError> {
            File::open(&path).map_err(|e| {
                if e.kind() == io::ErrorKind::NotFound {
                    StoreError::MissingBlob(*blob)
                } else {
                    io_err(format!("opening blob {blob}"))(e)
                }
            })
        };
        let mut h = Hasher::default();
        let mut f = open()?;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = f
                .read(&mut buf)
                .map_err(io_err(format!("reading blob {blob}")))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        let actual = h.finish();
        if actual != *blob {
            return Err(StoreError::DigestMismatch {
                expected: *blob,
                actual,
            });
        }

        let tmp = self.tmp_path("layer");
        fs::DirBuilder::new()
            .mode(0o755)
            .create(&tmp)
            .map_err(io_err("creating a layer directory"))?;
        let r = self.extract_into(open()?, blob, expected, &tmp);
        if r.is_err() {
            discard_dir(&tmp);
        }
        r
    }

    pub(super) fn extract_into(
        &self,
        file: File,
        blob: &Digest,
        expected: Option<&Digest>,
        tmp: &Path,
    ) -> Result<(Digest, u64, bool), StoreError> {
        let reader = compress::decompress(file).map_err(|e| StoreError::Layer {
            blob: *blob,
            source: ExtractError::Read(io::Error::other(e)),
        })?;
        let stats = extract::apply_layer(reader, tmp, &self.limits).map_err(|source| {
            StoreError::Layer {
                blob: *blob,
                source,
            }
        })?;
        if let Some(want) = expected
            && *want != stats.diff_id
        {
            return Err(StoreError::Invalid(format!(
                "layer blob {blob} has diff_id {}, the image config says {want}",
                stats.diff_id
            )));
        }
        let diff_id = stats.diff_id;
        if let Some(size) = self.layer_size(&diff_id) {
            discard_dir(tmp);
            return Ok((diff_id, size, true));
        }
        // Data must be on disk before the name is (a crash must not leave a named layer with
        // empty files); syncfs covers the whole tree in one call.
        let fd = File::open(tmp).map_err(io_err("syncing a layer"))?;
        nix::unistd::syncfs(&fd).map_err(|e| io_err("syncing a layer")(e.into()))?;
        // The sidecar goes first: a sidecar without its directory is harmless (collected),
        // a directory without its sidecar is re-extracted.
        let side = serde_json::to_vec(&LayerSidecar {
            diff_id,
            size: stats.size,
        })
        .expect("serializing a sidecar");
        let side_tmp = self.tmp_path("sidecar");
        let written = fs::write(&side_tmp, side)
            .and_then(|()| fs::rename(&side_tmp, self.layer_sidecar(&diff_id)));
        if written.is_err() {
            discard(&side_tmp);
        }
        written.map_err(io_err("writing a layer sidecar"))?;
        match rename_noreplace(tmp, &self.layer_dir(&diff_id)) {
            Ok(()) => Ok((diff_id, stats.size, false)),
            // Someone else extracted the same layer meanwhile; theirs is as good as ours.
            Err(Errno::EEXIST) | Err(Errno::ENOTEMPTY) => {
                discard_dir(tmp);
                Ok((diff_id, stats.size, true))
            }
            Err(e) => Err(io_err("naming a layer")(e.into())),
        }
    }
}

#[derive(Serialize, Deserialize)]
pub(super) struct LayerSidecar {
    pub(super) diff_id: Digest,
    pub(super) size: u64,
}
