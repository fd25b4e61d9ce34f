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
//! - `images/<name>.json`: one record per image name (layers bottom first, config, digests);
//! - `tmp/`: work in progress, removed when the store opens. Nothing becomes visible under its
//!   final name until it is complete (rename is the commit).

pub mod archive;
pub mod compress;
pub mod digest;
pub mod export;
pub mod extract;
pub mod registry;
pub mod store;
#[cfg(test)]
mod testtar;

pub use archive::{ImportError, import_fs, import_oci, import_tar};
pub use digest::Digest;
pub use export::{ExportError, export_dir, export_image, export_layers};
pub use extract::{LayerStats, Limits, apply_layer};
pub use store::{
    ImageConfig, ImageKind, ImageRecord, ImageSource, ImportProgress, PartialBlob, Store,
    StoreError,
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
