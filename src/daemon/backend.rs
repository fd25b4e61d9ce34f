//! The bus side of the registry: [`dbus::Backend`] for [`Registry`]. Option dictionaries are
//! decoded here (strictly), callers are authorized here, and every flow's typed error becomes
//! its bus error here.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;

use futures_util::future::BoxFuture;
use zbus::OwnedObjectPath;

use super::error::Error;
use super::start::Stdio;
use super::store;
use super::table::Registry;
use crate::dbus::{self, Action, Caller, ContainerInfo, Options, Result};
use crate::image;
use crate::spec::{Definition, Resources};

/// How many callers' uids are remembered.
const MAX_CALLERS: usize = 4096;

/// Options of CreateContainer.
const CREATE_OPTIONS: &[&str] = &[
    "Image",
    "Directory",
    "Command",
    "Hostname",
    "AutoRemove",
    "Entrypoint",
    "Environment",
    "WorkingDirectory",
    "User",
    "Resources",
    "Properties",
];

/// Options of StartContainer.
const START_OPTIONS: &[&str] = &["StandardInput", "StandardOutput", "StandardError"];

/// The stored definition a CreateContainer call asks for (checked by `spec::validate` next).
fn definition(name: String, options: Options) -> Result<Definition> {
    let mut o = options.check(CREATE_OPTIONS)?;
    let mut resources = Resources::default();
    for (k, v) in o
        .take::<Vec<(String, String)>>("Resources")?
        .unwrap_or_default()
    {
        resources
            .set(&k, &v)
            .map_err(|e| dbus::Error::InvalidArgument(e.to_string()))?;
    }
    let properties: BTreeMap<String, String> = o
        .take::<std::collections::HashMap<String, String>>("Properties")?
        .unwrap_or_default()
        .into_iter()
        .collect();
    Ok(Definition {
        name,
        image: o.take("Image")?,
        directory: o.take::<String>("Directory")?.map(Into::into),
        command: o.take("Command")?.unwrap_or_default(),
        entrypoint: o.take("Entrypoint")?,
        env: o.take("Environment")?.unwrap_or_default(),
        workdir: o.take("WorkingDirectory")?,
        user: o.take("User")?,
        hostname: o.take("Hostname")?,
        auto_remove: o.take("AutoRemove")?.unwrap_or(false),
        resources,
        properties,
        created_at: store::now_usec(),
    })
}

fn stdio(options: Options) -> Result<Stdio> {
    let mut o = options.check(START_OPTIONS)?;
    let mut fds: [Option<OwnedFd>; 3] = [None, None, None];
    for (slot, key) in START_OPTIONS.iter().enumerate() {
        if let Some(fd) = o.take::<zbus::Fd<'static>>(key)? {
            fds[slot] = Some(zbus::OwnedFd::from(fd).into());
        }
    }
    Ok(Stdio(fds))
}

impl Registry {
    /// Only root may change anything (the bus policy says so too; this is berthd's own check
    /// on the caller's credentials from the bus). A caller's uid is asked once: unique names
    /// are never reused while the bus runs.
    async fn authorize_caller(&self, caller: Caller, _action: Action) -> Result<()> {
        let uid = self.caller_uid(&caller.sender).await?;
        if uid == 0 {
            Ok(())
        } else {
            Err(dbus::Error::PermissionDenied(format!(
                "uid {uid} may not change containers or images: only root may"
            )))
        }
    }
}

impl Registry {
    /// The uid of a caller, asked of the bus once per connection.
    async fn caller_uid(&self, sender: &str) -> Result<u32> {
        if let Some(uid) = self.callers.lock().unwrap().get(sender).copied() {
            return Ok(uid);
        }
        let name = zbus::names::BusName::try_from(sender)
            .map_err(|_| dbus::Error::PermissionDenied("the caller is unknown".into()))?;
        let uid = zbus::fdo::DBusProxy::new(&self.conn)
            .await?
            .get_connection_unix_user(name)
            .await
            .map_err(|e| dbus::Error::PermissionDenied(format!("who is calling: {e}")))?;
        let mut callers = self.callers.lock().unwrap();
        if callers.len() >= MAX_CALLERS {
            callers.clear();
        }
        callers.insert(sender.to_string(), uid);
        Ok(uid)
    }

    /// Follow callers leaving the bus: their waiting calls end, their uid is forgotten.
    pub async fn watch_callers(&self) {
        let proxy = match zbus::fdo::DBusProxy::new(&self.conn).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!("cannot watch callers leaving the bus: {e}, ignoring");
                return;
            }
        };
        let mut left = match proxy.receive_name_owner_changed().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("cannot watch callers leaving the bus: {e}, ignoring");
                return;
            }
        };
        let me = self.me.clone();
        tokio::spawn(async move {
            use futures_util::StreamExt;
            while let Some(sig) = left.next().await {
                let Ok(args) = sig.args() else { continue };
                if args.new_owner.is_some() || !args.name.starts_with(':') {
                    continue;
                }
                let Some(me) = me.upgrade() else { return };
                me.admission.left(args.name.as_str());
                me.callers.lock().unwrap().remove(args.name.as_str());
            }
        });
    }
}

fn bus<T>(r: std::result::Result<T, Error>) -> Result<T> {
    r.map_err(Into::into)
}

impl dbus::Backend for Registry {
    fn admit(&self, sender: String) -> BoxFuture<'_, Result<dbus::Permit>> {
        Box::pin(async move {
            let permit = self.admission.admit(&sender)?;
            let uid = self.caller_uid(&sender).await?;
            permit.for_uid(uid)
        })
    }
    fn authorize(&self, caller: Caller, action: Action) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.authorize_caller(caller, action))
    }
    fn create(&self, name: String, options: Options) -> BoxFuture<'_, Result<OwnedObjectPath>> {
        Box::pin(async move { bus(self.create(definition(name, options)?).await) })
    }
    fn start(&self, name: String, options: Options) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move { bus(self.start(name, stdio(options)?).await) })
    }
    fn stop(&self, name: String, timeout_usec: u64) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move { bus(self.stop(name, timeout_usec).await) })
    }
    fn kill(&self, name: String, whom: String, signal: i32) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move { bus(self.kill(name, whom, signal).await) })
    }
    fn remove(&self, name: String, force: bool) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move { bus(self.remove(name, force).await) })
    }
    fn wait(&self, name: String) -> BoxFuture<'_, Result<i32>> {
        Box::pin(async move { bus(self.wait(name).await) })
    }
    fn set_resources(
        &self,
        name: String,
        assignments: Vec<(String, String)>,
        runtime: bool,
    ) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move { bus(self.set_resources(name, assignments, runtime).await) })
    }
    fn stats(&self, names: Vec<String>) -> BoxFuture<'_, Result<Vec<dbus::StatsInfo>>> {
        Box::pin(async move { bus(Registry::stats(self, names).await) })
    }
    fn watch_stats(&self, subscriber: String, interval_usec: u64) -> Result<()> {
        bus(Registry::watch_stats(self, subscriber, interval_usec))
    }
    fn unwatch_stats(&self, subscriber: &str) {
        Registry::unwatch_stats(self, subscriber)
    }
    fn list_images(&self) -> Vec<dbus::ImageInfo> {
        Registry::list_images(self)
    }
    fn image_info(&self, name: &str) -> Option<dbus::ImageInfo> {
        Registry::image_info(self, name)
    }
    fn image_config(&self, name: &str) -> Option<image::ImageConfig> {
        Registry::image_config(self, name)
    }
    fn import_image(
        &self,
        format: String,
        source: String,
        name: String,
        options: Options,
    ) -> BoxFuture<'_, Result<OwnedObjectPath>> {
        Box::pin(async move {
            options.check(&[])?;
            Registry::import_image(self, format, source, name).await
        })
    }
    fn pull_image(
        &self,
        reference: String,
        name: String,
        options: Options,
    ) -> BoxFuture<'_, Result<OwnedObjectPath>> {
        Box::pin(async move {
            let mut o = options.check(&["Insecure", "AuthFile"])?;
            let insecure = o.take::<bool>("Insecure")?.unwrap_or(false);
            let auth_file = o.take::<String>("AuthFile")?;
            Registry::pull_image(self, reference, name, insecure, auth_file).await
        })
    }
    fn remove_image(&self, name: String, force: bool) -> BoxFuture<'_, Result<()>> {
        Box::pin(Registry::remove_image(self, name, force))
    }
    fn copy_image(
        &self,
        op: &'static str,
        name: String,
        new_name: String,
    ) -> BoxFuture<'_, Result<OwnedObjectPath>> {
        Box::pin(Registry::copy_image(self, op, name, new_name))
    }
    fn export_tar(
        &self,
        what: &'static str,
        name: String,
        fd: OwnedFd,
    ) -> BoxFuture<'_, Result<()>> {
        Box::pin(Registry::export_tar(self, what, name, fd))
    }
    fn list(&self) -> Vec<ContainerInfo> {
        Registry::list(self)
    }
    fn info(&self, name: &str) -> Option<ContainerInfo> {
        Registry::info(self, name)
    }
}
