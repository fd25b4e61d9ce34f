//! `berthctl poweroff|reboot NAME…` and `berthctl console NAME`: what `machinectl` does for a
//! booted container ([`crate::boot`]). poweroff and reboot send its init the signal systemd
//! takes for them (SIGRTMIN+4, SIGINT) through `Kill`; console runs login(1) on a new terminal
//! of the container's devpts through `Exec`, as a getty would. `berthctl login NAME` is the
//! console when berthd has a container NAME (the and machinectl's spelling), and the
//! registry's login otherwise.

use clap::Args;

use super::{CliResult, image, manager};

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

/// `berthctl login WORD`: the console of container WORD when berthd knows one by that name
/// and no registry option was given; the registry WORD's login otherwise. berthd decides what
/// WORD is (a registry host such as `localhost:5000` is no container name it has), never the
/// look of the word.
pub async fn login_or_registry(a: image::LoginArgs) -> CliResult {
    if !a.has_registry_options() && is_container(&a.registry).await? {
        return login(LoginArgs { name: a.registry }).await;
    }
    image::login(a).await
}

async fn is_container(name: &str) -> CliResult<bool> {
    let (_conn, proxy) = manager().await?;
    match proxy.get_container(name.to_string()).await {
        Ok(_) => Ok(true),
        // Not one of its containers (or not even a container name): a registry.
        Err(crate::dbus::Error::NoSuchContainer(_) | crate::dbus::Error::InvalidArgument(_)) => {
            Ok(false)
        }
        Err(e) => Err(e.into()),
    }
}
