//! The store-level flows of `pull` and `push`: the registry client ([`super::registry`],
//! [`super::push`]) plus what they mean for tags. The daemon runs these on its blocking
//! pool; tests run them directly.

use super::ErrorKind;
use super::push::{PushProgress, Pushed, push};
use super::reference::TagName;
use super::registry::{Progress, PullOptions, Pulled, Reference, RegistryError, pull};
use super::store::{Created, ImageKind, ImportProgress, Store, StoreError, TagMode};

#[derive(Debug, thiserror::Error)]
pub enum OpError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "{0} is not a reference a registry knows it by (a name from before tags); give the destination"
    )]
    NoDestination(String),
}

impl OpError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            OpError::Registry(e) => e.kind(),
            OpError::Store(e) => e.kind(),
            OpError::NoDestination(_) => ErrorKind::InvalidInput,
        }
    }
}

/// What [`pull_image`] did.
#[derive(Debug, Clone)]
pub struct PullOutcome {
    pub created: Created,
    pub pulled: Pulled,
    /// The local tag (familiar form), or None for a pull by digest without a name.
    pub tag: Option<String>,
}

impl PullOutcome {
    /// The tag pointed at this image already and nothing was downloaded.
    pub fn unchanged(&self) -> bool {
        self.created.unchanged && self.pulled.fetched_blobs == 0
    }
}

/// Pull `reference` and point the local tag at what it names now: `name` when given, else
/// the reference itself (`alpine:3.20` → `docker.io/library/alpine:3.20`, shown `alpine:3.20`);
/// a pull by digest without a name leaves the image untagged (found by `repo@digest`). A tag
/// that exists is moved; the image it named stays (dangling, unless another tag names it or
/// a container uses it). Blobs already stored are not downloaded, so pulling an unchanged tag
/// fetches only the manifest.
pub fn pull_image(
    store: &Store,
    reference: &str,
    name: Option<&str>,
    opts: &PullOptions,
    progress: &(dyn Fn(Progress) + Sync),
    extract: &dyn Fn(ImportProgress),
) -> Result<PullOutcome, OpError> {
    let r: Reference = reference.parse()?;
    let tag = match name {
        Some(n) => Some(TagName::parse(n).map_err(StoreError::Reference)?),
        None if r.digest.is_some() => None,
        None => Some(TagName::of(&r)),
    };
    let pulled = pull(store, &r, opts, progress)?;
    let source = format!("{}/{}", r.registry, r.repository);
    let created = store.create_tagged(
        tag.as_ref().map(TagName::key),
        &pulled.manifest_digest,
        ImageKind::Registry,
        TagMode::Move,
        Some(&source),
        extract,
    )?;
    Ok(PullOutcome {
        created,
        pulled,
        tag: tag.map(|t| t.display()),
    })
}

/// Push image `name` to `dest` (default: the registry and repository its tag names, e.g.
/// `registry:5000/team/app:1.2`). Blobs the registry has are not sent; the image's other
/// repositories on that registry are offered for cross-repository mounts. The destination is
/// remembered as one of the image's sources.
pub fn push_image(
    store: &Store,
    name: &str,
    dest: Option<&str>,
    opts: &PullOptions,
    progress: &(dyn Fn(PushProgress) + Sync),
) -> Result<(Reference, Pushed), OpError> {
    let (tag, _) = store.resolve(name)?;
    let rec = store.get(name)?;
    let dest: Reference = match dest {
        Some(d) => d.parse()?,
        None => tag
            .and_then(|t| t.reference())
            .ok_or_else(|| OpError::NoDestination(name.to_string()))?,
    };
    let pushed = push(store, &rec.digest, &dest, &rec.sources, opts, progress)?;
    store.add_source(&rec.id(), &format!("{}/{}", dest.registry, dest.repository))?;
    Ok((dest, pushed))
}
