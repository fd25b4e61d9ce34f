//! The container verbs that came with the podman-shaped CLI: rename, pause and unpause,
//! processes, a dry-run plan, declarative definitions (reload) and disk usage. A trait of
//! their own beside [`super::Backend`], which requires it.

use std::collections::HashMap;

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use zbus::{OwnedObjectPath, Type};

use super::{Caller, Options, Result};

/// One process of a container, as `ListProcesses` returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct ProcessInfo {
    /// The PID on the host, and inside the container's PID namespace (0: not visible there).
    pub host_pid: u32,
    pub pid: u32,
    /// The real uid on the host, and inside the container's user namespace.
    pub host_uid: u32,
    pub uid: u32,
    /// The user's name in the container's /etc/passwd (empty when it has none).
    pub user: String,
    pub command: String,
}

/// What one declarative definition became on `Reload`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct ReloadResult {
    pub name: String,
    /// created | updated | unchanged | failed | kept (changed but running: applied at its
    /// next start is not possible, so it is left as it was; stop it and reload)
    pub action: String,
    /// Why it failed, or what was done (`enabled berth@NAME.service`).
    pub message: String,
}

/// What the Manager's newer container methods need from the daemon.
pub trait ContainerOps: Send + Sync + 'static {
    fn rename(
        &self,
        caller: Caller,
        name: String,
        new_name: String,
    ) -> BoxFuture<'_, Result<OwnedObjectPath>>;
    /// `freeze`: pause (true) or unpause (false).
    fn freeze(&self, caller: Caller, name: String, freeze: bool) -> BoxFuture<'_, Result<()>>;
    fn processes(&self, name: String) -> BoxFuture<'_, Result<Vec<ProcessInfo>>>;
    /// Validate a definition (CreateContainer's options) and build its plan as JSON, making
    /// nothing.
    fn plan(&self, caller: Caller, name: String, options: Options)
    -> BoxFuture<'_, Result<String>>;
    /// Read /etc/berth/containers/*.toml and create or update what they define.
    fn reload(&self, caller: Caller) -> BoxFuture<'_, Result<Vec<ReloadResult>>>;
    /// Sizes of the image store and the containers' writable layers (`system df`).
    fn disk_usage(&self) -> BoxFuture<'_, Result<HashMap<String, u64>>>;
}
