//! Container networking, done by berthd itself, once, and kept up (issue 10).
//!
//! - [`types`]: typed input parsed once (`Cidr`, `NetworkMode`, `PortSpec`, `Rate`, names).
//! - [`store`]: network definitions and IPAM leases, persisted as JSON.
//! - [`netlink`]: links, addresses, routes, shaping through rtnetlink (never `ip`/`tc`).
//! - [`nft`]: berth's own nftables table `inet berth` (NAT, published ports, isolation);
//!   [`nftnl`]: the per-container element changes as one nfnetlink batch.
//! - [`dns`]: the embedded resolver on each bridge's gateway (UDP and TCP).
//! - [`files`]: the container's `/etc/hosts`, `/etc/hostname`, `/etc/resolv.conf`.
//! - [`engine`]: [`Networks`], the API berthd calls.
//!
//! # How berthd uses it (the start sequence of ARCHITECTURE.md)
//!
//! - At daemon start, in the host's network namespace, on the runtime thread:
//!   `Networks::open(NetworksConfig::new("/var/lib/berth/networks", "/run/berth/networks"))`,
//!   then `reconcile(running, existing)` with the containers that still run (and their
//!   `/proc/PID/ns/net` when known) and all defined ones. That brings every network's bridge,
//!   resolver and NAT up, keeps running containers' veths and forwards, removes the rest.
//! - Step 1 (plan): `prepare(name, &spec, user_namespace)` → [`Plan`]: leases, host ports
//!   (held by bound sockets), interface names; nothing is made. `plan.own_netns()` tells the
//!   plan whether the helper unshares a netns (`host` and `container:NAME` do not; for the
//!   latter berthd hands the helper the other container's netns to `setns` into).
//! - Step 4 (after ID maps, before releasing the helper): `attach(plan, netns_fd)` with the
//!   helper's `/proc/PID/ns/net`. Everything is made from berthd's side — veth (peer created
//!   directly inside as `eth0`), `lo` up, addresses, default routes, shaping, published ports,
//!   resolver names — so the helper has nothing to do for networking. On error everything
//!   made is undone, the plan's new lease freed, and the error returned. If the start fails
//!   between `prepare` and `attach`, `abandon(plan)`.
//! - Then berthd writes `container_files(&att, hostname)` (hosts, hostname, resolv.conf) into
//!   the container's runtime directory for the helper to bind over `/etc/…`, unless the image
//!   or a bind mount supplies them.
//! - Step 6 (the container exited, or a stop): `detach(name)`. On `rm`: `release(name)`.
//! - `berthctl port NAME`: `attachment(name).forwards`; `stats`: `stats(name)`; networks:
//!   `create_network`, `list_networks`, `inspect_network`, `remove_network`.
//!
//! The embedded resolver's tasks are spawned on the caller's tokio runtime (berthd's
//! current-thread runtime is fine); netlink sockets inside a container's namespace are made on
//! a throw-away thread (see [`netlink`]), so the runtime thread never changes namespace.

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
