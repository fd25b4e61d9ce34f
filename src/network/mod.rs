//! Container networking: bridge networks with IPAM, NAT and published ports, plus the other
//! `--network` modes. See the module docs of each part.

pub mod error;
pub mod store;
pub mod types;

pub use error::{NetError, Result};
