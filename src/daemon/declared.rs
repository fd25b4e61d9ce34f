//! Declarative containers (`/etc/berth/containers/NAME.toml`, see [`crate::spec::declared`]):
//! `Reload` (and berthd's start) creates the containers the files define, updates stopped
//! ones whose file changed (their writable layer stays), and enables `berth@NAME.service`
//! for those that say `boot = true` (disables it for those that no longer do). A container a
//! file made is removed when its file is gone (kept, and said so, while it runs).

use std::path::Path;

use tracing::{info, warn};

use super::error::{Error, Result};
use super::store;
use super::table::Registry;
use crate::dbus::ReloadResult;
use crate::spec::declared;

/// The template unit a declared container runs in at boot.
fn unit_of(name: &str) -> String {
    format!("berth@{name}.service")
}

fn result(name: &str, action: &str, message: impl Into<String>) -> ReloadResult {
    ReloadResult {
        name: name.into(),
        action: action.into(),
        message: message.into(),
    }
}

impl Registry {
    /// Apply every file of `dir`; one result per file.
    pub(super) async fn reload_from(&self, dir: &Path) -> Result<Vec<ReloadResult>> {
        let files = declared::list(dir)
            .map_err(|e| Error::io(format!("cannot read {}", dir.display()), e))?;
        let mut out = Vec::with_capacity(files.len());
        for f in &files {
            let name = declared::name_of(f).unwrap_or_else(|| f.display().to_string());
            let r = match declared::read(f) {
                Ok(d) => self.apply_declared(d).await,
                Err(e) => result(&name, "failed", e.to_string()),
            };
            if r.action == "failed" {
                warn!("declared container {}: {}", r.name, r.message);
            } else if r.action != "unchanged" {
                info!("declared container {}: {} {}", r.name, r.action, r.message);
            }
            out.push(r);
        }
        let named: std::collections::HashSet<String> =
            files.iter().filter_map(|f| declared::name_of(f)).collect();
        let orphans: Vec<(String, bool)> = self
            .entries
            .lock()
            .unwrap()
            .iter()
            .filter(|(n, e)| e.spec.definition.declared && !named.contains(*n))
            .map(|(n, e)| (n.clone(), e.is_active()))
            .collect();
        for (name, active) in orphans {
            let r = if active {
                result(
                    &name,
                    "kept",
                    "its file is gone but the container runs: stop it and reload",
                )
            } else {
                match self.set_boot(&name, false).await {
                    Err(e) => result(&name, "failed", format!("its file is gone, but {e}")),
                    Ok(_) => match self.remove(name.clone(), false).await {
                        Ok(()) => result(&name, "removed", "its file is gone"),
                        Err(e) => result(&name, "failed", format!("its file is gone, but {e}")),
                    },
                }
            };
            info!("declared container {}: {} {}", r.name, r.action, r.message);
            out.push(r);
        }
        Ok(out)
    }

    async fn apply_declared(&self, d: declared::Declared) -> ReloadResult {
        let name = d.definition.name.clone();
        let existing = self
            .entries
            .lock()
            .unwrap()
            .get(&name)
            .map(|e| (e.spec.definition.clone(), e.is_active()));
        let action = match existing {
            None => {
                let mut def = d.definition.clone();
                def.created_at = store::now_usec();
                match crate::spec::validate(&def, &self.host) {
                    Ok(spec) => match self.create(spec).await {
                        Ok(_) => "created",
                        Err(e) => return result(&name, "failed", e.to_string()),
                    },
                    Err(e) => return result(&name, "failed", e.to_string()),
                }
            }
            Some((old, active)) => {
                let mut want = d.definition.clone();
                want.created_at = old.created_at;
                want.image_id = old.image_id.clone();
                if want == old {
                    "unchanged"
                } else if active {
                    return result(
                        &name,
                        "kept",
                        "the file changed but the container runs: stop it and reload",
                    );
                } else {
                    match self.update_definition(want, &old) {
                        Ok(()) => "updated",
                        Err(e) => return result(&name, "failed", e.to_string()),
                    }
                }
            }
        };
        let message = match self.set_boot(&name, d.boot).await {
            Ok(m) => m,
            Err(e) => return result(&name, "failed", format!("{action}, but {e}")),
        };
        self.publish(&name).await;
        result(&name, action, message)
    }

    /// Replace a stopped container's definition, keeping its writable layer and allocations.
    /// A changed image name is resolved again (the container then runs what it names now).
    fn update_definition(
        &self,
        mut def: crate::spec::Definition,
        old: &crate::spec::Definition,
    ) -> Result<()> {
        if def.image != old.image || def.directory != old.directory {
            def.image_id = None;
        }
        let mut spec = crate::spec::validate(&def, &self.host)?;
        if let (crate::spec::Root::Image(i), None) = (&spec.root, spec.image_id) {
            let root = self.resolve_image(i)?;
            spec.image_id = root.id;
            spec.definition.image_id = root.id.map(|d| d.to_string());
        }
        self.seccomp_program(&spec)?;
        store::save_definition(&self.layout, &spec.definition)
            .map_err(|e| Error::io(format!("cannot write the definition of {:?}", def.name), e))?;
        let security = self.describe(&spec);
        self.with(&def.name, |e| {
            e.resources = spec.definition.resources.clone();
            e.spec = spec;
            e.security = security;
        })
    }

    /// Enable or disable `berth@NAME.service` (and `machines.target`, which pulls it in at
    /// boot, or multi-user.target where there is no machines.target). Returns what was done.
    pub(super) async fn set_boot(&self, name: &str, boot: bool) -> Result<String> {
        let unit = unit_of(name);
        let sd = crate::systemd::units::UnitManagerProxy::new(&self.conn)
            .await
            .map_err(|e| Error::Failed(format!("cannot talk to systemd: {e}")))?;
        let state = sd.get_unit_file_state(&unit).await.unwrap_or_default();
        let enabled = state == "enabled";
        if boot == enabled {
            return Ok(String::new());
        }
        // machines.target ships with systemd-container (as for systemd-nspawn@.service); where
        // it is missing, enabling through it fails, so the unit is wanted by
        // multi-user.target directly (what `disable` removes just the same).
        let has_machines_target = sd.get_unit_file_state("machines.target").await.is_ok();
        if boot && has_machines_target {
            sd.enable_unit_files(&[unit.as_str(), "machines.target"], false, false)
                .await
                .map_err(|e| Error::Failed(format!("cannot enable {unit}: {e}")))?;
        } else if boot {
            sd.add_dependency_unit_files(
                &[unit.as_str()],
                "multi-user.target",
                "Wants",
                false,
                false,
            )
            .await
            .map_err(|e| Error::Failed(format!("cannot enable {unit}: {e}")))?;
        } else {
            sd.disable_unit_files(&[unit.as_str()], false)
                .await
                .map_err(|e| Error::Failed(format!("cannot disable {unit}: {e}")))?;
        }
        sd.reload()
            .await
            .map_err(|e| Error::Failed(format!("cannot reload systemd: {e}")))?;
        Ok(format!(
            "{} {unit}",
            if boot { "enabled" } else { "disabled" }
        ))
    }

    /// At start: apply the declared containers (their files may have changed while berthd
    /// was down).
    pub async fn apply_declared_at_start(&self) {
        if let Err(e) = self.reload_from(Path::new(declared::DIR)).await {
            warn!("cannot read the declared containers: {e}, ignoring");
        }
    }
}
