//! The unit-management calls of systemd berth needs beyond scopes: the freezer (pause and
//! unpause a container's scope) and unit files (enable `berth@NAME.service` for containers
//! declared to start at boot).

use zbus::proxy;

#[proxy(
    interface = "org.freedesktop.systemd1.Manager",
    default_service = "org.freedesktop.systemd1",
    default_path = "/org/freedesktop/systemd1"
)]
pub trait UnitManager {
    /// Freeze every process of a unit (cgroup v2's `cgroup.freeze`).
    fn freeze_unit(&self, name: &str) -> zbus::Result<()>;
    fn thaw_unit(&self, name: &str) -> zbus::Result<()>;
    fn enable_unit_files(
        &self,
        files: &[&str],
        runtime: bool,
        force: bool,
    ) -> zbus::Result<(bool, Vec<(String, String, String)>)>;
    fn disable_unit_files(
        &self,
        files: &[&str],
        runtime: bool,
    ) -> zbus::Result<Vec<(String, String, String)>>;
    /// `systemctl add-wants TARGET UNIT…`: a `TYPE` (`Wants`) symlink from the target to the
    /// units, whatever their `[Install]` section says.
    fn add_dependency_unit_files(
        &self,
        files: &[&str],
        target: &str,
        r#type: &str,
        runtime: bool,
        force: bool,
    ) -> zbus::Result<Vec<(String, String, String)>>;
    fn get_unit_file_state(&self, file: &str) -> zbus::Result<String>;
    fn reload(&self) -> zbus::Result<()>;
}

/// Whether systemd refused a freeze because the unit's cgroup cannot be frozen (systemd only
/// freezes on the unified hierarchy).
pub fn freeze_unsupported(e: &zbus::Error) -> bool {
    match e {
        zbus::Error::MethodError(name, _, _) => {
            matches!(
                name.as_str(),
                "org.freedesktop.DBus.Error.NotSupported"
                    | "org.freedesktop.systemd1.UnitFreezerNotSupported"
            )
        }
        zbus::Error::FDO(f) => matches!(**f, zbus::fdo::Error::NotSupported(_)),
        _ => false,
    }
}
