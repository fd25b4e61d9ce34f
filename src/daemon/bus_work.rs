//! The bus side of working with running containers — exec, terminals, copies, live binds,
//! volumes: options decoded strictly, arguments checked, then the caller authorized (polkit:
//! `shell` for exec and copies, `manage-containers` for terminals, binds and volumes), then
//! the flow in [`super::exec`], [`super::copy`], [`super::mounts`].

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;

use super::error::Error;
use super::start::{StartExtras, Stdio};
use super::table::Registry;
use crate::dbus::{self, Action, Caller, CopyCounts, ExecStarted, Options, Result, VolumeInfo};
use crate::plan::exec::ExecRequest;

/// Options of StartContainer and StartContainerTerminal.
pub(super) const START_OPTIONS: &[&str] = &[
    "StandardInput",
    "StandardOutput",
    "StandardError",
    "EndWithCaller",
    "TerminalSize",
];

/// Options of Exec.
const EXEC_OPTIONS: &[&str] = &[
    "Command",
    "Environment",
    "WorkingDirectory",
    "User",
    "Shell",
    "StandardInput",
    "StandardOutput",
    "StandardError",
    "Terminal",
    "TerminalSize",
    "EndWithCaller",
];

fn bus<T>(r: std::result::Result<T, Error>) -> Result<T> {
    r.map_err(Into::into)
}

fn take_stdio(o: &mut dbus::options::Checked) -> Result<[Option<OwnedFd>; 3]> {
    let mut fds: [Option<OwnedFd>; 3] = [None, None, None];
    for (slot, key) in ["StandardInput", "StandardOutput", "StandardError"]
        .iter()
        .enumerate()
    {
        if let Some(fd) = o.take::<zbus::Fd<'static>>(key)? {
            fds[slot] = Some(zbus::OwnedFd::from(fd).into());
        }
    }
    Ok(fds)
}

/// The stdio and extras of a start.
pub(super) fn start_options(
    caller: &Caller,
    options: Options,
    terminal: bool,
) -> Result<(Stdio, StartExtras)> {
    let mut o = options.check(START_OPTIONS)?;
    let fds = take_stdio(&mut o)?;
    let end = o.take::<bool>("EndWithCaller")?.unwrap_or(false);
    let window = o.take::<(u16, u16)>("TerminalSize")?;
    Ok((
        Stdio(fds),
        StartExtras {
            terminal,
            window,
            caller: end.then(|| caller.sender.clone()),
        },
    ))
}

fn invalid(e: impl std::fmt::Display) -> dbus::Error {
    dbus::Error::InvalidArgument(e.to_string())
}

impl Registry {
    pub(super) async fn bus_start_terminal(
        &self,
        caller: Caller,
        name: String,
        options: Options,
    ) -> Result<OwnedFd> {
        let (stdio, extras) = start_options(&caller, options, true)?;
        self.known_container(&name)?;
        self.authorize(
            &caller,
            Action::ManageContainers,
            "start",
            ("container", &name),
        )
        .await?;
        bus(self.start_with(name, stdio, extras).await)?
            .ok_or_else(|| dbus::Error::Failed("the container has no terminal".into()))
    }

    pub(super) async fn bus_exec(
        &self,
        caller: Caller,
        name: String,
        options: Options,
    ) -> Result<ExecStarted> {
        let mut o = options.check(EXEC_OPTIONS)?;
        let stdio = take_stdio(&mut o)?;
        let req = ExecRequest::check(
            o.take("Command")?.unwrap_or_default(),
            o.take("Environment")?.unwrap_or_default(),
            o.take("WorkingDirectory")?,
            o.take::<String>("User")?.as_deref(),
            o.take("Shell")?.unwrap_or(false),
        )
        .map_err(invalid)?;
        let mut req = req;
        let terminal = o.take("Terminal")?.unwrap_or(false);
        let window = o.take::<(u16, u16)>("TerminalSize")?;
        let end = o.take::<bool>("EndWithCaller")?.unwrap_or(false);
        req.window = window.filter(|_| terminal);
        self.known_container(&name)?;
        self.authorize(&caller, Action::Shell, "exec", ("container", &name))
            .await?;
        let started = bus(self
            .exec(
                &name,
                req,
                stdio,
                terminal,
                end.then(|| caller.sender.clone()),
            )
            .await)?;
        Ok(ExecStarted {
            id: started.id,
            pid: started.pid,
            terminal: started.terminal,
        })
    }

    pub(super) async fn bus_wait_exec(&self, name: String, id: String) -> Result<i32> {
        match self.exec_container(&id) {
            Some(c) if c != name => Err(dbus::Error::NoSuchExec(format!(
                "no exec with ID {id:?} in {name:?}"
            ))),
            _ => bus(self.wait_exec(&id).await),
        }
    }

    pub(super) async fn bus_kill_exec(
        &self,
        caller: Caller,
        name: String,
        id: String,
        signal: i32,
    ) -> Result<()> {
        let sig = nix::sys::signal::Signal::try_from(signal)
            .map_err(|_| invalid(format!("invalid signal number {signal}")))?;
        if self.exec_container(&id).as_deref() != Some(name.as_str()) {
            return Err(dbus::Error::NoSuchExec(format!(
                "no running exec with ID {id:?} in {name:?}"
            )));
        }
        self.authorize(&caller, Action::Shell, "kill-exec", ("container", &name))
            .await?;
        bus(self.kill_exec(&id, sig))
    }

    pub(super) async fn bus_copy(
        &self,
        caller: Caller,
        into: bool,
        name: String,
        path: String,
        stream: OwnedFd,
        options: Options,
    ) -> Result<CopyCounts> {
        let archive = if into {
            let mut o = options.check(&["Archive"])?;
            o.take::<bool>("Archive")?.unwrap_or(false)
        } else {
            options.check(&[])?;
            false
        };
        crate::copy::resolve::CopyPath::parse(&path).map_err(invalid)?;
        if !path.starts_with('/') {
            return Err(invalid(format!(
                "the container path {path:?} is not absolute"
            )));
        }
        self.known_container(&name)?;
        let verb = if into { "copy-to" } else { "copy-from" };
        self.authorize(&caller, Action::Shell, verb, ("container", &name))
            .await?;
        let stats = if into {
            bus(self.copy_to(&name, path, stream, archive).await)?
        } else {
            bus(self.copy_from(&name, path, stream).await)?
        };
        Ok((stats.entries, stats.bytes, stats.skipped))
    }

    pub(super) async fn bus_bind(
        &self,
        caller: Caller,
        name: String,
        source: OwnedFd,
        path: String,
        options: Options,
    ) -> Result<()> {
        let mut o = options.check(&["ReadOnly", "MakeDirectory", "IdMap"])?;
        let read_only = o.take("ReadOnly")?.unwrap_or(false);
        let mkdir = o.take("MakeDirectory")?.unwrap_or(false);
        let idmap = o.take("IdMap")?.unwrap_or(false);
        let target = crate::volume::ContainerPath::parse(&path).map_err(invalid)?;
        self.known_container(&name)?;
        self.authorize(
            &caller,
            Action::ManageContainers,
            "bind",
            ("container", &name),
        )
        .await?;
        bus(self
            .bind(&name, source, target, read_only, mkdir, idmap)
            .await)
    }

    pub(super) async fn bus_create_volume(
        &self,
        caller: Caller,
        name: String,
        options: Options,
    ) -> Result<String> {
        let mut o = options.check(&["Labels"])?;
        let labels: BTreeMap<String, String> = o
            .take::<std::collections::HashMap<String, String>>("Labels")?
            .unwrap_or_default()
            .into_iter()
            .collect();
        crate::volume::VolumeName::parse(&name).map_err(invalid)?;
        self.authorize(
            &caller,
            Action::ManageContainers,
            "create",
            ("volume", &name),
        )
        .await?;
        bus(self.create_volume(&name, labels))
    }

    pub(super) fn bus_list_volumes(&self) -> Result<Vec<VolumeInfo>> {
        Ok(bus(self.list_volumes())?
            .into_iter()
            .map(|v| VolumeInfo {
                name: v.record.name.as_str().to_string(),
                driver: v.record.driver,
                created_at: v.record.created_at,
                anonymous: v.record.anonymous,
                labels: v.record.labels.into_iter().collect(),
                users: v.users,
            })
            .collect())
    }

    pub(super) async fn bus_remove_volume(&self, caller: Caller, name: String) -> Result<()> {
        crate::volume::VolumeName::parse(&name).map_err(invalid)?;
        self.authorize(
            &caller,
            Action::ManageContainers,
            "remove",
            ("volume", &name),
        )
        .await?;
        bus(self.remove_volume(&name))
    }

    fn known_container(&self, name: &str) -> Result<()> {
        if self.entries.lock().unwrap().contains_key(name) {
            Ok(())
        } else {
            Err(dbus::Error::NoSuchContainer(format!(
                "no container named {name:?}"
            )))
        }
    }
}
