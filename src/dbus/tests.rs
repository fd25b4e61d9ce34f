//! The bus surface without root: every Manager, Container and Image method, error name and
//! signal, served over a private dbus-daemon with a fake [`Backend`].

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use zbus::{OwnedObjectPath, OwnedVariant};

use super::*;

use crate::testbus::{Bus, bus};

/// Records every call; refuses what the test asks it to.
#[derive(Default)]
struct Fake {
    calls: Mutex<Vec<String>>,
    /// Deny every authorization.
    deny: Mutex<bool>,
    callers: Mutex<Vec<Caller>>,
    conn: Mutex<Option<zbus::Connection>>,
    /// Calls in flight, as berthd counts them; every caller is this uid.
    admission: Arc<admission::Admission>,
    uid: Mutex<u32>,
    /// How long `list` takes (to hold calls in flight).
    list_delay: Mutex<Duration>,
}

fn cpath(name: &str) -> OwnedObjectPath {
    OwnedObjectPath::try_from(crate::name::container_path(name)).unwrap()
}

fn ipath(name: &str) -> OwnedObjectPath {
    OwnedObjectPath::try_from(crate::name::image_path(name)).unwrap()
}

/// The error a fake method returns for a name: `e-<Variant>` asks for that error.
fn wanted(name: &str) -> Result<()> {
    match name.strip_prefix("e-") {
        None => Ok(()),
        Some("NoSuchContainer") => Err(Error::NoSuchContainer("m".into())),
        Some("NoSuchImage") => Err(Error::NoSuchImage("m".into())),
        Some("InvalidArgument") => Err(Error::InvalidArgument("m".into())),
        Some("AlreadyExists") => Err(Error::AlreadyExists("m".into())),
        Some("InvalidState") => Err(Error::InvalidState("m".into())),
        Some("CommandNotFound") => Err(Error::CommandNotFound("m".into())),
        Some("CannotExecute") => Err(Error::CannotExecute("m".into())),
        Some("PermissionDenied") => Err(Error::PermissionDenied("m".into())),
        Some("LimitExceeded") => Err(Error::LimitExceeded("m".into())),
        Some("NoSuchNetwork") => Err(Error::NoSuchNetwork("m".into())),
        Some("NoSuchVolume") => Err(Error::NoSuchVolume("m".into())),
        Some("NoSuchExec") => Err(Error::NoSuchExec("m".into())),
        Some(_) => Err(Error::Failed("m".into())),
    }
}

impl Fake {
    fn call(&self, c: String) {
        self.calls.lock().unwrap().push(c);
    }
    fn info(name: &str) -> ContainerInfo {
        ContainerInfo {
            name: name.into(),
            state: "running".into(),
            unit: crate::name::scope_unit(name),
            leader: 42,
            image: "default".into(),
            root_directory: String::new(),
            created_at: 1,
            started_at: 2,
            exit_status: -1,
            last_error: String::new(),
            resources: [("memory".to_string(), "64M".to_string())].into(),
            oom_kills: 3,
            last_oom_at: 4,
            security: [("userns".to_string(), "host".to_string())].into(),
            labels: [("tier".to_string(), "web".to_string())].into(),
            image_id: "sha256:00".into(),
            network: "bridge".into(),
            addresses: vec!["10.89.0.2/16".into()],
            ports: vec![(String::new(), 8080, 80, "tcp".into())],
            object_path: cpath(name),
        }
    }
    fn image(name: &str) -> ImageInfo {
        ImageInfo {
            name: name.into(),
            kind: "oci".into(),
            digest: "sha256:00".into(),
            size: 10,
            created: 5,
            layers: vec!["sha256:11".into()],
            read_only: false,
            object_path: ipath(name),
        }
    }
}

impl Fake {
    /// What the daemon does between checking a call and acting on it.
    fn authorize(&self, caller: Caller, action: Action) -> Result<()> {
        self.callers.lock().unwrap().push(caller);
        self.call(format!("authorize {action:?}"));
        if *self.deny.lock().unwrap() {
            Err(Error::PermissionDenied("no".into()))
        } else {
            Ok(())
        }
    }
}

impl Backend for Fake {
    fn admit(&self, sender: String) -> BoxFuture<'_, Result<Permit>> {
        let uid = *self.uid.lock().unwrap();
        Box::pin(async move { self.admission.admit(&sender)?.for_uid(uid) })
    }
    fn answer(&self, _sender: String) -> BoxFuture<'_, Option<super::admission::Answer>> {
        let uid = *self.uid.lock().unwrap();
        Box::pin(async move { self.admission.answer(Some(uid)) })
    }
    fn caller_is_root(&self, _sender: String) -> BoxFuture<'_, bool> {
        let root = !*self.deny.lock().unwrap();
        Box::pin(async move { root })
    }
    fn create(
        &self,
        caller: Caller,
        name: String,
        options: Options,
    ) -> BoxFuture<'_, Result<OwnedObjectPath>> {
        let denied = self.authorize(caller, Action::ManageContainers);
        let keys: Vec<String> = options.0.iter().map(|(k, _)| k.clone()).collect();
        Box::pin(async move {
            denied?;
            self.call(format!("create {name} {keys:?}"));
            wanted(&name)?;
            let conn = self.conn.lock().unwrap().clone().unwrap();
            let em = SignalEmitter::new(&conn, MANAGER_PATH).unwrap();
            Manager::container_new(&em, &name, cpath(&name)).await?;
            Ok(cpath(&name))
        })
    }
    fn start(&self, caller: Caller, name: String, options: Options) -> BoxFuture<'_, Result<()>> {
        let denied = self.authorize(caller, Action::ManageContainers);
        Box::pin(async move {
            denied?;
            self.call(format!("start {name} {}", options.0.len()));
            wanted(&name)
        })
    }
    fn stop(&self, caller: Caller, name: String, timeout_usec: u64) -> BoxFuture<'_, Result<()>> {
        let denied = self.authorize(caller, Action::ManageContainers);
        Box::pin(async move {
            denied?;
            self.call(format!("stop {name} {timeout_usec}"));
            wanted(&name)
        })
    }
    fn kill(
        &self,
        caller: Caller,
        name: String,
        whom: String,
        signal: i32,
    ) -> BoxFuture<'_, Result<()>> {
        let denied = self.authorize(caller, Action::ManageContainers);
        Box::pin(async move {
            denied?;
            self.call(format!("kill {name} {whom} {signal}"));
            wanted(&name)
        })
    }
    fn remove(&self, caller: Caller, name: String, force: bool) -> BoxFuture<'_, Result<()>> {
        let denied = self.authorize(caller, Action::ManageContainers);
        Box::pin(async move {
            denied?;
            self.call(format!("remove {name} {force}"));
            wanted(&name)
        })
    }
    fn wait(&self, name: String) -> BoxFuture<'_, Result<i32>> {
        self.call(format!("wait {name}"));
        let delay = *self.list_delay.lock().unwrap();
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            wanted(&name).map(|_| 7)
        })
    }
    fn set_resources(
        &self,
        caller: Caller,
        name: String,
        assignments: Vec<(String, String)>,
        runtime: bool,
    ) -> BoxFuture<'_, Result<()>> {
        let denied = self.authorize(caller, Action::ManageContainers);
        Box::pin(async move {
            denied?;
            self.call(format!("set {name} {assignments:?} {runtime}"));
            wanted(&name)
        })
    }
    fn stats(&self, names: Vec<String>) -> BoxFuture<'_, Result<Vec<StatsInfo>>> {
        self.call(format!("stats {names:?}"));
        Box::pin(async move {
            Ok(names
                .into_iter()
                .map(|name| StatsInfo {
                    name,
                    memory_bytes: 9,
                    ..Default::default()
                })
                .collect())
        })
    }
    fn watch_stats(&self, subscriber: String, interval_usec: u64) -> Result<()> {
        self.call(format!(
            "watch {} {interval_usec}",
            subscriber.starts_with(':')
        ));
        Ok(())
    }
    fn unwatch_stats(&self, subscriber: &str) {
        self.call(format!("unwatch {}", subscriber.starts_with(':')));
    }
    fn list_images(&self) -> Vec<ImageInfo> {
        vec![Fake::image("default")]
    }
    fn image_info(&self, name: &str) -> Option<ImageInfo> {
        (name == "default").then(|| Fake::image(name))
    }
    fn image_config(&self, _name: &str) -> Option<crate::image::ImageConfig> {
        Some(crate::image::ImageConfig {
            cmd: vec!["/bin/sh".into()],
            user: Some("app".into()),
            ..Default::default()
        })
    }
    fn import_image(
        &self,
        caller: Caller,
        format: String,
        source: String,
        name: String,
        _options: Options,
    ) -> BoxFuture<'_, Result<OwnedObjectPath>> {
        let denied = self.authorize(caller, Action::ManageImages);
        Box::pin(async move {
            denied?;
            self.call(format!("import {format} {source} {name}"));
            wanted(&name).map(|_| ipath(&name))
        })
    }
    fn pull_image(
        &self,
        caller: Caller,
        reference: String,
        name: String,
        _options: Options,
    ) -> BoxFuture<'_, Result<OwnedObjectPath>> {
        let denied = self.authorize(caller, Action::ManageImages);
        Box::pin(async move {
            denied?;
            self.call(format!("pull {reference} {name}"));
            wanted(&name).map(|_| ipath(&name))
        })
    }
    fn remove_image(&self, caller: Caller, name: String, force: bool) -> BoxFuture<'_, Result<()>> {
        let denied = self.authorize(caller, Action::ManageImages);
        Box::pin(async move {
            denied?;
            self.call(format!("rmi {name} {force}"));
            wanted(&name)
        })
    }
    fn copy_image(
        &self,
        caller: Caller,
        op: &'static str,
        name: String,
        new_name: String,
    ) -> BoxFuture<'_, Result<OwnedObjectPath>> {
        let denied = self.authorize(caller, Action::ManageImages);
        Box::pin(async move {
            denied?;
            self.call(format!("{op} {name} {new_name}"));
            wanted(&name).map(|_| ipath(&new_name))
        })
    }
    fn export_tar(
        &self,
        caller: Caller,
        what: &'static str,
        name: String,
        _fd: std::os::fd::OwnedFd,
    ) -> BoxFuture<'_, Result<()>> {
        let action = if what == "image" {
            Action::ManageImages
        } else {
            Action::ManageContainers
        };
        let denied = self.authorize(caller, action);
        Box::pin(async move {
            denied?;
            self.call(format!("export {what} {name}"));
            wanted(&name)
        })
    }
    fn list(&self) -> Vec<ContainerInfo> {
        vec![Fake::info("web")]
    }
    fn info(&self, name: &str) -> Option<ContainerInfo> {
        (name == "web").then(|| Fake::info(name))
    }
    fn create_network(
        &self,
        caller: Caller,
        name: String,
        options: Options,
    ) -> BoxFuture<'_, Result<()>> {
        let denied = self.authorize(caller, Action::ManageContainers);
        let keys: Vec<String> = options.0.iter().map(|(k, _)| k.clone()).collect();
        Box::pin(async move {
            denied?;
            self.call(format!("network-create {name} {keys:?}"));
            wanted(&name)
        })
    }
    fn remove_network(&self, caller: Caller, name: String) -> BoxFuture<'_, Result<()>> {
        let denied = self.authorize(caller, Action::ManageContainers);
        Box::pin(async move {
            denied?;
            self.call(format!("network-remove {name}"));
            wanted(&name)
        })
    }
    fn list_networks(&self) -> BoxFuture<'_, Result<Vec<NetworkInfo>>> {
        Box::pin(async move { Ok(vec![Fake::network("berth")]) })
    }
    fn network_info(&self, name: String) -> BoxFuture<'_, Result<NetworkInfo>> {
        Box::pin(async move { wanted(&name).map(|_| Fake::network(&name)) })
    }
    fn start_terminal(
        &self,
        caller: Caller,
        name: String,
        options: Options,
    ) -> BoxFuture<'_, Result<std::os::fd::OwnedFd>> {
        let denied = self.authorize(caller, Action::ManageContainers);
        Box::pin(async move {
            denied?;
            self.call(format!("start-terminal {name} {}", options.0.len()));
            wanted(&name)?;
            Ok(std::fs::File::open("/dev/null").unwrap().into())
        })
    }
    fn exec(
        &self,
        caller: Caller,
        name: String,
        options: Options,
    ) -> BoxFuture<'_, Result<ExecStarted>> {
        let denied = self.authorize(caller, Action::Shell);
        let keys: Vec<String> = options.0.iter().map(|(k, _)| k.clone()).collect();
        Box::pin(async move {
            denied?;
            self.call(format!("exec {name} {keys:?}"));
            wanted(&name)?;
            Ok(ExecStarted {
                id: "7".into(),
                pid: 4242,
                terminal: keys
                    .iter()
                    .any(|k| k == "Terminal")
                    .then(|| std::fs::File::open("/dev/null").unwrap().into()),
            })
        })
    }
    fn wait_exec(&self, name: String, id: String) -> BoxFuture<'_, Result<i32>> {
        Box::pin(async move {
            self.call(format!("wait-exec {name} {id}"));
            Ok(3)
        })
    }
    fn kill_exec(
        &self,
        caller: Caller,
        name: String,
        id: String,
        signal: i32,
    ) -> BoxFuture<'_, Result<()>> {
        let denied = self.authorize(caller, Action::Shell);
        Box::pin(async move {
            denied?;
            self.call(format!("kill-exec {name} {id} {signal}"));
            Ok(())
        })
    }
    fn copy(
        &self,
        caller: Caller,
        into: bool,
        name: String,
        path: String,
        _stream: std::os::fd::OwnedFd,
        _options: Options,
    ) -> BoxFuture<'_, Result<CopyCounts>> {
        let denied = self.authorize(caller, Action::Shell);
        Box::pin(async move {
            denied?;
            self.call(format!("copy into={into} {name} {path}"));
            Ok((1, 2, 3))
        })
    }
    fn bind(
        &self,
        caller: Caller,
        name: String,
        _source: std::os::fd::OwnedFd,
        path: String,
        options: Options,
    ) -> BoxFuture<'_, Result<()>> {
        let denied = self.authorize(caller, Action::ManageContainers);
        Box::pin(async move {
            denied?;
            self.call(format!("bind {name} {path} {}", options.0.len()));
            Ok(())
        })
    }
    fn create_volume(
        &self,
        caller: Caller,
        name: String,
        _options: Options,
    ) -> BoxFuture<'_, Result<String>> {
        let denied = self.authorize(caller, Action::ManageContainers);
        Box::pin(async move {
            denied?;
            self.call(format!("create-volume {name}"));
            wanted(&name)?;
            Ok(name)
        })
    }
    fn list_volumes(&self) -> Result<Vec<VolumeInfo>> {
        Ok(vec![VolumeInfo {
            name: "data".into(),
            driver: "local".into(),
            created_at: 1,
            anonymous: false,
            labels: HashMap::new(),
            users: vec!["web".into()],
        }])
    }
    fn remove_volume(&self, caller: Caller, name: String) -> BoxFuture<'_, Result<()>> {
        let denied = self.authorize(caller, Action::ManageContainers);
        Box::pin(async move {
            denied?;
            self.call(format!("remove-volume {name}"));
            wanted(&name)
        })
    }
}

impl Fake {
    fn network(name: &str) -> NetworkInfo {
        NetworkInfo {
            name: name.into(),
            bridge: "berth0".into(),
            subnet: "10.89.0.0/16".into(),
            subnet6: String::new(),
            gateway: "10.89.0.1".into(),
            gateway6: String::new(),
            internal: false,
            containers: vec![("web".into(), "10.89.0.2".into(), String::new(), true)],
        }
    }
}

#[test]
fn network_methods_are_authorized_then_delegated_and_reads_are_open() {
    timeout(async {
        let s = serve().await;
        let m = &s.manager;
        let yes = OwnedVariant::try_from(zbus::Variant::from(true)).unwrap();
        m.create_network("n1".into(), opts(&[("Internal", yes)]))
            .await
            .unwrap();
        m.remove_network("n1".into()).await.unwrap();
        assert_eq!(
            s.calls(),
            [
                "authorize ManageContainers",
                "network-create n1 [\"Internal\"]",
                "authorize ManageContainers",
                "network-remove n1",
            ]
        );
        assert_eq!(
            m.list_networks().await.unwrap().into_inner(),
            [Fake::network("berth")]
        );
        assert_eq!(m.get_network("n2".into()).await.unwrap().name, "n2");
        assert_eq!(
            error_name(m.get_network("e-NoSuchNetwork".into()).await),
            "org.berth.berth1.Error.NoSuchNetwork"
        );
        *s.fake().deny.lock().unwrap() = true;
        assert_eq!(
            error_name(m.create_network("n1".into(), Options::default()).await),
            "org.berth.berth1.Error.PermissionDenied"
        );
        assert!(s.calls().iter().all(|c| c.starts_with("authorize")));
        // The container's network properties.
        let c = ContainerProxy::builder(&s.client)
            .path(crate::name::container_path("web"))
            .build()
            .await
            .unwrap();
        assert_eq!(c.network().await.unwrap(), "bridge");
        assert_eq!(c.addresses().await.unwrap(), ["10.89.0.2/16"]);
        assert_eq!(
            c.ports().await.unwrap(),
            [(String::new(), 8080, 80, "tcp".to_string())]
        );
    });
}

impl ImageOps for Fake {
    fn push_image(
        &self,
        caller: Caller,
        name: String,
        reference: String,
        options: Options,
    ) -> BoxFuture<'_, Result<String>> {
        let denied = self.authorize(caller, Action::ManageImages);
        Box::pin(async move {
            denied?;
            self.call(format!("push {name} {reference} {}", options.0.len()));
            wanted(&name)?;
            Ok("sha256:ab".into())
        })
    }
    fn save_images(
        &self,
        caller: Caller,
        names: Vec<String>,
        format: String,
        _fd: std::os::fd::OwnedFd,
        _options: Options,
    ) -> BoxFuture<'_, Result<()>> {
        let denied = self.authorize(caller, Action::ManageImages);
        Box::pin(async move {
            denied?;
            self.call(format!("save {names:?} {format}"));
            Ok(())
        })
    }
    fn load_images(
        &self,
        caller: Caller,
        path: String,
        _options: Options,
    ) -> BoxFuture<'_, Result<Vec<(String, OwnedObjectPath)>>> {
        let denied = self.authorize(caller, Action::ManageImages);
        Box::pin(async move {
            denied?;
            self.call(format!("load {path}"));
            Ok(vec![("web".into(), ipath("web"))])
        })
    }
    fn prune_images(
        &self,
        caller: Caller,
        _options: Options,
    ) -> BoxFuture<'_, Result<(Vec<String>, u64)>> {
        let denied = self.authorize(caller, Action::ManageImages);
        Box::pin(async move {
            denied?;
            self.call("prune".into());
            Ok((vec!["sha256:cd".into()], 42))
        })
    }
    fn login(
        &self,
        caller: Caller,
        registry: String,
        user: String,
        _password: String,
        _options: Options,
    ) -> BoxFuture<'_, Result<()>> {
        let denied = self.authorize(caller, Action::ManageImages);
        Box::pin(async move {
            denied?;
            self.call(format!("login {registry} {user}"));
            Ok(())
        })
    }
    fn logout(
        &self,
        caller: Caller,
        registry: String,
        _options: Options,
    ) -> BoxFuture<'_, Result<()>> {
        let denied = self.authorize(caller, Action::ManageImages);
        Box::pin(async move {
            denied?;
            self.call(format!("logout {registry}"));
            Ok(())
        })
    }
}

impl UnitOps for Fake {
    fn start_in_unit(
        &self,
        caller: Caller,
        name: String,
        _helper_socket: std::os::fd::OwnedFd,
        options: Options,
    ) -> BoxFuture<'_, Result<String>> {
        let denied = self.authorize(caller, Action::ManageContainers);
        Box::pin(async move {
            denied?;
            let mut o = options.check(&["StandardInput", "StandardOutput", "StandardError"])?;
            let out: Option<zbus::Fd<'static>> = o.take("StandardOutput")?;
            self.call(format!("start-in-unit {name} {}", out.is_some()));
            wanted(&name)?;
            Ok("/usr/local/libexec/berth-helper".into())
        })
    }
    fn set_enabled(
        &self,
        caller: Caller,
        name: String,
        enabled: bool,
    ) -> BoxFuture<'_, Result<String>> {
        let denied = self.authorize(caller, Action::ManageContainers);
        Box::pin(async move {
            denied?;
            self.call(format!("set-enabled {name} {enabled}"));
            wanted(&name)?;
            Ok(format!("enabled berth@{name}.service"))
        })
    }
}

#[test]
fn unit_methods_reach_the_backend_authorized_with_their_socket() {
    timeout(async {
        let s = serve().await;
        let m = &s.manager;
        let (a, _b) = std::os::unix::net::UnixDatagram::pair().unwrap();
        let fd = zbus::OwnedFd::from(std::os::fd::OwnedFd::from(a));
        let path = m
            .start_container_in_unit("web".into(), fd, Options::default())
            .await
            .unwrap();
        assert_eq!(path, "/usr/local/libexec/berth-helper");
        assert_eq!(
            m.enable_container("web".into()).await.unwrap(),
            "enabled berth@web.service"
        );
        m.disable_container("web".into()).await.unwrap();
        assert_eq!(
            s.calls(),
            [
                "authorize ManageContainers",
                "start-in-unit web false",
                "authorize ManageContainers",
                "set-enabled web true",
                "authorize ManageContainers",
                "set-enabled web false",
            ]
        );
        // An unknown option is refused.
        let (a, _b) = std::os::unix::net::UnixDatagram::pair().unwrap();
        let fd = zbus::OwnedFd::from(std::os::fd::OwnedFd::from(a));
        let yes = OwnedVariant::try_from(zbus::Variant::from(true)).unwrap();
        let r = m
            .start_container_in_unit("web".into(), fd, opts(&[("Bogus", yes)]))
            .await;
        assert!(matches!(r, Err(Error::InvalidArgument(_))), "{r:?}");
    });
}

impl ContainerOps for Fake {
    fn rename(
        &self,
        caller: Caller,
        name: String,
        new_name: String,
    ) -> BoxFuture<'_, Result<OwnedObjectPath>> {
        let denied = self.authorize(caller, Action::ManageContainers);
        Box::pin(async move {
            denied?;
            self.call(format!("rename-container {name} {new_name}"));
            wanted(&new_name)?;
            Ok(cpath(&new_name))
        })
    }
    fn freeze(&self, caller: Caller, name: String, freeze: bool) -> BoxFuture<'_, Result<()>> {
        let denied = self.authorize(caller, Action::ManageContainers);
        Box::pin(async move {
            denied?;
            self.call(format!("freeze {name} {freeze}"));
            wanted(&name)
        })
    }
    fn processes(&self, name: String) -> BoxFuture<'_, Result<Vec<ProcessInfo>>> {
        Box::pin(async move {
            wanted(&name)?;
            Ok(vec![ProcessInfo {
                host_pid: 42,
                pid: 1,
                host_uid: 524288,
                uid: 0,
                user: "root".into(),
                command: "sleep 1000".into(),
            }])
        })
    }
    fn plan(
        &self,
        caller: Caller,
        name: String,
        options: Options,
    ) -> BoxFuture<'_, Result<String>> {
        let denied = self.authorize(caller, Action::ManageContainers);
        Box::pin(async move {
            denied?;
            self.call(format!("plan {name} {}", options.0.len()));
            wanted(&name)?;
            Ok("{}".into())
        })
    }
    fn reload(&self, caller: Caller) -> BoxFuture<'_, Result<Vec<ReloadResult>>> {
        let denied = self.authorize(caller, Action::ManageContainers);
        Box::pin(async move {
            denied?;
            self.call("reload".into());
            Ok(vec![ReloadResult {
                name: "web".into(),
                action: "created".into(),
                message: String::new(),
            }])
        })
    }
    fn disk_usage(&self) -> BoxFuture<'_, Result<HashMap<String, u64>>> {
        Box::pin(async move { Ok([("images".to_string(), 3u64)].into()) })
    }
}

struct Served {
    _bus: Bus,
    _server: zbus::Connection,
    fake: Option<Arc<Fake>>,
    client: zbus::Connection,
    manager: ManagerProxy<'static>,
}

impl Served {
    fn fake(&self) -> &Fake {
        self.fake.as_ref().unwrap()
    }
    fn calls(&self) -> Vec<String> {
        std::mem::take(&mut *self.fake().calls.lock().unwrap())
    }
}

async fn serve() -> Served {
    let bus = bus();
    let fake = Arc::new(Fake::default());
    let backend: Arc<dyn Backend> = fake.clone();
    let server = zbus::connection::Builder::address(bus.address.as_str())
        .build()
        .await
        .unwrap();
    *fake.conn.lock().unwrap() = Some(server.clone());
    let os = server.object_server();
    os.at(
        MANAGER_PATH,
        super::gate::Gated::new(
            ObjectManager {
                backend: Arc::downgrade(&backend),
            },
            Arc::downgrade(&backend),
        ),
    )
    .await
    .unwrap();
    os.at(
        MANAGER_PATH,
        super::gate::Gated::new(
            super::listing::ManagerServer(Manager {
                backend: Arc::downgrade(&backend),
            }),
            Arc::downgrade(&backend),
        ),
    )
    .await
    .unwrap();
    os.at(
        crate::name::container_path("web"),
        super::gate::Gated::new(
            Container {
                backend: Arc::downgrade(&backend),
                name: "web".into(),
            },
            Arc::downgrade(&backend),
        ),
    )
    .await
    .unwrap();
    os.at(
        crate::name::image_path("default"),
        super::gate::Gated::new(
            Image {
                backend: Arc::downgrade(&backend),
                name: "default".into(),
            },
            Arc::downgrade(&backend),
        ),
    )
    .await
    .unwrap();
    let weak = Arc::downgrade(&backend);
    for path in [
        crate::name::container_path("web"),
        crate::name::image_path("default"),
    ] {
        standard::replace(os, &path, &weak).await.unwrap();
    }
    server.request_name(BUS_NAME).await.unwrap();
    let client = zbus::connection::Builder::address(bus.address.as_str())
        .build()
        .await
        .unwrap();
    let manager = ManagerProxy::new(&client).await.unwrap();
    Served {
        _bus: bus,
        _server: server,
        fake: Some(fake),
        client,
        manager,
    }
}

/// The bus error name of a failed call.
fn error_name<T: std::fmt::Debug>(r: Result<T>) -> String {
    match r {
        Err(Error::ZBus(zbus::Error::MethodError(name, _, _))) => name.to_string(),
        Err(e) => format!("{}", zbus::DBusError::name(&e)),
        Ok(v) => panic!("expected an error, got {v:?}"),
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn timeout<F: std::future::Future>(f: F) -> F::Output {
    rt().block_on(async {
        tokio::time::timeout(Duration::from_secs(30), f)
            .await
            .expect("bus test timed out")
    })
}

fn opts(entries: &[(&str, OwnedVariant)]) -> Options {
    Options(
        entries
            .iter()
            .map(|(k, v)| (k.to_string(), v.try_clone().unwrap()))
            .collect(),
    )
}

#[test]
fn mutating_methods_are_authorized_then_delegated() {
    timeout(async {
        let s = serve().await;
        let m = &s.manager;
        let image = OwnedVariant::try_from(zbus::Variant::from("default")).unwrap();
        assert_eq!(
            m.create_container("a".into(), opts(&[("Image", image)]))
                .await
                .unwrap(),
            cpath("a")
        );
        m.start_container("a".into(), Options::default())
            .await
            .unwrap();
        m.stop_container("a".into(), 5).await.unwrap();
        m.kill_container("a".into(), "all".into(), 9).await.unwrap();
        m.remove_container("a".into(), true).await.unwrap();
        m.set_resources("a".into(), vec![("memory".into(), "1G".into())], true)
            .await
            .unwrap();
        assert_eq!(
            s.calls(),
            [
                "authorize ManageContainers",
                "create a [\"Image\"]",
                "authorize ManageContainers",
                "start a 0",
                "authorize ManageContainers",
                "stop a 5",
                "authorize ManageContainers",
                "kill a all 9",
                "authorize ManageContainers",
                "remove a true",
                "authorize ManageContainers",
                "set a [(\"memory\", \"1G\")] true",
            ]
        );
        m.import_image(
            "oci".into(),
            "/x.tar".into(),
            "i".into(),
            Options::default(),
        )
        .await
        .unwrap();
        m.pull_image("r/x:1".into(), "i".into(), Options::default())
            .await
            .unwrap();
        m.remove_image("i".into(), false).await.unwrap();
        m.rename_image("i".into(), "j".into()).await.unwrap();
        m.clone_image("i".into(), "k".into()).await.unwrap();
        m.tag_image("i".into(), "l".into()).await.unwrap();
        let devnull = std::fs::File::open("/dev/null").unwrap();
        m.export_image(
            "i".into(),
            zbus::OwnedFd::from(std::os::fd::OwnedFd::from(devnull)),
        )
        .await
        .unwrap();
        let calls = s.calls();
        let authorized = calls
            .iter()
            .filter(|c| *c == "authorize ManageImages")
            .count();
        assert_eq!(authorized, 7, "{calls:#?}");

        assert!(calls.contains(&"pull r/x:1 i".to_string()));
        assert!(calls.contains(&"rename i j".to_string()));
        assert!(calls.contains(&"export image i".to_string()));
        let devnull = || {
            zbus::OwnedFd::from(std::os::fd::OwnedFd::from(
                std::fs::File::open("/dev/null").unwrap(),
            ))
        };
        assert_eq!(
            m.push_image("i".into(), "r/x:1".into(), Options::default())
                .await
                .unwrap(),
            "sha256:ab"
        );
        m.save_images(
            vec!["i".into()],
            "oci-archive".into(),
            devnull(),
            Options::default(),
        )
        .await
        .unwrap();
        assert_eq!(
            m.load_images("/a.tar".into(), Options::default())
                .await
                .unwrap(),
            vec![("web".to_string(), ipath("web"))]
        );
        assert_eq!(
            m.prune_images(Options::default()).await.unwrap(),
            (vec!["sha256:cd".to_string()], 42)
        );
        m.login("r:5000".into(), "u".into(), "p".into(), Options::default())
            .await
            .unwrap();
        m.logout("r:5000".into(), Options::default()).await.unwrap();
        assert_eq!(
            m.rename_container("a".into(), "b".into()).await.unwrap(),
            cpath("b")
        );
        m.pause_container("a".into()).await.unwrap();
        m.unpause_container("a".into()).await.unwrap();
        assert_eq!(
            m.plan_container("a".into(), Options::default())
                .await
                .unwrap(),
            "{}"
        );
        assert_eq!(m.reload().await.unwrap()[0].action, "created");
        let calls = s.calls();
        assert_eq!(
            calls,
            [
                "authorize ManageImages",
                "push i r/x:1 0",
                "authorize ManageImages",
                "save [\"i\"] oci-archive",
                "authorize ManageImages",
                "load /a.tar",
                "authorize ManageImages",
                "prune",
                "authorize ManageImages",
                "login r:5000 u",
                "authorize ManageImages",
                "logout r:5000",
                "authorize ManageContainers",
                "rename-container a b",
                "authorize ManageContainers",
                "freeze a true",
                "authorize ManageContainers",
                "freeze a false",
                "authorize ManageContainers",
                "plan a 0",
                "authorize ManageContainers",
                "reload",
            ]
        );
        // Reads need no authorization.
        assert_eq!(m.list_processes("web".into()).await.unwrap()[0].pid, 1);
        assert_eq!(m.get_disk_usage().await.unwrap()["images"], 3);
        assert_eq!(
            error_name(
                m.rename_container("a".into(), "e-AlreadyExists".into())
                    .await
            ),
            "org.berth.berth1.Error.AlreadyExists"
        );
    });
}

#[test]
fn working_with_a_running_container_is_authorized_then_delegated() {
    timeout(async {
        let s = serve().await;
        let c = ContainerProxy::builder(&s.client)
            .path(cpath("web"))
            .build()
            .await
            .unwrap();
        let cmd = OwnedVariant::try_from(zbus::Variant::from(vec!["true".to_string()])).unwrap();
        let yes = OwnedVariant::try_from(zbus::Variant::from(true)).unwrap();
        let started = c
            .exec(opts(&[
                ("Command", cmd.try_clone().unwrap()),
                ("Terminal", yes),
            ]))
            .await
            .unwrap();
        assert_eq!(
            String::try_from(started["Id"].try_clone().unwrap()).unwrap(),
            "7"
        );
        assert_eq!(
            u32::try_from(started["Pid"].try_clone().unwrap()).unwrap(),
            4242
        );
        // The terminal's master arrives as a descriptor.
        let fd = zbus::Fd::try_from(started["Terminal"].try_clone().unwrap()).unwrap();
        let fd: std::os::fd::OwnedFd = zbus::OwnedFd::from(fd).into();
        assert!(nix::sys::stat::fstat(&fd).is_ok());
        let plain = c.exec(opts(&[("Command", cmd)])).await.unwrap();
        assert!(!plain.contains_key("Terminal"));
        assert_eq!(c.wait_exec("7".into()).await.unwrap(), 3);
        c.kill_exec("7".into(), 15).await.unwrap();
        let devnull = || {
            zbus::OwnedFd::from(std::os::fd::OwnedFd::from(
                std::fs::File::open("/dev/null").unwrap(),
            ))
        };
        assert_eq!(
            c.copy_to("/tmp".into(), devnull(), Options::default())
                .await
                .unwrap(),
            (1, 2, 3)
        );
        c.copy_from("/etc".into(), devnull(), Options::default())
            .await
            .unwrap();
        c.bind(devnull(), "/mnt".into(), Options::default())
            .await
            .unwrap();
        s.manager
            .start_container_terminal("web".into(), Options::default())
            .await
            .unwrap();
        assert_eq!(
            s.manager
                .create_volume("data".into(), Options::default())
                .await
                .unwrap(),
            "data"
        );
        assert_eq!(s.manager.list_volumes().await.unwrap()[0].users, ["web"]);
        s.manager.remove_volume("data".into()).await.unwrap();
        assert_eq!(
            error_name(s.manager.remove_volume("e-InvalidState".into()).await),
            "org.berth.berth1.Error.InvalidState"
        );
        assert_eq!(
            s.calls(),
            [
                "authorize Shell",
                "exec web [\"Command\", \"Terminal\"]",
                "authorize Shell",
                "exec web [\"Command\"]",
                "wait-exec web 7",
                "authorize Shell",
                "kill-exec web 7 15",
                "authorize Shell",
                "copy into=true web /tmp",
                "authorize Shell",
                "copy into=false web /etc",
                "authorize ManageContainers",
                "bind web /mnt 0",
                "authorize ManageContainers",
                "start-terminal web 0",
                "authorize ManageContainers",
                "create-volume data",
                "authorize ManageContainers",
                "remove-volume data",
                "authorize ManageContainers",
                "remove-volume e-InvalidState",
            ]
        );
        // Denied: nothing is delegated.
        *s.fake().deny.lock().unwrap() = true;
        let cmd = OwnedVariant::try_from(zbus::Variant::from(vec!["true".to_string()])).unwrap();
        assert_eq!(
            error_name(c.exec(opts(&[("Command", cmd)])).await),
            "org.berth.berth1.Error.PermissionDenied"
        );
        assert_eq!(s.calls(), ["authorize Shell"]);
    });
}

#[test]
fn a_denied_caller_changes_nothing_and_reads_still_work() {
    timeout(async {
        let s = serve().await;
        *s.fake().deny.lock().unwrap() = true;
        let m = &s.manager;
        assert_eq!(
            error_name(m.create_container("a".into(), Options::default()).await),
            "org.berth.berth1.Error.PermissionDenied"
        );
        assert_eq!(
            error_name(m.remove_image("i".into(), true).await),
            "org.berth.berth1.Error.PermissionDenied"
        );
        let calls = s.calls();
        assert!(
            calls.iter().all(|c| c.starts_with("authorize")),
            "acted on a denied call: {calls:?}"
        );
        // Reads need no authorization.
        assert_eq!(
            m.list_containers().await.unwrap().into_inner(),
            vec![Fake::info("web")]
        );
        assert_eq!(m.get_container("web".into()).await.unwrap(), cpath("web"));
        assert_eq!(m.wait_container("web".into()).await.unwrap(), 7);
        assert_eq!(m.list_images().await.unwrap()[0].name, "default");
        assert_eq!(
            m.get_image("default".into()).await.unwrap(),
            ipath("default")
        );
        assert_eq!(
            m.get_stats(vec!["web".into()]).await.unwrap()[0].memory_bytes,
            9
        );
        assert_eq!(
            error_name(m.get_container("nosuch".into()).await),
            "org.berth.berth1.Error.NoSuchContainer"
        );
        assert_eq!(
            error_name(m.get_image("nosuch".into()).await),
            "org.berth.berth1.Error.NoSuchImage"
        );
    });
}

#[test]
fn every_error_keeps_its_name_on_the_bus() {
    timeout(async {
        let s = serve().await;
        for variant in [
            "NoSuchContainer",
            "NoSuchImage",
            "NoSuchVolume",
            "NoSuchExec",
            "InvalidArgument",
            "AlreadyExists",
            "InvalidState",
            "CommandNotFound",
            "CannotExecute",
            "PermissionDenied",
            "LimitExceeded",
            "Failed",
        ] {
            let r = s
                .manager
                .start_container(format!("e-{variant}"), Options::default())
                .await;
            assert_eq!(error_name(r), format!("org.berth.berth1.Error.{variant}"));
        }
    });
}

#[test]
fn the_caller_and_its_interactive_flag_reach_the_backend() {
    timeout(async {
        let s = serve().await;
        s.manager.stop_container("a".into(), 0).await.unwrap();
        s.manager
            .inner()
            .call_with_flags::<_, _, ()>(
                "StopContainer",
                zbus::proxy::MethodFlags::ALLOW_INTERACTIVE_AUTH,
                &("a", 0u64),
            )
            .await
            .unwrap();
        let callers = s.fake().callers.lock().unwrap().clone();
        let me = s.client.unique_name().unwrap().to_string();
        assert_eq!(callers.len(), 2);
        assert!(callers.iter().all(|c| c.sender == me));
        assert_eq!(
            callers.iter().map(|c| c.interactive).collect::<Vec<_>>(),
            [false, true]
        );
        // WatchStats knows its subscriber.
        s.manager.watch_stats(1_000_000).await.unwrap();
        s.manager.unwatch_stats().await.unwrap();
        let calls = s.calls();
        assert!(calls.contains(&"watch true 1000000".to_string()));
        assert!(calls.contains(&"unwatch true".to_string()));
    });
}

#[test]
fn container_and_image_objects_read_their_backend_and_let_it_go() {
    timeout(async {
        let mut s = serve().await;
        let c = ContainerProxy::builder(&s.client)
            .path(crate::name::container_path("web"))
            .build()
            .await
            .unwrap();
        assert_eq!(c.state().await.unwrap(), "running");
        assert_eq!(c.leader().await.unwrap(), 42);
        assert_eq!(c.unit().await.unwrap(), "berth-web.scope");
        assert_eq!(c.oom_kills().await.unwrap(), 3);
        assert_eq!(c.last_error().await.unwrap(), "");
        assert_eq!(c.resources().await.unwrap()["memory"], "64M");
        assert_eq!(c.labels().await.unwrap()["tier"], "web");
        assert_eq!(c.image_id().await.unwrap(), "sha256:00");
        let i = ImageProxy::builder(&s.client)
            .path(crate::name::image_path("default"))
            .build()
            .await
            .unwrap();
        assert_eq!(i.kind().await.unwrap(), "oci");
        assert_eq!(i.layers().await.unwrap(), ["sha256:11"]);
        let cfg = i.config().await.unwrap();
        assert_eq!(
            String::try_from(cfg["User"].try_clone().unwrap()).unwrap(),
            "app"
        );
        // The objects hold the backend weakly: once the daemon lets it go, they say so.
        s.fake.take();
        let props = zbus::fdo::PropertiesProxy::builder(&s.client)
            .destination(BUS_NAME)
            .path(crate::name::container_path("web"))
            .build()
            .await
            .unwrap();
        let r = props
            .get(
                zbus::names::InterfaceName::from_static_str_unchecked("org.berth.berth1.Container"),
                "State",
            )
            .await;
        assert!(r.is_err());
        assert_eq!(
            error_name(s.manager.list_containers().await),
            "org.berth.berth1.Error.Failed"
        );
    });
}

#[test]
fn signals_reach_subscribers() {
    timeout(async {
        let s = serve().await;
        let mut new = s.manager.receive_container_new().await.unwrap();
        s.manager
            .create_container("sig".into(), Options::default())
            .await
            .unwrap();
        let sig = new.next().await.unwrap();
        let args = sig.args().unwrap();
        assert_eq!((args.name, args.path.clone()), ("sig", cpath("sig")));
        // The signals berthd emits itself, through the same definitions.
        let em = SignalEmitter::new(
            &s.fake().conn.lock().unwrap().clone().unwrap(),
            MANAGER_PATH,
        )
        .unwrap();
        let mut removed = s.manager.receive_container_removed().await.unwrap();
        let mut oom = s.manager.receive_container_oom_killed().await.unwrap();
        let mut progress = s.manager.receive_image_progress().await.unwrap();
        Manager::container_removed(&em, "sig", cpath("sig"))
            .await
            .unwrap();
        Manager::container_oom_killed(&em, "sig", cpath("sig"), 2)
            .await
            .unwrap();
        Manager::image_progress(&em, "i", "downloading", 1, 2, 0, 1)
            .await
            .unwrap();
        assert_eq!(removed.next().await.unwrap().args().unwrap().name, "sig");
        assert_eq!(oom.next().await.unwrap().args().unwrap().kills, 2);
        assert_eq!(
            progress.next().await.unwrap().args().unwrap().phase,
            "downloading"
        );
    });
}

#[test]
fn options_with_a_key_twice_never_reach_the_backend_as_one() {
    timeout(async {
        let s = serve().await;
        let a = OwnedVariant::try_from(zbus::Variant::from("nosuch")).unwrap();
        let b = OwnedVariant::try_from(zbus::Variant::from("default")).unwrap();
        s.manager
            .create_container("dup".into(), opts(&[("Image", a), ("Image", b)]))
            .await
            .unwrap();
        // Both entries arrive: the backend's strict check then refuses them.
        assert!(
            s.calls()
                .contains(&"create dup [\"Image\", \"Image\"]".to_string())
        );
        let _ = HashMap::<String, String>::new();
    });
}

#[test]
fn served_interfaces_are_the_published_ones() {
    timeout(async {
        let s = serve().await;
        let root = env!("CARGO_MANIFEST_DIR");
        for (iface, path) in [
            ("org.berth.berth1.Manager", MANAGER_PATH.to_string()),
            (
                "org.berth.berth1.Container",
                crate::name::container_path("web"),
            ),
            ("org.berth.berth1.Image", crate::name::image_path("default")),
        ] {
            let xml = zbus::fdo::IntrospectableProxy::builder(&s.client)
                .destination(BUS_NAME)
                .path(path)
                .build()
                .await
                .unwrap()
                .introspect()
                .await
                .unwrap();
            let mut py = Command::new("python3")
                .args([format!("{root}/tests/extract-interface.py").as_str(), iface])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("python3");
            std::io::Write::write_all(&mut py.stdin.take().unwrap(), xml.as_bytes()).unwrap();
            let served = String::from_utf8(py.wait_with_output().unwrap().stdout).unwrap();
            let published =
                std::fs::read_to_string(format!("{root}/dbus-interfaces/{iface}.xml")).unwrap();
            assert_eq!(
                served.trim(),
                published.trim(),
                "{iface} drifted from dbus-interfaces/"
            );
        }
    });
}

/// One valid argument list per Manager method, as a raw body, to call it with and without an
/// argument too many.
fn sample_args(method: &'static str) -> Option<zbus::Message> {
    let m = |body: &dyn Fn(zbus::message::Builder<'static>) -> zbus::Result<zbus::Message>| {
        body(
            zbus::Message::method_call(MANAGER_PATH, method)
                .destination(BUS_NAME)
                .interface("org.berth.berth1.Manager"),
        )
        .unwrap()
    };
    let o = Options::default();
    let fd = || {
        zbus::OwnedFd::from(std::os::fd::OwnedFd::from(
            std::fs::File::open("/dev/null").unwrap(),
        ))
    };
    Some(match method {
        "CreateContainer" | "StartContainer" | "StartContainerTerminal" | "CreateVolume" => {
            m(&|b| b.build(&("a", &o)))
        }
        "ListVolumes" => m(&|b| b.build(&())),
        "RemoveVolume" => m(&|b| b.build(&("v",))),
        "StopContainer" => m(&|b| b.build(&("a", 0u64))),
        "StartContainerInUnit" => m(&|b| b.build(&("a", fd(), &o))),
        "EnableContainer" | "DisableContainer" => m(&|b| b.build(&("a",))),
        "KillContainer" => m(&|b| b.build(&("a", "all", 9i32))),
        "RemoveContainer" | "RemoveImage" => m(&|b| b.build(&("a", true))),
        "SetResources" => m(&|b| b.build(&("a", vec![("memory", "1G")], true))),
        "GetStats" => m(&|b| b.build(&(vec!["web"],))),
        "WatchStats" => m(&|b| b.build(&(1_000_000u64,))),
        "UnwatchStats" | "ListImages" | "ListContainers" | "ListNetworks" => m(&|b| b.build(&())),
        "CreateNetwork" => m(&|b| b.build(&("n", &o))),
        "RemoveNetwork" | "GetNetwork" => m(&|b| b.build(&("n",))),
        "GetImage" => m(&|b| b.build(&("default",))),
        "GetContainer" | "WaitContainer" => m(&|b| b.build(&("web",))),
        "ImportImage" => m(&|b| b.build(&("oci", "/x.tar", "i", &o))),
        "PullImage" => m(&|b| b.build(&("r/x:1", "i", &o))),
        "RenameImage" | "CloneImage" | "TagImage" => m(&|b| b.build(&("i", "j"))),
        "ExportImage" | "ExportContainer" => m(&|b| b.build(&("i", fd()))),
        "PushImage" => m(&|b| b.build(&("i", "r/x:1", &o))),
        "SaveImages" => m(&|b| b.build(&(vec!["i"], "oci-archive", fd(), &o))),
        "LoadImages" | "PlanContainer" => m(&|b| b.build(&("/x.tar", &o))),
        "PruneImages" => m(&|b| b.build(&(&o,))),
        "Login" => m(&|b| b.build(&("r", "u", "p", &o))),
        "Logout" => m(&|b| b.build(&("r", &o))),
        "RenameContainer" => m(&|b| b.build(&("web", "web2"))),
        "PauseContainer" | "UnpauseContainer" | "ListProcesses" => m(&|b| b.build(&("web",))),
        "Reload" | "GetDiskUsage" => m(&|b| b.build(&())),
        _ => return None,
    })
}

/// The same call with one more string argument.
fn with_extra(method: &'static str) -> zbus::Message {
    let m = |body: &dyn Fn(zbus::message::Builder<'static>) -> zbus::Result<zbus::Message>| {
        body(
            zbus::Message::method_call(MANAGER_PATH, method)
                .destination(BUS_NAME)
                .interface("org.berth.berth1.Manager"),
        )
        .unwrap()
    };
    let o = Options::default();
    let x = "extra";
    let fd = || {
        zbus::OwnedFd::from(std::os::fd::OwnedFd::from(
            std::fs::File::open("/dev/null").unwrap(),
        ))
    };
    match method {
        "CreateContainer" | "StartContainer" | "StartContainerTerminal" | "CreateVolume" => {
            m(&|b| b.build(&("a", &o, x)))
        }
        "ListVolumes" => m(&|b| b.build(&(x,))),
        "RemoveVolume" => m(&|b| b.build(&("v", x))),
        "StopContainer" => m(&|b| b.build(&("a", 0u64, x))),
        "StartContainerInUnit" => m(&|b| b.build(&("a", fd(), &o, x))),
        "EnableContainer" | "DisableContainer" => m(&|b| b.build(&("a", x))),
        "KillContainer" => m(&|b| b.build(&("a", "all", 9i32, x))),
        "RemoveContainer" | "RemoveImage" => m(&|b| b.build(&("a", true, x))),
        "SetResources" => m(&|b| b.build(&("a", vec![("memory", "1G")], true, x))),
        "GetStats" => m(&|b| b.build(&(vec!["web"], x))),
        "WatchStats" => m(&|b| b.build(&(1_000_000u64, x))),
        "UnwatchStats" | "ListImages" | "ListContainers" | "ListNetworks" => m(&|b| b.build(&(x,))),
        "CreateNetwork" => m(&|b| b.build(&("n", &o, x))),
        "RemoveNetwork" | "GetNetwork" => m(&|b| b.build(&("n", x))),
        "GetImage" => m(&|b| b.build(&("default", x))),
        "GetContainer" | "WaitContainer" => m(&|b| b.build(&("web", x))),
        "ImportImage" => m(&|b| b.build(&("oci", "/x.tar", "i", &o, x))),
        "PullImage" => m(&|b| b.build(&("r/x:1", "i", &o, x))),
        "RenameImage" | "CloneImage" | "TagImage" => m(&|b| b.build(&("i", "j", x))),
        "ExportImage" | "ExportContainer" => m(&|b| b.build(&("i", fd(), x))),
        "PushImage" => m(&|b| b.build(&("i", "r/x:1", &o, x))),
        "SaveImages" => m(&|b| b.build(&(vec!["i"], "oci-archive", fd(), &o, x))),
        "LoadImages" | "PlanContainer" => m(&|b| b.build(&("/x.tar", &o, x))),
        "PruneImages" => m(&|b| b.build(&(&o, x))),
        "Login" => m(&|b| b.build(&("r", "u", "p", &o, x))),
        "Logout" => m(&|b| b.build(&("r", &o, x))),
        "RenameContainer" => m(&|b| b.build(&("web", "web2", x))),
        "PauseContainer" | "UnpauseContainer" | "ListProcesses" => m(&|b| b.build(&("web", x))),
        "Reload" | "GetDiskUsage" => m(&|b| b.build(&(x,))),
        other => panic!("no sample arguments for {other}"),
    }
}

/// Send a raw call and wait for its reply (or error) message.
async fn raw_call(client: &zbus::Connection, msg: zbus::Message) -> zbus::Message {
    let serial = msg.primary_header().serial_num();
    let mut replies = zbus::MessageStream::from(client);
    client.send(&msg).await.unwrap();
    while let Some(r) = replies.next().await {
        let r = r.unwrap();
        if r.header().reply_serial() == Some(serial) {
            return r;
        }
    }
    panic!("no reply");
}

fn published_methods() -> Vec<&'static str> {
    let xml = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/dbus-interfaces/org.berth.berth1.Manager.xml"
    ))
    .unwrap();
    xml.split("<method name=\"")
        .skip(1)
        .map(|m| &*String::leak(m.split('"').next().unwrap().to_string()))
        .collect()
}

#[test]
fn every_method_refuses_an_argument_too_many_and_takes_the_right_ones() {
    timeout(async {
        let s = serve().await;
        let methods = published_methods();
        assert_eq!(methods.len(), 46, "{methods:?}");
        for &method in &methods {
            let ok = sample_args(method).unwrap_or_else(|| panic!("no sample for {method}"));
            let r = raw_call(&s.client, ok).await;
            assert_eq!(
                r.message_type(),
                zbus::message::Type::MethodReturn,
                "{method} with its own arguments: {r}"
            );
            s.calls();
            let r = raw_call(&s.client, with_extra(method)).await;
            assert_eq!(
                r.message_type(),
                zbus::message::Type::Error,
                "{method}: {r}"
            );
            // zbus refuses some with its own InvalidArgs (a signature it checks while reading
            // the arguments), berth the others.
            let name = r.header().error_name().map(|e| e.to_string());
            assert!(
                matches!(
                    name.as_deref(),
                    Some("org.berth.berth1.Error.InvalidArgument")
                        | Some("org.freedesktop.DBus.Error.InvalidArgs")
                ),
                "{method}: {r}"
            );
            assert_eq!(
                s.calls(),
                Vec::<String>::new(),
                "{method} with an extra argument reached the backend"
            );
        }
    });
}

#[test]
fn a_uid_with_too_many_calls_unanswered_gets_no_reply_and_costs_nothing() {
    timeout(async {
        let s = serve().await;
        *s.fake().uid.lock().unwrap() = 65534;
        // The uid's calls whose replies are not written yet, as many as it may have.
        let held: Vec<_> = (0..admission::ANSWERS_PER_UID)
            .map(|_| s.fake().admission.answer(Some(65534)).unwrap())
            .collect();
        // Any call of it, to any interface, is dropped: no reply, not even an error, and the
        // backend never sees it.
        let objects = zbus::fdo::ObjectManagerProxy::builder(s.manager.inner().connection())
            .destination(BUS_NAME)
            .path(MANAGER_PATH)
            .build()
            .await
            .unwrap();
        let calls = s.calls();
        let short = Duration::from_millis(300);
        assert!(
            tokio::time::timeout(short, s.manager.list_containers())
                .await
                .is_err()
        );
        assert!(
            tokio::time::timeout(short, objects.get_managed_objects())
                .await
                .is_err()
        );
        assert_eq!(s.calls(), calls);
        // Once they are written, the uid is answered again.
        drop(held);
        s.manager.list_containers().await.unwrap();
        objects.get_managed_objects().await.unwrap();
        // Root is never dropped.
        *s.fake().uid.lock().unwrap() = 0;
        let held: Vec<_> = (0..admission::ANSWERS_PER_UID)
            .map(|_| s.fake().admission.answer(Some(65534)).unwrap())
            .collect();
        s.manager.list_containers().await.unwrap();
        drop(held);
    });
}

#[test]
fn a_connection_that_keeps_calls_in_flight_is_bounded_and_others_are_not() {
    timeout(async {
        let s = serve().await;
        *s.fake().list_delay.lock().unwrap() = Duration::from_millis(500);
        *s.fake().uid.lock().unwrap() = 65534;
        let n = admission::PER_SENDER + 8;
        let calls = (0..n).map(|_| s.manager.wait_container("web".into()));
        let results = futures_util::future::join_all(calls).await;
        let refused = results
            .iter()
            .filter(|r| matches!(r, Err(Error::LimitExceeded(_))))
            .count();
        let answered = results.iter().filter(|r| matches!(r, Ok(7))).count();
        assert_eq!(answered, admission::PER_SENDER, "{results:?}");
        assert_eq!(refused, 8, "{results:?}");
        // The counts came back: the connection may call again.
        assert_eq!(s.manager.wait_container("web".into()).await.unwrap(), 7);
        // A uid over many connections is bounded too.
        *s.fake().list_delay.lock().unwrap() = Duration::from_millis(800);
        let mut clients = Vec::new();
        for _ in 0..(admission::PER_UID / admission::PER_SENDER + 1) {
            let c = zbus::connection::Builder::address(s._bus.address.as_str())
                .build()
                .await
                .unwrap();
            clients.push(ManagerProxy::new(&c).await.unwrap());
        }
        let calls = clients
            .iter()
            .flat_map(|m| (0..admission::PER_SENDER).map(move |_| m.wait_container("web".into())));
        let results = futures_util::future::join_all(calls).await;
        let answered = results.iter().filter(|r| matches!(r, Ok(7))).count();
        assert_eq!(answered, admission::PER_UID, "{results:?}");
    });
}

#[test]
fn the_object_manager_lists_every_object_with_its_properties() {
    timeout(async {
        let s = serve().await;
        let om = zbus::fdo::ObjectManagerProxy::builder(&s.client)
            .destination(BUS_NAME)
            .path(MANAGER_PATH)
            .build()
            .await
            .unwrap();
        let objects = om.get_managed_objects().await.unwrap();
        let web = &objects[&cpath("web")];
        let props =
            &web[&zbus::names::OwnedInterfaceName::try_from("org.berth.berth1.Container").unwrap()];
        assert_eq!(
            String::try_from(props["State"].try_clone().unwrap()).unwrap(),
            "running"
        );
        let img = &objects[&ipath("default")];
        assert!(img.contains_key(
            &zbus::names::OwnedInterfaceName::try_from("org.berth.berth1.Image").unwrap()
        ));
        // zbus still announces objects under it.
        let mut added = om.receive_interfaces_added().await.unwrap();
        s._server
            .object_server()
            .at(
                crate::name::container_path("new1"),
                super::gate::Gated::new(
                    Container {
                        backend: Arc::downgrade(&(s.fake.clone().unwrap() as Arc<dyn Backend>)),
                        name: "new1".into(),
                    },
                    Arc::downgrade(&(s.fake.clone().unwrap() as Arc<dyn Backend>)),
                ),
            )
            .await
            .unwrap();
        let sig = added.next().await.unwrap();
        assert_eq!(
            sig.args().unwrap().object_path.as_str(),
            crate::name::container_path("new1")
        );
    });
}

/// A raw call of a standard interface on `path`.
fn standard_call<B: serde::Serialize + zbus::zvariant::DynamicType>(
    path: &str,
    interface: &str,
    member: &'static str,
    body: &B,
) -> zbus::Message {
    zbus::Message::method_call(path.to_string(), member)
        .destination(BUS_NAME)
        .interface(interface.to_string())
        .build(body)
        .unwrap()
}

/// The same Container and Image objects at paths where zbus serves its own Properties and
/// Introspectable, to compare with.
async fn zbus_served_twins(s: &Served) -> (String, String) {
    let backend: Arc<dyn Backend> = s.fake.clone().unwrap();
    let os = s._server.object_server();
    let (c, i) = (
        "/zbus/container/web".to_string(),
        "/zbus/image/default".to_string(),
    );
    os.at(
        c.as_str(),
        super::gate::Gated::new(
            Container {
                backend: Arc::downgrade(&backend),
                name: "web".into(),
            },
            Arc::downgrade(&backend),
        ),
    )
    .await
    .unwrap();
    os.at(
        i.as_str(),
        super::gate::Gated::new(
            Image {
                backend: Arc::downgrade(&backend),
                name: "default".into(),
            },
            Arc::downgrade(&backend),
        ),
    )
    .await
    .unwrap();
    (c, i)
}

#[test]
fn berths_properties_and_introspection_answer_as_zbuss_would() {
    timeout(async {
        let s = serve().await;
        let (zc, zi) = zbus_served_twins(&s).await;
        let ours_c = crate::name::container_path("web");
        let ours_i = crate::name::image_path("default");
        let props = |path: &str| {
            zbus::fdo::PropertiesProxy::builder(&s.client)
                .destination(BUS_NAME)
                .path(path.to_string())
                .build()
        };
        let (ours, theirs) = (props(&ours_c).await.unwrap(), props(&zc).await.unwrap());
        let cif =
            zbus::names::InterfaceName::from_static_str("org.berth.berth1.Container").unwrap();
        let all = ours.get_all(cif.clone()).await.unwrap();
        assert_eq!(all.len(), theirs.get_all(cif.clone()).await.unwrap().len());
        assert!(all.len() > 20, "{all:?}");
        assert_eq!(all, theirs.get_all(cif.clone()).await.unwrap());
        for name in ["State", "Name", "Labels", "Ports", "Ready"] {
            assert_eq!(
                ours.get(cif.clone(), name).await.unwrap(),
                theirs.get(cif.clone(), name).await.unwrap(),
                "{name}"
            );
        }
        let (ours_img, theirs_img) = (props(&ours_i).await.unwrap(), props(&zi).await.unwrap());
        let iif = zbus::names::InterfaceName::from_static_str("org.berth.berth1.Image").unwrap();
        assert_eq!(
            ours_img.get_all(iif.clone()).await.unwrap(),
            theirs_img.get_all(iif.clone()).await.unwrap()
        );
        // The same errors: another interface, an unknown property, a standard interface (no
        // properties), and Set of a read-only property (zbus: UnknownProperty).
        let pif = zbus::names::InterfaceName::from_static_str("org.freedesktop.DBus.Peer").unwrap();
        assert_eq!(ours.get_all(pif.clone()).await.unwrap(), HashMap::new());
        assert_eq!(theirs.get_all(pif.clone()).await.unwrap(), HashMap::new());
        let fail = |r: zbus::fdo::Result<OwnedVariant>| format!("{:?}", r.unwrap_err());
        assert_eq!(
            fail(ours.get(iif.clone(), "Name").await),
            fail(theirs.get(iif.clone(), "Name").await)
        );
        assert_eq!(
            fail(ours.get(cif.clone(), "Nosuch").await),
            fail(theirs.get(cif.clone(), "Nosuch").await)
        );
        assert_eq!(
            fail(ours.get(pif.clone(), "Nosuch").await),
            fail(theirs.get(pif.clone(), "Nosuch").await)
        );
        let v = zbus::Variant::from("x");
        let set_ours = format!(
            "{:?}",
            ours.set(cif.clone(), "State", &v).await.unwrap_err()
        );
        let set_theirs = format!(
            "{:?}",
            theirs.set(cif.clone(), "State", &v).await.unwrap_err()
        );
        assert_eq!(set_ours, set_theirs);
        // The same XML, byte for byte.
        let xml = |path: &str| {
            let path = path.to_string();
            let client = s.client.clone();
            async move {
                zbus::fdo::IntrospectableProxy::builder(&client)
                    .destination(BUS_NAME)
                    .path(path)
                    .build()
                    .await
                    .unwrap()
                    .introspect()
                    .await
                    .unwrap()
            }
        };
        let ours_xml = xml(&ours_c).await;
        assert_eq!(ours_xml, xml(&zc).await);
        assert!(ours_xml.contains("<interface name=\"org.berth.berth1.Container\">"));
        assert_eq!(xml(&ours_i).await, xml(&zi).await);
        // Nothing above reached the backend's methods or left a call counted.
        assert_eq!(
            s.fake()
                .admission
                .in_flight(s.client.unique_name().unwrap()),
            0
        );
    });
}

#[test]
fn over_the_bound_properties_and_introspection_are_refused_and_others_served() {
    timeout(async {
        let s = serve().await;
        let me = s.client.unique_name().unwrap().to_string();
        let web = crate::name::container_path("web");
        let get_all = || {
            standard_call(
                &web,
                "org.freedesktop.DBus.Properties",
                "GetAll",
                &("org.berth.berth1.Container",),
            )
        };
        let get = || {
            standard_call(
                &web,
                "org.freedesktop.DBus.Properties",
                "Get",
                &("org.berth.berth1.Container", "State"),
            )
        };
        let introspect = || {
            standard_call(
                &web,
                "org.freedesktop.DBus.Introspectable",
                "Introspect",
                &(),
            )
        };
        let limit = Some("org.berth.berth1.Error.LimitExceeded".to_string());
        // This connection has as many calls in flight as it may.
        let held: Vec<_> = (0..admission::PER_SENDER)
            .map(|_| s.fake().admission.admit(&me).unwrap())
            .collect();
        for msg in [get_all(), get(), introspect()] {
            let r = raw_call(&s.client, msg).await;
            assert_eq!(r.header().error_name().map(|e| e.to_string()), limit, "{r}");
        }
        // Another connection, holding nothing, is served meanwhile.
        let other = zbus::connection::Builder::address(s._bus.address.as_str())
            .build()
            .await
            .unwrap();
        for msg in [get_all(), get(), introspect()] {
            let r = raw_call(&other, msg).await;
            assert_eq!(r.message_type(), zbus::message::Type::MethodReturn, "{r}");
        }
        drop(held);
        // Reply bytes not yet read: a connection holding a large one is refused more...
        let big = s
            .fake()
            .admission
            .admit(&me)
            .unwrap()
            .hold(vec![0u8; admission::PER_SENDER_BYTES])
            .unwrap();
        for msg in [get_all(), introspect()] {
            let r = raw_call(&s.client, msg).await;
            assert_eq!(r.header().error_name().map(|e| e.to_string()), limit, "{r}");
        }
        drop(big);
        // ...and once it holds nothing, it is served again, and nothing stays counted.
        for msg in [get_all(), get(), introspect()] {
            let r = raw_call(&s.client, msg).await;
            assert_eq!(r.message_type(), zbus::message::Type::MethodReturn, "{r}");
        }
        assert_eq!(s.fake().admission.in_flight(&me), 0);
    });
}

#[test]
fn properties_and_introspection_refuse_an_argument_too_many() {
    timeout(async {
        let s = serve().await;
        let me = s.client.unique_name().unwrap().to_string();
        let p = "org.freedesktop.DBus.Properties";
        let c = "org.berth.berth1.Container";
        let v = zbus::Variant::from("x");
        for path in [
            crate::name::container_path("web"),
            crate::name::image_path("default"),
        ] {
            for msg in [
                standard_call(&path, p, "Get", &(c, "State", "x")),
                standard_call(&path, p, "GetAll", &(c, "x")),
                standard_call(&path, p, "Set", &(c, "State", &v, "x")),
                standard_call(
                    &path,
                    "org.freedesktop.DBus.Introspectable",
                    "Introspect",
                    &("x",),
                ),
            ] {
                let r = raw_call(&s.client, msg).await;
                // zbus refuses some with its own InvalidArgs (a signature it checks while
                // reading the arguments), berth the others.
                let name = r.header().error_name().map(|e| e.to_string());
                assert!(
                    matches!(
                        name.as_deref(),
                        Some("org.berth.berth1.Error.InvalidArgument")
                            | Some("org.freedesktop.DBus.Error.InvalidArgs")
                    ),
                    "{r}"
                );
            }
        }
        assert_eq!(s.fake().admission.in_flight(&me), 0);
    });
}
