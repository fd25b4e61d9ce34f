//! Manifests as registries serve them: index or image, the platform picked from an index,
//! descriptor digests.

use super::*;

/// Whether a manifest body is an index or a single-image manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ManifestKind {
    Index,
    Image,
}

/// Decide what a manifest body is from its `mediaType` field, falling back to the
/// `Content-Type` header, then to its shape (the OCI spec lets `mediaType` be absent).
pub(super) fn classify_manifest(
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
pub(super) fn host_platform() -> (&'static str, &'static str, Option<&'static str>) {
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
pub(super) fn select_platform<'a>(
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
pub(super) fn descriptor_digest(d: &Descriptor, what: &str) -> Result<Digest, RegistryError> {
    d.digest()
        .to_string()
        .parse()
        .map_err(|e| RegistryError::BadManifest {
            what: what.to_string(),
            reason: format!("{e}"),
        })
}
