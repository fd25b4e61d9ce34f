//! The systemd-unit methods (issue 11): starting a container held by its `berth@` unit, and
//! enabling a container at boot. A trait of their own beside [`super::Backend`], which
//! requires it.

use std::os::fd::OwnedFd;

use futures_util::future::BoxFuture;

use super::{Caller, Options, Result};

/// What the Manager's unit methods need from the daemon.
pub trait UnitOps: Send + Sync + 'static {
    /// `StartContainerInUnit`: validate, authorize, check that the process holding the other
    /// end of `helper_socket` is the main process of `berth@NAME.service`, then start the
    /// container in the background through that helper. Returns the helper binary for the
    /// caller to exec on its end of the socket.
    fn start_in_unit(
        &self,
        caller: Caller,
        name: String,
        helper_socket: OwnedFd,
        options: Options,
    ) -> BoxFuture<'_, Result<String>>;
    /// `EnableContainer` / `DisableContainer`: whether `berth@NAME.service` starts at boot
    /// (through machines.target). Returns what was done (empty when nothing changed).
    fn set_enabled(
        &self,
        caller: Caller,
        name: String,
        enabled: bool,
    ) -> BoxFuture<'_, Result<String>>;
}
