//! The podman-shaped container verbs: start/stop/kill/restart on several names, rename,
//! pause/unpause, wait, top, inspect, container prune, system df/prune, and the
//! declarative ones: reload, verify. Verbs that act on several names try every name, report
//! each failure once, and end with the last failure's exit code.

use std::collections::HashMap;

use clap::{Args, Subcommand};
use serde::Serialize;
use zbus::OwnedVariant;

use super::output::{self, ContainerView};
use super::{CliError, CliResult, Exit, Format, manager};
use crate::dbus::{ManagerProxy, Options};

/// Run `f` for each name; report each failure; the last failure's exit code at the end.
pub async fn each<F, Fut>(names: &[String], mut f: F) -> CliResult
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = CliResult<()>>,
{
    let mut last = None;
    for n in names {
        if let Err(e) = f(n.clone()).await {
            if !e.message.is_empty() {
                eprintln!("berthctl: {}", e.message);
            }
            last = Some(e.exit);
        }
    }
    match last {
        Some(exit) => Err(CliError::reported(exit)),
        None => Ok(0),
    }
}

/// `--label KEY=VALUE` words as a map (a key given twice keeps the last value).
pub fn labels(words: &[String]) -> CliResult<HashMap<String, String>> {
    let mut m = HashMap::new();
    for w in words {
        let (k, v) = w.split_once('=').unwrap_or((w.as_str(), ""));
        if k.is_empty() {
            return Err(CliError::new(
                Exit::InvalidArgument,
                format!("label {w:?} is not KEY=VALUE"),
            ));
        }
        m.insert(k.to_string(), v.to_string());
    }
    Ok(m)
}

#[derive(Debug, Args)]
pub struct NamesArgs {
    #[arg(required = true, value_name = "NAME")]
    pub names: Vec<String>,
}

#[derive(Debug, Args)]
pub struct RestartArgs {
    #[arg(required = true, value_name = "NAME")]
    pub names: Vec<String>,
    /// Seconds to wait after SIGTERM before SIGKILL.
    #[arg(long, short = 't', default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub timeout: u64,
}

pub async fn restart(a: RestartArgs) -> CliResult {
    let (_conn, proxy) = manager().await?;
    each(&a.names, |n| {
        let proxy = &proxy;
        async move {
            proxy
                .stop_container(n.clone(), a.timeout * 1_000_000)
                .await?;
            proxy.start_container(n, Options::default()).await?;
            Ok(())
        }
    })
    .await
}

pub async fn rename(old: String, new: String) -> CliResult {
    let (_conn, proxy) = manager().await?;
    proxy.rename_container(old, new).await?;
    Ok(0)
}

pub async fn pause(a: NamesArgs, freeze: bool) -> CliResult {
    let (_conn, proxy) = manager().await?;
    each(&a.names, |n| {
        let proxy = &proxy;
        async move {
            if freeze {
                proxy.pause_container(n).await?;
            } else {
                proxy.unpause_container(n).await?;
            }
            Ok(())
        }
    })
    .await
}

/// `wait NAME…`: each container's exit status, one per line, in order.
pub async fn wait(a: NamesArgs) -> CliResult {
    let (_conn, proxy) = manager().await?;
    let waits = a.names.iter().map(|n| proxy.wait_container(n.clone()));
    let results = futures_util::future::join_all(waits).await;
    let mut last = None;
    for r in results {
        match r {
            Ok(s) => output::print_lines([s.to_string()]),
            Err(e) => {
                let e = CliError::from(e);
                eprintln!("berthctl: {}", e.message);
                last = Some(e.exit);
            }
        }
    }
    match last {
        Some(exit) => Err(CliError::reported(exit)),
        None => Ok(0),
    }
}

/// `top NAME`: the container's processes.
pub async fn top(name: String) -> CliResult {
    let (_conn, proxy) = manager().await?;
    let procs = proxy.list_processes(name).await?;
    let rows: Vec<Vec<String>> = procs
        .into_iter()
        .map(|p| {
            vec![
                if p.user.is_empty() {
                    p.uid.to_string()
                } else {
                    p.user
                },
                p.pid.to_string(),
                p.host_pid.to_string(),
                p.uid.to_string(),
                p.host_uid.to_string(),
                p.command,
            ]
        })
        .collect();
    output::print_lines(output::table(
        &["USER", "PID", "HPID", "UID", "HUID", "COMMAND"],
        &rows,
    ));
    Ok(0)
}

/// One container in `inspect`: its view, plus what only `show` had.
#[derive(Serialize)]
struct ContainerDoc {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(flatten)]
    view: ContainerView,
    last_error: Option<String>,
    object_path: String,
}

/// `inspect NAME|IMAGE…`: one JSON document per object (containers first, then images), as
/// one array like podman's.
pub async fn inspect(a: NamesArgs) -> CliResult {
    let (conn, proxy) = manager().await?;
    let containers = proxy.list_containers().await?;
    let mut docs: Vec<serde_json::Value> = Vec::new();
    let mut last = None;
    for n in &a.names {
        if let Some(c) = containers.iter().find(|c| c.name == *n) {
            let c = c.clone();
            let doc = ContainerDoc {
                kind: "container",
                last_error: (!c.last_error.is_empty()).then(|| c.last_error.clone()),
                object_path: c.object_path.to_string(),
                view: ContainerView::from(c).with_life(&conn).await,
            };
            docs.push(serde_json::to_value(doc).unwrap_or_default());
            continue;
        }
        match super::image::document(&conn, &proxy, n.clone()).await {
            Ok(mut v) => {
                v["type"] = "image".into();
                docs.push(v);
            }
            Err(_) => {
                eprintln!("berthctl: no container or image named {n:?}");
                last = Some(Exit::NotFound);
            }
        }
    }
    output::print_json(&docs);
    match last {
        Some(exit) => Err(CliError::reported(exit)),
        None => Ok(0),
    }
}

#[derive(Debug, Subcommand)]
#[command(defer = true)]
pub enum ContainerVerb {
    /// Remove every container that does not run (created or exited).
    Prune {
        /// Do not ask (berthctl never asks; accepted for podman's sake).
        #[arg(long, short = 'f')]
        force: bool,
    },
}

/// `container prune`: the names removed, one per line.
pub async fn container_prune(proxy: &ManagerProxy<'_>, quiet: bool) -> CliResult<Vec<String>> {
    let stopped: Vec<String> = proxy
        .list_containers()
        .await?
        .into_iter()
        .filter(|c| matches!(c.state.as_str(), "created" | "exited"))
        .map(|c| c.name)
        .collect();
    let mut removed = Vec::new();
    let mut last = None;
    for n in stopped {
        match proxy.remove_container(n.clone(), false).await {
            Ok(()) => removed.push(n),
            // Started meanwhile, or removed by someone else: not ours to prune now.
            Err(crate::dbus::Error::InvalidState(_))
            | Err(crate::dbus::Error::NoSuchContainer(_)) => {}
            Err(e) => {
                let e = CliError::from(e);
                eprintln!("berthctl: {}", e.message);
                last = Some(e.exit);
            }
        }
    }
    if !quiet {
        output::print_lines(removed.iter().cloned());
    }
    match last {
        Some(exit) => Err(CliError::reported(exit)),
        None => Ok(removed),
    }
}

#[derive(Debug, Subcommand)]
#[command(defer = true)]
pub enum SystemVerb {
    /// Disk use of images, layers, blobs and container writable layers.
    Df {
        #[arg(long, short = 'o', value_enum, default_value_t)]
        output: Format,
    },
    /// Remove stopped containers, dangling images (all unused ones with --all) and unused
    /// layers.
    Prune {
        /// Also remove tagged images no container uses.
        #[arg(long, short = 'a')]
        all: bool,
        /// Do not ask (berthctl never asks; accepted for podman's sake).
        #[arg(long, short = 'f')]
        force: bool,
    },
}

pub async fn system(v: SystemVerb) -> CliResult {
    let (_conn, proxy) = manager().await?;
    match v {
        SystemVerb::Df { output: fmt } => {
            let du = proxy.get_disk_usage().await?;
            let g = |k: &str| du.get(k).copied().unwrap_or(0);
            if fmt == Format::Json {
                let m: std::collections::BTreeMap<&String, &u64> = du.iter().collect();
                output::print_json(&m);
                return Ok(0);
            }
            let containers = proxy.list_containers().await?;
            let active = containers
                .iter()
                .filter(|c| !matches!(c.state.as_str(), "created" | "exited"))
                .count();
            let rows = vec![
                vec![
                    "Images".to_string(),
                    g("images").to_string(),
                    (g("images") - g("dangling").min(g("images"))).to_string(),
                    output::bytes(g("layers_bytes")),
                    output::bytes(g("reclaimable_bytes")),
                ],
                vec![
                    "Containers".to_string(),
                    g("containers").to_string(),
                    active.to_string(),
                    output::bytes(g("containers_bytes")),
                    "-".into(),
                ],
                vec![
                    "Blobs".to_string(),
                    g("blobs").to_string(),
                    "-".into(),
                    output::bytes(g("blobs_bytes")),
                    "-".into(),
                ],
            ];
            output::print_lines(output::table(
                &["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"],
                &rows,
            ));
            Ok(0)
        }
        SystemVerb::Prune { all, force: _ } => {
            let removed = container_prune(&proxy, true).await?;
            let mut opts = Options::default();
            if all {
                opts.insert("All", OwnedVariant::from(true));
            }
            let (images, bytes) = proxy.prune_images(opts).await?;
            let mut lines: Vec<String> = removed
                .into_iter()
                .map(|n| format!("removed container {n}"))
                .collect();
            lines.extend(images.into_iter().map(|i| format!("removed image {i}")));
            lines.push(format!("freed {}", output::bytes(bytes)));
            output::print_lines(lines);
            Ok(0)
        }
    }
}

/// `reload`: what became of each declared container.
pub async fn reload() -> CliResult {
    let (_conn, proxy) = manager().await?;
    let results = proxy.reload().await?;
    let mut failed = false;
    let lines: Vec<String> = results
        .into_iter()
        .map(|r| {
            failed |= r.action == "failed";
            let msg = if r.message.is_empty() {
                String::new()
            } else {
                format!(": {}", r.message)
            };
            output::escape(&format!("{} {}{msg}", r.name, r.action))
        })
        .collect();
    output::print_lines(lines);
    if failed {
        return Err(CliError::reported(Exit::InvalidArgument));
    }
    Ok(0)
}

/// The CreateContainer options of a definition (what `verify` sends to PlanContainer).
fn definition_options(d: &crate::spec::Definition) -> CliResult<Options> {
    let v = |x: zbus::Variant<'_>| {
        OwnedVariant::try_from(x).map_err(|e| CliError::new(Exit::Failed, e.to_string()))
    };
    let mut m = Options::default();
    if let Some(i) = &d.image {
        m.insert("Image", v(i.as_str().into())?);
    }
    if let Some(dir) = &d.directory {
        m.insert("Directory", v(dir.to_string_lossy().into_owned().into())?);
    }
    if !d.command.is_empty() {
        m.insert("Command", v(d.command.clone().into())?);
    }
    if let Some(e) = &d.entrypoint {
        m.insert("Entrypoint", v(e.clone().into())?);
    }
    if !d.env.is_empty() {
        m.insert("Environment", v(d.env.clone().into())?);
    }
    for (k, val) in [
        ("WorkingDirectory", &d.workdir),
        ("User", &d.user),
        ("Hostname", &d.hostname),
        ("UserNamespace", &d.security.userns),
    ] {
        if let Some(val) = val {
            m.insert(k, v(val.as_str().into())?);
        }
    }
    if d.auto_remove {
        m.insert("AutoRemove", v(true.into())?);
    }
    if d.lifecycle.notify_ready {
        m.insert("NotifyReady", v(true.into())?);
    }
    if let Some(r) = &d.lifecycle.restart {
        m.insert("Restart", v(r.as_str().into())?);
    }
    let l = &d.lifecycle;
    for (key, val) in [
        ("HealthCmd", &l.health_cmd),
        ("HealthInterval", &l.health_interval),
        ("HealthTimeout", &l.health_timeout),
        ("HealthStartPeriod", &l.health_start_period),
        ("HealthOnFailure", &l.health_on_failure),
    ] {
        if let Some(val) = val {
            m.insert(key, v(val.as_str().into())?);
        }
    }
    if let Some(n) = l.health_retries {
        m.insert("HealthRetries", v(n.into())?);
    }
    let pairs = d.resources.pairs();
    if !pairs.is_empty() {
        m.insert("Resources", v(pairs.into())?);
    }
    if !d.properties.is_empty() {
        let p: HashMap<String, String> = d.properties.clone().into_iter().collect();
        m.insert("Properties", v(p.into())?);
    }
    for (k, list) in [
        ("CapAdd", &d.security.cap_add),
        ("CapDrop", &d.security.cap_drop),
        ("Ulimits", &d.security.ulimits),
        ("SecurityOpt", &d.security.security_opt),
    ] {
        if !list.is_empty() {
            m.insert(k, v(list.clone().into())?);
        }
    }
    if d.security.no_new_privileges {
        m.insert("NoNewPrivileges", v(true.into())?);
    }
    if !d.labels.is_empty() {
        let l: HashMap<String, String> = d.labels.clone().into_iter().collect();
        m.insert("Labels", v(l.into())?);
    }
    Ok(m)
}

/// `verify FILE`: check a declarative definition and print the plan berth would apply.
pub async fn verify(file: String) -> CliResult {
    let path = std::path::absolute(&file)
        .map_err(|e| CliError::new(Exit::InvalidArgument, format!("{file}: {e}")))?;
    let d = crate::spec::declared::read(&path)
        .map_err(|e| CliError::new(Exit::InvalidArgument, e.to_string()))?;
    let (_conn, proxy) = manager().await?;
    let plan = proxy
        .plan_container(
            d.definition.name.clone(),
            definition_options(&d.definition)?,
        )
        .await?;
    output::print_lines([plan]);
    Ok(0)
}

/// `__complete containers|images`: names for the shell completions, one per line; nothing
/// (and success) when berthd cannot be reached, so a completion never prints an error.
pub async fn complete(what: String) -> CliResult {
    let Ok((_conn, proxy)) = manager().await else {
        return Ok(0);
    };
    let mut names: Vec<String> = Vec::new();
    if matches!(what.as_str(), "containers" | "all")
        && let Ok(l) = proxy.list_containers().await
    {
        names.extend(l.into_iter().map(|c| c.name));
    }
    if matches!(what.as_str(), "images" | "all")
        && let Ok(l) = proxy.list_images().await
    {
        names.extend(l.into_iter().map(|i| i.name));
    }
    output::print_lines(names);
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_parse() {
        let l = labels(&["a=1".into(), "b".into(), "a=2".into()]).unwrap();
        assert_eq!(l["a"], "2");
        assert_eq!(l["b"], "");
        assert!(labels(&["=x".into()]).is_err());
    }

    #[test]
    fn a_definition_becomes_the_options_create_takes() {
        let d = crate::spec::declared::parse(
            std::path::Path::new("/x/web.toml"),
            "image = 'web'\ncommand = ['a']\n[labels]\nk = 'v'\n[resources]\nmemory = '64M'\n[security]\ncap-add = ['NET_ADMIN']\n",
        )
        .unwrap();
        let o = definition_options(&d.definition).unwrap();
        let keys: Vec<&str> = o.0.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["Image", "Command", "Resources", "CapAdd", "Labels"]);
    }
}
