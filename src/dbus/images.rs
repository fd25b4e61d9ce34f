//! The image operations that came with tags: push, save, load, prune, login, logout. A trait
//! of their own beside [`super::Backend`], which requires it.

use futures_util::future::BoxFuture;
use zbus::OwnedObjectPath;

use super::{Caller, Options, Result};

/// What the Manager's image-transfer methods need from the daemon. Like every mutating
/// method, each gets its caller: check the arguments, authorize, act.
pub trait ImageOps: Send + Sync + 'static {
    /// Push image `name` to `reference` (empty: the registry its tag names); returns the
    /// manifest digest pushed.
    fn push_image(
        &self,
        caller: Caller,
        name: String,
        reference: String,
        options: Options,
    ) -> BoxFuture<'_, Result<String>>;
    fn save_images(
        &self,
        caller: Caller,
        names: Vec<String>,
        format: String,
        fd: std::os::fd::OwnedFd,
        options: Options,
    ) -> BoxFuture<'_, Result<()>>;
    fn load_images(
        &self,
        caller: Caller,
        path: String,
        options: Options,
    ) -> BoxFuture<'_, Result<Vec<(String, OwnedObjectPath)>>>;
    fn prune_images(
        &self,
        caller: Caller,
        options: Options,
    ) -> BoxFuture<'_, Result<(Vec<String>, u64)>>;
    fn login(
        &self,
        caller: Caller,
        registry: String,
        user: String,
        password: String,
        options: Options,
    ) -> BoxFuture<'_, Result<()>>;
    fn logout(
        &self,
        caller: Caller,
        registry: String,
        options: Options,
    ) -> BoxFuture<'_, Result<()>>;
}
