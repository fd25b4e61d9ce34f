//! `berthctl poweroff|reboot NAME…` and `berthctl console NAME`: what `machinectl` does for a
//! booted container ([`crate::boot`]). poweroff and reboot send its init the signal systemd
//! takes for them (SIGRTMIN+4, SIGINT) through `Kill`; console runs login(1) on a new terminal
//! of the container's devpts through `Exec`, as a getty would.

use clap::Args;

use super::{CliResult, manager};

#[derive(Debug, Args)]
pub struct BootArgs {
    #[arg(required = true, value_name = "NAME")]
    pub names: Vec<String>,
}

#[derive(Debug, Args)]
pub struct LoginArgs {
    pub name: String,
}

pub async fn signal(a: BootArgs, reboot: bool) -> CliResult {
    let sig = if reboot {
        crate::boot::REBOOT_SIGNAL
    } else {
        crate::boot::poweroff_signal()
    };
    let (_conn, proxy) = manager().await?;
    super::verbs::each(&a.names, |n| {
        let proxy = &proxy;
        async move {
            proxy.kill_container(n, "leader".into(), sig).await?;
            Ok(())
        }
    })
    .await
}

/// login(1), the program a getty starts, on the container's own terminal.
pub const LOGIN: &str = "/bin/login";

pub async fn login(a: LoginArgs) -> CliResult {
    super::exec::exec(super::exec::ExecArgs {
        interactive: true,
        tty: true,
        user: None,
        env: Vec::new(),
        workdir: None,
        name: a.name,
        command: vec![LOGIN.into()],
    })
    .await
}
