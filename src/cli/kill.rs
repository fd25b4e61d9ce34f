//! `berthctl kill NAME… [--signal SIG] [--all]`.

use clap::Args;

use super::{CliError, CliResult, Exit, manager};

#[derive(Debug, Args)]
pub struct KillArgs {
    #[arg(required = true, value_name = "NAME")]
    pub names: Vec<String>,
    /// Signal name (TERM, SIGKILL, ...) or number.
    #[arg(long, short = 's', default_value = "TERM")]
    pub signal: String,
    /// Signal every process in the container's scope, not only its PID 1.
    #[arg(long)]
    pub all: bool,
}

/// `TERM`, `SIGTERM`, `sigterm` or `15`.
pub fn parse_signal(s: &str) -> Option<i32> {
    if let Ok(n) = s.parse::<i32>() {
        return nix::sys::signal::Signal::try_from(n).ok().map(|s| s as i32);
    }
    let up = s.to_ascii_uppercase();
    let full = if up.starts_with("SIG") {
        up
    } else {
        format!("SIG{up}")
    };
    full.parse::<nix::sys::signal::Signal>()
        .ok()
        .map(|s| s as i32)
}

pub async fn run(a: KillArgs) -> CliResult {
    let sig = parse_signal(&a.signal).ok_or_else(|| {
        CliError::new(
            Exit::InvalidArgument,
            format!("unknown signal {:?}", a.signal),
        )
    })?;
    let (_conn, proxy) = manager().await?;
    let whom = if a.all { "all" } else { "leader" };
    super::verbs::each(&a.names, |n| {
        let proxy = &proxy;
        async move {
            proxy.kill_container(n, whom.into(), sig).await?;
            Ok(())
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::parse_signal;

    #[test]
    fn signals() {
        assert_eq!(parse_signal("TERM"), Some(15));
        assert_eq!(parse_signal("sigkill"), Some(9));
        assert_eq!(parse_signal("1"), Some(1));
        assert_eq!(parse_signal("NOPE"), None);
        assert_eq!(parse_signal("0"), None);
        assert_eq!(parse_signal("999"), None);
    }
}
