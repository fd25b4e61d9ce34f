//! Container networking, done by berthd itself, once, and kept up (issue 10).
//!
//! - [`types`]: typed input parsed once (`Cidr`, `NetworkMode`, `PortSpec`, `Rate`, names).
//! - [`store`]: network definitions and IPAM leases, persisted as JSON.
//! - [`netlink`]: links, addresses, routes, shaping through rtnetlink.
//! - [`nft`]: berth's own nftables table `inet berth` (NAT, published ports, isolation);
//!   [`nftnl`]: the per-container element changes as one nfnetlink batch.
//! - [`dns`]: the embedded resolver on each bridge's gateway.
//! - [`files`]: the container's `/etc/hosts`, `/etc/hostname`, `/etc/resolv.conf`.
//! - [`engine`]: [`Networks`], the API berthd calls: `prepare` → `attach` → `detach` →
//!   `release`, and `reconcile` at start.

pub mod dns;
pub mod engine;
pub mod error;
pub mod files;
pub mod netlink;
pub mod nft;
pub mod nftnl;
pub mod store;
pub mod types;

pub use engine::{
    Attachment, NetworkInfo, Networks, NetworksConfig, Plan, ReconcileReport, Running,
};
pub use error::{NetError, Result};
pub use nft::Forward;
pub use store::{CreateRequest, Lease, NetworkDef};
pub use types::{Cidr, IfName, NetName, NetSpec, NetworkMode, PortSpec, Proto, Rate};
