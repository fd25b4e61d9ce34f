//! The daemon's typed errors, and the one place they become `org.berth.berth1.Error.*`.

use thiserror::Error;

use crate::dbus;
use crate::protocol::Step;

/// What a lifecycle flow (create, start, stop, kill, remove, set, …) can fail with.
#[derive(Debug, Error)]
pub enum Error {
    #[error("no container named {0:?}")]
    NoSuchContainer(String),
    #[error("no image named {0:?}")]
    NoSuchImage(String),
    #[error("a container named {0:?} exists")]
    AlreadyExists(String),
    #[error("container {name:?} is {state}{hint}")]
    InvalidState {
        name: String,
        state: &'static str,
        hint: &'static str,
    },
    #[error("{0}")]
    InvalidArgument(String),
    /// The container is in quarantine: its definition cannot be used.
    #[error("container {name:?} is broken ({reason}); only remove works on it")]
    Broken { name: String, reason: String },
    #[error(transparent)]
    Spec(#[from] crate::spec::SpecError),
    #[error(transparent)]
    Limit(#[from] crate::spec::limits::LimitError),
    #[error(transparent)]
    Plan(#[from] crate::plan::PlanError),
    #[error("{0}")]
    LimitExceeded(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("systemd refused {what}: {source}")]
    Systemd {
        what: &'static str,
        source: crate::systemd::SystemdError,
    },
    #[error("berth-helper: {0}")]
    Spawn(#[from] crate::spawn::SpawnError),
    /// A step of the start failed in the helper or the container's PID 1.
    #[error("{message}")]
    Helper {
        step: Step,
        errno: i32,
        message: String,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Failed(String),
    /// Already a bus error (image flows).
    #[error(transparent)]
    Bus(dbus::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io {
            what: what.into(),
            source,
        }
    }

    /// The exit status a failed start leaves, as a shell reports it: 127 for a command that
    /// does not exist, 126 for one that cannot be executed, 125 for anything else.
    pub fn start_status(&self) -> i32 {
        match self {
            Error::Helper {
                step: Step::Exec,
                errno,
                ..
            } if *errno == libc::ENOENT => 127,
            Error::Helper {
                step: Step::Exec, ..
            } => 126,
            _ => 125,
        }
    }
}

impl From<dbus::Error> for Error {
    fn from(e: dbus::Error) -> Self {
        Error::Bus(e)
    }
}

impl From<Error> for dbus::Error {
    fn from(e: Error) -> Self {
        let msg = e.to_string();
        match e {
            Error::NoSuchContainer(_) => dbus::Error::NoSuchContainer(msg),
            Error::NoSuchImage(_) => dbus::Error::NoSuchImage(msg),
            Error::AlreadyExists(_) => dbus::Error::AlreadyExists(msg),
            Error::InvalidState { .. } | Error::Broken { .. } => dbus::Error::InvalidState(msg),
            Error::InvalidArgument(_) | Error::Spec(_) | Error::Limit(_) | Error::Plan(_) => {
                dbus::Error::InvalidArgument(msg)
            }
            Error::LimitExceeded(_) => dbus::Error::LimitExceeded(msg),
            Error::PermissionDenied(_) => dbus::Error::PermissionDenied(msg),
            Error::Helper {
                step: Step::Exec,
                errno,
                ..
            } if errno == libc::ENOENT => dbus::Error::CommandNotFound(msg),
            Error::Helper {
                step: Step::Exec, ..
            } => dbus::Error::CannotExecute(msg),
            Error::Helper {
                step: Step::User, ..
            } => dbus::Error::InvalidArgument(msg),
            Error::Bus(b) => b,
            Error::Systemd { .. }
            | Error::Spawn(_)
            | Error::Helper { .. }
            | Error::Io { .. }
            | Error::Failed(_) => dbus::Error::Failed(msg),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn helper(step: Step, errno: i32) -> Error {
        Error::Helper {
            step,
            errno,
            message: "m".into(),
        }
    }

    #[test]
    fn errors_map_to_bus_names_and_start_statuses() {
        assert!(matches!(
            dbus::Error::from(helper(Step::Exec, libc::ENOENT)),
            dbus::Error::CommandNotFound(_)
        ));
        assert!(matches!(
            dbus::Error::from(helper(Step::Exec, libc::EACCES)),
            dbus::Error::CannotExecute(_)
        ));
        assert!(matches!(
            dbus::Error::from(helper(Step::Mount, libc::EPERM)),
            dbus::Error::Failed(_)
        ));
        assert_eq!(helper(Step::Exec, libc::ENOENT).start_status(), 127);
        assert_eq!(helper(Step::Exec, libc::ENOEXEC).start_status(), 126);
        assert_eq!(helper(Step::Pivot, libc::EINVAL).start_status(), 125);
        let e = Error::InvalidState {
            name: "web".into(),
            state: "running",
            hint: "; stop it first",
        };
        assert_eq!(e.to_string(), "container \"web\" is running; stop it first");
        assert!(matches!(dbus::Error::from(e), dbus::Error::InvalidState(_)));
    }
}
