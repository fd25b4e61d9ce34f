//! berth: a container manager for systemd hosts.
//!
//! The engine (this library) is cut by concern; `berthd` ([`daemon`]), `berthctl` ([`cli`])
//! and `berth-helper` ([`helper`]) are thin entry points over it. See ARCHITECTURE.md.

pub mod boot;
pub mod caps;
pub mod cgroup;
pub mod cli;
pub mod copy;
pub mod daemon;
pub mod dbus;
pub mod helper;
pub mod image;
pub mod journal;
pub mod mount;
pub mod name;
pub mod network;
pub mod ns;
pub mod plan;
pub mod polkit;
pub mod protocol;
pub mod pty;
pub mod seccomp;
pub mod selinux;
pub mod spawn;
pub mod spec;
pub mod sys;
pub mod systemd;
#[cfg(test)]
pub(crate) mod testbus;
pub mod userns;
pub mod volume;
