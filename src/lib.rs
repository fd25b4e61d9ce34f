//! berth: a container manager for systemd hosts.
//!
//! The engine (this library) is cut by concern; `berthd` ([`daemon`]), `berthctl` ([`cli`])
//! and `berth-helper` ([`helper`]) are thin entry points over it. See ARCHITECTURE.md.

pub mod cgroup;
pub mod cli;
pub mod daemon;
pub mod dbus;
pub mod helper;
pub mod image;
pub mod name;
pub mod network;
pub mod plan;
pub mod protocol;
pub mod resources;
pub mod spawn;
pub mod spec;
pub mod sys;
pub mod systemd;
