//! The bus side of the newer flows: [`dbus::ImageOps`] (push, save, load, prune, login,
//! logout) and [`dbus::ContainerOps`] (rename, pause, processes, plan, reload, disk usage)
//! for [`Registry`]. As in `backend.rs`: options decoded strictly, then validate → authorize
//! → act.

use std::collections::HashMap;
use std::os::fd::OwnedFd;

use futures_util::future::BoxFuture;
use zbus::OwnedObjectPath;

use super::backend::definition;
use super::images::registry_options;
use super::table::Registry;
use crate::dbus::{self, Action, Caller, Options, ProcessInfo, ReloadResult, Result};

fn bus<T>(r: std::result::Result<T, super::error::Error>) -> Result<T> {
    r.map_err(Into::into)
}

impl dbus::ImageOps for Registry {
    fn push_image(
        &self,
        caller: Caller,
        name: String,
        reference: String,
        options: Options,
    ) -> BoxFuture<'_, Result<String>> {
        Box::pin(async move {
            let mut o = options.check(&["Insecure", "AuthFile"])?;
            let opts = registry_options(&mut o, true)?;
            if self.image_info(&name).is_none() {
                return Err(dbus::Error::NoSuchImage(format!("no image named {name:?}")));
            }
            self.authorize(&caller, Action::ManageImages, "push", ("image", &name))
                .await?;
            Registry::push_image(self, name, reference, opts).await
        })
    }
    fn save_images(
        &self,
        caller: Caller,
        names: Vec<String>,
        format: String,
        fd: OwnedFd,
        options: Options,
    ) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            options.check(&[])?;
            let format = self.check_save(&names, &format)?;
            self.authorize(
                &caller,
                Action::ManageImages,
                "save",
                ("image", &names.join(" ")),
            )
            .await?;
            Registry::save_images(self, names, format, fd).await
        })
    }
    fn load_images(
        &self,
        caller: Caller,
        path: String,
        options: Options,
    ) -> BoxFuture<'_, Result<Vec<(String, OwnedObjectPath)>>> {
        Box::pin(async move {
            let mut o = options.check(&["Name"])?;
            let wanted = o.take::<String>("Name")?;
            if !path.starts_with('/') {
                return Err(dbus::Error::InvalidArgument(format!(
                    "{path:?} is not an absolute path"
                )));
            }
            self.authorize(&caller, Action::ManageImages, "load", ("image", &path))
                .await?;
            Registry::load_images(self, path, wanted).await
        })
    }
    fn prune_images(
        &self,
        caller: Caller,
        options: Options,
    ) -> BoxFuture<'_, Result<(Vec<String>, u64)>> {
        Box::pin(async move {
            let mut o = options.check(&["All"])?;
            let all = o.take::<bool>("All")?.unwrap_or(false);
            self.authorize(&caller, Action::ManageImages, "prune", ("image", ""))
                .await?;
            Registry::prune_images(self, all).await
        })
    }
    fn login(
        &self,
        caller: Caller,
        registry: String,
        user: String,
        password: String,
        options: Options,
    ) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let mut o = options.check(&["Insecure", "AuthFile"])?;
            let opts = registry_options(&mut o, false)?;
            crate::image::auth::registry_key(&registry)
                .map_err(|e| dbus::Error::InvalidArgument(e.to_string()))?;
            if user.is_empty() || password.is_empty() {
                return Err(dbus::Error::InvalidArgument(
                    "a user name and a password are needed".into(),
                ));
            }
            self.authorize(
                &caller,
                Action::ManageImages,
                "login",
                ("registry", &registry),
            )
            .await?;
            Registry::login(self, registry, user, password, opts).await
        })
    }
    fn logout(
        &self,
        caller: Caller,
        registry: String,
        options: Options,
    ) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let mut o = options.check(&["AuthFile"])?;
            let auth_file = o.take::<String>("AuthFile")?;
            self.authorize(
                &caller,
                Action::ManageImages,
                "logout",
                ("registry", &registry),
            )
            .await?;
            Registry::logout(self, registry, auth_file).await
        })
    }
}

impl dbus::ContainerOps for Registry {
    fn rename(
        &self,
        caller: Caller,
        name: String,
        new_name: String,
    ) -> BoxFuture<'_, Result<OwnedObjectPath>> {
        Box::pin(async move {
            self.known(&name)?;
            crate::name::validate(&new_name).map_err(|e| {
                dbus::Error::InvalidArgument(format!("invalid container name {new_name:?}: {e}"))
            })?;
            self.authorize(
                &caller,
                Action::ManageContainers,
                "rename",
                ("container", &name),
            )
            .await?;
            bus(Registry::rename(self, name, new_name).await)
        })
    }
    fn freeze(&self, caller: Caller, name: String, freeze: bool) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.known(&name)?;
            let verb = if freeze { "pause" } else { "unpause" };
            self.authorize(
                &caller,
                Action::ManageContainers,
                verb,
                ("container", &name),
            )
            .await?;
            bus(Registry::freeze(self, name, freeze).await)
        })
    }
    fn processes(&self, name: String) -> BoxFuture<'_, Result<Vec<ProcessInfo>>> {
        Box::pin(async move { bus(Registry::processes(self, name).await) })
    }
    fn plan(
        &self,
        caller: Caller,
        name: String,
        options: Options,
    ) -> BoxFuture<'_, Result<String>> {
        Box::pin(async move {
            let def = definition(name.clone(), options)?;
            let spec = crate::spec::validate(&def, &self.host)
                .map_err(|e| dbus::Error::from(super::error::Error::from(e)))?;
            self.authorize(
                &caller,
                Action::ManageContainers,
                "plan",
                ("container", &name),
            )
            .await?;
            bus(self.plan_json(&spec))
        })
    }
    fn reload(&self, caller: Caller) -> BoxFuture<'_, Result<Vec<ReloadResult>>> {
        Box::pin(async move {
            self.authorize(
                &caller,
                Action::ManageContainers,
                "reload",
                ("container", ""),
            )
            .await?;
            bus(self
                .reload_from(std::path::Path::new(crate::spec::declared::DIR))
                .await)
        })
    }
    fn disk_usage(&self) -> BoxFuture<'_, Result<HashMap<String, u64>>> {
        Box::pin(async move { bus(self.disk_usage_map().await) })
    }
}
