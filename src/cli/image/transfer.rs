//! Images in and out of the machine: push, save, load, prune, registry login (with its prompts) and
//! logout.

use super::*;

pub(super) fn variant(v: impl Into<zbus::Variant<'static>>) -> CliResult<OwnedVariant> {
    OwnedVariant::try_from(v.into()).map_err(|e| CliError::new(Exit::Failed, e.to_string()))
}

pub(super) fn registry_opts(insecure: bool, authfile: Option<String>) -> CliResult<Options> {
    let mut opts = Options::default();
    if insecure {
        opts.insert("Insecure", OwnedVariant::from(true));
    }
    if let Some(f) = authfile {
        let abs = std::path::absolute(&f)
            .map_err(|e| CliError::new(Exit::InvalidArgument, format!("{f}: {e}")))?;
        opts.insert("AuthFile", variant(abs.to_string_lossy().into_owned())?);
    }
    Ok(opts)
}

/// `push IMAGE [REF]`.
pub async fn push(a: PushArgs) -> CliResult {
    let opts = registry_opts(a.insecure, a.authfile)?;
    let (conn, proxy) = manager().await?;
    let call = proxy.push_image(
        a.name.clone(),
        a.reference.clone().unwrap_or_default(),
        opts,
    );
    let digest = with_progress(&conn, &proxy, &a.name, a.quiet, call).await?;
    if !a.quiet {
        output::print_lines([format!(
            "{} pushed to {} ({digest})",
            a.name,
            a.reference.as_deref().unwrap_or(&a.name)
        )]);
    }
    Ok(0)
}

/// `save -o FILE [--format F] IMAGE…`.
pub async fn save(a: SaveArgs) -> CliResult {
    if a.output == "-" && std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        return Err(CliError::new(
            Exit::InvalidArgument,
            "refusing to write an archive to a terminal; use -o FILE",
        ));
    }
    let fd = output_fd(&a.output)?;
    let (conn, proxy) = manager().await?;
    let label = a.names.join(" ");
    let call = proxy.save_images(
        a.names.clone(),
        a.format.clone(),
        fd.into(),
        Options::default(),
    );
    let r = with_progress(&conn, &proxy, &label, a.quiet, call).await;
    if r.is_err() && a.output != "-" {
        // Leave no half-written archive behind under the name asked for.
        if let Err(e) = std::fs::remove_file(&a.output)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            eprintln!("berthctl: cannot remove {}: {e}, ignoring", a.output);
        }
    }
    r?;
    Ok(0)
}

/// `load -i FILE [--name REF]`.
pub async fn load(a: LoadArgs) -> CliResult {
    let abs = std::path::absolute(&a.input)
        .map_err(|e| CliError::new(Exit::InvalidArgument, format!("{}: {e}", a.input)))?;
    let mut opts = Options::default();
    if let Some(n) = &a.name {
        opts.insert("Name", variant(n.clone())?);
    }
    let path = abs.to_string_lossy().into_owned();
    let (conn, proxy) = manager().await?;
    let call = proxy.load_images(path.clone(), opts);
    let loaded = with_progress(&conn, &proxy, &path, a.quiet, call).await?;
    if !a.quiet {
        output::print_lines(
            loaded
                .into_iter()
                .map(|(n, _)| format!("Loaded image: {n}")),
        );
    }
    Ok(0)
}

/// `image prune [--all]`.
pub async fn prune(a: PruneArgs) -> CliResult {
    let mut opts = Options::default();
    if a.all {
        opts.insert("All", OwnedVariant::from(true));
    }
    let (_conn, proxy) = manager().await?;
    let (removed, bytes) = proxy.prune_images(opts).await?;
    if !a.quiet {
        let mut lines: Vec<String> = removed
            .into_iter()
            .map(|r| format!("removed {r}"))
            .collect();
        lines.push(format!("freed {}", output::bytes(bytes)));
        output::print_lines(lines);
    }
    Ok(0)
}

/// Read one line from the terminal, echo off when `secret`.
pub(super) fn prompt(what: &str, secret: bool) -> CliResult<String> {
    use nix::sys::termios;
    use std::io::{BufRead, Write};
    let stdin = std::io::stdin();
    eprint!("{what}: ");
    std::io::stderr()
        .flush()
        .map_err(|e| CliError::new(Exit::Failed, format!("writing the prompt: {e}")))?;
    let saved = if secret {
        let t = termios::tcgetattr(&stdin)
            .map_err(|e| CliError::new(Exit::Failed, format!("reading the terminal: {e}")))?;
        let mut quiet = t.clone();
        quiet.local_flags.remove(termios::LocalFlags::ECHO);
        termios::tcsetattr(&stdin, termios::SetArg::TCSANOW, &quiet)
            .map_err(|e| CliError::new(Exit::Failed, format!("setting the terminal: {e}")))?;
        Some(t)
    } else {
        None
    };
    let mut line = String::new();
    let r = stdin.lock().read_line(&mut line);
    if let Some(t) = saved {
        if let Err(e) = termios::tcsetattr(&stdin, termios::SetArg::TCSANOW, &t) {
            eprintln!();
            eprintln!("berthctl: cannot turn the terminal's echo back on: {e}, ignoring");
        } else {
            eprintln!();
        }
    }
    r.map_err(|e| CliError::new(Exit::Failed, format!("reading {what}: {e}")))?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

/// `login REGISTRY [-u USER] [--password-stdin]`: the password comes from standard input or
/// a prompt, never from the command line (where `ps` shows it); berthd checks it against the
/// registry and stores it in its auth file.
pub async fn login(a: LoginArgs) -> CliResult {
    use std::io::{IsTerminal, Read};
    let tty = std::io::stdin().is_terminal();
    let user = match a.username {
        Some(u) => u,
        None if tty && !a.password_stdin => prompt("Username", false)?,
        None => {
            return Err(CliError::new(
                Exit::InvalidArgument,
                "give the user name with --username",
            ));
        }
    };
    let password = if a.password_stdin {
        let mut p = String::new();
        std::io::stdin()
            .read_to_string(&mut p)
            .map_err(|e| CliError::new(Exit::Failed, format!("reading the password: {e}")))?;
        p.trim_end_matches(['\n', '\r']).to_string()
    } else if tty {
        prompt("Password", true)?
    } else {
        return Err(CliError::new(
            Exit::InvalidArgument,
            "no terminal to ask for the password: use --password-stdin",
        ));
    };
    if password.is_empty() {
        return Err(CliError::new(
            Exit::InvalidArgument,
            "the password is empty",
        ));
    }
    let opts = registry_opts(a.insecure, a.authfile)?;
    let (_conn, proxy) = manager().await?;
    proxy
        .login(a.registry.clone(), user, password, opts)
        .await?;
    output::print_lines([format!("Login Succeeded ({})", a.registry)]);
    Ok(0)
}

/// `logout REGISTRY`.
pub async fn logout(a: LogoutArgs) -> CliResult {
    let opts = registry_opts(false, a.authfile)?;
    let (_conn, proxy) = manager().await?;
    proxy.logout(a.registry.clone(), opts).await?;
    output::print_lines([format!("Removed login credentials for {}", a.registry)]);
    Ok(0)
}

/// The file a tarball goes to, opened here (where the caller's paths mean something).
pub fn output_fd(file: &str) -> CliResult<OwnedFd> {
    if file == "-" {
        use std::os::fd::AsFd;
        return std::io::stdout()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| CliError::new(Exit::Failed, e.to_string()));
    }
    std::fs::File::create(file)
        .map(OwnedFd::from)
        .map_err(|e| CliError::new(Exit::InvalidArgument, format!("{file}: {e}")))
}
