//! The image store: content-addressed blobs and extracted layers under /var/lib/berth, shared
//! between images; imports from directories, rootfs tarballs, docker-save archives and OCI
//! layouts; and a client for OCI distribution registries.
//!
//! On disk (all below the store root, normally `/var/lib/berth`, mode 0700):
//! - `blobs/sha256/<hex>`: blobs as imported or downloaded (compressed layers, manifests,
//!   configs), verified against their digest before they get that name;
//! - `layers/<diff-id hex>/`: one extracted layer each, keyed by its uncompressed digest, ready
//!   to be an overlayfs lower (whiteouts as 0:0 character devices, opaque directories with the
//!   `trusted.overlay.opaque` xattr); immutable once named; beside each, `<diff-id hex>.json`
//!   with its diff_id and uncompressed size;
//! - `images/<id hex>.json`: one record per image, keyed by its ID (the config digest): layers
//!   bottom first, config, digests, the repositories it came from;
//! - `tags.json`: every tag (`registry/repository:tag`, see [`reference`]) and the image ID it
//!   points at, with its read-only flag. Several tags may name one image; an image no tag
//!   names is *dangling* (kept while a container uses it, removed by [`Store::prune`]).
//!   Stores made before tags (`images/<name>.json` per name) are migrated when opened;
//! - `tmp/`: work in progress, removed when the store opens. Nothing becomes visible under its
//!   final name until it is complete (rename is the commit).

pub mod archive;
pub mod auth;
pub mod compress;
pub mod digest;
pub mod export;
pub mod extract;
pub mod ops;
pub mod push;
pub mod reference;
pub mod registry;
pub mod save;
pub mod store;
#[cfg(test)]
mod testtar;
pub mod usage;

pub use archive::{
    ImportError, Loaded, import_fs, import_fs_with, import_oci, import_oci_with, import_tar,
    import_tar_with, load,
};
pub use digest::Digest;
pub use export::{ExportError, export_dir, export_image, export_layers};
pub use extract::{LayerStats, Limits, apply_layer};
pub use reference::{ImageRef, ReferenceError, TagName};
pub use save::{SaveError, SaveFormat, save};
pub use store::{
    Created, DiskUsage, Healthcheck, ImageConfig, ImageKind, ImageRecord, ImageSource,
    ImportProgress, PartialBlob, PruneReport, Removed, Store, StoreError, TagMode,
};

/// How a failure should be reported to a caller; each module's error type maps onto this.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The input (archive, manifest, digest, name, reference) is malformed or hostile.
    InvalidInput,
    /// The named image, blob or registry object does not exist.
    NotFound,
    /// The name is already taken.
    AlreadyExists,
    /// The image is in use by a container.
    Busy,
    /// Anything else: I/O, network, the kernel.
    Failed,
}
