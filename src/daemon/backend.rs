//! The bus side of the registry: [`dbus::Backend`] for [`Registry`]. Option dictionaries are
//! decoded here (strictly), callers are authorized here, and every flow's typed error becomes
//! its bus error here.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;

use futures_util::future::BoxFuture;
use zbus::OwnedObjectPath;

use super::error::Error;
use super::store;
use super::table::Registry;
use crate::dbus::{self, Action, Caller, ContainerInfo, Options, Result};
use crate::image;
use crate::polkit;
use crate::spec::definition::Security;
use crate::spec::network::NetworkSettings;
use crate::spec::{Definition, Resources};

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
    "UserNamespace",
    "CapAdd",
    "CapDrop",
    "NoNewPrivileges",
    "Ulimits",
    "SecurityOpt",
    "Labels",
    "Network",
    "Publish",
    "PublishAll",
    "IPAddress",
    "IPv6Address",
    "NetworkInterfaces",
    "HostNetworkUserNamespace",
    "NotifyReady",
    "Restart",
    "HealthCmd",
    "HealthInterval",
    "HealthTimeout",
    "HealthRetries",
    "HealthStartPeriod",
    "HealthOnFailure",
    "Volumes",
    "Mounts",
    "Tmpfs",
    "ReadOnly",
    "Ephemeral",
    "Boot",
    "LogDriver",
];

/// The stored definition a CreateContainer call asks for (checked by `spec::validate` next).
pub(super) fn definition(name: String, options: Options) -> Result<Definition> {
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
    let labels: BTreeMap<String, String> = o
        .take::<std::collections::HashMap<String, String>>("Labels")?
        .unwrap_or_default()
        .into_iter()
        .collect();
    Ok(Definition {
        name,
        labels,
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
        security: Security {
            userns: o.take("UserNamespace")?,
            cap_add: o.take("CapAdd")?.unwrap_or_default(),
            cap_drop: o.take("CapDrop")?.unwrap_or_default(),
            no_new_privileges: o.take("NoNewPrivileges")?.unwrap_or(false),
            ulimits: o.take("Ulimits")?.unwrap_or_default(),
            security_opt: o.take("SecurityOpt")?.unwrap_or_default(),
        },
        image_id: None,
        network: NetworkSettings {
            mode: o.take("Network")?,
            publish: o.take("Publish")?.unwrap_or_default(),
            publish_all: o.take("PublishAll")?.unwrap_or(false),
            ip: o.take("IPAddress")?,
            ip6: o.take("IPv6Address")?,
            interfaces: o.take("NetworkInterfaces")?.unwrap_or_default(),
            host_userns: o.take("HostNetworkUserNamespace")?.unwrap_or(false),
        },
        lifecycle: crate::spec::lifecycle::Lifecycle {
            notify_ready: o.take("NotifyReady")?.unwrap_or(false),
            restart: o.take("Restart")?,
            health_cmd: o.take("HealthCmd")?,
            health_interval: o.take("HealthInterval")?,
            health_timeout: o.take("HealthTimeout")?,
            health_retries: o.take("HealthRetries")?,
            health_start_period: o.take("HealthStartPeriod")?,
            health_on_failure: o.take("HealthOnFailure")?,
        },
        volumes: o.take("Volumes")?.unwrap_or_default(),
        mounts: o.take("Mounts")?.unwrap_or_default(),
        tmpfs: o.take("Tmpfs")?.unwrap_or_default(),
        read_only: o.take("ReadOnly")?.unwrap_or(false),
        ephemeral: o.take("Ephemeral")?.unwrap_or(false),
        boot_init: o.take("Boot")?.unwrap_or(false),
        log_driver: o.take("LogDriver")?,
        created_at: store::now_usec(),
        declared: false,
    })
}

impl Registry {
    /// Is there a container of that name (a broken one too: the flow then says what it may
    /// do with it)?
    pub(super) fn known(&self, name: &str) -> Result<()> {
        if self.entries.lock().unwrap().contains_key(name)
            || self.broken.lock().unwrap().contains_key(name)
        {
            Ok(())
        } else {
            Err(dbus::Error::NoSuchContainer(format!(
                "no container named {name:?}"
            )))
        }
    }
}

fn bus<T>(r: std::result::Result<T, Error>) -> Result<T> {
    r.map_err(Into::into)
}

impl dbus::Backend for Registry {
    fn admit(&self, sender: String) -> BoxFuture<'_, Result<dbus::Permit>> {
        Box::pin(async move {
            use polkit::Authority;
            let permit = self.admission.admit(&sender)?;
            let uid = self
                .authorizer
                .caller_uid(&sender)
                .await
                .map_err(|e| dbus::Error::PermissionDenied(format!("who is calling: {e}")))?;
            permit.for_uid(uid)
        })
    }
    fn answer(&self, sender: String) -> BoxFuture<'_, Option<dbus::admission::Answer>> {
        Box::pin(async move {
            use polkit::Authority;
            let uid = self.authorizer.caller_uid(&sender).await.ok();
            self.admission.answer(uid)
        })
    }
    fn caller_is_root(&self, sender: String) -> BoxFuture<'_, bool> {
        Box::pin(async move {
            use polkit::Authority;
            self.authorizer.caller_uid(&sender).await == Ok(0)
        })
    }
    fn create(
        &self,
        caller: Caller,
        name: String,
        options: Options,
    ) -> BoxFuture<'_, Result<OwnedObjectPath>> {
        Box::pin(async move {
            let def = definition(name.clone(), options)?;
            let spec = crate::spec::validate(&def, &self.host)
                .map_err(|e| dbus::Error::from(Error::from(e)))?;
            self.authorize(
                &caller,
                Action::ManageContainers,
                "create",
                ("container", &name),
            )
            .await?;
            bus(self.create(spec).await)
        })
    }
    fn start(&self, caller: Caller, name: String, options: Options) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let (stdio, extras) = super::bus_work::start_options(&caller, options, false)?;
            self.known(&name)?;
            self.authorize(
                &caller,
                Action::ManageContainers,
                "start",
                ("container", &name),
            )
            .await?;
            self.user_started(&name).await;
            bus(self.start_with(name, stdio, extras).await).map(drop)
        })
    }
    fn stop(&self, caller: Caller, name: String, timeout_usec: u64) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.known(&name)?;
            self.authorize(
                &caller,
                Action::ManageContainers,
                "stop",
                ("container", &name),
            )
            .await?;
            self.user_stopped(&name).await;
            bus(self.stop(name, timeout_usec).await)
        })
    }
    fn kill(
        &self,
        caller: Caller,
        name: String,
        whom: String,
        signal: i32,
    ) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.known(&name)?;
            if !matches!(whom.as_str(), "leader" | "" | "all") {
                return Err(dbus::Error::InvalidArgument(format!(
                    "whom must be \"leader\" or \"all\", not {whom:?}"
                )));
            }
            // systemd's SIGRTMIN+n requests too (berthctl poweroff).
            if nix::sys::signal::Signal::try_from(signal).is_err()
                && !crate::sys::rtsig::is_realtime(signal)
            {
                return Err(dbus::Error::InvalidArgument(format!(
                    "invalid signal number {signal}"
                )));
            }
            self.authorize(
                &caller,
                Action::ManageContainers,
                "kill",
                ("container", &name),
            )
            .await?;
            bus(self.kill(name, whom, signal).await)
        })
    }
    fn remove(&self, caller: Caller, name: String, force: bool) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.known(&name)?;
            self.authorize(
                &caller,
                Action::ManageContainers,
                "remove",
                ("container", &name),
            )
            .await?;
            bus(self.remove(name, force).await)
        })
    }
    fn wait(&self, name: String) -> BoxFuture<'_, Result<i32>> {
        Box::pin(async move { bus(self.wait(name).await) })
    }
    fn set_resources(
        &self,
        caller: Caller,
        name: String,
        assignments: Vec<(String, String)>,
        runtime: bool,
    ) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.known(&name)?;
            if assignments.is_empty() {
                return Err(dbus::Error::InvalidArgument("nothing to set".into()));
            }
            self.authorize(
                &caller,
                Action::ManageContainers,
                "set",
                ("container", &name),
            )
            .await?;
            bus(self.set_resources(name, assignments, runtime).await)
        })
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
    fn image_id(&self, name: &str) -> Option<String> {
        self.images.get(name).ok().map(|r| r.id().to_string())
    }
    fn life(&self, name: &str) -> Option<dbus::LifeInfo> {
        self.life_info(name)
    }
    fn import_image(
        &self,
        caller: Caller,
        format: String,
        source: String,
        name: String,
        options: Options,
    ) -> BoxFuture<'_, Result<OwnedObjectPath>> {
        Box::pin(async move {
            options.check(&[])?;
            image::TagName::parse(&name).map_err(|e| {
                dbus::Error::InvalidArgument(format!("invalid image name {name:?}: {e}"))
            })?;
            self.authorize(&caller, Action::ManageImages, "import", ("image", &name))
                .await?;
            Registry::import_image(self, format, source, name).await
        })
    }
    fn pull_image(
        &self,
        caller: Caller,
        reference: String,
        name: String,
        options: Options,
    ) -> BoxFuture<'_, Result<OwnedObjectPath>> {
        Box::pin(async move {
            let mut o = options.check(&["Insecure", "AuthFile"])?;
            let opts = super::images::registry_options(&mut o, true)?;
            self.authorize(&caller, Action::ManageImages, "pull", ("image", &reference))
                .await?;
            Registry::pull_image(self, reference, name, opts).await
        })
    }
    fn remove_image(&self, caller: Caller, name: String, force: bool) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.authorize(&caller, Action::ManageImages, "remove", ("image", &name))
                .await?;
            Registry::remove_image(self, name, force).await
        })
    }
    fn copy_image(
        &self,
        caller: Caller,
        op: &'static str,
        name: String,
        new_name: String,
    ) -> BoxFuture<'_, Result<OwnedObjectPath>> {
        Box::pin(async move {
            self.authorize(&caller, Action::ManageImages, op, ("image", &name))
                .await?;
            Registry::copy_image(self, op, name, new_name).await
        })
    }
    fn export_tar(
        &self,
        caller: Caller,
        what: &'static str,
        name: String,
        fd: OwnedFd,
    ) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let action = if what == "image" {
                Action::ManageImages
            } else {
                Action::ManageContainers
            };
            self.authorize(&caller, action, "export", (what, &name))
                .await?;
            Registry::export_tar(self, what, name, fd).await
        })
    }
    fn list(&self) -> Vec<ContainerInfo> {
        Registry::list(self)
    }
    fn list_body(&self, redact: bool) -> zbus::Result<Vec<u8>> {
        Ok(Registry::list_body(self, redact))
    }
    fn info(&self, name: &str) -> Option<ContainerInfo> {
        Registry::info(self, name)
    }
    fn create_network(
        &self,
        caller: Caller,
        name: String,
        options: Options,
    ) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let (net, req) = network_request(&name, options)?;
            self.authorize(
                &caller,
                Action::ManageContainers,
                "network-create",
                ("network", &name),
            )
            .await?;
            bus(Registry::create_network(self, &net, &req).await)
        })
    }
    fn remove_network(&self, caller: Caller, name: String) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let net = network_name(&name)?;
            self.authorize(
                &caller,
                Action::ManageContainers,
                "network-remove",
                ("network", &name),
            )
            .await?;
            bus(Registry::remove_network(self, &net).await)
        })
    }
    fn list_networks(&self) -> BoxFuture<'_, Result<Vec<dbus::NetworkInfo>>> {
        Box::pin(async move { bus(Registry::list_networks(self).await) })
    }
    fn network_info(&self, name: String) -> BoxFuture<'_, Result<dbus::NetworkInfo>> {
        Box::pin(async move {
            let net = network_name(&name)?;
            bus(Registry::network_info(self, &net).await)
        })
    }
    fn start_terminal(
        &self,
        caller: Caller,
        name: String,
        options: Options,
    ) -> BoxFuture<'_, Result<OwnedFd>> {
        Box::pin(self.bus_start_terminal(caller, name, options))
    }
    fn exec(
        &self,
        caller: Caller,
        name: String,
        options: Options,
    ) -> BoxFuture<'_, Result<dbus::ExecStarted>> {
        Box::pin(self.bus_exec(caller, name, options))
    }
    fn wait_exec(&self, name: String, id: String) -> BoxFuture<'_, Result<i32>> {
        Box::pin(self.bus_wait_exec(name, id))
    }
    fn follow_logs(
        &self,
        caller: Caller,
        name: String,
    ) -> BoxFuture<'_, Result<(std::os::fd::OwnedFd, u64)>> {
        Box::pin(async move { bus(Registry::follow_logs(self, caller, name).await) })
    }
    fn kill_exec(
        &self,
        caller: Caller,
        name: String,
        id: String,
        signal: i32,
    ) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.bus_kill_exec(caller, name, id, signal))
    }
    fn copy(
        &self,
        caller: Caller,
        into: bool,
        name: String,
        path: String,
        stream: OwnedFd,
        options: Options,
    ) -> BoxFuture<'_, Result<dbus::CopyCounts>> {
        Box::pin(self.bus_copy(caller, into, name, path, stream, options))
    }
    fn bind(
        &self,
        caller: Caller,
        name: String,
        source: OwnedFd,
        path: String,
        options: Options,
    ) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.bus_bind(caller, name, source, path, options))
    }
    fn create_volume(
        &self,
        caller: Caller,
        name: String,
        options: Options,
    ) -> BoxFuture<'_, Result<String>> {
        Box::pin(self.bus_create_volume(caller, name, options))
    }
    fn list_volumes(&self) -> Result<Vec<dbus::VolumeInfo>> {
        self.bus_list_volumes()
    }
    fn remove_volume(&self, caller: Caller, name: String) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.bus_remove_volume(caller, name))
    }
}

/// Options of CreateNetwork.
const NETWORK_OPTIONS: &[&str] = &["Subnet", "IPv6", "Subnet6", "Internal"];

fn network_name(name: &str) -> Result<crate::network::NetName> {
    name.parse()
        .map_err(|e: crate::network::NetError| dbus::Error::InvalidArgument(e.to_string()))
}

/// What a CreateNetwork call asks for, parsed.
fn network_request(
    name: &str,
    options: Options,
) -> Result<(crate::network::NetName, crate::network::CreateRequest)> {
    let mut o = options.check(NETWORK_OPTIONS)?;
    let cidr = |s: Option<String>| -> Result<Option<crate::network::Cidr>> {
        s.map(|s| {
            s.parse()
                .map_err(|e: crate::network::NetError| dbus::Error::InvalidArgument(e.to_string()))
        })
        .transpose()
    };
    let subnet4 = cidr(o.take("Subnet")?)?;
    let subnet6 = cidr(o.take("Subnet6")?)?;
    if subnet4.is_some_and(|c| !c.is_ipv4()) || subnet6.is_some_and(|c| c.is_ipv4()) {
        return Err(dbus::Error::InvalidArgument(
            "Subnet is an IPv4 CIDR and Subnet6 an IPv6 one".into(),
        ));
    }
    let req = crate::network::CreateRequest {
        subnet4,
        ipv6: o.take("IPv6")?.unwrap_or(false) || subnet6.is_some(),
        subnet6,
        internal: o.take("Internal")?.unwrap_or(false),
    };
    Ok((network_name(name)?, req))
}
