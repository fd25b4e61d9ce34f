//! Container logs in the journal, without a process per container.
//!
//! berthd gives a detached container's payload the write ends of two pipes as stdout and
//! stderr and relays the read ends itself ([`relay`]): each line becomes one entry in the
//! journal's native protocol ([`native`]), with `MESSAGE=`, `PRIORITY=` (6 for stdout, 3 for
//! stderr), `SYSLOG_IDENTIFIER=` and `CONTAINER_NAME=` (the container's name),
//! `IMAGE_NAME=`, and `OBJECT_SYSTEMD_UNIT=berth-NAME.scope` (plus `OBJECT_PID=` naming the
//! container's leader while it runs) so that `journalctl -u berth-NAME.scope` finds the lines
//! too.
//!
//! Why a relay and not the journal's stream socket (`StandardOutput=journal` style): the
//! stream protocol carries no fields of our own (no `CONTAINER_NAME=`), and journald
//! rate-limits a stream by its sender's unit — the container's scope, which cannot raise
//! `LogRateLimitBurst=` (measured: a burst of 200000 lines kept 35000). Native entries from
//! berthd are limited by *berthd's* unit instead, which lifts the limit (units/berthd.service:
//! a 1 s interval with a burst of 10^8, since systemd 252 does not pass a zero interval on).
//!
//! Reading back ([`read`]) runs `journalctl -o export` with a match on the container's name
//! and `_UID=0`, and parses its output; `logs -f` goes on with berthd's live feed ([`feed`]).

pub mod feed;
pub mod native;
pub mod read;
pub mod relay;
pub mod split;

use std::path::PathBuf;

pub use feed::{Feed, Frame, FrameKind, FrameReader};
pub use native::{Entry, JOURNAL_SOCKET, JournalSocket};
pub use read::{ExportReader, LogEntry, LogQuery, Reassembler, TimeSpec, journalctl_args};
pub use relay::{RelayEnd, RelayStats, Sink, Source, Tags, fdstore_name, log_pipe, relay};
pub use split::{LINE_MAX, LineBuffer, LineEnd};

/// Which of the payload's output streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    Stdout = 0,
    Stderr = 1,
}

impl Stream {
    /// The syslog priority of its lines: info for stdout, err for stderr.
    pub fn priority(self) -> &'static str {
        match self {
            Stream::Stdout => "6",
            Stream::Stderr => "3",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Where a container's output goes (`--log-driver`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogDriver {
    /// To the journal through berthd's relay: the default for `-d`, `start` and units.
    #[default]
    Journald,
    /// Thrown away (/dev/null).
    None,
    /// The caller's own descriptors, passed over the bus: the default for `run` in the
    /// foreground.
    Passthrough,
}

impl std::str::FromStr for LogDriver {
    type Err = JournalError;
    fn from_str(s: &str) -> Result<Self, JournalError> {
        match s {
            "journald" => Ok(LogDriver::Journald),
            "none" => Ok(LogDriver::None),
            "passthrough" => Ok(LogDriver::Passthrough),
            _ => Err(JournalError::InvalidQuery(format!(
                "log driver {s:?} (journald, none or passthrough)"
            ))),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal field name {0:?} is not one a client may send")]
    InvalidField(String),
    #[error("cannot connect to the journal at {path}: {source}")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot send to the journal: {0}")]
    Send(std::io::Error),
    #[error("cannot pass a large journal entry in a memfd: {0}")]
    Memfd(std::io::Error),
    #[error("log pipe: {0}")]
    Pipe(nix::Error),
    #[error("cannot read the log pipe: {0}")]
    Read(std::io::Error),
    #[error("invalid log query: {0}")]
    InvalidQuery(String),
    #[error("journalctl printed an entry berth cannot read: {0}")]
    InvalidEntry(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_drivers_parse() {
        assert_eq!(
            "journald".parse::<LogDriver>().unwrap(),
            LogDriver::Journald
        );
        assert_eq!("none".parse::<LogDriver>().unwrap(), LogDriver::None);
        assert_eq!(
            "passthrough".parse::<LogDriver>().unwrap(),
            LogDriver::Passthrough
        );
        assert!("json-file".parse::<LogDriver>().is_err());
        assert_eq!(Stream::Stdout.priority(), "6");
        assert_eq!(Stream::Stderr.priority(), "3");
    }
}
