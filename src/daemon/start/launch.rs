//! The launch of a planned start: the helper spawned, its namespaces made, the scope job
//! running while the ID maps, root and network are made and then the leader's mounts, then
//! the cgroup and exec in the scope — each step timed.

use super::*;

impl Registry {
    pub(super) async fn launch(
        &self,
        spec: &ContainerSpec,
        stdio: Stdio,
        terminal: bool,
        window: Option<(u16, u16)>,
        net: &mut crate::daemon::network::NetStart,
        held: Option<crate::daemon::unit::Held>,
    ) -> Result<Launched> {
        let (held_unit, held_helper) = match held {
            Some(h) => (Some(h.unit), Some(h.helper)),
            None => (None, None),
        };
        let name = spec.name();
        let (plan, root_source, stop_signal, fds, logs, sources, exec_base) = {
            let _t = Timer::new(name, "plan");
            let Planned {
                mut plan,
                root_source,
                stop_signal,
                config,
                range,
                dirs,
            } = self.plan_for(spec)?;
            if let Some(r) = range {
                if spec.ephemeral {
                    crate::daemon::mounts::fresh_ephemeral(&dirs, r)?;
                } else {
                    self.migrate_upper(name, &dirs.upper, r)?;
                }
            } else if spec.ephemeral {
                crate::daemon::mounts::fresh_ephemeral_unmapped(&dirs)?;
            }
            let exec_base = Arc::new(crate::plan::exec::ExecBase::of(
                &plan,
                plan::environment(spec, config.as_ref()),
            ));
            let (fds, logs, slots) = crate::daemon::logs::start_stdio(spec, stdio, terminal)?;
            plan.process.terminal = slots;
            plan.process.window = window.filter(|_| terminal);
            // The network's generated /etc files first: user mounts may cover them, and a
            // read-only root (the last user operation) is made after both.
            self.net_prepare(spec, config.as_ref(), net).await?;
            let files = crate::daemon::network::files_dir(&self.layout, name);
            crate::daemon::network::net_shape_plan(&mut plan, net, &files);
            let (mounts, sources) = self.mount_sources(spec, config.as_ref())?;
            let dirs_of: Vec<bool> = sources.iter().map(|s| s.dir).collect();
            let context = self
                .labels(spec)?
                .map(|l| l.file)
                .filter(|_| self.selinux.labels.is_some());
            plan.mounts.extend(crate::mount::user_operations(
                &mounts,
                &dirs_of,
                spec.read_only,
                context.as_deref(),
            ));
            // After the user mounts: a read-only root's /run is their tmpfs.
            crate::daemon::ready::shape_plan(&mut plan, spec, &self.layout);
            if spec.boot {
                crate::daemon::boot::shape_plan(spec, &mut plan, &files);
            }
            // Last: only what needs the scope waits for it.
            crate::mount::defer_to_scope(&mut plan.mounts);
            (
                plan,
                root_source,
                stop_signal,
                fds,
                logs,
                sources,
                exec_base,
            )
        };
        let memfd = nix::sys::memfd::memfd_create(
            format!("berth-exit-{name}").as_str(),
            nix::sys::memfd::MFdFlags::MFD_CLOEXEC,
        )
        .map_err(|e| Error::Failed(format!("memfd_create: {e}")))?;
        let plan_fd = protocol::plan_memfd(&plan)
            .map_err(|e| Error::Failed(format!("cannot pass the plan: {e}")))?;

        let helper = {
            let _t = Timer::new(name, "exec helper");
            match held_helper {
                Some(h) => h,
                None => Helper::spawn(&self.helper, self.helper_image.as_ref())?,
            }
        };
        let (pid, pidfd, sock) = {
            let _t = Timer::new(name, "namespaces (sync #1-#2)");
            let mut fds = vec![
                plan_fd.as_fd(),
                fds[0].as_fd(),
                fds[1].as_fd(),
                fds[2].as_fd(),
                memfd.as_fd(),
            ];
            // `--network container:NAME`: the namespace the helper joins, last.
            fds.extend(net.join.as_ref().map(|f| f.as_fd()));
            if let Err(err) = helper.send(&ToHelper::Plan, &fds).await {
                helper.kill().await;
                return Err(err.into());
            }
            let (msg, mut got) = match helper.recv(Duration::from_secs(10)).await {
                Ok(m) => m,
                Err(err) => {
                    helper.kill().await;
                    return Err(err.into());
                }
            };
            match msg {
                FromHelper::Forked if got.len() == 1 => {
                    let pidfd = got.remove(0);
                    let pid = match sys::pidfd_pid(pidfd.as_fd()) {
                        Ok(p) => p.as_raw(),
                        Err(e) => {
                            helper.kill().await;
                            return Err(Error::Failed(format!("the leader's pidfd: {e}")));
                        }
                    };
                    (pid, pidfd, helper.reap_in_background())
                }
                FromHelper::Failed {
                    step,
                    errno,
                    message,
                } => {
                    helper.kill().await;
                    return Err(helper_failed(name, step, errno, &message));
                }
                other => {
                    helper.kill().await;
                    return Err(Error::Failed(format!(
                        "berth-helper sent {other:?} at {}",
                        Sync::Forked
                    )));
                }
            }
        };
        let unit = name::scope_unit(name);
        let abort = |reason: Error| async {
            if let Err(e) = sys::pidfd_send_signal(pidfd.as_fd(), Signal::SIGKILL)
                && e != nix::errno::Errno::ESRCH
            {
                warn!("cannot kill the leader of {name} after a failed start: {e}, ignoring");
            }
            self.reap_now(&pidfd).await;
            if let Err(e) = self.systemd.stop_unit(&unit).await {
                warn!("cannot stop {unit} after a failed start: {e}, ignoring");
            }
            reason
        };
        // The scope job runs in systemd while berthd writes the ID maps and makes the root (on
        // a blocking thread) and plugs the network in (netlink, on this one), and then while
        // the leader makes its mounts: they cost the start only once.
        let scope = async {
            let _t = Timer::new(name, "scope");
            if let Some(u) = &held_unit {
                return self.attach_held(u, pid, spec).await;
            }
            let props = systemd::scope_properties(&format!("berth container {name}"), pid as u32)
                .extend(properties::device_policy(&spec.limits))
                .extend(properties::limit_properties(&spec.limits))
                .extend(spec.properties.iter().map(properties::raw_property));
            self.systemd
                .start_scope(&unit, &props)
                .await
                .map_err(|source| Error::Systemd {
                    what: "the scope",
                    source,
                })
        };
        let root = {
            // Owned copies for the blocking thread (the plan is a few kB).
            let p = plan.clone();
            let src = root_source.clone();
            async move {
                let _t = Timer::new(name, "ID maps and root");
                tokio::task::spawn_blocking(move || make_root(pid, &p, &src))
                    .await
                    .map_err(|e| Error::Failed(format!("making the root: {e}")))?
            }
        };
        let attach = async {
            let _t = Timer::new(name, "network");
            self.net_attach(spec, pid, net).await
        };
        let release = async {
            let (root, attached) = tokio::join!(root, attach);
            attached?;
            let (root, nodes) = root?;
            let _t = Timer::new(name, "release (sync #3)");
            // Volumes and binds are few; their ID-mapped clones are made after the root.
            crate::daemon::mounts::idmap_sources(pid, &plan, &sources)?;
            let files = crate::daemon::network::files_dir(&self.layout, name);
            if spec.boot {
                // Into the directory the network attach has just remade.
                crate::daemon::boot::write_os_release(&files)?;
            }
            // Sync #3: the root, the device mount when berthd made one, then the detached
            // mounts of the plan's `Attach` operations (the helper knows from the plan which
            // are there). The leader makes its mounts while systemd makes the scope.
            let mut fds = vec![root.as_fd()];
            fds.extend(nodes.as_ref().map(|n| n.as_fd()));
            fds.extend(sources.iter().map(|s| s.fd.as_fd()));
            spawn::send_on(&sock, &ToHelper::Release, &fds)
                .await
                .map_err(Error::from)
        };
        let (scoped, released) = tokio::join!(scope, release);
        if let Err(e) = released.and(scoped) {
            // A step of the leader that failed (it exits, and the scope then fails for want of
            // it) is the cause to report.
            let e = match spawn::pending(&sock) {
                Some(FromHelper::Failed {
                    step,
                    errno,
                    message,
                }) => helper_failed(name, step, errno, &message),
                _ => e,
            };
            return Err(abort(e).await);
        }
        drop(sources);
        crate::daemon::failpoint::hit("start:after-scope");
        if spec.boot
            && let Err(e) = crate::daemon::boot::delegate_cgroup(self, pid, &plan)
        {
            return Err(abort(e).await);
        }
        let _t = Timer::new(name, "in scope to exec (sync #4-#5)");
        // Sync #4. If the leader failed meanwhile, the send may fail: its report comes next.
        let sent = spawn::send_on(&sock, &ToHelper::InScope, &[]).await;
        let want_master = plan.process.terminal.iter().any(|t| *t);
        match spawn::recv_on(&sock, Duration::from_secs(30)).await {
            Ok((FromHelper::Started, mut got)) if got.len() == usize::from(want_master) => {
                Ok(Launched {
                    pid,
                    pidfd,
                    memfd,
                    stop_signal,
                    master: got.pop(),
                    logs,
                    exec_base,
                    held_by: held_unit,
                })
            }
            Ok((
                FromHelper::Failed {
                    step,
                    errno,
                    message,
                },
                _,
            )) => Err(abort(helper_failed(name, step, errno, &message)).await),
            Ok((other, _)) => Err(abort(Error::Failed(format!(
                "container sent {other:?} at {}",
                Sync::Started
            )))
            .await),
            Err(e) => Err(abort(sent.err().unwrap_or(e).into()).await),
        }
    }
}

/// The ID maps of the leader (written by berthd, root in the initial user namespace, as
/// only it may for a range of its choosing), then the container's root as a detached overlay
/// on layers idmapped through the leader's user namespace.
/// The leader's ID maps written, the root it attaches, and the device nodes it binds (made
/// for a user namespace, owned by the container's root; see [`crate::mount::nodes`]).
fn make_root(
    pid: i32,
    plan: &plan::Plan,
    src: &crate::mount::RootSource,
) -> Result<(OwnedFd, Option<OwnedFd>)> {
    let (userns, nodes) = match &plan.security.id_maps {
        Some(maps) => {
            crate::userns::write_maps(nix::unistd::Pid::from_raw(pid), &maps.uid, &maps.gid)
                .map_err(|e| Error::io(format!("write the ID maps of {pid}"), e))?;
            let host_root = |m: &[crate::userns::IdMap]| {
                m.iter().find(|m| m.inside == 0).map_or(0, |m| m.outside)
            };
            let nodes = crate::mount::nodes::make(
                &plan.mounts,
                (host_root(&maps.uid), host_root(&maps.gid)),
            )
            .map_err(|e| Error::Failed(format!("cannot give the container its devices: {e}")))?;
            let userns = crate::daemon::security::userns_of(pid)
                .map_err(|e| Error::io("open the container's user namespace", e))?;
            (Some(userns), nodes)
        }
        None => (None, None),
    };
    let root = crate::mount::root::build(src, userns.as_ref().map(|u| u.as_fd()))
        .map_err(|e| Error::Failed(format!("cannot make the container's root: {e}")))?;
    Ok((root, nodes))
}

impl Registry {
    /// A container created before it had a user namespace: its writable layer is owned by
    /// real IDs. Shift them into its range once, so it keeps its files.
    fn migrate_upper(
        &self,
        name: &str,
        upper: &std::path::Path,
        range: crate::userns::IdRange,
    ) -> Result<()> {
        use std::os::unix::fs::MetadataExt;
        let owner = std::fs::metadata(upper)
            .map_err(|e| Error::io(format!("{}", upper.display()), e))?
            .uid();
        if owner == range.host_start {
            return Ok(());
        }
        let n = crate::daemon::security::shift_upper(upper, range)
            .map_err(|e| Error::io(format!("shift the owners in {}", upper.display()), e))?;
        info!("container {name}: moved its writable layer into its ID range {range} ({n} files)");
        Ok(())
    }
}
