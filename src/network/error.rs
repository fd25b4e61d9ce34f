//! The one error type of the networking engine.

use std::io;
use std::net::IpAddr;
use std::path::PathBuf;

use thiserror::Error;

use super::types::{Cidr, Proto};

/// Everything that can go wrong in `network`: bad input (typed, with the offending value), a
/// conflict with state (taken address, taken port, full subnet), or a system call that failed
/// (netlink, nft, files) with what it was doing.
#[derive(Debug, Error)]
pub enum NetError {
    // ---- bad input ----
    #[error("invalid CIDR {0:?}: expected ADDRESS/PREFIX, e.g. 10.89.0.0/24 or fd00:1::/64")]
    BadCidr(String),
    #[error("CIDR {given} has host bits set; the network is {network}")]
    CidrHostBits { given: String, network: Cidr },
    #[error("subnet {0} is too small: at least 4 addresses (a /30 or a /126) are needed")]
    SubnetTooSmall(Cidr),
    #[error(
        "invalid network mode {0:?}: expected bridge, none, host, container:NAME, veth, macvlan:IFACE or a network name"
    )]
    BadMode(String),
    #[error("invalid port mapping {spec:?}: {why}")]
    BadPort { spec: String, why: String },
    #[error("port {0} is out of range: ports are 1 to 65535")]
    PortOutOfRange(String),
    #[error("invalid rate {0:?}: expected a number with a tc unit, e.g. 1mbit, 500kbit, 2mbps")]
    BadRate(String),
    #[error("invalid IP address {0:?}")]
    BadAddress(String),
    #[error(
        "invalid network name {0:?}: 1 to 32 characters from [A-Za-z0-9._-], starting with a letter or a digit"
    )]
    BadNetworkName(String),
    #[error("invalid interface name {0:?}: 1 to 15 bytes, no '/', ':' or whitespace")]
    BadInterfaceName(String),
    #[error("invalid container name {0:?}")]
    BadContainerName(String),
    #[error(
        "--network host with a user namespace is refused: the container's root would act on the host's network; ask for it explicitly"
    )]
    HostWithUserns,
    #[error("{0}")]
    Unsupported(String),
    #[error("too many published ports ({0}); at most {max} per container", max = super::types::MAX_PORTS)]
    TooManyPorts(usize),

    // ---- conflicts with state ----
    #[error("network {0:?} already exists")]
    NetworkExists(String),
    #[error("no such network {0:?}")]
    NoSuchNetwork(String),
    #[error("network {0:?} has a damaged definition ({path}): repair or remove that file", path = .1.display())]
    DamagedNetwork(String, PathBuf),
    #[error("network {0:?} is in use by {1} container(s)")]
    NetworkInUse(String, usize),
    #[error("the default network cannot be removed")]
    DefaultNetwork,
    #[error("subnet {0} overlaps network {1:?} ({2})")]
    SubnetOverlapsNetwork(Cidr, String, Cidr),
    #[error("subnet {0} overlaps the host route {1}")]
    SubnetOverlapsRoute(Cidr, Cidr),
    #[error(
        "no free subnet left in berth's pool (10.89.0.0/16 in /24s) that avoids the host's routes"
    )]
    NoFreeSubnet,
    #[error("subnet {0} of network {1:?} is full")]
    SubnetFull(Cidr, String),
    #[error("address {0} is not in subnet {1} of network {2:?}")]
    AddressNotInSubnet(IpAddr, Cidr, String),
    #[error("address {0} is reserved (network, gateway or broadcast address)")]
    AddressReserved(IpAddr),
    #[error("address {0} on network {1:?} is already taken by container {2:?}")]
    AddressTaken(IpAddr, String, String),
    #[error("network {0:?} has no IPv6 subnet, so --ip6 cannot be honoured")]
    NoIpv6(String),
    #[error("host port {port}/{proto} is already published by container {container:?}")]
    PortTakenByContainer {
        port: u16,
        proto: Proto,
        container: String,
    },
    #[error("host port {port}/{proto} is already in use on the host ({addr})")]
    PortTakenByHost {
        port: u16,
        proto: Proto,
        addr: IpAddr,
    },
    #[error("no free host port left for container port {0}/{1}")]
    NoFreePort(u16, Proto),
    #[error("{0} is not an address of this host, so nothing can be published on it")]
    HostAddressNotLocal(IpAddr),
    #[error("no such interface {0:?} on the host")]
    NoSuchInterface(String),
    #[error("container {0:?} is already attached")]
    AlreadyAttached(String),
    #[error("host interface name {0:?} is already used by container {1:?}")]
    InterfaceNameTaken(String, String),

    // ---- system ----
    #[error("netlink: {op}: {source}")]
    Netlink {
        op: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("netlink: {op}: {source}")]
    NetlinkIo {
        op: String,
        #[source]
        source: io::Error,
    },
    #[error("entering the container's network namespace: {0}")]
    Setns(#[source] nix::Error),
    #[error("nftables: {op}: {}", std::io::Error::from_raw_os_error(*errno))]
    NftBatch { op: &'static str, errno: i32 },
    #[error("nft: {op}: {detail}")]
    Nft { op: String, detail: String },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("state file {path} is corrupt: {source}")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{0}; cleaning up also failed: {1}")]
    Cleanup(Box<NetError>, Box<NetError>),
}

impl NetError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        NetError::Io {
            op,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn netlink(op: impl Into<String>, source: rtnetlink::Error) -> Self {
        NetError::Netlink {
            op: op.into(),
            source,
        }
    }

    /// The kernel's errno behind a netlink failure, if that is what this is.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetError::Netlink {
                source: rtnetlink::Error::NetlinkError(msg),
                ..
            } => msg.code.map(|c| -c.get()),
            NetError::NftBatch { errno, .. } => Some(*errno),
            _ => None,
        }
    }

    /// True for errors caused by what the caller asked (bad input or a conflict), as opposed to
    /// a failure of the system: berthd maps these to InvalidArgument / AlreadyExists.
    pub fn is_user_error(&self) -> bool {
        !matches!(
            self,
            NetError::Netlink { .. }
                | NetError::NetlinkIo { .. }
                | NetError::Setns(_)
                | NetError::Nft { .. }
                | NetError::NftBatch { .. }
                | NetError::Io { .. }
                | NetError::Corrupt { .. }
                | NetError::DamagedNetwork(..)
                | NetError::Cleanup(..)
        )
    }
}

pub type Result<T, E = NetError> = std::result::Result<T, E>;
